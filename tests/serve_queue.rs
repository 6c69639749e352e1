//! `kvsqlite serve`'s queue (issue 21): `POST /actors/{id}/queue` wakes no sleeping actor
//! (the host's wake counter does not move); a sleeping actor runs its queued statements in
//! order at its next wake, each once, across a kill -9 and a restart on the same redb file; an
//! awake actor runs a message before the answer; a statement that fails as SQL is kept in
//! `_kvsqlite_queue_failed` and does not block the ones behind it.

#[path = "common/serve.rs"]
mod serve;

use serde_json::{json, Value};
use serve::Server;

fn enqueue(s: &Server, actor: &str, body: Value) -> (u16, String) {
    s.post(
        &format!("/actors/{actor}/queue"),
        Some(&s.admin),
        &body.to_string(),
    )
}

fn rows(s: &Server, actor: &str, sql: &str) -> Vec<Value> {
    s.sql(actor, sql, json!([]))["rows"]
        .as_array()
        .unwrap()
        .clone()
}

fn awake(s: &Server) -> i64 {
    let (_, text) = s.get("/healthz", None);
    serde_json::from_str::<Value>(&text).unwrap()["actors_awake"]
        .as_i64()
        .unwrap()
}

/// Polls (at most 30 s) until no actor is awake.
fn wait_all_asleep(s: &Server) {
    for _ in 0..300 {
        if awake(s) == 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("actors stayed awake");
}

#[test]
fn queued_statements_wake_nobody_and_run_once_in_order_across_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let kv = format!("redb:{}", dir.path().join("kv.redb").display());
    let s = Server::start(&kv, &["--idle-sleep-ms", "50"]);
    let ids: Vec<String> = (0..20).map(|i| format!("q{i:02}")).collect();
    for id in &ids {
        s.sql(
            id,
            "CREATE TABLE log(id INTEGER PRIMARY KEY, body TEXT)",
            json!([]),
        );
    }
    wait_all_asleep(&s);
    let wakes = s.metrics()["kvsqlite_wakes_total"];
    for n in 0..20 {
        for id in &ids {
            let (st, text) = enqueue(
                &s,
                id,
                json!({"sql": "INSERT INTO log(body) VALUES (?)", "params": [format!("m{n:02}")]}),
            );
            assert_eq!((st, text.as_str()), (200, r#"{"queued":true}"#));
        }
    }
    assert_eq!(s.metrics()["kvsqlite_wakes_total"], wakes);
    assert_eq!(awake(&s), 0);
    // Half the actors wake (and drain), then the host dies.
    for id in &ids[..10] {
        assert_eq!(rows(&s, id, "SELECT count(*) FROM log"), vec![json!([20])]);
    }
    s.kill9();

    let s = Server::start(&kv, &[]);
    let want: Vec<Value> = (0..20).map(|n| json!([format!("m{n:02}")])).collect();
    for id in &ids {
        assert_eq!(
            rows(&s, id, "SELECT body FROM log ORDER BY id"),
            want,
            "{id}"
        );
    }
    let _ = s.terminate();
}

#[test]
fn an_awake_actor_runs_a_message_before_the_answer_and_a_failing_one_does_not_block() {
    let dir = tempfile::tempdir().unwrap();
    let kv = format!("redb:{}", dir.path().join("kv.redb").display());
    let s = Server::start(&kv, &[]);
    s.sql("w", "CREATE TABLE t(v INTEGER UNIQUE)", json!([]));
    let (st, _) = enqueue(&s, "w", json!({"sql": "INSERT INTO t VALUES (1)"}));
    assert_eq!(st, 200);
    assert_eq!(rows(&s, "w", "SELECT v FROM t"), vec![json!([1])]);
    // A duplicate fails as SQL: kept with its error; the next message still runs.
    enqueue(&s, "w", json!({"sql": "INSERT INTO t VALUES (1)"}));
    enqueue(&s, "w", json!({"sql": "INSERT INTO t VALUES (2)"}));
    assert_eq!(
        rows(&s, "w", "SELECT v FROM t ORDER BY v"),
        vec![json!([1]), json!([2])]
    );
    let failed = rows(&s, "w", "SELECT message, error FROM _kvsqlite_queue_failed");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0][1].as_str().unwrap().contains("UNIQUE"),
        "{failed:?}"
    );
    // Refusals: no token, a body that is not a statement.
    assert_eq!(s.post("/actors/w/queue", None, "{}").0, 401);
    let (st, text) = enqueue(&s, "w", json!({"sql": 5}));
    assert_eq!(st, 400, "{text}");
    let _ = s.terminate();
}
