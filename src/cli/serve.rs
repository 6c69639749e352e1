//! `kvsqlite serve`: parses the arguments, opens the store, binds the address and hands over to
//! the host (`kvsqlite::host`), which does everything else.
//!
//! At start it prints `listening on ADDR` (the real port when `--listen` asks for port 0) and,
//! when `KVSQLITE_ADMIN_TOKEN` is unset or empty, `admin token: TOKEN` (once; it is never
//! printed again). SIGINT or SIGTERM stop it gracefully: exit 0 once every actor sleeps.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use kvsqlite::actor::{migrations, ActorConfig};
use kvsqlite::host::{self, HostConfig};

use super::{GlobalArgs, Stop};

/// The environment variable holding the admin token.
pub(super) const ADMIN_TOKEN_ENV: &str = "KVSQLITE_ADMIN_TOKEN";

/// Arguments of `kvsqlite serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (port 0: any free port, printed at start).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7420")]
    listen: String,
    /// Migrations directory (NNNN_name.sql files) applied at every wake.
    #[arg(long, value_name = "DIR")]
    migrations: Option<PathBuf>,
    /// Put an actor to sleep after this many milliseconds without requests.
    #[arg(long = "idle-sleep-ms", value_name = "N", default_value_t = 30_000)]
    idle_sleep_ms: u64,
    /// Most actors awake at once; past it the least recently used sleeps first.
    #[arg(long = "max-awake", value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_awake: u64,
    /// Largest request body in bytes (larger: 413).
    #[arg(long = "max-body", value_name = "BYTES", default_value_t = 1 << 20)]
    max_body: usize,
    /// Interrupt a statement (or a batch) running longer than this (408).
    #[arg(long = "statement-timeout-ms", value_name = "N", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    statement_timeout_ms: u64,
    /// Most bytes of rows in one answer, as JSON (larger: 413); also the largest value or row
    /// SQLite makes or reads (SQLITE_LIMIT_LENGTH). At least 65536.
    #[arg(long = "max-result-bytes", value_name = "BYTES",
          default_value_t = host::DEFAULT_MAX_RESULT_BYTES,
          value_parser = parse_max_result_bytes)]
    max_result_bytes: usize,
    /// SQLite's heap limit for the whole process, in bytes (0: none): a statement that needs
    /// more fails with an error instead of the process running out of memory.
    #[arg(long = "sqlite-heap-limit", value_name = "BYTES",
          default_value_t = host::DEFAULT_SQLITE_HEAP_LIMIT)]
    sqlite_heap_limit: u64,
    /// How much history every actor keeps (`--retention`, `--retention-bytes`); compacted
    /// when an actor goes idle.
    #[command(flatten)]
    retention: super::history::RetentionArgs,
    /// The connection and timing limits of the HTTP side.
    #[command(flatten)]
    conn: ConnArgs,
    /// Alarms and WebSockets.
    #[command(flatten)]
    realtime: RealtimeArgs,
    /// Membership in a cluster of hosts on one shared store.
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// `kvsqlite serve --cluster NAME`: many hosts on one store (see `kvsqlite::host::cluster`).
#[derive(Args, Debug)]
struct ClusterArgs {
    /// Join the cluster NAME: hosts with the same name on the same shared store (postgres://,
    /// redis://, redis-cluster://) place each actor on one of them and forward requests.
    #[arg(long, value_name = "NAME")]
    cluster: Option<String>,
    /// The address other members reach this host at (HOST:PORT); default: the bound address
    /// (which must then not be 0.0.0.0 or [::]).
    #[arg(long, value_name = "ADDR", requires = "cluster")]
    advertise: Option<String>,
    /// A member whose lease was not renewed for this long is dead and its actors move
    /// (e.g. 5s, 1500ms; at least 300ms).
    #[arg(long = "member-ttl", value_name = "DURATION", default_value = "5s",
          value_parser = parse_duration, requires = "cluster")]
    member_ttl: Duration,
}

/// Parses `5s`, `1.5s`, `500ms`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else {
        return Err("expected a duration such as 5s or 500ms".into());
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| "expected a duration such as 5s or 500ms".to_string())?;
    if !(v.is_finite() && v > 0.0 && v * scale <= 86_400.0) {
        return Err("expected a positive duration of at most a day".into());
    }
    Ok(Duration::from_secs_f64(v * scale))
}

/// The store URL must name a store every member reaches: not `memory:` or `redb:`.
fn check_shared_store(url: &str) -> Result<(), String> {
    match kvsqlite::kv::url::StoreUrl::parse(url).map_err(|e| e.to_string())? {
        kvsqlite::kv::url::StoreUrl::Memory | kvsqlite::kv::url::StoreUrl::Redb(..) => Err(
            "--cluster needs a store every host shares (postgres://, redis:// or redis-cluster://); memory: and redb: belong to one process"
                .into(),
        ),
        _ => Ok(()),
    }
}

/// The alarm tick and the WebSockets' limits of `kvsqlite serve` (see
/// `kvsqlite::host::alarm_tick` and `kvsqlite::host::sockets`).
#[derive(Args, Debug)]
struct RealtimeArgs {
    /// List the alarms' due index every this many milliseconds: an alarm fires at most this
    /// long after it is due (an idle host backs off for alarms scheduled by other hosts).
    #[arg(long = "alarm-tick-ms", value_name = "N", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    alarm_tick_ms: u64,
    /// Most WebSockets (`GET /actors/{id}/connect`) open at once; past it a connect is
    /// answered 503. 0 turns connections off.
    #[arg(long = "max-sockets", value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    max_sockets: u64,
    /// Most bytes queued for one WebSocket; a receiver that falls further behind is closed
    /// with code 1008.
    #[arg(long = "socket-buffer-bytes", value_name = "BYTES", default_value_t = 256 << 10,
          value_parser = clap::value_parser!(u64).range(4096..=(1 << 30)))]
    socket_buffer_bytes: u64,
}

/// The connection limits of `kvsqlite serve` (see `kvsqlite::host::conn`).
#[derive(Args, Debug)]
struct ConnArgs {
    /// A request's headers must arrive within this many milliseconds of the host waiting for
    /// them (also while a kept-alive connection waits for its next request).
    #[arg(long = "header-timeout-ms", value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout_ms: u64,
    /// A request's body must arrive within this many milliseconds (408).
    #[arg(long = "body-timeout-ms", value_name = "N", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    body_timeout_ms: u64,
    /// Close a connection with no request in progress and no byte received for this long.
    #[arg(long = "idle-timeout-ms", value_name = "N", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout_ms: u64,
    /// Most connections open at once; past it a new one is answered 503 and closed.
    #[arg(long = "max-connections", value_name = "N", default_value_t = 512,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_connections: u64,
    /// At SIGINT/SIGTERM, connections still open after this many milliseconds are dropped
    /// (their statements interrupted); then every actor sleeps and the process exits 0.
    #[arg(
        long = "shutdown-deadline-ms",
        value_name = "N",
        default_value_t = 10_000
    )]
    shutdown_deadline_ms: u64,
}

fn parse_max_result_bytes(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("{e}"))?;
    if n < host::MIN_MAX_RESULT_BYTES {
        return Err(format!(
            "at least {} bytes (the schema must stay readable)",
            host::MIN_MAX_RESULT_BYTES
        ));
    }
    Ok(n)
}

/// Runs `kvsqlite serve`.
pub fn run(global: &GlobalArgs, args: ServeArgs) -> i32 {
    super::finish("serve", serve(global, args))
}

/// The host `args` describe, over `store`, with `actor` and `admin_token`.
fn host_config(
    args: &ServeArgs,
    store: kvsqlite::kv::SharedStore,
    actor: ActorConfig,
    admin_token: String,
) -> HostConfig {
    HostConfig {
        store,
        actor,
        admin_token,
        idle_sleep: Duration::from_millis(args.idle_sleep_ms),
        max_awake: usize::try_from(args.max_awake).unwrap_or(usize::MAX),
        max_body: args.max_body,
        statement_timeout: Duration::from_millis(args.statement_timeout_ms),
        body_timeout: Duration::from_millis(args.conn.body_timeout_ms),
        limits: host::conn::ConnLimits {
            header_timeout: Duration::from_millis(args.conn.header_timeout_ms),
            idle_timeout: Duration::from_millis(args.conn.idle_timeout_ms),
            max_connections: usize::try_from(args.conn.max_connections).unwrap_or(usize::MAX),
            shutdown_deadline: Duration::from_millis(args.conn.shutdown_deadline_ms),
        },
        max_result_bytes: args.max_result_bytes,
        sqlite_heap_limit: args.sqlite_heap_limit,
        pipelined: true,
        sockets: host::sockets::SocketLimits {
            max_sockets: usize::try_from(args.realtime.max_sockets).unwrap_or(usize::MAX),
            buffer_bytes: usize::try_from(args.realtime.socket_buffer_bytes).unwrap_or(usize::MAX),
            max_message_bytes: args.max_body,
            ..Default::default()
        },
        alarm_tick: Duration::from_millis(args.realtime.alarm_tick_ms),
    }
}

fn serve(global: &GlobalArgs, args: ServeArgs) -> Result<i32, Stop> {
    let mut actor = match &args.migrations {
        Some(dir) => ActorConfig::default().with_migrations(
            migrations::load_dir(dir).map_err(|e| format!("migrations {}: {e}", dir.display()))?,
        ),
        None => ActorConfig::default(),
    };
    actor.retention = args.retention.options();
    // Every served actor may have alarms (`POST /actors/{id}/alarms`: the host ticks) and a
    // queue (`POST /actors/{id}/queue`: the wake batch reads it).
    actor.alarms = true;
    actor.queue = true;
    if args.cluster.cluster.is_some() {
        check_shared_store(&global.url())?;
    }
    let store = global.open_store()?;
    // The store is dropped last, outside the async runtime: the PostgreSQL backend's client
    // blocks when it closes, which a runtime thread must not do.
    let store_keep = store.clone();
    let (admin_token, generated) = match std::env::var(ADMIN_TOKEN_ENV) {
        Ok(t) if !t.trim().is_empty() => {
            let t = t.trim().to_string();
            host::check_admin_token(&t).map_err(|e| {
                format!("{ADMIN_TOKEN_ENV}: {e} (unset {ADMIN_TOKEN_ENV} to get a random one)")
            })?;
            (t, false)
        }
        _ => (
            host::generate_token().map_err(|e| format!("cannot make an admin token: {e}"))?,
            true,
        ),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let outcome = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("cannot read the bound address: {e}"))?;
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening on {addr}");
            if generated {
                let _ = writeln!(out, "admin token: {admin_token}");
            }
            let _ = out.flush();
        }
        let config = host_config(&args, store, actor, admin_token);
        let cluster = match args.cluster.cluster {
            Some(name) => {
                let advertise = match args.cluster.advertise {
                    Some(a) => a,
                    None if addr.ip().is_unspecified() => {
                        return Err(format!(
                            "--cluster: listening on {addr}, so give --advertise HOST:PORT (the \
                             address other members reach this host at)"
                        )
                        .into())
                    }
                    None => addr.to_string(),
                };
                Some(host::cluster::ClusterConfig {
                    name,
                    advertise,
                    ttl: args.cluster.member_ttl,
                })
            }
            None => None,
        };
        host::serve_with(listener, config, cluster, shutdown_signal())
            .await
            .map_err(|e| format!("the server failed: {e}"))?;
        Ok(0)
    });
    drop(runtime);
    drop(store_keep);
    outcome
}

/// Resolves at the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight, then every actor sleeps");
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    /// `HostConfig::new` promises the defaults of `kvsqlite serve`: the two are compared field
    /// by field, so that a changed default shows here.
    #[test]
    fn host_config_new_is_what_serve_runs_without_options() {
        let store: kvsqlite::kv::SharedStore =
            std::sync::Arc::new(kvsqlite::kv::memory::MemoryStore::new());
        let args = Cli::try_parse_from(["serve"]).unwrap().serve;
        let cli = host_config(&args, store.clone(), ActorConfig::default(), "t".repeat(16));
        let lib = HostConfig::new(store, "t".repeat(16));
        assert_eq!(cli.admin_token, lib.admin_token);
        assert_eq!(cli.idle_sleep, lib.idle_sleep);
        assert_eq!(cli.max_awake, lib.max_awake);
        assert_eq!(cli.max_body, lib.max_body);
        assert_eq!(cli.statement_timeout, lib.statement_timeout);
        assert_eq!(cli.body_timeout, lib.body_timeout);
        assert_eq!(format!("{:?}", cli.limits), format!("{:?}", lib.limits));
        assert_eq!(cli.max_result_bytes, lib.max_result_bytes);
        assert_eq!(cli.sqlite_heap_limit, lib.sqlite_heap_limit);
        assert_eq!(cli.pipelined, lib.pipelined);
        assert_eq!(format!("{:?}", cli.sockets), format!("{:?}", lib.sockets));
        assert_eq!(cli.alarm_tick, lib.alarm_tick);
    }
}
