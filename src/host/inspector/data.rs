//! What the actor page shows, gathered on the actor's own single-writer queue: the last
//! wake, the query log, the latency summary, the history, the tables, one table's rows and the
//! admin's read-only query.
//!
//! Why it exists: the page must see one consistent actor, and the actor's connection is only
//! touched by its queue; so one unit of work collects everything, then the page is rendered
//! outside it. The inspector's own statements carry the [`MARK`] comment and are hidden from
//! the query log it shows.

use rusqlite::types::ValueRef;

use crate::actor::guard::Mode;
use crate::actor::query_log::QueryRecord;
use crate::actor::startup::StartupReport;
use crate::actor::Actor;
use crate::metrics::HistogramSummary;
use crate::vfs::history::CommitInfo;

/// The comment that starts every statement the inspector itself runs.
pub const MARK: &str = "/* kvsqlite inspector */";

/// Rows per table page.
pub const PAGE_ROWS: usize = 20;

/// Tables listed at most.
const MAX_TABLES: usize = 200;

/// One table.
pub struct TableInfo {
    /// Its name.
    pub name: String,
    /// `count(*)`, or the error text.
    pub rows: Result<i64, String>,
    /// Column names.
    pub columns: Vec<String>,
}

/// Rows of a statement, each cell as display text.
pub struct Grid {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows of cells.
    pub rows: Vec<Vec<String>>,
}

/// One page of one table.
pub struct TablePage {
    /// The table.
    pub table: String,
    /// Rows skipped.
    pub offset: usize,
    /// The page.
    pub grid: Grid,
    /// True when more rows follow.
    pub more: bool,
}

/// Everything the actor page shows.
pub struct ActorView {
    /// The last wake.
    pub startup: StartupReport,
    /// The query log, oldest first, without the inspector's own statements.
    pub records: Vec<QueryRecord>,
    /// Statement latency in microseconds.
    pub latency: HistogramSummary,
    /// The tables.
    pub tables: Vec<TableInfo>,
    /// The table asked for, if it exists.
    pub page: Option<TablePage>,
    /// The read-only query's rows, or why it was refused or failed.
    pub query: Option<Result<Grid, String>>,
    /// The commits kept (oldest first) and the current bookmark, when asked for; or why they
    /// could not be read.
    pub history: Option<Result<(Vec<CommitInfo>, String), String>>,
}

/// What the page asks for.
#[derive(Default, Clone)]
pub struct ViewRequest {
    /// The table to page through.
    pub table: Option<String>,
    /// Rows to skip.
    pub offset: usize,
    /// A read-only query to run (admin only; checked by the caller).
    pub query: Option<String>,
    /// List the history (one KV round trip).
    pub history: bool,
}

/// Characters of a text cell shown at most.
pub const CELL_CHARS: usize = 200;

/// A cell as text: NULL, numbers, text (its first [`CELL_CHARS`] characters, then `…` and its
/// size), blobs as `x'…'` hex (first 64 bytes).
pub fn cell_text(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Text(t) => {
            let text = String::from_utf8_lossy(t);
            match text.char_indices().nth(CELL_CHARS) {
                Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], t.len()),
                None => text.into_owned(),
            }
        }
        ValueRef::Blob(b) => {
            let hex: String = b.iter().take(64).map(|x| format!("{x:02x}")).collect();
            let more = if b.len() > 64 { "…" } else { "" };
            format!("x'{hex}{more}' ({} bytes)", b.len())
        }
    }
}

/// `"name"` with inner quotes doubled.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn grid(stmt: &mut rusqlite::Statement<'_>, limit: usize) -> rusqlite::Result<(Grid, bool)> {
    let columns: Vec<String> = stmt.column_names().map(|c| c.to_string()).collect();
    let n = columns.len();
    let mut rows = Vec::new();
    let mut more = false;
    let mut it = stmt.raw_query();
    while let Some(row) = it.next()? {
        if rows.len() == limit {
            more = true;
            break;
        }
        let mut cells = Vec::with_capacity(n);
        for i in 0..n {
            cells.push(cell_text(row.get_ref(i)?));
        }
        rows.push(cells);
    }
    Ok((Grid { columns, rows }, more))
}

fn tables(actor: &Actor) -> rusqlite::Result<Vec<TableInfo>> {
    let db = actor.db();
    let names: Vec<String> = {
        let mut st = db.prepare(&format!(
            "{MARK} SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name LIMIT {MAX_TABLES}"
        ))?;
        let rows = st.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let q = quote_ident(&name);
        let rows = db
            .query_row(&format!("{MARK} SELECT count(*) FROM {q}"), [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(|e| e.to_string());
        let columns = match db.prepare(&format!("{MARK} SELECT * FROM {q} LIMIT 0")) {
            Ok(st) => st.column_names().map(|c| c.to_string()).collect(),
            Err(_) => Vec::new(),
        };
        out.push(TableInfo {
            name,
            rows,
            columns,
        });
    }
    Ok(out)
}

/// Rows the query box shows at most.
pub const QUERY_ROWS: usize = 200;

/// Runs `sql` as a read, under the guard's [`Mode::ReadOnly`]: SQLite's authorizer refuses
/// at compile time anything but `SELECT`, reading tables, functions, recursive CTEs and the
/// reporting pragmas, so nothing runs that could write or leave a setting behind on the actor
/// (`PRAGMA query_only=1`, `writable_schema`, `ATTACH`, however it is spelled). Transaction
/// control is named as such (the one detector,
/// [`SqlGuard::transaction_control`](crate::actor::guard::SqlGuard::transaction_control)).
/// At most [`QUERY_ROWS`] rows.
pub fn read_only_query(actor: &Actor, sql: &str) -> Result<Grid, String> {
    let db = actor.db();
    if actor.sql_guard().transaction_control(db, sql).is_some() {
        return Err(
            "refused: transaction control is not allowed here (read-only queries only)".into(),
        );
    }
    let refused = |e: rusqlite::Error| {
        let e = actor.sql_guard().explain(e);
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::AuthorizationForStatementDenied) => {
                format!("refused: {}", crate::host::sql::error_text(&e))
            }
            _ => e.to_string(),
        }
    };
    let r = {
        let _read_only = actor.sql_guard().scope(Mode::ReadOnly);
        match db.prepare(sql) {
            Ok(mut st) if st.readonly() => {
                grid(&mut st, QUERY_ROWS).map(|(g, _)| g).map_err(refused)
            }
            Ok(_) => Err("refused: the statement would write (read-only queries only)".into()),
            Err(e) => Err(refused(e)),
        }
    };
    if !db.is_autocommit() {
        let _ = db.execute_batch("ROLLBACK");
    }
    r
}

/// Gathers the page's view of `actor`.
pub fn collect(actor: &Actor, req: &ViewRequest) -> ActorView {
    let records: Vec<QueryRecord> = actor
        .query_log()
        .records()
        .into_iter()
        .filter(|r| !r.sql.starts_with(MARK))
        .collect();
    let latency = actor.query_log().latency();
    let query = req.query.as_deref().map(|q| read_only_query(actor, q));
    let tables = tables(actor).unwrap_or_default();
    let page = req.table.as_ref().and_then(|t| {
        let info = tables.iter().find(|i| &i.name == t)?;
        let sql = format!(
            "{MARK} SELECT * FROM {} LIMIT {} OFFSET {}",
            quote_ident(&info.name),
            PAGE_ROWS + 1,
            req.offset
        );
        let mut st = actor.db().prepare(&sql).ok()?;
        let (grid, more) = grid(&mut st, PAGE_ROWS).ok()?;
        Some(TablePage {
            table: info.name.clone(),
            offset: req.offset,
            grid,
            more,
        })
    });
    ActorView {
        startup: actor.startup().clone(),
        records,
        latency,
        tables,
        page,
        query,
        history: req.history.then(|| {
            actor
                .history()
                .and_then(|h| Ok((h, actor.bookmark()?)))
                .map_err(|e| e.to_string())
        }),
    }
}

/// The live sections only (the last wake, the query log, the latency summary), read from
/// memory without running any statement: what the page's 5 s poll refreshes.
pub fn collect_live(actor: &Actor) -> ActorView {
    ActorView {
        startup: actor.startup().clone(),
        records: actor
            .query_log()
            .records()
            .into_iter()
            .filter(|r| !r.sql.starts_with(MARK))
            .collect(),
        latency: actor.query_log().latency(),
        tables: Vec::new(),
        page: None,
        query: None,
        history: None,
    }
}
