//! One call's task: set up, live, torn down.
//!
//! The task owns the call's session and the ids of what it created: the
//! dataplane endpoint, the externalMedia channel(s) and the mixing bridge.
//! Every Asterisk or dataplane step is raced against the call's inputs, so
//! a caller who hangs up mid-setup is noticed at the next step and whatever
//! was created is removed. Errors on the way down (a channel already gone,
//! an endpoint already destroyed) are expected and ignored; every other
//! failure is logged with the call's ids.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mediagw_shared::control::{
    EndpointCreate, EndpointCreated, EndpointDestroy, EndpointList, EndpointStatsQuery,
    Event as DpEvent,
};
use mediagw_shared::ids::{EndpointId, SessionId, TenantId};
use serde::Serialize;
use tokio::sync::mpsc;

use super::{CallInput, Context, bridge_id, media_channel_id, now_ms};
use crate::ari::model::{ChannelState, StasisStart};
use crate::ari::{AriEvent, BridgeId, ChannelId, ExternalMedia, LiveRecord};
use crate::error::{Error, ErrorKind, Result};
use crate::metrics::{Outcome, Recovery, TenantLabel};
use crate::session::{Direction, Session, SessionEvent, SessionState, SessionStore};
use crate::tenant::{CallFacts, MediaFormat, Policy, Unrouted};

/// A live call, as `calls` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallSummary {
    /// The session (also the caller's channel id).
    pub session: String,
    /// Whose call.
    pub tenant: String,
    /// Lifecycle state.
    pub state: String,
    /// Inbound or outbound.
    pub direction: String,
    /// Caller number.
    pub caller: Option<String>,
    /// Dialled number.
    pub dialed: Option<String>,
    /// Dataplane endpoint.
    pub endpoint: Option<String>,
    /// Where Asterisk sends the audio.
    pub endpoint_addr: Option<String>,
    /// Our externalMedia channel.
    pub media_channel: Option<String>,
    /// The mixing bridge.
    pub bridge: Option<String>,
    /// Audio format on the wire.
    pub format: String,
    /// Seconds since the call reached us.
    pub age_s: u64,
    /// Times the media path was re-attached.
    pub reattached: u32,
}

/// What recovery found for a session this host owns.
#[derive(Debug)]
pub(crate) struct Adopt {
    /// The stored session.
    pub session: Session,
    /// Its endpoint still exists in the dataplane.
    pub endpoint_ok: bool,
    /// Its current externalMedia channel still exists (and which one).
    pub media: Option<ChannelId>,
    /// Its bridge exists.
    pub bridge_ok: bool,
    /// The caller still rings (we had not answered yet).
    pub ringing: bool,
}

/// Why a call stops.
enum Stop {
    /// The caller is gone (hung up, or vanished while we looked away).
    Gone(String),
    /// A step failed.
    Failed(Error),
}

struct Call {
    ctx: Arc<Context>,
    rx: mpsc::UnboundedReceiver<CallInput>,
    session: Session,
    caller: ChannelId,
    format: MediaFormat,
    record: bool,
    endpoint: Option<(EndpointId, SocketAddr)>,
    /// The dataplane connection generation the endpoint was created in (0:
    /// unknown, an adopted call). After a dataplane restart its endpoint ids
    /// start over, so an id from an older generation is checked before use.
    endpoint_gen: u64,
    /// externalMedia channels created so far (ids are numbered).
    media_n: u32,
    media: Option<ChannelId>,
    /// Old externalMedia channels of ours, replaced by a re-attach: hung up
    /// (again at teardown if that failed); their end is no surprise.
    retiring: Vec<ChannelId>,
    bridge: Option<BridgeId>,
    gone: Option<String>,
    hangup_waiters: Vec<tokio::sync::oneshot::Sender<Result<()>>>,
    /// The media path must be rebuilt (endpoint, channel or bridge lost).
    media_lost: bool,
    reattached: u32,
    started: Instant,
    /// When the current externalMedia channel and bridge were in place
    /// (`None` while being attached).
    attached_at: Option<tokio::time::Instant>,
}

/// A call that just entered the application.
pub(crate) async fn run_new(
    ctx: Arc<Context>,
    start: StasisStart,
    rx: mpsc::UnboundedReceiver<CallInput>,
) {
    let begun = now_instant();
    let caller = start.channel.id.clone();
    let Some(policy) = route(&ctx, &start).await else {
        unrouted(&ctx, &caller).await;
        return;
    };
    let Ok(session_id) = caller.as_str().parse::<SessionId>() else {
        tracing::warn!(channel = %caller, "channel id is not a usable session id; hanging up");
        let _ = ctx.ari.hangup(&caller, Some("normal")).await;
        return;
    };
    let outbound = start.args.iter().any(|a| a == "outbound");
    let mut session = Session::new(
        policy.tenant.clone(),
        session_id,
        ctx.host(),
        if outbound {
            Direction::Outbound
        } else {
            Direction::Inbound
        },
        now_ms(),
    );
    session.asterisk = Some(ctx.ari.active_server().to_owned());
    session.channel = Some(caller.as_str().to_owned());
    session.caller = Some(start.channel.caller.number.clone()).filter(|n| !n.is_empty());
    session.dialed = Some(start.channel.dialplan.exten.clone()).filter(|n| !n.is_empty());
    session.codec = Some(policy.format.codec().to_string());
    let mut call = Call {
        ctx: ctx.clone(),
        rx,
        session,
        caller,
        format: policy.format,
        record: policy.record,
        endpoint: None,
        endpoint_gen: 0,
        media_n: 0,
        media: None,
        retiring: Vec::new(),
        bridge: None,
        gone: None,
        hangup_waiters: Vec::new(),
        media_lost: false,
        reattached: 0,
        started: begun,
        attached_at: None,
    };
    tracing::debug!(
        session = %call.session.id,
        tenant = %policy.tenant,
        by = policy.matched_by,
        caller = call.session.caller.as_deref().unwrap_or(""),
        dialed = call.session.dialed.as_deref().unwrap_or(""),
        "call arrived"
    );
    if let Err(e) = ctx.store.create(&call.session).await {
        tracing::warn!(session = %call.session.id, error = %e, "session not stored; the call goes on");
    } else {
        publish(&ctx, SessionEvent::created(&call.session)).await;
    }
    gauge(&ctx, &policy.tenant, 1);
    let ringing = matches!(
        start.channel.state,
        ChannelState::Ring | ChannelState::Ringing
    );
    let setup = tokio::time::timeout(
        Duration::from_millis(ctx.cfg.setup_timeout_ms),
        call.setup(ringing && policy.answer),
    );
    let outcome = match setup.await {
        Ok(Ok(())) => None,
        Ok(Err(stop)) => Some(stop),
        Err(_) => Some(Stop::Failed(Error::new(
            ErrorKind::Timeout,
            crate::error::Party::Internal,
            format!("setup took over {} ms", ctx.cfg.setup_timeout_ms),
        ))),
    };
    match outcome {
        None => {
            let took = begun.elapsed();
            ctx.metrics.setup_seconds.observe(took.as_secs_f64());
            ctx.metrics.setup(policy.tenant.as_str(), Outcome::Ok);
            tracing::info!(
                session = %call.session.id,
                tenant = %policy.tenant,
                by = policy.matched_by,
                setup_ms = took.as_secs_f64() * 1000.0,
                endpoint = ?call.endpoint.map(|e| e.0.to_string()),
                "call bridged; audio flows through the dataplane"
            );
            call.live().await;
        }
        Some(Stop::Gone(reason)) => {
            ctx.metrics
                .setup(policy.tenant.as_str(), Outcome::Abandoned);
            tracing::info!(session = %call.session.id, reason, "caller left during setup");
            call.teardown(SessionState::Ended, reason).await;
        }
        Some(Stop::Failed(e)) => {
            ctx.metrics.setup(policy.tenant.as_str(), Outcome::Failed);
            tracing::warn!(session = %call.session.id, error = %e, "call setup failed; hanging up");
            let _ = ctx.ari.hangup(&call.caller, Some("normal")).await;
            call.teardown(SessionState::Failed, format!("setup failed: {e}"))
                .await;
        }
    }
}

/// A call found alive by reconciliation.
pub(crate) async fn run_adopted(
    ctx: Arc<Context>,
    adopt: Adopt,
    rx: mpsc::UnboundedReceiver<CallInput>,
) {
    let s = adopt.session;
    let caller = ChannelId::new(
        s.channel
            .clone()
            .unwrap_or_else(|| s.id.as_str().to_owned()),
    );
    let format = match s.codec.as_deref() {
        Some("PCMA") => MediaFormat::Alaw,
        Some("slin16") => MediaFormat::Slin16,
        _ => MediaFormat::Ulaw,
    };
    let endpoint = match (s.endpoint, s.endpoint_addr.as_deref()) {
        (Some(id), Some(addr)) if adopt.endpoint_ok => addr.parse().ok().map(|a| (id, a)),
        _ => None,
    };
    let media_n = s
        .external_channel
        .as_deref()
        .and_then(super::media_channel_session_n)
        .unwrap_or(0);
    let whole = endpoint.is_some() && adopt.media.is_some() && adopt.bridge_ok;
    let tenant = s.tenant.clone();
    let ringing = adopt.ringing;
    let mut call = Call {
        ctx: ctx.clone(),
        rx,
        caller,
        format,
        record: s.recording.is_some(),
        endpoint,
        endpoint_gen: 0,
        media_n,
        media: adopt.media,
        retiring: Vec::new(),
        bridge: adopt.bridge_ok.then(|| bridge_id(&s.id)),
        gone: None,
        hangup_waiters: Vec::new(),
        media_lost: !whole,
        reattached: 0,
        started: now_instant(),
        // Adopted from lists taken before this task existed.
        attached_at: Some(tokio::time::Instant::now()),
        session: s,
    };
    gauge(&ctx, &tenant, 1);
    if ringing {
        match ctx.ari.answer(&call.caller).await {
            Ok(()) => {
                let _ = call.session.transition(SessionState::Answered, now_ms());
            }
            Err(e) => {
                tracing::warn!(session = %call.session.id, error = %e, "adopted call not answered");
            }
        }
    }
    if whole {
        ctx.metrics.recovered(Recovery::Adopted);
        tracing::info!(session = %call.session.id, "call adopted as it was");
    } else {
        tracing::info!(
            session = %call.session.id,
            endpoint = call.endpoint.is_some(),
            media = call.media.is_some(),
            bridge = call.bridge.is_some(),
            "call adopted; its media path needs re-attaching"
        );
    }
    call.live().await;
}

impl Call {
    /// Answer ∥ endpoint, then externalMedia ∥ bridge, then addChannel,
    /// then record.
    async fn setup(&mut self, answer: bool) -> Result<(), Stop> {
        let ctx = self.ctx.clone();
        let caller = self.caller.clone();
        let (tenant, id) = (self.session.tenant.clone(), self.session.id.clone());
        let answering = async {
            if answer {
                ctx.ari.answer(&caller).await.map(|()| true)
            } else {
                Ok(false)
            }
        };
        let creating = create_endpoint(&ctx, &tenant, &id, self.format);
        let (answered, created) = self
            .step(async { tokio::join!(answering, creating) })
            .await?;
        if let Ok(c) = &created {
            self.endpoint = Some((c.endpoint, c.local_addr));
            self.endpoint_gen = ctx.dataplane.state().borrow().generation;
        }
        match answered {
            // The caller's channel is gone: it hung up before the answer.
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Stop::Gone(format!("caller gone before the answer: {e}")));
            }
            other => other.map_err(Stop::Failed)?,
        };
        created.map_err(Stop::Failed)?;
        self.gone_check()?;
        let now = now_ms();
        if answer {
            let _ = self.session.transition(SessionState::Answered, now);
        }
        let _ = self.session.transition(SessionState::MediaConnecting, now);
        // A loss during the attach is the live loop's to repair.
        self.attach_media().await?;
        let from = self.session.state();
        let _ = self.session.transition(SessionState::Active, now_ms());
        self.save().await;
        publish(&self.ctx, SessionEvent::transitioned(&self.session, from)).await;
        Ok(())
    }

    /// externalMedia to our endpoint ∥ the bridge (created if missing);
    /// then the channel, and the caller unless it is already there, into
    /// the bridge; the recording (re)started if the bridge is new. A loss
    /// noticed meanwhile (endpoint destroyed, bridge gone) fails the attempt
    /// so that the next one rebuilds it.
    async fn attach_media(&mut self) -> Result<bool, Stop> {
        let ctx = self.ctx.clone();
        let Some((endpoint, addr)) = self.endpoint else {
            return Err(Stop::Failed(Error::internal("no endpoint to attach")));
        };
        // Losses from here on count against this attempt.
        self.media_lost = false;
        self.attached_at = None;
        self.media_n += 1;
        let media = media_channel_id(&self.session.id, self.media_n);
        let em = ExternalMedia {
            app: ctx.app().to_owned(),
            external_host: addr,
            format: ari_format(self.format),
            encapsulation: None,
            transport: None,
            connection_type: None,
            direction: None,
            channel_id: Some(media.clone()),
            data: None,
            variables: Default::default(),
        };
        let bridge = bridge_id(&self.session.id);
        let need_bridge = self.bridge.is_none();
        let name = self.session.id.clone();
        let making_bridge = async {
            if need_bridge {
                match ctx
                    .ari
                    .create_bridge("mixing", name.as_str(), Some(&bridge))
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(e) if e.kind() == ErrorKind::Conflict => Ok(false),
                    Err(e) => Err(e),
                }
            } else {
                Ok(false)
            }
        };
        let (em_result, bridge_result) = self
            .step(async { tokio::join!(ctx.ari.external_media(&em), making_bridge) })
            .await?;
        if em_result.is_ok() {
            self.media = Some(media.clone());
        }
        if bridge_result.is_ok() {
            self.bridge = Some(bridge.clone());
        }
        em_result.map_err(Stop::Failed)?;
        let created_bridge = bridge_result.map_err(Stop::Failed)?;
        self.gone_check()?;
        // A bridge that existed already (a re-attach, an adopted call) may
        // or may not hold the caller: a setup cut short between creating it
        // and adding to it leaves it without.
        let caller_in = if created_bridge {
            false
        } else {
            let b = self.step(ctx.ari.bridge(&bridge)).await?;
            b.map_err(Stop::Failed)?.channels.contains(&self.caller)
        };
        let members = if caller_in {
            vec![media.clone()]
        } else {
            vec![self.caller.clone(), media.clone()]
        };
        self.step(ctx.ari.add_channels(&bridge, &members))
            .await?
            .map_err(Stop::Failed)?;
        self.gone_check()?;
        if created_bridge && self.record {
            self.start_recording().await;
        }
        self.session.endpoint = Some(endpoint);
        self.session.endpoint_addr = Some(addr.to_string());
        self.session.external_channel = Some(media.as_str().to_owned());
        self.session.bridge = Some(bridge.as_str().to_owned());
        // Something noticed meanwhile (endpoint destroyed, bridge or channel
        // gone) leaves `media_lost` set: the live loop rebuilds.
        let intact =
            !self.media_lost && self.endpoint == Some((endpoint, addr)) && self.bridge.is_some();
        self.media_lost = !intact;
        self.attached_at = Some(tokio::time::Instant::now());
        Ok(intact)
    }

    async fn start_recording(&mut self) {
        let Some(bridge) = self.bridge.clone() else {
            return;
        };
        let name = format!("mediagw-{}", self.session.id);
        let rec = LiveRecord {
            name: name.clone(),
            format: self.ctx.cfg.recording_format.clone(),
            max_duration_seconds: Some(self.ctx.cfg.recording_max_s).filter(|s| *s > 0),
            max_silence_seconds: None,
            if_exists: Some(crate::ari::rest::IfExists::Overwrite),
            beep: None,
            terminate_on: None,
        };
        match self.ctx.ari.record_bridge(&bridge, &rec).await {
            Ok(_) => self.session.recording = Some(name),
            Err(e) => {
                tracing::warn!(session = %self.session.id, error = %e, "recording did not start; the call goes on");
            }
        }
    }

    /// Runs `fut` while taking the call's inputs; a caller that hangs up
    /// meanwhile is noted (the step still completes, so whatever it created
    /// is known and removed).
    async fn step<T>(&mut self, fut: impl Future<Output = T>) -> Result<T, Stop> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return Ok(out),
                input = self.rx.recv() => match input {
                    Some(input) => self.note(input).await,
                    // The dispatcher stopped (shutdown): finish the step.
                    None => return Ok(fut.await),
                },
            }
        }
    }

    fn gone_check(&self) -> Result<(), Stop> {
        match &self.gone {
            Some(reason) => Err(Stop::Gone(reason.clone())),
            None => Ok(()),
        }
    }

    /// Takes one input; returns whether the call must end.
    async fn note(&mut self, input: CallInput) {
        match input {
            CallInput::Ari(event) => self.on_ari(event),
            CallInput::AmiHangup(cause, text) => {
                if self.gone.is_none() {
                    self.gone = Some(format!("caller hung up (AMI cause {cause} {text})"));
                }
            }
            CallInput::Gone(reason) => {
                if self.gone.is_none() {
                    self.gone = Some(reason);
                }
            }
            CallInput::Dataplane(DpEvent::Destroyed(d)) => {
                if self.endpoint.map(|e| e.0) == Some(d.endpoint) {
                    tracing::warn!(session = %self.session.id, reason = ?d.reason, "our dataplane endpoint was destroyed");
                    self.endpoint = None;
                    self.media_lost = true;
                }
            }
            CallInput::Dataplane(_) => {}
            CallInput::DataplaneBack => {
                if !self.endpoint_is_ours().await {
                    if let Some((id, _)) = self.endpoint.take() {
                        tracing::warn!(session = %self.session.id, endpoint = %id, "endpoint gone after the dataplane came back");
                    }
                    self.media_lost = true;
                }
            }
            CallInput::Check {
                channels,
                bridges,
                listed_at,
            } => {
                // Only what existed when Asterisk was asked can be missing
                // from its answer.
                if self.gone.is_none() && self.attached_at.is_some_and(|t| t < listed_at) {
                    if let Some(m) = &self.media
                        && !channels.contains(m.as_str())
                    {
                        tracing::warn!(session = %self.session.id, channel = %m, "our externalMedia channel is gone; re-attaching");
                        self.media = None;
                        self.media_lost = true;
                    }
                    if let Some(b) = &self.bridge
                        && !bridges.contains(b.as_str())
                    {
                        tracing::warn!(session = %self.session.id, bridge = %b, "our bridge is gone; re-attaching");
                        self.bridge = None;
                        self.media_lost = true;
                    }
                }
            }
            CallInput::Hangup(tx) => {
                let r = self.ctx.ari.hangup(&self.caller, Some("normal")).await;
                match r {
                    Ok(()) => self.hangup_waiters.push(tx),
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        self.gone
                            .get_or_insert_with(|| "caller already gone".into());
                        let _ = tx.send(Ok(()));
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            }
            CallInput::Summary(tx) => {
                let _ = tx.send(self.summary());
            }
        }
    }

    fn on_ari(&mut self, event: AriEvent) {
        match &event {
            AriEvent::StasisEnd(e) if e.channel.id == self.caller => {
                self.gone
                    .get_or_insert_with(|| "caller left the application".into());
            }
            AriEvent::ChannelDestroyed(e) if e.channel.id == self.caller => {
                self.gone.get_or_insert_with(|| {
                    format!("caller hung up (cause {} {})", e.cause, e.cause_txt)
                });
            }
            _ => {}
        }
        // Our externalMedia channel vanishing when we did not ask for it.
        let media_ended = match &event {
            AriEvent::StasisEnd(e) => Some(&e.channel.id),
            AriEvent::ChannelDestroyed(e) => Some(&e.channel.id),
            _ => None,
        };
        if let Some(id) = media_ended {
            if let Some(pos) = self.retiring.iter().position(|r| r == id) {
                if matches!(event, AriEvent::ChannelDestroyed(_)) {
                    self.retiring.swap_remove(pos);
                }
            } else if self.media.as_ref() == Some(id) && self.gone.is_none() {
                tracing::warn!(session = %self.session.id, channel = %id, "our externalMedia channel ended; re-attaching");
                self.media = None;
                self.media_lost = true;
            }
        }
        if let AriEvent::BridgeDestroyed(b) = &event
            && self.bridge.as_ref() == Some(&b.bridge.id)
            && self.gone.is_none()
        {
            tracing::warn!(session = %self.session.id, bridge = %b.bridge.id, "our bridge was destroyed; re-attaching");
            self.bridge = None;
            self.media_lost = true;
        }
    }

    /// The call's life after setup: until the caller leaves.
    async fn live(mut self) {
        let mut touch = tokio::time::interval(Duration::from_millis(
            self.ctx.cfg.touch_interval_ms.max(1_000),
        ));
        touch.tick().await;
        let mut retry = Duration::from_millis(100);
        let mut lost_since: Option<Instant> = None;
        loop {
            if self.gone.is_some() {
                let reason = self.gone.clone().unwrap_or_default();
                self.teardown(SessionState::Ended, reason).await;
                return;
            }
            if self.media_lost {
                let since = *lost_since.get_or_insert_with(now_instant);
                match self.reattach().await {
                    Ok(()) => {
                        lost_since = None;
                        retry = Duration::from_millis(100);
                        continue;
                    }
                    Err(Stop::Gone(_)) => continue,
                    Err(Stop::Failed(e)) => {
                        if since.elapsed()
                            > Duration::from_millis(self.ctx.cfg.media_wait_ms.max(1))
                        {
                            tracing::warn!(session = %self.session.id, error = %e, "media cannot be re-attached; hanging up");
                            let _ = self.ctx.ari.hangup(&self.caller, Some("normal")).await;
                            self.teardown(SessionState::Failed, format!("media lost: {e}"))
                                .await;
                            return;
                        }
                        tracing::debug!(session = %self.session.id, error = %e, ?retry, "re-attach failed; retrying");
                    }
                }
            }
            let wait = if self.media_lost {
                retry
            } else {
                Duration::from_secs(3600)
            };
            tokio::select! {
                input = self.rx.recv() => match input {
                    Some(input) => self.note(input).await,
                    // Shutdown: the call lives on in Asterisk and the
                    // dataplane; the next control plane adopts it.
                    None => {
                        self.save().await;
                        return;
                    }
                },
                _ = touch.tick() => {
                    if let Err(e) = self.ctx.store.touch(&self.session.tenant, &self.session.id, now_ms()).await {
                        tracing::debug!(session = %self.session.id, error = %e, "touch failed");
                    }
                }
                () = tokio::time::sleep(wait) => {
                    retry = (retry * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Rebuilds the media path: a new endpoint if it is gone, a new
    /// externalMedia channel, the bridge if it is gone; the old channel is
    /// hung up.
    async fn reattach(&mut self) -> Result<(), Stop> {
        // From `active` (media lost) or from a setup cut short by a restart
        // (`new`, `answered`): both go through `media_connecting`.
        if self.session.state() != SessionState::MediaConnecting {
            let _ = self
                .session
                .transition(SessionState::MediaConnecting, now_ms());
        }
        // The old externalMedia channel goes first: after a dataplane
        // restart its port may already serve another call, and its audio
        // must not reach that one.
        if let Some(old) = self.media.take() {
            self.retiring.push(old.clone());
            if let Err(e) = self.ctx.ari.hangup(&old, None).await
                && e.kind() != ErrorKind::NotFound
            {
                tracing::warn!(session = %self.session.id, channel = %old, error = %e, "old externalMedia channel not hung up; again at teardown");
            }
        }
        if self.endpoint.is_none() {
            let ctx = self.ctx.clone();
            let (tenant, id) = (self.session.tenant.clone(), self.session.id.clone());
            let created = self
                .step(create_endpoint(&ctx, &tenant, &id, self.format))
                .await?
                .map_err(Stop::Failed)?;
            self.endpoint = Some((created.endpoint, created.local_addr));
            self.endpoint_gen = ctx.dataplane.state().borrow().generation;
            self.gone_check()?;
        }
        if !self.attach_media().await? {
            return Err(Stop::Failed(Error::new(
                ErrorKind::Unavailable,
                crate::error::Party::Internal,
                "the media path was lost again while being attached",
            )));
        }
        let from = self.session.state();
        let _ = self.session.transition(SessionState::Active, now_ms());
        self.save().await;
        publish(&self.ctx, SessionEvent::transitioned(&self.session, from)).await;
        self.reattached += 1;
        self.ctx.metrics.recovered(Recovery::Reattached);
        tracing::info!(session = %self.session.id, endpoint = ?self.endpoint.map(|e| e.0.to_string()), "media re-attached");
        Ok(())
    }

    /// Removes what the call created and closes its session.
    async fn teardown(mut self, outcome: SessionState, reason: String) {
        let ctx = self.ctx.clone();
        let now = now_ms();
        let _ = self.session.transition(SessionState::Ending, now);
        // What the call may have created, by what we know and, where a step
        // was cut short (a timeout, a crash), by the ids only we use.
        let current_gen = ctx.dataplane.state().borrow().generation;
        let endpoints: Vec<EndpointId> = match self.endpoint {
            // Created on this dataplane connection: the id is ours.
            Some((id, _)) if self.endpoint_gen == current_gen => vec![id],
            // After a dataplane restart ids start over: ours only if the
            // dataplane says so.
            Some((id, _)) => {
                if self.endpoint_is_ours().await {
                    vec![id]
                } else {
                    Vec::new()
                }
            }
            None => self.endpoints_named_after_us().await,
        };
        let mut channels: Vec<ChannelId> = self.retiring.clone();
        match &self.media {
            Some(m) => channels.push(m.clone()),
            // The last externalMedia request may have gone out unanswered.
            None if self.media_n > 0 => {
                channels.push(media_channel_id(&self.session.id, self.media_n));
            }
            None => {}
        }
        let bridge = self
            .bridge
            .clone()
            .unwrap_or_else(|| bridge_id(&self.session.id));
        let session = &self.session.id;
        let destroy_endpoints = async {
            let mut last = None;
            for id in endpoints {
                match ctx.dataplane.call(EndpointDestroy { endpoint: id }).await {
                    Ok(stats) => last = Some(stats),
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(%session, endpoint = %id, error = %e, "endpoint not destroyed");
                    }
                }
            }
            last
        };
        let hangup_media = async {
            for m in &channels {
                if let Err(e) = ctx.ari.hangup(m, None).await
                    && e.kind() != ErrorKind::NotFound
                {
                    tracing::warn!(%session, channel = %m, error = %e, "externalMedia channel not hung up");
                }
            }
        };
        let destroy_bridge = async {
            if let Err(e) = ctx.ari.destroy_bridge(&bridge).await
                && e.kind() != ErrorKind::NotFound
            {
                tracing::warn!(%session, bridge = %bridge, error = %e, "bridge not destroyed");
            }
        };
        let (stats, (), ()) = tokio::join!(destroy_endpoints, hangup_media, destroy_bridge);
        if let Some(stats) = &stats {
            self.session.final_stats = serde_json::to_value(stats).ok();
        }
        let from = self.session.state();
        let _ = self.session.finish(outcome, reason.clone(), now_ms());
        self.save().await;
        publish(&ctx, SessionEvent::transitioned(&self.session, from)).await;
        gauge(&ctx, &self.session.tenant, -1);
        ctx.metrics
            .calls_ended
            .get_or_create(&TenantLabel {
                tenant: self.session.tenant.as_str().to_owned(),
            })
            .inc();
        for w in self.hangup_waiters.drain(..) {
            let _ = w.send(Ok(()));
        }
        let rx = stats.as_ref().map(|s| &s.rx);
        tracing::info!(
            session = %self.session.id,
            tenant = %self.session.tenant,
            state = %self.session.state(),
            reason,
            packets = rx.map(|r| r.packets),
            lost = rx.map(|r| r.lost),
            jitter_ms = rx.map(|r| r.jitter_ms),
            concealed = stats.as_ref().map(|s| s.jitter_buffer.concealed),
            "call ended"
        );
    }

    /// Whether the dataplane's endpoint of our id is ours: ids start over
    /// when the dataplane restarts. An unanswered question counts as yes
    /// (the next reconnection asks again).
    async fn endpoint_is_ours(&self) -> bool {
        let Some((id, _)) = self.endpoint else {
            return false;
        };
        match self
            .ctx
            .dataplane
            .call(EndpointStatsQuery { endpoint: id })
            .await
        {
            Ok(s) => s.session == self.session.id && s.tenant == self.session.tenant,
            Err(e) => e.kind() != ErrorKind::NotFound,
        }
    }

    /// Endpoints the dataplane holds for this session (a create that was
    /// cut short before its answer reached us).
    async fn endpoints_named_after_us(&self) -> Vec<EndpointId> {
        let list = EndpointList {
            tenant: Some(self.session.tenant.clone()),
        };
        match self.ctx.dataplane.call(list).await {
            Ok(l) => l
                .endpoints
                .into_iter()
                .filter(|e| e.session == self.session.id)
                .map(|e| e.endpoint)
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Writes the session; a conflict (another writer) reloads the stored
    /// revision and writes ours over it: this task owns the call.
    async fn save(&mut self) {
        let store = &self.ctx.store;
        for _ in 0..3 {
            match store.update(&self.session).await {
                Ok(rev) => {
                    self.session.revision = rev;
                    return;
                }
                Err(e) if e.kind() == ErrorKind::Conflict => {
                    match store.get(&self.session.tenant, &self.session.id).await {
                        Ok(Some(stored)) => self.session.revision = stored.revision,
                        _ => break,
                    }
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    // Never stored (the store was down at the start).
                    match store.create(&self.session).await {
                        Ok(rev) => self.session.revision = rev,
                        Err(e) => {
                            tracing::warn!(session = %self.session.id, error = %e, "session not stored");
                        }
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(session = %self.session.id, error = %e, "session not stored");
                    return;
                }
            }
        }
    }

    fn summary(&self) -> CallSummary {
        CallSummary {
            session: self.session.id.as_str().to_owned(),
            tenant: self.session.tenant.as_str().to_owned(),
            state: self.session.state().to_string(),
            direction: match self.session.direction {
                Direction::Inbound => "inbound".into(),
                Direction::Outbound => "outbound".into(),
            },
            caller: self.session.caller.clone(),
            dialed: self.session.dialed.clone(),
            endpoint: self.endpoint.map(|e| e.0.to_string()),
            endpoint_addr: self.endpoint.map(|e| e.1.to_string()),
            media_channel: self.media.as_ref().map(|m| m.as_str().to_owned()),
            bridge: self.bridge.as_ref().map(|b| b.as_str().to_owned()),
            format: self.format.ari_name().to_owned(),
            age_s: self.started.elapsed().as_secs(),
            reattached: self.reattached,
        }
    }
}

/// Asks the dataplane for an endpoint; while the dataplane is down, waits
/// for it (up to `media_wait_ms`) rather than failing the call at once.
async fn create_endpoint(
    ctx: &Context,
    tenant: &TenantId,
    session: &SessionId,
    format: MediaFormat,
) -> Result<EndpointCreated> {
    let deadline = now_instant() + Duration::from_millis(ctx.cfg.media_wait_ms);
    let mut delay = Duration::from_millis(50);
    loop {
        let req = EndpointCreate::new(tenant.clone(), session.clone(), format.codec());
        match ctx.dataplane.call(req).await {
            Err(e) if e.kind() == ErrorKind::Unavailable && now_instant() < deadline => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

async fn route(ctx: &Context, start: &StasisStart) -> Option<Policy> {
    let ch = &start.channel;
    let mut facts = CallFacts {
        context: ch.dialplan.context.clone(),
        exten: ch.dialplan.exten.clone(),
        args: start.args.clone(),
        variables: ch.channelvars.clone().unwrap_or_default(),
    };
    // Asterisk puts channel variables in the snapshot only when ari.conf
    // lists them (`channelvars`); otherwise ask for the one we route by,
    // unless a Stasis argument names the tenant (it comes first).
    if ch.channelvars.is_none()
        && let Some(var) = ctx.rules.variable()
        && !ctx.rules.names_tenant_in_args(&start.args)
    {
        match ctx.ari.variable(&ch.id, var).await {
            Ok(Some(v)) => {
                facts.variables.insert(var.to_owned(), v);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(channel = %ch.id, variable = var, error = %e, "tenant variable not read; routing by the other rules");
            }
        }
    }
    ctx.rules.route(&facts)
}

async fn unrouted(ctx: &Context, caller: &ChannelId) {
    ctx.metrics.setup("-", Outcome::Unrouted);
    match ctx.rules.unrouted() {
        Unrouted::Hangup => {
            tracing::info!(channel = %caller, "no tenant for this call; hanging up");
            let _ = ctx.ari.hangup(caller, Some("normal")).await;
        }
        Unrouted::Continue => {
            tracing::info!(channel = %caller, "no tenant for this call; back to the dialplan");
            if let Err(e) = ctx.ari.continue_in_dialplan(caller).await {
                tracing::warn!(channel = %caller, error = %e, "continue failed; hanging up");
                let _ = ctx.ari.hangup(caller, Some("normal")).await;
            }
        }
    }
}

fn ari_format(f: MediaFormat) -> crate::ari::MediaFormat {
    match f {
        MediaFormat::Ulaw => crate::ari::MediaFormat::Ulaw,
        MediaFormat::Alaw => crate::ari::MediaFormat::Alaw,
        MediaFormat::Slin16 => crate::ari::MediaFormat::Slin16,
    }
}

fn gauge(ctx: &Context, tenant: &TenantId, delta: i64) {
    ctx.metrics
        .calls_active
        .get_or_create(&TenantLabel {
            tenant: tenant.as_str().to_owned(),
        })
        .inc_by(delta);
}

async fn publish(ctx: &Context, event: SessionEvent) {
    if let Err(e) = ctx.store.publish(&event).await {
        tracing::debug!(session = %event.session, error = %e, "session event not published");
    }
}

#[allow(clippy::disallowed_methods)] // a driver: setup latency and retries
fn now_instant() -> Instant {
    Instant::now()
}
