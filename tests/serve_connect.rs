//! `kvsqlite serve`'s WebSockets (issue 21, part 3): `GET /actors/{id}/connect` refused before
//! the upgrade without the actor's or the admin token; a client connected to an actor that
//! was then put to sleep gets its reply (the message wakes the actor, which sleeps again with
//! the socket still open); pushes reach their targets (a connection, a topic, `*`) and never
//! come from a rolled-back batch; 1,000 sockets on 100 sleeping actors hold no actor awake and
//! no byte buffered (the host's own accounting); a receiver that does not read is closed with
//! code 1008 and its bytes released. Waits are bounded polls (no test times anything).

#[path = "common/serve.rs"]
mod serve;

use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value};
use serve::Server;
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

/// Connects to `actor` with `token` (none: no header) and the query string `query`: the socket,
/// or the HTTP status that refused it.
fn connect(s: &Server, actor: &str, token: Option<&str>, query: &str) -> Result<Ws, u16> {
    let url = format!(
        "{}/actors/{actor}/connect{query}",
        s.base.replace("http://", "ws://")
    );
    let mut req = url.into_client_request().unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    match tungstenite::connect(req) {
        Ok((ws, resp)) => {
            assert_eq!(resp.status(), 101);
            if let MaybeTlsStream::Plain(t) = ws.get_ref() {
                t.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            }
            Ok(ws)
        }
        Err(tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("connect failed: {e}"),
    }
}

/// The next text message as JSON (pings and pongs skipped).
fn recv(ws: &mut Ws) -> Value {
    loop {
        match ws.read().expect("a message") {
            Message::Text(t) => return serde_json::from_str(&t).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.into())).unwrap();
}

fn metric(s: &Server, name: &str) -> f64 {
    s.metrics().get(name).copied().unwrap_or(-1.0)
}

fn awake(s: &Server) -> u64 {
    // With `--idle-timeout-ms 100` the host may close the client's pooled keep-alive connection
    // just as a poll reuses it (a transport error, status 0): ask again on a new one.
    for _ in 0..3 {
        let (status, text) = s.get("/healthz", None);
        if status == 0 {
            continue;
        }
        assert_eq!(status, 200, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        return v["actors_awake"].as_u64().unwrap();
    }
    panic!("/healthz: three transport errors in a row");
}

/// Polls (at most 60 s) until no actor is awake.
fn wait_asleep(s: &Server) {
    for _ in 0..600 {
        if awake(s) == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the actors never slept");
}

fn actor_token(s: &Server, actor: &str) -> String {
    let (st, text) = s.get(&format!("/actors/{actor}/inspector/token"), Some(&s.admin));
    assert_eq!(st, 200, "{text}");
    serde_json::from_str::<Value>(&text).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string()
}

fn set_handler(s: &Server, actor: &str, body: Value) -> (u16, Value) {
    s.admin_post(&format!("/actors/{actor}/connect/handler"), &body)
}

fn connections(s: &Server, actor: &str) -> Vec<Value> {
    s.admin_get(&format!("/actors/{actor}/connections"))["connections"]
        .as_array()
        .expect("a list of connections")
        .clone()
}

fn kv() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let kv = format!("redb:{}", dir.path().join("kv.redb").display());
    (dir, kv)
}

#[test]
fn a_client_connected_to_a_sleeping_actor_gets_its_reply_and_the_actor_sleeps_again() {
    let (_dir, kv) = kv();
    // The HTTP idle timeout is shorter than the waits below: an upgraded socket outlives it.
    let s = Server::start(&kv, &["--idle-sleep-ms", "300", "--idle-timeout-ms", "100"]);
    s.sql(
        "room",
        "CREATE TABLE msgs(id INTEGER PRIMARY KEY, conn TEXT, body TEXT)",
        json!([]),
    );
    // The handler is checked: parameters other than :message and :conn, transaction
    // control, SQL that does not prepare.
    for bad in [
        json!({"sql": "INSERT INTO msgs(body) VALUES (?)"}),
        json!({"sql": "COMMIT"}),
        json!({"sql": "INSERT INTO nope VALUES (:message)"}),
        json!({"sql": []}),
        json!({"statements": "x"}),
    ] {
        let (st, v) = set_handler(&s, "room", bad.clone());
        assert_eq!(st, 400, "{bad} → {v}");
    }
    let handler = json!({"sql": [
        "INSERT INTO msgs(conn, body) VALUES (:conn, :message)",
        "UPDATE _kvsqlite_connections SET state = json_set(state, '$.seen', :message) WHERE id = :conn",
        "SELECT id, body, conn = kvsqlite_conn_id() AS mine FROM msgs ORDER BY id DESC LIMIT 1",
    ]});
    let (st, v) = set_handler(&s, "room", handler.clone());
    assert_eq!((st, &v), (200, &handler));
    let (st, text) = s.get("/actors/room/connect/handler", Some(&s.admin));
    assert_eq!(
        (st, serde_json::from_str::<Value>(&text).unwrap()),
        (200, handler)
    );

    let token = actor_token(&s, "room");
    let mut ws = connect(&s, "room", Some(&token), "?name=ann&topic=general").unwrap();
    let conns = connections(&s, "room");
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0]["params"], json!({"name": "ann"}));
    assert_eq!(conns[0]["topics"], json!(["general"]));
    assert_eq!(conns[0]["open"], json!(true));

    wait_asleep(&s);
    let wakes = metric(&s, "kvsqlite_wakes_total");
    send(&mut ws, "hello");
    assert_eq!(
        recv(&mut ws),
        json!({"reply": {"columns": ["id", "body", "mine"], "rows": [[1, "hello", 1]], "changes": 0}})
    );
    assert_eq!(metric(&s, "kvsqlite_wakes_total"), wakes + 1.0);
    assert_eq!(metric(&s, "kvsqlite_ws_messages_received_total"), 1.0);

    // Asleep again with the socket open; the next message wakes it again.
    wait_asleep(&s);
    assert_eq!(metric(&s, "kvsqlite_ws_connections"), 1.0);
    send(&mut ws, "again");
    assert_eq!(recv(&mut ws)["reply"]["rows"], json!([[2, "again", 1]]));
    // The handler keeps per-connection state in the connection's row.
    assert_eq!(
        connections(&s, "room")[0]["state"],
        json!({"seen": "again"})
    );

    // A failing handler answers an error on the socket and writes nothing.
    s.sql(
        "room",
        "CREATE UNIQUE INDEX one_body ON msgs(body)",
        json!([]),
    );
    send(&mut ws, "again");
    let e = recv(&mut ws);
    assert_eq!(e["status"], json!(400), "{e}");
    assert!(e["error"].as_str().unwrap().contains("UNIQUE"), "{e}");
    assert_eq!(
        s.sql("room", "SELECT count(*) FROM msgs", json!([]))["rows"],
        json!([[2]])
    );

    // Without a handler: 404 on the socket.
    let (st, text) = s.get("/actors/room/connect/handler", Some(&s.admin));
    assert_eq!(st, 200, "{text}");
    let (st, del) = s.admin_delete("/actors/room/connect/handler");
    assert_eq!((st, del.as_str()), (200, r#"{"deleted":true}"#));
    send(&mut ws, "x");
    assert_eq!(recv(&mut ws)["status"], json!(404));

    // Closed: the record goes (now if the actor is awake, else at its next wake).
    ws.close(None).unwrap();
    for _ in 0..300 {
        if connections(&s, "room").is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the closed connection's record stayed");
}

#[test]
fn the_token_is_checked_before_the_upgrade_and_the_socket_cap_holds() {
    let (_dir, kv) = kv();
    let s = Server::start(&kv, &["--max-sockets", "1"]);
    s.sql("a", "CREATE TABLE t(x)", json!([]));
    s.sql("b", "CREATE TABLE t(x)", json!([]));
    let token_b = actor_token(&s, "b");
    assert_eq!(connect(&s, "a", None, "").err(), Some(401));
    assert_eq!(connect(&s, "a", Some("wrong-token"), "").err(), Some(401));
    assert_eq!(connect(&s, "a", Some(&token_b), "").err(), Some(401));
    assert_eq!(connect(&s, "bad%20id", Some(&s.admin), "").err(), Some(400));
    assert_eq!(
        connect(&s, "a", Some(&s.admin), "?topic=%zz").err(),
        Some(400)
    );
    // A valid token without the upgrade headers: 400, no socket.
    let (st, text) = s.get("/actors/a/connect", Some(&s.admin));
    assert_eq!(st, 400, "{text}");
    // Refusals opened nothing.
    assert_eq!(metric(&s, "kvsqlite_ws_connections_opened_total"), 0.0);
    assert!(connections(&s, "a").is_empty());

    // The browser form: the token as a subprotocol next to `kvsqlite`.
    let url = format!("{}/actors/b/connect", s.base.replace("http://", "ws://"));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        format!("kvsqlite, kvsqlite.bearer.{token_b}")
            .parse()
            .unwrap(),
    );
    let (mut first, resp) = tungstenite::connect(req).unwrap();
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("kvsqlite")
    );
    // The cap: one socket open, the next connect is 503 before the upgrade.
    assert_eq!(connect(&s, "a", Some(&s.admin), "").err(), Some(503));
    assert_eq!(metric(&s, "kvsqlite_ws_connections_refused_total"), 1.0);
    first.close(None).unwrap();
    let _ = first.read();
    for _ in 0..300 {
        if let Ok(ws) = connect(&s, "a", Some(&s.admin), "") {
            drop(ws);
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the closed socket's place was never freed");
}

#[test]
fn pushes_reach_connections_topics_and_everyone_and_never_come_from_a_rolled_back_batch() {
    let (_dir, kv) = kv();
    let s = Server::start(&kv, &[]);
    s.sql("chat", "CREATE TABLE t(x)", json!([]));
    let mut red = connect(&s, "chat", Some(&s.admin), "?topic=red").unwrap();
    let mut blue = connect(&s, "chat", Some(&s.admin), "?topic=blue&topic=sky").unwrap();
    let blue_id = connections(&s, "chat")
        .into_iter()
        .find(|c| c["topics"] == json!(["blue", "sky"]))
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    s.sql(
        "chat",
        "SELECT kvsqlite_send('red', '{\"to\":\"red\"}')",
        json!([]),
    );
    assert_eq!(recv(&mut red), json!({"to": "red"}));

    let (st, text) = s.post(
        "/actors/chat/batch",
        Some(&s.admin),
        &json!({"statements": [
            {"sql": "INSERT INTO t VALUES (1)"},
            {"sql": "SELECT kvsqlite_send('*', '{\"rolled\":\"back\"}')"},
            {"sql": "INSERT INTO nope VALUES (1)"},
        ]})
        .to_string(),
    );
    assert_eq!(st, 400, "{text}");
    s.sql(
        "chat",
        "INSERT INTO t SELECT 2 WHERE kvsqlite_send('*', json_object('n', 2))",
        json!([]),
    );
    assert_eq!(recv(&mut red), json!({"n": 2}));
    assert_eq!(recv(&mut blue), json!({"n": 2}));
    s.sql(
        "chat",
        "SELECT kvsqlite_send(?, '[\"only blue\"]')",
        json!([blue_id]),
    );
    s.sql("chat", "SELECT kvsqlite_send('sky', '\"sky\"')", json!([]));
    s.sql("chat", "SELECT kvsqlite_send('nobody', '0')", json!([]));
    assert_eq!(recv(&mut blue), json!(["only blue"]));
    assert_eq!(recv(&mut blue), json!("sky"));
    // Red got nothing since: the next thing it sees is this.
    s.sql("chat", "SELECT kvsqlite_send('red', '\"last\"')", json!([]));
    assert_eq!(recv(&mut red), json!("last"));
    assert_eq!(
        s.sql("chat", "SELECT x FROM t", json!([]))["rows"],
        json!([[2]])
    );
    let m = s.metrics();
    assert_eq!(m["kvsqlite_ws_pushes_delivered_total"], 6.0);
    assert_eq!(m["kvsqlite_ws_pushes_unrouted_total"], 1.0);
    assert_eq!(m["kvsqlite_ws_pushes_dropped_total"], 0.0);
    assert_eq!(m["kvsqlite_ws_buffered_bytes"], 0.0);
}

#[test]
fn a_thousand_sockets_on_a_hundred_sleeping_actors_hold_no_actor_and_no_buffer() {
    let (_dir, kv) = kv();
    let s = Server::start(&kv, &["--idle-sleep-ms", "200", "--max-awake", "8"]);
    let mut socks = Vec::new();
    for a in 0..100 {
        for _ in 0..10 {
            socks.push((
                a,
                connect(&s, &format!("a{a:03}"), Some(&s.admin), "").unwrap(),
            ));
        }
    }
    wait_asleep(&s);
    let m = s.metrics();
    assert_eq!(m["kvsqlite_ws_connections"], 1000.0);
    assert_eq!(m["kvsqlite_ws_connections_opened_total"], 1000.0);
    assert_eq!(m["kvsqlite_ws_buffered_bytes"], 0.0);
    assert_eq!(m["kvsqlite_actors_awake"], 0.0);
    assert!(m["kvsqlite_actors_awake_peak"] <= 8.0);

    // Every actor pushes to its ten sockets (each woken, then asleep again).
    for a in 0..100 {
        s.sql(
            &format!("a{a:03}"),
            "SELECT kvsqlite_send('*', json_object('from', ?))",
            json!([a]),
        );
    }
    for (a, ws) in socks.iter_mut() {
        assert_eq!(recv(ws), json!({"from": *a}));
    }
    wait_asleep(&s);
    let m = s.metrics();
    assert_eq!(m["kvsqlite_ws_connections"], 1000.0);
    assert_eq!(m["kvsqlite_ws_pushes_delivered_total"], 1000.0);
    assert_eq!(m["kvsqlite_ws_buffered_bytes"], 0.0);
    assert_eq!(m["kvsqlite_actors_awake"], 0.0);
}

#[test]
fn a_receiver_that_does_not_read_is_closed_with_1008_and_its_bytes_released() {
    let (_dir, kv) = kv();
    let s = Server::start(&kv, &["--socket-buffer-bytes", "262144"]);
    s.sql("feed", "CREATE TABLE t(x)", json!([]));
    let mut slow = connect(&s, "feed", Some(&s.admin), "").unwrap();
    let mut fast = connect(&s, "feed", Some(&s.admin), "?topic=fast").unwrap();
    // The fast client reads along on a thread of its own, one request behind at most.
    const REQUESTS: i64 = 150;
    let (read_tx, read_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for i in 1..=REQUESTS * 3 {
            assert_eq!(recv(&mut fast)["i"], json!(i));
            if i % 3 == 0 {
                read_tx.send(i).unwrap();
            }
        }
        fast
    });
    // 27 MB of pushes, 180 KB per request (below the buffer), to a client that reads nothing:
    // more than the kernel's socket buffers hold, so the host's queue for it passes 256 KiB.
    for r in 0..REQUESTS {
        s.sql(
            "feed",
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3) \
             SELECT count(kvsqlite_send('*', json_object('i', ? + i, 'pad', hex(zeroblob(30000))))) FROM n",
            json!([r * 3]),
        );
        // The fast client keeps up: it has read this request's pushes before the next.
        assert_eq!(read_rx.recv().unwrap(), r * 3 + 3);
    }
    let _fast = reader.join().unwrap();
    // Only the slow one was closed.
    assert_eq!(metric(&s, "kvsqlite_ws_slow_closed_total"), 1.0);
    // The slow client, reading at last, finds the close code after what got through
    // (the host waits up to 10 s for the close frame to get through).
    loop {
        match slow.read() {
            Ok(Message::Close(Some(f))) => {
                assert_eq!(f.code, CloseCode::Policy);
                break;
            }
            Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_)) => continue,
            other => panic!("expected the close frame, got {other:?}"),
        }
    }
    // The slow socket's session ends and releases its place.
    for _ in 0..300 {
        let m = s.metrics();
        if m["kvsqlite_ws_buffered_bytes"] == 0.0 && m["kvsqlite_ws_connections"] == 1.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metric(&s, "kvsqlite_ws_buffered_bytes"), 0.0);
    assert_eq!(metric(&s, "kvsqlite_ws_connections"), 1.0);
}

#[test]
fn the_readme_chat_example_stores_a_message_and_pushes_it_to_the_room() {
    let (_dir, kv) = kv();
    let s = Server::start(&kv, &["--migrations", "sql/migrations"]);
    let handler = json!({"sql": "INSERT INTO messages(room_id, author_id, body, sent_at) SELECT id, 1, :message, unixepoch() FROM rooms WHERE slug = 'general' RETURNING kvsqlite_send('general', json_object('body', body))"});
    let (st, v) = set_handler(&s, "main", handler);
    assert_eq!(st, 200, "{v}");
    let mut ws = connect(&s, "main", Some(&s.admin), "?topic=general").unwrap();
    send(&mut ws, "hello from the README");
    // The reply, then the push its transaction made (both after the commit is durable).
    let reply = recv(&mut ws);
    assert_eq!(reply["reply"]["changes"], json!(1), "{reply}");
    assert_eq!(recv(&mut ws), json!({"body": "hello from the README"}));
    assert_eq!(
        s.sql(
            "main",
            "SELECT count(*) FROM messages WHERE body = 'hello from the README'",
            json!([])
        )["rows"],
        json!([[1]])
    );
}

#[test]
fn max_sockets_0_turns_connections_off_and_the_restore_phase_with_them() {
    let (_dir, kv) = kv();
    let s = Server::start(&kv, &["--max-sockets", "0"]);
    s.sql("off", "CREATE TABLE t(x)", json!([]));
    assert_eq!(connect(&s, "off", Some(&s.admin), "").err(), Some(404));
    let (st, text) = s.get("/actors/off/inspector/metrics", Some(&s.admin));
    assert_eq!(st, 200, "{text}");
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert!(
        doc.get("startup_internal_init_alarms_ms").is_some(),
        "{doc}"
    );
    assert!(
        doc.get("startup_internal_restore_connections_ms").is_none(),
        "{doc}"
    );
    // With connections on (the default) the phase is there.
    let (_dir2, kv2) = self::kv();
    let on = Server::start(&kv2, &[]);
    on.sql("on", "CREATE TABLE t(x)", json!([]));
    let (_, text) = on.get("/actors/on/inspector/metrics", Some(&on.admin));
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert!(
        doc.get("startup_internal_restore_connections_ms").is_some(),
        "{doc}"
    );
}
