//! The host's wake rules, proved with exact counts from `/metrics`:
//!
//! - an actor put to sleep, then 8 requests released at once by a barrier (each client's
//!   connection already open) at `--rtt 50`, so all of them arrive while the first one's wake
//!   is still waiting on the store: every request was sent before the first answer came (they
//!   overlapped), exactly one wake, of exactly one round trip, and every request answered right;
//! - `--max-awake 3`: the least recently used idle actor is the one put to sleep, and under 12
//!   concurrent clients on 12 actors the peak gauge `kvsqlite_actors_awake_peak` (taken where a
//!   wake reserves its place, so no overshoot slips between samples) reaches 3 and never more.

#[path = "common/raw_http.rs"]
mod raw_http;
#[path = "common/serve.rs"]
mod serve;

use std::io::Write;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use serve::{Server, ADMIN};

fn query(s: &Server, actor: &str, sql: &str) -> Value {
    let (st, text) = s.post(
        &format!("/actors/{actor}/query"),
        Some(ADMIN),
        &json!({ "sql": sql }).to_string(),
    );
    assert_eq!(st, 200, "{actor}: {text}");
    serde_json::from_str(&text).expect("JSON answer")
}

#[test]
fn eight_requests_released_together_on_a_sleeping_actor_cause_one_wake_of_one_round_trip() {
    let s = Server::start("memory:", &["--rtt", "50", "--idle-sleep-ms", "300"]);
    query(&s, "b", "CREATE TABLE t(x)");
    query(&s, "b", "INSERT INTO t VALUES (1), (2), (3)");
    // Wait (bounded) for the idle sleep.
    let mut slept = false;
    for _ in 0..200 {
        let m = s.metrics();
        if m["kvsqlite_sleeps_total"] == 1.0 && m["kvsqlite_actors_awake"] == 0.0 {
            slept = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(slept, "the actor never went to sleep");
    let m0 = s.metrics();
    assert_eq!(m0["kvsqlite_wakes_total"], 1.0, "the creation only");

    let barrier = Arc::new(Barrier::new(8));
    let addr = raw_http::addr_of(&s.base);
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let (addr, barrier) = (addr.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut c = raw_http::connect(&addr, Duration::from_secs(60));
                // Open the connection first (one answered request), so the barrier releases
                // requests, not handshakes.
                c.write_all(&raw_http::request("GET", "/healthz", &[], None))
                    .expect("send");
                let a = raw_http::read_answer(&mut c).expect("an answer");
                assert_eq!(a.status, 200);
                let body = json!({"sql": "SELECT sum(x), ? FROM t", "params": [i]}).to_string();
                let auth = format!("Bearer {ADMIN}");
                let req = raw_http::request(
                    "POST",
                    "/actors/b/query",
                    &[
                        ("Authorization", auth.as_str()),
                        ("Content-Type", "application/json"),
                    ],
                    Some(body.as_bytes()),
                );
                barrier.wait();
                c.write_all(&req).expect("send");
                // The whole request is in the kernel's hands: sent.
                let sent = Instant::now();
                // The first byte of the answer is here: answered.
                c.peek(&mut [0u8; 1]).expect("the answer's first byte");
                let answered = Instant::now();
                let a = raw_http::read_answer(&mut c).expect("an answer");
                (i, a.status, a.body, sent, answered)
            })
        })
        .collect();
    let mut sent = Vec::new();
    let mut answered = Vec::new();
    for t in threads {
        let (i, st, text, s_at, a_at) = t.join().expect("client thread");
        assert_eq!(st, 200, "{text}");
        let v: Value = serde_json::from_str(&text).expect("JSON answer");
        assert_eq!(v["rows"], json!([[6, i]]), "request {i}");
        sent.push(s_at);
        answered.push(a_at);
    }
    // The 8 requests overlapped: every one was sent before the first answer came (the wake
    // they all wait on costs a 50 ms round trip), so a host that served them one after the
    // other, or woke the actor per request, could not have had them all in flight at once.
    let last_sent = *sent.iter().max().expect("8 requests");
    let first_answer = *answered.iter().min().expect("8 answers");
    assert!(
        last_sent < first_answer,
        "a request was sent {:?} after the first answer",
        last_sent.duration_since(first_answer)
    );
    let m = s.metrics();
    let d = |k: &str| m[k] - m0[k];
    assert_eq!(
        d("kvsqlite_wakes_total"),
        1.0,
        "one wake for the 8 requests"
    );
    assert_eq!(d("kvsqlite_creations_total"), 0.0);
    assert_eq!(d("kvsqlite_wake_kv_round_trips_count"), 1.0);
    assert_eq!(
        d("kvsqlite_wake_kv_round_trips_sum"),
        1.0,
        "the wake's round trips"
    );
    assert_eq!(d("kvsqlite_errors_total{kind=\"unavailable\"}"), 0.0);
    let (status, stderr) = s.terminate();
    assert!(status.success(), "exit {status:?}: {stderr}");
}

#[test]
fn max_awake_puts_the_least_recently_used_actor_to_sleep_and_the_peak_never_passes_it() {
    let s = Server::start("memory:", &["--max-awake", "3"]);
    let wakes = |s: &Server| s.metrics()["kvsqlite_wakes_total"] as u64;
    // Use order a1, a2, a3, then a1 again: a2 is now the least recently used. The host keeps
    // the last use in milliseconds, so uses are kept a few milliseconds apart.
    for a in ["a1", "a2", "a3", "a1"] {
        query(&s, a, "SELECT 1");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(wakes(&s), 3);
    // a4 needs a place: a2 sleeps.
    query(&s, "a4", "SELECT 1");
    assert_eq!(wakes(&s), 4);
    assert_eq!(s.metrics()["kvsqlite_sleeps_total"], 1.0);
    for a in ["a1", "a3", "a4"] {
        query(&s, a, "SELECT 1");
        assert_eq!(wakes(&s), 4, "{a} was still awake");
    }
    query(&s, "a2", "SELECT 1");
    assert_eq!(wakes(&s), 5, "a2 was the one put to sleep");
    assert_eq!(s.metrics()["kvsqlite_actors_awake_peak"], 3.0);

    // 12 clients on 12 actors at once, 5 rounds each.
    let barrier = Arc::new(Barrier::new(12));
    let threads: Vec<_> = (0..12)
        .map(|i| {
            let (base, barrier) = (s.base.clone(), barrier.clone());
            std::thread::spawn(move || {
                let agent = serve::agent();
                barrier.wait();
                for round in 0..5 {
                    let body = json!({"sql": "SELECT ?", "params": [round]}).to_string();
                    let (st, text) = serve::post(
                        &agent,
                        &base,
                        &format!("/actors/c{i}/query"),
                        Some(ADMIN),
                        &body,
                    );
                    assert_eq!(st, 200, "c{i}: {text}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let m = s.metrics();
    assert_eq!(m["kvsqlite_actors_awake_peak"], 3.0, "{m:?}");
    assert!(m["kvsqlite_actors_awake"] <= 3.0);
    let (status, stderr) = s.terminate();
    assert!(status.success(), "exit {status:?}: {stderr}");
}
