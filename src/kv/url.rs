//! Store URLs: how a user names a store on the command line or in `KVSQLITE_KV`.
//!
//! Accepted forms: `memory:`, `redb:PATH`, `postgres://USER@HOST:PORT/DB`. `--rtt MS` wraps any
//! of them in the latency wrapper.

use std::sync::Arc;
use std::time::Duration;

use super::memory::MemoryStore;
use super::{KvError, KvLimits, SharedStore};

/// The store used when neither `--kv` nor `KVSQLITE_KV` names one.
pub const DEFAULT_STORE_URL: &str = "redb:./kvsqlite-data/kv.redb";

/// What every URL error lists.
pub const ACCEPTED_FORMS: &str = "accepted forms: memory:, redb:PATH, postgres://USER@HOST:PORT/DB";

/// Opens the store a URL names, with the given limits, wrapped in a latency wrapper when `rtt`
/// is given.
pub fn open_store(
    url: &str,
    limits: KvLimits,
    rtt: Option<Duration>,
) -> Result<SharedStore, KvError> {
    let _ = rtt;
    match url {
        "memory:" => Ok(Arc::new(MemoryStore::with_limits(limits))),
        _ => Err(KvError::InvalidUrl {
            url: url.to_string(),
            reason: format!("only memory: is built so far; {ACCEPTED_FORMS}"),
        }),
    }
}
