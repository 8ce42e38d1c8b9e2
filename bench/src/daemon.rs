//! Runs the real `mediagw-dataplane` binary, unmodified, with its default
//! configuration except where its sockets go: the control and media sockets
//! in a private temporary directory, the Prometheus listener on an
//! ephemeral loopback port. Everything else (workers, pinning, engine,
//! tick, ports, jitter buffer bounds) is the shipped default.
//!
//! The daemon is a [`ChildGuard`]: stopped with SIGTERM at the end, killed
//! by PID if the harness fails or panics, and by the kernel if the harness
//! dies (parent-death signal). Its log (JSON lines on stdout) is drained by
//! a thread so it never blocks; the last lines are kept for error messages.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::control::Control;
use crate::error::{BenchError, Context, Result};
use crate::guard::{ChildGuard, check_stop};
use crate::procfs::{self, ThreadCpu, now};

/// Log lines kept for error messages.
const KEEP_LOG: usize = 40;

/// A running daemon.
#[derive(Debug)]
pub struct Daemon {
    child: ChildGuard,
    dir: tempfile::TempDir,
    control: PathBuf,
    metrics: SocketAddr,
    log: Arc<Mutex<VecDeque<String>>>,
}

/// One scrape of `/metrics`: series name with labels -> value.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// `name{labels}` -> value, as exposed.
    pub series: BTreeMap<String, f64>,
}

impl Scrape {
    /// Sum of every series of `name` (any labels).
    pub fn sum(&self, name: &str) -> f64 {
        self.series
            .iter()
            .filter(|(k, _)| k.split('{').next() == Some(name))
            .map(|(_, v)| *v)
            .sum()
    }

    /// The cumulative buckets `(le seconds, count)` of histogram `name`,
    /// summed over its other labels, `+Inf` last.
    pub fn buckets(&self, name: &str) -> Vec<(f64, u64)> {
        let prefix = format!("{name}_bucket{{");
        let mut by_le: BTreeMap<u64, (f64, u64)> = BTreeMap::new();
        for (k, v) in &self.series {
            let Some(labels) = k.strip_prefix(&prefix) else {
                continue;
            };
            let Some(le) = labels
                .split(',')
                .find_map(|l| l.trim_end_matches('}').strip_prefix("le=\""))
                .map(|l| l.trim_end_matches('"'))
            else {
                continue;
            };
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            let e = by_le.entry(le.to_bits()).or_insert((le, 0));
            e.1 += *v as u64;
        }
        let mut out: Vec<(f64, u64)> = by_le.into_values().collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }
}

/// `later - earlier` of cumulative buckets.
pub fn bucket_delta(later: &[(f64, u64)], earlier: &[(f64, u64)]) -> Vec<(f64, u64)> {
    later
        .iter()
        .map(|&(le, c)| {
            let before = earlier
                .iter()
                .find(|(l, _)| l.to_bits() == le.to_bits())
                .map_or(0, |x| x.1);
            (le, c.saturating_sub(before))
        })
        .collect()
}

impl Daemon {
    /// The daemon next to the running harness (`target/release`).
    pub fn default_binary() -> PathBuf {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("mediagw-dataplane")))
            .unwrap_or_else(|| PathBuf::from("mediagw-dataplane"))
    }

    /// Starts `binary` and waits until its control socket answers.
    pub fn start(binary: &Path, env: &[(&str, String)]) -> Result<Self> {
        if !binary.exists() {
            return Err(BenchError::new(format!(
                "{} not found: build it first (cargo build --release -p mediagw-dataplane) or pass --daemon",
                binary.display()
            )));
        }
        let dir = tempfile::Builder::new()
            .prefix("rtpload-")
            .tempdir()
            .context("creating the daemon's socket directory")?;
        let control = dir.path().join("control.sock");
        let mut cmd = Command::new(binary);
        cmd.arg("--log-json")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("MEDIAGW_DP_DATAPLANE__CONTROL_SOCKET", &control)
            .env(
                "MEDIAGW_DP_DATAPLANE__MEDIA_SOCKET",
                dir.path().join("media.sock"),
            )
            .env("MEDIAGW_DP_DATAPLANE__METRICS_ADDR", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = ChildGuard::spawn(cmd, "mediagw-dataplane")?;
        let log = Arc::new(Mutex::new(VecDeque::with_capacity(KEEP_LOG)));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<SocketAddr>();
        let c = child.child_mut().context("daemon child")?;
        let stdout = c.stdout.take().context("daemon stdout")?;
        let stderr = c.stderr.take().context("daemon stderr")?;
        spawn_log_reader(stdout, log.clone(), Some(addr_tx))?;
        spawn_log_reader(stderr, log.clone(), None)?;
        let deadline = now() + Duration::from_secs(20);
        let metrics = loop {
            check_stop()?;
            if let Ok(a) = addr_rx.try_recv() {
                break a;
            }
            if let Some(status) = child.exited() {
                return Err(BenchError::new(format!(
                    "mediagw-dataplane exited at start ({status}): {}",
                    tail(&log)
                )));
            }
            if now() > deadline {
                return Err(BenchError::new(format!(
                    "mediagw-dataplane did not announce its metrics address: {}",
                    tail(&log)
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let me = Self {
            child,
            dir,
            control,
            metrics,
            log,
        };
        // Ready when the control socket answers hello.
        loop {
            check_stop()?;
            if me.control().is_ok() {
                break;
            }
            if now() > deadline {
                return Err(BenchError::new(format!(
                    "mediagw-dataplane's control socket does not answer: {}",
                    tail(&me.log)
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(me)
    }

    /// The daemon's PID.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// A new control connection.
    pub fn control(&self) -> Result<Control> {
        Control::connect(&self.control, Duration::from_secs(30))
    }

    /// The worker threads (`mediagw-w*`), CPU time and switches.
    pub fn workers(&self) -> Vec<ThreadCpu> {
        procfs::threads_named(self.pid(), "mediagw-w")
    }

    /// Every thread of the daemon.
    pub fn threads(&self) -> Vec<ThreadCpu> {
        procfs::threads(self.pid())
    }

    /// Resident memory, bytes.
    pub fn rss(&self) -> u64 {
        procfs::rss_bytes(self.pid()).unwrap_or(0)
    }

    /// Scrapes `/metrics`.
    pub fn scrape(&self) -> Result<Scrape> {
        let mut s = TcpStream::connect_timeout(&self.metrics, Duration::from_secs(5))
            .context("connecting to /metrics")?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body).context("reading /metrics")?;
        let Some((head, text)) = body.split_once("\r\n\r\n") else {
            return Err(BenchError::new("a /metrics answer without a body"));
        };
        if !head.starts_with("HTTP/1.1 200") {
            return Err(BenchError::new(format!(
                "/metrics answered {}",
                head.lines().next().unwrap_or_default()
            )));
        }
        let mut series = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            if let Some((k, v)) = line.rsplit_once(' ')
                && let Ok(v) = v.parse::<f64>()
            {
                series.insert(k.to_owned(), v);
            }
        }
        Ok(Scrape { series })
    }

    /// Stops it with SIGTERM (it drains and removes its sockets) and checks
    /// it exited cleanly.
    pub fn stop(mut self) -> Result<()> {
        let status = self.child.terminate(Duration::from_secs(30))?;
        if !status.success() {
            return Err(BenchError::new(format!(
                "mediagw-dataplane exited with {status}: {}",
                tail(&self.log)
            )));
        }
        let left: Vec<_> = std::fs::read_dir(self.dir.path())
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        if !left.is_empty() {
            return Err(BenchError::new(format!(
                "mediagw-dataplane left files behind: {left:?}"
            )));
        }
        Ok(())
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }
}

fn tail(log: &Mutex<VecDeque<String>>) -> String {
    log.lock()
        .map(|l| l.iter().cloned().collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

fn spawn_log_reader(
    pipe: impl Read + Send + 'static,
    log: Arc<Mutex<VecDeque<String>>>,
    addr: Option<std::sync::mpsc::Sender<SocketAddr>>,
) -> Result<()> {
    std::thread::Builder::new()
        .name("rtpload-daemon-log".into())
        .spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Some(tx) = &addr
                    && line.contains("metrics listening")
                    && let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && let Some(a) = v
                        .pointer("/fields/addr")
                        .and_then(|a| a.as_str())
                        .and_then(|a| a.parse().ok())
                {
                    let _ = tx.send(a);
                }
                if let Ok(mut l) = log.lock() {
                    if l.len() == KEEP_LOG {
                        l.pop_front();
                    }
                    l.push_back(line);
                }
            }
        })
        .context("starting the daemon log reader")?;
    Ok(())
}
