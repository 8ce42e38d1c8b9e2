//! The control plane's Prometheus figures (prometheus-client), served on
//! `/metrics` of its HTTP listener.
//!
//! Labels are tenant, link and outcome only: per-call figures go to the
//! session store, never to labels (cardinality). RTP quality is the
//! dataplane's own `/metrics`.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::ami::AmiClient;
use crate::ari::AriEventMetrics;

/// Labels: a tenant.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabel {
    /// The tenant id.
    pub tenant: String,
}

/// How a call setup ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Outcome {
    /// Bridged with its externalMedia channel, audio flowing.
    Ok,
    /// A step failed (Asterisk, dataplane, store); the call was cleaned up.
    Failed,
    /// The caller hung up during setup.
    Abandoned,
    /// No tenant claimed it.
    Unrouted,
}

/// Labels: tenant and outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SetupLabels {
    /// The tenant id (`-` when unrouted).
    pub tenant: String,
    /// How the setup ended.
    pub outcome: Outcome,
}

/// Which connection.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Link {
    /// Asterisk Manager Interface.
    Ami,
    /// ARI events WebSocket.
    Ari,
    /// The dataplane's control socket.
    Dataplane,
    /// Redis (sessions).
    Redis,
}

/// Labels: a link.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LinkLabel {
    /// Which connection.
    pub link: Link,
}

/// What recovery did to a call.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Recovery {
    /// Still alive with its media: taken over as it was.
    Adopted,
    /// Alive, but its endpoint or externalMedia channel was gone: a new one
    /// was attached to its bridge.
    Reattached,
    /// Gone while we were not looking: cleaned up.
    CleanedUp,
    /// Found in Asterisk without a session (StasisStart missed): set up now.
    Discovered,
    /// A leftover (endpoint, channel or bridge without a call): removed.
    Orphan,
}

/// Labels: a recovery action.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RecoveryLabel {
    /// What was done.
    pub action: Recovery,
}

/// Lowercase label values, as Prometheus names go.
macro_rules! label_values {
    ($($ty:ident { $($variant:ident => $name:literal),* $(,)? })*) => {$(
        impl $ty {
            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $name),* }
            }
        }
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    )*};
}

label_values! {
    Outcome { Ok => "ok", Failed => "failed", Abandoned => "abandoned", Unrouted => "unrouted" }
    Link { Ami => "ami", Ari => "ari", Dataplane => "dataplane", Redis => "redis" }
    Recovery {
        Adopted => "adopted",
        Reattached => "reattached",
        CleanedUp => "cleaned_up",
        Discovered => "discovered",
        Orphan => "orphan",
    }
}

/// Every control-plane metric.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Calls in progress per tenant.
    pub calls_active: Family<TenantLabel, Gauge>,
    /// Call setups by tenant and outcome.
    pub call_setups: Family<SetupLabels, Counter>,
    /// StasisStart to bridged, seconds.
    pub setup_seconds: Histogram,
    /// Calls ended, per tenant.
    pub calls_ended: Family<TenantLabel, Counter>,
    /// 1 when the link is up.
    pub link_up: Family<LinkLabel, Gauge>,
    /// Reconnections per link.
    pub reconnects: Family<LinkLabel, Counter>,
    /// Recovery actions.
    pub recovery: Family<RecoveryLabel, Counter>,
    /// Calls seen on AMI (all of Asterisk's channels, routed or not), by
    /// tenant (`-` when no rule claims them).
    pub ami_channels: Family<TenantLabel, Counter>,
    /// Events that could not be handled (unparseable, for unknown calls).
    pub events_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The AMI client's counters, read at each scrape.
#[derive(Debug)]
struct AmiCollector(AmiClient);

impl Collector for AmiCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let m = self.0.metrics();
        let counters: [(&str, &str, u64); 9] = [
            ("ami_connects", "AMI logins", m.connects),
            (
                "ami_disconnects",
                "AMI connections lost after login",
                m.disconnects,
            ),
            (
                "ami_connect_failures",
                "AMI attempts that failed before login",
                m.connect_failures,
            ),
            (
                "ami_login_failures",
                "AMI logins Asterisk refused",
                m.login_failures,
            ),
            (
                "ami_keepalive_failures",
                "AMI links found dead by an unanswered Ping",
                m.keepalive_failures,
            ),
            ("ami_events", "AMI events received", m.events),
            (
                "ami_parse_errors",
                "Unparseable AMI input skipped",
                m.parse_errors,
            ),
            (
                "ami_unmatched_responses",
                "AMI responses matching no waiting action",
                m.unmatched_responses,
            ),
            (
                "ami_action_timeouts",
                "AMI actions that timed out",
                m.action_timeouts,
            ),
        ];
        for (name, help, value) in counters {
            let e = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(e)?;
        }
        Ok(())
    }
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Self {
        Self::with(|_| {})
    }

    /// A registry with every metric registered, and the AMI client's and
    /// the ARI events service's counters.
    pub fn with_clients(ami: Option<&AmiClient>, ari: &AriEventMetrics) -> Self {
        Self::with(|r| {
            ari.register(r);
            if let Some(ami) = ami {
                r.register_collector(Box::new(AmiCollector(ami.clone())));
            }
        })
    }

    fn with(extra: impl FnOnce(&mut Registry)) -> Self {
        let mut r = Registry::with_prefix("mediagw");
        extra(&mut r);
        let calls_active = Family::<TenantLabel, Gauge>::default();
        r.register(
            "calls_active",
            "Calls in progress per tenant",
            calls_active.clone(),
        );
        let call_setups = Family::<SetupLabels, Counter>::default();
        r.register(
            "call_setups",
            "Call setups by tenant and outcome",
            call_setups.clone(),
        );
        // 0.5 ms to about 4 s.
        let setup_seconds = Histogram::new([
            0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0,
            4.0,
        ]);
        r.register(
            "call_setup_seconds",
            "From StasisStart to the caller bridged with its externalMedia channel",
            setup_seconds.clone(),
        );
        let calls_ended = Family::<TenantLabel, Counter>::default();
        r.register("calls_ended", "Calls ended per tenant", calls_ended.clone());
        let link_up = Family::<LinkLabel, Gauge>::default();
        r.register(
            "link_up",
            "1 when the connection (ami, ari, dataplane, redis) is up",
            link_up.clone(),
        );
        let reconnects = Family::<LinkLabel, Counter>::default();
        r.register(
            "link_reconnects",
            "Connections re-established per link",
            reconnects.clone(),
        );
        let recovery = Family::<RecoveryLabel, Counter>::default();
        r.register(
            "recovery_actions",
            "What reconciliation did with calls and leftovers",
            recovery.clone(),
        );
        let ami_channels = Family::<TenantLabel, Counter>::default();
        r.register(
            "ami_channels",
            "Channels Asterisk reported on AMI, by the tenant their facts route to",
            ami_channels.clone(),
        );
        let events_dropped = Counter::default();
        r.register(
            "events_dropped",
            "Asterisk or dataplane events that could not be used",
            events_dropped.clone(),
        );
        Self {
            registry: Arc::new(r),
            calls_active,
            call_setups,
            setup_seconds,
            calls_ended,
            link_up,
            reconnects,
            recovery,
            ami_channels,
            events_dropped,
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Sets a link's up gauge.
    pub fn set_link(&self, link: Link, up: bool) {
        self.link_up
            .get_or_create(&LinkLabel { link })
            .set(i64::from(up));
    }

    /// Counts a setup outcome.
    pub fn setup(&self, tenant: &str, outcome: Outcome) {
        self.call_setups
            .get_or_create(&SetupLabels {
                tenant: tenant.to_owned(),
                outcome,
            })
            .inc();
    }

    /// Counts a recovery action.
    pub fn recovered(&self, action: Recovery) {
        self.recovery.get_or_create(&RecoveryLabel { action }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_and_labels() {
        let m = Metrics::new();
        m.calls_active
            .get_or_create(&TenantLabel {
                tenant: "acme".into(),
            })
            .set(3);
        m.setup("acme", Outcome::Ok);
        m.setup_seconds.observe(0.002);
        m.set_link(Link::Ari, true);
        m.recovered(Recovery::Reattached);
        let text = m.render();
        assert!(
            text.contains("mediagw_calls_active{tenant=\"acme\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("mediagw_call_setups_total{tenant=\"acme\",outcome=\"ok\"} 1"),
            "{text}"
        );
        assert!(text.contains("mediagw_link_up{link=\"ari\"} 1"), "{text}");
        assert!(
            text.contains("mediagw_call_setup_seconds_bucket{le=\"0.003\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("mediagw_recovery_actions_total{action=\"reattached\"} 1"),
            "{text}"
        );
    }
}
