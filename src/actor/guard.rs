//! What SQL may reach, decided by SQLite itself: an authorizer and limits installed on every
//! connection an actor opens, the one detector of transaction-control statements, and the
//! process-wide heap bound of `kvsqlite serve`.
//!
//! Why it exists: keyword lists are bypassed by a leading comment, a nested statement (a pragma
//! table-valued function, `VACUUM INTO`) or a spelling nobody listed; SQLite's authorizer is
//! asked at every compile, for every action, whatever the text looked like. One module decides
//! for the library's [`Actor`](super::Actor), `kvsqlite run` and the HTTP host:
//!
//! - **Everywhere** (every mode): `ATTACH` and `DETACH` are refused — SQL cannot open another
//!   file, another VFS or another actor's database. The one exception is the private, temporary
//!   database (an empty file name) that `VACUUM` attaches for itself, allowed in
//!   [`Mode::Trusted`] only so that `VACUUM` works in the library. `VACUUM INTO 'file'` is
//!   refused (it attaches its target). The process-wide pragmas [`PROCESS_PRAGMAS`] are refused.
//! - [`Mode::Trusted`] (the actor's own code, migrations, `kvsqlite run`): anything else.
//! - [`Mode::Remote`] (SQL from an HTTP client): pragmas only from the allow-list — the
//!   reporting ones ([`REPORT_PRAGMAS`], with any argument), the settings of
//!   [`READABLE_PRAGMAS`] read without a value, and [`SETTABLE_PRAGMAS`] (values kept in the
//!   database itself, or a setting that ends with its transaction). A setting of the
//!   connection would outlive the request on an actor every client shares.
//! - [`Mode::ReadOnly`] (the inspector's query box): only `SELECT`, reading tables, functions,
//!   recursive CTEs and the allow-listed pragmas read without a value; nothing it runs can leave
//!   a setting or a write behind.
//!
//! A host connection ([`GuardConfig::host`]) also gets `SQLITE_LIMIT_ATTACHED` = 0 (not even
//! `VACUUM`'s temporary database) and, when set, a `SQLITE_LIMIT_LENGTH`.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, Ordering};

use parking_lot::Mutex;
use rusqlite::{ffi, Connection};

/// Pragmas that change the whole process (every connection, every actor): refused everywhere,
/// read or set.
pub const PROCESS_PRAGMAS: &[&str] = &[
    "data_store_directory",
    "hard_heap_limit",
    "soft_heap_limit",
    "temp_store_directory",
];

/// Pragmas that only report (their argument, if any, names what to report on): allowed over
/// HTTP and in the query box, with any argument.
pub const REPORT_PRAGMAS: &[&str] = &[
    "collation_list",
    "compile_options",
    "data_version",
    "database_list",
    "foreign_key_check",
    "foreign_key_list",
    "freelist_count",
    "function_list",
    "index_info",
    "index_list",
    "index_xinfo",
    "integrity_check",
    // kvsqlite's own: the database's I/O counters as JSON.
    "kvsqlite_stats",
    "module_list",
    "page_count",
    "pragma_list",
    "quick_check",
    "table_info",
    "table_list",
    "table_xinfo",
];

/// Settings that may be read (the pragma without a value) over HTTP and in the query box.
/// Setting them is refused there, except the [`SETTABLE_PRAGMAS`] over HTTP.
pub const READABLE_PRAGMAS: &[&str] = &[
    "application_id",
    "auto_vacuum",
    "automatic_index",
    "busy_timeout",
    "cache_size",
    "cell_size_check",
    "defer_foreign_keys",
    "encoding",
    "foreign_keys",
    "ignore_check_constraints",
    "journal_mode",
    "legacy_alter_table",
    "locking_mode",
    "max_page_count",
    "mmap_size",
    "page_size",
    "query_only",
    "recursive_triggers",
    "reverse_unordered_selects",
    "schema_version",
    "secure_delete",
    "synchronous",
    "temp_store",
    "trusted_schema",
    "user_version",
    "writable_schema",
];

/// Pragmas an HTTP client may also set or run: numbers kept in the database's own header, a
/// setting that ends with the transaction, and the statistics refresh (which writes only the
/// database's `sqlite_stat` tables).
pub const SETTABLE_PRAGMAS: &[&str] = &[
    "application_id",
    "defer_foreign_keys",
    "optimize",
    "user_version",
];

/// Who the SQL being compiled comes from; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// The program's own SQL (the default): everything but `ATTACH`/`DETACH` of a file and the
    /// process-wide pragmas.
    Trusted = 0,
    /// SQL sent by an HTTP client: pragmas from the allow-list only.
    Remote = 1,
    /// The inspector's query box: reads only.
    ReadOnly = 2,
    /// Only transaction control compiles (what [`SqlGuard::transaction_control`] prepares in):
    /// nothing else can take effect at compile time, as a `PRAGMA` setting does.
    Probe = 3,
}

impl Mode {
    fn from_u8(v: u8) -> Mode {
        match v {
            1 => Mode::Remote,
            2 => Mode::ReadOnly,
            3 => Mode::Probe,
            _ => Mode::Trusted,
        }
    }
}

/// The connection-wide part of the guard, fixed when an actor's database opens.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuardConfig {
    /// A host connection: `SQLITE_LIMIT_ATTACHED` is 0, so nothing at all can be attached.
    pub host: bool,
    /// `SQLITE_LIMIT_LENGTH`: the largest string or blob (and row) the connection makes or
    /// reads, in bytes (clamped to SQLite's own maximum); `None` keeps SQLite's default
    /// (1,000,000,000).
    pub max_length: Option<usize>,
}

impl GuardConfig {
    /// The host's guard: nothing attachable, values and rows at most `max_length` bytes.
    pub fn host(max_length: usize) -> Self {
        GuardConfig {
            host: true,
            max_length: Some(max_length),
        }
    }
}

/// What the authorizer reads and writes (shared with SQLite's callback).
struct State {
    mode: AtomicU8,
    /// Why the last refusal was made (for the error message).
    denied: Mutex<Option<String>>,
}

/// The guard installed on one connection: the authorizer (removed when the guard drops) and its
/// mode. Must be dropped before the connection is closed.
pub struct SqlGuard {
    db: *mut ffi::sqlite3,
    state: *mut State,
    max_length: Option<i32>,
}

// SAFETY: the guard only touches the connection (owned by the same actor, moving with it) and
// its `State`, which is `Sync` (an atomic and a mutex).
unsafe impl Send for SqlGuard {}

impl Drop for SqlGuard {
    fn drop(&mut self) {
        // SAFETY: `db` is the live connection the guard was installed on (the actor drops the
        // guard first); once the authorizer is removed SQLite no longer reads the state.
        unsafe {
            ffi::sqlite3_set_authorizer(self.db, None, std::ptr::null_mut());
            drop(Box::from_raw(self.state));
        }
    }
}

/// Installs the guard on `conn` (replacing any authorizer it had) with `config`'s limits, in
/// [`Mode::Trusted`]. Statements prepared before are expired (SQLite re-prepares them under the
/// authorizer).
pub fn install(conn: &Connection, config: &GuardConfig) -> SqlGuard {
    let state = Box::into_raw(Box::new(State {
        mode: AtomicU8::new(Mode::Trusted as u8),
        denied: Mutex::new(None),
    }));
    let max_length = config
        .max_length
        .map(|n| i32::try_from(n).unwrap_or(i32::MAX).max(1));
    // SAFETY: the handle is the live connection; `state` stays valid until the guard's drop
    // removes the callback and frees it.
    let db = unsafe {
        let db = conn.handle();
        if config.host {
            ffi::sqlite3_limit(db, ffi::SQLITE_LIMIT_ATTACHED, 0);
        }
        if let Some(n) = max_length {
            ffi::sqlite3_limit(db, ffi::SQLITE_LIMIT_LENGTH, n);
        }
        ffi::sqlite3_set_authorizer(db, Some(authorize), state as *mut c_void);
        db
    };
    let max_length = max_length.map(|_| {
        // SAFETY: the live connection; -1 only reads the limit as SQLite clamped it.
        unsafe { ffi::sqlite3_limit(db, ffi::SQLITE_LIMIT_LENGTH, -1) }
    });
    SqlGuard {
        db,
        state,
        max_length,
    }
}

/// While alive, the guard compiles in another [`Mode`]; dropping it restores the previous one.
pub struct Scope<'a> {
    guard: &'a SqlGuard,
    previous: Mode,
}

impl Drop for Scope<'_> {
    fn drop(&mut self) {
        self.guard
            .state()
            .mode
            .store(self.previous as u8, Ordering::SeqCst);
    }
}

impl SqlGuard {
    fn state(&self) -> &State {
        // SAFETY: the state lives as long as the guard.
        unsafe { &*self.state }
    }

    /// The mode statements are compiled in now.
    pub fn mode(&self) -> Mode {
        Mode::from_u8(self.state().mode.load(Ordering::SeqCst))
    }

    /// Compiles in `mode` until the returned scope drops (statements prepared meanwhile are
    /// checked in `mode`, and so are their automatic re-preparations while it lasts).
    pub fn scope(&self, mode: Mode) -> Scope<'_> {
        let state = self.state();
        *state.denied.lock() = None;
        let previous = Mode::from_u8(state.mode.swap(mode as u8, Ordering::SeqCst));
        Scope {
            guard: self,
            previous,
        }
    }

    /// [`transaction_control`] of `sql` on the guarded connection `db`, prepared in
    /// [`Mode::Probe`]: a statement that is not transaction control does not even compile, so
    /// none of it (a `PRAGMA` setting applies when it compiles) can take effect.
    pub fn transaction_control(&self, db: &Connection, sql: &str) -> Option<TxControl> {
        let _probe = self.scope(Mode::Probe);
        transaction_control(db, sql)
    }

    /// `SQLITE_LIMIT_LENGTH` of the connection when the guard set one.
    pub fn max_length(&self) -> Option<i32> {
        self.max_length
    }

    /// `e` with a message that says what was refused and why: an authorizer refusal names
    /// the action ("not authorized: …"), a value over the length limit names the limit, and
    /// running out of SQLite's heap names the heap limit. Other errors are returned as they are.
    pub fn explain(&self, e: rusqlite::Error) -> rusqlite::Error {
        let Some(code) = e.sqlite_error_code() else {
            return e;
        };
        let sqlite_text = match &e {
            rusqlite::Error::SqliteFailure(_, m) => m.clone(),
            rusqlite::Error::SqlInputError { msg, .. } => Some(msg.clone()),
            _ => None,
        };
        let message = match code {
            rusqlite::ErrorCode::AuthorizationForStatementDenied => {
                match self.state().denied.lock().take() {
                    Some(why) => format!("not authorized: {why}"),
                    None => return e,
                }
            }
            rusqlite::ErrorCode::TooBig
                if sqlite_text.as_deref().is_none_or(|m| m == "string or blob too big") =>
            {
                match self.max_length {
                    Some(n) => format!(
                        "string or blob too big: a value or row may hold at most {n} bytes here"
                    ),
                    None => return e,
                }
            }
            rusqlite::ErrorCode::OutOfMemory => match heap_limit() {
                0 => return e,
                n => format!(
                    "out of memory: the statement needed more than SQLite's heap limit of {n} bytes; it was stopped and rolled back"
                ),
            },
            _ => return e,
        };
        let raw = match &e {
            rusqlite::Error::SqliteFailure(f, _) => *f,
            _ => ffi::Error::new(code_number(code)),
        };
        rusqlite::Error::SqliteFailure(raw, Some(message))
    }
}

fn code_number(code: rusqlite::ErrorCode) -> c_int {
    match code {
        rusqlite::ErrorCode::AuthorizationForStatementDenied => ffi::SQLITE_AUTH,
        rusqlite::ErrorCode::TooBig => ffi::SQLITE_TOOBIG,
        _ => ffi::SQLITE_NOMEM,
    }
}

/// Sets SQLite's hard heap limit for the whole process (`sqlite3_hard_heap_limit64`): past it
/// an allocation fails and the statement that asked for it fails with `SQLITE_NOMEM` (an
/// error, not a crash; its transaction is rolled back). 0 removes the limit. Returns the
/// previous limit.
pub fn set_heap_limit(bytes: u64) -> u64 {
    let n = i64::try_from(bytes).unwrap_or(i64::MAX);
    // SAFETY: a process-wide setting; SQLite serializes it.
    let previous = unsafe { ffi::sqlite3_hard_heap_limit64(n) };
    u64::try_from(previous).unwrap_or(0)
}

/// SQLite's hard heap limit for the process (0: none).
pub fn heap_limit() -> u64 {
    // SAFETY: a negative argument only reads the limit.
    let n = unsafe { ffi::sqlite3_hard_heap_limit64(-1) };
    u64::try_from(n).unwrap_or(0)
}

/// A statement that controls transactions, as SQLite compiled it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxControl {
    /// `BEGIN` (any kind).
    Begin,
    /// `COMMIT` or `END`.
    Commit,
    /// `ROLLBACK` (of the whole transaction).
    Rollback,
    /// `SAVEPOINT name`.
    Savepoint,
    /// `RELEASE name`.
    Release,
    /// `ROLLBACK TO name`.
    RollbackTo,
}

impl TxControl {
    /// True for `BEGIN`, `COMMIT`/`END` and `ROLLBACK`: statements that start or end the
    /// transaction itself. Savepoints opened inside a transaction only nest in it.
    pub fn starts_or_ends(self) -> bool {
        matches!(
            self,
            TxControl::Begin | TxControl::Commit | TxControl::Rollback
        )
    }
}

thread_local! {
    /// True while [`transaction_control`] steps its probe on this thread.
    static PROBING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// True while this thread steps [`transaction_control`]'s `EXPLAIN` probe (the query log skips
/// it: it is not a statement anyone ran).
pub fn probing() -> bool {
    PROBING.with(|p| p.get())
}

/// Marks this thread as probing until dropped.
struct Probe;

impl Probe {
    fn start() -> Probe {
        PROBING.with(|p| p.set(true));
        Probe
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        PROBING.with(|p| p.set(false));
    }
}

/// Finalizes a raw statement when dropped.
struct RawStmt(*mut ffi::sqlite3_stmt);

impl Drop for RawStmt {
    fn drop(&mut self) {
        // SAFETY: a statement this module prepared and nothing else holds.
        unsafe {
            ffi::sqlite3_finalize(self.0);
        }
    }
}

/// The one detector of transaction control: what `sql` (its first statement) does to the
/// transaction, as SQLite compiles it — so comments, case and spelling (`END`,
/// `BEGIN EXCLUSIVE TRANSACTION`, `ROLLBACK TRANSACTION TO x`) cannot hide it. `None` for
/// every other statement, and for SQL that does not compile (the real run reports that).
///
/// The statement is compiled, and a `PRAGMA` that sets something does so when it compiles: on
/// a connection whose SQL comes from elsewhere use [`SqlGuard::transaction_control`], which
/// compiles nothing else. Here, for SQL that runs right after anyway (migrations).
///
/// How: the statement is prepared (never run). A transaction statement has no result columns;
/// only such a statement is switched to its `EXPLAIN` program (`sqlite3_stmt_explain`), whose
/// `AutoCommit` or `Savepoint` instruction says which it is. Nothing of the statement executes
/// and the connection is left as it was; the query log does not record the probe.
pub fn transaction_control(db: &Connection, sql: &str) -> Option<TxControl> {
    let text = CString::new(sql).ok()?;
    // Declared first, so it ends after the statement's finalize (which may report its end).
    let _probe = Probe::start();
    let mut raw = std::ptr::null_mut();
    // SAFETY: the live connection; `text` is NUL-terminated and outlives the call; the
    // statement is finalized by `RawStmt`.
    let rc = unsafe {
        ffi::sqlite3_prepare_v2(
            db.handle(),
            text.as_ptr(),
            -1,
            &mut raw,
            std::ptr::null_mut(),
        )
    };
    let stmt = RawStmt(raw);
    if rc != ffi::SQLITE_OK || stmt.0.is_null() {
        return None;
    }
    // SAFETY: `stmt.0` is a live prepared statement of this connection, stepped only here.
    unsafe {
        if ffi::sqlite3_stmt_isexplain(stmt.0) != 0
            || ffi::sqlite3_column_count(stmt.0) != 0
            || ffi::sqlite3_stmt_explain(stmt.0, 1) != ffi::SQLITE_OK
        {
            return None;
        }
        while ffi::sqlite3_step(stmt.0) == ffi::SQLITE_ROW {
            let op = ffi::sqlite3_column_text(stmt.0, 1);
            if op.is_null() {
                continue;
            }
            let p1 = ffi::sqlite3_column_int(stmt.0, 2);
            let p2 = ffi::sqlite3_column_int(stmt.0, 3);
            match CStr::from_ptr(op.cast()).to_bytes() {
                b"AutoCommit" => {
                    return Some(match (p1, p2) {
                        (0, _) => TxControl::Begin,
                        (_, 0) => TxControl::Commit,
                        _ => TxControl::Rollback,
                    })
                }
                b"Savepoint" => {
                    return Some(match p1 {
                        0 => TxControl::Savepoint,
                        1 => TxControl::Release,
                        _ => TxControl::RollbackTo,
                    })
                }
                _ => {}
            }
        }
    }
    None
}

/// The name of an authorizer action code, for messages.
fn action_name(code: c_int) -> &'static str {
    match code {
        ffi::SQLITE_CREATE_INDEX | ffi::SQLITE_CREATE_TEMP_INDEX => "CREATE INDEX",
        ffi::SQLITE_CREATE_TABLE | ffi::SQLITE_CREATE_TEMP_TABLE => "CREATE TABLE",
        ffi::SQLITE_CREATE_TRIGGER | ffi::SQLITE_CREATE_TEMP_TRIGGER => "CREATE TRIGGER",
        ffi::SQLITE_CREATE_VIEW | ffi::SQLITE_CREATE_TEMP_VIEW => "CREATE VIEW",
        ffi::SQLITE_CREATE_VTABLE => "CREATE VIRTUAL TABLE",
        ffi::SQLITE_DELETE => "DELETE",
        ffi::SQLITE_DROP_INDEX | ffi::SQLITE_DROP_TEMP_INDEX => "DROP INDEX",
        ffi::SQLITE_DROP_TABLE | ffi::SQLITE_DROP_TEMP_TABLE => "DROP TABLE",
        ffi::SQLITE_DROP_TRIGGER | ffi::SQLITE_DROP_TEMP_TRIGGER => "DROP TRIGGER",
        ffi::SQLITE_DROP_VIEW | ffi::SQLITE_DROP_TEMP_VIEW => "DROP VIEW",
        ffi::SQLITE_DROP_VTABLE => "DROP VIRTUAL TABLE",
        ffi::SQLITE_INSERT => "INSERT",
        ffi::SQLITE_UPDATE => "UPDATE",
        ffi::SQLITE_TRANSACTION => "transaction control",
        ffi::SQLITE_SAVEPOINT => "a savepoint",
        ffi::SQLITE_ALTER_TABLE => "ALTER TABLE",
        ffi::SQLITE_REINDEX => "REINDEX",
        ffi::SQLITE_ANALYZE => "ANALYZE",
        ffi::SQLITE_ATTACH => "ATTACH",
        ffi::SQLITE_DETACH => "DETACH",
        ffi::SQLITE_PRAGMA => "PRAGMA",
        _ => "this statement",
    }
}

/// The decision for one authorizer call: `Ok(())` to allow, `Err(why)` to refuse.
fn decide(mode: Mode, code: c_int, arg1: Option<&str>, arg2: Option<&str>) -> Result<(), String> {
    if mode == Mode::Probe {
        return match code {
            ffi::SQLITE_TRANSACTION | ffi::SQLITE_SAVEPOINT => Ok(()),
            _ => Err("only transaction control compiles in a probe".into()),
        };
    }
    match code {
        ffi::SQLITE_ATTACH => match (mode, arg1) {
            // VACUUM's own private, temporary database (nothing a name can reach).
            (Mode::Trusted, Some("")) => Ok(()),
            (_, Some("")) => Err(
                "ATTACH is refused here, even of a temporary database (which VACUUM attaches)"
                    .into(),
            ),
            _ => Err("ATTACH is refused: SQL cannot open another file or database".into()),
        },
        ffi::SQLITE_DETACH => Err("DETACH is refused".into()),
        ffi::SQLITE_PRAGMA => pragma(mode, arg1.unwrap_or(""), arg2),
        ffi::SQLITE_SELECT | ffi::SQLITE_READ | ffi::SQLITE_FUNCTION | ffi::SQLITE_RECURSIVE => {
            Ok(())
        }
        _ if mode == Mode::ReadOnly => Err(format!(
            "{} is refused: the query box runs reads only (SELECT)",
            action_name(code)
        )),
        _ => Ok(()),
    }
}

fn pragma(mode: Mode, name: &str, value: Option<&str>) -> Result<(), String> {
    let lower = name.to_ascii_lowercase();
    let is = |list: &[&str]| list.contains(&lower.as_str());
    if is(PROCESS_PRAGMAS) {
        return Err(format!(
            "PRAGMA {lower} is refused: it would change the whole process"
        ));
    }
    let allowed = match mode {
        Mode::Trusted => true,
        Mode::Probe => false,
        Mode::Remote => {
            is(REPORT_PRAGMAS) || is(SETTABLE_PRAGMAS) || (value.is_none() && is(READABLE_PRAGMAS))
        }
        Mode::ReadOnly => is(REPORT_PRAGMAS) || (value.is_none() && is(READABLE_PRAGMAS)),
    };
    if allowed {
        return Ok(());
    }
    Err(match (mode, value.is_some() && is(READABLE_PRAGMAS)) {
        (Mode::ReadOnly, true) => {
            format!("PRAGMA {lower} can only be read here (the query box runs reads only)")
        }
        (_, true) => format!(
            "PRAGMA {lower} can only be read over HTTP (a setting would outlive the request)"
        ),
        (Mode::ReadOnly, false) => {
            format!("PRAGMA {lower} is refused: the query box runs reads only")
        }
        (_, false) => format!("PRAGMA {lower} is not on the allow-list of PRAGMAs over HTTP"),
    })
}

/// A C string argument of the authorizer, if present and UTF-8.
unsafe fn arg<'a>(p: *const c_char) -> Option<&'a str> {
    if p.is_null() {
        None
    } else {
        CStr::from_ptr(p).to_str().ok()
    }
}

unsafe extern "C" fn authorize(
    ctx: *mut c_void,
    code: c_int,
    a1: *const c_char,
    a2: *const c_char,
    _a3: *const c_char,
    _a4: *const c_char,
) -> c_int {
    let r = catch_unwind(AssertUnwindSafe(|| {
        if ctx.is_null() {
            return ffi::SQLITE_DENY;
        }
        let state = &*(ctx as *const State);
        let mode = Mode::from_u8(state.mode.load(Ordering::SeqCst));
        // A name that is not UTF-8 matches no list: refused like an unknown one.
        match decide(mode, code, arg(a1), arg(a2)) {
            Ok(()) => ffi::SQLITE_OK,
            Err(why) => {
                *state.denied.lock() = Some(why);
                ffi::SQLITE_DENY
            }
        }
    }));
    r.unwrap_or(ffi::SQLITE_DENY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(config: &GuardConfig) -> (Connection, SqlGuard) {
        let c = Connection::open_in_memory().unwrap();
        let g = install(&c, config);
        (c, g)
    }

    fn refused(c: &Connection, g: &SqlGuard, sql: &str) -> String {
        let e = c.execute_batch(sql).expect_err(sql);
        g.explain(e).to_string()
    }

    #[test]
    fn attach_is_refused_in_every_mode_and_no_file_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let (c, g) = conn(&GuardConfig::default());
        for mode in [Mode::Trusted, Mode::Remote, Mode::ReadOnly] {
            let _s = g.scope(mode);
            for sql in [
                format!("ATTACH '{}' AS p", path.display()),
                format!("/**/ATTACH 'file:{}?vfs=unix' AS p", path.display()),
                format!("ATTACH '{}' || '' AS p", path.display()),
                format!("VACUUM INTO '{}'", path.display()),
            ] {
                assert_eq!(
                    refused(&c, &g, &sql),
                    "not authorized: ATTACH is refused: SQL cannot open another file or database",
                    "{mode:?} {sql}"
                );
            }
            assert!(!path.exists());
        }
        // VACUUM itself attaches a private temporary database: allowed for trusted SQL.
        c.execute_batch("CREATE TABLE t(x); VACUUM").unwrap();
    }

    #[test]
    fn host_connections_attach_nothing_and_bound_values() {
        let (c, g) = conn(&GuardConfig::host(1000));
        assert_eq!(g.max_length(), Some(1000));
        let e = c
            .query_row("SELECT zeroblob(100000000)", [], |_| Ok(()))
            .unwrap_err();
        assert_eq!(
            g.explain(e).to_string(),
            "string or blob too big: a value or row may hold at most 1000 bytes here"
        );
        let e = c.execute_batch("VACUUM").unwrap_err();
        assert_eq!(e.to_string(), "too many attached databases - max 0");
    }

    #[test]
    fn process_pragmas_are_refused_even_for_trusted_sql() {
        let (c, g) = conn(&GuardConfig::default());
        for sql in [
            "PRAGMA hard_heap_limit=1",
            "PRAGMA soft_heap_limit",
            "pragma Temp_Store_Directory='/tmp'",
            "PRAGMA data_store_directory='/tmp'",
            "SELECT * FROM pragma_hard_heap_limit",
        ] {
            let name = if sql.contains("pragma_hard") {
                "hard_heap_limit"
            } else {
                sql.split([' ', '=']).nth(1).unwrap()
            };
            assert_eq!(
                refused(&c, &g, sql),
                format!(
                    "not authorized: PRAGMA {} is refused: it would change the whole process",
                    name.to_ascii_lowercase()
                ),
                "{sql}"
            );
        }
        assert_eq!(heap_limit(), 0, "nothing changed the process's heap limit");
    }

    #[test]
    fn remote_pragmas_come_from_the_allow_list() {
        let (c, g) = conn(&GuardConfig::default());
        c.execute_batch("CREATE TABLE t(x)").unwrap();
        let _s = g.scope(Mode::Remote);
        for ok in [
            "PRAGMA table_info(t)",
            "PRAGMA user_version = 7",
            "PRAGMA foreign_keys",
            "PRAGMA integrity_check",
            "SELECT * FROM pragma_table_info('t')",
        ] {
            c.execute_batch(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        assert_eq!(
            refused(&c, &g, "PRAGMA query_only=1"),
            "not authorized: PRAGMA query_only can only be read over HTTP (a setting would outlive the request)"
        );
        assert_eq!(
            refused(&c, &g, "PRAGMA shrink_memory"),
            "not authorized: PRAGMA shrink_memory is not on the allow-list of PRAGMAs over HTTP"
        );
        drop(_s);
        // Trusted again: the program's own settings work.
        c.execute_batch("PRAGMA query_only=0").unwrap();
        assert_eq!(g.mode(), Mode::Trusted);
    }

    #[test]
    fn read_only_mode_allows_reads_only() {
        let (c, g) = conn(&GuardConfig::default());
        c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
            .unwrap();
        let _s = g.scope(Mode::ReadOnly);
        let n: i64 = c
            .query_row(
                "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM r WHERE i<3) SELECT sum(i) + (SELECT count(*) FROM t) FROM r",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 7);
        assert_eq!(
            refused(&c, &g, "DELETE FROM t"),
            "not authorized: DELETE is refused: the query box runs reads only (SELECT)"
        );
        assert_eq!(
            refused(&c, &g, "-- hi\nBEGIN"),
            "not authorized: transaction control is refused: the query box runs reads only (SELECT)"
        );
        assert_eq!(
            refused(&c, &g, "PRAGMA foreign_keys=0"),
            "not authorized: PRAGMA foreign_keys can only be read here (the query box runs reads only)"
        );
        assert_eq!(
            refused(&c, &g, "PRAGMA optimize"),
            "not authorized: PRAGMA optimize is refused: the query box runs reads only"
        );
    }

    #[test]
    fn the_guarded_detector_compiles_nothing_else() {
        let (c, g) = conn(&GuardConfig::default());
        // Compiling `PRAGMA query_only=1` sets it: the guarded probe does not compile it.
        assert_eq!(g.transaction_control(&c, "PRAGMA query_only=1"), None);
        c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
            .unwrap();
        assert_eq!(
            g.transaction_control(&c, "/**/ ROLLBACK TO a"),
            Some(TxControl::RollbackTo)
        );
        assert_eq!(g.mode(), Mode::Trusted);
        // The unguarded one compiles it, and compiling is enough.
        assert_eq!(transaction_control(&c, "PRAGMA query_only=1"), None);
        assert!(c.execute_batch("INSERT INTO t VALUES (2)").is_err());
    }

    #[test]
    fn an_actor_is_guarded_and_its_query_log_skips_the_probe() {
        let store: crate::kv::SharedStore =
            std::sync::Arc::new(crate::kv::memory::MemoryStore::new());
        let actor = super::super::Actor::start(store, "a", &Default::default()).unwrap();
        let db = actor.db();
        db.execute_batch("CREATE TABLE t(x)").unwrap();
        let before = actor.query_log().records().len();
        let g = actor.sql_guard();
        assert_eq!(g.transaction_control(db, "COMMIT"), Some(TxControl::Commit));
        assert_eq!(transaction_control(db, "INSERT INTO t VALUES (1)"), None);
        assert_eq!(actor.query_log().records().len(), before, "nothing logged");
        let e = db.execute_batch("ATTACH 'x.db' AS x").unwrap_err();
        assert_eq!(
            g.explain(e).to_string(),
            "not authorized: ATTACH is refused: SQL cannot open another file or database"
        );
        // The library's default: a trusted connection may VACUUM.
        db.execute_batch("VACUUM").unwrap();
    }

    #[test]
    fn one_detector_of_transaction_control() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE t(x)").unwrap();
        for (sql, want) in [
            ("BEGIN", Some(TxControl::Begin)),
            ("/**/ begin exclusive transaction", Some(TxControl::Begin)),
            ("-- c\nCOMMIT", Some(TxControl::Commit)),
            ("END", Some(TxControl::Commit)),
            ("ROLLBACK", Some(TxControl::Rollback)),
            ("SAVEPOINT a", Some(TxControl::Savepoint)),
            ("RELEASE a", Some(TxControl::Release)),
            ("ROLLBACK TRANSACTION TO a", Some(TxControl::RollbackTo)),
            ("SELECT 1", None),
            ("INSERT INTO t VALUES (1)", None),
            ("EXPLAIN BEGIN", None),
            ("BEGN", None),
            ("PRAGMA user_version", None),
        ] {
            assert_eq!(transaction_control(&c, sql), want, "{sql}");
        }
        assert!(c.is_autocommit(), "nothing ran");
        let n: i64 = c
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
    }
}
