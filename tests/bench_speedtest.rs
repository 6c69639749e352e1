//! `kvsqlite bench speedtest`: a tiny generated script (and the speedtest1 corpus script when
//! `../shared/corpus` holds it) replayed on memory and redb; the JSON parses and carries every
//! documented field per test and in total; a replay whose final database differs from stock
//! SQLite's is an error (exit 2). No test asserts a time.

#[path = "common/cli.rs"]
mod cli;
#[path = "common/skip.rs"]
mod skip;

use std::path::Path;

use cli::{json_of, kvsqlite};
use serde_json::Value;

/// A speedtest1-shaped script: a preamble, transactions, selects, an index, VACUUM, ALTER.
fn tiny_script() -> String {
    let mut s = String::from("PRAGMA threads=0;\n-- begin test 100 200 INSERTs\nBEGIN;\nCREATE TABLE z1(a INTEGER, b INTEGER, c TEXT);\n");
    for i in 0..200 {
        s.push_str(&format!(
            "INSERT INTO z1 VALUES({}, {i}, 'row {i}');\n",
            (i * 37) % 200
        ));
    }
    s.push_str("COMMIT;\n-- end test 100\n");
    s.push_str("-- begin test 150 CREATE INDEX\nCREATE INDEX z1a ON z1(a);\n-- end test 150\n");
    s.push_str("-- begin test 160 SELECTS\n");
    for i in 0..20 {
        s.push_str(&format!(
            "SELECT count(*), avg(b) FROM z1 WHERE a BETWEEN {i} AND {};\n",
            i + 10
        ));
    }
    s.push_str("-- end test 160\n-- begin test 200 VACUUM\nVACUUM;\n-- end test 200\n");
    s.push_str("-- begin test 210 ALTER TABLE\nALTER TABLE z1 ADD COLUMN d INT DEFAULT 123;\nUPDATE z1 SET d = b * 2 WHERE b < 50;\n-- end test 210\n");
    s.push_str("-- begin test 990 ANALYZE\nANALYZE;\n-- end test 990\n");
    s
}

const TEST_FIELDS: [&str; 15] = [
    "id",
    "name",
    "kvsqlite_ms",
    "native_ms",
    "native_wal_ms",
    "native_mem_ms",
    "speed_ratio",
    "speed_ratio_wal",
    "speed_ratio_mem",
    "native_wal_full_ms",
    "kvsqlite_pipelined_ms",
    "speed_ratio_wal_full",
    "speed_ratio_pipelined_wal",
    "kv_round_trips",
    "kv_bytes_written",
];

fn run_json(url: &str, script: &Path, runs: &str) -> Value {
    run_json_with(url, script, runs, &[])
}

fn run_json_with(url: &str, script: &Path, runs: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "--kv",
        url,
        "bench",
        "speedtest",
        script.to_str().unwrap(),
        "--runs",
        runs,
        "--json",
    ];
    args.extend_from_slice(extra);
    json_of(&args)
}

/// Checks the document's shape; returns the total round trips.
fn check(v: &Value, tests: &[&str]) -> u64 {
    let list = v["tests"].as_array().unwrap();
    let ids: Vec<&str> = list.iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, tests);
    for t in list {
        for f in TEST_FIELDS {
            assert!(t.get(f).is_some(), "{f} missing in {t}");
        }
        for f in &TEST_FIELDS[2..] {
            assert!(t[f].as_f64().unwrap() >= 0.0, "{f} in {t}");
        }
    }
    let total = &v["total"];
    for f in &TEST_FIELDS[2..] {
        assert!(total[f].as_f64().unwrap() >= 0.0, "{f} in {total}");
    }
    assert_eq!(v["same_final_database"], Value::Bool(true));
    assert!(v["tables_compared"].as_u64().unwrap() >= 1);
    let per_test: u64 = list
        .iter()
        .map(|t| t["kv_round_trips"].as_u64().unwrap())
        .sum();
    let total_rt = total["kv_round_trips"].as_u64().unwrap();
    assert_eq!(per_test, total_rt, "with one run, the total is the sum");
    let per_test: u64 = list
        .iter()
        .map(|t| t["kv_bytes_written"].as_u64().unwrap())
        .sum();
    assert_eq!(per_test, total["kv_bytes_written"].as_u64().unwrap(), "{v}");
    total_rt
}

#[test]
fn tiny_script_on_memory_and_redb() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("tiny.sql");
    std::fs::write(&script, tiny_script()).unwrap();
    let ids = ["100", "150", "160", "200", "210", "990"];
    let v = run_json("memory:", &script, "1");
    let rt = check(&v, &ids);
    // The 200-row transaction commits in one put; the selects read nothing from the store.
    assert_eq!(v["tests"][0]["kv_round_trips"], 1, "{v}");
    assert_eq!(v["tests"][2]["kv_round_trips"], 0, "{v}");
    assert!(rt >= 5, "{v}");
    assert_eq!(v["runs"], 1);
    assert_eq!(v["page_compression"], true, "{v}");
    // The same replays with page values stored as they are: the same round trips, more bytes
    // (the tiny script's rows repeat, so its pages compress).
    let raw = run_json_with("memory:", &script, "1", &["--no-compress"]);
    check(&raw, &ids);
    assert_eq!(raw["page_compression"], false, "{raw}");
    for (a, b) in v["tests"]
        .as_array()
        .unwrap()
        .iter()
        .zip(raw["tests"].as_array().unwrap())
    {
        assert_eq!(a["kv_round_trips"], b["kv_round_trips"], "{a} {b}");
        let (c, r) = (
            a["kv_bytes_written"].as_u64().unwrap(),
            b["kv_bytes_written"].as_u64().unwrap(),
        );
        assert!(c <= r, "compressed {c} > raw {r}: {a} {b}");
    }
    let (c, r) = (
        v["total"]["kv_bytes_written"].as_u64().unwrap(),
        raw["total"]["kv_bytes_written"].as_u64().unwrap(),
    );
    assert!(
        c < r,
        "compressed pages should write fewer bytes: {c} against {r}"
    );
    let url = format!("redb:{}", dir.path().join("kv.redb").display());
    let v = run_json(&url, &script, "2");
    assert_eq!(v["runs"], 2);
    let list = v["tests"].as_array().unwrap();
    assert_eq!(list.len(), ids.len());
    // The table form: a header, a line per test, the total, the summary.
    let out = kvsqlite(&[
        "--kv",
        "memory:",
        "bench",
        "speedtest",
        script.to_str().unwrap(),
        "--runs",
        "1",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), ids.len() + 3, "{text}");
    assert!(
        text.lines()
            .last()
            .unwrap()
            .contains("; page compression on; kvsqlite wrote "),
        "{text}"
    );
    assert!(
        text.lines()
            .nth(ids.len() + 1)
            .unwrap()
            .starts_with("total"),
        "{text}"
    );
}

#[test]
fn a_replay_that_differs_from_stock_sqlite_fails() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("random.sql");
    std::fs::write(
        &script,
        "-- begin test 1 random\nCREATE TABLE t(x); INSERT INTO t VALUES (random());\n",
    )
    .unwrap();
    let out = kvsqlite(&[
        "--kv",
        "memory:",
        "bench",
        "speedtest",
        script.to_str().unwrap(),
        "--runs",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("differs from stock SQLite") && err.contains("table t"),
        "{err}"
    );
    let not_a_script = dir.path().join("plain.sql");
    std::fs::write(&not_a_script, "SELECT 1;\n").unwrap();
    let out = kvsqlite(&[
        "--kv",
        "memory:",
        "bench",
        "speedtest",
        not_a_script.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no `-- begin test N` markers"));
}

#[test]
fn corpus_script_replays_to_the_same_database() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/speedtest1/main_size10.sql");
    if !path.exists() {
        skip::skip(&format!(
            "{} is absent (the corpus is not here)",
            path.display()
        ));
        return;
    }
    let v = run_json("memory:", &path, "1");
    let list = v["tests"].as_array().unwrap();
    assert_eq!(list.len(), 32);
    let rt = v["total"]["kv_round_trips"].as_u64().unwrap();
    assert!(
        rt <= 40,
        "speedtest1 main size 10 took {rt} round trips (target ≤ 40)"
    );
}
