//! The AMI wire format, sans-IO: an incremental [`Parser`] for what Asterisk
//! sends and an encoder for the [`Action`]s we send.
//!
//! AMI is line based. After connecting, Asterisk sends one banner line
//! (`Asterisk Call Manager/11.0.0` on Asterisk 22, `7.0.x` on 18); then every
//! message is a block of `Key: Value` lines ended by an empty line, CRLF
//! terminated. A message is a [`Response`] (first header `Response:`) or an
//! [`Event`] (first header `Event:`). Headers keep their order and may repeat
//! (`Output:`, `ChanVariable:`, `Variable:`).
//!
//! One exception breaks the blank-line framing: the `Command` action's answer
//! on Asterisk 13 and older, `Response: Follows`, followed by the raw CLI
//! output (which may hold blank lines) and ended by `--END COMMAND--`. The
//! parser turns that body into `Output` headers, so both forms, the legacy one
//! and Asterisk 14+'s `Response: Success` with `Output:` headers, read the
//! same through [`Response::output`].
//!
//! Memory is bounded: a message longer than [`Limits::max_message_bytes`]
//! (counting line contents) or with more than [`Limits::max_headers`] headers
//! gives a [`ParseError`], and the parser skips to the next empty line and
//! carries on. The parser yields the same messages and errors however the
//! bytes are split into chunks. Bare LF line ends are accepted; bytes that
//! are not UTF-8 are replaced (U+FFFD), never rejected.
//!
//! Left out: sockets, the clock, ActionID bookkeeping (the client's), and
//! meaning of events (see [`super::events`]).

use std::collections::VecDeque;
use std::fmt;

use crate::secret::Secret;

/// The legacy `Command` output terminator (Asterisk 13 and older).
const END_COMMAND: &[u8] = b"--END COMMAND--";
/// How much of a bad line an error quotes.
const EXCERPT_LEN: usize = 64;

/// Bounds on what one message may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most bytes of line content (line ends excluded) one message may
    /// have.
    pub max_message_bytes: usize,
    /// The most headers (`Output` lines included) one message may have.
    pub max_headers: usize,
}

impl Limits {
    /// 512 KiB and 8192 headers: room for `core show channels` on a busy
    /// host, small enough to hold one per connection.
    pub const DEFAULT: Self = Self {
        max_message_bytes: 512 * 1024,
        max_headers: 8192,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Headers in the order they came, duplicates kept. Lookups ignore ASCII
/// case, as Asterisk does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a header.
    pub fn push(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.0.push((key.into(), value.into()));
    }

    /// The value of the first header named `key`.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// The values of every header named `key`, in order.
    pub fn values<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// The value of the first header named `prefix` + `key` (`Dest` +
    /// `Uniqueid`), without building the name.
    pub fn value_prefixed(&self, prefix: &str, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| {
                k.len() == prefix.len() + key.len()
                    && k.is_char_boundary(prefix.len())
                    && k[..prefix.len()].eq_ignore_ascii_case(prefix)
                    && k[prefix.len()..].eq_ignore_ascii_case(key)
            })
            .map(|(_, v)| v.as_str())
    }

    /// Every header as `(key, value)`, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// How many headers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

/// One message from Asterisk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// The greeting line, sent once right after connecting.
    Banner(Banner),
    /// The answer to an action.
    Response(Response),
    /// Something happened.
    Event(Event),
}

/// The greeting line: `Asterisk Call Manager/11.0.0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Banner {
    line: String,
}

impl Banner {
    /// The whole line.
    pub fn line(&self) -> &str {
        &self.line
    }

    /// Whether it is Asterisk's greeting (`... Call Manager/x.y.z`).
    pub fn is_asterisk(&self) -> bool {
        self.line.contains("Call Manager/")
    }

    /// The AMI protocol version after the slash (`11.0.0` on Asterisk 22,
    /// `7.0.x` on 18, `2.x` on 13), when it is Asterisk's greeting.
    pub fn version(&self) -> Option<&str> {
        let (_, v) = self.line.split_once("Call Manager/")?;
        Some(v.trim())
    }
}

/// The status a [`Response`] starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseStatus {
    /// `Response: Success`.
    Success,
    /// `Response: Error`; `Message:` says why.
    Error,
    /// `Response: Follows`: legacy `Command` output (Asterisk 13 and older).
    Follows,
    /// `Response: Goodbye`: the answer to `Logoff`.
    Goodbye,
    /// Anything else, as sent.
    Other(String),
}

impl ResponseStatus {
    fn parse(s: &str) -> Self {
        let s = s.trim();
        if s.eq_ignore_ascii_case("Success") {
            Self::Success
        } else if s.eq_ignore_ascii_case("Error") {
            Self::Error
        } else if s.eq_ignore_ascii_case("Follows") {
            Self::Follows
        } else if s.eq_ignore_ascii_case("Goodbye") {
            Self::Goodbye
        } else {
            Self::Other(s.to_owned())
        }
    }
}

/// The answer to an action. Its headers include the leading `Response:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    status: ResponseStatus,
    headers: Headers,
}

impl Response {
    /// Success, Error, Follows, Goodbye or other.
    pub fn status(&self) -> &ResponseStatus {
        &self.status
    }

    /// Every header in order, `Response:` first.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The first header named `key`.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.headers.value(key)
    }

    /// The `ActionID` it answers.
    pub fn action_id(&self) -> Option<&str> {
        self.headers.value("ActionID")
    }

    /// Asterisk's `Message:` (the reason, for errors).
    pub fn message(&self) -> Option<&str> {
        self.headers.value("Message")
    }

    /// `Command` output, one item per line: the `Output:` headers of
    /// Asterisk 14+, or the body of a legacy `Response: Follows`.
    pub fn output(&self) -> impl Iterator<Item = &str> {
        self.headers.values("Output")
    }
}

/// An event. Its headers include the leading `Event:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    name: String,
    headers: Headers,
}

impl Event {
    /// An event named `name` with `headers` after the `Event:` header (for
    /// tests and tools; the parser builds the real ones).
    pub fn new<K: Into<String>, V: Into<String>>(
        name: impl Into<String>,
        headers: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let name = name.into();
        let mut all = Headers::new();
        all.push("Event", name.clone());
        for (k, v) in headers {
            all.push(k, v);
        }
        Self { name, headers: all }
    }

    /// The event's name (`Newchannel`), as Asterisk spells it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it is named `name`, ignoring ASCII case.
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }

    /// Every header in order, `Event:` first.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The first header named `key`.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.headers.value(key)
    }

    /// The `ActionID` of the action that caused it (list actions,
    /// `OriginateResponse`).
    pub fn action_id(&self) -> Option<&str> {
        self.headers.value("ActionID")
    }
}

/// Input the parser could not turn into a message. The parser has skipped
/// (or is skipping) to the next empty line; it keeps working.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// A message longer than the limit.
    #[error("AMI message longer than {limit} bytes; skipped")]
    TooLarge {
        /// [`Limits::max_message_bytes`].
        limit: usize,
    },
    /// A message with more headers than the limit.
    #[error("AMI message with more than {limit} headers; skipped")]
    TooManyHeaders {
        /// [`Limits::max_headers`].
        limit: usize,
    },
    /// A line inside a message that is not `Key: Value`.
    #[error("malformed AMI line {excerpt:?}; message skipped")]
    MalformedLine {
        /// The line's first bytes.
        excerpt: String,
    },
    /// A message whose first header is neither `Response` nor `Event`.
    #[error("AMI message starting with {key:?}, neither Response nor Event; skipped")]
    UnknownKind {
        /// The first header's key.
        key: String,
    },
}

/// Where the parser is in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first line: it may be the banner.
    Banner,
    /// Between messages.
    Idle,
    /// Inside a message.
    Headers,
    /// Inside `Response: Follows`, still reading its headers.
    FollowsHeaders,
    /// Inside `Response: Follows`, reading CLI output.
    FollowsBody,
    /// After an error: skipping to the next empty line.
    Discard,
}

/// While discarding: what the current line holds so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DiscardLine {
    /// Nothing yet.
    Start,
    /// Only a CR (an empty CRLF line if LF follows).
    Cr,
    /// Something else: not an empty line.
    Text,
}

/// An incremental AMI parser: feed it bytes as they arrive with
/// [`handle_bytes`](Self::handle_bytes), then drain
/// [`poll_message`](Self::poll_message) until it returns `None`.
///
/// It holds at most one partial message (bounded by [`Limits`]) plus the
/// messages completed by the last chunk, so drain after every chunk.
#[derive(Debug)]
pub struct Parser {
    limits: Limits,
    state: State,
    /// The partial line (never while discarding).
    line: Vec<u8>,
    discard_line: DiscardLine,
    headers: Headers,
    /// Line content bytes of the current message.
    bytes: usize,
    out: VecDeque<Result<Message, ParseError>>,
}

impl Default for Parser {
    fn default() -> Self {
        Self::new(Limits::DEFAULT)
    }
}

impl Parser {
    /// A parser at the start of a connection (expecting the banner).
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            state: State::Banner,
            line: Vec::new(),
            discard_line: DiscardLine::Start,
            headers: Headers::new(),
            bytes: 0,
            out: VecDeque::new(),
        }
    }

    /// Feeds bytes as they came off the socket, split anywhere.
    pub fn handle_bytes(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let newline = data.iter().position(|&b| b == b'\n');
            if self.state == State::Discard {
                let (segment, rest) = match newline {
                    Some(i) => (&data[..i], Some(&data[i + 1..])),
                    None => (data, None),
                };
                self.discard_feed(segment);
                match rest {
                    Some(rest) => {
                        if self.discard_line != DiscardLine::Text {
                            self.state = State::Idle;
                        }
                        self.discard_line = DiscardLine::Start;
                        data = rest;
                    }
                    None => data = &[],
                }
                continue;
            }
            match newline {
                Some(i) => {
                    let (segment, rest) = (&data[..i], &data[i + 1..]);
                    data = rest;
                    if self.line.is_empty() {
                        self.handle_line(segment);
                    } else {
                        let mut line = std::mem::take(&mut self.line);
                        line.extend_from_slice(segment);
                        self.handle_line(&line);
                        line.clear();
                        if self.line.is_empty() {
                            self.line = line;
                        }
                    }
                }
                None => {
                    // The content so far, less a CR that may turn out to be
                    // the line end's: the least this line will count.
                    let cr = usize::from(data.last() == Some(&b'\r'));
                    let least = self.line.len() + data.len() - cr;
                    if self.bytes + least > self.limits.max_message_bytes {
                        self.fail(
                            ParseError::TooLarge {
                                limit: self.limits.max_message_bytes,
                            },
                            true,
                        );
                        self.line.clear();
                    } else {
                        self.line.extend_from_slice(data);
                    }
                    data = &[];
                }
            }
        }
    }

    /// The next complete message or error, in stream order.
    pub fn poll_message(&mut self) -> Option<Result<Message, ParseError>> {
        self.out.pop_front()
    }

    /// Bytes held for an incomplete line and message (for tests and
    /// metrics).
    pub fn buffered(&self) -> usize {
        self.line.len() + self.bytes
    }

    fn discard_feed(&mut self, segment: &[u8]) {
        for &b in segment {
            self.discard_line = match (self.discard_line, b) {
                (DiscardLine::Start, b'\r') => DiscardLine::Cr,
                _ => DiscardLine::Text,
            };
            if self.discard_line == DiscardLine::Text {
                break;
            }
        }
    }

    fn handle_line(&mut self, raw: &[u8]) {
        let content = raw.strip_suffix(b"\r").unwrap_or(raw);
        if self.bytes + content.len() > self.limits.max_message_bytes {
            self.fail(
                ParseError::TooLarge {
                    limit: self.limits.max_message_bytes,
                },
                false,
            );
            return;
        }
        match self.state {
            State::Banner => {
                if content.is_empty() {
                    return;
                }
                self.state = State::Idle;
                if content.contains(&b':') {
                    // No banner (a proxy, or we missed it): a message.
                    self.start_message(content);
                } else {
                    self.out.push_back(Ok(Message::Banner(Banner {
                        line: lossy(content),
                    })));
                }
            }
            State::Idle => {
                if !content.is_empty() {
                    self.start_message(content);
                }
            }
            State::Headers => {
                if content.is_empty() {
                    self.finish();
                } else {
                    match split_header(content) {
                        Some((k, v)) => self.push_header(k, v, content.len()),
                        None => self.fail_malformed(content),
                    }
                }
            }
            State::FollowsHeaders => {
                if let Some(last) = content.strip_suffix(END_COMMAND) {
                    self.end_command(last);
                } else {
                    match split_header(content) {
                        Some((k, v)) if is_follows_header(&k) => {
                            self.push_header(k, v, content.len());
                        }
                        _ => {
                            self.state = State::FollowsBody;
                            self.push_header("Output".to_owned(), lossy(content), content.len());
                        }
                    }
                }
            }
            State::FollowsBody => {
                if let Some(last) = content.strip_suffix(END_COMMAND) {
                    self.end_command(last);
                } else {
                    self.push_header("Output".to_owned(), lossy(content), content.len());
                }
            }
            State::Discard => {
                // handle_bytes never hands a line over while discarding.
                debug_assert!(false, "line handled while discarding");
            }
        }
    }

    fn start_message(&mut self, content: &[u8]) {
        let Some((key, value)) = split_header(content) else {
            self.fail_malformed(content);
            return;
        };
        let follows = if key.eq_ignore_ascii_case("Response") {
            ResponseStatus::parse(&value) == ResponseStatus::Follows
        } else if key.eq_ignore_ascii_case("Event") {
            false
        } else {
            self.fail(ParseError::UnknownKind { key }, false);
            return;
        };
        self.state = if follows {
            State::FollowsHeaders
        } else {
            State::Headers
        };
        self.push_header(key, value, content.len());
    }

    fn push_header(&mut self, key: String, value: String, len: usize) {
        if self.headers.len() >= self.limits.max_headers {
            self.fail(
                ParseError::TooManyHeaders {
                    limit: self.limits.max_headers,
                },
                false,
            );
            return;
        }
        self.bytes += len;
        self.headers.push(key, value);
    }

    /// The legacy terminator, possibly glued to the output's last line.
    fn end_command(&mut self, last: &[u8]) {
        if !last.is_empty() {
            self.push_header("Output".to_owned(), lossy(last), last.len());
            if self.state == State::Discard {
                return;
            }
        }
        self.finish();
    }

    fn finish(&mut self) {
        let headers = std::mem::take(&mut self.headers);
        self.bytes = 0;
        self.state = State::Idle;
        // start_message only enters a message state after pushing the
        // first header, Response or Event.
        let Some((key, value)) = headers.0.first() else {
            return;
        };
        let message = if key.eq_ignore_ascii_case("Event") {
            Message::Event(Event {
                name: value.trim().to_owned(),
                headers,
            })
        } else {
            Message::Response(Response {
                status: ResponseStatus::parse(value),
                headers,
            })
        };
        self.out.push_back(Ok(message));
    }

    fn fail_malformed(&mut self, content: &[u8]) {
        let cut = content.len().min(EXCERPT_LEN);
        self.fail(
            ParseError::MalformedLine {
                excerpt: lossy(&content[..cut]),
            },
            false,
        );
    }

    /// Reports `error`, drops the current message and skips to the next
    /// empty line; `mid_line` when the rest of the current line is still to
    /// come.
    fn fail(&mut self, error: ParseError, mid_line: bool) {
        self.out.push_back(Err(error));
        self.headers = Headers::new();
        self.bytes = 0;
        self.state = State::Discard;
        self.discard_line = if mid_line {
            DiscardLine::Text
        } else {
            DiscardLine::Start
        };
    }
}

/// Headers a legacy `Response: Follows` carries before its CLI output.
fn is_follows_header(key: &str) -> bool {
    ["Privilege", "ActionID", "Message"]
        .iter()
        .any(|k| k.eq_ignore_ascii_case(key))
}

/// `Key: Value` (one space after the colon dropped; `Key:` gives an empty
/// value). `None` without a colon or with an empty key.
fn split_header(content: &[u8]) -> Option<(String, String)> {
    let colon = content.iter().position(|&b| b == b':')?;
    let key = content[..colon].trim_ascii();
    if key.is_empty() {
        return None;
    }
    let value = &content[colon + 1..];
    let value = value.strip_prefix(b" ").unwrap_or(value);
    Some((lossy(key), lossy(value)))
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The ActionID the client puts on an action to find its response.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ActionId(String);

impl ActionId {
    /// Wraps an id; [`Action::encode`] rejects one with CR or LF.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id as sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ActionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A header value of an action: plain, or a secret never printed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ActionValue {
    Plain(String),
    Secret(Secret),
}

impl ActionValue {
    fn expose(&self) -> &str {
        match self {
            Self::Plain(v) => v,
            Self::Secret(s) => s.expose(),
        }
    }
}

/// An AMI action to send: `Action::new("Originate").header("Channel", ..)`.
/// The client adds the `ActionID`. `Debug` never shows secret headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    name: String,
    headers: Vec<(String, ActionValue)>,
}

/// An action that cannot be sent as built. Nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidAction {
    /// The action name is empty or holds a colon, whitespace or a control
    /// character.
    #[error("invalid action name {0:?}")]
    Name(String),
    /// A header key is empty or holds a colon, whitespace or a control
    /// character.
    #[error("invalid header name {0:?}")]
    Key(String),
    /// A header value holds CR, LF or NUL, which would end the header (or
    /// the action) early: header injection.
    #[error("value of header {0:?} holds CR, LF or NUL")]
    Value(String),
    /// `Action` and `ActionID` are the client's to set.
    #[error("header {0:?} is set by the client")]
    Reserved(String),
}

impl Action {
    /// An action named `name` (`Ping`, `Originate`, `Command`).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            headers: Vec::new(),
        }
    }

    /// Adds a header; repeat a key to send it more than once (`Variable`).
    #[must_use]
    pub fn header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers
            .push((key.into(), ActionValue::Plain(value.into())));
        self
    }

    /// Adds a header whose value is a secret (`Secret` of `Login`).
    #[must_use]
    pub fn secret_header(mut self, key: impl Into<String>, value: Secret) -> Self {
        self.headers.push((key.into(), ActionValue::Secret(value)));
        self
    }

    /// The action's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The first plain (not secret) header named `key`.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.headers.iter().find_map(|(k, v)| match v {
            ActionValue::Plain(v) if k.eq_ignore_ascii_case(key) => Some(v.as_str()),
            _ => None,
        })
    }

    /// Checks the name and every header without sending anything.
    pub fn validate(&self) -> Result<(), InvalidAction> {
        if !is_token(&self.name) {
            return Err(InvalidAction::Name(self.name.clone()));
        }
        for (key, value) in &self.headers {
            if !is_token(key) {
                return Err(InvalidAction::Key(key.clone()));
            }
            if key.eq_ignore_ascii_case("Action") || key.eq_ignore_ascii_case("ActionID") {
                return Err(InvalidAction::Reserved(key.clone()));
            }
            if !is_value(value.expose()) {
                return Err(InvalidAction::Value(key.clone()));
            }
        }
        Ok(())
    }

    /// Appends the action's bytes (`Action:`, `ActionID:`, the headers, an
    /// empty line; CRLF) to `out`. On error `out` is left as it was.
    pub fn encode(&self, id: &ActionId, out: &mut Vec<u8>) -> Result<(), InvalidAction> {
        self.validate()?;
        if !is_value(id.as_str()) {
            return Err(InvalidAction::Value("ActionID".to_owned()));
        }
        let line = |out: &mut Vec<u8>, k: &str, v: &str| {
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        };
        line(out, "Action", &self.name);
        line(out, "ActionID", id.as_str());
        for (k, v) in &self.headers {
            line(out, k, v.expose());
        }
        out.extend_from_slice(b"\r\n");
        Ok(())
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| (b.is_ascii_graphic() && b != b':') || !b.is_ascii())
}

fn is_value(s: &str) -> bool {
    !s.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Asterisk 22.10.1, a call through `Local/s@to-stasis`: banner, login,
    /// events, Goodbye. Exact bytes.
    const INBOUND: &[u8] =
        include_bytes!("../../tests/fixtures/ami/asterisk22_inbound_session.txt");
    /// The same Asterisk, a call originated over ARI.
    const ORIGINATE: &[u8] =
        include_bytes!("../../tests/fixtures/ami/asterisk22_originate_session.txt");
    const LEGACY_COMMAND: &[u8] =
        include_bytes!("../../tests/fixtures/ami/command_output_legacy.txt");
    const MODERN_COMMAND: &[u8] =
        include_bytes!("../../tests/fixtures/ami/command_output_modern.txt");

    fn parse_chunked(
        limits: Limits,
        bytes: &[u8],
        chunk: usize,
    ) -> Vec<Result<Message, ParseError>> {
        let mut p = Parser::new(limits);
        let mut out = Vec::new();
        for c in bytes.chunks(chunk.max(1)) {
            p.handle_bytes(c);
            while let Some(m) = p.poll_message() {
                out.push(m);
            }
            assert!(p.buffered() <= limits.max_message_bytes + 1);
        }
        out
    }

    fn parse(bytes: &[u8]) -> Vec<Result<Message, ParseError>> {
        parse_chunked(Limits::DEFAULT, bytes, bytes.len())
    }

    fn ok(messages: Vec<Result<Message, ParseError>>) -> Vec<Message> {
        messages
            .into_iter()
            .map(|m| m.expect("no parse error"))
            .collect()
    }

    #[test]
    fn recorded_session_parses_into_banner_responses_and_events() {
        let messages = ok(parse(INBOUND));
        let Message::Banner(banner) = &messages[0] else {
            panic!("first is the banner: {:?}", messages[0]);
        };
        assert_eq!(banner.line(), "Asterisk Call Manager/11.0.0");
        assert_eq!(banner.version(), Some("11.0.0"));
        assert!(banner.is_asterisk());

        let Message::Response(login) = &messages[1] else {
            panic!("then the login response");
        };
        assert_eq!(login.status(), &ResponseStatus::Success);
        assert_eq!(login.action_id(), Some("login-1"));
        assert_eq!(login.message(), Some("Authentication accepted"));

        let events: Vec<&Event> = messages
            .iter()
            .filter_map(|m| match m {
                Message::Event(e) => Some(e),
                _ => None,
            })
            .collect();
        // Counted in the recording with grep.
        assert_eq!(events.len(), 65);
        assert_eq!(events.iter().filter(|e| e.is("VarSet")).count(), 14);
        assert_eq!(events.iter().filter(|e| e.is("Hangup")).count(), 3);
        let hangup = events.iter().find(|e| e.is("Hangup")).unwrap();
        assert_eq!(hangup.value("Cause-txt"), Some("Normal Clearing"));
        assert_eq!(hangup.value("uniqueid"), Some("1795626314.34"));
        // Empty values survive: `AccountCode: ` and `Value: `.
        assert_eq!(hangup.value("AccountCode"), Some(""));
        // OriginateResponse carries a Response header; it stays an event.
        let originate = events.iter().find(|e| e.is("OriginateResponse")).unwrap();
        assert_eq!(originate.value("Response"), Some("Success"));
        assert_eq!(originate.action_id(), Some("orig-1"));

        let Some(Message::Response(bye)) = messages.last() else {
            panic!("last is Goodbye");
        };
        assert_eq!(bye.status(), &ResponseStatus::Goodbye);
        assert_eq!(bye.message(), Some("Thanks for all the fish."));
    }

    #[test]
    fn every_chunk_size_gives_the_same_messages() {
        for fixture in [INBOUND, ORIGINATE] {
            let whole = parse(fixture);
            assert!(whole.iter().all(Result::is_ok));
            // Every size up to 2 KiB, then a spread up to the whole file.
            let sizes = (1..=2048).chain((2049..fixture.len()).step_by(997));
            for chunk in sizes {
                assert_eq!(
                    parse_chunked(Limits::DEFAULT, fixture, chunk),
                    whole,
                    "chunk size {chunk}"
                );
            }
        }
    }

    #[test]
    fn bare_lf_reads_like_crlf() {
        let lf: Vec<u8> = INBOUND.iter().copied().filter(|&b| b != b'\r').collect();
        assert_eq!(parse(&lf), parse(INBOUND));
    }

    #[test]
    fn duplicate_headers_keep_their_order() {
        let m = ok(parse(
            b"Response: Success\r\nActionID: 7\r\nChanVariable: A=1\r\nChanVariable: B=2\r\nX:\r\n\r\n",
        ));
        let Message::Response(r) = &m[0] else {
            panic!()
        };
        assert_eq!(
            r.headers().values("chanvariable").collect::<Vec<_>>(),
            ["A=1", "B=2"]
        );
        assert_eq!(r.value("X"), Some(""));
        assert_eq!(r.headers().len(), 5);
    }

    #[test]
    fn legacy_command_output_becomes_output_lines() {
        let m = ok(parse(LEGACY_COMMAND));
        // Banner, then the two Command responses, then an event.
        assert_eq!(m.len(), 4, "{m:#?}");
        let Message::Response(r) = &m[1] else {
            panic!("{:?}", m[1])
        };
        assert_eq!(r.status(), &ResponseStatus::Follows);
        assert_eq!(r.action_id(), Some("cmd-1"));
        assert_eq!(r.value("Privilege"), Some("Command"));
        assert_eq!(
            r.output().collect::<Vec<_>>(),
            [
                "",
                "       username: gw",
                "         secret: <Set>",
                "",
                "  read perm: system,call,log,verbose,command,agent,user,config,dtmf,reporting,cdr,dialplan,originate,all",
            ]
        );
        // Output without a final newline: the terminator is glued on.
        let Message::Response(r) = &m[2] else {
            panic!()
        };
        assert_eq!(r.action_id(), Some("cmd-2"));
        assert_eq!(
            r.output().collect::<Vec<_>>(),
            ["System uptime: 4 minutes, 32 seconds"]
        );
        let Message::Event(e) = &m[3] else { panic!() };
        assert!(e.is("FullyBooted"));
        // Split anywhere, the same.
        for chunk in 1..LEGACY_COMMAND.len() {
            assert_eq!(ok(parse_chunked(Limits::DEFAULT, LEGACY_COMMAND, chunk)), m);
        }
    }

    #[test]
    fn modern_command_output_is_output_headers() {
        let m = ok(parse(MODERN_COMMAND));
        let Message::Response(r) = &m[1] else {
            panic!("{:?}", m[1])
        };
        assert_eq!(r.status(), &ResponseStatus::Success);
        assert_eq!(r.message(), Some("Command output follows"));
        assert_eq!(
            r.output().collect::<Vec<_>>(),
            [
                "Channel              Location             State   Application(Data)             ",
                "Local/s@to-stasis-00 s@to-stasis:2        Up      Stasis(ai-gw,inbound)         ",
                "1 active channel",
            ]
        );
    }

    #[test]
    fn oversized_message_is_skipped_and_parsing_resumes() {
        let limits = Limits {
            max_message_bytes: 64,
            max_headers: 4,
        };
        let mut input = b"Asterisk Call Manager/11.0.0\r\n".to_vec();
        input.extend_from_slice(b"Event: Big\r\nData: ");
        input.extend(std::iter::repeat_n(b'x', 1000));
        input.extend_from_slice(b"\r\nMore: y\r\n\r\n");
        input.extend_from_slice(b"Event: Many\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n");
        input.extend_from_slice(b"Event: Small\r\nA: 1\r\n\r\n");
        let expect = vec![
            Ok(Message::Banner(Banner {
                line: "Asterisk Call Manager/11.0.0".into(),
            })),
            Err(ParseError::TooLarge { limit: 64 }),
            Err(ParseError::TooManyHeaders { limit: 4 }),
            Ok(Message::Event(Event::new("Small", [("A", "1")]))),
        ];
        for chunk in 1..=input.len() {
            assert_eq!(
                parse_chunked(limits, &input, chunk),
                expect,
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn malformed_and_unknown_messages_are_reported_and_skipped() {
        let m = parse(
            b"Asterisk Call Manager/5.0.2\r\nEvent: A\r\nno colon here\r\nX: 1\r\n\r\n\
              Action: Login\r\n\r\n: empty key\r\n\r\nEvent: B\r\n\r\n",
        );
        assert_eq!(
            m[1],
            Err(ParseError::MalformedLine {
                excerpt: "no colon here".into()
            })
        );
        assert_eq!(
            m[2],
            Err(ParseError::UnknownKind {
                key: "Action".into()
            })
        );
        assert!(matches!(m[3], Err(ParseError::MalformedLine { .. })));
        assert_eq!(m[4], Ok(Message::Event(Event::new("B", [("", ""); 0]))));
        assert_eq!(m.len(), 5);
    }

    #[test]
    fn no_banner_is_fine() {
        let m = ok(parse(b"Event: FullyBooted\r\nStatus: Fully Booted\r\n\r\n"));
        assert_eq!(
            m,
            [Message::Event(Event::new(
                "FullyBooted",
                [("Status", "Fully Booted")]
            ))]
        );
    }

    #[test]
    fn action_encodes_with_its_id_and_crlf() {
        let a = Action::new("Originate")
            .header("Channel", "Local/s@to-stasis")
            .header("Variable", "A=1")
            .header("Variable", "B=2")
            .header("Async", "true");
        let mut out = Vec::new();
        a.encode(&ActionId::new("mgw-1-3"), &mut out).unwrap();
        assert_eq!(
            out,
            b"Action: Originate\r\nActionID: mgw-1-3\r\nChannel: Local/s@to-stasis\r\n\
              Variable: A=1\r\nVariable: B=2\r\nAsync: true\r\n\r\n"
        );
        assert_eq!(a.value("variable"), Some("A=1"));
    }

    #[test]
    fn injection_is_rejected_and_nothing_written() {
        let mut out = Vec::new();
        let id = ActionId::new("1");
        let bad = Action::new("Setvar").header("Value", "x\r\nAction: Logoff");
        assert_eq!(
            bad.encode(&id, &mut out),
            Err(InvalidAction::Value("Value".into()))
        );
        let bad = Action::new("Setvar").header("Va lue", "x");
        assert_eq!(
            bad.encode(&id, &mut out),
            Err(InvalidAction::Key("Va lue".into()))
        );
        let bad = Action::new("Ping\n");
        assert!(matches!(
            bad.encode(&id, &mut out),
            Err(InvalidAction::Name(_))
        ));
        let bad = Action::new("Ping").header("actionid", "mine");
        assert!(matches!(
            bad.encode(&id, &mut out),
            Err(InvalidAction::Reserved(_))
        ));
        let good = Action::new("Ping");
        assert!(matches!(
            good.encode(&ActionId::new("a\rb"), &mut out),
            Err(InvalidAction::Value(_))
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn secrets_are_sent_but_never_printed() {
        let a = Action::new("Login")
            .header("Username", "gw")
            .secret_header("Secret", Secret::new("gwsecret"));
        assert!(!format!("{a:?}").contains("gwsecret"));
        assert_eq!(a.value("Secret"), None);
        let mut out = Vec::new();
        a.encode(&ActionId::new("login-1"), &mut out).unwrap();
        assert!(out.windows(16).any(|w| w == b"Secret: gwsecret"));
    }

    /// What Asterisk would send for these headers.
    fn encode_message(first: (&str, &str), headers: &[(String, String)]) -> Vec<u8> {
        let mut out = format!("{}: {}\r\n", first.0, first.1).into_bytes();
        for (k, v) in headers {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    fn header() -> impl Strategy<Value = (String, String)> {
        ("[A-Za-z][A-Za-z0-9_-]{0,15}", "[ -~]{0,40}")
            .prop_filter("not a message start", |(k, _)| {
                !k.eq_ignore_ascii_case("Response") && !k.eq_ignore_ascii_case("Event")
            })
            .prop_map(|(k, v)| (k, v.trim_start_matches(' ').to_owned()))
    }

    proptest! {
        #[test]
        fn random_bytes_in_random_chunks_never_panic_and_agree(
            bytes in proptest::collection::vec(
                prop_oneof![
                    4 => any::<u8>(),
                    2 => Just(b'\n'),
                    2 => Just(b'\r'),
                    2 => Just(b':'),
                ],
                0..2048,
            ),
            chunk in 1usize..64,
            max_bytes in 1usize..256,
            max_headers in 1usize..8,
        ) {
            let limits = Limits { max_message_bytes: max_bytes, max_headers };
            let whole = parse_chunked(limits, &bytes, bytes.len());
            let chunked = parse_chunked(limits, &bytes, chunk);
            prop_assert_eq!(&whole, &chunked);
            // Anything that came out obeys the limits.
            for m in whole.iter().flatten() {
                let h = match m {
                    Message::Response(r) => r.headers(),
                    Message::Event(e) => e.headers(),
                    Message::Banner(_) => continue,
                };
                prop_assert!(h.len() <= max_headers);
            }
        }

        #[test]
        fn well_formed_messages_round_trip_in_any_chunking(
            messages in proptest::collection::vec(
                (any::<bool>(), "[A-Za-z]{1,12}", proptest::collection::vec(header(), 0..12)),
                1..8,
            ),
            chunk in 1usize..97,
        ) {
            let mut bytes = b"Asterisk Call Manager/11.0.0\r\n".to_vec();
            let mut expect = vec![Message::Banner(Banner { line: "Asterisk Call Manager/11.0.0".into() })];
            for (is_event, name, headers) in &messages {
                let status = if name.eq_ignore_ascii_case("Follows") { "Success" } else { name.as_str() };
                let first = if *is_event { ("Event", name.as_str()) } else { ("Response", status) };
                bytes.extend(encode_message(first, headers));
                let mut all = Headers::new();
                all.push(first.0, first.1);
                for (k, v) in headers {
                    all.push(k.clone(), v.clone());
                }
                expect.push(if *is_event {
                    Message::Event(Event { name: name.clone(), headers: all })
                } else {
                    Message::Response(Response { status: ResponseStatus::parse(status), headers: all })
                });
            }
            prop_assert_eq!(ok(parse_chunked(Limits::DEFAULT, &bytes, chunk)), expect);
        }
    }
}
