//! ARI over HTTP: [`AriClient`], the REST operations the call flow needs,
//! and how Asterisk's answers map to [`Error`]s.
//!
//! Requests go to the *active server* (shared with
//! [`super::events::AriEvents`], which moves it on failover), under
//! `<url>/ari/...`, with HTTP basic auth and a per-request timeout.
//! Parameters travel as Asterisk's own clients send them, checked against
//! recordings of Asterisk 22: simple fields as query parameters (in the
//! order the recordings show), channel variables as a JSON body
//! `{"variables": {...}}`. Optional fields left `None` are not sent, so
//! Asterisk applies its defaults (the same in 18 to 22).
//!
//! # Errors, by what they mean for the call
//!
//! | Asterisk says                       | [`ErrorKind`]   | retry? |
//! |-------------------------------------|-----------------|--------|
//! | 404 (channel, bridge, recording gone) | `NotFound`    | no     |
//! | 409 (not in Stasis, bridge in use), 412 (channel in the wrong state) | `Conflict` | no |
//! | 400, 422 (we sent something wrong)  | `Invalid` (party Asterisk) | no |
//! | 401, 403                            | `Unauthorized`  | no     |
//! | 500, 502, 503, ...                  | `PeerFailure`   | yes    |
//! | 501 (not implemented there)         | `PeerFailure`   | no     |
//! | connect refused, reset              | `Unavailable`   | yes    |
//! | no answer within the timeout        | `Timeout`       | yes    |
//! | a 2xx body that is not the model    | `Protocol`      | no     |
//!
//! Two operations give 400 and 422 another meaning, which `bridges.json`
//! documents: `addChannel`/`removeChannel` answer 400 "Channel not found"
//! when the channel hung up (`NotFound`) and 422 when the channel is not in
//! Stasis (yet, or any more) or not in that bridge (`Conflict`). Reading a
//! channel variable that is not set is not an error: [`AriClient::variable`]
//! returns `None`. Asterisk's `{"message": ...}` is in every error's text.
//!
//! Left out: TLS client certificates, and any ARI resource the gateway does
//! not use.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;
use url::Url;

use super::AriConfig;
use super::model::{
    AsteriskInfo, Bridge, BridgeId, Channel, ChannelId, LiveRecording, StoredRecording,
};
use crate::error::{Error, ErrorKind, Party, Result};
use crate::secret::Secret;
use crate::service::{LinkState, link_state};

/// Idle pooled connections are dropped before Asterisk's own keep-alive
/// (`http.conf` `session_keep_alive`, 15 s by default) closes them, so a
/// request never races a server-side close.
const POOL_IDLE: Duration = Duration::from_secs(10);

/// The most of an error body quoted in an error's text.
const MAX_QUOTED: usize = 200;

/// The ARI REST client. Cheap to clone: clones share connections, the
/// active server and the link state.
#[derive(Clone)]
pub struct AriClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    servers: Vec<Server>,
    active: AtomicUsize,
    auth: HeaderValue,
    app: String,
    request_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    ping_interval: Duration,
    state: watch::Sender<LinkState>,
}

/// One configured server, its URLs worked out once.
#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) name: String,
    /// `http://host:port[/prefix]/ari`
    rest: Url,
    /// `ws://host:port[/prefix]/ari/events?app=APP&subscribeAll=false`
    pub(crate) events: Url,
}

impl fmt::Debug for AriClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AriClient")
            .field("servers", &self.inner.servers.len())
            .field("active", &self.active_server())
            .field("app", &self.inner.app)
            .finish()
    }
}

/// `POST /channels`: a call originated into the application (or the
/// dialplan).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Originate {
    /// What to call: `PJSIP/alice`, `Local/s@tone-source`.
    pub endpoint: String,
    /// Dialplan extension to continue in, instead of an application.
    pub extension: Option<String>,
    /// Dialplan context, with `extension`.
    pub context: Option<String>,
    /// Dialplan priority, with `extension`.
    pub priority: Option<i64>,
    /// The Stasis application the answered call enters.
    pub app: Option<String>,
    /// Its arguments, comma-separated (`StasisStart.args`).
    pub app_args: Option<String>,
    /// Caller id to present (`Name <1000>`).
    pub caller_id: Option<String>,
    /// Seconds to wait for an answer (Asterisk's default: 30).
    pub timeout: Option<u32>,
    /// The unique id to give the channel.
    pub channel_id: Option<ChannelId>,
    /// The unique id of the other leg of a Local channel.
    pub other_channel_id: Option<ChannelId>,
    /// The channel that causes this call (codecs, linked id).
    pub originator: Option<ChannelId>,
    /// Formats to offer (`ulaw,alaw`), when there is no originator.
    pub formats: Option<String>,
    /// Channel variables to set on the new channel.
    pub variables: BTreeMap<String, String>,
}

/// `POST /channels/externalMedia`: a channel that sends the call's audio
/// as RTP to `external_host` and plays what comes back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalMedia {
    /// The Stasis application the channel enters.
    pub app: String,
    /// Where Asterisk sends RTP: the dataplane endpoint's address.
    pub external_host: SocketAddr,
    /// The audio format on the wire.
    pub format: MediaFormat,
    /// `rtp` (the default when `None`).
    pub encapsulation: Option<Encapsulation>,
    /// `udp` (the default when `None`).
    pub transport: Option<Transport>,
    /// `client` (the default when `None`).
    pub connection_type: Option<ConnectionType>,
    /// `both` (the default when `None`).
    pub direction: Option<Direction>,
    /// The unique id to give the channel.
    pub channel_id: Option<ChannelId>,
    /// Application data (`StasisStart.args` of the new channel).
    pub data: Option<String>,
    /// Channel variables to set on the new channel.
    pub variables: BTreeMap<String, String>,
}

/// The audio format of an externalMedia channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaFormat {
    /// G.711 µ-law, payload type 0, 160 bytes per 20 ms.
    Ulaw,
    /// G.711 A-law, payload type 8, 160 bytes per 20 ms.
    Alaw,
    /// 16 kHz linear, big-endian, 640 bytes per 20 ms (Asterisk uses
    /// dynamic payload type 118).
    Slin16,
}

/// externalMedia `encapsulation`: only RTP is supported by the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encapsulation {
    /// RTP.
    Rtp,
}

/// externalMedia `transport`: only UDP is supported by the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP.
    Udp,
}

/// externalMedia `connection_type`: Asterisk is the client (sends first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionType {
    /// Asterisk connects (sends) to the external host.
    Client,
}

/// externalMedia `direction`: the only value Asterisk accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Audio both ways.
    Both,
}

/// `POST /bridges/{id}/record`: a live recording of a bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRecord {
    /// The recording's name (also its file name, without extension).
    pub name: String,
    /// The file format (`wav`).
    pub format: String,
    /// Stop after this many seconds (Asterisk's default 0: no limit).
    pub max_duration_seconds: Option<u32>,
    /// Stop after this many seconds of silence (default 0: never).
    pub max_silence_seconds: Option<u32>,
    /// What to do when a recording of that name exists (default `fail`).
    pub if_exists: Option<IfExists>,
    /// Beep before recording (default no).
    pub beep: Option<bool>,
    /// A DTMF digit that stops the recording (default none).
    pub terminate_on: Option<TerminateOn>,
}

/// `ifExists` of a recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IfExists {
    /// Refuse (409).
    Fail,
    /// Replace the old file.
    Overwrite,
    /// Append to it.
    Append,
}

/// `terminateOn` of a recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TerminateOn {
    /// No digit stops it.
    None,
    /// Any digit.
    Any,
    /// `*`.
    Star,
    /// `#`.
    Hash,
}

/// How Asterisk's 4xx answers read for one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rules {
    /// As the module header's table says.
    Default,
    /// `addChannel`/`removeChannel`: 400 "Channel not found" is a channel
    /// gone, 422 a channel not in Stasis or not in that bridge.
    BridgeMembership,
}

/// A successful answer: status and body.
struct Reply {
    /// Index of the server that answered.
    server: usize,
    status: StatusCode,
    body: Vec<u8>,
}

impl AriClient {
    /// A client for `cfg.servers` (the first is active until the events
    /// service connects somewhere), authenticating as `cfg.username` with
    /// `password`. Checks the configuration; opens no connection.
    pub fn new(cfg: &AriConfig, password: Secret) -> Result<Self> {
        if cfg.servers.is_empty() {
            return Err(Error::invalid("ari.servers: at least one server is needed"));
        }
        if cfg.app.is_empty() || cfg.app.contains(',') {
            return Err(Error::invalid(
                "ari.app: a Stasis application name, not empty, without commas",
            ));
        }
        if cfg.username.is_empty() || cfg.username.contains(':') {
            return Err(Error::invalid("ari.username: not empty, without ':'"));
        }
        if cfg.request_timeout_ms == 0 || cfg.ping_interval_ms == 0 {
            return Err(Error::invalid(
                "ari.request_timeout_ms and ari.ping_interval_ms must be above 0",
            ));
        }
        if cfg.backoff_min_ms == 0 || cfg.backoff_min_ms > cfg.backoff_max_ms {
            return Err(Error::invalid(
                "ari.backoff_min_ms must be above 0 and at most ari.backoff_max_ms",
            ));
        }
        let mut servers = Vec::with_capacity(cfg.servers.len());
        for s in &cfg.servers {
            if s.name.is_empty() || servers.iter().any(|o: &Server| o.name == s.name) {
                return Err(Error::invalid(format!(
                    "ari.servers: names must be unique and not empty ({:?})",
                    s.name
                )));
            }
            servers.push(Server::parse(&s.name, &s.url, &cfg.app)?);
        }
        install_crypto_provider();
        let request_timeout = Duration::from_millis(cfg.request_timeout_ms);
        let http = reqwest::Client::builder()
            .connect_timeout(request_timeout)
            .pool_idle_timeout(POOL_IDLE)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("mediagw/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::internal("cannot build the ARI HTTP client").with_cause(e))?;
        let (state, _) = link_state();
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                servers,
                active: AtomicUsize::new(0),
                auth: basic_auth(&cfg.username, &password)?,
                app: cfg.app.clone(),
                request_timeout,
                backoff_min: Duration::from_millis(cfg.backoff_min_ms),
                backoff_max: Duration::from_millis(cfg.backoff_max_ms),
                ping_interval: Duration::from_millis(cfg.ping_interval_ms),
                state,
            }),
        })
    }

    /// The Stasis application name.
    pub fn app(&self) -> &str {
        &self.inner.app
    }

    /// The name of the server requests go to now.
    pub fn active_server(&self) -> &str {
        &self.inner.servers[self.active_index()].name
    }

    /// Whether the events WebSocket is up, and to which server.
    pub fn state(&self) -> watch::Receiver<LinkState> {
        self.inner.state.subscribe()
    }

    // --- asterisk ---------------------------------------------------------

    /// `GET /asterisk/info`: version, entity id, start time.
    pub async fn info(&self) -> Result<AsteriskInfo> {
        let r = self
            .call(
                Method::GET,
                &["asterisk", "info"],
                &[],
                None,
                "read asterisk info",
                Rules::Default,
            )
            .await?;
        self.decode(r, "asterisk info")
    }

    // --- channels ---------------------------------------------------------

    /// `GET /channels`: every channel Asterisk has (not only ours).
    pub async fn channels(&self) -> Result<Vec<Channel>> {
        let r = self
            .call(
                Method::GET,
                &["channels"],
                &[],
                None,
                "list channels",
                Rules::Default,
            )
            .await?;
        self.decode(r, "channel list")
    }

    /// `GET /channels/{id}`.
    pub async fn channel(&self, id: &ChannelId) -> Result<Channel> {
        let what = format!("read channel {id}");
        let r = self
            .call(
                Method::GET,
                &["channels", id.as_str()],
                &[],
                None,
                &what,
                Rules::Default,
            )
            .await?;
        self.decode(r, &what)
    }

    /// `PUT /applications/{app}/eventFilter`: Asterisk sends the
    /// application only these event types (Asterisk 13.26, 16.3 and later).
    /// A busy call sends dozens of events the call flow does not read
    /// (variables set, connected line, dial progress); this saves parsing
    /// them on both sides. An empty list lets every type through again.
    pub async fn set_event_filter(&self, allowed: &[&str]) -> Result<()> {
        let app = self.app().to_owned();
        let what = format!("set the event filter of {app}");
        let types: Vec<Value> = allowed
            .iter()
            .map(|t| serde_json::json!({ "type": t }))
            .collect();
        self.call(
            Method::PUT,
            &["applications", app.as_str(), "eventFilter"],
            &[],
            Some(serde_json::json!({ "allowed": types })),
            &what,
            Rules::Default,
        )
        .await
        .map(drop)
    }

    /// `POST /channels/{id}/continue`: the channel leaves the application
    /// and goes on in the dialplan where it was (used for calls no tenant
    /// claims, so the PBX can route them elsewhere).
    pub async fn continue_in_dialplan(&self, id: &ChannelId) -> Result<()> {
        let what = format!("continue channel {id} in the dialplan");
        self.call(
            Method::POST,
            &["channels", id.as_str(), "continue"],
            &[],
            None,
            &what,
            Rules::Default,
        )
        .await
        .map(drop)
    }

    /// `POST /channels/{id}/answer`.
    pub async fn answer(&self, id: &ChannelId) -> Result<()> {
        let what = format!("answer channel {id}");
        self.call(
            Method::POST,
            &["channels", id.as_str(), "answer"],
            &[],
            None,
            &what,
            Rules::Default,
        )
        .await
        .map(drop)
    }

    /// `DELETE /channels/{id}`, with an optional `reason` (`normal`,
    /// `busy`, `congestion`, `no_answer`, `rejected`, ...).
    pub async fn hangup(&self, id: &ChannelId, reason: Option<&str>) -> Result<()> {
        let what = format!("hang up channel {id}");
        let mut query = Vec::new();
        push(&mut query, "reason", reason);
        self.call(
            Method::DELETE,
            &["channels", id.as_str()],
            &query,
            None,
            &what,
            Rules::Default,
        )
        .await
        .map(drop)
    }

    /// `POST /channels`: originates a call; returns the new channel (still
    /// `Down`: it enters the application when answered).
    pub async fn originate(&self, o: &Originate) -> Result<Channel> {
        let what = format!("originate to {}", o.endpoint);
        let mut q = vec![("endpoint", o.endpoint.clone())];
        push(&mut q, "extension", o.extension.as_deref());
        push(&mut q, "context", o.context.as_deref());
        push(&mut q, "priority", o.priority);
        push(&mut q, "app", o.app.as_deref());
        push(&mut q, "appArgs", o.app_args.as_deref());
        push(&mut q, "callerId", o.caller_id.as_deref());
        push(&mut q, "timeout", o.timeout);
        push(&mut q, "channelId", o.channel_id.as_ref());
        push(&mut q, "otherChannelId", o.other_channel_id.as_ref());
        push(&mut q, "originator", o.originator.as_ref());
        push(&mut q, "formats", o.formats.as_deref());
        let body = variables_body(&o.variables);
        let r = self
            .call(Method::POST, &["channels"], &q, body, &what, Rules::Default)
            .await?;
        self.decode(r, &what)
    }

    /// `GET /channels/{id}/variable`: the value, or `None` when the
    /// variable is not set (Asterisk's 404 "Provided variable was not
    /// found"). A gone channel is still `NotFound`.
    pub async fn variable(&self, id: &ChannelId, name: &str) -> Result<Option<String>> {
        #[derive(Deserialize)]
        struct Value {
            #[serde(default)]
            value: String,
        }
        let what = format!("read variable {name} of channel {id}");
        let q = [("variable", name.to_owned())];
        match self
            .call(
                Method::GET,
                &["channels", id.as_str(), "variable"],
                &q,
                None,
                &what,
                Rules::Default,
            )
            .await
        {
            Ok(r) => self.decode::<Value>(r, &what).map(|v| Some(v.value)),
            Err(e) if e.kind() == ErrorKind::NotFound && e.message().contains(VARIABLE_UNSET) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// `POST /channels/{id}/variable`: sets a channel variable (or a
    /// dialplan function, `NAME(args)`).
    pub async fn set_variable(&self, id: &ChannelId, name: &str, value: &str) -> Result<()> {
        let what = format!("set variable {name} of channel {id}");
        let q = [("variable", name.to_owned()), ("value", value.to_owned())];
        self.call(
            Method::POST,
            &["channels", id.as_str(), "variable"],
            &q,
            None,
            &what,
            Rules::Default,
        )
        .await
        .map(drop)
    }

    /// `POST /channels/externalMedia`: returns the new channel, whose
    /// `channelvars` carry `UNICASTRTP_LOCAL_ADDRESS` and
    /// `UNICASTRTP_LOCAL_PORT`, the address Asterisk sends from and
    /// receives on.
    pub async fn external_media(&self, m: &ExternalMedia) -> Result<Channel> {
        let what = format!("create externalMedia to {}", m.external_host);
        let mut q = vec![
            ("app", m.app.clone()),
            ("external_host", m.external_host.to_string()),
            ("format", m.format.as_str().to_owned()),
        ];
        push(&mut q, "encapsulation", m.encapsulation.map(|_| "rtp"));
        push(&mut q, "transport", m.transport.map(|_| "udp"));
        push(
            &mut q,
            "connection_type",
            m.connection_type.map(|_| "client"),
        );
        push(&mut q, "direction", m.direction.map(|_| "both"));
        push(&mut q, "channelId", m.channel_id.as_ref());
        push(&mut q, "data", m.data.as_deref());
        let body = variables_body(&m.variables);
        let r = self
            .call(
                Method::POST,
                &["channels", "externalMedia"],
                &q,
                body,
                &what,
                Rules::Default,
            )
            .await?;
        self.decode(r, &what)
    }

    // --- bridges ----------------------------------------------------------

    /// `GET /bridges`.
    pub async fn bridges(&self) -> Result<Vec<Bridge>> {
        let r = self
            .call(
                Method::GET,
                &["bridges"],
                &[],
                None,
                "list bridges",
                Rules::Default,
            )
            .await?;
        self.decode(r, "bridge list")
    }

    /// `GET /bridges/{id}`.
    pub async fn bridge(&self, id: &BridgeId) -> Result<Bridge> {
        let what = format!("read bridge {id}");
        let r = self
            .call(
                Method::GET,
                &["bridges", id.as_str()],
                &[],
                None,
                &what,
                Rules::Default,
            )
            .await?;
        self.decode(r, &what)
    }

    /// `POST /bridges`: a bridge of `kind` (`mixing`; Asterisk also takes
    /// `holding` and flag lists such as `mixing,proxy_media`), named
    /// `name`, with our own id when given.
    pub async fn create_bridge(
        &self,
        kind: &str,
        name: &str,
        bridge_id: Option<&BridgeId>,
    ) -> Result<Bridge> {
        let what = format!("create bridge {name}");
        let mut q = vec![("type", kind.to_owned()), ("name", name.to_owned())];
        push(&mut q, "bridgeId", bridge_id);
        let r = self
            .call(Method::POST, &["bridges"], &q, None, &what, Rules::Default)
            .await?;
        self.decode(r, &what)
    }

    /// `POST /bridges/{id}/addChannel` with the channels comma-separated.
    pub async fn add_channels(&self, bridge: &BridgeId, channels: &[ChannelId]) -> Result<()> {
        let list = join(channels);
        let what = format!("add {list} to bridge {bridge}");
        let q = [("channel", list)];
        self.call(
            Method::POST,
            &["bridges", bridge.as_str(), "addChannel"],
            &q,
            None,
            &what,
            Rules::BridgeMembership,
        )
        .await
        .map(drop)
    }

    /// `POST /bridges/{id}/removeChannel`.
    pub async fn remove_channel(&self, bridge: &BridgeId, channel: &ChannelId) -> Result<()> {
        let what = format!("remove {channel} from bridge {bridge}");
        let q = [("channel", channel.as_str().to_owned())];
        self.call(
            Method::POST,
            &["bridges", bridge.as_str(), "removeChannel"],
            &q,
            None,
            &what,
            Rules::BridgeMembership,
        )
        .await
        .map(drop)
    }

    /// `DELETE /bridges/{id}`.
    pub async fn destroy_bridge(&self, id: &BridgeId) -> Result<()> {
        let what = format!("destroy bridge {id}");
        self.call(
            Method::DELETE,
            &["bridges", id.as_str()],
            &[],
            None,
            &what,
            Rules::Default,
        )
        .await
        .map(drop)
    }

    // --- recordings -------------------------------------------------------

    /// `POST /bridges/{id}/record`: starts recording the bridge's mix.
    pub async fn record_bridge(
        &self,
        bridge: &BridgeId,
        rec: &LiveRecord,
    ) -> Result<LiveRecording> {
        let what = format!("record bridge {bridge} as {}", rec.name);
        let mut q = vec![("name", rec.name.clone()), ("format", rec.format.clone())];
        push(&mut q, "maxDurationSeconds", rec.max_duration_seconds);
        push(&mut q, "maxSilenceSeconds", rec.max_silence_seconds);
        push(&mut q, "ifExists", rec.if_exists.map(IfExists::as_str));
        push(&mut q, "beep", rec.beep);
        push(
            &mut q,
            "terminateOn",
            rec.terminate_on.map(TerminateOn::as_str),
        );
        let r = self
            .call(
                Method::POST,
                &["bridges", bridge.as_str(), "record"],
                &q,
                None,
                &what,
                Rules::Default,
            )
            .await?;
        self.decode(r, &what)
    }

    /// `POST /recordings/live/{name}/stop`: stops and stores a recording.
    pub async fn stop_recording(&self, name: &str) -> Result<()> {
        let what = format!("stop recording {name}");
        self.call(
            Method::POST,
            &["recordings", "live", name, "stop"],
            &[],
            None,
            &what,
            Rules::Default,
        )
        .await
        .map(drop)
    }

    /// `GET /recordings/stored/{name}`: a finished recording.
    pub async fn stored_recording(&self, name: &str) -> Result<StoredRecording> {
        let what = format!("read stored recording {name}");
        let r = self
            .call(
                Method::GET,
                &["recordings", "stored", name],
                &[],
                None,
                &what,
                Rules::Default,
            )
            .await?;
        self.decode(r, &what)
    }

    // --- shared with the events service -----------------------------------

    pub(crate) fn servers(&self) -> &[Server] {
        &self.inner.servers
    }

    pub(crate) fn active_index(&self) -> usize {
        self.inner.active.load(Ordering::Acquire)
    }

    pub(crate) fn set_active(&self, index: usize) {
        debug_assert!(index < self.inner.servers.len());
        self.inner.active.store(index, Ordering::Release);
    }

    pub(crate) fn auth_header(&self) -> &HeaderValue {
        &self.inner.auth
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }

    pub(crate) fn backoff_bounds(&self) -> (Duration, Duration) {
        (self.inner.backoff_min, self.inner.backoff_max)
    }

    pub(crate) fn ping_interval(&self) -> Duration {
        self.inner.ping_interval
    }

    pub(crate) fn set_state(&self, state: LinkState) {
        self.inner.state.send_replace(state);
    }

    // --- the one place requests are made ----------------------------------

    async fn call(
        &self,
        method: Method,
        path: &[&str],
        query: &[(&str, String)],
        body: Option<Value>,
        what: &str,
        rules: Rules,
    ) -> Result<Reply> {
        let index = self.active_index();
        let server = &self.inner.servers[index];
        let mut url = server.rest.clone();
        url.path_segments_mut()
            // The URL was checked to be http(s), which always has a path.
            .map_err(|()| Error::internal("ARI URL cannot take a path"))?
            .extend(path);
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        let mut req = self
            .inner
            .http
            .request(method, url)
            .header(AUTHORIZATION, self.inner.auth.clone())
            .timeout(self.inner.request_timeout);
        if let Some(body) = &body {
            req = req.json(body);
        }
        let fail = |e: reqwest::Error| transport_error(&e, what, &server.name).with_cause(e);
        let resp = req.send().await.map_err(fail)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(fail)?;
        if status.is_success() {
            return Ok(Reply {
                server: index,
                status,
                body: bytes.to_vec(),
            });
        }
        Err(status_error(status.as_u16(), &error_message(&bytes), rules)
            .context(format_args!("{what} on {}", server.name)))
    }

    fn decode<T: DeserializeOwned>(&self, reply: Reply, what: &str) -> Result<T> {
        serde_json::from_slice(&reply.body).map_err(|e| {
            Error::new(
                ErrorKind::Protocol,
                Party::Asterisk,
                format!(
                    "{what} on {}: HTTP {} with a body that is not the expected model: {}",
                    self.inner.servers[reply.server].name,
                    reply.status.as_u16(),
                    quote(&reply.body)
                ),
            )
            .with_cause(e)
        })
    }
}

/// What Asterisk answers when a channel variable is not set.
const VARIABLE_UNSET: &str = "Provided variable was not found";

impl Server {
    fn parse(name: &str, url: &str, app: &str) -> Result<Self> {
        let bad = |why: &str| Error::invalid(format!("ari.servers {name}: url {url:?} {why}"));
        let base = Url::parse(url).map_err(|e| bad("is not a URL").with_cause(e))?;
        match base.scheme() {
            "http" => {}
            "https" => {
                return Err(bad(
                    "uses https: the events WebSocket has no TLS in this build; \
                     use http on loopback or a private network",
                ));
            }
            _ => return Err(bad("must be http://host:port")),
        }
        if base.host().is_none() || base.query().is_some() || !base.username().is_empty() {
            return Err(bad(
                "must be http://host:port[/prefix], without query or user",
            ));
        }
        let mut rest = base;
        rest.path_segments_mut()
            .map_err(|()| bad("cannot take a path"))?
            .pop_if_empty()
            .push("ari");
        let mut events = rest.clone();
        events
            .set_scheme("ws")
            .map_err(|()| bad("cannot become a ws:// URL"))?;
        events
            .path_segments_mut()
            .map_err(|()| bad("cannot take a path"))?
            .push("events");
        events
            .query_pairs_mut()
            .append_pair("app", app)
            .append_pair("subscribeAll", "false");
        Ok(Self {
            name: name.to_owned(),
            rest,
            events,
        })
    }
}

impl MediaFormat {
    /// The name Asterisk knows the format by.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ulaw => "ulaw",
            Self::Alaw => "alaw",
            Self::Slin16 => "slin16",
        }
    }
}

impl ExternalMedia {
    /// RTP over UDP to `external_host` in `format`, entering `app`; every
    /// other parameter at Asterisk's default (rtp, udp, client, both).
    pub fn rtp(app: impl Into<String>, external_host: SocketAddr, format: MediaFormat) -> Self {
        Self {
            app: app.into(),
            external_host,
            format,
            encapsulation: None,
            transport: None,
            connection_type: None,
            direction: None,
            channel_id: None,
            data: None,
            variables: BTreeMap::new(),
        }
    }
}

impl LiveRecord {
    /// A recording named `name` in `format`, everything else at Asterisk's
    /// defaults.
    pub fn new(name: impl Into<String>, format: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            format: format.into(),
            max_duration_seconds: None,
            max_silence_seconds: None,
            if_exists: None,
            beep: None,
            terminate_on: None,
        }
    }
}

impl IfExists {
    fn as_str(self) -> &'static str {
        match self {
            Self::Fail => "fail",
            Self::Overwrite => "overwrite",
            Self::Append => "append",
        }
    }
}

impl TerminateOn {
    fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Any => "any",
            Self::Star => "*",
            Self::Hash => "#",
        }
    }
}

/// Appends `key=value` when there is a value.
fn push<V: fmt::Display>(
    query: &mut Vec<(&'static str, String)>,
    key: &'static str,
    value: Option<V>,
) {
    if let Some(v) = value {
        query.push((key, v.to_string()));
    }
}

fn join(channels: &[ChannelId]) -> String {
    let mut out = String::new();
    for (i, c) in channels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(c.as_str());
    }
    out
}

/// `{"variables": {...}}`, or no body when there are none.
fn variables_body(vars: &BTreeMap<String, String>) -> Option<Value> {
    (!vars.is_empty()).then(|| json!({ "variables": vars }))
}

/// The error an HTTP status means, for an operation read by `rules`.
pub(crate) fn status_error(status: u16, message: &str, rules: Rules) -> Error {
    use ErrorKind::*;
    let channel_gone = message.eq_ignore_ascii_case("Channel not found");
    let (kind, meaning) = match (rules, status) {
        (Rules::BridgeMembership, 400) if channel_gone => (NotFound, "channel gone"),
        (Rules::BridgeMembership, 422) => (Conflict, "channel not in Stasis or not in this bridge"),
        (_, 404) => (NotFound, "gone"),
        (_, 409) => (Conflict, "wrong state"),
        (_, 412) => (Conflict, "channel in the wrong state"),
        (_, 400 | 422) => (Invalid, "request refused"),
        (_, 401 | 403) => (Unauthorized, "credentials refused"),
        (_, 500..=599) => (PeerFailure, "Asterisk failed"),
        _ => (Protocol, "unexpected status"),
    };
    let e = Error::new(
        kind,
        Party::Asterisk,
        format!("{meaning}: HTTP {status}: {message}"),
    );
    // 501: Asterisk does not implement what we asked; asking again won't help.
    if status == 501 {
        e.with_retryable(false)
    } else {
        e
    }
}

/// Asterisk's `{"message": "..."}`, or the body itself, shortened.
pub(crate) fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct AriError {
        message: String,
    }
    match serde_json::from_slice::<AriError>(body) {
        Ok(e) => e.message,
        Err(_) if body.is_empty() => "(no body)".to_owned(),
        Err(_) => quote(body),
    }
}

fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    match text.char_indices().nth(MAX_QUOTED) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.into_owned(),
    }
}

fn transport_error(e: &reqwest::Error, what: &str, server: &str) -> Error {
    let (kind, why) = if e.is_connect() {
        (ErrorKind::Unavailable, "cannot connect")
    } else if e.is_timeout() {
        (ErrorKind::Timeout, "no answer in time")
    } else if e.is_builder() {
        return Error::internal(format!("{what}: cannot build the request"));
    } else {
        (ErrorKind::Unavailable, "connection failed")
    };
    Error::new(kind, Party::Asterisk, format!("{what} on {server}: {why}"))
}

/// `Basic base64(user:password)`, marked sensitive so it is never logged.
fn basic_auth(username: &str, password: &Secret) -> Result<HeaderValue> {
    let encoded = base64(format!("{username}:{}", password.expose()).as_bytes());
    let mut v = HeaderValue::from_str(&format!("Basic {encoded}"))
        .map_err(|e| Error::invalid("ari: credentials do not fit a header").with_cause(e))?;
    v.set_sensitive(true);
    Ok(v)
}

/// Standard base64 with padding (RFC 4648 section 4).
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 0x3f]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Installs rustls' ring provider as the process default unless one is
/// installed already (by `main`, a test, or a racing call: all fine).
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _already = rustls::crypto::ring::default_provider().install_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ari::AriServer;

    fn cfg(url: &str) -> AriConfig {
        AriConfig {
            servers: vec![AriServer {
                name: "pbx-a".into(),
                url: url.into(),
            }],
            username: "gw".into(),
            app: "ai-gw".into(),
            ..AriConfig::default()
        }
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("gw:gwsecret", "Z3c6Z3dzZWNyZXQ="),
        ] {
            assert_eq!(base64(plain.as_bytes()), enc, "{plain}");
        }
        let h = basic_auth("gw", &Secret::new("gwsecret")).unwrap();
        assert_eq!(h.to_str().unwrap(), "Basic Z3c6Z3dzZWNyZXQ=");
        assert!(h.is_sensitive());
    }

    #[test]
    fn urls_for_rest_and_events() {
        let s = Server::parse("a", "http://127.0.0.1:8088", "ai-gw").unwrap();
        assert_eq!(s.rest.as_str(), "http://127.0.0.1:8088/ari");
        assert_eq!(
            s.events.as_str(),
            "ws://127.0.0.1:8088/ari/events?app=ai-gw&subscribeAll=false"
        );
        let p = Server::parse("a", "http://pbx.example:8088/asterisk/", "x").unwrap();
        assert_eq!(p.rest.as_str(), "http://pbx.example:8088/asterisk/ari");
        for bad in [
            "https://h:8089",
            "ftp://h",
            "not a url",
            "http://h:1/?x=1",
            "http://u@h:1",
        ] {
            let e = Server::parse("a", bad, "x").unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Invalid, "{bad}");
        }
    }

    #[test]
    fn configuration_is_checked() {
        assert!(AriClient::new(&cfg("http://127.0.0.1:8088"), Secret::new("s")).is_ok());
        let mut no_servers = cfg("http://127.0.0.1:8088");
        no_servers.servers.clear();
        let mut dup = cfg("http://127.0.0.1:8088");
        dup.servers.push(dup.servers[0].clone());
        let mut backoff = cfg("http://127.0.0.1:8088");
        backoff.backoff_min_ms = 20_000;
        let mut app = cfg("http://127.0.0.1:8088");
        app.app = "a,b".into();
        for c in [no_servers, dup, backoff, app] {
            let e = AriClient::new(&c, Secret::new("s")).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
        }
    }

    #[test]
    fn statuses_map_to_what_they_mean_for_the_call() {
        use ErrorKind::*;
        let d = Rules::Default;
        for (status, kind, retry) in [
            (404, NotFound, false),
            (409, Conflict, false),
            (412, Conflict, false),
            (400, Invalid, false),
            (422, Invalid, false),
            (401, Unauthorized, false),
            (403, Unauthorized, false),
            (500, PeerFailure, true),
            (503, PeerFailure, true),
            (501, PeerFailure, false),
            (418, Protocol, false),
        ] {
            let e = status_error(status, "Channel not found", d);
            assert_eq!((e.kind(), e.retryable()), (kind, retry), "{status}");
            assert_eq!(e.party(), Party::Asterisk);
            assert!(
                e.message()
                    .contains(&format!("HTTP {status}: Channel not found"))
            );
        }
        let m = Rules::BridgeMembership;
        assert_eq!(status_error(400, "Channel not found", m).kind(), NotFound);
        assert_eq!(
            status_error(400, "Missing parameter channel", m).kind(),
            Invalid
        );
        assert_eq!(
            status_error(422, "Channel not in Stasis application", m).kind(),
            Conflict
        );
        assert_eq!(status_error(404, "Bridge not found", m).kind(), NotFound);
        assert_eq!(
            status_error(409, "Bridge not in Stasis application", m).kind(),
            Conflict
        );
    }

    #[test]
    fn error_bodies_are_quoted_not_trusted() {
        assert_eq!(
            error_message(br#"{"message":"Channel not found"}"#),
            "Channel not found"
        );
        assert_eq!(error_message(b""), "(no body)");
        assert_eq!(error_message(b"<html>oops</html>"), "<html>oops</html>");
        let long = "é".repeat(500);
        let q = error_message(long.as_bytes());
        assert_eq!(q.chars().count(), MAX_QUOTED + 3);
        assert_eq!(error_message(&[0xff, 0xfe]), "\u{fffd}\u{fffd}");
    }
}
