//! `kvsqlite bench http` with tiny sizes: on memory and redb through the in-process host, and
//! against a running `kvsqlite serve` with `--url`. The JSON parses and carries every documented
//! field, the counts add up (requests = ok + errors, one wake per actor, reads + writes =
//! requests), the table's lines, failed requests are counted and exit 2, bad options exit 2
//! with one line, and the bench's actors are deleted afterwards. No test asserts a time.

#[path = "common/cli.rs"]
mod cli;
#[path = "common/serve.rs"]
mod serve;

use std::process::{Command, Output};

use cli::{json_of, kvsqlite};
use serde_json::Value;

/// Every top-level field the README documents, in name order.
const TOP: [&str; 16] = [
    "actor_prefix",
    "actors",
    "actors_deleted",
    "backend",
    "concurrency",
    "duration_s",
    "errors",
    "first_error",
    "idle_sleep_ms",
    "load",
    "requests_target",
    "rows",
    "rtt_ms",
    "url",
    "wake",
    "write_percent",
];

const WAKE: [&str; 8] = [
    "errors",
    "kv_round_trips",
    "kv_round_trips_per_wake",
    "latency_ms",
    "ok",
    "requests",
    "wakes",
    "wall_s",
];

const LOAD: [&str; 13] = [
    "errors",
    "kv_round_trips",
    "kv_round_trips_per_request",
    "latency_ms",
    "ok",
    "read_latency_ms",
    "reads",
    "requests",
    "requests_per_sec",
    "wakes",
    "wall_s",
    "write_latency_ms",
    "writes",
];

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    k.sort_unstable();
    k
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// A latency object: five numbers, ordered as percentiles are.
fn check_latency(l: &Value) {
    assert_eq!(keys(l), ["max", "mean", "p50", "p90", "p99"], "{l}");
    let f = |k: &str| l[k].as_f64().unwrap_or_else(|| panic!("{k} of {l}"));
    assert!(
        f("p50") <= f("p90") && f("p90") <= f("p99") && f("p99") <= f("max"),
        "{l}"
    );
    assert!(f("mean") >= 0.0, "{l}");
}

/// The checks every successful run passes: fields, and counts that add up.
fn check_report(v: &Value, actors: u64, requests: u64) {
    assert_eq!(keys(v), TOP, "{v}");
    assert_eq!(keys(&v["wake"]), WAKE, "{v}");
    assert_eq!(keys(&v["load"]), LOAD, "{v}");
    assert_eq!(u(&v["actors"]), actors);
    assert_eq!(u(&v["requests_target"]), requests);
    assert_eq!(v["duration_s"], Value::Null);
    assert!(v["actor_prefix"]
        .as_str()
        .is_some_and(|p| p.starts_with("bench-http-")));

    let w = &v["wake"];
    assert_eq!(
        u(&w["requests"]),
        actors,
        "one first request per actor: {v}"
    );
    assert_eq!(u(&w["ok"]) + u(&w["errors"]), u(&w["requests"]));
    assert_eq!(
        u(&w["wakes"]),
        actors,
        "each first request woke its actor: {v}"
    );
    // Waking an existing actor is one KV round trip (the preload read).
    assert_eq!(w["kv_round_trips_per_wake"].as_f64(), Some(1.0), "{v}");
    check_latency(&w["latency_ms"]);

    let l = &v["load"];
    assert_eq!(u(&l["requests"]), requests, "{v}");
    assert_eq!(u(&l["ok"]) + u(&l["errors"]), requests, "{v}");
    assert_eq!(u(&l["reads"]) + u(&l["writes"]), requests, "{v}");
    assert!(
        l["requests_per_sec"].as_f64().is_some_and(|r| r > 0.0),
        "{v}"
    );
    assert!(l["wall_s"].as_f64().is_some_and(|r| r > 0.0), "{v}");
    assert!(l["kv_round_trips_per_request"].as_f64().is_some(), "{v}");
    for k in ["latency_ms", "read_latency_ms", "write_latency_ms"] {
        check_latency(&l[k]);
    }
    assert_eq!(u(&v["errors"]), u(&w["errors"]) + u(&l["errors"]), "{v}");
}

fn stored_entries(path: &std::path::Path) -> u64 {
    use redb::{ReadableDatabase, ReadableTableMetadata};
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let table = txn
        .open_table(redb::TableDefinition::<&[u8], &[u8]>::new("kvsqlite_kv"))
        .unwrap();
    table.len().unwrap()
}

const TINY: [&str; 10] = [
    "bench",
    "http",
    "--actors",
    "3",
    "--requests",
    "40",
    "--concurrency",
    "2",
    "--idle-sleep-ms",
    "100",
];

#[test]
fn in_process_on_memory_and_redb_every_field_and_counts_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    let redb = format!("redb:{}", path.display());
    for (url, backend) in [("memory:", "memory"), (redb.as_str(), "redb")] {
        let mut args = vec!["--kv", url];
        args.extend_from_slice(&TINY);
        args.push("--json");
        let v = json_of(&args);
        check_report(&v, 3, 40);
        assert_eq!(v["backend"], backend);
        assert_eq!(v["url"], Value::Null);
        assert_eq!(v["rtt_ms"].as_f64(), Some(0.0));
        assert_eq!(u(&v["concurrency"]), 2);
        assert_eq!(u(&v["write_percent"]), 20);
        assert_eq!(u(&v["rows"]), 100);
        assert_eq!(u(&v["idle_sleep_ms"]), 100);
        assert_eq!(u(&v["errors"]), 0, "{v}");
        assert_eq!(v["first_error"], Value::Null);
        assert_eq!(u(&v["load"]["ok"]), 40);
        assert_eq!(v["actors_deleted"], true);
        // Round trips: a first request is its wake's one round trip (the read is served by the
        // preload); in the load a read costs none and the writes cost one put each, except that
        // the host pipelines commits, so writes to one actor that arrive while its put is in
        // flight share the next put; plus one per wake of an actor that slept in the middle (a
        // stalled machine can cause one).
        assert_eq!(u(&v["wake"]["kv_round_trips"]), 3, "{v}");
        let l = &v["load"];
        let (rt, writes, wakes) = (u(&l["kv_round_trips"]), u(&l["writes"]), u(&l["wakes"]));
        assert!(rt <= writes + wakes, "{v}");
        assert!(rt >= wakes + u64::from(writes > 0), "{v}");
    }
    assert_eq!(stored_entries(&path), 0, "the bench's actors are deleted");
}

#[test]
fn duration_rtt_and_an_all_read_mix() {
    let v = json_of(&[
        "--kv",
        "memory:",
        "--rtt",
        "1",
        "bench",
        "http",
        "--actors",
        "2",
        "--duration",
        "0.3",
        "--write-percent",
        "0",
        "--idle-sleep-ms",
        "100",
        "--json",
    ]);
    assert_eq!(v["rtt_ms"].as_f64(), Some(1.0));
    assert_eq!(v["requests_target"], Value::Null);
    assert_eq!(v["duration_s"].as_f64(), Some(0.3));
    let l = &v["load"];
    assert!(u(&l["requests"]) > 0, "{v}");
    assert_eq!(u(&l["writes"]), 0, "{v}");
    assert_eq!(u(&l["reads"]), u(&l["requests"]));
    assert_eq!(u(&l["ok"]), u(&l["requests"]), "{v}");
    assert_eq!(u(&v["wake"]["wakes"]), 2);
    // Reads of awake actors are served from their page cache: no KV round trip. The only
    // round trips are wakes (one each) of an actor that slept in the middle of the load, which
    // a stalled machine can cause.
    assert_eq!(u(&l["kv_round_trips"]), u(&l["wakes"]), "{v}");
    // An empty write histogram reports zeros.
    assert_eq!(l["write_latency_ms"]["max"].as_f64(), Some(0.0));
}

#[test]
fn the_table_has_a_line_per_phase() {
    let mut args = vec!["--kv", "memory:"];
    args.extend_from_slice(&TINY);
    let out = kvsqlite(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stderr.is_empty(), "no progress bar off a terminal");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 8, "{text}");
    assert_eq!(
        lines[0],
        "3 actors of 100 rows, 2 clients, 20% writes, 40 requests, in-process host, store memory, rtt 0 ms"
    );
    assert_eq!(
        lines[1],
        "phase\trequests\tok\terrors\twall_s\treq_per_sec\tmean_ms\tp50_ms\tp90_ms\tp99_ms\tmax_ms"
    );
    let first = |l: &str| l.split('\t').take(4).collect::<Vec<_>>().join(" ");
    assert_eq!(first(lines[2]), "wake 3 3 0");
    assert_eq!(first(lines[3]), "query 40 40 0");
    assert!(lines[4].starts_with("read\t") && lines[4].contains("\t-\t-\t-\t-\t"));
    assert!(lines[5].starts_with("write\t"));
    for l in &lines[2..6] {
        assert_eq!(l.split('\t').count(), 11, "{l}");
    }
    let reads: u64 = lines[4].split('\t').nth(1).unwrap().parse().unwrap();
    let writes: u64 = lines[5].split('\t').nth(1).unwrap().parse().unwrap();
    assert_eq!(reads + writes, 40);
    assert!(
        lines[6].starts_with("wakes 3, KV round trips per wake 1.00; wakes during the load "),
        "{}",
        lines[6]
    );
    assert!(
        lines[7].starts_with("actors bench-http-") && lines[7].ends_with("-* deleted"),
        "{}",
        lines[7]
    );
}

#[test]
fn bad_options_exit_2_with_one_line() {
    for args in [
        &["--concurrency", "0"][..],
        &["--actors", "0"],
        &["--requests", "0"],
        &["--write-percent", "101"],
        &["--rows", "0"],
        &["--duration", "0"],
        &["--requests", "5", "--duration", "1"],
        &["--url", "http://127.0.0.1:1", "--idle-sleep-ms", "10"],
    ] {
        let mut all = vec!["--kv", "memory:", "bench", "http"];
        all.extend_from_slice(args);
        let out = kvsqlite(&all);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("error: "), "{args:?}: {err}");
    }
    let out = kvsqlite(&["bench", "http", "--url", "ftp://127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "kvsqlite bench http: --url must be http://HOST:PORT (got \"ftp://127.0.0.1:1\")\n"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_kvsqlite"))
        .args(["bench", "http", "--url", "http://127.0.0.1:1"])
        .env_remove("KVSQLITE_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "kvsqlite bench http: --url needs the server's admin token in KVSQLITE_ADMIN_TOKEN\n"
    );
}

/// `kvsqlite bench http --url BASE ARGS…` with the admin token `token`.
fn bench_url(base: &str, token: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvsqlite"))
        .args(["bench", "http", "--url", base])
        .args(args)
        .env("KVSQLITE_ADMIN_TOKEN", token)
        .env_remove("KVSQLITE_KV")
        .output()
        .unwrap()
}

/// Against a running `kvsqlite serve`: the same report, the server's counters, the actors left
/// in its store (no route deletes an actor) and readable there.
#[test]
fn url_loads_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let kv = format!("redb:{}", dir.path().join("kv.redb").display());
    let server = serve::Server::start(&kv, &["--idle-sleep-ms", "100"]);
    let out = bench_url(
        &server.base,
        &server.admin,
        &["--actors", "2", "--requests", "30", "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    check_report(&v, 2, 30);
    assert_eq!(v["url"], server.base.as_str());
    assert_eq!(v["backend"], Value::Null);
    assert_eq!(v["rtt_ms"], Value::Null);
    assert_eq!(v["idle_sleep_ms"], Value::Null);
    assert_eq!(v["actors_deleted"], false);
    assert_eq!(u(&v["errors"]), 0, "{v}");
    let prefix = v["actor_prefix"].as_str().unwrap();
    let rows = server.sql(
        &format!("{prefix}-1"),
        "SELECT count(*) FROM kv",
        Value::Null,
    );
    assert_eq!(rows["rows"], serde_json::json!([[100]]));
    let m = server.metrics();
    assert_eq!(m["kvsqlite_creations_total"], 2.0);
    assert!(m["kvsqlite_wakes_total"] >= 4.0, "{m:?}");

    // A wrong token: the setup fails, nothing is measured.
    let out = bench_url(&server.base, "wrong", &["--actors", "1", "--requests", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("kvsqlite bench http: creating the bench's actors failed: setup: POST /actors/bench-http-")
            && err.contains("/batch: status 401: ")
            && err.lines().count() == 1,
        "{err}"
    );
}

/// Failed requests are counted, not fatal: a server whose migration refuses every `UPDATE`
/// answers each load write 400; the report still prints, then one line names the first
/// failure, and the exit code is 2.
#[test]
fn failed_requests_are_counted_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let migrations = dir.path().join("migrations");
    std::fs::create_dir(&migrations).unwrap();
    std::fs::write(
        migrations.join("0001_refuse_updates.sql"),
        "CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT NOT NULL);\n\
         CREATE TRIGGER refuse BEFORE UPDATE ON kv BEGIN SELECT RAISE(ABORT, 'updates refused'); END;\n",
    )
    .unwrap();
    let kv = format!("redb:{}", dir.path().join("kv.redb").display());
    let server = serve::Server::start(
        &kv,
        &[
            "--idle-sleep-ms",
            "100",
            "--migrations",
            migrations.to_str().unwrap(),
        ],
    );
    let out = bench_url(
        &server.base,
        &server.admin,
        &[
            "--actors",
            "2",
            "--requests",
            "40",
            "--write-percent",
            "50",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let l = &v["load"];
    let writes = u(&l["writes"]);
    assert!(writes > 0, "{v}");
    assert_eq!(u(&l["errors"]), writes, "every write failed: {v}");
    assert_eq!(u(&l["ok"]), u(&l["reads"]), "every read succeeded: {v}");
    assert_eq!(u(&v["errors"]), writes);
    assert_eq!(u(&v["wake"]["errors"]), 0);
    let first = v["first_error"].as_str().unwrap();
    assert!(
        first.starts_with("load: POST /actors/bench-http-")
            && first.contains("/query: status 400: ")
            && first.contains("updates refused"),
        "{first}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err,
        format!("kvsqlite bench http: {writes} requests failed; the first: {first}\n")
    );
}
