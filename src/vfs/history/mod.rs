//! History: every commit of a database kept for a retention window, so it can be restored in
//! place to any commit of the window, forked, or exported as of one.
//!
//! Why it exists: without it every commit overwrites pages in place and a bad migration or a
//! `DELETE` without `WHERE` is forever. The design keeps what kvsqlite is: the current pages stay
//! where they are (reads and wakes unchanged), and each commit also writes a **redo record** —
//! the commit's new page images, keyed by its commit seq — **in the same put** as the commit.
//!
//! # Keys (all under the VFS prefix `0x08`, outside the range a wake lists)
//!
//! | key | bytes | value |
//! |---|---|---|
//! | header of commit `s` | `08 20 s:u64be` | [`Header`]: time, file size, page list, parts |
//! | part `n` of commit `s` | `08 21 s:u64be n:u16be` | page entries (see [`record`]) |
//! | base image of page `p` | `08 22 p:u32be` | the page's image as of an aged-out commit |
//!
//! # What is restorable
//!
//! The main metadata (format 2) carries the commit seq, the commit time and the *history start*
//! `h`: the first seq from which every commit has a redo record. The state after commit `S`
//! (for `h ≤ S ≤` the current seq, with its header present) is: for each page below the chunk
//! count at `S`, the image in the latest redo record `≤ S` that holds it, else its base image,
//! else (the page was not changed after `S`) the current page. Compaction ([`crate::vfs::Database::compact_history`])
//! deletes the oldest records past the retention window or the byte bound, oldest first; each
//! deleted record's pages become base images **in the same put** as the header's deletion (or in
//! puts before it, when they do not fit one), so a crash anywhere leaves every listed commit
//! restorable. Headers with a seq past the current one (a commit that did not land) are ignored.
//!
//! History starts at a database's first commit. A database that has pages but no history (a
//! format-1 database, or one whose history was off) starts it at its next commit with history on,
//! by writing a base image of every page first (once; its pages are read and written in as many
//! round trips as their size needs).

pub mod record;
pub mod watch;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use record::Header;

/// Milliseconds since the Unix epoch, from the system clock or a test's.
#[derive(Clone)]
pub struct Clock(ClockKind);

#[derive(Clone)]
enum ClockKind {
    System,
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock(ClockKind::System)
    }

    /// A clock that reads what [`TestClock`] sets (tests: retention past the window without
    /// waiting).
    pub fn manual(c: &TestClock) -> Clock {
        Clock(ClockKind::Manual(c.0.clone()))
    }

    /// Now, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        match &self.0 {
            ClockKind::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            ClockKind::Manual(t) => t.load(Ordering::SeqCst),
        }
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            ClockKind::System => write!(f, "Clock::system"),
            ClockKind::Manual(t) => write!(f, "Clock::manual({})", t.load(Ordering::SeqCst)),
        }
    }
}

/// A clock a test sets by hand (share it with [`Clock::manual`]).
#[derive(Clone, Debug, Default)]
pub struct TestClock(Arc<AtomicU64>);

impl TestClock {
    /// A clock at `ms` milliseconds since the epoch.
    pub fn new(ms: u64) -> TestClock {
        TestClock(Arc::new(AtomicU64::new(ms)))
    }

    /// Sets the time.
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }

    /// Moves the time forward.
    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// The time now.
    pub fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// How much history a database keeps.
#[derive(Clone, Debug)]
pub struct HistoryOptions {
    /// Commits older than this are compacted away. Zero turns history off.
    pub retention: Duration,
    /// Most bytes of redo records kept (the oldest go first). Zero turns history off. Base
    /// images are not counted: there is at most one per page of the database.
    pub max_bytes: u64,
    /// The clock commit times come from.
    pub clock: Clock,
}

/// The default retention window: 24 hours.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// The default byte bound of the redo records: 256 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;

impl Default for HistoryOptions {
    fn default() -> Self {
        HistoryOptions {
            retention: DEFAULT_RETENTION,
            max_bytes: DEFAULT_MAX_BYTES,
            clock: Clock::system(),
        }
    }
}

impl HistoryOptions {
    /// History off: commits write no redo record (and cost what they cost in format 1).
    pub fn off() -> HistoryOptions {
        HistoryOptions {
            retention: Duration::ZERO,
            max_bytes: 0,
            clock: Clock::system(),
        }
    }

    /// True when commits keep history.
    pub fn enabled(&self) -> bool {
        !self.retention.is_zero() && self.max_bytes > 0
    }
}

/// One commit as [`crate::vfs::Database::history`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitInfo {
    /// The commit seq (1 for the database's first commit).
    pub seq: u64,
    /// When it was committed, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Pages it wrote.
    pub pages: u32,
    /// Bytes of its redo record (header and parts).
    pub bytes: u64,
    /// The database file's size after it.
    pub file_size: u64,
    /// True when the commit was a restore.
    pub restore: bool,
    /// Its bookmark.
    pub bookmark: String,
}

/// A bookmark: 16 hex digits of the commit time (ms) then 16 of its seq. Bookmarks sort as
/// their commits do (commit times never decrease).
pub fn bookmark(time_ms: u64, seq: u64) -> String {
    format!("{time_ms:016x}{seq:016x}")
}

/// Parses a bookmark into `(time_ms, seq)`; `None` when it is not one.
pub fn parse_bookmark(b: &str) -> Option<(u64, u64)> {
    if b.len() != 32
        || !b
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    {
        return None;
    }
    let t = u64::from_str_radix(&b[..16], 16).ok()?;
    let s = u64::from_str_radix(&b[16..], 16).ok()?;
    Some((t, s))
}

/// What to restore (or fork, or export) to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A commit seq.
    Seq(u64),
    /// A bookmark ([`bookmark`]).
    Bookmark(String),
    /// The last commit at or before this time (ms since the epoch).
    Time(u64),
}

impl Target {
    /// Reads `s` as a bookmark (32 lowercase hex digits), a seq (decimal digits), or a time
    /// (RFC 3339 in UTC, `2026-12-07T08:00:00Z` with optional fractional seconds, or `@MS`
    /// milliseconds since the epoch).
    pub fn parse(s: &str) -> Result<Target, String> {
        if parse_bookmark(s).is_some() {
            return Ok(Target::Bookmark(s.to_string()));
        }
        if !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) {
            return s
                .parse()
                .map(Target::Seq)
                .map_err(|_| format!("seq {s:?} is too large"));
        }
        if let Some(ms) = s.strip_prefix('@') {
            return ms
                .parse()
                .map(Target::Time)
                .map_err(|_| format!("{s:?}: @ must be followed by milliseconds since the epoch"));
        }
        parse_rfc3339_utc(s).map(Target::Time).ok_or_else(|| {
            format!("{s:?} is neither a bookmark (32 hex digits), a seq (digits), a time (2026-12-07T08:00:00Z) nor @MILLISECONDS")
        })
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fff]Z` → milliseconds since the epoch.
fn parse_rfc3339_utc(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z').or_else(|| s.strip_suffix('z'))?;
    let (date, time) = s.split_once(['T', 't', ' '])?;
    let mut d = date.split('-');
    let (y, mo, da): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    if d.next().is_some() || !(1..=12).contains(&mo) || !(1..=31).contains(&da) || y < 1970 {
        return None;
    }
    let (hms, frac) = match time.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (time, None),
    };
    let mut t = hms.split(':');
    let (h, mi, se): (i64, i64, i64) = (
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
    );
    if t.next().is_some() || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let ms = match frac {
        None => 0,
        Some(f) if !f.is_empty() && f.bytes().all(|c| c.is_ascii_digit()) => {
            let f3: String = f.chars().chain("000".chars()).take(3).collect();
            f3.parse::<i64>().ok()?
        }
        Some(_) => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let total = ((days * 24 + h) * 60 + mi) * 60 + se;
    u64::try_from(total * 1000 + ms).ok()
}

/// A whole database as of one commit: a fork's or an export's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// The page (chunk) size.
    pub page_size: u32,
    /// The file size in bytes.
    pub size: u64,
    /// Every page below the file's page count, by 0-based index.
    pub pages: std::collections::BTreeMap<u32, Vec<u8>>,
}

/// What a restore did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreOutcome {
    /// The seq restored to.
    pub restored_to: u64,
    /// The bookmark of the commit current before the restore: restore to it to undo.
    pub undo: String,
    /// The bookmark of the restore's own commit (equal to `undo` when nothing changed).
    pub bookmark: String,
    /// Pages the restore wrote.
    pub pages: usize,
}

/// What a compaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Redo records deleted (aged out, over the byte bound, or left from an older history).
    pub records_deleted: u64,
    /// Base images written.
    pub base_images: u64,
    /// Bytes of redo records kept.
    pub bytes_kept: u64,
    /// Redo records kept.
    pub records_kept: u64,
    /// Redo-record parts deleted that belonged to no listed record: left by staged commits
    /// whose commit record never landed.
    pub orphan_parts: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bookmarks_sort_by_time_and_parse_back() {
        let a = bookmark(1_000, 9);
        let b = bookmark(2_000, 10);
        assert!(a < b);
        assert_eq!(parse_bookmark(&b), Some((2_000, 10)));
        assert_eq!(parse_bookmark("zz"), None);
        assert_eq!(parse_bookmark(&b.to_uppercase()), None);
        assert_eq!(Target::parse(&a), Ok(Target::Bookmark(a.clone())));
        assert_eq!(Target::parse("42"), Ok(Target::Seq(42)));
        assert_eq!(Target::parse("@1500"), Ok(Target::Time(1500)));
        assert_eq!(
            Target::parse("2026-12-07T08:00:00Z"),
            Ok(Target::Time(1_796_630_400_000))
        );
        assert_eq!(
            Target::parse("1970-01-01T00:00:01.5Z"),
            Ok(Target::Time(1_500))
        );
        assert!(Target::parse("yesterday").is_err());
        assert!(Target::parse("2026-13-07T08:00:00Z").is_err());
    }
}
