//! The kvsqlite target itself: one fresh actor per script, `control restart` reopening from the
//! store with nothing cached, KV round trips reported, keys removed afterwards (or kept).

use std::path::Path;
use std::sync::Arc;

use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::{ListRequest, SharedStore};
use kvsqlite::slt::{self, KvTarget, RunConfig, Session, Target};

fn memory() -> (Arc<MemoryStore>, SharedStore) {
    let m = Arc::new(MemoryStore::new());
    let s: SharedStore = m.clone();
    (m, s)
}

fn keys_of(store: &SharedStore, actor: &str) -> usize {
    store
        .list(actor, &ListRequest::prefix(Vec::new()))
        .unwrap()
        .entries
        .len()
}

/// A restart reopens from the store: with the actor's keys deleted behind its back, the
/// reopen finds no database at all (nothing of it was cached in the process).
#[test]
fn restart_reads_the_store_again() {
    let (_, store) = memory();
    let mut target = KvTarget::new(store.clone()).keep_data(true);
    let mut session = target.open_session(Path::new("x/restart.test")).unwrap();
    let actor = session.actor().to_string();
    assert!(actor.starts_with(target.actor_prefix()) && actor.ends_with("1-restart"));
    let conn = session.connection().unwrap();
    conn.execute_batch("CREATE TABLE t(a); INSERT INTO t VALUES(42);")
        .unwrap();
    session.restart().unwrap();
    let n: i64 = session
        .connection()
        .unwrap()
        .query_row("SELECT a FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 42);
    // The reopened database made its own KV reads (a fresh VFS state).
    let fresh = session.database().unwrap().snapshot();
    assert!(fresh.kv_reads >= 1, "{fresh:?}");
    assert!(session.kv_round_trips().unwrap() > fresh.kv_round_trips);

    store.delete_range(&actor, b"\0", None).unwrap();
    let err = session.restart().unwrap_err();
    assert!(err.contains("does not exist"), "{err}");
    let closed = session
        .connection()
        .expect_err("no connection after a failed restart");
    assert_eq!(
        closed,
        format!("actor {actor:?} is closed (a restart failed)")
    );
    Box::new(session).finish().unwrap();
}

/// Each script gets its own actor; its keys are deleted when it ends unless kept.
#[test]
fn fresh_actor_per_script_and_cleanup() {
    let script = "statement ok\nCREATE TABLE t(a)\n\nstatement ok\nINSERT INTO t VALUES(1)\n\n\
                  control restart\n\nquery I nosort\nSELECT count(*) FROM t\n----\n1\n";
    let (mem, store) = memory();
    let mut target = KvTarget::new(store.clone());
    for name in ["a.test", "b.test"] {
        let r = slt::run_script(&mut target, Path::new(name), script, &RunConfig::default());
        assert_eq!((r.passed, r.failed), (4, 0), "{:?}", r.failures);
        assert!(r.kv_round_trips.unwrap() >= 2, "{r:?}");
        assert!(r.summary_line().contains(" KV round trips)"));
    }
    assert!(mem.dump().is_empty(), "cleaned up: {:?}", mem.dump().len());

    let mut keep = KvTarget::new(store.clone()).keep_data(true);
    let prefix = keep.actor_prefix().to_string();
    let r = slt::run_script(
        &mut keep,
        Path::new("a.test"),
        script,
        &RunConfig::default(),
    );
    assert_eq!(r.failed, 0);
    let r = slt::run_script(
        &mut keep,
        Path::new("b.test"),
        script,
        &RunConfig::default(),
    );
    assert_eq!(r.failed, 0);
    assert!(keys_of(&store, &format!("{prefix}1-a")) > 0);
    assert!(keys_of(&store, &format!("{prefix}2-b")) > 0);
    assert_eq!(keep.name(), "memory");
}

/// A store that dies can never look like a passing script: the script is run once to count its
/// KV calls, then once per call with the store crashing there (that call and every later one
/// fail). Every run must report a failed record: a `statement error` record is not satisfied by
/// an I/O error, and a query never passes on rows cut short by one. (A single failed call, by
/// contrast, may be recovered legitimately: SQLite retries a failed batch-atomic commit through
/// its journal; the records' expected values still check the outcome.)
#[test]
fn a_crashed_store_always_fails_the_script() {
    use kvsqlite::kv::faults::{CrashWrite, FaultPlan, FaultStore};
    let script = "statement ok\nCREATE TABLE t(id INTEGER PRIMARY KEY, pad TEXT)\n\n\
                  statement ok\nINSERT INTO t WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300) \
                  SELECT i, printf('%0900d', i) FROM n\n\n\
                  control restart\n\n\
                  statement error\nINSERT INTO t VALUES(150, 'duplicate')\n\n\
                  query II nosort\nSELECT count(*), sum(length(pad)) FROM t\n----\n300\n270000\n\n\
                  statement ok\nUPDATE t SET pad = 'x' WHERE id % 3 = 0\n\n\
                  query I nosort\nSELECT sum(length(pad)) FROM t\n----\n180100\n";
    let counting = FaultStore::wrap(Arc::new(MemoryStore::new()), FaultPlan::none());
    let mut target = KvTarget::new(counting.shared()).keep_data(true);
    let clean = slt::run_script(
        &mut target,
        Path::new("f.test"),
        script,
        &RunConfig::default(),
    );
    assert_eq!((clean.passed, clean.failed), (7, 0), "{:?}", clean.failures);
    let total = counting.calls();
    assert!(total >= 6, "{total} KV calls");
    let mut storage_errors = 0;
    for n in 1..=total {
        for write in [CrashWrite::Apply, CrashWrite::Discard] {
            let plan = FaultPlan::none().crash_at(n, write);
            let faulty = FaultStore::wrap(Arc::new(MemoryStore::new()), plan);
            let mut target = KvTarget::new(faulty.shared()).keep_data(true);
            let r = slt::run_script(
                &mut target,
                Path::new("f.test"),
                script,
                &RunConfig::default(),
            );
            assert!(
                r.failed >= 1,
                "crash at KV call {n} of {total} ({write:?}) but every record passed: {r:?}"
            );
            storage_errors += r
                .failures
                .iter()
                .filter(|f| {
                    f.message
                        .starts_with("statement failed with a storage error")
                })
                .count();
        }
    }
    // Some crash points leave the `statement error` record facing a dead store: it fails as a
    // storage error instead of passing.
    assert!(storage_errors >= 1);
}
