//! The inspector as web pages: `GET /` (the host overview), `GET /actors/{id}/inspector` (one
//! actor: wake waterfall, query log, latency, history, tables), `POST
//! /actors/{id}/inspector/query` (the admin's read-only query), `POST
//! /actors/{id}/inspector/restore` (the admin's restore to a bookmark, after a confirmation
//! page: [`history`]), `POST /signin` (a session cookie), `POST /signout` and the pages' script
//! and style sheet under `/assets/`, served by `kvsqlite serve`.
//!
//! Why it exists: the JSON inspector is for machines; people profiling an actor would rather
//! look. The pages are rendered on the server ([`html`], [`svg`]); all assets are compiled in.
//!
//! Access: the admin token, or the actor's inspector token for that actor's page only, given
//! as `Authorization: Bearer` or exchanged at `POST /signin` for an HttpOnly, SameSite=Strict
//! session cookie (random id, kept here). Without either, pages answer 401 with the sign-in
//! form. The overview, the query box and the restore forms are admin only. Every form POST
//! that a cookie authenticates (or, for sign-in, that a cookie could make on a victim's
//! behalf) must come from this origin and carry its CSRF token ([`csrf`]).

pub mod csrf;
pub mod data;
pub mod escape;
pub mod history;
pub mod html;
pub mod overview;
pub mod svg;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use parking_lot::Mutex;

use super::auth::{bearer, Lookup};
use super::registry::Work;
use super::routes::{actor_token, add_error_headers, is_actor_token, read_body, AppState};
use super::{check_actor_id, tokens_equal, HostError};
use crate::actor::Actor;
use data::{ActorView, ViewRequest};
use escape::{esc, field, parse_form, url_encode};

/// The session cookie's name.
pub const COOKIE: &str = "kvsqlite_session";

/// How long a session lasts.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// Sessions kept at most (the oldest go first).
const MAX_SESSIONS: usize = 10_000;

/// What a request may see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// Everything.
    Admin,
    /// One actor's page.
    Actor(String),
}

/// A signed-in session.
#[derive(Clone, Debug)]
pub struct Session {
    /// What it may see.
    pub access: Access,
    /// The token its forms must post back.
    pub csrf: String,
    created: Instant,
}

/// Signed-in sessions: random id → access and CSRF token, kept in memory (a restart signs
/// everyone out).
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// A new session for `access`: its id (an error when the OS's random source fails).
    pub fn create(&self, access: Access) -> Result<String, HostError> {
        let random = || {
            crate::actor::startup::random_token()
                .map_err(|e| HostError::Internal(format!("cannot create a session: {e}")))
        };
        let id = random()? + &random()?;
        let csrf = random()? + &random()?;
        let mut map = self.map.lock();
        map.retain(|_, s| s.created.elapsed() < SESSION_TTL);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(
            id.clone(),
            Session {
                access,
                csrf,
                created: Instant::now(),
            },
        );
        Ok(id)
    }

    /// Session `id`, if it is live.
    pub fn get(&self, id: &str) -> Option<Session> {
        let map = self.map.lock();
        // The lookup hashes the id; ids are 256 random bits, so guessing is the only attack.
        map.get(id)
            .filter(|s| s.created.elapsed() < SESSION_TTL)
            .cloned()
    }

    /// Ends session `id` (sign-out).
    pub fn remove(&self, id: &str) {
        self.map.lock().remove(id);
    }
}

/// Adds the inspector's routes.
pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route("/", get(overview))
        .route("/open", get(open))
        .route("/signin", post(signin))
        .route("/signout", post(signout))
        .route("/assets/inspector.js", get(script))
        .route("/assets/inspector.css", get(style))
        .route("/actors/{id}/inspector", get(actor_get))
        .route("/actors/{id}/inspector/query", post(actor_query))
        .route(
            "/actors/{id}/inspector/restore",
            post(history::restore_post),
        )
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /assets/inspector.js`: the pages' script.
async fn script() -> Response {
    asset("text/javascript; charset=utf-8", html::SCRIPT)
}

/// `GET /assets/inspector.css`: the pages' style sheet.
async fn style() -> Response {
    asset("text/css; charset=utf-8", html::CSS)
}

/// The sign-in form with `status` (401, or 403 for a refused sign-in): a fresh sign-in CSRF
/// token, in the form and in its cookie.
fn signin_page(
    s: &AppState,
    status: StatusCode,
    next: &str,
    actor: &str,
    message: &str,
) -> Response {
    let csrf = match csrf::new_token() {
        Ok(t) => t,
        Err(e) => return error_page(s, e),
    };
    let mut r = html(status, html::signin(next, actor, message, &csrf));
    if let Ok(v) = HeaderValue::from_str(&csrf::signin_cookie(&csrf)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// The 401 page: the sign-in form, which comes back to `next`.
fn unauthorized(s: &AppState, next: &str, actor: &str, message: &str) -> Response {
    s.metrics.error("unauthorized");
    let mut r = signin_page(s, StatusCode::UNAUTHORIZED, next, actor, message);
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

fn error_page(s: &AppState, e: HostError) -> Response {
    s.metrics.error(e.kind());
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = html(
        status,
        html::page(
            "error",
            &format!(
                "<nav><a href=\"/\">host</a></nav><h1>Error {}</h1><p class=\"err\">{}</p>",
                status.as_u16(),
                esc(&e.message())
            ),
        ),
    );
    add_error_headers(&mut r, status);
    r
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    csrf::cookie_values(headers, COOKIE)
        .next()
        .map(str::to_string)
}

/// The request's access from its bearer token or session cookie; `actor` is the page's actor
/// (an actor token counts only there).
async fn access(
    s: &AppState,
    headers: &HeaderMap,
    actor: Option<&str>,
) -> Result<Option<(Access, Option<Session>)>, HostError> {
    if let Some(t) = bearer(headers) {
        if tokens_equal(t, &s.admin_token) {
            return Ok(Some((Access::Admin, None)));
        }
        if let Some(id) = actor {
            if is_actor_token(s, id, t).await? {
                return Ok(Some((Access::Actor(id.to_string()), None)));
            }
        }
        return Ok(None);
    }
    Ok(session_cookie(headers)
        .and_then(|c| s.sessions.get(&c))
        .map(|sess| (sess.access.clone(), Some(sess))))
}

fn allowed(a: &Option<(Access, Option<Session>)>, actor: Option<&str>) -> bool {
    match (a.as_ref().map(|(a, _)| a), actor) {
        (Some(Access::Admin), _) => true,
        (Some(Access::Actor(x)), Some(id)) => x == id,
        _ => false,
    }
}

/// `GET /`: the host overview (admin only).
async fn overview(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let a = match access(&s, &headers, None).await {
        Ok(a) => a,
        Err(e) => return error_page(&s, e),
    };
    if !allowed(&a, None) {
        return unauthorized(&s, "/", "", "Sign in with the admin token to see the host.");
    }
    use std::sync::atomic::Ordering::Relaxed;
    let m = &s.metrics;
    let (awake, asleep) = s.registry.actor_ids();
    let hist = |h: &super::prom::Histogram| {
        let (per, over) = h.buckets();
        let mut v: Vec<(String, u64)> =
            per.into_iter().map(|(b, c)| (format!("≤{b}"), c)).collect();
        v.push(("more".into(), over));
        v
    };
    let o = html::Overview {
        awake,
        asleep,
        wakes: m.wakes.load(Relaxed),
        creations: m.creations.load(Relaxed),
        sleeps: m.sleeps.load(Relaxed),
        wake_failures: m.wake_failures.load(Relaxed),
        kv_round_trips: m.kv_round_trips.load(Relaxed),
        wake_hist: hist(&m.wake_seconds),
        query_hist: hist(&m.query_seconds),
        errors: m.errors_by_kind(),
        kv_rates: m.kv_rates(),
        fleet: overview::Fleet::gather(m, s.registry.awake_count()),
    };
    let csrf = a.and_then(|(_, sess)| sess).map(|sess| sess.csrf);
    html(StatusCode::OK, html::overview(&o, csrf.as_deref()))
}

/// `GET /open?id=…`: the search box; redirects to the actor's page.
async fn open(State(s): State<AppState>, RawQuery(q): RawQuery) -> Response {
    let pairs = parse_form(q.as_deref().unwrap_or(""));
    let id = field(&pairs, "id").unwrap_or("").trim().to_string();
    if let Err(e) = check_actor_id(&id) {
        return error_page(&s, e);
    }
    redirect(&format!("/actors/{}/inspector", url_encode(&id)), None)
}

fn redirect(to: &str, cookie: Option<String>) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r
}

/// `next` if it is a path on this host, else `None`.
fn local_path(next: &str) -> Option<&str> {
    (next.starts_with('/') && !next.starts_with("//") && !next.contains('\\'))
        .then_some(next)
        .filter(|n| n.bytes().all(|b| b.is_ascii_graphic()))
}

/// `POST /signin` (form: `token`, optional `actor` and `next`, and `csrf`, the token of the
/// sign-in cookie): from this origin only; a session cookie and a redirect, or 401 with the
/// form again (403 when the origin or the CSRF token is wrong).
async fn signin(State(s): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    if let Err(e) = csrf::check_origin(&headers) {
        s.metrics.error(e.kind());
        return signin_page(&s, StatusCode::FORBIDDEN, "/", "", &e.message());
    }
    let body = match read_body(&s, &headers, body).await {
        Ok(b) => b,
        Err(e) => return error_page(&s, e),
    };
    let pairs = parse_form(&String::from_utf8_lossy(&body));
    let token = field(&pairs, "token").unwrap_or("").trim();
    let actor = field(&pairs, "actor").unwrap_or("").trim();
    let next = field(&pairs, "next").and_then(local_path);
    let posted = field(&pairs, "csrf").unwrap_or("");
    if !csrf::signin_cookie_matches(&headers, posted) {
        let e = csrf::missing_token();
        s.metrics.error(e.kind());
        return signin_page(
            &s,
            StatusCode::FORBIDDEN,
            next.unwrap_or("/"),
            actor,
            &e.message(),
        );
    }
    let access = if !token.is_empty() && tokens_equal(token, &s.admin_token) {
        Some(Access::Admin)
    } else if !token.is_empty() && check_actor_id(actor).is_ok() {
        match is_actor_token(&s, actor, token).await {
            Ok(true) => Some(Access::Actor(actor.to_string())),
            Ok(false) => None,
            Err(e) => return error_page(&s, e),
        }
    } else {
        None
    };
    let Some(access) = access else {
        return unauthorized(
            &s,
            next.unwrap_or("/"),
            actor,
            "Wrong token (an actor token needs its actor id).",
        );
    };
    let to = match (&access, next) {
        (_, Some(n)) => n.to_string(),
        (Access::Actor(id), None) => format!("/actors/{}/inspector", url_encode(id)),
        (Access::Admin, None) => "/".to_string(),
    };
    let id = match s.sessions.create(access) {
        Ok(id) => id,
        Err(e) => return error_page(&s, e),
    };
    redirect(
        &to,
        Some(format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict")),
    )
}

/// `POST /signout` (form: `csrf`): ends the session and clears its cookie; a 303 to `/`. From
/// this origin with the session's CSRF token only (403 otherwise); without a session it
/// only clears the cookie.
async fn signout(State(s): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let sid = session_cookie(&headers);
    if let Some(sess) = sid.as_deref().and_then(|c| s.sessions.get(c)) {
        if let Err(e) = check_form_post(&s, &headers, body, &sess).await {
            return error_page(&s, e);
        }
    }
    if let Some(c) = sid {
        s.sessions.remove(&c);
    }
    redirect(
        "/",
        Some(format!(
            "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
        )),
    )
}

/// A cookie-authenticated form POST: from this origin and with the session's CSRF token (403
/// otherwise); then its form fields.
async fn check_form_post(
    s: &AppState,
    headers: &HeaderMap,
    body: Body,
    sess: &Session,
) -> Result<Vec<(String, String)>, HostError> {
    csrf::check_origin(headers)?;
    let body = read_body(s, headers, body).await?;
    let pairs = parse_form(&String::from_utf8_lossy(&body));
    if !csrf::token_matches(field(&pairs, "csrf").unwrap_or(""), &sess.csrf) {
        return Err(csrf::missing_token());
    }
    Ok(pairs)
}

/// An admin's form POST on actor `id`'s page (the query box, a restore): the access check,
/// then the fields — a cookie session's through [`check_form_post`] (origin and CSRF token), a
/// bearer token's as they are. `needs` says what the non-admin's sign-in page explains.
async fn admin_form_post(
    s: &AppState,
    id: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
    body: Body,
    needs: &str,
) -> Result<(String, Option<Session>, Vec<(String, String)>), Response> {
    let (id, a, sess) = checked(s, id, headers, "").await?;
    if a != Access::Admin {
        return Err(unauthorized(
            s,
            &format!("/actors/{}/inspector", url_encode(&id)),
            &id,
            needs,
        ));
    }
    let pairs = match &sess {
        // Signed in with a cookie: same origin and the session's CSRF token.
        Some(sess) => check_form_post(s, headers, body, sess).await,
        None => read_body(s, headers, body)
            .await
            .map(|b| parse_form(&String::from_utf8_lossy(&b))),
    }
    .map_err(|e| error_page(s, e))?;
    Ok((id, sess, pairs))
}

/// Collects the view on the actor's own queue (waking it). Like the JSON inspector routes,
/// the page never creates an actor: an id the store never held is 404.
async fn view(s: &AppState, id: &str, req: ViewRequest) -> Result<ActorView, HostError> {
    if actor_token(s, id).await? == Lookup::Absent {
        return Err(HostError::NotFound(format!("no actor {id:?} in the store")));
    }
    let slot: Arc<Mutex<Option<ActorView>>> = Arc::new(Mutex::new(None));
    let out = slot.clone();
    let work: Work = Box::new(move |actor: &Actor| {
        *out.lock() = Some(data::collect(actor, &req));
        Ok(serde_json::Value::Null)
    });
    s.registry.run(id, s.statement_timeout, work).await?;
    let v = slot.lock().take();
    v.ok_or_else(|| HostError::Internal("the inspector's work did not run".into()))
}

async fn checked(
    s: &AppState,
    id: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
    query: &str,
) -> Result<(String, Access, Option<Session>), Response> {
    let Ok(Path(id)) = id else {
        return Err(error_page(
            s,
            HostError::BadRequest("invalid actor id".into()),
        ));
    };
    if let Err(e) = check_actor_id(&id) {
        return Err(error_page(s, e));
    }
    let page = format!("/actors/{}/inspector{}", url_encode(&id), query);
    match access(s, headers, Some(&id)).await {
        Ok(Some((a, sess))) if allowed(&Some((a.clone(), None)), Some(&id)) => Ok((id, a, sess)),
        Ok(_) => Err(unauthorized(
            s,
            &page,
            &id,
            "Sign in with the admin token or this actor's inspector token.",
        )),
        Err(e) => Err(error_page(s, e)),
    }
}

/// `GET /actors/{id}/inspector?q=&table=&offset=`: the actor page.
async fn actor_get(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let raw = q.unwrap_or_default();
    let suffix = if raw.is_empty() {
        String::new()
    } else {
        format!("?{raw}")
    };
    let (id, a, sess) = match checked(&s, id, &headers, &suffix).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    // A poll from the page's script reads the live sections from memory: it does not wake a
    // sleeping actor, run a statement, or keep the actor awake.
    if headers.contains_key("x-inspector-poll") {
        return match s.registry.peek(&id, data::collect_live).await {
            Ok(Some(v)) => {
                let p = html::ActorPage {
                    id: &id,
                    admin: a == Access::Admin,
                    filter: "",
                    query_sql: "",
                    csrf: sess.as_ref().map(|x| x.csrf.as_str()),
                };
                html(StatusCode::OK, html::actor_page(&p, &v))
            }
            Ok(None) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => error_page(&s, e),
        };
    }
    let pairs = parse_form(&raw);
    let req = ViewRequest {
        table: field(&pairs, "table").map(String::from),
        offset: field(&pairs, "offset")
            .and_then(|o| o.parse().ok())
            .unwrap_or(0)
            .min(1_000_000_000),
        query: None,
        history: true,
    };
    let filter = field(&pairs, "q").unwrap_or("").to_string();
    match view(&s, &id, req).await {
        Ok(v) => {
            let p = html::ActorPage {
                id: &id,
                admin: a == Access::Admin,
                filter: &filter,
                query_sql: "",
                csrf: sess.as_ref().map(|x| x.csrf.as_str()),
            };
            html(StatusCode::OK, html::actor_page(&p, &v))
        }
        Err(e) => error_page(&s, e),
    }
}

/// `POST /actors/{id}/inspector/query` (form: `sql`): the admin's read-only query, shown on
/// the actor page; 400 when refused or failed.
async fn actor_query(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (id, sess, pairs) = match admin_form_post(
        &s,
        id,
        &headers,
        body,
        "The query box needs the admin token.",
    )
    .await
    {
        Ok(x) => x,
        Err(r) => return r,
    };
    let sql = field(&pairs, "sql").unwrap_or("").to_string();
    if sql.trim().is_empty() {
        return error_page(&s, HostError::BadRequest("the query is empty".into()));
    }
    let req = ViewRequest {
        query: Some(sql.clone()),
        history: true,
        ..Default::default()
    };
    match view(&s, &id, req).await {
        Ok(v) => {
            let status = match &v.query {
                Some(Ok(_)) => StatusCode::OK,
                _ => {
                    s.metrics.error("sql");
                    StatusCode::BAD_REQUEST
                }
            };
            let p = html::ActorPage {
                id: &id,
                admin: true,
                filter: "",
                query_sql: &sql,
                csrf: sess.as_ref().map(|x| x.csrf.as_str()),
            };
            html(status, html::actor_page(&p, &v))
        }
        Err(e) => error_page(&s, e),
    }
}
