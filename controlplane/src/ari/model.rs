//! What the control plane reads from ARI, as serde types: channels,
//! bridges, recordings, `/asterisk/info`, and the WebSocket events as one
//! enum, [`AriEvent`].
//!
//! Written from Asterisk 22's own API description (`channels.json`,
//! `bridges.json`, `recordings.json`, `asterisk.json`, `events.json`) and
//! from what a real Asterisk 22.10.1 sent. Lenient on purpose, so one type
//! reads Asterisk 18 to 22: unknown fields are ignored, and fields that are
//! "required" in 22 but absent in older versions (`protocol_id`, the
//! dialplan's `app_name`/`app_data`, a bridge's `creator`, `video_mode` and
//! `creationtime`) default. An event type this module does not model is
//! [`AriEvent::Unknown`], never an error; only a modelled event missing what
//! it cannot do without (a `StasisStart` without its channel) fails to
//! parse.
//!
//! Timestamps stay Asterisk's text (`2026-11-25T17:05:06.196+0000`, not
//! RFC 3339: the offset has no colon). No IO here.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// An Asterisk channel's unique id (`1795626306.28`), as ARI names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChannelId(String);

/// An Asterisk bridge's id (a UUID unless we chose one).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BridgeId(String);

/// A time as Asterisk writes it in ARI (`2026-11-25T17:05:06.196+0000`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AriTimestamp(String);

macro_rules! string_newtype {
    ($($t:ident),*) => {$(
        impl $t {
            /// Wraps a value.
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }

            /// The text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $t {
            fn from(value: &str) -> Self {
                Self(value.to_owned())
            }
        }

        impl From<String> for $t {
            fn from(value: String) -> Self {
                Self(value)
            }
        }
    )*};
}

string_newtype!(ChannelId, BridgeId, AriTimestamp);

/// A channel (`Channel` in `channels.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    /// Unique id.
    pub id: ChannelId,
    /// Name (`PJSIP/alice-00000001`, `UnicastRTP/127.0.0.1:40000-0x7f...`).
    pub name: String,
    /// State.
    pub state: ChannelState,
    /// Caller id.
    #[serde(default)]
    pub caller: CallerId,
    /// Connected line.
    #[serde(default)]
    pub connected: CallerId,
    /// Account code.
    #[serde(default)]
    pub accountcode: String,
    /// Where the channel is in the dialplan.
    #[serde(default)]
    pub dialplan: Dialplan,
    /// When it was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creationtime: Option<AriTimestamp>,
    /// Its language (`en`).
    #[serde(default)]
    pub language: String,
    /// Channel variables Asterisk chose to include: on externalMedia
    /// channels `UNICASTRTP_LOCAL_ADDRESS` and `UNICASTRTP_LOCAL_PORT`, and
    /// whatever `ari.conf`'s `channelvars` lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channelvars: Option<BTreeMap<String, String>>,
    /// The protocol's call id (SIP Call-ID); absent before Asterisk 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_id: Option<String>,
    /// The redirecting number, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_rdnis: Option<String>,
    /// Asterisk's tenant id (22 and later), when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenantid: Option<String>,
}

/// A channel's state as ARI names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChannelState {
    /// Created, nothing else done.
    Down,
    /// Reserved (PRI).
    Rsrved,
    /// Off hook.
    OffHook,
    /// Digits being dialled.
    Dialing,
    /// Inbound, ringing at us: calls from the dialplan enter Stasis so.
    Ring,
    /// Outbound, ringing at the far end.
    Ringing,
    /// Answered.
    Up,
    /// Busy.
    Busy,
    /// Dialing, off hook.
    #[serde(rename = "Dialing Offhook")]
    DialingOffhook,
    /// Before ringing.
    #[serde(rename = "Pre-ring")]
    PreRing,
    /// `Unknown`, or anything else (Asterisk writes `Unknown (N)` for
    /// states it cannot name).
    #[serde(other)]
    Unknown,
}

/// A caller id: name and number, either possibly empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallerId {
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Number.
    #[serde(default)]
    pub number: String,
}

/// Where a channel is in the dialplan (`DialplanCEP`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dialplan {
    /// Context: the usual basis for the tenant.
    #[serde(default)]
    pub context: String,
    /// Extension.
    #[serde(default)]
    pub exten: String,
    /// Priority.
    #[serde(default)]
    pub priority: i64,
    /// The application running (`Stasis`); absent in old versions.
    #[serde(default)]
    pub app_name: String,
    /// Its arguments (`mediagw,inbound`).
    #[serde(default)]
    pub app_data: String,
}

/// A bridge (`Bridge` in `bridges.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bridge {
    /// Id.
    pub id: BridgeId,
    /// Technology (`simple_bridge`, `softmix`).
    #[serde(default)]
    pub technology: String,
    /// `mixing` or `holding`.
    #[serde(default)]
    pub bridge_type: String,
    /// `stasis` for bridges ARI made.
    #[serde(default)]
    pub bridge_class: String,
    /// Who made it (`Stasis`).
    #[serde(default)]
    pub creator: String,
    /// The name given at creation.
    #[serde(default)]
    pub name: String,
    /// The channels in it now.
    #[serde(default)]
    pub channels: Vec<ChannelId>,
    /// `talker`, `sfu` or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video_mode: Option<String>,
    /// The video source, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video_source_id: Option<String>,
    /// When it was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creationtime: Option<AriTimestamp>,
}

/// A recording in progress (`LiveRecording`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveRecording {
    /// Its name: also the stored recording's name.
    pub name: String,
    /// File format (`wav`).
    pub format: String,
    /// What is recorded (`bridge:<id>`, `channel:<id>`).
    #[serde(default)]
    pub target_uri: String,
    /// State.
    pub state: RecordingState,
    /// Length in seconds, once done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<u64>,
    /// Seconds of talking, when Asterisk measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub talking_duration: Option<u64>,
    /// Seconds of silence, when Asterisk measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silence_duration: Option<u64>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

/// A live recording's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordingState {
    /// Asked for, not started.
    Queued,
    /// Recording.
    Recording,
    /// Paused.
    Paused,
    /// Finished: the file is stored.
    Done,
    /// Failed.
    Failed,
    /// Cancelled: the file is gone.
    Canceled,
    /// Anything newer.
    #[serde(other)]
    Unknown,
}

/// A finished recording on Asterisk's disk (`StoredRecording`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRecording {
    /// Name.
    pub name: String,
    /// Format.
    pub format: String,
}

/// `GET /asterisk/info`: who we talk to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AsteriskInfo {
    /// Version and entity id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<SystemInfo>,
    /// Start and reload times: a changed `startup_time` means Asterisk
    /// restarted and every channel we knew is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusInfo>,
}

/// `system` of [`AsteriskInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemInfo {
    /// `22.10.1`.
    pub version: String,
    /// The server's entity id (a MAC address); events carry it as
    /// `asterisk_id`.
    pub entity_id: String,
}

/// `status` of [`AsteriskInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// When Asterisk started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_time: Option<AriTimestamp>,
    /// When its configuration was last reloaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reload_time: Option<AriTimestamp>,
}

/// What every event carries (`Message` and `Event` in `events.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCommon {
    /// When Asterisk raised it.
    pub timestamp: AriTimestamp,
    /// The Stasis application it was sent to.
    pub application: String,
    /// The sending Asterisk's entity id, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asterisk_id: Option<String>,
}

/// A channel entered the application: a call to handle, or one of our own
/// channels (externalMedia, originated) arriving.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StasisStart {
    /// Common fields.
    #[serde(flatten)]
    pub common: EventCommon,
    /// The `Stasis(app,arg1,arg2)` arguments (or originate's `appArgs`).
    #[serde(default)]
    pub args: Vec<String>,
    /// The channel.
    pub channel: Channel,
    /// The channel it replaces (after a masquerade or transfer).
    #[serde(default)]
    pub replace_channel: Option<Channel>,
}

/// An event whose only payload is a channel: `StasisEnd`,
/// `ChannelStateChange`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChannelEvent {
    /// Common fields.
    #[serde(flatten)]
    pub common: EventCommon,
    /// The channel.
    pub channel: Channel,
}

/// A channel is gone.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChannelDestroyed {
    /// Common fields.
    #[serde(flatten)]
    pub common: EventCommon,
    /// Q.850 cause (16 = normal clearing).
    pub cause: i32,
    /// Its text (`Normal Clearing`).
    #[serde(default)]
    pub cause_txt: String,
    /// The technology's own cause (a SIP status), when known.
    #[serde(default)]
    pub tech_cause: Option<i32>,
    /// The channel.
    pub channel: Channel,
}

/// Someone asked the channel to hang up.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChannelHangupRequest {
    /// Common fields.
    #[serde(flatten)]
    pub common: EventCommon,
    /// Q.850 cause, when given.
    #[serde(default)]
    pub cause: Option<i32>,
    /// The technology's own cause, when given.
    #[serde(default)]
    pub tech_cause: Option<i32>,
    /// Whether it was a soft hangup request.
    #[serde(default)]
    pub soft: Option<bool>,
    /// The channel.
    pub channel: Channel,
}

/// A variable was set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChannelVarset {
    /// Common fields.
    #[serde(flatten)]
    pub common: EventCommon,
    /// Its name.
    pub variable: String,
    /// Its new value.
    #[serde(default)]
    pub value: String,
    /// The channel; absent for global variables.
    #[serde(default)]
    pub channel: Option<Channel>,
}

/// A channel entered a bridge.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChannelEnteredBridge {
    /// Common fields.
    #[serde(flatten)]
    pub common: EventCommon,
    /// The bridge, with its channels after the change.
    pub bridge: Bridge,
    /// The channel (optional in `events.json`).
    #[serde(default)]
    pub channel: Option<Channel>,
}

/// A channel left a bridge.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChannelLeftBridge {
    /// Common fields.
    #[serde(flatten)]
    pub common: EventCommon,
    /// The bridge, with its channels after the change.
    pub bridge: Bridge,
    /// The channel.
    pub channel: Channel,
}

/// A bridge was created or destroyed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BridgeEvent {
    /// Common fields.
    #[serde(flatten)]
    pub common: EventCommon,
    /// The bridge.
    pub bridge: Bridge,
}

/// A recording started, finished or failed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RecordingEvent {
    /// Common fields.
    #[serde(flatten)]
    pub common: EventCommon,
    /// The recording.
    pub recording: LiveRecording,
}

/// A dial's progress: `dialstatus` empty when it begins, then `ANSWER`,
/// `BUSY`, `NOANSWER`, ...
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Dial {
    /// Common fields.
    #[serde(flatten)]
    pub common: EventCommon,
    /// The calling channel, when there is one.
    #[serde(default)]
    pub caller: Option<Channel>,
    /// The channel dialled.
    pub peer: Channel,
    /// Where the call was forwarded, if it was.
    #[serde(default)]
    pub forward: Option<String>,
    /// The channel the call was forwarded to.
    #[serde(default)]
    pub forwarded: Option<Channel>,
    /// The dial string.
    #[serde(default)]
    pub dialstring: Option<String>,
    /// The status (`""`, `ANSWER`, `BUSY`, ...).
    #[serde(default)]
    pub dialstatus: String,
}

/// An event of a type not modelled here, kept whole.
#[derive(Debug, Clone, PartialEq)]
pub struct UnknownEvent {
    /// Its `type`.
    pub event_type: String,
    /// Common fields, when it has them (a `MissingParams` message has none).
    pub common: Option<EventCommon>,
    /// Its `channel`, when it has one that reads as a [`Channel`]
    /// (`ChannelDialplan`, `ChannelDtmfReceived`, ...).
    pub channel: Option<Channel>,
    /// The whole JSON object.
    pub raw: Value,
}

/// One message from the events WebSocket, by its `type`. Payloads are
/// boxed: the enum moves through channels as one pointer.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum AriEvent {
    /// A channel entered the application.
    StasisStart(Box<StasisStart>),
    /// A channel left the application (hung up, or continued in the
    /// dialplan).
    StasisEnd(Box<ChannelEvent>),
    /// A channel's state changed (`Ring` to `Up` on answer).
    ChannelStateChange(Box<ChannelEvent>),
    /// A channel is gone.
    ChannelDestroyed(Box<ChannelDestroyed>),
    /// A channel was asked to hang up.
    ChannelHangupRequest(Box<ChannelHangupRequest>),
    /// A channel variable was set.
    ChannelVarset(Box<ChannelVarset>),
    /// A channel entered a bridge.
    ChannelEnteredBridge(Box<ChannelEnteredBridge>),
    /// A channel left a bridge.
    ChannelLeftBridge(Box<ChannelLeftBridge>),
    /// A bridge was created.
    BridgeCreated(Box<BridgeEvent>),
    /// A bridge was destroyed.
    BridgeDestroyed(Box<BridgeEvent>),
    /// A recording started.
    RecordingStarted(Box<RecordingEvent>),
    /// A recording finished; the file is stored.
    RecordingFinished(Box<RecordingEvent>),
    /// A recording failed.
    RecordingFailed(Box<RecordingEvent>),
    /// A dial's progress.
    Dial(Box<Dial>),
    /// Any other type.
    Unknown(Box<UnknownEvent>),
}

/// Why a WebSocket message is not an event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventParseError {
    /// Not a JSON object.
    #[error("not a JSON object: {0}")]
    NotJson(#[source] serde_json::Error),
    /// A JSON object without a string `type`.
    #[error("no string `type` field")]
    NoType,
    /// A known type without what it must carry.
    #[error("bad {event_type} event: {source}")]
    Invalid {
        /// The `type`.
        event_type: String,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
}

impl AriEvent {
    /// Parses one WebSocket text message.
    pub fn parse(text: &str) -> Result<Self, EventParseError> {
        let value: Value = serde_json::from_str(text).map_err(EventParseError::NotJson)?;
        Self::from_value(value)
    }

    /// Reads an already parsed JSON value.
    pub fn from_value(value: Value) -> Result<Self, EventParseError> {
        let Some(event_type) = value.get("type").and_then(Value::as_str) else {
            return Err(EventParseError::NoType);
        };
        fn typed<T: serde::de::DeserializeOwned>(
            event_type: &str,
            value: Value,
        ) -> Result<Box<T>, EventParseError> {
            serde_json::from_value(value)
                .map(Box::new)
                .map_err(|source| EventParseError::Invalid {
                    event_type: event_type.to_owned(),
                    source,
                })
        }
        let event_type = event_type.to_owned();
        let t = event_type.as_str();
        Ok(match t {
            "StasisStart" => Self::StasisStart(typed(t, value)?),
            "StasisEnd" => Self::StasisEnd(typed(t, value)?),
            "ChannelStateChange" => Self::ChannelStateChange(typed(t, value)?),
            "ChannelDestroyed" => Self::ChannelDestroyed(typed(t, value)?),
            "ChannelHangupRequest" => Self::ChannelHangupRequest(typed(t, value)?),
            "ChannelVarset" => Self::ChannelVarset(typed(t, value)?),
            "ChannelEnteredBridge" => Self::ChannelEnteredBridge(typed(t, value)?),
            "ChannelLeftBridge" => Self::ChannelLeftBridge(typed(t, value)?),
            "BridgeCreated" => Self::BridgeCreated(typed(t, value)?),
            "BridgeDestroyed" => Self::BridgeDestroyed(typed(t, value)?),
            "RecordingStarted" => Self::RecordingStarted(typed(t, value)?),
            "RecordingFinished" => Self::RecordingFinished(typed(t, value)?),
            "RecordingFailed" => Self::RecordingFailed(typed(t, value)?),
            "Dial" => Self::Dial(typed(t, value)?),
            _ => Self::Unknown(Box::new(UnknownEvent {
                common: EventCommon::deserialize(&value).ok(),
                channel: value
                    .get("channel")
                    .and_then(|c| Channel::deserialize(c).ok()),
                event_type,
                raw: value,
            })),
        })
    }

    /// The event's `type`.
    pub fn event_type(&self) -> &str {
        match self {
            Self::StasisStart(_) => "StasisStart",
            Self::StasisEnd(_) => "StasisEnd",
            Self::ChannelStateChange(_) => "ChannelStateChange",
            Self::ChannelDestroyed(_) => "ChannelDestroyed",
            Self::ChannelHangupRequest(_) => "ChannelHangupRequest",
            Self::ChannelVarset(_) => "ChannelVarset",
            Self::ChannelEnteredBridge(_) => "ChannelEnteredBridge",
            Self::ChannelLeftBridge(_) => "ChannelLeftBridge",
            Self::BridgeCreated(_) => "BridgeCreated",
            Self::BridgeDestroyed(_) => "BridgeDestroyed",
            Self::RecordingStarted(_) => "RecordingStarted",
            Self::RecordingFinished(_) => "RecordingFinished",
            Self::RecordingFailed(_) => "RecordingFailed",
            Self::Dial(_) => "Dial",
            Self::Unknown(u) => &u.event_type,
        }
    }

    /// Timestamp, application and Asterisk id; `None` only for an unknown
    /// message that lacks them.
    pub fn common(&self) -> Option<&EventCommon> {
        Some(match self {
            Self::StasisStart(e) => &e.common,
            Self::StasisEnd(e) | Self::ChannelStateChange(e) => &e.common,
            Self::ChannelDestroyed(e) => &e.common,
            Self::ChannelHangupRequest(e) => &e.common,
            Self::ChannelVarset(e) => &e.common,
            Self::ChannelEnteredBridge(e) => &e.common,
            Self::ChannelLeftBridge(e) => &e.common,
            Self::BridgeCreated(e) | Self::BridgeDestroyed(e) => &e.common,
            Self::RecordingStarted(e) | Self::RecordingFinished(e) | Self::RecordingFailed(e) => {
                &e.common
            }
            Self::Dial(e) => &e.common,
            Self::Unknown(u) => return u.common.as_ref(),
        })
    }

    /// The channel the event is about, if it is about one (for `Dial`, the
    /// peer; for an unknown type, its `channel` field if that reads as one).
    pub fn channel(&self) -> Option<&Channel> {
        match self {
            Self::StasisStart(e) => Some(&e.channel),
            Self::StasisEnd(e) | Self::ChannelStateChange(e) => Some(&e.channel),
            Self::ChannelDestroyed(e) => Some(&e.channel),
            Self::ChannelHangupRequest(e) => Some(&e.channel),
            Self::ChannelVarset(e) => e.channel.as_ref(),
            Self::ChannelEnteredBridge(e) => e.channel.as_ref(),
            Self::ChannelLeftBridge(e) => Some(&e.channel),
            Self::Dial(e) => Some(&e.peer),
            Self::Unknown(u) => u.channel.as_ref(),
            Self::BridgeCreated(_)
            | Self::BridgeDestroyed(_)
            | Self::RecordingStarted(_)
            | Self::RecordingFinished(_)
            | Self::RecordingFailed(_) => None,
        }
    }
}

impl<'de> Deserialize<'de> for AriEvent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Self::from_value(value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &[(&str, &str)] = &[
        (
            "ari-originate",
            include_str!("../../tests/fixtures/ari/ari-originate.events.jsonl"),
        ),
        (
            "ami-inbound",
            include_str!("../../tests/fixtures/ari/ami-inbound.events.jsonl"),
        ),
        (
            "ami-inbound-slin16",
            include_str!("../../tests/fixtures/ari/ami-inbound-slin16.events.jsonl"),
        ),
    ];

    const MODELLED: &[&str] = &[
        "StasisStart",
        "StasisEnd",
        "ChannelStateChange",
        "ChannelDestroyed",
        "ChannelHangupRequest",
        "ChannelVarset",
        "ChannelEnteredBridge",
        "ChannelLeftBridge",
        "BridgeCreated",
        "BridgeDestroyed",
        "RecordingStarted",
        "RecordingFinished",
        "RecordingFailed",
        "Dial",
    ];

    #[test]
    fn every_recorded_event_parses_with_its_type_and_common_fields() {
        let mut seen = BTreeMap::<String, usize>::new();
        for (name, text) in FIXTURES {
            for (n, line) in text.lines().enumerate() {
                let raw: Value = serde_json::from_str(line).unwrap();
                let event =
                    AriEvent::parse(line).unwrap_or_else(|e| panic!("{name} line {}: {e}", n + 1));
                let ty = raw["type"].as_str().unwrap();
                assert_eq!(event.event_type(), ty, "{name} line {}", n + 1);
                assert_eq!(
                    matches!(event, AriEvent::Unknown(_)),
                    !MODELLED.contains(&ty),
                    "{name} line {}: {ty}",
                    n + 1
                );
                let common = event.common().expect("recorded events are Events");
                assert_eq!(common.application, "ai-gw");
                assert_eq!(
                    common.timestamp.as_str(),
                    raw["timestamp"].as_str().unwrap()
                );
                assert_eq!(common.asterisk_id.as_deref(), Some("02:fc:00:00:00:01"));
                if let Some(ch) = raw.get("channel") {
                    let parsed = event.channel().expect("event has a channel");
                    assert_eq!(parsed.id.as_str(), ch["id"].as_str().unwrap());
                    assert_eq!(parsed.name, ch["name"].as_str().unwrap());
                }
                *seen.entry(ty.to_owned()).or_default() += 1;
            }
        }
        // The recordings hold the flow the gateway drives; all of it typed.
        for ty in [
            "StasisStart",
            "StasisEnd",
            "ChannelStateChange",
            "ChannelDestroyed",
            "ChannelHangupRequest",
            "ChannelVarset",
            "ChannelEnteredBridge",
            "ChannelLeftBridge",
            "BridgeDestroyed",
            "RecordingStarted",
            "RecordingFinished",
            "Dial",
        ] {
            assert!(seen.get(ty).copied().unwrap_or(0) > 0, "no {ty} recorded");
        }
    }

    #[test]
    fn recorded_values_land_in_the_right_fields() {
        let text = FIXTURES[1].1;
        let events: Vec<AriEvent> = text.lines().map(|l| AriEvent::parse(l).unwrap()).collect();
        let AriEvent::StasisStart(start) = &events[0] else {
            panic!(
                "ami-inbound starts with StasisStart, got {}",
                events[0].event_type()
            );
        };
        assert_eq!(start.args, ["inbound"]);
        assert_eq!(start.channel.id.as_str(), "1795626314.34");
        assert_eq!(start.channel.state, ChannelState::Ring);
        assert_eq!(start.channel.caller.number, "5551234");
        assert_eq!(start.channel.dialplan.context, "to-stasis");
        assert_eq!(start.channel.dialplan.app_data, "ai-gw,inbound");
        assert_eq!(start.channel.protocol_id.as_deref(), Some(""));
        assert!(start.replace_channel.is_none());

        let destroyed = events
            .iter()
            .find_map(|e| match e {
                AriEvent::ChannelDestroyed(d) => Some(d),
                _ => None,
            })
            .unwrap();
        assert_eq!(
            (destroyed.cause, destroyed.cause_txt.as_str()),
            (16, "Normal Clearing")
        );

        let finished = events
            .iter()
            .find_map(|e| match e {
                AriEvent::RecordingFinished(r) => Some(r),
                _ => None,
            })
            .unwrap();
        assert_eq!(finished.recording.state, RecordingState::Done);
        assert_eq!(finished.recording.duration, Some(2));
        assert!(finished.recording.target_uri.starts_with("bridge:"));

        let entered: Vec<&ChannelEnteredBridge> = events
            .iter()
            .filter_map(|e| match e {
                AriEvent::ChannelEnteredBridge(b) => Some(&**b),
                _ => None,
            })
            .collect();
        assert_eq!(entered[1].bridge.channels.len(), 2);
        assert_eq!(entered[1].bridge.bridge_type, "mixing");

        let hangup = events
            .iter()
            .find_map(|e| match e {
                AriEvent::ChannelHangupRequest(h) => Some(h),
                _ => None,
            })
            .unwrap();
        assert_eq!((hangup.cause, hangup.soft), (Some(32), Some(true)));
    }

    /// One instance of every event `events.json` documents, holding only
    /// its required fields (generated from Asterisk 22's API description).
    #[test]
    fn every_documented_event_parses_from_its_required_fields_alone() {
        let text = include_str!("../../tests/fixtures/ari/events-required-only.jsonl");
        let mut modelled = 0;
        for line in text.lines() {
            let raw: Value = serde_json::from_str(line).unwrap();
            let ty = raw["type"].as_str().unwrap();
            let event = AriEvent::parse(line).unwrap_or_else(|e| panic!("{ty}: {e}"));
            assert_eq!(event.event_type(), ty);
            assert_eq!(event.common().unwrap().application, "x");
            if MODELLED.contains(&ty) {
                modelled += 1;
                assert!(!matches!(event, AriEvent::Unknown(_)), "{ty}");
            } else {
                let AriEvent::Unknown(u) = event else {
                    panic!("{ty} should be Unknown")
                };
                assert_eq!(u.raw, raw);
            }
        }
        assert_eq!(
            modelled,
            MODELLED.len(),
            "each modelled type documented once"
        );
        assert_eq!(text.lines().count(), 45);
    }

    #[test]
    fn asterisk_18_shapes_without_newer_fields() {
        // Asterisk 18: no protocol_id, dialplan without app_name/app_data,
        // bridge without creator, video_mode or creationtime.
        let start = r#"{"type":"StasisStart","timestamp":"2023-01-02T10:00:00.000+0000",
            "args":[],"channel":{"id":"1672653600.1","name":"PJSIP/alice-00000001",
            "state":"Ring","caller":{"name":"","number":"100"},
            "connected":{"name":"","number":""},"accountcode":"",
            "dialplan":{"context":"from-internal","exten":"200","priority":2},
            "creationtime":"2023-01-02T10:00:00.000+0000","language":"en"},
            "application":"mediagw"}"#;
        let AriEvent::StasisStart(s) = AriEvent::parse(start).unwrap() else {
            panic!("StasisStart")
        };
        assert_eq!(s.channel.protocol_id, None);
        assert_eq!(s.channel.dialplan.exten, "200");
        assert_eq!(s.channel.dialplan.app_name, "");
        assert_eq!(s.common.asterisk_id, None);

        let bridge = r#"{"type":"BridgeCreated","timestamp":"t","application":"mediagw",
            "bridge":{"id":"b1","technology":"simple_bridge","bridge_type":"mixing",
            "bridge_class":"stasis","name":"","channels":[]}}"#;
        let AriEvent::BridgeCreated(b) = AriEvent::parse(bridge).unwrap() else {
            panic!("BridgeCreated")
        };
        assert_eq!(b.bridge.id.as_str(), "b1");
        assert_eq!(b.bridge.creationtime, None);
    }

    #[test]
    fn unknown_states_and_types_are_not_errors() {
        let ch: Channel =
            serde_json::from_str(r#"{"id":"1.1","name":"x","state":"Unknown (42)","future":true}"#)
                .unwrap();
        assert_eq!(ch.state, ChannelState::Unknown);
        let pre: Channel =
            serde_json::from_str(r#"{"id":"1.1","name":"x","state":"Pre-ring"}"#).unwrap();
        assert_eq!(pre.state, ChannelState::PreRing);

        let missing = AriEvent::parse(r#"{"type":"MissingParams","params":["app"]}"#).unwrap();
        let AriEvent::Unknown(u) = &missing else {
            panic!("Unknown")
        };
        assert_eq!(u.event_type, "MissingParams");
        assert!(missing.common().is_none());
        assert!(missing.channel().is_none());
    }

    #[test]
    fn malformed_messages_say_why() {
        assert!(matches!(
            AriEvent::parse("not json"),
            Err(EventParseError::NotJson(_))
        ));
        assert!(matches!(
            AriEvent::parse(r#"{"type":5}"#),
            Err(EventParseError::NoType)
        ));
        assert!(matches!(
            AriEvent::parse("[1]"),
            Err(EventParseError::NoType)
        ));
        let e = AriEvent::parse(r#"{"type":"StasisStart","timestamp":"t","application":"a"}"#)
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("bad StasisStart event: missing field"),
            "{e}"
        );
    }

    #[test]
    fn info_reads_version_and_entity_id() {
        let info: AsteriskInfo = serde_json::from_str(
            r#"{"build":{"os":"Linux"},"system":{"version":"22.10.1","entity_id":"02:fc:00:00:00:01"},
                "config":{"name":""},"status":{"startup_time":"2026-11-25T17:00:41.196+0000",
                "last_reload_time":"2026-11-25T17:00:41.196+0000"}}"#,
        )
        .unwrap();
        let system = info.system.unwrap();
        assert_eq!(system.version, "22.10.1");
        assert_eq!(system.entity_id, "02:fc:00:00:00:01");
        assert_eq!(
            info.status.unwrap().startup_time.unwrap().as_str(),
            "2026-11-25T17:00:41.196+0000"
        );
    }
}
