//! The loadable extension in the stock `sqlite3` shell (Debian's 3.40.1, without batch-atomic
//! writes): `.load` registers the `kvsqlite` VFS, `file:ACTOR?vfs=kvsqlite&kv=URL` opens an
//! actor; the shell and `kvsqlite run` read each other's writes on one redb file; every commit
//! goes through the rollback journal at a counted cost, with one warning; a journal left by a
//! killed shell is rolled back by the next open; misuse is refused with a message.

#[path = "common/sqlite_shell.rs"]
mod sqlite_shell;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::url::open_store;
use kvsqlite::kv::KvLimits;
use kvsqlite::vfs::layout::{meta_key, FileKind};
use kvsqlite::vfs::{open_database, OpenOptions, JOURNAL_WARNING};
use serde_json::Value;
use sqlite_shell::{extension, load_and_open, shell, shell_in, stderr, stdout};

/// `kvsqlite ARGS` in `dir` (no `sql/migrations` there), without `KVSQLITE_KV`.
fn kvsqlite(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvsqlite"))
        .args(args)
        .current_dir(dir)
        .env_remove("KVSQLITE_KV")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// The rows of every query `kvsqlite run --json` printed, in order.
fn json_rows(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| !v["columns"].as_array().unwrap().is_empty())
        .map(|v| v["rows"].clone())
        .collect()
}

fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

#[test]
fn shell_writes_rows_that_kvsqlite_run_reads_and_the_reverse() {
    let Some(ext) = extension() else { return };
    let dir = tempfile::tempdir().unwrap();
    let kv = format!("redb:{}", dir.path().join("kv.redb").display());

    // The shell creates a table in actor room-1 and writes rows.
    let script = format!(
        ".bail on\n{}CREATE TABLE msgs(id INTEGER PRIMARY KEY, body TEXT NOT NULL);\n\
         INSERT INTO msgs(body) VALUES ('hello'), ('it''s me');\n\
         INSERT INTO msgs(body) VALUES ('bye');\n",
        load_and_open(&ext, "room-1", &kv)
    );
    let out = shell(&script);
    assert_ok(&out);
    assert_eq!(stdout(&out), "");
    // The only thing on standard error: the one-time warning about the journal fallback.
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(err.trim(), format!("WARN {JOURNAL_WARNING}"));

    // `kvsqlite run` reads them from the same file.
    std::fs::write(
        dir.path().join("read.sql"),
        "SELECT id, body FROM msgs ORDER BY id;",
    )
    .unwrap();
    let out = kvsqlite(
        dir.path(),
        &[
            "run", "--kv", &kv, "--actor", "room-1", "--json", "read.sql",
        ],
    );
    assert_eq!(
        json_rows(&out),
        [serde_json::json!([
            [1, "hello"],
            [2, "it's me"],
            [3, "bye"]
        ])]
    );

    // The reverse: `kvsqlite run` creates actor room-2 and adds a row to room-1 ...
    std::fs::write(
        dir.path().join("write2.sql"),
        "CREATE TABLE notes(k TEXT PRIMARY KEY, v REAL);\n\
         INSERT INTO notes VALUES ('pi', 3.25), ('e', 2.5);",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("write1.sql"),
        "INSERT INTO msgs(body) VALUES ('from kvsqlite run');",
    )
    .unwrap();
    for (actor, file) in [("room-2", "write2.sql"), ("room-1", "write1.sql")] {
        let out = kvsqlite(dir.path(), &["run", "--kv", &kv, "--actor", actor, file]);
        assert_ok(&out);
    }
    // ... and the shell reads both.
    let script = format!(
        ".bail on\n{}SELECT k, v FROM notes ORDER BY k;\n.open file:room-1?vfs=kvsqlite&kv={kv}\n\
         SELECT id, body FROM msgs ORDER BY id;\nPRAGMA integrity_check;\n",
        load_and_open(&ext, "room-2", &kv)
    );
    let out = shell(&script);
    assert_ok(&out);
    assert_eq!(
        stdout(&out),
        "e|2.5\npi|3.25\n1|hello\n2|it's me\n3|bye\n4|from kvsqlite run\nok\n"
    );
}

/// The counters `PRAGMA kvsqlite_stats` printed, one JSON object per line.
fn stats_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn delta(later: &Value, earlier: &Value, field: &str) -> u64 {
    later[field].as_u64().unwrap() - earlier[field].as_u64().unwrap()
}

#[test]
fn without_batch_atomic_writes_every_commit_journals_at_a_counted_cost() {
    let Some(ext) = extension() else { return };
    let script = format!(
        ".bail on\n{}CREATE TABLE t(x);\nPRAGMA kvsqlite_stats;\n\
         INSERT INTO t VALUES (1);\nPRAGMA kvsqlite_stats;\n\
         PRAGMA synchronous=NORMAL;\nINSERT INTO t VALUES (2);\nPRAGMA kvsqlite_stats;\n\
         SELECT sum(x) FROM t;\n",
        load_and_open(&ext, "costs", "memory:")
    );
    let out = shell(&script);
    assert_ok(&out);
    let s = stats_lines(&stdout(&out));
    assert_eq!(s.len(), 3, "{}", stdout(&out));
    assert!(stdout(&out).ends_with("\n3\n"), "{}", stdout(&out));
    // One page changed: under the shell's default synchronous=FULL the journal is synced twice
    // (journal, journal header, database, journal deletion) ...
    assert_eq!(delta(&s[1], &s[0], "kv_round_trips"), 4);
    assert_eq!(delta(&s[1], &s[0], "kv_reads"), 0);
    assert_eq!(delta(&s[1], &s[0], "journal_fallbacks"), 1);
    assert_eq!(delta(&s[1], &s[0], "atomic_commits"), 0);
    // ... under NORMAL once (journal, database, journal deletion).
    assert_eq!(delta(&s[2], &s[1], "kv_round_trips"), 3);
    assert_eq!(delta(&s[2], &s[1], "journal_fallbacks"), 1);
    assert_eq!(delta(&s[2], &s[1], "atomic_commits"), 0);
    let err = stderr(&out);
    assert_eq!(err.matches(JOURNAL_WARNING).count(), 1, "{err}");

    // The same transaction through the bundled SQLite (batch-atomic writes): one put.
    let db = open_database(
        Arc::new(MemoryStore::new()),
        "costs",
        &OpenOptions::default(),
    )
    .unwrap();
    db.execute_batch("CREATE TABLE t(x);").unwrap();
    let before = db.snapshot();
    db.execute("INSERT INTO t VALUES (1)", []).unwrap();
    let d = db.snapshot() - before;
    assert_eq!(
        (d.kv_round_trips, d.atomic_commits, d.journal_fallbacks),
        (1, 1, 0)
    );

    // Bigger transactions: an UPDATE of 50 and of 300 rows of 3,000-byte blobs (51 and 301
    // pages). Journalled: the journal's and the database's pages each go in writes of up to 128
    // entries, plus the journal's deletion (and under FULL its header's sync). With history on
    // (the default) the database's writes also carry the commit's redo record (the pages'
    // images, barely compressible here): 301 pages then take 5 writes instead of 3.
    for (rows, full, normal, bundled) in [(50, 4, 3, 1), (300, 10, 9, 3)] {
        let series =
            format!("WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<{rows}) SELECT i FROM c");
        let script = format!(
            ".bail on\n{}CREATE TABLE t(x);\n\
             INSERT INTO t SELECT randomblob(3000) FROM ({series});\n\
             PRAGMA kvsqlite_stats;\nUPDATE t SET x = randomblob(3000);\nPRAGMA kvsqlite_stats;\n\
             PRAGMA synchronous=NORMAL;\nUPDATE t SET x = randomblob(3000);\nPRAGMA kvsqlite_stats;\n",
            load_and_open(&ext, "big", "memory:")
        );
        let out = shell(&script);
        assert_ok(&out);
        let s = stats_lines(&stdout(&out));
        assert_eq!(
            delta(&s[1], &s[0], "kv_round_trips"),
            full,
            "{rows} rows, FULL"
        );
        assert_eq!(
            delta(&s[2], &s[1], "kv_round_trips"),
            normal,
            "{rows} rows, NORMAL"
        );

        let db =
            open_database(Arc::new(MemoryStore::new()), "big", &OpenOptions::default()).unwrap();
        db.execute_batch(&format!(
            "CREATE TABLE t(x); INSERT INTO t SELECT randomblob(3000) FROM ({series});"
        ))
        .unwrap();
        let before = db.snapshot();
        db.execute("UPDATE t SET x = randomblob(3000)", []).unwrap();
        let d = db.snapshot() - before;
        assert_eq!(d.kv_round_trips, bundled, "{rows} rows, bundled");
        assert_eq!(d.journal_fallbacks, 0);
    }
}

#[test]
fn a_journal_left_by_a_killed_shell_is_rolled_back_by_the_next_open() {
    let Some(ext) = extension() else { return };
    let dir = tempfile::tempdir().unwrap();
    let kv = format!("redb:{}", dir.path().join("kv.redb").display());
    // A transaction bigger than the page cache spills (journal synced, pages written), then
    // the shell is killed before it commits.
    let script = format!(
        ".bail on\n{}CREATE TABLE t(x);\nINSERT INTO t VALUES ('kept');\nPRAGMA cache_size=2;\n\
         BEGIN;\nWITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<300)\n\
         INSERT INTO t SELECT randomblob(1500) FROM c;\n.system kill -9 $PPID\nCOMMIT;\n",
        load_and_open(&ext, "crash", &kv)
    );
    let out = shell(&script);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9), "{}", stderr(&out));

    let journal_exists = || {
        let store = open_store(&kv, KvLimits::default(), None).unwrap();
        let got = store.get("crash", &[meta_key(FileKind::Journal)]).unwrap();
        got[0].is_some()
    };
    assert!(journal_exists(), "the killed transaction left no journal");

    // The shell's next open finds the hot journal through the VFS and rolls it back.
    let script = format!(
        ".bail on\n{}SELECT count(*), min(x) FROM t;\nPRAGMA integrity_check;\n",
        load_and_open(&ext, "crash", &kv)
    );
    let out = shell_in(&script, Some(dir.path()));
    assert_ok(&out);
    assert_eq!(stdout(&out), "1|kept\nok\n");
    assert!(
        !journal_exists(),
        "the journal is still there after recovery"
    );
}

#[test]
fn misuse_is_refused_with_a_message() {
    let Some(ext) = extension() else { return };
    let dir = tempfile::tempdir().unwrap();
    let kv = format!("redb:{}", dir.path().join("kv.redb").display());
    let cases: [(&str, &str); 4] = [
        // WAL would give up the atomic commit.
        (
            "PRAGMA journal_mode=WAL;",
            "kvsqlite refuses PRAGMA journal_mode=WAL",
        ),
        // One actor id on two stores at once in one process.
        (
            "ATTACH 'file:a?vfs=kvsqlite&kv=memory:' AS other;",
            "unable to open database",
        ),
        // A store URL that does not parse.
        (
            "ATTACH 'file:b?vfs=kvsqlite&kv=nosuch:x' AS other;",
            "unable to open database",
        ),
        // A path that is neither an actor id nor a kvsqlite path.
        (
            "ATTACH 'file:/x/y?vfs=kvsqlite' AS other;",
            "unable to open database",
        ),
    ];
    for (sql, want) in cases {
        let script = format!(
            ".bail on\n{}CREATE TABLE IF NOT EXISTS t(x);\n{sql}\n",
            load_and_open(&ext, "a", &kv)
        );
        let out = shell(&script);
        assert!(!out.status.success(), "{sql}: {}", stdout(&out));
        assert!(stderr(&out).contains(want), "{sql}: {}", stderr(&out));
    }
    // The refused URL is named on standard error by the extension's log.
    let script = format!(
        "{}ATTACH 'file:b?vfs=kvsqlite&kv=nosuch:x' AS other;\n",
        load_and_open(&ext, "a", &kv)
    );
    let err = stderr(&shell(&script));
    assert!(err.contains("unknown scheme \"nosuch\""), "{err}");
}

/// The URI names the extension enables work through the bundled SQLite too (this process):
/// stores are kept per URL, the journal resolves through the open main database, and one
/// actor id is bound to one store at a time.
#[test]
fn uri_names_open_actors_on_the_store_their_kv_parameter_names() {
    use rusqlite::{Connection, OpenFlags};
    kvsqlite::vfs::register();
    kvsqlite::vfs::uri::enable();
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_URI;
    let open = |uri: &str| Connection::open_with_flags_and_vfs(uri, flags, "kvsqlite");
    let stats = |c: &Connection| -> Value {
        let s: String = c
            .query_row("PRAGMA kvsqlite_stats", [], |r| r.get(0))
            .unwrap();
        serde_json::from_str(&s).unwrap()
    };

    let a = open("file:uri-1?kv=memory:").unwrap();
    a.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    let before = stats(&a);
    a.execute("INSERT INTO t VALUES (2)", []).unwrap();
    let after = stats(&a);
    // Batch-atomic here: one put.
    assert_eq!(delta(&after, &before, "kv_round_trips"), 1);
    assert_eq!(delta(&after, &before, "atomic_commits"), 1);

    // A second connection with the same URL shares the store (and the database).
    let b = open("file:uri-1?kv=memory:").unwrap();
    let n: i64 = b
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2);
    // A journalled transaction (bigger than the cache, so it spills) commits through the
    // journal's plain name.
    b.execute_batch(
        "PRAGMA cache_size=2; PRAGMA cache_spill=1; BEGIN; \
         WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<100) \
         INSERT INTO t SELECT randomblob(2000) FROM c; COMMIT;",
    )
    .unwrap();
    assert_eq!(delta(&stats(&b), &after, "journal_fallbacks"), 1);
    let n: i64 = a
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 102);

    // The same actor id on another store while it is open here: refused.
    let dir = tempfile::tempdir().unwrap();
    let other = format!(
        "file:uri-1?kv=redb:{}",
        dir.path().join("kv.redb").display()
    );
    let e = open(&other).map(|_| ()).unwrap_err();
    assert_eq!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::CannotOpen),
        "{e}"
    );
    // Once closed, the id may be opened on another store (a new, empty database there).
    drop((a, b));
    let c = open(&other).unwrap();
    let n: i64 = c
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
    // And the first store still holds the first database.
    drop(c);
    let a = open("file:uri-1?kv=memory:").unwrap();
    let n: i64 = a
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 102);
    // WAL is refused through URI names as through the library.
    assert!(a
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0))
        .unwrap_err()
        .to_string()
        .contains("kvsqlite refuses PRAGMA journal_mode=WAL"));
}
