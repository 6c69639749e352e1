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

/// Runs one statement to completion: `{"columns", "rows", "changes"}`. `changes` counts the
/// rows the statement itself inserted, updated or deleted (0 for reads).
pub fn run_statement(db: &Connection, st: &StatementRequest) -> rusqlite::Result<Value> {
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
    {
        let mut q = stmt.raw_query();
        while let Some(row) = q.next()? {
            let mut cells = Vec::with_capacity(columns.len());
            for i in 0..columns.len() {
                cells.push(cell_json(row.get_ref(i)?));
            }
            rows.push(Value::Array(cells));
        }
    }
    drop(stmt);
    let changes = if readonly || db.total_changes() == before {
        0
    } else {
        db.changes()
    };
    Ok(json!({ "columns": columns, "rows": rows, "changes": changes }))
}

/// True when `sql` controls transactions (`BEGIN`, `COMMIT`, `END`, `ROLLBACK`, `SAVEPOINT`,
/// `RELEASE`), as SQLite itself compiles it: its `EXPLAIN` program has an `AutoCommit` or a
/// `Savepoint` opcode. SQL that does not compile is left for the real run to report (false).
pub fn is_transaction_control(db: &Connection, sql: &str) -> bool {
    let Ok(mut stmt) = db.prepare(&format!("EXPLAIN {sql}")) else {
        return false;
    };
    let mut rows = stmt.raw_query();
    while let Ok(Some(row)) = rows.next() {
        if let Ok(ValueRef::Text(op)) = row.get_ref(1) {
            if op == b"AutoCommit" || op == b"Savepoint" {
                return true;
            }
        }
    }
    false
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
}
