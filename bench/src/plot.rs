//! The plot of a run: CPU per packet and p99 latency against load, one line
//! per receiver, as an SVG drawn by the harness itself (plotters, no fonts
//! or system libraries needed).

use std::path::Path;

use plotters::prelude::*;

use crate::error::{BenchError, Result};
use crate::run::{Kind, LoadResult};

fn color(k: Kind) -> RGBColor {
    match k {
        Kind::CeilingUring => RGBColor(0x1f, 0x77, 0xb4),
        Kind::CeilingRecvmmsg => RGBColor(0x7f, 0xa8, 0xd8),
        Kind::Naive => RGBColor(0xd6, 0x27, 0x28),
        Kind::Mediagw => RGBColor(0x2c, 0xa0, 0x2c),
    }
}

fn series(loads: &[LoadResult], k: Kind, f: impl Fn(&LoadResult) -> f64) -> Vec<(f64, f64)> {
    let mut v: Vec<(f64, f64)> = loads
        .iter()
        .filter(|r| r.receiver == k && !r.impaired)
        .map(|r| (r.streams as f64, f(r)))
        .filter(|p| p.1.is_finite() && p.1 > 0.0)
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

/// Draws `loads` into `path` (SVG, 1200 x 500).
pub fn draw(loads: &[LoadResult], title: &str, path: &Path) -> Result<()> {
    let err =
        |e: &dyn std::fmt::Display| BenchError::new(format!("drawing {}: {e}", path.display()));
    let root = SVGBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root
        .titled(title, ("sans-serif", 18))
        .map_err(|e| err(&e))?;
    let (left, right) = root.split_horizontally(600);
    let max_x = loads.iter().map(|r| r.streams).max().unwrap_or(1) as f64 * 1.05;

    let cpu_max = loads
        .iter()
        .map(|r| r.cpu_ns_per_packet)
        .fold(0.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&left)
        .caption("receiver CPU per packet (ns)", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_x, 0f64..cpu_max.max(1.0))
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("streams (20 ms G.711)")
        .y_desc("ns of CPU per packet")
        .draw()
        .map_err(|e| err(&e))?;
    for k in Kind::ALL {
        let s = series(loads, k, |r| r.cpu_ns_per_packet);
        if s.is_empty() {
            continue;
        }
        let c = color(k);
        chart
            .draw_series(LineSeries::new(s.clone(), c.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(k.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(s.into_iter().map(|p| Circle::new(p, 3, c.filled())))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| err(&e))?;

    let lat_max = loads.iter().map(|r| r.latency.p99_us).fold(1.0, f64::max) * 2.0;
    let mut chart = ChartBuilder::on(&right)
        .caption("p99 arrival-to-ring latency (us, log)", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_x, (1f64..lat_max).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("streams (20 ms G.711)")
        .y_desc("microseconds")
        .draw()
        .map_err(|e| err(&e))?;
    for k in Kind::ALL {
        let s = series(loads, k, |r| r.latency.p99_us);
        if s.is_empty() {
            continue;
        }
        let c = color(k);
        chart
            .draw_series(LineSeries::new(s.clone(), c.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(k.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(s.into_iter().map(|p| Circle::new(p, 3, c.filled())))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
