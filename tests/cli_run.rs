//! `kvsqlite run` and `kvsqlite bench startup` through the built binary: an example run twice on
//! one actor, JSON lines, a failing statement (`FILE:LINE: …`, exit 1, the actor intact), a
//! missing file (exit 2), the metrics document, the per-query and perf log lines, and the
//! startup benchmark's round trips.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

/// Runs the binary from the repository root (so `sql/migrations` is the default migrations
/// directory and example paths are relative), without `KVSQLITE_KV` or `RUST_LOG`.
fn kvsqlite(args: &[&str]) -> Output {
    kvsqlite_env(args, &[])
}

fn kvsqlite_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvsqlite"));
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("KVSQLITE_KV")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("spawn kvsqlite")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
fn assert_ok(out: &Output) {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "", "nothing on stderr without RUST_LOG");
}

/// Asserts an exit code and the exact standard error.
#[track_caller]
fn assert_fails(out: &Output, code: i32, stderr: &str) {
    assert_eq!(
        (out.status.code(), text(&out.stderr).as_str()),
        (Some(code), stderr)
    );
}

fn redb_url(dir: &Path) -> String {
    format!("redb:{}", dir.join("kv.redb").display())
}

fn write(dir: &Path, name: &str, content: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p.display().to_string()
}

const UNREAD: &str = "\
slug     title    unread
-------  -------  ------
general  General  0
";

#[test]
fn an_example_runs_twice_on_the_same_actor() {
    let dir = tempfile::tempdir().unwrap();
    let url = redb_url(dir.path());
    let first = kvsqlite(&["--kv", &url, "run", "sql/examples/chat.sql"]);
    assert_ok(&first);
    let out = text(&first.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..4],
        [
            "id   author           body                                                       sent_at",
            "---  ---------------  ---------------------------------------------------------  ----------",
            "202  Ada Lovelace     Welcome, Linus -- the pinned /* notes */ are in #release.  1767243495",
            "201  Linus Torvalds   Hello everyone; glad to be here!                           1767243480",
        ]
    );
    assert_eq!(lines.len(), 2 + 20 + 1 + 3, "{out}");
    assert!(out.ends_with(&format!("\n\n{UNREAD}")), "{out}");

    let second = kvsqlite(&["--kv", &url, "run", "sql/examples/chat.sql"]);
    assert_ok(&second);
    let out = text(&second.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[2..5],
        [
            "204  Ada Lovelace     Welcome, Linus -- the pinned /* notes */ are in #release.  1767243570",
            "203  Linus Torvalds   Hello everyone; glad to be here!                           1767243555",
            "202  Ada Lovelace     Welcome, Linus -- the pinned /* notes */ are in #release.  1767243495",
        ]
    );
    assert!(out.ends_with(&format!("\n\n{UNREAD}")), "{out}");

    // Every example, again and again on the same actor.
    for _ in 0..2 {
        for f in [
            "sql/examples/chat.sql",
            "sql/examples/moderation.sql",
            "sql/examples/report.sql",
        ] {
            assert_ok(&kvsqlite(&["--kv", &url, "run", f]));
        }
    }
    let out = kvsqlite(&["--kv", &url, "run", "sql/examples/moderation.sql"]);
    assert_ok(&out);
    assert_eq!(
        text(&out.stdout),
        "\
slug     handle  role
-------  ------  ---------
general  ada     owner
random   grace   moderator
release  alan    owner

slug     message_count  counted
-------  -------------  -------
general  74             74
random   50             50
release  67             67
"
    );
}

#[test]
fn json_lines_carry_every_statement() {
    let out = kvsqlite(&["--kv", "memory:", "run", "--json", "sql/examples/chat.sql"]);
    assert_ok(&out);
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 9, "one line per statement");
    for l in &lines {
        assert_eq!(l["file"], "sql/examples/chat.sql");
        for field in ["line", "changes"] {
            assert!(l[field].is_u64(), "{field} in {l}");
        }
        for field in ["columns", "rows"] {
            assert!(l[field].is_array(), "{field} in {l}");
        }
        assert!(l["sql"].is_string());
    }
    assert_eq!(lines[0]["line"], 5);
    assert_eq!(
        lines[0]["sql"],
        "INSERT OR IGNORE INTO users(handle, display_name) VALUES ('linus', 'Linus Torvalds');"
    );
    assert_eq!(lines[0]["changes"], 1);
    assert_eq!(lines[2]["sql"], "BEGIN;");
    assert_eq!(lines[2]["changes"], 0);
    let last = &lines[8];
    assert_eq!(
        last["columns"],
        serde_json::json!(["slug", "title", "unread"])
    );
    assert_eq!(last["rows"], serde_json::json!([["general", "General", 0]]));
    assert_eq!(last["changes"], 0);
    assert_eq!(lines[7]["rows"].as_array().map(Vec::len), Some(20));
}

#[test]
fn values_print_as_documented_in_tables_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "values.sql",
        b"SELECT 1 AS i, 2.0 AS r, 0.5 AS h, 'a\tb' AS t, NULL AS n, x'ff00' AS b;\n",
    );
    // An empty migrations directory: no migrations at all.
    let empty = dir.path().join("none");
    std::fs::create_dir(&empty).unwrap();
    let out = kvsqlite(&[
        "--kv",
        "memory:",
        "run",
        "--migrations",
        empty.to_str().unwrap(),
        &f,
    ]);
    assert_ok(&out);
    assert_eq!(
        text(&out.stdout),
        "i  r    h    t     n     b\n-  ---  ---  ----  ----  -------\n1  2.0  0.5  a\\tb  NULL  x'ff00'\n"
    );
    let out = kvsqlite(&["--kv", "memory:", "run", "--json", &f]);
    assert_ok(&out);
    let v: Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(
        v["rows"],
        serde_json::json!([[1, 2.0, 0.5, "a\tb", null, {"base64": "/wA="}]])
    );
}

#[test]
fn a_failing_statement_stops_the_run_and_leaves_the_actor_intact() {
    let dir = tempfile::tempdir().unwrap();
    let url = redb_url(dir.path());
    assert_ok(&kvsqlite(&["--kv", &url, "run", "sql/examples/chat.sql"]));
    let bad = write(
        dir.path(),
        "bad.sql",
        b"SELECT 1 AS one;\nBEGIN;\nINSERT INTO users(handle, display_name) VALUES ('zed', 'Z');\n\n  SELECT nope;\nSELECT 2;\n",
    );
    let out = kvsqlite(&["--kv", &url, "run", &bad]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stdout),
        "one\n---\n1\n",
        "the run stops at the failure"
    );
    assert_eq!(
        text(&out.stderr),
        format!("{bad}:5: no such column: nope (the open transaction was rolled back)\n")
    );
    let dup = write(
        dir.path(),
        "dup.sql",
        b"-- a duplicate\nINSERT INTO users(id, handle, display_name) VALUES (1, 'x', 'y');\n",
    );
    let out = kvsqlite(&["--kv", &url, "run", &dup]);
    assert_fails(
        &out,
        1,
        &format!("{dup}:2: UNIQUE constraint failed: users.id\n"),
    );
    // The actor wakes again with its data, without the rolled-back insert.
    let check = write(
        dir.path(),
        "check.sql",
        b"SELECT count(*) AS zed FROM users WHERE handle = 'zed';\nSELECT count(*) AS linus FROM messages WHERE author_id = (SELECT id FROM users WHERE handle = 'linus');\n",
    );
    let out = kvsqlite(&["--kv", &url, "run", &check]);
    assert_ok(&out);
    assert_eq!(text(&out.stdout), "zed\n---\n0\n\nlinus\n-----\n1\n");
    assert_ok(&kvsqlite(&["--kv", &url, "run", "sql/examples/chat.sql"]));
    // A file that leaves a transaction open is rolled back and reported.
    let open = write(dir.path(), "open.sql", b"BEGIN;\nDELETE FROM messages;\n");
    let out = kvsqlite(&["--kv", &url, "run", &open]);
    let rolled = "(the open transaction was rolled back)";
    let want = format!("kvsqlite run: {open}: the file ended inside a transaction {rolled}\n");
    assert_fails(&out, 1, &want);
    let out = kvsqlite(&["--kv", &url, "run", &check]);
    assert_eq!(text(&out.stdout), "zed\n---\n0\n\nlinus\n-----\n2\n");
}

#[test]
fn files_and_migrations_that_cannot_be_read_exit_2_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let url = redb_url(dir.path());
    let ok = write(
        dir.path(),
        "ok.sql",
        b"INSERT INTO users(handle, display_name) VALUES ('q', 'Q');\n",
    );
    let out = kvsqlite(&["--kv", &url, "run", &ok, "no-such-file.sql"]);
    assert_fails(
        &out,
        2,
        "kvsqlite run: cannot read no-such-file.sql: No such file or directory (os error 2)\n",
    );
    let latin1 = write(dir.path(), "latin1.sql", b"SELECT 'caf\xe9';\n");
    let out = kvsqlite(&["--kv", &url, "run", &latin1]);
    assert_fails(
        &out,
        2,
        &format!("kvsqlite run: {latin1} is not UTF-8 text\n"),
    );
    let out = kvsqlite(&["--kv", &url, "run", "--migrations", "no/such/dir", &ok]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("kvsqlite run: migrations no/such/dir: "),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // Nothing ran: the actor was never created.
    let out = kvsqlite(&["--kv", &url, "kv", "--actor", "main", "list", "--keys-only"]);
    assert_eq!(text(&out.stdout), "");
}

#[test]
fn the_metrics_document_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("m.json");
    let out = kvsqlite(&[
        "--kv",
        "memory:",
        "run",
        "--metrics-json",
        metrics.to_str().unwrap(),
        "sql/examples/chat.sql",
    ]);
    assert_ok(&out);
    let doc: Value = serde_json::from_slice(&std::fs::read(&metrics).unwrap()).unwrap();
    for name in [
        "startup_total_ms",
        "startup_kv_round_trips",
        "sql_statements",
    ] {
        let m = &doc[name];
        assert!(m["type"].is_string(), "{name}: {m}");
        assert!(m["help"].is_string(), "{name}: {m}");
        assert!(m["value"].is_number(), "{name}: {m}");
    }
    assert_eq!(doc["startup_kv_round_trips"]["value"], 2, "a new actor");
    assert_eq!(doc["sql_statements"]["type"], "counter");
    assert!(doc["sql_statements"]["value"].as_u64().unwrap() >= 9);
}

#[test]
fn rust_log_shows_the_query_and_perf_lines() {
    let out = kvsqlite_env(
        &["--kv", "memory:", "run", "sql/examples/report.sql"],
        &[("RUST_LOG", "kvsqlite=debug")],
    );
    assert_eq!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert!(
        err.lines()
            .any(|l| l.contains("kvsqlite::query") && l.contains("kv_round_trips=")),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.contains("perf internal: check_persist_data")),
        "{err}"
    );
    assert!(
        err.lines().any(|l| l.contains("perf user: db_migrate")),
        "{err}"
    );
    assert!(
        !err.contains('\x1b'),
        "no colours when stderr is not a terminal"
    );
}

#[test]
fn bench_startup_reports_the_three_starts() {
    let out = kvsqlite(&[
        "--kv", "memory:", "bench", "startup", "--json", "--db-kb", "16",
    ]);
    assert_ok(&out);
    let v: Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    for name in ["existing", "new", "naive_existing"] {
        assert!(v[name]["wall_ms"].is_number(), "{name}: {v}");
        assert!(v[name]["phases_ms"].is_object(), "{name}: {v}");
    }
    assert_eq!(v["existing"]["kv_round_trips"], 1, "{v}");
    assert_eq!(v["new"]["kv_round_trips"], 2, "{v}");
    assert!(
        v["naive_existing"]["kv_round_trips"].as_u64().unwrap() > 1,
        "{v}"
    );
    assert!(
        v["existing"]["phases_ms"]["check_persist_data"].is_number(),
        "{v}"
    );
    assert!(v["new"]["phases_ms"]["db_migrate"].is_number(), "{v}");
}
