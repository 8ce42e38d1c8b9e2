//! The dataplane's IO layer: one receive/send engine per pinned worker
//! thread, owning many UDP sockets.
//!
//! This is the one module of the crate that touches sockets and clocks (the
//! rest is sans-IO). Two implementations sit behind [`Engine`], an enum, so
//! the hot path is statically dispatched:
//!
//! - [`UringEngine`]: one io_uring per worker, a multishot `RecvMsg` per
//!   socket fed by a provided-buffer ring, `SendMsg` batches, an eventfd
//!   polled by the ring for wakeups.
//! - [`FallbackEngine`]: epoll + `recvmmsg` / `sendmmsg`, used when io_uring
//!   cannot be set up (the reason is returned by [`new_engine`]) or when the
//!   configuration forces it.
//!
//! Both deliver each datagram to a handler with its token, source address,
//! kernel receive timestamp (SO_TIMESTAMPNS, converted to the monotonic
//! [`Nanos`] once per batch) and payload, without allocating. See
//! `docs/io-engine.md` for the ring layout, sizes, memlock needs and the
//! batching tick.
//!
//! The worker loop:
//!
//! ```no_run
//! # use std::time::Duration;
//! # use mediagw_dataplane::net::*;
//! let (mut engine, fallback) = new_engine(&EngineConfig::default()).unwrap();
//! if let Some(why) = &fallback { eprintln!("{why}"); }
//! let sock = bind_udp("127.0.0.1:0".parse().unwrap(), 2 << 20).unwrap();
//! engine.add_socket(Token(1), sock).unwrap();
//! loop {
//!     let out = engine
//!         .poll(Duration::from_millis(20), |token, from, at, payload| {
//!             // parse, latch, stats, jitter buffer ...
//! #           let _ = (token, from, at, payload);
//!         })
//!         .unwrap();
//!     // queue paced outbound packets, then send them in one batch:
//!     // engine.queue_send(token, peer, &packet)?;
//!     engine.flush().unwrap();
//!     if out.woken { /* drain the command queue */ }
//! #   break;
//! }
//! ```
//!
//! An engine is `!Send`: build it on the worker thread that polls it (the
//! io_uring engine is set up single-issuer, bound to its creating thread).
//! Hand [`Engine::waker`] to other threads.
//!
//! ```compile_fail
//! fn send<T: Send>() {}
//! send::<mediagw_dataplane::net::Engine>();
//! ```

mod arena;
mod fallback;
mod sys;
mod table;
mod uring;

use std::fmt;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use fallback::FallbackEngine;
pub use sys::memlock_limit;
pub use uring::UringEngine;

use crate::units::Nanos;

/// The caller's name for a socket, handed back with every datagram.
/// Reusing a token after [`Engine::remove_socket`] is safe: completions for
/// the old socket are dropped (and counted as stale), never delivered under
/// the new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub u64);

/// Engine configuration. The defaults suit a worker with up to a few
/// thousand RTP streams.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Use the epoll fallback even where io_uring works (tests, operators).
    pub force_fallback: bool,
    /// How long [`Engine::poll`] lingers after the first completion to let a
    /// batch build up (bounded by the caller's timeout). Zero: return at the
    /// first completion. Default 1 ms.
    pub tick: Duration,
    /// Stop lingering once this many completions (io_uring: socket wakeups)
    /// are ready. 1 disables lingering. Default 32.
    pub batch: u32,
    /// Size of one receive buffer, including the 104 bytes of per-datagram
    /// header, address and control space. Default 2048.
    pub buf_size: u32,
    /// Number of receive buffers in the provided-buffer ring: a power of two,
    /// at most 32768. Default 2048.
    pub buf_count: u16,
    /// The io_uring buffer group id of the ring (any value; groups are per
    /// ring).
    pub buf_group: u16,
    /// Outbound datagrams that can be queued or in flight at once.
    /// Default 1024.
    pub send_slots: u32,
    /// Largest outbound datagram. Default 1536.
    pub send_slot_size: u32,
    /// io_uring submission queue entries. Default 512.
    pub sq_entries: u32,
    /// Fallback: datagrams per `recvmmsg` call. Default 64.
    pub recv_batch: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            force_fallback: false,
            tick: Duration::from_millis(1),
            batch: 32,
            buf_size: 2048,
            buf_count: 2048,
            buf_group: 0x6d67,
            send_slots: 1024,
            send_slot_size: 1536,
            sq_entries: 512,
            recv_batch: 64,
        }
    }
}

/// Bytes of every receive buffer used before the payload: the 16-byte
/// `io_uring_recvmsg_out` header, the source address, the control messages.
pub const RECV_OVERHEAD: usize = 16 + sys::NAME_LEN + sys::CONTROL_LEN;

impl EngineConfig {
    /// The largest datagram delivered; larger ones are counted as
    /// [`Counters::truncated`] and dropped. Same for both engines.
    pub fn max_payload(&self) -> usize {
        (self.buf_size as usize).saturating_sub(RECV_OVERHEAD)
    }

    fn validate(&self) -> io::Result<()> {
        let bad = |what: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, what.to_owned()));
        if self.max_payload() < 64 || self.buf_size > 65536 {
            return bad("buf_size must be in 168..=65536");
        }
        if self.buf_count == 0 || !self.buf_count.is_power_of_two() || self.buf_count > 32768 {
            return bad("buf_count must be a power of two, at most 32768");
        }
        if self.send_slots == 0 || self.send_slots > 1 << 20 || self.send_slot_size == 0 {
            return bad("send_slots must be in 1..=1048576 and send_slot_size > 0");
        }
        if !(1..=1024).contains(&self.recv_batch) {
            return bad("recv_batch must be in 1..=1024");
        }
        if self.sq_entries < 8 {
            return bad("sq_entries must be at least 8");
        }
        Ok(())
    }
}

/// Which implementation an [`Engine`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    IoUring,
    Fallback,
}

/// Counters, cumulative since the engine started. Plain fields: the worker
/// reads them between polls and publishes them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Calls to [`Engine::poll`].
    pub polls: u64,
    /// Blocking waits in the kernel (io_uring_enter with a wait,
    /// epoll_wait / ppoll with a timeout): how often the thread slept and
    /// woke up. At most two per poll (first completion, then the linger).
    pub waits: u64,
    /// Polls that delivered at least one datagram.
    pub batches: u64,
    /// Datagrams delivered to the handler.
    pub datagrams: u64,
    /// Payload bytes delivered to the handler.
    pub bytes: u64,
    /// Wakeups from a [`Waker`] that were observed.
    pub woken: u64,
    /// Multishot receives re-armed (after ENOBUFS or a receive that ended).
    pub rearms: u64,
    /// Receives that ended because the buffer ring was empty (io_uring).
    pub enobufs: u64,
    /// Datagrams larger than [`EngineConfig::max_payload`], dropped.
    pub truncated: u64,
    /// Completions for a removed socket, dropped.
    pub stale: u64,
    /// Datagrams without a kernel timestamp (given the batch's time).
    pub no_timestamp: u64,
    /// Datagrams the kernel dropped on our sockets (full socket receive
    /// buffer), from SO_RXQ_OVFL; learnt with the next datagram received.
    pub kernel_drops: u64,
    /// Receive errors other than ENOBUFS (and unparseable source addresses).
    pub recv_errors: u64,
    /// Datagrams sent.
    pub sent: u64,
    /// Payload bytes sent.
    pub sent_bytes: u64,
    /// Sends that failed in the kernel, or whose socket was removed before
    /// the flush.
    pub send_errors: u64,
}

/// What one [`Engine::poll`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollOutcome {
    /// Datagrams delivered to the handler.
    pub datagrams: usize,
    /// A [`Waker`] fired: check the command queue.
    pub woken: bool,
}

/// Why a datagram could not be queued. The caller counts these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// No socket with this token.
    UnknownToken,
    /// IPv4 destination on an IPv6 socket or the reverse.
    AddressFamily,
    /// Larger than [`EngineConfig::send_slot_size`].
    TooLarge,
    /// Every send slot is queued or in flight.
    ArenaFull,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::UnknownToken => "unknown socket token",
            Self::AddressFamily => "destination address family does not match the socket",
            Self::TooLarge => "datagram larger than a send slot",
            Self::ArenaFull => "send arena full",
        })
    }
}

impl std::error::Error for SendError {}

/// Why the io_uring engine was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackCause {
    /// [`EngineConfig::force_fallback`].
    Forced,
    /// The kernel predates what the engine needs (multishot RecvMsg and
    /// provided-buffer rings: Linux 6.0).
    KernelTooOld,
    /// io_uring or one of the operations is missing (ENOSYS, EINVAL, or
    /// absent from the probe).
    Unsupported,
    /// io_uring is forbidden: seccomp, `kernel.io_uring_disabled`, a
    /// container runtime (EPERM / EACCES).
    PermissionDenied,
    /// Locked memory ran out (ENOMEM): usually RLIMIT_MEMLOCK.
    MemoryLimit,
    /// Anything else.
    Other,
}

/// Why the fallback engine runs, for the daemon's start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FallbackReason {
    pub cause: FallbackCause,
    /// The set-up step that failed ("io_uring_setup", "register buffer
    /// ring", ...).
    pub stage: &'static str,
    /// The OS error, if the step failed with one.
    pub errno: Option<i32>,
    /// RLIMIT_MEMLOCK (soft, hard) in bytes when set-up started.
    pub memlock: Option<(u64, u64)>,
    /// Locked memory this engine's io_uring needs, in bytes (estimate).
    pub memlock_needed: u64,
    /// The running kernel (major, minor).
    pub kernel: Option<(u32, u32)>,
}

fn fmt_bytes(v: u64) -> String {
    if v == u64::MAX {
        "unlimited".to_owned()
    } else {
        format!("{} KiB", v / 1024)
    }
}

impl fmt::Display for FallbackReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.cause == FallbackCause::Forced {
            return f.write_str("io_uring disabled by configuration; using epoll + recvmmsg");
        }
        write!(
            f,
            "io_uring unavailable ({:?} at {}",
            self.cause, self.stage
        )?;
        if let Some(e) = self.errno {
            write!(f, ": {}", io::Error::from_raw_os_error(e))?;
        }
        f.write_str(")")?;
        if let Some((major, minor)) = self.kernel {
            write!(f, "; kernel {major}.{minor}")?;
            if self.cause == FallbackCause::KernelTooOld {
                f.write_str(" (needs 6.0 or later)")?;
            }
        }
        if let Some((soft, hard)) = self.memlock
            && (self.cause == FallbackCause::MemoryLimit || soft < self.memlock_needed)
        {
            write!(
                f,
                "; RLIMIT_MEMLOCK soft {} hard {}, this engine locks about {}: \
                 raise LimitMEMLOCK= in the systemd unit",
                fmt_bytes(soft),
                fmt_bytes(hard),
                fmt_bytes(self.memlock_needed)
            )?;
        }
        f.write_str("; using epoll + recvmmsg")
    }
}

/// Wakes a worker blocked in [`Engine::poll`] from any thread.
#[derive(Debug, Clone)]
pub struct Waker {
    inner: Arc<WakeFd>,
}

impl Waker {
    /// Makes the worker's current or next [`Engine::poll`] return with
    /// `woken` set. Cheap when a wakeup is already pending (no syscall).
    pub fn wake(&self) {
        if !self.inner.pending.swap(true, Ordering::SeqCst) {
            sys::eventfd_signal(self.inner.fd.as_raw_fd());
        }
    }
}

#[derive(Debug)]
pub(crate) struct WakeFd {
    fd: OwnedFd,
    pending: AtomicBool,
}

impl WakeFd {
    fn new() -> io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            fd: sys::eventfd()?,
            pending: AtomicBool::new(false),
        }))
    }

    fn raw(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }

    fn is_pending(&self) -> bool {
        self.pending.load(Ordering::SeqCst)
    }

    /// The engine saw the wakeup: re-enable `wake`'s syscall, then empty
    /// the eventfd. A `wake` racing with this is either consumed now (and
    /// reported by this poll) or re-signals the eventfd.
    fn reset(&self) {
        self.pending.store(false, Ordering::SeqCst);
        sys::eventfd_drain(self.fd.as_raw_fd());
    }
}

/// The engine of one worker thread. See the module docs.
// One per worker, built in place and never moved on the hot path: boxing
// the larger variant would only add an indirection to every call.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Engine {
    IoUring(UringEngine),
    Fallback(FallbackEngine),
}

impl Engine {
    /// Waits up to `timeout` for datagrams (or a wakeup), then delivers
    /// every datagram ready to `handler(token, source, arrival, payload)`.
    ///
    /// Once something is ready it lingers up to [`EngineConfig::tick`] (never
    /// past `timeout`) unless [`EngineConfig::batch`] completions are ready,
    /// so that a wakeup serves a batch, not a packet. `arrival` is the
    /// kernel receive timestamp on the monotonic clock, so the linger does
    /// not show in jitter figures. A zero `timeout` never blocks.
    #[inline]
    pub fn poll<F>(&mut self, timeout: Duration, handler: F) -> io::Result<PollOutcome>
    where
        F: FnMut(Token, SocketAddr, Nanos, &[u8]),
    {
        match self {
            Self::IoUring(e) => e.poll(timeout, handler),
            Self::Fallback(e) => e.poll(timeout, handler),
        }
    }

    /// Starts receiving on `sock` under `token`. The engine sets it
    /// nonblocking and enables SO_TIMESTAMPNS and SO_RXQ_OVFL. Fails with
    /// `AlreadyExists` if the token is in use.
    pub fn add_socket(&mut self, token: Token, sock: UdpSocket) -> io::Result<()> {
        match self {
            Self::IoUring(e) => e.add_socket(token, sock),
            Self::Fallback(e) => e.add_socket(token, sock),
        }
    }

    /// Stops receiving on the socket and closes it (io_uring: once the
    /// cancelled receive has completed). Nothing more is delivered for it;
    /// the token can be reused at once. False if the token is unknown.
    pub fn remove_socket(&mut self, token: Token) -> bool {
        match self {
            Self::IoUring(e) => e.remove_socket(token),
            Self::Fallback(e) => e.remove_socket(token),
        }
    }

    /// Copies `payload` into the send arena, to go out from `token`'s
    /// socket to `dest` at the next [`Engine::flush`].
    #[inline]
    pub fn queue_send(
        &mut self,
        token: Token,
        dest: SocketAddr,
        payload: &[u8],
    ) -> Result<(), SendError> {
        match self {
            Self::IoUring(e) => e.queue_send(token, dest, payload),
            Self::Fallback(e) => e.queue_send(token, dest, payload),
        }
    }

    /// Sends every queued datagram in one batch (io_uring: one submit;
    /// fallback: one `sendmmsg` per socket). Returns how many were handed
    /// to the kernel; failures are counted in [`Counters::send_errors`].
    pub fn flush(&mut self) -> io::Result<usize> {
        match self {
            Self::IoUring(e) => e.flush(),
            Self::Fallback(e) => e.flush(),
        }
    }

    /// A handle other threads use to interrupt [`Engine::poll`].
    pub fn waker(&self) -> Waker {
        match self {
            Self::IoUring(e) => e.waker(),
            Self::Fallback(e) => e.waker(),
        }
    }

    #[inline]
    pub fn counters(&self) -> &Counters {
        match self {
            Self::IoUring(e) => e.counters(),
            Self::Fallback(e) => e.counters(),
        }
    }

    pub fn kind(&self) -> EngineKind {
        match self {
            Self::IoUring(_) => EngineKind::IoUring,
            Self::Fallback(_) => EngineKind::Fallback,
        }
    }

    /// Sockets currently added (not counting removed ones still closing).
    pub fn socket_count(&self) -> usize {
        match self {
            Self::IoUring(e) => e.socket_count(),
            Self::Fallback(e) => e.socket_count(),
        }
    }

    /// The largest datagram delivered (see [`EngineConfig::max_payload`]).
    pub fn max_payload(&self) -> usize {
        match self {
            Self::IoUring(e) => e.max_payload(),
            Self::Fallback(e) => e.max_payload(),
        }
    }
}

/// Builds the io_uring engine, or the epoll fallback when io_uring cannot be
/// set up (or `cfg.force_fallback`), saying why. Errors only when the
/// configuration is invalid or the fallback itself cannot be built.
pub fn new_engine(cfg: &EngineConfig) -> io::Result<(Engine, Option<FallbackReason>)> {
    cfg.validate()?;
    let reason = if cfg.force_fallback {
        FallbackReason {
            cause: FallbackCause::Forced,
            stage: "configuration",
            errno: None,
            memlock: memlock_limit().ok(),
            memlock_needed: uring::memlock_needed(cfg),
            kernel: sys::kernel_version(),
        }
    } else {
        match UringEngine::new(cfg) {
            Ok(e) => return Ok((Engine::IoUring(e), None)),
            Err(reason) => reason,
        }
    };
    Ok((Engine::Fallback(FallbackEngine::new(cfg)?), Some(reason)))
}

/// A UDP socket for the engines: nonblocking, close-on-exec, SO_REUSEADDR
/// off, IPv6 sockets v6-only, receive buffer of `rcvbuf` bytes (0: the
/// system default; above `net.core.rmem_max` it is forced with
/// SO_RCVBUFFORCE when the process may), bound to `addr` (port 0: any).
pub fn bind_udp(addr: SocketAddr, rcvbuf: usize) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(false)?;
    if rcvbuf > 0 {
        sock.set_recv_buffer_size(rcvbuf)?;
        // Linux reports twice what was granted; less than asked means
        // rmem_max capped it. Forcing needs CAP_NET_ADMIN: best effort.
        if sock.recv_buffer_size()? < rcvbuf {
            let val = libc::c_int::try_from(rcvbuf).unwrap_or(libc::c_int::MAX);
            let _ = sys::setsockopt_int(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                val,
            );
        }
    }
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

/// The dataplane's monotonic clock (CLOCK_MONOTONIC) as [`Nanos`]: the clock
/// receive timestamps are converted to. The one place the dataplane reads a
/// clock; the media core is handed these values.
#[inline]
pub fn monotonic_now() -> Nanos {
    Nanos(sys::monotonic_ns())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_fits_an_mtu() {
        let cfg = EngineConfig::default();
        cfg.validate().unwrap();
        assert_eq!(RECV_OVERHEAD, 104);
        assert!(cfg.max_payload() >= 1500, "{}", cfg.max_payload());
        let bad = EngineConfig {
            buf_count: 1000,
            ..EngineConfig::default()
        };
        assert!(bad.validate().is_err());
        let bad = EngineConfig {
            buf_size: 128,
            ..EngineConfig::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn fallback_reason_mentions_memlock_and_systemd() {
        let r = FallbackReason {
            cause: FallbackCause::MemoryLimit,
            stage: "register buffer ring",
            errno: Some(libc::ENOMEM),
            memlock: Some((64 * 1024, 64 * 1024)),
            memlock_needed: 96 * 1024,
            kernel: Some((6, 1)),
        };
        let s = r.to_string();
        assert!(s.contains("RLIMIT_MEMLOCK soft 64 KiB"), "{s}");
        assert!(s.contains("LimitMEMLOCK"), "{s}");
        assert!(s.contains("register buffer ring"), "{s}");
        let forced = FallbackReason {
            cause: FallbackCause::Forced,
            ..r
        };
        assert!(forced.to_string().contains("configuration"));
    }

    #[test]
    fn monotonic_now_advances() {
        let a = monotonic_now();
        let b = monotonic_now();
        assert!(b >= a && a.0 > 0);
    }

    #[test]
    fn waker_is_shareable() {
        fn check<T: Send + Sync + Clone>() {}
        check::<Waker>();
    }

    #[test]
    fn waker_coalesces_until_reset() {
        let w = WakeFd::new().unwrap();
        let waker = Waker { inner: w.clone() };
        waker.wake();
        waker.clone().wake();
        assert!(w.is_pending());
        w.reset();
        assert!(!w.is_pending());
        waker.wake();
        assert!(w.is_pending());
    }

    #[test]
    fn bind_udp_sets_what_it_says() {
        let s = bind_udp("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        let r = socket2::SockRef::from(&s);
        assert!(r.recv_buffer_size().unwrap() >= 1 << 20);
        assert!(!r.reuse_address().unwrap());
        assert!(s.local_addr().unwrap().port() != 0);
        // Nonblocking: an empty socket does not block.
        let mut b = [0u8; 4];
        assert_eq!(
            s.recv(&mut b).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }
}
