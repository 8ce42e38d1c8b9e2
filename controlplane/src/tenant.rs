//! Which tenant a call belongs to, and what to do with it.
//!
//! A carrier hosts many customers on one Asterisk. Each call is routed to a
//! tenant from what is known about it when it reaches the gateway, in this
//! order, first match wins:
//!
//! 1. a **Stasis argument** `tenant=acme` (`Stasis(mediagw,tenant=acme)`):
//!    the most explicit, written where the call is sent to the gateway;
//! 2. a **channel variable** (default `MEDIAGW_TENANT`) whose value is the
//!    tenant id, set in the dialplan with `Set(MEDIAGW_TENANT=acme)`;
//! 3. the tenants' **rules**, in configuration order: the dialplan
//!    `context` the call came from, or the **dialled number** (the
//!    extension) matching one of the tenant's patterns;
//! 4. the configured **default tenant**, if any.
//!
//! A call that matches nothing is unrouted: the call flow hangs it up or
//! sends it back to the dialplan, as configured. Each tenant's policy says
//! whether to answer, the audio format asked of Asterisk and whether to
//! record.
//!
//! Sans-IO: [`TenantRules::route`] is a pure function of [`CallFacts`].

use std::collections::BTreeMap;

use mediagw_shared::ids::TenantId;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The audio format asked of Asterisk's externalMedia channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaFormat {
    /// G.711 mu-law, 8 kHz (payload type 0).
    Ulaw,
    /// G.711 A-law, 8 kHz (payload type 8).
    Alaw,
    /// 16-bit linear, 16 kHz, big-endian (payload type 118).
    Slin16,
}

impl MediaFormat {
    /// The name ARI takes (`format=ulaw`).
    pub fn ari_name(self) -> &'static str {
        match self {
            Self::Ulaw => "ulaw",
            Self::Alaw => "alaw",
            Self::Slin16 => "slin16",
        }
    }

    /// The dataplane's codec for it.
    pub fn codec(self) -> mediagw_shared::codec::Codec {
        use mediagw_shared::codec::Codec;
        match self {
            Self::Ulaw => Codec::Pcmu,
            Self::Alaw => Codec::Pcma,
            Self::Slin16 => Codec::Slin16,
        }
    }
}

/// What to do with a call no rule claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unrouted {
    /// Hang it up.
    Hangup,
    /// Send it back to the dialplan (ARI `continue`), untouched.
    Continue,
}

/// `[routing]`: where the tenant of a call comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// The channel variable holding the tenant id; empty: not used.
    pub variable: String,
    /// The Stasis argument key (`key=tenant`); empty: not used.
    pub arg_key: String,
    /// The tenant of calls no rule claims; `None`: they are unrouted.
    pub default_tenant: Option<String>,
    /// What happens to unrouted calls.
    pub unrouted: Unrouted,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            variable: "MEDIAGW_TENANT".to_owned(),
            arg_key: "tenant".to_owned(),
            default_tenant: None,
            unrouted: Unrouted::Hangup,
        }
    }
}

/// `[[tenants]]`: one tenant's rules and policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The tenant id (`A-Z a-z 0-9 _ . -`, 1 to 64).
    pub id: String,
    /// Dialplan contexts whose calls are this tenant's.
    #[serde(default)]
    pub contexts: Vec<String>,
    /// Dialled numbers (extensions) that are this tenant's: exact, or a
    /// prefix ending in `*` (`"+4420*"`).
    #[serde(default)]
    pub numbers: Vec<String>,
    /// Answer calls that arrive ringing (default true).
    #[serde(default = "yes")]
    pub answer: bool,
    /// Audio format asked of Asterisk (default ulaw).
    #[serde(default = "ulaw")]
    pub format: MediaFormat,
    /// Record each call in Asterisk (a bridge recording) (default false).
    #[serde(default)]
    pub record: bool,
}

fn yes() -> bool {
    true
}

fn ulaw() -> MediaFormat {
    MediaFormat::Ulaw
}

/// What the call flow knows about a call when it routes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallFacts {
    /// Dialplan context.
    pub context: String,
    /// Extension: the dialled number.
    pub exten: String,
    /// Stasis application arguments.
    pub args: Vec<String>,
    /// Channel variables known so far.
    pub variables: BTreeMap<String, String>,
}

/// A tenant's policy for its calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Whose call.
    pub tenant: TenantId,
    /// Answer it if it rings.
    pub answer: bool,
    /// The externalMedia format.
    pub format: MediaFormat,
    /// Record it.
    pub record: bool,
    /// How it was routed, for logs: `variable`, `arg`, `context`,
    /// `number`, `default`.
    pub matched_by: &'static str,
}

/// The compiled routing table.
#[derive(Debug, Clone)]
pub struct TenantRules {
    routing: RoutingConfig,
    tenants: Vec<(TenantId, TenantConfig)>,
    default: Option<TenantId>,
}

impl TenantRules {
    /// Checks and compiles the configuration: ids valid and unique, the
    /// default tenant declared (or declared implicitly with defaults).
    pub fn new(routing: RoutingConfig, tenants: Vec<TenantConfig>) -> Result<Self> {
        let mut compiled: Vec<(TenantId, TenantConfig)> = Vec::with_capacity(tenants.len());
        for t in tenants {
            let id: TenantId =
                t.id.parse()
                    .map_err(|e| Error::invalid(format!("tenants: `{}`: {e}", t.id)))?;
            if compiled.iter().any(|(other, _)| *other == id) {
                return Err(Error::invalid(format!("tenants: `{id}` is declared twice")));
            }
            for n in &t.numbers {
                if n.is_empty() || n.trim_end_matches('*').contains('*') {
                    return Err(Error::invalid(format!(
                        "tenants: `{id}`: number pattern `{n}`: exact digits, or a prefix ending in one `*`"
                    )));
                }
            }
            compiled.push((id, t));
        }
        let default = match &routing.default_tenant {
            None => None,
            Some(d) => Some(
                d.parse::<TenantId>()
                    .map_err(|e| Error::invalid(format!("routing.default_tenant: `{d}`: {e}")))?,
            ),
        };
        Ok(Self {
            routing,
            tenants: compiled,
            default,
        })
    }

    /// What happens to unrouted calls.
    pub fn unrouted(&self) -> Unrouted {
        self.routing.unrouted
    }

    /// The channel variable to look for, if any.
    pub fn variable(&self) -> Option<&str> {
        Some(self.routing.variable.as_str()).filter(|v| !v.is_empty())
    }

    /// Every configured tenant id.
    pub fn tenants(&self) -> impl Iterator<Item = &TenantId> {
        self.tenants
            .iter()
            .map(|(id, _)| id)
            .chain(self.default.iter())
    }

    /// Routes a call; `None` when it is unrouted. A tenant named by a
    /// variable or argument but not configured gets the default policy
    /// (answer, ulaw, no recording); one whose name is not a valid tenant id
    /// is unrouted.
    pub fn route(&self, facts: &CallFacts) -> Option<Policy> {
        if let Some(name) = self.tenant_arg(&facts.args) {
            return self.named(name, "arg");
        }
        if let Some(var) = self.variable()
            && let Some(value) = facts.variables.get(var)
            && !value.is_empty()
        {
            return self.named(value, "variable");
        }
        for (id, t) in &self.tenants {
            if !facts.context.is_empty() && t.contexts.contains(&facts.context) {
                return Some(policy(id, t, "context"));
            }
            if !facts.exten.is_empty() && t.numbers.iter().any(|p| number_matches(p, &facts.exten))
            {
                return Some(policy(id, t, "number"));
            }
        }
        self.default.as_ref().map(|d| self.policy_of(d, "default"))
    }

    /// Whether the Stasis arguments name the tenant (`tenant=acme`): then
    /// routing needs no channel variable.
    pub fn names_tenant_in_args(&self, args: &[String]) -> bool {
        self.tenant_arg(args).is_some()
    }

    fn tenant_arg<'a>(&self, args: &'a [String]) -> Option<&'a str> {
        let key = self.routing.arg_key.as_str();
        if key.is_empty() {
            return None;
        }
        args.iter().find_map(|arg| {
            let (k, v) = arg.split_once('=')?;
            (k.trim() == key).then_some(v.trim())
        })
    }

    fn named(&self, value: &str, how: &'static str) -> Option<Policy> {
        let id: TenantId = value.parse().ok()?;
        Some(self.policy_of(&id, how))
    }

    fn policy_of(&self, id: &TenantId, how: &'static str) -> Policy {
        match self.tenants.iter().find(|(t, _)| t == id) {
            Some((id, t)) => policy(id, t, how),
            None => Policy {
                tenant: id.clone(),
                answer: true,
                format: MediaFormat::Ulaw,
                record: false,
                matched_by: how,
            },
        }
    }
}

fn policy(id: &TenantId, t: &TenantConfig, how: &'static str) -> Policy {
    Policy {
        tenant: id.clone(),
        answer: t.answer,
        format: t.format,
        record: t.record,
        matched_by: how,
    }
}

fn number_matches(pattern: &str, number: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => number.starts_with(prefix),
        None => pattern == number,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str, contexts: &[&str], numbers: &[&str]) -> TenantConfig {
        TenantConfig {
            id: id.to_owned(),
            contexts: contexts.iter().map(|s| (*s).to_owned()).collect(),
            numbers: numbers.iter().map(|s| (*s).to_owned()).collect(),
            answer: true,
            format: MediaFormat::Ulaw,
            record: false,
        }
    }

    fn rules(default: Option<&str>) -> TenantRules {
        let mut globex = tenant("globex", &["from-globex"], &["+4420*"]);
        globex.format = MediaFormat::Slin16;
        globex.record = true;
        TenantRules::new(
            RoutingConfig {
                default_tenant: default.map(str::to_owned),
                ..RoutingConfig::default()
            },
            vec![tenant("acme", &["from-acme"], &["5551234", "800*"]), globex],
        )
        .unwrap()
    }

    fn facts(context: &str, exten: &str) -> CallFacts {
        CallFacts {
            context: context.to_owned(),
            exten: exten.to_owned(),
            ..CallFacts::default()
        }
    }

    #[test]
    fn argument_beats_variable_beats_rules() {
        let r = rules(None);
        let mut f = facts("from-acme", "5551234");
        assert_eq!(r.route(&f).unwrap().tenant.as_str(), "acme");
        f.variables
            .insert("MEDIAGW_TENANT".into(), "initech".into());
        let p = r.route(&f).unwrap();
        assert_eq!((p.tenant.as_str(), p.matched_by), ("initech", "variable"));
        // Not configured: default policy.
        assert!(p.answer && !p.record && p.format == MediaFormat::Ulaw);
        f.args = vec!["inbound".into(), "tenant=globex".into()];
        assert!(r.names_tenant_in_args(&f.args));
        let p = r.route(&f).unwrap();
        assert_eq!((p.tenant.as_str(), p.matched_by), ("globex", "arg"));
        assert_eq!(p.format, MediaFormat::Slin16);
        assert!(!r.names_tenant_in_args(&["x=y".to_owned()]));
    }

    #[test]
    fn context_and_number_patterns() {
        let r = rules(None);
        assert_eq!(
            r.route(&facts("from-globex", "1")).unwrap().tenant.as_str(),
            "globex"
        );
        assert_eq!(
            r.route(&facts("x", "+442071838750")).unwrap().matched_by,
            "number"
        );
        assert_eq!(
            r.route(&facts("x", "8001234")).unwrap().tenant.as_str(),
            "acme"
        );
        assert!(r.route(&facts("x", "555123")).is_none());
        assert!(r.route(&facts("", "")).is_none());
    }

    #[test]
    fn default_tenant_and_bad_names() {
        let r = rules(Some("house"));
        let p = r.route(&facts("elsewhere", "1")).unwrap();
        assert_eq!((p.tenant.as_str(), p.matched_by), ("house", "default"));
        let mut f = facts("elsewhere", "1");
        f.variables
            .insert("MEDIAGW_TENANT".into(), "not a tenant!".into());
        assert!(r.route(&f).is_none(), "an invalid id is never routed");
    }

    #[test]
    fn configuration_errors_name_the_key() {
        let e = TenantRules::new(
            RoutingConfig::default(),
            vec![tenant("acme", &[], &[]), tenant("acme", &[], &[])],
        )
        .unwrap_err();
        assert!(e.message().contains("declared twice"), "{e}");
        let e =
            TenantRules::new(RoutingConfig::default(), vec![tenant("a b", &[], &[])]).unwrap_err();
        assert!(e.message().starts_with("tenants: `a b`"), "{e}");
        let e = TenantRules::new(RoutingConfig::default(), vec![tenant("a", &[], &["1*2*"])])
            .unwrap_err();
        assert!(e.message().contains("number pattern"), "{e}");
    }
}
