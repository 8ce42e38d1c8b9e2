//! The reaper: a service that calls [`SessionStore::reap`] at start and then
//! periodically, and publishes an `ended` event (reason `"abandoned"`) for
//! every session it failed.
//!
//! This is a driver: it reads the wall clock, once per round, and hands it
//! to the store. A round that fails (Redis down) is logged and the next
//! round tries again; the service only stops on shutdown.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use tokio::time::MissedTickBehavior;

use super::model::{Session, SessionEvent, SessionEventKind, UnixMs};
use super::{ABANDONED, SessionStore, Store};
use crate::error::Result;
use crate::service::{Service, Shutdown};

/// Reaps abandoned and expired sessions every `interval`.
#[derive(Debug, Clone)]
pub struct Reaper<S = Store> {
    store: S,
    interval: Duration,
}

impl<S: SessionStore> Reaper<S> {
    /// A reaper of `store` running every `interval`
    /// ([`SessionConfig::reap_interval`](super::SessionConfig::reap_interval)).
    pub fn new(store: S, interval: Duration) -> Self {
        Self { store, interval }
    }

    /// One round at `now`: reaps, publishes an `ended` event per abandoned
    /// session, returns them. A failed publish is logged, not returned:
    /// the sessions are failed in the store either way.
    pub async fn reap_once(&self, now: UnixMs) -> Result<Vec<Session>> {
        let reaped = self.store.reap(now).await?;
        for s in &reaped {
            tracing::info!(tenant = %s.tenant, session = %s.id, host = %s.host, "session abandoned");
            let kind = SessionEventKind::Ended {
                state: s.state(),
                reason: Some(s.end_reason.clone().unwrap_or_else(|| ABANDONED.to_owned())),
            };
            let event = SessionEvent::new(s, kind, self.store.host(), now);
            if let Err(e) = self.store.publish(&event).await {
                tracing::warn!(tenant = %s.tenant, session = %s.id, error = %e, "cannot publish an abandoned session's event");
            }
        }
        Ok(reaped)
    }
}

impl<S: SessionStore> Service for Reaper<S> {
    fn name(&self) -> &'static str {
        "session-reaper"
    }

    fn run(
        self: Box<Self>,
        shutdown: Shutdown,
    ) -> Pin<Box<dyn Future<Output = Result<()>> + Send>> {
        Box::pin(async move {
            let mut tick = tokio::time::interval(self.interval);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    _ = tick.tick() => {}
                }
                // The driver reads the wall clock; the store only compares
                // the times it is given.
                #[allow(clippy::disallowed_methods)]
                let now = UnixMs::from(SystemTime::now());
                match self.reap_once(now).await {
                    Ok(reaped) if !reaped.is_empty() => {
                        tracing::info!(count = reaped.len(), "reaped abandoned sessions");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "session reaping failed; retrying next round")
                    }
                }
            }
        })
    }
}
