//! The actor's own keys in its KV namespace, next to its database's (`0x08…`, see
//! `docs/layout.md`), and the byte format of the records stored under them.
//!
//! Why it exists: the wake batch, the write collector and `sleep()` all name these keys; one
//! module owns their bytes so the format is written down once and pinned by a test.
//!
//! Every actor key starts with [`PREFIX`] (`0x01`); user-declared prefixes may not start with
//! `0x01` or `0x08`.

use crate::kv::Key;

/// First byte of every actor-layer key.
pub const PREFIX: u8 = 0x01;

/// The persisted state (the user's bytes, stored as they are).
pub fn state_key() -> Key {
    b"\x01state".to_vec()
}

/// The inspector token (UTF-8 text).
pub fn token_key() -> Key {
    b"\x01token".to_vec()
}

/// The fence record (see [`crate::vfs::fence`]).
pub fn fence_key() -> Key {
    b"\x01fence".to_vec()
}

/// The hot-page hints written at sleep ([`Hints`]).
pub fn hints_key() -> Key {
    b"\x01hints".to_vec()
}

/// Prefix of the copies of startup pages written at sleep (`0x01 "sp" ‖ page u32 BE`).
pub fn startup_copy_prefix() -> Key {
    b"\x01sp".to_vec()
}

/// The key of the sleep-time copy of page `idx` (0-based chunk index).
pub fn startup_copy_key(idx: u32) -> Key {
    let mut k = startup_copy_prefix();
    k.extend_from_slice(&idx.to_be_bytes());
    k
}

/// The page index of a startup copy key.
pub fn parse_startup_copy_key(k: &[u8]) -> Option<u32> {
    let rest = k.strip_prefix(startup_copy_prefix().as_slice())?;
    Some(u32::from_be_bytes(rest.try_into().ok()?))
}

/// Format version of the hints record.
const HINTS_VERSION: u8 = 1;

/// What `sleep()` leaves for the next wake: the fence record its own write put (the startup
/// copies are current exactly when the wake reads this same record), the pages the last
/// startup read that the wake's listing may not reach (copied under [`startup_copy_key`]), and
/// the pages queries read, interior B-tree pages first, then leaves, each group most recent first
/// (fetched in the background after the next wake).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hints {
    /// The fence record as the sleep write left it.
    pub fence: Vec<u8>,
    /// Pages copied under [`startup_copy_key`].
    pub startup: Vec<u32>,
    /// Pages read by queries: interior B-tree pages first, then the rest, each most recent first.
    pub hot: Vec<u32>,
}

impl Hints {
    /// `version u8 ‖ fence len u16 ‖ fence ‖ n u32 ‖ n × page u32 ‖ m u32 ‖ m × page u32`, big-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![HINTS_VERSION];
        v.extend_from_slice(&(self.fence.len() as u16).to_be_bytes());
        v.extend_from_slice(&self.fence);
        for list in [&self.startup, &self.hot] {
            v.extend_from_slice(&(list.len() as u32).to_be_bytes());
            for p in list {
                v.extend_from_slice(&p.to_be_bytes());
            }
        }
        v
    }

    /// Decodes a hints record; `None` for anything malformed (hints are only an optimisation:
    /// a bad record is ignored, never trusted).
    pub fn decode(b: &[u8]) -> Option<Hints> {
        let mut r = Reader(b);
        if r.take(1)?[0] != HINTS_VERSION {
            return None;
        }
        let n = u16::from_be_bytes(r.take(2)?.try_into().ok()?) as usize;
        let fence = r.take(n)?.to_vec();
        let mut lists = [Vec::new(), Vec::new()];
        for list in &mut lists {
            let n = u32::from_be_bytes(r.take(4)?.try_into().ok()?) as usize;
            if n > r.0.len() / 4 {
                return None;
            }
            for _ in 0..n {
                list.push(u32::from_be_bytes(r.take(4)?.try_into().ok()?));
            }
        }
        if !r.0.is_empty() {
            return None;
        }
        let [startup, hot] = lists;
        Some(Hints {
            fence,
            startup,
            hot,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_hints_are_pinned() {
        assert_eq!(state_key(), b"\x01state");
        assert_eq!(startup_copy_key(258), b"\x01sp\x00\x00\x01\x02");
        assert_eq!(parse_startup_copy_key(b"\x01sp\x00\x00\x01\x02"), Some(258));
        assert_eq!(parse_startup_copy_key(b"\x01sp\x00"), None);
        let h = Hints {
            fence: vec![9, 9],
            startup: vec![3],
            hot: vec![7, 1],
        };
        let e = h.encode();
        assert_eq!(
            e,
            vec![1, 0, 2, 9, 9, 0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 7, 0, 0, 0, 1]
        );
        assert_eq!(Hints::decode(&e), Some(h));
        assert_eq!(Hints::decode(&e[..e.len() - 1]), None);
        assert_eq!(Hints::decode(&[1, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]), None);
    }
}
