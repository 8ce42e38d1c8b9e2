//! ffmpeg, an independent RTP sender and G.711 encoder, sends a PCMU and a
//! PCMA stream to a real dataplane; `mediagwctl tap` records what the
//! dataplane decoded; the WAV must hold exactly ffmpeg's own decode of the
//! bytes it sent. Also drives the other `mediagwctl` commands against the
//! real dataplane rather than the scripted one of `tests/mediagwctl`.
//!
//! The dataplane runs in this process (its library, the same code as the
//! daemon binary) so that this test needs no second package's binary.
//! ffmpeg is required: `tools/test-all` installs it; a missing ffmpeg fails
//! the test, it never skips.

// A driver: real sockets, real time.
#![allow(clippy::disallowed_methods)]

use std::fs;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use mediagw_dataplane::config::Config;
use mediagw_dataplane::daemon::Dataplane;
use serde_json::Value;

const CTL: &str = env!("CARGO_BIN_EXE_mediagwctl");

/// Ports of this test binary's dataplane, apart from other tests' ranges
/// and below the ephemeral ports (32768 and up) other sockets may take.
const PORTS: &str = "31500-31599";

/// A dataplane running on a thread of this process, shut down on drop.
struct InProcess {
    dir: tempfile::TempDir,
    thread: Option<thread::JoinHandle<()>>,
}

impl InProcess {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cfg = Config::default();
        cfg.dataplane.control_socket = dir.path().join("control.sock");
        cfg.dataplane.media_socket = dir.path().join("media.sock");
        cfg.dataplane.workers = 1;
        cfg.dataplane.pin_workers = false;
        cfg.dataplane.metrics_addr = String::new();
        cfg.ports.default = PORTS.to_owned();
        let (dp, listener) = Dataplane::start(cfg).expect("start the dataplane");
        let thread = thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(dp.run(listener)).expect("dataplane run");
        });
        Self {
            dir,
            thread: Some(thread),
        }
    }

    fn control(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    fn media(&self) -> PathBuf {
        self.dir.path().join("media.sock")
    }

    fn ctl(&self) -> Command {
        let mut c = Command::new(CTL);
        c.arg("--socket")
            .arg(self.control())
            .arg("--media-socket")
            .arg(self.media())
            .env_remove("MEDIAGW_CONTROL_SOCKET")
            .env_remove("MEDIAGW_MEDIA_SOCKET")
            .stdin(Stdio::null());
        c
    }

    /// Runs `mediagwctl ARGS` and returns its stdout, failing on a non-zero
    /// exit.
    fn run(&self, args: &[&str]) -> String {
        let out = self.ctl().args(args).output().expect("run mediagwctl");
        assert!(
            out.status.success(),
            "mediagwctl {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.run(&all)).expect("mediagwctl --json prints JSON")
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        let _ = self.ctl().args(["shutdown", "--now"]).output();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs ffmpeg; not installed fails the test with what to do.
fn ffmpeg(args: &[&str]) -> Output {
    let out = match Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-y"])
        .args(args)
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "ffmpeg is not installed; this test needs it and does not skip. \
             tools/test-all installs it (apt-get install ffmpeg)"
        ),
        Err(e) => panic!("cannot run ffmpeg: {e}"),
    };
    assert!(
        out.status.success(),
        "ffmpeg {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn sigint(child: &Child) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "SIGINT to mediagwctl tap");
}

fn wait(mut child: Child, limit: Duration) -> std::process::Output {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "mediagwctl tap did not stop within {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn read_s16le(path: &Path) -> Vec<i16> {
    fs::read(path)
        .expect("read raw samples")
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// One codec end to end: create, tap, ffmpeg sends 2 s, compare.
fn ffmpeg_stream_is_tapped_exactly(dp: &InProcess, codec: &str, session: &str) {
    let (encoder, format, pt) = match codec {
        "PCMU" => ("pcm_mulaw", "mulaw", 0),
        "PCMA" => ("pcm_alaw", "alaw", 8),
        other => panic!("no ffmpeg mapping for {other}"),
    };
    let work = tempfile::tempdir().expect("temp dir");
    // ffmpeg's `-re` waits about 90 ms between its first and second packet:
    // a deep jitter buffer keeps every packet in time, so what is compared
    // is the decode, not the buffer's adaptation (which may drop or insert
    // frames: `tests/jitter_sim.rs` covers that).
    let created = dp.json(&[
        "create",
        "--tenant",
        "acme",
        "--session",
        session,
        "--codec",
        codec,
        "--jitter-min",
        "200",
        "--jitter-max",
        "300",
    ]);
    let endpoint = created["endpoint"]
        .as_str()
        .expect("endpoint id")
        .to_owned();
    let addr: SocketAddr = created["local_addr"]
        .as_str()
        .expect("local_addr")
        .parse()
        .expect("an address");

    let wav = work.path().join("tap.wav");
    let tap = dp
        .ctl()
        .args(["tap", &endpoint, "--out"])
        .arg(&wav)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mediagwctl tap");
    // The tap subscribes before the first packet: wait until the dataplane
    // counts its subscriber.
    let deadline = Instant::now() + Duration::from_secs(10);
    while dp.json(&["stats", &endpoint])["tap"]["subscribers"] != 1 {
        assert!(Instant::now() < deadline, "tap never subscribed");
        thread::sleep(Duration::from_millis(20));
    }

    // Two seconds of white noise (every G.711 code shows up), generated 160
    // samples at a time so that `-re` paces each 20 ms packet (with the
    // default 1024 it sends bursts of 6 every 130 ms), sent as RTP in real
    // time, and the same encoded bytes kept in a file.
    let sent = work.path().join(format!("sent.{format}"));
    let url = format!("rtp://{addr}?pkt_size=172");
    ffmpeg(&[
        "-re",
        "-f",
        "lavfi",
        "-i",
        "anoisesrc=d=2:c=white:r=8000:a=0.5:seed=7:n=160",
        "-c:a",
        encoder,
        "-ar",
        "8000",
        "-ac",
        "1",
        "-payload_type",
        &pt.to_string(),
        "-f",
        "rtp",
        &url,
        "-c:a",
        encoder,
        "-ar",
        "8000",
        "-ac",
        "1",
        "-f",
        format,
        sent.to_str().expect("utf-8 path"),
    ]);
    // ffmpeg's own decode of what it sent: the reference.
    let reference = work.path().join("reference.raw");
    ffmpeg(&[
        "-f",
        format,
        "-ar",
        "8000",
        "-ac",
        "1",
        "-i",
        sent.to_str().expect("utf-8 path"),
        "-f",
        "s16le",
        "-c:a",
        "pcm_s16le",
        reference.to_str().expect("utf-8 path"),
    ]);
    let reference = read_s16le(&reference);
    assert_eq!(reference.len(), 16_000, "2 s at 8 kHz");

    // Everything sent has been played out once the endpoint counted every
    // packet and its jitter buffer played past them: 10 concealed frames
    // (200 ms) after the last one, the tap (5 ms tick) has long delivered
    // it, and frames reach the subscriber in order.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = dp.json(&["stats", &endpoint]);
        let played = s["jitter_buffer"]["played"].as_u64().unwrap_or(0);
        if s["rx"]["packets"] == 100 && played >= 110 {
            break;
        }
        assert!(Instant::now() < deadline, "stream never played out: {s}");
        thread::sleep(Duration::from_millis(50));
    }
    sigint(&tap);
    let out = wait(tap, Duration::from_secs(10));
    assert!(
        out.status.success(),
        "tap failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut reader = hound::WavReader::open(&wav).expect("a valid WAV");
    let spec = reader.spec();
    assert_eq!(
        (spec.channels, spec.sample_rate, spec.bits_per_sample),
        (1, 8000, 16)
    );
    let tapped: Vec<i16> = reader
        .samples::<i16>()
        .collect::<Result<_, _>>()
        .expect("WAV samples");
    // The tap starts with the first packet's frame; after the last packet it
    // may hold concealment until SIGINT. The first 2 s are ffmpeg's audio,
    // sample for sample.
    assert!(
        tapped.len() >= reference.len(),
        "tap holds {} samples, ffmpeg sent {}",
        tapped.len(),
        reference.len()
    );
    if let Some(d) = tapped.iter().zip(&reference).position(|(a, b)| a != b) {
        eprintln!(
            "{codec}: first difference at sample {d} (frame {}); endpoint: {}; {}",
            d / 160,
            dp.json(&["stats", &endpoint]),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let differing = tapped
        .iter()
        .zip(&reference)
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(
        differing,
        0,
        "{codec}: {differing} of {} samples differ from ffmpeg's decode",
        reference.len()
    );

    let stats = dp.json(&["destroy", &endpoint]);
    assert_eq!(stats["rx"]["packets"], 100, "{stats}");
    assert_eq!(stats["rx"]["lost"], 0, "{stats}");
    assert_eq!(stats["rx"]["wrong_payload_type"], 0, "{stats}");
    assert_eq!(stats["codec"], codec);
}

#[test]
fn ffmpeg_pcmu_and_pcma_are_tapped_as_ffmpeg_decodes_them() {
    let dp = InProcess::start();
    ffmpeg_stream_is_tapped_exactly(&dp, "PCMU", "ffmpeg-pcmu");
    ffmpeg_stream_is_tapped_exactly(&dp, "PCMA", "ffmpeg-pcma");
}

#[test]
fn operator_commands_against_a_real_dataplane() {
    let dp = InProcess::start();
    let status = dp.json(&["status"]);
    assert_eq!(status["version"], 1);
    assert_eq!(status["workers"].as_array().map(Vec::len), Some(1));

    let created = dp.json(&[
        "create",
        "--tenant",
        "globex",
        "--session",
        "call-9",
        "--codec",
        "PCMA",
        "--ptime",
        "20",
    ]);
    let endpoint = created["endpoint"].as_str().expect("endpoint").to_owned();
    let listed = dp.json(&["endpoints", "--tenant", "globex"]);
    let endpoints = listed["endpoints"].as_array().expect("a list");
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0]["session"], "call-9");
    assert_eq!(endpoints[0]["state"], "waiting");

    let human = dp.run(&["endpoints"]);
    assert!(human.contains(&endpoint), "{human}");
    assert!(human.contains("globex"), "{human}");

    dp.run(&["drain"]);
    let refused = dp
        .ctl()
        .args(["create", "--tenant", "globex", "--session", "call-10"])
        .output()
        .expect("run mediagwctl");
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("draining"), "{err}");

    let destroyed = dp.json(&["destroy", &endpoint]);
    assert_eq!(destroyed["endpoint"], endpoint.as_str());
    assert_eq!(dp.json(&["status"])["endpoints"], 0);
}
