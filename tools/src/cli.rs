//! The command line, parsed by clap. Checks that need more than one
//! argument live in [`Create::jitter`].

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use mediagw_shared::codec::Codec;
use mediagw_shared::control::{DEFAULT_PTIME_MS, JitterBounds};
use mediagw_shared::ids::{EndpointId, SessionId, TenantId};

use crate::error::CtlError;

/// Operate a mediagw dataplane through its control and media sockets.
#[derive(Debug, Parser)]
#[command(name = "mediagwctl", version, max_term_width = 100)]
pub struct Cli {
    /// The dataplane's control socket.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "MEDIAGW_CONTROL_SOCKET",
        default_value = "/run/mediagw/control.sock"
    )]
    pub socket: PathBuf,

    /// The dataplane's media socket (tap, play).
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "MEDIAGW_MEDIA_SOCKET",
        default_value = "/run/mediagw/media.sock"
    )]
    pub media_socket: PathBuf,

    /// The control plane's local HTTP listener (calls, sessions, hangup).
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "MEDIAGW_CONTROLPLANE",
        default_value = "http://127.0.0.1:9110"
    )]
    pub controlplane: String,

    /// Print the server's result as one JSON object, for scripts.
    #[arg(long, global = true)]
    pub json: bool,

    /// Seconds to wait for each answer.
    #[arg(long, global = true, value_name = "SECS", default_value = "5", value_parser = parse_timeout)]
    pub timeout: Duration,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The dataplane's workers and totals.
    Status,
    /// List endpoints.
    Endpoints {
        /// Only this tenant's.
        #[arg(long, value_name = "T")]
        tenant: Option<TenantId>,
    },
    /// One endpoint's full statistics.
    Stats {
        /// The endpoint, `ep-1a2b`.
        endpoint: EndpointId,
    },
    /// Open an RTP endpoint; prints its id and local address.
    Create(Create),
    /// Close an endpoint; prints its final statistics.
    Destroy {
        /// The endpoint, `ep-1a2b`.
        endpoint: EndpointId,
    },
    /// Refuse new endpoints, keep serving the existing ones.
    Drain,
    /// Stop the dataplane: after draining, or at once with --now.
    Shutdown {
        /// Destroy every endpoint and exit now instead of draining.
        #[arg(long)]
        now: bool,
    },
    /// Record an endpoint's received audio to a WAV file.
    Tap(Tap),
    /// Play a WAV file into an endpoint's call.
    Play(Play),
    /// A live view of the dataplane, busiest endpoints first.
    Watch(Watch),
    /// The control plane's live calls on this host.
    Calls,
    /// Sessions in the control plane's store (live and recently ended).
    Sessions {
        /// Only this tenant's.
        #[arg(long, value_name = "T")]
        tenant: Option<TenantId>,
    },
    /// Hang up a call (by its session id).
    Hangup {
        /// The session, as `calls` shows it.
        session: SessionId,
    },
}

/// `create`.
#[derive(Debug, Args)]
pub struct Create {
    /// Whose call.
    #[arg(long, value_name = "T")]
    pub tenant: TenantId,
    /// Which call (usually the Asterisk channel's unique id).
    #[arg(long, value_name = "S")]
    pub session: SessionId,
    /// The codec Asterisk sends: PCMU, PCMA or slin16.
    #[arg(long, default_value = "PCMU")]
    pub codec: Codec,
    /// Outbound packetization, ms: 10, 20, ..., 60.
    #[arg(long, value_name = "MS", value_parser = parse_ptime)]
    pub ptime: Option<u16>,
    /// RTP payload type; default: the codec's.
    #[arg(long, value_name = "PT", value_parser = clap::value_parser!(u8).range(0..=127))]
    pub payload_type: Option<u8>,
    /// Open the RTCP port (RTP port + 1) too.
    #[arg(long)]
    pub rtcp: bool,
    /// The jitter buffer's lowest target delay, ms (with --jitter-max).
    #[arg(long, value_name = "MS", requires = "jitter_max")]
    pub jitter_min: Option<u16>,
    /// The jitter buffer's highest target delay, ms (with --jitter-min).
    #[arg(long, value_name = "MS", requires = "jitter_min")]
    pub jitter_max: Option<u16>,
    /// Local address to bind; default: the dataplane's.
    #[arg(long, value_name = "IP")]
    pub bind_ip: Option<IpAddr>,
}

/// `tap`.
#[derive(Debug, Args)]
pub struct Tap {
    /// The endpoint, `ep-1a2b`.
    pub endpoint: EndpointId,
    /// The WAV file to write (mono PCM16 at the endpoint's rate).
    #[arg(long, short, value_name = "FILE.wav")]
    pub out: PathBuf,
    /// Stop after this much media (50 frames a second); default: until
    /// Ctrl-C or the endpoint goes away.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub seconds: Option<u64>,
}

/// `play`.
#[derive(Debug, Args)]
pub struct Play {
    /// The endpoint, `ep-1a2b`.
    pub endpoint: EndpointId,
    /// A mono 16-bit WAV at the endpoint codec's rate (8000 or 16000 Hz).
    pub file: PathBuf,
}

/// `watch`.
#[derive(Debug, Args)]
pub struct Watch {
    /// Milliseconds between refreshes.
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..))]
    pub interval: u64,
    /// Stop after this many refreshes; default: until Ctrl-C.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Show at most this many endpoints.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,
    /// Only this tenant's endpoints.
    #[arg(long, value_name = "T")]
    pub tenant: Option<TenantId>,
}

impl Create {
    /// The jitter bounds, checked as the server would.
    pub fn jitter(&self) -> Result<Option<JitterBounds>, CtlError> {
        let (min_ms, max_ms) = match (self.jitter_min, self.jitter_max) {
            (Some(min), Some(max)) => (min, max),
            (None, None) => return Ok(None),
            // clap's `requires` makes these pairs.
            _ => {
                return Err(CtlError::Usage(
                    "--jitter-min and --jitter-max go together".into(),
                ));
            }
        };
        if min_ms > max_ms {
            return Err(CtlError::Usage(format!(
                "--jitter-min ({min_ms}) must not exceed --jitter-max ({max_ms})"
            )));
        }
        if max_ms > JitterBounds::MAX_MS {
            return Err(CtlError::Usage(format!(
                "--jitter-max must be at most {} ms, got {max_ms}",
                JitterBounds::MAX_MS
            )));
        }
        Ok(Some(JitterBounds { min_ms, max_ms }))
    }
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("expected seconds, got {s:?}"))?;
    if !(secs > 0.0 && secs <= 3600.0) {
        return Err(format!("must be more than 0 and at most 3600, got {s}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_ptime(s: &str) -> Result<u16, String> {
    let ms: u16 = s
        .parse()
        .map_err(|_| format!("expected milliseconds, got {s:?}"))?;
    if !(10..=60).contains(&ms) || !ms.is_multiple_of(10) {
        return Err(format!(
            "must be a multiple of 10 from 10 to 60 (default {DEFAULT_PTIME_MS}), got {ms}"
        ));
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use clap::error::ErrorKind;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("mediagwctl").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn globals_go_anywhere_and_have_defaults() {
        let cli = parse(&["status"]).unwrap();
        assert_eq!(cli.timeout, Duration::from_secs(5));
        assert!(!cli.json);
        let cli = parse(&[
            "endpoints",
            "--tenant",
            "acme",
            "--json",
            "--socket",
            "/tmp/c.sock",
            "--timeout",
            "0.5",
        ])
        .unwrap();
        assert!(cli.json);
        assert_eq!(cli.socket, PathBuf::from("/tmp/c.sock"));
        assert_eq!(cli.timeout, Duration::from_millis(500));
        let Command::Endpoints { tenant } = cli.command else {
            panic!("{:?}", cli.command)
        };
        assert_eq!(tenant.unwrap().as_str(), "acme");
    }

    #[test]
    fn create_takes_everything() {
        let cli = parse(&[
            "create",
            "--tenant",
            "acme",
            "--session",
            "1715000000.42",
            "--codec",
            "alaw",
            "--ptime",
            "40",
            "--rtcp",
            "--jitter-min",
            "20",
            "--jitter-max",
            "200",
        ])
        .unwrap();
        let Command::Create(c) = cli.command else {
            panic!()
        };
        assert_eq!(c.codec, Codec::Pcma);
        assert_eq!(c.ptime, Some(40));
        assert!(c.rtcp);
        assert_eq!(
            c.jitter().unwrap(),
            Some(JitterBounds {
                min_ms: 20,
                max_ms: 200
            })
        );
        let Command::Create(c) = parse(&["create", "--tenant", "t", "--session", "s"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(
            (c.codec, c.ptime, c.jitter().unwrap()),
            (Codec::Pcmu, None, None)
        );
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        let kinds = [
            (&["stats", "1a2b"][..], ErrorKind::ValueValidation),
            (&["stats"][..], ErrorKind::MissingRequiredArgument),
            (
                &["create", "--tenant", "a b", "--session", "s"][..],
                ErrorKind::ValueValidation,
            ),
            (
                &[
                    "create",
                    "--tenant",
                    "t",
                    "--session",
                    "s",
                    "--codec",
                    "opus",
                ][..],
                ErrorKind::ValueValidation,
            ),
            (
                &["create", "--tenant", "t", "--session", "s", "--ptime", "25"][..],
                ErrorKind::ValueValidation,
            ),
            (
                &[
                    "create",
                    "--tenant",
                    "t",
                    "--session",
                    "s",
                    "--jitter-min",
                    "20",
                ][..],
                ErrorKind::MissingRequiredArgument,
            ),
            (
                &["status", "--timeout", "0"][..],
                ErrorKind::ValueValidation,
            ),
            (
                &["tap", "ep-1", "--seconds", "1"][..],
                ErrorKind::MissingRequiredArgument,
            ),
            (
                &["tap", "ep-1", "--out", "x.wav", "--seconds", "0"][..],
                ErrorKind::ValueValidation,
            ),
            (
                &["watch", "--interval", "10"][..],
                ErrorKind::ValueValidation,
            ),
            (&["frobnicate"][..], ErrorKind::InvalidSubcommand),
        ];
        for (args, kind) in kinds {
            let e = parse(args).expect_err(&format!("{args:?}"));
            assert_eq!(e.kind(), kind, "{args:?}: {e}");
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn jitter_bounds_are_checked() {
        let create = |min: &str, max: &str| {
            let cli = parse(&[
                "create",
                "--tenant",
                "t",
                "--session",
                "s",
                "--jitter-min",
                min,
                "--jitter-max",
                max,
            ])
            .unwrap();
            let Command::Create(c) = cli.command else {
                panic!()
            };
            c.jitter()
        };
        let e = create("50", "40").unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("must not exceed"), "{e}");
        assert!(create("0", "2001").is_err());
        assert!(create("0", "2000").is_ok());
    }

    #[test]
    fn watch_defaults() {
        let Command::Watch(w) = parse(&["watch"]).unwrap().command else {
            panic!()
        };
        assert_eq!((w.interval, w.count, w.top), (1000, None, 20));
    }
}
