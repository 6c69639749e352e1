//! The HTTP surface of `kvsqlite serve`: every route, its token rule, and the mapping of each
//! failure to a status with a `{"error": "…"}` body.
//!
//! Why it exists: the routes are the host's contract with its clients (documented in the
//! book, "Serving actors over HTTP"); keeping them apart from the lifecycle makes each rule
//! (who may call what, which status for which failure) visible in one place.
//!
//! Order of checks on actor routes: the token (401), the actor id (400), the body (413, 408,
//! 400), then the work (400 SQL error, 408 timeout, 413 answer too big, 503 store down or actor
//! busy). The token is checked from the headers alone ([`super::auth`]): a request without a
//! valid one never has its body read and never waits on an actor.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use super::auth::{bearer, Lookup, TokenMemory};
use super::prom::HostMetrics;
use super::registry::{store_unavailable, Registry, Work};
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
    /// A body must arrive within this (408).
    pub body_timeout: Duration,
    /// Most bytes of rows in one answer (`--max-result-bytes`).
    pub max_result_bytes: usize,
    /// The inspector pages' sessions.
    pub sessions: Arc<super::inspector::Sessions>,
    /// Actor tokens read from the store, and ids it did not hold.
    pub tokens: Arc<TokenMemory>,
    /// The cluster this host is a member of (`serve --cluster`), if any.
    pub cluster: Option<Arc<super::cluster::Cluster>>,
}

/// The router with every route, the JSON 404 fallback and the security headers on every
/// answer.
pub fn router(state: AppState) -> Router {
    let mut router = Router::new()
        .route("/metrics", get(prometheus))
        .route("/healthz", get(healthz))
        .route("/inspector/top", get(super::top::route));
    for (path, route, is_post) in [
        ("/actors/{id}/query", ActorRoute::Query, true),
        ("/actors/{id}/batch", ActorRoute::Batch, true),
        ("/actors/{id}/inspector/metrics", ActorRoute::Metrics, false),
        ("/actors/{id}/inspector/token", ActorRoute::Token, false),
    ] {
        let handler = move |s, id, h, b| actor_route(route, s, id, h, b);
        router = router.route(path, if is_post { post(handler) } else { get(handler) });
    }
    let router = super::history_routes::routes(router);
    let router = super::alarm_tick::routes(router);
    let router = super::queue_route::routes(router);
    let router = super::connect_route::routes(router);
    let router = super::cluster::route::routes(router);
    super::inspector::routes(router)
        .fallback(not_found)
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// The Content-Security-Policy of every answer: the inspector's script and style come from
/// this host only (no inline script), nothing may frame a page.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Adds the headers every answer carries (CSP, `nosniff`, `no-referrer`).
pub(crate) async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// A JSON answer; never cached (answers carry tokens and actor data).
fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
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
    add_error_headers(&mut resp, status);
    resp
}

/// `WWW-Authenticate` on a 401, `Retry-After` on a 503, `Connection: close` on a 408 (the
/// rest of a slow body is not waited for).
pub(crate) fn add_error_headers(resp: &mut Response, status: StatusCode) {
    let h = resp.headers_mut();
    match status {
        StatusCode::UNAUTHORIZED => {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        StatusCode::REQUEST_TIMEOUT | StatusCode::PAYLOAD_TOO_LARGE => {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        _ => {}
    }
}

pub(crate) fn respond(metrics: &HostMetrics, r: Result<Value, HostError>) -> Response {
    match r {
        Ok(v) => ok_json(v),
        Err(e) => error_response(metrics, e),
    }
}

/// An admin-only JSON answer: the token from the headers first (401), then `work`.
pub(crate) fn admin_json(
    s: &AppState,
    headers: &HeaderMap,
    work: impl FnOnce() -> Result<Value, HostError>,
) -> Response {
    respond(&s.metrics, require_admin(s, headers).and_then(|()| work()))
}

/// [`admin_json`] for async work: the token from the headers first (401), then `work`.
pub(crate) async fn admin_json_async(
    s: &AppState,
    headers: &HeaderMap,
    work: impl std::future::Future<Output = Result<Value, HostError>>,
) -> Response {
    let r = match require_admin(s, headers) {
        Ok(()) => work.await,
        Err(e) => Err(e),
    };
    respond(&s.metrics, r)
}

/// An admin POST on actor `id` with a JSON body: the admin token first (from the headers
/// alone), then the id, then the body (413, 408, 400); `work` gets the state, the id and the
/// body, and its result is the answer.
pub(crate) async fn admin_post_json<F, Fut>(
    s: AppState,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
    work: F,
) -> Response
where
    F: FnOnce(AppState, String, Value) -> Fut,
    Fut: std::future::Future<Output = Result<Value, HostError>>,
{
    let s2 = s.clone();
    let h2 = headers.clone();
    admin_json_async(&s, &headers, async move {
        let id = actor_id(id)?;
        let body = read_json(&s2, &h2, body).await?;
        work(s2, id, body).await
    })
    .await
}

/// An admin route without a body on actor `id`: the admin token, then the id, then `work`
/// (given the statement timeout) run on the actor, woken if it sleeps.
pub(crate) async fn admin_on_actor(
    s: &AppState,
    id: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
    work: impl FnOnce(Duration, &str) -> Work,
) -> Response {
    admin_json_async(s, headers, async {
        let id = actor_id(id)?;
        let timeout = s.statement_timeout;
        s.registry.run(&id, timeout, work(timeout, &id)).await
    })
    .await
}

pub(crate) fn require_admin(s: &AppState, headers: &HeaderMap) -> Result<(), HostError> {
    match bearer(headers) {
        Some(t) if tokens_equal(t, &s.admin_token) => Ok(()),
        _ => Err(HostError::Unauthorized),
    }
}

/// The actor id of the path, checked (a path that does not decode is 400 too).
pub(crate) fn actor_id(id: Result<Path<String>, PathRejection>) -> Result<String, HostError> {
    let Path(id) = id.map_err(|e| HostError::BadRequest(format!("invalid actor id: {e}")))?;
    check_actor_id(&id)?;
    Ok(id)
}

/// Reads a body of at most `s.max_body` bytes that must arrive within `s.body_timeout`: 413
/// (before reading anything when `Content-Length` already says so), 408, or the bytes. Called
/// only once the request's token is known to be valid.
pub(crate) async fn read_body(
    s: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, HostError> {
    let max = s.max_body;
    let too_large = || HostError::TooLarge(format!("the body is over the limit of {max} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let collect = async {
        let mut body = std::pin::pin!(body);
        let mut out = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            let frame =
                frame.map_err(|e| HostError::BadRequest(format!("cannot read the body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if out.len() + data.len() > max {
                    return Err(too_large());
                }
                out.extend_from_slice(&data);
            }
        }
        Ok(Bytes::from(out))
    };
    match tokio::time::timeout(s.body_timeout, collect).await {
        Ok(r) => r,
        Err(_) => Err(HostError::Timeout(format!(
            "the body did not arrive within the body timeout of {} ms",
            s.body_timeout.as_millis()
        ))),
    }
}

/// [`read_body`] as JSON.
pub(crate) async fn read_json(
    s: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Value, HostError> {
    let bytes = read_body(s, headers, body).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| HostError::BadRequest(format!("the body is not valid JSON: {e}")))
}

/// Maps a failed statement: interrupted → 408, too big (a value over the length limit, an answer
/// over `--max-result-bytes`) → 413, store failure or moved actor → 503, else 400.
pub(crate) fn statement_error(e: &rusqlite::Error, timeout: Duration) -> HostError {
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
        store_unavailable(format!("the store failed: {}", sql::error_text(e)))
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
    body: Body,
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
    body: Body,
) -> Result<Value, HostError> {
    require_admin(s, headers)?;
    let id = actor_id(id)?;
    let body = read_json(s, headers, body).await?;
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

/// The actor's token as the store holds it: `None` when the store never held the actor. Use
/// [`actor_token`], which reads the store only when nothing else knows the token.
async fn stored_token(s: &AppState, id: &str) -> Result<Option<String>, HostError> {
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
        // Whatever the store said (unreachable, or an answer that made no sense), the client
        // learns only that it is unavailable.
        Err(e) => Err(store_unavailable(format!(
            "cannot read the actor's token: {e}"
        ))),
    }
}

/// Actor `id`'s inspector token, or that the store does not hold the actor: from the actor's
/// slot or last document (no lock), else from the host's memory, else from the store (once).
pub(crate) async fn actor_token(s: &AppState, id: &str) -> Result<Lookup, HostError> {
    let known = s.registry.known_token(id);
    s.tokens.lookup(id, known, || stored_token(s, id)).await
}

/// True when `token` is actor `id`'s token (see [`actor_token`]).
pub(crate) async fn is_actor_token(s: &AppState, id: &str, token: &str) -> Result<bool, HostError> {
    Ok(match actor_token(s, id).await? {
        Lookup::Token(t) => tokens_equal(token, &t),
        Lookup::Absent => false,
    })
}

/// The metrics document: the admin token or the actor's own (checked before anything waits on
/// the actor).
async fn inspector_metrics(
    s: &AppState,
    id: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
) -> Result<Value, HostError> {
    let token = bearer(headers).ok_or(HostError::Unauthorized)?;
    let id = actor_id(id)?;
    let admin = tokens_equal(token, &s.admin_token);
    let lookup = actor_token(s, &id).await?;
    match &lookup {
        Lookup::Token(t) if admin || tokens_equal(token, t) => {}
        Lookup::Absent if admin => {
            return Err(HostError::NotFound(format!("no actor {id:?} in the store")))
        }
        _ => return Err(HostError::Unauthorized),
    }
    if let Some((_, doc)) = s.registry.known_doc(&id).await? {
        return Ok(doc.to_json());
    }
    let work: Work = Box::new(|actor: &Actor| Ok(actor.metrics().to_json()));
    s.registry.run(&id, s.statement_timeout, work).await
}

/// The actor's inspector token (admin only), read from the store for a sleeping actor.
async fn inspector_token(
    s: &AppState,
    id: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
) -> Result<Value, HostError> {
    require_admin(s, headers)?;
    let id = actor_id(id)?;
    match actor_token(s, &id).await? {
        Lookup::Token(token) => Ok(json!({ "token": token })),
        Lookup::Absent => Err(HostError::NotFound(format!("no actor {id:?} in the store"))),
    }
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
