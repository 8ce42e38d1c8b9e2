//! Test-only support for mediagw's control-plane tests: an Asterisk test
//! double ([`asterisk::AsteriskDouble`]) that speaks AMI over TCP and ARI over
//! HTTP and WebSocket the way a real Asterisk 22 does, keeps channels and
//! bridges as state, and sends real RTP to externalMedia addresses.
//!
//! Never linked into production code: it is a dev-dependency of the control
//! plane and of the benchmarks. It does no SIP and mixes no audio; the README
//! next to this crate lists every place where it departs from Asterisk.
#![forbid(unsafe_code)]

pub mod asterisk;
