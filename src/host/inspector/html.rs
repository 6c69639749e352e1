//! The inspector's HTML: the sign-in form, the host overview and the actor page, rendered on
//! the server with inline SVG, one style sheet ([`CSS`]) and one small script ([`SCRIPT`]:
//! polling and the log filter), both served by the host itself so that the pages' CSP allows
//! no inline script or style; every page reads fully without the script.
//!
//! Why it exists: people profiling an actor look rather than read JSON. Every value shown
//! goes through [`esc`]; nothing is embedded in inline JSON. Every form that posts carries
//! the session's CSRF token.

use std::fmt::Write as _;

use super::data::{ActorView, Grid, PAGE_ROWS};
use super::escape::{esc, url_encode};
use super::svg::{self, Phase};
use crate::actor::startup::Group;

/// A statement at least this slow (µs) is marked slow.
pub const SLOW_US: u64 = 10_000;
/// A statement with at least this many KV round trips is marked KV-heavy.
pub const KV_HEAVY: u64 = 3;

/// The pages' style sheet (`GET /assets/inspector.css`).
pub const CSS: &str = "body{font-family:system-ui,sans-serif;margin:0 auto;max-width:1240px;padding:12px 20px;color:#222}\
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}\
td.sql,pre{font-family:ui-monospace,monospace;white-space:pre-wrap;word-break:break-all;max-width:560px}\
tr.slow td{background:#fde2e2}tr.kv td{background:#fff3cd}tr.slow.kv td{background:#f8c9a0}\
.badge{font-size:11px;padding:0 4px;border-radius:3px;color:#fff}.b-slow{background:#c0392b}.b-kv{background:#b9770e}\
.facts span{display:inline-block;margin-right:18px}.err{color:#b00;font-weight:bold}\
.legend i{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px}.legend i.int{background:#3b75af}.legend i.user{background:#e07b39}\
nav a{margin-right:14px}nav form{display:inline}form.restore{display:inline;margin:0}textarea{width:100%;font-family:monospace}";

/// The pages' script (`GET /assets/inspector.js`).
pub const SCRIPT: &str = r#"(function(){
  function filter(){var f=document.getElementById('filter');if(!f)return;var v=f.value.toLowerCase();
    document.querySelectorAll('#log tbody tr').forEach(function(r){
      r.style.display=(r.getAttribute('data-sql')||'').indexOf(v)<0?'none':'';});}
  var f=document.getElementById('filter');if(f){f.addEventListener('input',filter);}
  setInterval(function(){
    if(document.visibilityState!=='visible')return;
    fetch(location.pathname+location.search,{credentials:'same-origin',headers:{'X-Inspector-Poll':'1'}})
      .then(function(r){return r.status===200?r.text():null;})
      .then(function(t){if(!t)return;var d=new DOMParser().parseFromString(t,'text/html');
        document.querySelectorAll('[data-live]').forEach(function(e){var n=d.getElementById(e.id);if(n)e.innerHTML=n.innerHTML;});
        filter();})
      .catch(function(){});
  },5000);
})();
"#;

/// A whole page around `body`.
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{}</title><link rel=\"stylesheet\" href=\"/assets/inspector.css\"><script src=\"/assets/inspector.js\" defer></script></head><body>{body}</body></html>",
        esc(title)
    )
}

/// The hidden CSRF field of a form.
fn csrf_field(csrf: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(csrf)
    )
}

/// The sign-out button of a signed-in page (a form: sign-out is a POST with the CSRF token).
fn signout_form(csrf: Option<&str>) -> String {
    match csrf {
        Some(c) => format!(
            "<form method=\"post\" action=\"/signout\">{}<button type=\"submit\" id=\"signout\">sign out</button></form>",
            csrf_field(c)
        ),
        None => String::new(),
    }
}

/// The sign-in form (the 401 page): `next` is where to go after, `message` why it is shown,
/// `csrf` the token of the sign-in cookie sent with it.
pub fn signin(next: &str, actor: &str, message: &str, csrf: &str) -> String {
    let body = format!(
        "<h1>kvsqlite inspector: sign in</h1><p class=\"err\" id=\"signin-message\">{}</p>\
<form method=\"post\" action=\"/signin\"><p><label>Token (admin, or the actor's inspector token) <input type=\"password\" name=\"token\" id=\"token\" autocomplete=\"off\" size=\"40\"></label></p>\
<p><label>Actor (for an actor token) <input type=\"text\" name=\"actor\" id=\"actor\" value=\"{}\"></label></p>\
<input type=\"hidden\" name=\"next\" value=\"{}\">{}<button type=\"submit\" id=\"signin\">Sign in</button></form>",
        esc(message),
        esc(actor),
        esc(next),
        csrf_field(csrf)
    );
    page("Sign in", &body)
}

pub(crate) fn fmt_time(unix_ms: u64) -> String {
    let s = unix_ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60,
        unix_ms % 1000
    )
}

fn grid_table(id: &str, g: &Grid) -> String {
    let mut out = format!("<table id=\"{}\"><thead><tr>", esc(id));
    for c in &g.columns {
        let _ = write!(out, "<th>{}</th>", esc(c));
    }
    out.push_str("</tr></thead><tbody>");
    for r in &g.rows {
        out.push_str("<tr>");
        for c in r {
            let _ = write!(out, "<td>{}</td>", esc(c));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// What the actor page needs besides the view.
pub struct ActorPage<'a> {
    /// The actor id.
    pub id: &'a str,
    /// True when signed in as admin (the query box shows).
    pub admin: bool,
    /// The `?q=` log filter.
    pub filter: &'a str,
    /// The SQL of the query box, to show again.
    pub query_sql: &'a str,
    /// The session's CSRF token (signed in with a cookie), for the forms that post.
    pub csrf: Option<&'a str>,
}

/// The actor page.
pub fn actor_page(p: &ActorPage<'_>, v: &ActorView) -> String {
    let id = esc(p.id);
    let base = format!("/actors/{}/inspector", url_encode(p.id));
    let s = &v.startup;
    let mut b = String::new();
    let _ = write!(
        b,
        "<nav><a href=\"/\">host</a><a href=\"{base}\">refresh</a>{}</nav><h1>Actor <code id=\"actor-id\">{id}</code></h1>",
        signout_form(p.csrf)
    );
    // The waterfall.
    let phases: Vec<Phase> = s
        .phases
        .iter()
        .map(|ph| Phase {
            name: ph.name.to_string(),
            user: ph.group == Group::User,
            ms: ph.ms,
            round_trips: ph.kv_round_trips,
        })
        .collect();
    let _ = write!(
        b,
        "<section id=\"wake\" data-live><h2>Last wake</h2><p class=\"facts\"><span id=\"wake-kind\">{}</span><span>total <b id=\"wake-total\">{:.3} ms</b></span><span>KV round trips <b id=\"wake-round-trips\">{}</b></span><span>preload {} entries, {} bytes</span><span>preload hits {} / misses {}</span></p>\
<p class=\"legend\"><i class=\"int\"></i>internal <i class=\"user\"></i>user</p>{}\
<table id=\"phases\"><thead><tr><th>phase</th><th>group</th><th>ms</th><th>KV round trips</th></tr></thead><tbody>",
        if s.is_new { "new actor (created)" } else { "existing actor" },
        s.total_ms,
        s.kv_round_trips,
        s.preload_entries,
        s.preload_bytes,
        s.preload_hits,
        s.preload_misses,
        svg::waterfall(&phases, s.total_ms)
    );
    for ph in &phases {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{:.3}</td><td>{}</td></tr>",
            esc(&ph.name),
            if ph.user { "user" } else { "internal" },
            ph.ms,
            ph.round_trips
        );
    }
    b.push_str("</tbody></table></section>");
    // Latency.
    let l = &v.latency;
    let _ = write!(
        b,
        "<section id=\"latency\" data-live><h2>Statement latency</h2><p class=\"facts\"><span>count {}</span><span>p50 {} µs</span><span>p90 {} µs</span><span>p99 {} µs</span><span>max {} µs</span></p>{}</section>",
        l.count,
        l.p50,
        l.p90,
        l.p99,
        l.max,
        svg::bars(
            "latency percentiles (µs)",
            &[
                ("p50".into(), l.p50),
                ("p90".into(), l.p90),
                ("p99".into(), l.p99),
                ("max".into(), l.max)
            ]
        )
    );
    // The history: the timeline and a restore form per bookmark (admin).
    if let Some(h) = &v.history {
        b.push_str(&super::history::section(p.id, h, p.admin, p.csrf));
    }
    // The query log, newest first.
    let needle = p.filter.to_lowercase();
    let _ = write!(
        b,
        "<h2>Query log</h2><form method=\"get\" action=\"{base}\"><label>Filter SQL <input type=\"search\" name=\"q\" id=\"filter\" value=\"{}\"></label> <button type=\"submit\">filter</button> <span>slow: ≥ {} ms, KV-heavy: ≥ {KV_HEAVY} round trips</span></form>\
<div id=\"log-wrap\" data-live><table id=\"log\"><thead><tr><th>time (UTC)</th><th>SQL</th><th>µs</th><th>KV round trips</th><th>keys read</th><th>keys written</th><th>preload hits</th><th>cache hits</th><th>rows</th><th></th></tr></thead><tbody>",
        esc(p.filter),
        SLOW_US / 1000
    );
    for r in v.records.iter().rev() {
        let lower = r.sql.to_lowercase();
        if !needle.is_empty() && !lower.contains(&needle) {
            continue;
        }
        let slow = r.duration_us >= SLOW_US;
        let heavy = r.kv_round_trips >= KV_HEAVY;
        let class = match (slow, heavy) {
            (true, true) => "slow kv",
            (true, false) => "slow",
            (false, true) => "kv",
            _ => "",
        };
        let mut marks = String::new();
        if slow {
            marks.push_str("<span class=\"badge b-slow\">slow</span> ");
        }
        if heavy {
            marks.push_str("<span class=\"badge b-kv\">KV-heavy</span>");
        }
        let _ = write!(
            b,
            "<tr class=\"{class}\" data-sql=\"{}\"><td>{}</td><td class=\"sql\">{}</td><td>{}</td><td class=\"rt\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{marks}</td></tr>",
            esc(&lower),
            fmt_time(r.at_unix_ms),
            esc(&r.sql),
            r.duration_us,
            r.kv_round_trips,
            r.kv_keys_read,
            r.kv_keys_written,
            r.preload_hits,
            r.cache_hits,
            r.rows
        );
    }
    b.push_str("</tbody></table></div>");
    // Tables.
    b.push_str("<h2>Tables</h2><table id=\"tables\"><thead><tr><th>table</th><th>rows</th><th>columns</th></tr></thead><tbody>");
    for t in &v.tables {
        let rows = match &t.rows {
            Ok(n) => n.to_string(),
            Err(e) => format!("error: {}", esc(e)),
        };
        let cols: Vec<String> = t.columns.iter().map(|c| esc(c)).collect();
        let _ = write!(
            b,
            "<tr><td><a class=\"table-link\" href=\"{base}?table={}#rows\">{}</a></td><td>{rows}</td><td>{}</td></tr>",
            esc(&url_encode(&t.name)),
            esc(&t.name),
            cols.join(", ")
        );
    }
    b.push_str("</tbody></table>");
    if let Some(pg) = &v.page {
        let t = esc(&url_encode(&pg.table));
        let _ = write!(
            b,
            "<h2 id=\"rows\">Rows of <code>{}</code> ({} to {})</h2>{}<p>",
            esc(&pg.table),
            pg.offset + 1,
            pg.offset + pg.grid.rows.len(),
            grid_table("table-rows", &pg.grid)
        );
        if pg.offset > 0 {
            let _ = write!(
                b,
                "<a id=\"prev-page\" href=\"{base}?table={t}&amp;offset={}#rows\">previous</a> ",
                pg.offset.saturating_sub(PAGE_ROWS)
            );
        }
        if pg.more {
            let _ = write!(
                b,
                "<a id=\"next-page\" href=\"{base}?table={t}&amp;offset={}#rows\">next</a>",
                pg.offset + PAGE_ROWS
            );
        }
        b.push_str("</p>");
    }
    // The read-only query box.
    if p.admin {
        let _ = write!(
            b,
            "<h2 id=\"query\">Read-only query</h2><form method=\"post\" action=\"{base}/query#query\">{}<textarea name=\"sql\" id=\"sql\" rows=\"3\">{}</textarea><br><button type=\"submit\" id=\"run\">Run (read-only)</button></form>",
            p.csrf.map(csrf_field).unwrap_or_default(),
            esc(p.query_sql)
        );
        match &v.query {
            Some(Ok(g)) => {
                let _ = write!(
                    b,
                    "<div id=\"query-result\">{}</div>",
                    grid_table("query-rows", g)
                );
            }
            Some(Err(e)) => {
                let _ = write!(b, "<p class=\"err\" id=\"query-error\">{}</p>", esc(e));
            }
            None => {}
        }
    }
    page(&format!("actor {}", p.id), &b)
}

/// What the overview shows.
pub struct Overview {
    /// Actors awake now.
    pub awake: Vec<String>,
    /// Actors asleep whose last document this host keeps.
    pub asleep: Vec<String>,
    /// Wakes and creations.
    pub wakes: u64,
    /// Wakes that created an actor.
    pub creations: u64,
    /// Sleeps.
    pub sleeps: u64,
    /// Failed wakes.
    pub wake_failures: u64,
    /// KV round trips.
    pub kv_round_trips: u64,
    /// Wake time buckets.
    pub wake_hist: Vec<(String, u64)>,
    /// Query latency buckets.
    pub query_hist: Vec<(String, u64)>,
    /// Error responses by kind.
    pub errors: Vec<(&'static str, u64)>,
    /// KV round trips per second, oldest first: (seconds ago, rate).
    pub kv_rates: Vec<(u64, f64)>,
    /// The awake actors, the costliest ones and the last hour's charts.
    pub fleet: super::overview::Fleet,
}

fn actor_list(ids: &[String]) -> String {
    let mut out = String::from("<ul>");
    for id in ids.iter().take(200) {
        let _ = write!(
            out,
            "<li><a href=\"/actors/{}/inspector\">{}</a></li>",
            esc(&url_encode(id)),
            esc(id)
        );
    }
    if ids.len() > 200 {
        let _ = write!(out, "<li>… and {} more</li>", ids.len() - 200);
    }
    out.push_str("</ul>");
    out
}

/// The host overview; `csrf` as for [`ActorPage::csrf`].
pub fn overview(o: &Overview, csrf: Option<&str>) -> String {
    let mut b = format!("<nav>{}</nav>", signout_form(csrf));
    b.push_str("<h1>kvsqlite host</h1><form method=\"get\" action=\"/open\"><label>Open actor <input type=\"text\" name=\"id\" id=\"open-id\"></label> <button type=\"submit\">open</button></form>");
    let _ = write!(
        b,
        "<section id=\"counts\" data-live><p class=\"facts\"><span>awake <b id=\"awake\">{}</b></span><span>asleep (known here) <b>{}</b></span><span>wakes <b>{}</b></span><span>creations <b>{}</b></span><span>sleeps <b>{}</b></span><span>failed wakes <b>{}</b></span><span>KV round trips <b>{}</b></span></p>",
        o.awake.len(),
        o.asleep.len(),
        o.wakes,
        o.creations,
        o.sleeps,
        o.wake_failures,
        o.kv_round_trips
    );
    let _ = write!(
        b,
        "<h2>KV round trips per second (last {} min, 5 s steps)</h2>{}<h2>Wake time (s)</h2>{}<h2>Statement latency (s)</h2>{}<h2>Errors by kind</h2><table id=\"errors\"><tbody>",
        super::super::prom::KV_SAMPLES * 5 / 60,
        if o.kv_rates.is_empty() {
            "<p>No samples yet.</p>".to_string()
        } else {
            svg::bars(
                "KV round trips per second",
                &std::iter::repeat_n(
                    (String::new(), 0),
                    super::super::prom::KV_SAMPLES.saturating_sub(o.kv_rates.len()),
                )
                .chain(
                    o.kv_rates
                        .iter()
                        .map(|(ago, r)| (format!("-{ago}s"), r.round() as u64)),
                )
                .collect::<Vec<_>>(),
            )
        },
        svg::bars("wake time", &o.wake_hist),
        svg::bars("statement latency", &o.query_hist)
    );
    for (k, n) in &o.errors {
        let _ = write!(b, "<tr><td>{}</td><td>{n}</td></tr>", esc(k));
    }
    let _ = write!(
        b,
        "</tbody></table><h2>Awake</h2>{}<h2>Asleep</h2>{}</section>",
        actor_list(&o.awake),
        actor_list(&o.asleep)
    );
    b.push_str(&super::overview::sections(&o.fleet));
    page("kvsqlite host", &b)
}
