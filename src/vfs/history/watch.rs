//! When a database's history is due for compaction, known without a KV call.
//!
//! Why it exists: compaction lists the history (a round trip), so a host cannot run it on
//! every busy actor every sweep, and without it an actor that never goes idle would keep
//! history past its retention window and byte bound. The database keeps this summary of the
//! records it kept at its last compaction plus those its commits wrote since, and says from
//! it alone whether a compaction would delete anything.
//!
//! # The rule
//!
//! Compaction is due when any of these holds:
//! - the summary is **unknown** and [`UNKNOWN_AFTER_COMMITS`] commits were made since: the
//!   database was opened with history in the store (its oldest record's time is not read by a
//!   wake) or a failed write left the store unsure; the first compaction makes it known. Not at
//!   once: an actor that wakes, serves a few requests and sleeps is compacted by its sleep, and
//!   a background compaction after every wake would add a round trip to every wake's cycle;
//!   an actor busy long enough to commit that many times gets its first compaction then;
//! - history is on and the **oldest kept record** is older than the retention window (it
//!   would be deleted);
//! - history is on and the **bytes of records kept** exceed the byte bound;
//! - [`FALLBACK_COMMITS`] commits were made since the last compaction (a bound on what the
//!   summary could miss, such as the parts of a staged commit that never landed).
//!
//! With history off and the summary known, nothing is due.

use super::HistoryOptions;

/// Commits after which a compaction is due whatever the summary says.
pub const FALLBACK_COMMITS: u64 = 10_000;

/// Commits after which a compaction is due while the summary is unknown (after a wake of a
/// database with history, or a failed write).
pub const UNKNOWN_AFTER_COMMITS: u64 = 100;

/// The history's summary (see the module comment).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Watch {
    known: bool,
    oldest_ms: Option<u64>,
    bytes: u64,
    commits: u64,
}

impl Watch {
    /// The summary at open: known (empty) when the store holds no history of the database
    /// (`hist_start == 0`), else unknown.
    pub fn at_open(hist_start: u64) -> Watch {
        Watch {
            known: hist_start == 0,
            ..Watch::default()
        }
    }

    /// A commit wrote a record of `bytes` at `time_ms`; `starts` when it is the first of a
    /// history (nothing older is kept).
    pub fn commit(&mut self, time_ms: u64, bytes: u64, starts: bool) {
        if starts {
            *self = Watch {
                known: true,
                ..Watch::default()
            };
        }
        self.oldest_ms.get_or_insert(time_ms);
        self.bytes = self.bytes.saturating_add(bytes);
        self.commits += 1;
    }

    /// A compaction (or a listing) found these records kept: the oldest one's time and their
    /// bytes.
    pub fn listed(&mut self, oldest_ms: Option<u64>, bytes: u64) {
        *self = Watch {
            known: true,
            oldest_ms,
            bytes,
            commits: 0,
        };
    }

    /// The store may hold what the summary does not know (a write failed).
    pub fn forget(&mut self) {
        self.known = false;
    }

    /// True when a compaction at `now_ms` would have work to do, by the rule of the module
    /// comment.
    pub fn due(&self, opts: &HistoryOptions, now_ms: u64) -> bool {
        if self.commits >= FALLBACK_COMMITS {
            return true;
        }
        if !self.known {
            return self.commits >= UNKNOWN_AFTER_COMMITS;
        }
        if !opts.enabled() {
            return false;
        }
        let cutoff = now_ms.saturating_sub(opts.retention.as_millis() as u64);
        self.oldest_ms.is_some_and(|t| t < cutoff) || self.bytes > opts.max_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn opts() -> HistoryOptions {
        HistoryOptions {
            retention: Duration::from_secs(60),
            max_bytes: 1000,
            ..HistoryOptions::default()
        }
    }

    #[test]
    fn due_by_age_bytes_unknown_and_fallback() {
        let o = opts();
        let mut unknown = Watch::at_open(5);
        assert!(!unknown.due(&o, u64::MAX), "not at once after a wake");
        for _ in 0..UNKNOWN_AFTER_COMMITS - 1 {
            unknown.commit(1_000, 10, false);
        }
        assert!(!unknown.due(&o, 1_000));
        unknown.commit(1_000, 10, false);
        assert!(unknown.due(&o, 1_000), "unknown after enough commits");
        let mut w = Watch::at_open(0);
        assert!(!w.due(&o, 0));
        w.commit(1_000, 400, true);
        assert!(!w.due(&o, 61_000));
        assert!(w.due(&o, 61_001), "the oldest record is past the window");
        w.commit(2_000, 601, false);
        assert!(w.due(&o, 2_000), "1001 bytes > 1000");
        w.listed(Some(2_000), 601);
        assert!(!w.due(&o, 2_000));
        w.forget();
        assert!(!w.due(&o, 2_000));
        for _ in 0..UNKNOWN_AFTER_COMMITS {
            w.commit(2_000, 0, false);
        }
        assert!(w.due(&o, 2_000), "unknown, with enough commits since");
        w.listed(None, 0);
        for _ in 0..FALLBACK_COMMITS - 1 {
            w.commit(3_000, 0, false);
        }
        assert!(!w.due(&o, 3_000));
        w.commit(3_000, 0, false);
        assert!(w.due(&o, 3_000));
        w.listed(None, 0);
        assert!(!w.due(&HistoryOptions::off(), u64::MAX));
    }
}
