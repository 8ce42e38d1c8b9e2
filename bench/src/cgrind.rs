//! Instruction counts of the per-packet cores, from `valgrind
//! --tool=callgrind` over the fixed synthetic trace of [`crate::trace`]:
//! a count does not move when the machine is busy, so a regression shows
//! as a number.
//!
//! Each variant runs twice, with N and 2N packets; instructions per packet
//! are `(Ir(2N) - Ir(N)) / N`, which cancels start-up and set-up. The
//! trace's own cost (the `generate` variant) is subtracted from the others.
//! The busiest functions of the daemon's core come from `callgrind_annotate`
//! over the same two runs.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde::Serialize;

use crate::error::{BenchError, Context, Result};
use crate::guard::check_stop;
use crate::trace::Variant;

/// Instruction counts of one variant.
#[derive(Debug, Clone, Serialize)]
pub struct IrRow {
    /// The per-packet core.
    pub variant: &'static str,
    /// Streams in the trace.
    pub streams: usize,
    /// Packets of the short run (the long one has twice as many).
    pub packets: u64,
    /// Instructions per packet, the trace's own cost included.
    pub ir_per_packet_gross: f64,
    /// Instructions per packet of the core alone.
    pub ir_per_packet: f64,
    /// The functions with the most instructions per packet (self cost),
    /// largest first.
    pub top: Vec<(String, f64)>,
    /// The variant's checksum over the long run (frames played, concealed,
    /// ...: see `trace`).
    pub checksum: u64,
}

/// One callgrind run: total instructions and per-function self cost.
struct Run {
    total: u64,
    functions: BTreeMap<String, u64>,
    checksum: u64,
}

fn callgrind(exe: &Path, variant: Variant, streams: usize, packets: u64) -> Result<Run> {
    check_stop()?;
    let dir = tempfile::tempdir().context("temporary directory")?;
    let out = dir.path().join("callgrind.out");
    let o = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(exe)
        .args(["trace", "--variant", variant.name()])
        .args(["--streams", &streams.to_string()])
        .args(["--packets", &packets.to_string()])
        .output()
        .context("running valgrind (is it installed? Debian: valgrind)")?;
    let stderr = String::from_utf8_lossy(&o.stderr);
    // `trace` prints "variant streams packets checksum".
    let checksum = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .nth(3)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if !o.status.success() {
        return Err(BenchError::new(format!(
            "valgrind failed ({}): {stderr}",
            o.status
        )));
    }
    let total = stderr
        .lines()
        .find_map(|l| l.split_once("Collected :").map(|x| x.1))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .context("no 'Collected' line in callgrind's output")?;
    let a = Command::new("callgrind_annotate")
        .args(["--inclusive=no", "--threshold=100", "--auto=no"])
        .arg(&out)
        .output()
        .context("running callgrind_annotate")?;
    let mut functions = BTreeMap::new();
    for line in String::from_utf8_lossy(&a.stdout).lines() {
        let l = line.trim_start();
        let Some((num, rest)) = l.split_once(' ') else {
            continue;
        };
        let Ok(ir) = num.replace(',', "").parse::<u64>() else {
            continue;
        };
        // "(12.34%)  file:function [binary]"
        let rest = rest.trim_start();
        let rest = rest
            .strip_prefix('(')
            .and_then(|r| r.split_once(')'))
            .map_or(rest, |(_, r)| r)
            .trim();
        let rest = rest.rsplit_once(" [").map_or(rest, |(f, _)| f);
        let name = rest.split_once(':').map_or(rest, |(_, f)| f).to_owned();
        if name.is_empty() || name.starts_with("PROGRAM TOTALS") {
            continue;
        }
        *functions.entry(name).or_insert(0) += ir;
    }
    Ok(Run {
        total,
        functions,
        checksum,
    })
}

/// Measures every variant over a `streams`-stream trace of `packets` and
/// `2 x packets` packets. `exe` is the rtpload binary (it has the `trace`
/// subcommand).
pub fn measure(exe: &Path, streams: usize, packets: u64) -> Result<Vec<IrRow>> {
    let mut rows = Vec::new();
    let mut trace_cost = 0.0;
    for v in Variant::ALL {
        let short = callgrind(exe, v, streams, packets)?;
        let long = callgrind(exe, v, streams, 2 * packets)?;
        let gross = long.total.saturating_sub(short.total) as f64 / packets as f64;
        if v == Variant::Generate {
            trace_cost = gross;
        }
        let mut top: Vec<(String, f64)> = long
            .functions
            .iter()
            .map(|(f, &ir)| {
                let before = short.functions.get(f).copied().unwrap_or(0);
                (f.clone(), ir.saturating_sub(before) as f64 / packets as f64)
            })
            .filter(|(_, per)| *per >= 0.5)
            .collect();
        top.sort_by(|a, b| b.1.total_cmp(&a.1));
        top.truncate(12);
        rows.push(IrRow {
            variant: v.name(),
            streams,
            packets,
            ir_per_packet_gross: gross,
            // The ceiling's work can be below the noise of the
            // subtraction: never report less than nothing.
            ir_per_packet: if v == Variant::Generate {
                gross
            } else {
                (gross - trace_cost).max(0.0)
            },
            top,
            checksum: long.checksum,
        });
    }
    Ok(rows)
}
