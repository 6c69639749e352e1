//! What SQL can reach through `kvsqlite serve`, `kvsqlite run` and migrations, decided by
//! SQLite's authorizer and limits: each attack of issue 17 (items 1 and 2) with its exact
//! request and exact answer, the file that must not exist after every ATTACH attempt, the actor
//! still writable after every PRAGMA attempt, and the result, value and heap bounds.

#[path = "common/cli.rs"]
mod cli;
#[path = "common/serve.rs"]
mod serve;

use std::path::Path;

use serde_json::{json, Value};
use serve::{Server, ADMIN};

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// POSTs `{"sql": sql}` to actor `a1` as admin.
fn query(s: &Server, sql: &str) -> (u16, Value) {
    let body = json!({ "sql": sql }).to_string();
    let (st, text) = s.post("/actors/a1/query", Some(ADMIN), &body);
    (st, parse(&text))
}

fn error(msg: &str) -> Value {
    json!({ "error": msg })
}

/// Form encoding of `v` (everything but unreserved characters escaped).
fn enc(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Runs `sql` in the inspector's query box of `a1` (admin bearer token): (status, page).
fn query_box(s: &Server, sql: &str) -> (u16, String) {
    s.post(
        "/actors/a1/inspector/query",
        Some(ADMIN),
        &format!("sql={}", enc(sql)),
    )
}

/// The query box's error line as the page shows it.
fn box_error(msg: &str) -> String {
    format!("<p class=\"err\" id=\"query-error\">{msg}</p>")
}

const ATTACH_REFUSED: &str =
    "not authorized: ATTACH is refused: SQL cannot open another file or database";

/// The actor takes a write and reads it back.
#[track_caller]
fn assert_writable(s: &Server, n: i64) {
    let out = s.sql("a1", "INSERT INTO w VALUES (?)", json!([n]));
    assert_eq!(out["changes"], 1);
    let out = s.sql("a1", "SELECT count(*) FROM w WHERE n = ?", json!([n]));
    assert_eq!(out["rows"], json!([[1]]));
}

#[test]
fn attach_is_refused_by_sqlite_however_it_is_sent_and_no_file_appears() {
    let dir = tempfile::tempdir().unwrap();
    let x = dir.path().join("x.db");
    let xs = x.display().to_string();
    let s = Server::start("memory:", &[]);
    s.sql("a1", "CREATE TABLE w(n INTEGER)", json!([]));
    s.sql("other", "CREATE TABLE secret(v)", json!([]));
    s.sql("other", "INSERT INTO secret VALUES ('hidden')", json!([]));
    // The other actor's database path, as the allowed `database_list` pragma reports a1's.
    let list = s.sql("a1", "PRAGMA database_list", json!([]));
    let main = list["rows"][0][2].as_str().unwrap_or_default().to_string();
    let other = format!("{}other", main.trim_end_matches("a1"));
    assert!(
        other.starts_with('/') && other.ends_with("/other"),
        "{list}"
    );

    for sql in [
        format!("ATTACH 'file:{xs}?vfs=unix' AS p"),
        format!("/**/ATTACH 'file:{xs}?vfs=unix' AS p"),
        format!("-- a comment\n  attach database '{xs}' as p"),
        format!("ATTACH ('file:' || '{xs}') AS p"),
        format!("ATTACH '{other}' AS o"),
        format!("ATTACH 'file:{other}?vfs=kvsqlite' AS o"),
        format!("VACUUM INTO '{xs}'"),
        "DETACH main".to_string(),
        format!("SELECT load_extension('{xs}')"),
    ] {
        let (st, body) = query(&s, &sql);
        let want = if sql.starts_with("DETACH") {
            "not authorized: DETACH is refused"
        } else if sql.contains("load_extension") {
            // Extension loading is off on every connection: SQLite refuses it itself.
            "not authorized"
        } else {
            ATTACH_REFUSED
        };
        assert_eq!((st, body), (400, error(want)), "{sql}");
        assert!(!x.exists(), "{sql} created {xs}");
    }

    // Inside a batch: refused, the batch rolled back, no file.
    let batch = json!({"statements": [
        {"sql": "INSERT INTO w VALUES (1)"},
        {"sql": format!("ATTACH '{xs}' AS p")},
        {"sql": "CREATE TABLE p.x(y)"},
    ]});
    let (st, text) = s.post("/actors/a1/batch", Some(ADMIN), &batch.to_string());
    assert_eq!(
        (st, parse(&text)),
        (
            400,
            error(&format!(
                "statements[1]: {ATTACH_REFUSED} (the batch was rolled back)"
            ))
        )
    );
    assert!(!x.exists());
    assert_eq!(
        s.sql("a1", "SELECT count(*) FROM w", json!([]))["rows"],
        json!([[0]])
    );

    // Through the query box, however it is spelled.
    for sql in [
        format!("ATTACH '{xs}' AS p"),
        format!("/**/ATTACH '{xs}' AS p"),
        format!("ATTACH '{other}' AS o"),
    ] {
        let (st, page) = query_box(&s, &sql);
        assert_eq!(st, 400, "{sql}: {page}");
        assert!(
            page.contains(&box_error(&format!("refused: {ATTACH_REFUSED}"))),
            "{sql}: {page}"
        );
        assert!(!x.exists(), "{sql} created {xs}");
    }

    // The host attaches nothing at all: not even VACUUM's temporary database.
    assert_eq!(
        query(&s, "VACUUM"),
        (
            400,
            error("not authorized: ATTACH is refused here, even of a temporary database (which VACUUM attaches)")
        )
    );
    // The other actor was never reached, and the actor still works.
    assert_eq!(
        s.sql("other", "SELECT v FROM secret", json!([]))["rows"],
        json!([["hidden"]])
    );
    assert_writable(&s, 1);
}

/// After a PRAGMA attempt over HTTP: a write to `a1`'s table `p` answers 200 exactly, and the
/// settings a PRAGMA could leave behind read back at their defaults (foreign keys enforced,
/// the schema not writable, writes allowed).
#[track_caller]
fn assert_untouched(s: &Server, after: &str) {
    let body = json!({ "sql": "INSERT INTO p VALUES (1)" }).to_string();
    assert_eq!(
        s.post("/actors/a1/query", Some(ADMIN), &body),
        (200, r#"{"changes":1,"columns":[],"rows":[]}"#.to_string()),
        "a write after {after}"
    );
    for (pragma, default) in [
        ("foreign_keys", 1),
        ("writable_schema", 0),
        ("query_only", 0),
    ] {
        let body = json!({ "sql": format!("PRAGMA {pragma}") }).to_string();
        assert_eq!(
            s.post("/actors/a1/query", Some(ADMIN), &body),
            (
                200,
                format!(r#"{{"changes":0,"columns":["{pragma}"],"rows":[[{default}]]}}"#)
            ),
            "PRAGMA {pragma} after {after}"
        );
    }
}

#[test]
fn pragmas_over_http_come_from_the_allow_list_and_leave_the_actor_writable() {
    let s = Server::start("memory:", &[]);
    s.sql("a1", "CREATE TABLE w(n INTEGER)", json!([]));
    s.sql("a1", "CREATE TABLE p(n INTEGER)", json!([]));
    assert_untouched(&s, "nothing");
    let process = "is refused: it would change the whole process";
    for (sql, msg) in [
        (
            "PRAGMA hard_heap_limit=1".to_string(),
            format!("not authorized: PRAGMA hard_heap_limit {process}"),
        ),
        (
            "PRAGMA soft_heap_limit".to_string(),
            format!("not authorized: PRAGMA soft_heap_limit {process}"),
        ),
        (
            "PRAGMA temp_store_directory='/tmp'".to_string(),
            format!("not authorized: PRAGMA temp_store_directory {process}"),
        ),
        (
            "PRAGMA data_store_directory='/tmp'".to_string(),
            format!("not authorized: PRAGMA data_store_directory {process}"),
        ),
        (
            "SELECT * FROM pragma_hard_heap_limit".to_string(),
            format!("not authorized: PRAGMA hard_heap_limit {process}"),
        ),
        (
            "/**/ PRAGMA query_only=1".to_string(),
            "not authorized: PRAGMA query_only can only be read over HTTP (a setting would outlive the request)".to_string(),
        ),
        (
            "PRAGMA writable_schema=ON".to_string(),
            "not authorized: PRAGMA writable_schema can only be read over HTTP (a setting would outlive the request)".to_string(),
        ),
        (
            "PRAGMA foreign_keys=0".to_string(),
            "not authorized: PRAGMA foreign_keys can only be read over HTTP (a setting would outlive the request)".to_string(),
        ),
        (
            "PRAGMA journal_mode=DELETE".to_string(),
            "not authorized: PRAGMA journal_mode can only be read over HTTP (a setting would outlive the request)".to_string(),
        ),
        (
            "PRAGMA shrink_memory".to_string(),
            "not authorized: PRAGMA shrink_memory is not on the allow-list of PRAGMAs over HTTP".to_string(),
        ),
    ] {
        assert_eq!(query(&s, &sql), (400, error(&msg)), "{sql}");
        assert_untouched(&s, &sql);
    }
    // Inside a batch too: the batch's check for transaction control compiles nothing else (a
    // PRAGMA takes effect when it is compiled), so the refused setting never applies.
    let batch = json!({"statements": [
        {"sql": "INSERT INTO w VALUES (100)"},
        {"sql": "PRAGMA query_only=1"},
    ]});
    let (st, text) = s.post("/actors/a1/batch", Some(ADMIN), &batch.to_string());
    assert_eq!(
        (st, parse(&text)),
        (
            400,
            error("statements[1]: not authorized: PRAGMA query_only can only be read over HTTP (a setting would outlive the request) (the batch was rolled back)")
        )
    );
    assert_eq!(
        s.sql("a1", "SELECT count(*) FROM w", json!([]))["rows"],
        json!([[0]])
    );
    assert_untouched(&s, "the batch");
    // What the allow-list lets through.
    assert_eq!(
        s.sql("a1", "PRAGMA user_version = 5", json!([]))["changes"],
        0
    );
    assert_untouched(&s, "PRAGMA user_version = 5");
    assert_eq!(
        s.sql("a1", "PRAGMA user_version", json!([]))["rows"],
        json!([[5]])
    );
    assert_eq!(
        s.sql("a1", "PRAGMA query_only", json!([]))["rows"],
        json!([[0]])
    );
    assert_eq!(
        s.sql("a1", "SELECT name FROM pragma_table_info('w')", json!([]))["rows"],
        json!([["n"]])
    );
    assert_eq!(
        s.sql("a1", "PRAGMA integrity_check", json!([]))["rows"],
        json!([["ok"]])
    );
    let stats = s.sql("a1", "PRAGMA kvsqlite_stats", json!([]));
    let stats = stats["rows"][0][0].as_str().unwrap_or_default().to_string();
    assert!(parse(&stats).is_object(), "{stats}");
    assert_writable(&s, 1);
}

#[test]
fn the_query_box_reads_only_and_leaves_no_setting_behind() {
    let s = Server::start("memory:", &[]);
    s.sql("a1", "CREATE TABLE w(n INTEGER)", json!([]));
    s.sql(
        "a1",
        "CREATE TABLE parent(id INTEGER PRIMARY KEY)",
        json!([]),
    );
    s.sql(
        "a1",
        "CREATE TABLE child(p INTEGER REFERENCES parent(id))",
        json!([]),
    );
    let read_only = "can only be read here (the query box runs reads only)";
    for (i, (sql, msg)) in [
        (
            "PRAGMA query_only=1",
            format!("refused: not authorized: PRAGMA query_only {read_only}"),
        ),
        (
            "/**/PRAGMA query_only=1",
            format!("refused: not authorized: PRAGMA query_only {read_only}"),
        ),
        (
            "PRAGMA writable_schema=1",
            format!("refused: not authorized: PRAGMA writable_schema {read_only}"),
        ),
        (
            "PRAGMA foreign_keys=0",
            format!("refused: not authorized: PRAGMA foreign_keys {read_only}"),
        ),
        (
            "PRAGMA hard_heap_limit=1000000",
            "refused: not authorized: PRAGMA hard_heap_limit is refused: it would change the whole process".to_string(),
        ),
        (
            "PRAGMA soft_heap_limit=1",
            "refused: not authorized: PRAGMA soft_heap_limit is refused: it would change the whole process".to_string(),
        ),
        (
            "PRAGMA optimize",
            "refused: not authorized: PRAGMA optimize is refused: the query box runs reads only"
                .to_string(),
        ),
        (
            "/* x */ DELETE FROM w",
            "refused: not authorized: DELETE is refused: the query box runs reads only (SELECT)"
                .to_string(),
        ),
        (
            "/**/ BEGIN",
            "refused: transaction control is not allowed here (read-only queries only)"
                .to_string(),
        ),
        (
            "SAVEPOINT a",
            "refused: transaction control is not allowed here (read-only queries only)"
                .to_string(),
        ),
    ]
    .iter()
    .enumerate()
    {
        let (st, page) = query_box(&s, sql);
        assert_eq!(st, 400, "{sql}: {page}");
        assert!(page.contains(&box_error(msg)), "{sql}: {page}");
        // The actor is still writable, its checks on, its settings its own.
        assert_writable(&s, i as i64);
        assert_eq!(
            query(&s, "INSERT INTO child VALUES (42)"),
            (400, error("FOREIGN KEY constraint failed")),
            "foreign keys still checked after {sql}"
        );
        for (pragma, want) in [
            ("PRAGMA query_only", 0),
            ("PRAGMA writable_schema", 0),
            ("PRAGMA foreign_keys", 1),
        ] {
            assert_eq!(
                s.sql("a1", pragma, json!([]))["rows"],
                json!([[want]]),
                "{pragma} after {sql}"
            );
        }
    }
    // Reads work: a SELECT, a recursive CTE, the reporting pragmas.
    for (sql, cell) in [
        ("SELECT count(*) FROM w", "<td>10</td>"),
        (
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 4) SELECT sum(i) FROM c",
            "<td>10</td>",
        ),
        ("PRAGMA table_info(w)", "<td>INTEGER</td>"),
        ("PRAGMA foreign_keys", "<td>1</td>"),
    ] {
        let (st, page) = query_box(&s, sql);
        assert_eq!(st, 200, "{sql}: {page}");
        assert!(page.contains(cell), "{sql}: {page}");
    }
    // A long text cell is cut for display: its first 200 characters and its size.
    let (st, page) = query_box(&s, "SELECT printf('%.*c', 5000, 'z') AS long");
    assert_eq!(st, 200);
    assert!(
        page.contains(&format!("<td>{}… (5000 bytes)</td>", "z".repeat(200))),
        "{page}"
    );
}

#[test]
fn answers_values_and_heap_are_bounded() {
    let s = Server::start("memory:", &["--max-result-bytes", "65536"]);
    s.sql("a1", "CREATE TABLE w(n INTEGER)", json!([]));
    let over = "the answer's rows are over the limit of 65536 bytes (--max-result-bytes): ask for fewer rows or smaller values";
    // `[["aaa…"]]`: 6 bytes around the text; 65530 letters fill the bound exactly.
    let (st, body) = query(&s, "SELECT printf('%.*c', 65530, 'a')");
    assert_eq!(st, 200);
    assert_eq!(body["rows"][0][0].as_str().map(str::len), Some(65530));
    assert_eq!(
        query(&s, "SELECT printf('%.*c', 65531, 'a')"),
        (413, error(&format!("{over}; the statement was stopped")))
    );
    // Many small rows add up the same way.
    let rows = "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 100000) SELECT i FROM c";
    assert_eq!(
        query(&s, rows),
        (413, error(&format!("{over}; the statement was stopped")))
    );
    // A write whose answer is too big is stopped and rolled back.
    let insert = "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 100000) INSERT INTO w SELECT i FROM c RETURNING n";
    assert_eq!(
        query(&s, insert),
        (
            413,
            error(&format!(
                "{over}; the statement was stopped and rolled back"
            ))
        )
    );
    assert_eq!(
        s.sql("a1", "SELECT count(*) FROM w", json!([]))["rows"],
        json!([[0]])
    );
    // A batch's statements share the bound; the batch is rolled back.
    let batch = json!({"statements": [
        {"sql": "INSERT INTO w VALUES (1)"},
        {"sql": "SELECT printf('%.*c', 40000, 'a')"},
        {"sql": "SELECT printf('%.*c', 40000, 'b')"},
    ]});
    let (st, text) = s.post("/actors/a1/batch", Some(ADMIN), &batch.to_string());
    assert_eq!(
        (st, parse(&text)),
        (
            413,
            error(&format!(
                "statements[2]: {over}; the statement was stopped (the batch was rolled back)"
            ))
        )
    );
    assert_eq!(
        s.sql("a1", "SELECT count(*) FROM w", json!([]))["rows"],
        json!([[0]])
    );
    // A value over SQLITE_LIMIT_LENGTH (the same bound) is refused by SQLite before it exists.
    let too_big = "string or blob too big: a value or row may hold at most 65536 bytes here";
    for sql in [
        "SELECT zeroblob(100000000)",
        "SELECT length(printf('%.*c', 70000, 'a'))",
    ] {
        assert_eq!(query(&s, sql), (413, error(too_big)), "{sql}");
    }
    assert_writable(&s, 7);
}

#[test]
fn a_result_bound_under_64_kib_is_refused_at_start() {
    let out = cli::kvsqlite(&["--kv", "memory:", "serve", "--max-result-bytes", "65535"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: invalid value '65535' for '--max-result-bytes <BYTES>': at least 65536 bytes (the schema must stay readable)\n\nFor more information, try '--help'.\n"
    );
}

#[test]
fn a_huge_zeroblob_is_refused_without_the_host_allocating_it() {
    let s = Server::start("memory:", &[]);
    assert_eq!(
        query(&s, "SELECT zeroblob(100000000)"),
        (
            413,
            error("string or blob too big: a value or row may hold at most 8388608 bytes here")
        )
    );
    // The 100 MB value was never made: the host's peak resident set stays far below it.
    let hwm = s.vm_hwm_kib();
    assert!(hwm < 64 * 1024, "peak RSS {hwm} KiB");
    assert_eq!(query(&s, "SELECT 1").0, 200);
}

#[test]
fn hostile_sorts_and_recursive_ctes_fail_at_the_heap_limit_not_the_process() {
    let limit = 32u64 << 20;
    let s = Server::start("memory:", &["--sqlite-heap-limit", &limit.to_string()]);
    s.sql("a1", "CREATE TABLE w(n INTEGER)", json!([]));
    let nomem = format!(
        "out of memory: the statement needed more than SQLite's heap limit of {limit} bytes; it was stopped and rolled back"
    );
    for sql in [
        // A sort of more rows than the heap holds (with temporary storage in memory, as on every
        // actor connection, SQLite's sorter never spills to files).
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10000000) SELECT x FROM c ORDER BY randomblob(300)",
        // A distinct recursive CTE keeps every row in a temporary table (in memory on the host).
        "WITH RECURSIVE c(x, b) AS (SELECT 1, randomblob(200) UNION SELECT x + 1, randomblob(200) FROM c WHERE x < 10000000) SELECT count(*) FROM c",
        // A DISTINCT over more rows than the heap holds (kept sorted in a temporary index).
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10000000) SELECT count(DISTINCT randomblob(300)) FROM c",
    ] {
        assert_eq!(query(&s, sql), (400, error(&nomem)), "{sql}");
        // The host lives on and the actor works.
        assert_writable(&s, 1);
        s.sql("a1", "DELETE FROM w", json!([]));
    }
    let hwm = s.vm_hwm_kib();
    assert!(hwm < 160 * 1024, "peak RSS {hwm} KiB");
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn run_and_migrations_refuse_attach_of_a_foreign_file() {
    let dir = tempfile::tempdir().unwrap();
    let x = dir.path().join("x.db");
    let xs = x.display().to_string();
    let url = format!("redb:{}", dir.path().join("kv.redb").display());
    let file = write(
        dir.path(),
        "attach.sql",
        &format!(
            "CREATE TABLE t(y);\n/**/ ATTACH 'file:{xs}?vfs=unix' AS p;\nCREATE TABLE p.x(y);\n"
        ),
    );
    let out = cli::kvsqlite(&["--kv", &url, "run", "--actor", "a1", &file]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("{file}:2: {ATTACH_REFUSED}\n")
    );
    assert!(!x.exists());

    let migrations = dir.path().join("migrations");
    std::fs::create_dir(&migrations).unwrap();
    write(
        &migrations,
        "0001_attach.sql",
        &format!("CREATE TABLE t(y);\nATTACH '{xs}' AS p;\n"),
    );
    let ok = write(dir.path(), "ok.sql", "SELECT 1;\n");
    let m = migrations.display().to_string();
    let out = cli::kvsqlite(&[
        "--kv",
        &url,
        "run",
        "--actor",
        "a2",
        "--migrations",
        &m,
        &ok,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "kvsqlite run: cannot start actor \"a2\": 0001_attach.sql:2: {ATTACH_REFUSED} in `ATTACH '{xs}' AS p;`\n"
        )
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(!x.exists());
}
