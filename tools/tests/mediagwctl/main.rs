//! `mediagwctl` against a fake dataplane: every command's output and exit
//! code, protocol errors, and audio through the media socket.

mod control;
mod fake;
mod media;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use fake::Fake;

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_mediagwctl");

/// No test run should take this long; a hung binary is killed.
const DEADLINE: Duration = Duration::from_secs(20);

/// What a run of the binary produced.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Starts `mediagwctl` with the fake's sockets and `args`.
pub fn spawn(fake: &Fake, args: &[&str]) -> (Child, Instant) {
    let started = fake::now();
    let child = Command::new(BIN)
        .env_remove("MEDIAGW_CONTROL_SOCKET")
        .env_remove("MEDIAGW_MEDIA_SOCKET")
        .arg("--socket")
        .arg(&fake.control)
        .arg("--media-socket")
        .arg(&fake.media)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mediagwctl");
    (child, started)
}

/// Waits for a spawned run, killing it after [`DEADLINE`].
pub fn finish(mut child: Child, started: Instant) -> Run {
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    let err = thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).unwrap();
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > DEADLINE {
            child.kill().unwrap();
            panic!("mediagwctl did not finish within {DEADLINE:?}");
        }
        thread::sleep(Duration::from_millis(5));
    };
    let elapsed = started.elapsed();
    Run {
        code: status.code(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        elapsed,
    }
}

/// Runs `mediagwctl` to the end.
pub fn run(fake: &Fake, args: &[&str]) -> Run {
    let (child, started) = spawn(fake, args);
    finish(child, started)
}

impl Run {
    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "{self:#?}");
        &self.stdout
    }

    /// Asserts failure with `code` and returns stderr.
    #[track_caller]
    pub fn fails(&self, code: i32) -> &str {
        assert_eq!(self.code, Some(code), "{self:#?}");
        assert!(self.stderr.starts_with("error: ") || code == 2, "{self:#?}");
        &self.stderr
    }
}
