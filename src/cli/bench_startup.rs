//! `kvsqlite bench startup`: parses, runs [`kvsqlite::bench::startup`] and prints its result
//! (a JSON object with `--json`, a table otherwise). With `--sweep`, the same at every size of
//! `--db-kb` and every RTT of `--rtts`: `{"sweep": [point, …]}`, or one table row per point.
//!
//! Exit codes: 0 when the benchmark ran, 2 when it could not (store unreachable, an error while
//! running; one line on standard error).

use std::io::Write;

use clap::Args;
use kvsqlite::bench::startup::{self, StartMeasure};

use super::{output_error, GlobalArgs, Stop};

/// Arguments of `kvsqlite bench startup`.
#[derive(Args, Debug)]
pub struct StartupArgs {
    /// KiB of extra data (chat messages) in the existing actor [default: 256]; with --sweep, a
    /// comma-separated list of sizes [default: 64,256,1024].
    #[arg(long = "db-kb", value_name = "N", value_delimiter = ',')]
    db_kb: Vec<u64>,
    /// Measure at every size of --db-kb and every RTT of --rtts (prints one row per point).
    #[arg(long)]
    sweep: bool,
    /// The simulated RTTs of --sweep, comma-separated milliseconds [default: 0,1,5,10,20].
    #[arg(long, value_name = "MS,…", value_delimiter = ',', requires = "sweep")]
    rtts: Vec<f64>,
    /// With --sweep, also write an SVG chart of wake time against RTT to this file.
    #[arg(long, value_name = "FILE", requires = "sweep")]
    chart: Option<std::path::PathBuf>,
    /// Print `{"existing": {...}, "new": {...}, "naive_existing": {...}}` instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs `kvsqlite bench startup`.
pub fn run(global: &GlobalArgs, args: StartupArgs) -> i32 {
    super::finish("bench startup", bench(global, &args))
}

fn bench(global: &GlobalArgs, args: &StartupArgs) -> Result<i32, Stop> {
    if args.sweep {
        return bench_sweep(global, args);
    }
    let db_kb = match args.db_kb.as_slice() {
        [] => 256,
        [n] => *n,
        _ => return Err("several --db-kb sizes need --sweep".to_string().into()),
    };
    let store = global.open_store()?;
    let result = startup::run(store, db_kb)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", result.to_json()).map_err(output_error)?;
        return Ok(0);
    }
    let rows: [(&str, &StartMeasure); 3] = [
        ("existing", &result.existing),
        ("new", &result.new),
        ("naive_existing", &result.naive_existing),
    ];
    let mut text = format!("{:<16}{:>16}{:>12}\n", "start", "kv_round_trips", "wall_ms");
    for (name, m) in rows {
        text += &format!("{name:<16}{:>16}{:>12.3}\n", m.kv_round_trips, m.wall_ms);
    }
    for (name, m) in rows {
        let phases: Vec<String> = m
            .phases
            .iter()
            .map(|(p, ms)| format!("{p} {ms:.3}"))
            .collect();
        text += &format!("\n{name} phases (ms): {}\n", phases.join(", "));
    }
    out.write_all(text.as_bytes()).map_err(output_error)?;
    Ok(0)
}

fn bench_sweep(global: &GlobalArgs, args: &StartupArgs) -> Result<i32, Stop> {
    if global.rtt.is_some() {
        return Err(
            "--sweep sets the RTTs itself: give them with --rtts, not --rtt"
                .to_string()
                .into(),
        );
    }
    let sizes = if args.db_kb.is_empty() {
        startup::SWEEP_DB_KIB.to_vec()
    } else {
        args.db_kb.clone()
    };
    let rtts = if args.rtts.is_empty() {
        startup::SWEEP_RTTS_MS.to_vec()
    } else {
        args.rtts.clone()
    };
    if let Some(bad) = rtts
        .iter()
        .find(|r| !(r.is_finite() && (0.0..=60_000.0).contains(*r)))
    {
        return Err(
            format!("--rtts: {bad} is not a number of milliseconds from 0 to 60000").into(),
        );
    }
    let store =
        kvsqlite::kv::url::open_store(&global.url(), kvsqlite::kv::KvLimits::default(), None)
            .map_err(|e| e.to_string())?;
    let points = super::bench::with_progress(|draw| startup::sweep(&store, &sizes, &rtts, draw))?;
    if let Some(path) = &args.chart {
        let svg = kvsqlite::bench::chart::wake_vs_rtt_svg(&points)?;
        std::fs::write(path, svg).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let v = serde_json::json!({
            "sweep": points.iter().map(|p| p.to_json()).collect::<Vec<_>>(),
        });
        writeln!(out, "{v}").map_err(output_error)?;
        return Ok(0);
    }
    let mut text = format!(
        "{:>8}{:>8}{:>12}{:>12}{:>8}{:>12}{:>10}{:>12}{:>10}\n",
        "db_kb",
        "rtt_ms",
        "existing_rt",
        "existing_ms",
        "new_rt",
        "new_ms",
        "naive_rt",
        "naive_ms",
        "ms/rtt"
    );
    for p in &points {
        let b = &p.bench;
        let per_rtt = if p.rtt_ms > 0.0 {
            format!("{:.2}", b.existing.wall_ms / p.rtt_ms)
        } else {
            "-".into()
        };
        text += &format!(
            "{:>8}{:>8}{:>12}{:>12.3}{:>8}{:>12.3}{:>10}{:>12.3}{:>10}\n",
            p.db_kib,
            p.rtt_ms,
            b.existing.kv_round_trips,
            b.existing.wall_ms,
            b.new.kv_round_trips,
            b.new.wall_ms,
            b.naive_existing.kv_round_trips,
            b.naive_existing.wall_ms,
            per_rtt
        );
    }
    out.write_all(text.as_bytes()).map_err(output_error)?;
    Ok(0)
}
