//! `kvsqlite history`, `restore`, `fork` and `export --at` on a redb store: what they print,
//! what they change, and their errors (exit 2, one line, nothing written).

#[path = "common/cli.rs"]
mod cli;

use cli::{json_of, kvsqlite, stdout_of};

fn count(kv: &str, actor: &str, dir: &std::path::Path) -> i64 {
    let sql = dir.join("count.sql");
    std::fs::write(&sql, "SELECT count(*) AS n FROM t;").unwrap();
    let out = stdout_of(&[
        "--kv",
        kv,
        "run",
        "--actor",
        actor,
        "--json",
        "--migrations",
        dir.join("none").to_str().unwrap(),
        sql.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    v["rows"][0][0].as_i64().unwrap_or_else(|| panic!("{v}"))
}

#[test]
fn history_restore_fork_and_export_at_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("none")).unwrap();
    let kv = format!("redb:{}", dir.path().join("kv.redb").display());
    let kv = kv.as_str();
    let none = dir.path().join("none");
    for (i, sql) in [
        "CREATE TABLE t(x);",
        "INSERT INTO t VALUES (1);",
        "INSERT INTO t VALUES (2);",
    ]
    .iter()
    .enumerate()
    {
        let f = dir.path().join(format!("{i}.sql"));
        std::fs::write(&f, sql).unwrap();
        stdout_of(&[
            "--kv",
            kv,
            "run",
            "--actor",
            "a",
            "--migrations",
            none.to_str().unwrap(),
            f.to_str().unwrap(),
        ]);
    }
    let h = json_of(&["--kv", kv, "history", "--actor", "a", "--json"]);
    let commits = h.as_array().unwrap();
    assert_eq!(commits.len(), 3, "{h}");
    assert_eq!(commits[2]["seq"], 3);
    assert_eq!(commits[2]["restore"], false);
    let second = commits[1]["bookmark"].as_str().unwrap().to_string();
    let table = stdout_of(&["--kv", kv, "history", "--actor", "a"]);
    assert!(table.starts_with("     seq  time"), "{table}");
    assert_eq!(table.lines().count(), 4);

    let out = stdout_of(&["--kv", kv, "restore", "--actor", "a", "--to", &second]);
    assert!(out.starts_with("restored actor \"a\" to seq 2"), "{out}");
    assert_eq!(count(kv, "a", dir.path()), 1);
    let undo = out.trim().rsplit(' ').next().unwrap().to_string();
    stdout_of(&["--kv", kv, "restore", "--actor", "a", "--to", &undo]);
    assert_eq!(count(kv, "a", dir.path()), 2);

    let out = stdout_of(&["--kv", kv, "fork", "--actor", "a", "--at", "2", "--to", "b"]);
    assert!(
        out.starts_with("forked actor \"a\" at seq 2 into \"b\""),
        "{out}"
    );
    assert_eq!(count(kv, "b", dir.path()), 1);
    assert_eq!(count(kv, "a", dir.path()), 2, "the source is unchanged");

    let file = dir.path().join("at1.sqlite");
    stdout_of(&[
        "--kv",
        kv,
        "export",
        "--actor",
        "a",
        "--at",
        "1",
        file.to_str().unwrap(),
    ]);
    let c = rusqlite::Connection::open(&file).unwrap();
    let n: i64 = c
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0, "the export holds the database as of seq 1");

    // Errors: one line, exit 2, nothing created or changed.
    let before = stdout_of(&["--kv", kv, "history", "--actor", "a", "--json"]);
    for (args, msg) in [
        (
            vec!["history", "--actor", "ghost"],
            "kvsqlite history: no actor \"ghost\" in the store",
        ),
        (
            vec!["restore", "--actor", "a", "--to", "999"],
            "kvsqlite restore: history: seq 999 is not in the history",
        ),
        (
            vec!["fork", "--actor", "a", "--at", "2", "--to", "b"],
            "kvsqlite fork: actor \"b\" already exists",
        ),
    ] {
        let mut all = vec!["--kv", kv];
        all.extend(args);
        let out = kvsqlite(&all);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with(msg), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    let out = kvsqlite(&["--kv", kv, "restore", "--actor", "a", "--to", "yesterday"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stdout_of(&["--kv", kv, "history", "--actor", "a", "--json"]),
        before
    );
}
