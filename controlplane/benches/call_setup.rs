//! Benchmark: call setups per second and setup latency, against the
//! Asterisk test double, through the real control plane and dataplane
//! (release builds, separate processes).
//!
//! ```text
//! cargo bench -p mediagw-controlplane --bench call_setup -- [--rates 250,500,1000]
//!     [--seconds 5] [--hold-ms 200] [--json]
//! ```
//!
//! For each rate, calls are offered by the double at that rate for
//! `--seconds`; each is hung up `--hold-ms` after it was offered. Setup
//! latency is the control plane's own measure per call (StasisStart
//! received to caller and externalMedia bridged: answer ∥ endpoint.create,
//! externalMedia ∥ bridge create, addChannel), read from its JSON log. The
//! double's own cost is measured apart (its REST service time per request)
//! and subtracted for the three requests on the critical path; CPU time per
//! call of each process comes from /proc. Loopback only; every process is
//! stopped at the end.

// A driver: real processes in real time.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mediagw_testkit::asterisk::{AsteriskDouble, ChannelId, DoubleConfig, InboundCall};
use serde_json::{Value, json};

struct Args {
    rates: Vec<u32>,
    seconds: u64,
    hold: Duration,
    json: bool,
}

fn args() -> Args {
    let mut a = Args {
        rates: vec![250, 500, 1000],
        seconds: 5,
        hold: Duration::from_millis(200),
        json: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let next = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--rates" => {
                a.rates = next.split(',').filter_map(|r| r.parse().ok()).collect();
                i += 1;
            }
            "--seconds" => {
                a.seconds = next.parse().unwrap_or(a.seconds);
                i += 1;
            }
            "--hold-ms" => {
                a.hold = Duration::from_millis(next.parse().unwrap_or(200));
                i += 1;
            }
            "--json" => a.json = true,
            // cargo bench passes --bench.
            _ => {}
        }
        i += 1;
    }
    a
}

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_mediagw-controlplane"))
        .parent()
        .expect("a directory")
        .to_owned()
}

fn build_dataplane() -> PathBuf {
    let dir = bin_dir();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args([
        "build",
        "-q",
        "-p",
        "mediagw-dataplane",
        "--bin",
        "mediagw-dataplane",
    ]);
    if dir.ends_with("release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("cargo build");
    assert!(status.success(), "building the dataplane failed");
    dir.join("mediagw-dataplane")
}

/// utime + stime of a process, from /proc.
fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // After ')': state is field 0; utime is 11, stime 12.
    let hz = 100; // USER_HZ on Linux
    Duration::from_millis((ticks(11) + ticks(12)) * 1000 / hz)
}

fn self_cpu() -> Duration {
    cpu(std::process::id())
}

struct Killer(Vec<Child>);

impl Drop for Killer {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let a = args();
    let dir = tempfile::tempdir().expect("temp dir");
    // Both port ranges below the ephemeral ports (32768 and up).
    let double = AsteriskDouble::start(DoubleConfig {
        rtp_capture: Duration::ZERO,
        rtp_ports: Some(10_000..=19_999),
        ..DoubleConfig::default()
    })
    .await
    .expect("start the double");
    let control = dir.path().join("control.sock");
    let media = dir.path().join("media.sock");
    let dp_bin = build_dataplane();
    let mut procs = Killer(Vec::new());
    let dp = Command::new(&dp_bin)
        .env("MEDIAGW_DP_DATAPLANE__CONTROL_SOCKET", &control)
        .env("MEDIAGW_DP_DATAPLANE__MEDIA_SOCKET", &media)
        .env("MEDIAGW_DP_DATAPLANE__METRICS_ADDR", "")
        .env("MEDIAGW_DP_DATAPLANE__WORKERS", "1")
        .env("MEDIAGW_DP_DATAPLANE__PIN_WORKERS", "false")
        .env("MEDIAGW_DP_PORTS__DEFAULT", "20000-29999")
        .env("MEDIAGW_DP_PORTS__QUARANTINE_MS", "0")
        .env("MEDIAGW_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the dataplane");
    let dp_pid = dp.id();
    procs.0.push(dp);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&control).is_err() {
        assert!(Instant::now() < deadline, "the dataplane did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port");
    let config = dir.path().join("cp.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[controlplane]
http_listen = "{http}"
[dataplane]
control_socket = "{control}"
[ami]
servers = [{{ name = "double", addr = "{ami}" }}]
username = "gw"
secret = {{ value = "gwsecret" }}
[ari]
servers = [{{ name = "double", url = "{ari}" }}]
username = "gw"
password = {{ value = "gwsecret" }}
app = "{app}"
[routing]
variable = ""
default_tenant = "bench"
[sessions]
backend = "memory"
"#,
            control = control.display(),
            ami = double.ami_addr(),
            ari = double.ari_base_url(),
            app = double.app(),
        ),
    )
    .expect("write config");
    let mut cp = Command::new(env!("CARGO_BIN_EXE_mediagw-controlplane"))
        .arg("--config")
        .arg(&config)
        .arg("--log-json")
        .env("MEDIAGW_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the control plane");
    let cp_pid = cp.id();
    let out = cp.stdout.take().expect("stdout");
    procs.0.push(cp);
    // Setup latencies from the control plane's log, as they come.
    let (tx, rx) = std::sync::mpsc::channel::<f64>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && let Some(ms) = v["fields"]["setup_ms"].as_f64()
            {
                let _ = tx.send(ms);
            }
        }
    });
    let app = double.app();
    let ok = double
        .wait_for(Duration::from_secs(20), |d| d.ws_connected(&app))
        .await;
    assert!(ok, "the control plane never connected");
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut results = Vec::new();
    for &rate in &a.rates {
        let total = rate as u64 * a.seconds;
        let s0 = double.stats();
        let (cp0, dp0, me0) = (cpu(cp_pid), cpu(dp_pid), self_cpu());
        let start = Instant::now();
        let mut pending: std::collections::VecDeque<(Instant, ChannelId)> = Default::default();
        let mut offered = 0u64;
        let mut refused = 0u64;
        let period = Duration::from_secs_f64(1.0 / f64::from(rate));
        while offered < total || !pending.is_empty() {
            let now = Instant::now();
            while pending.front().is_some_and(|(t, _)| now >= *t) {
                if let Some((_, c)) = pending.pop_front() {
                    let _ = double.hangup(&c, 16);
                }
            }
            let due = start + period.mul_f64(offered as f64);
            if offered < total && now >= due {
                match double.inbound_call(InboundCall {
                    exten: format!("{offered}"),
                    ..InboundCall::default()
                }) {
                    Ok(c) => pending.push_back((now + a.hold, c)),
                    Err(_) => refused += 1,
                }
                offered += 1;
                continue;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let offering = start.elapsed();
        // Let the last calls end.
        let quiet = Instant::now() + Duration::from_secs(20);
        while (!double.channels().is_empty() || !double.bridges().is_empty())
            && Instant::now() < quiet
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let s1 = double.stats();
        let (cp1, dp1, me1) = (cpu(cp_pid), cpu(dp_pid), self_cpu());
        let mut lat: Vec<f64> = rx.try_iter().collect();
        lat.sort_by(f64::total_cmp);
        let requests = s1.rest_requests - s0.rest_requests;
        let rest_us = (s1.rest_busy - s0.rest_busy).as_secs_f64() * 1e6 / requests.max(1) as f64;
        let critical_ms = 3.0 * rest_us / 1000.0;
        let excl: Vec<f64> = lat.iter().map(|l| (l - critical_ms).max(0.0)).collect();
        let n = lat.len() as f64;
        let r = json!({
            "rate": rate,
            "offered": offered,
            "refused_by_double": refused,
            "bridged": lat.len(),
            "offering_s": offering.as_secs_f64(),
            "setups_per_s": n / offering.as_secs_f64(),
            "latency_ms": {"p50": quantile(&lat, 0.5), "p90": quantile(&lat, 0.9), "p99": quantile(&lat, 0.99), "max": quantile(&lat, 1.0)},
            "latency_excl_double_ms": {"p50": quantile(&excl, 0.5), "p99": quantile(&excl, 0.99)},
            "double_rest_us_per_request": rest_us,
            "rest_requests_per_call": requests as f64 / n.max(1.0),
            "cpu_us_per_call": {
                "controlplane": (cp1 - cp0).as_secs_f64() * 1e6 / n.max(1.0),
                "dataplane": (dp1 - dp0).as_secs_f64() * 1e6 / n.max(1.0),
                "double_and_bench": (me1 - me0).as_secs_f64() * 1e6 / n.max(1.0),
            },
        });
        if !a.json {
            println!(
                "rate {rate:>5}/s: {} of {offered} bridged, {:.0} setups/s; setup ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}; \
                 minus the double's {:.0} us/request x3: p50 {:.2} p99 {:.2}; CPU us/call: control plane {:.0}, dataplane {:.0}, double+bench {:.0}",
                lat.len(),
                n / offering.as_secs_f64(),
                quantile(&lat, 0.5),
                quantile(&lat, 0.9),
                quantile(&lat, 0.99),
                quantile(&lat, 1.0),
                rest_us,
                quantile(&excl, 0.5),
                quantile(&excl, 0.99),
                (cp1 - cp0).as_secs_f64() * 1e6 / n.max(1.0),
                (dp1 - dp0).as_secs_f64() * 1e6 / n.max(1.0),
                (me1 - me0).as_secs_f64() * 1e6 / n.max(1.0),
            );
        }
        results.push(r);
    }
    if a.json {
        println!("{}", json!({"call_setup": results}));
    }
    drop(procs);
    double.shutdown().await;
}
