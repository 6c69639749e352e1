//! Differential: seeded random workloads (schema changes, inserts, updates, deletes,
//! transactions, savepoints, rollbacks, VACUUM, blobs of several MB) run through kvsqlite on the
//! memory and redb stores and through stock SQLite on a temp file. Every statement's outcome,
//! the query results along the way, a hash of every row of every table (all blob bytes
//! included) at checkpoints along the way, and the final contents must be identical.

#[path = "common/sqlite.rs"]
mod sqlite_checks;
use sqlite_checks::assert_integrity;
use std::sync::Arc;

use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::redb_store::RedbStore;
use kvsqlite::kv::{KvLimits, SharedStore};
use kvsqlite::rng::Rng;
use kvsqlite::vfs::{open_database, Database, OpenOptions};
use rusqlite::types::Value;

struct Step {
    sql: String,
    params: Vec<Value>,
    query: bool,
}

fn gen(seed: u64, steps: usize) -> Vec<Step> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    let mut tables: Vec<(String, usize)> = Vec::new(); // name, extra columns
    let mut in_tx = false;
    let mut savepoints = 0;
    let mut n_tables = 0;
    let mut big_blobs = 0;
    let push = |out: &mut Vec<Step>, sql: String, params: Vec<Value>, query: bool| {
        out.push(Step { sql, params, query })
    };
    push(
        &mut out,
        "CREATE TABLE t0(id INTEGER PRIMARY KEY, a INTEGER, b TEXT, c BLOB)".into(),
        vec![],
        false,
    );
    tables.push(("t0".into(), 0));
    n_tables += 1;
    for _ in 0..steps {
        let t = tables[rng.below(tables.len() as u64) as usize].clone();
        match rng.below(100) {
            0..=2 if tables.len() < 5 && !in_tx => {
                let name = format!("t{n_tables}");
                n_tables += 1;
                push(
                    &mut out,
                    format!("CREATE TABLE {name}(id INTEGER PRIMARY KEY, a INTEGER, b TEXT, c BLOB)"),
                    vec![],
                    false,
                );
                tables.push((name, 0));
            }
            3 => {
                push(
                    &mut out,
                    format!("CREATE INDEX IF NOT EXISTS {}_a ON {}(a)", t.0, t.0),
                    vec![],
                    false,
                );
            }
            4 if tables.len() > 1 && !in_tx => {
                let i = rng.below(tables.len() as u64) as usize;
                let (name, _) = tables.remove(i);
                push(&mut out, format!("DROP TABLE {name}"), vec![], false);
            }
            5 if t.1 < 3 && !in_tx => {
                let i = tables.iter().position(|x| x.0 == t.0).unwrap();
                tables[i].1 += 1;
                push(
                    &mut out,
                    format!("ALTER TABLE {} ADD COLUMN x{} TEXT DEFAULT 'd'", t.0, t.1),
                    vec![],
                    false,
                );
            }
            6..=35 => {
                let blob_len = if rng.chance(0.01) && big_blobs < 3 {
                    big_blobs += 1;
                    1_000_000 + rng.below(2_500_000) as usize
                } else if rng.chance(0.2) {
                    rng.below(20_000) as usize
                } else {
                    rng.below(200) as usize
                };
                push(
                    &mut out,
                    format!("INSERT INTO {}(a, b, c) VALUES (?1, ?2, ?3)", t.0),
                    vec![
                        Value::Integer(rng.below(1000) as i64),
                        Value::Text(format!("s{}", rng.below(1_000_000))),
                        Value::Blob(rng.bytes(blob_len)),
                    ],
                    false,
                );
            }
            36..=40 => {
                // Many rows in one statement.
                let n = 1 + rng.below(400);
                push(
                    &mut out,
                    format!(
                        "INSERT INTO {}(a, b) WITH RECURSIVE s(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM s WHERE value < {n}) SELECT value % 97, printf('row%d-%d', value, ?1) FROM s",
                        t.0
                    ),
                    vec![Value::Integer(rng.below(1000) as i64)],
                    false,
                );
            }
            41..=52 => push(
                &mut out,
                format!("UPDATE {} SET b = b || ?1, a = a + 1 WHERE a % 7 = ?2", t.0),
                vec![
                    Value::Text(format!("u{}", rng.below(100))),
                    Value::Integer(rng.below(7) as i64),
                ],
                false,
            ),
            53..=60 => push(
                &mut out,
                format!("DELETE FROM {} WHERE a % 11 = ?1", t.0),
                vec![Value::Integer(rng.below(11) as i64)],
                false,
            ),
            61..=64 => push(
                &mut out,
                format!("INSERT INTO {}(id, a) VALUES (?1, 0)", t.0),
                vec![Value::Integer(1 + rng.below(50) as i64)], // may violate the key
                false,
            ),
            65..=69 if !in_tx => {
                in_tx = true;
                push(&mut out, "BEGIN".into(), vec![], false);
            }
            70..=73 if in_tx => {
                in_tx = false;
                savepoints = 0;
                push(&mut out, "COMMIT".into(), vec![], false);
            }
            74..=75 if in_tx => {
                in_tx = false;
                savepoints = 0;
                push(&mut out, "ROLLBACK".into(), vec![], false);
            }
            76..=78 if in_tx => {
                savepoints += 1;
                push(&mut out, format!("SAVEPOINT sp{savepoints}"), vec![], false);
            }
            79..=80 if savepoints > 0 => {
                push(&mut out, format!("ROLLBACK TO sp{savepoints}"), vec![], false);
            }
            81 if savepoints > 0 => {
                push(&mut out, format!("RELEASE sp{savepoints}"), vec![], false);
                savepoints -= 1;
            }
            82 if !in_tx && savepoints == 0 => push(&mut out, "VACUUM".into(), vec![], false),
            83..=85 => {
                // Draws what the query it replaced drew, so the seeds keep their workloads.
                let _ = rng.below(1000);
                push(&mut out, CHECKPOINT.into(), vec![], true)
            }
            _ => push(
                &mut out,
                format!(
                    "SELECT count(*), total(a), group_concat(substr(b, 1, 6)), total(length(c)) FROM {} WHERE a > ?1",
                    t.0
                ),
                vec![Value::Integer(rng.below(1000) as i64)],
                true,
            ),
        }
    }
    if in_tx || savepoints > 0 {
        push(&mut out, "COMMIT".into(), vec![], false);
    }
    out
}

type Outcome = Result<Vec<Vec<Value>>, String>;

/// A step that hashes every row of every table (blob bytes included) instead of running SQL.
const CHECKPOINT: &str = "-- checkpoint: a hash of every row of every table";

/// The checkpoint's hash: every table in name order, every row in `id` order, every value
/// with its type and all of its bytes.
fn hash_all_rows(conn: &rusqlite::Connection) -> Outcome {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut rows_seen = 0i64;
    for (name, rows) in dump(conn) {
        h.write(name.as_bytes());
        for row in rows {
            rows_seen += 1;
            for v in row {
                match v {
                    Value::Null => h.write_u8(0),
                    Value::Integer(i) => {
                        h.write_u8(1);
                        h.write_i64(i)
                    }
                    Value::Real(r) => {
                        h.write_u8(2);
                        h.write_u64(r.to_bits())
                    }
                    Value::Text(t) => {
                        h.write_u8(3);
                        h.write_usize(t.len());
                        h.write(t.as_bytes())
                    }
                    Value::Blob(b) => {
                        h.write_u8(4);
                        h.write_usize(b.len());
                        h.write(&b)
                    }
                }
            }
        }
    }
    Ok(vec![vec![
        Value::Integer(rows_seen),
        Value::Integer(h.finish() as i64),
    ]])
}

fn run_step(conn: &rusqlite::Connection, s: &Step) -> Outcome {
    if s.sql == CHECKPOINT {
        return hash_all_rows(conn);
    }
    let params = rusqlite::params_from_iter(s.params.iter());
    if s.query {
        let mut st = conn.prepare(&s.sql).map_err(|e| e.to_string())?;
        let n = st.column_count();
        let rows = st
            .query_map(params, |r| (0..n).map(|i| r.get::<_, Value>(i)).collect())
            .map_err(|e| e.to_string())?
            .collect::<Result<Vec<Vec<Value>>, _>>()
            .map_err(|e| e.to_string())?;
        Ok(rows)
    } else {
        conn.execute(&s.sql, params)
            .map(|n| vec![vec![Value::Integer(n as i64)]])
            .map_err(|e| {
                // Only the kind of error matters (the same constraint on both sides).
                match e.sqlite_error_code() {
                    Some(c) => format!("{c:?}"),
                    None => e.to_string(),
                }
            })
    }
}

fn dump(conn: &rusqlite::Connection) -> Vec<(String, Vec<Vec<Value>>)> {
    let mut st = conn
        .prepare("SELECT name, sql FROM sqlite_schema ORDER BY name")
        .unwrap();
    let schema: Vec<(String, Option<String>)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut out = Vec::new();
    for (name, sql) in schema {
        let mut rows = vec![vec![Value::Text(sql.unwrap_or_default())]];
        if name.starts_with('t') && !name.ends_with("_a") {
            let mut st = conn
                .prepare(&format!("SELECT * FROM {name} ORDER BY id"))
                .unwrap();
            let n = st.column_count();
            rows.extend(
                st.query_map([], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect())
                    .unwrap()
                    .collect::<Result<Vec<Vec<Value>>, _>>()
                    .unwrap(),
            );
        }
        out.push((name, rows));
    }
    out
}

/// Runs the seeded workload; returns each store's counters at the end (before the reopen).
fn differential(
    seed: u64,
    kv: Vec<(&'static str, SharedStore, OpenOptions)>,
) -> Vec<(&'static str, kvsqlite::vfs::Snapshot)> {
    let steps = gen(seed, 400);
    let dir = tempfile::tempdir().unwrap();
    let reference = rusqlite::Connection::open(dir.path().join("ref.db")).unwrap();
    reference
        .execute_batch("PRAGMA journal_mode=DELETE; PRAGMA synchronous=NORMAL")
        .unwrap();
    let actor = format!("diff-{seed}");
    let stores: Vec<(&str, SharedStore)> = kv.iter().map(|(n, s, _)| (*n, s.clone())).collect();
    let dbs: Vec<(&'static str, Database)> = kv
        .into_iter()
        .map(|(name, s, opts)| (name, open_database(s, &actor, &opts).unwrap()))
        .collect();
    let mut errors = 0;
    for (i, s) in steps.iter().enumerate() {
        let want = run_step(&reference, s);
        if let Err(e) = &want {
            errors += 1;
            if errors < 6 {
                eprintln!("step {i} fails: {} -> {e}", s.sql);
            }
        }
        for (name, db) in &dbs {
            let got = run_step(db, s);
            assert_eq!(got, want, "seed {seed} step {i} on {name}: {}", s.sql);
        }
    }
    // Only the deliberate key violations (and what they cause) fail.
    assert!(
        errors * 10 < steps.len(),
        "{errors} of {} steps failed",
        steps.len()
    );
    let want = dump(&reference);
    for (name, db) in &dbs {
        assert_eq!(dump(db), want, "seed {seed}: final contents on {name}");
        assert_integrity(db);
        let snap = db.snapshot();
        eprintln!(
            "seed {seed} {name}: {} steps, {} VACUUM, {} big blobs; {snap:?}",
            steps.len(),
            steps.iter().filter(|s| s.sql == "VACUUM").count(),
            steps
                .iter()
                .filter(|s| s
                    .params
                    .iter()
                    .any(|p| matches!(p, Value::Blob(b) if b.len() > 1_000_000)))
                .count()
        );
        assert!(snap.atomic_commits > 0, "{name}: {snap:?}");
    }
    let snaps = dbs.iter().map(|(n, db)| (*n, db.snapshot())).collect();
    // A fresh open (no cache, nothing buffered) reads the same database from the store.
    drop(dbs);
    for (name, store) in stores {
        let db = open_database(store, &actor, &OpenOptions::default()).unwrap();
        assert_eq!(dump(&db), want, "seed {seed}: reopened on {name}");
        let ok: String = db
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok", "seed {seed}: reopened on {name}");
    }
    snaps
}

#[test]
fn random_workloads_match_stock_sqlite_on_memory_and_redb() {
    let seeds = [1u64, 2, 3];
    // The workloads exercise everything the differential claims (counted over the seeds).
    let all: Vec<Step> = seeds.iter().flat_map(|&s| gen(s, 400)).collect();
    let count = |p: &str| all.iter().filter(|s| s.sql.starts_with(p)).count();
    for (what, n) in [
        ("VACUUM", count("VACUUM")),
        ("checkpoint", count(CHECKPOINT)),
        ("SAVEPOINT", count("SAVEPOINT")),
        ("ROLLBACK TO", count("ROLLBACK TO")),
        ("RELEASE", count("RELEASE")),
        (
            "ROLLBACK",
            all.iter().filter(|s| s.sql == "ROLLBACK").count(),
        ),
        ("BEGIN", count("BEGIN")),
        ("ALTER TABLE", count("ALTER TABLE")),
        ("DROP TABLE", count("DROP TABLE")),
        ("CREATE INDEX", count("CREATE INDEX")),
        ("UPDATE", count("UPDATE")),
        ("DELETE", count("DELETE")),
        (
            "blobs over 1 MB",
            all.iter()
                .filter(|s| {
                    s.params
                        .iter()
                        .any(|p| matches!(p, Value::Blob(b) if b.len() > 1_000_000))
                })
                .count(),
        ),
    ] {
        assert!(n > 0, "the seeded workloads contain no {what}");
    }
    let mut totals: std::collections::BTreeMap<&str, (u64, u64, u64)> = Default::default();
    for seed in seeds {
        let dir = tempfile::tempdir().unwrap();
        let redb: SharedStore =
            Arc::new(RedbStore::open(dir.path().join("kv.redb"), KvLimits::default()).unwrap());
        let low: SharedStore = Arc::new(MemoryStore::with_limits(KvLimits {
            max_write_entries: 16,
            ..KvLimits::default()
        }));
        let tiny_caches = OpenOptions {
            cache_pages: 8,
            sqlite_cache_kib: 64,
            read_ahead_max: 16,
            ..OpenOptions::default()
        };
        // A small memory bound: bigger transactions spill and take the journal path.
        let journal = OpenOptions {
            max_atomic_bytes: 256 << 10,
            ..OpenOptions::default()
        };
        let snaps = differential(
            seed,
            vec![
                (
                    "memory",
                    Arc::new(MemoryStore::new()),
                    OpenOptions::default(),
                ),
                ("memory-low-limits", low, OpenOptions::default()),
                (
                    "memory-tiny-caches",
                    Arc::new(MemoryStore::new()),
                    tiny_caches,
                ),
                ("memory-journal", Arc::new(MemoryStore::new()), journal),
                ("redb", redb, OpenOptions::default()),
            ],
        );
        for (name, s) in snaps {
            let t = totals.entry(name).or_default();
            t.0 += s.atomic_commits;
            t.1 += s.staged_commits;
            t.2 += s.journal_fallbacks;
        }
    }
    // Every commit path ran: batch-atomic everywhere, staged commits (blobs of MBs; more under
    // low limits), and journal fallbacks under the small memory bound.
    // (Under the small bound, every transaction too big for one put journals instead.)
    for (name, (atomic, staged, journal)) in &totals {
        let small_bound = *name == "memory-journal";
        assert!(*atomic > 0, "{name}: {totals:?}");
        assert_eq!(*staged > 0, !small_bound, "{name}: {totals:?}");
        assert_eq!(*journal > 0, small_bound, "{name}: {totals:?}");
    }
}

#[test]
fn reopened_database_matches_after_workload() {
    let store: SharedStore = Arc::new(MemoryStore::new());
    let steps = gen(9, 300);
    let dir = tempfile::tempdir().unwrap();
    let reference = rusqlite::Connection::open(dir.path().join("ref.db")).unwrap();
    {
        let db = open_database(store.clone(), "reopen", &OpenOptions::default()).unwrap();
        for s in &steps {
            assert_eq!(run_step(&db, s), run_step(&reference, s), "{}", s.sql);
        }
    }
    let db = open_database(store, "reopen", &OpenOptions::default()).unwrap();
    assert_eq!(dump(&db), dump(&reference));
}
