//! The per-query log: one `tracing` debug event per SQL statement an actor's database runs,
//! with what it cost in KV round trips, plus the last [`MAX_RECORDS`] records and a latency
//! histogram kept whatever the log level.
//!
//! Why it exists: round trips are what kvsqlite is judged on, so every statement says what it
//! cost. The hook sits at SQLite's level (`sqlite3_trace_v2` with statement start, row and
//! profile events), so no API path escapes it: the actor's helpers, a raw
//! `rusqlite::Connection`, prepared statements and each statement of an `execute_batch` all
//! report. SQLite reports a statement's profile after an autocommit statement has committed, so
//! its event includes its commit's put; a `COMMIT` statement's event shows the put.
//!
//! Event: target `kvsqlite::query`, fields `actor`, `sql` (first [`SQL_CHARS`] characters,
//! whitespace collapsed), `duration_us`, `kv_round_trips`, `kv_keys_read`, `kv_keys_written`,
//! `preload_hits`, `cache_hits`, `rows`.
//!
//! Cost: the log is on every statement's path whatever the level, so its fixed cost is kept
//! small. The state of running statements lives in the hook, touched only by SQLite's callbacks
//! (which a connection makes one at a time), so the start and row events take no lock; a
//! statement's collapsed SQL is computed once per prepared statement and shared (`Arc<str>`);
//! the record's time and its duration come from two wall-clock reads (a step of the system
//! clock while a statement runs skews that one duration, a step back reads as 0: the price of
//! not reading a monotonic clock as well); the shared records, totals and histogram take one
//! uncontended lock per statement.
//! Clock reads are the largest share left, so the log reads none of its own on kvsqlite's VFS:
//! SQLite reads the clock through the VFS right before a profiled statement's first step and
//! right before its profile event, and the log takes those two reads
//! ([`crate::vfs::last_clock_read`]); on another VFS it reads the wall clock itself.
//!
//! What the log keeps is chosen per actor ([`QueryLogMode`]): every statement (`Full`, the
//! default), one statement in `n` (`Sampled(n)`: the others run with only SQLite's cheap
//! statement-start callback, no profile clock reads, no row callbacks, no record), or nothing
//! (`Off`: no hook at all).

use std::cell::Cell;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rusqlite::ffi;

use crate::metrics::{HistogramSummary, LatencyHistogram};
use crate::vfs::Stats;

/// Statements whose records an actor keeps.
pub const MAX_RECORDS: usize = 500;

/// The comment that starts the statements a tool runs on an actor for its own view (the host's
/// inspector): such statements are recorded but counted in neither [`QueryLog::totals`] nor
/// [`QueryLog::latency`].
pub const INTERNAL_MARK: &str = "/* kvsqlite inspector */";

/// Characters of SQL kept in an event and a record.
pub const SQL_CHARS: usize = 120;

/// What an actor's query log keeps (`ActorConfig::query_log`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueryLogMode {
    /// Every statement: a record, an event, the histogram and the totals. The default.
    #[default]
    Full,
    /// One statement in `n` (after `n - 1` unlogged starts, the next is logged; `n` ≤ 1 is
    /// `Full`): records, events, histogram and totals cover the logged statements only. The
    /// others cost one statement-start callback that counts them.
    Sampled(u32),
    /// No log: no hook on the connection, no records, an empty histogram, zero totals.
    Off,
}

/// One statement as the log saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryRecord {
    /// When it finished, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// Its SQL, whitespace collapsed, cut to [`SQL_CHARS`] characters.
    pub sql: String,
    /// Microseconds from its first step to its end (SQLite's own profile timer counts whole
    /// milliseconds, so the log keeps the nanoseconds of the same clock reads; it is the wall
    /// clock, so a step of the system clock during a statement can shorten it, down to 0).
    pub duration_us: u64,
    /// KV round trips its database made meanwhile.
    pub kv_round_trips: u64,
    /// Keys its reads asked for.
    pub kv_keys_read: u64,
    /// Keys its writes put or deleted.
    pub kv_keys_written: u64,
    /// Page reads served by the preload.
    pub preload_hits: u64,
    /// Page reads served by the VFS page cache.
    pub cache_hits: u64,
    /// Rows it returned.
    pub rows: u64,
}

/// Totals over every statement logged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueryTotals {
    /// Statements run.
    pub sql_statements: u64,
    /// Their KV round trips.
    pub kv_round_trips: u64,
    /// Keys their reads asked for.
    pub kv_keys_read: u64,
    /// Keys their writes put or deleted.
    pub kv_keys_written: u64,
}

/// The five counters a record reports, read without the rest of [`Stats`].
#[derive(Clone, Copy, Default)]
struct Counters {
    round_trips: u64,
    keys_read: u64,
    keys_written: u64,
    preload_hits: u64,
    cache_hits: u64,
}

impl Counters {
    fn now(s: &Stats) -> Counters {
        Counters {
            round_trips: s.kv_round_trips.load(Ordering::Relaxed),
            keys_read: s.keys_read.load(Ordering::Relaxed),
            keys_written: s.keys_written.load(Ordering::Relaxed),
            preload_hits: s.preload_hits.load(Ordering::Relaxed),
            cache_hits: s.cache_hits.load(Ordering::Relaxed),
        }
    }

    fn since(self, start: Counters) -> Counters {
        Counters {
            round_trips: self.round_trips.wrapping_sub(start.round_trips),
            keys_read: self.keys_read.wrapping_sub(start.keys_read),
            keys_written: self.keys_written.wrapping_sub(start.keys_written),
            preload_hits: self.preload_hits.wrapping_sub(start.preload_hits),
            cache_hits: self.cache_hits.wrapping_sub(start.cache_hits),
        }
    }
}

/// A record as kept: its SQL shared with the statement's cache entry.
struct Rec {
    at_unix_ms: u64,
    sql: Arc<str>,
    duration_us: u64,
    cost: Counters,
    rows: u64,
}

impl Rec {
    fn to_record(&self) -> QueryRecord {
        QueryRecord {
            at_unix_ms: self.at_unix_ms,
            sql: self.sql.to_string(),
            duration_us: self.duration_us,
            kv_round_trips: self.cost.round_trips,
            kv_keys_read: self.cost.keys_read,
            kv_keys_written: self.cost.keys_written,
            preload_hits: self.cost.preload_hits,
            cache_hits: self.cost.cache_hits,
            rows: self.rows,
        }
    }
}

#[derive(Default)]
struct Shared {
    records: VecDeque<Rec>,
    hist: LatencyHistogram,
    totals: QueryTotals,
}

/// One actor's query log. Shared with the trace hook while installed.
pub struct QueryLog {
    actor: String,
    inner: Mutex<Shared>,
}

impl QueryLog {
    /// The last records, oldest first (at most [`MAX_RECORDS`]).
    pub fn records(&self) -> Vec<QueryRecord> {
        self.inner
            .lock()
            .records
            .iter()
            .map(Rec::to_record)
            .collect()
    }

    /// Totals over every statement logged.
    pub fn totals(&self) -> QueryTotals {
        self.inner.lock().totals
    }

    /// The latency histogram's summary, in microseconds.
    pub fn latency(&self) -> HistogramSummary {
        self.inner.lock().hist.summary()
    }

    fn publish(&self, rec: Rec) {
        tracing::debug!(
            target: "kvsqlite::query",
            actor = %self.actor,
            sql = %rec.sql,
            duration_us = rec.duration_us,
            kv_round_trips = rec.cost.round_trips,
            kv_keys_read = rec.cost.keys_read,
            kv_keys_written = rec.cost.keys_written,
            preload_hits = rec.cost.preload_hits,
            cache_hits = rec.cost.cache_hits,
            rows = rec.rows,
            "query"
        );
        let mut inner = self.inner.lock();
        // The inspector's own statements are kept as records (it hides them) but are not
        // the actor's work: they stay out of its totals and latency.
        if !rec.sql.starts_with(INTERNAL_MARK) {
            inner.hist.record(rec.duration_us);
            let t = &mut inner.totals;
            t.sql_statements += 1;
            t.kv_round_trips += rec.cost.round_trips;
            t.kv_keys_read += rec.cost.keys_read;
            t.kv_keys_written += rec.cost.keys_written;
        }
        if inner.records.len() == MAX_RECORDS {
            inner.records.pop_front();
        }
        inner.records.push_back(rec);
    }
}

/// SQL with every run of whitespace made one space, trimmed, cut to [`SQL_CHARS`] characters.
pub fn collapse(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len().min(SQL_CHARS * 4));
    let mut n = 0;
    for word in sql.split_whitespace() {
        for c in (n > 0).then_some(' ').into_iter().chain(word.chars()) {
            if n == SQL_CHARS {
                return out;
            }
            out.push(c);
            n += 1;
        }
    }
    out
}

/// A running statement: its address, the counters at its first step, its rows so far, when
/// it started (nanoseconds since the Unix epoch).
struct Active {
    stmt: usize,
    start: Counters,
    rows: u64,
    at_unix_nanos: u64,
}

/// Slots of the collapsed-SQL cache (direct-mapped by statement address).
const SQL_CACHE_SLOTS: usize = 64;

/// A cached collapsed SQL: the statement's address and raw text it was computed from (a
/// finalized statement's address may be reused by another statement, so the text is
/// compared, never trusted by address alone).
struct CachedSql {
    stmt: usize,
    raw: Box<[u8]>,
    collapsed: Arc<str>,
}

/// What the trace callback works with. Only SQLite's callbacks on the one connection touch
/// `active` and `sql_cache`, and a connection calls back one call at a time, so they need no
/// lock.
struct HookState {
    log: Arc<QueryLog>,
    /// The connection, to switch the trace mask when sampling.
    db: *mut ffi::sqlite3,
    /// Sample one statement in this many (0 for every statement).
    every: u32,
    /// Statement starts since the last sample (sampling only).
    starts: Cell<u32>,
    /// True while the full mask is on (sampling only): the next statement to start is logged.
    armed: Cell<bool>,
    stats: Arc<Stats>,
    /// The sequence number of the last VFS clock read taken (see [`HookState::now`]).
    clock_seen: Cell<u64>,
    active: RefCell<Vec<Active>>,
    sql_cache: RefCell<Vec<Option<CachedSql>>>,
}

impl HookState {
    /// Now, in nanoseconds since the Unix epoch: the clock read SQLite just made through
    /// kvsqlite's VFS when there is one this hook has not taken yet, else a read of its own.
    fn now(&self) -> u64 {
        let (seq, nanos) = crate::vfs::last_clock_read();
        if seq != 0 && seq != self.clock_seen.get() {
            self.clock_seen.set(seq);
            return nanos;
        }
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    }

    /// A statement starts: logged in full mode; in sampled mode only when armed, and the
    /// `every - 1`-th unlogged start arms the full mask for the next one (one in `every`).
    fn on_stmt(&self, stmt: usize) {
        if self.every == 0 || self.armed.get() {
            self.start(stmt);
            return;
        }
        let n = self.starts.get() + 1;
        if n + 1 < self.every {
            self.starts.set(n);
            return;
        }
        self.starts.set(0);
        self.armed.set(true);
        // SAFETY: `db` is the live connection this callback runs on; re-registering the same
        // callback and context only changes the mask (SQLite's connection mutex is recursive).
        unsafe {
            ffi::sqlite3_trace_v2(
                self.db,
                FULL_MASK,
                Some(trace),
                self as *const _ as *mut c_void,
            );
        }
    }

    /// After a sampled statement's profile event: back to the cheap mask. Statements that
    /// started meanwhile lose their profile event; their entries are dropped.
    fn disarm(&self) {
        if self.every == 0 || !self.armed.get() {
            return;
        }
        self.armed.set(false);
        self.active.borrow_mut().clear();
        // SAFETY: as in `on_stmt`.
        unsafe {
            ffi::sqlite3_trace_v2(
                self.db,
                ffi::SQLITE_TRACE_STMT,
                Some(trace),
                self as *const _ as *mut c_void,
            );
        }
    }

    fn start(&self, stmt: usize) {
        let at_unix_nanos = self.now();
        let start = Counters::now(&self.stats);
        let mut active = self.active.borrow_mut();
        active.retain(|a| a.stmt != stmt);
        active.push(Active {
            stmt,
            start,
            rows: 0,
            at_unix_nanos,
        });
    }

    fn row(&self, stmt: usize) {
        if let Some(a) = self
            .active
            .borrow_mut()
            .iter_mut()
            .rev()
            .find(|a| a.stmt == stmt)
        {
            a.rows += 1;
        }
    }

    /// The statement's collapsed SQL, from the cache when its text is unchanged.
    fn sql(&self, stmt: usize, raw: &[u8]) -> Arc<str> {
        let slot = (stmt >> 4) % SQL_CACHE_SLOTS;
        let mut cache = self.sql_cache.borrow_mut();
        if let Some(c) = &cache[slot] {
            if c.stmt == stmt && *c.raw == *raw {
                return c.collapsed.clone();
            }
        }
        let collapsed: Arc<str> = collapse(&String::from_utf8_lossy(raw)).into();
        cache[slot] = Some(CachedSql {
            stmt,
            raw: raw.into(),
            collapsed: collapsed.clone(),
        });
        collapsed
    }

    fn finish(&self, stmt: usize, nanos: i64, raw: &[u8]) {
        let now = self.now();
        let counters = Counters::now(&self.stats);
        let found = {
            let mut active = self.active.borrow_mut();
            let i = active.iter().rposition(|a| a.stmt == stmt);
            i.map(|i| active.swap_remove(i))
        };
        let (cost, rows, us) = match found {
            Some(a) => (
                counters.since(a.start),
                a.rows,
                now.saturating_sub(a.at_unix_nanos) / 1000,
            ),
            None => (Counters::default(), 0, (nanos.max(0) as u64) / 1000),
        };
        let rec = Rec {
            at_unix_ms: now / 1_000_000,
            sql: self.sql(stmt, raw),
            duration_us: us,
            cost,
            rows,
        };
        self.log.publish(rec);
    }
}

/// The installed hook: removes itself from the connection when dropped. Must be dropped before
/// the connection is closed.
pub struct QueryHook {
    db: *mut ffi::sqlite3,
    state: *mut HookState,
}

// SAFETY: the hook only touches the connection (which moves with it, owned by the same actor)
// and its `HookState`, whose cells only SQLite's callbacks on that connection use, one at a
// time, whichever thread the connection is on; the rest of the state is `Sync`.
unsafe impl Send for QueryHook {}

impl Drop for QueryHook {
    fn drop(&mut self) {
        // SAFETY: `db` is the live connection the hook was installed on (the actor drops the hook
        // first); after this call SQLite no longer calls back, so the state can be released.
        unsafe {
            ffi::sqlite3_trace_v2(self.db, 0, None, std::ptr::null_mut());
            drop(Box::from_raw(self.state));
        }
    }
}

/// The trace events of a logged statement.
const FULL_MASK: c_uint =
    ffi::SQLITE_TRACE_STMT | ffi::SQLITE_TRACE_ROW | ffi::SQLITE_TRACE_PROFILE;

/// Installs the full log on `conn` (replacing any trace hook it had). `stats` are the
/// database's counters.
pub fn install(
    conn: &rusqlite::Connection,
    actor: &str,
    stats: Arc<Stats>,
) -> (Arc<QueryLog>, QueryHook) {
    let (log, hook) = install_mode(conn, actor, stats, QueryLogMode::Full);
    (log, hook.expect("the full log installs a hook"))
}

/// Installs the log on `conn` in `mode` (replacing any trace hook it had, except `Off`, which
/// installs none and returns an empty log).
pub fn install_mode(
    conn: &rusqlite::Connection,
    actor: &str,
    stats: Arc<Stats>,
    mode: QueryLogMode,
) -> (Arc<QueryLog>, Option<QueryHook>) {
    let log = Arc::new(QueryLog {
        actor: actor.to_string(),
        inner: Mutex::new(Shared::default()),
    });
    let every = match mode {
        QueryLogMode::Off => return (log, None),
        QueryLogMode::Full | QueryLogMode::Sampled(0 | 1) => 0,
        QueryLogMode::Sampled(n) => n,
    };
    // SAFETY: the handle of a live connection, only stored (see `QueryHook`).
    let db = unsafe { conn.handle() };
    let state = Box::into_raw(Box::new(HookState {
        log: log.clone(),
        db,
        every,
        starts: Cell::new(0),
        armed: Cell::new(false),
        stats,
        clock_seen: Cell::new(0),
        active: RefCell::new(Vec::new()),
        sql_cache: RefCell::new((0..SQL_CACHE_SLOTS).map(|_| None).collect()),
    }));
    let mask = if every == 0 {
        FULL_MASK
    } else {
        ffi::SQLITE_TRACE_STMT
    };
    // SAFETY: the handle is the live connection; `state` stays valid until the hook's drop
    // unregisters the callback and frees it.
    unsafe {
        ffi::sqlite3_trace_v2(db, mask, Some(trace), state as *mut c_void);
    }
    (log, Some(QueryHook { db, state }))
}

unsafe extern "C" fn trace(
    mask: c_uint,
    ctx: *mut c_void,
    p: *mut c_void,
    x: *mut c_void,
) -> c_int {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if ctx.is_null() || p.is_null() || super::guard::probing() {
            return;
        }
        let state = &*(ctx as *const HookState);
        match mask {
            ffi::SQLITE_TRACE_STMT => {
                // Trigger programs report as "-- TRIGGER name": part of the outer statement.
                let text = x as *const u8;
                if !text.is_null() && *text == b'-' && *text.add(1) == b'-' {
                    return;
                }
                state.on_stmt(p as usize);
            }
            ffi::SQLITE_TRACE_ROW => state.row(p as usize),
            ffi::SQLITE_TRACE_PROFILE => {
                let nanos = if x.is_null() { 0 } else { *(x as *const i64) };
                let sql: *const c_char = ffi::sqlite3_sql(p as *mut ffi::sqlite3_stmt);
                let raw = if sql.is_null() {
                    &[][..]
                } else {
                    CStr::from_ptr(sql).to_bytes()
                };
                state.finish(p as usize, nanos, raw);
                state.disarm();
            }
            _ => {}
        }
    }));
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_is_collapsed_and_cut() {
        assert_eq!(collapse("  SELECT\n\t1 ,\r\n 2  "), "SELECT 1 , 2");
        let long = "x ".repeat(200);
        assert_eq!(collapse(&long).chars().count(), SQL_CHARS);
        assert_eq!(collapse(""), "");
    }

    #[test]
    fn every_statement_reports_its_own_sql_even_at_a_reused_address() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t(a); INSERT INTO t VALUES (1), (2);")
            .unwrap();
        let (log, hook) = install(&conn, "a", Arc::new(Stats::default()));
        // Prepared and finalized one after the other: SQLite may well reuse the statement's
        // (and its text's) memory, so the cached SQL must be checked against the text.
        let sqls: Vec<String> = (0..40)
            .map(|i| format!("SELECT  a + {}\n FROM t", i % 7))
            .collect();
        for sql in &sqls {
            let mut st = conn.prepare(sql).unwrap();
            assert_eq!(st.query_map([], |_| Ok(())).unwrap().count(), 2);
        }
        let got: Vec<(String, u64)> = log.records().into_iter().map(|r| (r.sql, r.rows)).collect();
        let want: Vec<(String, u64)> = sqls
            .iter()
            .map(|s| (s.split_whitespace().collect::<Vec<_>>().join(" "), 2))
            .collect();
        assert_eq!(got, want);
        assert_eq!(log.totals().sql_statements, 40);
        assert_eq!(log.latency().count, 40);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let at = log.records()[39].at_unix_ms;
        assert!(
            at <= now_ms + 1 && at + 60_000 > now_ms,
            "{at} against {now_ms}"
        );
        drop(hook);
    }

    #[test]
    fn on_the_kvsqlite_vfs_records_take_sqlites_own_clock_reads() {
        use crate::kv::SharedStore;
        let store: SharedStore = Arc::new(crate::kv::memory::MemoryStore::new());
        let db =
            crate::vfs::open_database(store, "clock", &crate::vfs::OpenOptions::default()).unwrap();
        db.execute_batch("CREATE TABLE t(a); INSERT INTO t VALUES (1), (2), (3);")
            .unwrap();
        let (log, hook) = install(db.conn(), "clock", db.stats());
        let unix_ns = || {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        };
        let before = unix_ns();
        let (seq0, _) = crate::vfs::last_clock_read();
        let n: i64 = db
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        let (seq1, last) = crate::vfs::last_clock_read();
        let after = unix_ns();
        assert_eq!(n, 3);
        // SQLite read the clock through the VFS at the first step and for the profile event.
        assert!(seq1 >= seq0 + 2, "{seq0} -> {seq1}");
        assert!((before..=after).contains(&last));
        let r = &log.records()[0];
        assert_eq!((r.sql.as_str(), r.rows), ("SELECT count(*) FROM t", 1));
        assert_eq!(r.at_unix_ms, last / 1_000_000);
        assert!(r.duration_us <= (after - before) / 1000, "{r:?}");
        drop(hook);
    }

    #[test]
    fn sampled_logs_one_statement_in_n_and_off_logs_none() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t(a); INSERT INTO t VALUES (1), (2), (3);")
            .unwrap();
        let run = |conn: &rusqlite::Connection| {
            for i in 0..40 {
                let mut st = conn.prepare(&format!("SELECT a + {i} FROM t")).unwrap();
                assert_eq!(st.query_map([], |_| Ok(())).unwrap().count(), 3);
            }
        };
        let (log, hook) = install_mode(
            &conn,
            "s",
            Arc::new(Stats::default()),
            QueryLogMode::Sampled(4),
        );
        run(&conn);
        let got: Vec<(String, u64)> = log.records().into_iter().map(|r| (r.sql, r.rows)).collect();
        let want: Vec<(String, u64)> = (0..40)
            .filter(|i| i % 4 == 3)
            .map(|i| (format!("SELECT a + {i} FROM t"), 3))
            .collect();
        assert_eq!(got, want);
        assert_eq!(log.totals().sql_statements, 10);
        assert_eq!(log.latency().count, 10);
        drop(hook);
        // Sampled(1) is the full log.
        let (log, hook) = install_mode(
            &conn,
            "s",
            Arc::new(Stats::default()),
            QueryLogMode::Sampled(1),
        );
        run(&conn);
        assert_eq!(log.totals().sql_statements, 40);
        drop(hook);
        let (log, hook) = install_mode(&conn, "s", Arc::new(Stats::default()), QueryLogMode::Off);
        assert!(hook.is_none());
        run(&conn);
        assert_eq!(log.records(), Vec::new());
        assert_eq!(log.totals(), QueryTotals::default());
    }
}
