//! Printing query values the way the reference runner prints them, sorting them, and hashing
//! them.
//!
//! Values are kept in one string buffer with end offsets (no allocation per value), because
//! the corpus runs hundreds of thousands of them.
//!
//! Printing rules (SQLite's `slt_sqlite.c`): SQL NULL prints `NULL` whatever the column type;
//! `T` prints the text up to its first NUL byte, `(empty)` when that is empty, with every byte
//! outside `' '..='~'` replaced by `@`; `I` prints the value converted by SQLite to a 64-bit
//! integer (reals truncate toward zero, text takes its numeric prefix); `R` prints SQLite's
//! `%.3f` of the value converted to a double (through `sqlite3_snprintf`, so rounding matches).
//! The reference prints `I` through a 32-bit `int`; the two agree for every value that fits in
//! 32 bits, which covers the whole corpus; we keep 64 bits so scripts can show rowids and sizes.

use super::md5::Md5;
use super::parser::SortMode;

/// A query's printed values, row after row.
#[derive(Clone, Debug, Default)]
pub struct Values {
    buf: String,
    ends: Vec<usize>,
}

impl Values {
    /// No values.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets every value, keeping the memory.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.ends.clear();
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when there are no values.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The printed value at `i`.
    pub fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.buf[start..self.ends[i]]
    }

    fn finish_value(&mut self) {
        self.ends.push(self.buf.len());
    }

    /// Appends an already printed value verbatim.
    pub fn push_str(&mut self, s: &str) {
        self.buf.push_str(s);
        self.finish_value();
    }

    /// Appends SQL NULL.
    pub fn push_null(&mut self) {
        self.push_str("NULL");
    }

    /// Appends a `T` value from SQLite's text bytes of it.
    pub fn push_text(&mut self, bytes: &[u8]) {
        let bytes = match bytes.iter().position(|&b| b == 0) {
            Some(nul) => &bytes[..nul],
            None => bytes,
        };
        if bytes.is_empty() {
            self.push_str("(empty)");
            return;
        }
        self.buf.reserve(bytes.len());
        for &b in bytes {
            self.buf.push(if (b' '..=b'~').contains(&b) {
                b as char
            } else {
                '@'
            });
        }
        self.finish_value();
    }

    /// Appends an `I` value.
    pub fn push_integer(&mut self, v: i64) {
        use std::fmt::Write;
        // Writing to a String cannot fail.
        let _ = write!(self.buf, "{v}");
        self.finish_value();
    }

    /// Appends an `R` value, printed by SQLite's own `%.3f` into a 200-byte buffer as the
    /// reference does (so even huge values are cut exactly where the reference cuts them).
    pub fn push_real(&mut self, v: f64) {
        let mut out = [0u8; 200];
        // SAFETY: the buffer is 200 bytes and we pass its length; the format takes one double.
        unsafe {
            rusqlite::ffi::sqlite3_snprintf(
                out.len() as std::os::raw::c_int,
                out.as_mut_ptr().cast(),
                c"%.3f".as_ptr(),
                v,
            );
        }
        let len = out.iter().position(|&b| b == 0).unwrap_or(out.len());
        // sqlite3_snprintf of a double prints ASCII only.
        for &b in &out[..len] {
            self.buf.push(b as char);
        }
        self.finish_value();
    }

    /// The order in which to present the values for `sort` with `columns` values per row:
    /// indices into this set. Sorting compares bytes, like `strcmp`.
    pub fn order(&self, sort: SortMode, columns: usize) -> Vec<usize> {
        let n = self.len();
        match sort {
            SortMode::NoSort => (0..n).collect(),
            SortMode::ValueSort => {
                let mut idx: Vec<usize> = (0..n).collect();
                idx.sort_by(|&a, &b| self.get(a).as_bytes().cmp(self.get(b).as_bytes()));
                idx
            }
            SortMode::RowSort => {
                let columns = columns.max(1);
                let mut rows: Vec<usize> = (0..n / columns).collect();
                rows.sort_by(|&a, &b| {
                    (0..columns)
                        .map(|c| {
                            self.get(a * columns + c)
                                .as_bytes()
                                .cmp(self.get(b * columns + c).as_bytes())
                        })
                        .find(|o| o.is_ne())
                        .unwrap_or(std::cmp::Ordering::Equal)
                });
                let mut idx = Vec::with_capacity(n);
                for r in rows {
                    idx.extend(r * columns..(r + 1) * columns);
                }
                idx
            }
        }
    }

    /// The MD5 (lowercase hex) of the values in `order`, each followed by `\n`.
    pub fn md5(&self, order: &[usize]) -> String {
        let mut h = Md5::new();
        for &i in order {
            h.update(self.get(i).as_bytes());
            h.update(b"\n");
        }
        h.hex_digest()
    }
}

/// The reference runner's one-line stand-in for a hashed result: `N values hashing to HEX`.
pub fn hash_line(count: usize, md5_hex: &str) -> String {
    format!("{count} values hashing to {md5_hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printing_rules() {
        let mut v = Values::new();
        v.push_null();
        v.push_text(b"");
        v.push_text(b"a\tb\x7f\xc3\xa9z");
        v.push_text(b"ab\0cd");
        v.push_text(b"\0cd");
        v.push_integer(-42);
        v.push_real(2.0 / 3.0);
        v.push_real(-0.0005);
        v.push_real(1e20);
        let got: Vec<&str> = (0..v.len()).map(|i| v.get(i)).collect();
        assert_eq!(
            got,
            [
                "NULL",
                "(empty)",
                "a@b@@@z",
                "ab",
                "(empty)",
                "-42",
                "0.667",
                "-0.001",
                "100000000000000000000.000"
            ]
        );
    }

    #[test]
    fn sorting_is_bytewise_by_row_and_by_value() {
        let mut v = Values::new();
        for s in ["b", "1", "a", "2", "a", "10", "B", "0"] {
            v.push_str(s);
        }
        let show = |o: Vec<usize>| o.into_iter().map(|i| v.get(i)).collect::<Vec<_>>();
        assert_eq!(
            show(v.order(SortMode::RowSort, 2)),
            ["B", "0", "a", "10", "a", "2", "b", "1"]
        );
        assert_eq!(
            show(v.order(SortMode::ValueSort, 2)),
            ["0", "1", "10", "2", "B", "a", "a", "b"]
        );
        assert_eq!(
            show(v.order(SortMode::NoSort, 2)),
            ["b", "1", "a", "2", "a", "10", "B", "0"]
        );
    }

    /// The hash of the values 1..=10 (checked against coreutils: `seq 1 10 | md5sum`).
    #[test]
    fn hash_of_known_values() {
        let mut v = Values::new();
        for i in 1..=10 {
            v.push_integer(i);
        }
        let order = v.order(SortMode::NoSort, 1);
        assert_eq!(
            hash_line(v.len(), &v.md5(&order)),
            "10 values hashing to 3b0332e02daabf31651a5a0d81ba830a"
        );
    }
}
