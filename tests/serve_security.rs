//! The attacks of issue 17 on the HTTP side of `kvsqlite serve`, each with its exact request
//! and exact answer: the token checked before the body and before the actor's lock, bounded
//! waits on an actor, the body timeout, `.`/`..` ids, a short admin token, CSRF on every
//! cookie-authenticated form (query box, sign-in, sign-out) and the headers of every answer.

#[path = "common/raw_http.rs"]
mod raw_http;
#[path = "common/serve.rs"]
mod serve;

use std::io::Write;
use std::time::Duration;

use raw_http::{addr_of, exchange, request, Answer};
use serde_json::{json, Value};
use serve::{Server, ADMIN};

const UNAUTHORIZED: &str = "missing or wrong token: send Authorization: Bearer <token>";
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";
/// Runs until interrupted (the statement timeout).
const FOREVER: &str =
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn json_of(a: &Answer) -> Value {
    serde_json::from_str(&a.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", a.body))
}

fn send(s: &Server, bytes: &[u8]) -> Answer {
    exchange(&addr_of(&s.base), bytes).expect("an answer")
}

#[test]
fn the_token_is_checked_before_the_body_is_read() {
    // A body timeout longer than the client's read timeout (60 s): a host that read the body
    // first would leave the client without an answer.
    let s = Server::start("memory:", &["--body-timeout-ms", "600000"]);
    // Headers promising a 1 MB body that never comes.
    for auth in [Some(bearer("wrong")), None] {
        let mut headers = vec![
            ("Content-Type", "application/json"),
            ("Content-Length", "1000000"),
        ];
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        let a = send(&s, &request("POST", "/actors/a/query", &headers, None));
        assert_eq!(a.status, 401, "{a:?}");
        assert_eq!(json_of(&a), json!({ "error": UNAUTHORIZED }));
        assert_eq!(a.header("www-authenticate"), Some("Bearer"));
    }
    // The admin token with a declared length over --max-body: 413 before reading anything.
    let admin = bearer(ADMIN);
    let a = send(
        &s,
        &request(
            "POST",
            "/actors/a/query",
            &[("Authorization", &admin), ("Content-Length", "2000000")],
            None,
        ),
    );
    assert_eq!(a.status, 413, "{a:?}");
    assert_eq!(
        json_of(&a),
        json!({ "error": "the body is over the limit of 1048576 bytes" })
    );
    // Nothing woke: no request reached an actor.
    assert_eq!(s.metrics()["kvsqlite_wakes_total"], 0.0);
}

#[test]
fn a_body_that_does_not_arrive_in_time_is_408() {
    let s = Server::start("memory:", &["--body-timeout-ms", "500"]);
    let admin = bearer(ADMIN);
    let mut conn = raw_http::connect(&addr_of(&s.base), Duration::from_secs(60));
    let head = request(
        "POST",
        "/actors/a/query",
        &[("Authorization", &admin), ("Content-Length", "100")],
        None,
    );
    conn.write_all(&head).expect("head");
    conn.write_all(br#"{"sql": "SE"#).expect("part of the body");
    let a = raw_http::read_answer(&mut conn).expect("an answer");
    assert_eq!(a.status, 408, "{a:?}");
    assert_eq!(
        json_of(&a),
        json!({ "error": "the body did not arrive within the body timeout of 500 ms" })
    );
    assert_eq!(a.header("connection"), Some("close"));
    assert_eq!(s.metrics()["kvsqlite_wakes_total"], 0.0);
}

#[test]
fn a_wrong_token_never_waits_on_the_actor() {
    let s = Server::start("memory:", &["--statement-timeout-ms", "8000"]);
    s.sql("a", "CREATE TABLE t(x)", json!([]));
    let addr = addr_of(&s.base);
    // The admin runs a statement that holds actor `a` for 8 s.
    let long = {
        let addr = addr.clone();
        std::thread::spawn(move || {
            let body = json!({ "sql": FOREVER }).to_string();
            exchange(
                &addr,
                &request(
                    "POST",
                    "/actors/a/query",
                    &[("Authorization", &bearer(ADMIN))],
                    Some(body.as_bytes()),
                ),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let wrong = bearer("wrong-token-of-some-length");
    for (method, path, body) in [
        (
            "POST",
            "/actors/a/query",
            Some(&br#"{"sql": "SELECT 1"}"#[..]),
        ),
        (
            "POST",
            "/actors/a/batch",
            Some(&br#"{"statements": []}"#[..]),
        ),
        ("GET", "/actors/a/inspector/metrics", None),
        ("GET", "/actors/a/inspector/token", None),
    ] {
        let a = send(
            &s,
            &request(method, path, &[("Authorization", &wrong)], body),
        );
        assert_eq!(a.status, 401, "{path}: {a:?}");
        assert_eq!(json_of(&a), json!({ "error": UNAUTHORIZED }), "{path}");
    }
    let page = send(
        &s,
        &request(
            "GET",
            "/actors/a/inspector",
            &[("Authorization", &wrong)],
            None,
        ),
    );
    assert_eq!(page.status, 401, "{page:?}");
    assert_eq!(page.header("www-authenticate"), Some("Bearer"));
    assert_eq!(
        page.body,
        signin_html(
            "/actors/a/inspector",
            "a",
            "Sign in with the admin token or this actor&#39;s inspector token.",
            &csrf_of(&page.body)
        )
    );
    // Every 401 came while the statement still held the actor.
    assert!(!long.is_finished(), "the long statement ended first");
    let a = long.join().expect("thread").expect("an answer");
    assert_eq!(a.status, 408, "{a:?}");
    assert_eq!(
        json_of(&a),
        json!({ "error": "the statement ran past the statement timeout of 8000 ms and was interrupted; its transaction was rolled back" })
    );
}

#[test]
fn a_wait_on_a_busy_actor_is_bounded() {
    let s = Server::start("memory:", &["--statement-timeout-ms", "1500"]);
    s.sql("a", "CREATE TABLE t(x)", json!([]));
    let addr = addr_of(&s.base);
    let spawn = |sql: &'static str| {
        let addr = addr.clone();
        std::thread::spawn(move || {
            let body = json!({ "sql": sql }).to_string();
            exchange(
                &addr,
                &request(
                    "POST",
                    "/actors/a/query",
                    &[("Authorization", &bearer(ADMIN))],
                    Some(body.as_bytes()),
                ),
            )
            .expect("an answer")
        })
    };
    // A holds the actor for 1.5 s, B queues behind it (and runs 1.5 s), C queues behind B: C's
    // wait passes 1.5 s before B is done.
    let a = spawn(FOREVER);
    std::thread::sleep(Duration::from_millis(300));
    let b = spawn(FOREVER);
    std::thread::sleep(Duration::from_millis(100));
    let c = spawn("SELECT 1");
    let (a, b, c) = (a.join().unwrap(), b.join().unwrap(), c.join().unwrap());
    assert_eq!(a.status, 408, "{a:?}");
    assert_eq!(b.status, 408, "{b:?}");
    assert_eq!(c.status, 503, "{c:?}");
    assert_eq!(
        json_of(&c),
        json!({ "error": "the actor stayed busy for 1500 ms (requests ahead of this one); retry" })
    );
    assert_eq!(c.header("retry-after"), Some("1"));
    // The actor serves again.
    assert_eq!(s.sql("a", "SELECT 1", json!([]))["rows"], json!([[1]]));
}

#[test]
fn dot_ids_are_refused() {
    let s = Server::start("memory:", &[]);
    let admin = bearer(ADMIN);
    for (path, id) in [
        ("/actors/./query", "."),
        ("/actors/../query", ".."),
        ("/actors/%2E%2E/query", ".."),
        ("/actors/%2e/query", "."),
    ] {
        let a = send(
            &s,
            &request(
                "POST",
                path,
                &[("Authorization", &admin)],
                Some(br#"{"sql": "SELECT 1"}"#),
            ),
        );
        assert_eq!(a.status, 400, "{path}: {a:?}");
        assert_eq!(
            json_of(&a),
            json!({ "error": format!("invalid actor id: {id:?} is a path segment, not a name") }),
            "{path}"
        );
    }
    assert_eq!(s.metrics()["kvsqlite_wakes_total"], 0.0);
}

#[test]
fn a_short_admin_token_is_refused_at_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvsqlite"))
        .args(["--kv", "memory:", "serve", "--listen", "127.0.0.1:0"])
        .env("KVSQLITE_ADMIN_TOKEN", "0123456789abcde")
        .env_remove("KVSQLITE_KV")
        .output()
        .expect("run kvsqlite serve");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "kvsqlite serve: KVSQLITE_ADMIN_TOKEN: the admin token is 15 bytes; it must be at least 16 (unset KVSQLITE_ADMIN_TOKEN to get a random one)\n"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
}

/// A browser's view of the host: the sign-in form's cookie and token, then a session.
struct Browser<'a> {
    s: &'a Server,
    origin: String,
}

impl Browser<'_> {
    fn get(&self, path: &str, cookie: &str) -> Answer {
        send(self.s, &request("GET", path, &[("Cookie", cookie)], None))
    }

    /// POSTs a form with `headers` added.
    fn post(&self, path: &str, headers: &[(&str, &str)], form: &str) -> Answer {
        let mut h = vec![("Content-Type", "application/x-www-form-urlencoded")];
        h.extend_from_slice(headers);
        send(self.s, &request("POST", path, &h, Some(form.as_bytes())))
    }

    /// The sign-in cookie (`kvsqlite_signin=…`) and the form's token.
    fn signin_form(&self) -> (String, String) {
        let a = send(self.s, &request("GET", "/", &[], None));
        assert_eq!(a.status, 401);
        let set = a.header("set-cookie").expect("the sign-in cookie");
        assert!(
            set.ends_with("; Path=/signin; HttpOnly; SameSite=Strict; Max-Age=3600"),
            "{set}"
        );
        let cookie = set.split(';').next().unwrap_or_default().to_string();
        (cookie, csrf_of(&a.body))
    }

    /// Signs in as admin: the session cookie.
    fn sign_in(&self) -> String {
        let (cookie, csrf) = self.signin_form();
        let a = self.post(
            "/signin",
            &[("Origin", &self.origin), ("Cookie", &cookie)],
            &format!("token={ADMIN}&csrf={csrf}"),
        );
        assert_eq!(a.status, 303, "{a:?}");
        let set = a.header("set-cookie").expect("session cookie");
        set.split(';').next().unwrap_or_default().to_string()
    }
}

fn csrf_of(html: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let at = html.find(marker).expect("a csrf field") + marker.len();
    html[at..at + html[at..].find('"').expect("end")].to_string()
}

/// An HTML page of the inspector (its frame, around `body`).
fn html_page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{title}</title><link rel=\"stylesheet\" href=\"/assets/inspector.css\"><script src=\"/assets/inspector.js\" defer></script></head><body>{body}</body></html>"
    )
}

/// The sign-in page, exactly: its message (HTML-escaped), the actor and the page it comes back
/// to, and its sign-in CSRF token.
fn signin_html(next: &str, actor: &str, message: &str, csrf: &str) -> String {
    html_page(
        "Sign in",
        &format!(
            "<h1>kvsqlite inspector: sign in</h1><p class=\"err\" id=\"signin-message\">{message}</p>\
<form method=\"post\" action=\"/signin\"><p><label>Token (admin, or the actor's inspector token) <input type=\"password\" name=\"token\" id=\"token\" autocomplete=\"off\" size=\"40\"></label></p>\
<p><label>Actor (for an actor token) <input type=\"text\" name=\"actor\" id=\"actor\" value=\"{actor}\"></label></p>\
<input type=\"hidden\" name=\"next\" value=\"{next}\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button type=\"submit\" id=\"signin\">Sign in</button></form>"
        ),
    )
}

/// The HTML error page of `status` with `message` (HTML-escaped), exactly.
fn error_html(status: u16, message: &str) -> String {
    html_page(
        "error",
        &format!(
            "<nav><a href=\"/\">host</a></nav><h1>Error {status}</h1><p class=\"err\">{message}</p>"
        ),
    )
}

/// The message of an HTML error page (`<p class="err">…</p>`).
fn page_error(html: &str) -> &str {
    let at = html.find("class=\"err\"").expect("an error paragraph");
    let from = at + html[at..].find('>').expect(">") + 1;
    &html[from..from + html[from..].find("</p>").expect("</p>")]
}

/// A refused post: its headers, its form, the message shown.
type Refusal<'a> = (Vec<(&'a str, &'a str)>, String, &'a str);

#[test]
fn cookie_posts_need_this_origin_and_the_csrf_token() {
    let s = Server::start("memory:", &[]);
    s.sql("a", "CREATE TABLE t(x)", json!([]));
    // The raw client sends `Host: localhost`: this origin is `http://localhost`.
    let origin_ok = "http://localhost".to_string();
    let b = Browser {
        s: &s,
        origin: origin_ok.clone(),
    };
    let session = b.sign_in();
    let page = b.get("/actors/a/inspector", &session);
    assert_eq!(page.status, 200);
    let csrf = csrf_of(&page.body);
    let q = "/actors/a/inspector/query";
    let form_ok = format!("csrf={csrf}&sql=SELECT+1+AS+one");
    let refused: Vec<Refusal> = vec![
        (
            vec![("Cookie", &session)],
            form_ok.clone(),
            "a form post must say where it comes from (Origin or Sec-Fetch-Site)",
        ),
        (
            vec![("Cookie", &session), ("Origin", "http://localhost:8080")],
            form_ok.clone(),
            "a form post from another origin is refused (Origin: http://localhost:8080)",
        ),
        (
            vec![("Cookie", &session), ("Origin", "null")],
            form_ok.clone(),
            "a form post from another origin is refused (Origin: null)",
        ),
        (
            vec![
                ("Cookie", &session),
                ("Origin", &origin_ok),
                ("Sec-Fetch-Site", "same-site"),
            ],
            form_ok.clone(),
            "a form post from another origin is refused (Sec-Fetch-Site: same-site)",
        ),
        (
            vec![("Cookie", &session), ("Origin", &origin_ok)],
            "sql=SELECT+1".to_string(),
            "the form&#39;s CSRF token is missing or wrong: reload the page and post it again",
        ),
        (
            vec![("Cookie", &session), ("Sec-Fetch-Site", "same-origin")],
            format!("csrf={}&sql=SELECT+1", "0".repeat(64)),
            "the form&#39;s CSRF token is missing or wrong: reload the page and post it again",
        ),
    ];
    for (headers, form, message) in refused {
        let a = b.post(q, &headers, &form);
        assert_eq!(a.status, 403, "{headers:?} {form}: {a:?}");
        assert_eq!(page_error(&a.body), message);
    }
    // This origin and the token: the query runs.
    for h in [
        ("Origin", origin_ok.as_str()),
        ("Sec-Fetch-Site", "same-origin"),
    ] {
        let a = b.post(q, &[("Cookie", &session), h], &form_ok);
        assert_eq!(a.status, 200, "{a:?}");
        assert!(a.body.contains("<th>one</th>") && a.body.contains("<td>1</td>"));
    }
    // A bearer-authenticated POST (not a browser's cookie) needs neither.
    let admin = bearer(ADMIN);
    let a = b.post(q, &[("Authorization", &admin)], "sql=SELECT+1+AS+one");
    assert_eq!(a.status, 200, "{a:?}");

    // Sign-in: another origin, or no sign-in cookie, or a token that is not the cookie's: 403
    // (and no session).
    let (cookie, token) = b.signin_form();
    let wrong_csrf =
        "the form&#39;s CSRF token is missing or wrong: reload the page and post it again";
    for (headers, form, message) in [
        (
            vec![
                ("Origin", "http://localhost:8080"),
                ("Cookie", cookie.as_str()),
            ],
            format!("token={ADMIN}&csrf={token}"),
            "a form post from another origin is refused (Origin: http://localhost:8080)",
        ),
        (
            vec![("Origin", origin_ok.as_str())],
            format!("token={ADMIN}&csrf={token}"),
            wrong_csrf,
        ),
        (
            vec![("Origin", origin_ok.as_str()), ("Cookie", cookie.as_str())],
            format!("token={ADMIN}&csrf={}", "f".repeat(64)),
            wrong_csrf,
        ),
    ] {
        let a = b.post("/signin", &headers, &form);
        assert_eq!(a.status, 403, "{headers:?}: {a:?}");
        // The form again, with a fresh sign-in token (in the form and its cookie) and why.
        let fresh = csrf_of(&a.body);
        assert_eq!(fresh.len(), 64, "{fresh}");
        assert_ne!(fresh, token);
        assert_eq!(
            a.header("set-cookie"),
            Some(
                format!(
                    "kvsqlite_signin={fresh}; Path=/signin; HttpOnly; SameSite=Strict; Max-Age=3600"
                )
                .as_str()
            )
        );
        assert_eq!(a.body, signin_html("/", "", message, &fresh), "{headers:?}");
    }

    // Sign-out: without the token 403 (the session lives on), with it the session ends.
    let a = b.post(
        "/signout",
        &[("Cookie", &session), ("Origin", &origin_ok)],
        "",
    );
    assert_eq!(a.status, 403, "{a:?}");
    assert_eq!(a.body, error_html(403, wrong_csrf));
    assert_eq!(a.header("set-cookie"), None);
    assert_eq!(b.get("/", &session).status, 200);
    let a = b.post(
        "/signout",
        &[("Cookie", &session), ("Origin", &origin_ok)],
        &format!("csrf={csrf}"),
    );
    assert_eq!(a.status, 303, "{a:?}");
    assert_eq!(a.header("location"), Some("/"));
    assert_eq!(
        a.header("set-cookie"),
        Some("kvsqlite_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
    );
    assert_eq!(b.get("/", &session).status, 401);
    assert_eq!(b.get("/actors/a/inspector", &session).status, 401);
}

#[test]
fn every_answer_carries_the_security_headers() {
    let s = Server::start("memory:", &[]);
    s.sql("a", "CREATE TABLE t(x)", json!([]));
    let admin = bearer(ADMIN);
    let answers = [
        ("GET", "/", vec![], 401),
        ("GET", "/", vec![("Authorization", admin.as_str())], 200),
        (
            "GET",
            "/actors/a/inspector",
            vec![("Authorization", admin.as_str())],
            200,
        ),
        (
            "GET",
            "/actors/nobody/inspector",
            vec![("Authorization", admin.as_str())],
            404,
        ),
        (
            "GET",
            "/actors/a/inspector/token",
            vec![("Authorization", admin.as_str())],
            200,
        ),
        (
            "GET",
            "/actors/a/inspector/metrics",
            vec![("Authorization", admin.as_str())],
            200,
        ),
        ("GET", "/no/such/route", vec![], 404),
        ("GET", "/healthz", vec![], 200),
    ];
    for (method, path, headers, status) in answers {
        let a = send(&s, &request(method, path, &headers, None));
        assert_eq!(a.status, status, "{path}: {a:?}");
        assert_eq!(a.header("content-security-policy"), Some(CSP), "{path}");
        assert_eq!(
            a.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(a.header("referrer-policy"), Some("no-referrer"), "{path}");
        assert_eq!(a.header("cache-control"), Some("no-store"), "{path}");
    }
    // The token answer is not cacheable; the pages load their script and style from here.
    let a = send(
        &s,
        &request(
            "GET",
            "/actors/a/inspector/token",
            &[("Authorization", &admin)],
            None,
        ),
    );
    assert_eq!(a.header("cache-control"), Some("no-store"));
    let page = send(
        &s,
        &request(
            "GET",
            "/actors/a/inspector",
            &[("Authorization", &admin)],
            None,
        ),
    );
    assert!(!page.body.contains("<script>") && !page.body.contains("<style>"));
    assert!(!page.body.contains(" style="));
    for (path, ct) in [
        ("/assets/inspector.js", "text/javascript; charset=utf-8"),
        ("/assets/inspector.css", "text/css; charset=utf-8"),
    ] {
        assert!(page.body.contains(path), "{path}");
        let a = send(&s, &request("GET", path, &[], None));
        assert_eq!(a.status, 200);
        assert_eq!(a.header("content-type"), Some(ct));
        assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
    }
}

/// What a broken store says of itself: its file and its own diagnosis (a corrupt redb file).
const STORE_TEXT: &str = "/srv/kvsqlite-secret/actors.redb: page checksum mismatch at 4096";

/// The memory store, failing every call with [`KvError::Backend`] (the store's answer made no
/// sense) carrying [`STORE_TEXT`] while `broken` is set.
struct BrokenStore {
    inner: kvsqlite::kv::memory::MemoryStore,
    broken: std::sync::atomic::AtomicBool,
}

impl BrokenStore {
    fn check(&self) -> Result<(), kvsqlite::kv::KvError> {
        if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(kvsqlite::kv::KvError::Backend {
                backend: "redb",
                message: STORE_TEXT.into(),
            });
        }
        Ok(())
    }
}

impl kvsqlite::kv::KvStore for BrokenStore {
    fn backend(&self) -> &'static str {
        "redb"
    }
    fn limits(&self) -> &kvsqlite::kv::KvLimits {
        self.inner.limits()
    }
    fn get(
        &self,
        actor: &str,
        keys: &[kvsqlite::kv::Key],
    ) -> Result<Vec<Option<kvsqlite::kv::Value>>, kvsqlite::kv::KvError> {
        self.check()?;
        self.inner.get(actor, keys)
    }
    fn list(
        &self,
        actor: &str,
        req: &kvsqlite::kv::ListRequest,
    ) -> Result<kvsqlite::kv::ListPage, kvsqlite::kv::KvError> {
        self.check()?;
        self.inner.list(actor, req)
    }
    fn write(
        &self,
        actor: &str,
        batch: &kvsqlite::kv::WriteBatch,
    ) -> Result<(), kvsqlite::kv::KvError> {
        self.check()?;
        self.inner.write(actor, batch)
    }
    fn delete_range(
        &self,
        actor: &str,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Result<(), kvsqlite::kv::KvError> {
        self.check()?;
        self.inner.delete_range(actor, start, end)
    }
    fn batch_read(
        &self,
        actor: &str,
        ops: &[kvsqlite::kv::ReadOp],
    ) -> Result<Vec<kvsqlite::kv::ReadResult>, kvsqlite::kv::KvError> {
        self.check()?;
        self.inner.batch_read(actor, ops)
    }
}

/// A host in this process over the given store ([`serve::InProcessHost`]).
struct InProcess(serve::InProcessHost);

/// The CLI's defaults (pipelined commits), with room for the tests' actors.
fn host_config(store: kvsqlite::kv::SharedStore, admin: &str) -> kvsqlite::host::HostConfig {
    kvsqlite::host::HostConfig {
        idle_sleep: Duration::from_secs(600),
        max_awake: 100,
        ..kvsqlite::host::HostConfig::new(store, admin)
    }
}

impl InProcess {
    fn start(store: kvsqlite::kv::SharedStore) -> InProcess {
        InProcess(serve::InProcessHost::start(
            host_config(store, ADMIN),
            |_| None,
        ))
    }

    fn get(&self, path: &str, token: &str) -> (u16, String) {
        serve::get(&self.0.agent, &self.0.base, path, Some(token))
    }

    fn post(&self, path: &str, token: &str, body: &Value) -> (u16, String) {
        serve::post(
            &self.0.agent,
            &self.0.base,
            path,
            Some(token),
            &body.to_string(),
        )
    }

    fn query(&self, actor: &str, sql: &str) -> (u16, String) {
        self.post(
            &format!("/actors/{actor}/query"),
            ADMIN,
            &json!({ "sql": sql, "params": [] }),
        )
    }
}

#[test]
fn a_store_error_answers_503_store_unavailable_and_nothing_of_the_store() {
    let store = std::sync::Arc::new(BrokenStore {
        inner: kvsqlite::kv::memory::MemoryStore::new(),
        broken: Default::default(),
    });
    let shared: kvsqlite::kv::SharedStore = store.clone();
    let h = InProcess::start(shared);
    assert_eq!(
        h.query("a", "CREATE TABLE t(x)"),
        (200, r#"{"changes":0,"columns":[],"rows":[]}"#.to_string())
    );
    store
        .broken
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let unavailable = (503, r#"{"error":"store unavailable"}"#.to_string());
    // A commit of an awake actor: its put fails.
    assert_eq!(h.query("a", "INSERT INTO t VALUES (1)"), unavailable);
    // The actor was put to sleep: its wake fails (reading its records).
    assert_eq!(h.query("a", "SELECT count(*) FROM t"), unavailable);
    // A token that is not the admin's, for an actor the host never saw: the store is read for
    // the actor's own token, and fails.
    assert_eq!(
        h.get("/actors/fresh/inspector/metrics", "not-the-token-of-fresh"),
        unavailable
    );
    // History, the queue, alarms: each reaches the store one way or another.
    assert_eq!(h.get("/actors/a/history", ADMIN), unavailable);
    assert_eq!(
        h.post(
            "/actors/a/queue",
            ADMIN,
            &json!({ "sql": "INSERT INTO t VALUES (2)", "params": [] })
        ),
        unavailable
    );
    assert_eq!(
        h.post("/actors/a/fork", ADMIN, &json!({ "to": "b" })),
        unavailable
    );
    // The inspector's page: an HTML error page saying the same, nothing more.
    assert_eq!(
        h.get("/actors/a/inspector", ADMIN),
        (503, error_html(503, "store unavailable"))
    );
    // The store back, the actor wakes afresh: the failed INSERT was not written.
    store
        .broken
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        h.query("a", "SELECT count(*) FROM t"),
        (
            200,
            r#"{"changes":0,"columns":["count(*)"],"rows":[[0]]}"#.to_string()
        )
    );
}
