//! The actor page's history over real HTTP, without a browser: the timeline and the table of
//! commits, a restore form per bookmark (admin only), its confirmation step, its CSRF guard
//! (a missing or wrong token and a cross-origin post are refused with 403 and restore
//! nothing), and a confirmed restore that restores and offers its undo.

#[path = "common/pages.rs"]
mod pages;
#[path = "common/serve.rs"]
mod serve;

use pages::{answer, client, enc, get_cookie, hidden, post_form, sign_in};
use serde_json::{json, Value};
use serve::{Server, ADMIN};

fn rows(s: &Server) -> Value {
    s.sql("a", "SELECT x FROM t ORDER BY rowid", json!([]))["rows"].clone()
}

fn bookmarks(s: &Server) -> Vec<String> {
    let (st, text) = s.get("/actors/a/history", Some(ADMIN));
    assert_eq!(st, 200, "{text}");
    let v: Value = serde_json::from_str(&text).expect("JSON");
    v["commits"]
        .as_array()
        .expect("commits")
        .iter()
        .map(|c| c["bookmark"].as_str().expect("bookmark").to_string())
        .collect()
}

#[test]
fn timeline_restore_form_confirmation_and_csrf() {
    let s = Server::start("memory:", &[]);
    for sql in [
        "CREATE TABLE t(x)",
        "INSERT INTO t VALUES (1)",
        "INSERT INTO t VALUES (2)",
        "DELETE FROM t",
    ] {
        s.sql("a", sql, json!([]));
    }
    let marks = bookmarks(&s); // newest first: seq 4, 3, 2, 1
    assert_eq!(marks.len(), 4);
    let cookie = sign_in(&s, ADMIN, "");
    let page = get_cookie(&s, "/actors/a/inspector", &cookie);
    assert_eq!(page.0, 200);
    let html = &page.2;
    // The timeline: one bar per commit, and the table with each bookmark.
    assert!(html.contains("id=\"history\""), "{html}");
    assert!(html.contains("<svg class=\"timeline\""));
    for seq in 1..=4 {
        assert!(
            html.contains(&format!("class=\"commit\" data-seq=\"{seq}\"")),
            "bar of seq {seq}"
        );
        assert!(html.contains(&format!("<tr data-seq=\"{seq}\">")));
    }
    assert!(html.contains("commits kept <b id=\"history-commits\">4</b>"));
    for b in &marks {
        assert!(html.contains(b.as_str()), "bookmark {b}");
    }
    // A restore form per bookmark but the current one, each with the session's CSRF token.
    assert_eq!(
        html.matches("action=\"/actors/a/inspector/restore\"")
            .count(),
        3
    );
    let csrf = hidden(html, "csrf");
    let to = &marks[1]; // seq 3: rows 1 and 2
    assert!(html.contains(&format!("name=\"to\" value=\"{to}\"")));

    // Refused: no CSRF token, a wrong one, a cross-origin post (with the right token), no
    // Origin at all. Nothing restored.
    let path = "/actors/a/inspector/restore";
    for (origin, form) in [
        (s.base.as_str(), format!("to={to}&confirm=yes")),
        (s.base.as_str(), format!("to={to}&confirm=yes&csrf=wrong")),
        (
            "http://127.0.0.1:1",
            format!("to={to}&confirm=yes&csrf={}", enc(&csrf)),
        ),
    ] {
        let a = post_form(&s, path, origin, Some(&cookie), &form);
        assert_eq!(a.0, 403, "{origin} {form}: {}", a.2);
    }
    let a = answer(
        client()
            .post(format!("{}{path}", s.base))
            .header("Cookie", &cookie)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(format!("to={to}&confirm=yes&csrf={}", enc(&csrf))),
    );
    assert_eq!(a.0, 403, "{}", a.2);
    assert_eq!(rows(&s), json!([]));
    assert_eq!(bookmarks(&s), marks, "a refused post wrote");

    // The first post asks for confirmation and restores nothing.
    let form = format!("to={to}&csrf={}", enc(&csrf));
    let confirm = post_form(&s, path, &s.base, Some(&cookie), &form);
    assert_eq!(confirm.0, 200, "{}", confirm.2);
    assert!(confirm.2.contains("Confirm restore"), "{}", confirm.2);
    assert!(confirm.2.contains("(seq 3,"), "{}", confirm.2);
    assert!(confirm.2.contains("name=\"confirm\" value=\"yes\""));
    assert_eq!(hidden(&confirm.2, "csrf"), csrf);
    assert_eq!(rows(&s), json!([]));

    // Confirmed: restored, and the page offers the undo.
    let done = post_form(
        &s,
        path,
        &s.base,
        Some(&cookie),
        &format!("{form}&confirm=yes"),
    );
    assert_eq!(done.0, 200, "{}", done.2);
    assert!(done.2.contains("<b id=\"restored-to\">3</b>"), "{}", done.2);
    assert!(
        done.2
            .contains(&format!("<code id=\"undo\">{}</code>", marks[0])),
        "{}",
        done.2
    );
    assert_eq!(rows(&s), json!([[1], [2]]));
    let now = bookmarks(&s);
    assert_eq!(now.len(), 5);
    assert!(done.2.contains(&now[0]), "the new bookmark is shown");
    // The undo, confirmed: the rows of before.
    let undo = hidden(&done.2, "to");
    assert_eq!(undo, marks[0]);
    let a = post_form(
        &s,
        path,
        &s.base,
        Some(&cookie),
        &format!("to={undo}&confirm=yes&csrf={}", enc(&csrf)),
    );
    assert_eq!(a.0, 200, "{}", a.2);
    assert_eq!(rows(&s), json!([]));
    // The timeline shows the restores in their own colour.
    let page = get_cookie(&s, "/actors/a/inspector", &cookie);
    assert!(page.2.contains("class=\"restore\" data-seq=\"5\""));
    assert!(page.2.contains("class=\"restore\" data-seq=\"6\""));

    // A target outside the history: 404; a malformed one: 400.
    let a = post_form(
        &s,
        path,
        &s.base,
        Some(&cookie),
        &format!("to=999&confirm=yes&csrf={}", enc(&csrf)),
    );
    assert_eq!(a.0, 404, "{}", a.2);
    let a = post_form(
        &s,
        path,
        &s.base,
        Some(&cookie),
        &format!("to=nope&confirm=yes&csrf={}", enc(&csrf)),
    );
    assert_eq!(a.0, 400, "{}", a.2);

    // The actor's own token: the timeline, but no restore form, and a post is 401.
    let (st, text) = s.get("/actors/a/inspector/token", Some(ADMIN));
    assert_eq!(st, 200);
    let token: Value = serde_json::from_str(&text).unwrap();
    let actor_cookie = sign_in(&s, token["token"].as_str().unwrap(), "a");
    let page = get_cookie(&s, "/actors/a/inspector", &actor_cookie);
    assert_eq!(page.0, 200);
    assert!(page.2.contains("<svg class=\"timeline\""));
    assert!(!page.2.contains("/inspector/restore"));
    let actor_csrf = hidden(&page.2, "csrf");
    let a = post_form(
        &s,
        path,
        &s.base,
        Some(&actor_cookie),
        &format!("to={to}&confirm=yes&csrf={}", enc(&actor_csrf)),
    );
    assert_eq!(a.0, 401, "{}", a.2);
    assert_eq!(rows(&s), json!([]));
    let (status, stderr) = s.terminate();
    assert!(status.success(), "{status:?}: {stderr}");
}
