//! History (format 2): redo records in the same put as each commit, bookmarks, restore in
//! place, compaction — against a stock SQLite file as the oracle, with exact round trips.

#[path = "common/sqlite.rs"]
mod sqlite_checks;
#[path = "common/history.rs"]
mod workload;

use std::collections::BTreeMap;
use std::sync::Arc;

use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::SharedStore;
use kvsqlite::vfs::history::{parse_bookmark, HistoryOptions, Target};
use kvsqlite::vfs::{open_database, Database, OpenOptions, VfsError};
use sqlite_checks::assert_integrity;
use workload::{apply, content_hash, workload};

fn opts() -> OpenOptions {
    OpenOptions {
        max_atomic_bytes: 1 << 20,
        ..OpenOptions::default()
    }
}

fn seq_of(db: &Database) -> u64 {
    parse_bookmark(&db.bookmark().unwrap()).unwrap().1
}

/// Runs the seeded workload on a kvsqlite database and on a stock SQLite file; returns the
/// oracle's content hash after every transaction, by the seq kvsqlite gave it.
fn run_workload(db: &Database, n: usize) -> (BTreeMap<u64, u64>, BTreeMap<&'static str, usize>) {
    let dir = tempfile::tempdir().unwrap();
    let oracle = rusqlite::Connection::open(dir.path().join("oracle.db")).unwrap();
    let mut hashes = BTreeMap::new();
    let mut kinds = BTreeMap::new();
    let before = db.snapshot();
    for tx in workload(7, n) {
        apply(db, &tx);
        apply(&oracle, &tx);
        let h = content_hash(&oracle);
        assert_eq!(content_hash(db), h, "after a {} transaction", tx.kind);
        hashes.insert(seq_of(db), h);
        *kinds.entry(tx.kind).or_default() += 1;
    }
    let d = db.snapshot() - before;
    assert!(d.staged_commits >= 3, "{d:?}");
    assert!(d.journal_fallbacks >= 3, "{d:?}");
    (hashes, kinds)
}

#[test]
fn restoring_to_every_seq_gives_the_oracles_hash() {
    let store: SharedStore = Arc::new(MemoryStore::new());
    let db = open_database(store.clone(), "diff", &opts()).unwrap();
    let (hashes, kinds) = run_workload(&db, 220);
    assert!(kinds.len() >= 7, "{kinds:?}");
    let listed: Vec<u64> = db.history().unwrap().iter().map(|c| c.seq).collect();
    // Every transaction's end is a listed commit. The others are a VACUUM's page writes
    // before its truncation (one more write): the same content as the transaction's end.
    let ends: Vec<u64> = hashes.keys().copied().collect();
    assert!(ends.iter().all(|s| listed.contains(s)));
    assert!(listed.len() <= ends.len() + kinds["vacuum"]);
    let mut hashes = hashes;
    for &s in &listed {
        if !hashes.contains_key(&s) {
            let next = *hashes.range(s..).next().unwrap().1;
            hashes.insert(s, next);
        }
    }
    let last = seq_of(&db);
    // Newest to oldest, then back: each restore is itself a commit.
    let mut order: Vec<u64> = listed.iter().rev().copied().collect();
    order.extend(listed.iter().copied().step_by(7));
    for (n, &s) in order.iter().enumerate() {
        let out = db.restore(&Target::Seq(s)).unwrap();
        assert_eq!(out.restored_to, s);
        assert_eq!(content_hash(&db), hashes[&s], "restored to seq {s}");
        if n % 25 == 0 {
            assert_integrity(&db);
        }
    }
    // The restores are in the history too, and the last one can be undone.
    let h = db.history().unwrap();
    assert_eq!(
        h.len(),
        listed.len() + order.len() - 1,
        "restoring to the current seq writes nothing"
    );
    assert!(h.last().unwrap().restore);
    let out = db.restore(&Target::Seq(last)).unwrap();
    assert_eq!(content_hash(&db), hashes[&last]);
    db.restore(&Target::Bookmark(out.undo.clone())).unwrap();
    assert_eq!(content_hash(&db), hashes[order.last().unwrap()]);
    // A fresh open (no cache) reads the restored database.
    drop(db);
    let db = open_database(store, "diff", &opts()).unwrap();
    assert_eq!(content_hash(&db), hashes[order.last().unwrap()]);
    assert_integrity(&db);
}

#[test]
fn exact_round_trips_of_commit_history_and_restore() {
    let store: SharedStore = Arc::new(MemoryStore::new());
    let db = open_database(store.clone(), "rt", &OpenOptions::default()).unwrap();
    db.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    let b1 = db.bookmark().unwrap();
    assert_eq!(
        parse_bookmark(&b1).unwrap().1,
        2,
        "two transactions, two commits"
    );
    let s = db.snapshot();
    db.execute("INSERT INTO t VALUES (2)", []).unwrap();
    let d = db.snapshot() - s;
    assert_eq!(
        (d.kv_round_trips, d.kv_writes),
        (1, 1),
        "a commit is one put"
    );
    let s = db.snapshot();
    let h = db.history().unwrap();
    assert_eq!((db.snapshot() - s).kv_round_trips, 1, "history is one list");
    assert_eq!(h.len(), 3);
    assert_eq!(h[1].bookmark, b1);
    assert_eq!((h[0].seq, h[1].seq, h[2].seq), (1, 2, 3));
    assert_eq!(
        h[2].pages, 2,
        "the table's page and page 1 (its change counter)"
    );
    let s = db.snapshot();
    let out = db.restore(&Target::Bookmark(b1.clone())).unwrap();
    let d = db.snapshot() - s;
    assert_eq!(
        (d.kv_round_trips, d.kv_reads, d.kv_writes),
        (3, 2, 1),
        "restore: one list, one get, one put"
    );
    assert_eq!(out.pages, 2);
    let n: i64 = db
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    let s = db.snapshot();
    db.restore(&Target::Bookmark(out.bookmark.clone())).unwrap();
    assert_eq!(
        (db.snapshot() - s).kv_round_trips,
        1,
        "the current commit: one list"
    );
    db.restore(&Target::Bookmark(out.undo)).unwrap();
    let n: i64 = db
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2);
    // bookmark() costs nothing; bookmark_for_time one list.
    let s = db.snapshot();
    db.bookmark().unwrap();
    assert_eq!((db.snapshot() - s).kv_round_trips, 0);
    let t1 = parse_bookmark(&b1).unwrap().0;
    assert!(db.bookmark_for_time(t1).unwrap() >= b1);
    assert!(matches!(
        db.bookmark_for_time(t1 - 100_000),
        Err(VfsError::History(_))
    ));
    assert!(matches!(
        db.restore(&Target::Seq(999)),
        Err(VfsError::History(_))
    ));
}

#[test]
fn history_off_writes_no_history_key() {
    let store: SharedStore = Arc::new(MemoryStore::new());
    let o = OpenOptions {
        history: HistoryOptions::off(),
        ..OpenOptions::default()
    };
    let db = open_database(store.clone(), "off", &o).unwrap();
    db.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    let s = db.snapshot();
    db.execute("INSERT INTO t VALUES (2)", []).unwrap();
    let d = db.snapshot() - s;
    assert_eq!(
        (d.kv_round_trips, d.keys_written),
        (1, 3),
        "two pages and the metadata"
    );
    assert_eq!(db.history().unwrap(), vec![]);
    let keys = store
        .list("off", &kvsqlite::kv::ListRequest::prefix(vec![0x08]))
        .unwrap();
    assert!(
        keys.entries.iter().all(|(k, _)| k[1] < 0x20),
        "{:?}",
        keys.entries.len()
    );
}
