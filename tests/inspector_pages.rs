//! The inspector's HTML pages over real HTTP, without a browser: sign-in and its cookie, 401
//! without it, the waterfall's phases, the query log's round trips, table paging, the
//! read-only query box, and escaping of markup in values and SQL.

#[path = "common/pages.rs"]
mod pages;
#[path = "common/serve.rs"]
mod serve;

use pages::{
    answer, client, enc, get_cookie, header, hidden, post_form, sign_in, signin_post, Answer,
};
use serde_json::{json, Value};
use serve::{Server, ADMIN};

/// The admin's query box on `actor`'s page, signed in with `cookie`.
fn query_box(s: &Server, actor: &str, cookie: &str, sql: &str) -> Answer {
    let page = get_cookie(s, &format!("/actors/{actor}/inspector"), cookie);
    let csrf = hidden(&page.2, "csrf");
    post_form(
        s,
        &format!("/actors/{actor}/inspector/query"),
        &s.base,
        Some(cookie),
        &format!("csrf={}&sql={}", enc(&csrf), enc(sql)),
    )
}

/// The startup phase names from the JSON inspector document.
fn phase_names(s: &Server, actor: &str) -> Vec<String> {
    let (st, body) = s.get(&format!("/actors/{actor}/inspector/metrics"), Some(ADMIN));
    assert_eq!(st, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).expect("JSON");
    let obj = doc.as_object().expect("an object");
    let names: Vec<String> = obj
        .keys()
        .filter_map(|k| {
            let rest = k
                .strip_prefix("startup_internal_")
                .or_else(|| k.strip_prefix("startup_user_"))?;
            rest.strip_suffix("_ms").map(String::from)
        })
        .collect();
    assert!(names.len() >= 3, "few phases in {body}");
    names
}

#[test]
fn sign_in_cookie_and_401() {
    let s = Server::start("memory:", &[]);
    s.sql("alpha", "CREATE TABLE t(x)", json!([]));

    // Without a token or session: 401 with the sign-in form.
    for path in ["/", "/actors/alpha/inspector"] {
        let a = answer(client().get(format!("{}{path}", s.base)).call());
        assert_eq!(a.0, 401, "{path}");
        assert!(
            a.2.contains("<form method=\"post\" action=\"/signin\""),
            "{}",
            a.2
        );
        assert!(header(&a, "content-type")
            .unwrap_or("")
            .starts_with("text/html"));
    }
    // A wrong token: 401 and no session cookie (only a fresh sign-in form's); a bogus
    // cookie: 401.
    let a = signin_post(&s, "token=wrong&actor=alpha");
    assert_eq!(a.0, 401);
    assert!(header(&a, "set-cookie").is_some_and(|c| c.starts_with("kvsqlite_signin=")));
    assert_eq!(get_cookie(&s, "/", "kvsqlite_session=00ff").0, 401);

    // The admin token: a 303 with an HttpOnly, SameSite=Strict cookie (not Secure on HTTP).
    let a = signin_post(&s, &format!("token={}&next=%2F", enc(ADMIN)));
    assert_eq!(a.0, 303, "{}", a.2);
    assert_eq!(header(&a, "location"), Some("/"));
    let set = header(&a, "set-cookie").expect("Set-Cookie");
    assert!(set.starts_with("kvsqlite_session="), "{set}");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains("Secure"), "{set}");
    let id = set.split(';').next().unwrap_or_default()["kvsqlite_session=".len()..].to_string();
    assert!(
        id.len() >= 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    let cookie = format!("kvsqlite_session={id}");
    let home = get_cookie(&s, "/", &cookie);
    assert_eq!(home.0, 200, "{}", home.2);
    assert!(home.2.contains("kvsqlite host") && home.2.contains("<svg"));
    assert!(home.2.contains("KV round trips per second") && home.2.contains("id=\"errors\""));
    assert!(
        home.2.contains("/actors/alpha/inspector"),
        "the overview lists alpha"
    );
    // An open redirect is refused: `next` must be a local path.
    let a = signin_post(&s, &format!("token={}&next=%2F%2Fevil.example", enc(ADMIN)));
    assert_eq!(header(&a, "location"), Some("/"));

    // The page never creates an actor.
    let missing = get_cookie(&s, "/actors/nobody/inspector", &cookie);
    assert_eq!(missing.0, 404, "{}", missing.2);
    assert!(!get_cookie(&s, "/", &cookie).2.contains("/actors/nobody/"));

    // Bearer works on the pages.
    let (st, body) = s.get("/actors/alpha/inspector", Some(ADMIN));
    assert_eq!(st, 200, "{body}");
    assert_eq!(s.get("/", Some("nope")).0, 401);

    // The actor's own token: its page only, and no query box.
    let (_, tok) = s.get("/actors/alpha/inspector/token", Some(ADMIN));
    let tok: Value = serde_json::from_str(&tok).expect("JSON");
    let tok = tok["token"].as_str().expect("token").to_string();
    let actor_cookie = sign_in(&s, &tok, "alpha");
    let page = get_cookie(&s, "/actors/alpha/inspector", &actor_cookie);
    assert_eq!(page.0, 200, "{}", page.2);
    assert!(
        !page.2.contains("id=\"sql\""),
        "no query box for an actor token"
    );
    assert_eq!(get_cookie(&s, "/", &actor_cookie).0, 401);
    s.sql("beta", "CREATE TABLE u(y)", json!([]));
    assert_eq!(
        get_cookie(&s, "/actors/beta/inspector", &actor_cookie).0,
        401
    );
    let q = post_form(
        &s,
        "/actors/alpha/inspector/query",
        &s.base,
        Some(&actor_cookie),
        "sql=SELECT+1",
    );
    assert_eq!(q.0, 401);
    let (st, _) = s.get("/actors/alpha/inspector", Some(&tok));
    assert_eq!(st, 200, "the actor token as a bearer");
}

#[test]
fn waterfall_log_tables_query_and_escaping() {
    let s = Server::start("memory:", &[]);
    let cookie = sign_in(&s, ADMIN, "");
    s.seed_shop(
        "<script>window.pwned=1</script>",
        "<script>alert(1)</script>",
    );
    let phases = phase_names(&s, "shop");

    let page = get_cookie(&s, "/actors/shop/inspector", &cookie);
    assert_eq!(page.0, 200, "{}", page.2);
    let html = &page.2;
    // Every startup phase is in the waterfall, `restore_connections` among them (serve
    // configures connections).
    assert!(
        phases.iter().any(|p| p == "restore_connections"),
        "{phases:?}"
    );
    for p in &phases {
        assert!(
            html.contains(&format!("data-phase=\"{p}\"")),
            "phase {p} missing from the waterfall"
        );
    }
    assert!(html.contains("class=\"waterfall\""));
    // Each phase's own round trips: the wake's one read is check_persist_data's.
    assert!(
        html.contains("<tr><td>check_persist_data</td><td>internal</td>")
            && html.contains("ms · 1 RT"),
        "the waterfall does not show check_persist_data's round trip"
    );
    // The query log shows the statements just run with their round trips.
    let log = &html[html.find("id=\"log\"").expect("the log")..];
    let row = log
        .split("<tr")
        .find(|r| r.contains("CREATE TABLE items(n INTEGER, label TEXT)"))
        .expect("the CREATE in the log");
    let rt = row
        .split("<td class=\"rt\">")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .expect("a round-trip cell");
    assert!(rt.parse::<u64>().is_ok(), "round trips {rt:?}");
    assert!(log.contains("INSERT INTO items VALUES (?, ?)"));
    // Newest first: the SELECT comes before the CREATE.
    let sel = log
        .find("SELECT &#39;&lt;script&gt;")
        .expect("the SELECT, escaped");
    let create = log.find("CREATE TABLE items").expect("the CREATE");
    assert!(sel < create, "newest first");
    // Markup in SQL is text.
    assert!(!html.contains("<script>alert(1)"), "raw SQL markup");
    // The ?q= filter.
    let filtered = get_cookie(&s, "/actors/shop/inspector?q=create", &cookie).2;
    let flog = &filtered[filtered.find("id=\"log\"").expect("log")..];
    assert!(flog.contains("CREATE TABLE items") && !flog.contains("INSERT INTO items"));

    // The tables: names, row counts, columns; paging 20 rows at a time.
    assert!(
        html.contains(">items</a></td><td>46</td><td>n, label</td>"),
        "tables"
    );
    let p1 = get_cookie(&s, "/actors/shop/inspector?table=items", &cookie).2;
    assert!(p1.contains("<td>item-00</td>") && p1.contains("<td>item-19</td>"));
    assert!(!p1.contains("<td>item-20</td>"));
    assert!(p1.contains("id=\"next-page\"") && !p1.contains("id=\"prev-page\""));
    let p3 = get_cookie(&s, "/actors/shop/inspector?table=items&offset=40", &cookie).2;
    assert!(p3.contains("<td>item-44</td>") && !p3.contains("<td>item-39</td>"));
    assert!(p3.contains("id=\"prev-page\"") && !p3.contains("id=\"next-page\""));
    // The value with markup is shown as text.
    assert!(p3.contains("&lt;script&gt;window.pwned=1&lt;/script&gt;"));
    assert!(!p3.contains("<script>window.pwned"));
    // An unknown table shows no rows (and is not run).
    let bad = get_cookie(&s, "/actors/shop/inspector?table=%22%3B+DROP", &cookie);
    assert_eq!(bad.0, 200);
    assert!(!bad.2.contains("id=\"table-rows\""));

    // A read-only query works; a write is refused and changes nothing.
    let q = query_box(&s, "shop", &cookie, "SELECT count(*) AS total FROM items");
    assert_eq!(q.0, 200, "{}", q.2);
    assert!(q.2.contains("<th>total</th>") && q.2.contains("<td>46</td>"));
    for write in [
        "DELETE FROM items",
        "INSERT INTO items VALUES (1, 'x')",
        "ATTACH 'x.db' AS x",
        "BEGIN",
    ] {
        let q = query_box(&s, "shop", &cookie, write);
        assert_eq!(q.0, 400, "{write}: {}", q.2);
        assert!(
            q.2.contains("id=\"query-error\"") && q.2.contains("refused"),
            "{write}"
        );
    }
    let out = s.sql("shop", "SELECT count(*) FROM items", json!([]));
    assert_eq!(out["rows"], json!([[46]]));
    // A query returning markup shows it as text.
    let q = query_box(&s, "shop", &cookie, "SELECT label FROM items WHERE n = 999");
    assert!(q
        .2
        .contains("<td>&lt;script&gt;window.pwned=1&lt;/script&gt;</td>"));
    // The only script on any page is the inspector's own, from this host (no inline script).
    for body in [html, &p3, &q.2] {
        assert_eq!(body.matches("<script").count(), 1);
        assert!(body.contains("<script src=\"/assets/inspector.js\" defer></script>"));
    }
}
