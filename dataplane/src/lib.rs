//! mediagw-dataplane: the media core.
//!
//! Plain types fed bytes and an explicit arrival time, returning results:
//! RTP and RTCP parsing and writing ([`rtp`], [`rtcp`]), RFC 3550 receive
//! statistics ([`stats`]), the jitter buffer ([`jitter`]) and the frame ring
//! that hands 20 ms PCM16 frames to the tap ([`ring`]). No sockets, no clock:
//! the daemon's io_uring loop moves bytes between the kernel and these.

pub mod jitter;
#[cfg(feature = "netsim")]
pub mod netsim;
pub mod ring;
pub mod rtcp;
pub mod rtp;
pub mod stats;
pub mod units;
