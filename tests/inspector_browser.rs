//! The inspector pages in headless Chromium, driven over chromedriver's W3C WebDriver HTTP
//! API with `ureq` and `serde_json`: sign in, the waterfall's phases, the query log's round
//! trips, table paging, the read-only query box (a write refused), and markup in values and
//! SQL shown as text without running; markup in a table name, a column name and `?q=` shown as
//! text, the log filter as one types, and one refresh by the page's script (no reload).
//! Screenshots are written under `target/` (the paths are
//! printed).
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them). Without them the
//! test prints `SKIPPED: …` and passes, unless `CI=true`, where their absence fails it.

#[path = "common/serve.rs"]
mod serve;
#[path = "common/skip.rs"]
mod skip;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use serve::{Server, ADMIN};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// A chromedriver process and one browser session; both end on drop.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    agent: ureq::Agent,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start(chromium: &Path, chromedriver: &Path) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(chromedriver)
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let agent = serve::agent();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = agent
                .get(format!("{base}/status"))
                .call()
                .ok()
                .and_then(|r| r.into_body().read_to_string().ok())
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .is_some_and(|v| v["value"]["ready"] == json!(true));
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().expect("profile dir");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.to_string_lossy(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1800",
                         format!("--user-data-dir={}", profile.path().display())]
            }
        }}});
        let mut b = Browser {
            driver,
            base,
            session: String::new(),
            agent,
            _profile: profile,
        };
        let v = b.call("POST", "/session", Some(caps));
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        b
    }

    /// One WebDriver command: its `value`; panics on a WebDriver error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let v = self.try_call(method, path, body);
        assert!(
            v.get("error").is_none(),
            "{method} {path}: WebDriver error {v}"
        );
        v
    }

    fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let resp = match method {
            "GET" => self.agent.get(&url).call(),
            "DELETE" => self.agent.delete(&url).call(),
            _ => self
                .agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(body.unwrap_or(json!({})).to_string()),
        };
        let text = resp
            .expect("chromedriver answers")
            .into_body()
            .read_to_string()
            .expect("a body");
        let v: Value = serde_json::from_str(&text).expect("JSON from chromedriver");
        v["value"].clone()
    }

    fn s(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    fn go(&self, url: &str) {
        self.call("POST", &self.s("/url"), Some(json!({ "url": url })));
    }

    fn find_all(&self, css: &str) -> Vec<String> {
        let v = self.call(
            "POST",
            &self.s("/elements"),
            Some(json!({"using": "css selector", "value": css})),
        );
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The first element matching `css`, waiting (up to 60 s) for it to appear.
    fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(e) = self.find_all(css).into_iter().next() {
                return e;
            }
            if Instant::now() > deadline {
                let src = self.call("GET", &self.s("/source"), None);
                panic!("no element {css:?} on the page: {src}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Clicks `el`, which submits a form or follows a link, and waits for the new page to load.
    fn click_and_load(&self, el: &str) {
        self.script("window.__kvsqliteOldPage = true;");
        self.click(el);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.script(
            "return window.__kvsqliteOldPage === undefined && document.readyState === 'complete';",
        ) != json!(true)
        {
            assert!(
                Instant::now() < deadline,
                "the page did not load after a click"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn find_in(&self, el: &str, css: &str) -> String {
        let v = self.call(
            "POST",
            &self.s(&format!("/element/{el}/element")),
            Some(json!({"using": "css selector", "value": css})),
        );
        v[ELEMENT].as_str().expect("an element").to_string()
    }

    fn text(&self, el: &str) -> String {
        let v = self.call("GET", &self.s(&format!("/element/{el}/text")), None);
        v.as_str().unwrap_or_default().to_string()
    }

    fn attr(&self, el: &str, name: &str) -> String {
        let v = self.call(
            "GET",
            &self.s(&format!("/element/{el}/attribute/{name}")),
            None,
        );
        v.as_str().unwrap_or_default().to_string()
    }

    fn click(&self, el: &str) {
        self.call("POST", &self.s(&format!("/element/{el}/click")), None);
    }

    fn clear_and_type(&self, el: &str, text: &str) {
        self.call("POST", &self.s(&format!("/element/{el}/clear")), None);
        self.call(
            "POST",
            &self.s(&format!("/element/{el}/value")),
            Some(json!({ "text": text })),
        );
    }

    fn script(&self, js: &str) -> Value {
        self.call(
            "POST",
            &self.s("/execute/sync"),
            Some(json!({"script": js, "args": []})),
        )
    }

    /// Saves a screenshot as `target/inspector-screenshots/NAME.png` and prints the path.
    fn screenshot(&self, name: &str) -> PathBuf {
        let v = self.call("GET", &self.s("/screenshot"), None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .expect("base64 PNG");
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/inspector-screenshots");
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        eprintln!("screenshot: {}", path.display());
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.try_call("DELETE", &self.s(""), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The startup phase names from the JSON inspector document.
fn phase_names(s: &Server, actor: &str) -> Vec<String> {
    let (st, body) = s.get(&format!("/actors/{actor}/inspector/metrics"), Some(ADMIN));
    assert_eq!(st, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).expect("JSON");
    doc.as_object()
        .expect("an object")
        .keys()
        .filter_map(|k| {
            k.strip_prefix("startup_internal_")
                .or_else(|| k.strip_prefix("startup_user_"))?
                .strip_suffix("_ms")
                .map(String::from)
        })
        .collect()
}

#[test]
fn inspector_in_headless_chromium() {
    let chromium = find_program(&["chromium", "chromium-browser"]);
    let driver = find_program(&["chromedriver"]);
    let (Some(chromium), Some(driver)) = (chromium, driver) else {
        let msg = "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)";
        skip::skip(msg);
        return;
    };
    let s = Server::start("memory:", &[]);
    s.seed_shop(
        "<script>window.pwned=1</script><img src=x onerror=\"window.pwned=2\">",
        "<script>window.pwned=3</script>",
    );
    let phases = phase_names(&s, "shop");
    // `kvsqlite serve` creates the actor with alarms, a queue and connections on, no
    // migrations, no hooks: exactly the code list's phases for that start.
    let mut want: Vec<String> = kvsqlite::actor::startup::startup_gauge_names(
        true,
        false,
        &["alarms", "queue", "connections"],
    )
    .into_iter()
    .filter_map(|n| {
        n.strip_prefix("startup_internal_")
            .or_else(|| n.strip_prefix("startup_user_"))?
            .strip_suffix("_ms")
            .map(String::from)
    })
    .collect();
    let mut got = phases.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want);

    let b = Browser::start(&chromium, &driver);
    // Not signed in: the sign-in form.
    b.go(&format!("{}/actors/shop/inspector", s.base));
    let token = b.find("#token");
    b.clear_and_type(&token, ADMIN);
    b.click_and_load(&b.find("#signin"));
    // Signed in, back on the actor page.
    let shown = b.text(&b.find("#actor-id"));
    assert_eq!(shown, "shop");

    // Every startup phase is a bar of the waterfall.
    let bars: Vec<String> = b
        .find_all("svg.waterfall g.phase")
        .iter()
        .map(|g| b.attr(g, "data-phase"))
        .collect();
    for p in &phases {
        assert!(bars.contains(p), "phase {p} not in the waterfall {bars:?}");
    }
    let phase_table = b.text(&b.find("#phases"));
    for p in &phases {
        assert!(
            phase_table.contains(p.as_str()),
            "phase {p} not in {phase_table}"
        );
    }
    // The queries just run, with their round-trip counts.
    let rows = b.find_all("#log tbody tr");
    let create = rows
        .iter()
        .find(|r| {
            b.text(r)
                .contains("CREATE TABLE items(n INTEGER, label TEXT)")
        })
        .expect("the CREATE in the query log");
    let rt = b.text(&b.find_in(create, "td.rt"));
    assert!(rt.trim().parse::<u64>().is_ok(), "round trips {rt:?}");
    let log = b.text(&b.find("#log"));
    assert!(log.contains("INSERT INTO items VALUES (?, ?)"));
    assert!(
        log.contains("SELECT '<script>window.pwned=3</script>' AS x"),
        "SQL as text"
    );
    b.screenshot("actor");

    // Open the table and page through it.
    let link = b
        .find_all("a.table-link")
        .into_iter()
        .find(|a| b.text(a) == "items")
        .expect("a link to items");
    b.click_and_load(&link);
    let grid = b.text(&b.find("#table-rows"));
    assert!(grid.contains("item-00") && grid.contains("item-19") && !grid.contains("item-20"));
    b.click_and_load(&b.find("#next-page"));
    let grid = b.text(&b.find("#table-rows"));
    assert!(
        grid.contains("item-20") && grid.contains("item-39"),
        "{grid}"
    );
    b.click_and_load(&b.find("#next-page"));
    let grid = b.text(&b.find("#table-rows"));
    assert!(grid.contains("item-44"), "{grid}");
    assert!(
        grid.contains("<script>window.pwned=1</script>"),
        "the value as text: {grid}"
    );
    b.click_and_load(&b.find("#prev-page"));
    assert!(b.text(&b.find("#table-rows")).contains("item-20"));

    // A read-only query runs; a write is refused.
    b.clear_and_type(&b.find("#sql"), "SELECT count(*) AS total FROM items");
    b.click_and_load(&b.find("#run"));
    let result = b.text(&b.find("#query-rows"));
    assert!(
        result.contains("total") && result.contains("46"),
        "{result}"
    );
    b.clear_and_type(&b.find("#sql"), "DELETE FROM items");
    b.click_and_load(&b.find("#run"));
    let refused = b.text(&b.find("#query-error"));
    assert!(refused.contains("refused"), "{refused}");
    b.clear_and_type(&b.find("#sql"), "SELECT label FROM items WHERE n = 999");
    b.click_and_load(&b.find("#run"));
    let result = b.text(&b.find("#query-rows"));
    assert!(
        result.contains("<script>window.pwned=1</script>"),
        "{result}"
    );
    let out = s.sql("shop", "SELECT count(*) FROM items", json!([]));
    assert_eq!(
        out["rows"],
        json!([[46]]),
        "the refused write changed nothing"
    );
    b.screenshot("actor-query");

    // Nothing of the values or SQL ran.
    assert_eq!(b.script("return typeof window.pwned;"), json!("undefined"));

    // The host overview.
    b.go(&format!("{}/", s.base));
    assert!(b.text(&b.find("h1")).contains("kvsqlite host"));
    b.screenshot("host");
}

impl Browser {
    /// The SQL cells of the query log's rows that are displayed, read in one script so the
    /// page's own refresh (which replaces the rows) cannot stale an element between two
    /// WebDriver calls.
    fn shown_log(&self) -> Vec<String> {
        let v = self.script(
            "return Array.from(document.querySelectorAll('#log tbody tr'))\
             .filter(r => r.checkVisibility())\
             .map(r => r.querySelector('td.sql').innerText);",
        );
        v.as_array()
            .unwrap_or_else(|| panic!("the log's rows: {v}"))
            .iter()
            .map(|s| s.as_str().unwrap_or_default().to_string())
            .collect()
    }
}

/// Markup in a table name, a column name and `?q=`, shown as text and never run; the log
/// filter as one types; and one refresh of the page's script (a statement run after the page
/// loaded appears in its log without a reload, and the filter still applies to it).
#[test]
fn inspector_filter_refresh_and_markup_in_names_in_headless_chromium() {
    let chromium = find_program(&["chromium", "chromium-browser"]);
    let driver = find_program(&["chromedriver"]);
    let (Some(chromium), Some(driver)) = (chromium, driver) else {
        let msg = "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)";
        skip::skip(msg);
        return;
    };
    let table = "<b>t</b><img src=x onerror=\"window.pwned=4\">";
    let column = "<i>c</i><script>window.pwned=5</script>";
    let s = Server::start("memory:", &[]);
    let quoted = |n: &str| format!("\"{}\"", n.replace('"', "\"\""));
    s.sql(
        "names",
        &format!("CREATE TABLE {}({} TEXT)", quoted(table), quoted(column)),
        json!([]),
    );
    s.sql(
        "names",
        &format!("INSERT INTO {} VALUES ('apple')", quoted(table)),
        json!([]),
    );
    s.sql("names", "SELECT 'banana' AS fruit", json!([]));

    let b = Browser::start(&chromium, &driver);
    b.go(&format!("{}/actors/names/inspector", s.base));
    b.clear_and_type(&b.find("#token"), ADMIN);
    b.click_and_load(&b.find("#signin"));
    assert_eq!(b.text(&b.find("#actor-id")), "names");

    // The names as text, in the tables list.
    let tables = b.text(&b.find("#tables"));
    assert!(tables.contains(table), "table name as text: {tables}");
    assert!(tables.contains(column), "column name as text: {tables}");

    // The filter, as one types: only matching rows stay displayed.
    let all = b.shown_log();
    assert!(all.iter().any(|q| q.contains("'apple'")), "{all:?}");
    assert!(all.iter().any(|q| q.contains("'banana'")), "{all:?}");
    b.clear_and_type(&b.find("#filter"), "BANANA");
    assert_eq!(b.shown_log(), ["SELECT 'banana' AS fruit"]);

    // One refresh: a statement run now appears in the page without a reload, filtered too.
    b.script("window.__kvsqliteSamePage = true;");
    s.sql("names", "SELECT 'banana split' AS dessert", json!([]));
    s.sql("names", "SELECT 'cherry' AS fruit", json!([]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !b
        .shown_log()
        .contains(&"SELECT 'banana split' AS dessert".to_string())
    {
        assert!(
            Instant::now() < deadline,
            "the page's refresh never showed the new statement: {:?}",
            b.shown_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        b.script("return window.__kvsqliteSamePage === true;"),
        json!(true),
        "refreshed without a reload"
    );
    assert_eq!(
        b.shown_log(),
        [
            "SELECT 'banana split' AS dessert",
            "SELECT 'banana' AS fruit"
        ]
    );
    // Whether the cherry row is there and shown, read in one script (the refresh may replace
    // the rows between two WebDriver calls).
    let cherry = b.script(
        "const r = Array.from(document.querySelectorAll('#log tbody tr'))\
         .find(r => (r.getAttribute('data-sql') || '').includes('cherry'));\
         return r ? [true, r.checkVisibility()] : [false, false];",
    );
    assert_eq!(
        cherry,
        json!([true, false]),
        "the refresh brought the cherry row, and hides it (it does not match the filter)"
    );

    // Markup in `?q=`: the filter box holds it as its value, and the log is filtered by it.
    let q = "<script>window.pwned=6</script>\"><img src=x onerror=\"window.pwned=7\">";
    let enc: String = q
        .bytes()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                (c as char).to_string()
            } else {
                format!("%{c:02X}")
            }
        })
        .collect();
    b.go(&format!("{}/actors/names/inspector?q={enc}", s.base));
    let filter = b.find("#filter");
    assert_eq!(b.attr(&filter, "value"), q);
    assert!(b.shown_log().is_empty(), "{:?}", b.shown_log());
    b.screenshot("actor-markup-names");

    assert_eq!(b.script("return typeof window.pwned;"), json!("undefined"));
}

/// The host overview in headless Chromium: the awake actors with their figures, the costliest
/// actors, the last hour's charts (values as the host counts them, shown as text); then an
/// actor page left open, whose 5 s refresh must not keep its actor awake.
#[test]
fn overview_and_an_open_page_in_headless_chromium() {
    let chromium = find_program(&["chromium", "chromium-browser"]);
    let driver = find_program(&["chromedriver"]);
    let (Some(chromium), Some(driver)) = (chromium, driver) else {
        let msg = "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)";
        skip::skip(msg);
        return;
    };
    // The browser first: its start can take seconds on a busy machine, and the actors made
    // below must still be awake when the overview is read.
    let b = Browser::start(&chromium, &driver);
    // Idle sleep four times the page's 5 s refresh: a refresh that counted as use would keep
    // the actor awake for ever; 20 s leaves the overview's reads below time to run.
    let s = Server::start("memory:", &["--idle-sleep-ms", "20000"]);
    s.sql("alpha", "CREATE TABLE t(v TEXT)", json!([]));
    s.sql(
        "alpha",
        "INSERT INTO t VALUES (?)",
        json!(["<script>window.pwned=1</script>"]),
    );
    // A read after the writes: its answer left after their puts were acknowledged (the output
    // gate), so the overview's round trips for alpha include the last put, which was still in
    // flight when the insert's request was accounted.
    s.sql("alpha", "SELECT count(*) FROM t", json!([]));
    let odd = "b.e~t-a_1";
    s.sql(odd, "SELECT 1", json!([]));
    let m = s.metrics();
    let kv_calls: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("kvsqlite_kv_calls_total{"))
        .map(|(_, v)| v)
        .sum();

    b.go(&format!("{}/", s.base));
    let token = b.find("#token");
    b.clear_and_type(&token, ADMIN);
    b.click_and_load(&b.find("#signin"));
    // The awake actors, by id: alpha (a creation: 2 round trips, then 2 commits; 5
    // statements) and the odd id (a creation, 3 statements, no commit).
    let rows = b.find_all("#actors tbody tr");
    assert_eq!(rows.len(), 2);
    let cells = |row: &str| -> Vec<String> {
        let v = b.call(
            "POST",
            &b.s(&format!("/element/{row}/elements")),
            Some(json!({"using": "css selector", "value": "td"})),
        );
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT].as_str())
                    .map(|e| b.text(e))
                    .collect()
            })
            .unwrap_or_default()
    };
    let first = cells(&rows[0]);
    assert_eq!(first[0], "alpha (created)");
    assert!(
        first[1].ends_with(" B") || first[1].ends_with("KiB"),
        "{first:?}"
    );
    // Statements: the client's three, and the wake's `init_alarms` and `init_queue` reads
    // (serve gives every actor alarms and a queue).
    assert_eq!(
        (first[3].as_str(), first[4].as_str()),
        ("5", "4"),
        "{first:?}"
    );
    let second = cells(&rows[1]);
    assert_eq!(second[0], format!("{odd} (created)"));
    assert_eq!(
        (second[3].as_str(), second[4].as_str()),
        ("3", "2"),
        "{second:?}"
    );
    let link = b.find_in(&rows[1], "a");
    assert_eq!(b.attr(&link, "href"), format!("/actors/{odd}/inspector"));
    // The costliest first.
    let top = b.find_all("#top tbody tr");
    assert_eq!(cells(&top[0])[0], "alpha");
    // Five charts of the last hour; the latest interval's bars say what the host counted.
    for id in [
        "chart-kv",
        "chart-bytes",
        "chart-statements",
        "chart-commits",
        "chart-awake",
    ] {
        b.find(&format!("#{id} svg[role=img]"));
    }
    let last_bar = |id: &str| -> String {
        let v = b.script(&format!(
            "var r=document.querySelectorAll('#{id} svg rect');return r.length?r[r.length-1].textContent:'';"
        ));
        v.as_str().unwrap_or_default().to_string()
    };
    // The host's alarm tick lists the due index every second, so KV calls go on between the
    // scrape above and the page: the bar lies between that scrape and one taken now.
    let kv_now: f64 = s
        .metrics()
        .iter()
        .filter(|(k, _)| k.starts_with("kvsqlite_kv_calls_total{"))
        .map(|(_, v)| v)
        .sum();
    let bar: f64 = last_bar("chart-kv")
        .strip_prefix("-0m: ")
        .and_then(|v| v.parse().ok())
        .expect("the KV chart's last bar");
    assert!(
        kv_calls <= bar && bar <= kv_now,
        "{kv_calls} <= {bar} <= {kv_now}"
    );
    assert_eq!(last_bar("chart-statements"), "-0m: 8");
    assert_eq!(last_bar("chart-commits"), "-0m: 2");
    assert_eq!(last_bar("chart-awake"), "-0m: 2");
    assert_eq!(b.script("return window.pwned === undefined;"), json!(true));
    b.screenshot("overview");

    // An actor page left open: its refresh reads from memory only, so alpha still goes to
    // sleep once idle (bounded: 60 s).
    b.go(&format!("{}/actors/alpha/inspector", s.base));
    b.find("#log-wrap");
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.metrics()["kvsqlite_actors_awake"] > 0.0 {
        assert!(
            Instant::now() < deadline,
            "the open page kept its actor awake"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // The page did refresh meanwhile (a fetch of its own URL), and still shows the actor.
    let polls = b.script(
        "return performance.getEntriesByType('resource').filter(function(e){return e.initiatorType==='fetch';}).length;",
    );
    assert!(polls.as_u64().is_some_and(|n| n >= 1), "{polls}");
    assert_eq!(b.text(&b.find("#actor-id")), "alpha");
    assert_eq!(b.script("return window.pwned === undefined;"), json!(true));
}
