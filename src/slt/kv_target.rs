//! [`KvTarget`]: scripts run through kvsqlite databases on a KV store, one fresh actor per
//! script, opened with [`crate::vfs::open_database`] exactly as an application would.
//!
//! `control restart` closes the database (its connection and the VFS's shared state for the
//! actor: page cache, metadata, preload) and opens it again from the store, so the records after
//! it read every page back through the KV layer.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::Connection;

use super::target::{Session, Target};
use crate::kv::SharedStore;
use crate::vfs::{open_database, Database, OpenOptions};

static RUNS: AtomicU64 = AtomicU64::new(0);

/// Runs each script in a fresh actor of `store`. Actor ids are `PREFIX<n>-<script name>`, with
/// a prefix unique to this process and moment unless one is given; by default an actor's keys
/// are deleted when its script ends.
pub struct KvTarget {
    store: SharedStore,
    name: String,
    prefix: String,
    next: u64,
    options: OpenOptions,
    keep: bool,
}

impl KvTarget {
    /// A target on `store`, named after its backend, with default open options.
    pub fn new(store: SharedStore) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let prefix = format!(
            "slt-{}-{nanos}-{}-",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        );
        KvTarget {
            name: store.backend().to_string(),
            store,
            prefix,
            next: 0,
            options: OpenOptions::default(),
            keep: false,
        }
    }

    /// Uses `prefix` for actor ids instead of the generated one.
    pub fn with_actor_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Opens databases with these options.
    pub fn with_options(mut self, options: OpenOptions) -> Self {
        self.options = options;
        self
    }

    /// Keeps every script's keys in the store after it ends (for inspection) instead of
    /// deleting them.
    pub fn keep_data(mut self, keep: bool) -> Self {
        self.keep = keep;
        self
    }

    /// The actor id prefix.
    pub fn actor_prefix(&self) -> &str {
        &self.prefix
    }

    /// The store.
    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// Opens a fresh actor's database and returns it as the concrete session type (tests use
    /// it to look at the VFS counters).
    pub fn open_session(&mut self, script: &Path) -> Result<KvSession, String> {
        self.next += 1;
        let stem: String = script
            .file_stem()
            .map(|s| s.to_string_lossy())
            .unwrap_or_default()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            .take(64)
            .collect();
        let actor = format!("{}{}-{stem}", self.prefix, self.next);
        let db = open_database(self.store.clone(), &actor, &self.options)
            .map_err(|e| format!("cannot open actor {actor:?}: {e}"))?;
        Ok(KvSession {
            store: self.store.clone(),
            actor,
            options: self.options.clone(),
            db: Some(db),
            closed_round_trips: 0,
            wrote: false,
            keep: self.keep,
        })
    }
}

impl Target for KvTarget {
    fn name(&self) -> &str {
        &self.name
    }

    fn open_fresh(&mut self, script: &Path) -> Result<Box<dyn Session>, String> {
        Ok(Box::new(self.open_session(script)?))
    }
}

/// One script's actor database on a store.
pub struct KvSession {
    store: SharedStore,
    actor: String,
    options: OpenOptions,
    db: Option<Database>,
    closed_round_trips: u64,
    /// Whether any database instance of this session has written to the store.
    wrote: bool,
    keep: bool,
}

impl KvSession {
    /// The actor id.
    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// The open database (`None` after a failed restart).
    pub fn database(&self) -> Option<&Database> {
        self.db.as_ref()
    }

    fn close(&mut self) -> Result<(), String> {
        if let Some(db) = self.db.take() {
            let snapshot = db.snapshot();
            self.closed_round_trips += snapshot.kv_round_trips;
            self.wrote |= snapshot.kv_writes > 0;
            db.into_connection()
                .close()
                .map_err(|(_, e)| format!("closing actor {:?} failed: {e}", self.actor))?;
        }
        Ok(())
    }
}

impl Session for KvSession {
    fn connection(&self) -> Result<&Connection, String> {
        self.db
            .as_ref()
            .map(|db| db.conn())
            .ok_or_else(|| format!("actor {:?} is closed (a restart failed)", self.actor))
    }

    fn restart(&mut self) -> Result<(), String> {
        self.close()?;
        let mut options = self.options.clone();
        // Once the database has written, it must be found in the store again (a lost database
        // is an error, not a silently empty one). One that never wrote (every statement
        // failed, say) has nothing in the store: reopening it means a new, empty one, as
        // stock SQLite reopens its empty file.
        options.create = !self.wrote;
        let db = open_database(self.store.clone(), &self.actor, &options)
            .map_err(|e| format!("reopening actor {:?} failed: {e}", self.actor))?;
        self.db = Some(db);
        Ok(())
    }

    fn kv_round_trips(&self) -> Option<u64> {
        let open = self
            .db
            .as_ref()
            .map_or(0, |db| db.snapshot().kv_round_trips);
        Some(self.closed_round_trips + open)
    }

    fn actor_id(&self) -> Option<&str> {
        Some(&self.actor)
    }

    fn finish(mut self: Box<Self>) -> Result<(), String> {
        self.close()?;
        if !self.keep {
            self.store
                .delete_range(&self.actor, b"\0", None)
                .map_err(|e| format!("deleting actor {:?} failed: {e}", self.actor))?;
        }
        Ok(())
    }
}
