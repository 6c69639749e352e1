//! `kvsqlite bench`: benchmarks of the VFS over a store.
//!
//! `bench commit` measures write transactions on a warm database: 1, 10, 100, 1,000 and 10,000
//! rows of 100 bytes, then one transaction of 2,000 rows of 4,000 bytes (about 2,000 pages,
//! 8 MB), then one more 1-row transaction (the one right after a big one). For each it reports
//! the rows, row bytes, pages written, KV round trips and wall time. The benchmark's actor is
//! deleted from the store afterwards.
//!
//! Exit codes: 0 when the benchmark ran, 2 when it could not (store unreachable, an error
//! while running; one line on standard error).

use std::time::Instant;

use clap::{Args, Subcommand};
use kvsqlite::vfs::{open_database, OpenOptions};

use std::io::Write;

use super::{output_error, GlobalArgs, Stop};

/// Arguments of `kvsqlite bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Write transactions of growing size on a warm database.
    Commit {
        /// Print a JSON array (one object per transaction) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// An actor's wake (one round trip) against a new actor's creation and a naive wake
    /// without preload (see `kvsqlite::bench::startup`).
    Startup(super::bench_startup::StartupArgs),
}

/// One measured transaction.
#[derive(Clone, Debug, PartialEq)]
pub struct CommitResult {
    /// Rows inserted.
    pub rows: u64,
    /// Bytes per row.
    pub row_bytes: u64,
    /// Pages the VFS put.
    pub pages_written: u64,
    /// KV round trips of the transaction.
    pub kv_round_trips: u64,
    /// Wall time in milliseconds.
    pub wall_ms: f64,
}

/// Runs `kvsqlite bench`.
pub fn run(global: &GlobalArgs, args: BenchArgs) -> i32 {
    match args.command {
        BenchCommand::Commit { json } => super::finish("bench commit", commit(global, json)),
        BenchCommand::Startup(args) => super::bench_startup::run(global, args),
    }
}

fn commit(global: &GlobalArgs, json: bool) -> Result<i32, Stop> {
    let results = bench_commit(global)?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", to_json(&results)).map_err(output_error)?;
    } else {
        writeln!(
            out,
            "rows\trow_bytes\tpages_written\tkv_round_trips\twall_ms"
        )
        .map_err(output_error)?;
        for r in &results {
            writeln!(
                out,
                "{}\t{}\t{}\t{}\t{:.3}",
                r.rows, r.row_bytes, r.pages_written, r.kv_round_trips, r.wall_ms
            )
            .map_err(output_error)?;
        }
    }
    Ok(0)
}

/// Renders the results as a JSON array of objects.
pub fn to_json(results: &[CommitResult]) -> String {
    let items: Vec<String> = results
        .iter()
        .map(|r| {
            format!(
                "{{\"rows\":{},\"row_bytes\":{},\"pages_written\":{},\"kv_round_trips\":{},\"wall_ms\":{:.3}}}",
                r.rows, r.row_bytes, r.pages_written, r.kv_round_trips, r.wall_ms
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

fn bench_commit(global: &GlobalArgs) -> Result<Vec<CommitResult>, String> {
    let store = global.open_store()?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let actor = format!("bench-commit-{}-{nanos}", std::process::id());
    let result: Result<Vec<CommitResult>, String> = (|| {
        let db = open_database(store.clone(), &actor, &OpenOptions::default())
            .map_err(|e| e.to_string())?;
        let e = |e: rusqlite::Error| e.to_string();
        db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
            .map_err(e)?;
        db.execute("INSERT INTO t(v) VALUES (zeroblob(100))", [])
            .map_err(e)?;
        let mut out = Vec::new();
        let plan: [(u64, u64); 7] = [
            (1, 100),
            (10, 100),
            (100, 100),
            (1_000, 100),
            (10_000, 100),
            (2_000, 4_000),
            (1, 100),
        ];
        for (rows, row_bytes) in plan {
            let before = db.snapshot();
            let start = Instant::now();
            db.execute_batch("BEGIN").map_err(e)?;
            {
                let mut st = db
                    .prepare_cached("INSERT INTO t(v) VALUES (randomblob(?1))")
                    .map_err(e)?;
                for _ in 0..rows {
                    st.execute([row_bytes as i64]).map_err(e)?;
                }
            }
            db.execute_batch("COMMIT").map_err(e)?;
            let wall = start.elapsed();
            let d = db.snapshot() - before;
            out.push(CommitResult {
                rows,
                row_bytes,
                pages_written: d.pages_written,
                kv_round_trips: d.kv_round_trips,
                wall_ms: wall.as_secs_f64() * 1000.0,
            });
        }
        Ok(out)
    })();
    let cleanup = store.delete_range(&actor, &[], None);
    let out = result?;
    cleanup.map_err(|e| format!("benchmark ran, but deleting its actor failed: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_an_array_of_objects() {
        let r = CommitResult {
            rows: 10,
            row_bytes: 100,
            pages_written: 2,
            kv_round_trips: 1,
            wall_ms: 0.5,
        };
        assert_eq!(
            to_json(&[r.clone(), r]),
            "[{\"rows\":10,\"row_bytes\":100,\"pages_written\":2,\"kv_round_trips\":1,\"wall_ms\":0.500},{\"rows\":10,\"row_bytes\":100,\"pages_written\":2,\"kv_round_trips\":1,\"wall_ms\":0.500}]"
        );
    }
}
