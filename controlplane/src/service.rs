//! Long-running tasks as services with a shutdown signal.
//!
//! Every task that lives as long as the process (the AMI and ARI
//! connections, the call flow, the HTTP listener, the session reaper) is a
//! [`Service`]: it is handed a [`Shutdown`] and returns once it has drained.
//! [`Services`] starts them, waits for the first to fail or for the signal,
//! then gives every service a bounded time to finish, so `systemctl stop`
//! drains cleanly (pingora's background services work the same way).
//!
//! Also here: the reconnect [`backoff`] every client uses, and
//! [`LinkState`], how a connection reports whether it is up.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::watch;
use tokio::task::JoinSet;
pub use tokio_util::sync::CancellationToken as Shutdown;

use crate::error::{Error, Result};

/// A long-running task.
pub trait Service: Send + 'static {
    /// Its name, for logs.
    fn name(&self) -> &'static str;

    /// Runs until `shutdown` is cancelled (then drains and returns `Ok`) or
    /// until it fails for good.
    fn run(self: Box<Self>, shutdown: Shutdown)
    -> Pin<Box<dyn Future<Output = Result<()>> + Send>>;
}

/// A set of services run together.
pub struct Services {
    shutdown: Shutdown,
    tasks: JoinSet<(&'static str, Result<()>)>,
}

impl fmt::Debug for Services {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Services")
            .field("running", &self.tasks.len())
            .field("shutting_down", &self.shutdown.is_cancelled())
            .finish()
    }
}

impl Services {
    /// An empty set whose services stop when `shutdown` is cancelled.
    pub fn new(shutdown: Shutdown) -> Self {
        Self {
            shutdown,
            tasks: JoinSet::new(),
        }
    }

    /// Starts `service` now.
    pub fn spawn(&mut self, service: Box<dyn Service>) {
        let name = service.name();
        let fut = service.run(self.shutdown.child_token());
        self.tasks.spawn(async move { (name, fut.await) });
    }

    /// Starts a plain future as a service named `name`.
    pub fn spawn_fn<F, Fut>(&mut self, name: &'static str, f: F)
    where
        F: FnOnce(Shutdown) -> Fut,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let fut = f(self.shutdown.child_token());
        self.tasks.spawn(async move { (name, fut.await) });
    }

    /// Runs until the shutdown signal or the first service failure, then
    /// signals every service and waits up to `drain` for them. Returns the
    /// first failure, if any.
    pub async fn run(mut self, drain: Duration) -> Result<()> {
        let mut first_error = None;
        tokio::select! {
            () = self.shutdown.cancelled() => {}
            Some(joined) = self.tasks.join_next() => {
                first_error = Self::outcome(joined);
                if first_error.is_none() {
                    // A service that ends by itself before shutdown is
                    // finished work, not a failure; keep the others running.
                    return Box::pin(self.run(drain)).await;
                }
            }
        }
        self.shutdown.cancel();
        let deadline = tokio::time::sleep(drain);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => {
                    tracing::warn!(left = self.tasks.len(), "services did not drain in time; aborting them");
                    self.tasks.abort_all();
                    break;
                }
                joined = self.tasks.join_next() => match joined {
                    None => break,
                    Some(j) => {
                        let e = Self::outcome(j);
                        if first_error.is_none() {
                            first_error = e;
                        }
                    }
                },
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn outcome(
        joined: Result<(&'static str, Result<()>), tokio::task::JoinError>,
    ) -> Option<Error> {
        match joined {
            Ok((name, Ok(()))) => {
                tracing::debug!(service = name, "service stopped");
                None
            }
            Ok((name, Err(e))) => {
                tracing::error!(service = name, error = %e, "service failed");
                Some(e.context(name))
            }
            Err(e) => {
                tracing::error!(error = %e, "service panicked");
                Some(Error::internal(format!("a service panicked: {e}")))
            }
        }
    }
}

/// Reconnect delays: exponential from `min` to `max` with full jitter,
/// forever. Start a new iterator after a connection succeeded.
pub fn backoff(min: Duration, max: Duration) -> impl Iterator<Item = Duration> + Send {
    ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Whether a connection to a peer is up, as its client reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// Not connected, trying (or about to).
    Connecting,
    /// Connected and logged in to the named server.
    Up {
        /// The server's name from configuration.
        server: String,
    },
    /// Lost; the next attempt is scheduled.
    Down {
        /// Why it went down, for status pages.
        reason: String,
    },
}

impl LinkState {
    /// Whether the link is usable now.
    pub fn is_up(&self) -> bool {
        matches!(self, Self::Up { .. })
    }
}

/// The sending half a client keeps, and the receiving half it hands out.
pub fn link_state() -> (watch::Sender<LinkState>, watch::Receiver<LinkState>) {
    watch::channel(LinkState::Connecting)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{ErrorKind, Party};

    #[test]
    fn backoff_grows_to_its_cap_and_never_ends() {
        let delays: Vec<Duration> = backoff(Duration::from_millis(100), Duration::from_secs(5))
            .take(50)
            .collect();
        assert_eq!(delays.len(), 50);
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(10)));
        assert!(delays[40..].iter().any(|d| *d >= Duration::from_secs(2)));
    }

    #[tokio::test]
    async fn a_failing_service_stops_the_others() {
        let shutdown = Shutdown::new();
        let mut set = Services::new(shutdown.clone());
        set.spawn_fn("waits", |s| async move {
            s.cancelled().await;
            Ok(())
        });
        set.spawn_fn("fails", |_| async {
            Err(Error::new(ErrorKind::Unavailable, Party::Asterisk, "gone"))
        });
        let e = set.run(Duration::from_secs(2)).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e.message().starts_with("fails: "));
        assert!(shutdown.is_cancelled());
    }

    #[tokio::test]
    async fn shutdown_drains_and_aborts_the_stuck() {
        let shutdown = Shutdown::new();
        let mut set = Services::new(shutdown.clone());
        set.spawn_fn("stuck", |_| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        });
        set.spawn_fn("finished", |_| async { Ok(()) });
        let s2 = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            s2.cancel();
        });
        set.run(Duration::from_millis(50)).await.unwrap();
    }
}
