//! The dataplane daemon around the workers: the control socket (tokio),
//! endpoint placement, events, the Prometheus exposition and the lifecycle
//! (single instance per socket path, drain on SIGTERM, no files left
//! behind).

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use mediagw_shared::codec::Codec;
use mediagw_shared::control::{
    self, Done, EndpointCreate, EndpointCreated, EndpointListing, EndpointState, EndpointStats,
    EndpointSummary, ErrorBody, ErrorCode, Event, Handshake, HelloReply, JitterBufferStats,
    LineFramer, Op, PROTOCOL_VERSION, ReceiverReportSummary, Request, RtcpSummary, RxStats,
    SenderReportSummary, ServerStatus, TapStats, TransitPercentiles, TxStats, WorkerStatus,
};
use mediagw_shared::ids::{EndpointId, SessionId, TenantId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::{Notify, broadcast, oneshot};
use tracing::{info, warn};

use crate::config::{Config, EngineChoice};
use crate::endpoint::{
    Endpoint, EndpointEvent, EndpointShared, EndpointSnapshot, EndpointSpec, RxState,
};
use crate::jitter::JitterBuffer;
use crate::metrics::{self, WorkerInfo};
use crate::net::{EngineConfig, EngineKind, bind_udp, monotonic_now};
use crate::ports::{PortError, PortPool};
use crate::ring::frame_ring;
use crate::tap::{Tap, TapCommand, TapEndpoint};
use crate::units::{Nanos, PayloadType, Ssrc};
use crate::worker::{self, Command, Placement, WorkerEvent, WorkerHandle};

/// The most tenants one dataplane tracks (metrics are preallocated).
pub const MAX_TENANTS: usize = 1024;
const SERVER_NAME: &str = concat!("mediagw-dataplane/", env!("CARGO_PKG_VERSION"));

#[derive(Debug)]
struct Entry {
    tenant: TenantId,
    session: SessionId,
    codec: Codec,
    local_addr: SocketAddr,
    worker: usize,
    created_ms: u64,
    shared: Arc<EndpointShared>,
    /// Opened with an RTCP port.
    rtcp: bool,
}

#[derive(Debug)]
struct Inner {
    ports: PortPool,
    endpoints: BTreeMap<EndpointId, Entry>,
    next_id: u64,
    tenants: Vec<String>,
    next_worker: usize,
}

/// The running dataplane, shared by the control tasks.
#[derive(Debug)]
pub struct Dataplane {
    cfg: Config,
    started: Nanos,
    workers: Vec<WorkerHandle>,
    worker_events: Arc<ArrayQueue<WorkerEvent>>,
    tap: Mutex<Tap>,
    tap_commands: Arc<ArrayQueue<TapCommand>>,
    inner: Mutex<Inner>,
    draining: AtomicBool,
    events: broadcast::Sender<Event>,
    shutdown: Notify,
    exit_when_empty: AtomicBool,
    files: Vec<PathBuf>,
    _lock: File,
}

/// A request failed: the protocol error to answer with.
type OpResult<T> = Result<T, ErrorBody>;

fn err(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
    ErrorBody::new(code, message)
}

/// Unix time in ms of a monotonic instant.
fn unix_ms(t: Nanos) -> u64 {
    let now = monotonic_now();
    #[allow(clippy::disallowed_methods)] // the daemon's wall clock, not the media core
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let ago = now.saturating_since(t);
    wall.saturating_sub(ago).as_millis() as u64
}

fn lock_poisoned<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave Inner half-updated in a
    // way that matters more than refusing every later request would.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Dataplane {
    /// Claims the socket paths, binds them and starts workers and the tap.
    pub fn start(cfg: Config) -> io::Result<(Arc<Self>, std::os::unix::net::UnixListener)> {
        let d = &cfg.dataplane;
        let lock_path = lock_path(&d.control_socket);
        if let Some(dir) = d.control_socket.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if let Some(dir) = d.media_socket.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let lock = claim(&lock_path)?;
        let mode = cfg
            .socket_mode()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.0))?;
        let control = bind_unix(&d.control_socket, mode)?;
        let media = bind_unix(&d.media_socket, mode)?;

        let ports = cfg
            .port_pool()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.0))?;
        let worker_events = Arc::new(ArrayQueue::new(65_536));
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let n = cfg.worker_count();
        let mut workers = Vec::with_capacity(n);
        let engine_cfg = EngineConfig {
            force_fallback: d.engine == EngineChoice::Epoll,
            tick: Duration::from_micros(d.tick_us),
            ..EngineConfig::default()
        };
        for i in 0..n {
            // Leave core 0 to the kernel's softirq and the control thread
            // when there is more than one core.
            let core = if d.pin_workers && !cores.is_empty() {
                Some(cores[(i + 1) % cores.len()])
            } else {
                None
            };
            let (h, reason) = worker::spawn(
                i,
                core,
                engine_cfg.clone(),
                Duration::from_micros(d.tick_us),
                MAX_TENANTS,
                worker_events.clone(),
            )?;
            if let Some(reason) = reason {
                if d.engine == EngineChoice::IoUring {
                    return Err(io::Error::other(format!(
                        "engine = \"io_uring\" but io_uring is unavailable: {reason}"
                    )));
                }
                if d.engine == EngineChoice::Auto {
                    warn!(worker = i, %reason, "io_uring unavailable, using the epoll fallback");
                }
            }
            info!(worker = i, core = ?h.core, engine = ?h.kind, "worker started");
            workers.push(h);
        }
        let tap = Tap::spawn(media)?;
        let tap_commands = tap.commands.clone();
        let (events, _) = broadcast::channel(4096);
        let mut tenants: Vec<String> = cfg.ports.tenants.keys().cloned().collect();
        tenants.truncate(MAX_TENANTS);
        let dp = Arc::new(Self {
            started: monotonic_now(),
            workers,
            worker_events,
            tap: Mutex::new(tap),
            tap_commands,
            inner: Mutex::new(Inner {
                ports,
                endpoints: BTreeMap::new(),
                next_id: 1,
                tenants,
                next_worker: 0,
            }),
            draining: AtomicBool::new(false),
            events,
            shutdown: Notify::new(),
            exit_when_empty: AtomicBool::new(false),
            files: vec![d.control_socket.clone(), d.media_socket.clone(), lock_path],
            _lock: lock,
            cfg,
        });
        Ok((dp, control))
    }

    /// Serves the control socket, the metrics listener and the event pump
    /// until shutdown (a `shutdown` request, SIGTERM or SIGINT).
    pub async fn run(self: Arc<Self>, control: std::os::unix::net::UnixListener) -> io::Result<()> {
        control.set_nonblocking(true)?;
        let control = UnixListener::from_std(control)?;
        let metrics = if self.cfg.dataplane.metrics_addr.is_empty() {
            None
        } else {
            let addr = &self.cfg.dataplane.metrics_addr;
            let l = TcpListener::bind(addr).await.map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot listen for metrics on {addr}: {e}"),
                )
            })?;
            info!(addr = %l.local_addr()?, "metrics listening");
            Some(l)
        };
        info!(
            control = %self.cfg.dataplane.control_socket.display(),
            media = %self.cfg.dataplane.media_socket.display(),
            "dataplane ready"
        );
        let pump = tokio::spawn(self.clone().pump_events());
        let serve_metrics = metrics.map(|l| tokio::spawn(self.clone().serve_metrics(l)));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                accepted = control.accept() => match accepted {
                    Ok((stream, _)) => { tokio::spawn(self.clone().serve_control(stream)); }
                    Err(e) => warn!(error = %e, "control socket accept failed"),
                },
                _ = term.recv() => { info!("SIGTERM: draining and stopping"); break; }
                _ = tokio::signal::ctrl_c() => { info!("SIGINT: draining and stopping"); break; }
                _ = self.shutdown.notified() => { info!("shutdown requested"); break; }
            }
        }
        pump.abort();
        if let Some(m) = serve_metrics {
            m.abort();
        }
        self.stop().await;
        Ok(())
    }

    async fn stop(&self) {
        self.draining.store(true, Ordering::Relaxed);
        let ids: Vec<EndpointId> = lock_poisoned(&self.inner)
            .endpoints
            .keys()
            .copied()
            .collect();
        for id in ids {
            match self.destroy(id).await {
                Ok(stats) => info!(
                    endpoint = %id,
                    tenant = %stats.tenant,
                    session = %stats.session,
                    packets = stats.rx.packets,
                    lost = stats.rx.lost,
                    jitter_ms = stats.rx.jitter_ms,
                    concealed = stats.jitter_buffer.concealed,
                    "endpoint closed at shutdown"
                ),
                Err(e) => warn!(endpoint = %id, error = %e, "endpoint close failed at shutdown"),
            }
        }
        let totals = (
            worker::total(&self.workers, |m| &m.datagrams),
            worker::total(&self.workers, |m| &m.kernel_drops),
        );
        for w in &self.workers {
            let _ = w.send(Command::Stop);
        }
        lock_poisoned(&self.tap).stop();
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
        info!(
            datagrams = totals.0,
            kernel_drops = totals.1,
            "dataplane stopped"
        );
    }

    async fn serve_control(self: Arc<Self>, stream: UnixStream) {
        let (mut rd, mut wr) = stream.into_split();
        let mut framer = LineFramer::new(control::DEFAULT_MAX_LINE);
        let mut handshake = Handshake::new();
        let mut events: Option<(broadcast::Receiver<Event>, control::Subscribe)> = None;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            // Answer every complete line before reading more.
            let mut replies = String::new();
            while let Some(line) = framer.next_line() {
                let reply = match line {
                    Err(too_long) => control::ProtocolError::from(too_long).to_line(),
                    Ok(line) if line.iter().all(u8::is_ascii_whitespace) => continue,
                    Ok(line) => match control::parse_request(line) {
                        Err(e) => e.to_line(),
                        Ok(req) => match handshake.check(&req) {
                            Err(e) => e.to_line(),
                            Ok(()) => self.handle(req, &mut events).await,
                        },
                    },
                };
                replies.push_str(&reply);
            }
            if !replies.is_empty() && wr.write_all(replies.as_bytes()).await.is_err() {
                return;
            }
            let event = async {
                match &mut events {
                    Some((rx, _)) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                n = rd.read(&mut buf) => match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => framer.push(&buf[..n]),
                },
                ev = event => match ev {
                    Ok(ev) => {
                        let wanted = events.as_ref().is_some_and(|(_, filter)| filter.wants(&ev));
                        if wanted && wr.write_all(control::encode_event(&ev).as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        warn!(missed = n, "control subscriber too slow, events dropped");
                    }
                    Err(broadcast::error::RecvError::Closed) => events = None,
                },
            }
        }
    }

    async fn handle(
        &self,
        req: Request,
        events: &mut Option<(broadcast::Receiver<Event>, control::Subscribe)>,
    ) -> String {
        let id = req.id;
        let out = match req.op {
            Op::Hello(_) => Ok(to_value(&HelloReply {
                version: PROTOCOL_VERSION,
                server: SERVER_NAME.to_owned(),
                ops: Op::NAMES.iter().map(|s| (*s).to_owned()).collect(),
            })),
            Op::EndpointCreate(c) => self.create(c).await.map(|r| to_value(&r)),
            Op::EndpointDestroy(d) => self.destroy(d.endpoint).await.map(|r| to_value(&r)),
            Op::EndpointList(l) => Ok(to_value(&self.list(l.tenant.as_ref()).await)),
            Op::EndpointStats(q) => self.stats(q.endpoint).await.map(|r| to_value(&r)),
            Op::Subscribe(s) => {
                *events = Some((self.events.subscribe(), s));
                Ok(to_value(&Done {}))
            }
            Op::Unsubscribe(_) => {
                *events = None;
                Ok(to_value(&Done {}))
            }
            Op::Status(_) => Ok(to_value(&self.status())),
            Op::Drain(_) => {
                self.drain();
                Ok(to_value(&Done {}))
            }
            Op::Shutdown(s) => {
                if s.drain {
                    self.drain();
                    self.exit_when_empty.store(true, Ordering::Relaxed);
                    if lock_poisoned(&self.inner).endpoints.is_empty() {
                        self.shutdown.notify_one();
                    }
                } else {
                    self.shutdown.notify_one();
                }
                Ok(to_value(&Done {}))
            }
        };
        match out {
            Ok(v) => control::encode_response(id, &v),
            Err(e) => control::encode_error(Some(id), &e),
        }
    }

    fn drain(&self) {
        if !self.draining.swap(true, Ordering::Relaxed) {
            info!("draining: new endpoints are refused");
            let _ = self.events.send(Event::Draining(control::DrainingEvent {
                at_ms: unix_ms(monotonic_now()),
            }));
        }
    }

    fn tenant_index(inner: &mut Inner, tenant: &TenantId) -> OpResult<usize> {
        if let Some(i) = inner.tenants.iter().position(|t| t == tenant.as_str()) {
            return Ok(i);
        }
        if inner.tenants.len() >= MAX_TENANTS {
            return Err(err(
                ErrorCode::TenantUnknown,
                format!("tenant table full ({MAX_TENANTS} tenants)"),
            ));
        }
        inner.tenants.push(tenant.as_str().to_owned());
        Ok(inner.tenants.len() - 1)
    }

    async fn create(&self, c: EndpointCreate) -> OpResult<EndpointCreated> {
        if self.draining.load(Ordering::Relaxed) {
            return Err(err(
                ErrorCode::Draining,
                "the dataplane is draining: no new endpoints",
            ));
        }
        let cfg = &self.cfg;
        let bind_ip: IpAddr = c.bind_ip.unwrap_or(cfg.dataplane.bind_ip);
        let rate = c.codec.clock_rate();
        let jcfg = cfg.jitter_config(
            rate,
            c.jitter.map(|j| u32::from(j.min_ms)),
            c.jitter.map(|j| u32::from(j.max_ms)),
        );
        let jb = JitterBuffer::new(jcfg)
            .map_err(|e| err(ErrorCode::BadRequest, format!("jitter bounds: {e}")))?;

        // Reserve an id, a tenant slot, a worker and a port that binds.
        let (id, tenant_index, worker, rtp, rtcp, port) = {
            let mut inner = lock_poisoned(&self.inner);
            if inner.endpoints.len() >= cfg.dataplane.max_endpoints {
                return Err(err(
                    ErrorCode::PortExhausted,
                    format!("endpoint limit reached ({})", cfg.dataplane.max_endpoints),
                ));
            }
            let tenant_index = Self::tenant_index(&mut inner, &c.tenant)?;
            let now = monotonic_now();
            let mut tries = 0;
            let (rtp, rtcp, port) = loop {
                let port = inner
                    .ports
                    .allocate(c.tenant.as_str(), now)
                    .map_err(|e| match e {
                        PortError::NoRange => err(ErrorCode::TenantUnknown, e.to_string()),
                        PortError::Exhausted { .. } => err(ErrorCode::PortExhausted, e.to_string()),
                    })?;
                let rtp = bind_udp(SocketAddr::new(bind_ip, port), cfg.dataplane.rcvbuf_bytes);
                let rtcp = if c.rtcp {
                    Some(bind_udp(SocketAddr::new(bind_ip, port + 1), 64 * 1024))
                } else {
                    None
                };
                match (rtp, rtcp.transpose()) {
                    (Ok(a), Ok(b)) => break (a, b, port),
                    (a, b) => {
                        // Another process holds it: skip it for a while.
                        inner.ports.mark_busy(c.tenant.as_str(), port, now);
                        tries += 1;
                        if tries >= 16 {
                            let e = a
                                .err()
                                .or(b.err())
                                .map(|e| e.to_string())
                                .unwrap_or_default();
                            return Err(err(
                                ErrorCode::PortExhausted,
                                format!("16 ports in a row would not bind on {bind_ip}: {e}"),
                            ));
                        }
                    }
                }
            };
            let id = EndpointId(inner.next_id);
            inner.next_id += 1;
            // Least-loaded worker, round robin among equals.
            let start = inner.next_worker;
            inner.next_worker = (start + 1) % self.workers.len();
            let worker = (0..self.workers.len())
                .map(|k| (start + k) % self.workers.len())
                .min_by_key(|&w| self.workers[w].endpoints())
                .unwrap_or(0);
            (id, tenant_index, worker, rtp, rtcp, port)
        };
        let local_addr = rtp
            .local_addr()
            .map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
        let shared = Arc::new(EndpointShared::default());
        let (tap_tx, tap_rx) = frame_ring(cfg.endpoint.tap_ring_frames);
        let (play_tx, play_rx) = frame_ring(cfg.endpoint.play_ring_frames);
        let spec = EndpointSpec {
            codec: c.codec,
            payload_type: PayloadType(c.payload_type.unwrap_or(c.codec.default_payload_type())),
            ptime_ms: u32::from(c.ptime_ms.unwrap_or(control::DEFAULT_PTIME_MS)),
            jitter: jcfg,
            relatch_after: Duration::from_millis(cfg.endpoint.relatch_after_ms),
            silent_after: Duration::from_millis(cfg.endpoint.silent_after_ms),
            tx_ssrc: Ssrc(mix(id.0 ^ 0x6d65_6469_6167_7721) as u32),
            tx_first_seq: mix(id.0) as u16,
        };
        let endpoint = Endpoint::new(spec, shared.clone(), jb, tap_tx, play_rx);
        let _ = self
            .tap_commands
            .push(TapCommand::Add(Box::new(TapEndpoint {
                id,
                frames: tap_rx,
                play: play_tx,
                shared: shared.clone(),
                rate,
            })));
        let (tx, rx) = oneshot::channel();
        let placed = Placement {
            id,
            tenant: tenant_index,
            rtp,
            rtcp,
            endpoint,
        };
        let sent = self.workers[worker].send(Command::Add(Box::new(placed), tx));
        let result = match sent {
            Err(_) => Err("worker command queue full".to_owned()),
            Ok(()) => rx
                .await
                .unwrap_or_else(|_| Err("worker stopped".to_owned())),
        };
        if let Err(e) = result {
            let _ = self.tap_commands.push(TapCommand::Remove(id));
            lock_poisoned(&self.inner)
                .ports
                .release(c.tenant.as_str(), port, monotonic_now());
            return Err(ErrorBody {
                retryable: true,
                ..err(ErrorCode::Internal, e)
            });
        }
        let rtcp_port = c.rtcp.then_some(port + 1);
        let advertised = SocketAddr::new(
            cfg.dataplane.advertise_ip.unwrap_or(bind_ip),
            local_addr.port(),
        );
        lock_poisoned(&self.inner).endpoints.insert(
            id,
            Entry {
                tenant: c.tenant.clone(),
                session: c.session.clone(),
                codec: c.codec,
                local_addr: advertised,
                worker,
                created_ms: unix_ms(monotonic_now()),
                shared: shared.clone(),
                rtcp: c.rtcp,
            },
        );
        info!(endpoint = %id, tenant = %c.tenant, session = %c.session, codec = %c.codec, local = %advertised, worker, "endpoint created");
        Ok(EndpointCreated {
            endpoint: id,
            tenant: c.tenant,
            session: c.session,
            local_addr: advertised,
            rtcp_port,
        })
    }

    async fn snapshot(
        &self,
        id: EndpointId,
        remove: bool,
    ) -> OpResult<(EndpointSnapshot, EndpointStats)> {
        let worker = lock_poisoned(&self.inner)
            .endpoints
            .get(&id)
            .map(|e| e.worker)
            .ok_or_else(|| err(ErrorCode::UnknownEndpoint, format!("no endpoint {id}")))?;
        let (tx, rx) = oneshot::channel();
        let cmd = if remove {
            Command::Remove(id, tx)
        } else {
            Command::Snapshot(id, tx)
        };
        self.workers[worker].send(cmd).map_err(|_| ErrorBody {
            retryable: true,
            ..err(ErrorCode::Internal, "worker command queue full")
        })?;
        let snap = rx
            .await
            .ok()
            .flatten()
            .ok_or_else(|| err(ErrorCode::UnknownEndpoint, format!("no endpoint {id}")))?;
        let inner = lock_poisoned(&self.inner);
        let e = inner
            .endpoints
            .get(&id)
            .ok_or_else(|| err(ErrorCode::UnknownEndpoint, format!("no endpoint {id}")))?;
        Ok((snap, stats_of(id, e, &snap)))
    }

    async fn stats(&self, id: EndpointId) -> OpResult<EndpointStats> {
        self.snapshot(id, false).await.map(|(_, s)| s)
    }

    async fn destroy(&self, id: EndpointId) -> OpResult<EndpointStats> {
        let (_, stats) = self.snapshot(id, true).await?;
        let _ = self.tap_commands.push(TapCommand::Remove(id));
        let empty = {
            let mut inner = lock_poisoned(&self.inner);
            if let Some(e) = inner.endpoints.remove(&id) {
                let port = e.local_addr.port();
                inner
                    .ports
                    .release(e.tenant.as_str(), port, monotonic_now());
            }
            inner.endpoints.is_empty()
        };
        let _ = self.events.send(Event::Destroyed(control::DestroyedEvent {
            endpoint: id,
            tenant: stats.tenant.clone(),
            at_ms: unix_ms(monotonic_now()),
            reason: control::DestroyReason::Requested,
            stats: Box::new(stats.clone()),
        }));
        info!(endpoint = %id, packets = stats.rx.packets, lost = stats.rx.lost, jitter_ms = stats.rx.jitter_ms, "endpoint destroyed");
        if empty && self.exit_when_empty.load(Ordering::Relaxed) {
            self.shutdown.notify_one();
        }
        Ok(stats)
    }

    async fn list(&self, tenant: Option<&TenantId>) -> EndpointListing {
        let ids: Vec<EndpointId> = lock_poisoned(&self.inner)
            .endpoints
            .iter()
            .filter(|(_, e)| tenant.is_none_or(|t| *t == e.tenant))
            .map(|(id, _)| *id)
            .collect();
        let mut endpoints = Vec::with_capacity(ids.len());
        for id in ids {
            if let Ok((snap, s)) = self.snapshot(id, false).await {
                endpoints.push(EndpointSummary {
                    endpoint: id,
                    tenant: s.tenant,
                    session: s.session,
                    codec: s.codec,
                    local_addr: s.local_addr,
                    peer: snap.peer,
                    state: s.state,
                    created_at_ms: s.created_at_ms,
                    rx_packets: snap.stats.packets,
                    lost: snap.stats.lost,
                    jitter_ms: snap.stats.jitter_ms,
                });
            }
        }
        EndpointListing { endpoints }
    }

    fn status(&self) -> ServerStatus {
        let uptime = monotonic_now().saturating_since(self.started);
        let secs = uptime.as_secs_f64().max(1e-3);
        let workers = self
            .workers
            .iter()
            .map(|w| WorkerStatus {
                id: w.index as u32,
                core: w.core.map(|c| c as u32),
                engine: match w.kind {
                    EngineKind::IoUring => control::Engine::IoUring,
                    EngineKind::Fallback => control::Engine::Epoll,
                },
                endpoints: w.endpoints(),
                packets_per_s: (w.metrics.datagrams.load(Ordering::Relaxed) as f64 / secs) as u64,
                loop_overruns: w.metrics.overruns.load(Ordering::Relaxed),
            })
            .collect();
        let sum = |f: fn(&metrics::WorkerMetrics) -> &std::sync::atomic::AtomicU64| {
            worker::total(&self.workers, f)
        };
        ServerStatus {
            version: PROTOCOL_VERSION,
            uptime_s: uptime.as_secs(),
            draining: self.draining.load(Ordering::Relaxed),
            workers,
            endpoints: lock_poisoned(&self.inner).endpoints.len() as u64,
            streams_receiving: sum(|m| &m.receiving),
            rx_packets: sum(|m| &m.datagrams),
            rx_bytes: 0,
            tx_packets: sum(|m| &m.sent),
            tx_bytes: 0,
        }
    }

    /// Moves worker events to subscribers, every 10 ms.
    async fn pump_events(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        loop {
            tick.tick().await;
            while let Some(ev) = self.worker_events.pop() {
                let tenant = lock_poisoned(&self.inner)
                    .endpoints
                    .get(&ev.endpoint)
                    .map(|e| e.tenant.clone());
                let Some(tenant) = tenant else { continue };
                let at_ms = unix_ms(ev.at);
                let event = match ev.event {
                    EndpointEvent::Latched(peer) => Event::Latched(control::LatchedEvent {
                        endpoint: ev.endpoint,
                        tenant,
                        at_ms,
                        peer,
                        previous: None,
                    }),
                    EndpointEvent::Relatched { from, to } => {
                        Event::Latched(control::LatchedEvent {
                            endpoint: ev.endpoint,
                            tenant,
                            at_ms,
                            peer: to,
                            previous: Some(from),
                        })
                    }
                    EndpointEvent::Receiving { peer, ssrc } => {
                        Event::Receiving(control::ReceivingEvent {
                            endpoint: ev.endpoint,
                            tenant,
                            at_ms,
                            peer,
                            ssrc: ssrc.0,
                        })
                    }
                    EndpointEvent::Silent { last_packet } => Event::Silent(control::SilentEvent {
                        endpoint: ev.endpoint,
                        tenant,
                        at_ms,
                        last_packet_at_ms: unix_ms(last_packet),
                    }),
                    EndpointEvent::SsrcChanged { from, to } => {
                        Event::SsrcChanged(control::SsrcChangedEvent {
                            endpoint: ev.endpoint,
                            tenant,
                            at_ms,
                            old_ssrc: from.0,
                            new_ssrc: to.0,
                        })
                    }
                };
                let _ = self.events.send(event);
            }
        }
    }

    async fn serve_metrics(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let dp = self.clone();
            tokio::spawn(async move {
                let mut req = Vec::with_capacity(1024);
                let mut buf = [0u8; 1024];
                let read = tokio::time::timeout(Duration::from_secs(5), async {
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return false,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    true
                })
                .await;
                if !matches!(read, Ok(true)) {
                    return;
                }
                let line = req.split(|b| *b == b'\r').next().unwrap_or_default();
                let (status, ctype, body) =
                    if line.starts_with(b"GET /metrics ") || line.starts_with(b"GET /metrics?") {
                        (
                            "200 OK",
                            "text/plain; version=0.0.4; charset=utf-8",
                            dp.render_metrics(),
                        )
                    } else if line.starts_with(b"GET / ") {
                        (
                            "200 OK",
                            "text/plain; charset=utf-8",
                            "mediagw-dataplane: see /metrics\n".to_owned(),
                        )
                    } else {
                        (
                            "404 Not Found",
                            "text/plain; charset=utf-8",
                            "not found: try /metrics\n".to_owned(),
                        )
                    };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    }

    /// The Prometheus text exposition.
    pub fn render_metrics(&self) -> String {
        let tenants = lock_poisoned(&self.inner).tenants.clone();
        let infos: Vec<WorkerInfo<'_>> = self
            .workers
            .iter()
            .map(|w| WorkerInfo {
                index: w.index,
                engine: match w.kind {
                    EngineKind::IoUring => "io_uring",
                    EngineKind::Fallback => "epoll",
                },
                metrics: &w.metrics,
            })
            .collect();
        metrics::render(&tenants, &infos, self.draining.load(Ordering::Relaxed))
    }
}

fn stats_of(id: EndpointId, e: &Entry, s: &EndpointSnapshot) -> EndpointStats {
    let st = &s.stats;
    let fraction_lost = if st.expected > 0 {
        (st.lost.max(0) as f64 / st.expected as f64).min(1.0)
    } else {
        0.0
    };
    EndpointStats {
        endpoint: id,
        tenant: e.tenant.clone(),
        session: e.session.clone(),
        codec: e.codec,
        local_addr: e.local_addr,
        peer: s.peer,
        state: match s.state {
            RxState::Waiting => EndpointState::Waiting,
            RxState::Receiving => EndpointState::Receiving,
            RxState::Silent => EndpointState::Silent,
        },
        created_at_ms: e.created_ms,
        first_packet_at_ms: s.first_rx.map(unix_ms),
        last_packet_at_ms: s.last_rx.map(unix_ms),
        rx: RxStats {
            packets: st.packets,
            bytes: s.rx.bytes,
            expected: st.expected,
            lost: st.lost,
            fraction_lost,
            duplicates: st.duplicates,
            reordered: st.reordered,
            late: st.late,
            jitter_ms: st.jitter_ms,
            max_jitter_ms: s.max_jitter_ms,
            ssrc: st.ssrc.map(|x| x.0),
            ssrc_changes: st.ssrc_changes,
            malformed: s.rx.malformed,
            foreign_source: s.rx.foreign_source,
            wrong_payload_type: s.rx.wrong_payload_type,
            rtcp_packets: s.rx.rtcp_packets,
            transit_ms: s.transit.map(|t| TransitPercentiles {
                p50: t.p50_us as f64 / 1000.0,
                p90: t.p90_us as f64 / 1000.0,
                p99: t.p99_us as f64 / 1000.0,
                max: t.max_us as f64 / 1000.0,
            }),
        },
        jitter_buffer: JitterBufferStats {
            played: s.jitter.played,
            concealed: s.jitter.concealed,
            late_dropped: s.jitter.late_dropped,
            overflow_dropped: s.jitter.overflow_dropped,
            skipped: s.jitter.skipped,
            inserted: s.jitter.inserted,
            current_delay_ms: s.jitter.current_delay_ms,
            target_delay_ms: s.jitter.target_delay_ms,
        },
        tx: TxStats {
            packets: s.tx.packets,
            bytes: s.tx.bytes,
            frames_dropped: s.tx.frames_dropped,
        },
        tap: TapStats {
            subscribers: e.shared.subscribers.load(Ordering::Relaxed),
            frames: s.rx.tap_frames,
            overflows: s.rx.tap_overflows,
        },
        rtcp: (e.rtcp || s.rtcp.sender_reports + s.rtcp.receiver_reports > 0).then(|| {
            RtcpSummary {
                last_sr: s.rtcp.last_sr.map(|sr| SenderReportSummary {
                    received_at_ms: unix_ms(sr.at),
                    ssrc: sr.ssrc.0,
                    ntp_ms: ntp_to_unix_ms(sr.ntp),
                    rtp_ts: sr.rtp_ts.0,
                    packets: sr.packets,
                    octets: sr.octets,
                }),
                last_rr: s.rtcp.last_rr.map(|rr| {
                    let rate = f64::from(e.codec.clock_rate().0);
                    ReceiverReportSummary {
                        received_at_ms: unix_ms(rr.at),
                        ssrc: rr.reporter.0,
                        fraction_lost: f64::from(rr.block.fraction_lost) / 256.0,
                        cumulative_lost: rr.block.cumulative_lost,
                        jitter_ms: f64::from(rr.block.jitter) * 1000.0 / rate,
                        // RTT needs the time we sent the SR the peer names
                        // (LSR); the dataplane sends no SR yet.
                        rtt_ms: None,
                    }
                }),
            }
        }),
    }
}

/// An NTP timestamp (seconds since 1900, 32.32 fixed point) as unix ms.
fn ntp_to_unix_ms(ntp: u64) -> u64 {
    const NTP_UNIX_OFFSET_S: u64 = 2_208_988_800;
    let secs = (ntp >> 32).saturating_sub(NTP_UNIX_OFFSET_S);
    let frac_ms = ((ntp & 0xFFFF_FFFF) * 1000) >> 32;
    secs * 1000 + frac_ms
}

fn to_value<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// splitmix64: spreads ids into SSRCs and first sequence numbers.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn lock_path(control: &Path) -> PathBuf {
    let mut p = control.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// Takes the instance lock next to the control socket, or says who has it.
fn claim(path: &Path) -> io::Result<File> {
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open lock file {}: {e}", path.display()),
            )
        })?;
    if f.try_lock().is_err() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "another mediagw-dataplane holds {} (same control socket path): refusing to start a second instance",
                path.display()
            ),
        ));
    }
    Ok(f)
}

/// Binds a Unix socket, replacing a stale file (we hold the instance lock,
/// so nobody else serves it), and sets its mode.
fn bind_unix(path: &Path, mode: u32) -> io::Result<std::os::unix::net::UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot remove stale socket {}: {e}", path.display()),
            ));
        }
    }
    let l = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot bind {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(l)
}
