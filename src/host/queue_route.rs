//! The host's queue: `POST /actors/{id}/queue` puts a statement on an actor's queue without
//! waking it; the host runs queued statements in order when the actor is awake.
//!
//! Why it exists: clients that only need work done eventually should not pay (or cause) a wake
//! per request. A message is a statement (`{"sql", "params"}`), stored as one put under the
//! actor's queue prefix ([`crate::actor::queue`]). An awake actor runs it at once (the route
//! then drains); a sleeping one at its next wake (the registry drains before the request that
//! woke it). Each runs in its own transaction with its acknowledgement; a statement that fails
//! as SQL (a constraint, a missing table) is acknowledged with its error kept in the actor's
//! table `_kvsqlite_queue_failed(key, message, error)` so it cannot block the queue; a store
//! failure stops the drain (the message stays first in line).

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use super::registry::{store_unavailable, Work};
use super::routes::{admin_post_json, AppState};
use super::sql;
use super::HostError;
use crate::actor::guard::Mode;
use crate::actor::queue::{self, DrainReport, Message};
use crate::actor::{is_moved_error, Actor, ActorError, HookError};
use crate::vfs::Database;

/// The queue route.
pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.route("/actors/{id}/queue", post(enqueue_route))
}

/// `POST /actors/{id}/queue` `{"sql", "params"}` (admin token) → `{"queued": true}`: one put,
/// the actor not woken (when it is awake here, it runs the message before the answer).
async fn enqueue_route(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    admin_post_json(s, id, headers, body, |s, id, body| async move {
        sql::statement_from_json(&body, "the body").map_err(HostError::BadRequest)?;
        let bytes = body.to_string().into_bytes();
        let store = s.registry.store().clone();
        let aid = id.clone();
        tokio::task::spawn_blocking(move || queue::enqueue(&store, &aid, &bytes))
            .await
            .map_err(|e| HostError::Internal(format!("enqueue task failed: {e}")))?
            .map_err(|e| match e {
                ActorError::Kv(e) if e.is_rejected_before_send() => {
                    HostError::TooLarge(format!("the message: {e}"))
                }
                e => store_unavailable(format!("enqueue failed: {e}")),
            })?;
        s.metrics
            .families
            .realtime
            .queue_enqueued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if s.registry.is_awake(&id) {
            let timeout = s.statement_timeout;
            let metrics = s.metrics.clone();
            let work: Work = Box::new(move |actor: &Actor| {
                actor
                    .poll_queue()
                    .map_err(|e| store_unavailable(format!("polling the queue failed: {e}")))?;
                metrics.families.realtime.count_drain(&drain(actor));
                Ok(json!({}))
            });
            s.registry.run(&id, timeout, work).await?;
        }
        Ok(json!({ "queued": true }))
    })
    .await
}

/// Runs an awake actor's queued statements (called by the registry after a wake and by the
/// route); failures are logged, never returned (the request that woke the actor goes on).
pub fn drain(actor: &Actor) -> DrainReport {
    let r = actor.drain_queue(&mut |db, m| run_message(actor, db, m));
    match r {
        Ok(r) => {
            if let Some(e) = &r.failed {
                tracing::warn!(actor = %actor.id(), "queue drain stopped: {e}");
            }
            r
        }
        Err(e) => {
            tracing::warn!(actor = %actor.id(), "queue drain failed: {e}");
            DrainReport::default()
        }
    }
}

/// Why a queued statement did not run.
enum Failure {
    /// The store failed (or the actor moved, or the statement timed out): try again later.
    Store(String),
    /// The statement cannot succeed as it is.
    Sql(String),
}

fn run_statement(actor: &Actor, db: &Database, m: &Message) -> Result<(), Failure> {
    let v: Value = serde_json::from_slice(&m.body).map_err(|e| Failure::Sql(e.to_string()))?;
    let st = sql::statement_from_json(&v, "the message").map_err(Failure::Sql)?;
    db.execute_batch("SAVEPOINT kvsqlite_msg")
        .map_err(|e| Failure::Store(sql::error_text(&e)))?;
    let r = {
        let _remote = actor.sql_guard().scope(Mode::Remote);
        let mut budget = sql::ResultBudget::new(1 << 20);
        sql::run_statement(db, &st, &mut budget).map_err(|e| actor.sql_guard().explain(e))
    };
    match r {
        Ok(_) => db
            .execute_batch("RELEASE kvsqlite_msg")
            .map_err(|e| Failure::Store(sql::error_text(&e))),
        Err(e) if sql::is_io_error(&e) || is_moved_error(&e) || sql::is_interrupt(&e) => {
            Err(Failure::Store(sql::error_text(&e)))
        }
        Err(e) => {
            db.execute_batch("ROLLBACK TO kvsqlite_msg; RELEASE kvsqlite_msg")
                .map_err(|e| Failure::Store(sql::error_text(&e)))?;
            Err(Failure::Sql(sql::error_text(&e)))
        }
    }
}

/// Runs a queued message: the actor's `on_message` hook when the host's actor config sets one,
/// else the message's statement.
fn run_message(actor: &Actor, db: &Database, m: &Message) -> Result<(), HookError> {
    if actor.has_message_hook() {
        return actor.call_on_message(m);
    }
    match run_statement(actor, db, m) {
        Ok(()) => Ok(()),
        Err(Failure::Store(e)) => Err(e.into()),
        // The message cannot succeed: acknowledge it with its error kept.
        Err(Failure::Sql(error)) => {
            db.execute_batch(
                "CREATE TABLE IF NOT EXISTS _kvsqlite_queue_failed(\
                 key BLOB PRIMARY KEY, message TEXT NOT NULL, error TEXT NOT NULL) WITHOUT ROWID",
            )?;
            db.execute(
                "INSERT OR REPLACE INTO _kvsqlite_queue_failed(key, message, error) VALUES (?1, ?2, ?3)",
                rusqlite::params![m.key, String::from_utf8_lossy(&m.body), error],
            )?;
            tracing::warn!(actor = %actor.id(), "queued statement failed: {error}");
            Ok(())
        }
    }
}
