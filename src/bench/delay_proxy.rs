//! A loopback TCP proxy that delays every chunk it forwards and counts round trips at the TCP
//! level (benchmarks only).
//!
//! Why it exists: the claim that a 128-entry put or a mixed read batch costs one round trip to
//! PostgreSQL should be checked on the wire, not only by the KV layer's own counter. Put between
//! a client and a server, the proxy counts **turns**: a turn starts when the client sends data on
//! a connection after the proxy last saw data from the server on it (or as the connection's first
//! data). A client that sends a whole request and waits for the answer makes one turn per
//! request, however many TCP segments or protocol messages it takes; a client that waits for an
//! answer before sending the next part makes more. The count does not depend on the machine's
//! speed, so tests can assert it exactly. The added `delay` (per direction, so an exchange costs
//! at least `2 × delay` more) turns those turns into wall time the way a remote server would.
//!
//! Threads, not tasks: each connection gets a reader and a writer thread per direction; the
//! reader counts and stamps each chunk with `now + delay`, the writer sleeps until the stamp and
//! forwards it, so order is kept and chunks read back to back stay back to back. It is meant for
//! a handful of connections (a benchmark's pool), not for load.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ops::Sub;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How long the proxy waits for the upstream server to accept a connection.
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes read at most at once from either side.
const CHUNK_BYTES: usize = 64 * 1024;

/// What the proxy has seen so far, over all its connections. Plain data: subtract two snapshots
/// to get what happened in between.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyCounters {
    /// Client connections accepted (each forwarded to a new upstream connection).
    pub connections: u64,
    /// Client connections whose upstream connection failed (closed at once).
    pub failed_connections: u64,
    /// Round trips: client→server transmissions that follow server→client data on the same
    /// connection, or open it.
    pub turns: u64,
    /// Bytes forwarded from clients to the server.
    pub bytes_to_server: u64,
    /// Bytes forwarded from the server to clients.
    pub bytes_to_client: u64,
}

impl Sub for ProxyCounters {
    type Output = ProxyCounters;
    /// Saturating difference, so snapshots taken in the wrong order cannot panic.
    fn sub(self, o: ProxyCounters) -> ProxyCounters {
        ProxyCounters {
            connections: self.connections.saturating_sub(o.connections),
            failed_connections: self.failed_connections.saturating_sub(o.failed_connections),
            turns: self.turns.saturating_sub(o.turns),
            bytes_to_server: self.bytes_to_server.saturating_sub(o.bytes_to_server),
            bytes_to_client: self.bytes_to_client.saturating_sub(o.bytes_to_client),
        }
    }
}

/// Counters and shutdown state shared by the accept thread and every connection.
struct Shared {
    upstream: SocketAddr,
    delay: Duration,
    stop: AtomicBool,
    connections: AtomicU64,
    failed_connections: AtomicU64,
    turns: AtomicU64,
    bytes_to_server: AtomicU64,
    bytes_to_client: AtomicU64,
    /// Both sockets of every connection, to close them when the proxy is dropped.
    sockets: Mutex<Vec<TcpStream>>,
}

/// A running proxy on `127.0.0.1:<some free port>`. Dropping it stops accepting and closes every
/// connection it forwards.
pub struct DelayProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl DelayProxy {
    /// Starts a proxy on a free loopback port forwarding to `upstream`, delaying each chunk by
    /// `delay` in each direction (`Duration::ZERO`: forwarded at once). Connections to
    /// `upstream` are made when clients connect, so a server that is down shows up as a client
    /// connection closed at once (counted in [`ProxyCounters::failed_connections`]).
    ///
    /// Errors: the loopback listener cannot be bound.
    pub fn start(upstream: SocketAddr, delay: Duration) -> io::Result<DelayProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            delay,
            stop: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            failed_connections: AtomicU64::new(0),
            turns: AtomicU64::new(0),
            bytes_to_server: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
            sockets: Mutex::new(Vec::new()),
        });
        let accept = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("delay-proxy-accept".into())
                .spawn(move || accept_loop(listener, shared))?
        };
        Ok(DelayProxy {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// The address clients connect to (`127.0.0.1:PORT`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server the proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// The delay added to each chunk in each direction.
    pub fn delay(&self) -> Duration {
        self.shared.delay
    }

    /// A copy of the counters. A chunk is counted when the proxy reads it, before it is
    /// forwarded, so once a client has received an answer every turn that led to it is counted.
    pub fn counters(&self) -> ProxyCounters {
        let s = &self.shared;
        ProxyCounters {
            connections: s.connections.load(Ordering::SeqCst),
            failed_connections: s.failed_connections.load(Ordering::SeqCst),
            turns: s.turns.load(Ordering::SeqCst),
            bytes_to_server: s.bytes_to_server.load(Ordering::SeqCst),
            bytes_to_client: s.bytes_to_client.load(Ordering::SeqCst),
        }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept thread, which then sees `stop`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        for s in self.shared.sockets.lock().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let upstream = match TcpStream::connect_timeout(&shared.upstream, UPSTREAM_CONNECT_TIMEOUT)
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(upstream = %shared.upstream, error = %e, "delay proxy: upstream connect failed");
                shared.failed_connections.fetch_add(1, Ordering::SeqCst);
                let _ = client.shutdown(Shutdown::Both);
                continue;
            }
        };
        if let Err(e) = start_connection(client, upstream, &shared) {
            tracing::warn!(error = %e, "delay proxy: cannot start a connection");
            shared.failed_connections.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Which side sent the last data the proxy saw on one connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Last {
    Nothing,
    Client,
    Server,
}

/// The direction a pump forwards.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToServer,
    ToClient,
}

fn start_connection(
    client: TcpStream,
    upstream: TcpStream,
    shared: &Arc<Shared>,
) -> io::Result<()> {
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    {
        let mut sockets = shared.sockets.lock();
        sockets.push(client.try_clone()?);
        sockets.push(upstream.try_clone()?);
    }
    let last = Arc::new(Mutex::new(Last::Nothing));
    let pumps = [
        (
            client.try_clone()?,
            upstream.try_clone()?,
            Direction::ToServer,
        ),
        (upstream, client, Direction::ToClient),
    ];
    for (from, to, direction) in pumps {
        let (shared, last) = (Arc::clone(shared), Arc::clone(&last));
        std::thread::Builder::new()
            .name("delay-proxy-pump".into())
            .spawn(move || pump(from, to, direction, &shared, &last))?;
    }
    Ok(())
}

/// Reads from `from` until it closes, counting each chunk and forwarding it to `to` after the
/// delay (through a writer thread, so reading goes on while earlier chunks wait). When `from`
/// closes, `to`'s write side is shut down once everything read was forwarded; when writing fails,
/// both sockets are closed.
fn pump(
    mut from: TcpStream,
    to: TcpStream,
    direction: Direction,
    shared: &Shared,
    last: &Mutex<Last>,
) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = {
        let mut to = match to.try_clone() {
            Ok(t) => t,
            Err(_) => {
                let _ = from.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
        };
        std::thread::Builder::new()
            .name("delay-proxy-write".into())
            .spawn(move || {
                for (due, bytes) in rx {
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    if to.write_all(&bytes).is_err() {
                        let _ = to.shutdown(Shutdown::Both);
                        return false;
                    }
                }
                let _ = to.shutdown(Shutdown::Write);
                true
            })
    };
    let Ok(writer) = writer else {
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
        return;
    };
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        {
            let mut last = last.lock();
            match direction {
                Direction::ToServer => {
                    if *last != Last::Client {
                        shared.turns.fetch_add(1, Ordering::SeqCst);
                    }
                    *last = Last::Client;
                    shared.bytes_to_server.fetch_add(n as u64, Ordering::SeqCst);
                }
                Direction::ToClient => {
                    *last = Last::Server;
                    shared.bytes_to_client.fetch_add(n as u64, Ordering::SeqCst);
                }
            }
        }
        if tx
            .send((Instant::now() + shared.delay, buf[..n].to_vec()))
            .is_err()
        {
            break;
        }
    }
    drop(tx);
    if !writer.join().unwrap_or(false) {
        let _ = from.shutdown(Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that answers every request (a length-prefixed message) with the same bytes,
    /// after reading it whole.
    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                std::thread::spawn(move || loop {
                    let mut len = [0u8; 4];
                    if conn.read_exact(&mut len).is_err() {
                        return;
                    }
                    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
                    if conn.read_exact(&mut body).is_err() {
                        return;
                    }
                    if conn
                        .write_all(&len)
                        .and_then(|_| conn.write_all(&body))
                        .is_err()
                    {
                        return;
                    }
                });
            }
        });
        addr
    }

    /// Sends `body` as one request (written in `pieces` writes, without waiting in between)
    /// and reads the answer.
    fn exchange(conn: &mut TcpStream, body: &[u8], pieces: usize) -> Vec<u8> {
        let mut msg = (body.len() as u32).to_be_bytes().to_vec();
        msg.extend_from_slice(body);
        for part in msg.chunks(msg.len().div_ceil(pieces)) {
            conn.write_all(part).unwrap();
        }
        let mut len = [0u8; 4];
        conn.read_exact(&mut len).unwrap();
        let mut got = vec![0u8; u32::from_be_bytes(len) as usize];
        conn.read_exact(&mut got).unwrap();
        got
    }

    #[test]
    fn bytes_pass_intact_and_each_request_is_one_turn() {
        let proxy = DelayProxy::start(echo_server(), Duration::from_millis(1)).unwrap();
        let mut conn = TcpStream::connect(proxy.addr()).unwrap();
        // Every byte value, and a body larger than one chunk, split into many writes.
        let all: Vec<u8> = (0..=255u8).collect();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        assert_eq!(exchange(&mut conn, &all, 1), all);
        assert_eq!(exchange(&mut conn, &big, 5), big);
        assert_eq!(exchange(&mut conn, b"x", 1), b"x");
        let c = proxy.counters();
        assert_eq!(c.turns, 3, "{c:?}");
        assert_eq!(c.connections, 1);
        assert_eq!(c.failed_connections, 0);
        let sent = (4 + 256 + 4 + 300_000 + 4 + 1) as u64;
        assert_eq!(c.bytes_to_server, sent);
        assert_eq!(c.bytes_to_client, sent);

        // A second connection counts its own turns.
        let mut other = TcpStream::connect(proxy.addr()).unwrap();
        assert_eq!(exchange(&mut other, b"hello", 2), b"hello");
        let d = proxy.counters() - c;
        assert_eq!((d.connections, d.turns), (1, 1), "{d:?}");
    }

    #[test]
    fn a_closed_upstream_closes_the_client_and_is_counted() {
        // A port that was free a moment ago: nothing listens there.
        let dead = TcpListener::bind(("127.0.0.1", 0))
            .unwrap()
            .local_addr()
            .unwrap();
        let proxy = DelayProxy::start(dead, Duration::ZERO).unwrap();
        let mut conn = TcpStream::connect(proxy.addr()).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 1];
        // Closed without data (or reset): never a byte.
        assert!(matches!(conn.read(&mut buf), Ok(0) | Err(_)));
        let c = proxy.counters();
        assert_eq!((c.connections, c.failed_connections, c.turns), (1, 1, 0));
    }

    #[test]
    fn dropping_the_proxy_closes_its_connections() {
        let proxy = DelayProxy::start(echo_server(), Duration::ZERO).unwrap();
        let mut conn = TcpStream::connect(proxy.addr()).unwrap();
        assert_eq!(exchange(&mut conn, b"ping", 1), b"ping");
        drop(proxy);
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 1];
        assert!(matches!(conn.read(&mut buf), Ok(0) | Err(_)));
    }
}
