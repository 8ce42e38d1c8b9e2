//! `watch`: per-interval rates from successive listings, and the screen.
//!
//! Sans-IO: [`RateTracker::update`] is fed each refresh's answers and the
//! time they were taken; [`render`] turns the result into text.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use mediagw_shared::control::{EndpointSummary, HelloReply, ServerStatus};
use mediagw_shared::ids::EndpointId;

use crate::format::{self, Align, Table};

/// Remembers the previous refresh's counters.
#[derive(Debug, Default)]
pub struct RateTracker {
    prev: Option<Counters>,
}

#[derive(Debug)]
struct Counters {
    at: Duration,
    rx_packets: u64,
    tx_packets: u64,
    endpoints: HashMap<EndpointId, u64>,
}

/// One refresh, rates included.
#[derive(Debug, Clone)]
pub struct View {
    /// The status as answered.
    pub status: ServerStatus,
    /// Received packets per second, all endpoints; `None` on the first
    /// refresh or after a counter went backwards (a restart).
    pub rx_rate: Option<f64>,
    /// Sent packets per second, likewise.
    pub tx_rate: Option<f64>,
    /// The endpoints, busiest first.
    pub rows: Vec<Row>,
}

/// One endpoint in a [`View`].
#[derive(Debug, Clone)]
pub struct Row {
    /// As listed.
    pub summary: EndpointSummary,
    /// Received packets per second since the last refresh; `None` for an
    /// endpoint that was not there before.
    pub rx_rate: Option<f64>,
}

impl RateTracker {
    /// Takes one refresh, taken at `at` (any monotonic origin), and
    /// computes rates against the previous one. Rows come sorted by rate,
    /// highest first; endpoints without a rate last, then by packets and id.
    pub fn update(
        &mut self,
        at: Duration,
        status: ServerStatus,
        endpoints: Vec<EndpointSummary>,
    ) -> View {
        let prev = self.prev.take();
        let elapsed = prev
            .as_ref()
            .map(|p| at.saturating_sub(p.at).as_secs_f64())
            .filter(|&s| s > 0.0);
        let rate = |now: u64, before: Option<u64>| match (before, elapsed) {
            (Some(before), Some(secs)) if now >= before => Some((now - before) as f64 / secs),
            _ => None,
        };
        let mut rows: Vec<Row> = endpoints
            .into_iter()
            .map(|summary| {
                let before = prev
                    .as_ref()
                    .and_then(|p| p.endpoints.get(&summary.endpoint).copied());
                Row {
                    rx_rate: rate(summary.rx_packets, before),
                    summary,
                }
            })
            .collect();
        rows.sort_by(|a, b| {
            let by_rate = match (a.rx_rate, b.rx_rate) {
                (Some(x), Some(y)) => y.total_cmp(&x),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            };
            by_rate
                .then(b.summary.rx_packets.cmp(&a.summary.rx_packets))
                .then(a.summary.endpoint.cmp(&b.summary.endpoint))
        });
        let view = View {
            rx_rate: rate(status.rx_packets, prev.as_ref().map(|p| p.rx_packets)),
            tx_rate: rate(status.tx_packets, prev.as_ref().map(|p| p.tx_packets)),
            rows,
            status,
        };
        self.prev = Some(Counters {
            at,
            rx_packets: view.status.rx_packets,
            tx_packets: view.status.tx_packets,
            endpoints: view
                .rows
                .iter()
                .map(|r| (r.summary.endpoint, r.summary.rx_packets))
                .collect(),
        });
        view
    }
}

/// The screen: a status line, then the `top` busiest endpoints.
pub fn render(hello: &HelloReply, view: &View, interval: Duration, top: usize) -> String {
    let s = &view.status;
    let overruns: u64 = s.workers.iter().map(|w| w.loop_overruns).sum();
    let mut out = format!(
        "{}  up {}  endpoints {} ({} receiving)  rx {} pkt/s  tx {} pkt/s  overruns {}{}\n",
        format::server_name(hello),
        format::uptime(s.uptime_s),
        s.endpoints,
        s.streams_receiving,
        rate(view.rx_rate),
        rate(view.tx_rate),
        overruns,
        if s.draining { "  DRAINING" } else { "" },
    );
    let _ = writeln!(
        out,
        "every {:.1} s, busiest first; Ctrl-C quits\n",
        interval.as_secs_f64()
    );
    let mut table = Table::new(&[
        ("ID", Align::Left),
        ("TENANT", Align::Left),
        ("SESSION", Align::Left),
        ("CODEC", Align::Left),
        ("STATE", Align::Left),
        ("RX PKT/S", Align::Right),
        ("RX PKTS", Align::Right),
        ("LOST", Align::Right),
        ("JITTER MS", Align::Right),
        ("PEER", Align::Left),
    ]);
    for row in view.rows.iter().take(top) {
        let e = &row.summary;
        table.row(vec![
            e.endpoint.to_string(),
            e.tenant.to_string(),
            e.session.to_string(),
            e.codec.to_string(),
            format::state(e.state).to_owned(),
            rate(row.rx_rate),
            e.rx_packets.to_string(),
            e.lost.to_string(),
            format!("{:.2}", e.jitter_ms),
            e.peer.map_or_else(|| "-".to_owned(), |p| p.to_string()),
        ]);
    }
    out.push_str(&table.render());
    if view.rows.len() > top {
        let _ = writeln!(out, "... and {} more", view.rows.len() - top);
    }
    out
}

fn rate(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".to_owned(), |r| format!("{r:.0}"))
}

#[cfg(test)]
mod tests {
    use mediagw_shared::codec::Codec;
    use mediagw_shared::control::EndpointState;

    use super::*;

    fn status(rx: u64) -> ServerStatus {
        ServerStatus {
            version: 1,
            uptime_s: 10,
            draining: false,
            workers: Vec::new(),
            endpoints: 3,
            streams_receiving: 2,
            rx_packets: rx,
            rx_bytes: 0,
            tx_packets: 0,
            tx_bytes: 0,
        }
    }

    fn ep(id: u64, rx: u64) -> EndpointSummary {
        EndpointSummary {
            endpoint: EndpointId(id),
            tenant: "t".parse().unwrap(),
            session: format!("s{id}").parse().unwrap(),
            codec: Codec::Pcma,
            local_addr: "127.0.0.1:4000".parse().unwrap(),
            peer: None,
            state: EndpointState::Receiving,
            created_at_ms: 0,
            rx_packets: rx,
            lost: 0,
            jitter_ms: 0.0,
        }
    }

    fn ids(view: &View) -> Vec<u64> {
        view.rows.iter().map(|r| r.summary.endpoint.0).collect()
    }

    #[test]
    fn first_refresh_has_no_rates_and_sorts_by_packets() {
        let mut t = RateTracker::default();
        let v = t.update(
            Duration::from_secs(1),
            status(100),
            vec![ep(1, 10), ep(2, 90), ep(3, 10)],
        );
        assert_eq!(v.rx_rate, None);
        assert!(v.rows.iter().all(|r| r.rx_rate.is_none()));
        assert_eq!(ids(&v), [2, 1, 3]);
    }

    #[test]
    fn rates_come_from_the_interval() {
        let mut t = RateTracker::default();
        t.update(
            Duration::from_secs(1),
            status(100),
            vec![ep(1, 10), ep(2, 90)],
        );
        // 2 s later: ep 1 got 200 packets, ep 2 only 20, ep 3 is new.
        let v = t.update(
            Duration::from_secs(3),
            status(400),
            vec![ep(1, 210), ep(2, 110), ep(3, 5000)],
        );
        assert_eq!(v.rx_rate, Some(150.0));
        assert_eq!(ids(&v), [1, 2, 3]);
        let rates: Vec<Option<f64>> = v.rows.iter().map(|r| r.rx_rate).collect();
        assert_eq!(rates, [Some(100.0), Some(10.0), None]);
    }

    #[test]
    fn counters_going_backwards_give_no_rate() {
        let mut t = RateTracker::default();
        t.update(Duration::from_secs(1), status(100), vec![ep(1, 50)]);
        let v = t.update(Duration::from_secs(2), status(10), vec![ep(1, 5)]);
        assert_eq!((v.rx_rate, v.rows[0].rx_rate), (None, None));
        // Same instant twice: no division by zero.
        let v = t.update(Duration::from_secs(2), status(10), vec![ep(1, 5)]);
        assert_eq!(v.rx_rate, None);
    }

    #[test]
    fn render_limits_rows() {
        let mut t = RateTracker::default();
        let v = t.update(
            Duration::ZERO,
            status(0),
            vec![ep(1, 3), ep(2, 2), ep(3, 1)],
        );
        let out = render(&HelloReply::new("dp/1"), &v, Duration::from_millis(500), 2);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("dp/1  up 00:00:10  endpoints 3 (2 receiving)  rx - pkt/s"));
        assert_eq!(lines[1], "every 0.5 s, busiest first; Ctrl-C quits");
        assert!(lines[3].starts_with("ID "));
        assert!(lines[4].starts_with("ep-1 "));
        assert!(lines[5].starts_with("ep-2 "));
        assert_eq!(lines[6], "... and 1 more");
    }
}
