//! `GET /cluster` (admin token): the members as this host sees them, each with the actors
//! awake on it; and the cluster section of the host overview page.
//!
//! Why it exists: an operator must see who is in the cluster and where each actor runs without
//! reading the store. This host asks each other member for its awake actors
//! (`GET /cluster?local=1`, with the caller's own token) and marks a member that does not
//! answer as unreachable.

use std::fmt::Write as _;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use super::Status;
use crate::host::inspector::escape::esc;
use crate::host::routes::{admin_json_async, AppState};
use crate::host::HostError;

/// How long `GET /cluster` waits for each other member.
pub const MEMBER_WAIT: Duration = Duration::from_secs(2);

/// The route.
pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.route("/cluster", get(cluster_route))
}

async fn cluster_route(
    State(s): State<AppState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let work = async {
        let Some(c) = s.cluster.clone() else {
            return Err(HostError::NotFound(
                "this host is not in a cluster (serve --cluster NAME)".into(),
            ));
        };
        let (awake, _) = s.registry.actor_ids();
        if uri
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "local=1"))
        {
            return Ok(json!({
                "addr": c.advertise(),
                "awake": awake,
                "pid": std::process::id(),
            }));
        }
        let auth = headers.get(header::AUTHORIZATION).cloned();
        let mut members = Vec::new();
        for (addr, id, leaving, me) in c.members() {
            let mut m = json!({ "addr": addr, "id": id, "leaving": leaving, "self": me });
            if me {
                m["awake"] = json!(awake);
            } else {
                match ask(&c, &addr, auth.clone()).await {
                    Ok(v) => m["awake"] = v.get("awake").cloned().unwrap_or(Value::Null),
                    Err(e) => {
                        m["awake"] = Value::Null;
                        m["error"] = json!(e);
                    }
                }
            }
            members.push(m);
        }
        Ok(json!({
            "cluster": c.name(),
            "self": c.advertise(),
            "members": members,
        }))
    };
    admin_json_async(&s, &headers, work).await
}

/// `GET /cluster?local=1` on another member.
async fn ask(c: &super::Cluster, addr: &str, auth: Option<HeaderValue>) -> Result<Value, String> {
    let mut b = axum::http::Request::builder()
        .method("GET")
        .uri("/cluster?local=1")
        .header(header::HOST, addr);
    if let Some(a) = auth {
        b = b.header(header::AUTHORIZATION, a);
    }
    let req = b.body(Body::empty()).map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(MEMBER_WAIT, c.pool.send(addr, req))
        .await
        .map_err(|_| "unreachable: no answer in time".to_string())??;
    let status = resp.status();
    let body = tokio::time::timeout(
        MEMBER_WAIT,
        axum::body::to_bytes(Body::new(resp.into_body()), 4 << 20),
    )
    .await
    .map_err(|_| "unreachable: the answer did not arrive in time".to_string())?
    .map_err(|e| format!("unreachable: {e}"))?;
    if !status.is_success() {
        return Err(format!("answered {status}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))
}

/// The overview page's cluster section (empty outside cluster mode).
pub fn overview_html(status: &Status) -> String {
    let Some((name, me)) = status.identity.get() else {
        return String::new();
    };
    let view = status.view.lock().clone();
    let mut b = format!(
        "<section id=\"cluster\"><h2>Cluster {} ({} members)</h2><p>This host: {}. Awake actors per member: <code>GET /cluster</code>.</p><table id=\"members\"><thead><tr><th>member</th><th>id</th><th>state</th></tr></thead><tbody>",
        esc(name),
        view.len(),
        esc(me)
    );
    for (addr, id, leaving, this) in &view {
        let _ = write!(
            b,
            "<tr><td>{}{}</td><td>{}</td><td>{}</td></tr>",
            esc(addr),
            if *this {
                " <small>(this host)</small>"
            } else {
                ""
            },
            esc(id),
            if *leaving { "leaving" } else { "serving" }
        );
    }
    b.push_str("</tbody></table></section>");
    b
}
