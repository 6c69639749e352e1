//! Slow and idle clients against `kvsqlite serve`, made by the test itself (loopback, at most
//! 700 sockets): while hundreds of half-open requests hang, a normal request is answered; the
//! host closes each of them once its timeout passes (header timeout for heads that never end,
//! idle timeout for silent and kept-alive connections) and gives their file descriptors back;
//! connections over `--max-connections` are answered 503 at once.

#[path = "common/raw_http.rs"]
mod raw_http;
#[path = "common/serve.rs"]
mod serve;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raw_http::{addr_of, connect, read_answer, request, wait_closed, Closed};
use serde_json::json;
use serve::{Server, ADMIN};

/// Open file descriptors of a process.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .expect("read /proc/PID/fd")
}

/// The bytes the host sends to a connection over the cap.
const REFUSED: &str = "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 32\r\n\r\n{\"error\":\"too many connections\"}";

#[test]
fn hanging_clients_do_not_block_others_and_are_closed_after_their_timeout() {
    let s = Server::start(
        "memory:",
        &[
            "--header-timeout-ms",
            "2000",
            "--idle-timeout-ms",
            "1000",
            "--max-connections",
            "1000",
        ],
    );
    let addr = addr_of(&s.base);
    s.sql("a", "CREATE TABLE t(x)", json!([]));
    let baseline = fds(s.pid());

    // 300 heads that never end, 300 connections that say nothing.
    let mut partial: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut c = connect(&addr, Duration::from_secs(30));
            c.write_all(b"POST /actors/a/query HTTP/1.1\r\nHost: x\r\nContent-Le")
                .expect("partial head");
            c
        })
        .collect();
    let mut silent: Vec<TcpStream> = (0..300)
        .map(|_| connect(&addr, Duration::from_secs(30)))
        .collect();
    // One head trickled a byte every 100 ms: never idle, but never complete in time.
    let trickle_closed = Arc::new(AtomicBool::new(false));
    let trickle = {
        let addr = addr.clone();
        let closed = trickle_closed.clone();
        std::thread::spawn(move || {
            let mut c = connect(&addr, Duration::from_secs(30));
            let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
            for b in head.iter() {
                if c.write_all(&[*b]).is_err() {
                    closed.store(true, Ordering::SeqCst);
                    return Closed::Closed(Vec::new());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            wait_closed(&mut c, 1 << 16)
        })
    };

    // While they hang: a normal request (on a kept-alive connection) is answered.
    let mut keep = connect(&addr, Duration::from_secs(30));
    let body = json!({ "sql": "INSERT INTO t VALUES (42)" }).to_string();
    keep.write_all(&request(
        "POST",
        "/actors/a/query",
        &[("Authorization", &format!("Bearer {ADMIN}"))],
        Some(body.as_bytes()),
    ))
    .expect("request");
    let a = read_answer(&mut keep).expect("an answer");
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body, r#"{"changes":1,"columns":[],"rows":[]}"#);
    assert_eq!(
        s.sql("a", "SELECT x FROM t", json!([]))["rows"],
        json!([[42]])
    );

    // Each hanging connection is closed by the host (without an answer), none is left open.
    for (what, conns) in [("partial head", &mut partial), ("silent", &mut silent)] {
        for c in conns.iter_mut() {
            assert_eq!(
                wait_closed(c, 1 << 16),
                Closed::Closed(Vec::new()),
                "{what}"
            );
        }
    }
    // The kept-alive connection, now idle, too.
    assert_eq!(wait_closed(&mut keep, 1 << 16), Closed::Closed(Vec::new()));
    let trickled = trickle.join().expect("trickle thread");
    assert!(
        trickle_closed.load(Ordering::SeqCst) || trickled == Closed::Closed(Vec::new()),
        "the trickled head: {trickled:?}"
    );
    drop(partial);
    drop(silent);
    // Their file descriptors are given back (bounded wait for the host to notice).
    let mut now = fds(s.pid());
    for _ in 0..200 {
        if now <= baseline + 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        now = fds(s.pid());
    }
    assert!(now <= baseline + 2, "fds: {baseline} before, {now} after");
    assert_eq!(s.get("/healthz", None).0, 200);
}

#[test]
fn connections_over_the_cap_are_refused_with_503() {
    let s = Server::start(
        "memory:",
        &[
            "--max-connections",
            "4",
            "--idle-timeout-ms",
            "60000",
            "--header-timeout-ms",
            "60000",
        ],
    );
    let addr = addr_of(&s.base);
    let held: Vec<TcpStream> = (0..4)
        .map(|_| connect(&addr, Duration::from_secs(30)))
        .collect();
    // The fifth (and sixth) connection: 503 at once, then closed.
    for _ in 0..2 {
        let mut c = connect(&addr, Duration::from_secs(30));
        let _ = c.write_all(&request("GET", "/healthz", &[], None));
        match wait_closed(&mut c, 1 << 16) {
            Closed::Closed(bytes) => assert_eq!(String::from_utf8_lossy(&bytes), REFUSED),
            Closed::StillOpen => panic!("the connection over the cap stayed open"),
        }
    }
    // Once the four go away, a client is served again (bounded wait for the host to notice).
    drop(held);
    let mut status = 0;
    for _ in 0..200 {
        status = s.get("/healthz", None).0;
        if status == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status, 200);
}
