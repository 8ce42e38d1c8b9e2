//! The control plane's configuration: one TOML file, every key overridable
//! by an environment variable `MEDIAGW_CP_<SECTION>__<KEY>` (for example
//! `MEDIAGW_CP_SESSIONS__BACKEND=redis`), secrets by file path
//! (`password.file`, relative paths under systemd's
//! `$CREDENTIALS_DIRECTORY`). Validated at start with errors that name the
//! key. The embedded defaults run on one host with no outside service:
//! in-memory sessions, an Asterisk expected on 127.0.0.1 that may be absent.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::ami::AmiConfig;
use crate::ari::AriConfig;
use crate::callflow::CallConfig;
use crate::dataplane::DataplaneConfig;
use crate::demo::DemoConfig;
use crate::error::{Error, Result};
use crate::session::SessionConfig;
use crate::tenant::{RoutingConfig, TenantConfig, TenantRules};

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "MEDIAGW_CP_";

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The process itself.
    pub controlplane: ControlplaneSection,
    /// The dataplane's control socket.
    pub dataplane: DataplaneConfig,
    /// Asterisk Manager Interface.
    pub ami: AmiConfig,
    /// Asterisk REST Interface.
    pub ari: AriConfig,
    /// The session store.
    pub sessions: SessionConfig,
    /// Call handling.
    pub calls: CallConfig,
    /// Where a call's tenant comes from.
    pub routing: RoutingConfig,
    /// The tenants, their rules and policies.
    pub tenants: Vec<TenantConfig>,
    /// Demo calls without Asterisk.
    pub demo: DemoConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            controlplane: ControlplaneSection::default(),
            dataplane: DataplaneConfig::default(),
            ami: AmiConfig {
                // What the call flow reads from AMI: a channel's facts for
                // tenant routing (Newchannel, VarSet) and its hangup cause.
                // Asterisk filters the rest out before sending: a busy PBX
                // sends dozens of events per call, most of no use here. Add
                // Newstate, DialBegin, DialEnd, BridgeEnter and BridgeLeave
                // for the tracker's full channel picture.
                events: ["FullyBooted", "Newchannel", "VarSet", "Hangup"]
                    .map(str::to_owned)
                    .to_vec(),
                ..AmiConfig::default()
            },
            ari: AriConfig::default(),
            sessions: SessionConfig::default(),
            calls: CallConfig::default(),
            routing: RoutingConfig::default(),
            tenants: Vec::new(),
            demo: DemoConfig::default(),
        }
    }
}

/// `[controlplane]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlplaneSection {
    /// Metrics, health and the operations API; empty turns it off.
    pub http_listen: String,
    /// Connect to AMI (events, hangup causes, channel statistics). ARI is
    /// always used: it drives the calls.
    pub ami_enabled: bool,
    /// How long services get to drain at stop, ms.
    pub drain_timeout_ms: u64,
}

impl Default for ControlplaneSection {
    fn default() -> Self {
        Self {
            http_listen: "127.0.0.1:9110".to_owned(),
            ami_enabled: true,
            drain_timeout_ms: 10_000,
        }
    }
}

impl Config {
    /// Loads defaults, then the TOML file if given, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(Error::invalid(format!(
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
    pub fn from_toml(text: &str) -> Result<Self> {
        Self::from_figment(
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text)),
        )
    }

    fn from_figment(fig: Figment) -> Result<Self> {
        let cfg: Config = fig
            .extract()
            .map_err(|e| Error::invalid(format!("configuration: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what serde cannot: tenant rules, timeouts.
    pub fn validate(&self) -> Result<()> {
        self.rules()?;
        if self.calls.setup_timeout_ms == 0 {
            return Err(Error::invalid("calls.setup_timeout_ms must be above 0"));
        }
        if self.ari.servers.is_empty() {
            return Err(Error::invalid("ari.servers: at least one Asterisk server"));
        }
        Ok(())
    }

    /// The compiled tenant rules.
    pub fn rules(&self) -> Result<TenantRules> {
        TenantRules::new(self.routing.clone(), self.tenants.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_embedded() {
        let cfg = Config::default();
        cfg.validate().unwrap();
        assert_eq!(cfg.controlplane.http_listen, "127.0.0.1:9110");
    }

    #[test]
    fn toml_with_tenants() {
        let cfg = Config::from_toml(
            r#"
            [routing]
            default_tenant = "house"
            [[tenants]]
            id = "acme"
            contexts = ["from-acme"]
            numbers = ["+4420*"]
            format = "slin16"
            record = true
            "#,
        )
        .unwrap();
        assert_eq!(cfg.tenants.len(), 1);
        assert!(cfg.tenants[0].record);
        let rules = cfg.rules().unwrap();
        assert_eq!(rules.tenants().count(), 2);
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail takes figment's own error type
    fn environment_overrides_keys_but_not_with_the_config_file_variable() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("MEDIAGW_CP_CONFIG", "/etc/mediagw/controlplane.toml");
            jail.set_env("MEDIAGW_CP_SESSIONS__BACKEND", "redis");
            jail.set_env("MEDIAGW_CP_CALLS__SETUP_TIMEOUT_MS", "2500");
            let cfg = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(cfg.calls.setup_timeout_ms, 2500);
            assert_eq!(format!("{:?}", cfg.sessions.backend), "Redis");
            Ok(())
        });
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::from_toml("[calls]\nsetup_timeout = 5\n").unwrap_err();
        assert!(e.message().contains("setup_timeout"), "{e}");
        let e = Config::from_toml("[[tenants]]\nid = \"a b\"\n").unwrap_err();
        assert!(e.message().contains("a b"), "{e}");
    }
}
