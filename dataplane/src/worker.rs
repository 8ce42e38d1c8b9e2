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

use crate::endpoint::{
    Endpoint, EndpointEvent, EndpointSnapshot, MAX_PACKET_SAMPLES, PlayNotifier, RxState,
};
use crate::metrics::{EndpointCounts, LatencyCounts, TenantSlot, WorkerMetrics};
use crate::net::{
    Engine, EngineConfig, EngineKind, FallbackReason, Token, monotonic_now, new_engine,
};
use crate::units::Nanos;
use wheel::Wheel;

/// How often a worker publishes its counters.
const PUBLISH_EVERY: Duration = Duration::from_millis(250);
/// Arrival times a worker keeps per poll to measure receive delay; a
/// bigger batch measures its first this-many datagrams.
const MEASURED_PER_POLL: usize = 16_384;

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
                live: vec![TenantSlot::default(); tenants],
                seen: Vec::new(),
                sweep: Sweep::default(),
                totals: vec![TenantSlot::default(); tenants],
                arrivals: Vec::with_capacity(MEASURED_PER_POLL),
                receive_delay: LatencyCounts::default(),
                playout_lateness: LatencyCounts::default(),
                wheel: Wheel::new(tick, monotonic_now()),
                expired: Vec::new(),
                plays: Arc::new(PlayNotifier::new(4096)),
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
    /// Per tenant: live endpoints' counters as last folded in by the
    /// sweep, the count of live endpoints, and every jitter observation.
    live: Vec<TenantSlot>,
    /// Per slot: the counters last folded into `live`.
    seen: Vec<EndpointCounts>,
    /// Where the publishing sweep goes on, and how far it got.
    sweep: Sweep,
    /// What is published (reused).
    totals: Vec<TenantSlot>,
    /// Kernel receive times of this poll's datagrams (capacity fixed at
    /// start: never grows).
    arrivals: Vec<Nanos>,
    /// Kernel receive time to the end of the datagram's batch.
    receive_delay: LatencyCounts,
    /// Frame due time to the moment it was played.
    playout_lateness: LatencyCounts,
    /// Every endpoint's next timer, by slot.
    wheel: Wheel,
    /// Slots whose timer expired this loop (capacity: one per slot, grown
    /// when a slot is added, never on the per-packet path).
    expired: Vec<u32>,
    /// Endpoints the tap gave audio to play.
    plays: Arc<PlayNotifier>,
}

fn rtp_token(slot: usize) -> Token {
    Token((slot as u64) << 1)
}

fn rtcp_token(slot: usize) -> Token {
    Token(((slot as u64) << 1) | 1)
}

impl Worker {
    fn run(mut self) {
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
                arrivals,
                wheel,
                ..
            } = &mut self;
            arrivals.clear();
            let polled = engine.poll(timeout, |token, src, arrival, buf| {
                if arrivals.len() < arrivals.capacity() {
                    arrivals.push(arrival);
                }
                let index = (token.0 >> 1) as usize;
                let Some(Some(slot)) = slots.get_mut(index) else {
                    return;
                };
                let event = if token.0 & 1 == 1 {
                    slot.endpoint.handle_rtcp(buf, arrival);
                    None
                } else {
                    let event = slot.endpoint.handle_datagram(src, arrival, buf, scratch).0;
                    // A packet moves timers later (silence), except the
                    // first one and a resync, which start the play-out
                    // clock: bring the wheel entry forward only then.
                    if let Some(due) = slot.endpoint.poll_timeout()
                        && wheel.due(index).is_none_or(|w| due < w)
                    {
                        wheel.set(index, Some(due));
                    }
                    event
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
            for a in &self.arrivals {
                self.receive_delay.record(now.0.saturating_sub(a.0));
            }
            stopping = self.run_commands(now);
            while let Some(id) = self.plays.pop() {
                if let Some(&index) = self.by_id.get(&id) {
                    self.start_playing(index, now);
                }
            }
            if self.plays.take_overflow() {
                self.start_playing_all(now);
            }
            self.run_timers(now);
            if let Err(e) = self.engine.flush() {
                eprintln!("mediagw worker: engine flush failed: {e}");
            }
            let done = monotonic_now();
            self.metrics.record_loop(started, done, budget);
            self.sweep_step(done);
        }
        for index in 0..self.slots.len() {
            self.remove_slot(index, monotonic_now());
        }
        let _ = self.engine.flush();
        self.publish();
    }

    /// Folds a share of the endpoints' counters into the tenant totals,
    /// enough to pass over every endpoint in about 80% of the publish
    /// interval, and publishes once a pass is over and the interval has
    /// passed. Spread over the loops, the pass never stalls the worker (a
    /// pass at once took milliseconds with thousands of endpoints, and
    /// every datagram arriving meanwhile waited).
    fn sweep_step(&mut self, now: Nanos) {
        let n = self.slots.len();
        if self.sweep.next < n {
            let elapsed = now.saturating_since(self.sweep.last).as_nanos() as u64;
            let period = (PUBLISH_EVERY.as_nanos() as u64 * 4 / 5).max(1);
            let quota =
                ((n as u64 * elapsed).div_ceil(period) as usize).clamp(1, n - self.sweep.next);
            for index in self.sweep.next..self.sweep.next + quota {
                self.visit(index, now);
            }
            self.sweep.next += quota;
        }
        self.sweep.last = now;
        if self.sweep.next >= n && now >= self.sweep.publish_at {
            self.publish();
            self.sweep.next = 0;
            self.sweep.publish_at = now + PUBLISH_EVERY;
        }
    }

    /// One endpoint's turn in the sweep: fold its counters in, observe its
    /// jitter, and start its playing if a notification was lost.
    fn visit(&mut self, index: usize, now: Nanos) {
        let Some(Some(s)) = self.slots.get_mut(index) else {
            return;
        };
        let snap = s.endpoint.snapshot();
        let counts = EndpointCounts::of(&snap);
        if let (Some(live), Some(seen)) = (self.live.get_mut(s.tenant), self.seen.get_mut(index)) {
            live.add_delta(&counts, seen);
            *seen = counts;
            if snap.state == RxState::Receiving {
                live.observe_jitter(snap.stats.jitter_ms);
                self.sweep.receiving += 1;
            }
        }
        if s.endpoint.tx_due().is_none() && s.endpoint.play_pending() {
            self.start_playing(index, now);
        }
    }

    /// Sleep until the next tick boundary (ticks aligned on the clock), at
    /// most one tick: timers due meanwhile wait for it, so a wakeup serves
    /// every frame due in a tick rather than one frame (packets arriving
    /// end the wait earlier anyway).
    fn timeout(&self, now: Nanos) -> Duration {
        let tick = self.tick.as_nanos().max(1) as u64;
        let left = tick - now.0 % tick;
        // Too close to the boundary to be worth a sleep of its own: take
        // the next one.
        Duration::from_nanos(if left < tick / 8 { left + tick } else { left })
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
                        .map(|s| s.endpoint.snapshot_with_transit());
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
        // Room for every slot's timer, grown here (control path), never
        // while handling packets.
        self.wheel.ensure(self.slots.len());
        self.expired
            .reserve(self.slots.len().saturating_sub(self.expired.len()));
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
        p.endpoint.shared().set_notifier(self.plays.clone(), p.id);
        let slot = Slot {
            id: p.id,
            tenant: p.tenant,
            endpoint: p.endpoint,
            has_rtcp,
        };
        self.wheel.set(index, slot.endpoint.poll_timeout());
        let _ = now;
        if self.seen.len() < self.slots.len() {
            self.seen
                .resize(self.slots.len(), EndpointCounts::default());
        }
        self.seen[index] = EndpointCounts::default();
        if let Some(l) = self.live.get_mut(slot.tenant) {
            l.active += 1;
        }
        self.slots[index] = Some(slot);
        self.by_id.insert(p.id, index);
        self.metrics.endpoints.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn remove_slot(&mut self, index: usize, now: Nanos) -> Option<EndpointSnapshot> {
        let mut slot = self.slots.get_mut(index)?.take()?;
        self.wheel.set(index, None);
        // Play out what is due, so final figures include it.
        slot.endpoint.handle_timeout(now);
        self.engine.remove_socket(rtp_token(index));
        if slot.has_rtcp {
            self.engine.remove_socket(rtcp_token(index));
        }
        self.by_id.remove(&slot.id);
        self.free.push(index);
        self.metrics.endpoints.fetch_sub(1, Ordering::Relaxed);
        let snap = slot.endpoint.snapshot_with_transit();
        if let Some(r) = self.retired.get_mut(slot.tenant) {
            r.add(&snap);
        }
        // Its counters move from the live sum to the retired one.
        let seen = self
            .seen
            .get_mut(index)
            .map(std::mem::take)
            .unwrap_or_default();
        if let Some(l) = self.live.get_mut(slot.tenant) {
            l.add_delta(&EndpointCounts::default(), &seen);
            l.active = l.active.saturating_sub(1);
        }
        Some(snap)
    }

    /// Runs the timers of the endpoints due by `now` (and only those): due
    /// frames onto the tap ring, silence, paced audio into the call.
    fn run_timers(&mut self, now: Nanos) {
        let Self {
            engine,
            slots,
            events,
            metrics,
            out,
            playout_lateness,
            wheel,
            expired,
            ..
        } = self;
        expired.clear();
        wheel.expire(now, expired);
        for &index in expired.iter() {
            let index = index as usize;
            let Some(Some(s)) = slots.get_mut(index) else {
                continue;
            };
            if let Some(due) = s.endpoint.frame_due()
                && due <= now
            {
                playout_lateness.record(now.0 - due.0);
            }
            if let Some(event) = s.endpoint.handle_timeout(now) {
                push_event(events, metrics, s.id, event, now);
            }
            if s.endpoint.tx_due().is_some_and(|due| due <= now) {
                transmit(engine, metrics, index, &mut s.endpoint, now, out);
            }
            wheel.set(index, s.endpoint.poll_timeout());
        }
    }

    /// Starts pacing audio on an endpoint whose play ring got frames while
    /// it had no send timer (the tap told us).
    fn start_playing(&mut self, index: usize, now: Nanos) {
        let Self {
            engine,
            slots,
            metrics,
            out,
            wheel,
            ..
        } = self;
        let Some(Some(s)) = slots.get_mut(index) else {
            return;
        };
        s.endpoint.shared().take_play_ready();
        if s.endpoint.tx_due().is_none_or(|due| due <= now) {
            transmit(engine, metrics, index, &mut s.endpoint, now, out);
            wheel.set(index, s.endpoint.poll_timeout());
        }
    }

    /// [`Self::start_playing`] for every endpoint with frames waiting and no
    /// send timer (notifications were lost, or as a periodic backstop).
    fn start_playing_all(&mut self, now: Nanos) {
        for index in 0..self.slots.len() {
            let waiting = self.slots[index]
                .as_ref()
                .is_some_and(|s| s.endpoint.tx_due().is_none() && s.endpoint.play_pending());
            if waiting {
                self.start_playing(index, now);
            }
        }
    }

    /// Stores the tenant totals (retired plus live endpoints, as the last
    /// sweep saw them) and the worker's figures into the atomics.
    fn publish(&mut self) {
        for ((t, r), l) in self.totals.iter_mut().zip(&self.retired).zip(&self.live) {
            *t = *l;
            t.set_counters_sum(r, l);
        }
        self.metrics
            .publish(&self.totals, self.sweep.receiving, self.engine.counters());
        self.metrics
            .publish_latency(&self.receive_delay, &self.playout_lateness);
        self.sweep.receiving = 0;
    }
}

/// The publishing sweep's progress.
#[derive(Debug, Default)]
struct Sweep {
    /// The next slot to visit.
    next: usize,
    /// When the last step ran.
    last: Nanos,
    /// Endpoints seen receiving in this pass.
    receiving: u64,
    /// Not before this, the next publish.
    publish_at: Nanos,
}

/// Sends the endpoint's due audio packets into the call.
fn transmit(
    engine: &mut Engine,
    metrics: &WorkerMetrics,
    index: usize,
    endpoint: &mut Endpoint,
    now: Nanos,
    out: &mut [u8; 1536],
) {
    while let Some((dest, len)) = endpoint.poll_transmit(now, &mut out[..]) {
        if engine
            .queue_send(rtp_token(index), dest, &out[..len])
            .is_err()
        {
            metrics.send_dropped.fetch_add(1, Ordering::Relaxed);
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

/// The worker's endpoint timers: a hashed timer wheel of one-tick buckets
/// with intrusive doubly linked lists through a node per slot. Setting,
/// moving and cancelling a timer are O(1) and allocate nothing (nodes grow
/// with the slot table, on the control path); a loop visits only the
/// buckets of the ticks that passed, so only endpoints that are due, not
/// every endpoint.
///
/// A timer further out than the wheel's span (1024 ticks) sits in its
/// bucket and is skipped (left linked) on each turn of the wheel until it
/// is due. A timer set in the past goes into the current bucket.
mod wheel {
    use std::time::Duration;

    use crate::units::Nanos;

    const BUCKETS: usize = 1024;
    const NIL: u32 = u32::MAX;

    #[derive(Debug, Clone, Copy)]
    struct Node {
        prev: u32,
        next: u32,
        /// The bucket the node is linked into, NIL when unlinked.
        bucket: u32,
        due: u64,
    }

    const FREE: Node = Node {
        prev: NIL,
        next: NIL,
        bucket: NIL,
        due: 0,
    };

    #[derive(Debug)]
    pub(super) struct Wheel {
        granularity: u64,
        heads: Box<[u32]>,
        nodes: Vec<Node>,
        /// The tick whose bucket the last expiry walked last.
        cursor: u64,
    }

    impl Wheel {
        /// A wheel of `granularity` ticks, its clock starting at `now`.
        pub(super) fn new(granularity: Duration, now: Nanos) -> Self {
            let granularity = (granularity.as_nanos() as u64).max(1);
            Self {
                granularity,
                heads: vec![NIL; BUCKETS].into_boxed_slice(),
                nodes: Vec::new(),
                cursor: now.0 / granularity,
            }
        }

        /// Room for slots `0..n`.
        pub(super) fn ensure(&mut self, n: usize) {
            if self.nodes.len() < n {
                self.nodes.resize(n, FREE);
            }
        }

        /// The timer of slot `i`.
        pub(super) fn due(&self, i: usize) -> Option<Nanos> {
            self.nodes
                .get(i)
                .filter(|n| n.bucket != NIL)
                .map(|n| Nanos(n.due))
        }

        /// Sets (or, with `None`, cancels) slot `i`'s timer. A slot beyond
        /// [`Wheel::ensure`]'s room is ignored.
        pub(super) fn set(&mut self, i: usize, due: Option<Nanos>) {
            if i >= self.nodes.len() {
                return;
            }
            self.unlink(i);
            let Some(due) = due else { return };
            let tick = (due.0 / self.granularity).max(self.cursor);
            let b = (tick % BUCKETS as u64) as usize;
            let head = self.heads[b];
            self.nodes[i] = Node {
                prev: NIL,
                next: head,
                bucket: b as u32,
                due: due.0,
            };
            if head != NIL {
                self.nodes[head as usize].prev = i as u32;
            }
            self.heads[b] = i as u32;
        }

        fn unlink(&mut self, i: usize) {
            let n = self.nodes[i];
            if n.bucket == NIL {
                return;
            }
            if n.prev == NIL {
                self.heads[n.bucket as usize] = n.next;
            } else {
                self.nodes[n.prev as usize].next = n.next;
            }
            if n.next != NIL {
                self.nodes[n.next as usize].prev = n.prev;
            }
            self.nodes[i] = FREE;
        }

        /// Unlinks every timer due by `now` and appends its slot to `out`
        /// (which has room for every slot: see the worker's `expired`).
        pub(super) fn expire(&mut self, now: Nanos, out: &mut Vec<u32>) {
            let now_tick = (now.0 / self.granularity).max(self.cursor);
            let span = now_tick - self.cursor;
            let (first, count) = if span >= BUCKETS as u64 {
                (0, BUCKETS as u64)
            } else {
                (self.cursor, span + 1)
            };
            for t in first..first + count {
                let b = (t % BUCKETS as u64) as usize;
                let mut i = self.heads[b];
                while i != NIL {
                    let n = self.nodes[i as usize];
                    if n.due <= now.0 {
                        self.unlink(i as usize);
                        out.push(i);
                    }
                    i = n.next;
                }
            }
            self.cursor = now_tick;
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use proptest::prelude::*;

        const MS: u64 = 1_000_000;

        fn wheel() -> Wheel {
            let mut w = Wheel::new(Duration::from_millis(1), Nanos(0));
            w.ensure(64);
            w
        }

        #[test]
        fn expires_only_what_is_due() {
            let mut w = wheel();
            w.set(1, Some(Nanos(5 * MS)));
            w.set(2, Some(Nanos(5 * MS + 500_000)));
            w.set(3, Some(Nanos(2_000 * MS))); // past the wheel's span
            let mut out = Vec::with_capacity(64);
            w.expire(Nanos(4 * MS), &mut out);
            assert!(out.is_empty());
            w.expire(Nanos(5 * MS + 1), &mut out);
            assert_eq!(out, [1]);
            assert_eq!(w.due(2), Some(Nanos(5 * MS + 500_000)));
            out.clear();
            // A turn of the wheel later, slot 3 is still not due.
            w.expire(Nanos(1_030 * MS), &mut out);
            assert_eq!(out, [2]);
            out.clear();
            w.expire(Nanos(2_000 * MS), &mut out);
            assert_eq!(out, [3]);
            assert_eq!(w.due(3), None);
        }

        #[test]
        fn moving_cancelling_and_the_past() {
            let mut w = wheel();
            w.set(7, Some(Nanos(10 * MS)));
            w.set(7, Some(Nanos(3 * MS)));
            w.set(8, Some(Nanos(3 * MS)));
            w.set(8, None);
            let mut out = Vec::with_capacity(64);
            w.expire(Nanos(20 * MS), &mut out);
            assert_eq!(out, [7]);
            out.clear();
            // Set in the past: due at the next expiry, not a turn later.
            w.set(9, Some(Nanos(MS)));
            w.expire(Nanos(20 * MS), &mut out);
            assert_eq!(out, [9]);
            // Out of room: ignored, no panic.
            w.set(1_000, Some(Nanos(0)));
            assert_eq!(w.due(1_000), None);
        }

        proptest! {
            /// Against a plain list: the same slots expire at the same
            /// expiry, whatever the order of sets, cancels and expiries.
            #[test]
            fn matches_a_plain_list(
                ops in proptest::collection::vec((0usize..32, proptest::option::of(0u64..3_000), 0u64..40), 1..400)
            ) {
                let mut w = wheel();
                let mut model: Vec<Option<u64>> = vec![None; 32];
                let mut now = 0u64;
                let mut out = Vec::with_capacity(64);
                for (slot, due, advance) in ops {
                    // Timers at or after the current tick (the worker's
                    // timers are never set far in the past).
                    let due = due.map(|d| now + d * MS / 10);
                    w.set(slot, due.map(Nanos));
                    model[slot] = due;
                    now += advance * MS / 4;
                    out.clear();
                    w.expire(Nanos(now), &mut out);
                    let mut want: Vec<u32> = model
                        .iter()
                        .enumerate()
                        .filter(|(_, d)| d.is_some_and(|d| d <= now))
                        .map(|(i, _)| i as u32)
                        .collect();
                    for &i in &want {
                        model[i as usize] = None;
                    }
                    out.sort_unstable();
                    want.sort_unstable();
                    prop_assert_eq!(&out, &want);
                    for (i, d) in model.iter().enumerate() {
                        prop_assert_eq!(w.due(i).map(|n| n.0), *d);
                    }
                }
            }
        }
    }
}
