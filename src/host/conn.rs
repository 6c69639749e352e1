//! The host's accept loop: hyper's HTTP/1 connection builder with a timer, so that every way a
//! client can hold a connection is bounded, and a shutdown that ends within a deadline.
//!
//! Why it exists: `axum::serve` runs hyper without a timer (its header timeout never applies),
//! has no connection cap and waits forever for a client that trickles its body at shutdown.
//! Here, per connection:
//!
//! - **Header timeout**: a request head must be complete within `header_timeout` from the moment
//!   the host starts waiting for it (hyper's `header_read_timeout`, which also runs while a
//!   kept-alive connection waits for its next request).
//! - **Idle timeout**: a connection with no request in progress and no byte received for
//!   `idle_timeout` is closed (checked on the connection's reads, see [`Guarded`]).
//! - **Body timeout**: enforced where the body is read (`routes::read_body`), 408.
//! - **Connection cap**: past `max_connections` open connections a new one is *refused*: it is
//!   accepted, answered `503` (`{"error":"too many connections"}`, `Retry-After: 1`,
//!   `Connection: close`) and closed, so a flood of idle sockets cannot queue real clients
//!   behind it in the kernel's backlog and every refused client learns why at once.
//! - **Shutdown**: when `shutdown` resolves the listener is closed (new connections are refused
//!   by the OS), every connection finishes its request in flight and closes; connections still
//!   open after `shutdown_deadline` are dropped. The caller then puts every actor to sleep.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};

/// The connection limits of the accept loop.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    /// A request head must arrive within this.
    pub header_timeout: Duration,
    /// A connection without a request in progress and without a byte for this long is closed.
    pub idle_timeout: Duration,
    /// Most connections open at once; past it new ones are answered 503 and closed.
    pub max_connections: usize,
    /// After the shutdown signal, connections still open after this are dropped.
    pub shutdown_deadline: Duration,
}

impl Default for ConnLimits {
    /// The defaults of `kvsqlite serve`: 10 s for headers, 5 s idle, 512 connections, 10 s to
    /// shut down.
    fn default() -> Self {
        ConnLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(5),
            max_connections: 512,
            shutdown_deadline: Duration::from_secs(10),
        }
    }
}

/// The answer to a connection over the cap (written raw: no request was read).
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 32\r\n\r\n{\"error\":\"too many connections\"}";

/// What a connection and its service share: requests in progress (the idle timeout does not
/// run while one is).
#[derive(Default)]
struct ConnState {
    busy: AtomicU64,
    /// Set once the connection was upgraded (a WebSocket): the idle timeout no longer
    /// applies (the socket's session pings instead).
    upgraded: std::sync::atomic::AtomicBool,
}

/// A TCP stream whose reads fail with `TimedOut` once no request is in progress and no byte
/// has arrived for the idle timeout.
pub struct Guarded {
    io: TcpStream,
    state: Arc<ConnState>,
    idle: Duration,
    sleep: Pin<Box<Sleep>>,
    armed: bool,
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = &mut *self;
        match Pin::new(&mut me.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                me.armed = false;
                Poll::Ready(r)
            }
            Poll::Pending => {
                if me.state.busy.load(Ordering::Acquire) > 0
                    || me.state.upgraded.load(Ordering::Acquire)
                {
                    me.armed = false;
                    return Poll::Pending;
                }
                if !me.armed {
                    me.armed = true;
                    let at = Instant::now() + me.idle;
                    me.sleep.as_mut().reset(at);
                }
                match me.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "idle connection closed",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The router as a hyper service that marks the connection busy while a request is handled.
#[derive(Clone)]
struct Service {
    inner: TowerToHyperService<Router>,
    state: Arc<ConnState>,
}

/// Decrements the busy count when the request's future ends (or is dropped).
struct BusyGuard(Arc<ConnState>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

impl hyper::service::Service<hyper::Request<Incoming>> for Service {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        self.state.busy.fetch_add(1, Ordering::AcqRel);
        let guard = BusyGuard(self.state.clone());
        let state = self.state.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            if matches!(&r, Ok(resp) if resp.status() == axum::http::StatusCode::SWITCHING_PROTOCOLS)
            {
                state.upgraded.store(true, Ordering::Release);
            }
            drop(guard);
            r
        })
    }
}

/// Serves `app` on `listener` with `limits` until `shutdown` resolves, then as described in the
/// module comment. Returns once every connection is closed or dropped: true when they all
/// finished before the deadline.
pub async fn run(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> bool {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns: JoinSet<()> = JoinSet::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let (mut tcp, _) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            conns.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    let _ = tcp.write_all(REFUSED).await;
                    let _ = tcp.shutdown().await;
                })
                .await;
            });
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let state = Arc::new(ConnState::default());
        let io = Guarded {
            io: tcp,
            state: state.clone(),
            idle: limits.idle_timeout,
            sleep: Box::pin(tokio::time::sleep(limits.idle_timeout)),
            armed: false,
        };
        let service = Service {
            inner: TowerToHyperService::new(app.clone()),
            state,
        };
        let builder = builder.clone();
        let mut stop = stop_rx.clone();
        conns.spawn(async move {
            let _permit = permit;
            // With upgrades: a WebSocket leaves the loop's connections once upgraded (the
            // host's sockets bound it, see `super::sockets`).
            let conn = builder
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stop.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let open = conns.len();
    tracing::info!("shutdown: {open} connections to finish");
    let drained = tokio::time::timeout(limits.shutdown_deadline, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "shutdown deadline of {} ms passed: dropping {} connections",
            limits.shutdown_deadline.as_millis(),
            conns.len()
        );
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
    drained.is_ok()
}
