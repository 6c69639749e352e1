//! Fencing: the guard that keeps two instances of one actor (a host that lost its lease, a
//! retried wake, two processes on one store) from both writing its database.
//!
//! Why it exists: locks are in-process only, so across processes and hosts the store itself must
//! refuse a stale writer. The actor layer gives a database a [`FenceSpec`] at open: the key of
//! the actor's fence record, the value its wake read there, and a unique instance id. From then
//! on **every** KV write of the database carries a precondition that the record still holds what
//! this instance last saw, and puts a new record (`instance ‖ sequence`) in the same atomic write:
//! the fence *moves* with each write. So:
//!
//! - the new instance's first write succeeds only if nobody wrote since its wake read (a commit
//!   the old instance landed in between changed the record), and
//! - once the new instance has written, every write of the old one fails ([`VfsError::Moved`],
//!   `SQLITE_IOERR_VNODE` to SQL callers), with nothing written.
//!
//! Whoever writes second after a conflicting write is refused: no commit is ever lost. The
//! record costs one entry and [`RECORD_LEN`] + key bytes in each write; the VFS packs its
//! writes with that room kept free.
//!
//! [`VfsError::Moved`]: super::file::VfsError::Moved

use crate::kv::{Key, Precondition, Value, WriteBatch};

/// Bytes of a fence record: format version, 16-byte instance id, sequence (u64 BE).
pub const RECORD_LEN: usize = 1 + 16 + 8;

/// Format version of the fence record.
const RECORD_VERSION: u8 = 1;

/// What the actor layer hands the VFS to fence a database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FenceSpec {
    /// The key of the fence record (outside the VFS prefix `0x08`).
    pub key: Key,
    /// What the wake read at `key` (`None`: absent). The first write requires exactly this.
    pub read: Option<Value>,
    /// This instance's unique id.
    pub instance: [u8; 16],
}

/// Encodes a fence record naming `instance` at write `seq`.
pub fn encode_record(instance: &[u8; 16], seq: u64) -> Value {
    let mut v = Vec::with_capacity(RECORD_LEN);
    v.push(RECORD_VERSION);
    v.extend_from_slice(instance);
    v.extend_from_slice(&seq.to_be_bytes());
    v
}

/// Decodes a fence record into `(instance, seq)`; `None` when it is not one.
pub fn decode_record(v: &[u8]) -> Option<([u8; 16], u64)> {
    if v.len() != RECORD_LEN || v[0] != RECORD_VERSION {
        return None;
    }
    let instance: [u8; 16] = v[1..17].try_into().ok()?;
    let seq = u64::from_be_bytes(v[17..25].try_into().ok()?);
    Some((instance, seq))
}

/// The moving fence of one database.
#[derive(Debug)]
pub(super) struct MovingFence {
    pub key: Key,
    /// What the record holds as far as this instance knows.
    pub expected: Option<Value>,
    pub instance: [u8; 16],
    pub seq: u64,
    /// A write whose outcome is unknown tried to put this record: resolved at the next reload.
    pub uncertain: Option<Value>,
}

impl MovingFence {
    pub fn new(spec: FenceSpec) -> Self {
        MovingFence {
            key: spec.key,
            expected: spec.read,
            instance: spec.instance,
            seq: 0,
            uncertain: None,
        }
    }

    /// `batch` with the fence's precondition and its next record added; returns the record.
    pub fn guard(&self, batch: &mut WriteBatch) -> Value {
        let next = encode_record(&self.instance, self.seq + 1);
        batch.preconditions.push(Precondition {
            key: self.key.clone(),
            expected: self.expected.clone(),
        });
        batch.puts.push((self.key.clone(), next.clone()));
        next
    }

    /// The write carrying `next` landed.
    pub fn advance(&mut self, next: Value) {
        self.expected = Some(next);
        self.seq += 1;
        self.uncertain = None;
    }

    /// Resolves an uncertain write from the record as now stored. `Ok(())`: this instance still
    /// holds the fence (the write landed or did not); `Err(())`: another instance moved it.
    pub fn resolve(&mut self, stored: Option<&[u8]>) -> Result<(), ()> {
        let uncertain = self.uncertain.take();
        if stored == self.expected.as_deref() {
            return Ok(());
        }
        match uncertain {
            Some(next) if stored == Some(next.as_slice()) => {
                self.advance(next);
                Ok(())
            }
            _ => Err(()),
        }
    }

    /// Bytes a write spends on the fence (the record's key and value).
    pub fn reserve_bytes(&self) -> usize {
        self.key.len() + RECORD_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_foreign_bytes_are_refused() {
        let r = encode_record(&[7; 16], 42);
        assert_eq!(r.len(), RECORD_LEN);
        assert_eq!(decode_record(&r), Some(([7; 16], 42)));
        assert_eq!(decode_record(&r[1..]), None);
        let mut bad = r.clone();
        bad[0] = 9;
        assert_eq!(decode_record(&bad), None);
    }

    #[test]
    fn the_fence_moves_with_each_write_and_resolves_uncertain_ones() {
        let mut f = MovingFence::new(FenceSpec {
            key: b"f".to_vec(),
            read: None,
            instance: [1; 16],
        });
        let mut b = WriteBatch::default();
        let next = f.guard(&mut b);
        assert_eq!(b.preconditions, vec![Precondition::absent(b"f".to_vec())]);
        assert_eq!(b.puts, vec![(b"f".to_vec(), next.clone())]);
        f.uncertain = Some(next.clone());
        // The write landed: the stored record is the one it put.
        assert_eq!(f.resolve(Some(&next)), Ok(()));
        assert_eq!(f.expected.as_deref(), Some(next.as_slice()));
        // Another instance's record: moved.
        let other = encode_record(&[2; 16], 1);
        assert_eq!(f.resolve(Some(&other)), Err(()));
    }
}
