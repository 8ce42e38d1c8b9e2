//! End-to-end harness: the Asterisk test double (`mediagw-testkit`), a real
//! `mediagw-dataplane` process and a real `mediagw-controlplane` process,
//! each killable and restartable, on loopback with their own sockets, port
//! range and HTTP port. Sessions in memory, or in the real Redis on
//! 127.0.0.1:6379 under a prefix of the test's own.

#![allow(dead_code)] // each test binary uses a subset
// A driver: real processes in real time.
#![allow(clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use mediagw_shared::control::{
    self, Call, DEFAULT_MAX_SERVER_LINE, EndpointList, EndpointSummary, Hello, LineFramer, Request,
    ServerMessage,
};
use mediagw_shared::ids::EndpointId;
use mediagw_shared::media::{MediaDecoder, MediaFormat, MediaMessage, Subscribe};
use mediagw_testkit::asterisk::{AsteriskDouble, DoubleConfig};
use serde_json::Value;

/// Where the binaries of this build are.
fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_mediagw-controlplane"))
        .parent()
        .expect("binaries live in a directory")
        .to_owned()
}

/// The dataplane binary of this build, built once per test run: it is
/// another package's binary, which cargo does not build for these tests.
pub fn dataplane_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| workspace_bin("mediagw-dataplane", "mediagw-dataplane"))
        .clone()
}

/// The operator CLI of this build.
pub fn mediagwctl_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| workspace_bin("mediagw-tools", "mediagwctl"))
        .clone()
}

fn workspace_bin(package: &str, bin: &str) -> PathBuf {
    let dir = bin_dir();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "-q", "-p", package, "--bin", bin]);
    if dir.ends_with("release") {
        cmd.arg("--release");
    }
    let out = cmd.output().expect("run cargo build");
    assert!(
        out.status.success(),
        "building {bin} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join(bin)
}

/// A free TCP port on loopback (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Each world its own RTP port ranges, below Linux's ephemeral ports
/// (32768 and up), where other sockets of the machine cannot take them:
/// the dataplane's (800 ports) and the double's UnicastRTP ports (1,000:
/// 500 even ones, for 200 calls and their re-attachments).
fn port_ranges() -> ((u16, u16), (u16, u16)) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let k = NEXT.fetch_add(1, Ordering::SeqCst) % 12;
    let dp = 22_000 + k * 800;
    let double = 10_000 + k * 1_000;
    ((dp, dp + 799), (double, double + 999))
}

/// A child process with its logs in the test's directory.
pub struct Proc {
    name: &'static str,
    cmd: Box<dyn Fn() -> Command + Send + Sync>,
    child: Option<Child>,
    log: PathBuf,
    starts: u32,
}

impl Proc {
    fn new(
        name: &'static str,
        dir: &Path,
        cmd: impl Fn() -> Command + Send + Sync + 'static,
    ) -> Self {
        Self {
            name,
            cmd: Box::new(cmd),
            child: None,
            log: dir.join(format!("{name}.log")),
            starts: 0,
        }
    }

    /// Starts (again), appending to its log.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let err = log.try_clone().expect("log file");
        let mut cmd = (self.cmd)();
        cmd.stdin(Stdio::null()).stdout(log).stderr(err);
        self.child = Some(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", self.name)),
        );
        self.starts += 1;
    }

    /// SIGKILL: a crash, no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait up to `limit`; true if it exited in time.
    pub fn terminate(&mut self, limit: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where sessions are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sessions {
    /// In the control plane's memory.
    Memory,
    /// In the Redis on 127.0.0.1:6379, under a prefix of the test's own.
    Redis,
}

/// The double, a dataplane and a control plane, wired together.
pub struct World {
    pub double: AsteriskDouble,
    pub dataplane: Proc,
    pub controlplane: Proc,
    pub dir: tempfile::TempDir,
    pub http: SocketAddr,
    pub control_socket: PathBuf,
    pub media_socket: PathBuf,
    pub redis: RedisKeys,
    pub app: String,
}

/// The test's Redis prefix; its keys are removed when dropped.
pub struct RedisKeys(pub Option<String>);

impl Drop for RedisKeys {
    fn drop(&mut self) {
        if let Some(prefix) = self.0.take() {
            // From a plain thread: a runtime may or may not be running here.
            let _ = thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    rt.block_on(redis_cleanup(&prefix));
                }
            })
            .join();
        }
    }
}

impl World {
    /// Starts everything and waits until the control plane is ready (ARI
    /// and the dataplane connected).
    pub async fn start(sessions: Sessions) -> Self {
        Self::start_with(sessions, "").await
    }

    /// As [`start`](Self::start), with extra TOML for the control plane
    /// (its own `[routing]` and `[[tenants]]`; by default every call is
    /// tenant `acme`'s).
    pub async fn start_with(sessions: Sessions, extra_toml: &str) -> Self {
        let extra_toml = if extra_toml.is_empty() {
            "[routing]\ndefault_tenant = \"acme\"\n"
        } else {
            extra_toml
        };
        let ((first, last), (rtp_first, rtp_last)) = port_ranges();
        let double = AsteriskDouble::start(DoubleConfig {
            rtp_ports: Some(rtp_first..=rtp_last),
            ..DoubleConfig::default()
        })
        .await
        .expect("start the Asterisk double");
        let app = double.app();
        let dir = tempfile::tempdir().expect("temp dir");
        let control_socket = dir.path().join("control.sock");
        let media_socket = dir.path().join("media.sock");
        let dp_bin = dataplane_bin();
        let (cs, ms) = (control_socket.clone(), media_socket.clone());
        let mut dataplane = Proc::new("dataplane", dir.path(), move || {
            let mut c = Command::new(&dp_bin);
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("MEDIAGW_") {
                    c.env_remove(k);
                }
            }
            c.env("MEDIAGW_DP_DATAPLANE__CONTROL_SOCKET", &cs)
                .env("MEDIAGW_DP_DATAPLANE__MEDIA_SOCKET", &ms)
                .env("MEDIAGW_DP_DATAPLANE__METRICS_ADDR", "")
                .env("MEDIAGW_DP_DATAPLANE__WORKERS", "1")
                .env("MEDIAGW_DP_DATAPLANE__PIN_WORKERS", "false")
                .env("MEDIAGW_DP_PORTS__DEFAULT", format!("{first}-{last}"))
                .env("MEDIAGW_DP_PORTS__QUARANTINE_MS", "0")
                .env("MEDIAGW_LOG", "info");
            c
        });
        dataplane.start();
        wait_until(Duration::from_secs(20), || {
            UnixStream::connect(&control_socket).is_ok()
        })
        .unwrap_or_else(|()| panic!("the dataplane never listened:\n{}", dataplane.log()));

        let http_port = free_port();
        let redis_prefix = (sessions == Sessions::Redis)
            .then(|| format!("mediagw-test-{}-{}", std::process::id(), http_port));
        let sessions_toml = match &redis_prefix {
            None => "[sessions]\nbackend = \"memory\"\nhost = \"gw-test\"\n".to_owned(),
            Some(p) => format!(
                "[sessions]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"\nkey_prefix = \"{p}\"\nhost = \"gw-test\"\n"
            ),
        };
        let toml = format!(
            r#"
[controlplane]
http_listen = "127.0.0.1:{http_port}"
drain_timeout_ms = 3000

[dataplane]
control_socket = "{control}"
media_socket = "{media}"
backoff_min_ms = 50
backoff_max_ms = 300

[ami]
servers = [{{ name = "double", addr = "{ami}" }}]
username = "{ami_user}"
secret = {{ value = "{ami_secret}" }}
backoff_min_ms = 50
backoff_max_ms = 500
keepalive_interval_ms = 2000

[ari]
servers = [{{ name = "double", url = "{ari}" }}]
username = "{ari_user}"
password = {{ value = "{ari_password}" }}
app = "{app}"
backoff_min_ms = 50
backoff_max_ms = 500

[calls]
media_wait_ms = 15000

{sessions_toml}
{extra_toml}
"#,
            control = control_socket.display(),
            media = media_socket.display(),
            ami = double.ami_addr(),
            ami_user = double.ami_user(),
            ami_secret = double.ami_secret(),
            ari = double.ari_base_url(),
            ari_user = double.ari_user(),
            ari_password = double.ari_password(),
        );
        let config = dir.path().join("controlplane.toml");
        std::fs::write(&config, toml).expect("write the configuration");
        let cp_bin = PathBuf::from(env!("CARGO_BIN_EXE_mediagw-controlplane"));
        let mut controlplane = Proc::new("controlplane", dir.path(), move || {
            let mut c = Command::new(&cp_bin);
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("MEDIAGW_") {
                    c.env_remove(k);
                }
            }
            c.arg("--config").arg(&config).env("MEDIAGW_LOG", "info");
            c
        });
        controlplane.start();
        let mut world = Self {
            double,
            dataplane,
            controlplane,
            dir,
            http: SocketAddr::from(([127, 0, 0, 1], http_port)),
            control_socket,
            media_socket,
            redis: RedisKeys(redis_prefix),
            app,
        };
        world.wait_ready().await;
        world
    }

    /// Waits until `/readyz` says ARI and the dataplane are connected and
    /// the double has the application's WebSocket.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready =
                http(self.http, "GET", "/readyz", None).is_ok_and(|(status, _)| status == 200);
            if ready && self.double.ws_connected(&self.app) {
                return;
            }
            assert!(
                Instant::now() < deadline && self.controlplane.running(),
                "the control plane never became ready:\n{}",
                self.controlplane.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// GET a JSON document from the control plane.
    pub fn get(&self, path: &str) -> Value {
        let (status, body) = http(self.http, "GET", path, None)
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.controlplane.log()));
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// The control plane's live calls.
    pub fn calls(&self) -> Vec<Value> {
        self.get("/calls")["calls"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Runs `mediagwctl ARGS` against this world; its stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new(mediagwctl_bin())
            .arg("--controlplane")
            .arg(format!("http://{}", self.http))
            .arg("--socket")
            .arg(&self.control_socket)
            .args(args)
            .env_remove("MEDIAGW_CONTROLPLANE")
            .env_remove("MEDIAGW_CONTROL_SOCKET")
            .output()
            .expect("run mediagwctl");
        assert!(
            out.status.success(),
            "mediagwctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// One session from the store, whatever its state.
    pub fn session(&self, id: &str) -> Option<Value> {
        self.get("/sessions")["sessions"]
            .as_array()
            .and_then(|l| l.iter().find(|s| s["id"] == id).cloned())
    }

    /// Waits for `cond` on the world, polling; fails with the logs.
    pub async fn until(
        &mut self,
        what: &str,
        limit: Duration,
        mut cond: impl FnMut(&mut Self) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        loop {
            if cond(self) {
                return;
            }
            if Instant::now() >= deadline {
                let log = self.controlplane.log();
                let warnings: Vec<&str> = log
                    .lines()
                    .filter(|l| {
                        ["WARN", "ERROR", "connected", "reconcil"]
                            .iter()
                            .any(|k| l.contains(k))
                    })
                    .take(40)
                    .collect();
                panic!(
                    "timed out after {limit:?} waiting for {what}\n--- control plane warnings ---\n{}\n--- control plane log ---\n{}\n--- dataplane log ---\n{}",
                    warnings.join("\n"),
                    tail(&log, 80),
                    tail(&self.dataplane.log(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until the session is in `state` (`active`, `ended`, ...).
    pub async fn until_session(&mut self, id: &str, state: &str, limit: Duration) -> Value {
        let mut found = Value::Null;
        self.until(&format!("session {id} {state}"), limit, |w| {
            match w.session(id) {
                Some(s) if s["state"] == state => {
                    found = s;
                    true
                }
                _ => false,
            }
        })
        .await;
        found
    }

    /// The dataplane's endpoints (a fresh control connection each time).
    pub fn endpoints(&self) -> Vec<EndpointSummary> {
        control_call(&self.control_socket, EndpointList { tenant: None })
            .map(|l| l.endpoints)
            .unwrap_or_default()
    }

    /// One endpoint's statistics as JSON.
    pub fn endpoint_stats(&self, endpoint: EndpointId) -> Option<Value> {
        control_call(
            &self.control_socket,
            control::EndpointStatsQuery { endpoint },
        )
        .ok()
        .and_then(|s| serde_json::to_value(s).ok())
    }

    /// Stops everything; removes the test's Redis keys.
    pub async fn finish(mut self) {
        self.controlplane.terminate(Duration::from_secs(10));
        self.dataplane.terminate(Duration::from_secs(10));
        if let Some(prefix) = self.redis.0.take() {
            redis_cleanup(&prefix).await;
        }
        self.double.shutdown().await;
    }
}

async fn redis_cleanup(prefix: &str) {
    let Ok(client) = redis::Client::open("redis://127.0.0.1:6379") else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
    }
}

/// Polls a blocking condition with a deadline.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> Result<(), ()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(20));
    }
    Err(())
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A minimal HTTP/1.1 request (no keep-alive): status and body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text.split_once("\r\n\r\n").ok_or("no header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// One request on a fresh control connection.
pub fn control_call<C: Call>(path: &Path, request: C) -> Result<C::Reply, String> {
    let mut s = UnixStream::connect(path).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut framer = LineFramer::new(DEFAULT_MAX_SERVER_LINE);
    let hello = Request::new(1, Hello::new("e2e-test"));
    let req = Request::new(2, request);
    s.write_all(control::encode_request(&hello).as_bytes())
        .and_then(|()| s.write_all(control::encode_request(&req).as_bytes()))
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 65536];
    loop {
        while let Some(line) = framer.next_line() {
            let line = line.map_err(|e| e.to_string())?;
            if let Ok(ServerMessage::Response {
                id: Some(2),
                result,
            }) = control::parse_server_message(line)
            {
                let value = result.map_err(|e| format!("{:?}: {}", e.code, e.message))?;
                return control::decode_reply::<C>(value).map_err(|e| e.to_string());
            }
        }
        let n = s.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed".into());
        }
        framer.push(&buf[..n]);
    }
}

/// One frame from the media socket: its flags and samples.
pub type TapFrame = (u16, Vec<i16>);

/// Frames received from the dataplane's media socket for one endpoint.
pub struct Tap {
    frames: Arc<Mutex<Vec<TapFrame>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Tap {
    /// Subscribes to `endpoint` and collects its frames (flags, samples).
    pub fn start(media: &Path, endpoint: EndpointId) -> Self {
        let mut s = UnixStream::connect(media).expect("connect the media socket");
        let mut buf = [0u8; 64];
        let n = MediaMessage::Subscribe(Subscribe {
            endpoint,
            format: MediaFormat::PCM16,
        })
        .encode_into(&mut buf)
        .expect("encode subscribe");
        s.write_all(&buf[..n]).expect("subscribe");
        s.set_read_timeout(Some(Duration::from_millis(100))).ok();
        let frames = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (f, st) = (frames.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut dec = MediaDecoder::new();
            let mut buf = vec![0u8; 65536];
            while !st.load(Ordering::Relaxed) {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => dec.push(&buf[..n]),
                    Err(_) => continue,
                }
                while let Some(m) = dec.next_message() {
                    if let Ok(MediaMessage::Frame(fr)) = m {
                        let samples: Vec<i16> = fr.samples.iter().collect();
                        f.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((fr.flags.0, samples));
                    }
                }
            }
        });
        Self {
            frames,
            stop,
            thread: Some(thread),
        }
    }

    /// Frames so far.
    pub fn frames(&self) -> Vec<TapFrame> {
        self.frames
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
