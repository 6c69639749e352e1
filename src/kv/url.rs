//! Store URLs: how a user names a store on the command line or in `KVSQLITE_KV`.
//!
//! Why it exists: every entry point (CLI, tests, benchmarks) names its store the same way, and a
//! typo must give one clear error listing what is accepted, never a panic or a silent default.
//!
//! Accepted forms:
//! - `memory:` — an in-process store, empty at start, gone at exit.
//! - `redb:PATH` — the embedded persistent store in the file `PATH` (created with its parent
//!   directories if missing); one file holds many actors. `redb:PATH?group_commit=off` turns
//!   group commit off (one transaction and fsync per write); everything after the first `?` is
//!   options, so a path holding `?` cannot be named.
//! - `postgres://USER@HOST:PORT/DB` (or `postgresql://…`) — a PostgreSQL server.
//!
//! `--rtt MS` wraps any of them in the latency wrapper.

use std::sync::Arc;
use std::time::Duration;

use super::latency::LatencyStore;
use super::memory::MemoryStore;
use super::postgres::PostgresStore;
use super::redb_store::{RedbOptions, RedbStore};
use super::{KvError, KvLimits, SharedStore};

/// The store used when neither `--kv` nor `KVSQLITE_KV` names one.
pub const DEFAULT_STORE_URL: &str = "redb:./kvsqlite-data/kv.redb";

/// The environment variable that names the store when no URL is given explicitly.
pub const STORE_URL_ENV: &str = "KVSQLITE_KV";

/// What every URL error lists.
pub const ACCEPTED_FORMS: &str = "accepted forms: memory:, redb:PATH, postgres://USER@HOST:PORT/DB";

/// What a redb option error lists.
pub const REDB_OPTIONS: &str = "redb options: group_commit=on|off";

/// A parsed store URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreUrl {
    /// `memory:`.
    Memory,
    /// `redb:PATH[?group_commit=on|off]`: the path and its options.
    Redb(String, RedbOptions),
    /// `postgres://…`, kept whole for the PostgreSQL client.
    Postgres(String),
}

impl StoreUrl {
    /// Parses a URL; a malformed URL or unknown scheme is [`KvError::InvalidUrl`] listing the
    /// accepted forms.
    pub fn parse(url: &str) -> Result<StoreUrl, KvError> {
        let bad = |why: &str| KvError::InvalidUrl {
            url: redact_password(url),
            reason: format!("{why}; {ACCEPTED_FORMS}"),
        };
        let trimmed = url.trim();
        if trimmed.is_empty() {
            return Err(bad("the URL is empty"));
        }
        let Some((scheme, rest)) = trimmed.split_once(':') else {
            return Err(bad("no scheme (expected `scheme:`)"));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "memory" if rest.is_empty() => Ok(StoreUrl::Memory),
            "memory" => Err(bad("memory: takes nothing after the colon")),
            "redb" if rest.is_empty() => {
                Err(bad("redb: needs a file path, e.g. redb:./data/kv.redb"))
            }
            "redb" if rest.contains('\0') => Err(bad("the redb path contains a NUL character")),
            "redb" => {
                let (path, query) = match rest.split_once('?') {
                    Some((p, q)) => (p, Some(q)),
                    None => (rest, None),
                };
                if path.is_empty() {
                    return Err(bad("redb: needs a file path, e.g. redb:./data/kv.redb"));
                }
                let options = parse_redb_options(query).map_err(|why| bad(&why))?;
                Ok(StoreUrl::Redb(path.to_string(), options))
            }
            "postgres" | "postgresql" => {
                let Some(after) = rest.strip_prefix("//") else {
                    return Err(bad("postgres URLs start with postgres://"));
                };
                let host_part = after.split('/').next().unwrap_or("");
                let host = host_part.rsplit('@').next().unwrap_or("");
                if host.is_empty() {
                    return Err(bad("the postgres URL names no host"));
                }
                // `[v6addr]:port` or `host:port`; a bracketed address without a port has none.
                let port = match host.rsplit_once(']') {
                    Some((_, after)) => after.strip_prefix(':'),
                    None => host.rsplit_once(':').map(|(_, p)| p),
                };
                if let Some(port) = port {
                    if port.parse::<u16>().is_err() {
                        return Err(bad(&format!("port {port:?} is not a number 0..=65535")));
                    }
                }
                Ok(StoreUrl::Postgres(trimmed.to_string()))
            }
            other => Err(bad(&format!("unknown scheme {other:?}"))),
        }
    }
}

/// Parses the query of a redb URL (`group_commit=on|off`, also `true|false|1|0`); an unknown
/// option or value is an error naming it and listing the options.
fn parse_redb_options(query: Option<&str>) -> Result<RedbOptions, String> {
    let mut options = RedbOptions::default();
    for param in query.into_iter().flat_map(|q| q.split('&')) {
        match param.split_once('=') {
            Some(("group_commit", v)) => {
                options.group_commit = match v.to_ascii_lowercase().as_str() {
                    "on" | "true" | "1" => true,
                    "off" | "false" | "0" => false,
                    _ => {
                        return Err(format!(
                            "group_commit={v:?} is not on or off; {REDB_OPTIONS}"
                        ))
                    }
                }
            }
            _ => return Err(format!("unknown redb option {param:?}; {REDB_OPTIONS}")),
        }
    }
    Ok(options)
}

/// The URL to use: `explicit` if given, else `KVSQLITE_KV` if set and not empty, else
/// [`DEFAULT_STORE_URL`].
pub fn resolve_url(explicit: Option<&str>) -> String {
    if let Some(u) = explicit {
        return u.to_string();
    }
    match std::env::var(STORE_URL_ENV) {
        Ok(u) if !u.trim().is_empty() => u,
        _ => DEFAULT_STORE_URL.to_string(),
    }
}

/// Opens the store a URL names, with the given limits, wrapped in a latency wrapper when `rtt`
/// is given.
pub fn open_store(
    url: &str,
    limits: KvLimits,
    rtt: Option<Duration>,
) -> Result<SharedStore, KvError> {
    let store: SharedStore = match StoreUrl::parse(url)? {
        StoreUrl::Memory => Arc::new(MemoryStore::with_limits(limits)),
        StoreUrl::Redb(path, options) => Arc::new(RedbStore::open_with(path, limits, options)?),
        StoreUrl::Postgres(url) => open_postgres(&url, limits)?,
    };
    Ok(match rtt {
        Some(rtt) => Arc::new(LatencyStore::new(store, rtt)),
        None => store,
    })
}

/// Opens a PostgreSQL store (`?table=NAME` and `&pool_size=N` are read by the backend); its URL
/// errors also list the accepted forms.
fn open_postgres(url: &str, limits: KvLimits) -> Result<SharedStore, KvError> {
    match PostgresStore::connect_with_limits(url, limits) {
        Ok(store) => Ok(Arc::new(store)),
        Err(KvError::InvalidUrl { url, reason }) if !reason.contains(ACCEPTED_FORMS) => {
            Err(KvError::InvalidUrl {
                url,
                reason: format!("{reason}; {ACCEPTED_FORMS}"),
            })
        }
        Err(e) => Err(e),
    }
}

/// `url` with any password replaced by `***`, for messages: the one in the user info
/// (`scheme://user:PASSWORD@host…`) and a `password=` query parameter.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => p.to_string(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_accepted_form() {
        assert_eq!(StoreUrl::parse("memory:").unwrap(), StoreUrl::Memory);
        assert_eq!(
            StoreUrl::parse("redb:./a/b.redb").unwrap(),
            StoreUrl::Redb("./a/b.redb".into(), RedbOptions { group_commit: true })
        );
        assert_eq!(
            StoreUrl::parse("redb:./a/b.redb?group_commit=off").unwrap(),
            StoreUrl::Redb(
                "./a/b.redb".into(),
                RedbOptions {
                    group_commit: false
                }
            )
        );
        assert_eq!(
            StoreUrl::parse("redb:b?group_commit=ON").unwrap(),
            StoreUrl::Redb("b".into(), RedbOptions { group_commit: true })
        );
        assert_eq!(
            StoreUrl::parse("postgres://root@127.0.0.1:5432/test").unwrap(),
            StoreUrl::Postgres("postgres://root@127.0.0.1:5432/test".into())
        );
    }

    #[test]
    fn malformed_urls_list_the_accepted_forms() {
        for bad in [
            "",
            "   ",
            "memory",
            "memory:x",
            "redb:",
            "redb",
            "sqlite:foo.db",
            "postgres:foo",
            "postgres://",
            "postgres://u@h:notaport/db",
            "postgres://u@h:99999/db",
            "://",
            "redb:?group_commit=off",
            "redb:kv.redb?group_commit=maybe",
            "redb:kv.redb?fsync=off",
            "redb:kv.redb?",
        ] {
            match StoreUrl::parse(bad) {
                Err(KvError::InvalidUrl { url, reason }) => {
                    assert_eq!(url, bad);
                    assert!(reason.contains(ACCEPTED_FORMS), "{bad:?}: {reason}");
                }
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn passwords_never_appear_in_url_errors() {
        assert_eq!(
            redact_password("postgres://bob:s3cret@h:5432/db"),
            "postgres://bob:***@h:5432/db"
        );
        assert_eq!(
            redact_password("postgres://bob@h/db"),
            "postgres://bob@h/db"
        );
        assert_eq!(
            redact_password("postgres://bob:pw@h?sslmode=disable"),
            "postgres://bob:***@h?sslmode=disable"
        );
        assert_eq!(
            redact_password("postgres://bob@h/db?password=pw&table=t"),
            "postgres://bob@h/db?password=***&table=t"
        );
        assert_eq!(redact_password("redb:./a:b@c"), "redb:./a:b@c");
        let err = StoreUrl::parse("postgres://bob:s3cret@h:port/db").unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
        assert_eq!(
            StoreUrl::parse("postgres://u@[::1]/db").unwrap(),
            StoreUrl::Postgres("postgres://u@[::1]/db".into())
        );
        assert!(StoreUrl::parse("postgres://u@[::1]:x/db").is_err());
    }

    #[test]
    fn rtt_wraps_in_latency_and_keeps_the_backend_name() {
        let s = open_store(
            "memory:",
            KvLimits::default(),
            Some(Duration::from_millis(0)),
        )
        .unwrap();
        assert_eq!(s.backend(), "memory");
        s.put("a", vec![(b"k".to_vec(), b"v".to_vec())]).unwrap();
        assert_eq!(
            s.get("a", &[b"k".to_vec()]).unwrap(),
            vec![Some(b"v".to_vec())]
        );
    }
}
