//! Deterministic tests of interleavings between connections of one database in one process.
//!
//! Every connection of a database shares one `DbState`; SQLite's locks keep most of them apart,
//! but a connection that *closes* takes no lock: its close flushes the shared buffers whatever
//! another connection is doing. These tests drive the shared state the way the FFI layer does
//! (`x_close` is `unlock` then `flush_all`; the batch-atomic bracket is `begin_atomic`, the
//! page writes, then `commit_atomic` or `rollback_atomic`) so each interleaving happens every
//! time, and check what reached the store.

use std::sync::Arc;

use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::{ActorKv, KvStore, SharedStore};
use kvsqlite::vfs::file::{DbState, StateOptions};
use kvsqlite::vfs::layout::FileKind;
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
