//! AMI over TCP: the banner, `Key: Value` actions ended by a blank line,
//! responses and events with CRLF line ends, byte for byte as Asterisk 22
//! writes them (`main/manager.c`).
//!
//! Sans-IO: [`ActionParser`] is fed bytes and yields actions; [`response`]
//! formats answers. The driver (`serve`, `session`) owns the sockets.
//!
//! Actions: Login (plain secret; no MD5 challenge), Logoff, Ping, Events,
//! Originate, Hangup, Getvar, Setvar, Command (`core show version`,
//! `core show channels`, `core show uptime`), CoreShowChannels. Others
//! answer `Invalid/unknown command`, as Asterisk does for unknown ones.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::clock::{ami_ping_timestamp, ast_timestamp};
use super::core::{AmiEvent, Now, atoi};
use super::{AmiSession, Shared};

/// The first line Asterisk writes on an AMI connection.
pub(crate) const BANNER: &str = "Asterisk Call Manager/11.0.0\r\n";

/// Largest action the parser accepts; beyond it the connection is closed.
const MAX_ACTION: usize = 64 * 1024;

/// One AMI action: its headers in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Action {
    headers: Vec<(String, String)>,
}

impl Action {
    /// First value of header `name` (case-insensitive), `""` if absent.
    pub(crate) fn get(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map_or("", |(_, v)| v.as_str())
    }

    /// Every value of a repeatable header (`Variable:`).
    pub(crate) fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Malformed AMI input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParseError {
    /// An action longer than [`MAX_ACTION`] without a blank line.
    TooLong,
}

/// Splits a byte stream into actions. Lines end in CRLF or LF; an empty
/// line ends an action; lines without a colon are ignored, as Asterisk does.
#[derive(Debug, Default)]
pub(crate) struct ActionParser {
    buf: Vec<u8>,
}

impl ActionParser {
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete action, if any.
    pub(crate) fn next_action(&mut self) -> Result<Option<Action>, ParseError> {
        loop {
            let Some(end) = find_blank_line(&self.buf) else {
                return if self.buf.len() > MAX_ACTION {
                    Err(ParseError::TooLong)
                } else {
                    Ok(None)
                };
            };
            let (msg_end, consumed) = end;
            let text = String::from_utf8_lossy(&self.buf[..msg_end]).into_owned();
            self.buf.drain(..consumed);
            let headers: Vec<(String, String)> = text
                .lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| {
                    (
                        k.trim().to_owned(),
                        v.trim_start().trim_end_matches('\r').to_owned(),
                    )
                })
                .collect();
            if headers.is_empty() {
                // Stray blank lines between actions.
                continue;
            }
            return Ok(Some(Action { headers }));
        }
    }
}

/// Position of the end of the first message and how many bytes it takes
/// with its terminating blank line.
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    let mut line_start = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            let line = &buf[line_start..i];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                return Some((line_start, i + 1));
            }
            line_start = i + 1;
        }
        i += 1;
    }
    None
}

/// `Response: <kind>`, `ActionID` when given, then `extra` lines, then the
/// blank line (`astman_send_response_full`).
pub(crate) fn response(kind: &str, action_id: &str, extra: &[(&str, &str)]) -> String {
    let mut s = format!("Response: {kind}\r\n");
    if !action_id.is_empty() {
        let _ = write!(s, "ActionID: {action_id}\r\n");
    }
    for (k, v) in extra {
        let _ = write!(s, "{k}: {v}\r\n");
    }
    s.push_str("\r\n");
    s
}

/// Accepts AMI connections until the double shuts down.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                if shared.gate.is_offline() {
                    super::net::reset(stream);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                tokio::spawn(session(shared.clone(), stream, peer));
            }
            Err(e) => {
                tracing::warn!(error = %e, "ami accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// What to do after an action.
enum After {
    Continue,
    Close,
    /// Wrong credentials: Asterisk waits a second, answers, and hangs up.
    FailAuth(String),
}

async fn session(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Arc<str>>();
    let gen_kill = shared.gate.token();
    let (id, ami_kill) = {
        let mut core = shared.lock();
        let id = core.next_conn_id;
        core.next_conn_id += 1;
        core.ami.insert(
            id,
            AmiSession {
                tx,
                authenticated: false,
                events: false,
                filters: Vec::new(),
                blacklist: Vec::new(),
            },
        );
        (id, core.ami_kill.clone())
    };
    let local = stream.local_addr().unwrap_or(shared.ami_addr);
    let mut parser = ActionParser::default();
    let mut buf = vec![0u8; 4096];
    let cut = 'conn: {
        if stream.write_all(BANNER.as_bytes()).await.is_err() {
            break 'conn false;
        }
        loop {
            tokio::select! {
                _ = shared.shutdown.cancelled() => break 'conn true,
                _ = gen_kill.cancelled() => break 'conn true,
                _ = ami_kill.cancelled() => break 'conn true,
                out = rx.recv() => match out {
                    Some(text) => {
                        if stream.write_all(text.as_bytes()).await.is_err() {
                            break 'conn false;
                        }
                    }
                    None => break 'conn false,
                },
                n = stream.read(&mut buf) => {
                    let n = match n {
                        Ok(0) | Err(_) => break 'conn false,
                        Ok(n) => n,
                    };
                    parser.push(&buf[..n]);
                    loop {
                        let action = match parser.next_action() {
                            Ok(Some(a)) => a,
                            Ok(None) => break,
                            Err(ParseError::TooLong) => {
                                tracing::warn!(%peer, "ami action too long, closing");
                                break 'conn false;
                            }
                        };
                        match handle(&shared, id, &action, local, peer) {
                            After::Continue => {}
                            After::Close => {
                                // Flush what the action queued (Goodbye).
                                while let Ok(text) = rx.try_recv() {
                                    let _ = stream.write_all(text.as_bytes()).await;
                                }
                                break 'conn false;
                            }
                            After::FailAuth(answer) => {
                                tokio::time::sleep(Duration::from_secs(1)).await;
                                let _ = stream.write_all(answer.as_bytes()).await;
                                break 'conn false;
                            }
                        }
                    }
                }
            }
        }
    };
    shared.lock().ami.remove(&id);
    if cut {
        super::net::reset(stream);
    }
}

fn send(shared: &Shared, id: u64, text: String) {
    if let Some(s) = shared.lock().ami.get(&id) {
        let _ = s.tx.send(text.into());
    }
}

fn handle(shared: &Shared, id: u64, a: &Action, local: SocketAddr, peer: SocketAddr) -> After {
    let action = a.get("Action").to_ascii_lowercase();
    let aid = a.get("ActionID");
    let authed = shared.lock().ami.get(&id).is_some_and(|s| s.authenticated);
    if action.is_empty() {
        send(
            shared,
            id,
            response("Error", aid, &[("Message", "Missing action in request")]),
        );
        return After::Continue;
    }
    if !authed && !matches!(action.as_str(), "login" | "logoff" | "challenge") {
        send(
            shared,
            id,
            response("Error", aid, &[("Message", "Permission denied")]),
        );
        return After::Continue;
    }
    match action.as_str() {
        "login" => login(shared, id, a, local, peer),
        "logoff" => {
            send(
                shared,
                id,
                response("Goodbye", aid, &[("Message", "Thanks for all the fish.")]),
            );
            After::Close
        }
        "ping" => {
            let ts = ami_ping_timestamp(Shared::now().wall);
            send(
                shared,
                id,
                response("Success", aid, &[("Ping", "Pong"), ("Timestamp", &ts)]),
            );
            After::Continue
        }
        "events" => {
            let mask = a.get("EventMask").to_ascii_lowercase();
            let on = !(mask == "off" || mask.is_empty());
            if let Some(s) = shared.lock().ami.get_mut(&id) {
                s.events = on;
            }
            send(
                shared,
                id,
                response("Success", aid, &[("Events", if on { "On" } else { "Off" })]),
            );
            After::Continue
        }
        "filter" => {
            // `Operation: Add` (the only one), `Filter: <regex>`, `!` first
            // for a blacklist entry.
            let op = a.get("Operation");
            let filter = a.get("Filter");
            let answer = if !(op.is_empty() || op.eq_ignore_ascii_case("add")) {
                response("Error", aid, &[("Message", "Unknown operation")])
            } else if filter.is_empty() {
                response("Error", aid, &[("Message", "Filter Not Added")])
            } else {
                if let Some(s) = shared.lock().ami.get_mut(&id) {
                    match filter.strip_prefix('!') {
                        Some(black) => s.blacklist.push(black.to_owned()),
                        None => s.filters.push(filter.to_owned()),
                    }
                }
                response("Success", aid, &[("Message", "Filter Added Successfully")])
            };
            send(shared, id, answer);
            After::Continue
        }
        "originate" => originate(shared, id, a),
        "hangup" => {
            let channel = a.get("Channel");
            if channel.is_empty() {
                send(
                    shared,
                    id,
                    response("Error", aid, &[("Message", "No channel specified")]),
                );
                return After::Continue;
            }
            let cause = match atoi(a.get("Cause")) {
                c @ 1..=127 => c as u16,
                _ => 16,
            };
            let found = shared.with(|core, now| core.pbx.ami_hangup(channel, cause, now));
            let answer = if found {
                response("Success", aid, &[("Message", "Channel Hungup")])
            } else {
                response("Error", aid, &[("Message", "No such channel")])
            };
            send(shared, id, answer);
            After::Continue
        }
        "getvar" => {
            let variable = a.get("Variable");
            if variable.is_empty() {
                send(
                    shared,
                    id,
                    response("Error", aid, &[("Message", "No variable specified")]),
                );
                return After::Continue;
            }
            let channel = a.get("Channel");
            let value = if channel.is_empty() {
                Some(String::new())
            } else {
                shared.lock().pbx.ami_getvar(channel, variable)
            };
            let answer = match value {
                Some(v) => response("Success", aid, &[("Variable", variable), ("Value", &v)]),
                None => response("Error", aid, &[("Message", "No such channel")]),
            };
            send(shared, id, answer);
            After::Continue
        }
        "setvar" => {
            let variable = a.get("Variable");
            if variable.is_empty() {
                send(
                    shared,
                    id,
                    response("Error", aid, &[("Message", "No variable specified")]),
                );
                return After::Continue;
            }
            let channel = a.get("Channel");
            let ok = channel.is_empty()
                || shared
                    .with(|core, now| core.pbx.ami_setvar(channel, variable, a.get("Value"), now));
            let answer = if ok {
                response("Success", aid, &[("Message", "Variable Set")])
            } else {
                response("Error", aid, &[("Message", "No such channel")])
            };
            send(shared, id, answer);
            After::Continue
        }
        "command" => {
            send(shared, id, command(shared, aid, a.get("Command")));
            After::Continue
        }
        "coreshowchannels" => {
            let now = Shared::now();
            let mut text = response(
                "Success",
                aid,
                &[("EventList", "start"), ("Message", "Channels will follow")],
            );
            let events = shared.lock().pbx.core_show_channels(aid, now);
            let n = events.len();
            for e in events {
                text.push_str(&e);
            }
            let mut done = AmiEvent::new_no_privilege("CoreShowChannelsComplete");
            if !aid.is_empty() {
                done = done.kv("ActionID", aid);
            }
            text.push_str(
                &done
                    .kv("EventList", "Complete")
                    .kv("ListItems", &n.to_string())
                    .done(),
            );
            send(shared, id, text);
            After::Continue
        }
        _ => {
            send(
                shared,
                id,
                response("Error", aid, &[("Message", "Invalid/unknown command")]),
            );
            After::Continue
        }
    }
}

fn login(shared: &Shared, id: u64, a: &Action, local: SocketAddr, peer: SocketAddr) -> After {
    let aid = a.get("ActionID");
    if shared.lock().ami.get(&id).is_some_and(|s| s.authenticated) {
        send(
            shared,
            id,
            response("Success", aid, &[("Message", "Already authenticated")]),
        );
        return After::Continue;
    }
    let ok = a.get("Username") == shared.cfg.ami_user
        && a.get("Secret") == shared.cfg.ami_secret
        && !a.get("AuthType").eq_ignore_ascii_case("md5");
    if !ok {
        return After::FailAuth(response(
            "Error",
            aid,
            &[("Message", "Authentication failed")],
        ));
    }
    let events = !a.get("Events").eq_ignore_ascii_case("off");
    shared.counters.ami_logins.fetch_add(1, Ordering::Relaxed);
    shared.with(|core, now| {
        let startup = core.pbx.startup();
        let Some(s) = core.ami.get_mut(&id) else {
            return;
        };
        s.authenticated = true;
        s.events = events;
        let _ =
            s.tx.send(response("Success", aid, &[("Message", "Authentication accepted")]).into());
        if events {
            let uptime = now
                .wall
                .duration_since(startup)
                .map(|d| d.as_secs())
                .unwrap_or(0)
                .to_string();
            let booted = AmiEvent::new("FullyBooted", "system,all")
                .kv("Uptime", &uptime)
                .kv("LastReload", &uptime)
                .kv("Status", "Fully Booted")
                .done();
            let _ = s.tx.send(booted.into());
        }
        let tv = ast_timestamp(now.wall);
        let auth = successful_auth(&shared.cfg.ami_user, &tv, local, peer, now);
        let auth: Arc<str> = auth.into();
        for s in core.ami.values().filter(|s| s.wants(&auth)) {
            let _ = s.tx.send(auth.clone());
        }
    });
    After::Continue
}

fn successful_auth(user: &str, tv: &str, local: SocketAddr, peer: SocketAddr, _now: Now) -> String {
    AmiEvent::new("SuccessfulAuth", "security,all")
        .kv("EventTV", tv)
        .kv("Severity", "Informational")
        .kv("Service", "AMI")
        .kv("EventVersion", "1")
        .kv("AccountID", user)
        .kv(
            "SessionID",
            &format!("0x7f{:010x}", rand::random::<u64>() & 0xff_ffff_fff0),
        )
        .kv(
            "LocalAddress",
            &format!("IPV4/TCP/{}/{}", local.ip(), local.port()),
        )
        .kv(
            "RemoteAddress",
            &format!("IPV4/TCP/{}/{}", peer.ip(), peer.port()),
        )
        .kv("UsingPassword", "0")
        .kv("SessionTV", tv)
        .done()
}

fn originate(shared: &Shared, id: u64, a: &Action) -> After {
    let aid = a.get("ActionID");
    let channel = a.get("Channel");
    if channel.is_empty() {
        send(
            shared,
            id,
            response("Error", aid, &[("Message", "Channel not specified")]),
        );
        return After::Continue;
    }
    if a.get("Application").is_empty() && a.get("Exten").is_empty() && !channel.contains('@') {
        send(
            shared,
            id,
            response("Error", aid, &[("Message", "Exten not specified")]),
        );
        return After::Continue;
    }
    send(
        shared,
        id,
        response(
            "Success",
            aid,
            &[("Message", "Originate successfully queued")],
        ),
    );
    let (context, exten) = (a.get("Context").to_owned(), a.get("Exten").to_owned());
    let vars: Vec<(String, String)> = a
        .all("Variable")
        .iter()
        .flat_map(|v| v.split(','))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .collect();
    shared.with(|core, now| {
        match core.pbx.ami_originate(
            channel,
            a.get("Application"),
            a.get("Data"),
            a.get("CallerID"),
            &vars,
            now,
        ) {
            Ok(chan) => core
                .pbx
                .ami_originate_response(aid, &chan, &context, &exten),
            Err(e) => tracing::debug!(error = %e, "ami originate failed"),
        }
    });
    After::Continue
}

fn command(shared: &Shared, aid: &str, cmd: &str) -> String {
    let cmd = cmd.split_whitespace().collect::<Vec<_>>().join(" ");
    let lines: Option<Vec<String>> = match cmd.as_str() {
        "core show version" => Some(vec![
            "Asterisk 22.10.1 built by root @ mediagw-testkit on a x86_64 running Linux".to_owned(),
        ]),
        "core show channels" => Some(shared.lock().pbx.cli_show_channels()),
        "core show uptime" => {
            let startup = shared.lock().pbx.startup();
            let secs = Shared::now()
                .wall
                .duration_since(startup)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            Some(vec![
                format!("System uptime: {secs} seconds"),
                format!("Last reload: {secs} seconds"),
            ])
        }
        _ => None,
    };
    let (kind, lines) = match lines {
        Some(l) => ("Success", l),
        None => (
            "Error",
            vec![format!(
                "No such command '{cmd}' (type 'core show help {cmd}' for other possible commands)"
            )],
        ),
    };
    let mut s = format!("Response: {kind}\r\n");
    if !aid.is_empty() {
        let _ = write!(s, "ActionID: {aid}\r\n");
    }
    s.push_str("Message: Command output follows\r\n");
    for l in lines {
        let _ = write!(s, "Output: {l}\r\n");
    }
    s.push_str("\r\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_actions_split_anywhere() {
        let input = b"Action: Login\r\nUsername: gw\r\nSecret: gwsecret\r\nActionID: login-1\r\n\r\nAction: Ping\nActionID: p\n\n";
        for split in 0..input.len() {
            let mut p = ActionParser::default();
            p.push(&input[..split]);
            let mut got = Vec::new();
            while let Some(a) = p.next_action().expect("parse") {
                got.push(a);
            }
            p.push(&input[split..]);
            while let Some(a) = p.next_action().expect("parse") {
                got.push(a);
            }
            assert_eq!(got.len(), 2, "split at {split}");
            assert_eq!(got[0].get("action"), "Login");
            assert_eq!(got[0].get("Secret"), "gwsecret");
            assert_eq!(got[1].get("ActionID"), "p");
        }
    }

    #[test]
    fn rejects_endless_actions_and_skips_garbage() {
        let mut p = ActionParser::default();
        p.push(&vec![b'x'; MAX_ACTION + 1]);
        assert_eq!(p.next_action(), Err(ParseError::TooLong));
        let mut p = ActionParser::default();
        p.push(b"\r\n\r\nno colon here\r\n\r\n\xff\xfe: v\r\nAction: Ping\r\n\r\n");
        let a = p.next_action().expect("parse").expect("action");
        assert_eq!(a.get("Action"), "Ping");
        assert_eq!(a.all("\u{fffd}\u{fffd}"), ["v"]);
    }

    #[test]
    fn response_bytes() {
        assert_eq!(
            response(
                "Success",
                "login-1",
                &[("Message", "Authentication accepted")]
            ),
            "Response: Success\r\nActionID: login-1\r\nMessage: Authentication accepted\r\n\r\n"
        );
        assert_eq!(
            response("Error", "", &[("Message", "x")]),
            "Response: Error\r\nMessage: x\r\n\r\n"
        );
    }
}
