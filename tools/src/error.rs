//! The one error of the tool, and its exit code.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use mediagw_shared::control::ErrorBody;
use mediagw_shared::ids::EndpointId;
use mediagw_shared::media::MediaErrorCode;

/// Which of the dataplane's sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    /// The JSON control socket.
    Control,
    /// The binary media socket.
    Media,
}

/// Everything that can end a command early.
///
/// Printed as `error: <display>`; server refusals display as
/// `<code>: <message>` like the protocol's own errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CtlError {
    /// The socket could not be reached.
    #[error(
        "cannot connect to the {which} socket {}: {source}; is mediagw-dataplane running? \
         (set {} or {})",
        path.display(),
        which.flag(),
        which.env()
    )]
    Connect {
        /// Which socket.
        which: SocketKind,
        /// Its path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The server refused the request.
    #[error("{0}")]
    Server(ErrorBody),
    /// The media socket refused a request.
    #[error("{code}: the media socket refused {request} for {endpoint}")]
    Media {
        /// Why.
        code: MediaErrorCode,
        /// What was refused (`subscribe`, `play`).
        request: &'static str,
        /// For which endpoint.
        endpoint: EndpointId,
    },
    /// The server answers a version we do not speak.
    #[error(
        "version_mismatch: the dataplane speaks protocol version {server}, mediagwctl {client}"
    )]
    Version {
        /// The server's version.
        server: u32,
        /// Ours.
        client: u32,
    },
    /// No answer in time.
    #[error("timeout: no answer on the {which} socket within {:.1} s (see --timeout)", after.as_secs_f64())]
    Timeout {
        /// Which socket.
        which: SocketKind,
        /// How long we waited.
        after: Duration,
    },
    /// The server closed the connection while we waited for an answer.
    #[error(
        "closed: the dataplane closed the {which} connection {}",
        if *mid_message { "in the middle of a message" } else { "before answering" }
    )]
    Closed {
        /// Which socket.
        which: SocketKind,
        /// Whether part of a message had arrived.
        mid_message: bool,
    },
    /// The server sent something that is not the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A socket or file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// Why it failed.
        source: io::Error,
    },
    /// A WAV file that cannot be used.
    #[error("{}: {message}", path.display())]
    Wav {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The control plane could not be reached or refused the request.
    #[error(
        "control plane {url}: {message} (is mediagw-controlplane running? set --controlplane or MEDIAGW_CONTROLPLANE)"
    )]
    ControlPlane {
        /// What was asked.
        url: String,
        /// What went wrong, with the control plane's own error when it
        /// sent one.
        message: String,
    },
    /// Arguments that parse but do not make sense together.
    #[error("{0}")]
    Usage(String),
}

impl CtlError {
    /// The process exit code: 2 for usage errors, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            _ => 1,
        }
    }

    /// An [`CtlError::Io`] with what we were doing.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// A [`CtlError::Wav`] from hound's error.
    pub fn wav(path: impl Into<PathBuf>, e: impl fmt::Display) -> Self {
        Self::Wav {
            path: path.into(),
            message: e.to_string(),
        }
    }
}

impl SocketKind {
    fn flag(self) -> &'static str {
        match self {
            Self::Control => "--socket",
            Self::Media => "--media-socket",
        }
    }

    fn env(self) -> &'static str {
        match self {
            Self::Control => "MEDIAGW_CONTROL_SOCKET",
            Self::Media => "MEDIAGW_MEDIA_SOCKET",
        }
    }
}

impl fmt::Display for SocketKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Control => "control",
            Self::Media => "media",
        })
    }
}

#[cfg(test)]
mod tests {
    use mediagw_shared::control::ErrorCode;

    use super::*;

    #[test]
    fn server_errors_read_like_the_protocol() {
        let e = CtlError::Server(ErrorBody::new(ErrorCode::UnknownEndpoint, "no ep-7"));
        assert_eq!(e.to_string(), "unknown_endpoint: no ep-7");
        assert_eq!(e.exit_code(), 1);
        assert_eq!(CtlError::Usage("x".into()).exit_code(), 2);
    }

    #[test]
    fn connect_errors_name_the_socket_and_the_fix() {
        let e = CtlError::Connect {
            which: SocketKind::Media,
            path: "/run/x.sock".into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        let s = e.to_string();
        for needle in [
            "media socket /run/x.sock",
            "mediagw-dataplane running",
            "--media-socket",
            "MEDIAGW_MEDIA_SOCKET",
        ] {
            assert!(s.contains(needle), "{s}");
        }
    }
}
