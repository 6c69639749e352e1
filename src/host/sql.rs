//! SQL over JSON: request values to SQLite parameters and result cells back to JSON, and one
//! statement (or a batch of them) run on an actor's connection.
//!
//! Why it exists: the HTTP routes speak JSON and the actor speaks SQLite; this module is the one
//! place where the mapping is defined (integers, floats, text and null as themselves, blobs as
//! `{"base64": "…"}` both ways, non-finite reals as `"Inf"`/`"-Inf"`/`null`), and where a
//! statement's rows, column names and change count are collected.

use base64::Engine;
use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::Connection;
use serde_json::{json, Value};

/// One statement of a request: its SQL and its positional parameters.
#[derive(Debug, Clone)]
pub struct StatementRequest {
    /// The SQL text (exactly one statement).
    pub sql: String,
    /// The `?`/`?NNN` parameters in order.
    pub params: Vec<SqlValue>,
}

/// Why a request body could not be read as statements (a 400).
pub type BadRequest = String;

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// A JSON parameter as an SQLite value: null, integer (an i64), float, text, or
/// `{"base64": "…"}` for a blob. Anything else (booleans, arrays, other objects, integers
/// outside i64) is an error naming the parameter.
pub fn param_from_json(v: &Value, index: usize) -> Result<SqlValue, BadRequest> {
    match v {
        Value::Null => Ok(SqlValue::Null),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(SqlValue::Integer(i))
            } else if n.is_u64() {
                Err(format!(
                    "params[{index}]: integer {n} is outside the 64-bit signed range"
                ))
            } else if let Some(f) = n.as_f64() {
                Ok(SqlValue::Real(f))
            } else {
                Err(format!("params[{index}]: unsupported number {n}"))
            }
        }
        Value::String(s) => Ok(SqlValue::Text(s.clone())),
        Value::Object(map) if map.len() == 1 => match map.get("base64") {
            Some(Value::String(s)) => b64()
                .decode(s.as_bytes())
                .map(SqlValue::Blob)
                .map_err(|e| format!("params[{index}]: invalid base64: {e}")),
            _ => Err(format!(
                "params[{index}]: an object parameter must be {{\"base64\": \"…\"}}"
            )),
        },
        Value::Bool(_) => Err(format!(
            "params[{index}]: booleans are not SQLite values; use 0 or 1"
        )),
        _ => Err(format!(
            "params[{index}]: expected null, a number, a string or {{\"base64\": \"…\"}}"
        )),
    }
}

/// Reads one statement object `{"sql": "…", "params": [...]}` (`params` optional).
pub fn statement_from_json(v: &Value, what: &str) -> Result<StatementRequest, BadRequest> {
    let Value::Object(map) = v else {
        return Err(format!("{what} must be a JSON object"));
    };
    for key in map.keys() {
        if key != "sql" && key != "params" {
            return Err(format!(
                "{what}: unknown field {key:?} (expected sql, params)"
            ));
        }
    }
    let sql = match map.get("sql") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(format!("{what}: \"sql\" must be a string")),
        None => return Err(format!("{what}: missing field \"sql\"")),
    };
    let params = match map.get("params") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, p)| param_from_json(p, i).map_err(|e| format!("{what}: {e}")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(format!("{what}: \"params\" must be an array")),
    };
    Ok(StatementRequest { sql, params })
}

/// Reads a batch body `{"statements": [ {…}, … ]}` (at least one statement).
pub fn batch_from_json(v: &Value) -> Result<Vec<StatementRequest>, BadRequest> {
    let Value::Object(map) = v else {
        return Err("the body must be a JSON object".into());
    };
    for key in map.keys() {
        if key != "statements" {
            return Err(format!("unknown field {key:?} (expected statements)"));
        }
    }
    let Some(Value::Array(items)) = map.get("statements") else {
        return Err("\"statements\" must be an array of {\"sql\", \"params\"} objects".into());
    };
    if items.is_empty() {
        return Err("\"statements\" is empty".into());
    }
    items
        .iter()
        .enumerate()
        .map(|(i, s)| statement_from_json(s, &format!("statements[{i}]")))
        .collect()
}

/// A result cell as JSON (see the module comment).
pub fn cell_json(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => json!(i),
        ValueRef::Real(f) if f.is_finite() => json!(f),
        ValueRef::Real(f) if f.is_nan() => Value::Null,
        ValueRef::Real(f) => json!(if f > 0.0 { "Inf" } else { "-Inf" }),
        ValueRef::Text(t) => json!(String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => json!({ "base64": b64().encode(b) }),
    }
}

/// How many bytes of rows an answer may still hold: the `rows` arrays of its statements, counted
/// as the JSON the host sends (brackets, commas, quotes and escapes included).
#[derive(Debug, Clone)]
pub struct ResultBudget {
    limit: usize,
    used: usize,
}

impl ResultBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        ResultBudget { limit, used: 0 }
    }

    /// Bytes counted so far.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Counts `n` more bytes; false (and nothing counted) when they do not fit.
    fn take(&mut self, n: usize) -> bool {
        match self.used.checked_add(n) {
            Some(total) if total <= self.limit => {
                self.used = total;
                true
            }
            _ => false,
        }
    }

    /// The error of an answer over the budget.
    fn exceeded(&self, rolled_back: bool) -> rusqlite::Error {
        let tail = if rolled_back {
            "; the statement was stopped and rolled back"
        } else {
            "; the statement was stopped"
        };
        rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_TOOBIG),
            Some(format!(
                "the answer's rows are over the limit of {} bytes (--max-result-bytes): ask for fewer rows or smaller values{tail}",
                self.limit
            )),
        )
    }
}

/// Counts the bytes written to it.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The length of `v` as compact JSON.
fn json_len(v: &Value) -> usize {
    let mut n = ByteCount(0);
    // Writing to a counter cannot fail.
    let _ = serde_json::to_writer(&mut n, v);
    n.0
}

/// Bytes of a blob cell as JSON (`{"base64":"…"}`), known before it is encoded.
fn blob_json_len(bytes: usize) -> usize {
    r#"{"base64":""}"#.len() + bytes.div_ceil(3) * 4
}

/// Runs one statement to completion: `{"columns", "rows", "changes"}`. `changes` counts the
/// rows the statement itself inserted, updated or deleted (0 for reads).
///
/// The rows count against `budget`: the first cell that does not fit stops the statement with
/// an `SQLITE_TOOBIG` error (see [`is_too_big`]) before the cell is encoded; a statement that
/// writes is interrupted first, so SQLite rolls its changes back (an explicit transaction
/// around it is rolled back whole).
pub fn run_statement(
    db: &Connection,
    st: &StatementRequest,
    budget: &mut ResultBudget,
) -> rusqlite::Result<Value> {
    if let Err(nul) = std::ffi::CString::new(st.sql.as_str()) {
        return Err(rusqlite::Error::NulError(nul));
    }
    let before = db.total_changes();
    let mut stmt = db.prepare(&st.sql)?;
    let columns: Vec<String> = stmt.column_names().map(String::from).collect();
    let readonly = stmt.readonly();
    let expected = stmt.parameter_count();
    if expected != st.params.len() {
        return Err(rusqlite::Error::InvalidParameterCount(
            st.params.len(),
            expected,
        ));
    }
    for (i, p) in st.params.iter().enumerate() {
        stmt.raw_bind_parameter(i + 1, p)?;
    }
    let mut rows = Vec::new();
    // `[` and `]` of the rows array.
    let mut over = !budget.take(2);
    let mut stepped = false;
    {
        let mut q = stmt.raw_query();
        'rows: while !over {
            let Some(row) = q.next()? else { break };
            stepped = true;
            // `[` `]` of the row, and the comma before it.
            if !budget.take(2 + usize::from(!rows.is_empty())) {
                over = true;
                break;
            }
            let mut cells = Vec::with_capacity(columns.len());
            for i in 0..columns.len() {
                let v = row.get_ref(i)?;
                let comma = usize::from(i > 0);
                let fits = match v {
                    ValueRef::Blob(b) => budget.take(comma + blob_json_len(b.len())),
                    _ => true,
                };
                if !fits {
                    over = true;
                    break 'rows;
                }
                let cell = cell_json(v);
                if !matches!(v, ValueRef::Blob(_)) && !budget.take(comma + json_len(&cell)) {
                    over = true;
                    break 'rows;
                }
                cells.push(cell);
            }
            rows.push(Value::Array(cells));
        }
        if over && stepped && !readonly {
            // Stop the write so SQLite rolls it back: a reset alone would commit it.
            // SAFETY: the live connection of `db`; the flag is cleared by SQLite when the next
            // statement starts with none running.
            unsafe { rusqlite::ffi::sqlite3_interrupt(db.handle()) };
            while let Ok(Some(_)) = q.next() {}
        }
    }
    if over {
        return Err(budget.exceeded(stepped && !readonly));
    }
    drop(stmt);
    let changes = if readonly || db.total_changes() == before {
        0
    } else {
        db.changes()
    };
    Ok(json!({ "columns": columns, "rows": rows, "changes": changes }))
}

/// SQLite's message for a failed statement, without rusqlite's echo of the SQL.
pub fn error_text(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqlInputError { msg, .. } => msg.clone(),
        rusqlite::Error::SqliteFailure(_, Some(msg)) => msg.clone(),
        rusqlite::Error::MultipleStatement => {
            "one statement per request: use /batch for several".into()
        }
        rusqlite::Error::InvalidParameterCount(given, expected) => {
            format!("the statement takes {expected} parameter(s); {given} given")
        }
        e => e.to_string(),
    }
}

/// True when SQLite stopped the statement because of `sqlite3_interrupt`.
pub fn is_interrupt(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::OperationInterrupted)
}

/// True when the statement or its answer was too big: a value over `SQLITE_LIMIT_LENGTH`, or
/// rows over the [`ResultBudget`].
pub fn is_too_big(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::TooBig)
}

/// True for an I/O error from the VFS (the store failed underneath SQLite).
pub fn is_io_error(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::SystemIoFailure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_round_trip_through_base64() {
        let v = param_from_json(&json!({"base64": "AAEC"}), 0).unwrap();
        assert_eq!(v, SqlValue::Blob(vec![0, 1, 2]));
        assert_eq!(
            cell_json(ValueRef::Blob(&[0, 1, 2])),
            json!({"base64": "AAEC"})
        );
        assert!(param_from_json(&json!({"base64": "!!"}), 0).is_err());
        assert!(param_from_json(&json!(true), 0).is_err());
        assert!(param_from_json(&json!(u64::MAX), 0).is_err());
    }

    fn st(sql: &str) -> StatementRequest {
        StatementRequest {
            sql: sql.into(),
            params: Vec::new(),
        }
    }

    #[test]
    fn the_result_budget_counts_the_rows_as_sent() {
        let db = Connection::open_in_memory().unwrap();
        // `[["aaa…"]]`: 6 bytes around the text.
        let mut b = ResultBudget::new(100);
        let v = run_statement(&db, &st("SELECT printf('%.*c', 94, 'a')"), &mut b).unwrap();
        assert_eq!(b.used(), 100);
        assert_eq!(v["rows"].to_string().len(), 100);
        let mut b = ResultBudget::new(100);
        let e = run_statement(&db, &st("SELECT printf('%.*c', 95, 'a')"), &mut b).unwrap_err();
        assert!(is_too_big(&e));
        assert_eq!(
            error_text(&e),
            "the answer's rows are over the limit of 100 bytes (--max-result-bytes): ask for fewer rows or smaller values; the statement was stopped"
        );
        // Several rows, cells of every kind, escapes: the count is the JSON's length.
        let sql = "SELECT 1, 2.5, NULL, x'00ff10', 'q\"\n' UNION ALL SELECT -7, 0.0, 'é', x'', ''";
        let mut b = ResultBudget::new(1 << 20);
        let v = run_statement(&db, &st(sql), &mut b).unwrap();
        assert_eq!(b.used(), v["rows"].to_string().len());
        // A budget spans the statements of a batch.
        let mut b = ResultBudget::new(20);
        run_statement(&db, &st("SELECT 12345678"), &mut b).unwrap();
        assert_eq!(b.used(), 12);
        assert!(run_statement(&db, &st("SELECT 12345678"), &mut b).is_err());
    }

    #[test]
    fn a_write_whose_answer_is_too_big_is_rolled_back() {
        let db = Connection::open_in_memory().unwrap();
        db.execute_batch("CREATE TABLE t(x)").unwrap();
        let mut b = ResultBudget::new(1000);
        let e = run_statement(
            &db,
            &st("WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 1000) INSERT INTO t SELECT i FROM c RETURNING x"),
            &mut b,
        )
        .unwrap_err();
        assert!(
            error_text(&e).ends_with("the statement was stopped and rolled back"),
            "{e}"
        );
        let n: i64 = db
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
        // The connection works normally afterwards (the interrupt does not linger).
        let mut b = ResultBudget::new(1000);
        run_statement(&db, &st("INSERT INTO t VALUES (1) RETURNING x"), &mut b).unwrap();
        assert!(db.is_autocommit());
    }
}
