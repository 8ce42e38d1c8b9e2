//! The criterion micro-benchmarks' figures (`benches/media_core.rs`), read
//! back from criterion's own estimates under `target/criterion`, with the
//! ratios to the baselines the bench file defines and issue 3's goals.

use std::path::Path;

use serde::Serialize;

use crate::error::{Context, Result};

/// One benchmark's estimate.
#[derive(Debug, Clone, Serialize)]
pub struct MicroRow {
    /// `group/name` as criterion names it.
    pub id: String,
    /// Mean time per iteration, ns.
    pub mean_ns: f64,
    /// 95% confidence interval of the mean, ns.
    pub ci_ns: (f64, f64),
    /// Elements per iteration (packets, or samples for decode).
    pub elements: u64,
    /// What it is compared with.
    pub baseline: Option<&'static str>,
    /// `mean / baseline mean`.
    pub ratio: Option<f64>,
}

/// The benchmarks of `media_core`, with their element counts and baselines.
const BENCHES: [(&str, u64, Option<&str>); 11] = [
    ("per_packet/baseline/copy_172", 1, None),
    (
        "per_packet/rtp_parse",
        1,
        Some("per_packet/baseline/copy_172"),
    ),
    (
        "per_packet/stats_update",
        1,
        Some("per_packet/baseline/copy_172"),
    ),
    (
        "decode_160/ulaw_table",
        160,
        Some("decode_160/ulaw_branchy"),
    ),
    (
        "decode_160/alaw_table",
        160,
        Some("decode_160/ulaw_branchy"),
    ),
    ("decode_160/ulaw_branchy", 160, None),
    ("decode_160/slin16_320", 320, None),
    (
        "per_packet/jitter_push_pull",
        1,
        Some("per_packet/baseline/copy_172"),
    ),
    (
        "per_packet/ring_push_pop",
        1,
        Some("per_packet/baseline/copy_172"),
    ),
    (
        "per_packet/pipeline",
        1,
        Some("per_packet/baseline/copy_172"),
    ),
    ("per_packet/sum_of_parts", 1, None),
];

fn estimate(dir: &Path, id: &str) -> Result<(f64, (f64, f64))> {
    // Criterion keeps `group/function` in `group/function`, a `/` inside
    // the function's name turned into `_`.
    let (group, function) = id.split_once('/').unwrap_or((id, ""));
    let path = dir
        .join(group)
        .join(function.replace('/', "_"))
        .join("new")
        .join("estimates.json");
    let text = std::fs::read_to_string(&path).context(format_args!(
        "reading {} (run `cargo bench -p mediagw-bench --bench media_core` first)",
        path.display()
    ))?;
    let v: serde_json::Value = serde_json::from_str(&text).context("criterion estimates")?;
    let get = |p: &str| v.pointer(p).and_then(serde_json::Value::as_f64);
    Ok((
        get("/mean/point_estimate").context("mean")?,
        (
            get("/mean/confidence_interval/lower_bound").context("lower bound")?,
            get("/mean/confidence_interval/upper_bound").context("upper bound")?,
        ),
    ))
}

/// Reads every estimate under `dir` (criterion's output directory) and adds
/// the sum of the per-packet parts (parse + statistics + decode + jitter
/// buffer + ring), which issue 3's 150 ns goal is about.
pub fn read(dir: &Path) -> Result<Vec<MicroRow>> {
    let mut rows = Vec::new();
    for (id, elements, _) in BENCHES.iter().filter(|b| b.0 != "per_packet/sum_of_parts") {
        let (mean, ci) = estimate(dir, id)?;
        rows.push(MicroRow {
            id: (*id).to_owned(),
            mean_ns: mean,
            ci_ns: ci,
            elements: *elements,
            baseline: None,
            ratio: None,
        });
    }
    let mean = |id: &str| rows.iter().find(|r| r.id == id).map(|r| r.mean_ns);
    let parts = [
        "per_packet/rtp_parse",
        "per_packet/stats_update",
        "decode_160/ulaw_table",
        "per_packet/jitter_push_pull",
        "per_packet/ring_push_pop",
    ];
    let sum: f64 = parts.iter().filter_map(|p| mean(p)).sum();
    rows.push(MicroRow {
        id: "per_packet/sum_of_parts".to_owned(),
        mean_ns: sum,
        ci_ns: (sum, sum),
        elements: 1,
        baseline: None,
        ratio: None,
    });
    let means: Vec<(String, f64)> = rows.iter().map(|r| (r.id.clone(), r.mean_ns)).collect();
    for r in &mut rows {
        let base = BENCHES.iter().find(|b| b.0 == r.id).and_then(|b| b.2);
        r.baseline = base;
        r.ratio = base
            .and_then(|b| means.iter().find(|m| m.0 == b))
            .map(|(_, m)| r.mean_ns / m);
    }
    Ok(rows)
}
