//! `kvsqlite run FILE…`: wakes (or creates) an actor, runs SQL files on its database statement
//! by statement, prints what the queries return, and puts the actor back to sleep.
//!
//! - Migrations: `--migrations DIR`, by default `sql/migrations` when that directory exists in
//!   the current directory (else none). A directory that cannot be loaded is exit 2.
//! - The files are all read and split ([`statements::split`]) before the actor wakes: a missing,
//!   unreadable or non-UTF-8 file is exit 2 and nothing runs.
//! - Each statement runs on the actor's one connection, so explicit `BEGIN`/`COMMIT` work.
//!   A statement that returns columns prints an aligned table (header, a dash line, rows;
//!   `NULL`, blobs as `x'…'` cut after 32 bytes with their size, control characters escaped),
//!   tables separated by a blank line; other statements print nothing (`--json` shows their
//!   `changes`). `--json` prints one object per statement per line:
//!   `{"file","line","sql","columns","rows","changes"}`, blobs as `{"base64": "…"}`, infinite
//!   reals as the strings `"Inf"`/`"-Inf"`.
//! - A failing statement stops the run: `FILE:LINE: message` on standard error, exit 1. A
//!   transaction it leaves open is rolled back (said on the same line); so is a transaction a
//!   file leaves open at its end (`kvsqlite run: FILE: …`, exit 1).
//! - Then the metrics document goes to `--metrics-json FILE` (if given), and the actor sleeps;
//!   a sleep that fails (an actor that moved: another instance wrote since this one woke) is
//!   reported as `kvsqlite run: …`, exit 1.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use kvsqlite::actor::statements::{self, Statement};
use kvsqlite::actor::{is_moved_error, migrations, Actor, ActorConfig, ActorError};
use rusqlite::types::ValueRef;
use rusqlite::Connection;
use serde_json::{json, Value};

use super::{output_error, GlobalArgs, Stop};

/// The default migrations directory, used when it exists.
const DEFAULT_MIGRATIONS: &str = "sql/migrations";

/// Bytes of a blob shown in a table before it is cut.
const BLOB_SHOWN_BYTES: usize = 32;

/// Arguments of `kvsqlite run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The actor to wake (created when the store has never held it).
    #[arg(long, value_name = "ID", default_value = "main")]
    actor: String,
    /// Migrations directory (NNNN_name.sql files) [default: sql/migrations when it exists, else
    /// none]
    #[arg(long, value_name = "DIR")]
    migrations: Option<PathBuf>,
    /// Write the actor's metrics document (JSON) to FILE after the run.
    #[arg(long = "metrics-json", value_name = "FILE")]
    metrics_json: Option<PathBuf>,
    /// Print one JSON object per statement per line instead of tables.
    #[arg(long)]
    json: bool,
    /// How much history the actor keeps (`--retention`, `--retention-bytes`).
    #[command(flatten)]
    retention: super::history::RetentionArgs,
    /// SQL files, run in order.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
}

/// Runs `kvsqlite run`.
pub fn run(global: &GlobalArgs, args: RunArgs) -> i32 {
    super::finish("run", run_files(global, &args))
}

/// A file read and split.
struct SqlFile {
    name: String,
    statements: Vec<Statement>,
}

fn read_file(path: &Path) -> Result<SqlFile, String> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {name}: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|_| format!("{name} is not UTF-8 text"))?;
    Ok(SqlFile {
        statements: statements::split(&text),
        name,
    })
}

fn load_migrations(arg: Option<&Path>) -> Result<Option<Vec<migrations::Migration>>, String> {
    let dir = match arg {
        Some(dir) => dir.to_path_buf(),
        None if Path::new(DEFAULT_MIGRATIONS).is_dir() => PathBuf::from(DEFAULT_MIGRATIONS),
        None => return Ok(None),
    };
    migrations::load_dir(&dir)
        .map(Some)
        .map_err(|e| format!("migrations {}: {e}", dir.display()))
}

fn run_files(global: &GlobalArgs, args: &RunArgs) -> Result<i32, Stop> {
    let list = load_migrations(args.migrations.as_deref())?;
    let files = args
        .files
        .iter()
        .map(|p| read_file(p))
        .collect::<Result<Vec<_>, _>>()?;
    let store = global.open_store()?;
    let mut config = match list {
        Some(list) => ActorConfig::default().with_migrations(list),
        None => ActorConfig::default(),
    };
    config.retention = args.retention.options();
    let actor = Actor::start(store, &args.actor, &config)
        .map_err(|e| format!("cannot start actor {:?}: {e}", args.actor))?;

    let outcome = execute(&actor, &files, args.json);
    let mut code = match &outcome {
        Ok(c) => *c,
        Err(_) => 2,
    };
    let mut stop = outcome.err();
    if let Some(path) = &args.metrics_json {
        let doc = actor.metrics().to_json_string() + "\n";
        if let Err(e) = std::fs::write(path, doc) {
            eprintln!(
                "kvsqlite run: cannot write the metrics to {}: {e}",
                path.display()
            );
            code = 2;
        }
    }
    if let Err(e) = actor.sleep() {
        match e {
            ActorError::Moved => {
                eprintln!("kvsqlite run: the actor did not sleep cleanly: {e}; wake it again")
            }
            e => eprintln!("kvsqlite run: the actor did not sleep cleanly: {e}"),
        }
        code = code.max(1);
    }
    match stop.take() {
        Some(Stop::Error(msg)) => {
            eprintln!("kvsqlite run: {msg}");
            Ok(2)
        }
        Some(Stop::OutputClosed) => Err(Stop::OutputClosed),
        None => Ok(code),
    }
}

/// Runs every statement of every file; returns 0, or 1 after reporting a failure.
fn execute(actor: &Actor, files: &[SqlFile], json: bool) -> Result<i32, Stop> {
    let db: &Connection = actor.db();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut tables = 0usize;
    for file in files {
        for st in &file.statements {
            let result = match run_statement(db, &st.sql) {
                Ok(r) => r,
                Err(e) => {
                    out.flush().map_err(output_error)?;
                    let msg = error_text(&actor.sql_guard().explain(e));
                    let rolled = rollback_open(db);
                    eprintln!("{}:{}: {msg}{rolled}", file.name, st.line);
                    return Ok(1);
                }
            };
            if json {
                let line = json!({
                    "file": file.name,
                    "line": st.line,
                    "sql": st.sql,
                    "columns": result.columns,
                    "rows": result.rows.iter().map(|r| r.iter().map(cell_json).collect::<Vec<_>>()).collect::<Vec<_>>(),
                    "changes": result.changes,
                });
                writeln!(out, "{line}").map_err(output_error)?;
            } else if !result.columns.is_empty() {
                if tables > 0 {
                    writeln!(out).map_err(output_error)?;
                }
                tables += 1;
                out.write_all(table(&result).as_bytes())
                    .map_err(output_error)?;
            }
            out.flush().map_err(output_error)?;
        }
        if !db.is_autocommit() {
            let rolled = rollback_open(db);
            eprintln!(
                "kvsqlite run: {}: the file ended inside a transaction{rolled}",
                file.name
            );
            return Ok(1);
        }
    }
    Ok(0)
}

/// SQLite's message for a failed statement, without rusqlite's echo of the SQL.
fn error_text(e: &rusqlite::Error) -> String {
    if is_moved_error(e) {
        return ActorError::Moved.to_string();
    }
    match e {
        rusqlite::Error::SqlInputError { msg, .. } => msg.clone(),
        rusqlite::Error::SqliteFailure(_, Some(msg)) => msg.clone(),
        e => e.to_string(),
    }
}

/// Rolls back a transaction left open; says so (for the end of an error line).
fn rollback_open(db: &Connection) -> String {
    if db.is_autocommit() {
        return String::new();
    }
    match db.execute_batch("ROLLBACK") {
        Ok(()) => " (the open transaction was rolled back)".into(),
        Err(e) => format!(" (rolling back the open transaction failed: {e})"),
    }
}

/// One value of a result row.
#[derive(Clone, Debug, PartialEq)]
enum Cell {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<ValueRef<'_>> for Cell {
    fn from(v: ValueRef<'_>) -> Self {
        match v {
            ValueRef::Null => Cell::Null,
            ValueRef::Integer(i) => Cell::Integer(i),
            ValueRef::Real(f) => Cell::Real(f),
            ValueRef::Text(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Cell::Blob(b.to_vec()),
        }
    }
}

/// What one statement returned.
struct StatementResult {
    columns: Vec<String>,
    rows: Vec<Vec<Cell>>,
    changes: u64,
}

/// Runs one statement to completion, keeping its rows. `changes` is the rows it inserted,
/// updated or deleted (not counting triggers'), 0 for statements that change nothing.
fn run_statement(db: &Connection, sql: &str) -> rusqlite::Result<StatementResult> {
    if let Err(nul) = std::ffi::CString::new(sql) {
        return Err(rusqlite::Error::NulError(nul));
    }
    let before = db.total_changes();
    let mut stmt = db.prepare(sql)?;
    let columns: Vec<String> = stmt.column_names().map(String::from).collect();
    let readonly = stmt.readonly();
    let mut rows = Vec::new();
    {
        let mut q = stmt.raw_query();
        while let Some(row) = q.next()? {
            let mut cells = Vec::with_capacity(columns.len());
            for i in 0..columns.len() {
                cells.push(Cell::from(row.get_ref(i)?));
            }
            rows.push(cells);
        }
    }
    drop(stmt);
    let changes = if readonly || db.total_changes() == before {
        0
    } else {
        db.changes()
    };
    Ok(StatementResult {
        columns,
        rows,
        changes,
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A real as SQLite's shell shows it: integral values keep a `.0`.
fn real_text(f: f64) -> String {
    if f.is_infinite() {
        if f > 0.0 { "Inf" } else { "-Inf" }.to_string()
    } else if f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{f:.1}")
    } else {
        format!("{f}")
    }
}

fn cell_text(c: &Cell) -> String {
    match c {
        Cell::Null => "NULL".into(),
        Cell::Integer(i) => i.to_string(),
        Cell::Real(f) => real_text(*f),
        Cell::Text(t) => escape_controls(t),
        Cell::Blob(b) if b.len() <= BLOB_SHOWN_BYTES => format!("x'{}'", hex(b)),
        Cell::Blob(b) => format!("x'{}'… ({} bytes)", hex(&b[..BLOB_SHOWN_BYTES]), b.len()),
    }
}

/// Text with its control characters escaped (`\n`, `\t`, `\r`, others as `\u{…}`), so each
/// row stays on one line.
fn escape_controls(t: &str) -> String {
    let mut s = String::with_capacity(t.len());
    for c in t.chars() {
        match c {
            '\n' => s.push_str("\\n"),
            '\t' => s.push_str("\\t"),
            '\r' => s.push_str("\\r"),
            c if c.is_control() => s.push_str(&c.escape_unicode().to_string()),
            c => s.push(c),
        }
    }
    s
}

fn cell_json(c: &Cell) -> Value {
    match c {
        Cell::Null => Value::Null,
        Cell::Integer(i) => json!(i),
        Cell::Real(f) if f.is_finite() => json!(f),
        Cell::Real(f) => json!(real_text(*f)),
        Cell::Text(t) => json!(t),
        Cell::Blob(b) => json!({ "base64": base64(b) }),
    }
}

/// Standard base64 with padding (RFC 4648).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// An aligned table: header, dashes, rows; columns two spaces apart, lines trimmed at the end.
fn table(r: &StatementResult) -> String {
    let cells: Vec<Vec<String>> = r
        .rows
        .iter()
        .map(|row| row.iter().map(cell_text).collect())
        .collect();
    let mut widths: Vec<usize> = r.columns.iter().map(|c| c.chars().count()).collect();
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |values: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, (v, w)) in values.zip(&widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            s.push_str(v);
            s.extend(std::iter::repeat_n(
                ' ',
                w.saturating_sub(v.chars().count()),
            ));
        }
        let mut s = s.trim_end().to_string();
        s.push('\n');
        s
    };
    let mut out = line(&mut r.columns.iter().map(String::as_str));
    let dashes: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out += &line(&mut dashes.iter().map(String::as_str));
    for row in &cells {
        out += &line(&mut row.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn cells_print_as_documented() {
        assert_eq!(cell_text(&Cell::Null), "NULL");
        assert_eq!(cell_text(&Cell::Real(2.0)), "2.0");
        assert_eq!(cell_text(&Cell::Real(0.5)), "0.5");
        assert_eq!(cell_text(&Cell::Real(f64::NEG_INFINITY)), "-Inf");
        assert_eq!(cell_text(&Cell::Text("a\tb\n'c'".into())), "a\\tb\\n'c'");
        assert_eq!(cell_text(&Cell::Blob(vec![1, 0xab])), "x'01ab'");
        let long = cell_text(&Cell::Blob(vec![7; 40]));
        assert_eq!(long, format!("x'{}'… (40 bytes)", "07".repeat(32)));
    }

    #[test]
    fn tables_align_and_trim() {
        let r = StatementResult {
            columns: vec!["id".into(), "name".into()],
            rows: vec![
                vec![Cell::Integer(10), Cell::Text("ada".into())],
                vec![Cell::Null, Cell::Text("é".into())],
            ],
            changes: 0,
        };
        assert_eq!(table(&r), "id    name\n----  ----\n10    ada\nNULL  é\n");
    }
}
