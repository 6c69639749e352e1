//! Cross-site request forgery guards for the inspector's forms.
//!
//! Why it exists: SameSite=Strict cookies still go with a POST from another port of the same
//! host (`localhost:8080` is the same *site* as `localhost:7420`), so a page there could post
//! the query box or sign a victim in. Every cookie-authenticated POST (and the sign-in, which
//! a forged form could make with the attacker's token) must therefore (1) come from this
//! origin — `Sec-Fetch-Site: same-origin` when the browser sends it (it decides alone: under
//! the pages' `Referrer-Policy: no-referrer` a browser sends `Origin: null` even for its own
//! forms), else an `Origin` equal to `http://` + `Host`; a POST with neither is refused — and
//! (2) carry the
//! CSRF token of its session in a form field `csrf` (for the sign-in: the token of the short
//! `kvsqlite_signin` cookie set with the form).

use axum::http::{header, HeaderMap};

use super::super::{tokens_equal, HostError};

/// The cookie that carries the sign-in form's CSRF token.
pub const SIGNIN_COOKIE: &str = "kvsqlite_signin";

/// A fresh CSRF token (64 hex digits).
pub fn new_token() -> Result<String, HostError> {
    let random = || {
        crate::actor::startup::random_token()
            .map_err(|e| HostError::Internal(format!("cannot create a CSRF token: {e}")))
    };
    Ok(random()? + &random()?)
}

/// The `Set-Cookie` value of the sign-in form's token (sent to `/signin` only, for an hour).
pub fn signin_cookie(token: &str) -> String {
    format!("{SIGNIN_COOKIE}={token}; Path=/signin; HttpOnly; SameSite=Strict; Max-Age=3600")
}

/// The 403 of a POST without its CSRF token (or with a wrong one).
pub fn missing_token() -> HostError {
    HostError::Forbidden(
        "the form's CSRF token is missing or wrong: reload the page and post it again".into(),
    )
}

/// Checks that a POST comes from this origin (see the module comment); 403 otherwise.
pub fn check_origin(headers: &HeaderMap) -> Result<(), HostError> {
    let text = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("\u{0}"));
    let site = text("sec-fetch-site");
    let origin = text(header::ORIGIN.as_str());
    let host = text(header::HOST.as_str());
    if site.is_none() && origin.is_none() {
        return Err(HostError::Forbidden(
            "a form post must say where it comes from (Origin or Sec-Fetch-Site)".into(),
        ));
    }
    if let Some(site) = site {
        if site != "same-origin" {
            return Err(HostError::Forbidden(format!(
                "a form post from another origin is refused (Sec-Fetch-Site: {site})"
            )));
        }
        return Ok(());
    }
    if let Some(origin) = origin {
        let same = host.is_some_and(|h| origin == format!("http://{h}"));
        if !same {
            return Err(HostError::Forbidden(format!(
                "a form post from another origin is refused (Origin: {origin})"
            )));
        }
    }
    Ok(())
}

/// True when the posted token equals `expected` (constant time; an empty one never matches).
pub fn token_matches(posted: &str, expected: &str) -> bool {
    !posted.is_empty() && !expected.is_empty() && tokens_equal(posted, expected)
}

/// The values of every cookie named `name` the request carries (over all its `Cookie`
/// headers), in order.
pub fn cookie_values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .filter(move |(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// True when the sign-in form's posted token equals the one of its cookie.
pub fn signin_cookie_matches(headers: &HeaderMap, posted: &str) -> bool {
    cookie_values(headers, SIGNIN_COOKIE).any(|v| token_matches(posted, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn origins() {
        let host = ("host", "127.0.0.1:7420");
        assert!(check_origin(&headers(&[host, ("origin", "http://127.0.0.1:7420")])).is_ok());
        assert!(check_origin(&headers(&[host, ("sec-fetch-site", "same-origin")])).is_ok());
        assert!(check_origin(&headers(&[host])).is_err());
        assert!(check_origin(&headers(&[host, ("origin", "http://127.0.0.1:8080")])).is_err());
        assert!(check_origin(&headers(&[host, ("origin", "null")])).is_err());
        assert!(check_origin(&headers(&[host, ("sec-fetch-site", "same-site")])).is_err());
        // A browser's own form under no-referrer: Origin null, Sec-Fetch-Site same-origin.
        assert!(check_origin(&headers(&[
            host,
            ("sec-fetch-site", "same-origin"),
            ("origin", "null")
        ]))
        .is_ok());
        assert!(check_origin(&headers(&[
            host,
            ("sec-fetch-site", "cross-site"),
            ("origin", "http://127.0.0.1:7420")
        ]))
        .is_err());
    }

    #[test]
    fn tokens() {
        assert!(!token_matches("", ""));
        assert!(token_matches("ab", "ab"));
        let h = headers(&[("cookie", "a=b; kvsqlite_signin=tok")]);
        assert!(signin_cookie_matches(&h, "tok"));
        assert!(!signin_cookie_matches(&h, "tox"));
        assert!(!signin_cookie_matches(&h, ""));
    }
}
