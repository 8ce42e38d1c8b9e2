//! ARI over HTTP and WebSocket (axum): authentication (basic or
//! `api_key=user:pass`), routing of the REST resources the gateway uses to
//! the [`Pbx`](super::core::Pbx), Asterisk's status codes and
//! `{"message": ...}` bodies, one-shot injected failures, artificial latency,
//! the REST log, and the events WebSocket of each Stasis application.
//!
//! Resources of Asterisk's API that the double does not simulate answer 501
//! with a message saying so (never a silent success); unknown paths answer
//! 404 `Resource not found` and known paths with the wrong method 405
//! `Invalid method`, as Asterisk does.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::ws::{
    Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::core::{ApiError, ExternalMedia, Originate, RecordParams, Reply, atoi};
use super::json::Obj;
use super::net::GatedListener;
use super::{FailRule, RestLogEntry, Shared, WsConn};

/// Serves ARI on `listener` until the double shuts down; the task ends
/// once the listener is closed.
pub(crate) fn serve(shared: Arc<Shared>, listener: TcpListener) -> tokio::task::JoinHandle<()> {
    let listener = GatedListener {
        inner: listener,
        gate: shared.gate.clone(),
    };
    let shutdown = shared.shutdown.clone();
    let app = Router::new()
        .route("/ari/events", any(events))
        .fallback(rest)
        .with_state(shared);
    tokio::spawn(async move {
        let server = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await });
        if let Err(e) = server.await {
            tracing::warn!(error = %e, "ari server ended");
        }
    })
}

/// Query and body parameters, in order; repeated names and comma lists are
/// both kept.
#[derive(Debug, Default)]
struct Params {
    pairs: Vec<(String, String)>,
    variables: Vec<(String, String)>,
}

impl Params {
    fn get(&self, name: &str) -> &str {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }

    /// An `allowMultiple` parameter: every occurrence, split on commas.
    fn list(&self, name: &str) -> Vec<String> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == name)
            .flat_map(|(_, v)| v.split(',').map(|s| s.trim().to_owned()))
            .filter(|s| !s.is_empty())
            .collect()
    }

    fn int(&self, name: &str) -> i64 {
        atoi(self.get(name))
    }
}

fn parse_params(query: &str, body: &[u8], headers: &HeaderMap) -> Result<Params, ApiError> {
    let mut p = Params {
        pairs: url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect(),
        variables: Vec::new(),
    };
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if body.iter().all(u8::is_ascii_whitespace) || !json_body {
        return Ok(p);
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| ApiError {
        status: 400,
        message: "Error parsing request body".to_owned(),
    })?;
    if let serde_json::Value::Object(map) = value {
        for (k, v) in map {
            match (k.as_str(), v) {
                ("variables", serde_json::Value::Object(vars)) => {
                    for (name, val) in vars {
                        match val {
                            serde_json::Value::String(s) => p.variables.push((name, s)),
                            _ => {
                                return Err(ApiError {
                                    status: 400,
                                    message: "Only string values in the 'variables' object allowed"
                                        .to_owned(),
                                });
                            }
                        }
                    }
                }
                (_, serde_json::Value::String(s)) => p.pairs.push((k, s)),
                (_, serde_json::Value::Array(items)) => {
                    let joined: Vec<String> = items
                        .into_iter()
                        .map(|i| match i {
                            serde_json::Value::String(s) => s,
                            other => other.to_string(),
                        })
                        .collect();
                    p.pairs.push((k, joined.join(",")));
                }
                (_, serde_json::Value::Null) => {}
                (_, other) => p.pairs.push((k, other.to_string())),
            }
        }
    }
    Ok(p)
}

/// Checks basic auth or `api_key=user:pass`.
fn authorized(shared: &Shared, headers: &HeaderMap, query: &str) -> bool {
    let want = (
        shared.cfg.ari_user.as_str(),
        shared.cfg.ari_password.as_str(),
    );
    if let Some(key) = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "api_key")
        .map(|(_, v)| v)
    {
        return key.split_once(':') == Some(want);
    }
    let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(b64) = auth
        .strip_prefix("Basic ")
        .or_else(|| auth.strip_prefix("basic "))
    else {
        return false;
    };
    let Some(decoded) = base64_decode(b64.trim()) else {
        return false;
    };
    let Ok(text) = String::from_utf8(decoded) else {
        return false;
    };
    text.split_once(':') == Some(want)
}

/// Standard base64 with padding, as HTTP basic auth uses.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = s.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | val(c)?;
        }
        n <<= 6 * pad as u32;
        let b = n.to_be_bytes();
        out.extend_from_slice(&b[1..4 - pad]);
    }
    Some(out)
}

fn message(status: u16, msg: &str) -> (u16, Option<String>) {
    (status, Some(Obj::new().str("message", msg).finish()))
}

fn reply_parts(r: Result<Reply, ApiError>) -> (u16, Option<String>, Option<String>) {
    match r {
        Ok(Reply::Json(j)) => (200, Some(j), None),
        Ok(Reply::Created { location, json }) => (201, Some(json), Some(location)),
        Ok(Reply::NoContent) => (204, None, None),
        Err(e) => {
            let (s, b) = message(e.status, &e.message);
            (s, b, None)
        }
    }
}

fn take_fail_rule(rules: &mut Vec<FailRule>, method: &str, path: &str) -> Option<FailRule> {
    let i = rules.iter().position(|r| {
        (r.method.is_empty() || r.method == method) && path.starts_with(&r.path_prefix)
    })?;
    Some(rules.remove(i))
}

fn log(shared: &Shared, entry: RestLogEntry) {
    let mut core = shared.lock();
    if core.rest_log.len() >= shared.cfg.rest_log_limit.max(1) {
        core.rest_log.remove(0);
    }
    core.rest_log.push(entry);
}

/// Every ARI REST request.
#[allow(clippy::disallowed_methods)] // driver: measures its own cost
async fn rest(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(lat) = shared.cfg.rest_latency {
        tokio::time::sleep(lat).await;
    }
    let started = Instant::now();
    let path = uri.path().to_owned();
    let query = uri.query().unwrap_or("").to_owned();
    let (status, json, location) = if !path.starts_with("/ari/") && path != "/ari" {
        (404, None, None)
    } else if !authorized(&shared, &headers, &query) {
        let (s, b) = message(401, "Authentication required");
        (s, b, None)
    } else {
        let sub = path.trim_start_matches("/ari");
        let injected = take_fail_rule(&mut shared.lock().fail_rules, method.as_str(), sub);
        match injected {
            Some(rule) => {
                let (s, b) = message(rule.status, &rule.message);
                (s, b, None)
            }
            None => match parse_params(&query, &body, &headers) {
                Err(e) => reply_parts(Err(e)),
                Ok(params) => dispatch(&shared, &method, sub, &params),
            },
        }
    };
    shared
        .counters
        .rest_requests
        .fetch_add(1, Ordering::Relaxed);
    shared
        .counters
        .rest_busy_ns
        .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    log(
        &shared,
        RestLogEntry {
            method: method.to_string(),
            path: path.clone(),
            query,
            body: String::from_utf8_lossy(&body).into_owned(),
            status,
        },
    );
    let has_json = json.is_some();
    let mut resp = match json {
        Some(j) => Response::new(Body::from(j)),
        None if status == 404 => Response::new(Body::from("Not Found")),
        None => Response::new(Body::empty()),
    };
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(header::SERVER, HeaderValue::from_static("Asterisk/22.10.1"));
    if has_json {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    if let Some(loc) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        h.insert(header::LOCATION, loc);
    }
    if status == 401 {
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"Asterisk REST Interface\""),
        );
    }
    resp
}

/// Swagger resources of Asterisk 22 and their methods, for 404/405/501.
const KNOWN: &[(&str, &[&str])] = &[
    ("channels", &["GET", "POST"]),
    ("channels/create", &["POST"]),
    ("channels/externalMedia", &["POST"]),
    ("channels/*", &["GET", "POST", "DELETE"]),
    ("channels/*/continue", &["POST"]),
    ("channels/*/move", &["POST"]),
    ("channels/*/redirect", &["POST"]),
    ("channels/*/answer", &["POST"]),
    ("channels/*/ring", &["POST", "DELETE"]),
    ("channels/*/progress", &["POST"]),
    ("channels/*/dtmf", &["POST"]),
    ("channels/*/mute", &["POST", "DELETE"]),
    ("channels/*/hold", &["POST", "DELETE"]),
    ("channels/*/moh", &["POST", "DELETE"]),
    ("channels/*/silence", &["POST", "DELETE"]),
    ("channels/*/play", &["POST"]),
    ("channels/*/play/*", &["POST"]),
    ("channels/*/record", &["POST"]),
    ("channels/*/variable", &["GET", "POST"]),
    ("channels/*/variables", &["GET", "POST"]),
    ("channels/*/snoop", &["POST"]),
    ("channels/*/snoop/*", &["POST"]),
    ("channels/*/dial", &["POST"]),
    ("channels/*/rtp_statistics", &["GET"]),
    ("channels/*/transfer_progress", &["POST"]),
    ("bridges", &["GET", "POST"]),
    ("bridges/*", &["GET", "POST", "DELETE"]),
    ("bridges/*/variable", &["GET", "POST"]),
    ("bridges/*/variables", &["GET", "POST"]),
    ("bridges/*/addChannel", &["POST"]),
    ("bridges/*/removeChannel", &["POST"]),
    ("bridges/*/videoSource/*", &["POST"]),
    ("bridges/*/videoSource", &["DELETE"]),
    ("bridges/*/moh", &["POST", "DELETE"]),
    ("bridges/*/play", &["POST"]),
    ("bridges/*/play/*", &["POST"]),
    ("bridges/*/record", &["POST"]),
    ("recordings/stored", &["GET"]),
    ("recordings/stored/*", &["GET", "DELETE"]),
    ("recordings/stored/*/file", &["GET"]),
    ("recordings/stored/*/copy", &["POST"]),
    ("recordings/live/*", &["GET", "DELETE"]),
    ("recordings/live/*/stop", &["POST"]),
    ("recordings/live/*/pause", &["POST", "DELETE"]),
    ("recordings/live/*/mute", &["POST", "DELETE"]),
    ("asterisk/info", &["GET"]),
    ("asterisk/ping", &["GET"]),
    ("asterisk/modules", &["GET"]),
    ("asterisk/modules/*", &["GET", "POST", "DELETE", "PUT"]),
    ("asterisk/logging", &["GET"]),
    ("asterisk/logging/*", &["POST", "DELETE"]),
    ("asterisk/logging/*/rotate", &["PUT"]),
    ("asterisk/variable", &["GET", "POST"]),
    ("asterisk/config/dynamic/*/*/*", &["GET", "PUT", "DELETE"]),
    ("events/user/*", &["POST"]),
    ("events/claim", &["POST"]),
    ("applications", &["GET"]),
    ("applications/*", &["GET"]),
    ("applications/*/subscription", &["POST", "DELETE"]),
    ("applications/*/eventFilter", &["PUT"]),
    ("endpoints", &["GET"]),
    ("endpoints/sendMessage", &["PUT"]),
    ("endpoints/refer", &["POST"]),
    ("endpoints/*", &["GET"]),
    ("endpoints/*/*", &["GET"]),
    ("endpoints/*/*/sendMessage", &["PUT"]),
    ("endpoints/*/*/refer", &["POST"]),
    ("sounds", &["GET"]),
    ("sounds/*", &["GET"]),
    ("playbacks/*", &["GET", "DELETE"]),
    ("playbacks/*/control", &["POST"]),
    ("deviceStates", &["GET"]),
    ("deviceStates/*", &["GET", "PUT", "DELETE"]),
    ("mailboxes", &["GET"]),
    ("mailboxes/*", &["GET", "PUT", "DELETE"]),
];

/// 405 for a known resource with another method, 501 for a known
/// operation the double does not simulate, 404 otherwise.
fn unrouted(method: &Method, segs: &[&str]) -> (u16, Option<String>, Option<String>) {
    let matches = |pattern: &str| {
        let p: Vec<&str> = pattern.split('/').collect();
        p.len() == segs.len() && p.iter().zip(segs).all(|(a, b)| *a == "*" || a == b)
    };
    // Literal resources win over wildcards (channels/create vs channels/*).
    let mut found: Option<&[&str]> = None;
    for (pattern, methods) in KNOWN {
        if matches(pattern) {
            if !pattern.contains('*') {
                found = Some(methods);
                break;
            }
            found.get_or_insert(methods);
        }
    }
    let (s, b) = match found {
        None => message(404, "Resource not found"),
        Some(methods) if !methods.contains(&method.as_str()) => message(405, "Invalid method"),
        Some(_) => message(501, "Not implemented by the Asterisk test double"),
    };
    (s, b, None)
}

fn dispatch(
    shared: &Arc<Shared>,
    method: &Method,
    sub: &str,
    p: &Params,
) -> (u16, Option<String>, Option<String>) {
    let segs: Vec<&str> = sub
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let rtp = shared.rtp.clone();
    let m = method.as_str();
    let r = match (m, segs.as_slice()) {
        ("GET", ["channels"]) => shared.with(|c, _| Ok(c.pbx.list_channels())),
        ("POST", ["channels"]) => {
            shared.with(|c, now| c.pbx.originate(originate_params(p, ""), now))
        }
        ("POST", ["channels", "externalMedia"]) => {
            let em = ExternalMedia {
                channel_id: p.get("channelId").to_owned(),
                app: p.get("app").to_owned(),
                external_host: p.get("external_host").to_owned(),
                encapsulation: p.get("encapsulation").to_owned(),
                transport: p.get("transport").to_owned(),
                connection_type: p.get("connection_type").to_owned(),
                format: p.get("format").to_owned(),
                direction: p.get("direction").to_owned(),
                data: p.get("data").to_owned(),
                variables: p.variables.clone(),
            };
            shared.with(|c, now| {
                c.pbx
                    .external_media(em, &mut |id, fmt, remote| rtp.open(id, fmt, remote), now)
            })
        }
        ("POST", ["channels", "create"]) => return unrouted(method, &segs),
        ("GET", ["channels", id]) => shared.with(|c, _| c.pbx.get_channel(id)),
        ("POST", ["channels", id]) => {
            shared.with(|c, now| c.pbx.originate(originate_params(p, id), now))
        }
        ("DELETE", ["channels", id]) => shared.with(|c, now| {
            c.pbx
                .hangup_request(id, p.get("reason"), p.get("reason_code"), now)
        }),
        ("POST", ["channels", id, "answer"]) => shared.with(|c, now| c.pbx.answer(id, now)),
        ("POST", ["channels", id, "continue"]) => {
            shared.with(|c, now| c.pbx.continue_in_dialplan(id, now))
        }
        ("POST" | "DELETE", ["channels", id, "ring" | "hold" | "moh" | "silence" | "mute"])
        | ("POST", ["channels", id, "progress"]) => {
            if let Some(dir) = Some(p.get("direction")).filter(|d| !d.is_empty())
                && !["both", "in", "out"].contains(&dir)
            {
                return reply_parts(Err(ApiError {
                    status: 400,
                    message: "Invalid direction specified".to_owned(),
                }));
            }
            shared.with(|c, _| c.pbx.accept_control_op(id))
        }
        ("GET", ["channels", id, "variable"]) => {
            shared.with(|c, _| c.pbx.get_var(id, p.get("variable")))
        }
        ("POST", ["channels", id, "variable"]) => {
            shared.with(|c, now| c.pbx.set_var(id, p.get("variable"), p.get("value"), now))
        }
        ("GET", ["bridges"]) => shared.with(|c, _| Ok(c.pbx.list_bridges())),
        ("POST", ["bridges"]) => shared.with(|c, now| {
            c.pbx
                .create_bridge(p.get("type"), p.get("bridgeId"), p.get("name"), now)
        }),
        ("GET", ["bridges", id]) => shared.with(|c, _| c.pbx.get_bridge(id)),
        ("POST", ["bridges", id]) => {
            shared.with(|c, now| c.pbx.create_bridge(p.get("type"), id, p.get("name"), now))
        }
        ("DELETE", ["bridges", id]) => shared.with(|c, now| c.pbx.destroy_bridge(id, now)),
        ("POST", ["bridges", id, "addChannel"]) => {
            shared.with(|c, now| c.pbx.add_channels(id, &p.list("channel"), now))
        }
        ("POST", ["bridges", id, "removeChannel"]) => {
            shared.with(|c, now| c.pbx.remove_channels(id, &p.list("channel"), now))
        }
        ("POST", ["bridges", id, "record"]) => {
            let rp = RecordParams {
                name: p.get("name").to_owned(),
                format: p.get("format").to_owned(),
                max_duration_seconds: p.int("maxDurationSeconds"),
                max_silence_seconds: p.int("maxSilenceSeconds"),
                if_exists: p.get("ifExists").to_owned(),
                terminate_on: p.get("terminateOn").to_owned(),
            };
            shared.with(|c, now| c.pbx.record_bridge(id, rp, now))
        }
        ("GET", ["recordings", "stored"]) => shared.with(|c, _| Ok(c.pbx.list_stored())),
        ("GET", ["recordings", "stored", name]) => shared.with(|c, _| c.pbx.get_stored(name)),
        ("DELETE", ["recordings", "stored", name]) => shared.with(|c, _| c.pbx.delete_stored(name)),
        ("GET", ["recordings", "live", name]) => shared.with(|c, _| c.pbx.get_live_recording(name)),
        ("DELETE", ["recordings", "live", name]) => {
            shared.with(|c, now| c.pbx.cancel_recording(name, now))
        }
        ("POST", ["recordings", "live", name, "stop"]) => {
            shared.with(|c, now| c.pbx.stop_recording(name, now))
        }
        ("GET", ["asterisk", "info"]) => {
            shared.with(|c, _| Ok(c.pbx.asterisk_info(&p.list("only"))))
        }
        ("GET", ["asterisk", "ping"]) => shared.with(|c, now| Ok(c.pbx.ping(now))),
        ("GET", ["applications"]) => shared.with(|c, _| Ok(c.pbx.list_applications())),
        ("GET", ["applications", name]) => shared.with(|c, _| c.pbx.get_application(name)),
        ("PUT", ["applications", name, "eventFilter"]) => {
            // The body's lists arrive joined: `{"type":"A"},{"type":"B"}`.
            let list = |key: &str| -> Result<Option<Vec<String>>, ApiError> {
                if !p.pairs.iter().any(|(k, _)| k == key) {
                    return Ok(None);
                }
                let items: Vec<serde_json::Value> =
                    serde_json::from_str(&format!("[{}]", p.get(key))).map_err(|_| ApiError {
                        status: 400,
                        message: "Bad request.".to_owned(),
                    })?;
                Ok(Some(
                    items
                        .iter()
                        .filter_map(|i| i["type"].as_str().map(str::to_owned))
                        .collect(),
                ))
            };
            match (list("allowed"), list("disallowed")) {
                (Ok(a), Ok(d)) => shared.with(|c, _| c.pbx.set_event_filter(name, a, d)),
                (Err(e), _) | (_, Err(e)) => Err(e),
            }
        }
        _ => return unrouted(method, &segs),
    };
    reply_parts(r)
}

fn originate_params(p: &Params, channel_id: &str) -> Originate {
    Originate {
        endpoint: p.get("endpoint").to_owned(),
        extension: p.get("extension").to_owned(),
        context: p.get("context").to_owned(),
        priority: p.int("priority"),
        app: p.get("app").to_owned(),
        app_args: p.get("appArgs").to_owned(),
        caller_id: p.get("callerId").to_owned(),
        channel_id: if channel_id.is_empty() {
            p.get("channelId").to_owned()
        } else {
            channel_id.to_owned()
        },
        other_channel_id: p.get("otherChannelId").to_owned(),
        originator: p.get("originator").to_owned(),
        formats: p.get("formats").to_owned(),
        variables: p.variables.clone(),
    }
}

/// `GET /ari/events?app=...`: the WebSocket of one or more Stasis apps.
async fn events(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let query = uri.query().unwrap_or("").to_owned();
    let entry = |status: u16| RestLogEntry {
        method: "GET".to_owned(),
        path: uri.path().to_owned(),
        query: query.clone(),
        body: String::new(),
        status,
    };
    if !authorized(&shared, &headers, &query) {
        log(&shared, entry(401));
        let mut r = (
            StatusCode::UNAUTHORIZED,
            Obj::new()
                .str("message", "Authentication required")
                .finish(),
        )
            .into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"Asterisk REST Interface\""),
        );
        return r;
    }
    let params = Params {
        pairs: url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect(),
        variables: Vec::new(),
    };
    let apps = params.list("app");
    if apps.is_empty() {
        log(&shared, entry(400));
        return (
            StatusCode::BAD_REQUEST,
            "HTTP request is missing param: [app]",
        )
            .into_response();
    }
    if shared.cfg.strict_apps && apps.iter().any(|a| !shared.cfg.apps.contains(a)) {
        log(&shared, entry(400));
        return (
            StatusCode::BAD_REQUEST,
            "Invalid application provided in param [app].",
        )
            .into_response();
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            log(&shared, entry(rejection.status().as_u16()));
            return rejection.into_response();
        }
    };
    log(&shared, entry(101));
    ws.on_upgrade(move |socket| ws_session(shared, socket, apps))
}

async fn ws_session(shared: Arc<Shared>, socket: WebSocket, apps: Vec<String>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let gen_kill = shared.gate.token();
    let (conn_id, ws_kill) = {
        let mut core = shared.lock();
        let conn_id = core.next_conn_id;
        core.next_conn_id += 1;
        for app in &apps {
            // A new WebSocket for an app replaces the old one, as
            // stasis_app_register does.
            core.ws.insert(
                app.clone(),
                WsConn {
                    conn_id,
                    tx: tx.clone(),
                },
            );
            core.pbx.activate_app(app);
        }
        core.ws_open.insert(conn_id, apps.clone());
        (conn_id, core.ws_kill.clone())
    };
    shared.counters.ws_connects.fetch_add(1, Ordering::Relaxed);
    drop(tx);
    let (mut sink, mut stream) = socket.split();
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            _ = gen_kill.cancelled() => break,
            _ = ws_kill.cancelled() => break,
            msg = rx.recv() => match msg {
                Some(text) => {
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            incoming = stream.next() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let mut core = shared.lock();
    core.ws_open.remove(&conn_id);
    for app in &apps {
        if core.ws.get(app).is_some_and(|c| c.conn_id == conn_id) {
            core.ws.remove(app);
            core.pbx.deactivate_app(app);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_basic_auth() {
        assert_eq!(
            base64_decode("Z3c6Z3dzZWNyZXQ=").as_deref(),
            Some(&b"gw:gwsecret"[..])
        );
        assert_eq!(base64_decode("YQ==").as_deref(), Some(&b"a"[..]));
        assert_eq!(base64_decode("YWI=").as_deref(), Some(&b"ab"[..]));
        assert!(base64_decode("Y").is_none());
        assert!(base64_decode("Y!==").is_none());
    }

    #[test]
    fn unrouted_statuses() {
        assert_eq!(unrouted(&Method::GET, &["nothing"]).0, 404);
        assert_eq!(unrouted(&Method::PUT, &["channels"]).0, 405);
        assert_eq!(unrouted(&Method::POST, &["channels", "x", "play"]).0, 501);
        assert_eq!(unrouted(&Method::GET, &["channels", "create"]).0, 405);
    }

    #[test]
    fn params_merge_body_and_lists() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let p = parse_params(
            "channel=a,b&channel=c&x=1",
            br#"{"x":"2","variables":{"K":"V"},"n":5}"#,
            &h,
        )
        .expect("params");
        assert_eq!(p.list("channel"), ["a", "b", "c"]);
        assert_eq!(p.get("x"), "2");
        assert_eq!(p.int("n"), 5);
        assert_eq!(p.variables, [("K".to_owned(), "V".to_owned())]);
        let bad =
            parse_params("", br#"{"variables":{"K":1}}"#, &h).expect_err("non-string variable");
        assert_eq!(bad.status, 400);
        assert_eq!(
            parse_params("", b"{nope", &h)
                .expect_err("bad json")
                .message,
            "Error parsing request body"
        );
    }
}
