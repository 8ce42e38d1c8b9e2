//! Secrets in configuration: given inline or, better, as a file path (a
//! systemd credential), and never printed.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A password or token. `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Reads a secret file, trimming one trailing newline. A relative path
    /// is looked up in `$CREDENTIALS_DIRECTORY` when systemd set it.
    pub fn from_file(path: &Path) -> Result<Self> {
        let full = match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(dir) if path.is_relative() => Path::new(&dir).join(path),
            _ => path.to_owned(),
        };
        let text = std::fs::read_to_string(&full).map_err(|e| {
            Error::invalid(format!("cannot read secret file {}", full.display())).with_cause(e)
        })?;
        let text = text.strip_suffix('\n').unwrap_or(&text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        Ok(Self(text.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How configuration gives a secret: `secret = "..."` or
/// `secret_file = "/path"`; exactly one of the two.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    /// The value inline (fine for tests and demos).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// A file holding the value (production; systemd `LoadCredential=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

impl SecretSource {
    /// An inline value.
    pub fn inline(value: impl Into<String>) -> Self {
        Self {
            value: Some(value.into()),
            file: None,
        }
    }

    /// Resolves the secret; `what` names the key in errors.
    pub fn resolve(&self, what: &str) -> Result<Secret> {
        match (&self.value, &self.file) {
            (Some(v), None) => Ok(Secret::new(v.clone())),
            (None, Some(f)) => Secret::from_file(f).map_err(|e| e.context(what.to_owned())),
            (Some(_), Some(_)) => Err(Error::invalid(format!(
                "{what}: give either value or file, not both"
            ))),
            (None, None) => Err(Error::invalid(format!("{what}: missing (value or file)"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_printed() {
        let s = Secret::new("gwsecret");
        assert_eq!(format!("{s} {s:?}"), "*** Secret(***)");
        assert_eq!(s.expose(), "gwsecret");
    }

    #[test]
    fn file_and_inline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ami");
        std::fs::write(&path, "gwsecret\n").unwrap();
        let from_file = SecretSource {
            value: None,
            file: Some(path),
        };
        assert_eq!(
            from_file.resolve("ami.secret").unwrap().expose(),
            "gwsecret"
        );
        assert_eq!(
            SecretSource::inline("x").resolve("k").unwrap().expose(),
            "x"
        );
        let e = SecretSource::default().resolve("ari.password").unwrap_err();
        assert_eq!(e.message(), "ari.password: missing (value or file)");
    }
}
