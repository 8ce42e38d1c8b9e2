//! The ARI client against a small Asterisk stand-in (axum, loopback, port
//! 0) that answers as the recorded Asterisk 22.10.1 did: the same status
//! codes and bodies, `{"message": ...}` errors with Asterisk's own texts,
//! basic auth, and the events WebSocket replaying recorded events.
//!
//! Every REST test checks the exact method, path, query and body the client
//! sent against `tests/fixtures/ari/*.rest.jsonl`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use mediagw_controlplane::ari::model::{ChannelState, RecordingState};
use mediagw_controlplane::ari::rest::IfExists;
use mediagw_controlplane::ari::{
    AriClient, AriConfig, AriEvent, AriEvents, AriServer, AriSignal, BridgeId, ChannelId,
    ExternalMedia, LiveRecord, MediaFormat, Originate,
};
use mediagw_controlplane::error::{ErrorKind, Party};
use mediagw_controlplane::secret::Secret;
use mediagw_controlplane::service::{LinkState, Service, Shutdown};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};

/// Generous: the machine is shared and noisy.
const DEADLINE: Duration = Duration::from_secs(20);

/// `Basic base64("gw:gwsecret")`, as Asterisk expects it.
const AUTH: &str = "Basic Z3c6Z3dzZWNyZXQ=";

const FLOWS: &[(&str, &str, &str)] = &[
    (
        "ari-originate",
        include_str!("fixtures/ari/ari-originate.rest.jsonl"),
        include_str!("fixtures/ari/ari-originate.events.jsonl"),
    ),
    (
        "ami-inbound",
        include_str!("fixtures/ari/ami-inbound.rest.jsonl"),
        include_str!("fixtures/ari/ami-inbound.events.jsonl"),
    ),
    (
        "ami-inbound-slin16",
        include_str!("fixtures/ari/ami-inbound-slin16.rest.jsonl"),
        include_str!("fixtures/ari/ami-inbound-slin16.events.jsonl"),
    ),
];

// --- the Asterisk stand-in -------------------------------------------------

/// One canned answer.
#[derive(Clone)]
struct Route {
    status: u16,
    body: String,
    delay: Duration,
}

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    /// Below `/ari`.
    path: String,
    query: Vec<(String, String)>,
    body: Option<Value>,
    content_type: Option<String>,
    auth: Option<String>,
}

impl Seen {
    /// `METHOD /path k=v&k=v`, values decoded.
    fn line(&self) -> String {
        let query: Vec<String> = self.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{} {} {}", self.method, self.path, query.join("&"))
    }
}

/// What happened on a WebSocket the stand-in accepted.
#[derive(Debug)]
enum WsSeen {
    Ping,
    ClientClose(Option<u16>),
    Gone,
}

/// What the test tells an accepted WebSocket to do.
enum WsCmd {
    Text(String),
    Binary(Vec<u8>),
    /// Close with a Close frame.
    Close,
    /// Drop the TCP connection without a Close frame.
    Drop,
    /// Stop reading and answering (a dead peer), keep the socket open.
    Freeze,
}

/// An accepted events WebSocket.
struct WsConn {
    query: String,
    auth: Option<String>,
    cmd: mpsc::UnboundedSender<WsCmd>,
    seen: mpsc::UnboundedReceiver<WsSeen>,
}

struct Shared {
    routes: Mutex<HashMap<(String, String), Route>>,
    requests: Mutex<Vec<Seen>>,
    conns: mpsc::UnboundedSender<WsConn>,
}

struct FakeAsterisk {
    addr: SocketAddr,
    shared: Arc<Shared>,
    conns: mpsc::UnboundedReceiver<WsConn>,
    task: JoinHandle<()>,
}

impl Drop for FakeAsterisk {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeAsterisk {
    async fn start() -> Self {
        let (conns_tx, conns) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            routes: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
            conns: conns_tx,
        });
        let app = Router::new()
            .route("/ari/events", get(events))
            .fallback(rest)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            addr,
            shared,
            conns,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn route(&self, method: &str, path: &str, status: u16, body: &str) {
        self.route_slow(method, path, status, body, Duration::ZERO);
    }

    fn route_slow(&self, method: &str, path: &str, status: u16, body: &str, delay: Duration) {
        self.shared.routes.lock().unwrap().insert(
            (method.to_owned(), path.to_owned()),
            Route {
                status,
                body: body.to_owned(),
                delay,
            },
        );
    }

    /// Serves every line of a recorded `rest.jsonl`.
    fn route_recording(&self, rest: &str) {
        for line in rest.lines() {
            let l: Value = serde_json::from_str(line).unwrap();
            self.route(
                l["method"].as_str().unwrap(),
                l["path"].as_str().unwrap(),
                u16::try_from(l["status"].as_u64().unwrap()).unwrap(),
                l["response"].as_str().unwrap(),
            );
        }
    }

    fn requests(&self) -> Vec<Seen> {
        self.shared.requests.lock().unwrap().clone()
    }

    async fn next_conn(&mut self) -> WsConn {
        timeout(DEADLINE, self.conns.recv())
            .await
            .expect("no WebSocket connection in time")
            .expect("server gone")
    }
}

fn asterisk_error(status: u16, message: &str) -> Response {
    let mut r = (
        StatusCode::from_u16(status).unwrap(),
        json!({ "message": message }).to_string(),
    )
        .into_response();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn authorized(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(AUTH)
}

fn unauthorized() -> Response {
    let mut r = asterisk_error(401, "Authentication required");
    r.headers_mut().insert(
        "www-authenticate",
        "Basic realm=\"Asterisk REST Interface\"".parse().unwrap(),
    );
    r
}

async fn rest(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(path) = uri.path().strip_prefix("/ari") else {
        return (StatusCode::NOT_FOUND, "not ARI").into_response();
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    shared.requests.lock().unwrap().push(Seen {
        method: method.to_string(),
        path: path.to_owned(),
        query: url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect(),
        body: (!body.is_empty()).then(|| serde_json::from_slice(&body).unwrap()),
        content_type: header("content-type"),
        auth: header("authorization"),
    });
    if !authorized(&headers) {
        return unauthorized();
    }
    let route = shared
        .routes
        .lock()
        .unwrap()
        .get(&(method.to_string(), path.to_owned()))
        .cloned();
    let Some(route) = route else {
        return asterisk_error(404, "Resource not found");
    };
    sleep(route.delay).await;
    let status = StatusCode::from_u16(route.status).unwrap();
    if route.body.is_empty() {
        return status.into_response();
    }
    let mut r = (status, route.body).into_response();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

async fn events(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !authorized(&headers) {
        return unauthorized();
    }
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    ws.on_upgrade(move |socket| serve_socket(socket, shared, query.unwrap_or_default(), auth))
}

async fn serve_socket(
    mut socket: WebSocket,
    shared: Arc<Shared>,
    query: String,
    auth: Option<String>,
) {
    let (cmd_tx, mut cmd) = mpsc::unbounded_channel();
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let conn = WsConn {
        query,
        auth,
        cmd: cmd_tx,
        seen,
    };
    if shared.conns.send(conn).is_err() {
        return;
    }
    loop {
        tokio::select! {
            c = cmd.recv() => match c {
                Some(WsCmd::Text(t)) => {
                    if socket.send(WsMessage::Text(t.into())).await.is_err() {
                        break;
                    }
                }
                Some(WsCmd::Binary(b)) => {
                    if socket.send(WsMessage::Binary(b.into())).await.is_err() {
                        break;
                    }
                }
                Some(WsCmd::Close) => {
                    let frame = CloseFrame { code: 1011, reason: "going down".into() };
                    let _ = socket.send(WsMessage::Close(Some(frame))).await;
                    // Read until the client answers the close.
                    while let Some(Ok(m)) = socket.recv().await {
                        if matches!(m, WsMessage::Close(_)) {
                            break;
                        }
                    }
                    break;
                }
                Some(WsCmd::Drop) | None => break,
                Some(WsCmd::Freeze) => {
                    // Hold the socket without reading: no pong goes out.
                    while let Some(c) = cmd.recv().await {
                        if matches!(c, WsCmd::Drop) {
                            break;
                        }
                    }
                    break;
                }
            },
            m = socket.recv() => match m {
                Some(Ok(WsMessage::Ping(_))) => { let _ = seen_tx.send(WsSeen::Ping); }
                Some(Ok(WsMessage::Close(frame))) => {
                    let _ = seen_tx.send(WsSeen::ClientClose(frame.map(|f| f.code)));
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
        }
    }
    let _ = seen_tx.send(WsSeen::Gone);
}

// --- helpers ---------------------------------------------------------------

fn config(urls: &[(&str, String)]) -> AriConfig {
    AriConfig {
        servers: urls
            .iter()
            .map(|(name, url)| AriServer {
                name: (*name).to_owned(),
                url: url.clone(),
            })
            .collect(),
        username: "gw".to_owned(),
        app: "ai-gw".to_owned(),
        request_timeout_ms: 2_000,
        backoff_min_ms: 20,
        backoff_max_ms: 200,
        ping_interval_ms: 5_000,
        ..AriConfig::default()
    }
}

fn client(urls: &[(&str, String)]) -> AriClient {
    AriClient::new(&config(urls), Secret::new("gwsecret")).unwrap()
}

/// A URL nothing listens on.
async fn dead_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

async fn recv(rx: &mut mpsc::Receiver<AriSignal>) -> AriSignal {
    timeout(DEADLINE, rx.recv())
        .await
        .expect("no signal in time")
        .expect("events service gone")
}

/// The next signal that is not an event.
async fn recv_marker(rx: &mut mpsc::Receiver<AriSignal>) -> AriSignal {
    loop {
        match recv(rx).await {
            AriSignal::Event(_) => {}
            marker => return marker,
        }
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        sleep(Duration::from_millis(10)).await;
    }
}

async fn seen(conn: &mut WsConn) -> WsSeen {
    timeout(DEADLINE, conn.seen.recv())
        .await
        .expect("nothing seen on the socket in time")
        .expect("socket task gone")
}

fn spawn(
    service: AriEvents,
    shutdown: &Shutdown,
) -> JoinHandle<mediagw_controlplane::error::Result<()>> {
    let token = shutdown.clone();
    tokio::spawn(Box::new(service).run(token))
}

/// A recorded line's `params` as (name, value) pairs in the order they
/// were sent (a `Value` would sort them).
fn params(line: &str) -> Vec<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Line {
        params: Option<Ordered>,
    }
    struct Ordered(Vec<(String, String)>);
    impl<'de> serde::Deserialize<'de> for Ordered {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Ordered;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut m: A,
                ) -> Result<Ordered, A::Error> {
                    let mut out = Vec::new();
                    while let Some((k, v)) = m.next_entry::<String, Value>()? {
                        let v = match v {
                            Value::String(s) => s,
                            other => other.to_string(),
                        };
                        out.push((k, v));
                    }
                    Ok(Ordered(out))
                }
            }
            d.deserialize_map(V)
        }
    }
    let l: Line = serde_json::from_str(line).unwrap();
    l.params.map(|o| o.0).unwrap_or_default()
}

// --- REST --------------------------------------------------------------------

/// Drives the client through a recorded flow with the same logical
/// arguments the recorder used, and checks each request is the recorded
/// one, byte for byte where it matters.
#[tokio::test]
async fn recorded_flows_are_replayed_request_for_request() {
    for (flow, rest, _) in FLOWS {
        let fake = FakeAsterisk::start().await;
        fake.route_recording(rest);
        let ari = client(&[("pbx-a", fake.url())]);
        let lines: Vec<Value> = rest
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let ordered: Vec<Vec<(String, String)>> = rest.lines().map(params).collect();
        for (line, pairs) in lines.iter().zip(&ordered) {
            let method = line["method"].as_str().unwrap();
            let path = line["path"].as_str().unwrap();
            let p: BTreeMap<String, String> = pairs.iter().cloned().collect();
            let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            match (method, segs.as_slice()) {
                ("GET", ["asterisk", "info"]) => {
                    let info = ari.info().await.unwrap();
                    let system = info.system.unwrap();
                    assert_eq!(
                        (system.version.as_str(), system.entity_id.as_str()),
                        ("22.10.1", "02:fc:00:00:00:01")
                    );
                }
                ("POST", ["channels"]) => {
                    let o = Originate {
                        endpoint: p["endpoint"].clone(),
                        app: Some(p["app"].clone()),
                        app_args: Some(p["appArgs"].clone()),
                        caller_id: Some(p["callerId"].clone()),
                        ..Originate::default()
                    };
                    let ch = ari.originate(&o).await.unwrap();
                    assert_eq!(ch.state, ChannelState::Down);
                    assert_eq!(ch.caller.number, "1000");
                }
                ("POST", ["channels", id, "answer"]) => {
                    ari.answer(&ChannelId::new(*id)).await.unwrap();
                }
                ("POST", ["channels", "externalMedia"]) => {
                    let format = match p["format"].as_str() {
                        "ulaw" => MediaFormat::Ulaw,
                        "slin16" => MediaFormat::Slin16,
                        other => panic!("format {other}"),
                    };
                    let m = ExternalMedia::rtp(
                        p["app"].clone(),
                        p["external_host"].parse().unwrap(),
                        format,
                    );
                    let ch = ari.external_media(&m).await.unwrap();
                    let vars = ch.channelvars.unwrap();
                    assert_eq!(vars["UNICASTRTP_LOCAL_ADDRESS"], "127.0.0.1");
                    assert!(vars["UNICASTRTP_LOCAL_PORT"].parse::<u16>().unwrap() >= 10_000);
                    assert!(ch.name.starts_with("UnicastRTP/127.0.0.1:40000-"));
                }
                ("POST", ["bridges"]) => {
                    let b = ari
                        .create_bridge(&p["type"], &p["name"], None)
                        .await
                        .unwrap();
                    assert_eq!(b.bridge_type, "mixing");
                    assert!(b.channels.is_empty());
                }
                ("POST", ["bridges", id, "addChannel"]) => {
                    let chans: Vec<ChannelId> =
                        p["channel"].split(',').map(ChannelId::from).collect();
                    ari.add_channels(&BridgeId::new(*id), &chans).await.unwrap();
                }
                ("POST", ["bridges", id, "record"]) => {
                    let rec = LiveRecord {
                        max_duration_seconds: Some(p["maxDurationSeconds"].parse().unwrap()),
                        if_exists: Some(IfExists::Overwrite),
                        ..LiveRecord::new(p["name"].clone(), p["format"].clone())
                    };
                    let live = ari.record_bridge(&BridgeId::new(*id), &rec).await.unwrap();
                    assert_eq!(live.state, RecordingState::Queued);
                    assert_eq!(live.target_uri, format!("bridge:{id}"));
                }
                ("GET", ["recordings", "stored", name]) => {
                    let stored = ari.stored_recording(name).await.unwrap();
                    assert_eq!(
                        (stored.name.as_str(), stored.format.as_str()),
                        (*name, "wav")
                    );
                }
                ("DELETE", ["channels", id]) => {
                    ari.hangup(&ChannelId::new(*id), None).await.unwrap();
                }
                ("DELETE", ["bridges", id]) => {
                    ari.destroy_bridge(&BridgeId::new(*id)).await.unwrap();
                }
                other => panic!("{flow}: no client call for {other:?}"),
            }
        }
        let seen = fake.requests();
        assert_eq!(seen.len(), lines.len(), "{flow}");
        for ((s, line), pairs) in seen.iter().zip(&lines).zip(&ordered) {
            let at = format!("{flow}: {} {}", s.method, s.path);
            assert_eq!(s.method, line["method"].as_str().unwrap(), "{at}");
            assert_eq!(s.path, line["path"].as_str().unwrap(), "{at}");
            assert_eq!(&s.query, pairs, "{at}");
            assert_eq!(s.body, None, "{at}");
            assert_eq!(s.auth.as_deref(), Some(AUTH), "{at}");
        }
    }
}

#[tokio::test]
async fn reads_channels_bridges_and_variables() {
    let fake = FakeAsterisk::start().await;
    let events = FLOWS[0].2;
    let channels: Vec<Value> = events
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["type"] == "StasisStart")
        .map(|e| e["channel"].clone())
        .collect();
    let bridge = events
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .rfind(|e| e["type"] == "ChannelEnteredBridge")
        .map(|e| e["bridge"].clone())
        .unwrap();
    fake.route(
        "GET",
        "/channels",
        200,
        &Value::from(channels.clone()).to_string(),
    );
    fake.route(
        "GET",
        "/channels/1795626306.28",
        200,
        &channels[0].to_string(),
    );
    fake.route("GET", "/bridges", 200, &json!([bridge]).to_string());
    fake.route(
        "GET",
        "/bridges/c8df01eb-da31-48ab-8fa2-f11d73d22c8a",
        200,
        &bridge.to_string(),
    );
    fake.route(
        "GET",
        "/channels/1795626306.28/variable",
        200,
        r#"{"value":"tenant-a"}"#,
    );
    fake.route("POST", "/channels/1795626306.28/variable", 204, "");
    fake.route(
        "POST",
        "/bridges/c8df01eb-da31-48ab-8fa2-f11d73d22c8a/removeChannel",
        204,
        "",
    );
    fake.route("POST", "/recordings/live/probe-ari-originate/stop", 204, "");
    fake.route("DELETE", "/channels/1795626306.28", 204, "");
    let ari = client(&[("pbx-a", fake.url())]);

    let list = ari.channels().await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[1].name, "UnicastRTP/127.0.0.1:40000-0x7f485c0058b0");
    let one = ari.channel(&ChannelId::new("1795626306.28")).await.unwrap();
    assert_eq!(one.dialplan.app_data, "ai-gw,probe,ari-originate");
    let bridges = ari.bridges().await.unwrap();
    let id = BridgeId::new("c8df01eb-da31-48ab-8fa2-f11d73d22c8a");
    assert_eq!(bridges[0].id, id);
    assert_eq!(ari.bridge(&id).await.unwrap().channels.len(), 2);
    let ch = ChannelId::new("1795626306.28");
    assert_eq!(
        ari.variable(&ch, "TENANT").await.unwrap().as_deref(),
        Some("tenant-a")
    );
    ari.set_variable(&ch, "MEDIAGW_SESSION", "s 1+2")
        .await
        .unwrap();
    ari.remove_channel(&id, &ChannelId::new("1795626306.30"))
        .await
        .unwrap();
    ari.stop_recording("probe-ari-originate").await.unwrap();
    ari.hangup(&ch, Some("normal")).await.unwrap();

    // Query values as Asterisk decodes them.
    let wire: Vec<String> = fake.requests().iter().map(Seen::line).collect();
    assert_eq!(
        wire,
        [
            "GET /channels ",
            "GET /channels/1795626306.28 ",
            "GET /bridges ",
            "GET /bridges/c8df01eb-da31-48ab-8fa2-f11d73d22c8a ",
            "GET /channels/1795626306.28/variable variable=TENANT",
            "POST /channels/1795626306.28/variable variable=MEDIAGW_SESSION&value=s 1+2",
            "POST /bridges/c8df01eb-da31-48ab-8fa2-f11d73d22c8a/removeChannel channel=1795626306.30",
            "POST /recordings/live/probe-ari-originate/stop ",
            "DELETE /channels/1795626306.28 reason=normal",
        ]
    );
}

#[tokio::test]
async fn variables_travel_as_a_json_body_and_optional_fields_in_order() {
    let fake = FakeAsterisk::start().await;
    let rest = FLOWS[0].1;
    fake.route_recording(rest);
    let ari = client(&[("pbx-a", fake.url())]);
    let vars: BTreeMap<String, String> = [
        ("MEDIAGW_TENANT".to_owned(), "acme".to_owned()),
        ("X".to_owned(), "1".to_owned()),
    ]
    .into();
    let o = Originate {
        endpoint: "PJSIP/alice".into(),
        app: Some("ai-gw".into()),
        caller_id: Some("Bot <+15550100>".into()),
        timeout: Some(20),
        channel_id: Some(ChannelId::new("mgw-1")),
        variables: vars.clone(),
        ..Originate::default()
    };
    ari.originate(&o).await.unwrap();
    let mut m = ExternalMedia::rtp("ai-gw", "[::1]:40002".parse().unwrap(), MediaFormat::Alaw);
    m.channel_id = Some(ChannelId::new("mgw-1-media"));
    m.data = Some("session-1".into());
    m.variables = vars;
    ari.external_media(&m).await.unwrap();
    let bridge = BridgeId::new("mgw-bridge-1");
    let created = json!({
        "id": "mgw-bridge-1", "technology": "simple_bridge", "bridge_type": "mixing",
        "bridge_class": "stasis", "creator": "Stasis", "name": "call-1", "channels": [],
        "creationtime": "2026-11-25T17:05:06.213+0000", "video_mode": "talker"
    });
    fake.route("POST", "/bridges", 200, &created.to_string());
    let b = ari
        .create_bridge("mixing", "call-1", Some(&bridge))
        .await
        .unwrap();
    assert_eq!(b.id, bridge);

    let seen = fake.requests();
    let body = json!({"variables": {"MEDIAGW_TENANT": "acme", "X": "1"}});
    let originate = &seen[0];
    assert_eq!(
        originate.query,
        [
            ("endpoint", "PJSIP/alice"),
            ("app", "ai-gw"),
            ("callerId", "Bot <+15550100>"),
            ("timeout", "20"),
            ("channelId", "mgw-1"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
    );
    assert_eq!(originate.body.as_ref(), Some(&body));
    assert_eq!(originate.content_type.as_deref(), Some("application/json"));
    let media = &seen[1];
    assert_eq!(
        media.query,
        [
            ("app", "ai-gw"),
            ("external_host", "[::1]:40002"),
            ("format", "alaw"),
            ("channelId", "mgw-1-media"),
            ("data", "session-1"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
    );
    assert_eq!(media.body.as_ref(), Some(&body));
    assert_eq!(
        seen[2].query,
        [
            ("type", "mixing"),
            ("name", "call-1"),
            ("bridgeId", "mgw-bridge-1")
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
    );
}

/// Asterisk's errors, with the texts its source gives them.
#[tokio::test]
async fn every_asterisk_error_maps_to_what_it_means_for_the_call() {
    let fake = FakeAsterisk::start().await;
    let err = |m: &str| json!({ "message": m }).to_string();
    fake.route(
        "POST",
        "/channels/gone/answer",
        404,
        &err("Channel not found"),
    );
    fake.route(
        "POST",
        "/channels/dialplan/answer",
        409,
        &err("Channel not in Stasis application"),
    );
    fake.route(
        "POST",
        "/channels/down/answer",
        412,
        &err("Channel in invalid state"),
    );
    fake.route(
        "DELETE",
        "/channels/c1",
        400,
        &err("Invalid reason for hangup provided"),
    );
    fake.route(
        "POST",
        "/bridges/b1/addChannel",
        400,
        &err("Channel not found"),
    );
    fake.route(
        "POST",
        "/bridges/b2/addChannel",
        422,
        &err("Channel not in Stasis application"),
    );
    fake.route(
        "POST",
        "/bridges/b3/removeChannel",
        422,
        &err("Channel not in this bridge"),
    );
    fake.route(
        "POST",
        "/bridges/gone/addChannel",
        404,
        &err("Bridge not found"),
    );
    fake.route(
        "POST",
        "/bridges/b4/addChannel",
        409,
        &err("Channel c1 currently recording"),
    );
    fake.route(
        "POST",
        "/bridges/b5/record",
        422,
        &err("Format does not exist"),
    );
    fake.route(
        "GET",
        "/channels/c1/variable",
        404,
        &err("Provided variable was not found"),
    );
    fake.route(
        "GET",
        "/channels/gone/variable",
        404,
        &err("Provided channel was not found"),
    );
    fake.route(
        "POST",
        "/channels/externalMedia",
        500,
        &err("Allocation failed"),
    );
    fake.route(
        "POST",
        "/channels/c2/answer",
        501,
        &err("The encapsulation and/or transport is not supported"),
    );
    fake.route(
        "DELETE",
        "/bridges/b6",
        503,
        "<html><body>Shutdown in progress</body></html>",
    );
    fake.route(
        "POST",
        "/channels/ro/answer",
        403,
        &err("Write access denied"),
    );
    fake.route("GET", "/channels/weird", 200, r#"{"id":"weird"}"#);
    let ari = client(&[("pbx-a", fake.url())]);
    let c = ChannelId::new;
    let b = BridgeId::new;
    let media = ExternalMedia::rtp(
        "ai-gw",
        "127.0.0.1:40000".parse().unwrap(),
        MediaFormat::Ulaw,
    );
    let rec = LiveRecord::new("r", "mp9");

    let cases = [
        (
            ari.answer(&c("gone")).await,
            ErrorKind::NotFound,
            "Channel not found",
        ),
        (
            ari.answer(&c("dialplan")).await,
            ErrorKind::Conflict,
            "Channel not in Stasis application",
        ),
        (
            ari.answer(&c("down")).await,
            ErrorKind::Conflict,
            "Channel in invalid state",
        ),
        (
            ari.hangup(&c("c1"), Some("bogus")).await,
            ErrorKind::Invalid,
            "Invalid reason",
        ),
        (
            ari.add_channels(&b("b1"), &[c("x")]).await,
            ErrorKind::NotFound,
            "Channel not found",
        ),
        (
            ari.add_channels(&b("b2"), &[c("x")]).await,
            ErrorKind::Conflict,
            "not in Stasis",
        ),
        (
            ari.remove_channel(&b("b3"), &c("x")).await,
            ErrorKind::Conflict,
            "not in this bridge",
        ),
        (
            ari.add_channels(&b("gone"), &[c("x")]).await,
            ErrorKind::NotFound,
            "Bridge not found",
        ),
        (
            ari.add_channels(&b("b4"), &[c("c1")]).await,
            ErrorKind::Conflict,
            "currently recording",
        ),
        (
            ari.record_bridge(&b("b5"), &rec).await.map(drop),
            ErrorKind::Invalid,
            "Format does not exist",
        ),
        (
            ari.variable(&c("gone"), "X").await.map(drop),
            ErrorKind::NotFound,
            "Provided channel was not found",
        ),
        (
            ari.external_media(&media).await.map(drop),
            ErrorKind::PeerFailure,
            "Allocation failed",
        ),
        (
            ari.answer(&c("c2")).await,
            ErrorKind::PeerFailure,
            "not supported",
        ),
        (
            ari.destroy_bridge(&b("b6")).await,
            ErrorKind::PeerFailure,
            "Shutdown in progress",
        ),
        (
            ari.answer(&c("ro")).await,
            ErrorKind::Unauthorized,
            "Write access denied",
        ),
        (
            ari.channel(&c("weird")).await.map(drop),
            ErrorKind::Protocol,
            "not the expected model",
        ),
    ];
    for (i, (result, kind, text)) in cases.into_iter().enumerate() {
        let e = result.expect_err(&format!("case {i} should fail"));
        assert_eq!(e.kind(), kind, "case {i}: {e}");
        assert_eq!(e.party(), Party::Asterisk, "case {i}: {e}");
        assert!(e.message().contains(text), "case {i}: {e}");
        assert!(e.message().contains("on pbx-a"), "case {i}: {e}");
        let retry = kind == ErrorKind::PeerFailure && !text.contains("not supported");
        assert_eq!(e.retryable(), retry, "case {i}: {e}");
    }
    // An unset variable is an answer, not an error.
    assert_eq!(ari.variable(&c("c1"), "UNSET").await.unwrap(), None);

    // Wrong credentials.
    let wrong = AriClient::new(&config(&[("pbx-a", fake.url())]), Secret::new("nope")).unwrap();
    let e = wrong.info().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    assert!(
        e.message().contains("HTTP 401: Authentication required"),
        "{e}"
    );
    assert_eq!(
        fake.requests().last().unwrap().auth.as_deref(),
        Some("Basic Z3c6bm9wZQ==")
    );
}

#[tokio::test]
async fn timeouts_and_unreachable_servers() {
    let fake = FakeAsterisk::start().await;
    fake.route_slow("GET", "/asterisk/info", 200, "{}", Duration::from_secs(30));
    let mut cfg = config(&[("pbx-a", fake.url())]);
    cfg.request_timeout_ms = 300;
    let ari = AriClient::new(&cfg, Secret::new("gwsecret")).unwrap();
    let started = Instant::now();
    let e = ari.info().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(e.retryable());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the timeout bounds the call"
    );

    let down = client(&[("pbx-down", dead_url().await)]);
    let e = down.answer(&ChannelId::new("1.1")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.retryable());
    assert!(
        e.message().contains("answer channel 1.1 on pbx-down"),
        "{e}"
    );
}

// --- events ------------------------------------------------------------------

#[tokio::test]
async fn recorded_events_arrive_in_order_after_a_connected_marker() {
    let mut fake = FakeAsterisk::start().await;
    let ari = client(&[("pbx-a", fake.url())]);
    let mut state = ari.state();
    let (service, mut rx) = AriEvents::new(ari.clone());
    let metrics = service.metrics();
    let shutdown = Shutdown::new();
    let task = spawn(service, &shutdown);

    let conn = fake.next_conn().await;
    assert_eq!(conn.query, "app=ai-gw&subscribeAll=false");
    assert_eq!(conn.auth.as_deref(), Some(AUTH));
    assert_eq!(
        recv(&mut rx).await,
        AriSignal::Connected {
            server: "pbx-a".into()
        }
    );
    timeout(DEADLINE, state.wait_for(|s| s.is_up()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        *state.borrow(),
        LinkState::Up {
            server: "pbx-a".into()
        }
    );

    let lines: Vec<&str> = FLOWS[0].2.lines().collect();
    for l in &lines {
        conn.cmd.send(WsCmd::Text((*l).to_owned())).unwrap();
    }
    for l in &lines {
        let raw: Value = serde_json::from_str(l).unwrap();
        let AriSignal::Event(event) = recv(&mut rx).await else {
            panic!("expected an event")
        };
        assert_eq!(event.event_type(), raw["type"].as_str().unwrap());
        assert_eq!(
            event.common().unwrap().timestamp.as_str(),
            raw["timestamp"].as_str().unwrap()
        );
    }
    assert_eq!(metrics.events(), lines.len() as u64);
    assert_eq!(
        (
            metrics.malformed(),
            metrics.connects(),
            metrics.reconnects()
        ),
        (0, 1, 0)
    );
    shutdown.cancel();
    timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn malformed_messages_are_counted_and_skipped() {
    let mut fake = FakeAsterisk::start().await;
    let (service, mut rx) = AriEvents::new(client(&[("pbx-a", fake.url())]));
    let metrics = service.metrics();
    let shutdown = Shutdown::new();
    let task = spawn(service, &shutdown);
    let conn = fake.next_conn().await;
    assert!(matches!(recv(&mut rx).await, AriSignal::Connected { .. }));

    for bad in [
        "not json at all",
        "{\"type\":",
        r#"{"type":42}"#,
        r#"["StasisStart"]"#,
        r#"{"type":"StasisStart","timestamp":"t","application":"ai-gw"}"#,
        r#"{"type":"StasisEnd","timestamp":"t","application":"ai-gw","channel":{"id":7}}"#,
    ] {
        conn.cmd.send(WsCmd::Text(bad.to_owned())).unwrap();
    }
    conn.cmd
        .send(WsCmd::Binary(vec![0xff, 0x00, 0x7b]))
        .unwrap();
    let good = FLOWS[1].2.lines().next().unwrap();
    conn.cmd.send(WsCmd::Text(good.to_owned())).unwrap();

    let AriSignal::Event(event) = recv(&mut rx).await else {
        panic!("the valid event comes through, nothing before it")
    };
    let AriEvent::StasisStart(start) = event else {
        panic!("StasisStart")
    };
    assert_eq!(start.args, ["inbound"]);
    assert_eq!(metrics.malformed(), 7);
    assert_eq!((metrics.events(), metrics.connects()), (1, 1));
    assert!(rx.try_recv().is_err(), "no disconnect: the socket lives on");
    shutdown.cancel();
    timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn a_dropped_socket_reconnects_and_says_so() {
    let mut fake = FakeAsterisk::start().await;
    let (service, mut rx) = AriEvents::new(client(&[("pbx-a", fake.url())]));
    let metrics = service.metrics();
    let shutdown = Shutdown::new();
    let task = spawn(service, &shutdown);
    let lines: Vec<&str> = FLOWS[1].2.lines().collect();

    let first = fake.next_conn().await;
    assert!(matches!(recv(&mut rx).await, AriSignal::Connected { .. }));
    first.cmd.send(WsCmd::Text(lines[0].to_owned())).unwrap();
    assert!(matches!(recv(&mut rx).await, AriSignal::Event(_)));
    first.cmd.send(WsCmd::Drop).unwrap();
    let AriSignal::Disconnected { reason } = recv(&mut rx).await else {
        panic!("Disconnected expected")
    };
    assert!(!reason.is_empty());

    // Asterisk comes back: a new socket, a new Connected, events again.
    let second = fake.next_conn().await;
    assert_eq!(
        recv(&mut rx).await,
        AriSignal::Connected {
            server: "pbx-a".into()
        }
    );
    second.cmd.send(WsCmd::Text(lines[1].to_owned())).unwrap();
    assert!(matches!(recv(&mut rx).await, AriSignal::Event(_)));

    // Asterisk closes properly this time: the same again.
    second.cmd.send(WsCmd::Close).unwrap();
    let AriSignal::Disconnected { reason } = recv(&mut rx).await else {
        panic!("Disconnected expected")
    };
    assert!(reason.contains("closed by Asterisk"), "{reason}");
    let _third = fake.next_conn().await;
    assert!(matches!(recv(&mut rx).await, AriSignal::Connected { .. }));
    assert_eq!((metrics.connects(), metrics.reconnects()), (3, 2));
    shutdown.cancel();
    timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn a_silent_peer_is_found_dead_by_ping() {
    let mut fake = FakeAsterisk::start().await;
    let mut cfg = config(&[("pbx-a", fake.url())]);
    cfg.ping_interval_ms = 200;
    let ari = AriClient::new(&cfg, Secret::new("gwsecret")).unwrap();
    let (service, mut rx) = AriEvents::new(ari);
    let shutdown = Shutdown::new();
    let task = spawn(service, &shutdown);

    let mut conn = fake.next_conn().await;
    assert!(matches!(recv(&mut rx).await, AriSignal::Connected { .. }));
    // Pings flow while the peer answers.
    assert!(matches!(seen(&mut conn).await, WsSeen::Ping));
    conn.cmd.send(WsCmd::Freeze).unwrap();
    let reason = loop {
        if let AriSignal::Disconnected { reason } = recv_marker(&mut rx).await {
            break reason;
        }
    };
    assert!(reason.contains("ping"), "{reason}");
    let _again = fake.next_conn().await;
    assert!(matches!(
        recv_marker(&mut rx).await,
        AriSignal::Connected { .. }
    ));
    shutdown.cancel();
    timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn fails_over_to_the_next_server_and_rest_follows() {
    let mut fake = FakeAsterisk::start().await;
    fake.route_recording(FLOWS[0].1);
    let ari = client(&[("pbx-a", dead_url().await), ("pbx-b", fake.url())]);
    assert_eq!(ari.active_server(), "pbx-a");
    let (service, mut rx) = AriEvents::new(ari.clone());
    let metrics = service.metrics();
    let shutdown = Shutdown::new();
    let task = spawn(service, &shutdown);

    let _conn = fake.next_conn().await;
    assert_eq!(
        recv(&mut rx).await,
        AriSignal::Connected {
            server: "pbx-b".into()
        }
    );
    assert_eq!(ari.active_server(), "pbx-b");
    assert!(metrics.connect_failures() >= 1);
    assert_eq!(
        *ari.state().borrow(),
        LinkState::Up {
            server: "pbx-b".into()
        }
    );
    // REST goes where the events come from.
    ari.info().await.unwrap();
    assert_eq!(fake.requests().last().unwrap().path, "/asterisk/info");
    shutdown.cancel();
    timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn refused_credentials_keep_retrying_without_a_connected_marker() {
    let fake = FakeAsterisk::start().await;
    let ari = AriClient::new(&config(&[("pbx-a", fake.url())]), Secret::new("wrong")).unwrap();
    let mut state = ari.state();
    let (service, mut rx) = AriEvents::new(ari);
    let metrics = service.metrics();
    let shutdown = Shutdown::new();
    let task = spawn(service, &shutdown);
    wait_for("three refused attempts", || metrics.connect_failures() >= 3).await;
    let refused =
        |s: &LinkState| matches!(s, LinkState::Down { reason } if reason.contains("HTTP 401"));
    timeout(DEADLINE, state.wait_for(refused))
        .await
        .unwrap()
        .unwrap();
    assert!(rx.try_recv().is_err(), "no signal while never connected");
    assert_eq!(metrics.connects(), 0);
    shutdown.cancel();
    timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
}

/// The channel is full: the service stops reading instead of dropping, so
/// every event arrives, in order, once the consumer catches up.
#[tokio::test]
async fn a_full_channel_applies_backpressure_without_loss() {
    let mut fake = FakeAsterisk::start().await;
    let capacity = 4;
    let (service, mut rx) = AriEvents::with_capacity(client(&[("pbx-a", fake.url())]), capacity);
    let metrics = service.metrics();
    let shutdown = Shutdown::new();
    let task = spawn(service, &shutdown);
    let conn = fake.next_conn().await;

    let lines: Vec<&str> = FLOWS[0].2.lines().collect();
    let total = lines.len() * 4;
    for i in 0..total {
        conn.cmd
            .send(WsCmd::Text(lines[i % lines.len()].to_owned()))
            .unwrap();
    }
    // Connected and capacity-1 events fill the channel; one more event is
    // parsed and waits for room.
    wait_for("the channel to fill", || {
        metrics.events() >= capacity as u64
    })
    .await;
    sleep(Duration::from_millis(300)).await;
    assert_eq!(
        metrics.events(),
        capacity as u64,
        "nothing read past a full channel"
    );

    assert!(matches!(recv(&mut rx).await, AriSignal::Connected { .. }));
    for i in 0..total {
        let AriSignal::Event(event) = recv(&mut rx).await else {
            panic!("event {i}")
        };
        let raw: Value = serde_json::from_str(lines[i % lines.len()]).unwrap();
        assert_eq!(
            event.event_type(),
            raw["type"].as_str().unwrap(),
            "event {i}"
        );
        assert_eq!(
            event.common().unwrap().timestamp.as_str(),
            raw["timestamp"].as_str().unwrap()
        );
    }
    assert_eq!(metrics.events(), total as u64);
    assert_eq!(metrics.reconnects(), 0);
    shutdown.cancel();
    timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_closes_the_socket_with_going_away() {
    let mut fake = FakeAsterisk::start().await;
    let ari = client(&[("pbx-a", fake.url())]);
    let mut state = ari.state();
    let (service, mut rx) = AriEvents::new(ari);
    let shutdown = Shutdown::new();
    let task = spawn(service, &shutdown);
    let mut conn = fake.next_conn().await;
    assert!(matches!(recv(&mut rx).await, AriSignal::Connected { .. }));

    shutdown.cancel();
    timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
    match seen(&mut conn).await {
        WsSeen::ClientClose(code) => assert_eq!(code, Some(1001)),
        other => panic!("expected a Close frame, got {other:?}"),
    }
    timeout(
        DEADLINE,
        state.wait_for(|s| matches!(s, LinkState::Down { .. })),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        rx.recv().await.is_none(),
        "the service is gone, and with it the sender"
    );
}

#[tokio::test]
async fn shutdown_while_asterisk_is_down_is_prompt() {
    let (service, _rx) = AriEvents::new(client(&[("pbx-down", dead_url().await)]));
    let metrics = service.metrics();
    let shutdown = Shutdown::new();
    let task = spawn(service, &shutdown);
    wait_for("a failed attempt", || metrics.connect_failures() >= 1).await;
    shutdown.cancel();
    timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn event_filter_and_continue_send_what_asterisk_documents() {
    let fake = FakeAsterisk::start().await;
    fake.route(
        "PUT",
        "/applications/ai-gw/eventFilter",
        200,
        r#"{"name":"ai-gw","channel_ids":[],"bridge_ids":[],"endpoint_ids":[],"device_names":[],"events_allowed":[{"type":"StasisStart"}],"events_disallowed":[]}"#,
    );
    fake.route("POST", "/channels/1.2/continue", 204, "");
    let ari = client(&[("pbx-a", fake.url())]);
    ari.set_event_filter(&["StasisStart", "StasisEnd"])
        .await
        .unwrap();
    ari.continue_in_dialplan(&ChannelId::new("1.2"))
        .await
        .unwrap();
    let seen = fake.requests();
    assert_eq!(seen[0].method, "PUT");
    assert_eq!(seen[0].path, "/applications/ai-gw/eventFilter");
    assert_eq!(
        seen[0].body.as_ref(),
        Some(&json!({"allowed": [{"type": "StasisStart"}, {"type": "StasisEnd"}]}))
    );
    assert_eq!(
        (seen[1].method.as_str(), seen[1].path.as_str()),
        ("POST", "/channels/1.2/continue")
    );
}
