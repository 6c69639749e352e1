//! `kvsqlite::interop` and `kvsqlite import`/`export`: plain SQLite files in and out of actors.
//!
//! Chinook (from `../shared/corpus/chinook/`, skipped when absent, a failure under `CI=true`)
//! goes in and out with every row intact; a generated file of about 4 MB costs exactly the
//! round trips the README states; an export while another connection writes is a consistent
//! snapshot; truncated and non-SQLite inputs are clear errors that leave the store unchanged;
//! a file with indexes, triggers, a view, a `WITHOUT ROWID` table, an 8 KiB page size,
//! `user_version` and `application_id` comes back with its schema, pragmas, `integrity_check`
//! and a content hash over every table equal (in the actor and after export).

#[path = "common/skip.rs"]
mod skip;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kvsqlite::interop::{export_file, import_file, ImportOptions, InteropError};
use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::{ListRequest, SharedStore};
use kvsqlite::vfs::{open_database, OpenOptions};
use rusqlite::types::Value;
use rusqlite::Connection;

fn chinook() -> Option<PathBuf> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/chinook/chinook.sqlite");
    if path.is_file() {
        return Some(path);
    }
    skip::skip(&format!(
        "the Chinook corpus is missing at {}",
        path.display()
    ));
    None
}

fn memory() -> SharedStore {
    Arc::new(MemoryStore::new())
}

/// Every row of every table of `conn`, table by table in name order, rows in rowid order
/// (or in full-row order for a table without rowid).
fn all_rows(conn: &Connection) -> Vec<(String, Vec<Vec<Value>>)> {
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap();
    let tables: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(!tables.is_empty());
    tables
        .into_iter()
        .map(|t| {
            let mut stmt = conn.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
            let n = stmt.column_count();
            let mut rows: Vec<Vec<Value>> = stmt
                .query_map([], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect())
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            rows.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
            (t, rows)
        })
        .collect()
}

/// Every key and value the store holds for `actor`.
fn keys(store: &SharedStore, actor: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let page = store.list(actor, &ListRequest::prefix(Vec::new())).unwrap();
    assert!(page.is_complete());
    page.entries
}

fn integrity(conn: &Connection) -> String {
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// A rollback-mode SQLite file of `rows` rows of 1,000 random bytes (about 1 KB a row).
fn generated(dir: &Path, name: &str, rows: u32) -> PathBuf {
    let path = dir.join(name);
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(&format!(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB);
         WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {rows})
         INSERT INTO t SELECT i, randomblob(1000) FROM c;"
    ))
    .unwrap();
    path
}

#[test]
fn chinook_import_then_export_keeps_every_row_of_every_table() {
    let Some(source) = chinook() else { return };
    let before = std::fs::read(&source).unwrap();
    let store = memory();
    let report = import_file(store.clone(), "chinook", &source, &ImportOptions::default()).unwrap();
    assert_eq!((report.page_size, report.pages), (4096, 211));
    // One staged write per 128 pages: the import's redo record (history is on) holds the same
    // pages LZ4-compressed, small enough here to ride in those writes.
    assert_eq!(report.copy_round_trips, 211u64.div_ceil(128));

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.sqlite");
    export_file(store, "chinook", &out, false).unwrap();
    // Opened by plain SQLite (the bundled one, no kvsqlite VFS).
    let original =
        Connection::open_with_flags(&source, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let exported = Connection::open(&out).unwrap();
    assert_eq!(integrity(&exported), "ok");
    let journal: String = exported
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(journal, "delete");
    assert_eq!(all_rows(&original), all_rows(&exported));
    assert_eq!(
        std::fs::read(&source).unwrap(),
        before,
        "the source must not change"
    );
}

#[test]
fn importing_a_generated_file_costs_one_write_per_128_pages() {
    let dir = tempfile::tempdir().unwrap();
    let source = generated(dir.path(), "gen.sqlite", 4000);
    let store = memory();
    let report = import_file(store.clone(), "gen", &source, &ImportOptions::default()).unwrap();
    assert!(report.pages > 1000, "{report:?}");
    // The copy: with history on (the default) every page goes out twice, as its chunk (key and
    // page: 4,103 bytes) and in the import's redo record (these random pages do not compress:
    // 4,105 bytes with the entry's header), so the staged writes are full by bytes (976 KiB
    // each), the last carrying the commit record.
    assert_eq!(
        report.copy_round_trips,
        (report.pages * (4103 + 4105)).div_ceil(976 * 1024),
        "{report:?}"
    );
    // Plus the existence check and the open; the integrity check reads cached pages.
    assert_eq!(
        report.kv_round_trips,
        report.copy_round_trips + 2,
        "{report:?}"
    );
    let db = open_database(store, "gen", &OpenOptions::default()).unwrap();
    let n: i64 = db
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 4000);
}

#[test]
fn a_wal_mode_source_is_read_with_its_wal_and_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.sqlite");
    let writer = Connection::open(&path).unwrap();
    writer
        .execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
             CREATE TABLE t(x); INSERT INTO t VALUES (1), (2), (3);",
        )
        .unwrap();
    // The rows live only in the -wal file while `writer` stays open.
    let main_before = std::fs::read(&path).unwrap();
    let wal_before = std::fs::read(dir.path().join("wal.sqlite-wal")).unwrap();
    let store = memory();
    let report = import_file(store.clone(), "w", &path, &ImportOptions::default()).unwrap();
    assert!(report.source_wal);
    assert_eq!(std::fs::read(&path).unwrap(), main_before);
    assert_eq!(
        std::fs::read(dir.path().join("wal.sqlite-wal")).unwrap(),
        wal_before
    );
    let db = open_database(store, "w", &OpenOptions::default()).unwrap();
    let sum: i64 = db
        .query_row("SELECT sum(x) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sum, 6);
    let journal: String = db
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        journal, "delete",
        "the actor's database stays in rollback mode"
    );
    drop(writer);
}

#[test]
fn an_export_during_writes_is_a_consistent_snapshot() {
    let store = memory();
    {
        let db = open_database(store.clone(), "busy", &OpenOptions::default()).unwrap();
        db.execute_batch("CREATE TABLE a(n); CREATE TABLE total(n); INSERT INTO total VALUES (0);")
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let writer = {
        let (store, stop, committed) = (store.clone(), stop.clone(), committed.clone());
        std::thread::spawn(move || {
            let db = open_database(store, "busy", &OpenOptions::default()).unwrap();
            db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
            let mut commits = 0u32;
            // Every transaction adds 10 rows to `a` and 10 to `total`: a committed state has
            // count(a) = total, a multiple of 10.
            while !stop.load(Ordering::Relaxed) || commits < 20 {
                db.execute_batch(
                    "BEGIN IMMEDIATE;
                     WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 10)
                     INSERT INTO a SELECT randomblob(200) FROM c;
                     UPDATE total SET n = n + 10;
                     COMMIT;",
                )
                .unwrap();
                commits += 1;
                committed.store(commits, Ordering::SeqCst);
            }
            commits
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let mut counts = Vec::new();
    for i in 0..8 {
        // Each export starts after one more commit of the writer, so all of them run while it
        // is writing (not before it started).
        let seen = committed.load(Ordering::SeqCst);
        while committed.load(Ordering::SeqCst) == seen {
            std::thread::yield_now();
        }
        let out = dir.path().join(format!("snap{i}.sqlite"));
        export_file(store.clone(), "busy", &out, false).unwrap();
        let snap = Connection::open(&out).unwrap();
        assert_eq!(integrity(&snap), "ok");
        let (rows, total): (i64, i64) = snap
            .query_row(
                "SELECT (SELECT count(*) FROM a), (SELECT n FROM total)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(rows, total, "snapshot {i} mixes two states");
        assert_eq!(rows % 10, 0, "snapshot {i} holds part of a transaction");
        counts.push(rows);
    }
    stop.store(true, Ordering::Relaxed);
    let commits = writer.join().unwrap();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    assert!(counts[0] > 0, "{counts:?}");
    assert!(*counts.last().unwrap() <= 10 * commits as i64);
}

#[test]
fn truncated_and_non_sqlite_inputs_are_errors_that_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let good = generated(dir.path(), "good.sqlite", 300);
    let bytes = std::fs::read(&good).unwrap();
    let store = memory();
    import_file(store.clone(), "existing", &good, &ImportOptions::default()).unwrap();
    let existing = keys(&store, "existing");

    let truncated = dir.path().join("truncated.sqlite");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let odd = dir.path().join("odd.sqlite");
    std::fs::write(&odd, &bytes[..bytes.len() - 100]).unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(
        &text,
        "just some text, long enough to fill a SQLite header of one hundred bytes or more: "
            .repeat(3),
    )
    .unwrap();
    let mut header_only = bytes[..4096].to_vec();
    header_only[28..32].copy_from_slice(&0u32.to_be_bytes()); // no page count to compare
    let short = dir.path().join("short.sqlite");
    std::fs::write(&short, &header_only).unwrap();
    let missing = dir.path().join("missing.sqlite");

    for (path, why) in [
        (&truncated, "truncated"),
        (&odd, "truncated"),
        (&text, "not a SQLite database"),
        (&missing, "cannot open"),
    ] {
        for (actor, replace) in [("fresh", false), ("existing", true)] {
            let err = import_file(store.clone(), actor, path, &ImportOptions { replace })
                .expect_err("a bad input must fail");
            assert!(matches!(err, InteropError::BadInput(_)), "{err:?}");
            assert!(err.to_string().contains(why), "{path:?}: {err}");
        }
    }
    // A rollback-mode file with a (possibly hot) journal beside it.
    let journalled = generated(dir.path(), "journalled.sqlite", 10);
    std::fs::write(dir.path().join("journalled.sqlite-journal"), [1u8; 512]).unwrap();
    let err = import_file(
        store.clone(),
        "fresh",
        &journalled,
        &ImportOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("rollback journal"), "{err}");
    // A first page whose tables point past the end: quick_check (or the open) refuses it.
    let err = import_file(store.clone(), "fresh", &short, &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, InteropError::BadInput(_)), "{err:?}");
    assert!(keys(&store, "fresh").is_empty());
    assert_eq!(
        keys(&store, "existing"),
        existing,
        "the existing actor must be untouched"
    );
}

#[test]
fn the_cli_imports_exports_and_refuses_what_it_must() {
    let dir = tempfile::tempdir().unwrap();
    let good = generated(dir.path(), "good.sqlite", 50);
    let kv = format!("redb:{}", dir.path().join("kv.redb").display());
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_kvsqlite"))
            .arg("--kv")
            .arg(&kv)
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, _) = run(&["import", "good.sqlite", "--actor", "a"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("KV round trips"), "{stdout}");
    let (code, _, stderr) = run(&["import", "good.sqlite", "--actor", "a"]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.starts_with("kvsqlite import: actor \"a\" already exists"),
        "{stderr}"
    );
    assert_eq!(
        run(&["import", "good.sqlite", "--actor", "a", "--replace"]).0,
        Some(0)
    );

    std::fs::write(dir.path().join("bad.sqlite"), "not sqlite at all").unwrap();
    let (code, _, stderr) = run(&["import", "bad.sqlite", "--actor", "b"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("not a SQLite database"), "{stderr}");

    assert_eq!(run(&["export", "--actor", "a", "out.sqlite"]).0, Some(0));
    let (code, _, stderr) = run(&["export", "--actor", "a", "out.sqlite"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("already exists (use --force"), "{stderr}");
    assert_eq!(
        run(&["export", "--actor", "a", "out.sqlite", "--force"]).0,
        Some(0)
    );
    let (code, _, stderr) = run(&["export", "--actor", "nobody", "x.sqlite"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(!dir.path().join("x.sqlite").exists());

    let exported = Connection::open(dir.path().join("out.sqlite")).unwrap();
    let original = Connection::open(&good).unwrap();
    assert_eq!(all_rows(&original), all_rows(&exported));
}

/// What a database is beyond its rows: every schema entry (tables, indexes, triggers, views,
/// with their SQL and root pages), `user_version`, `application_id`, `page_size`,
/// `integrity_check`, and a content hash over every row of every table (MD5 of a canonical
/// text: table name, then each row in rowid or full-row order, values tagged by type).
#[derive(Debug, PartialEq)]
struct Shape {
    schema: Vec<(String, String, String, i64, Option<String>)>,
    user_version: i64,
    application_id: i64,
    page_size: i64,
    integrity: String,
    content: String,
}

fn shape(conn: &Connection) -> Shape {
    let mut stmt = conn
        .prepare(
            "SELECT type, name, tbl_name, rootpage, sql FROM sqlite_schema ORDER BY type, name",
        )
        .unwrap();
    let schema: Vec<(String, String, String, i64, Option<String>)> = stmt
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let pragma = |p: &str| -> i64 {
        conn.query_row(&format!("PRAGMA {p}"), [], |r| r.get(0))
            .unwrap()
    };
    let mut text = String::new();
    for (_, name, _, _, _) in schema.iter().filter(|s| s.0 == "table") {
        text.push_str(&format!("table {name:?}\n"));
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{name}\"")).unwrap();
        let n = stmt.column_count();
        let mut rows: Vec<String> = stmt
            .query_map([], |r| {
                Ok((0..n)
                    .map(|i| format!("{:?}", r.get::<_, Value>(i).unwrap()))
                    .collect::<Vec<_>>()
                    .join(","))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        rows.sort();
        for r in rows {
            text.push_str(&r);
            text.push('\n');
        }
    }
    Shape {
        schema,
        user_version: pragma("user_version"),
        application_id: pragma("application_id"),
        page_size: pragma("page_size"),
        integrity: integrity(conn),
        content: kvsqlite::slt::md5::md5_hex(text.as_bytes()),
    }
}

#[test]
fn import_then_export_keeps_the_schema_pragmas_and_a_hash_of_every_table() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("rich.sqlite");
    {
        let conn = Connection::open(&source).unwrap();
        conn.execute_batch(
            "PRAGMA page_size = 8192;
             PRAGMA user_version = 4242;
             PRAGMA application_id = 1801812339;
             CREATE TABLE author(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, born REAL);
             CREATE TABLE book(id INTEGER PRIMARY KEY, author INTEGER REFERENCES author(id),
                               title TEXT COLLATE NOCASE, cover BLOB, pages INTEGER CHECK (pages > 0));
             CREATE TABLE tag(book INTEGER, tag TEXT, PRIMARY KEY (book, tag)) WITHOUT ROWID;
             CREATE TABLE audit(at INTEGER, what TEXT);
             CREATE INDEX book_title ON book(title);
             CREATE INDEX book_author_pages ON book(author, pages DESC) WHERE pages > 10;
             CREATE TRIGGER book_added AFTER INSERT ON book BEGIN
               INSERT INTO audit VALUES (new.id, 'added ' || new.title);
             END;
             CREATE VIEW long_books AS SELECT title, pages FROM book WHERE pages > 300;
             INSERT INTO author(name, born) VALUES ('Ann', 1901.5), ('Bo', NULL), ('Cy', -3.25);
             WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 700)
             INSERT INTO book(author, title, cover, pages)
               SELECT i % 3 + 1, printf('Title %04d', i), randomblob(i % 50), i FROM s;
             INSERT INTO tag SELECT id, 'even' FROM book WHERE id % 2 = 0;
             INSERT INTO tag SELECT id, 'ten' FROM book WHERE id % 10 = 0;",
        )
        .unwrap();
    }
    let original = shape(
        &Connection::open_with_flags(&source, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap(),
    );
    assert_eq!(
        (
            original.page_size,
            original.user_version,
            original.application_id
        ),
        (8192, 4242, 1801812339)
    );
    // 4 tables, the UNIQUE constraint's automatic index, 2 indexes, a trigger, a view.
    assert_eq!(original.schema.len(), 9, "{:?}", original.schema);

    let store = memory();
    let report = import_file(store.clone(), "rich", &source, &ImportOptions::default()).unwrap();
    assert_eq!(report.page_size, 8192);
    // The actor's database, read through the VFS, is the source.
    let db = open_database(store.clone(), "rich", &OpenOptions::default()).unwrap();
    assert_eq!(shape(&db), original);
    drop(db);

    let out = dir.path().join("out.sqlite");
    export_file(store, "rich", &out, false).unwrap();
    let exported = Connection::open(&out).unwrap();
    assert_eq!(shape(&exported), original);
}
