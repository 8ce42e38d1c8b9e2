//! `mediagw-controlplane`: follows calls in Asterisk and gives each one a
//! dataplane endpoint. See `mediagw-controlplane --help`, `docs/` and the
//! README for configuring Asterisk.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use mediagw_controlplane::ami::AmiClient;
use mediagw_controlplane::ari::{AriClient, AriEvents};
use mediagw_controlplane::callflow::{Context, Dispatcher};
use mediagw_controlplane::config::{Config, ENV_PREFIX};
use mediagw_controlplane::dataplane::Dataplane;
use mediagw_controlplane::demo::Demo;
use mediagw_controlplane::error::Result;
use mediagw_controlplane::http::{self, HttpState};
use mediagw_controlplane::metrics::{Link, LinkLabel, Metrics};
use mediagw_controlplane::secret::{Secret, SecretSource};
use mediagw_controlplane::service::{LinkState, Service, Services, Shutdown};
use mediagw_controlplane::session::{Reaper, SessionStore, Store};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mediagw's control plane: Asterisk AMI and ARI, the Stasis call flow,
/// sessions, recovery.
///
/// Every configuration key can be overridden by an environment variable
/// MEDIAGW_CP_<SECTION>__<KEY>, e.g. MEDIAGW_CP_SESSIONS__BACKEND=redis.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// The TOML configuration file (defaults apply without one).
    #[arg(short, long, env = "MEDIAGW_CP_CONFIG")]
    config: Option<PathBuf>,
    /// Validate the configuration, print it as JSON (inline secrets as ***)
    /// and exit.
    #[arg(long)]
    check: bool,
    /// Log as JSON lines instead of human text.
    #[arg(long, env = "MEDIAGW_LOG_JSON")]
    log_json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = EnvFilter::try_from_env("MEDIAGW_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    if args.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let cfg = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "mediagw-controlplane: {e} (environment overrides use the prefix {ENV_PREFIX})"
            );
            return ExitCode::from(2);
        }
    };
    if args.check {
        let mut shown = serde_json::to_value(&cfg).unwrap_or_default();
        for (section, key) in [
            ("ami", "secret"),
            ("ari", "password"),
            ("sessions", "redis_password"),
        ] {
            if let Some(v) = shown[section][key].get_mut("value") {
                *v = serde_json::Value::from("***");
            }
        }
        match serde_json::to_string_pretty(&shown) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("mediagw-controlplane: cannot print the configuration: {e}"),
        }
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mediagw-controlplane: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mediagw-controlplane: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: Config) -> Result<()> {
    let shutdown = Shutdown::new();
    let mut services = Services::new(shutdown.clone());
    let rules = cfg.rules()?;
    let store = Store::from_config(&cfg.sessions)?;
    // The embedded defaults name no password: the control plane still
    // starts (Asterisk may not even be there) and says what is missing.
    let ari_password = if cfg.ari.password == SecretSource::default() {
        tracing::warn!("ari.password is not set: Asterisk will refuse the ARI login until it is");
        Secret::default()
    } else {
        cfg.ari.password.resolve("ari.password")?
    };
    let ari = AriClient::new(&cfg.ari, ari_password)?;
    let (ari_events, ari_rx) = AriEvents::new(ari.clone());
    let (dataplane, dp_link) = Dataplane::new(cfg.dataplane.clone());

    let ami = if cfg.controlplane.ami_enabled && cfg.ami.secret == SecretSource::default() {
        tracing::warn!(
            "ami.secret is not set: AMI is off (calls are driven by ARI; AMI adds hangup causes and PBX-wide channel counts)"
        );
        None
    } else if cfg.controlplane.ami_enabled {
        let secret = cfg.ami.secret.resolve("ami.secret")?;
        let (ami, ami_service) = AmiClient::new(cfg.ami.clone(), secret);
        services.spawn(Box::new(ami_service));
        Some(ami)
    } else {
        None
    };
    let metrics = Metrics::with_clients(ami.as_ref(), &ari_events.metrics());
    let ami_state = ami.as_ref().map(AmiClient::state);
    let ami_events = ami.as_ref().map(AmiClient::events);
    if let Some(state) = ami_state.clone() {
        services.spawn_fn("ami-link-watch", {
            let m = metrics.clone();
            move |s| watch_link(state, Link::Ami, m, s)
        });
    }
    if let Store::Redis(redis) = &store {
        let state = redis.subscriber_state();
        services.spawn_fn("redis-link-watch", {
            let m = metrics.clone();
            move |s| watch_link(state, Link::Redis, m, s)
        });
    }

    let ctx = Arc::new(Context {
        ari: ari.clone(),
        dataplane: dataplane.clone(),
        store: store.clone(),
        rules,
        metrics: metrics.clone(),
        cfg: cfg.calls.clone(),
    });
    let (dispatcher, calls) = Dispatcher::new(ctx, ari_rx, ami_events);

    let listener = if cfg.controlplane.http_listen.is_empty() {
        None
    } else {
        Some(http::bind(&cfg.controlplane.http_listen).await?)
    };

    // The dataplane link outlives the other services at stop, so that they
    // can still close what they own (the demo's endpoints) while draining.
    let link_shutdown = Shutdown::new();
    let link = tokio::spawn(Box::new(dp_link).run(link_shutdown.clone()));
    services.spawn(Box::new(ari_events));
    services.spawn(Box::new(dispatcher));
    services.spawn(Box::new(Reaper::new(
        store.clone(),
        Duration::from_millis(cfg.sessions.reap_interval_ms),
    )));
    if cfg.demo.enabled {
        services.spawn(Box::new(Demo::new(
            cfg.demo.clone(),
            dataplane.clone(),
            store.clone(),
            metrics.clone(),
        )));
    }
    if let Some(listener) = listener {
        let addr = listener.local_addr().ok();
        let state = HttpState {
            metrics,
            calls,
            store: store.clone(),
            ami: ami_state,
            ari: ari.state(),
            dataplane: dataplane.state(),
            host: store.host().to_owned(),
        };
        tracing::info!(
            ?addr,
            "HTTP: /metrics /healthz /readyz /status /calls /sessions"
        );
        services.spawn_fn("http", move |s| http::serve(listener, state, s));
    }
    tracing::info!(
        host = store.host(),
        app = ari.app(),
        sessions = ?store.kind(),
        dataplane = %cfg.dataplane.control_socket.display(),
        "mediagw-controlplane started"
    );

    let s = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stopping: calls stay up in Asterisk and the dataplane");
        s.cancel();
    });
    let outcome = services
        .run(Duration::from_millis(cfg.controlplane.drain_timeout_ms))
        .await;
    link_shutdown.cancel();
    let _ = link.await;
    outcome
}

/// Mirrors a link's state into `mediagw_link_up` and counts reconnects.
async fn watch_link(
    mut state: tokio::sync::watch::Receiver<LinkState>,
    link: Link,
    metrics: Metrics,
    shutdown: Shutdown,
) -> Result<()> {
    let mut was_up = false;
    let mut ever_up = false;
    loop {
        let up = state.borrow_and_update().is_up();
        metrics.set_link(link, up);
        if up && !was_up {
            if ever_up {
                metrics.reconnects.get_or_create(&LinkLabel { link }).inc();
            }
            ever_up = true;
        }
        was_up = up;
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            changed = state.changed() => if changed.is_err() { return Ok(()) },
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot catch SIGTERM/SIGINT; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
