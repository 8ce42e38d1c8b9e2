//! The `[sessions]` configuration: which backend, where Redis is, how long
//! abandoned and ended sessions are kept.
//!
//! Plain data with serde defaults; it reads no file and no environment
//! itself (the daemon's figment loader does), except that the default
//! `host` is this machine's host name.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::secret::SecretSource;

/// Which store holds sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// In this process only: the default on one host, lost on restart.
    #[default]
    Memory,
    /// Redis, shared by every host: production.
    Redis,
}

/// Session store configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// `"memory"` (default) or `"redis"`.
    pub backend: BackendKind,
    /// Where Redis listens: `redis://host:port/db` or
    /// `redis+unix:///path`. Put no password here; use `redis_password`.
    pub redis_url: String,
    /// The Redis password (ACL user from the URL, if any), inline or as a
    /// file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_password: Option<SecretSource>,
    /// How long one Redis connection attempt or command may take before it
    /// fails as unavailable, in milliseconds.
    pub redis_timeout_ms: u64,
    /// The first part of every Redis key and channel: `A-Z a-z 0-9 _ . -`,
    /// so several deployments (or tests) can share one Redis.
    pub key_prefix: String,
    /// A live session nobody touched for this long is abandoned: the reaper
    /// marks it failed. Longer than the longest call (default 4 h).
    pub abandon_after_ms: u64,
    /// Ended sessions stay readable this long after they ended (default
    /// 1 h), then go.
    pub retain_ended_ms: u64,
    /// How often the reaper runs (default 30 s).
    pub reap_interval_ms: u64,
    /// Events buffered per in-process subscriber before the slowest one
    /// starts missing some (default 1024).
    pub event_buffer: usize,
    /// This control plane's name; sessions it owns carry it. Default: the
    /// machine's host name.
    pub host: String,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            backend: BackendKind::Memory,
            redis_url: "redis://127.0.0.1:6379".to_owned(),
            redis_password: None,
            redis_timeout_ms: 2_000,
            key_prefix: "mediagw".to_owned(),
            abandon_after_ms: 4 * 3600 * 1000,
            retain_ended_ms: 3600 * 1000,
            reap_interval_ms: 30_000,
            event_buffer: 1024,
            host: default_host(),
        }
    }
}

impl SessionConfig {
    /// [`Self::abandon_after_ms`] as a duration.
    pub fn abandon_after(&self) -> Duration {
        Duration::from_millis(self.abandon_after_ms)
    }

    /// [`Self::retain_ended_ms`] as a duration.
    pub fn retain_ended(&self) -> Duration {
        Duration::from_millis(self.retain_ended_ms)
    }

    /// [`Self::reap_interval_ms`] as a duration.
    pub fn reap_interval(&self) -> Duration {
        Duration::from_millis(self.reap_interval_ms)
    }

    /// [`Self::redis_timeout_ms`] as a duration.
    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }

    /// Checks the values (not whether Redis is reachable).
    pub fn validate(&self) -> Result<()> {
        super::model::check_host(&self.host).map_err(|e| e.context("sessions.host"))?;
        let prefix_ok = !self.key_prefix.is_empty()
            && self.key_prefix.len() <= 64
            && self
                .key_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !prefix_ok {
            return Err(Error::invalid(format!(
                "sessions.key_prefix {:?}: expected 1 to 64 characters of A-Z a-z 0-9 _ . -",
                self.key_prefix
            )));
        }
        for (name, v) in [
            ("abandon_after_ms", self.abandon_after_ms),
            ("reap_interval_ms", self.reap_interval_ms),
            ("redis_timeout_ms", self.redis_timeout_ms),
        ] {
            if v == 0 {
                return Err(Error::invalid(format!("sessions.{name}: must be above 0")));
            }
        }
        if self.event_buffer == 0 {
            return Err(Error::invalid("sessions.event_buffer: must be above 0"));
        }
        Ok(())
    }
}

/// This machine's host name (from `/proc/sys/kernel/hostname`, then
/// `$HOSTNAME`), cut to what a session's host allows; `"localhost"` when
/// neither gives one.
pub fn default_host() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let cleaned: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        .take(255)
        .collect();
    if cleaned.is_empty() {
        "localhost".to_owned()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_unknown_keys_refused() {
        let c = SessionConfig::default();
        c.validate().unwrap();
        assert_eq!(c.backend, BackendKind::Memory);
        assert_eq!(c.abandon_after(), Duration::from_secs(4 * 3600));
        let parsed: SessionConfig =
            serde_json::from_str(r#"{"backend": "redis", "key_prefix": "gw-eu"}"#).unwrap();
        assert_eq!(parsed.backend, BackendKind::Redis);
        assert_eq!(parsed.redis_url, "redis://127.0.0.1:6379");
        assert_eq!(parsed.key_prefix, "gw-eu");
        let e = serde_json::from_str::<SessionConfig>(r#"{"backnd": "redis"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let c = SessionConfig {
            key_prefix: "a b".into(),
            ..SessionConfig::default()
        };
        assert!(c.validate().unwrap_err().message().contains("key_prefix"));
        let c = SessionConfig {
            host: String::new(),
            ..SessionConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .message()
                .starts_with("sessions.host")
        );
        let c = SessionConfig {
            abandon_after_ms: 0,
            ..SessionConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .message()
                .contains("abandon_after_ms")
        );
        assert!(!default_host().is_empty());
    }
}
