//! The key-value layer: one trait, several backends, and wrappers that stack on any of them.
//!
//! Why it exists: every claim kvsqlite makes ("a commit costs one round trip") is a statement
//! about calls to this layer. The contract is therefore strict:
//!
//! - **Each trait call is exactly one round trip** to the store. A backend never splits a call
//!   into several requests, and callers that want several things at once use the batched forms
//!   ([`KvStore::get`] with many keys, [`KvStore::batch_read`] for a mix of gets and lists).
//! - **Every write is all-or-nothing**: [`KvStore::write`] applies all of its puts and deletes or
//!   none of them, after checking its [`Precondition`]s atomically in the same round trip.
//! - **Limits are checked before anything is sent** ([`KvLimits::check_write`]); a violation is a
//!   distinct [`KvError`] and nothing is written.
//!
//! The store is shared by many actors: every call names the actor whose namespace it touches,
//! and namespaces never see each other's keys. [`ActorKv`] binds a store to one actor id for
//! callers (the VFS) that only ever touch one namespace.
//!
//! Keys and values are bytes; keys order by plain byte-lexicographic comparison.

pub mod counting;
pub mod faults;
pub mod latency;
pub mod memory;
pub mod postgres;
pub mod redb_store;
pub mod redis;
pub mod url;

use std::fmt;
use std::sync::Arc;

/// A key inside one actor's namespace. Never empty.
pub type Key = Vec<u8>;
/// A stored value. May be empty.
pub type Value = Vec<u8>;

/// Size and count limits enforced on every call before anything is sent to the store.
///
/// The defaults are Rivet's engine limits. A store is built with one `KvLimits` and reports it
/// through [`KvStore::limits`], so callers (the VFS) can split their writes to fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLimits {
    /// Largest key, in bytes (default 2048).
    pub max_key_bytes: usize,
    /// Largest value, in bytes (default 128 KiB).
    pub max_value_bytes: usize,
    /// Most entries (puts plus deletes) in one write (default 128).
    pub max_write_entries: usize,
    /// Most key and value bytes in one write, puts and deletes together (default 976 KiB).
    pub max_write_bytes: usize,
    /// Entries returned by a list that names no limit (default 16,384); also the largest limit
    /// a list may ask for.
    pub default_list_limit: usize,
    /// Most keys in one `get` or in all the gets of one `batch_read` (default 16,384).
    pub max_get_keys: usize,
}

impl Default for KvLimits {
    fn default() -> Self {
        KvLimits {
            max_key_bytes: 2048,
            max_value_bytes: 128 * 1024,
            max_write_entries: 128,
            max_write_bytes: 976 * 1024,
            default_list_limit: 16_384,
            max_get_keys: 16_384,
        }
    }
}

impl KvLimits {
    /// Checks one key: not empty, not longer than `max_key_bytes`.
    pub fn check_key(&self, key: &[u8]) -> Result<(), KvError> {
        if key.is_empty() {
            return Err(KvError::EmptyKey);
        }
        if key.len() > self.max_key_bytes {
            return Err(KvError::KeyTooLarge {
                len: key.len(),
                max: self.max_key_bytes,
            });
        }
        Ok(())
    }

    /// Checks the keys of a `get` (each key, and their count).
    pub fn check_get(&self, keys: &[Key]) -> Result<(), KvError> {
        if keys.len() > self.max_get_keys {
            return Err(KvError::TooManyKeys {
                count: keys.len(),
                max: self.max_get_keys,
            });
        }
        keys.iter().try_for_each(|k| self.check_key(k))
    }

    /// Checks a whole write batch against every limit. A batch that passes may still fail in the
    /// store (a precondition, a transport error), but never for its size.
    pub fn check_write(&self, batch: &WriteBatch) -> Result<(), KvError> {
        let count = batch.puts.len() + batch.deletes.len();
        if count > self.max_write_entries {
            return Err(KvError::TooManyEntries {
                count,
                max: self.max_write_entries,
            });
        }
        let mut bytes = 0usize;
        for (k, v) in &batch.puts {
            self.check_key(k)?;
            if v.len() > self.max_value_bytes {
                return Err(KvError::ValueTooLarge {
                    key: k.clone(),
                    len: v.len(),
                    max: self.max_value_bytes,
                });
            }
            bytes += k.len() + v.len();
        }
        for k in &batch.deletes {
            self.check_key(k)?;
            bytes += k.len();
        }
        if bytes > self.max_write_bytes {
            return Err(KvError::PayloadTooLarge {
                bytes,
                max: self.max_write_bytes,
            });
        }
        for p in &batch.preconditions {
            self.check_key(&p.key)?;
        }
        Ok(())
    }

    /// Resolves a list request's limit: `None` means the default; a limit of zero or one above
    /// the default is an error.
    pub fn list_limit(&self, requested: Option<usize>) -> Result<usize, KvError> {
        match requested {
            None => Ok(self.default_list_limit),
            Some(0) => Err(KvError::InvalidListLimit {
                limit: 0,
                max: self.default_list_limit,
            }),
            Some(n) if n > self.default_list_limit => Err(KvError::InvalidListLimit {
                limit: n,
                max: self.default_list_limit,
            }),
            Some(n) => Ok(n),
        }
    }
}

/// A condition checked atomically with a write: `key` must currently hold `expected`
/// (`Some(value)`), or be absent (`None`). If any precondition of a write is unmet, nothing is
/// written and the write fails with [`KvError::Conflict`] naming the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Precondition {
    /// The key whose current value is checked.
    pub key: Key,
    /// What the key must hold: `Some(value)` for exactly that value, `None` for absent.
    pub expected: Option<Value>,
}

impl Precondition {
    /// `key` must hold exactly `value`.
    pub fn equals(key: impl Into<Key>, value: impl Into<Value>) -> Self {
        Precondition {
            key: key.into(),
            expected: Some(value.into()),
        }
    }

    /// `key` must not exist.
    pub fn absent(key: impl Into<Key>) -> Self {
        Precondition {
            key: key.into(),
            expected: None,
        }
    }
}

/// One atomic write: puts and deletes applied all together or not at all, guarded by
/// preconditions checked in the same round trip. A key may not appear twice among puts and
/// deletes (the store rejects such a batch with [`KvError::DuplicateKey`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    /// Entries to store, replacing any previous value.
    pub puts: Vec<(Key, Value)>,
    /// Keys to remove; removing an absent key is not an error.
    pub deletes: Vec<Key>,
    /// Conditions that must all hold for the write to happen.
    pub preconditions: Vec<Precondition>,
}

impl WriteBatch {
    /// A batch of puts only.
    pub fn puts(puts: Vec<(Key, Value)>) -> Self {
        WriteBatch {
            puts,
            ..Default::default()
        }
    }

    /// True when the batch neither writes nor deletes anything.
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.deletes.is_empty()
    }

    /// The checks every backend makes before it sends a write: the actor id, every limit, and
    /// distinct keys. `Ok(false)` when there is nothing to send (no puts, no deletes, no
    /// preconditions).
    pub fn check_before_send(&self, actor: &str, limits: &KvLimits) -> Result<bool, KvError> {
        check_actor_id(actor)?;
        limits.check_write(self)?;
        self.check_distinct()?;
        Ok(!(self.is_empty() && self.preconditions.is_empty()))
    }

    /// The [`KvError::Conflict`] naming precondition `index` (0-based), as a store reported it
    /// unmet; `None` when the batch has no such precondition.
    pub fn conflict_at(&self, index: usize) -> Option<KvError> {
        self.preconditions
            .get(index)
            .map(|p| KvError::Conflict { key: p.key.clone() })
    }

    /// Rejects a batch naming one key twice among its puts and deletes.
    pub fn check_distinct(&self) -> Result<(), KvError> {
        let mut keys: Vec<&[u8]> = self
            .puts
            .iter()
            .map(|(k, _)| k.as_slice())
            .chain(self.deletes.iter().map(|k| k.as_slice()))
            .collect();
        keys.sort_unstable();
        for w in keys.windows(2) {
            if w[0] == w[1] {
                return Err(KvError::DuplicateKey { key: w[0].to_vec() });
            }
        }
        Ok(())
    }
}

/// Which keys a list visits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRange {
    /// Every key that starts with these bytes (the empty prefix is every key).
    Prefix(Key),
    /// Every key `k` with `start <= k < end`; `end: None` means no upper bound.
    Range {
        /// Inclusive lower bound.
        start: Key,
        /// Exclusive upper bound, or none.
        end: Option<Key>,
    },
}

impl KeyRange {
    /// The same keys as `[start, end)`: a prefix becomes `[prefix, successor(prefix))`.
    pub fn bounds(&self) -> (Key, Option<Key>) {
        match self {
            KeyRange::Prefix(p) => (p.clone(), prefix_successor(p)),
            KeyRange::Range { start, end } => (start.clone(), end.clone()),
        }
    }

    /// True when `key` lies in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Prefix(p) => key.starts_with(p),
            KeyRange::Range { start, end } => {
                key >= start.as_slice() && end.as_ref().is_none_or(|e| key < e.as_slice())
            }
        }
    }
}

/// True when `[start, end)` holds no key at all (`end <= start`). Backends answer such a range
/// with nothing instead of handing an inverted range to their index.
pub fn range_is_empty(start: &[u8], end: Option<&[u8]>) -> bool {
    end.is_some_and(|e| e <= start)
}

/// The smallest key greater than every key starting with `prefix`, or `None` when there is none
/// (the prefix is empty or all `0xFF`).
pub fn prefix_successor(prefix: &[u8]) -> Option<Key> {
    let mut out = prefix.to_vec();
    while let Some(last) = out.pop() {
        if last < 0xFF {
            out.push(last + 1);
            return Some(out);
        }
    }
    None
}

/// A list request: keys of `range` in ascending byte order, at most `limit` entries and, when
/// `max_bytes` is set, stopping once the returned keys and values reach that many bytes (at
/// least one entry is always returned if any exists).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListRequest {
    /// The keys to visit.
    pub range: KeyRange,
    /// Most entries to return; `None` means [`KvLimits::default_list_limit`].
    pub limit: Option<usize>,
    /// Byte budget for keys plus values; `None` means no budget.
    pub max_bytes: Option<usize>,
}

impl ListRequest {
    /// Every key with this prefix, default limit, no byte budget.
    pub fn prefix(prefix: impl Into<Key>) -> Self {
        ListRequest {
            range: KeyRange::Prefix(prefix.into()),
            limit: None,
            max_bytes: None,
        }
    }

    /// Every key in `[start, end)`, default limit, no byte budget.
    pub fn range(start: impl Into<Key>, end: Option<Key>) -> Self {
        ListRequest {
            range: KeyRange::Range {
                start: start.into(),
                end,
            },
            limit: None,
            max_bytes: None,
        }
    }

    /// The same request with a limit.
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// The same request with a byte budget.
    pub fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = Some(max_bytes);
        self
    }
}

/// One page of a listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListPage {
    /// Entries in ascending key order.
    pub entries: Vec<(Key, Value)>,
    /// `Some(key)` when the listing stopped early (limit or byte budget) and more keys may
    /// follow: continue with a range starting at this key. `None` when the range was read
    /// completely.
    pub next_start: Option<Key>,
}

impl ListPage {
    /// True when the whole requested range was read.
    pub fn is_complete(&self) -> bool {
        self.next_start.is_none()
    }
}

/// The continuation key after `last`: the smallest key greater than it.
pub fn key_after(last: &[u8]) -> Key {
    let mut k = last.to_vec();
    k.push(0);
    k
}

/// One read of a [`KvStore::batch_read`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadOp {
    /// Get these keys.
    Get(Vec<Key>),
    /// List a range.
    List(ListRequest),
}

/// The answer to one [`ReadOp`], in the same position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadResult {
    /// Values in the order of the keys asked, `None` for absent.
    Get(Vec<Option<Value>>),
    /// The listing.
    List(ListPage),
}

/// Errors of the KV layer. Each limit violation has its own variant; every one of them is
/// raised before anything is sent, so nothing was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvError {
    /// A key was empty.
    EmptyKey,
    /// A key was longer than the limit.
    KeyTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value was longer than the limit.
    ValueTooLarge {
        /// Its key.
        key: Key,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A write had more entries than the limit.
    TooManyEntries {
        /// Entries in the write.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A get (or the gets of a batch read) named more keys than the limit.
    TooManyKeys {
        /// Keys asked.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A write carried more key and value bytes than the limit.
    PayloadTooLarge {
        /// Bytes in the write.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A list asked for zero entries or more than the limit allows.
    InvalidListLimit {
        /// The limit asked.
        limit: usize,
        /// The largest allowed.
        max: usize,
    },
    /// A write named the same key twice.
    DuplicateKey {
        /// The key.
        key: Key,
    },
    /// An actor id was empty or otherwise unusable.
    InvalidActorId {
        /// Why.
        reason: String,
    },
    /// A precondition was unmet; nothing was written.
    Conflict {
        /// The first key whose precondition failed.
        key: Key,
    },
    /// The store could not be reached or failed to answer; the call may or may not have been
    /// applied only where the backend says so (a write is atomic either way).
    Unavailable {
        /// Which backend.
        backend: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The store's contents or answer made no sense (a corrupted file, a protocol surprise).
    Backend {
        /// Which backend.
        backend: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The store is held by someone else (a redb file locked by another process).
    Locked {
        /// What is locked, e.g. the file path.
        what: String,
    },
    /// A store URL could not be parsed.
    InvalidUrl {
        /// The URL given.
        url: String,
        /// Why, including the accepted forms.
        reason: String,
    },
    /// A failure injected by the `faults` wrapper.
    InjectedFault {
        /// The call number (1-based) that failed.
        call: u64,
    },
    /// The `faults` wrapper simulated a crash: this call and every later one fail.
    Crashed,
}

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvError::EmptyKey => write!(f, "empty key: keys must be at least one byte"),
            KvError::KeyTooLarge { len, max } => {
                write!(f, "key of {len} bytes exceeds the limit of {max} bytes")
            }
            KvError::ValueTooLarge { key, len, max } => write!(
                f,
                "value of {len} bytes for key {} exceeds the limit of {max} bytes",
                display_key(key)
            ),
            KvError::TooManyEntries { count, max } => {
                write!(f, "write of {count} entries exceeds the limit of {max}")
            }
            KvError::TooManyKeys { count, max } => {
                write!(f, "get of {count} keys exceeds the limit of {max}")
            }
            KvError::PayloadTooLarge { bytes, max } => {
                write!(f, "write of {bytes} bytes exceeds the limit of {max} bytes")
            }
            KvError::InvalidListLimit { limit, max } => {
                write!(f, "list limit {limit} is invalid: it must be 1..={max}")
            }
            KvError::DuplicateKey { key } => {
                write!(f, "key {} appears twice in one write", display_key(key))
            }
            KvError::InvalidActorId { reason } => write!(f, "invalid actor id: {reason}"),
            KvError::Conflict { key } => write!(
                f,
                "precondition failed on key {}: nothing was written",
                display_key(key)
            ),
            KvError::Unavailable { backend, message } => {
                write!(f, "{backend} store unavailable: {message}")
            }
            KvError::Backend { backend, message } => write!(f, "{backend} store error: {message}"),
            KvError::Locked { what } => write!(f, "store is locked by another process: {what}"),
            KvError::InvalidUrl { url, reason } => write!(f, "invalid store URL {url:?}: {reason}"),
            KvError::InjectedFault { call } => write!(f, "injected fault at KV call {call}"),
            KvError::Crashed => write!(f, "KV store crashed (injected)"),
        }
    }
}

impl std::error::Error for KvError {}

impl KvError {
    /// True for the errors a store raises while validating a call, before anything is sent
    /// (limits, empty keys, bad actor ids, duplicate keys): such a call is not a round trip and
    /// certainly wrote nothing.
    pub fn is_rejected_before_send(&self) -> bool {
        matches!(
            self,
            KvError::EmptyKey
                | KvError::KeyTooLarge { .. }
                | KvError::ValueTooLarge { .. }
                | KvError::TooManyEntries { .. }
                | KvError::TooManyKeys { .. }
                | KvError::PayloadTooLarge { .. }
                | KvError::InvalidListLimit { .. }
                | KvError::DuplicateKey { .. }
                | KvError::InvalidActorId { .. }
        )
    }
}

/// Renders a key for messages: UTF-8 text when it is printable, hex otherwise.
pub fn display_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => format!("{s:?}"),
        _ => to_hex(key),
    }
}

/// `0x` followed by two lowercase hex digits per byte (`0x` alone for no bytes).
pub fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(2 + bytes.len() * 2);
    out.push_str("0x");
    for b in bytes {
        // Writing into a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Checks an actor id: non-empty, at most 512 bytes, no NUL.
pub fn check_actor_id(actor: &str) -> Result<(), KvError> {
    if actor.is_empty() {
        return Err(KvError::InvalidActorId {
            reason: "it is empty".into(),
        });
    }
    if actor.len() > 512 {
        return Err(KvError::InvalidActorId {
            reason: format!("it is {} bytes long; the limit is 512", actor.len()),
        });
    }
    if actor.contains('\0') {
        return Err(KvError::InvalidActorId {
            reason: "it contains a NUL character".into(),
        });
    }
    Ok(())
}

/// A key-value store holding many actors' namespaces. **Each call is exactly one round trip.**
///
/// Implementations must be thread-safe; many actors share one store. Every method validates its
/// input ([`check_actor_id`], [`KvLimits`]) before sending anything.
pub trait KvStore: Send + Sync {
    /// A short name for messages and metrics: `memory`, `redb`, `postgres`, `redis`, or a
    /// wrapper's.
    fn backend(&self) -> &'static str;

    /// The limits this store enforces.
    fn limits(&self) -> &KvLimits;

    /// Values of `keys` in the same order, `None` for absent keys.
    fn get(&self, actor: &str, keys: &[Key]) -> Result<Vec<Option<Value>>, KvError>;

    /// One page of the keys in `req.range`, ascending.
    fn list(&self, actor: &str, req: &ListRequest) -> Result<ListPage, KvError>;

    /// Applies `batch` atomically: all puts and deletes or none, after checking every
    /// precondition in the same round trip (unmet → [`KvError::Conflict`], nothing written).
    /// Durable on return for persistent backends.
    fn write(&self, actor: &str, batch: &WriteBatch) -> Result<(), KvError>;

    /// Deletes every key in `[start, end)` (`end: None`: no upper bound), atomically.
    fn delete_range(&self, actor: &str, start: &[u8], end: Option<&[u8]>) -> Result<(), KvError>;

    /// Answers several gets and lists in one round trip, results in the order asked. All reads
    /// see one consistent state of the store.
    fn batch_read(&self, actor: &str, ops: &[ReadOp]) -> Result<Vec<ReadResult>, KvError>;

    /// Atomically stores `entries` (a [`WriteBatch`] of puts only).
    fn put(&self, actor: &str, entries: Vec<(Key, Value)>) -> Result<(), KvError> {
        self.write(actor, &WriteBatch::puts(entries))
    }

    /// Atomically stores `entries` if every precondition holds.
    fn put_if(
        &self,
        actor: &str,
        entries: Vec<(Key, Value)>,
        preconditions: Vec<Precondition>,
    ) -> Result<(), KvError> {
        self.write(
            actor,
            &WriteBatch {
                puts: entries,
                deletes: Vec::new(),
                preconditions,
            },
        )
    }

    /// Atomically deletes `keys`; absent keys are not an error.
    fn delete(&self, actor: &str, keys: Vec<Key>) -> Result<(), KvError> {
        self.write(
            actor,
            &WriteBatch {
                deletes: keys,
                ..Default::default()
            },
        )
    }
}

/// A shared handle to any store.
pub type SharedStore = Arc<dyn KvStore>;

/// Validates a batch read against the limits (the total keys of its gets, each key, each list
/// limit). Backends call it before sending.
pub fn check_batch_read(limits: &KvLimits, ops: &[ReadOp]) -> Result<(), KvError> {
    let mut total = 0usize;
    for op in ops {
        match op {
            ReadOp::Get(keys) => {
                total += keys.len();
                keys.iter().try_for_each(|k| limits.check_key(k))?;
            }
            ReadOp::List(req) => {
                limits.list_limit(req.limit)?;
            }
        }
    }
    if total > limits.max_get_keys {
        return Err(KvError::TooManyKeys {
            count: total,
            max: limits.max_get_keys,
        });
    }
    Ok(())
}

/// One actor's namespace in a shared store: the same calls without the actor argument.
/// Cloning is cheap.
#[derive(Clone)]
pub struct ActorKv {
    store: SharedStore,
    actor: Arc<str>,
}

impl ActorKv {
    /// Binds `store` to `actor`, checking the id.
    pub fn new(store: SharedStore, actor: &str) -> Result<Self, KvError> {
        check_actor_id(actor)?;
        Ok(ActorKv {
            store,
            actor: Arc::from(actor),
        })
    }

    /// The actor id.
    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// The underlying store.
    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// See [`KvStore::limits`].
    pub fn limits(&self) -> &KvLimits {
        self.store.limits()
    }

    /// See [`KvStore::get`].
    pub fn get(&self, keys: &[Key]) -> Result<Vec<Option<Value>>, KvError> {
        self.store.get(&self.actor, keys)
    }

    /// See [`KvStore::list`].
    pub fn list(&self, req: &ListRequest) -> Result<ListPage, KvError> {
        self.store.list(&self.actor, req)
    }

    /// See [`KvStore::write`].
    pub fn write(&self, batch: &WriteBatch) -> Result<(), KvError> {
        self.store.write(&self.actor, batch)
    }

    /// See [`KvStore::put`].
    pub fn put(&self, entries: Vec<(Key, Value)>) -> Result<(), KvError> {
        self.store.put(&self.actor, entries)
    }

    /// See [`KvStore::delete`].
    pub fn delete(&self, keys: Vec<Key>) -> Result<(), KvError> {
        self.store.delete(&self.actor, keys)
    }

    /// See [`KvStore::delete_range`].
    pub fn delete_range(&self, start: &[u8], end: Option<&[u8]>) -> Result<(), KvError> {
        self.store.delete_range(&self.actor, start, end)
    }

    /// See [`KvStore::batch_read`].
    pub fn batch_read(&self, ops: &[ReadOp]) -> Result<Vec<ReadResult>, KvError> {
        self.store.batch_read(&self.actor, ops)
    }
}

impl fmt::Debug for ActorKv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActorKv")
            .field("backend", &self.store.backend())
            .field("actor", &self.actor)
            .finish()
    }
}
