//! Prometheus figures: what workers publish, and the text exposition.
//!
//! Workers keep plain counters on the hot path and store them into these
//! atomics every publish interval (one writer each, `Relaxed`); the
//! exposition sums over workers. Labels are tenant and worker only: per-call
//! figures come from the control socket, never from labels.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::endpoint::EndpointSnapshot;
use crate::net::Counters;
use crate::units::Nanos;

/// Upper bounds (ms) of the per-tenant stream jitter histogram.
pub const JITTER_BUCKETS_MS: [f64; 10] =
    [1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 50.0, 100.0, 200.0, 500.0];

/// Upper bounds (µs) of the worker loop time histogram.
pub const LOOP_BUCKETS_US: [u64; 8] = [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000];

/// Upper bounds (µs) of the worker latency histograms: receive delay and
/// playout lateness. Fine around 100 µs and 1-2 ms, where the goals are.
pub const LATENCY_BUCKETS_US: [u64; 21] = [
    5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000, 10_000,
    20_000, 50_000, 100_000,
];

/// A latency histogram a worker keeps in plain counters (no atomics on the
/// per-packet path) and publishes with the rest of its figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencyCounts {
    /// Observations per bucket (not cumulative), `+Inf` last.
    pub buckets: [u64; LATENCY_BUCKETS_US.len() + 1],
    /// Sum of observations, ns.
    pub sum_ns: u64,
    /// Observations.
    pub count: u64,
}

impl LatencyCounts {
    /// Counts one observation of `ns` nanoseconds: a binary search over 21
    /// bounds and three additions.
    #[inline]
    pub fn record(&mut self, ns: u64) {
        let i = LATENCY_BUCKETS_US.partition_point(|&b| b * 1000 < ns);
        self.buckets[i] += 1;
        self.sum_ns = self.sum_ns.wrapping_add(ns);
        self.count += 1;
    }
}

#[derive(Debug, Default)]
struct LatencyAtomics {
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl LatencyAtomics {
    fn store(&self, c: &LatencyCounts) {
        for (a, v) in self.buckets.iter().zip(c.buckets) {
            a.store(v, Ordering::Relaxed);
        }
        self.sum_ns.store(c.sum_ns, Ordering::Relaxed);
        self.count.store(c.count, Ordering::Relaxed);
    }
}

/// One tenant's totals on one worker, as plain numbers.
#[derive(Debug, Clone, Copy, Default)]
pub struct TenantSlot {
    /// Endpoints live.
    pub active: u64,
    /// RTP packets received (valid, any verdict).
    pub packets: u64,
    /// Datagram bytes received.
    pub bytes: u64,
    /// Packets lost (RFC 3550 cumulative, never below zero per stream).
    pub lost: u64,
    /// Packets that arrived too late (statistics) or were late-dropped.
    pub late: u64,
    /// Frames concealed by the jitter buffer.
    pub concealed: u64,
    /// Datagrams that were not RTP.
    pub malformed: u64,
    /// Datagrams from an address other than the latched peer.
    pub foreign_source: u64,
    /// Datagrams with the wrong payload type.
    pub wrong_payload_type: u64,
    /// RTCP packets received.
    pub rtcp: u64,
    /// RTP packets sent into calls.
    pub tx_packets: u64,
    /// Cumulative jitter observations per bucket (non-cumulative counts).
    pub jitter_buckets: [u64; JITTER_BUCKETS_MS.len() + 1],
    /// Sum of observed jitter, ms.
    pub jitter_sum_ms: f64,
    /// Observations.
    pub jitter_count: u64,
}

/// One endpoint's cumulative counters, as the tenant totals sum them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointCounts {
    /// RTP packets received.
    pub packets: u64,
    /// Datagram bytes received.
    pub bytes: u64,
    /// RFC 3550 cumulative loss, never below zero.
    pub lost: u64,
    /// Too late (statistics) or late-dropped (jitter buffer).
    pub late: u64,
    /// Frames concealed.
    pub concealed: u64,
    /// Not RTP.
    pub malformed: u64,
    /// From other than the latched peer.
    pub foreign_source: u64,
    /// Wrong payload type.
    pub wrong_payload_type: u64,
    /// RTCP packets.
    pub rtcp: u64,
    /// RTP packets sent into the call.
    pub tx_packets: u64,
}

impl EndpointCounts {
    /// The counters of a snapshot.
    pub fn of(s: &EndpointSnapshot) -> Self {
        Self {
            packets: s.stats.packets,
            bytes: s.rx.bytes,
            lost: s.stats.lost.max(0) as u64,
            late: s.stats.late + s.jitter.late_dropped,
            concealed: s.jitter.concealed,
            malformed: s.rx.malformed,
            foreign_source: s.rx.foreign_source,
            wrong_payload_type: s.rx.wrong_payload_type,
            rtcp: s.rx.rtcp_packets,
            tx_packets: s.tx.packets,
        }
    }
}

impl TenantSlot {
    /// Adds one endpoint's cumulative figures.
    pub fn add(&mut self, s: &EndpointSnapshot) {
        self.add_delta(&EndpointCounts::of(s), &EndpointCounts::default());
    }

    /// Adds `new - old`, field by field: what an endpoint counted since its
    /// counters were last folded in. Wrapping, so a stream whose loss
    /// shrinks (a late packet arrived) takes it back exactly.
    pub fn add_delta(&mut self, new: &EndpointCounts, old: &EndpointCounts) {
        let d = |t: &mut u64, n: u64, o: u64| *t = t.wrapping_add(n.wrapping_sub(o));
        d(&mut self.packets, new.packets, old.packets);
        d(&mut self.bytes, new.bytes, old.bytes);
        d(&mut self.lost, new.lost, old.lost);
        d(&mut self.late, new.late, old.late);
        d(&mut self.concealed, new.concealed, old.concealed);
        d(&mut self.malformed, new.malformed, old.malformed);
        d(
            &mut self.foreign_source,
            new.foreign_source,
            old.foreign_source,
        );
        d(
            &mut self.wrong_payload_type,
            new.wrong_payload_type,
            old.wrong_payload_type,
        );
        d(&mut self.rtcp, new.rtcp, old.rtcp);
        d(&mut self.tx_packets, new.tx_packets, old.tx_packets);
    }

    /// Sets the counters (not `active`, not the jitter observations) to
    /// `a + b`.
    pub fn set_counters_sum(&mut self, a: &Self, b: &Self) {
        self.packets = a.packets.wrapping_add(b.packets);
        self.bytes = a.bytes.wrapping_add(b.bytes);
        self.lost = a.lost.wrapping_add(b.lost);
        self.late = a.late.wrapping_add(b.late);
        self.concealed = a.concealed.wrapping_add(b.concealed);
        self.malformed = a.malformed.wrapping_add(b.malformed);
        self.foreign_source = a.foreign_source.wrapping_add(b.foreign_source);
        self.wrong_payload_type = a.wrong_payload_type.wrapping_add(b.wrong_payload_type);
        self.rtcp = a.rtcp.wrapping_add(b.rtcp);
        self.tx_packets = a.tx_packets.wrapping_add(b.tx_packets);
    }

    /// Records one stream's current jitter.
    pub fn observe_jitter(&mut self, ms: f64) {
        let i = JITTER_BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(JITTER_BUCKETS_MS.len());
        self.jitter_buckets[i] += 1;
        self.jitter_sum_ms += ms;
        self.jitter_count += 1;
    }
}

#[derive(Debug, Default)]
struct TenantAtomics {
    active: AtomicU64,
    packets: AtomicU64,
    bytes: AtomicU64,
    lost: AtomicU64,
    late: AtomicU64,
    concealed: AtomicU64,
    malformed: AtomicU64,
    foreign_source: AtomicU64,
    wrong_payload_type: AtomicU64,
    rtcp: AtomicU64,
    tx_packets: AtomicU64,
    jitter_buckets: [AtomicU64; JITTER_BUCKETS_MS.len() + 1],
    jitter_sum_us: AtomicU64,
    jitter_count: AtomicU64,
}

/// What one worker publishes.
#[derive(Debug)]
pub struct WorkerMetrics {
    /// Endpoints on the worker.
    pub endpoints: AtomicU64,
    /// Endpoints receiving now.
    pub receiving: AtomicU64,
    /// Loop iterations.
    pub loops: AtomicU64,
    /// Iterations that took longer than their budget (4 ticks).
    pub overruns: AtomicU64,
    /// Time spent in loop iterations, ns (includes waiting in the kernel).
    pub loop_ns: AtomicU64,
    /// Datagrams the engine delivered.
    pub datagrams: AtomicU64,
    /// Datagrams the kernel dropped on full socket buffers.
    pub kernel_drops: AtomicU64,
    /// Datagrams too large for a receive buffer.
    pub truncated: AtomicU64,
    /// Kernel waits (sleeps) of the engine.
    pub waits: AtomicU64,
    /// Packets sent.
    pub sent: AtomicU64,
    /// Outbound packets the send arena had no room for.
    pub send_dropped: AtomicU64,
    /// Events the control thread was too slow to take.
    pub events_dropped: AtomicU64,
    loop_buckets: [AtomicU64; LOOP_BUCKETS_US.len() + 1],
    /// Kernel receive timestamp to the end of the batch that handled the
    /// datagram.
    receive_delay: LatencyAtomics,
    /// A frame's due time to the moment the worker played it out.
    playout_lateness: LatencyAtomics,
    tenants: Vec<TenantAtomics>,
}

impl WorkerMetrics {
    /// Room for `tenants` tenants.
    pub fn new(tenants: usize) -> Self {
        Self {
            endpoints: AtomicU64::new(0),
            receiving: AtomicU64::new(0),
            loops: AtomicU64::new(0),
            overruns: AtomicU64::new(0),
            loop_ns: AtomicU64::new(0),
            datagrams: AtomicU64::new(0),
            kernel_drops: AtomicU64::new(0),
            truncated: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            send_dropped: AtomicU64::new(0),
            events_dropped: AtomicU64::new(0),
            loop_buckets: Default::default(),
            receive_delay: LatencyAtomics::default(),
            playout_lateness: LatencyAtomics::default(),
            tenants: (0..tenants).map(|_| TenantAtomics::default()).collect(),
        }
    }

    /// One loop iteration from `start` to `end`. Single writer: a load and
    /// a store instead of a locked add.
    pub fn record_loop(&self, start: Nanos, end: Nanos, budget: Duration) {
        let took = end.saturating_since(start);
        bump(&self.loops, 1);
        bump(&self.loop_ns, took.as_nanos() as u64);
        if took > budget {
            bump(&self.overruns, 1);
        }
        let us = took.as_micros() as u64;
        let i = LOOP_BUCKETS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(LOOP_BUCKETS_US.len());
        bump(&self.loop_buckets[i], 1);
    }

    /// Stores the worker's latency histograms: receive delay (kernel
    /// timestamp to the end of the datagram's batch) and playout lateness
    /// (frame due to frame played).
    pub fn publish_latency(&self, receive_delay: &LatencyCounts, playout_lateness: &LatencyCounts) {
        self.receive_delay.store(receive_delay);
        self.playout_lateness.store(playout_lateness);
    }

    /// Stores the worker's current totals.
    pub fn publish(&self, tenants: &[TenantSlot], receiving: u64, engine: &Counters) {
        for (a, t) in self.tenants.iter().zip(tenants) {
            let set = |x: &AtomicU64, v: u64| x.store(v, Ordering::Relaxed);
            set(&a.active, t.active);
            set(&a.packets, t.packets);
            set(&a.bytes, t.bytes);
            set(&a.lost, t.lost);
            set(&a.late, t.late);
            set(&a.concealed, t.concealed);
            set(&a.malformed, t.malformed);
            set(&a.foreign_source, t.foreign_source);
            set(&a.wrong_payload_type, t.wrong_payload_type);
            set(&a.rtcp, t.rtcp);
            set(&a.tx_packets, t.tx_packets);
            for (b, v) in a.jitter_buckets.iter().zip(t.jitter_buckets) {
                set(b, v);
            }
            set(&a.jitter_sum_us, (t.jitter_sum_ms * 1000.0) as u64);
            set(&a.jitter_count, t.jitter_count);
        }
        let set = |x: &AtomicU64, v: u64| x.store(v, Ordering::Relaxed);
        set(&self.receiving, receiving);
        set(&self.datagrams, engine.datagrams);
        set(&self.kernel_drops, engine.kernel_drops);
        set(&self.truncated, engine.truncated);
        set(&self.waits, engine.waits);
        set(&self.sent, engine.sent);
    }
}

fn bump(a: &AtomicU64, by: u64) {
    a.store(
        a.load(Ordering::Relaxed).wrapping_add(by),
        Ordering::Relaxed,
    );
}

/// One series of the exposition: name, type, help and the atomic it reads.
type Series<T> = (
    &'static str,
    &'static str,
    &'static str,
    fn(&T) -> &AtomicU64,
);

/// A latency histogram of the exposition: name, help and its atomics.
type LatencySeries = (
    &'static str,
    &'static str,
    fn(&WorkerMetrics) -> &LatencyAtomics,
);

/// What the exposition needs about each worker.
#[derive(Debug, Clone, Copy)]
pub struct WorkerInfo<'a> {
    /// Worker number.
    pub index: usize,
    /// "io_uring" or "epoll".
    pub engine: &'static str,
    /// Its figures.
    pub metrics: &'a WorkerMetrics,
}

/// Renders the Prometheus text exposition (format 0.0.4).
pub fn render(tenants: &[String], workers: &[WorkerInfo<'_>], draining: bool) -> String {
    let mut out = String::with_capacity(8192);
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);

    let tenant_counters: [Series<TenantAtomics>; 11] = [
        (
            "mediagw_endpoints_active",
            "gauge",
            "Endpoints live.",
            |t| &t.active,
        ),
        (
            "mediagw_rtp_packets_total",
            "counter",
            "RTP packets received.",
            |t| &t.packets,
        ),
        (
            "mediagw_rtp_bytes_total",
            "counter",
            "Datagram bytes received on RTP ports.",
            |t| &t.bytes,
        ),
        (
            "mediagw_rtp_lost_total",
            "counter",
            "RTP packets lost (RFC 3550 cumulative).",
            |t| &t.lost,
        ),
        (
            "mediagw_rtp_late_total",
            "counter",
            "RTP packets too late for use.",
            |t| &t.late,
        ),
        (
            "mediagw_frames_concealed_total",
            "counter",
            "20 ms frames concealed by the jitter buffer.",
            |t| &t.concealed,
        ),
        (
            "mediagw_rtp_malformed_total",
            "counter",
            "Datagrams that were not valid RTP.",
            |t| &t.malformed,
        ),
        (
            "mediagw_rtp_foreign_source_total",
            "counter",
            "Datagrams from other than the latched peer.",
            |t| &t.foreign_source,
        ),
        (
            "mediagw_rtp_wrong_payload_type_total",
            "counter",
            "Datagrams with an unexpected payload type.",
            |t| &t.wrong_payload_type,
        ),
        (
            "mediagw_rtcp_packets_total",
            "counter",
            "RTCP packets received.",
            |t| &t.rtcp,
        ),
        (
            "mediagw_rtp_sent_packets_total",
            "counter",
            "RTP packets sent into calls.",
            |t| &t.tx_packets,
        ),
    ];
    for (name, kind, help, field) in tenant_counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (i, tenant) in tenants.iter().enumerate() {
            let v: u64 = workers
                .iter()
                .filter_map(|w| w.metrics.tenants.get(i))
                .map(|t| load(field(t)))
                .sum();
            let _ = writeln!(out, "{name}{{tenant=\"{}\"}} {v}", escape(tenant));
        }
    }

    let name = "mediagw_stream_jitter_ms";
    let _ = writeln!(
        out,
        "# HELP {name} Interarrival jitter of receiving streams, sampled every 250 ms.\n# TYPE {name} histogram"
    );
    for (i, tenant) in tenants.iter().enumerate() {
        let t = escape(tenant);
        let mut cum = 0u64;
        for (b, bound) in JITTER_BUCKETS_MS.iter().enumerate() {
            cum += workers
                .iter()
                .filter_map(|w| w.metrics.tenants.get(i))
                .map(|x| load(&x.jitter_buckets[b]))
                .sum::<u64>();
            let _ = writeln!(out, "{name}_bucket{{tenant=\"{t}\",le=\"{bound}\"}} {cum}");
        }
        let sum = |f: fn(&TenantAtomics) -> &AtomicU64| -> u64 {
            workers
                .iter()
                .filter_map(|w| w.metrics.tenants.get(i))
                .map(|x| load(f(x)))
                .sum()
        };
        let count = sum(|x| &x.jitter_count);
        let _ = writeln!(out, "{name}_bucket{{tenant=\"{t}\",le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum{{tenant=\"{t}\"}} {}",
            sum(|x| &x.jitter_sum_us) as f64 / 1000.0
        );
        let _ = writeln!(out, "{name}_count{{tenant=\"{t}\"}} {count}");
    }

    let worker_series: [Series<WorkerMetrics>; 10] = [
        (
            "mediagw_worker_endpoints",
            "gauge",
            "Endpoints on the worker.",
            |m| &m.endpoints,
        ),
        (
            "mediagw_worker_receiving",
            "gauge",
            "Endpoints receiving on the worker.",
            |m| &m.receiving,
        ),
        (
            "mediagw_worker_loop_overruns_total",
            "counter",
            "Loop iterations over budget (4 ticks).",
            |m| &m.overruns,
        ),
        (
            "mediagw_worker_datagrams_total",
            "counter",
            "Datagrams received by the worker.",
            |m| &m.datagrams,
        ),
        (
            "mediagw_worker_kernel_drops_total",
            "counter",
            "Datagrams dropped by the kernel on full socket buffers.",
            |m| &m.kernel_drops,
        ),
        (
            "mediagw_worker_truncated_total",
            "counter",
            "Datagrams larger than a receive buffer.",
            |m| &m.truncated,
        ),
        (
            "mediagw_worker_waits_total",
            "counter",
            "Times the worker slept in the kernel.",
            |m| &m.waits,
        ),
        (
            "mediagw_worker_sent_total",
            "counter",
            "Datagrams sent by the worker.",
            |m| &m.sent,
        ),
        (
            "mediagw_worker_send_dropped_total",
            "counter",
            "Outbound datagrams with no send slot.",
            |m| &m.send_dropped,
        ),
        (
            "mediagw_worker_events_dropped_total",
            "counter",
            "Endpoint events lost to a full queue.",
            |m| &m.events_dropped,
        ),
    ];
    for (name, kind, help, field) in worker_series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for w in workers {
            let _ = writeln!(
                out,
                "{name}{{worker=\"{}\",engine=\"{}\"}} {}",
                w.index,
                w.engine,
                load(field(w.metrics))
            );
        }
    }

    let name = "mediagw_worker_loop_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time per worker loop iteration (wait included).\n# TYPE {name} histogram"
    );
    for w in workers {
        let mut cum = 0;
        for (b, bound) in LOOP_BUCKETS_US.iter().enumerate() {
            cum += load(&w.metrics.loop_buckets[b]);
            let _ = writeln!(
                out,
                "{name}_bucket{{worker=\"{}\",le=\"{}\"}} {cum}",
                w.index,
                *bound as f64 / 1e6
            );
        }
        let count = load(&w.metrics.loops);
        let _ = writeln!(
            out,
            "{name}_bucket{{worker=\"{}\",le=\"+Inf\"}} {count}",
            w.index
        );
        let _ = writeln!(
            out,
            "{name}_sum{{worker=\"{}\"}} {}",
            w.index,
            load(&w.metrics.loop_ns) as f64 / 1e9
        );
        let _ = writeln!(out, "{name}_count{{worker=\"{}\"}} {count}", w.index);
    }

    let latency: [LatencySeries; 2] = [
        (
            "mediagw_worker_receive_delay_seconds",
            "From a datagram's kernel receive timestamp to the end of the worker batch that handled it.",
            |m| &m.receive_delay,
        ),
        (
            "mediagw_worker_playout_lateness_seconds",
            "From a frame's due time (arrival plus jitter buffer delay) to the moment the worker played it.",
            |m| &m.playout_lateness,
        ),
    ];
    for (name, help, field) in latency {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for w in workers {
            let h = field(w.metrics);
            let mut cum = 0;
            for (b, bound) in LATENCY_BUCKETS_US.iter().enumerate() {
                cum += load(&h.buckets[b]);
                let _ = writeln!(
                    out,
                    "{name}_bucket{{worker=\"{}\",le=\"{}\"}} {cum}",
                    w.index,
                    *bound as f64 / 1e6
                );
            }
            cum += load(&h.buckets[LATENCY_BUCKETS_US.len()]);
            let _ = writeln!(
                out,
                "{name}_bucket{{worker=\"{}\",le=\"+Inf\"}} {cum}",
                w.index
            );
            let _ = writeln!(
                out,
                "{name}_sum{{worker=\"{}\"}} {}",
                w.index,
                load(&h.sum_ns) as f64 / 1e9
            );
            let _ = writeln!(
                out,
                "{name}_count{{worker=\"{}\"}} {}",
                w.index,
                load(&h.count)
            );
        }
    }

    let _ = writeln!(
        out,
        "# HELP mediagw_io_uring Whether workers use io_uring (1) or the epoll fallback (0).\n# TYPE mediagw_io_uring gauge"
    );
    for w in workers {
        let _ = writeln!(
            out,
            "mediagw_io_uring{{worker=\"{}\"}} {}",
            w.index,
            u8::from(w.engine == "io_uring")
        );
    }
    let _ = writeln!(
        out,
        "# HELP mediagw_draining Whether the dataplane refuses new endpoints.\n# TYPE mediagw_draining gauge\nmediagw_draining {}",
        u8::from(draining)
    );
    out
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_deltas_equals_summing_again() {
        let c = |packets, lost| EndpointCounts {
            packets,
            lost,
            ..EndpointCounts::default()
        };
        // Two endpoints seen twice; the second one's loss shrinks (a late
        // packet arrived).
        let mut live = TenantSlot::default();
        live.add_delta(&c(10, 0), &EndpointCounts::default());
        live.add_delta(&c(5, 3), &EndpointCounts::default());
        live.add_delta(&c(30, 1), &c(10, 0));
        live.add_delta(&c(9, 2), &c(5, 3));
        assert_eq!((live.packets, live.lost), (39, 3));
        // The first one is removed: out of the live sum, into the retired.
        let mut retired = TenantSlot::default();
        live.add_delta(&EndpointCounts::default(), &c(30, 1));
        retired.add_delta(&c(30, 1), &EndpointCounts::default());
        let mut total = TenantSlot::default();
        total.set_counters_sum(&retired, &live);
        assert_eq!((total.packets, total.lost), (39, 3));
    }

    #[test]
    fn renders_tenants_and_workers() {
        let m = WorkerMetrics::new(2);
        let mut t = [TenantSlot::default(); 2];
        t[1].packets = 42;
        t[1].active = 1;
        t[1].observe_jitter(3.0);
        t[1].observe_jitter(700.0);
        m.publish(&t, 1, &Counters::default());
        m.record_loop(Nanos(0), Nanos(2_000_000), Duration::from_millis(4));
        let mut rx = LatencyCounts::default();
        rx.record(4_000); // 4 µs
        rx.record(5_000); // exactly 5 µs: the 5 µs bucket
        rx.record(5_001);
        rx.record(200_000_000); // 200 ms: +Inf
        m.publish_latency(&rx, &LatencyCounts::default());
        let text = render(
            &["a".into(), "b\"x".into()],
            &[WorkerInfo {
                index: 0,
                engine: "io_uring",
                metrics: &m,
            }],
            false,
        );
        assert!(
            text.contains("mediagw_rtp_packets_total{tenant=\"b\\\"x\"} 42"),
            "{text}"
        );
        assert!(text.contains("mediagw_rtp_packets_total{tenant=\"a\"} 0"));
        assert!(text.contains("mediagw_stream_jitter_ms_bucket{tenant=\"b\\\"x\",le=\"5\"} 1"));
        assert!(text.contains("mediagw_stream_jitter_ms_bucket{tenant=\"b\\\"x\",le=\"+Inf\"} 2"));
        assert!(text.contains("mediagw_worker_loop_seconds_bucket{worker=\"0\",le=\"0.0025\"} 1"));
        assert!(text.contains("mediagw_io_uring{worker=\"0\"} 1"));
        assert!(text.contains(
            "mediagw_worker_receive_delay_seconds_bucket{worker=\"0\",le=\"0.000005\"} 2"
        ));
        assert!(text.contains(
            "mediagw_worker_receive_delay_seconds_bucket{worker=\"0\",le=\"0.00001\"} 3"
        ));
        assert!(
            text.contains("mediagw_worker_receive_delay_seconds_bucket{worker=\"0\",le=\"0.1\"} 3")
        );
        assert!(
            text.contains(
                "mediagw_worker_receive_delay_seconds_bucket{worker=\"0\",le=\"+Inf\"} 4"
            )
        );
        assert!(text.contains("mediagw_worker_receive_delay_seconds_count{worker=\"0\"} 4"));
        assert!(text.contains(
            "mediagw_worker_playout_lateness_seconds_bucket{worker=\"0\",le=\"+Inf\"} 0"
        ));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').unwrap();
            assert!(v.parse::<f64>().is_ok(), "{line}");
        }
    }
}
