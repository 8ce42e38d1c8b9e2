//! The call flow: from a call arriving in the Stasis application to its
//! audio flowing through the dataplane, and back down at hangup.
//!
//! ```text
//!  ARI events ─┐                     ┌─> call task (one per call):
//!  AMI events ─┼─> Dispatcher ───────┤     route → answer ∥ endpoint.create
//!  dataplane  ─┘   (one task, owns   │     → externalMedia ∥ bridge
//!  events          the call table)   │     → addChannel → (record) → Active
//!                                    └─>   ... StasisEnd → destroy endpoint,
//!                                          hang up externalMedia, destroy
//!                                          bridge → Ended, final stats kept
//! ```
//!
//! The [`Dispatcher`] is the only owner of the table of live calls. It
//! routes each event to its call's task by channel id (the caller's channel
//! id is the session id; our externalMedia channels and bridges carry the
//! session id in theirs, [`media_channel_id`] and [`bridge_id`]), so that
//! ids alone say what belongs to which call after any restart.
//!
//! It also reconciles ([`reconcile`]): at start, after the ARI WebSocket
//! comes back and after the dataplane reconnects, it compares the session
//! store, Asterisk's channels and bridges and the dataplane's endpoints, and
//! adopts calls that live on, re-attaches media that was lost, cleans up
//! calls that ended while nobody was looking, and sets up calls whose
//! StasisStart it missed.

mod call;
mod reconcile;

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mediagw_shared::control::Event as DpEvent;
use mediagw_shared::ids::{SessionId, TenantId};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::ami::{AmiEvent, ChannelChange, ChannelTracker, TrackerLimits};
use crate::ari::{AriClient, AriEvent, AriSignal, ChannelId, Originate};
use crate::dataplane::Dataplane;
use crate::error::{Error, ErrorKind, Party, Result};
use crate::metrics::{Link, Metrics};
use crate::service::{Service, Shutdown};
use crate::session::{SessionStore, Store, UnixMs};
use crate::tenant::{CallFacts, TenantRules};

pub use call::CallSummary;

/// The ARI event types the call flow reads; Asterisk is asked to send only
/// these ([`AriClient::set_event_filter`]).
pub const CALL_FLOW_EVENTS: [&str; 4] = [
    "StasisStart",
    "StasisEnd",
    "ChannelDestroyed",
    "BridgeDestroyed",
];

/// `[calls]`: how calls are handled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallConfig {
    /// How long the whole setup may take before the call is given up, ms
    /// (longer than `media_wait_ms`, so that a setup can wait that long).
    pub setup_timeout_ms: u64,
    /// Recording file format (Asterisk's: wav, gsm, ...).
    pub recording_format: String,
    /// Longest recording, s (0: no limit).
    pub recording_max_s: u32,
    /// How often a live call tells the session store it is alive, ms.
    pub touch_interval_ms: u64,
    /// How long a call waits for its media path (a dataplane that is down,
    /// Asterisk refusing the externalMedia channel) before it is hung up,
    /// ms: at setup, and after losing it mid-call.
    pub media_wait_ms: u64,
}

impl Default for CallConfig {
    fn default() -> Self {
        Self {
            setup_timeout_ms: 15_000,
            recording_format: "wav".to_owned(),
            recording_max_s: 0,
            touch_interval_ms: 60_000,
            media_wait_ms: 10_000,
        }
    }
}

/// Everything a call task needs, shared.
pub struct Context {
    /// ARI REST.
    pub ari: AriClient,
    /// The dataplane's control socket.
    pub dataplane: Dataplane,
    /// Sessions.
    pub store: Store,
    /// Tenant routing.
    pub rules: TenantRules,
    /// Figures.
    pub metrics: Metrics,
    /// Policy.
    pub cfg: CallConfig,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("app", &self.ari.app())
            .field("host", &self.store.host())
            .finish_non_exhaustive()
    }
}

impl Context {
    /// The Stasis application's name.
    pub fn app(&self) -> &str {
        self.ari.app()
    }

    /// The host name sessions are owned by.
    pub fn host(&self) -> &str {
        self.store.host()
    }
}

/// The id of the `n`-th externalMedia channel of a session: the session id
/// and `-media-n`. Asterisk accepts any unique string as a channel id.
pub fn media_channel_id(session: &SessionId, n: u32) -> ChannelId {
    ChannelId::new(format!("{session}-media-{n}"))
}

/// The session an externalMedia channel id of ours belongs to.
pub fn media_channel_session(id: &str) -> Option<&str> {
    let (session, n) = id.rsplit_once("-media-")?;
    (!session.is_empty() && n.parse::<u32>().is_ok()).then_some(session)
}

/// The id of a session's mixing bridge.
pub fn bridge_id(session: &SessionId) -> crate::ari::BridgeId {
    crate::ari::BridgeId::new(format!("mediagw-{session}"))
}

/// The session and number of an externalMedia channel id of ours.
pub(crate) fn media_channel_session_n(id: &str) -> Option<u32> {
    let (session, n) = id.rsplit_once("-media-")?;
    if session.is_empty() {
        return None;
    }
    n.parse().ok()
}

/// The session a bridge id of ours belongs to.
pub fn bridge_session(id: &str) -> Option<&str> {
    id.strip_prefix("mediagw-").filter(|s| !s.is_empty())
}

/// Now as unix milliseconds, for session times: the call flow and the demo
/// are drivers and read the clock.
#[allow(clippy::disallowed_methods)] // a driver: sessions carry wall-clock times
pub(crate) fn now_ms() -> UnixMs {
    UnixMs::from(SystemTime::now())
}

/// What reaches a call task.
#[derive(Debug)]
pub(crate) enum CallInput {
    /// An ARI event about one of its channels or its bridge.
    Ari(AriEvent),
    /// AMI saw its caller hang up (cause code, text).
    AmiHangup(i32, String),
    /// A dataplane event about its endpoint.
    Dataplane(DpEvent),
    /// The dataplane reconnected: whether the call's endpoint still exists
    /// is for the call to check.
    DataplaneBack,
    /// ARI reconnected and the caller channel is gone.
    Gone(String),
    /// ARI reconnected: the channels and bridges that exist now, for the
    /// call to check its externalMedia channel and bridge.
    Check {
        /// Channel ids.
        channels: Arc<std::collections::HashSet<String>>,
        /// Bridge ids.
        bridges: Arc<std::collections::HashSet<String>>,
        /// When they were listed.
        listed_at: tokio::time::Instant,
    },
    /// Hang up the caller (API, operator).
    Hangup(oneshot::Sender<Result<()>>),
    /// Report yourself.
    Summary(oneshot::Sender<CallSummary>),
}

/// Requests to the dispatcher from outside (the HTTP API, tests).
#[derive(Debug)]
enum Request {
    Originate(Box<OriginateCall>, oneshot::Sender<Result<SessionId>>),
    Hangup(SessionId, oneshot::Sender<Result<()>>),
    Calls(oneshot::Sender<Vec<CallSummary>>),
}

/// An outbound call into the application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginateCall {
    /// Whose call.
    pub tenant: TenantId,
    /// What to dial: `PJSIP/alice`, `PJSIP/+15551234@trunk`.
    pub endpoint: String,
    /// Caller id to present.
    #[serde(default)]
    pub caller_id: Option<String>,
    /// Seconds to wait for an answer.
    #[serde(default)]
    pub timeout_s: Option<u32>,
    /// Channel variables.
    #[serde(default)]
    pub variables: std::collections::BTreeMap<String, String>,
}

/// A cheap handle to ask the call flow for things.
#[derive(Debug, Clone)]
pub struct CallFlow {
    requests: mpsc::Sender<Request>,
}

impl CallFlow {
    /// Originates an outbound call into the application for `call.tenant`;
    /// answers its session id (also its channel id) once Asterisk accepted
    /// the originate. The call is set up like an inbound one when it
    /// answers.
    pub async fn originate(&self, call: OriginateCall) -> Result<SessionId> {
        self.ask(|tx| Request::Originate(Box::new(call), tx))
            .await?
    }

    /// Hangs up a call.
    pub async fn hangup(&self, session: SessionId) -> Result<()> {
        self.ask(|tx| Request::Hangup(session, tx)).await?
    }

    /// Every live call this host handles.
    pub async fn calls(&self) -> Result<Vec<CallSummary>> {
        self.ask(Request::Calls).await
    }

    /// Asks the dispatcher; an answer that takes over 10 s (a hangup whose
    /// teardown never comes) is a timeout, not a hang.
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Request) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(make(tx))
            .await
            .map_err(|_| Error::internal("the call flow has stopped"))?;
        match tokio::time::timeout(Duration::from_secs(10), rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(Error::internal("the call flow dropped the request")),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                Party::Internal,
                "the call flow did not answer within 10 s",
            )),
        }
    }
}

struct Live {
    tx: mpsc::UnboundedSender<CallInput>,
}

/// The service that owns the table of live calls.
pub struct Dispatcher {
    ctx: Arc<Context>,
    ari_events: mpsc::Receiver<AriSignal>,
    ami_events: Option<tokio::sync::broadcast::Receiver<AmiEvent>>,
    requests: mpsc::Receiver<Request>,
    calls: HashMap<String, Live>,
    tracker: ChannelTracker,
    done_tx: mpsc::UnboundedSender<String>,
    done_rx: mpsc::UnboundedReceiver<String>,
}

impl fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatcher")
            .field("calls", &self.calls.len())
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// The dispatcher service and the handle to reach it.
    pub fn new(
        ctx: Arc<Context>,
        ari_events: mpsc::Receiver<AriSignal>,
        ami_events: Option<tokio::sync::broadcast::Receiver<AmiEvent>>,
    ) -> (Self, CallFlow) {
        let (req_tx, req_rx) = mpsc::channel(256);
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        (
            Self {
                ctx,
                ari_events,
                ami_events,
                requests: req_rx,
                calls: HashMap::new(),
                tracker: ChannelTracker::new(TrackerLimits::default()),
                done_tx,
                done_rx,
            },
            CallFlow { requests: req_tx },
        )
    }

    async fn serve(mut self, shutdown: Shutdown) -> Result<()> {
        let mut dp_events = self.ctx.dataplane.events();
        let mut dp_state = self.ctx.dataplane.state();
        let mut dp_generation = dp_state.borrow().generation;
        let mut ari_up = false;
        // A reconciliation that failed (Redis or Asterisk still starting)
        // is retried until one succeeds.
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut retry_delay = Duration::from_millis(500);
        loop {
            let retry = async {
                match retry_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = retry => {
                    retry_at = None;
                    if ari_up && !self.reconcile().await {
                        retry_delay = (retry_delay * 2).min(Duration::from_secs(30));
                        retry_at = Some(tokio::time::Instant::now() + retry_delay);
                    }
                }
                signal = self.ari_events.recv() => match signal {
                    None if shutdown.is_cancelled() => break,
                    None => return Err(Error::internal("the ARI event stream ended")),
                    Some(AriSignal::Connected { server }) => {
                        ari_up = true;
                        self.ctx.metrics.set_link(Link::Ari, true);
                        tracing::info!(server, "ARI connected; reconciling");
                        if let Err(e) = self.ctx.ari.set_event_filter(&CALL_FLOW_EVENTS).await {
                            tracing::info!(error = %e, "ARI event filter not set; every event type comes");
                        }
                        retry_delay = Duration::from_millis(500);
                        retry_at = (!self.reconcile().await)
                            .then(|| tokio::time::Instant::now() + retry_delay);
                    }
                    Some(AriSignal::Disconnected { reason }) => {
                        ari_up = false;
                        self.ctx.metrics.set_link(Link::Ari, false);
                        tracing::warn!(reason, "ARI disconnected; calls wait for it");
                    }
                    Some(AriSignal::Event(event)) => self.on_ari(event),
                },
                ami = recv_ami(&mut self.ami_events) => self.on_ami(ami),
                event = dp_events.recv() => match event {
                    Ok(e) => self.on_dataplane(e),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        // An `endpoint.destroyed` may be among the missed:
                        // every call checks its endpoint.
                        tracing::warn!(missed = n, "dataplane events lagged; calls check their endpoints");
                        for live in self.calls.values() {
                            let _ = live.tx.send(CallInput::DataplaneBack);
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        if shutdown.is_cancelled() {
                            break;
                        }
                        return Err(Error::internal("the dataplane event stream ended"));
                    }
                },
                changed = dp_state.changed() => {
                    if changed.is_err() {
                        if shutdown.is_cancelled() {
                            break;
                        }
                        return Err(Error::internal("the dataplane link has stopped"));
                    }
                    let st = dp_state.borrow_and_update().clone();
                    self.ctx.metrics.set_link(Link::Dataplane, st.link.is_up());
                    if st.link.is_up() && st.generation != dp_generation {
                        if dp_generation != 0 {
                            self.ctx.metrics.reconnects.get_or_create(&crate::metrics::LinkLabel { link: Link::Dataplane }).inc();
                        }
                        dp_generation = st.generation;
                        tracing::info!(generation = st.generation, "dataplane connected; checking endpoints");
                        for live in self.calls.values() {
                            let _ = live.tx.send(CallInput::DataplaneBack);
                        }
                        if ari_up && !self.reconcile().await {
                            retry_at = Some(tokio::time::Instant::now() + retry_delay);
                        }
                    }
                },
                Some(req) = self.requests.recv() => self.on_request(req).await,
                Some(done) = self.done_rx.recv() => {
                    self.calls.remove(&done);
                }
            }
        }
        // Calls outlive the control plane: their tasks stop, Asterisk and
        // the dataplane keep the media flowing, the next start adopts them.
        tracing::info!(
            calls = self.calls.len(),
            "call flow stopping; calls live on"
        );
        Ok(())
    }

    fn on_ari(&mut self, event: AriEvent) {
        let Some(channel) = event.channel().map(|c| c.id.as_str().to_owned()) else {
            if let AriEvent::BridgeDestroyed(b) = &event
                && let Some(session) = bridge_session(b.bridge.id.as_str())
                && let Some(live) = self.calls.get(session)
            {
                let _ = live.tx.send(CallInput::Ari(event));
            }
            return;
        };
        // Our own externalMedia channels go to their call.
        if let Some(session) = media_channel_session(&channel) {
            if let Some(live) = self.calls.get(session) {
                let _ = live.tx.send(CallInput::Ari(event));
            }
            return;
        }
        if let Some(live) = self.calls.get(&channel) {
            let _ = live.tx.send(CallInput::Ari(event));
            return;
        }
        if let AriEvent::StasisStart(start) = event {
            self.start_call(*start);
        }
    }

    fn start_call(&mut self, mut start: crate::ari::model::StasisStart) {
        let key = start.channel.id.as_str().to_owned();
        if self.calls.contains_key(&key) {
            return;
        }
        if start.channel.channelvars.is_none() {
            start.channel.channelvars = self.ami_variables(&key);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        self.calls.insert(key.clone(), Live { tx });
        let ctx = self.ctx.clone();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            call::run_new(ctx, start, rx).await;
            let _ = done.send(key);
        });
    }

    fn adopt(&mut self, adopted: call::Adopt) {
        let key = adopted.session.id.as_str().to_owned();
        if self.calls.contains_key(&key) {
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        self.calls.insert(key.clone(), Live { tx });
        let ctx = self.ctx.clone();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            call::run_adopted(ctx, adopted, rx).await;
            let _ = done.send(key);
        });
    }

    /// AMI sees every channel of the PBX: the tracker keeps their facts
    /// (context, extension, variables); a hangup of one of our callers ends
    /// its call even while ARI is away, and every channel that ends is
    /// counted under the tenant its facts route to.
    fn on_ami(&mut self, event: Option<AmiEvent>) {
        let Some(event) = event else { return };
        self.tracker.handle_event(event.event());
        while let Some(change) = self.tracker.poll_change() {
            let ChannelChange::HungUp { channel } = change else {
                continue;
            };
            let facts = CallFacts {
                context: channel.context().unwrap_or("").to_owned(),
                exten: channel.exten().unwrap_or("").to_owned(),
                args: Vec::new(),
                variables: channel
                    .variables()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            };
            let tenant = self
                .ctx
                .rules
                .route(&facts)
                .map_or_else(|| "-".to_owned(), |p| p.tenant.as_str().to_owned());
            self.ctx
                .metrics
                .ami_channels
                .get_or_create(&crate::metrics::TenantLabel { tenant })
                .inc();
            if let Some(live) = self.calls.get(channel.uniqueid().as_str()) {
                let cause = channel.hangup_cause().map_or(16, |c| i32::from(c.0));
                let text = channel.hangup_text().unwrap_or("").to_owned();
                let _ = live.tx.send(CallInput::AmiHangup(cause, text));
            }
        }
    }

    /// The tenant variable as AMI saw it set (`VarSet` runs in the dialplan
    /// before `Stasis()`), so routing need not ask ARI for it. Only a
    /// variable seen counts: AMI and ARI are two connections, and AMI's
    /// `VarSet` may still be on its way when `StasisStart` arrives, so an
    /// unseen variable is asked of ARI.
    fn ami_variables(&self, channel: &str) -> Option<std::collections::BTreeMap<String, String>> {
        let var = self.ctx.rules.variable()?;
        let value = self.tracker.channel(channel)?.variable(var)?;
        Some([(var.to_owned(), value.to_owned())].into_iter().collect())
    }

    /// Endpoint events name the session only when the endpoint is
    /// destroyed (its final statistics): that one goes to the call, which
    /// then re-attaches its media. The others are the dataplane's own
    /// business (its metrics and `mediagwctl watch` show them).
    fn on_dataplane(&mut self, event: DpEvent) {
        if let DpEvent::Destroyed(d) = &event
            && let Some(live) = self.calls.get(d.stats.session.as_str())
        {
            let _ = live.tx.send(CallInput::Dataplane(event));
        }
    }

    async fn on_request(&mut self, req: Request) {
        match req {
            Request::Calls(tx) => {
                // Asked of every call task and gathered apart, with one
                // deadline: the dispatcher goes on routing events meanwhile.
                let mut waits = Vec::with_capacity(self.calls.len());
                for live in self.calls.values() {
                    let (stx, srx) = oneshot::channel();
                    if live.tx.send(CallInput::Summary(stx)).is_ok() {
                        waits.push(srx);
                    }
                }
                tokio::spawn(async move {
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
                    let mut out = Vec::with_capacity(waits.len());
                    for w in waits {
                        if let Ok(Ok(s)) = tokio::time::timeout_at(deadline, w).await {
                            out.push(s);
                        }
                    }
                    out.sort_by(|a, b| a.session.cmp(&b.session));
                    let _ = tx.send(out);
                });
            }
            Request::Hangup(session, tx) => match self.calls.get(session.as_str()) {
                Some(live) => {
                    let _ = live.tx.send(CallInput::Hangup(tx));
                }
                None => {
                    let _ = tx.send(Err(Error::new(
                        ErrorKind::NotFound,
                        Party::Client,
                        format!("no live call {session}"),
                    )));
                }
            },
            Request::Originate(call, tx) => {
                let ctx = self.ctx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(originate(&ctx, *call).await);
                });
            }
        }
    }

    /// Reconciles; false if it could not (the caller retries).
    async fn reconcile(&mut self) -> bool {
        match reconcile::plan(&self.ctx, |id| self.calls.contains_key(id)).await {
            Ok(plan) => {
                let gone: std::collections::HashSet<&str> =
                    plan.gone.iter().map(String::as_str).collect();
                for (id, live) in &self.calls {
                    let input = if gone.contains(id.as_str()) {
                        CallInput::Gone("the caller hung up while ARI was away".into())
                    } else if let Some(listed_at) = plan.listed_at {
                        CallInput::Check {
                            channels: plan.channels.clone(),
                            bridges: plan.bridges.clone(),
                            listed_at,
                        }
                    } else {
                        continue;
                    };
                    let _ = live.tx.send(input);
                }
                for a in plan.adopt {
                    self.adopt(a);
                }
                for start in plan.discovered {
                    self.start_call(start);
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "reconciliation failed; retrying");
                false
            }
        }
    }
}

async fn recv_ami(rx: &mut Option<tokio::sync::broadcast::Receiver<AmiEvent>>) -> Option<AmiEvent> {
    match rx {
        None => std::future::pending().await,
        Some(r) => loop {
            match r.recv().await {
                Ok(e) => return Some(e),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "AMI events lagged");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    *rx = None;
                    return None;
                }
            }
        },
    }
}

async fn originate(ctx: &Context, call: OriginateCall) -> Result<SessionId> {
    let session: SessionId = format!("out-{:016x}", rand::random::<u64>())
        .parse()
        .map_err(|e| Error::internal(format!("generated session id: {e}")))?;
    let o = Originate {
        endpoint: call.endpoint,
        app: Some(ctx.app().to_owned()),
        app_args: Some(format!("tenant={},outbound", call.tenant)),
        caller_id: call.caller_id,
        timeout: call.timeout_s,
        channel_id: Some(ChannelId::new(session.as_str())),
        variables: call.variables,
        ..Originate::default()
    };
    ctx.ari.originate(&o).await?;
    Ok(session)
}

impl Service for Dispatcher {
    fn name(&self) -> &'static str {
        "call-flow"
    }

    fn run(
        self: Box<Self>,
        shutdown: Shutdown,
    ) -> Pin<Box<dyn Future<Output = Result<()>> + Send>> {
        Box::pin(self.serve(shutdown))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_say_which_session_they_belong_to() {
        let s: SessionId = "1795626314.34".parse().unwrap();
        let m = media_channel_id(&s, 2);
        assert_eq!(m.as_str(), "1795626314.34-media-2");
        assert_eq!(media_channel_session(m.as_str()), Some("1795626314.34"));
        assert_eq!(media_channel_session("1795626314.35"), None);
        assert_eq!(media_channel_session("-media-1"), None);
        assert_eq!(media_channel_session("x-media-y"), None);
        let b = bridge_id(&s);
        assert_eq!(bridge_session(b.as_str()), Some("1795626314.34"));
        assert_eq!(bridge_session("c11394f2-2aae-41ee-b742-93692ddee3eb"), None);
    }
}
