//! `kvsqlite bench scan`: cold reads, with and without read-ahead.
//!
//! Why it exists: a cold read is where a remote store hurts most (one round trip per page
//! without read-ahead); this benchmark shows what read-ahead saves on a sequential scan and what
//! it wastes on random point lookups.
//!
//! Workload: one actor's table `t(id INTEGER PRIMARY KEY, v BLOB)` of rows of 1,000 bytes (four
//! to a 4 KiB page), about `pages` pages, written in one transaction. Then, for each mode
//! (`read_ahead`: the default window; `no_read_ahead`: `read_ahead_max = 1`), on a database
//! opened cold (no connection holds it, so no cached page; no preload):
//! - `sequential`: `SELECT sum(length(v)) FROM t`, the whole table in rowid order;
//! - `random`: `lookups` point lookups `SELECT length(v) FROM t WHERE id = ?` at seeded random
//!   ids (the same ids in both modes).
//!
//! Counted: the pass's KV round trips (after the open; the open's own are reported apart), and
//! from the open to the end of the pass the pages fetched from the store, pages read ahead,
//! read-ahead pages used, and wasted (read ahead but not read by the end of the pass). The actor
//! is deleted afterwards.

use std::time::Instant;

use serde_json::{json, Value};

use crate::kv::SharedStore;
use crate::rng::Rng;
use crate::vfs::{open_database, OpenOptions};

/// Bytes of each row's blob.
const ROW_BYTES: usize = 1000;

/// What one measured read pass cost.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadMeasure {
    /// KV round trips of the pass (after the open).
    pub kv_round_trips: u64,
    /// KV round trips of the cold open before the pass.
    pub open_kv_round_trips: u64,
    /// Pages fetched from the store (needed and read ahead).
    pub pages_fetched: u64,
    /// Pages fetched ahead of need.
    pub pages_read_ahead: u64,
    /// Read-ahead pages later read.
    pub read_ahead_used: u64,
    /// Read-ahead pages not read by the end of the pass.
    pub read_ahead_wasted: u64,
    /// Wall time in milliseconds.
    pub wall_ms: f64,
}

impl ReadMeasure {
    /// `read_ahead_wasted / pages_fetched` (0 when nothing was fetched).
    pub fn wasted_fraction(&self) -> f64 {
        if self.pages_fetched == 0 {
            0.0
        } else {
            self.read_ahead_wasted as f64 / self.pages_fetched as f64
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "kv_round_trips": self.kv_round_trips,
            "open_kv_round_trips": self.open_kv_round_trips,
            "pages_fetched": self.pages_fetched,
            "pages_read_ahead": self.pages_read_ahead,
            "read_ahead_used": self.read_ahead_used,
            "read_ahead_wasted": self.read_ahead_wasted,
            "wasted_fraction": (self.wasted_fraction() * 1000.0).round() / 1000.0,
            "wall_ms": (self.wall_ms * 1000.0).round() / 1000.0,
        })
    }
}

/// One mode's passes.
#[derive(Clone, Debug, PartialEq)]
pub struct ModeResult {
    /// `read_ahead` or `no_read_ahead`.
    pub mode: &'static str,
    /// The `read_ahead_max` the database was opened with.
    pub read_ahead_max: u32,
    /// The cold sequential scan.
    pub sequential: ReadMeasure,
    /// The cold random point lookups.
    pub random: ReadMeasure,
}

/// The result of [`run`].
#[derive(Clone, Debug, PartialEq)]
pub struct ScanReport {
    /// Pages of the database file.
    pub db_pages: u64,
    /// Rows of the table.
    pub rows: u64,
    /// Point lookups per random pass.
    pub lookups: u64,
    /// With read-ahead, then without.
    pub modes: Vec<ModeResult>,
}

impl ScanReport {
    /// `{"db_pages", "rows", "lookups", "modes": [{"mode", "read_ahead_max", "sequential": {…},
    /// "random": {…}}]}` (fields in docs/src/benchmarks/commands.md).
    pub fn to_json(&self) -> Value {
        json!({
            "db_pages": self.db_pages,
            "rows": self.rows,
            "lookups": self.lookups,
            "modes": self.modes.iter().map(|m| json!({
                "mode": m.mode,
                "read_ahead_max": m.read_ahead_max,
                "sequential": m.sequential.to_json(),
                "random": m.random.to_json(),
            })).collect::<Vec<_>>(),
        })
    }

    /// A readable table: one line per mode and pass.
    pub fn to_table(&self) -> String {
        let mut s = format!(
            "{} pages, {} rows, {} random lookups, cold (no cache, no preload)\n{:<15}{:<12}{:>8}{:>8}{:>9}{:>12}{:>7}{:>8}{:>8}{:>10}\n",
            self.db_pages,
            self.rows,
            self.lookups,
            "mode",
            "pass",
            "open_rt",
            "kv_rt",
            "fetched",
            "read_ahead",
            "used",
            "wasted",
            "wasted%",
            "wall_ms"
        );
        for m in &self.modes {
            for (pass, r) in [("sequential", &m.sequential), ("random", &m.random)] {
                s.push_str(&format!(
                    "{:<15}{:<12}{:>8}{:>8}{:>9}{:>12}{:>7}{:>8}{:>8.1}{:>10.3}\n",
                    m.mode,
                    pass,
                    r.open_kv_round_trips,
                    r.kv_round_trips,
                    r.pages_fetched,
                    r.pages_read_ahead,
                    r.read_ahead_used,
                    r.read_ahead_wasted,
                    r.wasted_fraction() * 100.0,
                    r.wall_ms
                ));
            }
        }
        s
    }
}

/// Runs `f` on the actor's database opened cold with `read_ahead_max`, and measures it.
fn measure(
    store: &SharedStore,
    actor: &str,
    read_ahead_max: u32,
    f: &dyn Fn(&rusqlite::Connection) -> rusqlite::Result<()>,
) -> Result<ReadMeasure, String> {
    let opts = OpenOptions {
        read_ahead_max,
        create: false,
        ..OpenOptions::default()
    };
    let db = open_database(store.clone(), actor, &opts).map_err(|e| e.to_string())?;
    let before = db.snapshot();
    let start = Instant::now();
    f(&db).map_err(|e| e.to_string())?;
    let wall_ms = start.elapsed().as_secs_f64() * 1000.0;
    let after = db.snapshot();
    // Pages: from the state's creation (the open's own reads can read ahead pages the pass
    // then uses); round trips: the pass alone.
    let d = after - before;
    Ok(ReadMeasure {
        kv_round_trips: d.kv_round_trips,
        open_kv_round_trips: before.kv_round_trips,
        pages_fetched: after.cache_misses + after.readahead_prefetched,
        pages_read_ahead: after.readahead_prefetched,
        read_ahead_used: after.readahead_used,
        read_ahead_wasted: after
            .readahead_prefetched
            .saturating_sub(after.readahead_used),
        wall_ms,
    })
}

/// Builds a table of about `pages` pages, then measures cold sequential scans and `lookups`
/// cold random point lookups (seeded by `seed`), with read-ahead and without.
pub fn run(store: &SharedStore, pages: u64, lookups: u64, seed: u64) -> Result<ScanReport, String> {
    if pages == 0 {
        return Err("at least one page is needed".into());
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let actor = format!("bench-scan-{}-{nanos}", std::process::id());
    let outcome = (|| -> Result<ScanReport, String> {
        let rows = pages * 4;
        let db_pages = {
            let db = open_database(store.clone(), &actor, &OpenOptions::default())
                .map_err(|e| e.to_string())?;
            let e = |e: rusqlite::Error| e.to_string();
            db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
                .map_err(e)?;
            db.execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
                 INSERT INTO t(id, v) SELECT i, randomblob(?2) FROM n",
                [rows as i64, ROW_BYTES as i64],
            )
            .map_err(e)?;
            let n: i64 = db
                .query_row("PRAGMA page_count", [], |r| r.get(0))
                .map_err(e)?;
            n as u64
        };
        let mut rng = Rng::new(seed);
        let ids: Vec<i64> = (0..lookups).map(|_| rng.below(rows) as i64 + 1).collect();
        let sequential = |c: &rusqlite::Connection| {
            c.query_row("SELECT sum(length(v)) FROM t", [], |r| r.get::<_, i64>(0))
                .map(|_| ())
        };
        let random = |c: &rusqlite::Connection| {
            let mut st = c.prepare("SELECT length(v) FROM t WHERE id = ?1")?;
            for id in &ids {
                st.query_row([id], |r| r.get::<_, i64>(0))?;
            }
            Ok(())
        };
        let mut modes = Vec::new();
        for (mode, ra) in [
            ("read_ahead", OpenOptions::default().read_ahead_max),
            ("no_read_ahead", 1),
        ] {
            modes.push(ModeResult {
                mode,
                read_ahead_max: ra,
                sequential: measure(store, &actor, ra, &sequential)?,
                random: measure(store, &actor, ra, &random)?,
            });
        }
        Ok(ScanReport {
            db_pages,
            rows,
            lookups,
            modes,
        })
    })();
    let cleanup = store.delete_range(&actor, &[], None);
    let report = outcome?;
    cleanup.map_err(|e| format!("benchmark ran, but deleting its actor failed: {e}"))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn read_ahead_saves_round_trips_on_a_cold_scan() {
        let store: SharedStore = Arc::new(crate::kv::memory::MemoryStore::new());
        let r = run(&store, 100, 20, 7).unwrap();
        assert!(r.db_pages >= 100, "{r:?}");
        let (with, without) = (&r.modes[0], &r.modes[1]);
        assert!(with.sequential.kv_round_trips <= 3, "{r:?}");
        assert!(without.sequential.kv_round_trips >= 90, "{r:?}");
        // Without read-ahead only the open's first read brings more than the page asked for.
        assert!(without.sequential.pages_read_ahead < 10, "{r:?}");
        assert!(with.sequential.pages_read_ahead > 90, "{r:?}");
        assert!(with.sequential.read_ahead_used > 0, "{r:?}");
        // Random point lookups do not continue a run: read-ahead stays at one chunk for
        // them, so it wastes little (the target is under 20%).
        assert!(with.random.wasted_fraction() < 0.2, "{r:?}");
        assert!(with.random.pages_read_ahead < 10, "{r:?}");
    }
}
