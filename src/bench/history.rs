//! `kvsqlite bench history`: what history costs and what its operations take — restoring the
//! last commit, restoring a commit `back` commits ago, forking an actor of about `fork_mb` MB,
//! and the bytes a small commit writes with history on and off.
//!
//! Why it exists: the README's history rows are measured here, round trips exactly (they do not
//! depend on the machine) and wall times once (they do). Each run uses fresh actors on the
//! given store and deletes them afterwards.

use std::time::Instant;

use serde_json::json;

use crate::actor::{Actor, ActorConfig};
use crate::kv::SharedStore;
use crate::vfs::history::{HistoryOptions, Target};

/// What to measure.
#[derive(Clone, Debug)]
pub struct HistoryPlan {
    /// Commits between the restore's target and now (1,000 in the README).
    pub back: u64,
    /// Rows of 4,000 bytes of the forked actor (2,000: about 8 MB).
    pub fork_rows: u64,
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
        s.push_str(&format!(
            "history page images: {} bytes, {} stored\n",
            self.history_image_bytes, self.history_stored_bytes
        ));
        s
    }
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
    ];
    let r = run_inner(store, plan, &ids);
    for id in &ids {
        let _ = store.delete_range(id, &[], None);
    }
    r
}

fn run_inner(
    store: &SharedStore,
    plan: &HistoryPlan,
    ids: &[String; 5],
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
    // A 1-row commit's bytes on a small warm table, with history on and off.
    let mut bytes = [0u64; 2];
    for (i, retention) in [HistoryOptions::default(), HistoryOptions::off()]
        .into_iter()
        .enumerate()
    {
        let c = ActorConfig {
            retention,
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
    let [commit_bytes_history, commit_bytes_no_history] = bytes;
    Ok(HistoryReport {
        ops,
        commit_bytes_history,
        commit_bytes_no_history,
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
        assert!(r.table().contains("fork an actor of"));
        assert_eq!(r.to_json()["ops"].as_array().unwrap().len(), 3);
        assert!(mem.dump().is_empty(), "the actors are deleted");
    }
}
