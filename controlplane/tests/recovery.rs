//! Faults, end to end: AMI and ARI connections dropped, Asterisk offline
//! and restarted, the control plane killed and restarted (sessions in the
//! real Redis), the dataplane killed and restarted; and the other ways a
//! call starts: originated outbound, unrouted.

// A driver: real processes in real time.
#![allow(clippy::disallowed_methods)]

mod support;

use std::time::Duration;

use mediagw_shared::ids::EndpointId;
use mediagw_testkit::asterisk::{ChannelId, ChannelKind, InboundCall};
use serde_json::Value;
use support::{Sessions, World, http};

const SETUP: Duration = Duration::from_secs(20);

fn endpoint_of(v: &Value) -> EndpointId {
    v["endpoint"]
        .as_str()
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| panic!("no endpoint in {v}"))
}

fn rx_packets(w: &World, ep: EndpointId) -> u64 {
    w.endpoint_stats(ep)
        .and_then(|s| s["rx"]["packets"].as_u64())
        .unwrap_or(0)
}

fn media_channels(w: &World, session: &str) -> Vec<ChannelId> {
    w.double
        .channels()
        .into_iter()
        .filter(|c| {
            matches!(c.kind, ChannelKind::ExternalMedia { .. })
                && c.id.as_str().starts_with(session)
        })
        .map(|c| c.id)
        .collect()
}

async fn call(w: &mut World, exten: &str) -> (ChannelId, Value) {
    let caller = w
        .double
        .inbound_call(InboundCall {
            exten: exten.into(),
            ..InboundCall::default()
        })
        .expect("the call enters Stasis");
    let s = w.until_session(caller.as_str(), "active", SETUP).await;
    (caller, s)
}

/// Waits until the endpoint's received packet count grows past `from`.
async fn audio_flows(w: &mut World, ep: EndpointId, what: &str) {
    let from = rx_packets(w, ep);
    w.until(what, Duration::from_secs(10), |w| {
        rx_packets(w, ep) > from + 10
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ami_connection_dropped_mid_call_and_restored() {
    let mut w = World::start(Sessions::Memory).await;
    w.until("AMI logged in", SETUP, |w| w.double.stats().ami_logins >= 1)
        .await;
    let (caller, s) = call(&mut w, "100").await;
    let ep = endpoint_of(&s);
    w.double.drop_ami_connections();
    w.until("AMI logged in again", SETUP, |w| {
        w.double.stats().ami_logins >= 2
    })
    .await;
    // The call did not notice.
    audio_flows(&mut w, ep, "audio after the AMI drop").await;
    assert_eq!(w.calls().len(), 1);
    assert_eq!(
        w.session(caller.as_str()).expect("session")["state"],
        "active"
    );
    let status = w.get("/status");
    assert!(
        status["links"]["ami"]
            .as_str()
            .unwrap_or("")
            .starts_with("up"),
        "{status}"
    );
    w.double.hangup(&caller, 16).expect("hang up");
    w.until_session(caller.as_str(), "ended", SETUP).await;
    let metrics = http(w.http, "GET", "/metrics", None).expect("metrics").1;
    assert!(
        metrics.contains("mediagw_ami_connects_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mediagw_link_up{link=\"ami\"} 1"),
        "{metrics}"
    );
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ari_websocket_dropped_and_asterisk_unreachable_meanwhile() {
    let mut w = World::start(Sessions::Memory).await;
    let (a, sa) = call(&mut w, "201").await;
    let (b, sb) = call(&mut w, "202").await;

    // A plain drop: the WebSocket comes back, both calls go on.
    w.double.drop_ari_websockets();
    w.until("ARI WebSocket back", SETUP, |w| {
        w.double.stats().ws_connects >= 2
    })
    .await;
    audio_flows(&mut w, endpoint_of(&sa), "audio on A after the drop").await;

    // Asterisk unreachable (AMI and ARI) while caller B hangs up: nobody
    // tells the gateway; it finds out when Asterisk is back.
    w.double.set_offline(true);
    w.until("the control plane sees ARI down", SETUP, |w| {
        !w.get("/status")["links"]["ari"]
            .as_str()
            .unwrap_or("")
            .starts_with("up")
    })
    .await;
    w.double.hangup(&b, 16).expect("hang up B");
    audio_flows(
        &mut w,
        endpoint_of(&sa),
        "audio on A while Asterisk is unreachable",
    )
    .await;
    w.double.set_offline(false);
    let ended = w.until_session(b.as_str(), "ended", SETUP).await;
    assert!(
        ended["end_reason"]
            .as_str()
            .unwrap_or("")
            .contains("ARI was away"),
        "{ended}"
    );
    assert!(ended["final_stats"]["rx"]["packets"].as_u64().unwrap_or(0) > 0);
    let eb = endpoint_of(&sb);
    w.until("B's endpoint destroyed", SETUP, |w| {
        w.endpoints().iter().all(|e| e.endpoint != eb)
    })
    .await;
    // A lives on, untouched: same endpoint, same externalMedia channel.
    assert_eq!(w.session(a.as_str()).expect("A")["state"], "active");
    assert_eq!(media_channels(&w, a.as_str()).len(), 1);
    audio_flows(
        &mut w,
        endpoint_of(&sa),
        "audio on A after Asterisk is back",
    )
    .await;
    w.double.hangup(&a, 16).expect("hang up A");
    w.until_session(a.as_str(), "ended", SETUP).await;
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_killed_and_restarted_calls_survive() {
    let mut w = World::start(Sessions::Redis).await;
    let (a, sa) = call(&mut w, "301").await;
    let (b, sb) = call(&mut w, "302").await;
    let ea = endpoint_of(&sa);
    let media_a = media_channels(&w, a.as_str());

    w.controlplane.kill();
    // Audio keeps flowing without a control plane.
    audio_flows(&mut w, ea, "audio while the control plane is dead").await;
    // B hangs up while nobody watches.
    w.double.hangup(&b, 16).expect("hang up B");
    w.controlplane.start();
    w.wait_ready().await;

    let ended = w.until_session(b.as_str(), "ended", SETUP).await;
    assert!(
        ended["final_stats"]["rx"]["packets"].as_u64().unwrap_or(0) > 0,
        "{ended}"
    );
    let eb = endpoint_of(&sb);
    w.until("B's endpoint and bridge gone", SETUP, |w| {
        w.endpoints().iter().all(|e| e.endpoint != eb)
            && !w
                .double
                .bridges()
                .iter()
                .any(|br| br.id.as_str().contains(b.as_str()))
    })
    .await;
    // A was adopted as it was: same endpoint, same channel, no new setup.
    w.until("A adopted", SETUP, |w| {
        w.calls().iter().any(|c| c["session"] == a.as_str())
    })
    .await;
    let sa2 = w.session(a.as_str()).expect("A");
    assert_eq!(sa2["state"], "active");
    assert_eq!(endpoint_of(&sa2), ea);
    assert_eq!(media_channels(&w, a.as_str()), media_a);
    audio_flows(&mut w, ea, "audio on A after the restart").await;

    // A new call works, and A ends normally with all its statistics.
    let (c, _) = call(&mut w, "303").await;
    let before = rx_packets(&w, ea);
    w.double.hangup(&a, 16).expect("hang up A");
    let ended = w.until_session(a.as_str(), "ended", SETUP).await;
    assert!(ended["final_stats"]["rx"]["packets"].as_u64().unwrap_or(0) >= before);
    w.double.hangup(&c, 16).expect("hang up C");
    w.until_session(c.as_str(), "ended", SETUP).await;
    let metrics = http(w.http, "GET", "/metrics", None).expect("metrics").1;
    assert!(
        metrics.contains("mediagw_recovery_actions_total{action=\"adopted\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mediagw_recovery_actions_total{action=\"cleaned_up\"} 1"),
        "{metrics}"
    );
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataplane_killed_and_restarted_calls_reattached() {
    let mut w = World::start(Sessions::Memory).await;
    let (a, sa) = call(&mut w, "401").await;
    let e1 = endpoint_of(&sa);
    audio_flows(&mut w, e1, "audio before the crash").await;

    w.dataplane.kill();
    w.dataplane.start();
    // A new endpoint, a new externalMedia channel in the same bridge, the
    // old channel hung up, audio flowing again.
    w.until("A re-attached", Duration::from_secs(30), |w| {
        w.calls()
            .iter()
            .any(|c| c["session"] == a.as_str() && c["reattached"] == 1 && c["state"] == "active")
    })
    .await;
    let sa2 = w.until_session(a.as_str(), "active", SETUP).await;
    let e2 = endpoint_of(&sa2);
    assert_eq!(w.endpoints().len(), 1);
    assert_eq!(w.endpoints()[0].endpoint, e2);
    audio_flows(&mut w, e2, "audio on the new endpoint").await;
    let media = media_channels(&w, a.as_str());
    assert_eq!(media.len(), 1, "old externalMedia channel left: {media:?}");
    assert!(media[0].as_str().ends_with("-media-2"), "{media:?}");
    let bridge = w
        .double
        .bridges()
        .into_iter()
        .find(|b| b.channels.contains(&a))
        .expect("A still bridged");
    assert!(bridge.channels.contains(&media[0]));
    let history: Vec<String> = sa2["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|h| h["state"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        history,
        [
            "new",
            "answered",
            "media_connecting",
            "active",
            "media_connecting",
            "active"
        ]
    );

    w.double.hangup(&a, 16).expect("hang up");
    w.until_session(a.as_str(), "ended", SETUP).await;
    w.until("nothing left", SETUP, |w| {
        w.endpoints().is_empty() && w.double.channels().is_empty() && w.double.bridges().is_empty()
    })
    .await;
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asterisk_restart_ends_its_calls() {
    let mut w = World::start(Sessions::Memory).await;
    let (a, sa) = call(&mut w, "501").await;
    w.double.restart();
    let ended = w.until_session(a.as_str(), "ended", SETUP).await;
    assert!(ended["final_stats"].is_object(), "{ended}");
    let ea = endpoint_of(&sa);
    w.until("the endpoint released", SETUP, |w| {
        w.endpoints().iter().all(|e| e.endpoint != ea)
    })
    .await;
    // Calls after the restart work.
    w.wait_ready().await;
    let (b, _) = call(&mut w, "502").await;
    w.double.hangup(&b, 16).expect("hang up");
    w.until_session(b.as_str(), "ended", SETUP).await;
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_call_originated_into_the_application() {
    let mut w = World::start(Sessions::Memory).await;
    let body = r#"{"tenant":"globex","endpoint":"PJSIP/alice","caller_id":"Bot <100>"}"#;
    let (status, answer) = http(w.http, "POST", "/calls", Some(body)).expect("originate");
    assert_eq!(status, 201, "{answer}");
    let answer: Value = serde_json::from_str(&answer).expect("JSON");
    let session = answer["session"].as_str().expect("a session id").to_owned();
    // The callee answers (the double's endpoint rings until told).
    let channel = ChannelId::new(session.as_str());
    w.until("the originated channel exists", SETUP, |w| {
        w.double.channel(&channel).is_some()
    })
    .await;
    let _ = w.double.remote_answer(&channel);
    let s = w.until_session(&session, "active", SETUP).await;
    assert_eq!(s["tenant"], "globex");
    assert_eq!(s["direction"], "outbound");
    audio_flows(&mut w, endpoint_of(&s), "audio on the outbound call").await;
    // Hang up through the API.
    let (status, body) =
        http(w.http, "DELETE", &format!("/calls/{session}"), None).expect("hang up");
    assert_eq!(status, 204, "{body}");
    w.until_session(&session, "ended", SETUP).await;
    let (status, body) = http(w.http, "DELETE", "/calls/nope", None).expect("hang up");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("not_found"), "{body}");
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_routed_to_tenants_and_unrouted_ones_hung_up() {
    let mut w = World::start_with(
        Sessions::Memory,
        r#"
[routing]
variable = "MEDIAGW_TENANT"
[[tenants]]
id = "acme"
contexts = ["from-acme"]
[[tenants]]
id = "globex"
numbers = ["+4420*"]
format = "alaw"
"#,
    )
    .await;
    let by_context = w
        .double
        .inbound_call(InboundCall {
            context: "from-acme".into(),
            ..InboundCall::default()
        })
        .expect("call");
    let by_number = w
        .double
        .inbound_call(InboundCall {
            exten: "+442071838750".into(),
            ..InboundCall::default()
        })
        .expect("call");
    let by_variable = w
        .double
        .inbound_call(InboundCall {
            variables: vec![("MEDIAGW_TENANT".into(), "initech".into())],
            ..InboundCall::default()
        })
        .expect("call");
    let unrouted = w
        .double
        .inbound_call(InboundCall {
            context: "elsewhere".into(),
            exten: "999".into(),
            ..InboundCall::default()
        })
        .expect("call");
    let s1 = w.until_session(by_context.as_str(), "active", SETUP).await;
    let s2 = w.until_session(by_number.as_str(), "active", SETUP).await;
    let s3 = w.until_session(by_variable.as_str(), "active", SETUP).await;
    assert_eq!(s1["tenant"], "acme");
    assert_eq!(
        (&s2["tenant"], &s2["codec"]),
        (&"globex".into(), &"PCMA".into())
    );
    assert_eq!(s3["tenant"], "initech");
    w.until("the unrouted call hung up", SETUP, |w| {
        w.double.channel(&unrouted).is_none()
    })
    .await;
    assert!(w.session(unrouted.as_str()).is_none());
    let metrics = http(w.http, "GET", "/metrics", None).expect("metrics").1;
    assert!(
        metrics.contains("mediagw_call_setups_total{tenant=\"-\",outcome=\"unrouted\"} 1"),
        "{metrics}"
    );
    for c in [by_context, by_number, by_variable] {
        w.double.hangup(&c, 16).expect("hang up");
    }
    w.until("all ended", SETUP, |w| w.calls().is_empty()).await;
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_asterisk_step_fails_the_call_and_leaves_nothing_behind() {
    let mut w = World::start(Sessions::Memory).await;
    w.double.fail_next(
        "POST",
        "/channels/externalMedia",
        500,
        "Internal Server Error",
    );
    let caller = w
        .double
        .inbound_call(InboundCall::default())
        .expect("the call enters Stasis");
    let s = w.until_session(caller.as_str(), "failed", SETUP).await;
    let reason = s["end_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("setup failed") && reason.contains("500"),
        "{s}"
    );
    w.until("caller hung up, endpoint and bridge gone", SETUP, |w| {
        w.double.channel(&caller).is_none()
            && w.endpoints().is_empty()
            && w.double.bridges().is_empty()
    })
    .await;
    let metrics = http(w.http, "GET", "/metrics", None).expect("metrics").1;
    assert!(
        metrics.contains("mediagw_call_setups_total{tenant=\"acme\",outcome=\"failed\"} 1"),
        "{metrics}"
    );
    // The next call is fine.
    let (c, _) = call(&mut w, "601").await;
    w.double.hangup(&c, 16).expect("hang up");
    w.until_session(c.as_str(), "ended", SETUP).await;
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waits_for_a_dataplane_that_is_down_then_records() {
    let mut w = World::start_with(
        Sessions::Memory,
        r#"
[routing]
default_tenant = "acme"
[[tenants]]
id = "acme"
record = true
"#,
    )
    .await;
    w.dataplane.kill();
    let caller = w
        .double
        .inbound_call(InboundCall::default())
        .expect("the call enters Stasis");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_ne!(
        w.session(caller.as_str()).map(|s| s["state"].clone()),
        Some(Value::from("active"))
    );
    w.dataplane.start();
    let s = w.until_session(caller.as_str(), "active", SETUP).await;
    audio_flows(&mut w, endpoint_of(&s), "audio once the dataplane is up").await;
    // The tenant records: a bridge recording named after the session.
    let name = format!("mediagw-{}", caller.as_str());
    assert_eq!(s["recording"], name.as_str());
    let bridge = w
        .double
        .bridges()
        .into_iter()
        .find(|b| b.channels.contains(&caller))
        .expect("bridged");
    assert_eq!(bridge.recording.as_deref(), Some(name.as_str()));
    w.double.hangup(&caller, 16).expect("hang up");
    w.until_session(caller.as_str(), "ended", SETUP).await;
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_restart_with_memory_sessions_sets_calls_up_again() {
    let mut w = World::start(Sessions::Memory).await;
    let (a, sa) = call(&mut w, "701").await;
    let e1 = endpoint_of(&sa);
    w.controlplane.kill();
    w.controlplane.start();
    w.wait_ready().await;
    // The session was lost with the process: the call is found in the
    // application and set up again, and what the old setup left is removed.
    let s = w.until_session(a.as_str(), "active", SETUP).await;
    let e2 = endpoint_of(&s);
    assert_ne!(e1, e2);
    w.until(
        "one endpoint and one externalMedia channel left",
        SETUP,
        |w| w.endpoints().len() == 1 && media_channels(w, a.as_str()).len() == 1,
    )
    .await;
    assert_eq!(w.endpoints()[0].endpoint, e2);
    audio_flows(&mut w, e2, "audio on the new endpoint").await;
    let metrics = http(w.http, "GET", "/metrics", None).expect("metrics").1;
    assert!(
        metrics.contains("mediagw_recovery_actions_total{action=\"discovered\"} 1"),
        "{metrics}"
    );
    w.double.hangup(&a, 16).expect("hang up");
    w.until_session(a.as_str(), "ended", SETUP).await;
    w.until("nothing left", SETUP, |w| {
        w.endpoints().is_empty() && w.double.channels().is_empty() && w.double.bridges().is_empty()
    })
    .await;
    w.finish().await;
}
