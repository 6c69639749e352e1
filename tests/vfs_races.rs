//! Deterministic tests of interleavings between connections of one database in one process.
//!
//! Every connection of a database shares one `DbState`; SQLite's locks keep most of them apart,
//! but a connection that *closes* takes no lock: its close flushes the shared buffers whatever
//! another connection is doing. These tests drive the shared state the way the FFI layer does
//! (`x_close` is `unlock` then `flush_all`; the batch-atomic bracket is `begin_atomic`, the
//! page writes, then `commit_atomic` or `rollback_atomic`) so each interleaving happens every
//! time, and check what reached the store.

#[path = "common/sqlite.rs"]
mod sqlite_checks;
use sqlite_checks::assert_integrity;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::{
    ActorKv, Key, KvError, KvLimits, KvStore, ListPage, ListRequest, ReadOp, ReadResult,
    SharedStore, Value, WriteBatch,
};
use kvsqlite::preload::Preload;
use kvsqlite::vfs::file::{DbState, StateOptions};
use kvsqlite::vfs::layout::{self, FileKind};
use kvsqlite::vfs::{open_database, OpenOptions};

const PS: u64 = 4096;

/// A store holding a database of one table with a few rows (three pages or so).
fn store_with_table(actor: &str) -> Arc<MemoryStore> {
    let m = Arc::new(MemoryStore::new());
    let db = open_database(m.clone(), actor, &OpenOptions::default()).unwrap();
    db.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1), (2), (3);")
        .unwrap();
    m
}

fn state(m: &Arc<MemoryStore>, actor: &str) -> DbState {
    let store: SharedStore = m.clone();
    DbState::open(
        ActorKv::new(store, actor).unwrap(),
        StateOptions::default(),
        None,
    )
    .unwrap()
}

#[test]
fn a_close_during_another_connections_atomic_bracket_writes_nothing() {
    let m = store_with_table("bracket");
    let s = state(&m, "bracket");
    let before = m.dump();
    let size = s.file_size(FileKind::Main).unwrap();
    assert_eq!(size % PS, 0);

    // Connection A's commit: the bracket opens and grows the file by two pages.
    s.begin_atomic().unwrap();
    s.write(FileKind::Main, size, &vec![7u8; 2 * PS as usize])
        .unwrap();
    // Connection B closes meanwhile (x_close: unlock, then flush_all).
    s.flush_all().unwrap();
    assert_eq!(
        m.dump(),
        before,
        "a close made part of another connection's open transaction durable"
    );
    // A's commit fails and rolls back: the store must still hold the old database.
    s.rollback_atomic();
    s.flush_all().unwrap();
    assert_eq!(m.dump(), before);
    assert_eq!(s.file_size(FileKind::Main).unwrap(), size);
}

#[test]
fn entries_queued_for_the_next_commit_are_not_written_by_another_connections_close() {
    let m = store_with_table("queued");
    let s = state(&m, "queued");
    let size = s.file_size(FileKind::Main).unwrap();
    s.queue_puts(vec![(b"actor-state".to_vec(), b"v2".to_vec())])
        .unwrap();

    s.begin_atomic().unwrap();
    s.write(FileKind::Main, size, &vec![9u8; PS as usize])
        .unwrap();
    s.flush_all().unwrap(); // another connection closes mid-bracket
    assert_eq!(
        m.get("queued", &[b"actor-state".to_vec()]).unwrap(),
        vec![None],
        "queued entries must land in the same put as the commit, not before it"
    );
    assert_eq!(s.queued_puts(), 1);

    // The commit writes pages, metadata and the queued entry in one put.
    let rt = s.stats().snapshot().kv_round_trips;
    s.commit_atomic().unwrap();
    assert_eq!(s.stats().snapshot().kv_round_trips - rt, 1);
    assert_eq!(
        m.get("queued", &[b"actor-state".to_vec()]).unwrap(),
        vec![Some(b"v2".to_vec())]
    );
    assert_eq!(s.queued_puts(), 0);
    assert_eq!(s.file_size(FileKind::Main).unwrap(), size + PS);
}

/// A memory store whose deletions of the journal fail while armed (the request is lost:
/// nothing is deleted), so a journalled commit stops right at its commit point: a
/// `delete_range`, or (with history on, where the deletion also completes the commit's history
/// header) a write deleting the journal's metadata.
struct NoDeleteStore {
    inner: MemoryStore,
    armed: AtomicBool,
}

impl KvStore for NoDeleteStore {
    fn backend(&self) -> &'static str {
        "no-delete"
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
        let journal_meta = kvsqlite::vfs::layout::meta_key(FileKind::Journal);
        if self.armed.load(Ordering::SeqCst) && batch.deletes.contains(&journal_meta) {
            return Err(KvError::InjectedFault { call: 0 });
        }
        self.inner.write(actor, batch)
    }
    fn delete_range(&self, actor: &str, start: &[u8], end: Option<&[u8]>) -> Result<(), KvError> {
        if self.armed.load(Ordering::SeqCst) {
            return Err(KvError::InjectedFault { call: 0 });
        }
        self.inner.delete_range(actor, start, end)
    }
    fn batch_read(&self, actor: &str, ops: &[ReadOp]) -> Result<Vec<ReadResult>, KvError> {
        self.inner.batch_read(actor, ops)
    }
}

fn count(db: &rusqlite::Connection) -> rusqlite::Result<i64> {
    db.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
}

#[test]
fn a_hot_journal_left_by_one_connections_failed_commit_is_rolled_back_by_another() {
    let nd = Arc::new(NoDeleteStore {
        inner: MemoryStore::new(),
        armed: AtomicBool::new(false),
    });
    let store: SharedStore = nd.clone();
    // A bound of four pages on the atomic path: bigger transactions journal.
    let opts = OpenOptions {
        max_atomic_bytes: 4 * PS as usize,
        ..OpenOptions::default()
    };
    let a = open_database(store.clone(), "hot", &opts).unwrap();
    let b = open_database(store.clone(), "hot", &opts).unwrap();
    a.execute_batch("CREATE TABLE t(x BLOB); INSERT INTO t VALUES (zeroblob(10));")
        .unwrap();
    assert_eq!(count(&b).unwrap(), 1);

    // A's big transaction journals; its commit point (deleting the journal) fails.
    let before = a.snapshot();
    nd.armed.store(true, Ordering::SeqCst);
    let e = a
        .execute_batch(
            "BEGIN; WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 20)
             INSERT INTO t SELECT zeroblob(3000) FROM s; COMMIT;",
        )
        .unwrap_err();
    assert_eq!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::SystemIoFailure),
        "{e}"
    );
    assert_eq!((a.snapshot() - before).journal_fallbacks, 1);
    if !a.is_autocommit() {
        let _ = a.execute_batch("ROLLBACK");
    }
    nd.armed.store(false, Ordering::SeqCst);
    // The journal is still in the store: hot for the next reader.
    let journal_keys = nd
        .inner
        .dump()
        .into_iter()
        .filter(|(actor, k, _)| actor == "hot" && k.get(1) == Some(&layout::TAG_JOURNAL))
        .count();
    assert!(journal_keys > 0, "the failed commit left no journal");

    // B's next read transaction finds the hot journal and rolls the transaction back: the
    // commit that returned an error did not happen, for B and for A.
    assert_eq!(count(&b).unwrap(), 1);
    assert_eq!(count(&a).unwrap(), 1);
    assert_integrity(&b);
    // Both keep working; a fresh state agrees.
    b.execute("INSERT INTO t VALUES (zeroblob(20))", [])
        .unwrap();
    a.execute("INSERT INTO t VALUES (zeroblob(30))", [])
        .unwrap();
    drop((a, b));
    let c = open_database(store, "hot", &opts).unwrap();
    let lens: Vec<i64> = c
        .prepare("SELECT length(x) FROM t ORDER BY rowid")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(lens, vec![10, 20, 30]);
    assert!(
        !nd.inner
            .dump()
            .iter()
            .any(|(actor, k, _)| actor == "hot" && k.get(1) == Some(&layout::TAG_JOURNAL)),
        "the journal was not deleted after the rollback"
    );
}

fn xs(db: &rusqlite::Connection) -> Vec<i64> {
    db.prepare("SELECT x FROM t ORDER BY x")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn a_preload_read_before_another_connections_commit_is_not_trusted() {
    let m = Arc::new(MemoryStore::new());
    {
        let db = open_database(m.clone(), "wake", &OpenOptions::default()).unwrap();
        db.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
    }
    // An actor wakes: its preload is read...
    let ops = layout::preload_reads(1 << 20);
    let preload = Preload::from_reads(&ops, &m.batch_read("wake", &ops).unwrap());
    // ...and before it opens, another connection of this process opens, commits and closes.
    {
        let db = open_database(m.clone(), "wake", &OpenOptions::default()).unwrap();
        db.execute("INSERT INTO t VALUES (2)", []).unwrap();
    }
    // Opening with the now stale preload must not read (or build on) the old state.
    let opts = OpenOptions {
        preload: Some(preload),
        ..OpenOptions::default()
    };
    let db = open_database(m.clone(), "wake", &opts).unwrap();
    assert_eq!(xs(&db), vec![1, 2], "read the state from before a commit");
    db.execute("INSERT INTO t VALUES (3)", []).unwrap();
    drop(db);
    let db = open_database(m, "wake", &OpenOptions::default()).unwrap();
    assert_eq!(xs(&db), vec![1, 2, 3], "a commit was lost");
}

#[test]
fn a_current_preload_still_wakes_without_a_round_trip() {
    let m = Arc::new(MemoryStore::new());
    {
        let db = open_database(m.clone(), "fresh", &OpenOptions::default()).unwrap();
        db.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        db.execute("INSERT INTO t VALUES (2)", []).unwrap();
    }
    let ops = layout::preload_reads(1 << 20);
    let preload = Preload::from_reads(&ops, &m.batch_read("fresh", &ops).unwrap());
    let opts = OpenOptions {
        preload: Some(preload),
        ..OpenOptions::default()
    };
    let db = open_database(m, "fresh", &opts).unwrap();
    assert_eq!(xs(&db), vec![1, 2]);
    assert_eq!(db.snapshot().kv_round_trips, 0, "{:?}", db.snapshot());
}

#[test]
fn in_process_locks_follow_sqlites_levels() {
    use kvsqlite::vfs::file::lock::{EXCLUSIVE, NONE, PENDING, RESERVED, SHARED};
    let m = store_with_table("locks");
    let s = state(&m, "locks");
    let (a, b, c) = (s.new_handle_id(), s.new_handle_id(), s.new_handle_id());
    assert_eq!(s.lock(a, NONE, SHARED), (true, SHARED));
    assert_eq!(s.lock(b, NONE, SHARED), (true, SHARED));
    assert!(!s.reserved());
    // One RESERVED at a time; readers keep reading and new ones may start.
    assert_eq!(s.lock(a, SHARED, RESERVED), (true, RESERVED));
    assert!(s.reserved());
    assert_eq!(s.lock(b, SHARED, RESERVED), (false, SHARED));
    // EXCLUSIVE waits for the other reader: the writer holds PENDING, which stops new readers.
    assert_eq!(s.lock(a, RESERVED, EXCLUSIVE), (false, PENDING));
    assert_eq!(s.lock(c, NONE, SHARED), (false, NONE));
    assert_eq!(s.unlock(b, SHARED, NONE), NONE);
    assert_eq!(s.lock(a, PENDING, EXCLUSIVE), (true, EXCLUSIVE));
    assert_eq!(s.lock(c, NONE, SHARED), (false, NONE));
    // Back to SHARED: everything above it is released at once.
    assert_eq!(s.unlock(a, EXCLUSIVE, SHARED), SHARED);
    assert!(!s.reserved());
    assert_eq!(s.lock(c, NONE, SHARED), (true, SHARED));
    assert_eq!(s.lock(c, SHARED, RESERVED), (true, RESERVED));
    // A reader going straight to EXCLUSIVE (hot-journal rollback) while another reads.
    assert_eq!(s.unlock(c, RESERVED, SHARED), SHARED);
    assert_eq!(s.lock(c, SHARED, EXCLUSIVE), (false, PENDING));
    assert!(s.reserved());
    assert_eq!(s.lock(a, SHARED, RESERVED), (false, SHARED));
    assert_eq!(s.unlock(a, SHARED, NONE), NONE);
    assert_eq!(s.lock(c, PENDING, EXCLUSIVE), (true, EXCLUSIVE));
    assert_eq!(s.unlock(c, EXCLUSIVE, NONE), NONE);
    // Nothing held: anyone may take anything.
    assert!(!s.reserved());
    assert_eq!(s.lock(b, NONE, SHARED), (true, SHARED));
    assert_eq!(s.lock(b, SHARED, EXCLUSIVE), (true, EXCLUSIVE));
}
