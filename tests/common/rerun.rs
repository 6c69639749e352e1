//! Runs one test of the current test binary again in a child process, for tests of the rules
//! that depend on the environment (a missing corpus or server skips, or fails under `CI=true`).
//!
//! Include it with `#[path = "common/rerun.rs"] mod rerun;`.
#![allow(dead_code)]

/// Runs test `name` of this binary alone with `env` set and `CI` set to `ci` (removed when
/// `None`); returns whether it passed and its standard output and error together.
pub fn rerun_test(name: &str, env: (&str, &str), ci: Option<&str>) -> (bool, String) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut cmd = std::process::Command::new(exe);
    // Without --nocapture: a skip must be visible through the harness's capture, as in a
    // plain `cargo test` (a `println!` would not be, and the caller's check would catch it).
    cmd.args(["--exact", name, "--test-threads=1"])
        .env(env.0, env.1);
    match ci {
        Some(v) => cmd.env("CI", v),
        None => cmd.env_remove("CI"),
    };
    let out = cmd.output().expect("run the test binary again");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
