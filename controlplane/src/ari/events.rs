//! The events WebSocket of the Stasis application, as a [`Service`].
//!
//! [`AriEvents`] holds `GET /ari/events?app=APP&subscribeAll=false` (basic
//! auth header) open to the active Asterisk, parses each text message into
//! an [`AriEvent`] and forwards [`AriSignal`]s on a bounded channel:
//!
//! ```text
//!   Connected{server}  Event  Event ...  Disconnected{reason}  (backoff)
//!   Connected{server}  Event ...
//! ```
//!
//! - **Connected** follows every (re)connection. Stasis channels and bridges
//!   stay up in Asterisk while the socket is down, and events raised
//!   meanwhile are lost, so the call flow reconciles on every `Connected`
//!   (`GET /channels`, `GET /bridges`).
//! - **Backpressure, not loss.** When the channel is full the service stops
//!   reading the socket until there is room: no event is dropped, so no
//!   `StasisStart`/`StasisEnd` goes missing. If the consumer stalls longer
//!   than Asterisk's `websocket_write_timeout` (`ari.conf`, 100 ms by
//!   default), Asterisk closes the socket; the service reconnects and the
//!   `Connected` marker tells the consumer to reconcile.
//! - **Bad messages** (not JSON, no `type`, a known type missing its
//!   channel, binary frames) are logged with an excerpt, counted in
//!   [`AriEventMetrics`], and skipped; the connection lives on.
//! - **Keepalive**: a WebSocket ping every `ping_interval_ms`; if nothing at
//!   all arrives between two pings (not even the pong), the peer is taken
//!   as dead and the socket dropped ([`Keepalive`], sans-IO).
//! - **Reconnect and failover**: after a lost connection the same server is
//!   tried again first (its calls are still there); after a failed attempt
//!   the next server in the list is tried, with [`backoff`] delays between
//!   attempts. The server that accepts becomes the active one for
//!   [`AriClient`]'s REST calls, and [`LinkState`] says which it is.
//! - **Shutdown** sends a Close frame (1001, going away) and waits briefly
//!   for Asterisk's answer.
//!
//! Left out: TLS (`wss://`), and Asterisk 22's REST-over-WebSocket.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use reqwest::header::AUTHORIZATION;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{MissedTickBehavior, timeout};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::model::AriEvent;
use super::rest::{AriClient, Rules, Server, error_message, status_error};
use crate::error::{Error, ErrorKind, Party, Result};
use crate::service::{LinkState, Service, Shutdown, backoff};

/// The channel capacity [`AriEvents::new`] uses: about a second of events
/// of a few hundred busy calls.
pub const DEFAULT_CAPACITY: usize = 1024;

/// The largest WebSocket message accepted; ARI events are a few KiB.
const MAX_MESSAGE: usize = 4 << 20;

/// How long the close handshake may take at shutdown or after Asterisk
/// closed.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The most of a bad message quoted in a log line.
const EXCERPT: usize = 200;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the events service hands the call flow, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum AriSignal {
    /// The WebSocket is (again) connected to `server`: reconcile.
    Connected {
        /// The server's configured name.
        server: String,
    },
    /// The WebSocket was lost; a reconnect follows.
    Disconnected {
        /// Why, for logs and status.
        reason: String,
    },
    /// An event from Asterisk.
    Event(AriEvent),
}

/// Counters of the events service, cheap to clone; register them once.
#[derive(Debug, Clone, Default)]
pub struct AriEventMetrics {
    events: Counter,
    malformed: Counter,
    connects: Counter,
    reconnects: Counter,
    connect_failures: Counter,
}

impl AriEventMetrics {
    /// Registers the counters (`ari_events`, `ari_events_malformed`,
    /// `ari_ws_connects`, `ari_ws_reconnects`, `ari_ws_connect_failures`,
    /// each with `_total` appended on export).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "ari_events",
            "ARI events received and forwarded",
            self.events.clone(),
        );
        registry.register(
            "ari_events_malformed",
            "ARI WebSocket messages skipped because they are not valid events",
            self.malformed.clone(),
        );
        registry.register(
            "ari_ws_connects",
            "ARI WebSocket connections made",
            self.connects.clone(),
        );
        registry.register(
            "ari_ws_reconnects",
            "ARI WebSocket connections made after a previous one was lost",
            self.reconnects.clone(),
        );
        registry.register(
            "ari_ws_connect_failures",
            "ARI WebSocket connection attempts that failed",
            self.connect_failures.clone(),
        );
    }

    /// Events forwarded so far.
    pub fn events(&self) -> u64 {
        self.events.get()
    }

    /// Messages skipped as malformed so far.
    pub fn malformed(&self) -> u64 {
        self.malformed.get()
    }

    /// Connections made so far.
    pub fn connects(&self) -> u64 {
        self.connects.get()
    }

    /// Connections made after a lost one.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.get()
    }

    /// Failed connection attempts.
    pub fn connect_failures(&self) -> u64 {
        self.connect_failures.get()
    }
}

/// The events WebSocket service. Build it with [`AriEvents::new`], take its
/// [`metrics`](AriEvents::metrics), then hand it to
/// [`crate::service::Services`].
pub struct AriEvents {
    client: AriClient,
    tx: mpsc::Sender<AriSignal>,
    metrics: AriEventMetrics,
}

impl fmt::Debug for AriEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AriEvents")
            .field("client", &self.client)
            .field("capacity", &self.tx.max_capacity())
            .finish()
    }
}

/// How a connected session ended.
enum Ended {
    Shutdown,
    Lost(String),
}

impl AriEvents {
    /// The service for `client`'s servers and application, and the
    /// receiving end of its signals ([`DEFAULT_CAPACITY`]).
    pub fn new(client: AriClient) -> (Self, mpsc::Receiver<AriSignal>) {
        Self::with_capacity(client, DEFAULT_CAPACITY)
    }

    /// The same with a channel of `capacity` signals (at least 1).
    pub fn with_capacity(client: AriClient, capacity: usize) -> (Self, mpsc::Receiver<AriSignal>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let service = Self {
            client,
            tx,
            metrics: AriEventMetrics::default(),
        };
        (service, rx)
    }

    /// The service's counters (shared: they keep counting after the
    /// service is spawned).
    pub fn metrics(&self) -> AriEventMetrics {
        self.metrics.clone()
    }

    async fn run_until_shutdown(self, shutdown: Shutdown) -> Result<()> {
        let outcome = self.connect_loop(&shutdown).await;
        self.client.set_state(LinkState::Down {
            reason: "shut down".to_owned(),
        });
        outcome
    }

    async fn connect_loop(&self, shutdown: &Shutdown) -> Result<()> {
        let servers = self.client.servers();
        let (min, max) = self.client.backoff_bounds();
        let mut delays = backoff(min, max);
        let mut index = self.client.active_index();
        loop {
            self.client.set_state(LinkState::Connecting);
            let server = &servers[index];
            let attempt = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                attempt = self.connect(server) => attempt,
            };
            match attempt {
                Ok(ws) => {
                    self.client.set_active(index);
                    if self.metrics.connects.inc() > 0 {
                        self.metrics.reconnects.inc();
                    }
                    delays = backoff(min, max);
                    tracing::info!(server = %server.name, app = self.client.app(), "ARI events connected");
                    self.client.set_state(LinkState::Up {
                        server: server.name.clone(),
                    });
                    let connected = AriSignal::Connected {
                        server: server.name.clone(),
                    };
                    if !self.forward(connected, shutdown).await? {
                        return Ok(());
                    }
                    match self.pump(ws, &server.name, shutdown).await? {
                        Ended::Shutdown => return Ok(()),
                        Ended::Lost(reason) => {
                            tracing::warn!(server = %server.name, %reason, "ARI events connection lost");
                            self.client.set_state(LinkState::Down {
                                reason: reason.clone(),
                            });
                            if !self
                                .forward(AriSignal::Disconnected { reason }, shutdown)
                                .await?
                            {
                                return Ok(());
                            }
                        }
                    }
                }
                Err(e) => {
                    self.metrics.connect_failures.inc();
                    tracing::warn!(server = %server.name, error = %e, "ARI events connect failed");
                    self.client.set_state(LinkState::Down {
                        reason: e.to_string(),
                    });
                    index = (index + 1) % servers.len();
                }
            }
            let delay = delays.next().unwrap_or(max);
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn connect(&self, server: &Server) -> Result<Ws> {
        let what = format!("connect ARI events on {}", server.name);
        let mut request = server
            .events
            .as_str()
            .into_client_request()
            .map_err(|e| Error::internal(format!("{what}: bad request")).with_cause(e))?;
        request
            .headers_mut()
            .insert(AUTHORIZATION, self.client.auth_header().clone());
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let handshake = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
        match timeout(self.client.request_timeout(), handshake).await {
            Err(_elapsed) => Err(Error::new(
                ErrorKind::Timeout,
                Party::Asterisk,
                format!("{what}: no handshake in time"),
            )),
            Ok(Ok((ws, _response))) => Ok(ws),
            Ok(Err(WsError::Http(response))) => {
                let message = match response.body() {
                    Some(body) => error_message(body),
                    None => "(no body)".to_owned(),
                };
                Err(
                    status_error(response.status().as_u16(), &message, Rules::Default)
                        .context(what),
                )
            }
            Ok(Err(WsError::Io(e))) => Err(Error::new(
                ErrorKind::Unavailable,
                Party::Asterisk,
                format!("{what}: cannot connect"),
            )
            .with_cause(e)),
            Ok(Err(e)) => Err(Error::new(
                ErrorKind::Protocol,
                Party::Asterisk,
                format!("{what}: handshake failed"),
            )
            .with_cause(e)),
        }
    }

    /// Reads one connection until it is lost or shutdown comes.
    async fn pump(&self, mut ws: Ws, server: &str, shutdown: &Shutdown) -> Result<Ended> {
        let period = self.client.ping_interval();
        let mut keepalive = Keepalive::default();
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticks.tick().await; // the first tick is immediate
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    close(&mut ws).await;
                    return Ok(Ended::Shutdown);
                }
                _ = ticks.tick() => match keepalive.on_tick() {
                    KeepaliveAction::Ping => {
                        match timeout(period, ws.send(Message::Ping(Default::default()))).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => return Ok(Ended::Lost(format!("ping failed: {e}"))),
                            Err(_) => return Ok(Ended::Lost("ping could not be sent in time".to_owned())),
                        }
                    }
                    KeepaliveAction::Dead => {
                        return Ok(Ended::Lost(format!(
                            "no answer to a ping within {} ms",
                            period.as_millis()
                        )));
                    }
                },
                message = ws.next() => {
                    let message = match message {
                        None => return Ok(Ended::Lost("connection closed".to_owned())),
                        Some(Err(e)) => return Ok(Ended::Lost(format!("read failed: {e}"))),
                        Some(Ok(m)) => m,
                    };
                    keepalive.on_frame();
                    match message {
                        Message::Text(text) => match AriEvent::parse(&text) {
                            Ok(event) => {
                                self.metrics.events.inc();
                                if !self.forward(AriSignal::Event(event), shutdown).await? {
                                    close(&mut ws).await;
                                    return Ok(Ended::Shutdown);
                                }
                            }
                            Err(e) => {
                                self.metrics.malformed.inc();
                                tracing::warn!(
                                    server, error = %e, message = excerpt(&text),
                                    "ARI message skipped: not a valid event"
                                );
                            }
                        },
                        Message::Binary(bytes) => {
                            self.metrics.malformed.inc();
                            tracing::warn!(server, len = bytes.len(), "ARI binary message skipped");
                        }
                        Message::Close(frame) => {
                            // Let tungstenite send its answer to the close.
                            let _ = timeout(CLOSE_WAIT, ws.flush()).await;
                            let why = frame.map_or_else(
                                || "closed by Asterisk".to_owned(),
                                |f| format!("closed by Asterisk ({f})"),
                            );
                            return Ok(Ended::Lost(why));
                        }
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                    }
                }
            }
        }
    }

    /// Sends a signal, waiting for room (backpressure). `Ok(false)` when
    /// shutdown came first.
    async fn forward(&self, signal: AriSignal, shutdown: &Shutdown) -> Result<bool> {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => Ok(false),
            sent = self.tx.send(signal) => match sent {
                Ok(()) => Ok(true),
                Err(_) => Err(Error::internal("the receiver of ARI signals is gone")),
            },
        }
    }
}

impl Service for AriEvents {
    fn name(&self) -> &'static str {
        "ari-events"
    }

    fn run(
        self: Box<Self>,
        shutdown: Shutdown,
    ) -> Pin<Box<dyn Future<Output = Result<()>> + Send>> {
        Box::pin(self.run_until_shutdown(shutdown))
    }
}

/// Sends Close (going away) and waits briefly for Asterisk's Close.
async fn close(ws: &mut Ws) {
    let frame = CloseFrame {
        code: CloseCode::Away,
        reason: "mediagw shutting down".into(),
    };
    let handshake = async {
        ws.close(Some(frame)).await?;
        while let Some(m) = ws.next().await {
            m?;
        }
        Ok::<(), WsError>(())
    };
    if let Ok(Err(e)) = timeout(CLOSE_WAIT, handshake).await
        && !matches!(e, WsError::ConnectionClosed | WsError::AlreadyClosed)
    {
        tracing::debug!(error = %e, "ARI close handshake incomplete");
    }
}

fn excerpt(text: &str) -> &str {
    match text.char_indices().nth(EXCERPT) {
        Some((cut, _)) => &text[..cut],
        None => text,
    }
}

/// What the keepalive wants done at a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepaliveAction {
    /// Send a ping.
    Ping,
    /// Nothing arrived since the last ping: the peer is dead.
    Dead,
}

/// Dead-peer detection, sans-IO: fed ticks (every ping interval) and
/// frames; a tick that finds the previous ping unanswered and no other
/// frame since says [`KeepaliveAction::Dead`]. A silent peer is noticed
/// between one and two intervals after it went silent.
#[derive(Debug, Clone, Default)]
pub struct Keepalive {
    outstanding: bool,
}

impl Keepalive {
    /// A ping interval passed.
    pub fn on_tick(&mut self) -> KeepaliveAction {
        if self.outstanding {
            KeepaliveAction::Dead
        } else {
            self.outstanding = true;
            KeepaliveAction::Ping
        }
    }

    /// Any frame arrived (a pong, an event, anything): the peer lives.
    pub fn on_frame(&mut self) {
        self.outstanding = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_declares_a_silent_peer_dead_on_the_second_tick() {
        let mut k = Keepalive::default();
        assert_eq!(k.on_tick(), KeepaliveAction::Ping);
        k.on_frame();
        assert_eq!(k.on_tick(), KeepaliveAction::Ping);
        assert_eq!(k.on_tick(), KeepaliveAction::Dead);
        // Any frame, not only a pong, proves life.
        let mut k = Keepalive::default();
        for _ in 0..10 {
            assert_eq!(k.on_tick(), KeepaliveAction::Ping);
            k.on_frame();
        }
    }

    #[test]
    fn excerpts_cut_on_characters() {
        assert_eq!(excerpt("short"), "short");
        let long = "ü".repeat(300);
        assert_eq!(excerpt(&long).chars().count(), EXCERPT);
    }

    #[test]
    fn metrics_register_and_count() {
        let m = AriEventMetrics::default();
        let mut registry = Registry::default();
        m.register(&mut registry);
        m.events.inc();
        m.reconnects.inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("ari_events_total 1"), "{text}");
        assert!(text.contains("ari_ws_reconnects_total 1"), "{text}");
        assert_eq!((m.events(), m.malformed(), m.reconnects()), (1, 0, 1));
    }
}
