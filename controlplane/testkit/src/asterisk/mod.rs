//! The Asterisk test double: AMI on TCP, ARI on HTTP and WebSocket (axum),
//! channels and bridges as state, real RTP from every externalMedia channel.
//!
//! ```text
//!   test ──inbound_call/hangup/faults──┐
//!                                      v
//!   AMI clients <──TCP── ami.rs ──> [ Shared: Mutex<Core { Pbx, sessions }> ] <── ari.rs ──HTTP/WS──> ARI clients
//!                                      │ Out::Rtp*                     (events fan out to AMI sessions and
//!                                      v                                to the WebSocket of each Stasis app)
//!                                   rtp.rs: one socket per UnicastRTP channel, one pacer for all
//! ```
//!
//! Everything Asterisk decides lives in the sans-IO `core` module (fed an
//! explicit `now`); this module and `ami`, `ari`, `net`, `rtp` are the
//! drivers that own sockets and read the clock.
//!
//! What it leaves out: SIP, a dialplan (inbound calls and originates go
//! straight to a Stasis app), audio mixing (an externalMedia channel carries
//! the tone of one caller), playback, AudioSocket and WebSocket media
//! transports, RTCP. The crate README lists every departure.

mod ami;
mod ari;
mod clock;
mod core;
mod json;
mod net;
mod rtp;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

pub use rtp::{
    MediaFormat, Packetizer, RtpHeader, RtpStreamStats, RxStats, ToneGenerator, parse_rtp,
};

use self::core::{Now, Out, Pbx, PbxConfig};

/// An Asterisk channel unique id (`"1795626314.34"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(String);

impl ChannelId {
    /// Wraps an id as Asterisk prints it.
    pub fn new(id: impl Into<String>) -> Self {
        ChannelId(id.into())
    }

    /// The id text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An Asterisk bridge id (a UUID unless the client chose one).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BridgeId(String);

impl BridgeId {
    /// Wraps an id as Asterisk prints it.
    pub fn new(id: impl Into<String>) -> Self {
        BridgeId(id.into())
    }

    /// The id text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BridgeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Channel states the double uses (Asterisk's `ast_channel_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelState {
    /// Created, nothing else (outgoing channels before answer).
    Down,
    /// An incoming call, not answered yet.
    Ring,
    /// Dialed, ringing at the far end.
    Ringing,
    /// Answered.
    Up,
}

impl ChannelState {
    /// The name in ARI JSON (`"Ring"`).
    pub fn ari_name(self) -> &'static str {
        match self {
            ChannelState::Down => "Down",
            ChannelState::Ring => "Ring",
            ChannelState::Ringing => "Ringing",
            ChannelState::Up => "Up",
        }
    }

    /// AMI `ChannelState` number.
    pub fn ami_number(self) -> u8 {
        match self {
            ChannelState::Down => 0,
            ChannelState::Ring => 4,
            ChannelState::Ringing => 5,
            ChannelState::Up => 6,
        }
    }

    /// AMI `ChannelStateDesc`.
    pub fn ami_name(self) -> &'static str {
        self.ari_name()
    }
}

/// What a channel is, for the double's media.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelKind {
    /// A call leg whose audio is a tone at `tone_hz`.
    Caller {
        /// Tone frequency.
        tone_hz: u32,
    },
    /// An externalMedia (UnicastRTP) channel.
    ExternalMedia {
        /// `external_host` as the client gave it.
        external_host: String,
        /// Where RTP goes.
        remote: SocketAddr,
        /// The stream format.
        format: MediaFormat,
        /// `UNICASTRTP_LOCAL_ADDRESS:PORT`.
        local: SocketAddr,
    },
}

/// A channel as the double holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSnapshot {
    /// Unique id.
    pub id: ChannelId,
    /// Channel name (`PJSIP/trunk-00000003`).
    pub name: String,
    /// State.
    pub state: ChannelState,
    /// Caller id number.
    pub caller_number: String,
    /// Caller id name.
    pub caller_name: String,
    /// Dialplan context.
    pub context: String,
    /// Dialplan extension.
    pub exten: String,
    /// The Stasis application it is in.
    pub stasis_app: Option<String>,
    /// The arguments it entered Stasis with.
    pub stasis_args: Vec<String>,
    /// The bridge it is in.
    pub bridge: Option<BridgeId>,
    /// Linked id (the oldest channel of the call).
    pub linkedid: ChannelId,
    /// Channel variables, in the order they were first set.
    pub variables: Vec<(String, String)>,
    /// Caller leg or externalMedia.
    pub kind: ChannelKind,
}

/// A bridge as the double holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSnapshot {
    /// Bridge id.
    pub id: BridgeId,
    /// Name given at creation.
    pub name: String,
    /// `mixing` or `holding`.
    pub bridge_type: String,
    /// Channels in it, in the order they joined.
    pub channels: Vec<ChannelId>,
    /// Name of the live recording, if recording.
    pub recording: Option<String>,
}

/// A call arriving from the SIP trunk, for [`AsteriskDouble::inbound_call`].
#[derive(Debug, Clone)]
pub struct InboundCall {
    /// PJSIP endpoint the call comes from (channel `PJSIP/<endpoint>-0000000N`).
    pub endpoint: String,
    /// Dialplan context it arrives in.
    pub context: String,
    /// Dialed extension (the DID).
    pub exten: String,
    /// Caller id number.
    pub caller_number: String,
    /// Caller id name.
    pub caller_name: String,
    /// Variables the dialplan sets before `Stasis()` (one `Set()` each).
    pub variables: Vec<(String, String)>,
    /// Stasis application; the first of `DoubleConfig::apps` when `None`.
    pub app: Option<String>,
    /// Arguments of `Stasis(app,args...)`.
    pub app_args: Vec<String>,
    /// Frequency of the caller's tone; `DoubleConfig::tone_hz` when `None`.
    pub tone_hz: Option<u32>,
}

impl Default for InboundCall {
    fn default() -> Self {
        InboundCall {
            endpoint: "trunk".to_owned(),
            context: "from-trunk".to_owned(),
            exten: "1000".to_owned(),
            caller_number: "5551234".to_owned(),
            caller_name: "Caller".to_owned(),
            variables: Vec::new(),
            app: None,
            app_args: Vec::new(),
            tone_hz: None,
        }
    }
}

/// Why a test-driven operation on the double failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DoubleError {
    /// No channel with that id.
    NoSuchChannel(ChannelId),
    /// `Stasis()` failed: no WebSocket is connected for the application
    /// (the channel was hung up, as Asterisk does).
    AppNotRegistered(String),
    /// The request made no sense.
    Invalid(String),
}

impl fmt::Display for DoubleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DoubleError::NoSuchChannel(id) => write!(f, "no channel {id}"),
            DoubleError::AppNotRegistered(app) => write!(f, "Stasis app '{app}' not registered"),
            DoubleError::Invalid(why) => write!(f, "invalid request: {why}"),
        }
    }
}

impl std::error::Error for DoubleError {}

/// How to run the double.
#[derive(Debug, Clone)]
pub struct DoubleConfig {
    /// ARI user (`ari.conf`).
    pub ari_user: String,
    /// ARI password.
    pub ari_password: String,
    /// AMI user (`manager.conf`).
    pub ami_user: String,
    /// AMI secret.
    pub ami_secret: String,
    /// Stasis applications of the dialplan; the first is where inbound calls
    /// go by default.
    pub apps: Vec<String>,
    /// Refuse WebSockets for applications not in `apps` (Asterisk accepts
    /// any name; this is for tests of misconfiguration).
    pub strict_apps: bool,
    /// Local ports for UnicastRTP (even ones are used, as Asterisk does);
    /// `None` binds ephemeral ports.
    pub rtp_ports: Option<RangeInclusive<u16>>,
    /// Default frequency of a caller's tone.
    pub tone_hz: u32,
    /// Delay added to every ARI REST answer.
    pub rest_latency: Option<Duration>,
    /// AMI port on 127.0.0.1 (0: any free port).
    pub ami_port: u16,
    /// ARI port on 127.0.0.1 (0: any free port).
    pub ari_port: u16,
    /// Asterisk's entity id (`asterisk_id` in events).
    pub entity_id: String,
    /// How much of each RTP stream's audio (sent and received) is kept for
    /// the test to compare.
    pub rtp_capture: Duration,
    /// The REST log keeps at most this many entries (oldest dropped).
    pub rest_log_limit: usize,
}

impl Default for DoubleConfig {
    fn default() -> Self {
        DoubleConfig {
            ari_user: "gw".to_owned(),
            ari_password: "gwsecret".to_owned(),
            ami_user: "gw".to_owned(),
            ami_secret: "gwsecret".to_owned(),
            apps: vec!["ai-gw".to_owned()],
            strict_apps: false,
            rtp_ports: None,
            tone_hz: 440,
            rest_latency: None,
            ami_port: 0,
            ari_port: 0,
            entity_id: "02:fc:00:00:00:01".to_owned(),
            rtp_capture: Duration::from_secs(2),
            rest_log_limit: 100_000,
        }
    }
}

/// One ARI request as the double saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestLogEntry {
    /// HTTP method.
    pub method: String,
    /// Path, `/ari/...`.
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// Request body as text.
    pub body: String,
    /// Status answered (101 for a WebSocket upgrade).
    pub status: u16,
}

/// Counters of what the double did and what it cost, for assertions and
/// for the benchmark (the double's own share of a call setup).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DoubleStats {
    /// Successful AMI logins.
    pub ami_logins: u64,
    /// AMI connections open now.
    pub ami_connections: usize,
    /// ARI WebSockets accepted.
    pub ws_connects: u64,
    /// ARI WebSockets open now.
    pub ws_open: usize,
    /// ARI REST requests answered.
    pub rest_requests: u64,
    /// Time spent inside REST handlers (excluding `rest_latency`).
    pub rest_busy: Duration,
    /// ARI events written to WebSockets.
    pub ari_events: u64,
    /// AMI events written to sessions.
    pub ami_events: u64,
    /// RTP packets sent by the pacer.
    pub rtp_packets: u64,
    /// Pacer wakeups.
    pub pacer_ticks: u64,
    /// Time the pacer spent sending.
    pub pacer_busy: Duration,
}

#[derive(Debug)]
struct FailRule {
    method: String,
    path_prefix: String,
    status: u16,
    message: String,
}

#[derive(Debug)]
struct WsConn {
    conn_id: u64,
    tx: mpsc::UnboundedSender<String>,
}

#[derive(Debug)]
struct AmiSession {
    tx: mpsc::UnboundedSender<Arc<str>>,
    authenticated: bool,
    events: bool,
    /// `Filter` actions: whitelist patterns (an event passes if it contains
    /// any; none means all) and blacklist ones (`!pattern`).
    filters: Vec<String>,
    blacklist: Vec<String>,
}

impl AmiSession {
    /// Whether this session receives `text` (Asterisk matches each filter
    /// as a regular expression against the event text; the double takes
    /// them as plain substrings, which the patterns clients send are).
    fn wants(&self, text: &str) -> bool {
        self.authenticated
            && self.events
            && (self.filters.is_empty() || self.filters.iter().any(|f| text.contains(f.as_str())))
            && !self.blacklist.iter().any(|f| text.contains(f.as_str()))
    }
}

/// State behind the one lock: the simulated Asterisk and who listens.
#[derive(Debug)]
struct Core {
    pbx: Pbx,
    ws: HashMap<String, WsConn>,
    ws_open: HashMap<u64, Vec<String>>,
    ws_kill: CancellationToken,
    ami: HashMap<u64, AmiSession>,
    ami_kill: CancellationToken,
    rest_log: Vec<RestLogEntry>,
    fail_rules: Vec<FailRule>,
    next_conn_id: u64,
}

#[derive(Debug, Default)]
struct Counters {
    ami_logins: AtomicU64,
    ws_connects: AtomicU64,
    rest_requests: AtomicU64,
    rest_busy_ns: AtomicU64,
    ari_events: AtomicU64,
    ami_events: AtomicU64,
}

/// What every driver task shares.
#[derive(Debug)]
struct Shared {
    cfg: DoubleConfig,
    core: Mutex<Core>,
    gate: Arc<net::Gate>,
    rtp: Arc<rtp::RtpHub>,
    shutdown: CancellationToken,
    timer: Notify,
    counters: Counters,
    ami_addr: SocketAddr,
}

impl Shared {
    #[allow(clippy::disallowed_methods)] // driver: operations happen now
    fn now() -> Now {
        Now {
            wall: SystemTime::now(),
            mono: Instant::now(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic under this lock only happens in a failing test; keep the
        // state usable so the test can still report.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the state, then delivers what it emitted, in order, while
    /// still holding the lock (so concurrent operations never interleave
    /// their events).
    fn with<R>(&self, f: impl FnOnce(&mut Core, Now) -> R) -> R {
        let mut core = self.lock();
        let r = f(&mut core, Self::now());
        self.deliver(&mut core);
        r
    }

    fn deliver(&self, core: &mut Core) {
        let Core { pbx, ws, ami, .. } = core;
        let eid = pbx.entity_id().to_owned();
        let mut delivered = false;
        for out in pbx.drain() {
            delivered = true;
            match out {
                Out::Ari { apps, body } => {
                    for app in apps {
                        if let Some(conn) = ws.get(&app) {
                            let mut msg = body.clone();
                            msg.push_str(",\"asterisk_id\":");
                            json::push_json_str(&mut msg, &eid);
                            msg.push_str(",\"application\":");
                            json::push_json_str(&mut msg, &app);
                            msg.push('}');
                            if conn.tx.send(msg).is_ok() {
                                self.counters.ari_events.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                Out::Ami(text) => {
                    let text: Arc<str> = text.into();
                    for s in ami.values().filter(|s| s.wants(&text)) {
                        if s.tx.send(text.clone()).is_ok() {
                            self.counters.ami_events.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Out::RtpStart(id, hz) => self.rtp.start(&id, hz),
                Out::RtpStop(id) => self.rtp.stop(&id),
                Out::RtpClose(id) => self.rtp.close(&id),
            }
        }
        if delivered {
            self.timer.notify_one();
        }
    }
}

/// The running double. Dropping it stops every listener, connection and
/// stream.
#[derive(Debug)]
pub struct AsteriskDouble {
    shared: Arc<Shared>,
    ari_addr: SocketAddr,
    listeners: Vec<tokio::task::JoinHandle<()>>,
}

impl AsteriskDouble {
    /// Binds AMI and ARI on 127.0.0.1 (the configured ports, or free ones)
    /// and starts serving. Must run inside a tokio runtime.
    pub async fn start(cfg: DoubleConfig) -> io::Result<AsteriskDouble> {
        let ami_listener = tokio::net::TcpListener::bind(("127.0.0.1", cfg.ami_port)).await?;
        let ari_listener = tokio::net::TcpListener::bind(("127.0.0.1", cfg.ari_port)).await?;
        let ami_addr = ami_listener.local_addr()?;
        let ari_addr = ari_listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let rtp = rtp::RtpHub::spawn(cfg.rtp_ports.clone(), cfg.rtp_capture, shutdown.clone());
        let pbx = Pbx::new(
            PbxConfig {
                entity_id: cfg.entity_id.clone(),
                default_app: cfg
                    .apps
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "ai-gw".to_owned()),
                tone_hz: cfg.tone_hz,
                system_name: String::new(),
            },
            Shared::now(),
        );
        let shared = Arc::new(Shared {
            cfg,
            core: Mutex::new(Core {
                pbx,
                ws: HashMap::new(),
                ws_open: HashMap::new(),
                ws_kill: CancellationToken::new(),
                ami: HashMap::new(),
                ami_kill: CancellationToken::new(),
                rest_log: Vec::new(),
                fail_rules: Vec::new(),
                next_conn_id: 0,
            }),
            gate: net::Gate::new(),
            rtp,
            shutdown,
            timer: Notify::new(),
            counters: Counters::default(),
            ami_addr,
        });
        let listeners = vec![
            tokio::spawn(ami::serve(shared.clone(), ami_listener)),
            ari::serve(shared.clone(), ari_listener),
        ];
        tokio::spawn(timer(shared.clone()));
        Ok(AsteriskDouble {
            shared,
            ari_addr,
            listeners,
        })
    }

    /// Where AMI listens.
    pub fn ami_addr(&self) -> SocketAddr {
        self.shared.ami_addr
    }

    /// Where ARI listens.
    pub fn ari_addr(&self) -> SocketAddr {
        self.ari_addr
    }

    /// `http://127.0.0.1:PORT` (the client appends `/ari`).
    pub fn ari_base_url(&self) -> String {
        format!("http://{}", self.ari_addr)
    }

    /// ARI user.
    pub fn ari_user(&self) -> &str {
        &self.shared.cfg.ari_user
    }

    /// ARI password.
    pub fn ari_password(&self) -> &str {
        &self.shared.cfg.ari_password
    }

    /// AMI user.
    pub fn ami_user(&self) -> &str {
        &self.shared.cfg.ami_user
    }

    /// AMI secret.
    pub fn ami_secret(&self) -> &str {
        &self.shared.cfg.ami_secret
    }

    /// The default Stasis application (first of `DoubleConfig::apps`).
    pub fn app(&self) -> String {
        self.shared.lock().pbx.default_app().to_owned()
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &DoubleConfig {
        &self.shared.cfg
    }

    // ----- calls ----------------------------------------------------------

    /// A call arrives from the trunk and enters the Stasis application
    /// ringing (AMI Newchannel, Newexten, VarSet; ARI StasisStart). Fails,
    /// and the call is hung up, when no WebSocket serves the application.
    pub fn inbound_call(&self, call: InboundCall) -> Result<ChannelId, DoubleError> {
        self.shared
            .with(|core, now| core.pbx.inbound_call(call, now))
    }

    /// The far end of `channel` hangs up with `cause` (16 is normal
    /// clearing): ChannelHangupRequest, ChannelLeftBridge, StasisEnd, AMI
    /// HangupRequest, BridgeLeave, Hangup.
    pub fn hangup(&self, channel: &ChannelId, cause: u16) -> Result<(), DoubleError> {
        self.shared
            .with(|core, now| core.pbx.remote_hangup(channel, cause, now))
    }

    /// The far end answers a channel that is not Up yet.
    pub fn remote_answer(&self, channel: &ChannelId) -> Result<(), DoubleError> {
        self.shared
            .with(|core, now| core.pbx.remote_answer(channel, now))
    }

    // ----- observation ----------------------------------------------------

    /// Every channel, oldest first.
    pub fn channels(&self) -> Vec<ChannelSnapshot> {
        self.shared.lock().pbx.channel_snapshots()
    }

    /// One channel.
    pub fn channel(&self, id: &ChannelId) -> Option<ChannelSnapshot> {
        self.shared.lock().pbx.channel_snapshot(id)
    }

    /// Every bridge.
    pub fn bridges(&self) -> Vec<BridgeSnapshot> {
        self.shared.lock().pbx.bridge_snapshots()
    }

    /// What was sent and received on an externalMedia channel's RTP socket
    /// (also after the channel is gone).
    pub fn rtp_stream(&self, channel: &ChannelId) -> Option<RtpStreamStats> {
        self.shared.rtp.snapshot(channel)
    }

    /// How many externalMedia channels are sending RTP now.
    pub fn rtp_streams_sending(&self) -> usize {
        self.shared.rtp.sending_count()
    }

    /// Every ARI request so far.
    pub fn rest_log(&self) -> Vec<RestLogEntry> {
        self.shared.lock().rest_log.clone()
    }

    /// Forgets the REST log.
    pub fn clear_rest_log(&self) {
        self.shared.lock().rest_log.clear();
    }

    /// Whether a WebSocket currently serves `app`.
    pub fn ws_connected(&self, app: &str) -> bool {
        self.shared.lock().ws.contains_key(app)
    }

    /// Counters and costs.
    pub fn stats(&self) -> DoubleStats {
        let c = &self.shared.counters;
        let core = self.shared.lock();
        let cost = &self.shared.rtp.cost;
        DoubleStats {
            ami_logins: c.ami_logins.load(Ordering::Relaxed),
            ami_connections: core.ami.len(),
            ws_connects: c.ws_connects.load(Ordering::Relaxed),
            ws_open: core.ws_open.len(),
            rest_requests: c.rest_requests.load(Ordering::Relaxed),
            rest_busy: Duration::from_nanos(c.rest_busy_ns.load(Ordering::Relaxed)),
            ari_events: c.ari_events.load(Ordering::Relaxed),
            ami_events: c.ami_events.load(Ordering::Relaxed),
            rtp_packets: cost.packets.load(Ordering::Relaxed),
            pacer_ticks: cost.ticks.load(Ordering::Relaxed),
            pacer_busy: *cost.busy.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// Polls `cond` every few milliseconds until it holds or `timeout`
    /// passes; returns whether it held.
    #[allow(clippy::disallowed_methods)] // driver: a test waits on the clock
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut cond: impl FnMut(&AsteriskDouble) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if cond(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    // ----- faults -----------------------------------------------------------

    /// Cuts every AMI connection (the client sees a reset); calls go on.
    pub fn drop_ami_connections(&self) {
        let mut core = self.shared.lock();
        core.ami_kill.cancel();
        core.ami_kill = CancellationToken::new();
    }

    /// Cuts every ARI WebSocket without a close frame; channels stay in
    /// Stasis and RTP keeps flowing, as in Asterisk.
    pub fn drop_ari_websockets(&self) {
        let mut core = self.shared.lock();
        core.ws_kill.cancel();
        core.ws_kill = CancellationToken::new();
    }

    /// Offline: every AMI, ARI HTTP and WebSocket connection is cut and new
    /// ones are reset at once; channels, bridges and RTP carry on (as when
    /// the network to Asterisk is cut). `false` accepts connections again.
    pub fn set_offline(&self, offline: bool) {
        self.shared.gate.set_offline(offline);
    }

    /// Whether it is offline.
    pub fn is_offline(&self) -> bool {
        self.shared.gate.is_offline()
    }

    /// Asterisk restarts: connections are cut, every channel and bridge is
    /// gone without events, RTP stops and its sockets close; the listeners
    /// stay on the same ports and accept again (AMI logins get FullyBooted
    /// with a fresh uptime). Leaves offline mode if it was on.
    pub fn restart(&self) {
        self.shared.gate.kill_all();
        self.shared.with(|core, now| {
            core.pbx.restart(now);
            core.ws.clear();
        });
        self.shared.rtp.close_all();
        self.shared.gate.set_offline(false);
    }

    /// The next ARI request whose method is `method` (any if empty) and
    /// whose path (after `/ari`) starts with `path_prefix` fails once with
    /// `status` and `{"message": message}`, without touching any state.
    pub fn fail_next(&self, method: &str, path_prefix: &str, status: u16, message: &str) {
        self.shared.lock().fail_rules.push(FailRule {
            method: method.to_ascii_uppercase(),
            path_prefix: path_prefix.to_owned(),
            status,
            message: message.to_owned(),
        });
    }
}

impl AsteriskDouble {
    /// Stops the double and waits until its ports are free, so that a new
    /// double can start on the same ports (a process restart of Asterisk,
    /// as opposed to [`AsteriskDouble::restart`]).
    pub async fn shutdown(mut self) {
        self.shared.shutdown.cancel();
        self.shared.gate.kill_all();
        for task in std::mem::take(&mut self.listeners) {
            let _ = task.await;
        }
    }
}

impl Drop for AsteriskDouble {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
        self.shared.gate.kill_all();
        self.shared.rtp.close_all();
    }
}

/// Ends live recordings when their `maxDurationSeconds` is up.
async fn timer(shared: Arc<Shared>) {
    loop {
        let next = shared.lock().pbx.poll_timeout();
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = shared.timer.notified() => {}
            _ = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            } => {
                shared.with(|core, now| core.pbx.handle_timeout(now));
            }
        }
    }
}
