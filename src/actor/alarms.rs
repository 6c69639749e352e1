//! Alarms: work an actor schedules for later, fired once in effect even across crashes.
//!
//! Why it exists: an actor that sleeps cannot act later on its own. An alarm is a row of the
//! actor's own table `_kvsqlite_alarms` (written in the caller's transaction, so it commits or
//! rolls back with the caller's writes) plus an entry in a **store-wide due index** that a host
//! lists each tick to find what is due without waking anyone.
//!
//! The due index lives in [`DUE_SHARDS`] reserved namespaces (`_kvsqlite/due/NN`, the shard
//! chosen by a hash of the actor id), so a store that shards by namespace (Redis Cluster's hash
//! slots, a PostgreSQL engine sharded by actor id) spreads the index over 16 keys' owners, not
//! one. An index key is `due ms u64 BE ‖ actor id`; its value is empty.
//!
//! The store's atomic unit is one namespace, so the index entry cannot ride in the actor's own
//! commit put; instead the invariant is **the index covers the table**: every alarm row has an
//! index entry at or before its due time. [`Actor::schedule_at`] writes the index entry first
//! (one put), then the row; a crash between leaves an index entry without a row, which the host
//! wakes the actor for, finds nothing due, and deletes. Firing deletes the row in the same
//! commit as the handler's work (exactly-once effect); a failed handler is rolled back and the
//! alarm moved later by a backoff (its new index entry written before the row changes); index
//! entries are deleted only after every alarm they could cover is gone from the table.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, OptionalExtension};

use super::{Actor, ActorError, HookError};
use crate::kv::{Key, KvError, ListRequest, SharedStore};
use crate::vfs::Database;

/// Number of due-index shards.
pub const DUE_SHARDS: u32 = 16;

/// The table holding an actor's alarms.
pub const TABLE: &str = "_kvsqlite_alarms";

const CREATE: &str = "CREATE TABLE IF NOT EXISTS _kvsqlite_alarms(\
    id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, name TEXT NOT NULL, \
    payload BLOB NOT NULL, attempts INTEGER NOT NULL DEFAULT 0); \
    CREATE INDEX IF NOT EXISTS _kvsqlite_alarms_at ON _kvsqlite_alarms(at_ms)";

/// First retry delay after a failed handler; doubled per attempt up to [`MAX_BACKOFF_MS`].
pub const FIRST_BACKOFF_MS: u64 = 1_000;
/// Longest retry delay.
pub const MAX_BACKOFF_MS: u64 = 300_000;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The namespace of due-index shard `shard`.
pub fn shard_namespace(shard: u32) -> String {
    format!("_kvsqlite/due/{shard:02}")
}

/// True for a namespace kvsqlite reserves (actors may not use it).
pub fn is_reserved_namespace(actor: &str) -> bool {
    actor.starts_with("_kvsqlite/")
}

/// The shard of an actor's due-index entries (FNV-1a of its id).
pub fn shard_of(actor: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in actor.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h % DUE_SHARDS
}

/// The due-index key of an alarm of `actor` due at `at_ms`.
pub fn index_key(at_ms: u64, actor: &str) -> Key {
    let mut k = at_ms.to_be_bytes().to_vec();
    k.extend_from_slice(actor.as_bytes());
    k
}

/// `(due ms, actor id)` of a due-index key; `None` for a malformed key.
pub fn parse_index_key(k: &[u8]) -> Option<(u64, String)> {
    if k.len() < 9 {
        return None;
    }
    let at = u64::from_be_bytes(k[..8].try_into().ok()?);
    let actor = std::str::from_utf8(&k[8..]).ok()?.to_string();
    Some((at, actor))
}

/// One scheduled alarm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alarm {
    /// Its id in the actor's table.
    pub id: i64,
    /// When it is due (ms since the Unix epoch).
    pub at_ms: u64,
    /// Its name (free text of the caller's).
    pub name: String,
    /// Its payload (bytes of the caller's).
    pub payload: Vec<u8>,
    /// Failed attempts so far.
    pub attempts: u32,
}

/// What [`Actor::fire_due_alarms`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FireReport {
    /// Alarms whose handler succeeded and whose row was deleted in the same commit.
    pub fired: Vec<i64>,
    /// Alarms whose handler failed (rolled back, moved later by the backoff).
    pub failed: Vec<i64>,
    /// The earliest pending alarm afterwards.
    pub next_ms: Option<u64>,
}

/// An actor's alarm bookkeeping in memory.
#[derive(Debug, Default)]
pub struct AlarmState {
    /// True when alarms are configured (`ActorConfig::alarms`): the counters are in the
    /// metrics document.
    enabled: bool,
    /// The earliest pending alarm (ms), `u64::MAX` for none; armed by `init_alarms`.
    next: AtomicU64,
    /// Handler failures so far (each one retried later).
    retries: AtomicU64,
    /// Alarms fired.
    fired: AtomicU64,
}

impl AlarmState {
    /// A state with its next alarm armed at `next`.
    pub fn armed(enabled: bool, next: Option<u64>) -> Self {
        let s = AlarmState {
            enabled,
            ..AlarmState::default()
        };
        s.next.store(next.unwrap_or(u64::MAX), Ordering::SeqCst);
        s
    }

    /// Adds the alarm counters to a metrics document (when alarms are configured).
    pub fn fill(&self, doc: &mut crate::metrics::MetricsDoc) {
        if !self.enabled {
            return;
        }
        doc.counter(
            "alarms_fired",
            "Alarms fired (handler committed with the alarm's deletion)",
            self.fired.load(Ordering::SeqCst),
        );
        doc.counter(
            "alarm_retries",
            "Alarm handler failures, each rolled back and retried later with a backoff",
            self.retries.load(Ordering::SeqCst),
        );
    }

    fn lower(&self, at: u64) {
        self.next.fetch_min(at, Ordering::SeqCst);
    }
}

/// `init_alarms`: the earliest pending alarm, read from the database (served by the preload at
/// wake: 0 round trips).
pub fn earliest(db: &rusqlite::Connection) -> Result<Option<u64>, rusqlite::Error> {
    if !table_exists(db)? {
        return Ok(None);
    }
    let v: Option<i64> =
        db.query_row("SELECT min(at_ms) FROM _kvsqlite_alarms", [], |r| r.get(0))?;
    Ok(v.map(|v| v.max(0) as u64))
}

fn table_exists(db: &rusqlite::Connection) -> Result<bool, rusqlite::Error> {
    Ok(db
        .query_row(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = '_kvsqlite_alarms'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

fn put_index(store: &SharedStore, actor: &str, at_ms: u64) -> Result<(), KvError> {
    store.put(
        &shard_namespace(shard_of(actor)),
        vec![(index_key(at_ms, actor), Vec::new())],
    )
}

fn row_alarm(r: &rusqlite::Row<'_>) -> rusqlite::Result<Alarm> {
    Ok(Alarm {
        id: r.get(0)?,
        at_ms: r.get::<_, i64>(1)?.max(0) as u64,
        name: r.get(2)?,
        payload: r.get(3)?,
        attempts: r.get::<_, i64>(4)?.clamp(0, u32::MAX as i64) as u32,
    })
}

fn backoff_ms(attempts: u32) -> u64 {
    FIRST_BACKOFF_MS
        .saturating_mul(1u64 << attempts.min(20))
        .min(MAX_BACKOFF_MS)
}

/// A handler of due alarms: runs inside the transaction that deletes the alarm.
pub type AlarmHandler<'a> = dyn FnMut(&Database, &Alarm) -> Result<(), HookError> + 'a;

impl Actor {
    /// Schedules an alarm at `at_ms` (ms since the Unix epoch) and returns its id. The row is
    /// written in the caller's transaction when one is open (it commits or rolls back with it),
    /// else in its own commit; the due-index entry is written first, by one put in the index's
    /// namespace. Cost: 2 round trips outside a transaction, 1 plus the commit's inside one.
    pub fn schedule_at(&self, at_ms: u64, name: &str, payload: &[u8]) -> Result<i64, ActorError> {
        if at_ms > i64::MAX as u64 {
            return Err(ActorError::InvalidConfig(format!(
                "alarm time {at_ms} is out of range"
            )));
        }
        put_index(self.counting_store(), self.id(), at_ms).map_err(ActorError::Kv)?;
        let db = self.db();
        db.execute_batch(CREATE)?;
        db.execute(
            "INSERT INTO _kvsqlite_alarms(at_ms, name, payload) VALUES (?1, ?2, ?3)",
            params![at_ms as i64, name, payload],
        )?;
        let id = db.last_insert_rowid();
        self.alarm_state().lower(at_ms);
        Ok(id)
    }

    /// Schedules an alarm `after` from now (see [`Actor::schedule_at`]).
    pub fn schedule_after(
        &self,
        after: Duration,
        name: &str,
        payload: &[u8],
    ) -> Result<i64, ActorError> {
        self.schedule_at(
            now_ms().saturating_add(after.as_millis() as u64),
            name,
            payload,
        )
    }

    /// Cancels alarm `id` in the caller's transaction (or its own commit); true when it was
    /// pending. A cancel committed before the alarm fires wins: the alarm never runs. Its
    /// index entry is left to the host, which deletes it when it finds nothing due.
    pub fn cancel(&self, id: i64) -> Result<bool, ActorError> {
        let db = self.db();
        if !table_exists(db)? {
            return Ok(false);
        }
        Ok(db.execute("DELETE FROM _kvsqlite_alarms WHERE id = ?1", [id])? == 1)
    }

    /// The pending alarms, earliest first.
    pub fn alarms(&self) -> Result<Vec<Alarm>, ActorError> {
        let db = self.db();
        if !table_exists(db)? {
            return Ok(Vec::new());
        }
        let mut stmt = db.prepare(
            "SELECT id, at_ms, name, payload, attempts FROM _kvsqlite_alarms ORDER BY at_ms, id",
        )?;
        let rows = stmt.query_map([], row_alarm)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The earliest pending alarm as this instance knows it (armed at wake by `init_alarms`,
    /// lowered by [`Actor::schedule_at`], refreshed by [`Actor::fire_due_alarms`]).
    pub fn next_alarm(&self) -> Option<u64> {
        match self.alarm_state().next.load(Ordering::SeqCst) {
            u64::MAX => None,
            v => Some(v),
        }
    }

    /// Handler failures so far (each one rolled back and retried later with a backoff).
    pub fn alarm_retries(&self) -> u64 {
        self.alarm_state().retries.load(Ordering::SeqCst)
    }

    /// Alarms this instance fired.
    pub fn alarms_fired(&self) -> u64 {
        self.alarm_state().fired.load(Ordering::SeqCst)
    }

    /// Fires every alarm due at `now_ms`, earliest first, each in its own transaction: the
    /// handler's writes and the deletion of the alarm commit together (exactly-once effect).
    /// A handler that fails is rolled back; its alarm is moved to `now + backoff` (1 s doubled
    /// per attempt, at most 5 min) with a new index entry written first, and counted in
    /// [`Actor::alarm_retries`]. No transaction may be open. A store error stops the run and is
    /// returned (what committed stays committed).
    pub fn fire_due_alarms(
        &self,
        now_ms: u64,
        handler: &mut AlarmHandler<'_>,
    ) -> Result<FireReport, ActorError> {
        let db = self.db();
        let mut report = FireReport::default();
        if !db.is_autocommit() {
            return Err(ActorError::InvalidConfig(
                "fire_due_alarms needs no transaction to be open".into(),
            ));
        }
        if table_exists(db)? {
            let due: Vec<Alarm> = {
                let mut stmt = db.prepare(
                    "SELECT id, at_ms, name, payload, attempts FROM _kvsqlite_alarms \
                     WHERE at_ms <= ?1 ORDER BY at_ms, id",
                )?;
                let rows = stmt.query_map([now_ms.min(i64::MAX as u64) as i64], row_alarm)?;
                rows.collect::<Result<_, _>>()?
            };
            for alarm in due {
                db.execute_batch("BEGIN IMMEDIATE")?;
                let r =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(db, &alarm)));
                let ok = matches!(r, Ok(Ok(())));
                if ok {
                    // A handler that ended the transaction itself has its work committed
                    // already: the deletion follows in its own commit (one more round trip).
                    let ended = db.is_autocommit();
                    if ended {
                        tracing::warn!(actor = %self.id(), alarm = alarm.id, "an alarm handler ended the alarm's transaction");
                    }
                    let done = db
                        .execute("DELETE FROM _kvsqlite_alarms WHERE id = ?1", [alarm.id])
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
                    self.alarm_state().fired.fetch_add(1, Ordering::SeqCst);
                    report.fired.push(alarm.id);
                } else {
                    let message = match r {
                        Ok(Err(e)) => e.to_string(),
                        _ => "panicked".into(),
                    };
                    let _ = db.execute_batch("ROLLBACK");
                    tracing::warn!(actor = %self.id(), alarm = alarm.id, "alarm handler failed: {message}");
                    let at = now_ms.saturating_add(backoff_ms(alarm.attempts));
                    put_index(self.counting_store(), self.id(), at).map_err(ActorError::Kv)?;
                    db.execute(
                        "UPDATE _kvsqlite_alarms SET at_ms = ?1, attempts = attempts + 1 \
                         WHERE id = ?2",
                        params![at as i64, alarm.id],
                    )?;
                    self.alarm_state().retries.fetch_add(1, Ordering::SeqCst);
                    report.failed.push(alarm.id);
                }
            }
        }
        report.next_ms = earliest(db)?;
        self.alarm_state()
            .next
            .store(report.next_ms.unwrap_or(u64::MAX), Ordering::SeqCst);
        Ok(report)
    }
}

impl Actor {
    /// True when the config set an `on_alarm` hook.
    pub fn has_alarm_hook(&self) -> bool {
        self.on_alarm.is_some()
    }

    /// Runs the `on_alarm` hook on `alarm` (inside the caller's transaction); an error when no
    /// hook is set.
    pub fn call_on_alarm(&self, alarm: &Alarm) -> Result<(), HookError> {
        match &self.on_alarm {
            Some(h) => h(self, alarm),
            None => Err(format!("no on_alarm hook for the alarm named {:?}", alarm.name).into()),
        }
    }

    /// [`Actor::fire_due_alarms`] with the `on_alarm` hook of the config as the handler: each
    /// due alarm's hook runs in the transaction that deletes the alarm.
    pub fn run_alarms(&self, now_ms: u64) -> Result<FireReport, ActorError> {
        if self.on_alarm.is_none() {
            return Err(ActorError::InvalidConfig(
                "run_alarms needs Hooks::on_alarm".into(),
            ));
        }
        self.fire_due_alarms(now_ms, &mut |_, a| self.call_on_alarm(a))
    }
}

/// What one [`tick`] saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Actors with due index entries, in the order they were handled.
    pub actors: Vec<String>,
    /// Actors whose handling failed, with the error.
    pub errors: Vec<(String, String)>,
}

/// One tick of a host's alarm loop: lists every due-index shard once (one round trip each) for
/// entries at or before `now_ms`, groups them by actor, and calls `fire(actor, due_entries)`
/// for each. `fire` must wake the actor (if asleep) and call [`Actor::fire_and_clear`] while it
/// holds it, then let it sleep again if it was asleep.
pub fn tick(
    store: &SharedStore,
    now_ms: u64,
    limit: usize,
    mut fire: impl FnMut(&str, &[u64]) -> Result<(), ActorError>,
) -> Result<TickReport, KvError> {
    let mut by_actor: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for (_, at, actor) in list_due(store, now_ms, limit)? {
        by_actor.entry(actor).or_default().push(at);
    }
    let mut report = TickReport::default();
    for (actor, ats) in by_actor {
        if let Err(e) = fire(&actor, &ats) {
            tracing::warn!(actor = %actor, "alarm tick failed: {e}");
            report.errors.push((actor.clone(), e.to_string()));
        }
        report.actors.push(actor);
    }
    Ok(report)
}

impl Actor {
    /// [`Actor::fire_due_alarms`], then deletes the due-index entries `index_entries` (as
    /// [`tick`] listed them) at or before `now_ms` once no alarm is due by then any more.
    pub fn fire_and_clear(
        &self,
        now_ms: u64,
        index_entries: &[u64],
        handler: &mut AlarmHandler<'_>,
    ) -> Result<FireReport, ActorError> {
        let report = self.fire_due_alarms(now_ms, handler)?;
        if report.next_ms.is_none_or(|n| n > now_ms) {
            clear_index(self.counting_store(), self.id(), index_entries, now_ms)
                .map_err(ActorError::Kv)?;
        }
        Ok(report)
    }
}

/// The due index's entries at or before `now_ms`, shard by shard: `(shard, due ms, actor)`,
/// one list per shard (at most `limit` entries each). Malformed keys are skipped.
pub fn list_due(
    store: &SharedStore,
    now_ms: u64,
    limit: usize,
) -> Result<Vec<(u32, u64, String)>, KvError> {
    let mut out = Vec::new();
    for shard in 0..DUE_SHARDS {
        let end = now_ms.saturating_add(1).to_be_bytes().to_vec();
        let page = store.list(
            &shard_namespace(shard),
            &ListRequest::range(Vec::new(), Some(end)).with_limit(limit.max(1)),
        )?;
        for (k, _) in page.entries {
            if let Some((at, actor)) = parse_index_key(&k) {
                out.push((shard, at, actor));
            }
        }
    }
    Ok(out)
}

/// Deletes `actor`'s due-index entries at or before `up_to_ms` (call only once the actor has
/// no alarm due by then: the index must keep covering the table). One delete.
pub fn clear_index(
    store: &SharedStore,
    actor: &str,
    entries: &[u64],
    up_to_ms: u64,
) -> Result<(), KvError> {
    let keys: Vec<Key> = entries
        .iter()
        .filter(|&&at| at <= up_to_ms)
        .map(|&at| index_key(at, actor))
        .collect();
    if keys.is_empty() {
        return Ok(());
    }
    store.delete(&shard_namespace(shard_of(actor)), keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_keys_sort_by_time_and_parse_back() {
        let a = index_key(5, "b");
        let b = index_key(6, "a");
        assert!(a < b);
        assert_eq!(parse_index_key(&a), Some((5, "b".to_string())));
        assert_eq!(parse_index_key(b"short"), None);
        assert!(shard_of("x") < DUE_SHARDS);
        assert_eq!(backoff_ms(0), 1_000);
        assert_eq!(backoff_ms(3), 8_000);
        assert_eq!(backoff_ms(40), MAX_BACKOFF_MS);
    }
}
