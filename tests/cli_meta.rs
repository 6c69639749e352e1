//! What a user checks of the binary before anything else: `--version`, the shell completion
//! scripts and how long work shows its progress, through the built binary (exact output and
//! exit codes, never a panic).

use std::process::{Command, Stdio};

fn kvsqlite(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kvsqlite"))
        .args(args)
        .env_remove("KVSQLITE_KV")
        .output()
        .expect("the kvsqlite binary runs")
}

#[test]
fn version_names_the_crate_version() {
    let out = kvsqlite(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("kvsqlite {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn completions_cover_every_subcommand_for_each_shell() {
    let subcommands = [
        "run",
        "kv",
        "slt",
        "bench",
        "serve",
        "import",
        "export",
        "history",
        "restore",
        "fork",
        "completions",
    ];
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = kvsqlite(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        assert!(out.stderr.is_empty(), "{shell}");
        let script = String::from_utf8(out.stdout).expect("a script is text");
        for sub in subcommands {
            assert!(script.contains(sub), "{shell}: {sub} missing");
        }
    }
    let bash = kvsqlite(&["completions", "bash"]).stdout;
    assert!(String::from_utf8_lossy(&bash).starts_with("_kvsqlite() {"));
}

#[test]
fn completions_refuse_an_unknown_shell_and_report_a_failed_write() {
    let out = kvsqlite(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'tcsh' for '<SHELL>'"));

    // A full disk: an error line and exit 2, not a panic.
    let full = std::fs::File::create("/dev/full").expect("Linux's /dev/full");
    let out = Command::new(env!("CARGO_BIN_EXE_kvsqlite"))
        .args(["completions", "zsh"])
        .stdout(Stdio::from(full))
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "kvsqlite completions: cannot write to standard output: No space left on device (os error 28)\n"
    );
}

/// Four or more scripts make `slt` a long run: on a terminal (a pseudo-terminal from
/// util-linux's `script`) it draws a progress bar on standard error; piped, it writes no bar
/// and no control sequence at all, and the report on standard output is the same.
#[test]
fn progress_is_drawn_on_a_terminal_and_silent_when_piped() {
    let scripts = [
        "sql/tests/alter_table.test",
        "sql/tests/blobs.test",
        "sql/tests/fts5.test",
        "sql/tests/generated.test",
    ];
    let mut args = vec!["--kv", "memory:", "slt"];
    args.extend(scripts);
    let piped = Command::new(env!("CARGO_BIN_EXE_kvsqlite"))
        .args(&args)
        .env_remove("KVSQLITE_KV")
        .stdin(Stdio::null())
        .output()
        .expect("the kvsqlite binary runs");
    assert_eq!(piped.status.code(), Some(0));
    let err = String::from_utf8_lossy(&piped.stderr);
    assert!(
        !err.contains('\r') && !err.contains('\x1b') && !err.contains("[#"),
        "piped stderr holds a bar: {err:?}"
    );
    let out = String::from_utf8_lossy(&piped.stdout);
    for s in scripts {
        assert!(out.contains(&format!("ok   {s}: ")), "{out}");
    }

    let line = format!("{} {}", env!("CARGO_BIN_EXE_kvsqlite"), args.join(" "));
    let tty = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env_remove("KVSQLITE_KV")
        .stdin(Stdio::null())
        .output()
        .expect("util-linux's script runs (Debian's bsdutils, an essential package)");
    assert_eq!(tty.status.code(), Some(0));
    let shown = String::from_utf8_lossy(&tty.stdout);
    assert!(shown.contains("] 0/4 "), "no bar on a terminal: {shown:?}");
    assert!(shown.contains("\x1b[2K"), "the bar is erased: {shown:?}");
    for s in scripts {
        assert!(shown.contains(&format!("ok   {s}: ")), "{shown}");
    }
}

/// `export` (one copy of unknown length) shows a spinner naming its work on a terminal, erased
/// when it ends, and nothing on a pipe; the report line is the same either way.
#[test]
fn export_shows_a_spinner_on_a_terminal_and_nothing_when_piped() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let kv = format!("redb:{}", dir.path().join("kv.redb").display());
    let sql = dir.path().join("make.sql");
    std::fs::write(&sql, "CREATE TABLE t(x); INSERT INTO t VALUES (1), (2);").expect("write");
    let made = kvsqlite(&["--kv", &kv, "run", "--actor", "a", &sql.to_string_lossy()]);
    assert_eq!(made.status.code(), Some(0), "{made:?}");

    let piped_file = dir.path().join("piped.db");
    let piped = kvsqlite(&[
        "--kv",
        &kv,
        "export",
        "--actor",
        "a",
        &piped_file.to_string_lossy(),
    ]);
    assert_eq!(piped.status.code(), Some(0), "{piped:?}");
    let err = String::from_utf8_lossy(&piped.stderr);
    assert!(
        !err.contains('\r') && !err.contains('\x1b') && !err.contains("exporting"),
        "piped stderr holds a spinner: {err:?}"
    );
    assert!(String::from_utf8_lossy(&piped.stdout).starts_with("exported actor \"a\" to "));

    let tty_file = dir.path().join("tty.db");
    let line = format!(
        "{} --kv {kv} export --actor a {}",
        env!("CARGO_BIN_EXE_kvsqlite"),
        tty_file.display()
    );
    let tty = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env_remove("KVSQLITE_KV")
        .stdin(Stdio::null())
        .output()
        .expect("util-linux's script runs");
    assert_eq!(tty.status.code(), Some(0));
    let shown = String::from_utf8_lossy(&tty.stdout);
    assert!(
        shown.contains("exporting actor \"a\" to "),
        "no spinner: {shown:?}"
    );
    assert!(
        shown.contains("\x1b[2K"),
        "the spinner is erased: {shown:?}"
    );
    assert!(shown.contains("exported actor \"a\" to "), "{shown}");
}
