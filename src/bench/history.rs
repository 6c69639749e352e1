//! `kvsqlite bench history`: what history costs and what its operations take — restoring the
//! last commit, restoring a commit `back` commits ago, forking an actor of about `fork_mb` MB,
//! the bytes a small commit writes with history on and off, with page compression on and off,
//! and a speedtest1 script's round trips and KV bytes written in those four configurations.
//!
//! Why it exists: the Performance chapter's history rows are measured here, round trips exactly (they do not
//! depend on the machine) and wall times once (they do). Each run uses fresh actors on the
//! given store and deletes them afterwards.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;

use crate::actor::{Actor, ActorConfig};
use crate::bench::speedtest;
use crate::kv::SharedStore;
use crate::vfs::history::{HistoryOptions, Target};
use crate::vfs::{open_database, OpenOptions};

/// What to measure.
#[derive(Clone, Debug)]
pub struct HistoryPlan {
    /// Commits between the restore's target and now (1,000 in the Performance chapter).
    pub back: u64,
    /// Rows of 4,000 bytes of the forked actor (2,000: about 8 MB).
    pub fork_rows: u64,
    /// A speedtest1 script (`speedtest1 --script` output) to replay in the four
    /// configurations; `None` skips it.
    pub speedtest: Option<PathBuf>,
}

/// What one replay of the speedtest1 script cost in one configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptCost {
    /// History kept (the default retention) or off.
    pub history: bool,
    /// Page values compressed (the default) or sent as they are.
    pub compress: bool,
    /// KV round trips of the whole replay (its preamble included).
    pub kv_round_trips: u64,
    /// KV bytes written (keys and values as sent).
    pub kv_bytes_written: u64,
    /// Bytes of the current pages sent, before and after compression.
    pub page_bytes: (u64, u64),
    /// Bytes of the history's page images, before and after compression.
    pub history_bytes: (u64, u64),
}

/// The speedtest1 part of a report.
#[derive(Clone, Debug, PartialEq)]
pub enum Speedtest {
    /// Not asked for.
    NotRun,
    /// The script was not there: nothing was measured.
    Absent(PathBuf),
    /// The script's cost per configuration: history on and off, each with compression on and
    /// off (the four final databases were checked identical).
    Measured {
        /// The script.
        path: PathBuf,
        /// The four configurations.
        costs: Vec<ScriptCost>,
    },
}

/// One measured operation.
#[derive(Clone, Debug, PartialEq)]
pub struct Measured {
    /// What it was.
    pub name: String,
    /// KV round trips.
    pub kv_round_trips: u64,
    /// Pages it wrote (restores) or copied (forks).
    pub pages: u64,
    /// Wall time in milliseconds.
    pub wall_ms: f64,
}

/// The report of [`run`].
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryReport {
    /// The operations, in order.
    pub ops: Vec<Measured>,
    /// Bytes written by a 1-row commit with history on.
    pub commit_bytes_history: u64,
    /// The same with history off.
    pub commit_bytes_no_history: u64,
    /// The same two with page compression off (`OpenOptions::compress_pages`): history on,
    /// then off.
    pub commit_bytes_uncompressed: (u64, u64),
    /// speedtest1's round trips and bytes.
    pub speedtest: Speedtest,
    /// Bytes of page images the history wrote over the run, before and after compression.
    pub history_image_bytes: u64,
    /// The same images as stored.
    pub history_stored_bytes: u64,
}

impl HistoryReport {
    /// The report as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "ops": self.ops.iter().map(|m| json!({
                "name": m.name,
                "kv_round_trips": m.kv_round_trips,
                "pages": m.pages,
                "wall_ms": m.wall_ms,
            })).collect::<Vec<_>>(),
            "commit_bytes_history": self.commit_bytes_history,
            "commit_bytes_no_history": self.commit_bytes_no_history,
            "commit_bytes_history_uncompressed": self.commit_bytes_uncompressed.0,
            "commit_bytes_no_history_uncompressed": self.commit_bytes_uncompressed.1,
            "speedtest": match &self.speedtest {
                Speedtest::NotRun => serde_json::Value::Null,
                Speedtest::Absent(p) => json!({"script": p.display().to_string(), "absent": true}),
                Speedtest::Measured { path, costs } => json!({
                    "script": p_str(path),
                    "runs": costs.iter().map(|c| json!({
                        "history": c.history,
                        "compress": c.compress,
                        "kv_round_trips": c.kv_round_trips,
                        "kv_bytes_written": c.kv_bytes_written,
                        "page_image_bytes": c.page_bytes.0,
                        "page_stored_bytes": c.page_bytes.1,
                        "history_image_bytes": c.history_bytes.0,
                        "history_stored_bytes": c.history_bytes.1,
                    })).collect::<Vec<_>>(),
                }),
            },
            "history_image_bytes": self.history_image_bytes,
            "history_stored_bytes": self.history_stored_bytes,
        })
    }

    /// The report as a table.
    pub fn table(&self) -> String {
        let mut s = String::from("operation\tkv_round_trips\tpages\twall_ms\n");
        for m in &self.ops {
            s.push_str(&format!(
                "{}\t{}\t{}\t{:.1}\n",
                m.name, m.kv_round_trips, m.pages, m.wall_ms
            ));
        }
        s.push_str(&format!(
            "1-row commit bytes: {} with history, {} without ({:.2}x)\n",
            self.commit_bytes_history,
            self.commit_bytes_no_history,
            self.commit_bytes_history as f64 / self.commit_bytes_no_history.max(1) as f64
        ));
        let (hu, nu) = self.commit_bytes_uncompressed;
        s.push_str(&format!(
            "1-row commit bytes without page compression: {hu} with history, {nu} without ({:.2}x)\n",
            hu as f64 / nu.max(1) as f64
        ));
        s.push_str(&format!(
            "history page images: {} bytes, {} stored\n",
            self.history_image_bytes, self.history_stored_bytes
        ));
        match &self.speedtest {
            Speedtest::NotRun => {}
            Speedtest::Absent(p) => s.push_str(&format!(
                "speedtest1: {} is absent, not measured\n",
                p.display()
            )),
            Speedtest::Measured { path, costs } => {
                s.push_str(&format!(
                    "speedtest1 {}\nhistory\tcompress\tkv_round_trips\tkv_bytes_written\tpage_bytes (before/after)\thistory_image_bytes (before/after)\n",
                    p_str(path)
                ));
                for c in costs {
                    s.push_str(&format!(
                        "{}\t{}\t{}\t{}\t{}/{}\t{}/{}\n",
                        if c.history { "on" } else { "off" },
                        if c.compress { "on" } else { "off" },
                        c.kv_round_trips,
                        c.kv_bytes_written,
                        c.page_bytes.0,
                        c.page_bytes.1,
                        c.history_bytes.0,
                        c.history_bytes.1
                    ));
                }
            }
        }
        s
    }
}

fn p_str(p: &std::path::Path) -> String {
    p.display().to_string()
}

fn name(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("bench-history-{tag}-{}-{nanos}", std::process::id())
}

/// Runs the plan on `store`; deletes its actors afterwards.
pub fn run(store: &SharedStore, plan: &HistoryPlan) -> Result<HistoryReport, String> {
    let ids = [
        name("src"),
        name("big"),
        name("fork"),
        name("on"),
        name("off"),
        name("on-raw"),
        name("off-raw"),
        name("script"),
    ];
    let r = run_inner(store, plan, &ids);
    for id in &ids {
        let _ = store.delete_range(id, &[], None);
    }
    r
}

/// Replays the speedtest1 script at `path` on a fresh database of actor `id` per
/// configuration (history on and off, page compression on and off), deleting it after each.
/// The four final databases must be identical.
pub fn speedtest_costs(store: &SharedStore, path: &PathBuf, id: &str) -> Result<Speedtest, String> {
    if !path.is_file() {
        return Ok(Speedtest::Absent(path.clone()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let script = speedtest::parse_script(&text)?;
    let mut costs = Vec::new();
    let mut first_digest = None;
    for (history, compress) in [(true, true), (true, false), (false, true), (false, false)] {
        let opts = OpenOptions {
            history: if history {
                HistoryOptions::default()
            } else {
                HistoryOptions::off()
            },
            compress_pages: compress,
            ..OpenOptions::default()
        };
        let outcome = (|| {
            let db = open_database(store.clone(), id, &opts).map_err(|e| e.to_string())?;
            speedtest::run_sql(&db, &script.preamble).map_err(|e| e.to_string())?;
            for t in &script.tests {
                speedtest::run_sql(&db, &t.sql).map_err(|e| format!("test {}: {e}", t.id))?;
            }
            let d = db.snapshot();
            Ok::<_, String>((d, speedtest::digest(&db)?))
        })();
        let cleanup = store.delete_range(id, &[], None);
        let (d, digest) = outcome?;
        cleanup.map_err(|e| format!("deleting the replay's actor failed: {e}"))?;
        match &first_digest {
            None => first_digest = Some(digest),
            Some(f) if *f != digest => {
                return Err(format!(
                    "the replay with history {history}, compression {compress} ended with another database"
                ))
            }
            Some(_) => {}
        }
        costs.push(ScriptCost {
            history,
            compress,
            kv_round_trips: d.kv_round_trips,
            kv_bytes_written: d.bytes_written,
            page_bytes: (d.page_image_bytes, d.page_stored_bytes),
            history_bytes: (d.history_image_bytes, d.history_stored_bytes),
        });
    }
    Ok(Speedtest::Measured {
        path: path.clone(),
        costs,
    })
}

fn run_inner(
    store: &SharedStore,
    plan: &HistoryPlan,
    ids: &[String; 8],
) -> Result<HistoryReport, String> {
    let e = |e: rusqlite::Error| e.to_string();
    let a = |e: crate::actor::ActorError| e.to_string();
    let config = ActorConfig::default();
    let mut ops = Vec::new();
    let mut images = (0, 0);
    // Commits, then the restores.
    let src = Actor::start(store.clone(), &ids[0], &config).map_err(a)?;
    src.db()
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
        .map_err(e)?;
    let mut measure = |name: String, actor: &Actor, f: &mut dyn FnMut() -> Result<u64, String>| {
        let rt = actor.kv_round_trips();
        let t = Instant::now();
        let pages = f()?;
        ops.push(Measured {
            name,
            kv_round_trips: actor.kv_round_trips() - rt,
            pages,
            wall_ms: t.elapsed().as_secs_f64() * 1000.0,
        });
        Ok::<(), String>(())
    };
    let start_seq = seq(&src)?;
    for _ in 0..plan.back.max(1) {
        src.db()
            .execute("INSERT INTO t(v) VALUES (randomblob(100))", [])
            .map_err(e)?;
    }
    let last = seq(&src)?;
    measure("restore the last commit".into(), &src, &mut || {
        let out = src.restore(&Target::Seq(last - 1)).map_err(a)?;
        Ok(out.pages as u64)
    })?;
    let target = last.saturating_sub(plan.back).max(start_seq);
    measure(
        format!("restore {} commits back", last - target),
        &src,
        &mut || {
            let out = src.restore(&Target::Seq(target)).map_err(a)?;
            Ok(out.pages as u64)
        },
    )?;
    let s = src.db().snapshot();
    images.0 += s.history_image_bytes;
    images.1 += s.history_stored_bytes;
    src.sleep().map_err(a)?;
    // A big actor, forked.
    let big = Actor::start(store.clone(), &ids[1], &config).map_err(a)?;
    big.db()
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB); BEGIN;")
        .map_err(e)?;
    for _ in 0..plan.fork_rows {
        big.db()
            .execute("INSERT INTO t(v) VALUES (randomblob(4000))", [])
            .map_err(e)?;
    }
    big.db().execute_batch("COMMIT").map_err(e)?;
    let at = big.bookmark().map_err(a)?;
    measure(
        format!(
            "fork an actor of {} pages",
            big.db()
                .query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))
                .map_err(e)?
        ),
        &big,
        &mut || {
            let r = big
                .fork(
                    &Target::Bookmark(at.clone()),
                    &ids[2],
                    &HistoryOptions::default(),
                )
                .map_err(a)?;
            Ok(r.pages)
        },
    )?;
    let s = big.db().snapshot();
    images.0 += s.history_image_bytes;
    images.1 += s.history_stored_bytes;
    big.sleep().map_err(a)?;
    // A 1-row commit's bytes on a small warm table, with history on and off, page
    // compression on and off.
    let mut bytes = [0u64; 4];
    for i in 0..4 {
        let c = ActorConfig {
            retention: if i % 2 == 0 {
                HistoryOptions::default()
            } else {
                HistoryOptions::off()
            },
            open: OpenOptions {
                compress_pages: i < 2,
                ..OpenOptions::default()
            },
            ..ActorConfig::default()
        };
        let x = Actor::start(store.clone(), &ids[3 + i], &c).map_err(a)?;
        x.db()
            .execute_batch(
                "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB); INSERT INTO t(v) VALUES (randomblob(100));",
            )
            .map_err(e)?;
        let b = x.db().snapshot();
        x.db()
            .execute("INSERT INTO t(v) VALUES (randomblob(100))", [])
            .map_err(e)?;
        bytes[i] = (x.db().snapshot() - b).bytes_written;
        x.sleep().map_err(a)?;
    }
    let [commit_bytes_history, commit_bytes_no_history, hu, nu] = bytes;
    let speedtest = match &plan.speedtest {
        Some(p) => speedtest_costs(store, p, &ids[7])?,
        None => Speedtest::NotRun,
    };
    Ok(HistoryReport {
        ops,
        commit_bytes_history,
        commit_bytes_no_history,
        commit_bytes_uncompressed: (hu, nu),
        speedtest,
        history_image_bytes: images.0,
        history_stored_bytes: images.1,
    })
}

fn seq(a: &Actor) -> Result<u64, String> {
    let b = a.bookmark().map_err(|e| e.to_string())?;
    crate::vfs::history::parse_bookmark(&b)
        .map(|(_, s)| s)
        .ok_or_else(|| format!("{b:?} is not a bookmark"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_tiny_run_reports_each_operation_and_cleans_up() {
        let mem = Arc::new(crate::kv::memory::MemoryStore::new());
        let store: SharedStore = mem.clone();
        let r = run(
            &store,
            &HistoryPlan {
                back: 20,
                fork_rows: 40,
                speedtest: None,
            },
        )
        .unwrap();
        let names: Vec<&str> = r.ops.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names[..2],
            ["restore the last commit", "restore 20 commits back"]
        );
        // One list (with the fence), one get, one put.
        assert_eq!(r.ops[0].kv_round_trips, 3);
        assert_eq!(r.ops[1].kv_round_trips, 3);
        assert!(r.commit_bytes_history > r.commit_bytes_no_history);
        assert!(
            r.commit_bytes_history * 2 <= r.commit_bytes_no_history * 5,
            "{r:?}"
        );
        // Compression shrinks a small commit's bytes, with history and without; history's
        // cost stays within 2.5 times either way.
        let (hu, nu) = r.commit_bytes_uncompressed;
        assert!(
            r.commit_bytes_history < hu && r.commit_bytes_no_history < nu,
            "{r:?}"
        );
        assert!(hu > nu && hu * 2 <= nu * 5, "{r:?}");
        assert_eq!(r.speedtest, Speedtest::NotRun);
        assert!(r.table().contains("fork an actor of"));
        assert_eq!(r.to_json()["ops"].as_array().unwrap().len(), 3);
        assert!(mem.dump().is_empty(), "the actors are deleted");
    }

    #[test]
    fn speedtest_costs_say_when_the_script_is_absent_and_measure_one() {
        let mem = Arc::new(crate::kv::memory::MemoryStore::new());
        let store: SharedStore = mem.clone();
        let missing = PathBuf::from("/nonexistent/main_size10.sql");
        assert_eq!(
            speedtest_costs(&store, &missing, "x").unwrap(),
            Speedtest::Absent(missing)
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.sql");
        let mut sql = String::from("CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT);\n");
        sql.push_str("-- begin test 100 inserts\nBEGIN;\n");
        for i in 0..500 {
            sql.push_str(&format!(
                "INSERT INTO t(b) VALUES ('row {i} {}');\n",
                "x".repeat(50)
            ));
        }
        sql.push_str(
            "COMMIT;\n-- end test\n-- begin test 110 update\nUPDATE t SET b = b || '!';\n",
        );
        std::fs::write(&path, sql).unwrap();
        let Speedtest::Measured { costs, .. } = speedtest_costs(&store, &path, "x").unwrap() else {
            panic!("measured")
        };
        let flags: Vec<(bool, bool)> = costs.iter().map(|c| (c.history, c.compress)).collect();
        assert_eq!(
            flags,
            [(true, true), (true, false), (false, true), (false, false)]
        );
        // Compression changes no round trip and only shrinks what is written; history writes
        // more. Uncompressed, the pages go out whole.
        for pair in costs.chunks(2) {
            assert_eq!(pair[0].kv_round_trips, pair[1].kv_round_trips, "{costs:?}");
            assert!(
                pair[0].kv_bytes_written < pair[1].kv_bytes_written,
                "{costs:?}"
            );
            assert_eq!(pair[1].page_bytes.0, pair[1].page_bytes.1);
            assert!(pair[0].page_bytes.1 < pair[0].page_bytes.0);
        }
        assert!(costs[0].kv_bytes_written > costs[2].kv_bytes_written);
        assert_eq!(costs[2].history_bytes, (0, 0));
        assert!(mem.dump().is_empty(), "the replays' actor is deleted");
    }
}
