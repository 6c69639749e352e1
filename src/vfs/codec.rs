//! Page values at rest and on the wire: a chunk or stage value is either the page as it is
//! (exactly one chunk long) or an LZ4 block of it behind a one-byte tag, used only when that is
//! shorter than the page (format version 3, see `docs/layout.md`).
//!
//! Why it exists: the current database's pages are most of what a commit sends and a wake
//! reads, and SQLite pages compress well (free space is zeros). Every value the VFS sends under
//! a chunk or stage key is encoded here (at the one door to the store, `file/kv_io.rs`), and
//! every page value it takes from the store, a preload or a background fetch is decoded here,
//! so no reader can see a compressed page as if it were one. The length tells the two forms
//! apart without ambiguity: a raw value is exactly `chunk_size` bytes, an encoded one is always
//! shorter, so the values written by format 2 (all raw) read as they always did.

use std::borrow::Cow;

use super::layout::LayoutError;

/// The tag byte of an encoded page: an LZ4 block (lz4_flex's block format, no length prefix:
/// the page's length is the chunk size).
pub const TAG_LZ4: u8 = 1;

/// The stored form of `page` when it is shorter than the page: [`TAG_LZ4`] ‖ LZ4 block.
/// `None` when compression would not save a byte (the page is then stored as it is).
pub fn encode(page: &[u8]) -> Option<Vec<u8>> {
    #[cfg(test)]
    ENCODED.with(|n| n.set(n.get() + 1));
    if page.len() < 2 {
        return None;
    }
    // One output buffer and hash table per thread, reused: a fresh zeroed buffer and table per
    // page cost about a sixth of the compression itself.
    thread_local! {
        static SCRATCH: std::cell::RefCell<(Vec<u8>, lz4_flex::block::CompressTable)> =
            std::cell::RefCell::new((Vec::new(), lz4_flex::block::CompressTable::default()));
    }
    SCRATCH.with(|scratch| {
        let (buf, table) = &mut *scratch.borrow_mut();
        let max = lz4_flex::block::get_maximum_output_size(page.len());
        if buf.len() < max {
            buf.resize(max, 0);
        }
        let n = lz4_flex::block::compress_into_with_table(page, buf, table).ok()?;
        if 1 + n >= page.len() {
            return None;
        }
        let mut out = Vec::with_capacity(1 + n);
        out.push(TAG_LZ4);
        out.extend_from_slice(&buf[..n]);
        Some(out)
    })
}

#[cfg(test)]
thread_local! {
    /// [`encode`] calls made on this thread (unit tests only: they pin how often a commit
    /// compresses, which no counter of the product shows).
    static ENCODED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// [`encode`] calls made on this thread so far (unit tests only).
#[cfg(test)]
pub(crate) fn encoded_on_this_thread() -> u64 {
    ENCODED.with(|n| n.get())
}

/// The page a stored value holds, `chunk_size` bytes: the value itself when it is exactly that
/// long, else the decompressed LZ4 block behind [`TAG_LZ4`]. Anything else — longer than a
/// chunk, empty, an unknown tag, a block that does not decode to exactly `chunk_size` bytes —
/// is an error (the VFS reports `SQLITE_CORRUPT`); malformed input never panics.
pub fn decode(value: &[u8], chunk_size: usize) -> Result<Cow<'_, [u8]>, LayoutError> {
    if value.len() == chunk_size {
        return Ok(Cow::Borrowed(value));
    }
    if value.len() > chunk_size || value.is_empty() {
        return Err(LayoutError(format!(
            "a page value of {} bytes (a page is {chunk_size} bytes, a compressed one fewer)",
            value.len()
        )));
    }
    if value[0] != TAG_LZ4 {
        return Err(LayoutError(format!(
            "a compressed page value with the unknown encoding {:#04x}",
            value[0]
        )));
    }
    let mut out = vec![0u8; chunk_size];
    match lz4_flex::block::decompress_into(&value[1..], &mut out) {
        Ok(n) if n == chunk_size => Ok(Cow::Owned(out)),
        Ok(n) => Err(LayoutError(format!(
            "a compressed page decodes to {n} bytes, not {chunk_size}"
        ))),
        Err(e) => Err(LayoutError(format!(
            "a compressed page value is not a valid LZ4 block of {chunk_size} bytes: {e}"
        ))),
    }
}

/// [`decode`] of an owned value: the value itself (no copy) when it is raw.
pub fn decode_owned(value: Vec<u8>, chunk_size: usize) -> Result<Vec<u8>, LayoutError> {
    let decoded = match decode(&value, chunk_size)? {
        Cow::Owned(d) => Some(d),
        Cow::Borrowed(_) => None,
    };
    Ok(decoded.unwrap_or(value))
}

/// True when `value` has the shape of a stored page of `chunk_size` bytes (raw, or shorter with
/// the LZ4 tag), without decompressing it: a cheap filter before a value is kept for later
/// ([`decode`] still checks it when it is read).
pub fn plausible(value: &[u8], chunk_size: usize) -> bool {
    value.len() == chunk_size
        || (value.len() > 1 && value.len() < chunk_size && value[0] == TAG_LZ4)
}

/// True when `value` is stored compressed (shorter than a page, with the tag).
pub fn is_compressed(value: &[u8], chunk_size: usize) -> bool {
    value.len() != chunk_size && plausible(value, chunk_size)
}

/// Pages a commit encoded once, kept until its write takes them back.
///
/// Why it exists: a commit with history on sends each page twice, as its chunk (or stage) value
/// and as its redo image, and LZ4 is most of a commit's CPU. The commit path encodes each page
/// once ([`EncodedPages::remember`]), the history builds its image from that block, and the
/// write ([`EncodedPages::take`]) uses it only when the value it sends is byte-equal to the page
/// that was encoded: a pipelined put may carry an older image of the same page, which is then
/// encoded afresh. Entries a failed commit never took are dropped once the map passes
/// [`EncodedPages::MAX_ENTRIES`], so it never grows without bound.
#[derive(Default)]
pub struct EncodedPages {
    map: std::collections::HashMap<u32, (Vec<u8>, Option<Vec<u8>>)>,
}

impl EncodedPages {
    /// Past this many pages the map is cleared before the next entry (a bound, not a cache).
    pub const MAX_ENTRIES: usize = 8192;

    /// Remembers that page `index` with the bytes `page` encodes to `stored` ([`encode`]'s
    /// answer: `None` when it is stored as it is).
    pub fn remember(&mut self, index: u32, page: &[u8], stored: Option<Vec<u8>>) {
        if self.map.len() >= Self::MAX_ENTRIES {
            self.map.clear();
        }
        self.map.insert(index, (page.to_vec(), stored));
    }

    /// [`encode`]'s answer for page `index` holding `page`, when it was remembered for exactly
    /// these bytes (the entry is removed); `None` when it must be encoded here.
    pub fn take(&mut self, index: u32, page: &[u8]) -> Option<Option<Vec<u8>>> {
        match self.map.get(&index) {
            Some((raw, _)) if raw.as_slice() == page => self.map.remove(&index).map(|(_, s)| s),
            _ => None,
        }
    }

    /// Forgets every page (a commit that is not pipelined starts with nothing in flight, so
    /// what is left is a failed or held commit's).
    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// Pages remembered and not yet taken.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_round_trip_compressed_only_when_smaller() {
        let mut page = vec![0u8; 4096];
        page[..16].copy_from_slice(b"SQLite format 3\0");
        let enc = encode(&page).expect("a mostly empty page compresses");
        assert_eq!(enc[0], TAG_LZ4);
        assert!(enc.len() < 100, "{}", enc.len());
        assert_eq!(decode(&enc, 4096).unwrap().as_ref(), &page[..]);
        // Raw values (format 2, or incompressible) are read as they are, without a copy.
        assert!(matches!(decode(&page, 4096).unwrap(), Cow::Borrowed(_)));
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_eq!(encode(&noise), None);
        assert!(is_compressed(&enc, 4096) && !is_compressed(&page, 4096));
    }

    #[test]
    fn malformed_values_are_errors_never_panics() {
        let page = vec![7u8; 4096];
        let enc = encode(&page).unwrap();
        // Longer than a page, empty, unknown tag.
        assert!(decode(&[0u8; 4097], 4096).is_err());
        assert!(decode(&[], 4096).is_err());
        let mut tag = enc.clone();
        tag[0] = 9;
        assert!(decode(&tag, 4096)
            .unwrap_err()
            .0
            .contains("unknown encoding"));
        // A valid block of the wrong length (decoded as a smaller page).
        assert!(decode(&enc, 8192)
            .unwrap_err()
            .0
            .contains("decodes to 4096"));
        // Truncated and garbled blocks.
        for cut in 1..enc.len() {
            let _ = decode(&enc[..cut], 4096);
        }
        let mut bad = enc.clone();
        for b in bad.iter_mut().skip(1) {
            *b = 0xFF;
        }
        assert!(decode(&bad, 4096).is_err());
        assert!(!plausible(&[TAG_LZ4], 4096) && !plausible(&[0u8; 4097], 4096));
    }

    #[test]
    fn encoded_pages_are_taken_only_for_the_same_bytes() {
        let mut page = vec![0u8; 4096];
        page[..5].copy_from_slice(b"hello");
        let mut memo = EncodedPages::default();
        memo.remember(7, &page, encode(&page));
        let mut other = page.clone();
        other[100] = 1;
        // Another image of page 7 (an older commit's, say) is not the one remembered.
        assert_eq!(memo.take(7, &other), None);
        assert_eq!(memo.take(8, &page), None);
        assert_eq!(memo.take(7, &page), Some(encode(&page)));
        assert!(memo.is_empty(), "taken entries are removed");
        for i in 0..EncodedPages::MAX_ENTRIES as u32 + 1 {
            memo.remember(i, &page, None);
        }
        assert!(memo.len() <= EncodedPages::MAX_ENTRIES);
    }
}
