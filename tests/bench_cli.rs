//! `kvsqlite bench scan` and `kvsqlite bench startup --sweep` with tiny sizes: the JSON parses
//! and carries every documented field, the table prints, bad options exit 2. No test asserts a
//! time.

use std::process::{Command, Output};

use serde_json::Value;

fn kvsqlite(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvsqlite"))
        .args(args)
        .env_remove("KVSQLITE_KV")
        .output()
        .unwrap()
}

fn json_of(args: &[&str]) -> Value {
    let out = kvsqlite(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

const MEASURE: [&str; 8] = [
    "kv_round_trips",
    "open_kv_round_trips",
    "pages_fetched",
    "pages_read_ahead",
    "read_ahead_used",
    "read_ahead_wasted",
    "wasted_fraction",
    "wall_ms",
];

#[test]
fn scan_json_has_both_modes_and_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let redb = format!("redb:{}", dir.path().join("kv.redb").display());
    for url in ["memory:", redb.as_str()] {
        let v = json_of(&[
            "--kv",
            url,
            "bench",
            "scan",
            "--pages",
            "30",
            "--lookups",
            "10",
            "--json",
        ]);
        assert!(v["db_pages"].as_u64().unwrap() >= 30, "{v}");
        assert_eq!(v["rows"], 120);
        assert_eq!(v["lookups"], 10);
        let modes = v["modes"].as_array().unwrap();
        let names: Vec<&str> = modes.iter().map(|m| m["mode"].as_str().unwrap()).collect();
        assert_eq!(names, ["read_ahead", "no_read_ahead"]);
        assert_eq!(modes[1]["read_ahead_max"], 1);
        for m in modes {
            for pass in ["sequential", "random"] {
                for f in MEASURE {
                    assert!(m[pass][f].as_f64().is_some(), "{f} of {pass} in {v}");
                }
            }
        }
        // Counts, not times: read-ahead turns a page per round trip into a few round trips.
        let seq = |i: usize| modes[i]["sequential"]["kv_round_trips"].as_u64().unwrap();
        assert!(seq(0) <= 3 && seq(1) >= 25, "{v}");
    }
    let out = kvsqlite(&[
        "--kv",
        "memory:",
        "bench",
        "scan",
        "--pages",
        "10",
        "--lookups",
        "5",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 6, "{text}");
    let out = kvsqlite(&["--kv", "memory:", "bench", "scan", "--pages", "0"]);
    assert_eq!(out.status.code(), Some(2));
}
