//! A tiny fake dataplane: the control and media sockets in a temp dir,
//! served by threads, speaking the protocol through mediagw-shared's types.
//!
//! Control requests go through [`Fake::handler`]: canned answers by
//! default ([`canned`]), replaced per test. The media socket follows a
//! [`MediaScript`]. Everything received is logged for assertions.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use mediagw_shared::codec::Codec;
use mediagw_shared::control::Handshake;
use mediagw_shared::control::{
    DEFAULT_MAX_LINE, Done, EndpointCreated, EndpointListing, EndpointState, EndpointStats,
    EndpointSummary, Engine, ErrorBody, ErrorCode, HelloReply, JitterBufferStats, LineFramer, Op,
    Request, RtcpSummary, RxStats, ServerStatus, TapStats, TxStats, WorkerStatus, encode_error,
    encode_response, parse_request,
};
use mediagw_shared::ids::EndpointId;
use mediagw_shared::media::{
    Ack, Dropped, ErrorReply, Frame, FrameFlags, MAX_MESSAGE_LEN, MediaDecoder, MediaErrorCode,
    MediaKind, MediaMessage, Samples,
};
use mediagw_shared::units::ClockRate;
use tempfile::TempDir;

/// The endpoint the fake knows, PCMU.
pub const EP_PCMU: EndpointId = EndpointId(0x1a2b);
/// The endpoint the fake knows, slin16.
pub const EP_SLIN16: EndpointId = EndpointId(0x1a2c);

/// The wall clock, for tests that measure pacing.
#[allow(clippy::disallowed_methods)] // Tests measure real time.
pub fn now() -> Instant {
    Instant::now()
}

/// What the fake does with one control request.
#[derive(Debug, Clone)]
pub enum Action {
    /// Send these bytes.
    Send(String),
    /// Wait.
    Sleep(Duration),
    /// Close the connection.
    Close,
}

/// Maps a request to actions.
pub type Handler = dyn Fn(&Request) -> Vec<Action> + Send + Sync;

/// What the media socket does after a `Subscribe`.
#[derive(Debug, Clone, Default)]
pub struct MediaScript {
    /// Frames to send after the ack: flags and samples.
    pub frames: Vec<(FrameFlags, Vec<i16>)>,
    /// Their rate; default 8000.
    pub rate: Option<u32>,
    /// A `Dropped` after this many frames, with this count (the next
    /// frame's seq skips as many).
    pub dropped: Option<(usize, u64)>,
    /// Keep the connection open after the frames (until the client closes).
    pub hold: bool,
    /// Refuse subscriptions with this code.
    pub refuse_subscribe: Option<MediaErrorCode>,
    /// Refuse the n-th `Play` (0-based) with this code, then close.
    pub refuse_play: Option<(u64, MediaErrorCode)>,
}

/// A `Play` as received.
#[derive(Debug, Clone)]
pub struct Played {
    pub at: Instant,
    pub endpoint: EndpointId,
    pub seq: u64,
    pub flags: u16,
    pub rate: u32,
    pub samples: Vec<i16>,
}

/// What the fake saw.
#[derive(Debug, Default)]
pub struct Log {
    /// Control requests after `hello`, in order.
    pub requests: Vec<Request>,
    /// `Subscribe`s.
    pub subscribes: Vec<EndpointId>,
    /// `Play`s.
    pub plays: Vec<Played>,
    /// Frames the media socket has finished sending.
    pub frames_sent: usize,
}

/// A running fake dataplane. Dropping it leaves its threads blocked in
/// `accept`; the temp dir goes away with the test process.
#[derive(Debug)]
pub struct Fake {
    _dir: TempDir,
    pub control: PathBuf,
    pub media: PathBuf,
    pub log: Arc<Mutex<Log>>,
}

impl Fake {
    /// Canned control answers, an idle media socket.
    pub fn start() -> Self {
        Self::with(Arc::new(canned), MediaScript::default())
    }

    /// Custom control handling.
    pub fn handler(handler: impl Fn(&Request) -> Vec<Action> + Send + Sync + 'static) -> Self {
        Self::with(Arc::new(handler), MediaScript::default())
    }

    /// Canned control answers and a media script.
    pub fn media(script: MediaScript) -> Self {
        Self::with(Arc::new(canned), script)
    }

    pub fn with(handler: Arc<Handler>, script: MediaScript) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let control = dir.path().join("control.sock");
        let media = dir.path().join("media.sock");
        let log = Arc::new(Mutex::new(Log::default()));
        let listener = UnixListener::bind(&control).unwrap();
        let control_log = Arc::clone(&log);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (handler, log) = (Arc::clone(&handler), Arc::clone(&control_log));
                thread::spawn(move || serve_control(stream, &*handler, &log));
            }
        });
        let listener = UnixListener::bind(&media).unwrap();
        let media_log = Arc::clone(&log);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (script, log) = (script.clone(), Arc::clone(&media_log));
                thread::spawn(move || serve_media(stream, &script, &log));
            }
        });
        Self {
            _dir: dir,
            control,
            media,
            log,
        }
    }

    /// The control requests received so far, `hello` excluded.
    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().requests.clone()
    }
}

fn serve_control(mut stream: UnixStream, handler: &Handler, log: &Mutex<Log>) {
    let mut framer = LineFramer::new(DEFAULT_MAX_LINE);
    let mut handshake = Handshake::new();
    let mut buf = [0; 4096];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        framer.push(&buf[..n]);
        let mut actions = Vec::new();
        while let Some(line) = framer.next_line() {
            let request = line
                .map_err(Into::into)
                .and_then(parse_request)
                .and_then(|r| handshake.check(&r).map(|()| r));
            match request {
                Err(e) => actions.push(Action::Send(e.to_line())),
                Ok(r) if matches!(r.op, Op::Hello(_)) => actions.extend(handler(&r)),
                Ok(r) => {
                    log.lock().unwrap().requests.push(r.clone());
                    actions.extend(handler(&r));
                }
            }
        }
        for action in actions {
            match action {
                Action::Send(line) => {
                    if stream.write_all(line.as_bytes()).is_err() {
                        return;
                    }
                }
                Action::Sleep(d) => thread::sleep(d),
                Action::Close => return,
            }
        }
    }
}

/// The canned answer to each op.
pub fn canned(r: &Request) -> Vec<Action> {
    let line = match &r.op {
        Op::Hello(_) => encode_response(r.id, &HelloReply::new("fake-dataplane/1.0")),
        Op::Status(_) => encode_response(r.id, &status()),
        Op::EndpointList(q) => {
            // Counters grow with the request id, ten times faster for
            // ep-1a2b: watch's rates put it first, its totals last.
            let mut endpoints = vec![
                summary(EP_PCMU, 1000 + 100 * r.id),
                summary(EP_SLIN16, 5000 + 10 * r.id),
            ];
            endpoints.retain(|e| q.tenant.as_ref().is_none_or(|t| *t == e.tenant));
            encode_response(r.id, &EndpointListing { endpoints })
        }
        Op::EndpointStats(q) => match stats(q.endpoint) {
            Some(s) => encode_response(r.id, &s),
            None => unknown(r.id, q.endpoint),
        },
        Op::EndpointDestroy(q) => match stats(q.endpoint) {
            Some(s) => encode_response(r.id, &s),
            None => unknown(r.id, q.endpoint),
        },
        Op::EndpointCreate(c) => encode_response(
            r.id,
            &EndpointCreated {
                endpoint: EndpointId(0x1a2d),
                tenant: c.tenant.clone(),
                session: c.session.clone(),
                local_addr: "127.0.0.1:40004".parse().unwrap(),
                rtcp_port: c.rtcp.then_some(40005),
            },
        ),
        Op::Drain(_) | Op::Shutdown(_) | Op::Subscribe(_) | Op::Unsubscribe(_) => {
            encode_response(r.id, &Done {})
        }
    };
    vec![Action::Send(line)]
}

pub fn unknown(id: u64, endpoint: EndpointId) -> String {
    encode_error(
        Some(id),
        &ErrorBody::new(
            ErrorCode::UnknownEndpoint,
            format!("no endpoint {endpoint}"),
        ),
    )
}

pub fn status() -> ServerStatus {
    ServerStatus {
        version: 1,
        uptime_s: 3725,
        draining: false,
        workers: vec![
            WorkerStatus {
                id: 0,
                core: Some(2),
                engine: Engine::IoUring,
                endpoints: 1,
                packets_per_s: 50,
                loop_overruns: 0,
            },
            WorkerStatus {
                id: 1,
                core: Some(3),
                engine: Engine::IoUring,
                endpoints: 1,
                packets_per_s: 0,
                loop_overruns: 3,
            },
        ],
        endpoints: 2,
        streams_receiving: 1,
        rx_packets: 6000,
        rx_bytes: 1_032_000,
        tx_packets: 10,
        tx_bytes: 1720,
    }
}

fn summary(endpoint: EndpointId, rx_packets: u64) -> EndpointSummary {
    let slin = endpoint == EP_SLIN16;
    EndpointSummary {
        endpoint,
        tenant: if slin { "beta" } else { "acme" }.parse().unwrap(),
        session: format!("call-{:x}", endpoint.0).parse().unwrap(),
        codec: if slin { Codec::Slin16 } else { Codec::Pcmu },
        local_addr: format!("127.0.0.1:{}", 40000 + endpoint.0 % 2 * 2)
            .parse()
            .unwrap(),
        peer: (!slin).then(|| "127.0.0.1:17234".parse().unwrap()),
        state: if slin {
            EndpointState::Waiting
        } else {
            EndpointState::Receiving
        },
        created_at_ms: 1_715_000_000_120,
        rx_packets,
        lost: 4,
        jitter_ms: 1.25,
    }
}

pub fn stats(endpoint: EndpointId) -> Option<EndpointStats> {
    if endpoint != EP_PCMU && endpoint != EP_SLIN16 {
        return None;
    }
    let s = summary(endpoint, 3100);
    Some(EndpointStats {
        endpoint,
        tenant: s.tenant,
        session: s.session,
        codec: s.codec,
        local_addr: s.local_addr,
        peer: s.peer,
        state: s.state,
        created_at_ms: s.created_at_ms,
        first_packet_at_ms: Some(1_715_000_000_480),
        last_packet_at_ms: Some(1_715_000_062_460),
        rx: RxStats {
            packets: 3100,
            bytes: 533_200,
            expected: 3104,
            lost: 4,
            jitter_ms: 1.25,
            max_jitter_ms: 7.5,
            ssrc: Some(0x1a2b_3c4d),
            ..RxStats::default()
        },
        jitter_buffer: JitterBufferStats {
            played: 3099,
            concealed: 5,
            current_delay_ms: 40,
            target_delay_ms: 40,
            ..JitterBufferStats::default()
        },
        tx: TxStats {
            packets: 1500,
            bytes: 258_000,
            frames_dropped: 0,
        },
        tap: TapStats {
            subscribers: 1,
            frames: 3104,
            overflows: 0,
        },
        rtcp: Some(RtcpSummary::default()),
    })
}

fn serve_media(mut stream: UnixStream, script: &MediaScript, log: &Mutex<Log>) {
    let mut decoder = MediaDecoder::new();
    let mut buf = [0; 4096];
    let mut out = vec![0; MAX_MESSAGE_LEN];
    let mut plays = 0u64;
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let at = now();
        decoder.push(&buf[..n]);
        let mut replies: Vec<Vec<u8>> = Vec::new();
        let mut subscribed = None;
        let mut close = false;
        while let Some(message) = decoder.next_message() {
            let Ok(message) = message else { return };
            match message {
                MediaMessage::Subscribe(s) => {
                    log.lock().unwrap().subscribes.push(s.endpoint);
                    let reply: MediaMessage<'_> = match script.refuse_subscribe {
                        Some(code) => ErrorReply {
                            endpoint: s.endpoint,
                            request: MediaKind::Subscribe as u8,
                            code,
                        }
                        .into(),
                        None => {
                            subscribed = Some(s.endpoint);
                            Ack {
                                endpoint: s.endpoint,
                                request: MediaKind::Subscribe as u8,
                            }
                            .into()
                        }
                    };
                    let n = reply.encode_into(&mut out).unwrap();
                    replies.push(out[..n].to_vec());
                }
                MediaMessage::Play(p) => {
                    log.lock().unwrap().plays.push(Played {
                        at,
                        endpoint: p.endpoint,
                        seq: p.seq,
                        flags: p.flags.0,
                        rate: p.sample_rate.0,
                        samples: p.samples.to_vec(),
                    });
                    if let Some((nth, code)) = script.refuse_play
                        && nth == plays
                    {
                        let reply = MediaMessage::Error(ErrorReply {
                            endpoint: p.endpoint,
                            request: MediaKind::Play as u8,
                            code,
                        });
                        let n = reply.encode_into(&mut out).unwrap();
                        replies.push(out[..n].to_vec());
                        close = true;
                    }
                    plays += 1;
                }
                _ => {}
            }
        }
        for reply in replies {
            if stream.write_all(&reply).is_err() {
                return;
            }
        }
        if close {
            return;
        }
        if let Some(endpoint) = subscribed
            && (!send_frames(&mut stream, endpoint, script, log) || !script.hold)
        {
            return;
        }
    }
}

fn send_frames(
    stream: &mut UnixStream,
    endpoint: EndpointId,
    script: &MediaScript,
    log: &Mutex<Log>,
) -> bool {
    let mut out = vec![0; MAX_MESSAGE_LEN];
    let mut seq = 100;
    for (i, (flags, samples)) in script.frames.iter().enumerate() {
        if let Some((after, count)) = script.dropped
            && after == i
        {
            let n = MediaMessage::Dropped(Dropped { endpoint, count })
                .encode_into(&mut out)
                .unwrap();
            if stream.write_all(&out[..n]).is_err() {
                return false;
            }
            seq += count;
        }
        let frame = MediaMessage::Frame(Frame {
            endpoint,
            seq,
            media_ts: (seq * 160) as u32,
            flags: *flags,
            sample_rate: ClockRate(script.rate.unwrap_or(8000)),
            samples: Samples::new(samples),
        });
        let n = frame.encode_into(&mut out).unwrap();
        if stream.write_all(&out[..n]).is_err() {
            return false;
        }
        seq += 1;
        log.lock().unwrap().frames_sent += 1;
    }
    true
}
