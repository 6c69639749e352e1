//! Forwarding: a request for an actor another member owns is proxied to that member, and the
//! answer streamed back.
//!
//! Why it exists: a client may send any request to any host; only the owner may serve it (one
//! writer per actor). The middleware here runs before every route: requests under
//! `/actors/{id}/` are served here, forwarded, or refused (503 with `Retry-After`) as
//! [`super::Cluster::route`] decides; everything else is local.
//!
//! - **Loop guard.** A forwarded request carries [`FORWARDED_BY`]; a host never forwards such
//!   a request again (it serves it, or refuses it while it is not serving). The header grants
//!   nothing: the owner checks every token as usual.
//! - **Answers** stream from the owner (their body is not buffered) with [`FORWARDED_BY`] naming
//!   this host; every actor answer names the host that ran it in [`SERVED_BY`].
//! - **Request bodies** (at most `--max-body`, within `--body-timeout-ms`, as every route reads
//!   them) are read before sending, so that a request the owner refuses as *leaving* can be
//!   sent again to the next owner: a rolling restart loses no request to that race.
//! - **Connections** to each member are kept alive and reused (at most [`POOL_PER_MEMBER`]
//!   idle per member); a request that could not be sent on a reused connection (the member
//!   closed it) is sent again on a new one.
//! - An owner that does not answer (killed, stopped) costs its clients a 503 with
//!   `Retry-After` until its lease ends and its actors move.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::json;

use super::{Cluster, Route};

/// The request header of a forwarded request (the forwarding host's address), and the answer
/// header saying which host forwarded it.
pub const FORWARDED_BY: &str = "kvsqlite-forwarded-by";

/// The answer header naming the host that ran an actor request.
pub const SERVED_BY: &str = "kvsqlite-served-by";

/// The answer header of a 503 from a host that is leaving or holds no lease: the forwarding
/// host re-routes the request.
pub const LEAVING: &str = "kvsqlite-leaving";

/// On a 421 for a WebSocket upgrade: the member that owns the actor (HOST:PORT), where the
/// client should connect (sockets are not proxied between members).
pub const OWNER: &str = "kvsqlite-owner";

/// Idle connections kept per member.
pub const POOL_PER_MEMBER: usize = 64;

/// How long a connection to a member may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The limits a forward works within (the host's own).
#[derive(Clone, Debug)]
pub struct ForwardLimits {
    /// Largest request body (413 past it).
    pub max_body: usize,
    /// A request body must arrive within this (408).
    pub body_timeout: Duration,
    /// The owner's answer head must arrive within this (503 past it).
    pub answer_timeout: Duration,
}

/// Kept-alive connections to the other members.
pub struct Pool {
    idle: Mutex<HashMap<String, Vec<SendRequest<Body>>>>,
    limits: ForwardLimits,
}

impl Pool {
    /// An empty pool.
    pub fn new(limits: ForwardLimits) -> Self {
        Pool {
            idle: Mutex::new(HashMap::new()),
            limits,
        }
    }

    /// An idle connection to `addr` ready for a request, if one is kept.
    fn take(&self, addr: &str) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock();
        let list = idle.get_mut(addr)?;
        list.retain(|s| !s.is_closed());
        let i = list.iter().position(|s| s.is_ready())?;
        Some(list.swap_remove(i))
    }

    fn give_back(&self, addr: &str, s: SendRequest<Body>) {
        if s.is_closed() {
            return;
        }
        let mut idle = self.idle.lock();
        let list = idle.entry(addr.to_string()).or_default();
        if list.len() < POOL_PER_MEMBER {
            list.push(s);
        }
    }

    async fn connect(addr: &str) -> Result<SendRequest<Body>, String> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connecting to {addr} timed out"))?
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake with {addr} failed: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Sends `req` to `addr`: on a kept connection, or on a new one when none is kept or the
    /// kept one closed before the request went out.
    pub(crate) async fn send(
        &self,
        addr: &str,
        req: axum::http::Request<Body>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        let mut req = req;
        if let Some(mut s) = self.take(addr) {
            match s.try_send_request(req).await {
                Ok(resp) => {
                    self.give_back(addr, s);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(r) => req = r,
                    None => return Err(format!("the request to {addr} failed: {}", e.error())),
                },
            }
        }
        let mut s = Self::connect(addr).await?;
        let resp = s
            .send_request(req)
            .await
            .map_err(|e| format!("the request to {addr} failed: {e}"))?;
        self.give_back(addr, s);
        Ok(resp)
    }
}

/// The actor id of a path `/actors/{id}/…` (or `/actors/{id}`), as written.
pub fn actor_of_path(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/actors/")?;
    let id = rest.split('/').next()?;
    (!id.is_empty()).then_some(id)
}

fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

fn strip(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in listed {
        headers.remove(n);
    }
    let hop: Vec<HeaderName> = headers.keys().filter(|n| hop_by_hop(n)).cloned().collect();
    for n in hop {
        headers.remove(n);
    }
}

/// A 503 (JSON, `Retry-After: 1`), with [`LEAVING`] when `leaving`.
fn unavailable(message: &str, leaving: bool) -> Response {
    let mut r = (
        StatusCode::SERVICE_UNAVAILABLE,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
            (header::RETRY_AFTER, "1"),
        ],
        json!({ "error": message }).to_string(),
    )
        .into_response();
    if leaving {
        r.headers_mut()
            .insert(LEAVING, HeaderValue::from_static("1"));
    }
    r
}

fn error(status: StatusCode, message: &str) -> Response {
    let mut r = (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        json!({ "error": message }).to_string(),
    )
        .into_response();
    if matches!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
    ) {
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

/// Reads a body of at most `max` bytes within `timeout`.
async fn read_body(body: Body, limits: &ForwardLimits) -> Result<Bytes, Response> {
    let max = limits.max_body;
    let collect = async {
        let mut body = std::pin::pin!(body);
        let mut out = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            let frame = frame.map_err(|e| {
                error(
                    StatusCode::BAD_REQUEST,
                    &format!("cannot read the body: {e}"),
                )
            })?;
            if let Ok(data) = frame.into_data() {
                if out.len() + data.len() > max {
                    return Err(error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &format!("the body is over the limit of {max} bytes"),
                    ));
                }
                out.extend_from_slice(&data);
            }
        }
        Ok(Bytes::from(out))
    };
    match tokio::time::timeout(limits.body_timeout, collect).await {
        Ok(r) => r,
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            &format!(
                "the body did not arrive within the body timeout of {} ms",
                limits.body_timeout.as_millis()
            ),
        )),
    }
}

/// The middleware: serve here, forward, or refuse (see the module).
pub async fn middleware(State(c): State<Arc<Cluster>>, req: Request, next: Next) -> Response {
    let Some(actor) = actor_of_path(req.uri().path()).map(str::to_string) else {
        return next.run(req).await;
    };
    let forwarded = req.headers().contains_key(FORWARDED_BY);
    match c.route(&actor, forwarded) {
        Route::Local(wait) => {
            if let Some(t) = wait {
                tokio::time::sleep_until(t.into()).await;
            }
            serve_here(&c, req, next).await
        }
        Route::Refuse(why, leaving) => unavailable(&why, leaving),
        Route::Forward(addr) if is_upgrade(&req) => misdirected_upgrade(&actor, &addr),
        Route::Forward(addr) => forward(&c, req, next, &actor, addr).await,
    }
}

/// True for a WebSocket upgrade (`GET /actors/{id}/connect`), which is never proxied.
fn is_upgrade(req: &Request) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// 421 for a WebSocket upgrade to an actor another member owns, naming the owner in
/// [`OWNER`]: a socket is kept by the host that serves its actor, so the client connects there.
fn misdirected_upgrade(actor: &str, owner: &str) -> Response {
    let mut r = error(
        StatusCode::MISDIRECTED_REQUEST,
        &format!("actor {actor:?} is served by {owner}: open the WebSocket there"),
    );
    if let Ok(v) = HeaderValue::from_str(owner) {
        r.headers_mut().insert(OWNER, v);
    }
    r
}

async fn serve_here(c: &Cluster, req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(c.advertise()) {
        r.headers_mut().insert(SERVED_BY, v);
    }
    r
}

async fn forward(c: &Cluster, req: Request, next: Next, actor: &str, first: String) -> Response {
    let (mut parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > c.pool.limits.max_body as u64) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "the body is over the limit of {} bytes",
                c.pool.limits.max_body
            ),
        );
    }
    let bytes = match read_body(body, &c.pool.limits).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    strip(&mut parts.headers);
    parts.headers.remove(header::HOST);
    parts.headers.remove(header::CONTENT_LENGTH);
    let me = match HeaderValue::from_str(c.advertise()) {
        Ok(v) => v,
        Err(_) => {
            return unavailable(
                "this host's advertised address is not a header value",
                false,
            )
        }
    };
    parts.headers.insert(FORWARDED_BY, me.clone());
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let mut target = first;
    // The first owner, and at most two more when an owner answers that it is leaving.
    for _ in 0..3 {
        let mut b = axum::http::Request::builder()
            .method(parts.method.clone())
            .uri(path.as_str())
            .version(axum::http::Version::HTTP_11);
        if let Some(h) = b.headers_mut() {
            *h = parts.headers.clone();
            if let Ok(host) = HeaderValue::from_str(&target) {
                h.insert(header::HOST, host);
            }
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        }
        let Ok(out) = b.body(Body::from(bytes.clone())) else {
            return unavailable("cannot build the forwarded request", false);
        };
        c.status.forwarded.fetch_add(1, Ordering::Relaxed);
        let sent = tokio::time::timeout(c.pool.limits.answer_timeout, c.pool.send(&target, out));
        let resp = match sent.await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(actor, owner = %target, "forward failed: {e}");
                return unavailable(
                    &format!("the actor's owner ({target}) did not answer; retry"),
                    false,
                );
            }
            Err(_) => {
                return unavailable(
                    &format!("the actor's owner ({target}) did not answer in time; retry"),
                    false,
                )
            }
        };
        if resp.status() == StatusCode::SERVICE_UNAVAILABLE && resp.headers().contains_key(LEAVING)
        {
            // The owner is leaving (or lost its lease): place nothing there, route again.
            c.hint_leaving(&target);
            match c.route(actor, false) {
                Route::Forward(next_owner) if next_owner != target => {
                    target = next_owner;
                    continue;
                }
                Route::Local(wait) => {
                    if let Some(t) = wait {
                        tokio::time::sleep_until(t.into()).await;
                    }
                    let req = Request::from_parts(parts, Body::from(bytes));
                    return serve_here(c, req, next).await;
                }
                _ => {}
            }
        }
        let (mut rp, incoming) = resp.into_parts();
        strip(&mut rp.headers);
        rp.headers.remove(LEAVING);
        rp.headers.insert(FORWARDED_BY, me);
        return Response::from_parts(rp, Body::new(incoming));
    }
    unavailable("the actor's owners kept leaving; retry", false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actor_paths_are_recognised_and_hop_by_hop_headers_dropped() {
        assert_eq!(actor_of_path("/actors/a-1/query"), Some("a-1"));
        assert_eq!(actor_of_path("/actors/a"), Some("a"));
        assert_eq!(actor_of_path("/actors/"), None);
        assert_eq!(actor_of_path("/metrics"), None);
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        strip(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::AUTHORIZATION));
    }
}
