//! The host's open WebSockets, kept while their actors sleep (hibernation), and the delivery
//! of the actors' pushes to them — bounded in count and in buffered bytes.
//!
//! Why it exists: a socket belongs to the host, not to the awake actor, so an idle actor sleeps
//! with its sockets open and costs nothing but the socket itself. The hub holds, per actor, its
//! sockets (id, topics, an outgoing queue); the registry hands it each request's committed
//! pushes after the output gate ([`Hub::deliver`]), and after a wake the ids of the connection
//! records the actor restored, to drop the records whose socket is gone ([`Hub::stale`]).
//!
//! **Bounds.** At most [`SocketLimits::max_sockets`] sockets are open (the next connect is
//! answered 503 before the upgrade). Each socket's outgoing queue holds at most
//! [`SocketLimits::buffer_bytes`]; a push that would go past it closes the socket with code
//! [`SLOW_CLOSE_CODE`] (the receiver is too slow) instead of buffering more. So the host's
//! buffered bytes stay below `max_sockets × buffer_bytes`, whatever the clients do; the figure
//! is `kvsqlite_ws_buffered_bytes`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};

use super::prom::HostMetrics;
use crate::actor::connections::Push;

/// The close code of a socket whose receiver fell behind by more than the buffer (1008,
/// "policy violation").
pub const SLOW_CLOSE_CODE: u16 = 1008;

/// The close code sent to every socket at shutdown (1001, "going away").
pub const SHUTDOWN_CLOSE_CODE: u16 = 1001;

/// Close code for the sockets of an actor this host no longer serves (a cluster moved it to
/// another member): 1012, "service restart" — reconnect, and a non-owner answers 421 naming the
/// owner.
pub const MOVED_CLOSE_CODE: u16 = 1012;

/// The close code of a socket that answered no ping for two ping intervals (1001).
pub const DEAD_CLOSE_CODE: u16 = 1001;

/// Limits of the host's sockets (`kvsqlite serve --max-sockets`, `--socket-buffer-bytes`).
#[derive(Clone, Debug)]
pub struct SocketLimits {
    /// Most WebSockets open at once across the host.
    pub max_sockets: usize,
    /// Most bytes queued for one socket before it is closed as too slow.
    pub buffer_bytes: usize,
    /// Largest message a client may send, in bytes.
    pub max_message_bytes: usize,
    /// A ping is sent this often; a socket that sent nothing for two intervals is closed.
    pub ping_every: Duration,
}

impl Default for SocketLimits {
    /// 10,000 sockets, 256 KiB buffered per socket, 64 KiB messages, a ping every 30 s.
    fn default() -> Self {
        SocketLimits {
            max_sockets: 10_000,
            buffer_bytes: 256 << 10,
            max_message_bytes: 64 << 10,
            ping_every: Duration::from_secs(30),
        }
    }
}

/// One open socket as the hub knows it.
pub struct Socket {
    /// Its connection id.
    pub id: String,
    /// Its actor.
    pub actor: String,
    /// The topics it subscribed to.
    pub topics: Vec<String>,
    tx: mpsc::UnboundedSender<String>,
    queued: AtomicUsize,
    /// Set once the socket must close (too slow, or shutdown); the session then ends.
    pub closing: AtomicBool,
    /// The close code to send when `closing`.
    pub close_code: AtomicU64,
    /// Wakes the session when `closing` is set.
    pub kill: Notify,
}

/// The host's sockets.
pub struct Hub {
    limits: SocketLimits,
    metrics: Arc<HostMetrics>,
    actors: Mutex<HashMap<String, HashMap<String, Arc<Socket>>>>,
    reserved: AtomicU64,
}

/// A place among `max_sockets`, held by a socket (or a connect in progress) until dropped.
pub struct Reservation {
    hub: Arc<Hub>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.hub.reserved.fetch_sub(1, Ordering::AcqRel);
        self.hub
            .metrics
            .families
            .realtime
            .ws_open
            .store(self.hub.reserved.load(Ordering::Acquire), Ordering::Relaxed);
    }
}

impl Hub {
    /// A hub with `limits`, counting into `metrics`.
    pub fn new(limits: SocketLimits, metrics: Arc<HostMetrics>) -> Self {
        Hub {
            limits,
            metrics,
            actors: Mutex::new(HashMap::new()),
            reserved: AtomicU64::new(0),
        }
    }

    /// The limits.
    pub fn limits(&self) -> &SocketLimits {
        &self.limits
    }

    /// Takes a place among `max_sockets`; `None` (counted as refused) when none is free.
    pub fn reserve(self: &Arc<Self>) -> Option<Reservation> {
        let max = self.limits.max_sockets as u64;
        let rt = &self.metrics.families.realtime;
        let mut cur = self.reserved.load(Ordering::Acquire);
        loop {
            if cur >= max {
                rt.ws_refused.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            match self
                .reserved
                .compare_exchange(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    rt.ws_open.store(cur + 1, Ordering::Relaxed);
                    return Some(Reservation { hub: self.clone() });
                }
                Err(c) => cur = c,
            }
        }
    }

    /// Registers socket `id` of `actor`; returns it and the receiving end of its queue.
    pub fn register(
        &self,
        actor: &str,
        id: &str,
        topics: Vec<String>,
    ) -> (Arc<Socket>, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let sock = Arc::new(Socket {
            id: id.to_string(),
            actor: actor.to_string(),
            topics,
            tx,
            queued: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            close_code: AtomicU64::new(0),
            kill: Notify::new(),
        });
        self.actors
            .lock()
            .entry(actor.to_string())
            .or_default()
            .insert(id.to_string(), sock.clone());
        self.metrics
            .families
            .realtime
            .ws_opened
            .fetch_add(1, Ordering::Relaxed);
        (sock, rx)
    }

    /// Forgets `sock` (its session ended); what was still queued for it is no longer counted.
    pub fn remove(&self, sock: &Socket, rx: &mut mpsc::UnboundedReceiver<String>) {
        {
            let mut actors = self.actors.lock();
            if let Some(m) = actors.get_mut(&sock.actor) {
                m.remove(&sock.id);
                if m.is_empty() {
                    actors.remove(&sock.actor);
                }
            }
        }
        rx.close();
        while let Ok(text) = rx.try_recv() {
            self.sent(sock, text.len());
        }
    }

    /// Counts `bytes` of `sock`'s queue as sent (or discarded).
    pub fn sent(&self, sock: &Socket, bytes: usize) {
        sock.queued.fetch_sub(bytes, Ordering::AcqRel);
        self.metrics
            .families
            .realtime
            .ws_buffered_bytes
            .fetch_sub(bytes as u64, Ordering::AcqRel);
    }

    /// Queues `text` for `sock`; a socket whose queue would pass the buffer is closed as too
    /// slow (the text is not queued). False when the text was not queued.
    pub fn queue(&self, sock: &Socket, text: String) -> bool {
        if sock.closing.load(Ordering::Acquire) {
            return false;
        }
        let len = text.len();
        let rt = &self.metrics.families.realtime;
        let before = sock.queued.fetch_add(len, Ordering::AcqRel);
        if before + len > self.limits.buffer_bytes {
            sock.queued.fetch_sub(len, Ordering::AcqRel);
            rt.ws_closed_slow.fetch_add(1, Ordering::Relaxed);
            self.close(sock, SLOW_CLOSE_CODE);
            return false;
        }
        rt.ws_buffered_bytes.fetch_add(len as u64, Ordering::AcqRel);
        if sock.tx.send(text).is_err() {
            self.sent(sock, len);
            return false;
        }
        true
    }

    /// Asks `sock`'s session to close with `code`.
    pub fn close(&self, sock: &Socket, code: u16) {
        if !sock.closing.swap(true, Ordering::AcqRel) {
            sock.close_code.store(code as u64, Ordering::Release);
            sock.kill.notify_one();
        }
    }

    /// Closes every socket (shutdown).
    pub fn close_all(&self) {
        let all: Vec<Arc<Socket>> = self
            .actors
            .lock()
            .values()
            .flat_map(|m| m.values().cloned())
            .collect();
        for s in all {
            self.close(&s, SHUTDOWN_CLOSE_CODE);
        }
    }

    /// The actors with at least one socket open here (awake or asleep).
    pub fn actors_with_sockets(&self) -> Vec<String> {
        self.actors
            .lock()
            .iter()
            .filter(|(_, m)| !m.is_empty())
            .map(|(a, _)| a.clone())
            .collect()
    }

    /// Closes every socket of `actor` with `code`.
    pub fn close_actor(&self, actor: &str, code: u16) {
        let socks: Vec<Arc<Socket>> = self
            .actors
            .lock()
            .get(actor)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        for s in socks {
            self.close(&s, code);
        }
    }

    /// Delivers actor `actor`'s committed and durable pushes to its sockets, in order.
    pub fn deliver(&self, actor: &str, pushes: Vec<Push>) {
        if pushes.is_empty() {
            return;
        }
        let socks: Vec<Arc<Socket>> = self
            .actors
            .lock()
            .get(actor)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        let rt = &self.metrics.families.realtime;
        for p in pushes {
            let mut reached = false;
            for s in socks.iter().filter(|s| p.reaches(&s.id, &s.topics)) {
                reached = true;
                if self.queue(s, p.body.clone()) {
                    rt.ws_pushes_delivered.fetch_add(1, Ordering::Relaxed);
                } else {
                    rt.ws_pushes_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            if !reached {
                rt.ws_pushes_unrouted.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts pushes that will never be delivered (their commit did not become durable).
    pub fn discard(&self, pushes: Vec<Push>) {
        self.metrics
            .families
            .realtime
            .ws_pushes_dropped
            .fetch_add(pushes.len() as u64, Ordering::Relaxed);
    }

    /// Of the connection ids `restored` (what a wake of `actor` restored), those with no
    /// socket open here: their records are stale (the socket closed while the actor slept, or
    /// the host restarted).
    pub fn stale(&self, actor: &str, restored: &[String]) -> Vec<String> {
        let actors = self.actors.lock();
        let live = actors.get(actor);
        restored
            .iter()
            .filter(|id| !live.is_some_and(|m| m.contains_key(*id)))
            .cloned()
            .collect()
    }

    /// Sockets open now, and bytes queued for them.
    pub fn accounting(&self) -> (u64, u64) {
        let rt = &self.metrics.families.realtime;
        (
            self.reserved.load(Ordering::Acquire),
            rt.ws_buffered_bytes.load(Ordering::Acquire),
        )
    }
}
