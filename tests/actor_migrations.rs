//! Migrations on stock SQLite: loading, validation, every error with its exact variant, the
//! all-or-nothing transaction of each migration, idempotent re-runs that write nothing, and the
//! example chat app (`sql/migrations`, `sql/examples`) applied and run twice.

use std::path::Path;

use kvsqlite::actor::migrations::{
    apply, checksum, load_dir, migrate, pending, validate, MigrateReport, Migration,
    MigrationError, TABLE,
};
use kvsqlite::actor::statements::{execute_one, split};
use rusqlite::types::FromSql;
use rusqlite::Connection;

fn m(name: &str, sql: &str) -> Migration {
    Migration::new(name, sql).unwrap()
}

/// Three migrations: a table, an index and a 200-row insert.
fn three() -> Vec<Migration> {
    vec![
        m(
            "0001_init.sql",
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);",
        ),
        m("0002_index.sql", "CREATE INDEX t_v ON t(v);"),
        m(
            "0003_rows.sql",
            "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 200)\n\
             INSERT INTO t(v) SELECT 'row ' || n FROM s;",
        ),
    ]
}

/// Every row of a three-column query.
fn triples<A: FromSql, B: FromSql, C: FromSql>(conn: &Connection, sql: &str) -> Vec<(A, B, C)> {
    let mut stmt = conn.prepare(sql).unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap();
    rows.map(Result::unwrap).collect()
}

/// Everything of the database's schema, in a stable order.
fn schema(conn: &Connection) -> Vec<(String, String, Option<String>)> {
    triples(
        conn,
        "SELECT type, name, sql FROM sqlite_schema ORDER BY type, name",
    )
}

/// The recorded migrations: (id, name, checksum).
fn records(conn: &Connection) -> Vec<(i64, String, String)> {
    triples(
        conn,
        "SELECT id, name, checksum FROM _kvsqlite_migrations ORDER BY id",
    )
}

fn write(dir: &Path, name: &str, content: &[u8]) {
    std::fs::write(dir.join(name), content).unwrap();
}

#[test]
fn checksum_is_sha256_hex() {
    assert_eq!(
        checksum(""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        checksum("abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_ne!(checksum("SELECT 1;\n"), checksum("SELECT 1;\r\n"));
}

#[test]
fn load_dir_sorts_and_ignores_what_is_not_a_migration() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "0002_second.sql", b"SELECT 2;");
    write(dir.path(), "0010_tenth-one.sql", b"SELECT 10;");
    write(dir.path(), "00001_first.sql", b"SELECT 1;");
    write(dir.path(), "README.md", b"not a migration");
    write(dir.path(), "0003_backup.sql~", b"editor backup");
    write(dir.path(), ".#0004_lock.sql", b"editor lock file");
    std::fs::create_dir(dir.path().join("0005_dir.sql")).unwrap();
    let list = load_dir(dir.path()).unwrap();
    let got: Vec<(u32, &str, &str)> = list
        .iter()
        .map(|m| (m.number, m.name.as_str(), m.sql.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (1, "00001_first.sql", "SELECT 1;"),
            (2, "0002_second.sql", "SELECT 2;"),
            (10, "0010_tenth-one.sql", "SELECT 10;"),
        ]
    );
    // Loading does not validate: the gap is validate's to find.
    assert!(matches!(
        validate(&list),
        Err(MigrationError::Gap { missing: 3, ref next }) if next == "0010_tenth-one.sql"
    ));
}

#[test]
fn load_dir_errors_name_the_file() {
    for bad in [
        "1_short.sql",
        "0001-init.sql",
        "0001_.sql",
        "abcd_x.sql",
        "0001_has space.sql",
        "99999999999_too_big.sql",
        "0001_init.SQL.sql",
    ] {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "0001_ok.sql", b"SELECT 1;");
        write(dir.path(), bad, b"SELECT 1;");
        let err = load_dir(dir.path()).unwrap_err();
        assert!(
            matches!(err, MigrationError::BadName { ref file } if file == bad),
            "{bad}: {err:?}"
        );
        assert!(err.to_string().starts_with(&format!("{bad}: ")), "{err}");
    }

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "0001_latin1.sql", b"SELECT 'caf\xe9';");
    let err = load_dir(dir.path()).unwrap_err();
    assert!(matches!(err, MigrationError::NotUtf8 { ref file } if file == "0001_latin1.sql"));
    assert_eq!(
        err.to_string(),
        "0001_latin1.sql: the migration is not UTF-8 text"
    );

    let dir = tempfile::tempdir().unwrap();
    let dangling = dir.path().join("0001_gone.sql");
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
    let err = load_dir(dir.path()).unwrap_err();
    assert!(matches!(err, MigrationError::Io { ref path, .. } if path == &dangling));
    assert!(err.to_string().contains("0001_gone.sql: "), "{err}");

    let missing = dir.path().join("no-such-dir");
    let err = load_dir(&missing).unwrap_err();
    assert!(matches!(err, MigrationError::Io { ref path, .. } if path == &missing));
}

#[test]
fn validate_refuses_gaps_duplicates_disorder_and_bad_names() {
    assert!(validate(&[]).is_ok());
    assert!(validate(&three()).is_ok());

    let err = validate(&[m("0001_a.sql", ""), m("0003_c.sql", "")]).unwrap_err();
    assert!(matches!(err, MigrationError::Gap { missing: 2, ref next } if next == "0003_c.sql"));
    assert_eq!(
        err.to_string(),
        "0003_c.sql: no migration numbered 0002 before it"
    );
    let err = validate(&[m("0002_b.sql", "")]).unwrap_err();
    assert!(matches!(err, MigrationError::Gap { missing: 1, ref next } if next == "0002_b.sql"));

    let err = validate(&[m("0001_a.sql", ""), m("0001_b.sql", "")]).unwrap_err();
    assert!(matches!(
        err,
        MigrationError::Duplicate { number: 1, ref first, ref second }
            if first == "0001_a.sql" && second == "0001_b.sql"
    ));
    assert_eq!(
        err.to_string(),
        "0001_b.sql: number 0001 is also used by 0001_a.sql"
    );

    let err = validate(&[m("0002_b.sql", ""), m("0001_a.sql", "")]).unwrap_err();
    assert!(matches!(
        err,
        MigrationError::OutOfOrder { ref file, ref after }
            if file == "0001_a.sql" && after == "0002_b.sql"
    ));

    let mismatched = Migration {
        number: 2,
        name: "0001_a.sql".into(),
        sql: String::new(),
    };
    let err = validate(&[m("0001_x.sql", ""), mismatched]).unwrap_err();
    assert!(matches!(err, MigrationError::BadName { ref file } if file == "0001_a.sql"));
    assert!(matches!(
        Migration::new("init.sql", ""),
        Err(MigrationError::BadName { .. })
    ));
}

#[test]
fn migrate_applies_in_order_once_and_records_checksums() {
    let conn = Connection::open_in_memory().unwrap();
    let list = three();
    assert_eq!(pending(&conn, &list).unwrap(), [0, 1, 2]);
    let report = migrate(&conn, &list).unwrap();
    assert_eq!(
        report,
        MigrateReport {
            applied: vec![1, 2, 3],
            already_applied: 0
        }
    );
    let n: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 200);
    let want: Vec<(i64, String, String)> = list
        .iter()
        .map(|m| (i64::from(m.number), m.name.clone(), checksum(&m.sql)))
        .collect();
    assert_eq!(records(&conn), want);
    assert_eq!(
        conn.query_row(
            "SELECT sql FROM sqlite_schema WHERE name = ?1",
            [TABLE],
            |r| r.get::<_, String>(0)
        )
        .unwrap(),
        "CREATE TABLE _kvsqlite_migrations(id INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL)"
    );

    // Re-running applies nothing and writes nothing.
    let changes = conn.total_changes();
    let before = schema(&conn);
    assert_eq!(pending(&conn, &list).unwrap(), Vec::<usize>::new());
    assert_eq!(
        migrate(&conn, &list).unwrap(),
        MigrateReport {
            applied: vec![],
            already_applied: 3
        }
    );
    assert_eq!(conn.total_changes(), changes);
    assert_eq!(schema(&conn), before);

    // A new migration later: only it is applied.
    let mut more = list.clone();
    more.push(m("0004_more.sql", "INSERT INTO t(v) VALUES ('late');"));
    assert_eq!(pending(&conn, &more).unwrap(), [3]);
    assert_eq!(
        migrate(&conn, &more).unwrap(),
        MigrateReport {
            applied: vec![4],
            already_applied: 3
        }
    );
}

#[test]
fn checking_a_database_without_migrations_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch("CREATE TABLE keep(x); INSERT INTO keep VALUES (1);")
        .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let changes = conn.total_changes();
    assert_eq!(pending(&conn, &three()).unwrap(), [0, 1, 2]);
    assert_eq!(migrate(&conn, &[]).unwrap().applied, Vec::<u32>::new());
    assert_eq!(conn.total_changes(), changes);
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = ?1",
            [TABLE],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 0, "pending must not create the table");

    // And with everything applied, a file database's bytes stay the same too.
    migrate(&conn, &three()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(migrate(&conn, &three()).unwrap().already_applied, 3);
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[test]
fn a_failing_migration_leaves_nothing_and_keeps_the_earlier_ones() {
    let conn = Connection::open_in_memory().unwrap();
    let list = vec![
        m("0001_init.sql", "CREATE TABLE t(x);"),
        m(
            "0002_broken.sql",
            "-- adds a table, then fails\nCREATE TABLE u(y);\nINSERT INTO t VALUES (1);\n\nINSERT INTO\n  nope VALUES (2);\nCREATE TABLE never(z);",
        ),
        m("0003_after.sql", "CREATE TABLE later(w);"),
    ];
    migrate(&conn, &list[..1]).unwrap();
    let before = schema(&conn);
    let rows_before: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();

    let err = migrate(&conn, &list).unwrap_err();
    match &err {
        MigrationError::Failed {
            file,
            line,
            statement,
            source,
        } => {
            assert_eq!(file, "0002_broken.sql");
            assert_eq!(*line, 5);
            assert_eq!(statement, "INSERT INTO\n  nope VALUES (2);");
            assert_eq!(source.to_string(), "no such table: nope");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "0002_broken.sql:5: no such table: nope in `INSERT INTO nope VALUES (2);`"
    );
    assert!(conn.is_autocommit(), "the transaction was rolled back");
    assert_eq!(schema(&conn), before);
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, rows_before);
    assert_eq!(records(&conn).len(), 1);
    assert_eq!(pending(&conn, &list).unwrap(), [1, 2]);

    // On a fresh database a failing first migration leaves not even the table.
    let fresh = Connection::open_in_memory().unwrap();
    let err = migrate(
        &fresh,
        &[m("0001_bad.sql", "CREATE TABLE a(x);\nSELEKT 1;")],
    )
    .unwrap_err();
    assert!(
        matches!(err, MigrationError::Failed { line: 2, .. }),
        "{err:?}"
    );
    assert_eq!(schema(&fresh), vec![]);
}

#[test]
fn a_migration_may_not_end_its_own_transaction() {
    for sql in [
        "CREATE TABLE a(x);\nCOMMIT;\nCREATE TABLE b(y);",
        "CREATE TABLE a(x);\n  end transaction;",
        "CREATE TABLE a(x);\n/* c */ ROLLBACK;",
        "CREATE TABLE a(x);\nBEGIN;",
        "CREATE TABLE a(x);\nbegin /* inner */ exclusive;",
        "CREATE TABLE a(x);\n/**/COMMIT;",
    ] {
        let conn = Connection::open_in_memory().unwrap();
        let err = migrate(&conn, &[m("0001_tx.sql", sql)]).unwrap_err();
        assert!(
            matches!(err, MigrationError::Failed { line: 2, ref file, .. } if file == "0001_tx.sql"),
            "{sql}: {err:?}"
        );
        assert!(err.to_string().contains("own transaction"), "{err}");
        assert_eq!(schema(&conn), vec![], "{sql}");
    }
}

#[test]
fn savepoints_nest_inside_a_migration() {
    let conn = Connection::open_in_memory().unwrap();
    let sql = "CREATE TABLE a(x);\nSAVEPOINT s;\nINSERT INTO a VALUES (1);\nROLLBACK TO s;\nINSERT INTO a VALUES (2);\nRELEASE s;";
    migrate(&conn, &[m("0001_sp.sql", sql)]).unwrap();
    let rows: Vec<i64> = conn
        .prepare("SELECT x FROM a")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows, [2]);
    assert!(conn.is_autocommit());
    assert_eq!(records(&conn).len(), 1);
}

#[test]
fn edited_and_missing_migrations_are_refused_without_writing() {
    let conn = Connection::open_in_memory().unwrap();
    let list = three();
    migrate(&conn, &list).unwrap();
    let changes = conn.total_changes();
    let before = schema(&conn);

    let mut edited = list.clone();
    edited[1].sql = "CREATE INDEX t_v ON t(v DESC);".into();
    edited.push(m("0004_x.sql", "CREATE TABLE x(y);"));
    let err = migrate(&conn, &edited).unwrap_err();
    assert!(matches!(
        err,
        MigrationError::Edited { ref file, ref applied, ref current }
            if file == "0002_index.sql"
                && applied == &checksum(&list[1].sql)
                && current == &checksum(&edited[1].sql)
    ));
    assert!(
        err.to_string()
            .starts_with("0002_index.sql: already applied but edited since"),
        "{err}"
    );

    let err = migrate(&conn, &list[..2]).unwrap_err();
    assert!(matches!(
        err,
        MigrationError::Missing { id: 3, ref name } if name == "0003_rows.sql"
    ));
    assert_eq!(
        err.to_string(),
        "0003_rows.sql: applied to this database (number 0003) but no longer among the migrations"
    );

    // A renamed migration with the same number and SQL still counts as applied.
    let mut renamed = list.clone();
    renamed[0] = m("0001_renamed.sql", &list[0].sql);
    assert_eq!(pending(&conn, &renamed).unwrap(), Vec::<usize>::new());

    assert_eq!(conn.total_changes(), changes);
    assert_eq!(schema(&conn), before);
}

#[test]
fn apply_refuses_inside_a_transaction_and_twice() {
    let conn = Connection::open_in_memory().unwrap();
    let first = m("0001_init.sql", "CREATE TABLE t(x);");
    conn.execute_batch("BEGIN; CREATE TABLE mine(x);").unwrap();
    let err = apply(&conn, &first).unwrap_err();
    assert!(
        matches!(err, MigrationError::Sqlite { ref file, .. } if file.as_deref() == Some("0001_init.sql")),
        "{err:?}"
    );
    assert!(
        !conn.is_autocommit(),
        "the caller's transaction is untouched"
    );
    conn.execute_batch("COMMIT").unwrap();
    assert_eq!(schema(&conn).len(), 1);

    apply(&conn, &first).unwrap();
    let before = schema(&conn);
    // Applied again with SQL that would succeed: the record's primary key refuses it.
    let again = m(
        "0001_init.sql",
        "CREATE TABLE IF NOT EXISTS t(x); INSERT INTO t VALUES (1);",
    );
    let err = apply(&conn, &again).unwrap_err();
    assert!(
        matches!(
            err,
            MigrationError::Sqlite {
                action: "recording it as applied",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(schema(&conn), before);
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0);
}

/// Runs every statement of `file` on `conn`, one by one as `kvsqlite run` does.
fn run_file(conn: &Connection, file: &Path) {
    let text = std::fs::read_to_string(file).unwrap();
    let statements = split(&text);
    assert!(!statements.is_empty(), "{}", file.display());
    for s in statements {
        if let Err(e) = execute_one(conn, &s.sql) {
            panic!("{}:{}: {e}", file.display(), s.line);
        }
    }
    assert!(
        conn.is_autocommit(),
        "{} leaves a transaction open",
        file.display()
    );
}

#[test]
fn the_example_app_migrates_and_every_example_runs_twice() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql");
    let list = load_dir(&root.join("migrations")).unwrap();
    assert_eq!(list.len(), 3);
    let dir = tempfile::tempdir().unwrap();
    let conn = Connection::open(dir.path().join("chat.sqlite")).unwrap();
    conn.execute_batch("PRAGMA foreign_keys = ON").unwrap();
    assert_eq!(migrate(&conn, &list).unwrap().applied, [1, 2, 3]);
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(count("SELECT count(*) FROM messages"), 200);
    assert_eq!(count("SELECT sum(message_count) FROM room_stats"), 200);
    assert_eq!(
        count("SELECT count(*) FROM sqlite_schema WHERE type = 'index' AND sql IS NOT NULL"),
        2
    );

    let mut examples: Vec<_> = std::fs::read_dir(root.join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 2, "{examples:?}");
    for _ in 0..2 {
        for file in &examples {
            run_file(&conn, file);
        }
    }
    // Each chat.sql run adds two messages; the triggers kept the counters right.
    assert_eq!(
        count("SELECT sum(message_count) FROM room_stats"),
        count("SELECT count(*) FROM messages")
    );
    assert_eq!(
        count("SELECT count(*) FROM users WHERE handle = 'linus'"),
        1
    );
    assert_eq!(count("SELECT count(*) FROM pragma_foreign_key_check"), 0);
    assert_eq!(migrate(&conn, &list).unwrap().already_applied, 3);
}
