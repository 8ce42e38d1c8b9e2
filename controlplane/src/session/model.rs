//! What a session is: its identity, lifecycle state machine, call details,
//! metadata and events.
//!
//! Sans-IO: nothing here reads the clock or touches a socket. Every change
//! that needs a time takes it as a `now: UnixMs` argument; the tokio drivers
//! around the store read the wall clock and pass it in.
//!
//! The JSON form of [`Session`] and [`SessionEvent`] is stable: field names
//! and enum spellings (`"media_connecting"`, `"state_changed"`) are part of
//! the API and of what Redis holds, so a rolling upgrade across hosts keeps
//! reading what the others wrote. Unknown fields are ignored on reading.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mediagw_shared::ids::{EndpointId, SessionId, TenantId};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Party, Result};

/// A wall-clock instant: milliseconds since the Unix epoch.
///
/// Serialized as a bare number (`1715000000000`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct UnixMs(pub u64);

impl UnixMs {
    /// `self` plus `d`, saturating at the far future.
    #[must_use]
    pub fn saturating_add(self, d: Duration) -> Self {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self(self.0.saturating_add(ms))
    }

    /// `self` minus `d`, saturating at the epoch.
    #[must_use]
    pub fn saturating_sub(self, d: Duration) -> Self {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self(self.0.saturating_sub(ms))
    }

    /// How long after `earlier` this is; zero when it is not after it.
    pub fn saturating_since(self, earlier: Self) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl From<SystemTime> for UnixMs {
    /// Converts a clock reading; instants before the epoch become 0.
    fn from(t: SystemTime) -> Self {
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self(ms)
    }
}

impl fmt::Display for UnixMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// Where a session is in its life.
///
/// ```text
///   New ──> Answered ──> MediaConnecting ──> Active ──> Ending ──> Ended
///    │                        ^   │            │ ^         │
///    └────────────────────────┘   │            └─┘ (media  └──> Failed
///                                 │        re-established)
///   every live state ──> Ending, Ended, Failed
/// ```
///
/// `Ended` and `Failed` are terminal: nothing leaves them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// The call reached us (ARI `StasisStart`); nothing done yet.
    New,
    /// We answered the channel.
    Answered,
    /// A dataplane endpoint and an ARI externalMedia channel are being set
    /// up (first time, or again after the dataplane restarted).
    MediaConnecting,
    /// Bridged; audio flows through the dataplane.
    Active,
    /// The call is being torn down (`StasisEnd`, hangup, or our decision).
    Ending,
    /// Torn down cleanly. Terminal.
    Ended,
    /// Gave up: an error, or abandoned (nobody touched it in time).
    /// Terminal.
    Failed,
}

impl SessionState {
    /// Every state, in lifecycle order.
    pub const ALL: [Self; 7] = [
        Self::New,
        Self::Answered,
        Self::MediaConnecting,
        Self::Active,
        Self::Ending,
        Self::Ended,
        Self::Failed,
    ];

    /// Whether nothing can follow this state.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Ended | Self::Failed)
    }

    /// Whether a call in this state still lives (not terminal).
    pub fn is_live(self) -> bool {
        !self.is_terminal()
    }

    /// Whether a session may go from `self` to `to`. Staying in the same
    /// state is not a transition and is refused.
    pub fn can_become(self, to: Self) -> bool {
        use SessionState::*;
        match (self, to) {
            (Ended | Failed, _) => false,
            (_, Ending | Ended | Failed) => self != to,
            (New, Answered | MediaConnecting) => true,
            (Answered, MediaConnecting) => true,
            (MediaConnecting, Active) => true,
            (Active, MediaConnecting) => true,
            _ => false,
        }
    }

    /// The state's stable name (`"media_connecting"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Answered => "answered",
            Self::MediaConnecting => "media_connecting",
            Self::Active => "active",
            Self::Ending => "ending",
            Self::Ended => "ended",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of a session's history: it entered `state` at `at_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChange {
    /// The state entered.
    pub state: SessionState,
    /// When.
    pub at_ms: UnixMs,
}

/// Who started the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// A caller reached Asterisk and Asterisk handed the call to us.
    Inbound,
    /// We originated the call.
    Outbound,
}

/// Bounds on a session's metadata, so one misbehaving client cannot make a
/// session (and every event and Redis value carrying it) grow without
/// limit.
pub mod limits {
    /// Most metadata entries per session.
    pub const MAX_METADATA_ENTRIES: usize = 32;
    /// Longest metadata key, in bytes.
    pub const MAX_METADATA_KEY: usize = 64;
    /// Longest metadata value, in bytes.
    pub const MAX_METADATA_VALUE: usize = 1024;
    /// Most history entries kept; past it the oldest after the first are
    /// dropped (a call whose media is re-established many times).
    pub const MAX_HISTORY: usize = 64;
    /// Largest JSON form of a whole session a store accepts, in bytes
    /// (final statistics included).
    pub const MAX_SESSION_JSON: usize = 64 * 1024;
}

/// One call as the control plane follows it.
///
/// Build one with [`Session::new`]; move it through its states with
/// [`Session::transition`] (or [`Session::finish`]) and change metadata
/// with [`Session::set_metadata`], so the history and the limits hold.
/// The plain call details are public fields; after changing them call
/// [`Session::mark_updated`].
///
/// `revision` is the store's: [`create`](super::SessionStore::create)
/// stores revision 1, every successful
/// [`update`](super::SessionStore::update) bumps it, and an update carrying
/// an older revision than the stored one is refused (optimistic
/// concurrency).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// The session's id (usually the caller's Asterisk channel id).
    pub id: SessionId,
    /// The tenant the call belongs to.
    pub tenant: TenantId,
    /// Which control plane owns the session (its configured host name).
    pub host: String,
    state: SessionState,
    history: Vec<StateChange>,
    /// When the session was created.
    pub created_at_ms: UnixMs,
    /// When it last changed.
    pub updated_at_ms: UnixMs,
    /// The store's revision (see the type's doc).
    pub revision: u64,
    /// Who started the call.
    pub direction: Direction,
    /// The Asterisk server (its name in configuration) the call is on.
    #[serde(default)]
    pub asterisk: Option<String>,
    /// The caller's ARI channel id.
    #[serde(default)]
    pub channel: Option<String>,
    /// The ARI externalMedia channel id pointing at our endpoint.
    #[serde(default)]
    pub external_channel: Option<String>,
    /// The ARI bridge joining the two channels.
    #[serde(default)]
    pub bridge: Option<String>,
    /// The dataplane endpoint carrying the call's RTP.
    #[serde(default)]
    pub endpoint: Option<EndpointId>,
    /// The endpoint's RTP address (`ip:port`) as given to Asterisk.
    #[serde(default)]
    pub endpoint_addr: Option<String>,
    /// The codec on the externalMedia leg (`"ulaw"`, `"alaw"`, `"slin16"`).
    #[serde(default)]
    pub codec: Option<String>,
    /// The caller id (number) as Asterisk reported it.
    #[serde(default)]
    pub caller: Option<String>,
    /// The number dialed (DID or extension).
    #[serde(default)]
    pub dialed: Option<String>,
    /// The recording's name, when the call is recorded.
    #[serde(default)]
    pub recording: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    /// The endpoint's final RTP statistics, as the dataplane reported them
    /// when the endpoint was released.
    #[serde(default)]
    pub final_stats: Option<serde_json::Value>,
    /// Why the call ended (`"hangup"`, `"abandoned"`, an error's message).
    #[serde(default)]
    pub end_reason: Option<String>,
}

impl Session {
    /// A session that just started: state [`SessionState::New`] at `now`,
    /// revision 0 (not stored yet), no call details.
    pub fn new(
        tenant: TenantId,
        id: SessionId,
        host: impl Into<String>,
        direction: Direction,
        now: UnixMs,
    ) -> Self {
        Self {
            id,
            tenant,
            host: host.into(),
            state: SessionState::New,
            history: vec![StateChange {
                state: SessionState::New,
                at_ms: now,
            }],
            created_at_ms: now,
            updated_at_ms: now,
            revision: 0,
            direction,
            asterisk: None,
            channel: None,
            external_channel: None,
            bridge: None,
            endpoint: None,
            endpoint_addr: None,
            codec: None,
            caller: None,
            dialed: None,
            recording: None,
            metadata: BTreeMap::new(),
            final_stats: None,
            end_reason: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> SessionState {
        self.state
    }

    /// Every state entered, oldest first, with its time.
    pub fn history(&self) -> &[StateChange] {
        &self.history
    }

    /// The metadata (string keys and values, bounded by [`limits`]).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Whether the call still lives (state not terminal).
    pub fn is_live(&self) -> bool {
        self.state.is_live()
    }

    /// When the session entered its terminal state, if it has.
    pub fn ended_at_ms(&self) -> Option<UnixMs> {
        if !self.state.is_terminal() {
            return None;
        }
        self.history
            .iter()
            .rev()
            .find(|c| c.state == self.state)
            .map(|c| c.at_ms)
    }

    /// Moves to `to` at `now` and returns the state left. Refuses (with
    /// [`ErrorKind::Conflict`]) what [`SessionState::can_become`] refuses;
    /// the session is unchanged then.
    ///
    /// A `now` earlier than the last recorded change (the wall clock
    /// stepped back) is recorded as that last change's time, so the history
    /// never goes backwards.
    pub fn transition(&mut self, to: SessionState, now: UnixMs) -> Result<SessionState> {
        let from = self.state;
        if !from.can_become(to) {
            return Err(Error::new(
                ErrorKind::Conflict,
                Party::Internal,
                format!(
                    "session {}/{}: no transition from {from} to {to}",
                    self.tenant, self.id
                ),
            ));
        }
        let last = self.history.last().map_or(self.created_at_ms, |c| c.at_ms);
        let at = now.max(last);
        if self.history.len() >= limits::MAX_HISTORY {
            // Keep the first entry (when the call started); drop the oldest
            // after it.
            self.history.remove(1);
        }
        self.history.push(StateChange {
            state: to,
            at_ms: at,
        });
        self.state = to;
        self.mark_updated(at);
        Ok(from)
    }

    /// Ends the session in `outcome` ([`SessionState::Ended`] or
    /// [`SessionState::Failed`]) with `reason`, unless a reason was set
    /// before. Returns the state left.
    pub fn finish(
        &mut self,
        outcome: SessionState,
        reason: impl Into<String>,
        now: UnixMs,
    ) -> Result<SessionState> {
        if !outcome.is_terminal() {
            return Err(Error::internal(format!(
                "session {}/{}: finish needs a terminal state, not {outcome}",
                self.tenant, self.id
            )));
        }
        let from = self.transition(outcome, now)?;
        if self.end_reason.is_none() {
            self.end_reason = Some(reason.into());
        }
        Ok(from)
    }

    /// Records that the session changed at `now` (after setting call
    /// details). Never moves `updated_at_ms` backwards.
    pub fn mark_updated(&mut self, now: UnixMs) {
        self.updated_at_ms = self.updated_at_ms.max(now);
    }

    /// Sets one metadata entry at `now`. Refuses (with
    /// [`ErrorKind::Invalid`], the client at fault) an empty key, a key or
    /// value with control characters, one longer than [`limits`] allow, or
    /// a new key past [`limits::MAX_METADATA_ENTRIES`].
    pub fn set_metadata(
        &mut self,
        key: impl Into<String>,
        value: impl Into<String>,
        now: UnixMs,
    ) -> Result<()> {
        let (key, value) = (key.into(), value.into());
        check_metadata_entry(&key, &value)?;
        if !self.metadata.contains_key(&key) && self.metadata.len() >= limits::MAX_METADATA_ENTRIES
        {
            return Err(Error::invalid(format!(
                "metadata: at most {} entries per session",
                limits::MAX_METADATA_ENTRIES
            )));
        }
        self.metadata.insert(key, value);
        self.mark_updated(now);
        Ok(())
    }

    /// Removes one metadata entry at `now`; returns its value if it was
    /// there.
    pub fn remove_metadata(&mut self, key: &str, now: UnixMs) -> Option<String> {
        let old = self.metadata.remove(key);
        if old.is_some() {
            self.mark_updated(now);
        }
        old
    }

    /// Checks what a store checks before writing: the history agrees with
    /// the state, the metadata is within [`limits`], the host name is
    /// sane. Returns the JSON to store, at most
    /// [`limits::MAX_SESSION_JSON`] bytes.
    pub fn to_checked_json(&self) -> Result<Vec<u8>> {
        let who = || format!("session {}/{}", self.tenant, self.id);
        if self.history.last().map(|c| c.state) != Some(self.state) {
            return Err(Error::invalid(format!(
                "{}: history does not end in the current state {}",
                who(),
                self.state
            )));
        }
        check_host(&self.host).map_err(|e| e.context(who()))?;
        if self.metadata.len() > limits::MAX_METADATA_ENTRIES {
            return Err(Error::invalid(format!(
                "{}: metadata has {} entries, at most {} allowed",
                who(),
                self.metadata.len(),
                limits::MAX_METADATA_ENTRIES
            )));
        }
        for (k, v) in &self.metadata {
            check_metadata_entry(k, v).map_err(|e| e.context(who()))?;
        }
        let json = serde_json::to_vec(self)
            .map_err(|e| Error::internal(format!("{}: cannot serialize", who())).with_cause(e))?;
        if json.len() > limits::MAX_SESSION_JSON {
            return Err(Error::invalid(format!(
                "{}: {} bytes as JSON, at most {} allowed",
                who(),
                json.len(),
                limits::MAX_SESSION_JSON
            )));
        }
        Ok(json)
    }
}

/// Checks a host name as used in store keys: 1 to 255 bytes of
/// `A-Z a-z 0-9 _ . -`.
pub(crate) fn check_host(host: &str) -> Result<()> {
    let ok = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "host {host:?}: expected 1 to 255 characters of A-Z a-z 0-9 _ . -"
        )))
    }
}

fn check_metadata_entry(key: &str, value: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid("metadata: empty key"));
    }
    if key.len() > limits::MAX_METADATA_KEY {
        return Err(Error::invalid(format!(
            "metadata key {:?}…: {} bytes, at most {} allowed",
            key.chars().take(16).collect::<String>(),
            key.len(),
            limits::MAX_METADATA_KEY
        )));
    }
    if value.len() > limits::MAX_METADATA_VALUE {
        return Err(Error::invalid(format!(
            "metadata {key:?}: value of {} bytes, at most {} allowed",
            value.len(),
            limits::MAX_METADATA_VALUE
        )));
    }
    if key.chars().any(char::is_control) || value.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "metadata {key:?}: control characters are not allowed"
        )));
    }
    Ok(())
}

/// Something that happened to a session, for subscribers of its tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionEvent {
    /// The session's tenant.
    pub tenant: TenantId,
    /// The session.
    pub session: SessionId,
    /// What happened.
    pub kind: SessionEventKind,
    /// When.
    pub at_ms: UnixMs,
    /// Which control plane published it.
    pub host: String,
}

/// What happened to a session.
///
/// JSON: `{"type": "state_changed", "from": "new", "to": "answered"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum SessionEventKind {
    /// The session was created.
    Created {
        /// Its first state.
        state: SessionState,
        /// Who started the call.
        direction: Direction,
    },
    /// It moved between two live states (or from live to `Ending`).
    StateChanged {
        /// The state left.
        from: SessionState,
        /// The state entered.
        to: SessionState,
    },
    /// It reached a terminal state.
    Ended {
        /// `ended` or `failed`.
        state: SessionState,
        /// Why, when known (`"abandoned"` from the reaper).
        reason: Option<String>,
    },
    /// Its metadata changed; the whole new metadata.
    MetadataChanged {
        /// The metadata after the change.
        metadata: BTreeMap<String, String>,
    },
    /// It was deleted from the store.
    Deleted,
}

impl SessionEvent {
    /// An event about `session`, published by `host` at `at`.
    pub fn new(session: &Session, kind: SessionEventKind, host: &str, at: UnixMs) -> Self {
        Self {
            tenant: session.tenant.clone(),
            session: session.id.clone(),
            kind,
            at_ms: at,
            host: host.to_owned(),
        }
    }

    /// `session` was created (at its creation time, by its host).
    pub fn created(session: &Session) -> Self {
        let kind = SessionEventKind::Created {
            state: session.state,
            direction: session.direction,
        };
        Self::new(session, kind, &session.host, session.created_at_ms)
    }

    /// `session` left `from` for its current state (at the last history
    /// entry's time, by its host): [`SessionEventKind::Ended`] when the
    /// current state is terminal, [`SessionEventKind::StateChanged`]
    /// otherwise.
    pub fn transitioned(session: &Session, from: SessionState) -> Self {
        let at = session
            .history
            .last()
            .map_or(session.updated_at_ms, |c| c.at_ms);
        let kind = if session.state.is_terminal() {
            SessionEventKind::Ended {
                state: session.state,
                reason: session.end_reason.clone(),
            }
        } else {
            SessionEventKind::StateChanged {
                from,
                to: session.state,
            }
        };
        Self::new(session, kind, &session.host, at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(now: u64) -> Session {
        Session::new(
            "acme".parse().unwrap(),
            "1715000000.42".parse().unwrap(),
            "gw-1",
            Direction::Inbound,
            UnixMs(now),
        )
    }

    #[test]
    fn the_happy_path_records_every_state_with_its_time() {
        let mut s = session(1_000);
        assert_eq!(
            s.transition(SessionState::Answered, UnixMs(1_010)).unwrap(),
            SessionState::New
        );
        s.transition(SessionState::MediaConnecting, UnixMs(1_020))
            .unwrap();
        s.transition(SessionState::Active, UnixMs(1_030)).unwrap();
        s.transition(SessionState::Ending, UnixMs(1_040)).unwrap();
        s.finish(SessionState::Ended, "hangup", UnixMs(1_050))
            .unwrap();
        let states: Vec<(SessionState, u64)> =
            s.history().iter().map(|c| (c.state, c.at_ms.0)).collect();
        assert_eq!(
            states,
            [
                (SessionState::New, 1_000),
                (SessionState::Answered, 1_010),
                (SessionState::MediaConnecting, 1_020),
                (SessionState::Active, 1_030),
                (SessionState::Ending, 1_040),
                (SessionState::Ended, 1_050),
            ]
        );
        assert_eq!(s.updated_at_ms, UnixMs(1_050));
        assert_eq!(s.ended_at_ms(), Some(UnixMs(1_050)));
        assert_eq!(s.end_reason.as_deref(), Some("hangup"));
    }

    #[test]
    fn terminal_states_admit_nothing_and_refusals_change_nothing() {
        for from in [SessionState::Ended, SessionState::Failed] {
            for to in SessionState::ALL {
                assert!(!from.can_become(to), "{from} -> {to}");
            }
        }
        let mut s = session(5);
        s.finish(SessionState::Failed, "boom", UnixMs(6)).unwrap();
        let before = s.clone();
        let e = s.transition(SessionState::Active, UnixMs(7)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert!(e.message().contains("from failed to active"), "{e}");
        assert_eq!(s, before);
        assert!(s.finish(SessionState::Ending, "x", UnixMs(8)).is_err());
    }

    #[test]
    fn the_transition_table() {
        use SessionState::*;
        let allowed = [
            (New, Answered),
            (New, MediaConnecting),
            (Answered, MediaConnecting),
            (MediaConnecting, Active),
            (Active, MediaConnecting),
        ];
        for from in SessionState::ALL {
            for to in SessionState::ALL {
                let expect = if from.is_terminal() || from == to {
                    false
                } else if matches!(to, Ending | Ended | Failed) {
                    true
                } else {
                    allowed.contains(&(from, to))
                };
                assert_eq!(from.can_become(to), expect, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn clock_steps_back_do_not_reorder_history() {
        let mut s = session(2_000);
        s.transition(SessionState::Answered, UnixMs(1_500)).unwrap();
        assert_eq!(s.history()[1].at_ms, UnixMs(2_000));
        assert_eq!(s.updated_at_ms, UnixMs(2_000));
    }

    #[test]
    fn history_is_bounded_and_keeps_the_start() {
        let mut s = session(0);
        s.transition(SessionState::MediaConnecting, UnixMs(1))
            .unwrap();
        for i in 0..200 {
            s.transition(SessionState::Active, UnixMs(2 + 2 * i))
                .unwrap();
            s.transition(SessionState::MediaConnecting, UnixMs(3 + 2 * i))
                .unwrap();
        }
        assert_eq!(s.history().len(), limits::MAX_HISTORY);
        assert_eq!(s.history()[0].state, SessionState::New);
        assert_eq!(
            s.history().last().unwrap().state,
            SessionState::MediaConnecting
        );
        s.to_checked_json().unwrap();
    }

    #[test]
    fn metadata_is_bounded_with_clear_errors() {
        let mut s = session(0);
        s.set_metadata("lang", "de", UnixMs(3)).unwrap();
        assert_eq!(s.updated_at_ms, UnixMs(3));
        let e = s.set_metadata("", "x", UnixMs(4)).unwrap_err();
        assert_eq!((e.kind(), e.http_status()), (ErrorKind::Invalid, 400));
        let long_key = "k".repeat(limits::MAX_METADATA_KEY + 1);
        assert!(s.set_metadata(long_key, "x", UnixMs(4)).is_err());
        let big = "v".repeat(limits::MAX_METADATA_VALUE + 1);
        let e = s.set_metadata("big", big, UnixMs(4)).unwrap_err();
        assert!(e.message().contains("at most 1024"), "{e}");
        assert!(s.set_metadata("nl", "a\nb", UnixMs(4)).is_err());
        for i in 1..limits::MAX_METADATA_ENTRIES {
            s.set_metadata(format!("k{i}"), "v", UnixMs(5)).unwrap();
        }
        let e = s.set_metadata("one-more", "v", UnixMs(6)).unwrap_err();
        assert!(e.message().contains("at most 32 entries"), "{e}");
        // Replacing an existing key is fine at the limit.
        s.set_metadata("lang", "fr", UnixMs(7)).unwrap();
        assert_eq!(s.remove_metadata("lang", UnixMs(8)).as_deref(), Some("fr"));
        assert_eq!(s.updated_at_ms, UnixMs(8));
    }

    #[test]
    fn checked_json_refuses_oversized_sessions() {
        let mut s = session(0);
        s.final_stats = Some(serde_json::Value::String(
            "x".repeat(limits::MAX_SESSION_JSON),
        ));
        let e = s.to_checked_json().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid);
        let mut s = session(0);
        s.host = "bad host".into();
        assert!(s.to_checked_json().is_err());
    }

    #[test]
    fn json_is_stable() {
        let mut s = session(1_715_000_000_000);
        s.endpoint = Some(EndpointId(0x1a2b));
        s.set_metadata("lang", "de", UnixMs(1_715_000_000_001))
            .unwrap();
        s.transition(SessionState::MediaConnecting, UnixMs(1_715_000_000_002))
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&s.to_checked_json().unwrap()).unwrap();
        assert_eq!(v["id"], "1715000000.42");
        assert_eq!(v["tenant"], "acme");
        assert_eq!(v["state"], "media_connecting");
        assert_eq!(v["history"][1]["state"], "media_connecting");
        assert_eq!(v["history"][1]["at_ms"], 1_715_000_000_002u64);
        assert_eq!(v["direction"], "inbound");
        assert_eq!(v["endpoint"], "ep-1a2b");
        assert_eq!(v["metadata"]["lang"], "de");
        assert_eq!(v["final_stats"], serde_json::Value::Null);
        let back: Session = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);

        let e = SessionEvent::transitioned(&s, SessionState::New);
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "tenant": "acme", "session": "1715000000.42",
                "kind": {"type": "state_changed", "from": "new", "to": "media_connecting"},
                "at_ms": 1_715_000_000_002u64, "host": "gw-1"
            })
        );
    }
}
