//! `kvsqlite bench scan` and `kvsqlite bench startup --sweep [--chart]` with tiny sizes: the JSON
//! parses and carries every documented field, the table prints, the chart is SVG, bad options
//! exit 2. No test asserts a time.

#[path = "common/cli.rs"]
mod cli;

use cli::{json_of, kvsqlite};

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

#[test]
fn startup_sweep_json_has_a_point_per_size_and_rtt() {
    let v = json_of(&[
        "--kv", "memory:", "bench", "startup", "--sweep", "--db-kb", "8,16", "--rtts", "0,1",
        "--json",
    ]);
    let points = v["sweep"].as_array().unwrap();
    let grid: Vec<(u64, f64)> = points
        .iter()
        .map(|p| (p["db_kb"].as_u64().unwrap(), p["rtt_ms"].as_f64().unwrap()))
        .collect();
    assert_eq!(grid, [(8, 0.0), (8, 1.0), (16, 0.0), (16, 1.0)]);
    for p in points {
        for start in ["existing", "new", "naive_existing"] {
            assert!(p[start]["wall_ms"].is_number(), "{start}: {p}");
            assert!(p[start]["phases_ms"].is_object(), "{start}: {p}");
        }
        assert_eq!(p["existing"]["kv_round_trips"], 1, "{p}");
        assert_eq!(p["new"]["kv_round_trips"], 2, "{p}");
        assert_eq!(
            p["existing_wall_per_rtt"].is_null(),
            p["rtt_ms"] == 0.0,
            "{p}"
        );
    }
    // --chart writes an SVG of the same sweep.
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("wake.svg");
    let svg_arg = svg.to_str().unwrap();
    let v = json_of(&[
        "--kv", "memory:", "bench", "startup", "--sweep", "--db-kb", "8", "--rtts", "0,1",
        "--chart", svg_arg, "--json",
    ]);
    assert_eq!(v["sweep"].as_array().unwrap().len(), 2);
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.contains("kvsqlite wake, 8 KiB"));
    // Without --sweep the output keeps its shape; several sizes need --sweep; --rtt conflicts.
    let v = json_of(&[
        "--kv", "memory:", "bench", "startup", "--db-kb", "8", "--json",
    ]);
    assert!(v.get("sweep").is_none() && v["existing"].is_object(), "{v}");
    for bad in [
        &["bench", "startup", "--db-kb", "8,16"][..],
        &["--rtt", "1", "bench", "startup", "--sweep", "--db-kb", "8"][..],
        &["bench", "startup", "--rtts", "1"][..],
        &["bench", "startup", "--sweep", "--rtts", "-1"][..],
        &["bench", "startup", "--chart", "x.svg"][..],
    ] {
        let mut args = vec!["--kv", "memory:"];
        args.extend_from_slice(bad);
        let out = kvsqlite(&args);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
}
