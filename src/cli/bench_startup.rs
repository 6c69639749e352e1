//! `kvsqlite bench startup`: parses, runs [`kvsqlite::bench::startup`] and prints its result
//! (a JSON object with `--json`, a table otherwise).
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
    /// KiB of extra data (chat messages) in the existing actor.
    #[arg(long = "db-kb", value_name = "N", default_value_t = 256)]
    db_kb: u64,
    /// Print `{"existing": {...}, "new": {...}, "naive_existing": {...}}` instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs `kvsqlite bench startup`.
pub fn run(global: &GlobalArgs, args: StartupArgs) -> i32 {
    super::finish("bench startup", bench(global, &args))
}

fn bench(global: &GlobalArgs, args: &StartupArgs) -> Result<i32, Stop> {
    let store = global.open_store()?;
    let result = startup::run(store, args.db_kb)?;
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
