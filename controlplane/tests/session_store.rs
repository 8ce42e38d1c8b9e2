//! The session store's behaviour: one suite, run against both backends.
//!
//! Each `async fn` below takes a [`Backend`] and is instantiated twice by
//! `both_backends!`: once on [`MemoryStore`], once on [`RedisStore`] against
//! a real Redis. Redis tests use the Redis at `MEDIAGW_TEST_REDIS_URL` (or
//! `redis://127.0.0.1:6379`), each under its own key prefix that is deleted
//! afterwards; when that Redis does not answer, each test starts a private
//! `redis-server` on a free port. When neither works the tests fail with a
//! message saying how to start Redis. The restart test always runs its own
//! `redis-server`, kills it and starts it again on the same port.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use mediagw_controlplane::error::{ErrorKind, Party};
use mediagw_controlplane::service::{Services, Shutdown};
use mediagw_controlplane::session::{
    BackendKind, Direction, EventStream, MemoryStore, Reaper, RedisStore, Session, SessionConfig,
    SessionEvent, SessionEventKind, SessionState, SessionStore, Store, UnixMs,
};
use mediagw_shared::ids::{SessionId, TenantId};

/// Generous: the machine is shared and noisy.
const DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- helpers

/// The wall clock, for tests that need Redis' expiry to agree with ours.
fn now() -> UnixMs {
    // Tests are drivers: they read the clock and pass it in.
    #[allow(clippy::disallowed_methods)]
    UnixMs::from(SystemTime::now())
}

fn tenant(s: &str) -> TenantId {
    s.parse().unwrap()
}

fn sid(s: &str) -> SessionId {
    s.parse().unwrap()
}

fn new_session(t: &str, id: &str, host: &str, at: UnixMs) -> Session {
    let mut s = Session::new(tenant(t), sid(id), host, Direction::Inbound, at);
    s.asterisk = Some("pbx-a".into());
    s.channel = Some(id.to_owned());
    s.caller = Some("+4930123456".into());
    s.dialed = Some("+4930999".into());
    s
}

async fn recv(stream: &mut EventStream) -> SessionEvent {
    tokio::time::timeout(DEADLINE, stream.recv())
        .await
        .expect("no event within the deadline")
        .expect("event stream failed")
}

/// Waits until `f` gives `Some`, polling, or panics after [`DEADLINE`].
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = tokio::time::Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Which store a test runs on.
trait Backend {
    type Store: SessionStore;

    /// A configuration for a store of this backend acting as `host`.
    fn config(&self, host: &str) -> SessionConfig;

    /// Opens a store.
    fn open(&self, config: &SessionConfig) -> Self::Store;

    /// A store with the default test configuration.
    fn store(&self, host: &str) -> Self::Store {
        self.open(&self.config(host))
    }
}

struct Memory;

impl Backend for Memory {
    type Store = MemoryStore;

    fn config(&self, host: &str) -> SessionConfig {
        SessionConfig {
            host: host.to_owned(),
            ..SessionConfig::default()
        }
    }

    fn open(&self, config: &SessionConfig) -> MemoryStore {
        MemoryStore::new(config).unwrap()
    }
}

/// A private `redis-server`, killed when dropped.
struct RedisServer {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one on a free port.
    fn start() -> std::io::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut server = Self {
            port,
            child: None,
            dir: tempfile::tempdir()?,
        };
        server.restart()?;
        Ok(server)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on its port and waits until it answers.
    fn restart(&mut self) -> std::io::Result<()> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--loglevel", "warning", "--dir"])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        // Polls every 20 ms until the deadline (counted, not timed: tests
        // read no monotonic clock outside tokio).
        let attempts = DEADLINE.as_millis() / 20;
        for _ in 0..attempts {
            if ping(&self.url()) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(std::io::Error::other(format!(
            "redis-server on port {} did not answer",
            self.port
        )))
    }

    /// Kills it (SIGKILL) and waits for it to be gone.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn ping(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(1)) else {
        return false;
    };
    redis::cmd("PING").query::<String>(&mut conn).is_ok()
}

/// A Redis to test against, a key prefix no other test uses, and clean-up
/// of that prefix afterwards.
struct RedisFixture {
    url: String,
    prefix: String,
    server: Option<RedisServer>,
}

impl RedisFixture {
    fn new(test: &str) -> Self {
        let url = std::env::var("MEDIAGW_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let (url, server) = if ping(&url) {
            (url, None)
        } else {
            match RedisServer::start() {
                Ok(s) => (s.url(), Some(s)),
                Err(e) => panic!(
                    "Redis is not reachable at {url} and a private `redis-server` could not \
                     be started ({e}). Start Redis with `redis-server --daemonize yes --save '' \
                     --appendonly no` (Debian package redis-server), or point \
                     MEDIAGW_TEST_REDIS_URL at one."
                ),
            }
        };
        Self::with(url, test, server)
    }

    /// On a private server (the restart test).
    fn private(test: &str) -> Self {
        let server = RedisServer::start().unwrap_or_else(|e| {
            panic!(
                "cannot start a private redis-server ({e}); install it (Debian package \
                 redis-server) so `redis-server` is on PATH"
            )
        });
        Self::with(server.url(), test, Some(server))
    }

    fn with(url: String, test: &str, server: Option<RedisServer>) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("mgwtest-{test}-{}-{n}", std::process::id());
        Self {
            url,
            prefix,
            server,
        }
    }

    /// The keys under this fixture's prefix.
    fn keys(&self) -> Vec<String> {
        let client = redis::Client::open(self.url.as_str()).unwrap();
        let mut conn = client
            .get_connection_with_timeout(Duration::from_secs(2))
            .unwrap();
        redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query(&mut conn)
            .unwrap()
    }

    /// Runs one raw command (to corrupt data or publish garbage).
    fn raw(&self, cmd: &redis::Cmd) -> redis::Value {
        let client = redis::Client::open(self.url.as_str()).unwrap();
        let mut conn = client
            .get_connection_with_timeout(Duration::from_secs(2))
            .unwrap();
        cmd.query(&mut conn).unwrap()
    }
}

impl Drop for RedisFixture {
    fn drop(&mut self) {
        if self.server.is_some() {
            return; // a private server: it goes with its keys
        }
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
            return;
        };
        let mut cursor = 0u64;
        loop {
            let Ok((next, keys)): redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}:*", self.prefix))
                .arg("COUNT")
                .arg(1000)
                .query(&mut conn)
            else {
                return;
            };
            if !keys.is_empty() {
                let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(&keys).query(&mut conn);
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    }
}

impl Backend for RedisFixture {
    type Store = RedisStore;

    fn config(&self, host: &str) -> SessionConfig {
        SessionConfig {
            backend: BackendKind::Redis,
            redis_url: self.url.clone(),
            key_prefix: self.prefix.clone(),
            redis_timeout_ms: 1_000,
            host: host.to_owned(),
            ..SessionConfig::default()
        }
    }

    fn open(&self, config: &SessionConfig) -> RedisStore {
        RedisStore::new(config).unwrap()
    }
}

/// Instantiates each generic test for both backends.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$name(&super::Memory).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                let fixture = super::RedisFixture::new(stringify!($name));
                super::$name(&fixture).await;
            }
        }
    )*};
}

both_backends!(
    lifecycle_with_timestamps,
    illegal_transitions_and_bad_writes_are_refused,
    optimistic_concurrency,
    tenant_isolation,
    list_host_gives_a_hosts_live_sessions,
    touch_and_reap_abandoned_sessions,
    ended_sessions_are_kept_then_forgotten,
    events_per_tenant,
    concurrent_updates_lose_nothing,
    the_reaper_service_reaps_and_stops,
);

// ------------------------------------------------------- the generic suite

async fn lifecycle_with_timestamps<B: Backend>(b: &B) {
    let store = b.store("gw-1");
    let t0 = now();
    let mut s = new_session("acme", "1715000000.1", "gw-1", t0);
    assert_eq!(store.create(&s).await.unwrap(), 1);
    s.revision = 1;
    let e = store.create(&s).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");

    let got = store.get(&s.tenant, &s.id).await.unwrap().unwrap();
    assert_eq!(got, s);
    assert_eq!(got.state(), SessionState::New);

    let steps = [
        SessionState::Answered,
        SessionState::MediaConnecting,
        SessionState::Active,
        SessionState::Ending,
    ];
    for (i, state) in steps.into_iter().enumerate() {
        let at = UnixMs(t0.0 + 100 * (i as u64 + 1));
        s.transition(state, at).unwrap();
        if state == SessionState::MediaConnecting {
            s.endpoint = Some(mediagw_shared::ids::EndpointId(0x2a));
            s.endpoint_addr = Some("127.0.0.1:40000".into());
            s.external_channel = Some("ext-1".into());
            s.codec = Some("ulaw".into());
        }
        if state == SessionState::Active {
            s.bridge = Some("bridge-1".into());
        }
        s.revision = store.update(&s).await.unwrap();
        assert_eq!(s.revision, i as u64 + 2);
    }
    s.final_stats = Some(serde_json::json!({"received": 1500, "lost": 3, "jitter_ms": 4.5}));
    s.finish(SessionState::Ended, "hangup", UnixMs(t0.0 + 600))
        .unwrap();
    s.revision = store.update(&s).await.unwrap();

    let got = store.get(&s.tenant, &s.id).await.unwrap().unwrap();
    assert_eq!(got, s);
    assert_eq!(got.revision, 6);
    let history: Vec<(SessionState, u64)> = got
        .history()
        .iter()
        .map(|c| (c.state, c.at_ms.0 - t0.0))
        .collect();
    assert_eq!(
        history,
        [
            (SessionState::New, 0),
            (SessionState::Answered, 100),
            (SessionState::MediaConnecting, 200),
            (SessionState::Active, 300),
            (SessionState::Ending, 400),
            (SessionState::Ended, 600),
        ]
    );
    assert_eq!(got.created_at_ms, t0);
    assert_eq!(got.updated_at_ms, UnixMs(t0.0 + 600));
    assert_eq!(got.final_stats.as_ref().unwrap()["lost"], 3);
    assert_eq!(got.end_reason.as_deref(), Some("hangup"));
    // Ended sessions stay listable (until retention runs out) but are no
    // host's live session any more.
    assert_eq!(store.list(Some(&s.tenant)).await.unwrap(), [got]);
    assert!(store.list_host("gw-1").await.unwrap().is_empty());

    assert!(store.delete(&s.tenant, &s.id).await.unwrap());
    assert!(!store.delete(&s.tenant, &s.id).await.unwrap());
    assert_eq!(store.get(&s.tenant, &s.id).await.unwrap(), None);
    assert!(store.list(None).await.unwrap().is_empty());
    store.health().await.unwrap();
}

async fn illegal_transitions_and_bad_writes_are_refused<B: Backend>(b: &B) {
    let store = b.store("gw-1");
    let t0 = now();
    let mut s = new_session("acme", "c-1", "gw-1", t0);
    s.revision = store.create(&s).await.unwrap();
    let e = s
        .transition(SessionState::Active, UnixMs(t0.0 + 1))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    s.finish(SessionState::Failed, "ari error", UnixMs(t0.0 + 2))
        .unwrap();
    s.revision = store.update(&s).await.unwrap();
    for to in SessionState::ALL {
        assert!(
            s.transition(to, UnixMs(t0.0 + 3)).is_err(),
            "failed -> {to}"
        );
    }
    let stored = store.get(&s.tenant, &s.id).await.unwrap().unwrap();
    assert_eq!(stored.state(), SessionState::Failed);
    assert_eq!(stored.history().len(), 2);
    // Touching an ended session is refused; touching a missing one too.
    let e = store.touch(&s.tenant, &s.id, t0).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    let e = store.touch(&s.tenant, &sid("nope"), t0).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);

    // An update of a session that is not stored.
    let ghost = new_session("acme", "ghost", "gw-1", t0);
    let e = store.update(&ghost).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");

    // Metadata past the limits, smuggled in through JSON, is refused.
    let mut v = serde_json::to_value(new_session("acme", "big", "gw-1", t0)).unwrap();
    let many: serde_json::Map<String, serde_json::Value> = (0..40)
        .map(|i| (format!("k{i}"), serde_json::Value::from("v")))
        .collect();
    v["metadata"] = serde_json::Value::Object(many);
    let big: Session = serde_json::from_value(v).unwrap();
    let e = store.create(&big).await.unwrap_err();
    assert_eq!((e.kind(), e.party()), (ErrorKind::Invalid, Party::Client));
    assert_eq!(store.get(&big.tenant, &big.id).await.unwrap(), None);
}

async fn optimistic_concurrency<B: Backend>(b: &B) {
    let store = b.store("gw-1");
    let t0 = now();
    let mut s = new_session("acme", "c-1", "gw-1", t0);
    s.revision = store.create(&s).await.unwrap();
    let mut first = store.get(&s.tenant, &s.id).await.unwrap().unwrap();
    let mut second = first.clone();

    first.transition(SessionState::Answered, t0).unwrap();
    assert_eq!(store.update(&first).await.unwrap(), 2);

    second.set_metadata("lang", "de", t0).unwrap();
    let e = store.update(&second).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert!(!e.retryable());
    assert!(e.message().contains("stored revision 2"), "{e}");

    // The loser re-reads and applies its change again.
    let mut again = store.get(&s.tenant, &s.id).await.unwrap().unwrap();
    assert_eq!(again.state(), SessionState::Answered);
    again.set_metadata("lang", "de", t0).unwrap();
    assert_eq!(store.update(&again).await.unwrap(), 3);
    let got = store.get(&s.tenant, &s.id).await.unwrap().unwrap();
    assert_eq!(got.state(), SessionState::Answered);
    assert_eq!(got.metadata()["lang"], "de");
    assert_eq!(got.revision, 3);
}

async fn tenant_isolation<B: Backend>(b: &B) {
    let store = b.store("gw-1");
    let t0 = now();
    let (ta, tb) = (tenant("alpha"), tenant("beta"));
    let mut a = new_session("alpha", "same-id", "gw-1", t0);
    a.caller = Some("alice".into());
    let mut b_ = new_session("beta", "same-id", "gw-1", t0);
    b_.caller = Some("bob".into());
    a.revision = store.create(&a).await.unwrap();
    b_.revision = store.create(&b_).await.unwrap();
    store
        .create(&new_session("beta", "only-beta", "gw-1", t0))
        .await
        .unwrap();

    let got_a = store.get(&ta, &a.id).await.unwrap().unwrap();
    let got_b = store.get(&tb, &a.id).await.unwrap().unwrap();
    assert_eq!(got_a.caller.as_deref(), Some("alice"));
    assert_eq!(got_b.caller.as_deref(), Some("bob"));
    assert_eq!(store.get(&ta, &sid("only-beta")).await.unwrap(), None);

    let list_a = store.list(Some(&ta)).await.unwrap();
    assert_eq!(list_a.len(), 1);
    assert!(list_a.iter().all(|s| s.tenant == ta));
    let list_b = store.list(Some(&tb)).await.unwrap();
    assert_eq!(list_b.len(), 2);
    assert!(list_b.iter().all(|s| s.tenant == tb));
    assert_eq!(store.list(None).await.unwrap().len(), 3);
    assert!(store.list(Some(&tenant("gamma"))).await.unwrap().is_empty());

    // Writes to one do not reach the other.
    b_.transition(SessionState::Answered, t0).unwrap();
    store.update(&b_).await.unwrap();
    assert_eq!(
        store.get(&ta, &a.id).await.unwrap().unwrap().state(),
        SessionState::New
    );
    assert!(store.delete(&ta, &a.id).await.unwrap());
    assert!(store.get(&tb, &a.id).await.unwrap().is_some());
    assert!(store.list(Some(&ta)).await.unwrap().is_empty());
}

async fn list_host_gives_a_hosts_live_sessions<B: Backend>(b: &B) {
    let store = b.store("gw-1");
    let t0 = now();
    for (t, id, host) in [
        ("alpha", "a1", "gw-1"),
        ("beta", "b1", "gw-1"),
        ("alpha", "a2", "gw-2"),
        ("beta", "ended", "gw-1"),
    ] {
        let mut s = new_session(t, id, host, UnixMs(t0.0 + 1));
        if id == "ended" {
            s.finish(SessionState::Ended, "hangup", UnixMs(t0.0 + 2))
                .unwrap();
        }
        store.create(&s).await.unwrap();
    }
    let names = |v: Vec<Session>| -> Vec<String> {
        v.iter().map(|s| format!("{}/{}", s.tenant, s.id)).collect()
    };
    assert_eq!(
        names(store.list_host("gw-1").await.unwrap()),
        ["alpha/a1", "beta/b1"]
    );
    assert_eq!(names(store.list_host("gw-2").await.unwrap()), ["alpha/a2"]);
    assert!(store.list_host("gw-3").await.unwrap().is_empty());

    // Taking a session over moves it to the other host's list; ending it
    // removes it from every host's.
    let mut a1 = store
        .get(&tenant("alpha"), &sid("a1"))
        .await
        .unwrap()
        .unwrap();
    a1.host = "gw-2".into();
    a1.revision = store.update(&a1).await.unwrap();
    assert_eq!(names(store.list_host("gw-1").await.unwrap()), ["beta/b1"]);
    assert_eq!(
        names(store.list_host("gw-2").await.unwrap()),
        ["alpha/a1", "alpha/a2"]
    );
    a1.finish(SessionState::Ended, "hangup", UnixMs(t0.0 + 5))
        .unwrap();
    store.update(&a1).await.unwrap();
    assert_eq!(names(store.list_host("gw-2").await.unwrap()), ["alpha/a2"]);
}

async fn touch_and_reap_abandoned_sessions<B: Backend>(b: &B) {
    let config = SessionConfig {
        abandon_after_ms: 10_000,
        ..b.config("gw-1")
    };
    let store = b.open(&config);
    let mut events = store.subscribe(None);
    let t0 = now();
    for id in ["kept", "lost"] {
        store
            .create(&new_session("acme", id, "gw-1", t0))
            .await
            .unwrap();
    }
    let t = tenant("acme");
    store
        .touch(&t, &sid("kept"), UnixMs(t0.0 + 8_000))
        .await
        .unwrap();
    // Not yet: 9.999 s without a touch.
    assert!(store.reap(UnixMs(t0.0 + 9_999)).await.unwrap().is_empty());

    let reaper = Reaper::new(store.clone(), Duration::from_secs(3600));
    let reaped = reaper.reap_once(UnixMs(t0.0 + 10_000)).await.unwrap();
    assert_eq!(reaped.len(), 1);
    let lost = &reaped[0];
    assert_eq!(lost.id, sid("lost"));
    assert_eq!(lost.state(), SessionState::Failed);
    assert_eq!(lost.end_reason.as_deref(), Some("abandoned"));
    assert_eq!(lost.revision, 2);
    assert_eq!(lost.history().last().unwrap().at_ms, UnixMs(t0.0 + 10_000));
    assert_eq!(store.get(&t, &lost.id).await.unwrap().as_ref(), Some(lost));
    let e = recv(&mut events).await;
    assert_eq!(e.session, sid("lost"));
    assert_eq!(
        e.kind,
        SessionEventKind::Ended {
            state: SessionState::Failed,
            reason: Some("abandoned".into())
        }
    );
    assert_eq!(e.host, "gw-1");

    // Reaping again finds nothing new; the touched one goes 10 s after its
    // last touch.
    assert!(store.reap(UnixMs(t0.0 + 12_000)).await.unwrap().is_empty());
    let later = store.reap(UnixMs(t0.0 + 18_000)).await.unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].id, sid("kept"));
    assert!(store.list_host("gw-1").await.unwrap().is_empty());

    // An update counts as a sign of life too.
    let mut s = new_session("acme", "updated", "gw-1", t0);
    s.revision = store.create(&s).await.unwrap();
    s.transition(SessionState::Answered, UnixMs(t0.0 + 20_000))
        .unwrap();
    store.update(&s).await.unwrap();
    assert!(store.reap(UnixMs(t0.0 + 29_000)).await.unwrap().is_empty());
    assert_eq!(store.reap(UnixMs(t0.0 + 30_000)).await.unwrap().len(), 1);
}

async fn ended_sessions_are_kept_then_forgotten<B: Backend>(b: &B) {
    let config = SessionConfig {
        retain_ended_ms: 2_000,
        ..b.config("gw-1")
    };
    let store = b.open(&config);
    let t = tenant("acme");
    let t0 = now();
    let mut ended = new_session("acme", "ended", "gw-1", t0);
    ended.revision = store.create(&ended).await.unwrap();
    let live = new_session("acme", "live", "gw-1", t0);
    store.create(&live).await.unwrap();
    ended.finish(SessionState::Ended, "hangup", now()).unwrap();
    store.update(&ended).await.unwrap();

    // Right after it ended it is still there.
    store.reap(now()).await.unwrap();
    assert!(store.get(&t, &ended.id).await.unwrap().is_some());
    assert_eq!(store.list(Some(&t)).await.unwrap().len(), 2);

    // Some two seconds later it is gone; the live one stays.
    eventually("the ended session to be forgotten", || async {
        store.reap(now()).await.unwrap();
        store
            .get(&t, &ended.id)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let left: Vec<SessionId> = store
        .list(Some(&t))
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(left, [sid("live")]);
    assert_eq!(store.list(None).await.unwrap().len(), 1);
}

async fn events_per_tenant<B: Backend>(b: &B) {
    let store = b.store("gw-1");
    let mut alpha = store.subscribe(Some(&tenant("alpha")));
    let mut beta = store.subscribe(Some(&tenant("beta")));
    let mut all = store.subscribe(None);
    assert_eq!(alpha.tenant(), Some(&tenant("alpha")));
    let t0 = now();

    let mut a = new_session("alpha", "a1", "gw-1", t0);
    let bs = new_session("beta", "b1", "gw-1", t0);
    store.publish(&SessionEvent::created(&bs)).await.unwrap();
    let a_created = SessionEvent::created(&a);
    store.publish(&a_created).await.unwrap();
    let from = a.transition(SessionState::Answered, t0).unwrap();
    store
        .publish(&SessionEvent::transitioned(&a, from))
        .await
        .unwrap();
    a.set_metadata("lang", "de", t0).unwrap();
    let meta = SessionEvent::new(
        &a,
        SessionEventKind::MetadataChanged {
            metadata: a.metadata().clone(),
        },
        "gw-1",
        t0,
    );
    store.publish(&meta).await.unwrap();

    let e1 = recv(&mut alpha).await;
    assert_eq!(e1, a_created);
    let e2 = recv(&mut alpha).await;
    assert_eq!(
        e2.kind,
        SessionEventKind::StateChanged {
            from: SessionState::New,
            to: SessionState::Answered
        }
    );
    assert_eq!(recv(&mut alpha).await, meta);
    assert_eq!(recv(&mut beta).await, SessionEvent::created(&bs));
    // Nothing of the other tenant is queued for either.
    assert_eq!(alpha.try_recv().unwrap(), None);
    assert_eq!(beta.try_recv().unwrap(), None);
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(recv(&mut all).await.tenant.to_string());
    }
    assert_eq!(seen, ["beta", "alpha", "alpha", "alpha"]);
}

async fn concurrent_updates_lose_nothing<B: Backend>(b: &B) {
    const TASKS: usize = 16;
    let store = b.store("gw-1");
    let t0 = now();
    let s = new_session("acme", "busy", "gw-1", t0);
    store.create(&s).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..TASKS {
        let store = store.clone();
        let (t, id) = (s.tenant.clone(), s.id.clone());
        tasks.spawn(async move {
            let mut conflicts = 0u32;
            loop {
                let mut cur = store.get(&t, &id).await.unwrap().unwrap();
                cur.set_metadata(format!("task{i}"), "done", UnixMs(t0.0 + i as u64))
                    .unwrap();
                match store.update(&cur).await {
                    Ok(_) => return conflicts,
                    Err(e) if e.kind() == ErrorKind::Conflict => conflicts += 1,
                    Err(e) => panic!("update failed: {e}"),
                }
                tokio::task::yield_now().await;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let got = store.get(&s.tenant, &s.id).await.unwrap().unwrap();
    assert_eq!(got.revision, 1 + TASKS as u64);
    let keys: BTreeSet<&str> = got.metadata().keys().map(String::as_str).collect();
    assert_eq!(keys.len(), TASKS);
    assert!((0..TASKS).all(|i| got.metadata()[&format!("task{i}")] == "done"));
}

async fn the_reaper_service_reaps_and_stops<B: Backend>(b: &B) {
    let config = SessionConfig {
        abandon_after_ms: 60_000,
        reap_interval_ms: 50,
        ..b.config("gw-1")
    };
    let store = b.open(&config);
    let mut events = store.subscribe(Some(&tenant("acme")));
    // Last seen two minutes ago: abandoned by the wall clock.
    let old = UnixMs(now().0 - 120_000);
    store
        .create(&new_session("acme", "stale", "gw-1", old))
        .await
        .unwrap();
    store
        .create(&new_session("acme", "fresh", "gw-1", now()))
        .await
        .unwrap();

    let shutdown = Shutdown::new();
    let mut services = Services::new(shutdown.clone());
    services.spawn(Box::new(Reaper::new(store.clone(), config.reap_interval())));
    let running = tokio::spawn(services.run(Duration::from_secs(5)));

    let e = recv(&mut events).await;
    assert_eq!(e.session, sid("stale"));
    assert!(matches!(e.kind, SessionEventKind::Ended { .. }));
    let stale = store
        .get(&tenant("acme"), &sid("stale"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stale.state(), SessionState::Failed);
    let fresh = store
        .get(&tenant("acme"), &sid("fresh"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fresh.state(), SessionState::New);

    shutdown.cancel();
    tokio::time::timeout(DEADLINE, running)
        .await
        .expect("the reaper did not stop")
        .unwrap()
        .unwrap();
}

// ---------------------------------------------------------- Redis only

/// Two control planes on one Redis (one prefix) see each other's sessions
/// and events; a store's own events reach it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cross_host_sessions_and_events() {
    let f = RedisFixture::new("cross_host");
    let gw_a = f.store("gw-a");
    let gw_b = f.store("gw-b");
    for s in [&gw_a, &gw_b] {
        let mut state = s.subscriber_state();
        tokio::time::timeout(DEADLINE, state.wait_for(|l| l.is_up()))
            .await
            .expect("subscriber did not come up")
            .unwrap();
    }
    let mut a_acme = gw_a.subscribe(Some(&tenant("acme")));
    let mut b_acme = gw_b.subscribe(Some(&tenant("acme")));
    let mut a_other = gw_a.subscribe(Some(&tenant("other")));

    let t0 = now();
    let s = new_session("acme", "x-1", "gw-b", t0);
    gw_b.create(&s).await.unwrap();
    gw_b.publish(&SessionEvent::created(&s)).await.unwrap();
    let other = new_session("other", "o-1", "gw-b", t0);
    gw_b.publish(&SessionEvent::created(&other)).await.unwrap();

    let seen = recv(&mut a_acme).await;
    assert_eq!(seen, SessionEvent::created(&s));
    assert_eq!(seen.host, "gw-b");
    assert_eq!(recv(&mut a_other).await.tenant, tenant("other"));
    assert_eq!(recv(&mut b_acme).await, SessionEvent::created(&s));

    // No duplicate of b's own event through Redis: the next thing b sees
    // for acme is the marker, not the echo.
    let mut marked = s.clone();
    marked.transition(SessionState::Answered, t0).unwrap();
    let marker = SessionEvent::transitioned(&marked, SessionState::New);
    gw_a.publish(&marker).await.unwrap();
    assert_eq!(recv(&mut b_acme).await, marker);
    assert_eq!(recv(&mut a_acme).await, marker);
    assert_eq!(b_acme.try_recv().unwrap(), None);

    // The session b created is visible to a, listed as b's.
    assert_eq!(
        gw_a.get(&s.tenant, &s.id).await.unwrap().unwrap().host,
        "gw-b"
    );
    assert_eq!(gw_a.list_host("gw-b").await.unwrap().len(), 1);
    assert!(gw_a.list_host("gw-a").await.unwrap().is_empty());
    assert!(!f.keys().is_empty());
}

/// Redis goes away: operations fail as unavailable (retryable, the session
/// store at fault); it comes back on the same port: the same store works
/// again, and so does pub/sub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_is_survived() {
    let mut f = RedisFixture::private("restart");
    let store = f.store("gw-a");
    let peer = f.store("gw-b");
    let t0 = now();
    store
        .create(&new_session("acme", "before", "gw-a", t0))
        .await
        .unwrap();
    let mut up = store.subscriber_state();
    tokio::time::timeout(DEADLINE, up.wait_for(|l| l.is_up()))
        .await
        .unwrap()
        .unwrap();

    f.server.as_mut().unwrap().kill();
    let e = eventually("an error while Redis is down", || async {
        store.get(&tenant("acme"), &sid("before")).await.err()
    })
    .await;
    assert!(
        matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
        "{e}"
    );
    assert_eq!(e.party(), Party::SessionStore);
    assert!(e.retryable());
    assert_eq!(e.http_status() / 100, 5);
    assert!(store.health().await.is_err());
    tokio::time::timeout(DEADLINE, up.wait_for(|l| !l.is_up()))
        .await
        .expect("subscriber did not notice Redis going away")
        .unwrap();

    f.server.as_mut().unwrap().restart().unwrap();
    // The data died with the server (no persistence): the store must work
    // again, not remember.
    let s = new_session("acme", "after", "gw-a", now());
    eventually("the store to work again", || async {
        store.create(&s).await.ok()
    })
    .await;
    store.health().await.unwrap();
    assert_eq!(
        store
            .get(&tenant("acme"), &sid("after"))
            .await
            .unwrap()
            .unwrap()
            .id,
        sid("after")
    );

    // Pub/sub came back too: an event from the other store arrives.
    tokio::time::timeout(DEADLINE, up.wait_for(|l| l.is_up()))
        .await
        .expect("subscriber did not come back")
        .unwrap();
    let mut events = store.subscribe(Some(&tenant("acme")));
    let event = SessionEvent::created(&s);
    // The peer's first publish may race its own reconnect; retry it.
    eventually("the peer to publish again", || async {
        peer.publish(&event).await.ok()
    })
    .await;
    assert_eq!(recv(&mut events).await, event);
}

/// Garbage on an events channel is counted and dropped; the subscriber
/// lives on. A corrupt stored session is an error for `get` and skipped by
/// `list`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_bad_bytes_do_not_break_the_store() {
    let f = RedisFixture::new("bad_bytes");
    let store = f.store("gw-a");
    let mut up = store.subscriber_state();
    tokio::time::timeout(DEADLINE, up.wait_for(|l| l.is_up()))
        .await
        .unwrap()
        .unwrap();
    let mut events = store.subscribe(None);
    let channel = format!("{}:events:acme", f.prefix);
    f.raw(
        redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(b"\xff\xfe not json"),
    );
    f.raw(redis::cmd("PUBLISH").arg(&channel).arg(
        r#"{"origin":"x","event":{"tenant":"evil","session":"s","kind":{"type":"deleted"},"at_ms":1,"host":"h"}}"#,
    ));
    eventually("both bad messages to be counted", || async {
        (store.malformed_events() == 2).then_some(())
    })
    .await;
    // A good one from another store still arrives.
    let other = f.store("gw-b");
    let s = new_session("acme", "good", "gw-b", now());
    other.publish(&SessionEvent::created(&s)).await.unwrap();
    assert_eq!(recv(&mut events).await, SessionEvent::created(&s));

    // Corrupt a stored session.
    store.create(&s).await.unwrap();
    store
        .create(&new_session("acme", "fine", "gw-a", now()))
        .await
        .unwrap();
    let key = format!("{}:t:acme:s:good", f.prefix);
    f.raw(redis::cmd("HSET").arg(&key).arg("json").arg("{broken"));
    let e = store.get(&tenant("acme"), &sid("good")).await.unwrap_err();
    assert_eq!(
        (e.kind(), e.party()),
        (ErrorKind::Protocol, Party::SessionStore)
    );
    let listed: Vec<SessionId> = store
        .list(None)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, [sid("fine")]);
}

/// The daemon's entry point picks the backend from configuration, and the
/// enum works as the store it wraps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_from_config_picks_the_backend() {
    let memory = Store::from_config(&Memory.config("gw-1")).unwrap();
    assert_eq!(memory.kind(), BackendKind::Memory);
    let f = RedisFixture::new("from_config");
    let redis = Store::from_config(&f.config("gw-1")).unwrap();
    assert_eq!(redis.kind(), BackendKind::Redis);
    for store in [memory, redis] {
        let s = new_session("acme", "via-enum", "gw-1", now());
        assert_eq!(store.create(&s).await.unwrap(), 1);
        assert_eq!(store.list_host("gw-1").await.unwrap().len(), 1);
        assert_eq!(store.host(), "gw-1");
        store.health().await.unwrap();
    }
    // A Redis nobody listens on: the store is made, operations fail as
    // unavailable.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = Store::from_config(&SessionConfig {
        redis_url: format!("redis://127.0.0.1:{port}"),
        ..f.config("gw-1")
    })
    .unwrap();
    let e = dead.health().await.unwrap_err();
    assert_eq!(e.party(), Party::SessionStore);
    assert!(e.retryable(), "{e}");
    let bad = Store::from_config(&SessionConfig {
        redis_url: "http://nope".into(),
        ..f.config("gw-1")
    })
    .unwrap_err();
    assert_eq!(bad.kind(), ErrorKind::Invalid);
}
