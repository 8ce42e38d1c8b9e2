//! One endpoint: a local RTP port that receives a call leg's audio and sends
//! audio back into it. Sans-IO: the worker feeds it datagrams with their
//! arrival time and asks it for frames and outbound packets.
//!
//! Per datagram: parse, latch the peer (symmetric RTP), check the payload
//! type, statistics, decode, jitter buffer. Per tick: play out due frames to
//! the tap ring, notice silence, and send paced audio from the play ring.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use mediagw_shared::codec::Codec;
use mediagw_shared::ids::EndpointId;

use crate::jitter::{Frame, JitterBuffer, JitterConfig, JitterCounters, MAX_FRAME_SAMPLES};
use crate::ring::{FrameConsumer, FrameProducer};
use crate::rtcp;
use crate::rtp::{self, RtpHeader, RtpPacket};
use crate::stats::{ReceiveStats, StatsConfig, StatsSnapshot, TransitSummary};
use crate::units::{Nanos, PayloadType, RtpTimestamp, Seq, Ssrc};

/// The most samples one datagram can decode to (a 1500-byte G.711 payload).
pub const MAX_PACKET_SAMPLES: usize = 1500;

/// What an endpoint is created with.
#[derive(Debug, Clone, Copy)]
pub struct EndpointSpec {
    /// The codec Asterisk sends and receives.
    pub codec: Codec,
    /// The payload type it uses for that codec.
    pub payload_type: PayloadType,
    /// Packet duration we send at, ms.
    pub ptime_ms: u32,
    /// Jitter buffer bounds.
    pub jitter: JitterConfig,
    /// Silence after which another source may take the latch.
    pub relatch_after: Duration,
    /// No packet for this long makes the endpoint silent.
    pub silent_after: Duration,
    /// Our SSRC for audio sent into the call.
    pub tx_ssrc: Ssrc,
    /// First sequence number we send (random in production).
    pub tx_first_seq: u16,
}

/// Receive state of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxState {
    /// No valid packet yet.
    Waiting,
    /// Packets arriving.
    Receiving,
    /// Nothing for `silent_after`.
    Silent,
}

impl RxState {
    /// Label for listings.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Receiving => "receiving",
            Self::Silent => "silent",
        }
    }
}

/// Something an operator or the control plane wants to hear about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointEvent {
    /// The first valid packet latched this source as the peer.
    Latched(SocketAddr),
    /// After silence, another source took over the latch.
    Relatched {
        /// The old peer.
        from: SocketAddr,
        /// The new peer.
        to: SocketAddr,
    },
    /// Packets flow again after silence (or for the first time).
    Receiving {
        /// From whom.
        peer: SocketAddr,
        /// Their SSRC.
        ssrc: Ssrc,
    },
    /// No packet for the configured time.
    Silent {
        /// When the last one arrived.
        last_packet: Nanos,
    },
    /// The peer changed SSRC.
    SsrcChanged {
        /// Old source.
        from: Ssrc,
        /// New source.
        to: Ssrc,
    },
}

/// Why a datagram was not used. Counted, never logged per packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// Not RTP (see [`rtp::RtpError`]).
    Malformed(rtp::RtpError),
    /// From an address other than the latched peer.
    ForeignSource,
    /// A payload type other than the endpoint's codec.
    WrongPayloadType(PayloadType),
}

/// Receive-side counters besides the RFC 3550 ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RxCounters {
    /// Datagrams that reached the endpoint.
    pub datagrams: u64,
    /// Bytes of those datagrams.
    pub bytes: u64,
    /// Not valid RTP.
    pub malformed: u64,
    /// Dropped for coming from the wrong address.
    pub foreign_source: u64,
    /// Dropped for the wrong payload type.
    pub wrong_payload_type: u64,
    /// RTCP seen on the RTP port (rtcp-mux) or the RTCP port.
    pub rtcp_packets: u64,
    /// RTCP that did not parse.
    pub rtcp_malformed: u64,
    /// Frames played out to the tap ring.
    pub tap_frames: u64,
    /// Frames the tap ring had no room for.
    pub tap_overflows: u64,
}

/// Send-side counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxCounters {
    /// RTP packets sent into the call.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Frames thrown away because no peer was latched yet.
    pub frames_dropped: u64,
}

/// What the peer's RTCP said, kept for the control socket.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RtcpSeen {
    /// Sender reports received.
    pub sender_reports: u64,
    /// Receiver reports received.
    pub receiver_reports: u64,
    /// BYE received.
    pub byes: u64,
    /// The peer's last sender report (about what it sends).
    pub last_sr: Option<SenderReportSeen>,
    /// The last report block about our stream (what we send into the call),
    /// from an SR or an RR.
    pub last_rr: Option<ReportBlockSeen>,
}

/// A sender report as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderReportSeen {
    /// When it arrived.
    pub at: Nanos,
    /// The sender.
    pub ssrc: Ssrc,
    /// Its NTP timestamp (seconds since 1900 in the high 32 bits).
    pub ntp: u64,
    /// The RTP timestamp matching it.
    pub rtp_ts: RtpTimestamp,
    /// Packets the peer says it sent.
    pub packets: u32,
    /// Payload octets the peer says it sent.
    pub octets: u32,
}

/// A report block about our stream, as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportBlockSeen {
    /// When it arrived.
    pub at: Nanos,
    /// Who reported.
    pub reporter: Ssrc,
    /// The block.
    pub block: rtcp::ReportBlock,
}

/// Everything about an endpoint, copied out for the control socket.
#[derive(Debug, Clone, Copy)]
pub struct EndpointSnapshot {
    /// Receive state.
    pub state: RxState,
    /// Latched peer.
    pub peer: Option<SocketAddr>,
    /// First and last packet arrivals.
    pub first_rx: Option<Nanos>,
    /// Last valid packet.
    pub last_rx: Option<Nanos>,
    /// RFC 3550 statistics.
    pub stats: StatsSnapshot,
    /// Largest jitter seen, ms.
    pub max_jitter_ms: f64,
    /// Our own receive counters.
    pub rx: RxCounters,
    /// Jitter buffer counters.
    pub jitter: JitterCounters,
    /// Send counters.
    pub tx: TxCounters,
    /// RTCP from the peer.
    pub rtcp: RtcpSeen,
    /// Transit variation percentiles ([`Endpoint::snapshot_with_transit`]
    /// only: the metrics sweep does not pay for them).
    pub transit: Option<TransitSummary>,
}

/// Where the tap tells a worker that an endpoint got audio to play while its
/// play ring was empty (the worker stops looking at a ring on an underrun).
/// One per worker; a full queue makes the worker look at every endpoint.
#[derive(Debug)]
pub struct PlayNotifier {
    queue: ArrayQueue<EndpointId>,
    overflow: AtomicBool,
}

impl PlayNotifier {
    /// A notifier holding up to `capacity` pending endpoints.
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: ArrayQueue::new(capacity.max(1)),
            overflow: AtomicBool::new(false),
        }
    }

    /// The next endpoint to look at.
    pub fn pop(&self) -> Option<EndpointId> {
        self.queue.pop()
    }

    /// Whether notifications were lost since the last call (then every
    /// endpoint must be looked at).
    pub fn take_overflow(&self) -> bool {
        self.overflow.swap(false, Ordering::Acquire)
    }
}

/// Flags the control and tap threads set, that the worker reads.
#[derive(Debug, Default)]
pub struct EndpointShared {
    /// Someone on the media socket wants this endpoint's frames.
    pub tapped: AtomicBool,
    /// Frames to play were queued onto an empty play ring (for the worker's
    /// full look when notifications overflowed).
    play_ready: AtomicBool,
    /// The worker's notifier and this endpoint's id, set by the worker
    /// that takes the endpoint.
    notifier: OnceLock<(Arc<PlayNotifier>, EndpointId)>,
    /// Media socket connections subscribed to this endpoint (the tap
    /// thread's count, for statistics).
    pub subscribers: AtomicU32,
}

impl EndpointShared {
    /// The tap thread says how many subscribers the endpoint has now.
    pub fn set_subscribers(&self, n: usize) {
        self.subscribers
            .store(u32::try_from(n).unwrap_or(u32::MAX), Ordering::Relaxed);
        self.tapped.store(n > 0, Ordering::Relaxed);
    }

    /// The worker taking the endpoint registers where to be told (once).
    pub fn set_notifier(&self, notifier: Arc<PlayNotifier>, id: EndpointId) {
        let _ = self.notifier.set((notifier, id));
    }

    /// The tap queued frames to play onto an empty play ring.
    pub fn notify_play(&self) {
        self.play_ready.store(true, Ordering::Release);
        if let Some((n, id)) = self.notifier.get()
            && n.queue.push(*id).is_err()
        {
            n.overflow.store(true, Ordering::Release);
        }
    }

    /// Takes the play flag (the worker).
    pub fn take_play_ready(&self) -> bool {
        self.play_ready.swap(false, Ordering::Acquire)
    }
}

/// One endpoint's media state.
#[derive(Debug)]
pub struct Endpoint {
    spec: EndpointSpec,
    shared: Arc<EndpointShared>,
    state: RxState,
    peer: Option<SocketAddr>,
    ssrc: Option<Ssrc>,
    first_rx: Option<Nanos>,
    last_rx: Option<Nanos>,
    stats: ReceiveStats,
    max_jitter_ms: f64,
    jb: JitterBuffer,
    tap: FrameProducer,
    play: FrameConsumer,
    rx: RxCounters,
    tx: TxCounters,
    rtcp: RtcpSeen,
    tx_seq: u16,
    tx_ts: RtpTimestamp,
    tx_next_due: Option<Nanos>,
    tx_marker: bool,
}

impl Endpoint {
    /// A new endpoint; `tap` carries played-out frames to the tap thread and
    /// `play` brings frames to send into the call.
    pub fn new(
        spec: EndpointSpec,
        shared: Arc<EndpointShared>,
        jb: JitterBuffer,
        tap: FrameProducer,
        play: FrameConsumer,
    ) -> Self {
        let stats = ReceiveStats::new(StatsConfig::new(spec.codec.clock_rate()));
        Self {
            spec,
            shared,
            state: RxState::Waiting,
            peer: None,
            ssrc: None,
            first_rx: None,
            last_rx: None,
            stats,
            max_jitter_ms: 0.0,
            jb,
            tap,
            play,
            rx: RxCounters::default(),
            tx: TxCounters::default(),
            rtcp: RtcpSeen::default(),
            tx_seq: spec.tx_first_seq,
            tx_ts: RtpTimestamp(u32::from(spec.tx_first_seq).wrapping_mul(7919)),
            tx_next_due: None,
            tx_marker: true,
        }
    }

    /// The spec it was created with.
    pub fn spec(&self) -> &EndpointSpec {
        &self.spec
    }

    /// Receive state.
    pub fn state(&self) -> RxState {
        self.state
    }

    /// The latched peer.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// Handles one datagram on the RTP port. `scratch` is the worker's decode
    /// buffer. Returns at most one event and why the datagram was dropped.
    pub fn handle_datagram(
        &mut self,
        src: SocketAddr,
        arrival: Nanos,
        buf: &[u8],
        scratch: &mut [i16; MAX_PACKET_SAMPLES],
    ) -> (Option<EndpointEvent>, Option<Drop>) {
        self.rx.datagrams += 1;
        self.rx.bytes += buf.len() as u64;
        if rtp::is_rtcp(buf) {
            self.handle_rtcp(buf, arrival);
            return (None, None);
        }
        let pkt = match RtpPacket::parse(buf) {
            Ok(p) => p,
            Err(e) => {
                self.rx.malformed += 1;
                return (None, Some(Drop::Malformed(e)));
            }
        };
        if pkt.payload_type() != self.spec.payload_type {
            self.rx.wrong_payload_type += 1;
            return (None, Some(Drop::WrongPayloadType(pkt.payload_type())));
        }
        let mut event = None;
        match self.peer {
            None => {
                self.peer = Some(src);
                event = Some(EndpointEvent::Latched(src));
            }
            Some(peer) if peer != src => {
                let quiet = self
                    .last_rx
                    .is_none_or(|t| arrival.saturating_since(t) >= self.spec.relatch_after);
                if !quiet {
                    self.rx.foreign_source += 1;
                    return (None, Some(Drop::ForeignSource));
                }
                self.peer = Some(src);
                event = Some(EndpointEvent::Relatched {
                    from: peer,
                    to: src,
                });
            }
            Some(_) => {}
        }
        let ssrc = pkt.ssrc();
        match self.ssrc {
            Some(old) if old != ssrc => {
                event = event.or(Some(EndpointEvent::SsrcChanged {
                    from: old,
                    to: ssrc,
                }));
            }
            _ => {}
        }
        self.ssrc = Some(ssrc);
        if self.state != RxState::Receiving {
            self.state = RxState::Receiving;
            event = event.or(Some(EndpointEvent::Receiving { peer: src, ssrc }));
        }
        self.first_rx.get_or_insert(arrival);
        self.last_rx = Some(arrival);

        let payload = pkt.payload();
        self.stats
            .handle_packet(ssrc, pkt.seq(), pkt.timestamp(), payload.len(), arrival);
        let n = self.spec.codec.decode(payload, scratch);
        self.jb.handle_packet(
            ssrc,
            pkt.seq(),
            pkt.timestamp(),
            pkt.marker(),
            &scratch[..n],
            arrival,
        );
        (event, None)
    }

    /// Handles a datagram on the RTCP port (or RTCP muxed on the RTP port).
    pub fn handle_rtcp(&mut self, buf: &[u8], arrival: Nanos) {
        self.rx.rtcp_packets += 1;
        for pkt in rtcp::parse_compound(buf) {
            match pkt {
                Ok(rtcp::RtcpPacket::SenderReport {
                    ssrc,
                    ntp_timestamp,
                    rtp_timestamp,
                    packet_count,
                    octet_count,
                    reports,
                    ..
                }) => {
                    self.rtcp.sender_reports += 1;
                    self.rtcp.last_sr = Some(SenderReportSeen {
                        at: arrival,
                        ssrc,
                        ntp: ntp_timestamp,
                        rtp_ts: rtp_timestamp,
                        packets: packet_count,
                        octets: octet_count,
                    });
                    self.note_blocks(ssrc, reports, arrival);
                }
                Ok(rtcp::RtcpPacket::ReceiverReport { ssrc, reports, .. }) => {
                    self.rtcp.receiver_reports += 1;
                    self.note_blocks(ssrc, reports, arrival);
                }
                Ok(rtcp::RtcpPacket::Bye { .. }) => self.rtcp.byes += 1,
                Ok(_) => {}
                Err(_) => {
                    self.rx.rtcp_malformed += 1;
                    break;
                }
            }
        }
    }

    fn note_blocks(&mut self, reporter: Ssrc, blocks: rtcp::ReportBlocks<'_>, at: Nanos) {
        let ours = self.spec.tx_ssrc;
        if let Some(block) = blocks.into_iter().find(|b| b.ssrc == ours) {
            self.rtcp.last_rr = Some(ReportBlockSeen {
                at,
                reporter,
                block,
            });
        }
    }

    /// The next time [`Endpoint::handle_timeout`] has work, if any.
    pub fn poll_timeout(&self) -> Option<Nanos> {
        let silence = match self.state {
            RxState::Receiving => self.last_rx.map(|t| t + self.spec.silent_after),
            _ => None,
        };
        [self.jb.poll_timeout(), silence, self.tx_next_due]
            .into_iter()
            .flatten()
            .min()
    }

    /// When the jitter buffer's next frame is due, if it plays.
    pub fn frame_due(&self) -> Option<Nanos> {
        self.jb.poll_timeout()
    }

    /// When the next packet into the call is due, while audio plays.
    pub fn tx_due(&self) -> Option<Nanos> {
        self.tx_next_due
    }

    /// Frames to play are waiting in the play ring.
    pub fn play_pending(&self) -> bool {
        !self.play.is_empty()
    }

    /// The flags shared with the control and tap threads.
    pub fn shared(&self) -> &Arc<EndpointShared> {
        &self.shared
    }

    /// Runs timers: plays due frames into the tap ring, notices silence.
    pub fn handle_timeout(&mut self, now: Nanos) -> Option<EndpointEvent> {
        let tapped = self.shared.tapped.load(Ordering::Relaxed);
        while let Some(frame) = self.jb.poll_frame(now) {
            if tapped {
                match self.tap.push(frame) {
                    Ok(()) => self.rx.tap_frames += 1,
                    Err(_) => self.rx.tap_overflows += 1,
                }
            }
        }
        if self.state == RxState::Receiving
            && let Some(last) = self.last_rx
            && now.saturating_since(last) >= self.spec.silent_after
        {
            self.state = RxState::Silent;
            return Some(EndpointEvent::Silent { last_packet: last });
        }
        None
    }

    /// The next RTP packet of audio into the call, if one is due at `now`:
    /// writes it into `out` and returns the destination and its length.
    pub fn poll_transmit(&mut self, now: Nanos, out: &mut [u8]) -> Option<(SocketAddr, usize)> {
        if self.tx_next_due.is_some_and(|due| now < due) {
            return None;
        }
        let mut frame = Frame::default();
        if !self.play.pop_into(&mut frame) {
            // Underrun: the next frame starts a new talkspurt.
            self.tx_next_due = None;
            self.tx_marker = true;
            return None;
        }
        let Some(peer) = self.peer else {
            self.tx.frames_dropped += 1;
            return None;
        };
        let samples = frame.samples();
        let header = RtpHeader {
            marker: self.tx_marker,
            payload_type: self.spec.payload_type,
            seq: Seq(self.tx_seq),
            timestamp: self.tx_ts,
            ssrc: self.spec.tx_ssrc,
        };
        let payload_room = out.len().saturating_sub(12);
        let mut payload = [0u8; MAX_FRAME_SAMPLES * 2];
        let plen = self.spec.codec.encode(
            samples,
            &mut payload[..payload_room.min(MAX_FRAME_SAMPLES * 2)],
        );
        let n = rtp::write_rtp(&header, &payload[..plen], out).ok()?;
        self.tx_seq = self.tx_seq.wrapping_add(1);
        self.tx_ts = self.tx_ts.add(samples.len() as u32);
        self.tx_marker = false;
        let dur = Duration::from_nanos(
            samples.len() as u64 * 1_000_000_000 / u64::from(self.spec.codec.clock_rate().0),
        );
        // Pace on the schedule, not on when we got round to it, but never
        // try to catch up more than one packet after a stall.
        let due = self.tx_next_due.unwrap_or(now) + dur;
        self.tx_next_due = Some(if due < now { now + dur } else { due });
        self.tx.packets += 1;
        self.tx.bytes += n as u64;
        Some((peer, n))
    }

    /// Everything about the endpoint, for the control socket.
    pub fn snapshot(&mut self) -> EndpointSnapshot {
        let stats = self.stats.snapshot();
        self.max_jitter_ms = self.max_jitter_ms.max(stats.jitter_ms);
        EndpointSnapshot {
            state: self.state,
            peer: self.peer,
            first_rx: self.first_rx,
            last_rx: self.last_rx,
            stats,
            max_jitter_ms: self.max_jitter_ms,
            rx: self.rx,
            jitter: self.jb.counters(),
            tx: self.tx,
            rtcp: self.rtcp,
            transit: None,
        }
    }

    /// [`snapshot`](Self::snapshot) with the transit percentiles, for the
    /// control socket.
    pub fn snapshot_with_transit(&mut self) -> EndpointSnapshot {
        EndpointSnapshot {
            transit: self.stats.transit_summary(),
            ..self.snapshot()
        }
    }
}
