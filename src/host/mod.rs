//! `kvsqlite serve`: an HTTP host for many actors, with wake on demand, idle and LRU sleep, a
//! token-protected inspector and Prometheus metrics.
//!
//! Why it exists: actors are woken by requests and put to sleep when idle in production; this
//! is the process that does it for real. The modules: [`routes`] (the HTTP surface and its
//! statuses), [`history_routes`] (history, restore and fork over HTTP), [`auth`] (who a
//! request is, from its headers alone), [`conn`] (the accept loop: timeouts, connection cap,
//! shutdown deadline), [`registry`] (the actors' lifecycle), [`sql`]
//! (JSON ⇄ SQLite), [`prom`] (the host's aggregated metrics), [`prom_families`] (what the store
//! and the VFS do, host-wide), [`top`] (the costliest actors lately), [`inspector`] (the HTML
//! pages), [`sockets`] and [`connect_route`] (WebSockets kept while their actors sleep),
//! [`cluster`] (many hosts on one store).
//! The CLI (`src/cli/serve.rs`) only parses arguments and calls [`serve`].

pub mod alarm_tick;
pub mod auth;
pub mod cluster;
pub mod conn;
pub mod connect_route;
pub mod history_routes;
pub mod inspector;
pub mod prom;
pub mod prom_families;
pub mod queue_route;
pub mod registry;
pub mod routes;
pub mod sockets;
pub mod sql;
pub mod top;

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
    /// A cookie-authenticated form posted from another origin or without its CSRF token (403).
    Forbidden(String),
    /// No such route or actor (404).
    NotFound(String),
    /// The request conflicts with what exists: a fork onto an existing actor (409).
    Conflict(String),
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
            HostError::Forbidden(_) => 403,
            HostError::NotFound(_) => 404,
            HostError::Conflict(_) => 409,
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
            HostError::Forbidden(_) => "forbidden",
            HostError::NotFound(_) => "not_found",
            HostError::Conflict(_) => "conflict",
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
            | HostError::Forbidden(m)
            | HostError::Sql(m)
            | HostError::NotFound(m)
            | HostError::Conflict(m)
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
    /// A statement (or a batch) running longer is interrupted; a request waiting longer for
    /// its actor (behind others) is answered 503.
    pub statement_timeout: Duration,
    /// A request body must arrive within this (408).
    pub body_timeout: Duration,
    /// Header and idle timeouts, the connection cap and the shutdown deadline.
    pub limits: conn::ConnLimits,
    /// Most bytes of rows in one answer; also every actor connection's `SQLITE_LIMIT_LENGTH`
    /// (the largest value or row; at least [`MIN_MAX_RESULT_BYTES`]). See
    /// [`DEFAULT_MAX_RESULT_BYTES`].
    pub max_result_bytes: usize,
    /// SQLite's hard heap limit for the whole process, in bytes (0: none). See
    /// [`DEFAULT_SQLITE_HEAP_LIMIT`].
    pub sqlite_heap_limit: u64,
    /// Pipelined commits (`kvsqlite serve`: on): a commit returns once its put is queued and
    /// the output gate holds every answer until the commits it saw are durable. Off, each
    /// commit waits for its put; per-request metrics then count a request's own put (with
    /// pipelining a put still in flight at the answer is counted at the actor's next request).
    pub pipelined: bool,
    /// The WebSockets' limits (`--max-sockets 0` turns connections off: no connect route
    /// works and the actors have no `restore_connections` phase).
    pub sockets: sockets::SocketLimits,
    /// How often the alarm loop ticks (`--alarm-tick-ms`; default [`alarm_tick::TICK`]).
    pub alarm_tick: Duration,
}

impl HostConfig {
    /// A host of `store` with `admin_token` and the defaults of `kvsqlite serve`: default
    /// actors (no migrations), 30 s idle before sleep, 1,024 actors awake, 1 MiB bodies,
    /// 30 s statement and body timeouts, [`conn::ConnLimits::default`],
    /// [`DEFAULT_MAX_RESULT_BYTES`], [`DEFAULT_SQLITE_HEAP_LIMIT`], pipelined commits,
    /// [`sockets::SocketLimits::default`] but for messages up to the body limit (1 MiB), and the
    /// alarm loop's [`alarm_tick::TICK`]. Change
    /// fields with struct update syntax: `HostConfig { max_awake: 10, ..HostConfig::new(store,
    /// token) }`. The token is checked when the host is served ([`MIN_ADMIN_TOKEN`]).
    pub fn new(store: SharedStore, admin_token: impl Into<String>) -> HostConfig {
        HostConfig {
            store,
            actor: ActorConfig::default(),
            admin_token: admin_token.into(),
            idle_sleep: Duration::from_secs(30),
            max_awake: 1024,
            max_body: 1 << 20,
            statement_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            limits: conn::ConnLimits::default(),
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
            sqlite_heap_limit: DEFAULT_SQLITE_HEAP_LIMIT,
            pipelined: true,
            sockets: sockets::SocketLimits {
                max_message_bytes: 1 << 20,
                ..sockets::SocketLimits::default()
            },
            alarm_tick: alarm_tick::TICK,
        }
    }
}

/// Shortest admin token accepted, in bytes.
pub const MIN_ADMIN_TOKEN: usize = 16;

/// Checks an admin token given by the operator: at least [`MIN_ADMIN_TOKEN`] bytes.
pub fn check_admin_token(token: &str) -> Result<(), String> {
    if token.len() < MIN_ADMIN_TOKEN {
        return Err(format!(
            "the admin token is {} bytes; it must be at least {MIN_ADMIN_TOKEN}",
            token.len()
        ));
    }
    Ok(())
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

/// Checks an actor id: 1 to 128 bytes of `A-Z a-z 0-9 . _ ~ -` (URL-safe without escaping),
/// and neither `.` nor `..` (path segments that clients and proxies rewrite).
pub fn check_actor_id(id: &str) -> Result<(), HostError> {
    if id == "." || id == ".." {
        return Err(HostError::BadRequest(format!(
            "invalid actor id: {id:?} is a path segment, not a name"
        )));
    }
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

/// A fresh admin token: 32 hex digits from the same random source as actor tokens (an error
/// when the OS's random source cannot be read).
pub fn generate_token() -> Result<String, crate::actor::startup::RandomError> {
    crate::actor::startup::random_token()
}

/// Serves on `listener` until `shutdown` resolves; then stops accepting, lets requests in
/// flight finish (until the shutdown deadline: what still runs then is dropped and its
/// statements interrupted), puts every actor to sleep and returns. The caller should keep a handle on the
/// store and drop it outside the runtime (a blocking backend such as PostgreSQL's must not be
/// closed on a runtime thread).
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: HostConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, config, None, shutdown).await
}

/// [`serve`], as a member of a cluster when `cluster` is given (see [`cluster`]): an admin
/// token under [`MIN_ADMIN_TOKEN`] bytes is refused first (`InvalidInput`, the message of
/// [`check_admin_token`]), before anything listens or joins; the host
/// joins before it serves (an error when it cannot), forwards requests for actors other
/// members own, writes only while it holds its lease, and at `shutdown` leaves cleanly before
/// it stops accepting connections. The store must be one every member shares.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    config: HostConfig,
    cluster: Option<cluster::ClusterConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    check_admin_token(&config.admin_token).map_err(|m| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{m} (kvsqlite::host::generate_token makes one)"),
        )
    })?;
    let metrics = Arc::new(prom::HostMetrics::default());
    let cluster = match cluster {
        Some(cc) => Some(
            cluster::Cluster::join(
                cc,
                config.store.clone(),
                metrics.families.cluster.clone(),
                cluster::forward::ForwardLimits {
                    max_body: config.max_body,
                    body_timeout: config.body_timeout,
                    answer_timeout: config.statement_timeout + config.body_timeout,
                },
            )
            .await
            .map_err(std::io::Error::other)?,
        ),
        None => None,
    };
    let mut actor = config.actor;
    actor.open.pipelined = config.pipelined;
    actor.guard =
        crate::actor::guard::GuardConfig::host(config.max_result_bytes.max(MIN_MAX_RESULT_BYTES));
    crate::actor::guard::set_heap_limit(config.sqlite_heap_limit);
    let actor_alarms = actor.alarms;
    actor.connections = config.sockets.max_sockets > 0;
    // Every KV call of the host goes through the families' counting and timing wrapper.
    let store = metrics.families.wrap_store(config.store.clone());
    // In a cluster, every write of an actor needs this host's lease (checked, not sent).
    let store = match &cluster {
        Some(c) => cluster::gate::GatedStore::wrap(store, c.lease()),
        None => store,
    };
    let registry = Arc::new(
        registry::Registry::new(store, actor, config.max_awake, metrics.clone())
            .with_lock_wait(config.statement_timeout)
            .with_sockets(config.sockets),
    );
    let heartbeat = cluster.as_ref().map(|c| {
        let weak = Arc::downgrade(c);
        registry.set_owner_filter(Box::new(move |id| {
            weak.upgrade().is_none_or(|c| c.owns(id))
        }));
        c.start(&registry)
    });
    let state = routes::AppState {
        registry: registry.clone(),
        metrics,
        admin_token: Arc::new(config.admin_token),
        statement_timeout: config.statement_timeout,
        max_body: config.max_body,
        body_timeout: config.body_timeout,
        max_result_bytes: config.max_result_bytes,
        sessions: Arc::new(inspector::Sessions::default()),
        tokens: Arc::new(auth::TokenMemory::default()),
        cluster: cluster.clone(),
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
    let hour_sampler = {
        let metrics = state.metrics.clone();
        tokio::spawn(async move {
            loop {
                let awake = metrics
                    .actors_awake
                    .load(std::sync::atomic::Ordering::Relaxed);
                metrics.families.sample_hour(awake);
                tokio::time::sleep(prom_families::HOUR_EVERY).await;
            }
        })
    };
    // The alarm tick runs when the actors use alarms (`ActorConfig::alarms`).
    let alarm_loop = actor_alarms.then(|| {
        let tick = config.alarm_tick.max(Duration::from_millis(1));
        tokio::spawn(alarm_tick::run(
            registry.clone(),
            state.statement_timeout,
            tick,
        ))
    });
    let app = routes::router(state);
    // WebSockets are not the accept loop's connections: told to close (1001) when shutdown
    // starts (in a cluster, before the host leaves, so their clients can reconnect elsewhere).
    let hub = registry.hub().clone();
    let (app, shutdown) = match cluster.clone() {
        Some(c) => {
            let app = app
                .layer(axum::middleware::from_fn_with_state(
                    c.clone(),
                    cluster::forward::middleware,
                ))
                .layer(axum::middleware::map_response(routes::security_headers));
            let registry = registry.clone();
            let shutdown: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> =
                Box::pin(async move {
                    shutdown.await;
                    hub.close_all();
                    c.leave(&registry).await;
                });
            (app, shutdown)
        }
        None => {
            let shutdown: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> =
                Box::pin(async move {
                    shutdown.await;
                    hub.close_all();
                });
            (app, shutdown)
        }
    };
    let drained = conn::run(listener, app, config.limits, shutdown).await;
    if let Some(h) = heartbeat {
        h.abort();
        let _ = h.await;
    }
    sleeper.abort();
    let _ = sleeper.await;
    sampler.abort();
    let _ = sampler.await;
    hour_sampler.abort();
    let _ = hour_sampler.await;
    if let Some(a) = alarm_loop {
        a.abort();
        let _ = a.await;
    }
    if !drained {
        // Whatever still runs on an actor (a request dropped at the deadline) is stopped, so
        // that every actor can be put to sleep now.
        registry.interrupt_all();
    }
    registry.sleep_all().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actor_ids_and_tokens() {
        assert!(check_actor_id("a-b_c.d~9").is_ok());
        assert!(check_actor_id("").is_err());
        assert!(check_actor_id("a/b").is_err());
        assert!(check_actor_id(".").is_err());
        assert!(check_actor_id("..").is_err());
        assert!(check_actor_id("...").is_ok());
        assert!(check_admin_token("0123456789abcde").is_err());
        assert!(check_admin_token("0123456789abcdef").is_ok());
        assert!(check_actor_id(&"x".repeat(129)).is_err());
        assert!(check_actor_id(&"x".repeat(128)).is_ok());
        assert!(tokens_equal("abc", "abc"));
        assert!(!tokens_equal("abc", "abd"));
        assert!(!tokens_equal("abc", "abcd"));
    }

    fn config(admin_token: &str) -> HostConfig {
        HostConfig {
            idle_sleep: Duration::from_secs(60),
            max_awake: 10,
            sqlite_heap_limit: 0,
            pipelined: false,
            ..HostConfig::new(Arc::new(crate::kv::memory::MemoryStore::new()), admin_token)
        }
    }

    #[test]
    fn the_library_refuses_a_short_admin_token_as_the_cli_does() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            // Never shuts down by itself: only the refusal returns.
            let e = serve(listener, config("0123456789abcde"), std::future::pending())
                .await
                .unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
            assert_eq!(
                e.to_string(),
                "the admin token is 15 bytes; it must be at least 16 \
                 (kvsqlite::host::generate_token makes one)"
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let e = serve(listener, config(""), std::future::pending())
                .await
                .unwrap_err();
            assert_eq!(
                e.to_string(),
                "the admin token is 0 bytes; it must be at least 16 \
                 (kvsqlite::host::generate_token makes one)"
            );
            // Sixteen bytes serve (until told to stop).
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            serve(listener, config("0123456789abcdef"), async {})
                .await
                .unwrap();
        });
    }
}
