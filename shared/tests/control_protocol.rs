use mediagw_shared::control::*;
use mediagw_shared::codec::Codec;
use mediagw_shared::ids::*;
use mediagw_shared::media::*;
use mediagw_shared::units::ClockRate;

fn stats(final_: bool) -> EndpointStats {
    EndpointStats {
        endpoint: EndpointId(0x1a2b),
        tenant: "acme".parse().unwrap(),
        session: "1715000000.42".parse().unwrap(),
        codec: Codec::Pcmu,
        local_addr: "10.0.0.5:40000".parse().unwrap(),
        peer: Some("10.0.0.9:17234".parse().unwrap()),
        state: if final_ { EndpointState::Silent } else { EndpointState::Receiving },
        created_at_ms: 1715000000120,
        first_packet_at_ms: Some(1715000000480),
        last_packet_at_ms: Some(1715000062460),
        rx: RxStats { packets: 3100, bytes: 533200, expected: 3104, lost: 4, fraction_lost: 0.0, duplicates: 1, reordered: 2, late: 1, jitter_ms: 1.25, max_jitter_ms: 7.5, ssrc: Some(0x1a2b3c4d), ssrc_changes: 0, malformed: 0, foreign_source: 3, wrong_payload_type: 0, rtcp_packets: 12 },
        jitter_buffer: JitterBufferStats { played: 3099, concealed: 5, late_dropped: 1, overflow_dropped: 0, current_delay_ms: 40, target_delay_ms: 40 },
        tx: TxStats { packets: 1500, bytes: 258000, frames_dropped: 0 },
        tap: TapStats { subscribers: 1, frames: 3104, overflows: 0 },
        rtcp: Some(RtcpSummary {
            last_sr: Some(SenderReportSummary { received_at_ms: 1715000060010, ssrc: 0x1a2b3c4d, ntp_ms: 1715000060000, rtp_ts: 480160, packets: 3000, octets: 480000 }),
            last_rr: Some(ReceiverReportSummary { received_at_ms: 1715000060010, ssrc: 0x1a2b3c4d, fraction_lost: 0.0, cumulative_lost: 0, jitter_ms: 0.5, rtt_ms: Some(1.5) }),
        }),
    }
}

#[test]
fn scratch() {
    let t: TenantId = "acme".parse().unwrap();
    let mut c = EndpointCreate::new(t.clone(), "1715000000.43".parse().unwrap(), Codec::Slin16);
    c.payload_type = Some(118); c.ptime_ms = Some(20); c.jitter = Some(JitterBounds{min_ms:40,max_ms:200}); c.rtcp = true; c.bind_ip = Some("10.0.0.5".parse().unwrap());
    let reqs: Vec<(u64, Op)> = vec![
        (1, Hello::new("mediagwctl/0.1.0").into()),
        (2, EndpointCreate::new(t.clone(), "1715000000.42".parse().unwrap(), Codec::Pcmu).into()),
        (3, c.into()),
        (4, EndpointList{tenant: Some(t.clone())}.into()),
        (5, EndpointStatsQuery{endpoint: EndpointId(0x1a2b)}.into()),
        (6, Subscribe{events: Some(vec![EventKind::Receiving, EventKind::Destroyed]), tenant: Some(t.clone())}.into()),
        (7, Op::Unsubscribe(Unsubscribe)),
        (8, Op::Status(StatusQuery)),
        (9, Op::Drain(Drain)),
        (10, EndpointDestroy{endpoint: EndpointId(0x1a2b)}.into()),
        (11, Shutdown{drain: false}.into()),
    ];
    for (id, op) in reqs { print!("{}", encode_request(&Request::new(id, op))); }
    print!("{}", encode_response(1, &HelloReply::new("mediagw-dataplane/0.1.0")));
    print!("{}", encode_response(2, &EndpointCreated{endpoint: EndpointId(0x1a2b), tenant: t.clone(), session: "1715000000.42".parse().unwrap(), local_addr: "10.0.0.5:40000".parse().unwrap(), rtcp_port: None}));
    print!("{}", encode_response(3, &EndpointCreated{endpoint: EndpointId(0x1a2c), tenant: t.clone(), session: "1715000000.43".parse().unwrap(), local_addr: "10.0.0.5:40002".parse().unwrap(), rtcp_port: Some(40003)}));
    print!("{}", encode_response(4, &EndpointListing{endpoints: vec![EndpointSummary{endpoint: EndpointId(0x1a2b), tenant: t.clone(), session: "1715000000.42".parse().unwrap(), codec: Codec::Pcmu, local_addr: "10.0.0.5:40000".parse().unwrap(), peer: Some("10.0.0.9:17234".parse().unwrap()), state: EndpointState::Receiving, created_at_ms: 1715000000120, rx_packets: 3100, lost: 4, jitter_ms: 1.25},
      EndpointSummary{endpoint: EndpointId(0x1a2c), tenant: t.clone(), session: "1715000000.43".parse().unwrap(), codec: Codec::Slin16, local_addr: "10.0.0.5:40002".parse().unwrap(), peer: None, state: EndpointState::Waiting, created_at_ms: 1715000001500, rx_packets: 0, lost: 0, jitter_ms: 0.0}]}));
    print!("{}", encode_response(5, &stats(false)));
    print!("{}", encode_response(6, &Done{}));
    print!("{}", encode_response(8, &ServerStatus{version:1, uptime_s: 86400, draining: false, workers: vec![WorkerStatus{id:0, core: Some(2), engine: Engine::IoUring, endpoints: 412, packets_per_s: 20600, loop_overruns: 0}, WorkerStatus{id:1, core: Some(3), engine: Engine::IoUring, endpoints: 409, packets_per_s: 20450, loop_overruns: 2}], endpoints: 821, streams_receiving: 815, rx_packets: 1780000000, rx_bytes: 306160000000, tx_packets: 890000000, tx_bytes: 153080000000}));
    print!("{}", encode_response(10, &stats(true)));
    print!("{}", encode_event(&Event::Latched(LatchedEvent{endpoint: EndpointId(0x1a2b), tenant: t.clone(), at_ms: 1715000000480, peer: "10.0.0.9:17234".parse().unwrap(), previous: None})));
    print!("{}", encode_event(&Event::Receiving(ReceivingEvent{endpoint: EndpointId(0x1a2b), tenant: t.clone(), at_ms: 1715000000480, peer: "10.0.0.9:17234".parse().unwrap(), ssrc: 0x1a2b3c4d})));
    print!("{}", encode_event(&Event::SsrcChanged(SsrcChangedEvent{endpoint: EndpointId(0x1a2b), tenant: t.clone(), at_ms: 1715000030000, old_ssrc: 0x1a2b3c4d, new_ssrc: 0x5e6f7081})));
    print!("{}", encode_event(&Event::Silent(SilentEvent{endpoint: EndpointId(0x1a2b), tenant: t.clone(), at_ms: 1715000064460, last_packet_at_ms: 1715000062460})));
    print!("{}", encode_event(&Event::Draining(DrainingEvent{at_ms: 1715000070000})));
    print!("{}", encode_event(&Event::Destroyed(DestroyedEvent{endpoint: EndpointId(0x1a2b), tenant: t.clone(), at_ms: 1715000065000, reason: DestroyReason::Requested, stats: Box::new(stats(true))})));
    for l in [&b"this is not json"[..], br#"{"id":12,"op":"frobnicate"}"#, br#"{"id":13,"op":"endpoint.create","tenant":"acme","codec":"PCMU"}"#, br#"{"id":14,"op":"endpoint.stats","endpoint":42}"#, br#"{"id":15,"op":"endpoint.create","tenant":"acme","session":"x","codec":"PCMU","ptime":20}"#, br#"{"id":16,"op":"endpoint.create","tenant":"acme","session":"x","codec":"opus"}"#,br#"{"id":17,"op":"endpoint.create","tenant":"ac me","session":"x","codec":"PCMU"}"#, br#"{"op":"status"}"#, br#"[1,2]"#] {
        print!("{}", parse_request(l).unwrap_err().to_line());
    }
    let mut h = Handshake::new();
    print!("{}", h.check(&parse_request(br#"{"id":1,"op":"status"}"#).unwrap()).unwrap_err().to_line());
    print!("{}", h.check(&parse_request(br#"{"id":1,"op":"hello","version":2,"client":"future/9"}"#).unwrap()).unwrap_err().to_line());
    print!("{}", ProtocolError::from(LineTooLong{max: DEFAULT_MAX_LINE}).to_line());
    let mut buf = [0u8; 64];
    let n = MediaMessage::Subscribe(mediagw_shared::media::Subscribe{endpoint: EndpointId(0x1a2b), format: MediaFormat::PCM16}).encode_into(&mut buf).unwrap();
    println!("{:02x?}", &buf[..n]);
    let s = [1i16, -2, 0x1234, -32768];
    let n = MediaMessage::Frame(Frame{endpoint: EndpointId(0x1a2b), seq: 7, media_ts: 0x00012345, flags: FrameFlags::CONCEALED, sample_rate: ClockRate(8000), samples: Samples::new(&s)}).encode_into(&mut buf).unwrap();
    println!("{:02x?}", &buf[..n]);
}
