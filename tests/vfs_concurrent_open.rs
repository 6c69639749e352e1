//! Two connections opening one database at the same time must share one state.
//!
//! Regression test: the VFS used to read a database's metadata outside any lock and register
//! the result afterwards. When a second connection opened, committed and closed during that
//! read, the first connection registered metadata from before those commits, and its next
//! commits overwrote them (lost writes, seen as a flaky failure under load). The gate below
//! makes that interleaving happen every time instead of once in a few hundred runs.

#[path = "common/sqlite.rs"]
mod sqlite_checks;
use sqlite_checks::assert_integrity;
use std::sync::Arc;
use std::time::Duration;

use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::{
    Key, KvError, KvLimits, KvStore, ListPage, ListRequest, ReadOp, ReadResult, SharedStore, Value,
    WriteBatch,
};
use kvsqlite::vfs::{open_database, OpenOptions};
use parking_lot::{Condvar, Mutex};

#[derive(Default)]
struct GateState {
    armed: bool,
    entered: bool,
    released: bool,
}

/// A store that, once armed, holds the answer of the next read call (already read) until
/// released, or until a bound passes, so a correct VFS that makes the other connection wait
/// cannot deadlock the test.
struct GatedStore {
    inner: MemoryStore,
    gate: Mutex<GateState>,
    cv: Condvar,
}

impl GatedStore {
    fn pass(&self) {
        let mut g = self.gate.lock();
        if !g.armed {
            return;
        }
        g.armed = false;
        g.entered = true;
        self.cv.notify_all();
        let _ = self
            .cv
            .wait_while_for(&mut g, |g| !g.released, Duration::from_secs(2));
    }

    fn wait_entered(&self) {
        let mut g = self.gate.lock();
        self.cv.wait_while(&mut g, |g| !g.entered);
    }

    fn release(&self) {
        self.gate.lock().released = true;
        self.cv.notify_all();
    }
}

impl KvStore for GatedStore {
    fn backend(&self) -> &'static str {
        "gated"
    }
    fn limits(&self) -> &KvLimits {
        self.inner.limits()
    }
    fn get(&self, actor: &str, keys: &[Key]) -> Result<Vec<Option<Value>>, KvError> {
        let answer = self.inner.get(actor, keys);
        self.pass();
        answer
    }
    fn list(&self, actor: &str, req: &ListRequest) -> Result<ListPage, KvError> {
        let answer = self.inner.list(actor, req);
        self.pass();
        answer
    }
    fn write(&self, actor: &str, batch: &WriteBatch) -> Result<(), KvError> {
        self.inner.write(actor, batch)
    }
    fn delete_range(&self, actor: &str, start: &[u8], end: Option<&[u8]>) -> Result<(), KvError> {
        self.inner.delete_range(actor, start, end)
    }
    fn batch_read(&self, actor: &str, ops: &[ReadOp]) -> Result<Vec<ReadResult>, KvError> {
        let answer = self.inner.batch_read(actor, ops);
        self.pass();
        answer
    }
}

fn insert_rows(store: SharedStore, w: i64) {
    let db = open_database(store, "both", &OpenOptions::default()).unwrap();
    db.busy_timeout(Duration::from_secs(30)).unwrap();
    for i in 0..10 {
        db.execute("INSERT INTO t VALUES (?1, ?2)", [w, i]).unwrap();
    }
}

#[test]
fn a_connection_that_commits_and_closes_during_another_open_loses_nothing() {
    let gated = Arc::new(GatedStore {
        inner: MemoryStore::new(),
        gate: Mutex::new(GateState::default()),
        cv: Condvar::new(),
    });
    let store: SharedStore = gated.clone();
    {
        let db = open_database(store.clone(), "both", &OpenOptions::default()).unwrap();
        db.execute_batch("CREATE TABLE t(w, i)").unwrap();
    }
    // B's open reads the metadata and is held there.
    gated.gate.lock().armed = true;
    let b = {
        let store = store.clone();
        std::thread::spawn(move || insert_rows(store, 1))
    };
    gated.wait_entered();
    // A opens, commits ten rows and closes while B's open is held (a correct VFS makes A wait
    // for B's open instead; the gate then lets B go after its bound).
    let a = {
        let store = store.clone();
        let gated = gated.clone();
        std::thread::spawn(move || {
            insert_rows(store, 0);
            gated.release();
        })
    };
    a.join().unwrap();
    b.join().unwrap();

    let db = open_database(store, "both", &OpenOptions::default()).unwrap();
    let per_writer: Vec<(i64, i64)> = db
        .prepare("SELECT w, count(*) FROM t GROUP BY w ORDER BY w")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(per_writer, vec![(0, 10), (1, 10)]);
    assert_integrity(&db);
}
