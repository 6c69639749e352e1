//! Exact KV round-trip counts of the VFS: commits, reads, staged commits, fallbacks. Every
//! store sits under a `CountingStore`, and every count taken from the VFS's own counters
//! (`Meter::stop`) must equal what the store saw.

#[path = "common/sqlite.rs"]
mod sqlite_checks;
use sqlite_checks::assert_integrity;
use std::sync::Arc;

use kvsqlite::kv::counting::{CountingStore, KvCounters, OpKind};
use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::{KvLimits, SharedStore};
use kvsqlite::vfs::{self, open_database, Database, OpenOptions, Snapshot};

thread_local! {
    /// The counting store of the test running on this thread (each test makes its own).
    static COUNTER: std::cell::RefCell<Option<Arc<CountingStore>>> = const { std::cell::RefCell::new(None) };
}

/// `inner` under a `CountingStore` that [`Meter`] reads.
fn counted(inner: SharedStore) -> SharedStore {
    let c = CountingStore::wrap(inner);
    COUNTER.with(|x| *x.borrow_mut() = Some(c.clone()));
    c.shared()
}

fn store() -> SharedStore {
    counted(Arc::new(MemoryStore::new()))
}

/// Round trips measured twice: by the VFS's counters and by the store's.
struct Meter {
    db: Snapshot,
    kv: KvCounters,
}

impl Meter {
    /// Before a database is opened on the counted store: `stop` then includes the open.
    fn before_open() -> Meter {
        Meter {
            db: Snapshot::default(),
            kv: COUNTER.with(|c| c.borrow().as_ref().expect("a counted store").snapshot()),
        }
    }

    fn start(db: &Database) -> Meter {
        Meter {
            db: db.snapshot(),
            kv: COUNTER.with(|c| c.borrow().as_ref().expect("a counted store").snapshot()),
        }
    }

    /// The VFS's counters since `start`, after checking that they equal the store's.
    fn stop(&self, db: &Database) -> Snapshot {
        let d = db.snapshot() - self.db;
        let kv =
            COUNTER.with(|c| c.borrow().as_ref().expect("a counted store").snapshot()) - self.kv;
        let calls = |kinds: &[OpKind]| kinds.iter().map(|&k| kv.op(k).calls).sum::<u64>();
        assert_eq!(
            kv.round_trips(),
            d.kv_round_trips,
            "store {kv} vs VFS {d:?}"
        );
        assert_eq!(
            calls(&[OpKind::Get, OpKind::List, OpKind::BatchRead]),
            d.kv_reads,
            "store {kv} vs VFS {d:?}"
        );
        assert_eq!(
            calls(&[OpKind::Write, OpKind::DeleteRange]),
            d.kv_writes,
            "store {kv} vs VFS {d:?}"
        );
        d
    }
}

/// One transaction of ten 1-row `INSERT`s into `t(id, v)`.
fn insert_ten_rows(db: &rusqlite::Connection) {
    db.execute_batch("BEGIN").unwrap();
    for i in 0..10 {
        db.execute("INSERT INTO t(v) VALUES (?1)", [format!("row {i}")])
            .unwrap();
    }
    db.execute_batch("COMMIT").unwrap();
}

#[test]
fn warm_ten_row_insert_is_one_put_and_no_get() {
    let s = store();
    let db = open_database(s.clone(), "a1", &OpenOptions::default()).unwrap();
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    db.execute("INSERT INTO t(v) VALUES ('warm')", []).unwrap();
    let before = Meter::start(&db);
    insert_ten_rows(&db);
    let d = before.stop(&db);
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
    counted(Arc::new(MemoryStore::with_limits(KvLimits {
        max_write_entries: max_entries,
        ..KvLimits::default()
    })))
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
fn big_8mb_transaction_costs_16_round_trips_and_next_small_one_is_one_put() {
    let s = store();
    let db = open_database(s.clone(), "big", &OpenOptions::default()).unwrap();
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
        .unwrap();
    let before = Meter::start(&db);
    // ~8 MB: 2,000 rows of 4,000 bytes, one page each.
    db.execute_batch("BEGIN").unwrap();
    for i in 0..2000 {
        db.execute("INSERT INTO t(v) VALUES (zeroblob(4000 + ?1 % 7))", [i])
            .unwrap();
    }
    db.execute_batch("COMMIT").unwrap();
    let d = before.stop(&db);
    let pages: u64 = db
        .query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))
        .unwrap() as u64;
    assert!(pages >= 2000, "{pages}");
    assert_eq!(d.staged_commits, 1, "{d:?}");
    assert_eq!(d.journal_fallbacks, 0);
    assert_eq!(d.kv_reads, 0);
    // Every page of the file was written (page 1 for its change counter), 128 entries to a
    // put, the commit record riding in the last: ⌈(N + 1)/128⌉ = 16 for 2,007 pages, as the
    // README says. With history on (the default) each page image goes once more into the
    // commit's redo record, LZ4-compressed: these pages are mostly zeros, so the record is a
    // few parts riding in the same puts (incompressible pages make the puts full by bytes
    // instead: ⌈bytes / 976 KiB⌉ + 1).
    assert_eq!((pages, d.pages_written), (2007, 2007), "{d:?}");
    assert_eq!(d.kv_round_trips, 16, "{d:?}");
    assert_eq!(d.kv_round_trips, (pages + 1).div_ceil(128));
    assert_eq!(d.history_image_bytes, 2007 * 4096);
    assert!(d.history_stored_bytes * 50 < d.history_image_bytes, "{d:?}");
    let before = Meter::start(&db);
    db.execute("INSERT INTO t(v) VALUES (x'00')", []).unwrap();
    let d = before.stop(&db);
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
fn big_8mb_transaction_with_history_off_costs_16_round_trips() {
    let opts = OpenOptions {
        history: kvsqlite::vfs::history::HistoryOptions::off(),
        ..OpenOptions::default()
    };
    let db = open_database(store(), "big-off", &opts).unwrap();
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
        .unwrap();
    let before = Meter::start(&db);
    db.execute_batch("BEGIN").unwrap();
    for i in 0..2000 {
        db.execute("INSERT INTO t(v) VALUES (zeroblob(4000 + ?1 % 7))", [i])
            .unwrap();
    }
    db.execute_batch("COMMIT").unwrap();
    let d = before.stop(&db);
    // 128 pages to a put, the commit record riding in the last: ⌈(N + 1)/128⌉ for 2,007 pages.
    assert_eq!((d.pages_written, d.kv_round_trips), (2007, 16), "{d:?}");
}

#[test]
fn staged_commit_under_low_limits_costs_ceil_n_plus_one_over_limit() {
    let s = limited_store(8);
    let db = open_database(s.clone(), "low", &OpenOptions::default()).unwrap();
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
        .unwrap();
    let before = Meter::start(&db);
    fill(&db, 100, 1000); // ~30 pages
    let d = before.stop(&db);
    let pages = db
        .query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))
        .unwrap() as u64;
    assert_eq!(d.staged_commits, 1, "{d:?}");
    // Every page was written, 8 to a put, the commit record riding in the last put.
    assert_eq!(d.pages_written, pages, "{d:?}");
    assert_eq!(
        d.kv_round_trips,
        (pages + 1).div_ceil(8),
        "{d:?} pages {pages}"
    );
    let before = Meter::start(&db);
    db.execute("INSERT INTO t(v) VALUES (x'01')", []).unwrap();
    let d = before.stop(&db);
    assert_eq!(d.kv_round_trips, 1, "{d:?}");
}

#[test]
fn read_only_query_on_cached_pages_costs_nothing() {
    let s = store();
    let db = open_database(s, "ro", &OpenOptions::default()).unwrap();
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    fill(&db, 500, 100);
    let before = Meter::start(&db);
    for _ in 0..3 {
        let n: i64 = db
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 500);
    }
    let d = before.stop(&db);
    assert_eq!(d.kv_round_trips, 0, "{d:?}");
}

#[test]
fn cold_sequential_scan_of_100_pages_takes_exactly_two_gets() {
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
    let open = Meter::before_open();
    let db = open_database(s, "scan", &OpenOptions::default()).unwrap();
    let o = open.stop(&db);
    assert_eq!(o.kv_round_trips, 1, "open: {o:?}");
    let opened = Meter::start(&db);
    let sum: i64 = db
        .query_row("SELECT sum(length(v)) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sum, 100 * 3900);
    let d = opened.stop(&db);
    // The open fetched chunks 0-3; the first miss (chunk 4) continues that run, so its window
    // grows to 32 (chunks 4-35), and the next miss (36) to 128: the rest of the table.
    assert_eq!(d.kv_reads, 2, "{d:?}");
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
    let before = Meter::start(&db);
    fill(&db, 2000, 100);
    let d = before.stop(&db);
    assert_eq!(d.journal_fallbacks, 1, "{d:?}");
    assert_eq!(d.atomic_commits, 0, "{d:?}");
    db.execute_batch("PRAGMA cache_spill=OFF; PRAGMA cache_size=-8192")
        .unwrap();
    let before = Meter::start(&db);
    db.execute("INSERT INTO t(v) VALUES ('after')", []).unwrap();
    let d = before.stop(&db);
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
    let open = Meter::before_open();
    let db = open_database(s, "fresh", &OpenOptions::default()).unwrap();
    assert_eq!(open.stop(&db).kv_round_trips, 1); // the metadata probe: nothing there
    let opened = Meter::start(&db);
    db.execute_batch("CREATE TABLE t(x)").unwrap();
    let d = opened.stop(&db);
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
        let db = open_database(counted(m.clone()), &actor, &OpenOptions::default()).unwrap();
        let opened = Meter::start(&db);
        db.execute_batch(&format!("PRAGMA page_size = {ps}"))
            .unwrap();
        assert_eq!(opened.stop(&db).kv_round_trips, 0);
        assert!(
            m.dump().is_empty(),
            "nothing is written before the first commit"
        );
        db.execute_batch("CREATE TABLE t(x)").unwrap();
        let d = opened.stop(&db);
        assert_eq!(
            (d.kv_round_trips, d.kv_writes, d.kv_reads, d.atomic_commits),
            (1, 1, 0, 1),
            "the first transaction after the pragma is one put: {d:?}"
        );
        assert_eq!(d.journal_fallbacks, 0);
        let stored = m.dump();
        // The two pages' images are compressed into one history part, even at 64 KiB.
        assert_eq!(
            stored.len(),
            5,
            "metadata, page 1 (schema), page 2 (the table), the history header and part"
        );
        assert!(stored[1..3]
            .iter()
            .all(|(_, _, v)| kvsqlite::vfs::codec::decode(v, ps as usize).is_ok()));
        let before = Meter::start(&db);
        db.execute("INSERT INTO t VALUES (zeroblob(100))", [])
            .unwrap();
        let d = before.stop(&db);
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
    let before = Meter::start(&db);
    db.execute_batch("BEGIN").unwrap();
    for _ in 0..200 {
        db.execute("INSERT INTO t(v) VALUES (zeroblob(3000))", [])
            .unwrap();
    }
    db.execute_batch("COMMIT").unwrap();
    let d = before.stop(&db);
    assert_eq!(
        (d.atomic_commits, d.staged_commits, d.journal_fallbacks),
        (0, 0, 1),
        "{d:?}"
    );
    let before = Meter::start(&db);
    db.execute("INSERT INTO t(v) VALUES (x'01')", []).unwrap();
    assert_eq!(before.stop(&db).kv_round_trips, 1);
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
    let s: SharedStore = counted(m.clone());
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
    let before = Meter::start(&db);
    for id in 1..=100 {
        db.execute("UPDATE t SET v = zeroblob(999) WHERE id = ?1", [id])
            .unwrap();
    }
    let d = before.stop(&db);
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
    let s: SharedStore = counted(m.clone());
    m.put("fenced", vec![(b"gen".to_vec(), b"1".to_vec())])
        .unwrap();
    let db = open_database(s, "fenced", &OpenOptions::default()).unwrap();
    db.set_fence(vec![Precondition::equals(b"gen".to_vec(), b"1".to_vec())]);
    let err = db.queue_puts(vec![(vec![0x08, 9], vec![])]).unwrap_err();
    assert_eq!(err, "key 0x0809 lies under the VFS prefix 0x08");
    db.queue_puts(vec![(b"state".to_vec(), b"hello".to_vec())])
        .unwrap();
    let before = Meter::start(&db);
    db.execute_batch("BEGIN; CREATE TABLE t(x); INSERT INTO t VALUES (1); COMMIT;")
        .unwrap();
    let d = before.stop(&db);
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
    let writes = || COUNTER.with(|c| c.borrow().as_ref().unwrap().snapshot().op(OpKind::Write));
    let before = writes();
    let err = db.execute("INSERT INTO t VALUES (2)", []).unwrap_err();
    // Every put it tried (the commit, then SQLite's retry through its journal) failed at the
    // store on its fence precondition, as a direct write with that precondition shows, and
    // SQLite reports the failed sync.
    let tried = writes() - before;
    assert!(tried.calls >= 1 && tried.errors == tried.calls, "{tried:?}");
    let fenced = kvsqlite::kv::WriteBatch {
        preconditions: vec![Precondition::equals(b"gen".to_vec(), b"1".to_vec())],
        ..kvsqlite::kv::WriteBatch::puts(vec![(b"x".to_vec(), vec![])])
    };
    assert!(matches!(
        m.write("fenced", &fenced),
        Err(kvsqlite::kv::KvError::Conflict { .. })
    ));
    match &err {
        rusqlite::Error::SqliteFailure(f, _) => {
            assert_eq!(
                f.extended_code,
                rusqlite::ffi::SQLITE_IOERR_FSYNC,
                "{err:?}"
            )
        }
        other => panic!("{other:?}"),
    }
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
    let before = Meter::start(&db);
    db.execute("INSERT INTO t(v) VALUES ('y')", []).unwrap();
    let d = before.stop(&db);
    assert_eq!((d.kv_round_trips, d.kv_reads), (1, 0), "{d:?}");
}

#[test]
fn new_actor_with_preload_costs_one_read_and_one_write_in_total() {
    use kvsqlite::kv::KvStore;
    use kvsqlite::preload::Preload;
    let m = Arc::new(MemoryStore::new());
    let s: SharedStore = counted(m.clone());
    let open = Meter::before_open();
    // The actor layer's single wake read (here: just the VFS's part of it).
    let ops = vfs::layout::preload_reads(1 << 20);
    let results = m.batch_read("newbie", &ops).unwrap();
    let opts = OpenOptions {
        preload: Some(Preload::from_reads(&ops, &results)),
        ..OpenOptions::default()
    };
    let db = open_database(s, "newbie", &opts).unwrap();
    assert_eq!(open.stop(&db).kv_round_trips, 0);
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

#[test]
fn batch_atomic_off_journals_every_transaction_and_the_data_survives_a_reopen() {
    let s = store();
    let opts = OpenOptions {
        batch_atomic: false,
        ..OpenOptions::default()
    };
    {
        let db = open_database(s.clone(), "nj", &opts).unwrap();
        db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
            .unwrap();
        db.execute("INSERT INTO t(v) VALUES ('warm')", []).unwrap();
        let before = Meter::start(&db);
        insert_ten_rows(&db);
        let d = before.stop(&db);
        // Journal written, synced, main pages written, journal deleted: never the one put.
        assert_eq!(d.atomic_commits, 0, "{d:?}");
        assert_eq!(d.journal_fallbacks, 1, "{d:?}");
        assert!(d.kv_round_trips > 1, "{d:?}");
        assert_integrity(&db);
    }
    // Reopened with the default (batch-atomic on): same rows, and commits are one put again.
    let db = open_database(s, "nj", &OpenOptions::default()).unwrap();
    let n: i64 = db
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 11);
    let before = Meter::start(&db);
    db.execute("INSERT INTO t(v) VALUES ('after')", []).unwrap();
    let d = before.stop(&db);
    assert_eq!((d.kv_round_trips, d.atomic_commits), (1, 1), "{d:?}");
}
