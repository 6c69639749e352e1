//! The sqllogictest runner's own behaviour, on stock SQLite (`NativeTarget`): failures carry
//! file:line with expected and actual, hashing agrees with the reference runner on a corpus
//! file, guards/halt/CRLF are honoured, known deviations are reported as expected-different,
//! and the CLI's last line and exit codes.

use std::path::Path;
use std::process::Command;

use kvsqlite::slt::{self, KnownDeviations, NativeTarget, RunConfig};

fn native() -> NativeTarget {
    NativeTarget::new().expect("temporary directory")
}

#[path = "common/corpus.rs"]
mod corpus_dir;
use corpus_dir::corpus;

const WRONG: &str = "statement ok
CREATE TABLE t(a INTEGER, b TEXT)

statement ok
INSERT INTO t VALUES(1, 'one'), (2, 'two')

query IT rowsort
SELECT a, b FROM t
----
1
one
2
deux

query I nosort
SELECT count(*) FROM t
----
2
";

#[test]
fn a_wrong_expected_value_fails_with_file_and_line() {
    let path = Path::new("scripts/wrong.test");
    let report = slt::run_script(&mut native(), path, WRONG, &RunConfig::default());
    assert_eq!((report.passed, report.failed, report.skipped), (3, 1, 0));
    let f = &report.failures[0];
    assert_eq!(f.line, 7);
    assert_eq!(f.expected, ["1", "one", "2", "deux"]);
    assert_eq!(f.actual, ["1", "one", "2", "two"]);
    let shown = f.to_string();
    assert!(
        shown.starts_with("scripts/wrong.test:7: wrong result (expected output starts at line 10)"),
        "{shown}"
    );
    assert!(shown.contains("\n    deux\n"), "{shown}");
    assert!(shown.ends_with("\n    two"), "{shown}");
}

#[test]
fn statement_expectations_and_query_errors_are_failures() {
    let script = "statement ok\nCREATE TABLE t(a)\n\nstatement error\nCREATE TABLE u(a)\n\n\
                  statement ok\nINSERT INTO nope VALUES(1)\n\nquery I\nSELECT * FROM nope\n----\n\n\
                  query II\nSELECT 1\n----\n1\n\nbogus record\n\nstatement error\nCREATE TABLE t(a)\n";
    let report = slt::run_script(
        &mut native(),
        Path::new("s.test"),
        script,
        &RunConfig::default(),
    );
    let got: Vec<(usize, &str)> = report
        .failures
        .iter()
        .map(|f| (f.line, f.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (4, "statement succeeded but an error was expected"),
            (7, "statement failed: no such table: nope"),
            (10, "query failed: no such table: nope"),
            (
                14,
                "query failed: query returns 1 column(s) but its type string names 2"
            ),
            (19, "unknown record type \"bogus\""),
        ]
    );
    assert_eq!(report.passed, 2);
}

#[test]
fn guards_halt_crlf_and_hash_threshold() {
    let script = "hash-threshold 3\r\n\r\nskipif sqlite # not us\r\nstatement ok\r\nnot sql at all\r\n\r\n\
                  onlyif SQLite\r\nquery I nosort\r\nSELECT 1\r\n----\r\n1\r\n\r\n\
                  onlyif mysql\r\nhalt\r\n\r\n\
                  query I valuesort\r\nVALUES(3),(1),(2),(10)\r\n----\r\n4 values hashing to 87c6477e10fbbfe1f7628fe090f8d2c2\r\n\r\n\
                  skipif sqlite\r\nhalt\r\n\r\nquery T nosort\r\nSELECT 'still running'\r\n----\r\nstill running\r\n\r\n\
                  onlyif sqlite\r\nhalt\r\n\r\nstatement ok\r\nnot reached\r\n";
    let report = slt::run_script(
        &mut native(),
        Path::new("g.test"),
        script,
        &RunConfig::default(),
    );
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!((report.passed, report.failed, report.skipped), (3, 0, 3));
    assert_eq!(report.notes, ["g.test:30: halt"]);
}

#[test]
fn labels_must_agree() {
    let script =
        "query I nosort lbl\nSELECT 1\n----\n1\n\nquery I nosort lbl\nSELECT 1\n----\n1\n\n\
                  query I nosort lbl\nSELECT 2\n----\n2\n";
    let report = slt::run_script(
        &mut native(),
        Path::new("l.test"),
        script,
        &RunConfig::default(),
    );
    assert_eq!((report.passed, report.failed), (2, 1));
    assert_eq!(report.failures[0].line, 11);
    assert_eq!(
        report.failures[0].message,
        "labeled result [lbl] does not agree with previous values"
    );
}

#[test]
fn control_restart_keeps_committed_and_drops_uncommitted() {
    let script = "statement ok\nCREATE TABLE t(a)\n\nstatement ok\nINSERT INTO t VALUES(1)\n\n\
                  statement ok\nBEGIN\n\nstatement ok\nINSERT INTO t VALUES(2)\n\ncontrol restart\n\n\
                  query I nosort\nSELECT group_concat(a) FROM t\n----\n1\n\ncontrol reboot\n";
    let report = slt::run_script(
        &mut native(),
        Path::new("r.test"),
        script,
        &RunConfig::default(),
    );
    assert_eq!((report.passed, report.failed), (6, 1));
    assert_eq!(report.failures[0].line, 20);
    assert_eq!(
        report.failures[0].message,
        "unknown control directive \"reboot\" (known: restart)"
    );
}

#[test]
fn known_deviations_are_reported_as_expected_different() {
    let path = Path::new("dir/wrong.test");
    let config = RunConfig {
        deviations: KnownDeviations::parse(
            "wrong.test:7 the fourth value differs on purpose\nwrong.test:15 stale entry\n",
            "list",
        )
        .unwrap(),
        ..RunConfig::default()
    };
    let report = slt::run_script(&mut native(), path, WRONG, &config);
    assert_eq!(
        (report.passed, report.failed, report.expected_different),
        (3, 0, 1)
    );
    assert!(report.expected_different_records[0]
        .to_string()
        .starts_with("dir/wrong.test:7: expected-different: wrong result"));
    assert_eq!(
        report.notes,
        ["dir/wrong.test:15: listed as a known deviation (stale entry) but matched: remove the entry"]
    );
    let mut summary = slt::Summary::default();
    summary.add(&report);
    assert_eq!(
        summary.last_line(),
        "3 passed, 0 failed, 1 expected-different"
    );
}

/// select1.test compares 909 of its queries by hashes the reference runner computed: every one
/// must agree.
#[test]
fn hashing_matches_the_reference_on_select1() {
    let Some(dir) = corpus() else { return };
    let path = dir.join("select1.test");
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.matches(" values hashing to ").count(), 909);
    let report = slt::run_file(&mut native(), &path, &RunConfig::default());
    assert!(report.failures.is_empty(), "{}", report.failures[0]);
    assert_eq!((report.passed, report.failed, report.skipped), (1031, 0, 0));
}

#[test]
fn collect_scripts_recurses_sorted_and_refuses_missing_paths() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/tests");
    let scripts = slt::collect_scripts(std::slice::from_ref(&dir)).unwrap();
    assert!(scripts.len() >= 10);
    assert!(scripts.windows(2).all(|w| w[0] < w[1]));
    assert!(scripts.iter().all(|p| p.extension().unwrap() == "test"));
    let err = slt::collect_scripts(&[dir.join("no-such-dir")]).unwrap_err();
    assert!(err.contains("no-such-dir"), "{err}");
}

fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kvsqlite"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn cli_reports_failures_and_exits_non_zero() {
    let dir = std::env::temp_dir().join(format!("kvsqlite-slt-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wrong = dir.join("wrong.test");
    std::fs::write(&wrong, WRONG).unwrap();
    let (code, stdout, _) = cli(&["slt", "--native", wrong.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains(&format!("{}:7: wrong result", wrong.display())),
        "{stdout}"
    );
    assert_eq!(stdout.lines().last(), Some("3 passed, 1 failed"));

    let good = dir.join("good.test");
    std::fs::write(
        &good,
        "onlyif mysql\nstatement ok\nx\n\nquery I\nSELECT 1\n----\n1\n",
    )
    .unwrap();
    let (code, stdout, _) = cli(&["slt", "--native", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(stdout.lines().last(), Some("1 passed, 0 failed, 1 skipped"));

    let (code, _, stderr) = cli(&[
        "slt",
        "--native",
        dir.join("missing.test").to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(
        stderr.starts_with("kvsqlite slt: ") && stderr.contains("missing.test"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cli_finds_the_deviation_list_next_to_the_scripts_from_any_directory() {
    // A repository layout: repo/sql/tests/wrong.test and repo/sql/known-deviations.txt listing
    // its wrong record; the runner is started from an unrelated directory.
    let repo = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(repo.path().join("sql/tests")).unwrap();
    let script = repo.path().join("sql/tests/wrong.test");
    std::fs::write(&script, WRONG).unwrap();
    let list = repo.path().join("sql/known-deviations.txt");
    std::fs::write(
        &list,
        "tests/wrong.test:7 listed on purpose for this test\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kvsqlite"))
        .args(["--kv", "memory:", "slt"])
        .arg(&script)
        .current_dir(elsewhere.path())
        .env_remove("KVSQLITE_KV")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[lines.len() - 2],
        format!(
            "1 script(s) on memory, 0 with failures (known deviations: {})",
            list.canonicalize().unwrap().display()
        )
    );
    assert_eq!(
        lines.last(),
        Some(&"3 passed, 0 failed, 1 expected-different")
    );
    // Under --native the list does not apply: stock SQLite is the reference.
    let out = Command::new(env!("CARGO_BIN_EXE_kvsqlite"))
        .args(["slt", "--native"])
        .arg(&script)
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert_eq!(stdout.lines().last(), Some("3 passed, 1 failed"));
}
