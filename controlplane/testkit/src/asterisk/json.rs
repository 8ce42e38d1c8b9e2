//! A tiny JSON object writer that keeps fields in the order they are added.
//!
//! Asterisk's JSON (ARI responses and events) has a stable field order, and
//! the double reproduces it where that is cheap. `serde_json::Value` sorts
//! keys unless its `preserve_order` feature is on, which would change the
//! behaviour of every other crate in the build; this writer avoids that.

/// An object being written: `{"a":1,"b":"x"` until [`Obj::finish`] closes it.
#[derive(Debug, Clone)]
pub(crate) struct Obj(String);

impl Obj {
    pub(crate) fn new() -> Self {
        let mut s = String::with_capacity(256);
        s.push('{');
        Obj(s)
    }

    fn key(&mut self, k: &str) {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        push_json_str(&mut self.0, k);
        self.0.push(':');
    }

    /// A field whose value is already JSON text.
    pub(crate) fn raw(mut self, k: &str, json: &str) -> Self {
        self.key(k);
        self.0.push_str(json);
        self
    }

    pub(crate) fn str(mut self, k: &str, v: &str) -> Self {
        self.key(k);
        push_json_str(&mut self.0, v);
        self
    }

    pub(crate) fn int(mut self, k: &str, v: i64) -> Self {
        self.key(k);
        self.0.push_str(&v.to_string());
        self
    }

    pub(crate) fn bool(mut self, k: &str, v: bool) -> Self {
        self.key(k);
        self.0.push_str(if v { "true" } else { "false" });
        self
    }

    /// The text so far, without the closing brace, so that fields can be
    /// appended later (ARI events get `asterisk_id` and `application` per
    /// recipient).
    /// The value of the object's `type` field when it is the first one
    /// (every event starts with it).
    pub(crate) fn type_name(&self) -> Option<&str> {
        let rest = self.0.strip_prefix("{\"type\":\"")?;
        rest.split('"').next()
    }

    pub(crate) fn open(self) -> String {
        self.0
    }

    pub(crate) fn finish(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

/// `["a","b"]` from strings.
pub(crate) fn str_array<S: AsRef<str>>(items: &[S]) -> String {
    let mut s = String::from("[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        push_json_str(&mut s, item.as_ref());
    }
    s.push(']');
    s
}

/// Appends `v` as a JSON string literal.
pub(crate) fn push_json_str(out: &mut String, v: &str) {
    out.push('"');
    let mut plain = 0;
    for (i, b) in v.bytes().enumerate() {
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&v[plain..i]);
        if esc.is_empty() {
            out.push_str(&format!("\\u{b:04x}"));
        } else {
            out.push_str(esc);
        }
        plain = i + 1;
    }
    out.push_str(&v[plain..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_escapes() {
        let o = Obj::new()
            .str("z", "a\"b\\c\n\u{1}")
            .int("a", -3)
            .bool("m", true)
            .raw("x", &str_array(&["p", "q"]))
            .finish();
        assert_eq!(
            o,
            r#"{"z":"a\"b\\c\n\u0001","a":-3,"m":true,"x":["p","q"]}"#
        );
        let v: serde_json::Value = serde_json::from_str(&o).expect("valid json");
        assert_eq!(v["z"], "a\"b\\c\n\u{1}");
    }
}
