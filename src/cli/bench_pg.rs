//! `kvsqlite bench pg-batch`: parses, runs [`kvsqlite::bench::pg_batch`] (a batched put and read
//! against one call per key, on PostgreSQL through a delay proxy) and prints its result (a JSON
//! object with `--json`, a table otherwise).
//!
//! Exit codes: 0 when the benchmark ran, 2 when it could not (`--kv` not a postgres URL, server
//! unreachable, an error while running; one line on standard error).

use std::time::Duration;

use clap::Args;
use kvsqlite::bench::pg_batch::{self, PgBatchConfig};

use super::{GlobalArgs, Stop};

/// Arguments of `kvsqlite bench pg-batch`.
#[derive(Args, Debug)]
pub struct PgBatchArgs {
    /// Milliseconds the proxy adds to every chunk in each direction (an exchange costs twice
    /// this more); fractions allowed, 0 to 10000.
    #[arg(long = "delay-ms", value_name = "MS", default_value = "5", value_parser = parse_delay)]
    delay: Duration,
    /// Times each measurement is repeated; the table shows the median wall time.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1000))]
    runs: u64,
    /// Print one JSON object (fields in docs/src/benchmarks/commands.md) instead of a table.
    #[arg(long)]
    json: bool,
}

/// Parses `--delay-ms`: a finite number of milliseconds from 0 to 10,000.
fn parse_delay(arg: &str) -> Result<Duration, String> {
    let bad = || "expected a number of milliseconds from 0 to 10000".to_string();
    let ms: f64 = arg.trim().parse().map_err(|_| bad())?;
    if !(ms.is_finite() && (0.0..=10_000.0).contains(&ms)) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(ms / 1000.0))
}

/// Runs `kvsqlite bench pg-batch`.
pub fn run(global: &GlobalArgs, args: PgBatchArgs) -> i32 {
    super::finish("bench pg-batch", bench(global, &args))
}

fn bench(global: &GlobalArgs, args: &PgBatchArgs) -> Result<i32, Stop> {
    if global.rtt.is_some() {
        return Err(
            "bench pg-batch delays the wire itself: give --delay-ms, not --rtt"
                .to_string()
                .into(),
        );
    }
    let config = PgBatchConfig {
        delay: args.delay,
        runs: args.runs as usize,
    };
    let url = global.url();
    let report = super::bench::with_progress(|draw| {
        pg_batch::run(&url, &config, &|done, all| draw(done, all, "pg-batch"))
    })?;
    super::bench::print_report(args.json, report.to_json(), || report.to_table())
}
