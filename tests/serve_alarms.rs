//! `kvsqlite serve`'s alarms (issue 21): `POST/GET /actors/{id}/alarms` and
//! `DELETE /actors/{id}/alarms/{alarm}` with their checks, the host's tick running a due
//! alarm's SQL once, and a due alarm firing once after a kill -9 and a restart on the same
//! redb file. Waits are bounded polls on the alarm's effect (no test times anything).

#[path = "common/serve.rs"]
mod serve;

use serde_json::{json, Value};
use serve::Server;

fn count(s: &Server, actor: &str, sql: &str) -> i64 {
    s.sql(actor, sql, json!([]))["rows"][0][0].as_i64().unwrap()
}

fn schedule(s: &Server, actor: &str, body: Value) -> (u16, Value) {
    s.admin_post(&format!("/actors/{actor}/alarms"), &body)
}

fn list(s: &Server, actor: &str) -> Vec<Value> {
    s.admin_get(&format!("/actors/{actor}/alarms"))["alarms"]
        .as_array()
        .expect("a list of alarms")
        .clone()
}

/// Polls (at most 30 s) until `sql` on `actor` answers `want`.
fn wait_for(s: &Server, actor: &str, sql: &str, want: i64) {
    for _ in 0..300 {
        if count(s, actor, sql) == want {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("{sql} never answered {want}");
}

#[test]
fn alarms_are_checked_listed_cancelled_and_fired_once_by_the_tick() {
    let dir = tempfile::tempdir().unwrap();
    let kv = format!("redb:{}", dir.path().join("kv.redb").display());
    let s = Server::start(&kv, &[]);
    s.sql("shop", "CREATE TABLE digest(n INTEGER)", json!([]));

    // Refusals: no token, both times, neither, a statement that controls the transaction, bad SQL.
    let (st, _) = s.post("/actors/shop/alarms", None, "{}");
    assert_eq!(st, 401);
    for (body, want) in [
        (json!({"at": 1, "after_ms": 1, "sql": "SELECT 1"}), 400),
        (json!({"sql": "SELECT 1"}), 400),
        (json!({"after_ms": 0, "sql": "COMMIT"}), 400),
        (
            json!({"after_ms": 0, "sql": "INSERT INTO nope VALUES (1)"}),
            400,
        ),
        (json!({"after_ms": -5, "sql": "SELECT 1"}), 400),
    ] {
        let (st, v) = schedule(&s, "shop", body.clone());
        assert_eq!(st, want, "{body} → {v}");
        assert!(v["error"].is_string(), "{v}");
    }
    assert_eq!(list(&s, "shop"), Vec::<Value>::new());

    let far = 4_000_000_000_000u64;
    let (st, later) = schedule(
        &s,
        "shop",
        json!({"at": far, "sql": "INSERT INTO digest VALUES (?)", "params": [2]}),
    );
    assert_eq!(st, 200, "{later}");
    let (_, cancelled) = schedule(
        &s,
        "shop",
        json!({"after_ms": 0, "sql": "INSERT INTO digest VALUES (3)"}),
    );
    let (st, text) = s.admin_delete(&format!("/actors/shop/alarms/{}", cancelled["id"]));
    assert_eq!((st, text.as_str()), (200, r#"{"cancelled":true}"#));
    let (st, now) = schedule(
        &s,
        "shop",
        json!({"after_ms": 0, "sql": "INSERT INTO digest VALUES (?)", "params": [1]}),
    );
    assert_eq!(st, 200, "{now}");

    wait_for(&s, "shop", "SELECT count(*) FROM digest", 1);
    assert_eq!(count(&s, "shop", "SELECT sum(n) FROM digest"), 1);
    let left = list(&s, "shop");
    assert_eq!(
        left,
        vec![json!({"id": later["id"], "at": far, "name": "sql",
            "sql": "INSERT INTO digest VALUES (?)", "params": [2], "attempts": 0})]
    );
    let _ = s.terminate();
}

#[test]
fn a_due_alarm_fires_once_after_a_kill_9_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let kv = format!("redb:{}", dir.path().join("kv.redb").display());
    let s = Server::start(&kv, &[]);
    s.sql("a", "CREATE TABLE digest(n INTEGER)", json!([]));
    let (st, v) = schedule(
        &s,
        "a",
        json!({"after_ms": 1500, "sql": "INSERT INTO digest VALUES (1)"}),
    );
    assert_eq!(st, 200, "{v}");
    s.kill9();

    let s = Server::start(&kv, &[]);
    // Nobody asks for the actor: the tick wakes it, fires the alarm and puts it back to sleep.
    let mut slept_again = false;
    for _ in 0..300 {
        let m = s.metrics();
        let (_, health) = s.get("/healthz", None);
        let awake = serde_json::from_str::<Value>(&health).unwrap()["actors_awake"].as_i64();
        if m["kvsqlite_wakes_total"] >= 1.0 && awake == Some(0) {
            slept_again = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        slept_again,
        "the tick never woke the actor and put it back to sleep"
    );
    assert_eq!(count(&s, "a", "SELECT count(*) FROM digest"), 1);
    assert_eq!(list(&s, "a"), Vec::<Value>::new());
    // A few more ticks change nothing.
    for _ in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(count(&s, "a", "SELECT count(*) FROM digest"), 1);
    }
    let _ = s.terminate();
}
