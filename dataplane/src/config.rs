//! The dataplane daemon's configuration: one TOML file, every key
//! overridable by an environment variable `MEDIAGW_DP_<SECTION>__<KEY>`
//! (for example `MEDIAGW_DP_PORTS__QUARANTINE_MS=2000`), validated at start
//! with an error that names the key.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::jitter::JitterConfig;
use crate::ports::{PortPool, PortRange};
use crate::units::ClockRate;

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "MEDIAGW_DP_";

/// Which receive engine workers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineChoice {
    /// io_uring, falling back to epoll (with the reason logged) if it cannot
    /// be set up.
    Auto,
    /// io_uring or refuse to start.
    IoUring,
    /// The epoll + recvmmsg loop.
    Epoll,
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Threads, sockets and engine.
    pub dataplane: DataplaneSection,
    /// RTP port ranges.
    pub ports: PortsSection,
    /// Endpoint behaviour.
    pub endpoint: EndpointSection,
    /// Jitter buffer defaults (a create request may narrow them).
    pub jitter: JitterSection,
}

/// `[dataplane]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataplaneSection {
    /// Worker threads; 0 means one per core less one (at least one).
    pub workers: usize,
    /// Pin each worker to its own core.
    pub pin_workers: bool,
    /// Receive engine.
    pub engine: EngineChoice,
    /// The longest a worker waits for packets before it runs its timers, µs.
    pub tick_us: u64,
    /// Socket receive buffer per endpoint, bytes.
    pub rcvbuf_bytes: usize,
    /// Control socket path (newline-delimited JSON).
    pub control_socket: PathBuf,
    /// Media socket path (binary frames).
    pub media_socket: PathBuf,
    /// File mode of both sockets, octal string such as "0660".
    pub socket_mode: String,
    /// Prometheus exposition address; empty turns it off.
    pub metrics_addr: String,
    /// Address endpoints bind to.
    pub bind_ip: IpAddr,
    /// Address endpoints are announced at, if not `bind_ip` (NAT, 0.0.0.0).
    pub advertise_ip: Option<IpAddr>,
    /// Most endpoints at once, over all workers.
    pub max_endpoints: usize,
}

/// `[ports]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PortsSection {
    /// Range for tenants without their own, "FIRST-LAST"; empty for none.
    pub default: String,
    /// Per-tenant ranges, tenant = "FIRST-LAST".
    pub tenants: BTreeMap<String, String>,
    /// How long a released port rests before reuse, ms.
    pub quarantine_ms: u64,
    /// Open RTCP on port + 1 by default.
    pub rtcp: bool,
}

/// `[endpoint]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EndpointSection {
    /// Silence after which another source may take over the latch, ms.
    pub relatch_after_ms: u64,
    /// No packet for this long marks the endpoint silent, ms.
    pub silent_after_ms: u64,
    /// Frames each endpoint's tap ring holds.
    pub tap_ring_frames: usize,
    /// Frames of audio to play that each endpoint queues.
    pub play_ring_frames: usize,
}

/// `[jitter]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JitterSection {
    /// Lowest target delay, ms.
    pub min_ms: u32,
    /// Highest target delay, ms.
    pub max_ms: u32,
    /// Audio the buffer can hold, ms (fixed memory).
    pub capacity_ms: u32,
}

impl Default for DataplaneSection {
    fn default() -> Self {
        Self {
            workers: 0,
            pin_workers: true,
            engine: EngineChoice::Auto,
            tick_us: 1000,
            rcvbuf_bytes: 256 * 1024,
            control_socket: PathBuf::from("/run/mediagw/control.sock"),
            media_socket: PathBuf::from("/run/mediagw/media.sock"),
            socket_mode: "0660".to_owned(),
            metrics_addr: "127.0.0.1:9108".to_owned(),
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            advertise_ip: None,
            max_endpoints: 20_000,
        }
    }
}

impl Default for PortsSection {
    fn default() -> Self {
        Self {
            default: "20000-39999".to_owned(),
            tenants: BTreeMap::new(),
            quarantine_ms: 5_000,
            rtcp: false,
        }
    }
}

impl Default for EndpointSection {
    fn default() -> Self {
        Self {
            relatch_after_ms: 2_000,
            silent_after_ms: 1_000,
            tap_ring_frames: 16,
            // 320 ms: a client that sends faster is slowed down by the media
            // socket (the tap stops reading it while the ring is full), so a
            // deeper ring only holds more memory per endpoint.
            play_ring_frames: 16,
        }
    }
}

impl Default for JitterSection {
    fn default() -> Self {
        Self {
            min_ms: 20,
            max_ms: 200,
            capacity_ms: 400,
        }
    }
}

/// A configuration that cannot be used, with the key at fault.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Loads defaults, then the TOML file if given, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError(format!(
                    "configuration file {} does not exist",
                    path.display()
                )));
            }
            fig = fig.merge(Toml::file(path));
        }
        // `<PREFIX>CONFIG` names the file (the command line's `--config`),
        // not a key.
        Self::from_figment(fig.merge(Env::prefixed(ENV_PREFIX).ignore(&["config"]).split("__")))
    }

    /// Parses a TOML string over the defaults (tests, `--check`).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_figment(
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text)),
        )
    }

    fn from_figment(fig: Figment) -> Result<Self, ConfigError> {
        let cfg: Config = fig
            .extract()
            .map_err(|e| ConfigError(format!("bad configuration: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what serde cannot: ranges, bounds, modes.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let d = &self.dataplane;
        if !(50..=100_000).contains(&d.tick_us) {
            return Err(ConfigError(format!(
                "dataplane.tick_us = {} is out of range 50..=100000",
                d.tick_us
            )));
        }
        self.socket_mode()?;
        if d.max_endpoints == 0 {
            return Err(ConfigError("dataplane.max_endpoints must be > 0".into()));
        }
        if !d.metrics_addr.is_empty() && d.metrics_addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError(format!(
                "dataplane.metrics_addr = {:?} is not ADDRESS:PORT",
                d.metrics_addr
            )));
        }
        self.port_pool()?;
        let e = &self.endpoint;
        if e.tap_ring_frames < 2 || e.play_ring_frames < 2 {
            return Err(ConfigError(
                "endpoint.tap_ring_frames and endpoint.play_ring_frames must be >= 2".into(),
            ));
        }
        for rate in [ClockRate::NARROWBAND, ClockRate::WIDEBAND] {
            crate::jitter::JitterBuffer::new(self.jitter_config(rate, None, None))
                .map(drop)
                .map_err(|e| ConfigError(format!("[jitter]: {e}")))?;
        }
        Ok(())
    }

    /// Worker count after resolving 0 to cores - 1.
    pub fn worker_count(&self) -> usize {
        match self.dataplane.workers {
            0 => {
                std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
            }
            n => n,
        }
    }

    /// Mode bits for the sockets.
    pub fn socket_mode(&self) -> Result<u32, ConfigError> {
        let s = self.dataplane.socket_mode.trim_start_matches("0o");
        u32::from_str_radix(s, 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                ConfigError(format!(
                    "dataplane.socket_mode = {:?} is not an octal mode such as \"0660\"",
                    self.dataplane.socket_mode
                ))
            })
    }

    /// The port pool the configuration describes.
    pub fn port_pool(&self) -> Result<PortPool, ConfigError> {
        let p = &self.ports;
        let default = if p.default.is_empty() {
            None
        } else {
            Some(
                p.default
                    .parse::<PortRange>()
                    .map_err(|e| ConfigError(format!("ports.default: {e}")))?,
            )
        };
        let mut tenants = Vec::new();
        for (t, r) in &p.tenants {
            let range = r
                .parse::<PortRange>()
                .map_err(|e| ConfigError(format!("ports.tenants.{t}: {e}")))?;
            tenants.push((t.clone(), range));
        }
        PortPool::new(default, tenants, Duration::from_millis(p.quarantine_ms))
            .map_err(|e| ConfigError(format!("[ports]: {e}")))
    }

    /// Jitter buffer settings for a stream at `rate`, narrowed by a request.
    pub fn jitter_config(
        &self,
        rate: ClockRate,
        min_ms: Option<u32>,
        max_ms: Option<u32>,
    ) -> JitterConfig {
        let j = &self.jitter;
        let max = max_ms.unwrap_or(j.max_ms);
        JitterConfig {
            clock_rate: rate,
            frame_ms: 20,
            min_delay_ms: min_ms.unwrap_or(j.min_ms),
            max_delay_ms: max,
            capacity_ms: j.capacity_ms.max(max + 40),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
        assert!(Config::default().worker_count() >= 1);
    }

    #[test]
    fn toml_overrides_and_unknown_keys_fail() {
        let c = Config::from_toml(
            "[dataplane]\nworkers = 3\nengine = \"epoll\"\n[ports]\ndefault = \"40000-40099\"\n[ports.tenants]\nacme = \"41000-41099\"\n",
        )
        .unwrap();
        assert_eq!(c.dataplane.workers, 3);
        assert_eq!(c.dataplane.engine, EngineChoice::Epoll);
        assert_eq!(c.ports.tenants["acme"], "41000-41099");
        let err = Config::from_toml("[dataplane]\nwrokers = 3\n").unwrap_err();
        assert!(err.0.contains("wrokers"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        for (toml, key) in [
            ("[ports]\ndefault = \"9-3\"", "ports.default"),
            ("[ports.tenants]\nx = \"20000-20100\"", "overlap"),
            ("[dataplane]\nsocket_mode = \"999\"", "socket_mode"),
            ("[dataplane]\ntick_us = 1", "tick_us"),
            ("[dataplane]\nmetrics_addr = \"nope\"", "metrics_addr"),
            ("[jitter]\nmin_ms = 500\nmax_ms = 100", "[jitter]"),
        ] {
            let err = Config::from_toml(toml).unwrap_err();
            assert!(err.0.contains(key), "{toml}: {err}");
        }
    }
}
