//! mediagw-controlplane: everything of the gateway that has state outliving
//! a packet. It follows calls in Asterisk (AMI and ARI), decides which tenant
//! each belongs to, asks the dataplane for an RTP endpoint over its control
//! socket, points an ARI externalMedia channel at it and bridges it into the
//! call; it keeps sessions (in memory or in Redis) and reconciles them after
//! any of the three parts restarts.
//!
//! It holds no RTP socket and never touches audio: that is the dataplane's.
//! Pure parts (the AMI parser, tenant rules, backoff) are sans-IO; the tokio
//! services around them read the clock and own the sockets.
#![forbid(unsafe_code)]

pub mod ami;
pub mod ari;
pub mod callflow;
pub mod config;
pub mod dataplane;
pub mod demo;
pub mod error;
pub mod http;
pub mod metrics;
pub mod secret;
pub mod service;
pub mod session;
pub mod tenant;
