//! Crash consistency: a workload of over 100 transactions (small ones, staged over-limit
//! commits, journal fallbacks, VACUUM) is run with the store "crashing" at call k, for every k
//! from 1 to the workload's total, once with the write in flight applied and once with it
//! discarded. Reopened on the surviving data, the database passes `integrity_check` and holds
//! exactly the state after the transactions that returned OK, or after the one in flight too
//! when its write reached the store. Where a crash left a hot journal or an unfinished stage,
//! the recovery itself is crashed at each of its calls (both outcomes again) before a clean
//! reopen checks everything and writes. On memory, redb and a Redis Cluster.

use std::sync::Arc;

#[path = "common/sqlite.rs"]
mod sqlite_checks;
use sqlite_checks::assert_integrity;

use kvsqlite::kv::counting::{CountingStore, OpKind};
use kvsqlite::kv::faults::{CrashReport, CrashWrite, FaultPlan, FaultStore};
use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::redb_store::RedbStore;
use kvsqlite::kv::redis::RedisStore;
use kvsqlite::kv::{KvLimits, KvStore, SharedStore};
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

/// Both outcomes of the write in flight at a crash: it reached the store, or it did not.
const OUTCOMES: [CrashWrite; 2] = [CrashWrite::Apply, CrashWrite::Discard];

/// Runs `txns` on `inner` behind a store that crashes at call `k` with the write in flight
/// treated as `how` says; returns how many transactions returned OK before the crash (which must
/// have been reached) and what the crash did.
fn run_crashing_at(
    inner: &SharedStore,
    k: u64,
    how: CrashWrite,
    txns: &[String],
) -> (usize, CrashReport) {
    let faulty = FaultStore::wrap(inner.clone(), FaultPlan::none().crash_at(k, how));
    let ok = run(faulty.shared(), txns);
    let report = faulty
        .crash_report()
        .unwrap_or_else(|| panic!("crash point {k} was not reached"));
    check_report(&report, k, how);
    (ok, report)
}

/// The crash happened at call `k`, and a write in flight was applied exactly when `how` said.
fn check_report(report: &CrashReport, k: u64, how: CrashWrite) {
    assert_eq!(report.call, k);
    let is_write = matches!(report.op, OpKind::Write | OpKind::DeleteRange);
    assert_eq!(
        report.write_applied,
        is_write.then_some(how == CrashWrite::Apply),
        "crash at {k} ({how:?}): {report:?}"
    );
}

/// Reopens the surviving data after a crash at call `k` (`report`), with `ok` transactions
/// acknowledged: the database passes `integrity_check` and holds the state after exactly those
/// transactions, or after the one in flight too, which is only possible when the call in flight
/// was a write that reached the store. Returns the open database for further checks.
fn reopen_and_check(
    inner: SharedStore,
    report: &CrashReport,
    ok: usize,
    txns: &[String],
    expected: &[Rows],
) -> kvsqlite::vfs::Database {
    let k = report.call;
    let db = open_database(inner, "crashy", &OpenOptions::default())
        .unwrap_or_else(|e| panic!("crash at {k}: reopen failed: {e}"));
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("crash at {k}: integrity_check failed: {e}"));
    assert_eq!(check, "ok", "crash at {k}");
    let got = contents(&db);
    let in_flight = (ok + 1).min(txns.len());
    if report.write_applied == Some(true) {
        assert!(
            got == expected[ok] || got == expected[in_flight],
            "crash at call {k} ({report:?}): {ok} transactions returned OK; got {} rows, \
             expected {} or {}",
            got.len(),
            expected[ok].len(),
            expected[in_flight].len()
        );
    } else {
        // Nothing in flight reached the store: exactly the acknowledged transactions.
        assert!(
            got == expected[ok],
            "crash at call {k} ({report:?}): {ok} transactions returned OK; got {} rows, \
             expected exactly {}",
            got.len(),
            expected[ok].len()
        );
    }
    db
}

/// The recovered database takes a write (a new row, or the table if none had landed).
fn write_after_recovery(db: &rusqlite::Connection, what: &str) {
    db.execute("INSERT INTO t VALUES (100000, 'after')", [])
        .map(|_| ())
        .or_else(|_| db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)"))
        .unwrap_or_else(|e| panic!("{what}: write after recovery failed: {e}"));
    let n: i64 = db
        .query_row("SELECT count(*) FROM t WHERE id = 100000", [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{what}: read after recovery failed: {e}"));
    let fresh = contents(db).is_empty();
    assert_eq!(n, i64::from(!fresh), "{what}: the write after recovery");
}

/// The same check on the redb backend, for the first 40 transactions (a staged commit and a
/// journal fallback among them), with both outcomes of the write in flight.
#[test]
fn every_crash_point_on_redb_leaves_old_or_new_state() {
    let txns: Vec<String> = workload(11).into_iter().take(40).collect();
    let expected = expected_states(&txns);
    let dir = tempfile::tempdir().unwrap();
    let open = |n: String| -> SharedStore {
        Arc::new(RedbStore::open(dir.path().join(format!("kv{n}.redb")), limits()).unwrap())
    };
    let counter = CountingStore::wrap(open("count".into()));
    let stats = {
        let db = open_database(counter.shared(), "crashy", &OpenOptions::default()).unwrap();
        for t in &txns {
            db.execute_batch(t).unwrap();
        }
        db.snapshot()
    };
    assert!(
        stats.staged_commits >= 1 && stats.journal_fallbacks >= 1,
        "{stats:?}"
    );
    let total = counter.snapshot().round_trips();
    assert_eq!(total, stats.kv_round_trips);
    let mut landed = [0u32; 2];
    for k in 1..=total {
        for (o, how) in OUTCOMES.into_iter().enumerate() {
            let inner = open(format!("{k}-{o}"));
            let (ok, report) = run_crashing_at(&inner, k, how, &txns);
            let db = reopen_and_check(inner, &report, ok, &txns, &expected);
            landed[o] += (contents(&db) != expected[ok]) as u32;
            write_after_recovery(&db, &format!("redb crash at {k} ({how:?})"));
        }
    }
    assert!(landed[0] >= 1, "no applied write in flight ever landed");
    assert_eq!(landed[1], 0);
}

#[test]
fn every_crash_point_leaves_old_or_new_state() {
    for seed in [42, 7] {
        crash_everywhere(seed);
    }
}

/// A copy of `dump` (an actor's entries) in a fresh memory store with the test's limits.
fn restore(dump: &[(String, Vec<u8>, Vec<u8>)]) -> Arc<MemoryStore> {
    let mem = Arc::new(MemoryStore::with_limits(limits()));
    for (actor, k, v) in dump {
        mem.put(actor, vec![(k.clone(), v.clone())]).unwrap();
    }
    assert_eq!(mem.dump(), dump);
    mem
}

/// What a reopen does to recover: open, check, read everything.
fn recover(store: SharedStore) {
    if let Ok(db) = open_database(store, "crashy", &OpenOptions::default()) {
        let _ = db.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0));
        let _ = db.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0));
    }
}

/// The store `left` was left with a hot journal or an unfinished stage by the crash `first`:
/// crash the recovery itself at each of its calls, with both outcomes of its write in flight,
/// then reopen cleanly and check everything. Returns how many recovery crash points were tried.
fn crash_the_recovery(
    left: &[(String, Vec<u8>, Vec<u8>)],
    first: &CrashReport,
    ok: usize,
    txns: &[String],
    expected: &[Rows],
) -> u64 {
    let counter = FaultStore::wrap(restore(left), FaultPlan::none());
    recover(counter.shared());
    let calls = counter.calls();
    for j in 1..=calls {
        for how in OUTCOMES {
            let mem = restore(left);
            let inner: SharedStore = mem.clone();
            let faulty = FaultStore::wrap(inner.clone(), FaultPlan::none().crash_at(j, how));
            recover(faulty.shared());
            let report = faulty.crash_report().unwrap_or_else(|| {
                panic!(
                    "crash at {}: recovery crash point {j} not reached",
                    first.call
                )
            });
            check_report(&report, j, how);
            let what = format!(
                "crash at {} ({:?}), then at recovery call {j} ({how:?})",
                first.call, first.write_applied
            );
            let db = open_database(inner, "crashy", &OpenOptions::default())
                .unwrap_or_else(|e| panic!("{what}: reopen failed: {e}"));
            assert_integrity(&db);
            // The first crash decides what survives; the recovery's crash changes nothing.
            let got = contents(&db);
            let in_flight = (ok + 1).min(txns.len());
            assert!(
                got == expected[ok]
                    || (first.write_applied == Some(true) && got == expected[in_flight]),
                "{what}: {ok} acknowledged; got {} rows",
                got.len()
            );
            assert_eq!(unfinished_stage_keys(&mem), 0, "{what}: stage kept");
            assert!(!has_journal(&mem), "{what}: the journal is still there");
            write_after_recovery(&db, &what);
        }
    }
    calls
}

fn has_journal(mem: &MemoryStore) -> bool {
    mem.dump()
        .iter()
        .any(|(_, k, _)| *k == layout::meta_key(FileKind::Journal))
}

fn crash_everywhere(seed: u64) {
    let txns = workload(seed);
    let expected = expected_states(&txns);

    // A clean run counts the calls and checks the workload exercises every path.
    let inner: SharedStore = Arc::new(MemoryStore::with_limits(limits()));
    let counter = CountingStore::wrap(inner.clone());
    let stats = {
        let db = open_database(counter.shared(), "crashy", &OpenOptions::default()).unwrap();
        for t in &txns {
            db.execute_batch(t).unwrap();
        }
        assert_eq!(contents(&db), *expected.last().unwrap());
        db.snapshot()
    };
    let total = counter.snapshot().round_trips();
    eprintln!(
        "workload: {} transactions, {total} KV calls, {stats:?}",
        txns.len()
    );
    assert!(txns.len() >= 100);
    assert!(stats.staged_commits >= 3, "{stats:?}");
    assert!(stats.journal_fallbacks >= 3, "{stats:?}");
    assert!(stats.atomic_commits >= 90, "{stats:?}");
    assert_eq!(total, stats.kv_round_trips);

    let mut landed = [0u32; 2];
    let mut hot_journals = 0;
    let mut leftover_stages = 0;
    let mut recovery_points = 0;
    for k in 1..=total {
        for (o, how) in OUTCOMES.into_iter().enumerate() {
            let mem = Arc::new(MemoryStore::with_limits(limits()));
            let inner: SharedStore = mem.clone();
            let (ok, report) = run_crashing_at(&inner, k, how, &txns);
            let journal = has_journal(&mem);
            let stage = unfinished_stage_keys(&mem) > 0;
            hot_journals += journal as u32;
            leftover_stages += stage as u32;
            let left = mem.dump();
            let db = reopen_and_check(inner.clone(), &report, ok, &txns, &expected);
            assert_eq!(
                unfinished_stage_keys(&mem),
                0,
                "crash at {k}: open kept an unfinished stage"
            );
            landed[o] += (contents(&db) != expected[ok]) as u32;
            write_after_recovery(&db, &format!("crash at {k} ({how:?})"));
            drop(db);
            if journal || stage {
                recovery_points += crash_the_recovery(&left, &report, ok, &txns, &expected);
            }
        }
    }
    eprintln!(
        "{total} crash points x 2 outcomes; in-flight transaction survived in {} applied, \
         {} discarded; journal left behind in {hot_journals}; unfinished stage left behind in \
         {leftover_stages}; {recovery_points} recovery crash points x 2 outcomes",
        landed[0], landed[1]
    );
    assert!(
        hot_journals >= 3,
        "no crash left a hot journal to roll back"
    );
    assert!(
        leftover_stages >= 3,
        "no crash left an unfinished stage behind"
    );
    assert!(landed[0] >= 1 && landed[0] < total as u32);
    assert_eq!(landed[1], 0, "a discarded write in flight landed");
    assert!(recovery_points >= 10, "{recovery_points}");
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
    let counter = CountingStore::wrap(Arc::new(MemoryStore::with_limits(limits())));
    let stats = {
        let db = open_database(counter.shared(), "crashy", &OpenOptions::default()).unwrap();
        for t in &txns {
            db.execute_batch(t).unwrap();
        }
        assert_eq!(db.page_size(), 8192);
        db.snapshot()
    };
    assert!(stats.staged_commits >= 1, "{stats:?}");
    assert_eq!(stats.journal_fallbacks, 0, "{stats:?}");
    let total = counter.snapshot().round_trips();
    assert_eq!(total, stats.kv_round_trips);
    for k in 1..=total {
        for how in OUTCOMES {
            let mem = Arc::new(MemoryStore::with_limits(limits()));
            let inner: SharedStore = mem.clone();
            let (ok, report) = run_crashing_at(&inner, k, how, &txns);
            let landed = !mem.dump().is_empty();
            let db = reopen_and_check(inner, &report, ok, &txns, &expected);
            let ps: i64 = db.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
            assert_eq!(
                ps,
                if landed { 8192 } else { 4096 },
                "crash at {k} ({how:?})"
            );
        }
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
        for (o, how) in OUTCOMES.into_iter().enumerate() {
            let inner = open(2 * k + o as u64);
            let (ok, report) = run_crashing_at(&inner, k, how, &txns);
            let db = reopen_and_check(inner, &report, ok, &txns, &expected);
            write_after_recovery(&db, &format!("redis crash at {k} ({how:?})"));
        }
    }
}
