//! The control-socket commands.

use std::time::Duration;

use mediagw_shared::codec::Codec;
use mediagw_shared::control::{
    DrainingEvent, ErrorBody, ErrorCode, Event, HelloReply, JitterBounds, Op, encode_error,
    encode_event, encode_response,
};
use mediagw_shared::ids::EndpointId;
use serde_json::Value;

use crate::fake::{self, Action, EP_PCMU, Fake};
use crate::run;

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

#[test]
fn status_prints_workers_and_totals() {
    let fake = Fake::start();
    let out = run(&fake, &["status"]).ok().to_owned();
    assert_eq!(
        lines(&out),
        [
            "fake-dataplane/1.0  protocol 1  up 01:02:05",
            "endpoints 2 (1 receiving)  rx 6000 pkts, 1.0 MB  tx 10 pkts, 1.7 kB",
            "",
            "WORKER  CORE  ENGINE    ENDPOINTS  PKT/S  OVERRUNS",
            "     0     2  io_uring          1     50         0",
            "     1     3  io_uring          1      0         3",
            " total                          2     50         3",
        ]
    );
    assert!(matches!(fake.requests()[..], [ref r] if matches!(r.op, Op::Status(_))));
}

#[test]
fn json_prints_the_raw_result() {
    // A newer server's extra field survives --json.
    let fake = Fake::handler(|r| match r.op {
        Op::Status(_) => {
            let mut v = serde_json::to_value(fake::status()).unwrap();
            v["future_field"] = 7.into();
            vec![Action::Send(encode_response(r.id, &v))]
        }
        _ => fake::canned(r),
    });
    let out = run(&fake, &["status", "--json"]).ok().to_owned();
    assert_eq!(out.lines().count(), 1, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["future_field"], 7);
    assert_eq!(v["workers"][1]["loop_overruns"], 3);
    let out = run(&fake, &["--json", "stats", "ep-1a2b"]).ok().to_owned();
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["rx"]["ssrc"], "0x1a2b3c4d");
}

#[test]
fn endpoints_table_and_tenant_filter() {
    let fake = Fake::start();
    let out = run(&fake, &["endpoints"]).ok().to_owned();
    let rows = lines(&out);
    assert_eq!(
        rows[0],
        "ID       TENANT  SESSION    CODEC   LOCAL            PEER             STATE      RX PKTS  LOST  JITTER MS"
    );
    assert!(rows[1].starts_with(
        "ep-1a2b  acme    call-1a2b  PCMU    127.0.0.1:40002  127.0.0.1:17234  receiving"
    ));
    assert!(rows[2].starts_with(
        "ep-1a2c  beta    call-1a2c  slin16  127.0.0.1:40000  -                waiting"
    ));
    assert!(rows[2].ends_with("4       1.25"), "{out}");
    assert_eq!(rows[3], "2 endpoints");

    let out = run(&fake, &["endpoints", "--tenant", "beta"])
        .ok()
        .to_owned();
    assert_eq!(out.lines().count(), 3, "{out}");
    let Op::EndpointList(q) = &fake.requests()[1].op else {
        panic!()
    };
    assert_eq!(q.tenant.as_ref().unwrap().as_str(), "beta");
}

#[test]
fn stats_are_grouped() {
    let fake = Fake::start();
    let out = run(&fake, &["stats", "ep-1a2b"]).ok().to_owned();
    for needle in [
        "endpoint      ep-1a2b\n",
        "codec         PCMU (8000 Hz)\n",
        "\nrx\n  packets             3100 (533.2 kB)\n",
        "  lost                4 (last interval 0.00%)\n",
        "\njitter buffer\n",
        "  concealed         5\n",
        "\ntx\n  packets         1500 (258.0 kB)\n",
        "\ntap\n  subscribers  1\n",
        "\nrtcp\n",
    ] {
        assert!(out.contains(needle), "{needle:?} not in\n{out}");
    }
    let Op::EndpointStats(q) = fake.requests()[0].op else {
        panic!()
    };
    assert_eq!(q.endpoint, EP_PCMU);
}

#[test]
fn create_sends_every_option() {
    let fake = Fake::start();
    let out = run(
        &fake,
        &[
            "create",
            "--tenant",
            "acme",
            "--session",
            "1715000000.42",
            "--codec",
            "slin16",
            "--ptime",
            "40",
            "--rtcp",
            "--jitter-min",
            "20",
            "--jitter-max",
            "300",
        ],
    )
    .ok()
    .to_owned();
    assert_eq!(out, "ep-1a2d 127.0.0.1:40004 rtcp 40005\n");
    let Op::EndpointCreate(c) = &fake.requests()[0].op else {
        panic!()
    };
    assert_eq!(
        (c.tenant.as_str(), c.session.as_str(), c.codec),
        ("acme", "1715000000.42", Codec::Slin16)
    );
    assert_eq!((c.ptime_ms, c.rtcp, c.payload_type), (Some(40), true, None));
    assert_eq!(
        c.jitter,
        Some(JitterBounds {
            min_ms: 20,
            max_ms: 300
        })
    );

    let out = run(
        &fake,
        &["create", "--tenant", "t", "--session", "s", "--json"],
    )
    .ok()
    .to_owned();
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["endpoint"], "ep-1a2d");
    assert_eq!(v["local_addr"], "127.0.0.1:40004");
    let Op::EndpointCreate(c) = &fake.requests()[1].op else {
        panic!()
    };
    assert_eq!(
        (c.codec, c.ptime_ms, c.jitter, c.rtcp),
        (Codec::Pcmu, None, None, false)
    );
}

#[test]
fn destroy_prints_final_statistics() {
    let fake = Fake::start();
    let out = run(&fake, &["destroy", "ep-1a2c"]).ok().to_owned();
    assert!(
        out.starts_with("destroyed ep-1a2c; final statistics:\n\nendpoint"),
        "{out}"
    );
    assert!(out.contains("\njitter buffer\n"), "{out}");
    let Op::EndpointDestroy(q) = fake.requests()[0].op else {
        panic!()
    };
    assert_eq!(q.endpoint, EndpointId(0x1a2c));
}

#[test]
fn drain_and_shutdown() {
    let fake = Fake::start();
    assert!(run(&fake, &["drain"]).ok().starts_with("draining"));
    assert!(run(&fake, &["shutdown"]).ok().contains("draining"));
    assert!(run(&fake, &["shutdown", "--now"]).ok().contains("now"));
    assert_eq!(run(&fake, &["drain", "--json"]).ok(), "{}\n");
    let ops: Vec<Op> = fake.requests().into_iter().map(|r| r.op).collect();
    assert!(matches!(
        ops[..],
        [
            Op::Drain(_),
            Op::Shutdown(a),
            Op::Shutdown(b),
            Op::Drain(_)
        ] if a.drain && !b.drain
    ));
}

#[test]
fn server_errors_exit_1_with_code_and_message() {
    let fake = Fake::start();
    let r = run(&fake, &["stats", "ep-99"]);
    assert_eq!(r.fails(1), "error: unknown_endpoint: no endpoint ep-99\n");
    assert_eq!(r.stdout, "");
    // Same with --json: errors are never on stdout.
    let r = run(&fake, &["destroy", "ep-99", "--json"]);
    assert!(r.fails(1).contains("unknown_endpoint"));
    assert_eq!(r.stdout, "");
}

#[test]
fn draining_refusal() {
    let fake = Fake::handler(|r| match r.op {
        Op::EndpointCreate(_) => vec![Action::Send(encode_error(
            Some(r.id),
            &ErrorBody::new(ErrorCode::Draining, "the dataplane is draining"),
        ))],
        _ => fake::canned(r),
    });
    let r = run(&fake, &["create", "--tenant", "t", "--session", "s"]);
    assert_eq!(r.fails(1), "error: draining: the dataplane is draining\n");
}

#[test]
fn events_and_stale_responses_are_skipped() {
    let fake = Fake::handler(|r| match r.op {
        Op::Status(_) => vec![
            Action::Send(encode_event(&Event::Draining(DrainingEvent { at_ms: 1 }))),
            Action::Send("{\"event\":\"endpoint.exploded\",\"at_ms\":2}\n".into()),
            Action::Send(encode_response(r.id + 100, &fake::status())),
            Action::Sleep(Duration::from_millis(30)),
            Action::Send(encode_response(r.id, &fake::status())),
        ],
        _ => fake::canned(r),
    });
    assert!(run(&fake, &["status"]).ok().contains("WORKER"));
}

#[test]
fn server_closing_mid_response() {
    let fake = Fake::handler(|r| match r.op {
        Op::Status(_) => {
            let line = encode_response(r.id, &fake::status());
            vec![
                Action::Send(line[..line.len() / 2].to_owned()),
                Action::Close,
            ]
        }
        _ => fake::canned(r),
    });
    let r = run(&fake, &["status"]);
    let err = r.fails(1);
    assert!(
        err.contains("closed the control connection in the middle of a message"),
        "{err}"
    );
    assert_eq!(r.stdout, "");
}

#[test]
fn server_closing_before_answering() {
    let fake = Fake::handler(|r| match r.op {
        Op::Drain(_) => vec![Action::Close],
        _ => fake::canned(r),
    });
    let err = run(&fake, &["drain"]).fails(1).to_owned();
    assert!(
        err.contains("closed the control connection before answering"),
        "{err}"
    );
}

#[test]
fn slow_server_times_out() {
    let fake = Fake::handler(|r| match r.op {
        Op::Status(_) => vec![Action::Sleep(Duration::from_secs(3))],
        _ => fake::canned(r),
    });
    let r = run(&fake, &["status", "--timeout", "0.3"]);
    assert!(r.fails(1).contains("timeout"), "{r:?}");
    assert!(r.elapsed < Duration::from_secs(3), "{r:?}");
}

#[test]
fn garbage_from_the_server_is_a_protocol_error() {
    let fake = Fake::handler(|r| match r.op {
        Op::Status(_) => vec![Action::Send("<html>\n".into())],
        Op::Drain(_) => vec![Action::Send(encode_response(r.id, &42))],
        _ => fake::canned(r),
    });
    assert!(
        run(&fake, &["status"])
            .fails(1)
            .starts_with("error: protocol: ")
    );
    // A result of the wrong shape only matters when it is decoded.
    assert!(
        run(&fake, &["drain"])
            .fails(1)
            .starts_with("error: protocol: ")
    );
    assert_eq!(run(&fake, &["drain", "--json"]).ok(), "42\n");
}

#[test]
fn handshake_comes_first_and_versions_are_checked() {
    let fake = Fake::handler(|r| match r.op {
        Op::Hello(_) => {
            let mut reply = HelloReply::new("future-dataplane/9");
            reply.version = 2;
            vec![Action::Send(encode_response(r.id, &reply))]
        }
        _ => fake::canned(r),
    });
    let err = run(&fake, &["status"]).fails(1).to_owned();
    assert!(
        err.starts_with("error: version_mismatch: the dataplane speaks protocol version 2"),
        "{err}"
    );
    assert!(fake.requests().is_empty(), "nothing after a failed hello");

    let fake = Fake::handler(|r| match r.op {
        Op::Hello(_) => vec![Action::Send(encode_error(
            Some(r.id),
            &ErrorBody::new(
                ErrorCode::VersionMismatch,
                "client speaks version 1, this server speaks 2",
            ),
        ))],
        _ => fake::canned(r),
    });
    let err = run(&fake, &["endpoints"]).fails(1).to_owned();
    assert_eq!(
        err,
        "error: version_mismatch: client speaks version 1, this server speaks 2\n"
    );
}

#[test]
fn missing_dataplane_names_the_socket() {
    let fake = Fake::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.sock");
    let r = crate::run(&fake, &["status", "--socket", path.to_str().unwrap()]);
    let err = r.fails(1);
    assert!(
        err.contains(&format!("control socket {}", path.display())),
        "{err}"
    );
    assert!(err.contains("is mediagw-dataplane running?"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    let fake = Fake::start();
    for args in [
        &["stats", "1a2b"][..],
        &["create", "--tenant", "t"],
        &[
            "create",
            "--tenant",
            "t",
            "--session",
            "s",
            "--jitter-min",
            "90",
            "--jitter-max",
            "20",
        ],
        &["watch", "--count", "0"],
        &["nonsense"],
    ] {
        let r = run(&fake, args);
        assert_eq!(r.code, Some(2), "{args:?}: {r:?}");
        assert!(!r.stderr.is_empty());
    }
    assert!(fake.requests().is_empty());
    assert!(run(&fake, &["--help"]).ok().contains("tap"));
}

#[test]
fn watch_computes_rates_between_refreshes() {
    let fake = Fake::start();
    let out = run(&fake, &["watch", "--count", "2", "--interval", "200"])
        .ok()
        .to_owned();
    let starts: Vec<usize> = out
        .match_indices("fake-dataplane/")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(starts.len(), 2, "{out}");
    let screens = [&out[..starts[1]], &out[starts[1]..]];
    assert!(
        !out.contains('\x1b'),
        "no escapes when stdout is not a terminal"
    );
    // First: no rates yet, busiest by packets first (ep-1a2c).
    let first = lines(screens[0]);
    assert!(
        first[0]
            .starts_with("fake-dataplane/1.0  up 01:02:05  endpoints 2 (1 receiving)  rx - pkt/s"),
        "{out}"
    );
    assert!(first[3].starts_with("ID "), "{out}");
    assert!(
        first[4].starts_with("ep-1a2c ") && first[5].starts_with("ep-1a2b "),
        "{out}"
    );
    // Then by rate: ep-1a2b got 200 packets since, ep-1a2c 20, at least
    // 200 ms apart.
    let second = lines(screens[1]);
    let ep = |line: &str| {
        let cols: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        (cols[0].clone(), cols[5].parse::<f64>().unwrap())
    };
    let (id, rate) = ep(second[4]);
    assert_eq!(id, "ep-1a2b", "{out}");
    assert!((100.0..=1001.0).contains(&rate), "{rate}: {out}");
    assert_eq!(ep(second[5]).0, "ep-1a2c", "{out}");
    let ops: Vec<&'static str> = fake.requests().iter().map(|r| r.op.name()).collect();
    assert_eq!(ops, ["status", "endpoint.list", "status", "endpoint.list"]);
}

#[test]
fn watch_json_is_one_object_per_refresh() {
    let fake = Fake::start();
    let out = run(
        &fake,
        &[
            "watch",
            "--count",
            "2",
            "--interval",
            "100",
            "--json",
            "--tenant",
            "acme",
        ],
    )
    .ok()
    .to_owned();
    let objects: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objects.len(), 2);
    assert_eq!(objects[1]["status"]["uptime_s"], 3725);
    assert_eq!(objects[1]["endpoints"].as_array().unwrap().len(), 1);
    assert_eq!(objects[1]["endpoints"][0]["endpoint"], "ep-1a2b");
}
