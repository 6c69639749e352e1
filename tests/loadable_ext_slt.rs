//! sqllogictest scripts of `sql/tests/` run through the stock `sqlite3` shell with the loadable
//! extension (one shell process per script, on a redb file; `control restart` reopens the
//! database), with the same results as `kvsqlite slt`: every record passes or fails alike, and
//! every query prints the same lines.
//!
//! The shell prints query results in `.mode quote` (SQL literals, so storage classes are
//! known); this file turns them into sqllogictest values with the runner's own formatting
//! ([`Values`]), the way `kvsqlite::slt::exec::query` reads columns. Conversions whose result
//! depends on SQLite's text formatting of a value of another class (a real shown as `T`, text
//! read as `I` or `R` that is not a plain number, a blob read as a number) are not
//! reimplemented: a script needing one fails this test with a message saying so.

#[path = "common/sqlite_shell.rs"]
mod sqlite_shell;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::slt::format::{hash_line, Values};
use kvsqlite::slt::kv_target::KvTarget;
use kvsqlite::slt::parser::{parse, ColumnType, Control, Expect, RecordKind};
use kvsqlite::slt::runner::{run_script, RunConfig, DEFAULT_HASH_THRESHOLD};
use sqlite_shell::{extension, load_and_open, shell_merged, stdout};

/// The scripts run: every script of `sql/tests/` whose results do not depend on the SQLite
/// version or build. Left out, for reasons outside kvsqlite: `json.test` (`jsonb` and the
/// two-argument `json_valid` are newer than 3.40), `alter_table.test` (3.40 writes the renamed
/// schema's SQL differently), `restart.test` (it expects `foreign_keys` on after a reopen, the
/// bundled build's default `SQLITE_DEFAULT_FOREIGN_KEYS=1`; Debian's is off),
/// `partial_index.test` (the shell prints `EXPLAIN QUERY PLAN` as a tree, not as rows) and
/// `values.test` (it reads text as integers, a conversion this file does not reimplement).
const SCRIPTS: &[&str] = &[
    "sql/tests/big_transactions.test",
    "sql/tests/blobs.test",
    "sql/tests/fts5.test",
    "sql/tests/generated.test",
    "sql/tests/page_size.test",
    "sql/tests/transactions.test",
    "sql/tests/triggers.test",
    "sql/tests/upsert.test",
    "sql/tests/vacuum.test",
    "sql/tests/views_cte.test",
    "sql/tests/window.test",
    "sql/tests/without_rowid.test",
];

/// One SQL literal of `.mode quote`.
#[derive(Debug, Clone, PartialEq)]
enum Literal {
    Null,
    Integer(i64),
    Real(f64),
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

/// Parses `.mode quote` output: literals separated by `,`, rows by a newline outside quotes.
fn parse_rows(text: &str) -> Result<Vec<Vec<Literal>>, String> {
    let b = text.as_bytes();
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let lit = match b[i] {
            b'\'' => {
                let mut s = Vec::new();
                i += 1;
                loop {
                    match b.get(i) {
                        None => return Err(format!("unterminated string in {text:?}")),
                        Some(b'\'') if b.get(i + 1) == Some(&b'\'') => {
                            s.push(b'\'');
                            i += 2;
                        }
                        Some(b'\'') => {
                            i += 1;
                            break;
                        }
                        Some(&c) => {
                            s.push(c);
                            i += 1;
                        }
                    }
                }
                Literal::Text(s)
            }
            b'X' if b.get(i + 1) == Some(&b'\'') => {
                let end = text[i + 2..]
                    .find('\'')
                    .ok_or_else(|| format!("unterminated blob in {text:?}"))?;
                let hex = &text[i + 2..i + 2 + end];
                i += end + 3;
                Literal::Blob(
                    (0..hex.len())
                        .step_by(2)
                        .map(|k| u8::from_str_radix(&hex[k..k + 2], 16).unwrap())
                        .collect(),
                )
            }
            _ => {
                let end = text[i..].find([',', '\n']).map_or(text.len(), |e| i + e);
                let tok = &text[i..end];
                i = end;
                if tok == "NULL" {
                    Literal::Null
                } else if let Ok(n) = tok.parse::<i64>() {
                    Literal::Integer(n)
                } else if let Ok(r) = tok.parse::<f64>() {
                    Literal::Real(r)
                } else {
                    return Err(format!("not an SQL literal: {tok:?}"));
                }
            }
        };
        row.push(lit);
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'\n') => {
                rows.push(std::mem::take(&mut row));
                i += 1;
            }
            None => rows.push(std::mem::take(&mut row)),
            Some(c) => return Err(format!("unexpected {:?} after a literal", *c as char)),
        }
    }
    Ok(rows)
}

/// Appends `lit` read as `ty`, as `sqlite3_column_*` would give it to the runner.
fn push(values: &mut Values, lit: &Literal, ty: ColumnType) {
    match (lit, ty) {
        (Literal::Null, _) => values.push_null(),
        (Literal::Integer(n), ColumnType::Integer) => values.push_integer(*n),
        (Literal::Integer(n), ColumnType::Real) => values.push_real(*n as f64),
        (Literal::Integer(n), ColumnType::Text) => values.push_text(n.to_string().as_bytes()),
        // sqlite3_column_int64 of a real: truncated toward zero, saturating.
        (Literal::Real(r), ColumnType::Integer) => values.push_integer(*r as i64),
        (Literal::Real(r), ColumnType::Real) => values.push_real(*r),
        (Literal::Text(t) | Literal::Blob(t), ColumnType::Text) => values.push_text(t),
        (Literal::Text(t), ColumnType::Integer)
            if std::str::from_utf8(t).is_ok_and(|s| s.parse::<i64>().is_ok()) =>
        {
            values.push_integer(std::str::from_utf8(t).unwrap().parse().unwrap())
        }
        (Literal::Text(t), ColumnType::Real)
            if std::str::from_utf8(t).is_ok_and(|s| s.parse::<f64>().is_ok()) =>
        {
            values.push_real(std::str::from_utf8(t).unwrap().parse().unwrap())
        }
        (lit, ty) => panic!("this test does not reimplement reading {lit:?} as {ty:?}"),
    }
}

/// Shell messages that say a statement failed, and those that say it failed on storage.
fn error_line(l: &str) -> bool {
    l.starts_with("Parse error") || l.starts_with("Runtime error") || l.starts_with("Error:")
}
fn storage_fault(l: &str) -> bool {
    [
        "disk I/O error",
        "malformed",
        "unable to open",
        "database is locked",
        "out of memory",
    ]
    .iter()
    .any(|m| l.contains(m))
}

/// What a script did through the shell: the runner's counts and every query's output lines
/// (by the line of the query's last SQL line).
#[derive(Debug, Default, PartialEq)]
struct Outcome {
    passed: usize,
    failed: usize,
    skipped: usize,
    outputs: Vec<(usize, Vec<String>)>,
    failures: Vec<String>,
}

fn run_in_shell(ext: &Path, kv: &str, actor: &str, text: &str) -> Outcome {
    let records = parse(text);
    let open = format!(".open file:{actor}?vfs=kvsqlite&kv={kv}\n");
    let mut input = format!(
        "{}.mode quote\n.headers off\n.bail off\n",
        load_and_open(ext, actor, kv)
    );
    for (i, r) in records.iter().enumerate() {
        if r.skipped_on("sqlite") {
            continue;
        }
        match &r.kind {
            RecordKind::Statement { sql, .. } | RecordKind::Query { sql, .. } => {
                input.push_str(&format!(".print ~~record {i}~~\n{sql}\n;\n"));
            }
            RecordKind::Control(Control::Restart) => {
                input.push_str(&format!(".print ~~record {i}~~\n{open}"));
            }
            RecordKind::Halt => break,
            _ => {}
        }
    }
    let out = shell_merged(&input);
    // The shell exits with 1 when any statement failed (a `statement error` record): it must
    // only have run to its end.
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{:?}: {}",
        out.status,
        stdout(&out)
    );
    let text_out = stdout(&out);
    let mut sections: HashMap<usize, String> = HashMap::new();
    let mut current: Option<usize> = None;
    for line in text_out.split_inclusive('\n') {
        if let Some(n) = line
            .trim_end()
            .strip_prefix("~~record ")
            .and_then(|r| r.strip_suffix("~~"))
        {
            current = Some(n.parse().unwrap());
            sections.insert(current.unwrap(), String::new());
            continue;
        }
        match current {
            Some(n) => sections.get_mut(&n).unwrap().push_str(line),
            // Before the first record: only the extension's one-time warning.
            None => assert!(line.contains("WARN"), "unexpected shell output {line:?}"),
        }
    }

    let mut o = Outcome::default();
    let mut threshold = DEFAULT_HASH_THRESHOLD;
    let mut labels: HashMap<String, String> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        if r.skipped_on("sqlite") {
            o.skipped += 1;
            continue;
        }
        let section = sections.get(&i).map(String::as_str).unwrap_or("");
        let errors: Vec<&str> = section.lines().filter(|l| error_line(l)).collect();
        let fail = |o: &mut Outcome, why: String| {
            o.failed += 1;
            o.failures.push(format!("line {}: {why}", r.line));
        };
        match &r.kind {
            RecordKind::HashThreshold(n) => threshold = *n,
            RecordKind::Halt => break,
            RecordKind::Invalid { message } => fail(&mut o, message.clone()),
            RecordKind::Control(_) => {
                if section.is_empty() {
                    o.passed += 1
                } else {
                    fail(&mut o, format!("restart printed {section:?}"))
                }
            }
            RecordKind::Statement { expect, .. } => {
                let storage = section.lines().any(storage_fault);
                match (expect, errors.is_empty()) {
                    (Expect::Ok, true) => o.passed += 1,
                    (Expect::Error, false) if !storage => o.passed += 1,
                    _ => fail(&mut o, format!("statement: {section:?}")),
                }
            }
            RecordKind::Query {
                types,
                sort,
                label,
                sql_end_line,
                expected,
                ..
            } => {
                if section.lines().any(|l| l.starts_with("Parse error")) {
                    fail(&mut o, format!("query failed: {section:?}"));
                    continue;
                }
                // A runtime error ends the result where it happened (compared as such).
                let body: String = section
                    .split_inclusive('\n')
                    .take_while(|l| !error_line(l))
                    .collect();
                let rows = parse_rows(&body).unwrap_or_else(|e| panic!("line {}: {e}", r.line));
                let mut values = Values::new();
                for row in &rows {
                    assert_eq!(row.len(), types.len(), "line {}: {row:?}", r.line);
                    for (lit, ty) in row.iter().zip(types) {
                        push(&mut values, lit, *ty);
                    }
                }
                let order = values.order(*sort, types.len());
                let hashed = threshold > 0 && values.len() > threshold;
                let md5 = (hashed || label.is_some()).then(|| values.md5(&order));
                if let (Some(label), Some(md5)) = (label, &md5) {
                    if labels.entry(label.clone()).or_insert_with(|| md5.clone()) != md5 {
                        fail(&mut o, format!("label {label} disagrees"));
                        continue;
                    }
                }
                let lines: Vec<String> = match (&md5, hashed) {
                    (Some(md5), true) => vec![hash_line(values.len(), md5)],
                    _ => order.iter().map(|&k| values.get(k).to_string()).collect(),
                };
                o.outputs.push((*sql_end_line, lines.clone()));
                match expected {
                    Some(e) if e.lines != lines => {
                        fail(&mut o, format!("expected {:?}, got {lines:?}", e.lines))
                    }
                    _ => o.passed += 1,
                }
            }
        }
    }
    o
}

/// The scripts of `sql/tests/` left out above, each for its reason there.
const LEFT_OUT: &[&str] = &[
    "sql/tests/alter_table.test",
    "sql/tests/json.test",
    "sql/tests/partial_index.test",
    "sql/tests/restart.test",
    "sql/tests/values.test",
];

/// A script added to `sql/tests/` is either run through the shell or left out with a reason:
/// never skipped by omission.
#[test]
fn every_script_of_sql_tests_is_run_or_left_out_by_name() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found: Vec<String> = std::fs::read_dir(root.join("sql/tests"))
        .unwrap()
        .map(|e| format!("sql/tests/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|p| p.ends_with(".test"))
        .collect();
    found.sort();
    let mut listed: Vec<String> = SCRIPTS
        .iter()
        .chain(LEFT_OUT)
        .map(|s| s.to_string())
        .collect();
    listed.sort();
    assert_eq!(found, listed);
}

#[test]
fn scripts_through_the_shell_loaded_vfs_give_the_results_of_kvsqlite_slt() {
    let Some(ext) = extension() else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let kv = format!("redb:{}", dir.path().join("kv.redb").display());
    for script in SCRIPTS {
        let path = root.join(script);
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_stem().unwrap().to_str().unwrap();
        let shell = run_in_shell(&ext, &kv, &format!("slt-{name}"), &text);

        // The runner `kvsqlite slt` uses, on a kvsqlite store of its own.
        let mut target = KvTarget::new(Arc::new(MemoryStore::new()));
        let config = RunConfig {
            collect_outputs: true,
            ..RunConfig::default()
        };
        let report = run_script(&mut target, &path, &text, &config);
        let runner_outputs: Vec<(usize, Vec<String>)> = report
            .outputs
            .iter()
            .map(|q| (q.sql_end_line, q.lines.clone()))
            .collect();
        assert_eq!(
            shell.failures,
            Vec::<String>::new(),
            "{script} through the shell"
        );
        assert_eq!(report.failed, 0, "{script}: {:?}", report.failures);
        assert_eq!(
            (shell.passed, shell.failed, shell.skipped),
            (report.passed, report.failed, report.skipped),
            "{script}"
        );
        assert!(
            shell.passed >= 5 && !shell.outputs.is_empty(),
            "{script}: {shell:?}"
        );
        assert_eq!(shell.outputs, runner_outputs, "{script}");

        // And the binary's own last line says the same.
        let out = Command::new(env!("CARGO_BIN_EXE_kvsqlite"))
            .args(["slt", "--kv", "memory:", script])
            .current_dir(root)
            .env_remove("KVSQLITE_KV")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stdout(&out));
        let mut want = format!("{} passed, 0 failed", shell.passed);
        if shell.skipped > 0 {
            want.push_str(&format!(", {} skipped", shell.skipped));
        }
        assert_eq!(stdout(&out).lines().last(), Some(want.as_str()), "{script}");
    }
}
