//! The sockets one engine owns, in generation-tagged slots.
//!
//! Every operation the kernel completes carries a `user_data` word that
//! names a slot *and its generation*. Removing a socket bumps the generation
//! when the slot is freed, so a completion that arrives late for a removed
//! socket never matches the socket that reuses the slot (or the token).

use std::collections::HashMap;
use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, RawFd};

use super::Token;

/// What a `user_data` word (io_uring) or epoll data word (fallback) is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Op {
    Recv = 1,
    Wake = 2,
    Send = 3,
    Cancel = 4,
}

const SLOT_BITS: u32 = 24;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
/// At most this many sockets per engine (the slot field of `user_data`).
pub(crate) const MAX_SLOTS: usize = 1 << SLOT_BITS;

/// `[op: 8][generation: 32][slot: 24]`.
#[inline]
pub(crate) const fn encode(op: Op, slot: u32, generation: u32) -> u64 {
    ((op as u64) << 56) | ((generation as u64) << SLOT_BITS) | (slot as u64 & SLOT_MASK)
}

/// The inverse of [`encode`]: (op byte, slot, generation).
#[inline]
pub(crate) const fn decode(data: u64) -> (u8, u32, u32) {
    (
        (data >> 56) as u8,
        (data & SLOT_MASK) as u32,
        (data >> SLOT_BITS) as u32,
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotState {
    Free,
    Active,
    /// Removed by the caller; the kernel may still complete operations on
    /// it (io_uring: until the cancelled receive's last completion).
    Closing,
}

#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) generation: u32,
    pub(crate) state: SlotState,
    pub(crate) token: Token,
    pub(crate) sock: Option<UdpSocket>,
    pub(crate) fd: RawFd,
    pub(crate) v6: bool,
    /// The last SO_RXQ_OVFL value seen on this socket.
    pub(crate) drops: u32,
    /// io_uring: a multishot receive is in flight (submitted or queued).
    pub(crate) armed: bool,
}

#[derive(Debug, Default)]
pub(crate) struct SocketTable {
    slots: Vec<Slot>,
    free: Vec<u32>,
    by_token: HashMap<Token, u32>,
}

impl SocketTable {
    /// Takes ownership of `sock` under `token`: (slot, generation).
    pub(crate) fn insert(
        &mut self,
        token: Token,
        sock: UdpSocket,
        v6: bool,
    ) -> io::Result<(u32, u32)> {
        if self.by_token.contains_key(&token) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "token already in use",
            ));
        }
        let fd = sock.as_raw_fd();
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                if self.slots.len() >= MAX_SLOTS {
                    return Err(io::Error::new(
                        io::ErrorKind::OutOfMemory,
                        "too many sockets",
                    ));
                }
                self.slots.push(Slot {
                    generation: 0,
                    state: SlotState::Free,
                    token,
                    sock: None,
                    fd: -1,
                    v6,
                    drops: 0,
                    armed: false,
                });
                // Bounded by MAX_SLOTS above.
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[idx as usize];
        slot.state = SlotState::Active;
        slot.token = token;
        slot.sock = Some(sock);
        slot.fd = fd;
        slot.v6 = v6;
        slot.drops = 0;
        slot.armed = false;
        self.by_token.insert(token, idx);
        Ok((idx, slot.generation))
    }

    /// The active slot for `token`.
    #[inline]
    pub(crate) fn lookup(&self, token: Token) -> Option<(u32, &Slot)> {
        let idx = *self.by_token.get(&token)?;
        Some((idx, &self.slots[idx as usize]))
    }

    /// The slot if it still holds the socket generation `generation` (active
    /// or closing).
    #[inline]
    pub(crate) fn get_mut(&mut self, idx: u32, generation: u32) -> Option<&mut Slot> {
        self.slots
            .get_mut(idx as usize)
            .filter(|s| s.generation == generation && s.state != SlotState::Free)
    }

    /// The slot whatever its generation, unless free.
    pub(crate) fn get_mut_any(&mut self, idx: u32) -> Option<&mut Slot> {
        self.slots
            .get_mut(idx as usize)
            .filter(|s| s.state != SlotState::Free)
    }

    /// Forgets every token and marks every active slot closing (shutdown).
    pub(crate) fn close_all(&mut self) {
        self.by_token.clear();
        for s in &mut self.slots {
            if s.state == SlotState::Active {
                s.state = SlotState::Closing;
            }
        }
    }

    /// Forgets `token` (a new socket may take it at once) and marks its slot
    /// closing. The caller frees the slot when the kernel is done with it.
    pub(crate) fn detach(&mut self, token: Token) -> Option<u32> {
        let idx = self.by_token.remove(&token)?;
        self.slots[idx as usize].state = SlotState::Closing;
        Some(idx)
    }

    /// Closes the socket and makes the slot reusable under a new generation.
    pub(crate) fn free(&mut self, idx: u32) {
        let slot = &mut self.slots[idx as usize];
        if slot.state == SlotState::Free {
            return;
        }
        slot.sock = None;
        slot.fd = -1;
        slot.armed = false;
        slot.state = SlotState::Free;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(idx);
    }

    pub(crate) fn len(&self) -> usize {
        self.by_token.len()
    }

    pub(crate) fn capacity_hint(&self) -> usize {
        self.slots.len()
    }

    /// Every slot index that is not free (active or closing).
    pub(crate) fn occupied(&self) -> impl Iterator<Item = (u32, &Slot)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state != SlotState::Free)
            .map(|(i, s)| (i as u32, s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0").unwrap()
    }

    #[test]
    fn user_data_round_trips() {
        let d = encode(Op::Recv, MAX_SLOTS as u32 - 1, u32::MAX);
        assert_eq!(decode(d), (Op::Recv as u8, MAX_SLOTS as u32 - 1, u32::MAX));
        let d = encode(Op::Send, 7, 0);
        assert_eq!(decode(d), (Op::Send as u8, 7, 0));
    }

    #[test]
    fn reused_slot_gets_new_generation_and_token_is_free_at_once() {
        let mut t = SocketTable::default();
        let (a, ga) = t.insert(Token(1), sock(), false).unwrap();
        assert!(t.insert(Token(1), sock(), false).is_err());
        assert_eq!(t.detach(Token(1)), Some(a));
        // The token is reusable before the old slot is freed.
        let (b, gb) = t.insert(Token(1), sock(), false).unwrap();
        assert_ne!(a, b);
        assert!(
            t.get_mut(a, ga).is_some(),
            "closing slot still matches its generation"
        );
        t.free(a);
        assert!(t.get_mut(a, ga).is_none(), "freed slot no longer matches");
        let (c, gc) = t.insert(Token(2), sock(), false).unwrap();
        assert_eq!(c, a);
        assert_ne!(gc, ga);
        assert!(t.get_mut(a, ga).is_none());
        assert_eq!(t.lookup(Token(1)).map(|(i, _)| i), Some(b));
        assert_eq!(t.get_mut(b, gb).map(|s| s.token), Some(Token(1)));
        assert_eq!(t.len(), 2);
    }
}
