//! The lease gate: a store wrapper that refuses every write of the host's actors while the
//! host holds no valid lease, before anything is sent.
//!
//! Why it exists: fencing refuses a stale instance's write once another instance has written,
//! but a host stopped (SIGSTOP, a long pause) past its lease must not write *at all* when it
//! comes back: its actors may already be served elsewhere, or be about to be. The gate checks a
//! monotonic deadline (the send time of the last successful heartbeat plus the TTL) on every
//! write and delete: no round trip, no lock. Reads pass (a wake reads, its first write is
//! gated), so a refused write costs nothing and lands nothing; the actor layer then sees a
//! store failure and the host answers 503 with a retry hint.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::kv::{Key, KvError, KvLimits, KvStore, ListPage, ListRequest, ReadOp, ReadResult};
use crate::kv::{SharedStore, Value, WriteBatch};

/// The lease: writes are allowed until a deadline on a monotonic clock.
#[derive(Debug)]
pub struct Lease {
    origin: Instant,
    /// Microseconds after `origin` until which writes are allowed; 0: never.
    until_us: AtomicU64,
}

impl Default for Lease {
    fn default() -> Self {
        Lease {
            origin: Instant::now(),
            until_us: AtomicU64::new(0),
        }
    }
}

impl Lease {
    fn micros(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.origin).as_micros() as u64
    }

    /// Extends the lease to `until` (a later heartbeat's deadline never shortens it, except
    /// through [`Lease::revoke`]).
    pub fn extend(&self, until: Instant) {
        self.until_us
            .fetch_max(self.micros(until), Ordering::AcqRel);
    }

    /// Ends the lease now: every later write is refused until the next [`Lease::extend`].
    pub fn revoke(&self) {
        self.until_us.store(0, Ordering::Release);
    }

    /// True while the lease holds at `now`.
    pub fn valid_at(&self, now: Instant) -> bool {
        self.micros(now) < self.until_us.load(Ordering::Acquire)
    }

    /// True while the lease holds.
    pub fn valid(&self) -> bool {
        self.valid_at(Instant::now())
    }
}

/// A store whose writes need a valid [`Lease`].
pub struct GatedStore {
    inner: SharedStore,
    lease: Arc<Lease>,
}

impl GatedStore {
    /// Wraps `inner`: its writes are refused while `lease` is not valid.
    pub fn wrap(inner: SharedStore, lease: Arc<Lease>) -> SharedStore {
        Arc::new(GatedStore { inner, lease })
    }

    fn check(&self) -> Result<(), KvError> {
        if self.lease.valid() {
            Ok(())
        } else {
            Err(KvError::Unavailable {
                backend: self.inner.backend(),
                message: "this host holds no cluster lease (expelled, stopped past its TTL, or \
                          not joined yet): the write was not sent"
                    .into(),
            })
        }
    }
}

impl KvStore for GatedStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn limits(&self) -> &KvLimits {
        self.inner.limits()
    }

    fn get(&self, actor: &str, keys: &[Key]) -> Result<Vec<Option<Value>>, KvError> {
        self.inner.get(actor, keys)
    }

    fn list(&self, actor: &str, req: &ListRequest) -> Result<ListPage, KvError> {
        self.inner.list(actor, req)
    }

    fn write(&self, actor: &str, batch: &WriteBatch) -> Result<(), KvError> {
        self.check()?;
        self.inner.write(actor, batch)
    }

    fn delete_range(&self, actor: &str, start: &[u8], end: Option<&[u8]>) -> Result<(), KvError> {
        self.check()?;
        self.inner.delete_range(actor, start, end)
    }

    fn batch_read(&self, actor: &str, ops: &[ReadOp]) -> Result<Vec<ReadResult>, KvError> {
        self.inner.batch_read(actor, ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::memory::MemoryStore;
    use std::time::Duration;

    #[test]
    fn writes_pass_only_while_the_lease_holds_and_reads_always() {
        let lease = Arc::new(Lease::default());
        let inner: SharedStore = Arc::new(MemoryStore::new());
        let gated = GatedStore::wrap(inner.clone(), lease.clone());
        let e = gated.put("a", vec![(b"k".to_vec(), b"v".to_vec())]);
        assert!(matches!(e, Err(KvError::Unavailable { .. })), "{e:?}");
        assert_eq!(inner.get("a", &[b"k".to_vec()]).unwrap(), vec![None]);
        lease.extend(Instant::now() + Duration::from_secs(60));
        gated
            .put("a", vec![(b"k".to_vec(), b"v".to_vec())])
            .unwrap();
        assert_eq!(
            gated.get("a", &[b"k".to_vec()]).unwrap(),
            vec![Some(b"v".to_vec())]
        );
        lease.revoke();
        assert!(gated.delete("a", vec![b"k".to_vec()]).is_err());
        assert!(gated.delete_range("a", b"", None).is_err());
        assert_eq!(
            inner.get("a", &[b"k".to_vec()]).unwrap(),
            vec![Some(b"v".to_vec())],
            "nothing was deleted"
        );
        assert!(!lease.valid_at(Instant::now()));
    }
}
