//! SVG charts of benchmark results (`plotters`, SVG backend only: no system font libraries).
//!
//! Why it exists: a reader takes in "wake time against RTT" or "commits per second against
//! actor count" at a glance; the book's figures come from `kvsqlite bench startup --sweep
//! --chart FILE` and `kvsqlite bench actors --sweep --chart FILE`. Both are drawn by one
//! generic line chart ([`line_chart_svg`]); each chart only picks its series.

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

use super::actors::ActorsReport;
use super::startup::SweepPoint;

/// One line of a chart: its legend label, colour, width and points `(x, y)`.
pub struct Series {
    /// The legend's text.
    pub label: String,
    /// The line's colour.
    pub color: RGBAColor,
    /// Stroke width in pixels.
    pub width: u32,
    /// Whether each point is also marked with a dot.
    pub dots: bool,
    /// The points, in drawing order.
    pub points: Vec<(f64, f64)>,
}

/// The frame of a chart: title, axis descriptions and scales.
pub struct ChartSpec<'a> {
    /// The caption above the plot.
    pub title: &'a str,
    /// The x axis' description.
    pub x_desc: &'a str,
    /// The y axis' description.
    pub y_desc: &'a str,
    /// A logarithmic x axis (every x must then be above 0).
    pub x_log: bool,
    /// A logarithmic y axis (every y must then be above 0).
    pub y_log: bool,
    /// Where the legend goes.
    pub legend: SeriesLabelPosition,
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn draw_error(e: DrawingAreaErrorKind<std::io::Error>) -> String {
    format!("drawing the chart: {e}")
}

/// Draws `series` as lines on one chart with a legend, and returns the SVG
/// document (720 × 440). Linear axes start at 0 and reach 5% (x) and 10% (y) past the largest
/// value; logarithmic axes span the values with some room on either side.
///
/// Errors: no series or no point; a point that is not finite, or not above 0 on a log axis.
pub fn line_chart_svg(spec: &ChartSpec, series: &[Series]) -> Result<String, String> {
    let points = || series.iter().flat_map(|s| s.points.iter().copied());
    if points().next().is_none() {
        return Err("no points to chart".into());
    }
    if let Some(bad) = points().find(|&(x, y)| {
        !x.is_finite() || !y.is_finite() || (spec.x_log && x <= 0.0) || (spec.y_log && y <= 0.0)
    }) {
        return Err(format!("the point {bad:?} cannot be charted on these axes"));
    }
    let span = |get: fn((f64, f64)) -> f64, log: bool, room: f64| -> (f64, f64) {
        let max = points().map(get).fold(f64::MIN, f64::max);
        if log {
            let min = points().map(get).fold(f64::MAX, f64::min);
            (min / 1.5, max * 1.5)
        } else {
            (0.0, max.max(1.0) * room)
        }
    };
    let (x0, x1) = span(|p| p.0, spec.x_log, 1.05);
    let (y0, y1) = span(|p| p.1, spec.y_log, 1.1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 440)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        match (spec.x_log, spec.y_log) {
            (false, false) => draw(&root, spec, series, x0..x1, y0..y1)?,
            (true, false) => draw(&root, spec, series, (x0..x1).log_scale(), y0..y1)?,
            (false, true) => draw(&root, spec, series, x0..x1, (y0..y1).log_scale())?,
            (true, true) => draw(
                &root,
                spec,
                series,
                (x0..x1).log_scale(),
                (y0..y1).log_scale(),
            )?,
        }
        root.present().map_err(draw_error)?;
    }
    Ok(svg)
}

/// A tick's label: whole numbers without decimals (`10`, not `10.0`), others with at most two.
fn tick_label(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// A tick's label on a log axis: only 1, 2 and 5 times a power of ten are labelled (the other
/// ticks crowd each other near the next power), as by [`tick_label`].
fn log_tick_label(v: &f64) -> String {
    let mantissa = v / 10f64.powf(v.log10().floor());
    if [1.0, 2.0, 5.0, 10.0]
        .iter()
        .any(|m| (mantissa - m).abs() < 1e-6)
    {
        tick_label(v)
    } else {
        String::new()
    }
}

/// The body of [`line_chart_svg`] for one pair of axis types.
fn draw<X, Y>(root: &Area, spec: &ChartSpec, series: &[Series], x: X, y: Y) -> Result<(), String>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(root)
        .caption(spec.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_desc(spec.x_desc)
        .y_desc(spec.y_desc)
        .x_label_formatter(if spec.x_log {
            &log_tick_label
        } else {
            &tick_label
        })
        .y_label_formatter(if spec.y_log {
            &log_tick_label
        } else {
            &tick_label
        })
        .draw()
        .map_err(draw_error)?;
    for s in series {
        let color = s.color;
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(s.width),
            ))
            .map_err(draw_error)?
            .label(s.label.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
        if s.dots {
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(draw_error)?;
        }
    }
    chart
        .configure_series_labels()
        .position(spec.legend.clone())
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(draw_error)?;
    Ok(())
}

/// Wake time (ms) against RTT (ms) of a startup sweep: one line per database size for the
/// kvsqlite wake (`existing`) and one for the naive wake without preload, plus the line
/// `wall = RTT` (the floor of one round trip). Returns the SVG document.
pub fn wake_vs_rtt_svg(points: &[SweepPoint]) -> Result<String, String> {
    if points.is_empty() {
        return Err("no sweep points to chart".into());
    }
    let max_rtt = points.iter().map(|p| p.rtt_ms).fold(1.0, f64::max);
    let mut sizes: Vec<u64> = points.iter().map(|p| p.db_kib).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let mut series = vec![Series {
        label: "1 × RTT (the floor)".into(),
        color: BLACK.mix(0.3),
        width: 1,
        dots: false,
        points: vec![(0.0, 0.0), (max_rtt, max_rtt)],
    }];
    for (i, size) in sizes.iter().enumerate() {
        let line = |naive: bool| -> Vec<(f64, f64)> {
            points
                .iter()
                .filter(|p| p.db_kib == *size)
                .map(|p| {
                    let m = if naive {
                        &p.bench.naive_existing
                    } else {
                        &p.bench.existing
                    };
                    (p.rtt_ms, m.wall_ms)
                })
                .collect()
        };
        let fade = 1.0 - 0.25 * i as f64;
        series.push(Series {
            label: format!("kvsqlite wake, {size} KiB"),
            color: BLUE.mix(fade),
            width: 2,
            dots: false,
            points: line(false),
        });
        series.push(Series {
            label: format!("naive wake (no preload), {size} KiB"),
            color: RED.mix(fade),
            width: 2,
            dots: false,
            points: line(true),
        });
    }
    line_chart_svg(
        &ChartSpec {
            title: "Wake time against KV round-trip time",
            x_desc: "RTT (ms)",
            y_desc: "wall time of the wake (ms)",
            x_log: false,
            y_log: false,
            legend: SeriesLabelPosition::UpperLeft,
        },
        &series,
    )
}

/// The legend labels of [`commits_vs_actors_svg`]'s two series.
pub const COMMITS_SERIES: [&str; 2] = ["group commit", "one fsync per write (group_commit=off)"];

/// Commits per second against actor count (both axes logarithmic) of a `bench actors` sweep on
/// redb: one line with group commit (each report's `run`) and one with one fsync per write (its
/// `baseline`). Returns the SVG document.
///
/// Errors: no report, a report without a baseline, or a run without commits (a rate of 0 has no
/// place on a log axis).
pub fn commits_vs_actors_svg(reports: &[ActorsReport]) -> Result<String, String> {
    if reports.is_empty() {
        return Err("no sweep points to chart".into());
    }
    let mut group = Vec::new();
    let mut single = Vec::new();
    for r in reports {
        let b = r.baseline.as_ref().ok_or_else(|| {
            format!(
                "the point at {} actors has no one-fsync-per-write run",
                r.config.actors
            )
        })?;
        let n = r.config.actors as f64;
        group.push((n, r.run.commits_per_sec));
        single.push((n, b.commits_per_sec));
    }
    let series = [
        Series {
            label: COMMITS_SERIES[0].into(),
            color: BLUE.to_rgba(),
            width: 2,
            dots: true,
            points: group,
        },
        Series {
            label: COMMITS_SERIES[1].into(),
            color: RED.to_rgba(),
            width: 2,
            dots: true,
            points: single,
        },
    ];
    line_chart_svg(
        &ChartSpec {
            title: "Commits per second against actors on one redb file",
            x_desc: "actors (one writer thread each)",
            y_desc: "commits per second",
            x_log: true,
            y_log: true,
            legend: SeriesLabelPosition::LowerRight,
        },
        &series,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::actors::{ActorsConfig, Latency, RunResult, StopAfter};
    use crate::bench::startup::{StartMeasure, StartupBench};

    #[test]
    fn a_sweep_renders_as_svg_with_its_lines() {
        let m = |ms: f64| StartMeasure {
            kv_round_trips: 1,
            wall_ms: ms,
            phases: Vec::new(),
            prefetch_round_trips: None,
        };
        let points: Vec<SweepPoint> = [0.0, 5.0, 10.0]
            .iter()
            .map(|&rtt| SweepPoint {
                db_kib: 64,
                rtt_ms: rtt,
                bench: StartupBench {
                    existing: m(rtt + 0.3),
                    new: m(2.0 * rtt),
                    naive_existing: m(3.0 * rtt),
                },
            })
            .collect();
        let svg = wake_vs_rtt_svg(&points).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        assert!(svg.contains("kvsqlite wake, 64 KiB"));
        assert!(svg.contains("naive wake (no preload), 64 KiB"));
        assert!(wake_vs_rtt_svg(&[]).is_err());
    }

    fn report(actors: usize, group: f64, single: Option<f64>) -> ActorsReport {
        let run = |rate: f64, g: bool| RunResult {
            group_commit: Some(g),
            commits: 10,
            wall_s: 1.0,
            commits_per_sec: rate,
            latency_ms: Latency::default(),
            transactions: Some(1),
            writes_per_transaction: Some(1.0),
        };
        ActorsReport {
            backend: "redb",
            config: ActorsConfig {
                actors,
                threads: actors,
                stop: StopAfter::Commits(10),
                row_bytes: 100,
            },
            rtt_ms: 0.0,
            run: run(group, true),
            baseline: single.map(|s| run(s, false)),
        }
    }

    #[test]
    fn ticks_are_labelled_without_useless_decimals() {
        assert_eq!(tick_label(&10.0), "10");
        assert_eq!(tick_label(&2.5), "2.5");
        assert_eq!(tick_label(&0.126), "0.13");
        assert_eq!(tick_label(&1000.0), "1000");
        assert_eq!(log_tick_label(&2000.0), "2000");
        assert_eq!(log_tick_label(&50.0), "50");
        assert_eq!(log_tick_label(&1.0), "1");
        assert_eq!(log_tick_label(&7000.0), "");
    }

    #[test]
    fn commits_against_actors_has_both_series_on_log_axes() {
        let reports = [
            report(1, 400.0, Some(390.0)),
            report(16, 4000.0, Some(420.0)),
            report(256, 9000.0, Some(450.0)),
        ];
        let svg = commits_vs_actors_svg(&reports).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains(COMMITS_SERIES[0]) && svg.contains(COMMITS_SERIES[1]));
        assert!(commits_vs_actors_svg(&[]).is_err());
        assert!(commits_vs_actors_svg(&[report(4, 10.0, None)]).is_err());
        // A rate of 0 cannot sit on a log axis: an error, not a panic.
        assert!(commits_vs_actors_svg(&[report(4, 0.0, Some(1.0))]).is_err());
    }
}
