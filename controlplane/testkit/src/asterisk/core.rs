//! The double's Asterisk: channels, bridges, Stasis applications and live
//! recordings as state, and the AMI and ARI events every change produces.
//!
//! Sans-IO: [`Pbx`] is fed operations and an explicit [`Now`], answers with
//! JSON text or an [`ApiError`], and queues what Asterisk would emit
//! ([`Out`]: ARI events per application, AMI events, RTP start/stop) for the
//! driver to deliver. Socket binding for UnicastRTP is passed in as a
//! function so tests can run it without sockets.
//!
//! The event sequences follow the recordings of Asterisk 22.10.1 (see the
//! crate README for the scenarios and for what is simplified: no dialplan,
//! no Local channel optimisation, no DeviceStateChange, no mixing).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use super::clock::{ast_build_date, ast_timestamp, epoch_secs};
use super::json::{Obj, str_array};
use super::rtp::MediaFormat;
use super::{
    BridgeId, BridgeSnapshot, ChannelId, ChannelKind, ChannelSnapshot, ChannelState, DoubleError,
    InboundCall,
};

/// The moment an operation happens: wall clock for Asterisk's timestamps,
/// monotonic clock for timers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Now {
    pub(crate) wall: SystemTime,
    pub(crate) mono: Instant,
}

/// An ARI error: HTTP status and the `message` of `{"message":"..."}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) status: u16,
    pub(crate) message: String,
}

fn err(status: u16, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        message: message.into(),
    }
}

/// A successful ARI answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// 200 with a JSON body.
    Json(String),
    /// 201 with a `Location` and a JSON body.
    Created { location: String, json: String },
    /// 204.
    NoContent,
}

/// Something Asterisk emits, for the driver to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Out {
    /// An ARI event for these applications; `body` is an open JSON object
    /// to which the driver appends `asterisk_id` and `application`.
    Ari { apps: Vec<String>, body: String },
    /// An AMI event, complete with its blank line.
    Ami(String),
    /// Send the caller's tone on this UnicastRTP channel.
    RtpStart(ChannelId, u32),
    /// Stop sending on this UnicastRTP channel.
    RtpStop(ChannelId),
    /// The UnicastRTP channel is gone: close its socket.
    RtpClose(ChannelId),
}

/// Fixed facts about the simulated Asterisk.
#[derive(Debug, Clone)]
pub(crate) struct PbxConfig {
    pub(crate) entity_id: String,
    pub(crate) default_app: String,
    pub(crate) tone_hz: u32,
    pub(crate) system_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Party {
    name: String,
    number: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Dialplan {
    context: String,
    exten: String,
    priority: i64,
    app_name: String,
    app_data: String,
}

#[derive(Debug, Clone)]
enum Kind {
    /// A call leg that carries audio into the bridge: the double's tone.
    Caller { tone_hz: u32 },
    /// An externalMedia channel.
    Unicast {
        external_host: String,
        remote: SocketAddr,
        format: MediaFormat,
        local: SocketAddr,
    },
}

#[derive(Debug, Clone)]
struct Stasis {
    app: String,
    args: Vec<String>,
}

#[derive(Debug, Clone)]
struct Channel {
    id: ChannelId,
    name: String,
    state: ChannelState,
    caller: Party,
    connected: Party,
    dialplan: Dialplan,
    /// Dialplan location to show again once the channel leaves Stasis (the
    /// recordings show `AppDial2` in ChannelDestroyed).
    before_stasis: Option<Dialplan>,
    creationtime: String,
    /// Creation order, to pick the oldest linkedid.
    order: u64,
    linkedid: ChannelId,
    vars: Vec<(String, String)>,
    kind: Kind,
    stasis: Option<Stasis>,
    /// The application that created the channel (originate, externalMedia):
    /// it stays subscribed until the channel is destroyed.
    created_by: Option<String>,
    bridge: Option<BridgeId>,
    local_peer: Option<ChannelId>,
}

impl Channel {
    fn var(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn set_var(&mut self, name: &str, value: &str) {
        match self.vars.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = value.to_owned(),
            None => self.vars.push((name.to_owned(), value.to_owned())),
        }
    }

    fn apps(&self) -> Vec<String> {
        let mut apps = Vec::with_capacity(2);
        if let Some(s) = &self.stasis {
            apps.push(s.app.clone());
        }
        if let Some(a) = &self.created_by
            && !apps.contains(a)
        {
            apps.push(a.clone());
        }
        apps
    }

    fn json(&self) -> String {
        self.obj().finish()
    }

    fn obj(&self) -> Obj {
        Obj::new()
            .str("id", self.id.as_str())
            .str("name", &self.name)
            .str("state", self.state.ari_name())
            .str("protocol_id", "")
            .raw("caller", &party_json(&self.caller))
            .raw("connected", &party_json(&self.connected))
            .str("accountcode", "")
            .raw(
                "dialplan",
                &Obj::new()
                    .str("context", &self.dialplan.context)
                    .str("exten", &self.dialplan.exten)
                    .int("priority", self.dialplan.priority)
                    .str("app_name", &self.dialplan.app_name)
                    .str("app_data", &self.dialplan.app_data)
                    .finish(),
            )
            .str("creationtime", &self.creationtime)
            .str("language", "en")
    }

    fn is_unicast(&self) -> bool {
        matches!(self.kind, Kind::Unicast { .. })
    }
}

fn party_json(p: &Party) -> String {
    Obj::new()
        .str("name", &p.name)
        .str("number", &p.number)
        .finish()
}

#[derive(Debug, Clone)]
struct Bridge {
    id: BridgeId,
    name: String,
    bridge_type: String,
    technology: &'static str,
    channels: Vec<ChannelId>,
    creationtime: String,
    /// Applications that ever had a channel in the bridge; they get
    /// BridgeDestroyed.
    apps: Vec<String>,
    /// Name of the live recording and of its Recorder channel.
    recording: Option<(String, String)>,
}

impl Bridge {
    fn json(&self) -> String {
        Obj::new()
            .str("id", self.id.as_str())
            .str("technology", self.technology)
            .str("bridge_type", &self.bridge_type)
            .str("bridge_class", "stasis")
            .str("creator", "Stasis")
            .str("name", &self.name)
            .raw(
                "channels",
                &str_array(&self.channels.iter().map(|c| c.as_str()).collect::<Vec<_>>()),
            )
            .str("creationtime", &self.creationtime)
            .str("video_mode", "talker")
            .finish()
    }
}

#[derive(Debug, Clone)]
struct LiveRecording {
    name: String,
    format: String,
    target_uri: String,
    bridge: BridgeId,
    state: &'static str,
    started: Instant,
    deadline: Option<Instant>,
    apps: Vec<String>,
}

impl LiveRecording {
    fn obj(&self) -> Obj {
        Obj::new()
            .str("name", &self.name)
            .str("format", &self.format)
            .str("state", self.state)
            .str("target_uri", &self.target_uri)
    }
}

/// Recording formats Asterisk knows (file extensions of its format modules).
const RECORDING_FORMATS: &[&str] = &[
    "wav", "WAV", "wav49", "gsm", "ulaw", "ul", "mu", "pcm", "alaw", "al", "sln", "raw", "sln16",
    "g722", "g729", "ogg",
];

/// Formats a channel can be originated with (`formats=`).
const CHANNEL_FORMATS: &[&str] = &[
    "ulaw", "alaw", "slin", "slin16", "slin48", "g722", "gsm", "g729", "opus", "ilbc", "speex",
    "g726", "h264", "vp8",
];

/// Hangup causes by ARI `reason` (res/ari/resource_channels.c).
fn cause_for_reason(reason: &str) -> Option<u16> {
    Some(match reason {
        "" | "normal" => 16,
        "busy" => 17,
        "congestion" => 34,
        "no_answer" => 19,
        "timeout" => 18,
        "rejected" => 21,
        "unallocated" => 1,
        "normal_unspecified" => 31,
        "number_incomplete" => 28,
        "codec_mismatch" => 58,
        "interworking" => 127,
        "failure" => 38,
        "answered_elsewhere" => 26,
        _ => return None,
    })
}

/// Asterisk's text for a hangup cause (`ast_cause2str`).
pub(crate) fn cause_text(cause: u16) -> &'static str {
    match cause {
        1 => "Unallocated (unassigned) number",
        3 => "No route to destination",
        16 => "Normal Clearing",
        17 => "User busy",
        18 => "No user responding",
        19 => "User alerting, no answer",
        21 => "Call Rejected",
        26 => "Answered elsewhere",
        27 => "Destination out of order",
        28 => "Invalid number format (incomplete number)",
        31 => "Normal, unspecified",
        34 => "Circuit/channel congestion",
        38 => "Network out of order",
        41 => "Temporary failure",
        58 => "Bearer capability not available",
        127 => "Interworking, unspecified",
        _ => "Unknown",
    }
}

/// How a channel is being hung up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HangupHow {
    /// ARI `DELETE /channels/{id}` or AMI Hangup: a soft hangup request
    /// (ARI `cause` 32 with `soft`, AMI SoftHangupRequest).
    Explicit(u16),
    /// The far end hung up (SIP BYE): AMI HangupRequest, ARI `cause` only.
    Remote(u16),
}

/// Parameters of an originate (ARI `POST /channels`, AMI Originate).
#[derive(Debug, Clone, Default)]
pub(crate) struct Originate {
    pub(crate) endpoint: String,
    pub(crate) extension: String,
    pub(crate) context: String,
    pub(crate) priority: i64,
    pub(crate) app: String,
    pub(crate) app_args: String,
    pub(crate) caller_id: String,
    pub(crate) channel_id: String,
    pub(crate) other_channel_id: String,
    pub(crate) originator: String,
    pub(crate) formats: String,
    pub(crate) variables: Vec<(String, String)>,
}

/// Parameters of `POST /channels/externalMedia`.
#[derive(Debug, Clone, Default)]
pub(crate) struct ExternalMedia {
    pub(crate) channel_id: String,
    pub(crate) app: String,
    pub(crate) external_host: String,
    pub(crate) encapsulation: String,
    pub(crate) transport: String,
    pub(crate) connection_type: String,
    pub(crate) format: String,
    pub(crate) direction: String,
    pub(crate) data: String,
    pub(crate) variables: Vec<(String, String)>,
}

/// Parameters of `POST /bridges/{id}/record`.
#[derive(Debug, Clone, Default)]
pub(crate) struct RecordParams {
    pub(crate) name: String,
    pub(crate) format: String,
    pub(crate) max_duration_seconds: i64,
    pub(crate) max_silence_seconds: i64,
    pub(crate) if_exists: String,
    pub(crate) terminate_on: String,
}

/// The simulated Asterisk.
#[derive(Debug)]
pub(crate) struct Pbx {
    cfg: PbxConfig,
    startup: SystemTime,
    channels: HashMap<ChannelId, Channel>,
    bridges: HashMap<BridgeId, Bridge>,
    live: HashMap<String, LiveRecording>,
    stored: Vec<(String, String)>,
    active_apps: Vec<String>,
    /// `PUT /applications/{app}/eventFilter`: allowed and disallowed event
    /// types per application (empty allowed: all).
    event_filters: HashMap<String, (Vec<String>, Vec<String>)>,
    next_uniqueid: u64,
    next_chan_idx: u32,
    next_order: u64,
    out: Vec<Out>,
}

impl Pbx {
    pub(crate) fn new(cfg: PbxConfig, now: Now) -> Self {
        Pbx {
            cfg,
            startup: now.wall,
            channels: HashMap::new(),
            bridges: HashMap::new(),
            live: HashMap::new(),
            stored: Vec::new(),
            active_apps: Vec::new(),
            event_filters: HashMap::new(),
            next_uniqueid: 0,
            next_chan_idx: 0,
            next_order: 0,
            out: Vec::new(),
        }
    }

    /// What has been emitted since the last call.
    pub(crate) fn drain(&mut self) -> std::vec::Drain<'_, Out> {
        self.out.drain(..)
    }

    /// When the daemon started (AMI FullyBooted uptime, `/asterisk/info`).
    pub(crate) fn startup(&self) -> SystemTime {
        self.startup
    }

    pub(crate) fn entity_id(&self) -> &str {
        &self.cfg.entity_id
    }

    pub(crate) fn default_app(&self) -> &str {
        &self.cfg.default_app
    }

    /// Asterisk restarted: everything is gone without a word (nobody was
    /// connected to hear it), RTP sockets close, uptime starts again. Unique
    /// ids keep counting so that no id of before means something else after.
    pub(crate) fn restart(&mut self, now: Now) {
        for (id, ch) in &self.channels {
            if ch.is_unicast() {
                self.out.push(Out::RtpClose(id.clone()));
            }
        }
        self.channels.clear();
        self.bridges.clear();
        self.live.clear();
        self.active_apps.clear();
        self.event_filters.clear();
        self.startup = now.wall;
    }

    /// A WebSocket registered (or re-registered) the application.
    pub(crate) fn activate_app(&mut self, app: &str) {
        if !self.active_apps.iter().any(|a| a == app) {
            self.active_apps.push(app.to_owned());
        }
    }

    /// The application's WebSocket went away: its channels stay in Stasis,
    /// but new channels cannot enter it.
    pub(crate) fn deactivate_app(&mut self, app: &str) {
        self.active_apps.retain(|a| a != app);
    }

    fn app_active(&self, app: &str) -> bool {
        self.active_apps.iter().any(|a| a == app)
    }

    // ----- ids and emission helpers -------------------------------------

    fn new_uniqueid(&mut self, now: Now, assigned: &str) -> ChannelId {
        if !assigned.is_empty() {
            return ChannelId::new(assigned);
        }
        let id = format!("{}.{}", epoch_secs(now.wall), self.next_uniqueid);
        self.next_uniqueid += 1;
        ChannelId::new(id)
    }

    fn new_chan_idx(&mut self) -> u32 {
        let n = self.next_chan_idx;
        self.next_chan_idx = self.next_chan_idx.wrapping_add(1);
        n
    }

    fn ari(&mut self, mut apps: Vec<String>, body: Obj) {
        if !self.event_filters.is_empty() {
            let kind = body.type_name().unwrap_or_default();
            apps.retain(|app| match self.event_filters.get(app) {
                None => true,
                Some((allowed, disallowed)) => {
                    (allowed.is_empty() || allowed.iter().any(|t| t == kind))
                        && !disallowed.iter().any(|t| t == kind)
                }
            });
        }
        if !apps.is_empty() {
            self.out.push(Out::Ari {
                apps,
                body: body.open(),
            });
        }
    }

    fn ami(&mut self, ev: AmiEvent) {
        self.out.push(Out::Ami(ev.done()));
    }

    fn chan(&self, id: &ChannelId) -> Option<&Channel> {
        self.channels.get(id)
    }

    fn chan_mut(&mut self, id: &ChannelId) -> &mut Channel {
        // Every caller looked the channel up first; a missing one here is a
        // bug in this module.
        self.channels.get_mut(id).expect("channel looked up before")
    }

    fn event(kind: &str, now: Now) -> Obj {
        Obj::new()
            .str("type", kind)
            .str("timestamp", &ast_timestamp(now.wall))
    }

    #[allow(clippy::too_many_arguments)] // the fields of a new channel; a builder would only rename them
    fn new_channel(
        &mut self,
        id: ChannelId,
        name: String,
        state: ChannelState,
        caller: Party,
        dialplan: Dialplan,
        kind: Kind,
        now: Now,
    ) -> ChannelId {
        let order = self.next_order;
        self.next_order += 1;
        let ch = Channel {
            id: id.clone(),
            name,
            state,
            connected: Party::default(),
            caller,
            dialplan,
            before_stasis: None,
            creationtime: ast_timestamp(now.wall),
            order,
            linkedid: id.clone(),
            vars: Vec::new(),
            kind,
            stasis: None,
            created_by: None,
            bridge: None,
            local_peer: None,
        };
        self.channels.insert(id.clone(), ch);
        id
    }

    /// Sets a channel variable: AMI VarSet always, ARI ChannelVarset to the
    /// applications subscribed to the channel.
    fn set_var_emit(&mut self, id: &ChannelId, name: &str, value: &str, now: Now) {
        self.chan_mut(id).set_var(name, value);
        let ch = &self.channels[id];
        let apps = ch.apps();
        let body = Obj::new()
            .str("variable", name)
            .str("value", value)
            .str("type", "ChannelVarset")
            .str("timestamp", &ast_timestamp(now.wall))
            .raw("channel", &ch.json());
        let ami = AmiEvent::new("VarSet", "dialplan,all")
            .chan("", ch)
            .kv("Variable", name)
            .kv("Value", value);
        self.ari(apps, body);
        self.ami(ami);
    }

    fn set_state(&mut self, id: &ChannelId, state: ChannelState, now: Now) {
        let ch = self.chan_mut(id);
        if ch.state == state {
            return;
        }
        ch.state = state;
        let ch = &self.channels[id];
        let body = Self::event("ChannelStateChange", now).raw("channel", &ch.json());
        let apps = ch.apps();
        let ami = AmiEvent::new("Newstate", "call,all").chan("", ch);
        self.ari(apps, body);
        self.ami(ami);
    }

    fn newexten(&mut self, id: &ChannelId, priority: i64, app: &str, data: &str) {
        let ch = self.chan_mut(id);
        ch.dialplan.priority = priority;
        ch.dialplan.app_name = app.to_owned();
        ch.dialplan.app_data = data.to_owned();
        let ch = &self.channels[id];
        let ev = AmiEvent::new("Newexten", "dialplan,all")
            .chan("", ch)
            .kv("Extension", &ch.dialplan.exten)
            .kv("Application", app)
            .kv("AppData", data);
        self.ami(ev);
    }

    /// The channel runs `Stasis(app,args)`: StasisStart, or a failure when
    /// no WebSocket serves the application (the channel then hangs up).
    fn enter_stasis(
        &mut self,
        id: &ChannelId,
        app: &str,
        args: Vec<String>,
        now: Now,
    ) -> Result<(), DoubleError> {
        let mut data = app.to_owned();
        for a in &args {
            data.push(',');
            data.push_str(a);
        }
        {
            let ch = self.chan_mut(id);
            ch.before_stasis = Some(ch.dialplan.clone());
            ch.dialplan.app_name = "Stasis".to_owned();
            ch.dialplan.app_data = data;
        }
        if !self.app_active(app) {
            self.set_var_emit(id, "STASISSTATUS", "FAILED", now);
            self.destroy_with_peer(id, 16, now);
            return Err(DoubleError::AppNotRegistered(app.to_owned()));
        }
        self.set_var_emit(id, "STASISSTATUS", "", now);
        self.chan_mut(id).stasis = Some(Stasis {
            app: app.to_owned(),
            args: args.clone(),
        });
        let ch = &self.channels[id];
        let body = Self::event("StasisStart", now)
            .raw("args", &str_array(&args))
            .raw("channel", &ch.json());
        self.ari(vec![app.to_owned()], body);
        Ok(())
    }

    // ----- driving calls from a test ------------------------------------

    /// A SIP call arrives from the trunk, runs `Set()` for each variable and
    /// enters `Stasis(app,args)` ringing.
    pub(crate) fn inbound_call(
        &mut self,
        call: InboundCall,
        now: Now,
    ) -> Result<ChannelId, DoubleError> {
        let app = call
            .app
            .clone()
            .unwrap_or_else(|| self.cfg.default_app.clone());
        let id = self.new_uniqueid(now, "");
        let idx = self.new_chan_idx();
        let name = format!("PJSIP/{}-{:08x}", call.endpoint, idx);
        let dialplan = Dialplan {
            context: call.context.clone(),
            exten: call.exten.clone(),
            priority: 1,
            app_name: String::new(),
            app_data: String::new(),
        };
        let caller = Party {
            name: call.caller_name.clone(),
            number: call.caller_number.clone(),
        };
        let tone_hz = call.tone_hz.unwrap_or(self.cfg.tone_hz);
        self.new_channel(
            id.clone(),
            name,
            ChannelState::Ring,
            caller,
            dialplan,
            Kind::Caller { tone_hz },
            now,
        );
        let ev = AmiEvent::new("Newchannel", "call,all").chan("", &self.channels[&id]);
        self.ami(ev);
        let mut priority = 1;
        for (k, v) in &call.variables {
            self.newexten(&id, priority, "Set", &format!("{k}={v}"));
            self.set_var_emit(&id, k, v, now);
            priority += 1;
        }
        let mut data = app.clone();
        for a in &call.app_args {
            data.push(',');
            data.push_str(a);
        }
        self.newexten(&id, priority, "Stasis", &data);
        self.enter_stasis(&id, &app, call.app_args.clone(), now)?;
        Ok(id)
    }

    /// The far end hangs up `id` with `cause` (test API).
    pub(crate) fn remote_hangup(
        &mut self,
        id: &ChannelId,
        cause: u16,
        now: Now,
    ) -> Result<(), DoubleError> {
        if !self.channels.contains_key(id) {
            return Err(DoubleError::NoSuchChannel(id.clone()));
        }
        self.hangup(id, HangupHow::Remote(cause), now);
        Ok(())
    }

    /// The far end answers: the channel goes Up (test API, for calls left
    /// ringing).
    pub(crate) fn remote_answer(&mut self, id: &ChannelId, now: Now) -> Result<(), DoubleError> {
        if !self.channels.contains_key(id) {
            return Err(DoubleError::NoSuchChannel(id.clone()));
        }
        self.set_state(id, ChannelState::Up, now);
        Ok(())
    }

    // ----- hangup ---------------------------------------------------------

    fn hangup(&mut self, id: &ChannelId, how: HangupHow, now: Now) {
        let Some(ch) = self.chan(id) else { return };
        let apps = ch.apps();
        let (cause, body, ami) = match how {
            HangupHow::Explicit(cause) => (
                cause,
                Obj::new()
                    .int("cause", 32)
                    .bool("soft", true)
                    .str("type", "ChannelHangupRequest")
                    .str("timestamp", &ast_timestamp(now.wall))
                    .raw("channel", &ch.json()),
                AmiEvent::new("SoftHangupRequest", "call,all")
                    .chan("", ch)
                    .kv("Cause", "32"),
            ),
            HangupHow::Remote(cause) => (
                cause,
                Obj::new()
                    .int("cause", i64::from(cause))
                    .str("type", "ChannelHangupRequest")
                    .str("timestamp", &ast_timestamp(now.wall))
                    .raw("channel", &ch.json()),
                AmiEvent::new("HangupRequest", "call,all")
                    .chan("", ch)
                    .kv("Cause", &cause.to_string()),
            ),
        };
        self.ami(ami);
        self.ari(apps, body);
        if self.channels[id].bridge.is_some() {
            self.leave_bridge(id, now);
        }
        self.leave_stasis(id, now);
        self.destroy_with_peer(id, cause, now);
    }

    /// Destroys the channel; the other half of a Local pair hangs up too.
    fn destroy_with_peer(&mut self, id: &ChannelId, cause: u16, now: Now) {
        let peer = self.chan(id).and_then(|c| c.local_peer.clone());
        self.destroy_channel(id, cause, now);
        if let Some(peer) = peer
            && self.channels.contains_key(&peer)
        {
            self.hangup(&peer, HangupHow::Remote(16), now);
        }
    }

    /// StasisEnd and `STASISSTATUS=SUCCESS`; the channel leaves the app.
    fn leave_stasis(&mut self, id: &ChannelId, now: Now) {
        let Some(stasis) = self.chan_mut(id).stasis.take() else {
            return;
        };
        let ch = &self.channels[id];
        let body = Self::event("StasisEnd", now).raw("channel", &ch.json());
        // StasisEnd goes to the application the channel was in even though
        // the channel has just left it.
        self.ari(vec![stasis.app], body);
        self.set_var_emit(id, "STASISSTATUS", "SUCCESS", now);
    }

    /// AMI Hangup, ARI ChannelDestroyed to the creating application, RTP
    /// socket closed.
    fn destroy_channel(&mut self, id: &ChannelId, cause: u16, now: Now) {
        if let Some(b) = self.chan(id).and_then(|c| c.bridge.clone())
            && self.bridges.contains_key(&b)
        {
            self.leave_bridge(id, now);
        }
        let Some(mut ch) = self.channels.remove(id) else {
            return;
        };
        if let Some(d) = ch.before_stasis.take() {
            ch.dialplan = d;
        }
        let text = cause_text(cause);
        self.ami(
            AmiEvent::new("Hangup", "call,all")
                .chan("", &ch)
                .kv("Cause", &cause.to_string())
                .kv("Cause-txt", text),
        );
        if let Some(app) = &ch.created_by {
            let body = Self::event("ChannelDestroyed", now)
                .int("cause", i64::from(cause))
                .str("cause_txt", text)
                .raw("channel", &ch.json());
            self.ari(vec![app.clone()], body);
        }
        if ch.is_unicast() {
            self.out.push(Out::RtpClose(id.clone()));
        }
    }

    // ----- bridges --------------------------------------------------------

    fn bridge_peer_value(&self, bridge: &Bridge, me: &ChannelId) -> String {
        let mut names: Vec<&str> = Vec::new();
        if let Some((_, recorder)) = &bridge.recording {
            names.push(recorder);
        }
        for c in &bridge.channels {
            if c != me
                && let Some(ch) = self.channels.get(c)
            {
                names.push(&ch.name);
            }
        }
        names.join(",")
    }

    /// Recomputes BRIDGEPEER of every member when two or more parties are
    /// bridged, emitting only changes.
    fn update_bridge_peers(&mut self, bridge_id: &BridgeId, now: Now) {
        let Some(bridge) = self.bridges.get(bridge_id) else {
            return;
        };
        let parties = bridge.channels.len() + usize::from(bridge.recording.is_some());
        if parties < 2 {
            return;
        }
        let updates: Vec<(ChannelId, String)> = bridge
            .channels
            .iter()
            .map(|c| (c.clone(), self.bridge_peer_value(bridge, c)))
            .filter(|(c, v)| {
                self.channels.get(c).and_then(|ch| ch.var("BRIDGEPEER")) != Some(v.as_str())
            })
            .collect();
        for (c, v) in updates {
            self.set_var_emit(&c, "BRIDGEPEER", &v, now);
        }
    }

    /// Two-party bridges exchange connected line: each side sees the other's
    /// caller id.
    fn update_connected_lines(&mut self, bridge_id: &BridgeId, now: Now) {
        let Some(bridge) = self.bridges.get(bridge_id) else {
            return;
        };
        if bridge.channels.len() != 2 {
            return;
        }
        let (a, b) = (bridge.channels[0].clone(), bridge.channels[1].clone());
        for (me, other) in [(a.clone(), b.clone()), (b, a)] {
            let new = self.channels[&other].caller.clone();
            if self.channels[&me].connected == new {
                continue;
            }
            self.chan_mut(&me).connected = new;
            let ch = &self.channels[&me];
            let body = Self::event("ChannelConnectedLine", now).raw("channel", &ch.json());
            let apps = ch.apps();
            let ami = AmiEvent::new("NewConnectedLine", "call,all").chan("", ch);
            self.ari(apps, body);
            self.ami(ami);
        }
    }

    /// Starts or stops RTP on the bridge's externalMedia channels: they carry
    /// the tone of the first caller channel in the bridge.
    fn refresh_rtp(&mut self, bridge_id: &BridgeId) {
        let Some(bridge) = self.bridges.get(bridge_id) else {
            return;
        };
        let source =
            bridge
                .channels
                .iter()
                .find_map(|c| match self.channels.get(c).map(|ch| &ch.kind) {
                    Some(Kind::Caller { tone_hz }) => Some(*tone_hz),
                    _ => None,
                });
        let unicast: Vec<ChannelId> = bridge
            .channels
            .iter()
            .filter(|c| self.channels.get(*c).is_some_and(|ch| ch.is_unicast()))
            .cloned()
            .collect();
        for u in unicast {
            self.out.push(match source {
                Some(hz) => Out::RtpStart(u, hz),
                None => Out::RtpStop(u),
            });
        }
    }

    fn join_bridge(&mut self, id: &ChannelId, bridge_id: &BridgeId, now: Now) {
        if let Some(old) = self.channels[id].bridge.clone() {
            if &old == bridge_id {
                return;
            }
            self.leave_bridge(id, now);
        }
        // Linked ids converge on the oldest call in the bridge.
        let members = self.bridges[bridge_id].channels.clone();
        let oldest = members
            .iter()
            .chain(std::iter::once(id))
            .filter_map(|c| self.channels.get(c))
            .map(|c| {
                self.channels
                    .get(&c.linkedid)
                    .map_or((c.order, c.linkedid.clone()), |l| (l.order, l.id.clone()))
            })
            .min();
        if let Some((_, linked)) = oldest {
            for c in members.iter().chain(std::iter::once(id)) {
                if let Some(ch) = self.channels.get_mut(c) {
                    ch.linkedid = linked.clone();
                }
            }
        }
        let apps = self.channels[id].apps();
        // join_bridge is only called with a bridge found by find_bridge.
        let bridge = self
            .bridges
            .get_mut(bridge_id)
            .expect("bridge looked up before");
        bridge.channels.push(id.clone());
        for a in &apps {
            if !bridge.apps.contains(a) {
                bridge.apps.push(a.clone());
            }
        }
        self.chan_mut(id).bridge = Some(bridge_id.clone());
        let bridge = &self.bridges[bridge_id];
        let ch = &self.channels[id];
        let body = Self::event("ChannelEnteredBridge", now)
            .raw("bridge", &bridge.json())
            .raw("channel", &ch.json());
        let ami = AmiEvent::new("BridgeEnter", "call,all")
            .bridge(bridge)
            .chan("", ch);
        self.ari(apps, body);
        self.ami(ami);
    }

    fn leave_bridge(&mut self, id: &ChannelId, now: Now) {
        let Some(bridge_id) = self.channels.get(id).and_then(|c| c.bridge.clone()) else {
            return;
        };
        if self.channels[id]
            .var("BRIDGEPEER")
            .is_some_and(|v| !v.is_empty())
        {
            self.set_var_emit(id, "BRIDGEPEER", "", now);
        }
        self.chan_mut(id).bridge = None;
        let Some(bridge) = self.bridges.get_mut(&bridge_id) else {
            return;
        };
        bridge.channels.retain(|c| c != id);
        let bridge = &self.bridges[&bridge_id];
        let ch = &self.channels[id];
        let mut apps = ch.apps();
        for a in &bridge.apps {
            if !apps.contains(a) {
                apps.push(a.clone());
            }
        }
        let body = Self::event("ChannelLeftBridge", now)
            .raw("bridge", &bridge.json())
            .raw("channel", &ch.json());
        let ami = AmiEvent::new("BridgeLeave", "call,all")
            .bridge(bridge)
            .chan("", ch);
        self.ari(apps, body);
        self.ami(ami);
        if self.channels[id].is_unicast() {
            self.out.push(Out::RtpStop(id.clone()));
        }
        self.update_bridge_peers(&bridge_id, now);
        self.refresh_rtp(&bridge_id);
    }

    // ----- ARI: channels --------------------------------------------------

    /// `find_control`: the channel must exist and be in Stasis.
    fn control(&self, id: &str) -> Result<&Channel, ApiError> {
        match self.channels.get(&ChannelId::new(id)) {
            None => Err(err(404, "Channel not found")),
            Some(c) if c.stasis.is_none() => Err(err(409, "Channel not in Stasis application")),
            Some(c) => Ok(c),
        }
    }

    /// `channel_state_invalid`: Down and Ringing channels cannot be driven.
    fn control_ready(&self, id: &str) -> Result<&Channel, ApiError> {
        let c = self.control(id)?;
        if matches!(c.state, ChannelState::Down | ChannelState::Ringing) {
            return Err(err(412, "Channel in invalid state"));
        }
        Ok(c)
    }

    pub(crate) fn list_channels(&self) -> Reply {
        let mut chans: Vec<&Channel> = self.channels.values().collect();
        chans.sort_by_key(|c| c.order);
        let items: Vec<String> = chans.iter().map(|c| c.json()).collect();
        Reply::Json(format!("[{}]", items.join(",")))
    }

    pub(crate) fn get_channel(&self, id: &str) -> Result<Reply, ApiError> {
        self.channels
            .get(&ChannelId::new(id))
            .map(|c| Reply::Json(c.json()))
            .ok_or_else(|| err(404, "Channel not found"))
    }

    pub(crate) fn answer(&mut self, id: &str, now: Now) -> Result<Reply, ApiError> {
        let cid = self.control_ready(id)?.id.clone();
        self.set_state(&cid, ChannelState::Up, now);
        Ok(Reply::NoContent)
    }

    /// Operations the double accepts without simulating their effect
    /// (ring, progress, hold, moh, silence, mute).
    pub(crate) fn accept_control_op(&mut self, id: &str) -> Result<Reply, ApiError> {
        self.control_ready(id)?;
        Ok(Reply::NoContent)
    }

    /// `POST /channels/{id}/continue`: the channel leaves Stasis; the
    /// double has no dialplan after it, so it hangs up as the next priority
    /// (`Hangup()`) would.
    pub(crate) fn continue_in_dialplan(&mut self, id: &str, now: Now) -> Result<Reply, ApiError> {
        let cid = self.control_ready(id)?.id.clone();
        if self.channels[&cid].bridge.is_some() {
            self.leave_bridge(&cid, now);
        }
        self.leave_stasis(&cid, now);
        self.destroy_with_peer(&cid, 16, now);
        Ok(Reply::NoContent)
    }

    pub(crate) fn hangup_request(
        &mut self,
        id: &str,
        reason: &str,
        reason_code: &str,
        now: Now,
    ) -> Result<Reply, ApiError> {
        let cid = ChannelId::new(id);
        if !self.channels.contains_key(&cid) {
            return Err(err(404, "Channel not found"));
        }
        let cause = if !reason_code.is_empty() {
            atoi(reason_code) as u16
        } else {
            cause_for_reason(reason)
                .ok_or_else(|| err(400, "Invalid reason for hangup provided"))?
        };
        self.hangup(&cid, HangupHow::Explicit(cause), now);
        Ok(Reply::NoContent)
    }

    /// Hangup by AMI (`Hangup` action); `false` when there is no such
    /// channel.
    pub(crate) fn ami_hangup(&mut self, name_or_id: &str, cause: u16, now: Now) -> bool {
        match self.find_by_name_or_id(name_or_id) {
            Some(id) => {
                self.hangup(&id, HangupHow::Explicit(cause), now);
                true
            }
            None => false,
        }
    }

    fn find_by_name_or_id(&self, name_or_id: &str) -> Option<ChannelId> {
        let id = ChannelId::new(name_or_id);
        if self.channels.contains_key(&id) {
            return Some(id);
        }
        self.channels
            .values()
            .find(|c| c.name.eq_ignore_ascii_case(name_or_id))
            .map(|c| c.id.clone())
    }

    /// A channel variable, or a few dialplan functions and built-ins.
    fn read_var(ch: &Channel, name: &str) -> Option<String> {
        let builtin = match name {
            "CALLERID(num)" => Some(ch.caller.number.clone()),
            "CALLERID(name)" => Some(ch.caller.name.clone()),
            "CALLERID(all)" => Some(format!("\"{}\" <{}>", ch.caller.name, ch.caller.number)),
            "CHANNEL" | "CHANNEL(name)" => Some(ch.name.clone()),
            "UNIQUEID" | "CHANNEL(uniqueid)" => Some(ch.id.as_str().to_owned()),
            "CHANNEL(linkedid)" => Some(ch.linkedid.as_str().to_owned()),
            "CHANNEL(state)" => Some(ch.state.ari_name().to_owned()),
            "EXTEN" => Some(ch.dialplan.exten.clone()),
            "CONTEXT" => Some(ch.dialplan.context.clone()),
            "PRIORITY" => Some(ch.dialplan.priority.to_string()),
            _ => None,
        };
        builtin.or_else(|| ch.var(name).map(str::to_owned))
    }

    pub(crate) fn get_var(&self, id: &str, variable: &str) -> Result<Reply, ApiError> {
        if variable.is_empty() {
            return Err(err(400, "Variable name is required"));
        }
        let ch = self
            .channels
            .get(&ChannelId::new(id))
            .ok_or_else(|| err(404, "Provided channel was not found"))?;
        if variable.ends_with(')') && Self::read_var(ch, variable).is_none() {
            return Err(err(500, "Unable to read provided function"));
        }
        let value = Self::read_var(ch, variable)
            .ok_or_else(|| err(404, "Provided variable was not found"))?;
        Ok(Reply::Json(Obj::new().str("value", &value).finish()))
    }

    /// AMI Getvar: `None` when the channel does not exist.
    pub(crate) fn ami_getvar(&self, name_or_id: &str, variable: &str) -> Option<String> {
        let id = self.find_by_name_or_id(name_or_id)?;
        Some(Self::read_var(&self.channels[&id], variable).unwrap_or_default())
    }

    pub(crate) fn set_var(
        &mut self,
        id: &str,
        variable: &str,
        value: &str,
        now: Now,
    ) -> Result<Reply, ApiError> {
        if variable.is_empty() {
            return Err(err(400, "Variable name is required"));
        }
        let cid = self.control(id)?.id.clone();
        self.set_var_emit(&cid, variable, value, now);
        Ok(Reply::NoContent)
    }

    /// AMI Setvar on a channel; `false` when there is no such channel.
    pub(crate) fn ami_setvar(
        &mut self,
        name_or_id: &str,
        variable: &str,
        value: &str,
        now: Now,
    ) -> bool {
        match self.find_by_name_or_id(name_or_id) {
            Some(id) => {
                self.set_var_emit(&id, variable, value, now);
                true
            }
            None => false,
        }
    }

    /// `POST /channels` (and `/channels/{id}`): dial an endpoint; on
    /// answer (at once) it enters the application Up.
    pub(crate) fn originate(&mut self, o: Originate, now: Now) -> Result<Reply, ApiError> {
        if o.channel_id.len() > 128 || o.other_channel_id.len() > 128 {
            return Err(err(400, "Uniqueid length exceeds maximum of 128"));
        }
        if o.endpoint.is_empty() {
            return Err(err(400, "Endpoint must be specified"));
        }
        if !o.originator.is_empty() && !o.formats.is_empty() {
            return Err(err(400, "Originator and formats can't both be specified"));
        }
        let (tech, resource) = o
            .endpoint
            .split_once('/')
            .unwrap_or((o.endpoint.as_str(), ""));
        if tech.is_empty() || resource.is_empty() {
            return Err(err(400, "Invalid endpoint specified"));
        }
        if o.app.is_empty() && o.extension.is_empty() {
            return Err(err(400, "Application or extension must be specified"));
        }
        if !o.originator.is_empty() && self.find_by_name_or_id(&o.originator).is_none() {
            return Err(err(400, "Provided originator channel was not found"));
        }
        for f in o
            .formats
            .split(',')
            .map(str::trim)
            .filter(|f| !f.is_empty())
        {
            if !CHANNEL_FORMATS.contains(&f) {
                return Err(err(400, format!("Provided format ({f}) was not found")));
            }
        }
        for assigned in [&o.channel_id, &o.other_channel_id] {
            if !assigned.is_empty()
                && self
                    .channels
                    .contains_key(&ChannelId::new(assigned.as_str()))
            {
                return Err(err(409, "Channel with given unique ID already exists"));
            }
        }
        let is_local = tech.eq_ignore_ascii_case("Local");
        let (context, exten) = if is_local {
            let (e, c) = resource.split_once('@').unwrap_or((resource, "default"));
            (c.split('/').next().unwrap_or(c).to_owned(), e.to_owned())
        } else {
            ("default".to_owned(), "s".to_owned())
        };
        let caller = parse_caller_id(&o.caller_id);
        let idx = self.new_chan_idx();
        let id = self.new_uniqueid(now, &o.channel_id);
        let name = if is_local {
            format!("Local/{resource}-{idx:08x};1")
        } else {
            format!("{tech}/{resource}-{idx:08x}")
        };
        let dialplan = Dialplan {
            context: context.clone(),
            exten: exten.clone(),
            priority: 1,
            app_name: "AppDial2".to_owned(),
            app_data: "(Outgoing Line)".to_owned(),
        };
        let tone_hz = self.cfg.tone_hz;
        self.new_channel(
            id.clone(),
            name,
            ChannelState::Down,
            caller.clone(),
            dialplan.clone(),
            Kind::Caller { tone_hz },
            now,
        );
        self.chan_mut(&id).connected = caller.clone();
        for (k, v) in &o.variables {
            self.chan_mut(&id).set_var(k, v);
        }
        let peer = if is_local {
            let pid = self.new_uniqueid(now, &o.other_channel_id);
            let pname = format!("Local/{resource}-{idx:08x};2");
            let pdial = Dialplan {
                app_name: String::new(),
                app_data: String::new(),
                ..dialplan.clone()
            };
            self.new_channel(
                pid.clone(),
                pname,
                ChannelState::Ring,
                caller.clone(),
                pdial,
                Kind::Caller { tone_hz },
                now,
            );
            self.chan_mut(&pid).connected = caller.clone();
            self.chan_mut(&pid).local_peer = Some(id.clone());
            self.chan_mut(&id).local_peer = Some(pid.clone());
            Some(pid)
        } else {
            None
        };
        if !o.app.is_empty() {
            self.chan_mut(&id).created_by = Some(o.app.clone());
            if let Some(p) = &peer {
                self.chan_mut(p).created_by = Some(o.app.clone());
            }
        }
        let reply = Reply::Json(self.channels[&id].json());

        // The dial runs: AMI sees the channels appear, the endpoint answers.
        let ev = AmiEvent::new("Newchannel", "call,all").chan("", &self.channels[&id]);
        self.ami(ev);
        for (k, v) in &o.variables {
            let ev = AmiEvent::new("VarSet", "dialplan,all")
                .chan("", &self.channels[&id])
                .kv("Variable", k)
                .kv("Value", v);
            self.ami(ev);
        }
        if let Some(p) = &peer {
            let ev = AmiEvent::new("Newchannel", "call,all").chan("", &self.channels[p]);
            self.ami(ev);
            self.set_state(p, ChannelState::Up, now);
        }
        self.dial_answered(&id, resource, now);
        if !o.app.is_empty() {
            let args: Vec<String> = if o.app_args.is_empty() {
                Vec::new()
            } else {
                o.app_args.split(',').map(str::to_owned).collect()
            };
            // A failure to enter the app hangs the channel up, as Asterisk
            // does; the REST answer was already decided.
            let _ = self.enter_stasis(&id, &o.app, args, now);
        } else {
            let ch = self.chan_mut(&id);
            ch.dialplan.context = if o.context.is_empty() {
                "default".to_owned()
            } else {
                o.context.clone()
            };
            ch.dialplan.exten = o.extension.clone();
            ch.dialplan.priority = if o.priority > 0 { o.priority } else { 1 };
        }
        Ok(reply)
    }

    /// Dial / answer of an outgoing channel: ARI Dial, ChannelStateChange,
    /// Dial ANSWER; AMI DialBegin, Newstate, DialEnd.
    fn dial_answered(&mut self, id: &ChannelId, dialstring: &str, now: Now) {
        let dial = |pbx: &Pbx, status: &str| {
            Self::event("Dial", now)
                .str("dialstatus", status)
                .str("forward", "")
                .str("dialstring", dialstring)
                .raw("peer", &pbx.channels[id].json())
        };
        let apps = self.channels[id].apps();
        let body = dial(self, "");
        self.ari(apps.clone(), body);
        let ev = AmiEvent::new("DialBegin", "call,all")
            .chan("Dest", &self.channels[id])
            .kv("DialString", dialstring);
        self.ami(ev);
        self.set_state(id, ChannelState::Up, now);
        let body = dial(self, "ANSWER");
        self.ari(apps, body);
        let ev = AmiEvent::new("DialEnd", "call,all")
            .chan("Dest", &self.channels[id])
            .kv("DialStatus", "ANSWER");
        self.ami(ev);
    }

    /// AMI `Originate`. `Application: Stasis` sends the answered channel to
    /// `Data` (`app,args`); a `Local/exten@context` channel arrives in the
    /// default application ringing, like an inbound call, with args
    /// `[exten]` (`["inbound"]` for `s`), as the recorded dialplan does.
    pub(crate) fn ami_originate(
        &mut self,
        channel: &str,
        application: &str,
        data: &str,
        caller_id: &str,
        variables: &[(String, String)],
        now: Now,
    ) -> Result<ChannelId, DoubleError> {
        let (tech, resource) = channel.split_once('/').unwrap_or((channel, ""));
        if tech.is_empty() || resource.is_empty() {
            return Err(DoubleError::Invalid(format!("invalid channel '{channel}'")));
        }
        let caller = parse_caller_id(caller_id);
        let tone_hz = self.cfg.tone_hz;
        let idx = self.new_chan_idx();
        let id = self.new_uniqueid(now, "");
        if application.eq_ignore_ascii_case("Stasis") {
            let mut parts = data.split(',');
            let app = parts.next().unwrap_or_default().to_owned();
            let args: Vec<String> = parts.map(str::to_owned).collect();
            let dialplan = Dialplan {
                context: "default".to_owned(),
                exten: "s".to_owned(),
                priority: 1,
                app_name: "AppDial2".to_owned(),
                app_data: "(Outgoing Line)".to_owned(),
            };
            let name = format!("{tech}/{resource}-{idx:08x}");
            self.new_channel(
                id.clone(),
                name,
                ChannelState::Down,
                caller.clone(),
                dialplan,
                Kind::Caller { tone_hz },
                now,
            );
            self.chan_mut(&id).connected = caller;
            let ev = AmiEvent::new("Newchannel", "call,all").chan("", &self.channels[&id]);
            self.ami(ev);
            for (k, v) in variables {
                self.set_var_emit(&id, k, v, now);
            }
            self.dial_answered(&id, resource, now);
            self.enter_stasis(&id, &app, args, now)?;
        } else {
            let (exten, context) = resource.split_once('@').unwrap_or((resource, "default"));
            let dialplan = Dialplan {
                context: context.to_owned(),
                exten: exten.to_owned(),
                priority: 1,
                app_name: String::new(),
                app_data: String::new(),
            };
            let name = format!("{tech}/{resource}-{idx:08x};2");
            self.new_channel(
                id.clone(),
                name,
                ChannelState::Ring,
                caller.clone(),
                dialplan,
                Kind::Caller { tone_hz },
                now,
            );
            self.chan_mut(&id).connected = caller;
            let ev = AmiEvent::new("Newchannel", "call,all").chan("", &self.channels[&id]);
            self.ami(ev);
            for (k, v) in variables {
                self.set_var_emit(&id, k, v, now);
            }
            let app = self.cfg.default_app.clone();
            let args = vec![if exten == "s" {
                "inbound".to_owned()
            } else {
                exten.to_owned()
            }];
            self.newexten(&id, 1, "Stasis", &format!("{app},{}", args[0]));
            self.enter_stasis(&id, &app, args, now)?;
        }
        Ok(id)
    }

    /// The AMI `OriginateResponse` event of a successful originate.
    pub(crate) fn ami_originate_response(
        &mut self,
        action_id: &str,
        id: &ChannelId,
        context: &str,
        exten: &str,
    ) {
        let Some(ch) = self.channels.get(id) else {
            return;
        };
        let mut ev = AmiEvent::new("OriginateResponse", "call,all");
        if !action_id.is_empty() {
            ev = ev.kv("ActionID", action_id);
        }
        let ev = ev
            .kv("Response", "Success")
            .kv("Channel", &ch.name)
            .kv("Context", context)
            .kv("Exten", exten)
            .kv("Reason", "4")
            .kv("Uniqueid", id.as_str())
            .kv("CallerIDNum", or_unknown(&ch.caller.number))
            .kv("CallerIDName", or_unknown(&ch.caller.name));
        self.ami(ev);
    }

    /// `POST /channels/externalMedia` (RTP over UDP only). `bind` opens the
    /// UnicastRTP socket and returns its local address.
    pub(crate) fn external_media(
        &mut self,
        p: ExternalMedia,
        bind: &mut dyn FnMut(&ChannelId, MediaFormat, SocketAddr) -> std::io::Result<SocketAddr>,
        now: Now,
    ) -> Result<Reply, ApiError> {
        if p.app.is_empty() {
            return Err(err(400, "app cannot be empty"));
        }
        if p.external_host.is_empty() {
            return Err(err(400, "external_host cannot be empty"));
        }
        let remote = parse_host_port(&p.external_host)
            .ok_or_else(|| err(400, "external_host must be <host>:<port>"))?;
        if p.format.is_empty() {
            return Err(err(400, "format cannot be empty"));
        }
        let allowed = |v: &str, values: &[&str]| v.is_empty() || values.contains(&v);
        if !allowed(&p.encapsulation, &["rtp", "audiosocket", "none"])
            || !allowed(&p.transport, &["udp", "tcp", "websocket"])
            || !allowed(&p.connection_type, &["client", "server"])
            || !allowed(&p.direction, &["both"])
        {
            return Err(err(400, "Invalid parameters"));
        }
        let encapsulation = if p.encapsulation.is_empty() {
            "rtp"
        } else {
            p.encapsulation.as_str()
        };
        let transport = if p.transport.is_empty() {
            "udp"
        } else {
            p.transport.as_str()
        };
        if !(encapsulation.eq_ignore_ascii_case("rtp") && transport.eq_ignore_ascii_case("udp")) {
            return Err(err(
                501,
                "The encapsulation and/or transport is not supported",
            ));
        }
        let format = match MediaFormat::from_name(&p.format) {
            Some(f) => f,
            None => {
                return Err(err(
                    400,
                    format!("Provided format ({}) was not found", p.format),
                ));
            }
        };
        if !p.channel_id.is_empty()
            && self
                .channels
                .contains_key(&ChannelId::new(p.channel_id.as_str()))
        {
            return Err(err(409, "Channel with given unique ID already exists"));
        }
        let id = self.new_uniqueid(now, &p.channel_id);
        let local = bind(&id, format, remote).map_err(|_| err(500, "Allocation failed"))?;
        let name = format!(
            "UnicastRTP/{}-0x7f{:08x}{:x}0",
            p.external_host,
            rand::random::<u32>(),
            rand::random::<u8>() >> 4
        );
        let dialplan = Dialplan {
            context: "default".to_owned(),
            exten: "s".to_owned(),
            priority: 1,
            app_name: "AppDial2".to_owned(),
            app_data: "(Outgoing Line)".to_owned(),
        };
        let kind = Kind::Unicast {
            external_host: p.external_host.clone(),
            remote,
            format,
            local,
        };
        self.new_channel(
            id.clone(),
            name,
            ChannelState::Down,
            Party::default(),
            dialplan,
            kind,
            now,
        );
        let addr = local.ip().to_string();
        let port = local.port().to_string();
        {
            let ch = self.chan_mut(&id);
            ch.created_by = Some(p.app.clone());
            ch.set_var("UNICASTRTP_LOCAL_ADDRESS", &addr);
            ch.set_var("UNICASTRTP_LOCAL_PORT", &port);
            for (k, v) in &p.variables {
                ch.set_var(k, v);
            }
        }
        // Asterisk lists channel variables newest first.
        let vars = self.channels[&id]
            .vars
            .iter()
            .rev()
            .fold(Obj::new(), |o, (k, v)| o.str(k, v))
            .finish();
        let reply = Reply::Json(self.channels[&id].obj().raw("channelvars", &vars).finish());

        let ch = &self.channels[&id];
        let mut evs = vec![AmiEvent::new("Newchannel", "call,all").chan("", ch)];
        for (k, v) in &ch.vars {
            evs.push(
                AmiEvent::new("VarSet", "dialplan,all")
                    .chan("", ch)
                    .kv("Variable", k)
                    .kv("Value", v),
            );
        }
        evs.push(
            AmiEvent::new("Newexten", "dialplan,all")
                .chan("", ch)
                .kv("Extension", "s")
                .kv("Application", "AppDial2")
                .kv("AppData", "(Outgoing Line)"),
        );
        for ev in evs {
            self.ami(ev);
        }
        self.dial_answered(
            &id,
            &format!("{}/c({})", p.external_host, format.name()),
            now,
        );
        let args: Vec<String> = if p.data.is_empty() {
            Vec::new()
        } else {
            p.data.split(',').map(str::to_owned).collect()
        };
        let _ = self.enter_stasis(&id, &p.app, args, now);
        Ok(reply)
    }

    // ----- ARI: bridges ---------------------------------------------------

    fn find_bridge(&self, id: &str) -> Result<&Bridge, ApiError> {
        self.bridges
            .get(&BridgeId::new(id))
            .ok_or_else(|| err(404, "Bridge not found"))
    }

    pub(crate) fn list_bridges(&self) -> Reply {
        let mut bridges: Vec<&Bridge> = self.bridges.values().collect();
        bridges.sort_by(|a, b| {
            a.creationtime
                .cmp(&b.creationtime)
                .then(a.id.as_str().cmp(b.id.as_str()))
        });
        let items: Vec<String> = bridges.iter().map(|b| b.json()).collect();
        Reply::Json(format!("[{}]", items.join(",")))
    }

    pub(crate) fn get_bridge(&self, id: &str) -> Result<Reply, ApiError> {
        Ok(Reply::Json(self.find_bridge(id)?.json()))
    }

    pub(crate) fn create_bridge(
        &mut self,
        kind: &str,
        bridge_id: &str,
        name: &str,
        now: Now,
    ) -> Result<Reply, ApiError> {
        if !bridge_id.is_empty() && self.bridges.contains_key(&BridgeId::new(bridge_id)) {
            return Err(err(
                409,
                format!("Bridge with id '{bridge_id}' already exists"),
            ));
        }
        const KNOWN: &[&str] = &[
            "mixing",
            "holding",
            "dtmf_events",
            "proxy_media",
            "video_sfu",
            "video_single",
            "sdp_label",
        ];
        let flags: Vec<&str> = kind
            .split(',')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .collect();
        if flags.iter().any(|f| !KNOWN.contains(f)) {
            return Err(err(500, "Unable to create bridge"));
        }
        let holding = flags.contains(&"holding");
        let id = if bridge_id.is_empty() {
            BridgeId::new(uuid4())
        } else {
            BridgeId::new(bridge_id)
        };
        let bridge = Bridge {
            id: id.clone(),
            name: name.to_owned(),
            bridge_type: if holding { "holding" } else { "mixing" }.to_owned(),
            technology: if holding {
                "holding_bridge"
            } else {
                "simple_bridge"
            },
            channels: Vec::new(),
            creationtime: ast_timestamp(now.wall),
            apps: Vec::new(),
            recording: None,
        };
        let reply = Reply::Json(bridge.json());
        self.ami(AmiEvent::new("BridgeCreate", "call,all").bridge(&bridge));
        self.bridges.insert(id, bridge);
        Ok(reply)
    }

    /// Resolves `channel=` of addChannel/removeChannel: 400 unknown, 422 not
    /// in Stasis.
    fn channel_list(&self, channels: &[String]) -> Result<Vec<ChannelId>, ApiError> {
        let mut out = Vec::new();
        for c in channels.iter().filter(|c| !c.is_empty()) {
            let id = ChannelId::new(c.as_str());
            match self.channels.get(&id) {
                None => return Err(err(400, "Channel not found")),
                Some(ch) if ch.stasis.is_none() => {
                    return Err(err(422, "Channel not in Stasis application"));
                }
                Some(_) => out.push(id),
            }
        }
        if out.is_empty() {
            return Err(err(400, "Missing parameter channel"));
        }
        Ok(out)
    }

    pub(crate) fn add_channels(
        &mut self,
        bridge_id: &str,
        channels: &[String],
        now: Now,
    ) -> Result<Reply, ApiError> {
        let bid = self.find_bridge(bridge_id)?.id.clone();
        let ids = self.channel_list(channels)?;
        for id in &ids {
            self.join_bridge(id, &bid, now);
        }
        self.update_bridge_peers(&bid, now);
        self.update_connected_lines(&bid, now);
        self.refresh_rtp(&bid);
        Ok(Reply::NoContent)
    }

    pub(crate) fn remove_channels(
        &mut self,
        bridge_id: &str,
        channels: &[String],
        now: Now,
    ) -> Result<Reply, ApiError> {
        let bid = self.find_bridge(bridge_id)?.id.clone();
        let ids = self.channel_list(channels)?;
        if ids
            .iter()
            .any(|id| self.channels[id].bridge.as_ref() != Some(&bid))
        {
            return Err(err(422, "Channel not in this bridge"));
        }
        for id in &ids {
            self.leave_bridge(id, now);
        }
        Ok(Reply::NoContent)
    }

    pub(crate) fn destroy_bridge(&mut self, bridge_id: &str, now: Now) -> Result<Reply, ApiError> {
        let bid = self.find_bridge(bridge_id)?.id.clone();
        for id in self.bridges[&bid].channels.clone() {
            self.leave_bridge(&id, now);
        }
        if let Some((name, _)) = self.bridges[&bid].recording.clone() {
            self.finish_recording(&name, "done", now);
        }
        let Some(bridge) = self.bridges.remove(&bid) else {
            return Ok(Reply::NoContent);
        };
        let body = Self::event("BridgeDestroyed", now).raw("bridge", &bridge.json());
        self.ari(bridge.apps.clone(), body);
        self.ami(AmiEvent::new("BridgeDestroy", "call,all").bridge(&bridge));
        Ok(Reply::NoContent)
    }

    // ----- ARI: recordings ------------------------------------------------

    pub(crate) fn record_bridge(
        &mut self,
        bridge_id: &str,
        p: RecordParams,
        now: Now,
    ) -> Result<Reply, ApiError> {
        let bid = self.find_bridge(bridge_id)?.id.clone();
        if p.max_duration_seconds < 0 {
            return Err(err(400, "max_duration_seconds cannot be negative"));
        }
        if p.max_silence_seconds < 0 {
            return Err(err(400, "max_silence_seconds cannot be negative"));
        }
        if !["", "none", "any", "*", "#"].contains(&p.terminate_on.as_str()) {
            return Err(err(400, "terminateOn invalid"));
        }
        if !["", "fail", "overwrite", "append"].contains(&p.if_exists.as_str()) {
            return Err(err(400, "ifExists invalid"));
        }
        if !RECORDING_FORMATS.contains(&p.format.as_str()) {
            return Err(err(422, "specified format is unknown on this system"));
        }
        if p.name.is_empty() || p.name.contains("..") || p.name.starts_with('/') {
            return Err(err(400, "Recording name invalid"));
        }
        let exists_stored = self.stored.iter().any(|(n, _)| n == &p.name);
        let in_progress = self.live.get(&p.name).is_some_and(|r| r.state != "done");
        if in_progress || (exists_stored && matches!(p.if_exists.as_str(), "" | "fail")) {
            return Err(err(
                409,
                format!(
                    "Recording '{}' already exists and can not be overwritten",
                    p.name
                ),
            ));
        }
        let idx = self.new_chan_idx();
        let recorder = format!("Recorder/ARI-{idx:08x};2");
        // bid comes from find_bridge above, under the same &mut self.
        let bridge = self.bridges.get_mut(&bid).expect("bridge looked up before");
        bridge.recording = Some((p.name.clone(), recorder));
        let apps = bridge.apps.clone();
        let rec = LiveRecording {
            name: p.name.clone(),
            format: p.format.clone(),
            target_uri: format!("bridge:{}", bid.as_str()),
            bridge: bid.clone(),
            state: "queued",
            started: now.mono,
            deadline: (p.max_duration_seconds > 0)
                .then(|| now.mono + Duration::from_secs(p.max_duration_seconds.unsigned_abs())),
            apps: apps.clone(),
        };
        let json = rec.obj().finish();
        self.update_bridge_peers(&bid, now);
        let mut rec = rec;
        rec.state = "recording";
        let body = Self::event("RecordingStarted", now).raw("recording", &rec.obj().finish());
        self.ari(apps, body);
        self.live.insert(p.name.clone(), rec);
        Ok(Reply::Created {
            location: format!("/recordings/live/{}", p.name),
            json,
        })
    }

    fn finish_recording(&mut self, name: &str, state: &'static str, now: Now) {
        let Some(rec) = self.live.get_mut(name) else {
            return;
        };
        if rec.state == "done" || rec.state == "canceled" {
            return;
        }
        rec.state = state;
        rec.deadline = None;
        let duration = now.mono.saturating_duration_since(rec.started).as_secs();
        let rec = rec.clone();
        let body = Self::event("RecordingFinished", now).raw(
            "recording",
            &rec.obj().int("duration", duration as i64).finish(),
        );
        self.ari(rec.apps.clone(), body);
        if state == "done" {
            self.stored.retain(|(n, _)| n != &rec.name);
            self.stored.push((rec.name.clone(), rec.format.clone()));
        }
        if let Some(bridge) = self.bridges.get_mut(&rec.bridge) {
            bridge.recording = None;
            let bid = rec.bridge.clone();
            self.update_bridge_peers(&bid, now);
        }
    }

    pub(crate) fn get_live_recording(&self, name: &str) -> Result<Reply, ApiError> {
        let rec = self
            .live
            .get(name)
            .ok_or_else(|| err(404, "Recording not found"))?;
        Ok(Reply::Json(rec.obj().finish()))
    }

    pub(crate) fn stop_recording(&mut self, name: &str, now: Now) -> Result<Reply, ApiError> {
        if !self.live.contains_key(name) {
            return Err(err(404, "Recording not found"));
        }
        self.finish_recording(name, "done", now);
        Ok(Reply::NoContent)
    }

    pub(crate) fn cancel_recording(&mut self, name: &str, now: Now) -> Result<Reply, ApiError> {
        if !self.live.contains_key(name) {
            return Err(err(404, "Recording not found"));
        }
        self.finish_recording(name, "canceled", now);
        self.live.remove(name);
        Ok(Reply::NoContent)
    }

    pub(crate) fn list_stored(&self) -> Reply {
        let items: Vec<String> = self
            .stored
            .iter()
            .map(|(n, f)| Obj::new().str("name", n).str("format", f).finish())
            .collect();
        Reply::Json(format!("[{}]", items.join(",")))
    }

    pub(crate) fn get_stored(&self, name: &str) -> Result<Reply, ApiError> {
        let (n, f) = self
            .stored
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| err(404, "Recording not found"))?;
        Ok(Reply::Json(
            Obj::new().str("name", n).str("format", f).finish(),
        ))
    }

    pub(crate) fn delete_stored(&mut self, name: &str) -> Result<Reply, ApiError> {
        let before = self.stored.len();
        self.stored.retain(|(n, _)| n != name);
        if self.stored.len() == before {
            return Err(err(404, "Recording not found"));
        }
        Ok(Reply::NoContent)
    }

    /// The next moment [`Pbx::handle_timeout`] has something to do.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.live.values().filter_map(|r| r.deadline).min()
    }

    /// Ends recordings whose `maxDurationSeconds` is up.
    pub(crate) fn handle_timeout(&mut self, now: Now) {
        let due: Vec<String> = self
            .live
            .values()
            .filter(|r| r.deadline.is_some_and(|d| d <= now.mono))
            .map(|r| r.name.clone())
            .collect();
        for name in due {
            self.finish_recording(&name, "done", now);
        }
    }

    // ----- ARI: asterisk, applications ---------------------------------

    pub(crate) fn asterisk_info(&self, only: &[String]) -> Reply {
        let want = |s: &str| only.is_empty() || only.iter().any(|o| o == s);
        let mut o = Obj::new();
        if want("build") {
            o = o.raw(
                "build",
                &Obj::new()
                    .str("os", "Linux")
                    .str("kernel", "6.18.44-fc-v657")
                    .str("machine", "x86_64")
                    .str("options", "OPTIONAL_API")
                    .str("date", &ast_build_date(self.startup))
                    .str("user", "root")
                    .finish(),
            );
        }
        if want("system") {
            o = o.raw(
                "system",
                &Obj::new()
                    .str("version", "22.10.1")
                    .str("entity_id", &self.cfg.entity_id)
                    .finish(),
            );
        }
        if want("config") {
            o = o.raw(
                "config",
                &Obj::new()
                    .str("name", &self.cfg.system_name)
                    .str("default_language", "en")
                    .raw(
                        "setid",
                        &Obj::new().str("user", "").str("group", "").finish(),
                    )
                    .finish(),
            );
        }
        if want("status") {
            let t = ast_timestamp(self.startup);
            o = o.raw(
                "status",
                &Obj::new()
                    .str("startup_time", &t)
                    .str("last_reload_time", &t)
                    .finish(),
            );
        }
        Reply::Json(o.finish())
    }

    pub(crate) fn ping(&self, now: Now) -> Reply {
        Reply::Json(
            Obj::new()
                .str("asterisk_id", &self.cfg.entity_id)
                .str("ping", "pong")
                .str("timestamp", &ast_timestamp(now.wall))
                .finish(),
        )
    }

    fn application_json(&self, app: &str) -> String {
        let (allowed, disallowed) = self
            .event_filters
            .get(app)
            .map_or((&[][..], &[][..]), |(a, d)| (a.as_slice(), d.as_slice()));
        let mut chans: Vec<&Channel> = self
            .channels
            .values()
            .filter(|c| {
                c.stasis.as_ref().is_some_and(|s| s.app == app)
                    || c.created_by.as_deref() == Some(app)
            })
            .collect();
        chans.sort_by_key(|c| c.order);
        let chan_ids: Vec<&str> = chans.iter().map(|c| c.id.as_str()).collect();
        let mut bridge_ids: Vec<&str> = self
            .bridges
            .values()
            .filter(|b| b.apps.iter().any(|a| a == app))
            .map(|b| b.id.as_str())
            .collect();
        bridge_ids.sort_unstable();
        Obj::new()
            .str("name", app)
            .raw("channel_ids", &str_array(&chan_ids))
            .raw("bridge_ids", &str_array(&bridge_ids))
            .raw("endpoint_ids", "[]")
            .raw("device_names", "[]")
            .raw("events_allowed", &type_list(allowed))
            .raw("events_disallowed", &type_list(disallowed))
            .finish()
    }

    pub(crate) fn list_applications(&self) -> Reply {
        let items: Vec<String> = self
            .active_apps
            .iter()
            .map(|a| self.application_json(a))
            .collect();
        Reply::Json(format!("[{}]", items.join(",")))
    }

    /// `PUT /applications/{app}/eventFilter`: a list given replaces that
    /// list; one not given stays (Asterisk's rules).
    pub(crate) fn set_event_filter(
        &mut self,
        app: &str,
        allowed: Option<Vec<String>>,
        disallowed: Option<Vec<String>>,
    ) -> Result<Reply, ApiError> {
        if !self.app_active(app) {
            return Err(err(404, "Application does not exist."));
        }
        let entry = self.event_filters.entry(app.to_owned()).or_default();
        if allowed.is_none() && disallowed.is_none() {
            *entry = (Vec::new(), Vec::new());
        }
        if let Some(a) = allowed {
            entry.0 = a;
        }
        if let Some(d) = disallowed {
            entry.1 = d;
        }
        Ok(Reply::Json(self.application_json(app)))
    }

    pub(crate) fn get_application(&self, app: &str) -> Result<Reply, ApiError> {
        if !self.app_active(app) {
            return Err(err(404, "Application does not exist."));
        }
        Ok(Reply::Json(self.application_json(app)))
    }

    // ----- snapshots and AMI listings --------------------------------

    pub(crate) fn channel_snapshots(&self) -> Vec<ChannelSnapshot> {
        let mut chans: Vec<&Channel> = self.channels.values().collect();
        chans.sort_by_key(|c| c.order);
        chans.into_iter().map(snapshot_of).collect()
    }

    pub(crate) fn channel_snapshot(&self, id: &ChannelId) -> Option<ChannelSnapshot> {
        self.channels.get(id).map(snapshot_of)
    }

    pub(crate) fn bridge_snapshots(&self) -> Vec<BridgeSnapshot> {
        let mut bridges: Vec<BridgeSnapshot> = self
            .bridges
            .values()
            .map(|b| BridgeSnapshot {
                id: b.id.clone(),
                name: b.name.clone(),
                bridge_type: b.bridge_type.clone(),
                channels: b.channels.clone(),
                recording: b.recording.as_ref().map(|(n, _)| n.clone()),
            })
            .collect();
        bridges.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        bridges
    }

    /// AMI CoreShowChannel events (one per channel) for `action_id`.
    pub(crate) fn core_show_channels(&self, action_id: &str, now: Now) -> Vec<String> {
        let mut chans: Vec<&Channel> = self.channels.values().collect();
        chans.sort_by_key(|c| c.order);
        chans
            .into_iter()
            .map(|c| {
                let mut ev = AmiEvent::new_no_privilege("CoreShowChannel");
                if !action_id.is_empty() {
                    ev = ev.kv("ActionID", action_id);
                }
                let secs = now
                    .wall
                    .duration_since(self.startup)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                ev.chan("", c)
                    .kv("BridgeId", c.bridge.as_ref().map_or("", |b| b.as_str()))
                    .kv("Application", &c.dialplan.app_name)
                    .kv("ApplicationData", &c.dialplan.app_data)
                    .kv(
                        "Duration",
                        &format!(
                            "{:02}:{:02}:{:02}",
                            secs / 3600,
                            (secs / 60) % 60,
                            secs % 60
                        ),
                    )
                    .kv("BridgedChannel", "")
                    .kv("BridgedUniqueID", "")
                    .done()
            })
            .collect()
    }

    /// `core show channels` output lines.
    pub(crate) fn cli_show_channels(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "{:<20} {:<20} {:<7} {}",
            "Channel", "Location", "State", "Application(Data)"
        )];
        let mut chans: Vec<&Channel> = self.channels.values().collect();
        chans.sort_by_key(|c| c.order);
        for c in &chans {
            lines.push(format!(
                "{:<20} {:<20} {:<7} {}({})",
                c.name,
                format!(
                    "{}@{}:{}",
                    c.dialplan.exten, c.dialplan.context, c.dialplan.priority
                ),
                c.state.ari_name(),
                c.dialplan.app_name,
                c.dialplan.app_data
            ));
        }
        let n = chans.len();
        lines.push(format!(
            "{n} active channel{}",
            if n == 1 { "" } else { "s" }
        ));
        lines.push(format!(
            "{} active call{}",
            self.bridges.len(),
            if self.bridges.len() == 1 { "" } else { "s" }
        ));
        lines
    }
}

fn snapshot_of(c: &Channel) -> ChannelSnapshot {
    ChannelSnapshot {
        id: c.id.clone(),
        name: c.name.clone(),
        state: c.state,
        caller_number: c.caller.number.clone(),
        caller_name: c.caller.name.clone(),
        context: c.dialplan.context.clone(),
        exten: c.dialplan.exten.clone(),
        stasis_app: c.stasis.as_ref().map(|s| s.app.clone()),
        stasis_args: c
            .stasis
            .as_ref()
            .map(|s| s.args.clone())
            .unwrap_or_default(),
        bridge: c.bridge.clone(),
        linkedid: c.linkedid.clone(),
        variables: c.vars.clone(),
        kind: match &c.kind {
            Kind::Caller { tone_hz } => ChannelKind::Caller { tone_hz: *tone_hz },
            Kind::Unicast {
                external_host,
                remote,
                format,
                local,
            } => ChannelKind::ExternalMedia {
                external_host: external_host.clone(),
                remote: *remote,
                format: *format,
                local: *local,
            },
        },
    }
}

/// `"Name" <number>`, `Name <number>` or `number`.
fn parse_caller_id(s: &str) -> Party {
    let s = s.trim();
    if let (Some(lt), true) = (s.rfind('<'), s.ends_with('>')) {
        let number = s[lt + 1..s.len() - 1].trim().to_owned();
        let name = s[..lt].trim().trim_matches('"').to_owned();
        return Party { name, number };
    }
    if s.chars().all(|c| c.is_ascii_digit() || "+*#".contains(c)) {
        Party {
            name: String::new(),
            number: s.to_owned(),
        }
    } else {
        Party {
            name: s.to_owned(),
            number: String::new(),
        }
    }
}

fn parse_host_port(s: &str) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    if host.eq_ignore_ascii_case("localhost") {
        return Some(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    None
}

/// C `atoi`: leading optional sign and digits, 0 otherwise.
pub(crate) fn atoi(s: &str) -> i64 {
    let s = s.trim_start();
    let (neg, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut v: i64 = 0;
    for b in digits.bytes().take_while(u8::is_ascii_digit) {
        v = v.saturating_mul(10).saturating_add(i64::from(b - b'0'));
    }
    if neg { -v } else { v }
}

/// A random version-4 UUID, as Asterisk gives bridges.
fn uuid4() -> String {
    let b: [u8; 16] = rand::random();
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        let byte = match i {
            6 => (byte & 0x0f) | 0x40,
            8 => (byte & 0x3f) | 0x80,
            _ => *byte,
        };
        if [4, 6, 8, 10].contains(&i) {
            s.push('-');
        }
        let _ = write!(s, "{byte:02x}");
    }
    s
}

fn or_unknown(s: &str) -> &str {
    if s.is_empty() { "<unknown>" } else { s }
}

/// An AMI event being written.
#[derive(Debug)]
pub(crate) struct AmiEvent(String);

impl AmiEvent {
    pub(crate) fn new(name: &str, privilege: &str) -> Self {
        let mut s = String::with_capacity(512);
        let _ = write!(s, "Event: {name}\r\nPrivilege: {privilege}\r\n");
        AmiEvent(s)
    }

    /// Events of list actions carry no Privilege line.
    pub(crate) fn new_no_privilege(name: &str) -> Self {
        AmiEvent(format!("Event: {name}\r\n"))
    }

    pub(crate) fn kv(self, k: &str, v: &str) -> Self {
        self.pkv("", k, v)
    }

    /// `<prefix><key>: <value>`; CR and LF in values become spaces so that
    /// a value can never end the message.
    fn pkv(mut self, prefix: &str, k: &str, v: &str) -> Self {
        self.0.push_str(prefix);
        self.0.push_str(k);
        self.0.push_str(": ");
        if v.as_bytes().contains(&b'\r') || v.as_bytes().contains(&b'\n') {
            self.0.push_str(&v.replace(['\r', '\n'], " "));
        } else {
            self.0.push_str(v);
        }
        self.0.push_str("\r\n");
        self
    }

    fn chan(self, p: &str, c: &Channel) -> Self {
        self.pkv(p, "Channel", &c.name)
            .pkv(p, "ChannelState", &c.state.ami_number().to_string())
            .pkv(p, "ChannelStateDesc", c.state.ami_name())
            .pkv(p, "CallerIDNum", or_unknown(&c.caller.number))
            .pkv(p, "CallerIDName", or_unknown(&c.caller.name))
            .pkv(p, "ConnectedLineNum", or_unknown(&c.connected.number))
            .pkv(p, "ConnectedLineName", or_unknown(&c.connected.name))
            .pkv(p, "Language", "en")
            .pkv(p, "AccountCode", "")
            .pkv(p, "Context", &c.dialplan.context)
            .pkv(p, "Exten", &c.dialplan.exten)
            .pkv(p, "Priority", &c.dialplan.priority.to_string())
            .pkv(p, "Uniqueid", c.id.as_str())
            .pkv(p, "Linkedid", c.linkedid.as_str())
    }

    fn bridge(self, b: &Bridge) -> Self {
        self.kv("BridgeUniqueid", b.id.as_str())
            .kv("BridgeType", "stasis")
            .kv("BridgeTechnology", b.technology)
            .kv("BridgeCreator", "Stasis")
            .kv("BridgeName", &b.name)
            .kv("BridgeNumChannels", &b.channels.len().to_string())
            .kv("BridgeVideoSourceMode", "talker")
    }

    pub(crate) fn done(mut self) -> String {
        self.0.push_str("\r\n");
        self.0
    }
}

/// `[{"type":"StasisStart"},...]`, as the Application model lists filters.
fn type_list(types: &[String]) -> String {
    let items: Vec<String> = types
        .iter()
        .map(|t| Obj::new().str("type", t).finish())
        .collect();
    format!("[{}]", items.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::disallowed_methods)] // test: any instant will do as the origin
    fn now() -> Now {
        Now {
            wall: SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_626_314_504),
            mono: Instant::now(),
        }
    }

    fn pbx() -> Pbx {
        let mut p = Pbx::new(
            PbxConfig {
                entity_id: "02:fc:00:00:00:01".into(),
                default_app: "ai-gw".into(),
                tone_hz: 440,
                system_name: String::new(),
            },
            now(),
        );
        p.activate_app("ai-gw");
        p
    }

    fn ari_types(out: &[Out]) -> Vec<String> {
        out.iter()
            .filter_map(|o| match o {
                Out::Ari { body, .. } => {
                    let v: serde_json::Value =
                        serde_json::from_str(&format!("{body}}}")).expect("json");
                    Some(v["type"].as_str().unwrap_or_default().to_owned())
                }
                _ => None,
            })
            .collect()
    }

    fn ami_types(out: &[Out]) -> Vec<String> {
        out.iter()
            .filter_map(|o| match o {
                Out::Ami(t) => Some(
                    t.lines()
                        .next()
                        .unwrap_or_default()
                        .trim_start_matches("Event: ")
                        .to_owned(),
                ),
                _ => None,
            })
            .collect()
    }

    fn fake_bind(_: &ChannelId, _: MediaFormat, _: SocketAddr) -> std::io::Result<SocketAddr> {
        Ok("127.0.0.1:10028".parse().expect("addr"))
    }

    #[test]
    fn inbound_call_flow_without_sockets() {
        let mut p = pbx();
        let call = InboundCall {
            app_args: vec!["inbound".into()],
            ..InboundCall::default()
        };
        let a = p.inbound_call(call, now()).expect("call");
        let out: Vec<Out> = p.drain().collect();
        assert_eq!(ari_types(&out), ["StasisStart"]);
        assert_eq!(ami_types(&out), ["Newchannel", "Newexten", "VarSet"]);

        p.answer(a.as_str(), now()).expect("answer");
        let em = ExternalMedia {
            app: "ai-gw".into(),
            external_host: "127.0.0.1:40000".into(),
            format: "ulaw".into(),
            ..ExternalMedia::default()
        };
        let Reply::Json(json) = p.external_media(em, &mut fake_bind, now()).expect("em") else {
            panic!("json")
        };
        let v: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(v["state"], "Down");
        assert_eq!(v["channelvars"]["UNICASTRTP_LOCAL_PORT"], "10028");
        let u = v["id"].as_str().expect("id").to_owned();
        let Reply::Json(b) = p.create_bridge("mixing", "", "b", now()).expect("bridge") else {
            panic!("json")
        };
        let bid = serde_json::from_str::<serde_json::Value>(&b).expect("json")["id"]
            .as_str()
            .expect("id")
            .to_owned();
        p.drain().for_each(drop);
        p.add_channels(&bid, &[a.as_str().to_owned(), u.clone()], now())
            .expect("add");
        let out: Vec<Out> = p.drain().collect();
        assert_eq!(
            ari_types(&out),
            [
                "ChannelEnteredBridge",
                "ChannelEnteredBridge",
                "ChannelVarset",
                "ChannelVarset",
                "ChannelConnectedLine"
            ]
        );
        assert!(out.contains(&Out::RtpStart(ChannelId::new(u.as_str()), 440)));

        p.remote_hangup(&a, 16, now()).expect("hangup");
        let out: Vec<Out> = p.drain().collect();
        assert_eq!(
            ari_types(&out),
            [
                "ChannelHangupRequest",
                "ChannelVarset",
                "ChannelLeftBridge",
                "StasisEnd"
            ]
        );
        assert_eq!(
            ami_types(&out),
            ["HangupRequest", "VarSet", "BridgeLeave", "VarSet", "Hangup"]
        );
        assert!(out.contains(&Out::RtpStop(ChannelId::new(u.as_str()))));
    }

    #[test]
    fn errors_follow_asterisk() {
        let mut p = pbx();
        assert_eq!(p.answer("nope", now()), Err(err(404, "Channel not found")));
        assert_eq!(
            p.add_channels("nope", &["x".into()], now()),
            Err(err(404, "Bridge not found"))
        );
        let Reply::Json(b) = p.create_bridge("", "b1", "", now()).expect("bridge") else {
            panic!("json")
        };
        assert!(b.contains("\"id\":\"b1\""));
        assert_eq!(
            p.create_bridge("", "b1", "", now()),
            Err(err(409, "Bridge with id 'b1' already exists"))
        );
        assert_eq!(
            p.add_channels("b1", &[], now()),
            Err(err(400, "Missing parameter channel"))
        );
        assert_eq!(
            p.add_channels("b1", &["x".into()], now()),
            Err(err(400, "Channel not found"))
        );
        assert_eq!(
            p.hangup_request("x", "", "", now()),
            Err(err(404, "Channel not found"))
        );
        let a = p.inbound_call(InboundCall::default(), now()).expect("call");
        assert_eq!(
            p.hangup_request(a.as_str(), "bogus", "", now()),
            Err(err(400, "Invalid reason for hangup provided"))
        );
        assert_eq!(
            p.remove_channels("b1", &[a.as_str().to_owned()], now()),
            Err(err(422, "Channel not in this bridge"))
        );
        let em = ExternalMedia {
            app: "ai-gw".into(),
            external_host: "nohost".into(),
            format: "ulaw".into(),
            ..Default::default()
        };
        assert_eq!(
            p.external_media(em, &mut fake_bind, now()),
            Err(err(400, "external_host must be <host>:<port>"))
        );
    }

    #[test]
    fn stasis_fails_without_a_websocket() {
        let mut p = pbx();
        p.deactivate_app("ai-gw");
        let r = p.inbound_call(InboundCall::default(), now());
        assert!(matches!(r, Err(DoubleError::AppNotRegistered(_))));
        assert!(p.channel_snapshots().is_empty());
        let out: Vec<Out> = p.drain().collect();
        assert!(ari_types(&out).is_empty());
        assert_eq!(ami_types(&out).last().map(String::as_str), Some("Hangup"));
    }

    #[test]
    fn local_pairs_hang_up_together() {
        let mut p = pbx();
        let o = Originate {
            endpoint: "Local/s@tone-source".into(),
            app: "ai-gw".into(),
            app_args: "probe,ari-originate".into(),
            caller_id: "Probe <1000>".into(),
            ..Originate::default()
        };
        let Reply::Json(j) = p.originate(o.clone(), now()).expect("originate") else {
            panic!("json")
        };
        let v: serde_json::Value = serde_json::from_str(&j).expect("json");
        assert_eq!(v["name"].as_str().map(|n| n.ends_with(";1")), Some(true));
        assert_eq!(v["caller"]["name"], "Probe");
        let snaps = p.channel_snapshots();
        assert_eq!(snaps.len(), 2);
        assert_eq!(snaps[0].stasis_args, ["probe", "ari-originate"]);
        assert_eq!(snaps[0].state, ChannelState::Up);
        p.hangup_request(v["id"].as_str().expect("id"), "", "", now())
            .expect("hangup");
        assert!(p.channel_snapshots().is_empty(), "the ;2 half went with it");
        p.deactivate_app("ai-gw");
        assert!(
            p.originate(o, now()).is_ok(),
            "REST answers before Stasis runs"
        );
        assert!(
            p.channel_snapshots().is_empty(),
            "no orphan half when Stasis fails"
        );
    }

    #[test]
    fn caller_id_and_helpers() {
        assert_eq!(
            parse_caller_id("Probe <1000>"),
            Party {
                name: "Probe".into(),
                number: "1000".into()
            }
        );
        assert_eq!(
            parse_caller_id("\"A B\" <+1555>"),
            Party {
                name: "A B".into(),
                number: "+1555".into()
            }
        );
        assert_eq!(
            parse_caller_id("5551234"),
            Party {
                name: String::new(),
                number: "5551234".into()
            }
        );
        assert_eq!(atoi("12abc"), 12);
        assert_eq!(atoi("x"), 0);
        assert_eq!(atoi("-7"), -7);
        let u = uuid4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }
}
