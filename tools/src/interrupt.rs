//! Ctrl-C (SIGINT) and SIGTERM for the long-running commands.
//!
//! The first signal is turned into an orderly stop: sleeps wake up early and
//! registered sockets are shut down, so a blocking read returns end of
//! stream and the command finishes its file. A second signal exits at once.

use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::error::CtlError;

/// The exit code of a process stopped by a second signal: 128 + SIGINT.
const EXIT_INTERRUPTED: i32 = 130;

/// Whether an interrupt arrived; see the module docs.
#[derive(Debug, Clone)]
pub struct Interrupt {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    hit: Mutex<bool>,
    woken: Condvar,
    streams: Mutex<Vec<UnixStream>>,
}

impl Interrupt {
    /// Catches SIGINT and SIGTERM from now on, in a background thread.
    pub fn install() -> Result<Self, CtlError> {
        let mut signals =
            Signals::new([SIGINT, SIGTERM]).map_err(|e| CtlError::io("signal handler", e))?;
        let interrupt = Self {
            inner: Arc::default(),
        };
        let handle = interrupt.clone();
        thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for _ in signals.forever() {
                    if handle.is_hit() {
                        std::process::exit(EXIT_INTERRUPTED);
                    }
                    handle.trigger();
                }
            })
            .map_err(|e| CtlError::io("signal thread", e))?;
        Ok(interrupt)
    }

    /// Whether a signal arrived.
    pub fn is_hit(&self) -> bool {
        *self
            .inner
            .hit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Sleeps for `d` or until a signal; returns whether one arrived.
    pub fn sleep(&self, d: Duration) -> bool {
        let hit = self
            .inner
            .hit
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (hit, _) = self
            .inner
            .woken
            .wait_timeout_while(hit, d, |hit| !*hit)
            .unwrap_or_else(PoisonError::into_inner);
        *hit
    }

    /// Shuts `stream`'s connection down on a signal, ending blocking reads.
    pub fn shutdown_on_interrupt(&self, stream: &UnixStream) -> Result<(), CtlError> {
        let clone = stream.try_clone().map_err(|e| CtlError::io("socket", e))?;
        if self.is_hit() {
            let _ = clone.shutdown(Shutdown::Both);
        }
        self.inner
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(clone);
        Ok(())
    }

    /// What a signal does; public for tests.
    pub fn trigger(&self) {
        *self
            .inner
            .hit
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.inner.woken.notify_all();
        for stream in self
            .inner
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            // Already closed by the peer is fine: the read ends either way.
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn quiet() -> Interrupt {
        Interrupt {
            inner: Arc::default(),
        }
    }

    #[test]
    fn sleep_ends_on_trigger() {
        let i = quiet();
        assert!(!i.sleep(Duration::from_millis(1)));
        let j = i.clone();
        let t = thread::spawn(move || j.sleep(Duration::from_secs(60)));
        thread::sleep(Duration::from_millis(20));
        i.trigger();
        assert!(t.join().unwrap());
        assert!(i.is_hit());
    }

    #[test]
    fn trigger_ends_blocking_reads() {
        let (mut a, _b) = UnixStream::pair().unwrap();
        let i = quiet();
        i.shutdown_on_interrupt(&a).unwrap();
        let j = i.clone();
        let t = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            j.trigger();
        });
        let mut buf = [0; 8];
        assert_eq!(a.read(&mut buf).unwrap(), 0);
        t.join().unwrap();
    }
}
