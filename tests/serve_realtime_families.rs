//! The host-wide alarm and queue families of `kvsqlite serve` (issue 21): a fired alarm, a
//! failing one retried, queued messages enqueued and handled, each counted exactly; and the
//! alarm tick's idle back-off seen in its own counters (an idle host lists the due index on
//! fewer ticks than it ticks, 16 lists each time), and one that restarts still fires an alarm
//! scheduled before the restart once it is due. Waits are bounded polls on the effects.

#[path = "common/serve.rs"]
mod serve;

use std::time::Duration;

use serde_json::{json, Value};
use serve::Server;

fn post(s: &Server, path: &str, body: Value) -> Value {
    let (st, text) = s.post(path, Some(&s.admin), &body.to_string());
    assert_eq!(st, 200, "{path}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// Polls (at most 60 s) until `f` holds on the host's metrics; returns them.
fn wait_metrics(
    s: &Server,
    f: impl Fn(&std::collections::BTreeMap<String, f64>) -> bool,
) -> std::collections::BTreeMap<String, f64> {
    for _ in 0..600 {
        let m = s.metrics();
        if f(&m) {
            return m;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the metrics never got there: {:?}", s.metrics());
}

#[test]
fn alarms_and_queue_messages_are_counted_host_wide() {
    let dir = tempfile::tempdir().unwrap();
    let kv = format!("redb:{}", dir.path().join("kv.redb").display());
    let s = Server::start(&kv, &["--alarm-tick-ms", "50", "--idle-sleep-ms", "200"]);
    s.sql("a", "CREATE TABLE t(x)", json!([]));
    post(
        &s,
        "/actors/a/alarms",
        json!({"after_ms": 0, "sql": "INSERT INTO t VALUES (1)"}),
    );
    let m = wait_metrics(&s, |m| m["kvsqlite_alarms_fired_total"] == 1.0);
    assert_eq!(m["kvsqlite_alarm_retries_total"], 0.0);
    let lists = m["kvsqlite_alarm_index_lists_total"];
    assert!(lists >= 16.0 && lists % 16.0 == 0.0, "{lists}");

    // A failing alarm: counted as a retry (and left for later with its backoff).
    post(
        &s,
        "/actors/a/alarms",
        json!({"after_ms": 0, "sql": "INSERT INTO t VALUES (json('not json'))"}),
    );
    let m = wait_metrics(&s, |m| m["kvsqlite_alarm_retries_total"] >= 1.0);
    assert_eq!(m["kvsqlite_alarms_fired_total"], 1.0);

    // Three messages to a sleeping actor: enqueued without a wake, handled at its next one.
    s.sql("q", "CREATE TABLE t(x)", json!([]));
    wait_metrics(&s, |m| m["kvsqlite_actors_awake"] == 0.0);
    let wakes = s.metrics()["kvsqlite_wakes_total"];
    for i in 0..3 {
        post(
            &s,
            "/actors/q/queue",
            json!({"sql": "INSERT INTO t VALUES (?)", "params": [i]}),
        );
    }
    let m = s.metrics();
    assert_eq!(m["kvsqlite_queue_enqueued_total"], 3.0);
    assert_eq!(m["kvsqlite_queue_handled_total"], 0.0);
    assert_eq!(
        s.sql("q", "SELECT count(*) FROM t", json!([]))["rows"],
        json!([[3]])
    );
    let m = s.metrics();
    assert_eq!(m["kvsqlite_queue_handled_total"], 3.0);
    assert_eq!(m["kvsqlite_queue_handler_failures_total"], 0.0);
    assert!(m["kvsqlite_wakes_total"] > wakes);
    let _ = s.terminate();
}

#[test]
fn an_idle_host_lists_the_due_index_on_fewer_ticks_than_it_ticks() {
    let dir = tempfile::tempdir().unwrap();
    let kv = format!("redb:{}", dir.path().join("kv.redb").display());
    let s = Server::start(&kv, &["--alarm-tick-ms", "10"]);
    // 100 ticks with nothing due anywhere: the first 5 list, then one in 30.
    let m = wait_metrics(&s, |m| m["kvsqlite_alarm_ticks_total"] >= 100.0);
    let (ticks, lists) = (
        m["kvsqlite_alarm_ticks_total"],
        m["kvsqlite_alarm_index_lists_total"],
    );
    assert_eq!(lists % 16.0, 0.0);
    // One listing at start learns the due times already in the index (none here).
    let listing_ticks = lists / 16.0 - 1.0;
    // At most the first 5, one in 30 after them, and one tick in progress.
    assert!(
        listing_ticks <= 5.0 + ((ticks - 5.0) / 30.0).ceil() + 1.0,
        "{listing_ticks} listing ticks of {ticks}"
    );
    assert!(listing_ticks >= 5.0, "{listing_ticks}");
    let _ = s.terminate();
}

#[test]
fn an_alarm_scheduled_before_a_restart_fires_at_its_tick_on_a_backed_off_host() {
    let dir = tempfile::tempdir().unwrap();
    let kv = format!("redb:{}", dir.path().join("kv.redb").display());
    let s = Server::start(&kv, &["--alarm-tick-ms", "200"]);
    s.sql("r", "CREATE TABLE t(x)", json!([]));
    // Due in 4 s: after the restart below, by when the new host has backed off (its first 5
    // ticks list, then one in 30: the 35th tick).
    post(
        &s,
        "/actors/r/alarms",
        json!({"after_ms": 4000, "sql": "INSERT INTO t VALUES (1)"}),
    );
    let _ = s.terminate();
    let s = Server::start(&kv, &["--alarm-tick-ms", "200"]);
    let m = wait_metrics(&s, |m| m["kvsqlite_alarms_fired_total"] == 1.0);
    // It fired before the back-off's first periodic listing (tick 35) could have found it:
    // the host learned its time at start. (Ticks only ever come later than their period, so
    // a slow machine cannot make this fail; it can only make the alarm due within the first 5.)
    let ticks = m["kvsqlite_alarm_ticks_total"];
    assert!(ticks < 34.0, "fired at tick {ticks}");
    assert_eq!(
        s.sql("r", "SELECT count(*) FROM t", json!([]))["rows"],
        json!([[1]])
    );
    let _ = s.terminate();
}
