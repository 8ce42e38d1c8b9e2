//! The double's media: RTP sent from each externalMedia (UnicastRTP) channel
//! to its `external_host`, and accounting of the RTP that comes back.
//!
//! Sans-IO parts: [`ToneGenerator`] (the deterministic audio of a call),
//! [`Packetizer`] (RTP headers and payloads into a caller-owned buffer) and
//! [`RxStats`] (what arrived, fed bytes and an explicit arrival time).
//!
//! The driver ([`RtpHub`]) owns one UDP socket per UnicastRTP channel, bound
//! where the channel's `UNICASTRTP_LOCAL_ADDRESS`/`PORT` say, one receive task
//! per socket, and a single pacing task for every stream: it wakes every
//! [`PACER_TICK`] and sends the 20 ms packets that are due, so its cost grows
//! with packets, not with wakeups. No allocation per packet on either path
//! (captures are bounded and preallocated).
//!
//! Left out: RTCP, jitter, DTMF, comfort noise, transcoding of what is
//! received, and mixing (a stream carries the tone of one caller channel).

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket as StdUdpSocket};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ChannelId;

/// How often the pacing task wakes to send what is due. Packets leave at
/// most this late, by the same offset for a given stream, so the spacing of
/// one stream stays 20 ms.
pub const PACER_TICK: Duration = Duration::from_millis(5);

/// One RTP packet every 20 ms.
pub const PTIME: Duration = Duration::from_millis(20);

/// The first packet of a stream leaves this long after it starts (the
/// recordings show 10 to 25 ms after both channels joined the bridge); the
/// pacer tick adds up to [`PACER_TICK`].
const FIRST_PACKET_DELAY: Duration = Duration::from_millis(14);

/// At most this many overdue packets (one second) are sent back to back
/// when the pacer was held up, so a loaded test machine loses no audio;
/// beyond that it skips ahead (timestamps jump, marker set).
const MAX_CATCH_UP: u32 = 50;

/// Peak amplitude of the generated tone (about -13 dBFS, close to what
/// `Playtones(440)` gave in the recordings: peak 7164).
const TONE_AMPLITUDE: f64 = 7000.0;

/// Arrival times kept per received stream, to check pacing.
const MAX_ARRIVALS: usize = 1000;

/// Audio formats the double can send on an externalMedia channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaFormat {
    /// G.711 µ-law, payload type 0, 8 kHz, 160-byte payloads.
    Ulaw,
    /// G.711 A-law, payload type 8, 8 kHz, 160-byte payloads.
    Alaw,
    /// 16-bit linear at 16 kHz, big-endian, payload type 118 (as Asterisk
    /// numbers it), 640-byte payloads.
    Slin16,
}

impl MediaFormat {
    /// Parses an Asterisk format name (`ulaw`, `alaw`, `slin16`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "ulaw" => Some(MediaFormat::Ulaw),
            "alaw" => Some(MediaFormat::Alaw),
            "slin16" => Some(MediaFormat::Slin16),
            _ => None,
        }
    }

    /// The Asterisk format name.
    pub fn name(self) -> &'static str {
        match self {
            MediaFormat::Ulaw => "ulaw",
            MediaFormat::Alaw => "alaw",
            MediaFormat::Slin16 => "slin16",
        }
    }

    /// RTP payload type Asterisk uses for it.
    pub fn payload_type(self) -> u8 {
        match self {
            MediaFormat::Ulaw => 0,
            MediaFormat::Alaw => 8,
            MediaFormat::Slin16 => 118,
        }
    }

    /// Samples per second.
    pub fn clock_rate(self) -> u32 {
        match self {
            MediaFormat::Ulaw | MediaFormat::Alaw => 8000,
            MediaFormat::Slin16 => 16_000,
        }
    }

    /// Samples in one 20 ms packet, which is also the timestamp step.
    pub fn samples_per_packet(self) -> u32 {
        self.clock_rate() / 50
    }

    /// Payload bytes of one 20 ms packet.
    pub fn payload_len(self) -> usize {
        match self {
            MediaFormat::Ulaw | MediaFormat::Alaw => 160,
            MediaFormat::Slin16 => 640,
        }
    }
}

/// The deterministic audio of a call: a sine tone at a whole number of hertz,
/// encoded in the stream's format. A whole-hertz tone repeats every second,
/// so one second (50 packets) is computed once and packets are slices of it.
#[derive(Debug, Clone)]
pub struct ToneGenerator {
    format: MediaFormat,
    hz: u32,
    second: Arc<[u8]>,
}

impl ToneGenerator {
    /// Computes one second of the tone.
    pub fn new(format: MediaFormat, hz: u32) -> Self {
        let rate = format.clock_rate();
        let mut linear = Vec::with_capacity(rate as usize);
        for n in 0..rate {
            let phase = 2.0 * std::f64::consts::PI * f64::from(hz) * f64::from(n) / f64::from(rate);
            linear.push((TONE_AMPLITUDE * phase.sin()).round() as i16);
        }
        let second: Vec<u8> = match format {
            MediaFormat::Ulaw => linear
                .iter()
                .map(|&s| mediagw_shared::g711::linear_to_ulaw(s))
                .collect(),
            MediaFormat::Alaw => linear
                .iter()
                .map(|&s| mediagw_shared::g711::linear_to_alaw(s))
                .collect(),
            MediaFormat::Slin16 => linear.iter().flat_map(|s| s.to_be_bytes()).collect(),
        };
        ToneGenerator {
            format,
            hz,
            second: second.into(),
        }
    }

    /// The tone frequency.
    pub fn hz(&self) -> u32 {
        self.hz
    }

    /// The format the tone is encoded in.
    pub fn format(&self) -> MediaFormat {
        self.format
    }

    /// The payload of the `index`-th 20 ms frame of the stream (frame 0 is
    /// the first packet sent).
    pub fn frame(&self, index: u64) -> &[u8] {
        let len = self.format.payload_len();
        let start = (index % 50) as usize * len;
        &self.second[start..start + len]
    }
}

/// Writes RTP packets of one stream: 12-byte header, sequence +1 and
/// timestamp + one packet's samples per packet, payloads from the tone.
#[derive(Debug, Clone)]
pub struct Packetizer {
    ssrc: u32,
    seq: u16,
    timestamp: u32,
    frame: u64,
    marker_next: bool,
    tone: ToneGenerator,
}

impl Packetizer {
    /// A stream starting at `first_seq`; its first timestamp is one packet's
    /// samples (160 for 8 kHz), as the recordings show.
    pub fn new(tone: ToneGenerator, ssrc: u32, first_seq: u16) -> Self {
        let step = tone.format().samples_per_packet();
        Packetizer {
            ssrc,
            seq: first_seq,
            timestamp: step,
            frame: 0,
            marker_next: false,
            tone,
        }
    }

    /// Bytes of one packet.
    pub fn packet_len(&self) -> usize {
        12 + self.tone.format().payload_len()
    }

    /// Writes the next packet into `buf` and returns its length, or 0 if
    /// `buf` is shorter than [`Packetizer::packet_len`].
    pub fn write_next(&mut self, buf: &mut [u8]) -> usize {
        let len = self.packet_len();
        if buf.len() < len {
            return 0;
        }
        buf[0] = 0x80;
        buf[1] = self.tone.format().payload_type() | if self.marker_next { 0x80 } else { 0 };
        buf[2..4].copy_from_slice(&self.seq.to_be_bytes());
        buf[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        buf[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        buf[12..len].copy_from_slice(self.tone.frame(self.frame));
        self.marker_next = false;
        self.seq = self.seq.wrapping_add(1);
        self.timestamp = self
            .timestamp
            .wrapping_add(self.tone.format().samples_per_packet());
        self.frame += 1;
        len
    }

    /// Skips `frames` packets of time without sending them (the pacer fell
    /// behind, or the stream was paused): the timestamp and the audio move on,
    /// the sequence does not, and the next packet carries the marker bit.
    pub fn skip(&mut self, frames: u64) {
        let step = u64::from(self.tone.format().samples_per_packet());
        self.timestamp = self
            .timestamp
            .wrapping_add((frames.wrapping_mul(step)) as u32);
        self.frame = self.frame.wrapping_add(frames);
        self.marker_next = true;
    }

    /// Sequence number the next packet will carry.
    pub fn next_seq(&self) -> u16 {
        self.seq
    }

    /// Timestamp the next packet will carry.
    pub fn next_timestamp(&self) -> u32 {
        self.timestamp
    }

    /// Index (into the tone) of the next frame.
    pub fn next_frame(&self) -> u64 {
        self.frame
    }
}

/// Accounting of the RTP received on one UnicastRTP socket (what the gateway
/// sends back into the call). Fed raw datagrams and their arrival time.
#[derive(Debug, Clone, Default)]
pub struct RxStats {
    /// Datagrams received.
    pub packets: u64,
    /// Bytes received (whole datagrams).
    pub bytes: u64,
    /// Datagrams that parse as RTP version 2.
    pub valid_rtp: u64,
    /// Datagrams that do not.
    pub invalid: u64,
    /// Distinct SSRCs seen, in order of appearance.
    pub ssrcs: Vec<u32>,
    /// Distinct payload types seen, in order of appearance.
    pub payload_types: Vec<u8>,
    /// Distinct source addresses, in order of appearance.
    pub sources: Vec<SocketAddr>,
    /// Sequence number of the first valid packet.
    pub first_seq: Option<u16>,
    /// Sequence number of the latest in-order packet.
    pub last_seq: Option<u16>,
    /// Sequence numbers skipped over (a jump from 5 to 8 counts 2).
    pub seq_gaps: u64,
    /// Packets that arrived with a sequence number at or behind the latest.
    pub out_of_order: u64,
    /// Arrival of the first datagram.
    pub first_arrival: Option<Instant>,
    /// Arrival of the latest datagram.
    pub last_arrival: Option<Instant>,
    /// Shortest gap between two consecutive valid packets.
    pub interarrival_min: Option<Duration>,
    /// Longest gap between two consecutive valid packets.
    pub interarrival_max: Option<Duration>,
    interarrival_sum: Duration,
    interarrival_count: u64,
    last_valid_arrival: Option<Instant>,
    first_valid_arrival: Option<Instant>,
    /// Arrival of each of the first 1000 valid packets, counted from the
    /// first one.
    pub arrival_offsets: Vec<Duration>,
    /// Payloads of the first valid packets, concatenated (bounded).
    pub payload: Vec<u8>,
    payload_limit: usize,
}

impl RxStats {
    /// Accounting that keeps up to `payload_limit` bytes of payload.
    pub fn new(payload_limit: usize) -> Self {
        RxStats {
            payload_limit,
            ..RxStats::default()
        }
    }

    /// Mean gap between consecutive valid packets.
    pub fn interarrival_mean(&self) -> Option<Duration> {
        (self.interarrival_count > 0)
            .then(|| self.interarrival_sum / self.interarrival_count as u32)
    }

    /// Accounts one datagram from `from` that arrived at `arrival`.
    pub fn handle_datagram(&mut self, data: &[u8], from: SocketAddr, arrival: Instant) {
        self.packets += 1;
        self.bytes += data.len() as u64;
        self.first_arrival.get_or_insert(arrival);
        self.last_arrival = Some(arrival);
        if !self.sources.contains(&from) {
            self.sources.push(from);
        }
        let Some(hdr) = parse_rtp(data) else {
            self.invalid += 1;
            return;
        };
        self.valid_rtp += 1;
        let first_valid = *self.first_valid_arrival.get_or_insert(arrival);
        if !self.ssrcs.contains(&hdr.ssrc) {
            self.ssrcs.push(hdr.ssrc);
        }
        if !self.payload_types.contains(&hdr.payload_type) {
            self.payload_types.push(hdr.payload_type);
        }
        match self.last_seq {
            None => {
                self.first_seq = Some(hdr.seq);
                self.last_seq = Some(hdr.seq);
            }
            Some(last) => {
                let ahead = hdr.seq.wrapping_sub(last);
                if ahead == 0 || ahead >= 0x8000 {
                    self.out_of_order += 1;
                } else {
                    self.seq_gaps += u64::from(ahead - 1);
                    self.last_seq = Some(hdr.seq);
                }
            }
        }
        if let Some(prev) = self.last_valid_arrival {
            let gap = arrival.saturating_duration_since(prev);
            self.interarrival_min = Some(self.interarrival_min.map_or(gap, |m| m.min(gap)));
            self.interarrival_max = Some(self.interarrival_max.map_or(gap, |m| m.max(gap)));
            self.interarrival_sum += gap;
            self.interarrival_count += 1;
        }
        self.last_valid_arrival = Some(arrival);
        if self.arrival_offsets.len() < MAX_ARRIVALS {
            self.arrival_offsets
                .push(arrival.saturating_duration_since(first_valid));
        }
        let room = self.payload_limit.saturating_sub(self.payload.len());
        if room > 0 {
            let payload = &data[hdr.header_len..data.len() - hdr.padding_len];
            self.payload
                .extend_from_slice(&payload[..payload.len().min(room)]);
        }
    }
}

/// The fields of an RTP header the accounting needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    /// Payload type (7 bits).
    pub payload_type: u8,
    /// Marker bit.
    pub marker: bool,
    /// Sequence number.
    pub seq: u16,
    /// Timestamp.
    pub timestamp: u32,
    /// Synchronization source.
    pub ssrc: u32,
    /// Bytes before the payload: 12, CSRCs, extension.
    pub header_len: usize,
    /// Padding bytes at the end.
    pub padding_len: usize,
}

/// Parses an RTP header (RFC 3550): version 2, CSRCs, extension, padding.
/// Returns `None` for anything malformed.
pub fn parse_rtp(data: &[u8]) -> Option<RtpHeader> {
    if data.len() < 12 || data[0] >> 6 != 2 {
        return None;
    }
    let csrc = usize::from(data[0] & 0x0f);
    let mut header_len = 12 + 4 * csrc;
    if data[0] & 0x10 != 0 {
        let ext = data.get(header_len..header_len + 4)?;
        header_len += 4 + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
    }
    if header_len > data.len() {
        return None;
    }
    let padding_len = if data[0] & 0x20 != 0 {
        let p = usize::from(*data.last()?);
        if p == 0 || header_len + p > data.len() {
            return None;
        }
        p
    } else {
        0
    };
    Some(RtpHeader {
        payload_type: data[1] & 0x7f,
        marker: data[1] & 0x80 != 0,
        seq: u16::from_be_bytes([data[2], data[3]]),
        timestamp: u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
        ssrc: u32::from_be_bytes([data[8], data[9], data[10], data[11]]),
        header_len,
        padding_len,
    })
}

/// What the double sent and received on one UnicastRTP channel; see
/// `AsteriskDouble::rtp_stream`.
#[derive(Debug, Clone)]
pub struct RtpStreamStats {
    /// The UnicastRTP channel.
    pub channel_id: ChannelId,
    /// `UNICASTRTP_LOCAL_ADDRESS:PORT`: where the double sends from and
    /// listens.
    pub local_addr: SocketAddr,
    /// The channel's `external_host`, where the double sends to.
    pub remote_addr: SocketAddr,
    /// The stream's format.
    pub format: MediaFormat,
    /// Tone of the caller channel currently feeding the stream, if sending.
    pub tone_hz: Option<u32>,
    /// Whether the pacer is sending on it now.
    pub sending: bool,
    /// SSRC of what the double sends.
    pub ssrc: u32,
    /// Sequence number of the first packet sent.
    pub first_seq: u16,
    /// Timestamp of the first packet sent.
    pub first_timestamp: u32,
    /// Packets sent.
    pub packets_sent: u64,
    /// Bytes sent (whole datagrams, header included).
    pub bytes_sent: u64,
    /// Sends that failed (socket buffer full, unreachable).
    pub send_errors: u64,
    /// When the first packet left.
    pub first_sent_at: Option<Instant>,
    /// When the latest packet left.
    pub last_sent_at: Option<Instant>,
    /// Payloads of the first packets sent, concatenated in order
    /// (`DoubleConfig::rtp_capture` long).
    pub sent_payload: Vec<u8>,
    /// What came back to `local_addr`.
    pub received: RxStats,
}

struct TxState {
    packetizer: Option<Packetizer>,
    tone_hz: Option<u32>,
    sending: bool,
    packets: u64,
    bytes: u64,
    errors: u64,
    first_sent_at: Option<Instant>,
    last_sent_at: Option<Instant>,
    paused_at: Option<Instant>,
    capture: Vec<u8>,
    capture_limit: usize,
}

/// One UnicastRTP channel's socket and accounting, shared by the pacer, the
/// receive task and the test.
pub(crate) struct Stream {
    channel_id: ChannelId,
    local: SocketAddr,
    remote: SocketAddr,
    format: MediaFormat,
    socket: Arc<UdpSocket>,
    ssrc: u32,
    first_seq: u16,
    tx: Mutex<TxState>,
    rx: Mutex<RxStats>,
    recv_cancel: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks only happens in a failing
    // test; the data stays usable for the report.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Stream {
    fn snapshot(&self) -> RtpStreamStats {
        let tx = lock(&self.tx);
        RtpStreamStats {
            channel_id: self.channel_id.clone(),
            local_addr: self.local,
            remote_addr: self.remote,
            format: self.format,
            tone_hz: tx.tone_hz,
            sending: tx.sending,
            ssrc: self.ssrc,
            first_seq: self.first_seq,
            first_timestamp: self.format.samples_per_packet(),
            packets_sent: tx.packets,
            bytes_sent: tx.bytes,
            send_errors: tx.errors,
            first_sent_at: tx.first_sent_at,
            last_sent_at: tx.last_sent_at,
            sent_payload: tx.capture.clone(),
            received: lock(&self.rx).clone(),
        }
    }
}

enum PacerCmd {
    Start(Arc<Stream>, Instant),
    Stop(ChannelId),
}

/// Counters of the pacer's own cost, for the benchmarks.
#[derive(Debug, Default)]
pub(crate) struct PacerCost {
    pub(crate) busy: Mutex<Duration>,
    pub(crate) ticks: std::sync::atomic::AtomicU64,
    pub(crate) packets: std::sync::atomic::AtomicU64,
}

/// Owns the UnicastRTP sockets and drives the pacer.
pub(crate) struct RtpHub {
    streams: Mutex<HubInner>,
    cmd: mpsc::UnboundedSender<PacerCmd>,
    ports: Option<RangeInclusive<u16>>,
    capture_packets: usize,
    pub(crate) cost: Arc<PacerCost>,
}

struct HubInner {
    open: HashMap<ChannelId, Arc<Stream>>,
    /// Accounting of the streams of channels that are gone, kept for the
    /// test to read; their sockets are closed (the port is free again, as
    /// in Asterisk).
    closed: HashMap<ChannelId, RtpStreamStats>,
    tones: HashMap<(MediaFormat, u32), ToneGenerator>,
    port_cursor: u32,
}

impl std::fmt::Debug for RtpHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtpHub")
            .field("ports", &self.ports)
            .finish_non_exhaustive()
    }
}

impl RtpHub {
    /// Starts the pacer task; it stops when `shutdown` is cancelled.
    pub(crate) fn spawn(
        ports: Option<RangeInclusive<u16>>,
        capture: Duration,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let cost = Arc::new(PacerCost::default());
        let hub = Arc::new(RtpHub {
            streams: Mutex::new(HubInner {
                open: HashMap::new(),
                closed: HashMap::new(),
                tones: HashMap::new(),
                port_cursor: rand::random::<u32>(),
            }),
            cmd: tx,
            ports,
            capture_packets: (capture.as_millis() / PTIME.as_millis()) as usize,
            cost: cost.clone(),
        });
        tokio::spawn(pacer(rx, shutdown, cost));
        hub
    }

    /// Binds the socket of a new UnicastRTP channel sending `format` to
    /// `remote`, starts accounting what arrives on it, and returns its
    /// local address.
    pub(crate) fn open(
        &self,
        channel_id: &ChannelId,
        format: MediaFormat,
        remote: SocketAddr,
    ) -> io::Result<SocketAddr> {
        let mut inner = lock(&self.streams);
        let std_socket = match &self.ports {
            None => StdUdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?,
            Some(range) => {
                // Even ports only, as Asterisk (RTCP would take the odd one).
                let first = u32::from(*range.start()) + u32::from(*range.start() & 1);
                let end = u32::from(*range.end());
                let count = if first > end {
                    0
                } else {
                    (end - first) / 2 + 1
                };
                let mut bound = None;
                for i in 0..count {
                    let port = first + 2 * ((inner.port_cursor.wrapping_add(i)) % count);
                    if let Ok(s) =
                        StdUdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port as u16))
                    {
                        inner.port_cursor = inner.port_cursor.wrapping_add(i + 1);
                        bound = Some(s);
                        break;
                    }
                }
                bound.ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::AddrInUse,
                        "no free RTP port in the configured range",
                    )
                })?
            }
        };
        std_socket.set_nonblocking(true)?;
        let local = std_socket.local_addr()?;
        let socket = Arc::new(UdpSocket::from_std(std_socket)?);
        let payload_len = format.payload_len();
        let stream = Arc::new(Stream {
            channel_id: channel_id.clone(),
            local,
            remote,
            format,
            socket: socket.clone(),
            ssrc: rand::random(),
            first_seq: rand::random(),
            tx: Mutex::new(TxState {
                packetizer: None,
                tone_hz: None,
                sending: false,
                packets: 0,
                bytes: 0,
                errors: 0,
                first_sent_at: None,
                last_sent_at: None,
                paused_at: None,
                capture: Vec::with_capacity(self.capture_packets * payload_len),
                capture_limit: self.capture_packets * payload_len,
            }),
            rx: Mutex::new(RxStats::new(self.capture_packets * payload_len)),
            recv_cancel: CancellationToken::new(),
        });
        tokio::spawn(receiver(stream.clone()));
        inner.open.insert(channel_id.clone(), stream);
        Ok(local)
    }

    /// Starts (or resumes) sending a `hz` tone on the channel's stream.
    #[allow(clippy::disallowed_methods)] // driver: a stream starts now
    pub(crate) fn start(&self, channel_id: &ChannelId, hz: u32) {
        let mut inner = lock(&self.streams);
        let Some(stream) = inner.open.get(channel_id).cloned() else {
            return;
        };
        let tone = inner
            .tones
            .entry((stream.format, hz))
            .or_insert_with(|| ToneGenerator::new(stream.format, hz))
            .clone();
        drop(inner);
        let now = Instant::now();
        {
            let mut tx = lock(&stream.tx);
            if tx.sending && tx.tone_hz == Some(hz) {
                return;
            }
            let paused = tx
                .paused_at
                .map_or(0, |t| now.saturating_duration_since(t).as_millis() / 20);
            match tx.packetizer.as_mut() {
                None => tx.packetizer = Some(Packetizer::new(tone, stream.ssrc, stream.first_seq)),
                Some(p) => {
                    // Resuming: keep SSRC and sequence, let the timestamp
                    // account for the pause, switch to the new caller's tone.
                    let mut fresh = Packetizer::new(tone, stream.ssrc, p.next_seq());
                    fresh.timestamp = p.next_timestamp();
                    fresh.frame = p.next_frame();
                    fresh.skip(paused as u64);
                    *p = fresh;
                }
            }
            tx.tone_hz = Some(hz);
            tx.sending = true;
        }
        let _ = self
            .cmd
            .send(PacerCmd::Start(stream, now + FIRST_PACKET_DELAY));
    }

    /// Stops sending on the channel's stream (it left the bridge, or its
    /// caller did).
    #[allow(clippy::disallowed_methods)] // driver: remembers when it paused
    pub(crate) fn stop(&self, channel_id: &ChannelId) {
        if let Some(stream) = lock(&self.streams).open.get(channel_id) {
            let mut tx = lock(&stream.tx);
            if tx.sending {
                tx.sending = false;
                tx.tone_hz = None;
                tx.paused_at = Some(Instant::now());
            }
        }
        let _ = self.cmd.send(PacerCmd::Stop(channel_id.clone()));
    }

    /// The channel is gone: stop sending, close the socket, keep the
    /// accounting for the test.
    pub(crate) fn close(&self, channel_id: &ChannelId) {
        self.stop(channel_id);
        let mut inner = lock(&self.streams);
        if let Some(stream) = inner.open.remove(channel_id) {
            stream.recv_cancel.cancel();
            inner.closed.insert(channel_id.clone(), stream.snapshot());
        }
    }

    /// Closes every stream (Asterisk restarted).
    pub(crate) fn close_all(&self) {
        let ids: Vec<ChannelId> = lock(&self.streams).open.keys().cloned().collect();
        for id in ids {
            self.close(&id);
        }
    }

    /// Accounting of the channel's stream, open or closed.
    pub(crate) fn snapshot(&self, channel_id: &ChannelId) -> Option<RtpStreamStats> {
        let inner = lock(&self.streams);
        match inner.open.get(channel_id) {
            Some(s) => Some(s.snapshot()),
            None => inner.closed.get(channel_id).cloned(),
        }
    }

    /// Streams currently sending.
    pub(crate) fn sending_count(&self) -> usize {
        lock(&self.streams)
            .open
            .values()
            .filter(|s| lock(&s.tx).sending)
            .count()
    }
}

/// Receives what comes back to one UnicastRTP socket until the channel is
/// gone.
#[allow(clippy::disallowed_methods)] // driver: stamps arrivals
async fn receiver(stream: Arc<Stream>) {
    let mut buf = vec![0u8; 2048];
    loop {
        tokio::select! {
            _ = stream.recv_cancel.cancelled() => return,
            r = stream.socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => {
                    let now = Instant::now();
                    lock(&stream.rx).handle_datagram(&buf[..n], from, now);
                }
                Err(e) => {
                    // ICMP errors surface here on some kernels; the socket
                    // itself stays usable.
                    tracing::debug!(channel = %stream.channel_id, error = %e, "rtp receive error");
                }
            }
        }
    }
}

struct Active {
    stream: Arc<Stream>,
    next_due: Instant,
}

/// The one pacing task for every stream.
#[allow(clippy::disallowed_methods)] // driver: the pacer runs on the clock
async fn pacer(
    mut cmds: mpsc::UnboundedReceiver<PacerCmd>,
    shutdown: CancellationToken,
    cost: Arc<PacerCost>,
) {
    use std::sync::atomic::Ordering;
    let mut active: Vec<Active> = Vec::new();
    let mut buf = vec![0u8; 1500];
    let mut tick = tokio::time::Instant::now();
    loop {
        let cmd = if active.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                cmd = cmds.recv() => cmd,
            }
        } else {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                cmd = cmds.recv() => cmd,
                _ = tokio::time::sleep_until(tick) => {
                    let started = Instant::now();
                    tick += PACER_TICK;
                    if tick < tokio::time::Instant::now() {
                        tick = tokio::time::Instant::now() + PACER_TICK;
                    }
                    let sent = send_due(&mut active, &mut buf, started);
                    cost.ticks.fetch_add(1, Ordering::Relaxed);
                    cost.packets.fetch_add(sent, Ordering::Relaxed);
                    *lock(&cost.busy) += started.elapsed();
                    continue;
                }
            }
        };
        match cmd {
            None => return,
            Some(PacerCmd::Start(stream, first_due)) => {
                if active.is_empty() {
                    tick = tokio::time::Instant::now() + PACER_TICK;
                }
                match active
                    .iter_mut()
                    .find(|a| a.stream.channel_id == stream.channel_id)
                {
                    Some(a) => a.stream = stream,
                    None => active.push(Active {
                        stream,
                        next_due: first_due,
                    }),
                }
            }
            Some(PacerCmd::Stop(id)) => {
                // Only drop it if it was really stopped: a Start may have
                // followed the Stop before the pacer saw either.
                active.retain(|a| a.stream.channel_id != id || lock(&a.stream.tx).sending);
            }
        }
    }
}

/// Sends every packet that is due at `now`; returns how many were sent.
fn send_due(active: &mut Vec<Active>, buf: &mut [u8], now: Instant) -> u64 {
    let mut sent = 0;
    active.retain_mut(|a| {
        let mut tx = lock(&a.stream.tx);
        if !tx.sending {
            return false;
        }
        let mut n = 0;
        while a.next_due <= now && n < MAX_CATCH_UP {
            let Some(p) = tx.packetizer.as_mut() else {
                return false;
            };
            let len = p.write_next(buf);
            let payload_start = 12;
            match a.stream.socket.try_send_to(&buf[..len], a.stream.remote) {
                Ok(_) => {
                    tx.packets += 1;
                    tx.bytes += len as u64;
                    tx.first_sent_at.get_or_insert(now);
                    tx.last_sent_at = Some(now);
                    let room = tx.capture_limit.saturating_sub(tx.capture.len());
                    if room > 0 {
                        let take = (len - payload_start).min(room);
                        tx.capture
                            .extend_from_slice(&buf[payload_start..payload_start + take]);
                    }
                    sent += 1;
                }
                Err(_) => tx.errors += 1,
            }
            a.next_due += PTIME;
            n += 1;
        }
        if a.next_due <= now {
            let behind = (now - a.next_due).as_millis() / PTIME.as_millis() + 1;
            if let Some(p) = tx.packetizer.as_mut() {
                p.skip(behind as u64);
            }
            a.next_due += PTIME * behind as u32;
        }
        true
    });
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_have_the_recorded_shape() {
        let tone = ToneGenerator::new(MediaFormat::Ulaw, 440);
        let mut p = Packetizer::new(tone.clone(), 0x1e80_6360, 30598);
        let mut buf = [0u8; 1500];
        let len = p.write_next(&mut buf);
        assert_eq!(len, 172);
        let h = parse_rtp(&buf[..len]).expect("rtp");
        assert_eq!(
            (h.payload_type, h.seq, h.timestamp, h.ssrc, h.marker),
            (0, 30598, 160, 0x1e80_6360, false)
        );
        assert_eq!(&buf[12..172], tone.frame(0));
        let len = p.write_next(&mut buf);
        let h = parse_rtp(&buf[..len]).expect("rtp");
        assert_eq!((h.seq, h.timestamp), (30599, 320));
        assert_eq!(&buf[12..172], tone.frame(1));
    }

    #[test]
    fn slin16_is_big_endian_640_bytes_step_320() {
        let tone = ToneGenerator::new(MediaFormat::Slin16, 1000);
        let mut p = Packetizer::new(tone, 1, u16::MAX);
        let mut buf = [0u8; 1500];
        assert_eq!(p.write_next(&mut buf), 652);
        let h = parse_rtp(&buf[..652]).expect("rtp");
        assert_eq!((h.payload_type, h.timestamp), (118, 320));
        // Sample 1 of a 1 kHz tone at 16 kHz: 7000 * sin(2π/16).
        let s1 = i16::from_be_bytes([buf[14], buf[15]]);
        assert_eq!(
            s1,
            (7000.0 * (std::f64::consts::PI / 8.0).sin()).round() as i16
        );
        p.write_next(&mut buf);
        let h = parse_rtp(&buf[..652]).expect("rtp");
        assert_eq!((h.seq, h.timestamp), (0, 640), "sequence wraps");
    }

    #[test]
    fn tone_is_the_frequency_asked() {
        let tone = ToneGenerator::new(MediaFormat::Ulaw, 440);
        let mut pcm = vec![0i16; 8000];
        let mut encoded = Vec::new();
        for k in 0..50 {
            encoded.extend_from_slice(tone.frame(k));
        }
        mediagw_shared::g711::decode_ulaw(&encoded, &mut pcm);
        let crossings = pcm.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
        assert!(
            (878..=882).contains(&crossings),
            "{crossings} zero crossings in 1 s"
        );
        assert_eq!(
            tone.frame(50),
            tone.frame(0),
            "a whole-hertz tone repeats every second"
        );
    }

    #[test]
    fn skip_moves_time_not_sequence() {
        let mut p = Packetizer::new(ToneGenerator::new(MediaFormat::Alaw, 300), 7, 100);
        let mut buf = [0u8; 200];
        p.write_next(&mut buf);
        p.skip(3);
        p.write_next(&mut buf);
        let h = parse_rtp(&buf[..172]).expect("rtp");
        assert_eq!(
            (h.payload_type, h.seq, h.timestamp, h.marker),
            (8, 101, 160 + 4 * 160, true)
        );
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // test: any instant will do as the origin
    fn rx_counts_gaps_reorder_and_garbage() {
        let from: SocketAddr = "127.0.0.1:4000".parse().expect("addr");
        let t0 = Instant::now();
        let mut rx = RxStats::new(320);
        let mut p = Packetizer::new(ToneGenerator::new(MediaFormat::Ulaw, 440), 9, 10);
        let mut pkts = Vec::new();
        for _ in 0..5 {
            let mut b = vec![0u8; 172];
            p.write_next(&mut b);
            pkts.push(b);
        }
        rx.handle_datagram(&pkts[0], from, t0);
        rx.handle_datagram(&pkts[1], from, t0 + Duration::from_millis(20));
        rx.handle_datagram(&pkts[4], from, t0 + Duration::from_millis(40));
        rx.handle_datagram(&pkts[2], from, t0 + Duration::from_millis(60));
        rx.handle_datagram(b"junk", from, t0 + Duration::from_millis(61));
        assert_eq!((rx.packets, rx.valid_rtp, rx.invalid), (5, 4, 1));
        assert_eq!(
            (rx.first_seq, rx.last_seq, rx.seq_gaps, rx.out_of_order),
            (Some(10), Some(14), 2, 1)
        );
        assert_eq!(rx.ssrcs, vec![9]);
        assert_eq!(rx.payload_types, vec![0]);
        assert_eq!(rx.interarrival_min, Some(Duration::from_millis(20)));
        assert_eq!(rx.interarrival_mean(), Some(Duration::from_millis(20)));
        assert_eq!(
            rx.arrival_offsets,
            vec![
                Duration::ZERO,
                Duration::from_millis(20),
                Duration::from_millis(40),
                Duration::from_millis(60)
            ]
        );
        assert_eq!(rx.payload.len(), 320, "payload capture is bounded");
        assert_eq!(&rx.payload[..160], &pkts[0][12..]);
    }

    #[tokio::test]
    async fn port_ranges_without_an_even_port_fail_cleanly() {
        let shutdown = CancellationToken::new();
        let hub = RtpHub::spawn(
            Some(65535..=65535),
            Duration::from_secs(1),
            shutdown.clone(),
        );
        let remote: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let e = hub
            .open(&ChannelId::new("1.1"), MediaFormat::Ulaw, remote)
            .expect_err("no even port");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        shutdown.cancel();
    }

    #[test]
    fn parse_rejects_malformed() {
        assert!(parse_rtp(&[0x80; 11]).is_none());
        assert!(parse_rtp(&[0x40; 12]).is_none(), "version 1");
        let mut ext = [0u8; 16];
        ext[0] = 0x90;
        ext[14] = 0;
        ext[15] = 5; // extension claims 20 bytes that are not there
        assert!(parse_rtp(&ext).is_none());
        let mut pad = [0u8; 13];
        pad[0] = 0xA0;
        pad[12] = 9; // padding longer than the payload
        assert!(parse_rtp(&pad).is_none());
        let mut csrc = [0u8; 20];
        csrc[0] = 0x82;
        assert_eq!(parse_rtp(&csrc).map(|h| h.header_len), Some(20));
    }
}
