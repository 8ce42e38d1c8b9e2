//! The send arena: a fixed number of fixed-size slots, allocated once, each
//! holding one outbound datagram with its `msghdr`, `iovec` and destination
//! address ready for the kernel. Queuing copies the payload in; a slot is
//! busy until the kernel is done with it (io_uring: the send's completion;
//! fallback: the `sendmmsg` call).

use std::net::SocketAddr;
use std::{io, ptr};

use super::SendError;
use super::sys::{Mmap, SockAddrBuf, zeroed_msghdr};

/// One queued datagram, in queue order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Queued {
    /// The socket slot (sort key for the fallback's per-socket `sendmmsg`).
    pub(crate) sock: u32,
    /// Queue order within the current batch.
    pub(crate) seq: u32,
    pub(crate) idx: u32,
}

pub(crate) struct SendSlot {
    pub(crate) msg: libc::msghdr,
    iov: libc::iovec,
    addr: SockAddrBuf,
    pub(crate) sock: u32,
    pub(crate) generation: u32,
    pub(crate) len: u32,
}

pub(crate) struct SendArena {
    data: Mmap,
    slot_size: usize,
    /// Never reallocated: the kernel holds pointers into it while a send is
    /// in flight.
    slots: Box<[SendSlot]>,
    free: Vec<u32>,
    pub(crate) queued: Vec<Queued>,
}

impl std::fmt::Debug for SendArena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendArena")
            .field("slots", &self.slots.len())
            .field("slot_size", &self.slot_size)
            .field("free", &self.free.len())
            .field("queued", &self.queued.len())
            .finish()
    }
}

impl SendArena {
    pub(crate) fn new(slots: u32, slot_size: usize) -> io::Result<Self> {
        let n = slots as usize;
        let data = Mmap::anon(n * slot_size)?;
        let slots: Box<[SendSlot]> = (0..n)
            .map(|_| SendSlot {
                msg: zeroed_msghdr(),
                iov: libc::iovec {
                    iov_base: ptr::null_mut(),
                    iov_len: 0,
                },
                addr: SockAddrBuf::zeroed(),
                sock: 0,
                generation: 0,
                len: 0,
            })
            .collect();
        // Pop order: slot 0 first.
        let free = (0..slots.len() as u32).rev().collect();
        Ok(Self {
            data,
            slot_size,
            slots,
            free,
            queued: Vec::with_capacity(n),
        })
    }

    #[cfg(test)]
    pub(crate) fn in_use(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Copies `payload` into a free slot and queues it for the socket in
    /// table slot `sock` (generation `generation`).
    #[inline]
    pub(crate) fn queue(
        &mut self,
        sock: u32,
        generation: u32,
        dest: &SocketAddr,
        payload: &[u8],
    ) -> Result<(), SendError> {
        if payload.len() > self.slot_size {
            return Err(SendError::TooLarge);
        }
        let idx = self.free.pop().ok_or(SendError::ArenaFull)?;
        let base = self
            .data
            .as_ptr()
            .wrapping_add(idx as usize * self.slot_size);
        // SAFETY: `idx < slots` so `base .. base + slot_size` lies inside the
        // mapping (sized slots * slot_size) and `payload.len() <= slot_size`.
        // The slot was free: no kernel operation reads it. `payload` is the
        // caller's memory, never this mapping (nothing hands it out).
        unsafe { ptr::copy_nonoverlapping(payload.as_ptr(), base, payload.len()) };
        let slot = &mut self.slots[idx as usize];
        slot.iov = libc::iovec {
            iov_base: base.cast(),
            iov_len: payload.len(),
        };
        let namelen = slot.addr.set(dest);
        let mut msg = zeroed_msghdr();
        msg.msg_name = (&raw mut slot.addr).cast();
        msg.msg_namelen = namelen;
        msg.msg_iov = &raw mut slot.iov;
        msg.msg_iovlen = 1;
        slot.msg = msg;
        slot.sock = sock;
        slot.generation = generation;
        // Bounded by slot_size, itself a u32 in the configuration.
        slot.len = payload.len() as u32;
        // Bounded by the number of slots, itself a u32.
        let seq = self.queued.len() as u32;
        self.queued.push(Queued { sock, seq, idx });
        Ok(())
    }

    #[inline]
    pub(crate) fn slot(&self, idx: u32) -> &SendSlot {
        &self.slots[idx as usize]
    }

    /// The slot's `msghdr`, stable until [`Self::release`].
    #[inline]
    pub(crate) fn msg_ptr(&self, idx: u32) -> *const libc::msghdr {
        &raw const self.slots[idx as usize].msg
    }

    #[inline]
    pub(crate) fn release(&mut self, idx: u32) {
        debug_assert!(!self.free.contains(&idx));
        self.free.push(idx);
    }

    #[cfg(test)]
    pub(crate) fn payload(&self, idx: u32) -> &[u8] {
        let slot = &self.slots[idx as usize];
        // SAFETY: the slot's iovec points at `len` initialised bytes inside
        // the mapping, written by `queue`.
        unsafe { std::slice::from_raw_parts(slot.iov.iov_base.cast::<u8>(), slot.len as usize) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_until_full_and_reuses_released_slots() {
        let mut a = SendArena::new(4, 64).unwrap();
        let dest: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(a.queue(0, 0, &dest, &[0; 65]), Err(SendError::TooLarge));
        for i in 0..4u8 {
            a.queue(0, 0, &dest, &[i; 10]).unwrap();
        }
        assert_eq!(a.queue(0, 0, &dest, b"x"), Err(SendError::ArenaFull));
        assert_eq!(a.in_use(), 4);
        let q = std::mem::take(&mut a.queued);
        for (n, e) in q.iter().enumerate() {
            assert_eq!(e.seq as usize, n);
            assert_eq!(a.payload(e.idx), &[n as u8; 10]);
            let msg = &a.slot(e.idx).msg;
            assert_eq!(msg.msg_iovlen, 1);
            assert_eq!(
                msg.msg_namelen as usize,
                std::mem::size_of::<libc::sockaddr_in>()
            );
            a.release(e.idx);
        }
        assert_eq!(a.in_use(), 0);
        a.queue(1, 2, &dest, b"again").unwrap();
        assert_eq!(a.queued.len(), 1);
    }
}
