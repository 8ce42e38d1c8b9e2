//! Plain clients for the double's faithfulness tests: ARI REST over reqwest,
//! the events WebSocket over tokio-tungstenite, AMI over a bare TCP socket,
//! and an order-keeping JSON shape to compare with the recordings.
#![allow(dead_code)] // every test binary uses a different part of these helpers

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use mediagw_testkit::asterisk::{AsteriskDouble, DoubleConfig};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// The Stasis application of the recordings.
pub const APP: &str = "ai-gw";

/// A generous deadline for anything that should happen "at once" on this
/// busy machine.
pub const SOON: Duration = Duration::from_secs(5);

pub async fn double() -> AsteriskDouble {
    double_with(DoubleConfig::default()).await
}

pub async fn double_with(cfg: DoubleConfig) -> AsteriskDouble {
    AsteriskDouble::start(cfg).await.expect("double starts")
}

/// A recorded transcript file, copied into the project.
pub fn fixture(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("fixture {}: {e}", p.display()))
}

/// Lines of a recorded `.jsonl` fixture.
pub fn fixture_jsonl(rel: &str) -> Vec<Value> {
    fixture(rel)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("jsonl line"))
        .collect()
}

/// ARI REST with basic auth.
pub struct Ari {
    client: reqwest::Client,
    base: String,
    user: String,
    password: String,
}

impl Ari {
    pub fn new(d: &AsteriskDouble) -> Self {
        // reqwest builds a rustls config even for plain HTTP.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ari {
            client: reqwest::Client::builder().build().expect("http client"),
            base: format!("{}/ari", d.ari_base_url()),
            user: d.ari_user().to_owned(),
            password: d.ari_password().to_owned(),
        }
    }

    pub fn with_credentials(mut self, user: &str, password: &str) -> Self {
        self.user = user.to_owned();
        self.password = password.to_owned();
        self
    }

    pub fn url(&self, path: &str, params: &[(&str, &str)]) -> String {
        let mut url = format!("{}{}", self.base, path);
        if !params.is_empty() {
            let q = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(params)
                .finish();
            url.push('?');
            url.push_str(&q);
        }
        url
    }

    /// Sends a request; returns status and body text.
    pub async fn call(&self, method: &str, path: &str, params: &[(&str, &str)]) -> (u16, String) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let resp = self
            .client
            .request(m, self.url(path, params))
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .expect("ari request");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("ari body"))
    }

    /// Like [`Ari::call`] with a JSON body.
    pub async fn call_json(
        &self,
        method: &str,
        path: &str,
        params: &[(&str, &str)],
        body: &Value,
    ) -> (u16, String) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let resp = self
            .client
            .request(m, self.url(path, params))
            .basic_auth(&self.user, Some(&self.password))
            .json(body)
            .send()
            .await
            .expect("ari request");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("ari body"))
    }

    /// A request whose body must be JSON.
    pub async fn json(&self, method: &str, path: &str, params: &[(&str, &str)]) -> (u16, Value) {
        let (s, text) = self.call(method, path, params).await;
        (
            s,
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{method} {path}: {e}: {text:?}")),
        )
    }

    /// `{"message": ...}` of an error answer.
    pub async fn error(&self, method: &str, path: &str, params: &[(&str, &str)]) -> (u16, String) {
        let (s, v) = self.json(method, path, params).await;
        (
            s,
            v["message"]
                .as_str()
                .unwrap_or_else(|| panic!("no message in {v}"))
                .to_owned(),
        )
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }
}

type WsStream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// The ARI events WebSocket of one application.
pub struct Events {
    ws: WsStream,
}

impl Events {
    pub async fn connect(d: &AsteriskDouble, app: &str) -> Events {
        let url = format!(
            "ws://{}/ari/events?app={app}&api_key={}:{}",
            d.ari_addr(),
            d.ari_user(),
            d.ari_password()
        );
        let (ws, resp) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connect");
        assert_eq!(resp.status().as_u16(), 101);
        let events = Events { ws };
        assert!(
            d.wait_for(SOON, |d| d.ws_connected(app)).await,
            "app registered"
        );
        events
    }

    /// The next event, or `None` at the deadline or when the socket ends.
    pub async fn next(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match msg.ok()? {
                Message::Text(t) => {
                    return Some(serde_json::from_str(t.as_str()).expect("event json"));
                }
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Raw text of the next event.
    pub async fn next_text(&mut self, timeout: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match msg.ok()? {
                Message::Text(t) => return Some(t.as_str().to_owned()),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Events up to and including the first for which `until` holds.
    pub async fn until(
        &mut self,
        timeout: Duration,
        until: impl Fn(&Value) -> bool,
    ) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let text = self
                .next_text(left)
                .await
                .unwrap_or_else(|| panic!("event stream ended; got {out:#?}"));
            let v: Value = serde_json::from_str(&text).expect("event json");
            out.push(text);
            if until(&v) {
                return out;
            }
        }
    }

    /// Every event that arrives within `quiet` of the previous one.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(t) = self.next_text(quiet).await {
            out.push(t);
        }
        out
    }

    /// Whether the server closed or cut the socket within `timeout`.
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return false,
                Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return true,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }
}

/// A bare AMI client.
pub struct Ami {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Ami {
    /// Connects and reads the banner line.
    pub async fn connect(d: &AsteriskDouble) -> (Ami, String) {
        let stream = TcpStream::connect(d.ami_addr()).await.expect("ami connect");
        let mut ami = Ami {
            stream,
            buf: Vec::new(),
        };
        let banner = ami.read_until(b"\r\n", SOON).await.expect("banner");
        (ami, banner)
    }

    async fn read_until(&mut self, delim: &[u8], timeout: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(pos) = self.buf.windows(delim.len()).position(|w| w == delim) {
                let msg: Vec<u8> = self.buf.drain(..pos + delim.len()).collect();
                return Some(String::from_utf8(msg).expect("ami utf8"));
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// One message (response or event) with its blank line, exactly as sent.
    pub async fn message(&mut self, timeout: Duration) -> Option<String> {
        self.read_until(b"\r\n\r\n", timeout).await
    }

    /// Messages until none arrives for `quiet`.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(m) = self.message(quiet).await {
            out.push(m);
        }
        out
    }

    pub async fn send(&mut self, headers: &[(&str, &str)]) {
        let mut s = String::new();
        for (k, v) in headers {
            s.push_str(&format!("{k}: {v}\r\n"));
        }
        s.push_str("\r\n");
        self.stream
            .write_all(s.as_bytes())
            .await
            .expect("ami write");
    }

    /// Logs in as the recordings do; returns the response, FullyBooted and
    /// SuccessfulAuth.
    pub async fn login(&mut self, d: &AsteriskDouble) -> Vec<String> {
        let (user, secret) = (d.ami_user().to_owned(), d.ami_secret().to_owned());
        self.send(&[
            ("Action", "Login"),
            ("Username", &user),
            ("Secret", &secret),
            ("Events", "on"),
            ("ActionID", "login-1"),
        ])
        .await;
        let mut out = Vec::new();
        for _ in 0..3 {
            out.push(self.message(SOON).await.expect("login answer"));
        }
        out
    }

    /// Whether the server closed or reset the connection within `timeout`.
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
            }
        }
    }
}

/// `Key: Value` lines of an AMI message, in order.
pub fn ami_headers(msg: &str) -> Vec<(String, String)> {
    msg.split("\r\n")
        .filter_map(|l| {
            l.split_once(": ")
                .or_else(|| l.strip_suffix(':').map(|k| (k, "")))
        })
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

pub fn ami_get<'a>(msg: &'a [(String, String)], key: &str) -> &'a str {
    msg.iter()
        .find(|(k, _)| k == key)
        .map_or("", |(_, v)| v.as_str())
}

/// Messages of a recorded `ami_raw.txt` (after the banner line).
pub fn recorded_ami(rel: &str) -> Vec<String> {
    let raw = fixture(rel);
    let body = raw.split_once("\r\n").map_or("", |(_, rest)| rest);
    body.split_inclusive("\r\n\r\n")
        .map(str::to_owned)
        .filter(|m| !m.trim().is_empty())
        .collect()
}

/// The structure of a JSON text: keys in order and value kinds, values
/// ignored (`{id:str,args:[str],...}`).
pub fn shape(json: &str) -> String {
    let mut de = serde_json::Deserializer::from_str(json);
    Shape::deserialize(&mut de)
        .unwrap_or_else(|e| panic!("shape of {json}: {e}"))
        .0
}

struct Shape(String);

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ShapeVisitor)
    }
}

struct ShapeVisitor;

impl<'de> Visitor<'de> for ShapeVisitor {
    type Value = Shape;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Shape, E> {
        Ok(Shape("bool".into()))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Shape, E> {
        Ok(Shape("num".into()))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Shape, E> {
        Ok(Shape("num".into()))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Shape, E> {
        Ok(Shape("num".into()))
    }

    fn visit_str<E>(self, _: &str) -> Result<Shape, E> {
        Ok(Shape("str".into()))
    }

    fn visit_unit<E>(self) -> Result<Shape, E> {
        Ok(Shape("null".into()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
        let mut kinds: Vec<String> = Vec::new();
        while let Some(Shape(s)) = seq.next_element()? {
            if !kinds.contains(&s) {
                kinds.push(s);
            }
        }
        Ok(Shape(format!("[{}]", kinds.join("|"))))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        let mut parts = Vec::new();
        while let Some(k) = map.next_key::<String>()? {
            let Shape(v) = map.next_value()?;
            parts.push(format!("{k}:{v}"));
        }
        Ok(Shape(format!("{{{}}}", parts.join(","))))
    }
}

/// The role a channel plays in a recorded scenario, from its name.
pub fn role(name: &str) -> &'static str {
    if name.starts_with("UnicastRTP/") {
        "media"
    } else if name.ends_with(";2") && name.contains("@tone-source") {
        "local2"
    } else {
        "caller"
    }
}

/// Role of the channel an ARI event is about (`bridge` for recording and
/// bridge events).
pub fn event_role(v: &Value) -> &'static str {
    let name = v["channel"]["name"]
        .as_str()
        .or_else(|| v["peer"]["name"].as_str());
    name.map_or("bridge", role)
}

/// `Type` or `Type(VARIABLE)` of an ARI event.
pub fn event_label(v: &Value) -> String {
    let t = v["type"].as_str().unwrap_or("?");
    match v["variable"].as_str() {
        Some(var) => format!("{t}({var})"),
        None => t.to_owned(),
    }
}

/// A call as the gateway sets it up: inbound call (test API), answer,
/// externalMedia to `external`, mixing bridge, both channels added.
pub struct BridgedCall {
    pub caller: String,
    pub media: String,
    pub bridge: String,
    /// `UNICASTRTP_LOCAL_ADDRESS:PORT` of the externalMedia channel.
    pub local: std::net::SocketAddr,
    /// Just before the addChannel request was sent.
    pub before_add: std::time::Instant,
    /// Just after its answer arrived.
    pub after_add: std::time::Instant,
}

#[allow(clippy::disallowed_methods)] // test driver: times the bridge join
pub async fn bridged_call(
    d: &AsteriskDouble,
    ari: &Ari,
    format: &str,
    external: std::net::SocketAddr,
    tone_hz: u32,
) -> BridgedCall {
    use mediagw_testkit::asterisk::InboundCall;
    let caller = d
        .inbound_call(InboundCall {
            tone_hz: Some(tone_hz),
            app_args: vec!["inbound".into()],
            ..InboundCall::default()
        })
        .expect("inbound call")
        .as_str()
        .to_owned();
    assert_eq!(
        ari.call("POST", &format!("/channels/{caller}/answer"), &[])
            .await
            .0,
        204
    );
    let ext = external.to_string();
    let (s, em) = ari
        .json(
            "POST",
            "/channels/externalMedia",
            &[
                ("app", APP),
                ("external_host", &ext),
                ("format", format),
                ("encapsulation", "rtp"),
                ("transport", "udp"),
                ("connection_type", "client"),
                ("direction", "both"),
            ],
        )
        .await;
    assert_eq!(s, 200, "{em}");
    let media = em["id"].as_str().expect("id").to_owned();
    let local: std::net::SocketAddr = format!(
        "{}:{}",
        em["channelvars"]["UNICASTRTP_LOCAL_ADDRESS"]
            .as_str()
            .expect("address"),
        em["channelvars"]["UNICASTRTP_LOCAL_PORT"]
            .as_str()
            .expect("port")
    )
    .parse()
    .expect("local addr");
    let (s, b) = ari
        .json(
            "POST",
            "/bridges",
            &[("type", "mixing"), ("name", &format!("call-{caller}"))],
        )
        .await;
    assert_eq!(s, 200);
    let bridge = b["id"].as_str().expect("id").to_owned();
    let both = format!("{caller},{media}");
    let before_add = std::time::Instant::now();
    assert_eq!(
        ari.call(
            "POST",
            &format!("/bridges/{bridge}/addChannel"),
            &[("channel", &both)]
        )
        .await
        .0,
        204
    );
    let after_add = std::time::Instant::now();
    BridgedCall {
        caller,
        media,
        bridge,
        local,
        before_add,
        after_add,
    }
}

/// Receives datagrams on `sock` for `dur`; returns them with arrival times.
#[allow(clippy::disallowed_methods)] // test driver: stamps arrivals
pub async fn receive_for(
    sock: &tokio::net::UdpSocket,
    dur: Duration,
) -> Vec<(Vec<u8>, std::net::SocketAddr, std::time::Instant)> {
    let deadline = tokio::time::Instant::now() + dur;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 2048];
    while let Ok(Ok((n, from))) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await
    {
        out.push((buf[..n].to_vec(), from, std::time::Instant::now()));
    }
    out
}

/// Receives until `n` datagrams arrived or `timeout` passed.
#[allow(clippy::disallowed_methods)] // test driver: stamps arrivals
pub async fn receive_n(
    sock: &tokio::net::UdpSocket,
    n: usize,
    timeout: Duration,
) -> Vec<(Vec<u8>, std::net::SocketAddr, std::time::Instant)> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 2048];
    while out.len() < n {
        match tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
            Ok(Ok((len, from))) => out.push((buf[..len].to_vec(), from, std::time::Instant::now())),
            _ => break,
        }
    }
    out
}
