//! `kvsqlite import FILE --actor ID [--replace]` and `kvsqlite export --actor ID FILE [--force]`:
//! plain SQLite files in and out of an actor's database (see [`kvsqlite::interop`]).
//!
//! Both print one summary line on standard output (pages, page size, KV round trips). Exit
//! codes as every subcommand: 0 done; 2 it could not run — a missing, truncated or non-SQLite
//! input file (nothing written), an existing actor without `--replace`, an existing output file
//! without `--force`, an absent actor to export, a store error.

use std::path::PathBuf;

use clap::Args;
use kvsqlite::interop::{export_file_at, import_file, ImportOptions};

use super::progress::with_spinner;
use super::{finish, GlobalArgs, Stop};

/// Arguments of `kvsqlite import`.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The SQLite file to load (rollback or WAL mode; opened read-only, never changed).
    file: PathBuf,
    /// The actor whose database receives it.
    #[arg(long, value_name = "ID")]
    actor: String,
    /// Delete every key of the actor first if it exists (otherwise an existing actor is refused).
    #[arg(long)]
    replace: bool,
}

/// Arguments of `kvsqlite export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The SQLite file to write (refused if it exists, unless --force).
    file: PathBuf,
    /// The actor whose database to write out.
    #[arg(long, value_name = "ID")]
    actor: String,
    /// Overwrite FILE if it exists (replaced whole once the snapshot is complete).
    #[arg(long)]
    force: bool,
    /// Write the database as of this commit of its history (a bookmark, a seq, a time such as
    /// 2026-12-07T08:00:00Z, or @MS) instead of now.
    #[arg(long, value_name = "BOOKMARK|TIME|SEQ", value_parser = kvsqlite::vfs::history::Target::parse)]
    at: Option<kvsqlite::vfs::history::Target>,
}

/// Runs `kvsqlite import`; returns the exit code.
pub fn run_import(global: &GlobalArgs, args: ImportArgs) -> i32 {
    finish("import", import(global, args))
}

/// Runs `kvsqlite export`; returns the exit code.
pub fn run_export(global: &GlobalArgs, args: ExportArgs) -> i32 {
    finish("export", export(global, args))
}

fn import(global: &GlobalArgs, args: ImportArgs) -> Result<i32, Stop> {
    let store = global.open_store()?;
    let opts = ImportOptions {
        replace: args.replace,
    };
    let what = format!(
        "importing {} into actor {:?}",
        args.file.display(),
        args.actor
    );
    let report = with_spinner(&what, || import_file(store, &args.actor, &args.file, &opts))
        .map_err(|e| e.to_string())?;
    println!(
        "imported {} into actor {:?}: {} pages of {} bytes{}, integrity ok, {} KV round trips \
         ({} for the copy)",
        args.file.display(),
        args.actor,
        report.pages,
        report.page_size,
        if report.source_wal {
            " (WAL source)"
        } else {
            ""
        },
        report.kv_round_trips,
        report.copy_round_trips
    );
    Ok(0)
}

fn export(global: &GlobalArgs, args: ExportArgs) -> Result<i32, Stop> {
    let store = global.open_store()?;
    let what = format!(
        "exporting actor {:?} to {}",
        args.actor,
        args.file.display()
    );
    let report = with_spinner(&what, || {
        export_file_at(store, &args.actor, &args.file, args.force, args.at.as_ref())
    })
    .map_err(|e| e.to_string())?;
    println!(
        "exported actor {:?} to {}: {} pages of {} bytes, {} KV round trips",
        args.actor,
        args.file.display(),
        report.pages,
        report.page_size,
        report.kv_round_trips
    );
    Ok(0)
}
