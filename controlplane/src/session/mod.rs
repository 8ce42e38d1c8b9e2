//! Sessions: one store interface, two backends.
//!
//! A [`Session`] is one call as the control plane follows it: its tenant,
//! which control plane (host) owns it, its lifecycle state with the time of
//! every change, the Asterisk and dataplane objects it uses, metadata, and
//! the final RTP statistics once it ended. The state machine and the
//! metadata limits are sans-IO ([`model`]): times are passed in.
//!
//! [`SessionStore`] is the one interface; [`MemoryStore`] (one host, the
//! default) and [`RedisStore`] (many hosts sharing one Redis) implement it,
//! and [`Store`] picks one at run time from [`SessionConfig`]. Both keep the
//! same promises, checked by one test suite run against each:
//!
//! - tenant isolation: a session is named by tenant *and* id; the same id
//!   in two tenants is two sessions, and a listing or an event stream for
//!   one tenant never shows another's;
//! - optimistic concurrency: an update carries the revision it was read at
//!   and is refused with [`ErrorKind::Conflict`](crate::error::ErrorKind)
//!   when someone wrote since;
//! - liveness: [`touch`](SessionStore::touch) says a call is still there;
//!   [`reap`](SessionStore::reap) fails sessions nobody touched for
//!   `abandon_after` (reason `"abandoned"`) and forgets ended sessions
//!   `retain_ended` after they ended;
//! - recovery: [`list_host`](SessionStore::list_host) gives the live
//!   sessions one control plane owns, so it can reconcile them after a
//!   restart ([`recovery`]);
//! - events per tenant: [`publish`](SessionStore::publish) and
//!   [`subscribe`](SessionStore::subscribe); in process for memory, also
//!   across hosts through Redis pub/sub.
//!
//! The [`Reaper`] service runs `reap` periodically and publishes the
//! resulting `ended` events.
//!
//! Left out: deciding *when* sessions change (the call flow does that),
//! persistence of the in-memory backend across restarts (use Redis), and
//! Redis Cluster (the scripts touch keys of several tenants; use one Redis
//! primary, optionally behind Sentinel with a stable address). See
//! `docs/sessions.md`.

use std::fmt;
use std::future::Future;

use mediagw_shared::ids::{SessionId, TenantId};
use tokio::sync::broadcast;

use crate::error::{Error, ErrorKind, Party, Result};

pub mod config;
pub mod memory;
pub mod model;
pub mod reaper;
pub mod recovery;
pub mod redis;

pub use config::{BackendKind, SessionConfig};
pub use memory::MemoryStore;
pub use model::{
    Direction, Session, SessionEvent, SessionEventKind, SessionState, StateChange, UnixMs,
};
pub use reaper::Reaper;
pub use redis::RedisStore;

/// The reason the reaper gives sessions it fails.
pub const ABANDONED: &str = "abandoned";

/// Where sessions live. Every method names the tenant (or takes it from the
/// session), so nothing crosses tenants by accident.
///
/// Errors: [`ErrorKind::NotFound`] for a session that is not there,
/// [`ErrorKind::Conflict`] for a create of an existing one, an update at a
/// stale revision or a touch of an ended one, [`ErrorKind::Invalid`] for a
/// session that breaks the [`model::limits`], and for the Redis backend
/// [`ErrorKind::Unavailable`] / [`ErrorKind::Timeout`] (retryable, party
/// [`Party::SessionStore`]) while Redis cannot be reached.
pub trait SessionStore: Clone + Send + Sync + 'static {
    /// The host name this store writes into events it publishes by itself
    /// (the reaper's) and that [`SessionConfig::host`] gave.
    fn host(&self) -> &str;

    /// Stores a new session at revision 1 (whatever revision it carries)
    /// and returns 1. [`ErrorKind::Conflict`] if the tenant already has a
    /// session with that id.
    fn create(&self, session: &Session) -> impl Future<Output = Result<u64>> + Send;

    /// The session `id` of `tenant`, if stored.
    fn get(
        &self,
        tenant: &TenantId,
        id: &SessionId,
    ) -> impl Future<Output = Result<Option<Session>>> + Send;

    /// Replaces the stored session if it is still at `session.revision`;
    /// returns the new revision (one more). [`ErrorKind::Conflict`] when
    /// someone wrote since, [`ErrorKind::NotFound`] when it is gone.
    fn update(&self, session: &Session) -> impl Future<Output = Result<u64>> + Send;

    /// Every stored session (live and recently ended) of `tenant`, or of
    /// every tenant for `None`, ordered by tenant, creation time, id.
    fn list(&self, tenant: Option<&TenantId>) -> impl Future<Output = Result<Vec<Session>>> + Send;

    /// The live sessions `host` owns, across tenants, in the same order.
    fn list_host(&self, host: &str) -> impl Future<Output = Result<Vec<Session>>> + Send;

    /// Removes a session; whether it was there.
    fn delete(
        &self,
        tenant: &TenantId,
        id: &SessionId,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Says the live session is still there at `now` (postpones its
    /// abandonment). Does not change its revision. [`ErrorKind::NotFound`]
    /// if it is not stored, [`ErrorKind::Conflict`] if it ended.
    fn touch(
        &self,
        tenant: &TenantId,
        id: &SessionId,
        now: UnixMs,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Fails every live session not touched (nor created or updated) for
    /// `abandon_after` before `now`, with reason [`ABANDONED`], and returns
    /// them as stored; forgets ended sessions `retain_ended` after they
    /// ended. Publishes nothing (the [`Reaper`] does).
    fn reap(&self, now: UnixMs) -> impl Future<Output = Result<Vec<Session>>> + Send;

    /// Sends `event` to the subscribers of its tenant (and to those of all
    /// tenants): in this process, and for Redis on every host.
    fn publish(&self, event: &SessionEvent) -> impl Future<Output = Result<()>> + Send;

    /// Events of `tenant` from now on, or of every tenant for `None`.
    fn subscribe(&self, tenant: Option<&TenantId>) -> EventStream;

    /// Whether the store answers (Redis: `PING`).
    fn health(&self) -> impl Future<Output = Result<()>> + Send;
}

/// The store the daemon runs with, chosen by configuration.
#[derive(Debug, Clone)]
pub enum Store {
    /// In this process.
    Memory(MemoryStore),
    /// In Redis.
    Redis(RedisStore),
}

impl Store {
    /// The store `config` asks for. The Redis store connects lazily, so
    /// this succeeds while Redis is down (operations then fail as
    /// unavailable until it is back; see [`SessionStore::health`]). Needs a
    /// tokio runtime for Redis (it starts the pub/sub subscriber).
    pub fn from_config(config: &SessionConfig) -> Result<Self> {
        Ok(match config.backend {
            BackendKind::Memory => Self::Memory(MemoryStore::new(config)?),
            BackendKind::Redis => Self::Redis(RedisStore::new(config)?),
        })
    }

    /// Which backend this is.
    pub fn kind(&self) -> BackendKind {
        match self {
            Self::Memory(_) => BackendKind::Memory,
            Self::Redis(_) => BackendKind::Redis,
        }
    }
}

/// Forwards one trait method to the backend.
macro_rules! delegate {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Store::Memory($s) => $call,
            Store::Redis($s) => $call,
        }
    };
}

impl SessionStore for Store {
    fn host(&self) -> &str {
        delegate!(self, s => s.host())
    }

    async fn create(&self, session: &Session) -> Result<u64> {
        delegate!(self, s => s.create(session).await)
    }

    async fn get(&self, tenant: &TenantId, id: &SessionId) -> Result<Option<Session>> {
        delegate!(self, s => s.get(tenant, id).await)
    }

    async fn update(&self, session: &Session) -> Result<u64> {
        delegate!(self, s => s.update(session).await)
    }

    async fn list(&self, tenant: Option<&TenantId>) -> Result<Vec<Session>> {
        delegate!(self, s => s.list(tenant).await)
    }

    async fn list_host(&self, host: &str) -> Result<Vec<Session>> {
        delegate!(self, s => s.list_host(host).await)
    }

    async fn delete(&self, tenant: &TenantId, id: &SessionId) -> Result<bool> {
        delegate!(self, s => s.delete(tenant, id).await)
    }

    async fn touch(&self, tenant: &TenantId, id: &SessionId, now: UnixMs) -> Result<()> {
        delegate!(self, s => s.touch(tenant, id, now).await)
    }

    async fn reap(&self, now: UnixMs) -> Result<Vec<Session>> {
        delegate!(self, s => s.reap(now).await)
    }

    async fn publish(&self, event: &SessionEvent) -> Result<()> {
        delegate!(self, s => s.publish(event).await)
    }

    fn subscribe(&self, tenant: Option<&TenantId>) -> EventStream {
        delegate!(self, s => s.subscribe(tenant))
    }

    async fn health(&self) -> Result<()> {
        delegate!(self, s => s.health().await)
    }
}

/// A subscriber's events: those of one tenant, or of all.
///
/// Each subscriber has a bounded buffer ([`SessionConfig::event_buffer`]);
/// one that falls behind misses the oldest events and is told how many
/// with [`EventStreamError::Lagged`] (counted over all tenants' events,
/// so at most that many of its own), then goes on.
#[derive(Debug)]
pub struct EventStream {
    rx: broadcast::Receiver<SessionEvent>,
    tenant: Option<TenantId>,
}

/// Why [`EventStream::recv`] returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStreamError {
    /// The subscriber fell behind and this many events were dropped for
    /// it; the next call returns the oldest kept.
    Lagged {
        /// How many were dropped (all tenants counted).
        missed: u64,
    },
    /// The store is gone; no more events will come.
    Closed,
}

impl fmt::Display for EventStreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Lagged { missed } => write!(f, "subscriber fell behind; {missed} events dropped"),
            Self::Closed => f.write_str("session store closed"),
        }
    }
}

impl std::error::Error for EventStreamError {}

impl EventStream {
    pub(crate) fn new(rx: broadcast::Receiver<SessionEvent>, tenant: Option<&TenantId>) -> Self {
        Self {
            rx,
            tenant: tenant.cloned(),
        }
    }

    /// The tenant this stream is for (`None`: all).
    pub fn tenant(&self) -> Option<&TenantId> {
        self.tenant.as_ref()
    }

    /// The next event of the stream's tenant.
    pub async fn recv(&mut self) -> Result<SessionEvent, EventStreamError> {
        loop {
            match self.rx.recv().await {
                Ok(e) if self.wants(&e) => return Ok(e),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    return Err(EventStreamError::Lagged { missed });
                }
                Err(broadcast::error::RecvError::Closed) => return Err(EventStreamError::Closed),
            }
        }
    }

    /// The next event already received, without waiting.
    pub fn try_recv(&mut self) -> Result<Option<SessionEvent>, EventStreamError> {
        loop {
            match self.rx.try_recv() {
                Ok(e) if self.wants(&e) => return Ok(Some(e)),
                Ok(_) => {}
                Err(broadcast::error::TryRecvError::Empty) => return Ok(None),
                Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                    return Err(EventStreamError::Lagged { missed });
                }
                Err(broadcast::error::TryRecvError::Closed) => {
                    return Err(EventStreamError::Closed);
                }
            }
        }
    }

    fn wants(&self, event: &SessionEvent) -> bool {
        self.tenant.as_ref().is_none_or(|t| *t == event.tenant)
    }
}

/// `NotFound` for a session of a tenant.
pub(crate) fn not_found(tenant: &TenantId, id: &SessionId) -> Error {
    Error::new(
        ErrorKind::NotFound,
        Party::Client,
        format!("session {tenant}/{id} not found"),
    )
}

/// `Conflict` for a create of an existing session.
pub(crate) fn exists(tenant: &TenantId, id: &SessionId) -> Error {
    Error::new(
        ErrorKind::Conflict,
        Party::Client,
        format!("session {tenant}/{id} already exists"),
    )
}

/// `Conflict` for an update at a stale revision.
pub(crate) fn stale(session: &Session, stored: u64) -> Error {
    Error::new(
        ErrorKind::Conflict,
        Party::Client,
        format!(
            "session {}/{} changed since revision {} (stored revision {stored})",
            session.tenant, session.id, session.revision
        ),
    )
}

/// `Conflict` for a touch of an ended session.
pub(crate) fn not_live(tenant: &TenantId, id: &SessionId) -> Error {
    Error::new(
        ErrorKind::Conflict,
        Party::Client,
        format!("session {tenant}/{id} has ended"),
    )
}

/// Sorts sessions the way `list` promises: tenant, creation time, id.
pub(crate) fn sort_sessions(sessions: &mut [Session]) {
    sessions.sort_by(|a, b| {
        (&a.tenant, a.created_at_ms, &a.id).cmp(&(&b.tenant, b.created_at_ms, &b.id))
    });
}
