//! Asterisk's Manager Interface (AMI, TCP 5038): what the control plane
//! learns about calls from it, and the actions it sends.
//!
//! - [`proto`]: the wire format, sans-IO. An incremental parser (banner,
//!   responses, events, both forms of `Command` output) with bounded memory,
//!   and the action encoder.
//! - [`events`]: typed, borrowed views of the call events we act on.
//! - [`channels`]: a sans-IO tracker of live channels fed those events.
//! - [`client`]: the tokio service owning the connection (login, ActionID
//!   correlation, keepalive, reconnect with backoff, failover across
//!   servers) and the [`AmiClient`] handle.
//!
//! Formats handled: Asterisk 12 to 22 event names and headers (AMI 2.x to
//! 11.x), and the legacy `Response: Follows` command output of Asterisk 13
//! and older. Left out: AMI over TLS or HTTP, MD5 challenge login, and the
//! Asterisk 11 event names. `docs/ami.md` has the policies.
#![warn(missing_docs)]

pub mod channels;
pub mod client;
pub mod events;
pub mod proto;

pub use channels::{ChannelChange, ChannelTracker, TrackerLimits, UniqueId};
pub use client::{AmiClient, AmiConfig, AmiEvent, AmiMetrics, AmiResponse, AmiServer, AmiService};
pub use events::CallEvent;
pub use proto::{Action, Event, Message, Parser, Response, ResponseStatus};
