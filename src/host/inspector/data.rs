//! What the actor page shows, gathered on the actor's own single-writer queue: the last
//! wake, the query log, the latency summary, the tables, one table's rows and the admin's
//! read-only query.
//!
//! Why it exists: the page must see one consistent actor, and the actor's connection is only
//! touched by its queue; so one unit of work collects everything, then the page is rendered
//! outside it. The inspector's own statements carry the [`MARK`] comment and are hidden from
//! the query log it shows.

use rusqlite::types::ValueRef;

use crate::actor::query_log::QueryRecord;
use crate::actor::startup::StartupReport;
use crate::actor::Actor;
use crate::metrics::HistogramSummary;

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
}

/// A cell as text: NULL, numbers, text as is, blobs as `x'…'` hex (first 64 bytes).
pub fn cell_text(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
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

/// Words that start statements `sqlite3_stmt_readonly` calls read-only although they change
/// the connection (transactions, attached files).
const REFUSED_KEYWORDS: &[&str] = &[
    "ATTACH",
    "DETACH",
    "BEGIN",
    "COMMIT",
    "END",
    "ROLLBACK",
    "SAVEPOINT",
    "RELEASE",
    "VACUUM",
];

/// Runs `sql` if SQLite says it only reads; a write (or a transaction or ATTACH) is refused
/// before anything runs.
pub fn read_only_query(actor: &Actor, sql: &str) -> Result<Grid, String> {
    let first = sql
        .trim_start()
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    if REFUSED_KEYWORDS.contains(&first.as_str()) {
        return Err(format!(
            "refused: {first} is not allowed here (read-only queries only)"
        ));
    }
    let db = actor.db();
    let mut st = db.prepare(sql).map_err(|e| e.to_string())?;
    if !st.readonly() {
        return Err("refused: the statement would write (read-only queries only)".into());
    }
    let r = grid(&mut st, 200)
        .map(|(g, _)| g)
        .map_err(|e| e.to_string());
    drop(st);
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
    }
}
