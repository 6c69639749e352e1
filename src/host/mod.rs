//! `kvsqlite serve`: an HTTP host for many actors, with wake on demand, idle and LRU sleep, a
//! token-protected inspector and Prometheus metrics.
//!
//! Why it exists: actors are woken by requests and put to sleep when idle in production; this
//! is the process that does it for real. The modules: [`routes`] (the HTTP surface and its
//! statuses, with the token rules), [`registry`] (the actors' lifecycle), [`sql`] (JSON ⇄
//! SQLite), [`prom`] (the host's aggregated metrics), [`inspector`] (the HTML pages). The CLI (`src/cli/serve.rs`) only parses
//! arguments and calls [`serve`].

pub mod inspector;
pub mod prom;
pub mod registry;
pub mod routes;
pub mod sql;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::actor::ActorConfig;
use crate::kv::SharedStore;

/// Why a request failed; each maps to one HTTP status (see [`HostError::status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostError {
    /// Malformed request (400).
    BadRequest(String),
    /// SQLite refused the SQL (400, with SQLite's message).
    Sql(String),
    /// Missing or wrong token (401).
    Unauthorized,
    /// No such route or actor (404).
    NotFound(String),
    /// The statement ran past the timeout and was interrupted (408).
    Timeout(String),
    /// The body is over `--max-body` (413).
    TooLarge(String),
    /// The store is not answering, or the actor moved (503).
    Unavailable(String),
    /// A bug or a corrupt record (500).
    Internal(String),
}

impl HostError {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            HostError::BadRequest(_) | HostError::Sql(_) => 400,
            HostError::Unauthorized => 401,
            HostError::NotFound(_) => 404,
            HostError::Timeout(_) => 408,
            HostError::TooLarge(_) => 413,
            HostError::Unavailable(_) => 503,
            HostError::Internal(_) => 500,
        }
    }

    /// The kind counted in `kvsqlite_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            HostError::BadRequest(_) => "bad_request",
            HostError::Sql(_) => "sql",
            HostError::Unauthorized => "unauthorized",
            HostError::NotFound(_) => "not_found",
            HostError::Timeout(_) => "timeout",
            HostError::TooLarge(_) => "too_large",
            HostError::Unavailable(_) => "unavailable",
            HostError::Internal(_) => "internal",
        }
    }

    /// The message of the `{"error": …}` body.
    pub fn message(&self) -> String {
        match self {
            HostError::Unauthorized => {
                "missing or wrong token: send Authorization: Bearer <token>".into()
            }
            HostError::BadRequest(m)
            | HostError::Sql(m)
            | HostError::NotFound(m)
            | HostError::Timeout(m)
            | HostError::TooLarge(m)
            | HostError::Unavailable(m)
            | HostError::Internal(m) => m.clone(),
        }
    }
}

/// How the host runs.
pub struct HostConfig {
    /// The store every actor lives in.
    pub store: SharedStore,
    /// How actors start (migrations). Its `guard` is replaced by the host's
    /// ([`crate::actor::guard::GuardConfig::host`]).
    pub actor: ActorConfig,
    /// The admin token.
    pub admin_token: String,
    /// An actor idle this long is put to sleep.
    pub idle_sleep: Duration,
    /// Most actors awake at once.
    pub max_awake: usize,
    /// Largest request body in bytes.
    pub max_body: usize,
    /// A statement (or a batch) running longer is interrupted.
    pub statement_timeout: Duration,
    /// Most bytes of rows in one answer; also every actor connection's `SQLITE_LIMIT_LENGTH`
    /// (the largest value or row; at least [`MIN_MAX_RESULT_BYTES`]). See
    /// [`DEFAULT_MAX_RESULT_BYTES`].
    pub max_result_bytes: usize,
    /// SQLite's hard heap limit for the whole process, in bytes (0: none). See
    /// [`DEFAULT_SQLITE_HEAP_LIMIT`].
    pub sqlite_heap_limit: u64,
}

/// The default of `--max-result-bytes`: 8 MiB.
pub const DEFAULT_MAX_RESULT_BYTES: usize = 8 << 20;

/// The smallest `--max-result-bytes`: 64 KiB (it is also the largest value or row a connection
/// reads, and the schema must stay readable).
pub const MIN_MAX_RESULT_BYTES: usize = 64 << 10;

/// The default of `--sqlite-heap-limit`: 1 GiB for SQLite's own memory (page caches, sorts,
/// temporary tables, which the host keeps in memory) across every awake actor.
pub const DEFAULT_SQLITE_HEAP_LIMIT: u64 = 1 << 30;

/// Longest actor id, in bytes.
pub const MAX_ACTOR_ID: usize = 128;

/// Checks an actor id: 1 to 128 bytes of `A-Z a-z 0-9 . _ ~ -` (URL-safe without escaping).
pub fn check_actor_id(id: &str) -> Result<(), HostError> {
    if id.is_empty() || id.len() > MAX_ACTOR_ID {
        return Err(HostError::BadRequest(format!(
            "invalid actor id: it must be 1 to {MAX_ACTOR_ID} bytes (it is {})",
            id.len()
        )));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '-')))
    {
        return Err(HostError::BadRequest(format!(
            "invalid actor id: character {c:?} is not allowed (allowed: A-Z a-z 0-9 . _ ~ -)"
        )));
    }
    Ok(())
}

/// Compares two tokens in time that does not depend on where they differ (nor on their
/// lengths): their SHA-256 digests are compared byte by byte without an early exit.
pub fn tokens_equal(a: &str, b: &str) -> bool {
    let (da, db) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    da.iter()
        .zip(db.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// A fresh admin token: 32 hex digits from the same random source as actor tokens.
pub fn generate_token() -> String {
    crate::actor::startup::random_token()
}

/// Serves on `listener` until `shutdown` resolves; then stops accepting, lets requests in
/// flight finish, puts every actor to sleep and returns. The caller should keep a handle on the
/// store and drop it outside the runtime (a blocking backend such as PostgreSQL's must not be
/// closed on a runtime thread).
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: HostConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let metrics = Arc::new(prom::HostMetrics::default());
    let mut actor = config.actor;
    actor.guard =
        crate::actor::guard::GuardConfig::host(config.max_result_bytes.max(MIN_MAX_RESULT_BYTES));
    crate::actor::guard::set_heap_limit(config.sqlite_heap_limit);
    let registry = Arc::new(registry::Registry::new(
        config.store.clone(),
        actor,
        config.max_awake,
        metrics.clone(),
    ));
    let state = routes::AppState {
        registry: registry.clone(),
        metrics,
        admin_token: Arc::new(config.admin_token),
        statement_timeout: config.statement_timeout,
        max_body: config.max_body,
        max_result_bytes: config.max_result_bytes,
        sessions: Arc::new(inspector::Sessions::default()),
    };
    let idle = config.idle_sleep;
    let sleeper = {
        let registry = registry.clone();
        tokio::spawn(async move {
            let tick = (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
            loop {
                tokio::time::sleep(tick).await;
                registry.sleep_idle(idle).await;
            }
        })
    };
    let sampler = {
        let metrics = state.metrics.clone();
        tokio::spawn(async move {
            loop {
                metrics.sample_kv();
                tokio::time::sleep(prom::KV_SAMPLE_EVERY).await;
            }
        })
    };
    let app = routes::router(state);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    sleeper.abort();
    let _ = sleeper.await;
    sampler.abort();
    let _ = sampler.await;
    registry.sleep_all().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actor_ids_and_tokens() {
        assert!(check_actor_id("a-b_c.d~9").is_ok());
        assert!(check_actor_id("").is_err());
        assert!(check_actor_id("a/b").is_err());
        assert!(check_actor_id(&"x".repeat(129)).is_err());
        assert!(check_actor_id(&"x".repeat(128)).is_ok());
        assert!(tokens_equal("abc", "abc"));
        assert!(!tokens_equal("abc", "abd"));
        assert!(!tokens_equal("abc", "abcd"));
    }
}
