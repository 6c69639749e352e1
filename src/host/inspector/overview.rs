//! The fleet sections of the host overview (`GET /`): the awake actors with their size, last
//! wake, statements and KV round trips; the costliest actors of the last interval; and charts
//! of the last hour (KV round trips, KV bytes, statements, commits and awake actors).
//!
//! Why it exists: an operator opening the host wants to see which actors are there and what
//! the fleet did lately without a Prometheus server. Everything is read from the host's own
//! figures ([`crate::host::prom_families`], [`crate::host::top`]); no actor is woken or
//! locked. Every value shown goes through [`esc`].

use std::fmt::Write as _;

use super::escape::{esc, url_encode};
use super::html::fmt_time;
use super::svg;
use crate::host::prom::HostMetrics;
use crate::host::prom_families::{ActorInfo, HourSample, HOUR_EVERY, HOUR_SAMPLES};
use crate::host::top::{By, Cost, DEFAULT_LIMIT};

/// Awake actors listed at most.
const MAX_ROWS: usize = 200;

/// What the fleet sections show.
pub struct Fleet {
    /// The awake actors, by id.
    pub actors: Vec<(String, ActorInfo)>,
    /// The costliest actors of the last interval, by KV round trips.
    pub top: Vec<(String, Cost)>,
    /// The last interval's length in seconds.
    pub top_seconds: f64,
    /// The hour's points, oldest first, the last one taken now.
    pub hour: Vec<HourSample>,
    /// The cluster section (HTML, escaped; empty outside a cluster).
    pub cluster: String,
}

impl Fleet {
    /// Reads the host's figures (`awake`: actors awake now).
    pub fn gather(m: &HostMetrics, awake: u64) -> Fleet {
        let f = &m.families;
        let (top, span) = f.costs.top(By::RoundTrips, DEFAULT_LIMIT);
        let mut hour = f.hour();
        hour.push(f.point(awake));
        Fleet {
            actors: f.awake_actors(),
            top,
            top_seconds: span.as_secs_f64(),
            hour,
            cluster: crate::host::cluster::route::overview_html(&f.cluster),
        }
    }
}

fn size_text(b: Option<u64>) -> String {
    match b {
        None => "?".into(),
        Some(b) if b < 10 * 1024 => format!("{b} B"),
        Some(b) if b < 10 * 1024 * 1024 => format!("{} KiB", b / 1024),
        Some(b) => format!("{} MiB", b / (1024 * 1024)),
    }
}

/// One bar per interval between consecutive points, padded on the left to an hour.
fn chart(
    title: &str,
    id: &str,
    hour: &[HourSample],
    f: impl Fn(&HourSample, &HourSample) -> u64,
) -> String {
    let now = hour.last().map(|p| p.at);
    let mut bars: Vec<(String, u64)> = std::iter::repeat_n(
        (String::new(), 0),
        HOUR_SAMPLES.saturating_sub(hour.len().saturating_sub(1)),
    )
    .collect();
    for w in hour.windows(2) {
        let ago = now.map_or(0, |n| n.duration_since(w[1].at).as_secs());
        bars.push((format!("-{}m", ago / 60), f(&w[0], &w[1])));
    }
    format!(
        "<h3>{}</h3><div class=\"chart\" id=\"{id}\">{}</div>",
        esc(title),
        svg::bars(title, &bars)
    )
}

/// The sections, as HTML.
pub fn sections(o: &Fleet) -> String {
    let mut b = o.cluster.clone();
    b.push_str(
        "<section id=\"fleet\" data-live><h2>Awake actors</h2><table id=\"actors\"><thead><tr><th>actor</th><th>size</th><th>woke (UTC)</th><th>statements</th><th>KV round trips</th></tr></thead><tbody>",
    );
    for (id, a) in o.actors.iter().take(MAX_ROWS) {
        let _ = write!(
            b,
            "<tr data-actor=\"{}\"><td><a href=\"/actors/{}/inspector\">{}</a>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(id),
            esc(&url_encode(id)),
            esc(id),
            if a.created { " <small>(created)</small>" } else { "" },
            size_text(a.size_bytes),
            fmt_time(a.woke_unix_ms),
            a.statements,
            a.kv_round_trips
        );
    }
    if o.actors.len() > MAX_ROWS {
        let _ = write!(
            b,
            "<tr><td colspan=\"5\">… and {} more</td></tr>",
            o.actors.len() - MAX_ROWS
        );
    }
    let _ = write!(
        b,
        "</tbody></table><h2>Costliest actors (last {:.0} s)</h2><table id=\"top\"><thead><tr><th>actor</th><th>KV round trips</th><th>KV bytes</th><th>statements</th><th>busy (ms)</th></tr></thead><tbody>",
        o.top_seconds
    );
    for (id, c) in &o.top {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td></tr>",
            esc(id),
            c.kv_round_trips,
            c.kv_bytes,
            c.statements,
            c.busy_seconds * 1000.0
        );
    }
    let _ = write!(
        b,
        "</tbody></table><h2>Last hour ({} s steps)</h2>",
        HOUR_EVERY.as_secs()
    );
    let h = &o.hour;
    b.push_str(&chart("KV round trips", "chart-kv", h, |a, z| {
        z.kv_calls.saturating_sub(a.kv_calls)
    }));
    b.push_str(&chart("KV bytes", "chart-bytes", h, |a, z| {
        z.kv_bytes.saturating_sub(a.kv_bytes)
    }));
    b.push_str(&chart("SQL statements", "chart-statements", h, |a, z| {
        z.statements.saturating_sub(a.statements)
    }));
    b.push_str(&chart("commits", "chart-commits", h, |a, z| {
        z.commits.saturating_sub(a.commits)
    }));
    b.push_str(&chart("awake actors", "chart-awake", h, |_, z| z.awake));
    b.push_str("</section>");
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn values_are_escaped_and_charts_drawn() {
        let at = Instant::now();
        let p = |kv_calls| HourSample {
            at,
            awake: 1,
            kv_calls,
            kv_bytes: 0,
            statements: 0,
            commits: 0,
        };
        let f = Fleet {
            actors: vec![(
                "<b>x".into(),
                ActorInfo {
                    woke_unix_ms: 0,
                    created: true,
                    size_bytes: Some(8192),
                    statements: 3,
                    kv_round_trips: 4,
                },
            )],
            top: vec![("<i>y".into(), Cost::default())],
            top_seconds: 1.0,
            hour: vec![p(1), p(8)],
            cluster: String::new(),
        };
        let s = sections(&f);
        assert!(!s.contains("<b>x") && !s.contains("<i>y"));
        assert!(s.contains("&lt;b&gt;x") && s.contains("&lt;i&gt;y"));
        assert!(s.contains("<title>-0m: 7</title>"), "{s}");
        assert_eq!(s.matches("<svg").count(), 5);
    }
}
