//! What the engine's wait strategy costs: the receiver thread's CPU time per
//! datagram with lingering off (`batch = 1`, a wakeup per completion) and on
//! (the default 1 ms tick, batch 32), for both engines. A sender spreads
//! 172-byte datagrams evenly (not in bursts) over one second.
//!
//! This was the ignored `measure_linger` test of
//! `dataplane/tests/net_engine.rs`; performance is shown by the benchmark
//! harness, never by timed tests.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use mediagw_dataplane::net::{EngineConfig, EngineKind, Token, bind_udp, new_engine};
use serde::Serialize;

use crate::error::{BenchError, Context, Result};
use crate::guard::check_stop;
use crate::procfs::{self, now};

/// One measured case.
#[derive(Debug, Clone, Serialize)]
pub struct LingerRow {
    /// `io_uring` or `epoll`.
    pub engine: &'static str,
    /// Receiving sockets.
    pub sockets: usize,
    /// Datagrams per second offered.
    pub rate: u64,
    /// `per-completion` or `linger 1ms/32`.
    pub mode: &'static str,
    /// Datagrams received.
    pub datagrams: u64,
    /// Engine kernel waits.
    pub waits: u64,
    /// Polls that delivered something.
    pub batches: u64,
    /// Receiver thread CPU per datagram, ns.
    pub cpu_ns_per_datagram: f64,
    /// Voluntary context switches per datagram.
    pub wakeups_per_datagram: f64,
}

/// Runs every case: (3 sockets, 5,000/s), (3, 50,000/s), (400, 20,000/s),
/// each with lingering off and on, on both engines.
pub fn measure(sender_core: usize, receiver_core: usize) -> Result<Vec<LingerRow>> {
    // On a thread of its own: the cases pin the receiving thread.
    std::thread::Builder::new()
        .name("rtpload-linger".into())
        .spawn(move || cases(sender_core, receiver_core))
        .context("starting the linger thread")?
        .join()
        .map_err(|_| BenchError::new("the linger thread panicked"))?
}

fn cases(sender_core: usize, receiver_core: usize) -> Result<Vec<LingerRow>> {
    let mut rows = Vec::new();
    for (sockets, rate) in [(3usize, 5_000u64), (3, 50_000), (400, 20_000)] {
        for (mode, batch) in [("per-completion", 1u32), ("linger 1ms/32", 32)] {
            for kind in [EngineKind::IoUring, EngineKind::Fallback] {
                check_stop()?;
                rows.push(one(
                    kind,
                    sockets,
                    rate,
                    mode,
                    batch,
                    sender_core,
                    receiver_core,
                )?);
            }
        }
    }
    Ok(rows)
}

fn one(
    kind: EngineKind,
    sockets: usize,
    rate: u64,
    mode: &'static str,
    batch: u32,
    sender_core: usize,
    receiver_core: usize,
) -> Result<LingerRow> {
    core_affinity::set_for_current(core_affinity::CoreId { id: receiver_core });
    let cfg = EngineConfig {
        force_fallback: kind == EngineKind::Fallback,
        batch,
        ..EngineConfig::default()
    };
    let (mut engine, reason) = new_engine(&cfg).context("engine")?;
    if engine.kind() != kind {
        return Err(BenchError::new(format!(
            "io_uring unavailable: {}",
            reason.map(|r| r.to_string()).unwrap_or_default()
        )));
    }
    let loopback: SocketAddr = "127.0.0.1:0".parse().context("address")?;
    let mut dests = Vec::with_capacity(sockets);
    for i in 0..sockets {
        let s = bind_udp(loopback, 1 << 20).context("bind")?;
        dests.push(s.local_addr()?);
        engine
            .add_socket(Token(i as u64), s)
            .context("add socket")?;
    }
    let total = rate; // one second of traffic
    let tx = std::thread::spawn(move || -> std::io::Result<()> {
        core_affinity::set_for_current(core_affinity::CoreId { id: sender_core });
        let s = UdpSocket::bind(loopback)?;
        let gap = 1_000_000_000 / rate;
        let t0 = now().0;
        for i in 0..total {
            while now().0 < t0 + i * gap {
                std::hint::spin_loop();
            }
            s.send_to(&[0x80u8; 172], dests[i as usize % dests.len()])?;
        }
        Ok(())
    });
    let tid = procfs::current_tid().unwrap_or(0);
    let me = std::process::id();
    let before = procfs::thread_cpu(me, tid).unwrap_or_default();
    let mut n = 0u64;
    let deadline = now() + Duration::from_secs(5);
    while n < total && now() < deadline {
        n += engine
            .poll(Duration::from_millis(20), |_, _, _, _| {})
            .context("poll")?
            .datagrams as u64;
    }
    let after = procfs::thread_cpu(me, tid).unwrap_or_default();
    tx.join()
        .map_err(|_| BenchError::new("linger sender panicked"))?
        .context("linger sender")?;
    let c = engine.counters();
    let d = after.since(&before);
    Ok(LingerRow {
        engine: match kind {
            EngineKind::IoUring => "io_uring",
            EngineKind::Fallback => "epoll",
        },
        sockets,
        rate,
        mode,
        datagrams: n,
        waits: c.waits,
        batches: c.batches,
        cpu_ns_per_datagram: d.cpu_ns as f64 / n.max(1) as f64,
        wakeups_per_datagram: d.voluntary as f64 / n.max(1) as f64,
    })
}
