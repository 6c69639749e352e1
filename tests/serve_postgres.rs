//! The store going away: a host on PostgreSQL through a loopback TCP proxy that the test cuts.
//! While cut, requests that need the store answer 503; once restored, the same actor answers
//! again with its data. Skipped (with a message) when the test server is unreachable, except
//! under `CI=true`, where that fails.

#[path = "common/pg.rs"]
mod pg;
#[path = "common/serve.rs"]
mod serve;
#[path = "common/skip.rs"]
mod skip;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kvsqlite::kv::postgres::PostgresOptions;
use parking_lot::Mutex;
use serde_json::json;
use serve::{Server, ADMIN};

/// A loopback proxy to one upstream address that can be cut (every connection closed, new ones
/// refused) and restored.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

impl Proxy {
    fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let up = Arc::new(AtomicBool::new(true));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (up2, open2, upstream) = (up.clone(), open.clone(), upstream.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !up2.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let mut open = open2.lock();
                for s in [&client, &server] {
                    if let Ok(c) = s.try_clone() {
                        open.push(c);
                    }
                }
                let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                    (Ok(c), Ok(s)) => (c, s),
                    _ => continue,
                };
                std::thread::spawn(move || pump(client, server));
                std::thread::spawn(move || pump(s2, c2));
            }
        });
        Proxy { port, up, open }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for s in self.open.lock().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[test]
fn store_going_away_is_503_and_the_actor_recovers() {
    let store = match pg::connect(PostgresOptions::default()) {
        Ok(store) => store,
        Err(why) => {
            skip::skip(&format!("postgres unavailable: {why}"));
            return;
        }
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let prefix = format!("serve-pg-{}-{nanos}-", std::process::id());
    let _cleanup = pg::Cleanup {
        table: store.table().to_string(),
        prefix: prefix.clone(),
    };
    drop(store);

    let upstream = pg::test_url();
    let host_port = upstream
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("the test URL is postgres://USER@HOST:PORT/DB")
        .to_string();
    let proxy = Proxy::start(&host_port);
    let kv = upstream.replacen(&host_port, &format!("127.0.0.1:{}", proxy.port), 1);
    let s = Server::start(&kv, &["--statement-timeout-ms", "20000"]);
    let actor = format!("{prefix}a");
    let q = format!("/actors/{actor}/query");
    s.sql(&actor, "CREATE TABLE t(x TEXT)", json!([]));
    s.sql(&actor, "INSERT INTO t VALUES ('before the cut')", json!([]));

    proxy.cut();
    // A write needs the store: 503, and the host stays up.
    let (st, text) = s.post(
        &q,
        Some(ADMIN),
        r#"{"sql": "INSERT INTO t VALUES ('during the cut')"}"#,
    );
    assert_eq!(st, 503, "{text}");
    // Only "store unavailable": the store's URL and errors go to the host's log alone.
    assert_eq!(text, r#"{"error":"store unavailable"}"#);
    // The actor was put to sleep; waking it needs the store too: 503 again.
    let (st, text) = s.post(&q, Some(ADMIN), r#"{"sql": "SELECT x FROM t"}"#);
    assert_eq!(st, 503, "{text}");
    assert_eq!(text, r#"{"error":"store unavailable"}"#);
    assert_eq!(s.get("/healthz", None).0, 200);
    let m = s.metrics();
    assert!(m["kvsqlite_errors_total{kind=\"unavailable\"}"] >= 2.0);

    proxy.restore();
    // The same actor answers again with its data (bounded retries while the pool reconnects).
    let mut answer = None;
    for _ in 0..100 {
        let (st, text) = s.post(
            &q,
            Some(ADMIN),
            r#"{"sql": "SELECT x FROM t ORDER BY rowid"}"#,
        );
        if st == 200 {
            answer = Some(text);
            break;
        }
        assert_eq!(st, 503, "{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let answer: serde_json::Value =
        serde_json::from_str(&answer.expect("the actor answered after the restore")).expect("JSON");
    assert_eq!(answer["rows"], json!([["before the cut"]]));
    s.sql(&actor, "INSERT INTO t VALUES ('after')", json!([]));
    let out = s.sql(&actor, "SELECT count(*) FROM t", json!([]));
    assert_eq!(out["rows"], json!([[2]]));
    let (status, stderr) = s.terminate();
    assert!(status.success(), "exit {status:?}: {stderr}");
    // The details are in the log.
    assert!(stderr.contains("store unavailable: "), "{stderr}");
}
