//! The AMI client against a scripted AMI peer on loopback.
//!
//! The peer, written here, speaks as Asterisk 22.10.1 did in the recorded
//! transcripts: the banner `Asterisk Call Manager/11.0.0`, `Login` answered
//! `Authentication accepted` (then `FullyBooted`) or `Authentication failed`
//! (then the connection closes), `Ping` answered with `Ping: Pong` and a
//! `Timestamp`, `Logoff` answered `Goodbye`, `Filter` acknowledged. Any other
//! action is handed to the test, which answers it (or not) with raw bytes.
//! The test can also make the peer send anything, and drop the connection.
//! Call events are replayed from `fixtures/ami/`, recorded from Asterisk.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mediagw_controlplane::ami::channels::{Channel, ChannelChange, ChannelTracker};
use mediagw_controlplane::ami::events::HangupCause;
use mediagw_controlplane::ami::{
    Action, AmiClient, AmiConfig, AmiEvent, AmiServer, ResponseStatus,
};
use mediagw_controlplane::error::{ErrorKind, Party, Result};
use mediagw_controlplane::secret::SecretSource;
use mediagw_controlplane::service::{LinkState, Service, Shutdown};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The events of one call (63), exactly as Asterisk 22 sent them.
const CALL_EVENTS: &[u8] = include_bytes!("fixtures/ami/asterisk22_inbound_call_events.txt");
const LEGACY_COMMAND: &str = include_str!("fixtures/ami/command_output_legacy.txt");
const MODERN_COMMAND: &str = include_str!("fixtures/ami/command_output_modern.txt");
const BANNER: &[u8] = b"Asterisk Call Manager/11.0.0\r\n";
const SECRET: &str = "gwsecret";
/// Generous: the machine is shared and noisy.
const DEADLINE: Duration = Duration::from_secs(20);

/// An action the peer received.
#[derive(Debug, Clone)]
struct Received {
    connection: usize,
    at: Instant,
    headers: Vec<(String, String)>,
}

impl Received {
    fn get(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    fn action(&self) -> &str {
        self.get("Action").unwrap_or("")
    }

    fn id(&self) -> &str {
        self.get("ActionID").unwrap_or("")
    }
}

enum PeerCmd {
    Send(Vec<u8>),
    Drop,
}

struct PeerState {
    answer_pings: AtomicBool,
    connections: AtomicUsize,
    received: Mutex<Vec<Received>>,
    current: Mutex<Option<mpsc::UnboundedSender<PeerCmd>>>,
    forward: mpsc::UnboundedSender<Received>,
}

/// A scripted AMI peer on 127.0.0.1, port 0.
struct Peer {
    addr: SocketAddr,
    state: Arc<PeerState>,
    forwarded: mpsc::UnboundedReceiver<Received>,
    accept: JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Peer {
    async fn start() -> Peer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (forward, forwarded) = mpsc::unbounded_channel();
        let state = Arc::new(PeerState {
            answer_pings: AtomicBool::new(true),
            connections: AtomicUsize::new(0),
            received: Mutex::new(Vec::new()),
            current: Mutex::new(None),
            forward,
        });
        let st = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let n = st.connections.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(serve(stream, n, st.clone()));
            }
        });
        Peer {
            addr,
            state,
            forwarded,
            accept,
        }
    }

    /// Sends raw bytes on the current connection.
    fn send(&self, bytes: impl Into<Vec<u8>>) {
        let current = self.state.current.lock().unwrap();
        current
            .as_ref()
            .expect("a connection")
            .send(PeerCmd::Send(bytes.into()))
            .expect("connection alive");
    }

    /// Closes the current connection abruptly.
    fn drop_connection(&self) {
        if let Some(c) = self.state.current.lock().unwrap().take() {
            let _ = c.send(PeerCmd::Drop);
        }
    }

    fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    fn received(&self, action: &str) -> Vec<Received> {
        self.state
            .received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.action().eq_ignore_ascii_case(action))
            .cloned()
            .collect()
    }

    /// The next action the peer did not answer by itself.
    async fn next_action(&mut self) -> Received {
        tokio::time::timeout(DEADLINE, self.forwarded.recv())
            .await
            .expect("an action reaches the peer")
            .expect("peer running")
    }
}

/// One connection: the banner, then actions in, answers out.
async fn serve(stream: TcpStream, connection: usize, state: Arc<PeerState>) {
    let (rd, mut wr) = stream.into_split();
    let (cmd_tx, mut cmds) = mpsc::unbounded_channel();
    *state.current.lock().unwrap() = Some(cmd_tx);
    let (action_tx, mut actions) = mpsc::unbounded_channel();
    // Reads actions: `Key: Value` lines up to an empty line.
    let reader = tokio::spawn(async move {
        let mut lines = BufReader::new(rd);
        let mut line = String::new();
        let mut headers = Vec::new();
        loop {
            line.clear();
            match lines.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let l = line.trim_end_matches(['\r', '\n']);
            if l.is_empty() {
                if !headers.is_empty() {
                    let _ = action_tx.send(std::mem::take(&mut headers));
                }
            } else if let Some((k, v)) = l.split_once(": ") {
                headers.push((k.to_owned(), v.to_owned()));
            } else if let Some(k) = l.strip_suffix(':') {
                headers.push((k.to_owned(), String::new()));
            }
        }
    });
    if wr.write_all(BANNER).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                Some(PeerCmd::Send(bytes)) => {
                    if wr.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                Some(PeerCmd::Drop) | None => break,
            },
            headers = actions.recv() => {
                let Some(headers) = headers else { break };
                let action = Received { connection, at: Instant::now(), headers };
                state.received.lock().unwrap().push(action.clone());
                let id = action.id().to_owned();
                let (reply, close) = match action.action().to_ascii_lowercase().as_str() {
                    "login" if action.get("Secret") == Some(SECRET) => (
                        format!(
                            "Response: Success\r\nActionID: {id}\r\nMessage: Authentication accepted\r\n\r\n\
                             Event: FullyBooted\r\nPrivilege: system,all\r\nUptime: 272\r\nLastReload: 272\r\n\
                             Status: Fully Booted\r\n\r\n"
                        ),
                        false,
                    ),
                    "login" => (
                        format!("Response: Error\r\nActionID: {id}\r\nMessage: Authentication failed\r\n\r\n"),
                        true,
                    ),
                    "ping" if state.answer_pings.load(Ordering::SeqCst) => (
                        format!(
                            "Response: Success\r\nActionID: {id}\r\nPing: Pong\r\nTimestamp: 1795626314.512345\r\n\r\n"
                        ),
                        false,
                    ),
                    "ping" => (String::new(), false),
                    "logoff" => (
                        format!("Response: Goodbye\r\nActionID: {id}\r\nMessage: Thanks for all the fish.\r\n\r\n"),
                        true,
                    ),
                    "filter" => (format!("Response: Success\r\nActionID: {id}\r\nMessage: Success\r\n\r\n"), false),
                    _ => {
                        let _ = state.forward.send(action);
                        (String::new(), false)
                    }
                };
                if wr.write_all(reply.as_bytes()).await.is_err() || close {
                    break;
                }
            }
        }
    }
    reader.abort();
}

fn config(servers: &[(&str, SocketAddr)]) -> AmiConfig {
    AmiConfig {
        servers: servers
            .iter()
            .map(|(name, addr)| AmiServer {
                name: (*name).to_owned(),
                addr: addr.to_string(),
            })
            .collect(),
        username: "gw".to_owned(),
        secret: SecretSource::inline(SECRET),
        connect_timeout_ms: 3_000,
        action_timeout_ms: 8_000,
        keepalive_interval_ms: 60_000,
        backoff_min_ms: 50,
        backoff_max_ms: 400,
        events: Vec::new(),
        event_buffer: 4096,
    }
}

/// A running client and its service task.
struct Running {
    client: AmiClient,
    events: broadcast::Receiver<AmiEvent>,
    shutdown: Shutdown,
    task: JoinHandle<Result<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn start(cfg: AmiConfig) -> Running {
    let secret = cfg.secret.resolve("ami.secret").unwrap();
    let (client, service) = AmiClient::new(cfg, secret);
    let events = client.events();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(Box::new(service).run(shutdown.clone()));
    Running {
        client,
        events,
        shutdown,
        task,
    }
}

/// Waits until the link is up; returns the server's name.
async fn wait_up(client: &AmiClient) -> String {
    let mut state = client.state();
    let s = tokio::time::timeout(DEADLINE, state.wait_for(LinkState::is_up))
        .await
        .expect("link comes up")
        .expect("service running")
        .clone();
    match s {
        LinkState::Up { server } => server,
        other => unreachable!("{other:?}"),
    }
}

/// Polls `cond` until it holds or the deadline passes.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn next_event(rx: &mut broadcast::Receiver<AmiEvent>) -> AmiEvent {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("an event arrives")
        .expect("no lag, not closed")
}

/// Feeds events to the tracker until one matching `last` went through.
async fn pump(
    rx: &mut broadcast::Receiver<AmiEvent>,
    tracker: &mut ChannelTracker,
    changes: &mut Vec<ChannelChange>,
    last: impl Fn(&AmiEvent) -> bool,
) -> usize {
    let mut n = 0;
    loop {
        let e = next_event(rx).await;
        n += 1;
        tracker.handle_event(&e);
        while let Some(c) = tracker.poll_change() {
            changes.push(c);
        }
        if last(&e) {
            return n;
        }
    }
}

/// The recorded events, one block (with its blank line) each.
fn event_blocks() -> Vec<Vec<u8>> {
    let text = std::str::from_utf8(CALL_EVENTS).unwrap();
    text.split_inclusive("\r\n\r\n")
        .map(|b| b.as_bytes().to_vec())
        .collect()
}

fn hung_up(changes: &[ChannelChange]) -> Vec<&Channel> {
    changes
        .iter()
        .filter_map(|c| match c {
            ChannelChange::HungUp { channel } => Some(channel),
            _ => None,
        })
        .collect()
}

fn getvar(variable: &str) -> Action {
    Action::new("Getvar")
        .header("Channel", "Local/s@to-stasis-0000000e;2")
        .header("Variable", variable)
}

#[tokio::test]
async fn login_is_accepted_and_events_flow() {
    let peer = Peer::start().await;
    let mut run = start(config(&[("pbx-a", peer.addr)]));
    assert_eq!(wait_up(&run.client).await, "pbx-a");

    let login = &peer.received("Login")[0];
    assert_eq!(login.get("Username"), Some("gw"));
    assert_eq!(login.get("Secret"), Some(SECRET));
    assert_eq!(login.get("Events"), Some("on"));
    assert!(login.id().starts_with("mgw-"), "{login:?}");
    // Asterisk sends FullyBooted right after the login.
    let booted = next_event(&mut run.events).await;
    assert!(booted.is("FullyBooted"));
    assert_eq!(booted.server(), "pbx-a");
    assert_eq!(booted.value("Status"), Some("Fully Booted"));
    let m = run.client.metrics();
    assert_eq!((m.connects, m.reconnects, m.login_failures), (1, 0, 0));
}

#[tokio::test]
async fn refused_login_is_retried_with_backoff_and_actions_fail_at_once() {
    let peer = Peer::start().await;
    let mut cfg = config(&[("pbx-a", peer.addr)]);
    cfg.secret = SecretSource::inline("wrong");
    let run = start(cfg);

    eventually("three refused logins", || peer.received("Login").len() >= 3).await;
    let logins = peer.received("Login");
    for pair in logins.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(45),
            "retried after {gap:?}, below backoff_min"
        );
    }
    eventually("failures counted", || {
        run.client.metrics().login_failures >= 3
    })
    .await;
    assert_eq!(run.client.metrics().connects, 0);
    let state = run.client.state().borrow().clone();
    match state {
        LinkState::Down { reason } => assert!(reason.contains("Authentication failed"), "{reason}"),
        // Between attempts it may be connecting again.
        LinkState::Connecting => {}
        LinkState::Up { .. } => panic!("never up with a wrong secret"),
    }
    let started = Instant::now();
    let e = run.client.action(Action::new("Ping")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert!(started.elapsed() < Duration::from_secs(1), "no hanging");
}

#[tokio::test]
async fn responses_are_matched_by_action_id_in_any_order() {
    let mut peer = Peer::start().await;
    let run = start(config(&[("pbx-a", peer.addr)]));
    wait_up(&run.client).await;

    let (c1, c2) = (run.client.clone(), run.client.clone());
    let first = tokio::spawn(async move { c1.action(getvar("FIRST")).await });
    let a = peer.next_action().await;
    let second = tokio::spawn(async move { c2.action(getvar("SECOND")).await });
    let b = peer.next_action().await;
    assert_eq!(a.get("Variable"), Some("FIRST"));
    assert_eq!(b.get("Variable"), Some("SECOND"));
    assert_ne!(a.id(), b.id());
    // Answer the second first, both in one write.
    peer.send(format!(
        "Response: Success\r\nActionID: {}\r\nVariable: SECOND\r\nValue: two\r\n\r\n\
         Response: Success\r\nActionID: {}\r\nVariable: FIRST\r\nValue: one\r\n\r\n",
        b.id(),
        a.id()
    ));
    let first = first.await.unwrap().unwrap();
    let second = second.await.unwrap().unwrap();
    assert_eq!(first.value("Value"), Some("one"));
    assert_eq!(second.value("Value"), Some("two"));
    assert_eq!(first.server(), "pbx-a");
}

#[tokio::test]
async fn an_unanswered_action_times_out_and_the_link_stays_up() {
    let mut peer = Peer::start().await;
    let mut cfg = config(&[("pbx-a", peer.addr)]);
    cfg.action_timeout_ms = 300;
    let run = start(cfg);
    wait_up(&run.client).await;

    let started = Instant::now();
    let pending = {
        let c = run.client.clone();
        tokio::spawn(async move { c.action(getvar("SLOW")).await })
    };
    let slow = peer.next_action().await;
    let e = pending.await.unwrap().unwrap_err();
    assert_eq!((e.kind(), e.party()), (ErrorKind::Timeout, Party::Asterisk));
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(run.client.metrics().action_timeouts, 1);

    // The late answer is counted, not mistaken for the next action's.
    peer.send(format!(
        "Response: Success\r\nActionID: {}\r\nValue: late\r\n\r\n",
        slow.id()
    ));
    eventually("late response counted", || {
        run.client.metrics().unmatched_responses == 1
    })
    .await;
    let c = run.client.clone();
    let next = tokio::spawn(async move { c.action(getvar("NEXT")).await });
    let a = peer.next_action().await;
    peer.send(format!(
        "Response: Success\r\nActionID: {}\r\nValue: fresh\r\n\r\n",
        a.id()
    ));
    assert_eq!(next.await.unwrap().unwrap().value("Value"), Some("fresh"));
    assert_eq!(peer.connections(), 1);
}

#[tokio::test]
async fn asterisk_errors_carry_its_message() {
    let mut peer = Peer::start().await;
    let run = start(config(&[("pbx-a", peer.addr)]));
    wait_up(&run.client).await;

    let c = run.client.clone();
    let call = tokio::spawn(async move {
        c.action(Action::new("Hangup").header("Channel", "PJSIP/gone-00000001"))
            .await
    });
    let a = peer.next_action().await;
    peer.send(format!(
        "Response: Error\r\nActionID: {}\r\nMessage: No such channel\r\n\r\n",
        a.id()
    ));
    let e = call.await.unwrap().unwrap_err();
    assert_eq!(
        (e.kind(), e.party()),
        (ErrorKind::NotFound, Party::Asterisk)
    );
    assert!(e.message().contains("No such channel"), "{e}");
}

/// The first response of a command fixture, its ActionID replaced.
fn command_reply(fixture: &str, old_id: &str, id: &str) -> String {
    let body = fixture.split_once("\r\n").unwrap().1; // no banner
    let end = body.find("\r\n\r\n").unwrap() + 4;
    body[..end].replace(&format!("ActionID: {old_id}"), &format!("ActionID: {id}"))
}

#[tokio::test]
async fn command_output_reads_the_same_in_both_forms() {
    let mut peer = Peer::start().await;
    let run = start(config(&[("pbx-a", peer.addr)]));
    wait_up(&run.client).await;
    let command = |c: AmiClient, cmd: &'static str| {
        tokio::spawn(async move {
            c.action(Action::new("Command").header("Command", cmd))
                .await
        })
    };

    // Asterisk 14+: Response: Success and Output headers.
    let modern = command(run.client.clone(), "core show channels");
    let a = peer.next_action().await;
    assert_eq!(a.get("Command"), Some("core show channels"));
    peer.send(command_reply(MODERN_COMMAND, "cmd-1", a.id()));
    let r = modern.await.unwrap().unwrap();
    assert_eq!(r.status(), &ResponseStatus::Success);
    let lines: Vec<&str> = r.output().collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2], "1 active channel");

    // Asterisk 13 and older: Response: Follows, raw text, --END COMMAND--,
    // with blank lines inside. Sent a byte at a time.
    let legacy = command(run.client.clone(), "manager show user gw");
    let a = peer.next_action().await;
    let reply = command_reply(LEGACY_COMMAND, "cmd-1", a.id());
    assert!(reply.ends_with("--END COMMAND--\r\n\r\n"), "{reply:?}");
    for b in reply.bytes() {
        peer.send(vec![b]);
    }
    let r = legacy.await.unwrap().unwrap();
    assert_eq!(r.status(), &ResponseStatus::Follows);
    let lines: Vec<&str> = r.output().collect();
    assert_eq!(
        lines[..3],
        ["", "       username: gw", "         secret: <Set>"]
    );
    assert_eq!(lines.len(), 5);
}

#[tokio::test]
async fn a_recorded_call_reaches_the_tracker_as_a_channel_lifecycle() {
    let peer = Peer::start().await;
    let mut run = start(config(&[("pbx-a", peer.addr)]));
    wait_up(&run.client).await;
    assert!(next_event(&mut run.events).await.is("FullyBooted"));

    peer.send(CALL_EVENTS);
    let mut tracker = ChannelTracker::default();
    let mut changes = Vec::new();
    let n = pump(&mut run.events, &mut tracker, &mut changes, |e| {
        e.is("BridgeDestroy")
    })
    .await;
    assert_eq!(n, 63, "every recorded event");

    let new: Vec<&str> = changes
        .iter()
        .filter_map(|c| match c {
            ChannelChange::New {
                channel,
                adopted: false,
            } => Some(channel.uniqueid().as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(new, ["1795626314.33", "1795626314.34", "1795626314.35"]);
    let hung = hung_up(&changes);
    assert_eq!(hung.len(), 3);
    assert!(
        hung.iter()
            .all(|c| c.hangup_cause() == Some(HangupCause::NORMAL_CLEARING))
    );
    let rtp = hung
        .iter()
        .find(|c| c.name().starts_with("UnicastRTP/"))
        .unwrap();
    assert_eq!(rtp.variable("UNICASTRTP_LOCAL_PORT"), Some("10028"));
    assert!(tracker.is_empty());
    assert_eq!(run.client.metrics().events, 64, "FullyBooted and the call");
}

#[tokio::test]
async fn a_connection_dropped_mid_call_reconnects_with_backoff_and_the_call_completes() {
    let mut peer = Peer::start().await;
    let mut cfg = config(&[("pbx-a", peer.addr)]);
    cfg.backoff_min_ms = 200;
    cfg.backoff_max_ms = 400;
    let mut run = start(cfg);
    wait_up(&run.client).await;
    assert!(next_event(&mut run.events).await.is("FullyBooted"));

    let blocks = event_blocks();
    let (before, after) = blocks.split_at(40);
    let mut tracker = ChannelTracker::default();
    let mut changes = Vec::new();
    peer.send(before.concat());
    let mut seen = 0;
    while seen < before.len() {
        seen += pump(&mut run.events, &mut tracker, &mut changes, |_| true).await;
    }
    assert_eq!(tracker.len(), 3, "all three channels up mid-call");

    // An action in flight when the connection drops fails at once.
    let c = run.client.clone();
    let in_flight = tokio::spawn(async move { c.action(getvar("BRIDGEPEER")).await });
    peer.next_action().await;
    let dropped_at = Instant::now();
    peer.drop_connection();
    let e = in_flight.await.unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert!(
        dropped_at.elapsed() < Duration::from_secs(4),
        "not the 8 s timeout"
    );

    assert_eq!(wait_up(&run.client).await, "pbx-a");
    let logins = peer.received("Login");
    assert_eq!(logins.len(), 2);
    assert_eq!((logins[0].connection, logins[1].connection), (1, 2));
    let waited = logins[1].at - dropped_at;
    assert!(
        waited >= Duration::from_millis(200),
        "reconnected after {waited:?}"
    );
    let m = run.client.metrics();
    assert_eq!((m.reconnects, m.disconnects), (1, 1));
    assert!(next_event(&mut run.events).await.is("FullyBooted"));

    // The rest of the call arrives on the new connection.
    peer.send(after.concat());
    pump(&mut run.events, &mut tracker, &mut changes, |e| {
        e.is("BridgeDestroy")
    })
    .await;
    assert_eq!(hung_up(&changes).len(), 3);
    assert!(tracker.is_empty());
}

#[tokio::test]
async fn fails_over_to_the_second_server_when_the_first_refuses() {
    // A port nobody listens on: bound, then released.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let peer = Peer::start().await;
    let run = start(config(&[("pbx-a", dead_addr), ("pbx-b", peer.addr)]));

    assert_eq!(wait_up(&run.client).await, "pbx-b");
    assert!(run.client.metrics().connect_failures >= 1);

    // Lost again: round robin tries pbx-a (refused), then pbx-b again.
    peer.drop_connection();
    eventually("second login on pbx-b", || {
        peer.received("Login").len() == 2
    })
    .await;
    assert_eq!(wait_up(&run.client).await, "pbx-b");
    assert!(run.client.metrics().connect_failures >= 2);
    assert_eq!(run.client.reconnects(), 1);
}

#[tokio::test]
async fn keepalive_detects_a_peer_that_stops_answering() {
    let peer = Peer::start().await;
    let mut cfg = config(&[("pbx-a", peer.addr)]);
    // A Ping has a whole interval to be answered: ample on a busy machine.
    cfg.keepalive_interval_ms = 300;
    let run = start(cfg);
    wait_up(&run.client).await;

    eventually("pings answered", || peer.received("Ping").len() >= 3).await;
    assert_eq!(run.client.metrics().keepalive_failures, 0);
    assert_eq!(peer.connections(), 1);
    let ping = &peer.received("Ping")[0];
    assert!(ping.id().starts_with("mgw-1-"), "{ping:?}");

    peer.state.answer_pings.store(false, Ordering::SeqCst);
    eventually("dead link detected", || {
        run.client.metrics().keepalive_failures >= 1
    })
    .await;
    eventually("reconnected", || peer.connections() >= 2).await;
    assert!(peer.received("Login").len() >= 2);
}

/// Deterministic junk: every byte value, line ends, colons, invalid UTF-8.
fn garbage(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x2545_F491;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            match x % 16 {
                0 => b'\n',
                1 => b'\r',
                2 => b':',
                _ => (x >> 8) as u8,
            }
        })
        .collect()
}

#[tokio::test]
async fn garbage_from_the_peer_is_skipped_and_the_link_lives_on() {
    let peer = Peer::start().await;
    let mut run = start(config(&[("pbx-a", peer.addr)]));
    wait_up(&run.client).await;
    assert!(next_event(&mut run.events).await.is("FullyBooted"));

    peer.send(garbage(64 * 1024));
    peer.send(b"\r\n\r\n".to_vec());
    // A line longer than the parser's 512 KiB bound.
    peer.send(vec![b'x'; 600 * 1024]);
    peer.send(
        b"\r\n\r\nEvent: Newchannel\r\nChannel: PJSIP/after-00000001\r\nUniqueid: 42.1\r\n\r\n"
            .to_vec(),
    );

    let marker = loop {
        let e = next_event(&mut run.events).await;
        if e.is("Newchannel") && e.value("Uniqueid") == Some("42.1") {
            break e;
        }
    };
    assert_eq!(marker.value("Channel"), Some("PJSIP/after-00000001"));
    assert!(run.client.metrics().parse_errors >= 2);
    // Same connection, still usable.
    let pong = run.client.action(Action::new("Ping")).await.unwrap();
    assert_eq!(pong.value("Ping"), Some("Pong"));
    assert_eq!(peer.connections(), 1);
}

#[tokio::test]
async fn shutdown_sends_logoff_and_stops() {
    let peer = Peer::start().await;
    let mut run = start(config(&[("pbx-a", peer.addr)]));
    wait_up(&run.client).await;

    run.shutdown.cancel();
    let task = &mut run.task;
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("service stops")
        .unwrap()
        .unwrap();
    assert_eq!(peer.received("Logoff").len(), 1);
    assert_eq!(
        *run.client.state().borrow(),
        LinkState::Down {
            reason: "shut down".into()
        }
    );
    let e = run.client.action(Action::new("Ping")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
}

#[tokio::test]
async fn the_event_filter_passes_only_the_configured_events() {
    let peer = Peer::start().await;
    let mut cfg = config(&[("pbx-a", peer.addr)]);
    cfg.events = vec!["Newchannel".into(), "Hangup".into()];
    let mut run = start(cfg);
    wait_up(&run.client).await;

    eventually("filters sent", || peer.received("Filter").len() == 2).await;
    let filters: Vec<String> = peer
        .received("Filter")
        .iter()
        .map(|f| {
            format!(
                "{} {}",
                f.get("Operation").unwrap(),
                f.get("Filter").unwrap()
            )
        })
        .collect();
    assert_eq!(filters, ["Add Event: Newchannel", "Add Event: Hangup"]);

    // Our peer ignores the Filter, like an Asterisk user without the
    // permission would: the client filters anyway.
    peer.send(CALL_EVENTS);
    peer.send(b"Event: Hangup\r\nChannel: X/end\r\nUniqueid: end.1\r\n\r\n".to_vec());
    let mut names = Vec::new();
    loop {
        let e = next_event(&mut run.events).await;
        names.push(e.name().to_owned());
        if e.value("Uniqueid") == Some("end.1") {
            break;
        }
    }
    assert_eq!(names.iter().filter(|n| *n == "Newchannel").count(), 3);
    assert_eq!(names.iter().filter(|n| *n == "Hangup").count(), 4);
    assert_eq!(names.len(), 7);
    // FullyBooted and the 57 other events of the call.
    assert_eq!(run.client.metrics().events_filtered, 58);
}
