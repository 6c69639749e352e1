//! kvsqlite as a SQLite loadable extension: `libkvsqlite.so` with the entry point
//! `sqlite3_kvsqlite_init`, so that any SQLite that allows extensions (the stock `sqlite3`
//! shell's `.load`, `sqlite3_load_extension`) can open `file:ACTOR?vfs=kvsqlite&kv=URL`.
//!
//! Why it is a crate of its own: the library is built here with libsqlite3-sys's
//! `loadable_extension` feature (every `sqlite3_*` call goes through the API table the host
//! hands the entry point), which cannot be combined with the `bundled` SQLite the main crate
//! and its tests use; cargo unifies features within one build, so this crate is its own
//! workspace, built by its own cargo invocation (`cargo build --manifest-path ext/Cargo.toml`).
//!
//! The entry point:
//! - accepts the host's API table even when the host SQLite is older than the bindings
//!   libsqlite3-sys ships (3.45.3; Debian's shell is 3.40.1): only the entries that the host's
//!   version has are taken, the rest stay empty (a call to one fails with a clear panic, caught
//!   at the FFI boundary; the VFS uses none of them). Hosts older than 3.31 are refused;
//! - logs to standard error at level `warn` (`KVSQLITE_LOG` takes a tracing filter);
//! - enables URI names ([`kvsqlite_core::vfs::uri`]) and registers the VFS `kvsqlite` (not as
//!   the default VFS). When the host SQLite lacks `SQLITE_ENABLE_BATCH_ATOMIC_WRITE` it warns
//!   once that every commit goes through the rollback journal (correct, more round trips);
//! - returns `SQLITE_OK_LOAD_PERMANENTLY`: the VFS outlives the connection that loaded it.

use std::ffi::{c_char, c_int};
use std::mem::{offset_of, size_of, MaybeUninit};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

use kvsqlite_core::vfs;
use rusqlite::ffi;

type Routines = ffi::sqlite3_api_routines;

// `table_len` knows the API table up to SQLite 3.44's entries: bindings newer than 3.45 (whose
// table may have grown) need its list extended first.
const _: () = assert!(
    ffi::SQLITE_VERSION_NUMBER < 3_046_000,
    "extend table_len for the newer bindings"
);

/// The oldest host SQLite the extension loads into.
const MIN_VERSION: c_int = 3_031_000;

/// Bytes of the API table a host of `version` provides (the table only ever grows at its end),
/// or `None` for a host older than [`MIN_VERSION`].
fn table_len(version: c_int) -> Option<usize> {
    let end = |off: usize| off + size_of::<usize>();
    Some(match version {
        v if v >= 3_044_000 => size_of::<Routines>(),
        v if v >= 3_043_000 => end(offset_of!(Routines, stmt_explain)),
        v if v >= 3_041_000 => end(offset_of!(Routines, is_interrupted)),
        v if v >= 3_040_000 => end(offset_of!(Routines, value_encoding)),
        v if v >= 3_039_000 => end(offset_of!(Routines, db_name)),
        v if v >= 3_038_000 => end(offset_of!(Routines, vtab_in_next)),
        v if v >= 3_037_000 => end(offset_of!(Routines, autovacuum_pages)),
        v if v >= 3_036_001 => end(offset_of!(Routines, total_changes64)),
        v if v >= 3_034_000 => end(offset_of!(Routines, txn_state)),
        v if v >= 3_032_000 => end(offset_of!(Routines, database_file_object)),
        v if v >= MIN_VERSION => end(offset_of!(Routines, filename_wal)),
        _ => return None,
    })
}

/// What the trimmed table reports as the library version: the bindings' own, so that
/// libsqlite3-sys's init (which refuses a host older than its bindings) takes it.
extern "C" fn bindings_version() -> c_int {
    ffi::SQLITE_VERSION_NUMBER
}

/// Hands the host's API table to libsqlite3-sys. A host older than the bindings gets a copy
/// holding only the entries its version has.
unsafe fn init_api(p_api: *mut Routines) -> Result<c_int, String> {
    if p_api.is_null() {
        return Err("no SQLite API table was passed to the entry point".into());
    }
    let version = match (*p_api).libversion_number {
        Some(f) => f(),
        None => return Err("the SQLite API table has no libversion_number".into()),
    };
    if version >= ffi::SQLITE_VERSION_NUMBER {
        ffi::rusqlite_extension_init2(p_api).map_err(|e| e.to_string())?;
        return Ok(version);
    }
    let len = table_len(version)
        .ok_or_else(|| format!("kvsqlite needs SQLite 3.31.0 or later; this one is {version}"))?;
    let mut table: Box<MaybeUninit<Routines>> = Box::new(MaybeUninit::zeroed());
    // SAFETY: the host's table has at least `len` bytes (its version's entries, see
    // `table_len`), the destination is a whole table; every entry is an optional function
    // pointer, for which all-zero bytes are `None`.
    ptr::copy_nonoverlapping(p_api as *const u8, table.as_mut_ptr() as *mut u8, len);
    let mut table = table.assume_init();
    table.libversion_number = Some(bindings_version);
    let table = Box::leak(table);
    ffi::rusqlite_extension_init2(table).map_err(|e| e.to_string())?;
    Ok(version)
}

fn install_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KVSQLITE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .try_init();
}

/// Writes `msg` to `*pz_err_msg` with the host's allocator (as SQLite expects), when it can.
unsafe fn report(pz_err_msg: *mut *mut c_char, p_api: *mut Routines, msg: &str) {
    if pz_err_msg.is_null() || p_api.is_null() {
        return;
    }
    let Some(mprintf) = (*p_api).mprintf else {
        return;
    };
    let Ok(c) = std::ffi::CString::new(msg) else {
        return;
    };
    *pz_err_msg = mprintf(c"%s".as_ptr(), c.as_ptr());
}

/// The extension's entry point (the name SQLite derives from `libkvsqlite.so`): registers the
/// `kvsqlite` VFS for the life of the process. On failure it returns `SQLITE_ERROR` with the
/// reason in `*pz_err_msg` and registers nothing.
///
/// # Safety
/// Called by SQLite's extension loader with a valid connection, error-message slot and API
/// table.
#[no_mangle]
pub unsafe extern "C" fn sqlite3_kvsqlite_init(
    _db: *mut ffi::sqlite3,
    pz_err_msg: *mut *mut c_char,
    p_api: *mut Routines,
) -> c_int {
    let r = catch_unwind(AssertUnwindSafe(|| {
        init_api(p_api)?;
        install_logging();
        vfs::uri::enable();
        vfs::register();
        Ok::<(), String>(())
    }));
    let msg = match r {
        Ok(Ok(())) => return ffi::SQLITE_OK_LOAD_PERMANENTLY,
        Ok(Err(m)) => m,
        Err(_) => "kvsqlite: the extension's initialisation panicked".to_string(),
    };
    report(pz_err_msg, p_api, &msg);
    ffi::SQLITE_ERROR
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_is_one_pointer_and_tables_grow_with_versions() {
        assert_eq!(size_of::<Routines>() % size_of::<usize>(), 0);
        assert_eq!(table_len(3_030_000), None);
        let mut last = 0;
        for v in [
            3_031_000, 3_032_000, 3_034_000, 3_036_001, 3_037_000, 3_038_000, 3_039_000, 3_040_001,
            3_041_000, 3_043_000, 3_044_000,
        ] {
            let n = table_len(v).unwrap();
            assert!(n > last, "{v}");
            last = n;
        }
        assert_eq!(last, size_of::<Routines>());
        assert_eq!(
            table_len(ffi::SQLITE_VERSION_NUMBER),
            Some(size_of::<Routines>())
        );
    }
}
