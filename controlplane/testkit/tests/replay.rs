//! Replays the recorded Asterisk 22.10.1 scenarios against the double with
//! plain clients and checks, request by request, the status and the JSON
//! shape (field names, order, kinds) of every REST answer; per channel, the
//! sequence and shape of every ARI event; per channel, the AMI events of the
//! externalMedia channel and the field lists of every AMI event type.

mod common;

use std::collections::HashMap;

use common::*;
use serde_json::Value;

/// A live run of one recorded scenario.
struct Run {
    rest: Vec<(String, String, u16, String)>,
    events: Vec<String>,
    ami: Vec<String>,
}

async fn run(scenario: &str) -> Run {
    let d = double().await;
    let ari = Ari::new(&d);
    let mut events = Events::connect(&d, APP).await;
    let (mut ami, _banner) = Ami::connect(&d).await;
    ami.login(&d).await;
    // Where externalMedia sends; nothing needs to read it here.
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp sink");
    let sink_addr = sink.local_addr().expect("addr").to_string();

    let recorded_rest = fixture_jsonl(&format!("{scenario}/rest.jsonl"));
    let recorded_events = fixture_jsonl(&format!("{scenario}/ari_events.jsonl"));
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut live_events: Vec<String> = Vec::new();

    if scenario.starts_with("ami-inbound") {
        // The recorded call: AMI Originate of Local/s@to-stasis, which
        // arrives in ai-gw ringing with args [inbound].
        ami.send(&[
            ("Action", "Originate"),
            ("Channel", "Local/s@to-stasis"),
            ("Context", "tone-source"),
            ("Exten", "s"),
            ("Priority", "1"),
            ("CallerID", "Caller <5551234>"),
            ("Timeout", "30000"),
            ("Async", "true"),
            ("ActionID", "orig-1"),
        ])
        .await;
        let got = events.until(SOON, |v| v["type"] == "StasisStart").await;
        let live: Value = serde_json::from_str(got.last().expect("StasisStart")).expect("json");
        let recorded = recorded_events
            .iter()
            .find(|v| v["type"] == "StasisStart")
            .expect("recorded StasisStart");
        assert_eq!(live["args"], recorded["args"]);
        assert_eq!(live["channel"]["state"], "Ring");
        ids.insert(
            str_of(&recorded["channel"]["id"]),
            str_of(&live["channel"]["id"]),
        );
        live_events.extend(got);
    }

    let mut rest = Vec::new();
    for entry in &recorded_rest {
        let method = str_of(&entry["method"]);
        let path = map_ids(&str_of(&entry["path"]), &ids);
        if path.starts_with("/recordings/stored/") {
            // The recording asked for maxDurationSeconds=2: wait for its end.
            live_events.extend(
                events
                    .until(SOON, |v| v["type"] == "RecordingFinished")
                    .await,
            );
        }
        let mut params: Vec<(String, String)> = Vec::new();
        if let Some(obj) = entry["params"].as_object() {
            for (k, v) in obj {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let v = if k == "external_host" {
                    sink_addr.clone()
                } else {
                    map_ids(&v, &ids)
                };
                params.push((k.clone(), v));
            }
        }
        let p: Vec<(&str, &str)> = params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let (status, body) = ari.call(&method, &path, &p).await;
        let want_status = entry["status"].as_u64().expect("status") as u16;
        assert_eq!(status, want_status, "{method} {path}: {body}");
        let recorded_body = str_of(&entry["response"]);
        if recorded_body.is_empty() {
            assert!(
                body.is_empty(),
                "{method} {path}: expected no body, got {body}"
            );
        } else {
            assert_eq!(shape(&body), shape(&recorded_body), "{method} {path}");
            let (rv, lv): (Value, Value) = (
                serde_json::from_str(&recorded_body).expect("json"),
                serde_json::from_str(&body).expect("json"),
            );
            if let (Some(r), Some(l)) = (rv["id"].as_str(), lv["id"].as_str()) {
                ids.insert(r.to_owned(), l.to_owned());
            }
        }
        rest.push((method, path, status, body));
    }
    live_events.extend(events.drain(std::time::Duration::from_millis(500)).await);
    let ami_msgs = ami.drain(std::time::Duration::from_millis(300)).await;
    drop(sink);
    Run {
        rest,
        events: live_events,
        ami: ami_msgs,
    }
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

fn map_ids(s: &str, ids: &HashMap<String, String>) -> String {
    let mut out = s.to_owned();
    // Longest first, so that no id is replaced inside a longer one.
    let mut keys: Vec<&String> = ids.keys().collect();
    keys.sort_by_key(|k| std::cmp::Reverse(k.len()));
    for k in keys {
        out = out.replace(k.as_str(), &ids[k]);
    }
    out
}

/// Per channel role, the (label, shape) of each ARI event.
fn by_role(events: &[String]) -> HashMap<&'static str, Vec<(String, String)>> {
    let mut out: HashMap<&'static str, Vec<(String, String)>> = HashMap::new();
    for text in events {
        let v: Value = serde_json::from_str(text).expect("event json");
        out.entry(event_role(&v))
            .or_default()
            .push((event_label(&v), shape(text)));
    }
    out
}

fn assert_subsequence(small: &[(String, String)], big: &[(String, String)], what: &str) {
    let mut it = big.iter();
    for item in small {
        assert!(
            it.any(|b| b == item),
            "{what}: {:?} not in recorded order {big:#?}",
            item.0
        );
    }
}

fn check_events(scenario: &str, live: &[String]) {
    let recorded: Vec<String> = fixture(&format!("{scenario}/ari_events.jsonl"))
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let (rec, got) = (by_role(&recorded), by_role(live));
    for role in ["caller", "media", "bridge"] {
        let r: Vec<&String> = rec
            .get(role)
            .map(|v| v.iter().map(|(l, _)| l).collect())
            .unwrap_or_default();
        let g: Vec<&String> = got
            .get(role)
            .map(|v| v.iter().map(|(l, _)| l).collect())
            .unwrap_or_default();
        assert_eq!(g, r, "{scenario}: ARI event sequence of the {role} channel");
        for (i, (l, rr)) in got
            .get(role)
            .into_iter()
            .flatten()
            .zip(rec.get(role).into_iter().flatten())
            .enumerate()
        {
            assert_eq!(l.1, rr.1, "{scenario}: shape of {role} event #{i} {}", l.0);
        }
    }
    // The second half of a Local channel runs dialplan the double does not
    // have: its events are a subset, in the recorded order.
    if let Some(local2) = got.get("local2") {
        assert_subsequence(
            local2,
            rec.get("local2").map_or(&[][..], |v| v.as_slice()),
            scenario,
        );
    }
    // Every event is valid JSON with the envelope of the recording.
    for text in live {
        let v: Value = serde_json::from_str(text).expect("json");
        assert_eq!(v["asterisk_id"], "02:fc:00:00:00:01");
        assert_eq!(v["application"], APP);
    }
}

fn ami_label(h: &[(String, String)]) -> String {
    let ev = ami_get(h, "Event");
    match ami_get(h, "Variable") {
        "" => ev.to_owned(),
        var => format!("{ev}({var})"),
    }
}

fn ami_channel(h: &[(String, String)]) -> &str {
    match ami_get(h, "Channel") {
        "" => ami_get(h, "DestChannel"),
        c => c,
    }
}

fn check_ami(scenario: &str, live: &[String]) {
    let recorded = recorded_ami(&format!("{scenario}/ami_raw.txt"));
    let parse = |msgs: &[String]| -> Vec<Vec<(String, String)>> {
        msgs.iter()
            .map(|m| ami_headers(m))
            .filter(|h| !ami_get(h, "Event").is_empty())
            .collect()
    };
    let (rec, got) = (parse(&recorded), parse(live));
    // The externalMedia channel's AMI life, as recorded (DeviceStateChange
    // is not simulated).
    let media = |evs: &[Vec<(String, String)>]| -> Vec<String> {
        evs.iter()
            .filter(|h| ami_channel(h).starts_with("UnicastRTP/"))
            .map(|h| ami_label(h))
            .collect()
    };
    assert_eq!(
        media(&got),
        media(&rec),
        "{scenario}: AMI events of the externalMedia channel"
    );
    // Every AMI event type the double sends has the recorded field list.
    let mut checked = 0;
    for g in &got {
        let ev = ami_get(g, "Event");
        if let Some(r) = rec.iter().find(|r| ami_get(r, "Event") == ev) {
            let keys =
                |h: &[(String, String)]| h.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
            assert_eq!(keys(g), keys(r), "{scenario}: fields of AMI {ev}");
            checked += 1;
        }
    }
    assert!(
        checked > 20,
        "{scenario}: only {checked} AMI events compared"
    );
    // Every message ends with the blank line and uses CRLF only.
    for m in live {
        assert!(m.ends_with("\r\n\r\n"));
        assert!(!m.replace("\r\n", "").contains('\n'), "bare LF in {m:?}");
    }
}

#[tokio::test]
async fn ari_originate_replays_like_the_recording() {
    let r = run("ari-originate").await;
    assert_eq!(r.rest.len(), 11);
    check_events("ari-originate", &r.events);
}

#[tokio::test]
async fn ami_inbound_replays_like_the_recording() {
    let r = run("ami-inbound").await;
    assert_eq!(r.rest.len(), 10);
    check_events("ami-inbound", &r.events);
    check_ami("ami-inbound", &r.ami);
}

#[tokio::test]
async fn ami_inbound_slin16_replays_like_the_recording() {
    let r = run("ami-inbound-slin16").await;
    let em = r
        .rest
        .iter()
        .find(|(m, p, ..)| m == "POST" && p == "/channels/externalMedia")
        .expect("externalMedia");
    let v: Value = serde_json::from_str(&em.3).expect("json");
    assert!(
        v["name"]
            .as_str()
            .expect("name")
            .starts_with("UnicastRTP/127.0.0.1:")
    );
    check_events("ami-inbound-slin16", &r.events);
    check_ami("ami-inbound-slin16", &r.ami);
}
