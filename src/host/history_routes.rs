//! The history routes of `kvsqlite serve`: `GET /actors/{id}/history`, `POST
//! /actors/{id}/restore` and `POST /actors/{id}/fork` (admin token), and the mapping of the
//! history's failures to statuses.
//!
//! Why it exists: the actor layer keeps, restores and forks history ([`crate::actor`]); what
//! the host adds is the HTTP contract — the admin token from the headers first, a request body
//! read only then, an actor never created by these routes (an id the store never held is
//! 404), and one status per failure: a malformed target 400, a target outside the history 404,
//! a fork onto an existing actor 409, a stale instance 503 "actor moved" (it wrote nothing).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{json, Value};

use super::auth::Lookup;
use super::inspector::escape::{field, parse_form};
use super::registry::{is_store_failure, store_unavailable, Work};
use super::routes::{actor_id, actor_token, admin_json_async, admin_post_json, AppState};
use super::{check_actor_id, HostError};
use crate::actor::{Actor, ActorError};
use crate::vfs::history::{CommitInfo, Target};
use crate::vfs::VfsError;

/// Commits one `GET /actors/{id}/history` answers by default.
pub const DEFAULT_LIMIT: usize = 100;
/// The most commits one answer holds (`?limit=`).
pub const MAX_LIMIT: usize = 1000;

/// One commit as the routes answer it.
pub fn commit_json(c: &CommitInfo) -> Value {
    json!({
        "seq": c.seq,
        "time_ms": c.time_ms,
        "pages": c.pages,
        "bytes": c.bytes,
        "file_size": c.file_size,
        "restore": c.restore,
        "bookmark": c.bookmark,
    })
}

/// A failure of the actor layer's history work as a status: see the module comment.
pub fn history_error(e: ActorError) -> HostError {
    match e {
        ActorError::Moved | ActorError::Vfs(VfsError::Moved) => HostError::Unavailable(
            "actor moved: another instance wrote since this one woke; nothing was written; retry"
                .into(),
        ),
        ActorError::Vfs(VfsError::History(m)) => HostError::NotFound(m),
        ActorError::ActorExists(a) => HostError::Conflict(format!("actor {a:?} already exists")),
        ActorError::InvalidActor(e) => HostError::BadRequest(e.to_string()),
        ActorError::InvalidConfig(m) => HostError::BadRequest(m),
        ActorError::Vfs(VfsError::Misuse(m)) => HostError::Conflict(m),
        e if is_store_failure(&e) => store_unavailable(e),
        e => HostError::Internal(e.to_string()),
    }
}

/// The target named by field `key` of `body` (a bookmark, a decimal seq, or a time as the CLI
/// takes them: RFC 3339 in UTC or `@MS`; an integer is a seq), or by `"seq"` (an integer) or
/// `"time"` (ms since the epoch, or an RFC 3339 string). Exactly one of them; `None` when
/// none is given and `optional`.
fn target_from(body: &Value, key: &str, optional: bool) -> Result<Option<Target>, HostError> {
    let bad = |m: String| HostError::BadRequest(m);
    let obj = body
        .as_object()
        .ok_or_else(|| bad("the body must be a JSON object".into()))?;
    let given: Vec<&str> = [key, "seq", "time"]
        .into_iter()
        .filter(|k| obj.get(*k).is_some_and(|v| !v.is_null()))
        .collect();
    if given.len() > 1 {
        return Err(bad(format!(
            "give one of \"{key}\", \"seq\" or \"time\" (the body has {})",
            given.join(", ")
        )));
    }
    let Some(&which) = given.first() else {
        return if optional {
            Ok(None)
        } else {
            Err(bad(format!(
                "the body needs \"{key}\" (a bookmark), \"seq\" or \"time\""
            )))
        };
    };
    let v = &obj[which];
    let t = match (which, v) {
        ("seq", v) => Target::Seq(
            v.as_u64()
                .ok_or_else(|| bad("\"seq\" must be a non-negative integer".into()))?,
        ),
        ("time", Value::String(s)) => match Target::parse(s).map_err(bad)? {
            t @ Target::Time(_) => t,
            _ => return Err(bad(format!("\"time\": {s:?} is not a time"))),
        },
        ("time", v) => Target::Time(v.as_u64().ok_or_else(|| {
            bad("\"time\" must be milliseconds since the epoch or an RFC 3339 time".into())
        })?),
        (_, Value::String(s)) => Target::parse(s).map_err(|m| bad(format!("\"{key}\": {m}")))?,
        (_, v) => Target::Seq(v.as_u64().ok_or_else(|| {
            bad(format!(
                "\"{key}\" must be a bookmark, a time or a seq (a string or an integer)"
            ))
        })?),
    };
    Ok(Some(t))
}

/// 404 unless the store holds actor `id` (these routes never create an actor).
async fn must_exist(s: &AppState, id: &str) -> Result<(), HostError> {
    match actor_token(s, id).await? {
        Lookup::Token(_) => Ok(()),
        Lookup::Absent => Err(HostError::NotFound(format!("no actor {id:?} in the store"))),
    }
}

/// Runs `f` on actor `id` (waking it) and maps its error.
async fn on_actor(
    s: &AppState,
    id: &str,
    f: impl FnOnce(&Actor) -> Result<Value, ActorError> + Send + 'static,
) -> Result<Value, HostError> {
    let work: Work = Box::new(move |actor: &Actor| f(actor).map_err(history_error));
    s.registry.run(id, s.statement_timeout, work).await
}

/// `GET /actors/{id}/history?limit=N&before=SEQ`: the commits kept, newest first, at most
/// `limit` (default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]) with a seq below `before`;
/// `next_before` is the `before` of the next page (`null` on the last).
pub async fn history(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let s2 = s.clone();
    admin_json_async(&s, &headers, async move {
        let s = s2;
        let id = actor_id(id)?;
        let pairs = parse_form(q.as_deref().unwrap_or(""));
        let limit = match field(&pairs, "limit") {
            None => DEFAULT_LIMIT,
            Some(l) => match l.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(HostError::BadRequest(format!(
                        "limit must be 1 to {MAX_LIMIT} (it is {l:?})"
                    )))
                }
            },
        };
        let before = match field(&pairs, "before") {
            None => u64::MAX,
            Some(b) => b.parse::<u64>().map_err(|_| {
                HostError::BadRequest(format!("before must be a seq (it is {b:?})"))
            })?,
        };
        must_exist(&s, &id).await?;
        on_actor(&s, &id, move |actor| {
            let all = actor.history()?;
            let current = actor.bookmark()?;
            let mut page: Vec<&CommitInfo> = all.iter().rev().filter(|c| c.seq < before).collect();
            let more = page.len() > limit;
            page.truncate(limit);
            let next_before = if more {
                page.last().map(|c| json!(c.seq)).unwrap_or(Value::Null)
            } else {
                Value::Null
            };
            Ok(json!({
                "current": current,
                "commits": page.into_iter().map(commit_json).collect::<Vec<_>>(),
                "next_before": next_before,
            }))
        })
        .await
    })
    .await
}

/// `POST /actors/{id}/restore` with `{"to": BOOKMARK}`, `{"seq": N}` or `{"time": T}`:
/// restores the actor in place (one new commit) and answers `{"bookmark", "undo",
/// "restored_to", "pages"}`; restoring to `undo` undoes it.
pub async fn restore(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    admin_post_json(s, id, headers, body, |s, id, body| async move {
        let target = target_from(&body, "to", false)?
            .ok_or_else(|| HostError::Internal("no target".into()))?;
        must_exist(&s, &id).await?;
        on_actor(&s, &id, move |actor| {
            let out = actor.restore(&target)?;
            Ok(json!({
                "bookmark": out.bookmark,
                "undo": out.undo,
                "restored_to": out.restored_to,
                "pages": out.pages,
            }))
        })
        .await
    })
    .await
}

/// `POST /actors/{id}/fork` with `{"to": NEW_ID, "at": BOOKMARK|SEQ|TIME}` (or `"seq"` /
/// `"time"`; none: the current commit): creates actor `to` holding the database as of the
/// target (409 when it exists) and answers `{"actor", "bookmark", "seq_of_source", "pages"}`.
pub async fn fork(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    admin_post_json(s, id, headers, body, |s, id, body| async move {
        let to = body
            .get("to")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                HostError::BadRequest("the body needs \"to\": the new actor's id".into())
            })?
            .to_string();
        check_actor_id(&to)?;
        if to == id {
            return Err(HostError::BadRequest(
                "a fork needs a new actor id in \"to\", not the source's".into(),
            ));
        }
        let at = target_from(&body, "at", true)?;
        must_exist(&s, &id).await?;
        if s.registry.is_awake(&to) {
            return Err(HostError::Conflict(format!("actor {to:?} already exists")));
        }
        let retention = s.registry.actor_config().retention.clone();
        let to2 = to.clone();
        let v = on_actor(&s, &id, move |actor| {
            let at = match at {
                Some(t) => t,
                None => Target::Bookmark(actor.bookmark()?),
            };
            let r = actor.fork(&at, &to2, &retention)?;
            Ok(json!({
                "actor": to2,
                "bookmark": r.bookmark,
                "seq_of_source": r.seq_of_source,
                "pages": r.pages,
            }))
        })
        .await?;
        // The id may be remembered as absent from an earlier lookup: it exists now.
        s.tokens.forget_absent(&to);
        Ok(v)
    })
    .await
}

/// Adds the history routes.
pub fn routes(router: axum::Router<AppState>) -> axum::Router<AppState> {
    use axum::routing::{get, post};
    router
        .route("/actors/{id}/history", get(history))
        .route("/actors/{id}/restore", post(restore))
        .route("/actors/{id}/fork", post(fork))
}

/// Shared by the inspector's restore form: restores actor `id` to `target` on its queue.
pub async fn restore_actor(
    s: &AppState,
    id: &str,
    target: Target,
) -> Result<crate::vfs::history::RestoreOutcome, HostError> {
    must_exist(s, id).await?;
    let slot = Arc::new(parking_lot::Mutex::new(None));
    let out = slot.clone();
    on_actor(s, id, move |actor| {
        *out.lock() = Some(actor.restore(&target)?);
        Ok(Value::Null)
    })
    .await?;
    let r = slot.lock().take();
    r.ok_or_else(|| HostError::Internal("the restore did not run".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let b = "000001a24fa72e310000000000000003";
        let t = |v: Value| target_from(&v, "to", false);
        assert_eq!(
            t(json!({ "to": b })).unwrap(),
            Some(Target::Bookmark(b.into()))
        );
        assert_eq!(t(json!({ "seq": 4 })).unwrap(), Some(Target::Seq(4)));
        assert_eq!(t(json!({ "to": "4" })).unwrap(), Some(Target::Seq(4)));
        assert_eq!(t(json!({ "time": 5 })).unwrap(), Some(Target::Time(5)));
        assert_eq!(
            t(json!({ "time": "1970-01-01T00:00:01Z" })).unwrap(),
            Some(Target::Time(1000))
        );
        assert!(matches!(
            t(json!({ "time": "7" })),
            Err(HostError::BadRequest(_))
        ));
        assert!(matches!(t(json!({})), Err(HostError::BadRequest(_))));
        assert!(matches!(
            t(json!({ "to": b, "seq": 1 })),
            Err(HostError::BadRequest(_))
        ));
        assert!(matches!(
            t(json!({ "to": "nope" })),
            Err(HostError::BadRequest(_))
        ));
        assert!(matches!(
            t(json!({ "seq": -1 })),
            Err(HostError::BadRequest(_))
        ));
        assert!(matches!(t(json!([1])), Err(HostError::BadRequest(_))));
        assert_eq!(target_from(&json!({}), "at", true).unwrap(), None);
    }
}
