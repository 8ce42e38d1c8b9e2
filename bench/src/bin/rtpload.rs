//! `rtpload`: the dataplane capacity harness. `rtpload all` reproduces every
//! table and the plot of PERFORMANCE.md; the other subcommands run one part.
//! See the `mediagw_bench` crate docs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mediagw_bench::daemon::Daemon;
use mediagw_bench::error::{BenchError, Result};
use mediagw_bench::guard::{InstanceLock, install_signal_handlers};
use mediagw_bench::procfs::{self, Machine, now};
use mediagw_bench::report::{self, Report, Settings};
use mediagw_bench::run::{self, Impair, Kind, LoadResult, Setup};
use mediagw_bench::sender::SenderConfig;
use mediagw_bench::trace::{self, Variant};
use mediagw_bench::{cgrind, footprint, linger, micro, plot};
use mediagw_dataplane::netsim::{GilbertElliott, Impairment};

// The daemon's allocator, so footprints and the baselines' allocations
// compare like with like (the naive receiver allocates per packet: this
// makes it cheaper, not dearer).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mediagw's dataplane capacity harness: paced G.711 streams over loopback
/// to the bare ceiling, a naive tokio receiver and the real daemon, measured
/// in the same run.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
    /// Core of the sending thread.
    #[arg(long, global = true, default_value_t = 0)]
    sender_core: usize,
    /// Core of the baseline receivers (the daemon pins its worker to core 1
    /// of 2 itself).
    #[arg(long, global = true, default_value_t = 1)]
    receiver_core: usize,
    /// The daemon binary (default: next to rtpload).
    #[arg(long, global = true)]
    daemon: Option<PathBuf>,
    /// Warm-up before each window, s.
    #[arg(long, global = true, default_value_t = 2.0)]
    warmup: f64,
    /// Seed of the sender.
    #[arg(long, global = true, default_value_t = 0x006d_6564_6961_6777)]
    seed: u64,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Everything: micro-benchmark table, sender ceiling, load sweep, long
    /// runs, an impaired run, memory growth, wait strategy, instruction
    /// counts. Writes report.json, report.md and capacity.svg.
    All {
        /// Output directory.
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
        /// Loads (streams) of the sweep; the sender's measured maximum is
        /// added.
        #[arg(long, value_delimiter = ',', default_values_t = [500usize, 1000, 2000, 2500, 4000, 5000])]
        loads: Vec<usize>,
        /// Receivers of the sweep.
        #[arg(long, value_delimiter = ',', default_values_t = ["ceiling-uring".to_owned(), "ceiling-recvmmsg".to_owned(), "naive".to_owned(), "mediagw".to_owned()])]
        receivers: Vec<String>,
        /// Window of each sweep run, s.
        #[arg(long, default_value_t = 6.0)]
        window: f64,
        /// Long run at the largest loss-free load, s (0: none).
        #[arg(long, default_value_t = 60.0)]
        hold: f64,
        /// Receivers of the long runs.
        #[arg(long, value_delimiter = ',', default_values_t = ["mediagw".to_owned(), "ceiling-uring".to_owned(), "naive".to_owned()])]
        hold_receivers: Vec<String>,
        /// Idle endpoints the memory run grows to.
        #[arg(long, default_value_t = 10_000)]
        idle: usize,
        /// Criterion's output directory (micro-benchmark estimates).
        #[arg(long, default_value = "target/criterion")]
        criterion_dir: PathBuf,
        /// Skip the callgrind instruction counts.
        #[arg(long)]
        no_callgrind: bool,
        /// Time budget of the whole run, minutes: disturbed runs are
        /// repeated and long runs made only while it allows.
        #[arg(long, default_value_t = 12.0)]
        budget: f64,
    },
    /// One capacity run; prints its figures as JSON.
    Load {
        /// ceiling-uring, ceiling-recvmmsg, naive or mediagw.
        #[arg(long, default_value = "mediagw")]
        receiver: String,
        /// Streams.
        #[arg(long, default_value_t = 1000)]
        streams: usize,
        /// Window, s.
        #[arg(long, default_value_t = 6.0)]
        window: f64,
        /// Add the impairments of the impaired run.
        #[arg(long)]
        impaired: bool,
    },
    /// The sender unpaced: the most it can offer.
    Calibrate {
        /// Destination sockets.
        #[arg(long, default_value_t = 5000)]
        sockets: usize,
    },
    /// Memory growth to many idle endpoints and control socket rates.
    Memory {
        /// Idle endpoints to grow to.
        #[arg(long, default_value_t = 10_000)]
        idle: usize,
    },
    /// The wait strategy's cost (the former measure_linger test).
    Linger,
    /// Instruction counts of the per-packet cores under callgrind.
    Callgrind {
        /// Streams of the trace.
        #[arg(long, default_value_t = 64)]
        streams: usize,
        /// Packets of the short run (the long one has twice as many).
        #[arg(long, default_value_t = 20_000)]
        packets: u64,
    },
    /// Runs the fixed trace through a per-packet core (what callgrind
    /// measures).
    Trace {
        /// generate, ceiling, mediagw or naive.
        #[arg(long)]
        variant: String,
        /// Streams.
        #[arg(long, default_value_t = 64)]
        streams: usize,
        /// Packets.
        #[arg(long, default_value_t = 20_000)]
        packets: u64,
    },
    /// Resident memory of each part of an endpoint.
    Footprint,
    /// The criterion micro-benchmark table.
    Micro {
        /// Criterion's output directory.
        #[arg(long, default_value = "target/criterion")]
        criterion_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match real_main(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_interrupted() => {
            eprintln!("rtpload: interrupted; every process and socket it started is gone");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("rtpload: {e}");
            ExitCode::FAILURE
        }
    }
}

fn setup(a: &Args) -> Setup {
    Setup {
        daemon: a.daemon.clone().unwrap_or_else(Daemon::default_binary),
        sender_core: a.sender_core,
        receiver_core: a.receiver_core,
        rcvbuf: mediagw_dataplane::config::Config::default()
            .dataplane
            .rcvbuf_bytes,
        warmup: Duration::from_secs_f64(a.warmup),
        seed: a.seed,
    }
}

fn kinds(names: &[String]) -> Result<Vec<Kind>> {
    names
        .iter()
        .map(|n| Kind::parse(n).ok_or_else(|| BenchError::new(format!("unknown receiver {n:?}"))))
        .collect()
}

/// The impaired run's path: 10 ms jitter, 1% random loss plus 2% in bursts
/// of 3, 1% reordered by up to 40 ms, 0.5% duplicated, and an SSRC change
/// every 5 s.
fn impairment() -> Impair {
    Impair {
        impairment: Impairment {
            jitter: Duration::from_millis(10),
            loss: 0.01,
            burst: Some(GilbertElliott::with_mean_loss(0.02, 3.0)),
            reorder: 0.01,
            reorder_delay: Duration::from_millis(40),
            duplicate: 0.005,
            ..Impairment::NONE
        },
        ssrc_change_every: Some(250),
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).map_err(|e| BenchError::new(e.to_string()))?
    );
    Ok(())
}

fn real_main(a: Args) -> Result<()> {
    if let Cmd::Trace {
        variant,
        streams,
        packets,
    } = &a.cmd
    {
        // Runs under valgrind: no lock, no signals, no threads.
        let v = Variant::parse(variant)
            .ok_or_else(|| BenchError::new(format!("unknown variant {variant:?}")))?;
        let sum = trace::run(v, *streams, *packets)?;
        println!("{} {streams} {packets} {sum}", v.name());
        return Ok(());
    }
    if let Cmd::Micro { criterion_dir } = &a.cmd {
        return print_json(&micro::read(criterion_dir)?);
    }
    if let Cmd::Footprint = &a.cmd {
        return print_json(&footprint::measure_all()?);
    }
    install_signal_handlers()?;
    let lock = InstanceLock::acquire(&InstanceLock::default_path())?;
    let setup = setup(&a);
    let cores = Machine::probe().nproc;
    if setup.sender_core >= cores || setup.receiver_core >= cores {
        return Err(BenchError::new(format!(
            "this machine has {cores} cores: --sender-core and --receiver-core must be below that"
        )));
    }
    let result = match &a.cmd {
        Cmd::Load {
            receiver,
            streams,
            window,
            impaired,
        } => {
            let kind = kinds(std::slice::from_ref(receiver))?[0];
            let r = run::run_load(
                kind,
                *streams,
                Duration::from_secs_f64(*window),
                impaired.then(impairment),
                &setup,
            )?;
            print_json(&r)
        }
        Cmd::Calibrate { sockets } => {
            print_json(&run::calibrate(*sockets, Duration::from_secs(3), &setup)?)
        }
        Cmd::Memory { idle } => print_json(&run::memory_growth(&steps(*idle), &setup)?),
        Cmd::Linger => print_json(&linger::measure(setup.sender_core, setup.receiver_core)?),
        Cmd::Callgrind { streams, packets } => {
            let exe = std::env::current_exe()?;
            print_json(&cgrind::measure(&exe, *streams, *packets)?)
        }
        Cmd::All {
            out,
            loads,
            receivers,
            window,
            hold,
            hold_receivers,
            idle,
            criterion_dir,
            no_callgrind,
            budget,
        } => all(
            &a,
            &setup,
            AllArgs {
                out,
                loads,
                receivers: &kinds(receivers)?,
                window: Duration::from_secs_f64(*window),
                hold: Duration::from_secs_f64(*hold),
                hold_receivers: &kinds(hold_receivers)?,
                idle: *idle,
                criterion_dir,
                callgrind: !no_callgrind,
                budget: Duration::from_secs_f64(budget * 60.0),
            },
        ),
        Cmd::Trace { .. } | Cmd::Micro { .. } | Cmd::Footprint => Ok(()),
    };
    drop(lock);
    result
}

/// `rtpload footprint` in a child process, so its allocations neither
/// stay in the harness nor land in memory the harness made resident.
fn footprint_child() -> Result<Vec<footprint::Part>> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .arg("footprint")
        .output()
        .map_err(|e| BenchError::new(format!("running rtpload footprint: {e}")))?;
    if !out.status.success() {
        return Err(BenchError::new(format!(
            "rtpload footprint failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| BenchError::new(format!("rtpload footprint's output: {e}")))
}

fn steps(idle: usize) -> Vec<usize> {
    let mut s: Vec<usize> = [1_000, 2_500, 5_000]
        .into_iter()
        .filter(|&x| x < idle)
        .collect();
    s.push(idle);
    s
}

struct AllArgs<'a> {
    out: &'a PathBuf,
    loads: &'a [usize],
    receivers: &'a [Kind],
    window: Duration,
    hold: Duration,
    hold_receivers: &'a [Kind],
    idle: usize,
    criterion_dir: &'a PathBuf,
    callgrind: bool,
    budget: Duration,
}

fn say(what: impl std::fmt::Display) {
    eprintln!("[{}] {what}", procfs::utc_now());
}

fn all(a: &Args, setup: &Setup, x: AllArgs<'_>) -> Result<()> {
    let started = now();
    let started_utc = procfs::utc_now();
    let load0 = procfs::loadavg();
    std::fs::create_dir_all(x.out)?;
    let micro = match micro::read(x.criterion_dir) {
        Ok(m) => m,
        Err(e) => {
            say(format_args!("no micro-benchmark figures: {e}"));
            Vec::new()
        }
    };
    say("sender ceiling (unpaced, 3 s)");
    let cal = run::calibrate(5_000, Duration::from_secs(3), setup)?;
    say(format_args!(
        "sender ceiling: {:.0} datagrams/s = {:.0} streams",
        cal.pps, cal.streams
    ));
    // The most the sender can offer, paced, with 5% headroom for the
    // pacing itself, in steps of 250.
    let max = ((cal.streams * 0.95) as usize / 250) * 250;
    let mut loads: Vec<usize> = x.loads.to_vec();
    if max > 0 && !loads.contains(&max) {
        loads.push(max);
    }
    loads.sort_unstable();
    loads.dedup();
    let feasible = (cal.streams * 0.9) as usize;
    let deadline = started + x.budget;
    // What must still fit after the sweep: the long runs, the impaired run,
    // memory, footprint, wait strategy, callgrind.
    let hold_each = x.hold + Duration::from_secs(15);
    let tail = Duration::from_secs(100);
    let holds_total = hold_each * x.hold_receivers.len() as u32;
    let left = || deadline.saturating_since(now());
    let mut results: Vec<LoadResult> = Vec::new();
    for &n in &loads {
        for &k in x.receivers {
            say(format_args!("{} with {n} streams", k.name()));
            let tries = if left() > holds_total + tail + Duration::from_secs(60) {
                2
            } else {
                1
            };
            let r = run::run_settled(k, n, x.window, None, setup, feasible, tries)?;
            say(format_args!(
                "  lost {}, {:.0} ns/packet, {:.3} wakeups/packet, p99 {:.0} us{}",
                r.lost,
                r.cpu_ns_per_packet,
                r.wakeups_per_packet,
                r.latency.p99_us,
                if r.sender_bound { ", sender-bound" } else { "" }
            ));
            results.push(r);
        }
    }
    let mut holds = Vec::new();
    let mut skipped = Vec::new();
    if !x.hold.is_zero() {
        for &k in x.hold_receivers {
            // The largest load this receiver took without loss; a load the
            // sender could not offer on schedule counts if nothing was lost.
            let n = results
                .iter()
                .filter(|r| r.receiver == k && r.lost == 0 && r.kernel_drops == 0)
                .map(|r| r.streams)
                .max();
            let Some(n) = n else { continue };
            if left() < hold_each + tail {
                say(format_args!(
                    "long run of {} skipped: out of time budget",
                    k.name()
                ));
                skipped.push(k.name());
                continue;
            }
            say(format_args!(
                "long run: {} with {n} streams for {:?}",
                k.name(),
                x.hold
            ));
            let r = run::run_load(k, n, x.hold, None, setup)?;
            say(format_args!(
                "  lost {}{}",
                r.lost,
                if r.sender_bound { ", sender-bound" } else { "" }
            ));
            holds.push(r);
        }
    }
    say("impaired run: mediagw with 2500 streams");
    let impaired = vec![run::run_settled(
        Kind::Mediagw,
        2_500,
        x.window,
        Some(impairment()),
        setup,
        feasible,
        if left() > tail { 2 } else { 1 },
    )?];
    say(format_args!("memory growth to {} idle endpoints", x.idle));
    let memory = Some(run::memory_growth(&steps(x.idle), setup)?);
    say("footprint of an endpoint's parts");
    let footprint = footprint_child()?;
    say("wait strategy");
    let linger = linger::measure(setup.sender_core, setup.receiver_core)?;
    let callgrind = if x.callgrind {
        say("instruction counts (callgrind)");
        cgrind::measure(&std::env::current_exe()?, 64, 20_000)?
    } else {
        Vec::new()
    };
    let mut report = Report {
        tool: concat!("rtpload ", env!("CARGO_PKG_VERSION")).to_owned(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        started_utc,
        finished_utc: procfs::utc_now(),
        duration_s: now().saturating_since(started).as_secs_f64(),
        machine: Machine::probe(),
        loadavg: (load0, procfs::loadavg()),
        settings: Settings {
            window_s: x.window.as_secs_f64(),
            warmup_s: setup.warmup.as_secs_f64(),
            hold_s: x.hold.as_secs_f64(),
            sender_core: setup.sender_core,
            receiver_core: setup.receiver_core,
            seed: a.seed,
            send_tick_us: SenderConfig::default().tick.as_micros() as u64,
            daemon: setup.daemon.display().to_string(),
        },
        calibration: Some(cal),
        loads: results,
        holds,
        impaired,
        memory,
        footprint,
        linger,
        callgrind,
        micro,
        goals: Vec::new(),
        notes: skipped
            .iter()
            .map(|k| format!("long run of {k} skipped: the run's time budget was spent"))
            .collect(),
    };
    report.goals = report::goals(&report);
    let json = serde_json::to_string_pretty(&report).map_err(|e| BenchError::new(e.to_string()))?;
    std::fs::write(x.out.join("report.json"), json)?;
    std::fs::write(x.out.join("report.md"), report::markdown(&report))?;
    plot::draw(
        &report.loads,
        &format!(
            "mediagw dataplane on {} ({} CPUs), {}",
            report.machine.cpu_model, report.machine.nproc, report.started_utc
        ),
        &x.out.join("capacity.svg"),
    )?;
    say(format_args!(
        "done in {:.0} s: {}/report.md, report.json, capacity.svg",
        report.duration_s,
        x.out.display()
    ));
    for g in &report.goals {
        say(format_args!(
            "goal (issue {}): {} -> {} [{}]",
            g.issue,
            g.goal,
            g.measured,
            match g.met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "not measured",
            }
        ));
    }
    Ok(())
}
