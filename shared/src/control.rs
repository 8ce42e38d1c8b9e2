//! The control protocol, version 1: newline-delimited JSON on a Unix socket.
//!
//! The dataplane serves it; the control plane and `mediagwctl` are clients.
//! `docs/control-protocol.md` documents every message with an example; the
//! tests read that file, so the two cannot drift.
//!
//! Sans-IO: types, a [`LineFramer`] fed bytes, parsers and encoders. No
//! sockets, no clock (the caller passes unix milliseconds in).
//!
//! # Server side
//!
//! Feed socket reads to a [`LineFramer`]; for each line call
//! [`parse_request`], check it with a [`Handshake`], act, and answer with
//! [`encode_response`] or [`ProtocolError::to_line`]. Push events with
//! [`encode_event`] to connections whose [`Subscribe`] [`wants`] them.
//!
//! # Client side
//!
//! Send [`encode_request`] lines; parse every line the server sends with
//! [`parse_server_message`]; decode a result with [`decode_reply`], typed by
//! the request's [`Call`].
//!
//! Servers are strict (an unknown field is a `bad_request`: typos from socat
//! should not pass silently); clients are lenient (unknown fields, error
//! codes and events from a newer server are tolerated).
//!
//! Encoding is canonical: fields in declaration order, optional fields left
//! out when absent or at their default, so `encode(parse(line)) == line` for
//! every line the encoders produce (the documentation's examples included).
//!
//! [`wants`]: Subscribe::wants

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::codec::Codec;
use crate::ids::{EndpointId, SessionId, TenantId};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The [`LineFramer`] limit a server puts on request lines: requests are
/// small, 1 MiB leaves room for anything sane.
pub const DEFAULT_MAX_LINE: usize = 1024 * 1024;

/// The [`LineFramer`] limit a client should put on server lines: an
/// `endpoint.list` takes about 250 bytes per endpoint.
pub const DEFAULT_MAX_SERVER_LINE: usize = 64 * 1024 * 1024;

/// The packetization time when `endpoint.create` does not say.
pub const DEFAULT_PTIME_MS: u16 = 20;

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

/// A client request: `{"id": <u64>, "op": "...", ...params}`.
///
/// The id is the client's, echoed in the response; the server does not care
/// whether ids are unique (clients that pipeline should make them so).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Request {
    /// Echoed in the response.
    pub id: u64,
    /// What to do, with its parameters.
    #[serde(flatten)]
    pub op: Op,
}

/// The operations, each with its parameters. The JSON `op` names are in
/// [`Op::NAMES`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "op")]
pub enum Op {
    /// `hello`: the handshake, first on every connection.
    #[serde(rename = "hello")]
    Hello(Hello),
    /// `endpoint.create`: open an RTP endpoint.
    #[serde(rename = "endpoint.create")]
    EndpointCreate(EndpointCreate),
    /// `endpoint.destroy`: close one, answering its final statistics.
    #[serde(rename = "endpoint.destroy")]
    EndpointDestroy(EndpointDestroy),
    /// `endpoint.list`: summaries of all endpoints, or one tenant's.
    #[serde(rename = "endpoint.list")]
    EndpointList(EndpointList),
    /// `endpoint.stats`: one endpoint's full statistics.
    #[serde(rename = "endpoint.stats")]
    EndpointStats(EndpointStatsQuery),
    /// `subscribe`: start (or change) the event push on this connection.
    #[serde(rename = "subscribe")]
    Subscribe(Subscribe),
    /// `unsubscribe`: stop the event push.
    #[serde(rename = "unsubscribe")]
    Unsubscribe(Unsubscribe),
    /// `status`: the dataplane's health and totals.
    #[serde(rename = "status")]
    Status(StatusQuery),
    /// `drain`: refuse new endpoints, keep the existing ones.
    #[serde(rename = "drain")]
    Drain(Drain),
    /// `shutdown`: stop the dataplane.
    #[serde(rename = "shutdown")]
    Shutdown(Shutdown),
}

/// A request type and the type of its successful result.
///
/// Lets a client write `decode_reply::<EndpointCreate>(result)` and get an
/// [`EndpointCreated`].
pub trait Call: Into<Op> {
    /// The `result` of a successful response.
    type Reply: Serialize + DeserializeOwned;
}

/// `hello {version, client}` → [`HelloReply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The protocol version the client speaks ([`PROTOCOL_VERSION`]).
    pub version: u32,
    /// Free text naming the client, for logs: `mediagwctl/0.1.0`.
    pub client: String,
}

/// `endpoint.create {...}` → [`EndpointCreated`].
///
/// Always valid once parsed: the payload type is 0..=127, `ptime_ms` a
/// multiple of 10 in 10..=60, jitter bounds ordered and at most
/// [`JitterBounds::MAX_MS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawEndpointCreate")]
pub struct EndpointCreate {
    /// Whose call.
    pub tenant: TenantId,
    /// Which call.
    pub session: SessionId,
    /// The codec Asterisk sends and expects.
    pub codec: Codec,
    /// RTP payload type; absent: [`Codec::default_payload_type`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_type: Option<u8>,
    /// Outbound packetization; absent: [`DEFAULT_PTIME_MS`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ptime_ms: Option<u16>,
    /// Jitter buffer bounds; absent: the dataplane's configuration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jitter: Option<JitterBounds>,
    /// Open the RTCP port (RTP port + 1) too; absent: `false`.
    #[serde(skip_serializing_if = "is_false")]
    pub rtcp: bool,
    /// Local address to bind; absent: the dataplane's configured address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind_ip: Option<IpAddr>,
}

/// The jitter buffer's target delay bounds, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawJitterBounds")]
pub struct JitterBounds {
    /// Lowest target delay.
    pub min_ms: u16,
    /// Highest target delay; `min_ms <= max_ms <= MAX_MS`.
    pub max_ms: u16,
}

/// `endpoint.destroy {endpoint}` → [`EndpointStats`] (final).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointDestroy {
    /// Which endpoint.
    pub endpoint: EndpointId,
}

/// `endpoint.list {tenant?}` → [`EndpointListing`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointList {
    /// Only this tenant's endpoints; absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
}

/// `endpoint.stats {endpoint}` → [`EndpointStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointStatsQuery {
    /// Which endpoint.
    pub endpoint: EndpointId,
}

/// `subscribe {events?, tenant?}` → [`Done`]; events follow on this
/// connection. A second `subscribe` replaces the first's filter.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscribe {
    /// Only these kinds; absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<EventKind>>,
    /// Only this tenant's endpoints (`draining` is always delivered);
    /// absent: all tenants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
}

/// `unsubscribe` (no parameters) → [`Done`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Unsubscribe;

/// `status` (no parameters) → [`ServerStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct StatusQuery;

/// `drain` (no parameters) → [`Done`]: refuse new endpoints with
/// [`ErrorCode::Draining`], keep serving the existing ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Drain;

/// `shutdown {drain?}` → [`Done`], then the dataplane exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shutdown {
    /// `true` (the default): drain first, exit when the last endpoint is
    /// destroyed. `false`: destroy every endpoint and exit now.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub drain: bool,
}

// ---------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------

/// The result of `hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    /// The protocol version the server speaks.
    pub version: u32,
    /// Free text naming the server: `mediagw-dataplane/0.1.0`.
    pub server: String,
    /// The ops it serves (a newer server may list ops this crate lacks).
    pub ops: Vec<String>,
}

/// The result of `endpoint.create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointCreated {
    /// The new endpoint.
    pub endpoint: EndpointId,
    /// Echoed from the request.
    pub tenant: TenantId,
    /// Echoed from the request.
    pub session: SessionId,
    /// Where Asterisk should send RTP: `ip:port`.
    pub local_addr: SocketAddr,
    /// The RTCP port, when `rtcp` was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtcp_port: Option<u16>,
}

/// The result of `endpoint.list`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EndpointListing {
    /// One per endpoint, in creation order.
    pub endpoints: Vec<EndpointSummary>,
}

/// One line of `endpoint.list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointSummary {
    /// The endpoint.
    pub endpoint: EndpointId,
    /// Whose call.
    pub tenant: TenantId,
    /// Which call.
    pub session: SessionId,
    /// The RTP codec.
    pub codec: Codec,
    /// The local RTP address.
    pub local_addr: SocketAddr,
    /// The latched peer, `null` before the first packet.
    pub peer: Option<SocketAddr>,
    /// Whether media flows.
    pub state: EndpointState,
    /// When it was created, unix ms.
    pub created_at_ms: u64,
    /// RTP packets received.
    pub rx_packets: u64,
    /// Packets lost (RFC 3550 cumulative; negative with duplicates).
    pub lost: i64,
    /// Interarrival jitter, ms.
    pub jitter_ms: f64,
}

/// An endpoint's statistics: the result of `endpoint.stats` and
/// `endpoint.destroy`, and part of `endpoint.destroyed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointStats {
    /// The endpoint.
    pub endpoint: EndpointId,
    /// Whose call.
    pub tenant: TenantId,
    /// Which call.
    pub session: SessionId,
    /// The RTP codec.
    pub codec: Codec,
    /// The local RTP address.
    pub local_addr: SocketAddr,
    /// The latched peer, `null` before the first packet.
    pub peer: Option<SocketAddr>,
    /// Whether media flows.
    pub state: EndpointState,
    /// When it was created, unix ms.
    pub created_at_ms: u64,
    /// First valid RTP packet, unix ms.
    pub first_packet_at_ms: Option<u64>,
    /// Last valid RTP packet, unix ms.
    pub last_packet_at_ms: Option<u64>,
    /// What came in.
    pub rx: RxStats,
    /// The jitter buffer's play-out.
    pub jitter_buffer: JitterBufferStats,
    /// What went out (audio played back into the call).
    pub tx: TxStats,
    /// Media socket subscribers.
    pub tap: TapStats,
    /// The peer's last RTCP reports, when RTCP is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtcp: Option<RtcpSummary>,
}

/// Whether media flows on an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointState {
    /// No packet yet.
    Waiting,
    /// Packets arrive.
    Receiving,
    /// Packets arrived, then stopped for longer than the silence timeout.
    Silent,
}

/// Receive statistics (RFC 3550 A.1, A.8 and our own counters).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RxStats {
    /// Valid RTP packets accepted.
    pub packets: u64,
    /// Their UDP payload bytes.
    pub bytes: u64,
    /// Packets expected from the extended sequence range.
    pub expected: u64,
    /// `expected - packets`: negative when duplicates outnumber losses.
    pub lost: i64,
    /// Fraction lost over the last interval, 0..=1.
    pub fraction_lost: f64,
    /// Packets seen twice.
    pub duplicates: u64,
    /// Packets that arrived after a later one.
    pub reordered: u64,
    /// Packets that arrived too late for the jitter buffer.
    pub late: u64,
    /// Interarrival jitter, ms.
    pub jitter_ms: f64,
    /// The highest jitter seen, ms.
    pub max_jitter_ms: f64,
    /// Current SSRC, `"0x1a2b3c4d"`; `null` before the first packet.
    #[serde(default, with = "hex32_opt")]
    pub ssrc: Option<u32>,
    /// Times the SSRC changed.
    pub ssrc_changes: u64,
    /// Datagrams that were not valid RTP.
    pub malformed: u64,
    /// Packets from an address other than the latched peer.
    pub foreign_source: u64,
    /// Packets with a payload type other than the endpoint's.
    pub wrong_payload_type: u64,
    /// RTCP packets received.
    pub rtcp_packets: u64,
    /// Percentiles of the per-packet transit variation (RFC 3550's |D|),
    /// from kernel receive timestamps; absent before the second packet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transit_ms: Option<TransitPercentiles>,
}

/// Percentiles of a stream's per-packet transit variation, ms (1 %
/// resolution; values of 1 s and more read as 1000).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct TransitPercentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

/// Jitter buffer statistics, in 20 ms frames unless named otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct JitterBufferStats {
    /// Frames played out from packets.
    pub played: u64,
    /// Frames concealed (no packet in time).
    pub concealed: u64,
    /// Packets dropped for arriving after their play-out time.
    pub late_dropped: u64,
    /// Packets dropped because the buffer was full.
    pub overflow_dropped: u64,
    /// Frames of received audio dropped unplayed to shrink the delay (left
    /// out when 0).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub skipped: u64,
    /// Frames synthesized to grow the delay, also counted in `concealed`
    /// (left out when 0).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub inserted: u64,
    /// Delay of the buffer now, ms.
    pub current_delay_ms: u32,
    /// The adaptive target delay, ms.
    pub target_delay_ms: u32,
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

/// Transmit statistics (audio from the media socket into the call).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TxStats {
    /// RTP packets sent.
    pub packets: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// `Play` frames dropped (queue full, no peer yet, wrong rate).
    pub frames_dropped: u64,
}

/// Media socket tap statistics.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TapStats {
    /// Current subscribers.
    pub subscribers: u32,
    /// Frames delivered, summed over subscribers.
    pub frames: u64,
    /// Frames dropped because a subscriber was slow.
    pub overflows: u64,
}

/// The peer's last RTCP reports.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RtcpSummary {
    /// The last sender report from the peer.
    pub last_sr: Option<SenderReportSummary>,
    /// The last receiver report block about our stream.
    pub last_rr: Option<ReceiverReportSummary>,
}

/// A sender report, as received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderReportSummary {
    /// When we received it, unix ms.
    pub received_at_ms: u64,
    /// The sender's SSRC, `"0x1a2b3c4d"`.
    #[serde(with = "hex32")]
    pub ssrc: u32,
    /// Its NTP timestamp as unix ms.
    pub ntp_ms: u64,
    /// Its RTP timestamp.
    pub rtp_ts: u32,
    /// Sender's packet count.
    pub packets: u32,
    /// Sender's octet count.
    pub octets: u32,
}

/// A receiver report block about what we sent, as received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiverReportSummary {
    /// When we received it, unix ms.
    pub received_at_ms: u64,
    /// The reporter's SSRC, `"0x1a2b3c4d"`.
    #[serde(with = "hex32")]
    pub ssrc: u32,
    /// Fraction lost, 0..=1.
    pub fraction_lost: f64,
    /// Cumulative packets lost (24-bit signed on the wire).
    pub cumulative_lost: i32,
    /// Interarrival jitter the peer measured, ms.
    pub jitter_ms: f64,
    /// Round-trip time from LSR/DLSR, ms, when computable.
    pub rtt_ms: Option<f64>,
}

/// The result of `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// The protocol version.
    pub version: u32,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Whether new endpoints are refused.
    pub draining: bool,
    /// One per worker thread.
    pub workers: Vec<WorkerStatus>,
    /// Endpoints open.
    pub endpoints: u64,
    /// Endpoints in [`EndpointState::Receiving`].
    pub streams_receiving: u64,
    /// RTP packets received, all endpoints, since start.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// RTP packets sent, all endpoints, since start.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
}

/// One worker thread in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Worker index.
    pub id: u32,
    /// The core it is pinned to; `null` when unpinned.
    pub core: Option<u32>,
    /// Its event loop.
    pub engine: Engine,
    /// Endpoints placed on it.
    pub endpoints: u64,
    /// Packets per second over the last second.
    pub packets_per_s: u64,
    /// Loop iterations that overran their budget, since start.
    pub loop_overruns: u64,
}

/// A worker's event loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// io_uring with multishot receive (the default).
    IoUring,
    /// epoll, where io_uring is unavailable.
    Epoll,
}

/// The empty result, `{}`, of ops that only succeed or fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Done {}

// ---------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------

/// A server-pushed event: `{"event": "...", "endpoint": ..., "tenant": ...,
/// "at_ms": ..., ...details}`. Sent only after `subscribe`, never with an
/// `id`; it may arrive between a request and its response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event")]
pub enum Event {
    /// `endpoint.receiving`: the first packet, or packets again after
    /// `endpoint.silent`.
    #[serde(rename = "endpoint.receiving")]
    Receiving(ReceivingEvent),
    /// `endpoint.latched`: the peer address was latched (or re-latched).
    #[serde(rename = "endpoint.latched")]
    Latched(LatchedEvent),
    /// `endpoint.silent`: no packet for the silence timeout.
    #[serde(rename = "endpoint.silent")]
    Silent(SilentEvent),
    /// `endpoint.ssrc_changed`: a new RTP source on the same endpoint.
    #[serde(rename = "endpoint.ssrc_changed")]
    SsrcChanged(SsrcChangedEvent),
    /// `endpoint.destroyed`: gone, with final statistics.
    #[serde(rename = "endpoint.destroyed")]
    Destroyed(DestroyedEvent),
    /// `draining`: the dataplane refuses new endpoints from now on.
    #[serde(rename = "draining")]
    Draining(DrainingEvent),
}

/// The kinds of [`Event`], to filter `subscribe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    /// `endpoint.receiving`.
    #[serde(rename = "endpoint.receiving")]
    Receiving,
    /// `endpoint.latched`.
    #[serde(rename = "endpoint.latched")]
    Latched,
    /// `endpoint.silent`.
    #[serde(rename = "endpoint.silent")]
    Silent,
    /// `endpoint.ssrc_changed`.
    #[serde(rename = "endpoint.ssrc_changed")]
    SsrcChanged,
    /// `endpoint.destroyed`.
    #[serde(rename = "endpoint.destroyed")]
    Destroyed,
    /// `draining`.
    #[serde(rename = "draining")]
    Draining,
}

/// `endpoint.receiving`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceivingEvent {
    /// The endpoint.
    pub endpoint: EndpointId,
    /// Its tenant.
    pub tenant: TenantId,
    /// Unix ms.
    pub at_ms: u64,
    /// Where the packets come from.
    pub peer: SocketAddr,
    /// Their SSRC, `"0x1a2b3c4d"`.
    #[serde(with = "hex32")]
    pub ssrc: u32,
}

/// `endpoint.latched`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatchedEvent {
    /// The endpoint.
    pub endpoint: EndpointId,
    /// Its tenant.
    pub tenant: TenantId,
    /// Unix ms.
    pub at_ms: u64,
    /// The latched peer.
    pub peer: SocketAddr,
    /// The peer before, on a re-latch; `null` on the first latch.
    pub previous: Option<SocketAddr>,
}

/// `endpoint.silent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SilentEvent {
    /// The endpoint.
    pub endpoint: EndpointId,
    /// Its tenant.
    pub tenant: TenantId,
    /// Unix ms.
    pub at_ms: u64,
    /// Last valid packet, unix ms.
    pub last_packet_at_ms: u64,
}

/// `endpoint.ssrc_changed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SsrcChangedEvent {
    /// The endpoint.
    pub endpoint: EndpointId,
    /// Its tenant.
    pub tenant: TenantId,
    /// Unix ms.
    pub at_ms: u64,
    /// The SSRC before, `"0x1a2b3c4d"`.
    #[serde(with = "hex32")]
    pub old_ssrc: u32,
    /// The SSRC now.
    #[serde(with = "hex32")]
    pub new_ssrc: u32,
}

/// `endpoint.destroyed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DestroyedEvent {
    /// The endpoint.
    pub endpoint: EndpointId,
    /// Its tenant.
    pub tenant: TenantId,
    /// Unix ms.
    pub at_ms: u64,
    /// Why.
    pub reason: DestroyReason,
    /// Final statistics.
    pub stats: Box<EndpointStats>,
}

/// Why an endpoint was destroyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DestroyReason {
    /// An `endpoint.destroy` request.
    Requested,
    /// A `shutdown` without drain.
    Shutdown,
    /// A reason this build does not know (a newer server).
    #[serde(other)]
    Other,
}

/// `draining`: no endpoint, no tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainingEvent {
    /// Unix ms.
    pub at_ms: u64,
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// What went wrong, on the wire as a snake_case string. Each code knows who
/// is at fault and whether retrying the same request can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The line is not JSON. The id is `null`.
    BadJson,
    /// The line exceeds the server's limit; it was discarded. Id `null`.
    LineTooLong,
    /// JSON with an id, but an `op` this server does not serve.
    UnknownOp,
    /// A known op with a missing, unknown or invalid field (the message
    /// is serde's), or JSON that is not a request object.
    BadRequest,
    /// A request other than `hello` before the handshake.
    HandshakeRequired,
    /// `hello` with a version the server does not speak; the connection
    /// stays open for another `hello`.
    VersionMismatch,
    /// No such endpoint (never was, or already destroyed).
    UnknownEndpoint,
    /// No free port in the tenant's range.
    PortExhausted,
    /// The dataplane is draining and refuses new endpoints.
    Draining,
    /// The dataplane has no port range for that tenant.
    TenantUnknown,
    /// A failure inside the dataplane (a worker did not answer in time).
    Internal,
    /// A code this build does not know (from a newer server). Clients
    /// only: trust the body's `retryable`.
    #[serde(other)]
    Unrecognized,
}

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The client sent something wrong: fix the request.
    Client,
    /// The server could not serve a valid request.
    Server,
}

/// The `error` object of a failed response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub code: ErrorCode,
    /// For humans; not stable.
    pub message: String,
    /// Whether retrying the same request later (or elsewhere) can succeed.
    pub retryable: bool,
    /// Structured details for some codes (`version_mismatch`:
    /// `{"server_version": 1, "client_version": 2}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

/// A request the server refuses: the id when it could be read, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct ProtocolError {
    /// The request's id, `None` when the line had none that could be read.
    pub id: Option<u64>,
    /// What to answer.
    pub error: ErrorBody,
}

/// A line from the server that is not a valid server message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidServerMessage(pub String);

/// A line longer than the [`LineFramer`]'s limit. It has been (or is being)
/// discarded; the next line is unaffected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineTooLong {
    /// The limit, in bytes, without the newline.
    pub max: usize,
}

// ---------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------

/// Parses one request line (a trailing `\n` or `\r\n` is fine). Never panics.
///
/// Errors, in the order they are checked:
/// - not JSON → [`ErrorCode::BadJson`], id `None`;
/// - not an object, `id` missing or not a u64 → [`ErrorCode::BadRequest`],
///   id `None`;
/// - `op` missing or not a string → [`ErrorCode::BadRequest`] with the id;
/// - unknown `op` → [`ErrorCode::UnknownOp`] with the id;
/// - bad parameters → [`ErrorCode::BadRequest`] with the id and serde's
///   message (`missing field `tenant``, `unknown field ...`, `invalid type:
///   ...`).
pub fn parse_request(line: &[u8]) -> Result<Request, ProtocolError> {
    let value: Value = serde_json::from_slice(line)
        .map_err(|e| ProtocolError::new(None, ErrorCode::BadJson, e.to_string()))?;
    let Value::Object(mut fields) = value else {
        return Err(ProtocolError::bad_request(
            None,
            "a request must be a JSON object",
        ));
    };
    let id = match fields.remove("id") {
        Some(id) => id.as_u64().ok_or_else(|| {
            ProtocolError::bad_request(None, format!("`id` must be an unsigned integer, got {id}"))
        })?,
        None => return Err(ProtocolError::bad_request(None, "missing field `id`")),
    };
    let name = match fields.remove("op") {
        Some(Value::String(name)) => name,
        Some(other) => {
            return Err(ProtocolError::bad_request(
                Some(id),
                format!("`op` must be a string, got {other}"),
            ));
        }
        None => return Err(ProtocolError::bad_request(Some(id), "missing field `op`")),
    };
    let op = Op::from_parts(&name, fields).map_err(|e| match e {
        OpError::Unknown => ProtocolError::new(
            Some(id),
            ErrorCode::UnknownOp,
            format!("unknown op `{name}`; ops: {}", Op::NAMES.join(", ")),
        ),
        OpError::Params(message) => ProtocolError::bad_request(Some(id), message),
    })?;
    Ok(Request { id, op })
}

/// Encodes a successful response line, `{"id":..,"ok":true,"result":..}\n`.
///
/// Should `result` fail to serialize (a map with non-string keys; none of
/// this module's types), the line is an [`ErrorCode::Internal`] error.
pub fn encode_response<T: Serialize + ?Sized>(id: u64, result: &T) -> String {
    #[derive(Serialize)]
    struct Line<'a, T: ?Sized> {
        id: u64,
        ok: bool,
        result: &'a T,
    }

    to_line(&Line {
        id,
        ok: true,
        result,
    })
    .unwrap_or_else(|e| {
        let error = ErrorBody::new(ErrorCode::Internal, format!("cannot encode result: {e}"));
        encode_error(Some(id), &error)
    })
}

/// Encodes a failed response line, `{"id":..,"ok":false,"error":..}\n`.
pub fn encode_error(id: Option<u64>, error: &ErrorBody) -> String {
    #[derive(Serialize)]
    struct Line<'a> {
        id: Option<u64>,
        ok: bool,
        error: &'a ErrorBody,
    }

    to_line(&Line {
        id,
        ok: false,
        error,
    })
    .unwrap_or_else(|_| {
        // `details` is the only free-form part; drop it and retry.
        let plain = ErrorBody {
            details: None,
            ..error.clone()
        };
        to_line(&Line {
            id,
            ok: false,
            error: &plain,
        })
        .expect("an ErrorBody without details is strings, an enum and a bool")
    })
}

/// Encodes an event line, `{"event":..,...}\n`.
pub fn encode_event(event: &Event) -> String {
    to_line(event).expect("events hold only strings, numbers, bools and EndpointStats")
}

/// The server's side of the handshake on one connection.
///
/// Until a `hello` with [`PROTOCOL_VERSION`] arrives, every other request is
/// refused with [`ErrorCode::HandshakeRequired`]. A `hello` with another
/// version is refused with [`ErrorCode::VersionMismatch`] (details carry both
/// versions) and the client may try again. A later `hello` is answered again.
#[derive(Debug, Clone, Default)]
pub struct Handshake {
    done: bool,
}

// ---------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------

/// A line from the server.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    /// The answer to a request. `id` is `None` only for errors about lines
    /// whose id could not be read (`bad_json`, `line_too_long`, ...).
    Response {
        /// The request's id.
        id: Option<u64>,
        /// The `result` (decode it with [`decode_reply`]) or the `error`.
        result: Result<Value, ErrorBody>,
    },
    /// A pushed event.
    Event(Event),
    /// A pushed event of a kind this build does not know (a newer server).
    UnknownEvent {
        /// Its `event` name.
        event: String,
        /// The whole line.
        fields: Value,
    },
}

/// Parses one line from the server. Lenient: unknown fields are ignored,
/// unknown events become [`ServerMessage::UnknownEvent`], unknown error codes
/// [`ErrorCode::Unrecognized`]. Never panics.
pub fn parse_server_message(line: &[u8]) -> Result<ServerMessage, InvalidServerMessage> {
    #[derive(Deserialize)]
    struct RawResponse {
        id: Option<u64>,
        ok: bool,
        #[serde(default)]
        result: Option<Value>,
        #[serde(default)]
        error: Option<ErrorBody>,
    }

    let value: Value = serde_json::from_slice(line).map_err(InvalidServerMessage::from)?;
    let Value::Object(fields) = &value else {
        return Err(InvalidServerMessage("not a JSON object".into()));
    };
    if let Some(event) = fields.get("event") {
        let Value::String(name) = event else {
            return Err(InvalidServerMessage("`event` is not a string".into()));
        };
        if !EventKind::ALL.iter().any(|k| k.name() == name) {
            return Ok(ServerMessage::UnknownEvent {
                event: name.clone(),
                fields: value,
            });
        }
        return serde_json::from_value(value)
            .map(ServerMessage::Event)
            .map_err(InvalidServerMessage::from);
    }
    let raw: RawResponse = serde_json::from_value(value)?;
    let result = match (raw.ok, raw.result, raw.error) {
        (true, result, _) => Ok(result.unwrap_or(Value::Null)),
        (false, _, Some(error)) => Err(error),
        (false, _, None) => {
            return Err(InvalidServerMessage(
                "`ok` is false but `error` is missing".into(),
            ));
        }
    };
    if raw.id.is_none() && result.is_ok() {
        return Err(InvalidServerMessage(
            "a successful response without an id".into(),
        ));
    }
    Ok(ServerMessage::Response { id: raw.id, result })
}

/// Decodes the `result` of a successful response to `C`'s reply type.
pub fn decode_reply<C: Call>(result: Value) -> Result<C::Reply, InvalidServerMessage> {
    Ok(serde_json::from_value(result)?)
}

/// Encodes a request line, `{"id":..,"op":..,...}\n`.
pub fn encode_request(request: &Request) -> String {
    to_line(request).expect("requests hold only strings, numbers, bools and lists of them")
}

// ---------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------

/// Splits a byte stream into lines, sans-IO, with bounded memory.
///
/// [`push`] what the socket read, then call [`next_line`] until `None`.
/// Lines come without their `\n` (and without one `\r` before it). A line
/// longer than `max_line` bytes yields one [`LineTooLong`] and is discarded
/// up to its newline, as soon as it is known to be too long: the framer
/// never holds more than `max_line` bytes of a partial line plus one read.
/// A partial line at end of stream is never yielded.
///
/// [`push`]: LineFramer::push
/// [`next_line`]: LineFramer::next_line
#[derive(Debug, Clone)]
pub struct LineFramer {
    max_line: usize,
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out.
    start: usize,
    /// Where the unterminated last line of `buf` begins.
    line_start: usize,
    /// Positions in `buf` where an overlong, cut line yields its error.
    cuts: Vec<usize>,
    /// Dropping input until the next newline.
    discarding: bool,
}

// ---------------------------------------------------------------------------
// Implementations
// ---------------------------------------------------------------------------

impl Request {
    /// A request.
    pub fn new(id: u64, op: impl Into<Op>) -> Self {
        Self { id, op: op.into() }
    }
}

enum OpError {
    Unknown,
    Params(String),
}

impl Op {
    /// Every op's JSON name, as `hello` lists them.
    pub const NAMES: [&'static str; 10] = [
        "hello",
        "endpoint.create",
        "endpoint.destroy",
        "endpoint.list",
        "endpoint.stats",
        "subscribe",
        "unsubscribe",
        "status",
        "drain",
        "shutdown",
    ];

    /// The JSON name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hello(_) => "hello",
            Self::EndpointCreate(_) => "endpoint.create",
            Self::EndpointDestroy(_) => "endpoint.destroy",
            Self::EndpointList(_) => "endpoint.list",
            Self::EndpointStats(_) => "endpoint.stats",
            Self::Subscribe(_) => "subscribe",
            Self::Unsubscribe(_) => "unsubscribe",
            Self::Status(_) => "status",
            Self::Drain(_) => "drain",
            Self::Shutdown(_) => "shutdown",
        }
    }

    fn from_parts(name: &str, params: Map<String, Value>) -> Result<Self, OpError> {
        fn typed<T: DeserializeOwned>(params: Map<String, Value>) -> Result<T, OpError> {
            serde_json::from_value(Value::Object(params))
                .map_err(|e| OpError::Params(e.to_string()))
        }
        fn none<T: Default>(name: &str, params: Map<String, Value>) -> Result<T, OpError> {
            match params.keys().next() {
                Some(key) => Err(OpError::Params(format!(
                    "unknown field `{key}`: `{name}` takes no parameters"
                ))),
                None => Ok(T::default()),
            }
        }

        Ok(match name {
            "hello" => Self::Hello(typed(params)?),
            "endpoint.create" => Self::EndpointCreate(typed(params)?),
            "endpoint.destroy" => Self::EndpointDestroy(typed(params)?),
            "endpoint.list" => Self::EndpointList(typed(params)?),
            "endpoint.stats" => Self::EndpointStats(typed(params)?),
            "subscribe" => Self::Subscribe(typed(params)?),
            "unsubscribe" => Self::Unsubscribe(none(name, params)?),
            "status" => Self::Status(none(name, params)?),
            "drain" => Self::Drain(none(name, params)?),
            "shutdown" => Self::Shutdown(typed(params)?),
            _ => return Err(OpError::Unknown),
        })
    }
}

macro_rules! call {
    ($($params:ident => $variant:ident, $reply:ty;)*) => {
        $(
            impl From<$params> for Op {
                fn from(params: $params) -> Self {
                    Self::$variant(params)
                }
            }

            impl Call for $params {
                type Reply = $reply;
            }
        )*
    };
}

call! {
    Hello => Hello, HelloReply;
    EndpointCreate => EndpointCreate, EndpointCreated;
    EndpointDestroy => EndpointDestroy, EndpointStats;
    EndpointList => EndpointList, EndpointListing;
    EndpointStatsQuery => EndpointStats, EndpointStats;
    Subscribe => Subscribe, Done;
    Unsubscribe => Unsubscribe, Done;
    StatusQuery => Status, ServerStatus;
    Drain => Drain, Done;
    Shutdown => Shutdown, Done;
}

impl Hello {
    /// A `hello` for this crate's [`PROTOCOL_VERSION`].
    pub fn new(client: impl Into<String>) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            client: client.into(),
        }
    }
}

impl HelloReply {
    /// The reply of a server speaking this crate's version and every op.
    pub fn new(server: impl Into<String>) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            server: server.into(),
            ops: Op::NAMES.iter().map(|&op| op.to_owned()).collect(),
        }
    }
}

impl EndpointCreate {
    /// An `endpoint.create` with every optional field absent.
    pub fn new(tenant: TenantId, session: SessionId, codec: Codec) -> Self {
        Self {
            tenant,
            session,
            codec,
            payload_type: None,
            ptime_ms: None,
            jitter: None,
            rtcp: false,
            bind_ip: None,
        }
    }

    /// The payload type to expect: the requested one or the codec's default.
    pub fn effective_payload_type(&self) -> u8 {
        self.payload_type
            .unwrap_or(self.codec.default_payload_type())
    }

    /// The packetization time: the requested one or [`DEFAULT_PTIME_MS`].
    pub fn effective_ptime_ms(&self) -> u16 {
        self.ptime_ms.unwrap_or(DEFAULT_PTIME_MS)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpointCreate {
    tenant: TenantId,
    session: SessionId,
    codec: Codec,
    payload_type: Option<u8>,
    ptime_ms: Option<u16>,
    jitter: Option<JitterBounds>,
    #[serde(default)]
    rtcp: bool,
    bind_ip: Option<IpAddr>,
}

impl TryFrom<RawEndpointCreate> for EndpointCreate {
    type Error = String;

    fn try_from(raw: RawEndpointCreate) -> Result<Self, String> {
        if let Some(pt) = raw.payload_type.filter(|&pt| pt > 127) {
            return Err(format!("payload_type must be 0..=127, got {pt}"));
        }
        if let Some(ptime) = raw
            .ptime_ms
            .filter(|&p| !(10..=60).contains(&p) || !p.is_multiple_of(10))
        {
            return Err(format!(
                "ptime_ms must be a multiple of 10 from 10 to 60, got {ptime}"
            ));
        }
        Ok(Self {
            tenant: raw.tenant,
            session: raw.session,
            codec: raw.codec,
            payload_type: raw.payload_type,
            ptime_ms: raw.ptime_ms,
            jitter: raw.jitter,
            rtcp: raw.rtcp,
            bind_ip: raw.bind_ip,
        })
    }
}

impl JitterBounds {
    /// The highest `max_ms` allowed.
    pub const MAX_MS: u16 = 2000;
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJitterBounds {
    min_ms: u16,
    max_ms: u16,
}

impl TryFrom<RawJitterBounds> for JitterBounds {
    type Error = String;

    fn try_from(raw: RawJitterBounds) -> Result<Self, String> {
        if raw.min_ms > raw.max_ms {
            return Err(format!(
                "jitter.min_ms ({}) must not exceed jitter.max_ms ({})",
                raw.min_ms, raw.max_ms
            ));
        }
        if raw.max_ms > Self::MAX_MS {
            return Err(format!(
                "jitter.max_ms must be at most {}, got {}",
                Self::MAX_MS,
                raw.max_ms
            ));
        }
        Ok(Self {
            min_ms: raw.min_ms,
            max_ms: raw.max_ms,
        })
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self { drain: true }
    }
}

impl Subscribe {
    /// Whether a connection subscribed with this filter gets `event`.
    pub fn wants(&self, event: &Event) -> bool {
        let kind = event.kind();
        let kind_ok = self
            .events
            .as_ref()
            .is_none_or(|kinds| kinds.contains(&kind));
        let tenant_ok = match (&self.tenant, event.tenant()) {
            (Some(wanted), Some(tenant)) => wanted == tenant,
            _ => true,
        };
        kind_ok && tenant_ok
    }
}

impl Event {
    /// Its kind.
    pub fn kind(&self) -> EventKind {
        match self {
            Self::Receiving(_) => EventKind::Receiving,
            Self::Latched(_) => EventKind::Latched,
            Self::Silent(_) => EventKind::Silent,
            Self::SsrcChanged(_) => EventKind::SsrcChanged,
            Self::Destroyed(_) => EventKind::Destroyed,
            Self::Draining(_) => EventKind::Draining,
        }
    }

    /// When it happened, unix ms.
    pub fn at_ms(&self) -> u64 {
        match self {
            Self::Receiving(e) => e.at_ms,
            Self::Latched(e) => e.at_ms,
            Self::Silent(e) => e.at_ms,
            Self::SsrcChanged(e) => e.at_ms,
            Self::Destroyed(e) => e.at_ms,
            Self::Draining(e) => e.at_ms,
        }
    }

    /// The endpoint it is about; `None` for `draining`.
    pub fn endpoint(&self) -> Option<EndpointId> {
        match self {
            Self::Receiving(e) => Some(e.endpoint),
            Self::Latched(e) => Some(e.endpoint),
            Self::Silent(e) => Some(e.endpoint),
            Self::SsrcChanged(e) => Some(e.endpoint),
            Self::Destroyed(e) => Some(e.endpoint),
            Self::Draining(_) => None,
        }
    }

    /// The endpoint's tenant; `None` for `draining`.
    pub fn tenant(&self) -> Option<&TenantId> {
        match self {
            Self::Receiving(e) => Some(&e.tenant),
            Self::Latched(e) => Some(&e.tenant),
            Self::Silent(e) => Some(&e.tenant),
            Self::SsrcChanged(e) => Some(&e.tenant),
            Self::Destroyed(e) => Some(&e.tenant),
            Self::Draining(_) => None,
        }
    }
}

impl EventKind {
    /// Every kind.
    pub const ALL: [Self; 6] = [
        Self::Receiving,
        Self::Latched,
        Self::Silent,
        Self::SsrcChanged,
        Self::Destroyed,
        Self::Draining,
    ];

    /// The JSON name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Receiving => "endpoint.receiving",
            Self::Latched => "endpoint.latched",
            Self::Silent => "endpoint.silent",
            Self::SsrcChanged => "endpoint.ssrc_changed",
            Self::Destroyed => "endpoint.destroyed",
            Self::Draining => "draining",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl ErrorCode {
    /// Every code a server sends ([`ErrorCode::Unrecognized`] aside).
    pub const ALL: [Self; 11] = [
        Self::BadJson,
        Self::LineTooLong,
        Self::UnknownOp,
        Self::BadRequest,
        Self::HandshakeRequired,
        Self::VersionMismatch,
        Self::UnknownEndpoint,
        Self::PortExhausted,
        Self::Draining,
        Self::TenantUnknown,
        Self::Internal,
    ];

    /// The JSON name.
    pub fn name(self) -> &'static str {
        match self {
            Self::BadJson => "bad_json",
            Self::LineTooLong => "line_too_long",
            Self::UnknownOp => "unknown_op",
            Self::BadRequest => "bad_request",
            Self::HandshakeRequired => "handshake_required",
            Self::VersionMismatch => "version_mismatch",
            Self::UnknownEndpoint => "unknown_endpoint",
            Self::PortExhausted => "port_exhausted",
            Self::Draining => "draining",
            Self::TenantUnknown => "tenant_unknown",
            Self::Internal => "internal",
            Self::Unrecognized => "unrecognized",
        }
    }

    /// Who is at fault.
    pub fn fault(self) -> Fault {
        match self {
            Self::BadJson
            | Self::LineTooLong
            | Self::UnknownOp
            | Self::BadRequest
            | Self::HandshakeRequired
            | Self::VersionMismatch
            | Self::UnknownEndpoint
            | Self::TenantUnknown => Fault::Client,
            Self::PortExhausted | Self::Draining | Self::Internal | Self::Unrecognized => {
                Fault::Server
            }
        }
    }

    /// Whether the same request, retried later or on another dataplane, can
    /// succeed. Client faults never are: the request must change.
    pub fn retryable(self) -> bool {
        match self {
            Self::PortExhausted | Self::Draining | Self::Internal => true,
            Self::BadJson
            | Self::LineTooLong
            | Self::UnknownOp
            | Self::BadRequest
            | Self::HandshakeRequired
            | Self::VersionMismatch
            | Self::UnknownEndpoint
            | Self::TenantUnknown
            | Self::Unrecognized => false,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl ErrorBody {
    /// An error with the code's own retryability and no details.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retryable: code.retryable(),
            details: None,
        }
    }

    /// Adds structured details.
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ErrorBody {}

impl ProtocolError {
    /// An error answering request `id` (`None`: unknown).
    pub fn new(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            id,
            error: ErrorBody::new(code, message),
        }
    }

    fn bad_request(id: Option<u64>, message: impl Into<String>) -> Self {
        Self::new(id, ErrorCode::BadRequest, message)
    }

    /// The error code.
    pub fn code(&self) -> ErrorCode {
        self.error.code
    }

    /// The response line to send.
    pub fn to_line(&self) -> String {
        encode_error(self.id, &self.error)
    }
}

impl From<LineTooLong> for ProtocolError {
    fn from(e: LineTooLong) -> Self {
        Self::new(None, ErrorCode::LineTooLong, e.to_string())
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.id {
            Some(id) => write!(f, "request {id}: {}", self.error),
            None => self.error.fmt(f),
        }
    }
}

impl std::error::Error for ProtocolError {}

impl Handshake {
    /// A connection that has not said `hello` yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a `hello` with our version was accepted.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Checks `request` against the handshake, completing it on a good
    /// `hello`. On `Ok`, serve the request (answer `hello` with a
    /// [`HelloReply`]); on `Err`, send the error's line.
    pub fn check(&mut self, request: &Request) -> Result<(), ProtocolError> {
        match &request.op {
            Op::Hello(hello) if hello.version == PROTOCOL_VERSION => {
                self.done = true;
                Ok(())
            }
            Op::Hello(hello) => Err(ProtocolError {
                id: Some(request.id),
                error: ErrorBody::new(
                    ErrorCode::VersionMismatch,
                    format!(
                        "client speaks version {}, this server speaks {PROTOCOL_VERSION}",
                        hello.version
                    ),
                )
                .with_details(serde_json::json!({
                    "server_version": PROTOCOL_VERSION,
                    "client_version": hello.version,
                })),
            }),
            _ if self.done => Ok(()),
            op => Err(ProtocolError::new(
                Some(request.id),
                ErrorCode::HandshakeRequired,
                format!("send hello before {}", op.name()),
            )),
        }
    }
}

impl fmt::Display for InvalidServerMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid message from the server: {}", self.0)
    }
}

impl std::error::Error for InvalidServerMessage {}

impl From<serde_json::Error> for InvalidServerMessage {
    fn from(e: serde_json::Error) -> Self {
        Self(e.to_string())
    }
}

impl fmt::Display for LineTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line longer than {} bytes, discarded", self.max)
    }
}

impl std::error::Error for LineTooLong {}

impl LineFramer {
    /// A framer for lines of at most `max_line` bytes, newline excluded.
    pub fn new(max_line: usize) -> Self {
        Self {
            max_line,
            buf: Vec::new(),
            start: 0,
            line_start: 0,
            cuts: Vec::new(),
            discarding: false,
        }
    }

    /// The limit.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Bytes held: complete lines not yet taken plus a partial line.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Appends bytes read from the stream. Take every line with
    /// [`next_line`](Self::next_line) before the next push to keep memory
    /// bounded.
    pub fn push(&mut self, mut bytes: &[u8]) {
        self.compact();
        if self.discarding {
            match bytes.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    self.discarding = false;
                    bytes = &bytes[nl + 1..];
                }
                None => return,
            }
        }
        let from = self.buf.len();
        self.buf.extend_from_slice(bytes);
        if let Some(nl) = self.buf[from..].iter().rposition(|&b| b == b'\n') {
            self.line_start = from + nl + 1;
        }
        if self.buf.len() - self.line_start > self.max_line {
            // Too long already: drop the partial line, remember where its
            // error goes, skip the rest of it as it arrives.
            self.buf.truncate(self.line_start);
            self.cuts.push(self.line_start);
            self.discarding = true;
        }
    }

    /// The next complete line, an error for an overlong one, or `None` when
    /// more bytes are needed.
    pub fn next_line(&mut self) -> Option<Result<&[u8], LineTooLong>> {
        let too_long = LineTooLong { max: self.max_line };
        if self.cuts.first() == Some(&self.start) {
            self.cuts.remove(0);
            return Some(Err(too_long));
        }
        let end = self.cuts.first().copied().unwrap_or(self.buf.len());
        let nl = self.buf[self.start..end].iter().position(|&b| b == b'\n')?;
        let line = self.start..self.start + nl;
        self.start += nl + 1;
        if line.len() > self.max_line {
            return Some(Err(too_long));
        }
        let line = &self.buf[line];
        Some(Ok(line.strip_suffix(b"\r").unwrap_or(line)))
    }

    fn compact(&mut self) {
        if self.start == 0 {
            return;
        }
        self.buf.drain(..self.start);
        self.line_start -= self.start;
        for cut in &mut self.cuts {
            *cut -= self.start;
        }
        self.start = 0;
    }
}

fn to_line<T: Serialize + ?Sized>(value: &T) -> Result<String, serde_json::Error> {
    let mut line = serde_json::to_string(value)?;
    line.push('\n');
    Ok(line)
}

fn yes() -> bool {
    true
}

// serde's `skip_serializing_if` passes a reference.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_true(v: &bool) -> bool {
    *v
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_false(v: &bool) -> bool {
    !*v
}

/// A `u32` as `"0x1a2b3c4d"` (SSRCs); parsing takes 1 to 8 hex digits with
/// or without `0x`.
mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer, de};

    pub(super) fn serialize<S: Serializer>(v: &u32, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{v:#010x}"))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
        let s = String::deserialize(deserializer)?;
        parse(&s).ok_or_else(|| {
            de::Error::custom(format_args!(
                "expected a hex SSRC like \"0x1a2b3c4d\", got {s:?}"
            ))
        })
    }

    pub(super) fn parse(s: &str) -> Option<u32> {
        let hex = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .unwrap_or(s);
        if hex.is_empty() || hex.len() > 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(hex, 16).ok()
    }
}

/// [`hex32`] for an `Option<u32>`, `null` for `None`.
mod hex32_opt {
    use serde::{Deserialize, Deserializer, Serializer, de};

    pub(super) fn serialize<S: Serializer>(
        v: &Option<u32>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => super::hex32::serialize(v, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<u32>, D::Error> {
        let s = Option::<String>::deserialize(deserializer)?;
        s.map(|s| {
            super::hex32::parse(&s).ok_or_else(|| {
                de::Error::custom(format_args!(
                    "expected a hex SSRC like \"0x1a2b3c4d\", got {s:?}"
                ))
            })
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(line: &str) -> ProtocolError {
        parse_request(line.as_bytes()).expect_err(line)
    }

    #[test]
    fn errors_are_classified_with_the_id_when_known() {
        let cases: [(&str, Option<u64>, ErrorCode); 10] = [
            ("", None, ErrorCode::BadJson),
            ("{\"id\":1,", None, ErrorCode::BadJson),
            ("[1]", None, ErrorCode::BadRequest),
            ("{\"op\":\"status\"}", None, ErrorCode::BadRequest),
            (
                "{\"id\":\"7\",\"op\":\"status\"}",
                None,
                ErrorCode::BadRequest,
            ),
            ("{\"id\":-1,\"op\":\"status\"}", None, ErrorCode::BadRequest),
            ("{\"id\":7}", Some(7), ErrorCode::BadRequest),
            ("{\"id\":7,\"op\":5}", Some(7), ErrorCode::BadRequest),
            ("{\"id\":7,\"op\":\"nope\"}", Some(7), ErrorCode::UnknownOp),
            (
                "{\"id\":7,\"op\":\"status\",\"x\":1}",
                Some(7),
                ErrorCode::BadRequest,
            ),
        ];
        for (line, id, code) in cases {
            let e = err(line);
            assert_eq!((e.id, e.code()), (id, code), "{line}");
        }
    }

    #[test]
    fn line_endings_are_tolerated() {
        let r = parse_request(b"{\"id\":3,\"op\":\"status\"}\r\n").unwrap();
        assert_eq!(r, Request::new(3, StatusQuery));
    }

    #[test]
    fn endpoint_create_is_validated_while_parsing() {
        let base = r#"{"id":1,"op":"endpoint.create","tenant":"t","session":"s","codec":"ulaw""#;
        let ok = parse_request(format!("{base}}}").as_bytes()).unwrap();
        let Op::EndpointCreate(create) = ok.op else {
            panic!("{ok:?}")
        };
        assert_eq!(create.codec, Codec::Pcmu);
        assert_eq!(create.effective_payload_type(), 0);
        assert_eq!(create.effective_ptime_ms(), 20);
        for (extra, needle) in [
            (r#","payload_type":128"#, "payload_type"),
            (r#","payload_type":256"#, "u8"),
            (r#","ptime_ms":25"#, "ptime_ms"),
            (r#","ptime_ms":0"#, "ptime_ms"),
            (r#","jitter":{"min_ms":50,"max_ms":40}"#, "min_ms"),
            (r#","jitter":{"min_ms":0,"max_ms":2001}"#, "max_ms"),
            (r#","jitter":{"min_ms":0}"#, "max_ms"),
            (r#","bind_ip":"10.0.0""#, "address"),
            (r#","rtcp":"yes""#, "boolean"),
        ] {
            let e = err(&format!("{base}{extra}}}"));
            assert_eq!(
                (e.id, e.code()),
                (Some(1), ErrorCode::BadRequest),
                "{extra}"
            );
            assert!(
                e.error.message.contains(needle),
                "{extra}: {}",
                e.error.message
            );
        }
    }

    #[test]
    fn unit_ops_take_no_parameters() {
        let e = err(r#"{"id":2,"op":"drain","now":true}"#);
        assert_eq!(e.code(), ErrorCode::BadRequest);
        assert!(e.error.message.contains("`now`"), "{}", e.error.message);
        let r = parse_request(br#"{"id":2,"op":"shutdown"}"#).unwrap();
        assert_eq!(r.op, Op::Shutdown(Shutdown { drain: true }));
    }

    #[test]
    fn handshake_comes_first() {
        let mut h = Handshake::new();
        let status = Request::new(1, StatusQuery);
        assert_eq!(
            h.check(&status).unwrap_err().code(),
            ErrorCode::HandshakeRequired
        );
        let future = Request::new(
            2,
            Hello {
                version: 9,
                client: "x".into(),
            },
        );
        let e = h.check(&future).unwrap_err();
        assert_eq!((e.id, e.code()), (Some(2), ErrorCode::VersionMismatch));
        assert_eq!(
            e.error.details.as_ref().unwrap()["server_version"],
            PROTOCOL_VERSION
        );
        assert!(!h.is_done());
        h.check(&Request::new(3, Hello::new("x"))).unwrap();
        assert!(h.is_done());
        h.check(&status).unwrap();
    }

    #[test]
    fn error_codes_name_fault_and_retry() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, code.name());
            assert_eq!(serde_json::from_value::<ErrorCode>(json).unwrap(), code);
            if code.fault() == Fault::Client {
                assert!(!code.retryable(), "{code}");
            }
        }
        assert!(ErrorCode::PortExhausted.retryable());
        assert_eq!(ErrorCode::UnknownEndpoint.fault(), Fault::Client);
        let newer: ErrorCode = serde_json::from_str("\"quota_exceeded\"").unwrap();
        assert_eq!(newer, ErrorCode::Unrecognized);
    }

    #[test]
    fn client_parsing_is_lenient() {
        let ok = parse_server_message(br#"{"id":4,"ok":true,"result":{"x":1},"new":2}"#).unwrap();
        assert_eq!(
            ok,
            ServerMessage::Response {
                id: Some(4),
                result: Ok(serde_json::json!({"x":1}))
            }
        );
        let newer =
            br#"{"id":null,"ok":false,"error":{"code":"zzz","message":"m","retryable":true}}"#;
        let ServerMessage::Response {
            id: None,
            result: Err(e),
        } = parse_server_message(newer).unwrap()
        else {
            panic!()
        };
        assert_eq!((e.code, e.retryable), (ErrorCode::Unrecognized, true));
        let unknown = parse_server_message(br#"{"event":"endpoint.exploded","at_ms":1}"#).unwrap();
        assert!(
            matches!(unknown, ServerMessage::UnknownEvent { ref event, .. } if event == "endpoint.exploded")
        );
        let drain = parse_server_message(br#"{"event":"draining","at_ms":5,"why":"x"}"#).unwrap();
        assert_eq!(
            drain,
            ServerMessage::Event(Event::Draining(DrainingEvent { at_ms: 5 }))
        );
    }

    #[test]
    fn client_parsing_rejects_nonsense() {
        for line in [
            &b"nope"[..],
            b"[]",
            br#"{"id":1}"#,
            br#"{"id":null,"ok":true,"result":{}}"#,
            br#"{"id":1,"ok":false}"#,
            br#"{"event":5}"#,
            br#"{"event":"draining"}"#,
        ] {
            assert!(
                parse_server_message(line).is_err(),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn typed_replies_decode() {
        let line = encode_response(1, &HelloReply::new("dp"));
        let ServerMessage::Response { result: Ok(v), .. } =
            parse_server_message(line.as_bytes()).unwrap()
        else {
            panic!("{line}")
        };
        let reply = decode_reply::<Hello>(v).unwrap();
        assert_eq!(reply.ops.len(), Op::NAMES.len());
        assert!(decode_reply::<EndpointCreate>(serde_json::json!({})).is_err());
    }

    #[test]
    fn subscribe_filters_kind_and_tenant() {
        let acme: TenantId = "acme".parse().unwrap();
        let silent = Event::Silent(SilentEvent {
            endpoint: EndpointId(1),
            tenant: acme.clone(),
            at_ms: 2,
            last_packet_at_ms: 1,
        });
        let draining = Event::Draining(DrainingEvent { at_ms: 3 });
        assert!(Subscribe::default().wants(&silent));
        let other = Subscribe {
            events: None,
            tenant: Some("other".parse().unwrap()),
        };
        assert!(!other.wants(&silent));
        assert!(other.wants(&draining));
        let only = Subscribe {
            events: Some(vec![EventKind::Draining]),
            tenant: Some(acme),
        };
        assert!(!only.wants(&silent));
        assert!(only.wants(&draining));
    }

    #[test]
    fn ssrc_hex() {
        assert_eq!(hex32::parse("0x1A2b3c4d"), Some(0x1a2b_3c4d));
        assert_eq!(hex32::parse("ff"), Some(0xff));
        for bad in ["", "0x", "0x123456789", "-1", "0xg"] {
            assert_eq!(hex32::parse(bad), None, "{bad}");
        }
    }

    fn drain(f: &mut LineFramer) -> Vec<Result<Vec<u8>, LineTooLong>> {
        std::iter::from_fn(|| f.next_line().map(|r| r.map(<[u8]>::to_vec))).collect()
    }

    #[test]
    fn framer_splits_lines() {
        let mut f = LineFramer::new(8);
        f.push(b"ab\ncd\r\nef");
        assert_eq!(drain(&mut f), [Ok(b"ab".to_vec()), Ok(b"cd".to_vec())]);
        f.push(b"\n\n");
        assert_eq!(drain(&mut f), [Ok(b"ef".to_vec()), Ok(b"".to_vec())]);
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn framer_cuts_overlong_lines_early_and_recovers() {
        let mut f = LineFramer::new(4);
        f.push(b"ok\n12345");
        let too_long = LineTooLong { max: 4 };
        assert_eq!(drain(&mut f), [Ok(b"ok".to_vec()), Err(too_long)]);
        assert_eq!(f.buffered(), 0);
        f.push(b"6789");
        assert_eq!(drain(&mut f), []);
        f.push(b"0\nnext\n");
        assert_eq!(drain(&mut f), [Ok(b"next".to_vec())]);
        // Terminated in the same read: found when taken.
        f.push(b"1234567\nabcd\n");
        assert_eq!(drain(&mut f), [Err(too_long), Ok(b"abcd".to_vec())]);
    }

    #[test]
    fn framer_keeps_order_when_not_drained() {
        let mut f = LineFramer::new(3);
        f.push(b"a\nbbbbbb");
        f.push(b"b\nc\n");
        let too_long = LineTooLong { max: 3 };
        assert_eq!(
            drain(&mut f),
            [Ok(b"a".to_vec()), Err(too_long), Ok(b"c".to_vec())]
        );
    }
}
