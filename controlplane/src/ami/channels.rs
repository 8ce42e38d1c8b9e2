//! Which channels Asterisk has, kept from AMI events, sans-IO.
//!
//! [`ChannelTracker`] is fed every event ([`handle_event`]) and keeps, per
//! channel (by `Uniqueid`): its name, linkedid, state, context, extension,
//! caller id, the variables `VarSet` reported (a configured subset, bounded),
//! the bridge it is in, whom it dialled and how that ended, and finally its
//! hangup cause. It forgets a channel at `Hangup`. What changed comes out of
//! [`poll_change`] as [`ChannelChange`]s, so the call flow can route a new
//! call to a tenant (by context, a channel variable or the dialled number)
//! and count calls.
//!
//! A channel first seen in another event than `Newchannel` (it existed
//! before we connected) is adopted from that event's snapshot. Asterisk
//! sends some events for a channel after its `Hangup` (a `NewCallerid` in
//! the recordings); recently hung-up ids are remembered (bounded) so
//! those never bring a channel back.
//!
//! Memory is bounded: at most [`TrackerLimits::max_channels`] channels (the
//! oldest is evicted, counted and reported, when a new one would exceed it)
//! and [`TrackerLimits::max_variables`] variables of at most
//! [`TrackerLimits::max_value_bytes`] each per channel.
//!
//! Left out: sockets, the clock, tenants (the call flow's), and reconciling
//! after a reconnect (events missed while disconnected are not replayed by
//! Asterisk; the caller lists channels and calls [`ChannelTracker::remove`]
//! for the gone ones).
//!
//! [`handle_event`]: ChannelTracker::handle_event
//! [`poll_change`]: ChannelTracker::poll_change

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;

use super::events::{CallEvent, ChannelInfo, ChannelState, HangupCause};
use super::proto::Event;

/// An Asterisk channel's unique id (`Uniqueid`, `Linkedid`:
/// `1795626314.33`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UniqueId(String);

impl UniqueId {
    /// Wraps an id as Asterisk sent it.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for UniqueId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UniqueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An Asterisk bridge's unique id (`BridgeUniqueid`, a UUID).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BridgeId(String);

impl BridgeId {
    /// Wraps an id as Asterisk sent it.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BridgeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Bounds and choices of a [`ChannelTracker`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerLimits {
    /// The most channels kept; the oldest is evicted beyond (at least 1).
    pub max_channels: usize,
    /// The most variables kept per channel; later new names are dropped.
    pub max_variables: usize,
    /// The longest variable value kept, in bytes; longer ones are cut.
    pub max_value_bytes: usize,
    /// The variables worth keeping (exact names, e.g. `TENANT`); empty keeps
    /// any, up to the bound.
    pub variables: Vec<String>,
    /// How many hung-up ids to remember, so that late events do not bring
    /// their channels back.
    pub tombstones: usize,
}

impl Default for TrackerLimits {
    /// 50 000 channels, 32 variables of up to 1 KiB each, 4096 tombstones.
    fn default() -> Self {
        Self {
            max_channels: 50_000,
            max_variables: 32,
            max_value_bytes: 1024,
            variables: Vec::new(),
            tombstones: 4096,
        }
    }
}

/// A channel as the tracker knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    uniqueid: UniqueId,
    name: String,
    linkedid: Option<UniqueId>,
    state: ChannelState,
    context: Option<String>,
    exten: Option<String>,
    caller_id_num: Option<String>,
    caller_id_name: Option<String>,
    variables: Vec<(String, String)>,
    bridge: Option<BridgeId>,
    dial_peer: Option<UniqueId>,
    dial_status: Option<String>,
    hangup_cause: Option<HangupCause>,
    hangup_text: Option<String>,
    /// Insertion order, for eviction.
    seq: u64,
}

impl Channel {
    fn from_info(info: &ChannelInfo<'_>, seq: u64) -> Self {
        let mut ch = Self {
            uniqueid: UniqueId::new(info.uniqueid),
            name: String::new(),
            linkedid: None,
            state: ChannelState::Down,
            context: None,
            exten: None,
            caller_id_num: None,
            caller_id_name: None,
            variables: Vec::new(),
            bridge: None,
            dial_peer: None,
            dial_status: None,
            hangup_cause: None,
            hangup_text: None,
            seq,
        };
        ch.update(info);
        ch
    }

    /// Takes what the snapshot says; returns the previous state if it
    /// changed.
    fn update(&mut self, info: &ChannelInfo<'_>) -> Option<ChannelState> {
        if self.name != info.channel {
            info.channel.clone_into(&mut self.name);
        }
        let set = |field: &mut Option<String>, value: Option<&str>| {
            if let Some(v) = value
                && field.as_deref() != Some(v)
            {
                *field = Some(v.to_owned());
            }
        };
        if let Some(l) = info.linkedid
            && self.linkedid.as_ref().map(UniqueId::as_str) != Some(l)
        {
            self.linkedid = Some(UniqueId::new(l));
        }
        set(&mut self.context, info.context);
        set(&mut self.exten, info.exten);
        set(&mut self.caller_id_num, info.caller_id_num);
        set(&mut self.caller_id_name, info.caller_id_name);
        match info.state {
            Some(s) if s != self.state => Some(std::mem::replace(&mut self.state, s)),
            _ => None,
        }
    }

    /// `Uniqueid`.
    pub fn uniqueid(&self) -> &UniqueId {
        &self.uniqueid
    }

    /// The channel's name (`PJSIP/trunk-00000001`), as last reported.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `Linkedid`: the unique id of the call's first channel.
    pub fn linkedid(&self) -> Option<&UniqueId> {
        self.linkedid.as_ref()
    }

    /// The state, as last reported.
    pub fn state(&self) -> ChannelState {
        self.state
    }

    /// The dialplan context, as last reported.
    pub fn context(&self) -> Option<&str> {
        self.context.as_deref()
    }

    /// The dialplan extension, as last reported (on an inbound call's first
    /// events, the dialled number).
    pub fn exten(&self) -> Option<&str> {
        self.exten.as_deref()
    }

    /// The caller's number, if known.
    pub fn caller_id_num(&self) -> Option<&str> {
        self.caller_id_num.as_deref()
    }

    /// The caller's name, if known.
    pub fn caller_id_name(&self) -> Option<&str> {
        self.caller_id_name.as_deref()
    }

    /// A variable `VarSet` reported (and the tracker kept).
    pub fn variable(&self, name: &str) -> Option<&str> {
        self.variables
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every kept variable, in the order first set.
    pub fn variables(&self) -> impl Iterator<Item = (&str, &str)> {
        self.variables.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The bridge it is in.
    pub fn bridge(&self) -> Option<&BridgeId> {
        self.bridge.as_ref()
    }

    /// The other side of its last dial: whom it dialled, or who dialled it.
    pub fn dial_peer(&self) -> Option<&UniqueId> {
        self.dial_peer.as_ref()
    }

    /// How the last dial to it ended (`ANSWER`, `BUSY`, ...).
    pub fn dial_status(&self) -> Option<&str> {
        self.dial_status.as_deref()
    }

    /// The hangup cause, once hung up.
    pub fn hangup_cause(&self) -> Option<HangupCause> {
        self.hangup_cause
    }

    /// The hangup cause's text (`Normal Clearing`), once hung up.
    pub fn hangup_text(&self) -> Option<&str> {
        self.hangup_text.as_deref()
    }
}

/// What an event changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelChange {
    /// A channel appeared: from `Newchannel`, or adopted from another
    /// event's snapshot (`adopted`) when it existed before we saw it.
    New {
        /// The channel as first seen.
        channel: Channel,
        /// Whether it came from another event than `Newchannel`.
        adopted: bool,
    },
    /// Its state changed.
    StateChanged {
        /// The channel.
        uniqueid: UniqueId,
        /// Before.
        from: ChannelState,
        /// Now.
        to: ChannelState,
    },
    /// A kept variable got a new value.
    VariableSet {
        /// The channel.
        uniqueid: UniqueId,
        /// The variable.
        name: String,
        /// Its value (cut to the limit).
        value: String,
    },
    /// It joined a bridge.
    BridgeEntered {
        /// The channel.
        uniqueid: UniqueId,
        /// The bridge.
        bridge: BridgeId,
    },
    /// It left a bridge.
    BridgeLeft {
        /// The channel.
        uniqueid: UniqueId,
        /// The bridge.
        bridge: BridgeId,
    },
    /// It hung up and is forgotten; this is its last record, with the cause.
    HungUp {
        /// The channel as it ended.
        channel: Channel,
    },
    /// It was forgotten to make room for a newer one (no hangup seen).
    Evicted {
        /// The channel as it was.
        channel: Channel,
    },
}

/// Counters of a [`ChannelTracker`], for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackerStats {
    /// Channels created from `Newchannel`.
    pub created: u64,
    /// Channels adopted from other events.
    pub adopted: u64,
    /// Hangups seen.
    pub hung_up: u64,
    /// Channels evicted for room.
    pub evicted: u64,
    /// Known events missing essential headers.
    pub malformed: u64,
    /// Variables not kept because a channel had its maximum.
    pub variables_dropped: u64,
    /// Variable values cut to the limit.
    pub values_truncated: u64,
}

/// Channels by unique id, kept from AMI events. See the module docs.
#[derive(Debug)]
pub struct ChannelTracker {
    limits: TrackerLimits,
    channels: HashMap<UniqueId, Channel>,
    /// Insertion order: seq -> id. Oldest first.
    order: BTreeMap<u64, UniqueId>,
    next_seq: u64,
    tombstones: VecDeque<UniqueId>,
    tombstone_set: HashSet<UniqueId>,
    changes: VecDeque<ChannelChange>,
    stats: TrackerStats,
}

impl Default for ChannelTracker {
    fn default() -> Self {
        Self::new(TrackerLimits::default())
    }
}

impl ChannelTracker {
    /// An empty tracker.
    pub fn new(limits: TrackerLimits) -> Self {
        Self {
            limits,
            channels: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            tombstones: VecDeque::new(),
            tombstone_set: HashSet::new(),
            changes: VecDeque::new(),
            stats: TrackerStats::default(),
        }
    }

    /// Takes in one event, in the order Asterisk sent it. Events that say
    /// nothing about channels are ignored. Drain
    /// [`poll_change`](Self::poll_change) afterwards.
    pub fn handle_event(&mut self, event: &Event) {
        let typed = match CallEvent::parse(event) {
            Ok(t) => t,
            Err(_) => {
                self.stats.malformed += 1;
                return;
            }
        };
        match typed {
            CallEvent::Newchannel(info) => {
                self.upsert(&info, false);
            }
            CallEvent::Newstate(info) => {
                self.upsert(&info, true);
            }
            CallEvent::DialBegin { caller, dest, .. } => {
                let dest_known = self.upsert(&dest, true);
                if let Some(caller) = caller
                    && self.upsert(&caller, true)
                {
                    if let Some(c) = self.channels.get_mut(caller.uniqueid) {
                        c.dial_peer = Some(UniqueId::new(dest.uniqueid));
                    }
                    if dest_known && let Some(d) = self.channels.get_mut(dest.uniqueid) {
                        d.dial_peer = Some(UniqueId::new(caller.uniqueid));
                    }
                }
            }
            CallEvent::DialEnd {
                caller,
                dest,
                dial_status,
            } => {
                if self.upsert(&dest, true)
                    && let Some(d) = self.channels.get_mut(dest.uniqueid)
                {
                    d.dial_status = dial_status.map(str::to_owned);
                }
                if let Some(caller) = caller {
                    self.upsert(&caller, true);
                }
            }
            CallEvent::Hangup {
                channel,
                cause,
                cause_txt,
            } => self.hang_up(&channel, cause, cause_txt),
            CallEvent::BridgeEnter { bridge, channel } => {
                if self.upsert(&channel, true)
                    && let Some(c) = self.channels.get_mut(channel.uniqueid)
                {
                    let bridge = BridgeId::new(bridge.uniqueid);
                    c.bridge = Some(bridge.clone());
                    self.changes.push_back(ChannelChange::BridgeEntered {
                        uniqueid: c.uniqueid.clone(),
                        bridge,
                    });
                }
            }
            CallEvent::BridgeLeave { bridge, channel } => {
                if self.upsert(&channel, true)
                    && let Some(c) = self.channels.get_mut(channel.uniqueid)
                {
                    if c.bridge.as_ref().map(BridgeId::as_str) == Some(bridge.uniqueid) {
                        c.bridge = None;
                    }
                    self.changes.push_back(ChannelChange::BridgeLeft {
                        uniqueid: c.uniqueid.clone(),
                        bridge: BridgeId::new(bridge.uniqueid),
                    });
                }
            }
            CallEvent::VarSet {
                channel: Some(channel),
                variable,
                value,
            } => {
                if self.upsert(&channel, true) {
                    self.set_variable(channel.uniqueid, variable, value);
                }
            }
            CallEvent::VarSet { channel: None, .. }
            | CallEvent::FullyBooted { .. }
            | CallEvent::Other(_) => {}
        }
    }

    /// The next change, oldest first.
    pub fn poll_change(&mut self) -> Option<ChannelChange> {
        self.changes.pop_front()
    }

    /// A live channel.
    pub fn channel(&self, uniqueid: &str) -> Option<&Channel> {
        self.channels.get(uniqueid)
    }

    /// Every live channel, in no particular order.
    pub fn channels(&self) -> impl Iterator<Item = &Channel> {
        self.channels.values()
    }

    /// How many live channels.
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// Forgets a channel that is known to be gone (reconciliation after a
    /// reconnect); later events for it are ignored like after a hangup.
    pub fn remove(&mut self, uniqueid: &str) -> Option<Channel> {
        let ch = self.channels.remove(uniqueid)?;
        self.order.remove(&ch.seq);
        self.tombstone(ch.uniqueid.clone());
        Some(ch)
    }

    /// The counters.
    pub fn stats(&self) -> TrackerStats {
        self.stats
    }

    /// Creates or updates the channel of a snapshot. Returns whether it is
    /// live now (false for a hung-up id).
    fn upsert(&mut self, info: &ChannelInfo<'_>, adopted: bool) -> bool {
        if self.tombstone_set.contains(info.uniqueid) {
            return false;
        }
        if let Some(ch) = self.channels.get_mut(info.uniqueid) {
            if let Some(from) = ch.update(info) {
                self.changes.push_back(ChannelChange::StateChanged {
                    uniqueid: ch.uniqueid.clone(),
                    from,
                    to: ch.state,
                });
            }
            return true;
        }
        self.make_room();
        let seq = self.next_seq;
        self.next_seq += 1;
        let ch = Channel::from_info(info, seq);
        if adopted {
            self.stats.adopted += 1;
        } else {
            self.stats.created += 1;
        }
        self.order.insert(seq, ch.uniqueid.clone());
        self.changes.push_back(ChannelChange::New {
            channel: ch.clone(),
            adopted,
        });
        self.channels.insert(ch.uniqueid.clone(), ch);
        true
    }

    fn make_room(&mut self) {
        while self.channels.len() >= self.limits.max_channels.max(1) {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some(channel) = self.channels.remove(oldest.as_str()) {
                self.stats.evicted += 1;
                self.changes.push_back(ChannelChange::Evicted { channel });
            }
        }
    }

    fn hang_up(
        &mut self,
        info: &ChannelInfo<'_>,
        cause: Option<HangupCause>,
        cause_txt: Option<&str>,
    ) {
        if self.tombstone_set.contains(info.uniqueid) {
            return;
        }
        let mut channel = match self.channels.remove(info.uniqueid) {
            Some(ch) => {
                self.order.remove(&ch.seq);
                ch
            }
            // Never seen alive: report its end all the same.
            None => Channel::from_info(info, u64::MAX),
        };
        channel.update(info);
        channel.hangup_cause = cause;
        channel.hangup_text = cause_txt.map(str::to_owned);
        self.stats.hung_up += 1;
        self.tombstone(channel.uniqueid.clone());
        self.changes.push_back(ChannelChange::HungUp { channel });
    }

    fn tombstone(&mut self, id: UniqueId) {
        if self.limits.tombstones == 0 || self.tombstone_set.contains(&id) {
            return;
        }
        if self.tombstones.len() >= self.limits.tombstones
            && let Some(old) = self.tombstones.pop_front()
        {
            self.tombstone_set.remove(&old);
        }
        self.tombstone_set.insert(id.clone());
        self.tombstones.push_back(id);
    }

    fn set_variable(&mut self, uniqueid: &str, name: &str, value: &str) {
        if !self.limits.variables.is_empty() && !self.limits.variables.iter().any(|v| v == name) {
            return;
        }
        let Some(ch) = self.channels.get_mut(uniqueid) else {
            return;
        };
        let mut cut = value.len().min(self.limits.max_value_bytes);
        while !value.is_char_boundary(cut) {
            cut -= 1;
        }
        if cut < value.len() {
            self.stats.values_truncated += 1;
        }
        let value = &value[..cut];
        match ch.variables.iter().position(|(n, _)| n == name) {
            Some(i) if ch.variables[i].1 == value => return,
            Some(i) => value.clone_into(&mut ch.variables[i].1),
            None if ch.variables.len() >= self.limits.max_variables => {
                self.stats.variables_dropped += 1;
                return;
            }
            None => ch.variables.push((name.to_owned(), value.to_owned())),
        }
        self.changes.push_back(ChannelChange::VariableSet {
            uniqueid: ch.uniqueid.clone(),
            name: name.to_owned(),
            value: value.to_owned(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ami::proto::{Message, Parser};

    const INBOUND: &[u8] =
        include_bytes!("../../tests/fixtures/ami/asterisk22_inbound_call_events.txt");

    fn recorded() -> Vec<Event> {
        let mut p = Parser::default();
        p.handle_bytes(INBOUND);
        std::iter::from_fn(|| p.poll_message())
            .filter_map(|m| match m.expect("fixture parses") {
                Message::Event(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    fn feed(t: &mut ChannelTracker, events: &[Event]) -> Vec<ChannelChange> {
        let mut out = Vec::new();
        for e in events {
            t.handle_event(e);
            while let Some(c) = t.poll_change() {
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn recorded_call_lifecycle() {
        let mut t = ChannelTracker::default();
        let changes = feed(&mut t, &recorded());

        let new: Vec<(&str, bool)> = changes
            .iter()
            .filter_map(|c| match c {
                ChannelChange::New { channel, adopted } => {
                    Some((channel.uniqueid().as_str(), *adopted))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            new,
            [
                ("1795626314.33", false),
                ("1795626314.34", false),
                ("1795626314.35", false)
            ]
        );
        let ChannelChange::New {
            channel: inbound, ..
        } = &changes[1]
        else {
            panic!()
        };
        assert_eq!(inbound.name(), "Local/s@to-stasis-0000000e;2");
        assert_eq!(inbound.state(), ChannelState::Ring);
        assert_eq!(inbound.context(), Some("to-stasis"));
        assert_eq!(inbound.exten(), Some("s"));
        assert_eq!(inbound.linkedid().unwrap().as_str(), "1795626314.33");

        let ups: Vec<&str> = changes
            .iter()
            .filter_map(|c| match c {
                ChannelChange::StateChanged {
                    uniqueid,
                    to: ChannelState::Up,
                    ..
                } => Some(uniqueid.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(ups, ["1795626314.34", "1795626314.33", "1795626314.35"]);

        assert!(changes.contains(&ChannelChange::VariableSet {
            uniqueid: UniqueId::new("1795626314.35"),
            name: "UNICASTRTP_LOCAL_PORT".into(),
            value: "10028".into(),
        }));
        let bridge = BridgeId::new("c11394f2-2aae-41ee-b742-93692ddee3eb");
        assert!(changes.contains(&ChannelChange::BridgeEntered {
            uniqueid: UniqueId::new("1795626314.35"),
            bridge: bridge.clone(),
        }));

        let hung: Vec<&Channel> = changes
            .iter()
            .filter_map(|c| match c {
                ChannelChange::HungUp { channel } => Some(channel),
                _ => None,
            })
            .collect();
        assert_eq!(hung.len(), 3);
        for ch in &hung {
            assert_eq!(ch.hangup_cause(), Some(HangupCause::NORMAL_CLEARING));
            assert_eq!(ch.hangup_text(), Some("Normal Clearing"));
        }
        let rtp = hung
            .iter()
            .find(|c| c.uniqueid().as_str() == "1795626314.35")
            .unwrap();
        assert_eq!(rtp.variable("UNICASTRTP_LOCAL_ADDRESS"), Some("127.0.0.1"));
        assert_eq!(rtp.variable("STASISSTATUS"), Some("SUCCESS"));
        assert_eq!(rtp.bridge(), None, "left the bridge before hanging up");
        assert_eq!(rtp.linkedid().unwrap().as_str(), "1795626314.33");
        let originated = hung
            .iter()
            .find(|c| c.uniqueid().as_str() == "1795626314.33")
            .unwrap();
        assert_eq!(originated.dial_status(), Some("ANSWER"));
        assert_eq!(originated.context(), Some("tone-source"));

        // The NewCallerid after .33's Hangup does not resurrect it.
        assert!(t.is_empty());
        assert_eq!(
            t.stats(),
            TrackerStats {
                created: 3,
                hung_up: 3,
                ..TrackerStats::default()
            }
        );
    }

    #[test]
    fn channels_seen_mid_call_are_adopted() {
        let events = recorded();
        // Start listening after the three Newchannel events went by.
        let late: Vec<Event> = events
            .iter()
            .filter(|e| !e.is("Newchannel"))
            .cloned()
            .collect();
        let mut t = ChannelTracker::default();
        let changes = feed(&mut t, &late);
        let adopted = changes
            .iter()
            .filter(|c| matches!(c, ChannelChange::New { adopted: true, .. }))
            .count();
        assert_eq!(adopted, 3);
        assert!(t.is_empty());
        assert_eq!(t.stats().hung_up, 3);
    }

    #[test]
    fn variables_are_filtered_bounded_and_cut() {
        let mut t = ChannelTracker::new(TrackerLimits {
            max_variables: 2,
            max_value_bytes: 4,
            variables: vec!["A".into(), "B".into(), "C".into()],
            ..TrackerLimits::default()
        });
        let ch = [("Channel", "PJSIP/x-1"), ("Uniqueid", "9.1")];
        let var = |name: &str, value: &str| {
            Event::new(
                "VarSet",
                ch.iter()
                    .copied()
                    .chain([("Variable", name), ("Value", value)]),
            )
        };
        let changes = feed(
            &mut t,
            &[
                Event::new("Newchannel", ch),
                var("A", "1"),
                var("IGNORED", "x"),
                var("B", "2"),
                var("C", "3"),
                var("A", "1"),
                var("A", "ünïcode"),
            ],
        );
        let c = t.channel("9.1").unwrap();
        assert_eq!(c.variables().collect::<Vec<_>>(), [("A", "ün"), ("B", "2")]);
        assert_eq!(t.stats().variables_dropped, 1);
        assert_eq!(t.stats().values_truncated, 1);
        let sets = changes
            .iter()
            .filter(|c| matches!(c, ChannelChange::VariableSet { .. }))
            .count();
        assert_eq!(sets, 3, "A, B, then A's new value; repeats are no change");
    }

    #[test]
    fn oldest_channel_is_evicted_at_the_cap() {
        let mut t = ChannelTracker::new(TrackerLimits {
            max_channels: 2,
            ..TrackerLimits::default()
        });
        let new = |id: &str| Event::new("Newchannel", [("Channel", "X/y"), ("Uniqueid", id)]);
        let changes = feed(&mut t, &[new("1.1"), new("1.2"), new("1.3")]);
        assert_eq!(t.len(), 2);
        assert!(t.channel("1.1").is_none());
        assert_eq!(t.stats().evicted, 1);
        assert!(changes.iter().any(|c| matches!(
            c,
            ChannelChange::Evicted { channel } if channel.uniqueid().as_str() == "1.1"
        )));
    }

    #[test]
    fn dial_links_both_sides_and_hangup_of_unknown_is_reported_once() {
        let mut t = ChannelTracker::default();
        let dial = Event::new(
            "DialBegin",
            [
                ("Channel", "PJSIP/trunk-1"),
                ("Uniqueid", "5.1"),
                ("DestChannel", "PJSIP/bob-2"),
                ("DestUniqueid", "5.2"),
            ],
        );
        let hangup = Event::new(
            "Hangup",
            [("Channel", "PJSIP/z"), ("Uniqueid", "7.7"), ("Cause", "17")],
        );
        let changes = feed(&mut t, &[dial, hangup.clone(), hangup]);
        assert_eq!(
            t.channel("5.1").unwrap().dial_peer().unwrap().as_str(),
            "5.2"
        );
        assert_eq!(
            t.channel("5.2").unwrap().dial_peer().unwrap().as_str(),
            "5.1"
        );
        let hung: Vec<_> = changes
            .iter()
            .filter_map(|c| match c {
                ChannelChange::HungUp { channel } => Some(channel.hangup_cause()),
                _ => None,
            })
            .collect();
        assert_eq!(hung, [Some(HangupCause::USER_BUSY)]);
        assert_eq!(t.stats().malformed, 0);
        t.handle_event(&Event::new("Newstate", [("Channel", "no id")]));
        assert_eq!(t.stats().malformed, 1);
    }

    #[test]
    fn removed_channels_stay_gone() {
        let mut t = ChannelTracker::default();
        let new = Event::new("Newchannel", [("Channel", "X/y"), ("Uniqueid", "3.3")]);
        feed(&mut t, std::slice::from_ref(&new));
        assert!(t.remove("3.3").is_some());
        let changes = feed(
            &mut t,
            &[Event::new(
                "Newstate",
                [
                    ("Channel", "X/y"),
                    ("Uniqueid", "3.3"),
                    ("ChannelState", "6"),
                ],
            )],
        );
        assert!(changes.is_empty());
        assert!(t.is_empty());
    }
}
