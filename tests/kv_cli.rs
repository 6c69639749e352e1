//! `kvsqlite kv …` through the built binary: editing an actor's raw keys, and bad input (URLs,
//! a redb file held by another process, limits) giving one clear error line, never a panic.

use std::process::{Command, Output};

use kvsqlite::kv::redb_store::RedbStore;
use kvsqlite::kv::{KvLimits, KvStore};

fn kvsqlite(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvsqlite"))
        .args(args)
        .env_remove("KVSQLITE_KV")
        .output()
        .expect("spawn kvsqlite")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts a clean failure: exit code 2, one line on stderr containing `needle`, no panic.
fn assert_clean_error(out: &Output, needle: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains("RUST_BACKTRACE"), "{err}");
}

#[test]
fn kv_cli_put_get_list_delete_on_redb() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("redb:{}", dir.path().join("sub/kv.redb").display());
    let kv = |args: &[&str]| {
        let mut all = vec!["--kv", url.as_str(), "kv", "--actor", "act-1"];
        all.extend_from_slice(args);
        kvsqlite(&all)
    };
    let out = kv(&["put", "alpha", "1", "0x00ff", "0xdeadbeef", "beta", ""]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = kv(&["list"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "0x00ff\t0xdeadbeef\nalpha\t1\nbeta\t\n");
    let out = kv(&["--hex", "list", "--keys-only"]);
    assert_eq!(text(&out.stdout), "0x00ff\n0x616c706861\n0x62657461\n");
    let out = kv(&["list", "--limit", "2"]);
    assert_eq!(text(&out.stdout), "0x00ff\t0xdeadbeef\nalpha\t1\n");
    let out = kv(&["list", "--prefix", "al"]);
    assert_eq!(text(&out.stdout), "alpha\t1\n");
    let out = kv(&["get", "alpha", "0x00FF", "missing"]);
    assert_eq!(out.status.code(), Some(1), "an absent key exits 1");
    assert_eq!(
        text(&out.stdout),
        "alpha\t1\n0x00ff\t0xdeadbeef\nmissing\t(absent)\n"
    );
    // Another actor sees nothing.
    let out = kvsqlite(&["--kv", &url, "kv", "--actor", "act-2", "list"]);
    assert_eq!(text(&out.stdout), "");
    let out = kv(&["delete", "alpha"]);
    assert_eq!(out.status.code(), Some(0));
    let out = kv(&["list", "--keys-only"]);
    assert_eq!(text(&out.stdout), "0x00ff\nbeta\n");
    let out = kv(&["delete", "--all"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&kv(&["list"]).stdout), "");
    // The data really is in the file.
    let out = kv(&["put", "k", "v"]);
    assert_eq!(out.status.code(), Some(0));
    let store = RedbStore::open(dir.path().join("sub/kv.redb"), KvLimits::default()).unwrap();
    assert_eq!(
        store.get("act-1", &[b"k".to_vec()]).unwrap(),
        vec![Some(b"v".to_vec())]
    );
}

#[test]
fn kv_cli_long_values_are_cut_unless_full() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    {
        let s = RedbStore::open(&path, KvLimits::default()).unwrap();
        s.put("a", vec![(b"page".to_vec(), vec![0xAB; 100])])
            .unwrap();
    }
    let url = format!("redb:{}", path.display());
    let out = kvsqlite(&["--kv", &url, "kv", "--actor", "a", "list"]);
    let expected = format!("page\t0x{}… (100 bytes)\n", "ab".repeat(64));
    assert_eq!(text(&out.stdout), expected);
    let out = kvsqlite(&["--kv", &url, "kv", "--actor", "a", "list", "--full"]);
    assert_eq!(text(&out.stdout), format!("page\t0x{}\n", "ab".repeat(100)));
}

#[test]
fn kv_cli_store_from_env() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("redb:{}", dir.path().join("env.redb").display());
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kvsqlite"))
            .args(args)
            .env("KVSQLITE_KV", &url)
            .output()
            .unwrap()
    };
    assert_eq!(
        run(&["kv", "--actor", "a", "put", "x", "y"]).status.code(),
        Some(0)
    );
    assert_eq!(
        text(&run(&["kv", "--actor", "a", "get", "x"]).stdout),
        "x\ty\n"
    );
    assert!(dir.path().join("env.redb").exists());
}

#[test]
fn kv_cli_malformed_urls_are_clear_errors() {
    for url in [
        "nope",
        "sqlite:x.db",
        "redb:",
        "memory:extra",
        "postgres://h:xx/db",
    ] {
        let out = kvsqlite(&["--kv", url, "kv", "--actor", "a", "list"]);
        assert_clean_error(
            &out,
            "accepted forms: memory:, redb:PATH, postgres://USER@HOST:PORT/DB, \
     redis://HOST:PORT, redis-cluster://HOST:PORT[,HOST:PORT...]",
        );
    }
}

#[test]
fn kv_cli_locked_redb_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("held.redb");
    let held = RedbStore::open(&path, KvLimits::default()).unwrap();
    held.put("a", vec![(b"k".to_vec(), b"v".to_vec())]).unwrap();
    let url = format!("redb:{}", path.display());
    let out = kvsqlite(&["--kv", &url, "kv", "--actor", "a", "list"]);
    assert_clean_error(&out, "locked");
    assert_clean_error(&out, "held.redb");
    // Nothing was harmed: the holder still reads and writes.
    held.put("a", vec![(b"k2".to_vec(), b"v2".to_vec())])
        .unwrap();
    assert_eq!(
        held.get("a", &[b"k".to_vec(), b"k2".to_vec()]).unwrap(),
        vec![Some(b"v".to_vec()), Some(b"v2".to_vec())]
    );
    drop(held);
    // Released: now the binary opens it.
    let out = kvsqlite(&["--kv", &url, "kv", "--actor", "a", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "k\tv\nk2\tv2\n");
}

#[test]
fn kv_cli_bad_input_is_a_clear_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("redb:{}", dir.path().join("kv.redb").display());
    let long_key = "k".repeat(2049);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["kv", "--actor", "a", "put", &long_key, "v"],
            "key of 2049 bytes exceeds",
        ),
        (
            vec!["kv", "--actor", "a", "put", "0xabc", "v"],
            "even number of digits",
        ),
        (
            vec!["kv", "--actor", "a", "put", "0xzz", "v"],
            "not valid hex",
        ),
        (
            vec!["kv", "--actor", "a", "put", "k", "v", "k", "w"],
            "appears twice",
        ),
        (vec!["kv", "--actor", "", "list"], "invalid actor id"),
        (vec!["kv", "list"], "--actor ID is required"),
        (
            vec!["kv", "--actor", "a", "list", "--limit", "0"],
            "--limit must be at least 1",
        ),
        (vec!["kv", "--actor", "a", "delete"], "delete needs keys"),
        (
            vec!["--rtt=-5", "kv", "--actor", "a", "list"],
            "error: invalid value '-5' for '--rtt <MS>'",
        ),
    ];
    for (args, needle) in cases {
        let mut all = vec!["--kv", url.as_str()];
        all.extend(args);
        let out = kvsqlite(&all);
        assert_clean_error(&out, needle);
    }
    let store = RedbStore::open(dir.path().join("kv.redb"), KvLimits::default()).unwrap();
    assert!(store
        .list("a", &kvsqlite::kv::ListRequest::prefix(vec![]))
        .unwrap()
        .entries
        .is_empty());
}

#[test]
fn kv_cli_memory_store_and_rtt() {
    // memory: lives for one process, so a list after nothing is empty; --rtt is accepted.
    let out = kvsqlite(&[
        "--kv", "memory:", "--rtt", "1", "kv", "--actor", "a", "list",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");
}

#[test]
fn kv_cli_default_store_is_redb_under_kvsqlite_data() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kvsqlite"))
            .args(args)
            .env_remove("KVSQLITE_KV")
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let out = run(&["kv", "--actor", "a", "put", "k", "v"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(dir.path().join("kvsqlite-data/kv.redb").is_file());
    assert_eq!(
        text(&run(&["kv", "--actor", "a", "get", "k"]).stdout),
        "k\tv\n"
    );
}

#[test]
fn kv_cli_help_and_errors_never_show_a_password() {
    let url = "postgres://bob:hunter2@127.0.0.1:1/nodb";
    let out = Command::new(env!("CARGO_BIN_EXE_kvsqlite"))
        .args(["kv", "--help"])
        .env("KVSQLITE_KV", url)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("KVSQLITE_KV"));
    assert!(!text(&out.stdout).contains("hunter2"));
    // A malformed URL carrying a password: the error redacts it.
    let out = kvsqlite(&[
        "--kv",
        "postgres://bob:hunter2@h:port/db",
        "kv",
        "--actor",
        "a",
        "list",
    ]);
    assert_clean_error(&out, "accepted forms");
    assert!(
        !text(&out.stderr).contains("hunter2"),
        "{}",
        text(&out.stderr)
    );
}
