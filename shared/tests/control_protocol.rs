//! The control protocol and media framing against their documentation
//! (`docs/control-protocol.md`, read at test time) and under random input.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;

use mediagw_shared::codec::Codec;
use mediagw_shared::control::{
    self, Call, DestroyReason, DestroyedEvent, DrainingEvent, EndpointCreate, EndpointCreated,
    EndpointDestroy, EndpointList, EndpointListing, EndpointState, EndpointStats,
    EndpointStatsQuery, EndpointSummary, Engine, ErrorBody, ErrorCode, Event, EventKind, Fault,
    Handshake, Hello, HelloReply, JitterBounds, JitterBufferStats, LatchedEvent, LineFramer,
    LineTooLong, Op, ProtocolError, ReceivingEvent, Request, RxStats, ServerMessage, ServerStatus,
    Shutdown, SilentEvent, SsrcChangedEvent, StatusQuery, Subscribe, TapStats, TxStats,
    Unsubscribe, WorkerStatus, decode_reply, encode_error, encode_event, encode_request,
    encode_response, parse_request, parse_server_message,
};
use mediagw_shared::ids::{EndpointId, SessionId, TenantId};
use mediagw_shared::media::{
    self, Ack, Dropped, ErrorReply, Frame, FrameFlags, MAX_MESSAGE_LEN, MAX_SAMPLES, MediaDecoder,
    MediaErrorCode, MediaFormat, MediaMessage, Play, PlayFlags, Samples, Unknown,
};
use mediagw_shared::units::ClockRate;
use proptest::prelude::*;

const DOC: &str = include_str!("../../docs/control-protocol.md");

// ---------------------------------------------------------------------------
// The document
// ---------------------------------------------------------------------------

/// A fenced block: its info string, its lines, and whether it directly
/// follows the previous block (nothing but blank lines between).
struct Block<'a> {
    info: &'a str,
    lines: Vec<&'a str>,
    follows_previous: bool,
}

fn blocks(doc: &str) -> Vec<Block<'_>> {
    let mut out = Vec::new();
    let mut open: Option<Block<'_>> = None;
    let mut prose_since_block = true;
    for line in doc.lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => {
                open = Some(Block {
                    info,
                    lines: Vec::new(),
                    follows_previous: !prose_since_block,
                });
            }
            (Some(_), Some("")) => {
                out.push(open.take().expect("a block is open"));
                prose_since_block = false;
            }
            (Some(block), _) => block.lines.push(line),
            (None, None) => prose_since_block |= !line.trim().is_empty(),
        }
    }
    assert!(open.is_none(), "unclosed block in the doc");
    out
}

/// Re-encodes a successful result through the reply type of `op`.
fn reencode_reply(op: &str, id: u64, result: serde_json::Value) -> String {
    fn typed<C: Call>(id: u64, result: serde_json::Value) -> String {
        let reply = decode_reply::<C>(result).expect("the doc's result decodes");
        encode_response(id, &reply)
    }
    match op {
        "hello" => typed::<Hello>(id, result),
        "endpoint.create" => typed::<EndpointCreate>(id, result),
        "endpoint.destroy" => typed::<EndpointDestroy>(id, result),
        "endpoint.list" => typed::<EndpointList>(id, result),
        "endpoint.stats" => typed::<EndpointStatsQuery>(id, result),
        "subscribe" => typed::<Subscribe>(id, result),
        "unsubscribe" => typed::<Unsubscribe>(id, result),
        "status" => typed::<StatusQuery>(id, result),
        "drain" => typed::<control::Drain>(id, result),
        "shutdown" => typed::<Shutdown>(id, result),
        other => panic!("no reply type for {other}"),
    }
}

#[test]
fn every_json_line_in_the_doc_is_golden() {
    let mut op_of_id: HashMap<u64, &'static str> = HashMap::new();
    let mut ops = BTreeSet::new();
    let mut events = BTreeSet::new();
    let mut codes = BTreeSet::new();
    let mut lines = 0;
    for block in blocks(DOC).iter().filter(|b| b.info == "json") {
        for line in &block.lines {
            lines += 1;
            let framed = format!("{line}\n");
            if line.starts_with("{\"id\"") {
                if let Ok(request) = parse_request(line.as_bytes()) {
                    assert_eq!(encode_request(&request), framed, "request re-encodes");
                    op_of_id.insert(request.id, request.op.name());
                    ops.insert(request.op.name());
                    continue;
                }
                let Ok(ServerMessage::Response { id, result }) =
                    parse_server_message(line.as_bytes())
                else {
                    panic!("neither a request nor a response: {line}");
                };
                let again = match result {
                    Ok(value) => {
                        let id = id.expect("successful responses have ids");
                        let op = op_of_id
                            .get(&id)
                            .unwrap_or_else(|| panic!("no request {id}"));
                        reencode_reply(op, id, value)
                    }
                    Err(error) => {
                        assert_eq!(error.retryable, error.code.retryable(), "{line}");
                        codes.insert(error.code.name());
                        encode_error(id, &error)
                    }
                };
                assert_eq!(again, framed, "response re-encodes");
            } else if line.starts_with("{\"event\"") {
                let Ok(ServerMessage::Event(event)) = parse_server_message(line.as_bytes()) else {
                    panic!("not an event: {line}");
                };
                assert_eq!(encode_event(&event), framed, "event re-encodes");
                events.insert(event.kind().name());
            } else {
                panic!("json blocks hold protocol lines only: {line}");
            }
        }
    }
    assert!(lines > 40, "found only {lines} lines");
    assert_eq!(
        ops,
        Op::NAMES.into_iter().collect(),
        "every op has an example"
    );
    let all_events: BTreeSet<_> = EventKind::ALL.into_iter().map(EventKind::name).collect();
    assert_eq!(events, all_events, "every event has an example");
    let all_codes: BTreeSet<_> = ErrorCode::ALL.into_iter().map(ErrorCode::name).collect();
    assert_eq!(codes, all_codes, "every error code has an example");
}

#[test]
fn doc_error_table_matches_the_codes() {
    for code in ErrorCode::ALL {
        let fault = match code.fault() {
            Fault::Client => "client",
            Fault::Server => "server",
        };
        let retry = if code.retryable() { "yes" } else { "no" };
        let row = format!("| `{}` | {fault} | {retry} |", code.name());
        assert!(DOC.contains(&row), "missing error table row {row}");
    }
}

/// A ```text block of inputs directly followed by a ```json block of
/// replies: each input, sent on a fresh connection in order, gets its reply.
#[test]
fn doc_failing_inputs_get_the_documented_replies() {
    let blocks = blocks(DOC);
    let mut pairs = 0;
    for pair in blocks.windows(2) {
        let [inputs, replies] = pair else {
            unreachable!("windows(2)")
        };
        if inputs.info != "text" || replies.info != "json" || !replies.follows_previous {
            continue;
        }
        pairs += 1;
        assert!(
            replies.lines.len() >= inputs.lines.len(),
            "a reply per input"
        );
        let mut handshake = Handshake::new();
        for (input, reply) in inputs.lines.iter().zip(&replies.lines) {
            let answer = match parse_request(input.as_bytes()) {
                Err(e) => e.to_line(),
                Ok(request) => handshake.check(&request).expect_err(input).to_line(),
            };
            assert_eq!(answer, format!("{reply}\n"), "answer to {input}");
        }
    }
    assert_eq!(pairs, 2, "the handshake and the error examples");
}

fn hex_dump(lines: &[&str]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for line in lines {
        for token in line.split_whitespace() {
            if token.len() != 2 {
                break;
            }
            let Ok(b) = u8::from_str_radix(token, 16) else {
                break;
            };
            bytes.push(b);
        }
    }
    bytes
}

#[test]
fn doc_hex_dumps_decode() {
    let samples = [1i16, -2, 4660, -32768];
    let expected = [
        MediaMessage::Subscribe(media::Subscribe {
            endpoint: EndpointId(0x1a2b),
            format: MediaFormat::PCM16,
        }),
        MediaMessage::Frame(Frame {
            endpoint: EndpointId(0x1a2b),
            seq: 7,
            media_ts: 0x0001_2345,
            flags: FrameFlags::CONCEALED,
            sample_rate: ClockRate(8000),
            samples: Samples::new(&samples),
        }),
    ];
    let dumps: Vec<Vec<u8>> = blocks(DOC)
        .iter()
        .filter(|b| b.lines.first().is_some_and(|l| l.starts_with("4d 47")))
        .map(|b| hex_dump(&b.lines))
        .collect();
    assert_eq!(dumps.len(), expected.len());
    for (bytes, message) in dumps.iter().zip(expected) {
        let mut d = MediaDecoder::new();
        d.push(bytes);
        assert_eq!(d.next_message(), Some(Ok(message)));
        assert_eq!(encode(message), *bytes);
    }

    // The socat example's printf.
    let printf = DOC
        .split("printf '")
        .nth(1)
        .and_then(|s| s.split('\'').next())
        .unwrap();
    let bytes: Vec<u8> = printf
        .split("\\x")
        .skip(1)
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    assert_eq!(bytes, encode(expected[0]));
}

// ---------------------------------------------------------------------------
// Control protocol
// ---------------------------------------------------------------------------

fn tenant() -> TenantId {
    "acme".parse().unwrap()
}

fn session() -> SessionId {
    "1715000000.42".parse().unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn every_op() -> Vec<Op> {
    let mut full = EndpointCreate::new(tenant(), session(), Codec::Slin16);
    full.payload_type = Some(96);
    full.ptime_ms = Some(40);
    full.jitter = Some(JitterBounds {
        min_ms: 0,
        max_ms: JitterBounds::MAX_MS,
    });
    full.rtcp = true;
    full.bind_ip = Some("::1".parse().unwrap());
    vec![
        Hello::new("mediagwctl/0.1.0 \"quoted\"\nnewline ✓").into(),
        EndpointCreate::new(tenant(), session(), Codec::Pcma).into(),
        full.into(),
        EndpointDestroy {
            endpoint: EndpointId(u64::MAX),
        }
        .into(),
        EndpointList::default().into(),
        EndpointList {
            tenant: Some(tenant()),
        }
        .into(),
        EndpointStatsQuery {
            endpoint: EndpointId(0),
        }
        .into(),
        Subscribe::default().into(),
        Subscribe {
            events: Some(EventKind::ALL.to_vec()),
            tenant: Some(tenant()),
        }
        .into(),
        Subscribe {
            events: Some(vec![]),
            tenant: None,
        }
        .into(),
        Unsubscribe.into(),
        StatusQuery.into(),
        control::Drain.into(),
        Shutdown { drain: true }.into(),
        Shutdown { drain: false }.into(),
    ]
}

#[test]
fn every_op_round_trips() {
    let mut names = BTreeSet::new();
    for (id, op) in every_op().into_iter().enumerate() {
        let request = Request::new(id as u64, op);
        let line = encode_request(&request);
        assert_eq!(line.find('\n'), Some(line.len() - 1), "one line: {line}");
        assert_eq!(
            parse_request(line.as_bytes()),
            Ok(request.clone()),
            "{line}"
        );
        names.insert(request.op.name());
    }
    assert_eq!(names, Op::NAMES.into_iter().collect());
}

fn stats() -> EndpointStats {
    EndpointStats {
        endpoint: EndpointId(1),
        tenant: tenant(),
        session: session(),
        codec: Codec::Pcmu,
        local_addr: addr("[::1]:40000"),
        peer: None,
        state: EndpointState::Waiting,
        created_at_ms: 1,
        first_packet_at_ms: None,
        last_packet_at_ms: None,
        rx: RxStats {
            lost: -2,
            fraction_lost: 0.5,
            ..RxStats::default()
        },
        jitter_buffer: JitterBufferStats::default(),
        tx: TxStats::default(),
        tap: TapStats::default(),
        rtcp: None,
    }
}

fn round_trip<C: Call>(reply: &C::Reply) -> C::Reply {
    let line = encode_response(9, reply);
    let Ok(ServerMessage::Response {
        id: Some(9),
        result: Ok(value),
    }) = parse_server_message(line.as_bytes())
    else {
        panic!("{line}")
    };
    decode_reply::<C>(value).unwrap()
}

#[test]
fn every_reply_round_trips() {
    let hello = HelloReply::new("dp");
    assert_eq!(round_trip::<Hello>(&hello), hello);
    let created = EndpointCreated {
        endpoint: EndpointId(2),
        tenant: tenant(),
        session: session(),
        local_addr: addr("10.0.0.5:40000"),
        rtcp_port: None,
    };
    assert_eq!(round_trip::<EndpointCreate>(&created), created);
    assert_eq!(round_trip::<EndpointStatsQuery>(&stats()), stats());
    assert_eq!(round_trip::<EndpointDestroy>(&stats()), stats());
    let listing = EndpointListing {
        endpoints: vec![EndpointSummary {
            endpoint: EndpointId(3),
            tenant: tenant(),
            session: session(),
            codec: Codec::Slin16,
            local_addr: addr("10.0.0.5:40002"),
            peer: Some(addr("10.0.0.9:1")),
            state: EndpointState::Silent,
            created_at_ms: 5,
            rx_packets: 6,
            lost: 0,
            jitter_ms: 0.125,
        }],
    };
    assert_eq!(round_trip::<EndpointList>(&listing), listing);
    let status = ServerStatus {
        version: 1,
        uptime_s: 2,
        draining: true,
        workers: vec![WorkerStatus {
            id: 0,
            core: None,
            engine: Engine::Epoll,
            endpoints: 0,
            packets_per_s: 0,
            loop_overruns: 0,
        }],
        endpoints: 0,
        streams_receiving: 0,
        rx_packets: u64::MAX,
        rx_bytes: 0,
        tx_packets: 0,
        tx_bytes: 0,
    };
    assert_eq!(round_trip::<StatusQuery>(&status), status);
    let done = control::Done {};
    assert_eq!(round_trip::<Subscribe>(&done), done);
    assert_eq!(round_trip::<Shutdown>(&done), done);
}

#[test]
fn every_event_round_trips() {
    let events = [
        Event::Receiving(ReceivingEvent {
            endpoint: EndpointId(1),
            tenant: tenant(),
            at_ms: 2,
            peer: addr("10.0.0.9:1"),
            ssrc: 0,
        }),
        Event::Latched(LatchedEvent {
            endpoint: EndpointId(1),
            tenant: tenant(),
            at_ms: 2,
            peer: addr("10.0.0.9:1"),
            previous: Some(addr("10.0.0.9:2")),
        }),
        Event::Silent(SilentEvent {
            endpoint: EndpointId(1),
            tenant: tenant(),
            at_ms: 2,
            last_packet_at_ms: 1,
        }),
        Event::SsrcChanged(SsrcChangedEvent {
            endpoint: EndpointId(1),
            tenant: tenant(),
            at_ms: 2,
            old_ssrc: u32::MAX,
            new_ssrc: 1,
        }),
        Event::Destroyed(DestroyedEvent {
            endpoint: EndpointId(1),
            tenant: tenant(),
            at_ms: 2,
            reason: DestroyReason::Shutdown,
            stats: Box::new(stats()),
        }),
        Event::Draining(DrainingEvent { at_ms: 3 }),
    ];
    for event in events {
        let line = encode_event(&event);
        assert_eq!(
            parse_server_message(line.as_bytes()),
            Ok(ServerMessage::Event(event.clone()))
        );
        assert_eq!(event.endpoint().is_some(), event.tenant().is_some());
    }
}

#[test]
fn malformed_requests_get_the_right_code_and_id() {
    let cases: &[(&[u8], Option<u64>, ErrorCode)] = &[
        (b"{\"id\":1,\"op\":\"status\"", None, ErrorCode::BadJson),
        (b"\xff\xfe", None, ErrorCode::BadJson),
        (
            b"{\"id\":1,\"op\":\"status\"} trailing",
            None,
            ErrorCode::BadJson,
        ),
        (b"null", None, ErrorCode::BadRequest),
        (
            b"{\"id\":1.5,\"op\":\"status\"}",
            None,
            ErrorCode::BadRequest,
        ),
        (
            b"{\"id\":null,\"op\":\"status\"}",
            None,
            ErrorCode::BadRequest,
        ),
        (
            b"{\"id\":18446744073709551616,\"op\":\"status\"}",
            None,
            ErrorCode::BadRequest,
        ),
        (
            b"{\"id\":18446744073709551615,\"op\":\"nope\"}",
            Some(u64::MAX),
            ErrorCode::UnknownOp,
        ),
        (
            b"{\"id\":4,\"op\":\"ENDPOINT.CREATE\"}",
            Some(4),
            ErrorCode::UnknownOp,
        ),
        (
            b"{\"id\":5,\"op\":\"endpoint.destroy\"}",
            Some(5),
            ErrorCode::BadRequest,
        ),
        (
            b"{\"id\":6,\"op\":\"endpoint.destroy\",\"endpoint\":\"1\"}",
            Some(6),
            ErrorCode::BadRequest,
        ),
        (
            b"{\"id\":7,\"op\":\"hello\",\"version\":\"1\",\"client\":\"x\"}",
            Some(7),
            ErrorCode::BadRequest,
        ),
        (
            b"{\"id\":8,\"op\":\"subscribe\",\"events\":[\"nope\"]}",
            Some(8),
            ErrorCode::BadRequest,
        ),
        (
            b"{\"id\":9,\"op\":\"shutdown\",\"drain\":1}",
            Some(9),
            ErrorCode::BadRequest,
        ),
        (
            b"{\"id\":10,\"op\":\"endpoint.list\",\"tenant\":\"\"}",
            Some(10),
            ErrorCode::BadRequest,
        ),
    ];
    for &(line, id, code) in cases {
        let e = parse_request(line).expect_err(&String::from_utf8_lossy(line));
        assert_eq!(
            (e.id, e.code()),
            (id, code),
            "{}",
            String::from_utf8_lossy(line)
        );
        // The error line parses back on the client side.
        let Ok(ServerMessage::Response {
            id: back,
            result: Err(body),
        }) = parse_server_message(e.to_line().as_bytes())
        else {
            panic!("{}", e.to_line())
        };
        assert_eq!((back, body.code), (id, code));
    }
}

#[test]
fn line_too_long_becomes_an_error_line() {
    let e = ProtocolError::from(LineTooLong { max: 10 });
    assert_eq!((e.id, e.code()), (None, ErrorCode::LineTooLong));
    let body = ErrorBody::new(ErrorCode::Internal, "x");
    assert!(body.retryable);
}

// ---------------------------------------------------------------------------
// Line framer
// ---------------------------------------------------------------------------

type Lines = Vec<Result<Vec<u8>, LineTooLong>>;

/// What a framer must yield for `input` with limit `max`, however it is cut.
fn reference_lines(input: &[u8], max: usize) -> Lines {
    let mut parts: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
    let tail = parts.pop().unwrap_or_default();
    let mut out: Lines = parts
        .into_iter()
        .map(|line| {
            if line.len() > max {
                Err(LineTooLong { max })
            } else {
                Ok(line.strip_suffix(b"\r").unwrap_or(line).to_vec())
            }
        })
        .collect();
    if tail.len() > max {
        out.push(Err(LineTooLong { max }));
    }
    out
}

fn frame_in_chunks(input: &[u8], max: usize, cuts: &[usize]) -> Lines {
    let mut framer = LineFramer::new(max);
    let mut out = Vec::new();
    let mut at = 0;
    for &cut in cuts.iter().chain([&input.len()]) {
        let cut = cut.clamp(at, input.len());
        let chunk = &input[at..cut];
        framer.push(chunk);
        assert!(
            framer.buffered() <= max + chunk.len(),
            "bounded while pushing"
        );
        while let Some(line) = framer.next_line() {
            out.push(line.map(<[u8]>::to_vec));
        }
        assert!(framer.buffered() <= max, "bounded once drained");
        at = cut;
    }
    out
}

#[test]
fn framer_split_at_every_byte_boundary() {
    let input = b"{\"id\":1,\"op\":\"status\"}\r\nthis line is far too long for the limit\n\nok\nlong unterminated tail, over the limit";
    let max = 24;
    let expected = reference_lines(input, max);
    assert_eq!(expected.len(), 5);
    for a in 0..=input.len() {
        assert_eq!(frame_in_chunks(input, max, &[a]), expected, "cut at {a}");
        for b in a..=input.len() {
            assert_eq!(
                frame_in_chunks(input, max, &[a, b]),
                expected,
                "cuts at {a}, {b}"
            );
        }
    }
    // One byte at a time.
    let every: Vec<usize> = (0..input.len()).collect();
    assert_eq!(frame_in_chunks(input, max, &every), expected);
}

// ---------------------------------------------------------------------------
// Media framing
// ---------------------------------------------------------------------------

fn encode(message: MediaMessage<'_>) -> Vec<u8> {
    let mut out = vec![0; MAX_MESSAGE_LEN];
    let n = message.encode_into(&mut out).unwrap();
    out.truncate(n);
    out
}

/// Owned form of a message, for proptest.
#[derive(Debug, Clone)]
enum Owned {
    Subscribe(u64, u8),
    Unsubscribe(u64),
    Play(u64, u64, u16, u32, Vec<i16>),
    Frame(u64, u64, u32, u16, u32, Vec<i16>),
    Ack(u64, u8),
    Error(u64, u8, u16),
    Dropped(u64, u64),
    Unknown(u8, u16, Vec<u8>),
}

impl Owned {
    fn message(&self) -> MediaMessage<'_> {
        match self {
            Self::Subscribe(e, f) => media::Subscribe {
                endpoint: EndpointId(*e),
                format: MediaFormat(*f),
            }
            .into(),
            Self::Unsubscribe(e) => media::Unsubscribe {
                endpoint: EndpointId(*e),
            }
            .into(),
            Self::Play(e, seq, flags, rate, s) => Play {
                endpoint: EndpointId(*e),
                seq: *seq,
                flags: PlayFlags(*flags),
                sample_rate: ClockRate(*rate),
                samples: Samples::new(s),
            }
            .into(),
            Self::Frame(e, seq, ts, flags, rate, s) => Frame {
                endpoint: EndpointId(*e),
                seq: *seq,
                media_ts: *ts,
                flags: FrameFlags(*flags),
                sample_rate: ClockRate(*rate),
                samples: Samples::new(s),
            }
            .into(),
            Self::Ack(e, k) => Ack {
                endpoint: EndpointId(*e),
                request: *k,
            }
            .into(),
            Self::Error(e, k, c) => ErrorReply {
                endpoint: EndpointId(*e),
                request: *k,
                code: MediaErrorCode(*c),
            }
            .into(),
            Self::Dropped(e, n) => Dropped {
                endpoint: EndpointId(*e),
                count: *n,
            }
            .into(),
            Self::Unknown(kind, flags, body) => Unknown {
                kind: *kind,
                flags: *flags,
                body,
            }
            .into(),
        }
    }
}

fn owned_message() -> impl Strategy<Value = Owned> {
    let samples = || prop::collection::vec(any::<i16>(), 0..=MAX_SAMPLES);
    let unknown_kind = any::<u8>().prop_filter("unknown kind", |k| {
        media::MediaKind::from_byte(*k).is_none()
    });
    prop_oneof![
        (any::<u64>(), any::<u8>()).prop_map(|(e, f)| Owned::Subscribe(e, f)),
        any::<u64>().prop_map(Owned::Unsubscribe),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u16>(),
            any::<u32>(),
            samples()
        )
            .prop_map(|(e, q, f, r, s)| Owned::Play(e, q, f, r, s)),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            any::<u16>(),
            any::<u32>(),
            samples()
        )
            .prop_map(|(e, q, t, f, r, s)| Owned::Frame(e, q, t, f, r, s)),
        (any::<u64>(), any::<u8>()).prop_map(|(e, k)| Owned::Ack(e, k)),
        (any::<u64>(), any::<u8>(), any::<u16>()).prop_map(|(e, k, c)| Owned::Error(e, k, c)),
        (any::<u64>(), any::<u64>()).prop_map(|(e, n)| Owned::Dropped(e, n)),
        (
            unknown_kind,
            any::<u16>(),
            prop::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(k, f, b)| Owned::Unknown(k, f, b)),
    ]
}

/// Decodes `stream` pushed in pieces cut at `cuts`: messages re-encoded, and
/// the errors.
fn decode_in_chunks(stream: &[u8], cuts: &[usize]) -> (Vec<Vec<u8>>, Vec<media::DecodeError>) {
    let mut decoder = MediaDecoder::new();
    let (mut messages, mut errors) = (Vec::new(), Vec::new());
    let mut at = 0;
    let mut cuts = cuts.to_vec();
    cuts.sort_unstable();
    for cut in cuts.into_iter().chain([stream.len()]) {
        let cut = cut.clamp(at, stream.len());
        decoder.push(&stream[at..cut]);
        while let Some(next) = decoder.next_message() {
            match next {
                Ok(m) => messages.push(encode(m)),
                Err(e) => errors.push(e),
            }
        }
        assert!(decoder.buffered() < MAX_MESSAGE_LEN, "bounded once drained");
        at = cut;
    }
    (messages, errors)
}

#[test]
fn media_split_at_every_byte_boundary() {
    let pcm: Vec<i16> = (0..160).collect();
    let owned = [
        Owned::Subscribe(1, 1),
        Owned::Frame(1, 0, 160, 0, 8000, pcm.clone()),
        Owned::Play(1, 0, 1, 8000, pcm),
        Owned::Dropped(1, 3),
    ];
    let encoded: Vec<Vec<u8>> = owned.iter().map(|o| encode(o.message())).collect();
    let stream = encoded.concat();
    for cut in 0..=stream.len() {
        assert_eq!(
            decode_in_chunks(&stream, &[cut]),
            (encoded.clone(), vec![]),
            "cut {cut}"
        );
    }
}

proptest! {
    #[test]
    fn parse_request_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_request(&bytes);
        let _ = parse_server_message(&bytes);
    }

    #[test]
    fn mutated_requests_never_panic_and_keep_the_id_rules(
        op in 0..15usize,
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let line = encode_request(&Request::new(77, every_op().swap_remove(op)));
        let mut bytes = line.into_bytes();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        match parse_request(&bytes) {
            Ok(request) => prop_assert_eq!(parse_request(encode_request(&request).as_bytes()), Ok(request)),
            Err(e) if e.code() == ErrorCode::BadJson => prop_assert_eq!(e.id, None),
            Err(e) if e.code() == ErrorCode::UnknownOp => prop_assert!(e.id.is_some()),
            Err(e) => prop_assert_eq!(e.code(), ErrorCode::BadRequest),
        }
    }

    #[test]
    fn hello_client_text_round_trips(client in ".*", id in any::<u64>()) {
        let request = Request::new(id, Hello { version: 1, client });
        let line = encode_request(&request);
        prop_assert_eq!(line.find('\n'), Some(line.len() - 1));
        prop_assert_eq!(parse_request(line.as_bytes()), Ok(request));
    }

    #[test]
    fn endpoint_create_round_trips(
        tenant in "[A-Za-z0-9_.-]{1,64}",
        session in "[!-~]{1,128}",
        codec in prop::sample::select(Codec::ALL.to_vec()),
        payload_type in prop::option::of(0u8..=127),
        ptime in prop::option::of(1u16..=6),
        jitter in prop::option::of((0u16..=1000, 0u16..=1000)),
        rtcp in any::<bool>(),
        v6 in any::<bool>(),
    ) {
        let mut create = EndpointCreate::new(tenant.parse().unwrap(), session.parse().unwrap(), codec);
        create.payload_type = payload_type;
        create.ptime_ms = ptime.map(|p| p * 10);
        create.jitter = jitter.map(|(a, b)| JitterBounds { min_ms: a.min(b), max_ms: a.max(b) });
        create.rtcp = rtcp;
        create.bind_ip = Some(if v6 { "fe80::1".parse().unwrap() } else { "10.1.2.3".parse().unwrap() });
        let request = Request::new(1, create);
        prop_assert_eq!(parse_request(encode_request(&request).as_bytes()), Ok(request));
    }

    #[test]
    fn framer_matches_the_reference(
        input in prop::collection::vec(prop::sample::select(b"ab\r\n{}".to_vec()), 0..200),
        max in 0usize..16,
        cuts in prop::collection::vec(0usize..200, 0..8),
    ) {
        let mut cuts = cuts;
        cuts.sort_unstable();
        prop_assert_eq!(frame_in_chunks(&input, max, &cuts), reference_lines(&input, max));
    }

    #[test]
    fn framer_never_panics(
        input in prop::collection::vec(any::<u8>(), 0..512),
        max in 0usize..64,
        cuts in prop::collection::vec(0usize..512, 0..8),
    ) {
        let mut cuts = cuts;
        cuts.sort_unstable();
        let lines = frame_in_chunks(&input, max, &cuts);
        prop_assert_eq!(lines, reference_lines(&input, max));
    }

    #[test]
    fn media_decoder_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
        cuts in prop::collection::vec(0usize..4096, 0..8),
    ) {
        let _ = decode_in_chunks(&bytes, &cuts);
    }

    #[test]
    fn media_round_trips(
        owned in prop::collection::vec(owned_message(), 1..6),
        cuts in prop::collection::vec(0usize..20_000, 0..6),
    ) {
        let encoded: Vec<Vec<u8>> = owned.iter().map(|o| encode(o.message())).collect();
        for (o, bytes) in owned.iter().zip(&encoded) {
            let mut d = MediaDecoder::new();
            d.push(bytes);
            prop_assert_eq!(d.next_message(), Some(Ok(o.message())));
        }
        let stream = encoded.concat();
        prop_assert_eq!(decode_in_chunks(&stream, &cuts), (encoded, vec![]));
    }

    #[test]
    fn media_garbage_mid_stream_is_one_error_then_resync(
        before in prop::collection::vec(owned_message(), 0..3),
        garbage in prop::collection::vec(any::<u8>(), 1..300),
        after in prop::collection::vec(owned_message(), 1..3),
        cuts in prop::collection::vec(0usize..10_000, 0..6),
    ) {
        // Garbage holding a plausible header could frame a message.
        prop_assume!(!garbage.windows(3).any(|w| w == [b'M', b'G', 1]));
        let before: Vec<Vec<u8>> = before.iter().map(|o| encode(o.message())).collect();
        let after: Vec<Vec<u8>> = after.iter().map(|o| encode(o.message())).collect();
        let stream = [before.concat(), garbage.clone(), after.concat()].concat();
        let mut decoder = MediaDecoder::new();
        let (messages, errors) = decode_in_chunks(&stream, &cuts);
        prop_assert_eq!(errors.len(), 1, "{:?}", errors);
        prop_assert!(errors[0].is_framing());
        prop_assert_eq!(messages, [before, after].concat());
        decoder.push(&stream);
        while decoder.next_message().is_some() {}
        prop_assert_eq!(decoder.skipped_bytes(), garbage.len() as u64);
    }
}
