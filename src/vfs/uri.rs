//! URI names: `file:ACTOR?vfs=kvsqlite&kv=URL`, the way a program that only speaks SQLite (the
//! `sqlite3` shell with the loadable extension, say) opens an actor's database.
//!
//! Why it exists: the open API ([`super::open_database`]) registers a store and hands SQLite a
//! `/<store-id>/<actor>` path; a plain SQLite program has no store to register, only a file
//! name and URI parameters. Once [`enable`] was called (the extension's entry point does), a
//! main database name that does not start with `/` is an actor id, and its store is the one the
//! `kv` URI parameter names (a store URL as everywhere, default
//! [`crate::kv::url::resolve_url`]'s: `KVSQLITE_KV`, else the embedded redb store at
//! `./kvsqlite-data/kv.redb`). Each URL's store is opened once per process and kept for its
//! life, so several stores can be open at once, keyed by URL.
//!
//! SQLite names the journal `ACTOR-journal` and passes that name to `xOpen`, `xAccess` and
//! `xDelete` without URI parameters; it only does so while the main database is open. An open
//! main database therefore *binds* its plain name to its store here, and the journal's name is
//! resolved through that binding. One plain name can be bound to one store at a time in a
//! process: opening the same actor id on a second store while the first is open is refused
//! (`SQLITE_CANTOPEN`, with the reason logged).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::LazyLock;

use parking_lot::Mutex;

use super::layout::FileKind;
use super::ParsedName;
use crate::kv::{KvLimits, SharedStore};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Makes the VFS accept plain actor names with a `kv` URI parameter (see the module comment);
/// idempotent. Without it a name not of the form `/<store-id>/<actor>` is refused, as before.
pub fn enable() {
    ENABLED.store(true, Ordering::Release);
}

/// True once [`enable`] was called in this process.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Acquire)
}

#[derive(Default)]
struct Table {
    /// Stores opened for a URL, kept for the life of the process.
    stores: HashMap<String, (SharedStore, u64)>,
    /// Plain names of open main databases: the store id and how many handles hold the binding.
    bound: HashMap<String, (u64, usize)>,
}

static TABLE: LazyLock<Mutex<Table>> = LazyLock::new(|| Mutex::new(Table::default()));

/// Held while a store is opened for a URL the table does not know yet, so two first opens of
/// one URL open it once (a second open of one redb file in a process is refused). `TABLE`
/// itself stays free meanwhile for names already bound.
static OPENING: Mutex<()> = Mutex::new(());

/// True when `name` is a plain (URI) name rather than a `/<store-id>/<actor>` path.
pub(super) fn is_plain(name: &str) -> bool {
    enabled() && !name.starts_with('/')
}

/// Binds the main database `actor` to the store `kv` names (opened on first use) and returns
/// the store id. Every successful call must be paired with one [`unbind`].
pub(super) fn bind_main(actor: &str, kv: Option<&str>) -> Result<u64, String> {
    crate::kv::check_actor_id(actor).map_err(|e| format!("{actor:?}: {e}"))?;
    let url = crate::kv::url::resolve_url(kv.filter(|u| !u.is_empty()));
    let known = |url: &str| TABLE.lock().stores.get(url).map(|(_, id)| *id);
    if let Some(id) = known(&url) {
        return bind(actor, id, &url);
    }
    // Opened outside TABLE's lock (a remote store's connect can take a while), under OPENING's:
    // a thread that waited there finds the store the first one opened.
    let _opening = OPENING.lock();
    if let Some(id) = known(&url) {
        return bind(actor, id, &url);
    }
    let store = crate::kv::url::open_store(&url, KvLimits::default(), None)
        .map_err(|e| format!("cannot open the store {url:?}: {e}"))?;
    let id = super::register_store(&store).0;
    TABLE.lock().stores.insert(url.clone(), (store, id));
    bind(actor, id, &url)
}

/// Binds `actor` to the store `id` (of `url`), refusing a second store for one actor id.
fn bind(actor: &str, id: u64, url: &str) -> Result<u64, String> {
    let mut t = TABLE.lock();
    let entry = t.bound.entry(actor.to_string()).or_insert((id, 0));
    if entry.0 != id {
        return Err(format!(
            "actor {actor:?} is already open on another store in this process; close it first (kv={url:?})"
        ));
    }
    entry.1 += 1;
    Ok(id)
}

/// Releases one binding taken by [`bind_main`].
pub(super) fn unbind(actor: &str) {
    let mut t = TABLE.lock();
    if let Some(e) = t.bound.get_mut(actor) {
        e.1 = e.1.saturating_sub(1);
        if e.1 == 0 {
            t.bound.remove(actor);
        }
    }
}

/// Resolves a plain name of an open database's file: the main database itself or its
/// `-journal`. `Err` says why it names nothing this VFS can open.
pub(super) fn resolve_bound(name: &str) -> Result<ParsedName, String> {
    let (actor, file) = match name.strip_suffix("-journal") {
        Some(base) => (base, FileKind::Journal),
        None => (name, FileKind::Main),
    };
    let t = TABLE.lock();
    match t.bound.get(actor) {
        Some(&(store, _)) => Ok(ParsedName {
            store,
            actor: actor.to_string(),
            file,
        }),
        None => Err(format!(
            "{name:?} names no open kvsqlite database (only a database's own -journal is supported, not -wal or super-journals)"
        )),
    }
}
