//! Exact KV round-trip counts of the B-tree-aware page cache (issue 20, items 3 and 4):
//!
//! - a warm point lookup, by rowid and by index, costs at most one round trip on a database
//!   whose leaves far exceed the VFS cache, even right after full scans that pushed every leaf
//!   through the cache (the interior pages stay), and reads nothing ahead;
//! - after a transaction bigger than the page cache (20,000 rows of 100, 400 and 4,000 bytes in
//!   one transaction), the next 1-row `INSERT` costs exactly one round trip (its put, no read),
//!   on the bare VFS (`open_database`) and through an actor;
//! - the pages a sleeping actor hints for its next wake list the interior pages first.
//!
//! Every count is taken twice, by the VFS (`Database::snapshot()`) and by a `CountingStore`
//! around the store, and the two must agree.

use std::sync::Arc;

use kvsqlite::actor::{Actor, ActorConfig, Migration};
use kvsqlite::kv::counting::CountingStore;
use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::SharedStore;
use kvsqlite::rng::Rng;
use kvsqlite::vfs::{open_database, Database, OpenOptions, Snapshot};

/// Rows of the lookup table.
const ROWS: i64 = 20_000;

fn counted() -> (Arc<CountingStore>, SharedStore) {
    let c = CountingStore::wrap(Arc::new(MemoryStore::new()));
    let s = c.shared();
    (c, s)
}

/// Runs `f` and returns what it cost, after checking that the VFS's round trips equal the
/// store's.
fn measure<T>(db: &Database, c: &CountingStore, f: impl FnOnce() -> T) -> (T, Snapshot) {
    let (d0, k0) = (db.snapshot(), c.snapshot());
    let out = f();
    let d = db.snapshot() - d0;
    let kv = c.snapshot() - k0;
    assert_eq!(
        kv.round_trips(),
        d.kv_round_trips,
        "store {kv} vs VFS {d:?}"
    );
    (out, d)
}

/// The counts of a series of lookups.
#[derive(Debug, Default)]
struct Sum {
    round_trips: u64,
    keys_read: u64,
    prefetched: u64,
    writes: u64,
}

impl Sum {
    fn add(&mut self, d: &Snapshot) {
        self.round_trips += d.kv_round_trips;
        self.keys_read += d.keys_read;
        self.prefetched += d.readahead_prefetched;
        self.writes += d.kv_writes;
    }
}

/// The text key of row `i` of the lookup table: 40 bytes, so the index has hundreds of leaves.
fn key_of(i: i64) -> String {
    format!("key-{:036}", i.wrapping_mul(2_654_435_761) % 1_000_003)
}

#[test]
fn warm_point_lookups_by_rowid_and_by_index_cost_at_most_one_round_trip() {
    let (c, s) = counted();
    {
        let db = open_database(s.clone(), "lookups", &OpenOptions::default()).unwrap();
        db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT NOT NULL, v BLOB)")
            .unwrap();
        db.execute_batch("BEGIN").unwrap();
        let mut st = db
            .prepare("INSERT INTO t(id, k, v) VALUES (?1, ?2, zeroblob(300))")
            .unwrap();
        for i in 1..=ROWS {
            st.execute(rusqlite::params![i, key_of(i)]).unwrap();
        }
        drop(st);
        db.execute_batch("CREATE UNIQUE INDEX t_k ON t(k); COMMIT")
            .unwrap();
    }
    // A VFS cache of 128 pages and SQLite's own of 10: every leaf read goes to the VFS.
    let opts = OpenOptions {
        cache_pages: 128,
        sqlite_cache_kib: 40,
        ..OpenOptions::default()
    };
    let db = open_database(s, "lookups", &opts).unwrap();
    let pages: i64 = db.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
    assert!(
        pages > 10 * 128,
        "{pages} pages: the leaves must exceed the cache"
    );
    // Warm: walk both trees once (a full scan of the table, then of the index). Each pushes
    // every leaf through the cache; the interior pages must stay.
    let (n, d) = measure(&db, &c, || {
        db.query_row("SELECT count(*), sum(length(v)) FROM t", [], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })
        .unwrap()
    });
    assert_eq!(n, (ROWS, ROWS * 300));
    assert!(d.kv_round_trips > 0, "{d:?}");
    let (n, _) = measure(&db, &c, || {
        db.query_row(
            "SELECT count(*) FROM t INDEXED BY t_k WHERE k >= ''",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
    });
    assert_eq!(n, ROWS);
    // Another full table scan: under plain LRU it would evict the index's interior pages.
    db.query_row("SELECT sum(length(v)) FROM t", [], |r| r.get::<_, i64>(0))
        .unwrap();

    let mut rng = Rng::new(20);
    let mut by_rowid = Sum::default();
    let mut by_index = Sum::default();
    let mut full_rows = Sum::default();
    for _ in 0..300 {
        let id = 1 + (rng.next_u64() % ROWS as u64) as i64;
        let (len, d) = measure(&db, &c, || {
            db.query_row("SELECT length(v) FROM t WHERE id = ?1", [id], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap()
        });
        assert_eq!(len, 300);
        assert!(d.kv_round_trips <= 1, "lookup of rowid {id}: {d:?}");
        by_rowid.add(&d);

        let id = 1 + (rng.next_u64() % ROWS as u64) as i64;
        let (found, d) = measure(&db, &c, || {
            db.query_row("SELECT id FROM t WHERE k = ?1", [key_of(id)], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap()
        });
        assert_eq!(found, id);
        assert!(d.kv_round_trips <= 1, "lookup of key {}: {d:?}", key_of(id));
        by_index.add(&d);

        // A lookup by index that needs the row too walks two trees: at most one leaf each.
        let id = 1 + (rng.next_u64() % ROWS as u64) as i64;
        let (row, d) = measure(&db, &c, || {
            db.query_row(
                "SELECT id, length(v) FROM t WHERE k = ?1",
                [key_of(id)],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
            )
            .unwrap()
        });
        assert_eq!(row, (id, 300));
        assert!(d.kv_round_trips <= 2, "row of key {}: {d:?}", key_of(id));
        full_rows.add(&d);
    }
    // Most lookups missed their leaf (the cache holds a few percent of them; those that need
    // the row too missed two), and no lookup read anything ahead: one key per round trip.
    assert!(by_rowid.round_trips > 200, "{by_rowid:?}");
    assert!(by_index.round_trips > 200, "{by_index:?}");
    assert!(full_rows.round_trips > 400, "{full_rows:?}");
    for d in [&by_rowid, &by_index, &full_rows] {
        assert_eq!(d.prefetched, 0, "{d:?}");
        assert_eq!(d.keys_read, d.round_trips, "{d:?}");
        assert_eq!(d.writes, 0, "{d:?}");
    }
}

/// One transaction of 20,000 rows of `bytes` bytes into `t(id, v)`.
fn big_insert(db: &rusqlite::Connection, bytes: usize) {
    db.execute_batch("BEGIN").unwrap();
    let mut st = db
        .prepare("INSERT INTO t(v) VALUES (zeroblob(?1))")
        .unwrap();
    for _ in 0..ROWS {
        st.execute([bytes as i64]).unwrap();
    }
    drop(st);
    db.execute_batch("COMMIT").unwrap();
}

#[test]
fn after_a_commit_bigger_than_the_cache_a_one_row_insert_is_one_round_trip_bare_vfs() {
    for bytes in [100, 400, 4000] {
        let (c, s) = counted();
        let db = open_database(s, "big", &OpenOptions::default()).unwrap();
        db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
            .unwrap();
        let (_, d) = measure(&db, &c, || big_insert(&db, bytes));
        assert_eq!(d.journal_fallbacks, 0, "{bytes} B: {d:?}");
        assert_eq!(d.kv_reads, 0, "{bytes} B: {d:?}");
        if bytes >= 400 {
            // Bigger than the 2,048-page cache: a staged commit.
            assert!(d.pages_written > 2048, "{bytes} B: {d:?}");
            assert_eq!(d.staged_commits, 1, "{bytes} B: {d:?}");
        }
        let (_, d) = measure(&db, &c, || {
            db.execute("INSERT INTO t(v) VALUES (x'01')", []).unwrap()
        });
        assert_eq!(
            (d.kv_round_trips, d.kv_reads, d.kv_writes, d.atomic_commits),
            (1, 0, 1, 1),
            "{bytes} B: {d:?}"
        );
        let n: i64 = db
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, ROWS + 1);
    }
}

#[test]
fn after_a_commit_bigger_than_the_cache_a_one_row_insert_is_one_round_trip_in_an_actor() {
    for bytes in [100, 400, 4000] {
        let (c, s) = counted();
        let config = ActorConfig::default().with_migrations(vec![Migration::new(
            "0001_t.sql",
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);",
        )
        .unwrap()]);
        let actor = Actor::start(s, "big", &config).unwrap();
        let db = actor.db();
        let (_, d) = measure(db, &c, || big_insert(db, bytes));
        assert_eq!(
            (d.journal_fallbacks, d.kv_reads),
            (0, 0),
            "{bytes} B: {d:?}"
        );
        let before = actor.kv_round_trips();
        let (_, d) = measure(db, &c, || {
            db.execute("INSERT INTO t(v) VALUES (x'01')", []).unwrap()
        });
        assert_eq!(
            (d.kv_round_trips, d.kv_reads, d.kv_writes, d.atomic_commits),
            (1, 0, 1, 1),
            "{bytes} B: {d:?}"
        );
        assert_eq!(actor.kv_round_trips() - before, 1);
        let n: i64 = db
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, ROWS + 1);
        actor.sleep().unwrap();
    }
}

#[test]
fn the_read_log_behind_sleep_hints_lists_interior_pages_first() {
    let (_c, s) = counted();
    let db = open_database(s, "hints", &OpenOptions::default()).unwrap();
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
        .unwrap();
    big_insert(&db, 400);
    db.track_reads(true);
    // A second connection has an empty SQLite cache: its reads reach the VFS (and its cache).
    let conn = rusqlite::Connection::open_with_flags_and_vfs(
        db.path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        kvsqlite::vfs::VFS_NAME,
    )
    .unwrap();
    for id in [17, 9_000, 123, 19_999, 4_321] {
        let len: i64 = conn
            .query_row("SELECT length(v) FROM t WHERE id = ?1", [id], |r| r.get(0))
            .unwrap();
        assert_eq!(len, 400);
    }
    let reads = db.recent_reads();
    let interior = |i: u32| {
        let p = db.read_page(i).unwrap();
        matches!(p[if i == 0 { 100 } else { 0 }], 2 | 5)
    };
    let kinds: Vec<bool> = reads.iter().map(|&i| interior(i)).collect();
    // The root and the interior pages above the five leaves, then the five leaves and page 1.
    let n_interior = kinds.iter().filter(|&&k| k).count();
    assert!(n_interior >= 2, "{reads:?} {kinds:?}");
    assert!(
        kinds[..n_interior].iter().all(|&k| k),
        "{reads:?} {kinds:?}"
    );
    assert!(
        kinds[n_interior..].iter().all(|&k| !k),
        "{reads:?} {kinds:?}"
    );
    assert_eq!(reads.len() - n_interior, 6, "{reads:?} {kinds:?}");
}

#[test]
fn an_actor_s_sleep_hints_list_the_interior_pages_it_read_first() {
    use kvsqlite::actor::records::{hints_key, Hints};
    use kvsqlite::kv::KvStore;
    let mem = Arc::new(MemoryStore::new());
    let mut config = ActorConfig::default().with_migrations(vec![Migration::new(
        "0001_t.sql",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);",
    )
    .unwrap()]);
    // SQLite's own cache of 10 pages: the lookups' pages are read through the VFS.
    config.open.sqlite_cache_kib = 40;
    {
        let actor = Actor::start(mem.clone(), "h", &config).unwrap();
        big_insert(actor.db(), 400);
        actor.sleep().unwrap();
    }
    let actor = Actor::start(mem.clone(), "h", &config).unwrap();
    let db = actor.db();
    let mut rng = Rng::new(3);
    for _ in 0..40 {
        let id = 1 + (rng.next_u64() % ROWS as u64) as i64;
        let len: i64 = db
            .query_row("SELECT length(v) FROM t WHERE id = ?1", [id], |r| r.get(0))
            .unwrap();
        assert_eq!(len, 400);
    }
    actor.sleep().unwrap();
    let raw = mem
        .get("h", &[hints_key()])
        .unwrap()
        .remove(0)
        .expect("hints");
    let hints = Hints::decode(&raw).expect("a valid hints record");
    // Reopen to classify the hinted pages (the hints hold page numbers only).
    let actor = Actor::start(mem, "h", &config).unwrap();
    let db = actor.db();
    let interior = |i: u32| {
        let p = db.read_page(i).unwrap();
        matches!(p[if i == 0 { 100 } else { 0 }], 2 | 5)
    };
    let kinds: Vec<bool> = hints.hot.iter().map(|&i| interior(i)).collect();
    let n = kinds.iter().take_while(|&&k| k).count();
    // The root and the interior pages above 40 leaves come first, then the leaves.
    assert!(n >= 2, "{:?} {kinds:?}", hints.hot);
    assert!(kinds[n..].iter().all(|&k| !k), "{:?} {kinds:?}", hints.hot);
    assert!(kinds.len() - n >= 30, "{:?} {kinds:?}", hints.hot);
    actor.sleep().unwrap();
}
