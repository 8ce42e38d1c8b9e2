//! The harness's one error type: what went wrong, with what the harness was
//! doing. Nothing in a benchmark run is retried; a failed run says why and
//! stops, after cleaning up (see [`crate::guard`]).

use std::fmt;

/// A failed step of a benchmark run.
#[derive(Debug)]
pub struct BenchError {
    message: String,
    interrupted: bool,
}

impl BenchError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            interrupted: false,
        }
    }

    /// The run was stopped by SIGINT or SIGTERM.
    pub fn interrupted() -> Self {
        Self {
            message: "interrupted".to_owned(),
            interrupted: true,
        }
    }

    /// Whether this is [`BenchError::interrupted`].
    pub fn is_interrupted(&self) -> bool {
        self.interrupted
    }

    /// Prefixes what the harness was doing.
    pub fn context(self, what: impl fmt::Display) -> Self {
        Self {
            message: format!("{what}: {}", self.message),
            interrupted: self.interrupted,
        }
    }
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BenchError {}

impl From<std::io::Error> for BenchError {
    fn from(e: std::io::Error) -> Self {
        Self::new(e.to_string())
    }
}

/// The harness's result.
pub type Result<T> = std::result::Result<T, BenchError>;

/// Adds what the harness was doing to any displayable error.
pub trait Context<T> {
    /// Maps the error to a [`BenchError`] saying `what` failed.
    fn context(self, what: impl fmt::Display) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| BenchError::new(format!("{what}: {e}")))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.ok_or_else(|| BenchError::new(what.to_string()))
    }
}
