//! mediagw benchmarks live in `benches/`; see PERFORMANCE.md.
