//! The AMI connection: a tokio service that keeps one logged-in TCP session
//! to one of a list of Asterisk servers, and a cheap-clone handle to send
//! actions and receive events.
//!
//! ```text
//!   AmiClient (clones) --actions (mpsc)--> AmiService task --TCP 5038--> Asterisk
//!        ^   ^                               |  Parser (sans-IO)
//!        |   +------ responses (oneshot) ----+  ActionID -> pending action
//!        +---------- events (broadcast) -----+  LinkState (watch)
//! ```
//!
//! The service connects to the first server, reads the banner, logs in
//! (`Events: on`), optionally asks Asterisk to filter events, then reads
//! until the connection is lost. It sends `Ping` every keepalive interval
//! and treats a `Ping` still unanswered at the next interval as a dead link.
//! After a failure or a loss it waits a delay from
//! [`crate::service::backoff`] (exponential, jittered; started afresh after
//! each successful login) and tries the next server in the list, round
//! robin. A refused login (wrong secret) is logged as an error and retried
//! the same way: an operator may fix the secret on the Asterisk side.
//!
//! Every action gets an ActionID unique to the process run
//! (`mgw-<connection>-<seq>`); responses are matched by it, so they may come
//! in any order. An action fails at once when the link is down, fails when
//! the connection drops under it, and times out after
//! [`AmiConfig::action_timeout_ms`].
//!
//! Left out: AMI over TLS, `Challenge` (MD5) login, replaying events missed
//! while disconnected (Asterisk does not keep them; reconcile with
//! `CoreShowChannels` or ARI), and collecting list-action events into the
//! response (they arrive as ordinary events carrying the ActionID).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};

use super::proto::{
    Action, ActionId, Event, InvalidAction, Message, Parser, Response, ResponseStatus,
};
use crate::error::{Error, ErrorKind, Party, Result};
use crate::secret::{Secret, SecretSource};
use crate::service::{LinkState, Service, Shutdown, backoff, link_state};

/// How many actions may wait for the connection task.
const COMMAND_QUEUE: usize = 1024;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;
/// The longest we wait for `Goodbye` after `Logoff` at shutdown.
const LOGOFF_WAIT: Duration = Duration::from_secs(2);

/// One Asterisk server to connect to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmiServer {
    /// A name for logs, metrics and [`LinkState::Up`] (`pbx-a`).
    pub name: String,
    /// `host:port` of its AMI listener (`127.0.0.1:5038`).
    pub addr: String,
}

/// AMI client configuration (the `[ami]` table). Durations are integer
/// milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmiConfig {
    /// Servers in failover order; the first is tried first.
    pub servers: Vec<AmiServer>,
    /// The `manager.conf` user.
    pub username: String,
    /// Its secret, inline or from a file.
    pub secret: SecretSource,
    /// TCP connect and banner, each.
    pub connect_timeout_ms: u64,
    /// The longest an action (login included) waits for its response.
    pub action_timeout_ms: u64,
    /// How often to send `Ping`; one unanswered by the next time is a dead
    /// link.
    pub keepalive_interval_ms: u64,
    /// The first reconnect delay.
    pub backoff_min_ms: u64,
    /// The largest reconnect delay (jitter may add up to as much again).
    pub backoff_max_ms: u64,
    /// Event names to pass on (`Newchannel`, `Hangup`, ...); empty passes
    /// all. Also sent to Asterisk as `Filter` actions.
    pub events: Vec<String>,
    /// Events buffered for each receiver before a slow one lags.
    pub event_buffer: usize,
}

impl Default for AmiConfig {
    fn default() -> Self {
        Self {
            servers: vec![AmiServer {
                name: "local".to_owned(),
                addr: "127.0.0.1:5038".to_owned(),
            }],
            username: "mediagw".to_owned(),
            secret: SecretSource::default(),
            connect_timeout_ms: 5_000,
            action_timeout_ms: 10_000,
            keepalive_interval_ms: 20_000,
            backoff_min_ms: 500,
            backoff_max_ms: 30_000,
            events: Vec::new(),
            event_buffer: 4096,
        }
    }
}

impl AmiConfig {
    /// Checks what can be checked without connecting.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::invalid(format!("ami: {what}")));
        if self.servers.is_empty() {
            return bad("servers: at least one is needed".to_owned());
        }
        for (i, s) in self.servers.iter().enumerate() {
            if s.name.trim().is_empty() {
                return bad(format!("servers[{i}].name is empty"));
            }
            if self.servers[..i].iter().any(|o| o.name == s.name) {
                return bad(format!("servers[{i}].name {:?} is used twice", s.name));
            }
            let port = s.addr.rsplit_once(':').and_then(|(host, port)| {
                (!host.is_empty()).then_some(())?;
                port.parse::<u16>().ok()
            });
            if port.is_none_or(|p| p == 0) {
                return bad(format!("servers[{i}].addr {:?} is not host:port", s.addr));
            }
        }
        if self.username.is_empty() || self.username.contains(['\r', '\n', '\0']) {
            return bad("username is empty or holds a line break".to_owned());
        }
        for (key, ms) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("action_timeout_ms", self.action_timeout_ms),
            ("keepalive_interval_ms", self.keepalive_interval_ms),
            ("backoff_min_ms", self.backoff_min_ms),
        ] {
            if ms == 0 {
                return bad(format!("{key} must be above 0"));
            }
        }
        if self.backoff_max_ms < self.backoff_min_ms {
            return bad("backoff_max_ms is below backoff_min_ms".to_owned());
        }
        if let Some(e) = self
            .events
            .iter()
            .find(|e| e.is_empty() || !e.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        {
            return bad(format!("events: {e:?} is not an event name"));
        }
        if self.event_buffer == 0 {
            return bad("event_buffer must be above 0".to_owned());
        }
        Ok(())
    }

    /// [`connect_timeout_ms`](Self::connect_timeout_ms).
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// [`action_timeout_ms`](Self::action_timeout_ms).
    pub fn action_timeout(&self) -> Duration {
        Duration::from_millis(self.action_timeout_ms)
    }

    /// [`keepalive_interval_ms`](Self::keepalive_interval_ms).
    pub fn keepalive_interval(&self) -> Duration {
        Duration::from_millis(self.keepalive_interval_ms)
    }

    /// [`backoff_min_ms`](Self::backoff_min_ms).
    pub fn backoff_min(&self) -> Duration {
        Duration::from_millis(self.backoff_min_ms)
    }

    /// [`backoff_max_ms`](Self::backoff_max_ms).
    pub fn backoff_max(&self) -> Duration {
        Duration::from_millis(self.backoff_max_ms)
    }
}

/// An event as received, with the server it came from. Cheap to clone;
/// derefs to [`Event`].
#[derive(Debug, Clone)]
pub struct AmiEvent {
    server: Arc<str>,
    event: Arc<Event>,
}

impl AmiEvent {
    /// The configured name of the server that sent it.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The event.
    pub fn event(&self) -> &Event {
        &self.event
    }
}

impl Deref for AmiEvent {
    type Target = Event;

    fn deref(&self) -> &Event {
        &self.event
    }
}

/// A successful response (`Success`, `Follows` or `Goodbye`), with the
/// server that sent it. Derefs to [`Response`].
#[derive(Debug, Clone)]
pub struct AmiResponse {
    server: Arc<str>,
    response: Response,
}

impl AmiResponse {
    /// The configured name of the server that answered.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The response.
    pub fn into_response(self) -> Response {
        self.response
    }
}

impl Deref for AmiResponse {
    type Target = Response;

    fn deref(&self) -> &Response {
        &self.response
    }
}

/// Counters of the client, for metrics. Monotonic since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AmiMetrics {
    /// Successful logins.
    pub connects: u64,
    /// Successful logins after the first: reconnections.
    pub reconnects: u64,
    /// Connections lost after login.
    pub disconnects: u64,
    /// Attempts that failed before login (connect, banner, timeouts).
    pub connect_failures: u64,
    /// Logins Asterisk refused.
    pub login_failures: u64,
    /// Links declared dead because a `Ping` went unanswered.
    pub keepalive_failures: u64,
    /// Events received.
    pub events: u64,
    /// Events dropped by the `events` filter.
    pub events_filtered: u64,
    /// Unparseable input skipped (see [`super::proto::ParseError`]).
    pub parse_errors: u64,
    /// Responses matching no waiting action (late, after a timeout).
    pub unmatched_responses: u64,
    /// Actions that timed out.
    pub action_timeouts: u64,
}

#[derive(Debug, Default)]
struct Counters {
    connects: AtomicU64,
    disconnects: AtomicU64,
    connect_failures: AtomicU64,
    login_failures: AtomicU64,
    keepalive_failures: AtomicU64,
    events: AtomicU64,
    events_filtered: AtomicU64,
    parse_errors: AtomicU64,
    unmatched_responses: AtomicU64,
    action_timeouts: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// An action on its way to the connection task.
struct Command {
    action: Action,
    reply: oneshot::Sender<Result<AmiResponse>>,
}

/// What the handle and the service share.
struct Shared {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<AmiEvent>,
    state: watch::Receiver<LinkState>,
    action_timeout: Duration,
    counters: Counters,
}

/// The handle: send actions, receive events, watch the link. Cheap to
/// clone; every clone talks to the same [`AmiService`].
#[derive(Clone)]
pub struct AmiClient {
    shared: Arc<Shared>,
}

impl fmt::Debug for AmiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmiClient")
            .field("state", &*self.shared.state.borrow())
            .finish_non_exhaustive()
    }
}

impl AmiClient {
    /// A handle and the service that owns the connection; run the service
    /// (it implements [`Service`]). `secret` is `cfg.secret` resolved.
    pub fn new(cfg: AmiConfig, secret: Secret) -> (AmiClient, AmiService) {
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let (events, _) = broadcast::channel(cfg.event_buffer.max(1));
        let (state_tx, state) = link_state();
        let shared = Arc::new(Shared {
            commands,
            events,
            state,
            action_timeout: cfg.action_timeout(),
            counters: Counters::default(),
        });
        let service = AmiService {
            cfg,
            secret,
            commands: command_rx,
            shared: shared.clone(),
            state: state_tx,
        };
        (AmiClient { shared }, service)
    }

    /// Sends `action` and waits for its response.
    ///
    /// Errors: the action is malformed ([`ErrorKind::Invalid`], client);
    /// the link is down or drops before the answer
    /// ([`ErrorKind::Unavailable`], at once); no answer within the action
    /// timeout ([`ErrorKind::Timeout`]); Asterisk answered `Response:
    /// Error` (its `Message` in the error, [`Party::Asterisk`]; the kind
    /// read from the message: permission → Unauthorized, no such / not
    /// found → NotFound, invalid / missing → Invalid, else PeerFailure).
    pub async fn action(&self, action: Action) -> Result<AmiResponse> {
        let name = action.name().to_owned();
        action
            .validate()
            .map_err(|e| Error::invalid(format!("AMI action {name:?} not sent")).with_cause(e))?;
        {
            // One read of the state, released before any await.
            let state = self.shared.state.borrow();
            if !state.is_up() {
                return Err(link_down(&name, &state));
            }
        }
        let (reply, answer) = oneshot::channel();
        let shared = &self.shared;
        let exchange = async {
            shared
                .commands
                .send(Command { action, reply })
                .await
                .map_err(|_| {
                    unavailable(format!("AMI action {name}: the AMI service has stopped"))
                })?;
            answer.await.map_err(|_| {
                unavailable(format!("AMI action {name}: the AMI service has stopped"))
            })?
        };
        let response = match tokio::time::timeout(shared.action_timeout, exchange).await {
            Ok(r) => r?,
            Err(_) => {
                bump(&shared.counters.action_timeouts);
                return Err(Error::new(
                    ErrorKind::Timeout,
                    Party::Asterisk,
                    format!(
                        "AMI action {name}: no response within {} ms",
                        shared.action_timeout.as_millis()
                    ),
                ));
            }
        };
        if *response.status() == ResponseStatus::Error {
            return Err(asterisk_error(&name, &response));
        }
        Ok(response)
    }

    /// A receiver of every event that passes the filter, from now on.
    ///
    /// Events are broadcast: the connection never waits for a receiver. A
    /// receiver more than [`AmiConfig::event_buffer`] events behind gets
    /// `RecvError::Lagged(n)` (the `n` oldest are lost to it) and then
    /// continues with the oldest still buffered.
    pub fn events(&self) -> broadcast::Receiver<AmiEvent> {
        self.shared.events.subscribe()
    }

    /// The link's state: `Connecting`, `Up { server }` or `Down { reason }`.
    pub fn state(&self) -> watch::Receiver<LinkState> {
        self.shared.state.clone()
    }

    /// How many times the client logged in again after the first login.
    pub fn reconnects(&self) -> u64 {
        self.metrics().reconnects
    }

    /// The counters.
    pub fn metrics(&self) -> AmiMetrics {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let connects = get(&c.connects);
        AmiMetrics {
            connects,
            reconnects: connects.saturating_sub(1),
            disconnects: get(&c.disconnects),
            connect_failures: get(&c.connect_failures),
            login_failures: get(&c.login_failures),
            keepalive_failures: get(&c.keepalive_failures),
            events: get(&c.events),
            events_filtered: get(&c.events_filtered),
            parse_errors: get(&c.parse_errors),
            unmatched_responses: get(&c.unmatched_responses),
            action_timeouts: get(&c.action_timeouts),
        }
    }
}

fn unavailable(context: String) -> Error {
    Error::new(ErrorKind::Unavailable, Party::Asterisk, context)
}

fn link_down(action: &str, state: &LinkState) -> Error {
    match state {
        LinkState::Down { reason } => {
            unavailable(format!("AMI action {action}: link down ({reason})"))
        }
        _ => unavailable(format!("AMI action {action}: not connected yet")),
    }
}

/// `Response: Error` as an error, the kind read from Asterisk's message.
fn asterisk_error(action: &str, response: &AmiResponse) -> Error {
    let message = response.message().unwrap_or("(no message)");
    let lower = message.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| lower.contains(w));
    let kind = if has(&["permission denied", "authentication"]) {
        ErrorKind::Unauthorized
    } else if has(&["no such", "not found", "does not exist", "unknown channel"]) {
        ErrorKind::NotFound
    } else if has(&[
        "invalid",
        "missing",
        "required",
        "unknown command",
        "unknown action",
    ]) {
        ErrorKind::Invalid
    } else {
        ErrorKind::PeerFailure
    };
    Error::new(
        kind,
        Party::Asterisk,
        format!("AMI action {action} on {}: {message}", response.server()),
    )
}

/// The service owning the AMI connection. Run it with
/// [`Services::spawn`](crate::service::Services::spawn); it returns when
/// shut down (after `Logoff`) or at once on invalid configuration.
pub struct AmiService {
    cfg: AmiConfig,
    secret: Secret,
    commands: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    state: watch::Sender<LinkState>,
}

impl fmt::Debug for AmiService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmiService")
            .field("servers", &self.cfg.servers)
            .field("username", &self.cfg.username)
            .finish_non_exhaustive()
    }
}

impl Service for AmiService {
    fn name(&self) -> &'static str {
        "ami"
    }

    fn run(
        self: Box<Self>,
        shutdown: Shutdown,
    ) -> Pin<Box<dyn Future<Output = Result<()>> + Send>> {
        Box::pin(self.run_until(shutdown))
    }
}

/// How a session ended.
enum SessionEnd {
    /// Shutdown was signalled (after `Logoff` if logged in).
    Shutdown,
    /// It never got logged in.
    Failed(Error),
    /// It was logged in, then lost.
    Lost(String),
}

impl AmiService {
    async fn run_until(mut self, shutdown: Shutdown) -> Result<()> {
        let checked = self.cfg.validate().and_then(|()| {
            if self.secret.expose().contains(['\r', '\n', '\0']) {
                Err(Error::invalid("ami.secret holds a line break"))
            } else {
                Ok(())
            }
        });
        if let Err(e) = checked {
            self.state.send_replace(LinkState::Down {
                reason: e.to_string(),
            });
            return Err(e);
        }
        let (min, max) = (self.cfg.backoff_min(), self.cfg.backoff_max());
        let mut delays = backoff(min, max);
        let mut index = 0;
        let mut connection = 0u64;
        loop {
            let server = self.cfg.servers[index].clone();
            connection += 1;
            self.state.send_replace(LinkState::Connecting);
            let reason = match self.session(&server, connection, &shutdown).await {
                SessionEnd::Shutdown => break,
                SessionEnd::Lost(reason) => {
                    bump(&self.shared.counters.disconnects);
                    tracing::warn!(server = %server.name, addr = %server.addr, %reason, "AMI connection lost");
                    delays = backoff(min, max);
                    reason
                }
                SessionEnd::Failed(e) => {
                    if e.kind() == ErrorKind::Unauthorized {
                        bump(&self.shared.counters.login_failures);
                        tracing::error!(
                            server = %server.name, addr = %server.addr, user = %self.cfg.username, error = %e,
                            "AMI login refused: check ami.username and ami.secret against manager.conf; retrying"
                        );
                    } else {
                        bump(&self.shared.counters.connect_failures);
                        tracing::warn!(server = %server.name, addr = %server.addr, error = %e, "AMI connection failed");
                    }
                    e.to_string()
                }
            };
            self.state.send_replace(LinkState::Down { reason });
            let next = (index + 1) % self.cfg.servers.len();
            let delay = delays.next().unwrap_or(max);
            if next != index {
                tracing::info!(
                    from = %server.name, to = %self.cfg.servers[next].name, delay_ms = delay.as_millis() as u64,
                    "AMI failing over to the next server"
                );
            } else {
                tracing::info!(server = %server.name, delay_ms = delay.as_millis() as u64, "AMI reconnecting");
            }
            if !self.pause(delay, &shutdown).await {
                break;
            }
            index = next;
        }
        self.state.send_replace(LinkState::Down {
            reason: "shut down".to_owned(),
        });
        self.commands.close();
        while let Ok(cmd) = self.commands.try_recv() {
            let _ = cmd.reply.send(Err(unavailable(format!(
                "AMI action {}: the AMI service is shutting down",
                cmd.action.name()
            ))));
        }
        tracing::info!("AMI service stopped");
        Ok(())
    }

    /// Waits `delay`, failing actions that arrive meanwhile; false on
    /// shutdown.
    async fn pause(&mut self, delay: Duration, shutdown: &Shutdown) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return true,
                () = shutdown.cancelled() => return false,
                Some(cmd) = self.commands.recv() => {
                    let _ = cmd.reply.send(Err(link_down(cmd.action.name(), &self.state.borrow())));
                }
            }
        }
    }

    /// One connection: connect, banner, login, then run until lost.
    async fn session(
        &mut self,
        server: &AmiServer,
        number: u64,
        shutdown: &Shutdown,
    ) -> SessionEnd {
        let at = |e: Error| {
            SessionEnd::Failed(e.context(format!("AMI {} ({})", server.name, server.addr)))
        };
        let connect = tokio::time::timeout(
            self.cfg.connect_timeout(),
            TcpStream::connect(server.addr.as_str()),
        );
        let stream = tokio::select! {
            () = shutdown.cancelled() => return SessionEnd::Shutdown,
            r = connect => match r {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return at(unavailable("connect".to_owned()).with_cause(e)),
                Err(_) => return at(Error::new(ErrorKind::Timeout, Party::Asterisk, format!(
                    "connect: no answer within {} ms", self.cfg.connect_timeout_ms))),
            },
        };
        // Actions are small and latency matters more than packing.
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        let mut conn = Conn {
            server: Arc::from(server.name.as_str()),
            number,
            rd,
            wr,
            parser: Parser::default(),
            buf: vec![0; READ_CHUNK],
            out: Vec::new(),
            seq: 0,
            pending: HashMap::new(),
            ping: None,
            goodbye: false,
            write_timeout: self.cfg.action_timeout(),
            filter: &self.cfg.events,
            shared: &self.shared,
        };

        let deadline = Instant::now() + self.cfg.connect_timeout();
        let banner = match conn.read_message(deadline, shutdown).await {
            Ok(Message::Banner(b)) if b.is_asterisk() => b,
            Ok(Message::Banner(b)) => {
                return at(Error::new(
                    ErrorKind::Protocol,
                    Party::Asterisk,
                    format!("banner {:?} is not Asterisk's", b.line()),
                ));
            }
            Ok(_) => {
                return at(Error::new(
                    ErrorKind::Protocol,
                    Party::Asterisk,
                    "no banner before the first message",
                ));
            }
            Err(end) => return end.into_failure(&server.name),
        };

        let login_id = conn.next_id();
        let login = Action::new("Login")
            .header("Username", self.cfg.username.as_str())
            .secret_header("Secret", self.secret.clone())
            .header("Events", "on");
        if let Err(e) = conn.send(&login, &login_id).await {
            return e.into_failure(&server.name);
        }
        let deadline = Instant::now() + self.cfg.action_timeout();
        let response = loop {
            match conn.read_message(deadline, shutdown).await {
                Ok(Message::Response(r))
                    if r.action_id().is_none_or(|id| id == login_id.as_str()) =>
                {
                    break r;
                }
                Ok(other) => conn.dispatch(other),
                Err(end) => return end.into_failure(&server.name),
            }
        };
        match response.status() {
            ResponseStatus::Success => {}
            ResponseStatus::Error => {
                return at(Error::new(
                    ErrorKind::Unauthorized,
                    Party::Asterisk,
                    format!(
                        "login as {:?}: {}",
                        self.cfg.username,
                        response.message().unwrap_or("refused")
                    ),
                ));
            }
            other => {
                return at(Error::new(
                    ErrorKind::Protocol,
                    Party::Asterisk,
                    format!("login answered {other:?}"),
                ));
            }
        }

        bump(&self.shared.counters.connects);
        tracing::info!(
            server = %server.name, addr = %server.addr, ami_version = banner.version().unwrap_or("?"),
            connection = number, "AMI connected and logged in"
        );
        self.state.send_replace(LinkState::Up {
            server: server.name.clone(),
        });

        let end = conn
            .run(&mut self.commands, shutdown, self.cfg.keepalive_interval())
            .await;
        // Down before failing the waiting actions, so that their callers see
        // it if they retry at once.
        let reason = match &end {
            SessionEnd::Lost(reason) => reason.clone(),
            _ => "shutting down".to_owned(),
        };
        self.state.send_replace(LinkState::Down {
            reason: reason.clone(),
        });
        conn.fail_pending(&reason);
        end
    }
}

/// What went wrong while talking on a connection.
enum ConnError {
    Shutdown,
    Closed,
    Io(std::io::Error),
    Timeout(&'static str),
    Invalid(InvalidAction),
}

impl ConnError {
    fn describe(&self) -> String {
        match self {
            Self::Shutdown => "shutting down".to_owned(),
            Self::Closed => "closed by Asterisk".to_owned(),
            Self::Io(e) => format!("socket error: {e}"),
            Self::Timeout(what) => format!("{what} timed out"),
            Self::Invalid(e) => format!("invalid action: {e}"),
        }
    }

    /// As the end of a session that never logged in.
    fn into_failure(self, server: &str) -> SessionEnd {
        let kind = match &self {
            Self::Shutdown => return SessionEnd::Shutdown,
            Self::Timeout(_) => ErrorKind::Timeout,
            Self::Invalid(_) => ErrorKind::Invalid,
            Self::Closed | Self::Io(_) => ErrorKind::Unavailable,
        };
        let party = if matches!(self, Self::Invalid(_)) {
            Party::Client
        } else {
            Party::Asterisk
        };
        SessionEnd::Failed(Error::new(
            kind,
            party,
            format!("AMI {server}: {} before login", self.describe()),
        ))
    }
}

/// A waiting action.
enum Pending {
    Client {
        name: String,
        reply: oneshot::Sender<Result<AmiResponse>>,
    },
    Ping,
    Filter(String),
    Logoff,
}

/// One TCP connection's state, for the session's life.
struct Conn<'a> {
    server: Arc<str>,
    number: u64,
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    parser: Parser,
    buf: Vec<u8>,
    out: Vec<u8>,
    seq: u64,
    pending: HashMap<String, Pending>,
    /// The unanswered keepalive `Ping`.
    ping: Option<String>,
    goodbye: bool,
    write_timeout: Duration,
    filter: &'a [String],
    shared: &'a Shared,
}

impl Conn<'_> {
    fn next_id(&mut self) -> ActionId {
        self.seq += 1;
        ActionId::new(format!("mgw-{}-{}", self.number, self.seq))
    }

    async fn send(&mut self, action: &Action, id: &ActionId) -> Result<(), ConnError> {
        self.out.clear();
        action
            .encode(id, &mut self.out)
            .map_err(ConnError::Invalid)?;
        match tokio::time::timeout(self.write_timeout, self.wr.write_all(&self.out)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ConnError::Io(e)),
            Err(_) => Err(ConnError::Timeout("write")),
        }
    }

    /// The next message, reading as needed until `deadline`. Parse errors
    /// are counted and skipped.
    async fn read_message(
        &mut self,
        deadline: Instant,
        shutdown: &Shutdown,
    ) -> Result<Message, ConnError> {
        loop {
            while let Some(m) = self.parser.poll_message() {
                match m {
                    Ok(m) => return Ok(m),
                    Err(e) => self.parse_error(&e),
                }
            }
            let read = tokio::time::timeout_at(deadline, self.rd.read(&mut self.buf));
            tokio::select! {
                () = shutdown.cancelled() => return Err(ConnError::Shutdown),
                r = read => match r {
                    Ok(Ok(0)) => return Err(ConnError::Closed),
                    Ok(Ok(n)) => self.parser.handle_bytes(&self.buf[..n]),
                    Ok(Err(e)) => return Err(ConnError::Io(e)),
                    Err(_) => return Err(ConnError::Timeout("waiting for Asterisk")),
                },
            }
        }
    }

    fn parse_error(&self, e: &super::proto::ParseError) {
        bump(&self.shared.counters.parse_errors);
        tracing::warn!(server = %self.server, error = %e, "AMI input skipped");
    }

    /// Runs the logged-in connection until it is lost or shut down.
    async fn run(
        &mut self,
        commands: &mut mpsc::Receiver<Command>,
        shutdown: &Shutdown,
        keepalive: Duration,
    ) -> SessionEnd {
        // What came in with the login response (FullyBooted).
        self.drain();
        for name in self.filter {
            let id = self.next_id();
            let filter = Action::new("Filter")
                .header("Operation", "Add")
                .header("Filter", format!("Event: {name}"));
            if let Err(e) = self.send(&filter, &id).await {
                return SessionEnd::Lost(e.describe());
            }
            self.pending
                .insert(id.as_str().to_owned(), Pending::Filter(name.clone()));
        }
        let mut tick = tokio::time::interval_at(Instant::now() + keepalive, keepalive);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    self.logoff().await;
                    return SessionEnd::Shutdown;
                }
                r = self.rd.read(&mut self.buf) => match r {
                    Ok(0) => return SessionEnd::Lost(ConnError::Closed.describe()),
                    Ok(n) => {
                        self.parser.handle_bytes(&self.buf[..n]);
                        self.drain();
                    }
                    Err(e) => return SessionEnd::Lost(ConnError::Io(e).describe()),
                },
                Some(Command { action, reply }) = commands.recv() => {
                    if reply.is_closed() {
                        // Its caller gave up (timed out) while it queued.
                        continue;
                    }
                    let id = self.next_id();
                    if let Err(e) = self.send(&action, &id).await {
                        let end = e.describe();
                        let _ = reply.send(Err(unavailable(format!(
                            "AMI action {}: {end}", action.name()))));
                        return SessionEnd::Lost(end);
                    }
                    self.pending.insert(id.as_str().to_owned(), Pending::Client {
                        name: action.name().to_owned(),
                        reply,
                    });
                }
                _ = tick.tick() => {
                    self.pending.retain(|_, p| !matches!(p, Pending::Client { reply, .. } if reply.is_closed()));
                    if self.ping.is_some() {
                        bump(&self.shared.counters.keepalive_failures);
                        return SessionEnd::Lost(format!(
                            "keepalive: Ping unanswered for {} ms", keepalive.as_millis()));
                    }
                    let id = self.next_id();
                    if let Err(e) = self.send(&Action::new("Ping"), &id).await {
                        return SessionEnd::Lost(e.describe());
                    }
                    self.ping = Some(id.as_str().to_owned());
                    self.pending.insert(id.as_str().to_owned(), Pending::Ping);
                }
            }
        }
    }

    /// Hands every parsed message on.
    fn drain(&mut self) {
        while let Some(m) = self.parser.poll_message() {
            match m {
                Ok(m) => self.dispatch(m),
                Err(e) => self.parse_error(&e),
            }
        }
    }

    fn dispatch(&mut self, message: Message) {
        match message {
            Message::Banner(b) => {
                tracing::warn!(server = %self.server, banner = b.line(), "AMI banner in mid-stream ignored");
            }
            Message::Event(event) => {
                bump(&self.shared.counters.events);
                if self.filter.is_empty() || self.filter.iter().any(|n| event.is(n)) {
                    // No receiver is fine: nobody listens yet.
                    let _ = self.shared.events.send(AmiEvent {
                        server: self.server.clone(),
                        event: Arc::new(event),
                    });
                } else {
                    bump(&self.shared.counters.events_filtered);
                }
            }
            Message::Response(response) => {
                let pending = response.action_id().and_then(|id| self.pending.remove(id));
                match pending {
                    Some(Pending::Client { reply, .. }) => {
                        let late = reply
                            .send(Ok(AmiResponse {
                                server: self.server.clone(),
                                response,
                            }))
                            .is_err();
                        if late {
                            // Its caller timed out and left.
                            bump(&self.shared.counters.unmatched_responses);
                        }
                    }
                    Some(Pending::Ping) => {
                        if self.ping.as_deref() == response.action_id() {
                            self.ping = None;
                        }
                    }
                    Some(Pending::Filter(name)) => {
                        if *response.status() == ResponseStatus::Error {
                            tracing::warn!(
                                server = %self.server, event = %name, message = response.message().unwrap_or(""),
                                "AMI Filter refused; filtering on our side only"
                            );
                        }
                    }
                    Some(Pending::Logoff) => self.goodbye = true,
                    None => {
                        bump(&self.shared.counters.unmatched_responses);
                        tracing::debug!(
                            server = %self.server, action_id = response.action_id().unwrap_or(""),
                            "AMI response matches no waiting action"
                        );
                    }
                }
            }
        }
    }

    /// Sends `Logoff`, waits a little for `Goodbye`, closes.
    async fn logoff(&mut self) {
        let id = self.next_id();
        if self.send(&Action::new("Logoff"), &id).await.is_ok() {
            self.pending.insert(id.as_str().to_owned(), Pending::Logoff);
            let deadline = Instant::now() + self.write_timeout.min(LOGOFF_WAIT);
            while !self.goodbye {
                match tokio::time::timeout_at(deadline, self.rd.read(&mut self.buf)).await {
                    Ok(Ok(n)) if n > 0 => {
                        self.parser.handle_bytes(&self.buf[..n]);
                        self.drain();
                    }
                    _ => break,
                }
            }
        }
        let _ = self.wr.shutdown().await;
        tracing::info!(server = %self.server, goodbye = self.goodbye, "AMI logged off");
    }

    /// Fails every waiting action: the connection is gone.
    fn fail_pending(&mut self, reason: &str) {
        for (_, p) in self.pending.drain() {
            if let Pending::Client { name, reply } = p {
                let _ = reply.send(Err(unavailable(format!(
                    "AMI action {name}: connection to {} lost ({reason})",
                    self.server
                ))));
            }
        }
        self.ping = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip_through_toml_like_json() {
        let cfg = AmiConfig::default();
        cfg.validate().unwrap();
        let json = serde_json::to_value(&cfg).unwrap();
        let back: AmiConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back, cfg);
        assert_eq!(cfg.keepalive_interval(), Duration::from_secs(20));
    }

    #[test]
    fn partial_config_takes_defaults_and_unknown_keys_are_refused() {
        let cfg: AmiConfig = serde_json::from_str(
            r#"{"servers": [{"name": "a", "addr": "10.0.0.1:5038"}, {"name": "b", "addr": "[::1]:5038"}],
                "username": "gw", "secret": {"file": "/run/credentials/ami"}, "action_timeout_ms": 2500}"#,
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.action_timeout(), Duration::from_millis(2500));
        assert_eq!(cfg.backoff_min_ms, AmiConfig::default().backoff_min_ms);
        let e = serde_json::from_str::<AmiConfig>(r#"{"action_timeout": 5}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = serde_json::from_str::<AmiConfig>(
            r#"{"servers": [{"name": "a", "addr": "x:1", "port": 2}]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn validation_names_the_bad_key() {
        let check = |f: fn(&mut AmiConfig)| {
            let mut cfg = AmiConfig::default();
            f(&mut cfg);
            cfg.validate().unwrap_err().message().to_owned()
        };
        assert!(check(|c| c.servers.clear()).contains("servers"));
        assert!(check(|c| c.servers[0].addr = "localhost".into()).contains("host:port"));
        assert!(check(|c| c.servers[0].addr = ":5038".into()).contains("host:port"));
        assert!(check(|c| c.servers.push(c.servers[0].clone())).contains("used twice"));
        assert!(check(|c| c.keepalive_interval_ms = 0).contains("keepalive_interval_ms"));
        assert!(check(|c| c.backoff_max_ms = 1).contains("backoff_max_ms"));
        assert!(check(|c| c.events = vec!["Event: X".into()]).contains("events"));
        assert!(check(|c| c.username = "a\r\nAction: Logoff".into()).contains("username"));
    }

    #[test]
    fn asterisk_errors_are_sorted_by_message() {
        let response = |msg: &str| AmiResponse {
            server: Arc::from("pbx"),
            response: {
                let mut p = Parser::default();
                p.handle_bytes(
                    format!("Response: Error\r\nActionID: 1\r\nMessage: {msg}\r\n\r\n").as_bytes(),
                );
                match p.poll_message() {
                    Some(Ok(Message::Response(r))) => r,
                    other => panic!("{other:?}"),
                }
            },
        };
        let kind = |msg| asterisk_error("X", &response(msg)).kind();
        assert_eq!(kind("Permission denied"), ErrorKind::Unauthorized);
        assert_eq!(kind("No such channel"), ErrorKind::NotFound);
        assert_eq!(kind("Channel not found"), ErrorKind::NotFound);
        assert_eq!(
            kind(
                "Invalid/unknown command: pwd. Use Action: ListCommands to show available commands."
            ),
            ErrorKind::Invalid
        );
        assert_eq!(kind("Originate failed"), ErrorKind::PeerFailure);
        let e = asterisk_error("Hangup", &response("No such channel"));
        assert_eq!(e.party(), Party::Asterisk);
        assert_eq!(e.message(), "AMI action Hangup on pbx: No such channel");
    }

    #[tokio::test]
    async fn bad_configuration_stops_the_service_at_once() {
        let (client, service) = AmiClient::new(AmiConfig::default(), Secret::new("a\nb"));
        let e = Box::new(service).run(Shutdown::new()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid);
        assert!(!client.state().borrow().is_up());
        let cfg = AmiConfig {
            servers: Vec::new(),
            ..AmiConfig::default()
        };
        let (_, service) = AmiClient::new(cfg, Secret::new("x"));
        let e = Box::new(service).run(Shutdown::new()).await.unwrap_err();
        assert!(e.message().contains("servers"), "{e}");
    }

    #[tokio::test]
    async fn actions_fail_at_once_while_not_connected() {
        let (client, _service) = AmiClient::new(AmiConfig::default(), Secret::new("x"));
        let e = client.action(Action::new("Ping")).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        let e = client.action(Action::new("Bad Name")).await.unwrap_err();
        assert_eq!((e.kind(), e.party()), (ErrorKind::Invalid, Party::Client));
    }
}
