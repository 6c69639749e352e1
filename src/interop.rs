//! Plain SQLite files in and out of actors: [`import_file`] loads an ordinary SQLite file
//! (rollback or WAL mode) into an actor's database, [`export_file`] writes a consistent
//! snapshot of an actor's database to an ordinary SQLite file that stock SQLite opens.
//!
//! Both copy with SQLite's online backup API in a single step, so the copy is one read
//! transaction on the source (a consistent snapshot even while other connections write: they
//! wait, or get `SQLITE_BUSY`, until it ends) and one write transaction on the destination.
//! On an actor that write transaction is one KV write when it fits one write's limits, and
//! otherwise staged writes made live by one commit record (see `docs/layout.md`).
//!
//! The source of an import is opened read-only and is never changed (a rollback-mode file with a
//! non-empty `-journal` beside it is refused: it may hold an unfinished transaction that only a
//! recovery, which writes the file, can undo): a rollback-mode file, or
//! a WAL-mode file without a `-wal` beside it, is opened `immutable`; a WAL-mode file with its
//! `-wal` is opened `mode=ro` so the committed frames of the WAL are seen (SQLite may then
//! create the `-shm` index beside it, as any reader does). A WAL-mode source is first copied to
//! a rollback-mode file in the temporary directory (removed after), since its page 1 marks it
//! WAL and the backup would carry that mark into the actor. The file's header is checked first
//! and the whole file passes `PRAGMA quick_check` before anything is written to the store: a
//! truncated or non-SQLite file is an error and the store is left as it was.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use rusqlite::{backup::Backup, Connection, OpenFlags};

use crate::kv::counting::CountingStore;
use crate::kv::{KvError, ListRequest, SharedStore};
use crate::vfs::{open_database, OpenError, OpenOptions};

/// The 16 bytes every SQLite database file starts with.
const MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Why an import or export failed. Nothing was written to the store (import) or left at the
/// destination path (export), except where a variant says otherwise.
#[derive(Debug)]
pub enum InteropError {
    /// The input is not a usable SQLite file: missing, unreadable, not SQLite, truncated or
    /// failing `quick_check`. Nothing was written.
    BadInput(String),
    /// The actor already has keys and `replace` was not asked for.
    ActorExists(String),
    /// The actor has no database to export.
    NoSuchActor(String),
    /// The export's destination file exists and `force` was not asked for.
    DestinationExists(PathBuf),
    /// A KV call failed.
    Kv(KvError),
    /// Opening the actor's database failed.
    Open(OpenError),
    /// SQLite failed during the copy or the check after it.
    Sqlite(rusqlite::Error),
    /// A file-system operation on the destination failed.
    Io(String),
    /// `PRAGMA integrity_check` of the imported database did not answer `ok` (its lines).
    IntegrityCheck(String),
}

impl fmt::Display for InteropError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InteropError::BadInput(m) => write!(f, "{m}"),
            InteropError::ActorExists(a) => write!(
                f,
                "actor {a:?} already exists in the store (use --replace to overwrite it)"
            ),
            InteropError::NoSuchActor(a) => write!(f, "actor {a:?} does not exist in the store"),
            InteropError::DestinationExists(p) => write!(
                f,
                "{} already exists (use --force to overwrite it)",
                p.display()
            ),
            InteropError::Kv(e) => write!(f, "store: {e}"),
            InteropError::Open(e) => write!(f, "cannot open the actor's database: {e}"),
            InteropError::Sqlite(e) => write!(f, "sqlite: {e}"),
            InteropError::Io(m) => write!(f, "{m}"),
            InteropError::IntegrityCheck(m) => {
                write!(f, "integrity_check after import failed: {m}")
            }
        }
    }
}

impl std::error::Error for InteropError {}

impl From<KvError> for InteropError {
    fn from(e: KvError) -> Self {
        InteropError::Kv(e)
    }
}

impl From<OpenError> for InteropError {
    fn from(e: OpenError) -> Self {
        InteropError::Open(e)
    }
}

impl From<rusqlite::Error> for InteropError {
    fn from(e: rusqlite::Error) -> Self {
        InteropError::Sqlite(e)
    }
}

/// Options of [`import_file`].
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// Delete every key of an existing actor before importing (otherwise an existing actor is
    /// refused). The delete is its own write, before the copy: an import that fails after it
    /// (the store unreachable, an integrity check that finds a problem) leaves the actor's old
    /// data gone.
    pub replace: bool,
}

/// What an import did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportReport {
    /// Page size of the source (and so of the actor's new database).
    pub page_size: u32,
    /// Pages copied (the database's page count after the copy).
    pub pages: u64,
    /// True when the source was in WAL mode.
    pub source_wal: bool,
    /// KV round trips of the whole import: the existence check (or, with `replace`, the
    /// delete instead), the open, the copy and the integrity check.
    pub kv_round_trips: u64,
    /// KV round trips of the copy alone (the backup step's write transaction).
    pub copy_round_trips: u64,
}

/// What an export did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportReport {
    /// Page size of the exported file.
    pub page_size: u32,
    /// Pages written.
    pub pages: u64,
    /// KV round trips of the export: the open (which also tells a missing actor) and the reads
    /// of the copy (from the VFS's counters of the database).
    pub kv_round_trips: u64,
}

/// The header fields an import checks before opening a file.
struct Header {
    wal: bool,
}

/// Reads and checks a file's SQLite header, and that the file holds every page its header
/// promises (a truncated copy does not).
fn check_header(path: &Path) -> Result<Header, InteropError> {
    let bad = |m: String| InteropError::BadInput(format!("{}: {m}", path.display()));
    let mut file = std::fs::File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
    let len = file
        .metadata()
        .map_err(|e| bad(format!("cannot stat: {e}")))?
        .len();
    let mut header = [0u8; 100];
    if len < 100 {
        return Err(bad(format!(
            "not a SQLite database ({len} bytes, shorter than a SQLite header)"
        )));
    }
    file.read_exact(&mut header)
        .map_err(|e| bad(format!("cannot read: {e}")))?;
    if &header[..16] != MAGIC {
        return Err(bad("not a SQLite database (no SQLite header)".into()));
    }
    let raw = u16::from_be_bytes([header[16], header[17]]) as u32;
    let page_size = if raw == 1 { 65536 } else { raw };
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(bad(format!("bad page size {raw} in the SQLite header")));
    }
    let (write_version, read_version) = (header[18], header[19]);
    if !matches!(write_version, 1 | 2) || !matches!(read_version, 1 | 2) {
        return Err(bad(format!(
            "unsupported file format versions {write_version}/{read_version}"
        )));
    }
    let be32 = |at: usize| {
        u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    // The in-header page count is valid when the change counter matches "version valid for".
    let pages = be32(28) as u64;
    if pages > 0 && be32(24) == be32(92) {
        let needed = pages * page_size as u64;
        if len < needed {
            return Err(bad(format!(
                "truncated: the header promises {pages} pages of {page_size} bytes \
                 ({needed} bytes), the file has {len}"
            )));
        }
    }
    if len % page_size as u64 != 0 {
        return Err(bad(format!(
            "truncated or damaged: {len} bytes is not a whole number of {page_size}-byte pages"
        )));
    }
    Ok(Header {
        wal: write_version == 2 || read_version == 2,
    })
}

/// Opens an import's source read-only (see the module comment for the modes).
fn open_source(path: &Path, wal: bool) -> Result<Connection, InteropError> {
    let mut wal_path = path.as_os_str().to_owned();
    wal_path.push("-wal");
    let has_wal = wal && Path::new(&wal_path).exists();
    let mut journal = path.as_os_str().to_owned();
    journal.push("-journal");
    let journal_len = std::fs::metadata(Path::new(&journal)).map_or(0, |m| m.len());
    if !wal && journal_len > 0 {
        // An `immutable` open would ignore it, and a hot journal means the file alone may hold
        // half a transaction; rolling it back would change the source.
        return Err(InteropError::BadInput(format!(
            "{}: has a rollback journal beside it (a transaction may be unfinished); open it \
             once with sqlite3 to recover it, then import",
            path.display()
        )));
    }
    let mode = if has_wal { "mode=ro" } else { "immutable=1" };
    let uri = format!("file:{}?{mode}", uri_path(path));
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    Connection::open_with_flags(&uri, flags).map_err(|e| {
        InteropError::BadInput(format!("{}: cannot open read-only: {e}", path.display()))
    })
}

/// A path percent-encoded for a `file:` URI (`?`, `#` and `%` would otherwise end or change it).
fn uri_path(path: &Path) -> String {
    let mut out = String::new();
    for b in path.to_string_lossy().bytes() {
        match b {
            b'?' | b'#' | b'%' => out.push_str(&format!("%{b:02X}")),
            _ => out.push(b as char),
        }
    }
    out
}

/// True when the store holds any key of `actor`.
fn actor_exists(store: &SharedStore, actor: &str) -> Result<bool, InteropError> {
    let page = store.list(actor, &ListRequest::prefix(Vec::new()).with_limit(1))?;
    Ok(!page.entries.is_empty())
}

/// Runs a check pragma (`quick_check`, `integrity_check`) and returns its lines when they are
/// not the single line `ok`.
fn check(conn: &Connection, pragma: &str) -> Result<Option<String>, rusqlite::Error> {
    let mut stmt = conn.prepare(&format!("PRAGMA {pragma}"))?;
    let lines: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<_, _>>()?;
    Ok((lines != ["ok"]).then(|| lines.join("; ")))
}

/// Copies every page of `src` into `dst` in one backup step (one read transaction on the
/// source, one write transaction on the destination).
fn copy_all(src: &Connection, dst: &mut Connection) -> Result<(), rusqlite::Error> {
    use rusqlite::backup::StepResult;
    let backup = Backup::new(src, dst)?;
    loop {
        // -1: every remaining page in this one step.
        match backup.step(-1)? {
            StepResult::Done => return Ok(()),
            // Another connection holds a lock: wait for it and try again.
            StepResult::More | StepResult::Busy | StepResult::Locked => {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            _ => std::thread::sleep(std::time::Duration::from_millis(5)),
        }
    }
}

/// A rollback-mode copy of a WAL-mode source in the temporary directory, removed on drop.
struct RollbackCopy {
    path: PathBuf,
}

impl RollbackCopy {
    /// Copies `src` (opened from `source`) to a new file and switches that to rollback mode.
    fn make(src: &Connection, source: &Path) -> Result<RollbackCopy, InteropError> {
        let name = format!(
            "kvsqlite-import-{}-{}.sqlite",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let copy = RollbackCopy {
            path: std::env::temp_dir().join(name),
        };
        let mut dst = Connection::open(&copy.path).map_err(|e| {
            InteropError::Io(format!(
                "cannot make a rollback-mode copy of WAL file {}: {e}",
                source.display()
            ))
        })?;
        copy_all(src, &mut dst)?;
        let mode: String = dst.query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("delete") {
            return Err(InteropError::Io(format!(
                "the copy of {} stayed in journal mode {mode}",
                source.display()
            )));
        }
        Ok(copy)
    }
}

impl Drop for RollbackCopy {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = self.path.as_os_str().to_owned();
            p.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
    }
}

/// Copies `src` to `dst` inside an explicit read transaction on `src`, taken before the backup
/// starts, so every page comes from one committed state whatever other connections do.
fn snapshot_copy(src: &Connection, dst: &mut Connection) -> Result<(), rusqlite::Error> {
    src.execute_batch("BEGIN DEFERRED")?;
    let result = src
        .query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
        .and_then(|()| copy_all(src, dst));
    let end = src.execute_batch("COMMIT");
    result.and(end)
}

/// Loads the ordinary SQLite file at `path` into `actor`'s database in `store`.
///
/// The actor must not be open in this process meanwhile: the import counts its round trips
/// through a [`CountingStore`] wrapper, a different store handle, whose database state and
/// locks the VFS does not share with connections opened on `store`.
///
/// The file is checked first (header, size, `quick_check`); an actor that has any key is
/// refused unless [`ImportOptions::replace`], which deletes its keys (one round trip) after the
/// checks pass. The copy is one write transaction; `PRAGMA integrity_check` runs after it.
pub fn import_file(
    store: SharedStore,
    actor: &str,
    path: &Path,
    opts: &ImportOptions,
) -> Result<ImportReport, InteropError> {
    crate::kv::check_actor_id(actor)?;
    let header = check_header(path)?;
    let src = open_source(path, header.wal)?;
    match check(&src, "quick_check") {
        Ok(None) => {}
        Ok(Some(lines)) => {
            return Err(InteropError::BadInput(format!(
                "{}: quick_check failed: {lines}",
                path.display()
            )))
        }
        Err(e) => {
            return Err(InteropError::BadInput(format!(
                "{}: not a readable SQLite database: {e}",
                path.display()
            )))
        }
    }
    let page_size: u32 = src.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    // A WAL-mode source's page 1 says "WAL" (header bytes 18 and 19), and the backup copies it
    // as it is: the actor's database would then ask for a WAL the VFS refuses. So a WAL source
    // goes through a rollback-mode copy in the temporary directory first.
    let rollback_copy = if header.wal {
        Some(RollbackCopy::make(&src, path)?)
    } else {
        None
    };
    let src = match &rollback_copy {
        Some(copy) => Connection::open_with_flags(&copy.path, OpenFlags::SQLITE_OPEN_READ_ONLY)?,
        None => src,
    };

    let counting = CountingStore::wrap(store);
    let shared = counting.shared();
    let start = counting.snapshot();
    if opts.replace {
        // Whatever the actor held goes, in one call (no list first to see whether it exists).
        shared.delete_range(actor, &[], None)?;
    } else if actor_exists(&shared, actor)? {
        return Err(InteropError::ActorExists(actor.to_string()));
    }
    let options = OpenOptions {
        page_size,
        ..OpenOptions::default()
    };
    let mut db = open_database(shared, actor, &options)?;
    let before_copy = counting.snapshot();
    copy_all(&src, db.conn_mut())?;
    let copy_round_trips = counting.snapshot().delta(&before_copy).round_trips();
    if let Some(lines) = check(&db, "integrity_check")? {
        return Err(InteropError::IntegrityCheck(lines));
    }
    let pages = db.query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))? as u64;
    drop(db);
    Ok(ImportReport {
        page_size,
        pages,
        source_wal: header.wal,
        kv_round_trips: counting.snapshot().delta(&start).round_trips(),
        copy_round_trips,
    })
}

/// Writes a consistent snapshot of `actor`'s database to an ordinary SQLite file at `path`
/// (rollback-journal mode, openable by stock SQLite).
///
/// An existing `path` is refused unless `force`. The copy goes to a temporary file beside
/// `path` that is renamed over it once complete, so a failed export leaves no partial file
/// (and, with `force`, the old file as it was).
pub fn export_file(
    store: SharedStore,
    actor: &str,
    path: &Path,
    force: bool,
) -> Result<ExportReport, InteropError> {
    export_file_at(store, actor, path, force, None)
}

/// [`export_file`] of the actor's database as of `at` (a seq, bookmark or time its history
/// holds; `None`: now). The image at `at` is read from the history (one list, one get) and the
/// current pages not changed since; the actor is not changed.
pub fn export_file_at(
    store: SharedStore,
    actor: &str,
    path: &Path,
    force: bool,
    at: Option<&crate::vfs::history::Target>,
) -> Result<ExportReport, InteropError> {
    crate::kv::check_actor_id(actor)?;
    if !force && path.exists() {
        return Err(InteropError::DestinationExists(path.to_path_buf()));
    }
    let options = OpenOptions {
        read_only: true,
        create: false,
        ..OpenOptions::default()
    };
    // The caller's store itself, not a counting wrapper: the VFS keys a database's shared state
    // and its locks by the store handle, so only the same handle shares the locks of the
    // connections writing the actor in this process (a wrapper would read around their locks
    // and could copy a mix of two commits). Round trips come from the VFS's own counters.
    // An actor without a database (none at all, or state only) is `NoSuchActor`, told by the
    // open's own read: no separate existence check.
    let db = open_database(store, actor, &options).map_err(|e| match e {
        OpenError::NotFound { .. } => InteropError::NoSuchActor(actor.to_string()),
        e => e.into(),
    })?;
    let file_name = path
        .file_name()
        .ok_or_else(|| InteropError::Io(format!("{}: not a file path", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".kvsqlite-export-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let _ = std::fs::remove_file(&tmp);
        if let Some(at) = at {
            let image = db
                .image_at(at)
                .map_err(|e| InteropError::Io(format!("cannot read the history: {e}")))?;
            write_image(&tmp, image.size, &image.pages)?;
        }
        let mut dst = Connection::open(&tmp)?;
        if at.is_none() {
            snapshot_copy(&db, &mut dst)?;
        } else {
            let check: String = dst.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
            if check != "ok" {
                return Err(InteropError::Io(format!(
                    "the image as of the bookmark fails integrity_check: {check}"
                )));
            }
        }
        let page_size: u32 = dst.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let pages = dst.query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))? as u64;
        dst.close().map_err(|(_, e)| e)?;
        Ok::<_, InteropError>((page_size, pages))
    })();
    let (page_size, pages) = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(InteropError::Io(format!(
            "cannot move the export to {}: {e}",
            path.display()
        )));
    }
    // Everything the database did, its open included.
    let kv_round_trips = db.snapshot().kv_round_trips;
    drop(db);
    Ok(ExportReport {
        page_size,
        pages,
        kv_round_trips,
    })
}

/// Writes a database image (its pages in order, cut to `size` bytes) to a new file.
fn write_image(
    path: &Path,
    size: u64,
    pages: &std::collections::BTreeMap<u32, Vec<u8>>,
) -> Result<(), InteropError> {
    use std::io::Write;
    let io = |e: std::io::Error| InteropError::Io(format!("{}: {e}", path.display()));
    let mut f = std::fs::File::create(path).map_err(io)?;
    for p in pages.values() {
        f.write_all(p).map_err(io)?;
    }
    f.set_len(size).map_err(io)?;
    f.sync_all().map_err(io)
}
