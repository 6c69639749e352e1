//! The inspector's HTML pages as a browser without JavaScript meets them: a client that shows
//! redirects, answers as (status, headers, body), forms with their CSRF field, and sign-in.
//!
//! Include it beside `serve.rs`: `#[path = "common/serve.rs"] mod serve;` and
//! `#[path = "common/pages.rs"] mod pages;`.
#![allow(dead_code)]

use std::time::Duration;

use crate::serve::Server;

/// A client that does not follow redirects (to see `Set-Cookie` on the 303).
pub fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// (status, headers as (name, value), body).
pub type Answer = (u16, Vec<(String, String)>, String);

/// The answer of one exchange; panics when there was none.
pub fn answer(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
    let resp = r.expect("HTTP exchange");
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    (
        status,
        headers,
        resp.into_body().read_to_string().unwrap_or_default(),
    )
}

/// The first header `name` of an answer (case-insensitive).
pub fn header<'a>(a: &'a Answer, name: &str) -> Option<&'a str> {
    a.1.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// `s` percent-encoded for a form or a query string (every byte but ASCII letters and digits).
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The value of the first hidden `name` field of a page.
pub fn hidden(html: &str, name: &str) -> String {
    let pat = format!("name=\"{name}\" value=\"");
    let at = html
        .find(&pat)
        .unwrap_or_else(|| panic!("no {name} field in {html}"));
    let rest = &html[at + pat.len()..];
    rest[..rest.find('"').expect("end of the value")].to_string()
}

/// GET `path` with `cookie`.
pub fn get_cookie(s: &Server, path: &str, cookie: &str) -> Answer {
    answer(
        client()
            .get(format!("{}{path}", s.base))
            .header("Cookie", cookie)
            .call(),
    )
}

/// POSTs a form from `origin` with `cookie` (a browser on the host's own page sends
/// `Origin: s.base`).
pub fn post_form(s: &Server, path: &str, origin: &str, cookie: Option<&str>, form: &str) -> Answer {
    let mut req = client()
        .post(format!("{}{path}", s.base))
        .header("Origin", origin)
        .header("Content-Type", "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        req = req.header("Cookie", c);
    }
    answer(req.send(form))
}

/// POSTs the sign-in form `form` as a browser that was shown the form would: with the form's
/// CSRF token and its cookie.
pub fn signin_post(s: &Server, form: &str) -> Answer {
    let page = answer(client().get(format!("{}/", s.base)).call());
    assert_eq!(page.0, 401);
    let set = header(&page, "set-cookie").expect("the sign-in cookie");
    let cookie = set.split(';').next().unwrap_or_default().trim().to_string();
    let csrf = hidden(&page.2, "csrf");
    post_form(
        s,
        "/signin",
        &s.base,
        Some(&cookie),
        &format!("{form}&csrf={}", enc(&csrf)),
    )
}

/// Signs in with `token` (and `actor`): the session cookie as `name=value`.
pub fn sign_in(s: &Server, token: &str, actor: &str) -> String {
    let a = signin_post(s, &format!("token={}&actor={}", enc(token), enc(actor)));
    assert_eq!(a.0, 303, "sign-in answered {}: {}", a.0, a.2);
    let set = header(&a, "set-cookie").expect("Set-Cookie").to_string();
    set.split(';').next().unwrap_or_default().trim().to_string()
}
