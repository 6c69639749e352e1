//! SIGTERM on `kvsqlite serve` with a 200 ms store (`--rtt 200`): the request in flight gets
//! its 200 and its right answer; a connection opened after the signal is refused; a client that
//! trickles its body does not hold the exit past `--shutdown-deadline-ms`; the process exits 0
//! and every actor that was awake has its sleep record written after its last commit (read
//! back with `kvsqlite kv`: the fence the hints record names is the actor's current fence).

#[path = "common/raw_http.rs"]
mod raw_http;
#[path = "common/serve.rs"]
mod serve;

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raw_http::{addr_of, connect, read_answer, request};
use serde_json::json;
use serve::{Server, ADMIN};

/// `kvsqlite --kv KV kv --actor ID --hex get KEY…`: the values (hex, `None` when absent).
fn kv_get(kv: &str, actor: &str, keys: &[&str]) -> Vec<Option<Vec<u8>>> {
    let out = Command::new(env!("CARGO_BIN_EXE_kvsqlite"))
        .args(["--kv", kv, "kv", "--actor", actor, "--hex", "get"])
        .args(keys)
        .env_remove("KVSQLITE_KV")
        .output()
        .expect("run kvsqlite kv");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .map(|l| {
            let v = l.split('\t').nth(1).expect("KEY<TAB>VALUE");
            v.strip_prefix("0x").map(|h| {
                (0..h.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&h[i..i + 2], 16).expect("hex"))
                    .collect()
            })
        })
        .collect()
}

/// `--shutdown-deadline-ms`.
const DEADLINE: Duration = Duration::from_secs(3);
/// After the deadline: putting three actors to sleep over a 200 ms store (a few round trips
/// each) and exiting. A correctness bound, far below the body timeout (120 s).
const SLEEP_MARGIN: Duration = Duration::from_secs(7);

/// The fence record a hints record names (`version u8 ‖ fence len u16 ‖ fence ‖ …`).
fn hints_fence(hints: &[u8]) -> Vec<u8> {
    assert_eq!(hints[0], 1, "hints format version");
    let n = u16::from_be_bytes([hints[1], hints[2]]) as usize;
    hints[3..3 + n].to_vec()
}

#[test]
fn sigterm_finishes_the_request_in_flight_refuses_new_ones_and_puts_every_actor_to_sleep() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kv = format!("redb:{}", dir.path().join("kv.redb").display());
    let mut s = Server::start(
        &kv,
        &[
            "--rtt",
            "200",
            "--shutdown-deadline-ms",
            &DEADLINE.as_millis().to_string(),
            // A body timeout longer than the whole wait for the exit (60 s): only the shutdown
            // deadline can end the trickling request in time.
            "--body-timeout-ms",
            "120000",
            "--idle-sleep-ms",
            "600000",
        ],
    );
    let addr = addr_of(&s.base);
    let actors = ["a1", "a2", "a3"];
    for a in actors {
        s.sql(a, "CREATE TABLE t(x TEXT)", json!([]));
        s.sql(a, "INSERT INTO t VALUES ('before')", json!([]));
    }
    let admin = format!("Bearer {ADMIN}");

    // A client trickling a 1,000-byte body, a byte every 100 ms (it would need 100 s).
    let sent_all = Arc::new(AtomicBool::new(false));
    let trickle = {
        let (addr, admin, sent_all) = (addr.clone(), admin.clone(), sent_all.clone());
        std::thread::spawn(move || {
            let mut c = connect(&addr, Duration::from_secs(60));
            let head = request(
                "POST",
                "/actors/a1/query",
                &[("Authorization", &admin), ("Content-Length", "1000")],
                None,
            );
            if c.write_all(&head).is_err() {
                return;
            }
            for _ in 0..1000 {
                if c.write_all(b" ").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            sent_all.store(true, Ordering::SeqCst);
        })
    };
    std::thread::sleep(Duration::from_millis(300));

    // The request in flight: a commit on a2 (one 200 ms round trip), sent before the signal.
    let mut inflight = connect(&addr, Duration::from_secs(60));
    let body = json!({ "sql": "INSERT INTO t VALUES ('in flight')" }).to_string();
    inflight
        .write_all(&request(
            "POST",
            "/actors/a2/query",
            &[("Authorization", &admin)],
            Some(body.as_bytes()),
        ))
        .expect("send the request in flight");
    std::thread::sleep(Duration::from_millis(50));
    s.send_term();
    let signalled = Instant::now();

    // A connection opened after the signal is refused while the host is still shutting down
    // (the trickling client keeps it alive until the deadline).
    let mut refused = false;
    for _ in 0..200 {
        match TcpStream::connect(&addr) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                refused = true;
                break;
            }
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    assert!(refused, "connections were still accepted after SIGTERM");
    assert!(
        s.try_exit().is_none(),
        "the host had already exited when the refusal was seen"
    );

    // The request in flight got its answer.
    let a = read_answer(&mut inflight).expect("the answer of the request in flight");
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body, r#"{"changes":1,"columns":[],"rows":[]}"#);

    // Exit 0 within the deadline: the trickling client had not sent its body (it would take
    // 100 s, and the body timeout is 120 s).
    let (status, stderr) = s.wait_exit();
    let took = signalled.elapsed();
    assert!(status.success(), "exit {status:?}: {stderr}");
    assert!(
        took < DEADLINE + SLEEP_MARGIN,
        "the host exited {took:?} after SIGTERM: past the deadline {DEADLINE:?} + {SLEEP_MARGIN:?}"
    );
    assert!(
        !sent_all.load(Ordering::SeqCst),
        "the host waited for the trickled body"
    );
    trickle.join().expect("trickle thread");

    // Every actor that was awake slept after its last commit: its hints record names the fence
    // its store holds now.
    for a in actors {
        let got = kv_get(&kv, a, &["0x0168696e7473", "0x0166656e6365"]);
        assert_eq!(got.len(), 2, "{a}: {got:?}");
        let hints = got[0]
            .as_ref()
            .unwrap_or_else(|| panic!("{a}: no hints record"));
        let fence = got[1]
            .as_ref()
            .unwrap_or_else(|| panic!("{a}: no fence record"));
        assert_eq!(
            &hints_fence(hints),
            fence,
            "{a}: a commit after the sleep record"
        );
    }

    // The committed rows are there, the one in flight included.
    let s = Server::start(&kv, &[]);
    assert_eq!(
        s.sql("a2", "SELECT x FROM t ORDER BY rowid", json!([]))["rows"],
        json!([["before"], ["in flight"]])
    );
    assert_eq!(
        s.sql("a1", "SELECT x FROM t ORDER BY rowid", json!([]))["rows"],
        json!([["before"]])
    );
}
