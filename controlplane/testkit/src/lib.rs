//! Test-only support for mediagw's control-plane tests: an Asterisk test
//! double that speaks AMI over TCP and ARI over HTTP and WebSocket the way a
//! real Asterisk 22 does, keeps channels and bridges as state, and sends
//! real RTP to externalMedia addresses. Never linked into production code.
#![forbid(unsafe_code)]
