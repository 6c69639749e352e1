//! The host's alarms: `POST/GET /actors/{id}/alarms`, `DELETE /actors/{id}/alarms/{alarm}`,
//! and the tick that fires what is due.
//!
//! Why it exists: an actor that sleeps cannot wake itself; the host lists the store-wide due
//! index ([`crate::actor::alarms`]) every [`TICK`], wakes each actor with a due entry (through
//! the registry, like a request, so one request at a time still holds), runs the due alarms'
//! stored SQL — each in the transaction that deletes it — and puts the actor back to sleep if
//! the tick woke it. An alarm whose SQL fails is rolled back and retried with a backoff
//! (counted in the actor's `alarm_retries`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{delete, get};
use axum::Router;
use serde_json::{json, Value};

use super::registry::{store_unavailable, Registry, Work};
use super::routes::{actor_id, read_json, require_admin, respond, statement_error, AppState};
use super::sql::{self, StatementRequest};
use super::HostError;
use crate::actor::alarms::{self, Alarm};
use crate::actor::guard::Mode;
use crate::actor::{Actor, ActorError, HookError};
use crate::vfs::Database;

/// How often the host lists the due index: an alarm fires at most this long after it is due
/// (plus the time its actor takes to wake and run it).
pub const TICK: Duration = Duration::from_secs(1);

/// Most due entries read from one shard per tick (the rest wait for the next tick).
pub const LIST_LIMIT: usize = 1024;

/// The name of the alarms the host schedules (their payload is the statement as JSON).
pub const SQL_ALARM: &str = "sql";

/// The alarm routes.
pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route("/actors/{id}/alarms", get(list_route).post(schedule_route))
        .route("/actors/{id}/alarms/{alarm}", delete(cancel_route))
}

fn alarm_json(a: &Alarm) -> Value {
    let stored: Value = serde_json::from_slice(&a.payload).unwrap_or(Value::Null);
    json!({
        "id": a.id,
        "at": a.at_ms,
        "name": a.name,
        "sql": stored.get("sql").cloned().unwrap_or(Value::Null),
        "params": stored.get("params").cloned().unwrap_or(Value::Null),
        "attempts": a.attempts,
    })
}

fn actor_error(e: ActorError, timeout: Duration) -> HostError {
    match e {
        ActorError::Sqlite(e) => statement_error(&e, timeout),
        ActorError::Moved => HostError::Unavailable(
            "actor moved: another instance wrote since this one woke; retry".into(),
        ),
        ActorError::Kv(e) => store_unavailable(format!("the store failed: {e}")),
        e => HostError::Internal(e.to_string()),
    }
}

/// `POST /actors/{id}/alarms` `{"at": ms | "after_ms": ms, "sql", "params"}` (admin token):
/// the statement is checked (it must prepare, and must not control the transaction) and
/// stored; the answer is `{"id", "at"}`.
async fn schedule_route(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        require_admin(&s, &headers)?;
        let id = actor_id(id)?;
        let body = read_json(&s, &headers, body).await?;
        let at = match (body.get("at"), body.get("after_ms")) {
            (Some(at), None) => at
                .as_u64()
                .filter(|&v| v <= i64::MAX as u64)
                .ok_or_else(|| bad("\"at\" must be milliseconds since the Unix epoch"))?,
            (None, Some(after)) => {
                let after = after
                    .as_u64()
                    .ok_or_else(|| bad("\"after_ms\" must be a non-negative integer"))?;
                alarms::now_ms().saturating_add(after)
            }
            _ => return Err(bad("give exactly one of \"at\" and \"after_ms\"")),
        };
        let Some(obj) = body.as_object() else {
            return Err(bad("the body must be a JSON object"));
        };
        if let Some(k) = obj
            .keys()
            .find(|k| !matches!(k.as_str(), "at" | "after_ms" | "sql" | "params"))
        {
            return Err(HostError::BadRequest(format!(
                "the body: unknown field {k:?} (expected at or after_ms, sql, params)"
            )));
        }
        let mut stored = json!({ "sql": body.get("sql").cloned().unwrap_or(Value::Null) });
        if let Some(p) = body.get("params") {
            stored["params"] = p.clone();
        }
        let st = sql::statement_from_json(&stored, "the body").map_err(HostError::BadRequest)?;
        if stored.get("params").is_none() {
            stored["params"] = json!([]);
        }
        let timeout = s.statement_timeout;
        let work: Work = Box::new(move |actor: &Actor| {
            check_statement(actor, &st)?;
            let aid = actor
                .schedule_at(at, SQL_ALARM, stored.to_string().as_bytes())
                .map_err(|e| actor_error(e, timeout))?;
            Ok(json!({ "id": aid, "at": at }))
        });
        s.registry.run(&id, timeout, work).await
    }
    .await;
    respond(&s.metrics, r)
}

fn bad(m: &str) -> HostError {
    HostError::BadRequest(m.into())
}

/// The statement prepares under the remote guard and does not control the transaction.
fn check_statement(actor: &Actor, st: &StatementRequest) -> Result<(), HostError> {
    let db = actor.db();
    if actor.sql_guard().transaction_control(db, &st.sql).is_some() {
        return Err(bad(
            "an alarm's statement runs in the alarm's transaction; it cannot control it",
        ));
    }
    let _remote = actor.sql_guard().scope(Mode::Remote);
    db.prepare(&st.sql)
        .map(|_| ())
        .map_err(|e| HostError::Sql(sql::error_text(&actor.sql_guard().explain(e))))
}

/// `GET /actors/{id}/alarms` (admin token): `{"alarms": [{"id", "at", "name", "sql",
/// "params", "attempts"}]}`, earliest first.
async fn list_route(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let r = async {
        require_admin(&s, &headers)?;
        let id = actor_id(id)?;
        let timeout = s.statement_timeout;
        let work: Work = Box::new(move |actor: &Actor| {
            let list = actor.alarms().map_err(|e| actor_error(e, timeout))?;
            Ok(json!({ "alarms": list.iter().map(alarm_json).collect::<Vec<_>>() }))
        });
        s.registry.run(&id, timeout, work).await
    }
    .await;
    respond(&s.metrics, r)
}

/// `DELETE /actors/{id}/alarms/{alarm}` (admin token): `{"cancelled": true|false}`.
async fn cancel_route(
    State(s): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let r = async {
        require_admin(&s, &headers)?;
        let Path((id, alarm)) =
            path.map_err(|e| HostError::BadRequest(format!("invalid path: {e}")))?;
        super::check_actor_id(&id)?;
        let alarm: i64 = alarm
            .parse()
            .map_err(|_| bad("the alarm id must be an integer"))?;
        let timeout = s.statement_timeout;
        let work: Work = Box::new(move |actor: &Actor| {
            let cancelled = actor.cancel(alarm).map_err(|e| actor_error(e, timeout))?;
            Ok(json!({ "cancelled": cancelled }))
        });
        s.registry.run(&id, timeout, work).await
    }
    .await;
    respond(&s.metrics, r)
}

/// Runs a host alarm: its stored statement under the remote guard.
fn run_sql_alarm(actor: &Actor, db: &Database, a: &Alarm) -> Result<(), HookError> {
    if a.name != SQL_ALARM {
        return Err(format!("the host has no handler for alarms named {:?}", a.name).into());
    }
    let v: Value = serde_json::from_slice(&a.payload)?;
    let st = sql::statement_from_json(&v, "the alarm")?;
    let _remote = actor.sql_guard().scope(Mode::Remote);
    let mut budget = sql::ResultBudget::new(1 << 20);
    sql::run_statement(db, &st, &mut budget).map_err(|e| actor.sql_guard().explain(e))?;
    Ok(())
}

/// One tick at `now_ms`: list the due index, fire each listed actor's due alarms, and put the
/// actors the tick woke back to sleep. Returns the actors handled.
pub async fn tick_once(registry: &Arc<Registry>, now_ms: u64, timeout: Duration) -> Vec<String> {
    let store = registry.store().clone();
    let listed =
        tokio::task::spawn_blocking(move || alarms::list_due(&store, now_ms, LIST_LIMIT)).await;
    let due = match listed {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => {
            tracing::warn!("alarm tick: listing the due index failed: {e}");
            return Vec::new();
        }
        Err(e) => {
            tracing::warn!("alarm tick: {e}");
            return Vec::new();
        }
    };
    let mut by_actor: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (_, at, actor) in due {
        by_actor.entry(actor).or_default().push(at);
    }
    let mut handled = Vec::new();
    for (actor_id, ats) in by_actor {
        // In a cluster, another member fires the alarms of the actors it owns.
        if super::check_actor_id(&actor_id).is_err() || !registry.owns(&actor_id) {
            continue;
        }
        let was_awake = registry.is_awake(&actor_id);
        let work: Work = Box::new(move |actor: &Actor| {
            let r = actor
                .fire_and_clear(now_ms, &ats, &mut |db, a| run_sql_alarm(actor, db, a))
                .map_err(|e| actor_error(e, timeout))?;
            Ok(json!({ "fired": r.fired, "failed": r.failed }))
        });
        if let Err(e) = registry.run(&actor_id, timeout, work).await {
            tracing::warn!(actor = %actor_id, "alarm tick failed: {}", e.message());
        }
        if !was_awake {
            registry.sleep_now(&actor_id).await;
        }
        handled.push(actor_id);
    }
    handled
}

/// The host's alarm loop: a tick every [`TICK`], forever (the host aborts it at shutdown).
pub async fn run(registry: Arc<Registry>, timeout: Duration) {
    loop {
        tokio::time::sleep(TICK).await;
        tick_once(&registry, alarms::now_ms(), timeout).await;
    }
}
