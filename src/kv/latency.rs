//! The `latency` wrapper: simulates a remote store by sleeping one round-trip time per call.
//!
//! Why it exists: the embedded and in-memory stores answer in microseconds, which hides every
//! extra round trip. Wrapping them in a fixed RTT (the `--rtt MS` option) makes a remote KV's cost
//! visible end to end, faithfully: one sleep per trait call, because each call is one round trip.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{
    KvError, KvLimits, KvStore, ListPage, ListRequest, ReadOp, ReadResult, SharedStore, Value,
    WriteBatch,
};

/// A store that sleeps `rtt` once before forwarding each call to the inner store.
///
/// Every call sleeps, including one the inner store then rejects for its size: a real client
/// would validate before sending, but the difference only matters for invalid calls.
pub struct LatencyStore {
    inner: SharedStore,
    /// The round-trip time in microseconds (changed by [`LatencyStore::set_rtt`]).
    rtt_us: AtomicU64,
}

impl LatencyStore {
    /// Wraps `inner` with a round-trip time of `rtt`.
    pub fn new(inner: SharedStore, rtt: Duration) -> Self {
        let store = LatencyStore {
            inner,
            rtt_us: AtomicU64::new(0),
        };
        store.set_rtt(rtt);
        store
    }

    /// The simulated round-trip time.
    pub fn rtt(&self) -> Duration {
        Duration::from_micros(self.rtt_us.load(Ordering::Relaxed))
    }

    /// Changes the round-trip time of every later call (microsecond precision; a call already
    /// sleeping keeps its time). Lets a test make a phase slow, e.g. only what follows a start.
    pub fn set_rtt(&self, rtt: Duration) {
        let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
        self.rtt_us.store(us, Ordering::Relaxed);
    }

    /// The wrapped store.
    pub fn inner(&self) -> &SharedStore {
        &self.inner
    }

    fn wait(&self) {
        let rtt = self.rtt();
        if !rtt.is_zero() {
            std::thread::sleep(rtt);
        }
    }
}

impl KvStore for LatencyStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn limits(&self) -> &KvLimits {
        self.inner.limits()
    }

    fn get(&self, actor: &str, keys: &[Vec<u8>]) -> Result<Vec<Option<Value>>, KvError> {
        self.wait();
        self.inner.get(actor, keys)
    }

    fn list(&self, actor: &str, req: &ListRequest) -> Result<ListPage, KvError> {
        self.wait();
        self.inner.list(actor, req)
    }

    fn write(&self, actor: &str, batch: &WriteBatch) -> Result<(), KvError> {
        self.wait();
        self.inner.write(actor, batch)
    }

    fn delete_range(&self, actor: &str, start: &[u8], end: Option<&[u8]>) -> Result<(), KvError> {
        self.wait();
        self.inner.delete_range(actor, start, end)
    }

    fn batch_read(&self, actor: &str, ops: &[ReadOp]) -> Result<Vec<ReadResult>, KvError> {
        self.wait();
        self.inner.batch_read(actor, ops)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::kv::counting::CountingStore;
    use crate::kv::memory::MemoryStore;

    #[test]
    fn forwards_each_call_once_and_reports_its_rtt() {
        let counting = CountingStore::wrap(Arc::new(MemoryStore::new()));
        let s = LatencyStore::new(counting.shared(), Duration::ZERO);
        assert_eq!(s.rtt(), Duration::ZERO);
        assert_eq!(s.backend(), "memory");
        s.put("a", vec![(b"k".to_vec(), b"v".to_vec())]).unwrap();
        s.get("a", &[b"k".to_vec()]).unwrap();
        s.list("a", &ListRequest::prefix(Vec::new())).unwrap();
        s.batch_read("a", &[ReadOp::Get(vec![b"k".to_vec()])])
            .unwrap();
        s.delete_range("a", b"", None).unwrap();
        assert_eq!(counting.snapshot().round_trips(), 5);
        assert_eq!(s.get("a", &[b"k".to_vec()]).unwrap(), vec![None]);
    }
}
