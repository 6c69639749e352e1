//! The VFS's command-line surface: `kvsqlite kv files`, `kvsqlite bench commit --json`, and
//! `kvsqlite bench actors` with tiny sizes (its JSON parses and carries every documented field,
//! the baseline exists exactly on redb with group commit on, the table prints, bad options are
//! refused, the benchmark leaves no actor behind; `--sweep` gives one such object per actor
//! count and an SVG chart of both modes; no test asserts a time).

#[path = "common/cli.rs"]
mod cli;
#[path = "common/json.rs"]
mod json;

use std::sync::Arc;

use kvsqlite::kv::redb_store::RedbStore;
use kvsqlite::kv::{KvLimits, SharedStore};
use kvsqlite::vfs::{open_database, OpenOptions};

use json::Json;

use cli::kvsqlite;

#[test]
fn kv_files_decodes_the_layout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    {
        let store: SharedStore = Arc::new(RedbStore::open(&path, KvLimits::default()).unwrap());
        let db = open_database(store, "files", &OpenOptions::default()).unwrap();
        db.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
    }
    let url = format!("redb:{}", path.display());
    let text = cli::stdout_of(&["--kv", &url, "kv", "files", "--actor", "files"]);
    // Both pages (mostly empty) are stored compressed: 161 bytes for the two (lz4_flex's
    // output for these pages, as pinned by Cargo.lock).
    assert_eq!(
        text,
        "main     size 8192 bytes, chunk size 4096, 2 chunks (0 in stages), 2 chunk keys (2 compressed, 161 bytes stored), 0 missing, 0 malformed, 0 past the end\n\
         journal  absent\n\
         stages   none\n\
         history  4 keys\n"
    );
    let out = kvsqlite(&["--kv", &url, "kv", "files", "--actor", "nobody"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "main     absent\njournal  absent\nstages   none\n"
    );
}

#[test]
fn bench_commit_prints_round_trips_as_json() {
    let text = cli::stdout_of(&["--kv", "memory:", "bench", "commit", "--json"]);
    let text = text.trim();
    assert!(text.starts_with("[{") && text.ends_with("}]"), "{text}");
    let objects: Vec<&str> = text[2..text.len() - 2].split("},{").collect();
    assert_eq!(objects.len(), 7, "{text}");
    let field = |o: &str, name: &str| -> u64 {
        let start = o.find(&format!("\"{name}\":")).unwrap() + name.len() + 3;
        o[start..]
            .split([',', '}'])
            .next()
            .unwrap()
            .parse::<f64>()
            .unwrap() as u64
    };
    let rows: Vec<u64> = objects.iter().map(|o| field(o, "rows")).collect();
    assert_eq!(rows, vec![1, 10, 100, 1000, 10000, 2000, 1]);
    let rts: Vec<u64> = objects.iter().map(|o| field(o, "kv_round_trips")).collect();
    let pages: Vec<u64> = objects.iter().map(|o| field(o, "pages_written")).collect();
    // The README's table exactly: one put each within the limits; 10,000 rows (273 pages) in
    // ⌈(pages + 1)/128⌉ (pages staged 128 to a put, the commit record riding in the last);
    // 8 MB of random rows (2,007 pages) in 18: with history on (the default) each page's image
    // goes out once more in the redo record, incompressible here, so the puts are full by
    // bytes; the small transaction right after the big one: one round trip again.
    assert_eq!(rts, vec![1, 1, 1, 1, 3, 18, 1], "{text}");
    assert_eq!(pages, vec![2, 2, 6, 30, 273, 2007, 3], "{text}");
    assert_eq!(rts[4], (pages[4] + 1).div_ceil(128), "{}", objects[4]);
    let bytes: Vec<u64> = objects
        .iter()
        .map(|o| field(o, "kv_bytes_written"))
        .collect();
    let plain: Vec<u64> = objects
        .iter()
        .map(|o| field(o, "kv_bytes_written_no_history"))
        .collect();
    assert_eq!(rts[5], bytes[5].div_ceil(976 * 1024) + 1, "{}", objects[5]);
    // History writes more, but a small commit at most 2.5 times the bytes without it.
    for i in 0..7 {
        assert!(bytes[i] > plain[i], "{}", objects[i]);
    }
    for i in [0, 1, 6] {
        assert!(bytes[i] * 2 <= plain[i] * 5, "{}", objects[i]);
    }
    // The journaled baseline (batch-atomic off) rides on the same rows: never cheaper, and
    // a small transaction costs more than the one put (journal, pages, journal deleted).
    let journal: Vec<u64> = objects
        .iter()
        .map(|o| field(o, "journal_kv_round_trips"))
        .collect();
    for (i, o) in objects.iter().enumerate() {
        assert!(o.contains("\"journal_wall_ms\":"), "{o}");
        assert!(journal[i] >= rts[i], "{o}");
    }
    assert!(journal[0] > 1 && journal[6] > 1, "{text}");

    // The table: the same fields, named as in the JSON, a line per transaction.
    let table = cli::stdout_of(&["--kv", "memory:", "bench", "commit"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0],
        "rows\trow_bytes\tpages_written\tkv_round_trips\twall_ms\tjournal_kv_round_trips\tjournal_wall_ms\tkv_bytes_written\tkv_bytes_written_no_history"
    );
    assert_eq!(lines.len(), 8, "{table}");
    let rows: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(rows, ["1", "10", "100", "1000", "10000", "2000", "1"]);
}

/// Runs `bench actors ARGS --json` on `url` and parses its output.
fn bench_json(url: &str, args: &[&str]) -> Json {
    let mut all = vec!["--kv", url, "bench", "actors", "--json"];
    all.extend_from_slice(args);
    let text = cli::stdout_of(&all);
    assert_eq!(text.lines().count(), 1, "{text}");
    json::parse(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

const TOP: [&str; 10] = [
    "backend",
    "actors",
    "threads",
    "row_bytes",
    "rtt_ms",
    "duration_s",
    "commits_target",
    "run",
    "baseline",
    "speedup",
];
const RUN: [&str; 7] = [
    "group_commit",
    "commits",
    "wall_s",
    "commits_per_sec",
    "latency_ms",
    "transactions",
    "writes_per_transaction",
];
const LATENCY: [&str; 5] = ["mean", "p50", "p90", "p99", "max"];

/// Checks a run object's fields and returns its commit count.
fn check_run(run: &Json, group_commit: Json) -> f64 {
    assert_eq!(run.keys(), RUN);
    assert_eq!(run.get("group_commit"), &group_commit);
    let latency = run.get("latency_ms");
    assert_eq!(latency.keys(), LATENCY);
    for k in LATENCY {
        assert!(latency.get(k).num() >= 0.0, "{k}");
    }
    let (p50, p99, max) = (
        latency.get("p50").num(),
        latency.get("p99").num(),
        latency.get("max").num(),
    );
    assert!(p50 <= p99 && p99 <= max, "{latency:?}");
    assert!(run.get("wall_s").num() > 0.0);
    assert!(run.get("commits_per_sec").num() > 0.0);
    run.get("commits").num()
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

/// On redb: the run with group commit, then the baseline with one transaction per write (so
/// exactly as many transactions as commits), each of exactly the commits asked; nothing left in
/// the store afterwards.
#[test]
fn json_on_redb_has_every_field_and_a_one_fsync_per_write_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    let url = format!("redb:{}", path.display());
    let j = bench_json(
        &url,
        &["--actors", "3", "--threads", "2", "--commits", "12"],
    );
    assert_eq!(j.keys(), TOP);
    assert_eq!(j.get("backend"), &Json::Str("redb".into()));
    assert_eq!(j.get("actors").num(), 3.0);
    assert_eq!(j.get("threads").num(), 2.0);
    assert_eq!(j.get("row_bytes").num(), 100.0);
    assert_eq!(j.get("rtt_ms").num(), 0.0);
    assert_eq!(j.get("duration_s"), &Json::Null);
    assert_eq!(j.get("commits_target").num(), 12.0);

    let run = j.get("run");
    assert_eq!(check_run(run, Json::Bool(true)), 12.0);
    let t = run.get("transactions").num();
    assert!((1.0..=12.0).contains(&t), "{run:?}");
    assert_eq!(
        run.get("writes_per_transaction").num(),
        (12.0 / t * 1000.0).round() / 1000.0
    );

    let base = j.get("baseline");
    assert_eq!(check_run(base, Json::Bool(false)), 12.0);
    assert_eq!(base.get("transactions").num(), 12.0);
    assert_eq!(base.get("writes_per_transaction").num(), 1.0);
    assert!(j.get("speedup").num() > 0.0);
    assert_eq!(
        stored_entries(&path),
        0,
        "the benchmark's actors are deleted"
    );
}

/// Stores without group commit get no baseline; `?group_commit=off` is measured as the run.
#[test]
fn json_without_a_baseline_on_memory_and_with_group_commit_off() {
    let j = bench_json("memory:", &["--actors", "2", "--commits", "5"]);
    assert_eq!(j.keys(), TOP);
    assert_eq!(j.get("backend"), &Json::Str("memory".into()));
    assert_eq!(j.get("threads").num(), 2.0);
    assert_eq!(check_run(j.get("run"), Json::Null), 5.0);
    assert_eq!(j.get("run").get("transactions"), &Json::Null);
    assert_eq!(j.get("run").get("writes_per_transaction"), &Json::Null);
    assert_eq!(j.get("baseline"), &Json::Null);
    assert_eq!(j.get("speedup"), &Json::Null);

    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "redb:{}?group_commit=off",
        dir.path().join("kv.redb").display()
    );
    let j = bench_json(&url, &["--actors", "2", "--commits", "4"]);
    assert_eq!(check_run(j.get("run"), Json::Bool(false)), 4.0);
    assert_eq!(j.get("run").get("transactions").num(), 4.0);
    assert_eq!(j.get("baseline"), &Json::Null);
}

/// `--duration` and `--rtt` appear in the JSON as given.
#[test]
fn json_reports_duration_and_rtt() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("redb:{}", dir.path().join("kv.redb").display());
    let j = bench_json(&url, &["--actors", "2", "--duration", "0.1", "--rtt", "1"]);
    assert_eq!(j.get("duration_s").num(), 0.1);
    assert_eq!(j.get("commits_target"), &Json::Null);
    assert_eq!(j.get("rtt_ms").num(), 1.0);
    assert!(check_run(j.get("run"), Json::Bool(true)) >= 1.0);
    assert!(check_run(j.get("baseline"), Json::Bool(false)) >= 1.0);
}

/// Without `--json`: a header line, one row per mode and the speedup.
#[test]
fn table_has_a_row_per_mode_and_the_speedup() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("redb:{}", dir.path().join("kv.redb").display());
    let text = cli::stdout_of(&[
        "--kv",
        &url,
        "bench",
        "actors",
        "--actors",
        "2",
        "--commits",
        "4",
    ]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert_eq!(
        lines[0],
        "2 actors, 2 threads, 100 B rows, store redb, rtt 0 ms, 4 commits per run"
    );
    assert_eq!(
        lines[1],
        "mode\tcommits\twall_s\tcommits_per_sec\tmean_ms\tp50_ms\tp90_ms\tp99_ms\tmax_ms\twrites_per_fsync"
    );
    assert!(lines[2].starts_with("group_commit\t4\t"), "{text}");
    assert!(lines[3].starts_with("one_fsync_per_write\t4\t"), "{text}");
    assert!(lines[3].ends_with("\t1.0"), "{text}");
    assert!(
        lines[4].starts_with("speedup ")
            && lines[4].ends_with("x (group commit / one fsync per write)"),
        "{text}"
    );
}

/// Bad options: exit code 2 with one line saying what is wrong, nothing measured.
#[test]
fn bad_options_are_refused() {
    let out = kvsqlite(&[
        "--kv",
        "memory:",
        "bench",
        "actors",
        "--actors",
        "4",
        "--threads",
        "5",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "kvsqlite bench actors: --threads must be from 1 to the number of actors (4)\n"
    );
    assert!(out.stdout.is_empty());
    for args in [
        &["--actors", "0"][..],
        &["--duration", "0"],
        &["--duration", "-1"],
        &["--commits", "0"],
        &["--duration", "1", "--commits", "5"],
        &["--threads", "x"],
    ] {
        let mut all = vec!["--kv", "memory:", "bench", "actors"];
        all.extend_from_slice(args);
        let out = kvsqlite(&all);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).starts_with("error: "),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = kvsqlite(&["--kv", "redb:x.redb?fsync=off", "bench", "actors"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "kvsqlite bench actors: invalid store URL \"redb:x.redb?fsync=off\": unknown redb option \
         \"fsync=off\"; redb options: group_commit=on|off; accepted forms: memory:, redb:PATH, \
         postgres://USER@HOST:PORT/DB, redis://HOST:PORT, redis-cluster://HOST:PORT[,HOST:PORT...]\n"
    );
}

/// `--sweep` on redb: one point per count of `--actors-list`, each exactly the non-sweep object
/// (one thread per actor, both modes, the baseline one transaction per commit); the chart is an
/// SVG naming both series; the table has a row per count; nothing is left in the store.
#[test]
fn sweep_has_a_point_per_actor_count_and_draws_both_series() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    let url = format!("redb:{}", path.display());
    let chart = dir.path().join("commits.svg");
    let chart_arg = chart.display().to_string();
    let j = bench_json(
        &url,
        &[
            "--sweep",
            "--actors-list",
            "1,3",
            "--commits",
            "6",
            "--chart",
            &chart_arg,
        ],
    );
    assert_eq!(j.keys(), ["sweep"]);
    let Json::Arr(points) = j.get("sweep") else {
        panic!("{j:?}")
    };
    assert_eq!(points.len(), 2);
    for (p, n) in points.iter().zip([1.0, 3.0]) {
        assert_eq!(p.keys(), TOP);
        assert_eq!(p.get("actors").num(), n);
        assert_eq!(p.get("threads").num(), n);
        assert_eq!(p.get("commits_target").num(), 6.0);
        assert_eq!(check_run(p.get("run"), Json::Bool(true)), 6.0);
        let base = p.get("baseline");
        assert_eq!(check_run(base, Json::Bool(false)), 6.0);
        assert_eq!(base.get("transactions").num(), 6.0);
        assert!(p.get("speedup").num() > 0.0);
    }
    // One actor on one thread: every commit is alone in its transaction, group commit or not.
    assert_eq!(points[0].get("run").get("transactions").num(), 6.0);
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("group commit"), "{svg}");
    assert!(
        svg.contains("one fsync per write (group_commit=off)"),
        "{svg}"
    );
    assert_eq!(
        stored_entries(&path),
        0,
        "the benchmark's actors are deleted"
    );

    let text = cli::stdout_of(&[
        "--kv",
        &url,
        "bench",
        "actors",
        "--sweep",
        "--actors-list",
        "2",
        "--commits",
        "2",
    ]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(
        lines[0],
        "store redb, 100 B rows, rtt 0 ms, 2 commits per run, one thread per actor"
    );
    assert_eq!(
        lines[1],
        "actors\tgroup_commit_per_sec\tone_fsync_per_sec\tspeedup\tgroup_p50_ms\t\
         one_fsync_p50_ms\twrites_per_fsync"
    );
    assert!(lines[2].starts_with("2\t"), "{text}");
}

/// `--sweep` needs both modes (redb with group commit on), and its options need `--sweep`.
#[test]
fn sweep_is_refused_without_both_modes_and_its_options_need_it() {
    let dir = tempfile::tempdir().unwrap();
    let off = format!(
        "redb:{}?group_commit=off",
        dir.path().join("kv.redb").display()
    );
    for url in ["memory:", off.as_str()] {
        let out = kvsqlite(&["--kv", url, "bench", "actors", "--sweep", "--commits", "2"]);
        assert_eq!(out.status.code(), Some(2), "{url}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "kvsqlite bench actors: --sweep compares group commit with one fsync per write: it \
             needs a redb:PATH URL with group commit on\n"
        );
        assert!(out.stdout.is_empty());
    }
    for args in [
        &["--chart", "x.svg"][..],
        &["--actors-list", "1,2"],
        &["--sweep", "--actors", "4"],
        &["--sweep", "--threads", "2"],
        &["--sweep", "--actors-list", "0"],
        &["--sweep", "--actors-list", "x"],
    ] {
        let mut all = vec!["--kv", "memory:", "bench", "actors"];
        all.extend_from_slice(args);
        let out = kvsqlite(&all);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).starts_with("error: "),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The test JSON parser itself: nested values parse exactly, malformed text is refused.
#[test]
fn json_parser_is_strict() {
    assert_eq!(
        json::parse(r#" {"a": [1, -2.5e1, true, null], "b": {"c": "x\"\u00e9"}, "d": []} "#),
        Ok(Json::Obj(vec![
            (
                "a".into(),
                Json::Arr(vec![
                    Json::Num(1.0),
                    Json::Num(-25.0),
                    Json::Bool(true),
                    Json::Null
                ])
            ),
            (
                "b".into(),
                Json::Obj(vec![("c".into(), Json::Str("x\"é".into()))])
            ),
            ("d".into(), Json::Arr(vec![])),
        ]))
    );
    for bad in [
        "",
        "{",
        "{\"a\":1,}",
        "[1 2]",
        "{\"a\" 1}",
        "[1]x",
        "nul",
        "+1",
        "1.",
        "\"a",
    ] {
        assert!(json::parse(bad).is_err(), "{bad:?} parsed");
    }
}
