//! `mediagw`: runs the whole gateway on one host — the dataplane and the
//! control plane — as one supervised command, with logs in the terminal.
//!
//! It starts `mediagw-dataplane`, waits for its control socket, then starts
//! `mediagw-controlplane` pointed at it (both found next to this binary).
//! Each child's log lines are prefixed with its name. A child that dies is
//! restarted with backoff (the other keeps running: calls survive a control
//! plane restart, and the control plane re-attaches calls after a dataplane
//! restart); one that dies five times within a minute stops everything.
//! Ctrl-C, SIGTERM or SIGHUP stops the control plane first, then the
//! dataplane, each given time to drain.
//!
//! Under systemd, run the two daemons as units of their own instead (each
//! then restarts on its own); this is for a terminal, a demo, a developer.

// A driver: it reads the clock to supervise.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use rustix::process::{Pid, Signal, kill_process};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Runs the mediagw dataplane and control plane together, supervised.
///
/// With no configuration file each daemon runs on its embedded defaults:
/// sockets under the runtime directory, RTP on 127.0.0.1, in-memory
/// sessions, and an Asterisk expected on 127.0.0.1 (AMI 5038, ARI 8088)
/// that may be absent: the control plane keeps retrying.
#[derive(Debug, Parser)]
#[command(name = "mediagw", version, max_term_width = 100)]
struct Args {
    /// Directory for the control and media sockets.
    #[arg(long, value_name = "DIR", default_value = "/tmp/mediagw")]
    runtime_dir: PathBuf,
    /// The dataplane's TOML configuration.
    #[arg(long, value_name = "FILE")]
    dataplane_config: Option<PathBuf>,
    /// The control plane's TOML configuration.
    #[arg(long, value_name = "FILE")]
    controlplane_config: Option<PathBuf>,
    /// Generate demo calls (a speech-like signal as RTP through the real
    /// dataplane) so the gateway shows work with no Asterisk at all.
    #[arg(long)]
    demo: bool,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

/// How long each daemon gets to drain after SIGTERM.
const DRAIN: Duration = Duration::from_secs(15);
/// Restart limit: this many exits ...
const MAX_RESTARTS: usize = 5;
/// ... within this long stops everything.
const RESTART_WINDOW: Duration = Duration::from_secs(60);

struct Daemon {
    name: &'static str,
    binary: PathBuf,
    env: Vec<(String, String)>,
    args: Vec<String>,
    child: Option<Child>,
    exits: Vec<Instant>,
    next_start: Option<Instant>,
}

impl Daemon {
    fn start(&mut self) -> std::io::Result<()> {
        let mut cmd = Command::new(&self.binary);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: Ctrl-C in the terminal reaches only
            // this supervisor, which stops the daemons in order.
            .process_group(0);
        let mut child = cmd.spawn()?;
        let width = 12;
        if let Some(out) = child.stdout.take() {
            forward(self.name, width, out);
        }
        if let Some(err) = child.stderr.take() {
            forward(self.name, width, err);
        }
        eprintln!("{:>width$} | started, pid {}", self.name, child.id());
        self.child = Some(child);
        self.next_start = None;
        Ok(())
    }

    /// Whether it exited by itself since the last look.
    fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(status.to_string())
            }
            Ok(None) => None,
            Err(e) => Some(format!("cannot wait: {e}")),
        }
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(&child, Signal::TERM);
        let deadline = Instant::now() + DRAIN;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    eprintln!("{:>12} | stopped ({status})", self.name);
                    return;
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
                _ => {
                    eprintln!("{:>12} | did not stop in {DRAIN:?}; killing it", self.name);
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
            }
        }
    }
}

fn signal(child: &Child, sig: Signal) {
    if let Some(pid) = i32::try_from(child.id()).ok().and_then(Pid::from_raw) {
        let _ = kill_process(pid, sig);
    }
}

/// Copies a child's output to ours, a line at a time, with its name.
fn forward(name: &'static str, width: usize, from: impl Read + Send + 'static) {
    thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            match line {
                Ok(line) => eprintln!("{name:>width$} | {line}"),
                Err(_) => break,
            }
        }
    });
}

fn sibling(name: &str) -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| format!("cannot find my own path: {e}"))?;
    let dir = me.parent().unwrap_or(Path::new("."));
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found next to {} (build it: cargo build --release -p mediagw-dataplane -p mediagw-controlplane)",
            path.display(),
            me.display()
        ))
    }
}

fn wait_for_socket(path: &Path, dp: &mut Daemon, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Ok(());
        }
        if let Some(status) = dp.exited() {
            return Err(format!("the dataplane exited at start ({status})"));
        }
        thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "{} did not appear within {limit:?}",
        path.display()
    ))
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mediagw: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    std::fs::create_dir_all(&args.runtime_dir)
        .map_err(|e| format!("cannot create {}: {e}", args.runtime_dir.display()))?;
    let control = args.runtime_dir.join("control.sock");
    let media = args.runtime_dir.join("media.sock");
    let path_str = |p: &Path| p.to_string_lossy().into_owned();
    let mut common = vec![];
    if args.log_json {
        common.push(("MEDIAGW_LOG_JSON".to_owned(), "true".to_owned()));
    }

    let mut dp_env = common.clone();
    dp_env.push((
        "MEDIAGW_DP_DATAPLANE__CONTROL_SOCKET".into(),
        path_str(&control),
    ));
    dp_env.push((
        "MEDIAGW_DP_DATAPLANE__MEDIA_SOCKET".into(),
        path_str(&media),
    ));
    let mut dp_args = vec![];
    if let Some(c) = &args.dataplane_config {
        dp_args.extend(["--config".to_owned(), path_str(c)]);
    }
    let mut cp_env = common;
    cp_env.push((
        "MEDIAGW_CP_DATAPLANE__CONTROL_SOCKET".into(),
        path_str(&control),
    ));
    cp_env.push((
        "MEDIAGW_CP_DATAPLANE__MEDIA_SOCKET".into(),
        path_str(&media),
    ));
    if args.demo {
        cp_env.push(("MEDIAGW_CP_DEMO__ENABLED".into(), "true".into()));
    }
    let mut cp_args = vec![];
    if let Some(c) = &args.controlplane_config {
        cp_args.extend(["--config".to_owned(), path_str(c)]);
    }

    let mut dataplane = Daemon {
        name: "dataplane",
        binary: sibling("mediagw-dataplane")?,
        env: dp_env,
        args: dp_args,
        child: None,
        exits: Vec::new(),
        next_start: None,
    };
    let mut controlplane = Daemon {
        name: "controlplane",
        binary: sibling("mediagw-controlplane")?,
        env: cp_env,
        args: cp_args,
        child: None,
        exits: Vec::new(),
        next_start: None,
    };

    let stop = Arc::new(AtomicBool::new(false));
    // SIGHUP too: a closed terminal stops the daemons with us (they run in
    // their own process group and would not get it).
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| format!("cannot catch signals: {e}"))?;
    let s = stop.clone();
    thread::spawn(move || {
        if signals.forever().next().is_some() {
            s.store(true, Ordering::SeqCst);
        }
    });

    dataplane
        .start()
        .map_err(|e| format!("cannot start the dataplane: {e}"))?;
    if let Err(e) = wait_for_socket(&control, &mut dataplane, Duration::from_secs(20)) {
        dataplane.stop();
        return Err(e);
    }
    if let Err(e) = controlplane.start() {
        dataplane.stop();
        return Err(format!("cannot start the control plane: {e}"));
    }
    eprintln!(
        "mediagw: running; control socket {}, media socket {}; Ctrl-C stops",
        control.display(),
        media.display()
    );

    let mut failure = None;
    while !stop.load(Ordering::SeqCst) && failure.is_none() {
        for d in [&mut dataplane, &mut controlplane] {
            if let Some(status) = d.exited() {
                let now = Instant::now();
                d.exits.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
                d.exits.push(now);
                if d.exits.len() >= MAX_RESTARTS {
                    failure = Some(format!(
                        "{} exited {} times within {RESTART_WINDOW:?} (last: {status}); giving up",
                        d.name,
                        d.exits.len()
                    ));
                    break;
                }
                let delay = Duration::from_millis(500 << d.exits.len().min(5));
                eprintln!(
                    "{:>12} | exited ({status}); restarting in {delay:?}",
                    d.name
                );
                d.next_start = Some(now + delay);
            }
            if d.child.is_none()
                && d.next_start.is_some_and(|t| Instant::now() >= t)
                && let Err(e) = d.start()
            {
                eprintln!("{:>12} | cannot restart: {e}", d.name);
                d.next_start = Some(Instant::now() + Duration::from_secs(5));
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
    eprintln!("mediagw: stopping");
    controlplane.stop();
    dataplane.stop();
    failure.map_or(Ok(()), Err)
}
