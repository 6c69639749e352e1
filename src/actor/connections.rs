//! Connections: the records of an actor's long-lived client connections, and the pushes its SQL
//! sends them, delivered only once the commit that made them is durable.
//!
//! Why it exists: a host keeps an actor's sockets while the actor sleeps (hibernation), so what
//! the actor knows of them — each connection's id, the parameters it connected with, its topics
//! and a per-connection state — must outlive the awake instance. They are rows of the actor's
//! table `_kvsqlite_connections`, written in the caller's transaction, and read back at every
//! wake by the `restore_connections` phase from the preload (0 round trips).
//!
//! **Pushes.** SQL pushes with `kvsqlite_send(target, json)` (or [`Actor::send`]): `target` is
//! a connection id, a topic the connection subscribed to, or `*` for every connection of the
//! actor. The function inserts the push into the connection's private temporary table
//! `temp._kvsqlite_outbox`, in memory and inside the caller's transaction: a rollback (of the
//! transaction, a savepoint or the failed statement) takes the push back with it, exactly as
//! it takes back the statement's writes. [`Actor::take_pushes`] hands out what committed; the
//! caller delivers it only after waiting for the commits' durability (the host's output gate,
//! or [`Actor::drain_pushes`] in the library), so a push never announces a write that a
//! crash could still lose. `kvsqlite_conn_id()` is the id of the connection whose message is
//! being handled ([`Actor::with_connection`]), `NULL` otherwise.

use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::functions::FunctionFlags;
use rusqlite::{params, OptionalExtension};
use serde_json::Value;

use super::{Actor, ActorError};

/// The table holding an actor's connection records.
pub const TABLE: &str = "_kvsqlite_connections";

const CREATE: &str = "CREATE TABLE IF NOT EXISTS _kvsqlite_connections(\
    id TEXT PRIMARY KEY, params TEXT NOT NULL, topics TEXT NOT NULL, \
    state TEXT NOT NULL DEFAULT '{}', opened_ms INTEGER NOT NULL) WITHOUT ROWID";

const OUTBOX: &str = "CREATE TEMP TABLE IF NOT EXISTS _kvsqlite_outbox(\
    seq INTEGER PRIMARY KEY, target TEXT NOT NULL, body TEXT NOT NULL)";

/// Largest push body, in bytes (a longer one is an SQL error of `kvsqlite_send`).
pub const MAX_PUSH_BYTES: usize = 64 << 10;

/// Most pushes one transaction may make (more is an SQL error of `kvsqlite_send`): the outbox
/// lives in memory until the commit.
pub const MAX_PUSHES_PER_TRANSACTION: i64 = 1024;

/// The target that reaches every connection of the actor.
pub const ALL: &str = "*";

/// One connection as the actor's table holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionRecord {
    /// Its id (the host makes it: `c` and 16 hex digits).
    pub id: String,
    /// The parameters it connected with, as a JSON object (text).
    pub params: String,
    /// The topics it subscribed to.
    pub topics: Vec<String>,
    /// Its state, as JSON (text; `{}` at first).
    pub state: String,
    /// When it opened (ms since the Unix epoch).
    pub opened_ms: u64,
}

/// One committed push: where it goes and what it says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Push {
    /// A connection id, a topic, or [`ALL`].
    pub target: String,
    /// The JSON text sent.
    pub body: String,
}

impl Push {
    /// True when this push reaches a connection with id `id` and topics `topics`.
    pub fn reaches(&self, id: &str, topics: &[String]) -> bool {
        self.target == ALL || self.target == id || topics.contains(&self.target)
    }
}

/// An actor's connection bookkeeping in memory.
#[derive(Debug, Default)]
pub struct ConnState {
    /// True when connections are configured (`ActorConfig::connections`).
    enabled: bool,
    /// The records the wake restored.
    restored: Vec<ConnectionRecord>,
    /// The connection whose message is being handled (`kvsqlite_conn_id()`).
    current: Arc<Mutex<Option<String>>>,
}

impl ConnState {
    /// Without the feature configured.
    pub fn off() -> Self {
        ConnState::default()
    }
}

/// The statements kvsqlite runs for its own bookkeeping here start with the query log's
/// internal mark: recorded, but not counted as the actor's statements.
macro_rules! internal {
    ($sql:literal) => {
        concat!("/* kvsqlite inspector */ ", $sql)
    };
}

fn table_exists(db: &rusqlite::Connection) -> Result<bool, rusqlite::Error> {
    Ok(db
        .query_row(
            internal!("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = '_kvsqlite_connections'"),
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

fn row_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<ConnectionRecord> {
    let topics: String = r.get(2)?;
    Ok(ConnectionRecord {
        id: r.get(0)?,
        params: r.get(1)?,
        topics: serde_json::from_str(&topics).unwrap_or_default(),
        state: r.get(3)?,
        opened_ms: r.get::<_, i64>(4)?.max(0) as u64,
    })
}

/// Creates the connection records' table if it does not exist (so that SQL written before the
/// first connection, such as a host's message handler, can name it).
pub fn create_table(db: &rusqlite::Connection) -> Result<(), rusqlite::Error> {
    db.execute_batch(CREATE)
}

/// Every connection record of the database, by id (none when the table does not exist). At
/// wake this is `restore_connections`, served by the preload.
pub fn records(db: &rusqlite::Connection) -> Result<Vec<ConnectionRecord>, rusqlite::Error> {
    if !table_exists(db)? {
        return Ok(Vec::new());
    }
    let mut st = db.prepare(internal!(
        "SELECT id, params, topics, state, opened_ms FROM _kvsqlite_connections ORDER BY id"
    ))?;
    let rows = st.query_map([], row_record)?;
    rows.collect()
}

fn sql_error(message: String) -> rusqlite::Error {
    rusqlite::Error::UserFunctionError(message.into())
}

/// Checks a push and inserts it into the outbox of `conn` (inside its current transaction).
fn insert_push(conn: &rusqlite::Connection, target: &str, body: &str) -> rusqlite::Result<()> {
    if target.is_empty() {
        return Err(sql_error("kvsqlite_send: the target is empty".into()));
    }
    if body.len() > MAX_PUSH_BYTES {
        return Err(sql_error(format!(
            "kvsqlite_send: the message is {} bytes; the limit is {MAX_PUSH_BYTES}",
            body.len()
        )));
    }
    if let Err(e) = serde_json::from_str::<Value>(body) {
        return Err(sql_error(format!(
            "kvsqlite_send: the message is not JSON: {e}"
        )));
    }
    let insert = |conn: &rusqlite::Connection| -> rusqlite::Result<()> {
        let n: i64 = conn.query_row(
            internal!("SELECT count(*) FROM temp._kvsqlite_outbox"),
            [],
            |r| r.get(0),
        )?;
        if n >= MAX_PUSHES_PER_TRANSACTION {
            return Err(sql_error(format!(
                "kvsqlite_send: more than {MAX_PUSHES_PER_TRANSACTION} pushes in one transaction"
            )));
        }
        conn.execute(
            internal!("INSERT INTO temp._kvsqlite_outbox(target, body) VALUES (?1, ?2)"),
            params![target, body],
        )?;
        Ok(())
    };
    let r = match insert(conn) {
        // Dropped by SQL of the caller's: made again.
        Err(rusqlite::Error::SqliteFailure(_, Some(m))) if m.contains("no such table") => {
            conn.execute_batch(OUTBOX)?;
            insert(conn)
        }
        r => r,
    };
    match r {
        Err(rusqlite::Error::SqliteFailure(f, _)) if f.code == rusqlite::ErrorCode::AuthorizationForStatementDenied => {
            Err(sql_error(
                "kvsqlite_send is refused here: a push writes the outbox, and this SQL may only read"
                    .into(),
            ))
        }
        r => r,
    }
}

/// Installs the outbox and the SQL functions `kvsqlite_send(target, json)` and
/// `kvsqlite_conn_id()` on an actor's connection (no KV access: the outbox is a temporary
/// table in memory).
pub(super) fn install(
    db: &rusqlite::Connection,
    current: &Arc<Mutex<Option<String>>>,
) -> rusqlite::Result<()> {
    db.execute_batch(OUTBOX)?;
    db.create_scalar_function("kvsqlite_send", 2, FunctionFlags::SQLITE_UTF8, |ctx| {
        let target: String = ctx.get(0)?;
        let body = match ctx.get_raw(1) {
            rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
            rusqlite::types::ValueRef::Null => "null".to_string(),
            other => {
                return Err(sql_error(format!(
                    "kvsqlite_send: the message must be JSON text, not {}",
                    other.data_type()
                )))
            }
        };
        // SAFETY: the connection the function runs on; the statement that calls it is
        // neither finalized nor reset here (SQLite allows other statements meanwhile).
        let conn = unsafe { ctx.get_connection() }?;
        insert_push(&conn, &target, &body)?;
        Ok(true)
    })?;
    let current = current.clone();
    db.create_scalar_function(
        "kvsqlite_conn_id",
        0,
        FunctionFlags::SQLITE_UTF8,
        move |_| Ok(current.lock().clone()),
    )?;
    Ok(())
}

/// `restore_connections`: the records of the database (served by the preload at wake).
pub(super) fn restore(
    db: &rusqlite::Connection,
    current: Arc<Mutex<Option<String>>>,
) -> Result<ConnState, ActorError> {
    Ok(ConnState {
        enabled: true,
        restored: records(db)?,
        current,
    })
}

/// A parameter object or state as JSON text; an error naming `what` otherwise.
fn check_json(text: &str, what: &str) -> Result<(), ActorError> {
    serde_json::from_str::<Value>(text)
        .map(|_| ())
        .map_err(|e| ActorError::InvalidConfig(format!("{what} is not JSON: {e}")))
}

impl Actor {
    fn conn_state(&self) -> Result<&ConnState, ActorError> {
        if !self.conns.enabled {
            return Err(ActorError::InvalidConfig(
                "connections are not configured (ActorConfig::connections)".into(),
            ));
        }
        Ok(&self.conns)
    }

    /// The connection records the wake restored (`restore_connections`), as they were then.
    pub fn restored_connections(&self) -> &[ConnectionRecord] {
        &self.conns.restored
    }

    /// Every connection record now, by id (one read of the actor's table).
    pub fn connections(&self) -> Result<Vec<ConnectionRecord>, ActorError> {
        Ok(records(self.db())?)
    }

    /// Records connection `id` (parameters: a JSON object as text; topics it subscribes to)
    /// in the caller's transaction, or in its own commit.
    pub fn open_connection(
        &self,
        id: &str,
        params_json: &str,
        topics: &[String],
        now_ms: u64,
    ) -> Result<(), ActorError> {
        self.conn_state()?;
        check_json(params_json, "the connection's parameters")?;
        let db = self.db();
        db.execute_batch(CREATE)?;
        let topics = serde_json::to_string(topics)
            .map_err(|e| ActorError::InvalidConfig(format!("topics: {e}")))?;
        db.execute(
            "INSERT OR REPLACE INTO _kvsqlite_connections(id, params, topics, state, opened_ms) \
             VALUES (?1, ?2, ?3, '{}', ?4)",
            params![id, params_json, topics, now_ms.min(i64::MAX as u64) as i64],
        )?;
        Ok(())
    }

    /// Deletes the records of connections `ids` (in the caller's transaction or one commit);
    /// returns how many there were.
    pub fn close_connections(&self, ids: &[String]) -> Result<usize, ActorError> {
        let db = self.db();
        if ids.is_empty() || !table_exists(db)? {
            return Ok(0);
        }
        let tx = db.is_autocommit();
        if tx {
            db.execute_batch("BEGIN IMMEDIATE")?;
        }
        let r = (|| {
            let mut n = 0;
            let mut st = db.prepare("DELETE FROM _kvsqlite_connections WHERE id = ?1")?;
            for id in ids {
                n += st.execute([id])?;
            }
            Ok::<usize, rusqlite::Error>(n)
        })();
        match r {
            Ok(n) => {
                if tx {
                    db.execute_batch("COMMIT")?;
                }
                Ok(n)
            }
            Err(e) => {
                if tx {
                    let _ = db.execute_batch("ROLLBACK");
                }
                Err(e.into())
            }
        }
    }

    /// Replaces connection `id`'s state (JSON text); false when there is no such record.
    pub fn set_connection_state(&self, id: &str, state_json: &str) -> Result<bool, ActorError> {
        check_json(state_json, "the connection's state")?;
        let db = self.db();
        if !table_exists(db)? {
            return Ok(false);
        }
        Ok(db.execute(
            "UPDATE _kvsqlite_connections SET state = ?2 WHERE id = ?1",
            params![id, state_json],
        )? == 1)
    }

    /// Pushes `body_json` to `target` (a connection id, a topic or `*`) in the caller's
    /// transaction (or its own commit): delivered only if that transaction commits, and only
    /// once the commit is durable (see the module documentation).
    pub fn send(&self, target: &str, body_json: &str) -> Result<(), ActorError> {
        self.conn_state()?;
        Ok(insert_push(self.db(), target, body_json)?)
    }

    /// Runs `f` with `kvsqlite_conn_id()` answering `id` (the connection whose message `f`
    /// handles).
    pub fn with_connection<T>(&self, id: &str, f: impl FnOnce() -> T) -> T {
        let previous = self.conns.current.lock().replace(id.to_string());
        let r = f();
        *self.conns.current.lock() = previous;
        r
    }

    /// The pushes committed so far, in order, taken out of the outbox (empty while a
    /// transaction is open: its pushes are not committed yet). They are committed but maybe
    /// not durable yet: deliver them only after a [`crate::vfs::Durability`] ticket taken
    /// *after* this call is reached, or use [`Actor::drain_pushes`]. No KV access.
    pub fn take_pushes(&self) -> Result<Vec<Push>, ActorError> {
        let db = self.db();
        if !self.conns.enabled || !db.is_autocommit() {
            return Ok(Vec::new());
        }
        let pushes: Vec<(i64, Push)> = {
            let mut st = match db.prepare_cached(internal!(
                "SELECT seq, target, body FROM temp._kvsqlite_outbox ORDER BY seq"
            )) {
                Ok(st) => st,
                // Dropped by SQL of the caller's: nothing to take.
                Err(rusqlite::Error::SqliteFailure(_, Some(m))) if m.contains("no such table") => {
                    db.execute_batch(OUTBOX)?;
                    return Ok(Vec::new());
                }
                Err(e) => return Err(e.into()),
            };
            let rows = st.query_map([], |r| {
                Ok((
                    r.get(0)?,
                    Push {
                        target: r.get(1)?,
                        body: r.get(2)?,
                    },
                ))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        if let Some((last, _)) = pushes.last() {
            db.execute(
                internal!("DELETE FROM temp._kvsqlite_outbox WHERE seq <= ?1"),
                [last],
            )?;
        }
        Ok(pushes.into_iter().map(|(_, p)| p).collect())
    }

    /// [`Actor::take_pushes`], then waits until every commit so far is durable: what it
    /// returns may be delivered at once. Fails (and returns nothing) when a commit failed.
    pub fn drain_pushes(&self) -> Result<Vec<Push>, ActorError> {
        let pushes = self.take_pushes()?;
        self.wait_durable()?;
        Ok(pushes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bookkeeping_statements_carry_the_query_logs_internal_mark() {
        assert!(internal!("SELECT 1").starts_with(crate::actor::query_log::INTERNAL_MARK));
    }

    #[test]
    fn targets() {
        let p = |t: &str| Push {
            target: t.into(),
            body: "1".into(),
        };
        let topics = vec!["room".to_string()];
        assert!(p("*").reaches("c1", &[]));
        assert!(p("c1").reaches("c1", &[]));
        assert!(p("room").reaches("c2", &topics));
        assert!(!p("other").reaches("c2", &topics));
    }
}
