//! Fault injection: WebSockets and AMI dropped, Asterisk offline and
//! restarted. Calls in Stasis outlive their application's WebSocket and keep
//! their RTP, as in Asterisk.

mod common;

use std::time::Duration;

use common::*;
use mediagw_testkit::asterisk::{ChannelId, DoubleError, InboundCall};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, UdpSocket};

#[tokio::test]
async fn websocket_drop_leaves_calls_and_rtp_up() {
    let d = double().await;
    let ari = Ari::new(&d);
    let mut events = Events::connect(&d, APP).await;
    let sink = UdpSocket::bind("127.0.0.1:0").await.expect("sink");
    let call = bridged_call(&d, &ari, "ulaw", sink.local_addr().expect("addr"), 440).await;
    assert_eq!(receive_n(&sink, 5, SOON).await.len(), 5);

    d.drop_ari_websockets();
    assert!(events.closed_within(SOON).await, "the WebSocket is cut");
    assert!(d.wait_for(SOON, |d| !d.ws_connected(APP)).await);
    // The call stays in Stasis, bridged, with RTP flowing.
    let during = receive_for(&sink, Duration::from_millis(300)).await;
    assert!(
        during.len() >= 5,
        "only {} packets while the app was away",
        during.len()
    );
    let caller = d
        .channel(&ChannelId::new(call.caller.as_str()))
        .expect("caller still up");
    assert_eq!(caller.stasis_app.as_deref(), Some(APP));
    assert!(caller.bridge.is_some());
    let (_, chans) = ari.json("GET", "/channels", &[]).await;
    assert_eq!(chans.as_array().expect("list").len(), 2);
    // No application, no Stasis: a new call fails as in Asterisk.
    assert_eq!(
        d.inbound_call(InboundCall::default()),
        Err(DoubleError::AppNotRegistered(APP.to_owned()))
    );

    // The application comes back and takes over the existing call.
    let mut events = Events::connect(&d, APP).await;
    assert_eq!(d.stats().ws_connects, 2);
    assert_eq!(
        ari.call("DELETE", &format!("/channels/{}", call.caller), &[])
            .await
            .0,
        204
    );
    let seen = events.until(SOON, |v| v["type"] == "StasisEnd").await;
    assert!(seen.iter().any(|t| t.contains("\"ChannelLeftBridge\"")));
}

#[tokio::test]
async fn ami_drop_and_reconnect() {
    let d = double().await;
    let _events = Events::connect(&d, APP).await;
    let call = d.inbound_call(InboundCall::default()).expect("call");
    let (mut ami, _) = Ami::connect(&d).await;
    ami.login(&d).await;
    d.drop_ami_connections();
    assert!(ami.closed_within(SOON).await, "AMI connection cut");
    assert!(d.wait_for(SOON, |d| d.stats().ami_connections == 0).await);
    let (mut ami, banner) = Ami::connect(&d).await;
    assert_eq!(banner, "Asterisk Call Manager/11.0.0\r\n");
    let login = ami.login(&d).await;
    assert!(login[1].starts_with("Event: FullyBooted\r\n"));
    assert_eq!(d.stats().ami_logins, 2);
    assert!(d.channel(&call).is_some(), "the call did not notice");
    ami.send(&[("Action", "Ping"), ("ActionID", "p")]).await;
    assert!(
        ami.message(SOON)
            .await
            .expect("pong")
            .contains("Ping: Pong")
    );
}

/// Connecting while offline: reset at once, no banner.
async fn refused(addr: std::net::SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return true;
    };
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(SOON, s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn offline_cuts_connections_but_not_calls() {
    let d = double().await;
    let ari = Ari::new(&d);
    let mut events = Events::connect(&d, APP).await;
    let (mut ami, _) = Ami::connect(&d).await;
    ami.login(&d).await;
    let sink = UdpSocket::bind("127.0.0.1:0").await.expect("sink");
    let call = bridged_call(&d, &ari, "ulaw", sink.local_addr().expect("addr"), 440).await;

    d.set_offline(true);
    assert!(d.is_offline());
    assert!(events.closed_within(SOON).await);
    assert!(ami.closed_within(SOON).await);
    assert!(refused(d.ami_addr()).await, "AMI refused while offline");
    assert!(refused(d.ari_addr()).await, "ARI refused while offline");
    let url = format!("{}/ari/channels", d.ari_base_url());
    assert!(
        ari.client()
            .get(&url)
            .basic_auth("gw", Some("gwsecret"))
            .send()
            .await
            .is_err()
    );
    let during = receive_for(&sink, Duration::from_millis(300)).await;
    assert!(
        during.len() >= 5,
        "RTP goes on while offline: {}",
        during.len()
    );

    d.set_offline(false);
    let (s, chans) = ari.json("GET", "/channels", &[]).await;
    assert_eq!((s, chans.as_array().expect("list").len()), (200, 2));
    let _events = Events::connect(&d, APP).await;
    let (mut ami, _) = Ami::connect(&d).await;
    ami.login(&d).await;
    assert!(d.channel(&ChannelId::new(call.media.as_str())).is_some());
}

#[tokio::test]
async fn restart_forgets_everything_and_comes_back_on_the_same_ports() {
    let d = double().await;
    let ari = Ari::new(&d);
    let mut events = Events::connect(&d, APP).await;
    let sink = UdpSocket::bind("127.0.0.1:0").await.expect("sink");
    let call = bridged_call(&d, &ari, "ulaw", sink.local_addr().expect("addr"), 440).await;
    assert_eq!(receive_n(&sink, 3, SOON).await.len(), 3);
    let (ami_addr, ari_addr) = (d.ami_addr(), d.ari_addr());

    d.restart();
    assert!(events.closed_within(SOON).await);
    assert!(d.channels().is_empty() && d.bridges().is_empty());
    let _in_flight = receive_for(&sink, Duration::from_millis(100)).await;
    assert!(
        receive_for(&sink, Duration::from_millis(300))
            .await
            .is_empty(),
        "RTP stopped"
    );
    let media = d
        .rtp_stream(&ChannelId::new(call.media.as_str()))
        .expect("stats kept");
    assert!(!media.sending);

    assert_eq!((d.ami_addr(), d.ari_addr()), (ami_addr, ari_addr));
    assert_eq!(
        ari.json("GET", "/channels", &[]).await,
        (200, serde_json::json!([]))
    );
    assert_eq!(
        ari.json("GET", "/bridges", &[]).await,
        (200, serde_json::json!([]))
    );
    assert_eq!(
        ari.error("GET", &format!("/channels/{}", call.caller), &[])
            .await
            .0,
        404
    );
    let (mut ami, _) = Ami::connect(&d).await;
    let login = ami.login(&d).await;
    assert!(
        login[1].contains("Uptime: 0\r\n") || login[1].contains("Uptime: 1\r\n"),
        "{}",
        login[1]
    );
    // The app must connect again before calls can enter it; ids are new.
    let _events = Events::connect(&d, APP).await;
    let again = d
        .inbound_call(InboundCall::default())
        .expect("call after restart");
    assert_ne!(again.as_str(), call.caller);
    assert_ne!(again.as_str(), call.media);
}

#[tokio::test]
async fn a_new_double_starts_on_the_ports_of_the_old_one() {
    let d = double().await;
    let (ami_addr, ari_addr) = (d.ami_addr(), d.ari_addr());
    let _events = Events::connect(&d, APP).await;
    let (mut ami, _) = Ami::connect(&d).await;
    ami.login(&d).await;
    d.shutdown().await;
    assert!(ami.closed_within(SOON).await);
    let cfg = mediagw_testkit::asterisk::DoubleConfig {
        ami_port: ami_addr.port(),
        ari_port: ari_addr.port(),
        ..Default::default()
    };
    let d = double_with(cfg).await;
    assert_eq!((d.ami_addr(), d.ari_addr()), (ami_addr, ari_addr));
    let (mut ami, _) = Ami::connect(&d).await;
    assert!(ami.login(&d).await[1].starts_with("Event: FullyBooted"));
    let _events = Events::connect(&d, APP).await;
}
