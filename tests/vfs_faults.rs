//! Injected (non-crash) faults that SQLite cannot retry around: the KV store fails two calls
//! in a row, or every call for a while, at each point of a workload. The statement that met
//! the fault must fail with an I/O error, nothing it wrote may be visible, and afterwards (and
//! after a reopen) every row matches stock SQLite that ran only the statements that succeeded.

#[path = "common/sqlite.rs"]
mod sqlite_checks;
use sqlite_checks::assert_integrity;
use std::sync::Arc;

use kvsqlite::kv::faults::{FaultPlan, FaultStore};
use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::SharedStore;
use kvsqlite::rng::Rng;
use kvsqlite::vfs::{open_database, OpenOptions};
use rusqlite::ErrorCode;

/// One transaction per entry: small rows and ~60-page inserts, of random (not zero) bytes.
fn workload() -> Vec<String> {
    let mut rng = Rng::new(0xFA17);
    let hex = |rng: &mut Rng, n: usize| -> String {
        rng.bytes(n).iter().map(|b| format!("{b:02x}")).collect()
    };
    (0..30)
        .map(|i| {
            if i == 0 {
                "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)".to_string()
            } else if i % 10 == 5 {
                let rows: Vec<String> = (0..60 + i)
                    .map(|_| format!("(x'{}')", hex(&mut rng, 3000)))
                    .collect();
                format!("INSERT INTO t(v) VALUES {}", rows.join(","))
            } else {
                format!(
                    "INSERT INTO t(v) VALUES (x'{}'); UPDATE t SET v = v || x'{}' WHERE id = {i}",
                    hex(&mut rng, i),
                    hex(&mut rng, 3)
                )
            }
        })
        .map(|t| format!("BEGIN; {t}; COMMIT;"))
        .collect()
}

type Rows = Vec<(i64, String)>;

/// Every row, blob bytes included; a query error is a test failure, never an empty result.
fn rows(conn: &rusqlite::Connection) -> Rows {
    let mut st = conn
        .prepare("SELECT id, hex(v) FROM t ORDER BY id")
        .expect("prepare the dump");
    let out = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("run the dump")
        .collect::<Result<Vec<_>, _>>()
        .expect("read the dump");
    out
}

/// The error of a statement that met an injected fault: an I/O error of the VFS call that made
/// the failed KV call (read, write, sync, truncate, delete, size or existence check), never a
/// panic's plain `SQLITE_IOERR`, a short read or corruption.
fn assert_io_error(e: &rusqlite::Error, what: &str) {
    let rusqlite::Error::SqliteFailure(f, _) = e else {
        panic!("{what}: not an SQLite failure: {e:?}");
    };
    assert_eq!(f.code, ErrorCode::SystemIoFailure, "{what}: {e:?}");
    use rusqlite::ffi;
    assert!(
        [
            ffi::SQLITE_IOERR_READ,
            ffi::SQLITE_IOERR_WRITE,
            ffi::SQLITE_IOERR_FSYNC,
            ffi::SQLITE_IOERR_TRUNCATE,
            ffi::SQLITE_IOERR_DELETE,
            ffi::SQLITE_IOERR_FSTAT,
            ffi::SQLITE_IOERR_ACCESS,
        ]
        .contains(&f.extended_code),
        "{what}: extended code {} ({e:?})",
        f.extended_code
    );
}

/// Runs one transaction; a failure must be an I/O error, after which the transaction is rolled
/// back (the ROLLBACK may meet a failing call too: SQLite then rolls back from its journal on
/// the next statement). Returns whether it committed.
fn attempt(db: &rusqlite::Connection, sql: &str, what: &str) -> bool {
    match db.execute_batch(sql) {
        Ok(()) => true,
        Err(e) => {
            assert_io_error(&e, what);
            if !db.is_autocommit() {
                let _ = db.execute_batch("ROLLBACK");
            }
            false
        }
    }
}

/// Runs the workload with the calls in `failing` failing; returns how many transactions
/// failed. Checks every row against stock SQLite after the run and after a reopen.
fn run_with_faults(txns: &[String], failing: std::ops::RangeInclusive<u64>) -> usize {
    let what = format!("calls {failing:?} fail");
    let inner: SharedStore = Arc::new(MemoryStore::new());
    let mut plan = FaultPlan::none();
    for n in failing.clone() {
        plan = plan.fail_call(n);
    }
    let faulty = FaultStore::wrap(inner.clone(), plan);
    let reference = rusqlite::Connection::open_in_memory().unwrap();
    let db = open_database(faulty.shared(), "f", &OpenOptions::default()).unwrap();
    let mut failures = 0;
    for (i, t) in txns.iter().enumerate() {
        if attempt(&db, t, &format!("{what}: transaction {i}")) {
            reference.execute_batch(t).unwrap();
        } else {
            failures += 1;
            if i == 0 {
                // The table itself was lost: create it once the faults pass, so the rest of
                // the workload runs.
                let mut tries = 0;
                while !attempt(&db, t, &format!("{what}: creating the table again")) {
                    tries += 1;
                    assert!(tries < 10, "{what}: the table cannot be created");
                }
                reference.execute_batch(t).unwrap();
            }
        }
    }
    // The workload may end inside the window: the faults stop before the checks.
    faulty.reset(FaultPlan::none());
    assert_eq!(rows(&db), rows(&reference), "{what}: {failures} failed");
    assert_integrity(&db);
    drop(db);
    let fresh = open_database(inner, "f", &OpenOptions::default()).unwrap();
    assert_eq!(rows(&fresh), rows(&reference), "{what}: reopened");
    assert_integrity(&fresh);
    failures
}

#[test]
fn faults_sqlite_cannot_retry_fail_the_statement_and_lose_nothing() {
    let txns = workload();
    let counter = FaultStore::wrap(Arc::new(MemoryStore::new()), FaultPlan::none());
    {
        let db = open_database(counter.shared(), "f", &OpenOptions::default()).unwrap();
        for t in &txns {
            db.execute_batch(t).unwrap();
        }
    }
    let total = counter.calls();
    // Call 1 is the open's read: the open fails and nothing runs.
    for k in 2..=total {
        // Two calls in a row: the batch-atomic put, then SQLite's retry through its journal.
        let failed = run_with_faults(&txns, k..=k + 1);
        assert!(
            failed >= 1,
            "calls {k} and {} failed, no statement did",
            k + 1
        );
        // Every call for a while: several statements fail.
        let failed = run_with_faults(&txns, k..=k + 5);
        assert!(
            failed >= 1,
            "calls {k}..={} failed, no statement did",
            k + 5
        );
    }
}

/// A write whose reply was lost (applied in the store, an error to SQLite) leaves the VFS unsure
/// of its state: it reloads the metadata, and must stop serving pages from a preload taken
/// before that write, or it would mix the old pages with the new metadata.
#[test]
fn a_lost_reply_drops_the_preload_so_reads_follow_the_store() {
    use kvsqlite::preload::Preload;
    use kvsqlite::vfs::layout;

    let m: SharedStore = Arc::new(MemoryStore::new());
    {
        let db = open_database(m.clone(), "lost", &OpenOptions::default()).unwrap();
        db.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
             INSERT INTO t WITH RECURSIVE s(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM s WHERE value < 300)
             SELECT value, 'old' FROM s;",
        )
        .unwrap();
    }
    let ops = layout::preload_reads(1 << 20);
    let preload = Preload::from_reads(&ops, &m.batch_read("lost", &ops).unwrap());
    // The preloaded open makes no call: the UPDATE's commit is call 1, applied, its reply lost;
    // SQLite then retries through the rollback journal (call 2 reloads the metadata), and that
    // journal's first write, call 3, fails: the statement fails, the update stays in the store.
    let faults = FaultStore::wrap(m.clone(), FaultPlan::none().lose_reply(1).fail_call(3));
    let opts = OpenOptions {
        preload: Some(preload),
        cache_pages: 0,
        ..OpenOptions::default()
    };
    let a = open_database(faults.shared(), "lost", &opts).unwrap();
    let e = a
        .execute_batch("UPDATE t SET v = 'new' WHERE id % 2 = 0")
        .unwrap_err();
    assert_io_error(&e, "the lost reply, then a failed retry");
    let count = |c: &rusqlite::Connection, v: &str| -> i64 {
        c.query_row("SELECT count(*) FROM t WHERE v = ?1", [v], |r| r.get(0))
            .unwrap()
    };
    // SQLite put the old pages back (its rollback writes them again after the failed retry), so
    // the store holds the table as before; the connection must read exactly that.
    let fresh = open_database(m.clone(), "lost", &OpenOptions::default()).unwrap();
    assert_eq!((count(&fresh, "new"), count(&fresh, "old")), (0, 300));
    assert_eq!((count(&a, "new"), count(&a, "old")), (0, 300));
    assert_integrity(&a);
}
