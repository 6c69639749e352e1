//! Our SQL test scripts (`sql/tests/*.test`): their expected results are stock SQLite's, and
//! every backend reproduces them.

use std::path::{Path, PathBuf};

use kvsqlite::slt::{self, KnownDeviations, RunConfig, Target};

fn scripts() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/tests");
    slt::collect_scripts(&[dir]).expect("sql/tests is readable")
}

fn config() -> RunConfig {
    let list = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/known-deviations.txt");
    RunConfig {
        deviations: KnownDeviations::load(&list).expect("the deviation list parses"),
        ..RunConfig::default()
    }
}

/// Runs every script on `target`; fails listing every failure.
fn run_on(target: &mut dyn Target) {
    let scripts = scripts();
    assert!(scripts.len() >= 15, "{scripts:?}");
    let mut failures = Vec::new();
    let summary = slt::run_all(target, &scripts, &config(), |r| {
        println!("{}", r.summary_line());
        failures.extend(r.failures.iter().map(|f| f.to_string()));
    });
    println!("{}", summary.last_line());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(summary.expected_different, 0);
    assert!(summary.passed >= 300, "{}", summary.last_line());
}

/// The scripts' expected results are what stock SQLite on a file produces.
#[test]
fn sql_tests_on_stock_sqlite() {
    run_on(&mut slt::NativeTarget::new().unwrap());
}
