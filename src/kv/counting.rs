//! The `counting` wrapper: counts round trips, keys and bytes per operation kind.
//!
//! Why it exists: every performance claim of kvsqlite is a number of KV round trips, so the
//! count is taken at the one place no caller can bypass — the store handle itself. Counters are
//! atomics (cheap on the hot path, safe across threads); [`CountingStore::snapshot`] copies them
//! into a plain [`KvCounters`] value that callers diff with `-` (a per-query log takes a snapshot
//! before and after each statement).
//!
//! What counts as a round trip: every call forwarded to the inner store, except calls the inner
//! store rejected while validating them ([`KvError::is_rejected_before_send`]: limits, empty
//! keys, bad actor ids), which never left the process. Failed round trips (a conflict, a
//! transport error, an injected fault) are counted as calls and also as `errors`.

use std::fmt;
use std::ops::{Add, Sub};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{
    KvError, KvLimits, KvStore, ListPage, ListRequest, ReadOp, ReadResult, SharedStore, Value,
    WriteBatch,
};

/// The kinds of KV operation, one per trait method that reaches the store (`put`, `put_if` and
/// `delete` are all `Write`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// [`KvStore::get`].
    Get,
    /// [`KvStore::list`].
    List,
    /// [`KvStore::write`] (and `put`, `put_if`, `delete`).
    Write,
    /// [`KvStore::delete_range`].
    DeleteRange,
    /// [`KvStore::batch_read`].
    BatchRead,
}

impl OpKind {
    /// Every kind, in a fixed order.
    pub const ALL: [OpKind; 5] = [
        OpKind::Get,
        OpKind::List,
        OpKind::Write,
        OpKind::DeleteRange,
        OpKind::BatchRead,
    ];

    /// A short lowercase name (`get`, `list`, `write`, `delete_range`, `batch_read`).
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Get => "get",
            OpKind::List => "list",
            OpKind::Write => "write",
            OpKind::DeleteRange => "delete_range",
            OpKind::BatchRead => "batch_read",
        }
    }

    fn index(self) -> usize {
        match self {
            OpKind::Get => 0,
            OpKind::List => 1,
            OpKind::Write => 2,
            OpKind::DeleteRange => 3,
            OpKind::BatchRead => 4,
        }
    }
}

/// Counts for one operation kind (or a total). Plain data: copy it, subtract it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCounts {
    /// Round trips (calls forwarded to the store, failed ones included).
    pub calls: u64,
    /// Calls among `calls` that returned an error.
    pub errors: u64,
    /// Keys read: keys asked by gets (found or not) plus entries returned by lists.
    pub keys_read: u64,
    /// Keys written: puts plus deletes of successful writes (a `delete_range` counts none: the
    /// store does not report how many keys it removed).
    pub keys_written: u64,
    /// Bytes received from the store: keys and values of list entries, values of found gets.
    pub bytes_in: u64,
    /// Bytes sent to the store: keys asked, range bounds, keys and values written, and
    /// precondition keys and values.
    pub bytes_out: u64,
}

impl Add for OpCounts {
    type Output = OpCounts;
    fn add(self, o: OpCounts) -> OpCounts {
        OpCounts {
            calls: self.calls + o.calls,
            errors: self.errors + o.errors,
            keys_read: self.keys_read + o.keys_read,
            keys_written: self.keys_written + o.keys_written,
            bytes_in: self.bytes_in + o.bytes_in,
            bytes_out: self.bytes_out + o.bytes_out,
        }
    }
}

impl Sub for OpCounts {
    type Output = OpCounts;
    /// Saturating difference, so diffing snapshots taken in the wrong order cannot panic.
    fn sub(self, o: OpCounts) -> OpCounts {
        OpCounts {
            calls: self.calls.saturating_sub(o.calls),
            errors: self.errors.saturating_sub(o.errors),
            keys_read: self.keys_read.saturating_sub(o.keys_read),
            keys_written: self.keys_written.saturating_sub(o.keys_written),
            bytes_in: self.bytes_in.saturating_sub(o.bytes_in),
            bytes_out: self.bytes_out.saturating_sub(o.bytes_out),
        }
    }
}

/// A snapshot of every counter of a [`CountingStore`]: one [`OpCounts`] per [`OpKind`].
/// `later - earlier` (or [`KvCounters::delta`]) gives what happened in between.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvCounters {
    ops: [OpCounts; 5],
}

impl KvCounters {
    /// The counts of one operation kind.
    pub fn op(&self, kind: OpKind) -> OpCounts {
        self.ops[kind.index()]
    }

    /// All kinds added together.
    pub fn total(&self) -> OpCounts {
        self.ops.iter().fold(OpCounts::default(), |a, b| a + *b)
    }

    /// Round trips of every kind.
    pub fn round_trips(&self) -> u64 {
        self.total().calls
    }

    /// What happened since `earlier` (`self - earlier`).
    pub fn delta(&self, earlier: &KvCounters) -> KvCounters {
        *self - *earlier
    }
}

impl Sub for KvCounters {
    type Output = KvCounters;
    fn sub(self, o: KvCounters) -> KvCounters {
        let mut out = KvCounters::default();
        for i in 0..5 {
            out.ops[i] = self.ops[i] - o.ops[i];
        }
        out
    }
}

impl fmt::Display for KvCounters {
    /// One line: total round trips, then each kind that was used.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.total();
        write!(
            f,
            "round_trips={} keys_read={} keys_written={} bytes_in={} bytes_out={}",
            t.calls, t.keys_read, t.keys_written, t.bytes_in, t.bytes_out
        )?;
        for kind in OpKind::ALL {
            let c = self.op(kind);
            if c.calls > 0 {
                write!(f, " {}={}", kind.name(), c.calls)?;
            }
        }
        Ok(())
    }
}

#[derive(Default)]
struct AtomicCounts {
    calls: AtomicU64,
    errors: AtomicU64,
    keys_read: AtomicU64,
    keys_written: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl AtomicCounts {
    fn load(&self) -> OpCounts {
        OpCounts {
            calls: self.calls.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            keys_read: self.keys_read.load(Ordering::Relaxed),
            keys_written: self.keys_written.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
        }
    }

    fn add(&self, c: &OpCounts) {
        self.calls.fetch_add(c.calls, Ordering::Relaxed);
        self.errors.fetch_add(c.errors, Ordering::Relaxed);
        self.keys_read.fetch_add(c.keys_read, Ordering::Relaxed);
        self.keys_written
            .fetch_add(c.keys_written, Ordering::Relaxed);
        self.bytes_in.fetch_add(c.bytes_in, Ordering::Relaxed);
        self.bytes_out.fetch_add(c.bytes_out, Ordering::Relaxed);
    }
}

/// A store that forwards every call to an inner store and counts it.
///
/// Build it with [`CountingStore::wrap`], keep the `Arc<CountingStore>` to read the counters,
/// and hand [`CountingStore::shared`] (or a clone of the `Arc`) to whoever makes calls.
pub struct CountingStore {
    inner: SharedStore,
    counts: [AtomicCounts; 5],
}

impl CountingStore {
    /// Wraps `inner`; all counters start at zero.
    pub fn wrap(inner: SharedStore) -> Arc<CountingStore> {
        Arc::new(CountingStore {
            inner,
            counts: Default::default(),
        })
    }

    /// This store as a [`SharedStore`] (the same counters).
    pub fn shared(self: &Arc<Self>) -> SharedStore {
        Arc::clone(self) as SharedStore
    }

    /// The wrapped store.
    pub fn inner(&self) -> &SharedStore {
        &self.inner
    }

    /// A copy of every counter. Each counter is read atomically; counters of calls still in
    /// flight on other threads may or may not be included.
    pub fn snapshot(&self) -> KvCounters {
        let mut out = KvCounters::default();
        for (i, c) in self.counts.iter().enumerate() {
            out.ops[i] = c.load();
        }
        out
    }

    fn record<T>(
        &self,
        kind: OpKind,
        result: &Result<T, KvError>,
        bytes_out: u64,
        on_ok: impl FnOnce(&T, &mut OpCounts),
    ) {
        let mut c = OpCounts {
            calls: 1,
            bytes_out,
            ..OpCounts::default()
        };
        match result {
            Ok(v) => on_ok(v, &mut c),
            Err(e) if e.is_rejected_before_send() => return,
            Err(_) => c.errors = 1,
        }
        self.counts[kind.index()].add(&c);
    }
}

fn keys_bytes(keys: &[Vec<u8>]) -> u64 {
    keys.iter().map(|k| k.len() as u64).sum()
}

fn request_bytes(req: &ListRequest) -> u64 {
    let (start, end) = req.range.bounds();
    (start.len() + end.map_or(0, |e| e.len())) as u64
}

fn count_page(page: &ListPage, c: &mut OpCounts) {
    c.keys_read += page.entries.len() as u64;
    c.bytes_in += page
        .entries
        .iter()
        .map(|(k, v)| (k.len() + v.len()) as u64)
        .sum::<u64>();
}

fn count_values(values: &[Option<Value>], c: &mut OpCounts) {
    c.keys_read += values.len() as u64;
    c.bytes_in += values.iter().flatten().map(|v| v.len() as u64).sum::<u64>();
}

impl KvStore for CountingStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn limits(&self) -> &KvLimits {
        self.inner.limits()
    }

    fn get(&self, actor: &str, keys: &[Vec<u8>]) -> Result<Vec<Option<Value>>, KvError> {
        let r = self.inner.get(actor, keys);
        self.record(OpKind::Get, &r, keys_bytes(keys), |v, c| count_values(v, c));
        r
    }

    fn list(&self, actor: &str, req: &ListRequest) -> Result<ListPage, KvError> {
        let r = self.inner.list(actor, req);
        self.record(OpKind::List, &r, request_bytes(req), count_page);
        r
    }

    fn write(&self, actor: &str, batch: &WriteBatch) -> Result<(), KvError> {
        let r = self.inner.write(actor, batch);
        let out = batch
            .puts
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum::<u64>()
            + keys_bytes(&batch.deletes)
            + batch
                .preconditions
                .iter()
                .map(|p| (p.key.len() + p.expected.as_ref().map_or(0, |v| v.len())) as u64)
                .sum::<u64>();
        let written = (batch.puts.len() + batch.deletes.len()) as u64;
        self.record(OpKind::Write, &r, out, |_, c| c.keys_written = written);
        r
    }

    fn delete_range(&self, actor: &str, start: &[u8], end: Option<&[u8]>) -> Result<(), KvError> {
        let r = self.inner.delete_range(actor, start, end);
        let out = (start.len() + end.map_or(0, |e| e.len())) as u64;
        self.record(OpKind::DeleteRange, &r, out, |_, _| {});
        r
    }

    fn batch_read(&self, actor: &str, ops: &[ReadOp]) -> Result<Vec<ReadResult>, KvError> {
        let r = self.inner.batch_read(actor, ops);
        let out = ops
            .iter()
            .map(|op| match op {
                ReadOp::Get(keys) => keys_bytes(keys),
                ReadOp::List(req) => request_bytes(req),
            })
            .sum();
        self.record(OpKind::BatchRead, &r, out, |results, c| {
            for res in results {
                match res {
                    ReadResult::Get(v) => count_values(v, c),
                    ReadResult::List(page) => count_page(page, c),
                }
            }
        });
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::memory::MemoryStore;

    #[test]
    fn snapshots_diff_per_kind_and_never_underflow() {
        let c = CountingStore::wrap(Arc::new(MemoryStore::new()));
        let s = c.shared();
        let t0 = c.snapshot();
        s.put("a", vec![(b"k".to_vec(), b"vv".to_vec())]).unwrap();
        let t1 = c.snapshot();
        s.get("a", &[b"k".to_vec()]).unwrap();
        s.get("a", &[b"k".to_vec(), b"x".to_vec()]).unwrap();
        let t2 = c.snapshot();
        let d = t2 - t1;
        assert_eq!(
            d.op(OpKind::Get),
            OpCounts {
                calls: 2,
                errors: 0,
                keys_read: 3,
                keys_written: 0,
                bytes_in: 4,
                bytes_out: 3,
            }
        );
        assert_eq!(d.op(OpKind::Write), OpCounts::default());
        assert_eq!(t2.delta(&t0).round_trips(), 3);
        assert_eq!(
            (t0 - t2).round_trips(),
            0,
            "reversed diff saturates at zero"
        );
        assert_eq!(
            t2.to_string(),
            "round_trips=3 keys_read=3 keys_written=1 bytes_in=4 bytes_out=6 get=2 write=1"
        );
    }
}
