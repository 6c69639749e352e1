//! `GET /actors/{id}/connect`: a WebSocket to an actor that the host keeps while the actor
//! sleeps; each message runs the actor's message handler, and the actor's pushes come back on
//! it. Also the admin routes of the handler and of the connection records.
//!
//! Why it exists: clients that want to be told (a chat room, a live dashboard) should not poll,
//! and an actor should not stay awake for an open socket. The socket lives in the host's
//! [`super::sockets::Hub`]; the actor holds only a record of it (`_kvsqlite_connections`,
//! restored at wake). A message wakes the actor if it sleeps and runs its **handler**: the
//! statements set with `POST /actors/{id}/connect/handler`, in one transaction, under the
//! remote guard, with `:message` bound to the message's text and `:conn` to the connection's
//! id (also `kvsqlite_conn_id()`). The answer, `{"reply": {"columns", "rows", "changes"}}` of
//! the last statement or `{"error", "status"}`, goes back on the socket once the transaction is
//! durable; replies come in the order of the messages. A client holding only the actor's token
//! can thus do exactly what the handler does, never run SQL of its own.
//!
//! Order of checks at connect: the token (401: `Authorization: Bearer`, or for browsers the
//! subprotocol `kvsqlite.bearer.<token>` next to `kvsqlite`), the actor id (400), the upgrade
//! headers (400), the socket cap (503), then the record is written (waking the actor) and only
//! then the connection is upgraded (101).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rusqlite::OptionalExtension;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::auth::{bearer, Lookup};
use super::registry::Work;
use super::routes::{
    actor_id, actor_token, admin_on_actor, admin_post_json, respond, statement_error, AppState,
};
use super::sockets::{Socket, DEAD_CLOSE_CODE};
use super::sql::{self, StatementRequest};
use super::{tokens_equal, HostError};
use crate::actor::guard::Mode;
use crate::actor::{alarms, Actor};

/// The subprotocol a browser client offers with its token (`kvsqlite.bearer.<token>`).
pub const PROTOCOL: &str = "kvsqlite";

const BEARER_PROTOCOL: &str = "kvsqlite.bearer.";

/// How long a closing socket waits for its close frame to get through.
pub const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// Most statements in a handler.
pub const MAX_HANDLER_STATEMENTS: usize = 16;

/// Most topics one connection subscribes to.
pub const MAX_TOPICS: usize = 16;

/// Most bytes of a connection's query string.
pub const MAX_QUERY_BYTES: usize = 4096;

const HANDLERS: &str = "CREATE TABLE IF NOT EXISTS _kvsqlite_handlers(\
    name TEXT PRIMARY KEY, statements TEXT NOT NULL) WITHOUT ROWID";

/// The connection routes.
pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route("/actors/{id}/connect", get(connect_route))
        .route(
            "/actors/{id}/connect/handler",
            get(get_handler_route)
                .post(set_handler_route)
                .delete(delete_handler_route),
        )
        .route("/actors/{id}/connections", get(list_route))
}

/// The token of a connect: the bearer header, else the subprotocol `kvsqlite.bearer.<token>`.
fn connect_token(headers: &HeaderMap) -> Option<String> {
    if let Some(t) = bearer(headers) {
        return Some(t.to_string());
    }
    headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| p.strip_prefix(BEARER_PROTOCOL))
        .filter(|t| !t.is_empty())
        .map(String::from)
}

fn percent_decode(s: &str) -> Result<String, HostError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        HostError::BadRequest("the query string: a bad %-escape".into())
                    })?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map_err(|_| HostError::BadRequest("the query string is not UTF-8".into()))
}

/// The connection's parameters (a JSON object of the query string; the last value of a name
/// wins) and its topics (every `topic=`).
fn connect_params(uri: &Uri) -> Result<(Value, Vec<String>), HostError> {
    let q = uri.query().unwrap_or("");
    if q.len() > MAX_QUERY_BYTES {
        return Err(HostError::BadRequest(format!(
            "the query string is over {MAX_QUERY_BYTES} bytes"
        )));
    }
    let mut params = serde_json::Map::new();
    let mut topics = Vec::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (percent_decode(k)?, percent_decode(v)?);
        if k == "topic" {
            if v.is_empty() || v == crate::actor::connections::ALL {
                return Err(HostError::BadRequest(
                    "a topic must not be empty nor \"*\"".into(),
                ));
            }
            if !topics.contains(&v) {
                topics.push(v);
            }
            if topics.len() > MAX_TOPICS {
                return Err(HostError::BadRequest(format!(
                    "at most {MAX_TOPICS} topics per connection"
                )));
            }
        } else {
            params.insert(k, Value::String(v));
        }
    }
    Ok((Value::Object(params), topics))
}

fn new_conn_id() -> Result<String, HostError> {
    let t = crate::actor::startup::random_token()
        .map_err(|e| HostError::Internal(format!("no connection id: {e}")))?;
    Ok(format!("c{}", &t[..16]))
}

/// `GET /actors/{id}/connect` (the actor's token or the admin token; see the module comment).
async fn connect_route(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    uri: Uri,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let r = async {
        let token = connect_token(&headers).ok_or(HostError::Unauthorized)?;
        let id = actor_id(id)?;
        let admin = tokens_equal(&token, &s.admin_token);
        if !admin {
            match actor_token(&s, &id).await? {
                Lookup::Token(t) if tokens_equal(&token, &t) => {}
                _ => return Err(HostError::Unauthorized),
            }
        }
        let ws = ws.map_err(|e| HostError::BadRequest(format!("not a WebSocket upgrade: {e}")))?;
        let (params, topics) = connect_params(&uri)?;
        let hub = s.registry.hub().clone();
        if hub.limits().max_sockets == 0 {
            return Err(HostError::NotFound(
                "connections are off on this host (--max-sockets 0)".into(),
            ));
        }
        let reservation = hub.reserve().ok_or_else(|| {
            HostError::Unavailable(format!(
                "too many sockets: the host holds its limit of {}",
                hub.limits().max_sockets
            ))
        })?;
        let conn_id = new_conn_id()?;
        let (sock, rx) = hub.register(&id, &conn_id, topics.clone());
        let (cid, p) = (conn_id.clone(), params.to_string());
        let timeout = s.statement_timeout;
        let work: Work = Box::new(move |actor: &Actor| {
            actor
                .open_connection(&cid, &p, &topics, alarms::now_ms())
                .map_err(|e| super::alarm_tick::actor_error(e, timeout))?;
            Ok(json!({}))
        });
        if let Err(e) = s.registry.run(&id, timeout, work).await {
            let mut rx = rx;
            hub.remove(&sock, &mut rx);
            return Err(e);
        }
        let limits = hub.limits().clone();
        let s2 = s.clone();
        let failed = {
            let (hub, sock) = (hub.clone(), sock.clone());
            move |e: axum::Error| {
                tracing::debug!(conn = %sock.id, "WebSocket upgrade failed: {e}");
                let (_tx, mut dead) = mpsc::unbounded_channel::<String>();
                hub.remove(&sock, &mut dead);
            }
        };
        Ok(ws
            .protocols([PROTOCOL])
            .max_message_size(limits.max_message_bytes)
            .max_frame_size(limits.max_message_bytes)
            .read_buffer_size(4096)
            .write_buffer_size(4096)
            .max_write_buffer_size(limits.buffer_bytes.max(8192))
            .on_failed_upgrade(failed)
            .on_upgrade(move |socket| session(s2, sock, rx, socket, reservation)))
    }
    .await;
    match r {
        Ok(resp) => resp.into_response(),
        Err(e) => respond(&s.metrics, Err(e)),
    }
}

/// Sends `m`, unless the socket is told to close first; false when the socket is done.
async fn send_or_close(ws: &mut WebSocket, sock: &Socket, m: Message) -> bool {
    tokio::select! {
        r = ws.send(m) => r.is_ok(),
        _ = sock.kill.notified() => { sock.kill.notify_one(); false }
    }
}

/// One socket's life: queued pushes out, messages in (each through the handler), pings.
async fn session(
    s: AppState,
    sock: Arc<Socket>,
    mut rx: mpsc::UnboundedReceiver<String>,
    mut ws: WebSocket,
    _reservation: super::sockets::Reservation,
) {
    let hub = s.registry.hub().clone();
    let ping_every = hub.limits().ping_every;
    let mut ping = tokio::time::interval(ping_every);
    ping.tick().await;
    let mut last_seen = Instant::now();
    let mut close_code = None;
    loop {
        tokio::select! {
            biased;
            _ = sock.kill.notified() => {
                close_code = Some(sock.close_code.load(std::sync::atomic::Ordering::Acquire) as u16);
                break;
            }
            out = rx.recv() => {
                let Some(text) = out else { break };
                let len = text.len();
                let ok = send_or_close(&mut ws, &sock, Message::Text(text.into())).await;
                hub.sent(&sock, len);
                if !ok { continue; }
            }
            inc = ws.recv() => {
                last_seen = Instant::now();
                let text = match inc {
                    Some(Ok(Message::Text(t))) => t.to_string(),
                    Some(Ok(Message::Binary(b))) => match String::from_utf8(b.to_vec()) {
                        Ok(t) => t,
                        Err(_) => {
                            let e = json!({"error": "messages are UTF-8 text", "status": 400});
                            if !send_or_close(&mut ws, &sock, Message::Text(e.to_string().into())).await { continue; }
                            continue;
                        }
                    },
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                };
                s.metrics.families.realtime.ws_messages.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let reply = handle_message(&s, &sock, text).await;
                if !send_or_close(&mut ws, &sock, Message::Text(reply.to_string().into())).await { continue; }
            }
            _ = ping.tick() => {
                if last_seen.elapsed() > ping_every * 2 {
                    close_code = Some(DEAD_CLOSE_CODE);
                    break;
                }
                if !send_or_close(&mut ws, &sock, Message::Ping(Vec::new().into())).await { continue; }
            }
        }
    }
    hub.remove(&sock, &mut rx);
    if let Some(code) = close_code {
        let reason = match code {
            super::sockets::SLOW_CLOSE_CODE => "slow receiver: too many bytes buffered",
            _ => "going away",
        };
        let frame = Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }));
        // A slow receiver gets its close frame once it reads what is already on its way, if it
        // does within CLOSE_WAIT; the socket's queue is released already.
        let _ = tokio::time::timeout(CLOSE_WAIT, ws.send(frame)).await;
    }
    drop(ws);
    // The record goes now when the actor is awake; else at its next wake (a stale record).
    if s.registry.is_awake(&sock.actor) {
        let ids = vec![sock.id.clone()];
        let work: Work = Box::new(move |actor: &Actor| {
            actor
                .close_connections(&ids)
                .map_err(|e| HostError::Internal(e.to_string()))?;
            Ok(json!({}))
        });
        if let Err(e) = s.registry.run(&sock.actor, s.statement_timeout, work).await {
            tracing::debug!(actor = %sock.actor, "closing a connection record failed: {}", e.message());
        }
    }
}

/// Runs the actor's handler on one message: the reply (after the transaction is durable).
async fn handle_message(s: &AppState, sock: &Socket, text: String) -> Value {
    let timeout = s.statement_timeout;
    let conn = sock.id.clone();
    let budget = sql::ResultBudget::new(s.max_result_bytes.min(hub_reply_limit(s)));
    let work: Work = Box::new(move |actor: &Actor| {
        actor.with_connection(&conn, || run_handler(actor, &conn, &text, timeout, budget))
    });
    match s.registry.run(&sock.actor, timeout, work).await {
        Ok(v) => json!({ "reply": v }),
        Err(e) => {
            s.metrics.error(e.kind());
            json!({ "error": e.message(), "status": e.status() })
        }
    }
}

fn hub_reply_limit(s: &AppState) -> usize {
    s.registry.hub().limits().buffer_bytes.max(4096)
}

/// The handler's statements, if set.
fn load_handler(db: &rusqlite::Connection) -> Result<Option<Vec<String>>, rusqlite::Error> {
    let exists = db
        .query_row(
            "/* kvsqlite inspector */ SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = '_kvsqlite_handlers'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !exists {
        return Ok(None);
    }
    let text: Option<String> = db
        .query_row(
            "/* kvsqlite inspector */ SELECT statements FROM _kvsqlite_handlers WHERE name = 'message'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
}

/// Binds a handler statement's named parameters: `:message` and `:conn` (others refused).
fn bind(
    db: &rusqlite::Connection,
    sql_text: &str,
    message: &str,
    conn: &str,
) -> Result<StatementRequest, HostError> {
    let st = db
        .prepare(sql_text)
        .map_err(|e| HostError::Sql(sql::error_text(&e)))?;
    let mut params = Vec::with_capacity(st.parameter_count());
    for i in 1..=st.parameter_count() {
        params.push(match st.parameter_name(i) {
            Some(":message") => rusqlite::types::Value::Text(message.to_string()),
            Some(":conn") => rusqlite::types::Value::Text(conn.to_string()),
            other => {
                return Err(HostError::BadRequest(format!(
                    "the handler's parameter {} is unknown (use :message and :conn)",
                    other.unwrap_or("?")
                )))
            }
        });
    }
    Ok(StatementRequest {
        sql: sql_text.to_string(),
        params,
    })
}

fn run_handler(
    actor: &Actor,
    conn: &str,
    message: &str,
    timeout: Duration,
    mut budget: sql::ResultBudget,
) -> Result<Value, HostError> {
    let db = actor.db();
    let statements = load_handler(db)
        .map_err(|e| statement_error(&e, timeout))?
        .ok_or_else(|| {
            HostError::NotFound(format!(
                "actor {:?} has no message handler: set one with POST /actors/{}/connect/handler",
                actor.id(),
                actor.id()
            ))
        })?;
    db.execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| statement_error(&e, timeout))?;
    let r = (|| {
        let _remote = actor.sql_guard().scope(Mode::Remote);
        let mut last = json!(null);
        for (i, text) in statements.iter().enumerate() {
            let st = bind(db, text, message, conn)?;
            last = sql::run_statement(db, &st, &mut budget).map_err(|e| {
                match statement_error(&actor.sql_guard().explain(e), timeout) {
                    HostError::Sql(m) => HostError::Sql(format!("handler statement {i}: {m}")),
                    other => other,
                }
            })?;
            if db.is_autocommit() {
                return Err(HostError::BadRequest(format!(
                    "handler statement {i} ended the message's transaction"
                )));
            }
        }
        Ok(last)
    })();
    match r {
        Ok(v) => {
            db.execute_batch("COMMIT")
                .map_err(|e| statement_error(&e, timeout))?;
            Ok(v)
        }
        Err(e) => {
            if !db.is_autocommit() {
                let _ = db.execute_batch("ROLLBACK");
            }
            Err(e)
        }
    }
}

/// The handler body: `{"sql": "…"}` or `{"sql": ["…", …]}`.
fn handler_statements(body: &Value) -> Result<Vec<String>, HostError> {
    let bad = |m: &str| HostError::BadRequest(m.to_string());
    let Some(obj) = body.as_object() else {
        return Err(bad("the body must be a JSON object"));
    };
    if let Some(k) = obj.keys().find(|k| *k != "sql") {
        return Err(HostError::BadRequest(format!(
            "the body: unknown field {k:?} (expected sql)"
        )));
    }
    let list: Vec<String> = match obj.get("sql") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(String::from))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("\"sql\" must be a string or an array of strings"))?,
        _ => return Err(bad("\"sql\" must be a string or an array of strings")),
    };
    if list.is_empty() || list.len() > MAX_HANDLER_STATEMENTS {
        return Err(HostError::BadRequest(format!(
            "a handler has 1 to {MAX_HANDLER_STATEMENTS} statements"
        )));
    }
    Ok(list)
}

/// `POST /actors/{id}/connect/handler` `{"sql": "…" | ["…", …]}` (admin): each statement must
/// prepare under the remote guard, use only `:message` and `:conn`, and not control the
/// transaction; the handler is stored in the actor's database.
async fn set_handler_route(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    admin_post_json(s, id, headers, body, |s, id, body| async move {
        let statements = handler_statements(&body)?;
        let timeout = s.statement_timeout;
        let work: Work = Box::new(move |actor: &Actor| {
            let db = actor.db();
            // The handler may name the connections' table before the first connection.
            crate::actor::connections::create_table(db)
                .map_err(|e| statement_error(&e, timeout))?;
            for (i, text) in statements.iter().enumerate() {
                if actor.sql_guard().transaction_control(db, text).is_some() {
                    return Err(HostError::BadRequest(format!(
                        "handler statement {i} controls the transaction; the handler runs in one"
                    )));
                }
                let _remote = actor.sql_guard().scope(Mode::Remote);
                bind(db, text, "", "").map_err(|e| match e {
                    HostError::Sql(m) => HostError::Sql(format!("handler statement {i}: {m}")),
                    other => other,
                })?;
            }
            let text = serde_json::to_string(&statements)
                .map_err(|e| HostError::Internal(e.to_string()))?;
            db.execute_batch(HANDLERS)
                .and_then(|_| {
                    db.execute(
                        "INSERT OR REPLACE INTO _kvsqlite_handlers(name, statements) VALUES ('message', ?1)",
                        [&text],
                    )
                })
                .map_err(|e| statement_error(&e, timeout))?;
            Ok(json!({ "sql": statements }))
        });
        s.registry.run(&id, timeout, work).await
    })
    .await
}

/// `GET /actors/{id}/connect/handler` (admin): `{"sql": [...]}`, or `{"sql": null}`.
async fn get_handler_route(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    admin_on_actor(&s, id, &headers, |timeout, _| {
        Box::new(move |actor: &Actor| {
            let h = load_handler(actor.db()).map_err(|e| statement_error(&e, timeout))?;
            Ok(json!({ "sql": h }))
        })
    })
    .await
}

/// `DELETE /actors/{id}/connect/handler` (admin): `{"deleted": true|false}`.
async fn delete_handler_route(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    admin_on_actor(&s, id, &headers, |timeout, _| {
        Box::new(move |actor: &Actor| {
            let db = actor.db();
            if load_handler(db)
                .map_err(|e| statement_error(&e, timeout))?
                .is_none()
            {
                return Ok(json!({ "deleted": false }));
            }
            db.execute("DELETE FROM _kvsqlite_handlers WHERE name = 'message'", [])
                .map_err(|e| statement_error(&e, timeout))?;
            Ok(json!({ "deleted": true }))
        })
    })
    .await
}

/// `GET /actors/{id}/connections` (admin): `{"connections": [{"id", "params", "topics",
/// "state", "opened_ms", "open"}]}` — the actor's records, `open` when this host holds the
/// socket.
async fn list_route(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let hub = s.registry.hub().clone();
    admin_on_actor(&s, id, &headers, |timeout, id| {
        let aid = id.to_string();
        Box::new(move |actor: &Actor| {
            let list = actor
                .connections()
                .map_err(|e| super::alarm_tick::actor_error(e, timeout))?;
            let ids: Vec<String> = list.iter().map(|c| c.id.clone()).collect();
            let stale = hub.stale(&aid, &ids);
            Ok(json!({ "connections": list.iter().map(|c| json!({
                "id": c.id,
                "params": serde_json::from_str::<Value>(&c.params).unwrap_or(Value::Null),
                "topics": c.topics,
                "state": serde_json::from_str::<Value>(&c.state).unwrap_or(Value::Null),
                "opened_ms": c.opened_ms,
                "open": !stale.contains(&c.id),
            })).collect::<Vec<_>>() }))
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_become_parameters_and_topics() {
        let uri: Uri = "/actors/a/connect?name=bo%20b&topic=room&topic=x+y&topic=room"
            .parse()
            .unwrap();
        let (p, t) = connect_params(&uri).unwrap();
        assert_eq!(p, json!({"name": "bo b"}));
        assert_eq!(t, vec!["room".to_string(), "x y".to_string()]);
        let bad: Uri = "/c?topic=%zz".parse().unwrap();
        assert!(connect_params(&bad).is_err());
        let star: Uri = "/c?topic=*".parse().unwrap();
        assert!(connect_params(&star).is_err());
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::SEC_WEBSOCKET_PROTOCOL,
            "kvsqlite, kvsqlite.bearer.abc".parse().unwrap(),
        );
        assert_eq!(connect_token(&h).as_deref(), Some("abc"));
    }
}
