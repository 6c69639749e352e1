//! Exact KV round-trip counts of the VFS: commits, reads, staged commits, fallbacks.

use std::sync::Arc;

use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::{KvLimits, SharedStore};
use kvsqlite::vfs::{self, open_database, OpenOptions};

fn store() -> SharedStore {
    Arc::new(MemoryStore::new())
}

#[test]
fn warm_ten_row_insert_is_one_put_and_no_get() {
    let s = store();
    let db = open_database(s.clone(), "a1", &OpenOptions::default()).unwrap();
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    db.execute("INSERT INTO t(v) VALUES ('warm')", []).unwrap();
    let before = db.snapshot();
    db.execute_batch("BEGIN").unwrap();
    for i in 0..10 {
        db.execute("INSERT INTO t(v) VALUES (?1)", [format!("row {i}")])
            .unwrap();
    }
    db.execute_batch("COMMIT").unwrap();
    let d = db.snapshot() - before;
    assert_eq!(d.kv_round_trips, 1, "{d:?}");
    assert_eq!(d.kv_writes, 1);
    assert_eq!(d.kv_reads, 0);
    assert_eq!(d.atomic_commits, 1);
    assert_eq!(d.journal_fallbacks, 0);
    let n: i64 = db
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 11);
    assert!(vfs::batch_atomic_compiled());
}
