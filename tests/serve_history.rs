//! History over HTTP (`GET /actors/{id}/history`, `POST …/restore`, `POST …/fork`), the
//! host's background compaction, and `--retention` / `--retention-bytes` on `serve` and `run`:
//! exact requests and answers.
//!
//! The stale-host test needs the PostgreSQL test server (two hosts on one store): without it
//! it prints `SKIPPED: …`, or fails under `CI=true`.

#[path = "common/cli.rs"]
mod cli;
#[path = "common/pg.rs"]
mod pg;
#[path = "common/serve.rs"]
mod serve;

use std::time::{Duration, Instant};

use kvsqlite::kv::{KvLimits, ListRequest, SharedStore};
use kvsqlite::vfs::layout::{parse_key, ParsedKey};
use serde_json::{json, Value};
use serve::{Server, ADMIN};

fn open(url: &str) -> SharedStore {
    kvsqlite::kv::url::open_store(url, KvLimits::default(), None).expect("the store opens")
}

/// Every key and value the store holds for `actor`.
fn dump(store: &SharedStore, actor: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut req = ListRequest::prefix(Vec::new());
    for _ in 0..10_000 {
        let page = store.list(actor, &req).expect("list");
        out.extend(page.entries);
        match page.next_start {
            Some(k) => {
                req = ListRequest {
                    range: kvsqlite::kv::KeyRange::Range {
                        start: k,
                        end: None,
                    },
                    limit: None,
                    max_bytes: None,
                }
            }
            None => return out,
        }
    }
    panic!("the listing of {actor} did not end");
}

fn is_history_key(k: &[u8]) -> bool {
    matches!(
        parse_key(k),
        Some(ParsedKey::History(_) | ParsedKey::HistoryPart(..) | ParsedKey::HistoryBase(_))
    )
}

/// (status, JSON body).
fn call(s: &Server, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let (st, text) = match method {
        "GET" => s.get(path, token),
        _ => s.post(path, token, body),
    };
    let v = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({st}): {text}"));
    (st, v)
}

fn post(s: &Server, path: &str, body: Value) -> (u16, Value) {
    call(s, "POST", path, Some(ADMIN), &body.to_string())
}

fn history(s: &Server, actor: &str, query: &str) -> Value {
    let (st, v) = call(
        s,
        "GET",
        &format!("/actors/{actor}/history{query}"),
        Some(ADMIN),
        "",
    );
    assert_eq!(st, 200, "{v}");
    v
}

fn seqs(h: &Value) -> Vec<u64> {
    h["commits"]
        .as_array()
        .expect("commits")
        .iter()
        .map(|c| c["seq"].as_u64().expect("seq"))
        .collect()
}

fn rows(s: &Server, actor: &str) -> Value {
    s.sql(actor, "SELECT x FROM t ORDER BY rowid", json!([]))["rows"].clone()
}

fn error_of(v: &Value) -> &str {
    v["error"].as_str().unwrap_or_default()
}

#[test]
fn history_restore_undo_and_fork_over_http() {
    let s = Server::start("memory:", &[]);
    for sql in [
        "CREATE TABLE t(x)",
        "INSERT INTO t VALUES (1)",
        "INSERT INTO t VALUES (2)",
        "DELETE FROM t",
    ] {
        s.sql("a", sql, json!([]));
    }
    // The token comes first.
    let (st, v) = call(&s, "GET", "/actors/a/history", None, "");
    assert_eq!(st, 401, "{v}");
    let (st, v) = call(&s, "GET", "/actors/a/history", Some("wrong"), "");
    assert_eq!(st, 401, "{v}");

    let h = history(&s, "a", "");
    assert_eq!(seqs(&h), vec![4, 3, 2, 1]);
    assert_eq!(h["next_before"], Value::Null);
    let commits = h["commits"].as_array().unwrap().clone();
    assert_eq!(h["current"], commits[0]["bookmark"]);
    for c in &commits {
        assert_eq!(c["restore"], false, "{c}");
        assert!(c["pages"].as_u64().unwrap() >= 1, "{c}");
        assert!(c["bytes"].as_u64().unwrap() > 0, "{c}");
        assert_eq!(c["bookmark"].as_str().unwrap().len(), 32, "{c}");
        assert!(c["time_ms"].as_u64().unwrap() > 0, "{c}");
    }
    let b = |seq: u64| commits[4 - seq as usize]["bookmark"].clone();
    // Paging, newest first.
    let p1 = history(&s, "a", "?limit=2");
    assert_eq!(seqs(&p1), vec![4, 3]);
    assert_eq!(p1["next_before"], 3);
    let p2 = history(&s, "a", "?limit=2&before=3");
    assert_eq!(seqs(&p2), vec![2, 1]);
    assert_eq!(p2["next_before"], Value::Null);
    for q in ["?limit=0", "?limit=1001", "?limit=x", "?before=-1"] {
        let (st, v) = call(&s, "GET", &format!("/actors/a/history{q}"), Some(ADMIN), "");
        assert_eq!(st, 400, "{q}: {v}");
    }

    // Restore to seq 3 (two rows), then undo it.
    let (st, r) = post(&s, "/actors/a/restore", json!({ "to": b(3) }));
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["restored_to"], 3);
    assert_eq!(r["undo"], b(4));
    assert_ne!(r["bookmark"], b(4));
    assert_eq!(rows(&s, "a"), json!([[1], [2]]));
    let after = history(&s, "a", "");
    assert_eq!(seqs(&after), vec![5, 4, 3, 2, 1]);
    assert_eq!(after["commits"][0]["restore"], true);
    assert_eq!(after["commits"][0]["bookmark"], r["bookmark"]);
    let (st, u) = post(&s, "/actors/a/restore", json!({ "to": r["undo"] }));
    assert_eq!(st, 200, "{u}");
    assert_eq!(u["restored_to"], 4);
    assert_eq!(u["undo"], r["bookmark"]);
    assert_eq!(rows(&s, "a"), json!([]));
    // By seq, and by time (the commit time of seq 2).
    let (st, v) = post(&s, "/actors/a/restore", json!({ "seq": 2 }));
    assert_eq!((st, v["restored_to"].clone()), (200, json!(2)), "{v}");
    assert_eq!(rows(&s, "a"), json!([[1]]));
    let t3 = commits[1]["time_ms"].as_u64().unwrap();
    let (st, v) = post(&s, "/actors/a/restore", json!({ "time": t3 }));
    assert_eq!(st, 200, "{v}");
    assert!(v["restored_to"].as_u64().unwrap() >= 3, "{v}");

    // Errors: outside the history 404; malformed 400; no token 401; unknown actor 404.
    let hist_before = history(&s, "a", "");
    let (st, v) = post(
        &s,
        "/actors/a/restore",
        json!({ "to": "00000000000000010000000000000002" }),
    );
    assert_eq!(st, 404, "{v}");
    assert!(error_of(&v).contains("is not in the history"), "{v}");
    let (st, v) = post(&s, "/actors/a/restore", json!({ "seq": 999 }));
    assert_eq!(st, 404, "{v}");
    assert!(
        error_of(&v).contains("seq 999 is not in the history"),
        "{v}"
    );
    let (st, v) = post(&s, "/actors/a/restore", json!({ "time": 1 }));
    assert_eq!(st, 404, "{v}");
    assert!(error_of(&v).contains("no commit at or before 1 ms"), "{v}");
    for bad in [
        json!({}),
        json!({ "to": "nope" }),
        json!({ "to": b(2), "seq": 2 }),
        json!({ "seq": "two" }),
        json!([1]),
    ] {
        let (st, v) = post(&s, "/actors/a/restore", bad.clone());
        assert_eq!(st, 400, "{bad}: {v}");
    }
    let (st, v) = call(&s, "POST", "/actors/a/restore", Some(ADMIN), "{not json");
    assert_eq!(st, 400, "{v}");
    let (st, v) = call(
        &s,
        "POST",
        "/actors/a/restore",
        None,
        &json!({ "seq": 1 }).to_string(),
    );
    assert_eq!(st, 401, "{v}");
    assert_eq!(history(&s, "a", ""), hist_before, "a refused restore wrote");
    for (path, body) in [
        ("/actors/nobody/restore", json!({ "seq": 1 })),
        ("/actors/nobody/fork", json!({ "at": 1, "to": "x" })),
    ] {
        let (st, v) = post(&s, path, body);
        assert_eq!(st, 404, "{path}: {v}");
    }
    let (st, v) = call(&s, "GET", "/actors/nobody/history", Some(ADMIN), "");
    assert_eq!(st, 404, "{v}");
    // …and none of them created it.
    let (st, _) = call(&s, "GET", "/actors/nobody/inspector/token", Some(ADMIN), "");
    assert_eq!(st, 404);

    // A fork at seq 3: the new actor's rows; the source untouched.
    let source_rows = rows(&s, "a");
    let (st, f) = post(&s, "/actors/a/fork", json!({ "at": b(3), "to": "b" }));
    assert_eq!(st, 200, "{f}");
    assert_eq!(f["actor"], "b");
    assert_eq!(f["seq_of_source"], 3);
    assert_eq!(rows(&s, "b"), json!([[1], [2]]));
    assert_eq!(rows(&s, "a"), source_rows);
    let hb = history(&s, "b", "");
    assert_eq!(seqs(&hb), vec![1]);
    assert_eq!(hb["current"], f["bookmark"]);
    // Onto an existing actor: 409, nothing changed.
    let (st, v) = post(&s, "/actors/a/fork", json!({ "at": 1, "to": "b" }));
    assert_eq!(st, 409, "{v}");
    assert!(error_of(&v).contains("already exists"), "{v}");
    assert_eq!(rows(&s, "b"), json!([[1], [2]]));
    // Without "at": the current commit. An actor that was only asked about: forkable.
    let (st, _) = call(&s, "GET", "/actors/c/history", Some(ADMIN), "");
    assert_eq!(st, 404);
    let (st, f) = post(&s, "/actors/a/fork", json!({ "to": "c" }));
    assert_eq!(st, 200, "{f}");
    assert_eq!(rows(&s, "c"), source_rows);
    for bad in [
        json!({ "at": 1 }),
        json!({ "at": 1, "to": "a/b" }),
        json!({ "at": 1, "to": "a" }),
        json!({ "at": "yesterday", "to": "d" }),
    ] {
        let (st, v) = post(&s, "/actors/a/fork", bad.clone());
        assert_eq!(st, 400, "{bad}: {v}");
    }
    let (st, v) = post(&s, "/actors/a/fork", json!({ "at": 999, "to": "d" }));
    assert_eq!(st, 404, "{v}");
    let (st, _) = call(&s, "GET", "/actors/d/inspector/token", Some(ADMIN), "");
    assert_eq!(st, 404, "a refused fork created its target");
    let m = s.metrics();
    assert_eq!(m["kvsqlite_errors_total{kind=\"conflict\"}"], 1.0);
    let (status, stderr) = s.terminate();
    assert!(status.success(), "{status:?}: {stderr}");
}

/// Two hosts on one PostgreSQL store: the host whose instance is stale answers 503 "actor
/// moved" to a restore and writes nothing; woken afresh, it restores.
#[test]
fn a_stale_hosts_restore_is_refused_and_writes_nothing() {
    if pg::test_store().is_none() {
        return;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let actor = format!("hist-{}-{nanos}", std::process::id());
    let url = pg::test_url();
    let store = open(&url);
    let a = Server::start(&url, &[]);
    let b = Server::start(&url, &[]);
    a.sql(&actor, "CREATE TABLE t(x)", json!([]));
    a.sql(&actor, "INSERT INTO t VALUES ('a1')", json!([]));
    let mark = history(&a, &actor, "")["current"].clone();
    // b wakes the actor and writes: a's instance is stale.
    b.sql(&actor, "INSERT INTO t VALUES ('b1')", json!([]));
    let before = dump(&store, &actor);
    let (st, v) = post(
        &a,
        &format!("/actors/{actor}/restore"),
        json!({ "to": mark }),
    );
    assert_eq!(st, 503, "{v}");
    assert!(error_of(&v).contains("actor moved"), "{v}");
    assert_eq!(dump(&store, &actor), before, "the refused restore wrote");
    assert_eq!(rows(&b, &actor), json!([["a1"], ["b1"]]));
    // a woke afresh: its restore lands, and b's instance is stale in turn.
    let (st, v) = post(
        &a,
        &format!("/actors/{actor}/restore"),
        json!({ "to": mark }),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(rows(&a, &actor), json!([["a1"]]));
    let (st, v) = call(
        &b,
        "POST",
        &format!("/actors/{actor}/query"),
        Some(ADMIN),
        &json!({ "sql": "INSERT INTO t VALUES ('lost')" }).to_string(),
    );
    assert_eq!(st, 503, "{v}");
    assert_eq!(rows(&b, &actor), json!([["a1"]]));
    for s in [a, b] {
        let (status, stderr) = s.terminate();
        assert!(status.success(), "{status:?}: {stderr}");
    }
    store.delete_range(&actor, &[], None).expect("cleanup");
}

/// Polls `/healthz` until no actor is awake (bounded).
fn wait_all_asleep(s: &Server) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v) = call(s, "GET", "/healthz", None, "");
        if v["actors_awake"] == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the actors never slept: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_host_compacts_history_past_the_window_when_an_actor_goes_idle() {
    let dir = tempfile::tempdir().unwrap();
    let kv = format!("redb:{}", dir.path().join("kv.redb").display());
    let s = Server::start(&kv, &["--retention", "3s", "--idle-sleep-ms", "1000"]);
    for sql in [
        "CREATE TABLE t(x)",
        "INSERT INTO t VALUES (1)",
        "INSERT INTO t VALUES (2)",
    ] {
        s.sql("a", sql, json!([]));
    }
    assert_eq!(seqs(&history(&s, "a", "")), vec![3, 2, 1]);
    // Past the window of the first three commits (the actor slept meanwhile: nothing was old
    // enough then).
    std::thread::sleep(Duration::from_millis(3500));
    s.sql("a", "INSERT INTO t VALUES (3)", json!([]));
    assert_eq!(seqs(&history(&s, "a", "")), vec![4, 3, 2, 1]);
    // The idle sweep compacts, then puts the actor to sleep.
    wait_all_asleep(&s);
    let h = history(&s, "a", "");
    assert_eq!(seqs(&h), vec![4], "{h}");
    let (st, v) = post(&s, "/actors/a/restore", json!({ "seq": 2 }));
    assert_eq!(st, 404, "{v}");
    assert_eq!(rows(&s, "a"), json!([[1], [2], [3]]));
    // A fork onto an actor that exists in the store but sleeps: 409 from the store's records.
    s.sql("z", "CREATE TABLE z(y)", json!([]));
    wait_all_asleep(&s);
    let (st, v) = post(&s, "/actors/a/fork", json!({ "to": "z" }));
    assert_eq!(st, 409, "{v}");
    assert_eq!(
        s.sql("z", "SELECT name FROM sqlite_schema", json!([]))["rows"],
        json!([["z"]])
    );
    let (status, stderr) = s.terminate();
    assert!(status.success(), "{status:?}: {stderr}");
    // No record of seqs 1–3 is left in the store.
    let store = open(&kv);
    let left: Vec<u64> = dump(&store, "a")
        .iter()
        .filter_map(|(k, _)| match parse_key(k) {
            Some(ParsedKey::History(seq) | ParsedKey::HistoryPart(seq, _)) => Some(seq),
            _ => None,
        })
        .collect();
    assert!(left.iter().all(|&seq| seq == 4), "{left:?}");
}

#[test]
fn retention_zero_on_serve_keeps_no_history() {
    let s = Server::start("memory:", &["--retention", "0"]);
    s.sql("a", "CREATE TABLE t(x)", json!([]));
    s.sql("a", "INSERT INTO t VALUES (1)", json!([]));
    let h = history(&s, "a", "");
    assert_eq!(h["commits"], json!([]));
    assert_eq!(h["current"].as_str().unwrap().len(), 32);
    // The current commit is the one restorable target: nothing to write.
    let (st, v) = post(&s, "/actors/a/restore", json!({ "to": h["current"] }));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["pages"], 0);
    assert_eq!(v["bookmark"], h["current"]);
    let (st, v) = post(&s, "/actors/a/restore", json!({ "seq": 1 }));
    assert_eq!(st, 404, "{v}");
    let (status, stderr) = s.terminate();
    assert!(status.success(), "{status:?}: {stderr}");
}

#[test]
fn retention_flags_on_run() {
    let dir = tempfile::tempdir().unwrap();
    let kv = format!("redb:{}", dir.path().join("kv.redb").display());
    let none = dir.path().join("none");
    std::fs::create_dir(&none).unwrap();
    let sql = dir.path().join("w.sql");
    std::fs::write(
        &sql,
        "CREATE TABLE t(x); INSERT INTO t VALUES (1); INSERT INTO t VALUES (2);",
    )
    .unwrap();
    for (actor, flags) in [
        ("off", &["--retention", "0"][..]),
        ("off-bytes", &["--retention-bytes", "0"][..]),
        ("on", &[][..]),
    ] {
        let mut args = vec![
            "--kv",
            &kv,
            "run",
            "--actor",
            actor,
            "--migrations",
            none.to_str().unwrap(),
        ];
        args.extend_from_slice(flags);
        args.push(sql.to_str().unwrap());
        cli::stdout_of(&args);
    }
    let listed = |actor: &str| {
        cli::json_of(&["--kv", &kv, "history", "--actor", actor, "--json"])
            .as_array()
            .expect("a list")
            .len()
    };
    assert_eq!(listed("off"), 0);
    assert_eq!(listed("off-bytes"), 0);
    assert_eq!(listed("on"), 3);
    let store = open(&kv);
    let bytes = |actor: &str| -> (usize, usize) {
        let d = dump(&store, actor);
        let hist = d.iter().filter(|(k, _)| is_history_key(k)).count();
        (d.iter().map(|(k, v)| k.len() + v.len()).sum(), hist)
    };
    let (off, off_hist) = bytes("off");
    let (off_b, off_b_hist) = bytes("off-bytes");
    let (on, on_hist) = bytes("on");
    // History off writes no history key: the same bytes either way, fewer than with it on.
    assert_eq!((off_hist, off_b_hist), (0, 0));
    assert_eq!(off, off_b);
    assert!(
        on_hist > 0 && on > off,
        "on {on} ({on_hist} keys), off {off}"
    );
    let err = cli::kvsqlite(&[
        "--kv",
        &kv,
        "run",
        "--retention",
        "5x",
        sql.to_str().unwrap(),
    ]);
    assert_eq!(err.status.code(), Some(2));
}
