//! The control plane's one error type.
//!
//! Every failure says three things a caller acts on: **what** went wrong
//! ([`ErrorKind`]), **who** is at fault ([`Party`]: Asterisk, the dataplane,
//! the session store, the client, or we ourselves) and **whether a retry can
//! help** ([`Error::retryable`]). Context is a short human string; the cause,
//! when there is one, is kept as the error's `source()`.
//!
//! The kind maps to an HTTP status ([`Error::http_status`]) and to a stable
//! machine code ([`Error::code`]) for API and control-protocol answers, the
//! way pingora-error and rustls sort their errors.

use std::borrow::Cow;
use std::fmt;

/// What went wrong, independent of who did it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The thing named does not exist (any more): ARI 404, a channel that
    /// hung up, an unknown session or endpoint.
    NotFound,
    /// The request does not fit the current state: ARI 409 (channel not in
    /// Stasis, bridge in use), a session already ended.
    Conflict,
    /// The request itself is wrong: ARI 400 and 422, bad configuration, bad
    /// client input. Retrying the same request cannot help.
    Invalid,
    /// Credentials refused: AMI login failed, ARI 401 or 403.
    Unauthorized,
    /// The peer cannot be reached or the connection dropped.
    Unavailable,
    /// The peer did not answer in time.
    Timeout,
    /// The peer said something that does not follow its protocol.
    Protocol,
    /// The peer failed internally: ARI 5xx, a dataplane `internal` error.
    PeerFailure,
    /// Out of capacity: the dataplane's ports are exhausted or it drains.
    Exhausted,
    /// A bug or an impossible state on our side.
    Internal,
}

/// Who is at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Party {
    /// Asterisk (AMI or ARI).
    Asterisk,
    /// The dataplane (control socket).
    Dataplane,
    /// The session store (Redis).
    SessionStore,
    /// Whoever called us: an API client, an operator, a configuration file.
    Client,
    /// The control plane itself.
    Internal,
}

/// A control-plane error: kind, party at fault, retryability, context and
/// cause.
pub struct Error {
    kind: ErrorKind,
    party: Party,
    retryable: bool,
    context: Cow<'static, str>,
    cause: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// The control plane's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` caused by `party`, retryable as the kind usually
    /// is ([`ErrorKind::default_retryable`]).
    pub fn new(kind: ErrorKind, party: Party, context: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            party,
            retryable: kind.default_retryable(),
            context: context.into(),
            cause: None,
        }
    }

    /// Attaches the underlying error.
    #[must_use]
    pub fn with_cause(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.cause = Some(Box::new(cause));
        self
    }

    /// Overrides whether a retry can help.
    #[must_use]
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// Prefixes the context with what we were doing (`"answer channel 1.34"`).
    #[must_use]
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.context = Cow::Owned(format!("{what}: {}", self.context));
        self
    }

    /// An [`ErrorKind::Invalid`] error on the client's side.
    pub fn invalid(context: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Invalid, Party::Client, context)
    }

    /// An [`ErrorKind::Internal`] error on our side.
    pub fn internal(context: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Internal, Party::Internal, context)
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Who is at fault.
    pub fn party(&self) -> Party {
        self.party
    }

    /// Whether the same request can succeed later.
    pub fn retryable(&self) -> bool {
        self.retryable
    }

    /// The human context, without the cause.
    pub fn message(&self) -> &str {
        &self.context
    }

    /// The HTTP status an API answers with.
    pub fn http_status(&self) -> u16 {
        match self.kind {
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::Invalid if self.party == Party::Client => 400,
            ErrorKind::Unauthorized if self.party == Party::Client => 401,
            ErrorKind::Exhausted | ErrorKind::Unavailable => 503,
            ErrorKind::Timeout => 504,
            // Asterisk, the dataplane or Redis failing us: a bad gateway.
            ErrorKind::Invalid
            | ErrorKind::Unauthorized
            | ErrorKind::Protocol
            | ErrorKind::PeerFailure => 502,
            ErrorKind::Internal => 500,
        }
    }

    /// A stable machine code (`"not_found"`, `"unavailable"`, ...).
    pub fn code(&self) -> &'static str {
        self.kind.as_str()
    }
}

impl ErrorKind {
    /// Whether an error of this kind is usually worth retrying.
    pub fn default_retryable(self) -> bool {
        match self {
            Self::Unavailable | Self::Timeout | Self::PeerFailure | Self::Exhausted => true,
            Self::NotFound
            | Self::Conflict
            | Self::Invalid
            | Self::Unauthorized
            | Self::Protocol
            | Self::Internal => false,
        }
    }

    /// The kind's stable machine code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::Invalid => "invalid",
            Self::Unauthorized => "unauthorized",
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::Protocol => "protocol",
            Self::PeerFailure => "peer_failure",
            Self::Exhausted => "exhausted",
            Self::Internal => "internal",
        }
    }
}

impl Party {
    /// Lowercase name for logs and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Asterisk => "asterisk",
            Self::Dataplane => "dataplane",
            Self::SessionStore => "session_store",
            Self::Client => "client",
            Self::Internal => "internal",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}", self.context, self.kind.as_str())?;
        if self.party != Party::Internal {
            write!(f, ", {}", self.party.as_str())?;
        }
        f.write_str(")")?;
        if let Some(cause) = &self.cause {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("party", &self.party)
            .field("retryable", &self.retryable)
            .field("context", &self.context)
            .field("cause", &self.cause.as_ref().map(|c| c.to_string()))
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|c| c as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_party_at_fault() {
        let client = Error::invalid("bad tenant");
        assert_eq!(client.http_status(), 400);
        assert!(!client.retryable());
        let asterisk = Error::new(ErrorKind::Invalid, Party::Asterisk, "422 from ARI");
        assert_eq!(asterisk.http_status(), 502);
        let gone = Error::new(ErrorKind::NotFound, Party::Asterisk, "channel 1.2");
        assert_eq!(gone.http_status(), 404);
        let down = Error::new(ErrorKind::Unavailable, Party::Dataplane, "socket");
        assert_eq!(down.http_status(), 503);
        assert!(down.retryable());
        assert_eq!(down.code(), "unavailable");
    }

    #[test]
    fn display_carries_context_party_and_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = Error::new(
            ErrorKind::Unavailable,
            Party::Asterisk,
            "connect 127.0.0.1:5038",
        )
        .with_cause(io)
        .context("ami pbx-a");
        assert_eq!(
            e.to_string(),
            "ami pbx-a: connect 127.0.0.1:5038 (unavailable, asterisk): refused"
        );
        assert!(std::error::Error::source(&e).is_some());
        assert!(e.retryable());
    }
}
