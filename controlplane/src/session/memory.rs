//! The in-memory session store: the default on one host.
//!
//! A map per tenant behind one mutex (never held across an await) and a
//! tokio broadcast channel for events. Sessions are lost when the process
//! ends; a restarted control plane on this backend reconciles from the
//! dataplane and ARI alone. Times come from the callers (`touch`, `reap`,
//! and the sessions' own timestamps): no clock is read here.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use mediagw_shared::ids::{SessionId, TenantId};
use tokio::sync::broadcast;

use super::model::{Session, SessionEvent, SessionState, UnixMs};
use super::{
    ABANDONED, EventStream, SessionConfig, SessionStore, exists, not_found, not_live,
    sort_sessions, stale,
};
use crate::error::Result;

/// Sessions in this process. Cheap to clone; clones share the sessions.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    host: String,
    abandon_after: Duration,
    retain_ended: Duration,
    events: broadcast::Sender<SessionEvent>,
    tenants: Mutex<BTreeMap<TenantId, BTreeMap<SessionId, Entry>>>,
}

#[derive(Debug)]
struct Entry {
    session: Session,
    /// When the call was last known alive (touch, create, update).
    touched: UnixMs,
}

impl MemoryStore {
    /// An empty store with `config`'s host, expiry times and event buffer.
    pub fn new(config: &SessionConfig) -> Result<Self> {
        config.validate()?;
        let (events, _) = broadcast::channel(config.event_buffer);
        Ok(Self {
            inner: Arc::new(Inner {
                host: config.host.clone(),
                abandon_after: config.abandon_after(),
                retain_ended: config.retain_ended(),
                events,
                tenants: Mutex::new(BTreeMap::new()),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<TenantId, BTreeMap<SessionId, Entry>>> {
        // No code panics while holding the lock (plain map operations), so
        // a poisoned lock still holds consistent data.
        self.inner
            .tenants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl SessionStore for MemoryStore {
    fn host(&self) -> &str {
        &self.inner.host
    }

    async fn create(&self, session: &Session) -> Result<u64> {
        session.to_checked_json()?;
        let mut tenants = self.lock();
        let sessions = tenants.entry(session.tenant.clone()).or_default();
        if sessions.contains_key(&session.id) {
            return Err(exists(&session.tenant, &session.id));
        }
        let mut stored = session.clone();
        stored.revision = 1;
        let touched = stored.updated_at_ms;
        sessions.insert(
            stored.id.clone(),
            Entry {
                session: stored,
                touched,
            },
        );
        Ok(1)
    }

    async fn get(&self, tenant: &TenantId, id: &SessionId) -> Result<Option<Session>> {
        Ok(self
            .lock()
            .get(tenant)
            .and_then(|s| s.get(id))
            .map(|e| e.session.clone()))
    }

    async fn update(&self, session: &Session) -> Result<u64> {
        session.to_checked_json()?;
        let mut tenants = self.lock();
        let entry = tenants
            .get_mut(&session.tenant)
            .and_then(|s| s.get_mut(&session.id))
            .ok_or_else(|| not_found(&session.tenant, &session.id))?;
        if entry.session.revision != session.revision {
            return Err(stale(session, entry.session.revision));
        }
        let revision = session.revision + 1;
        entry.session = session.clone();
        entry.session.revision = revision;
        entry.touched = entry.touched.max(session.updated_at_ms);
        Ok(revision)
    }

    async fn list(&self, tenant: Option<&TenantId>) -> Result<Vec<Session>> {
        let tenants = self.lock();
        let mut out: Vec<Session> = match tenant {
            Some(t) => tenants
                .get(t)
                .into_iter()
                .flat_map(|s| s.values())
                .map(|e| e.session.clone())
                .collect(),
            None => tenants
                .values()
                .flat_map(|s| s.values())
                .map(|e| e.session.clone())
                .collect(),
        };
        drop(tenants);
        sort_sessions(&mut out);
        Ok(out)
    }

    async fn list_host(&self, host: &str) -> Result<Vec<Session>> {
        let tenants = self.lock();
        let mut out: Vec<Session> = tenants
            .values()
            .flat_map(|s| s.values())
            .filter(|e| e.session.is_live() && e.session.host == host)
            .map(|e| e.session.clone())
            .collect();
        drop(tenants);
        sort_sessions(&mut out);
        Ok(out)
    }

    async fn delete(&self, tenant: &TenantId, id: &SessionId) -> Result<bool> {
        let mut tenants = self.lock();
        let Some(sessions) = tenants.get_mut(tenant) else {
            return Ok(false);
        };
        let removed = sessions.remove(id).is_some();
        if sessions.is_empty() {
            tenants.remove(tenant);
        }
        Ok(removed)
    }

    async fn touch(&self, tenant: &TenantId, id: &SessionId, now: UnixMs) -> Result<()> {
        let mut tenants = self.lock();
        let entry = tenants
            .get_mut(tenant)
            .and_then(|s| s.get_mut(id))
            .ok_or_else(|| not_found(tenant, id))?;
        if !entry.session.is_live() {
            return Err(not_live(tenant, id));
        }
        entry.touched = entry.touched.max(now);
        Ok(())
    }

    async fn reap(&self, now: UnixMs) -> Result<Vec<Session>> {
        let mut reaped = Vec::new();
        let mut tenants = self.lock();
        for sessions in tenants.values_mut() {
            sessions.retain(|_, entry| {
                let s = &mut entry.session;
                if s.is_live() {
                    if now.saturating_since(entry.touched) >= self.inner.abandon_after
                        && s.finish(SessionState::Failed, ABANDONED, now).is_ok()
                    {
                        s.revision += 1;
                        reaped.push(s.clone());
                    }
                    return true;
                }
                let ended = s.ended_at_ms().unwrap_or(s.updated_at_ms);
                ended.saturating_add(self.inner.retain_ended) > now
            });
        }
        tenants.retain(|_, sessions| !sessions.is_empty());
        drop(tenants);
        sort_sessions(&mut reaped);
        Ok(reaped)
    }

    async fn publish(&self, event: &SessionEvent) -> Result<()> {
        // No subscriber is not an error: events are for whoever listens.
        let _ = self.inner.events.send(event.clone());
        Ok(())
    }

    fn subscribe(&self, tenant: Option<&TenantId>) -> EventStream {
        EventStream::new(self.inner.events.subscribe(), tenant)
    }

    async fn health(&self) -> Result<()> {
        Ok(())
    }
}
