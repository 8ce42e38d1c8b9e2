//! The IO engines on real loopback UDP: both the io_uring engine and the
//! epoll fallback run every test. Counts and times are bounded: each test
//! finishes in a few seconds.
//!
//! Where io_uring cannot be set up (old kernel, seccomp), the io_uring half
//! of each test prints why and is skipped; the fallback half still runs.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use mediagw_dataplane::net::{
    Engine, EngineConfig, EngineKind, FallbackCause, SendError, Token, bind_udp, monotonic_now,
    new_engine,
};
use mediagw_dataplane::units::Nanos;

const RCVBUF: usize = 4 << 20;

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Builds the engine of `kind`, or None (with a message) when io_uring is
/// not available here.
fn make(kind: EngineKind, cfg: EngineConfig) -> Option<Engine> {
    let cfg = EngineConfig {
        force_fallback: kind == EngineKind::Fallback,
        ..cfg
    };
    let (engine, reason) = new_engine(&cfg).expect("engine");
    if engine.kind() != kind {
        eprintln!(
            "SKIP io_uring engine: {}",
            reason.map(|r| r.to_string()).unwrap_or_default()
        );
        return None;
    }
    Some(engine)
}

fn for_both(cfg: EngineConfig, mut test: impl FnMut(EngineKind, Engine)) {
    for kind in [EngineKind::IoUring, EngineKind::Fallback] {
        if let Some(e) = make(kind, cfg.clone()) {
            test(kind, e);
        }
    }
}

/// Deterministic test payload: the sequence number, then a byte pattern.
fn fill_payload(seq: u32, len: usize, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend((4..len).map(|i| (seq as usize).wrapping_mul(31).wrapping_add(i) as u8));
}

fn size_of_seq(seq: u32) -> usize {
    12 + (seq as usize * 7919) % (1400 - 12 + 1)
}

fn seq_of(p: &[u8]) -> u32 {
    u32::from_le_bytes(p[..4].try_into().unwrap())
}

/// Polls until `want` datagrams arrived or `limit` passed; returns them.
fn collect(
    engine: &mut Engine,
    want: usize,
    limit: Duration,
) -> Vec<(Token, SocketAddr, Nanos, Vec<u8>)> {
    let mut got = Vec::new();
    let deadline = monotonic_now() + limit;
    while got.len() < want && monotonic_now() < deadline {
        engine
            .poll(Duration::from_millis(10), |t, from, at, p| {
                got.push((t, from, at, p.to_vec()))
            })
            .unwrap();
    }
    got
}

#[test]
fn receives_10k_datagrams_in_batches_with_kernel_timestamps() {
    const N: u32 = 10_000;
    const BURST: u32 = 100;
    for_both(EngineConfig::default(), |kind, mut engine| {
        let socks: Vec<UdpSocket> = (0..3)
            .map(|_| bind_udp(loopback(), RCVBUF).unwrap())
            .collect();
        let dests: Vec<SocketAddr> = socks.iter().map(|s| s.local_addr().unwrap()).collect();
        for (i, s) in socks.into_iter().enumerate() {
            engine.add_socket(Token(100 + i as u64), s).unwrap();
        }
        let senders: Vec<UdpSocket> = (0..3)
            .map(|_| UdpSocket::bind(loopback()).unwrap())
            .collect();
        let sources: Vec<SocketAddr> = senders.iter().map(|s| s.local_addr().unwrap()).collect();

        let start = monotonic_now();
        let tx = thread::spawn(move || {
            let mut buf = Vec::with_capacity(1500);
            for seq in 0..N {
                fill_payload(seq, size_of_seq(seq), &mut buf);
                let s = &senders[(seq / 3 % 3) as usize];
                s.send_to(&buf, dests[(seq % 3) as usize]).unwrap();
                if seq % BURST == BURST - 1 {
                    thread::sleep(Duration::from_millis(2));
                }
            }
        });

        let mut seen = vec![false; N as usize];
        let mut last_at = [Nanos(0); 3];
        let mut received = 0usize;
        let mut expect = Vec::with_capacity(1500);
        let deadline = monotonic_now() + Duration::from_secs(20);
        while received < N as usize && monotonic_now() < deadline {
            engine
                .poll(Duration::from_millis(20), |token, from, at, payload| {
                    let seq = seq_of(payload);
                    let sock = (seq % 3) as usize;
                    assert_eq!(token, Token(100 + sock as u64), "seq {seq}");
                    assert_eq!(from, sources[(seq / 3 % 3) as usize], "seq {seq}");
                    fill_payload(seq, size_of_seq(seq), &mut expect);
                    assert_eq!(payload, &expect[..], "seq {seq}");
                    assert!(!seen[seq as usize], "duplicate {seq}");
                    seen[seq as usize] = true;
                    // Kernel receive time, on the monotonic clock.
                    let now = monotonic_now();
                    assert!(
                        at >= start && at <= now,
                        "seq {seq}: {at:?} not in [{start:?}, {now:?}]"
                    );
                    assert!(
                        now.saturating_since(at) < Duration::from_secs(2),
                        "seq {seq}: stale {at:?}"
                    );
                    assert!(at >= last_at[sock], "per-socket arrival order");
                    last_at[sock] = at;
                    received += 1;
                })
                .unwrap();
        }
        tx.join().unwrap();
        let c = *engine.counters();
        eprintln!("{kind:?}: {c:?}");
        assert_eq!(received, N as usize, "{kind:?} lost datagrams: {c:?}");
        assert_eq!(c.datagrams, u64::from(N));
        assert_eq!(c.no_timestamp, 0, "every datagram carries SCM_TIMESTAMPNS");
        assert_eq!(
            (c.truncated, c.stale, c.recv_errors, c.kernel_drops),
            (0, 0, 0, 0)
        );
        // Batching: a wakeup serves a burst, not a packet.
        assert!(
            c.batches * 10 <= c.datagrams,
            "{kind:?}: batches {} for {} datagrams",
            c.batches,
            c.datagrams
        );
        assert!(
            c.waits * 5 <= c.datagrams,
            "{kind:?}: waits {} for {} datagrams",
            c.waits,
            c.datagrams
        );
        assert!(c.waits <= 2 * c.polls);
    });
}

#[test]
fn waker_interrupts_a_long_poll_promptly() {
    for_both(EngineConfig::default(), |kind, mut engine| {
        engine
            .add_socket(Token(1), bind_udp(loopback(), 0).unwrap())
            .unwrap();
        // A wakeup before the poll is not lost.
        engine.waker().wake();
        let t0 = monotonic_now();
        let out = engine
            .poll(Duration::from_secs(5), |_, _, _, _| {})
            .unwrap();
        assert!(out.woken, "{kind:?}");
        assert!(monotonic_now().saturating_since(t0) < Duration::from_millis(50));

        let waker = engine.waker();
        let woke_at = Arc::new(AtomicU64::new(0));
        let w = woke_at.clone();
        let t = thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            w.store(monotonic_now().0, Ordering::SeqCst);
            waker.wake();
        });
        let t0 = monotonic_now();
        let out = engine
            .poll(Duration::from_secs(5), |_, _, _, _| {})
            .unwrap();
        let back = monotonic_now();
        t.join().unwrap();
        let woke = Nanos(woke_at.load(Ordering::SeqCst));
        assert!(out.woken, "{kind:?}: poll returned without the wakeup");
        assert!(woke.0 != 0 && back >= woke);
        let latency = back.saturating_since(woke);
        eprintln!("{kind:?}: wake latency {latency:?}");
        assert!(latency < Duration::from_millis(50), "{kind:?}: {latency:?}");
        assert!(back.saturating_since(t0) < Duration::from_secs(1));
        assert_eq!(engine.counters().woken, 2);
    });
}

#[test]
fn poll_timeouts_are_honoured() {
    for_both(EngineConfig::default(), |kind, mut engine| {
        engine
            .add_socket(Token(1), bind_udp(loopback(), 0).unwrap())
            .unwrap();
        let t0 = monotonic_now();
        let out = engine.poll(Duration::ZERO, |_, _, _, _| {}).unwrap();
        assert_eq!(out.datagrams, 0);
        assert!(
            monotonic_now().saturating_since(t0) < Duration::from_millis(20),
            "{kind:?}"
        );
        let t0 = monotonic_now();
        let out = engine
            .poll(Duration::from_millis(30), |_, _, _, _| {})
            .unwrap();
        let took = monotonic_now().saturating_since(t0);
        assert_eq!((out.datagrams, out.woken), (0, false));
        assert!(
            took >= Duration::from_millis(25) && took < Duration::from_millis(500),
            "{kind:?}: {took:?}"
        );
    });
}

#[test]
fn removed_socket_never_delivers_and_its_token_can_be_reused() {
    for_both(EngineConfig::default(), |kind, mut engine| {
        let tx = UdpSocket::bind(loopback()).unwrap();
        let a = bind_udp(loopback(), RCVBUF).unwrap();
        let a_addr = a.local_addr().unwrap();
        engine.add_socket(Token(1), a).unwrap();
        // Get A's receive going, then leave datagrams pending for it.
        tx.send_to(b"A-first", a_addr).unwrap();
        let got = collect(&mut engine, 1, Duration::from_secs(2));
        assert_eq!(got.len(), 1);
        for i in 0..20u8 {
            tx.send_to(&[b'A', i], a_addr).unwrap();
        }
        assert!(engine.remove_socket(Token(1)));
        assert!(!engine.remove_socket(Token(1)));
        assert_eq!(engine.socket_count(), 0);

        let b = bind_udp(loopback(), RCVBUF).unwrap();
        let b_addr = b.local_addr().unwrap();
        engine.add_socket(Token(1), b).unwrap();
        assert!(
            engine
                .add_socket(Token(1), bind_udp(loopback(), 0).unwrap())
                .is_err(),
            "duplicate token"
        );
        for i in 0..20u8 {
            tx.send_to(&[b'B', i], b_addr).unwrap();
        }
        let mut got = collect(&mut engine, 20, Duration::from_secs(3));
        // A few more polls: nothing late may show up.
        for _ in 0..5 {
            engine
                .poll(Duration::from_millis(5), |t, f, at, p| {
                    got.push((t, f, at, p.to_vec()))
                })
                .unwrap();
        }
        assert_eq!(
            got.len(),
            20,
            "{kind:?}: {:?}",
            got.iter().map(|g| &g.3).collect::<Vec<_>>()
        );
        for (i, (t, _, _, p)) in got.iter().enumerate() {
            assert_eq!(
                (*t, p.as_slice()),
                (Token(1), &[b'B', i as u8][..]),
                "{kind:?}"
            );
        }
        // A's socket is closed: its port can be bound again.
        assert!(
            bind_udp(a_addr, 0).is_ok(),
            "{kind:?}: removed socket still open"
        );
        eprintln!("{kind:?}: {:?}", engine.counters());
    });
}

#[test]
fn rearms_after_buffer_exhaustion_and_loses_nothing() {
    const N: u32 = 2_000;
    // Fewer buffers than the kernel's multishot retry batch (32), so that one
    // round of receive work empties the ring.
    let cfg = EngineConfig {
        buf_count: 16,
        ..EngineConfig::default()
    };
    for_both(cfg, |kind, mut engine| {
        let s = bind_udp(loopback(), RCVBUF).unwrap();
        let dest = s.local_addr().unwrap();
        engine.add_socket(Token(9), s).unwrap();
        // Arm the receive, then burst far more than the 16 buffers.
        engine.poll(Duration::ZERO, |_, _, _, _| {}).unwrap();
        let tx = UdpSocket::bind(loopback()).unwrap();
        let mut buf = Vec::new();
        for seq in 0..N {
            fill_payload(seq, 160, &mut buf);
            tx.send_to(&buf, dest).unwrap();
        }
        // A slow consumer.
        let mut next = 0u32;
        let deadline = monotonic_now() + Duration::from_secs(10);
        let mut polls_after_last = 0;
        while polls_after_last < 3 && monotonic_now() < deadline {
            let out = engine
                .poll(Duration::from_millis(5), |_, _, _, p| {
                    assert_eq!(seq_of(p), next, "in order, nothing lost");
                    next += 1;
                    if next.is_multiple_of(64) {
                        thread::sleep(Duration::from_micros(200));
                    }
                })
                .unwrap();
            if next == N && out.datagrams == 0 {
                polls_after_last += 1;
            }
        }
        let c = *engine.counters();
        eprintln!("{kind:?}: {c:?}");
        assert_eq!(
            u64::from(next) + c.kernel_drops,
            u64::from(N),
            "{kind:?}: {c:?}"
        );
        assert_eq!(c.kernel_drops, 0, "4 MiB socket buffer holds the burst");
        if kind == EngineKind::IoUring {
            assert!(c.enobufs >= 1, "the 16-buffer ring ran dry: {c:?}");
            assert!(c.rearms >= c.enobufs, "every ended receive re-armed: {c:?}");
        }
    });
}

#[test]
fn queued_sends_arrive_intact_and_a_full_arena_says_so() {
    const N: u32 = 1_000;
    let cfg = EngineConfig {
        send_slots: N,
        ..EngineConfig::default()
    };
    for_both(cfg, |kind, mut engine| {
        let s = bind_udp(loopback(), 0).unwrap();
        let from = s.local_addr().unwrap();
        engine.add_socket(Token(5), s).unwrap();
        let rx = bind_udp(loopback(), RCVBUF).unwrap();
        rx.set_nonblocking(false).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let dest = rx.local_addr().unwrap();

        assert_eq!(
            engine.queue_send(Token(6), dest, b"x"),
            Err(SendError::UnknownToken)
        );
        assert_eq!(
            engine.queue_send(Token(5), "[::1]:9".parse().unwrap(), b"x"),
            Err(SendError::AddressFamily)
        );
        assert_eq!(
            engine.queue_send(Token(5), dest, &[0; 4000]),
            Err(SendError::TooLarge)
        );

        let mut buf = Vec::new();
        for seq in 0..N {
            fill_payload(seq, size_of_seq(seq), &mut buf);
            engine.queue_send(Token(5), dest, &buf).unwrap();
        }
        assert_eq!(
            engine.queue_send(Token(5), dest, b"x"),
            Err(SendError::ArenaFull)
        );
        assert_eq!(engine.flush().unwrap(), N as usize);
        assert_eq!(engine.flush().unwrap(), 0);

        let mut b = [0u8; 2048];
        let mut expect = Vec::new();
        for seq in 0..N {
            let (n, src) = rx
                .recv_from(&mut b)
                .unwrap_or_else(|e| panic!("{kind:?}: datagram {seq}: {e}"));
            assert_eq!(src, from);
            fill_payload(seq, size_of_seq(seq), &mut expect);
            assert_eq!(&b[..n], &expect[..], "{kind:?}: datagram {seq}");
        }
        // io_uring: send completions are reaped by poll; then slots are free.
        for _ in 0..3 {
            engine
                .poll(Duration::from_millis(1), |_, _, _, _| {})
                .unwrap();
        }
        let c = *engine.counters();
        assert_eq!(
            (c.sent, c.send_errors),
            (u64::from(N), 0),
            "{kind:?}: {c:?}"
        );
        engine.queue_send(Token(5), dest, b"again").unwrap();
        engine.flush().unwrap();
        assert_eq!(rx.recv(&mut b).unwrap(), 5);

        // A socket removed between queue and flush: counted, not sent.
        engine.queue_send(Token(5), dest, b"late").unwrap();
        assert!(engine.remove_socket(Token(5)));
        assert_eq!(engine.flush().unwrap(), 0);
        assert_eq!(engine.counters().send_errors, 1);
    });
}

#[test]
fn ipv6_loopback() {
    let any6: SocketAddr = "[::1]:0".parse().unwrap();
    let probe = match bind_udp(any6, 0) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("SKIP ipv6_loopback: cannot bind [::1]: {e}");
            return;
        }
    };
    drop(probe);
    for_both(EngineConfig::default(), |kind, mut engine| {
        let s = bind_udp(any6, RCVBUF).unwrap();
        let dest = s.local_addr().unwrap();
        engine.add_socket(Token(6), s).unwrap();
        let tx = UdpSocket::bind(any6).unwrap();
        tx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let peer = tx.local_addr().unwrap();
        for i in 0..100u8 {
            tx.send_to(&[6, i], dest).unwrap();
        }
        let got = collect(&mut engine, 100, Duration::from_secs(3));
        assert_eq!(got.len(), 100, "{kind:?}");
        for (i, (t, from, _, p)) in got.iter().enumerate() {
            assert_eq!(
                (*t, *from, p.as_slice()),
                (Token(6), peer, &[6, i as u8][..]),
                "{kind:?}"
            );
        }
        assert_eq!(engine.counters().no_timestamp, 0);
        // And back.
        assert_eq!(
            engine.queue_send(Token(6), "127.0.0.1:9".parse().unwrap(), b"x"),
            Err(SendError::AddressFamily)
        );
        engine.queue_send(Token(6), peer, b"pong6").unwrap();
        engine.flush().unwrap();
        let mut b = [0u8; 16];
        let (n, src) = tx.recv_from(&mut b).unwrap();
        assert_eq!((&b[..n], src), (&b"pong6"[..], dest));
    });
}

#[test]
fn datagram_larger_than_a_buffer_is_counted_as_truncated_not_delivered() {
    for_both(EngineConfig::default(), |kind, mut engine| {
        let max = engine.max_payload();
        let s = bind_udp(loopback(), RCVBUF).unwrap();
        let dest = s.local_addr().unwrap();
        engine.add_socket(Token(3), s).unwrap();
        let tx = UdpSocket::bind(loopback()).unwrap();
        tx.send_to(&vec![0xEE; 3000], dest).unwrap();
        tx.send_to(&vec![0xAB; max + 1], dest).unwrap();
        tx.send_to(&vec![0x11; max], dest).unwrap();
        tx.send_to(b"small", dest).unwrap();
        let got = collect(&mut engine, 2, Duration::from_secs(2));
        assert_eq!(got.len(), 2, "{kind:?}");
        assert_eq!(
            got[0].3,
            vec![0x11; max],
            "{kind:?}: exactly max_payload is delivered intact"
        );
        assert_eq!(got[1].3, b"small".to_vec());
        assert_eq!(engine.counters().truncated, 2, "{kind:?}");
    });
}

#[test]
fn forced_fallback_says_why() {
    let (engine, reason) = new_engine(&EngineConfig {
        force_fallback: true,
        ..EngineConfig::default()
    })
    .unwrap();
    assert_eq!(engine.kind(), EngineKind::Fallback);
    let reason = reason.expect("a reason");
    assert_eq!(reason.cause, FallbackCause::Forced);
    assert!(reason.to_string().contains("epoll"));
    let (engine, reason) = new_engine(&EngineConfig::default()).unwrap();
    match reason {
        None => assert_eq!(engine.kind(), EngineKind::IoUring),
        Some(r) => eprintln!("io_uring unavailable here: {r}"),
    }
    let bad = EngineConfig {
        buf_count: 100,
        ..EngineConfig::default()
    };
    assert!(new_engine(&bad).is_err());
}
