//! Crash consistency: a workload of over 100 transactions (small ones, staged over-limit
//! commits, journal fallbacks, VACUUM) is run with the store "crashing" at call k, for every k
//! from 1 to the workload's total. Reopened on the surviving data, the database passes
//! `integrity_check` and holds exactly the state after the transactions that returned OK, or
//! after the one in flight too. On memory, redb and a Redis Cluster.

use std::sync::Arc;

use kvsqlite::kv::faults::{CrashWrite, FaultPlan, FaultStore};
use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::redb_store::RedbStore;
use kvsqlite::kv::redis::RedisStore;
use kvsqlite::kv::{KvLimits, SharedStore};
use kvsqlite::rng::Rng;
use kvsqlite::vfs::layout::{self, FileKind, Meta};
use kvsqlite::vfs::{open_database, OpenOptions};

#[path = "common/redis_cluster.rs"]
mod cluster_helper;

type Rows = Vec<(i64, String)>;

fn limits() -> KvLimits {
    // Low entry limit: transactions of more than 7 pages take the staged path.
    KvLimits {
        max_write_entries: 8,
        ..KvLimits::default()
    }
}

/// The workload: one SQL batch per transaction, built from a seed.
fn workload(seed: u64) -> Vec<String> {
    let mut rng = Rng::new(seed);
    let mut txns = vec!["CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)".to_string()];
    let mut next_id = 1i64;
    let text = |rng: &mut Rng, n: usize| -> String {
        (0..n)
            .map(|_| (b'a' + rng.below(26) as u8) as char)
            .collect()
    };
    for i in 1..110 {
        let mut sql = String::new();
        if i % 30 == 7 {
            // Staged: ~50 KB of new rows, about 13 pages, over the 8-entry limit.
            sql.push_str("BEGIN;");
            for _ in 0..50 {
                sql.push_str(&format!(
                    "INSERT INTO t VALUES ({next_id}, '{}');",
                    text(&mut rng, 1000)
                ));
                next_id += 1;
            }
            sql.push_str("COMMIT;");
        } else if i % 30 == 19 {
            // Journal fallback: SQLite may spill its tiny cache, so it journals.
            sql.push_str("PRAGMA cache_spill=1; PRAGMA cache_size=4; BEGIN;");
            for _ in 0..40 {
                sql.push_str(&format!(
                    "INSERT INTO t VALUES ({next_id}, '{}');",
                    text(&mut rng, 900)
                ));
                next_id += 1;
            }
            sql.push_str("COMMIT; PRAGMA cache_spill=OFF; PRAGMA cache_size=-8192;");
        } else if i == 55 {
            sql.push_str("DELETE FROM t WHERE id % 3 = 0;");
        } else if i == 56 {
            sql.push_str("VACUUM;");
        } else {
            sql.push_str("BEGIN;");
            for _ in 0..1 + rng.below(3) {
                match rng.below(5) {
                    0 | 1 => {
                        let len = 1 + rng.below(60) as usize;
                        sql.push_str(&format!(
                            "INSERT INTO t VALUES ({next_id}, '{}');",
                            text(&mut rng, len)
                        ));
                        next_id += 1;
                    }
                    2 => sql.push_str(&format!(
                        "UPDATE t SET v = v || '{}' WHERE id = {};",
                        text(&mut rng, 5),
                        1 + rng.below(next_id as u64)
                    )),
                    3 => sql.push_str(&format!(
                        "DELETE FROM t WHERE id = {};",
                        1 + rng.below(next_id as u64)
                    )),
                    _ => sql.push_str(&format!(
                        "SAVEPOINT s; INSERT INTO t VALUES ({}, 'gone'); ROLLBACK TO s; RELEASE s;",
                        next_id + 1000
                    )),
                }
            }
            sql.push_str("COMMIT;");
        }
        txns.push(sql);
    }
    txns
}

fn contents(conn: &rusqlite::Connection) -> Rows {
    let has: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = 't'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    if has == 0 {
        return Vec::new();
    }
    let mut st = conn.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
    let rows = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    rows
}

/// Expected contents after each prefix of the workload (index = transactions applied), from
/// stock SQLite in memory.
fn expected_states(txns: &[String]) -> Vec<Rows> {
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    let mut out = vec![Vec::new()];
    for t in txns {
        conn.execute_batch(t).unwrap();
        out.push(contents(&conn));
    }
    out
}

/// Stage keys whose stage no commit record made live (id at or past the next stage id).
fn unfinished_stage_keys(mem: &MemoryStore) -> usize {
    let dump = mem.dump();
    let next = dump
        .iter()
        .find(|(_, k, _)| *k == layout::meta_key(FileKind::Main))
        .map(|(_, _, v)| Meta::decode(FileKind::Main, v).unwrap().next_stage)
        .unwrap_or(0);
    dump.iter()
        .filter_map(|(_, k, _)| layout::parse_stage_key(k))
        .filter(|(id, _)| *id >= next)
        .count()
}

/// Runs the workload on `store` until a transaction fails; returns how many returned OK.
fn run(store: SharedStore, txns: &[String]) -> usize {
    let Ok(db) = open_database(store, "crashy", &OpenOptions::default()) else {
        return 0;
    };
    for (i, t) in txns.iter().enumerate() {
        if db.execute_batch(t).is_err() {
            return i;
        }
    }
    txns.len()
}

/// Runs `txns` on `inner` behind a store that crashes at call `k`; returns how many transactions
/// returned OK before the crash, which must have been reached.
fn run_crashing_at(inner: &SharedStore, k: u64, txns: &[String]) -> usize {
    let faulty = Arc::new(FaultStore::new(
        inner.clone(),
        FaultPlan::none().crash_at(k, CrashWrite::Seeded(k)),
    ));
    let ok = run(faulty.clone(), txns);
    assert!(faulty.is_crashed(), "crash point {k} was not reached");
    ok
}

/// Reopens the surviving data after a crash at call `k`, with `ok` transactions acknowledged:
/// the database passes `integrity_check` and holds the state after exactly those transactions,
/// or after the one in flight too. Returns the open database for further checks.
fn reopen_and_check(
    inner: SharedStore,
    k: u64,
    ok: usize,
    txns: &[String],
    expected: &[Rows],
) -> kvsqlite::vfs::Database {
    let db = open_database(inner, "crashy", &OpenOptions::default())
        .unwrap_or_else(|e| panic!("crash at {k}: reopen failed: {e}"));
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("crash at {k}: integrity_check failed: {e}"));
    assert_eq!(check, "ok", "crash at {k}");
    let got = contents(&db);
    let in_flight = (ok + 1).min(txns.len());
    assert!(
        got == expected[ok] || got == expected[in_flight],
        "crash at call {k}: {ok} transactions returned OK; got {} rows, expected {} or {}",
        got.len(),
        expected[ok].len(),
        expected[in_flight].len()
    );
    db
}

/// The same check on the redb backend, for the first 40 transactions (a staged commit and a
/// journal fallback among them).
#[test]
fn every_crash_point_on_redb_leaves_old_or_new_state() {
    let txns: Vec<String> = workload(11).into_iter().take(40).collect();
    let expected = expected_states(&txns);
    let dir = tempfile::tempdir().unwrap();
    let open = |n: u64| -> SharedStore {
        Arc::new(RedbStore::open(dir.path().join(format!("kv{n}.redb")), limits()).unwrap())
    };
    let counter = Arc::new(FaultStore::new(open(0), FaultPlan::none()));
    let stats = {
        let db = open_database(counter.clone(), "crashy", &OpenOptions::default()).unwrap();
        for t in &txns {
            db.execute_batch(t).unwrap();
        }
        db.snapshot()
    };
    assert!(
        stats.staged_commits >= 1 && stats.journal_fallbacks >= 1,
        "{stats:?}"
    );
    let total = counter.calls();
    for k in 1..=total {
        let inner = open(k);
        let ok = run_crashing_at(&inner, k, &txns);
        reopen_and_check(inner, k, ok, &txns, &expected);
    }
}

#[test]
fn every_crash_point_leaves_old_or_new_state() {
    for seed in [42, 7] {
        crash_everywhere(seed);
    }
}

fn crash_everywhere(seed: u64) {
    let txns = workload(seed);
    let expected = expected_states(&txns);

    // A clean run counts the calls and checks the workload exercises every path.
    let inner: SharedStore = Arc::new(MemoryStore::with_limits(limits()));
    let counter = Arc::new(FaultStore::new(inner.clone(), FaultPlan::none()));
    let stats = {
        let db = open_database(counter.clone(), "crashy", &OpenOptions::default()).unwrap();
        for t in &txns {
            db.execute_batch(t).unwrap();
        }
        assert_eq!(contents(&db), *expected.last().unwrap());
        db.snapshot()
    };
    let total = counter.calls();
    eprintln!(
        "workload: {} transactions, {total} KV calls, {stats:?}",
        txns.len()
    );
    assert!(txns.len() >= 100);
    assert!(stats.staged_commits >= 3, "{stats:?}");
    assert!(stats.journal_fallbacks >= 3, "{stats:?}");
    assert!(stats.atomic_commits >= 90, "{stats:?}");
    assert!(total >= stats.kv_round_trips);

    let mut landed_in_flight = 0;
    let mut hot_journals = 0;
    let mut leftover_stages = 0;
    for k in 1..=total {
        let mem = Arc::new(MemoryStore::with_limits(limits()));
        let inner: SharedStore = mem.clone();
        let ok = run_crashing_at(&inner, k, &txns);
        let keys: Vec<Vec<u8>> = mem.dump().into_iter().map(|(_, k, _)| k).collect();
        hot_journals += keys.iter().any(|k| k.starts_with(&[8, 1])) as u32;
        leftover_stages += (unfinished_stage_keys(&mem) > 0) as u32;
        let db = reopen_and_check(inner.clone(), k, ok, &txns, &expected);
        assert_eq!(
            unfinished_stage_keys(&mem),
            0,
            "crash at {k}: open kept an unfinished stage"
        );
        landed_in_flight += (contents(&db) != expected[ok]) as u32;
        // The recovered database keeps working.
        db.execute("INSERT INTO t VALUES (100000, 'after')", [])
            .map(|_| ())
            .or_else(|_| db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)"))
            .unwrap_or_else(|e| panic!("crash at {k}: write after recovery failed: {e}"));
        drop(db);
    }
    eprintln!(
        "{total} crash points; in-flight transaction survived in {landed_in_flight}; \
         journal left behind in {hot_journals}; unfinished stage left behind in {leftover_stages}"
    );
    assert!(
        hot_journals >= 3,
        "no crash left a hot journal to roll back"
    );
    assert!(
        leftover_stages >= 3,
        "no crash left an unfinished stage behind"
    );
    assert!(landed_in_flight >= 1 && landed_in_flight < total as u32);
}

/// A new database whose page size is set by `PRAGMA page_size` before its first write, crashed
/// at every call: the reopened database is the old or the new state, and once anything landed
/// it has 8192-byte pages (the first commit carried the new page 1 atomically).
#[test]
fn every_crash_point_after_a_page_size_pragma_leaves_old_or_new_state() {
    let mut txns = vec![
        "PRAGMA page_size = 8192; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)"
            .to_string(),
    ];
    for i in 0..12 {
        let n = if i == 5 { 60 } else { 2 }; // one staged commit (over 8 entries)
        let mut sql = "BEGIN;".to_string();
        for j in 0..n {
            sql.push_str(&format!(
                "INSERT INTO t(v) VALUES (printf('%0{}d', {}));",
                if i == 5 { 2000 } else { 10 },
                i * 100 + j
            ));
        }
        sql.push_str("COMMIT;");
        txns.push(sql);
    }
    let expected = expected_states(&txns);
    let counter = Arc::new(FaultStore::new(
        Arc::new(MemoryStore::with_limits(limits())),
        FaultPlan::none(),
    ));
    let stats = {
        let db = open_database(counter.clone(), "crashy", &OpenOptions::default()).unwrap();
        for t in &txns {
            db.execute_batch(t).unwrap();
        }
        assert_eq!(db.page_size(), 8192);
        db.snapshot()
    };
    assert!(stats.staged_commits >= 1, "{stats:?}");
    assert_eq!(stats.journal_fallbacks, 0, "{stats:?}");
    let total = counter.calls();
    for k in 1..=total {
        let mem = Arc::new(MemoryStore::with_limits(limits()));
        let inner: SharedStore = mem.clone();
        let ok = run_crashing_at(&inner, k, &txns);
        let landed = !mem.dump().is_empty();
        let db = reopen_and_check(inner, k, ok, &txns, &expected);
        let ps: i64 = db.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
        assert_eq!(ps, if landed { 8192 } else { 4096 }, "crash at {k}");
    }
}

/// The redb check on a Redis Cluster (3 masters, 3 replicas): the first 40 transactions, each
/// crash point in a namespace of its own (`prefix=` in the URL).
#[test]
fn every_crash_point_on_redis_cluster_leaves_old_or_new_state() {
    let Some(cluster) = cluster_helper::shared() else {
        return;
    };
    let open = |n: u64| -> SharedStore {
        let url = cluster.url(&format!("prefix=crash-{}-{n}:", std::process::id()));
        Arc::new(RedisStore::connect_with_limits(&url, limits()).unwrap())
    };
    let txns: Vec<String> = workload(11).into_iter().take(40).collect();
    let expected = expected_states(&txns);
    let counter = Arc::new(FaultStore::new(open(0), FaultPlan::none()));
    let db = open_database(counter.clone(), "crashy", &OpenOptions::default()).unwrap();
    for t in &txns {
        db.execute_batch(t).unwrap();
    }
    drop(db);
    for k in 1..=counter.calls() {
        let inner = open(k);
        let ok = run_crashing_at(&inner, k, &txns);
        reopen_and_check(inner, k, ok, &txns, &expected);
    }
}
