//! The io_uring engine: one ring per worker thread.
//!
//! - Every socket has one multishot `RecvMsg` in flight, selecting buffers
//!   from one provided-buffer ring (`buf_count` buffers of `buf_size`
//!   bytes, memory owned here, page-aligned). A completion's buffer holds
//!   the `io_uring_recvmsg_out` header, the source address, the control
//!   messages, then the payload; it goes back to the ring once the handler
//!   has run.
//! - A receive that ends (ENOBUFS when the ring ran dry, or any completion
//!   without `IORING_CQE_F_MORE`) is re-armed; the datagrams wait in the
//!   socket's receive buffer meanwhile.
//! - A multishot `PollAdd` watches the [`Waker`]'s eventfd.
//! - Sends are `SendMsg` operations pointing into the send arena, submitted
//!   together by `flush`.
//! - `user_data` = `[op][generation][slot]` (see `table.rs`): a completion
//!   for a removed socket never reaches the socket that reuses its slot.
//!
//! The ring is set up `SINGLE_ISSUER | DEFER_TASKRUN` where the kernel has
//! them (6.1): the kernel's receive work then runs only while this thread
//! waits in `io_uring_enter`, batched, instead of interrupting it.

use std::marker::PhantomData;
use std::mem::{self, ManuallyDrop, MaybeUninit};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;
use std::{fmt, io, ptr};

use io_uring::types::{CancelBuilder, Fd, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{IoUring, Probe, cqueue, opcode, squeue};

use super::arena::SendArena;
use super::sys::{
    self, BatchClock, CONTROL_LEN, Mmap, NAME_LEN, errno_of, monotonic_ns, parse_cmsgs,
    prepare_socket, sockaddr_from_bytes,
};
use super::table::{Op, SlotState, SocketTable, decode, encode};
use super::{
    Counters, EngineConfig, FallbackCause, FallbackReason, PollOutcome, SendError, Token, WakeFd,
    Waker,
};
use crate::units::Nanos;

/// CQEs copied out of the completion queue per step of the drain.
const CQE_CHUNK: usize = 64;

/// The kernel's `struct io_uring_buf`: one entry of a provided-buffer ring.
/// The ring's tail is the `resv` field of entry 0.
#[repr(C)]
struct RingBuf {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

const _: () = assert!(mem::size_of::<RingBuf>() == 16);

/// A provided-buffer ring and the buffers it hands out.
struct BufRing {
    /// `entries` x [`RingBuf`], page-aligned, shared with the kernel.
    ring: Mmap,
    /// `entries` x `buf_size` bytes.
    bufs: Mmap,
    mask: u16,
    buf_size: usize,
    /// Our tail; the kernel sees it when [`BufRing::publish`] stores it.
    tail: u16,
}

impl BufRing {
    fn new(entries: u16, buf_size: usize) -> io::Result<Self> {
        let ring = Mmap::anon(entries as usize * mem::size_of::<RingBuf>())?;
        let bufs = Mmap::anon(entries as usize * buf_size)?;
        let mut me = Self {
            ring,
            bufs,
            mask: entries - 1,
            buf_size,
            tail: 0,
        };
        for bid in 0..entries {
            me.push(bid);
        }
        me.publish();
        Ok(me)
    }

    fn ring_addr(&self) -> u64 {
        self.ring.as_ptr() as u64
    }

    /// Hands buffer `bid` (back) to the kernel, visible at the next publish.
    #[inline]
    fn push(&mut self, bid: u16) {
        let idx = (self.tail & self.mask) as usize;
        let entry = self.ring.as_ptr().cast::<RingBuf>().wrapping_add(idx);
        let addr = self
            .bufs
            .as_ptr()
            .wrapping_add(bid as usize * self.buf_size) as u64;
        // SAFETY: `idx <= mask < entries`, so `entry` is inside the ring
        // mapping and aligned (page-aligned base, 16-byte entries). The slot
        // is ours: the kernel only reads entries between its head and the
        // published tail, and this one is past the tail. Fields are written
        // one by one so that entry 0's `resv` (the tail) is never written
        // non-atomically.
        unsafe {
            ptr::addr_of_mut!((*entry).addr).write(addr);
            ptr::addr_of_mut!((*entry).len).write(self.buf_size as u32);
            ptr::addr_of_mut!((*entry).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every pushed buffer visible to the kernel.
    #[inline]
    fn publish(&self) {
        let tail = self
            .ring
            .as_ptr()
            .wrapping_add(mem::offset_of!(RingBuf, resv))
            .cast::<u16>();
        // SAFETY: `tail` is entry 0's `resv`, inside the mapping, 2-aligned.
        // Userspace only ever stores it atomically (here) and the kernel only
        // loads it with acquire semantics, so treating it as an AtomicU16 is
        // sound; release orders the entry writes before it.
        unsafe { AtomicU16::from_ptr(tail) }.store(self.tail, Ordering::Release);
    }

    /// The first `len` bytes of buffer `bid`.
    #[inline]
    fn buf(&self, bid: u16, len: usize) -> &[u8] {
        let bid = (bid & self.mask) as usize;
        let len = len.min(self.buf_size);
        // SAFETY: buffer `bid` lies inside the mapping. The kernel wrote it
        // before posting the completion we read (the CQ tail load is an
        // acquire) and will not touch it again until we push it back, which
        // needs `&mut self`, so no write happens while this borrow lives.
        unsafe { std::slice::from_raw_parts(self.bufs.as_ptr().add(bid * self.buf_size), len) }
    }
}

/// Submission-queue entries needed by `cfg` and the completion queue size:
/// room for one completion per receive buffer twice over plus every send.
fn ring_sizes(cfg: &EngineConfig) -> (u32, u32) {
    let sq = cfg.sq_entries.next_power_of_two().min(32768);
    let cq = (2 * cfg.buf_count as u32 + cfg.send_slots + 64)
        .next_power_of_two()
        .min(1 << 20);
    (sq, cq)
}

/// Locked memory one engine may need, in bytes (an upper estimate): the
/// provided-buffer ring's pinned pages plus the SQ/CQ rings (charged to
/// RLIMIT_MEMLOCK before 5.12, to the memory cgroup since).
pub(crate) fn memlock_needed(cfg: &EngineConfig) -> u64 {
    let page = sys::page_size();
    let (sq, cq) = ring_sizes(cfg);
    let buf_ring = (cfg.buf_count as usize * mem::size_of::<RingBuf>()).next_multiple_of(page);
    let sqes = (sq as usize * 64).next_multiple_of(page);
    let rings = (cq as usize * 16 + sq as usize * 4 + 256).next_multiple_of(page);
    (buf_ring + sqes + rings) as u64
}

/// The io_uring engine. See the module docs; used through
/// [`super::Engine`].
pub struct UringEngine {
    // Dropped by hand, in this order, after the kernel is done (see Drop).
    ring: ManuallyDrop<IoUring>,
    bufs: ManuallyDrop<BufRing>,
    arena: ManuallyDrop<SendArena>,
    /// The msghdr every multishot receive was armed with (only its name and
    /// control lengths matter): stable address for the engine's life.
    recv_msg: ManuallyDrop<Box<libc::msghdr>>,
    table: SocketTable,
    wake: Arc<WakeFd>,
    wake_armed: bool,
    /// Sockets whose receive ended and must be re-armed: (slot, generation).
    rearm: Vec<(u32, u32)>,
    in_flight_sends: usize,
    shutting_down: bool,
    tick: Duration,
    batch: u32,
    bgid: u16,
    max_payload: usize,
    deferred_taskrun: bool,
    counters: Counters,
    /// Bound to its thread: the ring is single-issuer.
    _not_send: PhantomData<*const ()>,
}

impl fmt::Debug for UringEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UringEngine")
            .field("sockets", &self.table.len())
            .field("buf_count", &(self.bufs.mask as u32 + 1))
            .field("buf_size", &self.bufs.buf_size)
            .field("arena", &*self.arena)
            .field("deferred_taskrun", &self.deferred_taskrun)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

fn cause_of(errno: i32) -> FallbackCause {
    match errno {
        libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP => FallbackCause::Unsupported,
        libc::EPERM | libc::EACCES => FallbackCause::PermissionDenied,
        libc::ENOMEM => FallbackCause::MemoryLimit,
        _ => FallbackCause::Other,
    }
}

/// Pushes `entry`, submitting first if the submission queue is full.
///
/// # Safety
/// Whatever `entry` points at (fd, msghdr, buffers) must stay valid until
/// its last completion is reaped.
unsafe fn push_sqe(ring: &mut IoUring, entry: &squeue::Entry) -> io::Result<()> {
    for _ in 0..3 {
        // SAFETY: forwarded to the caller.
        if unsafe { ring.submission().push(entry) }.is_ok() {
            return Ok(());
        }
        match ring.submit() {
            Ok(_) => {}
            Err(e) if matches!(errno_of(&e), libc::EBUSY | libc::EAGAIN | libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::WouldBlock,
        "io_uring submission queue full",
    ))
}

impl UringEngine {
    /// Sets up the ring, or says why it cannot.
    pub(crate) fn new(cfg: &EngineConfig) -> Result<Self, FallbackReason> {
        let kernel = sys::kernel_version();
        let memlock = super::memlock_limit().ok();
        let fail = |cause: FallbackCause, stage: &'static str, errno: Option<i32>| FallbackReason {
            cause,
            stage,
            errno,
            memlock,
            memlock_needed: memlock_needed(cfg),
            kernel,
        };
        let os = |stage: &'static str, e: io::Error| {
            let errno = errno_of(&e);
            fail(cause_of(errno), stage, Some(errno))
        };

        // Multishot RecvMsg arrived in 6.0 (provided-buffer rings in 5.19).
        if kernel.is_some_and(|v| v < (6, 0)) {
            return Err(fail(FallbackCause::KernelTooOld, "kernel version", None));
        }
        let (sq, cq) = ring_sizes(cfg);
        let mut deferred_taskrun = true;
        let ring = IoUring::builder()
            .setup_cqsize(cq)
            .setup_clamp()
            .setup_submit_all()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .build(sq);
        let ring = match ring {
            Ok(r) => r,
            // Before 6.1: no DEFER_TASKRUN.
            Err(e) if errno_of(&e) == libc::EINVAL => {
                deferred_taskrun = false;
                IoUring::builder()
                    .setup_cqsize(cq)
                    .setup_clamp()
                    .build(sq)
                    .map_err(|e| os("io_uring_setup", e))?
            }
            Err(e) => return Err(os("io_uring_setup", e)),
        };
        if !ring.params().is_feature_ext_arg() || !ring.params().is_feature_nodrop() {
            return Err(fail(
                FallbackCause::Unsupported,
                "ring features (EXT_ARG, NODROP)",
                None,
            ));
        }
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|e| os("register probe", e))?;
        for code in [
            opcode::RecvMsg::CODE,
            opcode::SendMsg::CODE,
            opcode::PollAdd::CODE,
            opcode::AsyncCancel::CODE,
        ] {
            if !probe.is_supported(code) {
                return Err(fail(FallbackCause::Unsupported, "opcode probe", None));
            }
        }

        let buf_size = cfg.buf_size as usize;
        let bufs =
            BufRing::new(cfg.buf_count, buf_size).map_err(|e| os("receive buffer memory", e))?;
        // SAFETY: the ring memory is page-aligned, `buf_count` entries long,
        // and outlives the registration: it is freed only after the io_uring
        // is closed (see Drop).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                bufs.ring_addr(),
                cfg.buf_count,
                cfg.buf_group,
                0,
            )
        }
        .map_err(|e| os("register buffer ring", e))?;
        let arena = SendArena::new(cfg.send_slots, cfg.send_slot_size as usize)
            .map_err(|e| os("send arena memory", e))?;
        let wake = WakeFd::new().map_err(|e| os("eventfd", e))?;

        let mut msg = sys::zeroed_msghdr();
        msg.msg_namelen = NAME_LEN as libc::socklen_t;
        msg.msg_controllen = CONTROL_LEN as _;

        let mut me = Self {
            ring: ManuallyDrop::new(ring),
            bufs: ManuallyDrop::new(bufs),
            arena: ManuallyDrop::new(arena),
            recv_msg: ManuallyDrop::new(Box::new(msg)),
            table: SocketTable::default(),
            wake,
            wake_armed: false,
            rearm: Vec::with_capacity(64),
            in_flight_sends: 0,
            shutting_down: false,
            tick: cfg.tick,
            batch: cfg.batch.max(1),
            bgid: cfg.buf_group,
            max_payload: cfg.max_payload(),
            deferred_taskrun,
            counters: Counters::default(),
            _not_send: PhantomData,
        };
        me.arm_wake().map_err(|e| os("arm eventfd poll", e))?;
        me.ring.submit().map_err(|e| os("first submit", e))?;
        Ok(me)
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

    /// Whether the kernel runs receive work only when this thread waits
    /// (IORING_SETUP_DEFER_TASKRUN, Linux 6.1+).
    pub fn deferred_taskrun(&self) -> bool {
        self.deferred_taskrun
    }

    fn arm_wake(&mut self) -> io::Result<()> {
        let entry = opcode::PollAdd::new(Fd(self.wake.raw()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(encode(Op::Wake, 0, 0));
        // SAFETY: the eventfd lives in `self.wake` as long as the engine,
        // and the engine waits for this poll's last completion before it
        // drops (see Drop).
        unsafe { push_sqe(&mut self.ring, &entry) }?;
        self.wake_armed = true;
        Ok(())
    }

    /// Arms the socket's multishot receive; false if there was nothing to
    /// arm (removed, or already armed).
    fn arm_recv(&mut self, idx: u32, generation: u32) -> io::Result<bool> {
        let Some(slot) = self.table.get_mut(idx, generation) else {
            return Ok(false);
        };
        if slot.state != SlotState::Active || slot.armed {
            return Ok(false);
        }
        let entry = opcode::RecvMsgMulti::new(Fd(slot.fd), &raw const **self.recv_msg, self.bgid)
            .build()
            .user_data(encode(Op::Recv, idx, generation));
        // SAFETY: the socket stays open while the receive is armed: a
        // removed slot keeps its socket until this receive's final
        // completion (`on_recv`). `recv_msg` lives as long as the engine,
        // the buffer group is registered for the ring's life, and Drop waits
        // for all receives to end before freeing the buffers.
        unsafe { push_sqe(&mut self.ring, &entry) }?;
        slot.armed = true;
        Ok(true)
    }

    pub(crate) fn add_socket(&mut self, token: Token, sock: UdpSocket) -> io::Result<()> {
        let v6 = prepare_socket(&sock)?;
        let (idx, generation) = self.table.insert(token, sock, v6)?;
        // Room to re-arm every socket without allocating in `poll`.
        self.rearm
            .reserve(self.table.capacity_hint().saturating_sub(self.rearm.len()));
        if let Err(e) = self.arm_recv(idx, generation) {
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
        let Some((generation, armed)) =
            self.table.get_mut_any(idx).map(|s| (s.generation, s.armed))
        else {
            return false;
        };
        if !armed {
            self.table.free(idx);
            return true;
        }
        let entry = opcode::AsyncCancel::new(encode(Op::Recv, idx, generation))
            .build()
            .user_data(encode(Op::Cancel, idx, generation));
        // SAFETY: a cancel holds no pointer.
        if unsafe { push_sqe(&mut self.ring, &entry) }.is_err() {
            // The receive stays armed; its completions are stale and the
            // slot is freed when (if) it ends. Counted, not fatal.
            self.counters.recv_errors += 1;
        }
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
        let mut n = 0;
        let mut result = Ok(());
        for q in &queued {
            let (sock, generation) = {
                let s = self.arena.slot(q.idx);
                (s.sock, s.generation)
            };
            let fd = match self.table.get_mut(sock, generation) {
                Some(slot) if slot.state == SlotState::Active => slot.fd,
                _ => {
                    // Removed between queue and flush.
                    self.counters.send_errors += 1;
                    self.arena.release(q.idx);
                    continue;
                }
            };
            let entry = opcode::SendMsg::new(Fd(fd), self.arena.msg_ptr(q.idx))
                .build()
                .user_data(encode(Op::Send, q.idx, 0));
            // SAFETY: the msghdr, its iovec, address and payload live in the
            // arena slot, which is released only by this send's completion
            // (`on_send`) and freed only after Drop waited for all sends. The
            // socket is active: it is only closed after a flush has pushed
            // (and, on the next submit, issued) this send, and the kernel
            // holds its own file reference from issue on.
            match unsafe { push_sqe(&mut self.ring, &entry) } {
                Ok(()) => {
                    self.in_flight_sends += 1;
                    n += 1;
                }
                Err(e) => {
                    self.counters.send_errors += 1;
                    self.arena.release(q.idx);
                    result = Err(e);
                }
            }
        }
        queued.clear();
        self.arena.queued = queued;
        self.submit()?;
        result.map(|()| n)
    }

    fn submit(&mut self) -> io::Result<()> {
        match self.ring.submit() {
            Ok(_) => Ok(()),
            // Still in the SQ: the next enter submits them.
            Err(e) if matches!(errno_of(&e), libc::EBUSY | libc::EAGAIN | libc::EINTR) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Submits what is queued and waits up to `wait` for `want`
    /// completions. Timeouts and signals are not errors.
    fn enter(&mut self, want: usize, wait: Duration) -> io::Result<()> {
        self.counters.waits += 1;
        let start = monotonic_ns();
        let total = wait;
        let mut wait = wait;
        loop {
            let ts = Timespec::from(wait);
            let args = SubmitArgs::new().timespec(&ts);
            let err = match self.ring.submitter().submit_with_args(want, &args) {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            match errno_of(&err) {
                libc::ETIME | libc::EBUSY | libc::EAGAIN => return Ok(()),
                // A signal, or task work of another ring of this thread
                // (TIF_NOTIFY_SIGNAL): wait out the rest unless something
                // completed meanwhile.
                libc::EINTR => {
                    let spent = Duration::from_nanos(monotonic_ns().saturating_sub(start));
                    if spent >= total || !self.ring.completion().is_empty() {
                        return Ok(());
                    }
                    wait = total - spent;
                }
                _ => return Err(err),
            }
        }
    }

    pub(crate) fn poll<F>(&mut self, timeout: Duration, mut handler: F) -> io::Result<PollOutcome>
    where
        F: FnMut(Token, SocketAddr, Nanos, &[u8]),
    {
        self.counters.polls += 1;
        self.push_rearms();
        // Completions already posted (e.g. by the last flush) need no wait.
        if !self.ring.completion().is_empty() || timeout.is_zero() {
            if timeout.is_zero() {
                self.submit()?;
            }
            let out = self.drain(&mut handler);
            if out.datagrams > 0 || out.woken || timeout.is_zero() {
                return Ok(out);
            }
        }
        let start = monotonic_ns();
        // Sleep until the first completion (or the caller's deadline) ...
        self.enter(1, timeout)?;
        // ... then linger one tick for a batch, unless woken or one is ready.
        if self.batch > 1 && !self.tick.is_zero() && !self.wake.is_pending() {
            let ready = self.ring.completion().len();
            if ready > 0 && ready < self.batch as usize {
                let elapsed = Duration::from_nanos(monotonic_ns().saturating_sub(start));
                let linger = self.tick.min(timeout.saturating_sub(elapsed));
                if !linger.is_zero() {
                    self.enter(self.batch as usize, linger)?;
                }
            }
        }
        Ok(self.drain(&mut handler))
    }

    /// Processes every completion in the queue.
    fn drain<F>(&mut self, handler: &mut F) -> PollOutcome
    where
        F: FnMut(Token, SocketAddr, Nanos, &[u8]),
    {
        let clock = BatchClock::read();
        let mut out = PollOutcome::default();
        let mut cqes = [const { MaybeUninit::<cqueue::Entry>::uninit() }; CQE_CHUNK];
        // Bound the work of one poll even if completions keep coming.
        let mut budget = self.ring.params().cq_entries() as usize * 2;
        loop {
            let got = self.ring.completion().fill(&mut cqes);
            if got.is_empty() {
                break;
            }
            for cqe in got.iter() {
                let (op, idx, generation) = decode(cqe.user_data());
                match op {
                    x if x == Op::Recv as u8 => {
                        self.on_recv(cqe, idx, generation, &clock, handler, &mut out);
                    }
                    x if x == Op::Send as u8 => self.on_send(cqe, idx),
                    x if x == Op::Wake as u8 => {
                        out.woken = true;
                        self.counters.woken += 1;
                        self.wake.reset();
                        if !cqueue::more(cqe.flags()) {
                            self.wake_armed = false;
                            if !self.shutting_down && self.arm_wake().is_err() {
                                self.counters.recv_errors += 1;
                            }
                        }
                    }
                    _ => {} // Op::Cancel: the receive's own completion says it ended.
                }
            }
            // Return this chunk's buffers before looking at the next.
            self.bufs.publish();
            budget = budget.saturating_sub(got.len());
            if budget == 0 {
                break;
            }
        }
        self.push_rearms();
        if out.datagrams > 0 {
            self.counters.batches += 1;
        }
        out
    }

    #[inline]
    fn on_recv<F>(
        &mut self,
        cqe: &cqueue::Entry,
        idx: u32,
        generation: u32,
        clock: &BatchClock,
        handler: &mut F,
        out: &mut PollOutcome,
    ) where
        F: FnMut(Token, SocketAddr, Nanos, &[u8]),
    {
        let res = cqe.result();
        let flags = cqe.flags();
        let bid = cqueue::buffer_select(flags);
        let slot = self.table.get_mut(idx, generation);
        let live = slot.as_ref().is_some_and(|s| s.state == SlotState::Active);

        if let Some(bid) = bid {
            if !live {
                self.counters.stale += 1;
            } else if let (Ok(len), Some(slot)) = (usize::try_from(res), slot) {
                let buf = self.bufs.buf(bid, len);
                match RecvMsgOut::parse(buf, &self.recv_msg) {
                    Ok(msg) if msg.is_payload_truncated() => self.counters.truncated += 1,
                    Ok(msg) => match sockaddr_from_bytes(msg.name_data()) {
                        Some(src) => {
                            let meta = parse_cmsgs(msg.control_data());
                            if let Some(d) = meta.drops {
                                self.counters.kernel_drops += u64::from(d.wrapping_sub(slot.drops));
                                slot.drops = d;
                            }
                            if meta.timestamp.is_none() {
                                self.counters.no_timestamp += 1;
                            }
                            let payload = msg.payload_data();
                            handler(slot.token, src, clock.arrival(meta.timestamp), payload);
                            self.counters.datagrams += 1;
                            self.counters.bytes += payload.len() as u64;
                            out.datagrams += 1;
                        }
                        None => self.counters.recv_errors += 1,
                    },
                    Err(()) => self.counters.recv_errors += 1,
                }
            }
            self.bufs.push(bid);
        }

        if res < 0 {
            match -res {
                libc::ENOBUFS => self.counters.enobufs += 1,
                libc::ECANCELED => {}
                _ => self.counters.recv_errors += 1,
            }
        }
        if !cqueue::more(flags) {
            // The receive ended: re-arm a live socket, close a removed one.
            if let Some(slot) = self.table.get_mut(idx, generation) {
                slot.armed = false;
                if slot.state == SlotState::Active && !self.shutting_down {
                    self.rearm.push((idx, generation));
                } else {
                    self.table.free(idx);
                }
            }
        }
    }

    #[inline]
    fn on_send(&mut self, cqe: &cqueue::Entry, idx: u32) {
        self.in_flight_sends = self.in_flight_sends.saturating_sub(1);
        let res = cqe.result();
        if res < 0 {
            self.counters.send_errors += 1;
        } else {
            self.counters.sent += 1;
            self.counters.sent_bytes += res as u64;
        }
        self.arena.release(idx);
    }

    fn push_rearms(&mut self) {
        if self.rearm.is_empty() {
            return;
        }
        let mut list = mem::take(&mut self.rearm);
        let mut keep = 0;
        for i in 0..list.len() {
            let (idx, generation) = list[i];
            match self.arm_recv(idx, generation) {
                Ok(true) => self.counters.rearms += 1,
                Ok(false) => {}
                // SQ full: try again at the next poll.
                Err(_) => {
                    list[keep] = list[i];
                    keep += 1;
                }
            }
        }
        list.truncate(keep);
        self.rearm = list;
    }

    /// Cancels everything and waits (bounded) until the kernel no longer
    /// references our memory. True if it finished.
    fn shutdown(&mut self) -> bool {
        self.shutting_down = true;
        self.table.close_all();
        let entry = opcode::AsyncCancel2::new(CancelBuilder::any())
            .build()
            .user_data(encode(Op::Cancel, 0, 0));
        // SAFETY: a cancel holds no pointer.
        let _ = unsafe { push_sqe(&mut self.ring, &entry) };
        let deadline = monotonic_ns() + 2_000_000_000;
        let mut noop = |_: Token, _: SocketAddr, _: Nanos, _: &[u8]| {};
        loop {
            let armed = self.table.occupied().filter(|(_, s)| s.armed).count();
            if armed == 0 && !self.wake_armed && self.in_flight_sends == 0 {
                return true;
            }
            if monotonic_ns() > deadline {
                return false;
            }
            if self.enter(1, Duration::from_millis(10)).is_err() {
                return false;
            }
            self.drain(&mut noop);
        }
    }

    /// Test hook: lets the kernel post completions without draining them.
    #[cfg(test)]
    fn enter_for_test(&mut self, want: usize, wait: Duration) {
        self.enter(want, wait).unwrap();
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        let clean = self.shutdown();
        // SAFETY: each field is dropped exactly once, here, and never used
        // again. The ring goes first. The memory the kernel may write into
        // (buffers, arena, msghdr) is freed only if the shutdown saw every
        // operation complete; otherwise it is leaked, which is safe.
        unsafe {
            ManuallyDrop::drop(&mut self.ring);
            if clean {
                ManuallyDrop::drop(&mut self.bufs);
                ManuallyDrop::drop(&mut self.arena);
                ManuallyDrop::drop(&mut self.recv_msg);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::bind_udp;

    fn engine(cfg: EngineConfig) -> UringEngine {
        UringEngine::new(&cfg).unwrap_or_else(|r| panic!("io_uring needed for these tests: {r}"))
    }

    fn collect(e: &mut UringEngine, want: usize) -> Vec<(Token, Vec<u8>)> {
        let mut got = Vec::new();
        let deadline = monotonic_ns() + 2_000_000_000;
        while got.len() < want && monotonic_ns() < deadline {
            e.poll(Duration::from_millis(20), |t, _, _, p| {
                got.push((t, p.to_vec()))
            })
            .unwrap();
        }
        got
    }

    #[test]
    fn buf_ring_layout_and_recycling() {
        let mut b = BufRing::new(8, 256).unwrap();
        assert_eq!(b.ring_addr() % sys::page_size() as u64, 0);
        assert_eq!(b.tail, 8);
        b.push(3);
        b.publish();
        let entry = b.ring.as_ptr().cast::<RingBuf>();
        // SAFETY: entry 0 lies in the mapping; nothing else accesses it here.
        let (addr, len, bid) = unsafe { ((*entry).addr, (*entry).len, (*entry).bid) };
        assert_eq!((addr, len, bid), (b.bufs.as_ptr() as u64 + 3 * 256, 256, 3));
        // SAFETY: as above; the tail is read after the atomic store.
        assert_eq!(unsafe { (*entry).resv }, 9);
        assert_eq!(b.buf(3, 10_000).len(), 256);
    }

    #[test]
    fn late_completions_of_a_removed_socket_are_stale() {
        let mut e = engine(EngineConfig::default());
        let a = bind_udp("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        let a_addr = a.local_addr().unwrap();
        e.add_socket(Token(7), a).unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // Arm the receive, then let datagrams complete into the CQ
        // without draining it.
        e.enter_for_test(0, Duration::from_millis(1));
        for i in 0..5u8 {
            tx.send_to(&[b'A', i], a_addr).unwrap();
        }
        let deadline = monotonic_ns() + 1_000_000_000;
        while e.ring.completion().len() < 5 && monotonic_ns() < deadline {
            e.enter_for_test(5, Duration::from_millis(10));
        }
        assert!(e.ring.completion().len() >= 5);
        assert!(e.remove_socket(Token(7)));
        // Reuse the token at once, on a new socket.
        let b = bind_udp("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        let b_addr = b.local_addr().unwrap();
        e.add_socket(Token(7), b).unwrap();
        for i in 0..3u8 {
            tx.send_to(&[b'B', i], b_addr).unwrap();
        }
        let got = collect(&mut e, 3);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(
            got.iter().all(|(t, p)| *t == Token(7) && p[0] == b'B'),
            "{got:?}"
        );
        assert_eq!(e.counters.stale, 5);
        // The old slot was freed when its receive's last completion came.
        assert_eq!(e.table.occupied().count(), 1);
    }

    #[test]
    fn memlock_estimate_with_defaults() {
        if sys::page_size() == 4096 {
            assert_eq!(memlock_needed(&EngineConfig::default()), 196 * 1024);
        }
    }

    #[test]
    fn drop_waits_for_the_kernel() {
        let mut e = engine(EngineConfig::default());
        let s = bind_udp("127.0.0.1:0".parse().unwrap(), 0).unwrap();
        let dest = s.local_addr().unwrap();
        e.add_socket(Token(1), s).unwrap();
        for _ in 0..10 {
            e.queue_send(Token(1), dest, b"x").unwrap();
        }
        e.flush().unwrap();
        assert!(e.shutdown());
        assert_eq!(e.in_flight_sends, 0);
    }
}
