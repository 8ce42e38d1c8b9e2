//! `mediagw-dataplane`: the RTP dataplane daemon. See `docs/control-protocol.md`
//! for its sockets and `mediagw-dataplane --help` for its flags.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mediagw_dataplane::config::{Config, ENV_PREFIX};
use mediagw_dataplane::daemon::Dataplane;
use tracing_subscriber::EnvFilter;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mediagw's RTP dataplane: receives call audio as RTP, measures, decodes
/// and de-jitters it, and serves it on a Unix media socket.
///
/// Every configuration key can be overridden by an environment variable
/// MEDIAGW_DP_<SECTION>__<KEY>, e.g. MEDIAGW_DP_DATAPLANE__WORKERS=2.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// The TOML configuration file (defaults apply without one).
    #[arg(short, long, env = "MEDIAGW_DP_CONFIG")]
    config: Option<PathBuf>,
    /// Validate the configuration, print it as TOML-like JSON and exit.
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
            eprintln!("mediagw-dataplane: {e} (environment overrides use the prefix {ENV_PREFIX})");
            return ExitCode::from(2);
        }
    };
    if args.check {
        match serde_json::to_string_pretty(&cfg) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("mediagw-dataplane: cannot print the configuration: {e}"),
        }
        return ExitCode::SUCCESS;
    }
    if let Ok((soft, _)) = mediagw_dataplane::net::memlock_limit() {
        tracing::info!(memlock_bytes = soft, "RLIMIT_MEMLOCK");
    }
    let (dp, control) = match Dataplane::start(cfg) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("mediagw-dataplane: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mediagw-dataplane: cannot start the control runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dp.run(control)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mediagw-dataplane: {e}");
            ExitCode::FAILURE
        }
    }
}
