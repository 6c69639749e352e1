//! `kvsqlite slt`: run sqllogictest scripts through kvsqlite databases (one fresh actor per
//! script) on the store `--kv` names, or on stock SQLite files with `--native`.
//!
//! Output: one line per script, the failures under it with file:line, expected and actual; the
//! last line is exactly `N passed, N failed` (plus `, N skipped` and `, N expected-different`
//! when there are any). Exit code 0 when nothing failed, 1 on any failure, 2 when the runner
//! itself cannot start (bad arguments, unreadable paths or deviation list, unreachable store).

use std::io::Write;
use std::path::PathBuf;

use kvsqlite::slt::{self, KnownDeviations, RunConfig, Target};

use super::progress::Progress;
use super::{output_error, GlobalArgs, Stop};

/// The deviation list used when `--known-deviations` is not given: this path under the current
/// directory, or under the nearest ancestor of a script path that has it.
const DEFAULT_DEVIATIONS: &str = "sql/known-deviations.txt";

/// A progress bar is drawn (on a terminal) from this many scripts on.
const PROGRESS_MIN_FILES: usize = 4;

/// Arguments of `kvsqlite slt`.
#[derive(clap::Args, Debug)]
pub struct SltArgs {
    /// Run on stock SQLite with a temporary file per script instead of a kvsqlite store.
    #[arg(long)]
    native: bool,
    /// Rewrite each script in place with the actual results as its expected results (to
    /// generate them: use with --native, then read them before committing).
    #[arg(long)]
    complete: bool,
    /// Keep each script's actor in the store afterwards (default: delete its keys).
    #[arg(long)]
    keep: bool,
    /// Override every script's hash-threshold (0: never hash).
    #[arg(long, value_name = "N")]
    hash_threshold: Option<usize>,
    /// The known-deviations list [default: sql/known-deviations.txt under the current directory
    /// or the nearest ancestor of a script path that has one, except with --native: stock
    /// SQLite is the reference and has no deviations].
    #[arg(long, value_name = "FILE")]
    known_deviations: Option<PathBuf>,
    /// Script files, or directories searched recursively for `*.test`.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
}

/// Runs `kvsqlite slt`.
pub fn run(global: &GlobalArgs, args: SltArgs) -> i32 {
    super::finish("slt", run_inner(global, args))
}

fn run_inner(global: &GlobalArgs, args: SltArgs) -> Result<i32, Stop> {
    let deviations_file = match &args.known_deviations {
        Some(p) => Some(p.clone()),
        None if !args.native => default_deviations(&args.paths),
        None => None,
    };
    let deviations = match &deviations_file {
        Some(p) => KnownDeviations::load(p)?,
        None => KnownDeviations::empty(),
    };
    let scripts = slt::collect_scripts(&args.paths)?;
    if scripts.is_empty() {
        let paths: Vec<String> = args.paths.iter().map(|p| p.display().to_string()).collect();
        return Err(Stop::from(format!(
            "no *.test script under {}",
            paths.join(", ")
        )));
    }
    let mut target = make_target(global, args.native, args.keep)?;
    let config = RunConfig {
        hash_threshold: args.hash_threshold,
        deviations,
        collect_outputs: args.complete,
        ..RunConfig::default()
    };
    let total = scripts.len();
    let progress = (total >= PROGRESS_MIN_FILES).then(|| Progress::new(total as u64));
    let mut stdout = std::io::stdout().lock();
    let mut summary = slt::Summary::default();
    for (done, path) in scripts.iter().enumerate() {
        if let Some(p) = &progress {
            p.set(done, total, &path.display().to_string());
        }
        let report = slt::run_file(target.as_mut(), path, &config);
        summary.add(&report);
        // The report's lines are written with the bar erased, then the bar comes back.
        let mut write_report = || -> Result<(), Stop> {
            writeln!(stdout, "{}", report.summary_line()).map_err(output_error)?;
            for f in report
                .failures
                .iter()
                .chain(&report.expected_different_records)
            {
                writeln!(stdout, "{f}").map_err(output_error)?;
            }
            for n in &report.notes {
                writeln!(stdout, "  note: {n}").map_err(output_error)?;
            }
            if args.keep {
                if let Some(actor) = &report.actor {
                    writeln!(stdout, "  kept: actor {actor}").map_err(output_error)?;
                }
            }
            // A script that could not be read or run at all (a failure at line 0) is left alone.
            if args.complete && report.failures.iter().all(|f| f.line > 0) {
                complete_file(path, &report)?;
                writeln!(
                    stdout,
                    "  completed: {} query result(s) written",
                    report.outputs.len()
                )
                .map_err(output_error)?;
            }
            stdout.flush().map_err(output_error)?;
            Ok(())
        };
        match &progress {
            Some(p) => p.suspend(write_report)?,
            None => write_report()?,
        }
    }
    let deviations_note = deviations_file
        .map(|p| format!(" (known deviations: {})", p.display()))
        .unwrap_or_default();
    writeln!(
        stdout,
        "{} script(s) on {}, {} with failures{deviations_note}",
        summary.files,
        target.name(),
        summary.files_failed
    )
    .map_err(output_error)?;
    writeln!(stdout, "{}", summary.last_line()).map_err(output_error)?;
    Ok(if summary.ok() { 0 } else { 1 })
}

/// `sql/known-deviations.txt` under the current directory if it exists, else under the nearest
/// ancestor directory of a script path that has one (so the repository's list applies to its
/// scripts from any working directory).
fn default_deviations(paths: &[PathBuf]) -> Option<PathBuf> {
    let here = PathBuf::from(DEFAULT_DEVIATIONS);
    if here.is_file() {
        return Some(here);
    }
    paths
        .iter()
        .filter_map(|p| p.canonicalize().ok())
        .find_map(|p| {
            p.ancestors()
                .map(|a| a.join(DEFAULT_DEVIATIONS))
                .find(|c| c.is_file())
        })
}

/// Rewrites the script at `path` with the outputs `report` collected.
fn complete_file(path: &std::path::Path, report: &slt::FileReport) -> Result<(), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {} to complete it: {e}", path.display()))?;
    std::fs::write(path, slt::complete(&text, &report.outputs))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn make_target(global: &GlobalArgs, native: bool, keep: bool) -> Result<Box<dyn Target>, String> {
    if native {
        return Ok(Box::new(slt::NativeTarget::new()?));
    }
    let store = global.open_store()?;
    Ok(Box::new(slt::KvTarget::new(store).keep_data(keep)))
}
