//! The Redis session store: production, many hosts sharing one Redis.
//!
//! Keys (every session key carries its tenant; `{p}` is the configured
//! prefix, members of cross-tenant indexes are `tenant:id`, unambiguous
//! because tenant ids have no `:`):
//!
//! ```text
//!   {p}:t:{tenant}:s:{id}   hash  json, rev, host, live   the session
//!   {p}:t:{tenant}:index    zset  id -> +inf (live) or    the tenant's sessions
//!                                 ended_at + retain_ended
//!   {p}:tenants             set   tenant                  tenants with sessions
//!   {p}:live                zset  tenant:id -> last touch live sessions, for reap
//!   {p}:host:{host}:live    set   tenant:id               what one host owns
//!   {p}:events:{tenant}     pub/sub channel               the tenant's events
//! ```
//!
//! Every write is one Lua script, so a session and its index entries change
//! together, and `update` checks the revision atomically (optimistic
//! concurrency). An ended session's hash expires `retain_ended` after it
//! ended (`PEXPIREAT`); `reap` tidies the indexes.
//!
//! Commands go through a [`ConnectionManager`], which reconnects by itself:
//! while Redis is down they fail fast as [`ErrorKind::Unavailable`]
//! (retryable, party [`Party::SessionStore`]) and work again once it is
//! back. A separate subscriber task holds one pub/sub connection
//! (`PSUBSCRIBE {p}:events:*`), reconnects with backoff, pings it to find
//! dead links, and reports its state as a [`LinkState`]. Published events
//! reach this process's subscribers directly and other hosts through
//! Redis; each message carries the publishing store's origin so it is not
//! delivered twice here. Malformed messages are counted, logged and
//! dropped.
//!
//! Left out: Redis Cluster (the scripts touch keys of several tenants),
//! TLS to Redis (no `rediss://`), and delivery of events published while
//! the subscriber is reconnecting (pub/sub keeps nothing).

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use futures_util::StreamExt;
use mediagw_shared::ids::{SessionId, TenantId};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError, Script};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::model::{Session, SessionEvent, SessionState, UnixMs};
use super::{
    ABANDONED, EventStream, SessionConfig, SessionStore, exists, not_found, not_live,
    sort_sessions, stale,
};
use crate::error::{Error, ErrorKind, Party, Result};
use crate::service::{LinkState, backoff};

/// How often the subscriber pings its pub/sub connection to find a dead
/// link that TCP has not reported.
const SUBSCRIBER_PING: Duration = Duration::from_secs(5);

/// Sessions in Redis. Cheap to clone; clones share one connection and one
/// subscriber, which stops when the last clone is dropped.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    host: String,
    keys: Keys,
    abandon_after: Duration,
    retain_ended: Duration,
    timeout: Duration,
    conn: ConnectionManager,
    server: String,
    origin: String,
    events: broadcast::Sender<SessionEvent>,
    subscriber: watch::Receiver<LinkState>,
    malformed: Arc<AtomicU64>,
    _stop: DropGuard,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("server", &self.inner.server)
            .field("prefix", &self.inner.keys.prefix)
            .field("host", &self.inner.host)
            .field("subscriber", &*self.inner.subscriber.borrow())
            .finish()
    }
}

/// What a published message carries: the event and who published it.
#[derive(Serialize, Deserialize)]
struct Envelope {
    origin: String,
    event: SessionEvent,
}

impl RedisStore {
    /// A store on the Redis `config` names. Connects lazily: this succeeds
    /// while Redis is down. Starts the pub/sub subscriber, so it must be
    /// called inside a tokio runtime ([`ErrorKind::Internal`] otherwise).
    pub fn new(config: &SessionConfig) -> Result<Self> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            Error::internal("the Redis session store needs a tokio runtime").with_cause(e)
        })?;
        let client = client(config)?;
        let server = client.get_connection_info().addr().to_string();
        let timeout = config.redis_timeout();
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(timeout);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
            .map_err(|e| redis_error(e, format!("redis {server}")))?;
        let keys = Keys {
            prefix: config.key_prefix.clone(),
        };
        let (events, _) = broadcast::channel(config.event_buffer);
        let (state_tx, state_rx) = watch::channel(LinkState::Connecting);
        let malformed = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let origin = origin(&config.host);
        let subscriber = Subscriber {
            client,
            server: server.clone(),
            keys: keys.clone(),
            origin: origin.clone(),
            timeout,
            events: events.clone(),
            state: state_tx,
            malformed: malformed.clone(),
        };
        runtime.spawn(subscriber.run(stop.clone()));
        Ok(Self {
            inner: Arc::new(Inner {
                host: config.host.clone(),
                keys,
                abandon_after: config.abandon_after(),
                retain_ended: config.retain_ended(),
                timeout,
                conn,
                server,
                origin,
                events,
                subscriber: state_rx,
                malformed,
                _stop: stop.drop_guard(),
            }),
        })
    }

    /// The pub/sub subscriber's link: `Up` once it is subscribed (events
    /// from other hosts arrive), `Down` while it reconnects.
    pub fn subscriber_state(&self) -> watch::Receiver<LinkState> {
        self.inner.subscriber.clone()
    }

    /// How many pub/sub messages were dropped as malformed (not an event
    /// envelope, or on another tenant's channel than the event names).
    pub fn malformed_events(&self) -> u64 {
        self.inner.malformed.load(Ordering::Relaxed)
    }

    /// The key prefix.
    pub fn key_prefix(&self) -> &str {
        &self.inner.keys.prefix
    }

    /// The Redis address (no credentials), for logs and status.
    pub fn server(&self) -> &str {
        &self.inner.server
    }

    fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    fn fail(&self, e: RedisError, what: impl fmt::Display) -> Error {
        redis_error(e, format!("redis {}: {what}", self.inner.server))
    }

    /// Runs the update script; `max_touched` refuses the write when the
    /// session was touched after it (the reaper's guard).
    async fn write_update(
        &self,
        session: &Session,
        json: &[u8],
        max_touched: Option<UnixMs>,
    ) -> Result<Result<u64, UpdateRefused>> {
        let k = &self.inner.keys;
        let (t, id) = (&session.tenant, &session.id);
        let new_rev = session.revision + 1;
        let live = session.is_live();
        let (score, expire) = self.index_score(session);
        let (status, value): (i64, i64) = UPDATE
            .key(k.session(t, id))
            .key(k.index(t))
            .key(k.tenants())
            .key(k.live())
            .key(k.host_live(&session.host))
            .arg(json)
            .arg(&session.host)
            .arg(if live { "1" } else { "0" })
            .arg(session.updated_at_ms.0)
            .arg(member(t, id))
            .arg(t.as_str())
            .arg(id.as_str())
            .arg(score)
            .arg(expire)
            .arg(session.revision)
            .arg(new_rev)
            .arg(&k.prefix)
            .arg(max_touched.map(|m| m.0.to_string()).unwrap_or_default())
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| self.fail(e, format!("update session {t}/{id}")))?;
        Ok(match status {
            0 => Ok(u64::try_from(value).unwrap_or(new_rev)),
            1 => Err(UpdateRefused::Gone),
            2 => Err(UpdateRefused::Stale(u64::try_from(value).unwrap_or(0))),
            3 => Err(UpdateRefused::Touched),
            other => {
                return Err(protocol(format!(
                    "update session {t}/{id}: script answered {other}"
                )));
            }
        })
    }

    /// The index score and expiry of a session: `+inf` and none while
    /// live; `ended_at + retain_ended` for both once ended.
    fn index_score(&self, session: &Session) -> (String, u64) {
        match session.ended_at_ms() {
            None if session.is_live() => ("+inf".to_owned(), 0),
            ended => {
                let at = ended
                    .unwrap_or(session.updated_at_ms)
                    .saturating_add(self.inner.retain_ended);
                (at.0.to_string(), at.0.max(1))
            }
        }
    }

    /// Reads sessions by key, skipping those gone and logging corrupt ones.
    async fn read_many(&self, keys: &[(TenantId, SessionId)]) -> Result<Vec<Session>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(256) {
            let mut pipe = redis::pipe();
            for (t, id) in chunk {
                pipe.cmd("HGET")
                    .arg(self.inner.keys.session(t, id))
                    .arg("json");
            }
            let values: Vec<Option<Vec<u8>>> = pipe
                .query_async(&mut self.conn())
                .await
                .map_err(|e| self.fail(e, "read sessions"))?;
            for ((t, id), v) in chunk.iter().zip(values) {
                let Some(bytes) = v else { continue };
                match parse_session(t, id, &bytes) {
                    Ok(s) => out.push(s),
                    Err(e) => tracing::warn!(error = %e, "skipping a corrupt session in Redis"),
                }
            }
        }
        Ok(out)
    }

    async fn tenant_ids(&self, tenant: &TenantId) -> Result<Vec<(TenantId, SessionId)>> {
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.inner.keys.index(tenant))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.fail(e, format!("list tenant {tenant}")))?;
        Ok(ids
            .into_iter()
            .filter_map(|id| match id.parse() {
                Ok(id) => Some((tenant.clone(), id)),
                Err(e) => {
                    tracing::warn!(tenant = %tenant, id, error = %e, "bad session id in the index");
                    None
                }
            })
            .collect())
    }

    async fn tenants(&self) -> Result<Vec<TenantId>> {
        let names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.inner.keys.tenants())
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.fail(e, "list tenants"))?;
        Ok(names.into_iter().filter_map(|n| n.parse().ok()).collect())
    }

    async fn forget_live(&self, m: &str) -> Result<()> {
        let _: i64 = redis::cmd("ZREM")
            .arg(self.inner.keys.live())
            .arg(m)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.fail(e, "tidy the live index"))?;
        Ok(())
    }
}

/// Why the update script did not write.
enum UpdateRefused {
    /// The session is not stored.
    Gone,
    /// Stored at this other revision.
    Stale(u64),
    /// Touched after the reaper's cut-off.
    Touched,
}

impl SessionStore for RedisStore {
    fn host(&self) -> &str {
        &self.inner.host
    }

    async fn create(&self, session: &Session) -> Result<u64> {
        let mut stored = session.clone();
        stored.revision = 1;
        let json = stored.to_checked_json()?;
        let k = &self.inner.keys;
        let (t, id) = (&session.tenant, &session.id);
        let (score, expire) = self.index_score(&stored);
        let created: i64 = CREATE
            .key(k.session(t, id))
            .key(k.index(t))
            .key(k.tenants())
            .key(k.live())
            .key(k.host_live(&session.host))
            .arg(json)
            .arg(&session.host)
            .arg(if session.is_live() { "1" } else { "0" })
            .arg(session.updated_at_ms.0)
            .arg(member(t, id))
            .arg(t.as_str())
            .arg(id.as_str())
            .arg(score)
            .arg(expire)
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| self.fail(e, format!("create session {t}/{id}")))?;
        if created == 1 {
            Ok(1)
        } else {
            Err(exists(t, id))
        }
    }

    async fn get(&self, tenant: &TenantId, id: &SessionId) -> Result<Option<Session>> {
        let json: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(self.inner.keys.session(tenant, id))
            .arg("json")
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.fail(e, format!("get session {tenant}/{id}")))?;
        json.map(|bytes| parse_session(tenant, id, &bytes))
            .transpose()
    }

    async fn update(&self, session: &Session) -> Result<u64> {
        let mut next = session.clone();
        next.revision = session.revision + 1;
        let json = next.to_checked_json()?;
        match self.write_update(session, &json, None).await? {
            Ok(rev) => Ok(rev),
            Err(UpdateRefused::Gone) => Err(not_found(&session.tenant, &session.id)),
            Err(UpdateRefused::Stale(stored)) => Err(stale(session, stored)),
            Err(UpdateRefused::Touched) => Err(stale(session, session.revision)),
        }
    }

    async fn list(&self, tenant: Option<&TenantId>) -> Result<Vec<Session>> {
        let tenants = match tenant {
            Some(t) => vec![t.clone()],
            None => self.tenants().await?,
        };
        let mut keys = Vec::new();
        for t in &tenants {
            keys.extend(self.tenant_ids(t).await?);
        }
        let mut out = self.read_many(&keys).await?;
        sort_sessions(&mut out);
        Ok(out)
    }

    async fn list_host(&self, host: &str) -> Result<Vec<Session>> {
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.inner.keys.host_live(host))
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.fail(e, format!("list host {host}")))?;
        let keys: Vec<(TenantId, SessionId)> =
            members.iter().filter_map(|m| parse_member(m)).collect();
        let mut out = self.read_many(&keys).await?;
        out.retain(|s| s.is_live() && s.host == host);
        sort_sessions(&mut out);
        Ok(out)
    }

    async fn delete(&self, tenant: &TenantId, id: &SessionId) -> Result<bool> {
        let k = &self.inner.keys;
        let n: i64 = DELETE
            .key(k.session(tenant, id))
            .key(k.index(tenant))
            .key(k.live())
            .arg(member(tenant, id))
            .arg(id.as_str())
            .arg(&k.prefix)
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| self.fail(e, format!("delete session {tenant}/{id}")))?;
        Ok(n == 1)
    }

    async fn touch(&self, tenant: &TenantId, id: &SessionId, now: UnixMs) -> Result<()> {
        let k = &self.inner.keys;
        let status: i64 = TOUCH
            .key(k.session(tenant, id))
            .key(k.live())
            .arg(now.0)
            .arg(member(tenant, id))
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| self.fail(e, format!("touch session {tenant}/{id}")))?;
        match status {
            1 => Ok(()),
            0 => Err(not_found(tenant, id)),
            _ => Err(not_live(tenant, id)),
        }
    }

    async fn reap(&self, now: UnixMs) -> Result<Vec<Session>> {
        let mut reaped = Vec::new();
        if now.saturating_since(UnixMs(0)) >= self.inner.abandon_after {
            let cutoff = now.saturating_sub(self.inner.abandon_after);
            let members: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(self.inner.keys.live())
                .arg("-inf")
                .arg(cutoff.0)
                .query_async(&mut self.conn())
                .await
                .map_err(|e| self.fail(e, "find abandoned sessions"))?;
            for m in members {
                let Some((t, id)) = parse_member(&m) else {
                    tracing::warn!(member = m, "bad member in the live index; removing it");
                    self.forget_live(&m).await?;
                    continue;
                };
                let Some(mut s) = self.get(&t, &id).await? else {
                    self.forget_live(&m).await?;
                    continue;
                };
                if !s.is_live() {
                    self.forget_live(&m).await?;
                    continue;
                }
                s.finish(SessionState::Failed, ABANDONED, now)?;
                let mut next = s.clone();
                next.revision += 1;
                let json = next.to_checked_json()?;
                match self.write_update(&s, &json, Some(cutoff)).await? {
                    Ok(rev) => {
                        next.revision = rev;
                        reaped.push(next);
                    }
                    Err(UpdateRefused::Gone) => self.forget_live(&m).await?,
                    // Written or touched since we looked: alive after all,
                    // or another host's reaper got there first.
                    Err(UpdateRefused::Stale(_) | UpdateRefused::Touched) => {}
                }
            }
        }
        for t in self.tenants().await? {
            let k = &self.inner.keys;
            let _: i64 = CLEAN
                .key(k.index(&t))
                .key(k.tenants())
                .arg(now.0)
                .arg(t.as_str())
                .arg(&k.prefix)
                .invoke_async(&mut self.conn())
                .await
                .map_err(|e| self.fail(e, format!("forget ended sessions of {t}")))?;
        }
        sort_sessions(&mut reaped);
        Ok(reaped)
    }

    async fn publish(&self, event: &SessionEvent) -> Result<()> {
        let _ = self.inner.events.send(event.clone());
        let envelope = Envelope {
            origin: self.inner.origin.clone(),
            event: event.clone(),
        };
        let payload = serde_json::to_vec(&envelope)
            .map_err(|e| Error::internal("cannot serialize a session event").with_cause(e))?;
        let _: i64 = redis::cmd("PUBLISH")
            .arg(self.inner.keys.events(&event.tenant))
            .arg(payload)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| {
                self.fail(
                    e,
                    format!("publish an event of {}/{}", event.tenant, event.session),
                )
            })?;
        Ok(())
    }

    fn subscribe(&self, tenant: Option<&TenantId>) -> EventStream {
        EventStream::new(self.inner.events.subscribe(), tenant)
    }

    async fn health(&self) -> Result<()> {
        let cmd = redis::cmd("PING");
        let mut conn = self.conn();
        let ping = cmd.query_async::<String>(&mut conn);
        match tokio::time::timeout(self.inner.timeout * 3, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.fail(e, "ping")),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                Party::SessionStore,
                format!("redis {}: ping: no answer", self.inner.server),
            )),
        }
    }
}

/// The pub/sub subscriber task's state.
struct Subscriber {
    client: Client,
    server: String,
    keys: Keys,
    origin: String,
    timeout: Duration,
    events: broadcast::Sender<SessionEvent>,
    state: watch::Sender<LinkState>,
    malformed: Arc<AtomicU64>,
}

impl Subscriber {
    async fn run(self, stop: CancellationToken) {
        let mut delays = backoff(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            self.state.send_replace(LinkState::Connecting);
            let (reason, was_up) = tokio::select! {
                () = stop.cancelled() => return,
                r = self.session(&stop) => r,
            };
            if was_up {
                delays = backoff(Duration::from_millis(100), Duration::from_secs(5));
            }
            if stop.is_cancelled() {
                return;
            }
            tracing::warn!(server = %self.server, reason, "session events: pub/sub link down; reconnecting");
            self.state.send_replace(LinkState::Down { reason });
            let delay = delays.next().unwrap_or(Duration::from_secs(5));
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One connection's life: connect, subscribe, forward until it breaks.
    /// Returns why it ended and whether it was up.
    async fn session(&self, stop: &CancellationToken) -> (String, bool) {
        let pattern = self.keys.events_pattern();
        let connect = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.psubscribe(&pattern).await?;
            Ok::<_, RedisError>(pubsub)
        };
        let pubsub = match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return (format!("subscribe: {e}"), false),
            Err(_) => return ("subscribe: timed out".to_owned(), false),
        };
        tracing::info!(server = %self.server, pattern, "session events: subscribed");
        self.state.send_replace(LinkState::Up {
            server: self.server.clone(),
        });
        let (mut sink, mut stream) = pubsub.split();
        let mut ping = tokio::time::interval(SUBSCRIBER_PING);
        ping.tick().await;
        let reason = loop {
            tokio::select! {
                () = stop.cancelled() => break "stopped".to_owned(),
                msg = stream.next() => match msg {
                    Some(msg) => self.deliver(msg.get_channel_name(), msg.get_payload_bytes()),
                    None => break "connection closed".to_owned(),
                },
                _ = ping.tick() => {
                    match tokio::time::timeout(self.timeout, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => break format!("ping: {e}"),
                        Err(_) => break "ping: no answer".to_owned(),
                    }
                }
            }
        };
        (reason, true)
    }

    /// Checks one message and hands its event to local subscribers.
    fn deliver(&self, channel: &str, payload: &[u8]) {
        match decode_message(&self.keys, channel, payload) {
            Ok(env) if env.origin == self.origin => {}
            Ok(env) => {
                let _ = self.events.send(env.event);
            }
            Err(why) => {
                self.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    server = %self.server,
                    channel,
                    bytes = payload.len(),
                    why,
                    "session events: dropped a malformed message"
                );
            }
        }
    }
}

/// Parses one pub/sub message: an envelope whose event belongs to the
/// channel's tenant.
fn decode_message(keys: &Keys, channel: &str, payload: &[u8]) -> Result<Envelope, String> {
    let tenant = channel
        .strip_prefix(&keys.events_prefix())
        .ok_or_else(|| "not an events channel".to_owned())?;
    let env: Envelope =
        serde_json::from_slice(payload).map_err(|e| format!("not an event envelope: {e}"))?;
    if env.event.tenant.as_str() != tenant {
        return Err(format!(
            "event of tenant {} on the channel of tenant {tenant}",
            env.event.tenant
        ));
    }
    Ok(env)
}

/// Key names under one prefix.
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn session(&self, t: &TenantId, id: &SessionId) -> String {
        format!("{}:t:{t}:s:{id}", self.prefix)
    }

    fn index(&self, t: &TenantId) -> String {
        format!("{}:t:{t}:index", self.prefix)
    }

    fn tenants(&self) -> String {
        format!("{}:tenants", self.prefix)
    }

    fn live(&self) -> String {
        format!("{}:live", self.prefix)
    }

    fn host_live(&self, host: &str) -> String {
        format!("{}:host:{host}:live", self.prefix)
    }

    fn events_prefix(&self) -> String {
        format!("{}:events:", self.prefix)
    }

    fn events(&self, t: &TenantId) -> String {
        format!("{}{t}", self.events_prefix())
    }

    fn events_pattern(&self) -> String {
        // The prefix has no glob characters (see SessionConfig::validate).
        format!("{}*", self.events_prefix())
    }
}

fn member(t: &TenantId, id: &SessionId) -> String {
    format!("{t}:{id}")
}

fn parse_member(m: &str) -> Option<(TenantId, SessionId)> {
    let (t, id) = m.split_once(':')?;
    Some((t.parse().ok()?, id.parse().ok()?))
}

/// Parses a stored session and checks it is the one its key names.
fn parse_session(tenant: &TenantId, id: &SessionId, bytes: &[u8]) -> Result<Session> {
    let s: Session = serde_json::from_slice(bytes).map_err(|e| {
        protocol(format!("session {tenant}/{id}: stored JSON does not parse")).with_cause(e)
    })?;
    if s.tenant != *tenant || s.id != *id {
        return Err(protocol(format!(
            "session {tenant}/{id}: stored value names {}/{}",
            s.tenant, s.id
        )));
    }
    Ok(s)
}

fn protocol(context: String) -> Error {
    Error::new(ErrorKind::Protocol, Party::SessionStore, context)
}

/// Maps a Redis client error onto ours: connection trouble is
/// `Unavailable` (retryable), a slow answer `Timeout`, a server refusing
/// for now (loading, read-only replica, busy script) `Unavailable`, other
/// server errors `PeerFailure`, a reply we cannot read `Protocol`.
fn redis_error(e: RedisError, context: String) -> Error {
    use redis::{ErrorKind as K, ServerErrorKind as S};
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        ErrorKind::Unavailable
    } else {
        match e.kind() {
            K::Server(S::BusyLoading | S::ReadOnly | S::MasterDown | S::TryAgain) => {
                ErrorKind::Unavailable
            }
            K::Server(_) | K::Extension => ErrorKind::PeerFailure,
            K::AuthenticationFailed => ErrorKind::Unauthorized,
            K::InvalidClientConfig => ErrorKind::Invalid,
            K::Parse | K::UnexpectedReturnType => ErrorKind::Protocol,
            _ => ErrorKind::Unavailable,
        }
    };
    Error::new(kind, Party::SessionStore, context).with_cause(e)
}

/// Builds the client from the URL and the password secret.
fn client(config: &SessionConfig) -> Result<Client> {
    let bad_url = |e: RedisError| {
        Error::invalid(format!(
            "sessions.redis_url: not a Redis URL ({})",
            redacted(&config.redis_url)
        ))
        .with_cause(e)
    };
    let mut info: redis::ConnectionInfo = config.redis_url.parse().map_err(bad_url)?;
    if let Some(secret) = &config.redis_password {
        let password = secret.resolve("sessions.redis_password")?;
        let settings = info
            .redis_settings()
            .clone()
            .set_password(password.expose());
        info = info.set_redis_settings(settings);
    }
    Client::open(info).map_err(bad_url)
}

/// The URL without a password, for messages.
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparsable>".to_owned(),
    }
}

/// A name for this store instance that no other publisher shares: the
/// host, the process and a random number (std's per-process hash seed).
fn origin(host: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(NEXT.fetch_add(1, Ordering::Relaxed));
    format!("{host}/{}/{:016x}", std::process::id(), h.finish())
}

/// Stores a new session with its index entries. Returns 0 if it exists.
static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
        redis.call('HSET', KEYS[1], 'json', ARGV[1], 'rev', '1', 'host', ARGV[2], 'live', ARGV[3])
        redis.call('SADD', KEYS[3], ARGV[6])
        redis.call('ZADD', KEYS[2], ARGV[8], ARGV[7])
        if ARGV[3] == '1' then
          redis.call('ZADD', KEYS[4], ARGV[4], ARGV[5])
          redis.call('SADD', KEYS[5], ARGV[5])
        else
          redis.call('PEXPIREAT', KEYS[1], ARGV[9])
        end
        return 1
        ",
    )
});

/// Replaces a session if its revision is still ARGV[10]; moves it between
/// host sets and in or out of the live indexes. Returns {status, value}:
/// {0, new rev}, {1, 0} gone, {2, stored rev} stale, {3, stored rev}
/// touched after ARGV[13].
static UPDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local cur = redis.call('HGET', KEYS[1], 'rev')
        if not cur then return {1, 0} end
        if cur ~= ARGV[10] then return {2, tonumber(cur)} end
        if ARGV[13] ~= '' then
          local touched = redis.call('ZSCORE', KEYS[4], ARGV[5])
          if touched and tonumber(touched) > tonumber(ARGV[13]) then
            return {3, tonumber(cur)}
          end
        end
        local old = redis.call('HGET', KEYS[1], 'host')
        if old and old ~= ARGV[2] then
          redis.call('SREM', ARGV[12] .. ':host:' .. old .. ':live', ARGV[5])
        end
        redis.call('HSET', KEYS[1], 'json', ARGV[1], 'rev', ARGV[11], 'host', ARGV[2], 'live', ARGV[3])
        redis.call('SADD', KEYS[3], ARGV[6])
        redis.call('ZADD', KEYS[2], ARGV[8], ARGV[7])
        if ARGV[3] == '1' then
          redis.call('PERSIST', KEYS[1])
          redis.call('ZADD', KEYS[4], 'GT', ARGV[4], ARGV[5])
          redis.call('SADD', KEYS[5], ARGV[5])
        else
          redis.call('ZREM', KEYS[4], ARGV[5])
          redis.call('SREM', KEYS[5], ARGV[5])
          redis.call('PEXPIREAT', KEYS[1], ARGV[9])
        end
        return {0, tonumber(ARGV[11])}
        ",
    )
});

/// Removes a session and its index entries. Returns how many sessions
/// were removed (0 or 1).
static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local host = redis.call('HGET', KEYS[1], 'host')
        local n = redis.call('DEL', KEYS[1])
        redis.call('ZREM', KEYS[2], ARGV[2])
        redis.call('ZREM', KEYS[3], ARGV[1])
        if host then
          redis.call('SREM', ARGV[3] .. ':host:' .. host .. ':live', ARGV[1])
        end
        return n
        ",
    )
});

/// Records that a live session is alive at ARGV[1]. Returns 1, 0 if it
/// is not stored, 2 if it ended.
static TOUCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local live = redis.call('HGET', KEYS[1], 'live')
        if not live then return 0 end
        if live ~= '1' then return 2 end
        redis.call('ZADD', KEYS[2], 'GT', ARGV[1], ARGV[2])
        return 1
        ",
    )
});

/// Forgets a tenant's ended sessions whose retention ran out by ARGV[1],
/// and the tenant when it has none left.
static CLEAN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
        for _, id in ipairs(gone) do
          local key = ARGV[3] .. ':t:' .. ARGV[2] .. ':s:' .. id
          if redis.call('HGET', key, 'live') ~= '1' then redis.call('DEL', key) end
        end
        redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
        if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end
        return #gone
        ",
    )
});

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys {
            prefix: "gw".into(),
        }
    }

    #[test]
    fn keys_carry_the_tenant() {
        let k = keys();
        let t: TenantId = "acme".parse().unwrap();
        let id: SessionId = "PJSIP/a-1;2:x".parse().unwrap();
        assert_eq!(k.session(&t, &id), "gw:t:acme:s:PJSIP/a-1;2:x");
        assert_eq!(k.index(&t), "gw:t:acme:index");
        assert_eq!(k.events(&t), "gw:events:acme");
        assert_eq!(k.events_pattern(), "gw:events:*");
        let m = member(&t, &id);
        assert_eq!(parse_member(&m), Some((t, id)));
        assert_eq!(parse_member("no-colon"), None);
        assert_eq!(parse_member("bad tenant:x"), None);
    }

    #[test]
    fn messages_are_checked_not_trusted() {
        let k = keys();
        let s = Session::new(
            "acme".parse().unwrap(),
            "c-1".parse().unwrap(),
            "gw-1",
            super::super::Direction::Inbound,
            UnixMs(1),
        );
        let env = Envelope {
            origin: "o".into(),
            event: SessionEvent::created(&s),
        };
        let bytes = serde_json::to_vec(&env).unwrap();
        assert!(decode_message(&k, "gw:events:acme", &bytes).is_ok());
        let e = decode_message(&k, "gw:events:other", &bytes).err().unwrap();
        assert!(
            e.contains("tenant acme on the channel of tenant other"),
            "{e}"
        );
        assert!(decode_message(&k, "gw:events:acme", b"\xff\x00{").is_err());
        assert!(decode_message(&k, "gw:events:acme", b"{\"origin\":1}").is_err());
        assert!(decode_message(&k, "elsewhere", &bytes).is_err());
    }

    #[test]
    fn errors_are_sorted_by_cause() {
        let refused = RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        let e = redis_error(refused, "redis x".into());
        assert_eq!(
            (e.kind(), e.party()),
            (ErrorKind::Unavailable, Party::SessionStore)
        );
        assert!(e.retryable());
        let slow = RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "slow"));
        assert_eq!(redis_error(slow, "x".into()).kind(), ErrorKind::Timeout);
        assert_eq!(
            redacted("redis://user:hunter2@h:6379/0"),
            "redis://user:***@h:6379/0"
        );
        assert_ne!(origin("h"), origin("h"));
    }
}
