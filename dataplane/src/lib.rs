//! mediagw-dataplane: the media core.
//!
//! Plain types fed bytes and an explicit arrival time, returning results:
//! RTP and RTCP parsing and writing ([`rtp`], [`rtcp`]), RFC 3550 receive
//! statistics ([`stats`]), the jitter buffer ([`jitter`]) and the frame ring
//! that hands 20 ms PCM16 frames to the tap ([`ring`]). No sockets, no clock:
//! the daemon's io_uring loop moves bytes between the kernel and these.

pub mod config;
pub mod daemon;
pub mod endpoint;
pub mod jitter;
pub mod metrics;
pub mod net;
#[cfg(feature = "netsim")]
pub mod netsim;
pub mod ports;
pub mod ring;
pub mod rtcp;
pub mod rtp;
pub mod stats;
pub mod tap;
pub mod units;
pub mod worker;
