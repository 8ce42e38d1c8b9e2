//! The load generator's sending side: N concurrent G.711 streams, 20 ms
//! ptime, paced on one pinned thread and sent in batches with `sendmmsg`
//! (the dataplane's own epoll engine, used only for sending), with seeded
//! impairments and an exact account of every datagram.
//!
//! ```text
//!  stream i, packet k is due at  start + k x ptime + i x ptime / N
//!  (phases spread evenly: the offered load is smooth, not a burst per ptime)
//!
//!  every send tick:  due packets -> [impairment: drop / delay / duplicate /
//!                    reorder / SSRC change] -> queue -> sendmmsg batch
//! ```
//!
//! Impairments come from the dataplane's seeded model
//! ([`mediagw_dataplane::netsim::NetSim`], one path per stream, seeded from
//! the run seed and the stream number): the same seed gives the same drops,
//! delays and copies. The account says, per stream, how many packets were
//! generated, dropped on purpose, duplicated, delayed past a later one, and
//! how often the SSRC changed; the totals say how many datagrams the kernel
//! took. A receiver that got fewer lost the difference.
//!
//! A sender preempted for longer than [`MAX_CATCH_UP`] (other work on a
//! shared machine) does not burst to catch up: it shifts its schedule by
//! the stall and counts it. A burst would make every receiver's latency
//! measure the load generator's stall, not the receiver.
//!
//! GSO (`UDP_SEGMENT`) does not help here: it needs every segment to go to
//! one destination, and a paced RTP stream has one packet per destination
//! per 20 ms. `sendmmsg` is the batching that applies.
//!
//! Leaves out: receiving (RTCP, audio sent back), other codecs than PCMU.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use hdrhistogram::Histogram;
use mediagw_dataplane::net::{Engine, EngineConfig, SendError, Token, bind_udp, new_engine};
use mediagw_dataplane::netsim::{Impairment, NetSim, SentPacket};
use mediagw_dataplane::rtp::{RtpHeader, write_rtp};
use mediagw_dataplane::units::{Nanos, PayloadType, RtpTimestamp, Seq, Ssrc};
use mediagw_shared::g711;
use serde::Serialize;

use crate::error::{BenchError, Context, Result};
use crate::procfs::{self, ThreadCpu, now};

/// RTP payload type of PCMU.
const PCMU: PayloadType = PayloadType(0);
/// Flush the send queue at least this often while generating a burst.
const MAX_QUEUED: usize = 512;
/// Further behind schedule than this, the sender shifts its schedule
/// instead of bursting to catch up (and counts the stall).
pub const MAX_CATCH_UP: Duration = Duration::from_millis(5);

/// How the streams are sent.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// Packet interval of every stream.
    pub ptime: Duration,
    /// Bytes of G.711 payload per packet (160 for 20 ms at 8 kHz).
    pub payload_len: usize,
    /// Source sockets the streams are spread over.
    pub sockets: usize,
    /// The core the sending thread is pinned to.
    pub core: Option<usize>,
    /// How often the thread wakes to send what is due (a batch per tick).
    pub tick: Duration,
    /// What the path does; [`Impairment::NONE`] sends every packet once,
    /// on time.
    pub impairment: Impairment,
    /// Change each stream's SSRC (and restart its sequence) every this many
    /// packets.
    pub ssrc_change_every: Option<u64>,
    /// Seed of every random choice.
    pub seed: u64,
    /// Ignore pacing and send as fast as possible (calibration).
    pub blast: bool,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            ptime: Duration::from_millis(20),
            payload_len: 160,
            sockets: 2,
            core: Some(0),
            tick: Duration::from_micros(200),
            impairment: Impairment::NONE,
            ssrc_change_every: None,
            seed: 0x006d_6564_6961_6777,
            blast: false,
        }
    }
}

/// The account of one stream (or of all, summed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// RTP packets the stream generated (one per ptime).
    pub generated: u64,
    /// Generated packets the impairment dropped (never sent).
    pub dropped: u64,
    /// Extra copies sent.
    pub duplicated: u64,
    /// Packets sent with the reordering detour (behind later ones).
    pub detoured: u64,
    /// SSRC changes.
    pub ssrc_changes: u64,
    /// Datagrams queued for sending: `generated - dropped + duplicated`
    /// once everything delayed went out.
    pub queued: u64,
}

impl Tally {
    fn add(&mut self, o: &Self) {
        self.generated += o.generated;
        self.dropped += o.dropped;
        self.duplicated += o.duplicated;
        self.detoured += o.detoured;
        self.ssrc_changes += o.ssrc_changes;
        self.queued += o.queued;
    }
}

/// What the sending thread publishes while it runs.
#[derive(Debug, Default)]
pub struct SenderShared {
    stop: AtomicBool,
    /// Datagrams the kernel accepted.
    pub sent: AtomicU64,
    /// Packets due by the schedule so far (paced mode).
    pub due: AtomicU64,
    /// Packets generated so far.
    pub generated: AtomicU64,
    /// Record the lag of each packet from now on (the measurement window).
    pub recording: AtomicBool,
    /// Time the schedule was shifted by stalls, ns, since the start.
    pub stalled_ns: AtomicU64,
    /// Stalls longer than [`MAX_CATCH_UP`] since the start.
    pub stalls: AtomicU64,
    /// The sending thread's id.
    pub tid: AtomicI32,
}

/// The final account of a sender.
#[derive(Debug, Clone, Serialize)]
pub struct SenderReport {
    /// Streams.
    pub streams: usize,
    /// Summed over streams.
    pub totals: Tally,
    /// Per stream, in the order of the destinations.
    #[serde(skip)]
    pub per_stream: Vec<Tally>,
    /// Datagrams the kernel accepted (exact).
    pub sent: u64,
    /// Datagrams the kernel refused (0 in a valid run: then `sent` equals
    /// `totals.queued` and every per-stream figure is exact too).
    pub send_errors: u64,
    /// How late packets left against their schedule during the recording
    /// window, µs: p50, p99, max (paced mode; a stall counts once, for the
    /// packet it delayed).
    pub lag_us: [f64; 3],
    /// Stalls longer than [`MAX_CATCH_UP`], whole run.
    pub stalls: u64,
    /// Their total, ms.
    pub stalled_ms: f64,
    /// The sending thread's CPU time and switches over its whole life.
    pub thread: ThreadCpu,
}

/// A running sender; stop it with [`Sender::stop`].
#[derive(Debug)]
pub struct Sender {
    shared: Arc<SenderShared>,
    thread: Option<JoinHandle<Result<SenderReport>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Delayed {
    at: Nanos,
    order: u64,
    stream: u32,
    seq: u16,
    ts: u32,
    ssrc: u32,
}

struct Stream {
    dest: SocketAddr,
    token: Token,
    seq: u16,
    ts: u32,
    ssrc: u32,
    index: u64,
    since_change: u64,
    path: Option<NetSim>,
    tally: Tally,
}

fn mix(mut x: u64) -> u64 {
    // splitmix64 finaliser: stream seeds and SSRCs from (seed, stream).
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Sender {
    /// Starts sending one stream to each of `dests`, the first packets
    /// 50 ms from now.
    pub fn start(cfg: SenderConfig, dests: Vec<SocketAddr>) -> Result<Self> {
        if dests.is_empty() {
            return Err(BenchError::new("no destinations to send to"));
        }
        let shared = Arc::new(SenderShared::default());
        let sh = shared.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("rtpload-send".into())
            .spawn(move || {
                if let Some(c) = cfg.core {
                    core_affinity::set_for_current(core_affinity::CoreId { id: c });
                }
                sh.tid
                    .store(procfs::current_tid().unwrap_or(0), Ordering::Relaxed);
                let mut run = match SendLoop::new(&cfg, &dests, sh.clone()) {
                    Ok(r) => {
                        let _ = ready_tx.send(Ok(()));
                        r
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return Err(e);
                    }
                };
                run.run(&cfg)
            })
            .context("starting the sending thread")?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(BenchError::new(format!("sender: {e}"))),
            Err(_) => return Err(BenchError::new("sender thread died while starting")),
        }
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// What it publishes.
    pub fn shared(&self) -> &SenderShared {
        &self.shared
    }

    /// The sending thread's CPU so far.
    pub fn thread_cpu(&self) -> Option<ThreadCpu> {
        procfs::thread_cpu(std::process::id(), self.shared.tid.load(Ordering::Relaxed))
    }

    /// Stops sending (delayed packets still in the air are sent first, up
    /// to their due time) and returns the account.
    pub fn stop(mut self) -> Result<SenderReport> {
        self.shared.stop.store(true, Ordering::SeqCst);
        let t = self.thread.take().context("sender already stopped")?;
        t.join()
            .map_err(|_| BenchError::new("the sending thread panicked"))?
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct SendLoop {
    engine: Engine,
    streams: Vec<Stream>,
    delayed: BinaryHeap<Reverse<Delayed>>,
    order: u64,
    payload: Vec<u8>,
    packet: Vec<u8>,
    shared: Arc<SenderShared>,
    lag: Histogram<u64>,
    queued_now: usize,
}

impl SendLoop {
    fn new(cfg: &SenderConfig, dests: &[SocketAddr], shared: Arc<SenderShared>) -> Result<Self> {
        let (mut engine, _) = new_engine(&EngineConfig {
            force_fallback: true,
            send_slots: 16_384,
            send_slot_size: 256,
            ..EngineConfig::default()
        })
        .context("building the send engine")?;
        let sockets = cfg.sockets.max(1);
        for s in 0..sockets {
            let sock = bind_udp("127.0.0.1:0".parse().context("address")?, 64 * 1024)
                .context("binding a source socket")?;
            engine
                .add_socket(Token(s as u64), sock)
                .context("adding a source socket")?;
        }
        let imp = cfg.impairment;
        let impaired = imp != Impairment::NONE;
        let streams = dests
            .iter()
            .enumerate()
            .map(|(i, &dest)| {
                let h = mix(cfg.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                Stream {
                    dest,
                    token: Token((i % sockets) as u64),
                    seq: h as u16,
                    ts: (h >> 16) as u32,
                    ssrc: (h >> 32) as u32 | 1,
                    index: 0,
                    since_change: 0,
                    path: impaired.then(|| NetSim::new(h, imp)),
                    tally: Tally::default(),
                }
            })
            .collect();
        let mut payload = vec![0u8; cfg.payload_len];
        for (i, b) in payload.iter_mut().enumerate() {
            *b = g711::linear_to_ulaw(((i as f32 * 0.35).sin() * 8000.0) as i16);
        }
        Ok(Self {
            engine,
            streams,
            delayed: BinaryHeap::with_capacity(if impaired { 1 << 16 } else { 0 }),
            order: 0,
            packet: vec![0u8; 12 + cfg.payload_len],
            payload,
            shared,
            lag: Histogram::new_with_bounds(1, 60_000_000, 3).context("lag histogram")?,
            queued_now: 0,
        })
    }

    fn run(&mut self, cfg: &SenderConfig) -> Result<SenderReport> {
        let n = self.streams.len() as u64;
        let ptime = cfg.ptime.as_nanos() as u64;
        let mut start = now() + Duration::from_millis(50);
        let due = |start: Nanos, k: u64, i: u64| Nanos(start.0 + k * ptime + i * ptime / n);
        let (mut k, mut i) = (0u64, 0u64);
        let mut generated = 0u64;
        let (mut stalls, mut stalled_ns) = (0u64, 0u64);
        loop {
            let stopping = self.shared.stop.load(Ordering::Relaxed);
            let t = now();
            if !cfg.blast && !stopping {
                let behind = t.saturating_since(due(start, k, i));
                if behind > MAX_CATCH_UP {
                    // Preempted: resume on a shifted schedule, no burst.
                    if self.shared.recording.load(Ordering::Relaxed) {
                        self.lag.saturating_record(behind.as_micros() as u64);
                    }
                    let shift = behind.as_nanos() as u64;
                    start = Nanos(start.0 + shift);
                    stalls += 1;
                    stalled_ns += shift;
                    self.shared.stalls.store(stalls, Ordering::Relaxed);
                    self.shared.stalled_ns.store(stalled_ns, Ordering::Relaxed);
                }
            }
            let due_at = |k: u64, i: u64| due(start, k, i);
            if !stopping {
                if cfg.blast {
                    // As fast as the kernel takes them: a few hundred per
                    // batch, then send.
                    for _ in 0..256 {
                        self.generate(i as usize, t, cfg)?;
                        generated += 1;
                        i += 1;
                        if i == n {
                            i = 0;
                        }
                    }
                } else {
                    let recording = self.shared.recording.load(Ordering::Relaxed);
                    while due_at(k, i) <= t {
                        if recording {
                            self.lag.saturating_record(
                                t.saturating_since(due_at(k, i)).as_micros() as u64,
                            );
                        }
                        self.generate(i as usize, due_at(k, i), cfg)?;
                        generated += 1;
                        i += 1;
                        if i == n {
                            i = 0;
                            k += 1;
                        }
                    }
                    self.shared.due.store(generated, Ordering::Relaxed);
                }
            }
            self.send_delayed(t)?;
            self.flush()?;
            self.shared.generated.store(generated, Ordering::Relaxed);
            self.shared
                .sent
                .store(self.engine.counters().sent, Ordering::Relaxed);
            if stopping && self.delayed.is_empty() {
                break;
            }
            if cfg.blast && !stopping {
                continue;
            }
            // Sleep until the next packet is due, but at least one tick
            // (each wakeup sends a batch); behind schedule, go on at once.
            let next = if stopping {
                self.delayed.peek().map_or(t, |d| d.0.at)
            } else {
                let mut next = due_at(k, i);
                if let Some(d) = self.delayed.peek() {
                    next = next.min(d.0.at);
                }
                next
            };
            let wait = next.saturating_since(now());
            if !wait.is_zero() {
                std::thread::sleep(wait.max(cfg.tick).min(Duration::from_millis(5)));
            }
        }
        let mut totals = Tally::default();
        for s in &self.streams {
            totals.add(&s.tally);
        }
        let c = *self.engine.counters();
        let q = |p: f64| self.lag.value_at_quantile(p) as f64;
        Ok(SenderReport {
            streams: self.streams.len(),
            totals,
            per_stream: self.streams.iter().map(|s| s.tally).collect(),
            sent: c.sent,
            send_errors: c.send_errors,
            lag_us: [q(0.5), q(0.99), self.lag.max() as f64],
            stalls,
            stalled_ms: stalled_ns as f64 / 1e6,
            thread: procfs::current_tid()
                .and_then(|tid| procfs::thread_cpu(std::process::id(), tid))
                .unwrap_or_default(),
        })
    }

    /// Generates stream `i`'s next packet, nominally sent at `at`.
    fn generate(&mut self, i: usize, at: Nanos, cfg: &SenderConfig) -> Result<()> {
        let s = &mut self.streams[i];
        if let Some(every) = cfg.ssrc_change_every
            && s.since_change >= every
        {
            let h = mix(u64::from(s.ssrc) ^ s.index);
            s.ssrc = (h >> 32) as u32 | 1;
            s.seq = h as u16;
            s.ts = (h >> 16) as u32;
            s.since_change = 0;
            s.tally.ssrc_changes += 1;
        }
        let (seq, ts, ssrc) = (s.seq, s.ts, s.ssrc);
        s.seq = s.seq.wrapping_add(1);
        s.ts = s.ts.wrapping_add(cfg.payload_len as u32);
        s.index += 1;
        s.since_change += 1;
        s.tally.generated += 1;
        let Some(path) = s.path.as_mut() else {
            return self.queue(i, seq, ts, ssrc);
        };
        let delivery = path.run(std::iter::once(SentPacket {
            index: s.index - 1,
            ssrc: Ssrc(ssrc),
            seq: Seq(seq),
            ts: RtpTimestamp(ts),
            send_time: at,
            payload_len: cfg.payload_len,
        }));
        s.tally.dropped += delivery.dropped.len() as u64;
        for a in &delivery.arrivals {
            if a.duplicate {
                s.tally.duplicated += 1;
            }
            if a.reordered {
                s.tally.detoured += 1;
            }
            self.order += 1;
            self.delayed.push(Reverse(Delayed {
                at: a.arrival,
                order: self.order,
                stream: i as u32,
                seq,
                ts,
                ssrc,
            }));
        }
        Ok(())
    }

    fn send_delayed(&mut self, t: Nanos) -> Result<()> {
        while let Some(d) = self.delayed.peek().copied()
            && d.0.at <= t
        {
            self.delayed.pop();
            let d = d.0;
            self.queue(d.stream as usize, d.seq, d.ts, d.ssrc)?;
        }
        Ok(())
    }

    fn queue(&mut self, i: usize, seq: u16, ts: u32, ssrc: u32) -> Result<()> {
        let s = &mut self.streams[i];
        let h = RtpHeader {
            marker: false,
            payload_type: PCMU,
            seq: Seq(seq),
            timestamp: RtpTimestamp(ts),
            ssrc: Ssrc(ssrc),
        };
        let len = write_rtp(&h, &self.payload, &mut self.packet)
            .map_err(|e| BenchError::new(format!("writing RTP: {e:?}")))?;
        loop {
            match self.engine.queue_send(s.token, s.dest, &self.packet[..len]) {
                Ok(()) => break,
                Err(SendError::ArenaFull) => {
                    self.engine.flush().context("sendmmsg")?;
                    self.queued_now = 0;
                }
                Err(e) => return Err(BenchError::new(format!("queueing a datagram: {e}"))),
            }
        }
        s.tally.queued += 1;
        self.queued_now += 1;
        if self.queued_now >= MAX_QUEUED {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.engine.flush().context("sendmmsg")?;
        self.queued_now = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mediagw_dataplane::net::bind_udp;

    fn receive_all(socks: &[std::net::UdpSocket], want: u64) -> Vec<Vec<(u16, u32)>> {
        let mut got = vec![Vec::new(); socks.len()];
        let mut total = 0u64;
        let deadline = now() + Duration::from_secs(10);
        let mut buf = [0u8; 2048];
        while total < want && now() < deadline {
            let mut idle = true;
            for (i, s) in socks.iter().enumerate() {
                while let Ok(n) = s.recv(&mut buf) {
                    assert_eq!(n, 172);
                    let seq = u16::from_be_bytes([buf[2], buf[3]]);
                    let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
                    got[i].push((seq, ssrc));
                    total += 1;
                    idle = false;
                }
            }
            if idle {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        got
    }

    #[test]
    fn paced_streams_are_counted_exactly() {
        let socks: Vec<_> = (0..5)
            .map(|_| bind_udp("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap())
            .collect();
        let dests = socks.iter().map(|s| s.local_addr().unwrap()).collect();
        let sender = Sender::start(
            SenderConfig {
                core: None,
                ..SenderConfig::default()
            },
            dests,
        )
        .unwrap();
        // About 10 packets per stream.
        std::thread::sleep(Duration::from_millis(250));
        let r = sender.stop().unwrap();
        assert_eq!(r.send_errors, 0);
        assert_eq!(r.sent, r.totals.queued);
        assert_eq!(r.totals.queued, r.totals.generated);
        assert!(r.totals.generated >= 5 * 8, "{r:?}");
        let got = receive_all(&socks, r.sent);
        for (i, g) in got.iter().enumerate() {
            assert_eq!(g.len() as u64, r.per_stream[i].queued, "stream {i}");
            // In order, consecutive.
            for w in g.windows(2) {
                assert_eq!(w[1].0, w[0].0.wrapping_add(1));
            }
        }
    }

    #[test]
    fn impairments_are_accounted_for() {
        let socks: Vec<_> = (0..4)
            .map(|_| bind_udp("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap())
            .collect();
        let dests: Vec<_> = socks.iter().map(|s| s.local_addr().unwrap()).collect();
        let cfg = SenderConfig {
            core: None,
            ptime: Duration::from_millis(2),
            impairment: Impairment {
                loss: 0.1,
                duplicate: 0.1,
                reorder: 0.1,
                reorder_delay: Duration::from_millis(5),
                jitter: Duration::from_millis(1),
                ..Impairment::NONE
            },
            ssrc_change_every: Some(100),
            ..SenderConfig::default()
        };
        let sender = Sender::start(cfg, dests).unwrap();
        std::thread::sleep(Duration::from_millis(600));
        let r = sender.stop().unwrap();
        let t = r.totals;
        assert_eq!(r.send_errors, 0);
        assert_eq!(r.sent, t.queued);
        assert_eq!(t.queued, t.generated - t.dropped + t.duplicated);
        assert!(t.dropped > 0 && t.duplicated > 0 && t.detoured > 0, "{t:?}");
        assert!(t.ssrc_changes > 0, "{t:?}");
        let got = receive_all(&socks, r.sent);
        let received: usize = got.iter().map(Vec::len).sum();
        assert_eq!(received as u64, r.sent);
        for (i, g) in got.iter().enumerate() {
            let ssrcs: std::collections::BTreeSet<u32> = g.iter().map(|x| x.1).collect();
            assert_eq!(ssrcs.len() as u64, r.per_stream[i].ssrc_changes + 1);
        }
    }
}
