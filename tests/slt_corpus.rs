//! SQLite's sqllogictest corpus (select1-3 and evidence/, at `../shared/corpus/sqllogictest`)
//! through kvsqlite on the memory and redb stores: every record passes. A missing corpus is a
//! printed skip, or a failure when `CI=true`. `KVSQLITE_SLT_CORPUS` points the tests at another
//! copy of the corpus.

use std::path::Path;
use std::sync::Arc;

use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::redb_store::RedbStore;
use kvsqlite::kv::{KvLimits, SharedStore};
use kvsqlite::slt::{self, KnownDeviations, KvTarget, RunConfig};

#[path = "common/corpus.rs"]
mod corpus_dir;
use corpus_dir::corpus;

fn run_corpus(store: SharedStore) {
    let Some(dir) = corpus() else { return };
    let scripts = slt::collect_scripts(&[dir]).unwrap();
    let names: Vec<String> = scripts
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 15, "{names:?}");
    for want in ["select1.test", "select2.test", "select3.test", "in1.test"] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    let list = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/known-deviations.txt");
    let config = RunConfig {
        deviations: KnownDeviations::load(&list).unwrap(),
        ..RunConfig::default()
    };
    let mut target = KvTarget::new(store);
    let mut failures = Vec::new();
    let summary = slt::run_all(&mut target, &scripts, &config, |r| {
        println!("{}", r.summary_line());
        failures.extend(r.failures.iter().map(|f| f.to_string()));
    });
    println!("{}", summary.last_line());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Every record of the corpus, exactly: none listed as a deviation, none failing.
    assert_eq!(
        summary,
        slt::Summary {
            files: 15,
            files_failed: 0,
            passed: 5902,
            failed: 0,
            skipped: 15,
            expected_different: 0,
        }
    );
}

#[test]
fn corpus_on_memory() {
    run_corpus(Arc::new(MemoryStore::new()));
}

#[test]
fn corpus_on_redb() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path().join("kv.redb"), KvLimits::default()).unwrap();
    run_corpus(Arc::new(store));
}

/// The missing-corpus rule itself: this test binary re-runs `corpus_on_memory` against a corpus
/// path that does not exist, once with `CI=true` (it must fail, saying why) and once without
/// (it must pass, printing that it skipped).
#[test]
fn missing_corpus_skips_or_fails_under_ci() {
    let exe = std::env::current_exe().unwrap();
    let run = |ci: Option<&str>| {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args([
            "--exact",
            "corpus_on_memory",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KVSQLITE_SLT_CORPUS", "/nonexistent/kvsqlite-corpus");
        match ci {
            Some(v) => cmd.env("CI", v),
            None => cmd.env_remove("CI"),
        };
        let out = cmd.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = run(Some("true"));
    assert!(!ok, "{text}");
    assert!(
        text.contains(
            "CI=true and the sqllogictest corpus is missing at /nonexistent/kvsqlite-corpus"
        ),
        "{text}"
    );
    let (ok, text) = run(None);
    assert!(ok, "{text}");
    assert!(
        text.contains(
            "SKIPPED: the sqllogictest corpus is missing at /nonexistent/kvsqlite-corpus"
        ),
        "{text}"
    );
}
