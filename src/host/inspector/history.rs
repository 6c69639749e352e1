//! The actor page's history: the timeline of the commits kept (commits and bytes over time), a
//! restore form per bookmark, and `POST /actors/{id}/inspector/restore`, which first answers a
//! confirmation page and restores only when that page's form is posted back.
//!
//! Why it exists: a restore rewrites an actor's database, so on a page it must be deliberate
//! (a confirmation step), admin only, and as hard to forge as the query box: a cookie-signed-in
//! post must come from this origin with its session's CSRF token ([`super::csrf`]). Every page
//! a restore answers says how to undo it (the bookmark taken just before, with its own form).

use std::fmt::Write as _;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::escape::{esc, field, url_encode};
use super::html::{fmt_time, page};
use super::svg::{timeline, Commit};
use super::{admin_form_post, error_page, html};
use crate::host::history_routes::restore_actor;
use crate::host::routes::AppState;
use crate::host::HostError;
use crate::vfs::history::{parse_bookmark, CommitInfo, Target};

/// Commits listed in the page's table at most (the newest; the timeline shows all).
pub const TABLE_ROWS: usize = 100;

fn csrf_field(csrf: Option<&str>) -> String {
    csrf.map(|c| format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(c)))
        .unwrap_or_default()
}

/// A form that posts `to` (and `confirm=yes` when `confirm`) to the restore route.
fn restore_form(id: &str, to: &str, csrf: Option<&str>, confirm: bool, label: &str) -> String {
    format!(
        "<form method=\"post\" action=\"/actors/{}/inspector/restore\" class=\"restore\"><input type=\"hidden\" name=\"to\" value=\"{}\">{}{}<button type=\"submit\">{}</button></form>",
        url_encode(id),
        esc(to),
        if confirm {
            "<input type=\"hidden\" name=\"confirm\" value=\"yes\">"
        } else {
            ""
        },
        csrf_field(csrf),
        esc(label)
    )
}

/// The page's history section: `history` is the commits kept (oldest first) and the current
/// bookmark, or why they could not be read; restore forms only when `admin`.
pub fn section(
    id: &str,
    history: &Result<(Vec<CommitInfo>, String), String>,
    admin: bool,
    csrf: Option<&str>,
) -> String {
    let mut b = String::from("<section id=\"history\"><h2>History</h2>");
    let (commits, current) = match history {
        Ok(h) => h,
        Err(e) => {
            let _ = write!(
                b,
                "<p class=\"err\" id=\"history-error\">{}</p></section>",
                esc(e)
            );
            return b;
        }
    };
    let bytes: u64 = commits.iter().map(|c| c.bytes).sum();
    let _ = write!(
        b,
        "<p class=\"facts\"><span>commits kept <b id=\"history-commits\">{}</b></span><span>bytes <b id=\"history-bytes\">{bytes}</b></span><span>current bookmark <code id=\"history-current\">{}</code></span></p>",
        commits.len(),
        esc(current)
    );
    let points: Vec<Commit> = commits
        .iter()
        .map(|c| Commit {
            seq: c.seq,
            time_ms: c.time_ms,
            bytes: c.bytes,
            restore: c.restore,
            label: fmt_time(c.time_ms),
        })
        .collect();
    b.push_str(&timeline(&points));
    b.push_str("<table id=\"history-table\"><thead><tr><th>seq</th><th>time (UTC)</th><th>pages</th><th>bytes</th><th>kind</th><th>bookmark</th><th></th></tr></thead><tbody>");
    for c in commits.iter().rev().take(TABLE_ROWS) {
        let form = if admin && c.bookmark != *current {
            restore_form(id, &c.bookmark, csrf, false, "restore…")
        } else {
            String::new()
        };
        let _ = write!(
            b,
            "<tr data-seq=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{form}</td></tr>",
            c.seq,
            c.seq,
            fmt_time(c.time_ms),
            c.pages,
            c.bytes,
            if c.restore { "restore" } else { "commit" },
            esc(&c.bookmark)
        );
    }
    b.push_str("</tbody></table></section>");
    b
}

fn back(id: &str) -> String {
    format!(
        "<nav><a href=\"/\">host</a><a href=\"/actors/{}/inspector\" id=\"back\">actor {}</a></nav>",
        url_encode(id),
        esc(id)
    )
}

/// `POST /actors/{id}/inspector/restore` (form: `to`, a bookmark, seq or time as the CLI takes
/// them; `confirm=yes`; `csrf`): admin only. Without `confirm` it answers the confirmation
/// page; with it, restores and answers the outcome with an undo form.
pub(super) async fn restore_post(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (id, sess, pairs) =
        match admin_form_post(&s, id, &headers, body, "Restoring needs the admin token.").await {
            Ok(x) => x,
            Err(r) => return r,
        };
    let csrf = sess.as_ref().map(|x| x.csrf.as_str());
    let to = field(&pairs, "to").unwrap_or("").trim().to_string();
    let target = match Target::parse(&to) {
        Ok(t) => t,
        Err(m) => return error_page(&s, HostError::BadRequest(format!("restore to: {m}"))),
    };
    if field(&pairs, "confirm") != Some("yes") {
        let what = match parse_bookmark(&to) {
            Some((t, seq)) => format!(
                "bookmark <code>{}</code> (seq {seq}, {} UTC)",
                esc(&to),
                fmt_time(t)
            ),
            None => format!("<code>{}</code>", esc(&to)),
        };
        let body = format!(
            "{}<h1>Restore actor <code>{}</code>?</h1><p id=\"confirm-what\">The database goes back to {what}. This writes one new commit; the page after it offers to undo it.</p>{}<p><a href=\"/actors/{}/inspector\" id=\"cancel\">cancel</a></p>",
            back(&id),
            esc(&id),
            restore_form(&id, &to, csrf, true, "Confirm restore"),
            url_encode(&id)
        );
        return html(StatusCode::OK, page(&format!("restore {id}?"), &body));
    }
    match restore_actor(&s, &id, target).await {
        Ok(out) => {
            let body = format!(
                "{}<h1>Restored actor <code>{}</code></h1><p id=\"restored\">Restored to seq <b id=\"restored-to\">{}</b> ({} pages written); its bookmark is now <code id=\"restored-bookmark\">{}</code>.</p><p>Undo: restore to <code id=\"undo\">{}</code>, the bookmark taken just before.</p>{}",
                back(&id),
                esc(&id),
                out.restored_to,
                out.pages,
                esc(&out.bookmark),
                esc(&out.undo),
                restore_form(&id, &out.undo, csrf, false, "undo…")
            );
            html(StatusCode::OK, page(&format!("restored {id}"), &body))
        }
        Err(e) => error_page(&s, e),
    }
}
