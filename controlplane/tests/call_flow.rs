//! The whole gateway end to end: the Asterisk test double sends a call to
//! the Stasis application, the real control plane (a process) sets it up
//! through the real dataplane (a process), audio flows as real RTP, and the
//! call is torn down with its statistics kept. Then the same with things
//! going wrong: AMI and ARI connections dropped, either daemon killed and
//! restarted, 200 calls at once.

// A driver: real processes in real time.
#![allow(clippy::disallowed_methods)]

mod support;

use std::time::Duration;

use mediagw_shared::g711;
use mediagw_shared::ids::EndpointId;
use mediagw_testkit::asterisk::{ChannelId, ChannelKind, InboundCall};
use serde_json::Value;
use support::{Sessions, Tap, World, http};

const SETUP: Duration = Duration::from_secs(20);

fn endpoint_of(call_or_session: &Value) -> EndpointId {
    let text = call_or_session["endpoint"]
        .as_str()
        .unwrap_or_else(|| panic!("no endpoint in {call_or_session}"));
    text.parse().expect("an endpoint id")
}

fn media_channel(world: &World, session: &str) -> Option<ChannelId> {
    world
        .double
        .channels()
        .into_iter()
        .find(|c| {
            matches!(c.kind, ChannelKind::ExternalMedia { .. })
                && c.id.as_str().starts_with(session)
        })
        .map(|c| c.id)
}

/// Received packets of the dataplane endpoint.
fn rx_packets(world: &World, ep: EndpointId) -> u64 {
    world
        .endpoint_stats(ep)
        .and_then(|s| s["rx"]["packets"].as_u64())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_from_stasis_start_to_hangup_with_audio_and_statistics() {
    let mut w = World::start(Sessions::Memory).await;
    let caller = w
        .double
        .inbound_call(InboundCall {
            exten: "5551000".into(),
            tone_hz: Some(440),
            ..InboundCall::default()
        })
        .expect("the call enters Stasis");
    let id = caller.as_str().to_owned();
    let session = w.until_session(&id, "active", SETUP).await;
    assert_eq!(session["tenant"], "acme");
    assert_eq!(session["direction"], "inbound");
    assert_eq!(session["dialed"], "5551000");
    assert_eq!(session["caller"], "5551234");
    let history: Vec<&str> = session["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|h| h["state"].as_str())
        .collect();
    assert_eq!(history, ["new", "answered", "media_connecting", "active"]);
    let ep = endpoint_of(&session);

    // Asterisk's side: caller answered and bridged with our externalMedia
    // channel, which sends RTP to the endpoint the dataplane gave.
    let media = media_channel(&w, &id).expect("an externalMedia channel");
    let bridge = w
        .double
        .bridges()
        .into_iter()
        .find(|b| b.channels.contains(&caller))
        .expect("the caller is bridged");
    assert!(bridge.channels.contains(&media));
    assert_eq!(bridge.id.as_str(), format!("mediagw-{id}"));
    let stream = w.double.rtp_stream(&media).expect("an RTP stream");
    assert_eq!(
        stream.remote_addr.to_string(),
        session["endpoint_addr"].as_str().unwrap_or_default()
    );

    // The operator's view.
    let table = w.ctl(&["calls"]);
    assert!(
        table.contains(&id) && table.contains("acme") && table.contains("active"),
        "{table}"
    );
    assert!(table.ends_with("1 call\n"), "{table}");
    let json: Value = serde_json::from_str(&w.ctl(&["--json", "calls"])).expect("JSON");
    assert_eq!(json["calls"][0]["endpoint"], ep.to_string());
    let endpoints = w.ctl(&["endpoints", "--tenant", "acme"]);
    assert!(endpoints.contains(&id), "{endpoints}");

    // Audio: what the dataplane decodes is what the double sent.
    let tap = Tap::start(&w.media_socket, ep);
    w.until(
        "a second of audio on the tap",
        Duration::from_secs(10),
        |_| tap.frames().len() >= 50,
    )
    .await;
    let sent = w.double.rtp_stream(&media).expect("stream").sent_payload;
    let decoded: Vec<i16> = sent.iter().map(|b| g711::ulaw_to_linear(*b)).collect();
    let frames = tap.frames();
    let mut matched = 0;
    let mut from = 0;
    for (flags, samples) in frames.iter().filter(|(f, _)| *f == 0) {
        let _ = flags;
        if let Some(pos) = (from..decoded.len().saturating_sub(159))
            .step_by(160)
            .find(|&o| decoded[o..o + 160] == samples[..])
        {
            matched += 1;
            from = pos + 160;
        }
    }
    let played = frames.iter().filter(|(f, _)| *f == 0).count();
    assert!(
        played >= 40,
        "only {played} frames played of {}",
        frames.len()
    );
    // Frames past the double's capture window cannot be compared.
    let comparable = played.min(decoded.len() / 160);
    assert!(
        matched + 5 >= comparable.min(played) && matched >= 20,
        "{matched} of {comparable} comparable frames match what Asterisk sent"
    );
    drop(tap);

    // The caller hangs up: endpoint destroyed, channels and bridge gone,
    // final statistics kept with the session.
    let before = rx_packets(&w, ep);
    assert!(before > 0);
    w.double.hangup(&caller, 16).expect("hang up");
    let ended = w.until_session(&id, "ended", SETUP).await;
    let stats = &ended["final_stats"];
    assert!(
        stats["rx"]["packets"].as_u64().unwrap_or(0) >= before,
        "{stats}"
    );
    assert_eq!(stats["rx"]["lost"], 0, "{stats}");
    assert_eq!(stats["endpoint"], ep.to_string());
    assert!(
        ended["end_reason"]
            .as_str()
            .unwrap_or("")
            .contains("caller")
    );
    w.until("the dataplane endpoint is gone", SETUP, |w| {
        w.endpoints().is_empty()
    })
    .await;
    w.until("Asterisk has no channel or bridge left", SETUP, |w| {
        w.double.channels().is_empty() && w.double.bridges().is_empty()
    })
    .await;
    let sessions = w.ctl(&["sessions", "--tenant", "acme"]);
    assert!(
        sessions.contains(&id) && sessions.contains("ended"),
        "{sessions}"
    );
    let metrics = http(w.http, "GET", "/metrics", None).expect("metrics").1;
    assert!(
        metrics.contains("mediagw_call_setups_total{tenant=\"acme\",outcome=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mediagw_calls_active{tenant=\"acme\"} 0"),
        "{metrics}"
    );
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_calls_set_up_and_torn_down_none_lost() {
    const CALLS: usize = 200;
    let mut w = World::start(Sessions::Memory).await;
    let mut callers = Vec::with_capacity(CALLS);
    for i in 0..CALLS {
        let c = w
            .double
            .inbound_call(InboundCall {
                exten: format!("7{i:04}"),
                caller_number: format!("555{i:04}"),
                ..InboundCall::default()
            })
            .expect("the call enters Stasis");
        callers.push(c);
    }
    w.until("200 calls active", Duration::from_secs(60), |w| {
        w.calls().iter().filter(|c| c["state"] == "active").count() == CALLS
    })
    .await;
    assert_eq!(w.endpoints().len(), CALLS);
    // Every endpoint receives its call's audio.
    w.until("RTP on every endpoint", Duration::from_secs(30), |w| {
        w.endpoints().iter().all(|e| e.rx_packets > 0)
    })
    .await;
    for c in &callers {
        w.double.hangup(c, 16).expect("hang up");
    }
    w.until("200 sessions ended", Duration::from_secs(60), |w| {
        let sessions = w.get("/sessions");
        let list = sessions["sessions"].as_array().cloned().unwrap_or_default();
        list.len() == CALLS && list.iter().all(|s| s["state"] == "ended")
    })
    .await;
    w.until(
        "no endpoint, channel or bridge left",
        Duration::from_secs(30),
        |w| {
            w.endpoints().is_empty()
                && w.double.channels().is_empty()
                && w.double.bridges().is_empty()
        },
    )
    .await;
    let sessions = w.get("/sessions");
    for s in sessions["sessions"].as_array().expect("sessions") {
        assert!(
            s["final_stats"]["rx"]["packets"].as_u64().unwrap_or(0) > 0,
            "a call without audio: {s}"
        );
    }
    w.finish().await;
}
