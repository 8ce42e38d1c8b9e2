//! ARI errors: the status codes of the swagger `errorResponses` with the
//! `{"message": ...}` texts Asterisk 22 writes (res/ari/resource_*.c), 401 on
//! bad credentials, 404/405 for unknown resources and methods, one-shot
//! injected failures.

mod common;

use common::*;
use mediagw_testkit::asterisk::InboundCall;
use serde_json::json;

#[tokio::test]
async fn authentication() {
    let d = double().await;
    let ari = Ari::new(&d);
    assert_eq!(
        ari.call("GET", "/channels", &[]).await,
        (200, "[]".to_owned())
    );
    let bad = Ari::new(&d).with_credentials("gw", "nope");
    assert_eq!(
        bad.error("GET", "/channels", &[]).await,
        (401, "Authentication required".to_owned())
    );
    // api_key=user:pass works instead of basic auth, and is checked too.
    let url = format!("{}/ari/asterisk/info?api_key=gw:gwsecret", d.ari_base_url());
    let resp = ari.client().get(&url).send().await.expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    let url = format!("{}/ari/asterisk/info?api_key=gw:bad", d.ari_base_url());
    let resp = ari.client().get(&url).send().await.expect("request");
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(
        resp.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Basic realm=\"Asterisk REST Interface\"")
    );
    // The WebSocket refuses too.
    let url = format!("ws://{}/ari/events?app=ai-gw&api_key=gw:bad", d.ari_addr());
    assert!(tokio_tungstenite::connect_async(url).await.is_err());
    let url = format!("ws://{}/ari/events?api_key=gw:gwsecret", d.ari_addr());
    assert!(
        tokio_tungstenite::connect_async(url).await.is_err(),
        "app is required"
    );
    assert!(!d.ws_connected(APP));
    // Basic auth on the WebSocket upgrade, as most ARI clients send it.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}/ari/events?app=ai-gw", d.ari_addr())
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "authorization",
        "Basic Z3c6Z3dzZWNyZXQ=".parse().expect("header"),
    );
    let (_ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("basic auth upgrade");
    assert_eq!(resp.status().as_u16(), 101);
    assert!(d.wait_for(SOON, |d| d.ws_connected(APP)).await);
    let statuses: Vec<u16> = d
        .rest_log()
        .iter()
        .filter(|e| e.path == "/ari/events")
        .map(|e| e.status)
        .collect();
    assert_eq!(statuses, [401, 400, 101]);
}

#[tokio::test]
#[allow(clippy::disallowed_methods)] // measures the injected latency
async fn artificial_latency() {
    let cfg = mediagw_testkit::asterisk::DoubleConfig {
        rest_latency: Some(std::time::Duration::from_millis(150)),
        ..Default::default()
    };
    let d = double_with(cfg).await;
    let ari = Ari::new(&d);
    let t = std::time::Instant::now();
    assert_eq!(ari.call("GET", "/asterisk/info", &[]).await.0, 200);
    assert!(t.elapsed() >= std::time::Duration::from_millis(150));
    assert!(
        d.stats().rest_busy < std::time::Duration::from_millis(150),
        "latency is not the double's cost"
    );
}

#[tokio::test]
async fn channel_errors() {
    let d = double().await;
    let ari = Ari::new(&d);
    let _ev = Events::connect(&d, APP).await;
    let nf = (404, "Channel not found".to_owned());
    assert_eq!(ari.error("GET", "/channels/1.999", &[]).await, nf);
    assert_eq!(ari.error("POST", "/channels/1.999/answer", &[]).await, nf);
    assert_eq!(ari.error("DELETE", "/channels/1.999", &[]).await, nf);
    assert_eq!(
        ari.error("POST", "/channels/1.999/variable", &[("variable", "X")])
            .await,
        nf
    );
    assert_eq!(
        ari.error("GET", "/channels/1.999/variable", &[("variable", "X")])
            .await,
        (404, "Provided channel was not found".to_owned())
    );

    // A channel outside Stasis: originated to an extension, not an app.
    let (s, v) = ari
        .json(
            "POST",
            "/channels",
            &[("endpoint", "PJSIP/100"), ("extension", "100")],
        )
        .await;
    assert_eq!(s, 200);
    let outside = v["id"].as_str().expect("id").to_owned();
    let not_stasis = (409, "Channel not in Stasis application".to_owned());
    assert_eq!(
        ari.error("POST", &format!("/channels/{outside}/answer"), &[])
            .await,
        not_stasis
    );
    assert_eq!(
        ari.error(
            "POST",
            &format!("/channels/{outside}/variable"),
            &[("variable", "X")]
        )
        .await,
        not_stasis
    );

    let call = d.inbound_call(InboundCall::default()).expect("call");
    let id = call.as_str();
    assert_eq!(
        ari.error("GET", &format!("/channels/{id}/variable"), &[])
            .await,
        (400, "Variable name is required".to_owned())
    );
    assert_eq!(
        ari.error(
            "GET",
            &format!("/channels/{id}/variable"),
            &[("variable", "NOPE")]
        )
        .await,
        (404, "Provided variable was not found".to_owned())
    );
    assert_eq!(
        ari.error("DELETE", &format!("/channels/{id}"), &[("reason", "bogus")])
            .await,
        (400, "Invalid reason for hangup provided".to_owned())
    );
    // Set and read back a variable; builtins work too.
    assert_eq!(
        ari.call(
            "POST",
            &format!("/channels/{id}/variable"),
            &[("variable", "K"), ("value", "v")]
        )
        .await
        .0,
        204
    );
    let (s, v) = ari
        .json(
            "GET",
            &format!("/channels/{id}/variable"),
            &[("variable", "K")],
        )
        .await;
    assert_eq!((s, v), (200, json!({"value": "v"})));
    let (_, v) = ari
        .json(
            "GET",
            &format!("/channels/{id}/variable"),
            &[("variable", "CALLERID(num)")],
        )
        .await;
    assert_eq!(v, json!({"value": "5551234"}));

    // Originate validation.
    let bad = |m: &str| (400, m.to_owned());
    assert_eq!(
        ari.error("POST", "/channels", &[("app", APP)]).await,
        bad("Endpoint must be specified")
    );
    assert_eq!(
        ari.error("POST", "/channels", &[("endpoint", "PJSIP"), ("app", APP)])
            .await,
        bad("Invalid endpoint specified")
    );
    assert_eq!(
        ari.error("POST", "/channels", &[("endpoint", "PJSIP/1")])
            .await,
        bad("Application or extension must be specified")
    );
    assert_eq!(
        ari.error(
            "POST",
            "/channels",
            &[("endpoint", "PJSIP/1"), ("app", APP), ("channelId", id)]
        )
        .await,
        (
            409,
            "Channel with given unique ID already exists".to_owned()
        )
    );
    // Variables in the body must be strings.
    let (s, text) = ari
        .call_json(
            "POST",
            "/channels",
            &[("endpoint", "PJSIP/1"), ("app", APP)],
            &json!({"variables": {"A": 1}}),
        )
        .await;
    assert_eq!(s, 400, "{text}");
}

#[tokio::test]
async fn external_media_errors() {
    let d = double().await;
    let ari = Ari::new(&d);
    let _ev = Events::connect(&d, APP).await;
    let em = "/channels/externalMedia";
    let bad = |m: &str| (400, m.to_owned());
    assert_eq!(
        ari.error(
            "POST",
            em,
            &[("external_host", "127.0.0.1:9"), ("format", "ulaw")]
        )
        .await,
        bad("app cannot be empty")
    );
    assert_eq!(
        ari.error("POST", em, &[("app", APP), ("format", "ulaw")])
            .await,
        bad("external_host cannot be empty")
    );
    assert_eq!(
        ari.error(
            "POST",
            em,
            &[
                ("app", APP),
                ("external_host", "127.0.0.1"),
                ("format", "ulaw")
            ]
        )
        .await,
        bad("external_host must be <host>:<port>")
    );
    assert_eq!(
        ari.error(
            "POST",
            em,
            &[("app", APP), ("external_host", "127.0.0.1:9")]
        )
        .await,
        bad("format cannot be empty")
    );
    assert_eq!(
        ari.error(
            "POST",
            em,
            &[
                ("app", APP),
                ("external_host", "127.0.0.1:9"),
                ("format", "mp3")
            ]
        )
        .await,
        bad("Provided format (mp3) was not found")
    );
    assert_eq!(
        ari.error(
            "POST",
            em,
            &[
                ("app", APP),
                ("external_host", "127.0.0.1:9"),
                ("format", "ulaw"),
                ("direction", "in")
            ]
        )
        .await,
        bad("Invalid parameters")
    );
    assert_eq!(
        ari.error(
            "POST",
            em,
            &[
                ("app", APP),
                ("external_host", "127.0.0.1:9"),
                ("format", "ulaw"),
                ("encapsulation", "audiosocket"),
                ("transport", "tcp")
            ]
        )
        .await,
        (
            501,
            "The encapsulation and/or transport is not supported".to_owned()
        )
    );
    // Unknown parameters are ignored, as Asterisk does; channel_id as asked.
    let (s, v) = ari
        .json(
            "POST",
            em,
            &[
                ("app", APP),
                ("external_host", "127.0.0.1:9"),
                ("format", "alaw"),
                ("channelId", "em-1"),
                ("frobnicate", "yes"),
            ],
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["id"], "em-1");
    assert!(
        v["name"]
            .as_str()
            .expect("name")
            .starts_with("UnicastRTP/127.0.0.1:9-0x")
    );
    assert_eq!(
        ari.error(
            "POST",
            em,
            &[
                ("app", APP),
                ("external_host", "127.0.0.1:9"),
                ("format", "ulaw"),
                ("channelId", "em-1")
            ]
        )
        .await,
        (
            409,
            "Channel with given unique ID already exists".to_owned()
        )
    );
}

#[tokio::test]
async fn bridge_errors() {
    let d = double().await;
    let ari = Ari::new(&d);
    let _ev = Events::connect(&d, APP).await;
    let nf = (404, "Bridge not found".to_owned());
    assert_eq!(ari.error("GET", "/bridges/nope", &[]).await, nf);
    assert_eq!(ari.error("DELETE", "/bridges/nope", &[]).await, nf);
    assert_eq!(
        ari.error("POST", "/bridges/nope/addChannel", &[("channel", "x")])
            .await,
        nf
    );
    assert_eq!(
        ari.error("POST", "/bridges/nope/removeChannel", &[("channel", "x")])
            .await,
        nf
    );
    assert_eq!(
        ari.error(
            "POST",
            "/bridges/nope/record",
            &[("name", "r"), ("format", "wav")]
        )
        .await,
        nf
    );

    let (s, b) = ari
        .json(
            "POST",
            "/bridges",
            &[("type", "mixing"), ("name", "b"), ("bridgeId", "b-1")],
        )
        .await;
    assert_eq!((s, b["id"].as_str()), (200, Some("b-1")));
    assert_eq!(
        ari.error("POST", "/bridges", &[("bridgeId", "b-1")]).await,
        (409, "Bridge with id 'b-1' already exists".to_owned())
    );
    assert_eq!(
        ari.error("POST", "/bridges", &[("type", "bogus")]).await,
        (500, "Unable to create bridge".to_owned())
    );
    let add = "/bridges/b-1/addChannel";
    assert_eq!(
        ari.error("POST", add, &[]).await,
        (400, "Missing parameter channel".to_owned())
    );
    assert_eq!(
        ari.error("POST", add, &[("channel", "1.999")]).await,
        (400, "Channel not found".to_owned())
    );
    let (_, v) = ari
        .json(
            "POST",
            "/channels",
            &[("endpoint", "PJSIP/100"), ("extension", "100")],
        )
        .await;
    let outside = v["id"].as_str().expect("id").to_owned();
    assert_eq!(
        ari.error("POST", add, &[("channel", &outside)]).await,
        (422, "Channel not in Stasis application".to_owned())
    );
    let call = d.inbound_call(InboundCall::default()).expect("call");
    assert_eq!(
        ari.error(
            "POST",
            "/bridges/b-1/removeChannel",
            &[("channel", call.as_str())]
        )
        .await,
        (422, "Channel not in this bridge".to_owned())
    );
    assert_eq!(
        ari.call("POST", add, &[("channel", call.as_str())]).await.0,
        204
    );
    assert_eq!(d.bridges()[0].channels, vec![call.clone()]);

    let rec = "/bridges/b-1/record";
    assert_eq!(
        ari.error("POST", rec, &[("name", "r"), ("format", "mp3")])
            .await,
        (422, "specified format is unknown on this system".to_owned())
    );
    assert_eq!(
        ari.error(
            "POST",
            rec,
            &[("name", "r"), ("format", "wav"), ("ifExists", "x")]
        )
        .await,
        (400, "ifExists invalid".to_owned())
    );
    assert_eq!(
        ari.error(
            "POST",
            rec,
            &[("name", "r"), ("format", "wav"), ("terminateOn", "x")]
        )
        .await,
        (400, "terminateOn invalid".to_owned())
    );
    let (s, v) = ari
        .json("POST", rec, &[("name", "r"), ("format", "wav")])
        .await;
    assert_eq!(
        (s, v),
        (
            201,
            json!({"name": "r", "format": "wav", "state": "queued", "target_uri": "bridge:b-1"})
        )
    );
    assert_eq!(
        ari.error("POST", rec, &[("name", "r"), ("format", "wav")])
            .await,
        (
            409,
            "Recording 'r' already exists and can not be overwritten".to_owned()
        )
    );
    assert_eq!(
        ari.call("POST", "/recordings/live/r/stop", &[]).await.0,
        204
    );
    assert_eq!(
        ari.error("POST", "/recordings/live/zz/stop", &[]).await,
        (404, "Recording not found".to_owned())
    );
    assert_eq!(
        ari.json("GET", "/recordings/stored/r", &[]).await,
        (200, json!({"name": "r", "format": "wav"}))
    );
    assert_eq!(
        ari.error("GET", "/recordings/stored/zz", &[]).await,
        (404, "Recording not found".to_owned())
    );
}

#[tokio::test]
async fn unknown_resources_methods_and_injected_failures() {
    let d = double().await;
    let ari = Ari::new(&d);
    assert_eq!(
        ari.error("GET", "/frobnicate", &[]).await,
        (404, "Resource not found".to_owned())
    );
    assert_eq!(
        ari.error("PUT", "/channels", &[]).await,
        (405, "Invalid method".to_owned())
    );
    let (s, _) = ari
        .error("POST", "/channels/x/play", &[("media", "sound:hello")])
        .await;
    assert_eq!(s, 501, "operations the double does not simulate say so");

    d.fail_next("POST", "/bridges", 500, "Internal Server Error");
    assert_eq!(
        ari.error("POST", "/bridges", &[("type", "mixing")]).await,
        (500, "Internal Server Error".to_owned())
    );
    assert!(
        d.bridges().is_empty(),
        "an injected failure touches no state"
    );
    assert_eq!(
        ari.call("POST", "/bridges", &[("type", "mixing")]).await.0,
        200,
        "one shot only"
    );
    let log = d.rest_log();
    let statuses: Vec<(String, u16)> = log
        .iter()
        .map(|e| (format!("{} {}", e.method, e.path), e.status))
        .collect();
    assert_eq!(
        statuses[statuses.len() - 2..],
        [
            ("POST /ari/bridges".to_owned(), 500),
            ("POST /ari/bridges".to_owned(), 200)
        ]
    );
    assert_eq!(log.last().expect("entry").query, "type=mixing");
}

#[tokio::test]
async fn event_filter_narrows_an_applications_events() {
    let d = double().await;
    let ari = Ari::new(&d);
    // No application yet: 404, as the swagger says.
    let (status, _) = ari
        .call_json("PUT", "/applications/ai-gw/eventFilter", &[], &json!({}))
        .await;
    assert_eq!(status, 404);
    let mut events = Events::connect(&d, APP).await;
    let filter = json!({"allowed": [{"type": "StasisStart"}, {"type": "StasisEnd"}]});
    let (status, body) = ari
        .call_json("PUT", "/applications/ai-gw/eventFilter", &[], &filter)
        .await;
    assert_eq!(status, 200, "{body}");
    let app: serde_json::Value = serde_json::from_str(&body).expect("Application");
    assert_eq!(app["events_allowed"], filter["allowed"]);
    assert_eq!(app["events_disallowed"], json!([]));
    let call = d.inbound_call(InboundCall::default()).expect("call");
    let (s, _) = ari
        .call("POST", &format!("/channels/{call}/answer"), &[])
        .await;
    assert_eq!(s, 204);
    d.hangup(&call, 16).expect("hangup");
    let types: Vec<String> = events
        .drain(std::time::Duration::from_millis(300))
        .await
        .iter()
        .filter_map(|m| serde_json::from_str::<serde_json::Value>(m).ok())
        .filter_map(|v| v["type"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(types, ["StasisStart", "StasisEnd"]);
    // An empty body lifts the filter.
    let (status, body) = ari
        .call_json("PUT", "/applications/ai-gw/eventFilter", &[], &json!({}))
        .await;
    assert_eq!(status, 200);
    let app: serde_json::Value = serde_json::from_str(&body).expect("Application");
    assert_eq!(app["events_allowed"], json!([]));
}
