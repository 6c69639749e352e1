//! Bad input to every command, through the built binary: the exact error line on standard
//! error and the exit code (0 done, 1 a reported failure, 2 could not run), never a panic.
//! Each case runs in its own temporary directory with `KVSQLITE_KV` removed, so nothing
//! depends on the caller's environment or leaves a default store behind.

use std::path::Path;
use std::process::Command;

const FORMS: &str = "accepted forms: memory:, redb:PATH, postgres://USER@HOST:PORT/DB, \
     redis://HOST:PORT, redis-cluster://HOST:PORT[,HOST:PORT...]";

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvsqlite"));
    cmd.args(args).current_dir(dir).env_remove("KVSQLITE_KV");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("spawn kvsqlite");
    let out = Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    out
}

/// Asserts exit code 2 and exactly `line` (plus a newline) on standard error.
fn assert_error(out: &Out, line: &str) {
    assert_eq!(out.code, 2, "stderr: {}", out.stderr);
    assert_eq!(out.stderr, format!("{line}\n"));
}

/// Asserts exit code 2 and a usage error from the argument parser whose first line is `first`.
fn assert_usage_error(out: &Out, first: &str) {
    assert_eq!(out.code, 2, "stderr: {}", out.stderr);
    assert_eq!(out.stderr.lines().next(), Some(first), "{}", out.stderr);
}

#[test]
fn malformed_and_unknown_store_urls_list_the_accepted_forms_on_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // slt checks its paths before it opens the store: give it a script.
    std::fs::write(d.join("x.test"), "statement ok\nSELECT 1\n").unwrap();
    let cases = [
        ("bogus", "no scheme (expected `scheme:`)"),
        ("sqlite:x.db", "unknown scheme \"sqlite\""),
        ("memory:x", "memory: takes nothing after the colon"),
        ("redb:", "redb: needs a file path, e.g. redb:./data/kv.redb"),
        (
            "postgres://u@h:abc/db",
            "port \"abc\" is not a number 0..=65535",
        ),
        (
            "redis-cluster://h:1,h:abc",
            "port \"abc\" is not a number 1..=65535",
        ),
        (
            "redis://h:1?wait=all",
            "wait \"all\" is not a number of replicas",
        ),
    ];
    for (url, why) in cases {
        let msg = format!("invalid store URL {url:?}: {why}; {FORMS}");
        let out = run_in(d, &["--kv", url, "kv", "--actor", "a", "list"], &[]);
        assert_error(&out, &format!("kvsqlite kv: {msg}"));
        let out = run_in(d, &["--kv", url, "slt", "x.test"], &[]);
        assert_error(&out, &format!("kvsqlite slt: {msg}"));
        let out = run_in(d, &["--kv", url, "bench", "commit"], &[]);
        assert_error(&out, &format!("kvsqlite bench commit: {msg}"));
    }
    // The same from the environment.
    let out = run_in(
        d,
        &["kv", "--actor", "a", "list"],
        &[("KVSQLITE_KV", "nope")],
    );
    assert_error(
        &out,
        &format!(
            "kvsqlite kv: invalid store URL \"nope\": no scheme (expected `scheme:`); {FORMS}"
        ),
    );
    // Nothing was created by any of them.
    assert!(!d.join("kvsqlite-data").exists());
}

#[test]
fn an_empty_kvsqlite_kv_means_the_default_store() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_in(
        dir.path(),
        &["kv", "--actor", "a", "put", "k", "v"],
        &[("KVSQLITE_KV", "")],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(dir.path().join("kvsqlite-data/kv.redb").is_file());
    // An explicit empty --kv is still an error: the user typed it.
    let out = run_in(dir.path(), &["--kv", "", "kv", "--actor", "a", "list"], &[]);
    assert_error(
        &out,
        &format!("kvsqlite kv: invalid store URL \"\": the URL is empty; {FORMS}"),
    );
}

#[test]
fn redb_paths_that_cannot_hold_a_store_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("notes.txt"), "hello, not a database\n").unwrap();
    std::fs::create_dir(d.join("adir")).unwrap();
    let real = |p: &str| d.canonicalize().unwrap().join(p).display().to_string();
    let list = |url: &str| run_in(d, &["--kv", url, "kv", "--actor", "a", "list"], &[]);

    let out = list("redb:adir");
    assert_error(
        &out,
        &format!(
            "kvsqlite kv: redb store error: {}: is a directory, not a redb file",
            real("adir")
        ),
    );
    let out = list("redb:notes.txt");
    assert_error(
        &out,
        &format!(
            "kvsqlite kv: redb store error: {}: not a redb database (Not a redb database: \
             magic number mismatch)",
            real("notes.txt")
        ),
    );
    // A path whose parent is a file (it cannot be created).
    let out = list("redb:notes.txt/sub/kv.redb");
    assert_error(
        &out,
        "kvsqlite kv: redb store unavailable: cannot create directory notes.txt/sub: notes.txt is \
         a file, not a directory",
    );
    // The text file is untouched by all of this.
    assert_eq!(
        std::fs::read_to_string(d.join("notes.txt")).unwrap(),
        "hello, not a database\n"
    );
}

#[test]
fn a_redb_file_of_another_program_is_refused_and_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.redb");
    let theirs: redb::TableDefinition<&str, &str> = redb::TableDefinition::new("settings");
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(theirs).unwrap().insert("a", "b").unwrap();
        txn.commit().unwrap();
    }
    let url = format!("redb:{}", path.display());
    let out = run_in(
        dir.path(),
        &["--kv", &url, "kv", "--actor", "a", "put", "k", "v"],
        &[],
    );
    assert_error(
        &out,
        &format!(
            "kvsqlite kv: redb store error: {}: a redb database of another program (its tables: \
             settings), not a kvsqlite store; nothing was written",
            path.canonicalize().unwrap().display()
        ),
    );
    use redb::{ReadableDatabase, TableHandle};
    let db = redb::Database::create(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let names: Vec<String> = txn
        .list_tables()
        .unwrap()
        .map(|t| t.name().to_string())
        .collect();
    assert_eq!(names, vec!["settings".to_string()]);
}

#[test]
fn unreachable_postgres_is_unavailable_on_every_command() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("x.test"), "statement ok\nSELECT 1\n").unwrap();
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let url = "postgres://postgres@127.0.0.1:1/test?connect_timeout=2";
    let prefix =
        "postgres store unavailable: cannot connect to postgres://postgres@127.0.0.1:1/test: \
                  error connecting to server: ";
    for (args, command) in [
        (vec!["kv", "--actor", "a", "list"], "kv"),
        (vec!["slt", "x.test"], "slt"),
        (vec!["bench", "commit"], "bench commit"),
    ] {
        let mut all = vec!["--kv", url];
        all.extend(args);
        let out = run_in(dir.path(), &all, &[]);
        assert_eq!(out.code, 2, "{}", out.stderr);
        assert!(
            out.stderr
                .starts_with(&format!("kvsqlite {command}: {prefix}")),
            "{}",
            out.stderr
        );
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    }
    // A parameter the driver does not know is named.
    let out = run_in(
        dir.path(),
        &[
            "--kv",
            "postgres://bob:hunter2@127.0.0.1:1/test?bogus=1",
            "kv",
            "--actor",
            "a",
            "list",
        ],
        &[],
    );
    assert_error(
        &out,
        &format!(
            "kvsqlite kv: invalid store URL \"postgres://bob:***@127.0.0.1:1/test?bogus=1\": \
             invalid connection string: unknown option `bogus` (this store reads table= and \
             pool_size=; other parameters go to the PostgreSQL driver, e.g. connect_timeout, \
             sslmode, application_name); {FORMS}"
        ),
    );
}

#[test]
fn rtt_must_be_a_sane_number_of_milliseconds() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["-1", "abc", "NaN", "inf", "1e300", "3600001", ""] {
        let out = run_in(
            dir.path(),
            &[
                "--kv", "memory:", "--rtt", bad, "kv", "--actor", "a", "list",
            ],
            &[],
        );
        assert_usage_error(
            &out,
            &format!(
                "error: invalid value '{bad}' for '--rtt <MS>': expected a number of \
                 milliseconds from 0 to 3600000"
            ),
        );
    }
    let out = run_in(
        dir.path(),
        &[
            "--kv", "memory:", "--rtt", "0.5", "kv", "--actor", "a", "list",
        ],
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[test]
fn actor_ids_and_kv_limits_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let kv = |args: &[&str]| {
        let mut all = vec!["--kv", "memory:", "kv"];
        all.extend_from_slice(args);
        run_in(dir.path(), &all, &[])
    };
    assert_error(
        &kv(&["--actor", "", "list"]),
        "kvsqlite kv: invalid actor id: it is empty",
    );
    let long = "a".repeat(513);
    assert_error(
        &kv(&["--actor", &long, "list"]),
        "kvsqlite kv: invalid actor id: it is 513 bytes long; the limit is 512",
    );
    assert_error(&kv(&["list"]), "kvsqlite kv: --actor ID is required");
    // A value over 128 KiB cannot even be passed as one argument on Linux (at most 128 KiB
    // minus one byte), so the write limits are reached by several values together: more than
    // 976 KiB of keys and values, or more than 128 entries.
    let big = "v".repeat(125_000);
    let mut args = vec!["--actor", "a", "put"];
    let keys: Vec<String> = (0..8).map(|i| format!("k{i}")).collect();
    for k in &keys {
        args.push(k);
        args.push(&big);
    }
    assert_error(
        &kv(&args),
        "kvsqlite kv: write of 1000016 bytes exceeds the limit of 999424 bytes",
    );
    let keys: Vec<String> = (0..129).map(|i| format!("k{i}")).collect();
    let mut args = vec!["--actor", "a", "put"];
    for k in &keys {
        args.push(k);
        args.push("v");
    }
    assert_error(
        &kv(&args),
        "kvsqlite kv: write of 129 entries exceeds the limit of 128",
    );
    let key = "k".repeat(2049);
    assert_error(
        &kv(&["--actor", "a", "put", &key, "v"]),
        "kvsqlite kv: key of 2049 bytes exceeds the limit of 2048 bytes",
    );
    assert_error(
        &kv(&["--actor", "a", "put", "", "v"]),
        "kvsqlite kv: empty key: keys must be at least one byte",
    );
    assert_error(
        &kv(&["--actor", "a", "put", "0xabc", "v"]),
        "kvsqlite kv: \"0xabc\": hex must have an even number of digits (text starting with 0x \
         must be given as hex)",
    );
    // An absent key is a reported failure (1), not an error.
    let out = kv(&["--actor", "a", "get", "missing"]);
    assert_eq!((out.code, out.stdout.as_str()), (1, "missing\t(absent)\n"));
    assert_eq!(out.stderr, "");
}

#[test]
fn slt_bad_paths_cannot_run_and_bad_scripts_fail() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("empty")).unwrap();
    std::fs::create_dir(d.join("other")).unwrap();
    std::fs::write(d.join("other/readme.txt"), "no scripts here").unwrap();
    let slt = |args: &[&str]| {
        let mut all = vec!["--kv", "memory:", "slt"];
        all.extend_from_slice(args);
        run_in(d, &all, &[])
    };
    // Cannot run: exit 2, one line.
    let out = slt(&["missing.test"]);
    assert_error(
        &out,
        "kvsqlite slt: cannot read missing.test: No such file or directory (os error 2)",
    );
    assert_error(
        &slt(&["empty", "other"]),
        "kvsqlite slt: no *.test script under empty, other",
    );
    assert_error(
        &slt(&["--known-deviations", "nope.txt", "other"]),
        "kvsqlite slt: cannot read nope.txt: No such file or directory (os error 2)",
    );
    assert_usage_error(
        &slt(&[]),
        "error: the following required arguments were not provided:",
    );

    // Scripts that are not scripts: each fails at its line, exit 1.
    std::fs::write(d.join("binary.test"), [0u8, 159, 146, 150, 0xff, 0, 1]).unwrap();
    let mut latin1 = b"statement ok\nCREATE TABLE t(x)\n\nquery T\nSELECT '".to_vec();
    latin1.extend_from_slice(&[0xe9]);
    latin1.extend_from_slice(b"'\n----\n");
    std::fs::write(d.join("latin1.test"), &latin1).unwrap();
    std::fs::write(
        d.join("malformed.test"),
        "bogus record\n\nquery\nSELECT 1\n----\n1\n",
    )
    .unwrap();
    std::fs::write(
        d.join("blank.test"),
        "# only a comment\n\nhash-threshold 8\n",
    )
    .unwrap();
    for (name, lines) in [
        (
            "binary.test",
            vec!["binary.test:0: the script is not UTF-8 (first bad byte at offset 1)"],
        ),
        (
            "latin1.test",
            vec!["latin1.test:0: the script is not UTF-8 (first bad byte at offset 48)"],
        ),
        (
            "malformed.test",
            vec![
                "malformed.test:1: unknown record type \"bogus\"",
                "malformed.test:3: query record has no type string",
            ],
        ),
        (
            "blank.test",
            vec!["blank.test:0: the script has no statement or query record: it tests nothing"],
        ),
    ] {
        let out = slt(&[name]);
        assert_eq!(out.code, 1, "{name}: {}{}", out.stdout, out.stderr);
        assert_eq!(out.stderr, "", "{name}");
        let failures: Vec<&str> = out.stdout.lines().filter(|l| l.starts_with(name)).collect();
        assert_eq!(failures, lines, "{}", out.stdout);
        assert_eq!(
            out.stdout.lines().last(),
            Some(format!("0 passed, {} failed", lines.len()).as_str())
        );
    }
}

#[test]
fn help_states_the_exit_codes_and_the_store_url() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_in(dir.path(), &["--help"], &[]);
    assert_eq!(out.code, 0);
    assert!(
        out.stdout.contains(
            "Exit codes: 0 success; 1 the command ran and reports a failure (a failed slt \
             record, an absent key in `kv get`); 2 it could not run"
        ),
        "{}",
        out.stdout
    );
    for sub in ["kv", "slt", "bench"] {
        let out = run_in(dir.path(), &[sub, "--help"], &[]);
        assert_eq!(out.code, 0);
        assert!(out.stdout.contains("--kv <URL>"), "{sub}: {}", out.stdout);
        assert!(
            out.stdout
                .contains("The store: memory:, redb:PATH, postgres://USER@HOST:PORT/DB, redis://"),
            "{sub}: {}",
            out.stdout
        );
        assert!(out.stdout.contains("[env: KVSQLITE_KV"), "{}", out.stdout);
    }
}

#[test]
fn closed_standard_output_stops_quietly_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("x.test"), "statement ok\nSELECT 1\n").unwrap();
    for args in [
        vec!["--kv", "memory:", "kv", "--actor", "a", "get", "k"],
        vec!["--kv", "memory:", "slt", "x.test"],
        vec!["--kv", "memory:", "kv", "--actor", "a", "files"],
    ] {
        // A pipe whose reading end is already closed: the first write fails with EPIPE.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_kvsqlite"))
            .args(&args)
            .current_dir(dir.path())
            .env_remove("KVSQLITE_KV")
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr, "", "{args:?}");
    }
}
