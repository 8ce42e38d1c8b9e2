//! Shared helpers for the end-to-end tests of the `mediagw-dataplane`
//! binary: a daemon guard (own temp dir, own port range, killed on drop),
//! a blocking control-socket client, a media-socket subscriber and RTP
//! helpers. std only; everything on loopback.

#![allow(dead_code)]
// each test binary uses a different subset
// These tests drive a real daemon in real time: they are drivers, and read
// the clock (the sans-IO rule of clippy.toml is for the media core).
#![allow(clippy::disallowed_methods)]

use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mediagw_dataplane::rtp::{RtpHeader, write_rtp};
use mediagw_dataplane::units::{ClockRate, PayloadType, RtpTimestamp, Seq, Ssrc};
use mediagw_shared::codec::Codec;
use mediagw_shared::control::{
    self, Call, EndpointCreate, EndpointCreated, EndpointStats, EndpointStatsQuery, ErrorBody,
    Hello, LineFramer, Request, ServerMessage, ServerStatus, StatusQuery,
};
use mediagw_shared::ids::{EndpointId, SessionId, TenantId};
use mediagw_shared::media::{
    FrameFlags, MAX_MESSAGE_LEN, MediaDecoder, MediaFormat, MediaMessage, Play, PlayFlags, Samples,
    Subscribe,
};

pub const BIN: &str = env!("CARGO_BIN_EXE_mediagw-dataplane");

/// How long a control or media reply may take before the test fails.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------

/// Everything a daemon is started with; `Daemon::start` turns it into
/// `MEDIAGW_DP_*` variables.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Distinct per test (selects the temp dir and the port range).
    pub test_index: u16,
    /// `dataplane.engine`: "auto", "io_uring" or "epoll".
    pub engine: &'static str,
    /// `dataplane.metrics_addr`; empty turns metrics off.
    pub metrics_addr: String,
}

impl Setup {
    pub fn new(test_index: u16) -> Self {
        Self {
            test_index,
            engine: "auto",
            metrics_addr: String::new(),
        }
    }
}

/// A per-test scratch directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // Short: Unix socket paths are limited to 108 bytes.
        let path = std::env::temp_dir().join(format!("mgw-e2e-{}-{tag}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A running `mediagw-dataplane`, stopped (SIGTERM, then SIGKILL after 3 s)
/// on drop. Its stdout and stderr go to files in its temp dir (a pipe
/// nobody reads could block its logging), shown if the test panics.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    pub setup: Setup,
    pub control_path: PathBuf,
    pub media_path: PathBuf,
    pub ports: (u16, u16),
    dir: TempDir,
}

/// A port range of 15 ports for this process and test, inside 40000-60000:
/// 160 process slots of 125 ports, 8 tests of 15 ports per slot.
pub fn port_range(test_index: u16) -> (u16, u16) {
    assert!(test_index < 8, "8 port ranges per process");
    // Below Linux's ephemeral ports (32768 and up), where the machine's
    // other sockets cannot take them.
    let slot = (std::process::id() % 160) as u16;
    let first = 12_000 + slot * 125 + test_index * 15;
    (first, first + 14)
}

impl Daemon {
    /// Starts a daemon and waits (up to 10 s) until its control socket
    /// accepts connections.
    pub fn start(setup: Setup) -> Self {
        let dir = TempDir::new(&format!("t{}", setup.test_index));
        let control_path = dir.path().join("control.sock");
        let media_path = dir.path().join("media.sock");
        let ports = port_range(setup.test_index);
        let mut d = Self {
            child: None,
            setup,
            control_path,
            media_path,
            ports,
            dir,
        };
        let child = d.spawn("daemon").expect("spawn mediagw-dataplane");
        d.child = Some(child);
        d.wait_ready(Duration::from_secs(10));
        d
    }

    /// The command line of a daemon with this configuration (a second
    /// instance on the same paths uses it too).
    pub fn command(&self, log_name: &str) -> Command {
        let mut cmd = Command::new(BIN);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("MEDIAGW_") {
                cmd.env_remove(k);
            }
        }
        let (first, last) = self.ports;
        cmd.env("MEDIAGW_DP_DATAPLANE__CONTROL_SOCKET", &self.control_path)
            .env("MEDIAGW_DP_DATAPLANE__MEDIA_SOCKET", &self.media_path)
            .env(
                "MEDIAGW_DP_DATAPLANE__METRICS_ADDR",
                &self.setup.metrics_addr,
            )
            .env("MEDIAGW_DP_DATAPLANE__WORKERS", "1")
            // Several daemons share a 2-core box: do not pin them all to
            // the same core.
            .env("MEDIAGW_DP_DATAPLANE__PIN_WORKERS", "false")
            .env("MEDIAGW_DP_DATAPLANE__ENGINE", self.setup.engine)
            .env("MEDIAGW_DP_PORTS__DEFAULT", format!("{first}-{last}"))
            .env("MEDIAGW_DP_ENDPOINT__SILENT_AFTER_MS", "300")
            .env("MEDIAGW_LOG", "info")
            .stdin(Stdio::null())
            .stdout(self.log_file(&format!("{log_name}.out")))
            .stderr(self.log_file(&format!("{log_name}.err")));
        cmd
    }

    fn log_file(&self, name: &str) -> fs::File {
        fs::File::create(self.dir.path().join(name)).expect("create log file")
    }

    fn spawn(&self, log_name: &str) -> io::Result<Child> {
        self.command(log_name).spawn()
    }

    /// Reads a log written by `command(name)`: "daemon.out", "daemon.err".
    pub fn log(&self, name: &str) -> String {
        fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn wait_ready(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if UnixStream::connect(&self.control_path).is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "the daemon exited ({status}) before its control socket accepted\n{}",
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the control socket did not accept within {limit:?}\n{}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Both logs of the daemon, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- daemon stdout ---\n{}\n--- daemon stderr ---\n{}",
            self.log("daemon.out"),
            self.log("daemon.err")
        )
    }

    /// Sends SIGTERM and waits up to `limit` for the exit status.
    pub fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        if let Ok(Some(s)) = child.try_wait() {
            self.child = None;
            return Some(s);
        }
        sigterm(child.id());
        let status = wait_timeout(child, limit);
        if status.is_some() {
            self.child = None;
        }
        status
    }

    pub fn control(&self) -> Control {
        Control::connect(&self.control_path)
    }

    pub fn media(&self) -> UnixStream {
        let s = UnixStream::connect(&self.media_path).expect("connect media socket");
        s.set_read_timeout(Some(REPLY_TIMEOUT)).expect("timeout");
        s
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            sigterm(child.id());
            if wait_timeout(&mut child, Duration::from_secs(3)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// SIGTERM to one process we started.
pub fn sigterm(pid: u32) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) with a pid of a child this test spawned and has not
    // reaped yet (so the pid cannot have been reused); no memory involved.
    let _ = unsafe { libc::kill(pid, libc::SIGTERM) };
}

pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------
// Control socket
// ---------------------------------------------------------------------------

/// A blocking control-socket client. Events are skipped.
#[derive(Debug)]
pub struct Control {
    stream: UnixStream,
    framer: LineFramer,
    next_id: u64,
}

/// A response line: its id and its result or error.
pub type Response = (Option<u64>, Result<serde_json::Value, ErrorBody>);

impl Control {
    pub fn connect(path: &Path) -> Self {
        let stream = UnixStream::connect(path).expect("connect control socket");
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .expect("timeout");
        Self {
            stream,
            framer: LineFramer::new(control::DEFAULT_MAX_LINE),
            next_id: 1,
        }
    }

    /// Connects and says hello.
    pub fn connect_hello(path: &Path) -> Self {
        let mut c = Self::connect(path);
        let reply = c.call(Hello::new("daemon-e2e")).expect("hello");
        assert_eq!(reply.version, control::PROTOCOL_VERSION);
        c
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write control socket");
    }

    /// The next response line (events are skipped).
    pub fn read_response(&mut self) -> Response {
        let mut buf = [0u8; 16 * 1024];
        loop {
            if let Some(line) = self.framer.next_line() {
                let line = line.expect("server line within the limit");
                match control::parse_server_message(line) {
                    Ok(ServerMessage::Response { id, result }) => return (id, result),
                    Ok(_) => continue,
                    Err(e) => panic!("bad server line {:?}: {e}", String::from_utf8_lossy(line)),
                }
            }
            let n = self
                .stream
                .read(&mut buf)
                .expect("control reply within the timeout");
            assert!(n > 0, "the daemon closed the control connection");
            self.framer.push(&buf[..n]);
        }
    }

    /// Sends one request and returns its typed reply or the error.
    pub fn call<C: Call>(&mut self, op: C) -> Result<C::Reply, ErrorBody> {
        let id = self.next_id;
        self.next_id += 1;
        let line = control::encode_request(&Request::new(id, op));
        self.send_raw(line.as_bytes());
        let (got, result) = self.read_response();
        assert_eq!(got, Some(id), "response to another request");
        result.map(|v| control::decode_reply::<C>(v).expect("reply decodes"))
    }

    pub fn status(&mut self) -> ServerStatus {
        self.call(StatusQuery).expect("status")
    }

    pub fn create(&mut self, tenant: &str, session: &str) -> EndpointCreated {
        let c = EndpointCreate::new(
            TenantId::try_from(tenant).expect("tenant id"),
            SessionId::try_from(session).expect("session id"),
            Codec::Pcmu,
        );
        self.call(c).expect("endpoint.create")
    }

    pub fn stats(&mut self, endpoint: EndpointId) -> EndpointStats {
        self.call(EndpointStatsQuery { endpoint })
            .expect("endpoint.stats")
    }

    /// Polls `endpoint.stats` until `done` holds or `limit` passes; returns
    /// the last stats either way.
    pub fn stats_until(
        &mut self,
        endpoint: EndpointId,
        limit: Duration,
        done: impl Fn(&EndpointStats) -> bool,
    ) -> EndpointStats {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.stats(endpoint);
            if done(&s) || Instant::now() >= deadline {
                return s;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

// ---------------------------------------------------------------------------
// Media socket
// ---------------------------------------------------------------------------

/// One frame as read from the media socket.
#[derive(Debug, Clone)]
pub struct ReceivedFrame {
    pub seq: u64,
    pub media_ts: u32,
    pub flags: FrameFlags,
    pub samples: Vec<i16>,
}

/// Writes one media message.
pub fn send_media(stream: &mut UnixStream, msg: &MediaMessage<'_>) {
    let mut buf = [0u8; MAX_MESSAGE_LEN];
    let n = msg.encode_into(&mut buf).expect("encode media message");
    stream.write_all(&buf[..n]).expect("write media socket");
}

/// Writes a PCM16 frame to play into the call.
pub fn send_play(stream: &mut UnixStream, endpoint: EndpointId, seq: u64, pcm: &[i16]) {
    send_media(
        stream,
        &MediaMessage::Play(Play {
            endpoint,
            seq,
            flags: PlayFlags::default(),
            sample_rate: ClockRate::NARROWBAND,
            samples: Samples::new(pcm),
        }),
    );
}

/// A subscription to one endpoint's frames, read by a thread until
/// [`Tap::finish`].
#[derive(Debug)]
pub struct Tap {
    frames: Arc<Mutex<Vec<ReceivedFrame>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Tap {
    /// Subscribes and waits for the ack.
    pub fn subscribe(media_path: &Path, endpoint: EndpointId) -> Self {
        let mut stream = UnixStream::connect(media_path).expect("connect media socket");
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .expect("timeout");
        send_media(
            &mut stream,
            &MediaMessage::Subscribe(Subscribe {
                endpoint,
                format: MediaFormat::PCM16,
            }),
        );
        let mut decoder = MediaDecoder::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            if let Some(msg) = decoder.next_message() {
                match msg.expect("valid media message") {
                    MediaMessage::Ack(a) if a.endpoint == endpoint && a.request == 0x01 => break,
                    other => panic!("expected the subscribe ack, got {other:?}"),
                }
            }
            let n = stream
                .read(&mut buf)
                .expect("subscribe ack within the timeout");
            assert!(n > 0, "media socket closed");
            decoder.push(&buf[..n]);
        }
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let frames = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, s) = (frames.clone(), stop.clone());
        let thread = thread::spawn(move || read_frames(stream, decoder, endpoint, &f, &s));
        Self {
            frames,
            stop,
            thread: Some(thread),
        }
    }

    /// Frames received so far.
    pub fn snapshot(&self) -> Vec<ReceivedFrame> {
        self.frames.lock().expect("frames lock").clone()
    }

    /// Waits until a received frame satisfies `done` (or `limit` passes).
    pub fn wait_for(&self, limit: Duration, done: impl Fn(&ReceivedFrame) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.frames.lock().expect("frames lock").iter().any(&done) {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Stops reading; every frame received, or the reader's error.
    pub fn finish(mut self) -> Vec<ReceivedFrame> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("tap reader").expect("tap reader error");
        }
        std::mem::take(&mut *self.frames.lock().expect("frames lock"))
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn read_frames(
    mut stream: UnixStream,
    mut decoder: MediaDecoder,
    endpoint: EndpointId,
    frames: &Mutex<Vec<ReceivedFrame>>,
    stop: &AtomicBool,
) -> Result<(), String> {
    let mut buf = [0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        while let Some(msg) = decoder.next_message() {
            match msg.map_err(|e| format!("bad media message: {e}"))? {
                MediaMessage::Frame(f) => {
                    if f.endpoint != endpoint {
                        return Err(format!("frame of {} on a tap of {endpoint}", f.endpoint));
                    }
                    if f.sample_rate != ClockRate::NARROWBAND {
                        return Err(format!("frame at {}", f.sample_rate));
                    }
                    frames.lock().expect("frames lock").push(ReceivedFrame {
                        seq: f.seq,
                        media_ts: f.media_ts,
                        flags: f.flags,
                        samples: f.samples.to_vec(),
                    });
                }
                MediaMessage::Dropped(d) => {
                    return Err(format!("the tap dropped {} frames for us", d.count));
                }
                other => return Err(format!("unexpected media message {other:?}")),
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => return Err("media socket closed".into()),
            Ok(n) => decoder.push(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("media socket read: {e}")),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// RTP and audio
// ---------------------------------------------------------------------------

/// A plain RTP packet (12-byte header) with `payload`.
pub fn rtp(pt: u8, marker: bool, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let header = RtpHeader {
        marker,
        payload_type: PayloadType(pt),
        seq: Seq(seq),
        timestamp: RtpTimestamp(ts),
        ssrc: Ssrc(ssrc),
    };
    let mut out = vec![0u8; 12 + payload.len()];
    let n = write_rtp(&header, payload, &mut out).expect("room for the packet");
    out.truncate(n);
    out
}

/// A UDP socket on loopback with a read timeout.
pub fn udp() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    s
}

/// The endpoint's address on loopback.
pub fn endpoint_addr(created: &EndpointCreated) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], created.local_addr.port()))
}

/// A known, non-periodic-per-frame waveform: two tones, sample `n`.
pub fn waveform(n: u64) -> i16 {
    let t = n as f64 / 8000.0;
    let v = 7000.0 * (2.0 * std::f64::consts::PI * 441.0 * t).sin()
        + 3000.0 * (2.0 * std::f64::consts::PI * 1033.0 * t).sin();
    v as i16
}

/// `pcm` through G.711 µ-law and back: what a decoder reproduces.
pub fn ulaw_round_trip(pcm: &[i16]) -> Vec<i16> {
    let mut enc = vec![0u8; pcm.len()];
    let n = mediagw_shared::g711::encode_ulaw(pcm, &mut enc);
    let mut dec = vec![0i16; n];
    let m = mediagw_shared::g711::decode_ulaw(&enc[..n], &mut dec);
    dec.truncate(m);
    dec
}

/// µ-law encoding of `pcm`.
pub fn ulaw(pcm: &[i16]) -> Vec<u8> {
    let mut enc = vec![0u8; pcm.len()];
    let n = mediagw_shared::g711::encode_ulaw(pcm, &mut enc);
    enc.truncate(n);
    enc
}
