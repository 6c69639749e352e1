//! `kvsqlite serve` over real HTTP: every route and status, the token rules, JSON and blob
//! mapping, the statement timeout, sleep and wake, one wake for concurrent requests, and the
//! Prometheus text.

#[path = "common/serve.rs"]
mod serve;

use serde_json::{json, Value};
use serve::{Server, ADMIN};

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn error_of(text: &str) -> String {
    parse(text)["error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn routes_statuses_and_token_rules() {
    let s = Server::start(
        "memory:",
        &["--max-body", "4096", "--statement-timeout-ms", "300"],
    );
    let q = "/actors/alpha/query";

    // Health and unknown routes need no token.
    let (st, body) = s.get("/healthz", None);
    assert_eq!(st, 200, "{body}");
    let (st, body) = s.get("/nope", None);
    assert_eq!((st, error_of(&body).as_str()), (404, "no such route"));
    assert_eq!(s.get("/actors/alpha/query", Some(ADMIN)).0, 405);

    // Tokens: none, wrong, and the admin's (the scheme is case-insensitive).
    let create = r#"{"sql": "CREATE TABLE t(i INTEGER, r REAL, s TEXT, b BLOB, n)"}"#;
    assert_eq!(s.post(q, None, create).0, 401);
    assert_eq!(s.post(q, Some("wrong"), create).0, 401);
    assert_eq!(s.post(q, Some(&format!("{ADMIN}x")), create).0, 401);
    assert_eq!(s.post("/actors/alpha/batch", None, create).0, 401);
    let (st, body) = s.post(q, Some(ADMIN), create);
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        parse(&body),
        json!({"columns": [], "rows": [], "changes": 0})
    );

    // Values both ways: integers, floats, text, blobs as base64, null.
    let row = json!([7, 2.5, "héllo", {"base64": "AAEC/w=="}, null]);
    let out = s.sql("alpha", "INSERT INTO t VALUES (?, ?, ?, ?, ?)", row.clone());
    assert_eq!(out["changes"], 1);
    let out = s.sql("alpha", "SELECT i, r, s, b, n FROM t", json!([]));
    assert_eq!(out["columns"], json!(["i", "r", "s", "b", "n"]));
    assert_eq!(out["rows"], json!([row]));

    // A batch is one transaction: results per statement, all or nothing.
    let batch = json!({"statements": [
        {"sql": "INSERT INTO t(i) VALUES (?)", "params": [1]},
        {"sql": "INSERT INTO t(i) VALUES (2), (3)"},
        {"sql": "SELECT count(*) FROM t"},
    ]});
    let (st, body) = s.post("/actors/alpha/batch", Some(ADMIN), &batch.to_string());
    assert_eq!(st, 200, "{body}");
    let results = parse(&body)["results"].clone();
    assert_eq!(results[0]["changes"], 1);
    assert_eq!(results[1]["changes"], 2);
    assert_eq!(results[2]["rows"], json!([[4]]));
    let failing = json!({"statements": [
        {"sql": "INSERT INTO t(i) VALUES (100)"},
        {"sql": "INSERT INTO missing VALUES (1)"},
    ]});
    let (st, body) = s.post("/actors/alpha/batch", Some(ADMIN), &failing.to_string());
    assert_eq!(st, 400);
    assert!(error_of(&body).contains("no such table: missing"), "{body}");
    let out = s.sql("alpha", "SELECT count(*) FROM t WHERE i = 100", json!([]));
    assert_eq!(out["rows"], json!([[0]]), "the failed batch left nothing");

    // Bad input: 400 with a message, never a crash.
    for (body, needle) in [
        ("{not json", "not valid JSON"),
        (r#"{"sql": 5}"#, "\"sql\" must be a string"),
        (
            r#"{"sql": "SELECT 1", "params": 3}"#,
            "\"params\" must be an array",
        ),
        (r#"{"sql": "SELECT ?", "params": [true]}"#, "booleans"),
        (
            r#"{"sql": "SELECT ?", "params": [{"base64": "!"}]}"#,
            "invalid base64",
        ),
        (r#"{"sql": "SELECT ?", "params": []}"#, "parameter"),
        (r#"{"sql": "SELECT 1", "extra": 1}"#, "unknown field"),
        (r#"[1]"#, "must be a JSON object"),
        (
            r#"{"sql": "SELECT 1; SELECT 2"}"#,
            "one statement per request",
        ),
        (r#"{"sql": "SELEC 1"}"#, "syntax error"),
        (r#"{"sql": "SELECT * FROM nope"}"#, "no such table: nope"),
        (r#"{"sql": "BEGIN"}"#, "cannot span requests"),
    ] {
        let (st, text) = s.post(q, Some(ADMIN), body);
        assert_eq!(st, 400, "{body}: {text}");
        assert!(error_of(&text).contains(needle), "{body}: {text}");
    }
    for control in ["COMMIT", "/* c */ end", "ROLLBACK", "SAVEPOINT x", "BEGIN"] {
        let body = json!({"statements": [
            {"sql": "INSERT INTO t(i) VALUES (300)"},
            {"sql": control},
            {"sql": "INSERT INTO t(i) VALUES (301)"},
        ]});
        let (st, text) = s.post("/actors/alpha/batch", Some(ADMIN), &body.to_string());
        assert_eq!(st, 400, "{control}: {text}");
        assert!(
            error_of(&text).contains("statements[1] controls the transaction"),
            "{text}"
        );
    }
    let out = s.sql("alpha", "SELECT count(*) FROM t WHERE i >= 300", json!([]));
    assert_eq!(
        out["rows"],
        json!([[0]]),
        "nothing of a batch with COMMIT ran"
    );
    let (st, text) = s.post("/actors/alpha/batch", Some(ADMIN), r#"{"statements": []}"#);
    assert_eq!(st, 400, "{text}");

    // Body over --max-body: 413.
    let big = json!({"sql": format!("SELECT '{}'", "x".repeat(5000))}).to_string();
    let (st, text) = s.post(q, Some(ADMIN), &big);
    assert_eq!(st, 413, "{text}");

    // Actor ids: 128 bytes of the character set are fine; longer or other characters are 400.
    let long_ok = "a".repeat(128);
    assert_eq!(
        s.post(
            &format!("/actors/{long_ok}/query"),
            Some(ADMIN),
            r#"{"sql": "SELECT 1"}"#
        )
        .0,
        200
    );
    for bad in [
        "a".repeat(129),
        "a%20b".into(),
        "a%2Fb".into(),
        "%C3%A9".into(),
    ] {
        let (st, text) = s.post(
            &format!("/actors/{bad}/query"),
            Some(ADMIN),
            r#"{"sql": "SELECT 1"}"#,
        );
        assert_eq!(st, 400, "{bad}: {text}");
        assert!(error_of(&text).contains("invalid actor id"), "{text}");
    }

    // A long statement is interrupted (408); the actor keeps serving, its data intact.
    let cte = r#"{"sql": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"}"#;
    let (st, text) = s.post(q, Some(ADMIN), cte);
    assert_eq!(st, 408, "{text}");
    assert!(error_of(&text).contains("statement timeout"), "{text}");
    let out = s.sql("alpha", "SELECT count(*) FROM t", json!([]));
    assert_eq!(out["rows"], json!([[4]]));
    // A batch interrupted mid-way is rolled back.
    let slow_batch = json!({"statements": [
        {"sql": "INSERT INTO t(i) VALUES (200)"},
        {"sql": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"},
    ]});
    let (st, text) = s.post("/actors/alpha/batch", Some(ADMIN), &slow_batch.to_string());
    assert_eq!(st, 408, "{text}");
    let out = s.sql("alpha", "SELECT count(*) FROM t WHERE i = 200", json!([]));
    assert_eq!(out["rows"], json!([[0]]));

    // Inspector token: admin only; never creates an actor.
    let tok_path = "/actors/alpha/inspector/token";
    assert_eq!(s.get(tok_path, None).0, 401);
    let (st, text) = s.get(tok_path, Some(ADMIN));
    assert_eq!(st, 200, "{text}");
    let token = parse(&text)["token"].as_str().expect("token").to_string();
    assert!(!token.is_empty());
    assert_eq!(
        s.get(tok_path, Some(&token)).0,
        401,
        "the actor's token is not admin"
    );
    assert_eq!(s.get("/actors/ghost/inspector/token", Some(ADMIN)).0, 404);

    // Inspector metrics: the actor's token or the admin's.
    let m_path = "/actors/alpha/inspector/metrics";
    assert_eq!(s.get(m_path, None).0, 401);
    assert_eq!(s.get(m_path, Some("wrong")).0, 401);
    let (st, text) = s.get(m_path, Some(&token));
    assert_eq!(st, 200, "{text}");
    let doc = parse(&text);
    assert_eq!(doc["startup_is_new"]["value"], 1);
    assert!(
        doc["query_duration_us"]["value"]["count"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{doc}"
    );
    assert_eq!(s.get(m_path, Some(ADMIN)).0, 200);
    // Another actor's token does not open this one.
    s.sql("beta", "SELECT 1", json!([]));
    let beta_token = parse(&s.get("/actors/beta/inspector/token", Some(ADMIN)).1)["token"]
        .as_str()
        .expect("token")
        .to_string();
    assert_eq!(s.get(m_path, Some(&beta_token)).0, 401);
    // An id the store never held: 404 for the admin, 401 for anyone else; nothing created.
    let creations = s.metrics()["kvsqlite_creations_total"];
    let (st, text) = s.get("/actors/ghost/inspector/metrics", Some(ADMIN));
    assert_eq!(st, 404, "{text}");
    assert_eq!(
        s.get("/actors/ghost/inspector/metrics", Some(&token)).0,
        401
    );
    assert_eq!(s.get("/actors/ghost/inspector/metrics", None).0, 401);
    assert_eq!(s.get("/actors/ghost/inspector/token", Some(ADMIN)).0, 404);
    assert_eq!(s.metrics()["kvsqlite_creations_total"], creations);

    // /metrics: strict Prometheus text, aggregated (no actor label anywhere).
    let (st, text) = s.get("/metrics", None);
    assert_eq!(st, 200);
    assert!(!text.contains("actor="), "{text}");
    let m = s.metrics();
    assert_eq!(
        m["kvsqlite_creations_total"], 3.0,
        "alpha, the 128-byte id, beta"
    );
    assert_eq!(m["kvsqlite_actors_awake"], 3.0);
    assert!(m["kvsqlite_errors_total{kind=\"timeout\"}"] >= 2.0);
    assert!(m["kvsqlite_errors_total{kind=\"too_large\"}"] >= 1.0);
    assert!(m["kvsqlite_errors_total{kind=\"unauthorized\"}"] >= 1.0);
    assert!(m["kvsqlite_query_duration_seconds_count"] > 0.0);
    assert!(m["kvsqlite_wake_kv_round_trips_count"] >= 3.0);
    assert!(m["kvsqlite_kv_round_trips_total"] > 0.0);

    let (status, stderr) = s.terminate();
    assert!(status.success(), "exit {status:?}: {stderr}");
}

#[test]
fn idle_sleep_then_wake_in_one_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kv = format!("redb:{}", dir.path().join("kv.redb").display());
    let s = Server::start(&kv, &["--idle-sleep-ms", "150"]);
    s.sql("sleepy", "CREATE TABLE t(x)", json!([]));
    s.sql(
        "sleepy",
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 500) \
         INSERT INTO t SELECT x FROM c",
        json!([]),
    );
    let token = parse(&s.get("/actors/sleepy/inspector/token", Some(ADMIN)).1)["token"]
        .as_str()
        .expect("token")
        .to_string();

    // Wait (bounded) for the idle sleep.
    let mut slept = false;
    for _ in 0..200 {
        let m = s.metrics();
        if m["kvsqlite_sleeps_total"] >= 1.0 && m["kvsqlite_actors_awake"] == 0.0 {
            slept = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    assert!(slept, "the actor never went to sleep");

    // Asleep: the inspector answers from the last wake's document without waking it.
    let (st, text) = s.get("/actors/sleepy/inspector/metrics", Some(&token));
    assert_eq!(st, 200, "{text}");
    assert_eq!(parse(&text)["startup_is_new"]["value"], 1);
    assert_eq!(s.metrics()["kvsqlite_actors_awake"], 0.0);
    assert_eq!(s.metrics()["kvsqlite_wakes_total"], 1.0);

    // The next request wakes it in one round trip, its data all there.
    let out = s.sql("sleepy", "SELECT count(*), sum(x) FROM t", json!([]));
    assert_eq!(out["rows"], json!([[500, 125250]]));
    let doc = parse(&s.get("/actors/sleepy/inspector/metrics", Some(&token)).1);
    assert_eq!(doc["startup_is_new"]["value"], 0, "{doc}");
    assert_eq!(doc["startup_kv_round_trips"]["value"], 1, "{doc}");
    assert_eq!(s.metrics()["kvsqlite_wakes_total"], 2.0);
    let (status, stderr) = s.terminate();
    assert!(status.success(), "exit {status:?}: {stderr}");
}

#[test]
fn concurrent_requests_to_a_sleeping_actor_cause_one_wake() {
    let s = Server::start("memory:", &[]);
    let base = s.base.clone();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let base = base.clone();
            std::thread::spawn(move || {
                let agent = serve::agent();
                let body = json!({"sql": "SELECT ?", "params": [i]}).to_string();
                serve::post(&agent, &base, "/actors/shared/query", Some(ADMIN), &body)
            })
        })
        .collect();
    for t in threads {
        let (st, text) = t.join().expect("client thread");
        assert_eq!(st, 200, "{text}");
    }
    let m = s.metrics();
    assert_eq!(m["kvsqlite_wakes_total"], 1.0);
    assert_eq!(m["kvsqlite_creations_total"], 1.0);
}

#[test]
fn a_generated_admin_token_is_printed_once_and_works() {
    let s = Server::start_env("memory:", &[], None);
    assert_eq!(s.admin.len(), 32, "{}", s.admin);
    assert_ne!(s.admin, ADMIN);
    let (st, text) = s.post(
        "/actors/a/query",
        Some(&s.admin.clone()),
        r#"{"sql": "SELECT 1"}"#,
    );
    assert_eq!(st, 200, "{text}");
    assert_eq!(
        s.post("/actors/a/query", Some(ADMIN), r#"{"sql": "SELECT 1"}"#)
            .0,
        401
    );
}

#[test]
fn a_statement_whose_client_left_is_still_interrupted() {
    let s = Server::start("memory:", &["--statement-timeout-ms", "300"]);
    s.sql("gone", "CREATE TABLE t(x)", json!([]));
    let impatient: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_millis(50)))
        .build()
        .into();
    let cte = r#"{"sql": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"}"#;
    let (st, _) = serve::post(&impatient, &s.base, "/actors/gone/query", Some(ADMIN), cte);
    assert_eq!(st, 0, "the client gave up first");
    // The actor serves again once the abandoned statement is interrupted (the client waits at
    // most 60 s: without the interrupt it would wait for ever).
    let out = s.sql("gone", "SELECT count(*) FROM t", json!([]));
    assert_eq!(out["rows"], json!([[0]]));
    assert_eq!(
        s.metrics()["kvsqlite_errors_total{kind=\"timeout\"}"],
        0.0,
        "no one was told"
    );
}

#[test]
fn migrations_apply_at_the_first_wake() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/sql/migrations");
    let s = Server::start("memory:", &["--migrations", dir]);
    let out = s.sql("chat", "SELECT count(*) FROM messages", json!([]));
    assert_eq!(out["rows"], json!([[200]]));
}

#[test]
fn the_inspector_wakes_an_actor_the_host_has_no_document_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kv = format!("redb:{}", dir.path().join("kv.redb").display());
    let s = Server::start(&kv, &[]);
    s.sql("kept", "CREATE TABLE t(x)", json!([]));
    let token = parse(&s.get("/actors/kept/inspector/token", Some(ADMIN)).1)["token"]
        .as_str()
        .expect("token")
        .to_string();
    let (status, stderr) = s.terminate();
    assert!(status.success(), "exit {status:?}: {stderr}");

    // A new host has no document for it: the token route reads the store without waking it,
    // and the metrics route wakes it (one round trip, not new).
    let s = Server::start(&kv, &[]);
    let (st, text) = s.get("/actors/kept/inspector/token", Some(ADMIN));
    assert_eq!(
        (st, parse(&text)["token"].as_str()),
        (200, Some(token.as_str()))
    );
    assert_eq!(s.metrics()["kvsqlite_wakes_total"], 0.0);
    assert_eq!(
        s.get("/actors/kept/inspector/metrics", Some("wrong")).0,
        401
    );
    assert_eq!(
        s.metrics()["kvsqlite_wakes_total"],
        0.0,
        "a wrong token wakes nothing"
    );
    let (st, text) = s.get("/actors/kept/inspector/metrics", Some(&token));
    assert_eq!(st, 200, "{text}");
    let doc = parse(&text);
    assert_eq!(doc["startup_is_new"]["value"], 0, "{doc}");
    assert_eq!(doc["startup_kv_round_trips"]["value"], 1, "{doc}");
    assert_eq!(s.metrics()["kvsqlite_wakes_total"], 1.0);
}
