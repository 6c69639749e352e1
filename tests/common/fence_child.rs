//! Two processes on one actor: the test binary runs its own ignored `fence_child` test as a
//! child process, which wakes the actor, prints `woke`, then commits one row per `commit WHO`
//! line of its stdin and prints `ok`, `moved` or `error …`.
//!
//! Include it with `#[path = "common/fence_child.rs"] mod fence_child;`; the test file defines
//! `#[test] #[ignore] fn fence_child()` calling [`serve_commits`].
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command, Stdio};

/// The child's environment variable naming the actor.
pub const ACTOR_VAR: &str = "KVSQLITE_FENCE_CHILD";

/// One child process holding the actor awake.
pub struct FenceChild {
    child: Child,
    out: BufReader<ChildStdout>,
}

/// Starts a child on `actor` with the extra environment `env`.
pub fn spawn(actor: &str, env: &[(&str, &str)]) -> FenceChild {
    let mut cmd = Command::new(std::env::current_exe().expect("the test binary"));
    cmd.args([
        "--exact",
        "fence_child",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(ACTOR_VAR, actor)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn the child");
    let out = BufReader::new(child.stdout.take().expect("the child's stdout"));
    FenceChild { child, out }
}

impl FenceChild {
    /// The child's next status line: `woke`, `ok`, `moved` or `error …`.
    pub fn next_line(&mut self) -> String {
        loop {
            let mut l = String::new();
            assert!(
                self.out.read_line(&mut l).expect("read the child") > 0,
                "child ended early"
            );
            // The harness prints `test fence_child ... ` before the test's own first line.
            let l = l.trim().rsplit("... ").next().unwrap_or("").to_string();
            if ["woke", "ok", "moved"].contains(&l.as_str()) || l.starts_with("error") {
                return l;
            }
        }
    }

    /// Asks the child to commit a row for `who`; its answer is the next line.
    pub fn commit(&mut self, who: &str) -> String {
        let stdin = self.child.stdin.as_mut().expect("the child's stdin");
        writeln!(stdin, "commit {who}").expect("write to the child");
        self.next_line()
    }

    /// Closes the child's stdin and waits for it to exit successfully.
    pub fn finish(mut self) {
        drop(self.child.stdin.take());
        assert!(self.child.wait().expect("wait for the child").success());
    }
}

/// The child's side: prints `woke`, then runs `commit(who)` for each `commit WHO` line and
/// prints what it gave.
pub fn serve_commits(commit: impl Fn(&str) -> rusqlite::Result<usize>) {
    println!("woke");
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("read stdin");
        let who = line.strip_prefix("commit ").expect("a commit line");
        match commit(who) {
            Ok(_) => println!("ok"),
            Err(e) if kvsqlite::actor::is_moved_error(&e) => println!("moved"),
            Err(e) => println!("error {e}"),
        }
        std::io::stdout().flush().expect("flush stdout");
    }
}
