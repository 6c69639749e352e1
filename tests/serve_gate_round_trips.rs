//! The host's round-trip count with pipelined commits: a write's answer waits at the output
//! gate for its put, and the put is counted by then. Read right after each answer,
//! `kvsqlite_kv_round_trips_total` holds every KV call the answered requests made: the wake's,
//! plus exactly one put per 1-row write (each actor's counting store; `--rtt 20`, so each put
//! is still in flight when the statement returns).

#[path = "common/serve.rs"]
mod serve;

use serde_json::json;
use serve::Server;

fn total(s: &Server) -> f64 {
    s.metrics()["kvsqlite_kv_round_trips_total"]
}

#[test]
fn each_answered_write_is_counted_with_its_put() {
    let s = Server::start("memory:", &["--rtt", "20", "--idle-sleep-ms", "600000"]);
    s.sql(
        "rt",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
        json!([]),
    );
    let m = s.metrics();
    let wake = m["kvsqlite_wake_kv_round_trips_sum"];
    assert_eq!(m["kvsqlite_wake_kv_round_trips_count"], 1.0);
    // The new actor's wake, then the CREATE TABLE's one put.
    assert_eq!(m["kvsqlite_kv_round_trips_total"], wake + 1.0);

    for i in 1..=5 {
        let before = total(&s);
        s.sql("rt", "INSERT INTO t VALUES (?1, 'row')", json!([i]));
        // One put per 1-row write, counted by the time its answer arrives.
        assert_eq!(total(&s), before + 1.0, "insert {i}");
    }

    // A read of cached pages costs nothing.
    let before = total(&s);
    let answer = s.sql("rt", "SELECT count(*) AS n FROM t", json!([]));
    assert_eq!(answer["rows"][0][0], json!(5), "{answer}");
    assert_eq!(total(&s), before);

    // A second actor: its wake and its write add to the same counter.
    let before = total(&s);
    s.sql("rt2", "CREATE TABLE u(x)", json!([]));
    let m = s.metrics();
    assert_eq!(m["kvsqlite_wake_kv_round_trips_count"], 2.0);
    let second_wake = m["kvsqlite_wake_kv_round_trips_sum"] - wake;
    assert_eq!(
        m["kvsqlite_kv_round_trips_total"],
        before + second_wake + 1.0
    );
}
