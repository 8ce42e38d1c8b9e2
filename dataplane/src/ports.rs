//! UDP port allocation for endpoints: per-tenant ranges, even ports for RTP
//! (RTCP on port + 1), and a quarantine for released ports so that stray
//! packets of an old call never land in a new one.
//!
//! Sans-IO: the caller passes `now` and does the binding; a port the kernel
//! refuses (another process holds it) is reported back with
//! [`PortPool::mark_busy`] and skipped for one quarantine period.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::units::Nanos;

/// An inclusive range of UDP ports, `first-last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port (even).
    pub first: u16,
    /// Last port (inclusive).
    pub last: u16,
}

impl PortRange {
    /// Even ports (RTP) in the range whose RTCP port (+1) is in it too.
    fn slots(self) -> usize {
        let first = self.first + (self.first & 1);
        if self.last <= first {
            return 0;
        }
        usize::from(self.last - first).div_ceil(2)
    }

    fn port(self, slot: usize) -> u16 {
        let first = self.first + (self.first & 1);
        // Slots are < slots(), which keeps the port within first..last.
        first + (slot as u16) * 2
    }

    fn overlaps(self, other: Self) -> bool {
        self.first <= other.last && other.first <= self.last
    }

    fn contains(self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for PortRange {
    type Err = PortConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PortConfigError::BadRange(s.to_owned());
        let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
        let first: u16 = a.trim().parse().map_err(|_| bad())?;
        let last: u16 = b.trim().parse().map_err(|_| bad())?;
        if first == 0 || last < first + 1 {
            return Err(bad());
        }
        Ok(Self { first, last })
    }
}

/// Configuration errors, reported at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortConfigError {
    /// Not `first-last` with `0 < first < last`.
    BadRange(String),
    /// Two ranges share ports.
    Overlap {
        /// One owner ("default" or a tenant).
        a: String,
        /// The other.
        b: String,
    },
}

impl fmt::Display for PortConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadRange(s) => write!(
                f,
                "bad port range {s:?}: expected FIRST-LAST with 0 < FIRST < LAST, room for one even/odd pair"
            ),
            Self::Overlap { a, b } => write!(f, "port ranges of {a} and {b} overlap"),
        }
    }
}

impl std::error::Error for PortConfigError {}

/// Why no port could be handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortError {
    /// Every port of the range is in use or quarantined.
    Exhausted {
        /// The range that ran out.
        range: PortRange,
        /// Ports held by live endpoints.
        in_use: usize,
        /// Ports waiting out their quarantine.
        quarantined: usize,
    },
    /// The tenant has no range and there is no default range.
    NoRange,
}

impl fmt::Display for PortError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exhausted {
                range,
                in_use,
                quarantined,
            } => write!(
                f,
                "port range {range} exhausted: {in_use} in use, {quarantined} in quarantine"
            ),
            Self::NoRange => f.write_str("tenant has no port range and no default range is set"),
        }
    }
}

impl std::error::Error for PortError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Free,
    InUse,
    Quarantined,
}

#[derive(Debug)]
struct RangeState {
    range: PortRange,
    slots: Vec<Slot>,
    /// Next slot to try: round robin, so a released port is the last reused.
    cursor: usize,
    /// Released slots in release order with the time they become free.
    quarantine: VecDeque<(usize, Nanos)>,
    in_use: usize,
}

impl RangeState {
    fn new(range: PortRange) -> Self {
        Self {
            range,
            slots: vec![Slot::Free; range.slots()],
            cursor: 0,
            quarantine: VecDeque::new(),
            in_use: 0,
        }
    }

    fn expire(&mut self, now: Nanos) {
        while let Some(&(slot, until)) = self.quarantine.front() {
            if until > now {
                break;
            }
            self.quarantine.pop_front();
            if self.slots[slot] == Slot::Quarantined {
                self.slots[slot] = Slot::Free;
            }
        }
    }

    fn allocate(&mut self) -> Option<u16> {
        let n = self.slots.len();
        for i in 0..n {
            let slot = (self.cursor + i) % n;
            if self.slots[slot] == Slot::Free {
                self.slots[slot] = Slot::InUse;
                self.in_use += 1;
                self.cursor = (slot + 1) % n;
                return Some(self.range.port(slot));
            }
        }
        None
    }

    fn slot_of(&self, port: u16) -> Option<usize> {
        let first = self.range.first + (self.range.first & 1);
        if port < first || port & 1 == 1 {
            return None;
        }
        let slot = usize::from((port - first) / 2);
        (slot < self.slots.len()).then_some(slot)
    }

    fn quarantine(&mut self, port: u16, until: Nanos, was_in_use: bool) -> bool {
        let Some(slot) = self.slot_of(port) else {
            return false;
        };
        if was_in_use {
            if self.slots[slot] != Slot::InUse {
                return false;
            }
            self.in_use -= 1;
        }
        self.slots[slot] = Slot::Quarantined;
        self.quarantine.push_back((slot, until));
        true
    }
}

/// Hands out RTP ports from per-tenant ranges and a shared default range.
#[derive(Debug)]
pub struct PortPool {
    default: Option<RangeState>,
    tenants: HashMap<String, RangeState>,
    quarantine: Duration,
}

impl PortPool {
    /// Builds the pool; ranges must not overlap.
    pub fn new(
        default: Option<PortRange>,
        tenants: impl IntoIterator<Item = (String, PortRange)>,
        quarantine: Duration,
    ) -> Result<Self, PortConfigError> {
        let tenants: HashMap<String, RangeState> = tenants
            .into_iter()
            .map(|(t, r)| (t, RangeState::new(r)))
            .collect();
        let mut all: Vec<(String, PortRange)> = tenants
            .iter()
            .map(|(t, s)| (format!("tenant {t}"), s.range))
            .collect();
        if let Some(r) = default {
            all.push(("the default range".to_owned(), r));
        }
        for (i, (a, ra)) in all.iter().enumerate() {
            if ra.slots() == 0 {
                return Err(PortConfigError::BadRange(ra.to_string()));
            }
            for (b, rb) in &all[i + 1..] {
                if ra.overlaps(*rb) {
                    return Err(PortConfigError::Overlap {
                        a: a.clone(),
                        b: b.clone(),
                    });
                }
            }
        }
        Ok(Self {
            default: default.map(RangeState::new),
            tenants,
            quarantine,
        })
    }

    fn state(&mut self, tenant: &str) -> Option<&mut RangeState> {
        match self.tenants.get_mut(tenant) {
            Some(s) => Some(s),
            None => self.default.as_mut(),
        }
    }

    /// The range `tenant` draws from.
    pub fn range_of(&self, tenant: &str) -> Option<PortRange> {
        self.tenants
            .get(tenant)
            .or(self.default.as_ref())
            .map(|s| s.range)
    }

    /// Takes a free even port for `tenant` (RTCP, if used, is port + 1).
    pub fn allocate(&mut self, tenant: &str, now: Nanos) -> Result<u16, PortError> {
        let state = self.state(tenant).ok_or(PortError::NoRange)?;
        state.expire(now);
        state.allocate().ok_or(PortError::Exhausted {
            range: state.range,
            in_use: state.in_use,
            quarantined: state.quarantine.len(),
        })
    }

    /// Gives `port` back: it is quarantined before it can be handed out again.
    /// Returns false if `port` was not allocated to `tenant`'s range.
    pub fn release(&mut self, tenant: &str, port: u16, now: Nanos) -> bool {
        let until = now + self.quarantine;
        self.state(tenant)
            .is_some_and(|s| s.quarantine(port, until, true))
    }

    /// An allocated port the kernel would not bind (another process holds
    /// it): it leaves use and is not tried again for one quarantine period.
    pub fn mark_busy(&mut self, tenant: &str, port: u16, now: Nanos) -> bool {
        self.release(tenant, port, now)
    }

    /// Whether `port` falls in any configured range (for diagnostics).
    pub fn owns(&self, port: u16) -> bool {
        self.default.iter().any(|s| s.range.contains(port))
            || self.tenants.values().any(|s| s.range.contains(port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(q_ms: u64) -> PortPool {
        PortPool::new(
            Some("20000-20009".parse().unwrap()),
            [("acme".to_owned(), "30001-30006".parse().unwrap())],
            Duration::from_millis(q_ms),
        )
        .unwrap()
    }

    #[test]
    fn ranges_parse_and_validate() {
        assert_eq!(
            "100-200".parse::<PortRange>(),
            Ok(PortRange {
                first: 100,
                last: 200
            })
        );
        for bad in ["", "100", "200-100", "0-10", "a-b", "100-100"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
        let err = PortPool::new(
            Some("100-200".parse().unwrap()),
            [("t".to_owned(), "150-300".parse().unwrap())],
            Duration::ZERO,
        )
        .unwrap_err();
        assert!(matches!(err, PortConfigError::Overlap { .. }));
    }

    #[test]
    fn hands_out_even_ports_with_room_for_rtcp() {
        let mut p = pool(0);
        let got: Vec<u16> = (0..5).map(|_| p.allocate("x", Nanos(0)).unwrap()).collect();
        assert_eq!(got, [20000, 20002, 20004, 20006, 20008]);
        // An odd first port rounds up; the last pair must fit entirely.
        let got: Vec<u16> = (0..2)
            .map(|_| p.allocate("acme", Nanos(0)).unwrap())
            .collect();
        assert_eq!(got, [30002, 30004]);
        assert!(matches!(
            p.allocate("acme", Nanos(0)),
            Err(PortError::Exhausted { in_use: 2, .. })
        ));
    }

    #[test]
    fn exhaustion_is_an_error_and_quarantine_delays_reuse() {
        let mut p = pool(1000);
        let ports: Vec<u16> = (0..5).map(|_| p.allocate("x", Nanos(0)).unwrap()).collect();
        assert_eq!(
            p.allocate("x", Nanos(0)),
            Err(PortError::Exhausted {
                range: "20000-20009".parse().unwrap(),
                in_use: 5,
                quarantined: 0
            })
        );
        assert!(p.release("x", ports[1], Nanos::from_millis(10)));
        assert!(
            !p.release("x", ports[1], Nanos::from_millis(10)),
            "double release"
        );
        assert!(matches!(
            p.allocate("x", Nanos::from_millis(500)),
            Err(PortError::Exhausted { quarantined: 1, .. })
        ));
        assert_eq!(p.allocate("x", Nanos::from_millis(1010)), Ok(ports[1]));
    }

    #[test]
    fn released_ports_are_reused_last() {
        let mut p = pool(0);
        let a = p.allocate("x", Nanos(0)).unwrap();
        p.release("x", a, Nanos(0));
        let b = p.allocate("x", Nanos(1)).unwrap();
        assert_ne!(a, b, "round robin moves on before reusing a port");
    }

    #[test]
    fn tenants_are_isolated_and_unknown_ones_share_the_default() {
        let mut p = pool(0);
        assert_eq!(p.range_of("acme").unwrap().first, 30001);
        assert_eq!(p.range_of("other").unwrap().first, 20000);
        let a = p.allocate("acme", Nanos(0)).unwrap();
        assert!(!p.release("other", a, Nanos(0)), "not in other's range");
        let none = PortPool::new(None, [], Duration::ZERO).unwrap();
        let mut none = none;
        assert_eq!(none.allocate("x", Nanos(0)), Err(PortError::NoRange));
    }
}
