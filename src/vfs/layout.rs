//! The byte layout of a database in the KV store: which keys exist and what their values hold.
//!
//! Why it exists: the layout is a persistent format. Every key and value the VFS writes is built
//! and parsed here and nowhere else, so the format is written down once (this comment and
//! `docs/layout.md`), versioned, validated on every read, and pinned by tests.
//!
//! # Keys (all under the prefix byte `0x08`, so "the SQLite prefix" is one range)
//!
//! | key | bytes | value |
//! |---|---|---|
//! | metadata of file `tag` | `08 tag 00` | [`Meta`] (below) |
//! | chunk `i` of file `tag` | `08 tag 01 i:u32be` | a page value: `chunk_size` bytes, or fewer compressed |
//! | staged page `i` of stage `s` | `08 10 (!s):u64be i:u32be` | a page value, like a chunk |
//!
//! File tags: `00` the main database, `01` its rollback journal. Keys sort as: main metadata,
//! main chunks in page order (page 1 is chunk 0), journal metadata, journal chunks, stages.
//! A stage id is stored inverted (`!s`, i.e. `u64::MAX - s`) so that the newest stage sorts
//! first: a list of the stage area with limit 1 finds an unfinished stage.
//!
//! Chunk `i` holds file bytes `[i*chunk_size, (i+1)*chunk_size)`, zero-padded past the end of
//! the file, as a *page value* ([`crate::vfs::codec`]): exactly `chunk_size` bytes as they are,
//! or (format 3) `01` ‖ an LZ4 block of them when that is shorter. Every chunk below
//! `ceil(size / chunk_size)` must exist (a missing one is corruption); chunks at or past that
//! count are ignored (a crash may leave some; they are overwritten or deleted later).
//!
//! # Metadata value (format version 3; version 2 has the same bytes), big-endian
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | format version, `3` (`2`: every page value is raw) |
//! | 1 | 1 | file tag (must equal the key's) |
//! | 2 | 4 | chunk size: a power of two, 512..=65536 |
//! | 6 | 8 | file size in bytes |
//! | 14 | 8 | next stage id (main file; 0 for the journal) |
//! | 22 | 8 | commit sequence: the number of commits of the main file (0 for the journal) |
//! | 30 | 8 | the last commit's time, milliseconds since the Unix epoch |
//! | 38 | 8 | history start: the first seq whose history is complete (0: none) |
//! | 46 | 4 | number of overlay groups `g` |
//! | 50 | … | `g` groups: stage id `u64`, page count `n: u32`, `n` chunk indexes `u32` ascending |
//!
//! Format version 1 (still read, never written) has no seq, time or history start: its header
//! is 26 bytes (the overlay count at offset 22); it decodes with all three 0. The history keys
//! (`08 20`, `08 21`, `08 22`) are described in [`crate::vfs::history`].
//!
//! The *overlay* says which chunks of the main file are live under a stage key instead of their
//! chunk key: a large commit writes its pages as stage keys in several puts, then makes them
//! live with one put of this metadata (the commit record). A chunk appears in at most one
//! group, and only below the file's chunk count.

use std::collections::BTreeMap;
use std::fmt;

use crate::kv::{Key, KeyRange, ListRequest, ReadOp};

/// The byte every VFS key starts with.
pub const PREFIX: u8 = 0x08;
/// The metadata format version this build writes (it reads this one, [`FORMAT_VERSION_2`] and
/// [`FORMAT_VERSION_1`]). Version 3 is version 2's record; what it adds is that page values may
/// be compressed (see [`crate::vfs::codec`]), so a build that reads only 1 and 2 refuses it
/// instead of misreading a compressed page.
pub const FORMAT_VERSION: u8 = 3;
/// The second format version (history; every page value raw): read, never written.
pub const FORMAT_VERSION_2: u8 = 2;
/// The first format version: read (a database written by an older build), never written.
pub const FORMAT_VERSION_1: u8 = 1;
/// File tag of the main database file.
pub const TAG_MAIN: u8 = 0x00;
/// File tag of the rollback journal.
pub const TAG_JOURNAL: u8 = 0x01;
/// The tag byte of the stage area.
pub const TAG_STAGE: u8 = 0x10;
/// The tag byte of the history's commit headers (see [`crate::vfs::history`]).
pub const TAG_HISTORY: u8 = 0x20;
/// The tag byte of the history's page parts.
pub const TAG_HISTORY_PARTS: u8 = 0x21;
/// The tag byte of the history's base images.
pub const TAG_HISTORY_BASE: u8 = 0x22;
const KIND_META: u8 = 0x00;
const KIND_CHUNK: u8 = 0x01;
/// Smallest supported chunk (page) size.
pub const MIN_CHUNK_SIZE: u32 = 512;
/// Largest supported chunk (page) size.
pub const MAX_CHUNK_SIZE: u32 = 65536;
/// Bytes of the metadata value before the overlay groups (format versions 2 and 3).
pub const META_HEADER_LEN: usize = 50;
/// Bytes of a format-1 metadata value before the overlay groups.
pub const META_HEADER_LEN_V1: usize = 26;

/// The files of one database that the layout knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileKind {
    /// The database file itself.
    Main,
    /// Its rollback journal (`<name>-journal`).
    Journal,
}

impl FileKind {
    /// The tag byte of this file in keys.
    pub fn tag(self) -> u8 {
        match self {
            FileKind::Main => TAG_MAIN,
            FileKind::Journal => TAG_JOURNAL,
        }
    }

    /// The file for a tag byte, if the layout knows it.
    pub fn from_tag(tag: u8) -> Option<FileKind> {
        match tag {
            TAG_MAIN => Some(FileKind::Main),
            TAG_JOURNAL => Some(FileKind::Journal),
            _ => None,
        }
    }

    /// A short name for messages: `main` or `journal`.
    pub fn name(self) -> &'static str {
        match self {
            FileKind::Main => "main",
            FileKind::Journal => "journal",
        }
    }
}

/// True when `size` is a chunk size the layout supports (a power of two in 512..=65536).
pub fn valid_chunk_size(size: u32) -> bool {
    size.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&size)
}

/// The metadata key of a file.
pub fn meta_key(file: FileKind) -> Key {
    vec![PREFIX, file.tag(), KIND_META]
}

/// The key of chunk `index` of a file.
pub fn chunk_key(file: FileKind, index: u32) -> Key {
    let mut k = Vec::with_capacity(7);
    k.extend_from_slice(&[PREFIX, file.tag(), KIND_CHUNK]);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// The first key past every chunk of a file (exclusive end of its chunk range).
pub fn chunk_range_end(file: FileKind) -> Key {
    vec![PREFIX, file.tag(), KIND_CHUNK + 1]
}

/// Every key of one file (metadata and chunks) as `[start, end)`.
pub fn file_range(file: FileKind) -> (Key, Key) {
    (vec![PREFIX, file.tag()], vec![PREFIX, file.tag() + 1])
}

/// The key of page `index` in stage `stage`.
pub fn stage_key(stage: u64, index: u32) -> Key {
    let mut k = Vec::with_capacity(14);
    k.extend_from_slice(&[PREFIX, TAG_STAGE]);
    k.extend_from_slice(&(!stage).to_be_bytes());
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// The whole stage area as `[start, end)`.
pub fn stage_area() -> (Key, Key) {
    (vec![PREFIX, TAG_STAGE], vec![PREFIX, TAG_STAGE + 1])
}

/// The keys of every stage whose id is at least `min_stage`, as `[start, end)`. Stage ids are
/// stored inverted, so these are contiguous at the front of the stage area.
pub fn stages_from(min_stage: u64) -> (Key, Key) {
    let start = vec![PREFIX, TAG_STAGE];
    let mut end = vec![PREFIX, TAG_STAGE];
    // Ids >= min_stage have inverted ids <= !min_stage: end just past that inverted id.
    end.extend_from_slice(&(!min_stage).to_be_bytes());
    end.push(0xFF);
    end.extend_from_slice(&[0xFF; 4]);
    end.push(0);
    (start, end)
}

/// The stage id of a stage key, if `key` is one.
pub fn parse_stage_key(key: &[u8]) -> Option<(u64, u32)> {
    if key.len() != 14 || key[0] != PREFIX || key[1] != TAG_STAGE {
        return None;
    }
    let inv = u64::from_be_bytes(key[2..10].try_into().ok()?);
    let idx = u32::from_be_bytes(key[10..14].try_into().ok()?);
    Some((!inv, idx))
}

/// The key of the history's header of commit `seq`.
pub fn history_key(seq: u64) -> Key {
    let mut k = Vec::with_capacity(10);
    k.extend_from_slice(&[PREFIX, TAG_HISTORY]);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The key of part `part` of the redo record of commit `seq`.
pub fn history_part_key(seq: u64, part: u16) -> Key {
    let mut k = Vec::with_capacity(12);
    k.extend_from_slice(&[PREFIX, TAG_HISTORY_PARTS]);
    k.extend_from_slice(&seq.to_be_bytes());
    k.extend_from_slice(&part.to_be_bytes());
    k
}

/// The key of the base image of main-file chunk `page`.
pub fn history_base_key(page: u32) -> Key {
    let mut k = Vec::with_capacity(6);
    k.extend_from_slice(&[PREFIX, TAG_HISTORY_BASE]);
    k.extend_from_slice(&page.to_be_bytes());
    k
}

/// Every key of one kind of history key (`tag` one of the `TAG_HISTORY*`) as `[start, end)`.
pub fn history_area(tag: u8) -> (Key, Key) {
    (vec![PREFIX, tag], vec![PREFIX, tag + 1])
}

/// What a VFS key names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParsedKey {
    /// The metadata of a file.
    Meta(FileKind),
    /// A chunk of a file.
    Chunk(FileKind, u32),
    /// A page of a stage.
    Stage(u64, u32),
    /// The history header of a commit seq.
    History(u64),
    /// A part of a commit's redo record: seq, part.
    HistoryPart(u64, u16),
    /// The base image of a page.
    HistoryBase(u32),
}

/// Parses a key of the VFS layout; `None` for any other key (another prefix, an unknown tag,
/// a wrong length).
pub fn parse_key(key: &[u8]) -> Option<ParsedKey> {
    if key.len() < 3 || key[0] != PREFIX {
        return None;
    }
    let be64 = |b: &[u8]| b.try_into().ok().map(u64::from_be_bytes);
    match (key[1], key.len()) {
        (TAG_STAGE, _) => return parse_stage_key(key).map(|(s, i)| ParsedKey::Stage(s, i)),
        (TAG_HISTORY, 10) => return be64(&key[2..10]).map(ParsedKey::History),
        (TAG_HISTORY_PARTS, 12) => {
            let part = u16::from_be_bytes([key[10], key[11]]);
            return be64(&key[2..10]).map(|s| ParsedKey::HistoryPart(s, part));
        }
        (TAG_HISTORY_BASE, 6) => {
            return Some(ParsedKey::HistoryBase(u32::from_be_bytes(
                key[2..6].try_into().ok()?,
            )))
        }
        (TAG_HISTORY | TAG_HISTORY_PARTS | TAG_HISTORY_BASE, _) => return None,
        _ => {}
    }
    let file = FileKind::from_tag(key[1])?;
    match (key[2], key.len()) {
        (KIND_META, 3) => Some(ParsedKey::Meta(file)),
        (KIND_CHUNK, 7) => Some(ParsedKey::Chunk(
            file,
            u32::from_be_bytes(key[3..7].try_into().ok()?),
        )),
        _ => None,
    }
}

/// The metadata of one file, as stored under its [`meta_key`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Which file.
    pub file: FileKind,
    /// Bytes per chunk (the page size for the main file).
    pub chunk_size: u32,
    /// The file's size in bytes.
    pub size: u64,
    /// The id the next stage will use (main file only; 0 for the journal).
    pub next_stage: u64,
    /// Chunk index → stage id, for chunks whose live copy is a stage key.
    pub overlay: BTreeMap<u32, u64>,
    /// Commits of the main file so far (each write of its metadata is one); 0 for the journal.
    pub seq: u64,
    /// Time of the last commit, milliseconds since the Unix epoch (never decreases).
    pub time_ms: u64,
    /// The first commit seq from which the history is complete (every later commit has a redo
    /// record and every page they changed has an older image): 0 when there is none.
    pub hist_start: u64,
}

/// Why a stored value could not be decoded. The VFS reports it as `SQLITE_CORRUPT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutError(pub String);

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "corrupt kvsqlite layout: {}", self.0)
    }
}

impl std::error::Error for LayoutError {}

impl Meta {
    /// Metadata of an empty file.
    pub fn new(file: FileKind, chunk_size: u32) -> Meta {
        Meta {
            file,
            chunk_size,
            size: 0,
            next_stage: 0,
            overlay: BTreeMap::new(),
            seq: 0,
            time_ms: 0,
            hist_start: 0,
        }
    }

    /// Number of chunks the file's size spans: every one of them must exist.
    pub fn chunk_count(&self) -> u64 {
        self.size.div_ceil(self.chunk_size as u64)
    }

    /// The key holding the live copy of chunk `index`: a stage key when the overlay names it.
    pub fn live_key(&self, index: u32) -> Key {
        match self.overlay.get(&index) {
            Some(&stage) => stage_key(stage, index),
            None => chunk_key(self.file, index),
        }
    }

    /// Length of the encoded value.
    pub fn encoded_len(&self) -> usize {
        let groups: std::collections::BTreeSet<u64> = self.overlay.values().copied().collect();
        META_HEADER_LEN + groups.len() * 12 + self.overlay.len() * 4
    }

    /// Encodes the value (format version 3).
    pub fn encode(&self) -> Vec<u8> {
        let mut groups: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
        for (&page, &stage) in &self.overlay {
            groups.entry(stage).or_default().push(page);
        }
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(FORMAT_VERSION);
        out.push(self.file.tag());
        out.extend_from_slice(&self.chunk_size.to_be_bytes());
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.next_stage.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.time_ms.to_be_bytes());
        out.extend_from_slice(&self.hist_start.to_be_bytes());
        out.extend_from_slice(&(groups.len() as u32).to_be_bytes());
        for (stage, pages) in groups {
            out.extend_from_slice(&stage.to_be_bytes());
            out.extend_from_slice(&(pages.len() as u32).to_be_bytes());
            for p in pages {
                out.extend_from_slice(&p.to_be_bytes());
            }
        }
        out
    }

    /// Decodes and validates a value stored under `file`'s metadata key (format version 3 or 2,
    /// or 1 with seq, time and history start 0).
    pub fn decode(file: FileKind, bytes: &[u8]) -> Result<Meta, LayoutError> {
        let err = |m: String| Err(LayoutError(format!("{} metadata: {m}", file.name())));
        let header = match bytes.first() {
            Some(&FORMAT_VERSION | &FORMAT_VERSION_2) => META_HEADER_LEN,
            Some(&FORMAT_VERSION_1) => META_HEADER_LEN_V1,
            Some(v) => {
                return err(format!(
                    "format version {v} (this build reads versions {FORMAT_VERSION_1} to {FORMAT_VERSION})"
                ))
            }
            None => return err("empty value".into()),
        };
        if bytes.len() < header {
            return err(format!("{} bytes, at least {header} expected", bytes.len()));
        }
        if bytes[1] != file.tag() {
            return err(format!(
                "file tag {:#04x}, expected {:#04x}",
                bytes[1],
                file.tag()
            ));
        }
        let be32 =
            |o: usize| u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        let be64 = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[o..o + 8]);
            u64::from_be_bytes(b)
        };
        let chunk_size = be32(2);
        if !valid_chunk_size(chunk_size) {
            return err(format!(
                "chunk size {chunk_size} is not a power of two in 512..=65536"
            ));
        }
        let size = be64(6);
        let next_stage = be64(14);
        let (seq, time_ms, hist_start) = if header == META_HEADER_LEN {
            (be64(22), be64(30), be64(38))
        } else {
            (0, 0, 0)
        };
        if hist_start > seq {
            return err(format!("history start {hist_start} is past the seq {seq}"));
        }
        let groups = be32(header - 4) as usize;
        let mut meta = Meta {
            file,
            chunk_size,
            size,
            next_stage,
            overlay: BTreeMap::new(),
            seq,
            time_ms,
            hist_start,
        };
        let count = meta.chunk_count();
        if count > u32::MAX as u64 {
            return err(format!("size {size} spans more than 2^32 chunks"));
        }
        let mut off = header;
        for _ in 0..groups {
            if bytes.len() < off + 12 {
                return err("overlay group cut short".into());
            }
            let stage = be64(off);
            let n = be32(off + 8) as usize;
            off += 12;
            if stage >= next_stage {
                return err(format!(
                    "overlay names stage {stage}, not below the next stage id {next_stage}"
                ));
            }
            if bytes.len() < off + n.saturating_mul(4) {
                return err("overlay pages cut short".into());
            }
            let mut prev: Option<u32> = None;
            for _ in 0..n {
                let page = be32(off);
                off += 4;
                if prev.is_some_and(|p| page <= p) {
                    return err("overlay pages not ascending".into());
                }
                prev = Some(page);
                if page as u64 >= count {
                    return err(format!(
                        "overlay page {page} lies past the file's {count} chunks"
                    ));
                }
                if meta.overlay.insert(page, stage).is_some() {
                    return err(format!("overlay names page {page} twice"));
                }
            }
        }
        if off != bytes.len() {
            return err(format!("{} trailing bytes", bytes.len() - off));
        }
        Ok(meta)
    }
}

/// The reads that let a database open with no further round trip when their answers are handed
/// to the VFS as a preload (see [`crate::preload::Preload::from_reads`]): the main file's keys
/// from its metadata on, up to `max_bytes` (page 1 and the lowest pages first), both files'
/// metadata by name (so a tiny budget still opens without a round trip), and the newest stage
/// key (to find an unfinished staged commit).
pub fn preload_reads(max_bytes: usize) -> Vec<ReadOp> {
    let (ms, me) = file_range(FileKind::Main);
    let (ss, se) = stage_area();
    vec![
        ReadOp::List(ListRequest {
            range: KeyRange::Range {
                start: ms,
                end: Some(me),
            },
            limit: None,
            max_bytes: Some(max_bytes),
        }),
        // Both metadata keys by name, so the open needs no round trip whatever the budget.
        ReadOp::Get(vec![meta_key(FileKind::Main), meta_key(FileKind::Journal)]),
        ReadOp::List(ListRequest {
            range: KeyRange::Range {
                start: ss,
                end: Some(se),
            },
            limit: Some(1),
            max_bytes: None,
        }),
    ]
}

/// One file of a database as found in the store, for inspection (`kvsqlite kv files`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSummary {
    /// Which file.
    pub file: FileKind,
    /// Its decoded metadata, or why it could not be decoded, or `None` when it has none.
    pub meta: Option<Result<Meta, LayoutError>>,
    /// Chunk keys present.
    pub chunks: u64,
    /// Chunk keys present whose value is no page of the chunk size (neither exactly one chunk
    /// long nor a compressed page that decodes to one).
    pub bad_chunks: u64,
    /// Chunk keys inside the size stored compressed (see [`crate::vfs::codec`]).
    pub compressed_chunks: u64,
    /// Bytes of the chunk values inside the size as stored.
    pub stored_bytes: u64,
    /// Chunk keys present at or past the chunk count (left over, ignored).
    pub chunks_past_end: u64,
    /// Chunks inside the size with no live key (neither chunk key nor overlay stage key).
    pub missing_chunks: u64,
}

/// What the store holds for one database: its files, its stages and any foreign keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutSummary {
    /// The main file and the journal, in that order (each even when absent).
    pub files: Vec<FileSummary>,
    /// Stage id → number of stage keys present.
    pub stages: BTreeMap<u64, u64>,
    /// History keys (headers, parts, base images) present.
    pub history_keys: u64,
    /// Keys under the VFS prefix that the layout does not know.
    pub unknown_keys: u64,
}

/// Decodes a database's keys (every key under [`PREFIX`], in any order) into a summary.
pub fn summarize(entries: &[(Key, Vec<u8>)]) -> LayoutSummary {
    let mut files: Vec<FileSummary> = [FileKind::Main, FileKind::Journal]
        .into_iter()
        .map(|file| FileSummary {
            file,
            meta: None,
            chunks: 0,
            bad_chunks: 0,
            compressed_chunks: 0,
            stored_bytes: 0,
            chunks_past_end: 0,
            missing_chunks: 0,
        })
        .collect();
    let mut stages: BTreeMap<u64, u64> = BTreeMap::new();
    let mut stage_keys = std::collections::BTreeSet::new();
    let mut chunk_keys: BTreeMap<FileKind, Vec<(u32, &[u8])>> = BTreeMap::new();
    let mut unknown_keys = 0;
    let mut history_keys = 0;
    for (k, v) in entries {
        match parse_key(k) {
            Some(ParsedKey::Meta(f)) => {
                files[f as usize].meta = Some(Meta::decode(f, v));
            }
            Some(ParsedKey::Chunk(f, i)) => chunk_keys.entry(f).or_default().push((i, v)),
            Some(ParsedKey::Stage(s, i)) => {
                *stages.entry(s).or_default() += 1;
                stage_keys.insert((s, i));
            }
            Some(
                ParsedKey::History(_) | ParsedKey::HistoryPart(..) | ParsedKey::HistoryBase(_),
            ) => history_keys += 1,
            None => unknown_keys += 1,
        }
    }
    for fs in &mut files {
        let meta = fs.meta.as_ref().and_then(|m| m.as_ref().ok()).cloned();
        let chunks = chunk_keys.remove(&fs.file).unwrap_or_default();
        fs.chunks = chunks.len() as u64;
        let Some(meta) = meta else { continue };
        let count = meta.chunk_count();
        let present: std::collections::BTreeSet<u32> = chunks.iter().map(|c| c.0).collect();
        let cs = meta.chunk_size as usize;
        for (i, v) in &chunks {
            if *i as u64 >= count {
                fs.chunks_past_end += 1;
                continue;
            }
            fs.stored_bytes += v.len() as u64;
            if crate::vfs::codec::decode(v, cs).is_err() {
                fs.bad_chunks += 1;
            } else if crate::vfs::codec::is_compressed(v, cs) {
                fs.compressed_chunks += 1;
            }
        }
        for i in 0..count {
            let i = i as u32;
            let live = match meta.overlay.get(&i) {
                Some(&s) => stage_keys.contains(&(s, i)),
                None => present.contains(&i),
            };
            if !live {
                fs.missing_chunks += 1;
            }
        }
    }
    LayoutSummary {
        files,
        stages,
        history_keys,
        unknown_keys,
    }
}

/// Renders a [`LayoutSummary`] as text, one line per file, then the stages.
pub fn describe(s: &LayoutSummary) -> String {
    let mut out = String::new();
    for f in &s.files {
        match &f.meta {
            None if f.chunks == 0 => out.push_str(&format!("{:<8} absent\n", f.file.name())),
            None => out.push_str(&format!(
                "{:<8} NO METADATA, {} chunk keys\n",
                f.file.name(),
                f.chunks
            )),
            Some(Err(e)) => out.push_str(&format!("{:<8} {e}\n", f.file.name())),
            Some(Ok(m)) => out.push_str(&format!(
                "{:<8} size {} bytes, chunk size {}, {} chunks ({} in stages), {} chunk keys ({} compressed, {} bytes stored), {} missing, {} malformed, {} past the end\n",
                f.file.name(),
                m.size,
                m.chunk_size,
                m.chunk_count(),
                m.overlay.len(),
                f.chunks,
                f.compressed_chunks,
                f.stored_bytes,
                f.missing_chunks,
                f.bad_chunks,
                f.chunks_past_end
            )),
        }
    }
    if s.stages.is_empty() {
        out.push_str("stages   none\n");
    }
    for (id, n) in &s.stages {
        out.push_str(&format!("stage {id:<3} {n} keys\n"));
    }
    if s.history_keys > 0 {
        out.push_str(&format!("history  {} keys\n", s.history_keys));
    }
    if s.unknown_keys > 0 {
        out.push_str(&format!(
            "unknown  {} keys under the VFS prefix\n",
            s.unknown_keys
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_meta_then_pages_then_journal_then_stages() {
        let keys = vec![
            meta_key(FileKind::Main),
            chunk_key(FileKind::Main, 0),
            chunk_key(FileKind::Main, 1),
            chunk_key(FileKind::Main, 256),
            meta_key(FileKind::Journal),
            chunk_key(FileKind::Journal, 0),
            stage_key(9, 0),
            stage_key(3, 0),
            stage_key(3, 7),
        ];
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(sorted, keys);
        assert_eq!(chunk_key(FileKind::Main, 258), vec![8, 0, 1, 0, 0, 1, 2]);
        assert_eq!(meta_key(FileKind::Journal), vec![8, 1, 0]);
        assert_eq!(parse_key(&stage_key(5, 9)), Some(ParsedKey::Stage(5, 9)));
        let (s, e) = stages_from(5);
        assert!(stage_key(5, u32::MAX).as_slice() < e.as_slice());
        assert!(stage_key(6, 0).as_slice() < e.as_slice());
        assert!(stage_key(4, 0).as_slice() >= e.as_slice());
        assert!(stage_key(9, 0).as_slice() >= s.as_slice());
    }

    #[test]
    fn meta_round_trips_and_rejects_bad_values() {
        let mut m = Meta::new(FileKind::Main, 4096);
        m.size = 4096 * 10;
        m.next_stage = 4;
        m.overlay.insert(2, 3);
        m.overlay.insert(5, 1);
        m.overlay.insert(7, 3);
        let bytes = m.encode();
        assert_eq!(bytes.len(), m.encoded_len());
        assert_eq!(Meta::decode(FileKind::Main, &bytes), Ok(m.clone()));
        assert!(Meta::decode(FileKind::Journal, &bytes).is_err());
        let mut bad = bytes.clone();
        bad[0] = 4;
        assert!(Meta::decode(FileKind::Main, &bad).is_err());
        // Format 2 (the same record, every page raw) still reads.
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert_eq!(Meta::decode(FileKind::Main, &v2), Ok(m.clone()));
        // Format 1: no seq, time or history start.
        let mut v1 = vec![1u8, 0];
        v1.extend_from_slice(&4096u32.to_be_bytes());
        v1.extend_from_slice(&8192u64.to_be_bytes());
        v1.extend_from_slice(&0u64.to_be_bytes());
        v1.extend_from_slice(&0u32.to_be_bytes());
        let d = Meta::decode(FileKind::Main, &v1).unwrap();
        assert_eq!((d.size, d.seq, d.time_ms, d.hist_start), (8192, 0, 0, 0));
        for v in [2, 3] {
            let mut v1_as_v2 = v1.clone();
            v1_as_v2[0] = v;
            assert!(Meta::decode(FileKind::Main, &v1_as_v2).is_err());
        }
        let mut h = m.clone();
        h.seq = 5;
        h.hist_start = 6;
        assert!(Meta::decode(FileKind::Main, &h.encode()).is_err());
        assert!(Meta::decode(FileKind::Main, &bytes[..bytes.len() - 1]).is_err());
        let mut long = bytes.clone();
        long.push(0);
        assert!(Meta::decode(FileKind::Main, &long).is_err());
        let mut cs = bytes.clone();
        cs[2..6].copy_from_slice(&1000u32.to_be_bytes());
        assert!(Meta::decode(FileKind::Main, &cs).is_err());
        m.overlay.insert(10, 1); // past the 10 chunks
        assert!(Meta::decode(FileKind::Main, &m.encode()).is_err());
    }
}
