//! The *ceiling* baseline: a bare receiver that only reads datagrams, checks
//! the RTP version and counts sequence numbers, on one pinned thread. It
//! runs the dataplane's own receive engine (io_uring multishot with provided
//! buffers, or epoll + `recvmmsg`) with the daemon's default tick and batch,
//! so the difference between it and the daemon is exactly the per-packet
//! media work (parse, latch, statistics, decode, jitter buffer, timers) and
//! the worker loop around it. No dataplane on this machine can receive for
//! less.
//!
//! Leaves out: everything the daemon does with a packet after counting it.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hdrhistogram::Histogram;
use mediagw_dataplane::net::{EngineConfig, Token, bind_udp, new_engine};
use mediagw_dataplane::units::Nanos;

use crate::error::{BenchError, Context, Result};
use crate::latency;
use crate::procfs::{self, now};

/// Which receive engine the ceiling uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CeilingEngine {
    /// io_uring, multishot RecvMsg, provided buffers.
    IoUring,
    /// epoll + recvmmsg.
    Recvmmsg,
}

/// Counters a receiver publishes while it runs.
#[derive(Debug, Default)]
pub struct RecvShared {
    stop: AtomicBool,
    /// Record latencies from now on (the measurement window).
    pub recording: AtomicBool,
    /// Datagrams received.
    pub packets: AtomicU64,
    /// Datagrams that were not RTP version 2.
    pub not_rtp: AtomicU64,
    /// Sequence gaps seen (a packet other than the last one + 1).
    pub gaps: AtomicU64,
    /// Datagrams the kernel dropped on full socket buffers.
    pub kernel_drops: AtomicU64,
    /// Kernel waits of the engine.
    pub waits: AtomicU64,
    /// The receiving thread's id.
    pub tid: AtomicI32,
    hist: Mutex<Option<Histogram<u64>>>,
}

impl RecvShared {
    /// Asks the receiving thread to stop.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was asked.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Hands the recorded latency histogram over (once, after the thread
    /// ended).
    pub fn set_histogram(&self, h: Histogram<u64>) {
        if let Ok(mut slot) = self.hist.lock() {
            *slot = Some(h);
        }
    }

    /// Takes the recorded latency histogram.
    pub fn take_histogram(&self) -> Option<Histogram<u64>> {
        self.hist.lock().ok().and_then(|mut h| h.take())
    }
}

/// A running baseline receiver.
#[derive(Debug)]
pub struct Receiver {
    /// What it publishes.
    pub shared: Arc<RecvShared>,
    /// The addresses of its sockets, one per stream.
    pub addrs: Vec<SocketAddr>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Receiver {
    /// Stops the thread and returns the latency histogram of the window.
    pub fn stop(mut self) -> Result<Histogram<u64>> {
        self.shared.request_stop();
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| BenchError::new("a receiver thread panicked"))??;
        }
        Ok(self
            .shared
            .take_histogram()
            .unwrap_or_else(latency::histogram))
    }

    /// Wraps a started thread.
    pub fn new(
        shared: Arc<RecvShared>,
        addrs: Vec<SocketAddr>,
        thread: JoinHandle<Result<()>>,
    ) -> Self {
        Self {
            shared,
            addrs,
            thread: Some(thread),
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.request_stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds `n` loopback sockets the way the daemon does (`bind_udp`, same
/// receive buffer).
pub fn bind_sockets(n: usize, rcvbuf: usize) -> Result<Vec<UdpSocket>> {
    let addr: SocketAddr = "127.0.0.1:0".parse().context("address")?;
    (0..n)
        .map(|_| bind_udp(addr, rcvbuf).context("binding a receive socket"))
        .collect()
}

/// Starts the ceiling receiver on `core` with `n` fresh sockets.
pub fn start(
    kind: CeilingEngine,
    n: usize,
    rcvbuf: usize,
    core: Option<usize>,
) -> Result<Receiver> {
    let socks = bind_sockets(n, rcvbuf)?;
    let addrs = socks
        .iter()
        .map(UdpSocket::local_addr)
        .collect::<std::io::Result<Vec<_>>>()?;
    let shared = Arc::new(RecvShared::default());
    let sh = shared.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::result::Result<(), String>>();
    let thread = std::thread::Builder::new()
        .name("rtpload-ceiling".into())
        .spawn(move || {
            if let Some(c) = core {
                core_affinity::set_for_current(core_affinity::CoreId { id: c });
            }
            sh.tid
                .store(procfs::current_tid().unwrap_or(0), Ordering::Relaxed);
            let cfg = EngineConfig {
                force_fallback: kind == CeilingEngine::Recvmmsg,
                ..EngineConfig::default()
            };
            let mut engine = match new_engine(&cfg) {
                Ok((e, reason)) => {
                    if kind == CeilingEngine::IoUring && reason.is_some() {
                        let msg = format!(
                            "io_uring unavailable: {}",
                            reason.map(|r| r.to_string()).unwrap_or_default()
                        );
                        let _ = ready_tx.send(Err(msg.clone()));
                        return Err(BenchError::new(msg));
                    }
                    e
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return Err(e.into());
                }
            };
            for (i, s) in socks.into_iter().enumerate() {
                if let Err(e) = engine.add_socket(Token(i as u64), s) {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return Err(e.into());
                }
            }
            let _ = ready_tx.send(Ok(()));
            let mut last_seq: Vec<Option<u16>> = vec![None; n];
            let mut arrivals: Vec<Nanos> = Vec::with_capacity(1 << 16);
            let mut hist = latency::histogram();
            let (mut packets, mut not_rtp, mut gaps) = (0u64, 0u64, 0u64);
            let tick = EngineConfig::default().tick;
            while !sh.stopping() {
                let recording = sh.recording.load(Ordering::Relaxed);
                arrivals.clear();
                engine
                    .poll(tick, |token, _, at, p| {
                        packets += 1;
                        if p.len() < 12 || p[0] >> 6 != 2 {
                            not_rtp += 1;
                            return;
                        }
                        let seq = u16::from_be_bytes([p[2], p[3]]);
                        if let Some(last) = last_seq.get_mut(token.0 as usize) {
                            if last.is_some_and(|l| l.wrapping_add(1) != seq) {
                                gaps += 1;
                            }
                            *last = Some(seq);
                        }
                        if recording && arrivals.len() < arrivals.capacity() {
                            arrivals.push(at);
                        }
                    })
                    .context("ceiling poll")?;
                if !arrivals.is_empty() {
                    let done = now();
                    for a in &arrivals {
                        hist.saturating_record(done.0.saturating_sub(a.0));
                    }
                }
                let c = engine.counters();
                sh.packets.store(packets, Ordering::Relaxed);
                sh.not_rtp.store(not_rtp, Ordering::Relaxed);
                sh.gaps.store(gaps, Ordering::Relaxed);
                sh.kernel_drops.store(c.kernel_drops, Ordering::Relaxed);
                sh.waits.store(c.waits, Ordering::Relaxed);
            }
            sh.set_histogram(hist);
            Ok(())
        })
        .context("starting the ceiling thread")?;
    match ready_rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(())) => Ok(Receiver::new(shared, addrs, thread)),
        Ok(Err(e)) => Err(BenchError::new(format!("ceiling receiver: {e}"))),
        Err(_) => Err(BenchError::new("ceiling receiver did not start")),
    }
}
