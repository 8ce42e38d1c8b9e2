//! A worker thread: one engine (io_uring or the epoll fallback), the
//! endpoints placed on it, and the loop that moves datagrams between them.
//!
//! ```text
//!   control thread --Command--> ArrayQueue --+ waker (eventfd)
//!                                            v
//!   loop: engine.poll(tick) -> Endpoint::handle_datagram  (per datagram)
//!         commands                                          (when woken)
//!         Endpoint::handle_timeout / poll_transmit          (timers)
//!         engine.flush()                                    (one batch out)
//!         publish counters to atomics                       (every 250 ms)
//!   events (latched, silent, ...) --> ArrayQueue --> control thread
//! ```
//!
//! Nothing on the per-datagram path allocates, locks, logs or makes a
//! syscall; the worker owns its endpoints outright, and other threads only
//! see what it publishes.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use mediagw_shared::ids::EndpointId;
use tokio::sync::oneshot;

use crate::endpoint::{Endpoint, EndpointEvent, EndpointSnapshot, MAX_PACKET_SAMPLES, RxState};
use crate::metrics::{TenantSlot, WorkerMetrics};
use crate::net::{
    Engine, EngineConfig, EngineKind, FallbackReason, Token, monotonic_now, new_engine,
};
use crate::units::Nanos;

/// How often a worker publishes its counters.
const PUBLISH_EVERY: Duration = Duration::from_millis(250);

/// An endpoint handed to a worker.
#[derive(Debug)]
pub struct Placement {
    /// Its id.
    pub id: EndpointId,
    /// Index of its tenant in the tenant table.
    pub tenant: usize,
    /// The RTP socket, bound.
    pub rtp: UdpSocket,
    /// The RTCP socket (port + 1), if opened.
    pub rtcp: Option<UdpSocket>,
    /// The media state.
    pub endpoint: Endpoint,
}

/// Something asked of a worker by the control thread.
#[derive(Debug)]
pub enum Command {
    /// Start serving an endpoint.
    Add(Box<Placement>, oneshot::Sender<Result<(), String>>),
    /// Stop serving it; answers with its final snapshot.
    Remove(EndpointId, oneshot::Sender<Option<EndpointSnapshot>>),
    /// Copy out an endpoint's figures.
    Snapshot(EndpointId, oneshot::Sender<Option<EndpointSnapshot>>),
    /// Leave the loop (after removing every endpoint).
    Stop,
}

/// An event from a worker, for the control thread to push to subscribers.
#[derive(Debug, Clone, Copy)]
pub struct WorkerEvent {
    /// Which endpoint.
    pub endpoint: EndpointId,
    /// What happened.
    pub event: EndpointEvent,
    /// When, on the monotonic clock.
    pub at: Nanos,
}

/// The control thread's side of a worker.
#[derive(Debug)]
pub struct WorkerHandle {
    /// Worker number.
    pub index: usize,
    /// The core it is pinned to.
    pub core: Option<usize>,
    /// io_uring or the fallback.
    pub kind: EngineKind,
    /// What it publishes.
    pub metrics: Arc<WorkerMetrics>,
    commands: Arc<ArrayQueue<Command>>,
    waker: crate::net::Waker,
    thread: Option<JoinHandle<()>>,
}

/// The command queue is full: the worker is not keeping up.
#[derive(Debug)]
pub struct Busy;

impl WorkerHandle {
    /// Queues a command and wakes the worker.
    pub fn send(&self, cmd: Command) -> Result<(), Busy> {
        self.commands.push(cmd).map_err(|_| Busy)?;
        self.waker.wake();
        Ok(())
    }

    /// Endpoints currently on this worker.
    pub fn endpoints(&self) -> u64 {
        self.metrics.endpoints.load(Ordering::Relaxed)
    }

    /// Asks the worker to stop and waits for it.
    pub fn stop(&mut self) {
        // A full queue still drains; retry until the stop is queued.
        while self.commands.push(Command::Stop).is_err() {
            self.waker.wake();
            std::thread::sleep(Duration::from_millis(1));
        }
        self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts a worker thread. The engine is built on the thread that uses it
/// (an io_uring belongs to one thread); the fallback reason, if io_uring
/// could not be set up, comes back with the handle.
pub fn spawn(
    index: usize,
    core: Option<core_affinity::CoreId>,
    engine: EngineConfig,
    tick: Duration,
    tenants: usize,
    events: Arc<ArrayQueue<WorkerEvent>>,
) -> std::io::Result<(WorkerHandle, Option<FallbackReason>)> {
    let commands = Arc::new(ArrayQueue::new(4096));
    let metrics = Arc::new(WorkerMetrics::new(tenants));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (cmds, m) = (commands.clone(), metrics.clone());
    let thread = std::thread::Builder::new()
        .name(format!("mediagw-w{index}"))
        .spawn(move || {
            if let Some(c) = core {
                core_affinity::set_for_current(c);
            }
            let (engine, reason) = match new_engine(&engine) {
                Ok(e) => e,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok((engine.kind(), engine.waker(), reason)));
            Worker {
                engine,
                tick,
                commands: cmds,
                events,
                metrics: m,
                slots: Vec::new(),
                free: Vec::new(),
                by_id: HashMap::new(),
                scratch: Box::new([0; MAX_PACKET_SAMPLES]),
                out: Box::new([0; 1536]),
                retired: vec![TenantSlot::default(); tenants],
            }
            .run();
        })?;
    let (kind, waker, reason) = ready_rx
        .recv()
        .map_err(|_| std::io::Error::other("worker thread died while starting"))??;
    Ok((
        WorkerHandle {
            index,
            core: core.map(|c| c.id),
            kind,
            metrics,
            commands,
            waker,
            thread: Some(thread),
        },
        reason,
    ))
}

#[derive(Debug)]
struct Slot {
    id: EndpointId,
    tenant: usize,
    endpoint: Endpoint,
    has_rtcp: bool,
    next_due: Option<Nanos>,
}

struct Worker {
    engine: Engine,
    tick: Duration,
    commands: Arc<ArrayQueue<Command>>,
    events: Arc<ArrayQueue<WorkerEvent>>,
    metrics: Arc<WorkerMetrics>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    by_id: HashMap<EndpointId, usize>,
    scratch: Box<[i16; MAX_PACKET_SAMPLES]>,
    out: Box<[u8; 1536]>,
    /// Counters of endpoints already removed, per tenant, so published
    /// totals never go backwards.
    retired: Vec<TenantSlot>,
}

fn rtp_token(slot: usize) -> Token {
    Token((slot as u64) << 1)
}

fn rtcp_token(slot: usize) -> Token {
    Token(((slot as u64) << 1) | 1)
}

impl Worker {
    fn run(mut self) {
        let mut next_publish = monotonic_now();
        let mut stopping = false;
        let budget = self.tick * 4;
        while !stopping {
            let started = monotonic_now();
            let timeout = self.timeout(started);
            let Self {
                engine,
                slots,
                scratch,
                events,
                metrics,
                ..
            } = &mut self;
            let polled = engine.poll(timeout, |token, src, arrival, buf| {
                let index = (token.0 >> 1) as usize;
                let Some(Some(slot)) = slots.get_mut(index) else {
                    return;
                };
                let event = if token.0 & 1 == 1 {
                    slot.endpoint.handle_rtcp(buf);
                    None
                } else {
                    slot.endpoint.handle_datagram(src, arrival, buf, scratch).0
                };
                if let Some(event) = event {
                    push_event(events, metrics, slot.id, event, arrival);
                }
            });
            if let Err(e) = polled {
                // An engine error is not per packet: it means the ring or
                // epoll itself failed. Say so and back off briefly.
                eprintln!("mediagw worker: engine poll failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            let now = monotonic_now();
            stopping = self.run_commands(now);
            self.run_timers(now);
            if let Err(e) = self.engine.flush() {
                eprintln!("mediagw worker: engine flush failed: {e}");
            }
            let done = monotonic_now();
            self.metrics.record_loop(started, done, budget);
            if done >= next_publish {
                self.publish();
                next_publish = done + PUBLISH_EVERY;
            }
        }
        for index in 0..self.slots.len() {
            self.remove_slot(index, monotonic_now());
        }
        let _ = self.engine.flush();
        self.publish();
    }

    /// Sleep until the earliest endpoint timer, at most one tick.
    fn timeout(&self, now: Nanos) -> Duration {
        let mut t = self.tick;
        for s in self.slots.iter().flatten() {
            if let Some(due) = s.next_due {
                t = t.min(due.saturating_since(now));
            }
        }
        t
    }

    fn run_commands(&mut self, now: Nanos) -> bool {
        while let Some(cmd) = self.commands.pop() {
            match cmd {
                Command::Add(p, reply) => {
                    let _ = reply.send(self.add(*p, now));
                }
                Command::Remove(id, reply) => {
                    let snap = self
                        .by_id
                        .get(&id)
                        .copied()
                        .and_then(|i| self.remove_slot(i, now));
                    let _ = reply.send(snap);
                }
                Command::Snapshot(id, reply) => {
                    let snap = self
                        .by_id
                        .get(&id)
                        .and_then(|&i| self.slots[i].as_mut())
                        .map(|s| s.endpoint.snapshot());
                    let _ = reply.send(snap);
                }
                Command::Stop => return true,
            }
        }
        false
    }

    fn add(&mut self, p: Placement, now: Nanos) -> Result<(), String> {
        if self.by_id.contains_key(&p.id) {
            return Err(format!("endpoint {} already on this worker", p.id));
        }
        let index = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        if let Err(e) = self.engine.add_socket(rtp_token(index), p.rtp) {
            self.free.push(index);
            return Err(format!("cannot receive on the RTP socket: {e}"));
        }
        let has_rtcp = p.rtcp.is_some();
        if let Some(rtcp) = p.rtcp
            && let Err(e) = self.engine.add_socket(rtcp_token(index), rtcp)
        {
            self.engine.remove_socket(rtp_token(index));
            self.free.push(index);
            return Err(format!("cannot receive on the RTCP socket: {e}"));
        }
        let mut slot = Slot {
            id: p.id,
            tenant: p.tenant,
            endpoint: p.endpoint,
            has_rtcp,
            next_due: None,
        };
        slot.next_due = slot.endpoint.poll_timeout();
        let _ = now;
        self.slots[index] = Some(slot);
        self.by_id.insert(p.id, index);
        self.metrics.endpoints.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn remove_slot(&mut self, index: usize, now: Nanos) -> Option<EndpointSnapshot> {
        let mut slot = self.slots.get_mut(index)?.take()?;
        // Play out what is due, so final figures include it.
        slot.endpoint.handle_timeout(now);
        self.engine.remove_socket(rtp_token(index));
        if slot.has_rtcp {
            self.engine.remove_socket(rtcp_token(index));
        }
        self.by_id.remove(&slot.id);
        self.free.push(index);
        self.metrics.endpoints.fetch_sub(1, Ordering::Relaxed);
        let snap = slot.endpoint.snapshot();
        if let Some(r) = self.retired.get_mut(slot.tenant) {
            r.add(&snap);
        }
        Some(snap)
    }

    fn run_timers(&mut self, now: Nanos) {
        let Self {
            engine,
            slots,
            events,
            metrics,
            out,
            ..
        } = self;
        for (index, s) in slots.iter_mut().enumerate() {
            let Some(s) = s else { continue };
            if s.next_due.is_some_and(|due| due <= now)
                && let Some(event) = s.endpoint.handle_timeout(now)
            {
                push_event(events, metrics, s.id, event, now);
            }
            while let Some((dest, len)) = s.endpoint.poll_transmit(now, &mut out[..]) {
                if engine
                    .queue_send(rtp_token(index), dest, &out[..len])
                    .is_err()
                {
                    metrics.send_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            s.next_due = s.endpoint.poll_timeout();
        }
    }

    fn publish(&mut self) {
        let mut totals = self.retired.clone();
        let mut receiving = 0u64;
        for s in self.slots.iter_mut().flatten() {
            let snap = s.endpoint.snapshot();
            if let Some(t) = totals.get_mut(s.tenant) {
                t.add(&snap);
                t.active += 1;
                if snap.state == RxState::Receiving {
                    t.observe_jitter(snap.stats.jitter_ms);
                    receiving += 1;
                }
            }
        }
        self.metrics
            .publish(&totals, receiving, self.engine.counters());
        // Histogram observations are per publish, not cumulative state of
        // the endpoints: keep them in `retired` so they accumulate.
        for (r, t) in self.retired.iter_mut().zip(&totals) {
            r.jitter_buckets = t.jitter_buckets;
            r.jitter_sum_ms = t.jitter_sum_ms;
            r.jitter_count = t.jitter_count;
        }
    }
}

fn push_event(
    events: &ArrayQueue<WorkerEvent>,
    metrics: &WorkerMetrics,
    endpoint: EndpointId,
    event: EndpointEvent,
    at: Nanos,
) {
    if events
        .push(WorkerEvent {
            endpoint,
            event,
            at,
        })
        .is_err()
    {
        metrics.events_dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Sums one published counter over workers.
pub fn total(
    handles: &[WorkerHandle],
    f: impl Fn(&WorkerMetrics) -> &std::sync::atomic::AtomicU64,
) -> u64 {
    handles
        .iter()
        .map(|h| f(&h.metrics).load(Ordering::Relaxed))
        .sum()
}
