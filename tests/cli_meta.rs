//! What a user checks of the binary before anything else: `--version` and the shell
//! completion scripts, through the built binary (exact output and exit codes, never a panic).

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
