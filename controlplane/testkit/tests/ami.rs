//! AMI on the wire: banner, login, FullyBooted, SuccessfulAuth, Ping and
//! Logoff bytes compared with what Asterisk 22.10.1 wrote, and the actions
//! the gateway may send (Getvar, Hangup, Command, CoreShowChannels).

mod common;

use std::time::Duration;

use common::*;
use mediagw_testkit::asterisk::InboundCall;

fn keys(msg: &str) -> Vec<String> {
    ami_headers(msg).into_iter().map(|(k, _)| k).collect()
}

#[tokio::test]
async fn login_bytes_match_the_recording() {
    let d = double().await;
    let recorded = recorded_ami("ami-inbound/ami_raw.txt");
    let recorded_banner = fixture("ami-inbound/ami_raw.txt")
        .split_inclusive("\r\n")
        .next()
        .expect("banner")
        .to_owned();

    let (mut ami, banner) = Ami::connect(&d).await;
    assert_eq!(banner, recorded_banner);
    let got = ami.login(&d).await;
    // The response is byte for byte the recorded one.
    assert_eq!(got[0], recorded[0]);
    // FullyBooted: same fields; only the uptime differs.
    assert_eq!(keys(&got[1]), keys(&recorded[1]));
    let booted = ami_headers(&got[1]);
    assert_eq!(ami_get(&booted, "Privilege"), "system,all");
    assert_eq!(ami_get(&booted, "Status"), "Fully Booted");
    assert!(ami_get(&booted, "Uptime").parse::<u64>().expect("uptime") < 60);
    // SuccessfulAuth: same fields and the same fixed values.
    assert_eq!(keys(&got[2]), keys(&recorded[2]));
    let (g, r) = (ami_headers(&got[2]), ami_headers(&recorded[2]));
    for k in [
        "Event",
        "Privilege",
        "Severity",
        "Service",
        "EventVersion",
        "AccountID",
        "UsingPassword",
    ] {
        assert_eq!(ami_get(&g, k), ami_get(&r, k), "{k}");
    }
    assert_eq!(
        ami_get(&g, "LocalAddress"),
        format!("IPV4/TCP/127.0.0.1/{}", d.ami_addr().port())
    );
    assert!(ami_get(&g, "RemoteAddress").starts_with("IPV4/TCP/127.0.0.1/"));
    assert_eq!(
        ami_get(&g, "EventTV").len(),
        "2026-11-25T17:05:14.195+0000".len()
    );
    assert_eq!(d.stats().ami_logins, 1);

    ami.send(&[("Action", "Ping"), ("ActionID", "ping-1")])
        .await;
    let pong = ami.message(SOON).await.expect("pong");
    let h = ami_headers(&pong);
    assert_eq!(keys(&pong), ["Response", "ActionID", "Ping", "Timestamp"]);
    assert_eq!(
        (ami_get(&h, "Response"), ami_get(&h, "Ping")),
        ("Success", "Pong")
    );
    let (secs, micros) = ami_get(&h, "Timestamp")
        .split_once('.')
        .expect("secs.micros");
    assert!(secs.parse::<u64>().is_ok() && micros.len() == 6 && micros.parse::<u32>().is_ok());

    ami.send(&[("Action", "Logoff"), ("ActionID", "logoff-1")])
        .await;
    let bye = ami.message(SOON).await.expect("goodbye");
    assert_eq!(&bye, recorded.last().expect("recorded goodbye"));
    assert!(ami.closed_within(SOON).await);
}

#[tokio::test]
async fn bad_login_and_unauthenticated_actions_are_refused() {
    let d = double().await;
    let (mut ami, _) = Ami::connect(&d).await;
    ami.send(&[("Action", "Ping"), ("ActionID", "p")]).await;
    assert_eq!(
        ami.message(SOON).await.expect("answer"),
        "Response: Error\r\nActionID: p\r\nMessage: Permission denied\r\n\r\n"
    );
    ami.send(&[
        ("Action", "Login"),
        ("Username", "gw"),
        ("Secret", "wrong"),
        ("ActionID", "l"),
    ])
    .await;
    // Asterisk waits a second before answering a failed login, then hangs up.
    assert_eq!(
        ami.message(Duration::from_secs(5)).await.expect("answer"),
        "Response: Error\r\nActionID: l\r\nMessage: Authentication failed\r\n\r\n"
    );
    assert!(ami.closed_within(SOON).await);
    assert_eq!(d.stats().ami_logins, 0);

    let (mut ami, _) = Ami::connect(&d).await;
    ami.send(&[("ActionID", "x")]).await;
    assert_eq!(
        ami.message(SOON).await.expect("answer"),
        "Response: Error\r\nActionID: x\r\nMessage: Missing action in request\r\n\r\n"
    );
}

#[tokio::test]
async fn actions_the_gateway_may_send() {
    let d = double().await;
    let _events = Events::connect(&d, APP).await;
    let call = d
        .inbound_call(InboundCall {
            variables: vec![("TENANT".into(), "acme".into())],
            ..InboundCall::default()
        })
        .expect("call");
    let name = d.channel(&call).expect("channel").name;
    let (mut ami, _) = Ami::connect(&d).await;
    ami.send(&[
        ("Action", "Login"),
        ("Username", "gw"),
        ("Secret", "gwsecret"),
        ("Events", "off"),
        ("ActionID", "l"),
    ])
    .await;
    assert_eq!(
        ami.message(SOON).await.expect("login"),
        "Response: Success\r\nActionID: l\r\nMessage: Authentication accepted\r\n\r\n"
    );

    ami.send(&[
        ("Action", "Getvar"),
        ("Channel", &name),
        ("Variable", "TENANT"),
        ("ActionID", "g"),
    ])
    .await;
    assert_eq!(
        ami.message(SOON).await.expect("getvar"),
        "Response: Success\r\nActionID: g\r\nVariable: TENANT\r\nValue: acme\r\n\r\n"
    );
    ami.send(&[
        ("Action", "Getvar"),
        ("Channel", "PJSIP/none-00000000"),
        ("Variable", "X"),
        ("ActionID", "g2"),
    ])
    .await;
    assert_eq!(
        ami.message(SOON).await.expect("getvar"),
        "Response: Error\r\nActionID: g2\r\nMessage: No such channel\r\n\r\n"
    );

    ami.send(&[("Action", "CoreShowChannels"), ("ActionID", "c")])
        .await;
    let start = ami.message(SOON).await.expect("list start");
    assert_eq!(
        start,
        "Response: Success\r\nActionID: c\r\nEventList: start\r\nMessage: Channels will follow\r\n\r\n"
    );
    let item = ami_headers(&ami.message(SOON).await.expect("item"));
    assert_eq!(
        (ami_get(&item, "Event"), ami_get(&item, "Channel")),
        ("CoreShowChannel", name.as_str())
    );
    assert_eq!(ami_get(&item, "Uniqueid"), call.as_str());
    let done = ami_headers(&ami.message(SOON).await.expect("complete"));
    assert_eq!(
        (ami_get(&done, "Event"), ami_get(&done, "ListItems")),
        ("CoreShowChannelsComplete", "1")
    );

    ami.send(&[
        ("Action", "Command"),
        ("Command", "core show version"),
        ("ActionID", "v"),
    ])
    .await;
    let v = ami.message(SOON).await.expect("command");
    assert!(v.starts_with("Response: Success\r\nActionID: v\r\nMessage: Command output follows\r\nOutput: Asterisk 22.10.1"), "{v}");
    ami.send(&[
        ("Action", "Command"),
        ("Command", "frobnicate"),
        ("ActionID", "f"),
    ])
    .await;
    assert!(
        ami.message(SOON)
            .await
            .expect("command")
            .starts_with("Response: Error\r\nActionID: f\r\n")
    );

    ami.send(&[
        ("Action", "Hangup"),
        ("Channel", &name),
        ("Cause", "16"),
        ("ActionID", "h"),
    ])
    .await;
    assert_eq!(
        ami.message(SOON).await.expect("hangup"),
        "Response: Success\r\nActionID: h\r\nMessage: Channel Hungup\r\n\r\n"
    );
    assert!(d.channel(&call).is_none());
    ami.send(&[("Action", "Hangup"), ("Channel", &name), ("ActionID", "h2")])
        .await;
    assert_eq!(
        ami.message(SOON).await.expect("hangup"),
        "Response: Error\r\nActionID: h2\r\nMessage: No such channel\r\n\r\n"
    );
    ami.send(&[("Action", "Frobnicate"), ("ActionID", "u")])
        .await;
    assert_eq!(
        ami.message(SOON).await.expect("unknown"),
        "Response: Error\r\nActionID: u\r\nMessage: Invalid/unknown command\r\n\r\n"
    );
    // Events: off means no events reached this session.
    assert!(ami.drain(Duration::from_millis(200)).await.is_empty());
}

#[tokio::test]
async fn inbound_call_events_on_ami() {
    let d = double().await;
    let mut events = Events::connect(&d, APP).await;
    let (mut ami, _) = Ami::connect(&d).await;
    ami.login(&d).await;
    let call = d
        .inbound_call(InboundCall {
            variables: vec![("TENANT".into(), "acme".into())],
            app_args: vec!["inbound".into()],
            ..InboundCall::default()
        })
        .expect("call");
    let start = events.next(SOON).await.expect("StasisStart");
    assert_eq!(start["type"], "StasisStart");
    assert_eq!(start["args"][0], "inbound");
    assert_eq!(start["channel"]["state"], "Ring");
    assert_eq!(start["channel"]["dialplan"]["app_data"], "ai-gw,inbound");
    let msgs = ami.drain(Duration::from_millis(200)).await;
    let labels: Vec<String> = msgs
        .iter()
        .map(|m| {
            let h = ami_headers(m);
            format!("{}:{}", ami_get(&h, "Event"), ami_get(&h, "Variable"))
        })
        .collect();
    assert_eq!(
        labels,
        [
            "Newchannel:",
            "Newexten:",
            "VarSet:TENANT",
            "Newexten:",
            "VarSet:STASISSTATUS"
        ]
    );
    let newchannel = ami_headers(&msgs[0]);
    assert_eq!(ami_get(&newchannel, "ChannelState"), "4");
    assert_eq!(ami_get(&newchannel, "CallerIDNum"), "5551234");
    assert_eq!(ami_get(&newchannel, "Uniqueid"), call.as_str());

    d.hangup(&call, 17).expect("hangup");
    let msgs = ami.drain(Duration::from_millis(200)).await;
    let hangup = msgs
        .iter()
        .map(|m| ami_headers(m))
        .find(|h| ami_get(h, "Event") == "Hangup")
        .expect("Hangup");
    assert_eq!(
        (ami_get(&hangup, "Cause"), ami_get(&hangup, "Cause-txt")),
        ("17", "User busy")
    );
    let req = ami_headers(&msgs[0]);
    assert_eq!(
        (ami_get(&req, "Event"), ami_get(&req, "Cause")),
        ("HangupRequest", "17")
    );
    let evs = events.drain(Duration::from_millis(200)).await;
    let types: Vec<String> = evs
        .iter()
        .map(|t| event_label(&serde_json::from_str(t).expect("json")))
        .collect();
    // A channel that entered Stasis from the dialplan gets no
    // ChannelDestroyed after StasisEnd (as recorded).
    assert_eq!(types, ["ChannelHangupRequest", "StasisEnd"]);
}

#[tokio::test]
async fn filter_actions_narrow_the_events() {
    let d = double().await;
    let _events = Events::connect(&d, APP).await;
    let (mut ami, _) = Ami::connect(&d).await;
    ami.login(&d).await;
    for (id, filter) in [
        ("f1", "Event: Hangup"),
        ("f2", "Event: VarSet"),
        ("f3", "!Variable: STASISSTATUS"),
    ] {
        ami.send(&[
            ("Action", "Filter"),
            ("Operation", "Add"),
            ("Filter", filter),
            ("ActionID", id),
        ])
        .await;
        assert_eq!(
            ami.message(SOON).await.expect("answer"),
            format!(
                "Response: Success\r\nActionID: {id}\r\nMessage: Filter Added Successfully\r\n\r\n"
            )
        );
    }
    let call = d
        .inbound_call(InboundCall {
            variables: vec![("TENANT".into(), "acme".into())],
            ..InboundCall::default()
        })
        .expect("call");
    d.hangup(&call, 16).expect("hangup");
    let names: Vec<String> = ami
        .drain(Duration::from_millis(200))
        .await
        .iter()
        .map(|m| {
            let h = ami_headers(m);
            format!("{}:{}", ami_get(&h, "Event"), ami_get(&h, "Variable"))
        })
        .collect();
    // Only whitelisted events, and not the blacklisted VarSet; HangupRequest
    // passes "Event: Hangup" as Asterisk's regular expression would.
    assert!(names.contains(&"VarSet:TENANT".to_owned()), "{names:?}");
    assert!(names.contains(&"Hangup:".to_owned()), "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("VarSet:") || n.starts_with("Hangup")),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n == "VarSet:STASISSTATUS"),
        "{names:?}"
    );
}
