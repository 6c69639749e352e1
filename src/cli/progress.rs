//! Progress on long work: a bar for work counted in steps (benches, SQL logic test runs), a
//! spinner with the elapsed time for work done in one step whose length is not known ahead
//! (import, export, restore and fork each copy in one transaction); on standard error when it is
//! a terminal, nothing at all when it is piped or redirected, so that a script reading the output
//! never sees a control sequence.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar: `done` of `total` steps and what runs now; hidden off a terminal.
pub(crate) struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar of `total` steps, drawn only when standard error is a terminal.
    pub(crate) fn new(total: u64) -> Progress {
        let bar = if std::io::stderr().is_terminal() {
            ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        // The template is a constant: it parses, and a failure would only lose the styling.
        if let Ok(style) = ProgressStyle::with_template("[{bar:30}] {pos}/{len} {wide_msg}") {
            bar.set_style(style.progress_chars("#> "));
        }
        Progress { bar }
    }

    /// Shows `done` of `total` steps, with `what` (its last 40 characters) beside the bar.
    pub(crate) fn set(&self, done: usize, total: usize, what: &str) {
        let tail: String = {
            let n = what.chars().count();
            what.chars().skip(n.saturating_sub(40)).collect()
        };
        self.bar.set_length(total as u64);
        self.bar.set_position(done as u64);
        self.bar.set_message(tail);
    }
}

impl Progress {
    /// Runs `f` (which writes to the terminal) with the bar erased, then draws it again.
    pub(crate) fn suspend<T>(&self, f: impl FnOnce() -> T) -> T {
        self.bar.suspend(f)
    }
}

impl Drop for Progress {
    /// Erases the bar (a finished or abandoned run leaves no line behind).
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// Runs `f` under a spinner showing `what` and the elapsed time (on a terminal only), erased
/// when `f` returns.
pub(crate) fn with_spinner<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    // The template is a constant: it parses, and a failure would only lose the styling.
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        bar.set_style(style);
    }
    bar.set_message(what.to_string());
    bar.tick();
    bar.enable_steady_tick(std::time::Duration::from_millis(100));
    let out = f();
    bar.finish_and_clear();
    out
}

/// Runs `f` with a drawer `draw(done, total, what)` on a [`Progress`] bar, then erases the bar.
pub(crate) fn with_progress<T>(f: impl FnOnce(&dyn Fn(usize, usize, &str)) -> T) -> T {
    let bar = Progress::new(100);
    let draw = |done: usize, total: usize, what: &str| bar.set(done, total, what);
    f(&draw)
}
