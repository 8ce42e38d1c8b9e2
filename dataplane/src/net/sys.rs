//! The few libc calls both engines share, each wrapped once: clocks, socket
//! options, socket addresses, control messages, eventfd, anonymous mappings,
//! resource limits. Everything that parses bytes the kernel wrote (names,
//! control messages) is plain safe code over `&[u8]`.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use crate::units::Nanos;

// The control-message parser below reads `cmsghdr` and `timespec` as the
// kernel lays them out on 64-bit Linux (x86_64, aarch64: our targets).
const _: () = assert!(mem::size_of::<libc::cmsghdr>() == 16);
const _: () = assert!(mem::size_of::<libc::timespec>() == 16);

/// Space reserved for the source address in every received datagram: a
/// `sockaddr_in6` (28 bytes) rounded up to 8.
pub(crate) const NAME_LEN: usize = 32;

/// Space reserved for control messages in every received datagram: one
/// `SCM_TIMESTAMPNS` (a timespec) and one `SO_RXQ_OVFL` (a u32).
pub(crate) const CONTROL_LEN: usize = cmsg_space(16) + cmsg_space(4);

const CMSG_HDR: usize = mem::size_of::<libc::cmsghdr>();
const CMSG_ALIGN: usize = mem::size_of::<usize>();

const fn cmsg_align(len: usize) -> usize {
    (len + CMSG_ALIGN - 1) & !(CMSG_ALIGN - 1)
}

const fn cmsg_space(data: usize) -> usize {
    CMSG_HDR + cmsg_align(data)
}

// ---------------------------------------------------------------------------
// Clocks

fn clock_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes it.
    // CLOCK_MONOTONIC and CLOCK_REALTIME always exist on Linux, so the call
    // cannot fail with a valid pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec)
}

/// CLOCK_MONOTONIC in nanoseconds.
pub(crate) fn monotonic_ns() -> u64 {
    u64::try_from(clock_ns(libc::CLOCK_MONOTONIC)).unwrap_or(0)
}

/// The clocks of one batch: the monotonic time the batch was picked up, and
/// the offset that turns a kernel receive timestamp (CLOCK_REALTIME) into
/// monotonic time. Read once per batch, never per packet.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchClock {
    pub(crate) now: Nanos,
    /// monotonic - realtime, in ns.
    offset: i64,
}

impl BatchClock {
    pub(crate) fn read() -> Self {
        let real = clock_ns(libc::CLOCK_REALTIME);
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        Self {
            now: Nanos(u64::try_from(mono).unwrap_or(0)),
            offset: mono.wrapping_sub(real),
        }
    }

    /// A kernel timestamp on CLOCK_REALTIME, as a monotonic time point. Never
    /// later than the batch: a packet cannot arrive after it was picked up
    /// (this also absorbs a realtime step between the packet and the batch).
    #[inline]
    pub(crate) fn arrival(&self, realtime_ns: Option<i64>) -> Nanos {
        match realtime_ns {
            Some(real) => {
                let mono = real.saturating_add(self.offset);
                Nanos(u64::try_from(mono).unwrap_or(0).min(self.now.0))
            }
            None => self.now,
        }
    }
}

// ---------------------------------------------------------------------------
// Control messages

/// What the control messages of one datagram said.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RxMeta {
    /// SCM_TIMESTAMPNS, in ns since the epoch (CLOCK_REALTIME).
    pub(crate) timestamp: Option<i64>,
    /// SO_RXQ_OVFL: the socket's cumulative drop count when this datagram
    /// was queued (only sent once non-zero).
    pub(crate) drops: Option<u32>,
}

/// Walks the control messages in `control` (a `msg_control` buffer as the
/// kernel filled it) without trusting any length in it.
#[inline]
pub(crate) fn parse_cmsgs(control: &[u8]) -> RxMeta {
    let mut meta = RxMeta::default();
    let mut off = 0usize;
    while control.len().saturating_sub(off) >= CMSG_HDR {
        let h = &control[off..off + CMSG_HDR];
        let len = u64::from_ne_bytes(h[0..8].try_into().unwrap_or_default());
        let level = i32::from_ne_bytes(h[8..12].try_into().unwrap_or_default());
        let kind = i32::from_ne_bytes(h[12..16].try_into().unwrap_or_default());
        let Ok(len) = usize::try_from(len) else { break };
        if len < CMSG_HDR || len > control.len() - off {
            break;
        }
        let data = &control[off + CMSG_HDR..off + len];
        if level == libc::SOL_SOCKET {
            if kind == libc::SCM_TIMESTAMPNS && data.len() >= 16 {
                let sec = i64::from_ne_bytes(data[0..8].try_into().unwrap_or_default());
                let nsec = i64::from_ne_bytes(data[8..16].try_into().unwrap_or_default());
                meta.timestamp = Some(sec.saturating_mul(1_000_000_000).saturating_add(nsec));
            } else if kind == libc::SO_RXQ_OVFL && data.len() >= 4 {
                meta.drops = Some(u32::from_ne_bytes(
                    data[0..4].try_into().unwrap_or_default(),
                ));
            }
        }
        off += cmsg_align(len);
    }
    meta
}

// ---------------------------------------------------------------------------
// Socket addresses

/// A `sockaddr_in` or `sockaddr_in6`, as the kernel reads it.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) union SockAddrBuf {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

impl SockAddrBuf {
    pub(crate) const fn zeroed() -> Self {
        Self {
            v6: libc::sockaddr_in6 {
                sin6_family: 0,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: [0; 16] },
                sin6_scope_id: 0,
            },
        }
    }

    /// Writes `addr`, returns the length to put in `msg_namelen`.
    #[inline]
    pub(crate) fn set(&mut self, addr: &SocketAddr) -> libc::socklen_t {
        match addr {
            SocketAddr::V4(a) => {
                self.v4 = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
            }
            SocketAddr::V6(a) => {
                self.v6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
            }
        }
    }
}

/// Parses a `sockaddr_in` / `sockaddr_in6` the kernel wrote (the name of a
/// received datagram). Same field conventions as std's own conversion.
#[inline]
pub(crate) fn sockaddr_from_bytes(b: &[u8]) -> Option<SocketAddr> {
    let family = i32::from(u16::from_ne_bytes(b.get(0..2)?.try_into().ok()?));
    let port = u16::from_be_bytes(b.get(2..4)?.try_into().ok()?);
    if family == libc::AF_INET {
        let ip: [u8; 4] = b.get(4..8)?.try_into().ok()?;
        Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
    } else if family == libc::AF_INET6 {
        let flowinfo = u32::from_ne_bytes(b.get(4..8)?.try_into().ok()?);
        let ip: [u8; 16] = b.get(8..24)?.try_into().ok()?;
        let scope = u32::from_ne_bytes(b.get(24..28)?.try_into().ok()?);
        Some(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(ip),
            port,
            flowinfo,
            scope,
        )))
    } else {
        None
    }
}

// ---------------------------------------------------------------------------
// Sockets

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub(crate) fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    opt: libc::c_int,
    val: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `val` lives across the call and its size is passed alongside;
    // setsockopt only reads it. A bad fd or option is reported as an error.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&raw const val).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// What the engines need from every socket they own, whoever built it:
/// nonblocking, kernel receive timestamps, the socket's drop counter.
/// Returns whether the socket is IPv6.
pub(crate) fn prepare_socket(sock: &UdpSocket) -> io::Result<bool> {
    sock.set_nonblocking(true)?;
    let fd = sock.as_raw_fd();
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)?;
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1)?;
    let domain = socket2::SockRef::from(sock).domain()?;
    Ok(domain == socket2::Domain::IPV6)
}

// ---------------------------------------------------------------------------
// eventfd

pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall wrapper, no pointers.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
    // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds 1 to the eventfd. A full counter (EAGAIN) already means "woken".
pub(crate) fn eventfd_signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64, as eventfd requires.
    unsafe { libc::write(fd, (&raw const one).cast(), 8) };
}

/// Resets the eventfd to zero (nonblocking: EAGAIN when already zero).
pub(crate) fn eventfd_drain(fd: RawFd) {
    let mut val: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live, writable u64.
    unsafe { libc::read(fd, (&raw mut val).cast(), 8) };
}

// ---------------------------------------------------------------------------
// Memory

/// An anonymous, private, page-aligned, prefaulted mapping.
#[derive(Debug)]
pub(crate) struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mmap {
    pub(crate) fn anon(len: usize) -> io::Result<Self> {
        let len = len.max(1).next_multiple_of(page_size());
        // SAFETY: a fresh anonymous mapping: no address hint, no fd; the
        // kernel picks a page-aligned range that aliases nothing we own.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self { ptr, len })
    }

    #[inline]
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the range `anon` mapped; the owner (engine)
        // has made sure the kernel no longer writes into it.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(v).ok().filter(|&p| p > 0).unwrap_or(4096)
}

/// RLIMIT_MEMLOCK as (soft, hard) in bytes; `u64::MAX` means unlimited.
pub fn memlock_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) })?;
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// The running kernel's (major, minor), from uname.
pub(crate) fn kernel_version() -> Option<(u32, u32)> {
    // SAFETY: utsname is plain bytes; all-zero is a valid value.
    let mut uts: libc::utsname = unsafe { mem::zeroed() };
    // SAFETY: `uts` is a valid, writable utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return None;
    }
    let release: Vec<u8> = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    let release = String::from_utf8_lossy(&release);
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// An all-zero `msghdr` (null pointers, zero lengths).
pub(crate) fn zeroed_msghdr() -> libc::msghdr {
    // SAFETY: msghdr is pointers and integers (plus padding on some libcs);
    // all-zero is a valid "empty" header.
    unsafe { mem::zeroed() }
}

pub(crate) fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmsg(level: i32, kind: i32, data: &[u8]) -> Vec<u8> {
        let len = CMSG_HDR + data.len();
        let mut v = Vec::new();
        v.extend_from_slice(&(len as u64).to_ne_bytes());
        v.extend_from_slice(&level.to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(data);
        v.resize(cmsg_align(v.len()), 0);
        v
    }

    #[test]
    fn parses_timestamp_and_drops() {
        let mut ts = Vec::new();
        ts.extend_from_slice(&5i64.to_ne_bytes());
        ts.extend_from_slice(&7i64.to_ne_bytes());
        let mut buf = cmsg(libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS, &ts);
        buf.extend(cmsg(
            libc::SOL_SOCKET,
            libc::SO_RXQ_OVFL,
            &3u32.to_ne_bytes(),
        ));
        assert_eq!(buf.len(), CONTROL_LEN);
        let m = parse_cmsgs(&buf);
        assert_eq!(m.timestamp, Some(5_000_000_007));
        assert_eq!(m.drops, Some(3));
    }

    #[test]
    fn garbage_control_never_panics() {
        assert_eq!(parse_cmsgs(&[]), RxMeta::default());
        assert_eq!(parse_cmsgs(&[0xff; 7]), RxMeta::default());
        // A length that runs past the buffer, and a zero length.
        let mut bad = cmsg(libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS, &[0; 16]);
        bad[0..8].copy_from_slice(&1000u64.to_ne_bytes());
        assert_eq!(parse_cmsgs(&bad), RxMeta::default());
        bad[0..8].copy_from_slice(&0u64.to_ne_bytes());
        assert_eq!(parse_cmsgs(&bad), RxMeta::default());
        for len in 0..64u64 {
            let mut b = vec![0xA5u8; 64];
            b[0..8].copy_from_slice(&len.to_ne_bytes());
            let _ = parse_cmsgs(&b);
        }
    }

    #[test]
    fn sockaddr_round_trip() {
        for addr in [
            "127.0.0.1:5004".parse::<SocketAddr>().unwrap(),
            "[::1]:40000".parse().unwrap(),
            SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 9, 0, 3)),
        ] {
            let mut buf = SockAddrBuf::zeroed();
            let len = buf.set(&addr) as usize;
            // SAFETY: SockAddrBuf is plain old data of at least `len` bytes.
            let bytes = unsafe { std::slice::from_raw_parts((&raw const buf).cast::<u8>(), len) };
            assert_eq!(sockaddr_from_bytes(bytes), Some(addr));
        }
        assert_eq!(sockaddr_from_bytes(&[]), None);
        assert_eq!(sockaddr_from_bytes(&[2, 0, 1]), None);
        assert_eq!(sockaddr_from_bytes(&[99; 28]), None);
    }

    #[test]
    fn arrival_is_clamped_to_batch_and_falls_back() {
        let c = BatchClock::read();
        assert_eq!(c.arrival(None), c.now);
        // A timestamp "in the future" (realtime stepped back) is the batch time.
        assert_eq!(c.arrival(Some(i64::MAX)), c.now);
        let real_now = clock_ns(libc::CLOCK_REALTIME);
        let a = c.arrival(Some(real_now - 1_000_000));
        assert!(
            a <= c.now && c.now.0 - a.0 < 100_000_000,
            "{a:?} vs {:?}",
            c.now
        );
    }

    #[test]
    fn kernel_version_parses() {
        let (major, _) = kernel_version().expect("uname");
        assert!(major >= 3);
    }
}
