//! Where a script runs: a [`Target`] opens one fresh database per script, as a [`Session`] that
//! can also be restarted (closed and opened again from where its pages live).
//!
//! [`NativeTarget`] is stock SQLite on a file in a temporary directory: the reference behaviour
//! every kvsqlite target is compared against (`kvsqlite slt --native`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::Connection;

/// A place to run scripts: each call to [`Target::open_fresh`] gives a new, empty database.
pub trait Target {
    /// A short name for reports: `native`, `memory`, `redb`, `postgres`.
    fn name(&self) -> &str;

    /// Opens a fresh, empty database for the script at `script` (the path only names it).
    fn open_fresh(&mut self, script: &Path) -> Result<Box<dyn Session>, String>;
}

/// One script's database.
pub trait Session {
    /// The open connection, or an error when the database is closed (a restart failed).
    fn connection(&self) -> Result<&Connection, String>;

    /// Closes the database and opens it again from where its pages live, with every cache
    /// dropped; everything committed before must be there afterwards.
    fn restart(&mut self) -> Result<(), String>;

    /// KV round trips this script's database has made so far (across restarts), for targets
    /// that have a KV store; `None` for stock SQLite.
    fn kv_round_trips(&self) -> Option<u64> {
        None
    }

    /// The actor id this script's database lives under, for targets that have a KV store;
    /// `None` for stock SQLite.
    fn actor_id(&self) -> Option<&str> {
        None
    }

    /// Closes the database and releases what it holds (its file, its keys); called once the
    /// script is done. An error here is reported as a failure of the script.
    fn finish(self: Box<Self>) -> Result<(), String>;
}

/// Stock SQLite on a file in a private temporary directory (removed when the target is
/// dropped). One file per script.
pub struct NativeTarget {
    dir: PathBuf,
    next: u64,
}

static NATIVE_DIRS: AtomicU64 = AtomicU64::new(0);

impl NativeTarget {
    /// Creates the temporary directory.
    pub fn new() -> Result<Self, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "kvsqlite-slt-{}-{}-{}",
            std::process::id(),
            nanos,
            NATIVE_DIRS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create temporary directory {}: {e}", dir.display()))?;
        Ok(NativeTarget { dir, next: 0 })
    }
}

impl Drop for NativeTarget {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Target for NativeTarget {
    fn name(&self) -> &str {
        "native"
    }

    fn open_fresh(&mut self, _script: &Path) -> Result<Box<dyn Session>, String> {
        self.next += 1;
        let path = self.dir.join(format!("script-{}.db", self.next));
        let conn = open_file(&path)?;
        Ok(Box::new(NativeSession {
            path,
            conn: Some(conn),
        }))
    }
}

fn open_file(path: &Path) -> Result<Connection, String> {
    Connection::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))
}

struct NativeSession {
    path: PathBuf,
    conn: Option<Connection>,
}

impl NativeSession {
    fn close(&mut self) -> Result<(), String> {
        match self.conn.take() {
            Some(conn) => conn
                .close()
                .map_err(|(_, e)| format!("cannot close {}: {e}", self.path.display())),
            None => Ok(()),
        }
    }
}

impl Session for NativeSession {
    fn connection(&self) -> Result<&Connection, String> {
        self.conn
            .as_ref()
            .ok_or_else(|| format!("{} is closed (a restart failed)", self.path.display()))
    }

    fn restart(&mut self) -> Result<(), String> {
        self.close()?;
        self.conn = Some(open_file(&self.path)?);
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<(), String> {
        self.close()?;
        for suffix in ["", "-journal", "-wal", "-shm"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
        Ok(())
    }
}
