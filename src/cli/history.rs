//! `kvsqlite history --actor A [--json] [--compact]`, `kvsqlite restore --actor A --to
//! BOOKMARK|TIME|SEQ` and `kvsqlite fork --actor A --at BOOKMARK|TIME|SEQ --to B`: an actor's
//! history from the command line (see [`kvsqlite::vfs::history`]).
//!
//! Each wakes the actor (an absent one is refused, never created), does its one thing through
//! the actor layer (so it is fenced: a running instance elsewhere sees "actor moved" after a
//! restore), and puts it to sleep. Exit codes as every subcommand: 0 done, 2 it could not run.

use std::time::Duration;

use clap::Args;
use kvsqlite::actor::{records, Actor, ActorConfig};
use kvsqlite::kv::SharedStore;
use kvsqlite::vfs::history::{HistoryOptions, Target, DEFAULT_MAX_BYTES};

use super::progress::with_spinner;
use super::{finish, output_error, GlobalArgs, Stop};

/// How much history the actor keeps (for a compaction, and for commits made here).
#[derive(Args, Debug, Clone)]
pub struct RetentionArgs {
    /// Keep commits this long: a number with a unit `s`, `m`, `h` or `d` (`0` keeps none).
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    retention: Duration,
    /// Keep at most this many bytes of redo records (`0` keeps none).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_BYTES)]
    retention_bytes: u64,
}

impl RetentionArgs {
    /// The history options these arguments ask for.
    pub fn options(&self) -> HistoryOptions {
        HistoryOptions {
            retention: self.retention,
            max_bytes: self.retention_bytes,
            ..HistoryOptions::default()
        }
    }
}

/// Parses `30s`, `15m`, `24h`, `7d` or `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit (s, m, h, d), as 24h"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// Arguments of `kvsqlite history`.
#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// The actor.
    #[arg(long, value_name = "ID")]
    actor: String,
    /// One JSON array of commits instead of a table.
    #[arg(long)]
    json: bool,
    /// Compact first: delete history past the retention window and byte bound.
    #[arg(long)]
    compact: bool,
    #[command(flatten)]
    retention: RetentionArgs,
}

/// Arguments of `kvsqlite restore`.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The actor.
    #[arg(long, value_name = "ID")]
    actor: String,
    /// What to restore to: a bookmark, a commit seq, a time (2026-12-07T08:00:00Z) or @MS.
    #[arg(long, value_name = "BOOKMARK|TIME|SEQ", value_parser = Target::parse)]
    to: Target,
    #[command(flatten)]
    retention: RetentionArgs,
}

/// Arguments of `kvsqlite fork`.
#[derive(Args, Debug)]
pub struct ForkArgs {
    /// The source actor (not changed).
    #[arg(long, value_name = "ID")]
    actor: String,
    /// The commit to fork: a bookmark, a seq, a time (2026-12-07T08:00:00Z) or @MS.
    #[arg(long, value_name = "BOOKMARK|TIME|SEQ", value_parser = Target::parse)]
    at: Target,
    /// The new actor (refused if it exists).
    #[arg(long, value_name = "ID")]
    to: String,
    #[command(flatten)]
    retention: RetentionArgs,
}

/// Runs `kvsqlite history`.
pub fn run_history(global: &GlobalArgs, args: HistoryArgs) -> i32 {
    finish("history", history(global, args))
}

/// Runs `kvsqlite restore`.
pub fn run_restore(global: &GlobalArgs, args: RestoreArgs) -> i32 {
    finish("restore", restore(global, args))
}

/// Runs `kvsqlite fork`.
pub fn run_fork(global: &GlobalArgs, args: ForkArgs) -> i32 {
    finish("fork", fork(global, args))
}

/// Wakes an existing actor (an absent one is an error, not created).
fn wake(store: &SharedStore, actor: &str, retention: &RetentionArgs) -> Result<Actor, Stop> {
    let state = store
        .get(actor, &[records::state_key()])
        .map_err(|e| e.to_string())?;
    if state.first().is_none_or(|v| v.is_none()) {
        return Err(Stop::Error(format!("no actor {actor:?} in the store")));
    }
    let config = ActorConfig {
        retention: retention.options(),
        ..ActorConfig::default()
    };
    Actor::start(store.clone(), actor, &config).map_err(|e| Stop::Error(e.to_string()))
}

fn history(global: &GlobalArgs, args: HistoryArgs) -> Result<i32, Stop> {
    use std::io::Write;
    let store = global.open_store()?;
    let actor = wake(&store, &args.actor, &args.retention)?;
    if args.compact {
        let r = actor.compact_history().map_err(|e| e.to_string())?;
        eprintln!(
            "compacted: {} records deleted, {} base images written, {} records ({} bytes) kept, {} orphan parts deleted",
            r.records_deleted, r.base_images, r.records_kept, r.bytes_kept, r.orphan_parts
        );
    }
    let commits = actor.history().map_err(|e| e.to_string())?;
    actor.sleep().map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let list: Vec<serde_json::Value> = commits
            .iter()
            .map(|c| {
                serde_json::json!({
                    "seq": c.seq,
                    "time_ms": c.time_ms,
                    "time": rfc3339(c.time_ms),
                    "pages": c.pages,
                    "bytes": c.bytes,
                    "file_size": c.file_size,
                    "restore": c.restore,
                    "bookmark": c.bookmark,
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::Value::Array(list)).map_err(output_error)?;
        return Ok(0);
    }
    writeln!(
        out,
        "{:>8}  {:<24}  {:>6}  {:>10}  bookmark",
        "seq", "time", "pages", "bytes"
    )
    .map_err(output_error)?;
    for c in &commits {
        writeln!(
            out,
            "{:>8}  {:<24}  {:>6}  {:>10}  {}{}",
            c.seq,
            rfc3339(c.time_ms),
            c.pages,
            c.bytes,
            c.bookmark,
            if c.restore { "  (restore)" } else { "" }
        )
        .map_err(output_error)?;
    }
    Ok(0)
}

fn restore(global: &GlobalArgs, args: RestoreArgs) -> Result<i32, Stop> {
    let store = global.open_store()?;
    let actor = wake(&store, &args.actor, &args.retention)?;
    let what = format!("restoring actor {:?}", args.actor);
    let out = with_spinner(&what, || actor.restore(&args.to)).map_err(|e| e.to_string())?;
    actor.sleep().map_err(|e| e.to_string())?;
    println!(
        "restored actor {:?} to seq {} ({} pages written); its new bookmark is {}; undo with --to {}",
        args.actor, out.restored_to, out.pages, out.bookmark, out.undo
    );
    Ok(0)
}

fn fork(global: &GlobalArgs, args: ForkArgs) -> Result<i32, Stop> {
    let store = global.open_store()?;
    let actor = wake(&store, &args.actor, &args.retention)?;
    let what = format!("forking actor {:?} into {:?}", args.actor, args.to);
    let r = with_spinner(&what, || {
        actor.fork(&args.at, &args.to, &args.retention.options())
    })
    .map_err(|e| e.to_string())?;
    actor.sleep().map_err(|e| e.to_string())?;
    println!(
        "forked actor {:?} at seq {} into {:?}: {} pages, {} KV round trips; its bookmark is {}",
        args.actor, r.seq_of_source, args.to, r.pages, r.kv_round_trips, r.bookmark
    );
    Ok(0)
}

/// Milliseconds since the epoch as `2026-12-07T08:00:00.000Z`.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times_read_and_print() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("5w").is_err());
        assert!(parse_duration("h").is_err());
        assert_eq!(rfc3339(1_796_630_400_123), "2026-12-07T08:00:00.123Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    }
}
