//! The `faults` wrapper: fails chosen calls, or "crashes" the process at a chosen call.
//!
//! Why it exists: kvsqlite promises that no failure loses or corrupts committed data. That
//! promise is tested by making the store fail at every possible point of a workload. Calls are
//! numbered from 1 over every call the wrapper sees, and [`FaultStore::calls`] reports how many a
//! workload made, so a test can run it once to count, then once per crash point `1..=total`.
//!
//! Three kinds of fault, combinable in one [`FaultPlan`]:
//! - **fail call N** → that call returns [`KvError::InjectedFault`] and is *not* applied (the
//!   request was lost before reaching the store); later calls proceed normally.
//! - **fail at random** with probability `p` from a seed → the same, reproducibly.
//! - **lose the reply of call N** → the call reaches the store and takes effect, but the caller
//!   gets [`KvError::InjectedFault`] (a timeout after the store committed: the ambiguous case).
//! - **crash at call N** → if call N is a write (`write` or `delete_range`), it is applied to the
//!   inner store wholly or not at all (by an explicit [`CrashWrite`] choice or a seeded coin), and
//!   the caller sees [`KvError::Crashed`] either way, as when a process dies with a request in
//!   flight. Every later call returns `Crashed`. [`FaultStore::crash_report`] tells what happened,
//!   and [`FaultStore::inner`] lets the test read what survived.

use std::sync::Arc;

use parking_lot::Mutex;

use super::counting::OpKind;
use super::{
    KvError, KvLimits, KvStore, ListPage, ListRequest, ReadOp, ReadResult, SharedStore, Value,
    WriteBatch,
};
use crate::rng::Rng;

/// What happens to the write in flight at a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashWrite {
    /// The write reaches the store and is applied (if its preconditions hold).
    Apply,
    /// The write never reaches the store.
    Discard,
    /// Apply or discard, chosen by a coin seeded with this value.
    Seeded(u64),
}

/// Random failures: each call fails with `probability`, drawn from a generator seeded with `seed`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RandomFaults {
    /// The generator's seed.
    pub seed: u64,
    /// Chance that a call fails, `0.0..=1.0`.
    pub probability: f64,
}

/// A crash point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrashPoint {
    /// The 1-based call at which the process "dies".
    pub call: u64,
    /// What happens to that call if it is a write.
    pub write: CrashWrite,
}

/// Which calls fail and how. The default plan injects nothing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultPlan {
    /// 1-based call numbers that fail with [`KvError::InjectedFault`].
    pub fail_calls: Vec<u64>,
    /// 1-based call numbers that are applied but whose caller gets
    /// [`KvError::InjectedFault`] (the reply was lost).
    pub lose_reply_calls: Vec<u64>,
    /// Random failures, if any.
    pub random: Option<RandomFaults>,
    /// The crash point, if any.
    pub crash: Option<CrashPoint>,
}

impl FaultPlan {
    /// A plan that injects nothing (just counts calls).
    pub fn none() -> Self {
        Self::default()
    }

    /// Also fail call `n` (1-based).
    pub fn fail_call(mut self, n: u64) -> Self {
        self.fail_calls.push(n);
        self
    }

    /// Also apply call `n` (1-based) but report [`KvError::InjectedFault`] to the caller.
    pub fn lose_reply(mut self, n: u64) -> Self {
        self.lose_reply_calls.push(n);
        self
    }

    /// Also fail each call with `probability`, reproducibly from `seed`.
    pub fn fail_randomly(mut self, seed: u64, probability: f64) -> Self {
        self.random = Some(RandomFaults { seed, probability });
        self
    }

    /// Crash at call `n` (1-based); a write in flight then is applied or not as `write` says.
    pub fn crash_at(mut self, n: u64, write: CrashWrite) -> Self {
        self.crash = Some(CrashPoint { call: n, write });
        self
    }
}

/// What the crash did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrashReport {
    /// The call at which it happened.
    pub call: u64,
    /// The kind of that call.
    pub op: OpKind,
    /// For a write: whether it was forwarded to the inner store (`Some(true)`; its own result,
    /// e.g. a conflict, is then whatever the store decided) or dropped (`Some(false)`). `None`
    /// for a read.
    pub write_applied: Option<bool>,
}

struct State {
    plan: FaultPlan,
    calls: u64,
    rng: Option<Rng>,
    crashed: Option<CrashReport>,
}

/// What to do with one call.
enum Verdict {
    Forward,
    Fail(u64),
    LoseReply(u64),
    Crashed,
    CrashForward,
}

/// A store that injects faults according to a [`FaultPlan`] and forwards everything else.
pub struct FaultStore {
    inner: SharedStore,
    state: Mutex<State>,
}

impl FaultStore {
    /// Wraps `inner` with `plan`; the call count starts at zero.
    pub fn new(inner: SharedStore, plan: FaultPlan) -> Self {
        FaultStore {
            inner,
            state: Mutex::new(State::new(plan)),
        }
    }

    /// Wraps `inner` with `plan` behind an `Arc`: keep it to read [`FaultStore::calls`] and
    /// [`FaultStore::crash_report`], and hand [`FaultStore::shared`] to the code under test.
    pub fn wrap(inner: SharedStore, plan: FaultPlan) -> Arc<FaultStore> {
        Arc::new(FaultStore::new(inner, plan))
    }

    /// This store as a [`SharedStore`] (the same plan and counters).
    pub fn shared(self: &Arc<Self>) -> SharedStore {
        Arc::clone(self) as SharedStore
    }

    /// Replaces the plan and starts counting calls from zero again, clearing any crash.
    pub fn reset(&self, plan: FaultPlan) {
        *self.state.lock() = State::new(plan);
    }

    /// Calls seen so far (failed and crashed ones included).
    pub fn calls(&self) -> u64 {
        self.state.lock().calls
    }

    /// True once the crash point was reached.
    pub fn is_crashed(&self) -> bool {
        self.state.lock().crashed.is_some()
    }

    /// What the crash did, once it happened.
    pub fn crash_report(&self) -> Option<CrashReport> {
        self.state.lock().crashed
    }

    /// The wrapped store, to read what survived a crash.
    pub fn inner(&self) -> &SharedStore {
        &self.inner
    }

    fn verdict(&self, op: OpKind) -> Verdict {
        let mut st = self.state.lock();
        if st.crashed.is_some() {
            st.calls += 1;
            return Verdict::Crashed;
        }
        st.calls += 1;
        let n = st.calls;
        if let Some(crash) = st.plan.crash.filter(|c| c.call == n) {
            let is_write = matches!(op, OpKind::Write | OpKind::DeleteRange);
            let applied = is_write.then(|| match crash.write {
                CrashWrite::Apply => true,
                CrashWrite::Discard => false,
                // The coin depends on the seed alone: mixing in the call number made
                // `Seeded(k)` at call `k` always `Rng::new(0)`, i.e. always applied.
                CrashWrite::Seeded(seed) => Rng::new(seed).next_u64() & 1 == 1,
            });
            st.crashed = Some(CrashReport {
                call: n,
                op,
                write_applied: applied,
            });
            return if applied == Some(true) {
                Verdict::CrashForward
            } else {
                Verdict::Crashed
            };
        }
        if st.plan.fail_calls.contains(&n) {
            return Verdict::Fail(n);
        }
        if st.plan.lose_reply_calls.contains(&n) {
            return Verdict::LoseReply(n);
        }
        if let (Some(r), Some(rng)) = (st.plan.random, st.rng.as_mut()) {
            if rng.chance(r.probability) {
                return Verdict::Fail(n);
            }
        }
        Verdict::Forward
    }

    fn run<T>(&self, op: OpKind, f: impl FnOnce() -> Result<T, KvError>) -> Result<T, KvError> {
        match self.verdict(op) {
            Verdict::Forward => f(),
            Verdict::Fail(call) => Err(KvError::InjectedFault { call }),
            Verdict::LoseReply(call) => {
                let _ = f();
                Err(KvError::InjectedFault { call })
            }
            Verdict::Crashed => Err(KvError::Crashed),
            Verdict::CrashForward => {
                // The process "dies" after the request left: whatever the store decided stands,
                // but the caller never hears back.
                let _ = f();
                Err(KvError::Crashed)
            }
        }
    }
}

impl State {
    fn new(plan: FaultPlan) -> Self {
        let rng = plan.random.map(|r| Rng::new(r.seed));
        State {
            plan,
            calls: 0,
            rng,
            crashed: None,
        }
    }
}

impl KvStore for FaultStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn limits(&self) -> &KvLimits {
        self.inner.limits()
    }

    fn get(&self, actor: &str, keys: &[Vec<u8>]) -> Result<Vec<Option<Value>>, KvError> {
        self.run(OpKind::Get, || self.inner.get(actor, keys))
    }

    fn list(&self, actor: &str, req: &ListRequest) -> Result<ListPage, KvError> {
        self.run(OpKind::List, || self.inner.list(actor, req))
    }

    fn write(&self, actor: &str, batch: &WriteBatch) -> Result<(), KvError> {
        self.run(OpKind::Write, || self.inner.write(actor, batch))
    }

    fn delete_range(&self, actor: &str, start: &[u8], end: Option<&[u8]>) -> Result<(), KvError> {
        self.run(OpKind::DeleteRange, || {
            self.inner.delete_range(actor, start, end)
        })
    }

    fn batch_read(&self, actor: &str, ops: &[ReadOp]) -> Result<Vec<ReadResult>, KvError> {
        self.run(OpKind::BatchRead, || self.inner.batch_read(actor, ops))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::memory::MemoryStore;

    /// `Seeded(k)` crashing at call `k` (the natural way to sweep crash points) gives both
    /// outcomes across `k`, as its seed says.
    #[test]
    fn seeded_crash_at_its_own_call_number_gives_both_outcomes() {
        let mut seen = [0u32; 2];
        for k in 1..=32u64 {
            let f = FaultStore::new(
                Arc::new(MemoryStore::new()),
                FaultPlan::none().crash_at(k, CrashWrite::Seeded(k)),
            );
            for i in 0..k {
                let _ = f.put("a", vec![(vec![i as u8], vec![])]);
            }
            let applied = f.crash_report().and_then(|r| r.write_applied);
            assert_eq!(applied, Some(Rng::new(k).next_u64() & 1 == 1), "call {k}");
            seen[usize::from(applied == Some(true))] += 1;
        }
        assert!(seen[0] > 0 && seen[1] > 0, "{seen:?}");
    }
}
