//! The bytes of the history's values: commit headers, redo-record parts and base images.
//!
//! Why it exists: like `layout.rs` for the current pages, the history is a persistent format;
//! every value is built and parsed here, validated on every read, and pinned by tests.
//!
//! # Header (`08 20 seq`), big-endian
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | record version, `1` |
//! | 1 | 1 | flags: `1` written while a rollback journal existed (not a bookmark until the journal is gone), `2` the commit was a restore |
//! | 2 | 8 | commit time, ms since the Unix epoch |
//! | 10 | 8 | the main file's size after the commit |
//! | 18 | 4 | chunk size |
//! | 22 | 8 | bytes of the whole record (keys and values of its header and parts) |
//! | 30 | 2 | number of parts `n` |
//! | 32 | 4 | number of pages `m` |
//! | 36 | 4·m | the pages (chunk indexes), ascending |
//! | … | 4·n | pages per part, in order: part 0 holds the first pages of the list |
//!
//! # Part (`08 21 seq part`)
//!
//! `1` (version), then per page: chunk index `u32`, encoding `u8` (`0` the image as it is,
//! `1` an LZ4 block with the image's length prepended as `u32` little-endian, used only when
//! smaller), length `u32`, the bytes. A part is at most one store value.
//!
//! # Base image (`08 22 page`)
//!
//! `1` (version), the seq of the commit whose image it is (`u64`), encoding `u8`, the bytes.

use std::collections::BTreeMap;

use crate::kv::{Key, Value};
use crate::vfs::layout::{self, LayoutError};

/// Version byte of every history value.
pub const RECORD_VERSION: u8 = 1;
/// Header flag: written while a rollback journal existed.
pub const FLAG_INCOMPLETE: u8 = 1;
/// Header flag: the commit was a restore.
pub const FLAG_RESTORE: u8 = 2;
/// Encoding of a page image stored as it is.
pub const ENC_RAW: u8 = 0;
/// Encoding of a page image stored LZ4-compressed (a block with its length prepended).
pub const ENC_LZ4: u8 = 1;

/// A page image as the history stores it: LZ4-compressed when that is smaller, else as it is.
pub fn encode_image(img: &[u8]) -> (u8, Vec<u8>) {
    let c = lz4_flex::compress_prepend_size(img);
    if c.len() < img.len() {
        (ENC_LZ4, c)
    } else {
        (ENC_RAW, img.to_vec())
    }
}

/// The history's encoding of `img` from the page codec's answer for it (`stored`, see
/// [`crate::vfs::codec::encode`]): the same LZ4 block with its length prepended when that is
/// smaller than the image, else the image as it is — what [`encode_image`] gives, without
/// compressing the page a second time.
pub fn image_from_block(img: &[u8], stored: Option<&[u8]>) -> (u8, Vec<u8>) {
    match stored {
        Some([crate::vfs::codec::TAG_LZ4, block @ ..]) if 4 + block.len() < img.len() => {
            let mut v = Vec::with_capacity(4 + block.len());
            v.extend_from_slice(&(img.len() as u32).to_le_bytes());
            v.extend_from_slice(block);
            (ENC_LZ4, v)
        }
        _ => (ENC_RAW, img.to_vec()),
    }
}

/// A stored page image back to its bytes, which must be exactly `len` long.
pub fn decode_image(enc: u8, data: &[u8], len: usize) -> Result<Vec<u8>, LayoutError> {
    let out = match enc {
        ENC_RAW => data.to_vec(),
        ENC_LZ4 => {
            // The prepended size is checked before anything is allocated.
            let claimed = data
                .get(..4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
            if claimed != Some(len) {
                return Err(LayoutError(format!(
                    "history image claims {claimed:?} bytes, expected {len}"
                )));
            }
            lz4_flex::decompress_size_prepended(data)
                .map_err(|e| LayoutError(format!("history image does not decompress: {e}")))?
        }
        e => {
            return Err(LayoutError(format!(
                "history image encoding {e} is unknown"
            )))
        }
    };
    if out.len() != len {
        return Err(LayoutError(format!(
            "history image of {} bytes, expected {len}",
            out.len()
        )));
    }
    Ok(out)
}
/// Bytes of a header before its page list.
pub const HEADER_FIXED: usize = 36;
/// Bytes a page entry of a part adds besides its image.
pub const ENTRY_OVERHEAD: usize = 9;

/// The header of one commit's redo record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The commit seq (from the key).
    pub seq: u64,
    /// [`FLAG_INCOMPLETE`], [`FLAG_RESTORE`].
    pub flags: u8,
    /// Commit time, ms since the epoch.
    pub time_ms: u64,
    /// The main file's size after the commit.
    pub size: u64,
    /// Chunk size.
    pub chunk_size: u32,
    /// Bytes of the record (header and parts, keys and values).
    pub bytes: u64,
    /// Pages the commit wrote, ascending.
    pub pages: Vec<u32>,
    /// Pages per part.
    pub part_counts: Vec<u32>,
}

fn corrupt<T>(seq: u64, m: impl Into<String>) -> Result<T, LayoutError> {
    Err(LayoutError(format!(
        "history of commit {seq}: {}",
        m.into()
    )))
}

impl Header {
    /// True when the state after this commit is a consistent database (a bookmark).
    pub fn consistent(&self) -> bool {
        self.flags & FLAG_INCOMPLETE == 0
    }

    /// Chunks the file spans after the commit.
    pub fn chunk_count(&self) -> u64 {
        self.size.div_ceil(self.chunk_size.max(1) as u64)
    }

    /// The part holding `page`, if the commit wrote it.
    pub fn part_of(&self, page: u32) -> Option<u16> {
        let pos = self.pages.binary_search(&page).ok()? as u64;
        let mut end = 0u64;
        for (i, &n) in self.part_counts.iter().enumerate() {
            end += n as u64;
            if pos < end {
                return Some(i as u16);
            }
        }
        None
    }

    /// Length of the encoded value.
    pub fn encoded_len(pages: usize, parts: usize) -> usize {
        HEADER_FIXED + 4 * pages + 4 * parts
    }

    /// Encodes the value.
    pub fn encode(&self) -> Value {
        let mut v = Vec::with_capacity(Self::encoded_len(self.pages.len(), self.part_counts.len()));
        v.push(RECORD_VERSION);
        v.push(self.flags);
        v.extend_from_slice(&self.time_ms.to_be_bytes());
        v.extend_from_slice(&self.size.to_be_bytes());
        v.extend_from_slice(&self.chunk_size.to_be_bytes());
        v.extend_from_slice(&self.bytes.to_be_bytes());
        v.extend_from_slice(&(self.part_counts.len() as u16).to_be_bytes());
        v.extend_from_slice(&(self.pages.len() as u32).to_be_bytes());
        for p in &self.pages {
            v.extend_from_slice(&p.to_be_bytes());
        }
        for n in &self.part_counts {
            v.extend_from_slice(&n.to_be_bytes());
        }
        v
    }

    /// Decodes and validates the header of commit `seq`.
    pub fn decode(seq: u64, b: &[u8]) -> Result<Header, LayoutError> {
        if b.len() < HEADER_FIXED {
            return corrupt(seq, format!("header of {} bytes", b.len()));
        }
        if b[0] != RECORD_VERSION {
            return corrupt(seq, format!("header version {}", b[0]));
        }
        let be64 = |o: usize| u64::from_be_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        let be32 = |o: usize| u32::from_be_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
        let chunk_size = be32(18);
        if !layout::valid_chunk_size(chunk_size) {
            return corrupt(seq, format!("chunk size {chunk_size}"));
        }
        let parts = u16::from_be_bytes([b[30], b[31]]) as usize;
        let m = be32(32) as usize;
        if b.len() != Self::encoded_len(m, parts) {
            return corrupt(seq, "header length does not match its counts");
        }
        let size = be64(10);
        let count = size.div_ceil(chunk_size as u64);
        let mut pages = Vec::with_capacity(m);
        for i in 0..m {
            let p = be32(HEADER_FIXED + 4 * i);
            if pages.last().is_some_and(|&l| p <= l) || p as u64 >= count.max(1) {
                return corrupt(seq, "pages not ascending or past the file's size");
            }
            pages.push(p);
        }
        let part_counts: Vec<u32> = (0..parts)
            .map(|i| be32(HEADER_FIXED + 4 * m + 4 * i))
            .collect();
        if part_counts.iter().map(|&n| n as u64).sum::<u64>() != m as u64 {
            return corrupt(seq, "parts do not hold exactly the pages");
        }
        Ok(Header {
            seq,
            flags: b[1],
            time_ms: be64(2),
            size,
            chunk_size,
            bytes: be64(22),
            pages,
            part_counts,
        })
    }
}

/// A commit's redo record: its parts (to write first or beside it) and its header.
pub struct Record {
    /// Part keys and values.
    pub parts: Vec<(Key, Value)>,
    /// The header key and value.
    pub header: (Key, Value),
    /// The decoded header.
    pub info: Header,
}

/// What a redo record says about its commit besides the pages.
#[derive(Clone, Copy, Debug)]
pub struct Of {
    /// The commit seq.
    pub seq: u64,
    /// Header flags.
    pub flags: u8,
    /// Commit time, ms since the epoch.
    pub time_ms: u64,
    /// The main file's size after the commit.
    pub size: u64,
    /// Chunk size.
    pub chunk_size: u32,
}

/// Turns page `index`'s image into its encoding byte and stored bytes.
pub type Encoder<'a> = &'a dyn Fn(u32, &[u8]) -> (u8, Vec<u8>);

/// A part's page entry: chunk index, encoding, stored bytes.
pub type Entry<'a> = (u32, u8, &'a [u8]);

/// Builds the redo record of commit `of.seq` holding `pages` (chunk index → image), packing
/// the page entries into parts of at most `max_value` bytes. `encode` turns an image into its
/// stored form and encoding byte.
pub fn build(
    of: &Of,
    pages: &BTreeMap<u32, Vec<u8>>,
    max_value: usize,
    encode: Encoder<'_>,
) -> Record {
    let Of {
        seq,
        flags,
        time_ms,
        size,
        chunk_size,
    } = *of;
    let images: Vec<(u32, u8, Vec<u8>)> = pages
        .iter()
        .map(|(&p, img)| {
            let (enc, data) = encode(p, img);
            (p, enc, data)
        })
        .collect();
    // The parts' bounds first, so that each part is allocated once at its final size.
    let mut counts: Vec<u32> = Vec::new();
    let mut sizes: Vec<usize> = Vec::new();
    let (mut len, mut n) = (1usize, 0u32);
    for (_, _, data) in &images {
        let cost = ENTRY_OVERHEAD + data.len();
        if n > 0 && len + cost > max_value {
            counts.push(n);
            sizes.push(len);
            (len, n) = (1, 0);
        }
        len += cost;
        n += 1;
    }
    if n > 0 {
        counts.push(n);
        sizes.push(len);
    }
    let mut parts: Vec<Vec<u8>> = Vec::with_capacity(counts.len());
    let mut images = images.into_iter();
    for (&count, &size) in counts.iter().zip(&sizes) {
        let mut cur = Vec::with_capacity(size);
        cur.push(RECORD_VERSION);
        for (p, enc, data) in images.by_ref().take(count as usize) {
            cur.extend_from_slice(&p.to_be_bytes());
            cur.push(enc);
            cur.extend_from_slice(&(data.len() as u32).to_be_bytes());
            cur.extend_from_slice(&data);
        }
        parts.push(cur);
    }
    let parts: Vec<(Key, Value)> = parts
        .into_iter()
        .enumerate()
        .map(|(i, v)| (layout::history_part_key(seq, i as u16), v))
        .collect();
    let header_key = layout::history_key(seq);
    let bytes = parts.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
        + header_key.len()
        + Header::encoded_len(pages.len(), counts.len());
    let info = Header {
        seq,
        flags,
        time_ms,
        size,
        chunk_size,
        bytes: bytes as u64,
        pages: pages.keys().copied().collect(),
        part_counts: counts,
    };
    Record {
        parts,
        header: (header_key, info.encode()),
        info,
    }
}

/// The page entries of a part: `(page, encoding, stored bytes)`.
pub fn part_entries(seq: u64, b: &[u8]) -> Result<Vec<Entry<'_>>, LayoutError> {
    if b.first() != Some(&RECORD_VERSION) {
        return corrupt(seq, "part version");
    }
    let mut out = Vec::new();
    let mut off = 1;
    while off < b.len() {
        if b.len() < off + ENTRY_OVERHEAD {
            return corrupt(seq, "part entry cut short");
        }
        let page = u32::from_be_bytes(b[off..off + 4].try_into().unwrap_or([0; 4]));
        let enc = b[off + 4];
        let len = u32::from_be_bytes(b[off + 5..off + 9].try_into().unwrap_or([0; 4])) as usize;
        off += ENTRY_OVERHEAD;
        if b.len() < off + len {
            return corrupt(seq, "part entry cut short");
        }
        out.push((page, enc, &b[off..off + len]));
        off += len;
    }
    Ok(out)
}

/// Encodes a base image: the seq whose image it is, its encoding and stored bytes.
pub fn encode_base(seq: u64, enc: u8, data: &[u8]) -> Value {
    let mut v = Vec::with_capacity(10 + data.len());
    v.push(RECORD_VERSION);
    v.extend_from_slice(&seq.to_be_bytes());
    v.push(enc);
    v.extend_from_slice(data);
    v
}

/// Decodes a base image into `(seq, encoding, stored bytes)`.
pub fn decode_base(page: u32, b: &[u8]) -> Result<(u64, u8, &[u8]), LayoutError> {
    if b.len() < 10 || b[0] != RECORD_VERSION {
        return Err(LayoutError(format!(
            "history base image of page {page}: malformed"
        )));
    }
    let seq = u64::from_be_bytes(b[1..9].try_into().unwrap_or([0; 8]));
    Ok((seq, b[9], &b[10..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_split_into_parts() {
        let mut pages = BTreeMap::new();
        for p in [0u32, 3, 4, 9] {
            pages.insert(p, vec![p as u8; 512]);
        }
        let raw = |_: u32, b: &[u8]| (ENC_RAW, b.to_vec());
        let of = Of {
            seq: 7,
            flags: FLAG_RESTORE,
            time_ms: 1234,
            size: 512 * 10,
            chunk_size: 512,
        };
        let r = build(&of, &pages, 1100, &raw);
        assert_eq!(r.parts.len(), 2);
        assert_eq!(r.info.part_counts, vec![2, 2]);
        assert_eq!(r.header.0, layout::history_key(7));
        let h = Header::decode(7, &r.header.1).unwrap();
        assert_eq!(h, r.info);
        assert_eq!(h.part_of(4), Some(1));
        assert_eq!(h.part_of(0), Some(0));
        assert_eq!(h.part_of(5), None);
        assert!(h.consistent());
        let e = part_entries(7, &r.parts[1].1).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].0, e[0].1, e[0].2), (4, ENC_RAW, &[4u8; 512][..]));
        let bytes: usize = r
            .parts
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
            + r.header.0.len()
            + r.header.1.len();
        assert_eq!(h.bytes, bytes as u64);
        assert!(Header::decode(7, &r.header.1[..20]).is_err());
        let b = encode_base(5, ENC_RAW, &[1, 2]);
        assert_eq!(decode_base(0, &b).unwrap(), (5, ENC_RAW, &[1u8, 2][..]));
        // Compression only when smaller, and checked on the way back.
        let zeros = vec![0u8; 4096];
        let (enc, data) = encode_image(&zeros);
        assert_eq!(enc, ENC_LZ4);
        assert!(data.len() < 100);
        assert_eq!(decode_image(enc, &data, 4096).unwrap(), zeros);
        assert!(decode_image(enc, &data, 8192).is_err());
        assert!(decode_image(enc, &data[..data.len() - 1], 4096).is_err());
        assert!(decode_image(7, &data, 4096).is_err());
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        assert_eq!(encode_image(&noise), (ENC_RAW, noise.clone()));
        // The image built from the page codec's block decodes to the same page.
        let mut page = vec![0u8; 4096];
        page[..16].copy_from_slice(b"SQLite format 3\0");
        page[4000..4010].copy_from_slice(&noise[..10]);
        let stored = crate::vfs::codec::encode(&page);
        let (enc, data) = image_from_block(&page, stored.as_deref());
        assert_eq!(enc, ENC_LZ4);
        assert_eq!(data.len(), stored.as_ref().map_or(0, |s| s.len() + 3));
        assert_eq!(decode_image(enc, &data, 4096).unwrap(), page);
        assert_eq!(image_from_block(&noise, None), (ENC_RAW, noise.clone()));
        // A block that saves less than the length prefix costs is kept raw.
        let tiny = vec![0u8; 8];
        assert_eq!(
            image_from_block(&tiny, Some(&[crate::vfs::codec::TAG_LZ4, 1, 2, 3, 4])),
            (ENC_RAW, tiny.clone())
        );
    }
}
