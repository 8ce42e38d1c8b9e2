//! What the commands print, as plain functions of the server's answers.

use std::fmt::Write as _;

use mediagw_shared::control::{
    EndpointState, EndpointStats, EndpointSummary, Engine, HelloReply, ServerStatus,
};

/// How a column's cells line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

/// A plain text table: a header row, cells padded to the widest, two spaces
/// between columns, no trailing spaces.
#[derive(Debug, Clone)]
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(columns: &[(&'static str, Align)]) -> Self {
        Self {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are empty, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The rows added so far.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table, one line per row, each ending in a newline.
    pub fn render(&self) -> String {
        let cell = |row: &[String], i: usize| row.get(i).map_or("", String::as_str).to_owned();
        let widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, (head, _))| {
                self.rows
                    .iter()
                    .map(|r| cell(r, i).chars().count())
                    .chain([head.len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        let heads: Vec<String> = self.columns.iter().map(|(h, _)| (*h).to_owned()).collect();
        for row in std::iter::once(&heads).chain(&self.rows) {
            let mut line = String::new();
            for (i, (_, align)) in self.columns.iter().enumerate() {
                let text = cell(row, i);
                let pad = widths[i] - text.chars().count();
                if i > 0 {
                    line.push_str("  ");
                }
                match align {
                    Align::Left => {
                        line.push_str(&text);
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                    Align::Right => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(&text);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `status`: a summary, the workers table and totals.
pub fn status(hello: &HelloReply, status: &ServerStatus) -> String {
    let mut out = format!(
        "{}  protocol {}  up {}{}\n",
        server_name(hello),
        status.version,
        uptime(status.uptime_s),
        if status.draining { "  DRAINING" } else { "" },
    );
    let _ = writeln!(
        out,
        "endpoints {} ({} receiving)  rx {} pkts, {}  tx {} pkts, {}\n",
        status.endpoints,
        status.streams_receiving,
        status.rx_packets,
        bytes(status.rx_bytes),
        status.tx_packets,
        bytes(status.tx_bytes),
    );
    let mut table = Table::new(&[
        ("WORKER", Align::Right),
        ("CORE", Align::Right),
        ("ENGINE", Align::Left),
        ("ENDPOINTS", Align::Right),
        ("PKT/S", Align::Right),
        ("OVERRUNS", Align::Right),
    ]);
    for w in &status.workers {
        table.row(vec![
            w.id.to_string(),
            w.core.map_or_else(|| "-".to_owned(), |c| c.to_string()),
            engine(w.engine).to_owned(),
            w.endpoints.to_string(),
            w.packets_per_s.to_string(),
            w.loop_overruns.to_string(),
        ]);
    }
    let sum = |f: fn(&mediagw_shared::control::WorkerStatus) -> u64| {
        status.workers.iter().map(f).sum::<u64>().to_string()
    };
    table.row(vec![
        "total".to_owned(),
        String::new(),
        String::new(),
        sum(|w| w.endpoints),
        sum(|w| w.packets_per_s),
        sum(|w| w.loop_overruns),
    ]);
    out.push_str(&table.render());
    out
}

/// `endpoints`: one row per endpoint.
pub fn endpoints(endpoints: &[EndpointSummary]) -> String {
    let mut table = Table::new(&[
        ("ID", Align::Left),
        ("TENANT", Align::Left),
        ("SESSION", Align::Left),
        ("CODEC", Align::Left),
        ("LOCAL", Align::Left),
        ("PEER", Align::Left),
        ("STATE", Align::Left),
        ("RX PKTS", Align::Right),
        ("LOST", Align::Right),
        ("JITTER MS", Align::Right),
    ]);
    for e in endpoints {
        table.row(vec![
            e.endpoint.to_string(),
            e.tenant.to_string(),
            e.session.to_string(),
            e.codec.to_string(),
            e.local_addr.to_string(),
            e.peer.map_or_else(|| "-".to_owned(), |p| p.to_string()),
            state(e.state).to_owned(),
            e.rx_packets.to_string(),
            e.lost.to_string(),
            format!("{:.2}", e.jitter_ms),
        ]);
    }
    let mut out = table.render();
    let _ = writeln!(
        out,
        "{} endpoint{}",
        endpoints.len(),
        plural(endpoints.len())
    );
    out
}

/// `stats` and `destroy`: every counter, grouped.
pub fn stats(s: &EndpointStats) -> String {
    let mut out = String::new();
    let mut section = |title: &str, rows: Vec<(&str, String)>| {
        if !title.is_empty() {
            let _ = writeln!(out, "{title}");
        }
        let indent = if title.is_empty() { "" } else { "  " };
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (key, value) in rows {
            let _ = writeln!(out, "{indent}{key:<width$}  {value}");
        }
    };
    let since_created = |at: Option<u64>| match at {
        Some(at) => format!(
            "{} (+{:.3} s)",
            utc(at),
            at.saturating_sub(s.created_at_ms) as f64 / 1000.0
        ),
        None => "-".to_owned(),
    };
    section(
        "",
        vec![
            ("endpoint", s.endpoint.to_string()),
            ("tenant", s.tenant.to_string()),
            ("session", s.session.to_string()),
            (
                "codec",
                format!("{} ({} Hz)", s.codec, s.codec.clock_rate().0),
            ),
            ("local", s.local_addr.to_string()),
            (
                "peer",
                s.peer.map_or_else(|| "-".to_owned(), |p| p.to_string()),
            ),
            ("state", state(s.state).to_owned()),
            ("created", utc(s.created_at_ms)),
            ("first packet", since_created(s.first_packet_at_ms)),
            ("last packet", since_created(s.last_packet_at_ms)),
        ],
    );
    let rx = &s.rx;
    section(
        "rx",
        vec![
            ("packets", format!("{} ({})", rx.packets, bytes(rx.bytes))),
            ("expected", rx.expected.to_string()),
            (
                "lost",
                format!(
                    "{} (last interval {:.2}%)",
                    rx.lost,
                    rx.fraction_lost * 100.0
                ),
            ),
            ("duplicates", rx.duplicates.to_string()),
            ("reordered", rx.reordered.to_string()),
            ("late", rx.late.to_string()),
            (
                "jitter",
                format!("{:.2} ms (max {:.2} ms)", rx.jitter_ms, rx.max_jitter_ms),
            ),
            (
                "transit var.",
                rx.transit_ms.map_or_else(
                    || "-".to_owned(),
                    |t| {
                        format!(
                            "p50 {:.2} p90 {:.2} p99 {:.2} max {:.2} ms",
                            t.p50, t.p90, t.p99, t.max
                        )
                    },
                ),
            ),
            (
                "ssrc",
                format!(
                    "{} ({} change{})",
                    rx.ssrc
                        .map_or_else(|| "-".to_owned(), |s| format!("{s:#010x}")),
                    rx.ssrc_changes,
                    plural(rx.ssrc_changes as usize)
                ),
            ),
            ("malformed", rx.malformed.to_string()),
            ("foreign source", rx.foreign_source.to_string()),
            ("wrong payload type", rx.wrong_payload_type.to_string()),
            ("rtcp packets", rx.rtcp_packets.to_string()),
        ],
    );
    let jb = &s.jitter_buffer;
    section(
        "jitter buffer",
        vec![
            ("played", jb.played.to_string()),
            ("concealed", jb.concealed.to_string()),
            ("late dropped", jb.late_dropped.to_string()),
            ("overflow dropped", jb.overflow_dropped.to_string()),
            ("skipped", jb.skipped.to_string()),
            ("inserted", jb.inserted.to_string()),
            (
                "delay",
                format!(
                    "{} ms (target {} ms)",
                    jb.current_delay_ms, jb.target_delay_ms
                ),
            ),
        ],
    );
    section(
        "tx",
        vec![
            (
                "packets",
                format!("{} ({})", s.tx.packets, bytes(s.tx.bytes)),
            ),
            ("frames dropped", s.tx.frames_dropped.to_string()),
        ],
    );
    section(
        "tap",
        vec![
            ("subscribers", s.tap.subscribers.to_string()),
            ("frames", s.tap.frames.to_string()),
            ("overflows", s.tap.overflows.to_string()),
        ],
    );
    match &s.rtcp {
        None => section("rtcp off", Vec::new()),
        Some(rtcp) => {
            let sr = rtcp.last_sr.as_ref().map_or_else(
                || "-".to_owned(),
                |sr| {
                    format!(
                        "at {}, ssrc {:#010x}, ntp {}, rtp ts {}, {} packets, {} octets",
                        utc(sr.received_at_ms),
                        sr.ssrc,
                        utc(sr.ntp_ms),
                        sr.rtp_ts,
                        sr.packets,
                        sr.octets
                    )
                },
            );
            let rr = rtcp.last_rr.as_ref().map_or_else(
                || "-".to_owned(),
                |rr| {
                    format!(
                        "at {}, ssrc {:#010x}, lost {:.2}% ({} total), jitter {:.2} ms, rtt {}",
                        utc(rr.received_at_ms),
                        rr.ssrc,
                        rr.fraction_lost * 100.0,
                        rr.cumulative_lost,
                        rr.jitter_ms,
                        rr.rtt_ms
                            .map_or_else(|| "-".to_owned(), |rtt| format!("{rtt:.2} ms"))
                    )
                },
            );
            section(
                "rtcp",
                vec![("last sender report", sr), ("last receiver report", rr)],
            );
        }
    }
    out
}

/// The control plane's live calls (the JSON objects of `GET /calls`).
pub fn calls(calls: &[serde_json::Value]) -> String {
    let mut t = Table::new(&[
        ("SESSION", Align::Left),
        ("TENANT", Align::Left),
        ("STATE", Align::Left),
        ("DIR", Align::Left),
        ("CALLER", Align::Left),
        ("DIALED", Align::Left),
        ("ENDPOINT", Align::Left),
        ("FORMAT", Align::Left),
        ("AGE", Align::Right),
        ("REATT", Align::Right),
    ]);
    for c in calls {
        t.row(vec![
            text(&c["session"]),
            text(&c["tenant"]),
            text(&c["state"]),
            text(&c["direction"]),
            text(&c["caller"]),
            text(&c["dialed"]),
            text(&c["endpoint"]),
            text(&c["format"]),
            uptime(c["age_s"].as_u64().unwrap_or(0)),
            c["reattached"].as_u64().unwrap_or(0).to_string(),
        ]);
    }
    let n = calls.len();
    format!("{}{n} call{}\n", t.render(), plural(n))
}

/// Sessions (the JSON objects of `GET /sessions`).
pub fn sessions(sessions: &[serde_json::Value]) -> String {
    let mut t = Table::new(&[
        ("SESSION", Align::Left),
        ("TENANT", Align::Left),
        ("STATE", Align::Left),
        ("HOST", Align::Left),
        ("CREATED (UTC)", Align::Left),
        ("PACKETS", Align::Right),
        ("LOST", Align::Right),
        ("JITTER ms", Align::Right),
        ("END", Align::Left),
    ]);
    for s in sessions {
        let rx = &s["final_stats"]["rx"];
        t.row(vec![
            text(&s["id"]),
            text(&s["tenant"]),
            text(&s["state"]),
            text(&s["host"]),
            utc(s["created_at_ms"].as_u64().unwrap_or(0)),
            rx["packets"]
                .as_u64()
                .map_or_else(|| "-".into(), |v| v.to_string()),
            rx["lost"]
                .as_i64()
                .map_or_else(|| "-".into(), |v| v.to_string()),
            rx["jitter_ms"]
                .as_f64()
                .map_or_else(|| "-".into(), |v| format!("{v:.2}")),
            text(&s["end_reason"]),
        ]);
    }
    let n = sessions.len();
    format!("{}{n} session{}\n", t.render(), plural(n))
}

/// A JSON string as table text; `-` when absent.
fn text(v: &serde_json::Value) -> String {
    v.as_str().map_or_else(|| "-".to_owned(), str::to_owned)
}

/// The server's name from `hello`, or a stand-in when it sent none.
pub fn server_name(hello: &HelloReply) -> &str {
    if hello.server.is_empty() {
        "mediagw-dataplane"
    } else {
        &hello.server
    }
}

/// An endpoint state as the protocol spells it.
pub fn state(state: EndpointState) -> &'static str {
    match state {
        EndpointState::Waiting => "waiting",
        EndpointState::Receiving => "receiving",
        EndpointState::Silent => "silent",
    }
}

/// A worker engine as the protocol spells it.
pub fn engine(engine: Engine) -> &'static str {
    match engine {
        Engine::IoUring => "io_uring",
        Engine::Epoll => "epoll",
    }
}

/// Seconds as `3d 04:05:06`, the days only when there are some.
pub fn uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

/// Bytes in SI units: `512 B`, `1.5 kB`, `306.2 GB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1000.0;
    let mut unit = 0;
    while v >= 999.95 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Unix milliseconds as `2024-05-06 12:53:20.120Z` (proleptic Gregorian,
/// UTC).
pub fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (y, mo, d) = civil_from_days(secs / 86_400);
    let sod = secs % 86_400;
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        unix_ms % 1000
    )
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's
/// `civil_from_days` for non-negative days.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// `"s"` unless there is exactly one.
pub fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use mediagw_shared::codec::Codec;
    use mediagw_shared::control::{
        JitterBufferStats, RtcpSummary, RxStats, TapStats, TxStats, WorkerStatus,
    };
    use mediagw_shared::ids::EndpointId;

    use super::*;

    #[test]
    fn table_pads_aligns_and_trims() {
        let mut t = Table::new(&[("ID", Align::Left), ("N", Align::Right), ("X", Align::Left)]);
        t.row(vec!["ep-1".into(), "5".into(), String::new()]);
        t.row(vec!["ep-1a2b".into(), "12345".into(), "é".into()]);
        t.row(vec!["x".into()]);
        assert_eq!(
            t.render(),
            "ID           N  X\n\
             ep-1         5\n\
             ep-1a2b  12345  é\n\
             x\n"
        );
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn empty_table_is_its_header() {
        let t = Table::new(&[("A", Align::Left), ("BB", Align::Right)]);
        assert!(t.is_empty());
        assert_eq!(t.render(), "A  BB\n");
    }

    #[test]
    fn durations_bytes_and_dates() {
        assert_eq!(uptime(0), "00:00:00");
        assert_eq!(uptime(3661), "01:01:01");
        assert_eq!(uptime(86_400 + 59), "1d 00:00:59");
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1500), "1.5 kB");
        assert_eq!(bytes(999_999), "1.0 MB");
        assert_eq!(bytes(306_160_000_000), "306.2 GB");
        assert_eq!(bytes(u64::MAX), "18.4 EB");
        assert_eq!(utc(0), "1970-01-01 00:00:00.000Z");
        assert_eq!(utc(1_715_000_000_120), "2024-05-06 12:53:20.120Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00.000Z");
        assert_eq!(utc(4_107_542_399_999), "2100-02-28 23:59:59.999Z");
    }

    fn sample_status() -> ServerStatus {
        ServerStatus {
            version: 1,
            uptime_s: 90_061,
            draining: true,
            workers: vec![
                WorkerStatus {
                    id: 0,
                    core: Some(2),
                    engine: Engine::IoUring,
                    endpoints: 412,
                    packets_per_s: 20_600,
                    loop_overruns: 0,
                },
                WorkerStatus {
                    id: 1,
                    core: None,
                    engine: Engine::Epoll,
                    endpoints: 9,
                    packets_per_s: 450,
                    loop_overruns: 2,
                },
            ],
            endpoints: 421,
            streams_receiving: 415,
            rx_packets: 1_780_000_000,
            rx_bytes: 306_160_000_000,
            tx_packets: 5,
            tx_bytes: 860,
        }
    }

    #[test]
    fn status_has_workers_and_totals() {
        let out = status(
            &HelloReply::new("mediagw-dataplane/0.1.0"),
            &sample_status(),
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                "mediagw-dataplane/0.1.0  protocol 1  up 1d 01:01:01  DRAINING",
                "endpoints 421 (415 receiving)  rx 1780000000 pkts, 306.2 GB  tx 5 pkts, 860 B",
                "",
                "WORKER  CORE  ENGINE    ENDPOINTS  PKT/S  OVERRUNS",
                "     0     2  io_uring        412  20600         0",
                "     1     -  epoll             9    450         2",
                " total                        421  21050         2",
            ]
        );
    }

    #[test]
    fn endpoints_table() {
        let e = EndpointSummary {
            endpoint: EndpointId(0x1a2b),
            tenant: "acme".parse().unwrap(),
            session: "1715000000.42".parse().unwrap(),
            codec: Codec::Pcmu,
            local_addr: "10.0.0.5:40000".parse().unwrap(),
            peer: None,
            state: EndpointState::Waiting,
            created_at_ms: 0,
            rx_packets: 0,
            lost: -1,
            jitter_ms: 1.256,
        };
        let out = endpoints(&[e]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                "ID       TENANT  SESSION        CODEC  LOCAL           PEER  STATE    RX PKTS  LOST  JITTER MS",
                "ep-1a2b  acme    1715000000.42  PCMU   10.0.0.5:40000  -     waiting        0    -1       1.26",
                "1 endpoint",
            ]
        );
        assert_eq!(endpoints(&[]).lines().last(), Some("0 endpoints"));
    }

    fn sample_stats() -> EndpointStats {
        EndpointStats {
            endpoint: EndpointId(0x1a2b),
            tenant: "acme".parse().unwrap(),
            session: "s1".parse().unwrap(),
            codec: Codec::Slin16,
            local_addr: "10.0.0.5:40000".parse().unwrap(),
            peer: Some("10.0.0.9:17234".parse().unwrap()),
            state: EndpointState::Receiving,
            created_at_ms: 1_715_000_000_120,
            first_packet_at_ms: Some(1_715_000_000_480),
            last_packet_at_ms: None,
            rx: RxStats {
                packets: 3100,
                lost: 4,
                jitter_ms: 1.25,
                max_jitter_ms: 7.5,
                ssrc: Some(0x1a2b_3c4d),
                ..RxStats::default()
            },
            jitter_buffer: JitterBufferStats {
                concealed: 5,
                current_delay_ms: 40,
                target_delay_ms: 60,
                ..JitterBufferStats::default()
            },
            tx: TxStats::default(),
            tap: TapStats::default(),
            rtcp: Some(RtcpSummary::default()),
        }
    }

    #[test]
    fn stats_are_grouped() {
        let out = stats(&sample_stats());
        for needle in [
            "endpoint      ep-1a2b\n",
            "codec         slin16 (16000 Hz)\n",
            "first packet  2024-05-06 12:53:20.480Z (+0.360 s)\n",
            "last packet   -\n",
            "\nrx\n  packets             3100 (0 B)\n",
            "  jitter              1.25 ms (max 7.50 ms)\n",
            "  ssrc                0x1a2b3c4d (0 changes)\n",
            "\njitter buffer\n  played            0\n  concealed         5\n",
            "  delay             40 ms (target 60 ms)\n",
            "\ntx\n  packets         0 (0 B)\n",
            "\ntap\n  subscribers  0\n",
            "\nrtcp\n  last sender report    -\n  last receiver report  -\n",
        ] {
            assert!(out.contains(needle), "{needle:?} not in\n{out}");
        }
    }
}
