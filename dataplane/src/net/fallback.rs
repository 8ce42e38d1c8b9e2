//! The fallback engine: epoll + `recvmmsg` / `sendmmsg`, for kernels or
//! sandboxes where io_uring cannot be set up. Same interface and semantics
//! as the io_uring engine (tick, wakeups, timestamps, truncation, tokens);
//! it costs one `recvmmsg` per ready socket per poll instead of none.
//!
//! - Sockets are registered level-triggered with `[op][generation][slot]`
//!   as epoll data; the [`Waker`]'s eventfd is registered too.
//! - A ready socket is read with `recvmmsg` (`recv_batch` datagrams per
//!   call, up to [`MAX_ROUNDS`] calls per poll so one busy socket cannot
//!   starve the others; level-triggered epoll brings it back).
//! - After the first datagrams, `poll` lingers one tick in `ppoll` on the
//!   eventfd (so a wakeup still cuts it short), then collects what else
//!   became ready.
//! - `flush` sorts the queued datagrams by socket (queue order kept within
//!   a socket) and sends each socket's run with `sendmmsg`.

use std::marker::PhantomData;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;
use std::{fmt, io, mem, ptr};

use super::arena::SendArena;
use super::sys::{
    BatchClock, CONTROL_LEN, NAME_LEN, errno_of, monotonic_ns, parse_cmsgs, prepare_socket,
    sockaddr_from_bytes, zeroed_msghdr,
};
use super::table::{Op, SlotState, SocketTable, decode, encode};
use super::{Counters, EngineConfig, PollOutcome, SendError, Token, WakeFd, Waker};
use crate::units::Nanos;

/// `recvmmsg` calls per ready socket per poll.
const MAX_ROUNDS: usize = 4;
/// epoll events fetched per wait.
const MAX_EVENTS: usize = 256;
/// Datagrams per `sendmmsg` call.
const SEND_BATCH: usize = 64;

#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct NameBuf([u8; NAME_LEN]);

#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct CtrlBuf([u8; CONTROL_LEN]);

/// The buffers and headers of one `recvmmsg` call, allocated once.
struct RecvBatch {
    n: usize,
    size: usize,
    bufs: Box<[u8]>,
    names: Box<[NameBuf]>,
    ctrls: Box<[CtrlBuf]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
}

impl RecvBatch {
    fn new(n: usize, size: usize) -> Self {
        Self {
            n,
            size,
            bufs: vec![0u8; n * size].into_boxed_slice(),
            names: vec![NameBuf([0; NAME_LEN]); n].into_boxed_slice(),
            ctrls: vec![CtrlBuf([0; CONTROL_LEN]); n].into_boxed_slice(),
            iovs: vec![
                libc::iovec {
                    iov_base: ptr::null_mut(),
                    iov_len: 0
                };
                n
            ]
            .into_boxed_slice(),
            hdrs: vec![
                libc::mmsghdr {
                    msg_hdr: zeroed_msghdr(),
                    msg_len: 0
                };
                n
            ]
            .into_boxed_slice(),
        }
    }

    /// Points every header at its buffers, with full lengths (the kernel
    /// overwrites the lengths). Pointers are taken fresh, then only the
    /// kernel uses them until the next call.
    fn reset(&mut self) {
        let bufs = self.bufs.as_mut_ptr();
        for (i, iov) in self.iovs.iter_mut().enumerate() {
            *iov = libc::iovec {
                iov_base: bufs.wrapping_add(i * self.size).cast(),
                iov_len: self.size,
            };
        }
        let iovs = self.iovs.as_mut_ptr();
        let names = self.names.as_mut_ptr();
        let ctrls = self.ctrls.as_mut_ptr();
        for (i, h) in self.hdrs.iter_mut().enumerate() {
            let mut m = zeroed_msghdr();
            m.msg_name = names.wrapping_add(i).cast();
            m.msg_namelen = NAME_LEN as libc::socklen_t;
            m.msg_iov = iovs.wrapping_add(i);
            m.msg_iovlen = 1;
            m.msg_control = ctrls.wrapping_add(i).cast();
            m.msg_controllen = CONTROL_LEN as _;
            *h = libc::mmsghdr {
                msg_hdr: m,
                msg_len: 0,
            };
        }
    }
}

/// The epoll engine. See the module docs; used through [`super::Engine`].
pub struct FallbackEngine {
    epfd: OwnedFd,
    table: SocketTable,
    arena: SendArena,
    wake: Arc<WakeFd>,
    events: Box<[libc::epoll_event]>,
    rx: RecvBatch,
    tx: Vec<libc::mmsghdr>,
    use_pwait2: bool,
    tick: Duration,
    batch: u32,
    max_payload: usize,
    counters: Counters,
    /// Same threading rule as the io_uring engine.
    _not_send: PhantomData<*const ()>,
}

impl fmt::Debug for FallbackEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackEngine")
            .field("sockets", &self.table.len())
            .field("recv_batch", &self.rx.n)
            .field("arena", &self.arena)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn timespec(d: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
    }
}

impl FallbackEngine {
    pub(crate) fn new(cfg: &EngineConfig) -> io::Result<Self> {
        // SAFETY: plain syscall wrapper, no pointers.
        let epfd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `epfd` was just returned by epoll_create1 and is ours.
        let epfd = unsafe { OwnedFd::from_raw_fd(epfd) };
        let wake = WakeFd::new()?;
        let mut me = Self {
            epfd,
            table: SocketTable::default(),
            arena: SendArena::new(cfg.send_slots, cfg.send_slot_size as usize)?,
            wake,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS].into_boxed_slice(),
            rx: RecvBatch::new(cfg.recv_batch as usize, cfg.max_payload()),
            tx: Vec::with_capacity(SEND_BATCH),
            use_pwait2: true,
            tick: cfg.tick,
            batch: cfg.batch.max(1),
            max_payload: cfg.max_payload(),
            counters: Counters::default(),
            _not_send: PhantomData,
        };
        let wfd = me.wake.raw();
        me.ctl(libc::EPOLL_CTL_ADD, wfd, encode(Op::Wake, 0, 0))?;
        Ok(me)
    }

    fn ctl(&mut self, op: libc::c_int, fd: libc::c_int, data: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: data,
        };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        cvt(unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), op, fd, &mut ev) }).map(drop)
    }

    pub(crate) fn waker(&self) -> Waker {
        Waker {
            inner: self.wake.clone(),
        }
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    pub(crate) fn socket_count(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn max_payload(&self) -> usize {
        self.max_payload
    }

    pub(crate) fn add_socket(&mut self, token: Token, sock: UdpSocket) -> io::Result<()> {
        let v6 = prepare_socket(&sock)?;
        let fd = sock.as_raw_fd();
        let (idx, generation) = self.table.insert(token, sock, v6)?;
        if let Err(e) = self.ctl(libc::EPOLL_CTL_ADD, fd, encode(Op::Recv, idx, generation)) {
            self.table.detach(token);
            self.table.free(idx);
            return Err(e);
        }
        Ok(())
    }

    pub(crate) fn remove_socket(&mut self, token: Token) -> bool {
        let Some(idx) = self.table.detach(token) else {
            return false;
        };
        if let Some(fd) = self.table.get_mut_any(idx).map(|s| s.fd) {
            // Closing the fd would remove it too; be explicit.
            let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, 0);
        }
        self.table.free(idx);
        true
    }

    pub(crate) fn queue_send(
        &mut self,
        token: Token,
        dest: SocketAddr,
        payload: &[u8],
    ) -> Result<(), SendError> {
        let (idx, slot) = self.table.lookup(token).ok_or(SendError::UnknownToken)?;
        if slot.v6 != dest.is_ipv6() {
            return Err(SendError::AddressFamily);
        }
        self.arena.queue(idx, slot.generation, &dest, payload)
    }

    pub(crate) fn flush(&mut self) -> io::Result<usize> {
        if self.arena.queued.is_empty() {
            return Ok(0);
        }
        let mut queued = mem::take(&mut self.arena.queued);
        // By socket, queue order kept within a socket (seq is unique).
        queued.sort_unstable();
        let mut sent = 0;
        let mut i = 0;
        while i < queued.len() {
            let sock = queued[i].sock;
            let generation = self.arena.slot(queued[i].idx).generation;
            let mut j = i;
            while j < queued.len()
                && queued[j].sock == sock
                && self.arena.slot(queued[j].idx).generation == generation
            {
                j += 1;
            }
            match self.table.get_mut(sock, generation) {
                Some(slot) if slot.state == SlotState::Active => {
                    let fd = slot.fd;
                    sent += self.send_run(fd, &queued[i..j]);
                }
                _ => self.counters.send_errors += (j - i) as u64,
            }
            i = j;
        }
        for q in &queued {
            self.arena.release(q.idx);
        }
        queued.clear();
        self.arena.queued = queued;
        Ok(sent)
    }

    /// Sends one socket's datagrams with `sendmmsg`. A datagram the kernel
    /// refuses is counted and skipped; a full send buffer drops the rest of
    /// the run (paced audio is worthless late).
    fn send_run(&mut self, fd: libc::c_int, run: &[super::arena::Queued]) -> usize {
        let mut sent = 0;
        let mut k = 0;
        while k < run.len() {
            let m = (run.len() - k).min(SEND_BATCH);
            self.tx.clear();
            for q in &run[k..k + m] {
                self.tx.push(libc::mmsghdr {
                    msg_hdr: self.arena.slot(q.idx).msg,
                    msg_len: 0,
                });
            }
            // SAFETY: `tx` holds `m` initialised headers whose name, iovec
            // and payload pointers lead into arena slots that stay queued
            // (not reused) until this call returns.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.tx.as_mut_ptr(),
                    m as libc::c_uint,
                    libc::MSG_DONTWAIT as _,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                match errno_of(&e) {
                    libc::EINTR => continue,
                    libc::EAGAIN | libc::ENOBUFS => {
                        self.counters.send_errors += (run.len() - k) as u64;
                        break;
                    }
                    _ => {
                        self.counters.send_errors += 1;
                        k += 1;
                    }
                }
                continue;
            }
            let r = r as usize;
            for q in &run[k..k + r] {
                self.counters.sent += 1;
                self.counters.sent_bytes += u64::from(self.arena.slot(q.idx).len);
            }
            sent += r;
            k += r;
        }
        sent
    }

    /// Waits for epoll events; returns how many are in `self.events`.
    fn wait_epoll(&mut self, timeout: Duration) -> io::Result<usize> {
        let epfd = self.epfd.as_raw_fd();
        let events = self.events.as_mut_ptr();
        let max = self.events.len() as libc::c_int;
        let start = monotonic_ns();
        let total = timeout;
        let mut timeout = timeout;
        loop {
            let r = if self.use_pwait2 {
                let ts = timespec(timeout);
                // SAFETY: `events` has room for `max` entries, `ts` is a
                // valid timespec, the signal mask is null (size ignored).
                unsafe {
                    libc::syscall(
                        libc::SYS_epoll_pwait2,
                        epfd,
                        events,
                        max,
                        &raw const ts,
                        ptr::null::<libc::sigset_t>(),
                        0usize,
                    ) as libc::c_int
                }
            } else {
                // Before 5.11: millisecond resolution, rounded up.
                let ms = timeout.as_nanos().div_ceil(1_000_000);
                let ms = libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX);
                // SAFETY: `events` has room for `max` entries.
                unsafe { libc::epoll_wait(epfd, events, max, ms) }
            };
            if r >= 0 {
                return Ok(r as usize);
            }
            let e = io::Error::last_os_error();
            match errno_of(&e) {
                // A signal, or io_uring task work (TIF_NOTIFY_SIGNAL): wait
                // out the rest of the timeout.
                libc::EINTR => {
                    let spent = Duration::from_nanos(monotonic_ns().saturating_sub(start));
                    if spent >= total {
                        return Ok(0);
                    }
                    timeout = total - spent;
                }
                libc::ENOSYS if self.use_pwait2 => self.use_pwait2 = false,
                _ => return Err(e),
            }
        }
    }

    /// Sleeps up to `d` unless the eventfd becomes readable.
    fn linger(&mut self, d: Duration) {
        let mut pfd = libc::pollfd {
            fd: self.wake.raw(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ts = timespec(d);
        // SAFETY: one valid pollfd, a valid timespec, no signal mask.
        unsafe { libc::ppoll(&mut pfd, 1, &ts, ptr::null()) };
    }

    pub(crate) fn poll<F>(&mut self, timeout: Duration, mut handler: F) -> io::Result<PollOutcome>
    where
        F: FnMut(Token, SocketAddr, Nanos, &[u8]),
    {
        self.counters.polls += 1;
        let start = monotonic_ns();
        let mut out = PollOutcome::default();
        if !timeout.is_zero() {
            self.counters.waits += 1;
        }
        let n = self.wait_epoll(timeout)?;
        self.dispatch(n, &mut handler, &mut out);
        if !timeout.is_zero()
            && !out.woken
            && out.datagrams > 0
            && out.datagrams < self.batch as usize
            && !self.tick.is_zero()
            && !self.wake.is_pending()
        {
            let elapsed = Duration::from_nanos(monotonic_ns().saturating_sub(start));
            let linger = self.tick.min(timeout.saturating_sub(elapsed));
            if !linger.is_zero() {
                self.counters.waits += 1;
                self.linger(linger);
                let n = self.wait_epoll(Duration::ZERO)?;
                self.dispatch(n, &mut handler, &mut out);
            }
        }
        if out.datagrams > 0 {
            self.counters.batches += 1;
        }
        Ok(out)
    }

    fn dispatch<F>(&mut self, n: usize, handler: &mut F, out: &mut PollOutcome)
    where
        F: FnMut(Token, SocketAddr, Nanos, &[u8]),
    {
        let clock = BatchClock::read();
        for i in 0..n {
            let data = self.events[i].u64;
            let (op, idx, generation) = decode(data);
            if op == Op::Wake as u8 {
                out.woken = true;
                self.counters.woken += 1;
                self.wake.reset();
            } else if op == Op::Recv as u8 {
                self.recv_socket(idx, generation, &clock, handler, out);
            }
        }
    }

    fn recv_socket<F>(
        &mut self,
        idx: u32,
        generation: u32,
        clock: &BatchClock,
        handler: &mut F,
        out: &mut PollOutcome,
    ) where
        F: FnMut(Token, SocketAddr, Nanos, &[u8]),
    {
        let fd = match self.table.get_mut(idx, generation) {
            Some(s) if s.state == SlotState::Active => s.fd,
            _ => {
                self.counters.stale += 1;
                return;
            }
        };
        for _ in 0..MAX_ROUNDS {
            self.rx.reset();
            // SAFETY: `hdrs` holds `n` headers pointing into this batch's
            // buffers (just reset), all live and unaliased for the call.
            let r = unsafe {
                libc::recvmmsg(
                    fd,
                    self.rx.hdrs.as_mut_ptr(),
                    self.rx.n as libc::c_uint,
                    libc::MSG_DONTWAIT as _,
                    ptr::null_mut(),
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                match errno_of(&e) {
                    libc::EAGAIN | libc::EINTR => {}
                    _ => self.counters.recv_errors += 1,
                }
                return;
            }
            let got = r as usize;
            let Some(slot) = self.table.get_mut(idx, generation) else {
                return;
            };
            for i in 0..got {
                let h = &self.rx.hdrs[i];
                if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                    self.counters.truncated += 1;
                    continue;
                }
                let name_len = (h.msg_hdr.msg_namelen as usize).min(NAME_LEN);
                let Some(src) = sockaddr_from_bytes(&self.rx.names[i].0[..name_len]) else {
                    self.counters.recv_errors += 1;
                    continue;
                };
                // usize on glibc, socklen_t on musl.
                #[allow(clippy::unnecessary_cast)]
                let ctrl_len = (h.msg_hdr.msg_controllen as usize).min(CONTROL_LEN);
                let meta = parse_cmsgs(&self.rx.ctrls[i].0[..ctrl_len]);
                if let Some(d) = meta.drops {
                    self.counters.kernel_drops += u64::from(d.wrapping_sub(slot.drops));
                    slot.drops = d;
                }
                if meta.timestamp.is_none() {
                    self.counters.no_timestamp += 1;
                }
                let len = (h.msg_len as usize).min(self.rx.size);
                let payload = &self.rx.bufs[i * self.rx.size..i * self.rx.size + len];
                handler(slot.token, src, clock.arrival(meta.timestamp), payload);
                self.counters.datagrams += 1;
                self.counters.bytes += len as u64;
                out.datagrams += 1;
            }
            if got < self.rx.n {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::bind_udp;

    #[test]
    fn recv_batch_points_into_its_own_buffers() {
        let mut b = RecvBatch::new(4, 100);
        b.reset();
        for i in 0..4 {
            let h = &b.hdrs[i].msg_hdr;
            assert_eq!(h.msg_iovlen, 1);
            assert_eq!(
                b.iovs[i].iov_base as usize,
                b.bufs.as_ptr() as usize + i * 100
            );
            assert_eq!(h.msg_namelen as usize, NAME_LEN);
            #[allow(clippy::unnecessary_cast)] // usize on glibc, socklen_t on musl
            let controllen = h.msg_controllen as usize;
            assert_eq!(controllen, CONTROL_LEN);
        }
    }

    #[test]
    fn sends_sorted_by_socket_in_queue_order() {
        let cfg = EngineConfig::default();
        let mut e = FallbackEngine::new(&cfg).unwrap();
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let dest = rx.local_addr().unwrap();
        for t in 0..2u64 {
            e.add_socket(
                Token(t),
                bind_udp("127.0.0.1:0".parse().unwrap(), 0).unwrap(),
            )
            .unwrap();
        }
        for i in 0..20u8 {
            e.queue_send(Token(u64::from(i % 2)), dest, &[i]).unwrap();
        }
        assert_eq!(e.flush().unwrap(), 20);
        let mut got = [Vec::new(), Vec::new()];
        let mut b = [0u8; 4];
        for _ in 0..20 {
            let n = rx.recv(&mut b).unwrap();
            assert_eq!(n, 1);
            got[usize::from(b[0] % 2)].push(b[0]);
        }
        assert_eq!(got[0], (0..20).step_by(2).collect::<Vec<u8>>());
        assert_eq!(got[1], (1..20).step_by(2).collect::<Vec<u8>>());
        assert_eq!(e.counters.sent, 20);
        assert_eq!(e.arena.in_use(), 0);
    }
}
