//! Concurrency stress: many threads on one database, and many actors on one store at once.
//!
//! Writers (BEGIN IMMEDIATE and deferred, some transactions staged over the store's entry limit,
//! one connection whose small cache spills into the rollback journal), readers in long read
//! transactions, and connections opening and closing mid-run all share one database. The
//! workload is seeded, and its effects commute (balance transfers, inserts of distinct keys), so
//! the final contents are known exactly whatever the interleaving. Readers assert what SQLite
//! promises a reader: a transaction sees one committed state (no torn or stale reads inside it:
//! the total balance never changes, repeated reads agree, each writer's log is a prefix) and
//! never goes back in time. Busy outcomes are retried whole, as an application would.

#[path = "common/sqlite.rs"]
mod sqlite_checks;
use sqlite_checks::assert_integrity;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use kvsqlite::kv::latency::LatencyStore;
use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::{KvLimits, SharedStore};
use kvsqlite::rng::Rng;
use kvsqlite::vfs::{open_database, Database, OpenOptions};
use rusqlite::ErrorCode;

const ACCOUNTS: i64 = 10;
const START_BALANCE: i64 = 1000;
const WRITERS: i64 = 3;
const TXNS_PER_WRITER: i64 = 36;
const REOPENS: i64 = 30;
/// The log writer id the reopening thread uses.
const REOPENER: i64 = 99;

/// Low entry limit: a transaction of more than about 7 pages takes the staged path.
fn store() -> Arc<MemoryStore> {
    Arc::new(MemoryStore::with_limits(KvLimits {
        max_write_entries: 8,
        ..KvLimits::default()
    }))
}

fn open(store: &SharedStore, actor: &str) -> Database {
    let db = open_database(store.clone(), actor, &OpenOptions::default()).unwrap();
    db.busy_timeout(Duration::from_secs(20)).unwrap();
    db
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// Runs `body` as one transaction (`begin` opens it), retrying it whole on a busy outcome.
/// Returns how many attempts were busy.
fn with_retry(db: &Database, begin: &str, body: impl Fn(&Database) -> rusqlite::Result<()>) -> u64 {
    let mut busy = 0;
    loop {
        let r = db
            .execute_batch(begin)
            .and_then(|_| body(db))
            .and_then(|_| db.execute_batch("COMMIT"));
        match r {
            Ok(()) => return busy,
            Err(e) if is_busy(&e) => {
                busy += 1;
                if !db.is_autocommit() {
                    db.execute_batch("ROLLBACK").unwrap();
                }
                std::thread::yield_now();
            }
            Err(e) => panic!("transaction failed: {e}"),
        }
    }
}

/// One writer transaction: the transfer and the log row it makes, from the writer's seed.
struct Txn {
    from: i64,
    to: i64,
    amount: i64,
    /// Bytes of padding in the log row (a big one overflows into many pages).
    pad: usize,
}

fn writer_txns(w: i64) -> Vec<Txn> {
    let mut rng = Rng::new(0xC0FFEE + w as u64);
    (0..TXNS_PER_WRITER)
        .map(|i| Txn {
            from: rng.below(ACCOUNTS as u64) as i64,
            to: rng.below(ACCOUNTS as u64) as i64,
            amount: rng.below(50) as i64 + 1,
            // Every sixth transaction writes ~40 KB: staged (or journalled on writer 0).
            pad: if i % 6 == 5 {
                40_000
            } else {
                rng.below(200) as usize
            },
        })
        .collect()
}

fn expected_balances() -> BTreeMap<i64, i64> {
    let mut b: BTreeMap<i64, i64> = (0..ACCOUNTS).map(|a| (a, START_BALANCE)).collect();
    for w in 0..WRITERS {
        for t in writer_txns(w) {
            *b.get_mut(&t.from).unwrap() -= t.amount;
            *b.get_mut(&t.to).unwrap() += t.amount;
        }
    }
    b
}

/// What a reader checks inside one read transaction; returns the log size per writer.
fn check_snapshot(db: &Database) -> rusqlite::Result<BTreeMap<i64, i64>> {
    let total: i64 = db.query_row("SELECT sum(bal) FROM acct", [], |r| r.get(0))?;
    assert_eq!(total, ACCOUNTS * START_BALANCE, "torn read of the balances");
    let mut per = BTreeMap::new();
    let mut st = db.prepare("SELECT w, count(*), min(i), max(i) FROM log GROUP BY w")?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    for row in rows {
        let (w, n, lo, hi) = row?;
        // Each writer commits its log rows in order: a reader sees a prefix.
        assert_eq!((lo, hi), (0, n - 1), "writer {w}'s log is not a prefix");
        per.insert(w, n);
    }
    Ok(per)
}

fn integrity(db: &Database) {
    assert_integrity(db);
}

#[test]
fn writers_readers_and_reopening_connections_share_one_database() {
    bank(store());
}

#[test]
fn the_same_over_a_store_with_a_round_trip_time() {
    // Every KV call takes a millisecond, so a commit, a cache miss or an open holds the
    // database's state that long: the windows between threads are wide.
    let slow: SharedStore = Arc::new(LatencyStore::new(store(), Duration::from_millis(1)));
    bank(slow);
}

/// The bank workload on `store` (see the module comment).
fn bank(store: SharedStore) {
    // The observer opens first and stays open, so the shared state (and its counters) lives
    // through the whole run; the other connections come and go around it.
    let observer = open(&store, "bank");
    observer
        .execute_batch(
            "CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER NOT NULL);
             CREATE TABLE log(w INTEGER, i INTEGER, pad BLOB, PRIMARY KEY (w, i));",
        )
        .unwrap();
    {
        let tx = observer.unchecked_transaction().unwrap();
        for a in 0..ACCOUNTS {
            tx.execute("INSERT INTO acct VALUES (?1, ?2)", [a, START_BALANCE])
                .unwrap();
        }
        tx.commit().unwrap();
    }
    let before = observer.snapshot();

    let done = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(WRITERS as usize + 4));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        let start = start.clone();
        writers.push(std::thread::spawn(move || {
            let db = open(&store, "bank");
            if w == 0 {
                // A tiny page cache that spills: this writer's big transactions fall back to
                // the rollback journal while the others commit atomically or staged.
                db.execute_batch("PRAGMA cache_size=2; PRAGMA cache_spill=2;")
                    .unwrap();
            }
            start.wait();
            let mut busy = 0;
            for (i, t) in writer_txns(w).into_iter().enumerate() {
                // Alternate IMMEDIATE with deferred transactions that read before writing
                // (their upgrade to a writer is where busy outcomes happen).
                let begin = if i % 2 == 0 {
                    "BEGIN IMMEDIATE"
                } else {
                    "BEGIN"
                };
                busy += with_retry(&db, begin, |db| {
                    let bal: i64 =
                        db.query_row("SELECT bal FROM acct WHERE id = ?1", [t.from], |r| r.get(0))?;
                    db.execute(
                        "UPDATE acct SET bal = ?2 WHERE id = ?1",
                        [t.from, bal - t.amount],
                    )?;
                    db.execute(
                        "UPDATE acct SET bal = bal + ?2 WHERE id = ?1",
                        [t.to, t.amount],
                    )?;
                    db.execute(
                        "INSERT INTO log VALUES (?1, ?2, zeroblob(?3))",
                        rusqlite::params![w, i as i64, t.pad as i64],
                    )?;
                    Ok(())
                });
            }
            busy
        }));
    }
    let mut readers = Vec::new();
    for _ in 0..2 {
        let store = store.clone();
        let done = done.clone();
        let start = start.clone();
        readers.push(std::thread::spawn(move || {
            let db = open(&store, "bank");
            start.wait();
            let mut last: BTreeMap<i64, i64> = BTreeMap::new();
            let mut snapshots = 0u64;
            while !done.load(Ordering::Acquire) {
                let r = (|| -> rusqlite::Result<BTreeMap<i64, i64>> {
                    db.execute_batch("BEGIN")?;
                    let first = check_snapshot(&db)?;
                    // Hold the read transaction a while: writers queue behind it.
                    std::thread::sleep(Duration::from_millis(2));
                    let again = check_snapshot(&db)?;
                    assert_eq!(first, again, "a read transaction saw two states");
                    db.execute_batch("COMMIT")?;
                    Ok(first)
                })();
                match r {
                    Ok(seen) => {
                        for (w, n) in &last {
                            let now = seen.get(w).copied().unwrap_or(0);
                            assert!(now >= *n, "writer {w}'s log went back from {n} to {now}");
                        }
                        last = seen;
                        snapshots += 1;
                    }
                    Err(e) if is_busy(&e) => {
                        if !db.is_autocommit() {
                            db.execute_batch("ROLLBACK").unwrap();
                        }
                    }
                    Err(e) => panic!("reader failed: {e}"),
                }
            }
            snapshots
        }));
    }
    let reopener = {
        let store = store.clone();
        let start = start.clone();
        std::thread::spawn(move || {
            start.wait();
            for j in 0..REOPENS {
                let db = open(&store, "bank");
                if j % 2 == 0 {
                    with_retry(&db, "BEGIN", |db| check_snapshot(db).map(|_| ()));
                } else {
                    with_retry(&db, "BEGIN IMMEDIATE", |db| {
                        db.execute("INSERT INTO log VALUES (?1, ?2, NULL)", [REOPENER, j / 2])
                            .map(|_| ())
                    });
                }
                drop(db);
            }
        })
    };
    start.wait();
    for w in writers {
        w.join().unwrap();
    }
    reopener.join().unwrap();
    done.store(true, Ordering::Release);
    let snapshots: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(
        snapshots > 0,
        "the readers never completed a read transaction"
    );

    // Every commit path ran while the others worked.
    let d = observer.snapshot() - before;
    assert!(d.atomic_commits > 0, "{d:?}");
    assert!(d.staged_commits > 0, "{d:?}");
    assert!(d.journal_fallbacks > 0, "{d:?}");

    // Exactly the expected contents, through a fresh state too.
    drop(observer);
    let db = open(&store, "bank");
    let bal: BTreeMap<i64, i64> = db
        .prepare("SELECT id, bal FROM acct")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(bal, expected_balances());
    let log: Vec<(i64, i64, i64)> = db
        .prepare("SELECT w, i, length(pad) FROM log ORDER BY w, i")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2).unwrap_or(0))))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut want = Vec::new();
    for w in 0..WRITERS {
        for (i, t) in writer_txns(w).into_iter().enumerate() {
            want.push((w, i as i64, t.pad as i64));
        }
    }
    for j in 0..REOPENS / 2 {
        want.push((REOPENER, j, 0));
    }
    assert_eq!(log, want);
    integrity(&db);
}

#[test]
fn connections_that_open_commit_and_close_in_a_loop_lose_nothing() {
    // Every connection is short-lived, so the shared state is torn down and rebuilt many
    // times while other threads open, commit (some staged) and close.
    let m = store();
    let store: SharedStore = m.clone();
    {
        let db = open(&store, "churn");
        db.execute_batch("CREATE TABLE t(w INTEGER, i INTEGER, pad BLOB, PRIMARY KEY (w, i))")
            .unwrap();
    }
    let threads = 4i64;
    let per = 15i64;
    let start = Arc::new(Barrier::new(threads as usize));
    let handles: Vec<_> = (0..threads)
        .map(|w| {
            let store = store.clone();
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                for i in 0..per {
                    let db = open(&store, "churn");
                    let pad = if (w + i) % 5 == 0 { 40_000 } else { 10 };
                    with_retry(&db, "BEGIN IMMEDIATE", |db| {
                        db.execute("INSERT INTO t VALUES (?1, ?2, zeroblob(?3))", [w, i, pad])
                            .map(|_| ())
                    });
                    // A read in a new transaction sees the row just committed.
                    let n: i64 = db
                        .query_row("SELECT count(*) FROM t WHERE w = ?1", [w], |r| r.get(0))
                        .unwrap();
                    assert_eq!(n, i + 1, "writer {w} lost a row");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let db = open(&store, "churn");
    let rows: Vec<(i64, i64, i64)> = db
        .prepare("SELECT w, i, length(pad) FROM t ORDER BY w, i")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let want: Vec<(i64, i64, i64)> = (0..threads)
        .flat_map(|w| (0..per).map(move |i| (w, i, if (w + i) % 5 == 0 { 40_000 } else { 10 })))
        .collect();
    assert_eq!(rows, want);
    integrity(&db);
}

#[test]
fn many_actors_on_one_store_at_once_stay_independent() {
    let m = store();
    let store: SharedStore = m.clone();
    let threads = 6u64;
    let actors_per_thread = 3u64;
    let start = Arc::new(Barrier::new(threads as usize));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let store = store.clone();
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                let mut rng = Rng::new(t);
                // Actors are shared between neighbouring threads: thread t writes its own
                // actors and those of thread t - 1, each row under its own writer id.
                for round in 0..4u64 {
                    for a in 0..actors_per_thread {
                        for owner in [t, (t + threads - 1) % threads] {
                            let actor = format!("actor-{owner}-{a}");
                            let db = open(&store, &actor);
                            db.execute_batch(
                                "CREATE TABLE IF NOT EXISTS t(w INTEGER, r INTEGER, v BLOB, PRIMARY KEY (w, r))",
                            )
                            .unwrap();
                            let big = rng.chance(0.2);
                            with_retry(&db, "BEGIN IMMEDIATE", |db| {
                                db.execute(
                                    "INSERT INTO t VALUES (?1, ?2, zeroblob(?3))",
                                    [t as i64, round as i64, if big { 40_000 } else { 16 }],
                                )
                                .map(|_| ())
                            });
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    for owner in 0..threads {
        for a in 0..actors_per_thread {
            let db = open(&store, &format!("actor-{owner}-{a}"));
            let rows: Vec<(i64, i64)> = db
                .prepare("SELECT w, r FROM t ORDER BY w, r")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            // Written by its owner thread and by the next thread.
            let mut writers = [owner, (owner + 1) % threads];
            writers.sort();
            let want: Vec<(i64, i64)> = writers
                .iter()
                .flat_map(|&w| (0..4).map(move |r| (w as i64, r)))
                .collect();
            assert_eq!(rows, want, "actor-{owner}-{a}");
            integrity(&db);
        }
    }
}
