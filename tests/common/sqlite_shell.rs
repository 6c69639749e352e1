//! The stock `sqlite3` shell with kvsqlite's loadable extension: building the extension (the
//! `ext/` crate, in a cargo invocation of its own into `target/ext`, so it never waits on the
//! lock of the running `cargo test` nor unifies its features with the main build) and running
//! shell scripts fed through standard input.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

#[path = "skip.rs"]
mod skip;

/// Debian's shell (3.40.1, built without `SQLITE_ENABLE_BATCH_ATOMIC_WRITE`).
pub const SHELL: &str = "/usr/bin/sqlite3";

/// The built extension (`target/ext/debug/libkvsqlite.so`), built once per test process; `None`
/// (after saying so, or failing under `CI=true`) when the shell is missing.
pub fn extension() -> Option<PathBuf> {
    if !Path::new(SHELL).exists() {
        skip::skip(&format!(
            "{SHELL} is missing: the loadable extension is not tested"
        ));
        return None;
    }
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "--locked", "--quiet", "--manifest-path"])
            .arg(root.join("ext/Cargo.toml"))
            .arg("--target-dir")
            .arg(root.join("target/ext"))
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET_DIR")
            .output()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "building ext/ failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(root.join("target/ext/debug/libkvsqlite.so"))
    });
    match built {
        Ok(p) => Some(p.clone()),
        Err(e) => panic!("{e}"),
    }
}

/// Runs the shell on `script` (standard input), without kvsqlite's environment variables.
pub fn shell(script: &str) -> Output {
    shell_in(script, None)
}

/// [`shell`] in the directory `dir`.
pub fn shell_in(script: &str, dir: Option<&Path>) -> Output {
    let mut cmd = Command::new(SHELL);
    cmd.arg("-batch");
    spawn(cmd, script, dir)
}

/// Runs the shell with standard error merged into standard output, both unbuffered (through
/// `stdbuf`), so an error message stands where it happened among the results.
pub fn shell_merged(script: &str) -> Output {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &format!("exec stdbuf -o0 -e0 {SHELL} -batch 2>&1")]);
    spawn(cmd, script, None)
}

fn spawn(mut cmd: Command, script: &str, dir: Option<&Path>) -> Output {
    cmd.env_remove("KVSQLITE_KV")
        .env_remove("KVSQLITE_LOG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    let mut child = cmd.spawn().expect("cannot start the sqlite3 shell");
    let mut stdin = child.stdin.take().unwrap();
    let text = script.to_string();
    // Written from another thread: the shell may print more than a pipe holds before it has
    // read all of its input.
    let writer = std::thread::spawn(move || {
        // A shell that exits early (`.bail`, a kill) closes its input: not an error here.
        let _ = stdin.write_all(text.as_bytes());
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// The shell lines that load the extension and open `actor` on the store `kv`.
pub fn load_and_open(ext: &Path, actor: &str, kv: &str) -> String {
    format!(
        ".load {}\n.open file:{actor}?vfs=kvsqlite&kv={kv}\n",
        ext.display()
    )
}

/// Standard output as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
