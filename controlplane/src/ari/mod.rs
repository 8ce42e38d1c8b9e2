//! The Asterisk ARI client: REST calls with basic auth, and the events
//! WebSocket of the Stasis application, reconnecting and failing over.
//!
//! - [`model`]: serde types for what the control plane reads from ARI
//!   (channels, bridges, recordings, `/asterisk/info`) and the events as one
//!   enum, [`AriEvent`]. Lenient: unknown fields are ignored, fields that
//!   Asterisk 18 lacks are optional, unknown event types are
//!   [`AriEvent::Unknown`], never an error. No IO.
//! - [`rest`]: [`AriClient`], the operations the call flow needs (answer,
//!   hang up, originate, channel variables, externalMedia, mixing bridges,
//!   live bridge recordings), with Asterisk's HTTP errors mapped to
//!   [`crate::error::ErrorKind`]s that say what they mean for the call.
//! - [`events`]: [`AriEvents`], the service holding
//!   `GET /ari/events?app=APP&subscribeAll=false`, forwarding
//!   [`AriSignal`]s (events, plus `Connected`/`Disconnected` markers) on a
//!   bounded channel, with WebSocket ping keepalive, backoff and failover.
//!
//! The REST client and the events service share the *active server*: the
//! events service moves it when it fails over, so requests go to the
//! Asterisk the events come from.
//!
//! Left out: TLS for the events WebSocket (`https` server URLs are refused:
//! ARI is expected on loopback or a private network, as in Asterisk's
//! `http.conf` `bindaddr`), playbacks, snoop, DTMF and the rest of ARI the
//! gateway does not use, and the call flow itself (it consumes the signals).

use serde::{Deserialize, Serialize};

use crate::secret::SecretSource;

pub mod events;
pub mod model;
pub mod rest;

pub use events::{AriEventMetrics, AriEvents, AriSignal};
pub use model::{AriEvent, Bridge, BridgeId, Channel, ChannelId, LiveRecording};
pub use rest::{AriClient, ExternalMedia, LiveRecord, MediaFormat, Originate};

/// ARI configuration (`[ari]` in the configuration file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AriConfig {
    /// The Asterisk servers, in failover order: the same servers as AMI.
    pub servers: Vec<AriServer>,
    /// The ARI user (`ari.conf`, `type = user`).
    pub username: String,
    /// Its password.
    pub password: SecretSource,
    /// The Stasis application name the dialplan sends calls to
    /// (`Stasis(mediagw,...)`).
    pub app: String,
    /// How long one REST request (connect, send, answer) may take, and how
    /// long the WebSocket handshake may take.
    pub request_timeout_ms: u64,
    /// The first reconnect delay of the events WebSocket.
    pub backoff_min_ms: u64,
    /// The largest reconnect delay.
    pub backoff_max_ms: u64,
    /// How often a WebSocket ping is sent; a peer that sends nothing (not
    /// even the pong) for two intervals is taken as dead.
    pub ping_interval_ms: u64,
}

/// One Asterisk server's ARI endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AriServer {
    /// A short name for logs, metrics and status (`pbx-a`).
    pub name: String,
    /// Asterisk's HTTP server, `http://127.0.0.1:8088` (with `http.conf`'s
    /// `prefix` as path when one is set). The client appends `/ari`.
    pub url: String,
}

impl Default for AriConfig {
    fn default() -> Self {
        Self {
            servers: vec![AriServer {
                name: "local".to_owned(),
                url: "http://127.0.0.1:8088".to_owned(),
            }],
            username: "mediagw".to_owned(),
            password: SecretSource::default(),
            app: "mediagw".to_owned(),
            request_timeout_ms: 5_000,
            backoff_min_ms: 250,
            backoff_max_ms: 10_000,
            ping_interval_ms: 5_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_unknown_keys() {
        let cfg: AriConfig = serde_json::from_str(
            r#"{"servers":[{"name":"pbx-a","url":"http://10.0.0.1:8088"}],
                "username":"gw","password":{"file":"ari"}}"#,
        )
        .unwrap();
        assert_eq!(cfg.app, "mediagw");
        assert_eq!(cfg.servers[0].name, "pbx-a");
        assert_eq!(cfg.request_timeout_ms, 5_000);
        let e = serde_json::from_str::<AriConfig>(r#"{"usr":"gw"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `usr`"), "{e}");
    }
}
