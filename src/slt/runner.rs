//! Running scripts: records in order on one fresh database per script, results compared the
//! reference runner's way, and a report per script plus a summary.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::deviations::KnownDeviations;
use super::exec;
use super::format::{hash_line, Values};
use super::parser::{parse, Control, Expect, RecordKind};
use super::target::{Session, Target};

/// The hash threshold a script starts with, as in the reference runner.
pub const DEFAULT_HASH_THRESHOLD: usize = 8;

/// How scripts are run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The engine name `skipif`/`onlyif` guards are matched against (`sqlite`).
    pub engine: String,
    /// When set, overrides every `hash-threshold` record (as the reference's `-ht` option does).
    pub hash_threshold: Option<usize>,
    /// Records whose difference is known and explained.
    pub deviations: KnownDeviations,
    /// Keep every query's actual output in [`FileReport::outputs`] (for [`complete`]).
    pub collect_outputs: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            engine: "sqlite".into(),
            hash_threshold: None,
            deviations: KnownDeviations::empty(),
            collect_outputs: false,
        }
    }
}

/// A record that did not behave as its script says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The script.
    pub path: PathBuf,
    /// The record's line (its `statement`/`query`/... line).
    pub line: usize,
    /// What went wrong, in one line.
    pub message: String,
    /// The record's SQL, when it has some.
    pub sql: Option<String>,
    /// The expected output lines (empty when not applicable).
    pub expected: Vec<String>,
    /// The actual output lines (empty when not applicable).
    pub actual: Vec<String>,
}

/// At most this many expected and actual lines are printed per failure.
const SHOWN_LINES: usize = 40;

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.message)?;
        if let Some(sql) = &self.sql {
            write!(f, "\n  sql: {}", sql.replace('\n', "\n       "))?;
        }
        if !self.expected.is_empty() || !self.actual.is_empty() {
            for (title, lines) in [("expected", &self.expected), ("actual", &self.actual)] {
                write!(f, "\n  {title} ({} line(s)):", lines.len())?;
                for l in lines.iter().take(SHOWN_LINES) {
                    write!(f, "\n    {l}")?;
                }
                if lines.len() > SHOWN_LINES {
                    write!(f, "\n    ... {} more", lines.len() - SHOWN_LINES)?;
                }
            }
        }
        Ok(())
    }
}

/// The outcome of one script.
#[derive(Clone, Debug, Default)]
pub struct FileReport {
    /// The script.
    pub path: PathBuf,
    /// Records that behaved as written.
    pub passed: usize,
    /// Records that did not (each one is in `failures`).
    pub failed: usize,
    /// Records a `skipif`/`onlyif` guard skipped.
    pub skipped: usize,
    /// Records that did not match but are listed in the known deviations (each in
    /// `expected_different_records`, with the listed reason as the message's suffix).
    pub expected_different: usize,
    /// The failed records.
    pub failures: Vec<Failure>,
    /// The expected-different records.
    pub expected_different_records: Vec<Failure>,
    /// Remarks: where a `halt` stopped the script, stale deviation entries.
    pub notes: Vec<String>,
    /// Wall time spent on the script.
    pub elapsed: Duration,
    /// KV round trips the script's database made (`None` on stock SQLite).
    pub kv_round_trips: Option<u64>,
    /// The actor id the script's database lived under (`None` on stock SQLite, or when no
    /// database was opened).
    pub actor: Option<String>,
    /// Every query's actual output, in script order, when [`RunConfig::collect_outputs`] is
    /// set (queries that failed to run or were skipped have none).
    pub outputs: Vec<QueryOutput>,
}

/// One query's actual output and where its record sits in the script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryOutput {
    /// The line of the query's last SQL line.
    pub sql_end_line: usize,
    /// The record's last line.
    pub end_line: usize,
    /// The output as the script should state it (values, or one hash line).
    pub lines: Vec<String>,
}

/// The script `text` with every query in `outputs` given that output as its expected result
/// (a `----` line and the lines after its SQL, replacing what was there), everything else kept
/// line for line. Line endings become `\n`. This is how expected results are generated: run
/// with [`RunConfig::collect_outputs`] on stock SQLite, complete, then read the result.
pub fn complete(text: &str, outputs: &[QueryOutput]) -> String {
    let lines: Vec<&str> = text
        .split_inclusive('\n')
        .map(|l| l.trim_end_matches('\n').trim_end_matches('\r'))
        .collect();
    let mut out = String::with_capacity(text.len());
    let mut next = outputs.iter().peekable();
    let mut n = 0;
    while n < lines.len() {
        let number = n + 1;
        out.push_str(lines[n]);
        out.push('\n');
        n += 1;
        while let Some(o) = next.peek() {
            if o.sql_end_line < number {
                next.next();
                continue;
            }
            if o.sql_end_line == number {
                out.push_str("----\n");
                for l in &o.lines {
                    out.push_str(l);
                    out.push('\n');
                }
                n = n.max(o.end_line);
                next.next();
            }
            break;
        }
    }
    out
}

impl FileReport {
    /// The one-line summary printed for the script.
    pub fn summary_line(&self) -> String {
        let status = if self.failed > 0 { "FAIL" } else { "ok  " };
        let mut s = format!(
            "{status} {}: {} passed, {} failed",
            self.path.display(),
            self.passed,
            self.failed
        );
        if self.skipped > 0 {
            s.push_str(&format!(", {} skipped", self.skipped));
        }
        if self.expected_different > 0 {
            s.push_str(&format!(", {} expected-different", self.expected_different));
        }
        match self.kv_round_trips {
            Some(n) => s.push_str(&format!(
                " ({:.2} s, {n} KV round trips)",
                self.elapsed.as_secs_f64()
            )),
            None => s.push_str(&format!(" ({:.2} s)", self.elapsed.as_secs_f64())),
        }
        s
    }

    fn fail(&mut self, config: &RunConfig, failure: Failure) {
        match config.deviations.lookup(&failure.path, failure.line) {
            Some(reason) => {
                let mut f = failure;
                f.message = format!("expected-different: {} (listed: {reason})", f.message);
                self.expected_different += 1;
                self.expected_different_records.push(f);
            }
            None => {
                self.failed += 1;
                self.failures.push(failure);
            }
        }
    }

    fn pass(&mut self, config: &RunConfig, line: usize) {
        self.passed += 1;
        if let Some(reason) = config.deviations.lookup(&self.path, line) {
            self.notes.push(format!(
                "{}:{line}: listed as a known deviation ({reason}) but matched: remove the entry",
                self.path.display()
            ));
        }
    }
}

/// Totals over many scripts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Scripts run.
    pub files: usize,
    /// Scripts with at least one failed record.
    pub files_failed: usize,
    /// Records passed.
    pub passed: usize,
    /// Records failed.
    pub failed: usize,
    /// Records skipped by guards.
    pub skipped: usize,
    /// Records listed as known deviations that did not match.
    pub expected_different: usize,
}

impl Summary {
    /// Adds one script's counts.
    pub fn add(&mut self, r: &FileReport) {
        self.files += 1;
        if r.failed > 0 {
            self.files_failed += 1;
        }
        self.passed += r.passed;
        self.failed += r.failed;
        self.skipped += r.skipped;
        self.expected_different += r.expected_different;
    }

    /// The last line of the output: `N passed, N failed`, then `, N skipped` and
    /// `, N expected-different` when there are any.
    pub fn last_line(&self) -> String {
        let mut s = format!("{} passed, {} failed", self.passed, self.failed);
        if self.skipped > 0 {
            s.push_str(&format!(", {} skipped", self.skipped));
        }
        if self.expected_different > 0 {
            s.push_str(&format!(", {} expected-different", self.expected_different));
        }
        s
    }

    /// True when nothing failed.
    pub fn ok(&self) -> bool {
        self.failed == 0
    }
}

/// Expands files and directories into the `*.test` files they hold (directories recursively),
/// each directory's files in name order. A path that does not exist, or a named file that is
/// not readable, is an error.
pub fn collect_scripts(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| format!("cannot read directory {}: {e}", dir.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("cannot read directory {}: {e}", dir.display()))?;
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out)?;
            } else if p.extension().is_some_and(|e| e == "test") {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        if meta.is_dir() {
            walk(p, &mut out)?;
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Runs one script read from `path` on a fresh database of `target`. An unreadable script or
/// a database that cannot be opened is reported as one failed record at line 0.
pub fn run_file(target: &mut dyn Target, path: &Path, config: &RunConfig) -> FileReport {
    let started = Instant::now();
    let mut report = match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => run_script(target, path, &text, config),
            Err(e) => fatal(
                path,
                format!(
                    "the script is not UTF-8 (first bad byte at offset {})",
                    e.utf8_error().valid_up_to()
                ),
            ),
        },
        Err(e) => fatal(path, format!("cannot read the script: {e}")),
    };
    report.elapsed = started.elapsed();
    report
}

fn fatal(path: &Path, message: String) -> FileReport {
    FileReport {
        path: path.to_path_buf(),
        failed: 1,
        failures: vec![Failure {
            path: path.to_path_buf(),
            line: 0,
            message,
            sql: None,
            expected: Vec::new(),
            actual: Vec::new(),
        }],
        ..Default::default()
    }
}

/// Runs the script `text` (named `path` in reports) on a fresh database of `target`. A script
/// without a single `statement` or `query` record is one failure at line 0 (it would test
/// nothing), and no database is opened for it.
pub fn run_script(
    target: &mut dyn Target,
    path: &Path,
    text: &str,
    config: &RunConfig,
) -> FileReport {
    let started = Instant::now();
    // An empty script (or one of comments and settings only) would pass while testing
    // nothing, which is never what its author meant: say so instead.
    let tests_something = parse(text).iter().any(|r| {
        matches!(
            r.kind,
            RecordKind::Statement { .. } | RecordKind::Query { .. } | RecordKind::Invalid { .. }
        )
    });
    if !tests_something {
        let mut report = fatal(
            path,
            "the script has no statement or query record: it tests nothing".into(),
        );
        report.elapsed = started.elapsed();
        return report;
    }
    let mut session = match target.open_fresh(path) {
        Ok(s) => s,
        Err(e) => {
            return fatal(
                path,
                format!("cannot open a fresh database on {}: {e}", target.name()),
            )
        }
    };
    let mut report = FileReport {
        path: path.to_path_buf(),
        ..Default::default()
    };
    run_records(session.as_mut(), path, text, config, &mut report);
    report.kv_round_trips = session.kv_round_trips();
    report.actor = session.actor_id().map(str::to_string);
    if let Err(e) = session.finish() {
        report.fail(
            config,
            Failure {
                path: path.to_path_buf(),
                line: 0,
                message: format!("closing the database failed: {e}"),
                sql: None,
                expected: Vec::new(),
                actual: Vec::new(),
            },
        );
    }
    report.elapsed = started.elapsed();
    report
}

fn run_records(
    session: &mut dyn Session,
    path: &Path,
    text: &str,
    config: &RunConfig,
    report: &mut FileReport,
) {
    let mut threshold = config.hash_threshold.unwrap_or(DEFAULT_HASH_THRESHOLD);
    let mut labels: HashMap<String, String> = HashMap::new();
    let mut values = Values::new();
    let failure = |line: usize, message: String, sql: Option<&str>| Failure {
        path: path.to_path_buf(),
        line,
        message,
        sql: sql.map(str::to_string),
        expected: Vec::new(),
        actual: Vec::new(),
    };
    for record in parse(text) {
        if record.skipped_on(&config.engine) {
            report.skipped += 1;
            continue;
        }
        let line = record.line;
        match &record.kind {
            RecordKind::Invalid { message } => {
                report.fail(config, failure(line, message.clone(), None));
            }
            RecordKind::HashThreshold(n) => {
                if config.hash_threshold.is_none() {
                    threshold = *n;
                }
            }
            RecordKind::Halt => {
                report
                    .notes
                    .push(format!("{}:{line}: halt", path.display()));
                return;
            }
            RecordKind::Control(Control::Restart) => {
                if let Err(e) = session.restart() {
                    report.fail(
                        config,
                        failure(line, format!("control restart failed: {e}"), None),
                    );
                    report.notes.push(format!(
                        "{}:{line}: script stopped: the database could not be reopened",
                        path.display()
                    ));
                    return;
                }
                report.pass(config, line);
            }
            RecordKind::Statement { expect, sql } => {
                let result = match session.connection() {
                    Ok(c) => exec::execute(c, sql),
                    Err(e) => Err(exec::SqlError {
                        code: None,
                        message: e,
                    }),
                };
                match (expect, result) {
                    (Expect::Error, Err(e)) if e.is_storage_fault() => report.fail(
                        config,
                        failure(
                            line,
                            format!("statement failed with a storage error, not an SQL error: {e}"),
                            Some(sql),
                        ),
                    ),
                    (Expect::Error, Err(e)) if e.code.is_none() => report.fail(
                        config,
                        failure(line, format!("statement could not run: {e}"), Some(sql)),
                    ),
                    (Expect::Ok, Ok(())) | (Expect::Error, Err(_)) => report.pass(config, line),
                    (Expect::Ok, Err(e)) => report.fail(
                        config,
                        failure(line, format!("statement failed: {e}"), Some(sql)),
                    ),
                    (Expect::Error, Ok(())) => report.fail(
                        config,
                        failure(
                            line,
                            "statement succeeded but an error was expected".into(),
                            Some(sql),
                        ),
                    ),
                }
            }
            RecordKind::Query {
                types,
                sort,
                label,
                sql,
                sql_end_line,
                expected,
            } => {
                values.clear();
                let result = match session.connection() {
                    Ok(c) => exec::query(c, sql, types, &mut values),
                    Err(e) => Err(exec::SqlError {
                        code: None,
                        message: e,
                    }),
                };
                match result {
                    Err(e) => {
                        report.fail(
                            config,
                            failure(line, format!("query failed: {e}"), Some(sql)),
                        );
                        continue;
                    }
                    Ok(Some(e)) => report.notes.push(format!(
                        "{}:{line}: the query stopped with an SQL error after {} value(s) \
                         (compared as such, like the reference runner): {e}",
                        path.display(),
                        values.len()
                    )),
                    Ok(None) => {}
                }
                let order = values.order(*sort, types.len());
                let hashed = threshold > 0 && values.len() > threshold;
                let md5 = if hashed || label.is_some() {
                    Some(values.md5(&order))
                } else {
                    None
                };
                if let (Some(label), Some(md5)) = (label, &md5) {
                    match labels.get(label) {
                        Some(previous) if previous != md5 => {
                            report.fail(
                                config,
                                failure(
                                    line,
                                    format!("labeled result [{label}] does not agree with previous values"),
                                    Some(sql),
                                ),
                            );
                            continue;
                        }
                        Some(_) => {}
                        None => {
                            labels.insert(label.clone(), md5.clone());
                        }
                    }
                }
                let actual_lines = || match (&md5, hashed) {
                    (Some(md5), true) => vec![hash_line(values.len(), md5)],
                    _ => order
                        .iter()
                        .map(|&i| values.get(i).to_string())
                        .collect::<Vec<_>>(),
                };
                if config.collect_outputs {
                    report.outputs.push(QueryOutput {
                        sql_end_line: *sql_end_line,
                        end_line: record.end_line,
                        lines: actual_lines(),
                    });
                }
                let Some(expected) = expected else {
                    report.pass(config, line);
                    continue;
                };
                let matches = match (&md5, hashed) {
                    (Some(md5), true) => {
                        expected.lines.len() == 1
                            && expected.lines[0] == hash_line(values.len(), md5)
                    }
                    _ => {
                        expected.lines.len() == order.len()
                            && expected
                                .lines
                                .iter()
                                .zip(&order)
                                .all(|(e, &i)| e == values.get(i))
                    }
                };
                if matches {
                    report.pass(config, line);
                } else {
                    let actual = actual_lines();
                    report.fail(
                        config,
                        Failure {
                            path: path.to_path_buf(),
                            line,
                            message: format!(
                                "wrong result (expected output starts at line {})",
                                expected.line
                            ),
                            sql: Some(sql.clone()),
                            expected: expected.lines.clone(),
                            actual,
                        },
                    );
                }
            }
        }
    }
}

/// Runs every script in `scripts` in order, calling `each` with every report as it completes,
/// and returns the totals.
pub fn run_all(
    target: &mut dyn Target,
    scripts: &[PathBuf],
    config: &RunConfig,
    mut each: impl FnMut(&FileReport),
) -> Summary {
    let mut summary = Summary::default();
    for path in scripts {
        let report = run_file(target, path, config);
        summary.add(&report);
        each(&report);
    }
    summary
}
