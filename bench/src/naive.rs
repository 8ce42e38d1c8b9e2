//! The *naive* baseline: what a user would otherwise write with tokio. One
//! task per socket awaiting each datagram, the same RTP parse, RFC 3550
//! statistics and G.711 decode as the daemon, each decoded packet pushed as
//! a fresh `Vec<i16>` into a `Mutex<VecDeque>` per stream, which a consumer
//! thread empties every 20 ms (standing in for the tap).
//!
//! One current-thread runtime on one pinned thread, so its CPU per packet
//! compares with the daemon's one worker. The only departure from the
//! plainest code: each datagram is read with `recvmsg` instead of
//! `recv_from`, to get the kernel receive timestamp the latency figure
//! needs (same syscall count, a few nanoseconds of control-message parsing).
//!
//! Leaves out: a jitter buffer, concealment, latching (a naive receiver
//! rarely has them; they would only add to its cost).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mediagw_dataplane::rtp::RtpPacket;
use mediagw_dataplane::stats::{ReceiveStats, StatsConfig};
use mediagw_dataplane::units::{ClockRate, Nanos};
use mediagw_shared::codec::Codec;
use tokio::io::Interest;

use crate::ceiling::{self, Receiver, RecvShared};
use crate::error::{BenchError, Context, Result};
use crate::latency;
use crate::procfs::{self, now};

// The control message is read as little-endian u64 words below.
const _: () = assert!(cfg!(target_endian = "little") && size_of::<libc::cmsghdr>() == 16);

/// A stream's decoded packets, waiting for the consumer.
type Queue = Arc<Mutex<VecDeque<Vec<i16>>>>;

/// Starts the naive receiver on `core` with `n` fresh sockets.
pub fn start(n: usize, rcvbuf: usize, core: Option<usize>) -> Result<Receiver> {
    let socks = ceiling::bind_sockets(n, rcvbuf)?;
    let addrs = socks
        .iter()
        .map(std::net::UdpSocket::local_addr)
        .collect::<io::Result<Vec<_>>>()?;
    for s in &socks {
        enable_timestamps(s).context("SO_TIMESTAMPNS")?;
    }
    let queues: Vec<Queue> = (0..n).map(|_| Queue::default()).collect();
    let shared = Arc::new(RecvShared::default());
    let consumed = Arc::new(AtomicU64::new(0));
    let consumer = {
        let (queues, sh, consumed) = (queues.clone(), shared.clone(), consumed.clone());
        std::thread::Builder::new()
            .name("rtpload-naive-consumer".into())
            .spawn(move || {
                while !sh.stopping() {
                    std::thread::sleep(Duration::from_millis(20));
                    let mut frames = 0;
                    for q in &queues {
                        if let Ok(mut q) = q.lock() {
                            frames += q.len() as u64;
                            q.clear();
                        }
                    }
                    consumed.fetch_add(frames, Ordering::Relaxed);
                }
            })
            .context("starting the naive consumer")?
    };
    let sh = shared.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::result::Result<(), String>>();
    let thread = std::thread::Builder::new()
        .name("rtpload-naive".into())
        .spawn(move || {
            if let Some(c) = core {
                core_affinity::set_for_current(core_affinity::CoreId { id: c });
            }
            sh.tid
                .store(procfs::current_tid().unwrap_or(0), Ordering::Relaxed);
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return Err(e.into());
                }
            };
            let local = tokio::task::LocalSet::new();
            let hist = Rc::new(RefCell::new(latency::histogram()));
            let offset = Rc::new(Cell::new(realtime_offset()));
            let result = local.block_on(&rt, async {
                let mut tasks = Vec::with_capacity(n);
                for (sock, queue) in socks.into_iter().zip(queues) {
                    let sock = tokio::net::UdpSocket::from_std(sock)?;
                    let (sh, hist, offset) = (sh.clone(), hist.clone(), offset.clone());
                    tasks.push(tokio::task::spawn_local(async move {
                        stream_task(sock, queue, sh, hist, offset).await
                    }));
                }
                let _ = ready_tx.send(Ok(()));
                // Refresh the realtime-to-monotonic offset, and watch for the
                // stop.
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                while !sh.stopping() {
                    tick.tick().await;
                    offset.set(realtime_offset());
                }
                for t in tasks {
                    t.abort();
                }
                io::Result::Ok(())
            });
            sh.set_histogram(hist.replace(latency::histogram()));
            result.map_err(BenchError::from)
        })
        .context("starting the naive thread")?;
    let started = ready_rx.recv_timeout(Duration::from_secs(60));
    let recv = Receiver::new(shared.clone(), addrs, thread);
    match started {
        Ok(Ok(())) => {
            // The consumer ends with the stop flag; detach it.
            drop(consumer);
            Ok(recv)
        }
        Ok(Err(e)) => Err(BenchError::new(format!("naive receiver: {e}"))),
        Err(_) => Err(BenchError::new("naive receiver did not start")),
    }
}

async fn stream_task(
    sock: tokio::net::UdpSocket,
    queue: Queue,
    shared: Arc<RecvShared>,
    hist: Rc<RefCell<hdrhistogram::Histogram<u64>>>,
    offset: Rc<Cell<i64>>,
) -> io::Result<()> {
    let mut stats = ReceiveStats::new(StatsConfig::new(ClockRate::NARROWBAND));
    let mut buf = vec![0u8; 2048];
    let mut last_seq: Option<u16> = None;
    loop {
        let (n, stamp) = sock
            .async_io(Interest::READABLE, || recv_with_timestamp(&sock, &mut buf))
            .await?;
        let t = now();
        shared.packets.fetch_add(1, Ordering::Relaxed);
        let Ok(pkt) = RtpPacket::parse(&buf[..n]) else {
            shared.not_rtp.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if last_seq.is_some_and(|l| l.wrapping_add(1) != pkt.seq().0) {
            shared.gaps.fetch_add(1, Ordering::Relaxed);
        }
        last_seq = Some(pkt.seq().0);
        stats.handle_packet(
            pkt.ssrc(),
            pkt.seq(),
            pkt.timestamp(),
            pkt.payload().len(),
            t,
        );
        let mut pcm = vec![0i16; pkt.payload().len()];
        let k = Codec::Pcmu.decode(pkt.payload(), &mut pcm);
        pcm.truncate(k);
        if let Ok(mut q) = queue.lock() {
            q.push_back(pcm);
        }
        if shared.recording.load(Ordering::Relaxed)
            && let Some(real) = stamp
        {
            let arrival = Nanos(u64::try_from(real - offset.get()).unwrap_or(0));
            hist.borrow_mut()
                .saturating_record(now().0.saturating_sub(arrival.0));
        }
    }
}

/// CLOCK_REALTIME minus CLOCK_MONOTONIC, ns.
fn realtime_offset() -> i64 {
    #[allow(clippy::disallowed_methods)] // a driver: converts kernel timestamps
    let real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as i64;
    real - now().0 as i64
}

fn enable_timestamps(sock: &std::net::UdpSocket) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid fd, a pointer to an initialised c_int and its size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One `recvmsg`: the payload into `buf`, the SO_TIMESTAMPNS stamp (realtime
/// ns) if the kernel attached one.
fn recv_with_timestamp(
    sock: &tokio::net::UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, Option<i64>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for one cmsghdr (16) and a timespec (16), 8-aligned.
    let mut control = [0u64; 8];
    // SAFETY: all-zero is a valid msghdr (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control) as _;
    // SAFETY: `msg` points at `iov` (over `buf`) and `control`, all valid
    // and writable for the call; no name buffer is given.
    let r = unsafe { libc::recvmsg(sock.as_raw_fd(), &raw mut msg, libc::MSG_DONTWAIT) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let used = (msg.msg_controllen as usize).min(size_of_val(&control));
    let words = &control[..used / 8];
    // cmsghdr on 64-bit Linux: len (u64), level (i32), type (i32), then the
    // data. One message at most is expected here.
    let mut stamp = None;
    if words.len() >= 4 {
        let level = (words[1] & 0xffff_ffff) as i32;
        let kind = (words[1] >> 32) as i32;
        if level == libc::SOL_SOCKET && kind == libc::SCM_TIMESTAMPNS {
            let secs = words[2] as i64;
            let nanos = words[3] as i64;
            stamp = Some(secs * 1_000_000_000 + nanos);
        }
    }
    Ok((r as usize, stamp))
}
