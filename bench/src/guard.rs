//! What keeps a benchmark run from leaving anything behind or running
//! twice: the single-instance lock, the stop flag that SIGINT and SIGTERM
//! raise, and [`ChildGuard`], which kills a child process by its PID when
//! dropped (normal return, error or panic).
//!
//! A child is also started with `PR_SET_PDEATHSIG = SIGKILL`, so even a
//! harness killed with SIGKILL takes its children with it. Sockets the
//! harness opens itself close with the process.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::error::{BenchError, Context, Result};

static STOP: AtomicBool = AtomicBool::new(false);
static SIGNALS: OnceLock<()> = OnceLock::new();

/// Routes SIGINT and SIGTERM to the stop flag (once per process). Every
/// long loop of the harness checks [`check_stop`] and unwinds, dropping its
/// guards.
pub fn install_signal_handlers() -> Result<()> {
    if SIGNALS.get().is_some() {
        return Ok(());
    }
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("installing SIGINT/SIGTERM handlers")?;
    std::thread::Builder::new()
        .name("rtpload-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                eprintln!("rtpload: signal {sig}, stopping and cleaning up");
                STOP.store(true, Ordering::SeqCst);
            }
        })
        .context("starting the signal thread")?;
    let _ = SIGNALS.set(());
    Ok(())
}

/// Whether a stop was asked for.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Err(interrupted) once a stop was asked for.
pub fn check_stop() -> Result<()> {
    if stop_requested() {
        Err(BenchError::interrupted())
    } else {
        Ok(())
    }
}

/// The single-instance lock: an exclusive `flock` on a file, released by
/// the kernel when the process ends, however it ends.
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
    path: PathBuf,
}

impl InstanceLock {
    /// The default lock path, shared by every checkout on the machine (two
    /// runs at once would measure each other).
    pub fn default_path() -> PathBuf {
        std::env::temp_dir().join("mediagw-rtpload.lock")
    }

    /// Takes the lock or says who holds it.
    pub fn acquire(path: &Path) -> Result<Self> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .context(format_args!("opening the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(path).unwrap_or_default();
                return Err(BenchError::new(format!(
                    "another rtpload run holds {} ({}): two runs at once would measure each other; wait for it or stop it",
                    path.display(),
                    holder.trim()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(BenchError::new(format!("locking {}: {e}", path.display())));
            }
        }
        use std::io::Write as _;
        file.set_len(0).context("truncating the lock file")?;
        let _ = write!(file, "pid {}", std::process::id());
        Ok(Self {
            _file: file,
            path: path.to_owned(),
        })
    }

    /// Where the lock lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A child process killed (SIGKILL, by PID) and reaped when dropped, unless
/// it already exited.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    name: String,
}

impl ChildGuard {
    /// Spawns `cmd` with the parent-death signal set to SIGKILL.
    pub fn spawn(mut cmd: Command, name: &str) -> Result<Self> {
        use std::os::unix::process::CommandExt as _;
        // SAFETY: the closure runs in the forked child before exec and only
        // calls prctl, which is async-signal-safe; it touches no memory of
        // the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().context(format_args!("starting {name}"))?;
        Ok(Self {
            child: Some(child),
            name: name.to_owned(),
        })
    }

    /// The child's PID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The child itself (to take its pipes).
    pub fn child_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    /// Whether it exited, without waiting.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends SIGTERM, waits up to `grace` for the exit, then kills.
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        let Some(child) = self.child.as_mut() else {
            return Err(BenchError::new(format!("{} already reaped", self.name)));
        };
        if let Some(status) = child.try_wait()? {
            self.child = None;
            return Ok(status);
        }
        let pid = libc::pid_t::try_from(child.id())
            .map_err(|_| BenchError::new("child PID out of range"))?;
        // SAFETY: kill(2) with our own child's PID, which is not reaped yet
        // (try_wait said it runs), so the PID cannot have been reused.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = crate::procfs::now() + grace;
        while crate::procfs::now() < deadline {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let status = child.wait()?;
        self.child = None;
        Err(BenchError::new(format!(
            "{} did not stop within {grace:?} of SIGTERM and was killed ({status})",
            self.name
        )))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take()
            && child.try_wait().ok().flatten().is_none()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sleeps `d` in short steps, returning early with an error on a stop.
pub fn pause(d: Duration) -> Result<()> {
    let end = crate::procfs::now() + d;
    loop {
        check_stop()?;
        let left = end.saturating_since(crate::procfs::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}
