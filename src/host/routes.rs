//! The HTTP surface of `kvsqlite serve`: every route, its token rule, and the mapping of each
//! failure to a status with a `{"error": "…"}` body.
//!
//! Why it exists: the routes are the host's contract with its clients (documented in the
//! README, "Serving actors over HTTP"); keeping them apart from the lifecycle makes each rule
//! (who may call what, which status for which failure) visible in one place.
//!
//! Order of checks on actor routes: the token (401), the actor id (400), the body (413, 400),
//! then the work (400 SQL error, 408 timeout, 413 too big, 503 store down).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use super::prom::HostMetrics;
use super::registry::{kv_unavailable, Registry, Work};
use super::sql::{self, StatementRequest};
use super::{check_actor_id, tokens_equal, HostError};
use crate::actor::guard::Mode;
use crate::actor::{is_moved_error, records, Actor};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The actors.
    pub registry: Arc<Registry>,
    /// The host metrics.
    pub metrics: Arc<HostMetrics>,
    /// The admin token.
    pub admin_token: Arc<String>,
    /// Statement timeout.
    pub statement_timeout: Duration,
    /// Largest body in bytes.
    pub max_body: usize,
    /// Most bytes of rows in one answer (`--max-result-bytes`).
    pub max_result_bytes: usize,
    /// The inspector pages' sessions.
    pub sessions: Arc<super::inspector::Sessions>,
}

/// The router with every route, the body limit and the JSON 404 fallback.
pub fn router(state: AppState) -> Router {
    let limit = state.max_body;
    let mut router = Router::new()
        .route("/metrics", get(prometheus))
        .route("/healthz", get(healthz));
    for (path, route, is_post) in [
        ("/actors/{id}/query", ActorRoute::Query, true),
        ("/actors/{id}/batch", ActorRoute::Batch, true),
        ("/actors/{id}/inspector/metrics", ActorRoute::Metrics, false),
        ("/actors/{id}/inspector/token", ActorRoute::Token, false),
    ] {
        let handler = move |s, id, h, b| actor_route(route, s, id, h, b);
        router = router.route(path, if is_post { post(handler) } else { get(handler) });
    }
    super::inspector::routes(router)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn ok_json(v: Value) -> Response {
    json_response(StatusCode::OK, &v)
}

fn error_response(metrics: &HostMetrics, e: HostError) -> Response {
    metrics.error(e.kind());
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = json_response(status, &json!({ "error": e.message() }));
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    resp
}

fn respond(metrics: &HostMetrics, r: Result<Value, HostError>) -> Response {
    match r {
        Ok(v) => ok_json(v),
        Err(e) => error_response(metrics, e),
    }
}

/// The bearer token of a request, if any.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn require_admin(s: &AppState, headers: &HeaderMap) -> Result<(), HostError> {
    match bearer(headers) {
        Some(t) if tokens_equal(t, &s.admin_token) => Ok(()),
        _ => Err(HostError::Unauthorized),
    }
}

/// The actor id of the path, checked (a path that does not decode is 400 too).
fn actor_id(id: Result<Path<String>, PathRejection>) -> Result<String, HostError> {
    let Path(id) = id.map_err(|e| HostError::BadRequest(format!("invalid actor id: {e}")))?;
    check_actor_id(&id)?;
    Ok(id)
}

fn read_body(body: Result<Bytes, BytesRejection>, max: usize) -> Result<Value, HostError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            HostError::TooLarge(format!("the body is over the limit of {max} bytes"))
        } else {
            HostError::BadRequest(format!("cannot read the body: {e}"))
        }
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| HostError::BadRequest(format!("the body is not valid JSON: {e}")))
}

/// Maps a failed statement: interrupted → 408, too big (a value over the length limit, an answer
/// over `--max-result-bytes`) → 413, store failure or moved actor → 503, else 400.
fn statement_error(e: &rusqlite::Error, timeout: Duration) -> HostError {
    if sql::is_interrupt(e) {
        HostError::Timeout(format!(
            "the statement ran past the statement timeout of {} ms and was interrupted; its transaction was rolled back",
            timeout.as_millis()
        ))
    } else if is_moved_error(e) {
        HostError::Unavailable(
            "actor moved: another instance wrote since this one woke; retry".into(),
        )
    } else if sql::is_too_big(e) {
        HostError::TooLarge(sql::error_text(e))
    } else if sql::is_io_error(e) {
        HostError::Unavailable(format!("the store failed: {}", sql::error_text(e)))
    } else {
        HostError::Sql(sql::error_text(e))
    }
}

/// Rolls back a transaction left open on the actor.
fn rollback_open(actor: &Actor) {
    if !actor.db().is_autocommit() {
        if let Err(e) = actor.db().execute_batch("ROLLBACK") {
            tracing::warn!(actor = %actor.id(), "rollback failed: {e}");
        }
    }
}

/// Runs a client's statement under the guard's [`Mode::Remote`] (refusals explained).
fn timed(
    metrics: &HostMetrics,
    actor: &Actor,
    st: &StatementRequest,
    budget: &mut sql::ResultBudget,
) -> rusqlite::Result<Value> {
    let t = std::time::Instant::now();
    let r = {
        let _remote = actor.sql_guard().scope(Mode::Remote);
        sql::run_statement(actor.db(), st, budget)
    };
    metrics.query_seconds.observe(t.elapsed().as_secs_f64());
    r.map_err(|e| actor.sql_guard().explain(e))
}

/// Which actor route.
#[derive(Clone, Copy)]
enum ActorRoute {
    Query,
    Batch,
    Metrics,
    Token,
}

/// Every `/actors/{id}/…` route: the route's own checks and work, then the answer. The
/// inspector routes ignore the body.
async fn actor_route(
    route: ActorRoute,
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let r = match route {
        ActorRoute::Query | ActorRoute::Batch => sql_route(route, &s, id, &headers, body).await,
        ActorRoute::Metrics => inspector_metrics(&s, id, &headers).await,
        ActorRoute::Token => inspector_token(&s, id, &headers).await,
    };
    respond(&s.metrics, r)
}

/// `POST /actors/{id}/query` and `/batch`: admin token, actor id, body, then the work.
async fn sql_route(
    route: ActorRoute,
    s: &AppState,
    id: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Value, HostError> {
    require_admin(s, headers)?;
    let id = actor_id(id)?;
    let body = read_body(body, s.max_body)?;
    let (metrics, timeout) = (s.metrics.clone(), s.statement_timeout);
    let budget = sql::ResultBudget::new(s.max_result_bytes);
    let work = if matches!(route, ActorRoute::Batch) {
        batch_work(
            sql::batch_from_json(&body).map_err(HostError::BadRequest)?,
            metrics,
            timeout,
            budget,
        )
    } else {
        query_work(
            sql::statement_from_json(&body, "the body").map_err(HostError::BadRequest)?,
            metrics,
            timeout,
            budget,
        )
    };
    s.registry.run(&id, timeout, work).await
}

/// One statement in its own transaction; a transaction it leaves open is rolled back (400).
fn query_work(
    st: StatementRequest,
    metrics: Arc<HostMetrics>,
    timeout: Duration,
    mut budget: sql::ResultBudget,
) -> Work {
    Box::new(move |actor: &Actor| {
        let was_autocommit = actor.db().is_autocommit();
        match timed(&metrics, actor, &st, &mut budget) {
            Ok(_) if was_autocommit && !actor.db().is_autocommit() => {
                rollback_open(actor);
                Err(HostError::BadRequest(
                    "a transaction cannot span requests: use /batch (it was rolled back)".into(),
                ))
            }
            Ok(v) => Ok(v),
            Err(e) => {
                rollback_open(actor);
                Err(statement_error(&e, timeout))
            }
        }
    })
}

/// Every statement in one transaction (one commit), all or nothing.
fn batch_work(
    statements: Vec<StatementRequest>,
    metrics: Arc<HostMetrics>,
    timeout: Duration,
    mut budget: sql::ResultBudget,
) -> Work {
    Box::new(move |actor: &Actor| {
        let db = actor.db();
        if let Some(i) = statements
            .iter()
            .position(|st| actor.sql_guard().transaction_control(db, &st.sql).is_some())
        {
            return Err(HostError::BadRequest(format!(
                "statements[{i}] controls the transaction; a batch is one transaction already (nothing ran)"
            )));
        }
        db.execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| statement_error(&e, timeout))?;
        let mut results = Vec::with_capacity(statements.len());
        for (i, st) in statements.iter().enumerate() {
            match timed(&metrics, actor, st, &mut budget) {
                Ok(_) if db.is_autocommit() => {
                    return Err(HostError::BadRequest(format!(
                        "statements[{i}] ended the batch's transaction; a batch is one transaction"
                    )));
                }
                Ok(v) => results.push(v),
                Err(e) => {
                    rollback_open(actor);
                    return Err(match statement_error(&e, timeout) {
                        HostError::Sql(m) => HostError::Sql(format!(
                            "statements[{i}]: {m} (the batch was rolled back)"
                        )),
                        HostError::TooLarge(m) => HostError::TooLarge(format!(
                            "statements[{i}]: {m} (the batch was rolled back)"
                        )),
                        other => other,
                    });
                }
            }
        }
        if let Err(e) = db.execute_batch("COMMIT") {
            rollback_open(actor);
            return Err(statement_error(&e, timeout));
        }
        Ok(json!({ "results": results }))
    })
}

/// The actor's token as the store holds it: `None` when the store never held the actor.
pub(crate) async fn stored_token(s: &AppState, id: &str) -> Result<Option<String>, HostError> {
    let store = s.registry.store().clone();
    let id = id.to_string();
    let got = tokio::task::spawn_blocking(move || store.get(&id, &[records::token_key()]))
        .await
        .map_err(|e| HostError::Internal(format!("store task failed: {e}")))?;
    match got {
        Ok(values) => Ok(values
            .into_iter()
            .next()
            .flatten()
            .map(|v| String::from_utf8_lossy(&v).into_owned())),
        Err(e) if kv_unavailable(&e) => Err(HostError::Unavailable(e.to_string())),
        Err(e) => Err(HostError::Internal(e.to_string())),
    }
}

/// The metrics document: the admin token or the actor's own.
async fn inspector_metrics(
    s: &AppState,
    id: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
) -> Result<Value, HostError> {
    let token = bearer(headers).ok_or(HostError::Unauthorized)?;
    let id = actor_id(id)?;
    let admin = tokens_equal(token, &s.admin_token);
    if let Some((actor_token, doc)) = s.registry.known_doc(&id).await {
        if admin || tokens_equal(token, &actor_token) {
            return Ok(doc.to_json());
        }
        return Err(HostError::Unauthorized);
    }
    match stored_token(s, &id).await? {
        None if admin => Err(HostError::NotFound(format!("no actor {id:?} in the store"))),
        None => Err(HostError::Unauthorized),
        Some(t) if admin || tokens_equal(token, &t) => {
            let work: Work = Box::new(|actor: &Actor| Ok(actor.metrics().to_json()));
            s.registry.run(&id, s.statement_timeout, work).await
        }
        Some(_) => Err(HostError::Unauthorized),
    }
}

/// The actor's inspector token (admin only), read from the store for a sleeping actor.
async fn inspector_token(
    s: &AppState,
    id: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
) -> Result<Value, HostError> {
    require_admin(s, headers)?;
    let id = actor_id(id)?;
    let token = match s.registry.known_doc(&id).await {
        Some((t, _)) => t,
        None => stored_token(s, &id)
            .await?
            .ok_or_else(|| HostError::NotFound(format!("no actor {id:?} in the store")))?,
    };
    Ok(json!({ "token": token }))
}

async fn prometheus(State(s): State<AppState>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn healthz(State(s): State<AppState>) -> Response {
    ok_json(json!({ "ok": true, "actors_awake": s.registry.awake_count() }))
}

async fn not_found(State(s): State<AppState>) -> Response {
    error_response(&s.metrics, HostError::NotFound("no such route".into()))
}
