//! Reconciliation: what lives, what to take over, what to clean up.
//!
//! Three views of the calls can disagree after a restart or a lost
//! connection: the session store (what this host was doing), Asterisk (which
//! channels and bridges exist, over ARI) and the dataplane (which endpoints
//! exist). [`plan`] reads all three and decides, per call:
//!
//! | session | caller channel | result |
//! |---|---|---|
//! | live, task running | gone | the task is told (it tears down) |
//! | live, no task | alive, media intact | adopted as it is |
//! | live, no task | alive, media half built or lost | adopted; what remains of the media path is released and rebuilt |
//! | live, no task | gone | cleaned up: endpoint destroyed, channels hung up, bridge destroyed, session ended with its final statistics |
//! | none | alive in our Stasis app | discovered: set up as a new call (its StasisStart was missed) |
//!
//! and removes leftovers that only ids of ours can name: externalMedia
//! channels (`<session>-media-<n>`) and bridges (`mediagw-<session>`) of no
//! live call, and dataplane endpoints of sessions that have ended.
//! Endpoints of sessions it does not know (an operator's, `mediagwctl
//! create`) are left alone.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use mediagw_shared::control::{EndpointDestroy, EndpointList, EndpointSummary};
use mediagw_shared::ids::EndpointId;

use super::call::Adopt;
use super::{Context, bridge_id, bridge_session, media_channel_session, now_ms};
use crate::ari::model::{AriTimestamp, ChannelState, EventCommon, StasisStart};
use crate::ari::{BridgeId, Channel, ChannelId};
use crate::demo::DEMO_KEY;
use crate::error::{ErrorKind, Result};
use crate::metrics::Recovery;
use crate::session::recovery::{self, Observed, Verdict};
use crate::session::{Session, SessionEvent, SessionState, SessionStore};

/// What the dispatcher does after looking.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Calls with a task whose caller is gone.
    pub gone: Vec<String>,
    /// Calls to take over.
    pub adopt: Vec<Adopt>,
    /// Channels in our application with no session: new calls.
    pub discovered: Vec<StasisStart>,
    /// The channels and bridges that exist now, for calls with a task to
    /// check theirs (lost while ARI was away).
    pub channels: Arc<HashSet<String>>,
    /// See `channels`.
    pub bridges: Arc<HashSet<String>>,
    /// When the lists were asked for: what a call created later is not in
    /// them and must not be taken for lost.
    pub listed_at: Option<tokio::time::Instant>,
}

/// Looks at the store, Asterisk and the dataplane; cleans up what is dead
/// right away and returns what the dispatcher must start or tell. The
/// per-session decisions are [`recovery::plan`]'s (sans-IO); this carries
/// them out and adds what only our ids can tell (leftover externalMedia
/// channels and bridges, channels in the application without a session).
pub(crate) async fn plan(ctx: &Context, has_call: impl Fn(&str) -> bool) -> Result<Plan> {
    let listed_at = tokio::time::Instant::now();
    let (channels, bridges) = tokio::try_join!(ctx.ari.channels(), ctx.ari.bridges())?;
    let endpoints: Option<Vec<EndpointSummary>> =
        match ctx.dataplane.call(EndpointList { tenant: None }).await {
            Ok(l) => Some(l.endpoints),
            Err(e) => {
                tracing::warn!(error = %e, "dataplane endpoints unknown; assuming they live");
                None
            }
        };
    let sessions: Vec<Session> = ctx
        .store
        .list_host(ctx.host())
        .await?
        .into_iter()
        // Demo calls have no Asterisk channel: the demo owns them.
        .filter(|s| s.is_live() && s.metadata().get(DEMO_KEY).is_none())
        .collect();
    let mut plan = Plan {
        channels: Arc::new(channels.iter().map(|c| c.id.as_str().to_owned()).collect()),
        bridges: Arc::new(bridges.iter().map(|b| b.id.as_str().to_owned()).collect()),
        listed_at: Some(listed_at),
        ..Plan::default()
    };
    let channels: HashMap<&str, &Channel> = channels.iter().map(|c| (c.id.as_str(), c)).collect();
    let bridges: HashSet<&str> = bridges.iter().map(|b| b.id.as_str()).collect();
    // Endpoint ids start over when the dataplane restarts: an endpoint is
    // the one a session stored only if it carries that session's name.
    let claimed: HashMap<EndpointId, &Session> = sessions
        .iter()
        .filter_map(|s| s.endpoint.map(|e| (e, s)))
        .collect();
    let observed = Observed {
        endpoints: endpoints.as_ref().map(|l| {
            l.iter()
                .filter(|e| {
                    claimed
                        .get(&e.endpoint)
                        .is_none_or(|s| s.id == e.session && s.tenant == e.tenant)
                })
                .map(|e| e.endpoint)
                .collect()
        }),
        channels: [(
            ctx.ari.active_server().to_owned(),
            channels.keys().map(|c| (*c).to_owned()).collect(),
        )]
        .into_iter()
        .collect(),
    };
    let decisions = recovery::plan(&sessions, &observed);
    let live: HashSet<String> = sessions.iter().map(|s| s.id.as_str().to_owned()).collect();

    for (mut s, d) in sessions.into_iter().zip(decisions.decisions) {
        let id = s.id.as_str().to_owned();
        if has_call(&id) {
            if matches!(d.verdict, Verdict::End { .. }) {
                plan.gone.push(id);
            }
            continue;
        }
        let mut final_stats = None;
        if let Some(ep) = d.release_endpoint
            && let Ok(stats) = ctx.dataplane.call(EndpointDestroy { endpoint: ep }).await
        {
            final_stats = serde_json::to_value(&stats).ok();
        }
        for c in &d.hangup_channels {
            hang_up(ctx, c).await;
        }
        // Older externalMedia channels of the session, by our ids.
        for c in channels.keys().copied() {
            if media_channel_session(c) == Some(id.as_str())
                && s.external_channel.as_deref() != Some(c)
                && !d.hangup_channels.iter().any(|h| h == c)
            {
                hang_up(ctx, c).await;
                ctx.metrics.recovered(Recovery::Orphan);
            }
        }
        let bridge_ok = bridges.contains(bridge_id(&s.id).as_str());
        match d.verdict {
            Verdict::End { reason } => {
                if bridge_ok {
                    destroy_bridge(ctx, &bridge_id(&s.id)).await;
                }
                if final_stats.is_some() {
                    s.final_stats = final_stats;
                }
                let from = s.state();
                if from != SessionState::Ending {
                    let _ = s.transition(SessionState::Ending, now_ms());
                }
                let _ = s.finish(SessionState::Ended, reason, now_ms());
                if let Err(e) = ctx.store.update(&s).await {
                    tracing::warn!(session = %s.id, error = %e, "ended session not stored");
                }
                let _ = ctx
                    .store
                    .publish(&SessionEvent::transitioned(&s, from))
                    .await;
                ctx.metrics.recovered(Recovery::CleanedUp);
                tracing::info!(session = %s.id, reason, "call gone while we were away; cleaned up");
            }
            Verdict::Keep | Verdict::Resume | Verdict::Unknown => {
                // Unknown with the caller's Asterisk unobserved is another
                // server's call: leave it be.
                let caller = s.channel.as_deref().unwrap_or(id.as_str());
                if d.verdict == Verdict::Unknown && !channels.contains_key(caller) {
                    continue;
                }
                let keep = d.verdict != Verdict::Resume;
                let media = s
                    .external_channel
                    .as_deref()
                    .filter(|c| keep && channels.contains_key(c))
                    .map(ChannelId::new);
                let ringing = channels
                    .get(caller)
                    .is_some_and(|c| matches!(c.state, ChannelState::Ring | ChannelState::Ringing));
                plan.adopt.push(Adopt {
                    endpoint_ok: keep && s.endpoint.is_some(),
                    media,
                    bridge_ok,
                    ringing,
                    session: s,
                });
            }
        }
    }

    for (id, ch) in &channels {
        if live.contains(*id) || has_call(id) {
            continue;
        }
        if let Some(session) = media_channel_session(id) {
            if !live.contains(session) && !has_call(session) {
                hang_up(ctx, id).await;
                ctx.metrics.recovered(Recovery::Orphan);
            }
            continue;
        }
        if in_app(ch, ctx.app()) {
            ctx.metrics.recovered(Recovery::Discovered);
            tracing::info!(channel = %id, "a call in the application without a session; setting it up");
            plan.discovered.push(StasisStart {
                common: EventCommon {
                    timestamp: AriTimestamp::new(""),
                    application: ctx.app().to_owned(),
                    asterisk_id: None,
                },
                args: app_args(ch),
                channel: (*ch).clone(),
                replace_channel: None,
            });
        }
    }
    for id in &bridges {
        if let Some(session) = bridge_session(id)
            && !live.contains(session)
            && !has_call(session)
        {
            destroy_bridge(ctx, &BridgeId::new(*id)).await;
            ctx.metrics.recovered(Recovery::Orphan);
        }
    }
    // Endpoints no live session refers to: release those of sessions we
    // know (ended, or a setup cut short) and those named after a channel
    // in our application (a call whose session was lost with an in-memory
    // store: it is set up again); leave an operator's alone.
    let discovered: HashSet<&str> = plan
        .discovered
        .iter()
        .map(|d| d.channel.id.as_str())
        .collect();
    let by_id: HashMap<EndpointId, &EndpointSummary> = endpoints
        .iter()
        .flatten()
        .map(|e| (e.endpoint, e))
        .collect();
    for ep in decisions.orphan_endpoints {
        let Some(e) = by_id.get(&ep) else { continue };
        if has_call(e.session.as_str()) {
            continue;
        }
        let ours = live.contains(e.session.as_str())
            || discovered.contains(e.session.as_str())
            || matches!(ctx.store.get(&e.tenant, &e.session).await, Ok(Some(_)));
        if ours {
            let _ = ctx.dataplane.call(EndpointDestroy { endpoint: ep }).await;
            ctx.metrics.recovered(Recovery::Orphan);
        } else {
            tracing::info!(endpoint = %ep, tenant = %e.tenant, session = %e.session, "endpoint of no known session left alone");
        }
    }
    Ok(plan)
}

/// Whether a channel sits in our Stasis application (`Stasis(app,...)`).
fn in_app(ch: &Channel, app: &str) -> bool {
    ch.dialplan.app_name.eq_ignore_ascii_case("Stasis")
        && ch.dialplan.app_data.split(',').next().map(str::trim) == Some(app)
}

/// The `Stasis(app,a,b)` arguments from the dialplan position.
fn app_args(ch: &Channel) -> Vec<String> {
    ch.dialplan
        .app_data
        .split(',')
        .skip(1)
        .map(|s| s.trim().to_owned())
        .collect()
}

async fn hang_up(ctx: &Context, id: &str) {
    if let Err(e) = ctx.ari.hangup(&ChannelId::new(id), None).await
        && e.kind() != ErrorKind::NotFound
    {
        tracing::warn!(channel = id, error = %e, "leftover channel not hung up");
    }
}

async fn destroy_bridge(ctx: &Context, id: &BridgeId) {
    if let Err(e) = ctx.ari.destroy_bridge(id).await
        && e.kind() != ErrorKind::NotFound
    {
        tracing::warn!(bridge = %id, error = %e, "leftover bridge not destroyed");
    }
}
