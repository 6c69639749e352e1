//! A seeded, bounded fuzz of `kvsqlite serve`'s HTTP surface: 12,000 requests from 4 threads
//! on kept-alive connections, with random methods, paths, actor ids (valid and not), headers
//! (tokens, cookies, origins, content types), bodies (JSON of every shape, forms, bytes) and SQL
//! from a small grammar, over every route: the first ones (queries, batches, inspector pages,
//! sign-in) and the later ones (alarms, the queue, a plain GET of connect without an upgrade,
//! connection handlers and lists, history, restore, fork, `/inspector/top`, and `/cluster`,
//! which a host outside a cluster answers 404). Every answer must have a documented status
//! (never 500; each later route its own documented ones), the host must not panic, its peak
//! RSS stays under 256 MiB, and a normal request is answered after.
//!
//! The seed is printed; `KVSQLITE_FUZZ_SEED=N` replays one.

#[path = "common/raw_http.rs"]
mod raw_http;
#[path = "common/serve.rs"]
mod serve;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use kvsqlite::rng::Rng;
use raw_http::{addr_of, connect, read_answer_to};
use serde_json::{json, Value};
use serve::{Server, ADMIN};

const THREADS: u64 = 4;
const PER_THREAD: u64 = 3_000;
/// The statuses the README documents for the host.
const DOCUMENTED: &[u16] = &[200, 204, 303, 400, 401, 403, 404, 405, 408, 409, 413, 503];
/// Peak resident set of the host, KiB.
const RSS_BOUND_KIB: u64 = 256 * 1024;

fn pick<'a, T>(r: &mut Rng, xs: &'a [T]) -> &'a T {
    &xs[r.below(xs.len() as u64) as usize]
}

fn actor_id(r: &mut Rng) -> String {
    if r.chance(0.8) {
        format!("f{}", r.below(6))
    } else {
        pick(
            r,
            &[
                ".", "..", "%2E%2E", "a%2Fb", "%00", "%C3%BC", "a%20b", "~-_.", "%ff", "x%",
            ],
        )
        .to_string()
    }
    .to_string()
}

fn expr(r: &mut Rng, depth: u32) -> String {
    if depth > 2 || r.chance(0.4) {
        return match r.below(6) {
            0 => r.below(1000).to_string(),
            1 => format!("'s{}'", r.below(50)),
            2 => "NULL".into(),
            3 => "?".into(),
            4 => pick(r, &["a", "b", "rowid"]).to_string(),
            _ => format!("{}.5", r.below(9)),
        };
    }
    match r.below(5) {
        0 => format!(
            "({} {} {})",
            expr(r, depth + 1),
            pick(r, &["+", "-", "*", "/", "||", "=", "<", "AND", "OR"]),
            expr(r, depth + 1)
        ),
        1 => format!(
            "{}({})",
            pick(r, &["abs", "length", "upper", "typeof", "hex", "coalesce"]),
            expr(r, depth + 1)
        ),
        2 => format!(
            "CAST({} AS {})",
            expr(r, depth + 1),
            pick(r, &["TEXT", "INTEGER", "BLOB", "REAL"])
        ),
        3 => format!("(SELECT count(*) FROM t{})", r.below(3)),
        _ => format!("randomblob({})", r.below(64)),
    }
}

/// Files the grammar's ATTACH and VACUUM INTO name: none may exist after the fuzz.
const FORBIDDEN_FILES: &[&str] = &[
    "/tmp/kvsqlite-fuzz-attach.db",
    "/tmp/kvsqlite-fuzz-attach2.db",
    "/tmp/kvsqlite-fuzz-vacuum.db",
];

/// SQL from a small grammar (with the odd broken statement).
fn sql(r: &mut Rng) -> String {
    let t = format!("t{}", r.below(3));
    match r.below(12) {
        0 => format!("CREATE TABLE IF NOT EXISTS {t}(a, b)"),
        1 | 2 => format!("INSERT INTO {t} VALUES ({}, {})", expr(r, 0), expr(r, 0)),
        3 | 4 => format!(
            "SELECT {}, {} FROM {t} WHERE {} LIMIT {}",
            expr(r, 0),
            expr(r, 0),
            expr(r, 0),
            r.below(20)
        ),
        5 => format!("UPDATE {t} SET a = {} WHERE {}", expr(r, 0), expr(r, 0)),
        6 => format!("DELETE FROM {t} WHERE {}", expr(r, 0)),
        7 => pick(r, &["BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT s", "END"]).to_string(),
        8 => pick(
            r,
            &[
                "PRAGMA user_version",
                "PRAGMA table_info(t0)",
                "SELECT 1; SELECT 2",
                "",
                ";",
                "SELEC 1",
                "SELECT * FROM nowhere",
                "CREATE INDEX IF NOT EXISTS i0 ON t0(a)",
                "DROP TABLE IF EXISTS t2",
                // What SQL must never reach (refused by SQLite's authorizer, 400): files on
                // the host, process-wide settings, settings that outlive the request.
                "ATTACH 'file:/tmp/kvsqlite-fuzz-attach.db?vfs=unix' AS p",
                "/**/ATTACH '/tmp/kvsqlite-fuzz-attach2.db' AS q",
                "VACUUM INTO '/tmp/kvsqlite-fuzz-vacuum.db'",
                "PRAGMA hard_heap_limit=1000",
                "PRAGMA query_only=1",
                "SELECT zeroblob(100000000)",
            ],
        )
        .to_string(),
        9 => format!("SELECT {}", expr(r, 0)),
        10 => format!("INSERT INTO {t} SELECT a, b FROM {t} LIMIT {}", r.below(5)),
        _ => {
            let n = r.below(12) as usize;
            String::from_utf8_lossy(&r.bytes(n)).into_owned()
        }
    }
}

fn param(r: &mut Rng) -> Value {
    match r.below(8) {
        0 => json!(r.below(100)),
        1 => json!(-1.5),
        2 => json!("text"),
        3 => Value::Null,
        4 => json!({ "base64": "AAEC" }),
        5 => json!({ "base64": "!!" }),
        6 => json!(true),
        _ => json!([1, [2]]),
    }
}

fn statement(r: &mut Rng) -> Value {
    let params: Vec<Value> = (0..r.below(4)).map(|_| param(r)).collect();
    match r.below(6) {
        0 => json!({ "sql": sql(r) }),
        1 => json!({ "sql": 5 }),
        2 => json!({ "params": params }),
        _ => json!({ "sql": sql(r), "params": params }),
    }
}

fn body(r: &mut Rng) -> Option<Vec<u8>> {
    let b = match r.below(10) {
        0 => return None,
        1..=3 => statement(r).to_string().into_bytes(),
        4 => {
            let n = r.below(4);
            json!({ "statements": (0..n).map(|_| statement(r)).collect::<Vec<_>>() })
                .to_string()
                .into_bytes()
        }
        5 => pick(
            r,
            &[
                "null",
                "[]",
                "{}",
                "1e400",
                "\"x\"",
                "{\"sql\": [\"SELECT 1\"]}",
                "{\"statements\": {}}",
                "{\"statements\": [1, 2]}",
                "{\"sql\": \"SELECT ?\", \"params\": {\"a\": 1}}",
                "{",
            ],
        )
        .as_bytes()
        .to_vec(),
        6 => format!(
            "sql={}&csrf={}&token=x&actor=f1&next=%2F",
            sql(r).replace(' ', "+").replace('&', "%26"),
            r.below(1 << 20)
        )
        .into_bytes(),
        7 => format!("token={ADMIN}&next=//evil").into_bytes(),
        _ => {
            let n = r.below(200) as usize;
            r.bytes(n)
        }
    };
    Some(b)
}

/// The later routes' bodies: restore and fork targets, alarms, queued statements, handlers.
fn route_body(r: &mut Rng) -> Vec<u8> {
    let t = *pick(
        r,
        &[
            "f0",
            "f5",
            "new1",
            "1",
            "@0",
            "2026-01-01T00:00:00Z",
            "nope",
        ],
    );
    match r.below(9) {
        0 => json!({ "to": t }),
        1 => json!({ "seq": r.below(20) }),
        2 => json!({ "time": r.below(1 << 40) }),
        3 => json!({ "to": format!("f{}", r.below(8)), "at": t }),
        4 => json!({ "to": format!("new{}", r.below(4)) }),
        5 => json!({ "after_ms": r.below(50), "sql": sql(r), "params": [] }),
        6 => json!({ "at": r.below(1 << 41), "sql": sql(r) }),
        7 => json!({ "sql": [sql(r), sql(r)] }),
        _ => json!({ "to": t, "seq": 1 }),
    }
    .to_string()
    .into_bytes()
}

/// The statuses each later route may answer (`/cluster` is no route of a host outside a
/// cluster: 404 once the admin token is checked, or 405 for another method than GET).
const ROUTE_STATUSES: &[(&str, &[u16])] = &[
    ("alarms", &[200, 400, 401, 404, 405, 408, 413, 503]),
    ("queue", &[200, 400, 401, 404, 405, 413, 503]),
    ("connect", &[400, 401, 405]),
    ("handler", &[200, 400, 401, 404, 405, 408, 413, 503]),
    ("connections", &[200, 400, 401, 404, 405, 503]),
    ("history", &[200, 400, 401, 404, 405, 503]),
    ("restore", &[200, 400, 401, 403, 404, 405, 408, 413, 503]),
    ("fork", &[200, 400, 401, 404, 405, 409, 413, 503]),
    ("cluster", &[401, 404, 405]),
    ("top", &[200, 400, 401, 405]),
];

/// One random request: the route's kind, the method (for reading the answer), the bytes.
fn random_request(r: &mut Rng) -> (&'static str, String, Vec<u8>) {
    let id = actor_id(r);
    let (kind, path) = match r.below(26) {
        16 => ("alarms", format!("/actors/{id}/alarms")),
        17 => (
            "alarms",
            format!(
                "/actors/{id}/alarms/{}",
                pick(r, &["1", "0", "x", "99999999999999999999", "%ff"])
            ),
        ),
        18 => ("queue", format!("/actors/{id}/queue")),
        19 => (
            "connect",
            format!("/actors/{id}/connect?topic=t{}", r.below(3)),
        ),
        20 => ("handler", format!("/actors/{id}/connect/handler")),
        21 => ("connections", format!("/actors/{id}/connections")),
        22 => (
            "history",
            format!(
                "/actors/{id}/history?limit={}&before={}",
                pick(r, &["1", "5", "0", "x", "1000000"]),
                pick(r, &["", "3", "-1", "x"])
            ),
        ),
        23 => {
            let k = *pick(r, &["restore", "fork"]);
            (k, format!("/actors/{id}/{k}"))
        }
        24 => (
            "cluster",
            pick(r, &["/cluster", "/cluster?local=1"]).to_string(),
        ),
        25 => (
            "top",
            format!(
                "/inspector/top?by={}&limit={}",
                pick(r, &["round_trips", "bytes", "statement_seconds", "x", ""]),
                pick(r, &["1", "10", "0", "-3", "x"])
            ),
        ),
        n => ("", first_routes(r, n, &id)),
    };
    let (method, bytes) = finish_request(r, kind, &path);
    (kind, method, bytes)
}

/// The paths of the first routes (`n` below 16).
fn first_routes(r: &mut Rng, n: u64, id: &str) -> String {
    match n {
        0 => "/".to_string(),
        1 => "/healthz".into(),
        2 => "/metrics".into(),
        3..=5 => format!("/actors/{id}/query"),
        6 => format!("/actors/{id}/batch"),
        7 => format!("/actors/{id}/inspector"),
        8 => format!("/actors/{id}/inspector/metrics"),
        9 => format!("/actors/{id}/inspector/token"),
        10 => format!("/actors/{id}/inspector/query"),
        11 => pick(r, &["/signin", "/signout"]).to_string(),
        12 => format!("/open?id={id}"),
        13 => format!(
            "/actors/{id}/inspector?q={}&table=t0&offset={}",
            r.below(9),
            r.below(50)
        ),
        14 => pick(
            r,
            &["/assets/inspector.js", "/assets/inspector.css", "/assets/x"],
        )
        .to_string(),
        _ => pick(
            r,
            &[
                "/actors",
                "/actors/f1",
                "/x/../y",
                "/%ff",
                "//",
                "/actors/f1/query/x",
            ],
        )
        .to_string(),
    }
}

/// A method, headers and a body for `path` (of route `kind`): the request's bytes.
fn finish_request(r: &mut Rng, kind: &str, path: &str) -> (String, Vec<u8>) {
    // Mostly the route's own method, sometimes any.
    let natural = if path.ends_with("/query")
        || path.ends_with("/batch")
        || path == "/signin"
        || path == "/signout"
        || matches!(kind, "queue" | "restore" | "fork")
    {
        "POST"
    } else if kind == "alarms" && !path.ends_with("/alarms") {
        "DELETE"
    } else if matches!(kind, "alarms" | "handler") {
        *pick(r, &["GET", "POST", "DELETE"])
    } else {
        "GET"
    };
    let method = if r.chance(0.85) {
        natural.to_string()
    } else {
        pick(
            r,
            &["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"],
        )
        .to_string()
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    match r.below(7) {
        0 => {}
        1..=3 => headers.push(("Authorization".into(), format!("Bearer {ADMIN}"))),
        4 => headers.push((
            "Authorization".into(),
            "Bearer wrong-token-0123456789".into(),
        )),
        5 => headers.push((
            "Authorization".into(),
            pick(r, &["Basic eA==", "Bearer ", "bearer", "Bearer a b"]).to_string(),
        )),
        _ => headers.push((
            "Cookie".into(),
            format!("kvsqlite_session={}; kvsqlite_signin=x", r.below(1 << 30)),
        )),
    }
    if r.chance(0.3) {
        headers.push((
            "Origin".into(),
            pick(r, &["http://localhost", "null", "http://evil"]).to_string(),
        ));
    }
    if r.chance(0.2) {
        headers.push((
            "Sec-Fetch-Site".into(),
            pick(r, &["same-origin", "cross-site", "none"]).to_string(),
        ));
    }
    if r.chance(0.5) {
        headers.push((
            "Content-Type".into(),
            pick(
                r,
                &[
                    "application/json",
                    "application/x-www-form-urlencoded",
                    "text/plain",
                ],
            )
            .to_string(),
        ));
    }
    if r.chance(0.1) {
        headers.push(("X-Inspector-Poll".into(), "1".into()));
    }
    if r.chance(0.1) {
        headers.push((
            format!("X-Junk-{}", r.below(100)),
            format!("v{}", r.below(100)),
        ));
    }
    let body = if method == "HEAD" || method == "GET" && r.chance(0.8) {
        None
    } else if !kind.is_empty() && r.chance(0.6) {
        Some(route_body(r))
    } else if r.chance(0.9) {
        body(r)
    } else {
        Some(Vec::new())
    };
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
    for (k, v) in &headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = &body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(&b);
    }
    (method, bytes)
}

/// Sends `n` random requests from `seed` on kept-alive connections (reconnecting when the host
/// closes one); returns the statuses seen, or the first request answered with an undocumented
/// status or not at all.
fn client(addr: String, seed: u64, n: u64) -> Result<Vec<(&'static str, u16)>, String> {
    let mut r = Rng::new(seed);
    let mut conn: Option<TcpStream> = None;
    let mut statuses = Vec::new();
    for i in 0..n {
        let (kind, method, bytes) = random_request(&mut r);
        let mut answer = None;
        // A kept-alive connection the host closed after its last answer: one retry on a new one.
        for _ in 0..2 {
            let c = conn.get_or_insert_with(|| connect(&addr, Duration::from_secs(60)));
            if c.write_all(&bytes).is_ok() {
                answer = read_answer_to(c, &method);
            }
            if answer.is_some() {
                break;
            }
            conn = None;
        }
        let Some(a) = answer else {
            return Err(format!(
                "request {i} of seed {seed} got no answer: {}",
                String::from_utf8_lossy(&bytes)
            ));
        };
        let allowed = ROUTE_STATUSES
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(DOCUMENTED, |(_, st)| *st);
        if !allowed.contains(&a.status) {
            return Err(format!(
                "request {i} of seed {seed} answered {}: {}\n{}",
                a.status,
                String::from_utf8_lossy(&bytes),
                a.body
            ));
        }
        if a.header("connection") == Some("close") {
            conn = None;
        }
        statuses.push((kind, a.status));
    }
    Ok(statuses)
}

#[test]
fn seeded_fuzz_of_the_http_surface() {
    let seed: u64 = std::env::var("KVSQLITE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_2026);
    println!("seed {seed} (KVSQLITE_FUZZ_SEED={seed} replays it)");
    for f in FORBIDDEN_FILES {
        let _ = std::fs::remove_file(f);
    }
    let s = Server::start("memory:", &["--statement-timeout-ms", "5000"]);
    let addr = addr_of(&s.base);
    // The answers the fuzz's later routes must give a plain request, exactly.
    assert_eq!(
        s.get("/cluster", Some(ADMIN)),
        (
            404,
            r#"{"error":"this host is not in a cluster (serve --cluster NAME)"}"#.to_string()
        )
    );
    assert_eq!(
        s.get("/actors/f1/connect", Some(ADMIN)),
        (
            400,
            r#"{"error":"not a WebSocket upgrade: Connection header did not include 'upgrade'"}"#
                .to_string()
        )
    );
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let addr = addr.clone();
            std::thread::spawn(move || client(addr, seed.wrapping_add(t), PER_THREAD))
        })
        .collect();
    let mut all = Vec::new();
    for t in threads {
        match t.join().expect("client thread") {
            Ok(st) => all.extend(st),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(all.len() as u64, THREADS * PER_THREAD);
    let mut by_status = std::collections::BTreeMap::new();
    let mut by_route = std::collections::BTreeMap::new();
    for (kind, st) in &all {
        *by_status.entry(*st).or_insert(0u64) += 1;
        *by_route.entry((*kind, *st)).or_insert(0u64) += 1;
    }
    println!("answers by status: {by_status:?}");
    println!("answers by later route and status: {by_route:?}");
    // The fuzz reached the work, not only the gates.
    for status in [200, 400, 401, 404, 405] {
        assert!(by_status.contains_key(&status), "no {status} in the fuzz");
    }
    // Each later route was reached past its gate (its work done, or for restore and fork,
    // whose random targets seldom exist, its target looked up), and `/cluster` is no route
    // here.
    for kind in [
        "alarms",
        "queue",
        "handler",
        "connections",
        "history",
        "top",
    ] {
        assert!(
            by_route.contains_key(&(kind, 200)),
            "no 200 from the {kind} route"
        );
    }
    assert!(
        by_route.contains_key(&("restore", 404)),
        "no restore target looked up"
    );
    assert!(
        by_route.contains_key(&("fork", 409)),
        "no fork onto an existing actor"
    );
    assert!(
        by_route.contains_key(&("connect", 400)),
        "no plain GET of connect"
    );
    assert!(
        by_route.contains_key(&("cluster", 404)),
        "no GET of /cluster"
    );
    let m = s.metrics();
    assert_eq!(m["kvsqlite_errors_total{kind=\"internal\"}"], 0.0);
    // A normal request is answered after.
    s.sql("after", "CREATE TABLE t(x)", json!([]));
    s.sql("after", "INSERT INTO t VALUES (7)", json!([]));
    assert_eq!(
        s.sql("after", "SELECT x FROM t", json!([]))["rows"],
        json!([[7]])
    );
    for f in FORBIDDEN_FILES {
        assert!(!std::path::Path::new(f).exists(), "{f} was created");
    }
    let hwm = s.vm_hwm_kib();
    assert!(hwm < RSS_BOUND_KIB, "peak RSS {hwm} KiB");
    let (status, stderr) = s.terminate();
    assert!(status.success(), "exit {status:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
