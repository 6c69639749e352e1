//! The SQLite C callbacks of the VFS: the `sqlite3_io_methods` of an open file and the
//! `sqlite3_vfs` methods, each a thin `unsafe extern "C"` shim over [`DbState`].
//!
//! Why it exists: it keeps the FFI boundary (raw pointers, panic guards, mapping
//! [`VfsError`] to SQLite result codes) apart from the open API in `mod.rs`, so the safe
//! Rust surface and the C surface can each be read on their own.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::ffi;

use super::file::{lock, DbState, Op, StateOptions, VfsError};
use super::layout::FileKind;
use super::pragma::{page_size_value, refused_pragma};
use super::{db_state, parse_name, uri, ParsedName, MOVED_ERROR_CODE};
// ---------------------------------------------------------------------------------------------
// FFI: the file object
// ---------------------------------------------------------------------------------------------

#[repr(C)]
struct KvFile {
    base: ffi::sqlite3_file,
    handle: *mut Handle,
}

enum Handle {
    Kv {
        state: Arc<DbState>,
        kind: FileKind,
        id: u64,
        lock: i32,
        wrote: bool,
        /// The plain (URI) name this handle binds to its store (see [`super::uri`]).
        bound: Option<String>,
    },
    Mem {
        data: Vec<u8>,
    },
}

static IO_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_unlock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

/// Runs a callback body, turning a panic into `SQLITE_IOERR` (never unwinding into C).
fn guard(what: &str, f: impl FnOnce() -> c_int) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(rc) => rc,
        Err(_) => {
            tracing::error!("kvsqlite VFS: panic in {what}; reported as SQLITE_IOERR");
            ffi::SQLITE_IOERR
        }
    }
}

fn error_code(e: &VfsError, op: Op) -> c_int {
    tracing::warn!("kvsqlite VFS: {e}");
    match e {
        VfsError::Corrupt(_) => ffi::SQLITE_CORRUPT,
        VfsError::TooBig(_) => ffi::SQLITE_IOERR_WRITE,
        VfsError::Moved => ffi::SQLITE_IOERR_VNODE,
        VfsError::Misuse(_) => ffi::SQLITE_MISUSE,
        VfsError::History(_) => ffi::SQLITE_ERROR,
        VfsError::Poisoned(_) => ffi::SQLITE_IOERR,
        VfsError::Kv(o, _) => match o.max_op(op) {
            Op::Read => ffi::SQLITE_IOERR_READ,
            Op::Write => ffi::SQLITE_IOERR_WRITE,
            Op::Sync => ffi::SQLITE_IOERR_FSYNC,
            Op::Truncate => ffi::SQLITE_IOERR_TRUNCATE,
            Op::Delete => ffi::SQLITE_IOERR_DELETE,
        },
    }
}

impl Op {
    fn max_op(self, outer: Op) -> Op {
        // A write inside a sync reports as a sync failure, and so on: the outer op names it.
        match outer {
            Op::Read => self,
            o => o,
        }
    }
}

unsafe fn handle<'a>(file: *mut ffi::sqlite3_file) -> Option<&'a mut Handle> {
    let f = file as *mut KvFile;
    if f.is_null() || (*f).handle.is_null() {
        return None;
    }
    Some(&mut *(*f).handle)
}

unsafe extern "C" fn x_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    guard("xOpen", || {
        let f = file as *mut KvFile;
        (*f).base.pMethods = ptr::null();
        (*f).handle = ptr::null_mut();
        let temp = ffi::SQLITE_OPEN_TEMP_DB
            | ffi::SQLITE_OPEN_TEMP_JOURNAL
            | ffi::SQLITE_OPEN_SUBJOURNAL
            | ffi::SQLITE_OPEN_TRANSIENT_DB
            | ffi::SQLITE_OPEN_DELETEONCLOSE;
        let raw_name = name;
        let h = if name.is_null() || flags & temp != 0 {
            Handle::Mem { data: Vec::new() }
        } else {
            let Ok(name) = CStr::from_ptr(name).to_str() else {
                tracing::warn!("kvsqlite VFS: file name is not UTF-8");
                return ffi::SQLITE_CANTOPEN;
            };
            let (parsed, bound) = match open_name(name, raw_name, flags) {
                Ok(p) => p,
                Err(m) => {
                    tracing::warn!("kvsqlite VFS: cannot open {m}");
                    return ffi::SQLITE_CANTOPEN;
                }
            };
            // Releases the binding of a plain name when the open fails below.
            let unbind = |b: &Option<String>| {
                if let Some(actor) = b {
                    uri::unbind(actor);
                }
            };
            let state = match db_state(
                parsed.store,
                &parsed.actor,
                &StateOptions::default(),
                None,
                false,
                None,
            ) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("kvsqlite VFS: cannot open {name:?}: {e}");
                    unbind(&bound);
                    return match e {
                        VfsError::Corrupt(_) => ffi::SQLITE_CORRUPT,
                        _ => ffi::SQLITE_CANTOPEN,
                    };
                }
            };
            if !state.exists(parsed.file) {
                if flags & ffi::SQLITE_OPEN_CREATE == 0 {
                    unbind(&bound);
                    return ffi::SQLITE_CANTOPEN;
                }
                state.create(parsed.file);
            }
            let id = state.new_handle_id();
            Handle::Kv {
                state,
                kind: parsed.file,
                id,
                lock: lock::NONE,
                wrote: false,
                bound,
            }
        };
        (*f).handle = Box::into_raw(Box::new(h));
        (*f).base.pMethods = &IO_METHODS;
        if !out_flags.is_null() {
            *out_flags = flags;
        }
        ffi::SQLITE_OK
    })
}

/// Resolves the name of a file SQLite opens: a `/<store-id>/<actor>` path, or (once URI names
/// are enabled) a plain actor id whose main database binds it to the store of its `kv` URI
/// parameter. Returns the file and the plain name bound (to release at close).
unsafe fn open_name(
    name: &str,
    raw: ffi::sqlite3_filename,
    flags: c_int,
) -> Result<(ParsedName, Option<String>), String> {
    if !uri::is_plain(name) {
        return parse_name(name).map(|p| (p, None));
    }
    if flags & ffi::SQLITE_OPEN_MAIN_DB != 0 {
        // SAFETY: `raw` is the name SQLite passed to xOpen for a main database, which is what
        // sqlite3_uri_parameter takes; the parameter name is a static C string.
        let kv = ffi::sqlite3_uri_parameter(raw, c"kv".as_ptr());
        let kv = (!kv.is_null())
            .then(|| CStr::from_ptr(kv).to_str())
            .transpose()
            .map_err(|_| format!("{name:?}: the kv URI parameter is not UTF-8"))?;
        let store = uri::bind_main(name, kv)?;
        let parsed = ParsedName {
            store,
            actor: name.to_string(),
            file: FileKind::Main,
        };
        return Ok((parsed, Some(name.to_string())));
    }
    if flags & ffi::SQLITE_OPEN_MAIN_JOURNAL != 0 {
        return uri::resolve_bound(name)
            .and_then(|p| match p.file {
                FileKind::Journal => Ok(p),
                _ => Err(format!("{name:?} is not a journal name")),
            })
            .map(|p| (p, None));
    }
    Err(format!(
        "{name:?}: kvsqlite opens main databases and their rollback journals only (not WAL files or super-journals)"
    ))
}

/// Resolves a name passed to `xAccess` or `xDelete` (no URI parameters there): a
/// `/<store-id>/<actor>` path, or a plain name of an open database or its journal.
fn file_name(name: &str) -> Result<ParsedName, String> {
    if uri::is_plain(name) {
        uri::resolve_bound(name)
    } else {
        parse_name(name)
    }
}

unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    guard("xClose", || {
        let f = file as *mut KvFile;
        if f.is_null() || (*f).handle.is_null() {
            return ffi::SQLITE_OK;
        }
        let h = Box::from_raw((*f).handle);
        (*f).handle = ptr::null_mut();
        if let Handle::Kv {
            state,
            id,
            lock,
            bound,
            ..
        } = &*h
        {
            if let Some(actor) = bound {
                uri::unbind(actor);
            }
            state.unlock(*id, *lock, lock::NONE);
            if let Err(e) = state.flush_all() {
                error_code(&e, Op::Sync);
                return ffi::SQLITE_IOERR_CLOSE;
            }
        }
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amt: c_int,
    off: ffi::sqlite3_int64,
) -> c_int {
    guard("xRead", || {
        let Some(h) = handle(file) else {
            return ffi::SQLITE_IOERR_READ;
        };
        if amt < 0 || off < 0 {
            return ffi::SQLITE_IOERR_READ;
        }
        let out = std::slice::from_raw_parts_mut(buf as *mut u8, amt as usize);
        let got = match h {
            Handle::Mem { data } => {
                let start = (off as usize).min(data.len());
                let n = (data.len() - start).min(out.len());
                out[..n].copy_from_slice(&data[start..start + n]);
                out[n..].fill(0);
                n
            }
            Handle::Kv { state, kind, .. } => match state.read(*kind, off as u64, out) {
                Ok(n) => n,
                Err(e) => return error_code(&e, Op::Read),
            },
        };
        if got < out.len() {
            ffi::SQLITE_IOERR_SHORT_READ
        } else {
            ffi::SQLITE_OK
        }
    })
}

unsafe extern "C" fn x_write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amt: c_int,
    off: ffi::sqlite3_int64,
) -> c_int {
    guard("xWrite", || {
        let Some(h) = handle(file) else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        if amt < 0 || off < 0 {
            return ffi::SQLITE_IOERR_WRITE;
        }
        let data = std::slice::from_raw_parts(buf as *const u8, amt as usize);
        match h {
            Handle::Mem { data: d } => {
                let end = off as usize + data.len();
                if d.len() < end {
                    d.resize(end, 0);
                }
                d[off as usize..end].copy_from_slice(data);
                ffi::SQLITE_OK
            }
            Handle::Kv {
                state, kind, wrote, ..
            } => {
                if *kind == FileKind::Journal && !*wrote {
                    *wrote = true;
                    state.note_journal_fallback();
                }
                match state.write(*kind, off as u64, data) {
                    Ok(()) => ffi::SQLITE_OK,
                    Err(e) => error_code(&e, Op::Write),
                }
            }
        }
    })
}

unsafe extern "C" fn x_truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    guard("xTruncate", || {
        let Some(h) = handle(file) else {
            return ffi::SQLITE_IOERR_TRUNCATE;
        };
        if size < 0 {
            return ffi::SQLITE_IOERR_TRUNCATE;
        }
        match h {
            Handle::Mem { data } => {
                data.truncate(size as usize);
                ffi::SQLITE_OK
            }
            Handle::Kv { state, kind, .. } => match state.truncate(*kind, size as u64) {
                Ok(()) => ffi::SQLITE_OK,
                Err(e) => error_code(&e, Op::Truncate),
            },
        }
    })
}

unsafe extern "C" fn x_sync(file: *mut ffi::sqlite3_file, _flags: c_int) -> c_int {
    guard("xSync", || {
        let Some(h) = handle(file) else {
            return ffi::SQLITE_IOERR_FSYNC;
        };
        match h {
            Handle::Mem { .. } => ffi::SQLITE_OK,
            Handle::Kv { state, kind, .. } => match state.sync(*kind) {
                Ok(()) => ffi::SQLITE_OK,
                Err(e) => error_code(&e, Op::Sync),
            },
        }
    })
}

unsafe extern "C" fn x_file_size(
    file: *mut ffi::sqlite3_file,
    size: *mut ffi::sqlite3_int64,
) -> c_int {
    guard("xFileSize", || {
        let Some(h) = handle(file) else {
            return ffi::SQLITE_IOERR_FSTAT;
        };
        let n = match h {
            Handle::Mem { data } => data.len() as u64,
            Handle::Kv { state, kind, .. } => match state.file_size(*kind) {
                Ok(n) => n,
                Err(VfsError::Moved) => return MOVED_ERROR_CODE,
                Err(e) => {
                    error_code(&e, Op::Read);
                    return ffi::SQLITE_IOERR_FSTAT;
                }
            },
        };
        *size = n as ffi::sqlite3_int64;
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    guard("xLock", || {
        let Some(h) = handle(file) else {
            return ffi::SQLITE_IOERR_LOCK;
        };
        match h {
            Handle::Kv {
                state,
                kind: FileKind::Main,
                id,
                lock,
                ..
            } => {
                if *lock == super::file::lock::NONE {
                    // Every statement starts here: a poisoned database refuses them all.
                    if let Err(e) = state.check_usable() {
                        return error_code(&e, Op::Read);
                    }
                }
                let (ok, new) = state.lock(*id, *lock, level);
                *lock = new;
                if ok {
                    ffi::SQLITE_OK
                } else {
                    ffi::SQLITE_BUSY
                }
            }
            _ => ffi::SQLITE_OK,
        }
    })
}

unsafe extern "C" fn x_unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    guard("xUnlock", || {
        let Some(h) = handle(file) else {
            return ffi::SQLITE_IOERR_UNLOCK;
        };
        if let Handle::Kv {
            state,
            kind: FileKind::Main,
            id,
            lock,
            ..
        } = h
        {
            *lock = state.unlock(*id, *lock, level);
        }
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    guard("xCheckReservedLock", || {
        let Some(h) = handle(file) else {
            return ffi::SQLITE_IOERR_CHECKRESERVEDLOCK;
        };
        *out = match h {
            Handle::Kv { state, .. } => state.reserved() as c_int,
            Handle::Mem { .. } => 0,
        };
        ffi::SQLITE_OK
    })
}

/// `s` as a NUL-terminated string allocated by `sqlite3_malloc` (SQLite frees it), or null when
/// it holds a NUL or the allocation fails. (`sqlite3_mprintf` is variadic, and a loadable
/// extension's bindings have no variadic functions.)
unsafe fn sqlite_string(s: &str) -> *mut c_char {
    if s.contains('\0') {
        return ptr::null_mut();
    }
    let Ok(n) = c_int::try_from(s.len() + 1) else {
        return ptr::null_mut();
    };
    let p = ffi::sqlite3_malloc(n) as *mut u8;
    if !p.is_null() {
        // SAFETY: `p` holds `s.len() + 1` bytes.
        ptr::copy_nonoverlapping(s.as_ptr(), p, s.len());
        *p.add(s.len()) = 0;
    }
    p as *mut c_char
}

/// `PRAGMA kvsqlite_stats`: returns the database's I/O counters ([`super::Snapshot`], shared
/// by its connections in this process) as one JSON object, for programs that only speak SQL
/// (the `sqlite3` shell with the loadable extension).
pub const STATS_PRAGMA: &str = "kvsqlite_stats";

/// The counters as a JSON object, `{"kv_round_trips":N,…}` in declaration order.
pub fn stats_json(s: &super::Snapshot) -> String {
    let fields: Vec<String> = s
        .fields()
        .into_iter()
        .map(|(k, v)| format!("\"{k}\":{v}"))
        .collect();
    format!("{{{}}}", fields.join(","))
}

unsafe extern "C" fn x_file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    guard("xFileControl", || {
        let Some(h) = handle(file) else {
            return ffi::SQLITE_NOTFOUND;
        };
        let Handle::Kv { state, kind, .. } = h else {
            return ffi::SQLITE_NOTFOUND;
        };
        match op {
            ffi::SQLITE_FCNTL_BEGIN_ATOMIC_WRITE if *kind == FileKind::Main => {
                match state.begin_atomic() {
                    Ok(()) => ffi::SQLITE_OK,
                    Err(e) => error_code(&e, Op::Write),
                }
            }
            ffi::SQLITE_FCNTL_COMMIT_ATOMIC_WRITE if *kind == FileKind::Main => {
                match state.commit_atomic() {
                    Ok(()) => ffi::SQLITE_OK,
                    Err(e) => error_code(&e, Op::Write),
                }
            }
            ffi::SQLITE_FCNTL_ROLLBACK_ATOMIC_WRITE if *kind == FileKind::Main => {
                state.rollback_atomic();
                ffi::SQLITE_OK
            }
            ffi::SQLITE_FCNTL_PRAGMA => {
                let az = arg as *mut *mut c_char;
                if az.is_null() {
                    return ffi::SQLITE_NOTFOUND;
                }
                let name = *az.add(1);
                let value = *az.add(2);
                if name.is_null() {
                    return ffi::SQLITE_NOTFOUND;
                }
                let name = CStr::from_ptr(name).to_string_lossy().into_owned();
                let value = (!value.is_null())
                    .then(|| CStr::from_ptr(value).to_string_lossy().into_owned());
                if *kind == FileKind::Main && name.eq_ignore_ascii_case(STATS_PRAGMA) {
                    // The database's counters as one JSON object: the pragma's one-row result.
                    *az = sqlite_string(&stats_json(&state.stats().snapshot()));
                    return ffi::SQLITE_OK;
                }
                let refusal = match (*kind, page_size_value(&name, value.as_deref())) {
                    (FileKind::Main, Some(ps)) => state.set_new_page_size(ps).err(),
                    _ => refused_pragma(&name, value.as_deref()),
                };
                match refusal {
                    Some(msg) => {
                        *az = sqlite_string(&msg);
                        ffi::SQLITE_ERROR
                    }
                    None => ffi::SQLITE_NOTFOUND,
                }
            }
            _ => ffi::SQLITE_NOTFOUND,
        }
    })
}

unsafe extern "C" fn x_sector_size(_file: *mut ffi::sqlite3_file) -> c_int {
    guard("xSectorSize", || 4096)
}

unsafe extern "C" fn x_device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    guard("xDeviceCharacteristics", || match handle(file) {
        Some(Handle::Kv {
            kind: FileKind::Main,
            state,
            ..
        }) if state.options().batch_atomic => {
            ffi::SQLITE_IOCAP_BATCH_ATOMIC | ffi::SQLITE_IOCAP_POWERSAFE_OVERWRITE
        }
        Some(Handle::Kv { .. }) => ffi::SQLITE_IOCAP_POWERSAFE_OVERWRITE,
        _ => 0,
    })
}

// ---------------------------------------------------------------------------------------------
// FFI: the VFS object
// ---------------------------------------------------------------------------------------------

unsafe extern "C" fn x_delete(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    _sync_dir: c_int,
) -> c_int {
    guard("xDelete", || {
        if name.is_null() {
            return ffi::SQLITE_IOERR_DELETE;
        }
        let Ok(name) = CStr::from_ptr(name).to_str() else {
            return ffi::SQLITE_IOERR_DELETE;
        };
        let Ok(p) = file_name(name) else {
            return ffi::SQLITE_IOERR_DELETE_NOENT;
        };
        let state = match db_state(
            p.store,
            &p.actor,
            &StateOptions::default(),
            None,
            false,
            None,
        ) {
            Ok(s) => s,
            Err(e) => return error_code(&e, Op::Delete),
        };
        match state.delete(p.file) {
            Ok(()) => ffi::SQLITE_OK,
            Err(e) => error_code(&e, Op::Delete),
        }
    })
}

thread_local! {
    /// The last journal name `xAccess` resolved on this thread, and its database's state.
    static ACCESS_CACHE: std::cell::RefCell<Option<(Box<str>, std::sync::Weak<DbState>)>> =
        const { std::cell::RefCell::new(None) };
}

/// The live state cached for journal `name`, if any.
fn access_cache_get(name: &str) -> Option<Arc<DbState>> {
    ACCESS_CACHE.with(|c| match &*c.borrow() {
        Some((n, w)) if **n == *name => w.upgrade(),
        _ => None,
    })
}

fn access_cache_put(name: &str, s: &Arc<DbState>) {
    ACCESS_CACHE.with(|c| *c.borrow_mut() = Some((name.into(), Arc::downgrade(s))));
}

unsafe extern "C" fn x_access(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    _flags: c_int,
    out: *mut c_int,
) -> c_int {
    guard("xAccess", || {
        *out = 0;
        if name.is_null() {
            return ffi::SQLITE_OK;
        }
        let Ok(name) = CStr::from_ptr(name).to_str() else {
            return ffi::SQLITE_OK;
        };
        // SQLite asks for `-wal` (and the pager for no other name than these) at every
        // transaction start: kvsqlite never has one, and answering it from the suffix spares
        // building parse_name's error message each time.
        if name.ends_with("-wal") || name.ends_with("-shm") {
            return ffi::SQLITE_OK;
        }
        // The hot-journal check, also at every transaction start: a state this thread looked
        // up by the same name and that is still alive is the one db_state would return. Only
        // for names that carry their store: a plain actor name (the loadable extension's URI
        // form) resolves through whichever store the actor is bound to now.
        let cacheable = !uri::is_plain(name);
        if let Some(s) = access_cache_get(name).filter(|_| cacheable) {
            *out = s.exists(FileKind::Journal) as c_int;
            return ffi::SQLITE_OK;
        }
        let Ok(p) = file_name(name) else {
            return ffi::SQLITE_OK;
        };
        match db_state(
            p.store,
            &p.actor,
            &StateOptions::default(),
            None,
            false,
            None,
        ) {
            Ok(s) => {
                *out = s.exists(p.file) as c_int;
                if cacheable && p.file == FileKind::Journal {
                    access_cache_put(name, &s);
                }
                ffi::SQLITE_OK
            }
            Err(e) => {
                error_code(&e, Op::Read);
                ffi::SQLITE_IOERR_ACCESS
            }
        }
    })
}

unsafe extern "C" fn x_full_pathname(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    n_out: c_int,
    out: *mut c_char,
) -> c_int {
    guard("xFullPathname", || {
        if name.is_null() || out.is_null() || n_out <= 0 {
            return ffi::SQLITE_CANTOPEN;
        }
        let bytes = CStr::from_ptr(name).to_bytes_with_nul();
        if bytes.len() > n_out as usize {
            return ffi::SQLITE_CANTOPEN;
        }
        ptr::copy_nonoverlapping(bytes.as_ptr() as *const c_char, out, bytes.len());
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_dl_open(_vfs: *mut ffi::sqlite3_vfs, _name: *const c_char) -> *mut c_void {
    ptr::null_mut()
}

unsafe extern "C" fn x_dl_error(_vfs: *mut ffi::sqlite3_vfs, n: c_int, msg: *mut c_char) {
    guard("xDlError", || {
        let text = b"kvsqlite does not load extensions\0";
        if n > 0 && !msg.is_null() {
            let len = text.len().min(n as usize);
            ptr::copy_nonoverlapping(text.as_ptr() as *const c_char, msg, len);
            *msg.add(len - 1) = 0;
        }
        0
    });
}

unsafe extern "C" fn x_dl_sym(
    _vfs: *mut ffi::sqlite3_vfs,
    _h: *mut c_void,
    _sym: *const c_char,
) -> Option<unsafe extern "C" fn(*mut ffi::sqlite3_vfs, *mut c_void, *const c_char)> {
    None
}

unsafe extern "C" fn x_dl_close(_vfs: *mut ffi::sqlite3_vfs, _h: *mut c_void) {}

unsafe extern "C" fn x_randomness(
    _vfs: *mut ffi::sqlite3_vfs,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    guard("xRandomness", || {
        if n <= 0 || out.is_null() {
            return 0;
        }
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ SEQ.fetch_add(0x9E37_79B9, std::sync::atomic::Ordering::Relaxed)
            ^ (std::process::id() as u64) << 32;
        let bytes = crate::rng::Rng::new(seed).bytes(n as usize);
        ptr::copy_nonoverlapping(bytes.as_ptr() as *const c_char, out, n as usize);
        n
    })
}

unsafe extern "C" fn x_sleep(_vfs: *mut ffi::sqlite3_vfs, micros: c_int) -> c_int {
    guard("xSleep", || {
        std::thread::sleep(std::time::Duration::from_micros(micros.max(0) as u64));
        micros
    })
}

/// Milliseconds since the Julian epoch (what `xCurrentTimeInt64` reports).
pub fn julian_day_ms_now() -> i64 {
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    unix_ms + 210_866_760_000_000
}

unsafe extern "C" fn x_current_time(_vfs: *mut ffi::sqlite3_vfs, out: *mut f64) -> c_int {
    guard("xCurrentTime", || {
        *out = julian_day_ms_now() as f64 / 86_400_000.0;
        ffi::SQLITE_OK
    })
}

thread_local! {
    /// The last `xCurrentTimeInt64` read on this thread: a sequence number (bumped at every
    /// read) and the time it read, in nanoseconds since the Unix epoch.
    static CLOCK_READ: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// The last clock read `xCurrentTimeInt64` made on this thread: `(sequence, unix_nanos)`, the
/// sequence bumped at every read (0: none yet). SQLite reads the clock through the VFS right
/// before a profiled statement's first step and right before its profile event, so the query
/// log takes those two reads for the statement's duration instead of reading the clock twice
/// more (a clock read is a sizeable part of a cached point query).
pub fn last_clock_read() -> (u64, u64) {
    CLOCK_READ.with(|c| c.get())
}

unsafe extern "C" fn x_current_time_int64(
    _vfs: *mut ffi::sqlite3_vfs,
    out: *mut ffi::sqlite3_int64,
) -> c_int {
    guard("xCurrentTimeInt64", || {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        CLOCK_READ.with(|c| c.set((c.get().0.wrapping_add(1).max(1), nanos)));
        *out = (nanos / 1_000_000) as i64 + 210_866_760_000_000;
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_get_last_error(
    _vfs: *mut ffi::sqlite3_vfs,
    _n: c_int,
    _out: *mut c_char,
) -> c_int {
    0
}

/// The `sqlite3_vfs` object [`super::register`] registers: this module's callbacks.
pub(super) fn new_vfs() -> Box<ffi::sqlite3_vfs> {
    Box::new(ffi::sqlite3_vfs {
        iVersion: 2,
        szOsFile: std::mem::size_of::<KvFile>() as c_int,
        // A 512-byte actor id percent-encoded, the store id and `-journal` fit.
        mxPathname: 2048,
        pNext: ptr::null_mut(),
        zName: c"kvsqlite".as_ptr(),
        pAppData: ptr::null_mut(),
        xOpen: Some(x_open),
        xDelete: Some(x_delete),
        xAccess: Some(x_access),
        xFullPathname: Some(x_full_pathname),
        xDlOpen: Some(x_dl_open),
        xDlError: Some(x_dl_error),
        xDlSym: Some(x_dl_sym),
        xDlClose: Some(x_dl_close),
        xRandomness: Some(x_randomness),
        xSleep: Some(x_sleep),
        xCurrentTime: Some(x_current_time),
        xGetLastError: Some(x_get_last_error),
        xCurrentTimeInt64: Some(x_current_time_int64),
        xSetSystemCall: None,
        xGetSystemCall: None,
        xNextSystemCall: None,
    })
}
