//! Exact KV round-trip counts of the VFS: commits, reads, staged commits, fallbacks.

#[path = "common/sqlite.rs"]
mod sqlite_checks;
use sqlite_checks::assert_integrity;
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

fn limited_store(max_entries: usize) -> SharedStore {
    Arc::new(MemoryStore::with_limits(KvLimits {
        max_write_entries: max_entries,
        ..KvLimits::default()
    }))
}

fn fill(db: &rusqlite::Connection, rows: usize, bytes: usize) {
    db.execute_batch("BEGIN").unwrap();
    let mut st = db.prepare("INSERT INTO t(v) VALUES (?1)").unwrap();
    for i in 0..rows {
        st.execute([format!("{i:0width$}", width = bytes)]).unwrap();
    }
    drop(st);
    db.execute_batch("COMMIT").unwrap();
}

#[test]
fn big_transaction_is_staged_within_bound_and_next_small_one_is_one_put() {
    let s = store();
    let db = open_database(s.clone(), "big", &OpenOptions::default()).unwrap();
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
        .unwrap();
    let before = db.snapshot();
    // ~8 MB: 2,000 rows of 4,000 bytes, one page each.
    db.execute_batch("BEGIN").unwrap();
    for i in 0..2000 {
        db.execute("INSERT INTO t(v) VALUES (zeroblob(4000 + ?1 % 7))", [i])
            .unwrap();
    }
    db.execute_batch("COMMIT").unwrap();
    let d = db.snapshot() - before;
    let pages: u64 = db
        .query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))
        .unwrap() as u64;
    assert!(pages >= 2000, "{pages}");
    assert_eq!(d.staged_commits, 1, "{d:?}");
    assert_eq!(d.journal_fallbacks, 0);
    assert_eq!(d.kv_reads, 0);
    // Every page of the file was written (the table grew from one page).
    assert!(
        d.kv_round_trips <= (pages - 1).div_ceil(128) + 1,
        "{} round trips for {pages} pages",
        d.kv_round_trips
    );
    let before = db.snapshot();
    db.execute("INSERT INTO t(v) VALUES (x'00')", []).unwrap();
    let d = db.snapshot() - before;
    assert_eq!(
        (d.kv_round_trips, d.kv_writes, d.atomic_commits),
        (1, 1, 1),
        "{d:?}"
    );
    // The data reads back through a fresh state (no cache) from stage keys and chunk keys.
    drop(db);
    let db = open_database(s, "big", &OpenOptions::default()).unwrap();
    let (n, sum): (i64, i64) = db
        .query_row("SELECT count(*), sum(length(v)) FROM t", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(n, 2001);
    assert_eq!(sum, (0..2000).map(|i: i64| 4000 + i % 7).sum::<i64>() + 1);
    assert_integrity(&db);
}

#[test]
fn staged_commit_under_low_limits_costs_ceil_n_over_limit_plus_one() {
    let s = limited_store(8);
    let db = open_database(s.clone(), "low", &OpenOptions::default()).unwrap();
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
        .unwrap();
    let before = db.snapshot();
    fill(&db, 100, 1000); // ~30 pages
    let d = db.snapshot() - before;
    let pages = db
        .query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))
        .unwrap() as u64;
    assert_eq!(d.staged_commits, 1, "{d:?}");
    assert!(
        d.kv_round_trips <= pages.div_ceil(8) + 1,
        "{d:?} pages {pages}"
    );
    let before = db.snapshot();
    db.execute("INSERT INTO t(v) VALUES (x'01')", []).unwrap();
    let d = db.snapshot() - before;
    assert_eq!(d.kv_round_trips, 1, "{d:?}");
}

#[test]
fn read_only_query_on_cached_pages_costs_nothing() {
    let s = store();
    let db = open_database(s, "ro", &OpenOptions::default()).unwrap();
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    fill(&db, 500, 100);
    let before = db.snapshot();
    for _ in 0..3 {
        let n: i64 = db
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 500);
    }
    let d = db.snapshot() - before;
    assert_eq!(d.kv_round_trips, 0, "{d:?}");
}

#[test]
fn cold_sequential_scan_of_100_pages_takes_at_most_three_gets() {
    let s = store();
    {
        let db = open_database(s.clone(), "scan", &OpenOptions::default()).unwrap();
        db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
            .unwrap();
        // 100 rows of ~3,900 bytes: about one leaf page each.
        fill(&db, 100, 3900);
        let pages = db
            .query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))
            .unwrap();
        assert!((100..=110).contains(&pages), "{pages}");
    }
    let db = open_database(s, "scan", &OpenOptions::default()).unwrap();
    let opened = db.snapshot();
    assert_eq!(opened.kv_round_trips, 1, "open: {opened:?}");
    let sum: i64 = db
        .query_row("SELECT sum(length(v)) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sum, 100 * 3900);
    let d = db.snapshot() - opened;
    assert!(d.kv_reads <= 3, "{d:?}");
    assert_eq!(d.kv_writes, 0);
    assert!(d.readahead_used > 90, "{d:?}");
}

#[test]
fn journal_fallback_is_counted_and_next_transaction_is_one_put() {
    let s = store();
    let db = open_database(s, "fb", &OpenOptions::default()).unwrap();
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    // A small page cache that may spill: SQLite journals this transaction.
    db.execute_batch("PRAGMA cache_spill=1; PRAGMA cache_size=10")
        .unwrap();
    let before = db.snapshot();
    fill(&db, 2000, 100);
    let d = db.snapshot() - before;
    assert_eq!(d.journal_fallbacks, 1, "{d:?}");
    assert_eq!(d.atomic_commits, 0, "{d:?}");
    db.execute_batch("PRAGMA cache_spill=OFF; PRAGMA cache_size=-8192")
        .unwrap();
    let before = db.snapshot();
    db.execute("INSERT INTO t(v) VALUES ('after')", []).unwrap();
    let d = db.snapshot() - before;
    assert_eq!(
        (d.kv_round_trips, d.kv_writes, d.atomic_commits),
        (1, 1, 1),
        "{d:?}"
    );
    let n: i64 = db
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2001);
    assert_integrity(&db);
}

#[test]
fn new_database_first_transaction_is_one_put() {
    let s = store();
    let db = open_database(s, "fresh", &OpenOptions::default()).unwrap();
    let opened = db.snapshot();
    assert_eq!(opened.kv_round_trips, 1); // the metadata probe: nothing there
    db.execute_batch("CREATE TABLE t(x)").unwrap();
    let d = db.snapshot() - opened;
    assert_eq!(
        (d.kv_round_trips, d.kv_writes, d.journal_fallbacks),
        (1, 1, 0),
        "{d:?}"
    );
}

#[test]
fn page_size_pragma_before_the_first_write_costs_nothing_and_the_first_commit_one_put() {
    for ps in [512u32, 8192, 65536] {
        let actor = format!("pragma-ps-{ps}");
        let m = Arc::new(MemoryStore::new());
        let db = open_database(m.clone(), &actor, &OpenOptions::default()).unwrap();
        let opened = db.snapshot();
        db.execute_batch(&format!("PRAGMA page_size = {ps}"))
            .unwrap();
        assert_eq!((db.snapshot() - opened).kv_round_trips, 0);
        assert!(
            m.dump().is_empty(),
            "nothing is written before the first commit"
        );
        db.execute_batch("CREATE TABLE t(x)").unwrap();
        let d = db.snapshot() - opened;
        assert_eq!(
            (d.kv_round_trips, d.kv_writes, d.kv_reads, d.atomic_commits),
            (1, 1, 0, 1),
            "the first transaction after the pragma is one put: {d:?}"
        );
        assert_eq!(d.journal_fallbacks, 0);
        let stored = m.dump();
        assert_eq!(
            stored.len(),
            3,
            "metadata, page 1 (schema) and page 2 (the table)"
        );
        assert!(stored[1..].iter().all(|(_, _, v)| v.len() == ps as usize));
        let before = db.snapshot();
        db.execute("INSERT INTO t VALUES (zeroblob(100))", [])
            .unwrap();
        let d = db.snapshot() - before;
        assert_eq!(
            (d.kv_round_trips, d.kv_writes, d.kv_reads),
            (1, 1, 0),
            "{d:?}"
        );
        assert_eq!(db.page_size(), ps);
        let got: i64 = db.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
        assert_eq!(got, ps as i64);
    }
}

#[test]
fn build_has_batch_atomic_writes_and_commits_take_the_atomic_path() {
    assert!(vfs::batch_atomic_compiled());
    let db = open_database(store(), "build", &OpenOptions::default()).unwrap();
    db.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1); INSERT INTO t VALUES (2);")
        .unwrap();
    let s = db.snapshot();
    assert_eq!(
        (s.atomic_commits, s.journal_fallbacks, s.flushes),
        (3, 0, 0),
        "{s:?}"
    );
}

#[test]
fn transaction_over_the_memory_bound_falls_back_to_the_journal_and_commits() {
    let s = store();
    let opts = OpenOptions {
        max_atomic_bytes: 64 * 4096,
        ..OpenOptions::default()
    };
    let db = open_database(s.clone(), "bound", &opts).unwrap();
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
        .unwrap();
    let before = db.snapshot();
    db.execute_batch("BEGIN").unwrap();
    for _ in 0..200 {
        db.execute("INSERT INTO t(v) VALUES (zeroblob(3000))", [])
            .unwrap();
    }
    db.execute_batch("COMMIT").unwrap();
    let d = db.snapshot() - before;
    assert_eq!(
        (d.atomic_commits, d.staged_commits, d.journal_fallbacks),
        (0, 0, 1),
        "{d:?}"
    );
    let before = db.snapshot();
    db.execute("INSERT INTO t(v) VALUES (x'01')", []).unwrap();
    assert_eq!((db.snapshot() - before).kv_round_trips, 1);
    drop(db);
    let db = open_database(s, "bound", &OpenOptions::default()).unwrap();
    let n: i64 = db
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 201);
    assert_integrity(&db);
}

#[test]
fn rewritten_stage_pages_are_collected_inside_later_commits() {
    let m = Arc::new(MemoryStore::with_limits(KvLimits {
        max_write_entries: 8,
        ..KvLimits::default()
    }));
    let s: SharedStore = m.clone();
    let db = open_database(s, "gc", &OpenOptions::default()).unwrap();
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
        .unwrap();
    db.execute_batch("BEGIN").unwrap();
    for _ in 0..100 {
        db.execute("INSERT INTO t(v) VALUES (zeroblob(1000))", [])
            .unwrap();
    }
    db.execute_batch("COMMIT").unwrap();
    assert_eq!(db.snapshot().staged_commits, 1);
    let summary = || {
        let entries: Vec<(Vec<u8>, Vec<u8>)> = m
            .dump()
            .into_iter()
            .filter(|(a, _, _)| a == "gc")
            .map(|(_, k, v)| (k, v))
            .collect();
        vfs::layout::summarize(&entries)
    };
    let s1 = summary();
    let meta = s1.files[0].meta.clone().unwrap().unwrap();
    assert!(meta.overlay.len() >= 20, "{}", meta.overlay.len());
    assert_eq!(s1.stages.values().sum::<u64>(), meta.overlay.len() as u64);
    assert_eq!(s1.files[0].missing_chunks, 0);
    // Rewrite every row, one small transaction each: every one is a single put.
    let before = db.snapshot();
    for id in 1..=100 {
        db.execute("UPDATE t SET v = zeroblob(999) WHERE id = ?1", [id])
            .unwrap();
    }
    let d = db.snapshot() - before;
    assert_eq!((d.kv_round_trips, d.atomic_commits), (100, 100), "{d:?}");
    let s2 = summary();
    let meta = s2.files[0].meta.clone().unwrap().unwrap();
    // Only pages the updates never touched (the table's interior page) stay in the stage, and
    // every other stage key was deleted: no garbage left.
    assert!(meta.overlay.len() <= 2, "{:?}", meta.overlay);
    assert_eq!(s2.stages.values().sum::<u64>(), meta.overlay.len() as u64);
    assert_eq!(s2.files[0].missing_chunks, 0);
    let n: i64 = db
        .query_row("SELECT sum(length(v)) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 99_900);
}

#[test]
fn queued_entries_ride_in_the_commit_put_and_fencing_blocks_stale_writers() {
    use kvsqlite::kv::{KvStore, Precondition};
    let m = Arc::new(MemoryStore::new());
    let s: SharedStore = m.clone();
    m.put("fenced", vec![(b"gen".to_vec(), b"1".to_vec())])
        .unwrap();
    let db = open_database(s, "fenced", &OpenOptions::default()).unwrap();
    db.set_fence(vec![Precondition::equals(b"gen".to_vec(), b"1".to_vec())]);
    assert!(db.queue_puts(vec![(vec![0x08, 9], vec![])]).is_err());
    db.queue_puts(vec![(b"state".to_vec(), b"hello".to_vec())])
        .unwrap();
    let before = db.snapshot();
    db.execute_batch("BEGIN; CREATE TABLE t(x); INSERT INTO t VALUES (1); COMMIT;")
        .unwrap();
    let d = db.snapshot() - before;
    assert_eq!(d.kv_round_trips, 1, "{d:?}");
    assert_eq!(db.queued_puts(), 0);
    assert_eq!(
        m.get("fenced", &[b"state".to_vec()]).unwrap(),
        vec![Some(b"hello".to_vec())]
    );
    // Journal fallbacks and shrinking VACUUMs work under the fence too (fenced deletes).
    db.execute_batch("PRAGMA cache_spill=1; PRAGMA cache_size=5")
        .unwrap();
    db.execute_batch(
        "BEGIN; INSERT INTO t WITH RECURSIVE s(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM s WHERE v < 400) SELECT zeroblob(1000) FROM s; COMMIT;",
    )
    .unwrap();
    db.execute_batch("DELETE FROM t WHERE rowid > 2; VACUUM;")
        .unwrap();
    assert!(db.snapshot().journal_fallbacks >= 1);
    assert!(m
        .dump()
        .iter()
        .all(|(_, k, _)| !k.starts_with(&[0x08, 0x01])));
    let n: i64 = db
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2);
    // Another instance moved the generation on: this one can no longer write.
    m.put("fenced", vec![(b"gen".to_vec(), b"2".to_vec())])
        .unwrap();
    let snapshot = m.dump();
    assert!(db.execute("INSERT INTO t VALUES (2)", []).is_err());
    assert_eq!(m.dump(), snapshot, "a fenced-out writer changed the store");
}

#[test]
fn warm_commit_stays_one_put_when_a_scan_churned_a_tiny_vfs_cache() {
    let s = store();
    let opts = OpenOptions {
        cache_pages: 4,
        ..OpenOptions::default()
    };
    {
        let db = open_database(s.clone(), "churn", &OpenOptions::default()).unwrap();
        db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
            .unwrap();
        fill(&db, 100, 3900);
    }
    let db = open_database(s, "churn", &opts).unwrap();
    let n: i64 = db
        .query_row("SELECT count(*) FROM t WHERE length(v) = 3900", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(n, 100);
    db.execute("INSERT INTO t(v) VALUES ('x')", []).unwrap();
    let before = db.snapshot();
    db.execute("INSERT INTO t(v) VALUES ('y')", []).unwrap();
    let d = db.snapshot() - before;
    assert_eq!((d.kv_round_trips, d.kv_reads), (1, 0), "{d:?}");
}

#[test]
fn new_actor_with_preload_costs_one_read_and_one_write_in_total() {
    use kvsqlite::kv::KvStore;
    use kvsqlite::preload::Preload;
    let m = Arc::new(MemoryStore::new());
    let s: SharedStore = m.clone();
    // The actor layer's single wake read (here: just the VFS's part of it).
    let ops = vfs::layout::preload_reads(1 << 20);
    let results = m.batch_read("newbie", &ops).unwrap();
    let opts = OpenOptions {
        preload: Some(Preload::from_reads(&ops, &results)),
        ..OpenOptions::default()
    };
    let db = open_database(s, "newbie", &opts).unwrap();
    assert_eq!(db.snapshot().kv_round_trips, 0);
    db.queue_puts(vec![(b"actor-state".to_vec(), b"v1".to_vec())])
        .unwrap();
    db.execute_batch(
        "BEGIN; CREATE TABLE a(x); CREATE TABLE b(y); CREATE INDEX bi ON b(y); INSERT INTO a VALUES (1); COMMIT;",
    )
    .unwrap();
    let s = db.snapshot();
    assert_eq!(
        (s.kv_round_trips, s.kv_writes, s.kv_reads),
        (1, 1, 0),
        "{s:?}"
    );
    assert_eq!(
        m.get("newbie", &[b"actor-state".to_vec()]).unwrap(),
        vec![Some(b"v1".to_vec())]
    );
}
