//! Our SQL test scripts (`sql/tests/*.test`): their expected results are stock SQLite's, and
//! every store reproduces them (memory, redb, postgres, redis-cluster), apart from the records listed in
//! `sql/known-deviations.txt`, which must then differ exactly as listed.

#[path = "common/pg.rs"]
mod pg;

#[path = "common/redis_cluster.rs"]
mod cluster_helper;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::redb_store::RedbStore;
use kvsqlite::kv::{KvLimits, SharedStore};
use kvsqlite::slt::{self, KnownDeviations, KvTarget, RunConfig, Target};

fn scripts() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/tests");
    slt::collect_scripts(&[dir]).expect("sql/tests is readable")
}

fn deviations() -> KnownDeviations {
    let list = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/known-deviations.txt");
    KnownDeviations::load(&list).expect("the deviation list parses")
}

/// Runs every script on `target` with `deviations`; fails listing every failure. Returns the
/// `path:line` of every expected-different record.
fn run_on(target: &mut dyn Target, deviations: KnownDeviations) -> Vec<String> {
    let scripts = scripts();
    assert!(scripts.len() >= 16, "{scripts:?}");
    let config = RunConfig {
        deviations,
        ..RunConfig::default()
    };
    let mut failures = Vec::new();
    let mut different = Vec::new();
    let summary = slt::run_all(target, &scripts, &config, |r| {
        println!("{}", r.summary_line());
        for n in &r.notes {
            println!("  note: {n}");
        }
        failures.extend(r.failures.iter().map(|f| f.to_string()));
        different.extend(r.expected_different_records.iter().map(|f| {
            let name = f.path.file_name().unwrap().to_string_lossy();
            format!("{name}:{}", f.line)
        }));
    });
    println!("{} on {}", summary.last_line(), target.name());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(summary.passed >= 300, "{}", summary.last_line());
    different
}

/// What the kvsqlite stores differ in, today: nothing (`sql/known-deviations.txt` lists no
/// record of `sql/tests`).
const EXPECTED_DIFFERENT: [&str; 0] = [];

fn run_on_store(store: SharedStore, prefix: Option<String>) {
    let mut target = KvTarget::new(store);
    if let Some(p) = prefix {
        target = target.with_actor_prefix(p);
    }
    let different = run_on(&mut target, deviations());
    assert_eq!(
        different, EXPECTED_DIFFERENT,
        "the records that differ from stock SQLite changed: if a listed record now matches, \
         remove it from sql/known-deviations.txt and from EXPECTED_DIFFERENT"
    );
}

/// The scripts' expected results are what stock SQLite on a file produces: every record
/// passes there, with no deviation list.
#[test]
fn sql_tests_on_stock_sqlite() {
    let mut native = slt::NativeTarget::new().unwrap();
    assert!(run_on(&mut native, KnownDeviations::empty()).is_empty());
}

#[test]
fn sql_tests_on_memory() {
    run_on_store(Arc::new(MemoryStore::new()), None);
}

#[test]
fn sql_tests_on_redb() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        RedbStore::open(dir.path().join("kv.redb"), KvLimits::default()).expect("redb store");
    run_on_store(Arc::new(store), None);
}

#[test]
fn sql_tests_on_postgres() {
    let Some(pg) = pg::test_store() else { return };
    let prefix = pg.actor("slt-");
    run_on_store(pg.store.clone(), Some(prefix));
}

#[test]
fn sql_tests_on_redis_cluster() {
    let Some(cluster) = cluster_helper::shared() else {
        return;
    };
    let store = kvsqlite::kv::redis::RedisStore::connect(&cluster.url("")).unwrap();
    run_on_store(Arc::new(store), None);
}
