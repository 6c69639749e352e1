//! Pipelined commits (`OpenOptions::pipelined`): commits queued behind one in-flight put go out
//! together in exactly one put; a crash at every KV call of a pipelined workload (both
//! outcomes of the write in flight) leaves a prefix of the commits that holds every commit a
//! `wait_durable` covered; a failed put poisons the database (every later statement and
//! `wait_durable` fail, the commits queued behind it are not written); and two instances of an
//! actor with puts in flight: the loser's queued commits are refused and none lands.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

#[path = "common/sqlite.rs"]
mod sqlite_checks;
use sqlite_checks::assert_integrity;

use kvsqlite::actor::{Actor, ActorConfig, ActorError, Migration};
use kvsqlite::kv::counting::CountingStore;
use kvsqlite::kv::faults::{CrashWrite, FaultPlan, FaultStore};
use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::{
    Key, KvError, KvLimits, KvStore, ListPage, ListRequest, ReadOp, ReadResult, SharedStore, Value,
    WriteBatch,
};
use kvsqlite::vfs::{open_database, Database, OpenOptions, VfsError};

/// Longest a test waits for the writer thread to reach the store (never reached when correct).
const WAIT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct GateState {
    closed: bool,
    fail_next: bool,
    /// Writes that reached this store (blocked ones included).
    entered: u64,
}

/// A store whose writes wait while the gate is closed, and can fail the next write.
struct GateStore {
    inner: SharedStore,
    st: Mutex<GateState>,
    cv: Condvar,
}

impl GateStore {
    fn new(inner: SharedStore) -> Arc<GateStore> {
        Arc::new(GateStore {
            inner,
            st: Mutex::new(GateState::default()),
            cv: Condvar::new(),
        })
    }

    fn close(&self) {
        self.st.lock().closed = true;
    }

    fn open(&self) {
        self.st.lock().closed = false;
        self.cv.notify_all();
    }

    fn fail_next(&self) {
        self.st.lock().fail_next = true;
    }

    fn entered(&self) -> u64 {
        self.st.lock().entered
    }

    /// Waits until `n` writes have reached the store.
    fn wait_entered(&self, n: u64) {
        let mut st = self.st.lock();
        while st.entered < n {
            assert!(
                !self.cv.wait_for(&mut st, WAIT).timed_out(),
                "the writer never reached the store"
            );
        }
    }
}

impl KvStore for GateStore {
    fn backend(&self) -> &'static str {
        "gate"
    }
    fn limits(&self) -> &KvLimits {
        self.inner.limits()
    }
    fn get(&self, actor: &str, keys: &[Key]) -> Result<Vec<Option<Value>>, KvError> {
        self.inner.get(actor, keys)
    }
    fn list(&self, actor: &str, req: &ListRequest) -> Result<ListPage, KvError> {
        self.inner.list(actor, req)
    }
    fn write(&self, actor: &str, batch: &WriteBatch) -> Result<(), KvError> {
        let mut st = self.st.lock();
        st.entered += 1;
        self.cv.notify_all();
        while st.closed {
            self.cv.wait(&mut st);
        }
        if std::mem::take(&mut st.fail_next) {
            return Err(KvError::InjectedFault { call: st.entered });
        }
        drop(st);
        self.inner.write(actor, batch)
    }
    fn delete_range(&self, actor: &str, start: &[u8], end: Option<&[u8]>) -> Result<(), KvError> {
        self.inner.delete_range(actor, start, end)
    }
    fn batch_read(&self, actor: &str, ops: &[ReadOp]) -> Result<Vec<ReadResult>, KvError> {
        self.inner.batch_read(actor, ops)
    }
}

fn pipelined() -> OpenOptions {
    OpenOptions {
        pipelined: true,
        ..OpenOptions::default()
    }
}

fn ids(db: &Database) -> Vec<i64> {
    let mut stmt = db.prepare("SELECT id FROM t ORDER BY id").unwrap();
    let r = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<Vec<i64>, _>>()
        .unwrap();
    r
}

/// The rows as a fresh process would see them: a new handle on the same data.
fn stored_ids(mem: &SharedStore, actor: &str) -> Vec<i64> {
    let fresh: SharedStore = CountingStore::wrap(mem.clone()).shared();
    let db = open_database(fresh, actor, &OpenOptions::default()).unwrap();
    assert_integrity(&db);
    ids(&db)
}

#[test]
fn commits_queued_behind_one_put_go_out_in_one_put() {
    let mem: SharedStore = Arc::new(MemoryStore::new());
    let gate = GateStore::new(mem.clone());
    let db = open_database(gate.clone(), "p", &pipelined()).unwrap();
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    db.execute("INSERT INTO t VALUES (1, 'a')", []).unwrap();
    db.wait_durable().unwrap();
    let entered = gate.entered();
    let before = db.snapshot();
    gate.close();
    db.execute("INSERT INTO t VALUES (2, 'b')", []).unwrap();
    gate.wait_entered(entered + 1);
    // Five commits while the first put is in flight: each reads and writes on top of it.
    for i in 3..8 {
        db.execute("INSERT INTO t VALUES (?1, 'c')", [i]).unwrap();
    }
    assert_eq!(ids(&db), (1..8).collect::<Vec<_>>());
    assert_eq!(gate.entered(), entered + 1, "nothing else was sent");
    gate.open();
    db.wait_durable().unwrap();
    let d = db.snapshot() - before;
    assert_eq!(
        d.kv_round_trips, 2,
        "one put in flight, then the five in one put"
    );
    assert_eq!(d.kv_writes, 2);
    assert_eq!(d.kv_reads, 0);
    assert_eq!(stored_ids(&mem, "p"), (1..8).collect::<Vec<_>>());
    // With history on, each commit kept its own redo record, in order.
    let seqs: Vec<u64> = db.history().unwrap().iter().map(|c| c.seq).collect();
    assert_eq!(seqs, (1..=8).collect::<Vec<_>>());
}

#[test]
fn without_pipelining_wait_durable_is_immediate_and_each_commit_is_one_put() {
    let mem: SharedStore = Arc::new(MemoryStore::new());
    let db = open_database(mem.clone(), "np", &OpenOptions::default()).unwrap();
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY)")
        .unwrap();
    let before = db.snapshot();
    db.execute("INSERT INTO t VALUES (1)", []).unwrap();
    assert_eq!((db.snapshot() - before).kv_round_trips, 1);
    db.wait_durable().unwrap();
    assert_eq!((db.snapshot() - before).kv_round_trips, 1);
}

#[test]
fn a_failed_put_poisons_the_database_and_the_commits_behind_it_are_not_written() {
    let mem: SharedStore = Arc::new(MemoryStore::new());
    let gate = GateStore::new(mem.clone());
    let db = open_database(gate.clone(), "poison", &pipelined()).unwrap();
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1);")
        .unwrap();
    db.wait_durable().unwrap();
    let entered = gate.entered();
    gate.close();
    gate.fail_next();
    db.execute("INSERT INTO t VALUES (2)", []).unwrap();
    gate.wait_entered(entered + 1);
    db.execute("INSERT INTO t VALUES (3)", []).unwrap();
    db.execute("INSERT INTO t VALUES (4)", []).unwrap();
    gate.open();
    match db.wait_durable() {
        Err(VfsError::Poisoned(m)) => assert!(m.contains("not written"), "{m}"),
        other => panic!("expected poisoned, got {other:?}"),
    }
    assert_eq!(
        gate.entered(),
        entered + 1,
        "the queued commits were never sent"
    );
    assert!(matches!(db.unusable(), Some(VfsError::Poisoned(_))));
    // Every later statement is refused: reads, writes, a transaction, and wait_durable again.
    for sql in [
        "SELECT count(*) FROM t",
        "INSERT INTO t VALUES (5)",
        "BEGIN; INSERT INTO t VALUES (6); COMMIT;",
        "PRAGMA user_version",
    ] {
        let e = db
            .execute_batch(sql)
            .expect_err("a poisoned database refuses every statement");
        assert_eq!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::SystemIoFailure),
            "{sql}: {e}"
        );
    }
    assert!(matches!(db.wait_durable(), Err(VfsError::Poisoned(_))));
    assert_eq!(gate.entered(), entered + 1);
    drop(db);
    // The store is the truth: only the commit before the failed put.
    assert_eq!(stored_ids(&mem, "poison"), vec![1]);
}

/// Transaction `i` of the crash workload: the ids it inserts and its SQL. Every eighth is a
/// staged commit (over the 8-entry limit); the rest insert one or two small rows.
fn txn(i: i64) -> (Vec<i64>, String) {
    if i % 8 == 5 {
        let ids: Vec<i64> = (0..12).map(|j| i * 100 + j).collect();
        let mut sql = String::from("BEGIN;");
        for id in &ids {
            sql.push_str(&format!("INSERT INTO t VALUES ({id}, randomblob(1500));"));
        }
        sql.push_str("COMMIT;");
        (ids, sql)
    } else {
        let ids: Vec<i64> = (0..1 + i % 2).map(|j| i * 100 + j).collect();
        let mut sql = String::from("BEGIN;");
        for id in &ids {
            sql.push_str(&format!("INSERT INTO t VALUES ({id}, 'x');"));
        }
        sql.push_str("COMMIT;");
        (ids, sql)
    }
}

const TXNS: i64 = 24;

/// Runs the workload; returns (transactions that returned OK, the last one a `wait_durable`
/// covered).
fn run_workload(store: SharedStore) -> (i64, i64) {
    let Ok(db) = open_database(store, "crash", &pipelined()) else {
        return (0, 0);
    };
    if db
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
        .is_err()
    {
        return (0, 0);
    }
    let (mut returned, mut covered) = (0, 0);
    for i in 1..=TXNS {
        if db.execute_batch(&txn(i).1).is_err() {
            break;
        }
        returned = i;
        if i % 4 == 0 {
            if db.wait_durable().is_err() {
                break;
            }
            covered = i;
        }
    }
    if db.wait_durable().is_ok() {
        covered = returned;
    }
    (returned, covered)
}

fn limits() -> KvLimits {
    KvLimits {
        max_write_entries: 8,
        ..KvLimits::default()
    }
}

#[test]
fn a_crash_at_every_kv_call_leaves_a_prefix_holding_every_durable_commit() {
    let probe = FaultStore::wrap(
        Arc::new(MemoryStore::with_limits(limits())),
        FaultPlan::none(),
    );
    assert_eq!(run_workload(probe.shared()), (TXNS, TXNS));
    let total = probe.calls();
    // How many puts the writer makes depends on how many commits queue while one flies (it
    // merges them), so the count varies from run to run (20 to 30 seen). Its floor does not:
    // the open reads once, and each of the six `wait_durable`s (one per four transactions)
    // waits for a put of its own.
    assert!(total > (TXNS / 4) as u64, "{total} calls");
    let prefix = |j: i64| -> Vec<i64> {
        let mut v: Vec<i64> = (1..=j).flat_map(|i| txn(i).0).collect();
        v.sort_unstable();
        v
    };
    // Calls after the crash point are ignored by the crashed store, so a little past the
    // probe's total covers runs whose interleaving took a few more calls.
    for k in 1..=total + 4 {
        for write in [CrashWrite::Apply, CrashWrite::Discard] {
            let mem: SharedStore = Arc::new(MemoryStore::with_limits(limits()));
            let fs = FaultStore::wrap(mem.clone(), FaultPlan::none().crash_at(k, write));
            let (returned, covered) = run_workload(fs.shared());
            if !fs.is_crashed() {
                continue;
            }
            let table = {
                let fresh: SharedStore = CountingStore::wrap(mem.clone()).shared();
                let db = open_database(fresh, "crash", &OpenOptions::default()).unwrap();
                assert_integrity(&db);
                db.query_row(
                    "SELECT count(*) FROM sqlite_schema WHERE name = 't'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .unwrap()
            };
            if table == 0 {
                assert_eq!(
                    covered, 0,
                    "crash at {k} ({write:?}): a durable commit lost"
                );
                continue;
            }
            let got = stored_ids(&mem, "crash");
            let j = (0..=TXNS).find(|&j| prefix(j) == got).unwrap_or_else(|| {
                panic!("crash at {k} ({write:?}): {got:?} is no prefix of the commits")
            });
            assert!(
                j >= covered && j <= returned + 1,
                "crash at {k} ({write:?}): prefix {j}, returned {returned}, durable {covered}"
            );
        }
    }
}

fn actor_config() -> ActorConfig {
    let mut c = ActorConfig::default().with_migrations(vec![Migration::new(
        "0001_t.sql",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, who TEXT);",
    )
    .unwrap()]);
    c.open.pipelined = true;
    c
}

#[test]
fn the_loser_of_two_instances_lands_none_of_its_queued_commits() {
    let mem: SharedStore = Arc::new(MemoryStore::new());
    let gate = GateStore::new(mem.clone());
    let other: SharedStore = CountingStore::wrap(mem.clone()).shared();
    Actor::start(gate.clone(), "f", &actor_config())
        .unwrap()
        .sleep()
        .unwrap();
    let old = Actor::start(gate.clone(), "f", &actor_config()).unwrap();
    old.db()
        .execute("INSERT INTO t VALUES (1, 'old')", [])
        .unwrap();
    old.wait_durable().unwrap();
    let entered = gate.entered();
    gate.close();
    old.db()
        .execute("INSERT INTO t VALUES (2, 'old')", [])
        .unwrap();
    gate.wait_entered(entered + 1);
    old.db()
        .execute("INSERT INTO t VALUES (3, 'old')", [])
        .unwrap();
    old.db()
        .execute("INSERT INTO t VALUES (4, 'old')", [])
        .unwrap();
    // A second instance wakes (the old one's put still in flight) and commits first.
    let new = Actor::start(other.clone(), "f", &actor_config()).unwrap();
    new.db()
        .execute("INSERT INTO t VALUES (10, 'new')", [])
        .unwrap();
    new.wait_durable().unwrap();
    gate.open();
    match old.wait_durable() {
        Err(ActorError::Moved) => {}
        other => panic!("expected moved, got {other:?}"),
    }
    assert_eq!(
        gate.entered(),
        entered + 1,
        "the queued commits were never sent"
    );
    let e = old
        .db()
        .execute("INSERT INTO t VALUES (5, 'old')", [])
        .expect_err("the loser refuses every statement");
    assert!(kvsqlite::actor::is_moved_error(&e), "{e:?}");
    drop(old);
    let ids = {
        let mut stmt = new.db().prepare("SELECT id FROM t ORDER BY id").unwrap();
        let r = stmt
            .query_map([], |r| r.get::<_, i64>(0))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        r
    };
    assert_eq!(ids, vec![1, 10]);
    new.sleep().unwrap();
    let check = Actor::start(other, "f", &actor_config()).unwrap();
    let n: i64 = check
        .db()
        .query_row("SELECT count(*) FROM t WHERE who = 'old'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
}
