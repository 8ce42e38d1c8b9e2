//! `mediagw`, the one command that runs the gateway: both daemons start on
//! embedded defaults, demo calls flow through the real dataplane with no
//! Asterisk, a crashed daemon is restarted, and SIGINT stops both in order
//! leaving no socket behind.

// A driver: real processes in real time.
#![allow(clippy::disallowed_methods)]

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use mediagw_shared::control::StatusQuery;
use support::{control_call, dataplane_bin, free_port, http, wait_until};

fn pids_of(parent: u32) -> Vec<(u32, String)> {
    let out = Command::new("ps")
        .args(["-o", "pid=,comm=", "--ppid", &parent.to_string()])
        .output()
        .expect("ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.parse().ok()?, it.next()?.to_owned()))
        })
        .collect()
}

#[test]
fn mediagw_runs_both_daemons_with_demo_calls_restarts_and_stops_cleanly() {
    // `mediagw` finds the dataplane next to itself.
    let _ = dataplane_bin();
    let dir = tempfile::tempdir().expect("temp dir");
    let http_port = free_port();
    let metrics_port = free_port();
    let log = std::fs::File::create(dir.path().join("mediagw.log")).expect("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mediagw"))
        .arg("--runtime-dir")
        .arg(dir.path())
        .arg("--demo")
        .env(
            "MEDIAGW_CP_CONTROLPLANE__HTTP_LISTEN",
            format!("127.0.0.1:{http_port}"),
        )
        .env(
            "MEDIAGW_DP_DATAPLANE__METRICS_ADDR",
            format!("127.0.0.1:{metrics_port}"),
        )
        .env("MEDIAGW_DP_DATAPLANE__WORKERS", "1")
        .env("MEDIAGW_DP_DATAPLANE__PIN_WORKERS", "false")
        .env("MEDIAGW_DP_PORTS__DEFAULT", "31000-31099")
        .env("MEDIAGW_CP_DEMO__DURATION_S", "2")
        .env("MEDIAGW_CP_DEMO__GAP_S", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start mediagw");
    let logs = || std::fs::read_to_string(dir.path().join("mediagw.log")).unwrap_or_default();
    let control = dir.path().join("control.sock");

    // Demo calls reach the dataplane and are counted by both daemons.
    wait_until(Duration::from_secs(30), || {
        http(
            std::net::SocketAddr::from(([127, 0, 0, 1], metrics_port)),
            "GET",
            "/metrics",
            None,
        )
        .is_ok_and(|(_, m)| {
            m.lines().any(|l| {
                l.starts_with("mediagw_rtp_packets_total{tenant=\"demo\"}")
                    && l.split_whitespace()
                        .last()
                        .and_then(|v| v.parse::<f64>().ok())
                        > Some(50.0)
            })
        })
    })
    .unwrap_or_else(|()| panic!("no demo audio in the dataplane's metrics:\n{}", logs()));
    let cp = std::net::SocketAddr::from(([127, 0, 0, 1], http_port));
    wait_until(Duration::from_secs(30), || {
        http(cp, "GET", "/sessions?tenant=demo", None).is_ok_and(|(_, body)| {
            body.contains("\"state\":\"ended\"") && body.contains("\"final_stats\":{")
        })
    })
    .unwrap_or_else(|()| panic!("no ended demo session with statistics:\n{}", logs()));

    // A crashed dataplane is restarted; the demo goes on on the new one.
    let children = pids_of(child.id());
    let dp = children
        .iter()
        .find(|(_, name)| name.starts_with("mediagw-datapla"))
        .unwrap_or_else(|| panic!("no dataplane child in {children:?}"))
        .0;
    let _ = Command::new("kill")
        .args(["-KILL", &dp.to_string()])
        .status();
    wait_until(Duration::from_secs(30), || {
        pids_of(child.id())
            .iter()
            .any(|(pid, name)| name.starts_with("mediagw-datapla") && *pid != dp)
            && control_call(&control, StatusQuery).is_ok_and(|s| s.rx_packets > 50)
    })
    .unwrap_or_else(|()| {
        panic!(
            "the dataplane was not restarted with demo audio:\n{}",
            logs()
        )
    });

    // Ctrl-C: both stop, the supervisor exits 0, no socket left behind.
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let mut status = None;
    wait_until(Duration::from_secs(40), || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    })
    .unwrap_or_else(|()| {
        let _ = child.kill();
        panic!("mediagw did not stop:\n{}", logs())
    });
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        logs()
    );
    let text = logs();
    assert!(text.contains("controlplane | stopped"), "{text}");
    assert!(text.contains("dataplane | stopped"), "{text}");
    assert!(
        text.find("controlplane | stopped") < text.find("   dataplane | stopped"),
        "the control plane stops first:\n{text}"
    );
    assert!(!control.exists(), "control socket left behind");
    assert!(
        !dir.path().join("media.sock").exists(),
        "media socket left behind"
    );
}
