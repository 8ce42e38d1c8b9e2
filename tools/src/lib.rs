//! mediagwctl: the operator's command line for the mediagw dataplane.
//!
//! A thin blocking client of the two Unix sockets the dataplane serves: the
//! control socket (newline-delimited JSON, [`client::Client`]) and the media
//! socket (binary frames, [`media::MediaConn`]). The protocols themselves,
//! every type and every byte, come from `mediagw-shared`; this crate only
//! drives them, formats what comes back ([`format`], [`watch`]) and moves
//! audio between the media socket and WAV files ([`commands`]).
//!
//! Leaves out: any async runtime (std sockets with timeouts suffice), a TUI
//! (`watch` redraws with a plain ANSI clear-screen), retries (an operator
//! reruns the command).
//!
//! The CLI is a driver in the sans-IO sense: it may read the clock, through
//! [`now`] only; the formatting and rate computations it feeds are plain
//! functions of their inputs.
#![forbid(unsafe_code)]

use std::time::Instant;

pub mod cli;
pub mod client;
pub mod commands;
pub mod error;
pub mod format;
pub mod interrupt;
pub mod media;
pub mod watch;

pub use client::Client;
pub use error::CtlError;

/// The client name sent in `hello`.
pub const CLIENT_NAME: &str = concat!("mediagwctl/", env!("CARGO_PKG_VERSION"));

/// The monotonic clock: the one place the tool reads it (deadlines, play
/// pacing, watch rates).
#[allow(clippy::disallowed_methods)] // A driver: see the crate docs.
pub fn now() -> Instant {
    Instant::now()
}
