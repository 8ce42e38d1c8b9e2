//! The run's report: every figure as JSON (machine-readable), the same as
//! Markdown tables (pasted into PERFORMANCE.md), and the goals of issues 3
//! and 5, each met or missed and by how much.

use std::fmt::Write as _;

use serde::Serialize;

use crate::cgrind::IrRow;
use crate::linger::LingerRow;
use crate::micro::MicroRow;
use crate::procfs::Machine;
use crate::run::{Calibration, Kind, LoadResult, MemoryGrowth};

/// Everything one `rtpload` run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `rtpload` and its version.
    pub tool: String,
    /// The command line.
    pub command: String,
    /// When it started, UTC.
    pub started_utc: String,
    /// When it ended, UTC.
    pub finished_utc: String,
    /// How long it took, s.
    pub duration_s: f64,
    /// The machine.
    pub machine: Machine,
    /// 1-minute load average before and after (other work on the machine).
    pub loadavg: (f64, f64),
    /// Settings of the capacity runs.
    pub settings: Settings,
    /// The sender unpaced: the most it can offer.
    pub calibration: Option<Calibration>,
    /// The load sweep.
    pub loads: Vec<LoadResult>,
    /// The long runs at the largest loss-free load.
    pub holds: Vec<LoadResult>,
    /// Runs with impairments.
    pub impaired: Vec<LoadResult>,
    /// The daemon with many idle endpoints.
    pub memory: Option<MemoryGrowth>,
    /// Resident memory of each part of an endpoint.
    pub footprint: Vec<crate::footprint::Part>,
    /// The wait strategy's cost.
    pub linger: Vec<LingerRow>,
    /// Instruction counts.
    pub callgrind: Vec<IrRow>,
    /// Criterion micro-benchmarks.
    pub micro: Vec<MicroRow>,
    /// The goals, checked.
    pub goals: Vec<Goal>,
    /// What the run left out or repeated, and why.
    pub notes: Vec<String>,
}

/// Settings of the capacity runs.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Measurement window, s.
    pub window_s: f64,
    /// Warm-up before it, s.
    pub warmup_s: f64,
    /// Long run, s.
    pub hold_s: f64,
    /// Core of the sender.
    pub sender_core: usize,
    /// Core of the baseline receivers (the daemon pins its own worker).
    pub receiver_core: usize,
    /// Sender seed.
    pub seed: u64,
    /// Sender batch tick, µs.
    pub send_tick_us: u64,
    /// The daemon binary.
    pub daemon: String,
}

/// A goal, checked.
#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    /// Which issue.
    pub issue: u32,
    /// What is asked.
    pub goal: String,
    /// What was measured.
    pub measured: String,
    /// Met or not; `None` when this run did not measure it.
    pub met: Option<bool>,
}

fn row(loads: &[LoadResult], kind: Kind, streams: usize) -> Option<&LoadResult> {
    loads
        .iter()
        .find(|r| r.receiver == kind && r.streams == streams && !r.impaired)
}

fn fmt_pct(x: f64) -> String {
    format!("{:+.0}%", (x - 1.0) * 100.0)
}

/// Checks the goals of issues 3 and 5 against what the run measured.
pub fn goals(r: &Report) -> Vec<Goal> {
    let mut g = Vec::new();
    // Issue 3.
    let micro = |id: &str| r.micro.iter().find(|m| m.id == id);
    if let (Some(sum), Some(pipe)) = (
        micro("per_packet/sum_of_parts"),
        micro("per_packet/pipeline"),
    ) {
        let worst = sum.mean_ns.max(pipe.mean_ns);
        g.push(Goal {
            issue: 3,
            goal:
                "parse + statistics + decode + jitter buffer + ring under 150 ns per 20 ms packet"
                    .into(),
            measured: format!(
                "sum of the parts {:.0} ns, whole pipeline {:.0} ns ({} over 150 ns)",
                sum.mean_ns,
                pipe.mean_ns,
                fmt_pct(worst / 150.0)
            ),
            met: Some(worst < 150.0),
        });
    }
    if let Some(d) = micro("decode_160/ulaw_table") {
        let gsps = 160.0 / d.mean_ns;
        g.push(Goal {
            issue: 3,
            goal: "decode at least 1 G samples/s".into(),
            measured: format!(
                "{gsps:.2} G samples/s (mu-law, 160 samples in {:.1} ns)",
                d.mean_ns
            ),
            met: Some(gsps >= 1.0),
        });
    }
    // Issue 5.
    let sweep: Vec<&LoadResult> = r
        .loads
        .iter()
        .filter(|x| x.receiver == Kind::Mediagw && !x.impaired)
        .collect();
    if !sweep.is_empty() {
        let lossy: Vec<String> = sweep
            .iter()
            .filter(|x| x.lost != 0 || x.kernel_drops != 0)
            .map(|x| format!("{} streams: {} lost", x.streams, x.lost))
            .collect();
        let on_schedule: Vec<String> = sweep
            .iter()
            .filter(|x| !x.sender_bound)
            .map(|x| x.streams.to_string())
            .collect();
        let most = sweep.iter().map(|x| x.sent_pps).fold(0.0, f64::max);
        let hold = r.holds.iter().find(|h| h.receiver == Kind::Mediagw);
        let want = sweep
            .iter()
            .map(|x| x.streams)
            .max()
            .unwrap_or(0)
            .min(5_000);
        let hold_ok = hold.is_some_and(|h| h.lost == 0 && h.kernel_drops == 0 && h.streams >= want);
        g.push(Goal {
            issue: 5,
            goal: "0 loss at every load the sender can offer, up to 5,000 paced streams for 60 s".into(),
            measured: format!(
                "sweep: {} (the sender kept its schedule at {} streams; it offered at most {:.0} packets/s = {:.0} streams); long run: {}",
                if lossy.is_empty() {
                    format!(
                        "0 lost at every load, {} to {} streams",
                        sweep.iter().map(|x| x.streams).min().unwrap_or(0),
                        sweep.iter().map(|x| x.streams).max().unwrap_or(0)
                    )
                } else {
                    lossy.join(", ")
                },
                if on_schedule.is_empty() {
                    "no load".to_owned()
                } else {
                    on_schedule.join(", ")
                },
                most,
                most / 50.0,
                hold.map_or("not run".to_owned(), |h| format!(
                    "{} streams for {:.0} s, {} datagrams at {:.0}/s, {} lost{}",
                    h.streams,
                    h.window_s,
                    h.sent,
                    h.sent_pps,
                    h.lost,
                    if h.sender_bound { " (sender-bound)" } else { "" }
                ))
            ),
            met: Some(lossy.is_empty() && hold_ok),
        });
    }
    let at = 5_000;
    if let (Some(m), Some(c)) = (
        row(&r.loads, Kind::Mediagw, at),
        row(&r.loads, Kind::CeilingUring, at),
    ) {
        let ratio = m.cpu_ns_per_packet / c.cpu_ns_per_packet;
        g.push(Goal {
            issue: 5,
            goal: "worker CPU per packet at most 1.3x the bare ceiling's at 5,000 streams".into(),
            measured: format!(
                "{:.0} ns vs {:.0} ns: {ratio:.2}x ({})",
                m.cpu_ns_per_packet,
                c.cpu_ns_per_packet,
                if ratio <= 1.3 {
                    "within".to_owned()
                } else {
                    format!("{} over the 1.3x", fmt_pct(ratio / 1.3))
                }
            ),
            met: Some(ratio <= 1.3),
        });
    }
    if let (Some(m), Some(n)) = (
        row(&r.loads, Kind::Mediagw, at),
        row(&r.loads, Kind::Naive, at),
    ) {
        let ratio = n.cpu_ns_per_packet / m.cpu_ns_per_packet;
        g.push(Goal {
            issue: 5,
            goal: "at least 3x less CPU per packet than the naive tokio receiver (5,000 streams)"
                .into(),
            measured: format!(
                "naive {:.0} ns vs mediagw {:.0} ns: {ratio:.2}x{}",
                n.cpu_ns_per_packet,
                m.cpu_ns_per_packet,
                if n.lost > 0 {
                    format!(" (naive lost {} packets: it was saturated)", n.lost)
                } else {
                    String::new()
                }
            ),
            met: Some(ratio >= 3.0),
        });
    }
    if !sweep.is_empty() {
        let worst = sweep
            .iter()
            .map(|x| (x.wakeups_per_packet, x.streams))
            .fold((0.0, 0), |a, b| if b.0 > a.0 { b } else { a });
        g.push(Goal {
            issue: 5,
            goal: "no wakeup per packet (worker voluntary context switches per packet <= 0.1)"
                .into(),
            measured: format!("at most {:.3} per packet ({} streams)", worst.0, worst.1),
            met: Some(worst.0 <= 0.1),
        });
    }
    if let Some(m) = row(&r.loads, Kind::Mediagw, 2_500) {
        let tick_us = 1_000.0;
        let ok = m.latency.p99_us < 100.0 && m.latency.p999_us < 1_000.0 + tick_us;
        g.push(Goal {
            issue: 5,
            goal: "half load (2,500 streams): p99 arrival-to-ring under 100 us, p99.9 under 1 ms + the 1 ms tick".into(),
            measured: format!(
                "p99 {:.0} us, p99.9 {:.0} us{}",
                m.latency.p99_us,
                m.latency.p999_us,
                m.daemon.as_ref().map_or(String::new(), |d| format!(
                    "; frame play-out lateness p99 {:.0} us, p99.9 {:.0} us (apart: jitter buffer delay {:.0} ms)",
                    d.playout_lateness.p99_us, d.playout_lateness.p999_us, d.target_delay_ms
                ))
            ),
            met: Some(ok),
        });
    }
    let mut mem = Vec::new();
    if let Some(m) = &r.memory {
        mem.push((
            m.per_endpoint,
            format!(
                "{:.1} KiB per idle endpoint (to {})",
                m.per_endpoint / 1024.0,
                m.rss.last().map_or(0, |x| x.0)
            ),
        ));
    }
    if let Some(m) = row(&r.loads, Kind::Mediagw, at).and_then(|x| x.daemon.as_ref()) {
        mem.push((
            m.rss_per_stream,
            format!(
                "{:.1} KiB per stream with 5,000 flowing",
                m.rss_per_stream / 1024.0
            ),
        ));
    }
    if !mem.is_empty() {
        let worst = mem.iter().map(|m| m.0).fold(0.0, f64::max);
        g.push(Goal {
            issue: 5,
            goal: "at most 16 KiB resident per stream".into(),
            measured: mem
                .iter()
                .map(|m| m.1.clone())
                .collect::<Vec<_>>()
                .join("; "),
            met: Some(worst <= 16.0 * 1024.0),
        });
    }
    g
}

/// A duration in µs, with its unit.
fn dur(x: f64) -> String {
    if x >= 10_000.0 {
        format!("{:.1} ms", x / 1000.0)
    } else {
        format!("{x:.0} us")
    }
}

fn us(x: f64) -> String {
    if x >= 10_000.0 {
        format!("{:.1} ms", x / 1000.0)
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

/// The report as Markdown: one section per figure family.
pub fn markdown(r: &Report) -> String {
    let mut o = String::new();
    let m = &r.machine;
    let _ = writeln!(o, "## Run of {} UTC\n", r.started_utc);
    let _ = writeln!(
        o,
        "- machine: `{}`, {} CPUs (`nproc`), {}, kernel {}, {} MiB, clocksource {}",
        m.hostname, m.nproc, m.cpu_model, m.kernel, m.mem_mib, m.clocksource
    );
    let _ = writeln!(o, "- command: `{}`", r.command);
    let _ = writeln!(
        o,
        "- took {:.0} s; load average {:.2} before, {:.2} after (other work on the machine shows here)",
        r.duration_s, r.loadavg.0, r.loadavg.1
    );
    let s = &r.settings;
    let _ = writeln!(
        o,
        "- sender on core {}, receivers on core {} (the daemon pins its worker there itself); warm-up {:.0} s, window {:.0} s, long run {:.0} s; sender batch tick {} us; seed {:#x}\n",
        s.sender_core, s.receiver_core, s.warmup_s, s.window_s, s.hold_s, s.send_tick_us, s.seed
    );

    for n in &r.notes {
        let _ = writeln!(o, "- note: {n}");
    }
    if !r.notes.is_empty() {
        let _ = writeln!(o);
    }

    if !r.goals.is_empty() {
        let _ = writeln!(
            o,
            "### Goals\n\n| issue | goal | measured | met |\n|---|---|---|---|"
        );
        for g in &r.goals {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} |",
                g.issue,
                g.goal,
                g.measured,
                match g.met {
                    Some(true) => "**met**",
                    Some(false) => "**missed**",
                    None => "not measured",
                }
            );
        }
        let _ = writeln!(o);
    }

    if !r.micro.is_empty() {
        let _ = writeln!(
            o,
            "### Micro-benchmarks (criterion, `benches/media_core.rs`)\n\n| benchmark | mean | 95% CI | per element | baseline | ratio |\n|---|---:|---:|---:|---|---:|"
        );
        for x in &r.micro {
            let _ = writeln!(
                o,
                "| `{}` | {:.1} ns | {:.1}-{:.1} ns | {} | {} | {} |",
                x.id,
                x.mean_ns,
                x.ci_ns.0,
                x.ci_ns.1,
                if x.elements > 1 {
                    format!(
                        "{:.3} ns/sample ({:.2} G samples/s)",
                        x.mean_ns / x.elements as f64,
                        x.elements as f64 / x.mean_ns
                    )
                } else {
                    "per packet".to_owned()
                },
                x.baseline.map_or("-".to_owned(), |b| format!("`{b}`")),
                x.ratio.map_or("-".to_owned(), |v| format!("{v:.2}x")),
            );
        }
        let _ = writeln!(o);
    }

    if let Some(c) = &r.calibration {
        let _ = writeln!(
            o,
            "### Sender ceiling\n\nUnpaced, to {} sockets of the io_uring ceiling: **{:.0} datagrams/s = {:.0} streams of 20 ms**, {:.0} ns of sending-thread CPU per datagram (loopback: the kernel's receive path runs in the sender's softirq). Received {} of {} sent, {} kernel drops.\n",
            c.sockets,
            c.pps,
            c.streams,
            c.sender_cpu_ns_per_packet,
            c.received,
            c.sent,
            c.kernel_drops
        );
    }

    let mut loads: Vec<usize> = r.loads.iter().map(|x| x.streams).collect();
    loads.sort_unstable();
    loads.dedup();
    if !loads.is_empty() {
        let _ = writeln!(
            o,
            "### Capacity, per load\n\nCPU: the receiving thread(s) (`schedstat`); ratio: to `ceiling-uring` at the same load. Latency: kernel receive timestamp to the end of the receiver's batch (mediagw: its `receive_delay` histogram, bucket-interpolated). `sender stalled`: time the sender was preempted for more than 5 ms in the window (it then shifts its schedule rather than burst); `sender-bound`: it sent under 98% of the offered rate or stalled over 2% of the window. CPU pressure: share of the window some task on the machine waited for a CPU (`/proc/pressure/cpu`), ours and other people's.\n"
        );
        for n in &loads {
            let base = row(&r.loads, Kind::CeilingUring, *n).map(|x| x.cpu_ns_per_packet);
            let _ = writeln!(
                o,
                "#### {n} streams ({} packets/s offered)\n\n| receiver | sent/s | lost | CPU ns/pkt | CPU s/M pkt | vs ceiling | core share | wakeups/pkt | p50 us | p99 us | p99.9 us | sender stalled ms | CPU pressure | note |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
                n * 50
            );
            for k in Kind::ALL {
                let Some(x) = row(&r.loads, k, *n) else {
                    continue;
                };
                let _ = writeln!(
                    o,
                    "| {} | {:.0} | {} | {:.0} | {:.3} | {} | {:.1}% | {:.3} | {} | {} | {} | {:.0} | {:.0}% | {} |",
                    k.name(),
                    x.sent_pps,
                    x.lost,
                    x.cpu_ns_per_packet,
                    x.cpu_s_per_mpkt,
                    base.map_or("-".to_owned(), |b| format!(
                        "{:.2}x",
                        x.cpu_ns_per_packet / b
                    )),
                    x.core_share * 100.0,
                    x.wakeups_per_packet,
                    us(x.latency.p50_us),
                    us(x.latency.p99_us),
                    us(x.latency.p999_us),
                    x.sender_stalled_ms,
                    x.cpu_pressure * 100.0,
                    match (x.sender_bound, x.attempts > 1) {
                        (true, true) => format!("sender-bound (best of {} runs)", x.attempts),
                        (true, false) => "sender-bound".to_owned(),
                        (false, true) =>
                            format!("run {} of {} (earlier disturbed)", x.attempts, x.attempts),
                        (false, false) => String::new(),
                    }
                );
            }
            let _ = writeln!(o);
        }

        let _ = writeln!(
            o,
            "### Ratios across loads\n\n| streams | mediagw / ceiling-uring | mediagw / ceiling-recvmmsg | naive / mediagw | mediagw % of a core per 1,000 streams |\n|---:|---:|---:|---:|---:|"
        );
        for n in &loads {
            let get = |k| row(&r.loads, k, *n).map(|x| x.cpu_ns_per_packet);
            let m = get(Kind::Mediagw);
            let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
                _ => "-".to_owned(),
            };
            let _ = writeln!(
                o,
                "| {n} | {} | {} | {} | {} |",
                ratio(m, get(Kind::CeilingUring)),
                ratio(m, get(Kind::CeilingRecvmmsg)),
                ratio(get(Kind::Naive), m),
                row(&r.loads, Kind::Mediagw, *n).map_or("-".to_owned(), |x| format!(
                    "{:.1}%",
                    x.core_pct_per_1000_streams
                )),
            );
        }
        let _ = writeln!(o);

        let _ = writeln!(
            o,
            "### mediagw per load\n\n| streams | process CPU ns/pkt | engine waits/pkt | play-out lateness p50 / p99 / p99.9 us | jitter buffer delay ms | RSS empty MiB | RSS idle MiB | RSS streaming MiB | per stream KiB | create/s | destroy/s | endpoint stats: packets = sent per stream |\n|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        for n in &loads {
            let Some(x) = row(&r.loads, Kind::Mediagw, *n) else {
                continue;
            };
            let Some(d) = &x.daemon else { continue };
            let mib = |b: u64| b as f64 / 1024.0 / 1024.0;
            let _ = writeln!(
                o,
                "| {n} | {:.0} | {:.4} | {} / {} / {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {} |",
                d.process_cpu_ns_per_packet,
                d.engine_waits_per_packet,
                us(d.playout_lateness.p50_us),
                us(d.playout_lateness.p99_us),
                us(d.playout_lateness.p999_us),
                d.target_delay_ms,
                mib(d.rss_empty),
                mib(d.rss_idle),
                mib(d.rss_streaming),
                d.rss_per_stream / 1024.0,
                d.create_per_s,
                d.destroy_per_s,
                if d.endpoints.streams_mismatched == 0 {
                    "yes, every stream".to_owned()
                } else {
                    format!("{} streams differ", d.endpoints.streams_mismatched)
                }
            );
        }
        let _ = writeln!(o);

        let _ = writeln!(
            o,
            "### Where the CPU went (share of each core over the window)\n\nFrom `/proc/stat`, which the kernel samples at its timer tick: a thread that wakes in step with the tick (the daemon's worker sleeps to tick boundaries) is undercounted here; the per-thread figures above (`schedstat`, nanoseconds) are exact. The softirq share of core 0 is the kernel's loopback receive path, run for the sender.\n\n| streams | receiver | {} |\n|---:|---|{}",
            (0..r.machine.nproc)
                .map(|c| format!("core {c} busy / softirq / steal"))
                .collect::<Vec<_>>()
                .join(" | "),
            "---|".repeat(r.machine.nproc)
        );
        for n in &loads {
            for k in Kind::ALL {
                let Some(x) = row(&r.loads, k, *n) else {
                    continue;
                };
                let cores: Vec<String> = x
                    .cores
                    .iter()
                    .map(|c| {
                        format!(
                            "{:.0}% / {:.0}% / {:.0}%",
                            c.busy * 100.0,
                            c.softirq * 100.0,
                            c.steal * 100.0
                        )
                    })
                    .collect();
                let _ = writeln!(o, "| {n} | {} | {} |", k.name(), cores.join(" | "));
            }
        }
        let _ = writeln!(o);
    }

    if !r.holds.is_empty() {
        let _ = writeln!(
            o,
            "### Long runs at the largest loss-free load\n\n| receiver | streams | seconds | sent | received | lost | kernel drops | CPU ns/pkt | p99 us | p99.9 us |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for x in &r.holds {
            let _ = writeln!(
                o,
                "| {} | {} | {:.0} | {} | {} | {} | {} | {:.0} | {} | {} |",
                x.receiver.name(),
                x.streams,
                x.window_s,
                x.sent,
                x.received,
                x.lost,
                x.kernel_drops,
                x.cpu_ns_per_packet,
                us(x.latency.p99_us),
                us(x.latency.p999_us)
            );
        }
        let _ = writeln!(o);
    }

    for x in &r.impaired {
        let t = &x.sender;
        let _ = writeln!(
            o,
            "### Impaired run: {} with {} streams\n\nSender's exact account: {} generated, {} dropped on purpose, {} duplicated, {} sent on a reordering detour, {} SSRC changes, {} datagrams sent; {} received ({} lost in the kernel or receiver). CPU {:.0} ns/packet, receive delay p99 {}.\n",
            x.receiver.name(),
            x.streams,
            t.generated,
            t.dropped,
            t.duplicated,
            t.detoured,
            t.ssrc_changes,
            x.sent,
            x.received,
            x.lost,
            x.cpu_ns_per_packet,
            dur(x.latency.p99_us)
        );
        if let Some(d) = &x.daemon {
            let e = &d.endpoints;
            let _ = writeln!(
                o,
                "The daemon's endpoint statistics, summed: {} packets, lost {}, {} duplicates, {} reordered, {} SSRC changes, {} frames concealed, {} late drops; {} streams whose packet count differs from what was sent to them.\n",
                e.packets,
                e.lost,
                e.duplicates,
                e.reordered,
                e.ssrc_changes,
                e.concealed,
                e.late_dropped,
                e.streams_mismatched
            );
        }
    }

    if let Some(mg) = &r.memory {
        let _ = writeln!(
            o,
            "### Memory and the control socket\n\n| idle endpoints | resident MiB |\n|---:|---:|"
        );
        for (n, b) in &mg.rss {
            let _ = writeln!(o, "| {n} | {:.1} |", *b as f64 / 1024.0 / 1024.0);
        }
        let _ = writeln!(
            o,
            "\n{:.1} KiB resident per idle endpoint. With {} idle endpoints the worker uses {:.1}% of a core and wakes {:.0} times/s. Control socket: {:.0} endpoint.create/s and {:.0} endpoint.destroy/s with 64 requests in flight; {:.0} create+destroy pairs/s one request at a time.\n",
            mg.per_endpoint / 1024.0,
            mg.rss.last().map_or(0, |x| x.0),
            mg.idle_worker_core_share * 100.0,
            mg.idle_worker_wakeups_per_s,
            mg.create_per_s,
            mg.destroy_per_s,
            mg.create_destroy_pairs_per_s
        );
    }

    if !r.footprint.is_empty() {
        let _ = writeln!(
            o,
            "### Where an endpoint's memory goes (`rtpload footprint`: 1,000 of each, same allocator as the daemon)\n\n| part | resident bytes each | after 100 packets |\n|---|---:|---:|"
        );
        for p in &r.footprint {
            let _ = writeln!(
                o,
                "| {} | {:.0} | {} |",
                p.part,
                p.idle_bytes,
                p.streaming_bytes
                    .map_or("-".to_owned(), |b| format!("{b:.0}"))
            );
        }
        let _ = writeln!(o);
    }

    if !r.linger.is_empty() {
        let _ = writeln!(
            o,
            "### The wait strategy (receiver thread CPU per datagram)\n\n| engine | sockets | datagrams/s | mode | datagrams | waits | batches | CPU ns/datagram | wakeups/datagram |\n|---|---:|---:|---|---:|---:|---:|---:|---:|"
        );
        for x in &r.linger {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.3} |",
                x.engine,
                x.sockets,
                x.rate,
                x.mode,
                x.datagrams,
                x.waits,
                x.batches,
                x.cpu_ns_per_datagram,
                x.wakeups_per_datagram
            );
        }
        let _ = writeln!(o);
    }

    if !r.callgrind.is_empty() {
        let _ = writeln!(
            o,
            "### Instructions per packet (callgrind, fixed trace)\n\n| core | streams | instructions/packet | with the trace's own |\n|---|---:|---:|---:|"
        );
        for x in &r.callgrind {
            let _ = writeln!(
                o,
                "| {} | {} | {:.0} | {:.0} |",
                x.variant, x.streams, x.ir_per_packet, x.ir_per_packet_gross
            );
        }
        let ir = |v: &str| r.callgrind.iter().find(|x| x.variant == v);
        if let (Some(clean), Some(lossy)) = (ir("mediagw"), ir("mediagw-loss")) {
            let frames = lossy.checksum.max(1) as f64;
            let packets = 2.0 * lossy.packets as f64;
            // The lossy run handles 5% fewer packets: compare per packet
            // generated, then charge the difference to concealed frames.
            let extra = lossy.ir_per_packet * packets - clean.ir_per_packet * packets * 0.95;
            let _ = writeln!(
                o,
                "\nConcealment: with 5% of packets lost, {frames:.0} frames concealed over {packets:.0} packets; about {:.0} instructions per concealed frame (against {:.0} per packet played).",
                extra / frames,
                clean.ir_per_packet
            );
        }
        if let Some(m) = r.callgrind.iter().find(|x| x.variant == "mediagw-tapped") {
            let _ = writeln!(
                o,
                "\nmediagw's core with a subscriber, by function (self instructions per packet; `rtpload::main` holds what was inlined into the trace loop: parse, latch, decode, the endpoint's own code):\n\n| function | instructions/packet |\n|---|---:|"
            );
            for (f, ir) in &m.top {
                let _ = writeln!(o, "| `{}` | {:.0} |", f.replace('|', "\\|"), ir);
            }
        }
        let _ = writeln!(o);
    }
    o
}
