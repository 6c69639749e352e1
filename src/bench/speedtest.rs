//! `kvsqlite bench speedtest FILE.sql`: a speedtest1 script replayed through kvsqlite and through
//! stock SQLite, side by side.
//!
//! Why it exists: the VFS's cost is judged as a ratio against stock SQLite measured in the same
//! run on the same machine. The script is what SQLite's own `speedtest1 --script` emits; its
//! `-- begin test N name` comments mark the tests (SQL before the first marker is an untimed
//! preamble; SQL between an `-- end test` and the next marker counts with the test before it).
//!
//! Each run replays the script, on a fresh database each time, in six ways, in an order that
//! rotates from run to run (alternating, so drift on the machine hits all alike):
//! - `kvsqlite`: an actor's database on the given store ([`open_database`], default options);
//! - `native`: stock SQLite on a temporary file, `journal_mode=DELETE`;
//! - `native_wal`: the same in `journal_mode=WAL`;
//! - `native_mem`: stock SQLite on an in-memory database;
//! - `native_wal_full`: WAL with `synchronous=FULL` (an fsync per commit, as durable per commit
//!   as kvsqlite: the like-for-like comparison);
//! - `kvsqlite_pipelined`: kvsqlite with pipelined commits, one `wait_durable` at the end of
//!   each test (inside its time).
//!
//! All get kvsqlite's pragmas (`synchronous=NORMAL` but for `native_wal_full`,
//! `temp_store=MEMORY`, the same `cache_size` and `cache_spill`). Every statement is stepped to
//! its last row. Times are medians over the runs, per test and in total (the total is the
//! median of each run's sum); `kv_round_trips` is the median of the `kvsqlite` replay's round
//! trips.
//!
//! After every run the six final databases are compared (schema, and every row of every
//! table, as a digest per table): any difference is an error, so a ratio is never reported for
//! a replay that went wrong.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::fallible_iterator::FallibleIterator;
use rusqlite::types::ValueRef;
use rusqlite::{Batch, Connection};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::kv::SharedStore;
use crate::vfs::{open_database, OpenOptions};

/// One test of a script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptTest {
    /// The test's number (`-- begin test 100 …` → `"100"`).
    pub id: String,
    /// The rest of the marker line (its description).
    pub name: String,
    /// The test's SQL.
    pub sql: String,
}

/// A parsed script: the untimed preamble and the tests in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Script {
    /// SQL before the first test marker (run untimed on every database).
    pub preamble: String,
    /// The tests.
    pub tests: Vec<ScriptTest>,
}

/// Splits a speedtest1 script at its `-- begin test N name` markers. A script without any
/// marker is refused (there would be nothing to report per test).
pub fn parse_script(text: &str) -> Result<Script, String> {
    let mut preamble = String::new();
    let mut tests: Vec<ScriptTest> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("-- begin test") {
            let rest = rest.trim();
            let (id, name) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            if id.is_empty() {
                return Err(format!("a test marker without a number: {trimmed:?}"));
            }
            tests.push(ScriptTest {
                id: id.to_string(),
                name: name.trim().to_string(),
                sql: String::new(),
            });
            continue;
        }
        if trimmed.starts_with("-- end test") {
            continue;
        }
        let target = match tests.last_mut() {
            Some(t) => &mut t.sql,
            None => &mut preamble,
        };
        target.push_str(line);
        target.push('\n');
    }
    if tests.is_empty() {
        return Err("no `-- begin test N` markers: not a speedtest1 script".into());
    }
    Ok(Script { preamble, tests })
}

/// The four ways a script is replayed, in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// kvsqlite on the given store.
    Kvsqlite,
    /// Stock SQLite, temporary file, rollback journal.
    Native,
    /// Stock SQLite, temporary file, WAL.
    NativeWal,
    /// Stock SQLite, in-memory database.
    NativeMem,
    /// Stock SQLite, temporary file, WAL with `synchronous=FULL` (an fsync per commit: as
    /// durable per commit as kvsqlite).
    NativeWalFull,
    /// kvsqlite with pipelined commits (`OpenOptions::pipelined`), one `wait_durable` at the
    /// end of each test (inside its time).
    KvsqlitePipelined,
}

/// All targets, in report order.
pub const TARGETS: [Target; 6] = [
    Target::Kvsqlite,
    Target::Native,
    Target::NativeWal,
    Target::NativeMem,
    Target::NativeWalFull,
    Target::KvsqlitePipelined,
];

impl Target {
    /// The target's name in reports (`kvsqlite`, `native`, `native_wal`, `native_mem`,
    /// `native_wal_full`, `kvsqlite_pipelined`).
    pub fn name(self) -> &'static str {
        match self {
            Target::Kvsqlite => "kvsqlite",
            Target::Native => "native",
            Target::NativeWal => "native_wal",
            Target::NativeMem => "native_mem",
            Target::NativeWalFull => "native_wal_full",
            Target::KvsqlitePipelined => "kvsqlite_pipelined",
        }
    }
}

/// How a replay is run.
#[derive(Clone, Debug)]
pub struct SpeedtestConfig {
    /// Runs of each target (at least 1; medians are taken over them).
    pub runs: usize,
    /// Open options of the kvsqlite database (their cache sizes are given to stock SQLite too).
    pub open: OpenOptions,
}

impl Default for SpeedtestConfig {
    fn default() -> Self {
        SpeedtestConfig {
            runs: 5,
            open: OpenOptions::default(),
        }
    }
}

/// Medians of one test (or of the totals).
#[derive(Clone, Debug, PartialEq)]
pub struct TestResult {
    /// The test number (`"total"` for the total row).
    pub id: String,
    /// The test's description.
    pub name: String,
    /// Median milliseconds of each target, in [`TARGETS`] order.
    pub ms: [f64; 6],
    /// Median KV round trips of the kvsqlite replay.
    pub kv_round_trips: u64,
    /// Median bytes the kvsqlite replay wrote to the store (keys and values, as sent: page
    /// values compressed unless [`SpeedtestConfig::open`] turned compression off).
    pub kv_bytes_written: u64,
}

impl TestResult {
    /// `native_ms / kvsqlite_ms` (above 1: kvsqlite is faster).
    pub fn speed_ratio(&self) -> f64 {
        ratio(self.ms[1], self.ms[0])
    }

    /// `native_wal_ms / kvsqlite_ms`.
    pub fn speed_ratio_wal(&self) -> f64 {
        ratio(self.ms[2], self.ms[0])
    }

    /// `native_mem_ms / kvsqlite_ms`.
    pub fn speed_ratio_mem(&self) -> f64 {
        ratio(self.ms[3], self.ms[0])
    }

    /// `native_wal_full_ms / kvsqlite_ms`: like-for-like durability (an fsync per commit).
    pub fn speed_ratio_wal_full(&self) -> f64 {
        ratio(self.ms[4], self.ms[0])
    }

    /// `native_wal_ms / kvsqlite_pipelined_ms`: pipelined commits against WAL with
    /// `synchronous=NORMAL`.
    pub fn speed_ratio_pipelined_wal(&self) -> f64 {
        ratio(self.ms[2], self.ms[5])
    }

    fn to_json(&self, with_id: bool) -> Value {
        let mut v = json!({
            "kvsqlite_ms": round3(self.ms[0]),
            "native_ms": round3(self.ms[1]),
            "native_wal_ms": round3(self.ms[2]),
            "native_mem_ms": round3(self.ms[3]),
            "native_wal_full_ms": round3(self.ms[4]),
            "kvsqlite_pipelined_ms": round3(self.ms[5]),
            "speed_ratio_wal_full": round3(self.speed_ratio_wal_full()),
            "speed_ratio_pipelined_wal": round3(self.speed_ratio_pipelined_wal()),
            "speed_ratio": round3(self.speed_ratio()),
            "speed_ratio_wal": round3(self.speed_ratio_wal()),
            "speed_ratio_mem": round3(self.speed_ratio_mem()),
            "kv_round_trips": self.kv_round_trips,
            "kv_bytes_written": self.kv_bytes_written,
        });
        if with_id {
            v["id"] = json!(self.id);
            v["name"] = json!(self.name);
        }
        v
    }
}

fn ratio(num: f64, den: f64) -> f64 {
    if den > 0.0 {
        num / den
    } else {
        0.0
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The result of [`run`].
#[derive(Clone, Debug)]
pub struct SpeedtestReport {
    /// Per test, in script order.
    pub tests: Vec<TestResult>,
    /// Medians of each run's totals.
    pub total: TestResult,
    /// Runs of each target.
    pub runs: usize,
    /// Tables compared at the end of every run (all equal, or the run failed).
    pub tables_compared: usize,
    /// Whether kvsqlite's replays compressed page values ([`OpenOptions::compress_pages`]).
    pub page_compression: bool,
}

impl SpeedtestReport {
    /// `{"tests": [...], "total": {...}, "runs": N, "tables_compared": N}` (fields in docs/src/benchmarks/commands.md).
    pub fn to_json(&self) -> Value {
        json!({
            "tests": self.tests.iter().map(|t| t.to_json(true)).collect::<Vec<_>>(),
            "total": self.total.to_json(false),
            "runs": self.runs,
            "tables_compared": self.tables_compared,
            "same_final_database": true,
            "page_compression": self.page_compression,
        })
    }

    /// A readable table: one line per test, then the total.
    pub fn to_table(&self) -> String {
        let mut s = format!(
            "{:<6}{:>12}{:>11}{:>11}{:>11}{:>11}{:>11}{:>8}{:>8}{:>8}{:>8}{:>8}{:>6}  name\n",
            "test",
            "kvsqlite_ms",
            "native",
            "wal",
            "mem",
            "wal_full",
            "pipelined",
            "ratio",
            "r_wal",
            "r_mem",
            "r_full",
            "r_pipe",
            "rt"
        );
        let line = |t: &TestResult| {
            format!(
                "{:<6}{:>12.2}{:>11.2}{:>11.2}{:>11.2}{:>11.2}{:>11.2}{:>8.2}{:>8.2}{:>8.2}{:>8.2}{:>8.2}{:>6}  {}\n",
                t.id,
                t.ms[0],
                t.ms[1],
                t.ms[2],
                t.ms[3],
                t.ms[4],
                t.ms[5],
                t.speed_ratio(),
                t.speed_ratio_wal(),
                t.speed_ratio_mem(),
                t.speed_ratio_wal_full(),
                t.speed_ratio_pipelined_wal(),
                t.kv_round_trips,
                t.name
            )
        };
        for t in &self.tests {
            s.push_str(&line(t));
        }
        s.push_str(&line(&self.total));
        s.push_str(&format!(
            "{} runs each (medians); final databases identical ({} tables compared); page compression {}; kvsqlite wrote {} bytes to the store\n",
            self.runs,
            self.tables_compared,
            if self.page_compression { "on" } else { "off" },
            self.total.kv_bytes_written
        ));
        s
    }
}

/// A directory removed (with its files) when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("kvsqlite-speedtest-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One replay's outcome: milliseconds, round trips and bytes written per test, and the final
/// database's digest.
struct Replay {
    ms: Vec<f64>,
    round_trips: Vec<u64>,
    bytes_written: Vec<u64>,
    digest: BTreeMap<String, String>,
}

/// Runs every statement of `sql` to its last row.
///
/// The text handed to SQLite ends with a NUL byte: SQLite copies a statement's text that is not
/// NUL-terminated, and a batch prepares each statement from the rest of the text, so a test of
/// thousands of statements would copy the rest of its text thousands of times (quadratic, and
/// most of a replay's time, the same for every target, diluting every ratio towards 1).
pub fn run_sql(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    let mut text = String::with_capacity(sql.len() + 1);
    text.push_str(sql);
    text.push('\0');
    let mut batch = Batch::new(conn, &text);
    while let Some(mut stmt) = batch.next()? {
        let mut rows = stmt.raw_query();
        while rows.next()?.is_some() {}
    }
    Ok(())
}

/// The pragmas kvsqlite sets on its connections, for a stock connection in `journal` mode
/// (the replay's stock targets, and the instruction-count example).
pub fn stock_pragmas(conn: &Connection, opts: &OpenOptions, journal: &str) -> Result<(), String> {
    let spill_kib = (opts.max_atomic_bytes / 1024).clamp(1, i32::MAX as usize);
    let mode: String = conn
        .query_row(&format!("PRAGMA journal_mode={journal}"), [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if !mode.eq_ignore_ascii_case(journal) {
        return Err(format!(
            "stock SQLite kept journal_mode {mode:?}, not {journal}"
        ));
    }
    conn.execute_batch(&format!(
        "PRAGMA synchronous=NORMAL; PRAGMA temp_store=MEMORY; PRAGMA cache_spill=-{spill_kib}; PRAGMA cache_size=-{};",
        opts.sqlite_cache_kib.max(1)
    ))
    .map_err(|e| e.to_string())
}

/// Replays `script` on one fresh database of `target`.
fn replay(
    script: &Script,
    target: Target,
    store: &SharedStore,
    config: &SpeedtestConfig,
    dir: &Path,
    run_no: usize,
) -> Result<Replay, String> {
    let sql_err = |test: &str| {
        let test = test.to_string();
        move |e: rusqlite::Error| format!("{} replay, test {test}: {e}", target.name())
    };
    let mut ms = Vec::with_capacity(script.tests.len());
    let mut round_trips = Vec::with_capacity(script.tests.len());
    let mut bytes_written = Vec::with_capacity(script.tests.len());
    match target {
        Target::Kvsqlite | Target::KvsqlitePipelined => {
            let pipelined = target == Target::KvsqlitePipelined;
            let opts = OpenOptions {
                pipelined,
                ..config.open.clone()
            };
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let actor = format!("bench-speedtest-{}-{run_no}-{nanos}", std::process::id());
            let outcome = (|| {
                let db = open_database(store.clone(), &actor, &opts)
                    .map_err(|e| format!("kvsqlite open: {e}"))?;
                run_sql(&db, &script.preamble).map_err(sql_err("preamble"))?;
                for t in &script.tests {
                    let before = db.snapshot();
                    let start = Instant::now();
                    run_sql(&db, &t.sql).map_err(sql_err(&t.id))?;
                    if pipelined {
                        db.wait_durable()
                            .map_err(|e| format!("{} test {}: {e}", target.name(), t.id))?;
                    }
                    ms.push(start.elapsed().as_secs_f64() * 1000.0);
                    let cost = db.snapshot() - before;
                    round_trips.push(cost.kv_round_trips);
                    bytes_written.push(cost.bytes_written);
                }
                digest(&db)
            })();
            let cleanup = store.delete_range(&actor, &[], None);
            let digest = outcome?;
            cleanup.map_err(|e| format!("replay ran, but deleting its actor failed: {e}"))?;
            Ok(Replay {
                ms,
                round_trips,
                bytes_written,
                digest,
            })
        }
        Target::Native | Target::NativeWal | Target::NativeMem | Target::NativeWalFull => {
            let path = dir.join(format!("{}-{run_no}.db", target.name()));
            let conn = if target == Target::NativeMem {
                Connection::open_in_memory()
            } else {
                Connection::open(&path)
            }
            .map_err(|e| format!("{}: open: {e}", target.name()))?;
            let journal = match target {
                Target::NativeWal | Target::NativeWalFull => "wal",
                Target::NativeMem => "memory",
                _ => "delete",
            };
            stock_pragmas(&conn, &config.open, journal)?;
            if target == Target::NativeWalFull {
                conn.execute_batch("PRAGMA synchronous=FULL")
                    .map_err(|e| format!("{}: {e}", target.name()))?;
            }
            run_sql(&conn, &script.preamble).map_err(sql_err("preamble"))?;
            for t in &script.tests {
                let start = Instant::now();
                run_sql(&conn, &t.sql).map_err(sql_err(&t.id))?;
                ms.push(start.elapsed().as_secs_f64() * 1000.0);
                round_trips.push(0);
                bytes_written.push(0);
            }
            let digest = digest(&conn)?;
            drop(conn);
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let mut p = path.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
            Ok(Replay {
                ms,
                round_trips,
                bytes_written,
                digest,
            })
        }
    }
}

/// A digest of a database's content: `"schema"` → the schema's rows, and for every table its
/// row count and a SHA-256 of its rows (each rendered with its types, sorted).
pub fn digest(conn: &Connection) -> Result<BTreeMap<String, String>, String> {
    let e = |e: rusqlite::Error| format!("reading the final database: {e}");
    let mut out = BTreeMap::new();
    let mut schema: Vec<String> = Vec::new();
    let mut tables: Vec<String> = Vec::new();
    {
        let mut st = conn
            .prepare("SELECT type, name, tbl_name, coalesce(sql, '') FROM sqlite_schema ORDER BY type, name")
            .map_err(e)?;
        let mut rows = st.query([]).map_err(e)?;
        while let Some(r) = rows.next().map_err(e)? {
            let (ty, name, tbl, sql): (String, String, String, String) = (
                r.get(0).map_err(e)?,
                r.get(1).map_err(e)?,
                r.get(2).map_err(e)?,
                r.get(3).map_err(e)?,
            );
            if ty == "table" {
                tables.push(name.clone());
            }
            schema.push(format!("{ty}|{name}|{tbl}|{sql}"));
        }
    }
    out.insert("schema".to_string(), schema.join("\n"));
    for table in tables {
        let quoted = format!("\"{}\"", table.replace('"', "\"\""));
        let mut st = conn
            .prepare(&format!("SELECT * FROM {quoted}"))
            .map_err(e)?;
        let cols = st.column_count();
        let mut rows = st.query([]).map_err(e)?;
        let mut rendered: Vec<String> = Vec::new();
        while let Some(r) = rows.next().map_err(e)? {
            let mut line = String::new();
            for i in 0..cols {
                match r.get_ref(i).map_err(e)? {
                    ValueRef::Null => line.push_str("N|"),
                    ValueRef::Integer(v) => line.push_str(&format!("I{v}|")),
                    ValueRef::Real(v) => line.push_str(&format!("R{:x}|", v.to_bits())),
                    ValueRef::Text(t) => {
                        line.push_str(&format!("T{}:{}|", t.len(), String::from_utf8_lossy(t)))
                    }
                    ValueRef::Blob(b) => {
                        line.push_str(&format!("B{}:{}|", b.len(), hex(&Sha256::digest(b))))
                    }
                }
            }
            rendered.push(line);
        }
        rendered.sort_unstable();
        let mut h = Sha256::new();
        for line in &rendered {
            h.update(line.as_bytes());
            h.update(b"\n");
        }
        out.insert(
            format!("table {table}"),
            format!("{} rows, sha256 {}", rendered.len(), hex(&h.finalize())),
        );
    }
    Ok(out)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Describes how two digests differ (`None`: equal).
fn difference(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Option<String> {
    if a == b {
        return None;
    }
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        let (x, y) = (a.get(k), b.get(k));
        if x != y {
            let show = |v: Option<&String>| v.map_or("absent".to_string(), |s| s.clone());
            return Some(format!("{k}: {} vs {}", show(x), show(y)));
        }
    }
    Some("digests differ".into())
}

fn median_f64(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn median_u64(mut v: Vec<u64>) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[(v.len() - 1) / 2]
}

/// Replays `script` `config.runs` times on each target (see the module comment), checks that
/// every replay left the same database as stock SQLite, and returns the medians. `progress`
/// is called with (replays done, replays in all, what runs next).
pub fn run(
    store: &SharedStore,
    script: &Script,
    config: &SpeedtestConfig,
    progress: &dyn Fn(usize, usize, &str),
) -> Result<SpeedtestReport, String> {
    if config.runs == 0 {
        return Err("at least one run is needed".into());
    }
    let dir = TempDir::new()?;
    let n = script.tests.len();
    // samples[target][test] → ms of each run; totals[target] → each run's sum.
    let nt = TARGETS.len();
    let mut samples = vec![vec![Vec::new(); n]; nt];
    let mut totals = vec![Vec::new(); nt];
    let mut rts = vec![Vec::new(); n];
    let mut total_rts = Vec::new();
    let mut bytes = vec![Vec::new(); n];
    let mut total_bytes = Vec::new();
    let mut tables_compared = 0;
    let all = config.runs * nt;
    for run_no in 0..config.runs {
        let mut digests: Vec<(Target, BTreeMap<String, String>)> = Vec::new();
        for k in 0..nt {
            let target = TARGETS[(run_no + k) % nt];
            progress(run_no * nt + k, all, target.name());
            let r = replay(script, target, store, config, &dir.0, run_no)?;
            let ti = TARGETS.iter().position(|t| *t == target).unwrap_or(0);
            for (i, ms) in r.ms.iter().enumerate() {
                samples[ti][i].push(*ms);
            }
            totals[ti].push(r.ms.iter().sum::<f64>());
            if target == Target::Kvsqlite {
                for (i, rt) in r.round_trips.iter().enumerate() {
                    rts[i].push(*rt);
                }
                total_rts.push(r.round_trips.iter().sum::<u64>());
                for (i, b) in r.bytes_written.iter().enumerate() {
                    bytes[i].push(*b);
                }
                total_bytes.push(r.bytes_written.iter().sum::<u64>());
            }
            digests.push((target, r.digest));
        }
        let reference = digests
            .iter()
            .find(|(t, _)| *t == Target::Native)
            .map(|(_, d)| d.clone())
            .unwrap_or_default();
        for (t, d) in &digests {
            if let Some(diff) = difference(d, &reference) {
                return Err(format!(
                    "the {} replay's final database differs from stock SQLite's (run {}): {diff}",
                    t.name(),
                    run_no + 1
                ));
            }
        }
        tables_compared = reference.len().saturating_sub(1);
    }
    progress(all, all, "done");
    let tests = script
        .tests
        .iter()
        .enumerate()
        .map(|(i, t)| TestResult {
            id: t.id.clone(),
            name: t.name.clone(),
            ms: std::array::from_fn(|ti| median_f64(samples[ti][i].clone())),
            kv_round_trips: median_u64(rts[i].clone()),
            kv_bytes_written: median_u64(bytes[i].clone()),
        })
        .collect();
    let total = TestResult {
        id: "total".into(),
        name: String::new(),
        ms: std::array::from_fn(|ti| median_f64(totals[ti].clone())),
        kv_round_trips: median_u64(total_rts),
        kv_bytes_written: median_u64(total_bytes),
    };
    Ok(SpeedtestReport {
        tests,
        total,
        runs: config.runs,
        tables_compared,
        page_compression: config.open.compress_pages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_is_split_at_markers() {
        let s = parse_script(
            "PRAGMA threads=0;\n-- begin test 100 some inserts\nCREATE TABLE t(x);\n-- end test 100\nSELECT 1;\n-- begin test 110\nSELECT 2;\n",
        )
        .unwrap();
        assert_eq!(s.preamble, "PRAGMA threads=0;\n");
        assert_eq!(s.tests.len(), 2);
        assert_eq!(s.tests[0].id, "100");
        assert_eq!(s.tests[0].name, "some inserts");
        assert_eq!(s.tests[0].sql, "CREATE TABLE t(x);\nSELECT 1;\n");
        assert_eq!(s.tests[1].id, "110");
        assert_eq!(s.tests[1].name, "");
        assert!(parse_script("SELECT 1;").is_err());
    }

    #[test]
    fn digests_tell_tables_apart() {
        let a = Connection::open_in_memory().unwrap();
        a.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1), (2.5), ('x'), (NULL);")
            .unwrap();
        let b = Connection::open_in_memory().unwrap();
        b.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (NULL), ('x'), (2.5), (1);")
            .unwrap();
        assert_eq!(difference(&digest(&a).unwrap(), &digest(&b).unwrap()), None);
        b.execute("UPDATE t SET x = '1' WHERE x = 1", []).unwrap();
        let d = difference(&digest(&a).unwrap(), &digest(&b).unwrap()).unwrap();
        assert!(d.starts_with("table t:"), "{d}");
    }

    #[test]
    fn medians() {
        assert_eq!(median_f64(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median_f64(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median_u64(vec![5, 1, 3, 2]), 2);
    }
}
