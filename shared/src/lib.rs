//! mediagw-shared: what the dataplane and the control plane must agree on.
//!
//! Codecs ([`codec::Codec`]), the G.711 laws ([`g711`]), 16-bit linear
//! big-endian audio ([`l16`]) and the units they are measured in
//! ([`units::ClockRate`]). No sockets, no clock, no allocation.
#![forbid(unsafe_code)]

pub mod codec;
pub mod control;
pub mod g711;
pub mod ids;
pub mod l16;
pub mod media;
pub mod units;
