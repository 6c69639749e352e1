//! Inline SVG charts: the wake waterfall, plain bar charts (histograms) and the history
//! timeline.
//!
//! Why it exists: the pages must read without script and without assets from elsewhere, so
//! the charts are drawn on the server as SVG elements with every label escaped.

use std::fmt::Write as _;

use super::escape::esc;

/// One bar of the waterfall.
pub struct Phase {
    /// The phase name.
    pub name: String,
    /// True for a user phase (callbacks, migrations), drawn in the second colour.
    pub user: bool,
    /// Milliseconds.
    pub ms: f64,
    /// KV round trips the phase made.
    pub round_trips: u64,
}

const WIDTH: f64 = 1100.0;
const LABEL: f64 = 260.0;
const ROW: f64 = 22.0;

/// The phases one after another on a time axis, each bar labelled with its name and ms.
pub fn waterfall(phases: &[Phase], total_ms: f64) -> String {
    let sum: f64 = phases.iter().map(|p| p.ms.max(0.0)).sum();
    let span = total_ms.max(sum).max(0.001);
    let plot = WIDTH - LABEL - 90.0;
    let height = ROW * phases.len() as f64 + 30.0;
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg class="waterfall" role="img" aria-label="wake waterfall" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" xmlns="http://www.w3.org/2000/svg">"#
    );
    // Axis: five ticks.
    for i in 0..=4 {
        let x = LABEL + plot * i as f64 / 4.0;
        let ms = span * i as f64 / 4.0;
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" y1="0" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle" fill="#555">{ms:.2} ms</text>"##,
            height - 18.0,
            height - 4.0
        );
    }
    let mut at = 0.0;
    for (i, p) in phases.iter().enumerate() {
        let y = ROW * i as f64 + 2.0;
        let x = LABEL + plot * at / span;
        let w = (plot * p.ms.max(0.0) / span).max(1.5);
        let (class, colour) = if p.user {
            ("user", "#e07b39")
        } else {
            ("internal", "#3b75af")
        };
        let name = esc(&p.name);
        let _ = write!(
            out,
            r##"<g class="phase {class}" data-phase="{name}"><text x="{:.1}" y="{:.1}" font-size="12" text-anchor="end" fill="#222">{name}</text><rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{:.1}" fill="{colour}"><title>{name}: {:.3} ms, {} KV round trip(s) ({class})</title></rect><text x="{:.1}" y="{:.1}" font-size="11" fill="#222">{:.3} ms · {} RT</text></g>"##,
            LABEL - 6.0,
            y + 14.0,
            ROW - 6.0,
            p.ms,
            p.round_trips,
            x + w + 4.0,
            y + 14.0,
            p.ms,
            p.round_trips
        );
        at += p.ms.max(0.0);
    }
    out.push_str("</svg>");
    out
}

/// A vertical bar chart: one bar per `(label, count)`.
pub fn bars(title: &str, data: &[(String, u64)]) -> String {
    let (w, h, pad) = (1100.0, 170.0, 30.0);
    let max = data.iter().map(|d| d.1).max().unwrap_or(0).max(1) as f64;
    let n = data.len().max(1) as f64;
    let bw = (w - 2.0 * pad) / n;
    // A label at most every 48 px.
    let every = ((48.0 / bw).ceil() as usize).max(1);
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg class="bars" role="img" aria-label="{}" width="{w}" height="{h}" viewBox="0 0 {w} {h}" xmlns="http://www.w3.org/2000/svg">"#,
        esc(title)
    );
    for (i, (label, count)) in data.iter().enumerate() {
        let bh = (h - 2.0 * pad) * *count as f64 / max;
        let x = pad + bw * i as f64;
        let y = h - pad - bh;
        let _ = write!(
            out,
            r##"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{bh:.1}" fill="#3b75af"><title>{}: {count}</title></rect>"##,
            x + 1.0,
            (bw - 2.0).max(1.0),
            esc(label),
        );
        if i % every == 0 {
            let _ = write!(
                out,
                r##"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle" fill="#555">{}</text>"##,
                x + bw / 2.0,
                h - pad + 12.0,
                esc(label)
            );
        }
        if *count > 0 && bw >= 14.0 {
            let _ = write!(
                out,
                r##"<text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle" fill="#222">{count}</text>"##,
                x + bw / 2.0,
                y - 2.0
            );
        }
    }
    out.push_str("</svg>");
    out
}

/// One commit on the history timeline.
pub struct Commit {
    /// Its commit seq.
    pub seq: u64,
    /// Its time, ms since the epoch.
    pub time_ms: u64,
    /// Bytes of its redo record.
    pub bytes: u64,
    /// True for a restore (drawn in the second colour).
    pub restore: bool,
    /// Its time as shown.
    pub label: String,
}

/// The history timeline: one bar per commit at its time, as tall as its bytes (restores in
/// the second colour), and a line of the commits kept so far, on a time axis from the oldest
/// kept commit to the newest.
pub fn timeline(commits: &[Commit]) -> String {
    let (w, h, pad, axis) = (1100.0, 190.0, 40.0, 18.0);
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg class="timeline" role="img" aria-label="history: commits and bytes over time" width="{w}" height="{h}" viewBox="0 0 {w} {h}" xmlns="http://www.w3.org/2000/svg">"#
    );
    let (Some(first), Some(last)) = (commits.first(), commits.last()) else {
        let _ = write!(
            out,
            r##"<text x="{pad}" y="{:.1}" font-size="12" fill="#555">no commit kept</text></svg>"##,
            h / 2.0
        );
        return out;
    };
    let (t0, t1) = (first.time_ms, last.time_ms.max(first.time_ms + 1));
    let plot_w = w - 2.0 * pad;
    let plot_h = h - pad - axis;
    let x_of = |t: u64| pad + plot_w * (t.saturating_sub(t0)) as f64 / (t1 - t0) as f64;
    let max_bytes = commits.iter().map(|c| c.bytes).max().unwrap_or(1).max(1) as f64;
    let n = commits.len() as f64;
    let _ = write!(
        out,
        r##"<line x1="{pad}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#999"/><text x="{pad}" y="{:.1}" font-size="10" fill="#555">{}</text><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end" fill="#555">{}</text><text x="{pad}" y="12" font-size="10" fill="#555">bytes per commit (max {}) · line: commits kept ({})</text>"##,
        h - axis,
        w - pad,
        h - axis,
        h - 4.0,
        esc(&first.label),
        w - pad,
        h - 4.0,
        esc(&last.label),
        max_bytes as u64,
        commits.len()
    );
    let mut line = String::new();
    for (i, c) in commits.iter().enumerate() {
        let x = x_of(c.time_ms);
        let bh = (plot_h * c.bytes as f64 / max_bytes).max(1.0);
        let (class, colour) = if c.restore {
            ("restore", "#e07b39")
        } else {
            ("commit", "#3b75af")
        };
        let _ = write!(
            out,
            r##"<rect class="{class}" data-seq="{}" x="{:.1}" y="{:.1}" width="3" height="{bh:.1}" fill="{colour}"><title>seq {} at {}: {} bytes ({class})</title></rect>"##,
            c.seq,
            x - 1.5,
            h - axis - bh,
            c.seq,
            esc(&c.label),
            c.bytes
        );
        let y = h - axis - plot_h * (i + 1) as f64 / n;
        let _ = write!(line, "{x:.1},{y:.1} ");
    }
    let _ = write!(
        out,
        r##"<polyline points="{}" fill="none" stroke="#2a2" stroke-width="1.5"/></svg>"##,
        line.trim_end()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        let s = waterfall(
            &[Phase {
                name: "<b>x".into(),
                user: true,
                ms: 1.0,
                round_trips: 1,
            }],
            1.0,
        );
        assert!(s.contains("&lt;b&gt;x") && !s.contains("<b>"));
        assert!(s.contains("1.000 ms · 1 RT"));
        let s = bars("t<", &[("<i>".into(), 3)]);
        assert!(!s.contains("<i>"));
        let s = timeline(&[
            Commit {
                seq: 1,
                time_ms: 1_000,
                bytes: 10,
                restore: false,
                label: "<a>".into(),
            },
            Commit {
                seq: 2,
                time_ms: 2_000,
                bytes: 20,
                restore: true,
                label: "b".into(),
            },
        ]);
        assert!(!s.contains("<a>") && s.contains("&lt;a&gt;"));
        assert!(s.contains("data-seq=\"1\"") && s.contains("class=\"restore\" data-seq=\"2\""));
        assert!(timeline(&[]).contains("no commit kept"));
    }
}
