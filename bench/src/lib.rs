//! mediagw benchmarks.
//!
//! - `benches/media_core.rs`: criterion micro-benchmarks of the media core,
//!   each group with a baseline measured in the same run.
//! - `rtpload` (this crate's binary): the dataplane capacity harness. It
//!   offers N paced G.711 streams over loopback ([`sender`]) to three
//!   receivers measured in the same run: the bare [`ceiling`] (what no
//!   dataplane can beat here), the [`naive`] tokio receiver (what a user
//!   would otherwise write) and the real daemon ([`daemon`]), and reports
//!   loss, CPU per packet, wakeups, latency and memory per load ([`run`],
//!   [`report`], [`plot`]); plus the wait strategy's cost ([`linger`]) and
//!   instruction counts of the per-packet cores under callgrind
//!   ([`trace`], [`cgrind`]).
//!
//! See PERFORMANCE.md for the method, the figures and the one command that
//! reproduces them.
//!
//! Leaves out: anything but loopback (one host), other codecs than PCMU,
//! audio sent back into calls, the media socket's subscribers.

pub mod ceiling;
pub mod cgrind;
pub mod control;
pub mod daemon;
pub mod error;
pub mod footprint;
pub mod guard;
pub mod latency;
pub mod linger;
pub mod micro;
pub mod naive;
pub mod plot;
pub mod procfs;
pub mod report;
pub mod run;
pub mod sender;
pub mod trace;
