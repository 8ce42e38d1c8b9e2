//! The dataplane's control socket, from the control plane's side.
//!
//! [`DataplaneLink`] is a service that keeps one connection to the
//! dataplane's control socket (newline-delimited JSON, see
//! `docs/control-protocol.md`): it says `hello`, subscribes to every event,
//! matches responses to requests by id, and reconnects with backoff when the
//! dataplane goes away (a restart, an upgrade). [`Dataplane`] is the cheap
//! handle the call flow uses: typed requests with a timeout, the event
//! stream, and the link state with a connection *generation* that changes on
//! every reconnect, so the call flow knows when to reconcile its endpoints.
//!
//! The message types and their framing come from `mediagw_shared::control`;
//! nothing here touches audio.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use mediagw_shared::control::{
    self, Call, DEFAULT_MAX_SERVER_LINE, ErrorBody, ErrorCode, Event, EventKind, Hello, LineFramer,
    PROTOCOL_VERSION, Request, ServerMessage, Subscribe, decode_reply, encode_request,
    parse_server_message,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::error::{Error, ErrorKind, Party, Result};
use crate::service::{LinkState, Service, Shutdown, backoff};

/// `[dataplane]`: where the dataplane's control socket is and how to talk
/// to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataplaneConfig {
    /// The dataplane's control socket.
    pub control_socket: PathBuf,
    /// The dataplane's media socket (for consumers; the control plane only
    /// reports it).
    pub media_socket: PathBuf,
    /// The longest a request may take, ms.
    pub request_timeout_ms: u64,
    /// First reconnect delay, ms.
    pub backoff_min_ms: u64,
    /// Longest reconnect delay, ms.
    pub backoff_max_ms: u64,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            control_socket: PathBuf::from("/run/mediagw/control.sock"),
            media_socket: PathBuf::from("/run/mediagw/media.sock"),
            request_timeout_ms: 2_000,
            backoff_min_ms: 100,
            backoff_max_ms: 2_000,
        }
    }
}

/// The link's state as the call flow sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneState {
    /// Up, down or connecting.
    pub link: LinkState,
    /// Incremented on every successful connection: a new generation means
    /// the endpoints may not be what they were (the dataplane may have
    /// restarted) and the call flow reconciles.
    pub generation: u64,
}

/// A handle on the dataplane link: cheap to clone.
#[derive(Debug, Clone)]
pub struct Dataplane {
    requests: mpsc::Sender<Pending>,
    events: broadcast::Sender<Event>,
    state: watch::Receiver<DataplaneState>,
    timeout: Duration,
}

/// The service that owns the connection.
#[derive(Debug)]
pub struct DataplaneLink {
    cfg: DataplaneConfig,
    requests: mpsc::Receiver<Pending>,
    events: broadcast::Sender<Event>,
    state: watch::Sender<DataplaneState>,
}

#[derive(Debug)]
struct Pending {
    op: control::Op,
    reply: oneshot::Sender<Result<Value>>,
}

const CLIENT_NAME: &str = concat!("mediagw-controlplane/", env!("CARGO_PKG_VERSION"));

impl Dataplane {
    /// A handle and the service that serves it; spawn the service.
    pub fn new(cfg: DataplaneConfig) -> (Self, DataplaneLink) {
        let (req_tx, req_rx) = mpsc::channel(1024);
        let (events, _) = broadcast::channel(4096);
        let (state_tx, state_rx) = watch::channel(DataplaneState {
            link: LinkState::Connecting,
            generation: 0,
        });
        let handle = Self {
            requests: req_tx,
            events: events.clone(),
            state: state_rx,
            timeout: Duration::from_millis(cfg.request_timeout_ms),
        };
        let link = DataplaneLink {
            cfg,
            requests: req_rx,
            events,
            state: state_tx,
        };
        (handle, link)
    }

    /// Sends `request` and decodes its reply. Fails at once with
    /// [`ErrorKind::Unavailable`] while the link is down.
    pub async fn call<C: Call>(&self, request: C) -> Result<C::Reply> {
        let value = self.call_value(request.into()).await?;
        decode_reply::<C>(value).map_err(|e| {
            Error::new(
                ErrorKind::Protocol,
                Party::Dataplane,
                "a reply that does not decode",
            )
            .with_cause(e)
        })
    }

    async fn call_value(&self, op: control::Op) -> Result<Value> {
        if !self.state.borrow().link.is_up() {
            return Err(Error::new(
                ErrorKind::Unavailable,
                Party::Dataplane,
                "the dataplane is not connected",
            ));
        }
        let name = op.name();
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Pending { op, reply: tx })
            .await
            .map_err(|_| {
                Error::new(
                    ErrorKind::Unavailable,
                    Party::Dataplane,
                    "the dataplane link has stopped",
                )
            })?;
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::new(
                ErrorKind::Unavailable,
                Party::Dataplane,
                format!("{name}: the connection closed before the answer"),
            )),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                Party::Dataplane,
                format!("{name}: no answer within {} ms", self.timeout.as_millis()),
            )),
        }
    }

    /// The dataplane's pushed events the control plane subscribes to
    /// (`endpoint.destroyed`, `draining`). A receiver that falls behind by
    /// more than 4096 events lags.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The link's state and generation.
    pub fn state(&self) -> watch::Receiver<DataplaneState> {
        self.state.clone()
    }
}

/// Maps a dataplane error answer to the control plane's error.
pub fn map_error(e: ErrorBody) -> Error {
    let kind = match e.code {
        ErrorCode::UnknownEndpoint => ErrorKind::NotFound,
        ErrorCode::PortExhausted | ErrorCode::Draining => ErrorKind::Exhausted,
        // We sent something the dataplane refuses: our bug or our
        // configuration (a tenant without ports), not the caller's.
        ErrorCode::TenantUnknown
        | ErrorCode::BadRequest
        | ErrorCode::BadJson
        | ErrorCode::UnknownOp
        | ErrorCode::LineTooLong
        | ErrorCode::HandshakeRequired
        | ErrorCode::VersionMismatch => ErrorKind::Invalid,
        // `internal`, and codes of a newer dataplane.
        _ => ErrorKind::PeerFailure,
    };
    Error::new(
        kind,
        Party::Dataplane,
        format!("{}: {}", e.code.name(), e.message),
    )
    .with_retryable(e.retryable)
}

impl DataplaneLink {
    async fn serve(mut self, shutdown: Shutdown) -> Result<()> {
        let mut generation = 0;
        let mut delays = self.backoff();
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let connected = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                c = self.connect() => c,
            };
            let reason = match connected {
                Ok((stream, framer)) => {
                    generation += 1;
                    delays = self.backoff();
                    tracing::info!(
                        socket = %self.cfg.control_socket.display(),
                        generation,
                        "dataplane connected"
                    );
                    self.state.send_replace(DataplaneState {
                        link: LinkState::Up {
                            server: self.cfg.control_socket.display().to_string(),
                        },
                        generation,
                    });
                    let reason = self.run_connection(stream, framer, &shutdown).await;
                    if shutdown.is_cancelled() {
                        return Ok(());
                    }
                    tracing::warn!(reason = %reason, "dataplane connection lost");
                    reason
                }
                Err(e) => {
                    tracing::debug!(error = %e, "dataplane not reachable");
                    e.to_string()
                }
            };
            self.state.send_replace(DataplaneState {
                link: LinkState::Down { reason },
                generation,
            });
            // Requests that arrive while down fail fast in `call`; any that
            // raced in are answered here.
            while let Ok(p) = self.requests.try_recv() {
                let _ = p
                    .reply
                    .send(Err(unavailable("the dataplane is not connected")));
            }
            let delay = delays.next().unwrap_or(Duration::from_secs(1));
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    fn backoff(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        backoff(
            Duration::from_millis(self.cfg.backoff_min_ms),
            Duration::from_millis(self.cfg.backoff_max_ms),
        )
    }

    /// Connects, says hello and subscribes to every event.
    async fn connect(&self) -> Result<(UnixStream, LineFramer)> {
        let path = &self.cfg.control_socket;
        let mut stream = UnixStream::connect(path)
            .await
            .map_err(|e| unavailable(format!("connect {}", path.display())).with_cause(e))?;
        let mut framer = LineFramer::new(DEFAULT_MAX_SERVER_LINE);
        let timeout = Duration::from_millis(self.cfg.request_timeout_ms);
        let hello = Request::new(
            1,
            Hello {
                version: PROTOCOL_VERSION,
                client: CLIENT_NAME.to_owned(),
            },
        );
        // Only what the call flow reads: a destroyed endpoint (its call
        // re-attaches) and draining. Latched, receiving and silent events
        // come per call and would only be parsed and dropped.
        let subscribe = Request::new(
            2,
            Subscribe {
                events: Some(vec![EventKind::Destroyed, EventKind::Draining]),
                tenant: None,
            },
        );
        for req in [hello, subscribe] {
            let id = req.id;
            stream
                .write_all(encode_request(&req).as_bytes())
                .await
                .map_err(|e| unavailable("write to the control socket").with_cause(e))?;
            let answer = tokio::time::timeout(timeout, read_response(&mut stream, &mut framer, id))
                .await
                .map_err(|_| {
                    Error::new(
                        ErrorKind::Timeout,
                        Party::Dataplane,
                        "no answer to hello/subscribe",
                    )
                })??;
            answer.map_err(map_error)?;
        }
        Ok((stream, framer))
    }

    /// Serves one connection until it fails or shutdown; returns why it
    /// ended.
    async fn run_connection(
        &mut self,
        mut stream: UnixStream,
        mut framer: LineFramer,
        shutdown: &Shutdown,
    ) -> String {
        let mut pending: HashMap<u64, (&'static str, oneshot::Sender<Result<Value>>)> =
            HashMap::new();
        let mut next_id: u64 = 3;
        let mut buf = vec![0u8; 64 * 1024];
        let reason = loop {
            // Lines already framed first (hello may have read past its
            // answer).
            while let Some(line) = framer.next_line() {
                match line {
                    Ok(line) => self.dispatch(line, &mut pending),
                    Err(e) => tracing::warn!(error = %e, "dataplane sent an overlong line"),
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break "shutdown".to_owned(),
                read = stream.read(&mut buf) => match read {
                    Ok(0) => break "the dataplane closed the connection".to_owned(),
                    Ok(n) => framer.push(&buf[..n]),
                    Err(e) => break format!("read: {e}"),
                },
                req = self.requests.recv() => {
                    let Some(p) = req else { break "no more handles".to_owned() };
                    // Its caller gave up (a timeout, maybe while the link was
                    // down): sending it now could act on another endpoint
                    // that took its id after a dataplane restart.
                    if p.reply.is_closed() {
                        continue;
                    }
                    let id = next_id;
                    next_id += 1;
                    let name = p.op.name();
                    let line = encode_request(&Request { id, op: p.op });
                    let write_limit = Duration::from_millis(self.cfg.request_timeout_ms);
                    match tokio::time::timeout(write_limit, stream.write_all(line.as_bytes())).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            let _ = p.reply.send(Err(unavailable("write to the control socket").with_cause(e)));
                            break "write failed".to_owned();
                        }
                        // A dataplane that stops reading is as good as gone.
                        Err(_) => {
                            let _ = p.reply.send(Err(unavailable("the control socket takes no more requests")));
                            break "the dataplane stopped reading its control socket".to_owned();
                        }
                    }
                    pending.retain(|_, (_, tx)| !tx.is_closed());
                    pending.insert(id, (name, p.reply));
                }
            }
        };
        for (_, (name, tx)) in pending.drain() {
            let _ = tx.send(Err(unavailable(format!(
                "{name}: the dataplane connection was lost"
            ))));
        }
        reason
    }

    fn dispatch(
        &self,
        line: &[u8],
        pending: &mut HashMap<u64, (&'static str, oneshot::Sender<Result<Value>>)>,
    ) {
        match parse_server_message(line) {
            Ok(ServerMessage::Response {
                id: Some(id),
                result,
            }) => {
                if let Some((name, tx)) = pending.remove(&id) {
                    let _ = tx.send(result.map_err(|e| map_error(e).context(name)));
                }
            }
            Ok(ServerMessage::Response { id: None, result }) => {
                tracing::warn!(?result, "the dataplane refused a line of ours");
            }
            Ok(ServerMessage::Event(event)) => {
                let _ = self.events.send(event);
            }
            Ok(ServerMessage::UnknownEvent { event, .. }) => {
                tracing::debug!(event, "unknown dataplane event ignored");
            }
            Err(e) => tracing::warn!(error = %e, "unreadable line from the dataplane"),
        }
    }
}

async fn read_response(
    stream: &mut UnixStream,
    framer: &mut LineFramer,
    id: u64,
) -> Result<Result<Value, ErrorBody>> {
    let mut buf = [0u8; 8192];
    loop {
        while let Some(line) = framer.next_line() {
            let Ok(line) = line else { continue };
            if let Ok(ServerMessage::Response {
                id: Some(got),
                result,
            }) = parse_server_message(line)
                && got == id
            {
                return Ok(result);
            }
        }
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| unavailable("read the control socket").with_cause(e))?;
        if n == 0 {
            return Err(unavailable("the dataplane closed the connection"));
        }
        framer.push(&buf[..n]);
    }
}

fn unavailable(context: impl Into<String>) -> Error {
    Error::new(ErrorKind::Unavailable, Party::Dataplane, context.into())
}

impl Service for DataplaneLink {
    fn name(&self) -> &'static str {
        "dataplane-link"
    }

    fn run(
        self: Box<Self>,
        shutdown: Shutdown,
    ) -> Pin<Box<dyn Future<Output = Result<()>> + Send>> {
        Box::pin(self.serve(shutdown))
    }
}
