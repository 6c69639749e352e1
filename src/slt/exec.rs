//! Running one record's SQL on a connection through SQLite's C API, the way the reference
//! runner does: a statement record runs every statement in its text (like `sqlite3_exec`); a
//! query record prepares its one statement once and reads each value with SQLite's own
//! conversions (`sqlite3_column_int64`, `sqlite3_column_double`, `sqlite3_column_text`), so
//! printed values are exactly what the reference prints.
//!
//! rusqlite's typed getters refuse lossy conversions (a real read as an integer), which the
//! format relies on; hence the C API here, wrapped so that no statement handle can leak.

use std::os::raw::{c_char, c_int};
use std::ptr;

use rusqlite::ffi;
use rusqlite::Connection;

use super::format::Values;
use super::parser::ColumnType;

/// A prepared statement, finalized on drop.
struct Stmt(*mut ffi::sqlite3_stmt);

impl Drop for Stmt {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the handle came from sqlite3_prepare_v2 and is finalized exactly once.
            unsafe {
                ffi::sqlite3_finalize(self.0);
            }
        }
    }
}

/// Why a record's SQL failed: SQLite's result code (extended, when SQLite gave one) and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqlError {
    /// SQLite's (extended) result code; `None` for the runner's own checks (column count, more
    /// than one statement in a query).
    pub code: Option<i32>,
    /// The message.
    pub message: String,
}

impl SqlError {
    fn sqlite(db: *mut ffi::sqlite3, rc: c_int) -> Self {
        SqlError {
            code: Some(rc),
            message: errmsg(db),
        }
    }

    fn runner(message: impl Into<String>) -> Self {
        SqlError {
            code: None,
            message: message.into(),
        }
    }

    /// True when the error says the storage or the engine failed (I/O, corruption, out of
    /// memory, full, cannot open, not a database, locking, internal, misuse) rather than that
    /// the SQL is wrong. Such an error never satisfies `statement error`.
    pub fn is_storage_fault(&self) -> bool {
        matches!(
            self.code.map(|c| c & 0xff),
            Some(
                ffi::SQLITE_IOERR
                    | ffi::SQLITE_CORRUPT
                    | ffi::SQLITE_NOMEM
                    | ffi::SQLITE_FULL
                    | ffi::SQLITE_CANTOPEN
                    | ffi::SQLITE_NOTADB
                    | ffi::SQLITE_PROTOCOL
                    | ffi::SQLITE_BUSY
                    | ffi::SQLITE_LOCKED
                    | ffi::SQLITE_NOLFS
                    | ffi::SQLITE_INTERNAL
                    | ffi::SQLITE_MISUSE
            )
        )
    }
}

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Some(code) if self.is_storage_fault() => {
                write!(f, "{} (SQLite code {code})", self.message)
            }
            _ => f.write_str(&self.message),
        }
    }
}

fn errmsg(db: *mut ffi::sqlite3) -> String {
    // SAFETY: db is an open connection; errmsg returns a NUL-terminated string it owns.
    unsafe {
        let p = ffi::sqlite3_errmsg(db);
        if p.is_null() {
            return "unknown SQLite error".into();
        }
        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// Prepares the first statement of `sql[offset..]`; returns it (null for only whitespace or
/// comments) and the offset where the rest begins.
fn prepare(db: *mut ffi::sqlite3, sql: &str, offset: usize) -> Result<(Stmt, usize), SqlError> {
    let rest = &sql.as_bytes()[offset..];
    let len =
        c_int::try_from(rest.len()).map_err(|_| SqlError::runner("SQL text longer than 2 GiB"))?;
    let mut stmt = ptr::null_mut();
    let mut tail: *const c_char = ptr::null();
    // SAFETY: we pass the text's pointer and exact length (no NUL needed); tail points into it.
    let rc =
        unsafe { ffi::sqlite3_prepare_v2(db, rest.as_ptr().cast(), len, &mut stmt, &mut tail) };
    let stmt = Stmt(stmt);
    if rc != ffi::SQLITE_OK {
        return Err(SqlError::sqlite(db, rc));
    }
    let consumed = if tail.is_null() {
        rest.len()
    } else {
        // SAFETY: SQLite sets tail to a position inside (or at the end of) the text we gave.
        (unsafe { tail.offset_from(rest.as_ptr().cast()) }) as usize
    };
    Ok((stmt, offset + consumed.min(rest.len())))
}

/// Runs every statement in `sql`, stepping each to completion. Stops at the first error and
/// returns SQLite's code and message.
pub fn execute(conn: &Connection, sql: &str) -> Result<(), SqlError> {
    // SAFETY: the handle stays valid while `conn` is borrowed; we only use it in this call.
    let db = unsafe { conn.handle() };
    let mut offset = 0;
    while offset < sql.len() {
        let (stmt, next) = prepare(db, sql, offset)?;
        if next <= offset && stmt.0.is_null() {
            break;
        }
        offset = next;
        if stmt.0.is_null() {
            continue;
        }
        loop {
            // SAFETY: stmt is a valid prepared statement.
            match unsafe { ffi::sqlite3_step(stmt.0) } {
                ffi::SQLITE_ROW => continue,
                ffi::SQLITE_DONE => break,
                rc => return Err(SqlError::sqlite(db, rc)),
            }
        }
    }
    Ok(())
}

/// True when `s` holds only whitespace, semicolons and SQL comments.
fn only_trivia(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_whitespace() || b[i] == b';' {
            i += 1;
        } else if b[i..].starts_with(b"--") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            match s[i + 2..].find("*/") {
                Some(end) => i += 2 + end + 2,
                None => return true,
            }
        } else {
            return false;
        }
    }
    true
}

/// Runs the query `sql` (one statement) and appends its printed values, row after row, to
/// `out`.
///
/// Fails with a message when the SQL does not prepare, holds more than one statement, or
/// returns a number of columns other than `types.len()`. An error while stepping ends the
/// result where it happened, as in the reference runner (the corpus relies on it: a `sum()`
/// overflow expects an empty result), but only for plain SQL errors (`SQLITE_ERROR`), which
/// come back as `Ok(Some(message))`; any other error (I/O, corruption, out of memory, busy) is
/// a failure, so a storage fault can never pass as an empty result.
pub fn query(
    conn: &Connection,
    sql: &str,
    types: &[ColumnType],
    out: &mut Values,
) -> Result<Option<String>, SqlError> {
    // SAFETY: the handle stays valid while `conn` is borrowed; we only use it in this call.
    let db = unsafe { conn.handle() };
    let (stmt, next) = prepare(db, sql, 0)?;
    if stmt.0.is_null() {
        return Err(SqlError::runner("query record holds no SQL statement"));
    }
    if !only_trivia(&sql[next..]) {
        return Err(SqlError::runner(
            "query record holds more than one SQL statement",
        ));
    }
    // SAFETY: stmt is a valid prepared statement.
    let columns = unsafe { ffi::sqlite3_column_count(stmt.0) };
    if usize::try_from(columns).ok() != Some(types.len()) {
        return Err(SqlError::runner(format!(
            "query returns {columns} column(s) but its type string names {}",
            types.len()
        )));
    }
    loop {
        // SAFETY: stmt is a valid prepared statement.
        match unsafe { ffi::sqlite3_step(stmt.0) } {
            ffi::SQLITE_ROW => {}
            ffi::SQLITE_DONE => return Ok(None),
            rc if rc & 0xff == ffi::SQLITE_ERROR => return Ok(Some(errmsg(db))),
            rc => return Err(SqlError::sqlite(db, rc)),
        }
        for (i, ty) in types.iter().enumerate() {
            let col = i as c_int;
            // SAFETY: stmt has a current row and `col` is below the column count. The text
            // pointer and its length stay valid until the next call on this column.
            unsafe {
                if ffi::sqlite3_column_type(stmt.0, col) == ffi::SQLITE_NULL {
                    out.push_null();
                    continue;
                }
                match ty {
                    ColumnType::Integer => out.push_integer(ffi::sqlite3_column_int64(stmt.0, col)),
                    ColumnType::Real => out.push_real(ffi::sqlite3_column_double(stmt.0, col)),
                    ColumnType::Text => {
                        let p = ffi::sqlite3_column_text(stmt.0, col);
                        let n = ffi::sqlite3_column_bytes(stmt.0, col);
                        if p.is_null() {
                            // Out of memory converting the value: report it, never guess.
                            return Err(SqlError::sqlite(db, ffi::SQLITE_NOMEM));
                        }
                        out.push_text(std::slice::from_raw_parts(p, n.max(0) as usize));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_run_all_and_queries_print_with_sqlite_conversions() {
        let conn = Connection::open_in_memory().unwrap();
        execute(
            &conn,
            "CREATE TABLE t(a, b); -- two statements\nINSERT INTO t VALUES(1.9, '12abc'), (-2.5, x'00'), (NULL, '');",
        )
        .unwrap();
        let mut v = Values::new();
        query(
            &conn,
            "SELECT a, a, b, b FROM t ORDER BY rowid;",
            &[
                ColumnType::Integer,
                ColumnType::Real,
                ColumnType::Integer,
                ColumnType::Text,
            ],
            &mut v,
        )
        .unwrap();
        let got: Vec<&str> = (0..v.len()).map(|i| v.get(i)).collect();
        assert_eq!(
            got,
            [
                "1", "1.900", "12", "12abc", "-2", "-2.500", "0", "(empty)", "NULL", "NULL", "0",
                "(empty)"
            ]
        );
    }

    #[test]
    fn query_errors() {
        let conn = Connection::open_in_memory().unwrap();
        let mut v = Values::new();
        let e = query(&conn, "SELECT 1, 2", &[ColumnType::Integer], &mut v).unwrap_err();
        assert_eq!(
            e.message,
            "query returns 2 column(s) but its type string names 1"
        );
        let e = query(&conn, "SELECT 1; SELECT 2", &[ColumnType::Integer], &mut v).unwrap_err();
        assert_eq!(e.message, "query record holds more than one SQL statement");
        let e = query(&conn, "SELECT * FROM nope", &[ColumnType::Integer], &mut v).unwrap_err();
        assert_eq!(e.message, "no such table: nope");
        assert_eq!(e.code, Some(ffi::SQLITE_ERROR));
        assert!(!e.is_storage_fault());
        assert!(query(
            &conn,
            "SELECT 1; -- done\n/* c */",
            &[ColumnType::Integer],
            &mut v
        )
        .is_ok());
        let stopped = query(
            &conn,
            "SELECT 1 UNION ALL SELECT abs(-9223372036854775807 - 1)",
            &[ColumnType::Integer],
            &mut v,
        );
        assert_eq!(stopped, Ok(Some("integer overflow".to_string())));
        let e = execute(&conn, "CREATE TABLE a(x); CREATE TABLE a(x)").unwrap_err();
        assert_eq!(e.message, "table a already exists");
        let e = execute(
            &conn,
            "CREATE TABLE u(x UNIQUE); INSERT INTO u VALUES(1),(1)",
        )
        .unwrap_err();
        assert_eq!(e.code, Some(ffi::SQLITE_CONSTRAINT_UNIQUE));
        assert!(!e.is_storage_fault());
        let io = SqlError {
            code: Some(ffi::SQLITE_IOERR_READ),
            message: "disk I/O error".into(),
        };
        assert!(io.is_storage_fault());
        assert_eq!(io.to_string(), "disk I/O error (SQLite code 266)");
    }
}
