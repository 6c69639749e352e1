//! SVG charts of benchmark results (`plotters`, SVG backend only: no system font libraries).
//!
//! Why it exists: a reader takes in "wake time against RTT" at a glance; the README's figures
//! come from `kvsqlite bench startup --sweep --chart FILE`.

use plotters::prelude::*;

use super::startup::SweepPoint;

/// Wake time (ms) against RTT (ms) of a startup sweep: one line per database size for the
/// kvsqlite wake (`existing`) and one for the naive wake without preload, plus the line
/// `wall = RTT` (the floor of one round trip). Returns the SVG document.
pub fn wake_vs_rtt_svg(points: &[SweepPoint]) -> Result<String, String> {
    if points.is_empty() {
        return Err("no sweep points to chart".into());
    }
    let max_rtt = points.iter().map(|p| p.rtt_ms).fold(1.0, f64::max);
    let max_ms = points
        .iter()
        .map(|p| p.bench.naive_existing.wall_ms.max(p.bench.existing.wall_ms))
        .fold(1.0, f64::max);
    let mut sizes: Vec<u64> = points.iter().map(|p| p.db_kib).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let mut svg = String::new();
    {
        let e = |e: DrawingAreaErrorKind<std::io::Error>| format!("drawing the chart: {e}");
        let root = SVGBackend::with_string(&mut svg, (720, 440)).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Wake time against KV round-trip time", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..max_rtt * 1.05, 0.0..max_ms * 1.1)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("RTT (ms)")
            .y_desc("wall time of the wake (ms)")
            .draw()
            .map_err(e)?;
        chart
            .draw_series(LineSeries::new(
                [(0.0, 0.0), (max_rtt, max_rtt)],
                BLACK.mix(0.3),
            ))
            .map_err(e)?
            .label("1 × RTT (the floor)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLACK.mix(0.3)));
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
            let blue = BLUE.mix(1.0 - 0.25 * i as f64);
            let red = RED.mix(1.0 - 0.25 * i as f64);
            chart
                .draw_series(LineSeries::new(line(false), blue.stroke_width(2)))
                .map_err(e)?
                .label(format!("kvsqlite wake, {size} KiB"))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], blue));
            chart
                .draw_series(LineSeries::new(line(true), red.stroke_width(2)))
                .map_err(e)?
                .label(format!("naive wake (no preload), {size} KiB"))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], red));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(e)?;
        root.present().map_err(e)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
