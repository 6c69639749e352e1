//! The durable queue: messages put under an actor's queue prefix without waking it, handled
//! once in effect when it is awake.
//!
//! Why it exists: a sleeping actor cannot receive work; waking it for every message costs a
//! wake each. [`enqueue`] is **one put** under the actor's prefix `0x01 "q"` (no precondition,
//! no read, no wake). A sleeping actor finds its messages in its wake batch (phase
//! `init_queue`, `ActorConfig::queue`: 0 extra round trips); an awake one lists them with
//! [`Actor::poll_queue`] (one round trip).
//!
//! **Order.** A message's key is `0x01 "q" ‖ µs u64 BE ‖ 8 random bytes`, the microseconds
//! taken from the wall clock and made strictly increasing within a process: messages enqueued
//! by one process are handled in the order they were enqueued; messages from different
//! processes in wall-clock order (near-simultaneous ones from different hosts may swap by their
//! clocks' skew). The random suffix keeps keys from different processes distinct.
//!
//! **Exactly-once effect.** [`Actor::drain_queue`] runs the handler for each message in its own
//! transaction, which also inserts the message's key into the actor's table
//! `_kvsqlite_queue_done`: the acknowledgement commits with the handler's writes. Then the
//! handled messages are deleted from the KV (one fenced delete) and their done rows removed
//! (one commit). A crash anywhere leaves either the message unhandled (delivered again) or
//! its done row (skipped at the next wake and deleted then). The done row stands in for a
//! deletion of the KV key inside the commit's put, which the VFS's commit path does not carry.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use rusqlite::OptionalExtension;

use super::{Actor, ActorError, HookError};
use crate::kv::{Key, ListRequest, ReadOp, ReadResult, SharedStore, Value};
use crate::vfs::Database;

/// Prefix of an actor's queued messages.
pub fn prefix() -> Key {
    b"\x01q".to_vec()
}

/// Most key and value bytes of messages the wake batch reads (the rest: [`Actor::poll_queue`]).
pub const WAKE_BYTES: usize = 256 << 10;

/// Most messages one [`Actor::poll_queue`] lists.
pub const POLL_LIMIT: usize = 1024;

const CREATE: &str =
    "CREATE TABLE IF NOT EXISTS _kvsqlite_queue_done(seq BLOB PRIMARY KEY) WITHOUT ROWID";

static LAST_US: AtomicU64 = AtomicU64::new(0);

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A new message key (see the module documentation for its order).
pub fn next_key() -> Result<Key, ActorError> {
    let now = now_us();
    let prev = LAST_US
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| {
            Some(now.max(l.saturating_add(1)))
        })
        .unwrap_or(now);
    let us = now.max(prev.saturating_add(1));
    let rnd = super::startup::random_bytes().map_err(ActorError::Random)?;
    let mut k = prefix();
    k.extend_from_slice(&us.to_be_bytes());
    k.extend_from_slice(&rnd[..8]);
    Ok(k)
}

/// The enqueue time (µs since the Unix epoch) of a message key.
pub fn key_time_us(k: &[u8]) -> Option<u64> {
    let rest = k.strip_prefix(prefix().as_slice())?;
    Some(u64::from_be_bytes(rest.get(..8)?.try_into().ok()?))
}

/// Puts `body` on `actor`'s queue: one put, no read, the actor not woken. Returns the
/// message's key. The body must fit the store's value limit (else the store's limit error,
/// nothing written).
pub fn enqueue(store: &SharedStore, actor: &str, body: &[u8]) -> Result<Key, ActorError> {
    crate::kv::check_actor_id(actor).map_err(ActorError::InvalidActor)?;
    let key = next_key()?;
    store
        .put(actor, vec![(key.clone(), body.to_vec())])
        .map_err(ActorError::Kv)?;
    Ok(key)
}

/// One queued message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Its key (its place in the order).
    pub key: Key,
    /// Its body.
    pub body: Vec<u8>,
}

/// What [`Actor::drain_queue`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Messages handled (committed with their acknowledgement), in order.
    pub handled: usize,
    /// The handler's error on the message that stopped the drain (it stays first in line).
    pub failed: Option<String>,
}

/// An actor's queue in memory.
#[derive(Debug, Default)]
pub struct QueueState {
    enabled: bool,
    inner: Mutex<Inner>,
    handled: AtomicU64,
    failures: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    pending: BTreeMap<Key, Value>,
    /// Keys handled (done rows present) whose KV entries are still to delete.
    to_delete: BTreeSet<Key>,
    /// True when messages may exist that the last listing did not reach.
    more: bool,
}

impl QueueState {
    /// A queue without the feature configured.
    pub fn off() -> Self {
        QueueState::default()
    }

    /// Adds the queue gauges and counters to a metrics document (when configured).
    pub fn fill(&self, doc: &mut crate::metrics::MetricsDoc) {
        if !self.enabled {
            return;
        }
        let inner = self.inner.lock();
        doc.gauge_int(
            "queue_depth",
            "Queued messages this instance knows of and has not handled",
            inner.pending.len() as i64,
        );
        let age = inner
            .pending
            .keys()
            .next()
            .and_then(|k| key_time_us(k))
            .map(|t| now_us().saturating_sub(t) / 1000)
            .unwrap_or(0);
        doc.gauge_int(
            "queue_oldest_age_ms",
            "Age of the oldest unhandled message, in milliseconds (0 when none)",
            age as i64,
        );
        doc.counter(
            "queue_handled",
            "Messages handled (committed with their acknowledgement)",
            self.handled.load(Ordering::SeqCst),
        );
        doc.counter(
            "queue_handler_failures",
            "Handler failures (rolled back; the message stays first in line)",
            self.failures.load(Ordering::SeqCst),
        );
    }
}

/// The keys of handled messages whose done rows remain (what `init_queue` reads).
pub fn done_keys(db: &rusqlite::Connection) -> Result<BTreeSet<Key>, rusqlite::Error> {
    let exists = db
        .query_row(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = '_kvsqlite_queue_done'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !exists {
        return Ok(BTreeSet::new());
    }
    let mut st = db.prepare("SELECT seq FROM _kvsqlite_queue_done")?;
    let rows = st.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
    rows.collect()
}

/// The wake batch's read of the queue.
pub(super) fn wake_op() -> ReadOp {
    ReadOp::List(ListRequest::prefix(prefix()).with_max_bytes(WAKE_BYTES))
}

/// `init_queue`: the messages of the wake batch, less those already handled (their done rows
/// are read from the preload: 0 round trips).
pub(super) fn init(db: &Database, res: &ReadResult) -> Result<QueueState, ActorError> {
    let ReadResult::List(page) = res else {
        return Err(ActorError::Corrupt(
            "the wake batch answered out of shape".into(),
        ));
    };
    let done = done_keys(db)?;
    let mut inner = Inner {
        more: !page.is_complete(),
        ..Inner::default()
    };
    for (k, v) in &page.entries {
        if done.contains(k) {
            inner.to_delete.insert(k.clone());
        } else {
            inner.pending.insert(k.clone(), v.clone());
        }
    }
    // Done rows whose messages are gone already: removed at the next drain.
    inner
        .to_delete
        .extend(done.into_iter().filter(|k| !inner.pending.contains_key(k)));
    Ok(QueueState {
        enabled: true,
        inner: Mutex::new(inner),
        ..QueueState::default()
    })
}

/// A message handler: runs inside the transaction that acknowledges the message.
pub type MessageHandler<'a> = dyn FnMut(&Database, &Message) -> Result<(), HookError> + 'a;

impl Actor {
    /// Puts `body` on actor `actor`'s queue without waking it (see [`enqueue`]).
    pub fn enqueue(store: &SharedStore, actor: &str, body: &[u8]) -> Result<Key, ActorError> {
        enqueue(store, actor, body)
    }

    /// Messages this instance knows of and has not handled.
    pub fn queued(&self) -> usize {
        self.queue.inner.lock().pending.len()
    }

    /// Lists the queue (one round trip; up to [`POLL_LIMIT`] messages) and adds what is new.
    /// Returns how many messages are pending now.
    pub fn poll_queue(&self) -> Result<usize, ActorError> {
        let page = self
            .counting_store()
            .list(
                self.id(),
                &ListRequest::prefix(prefix()).with_limit(POLL_LIMIT),
            )
            .map_err(ActorError::Kv)?;
        let mut inner = self.queue.inner.lock();
        inner.more = !page.is_complete();
        for (k, v) in page.entries {
            if !inner.to_delete.contains(&k) {
                inner.pending.insert(k, v);
            }
        }
        Ok(inner.pending.len())
    }

    /// Handles the pending messages in order, each in its own transaction with its
    /// acknowledgement (exactly-once effect); stops at the first handler failure (rolled back,
    /// counted, the message kept first in line). Then deletes the handled messages from the KV
    /// (one fenced delete) and their done rows (one commit). When the wake's listing was cut
    /// short, polls for the rest first. No transaction may be open.
    pub fn drain_queue(&self, handler: &mut MessageHandler<'_>) -> Result<DrainReport, ActorError> {
        let db = self.db();
        if !db.is_autocommit() {
            return Err(ActorError::InvalidConfig(
                "drain_queue needs no transaction to be open".into(),
            ));
        }
        if self.queue.inner.lock().more {
            self.poll_queue()?;
        }
        let mut report = DrainReport::default();
        loop {
            let next = self
                .queue
                .inner
                .lock()
                .pending
                .iter()
                .next()
                .map(|(k, v)| Message {
                    key: k.clone(),
                    body: v.clone(),
                });
            let Some(msg) = next else { break };
            db.execute_batch(CREATE)?;
            db.execute_batch("BEGIN IMMEDIATE")?;
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(db, &msg)));
            match r {
                Ok(Ok(())) => {
                    // A handler that ended the transaction itself has its work committed
                    // already: the acknowledgement follows in its own commit.
                    let ended = db.is_autocommit();
                    if ended {
                        tracing::warn!(actor = %self.id(), "a queue handler ended the message's transaction");
                    }
                    let done = db
                        .execute(
                            "INSERT INTO _kvsqlite_queue_done(seq) VALUES (?1)",
                            [&msg.key],
                        )
                        .and_then(|_| {
                            if ended {
                                Ok(())
                            } else {
                                db.execute_batch("COMMIT")
                            }
                        });
                    if let Err(e) = done {
                        let _ = db.execute_batch("ROLLBACK");
                        return Err(e.into());
                    }
                    let mut inner = self.queue.inner.lock();
                    inner.pending.remove(&msg.key);
                    inner.to_delete.insert(msg.key);
                    self.queue.handled.fetch_add(1, Ordering::SeqCst);
                    report.handled += 1;
                }
                other => {
                    let _ = db.execute_batch("ROLLBACK");
                    let m = match other {
                        Ok(Err(e)) => e.to_string(),
                        _ => "panicked".into(),
                    };
                    tracing::warn!(actor = %self.id(), "queue handler failed: {m}");
                    self.queue.failures.fetch_add(1, Ordering::SeqCst);
                    report.failed = Some(m);
                    break;
                }
            }
        }
        self.flush_acks()?;
        Ok(report)
    }

    /// Deletes the handled messages from the KV, then their done rows.
    fn flush_acks(&self) -> Result<(), ActorError> {
        let keys: Vec<Key> = self.queue.inner.lock().to_delete.iter().cloned().collect();
        if keys.is_empty() {
            return Ok(());
        }
        let db = self.db();
        let max = self.counting_store().limits().max_write_entries.max(2) - 1;
        for chunk in keys.chunks(max) {
            db.write_entries(Vec::new(), chunk.to_vec())?;
        }
        db.execute_batch(CREATE)?;
        db.execute_batch("BEGIN IMMEDIATE")?;
        let r = (|| {
            let mut st = db.prepare("DELETE FROM _kvsqlite_queue_done WHERE seq = ?1")?;
            for k in &keys {
                st.execute([k])?;
            }
            db.execute_batch("COMMIT")
        })();
        if let Err(e) = r {
            let _ = db.execute_batch("ROLLBACK");
            return Err(e.into());
        }
        let mut inner = self.queue.inner.lock();
        for k in &keys {
            inner.to_delete.remove(k);
        }
        Ok(())
    }
}

impl Actor {
    /// True when the config set an `on_message` hook.
    pub fn has_message_hook(&self) -> bool {
        self.on_message.is_some()
    }

    /// Runs the `on_message` hook on `message` (inside the caller's transaction); an error
    /// when no hook is set.
    pub fn call_on_message(&self, message: &Message) -> Result<(), HookError> {
        match &self.on_message {
            Some(h) => h(self, message),
            None => Err("no on_message hook".into()),
        }
    }

    /// [`Actor::drain_queue`] with the `on_message` hook of the config as the handler: each
    /// message's hook runs in the transaction that acknowledges it.
    pub fn run_queue(&self) -> Result<DrainReport, ActorError> {
        if self.on_message.is_none() {
            return Err(ActorError::InvalidConfig(
                "run_queue needs Hooks::on_message".into(),
            ));
        }
        self.drain_queue(&mut |_, m| self.call_on_message(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_increase_within_a_process_and_carry_their_time() {
        let a = next_key().unwrap();
        let b = next_key().unwrap();
        assert!(a < b);
        assert_eq!(a.len(), 2 + 16);
        assert!(key_time_us(&a).unwrap() < key_time_us(&b).unwrap());
        assert_eq!(key_time_us(b"\x01x"), None);
    }
}
