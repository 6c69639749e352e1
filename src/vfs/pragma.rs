//! What the VFS says about a `PRAGMA` before SQLite runs it (SQLite hands every pragma to the
//! main file's `xFileControl` as `SQLITE_FCNTL_PRAGMA`).
//!
//! Why it exists: a few settings would break kvsqlite's guarantees (`synchronous=OFF` drops
//! the atomic-write bracket, WAL and in-memory journals drop crash safety), and `page_size`
//! must be known to the VFS when it changes. Each value is read exactly as SQLite reads it, so
//! no spelling SQLite accepts slips past the check.

use super::layout;

/// What kvsqlite says about a pragma before SQLite runs it: `Some(message)` refuses it.
///
/// Refused: any `synchronous` value SQLite would turn into OFF (`OFF`, `NO`, `FALSE`, and every
/// number SQLite maps to OFF, see [`synchronous_is_off`]), and any `journal_mode` but the
/// rollback modes `DELETE`, `TRUNCATE` and `PERSIST`.
pub fn refused_pragma(name: &str, value: Option<&str>) -> Option<String> {
    let value = value?.trim().trim_matches(|c| c == '\'' || c == '"');
    let lname = name.to_ascii_lowercase();
    if lname == "synchronous" && synchronous_is_off(value) {
        return Some(
            "kvsqlite refuses PRAGMA synchronous=OFF: it would drop the atomic commit and risk corruption; use NORMAL".into(),
        );
    }
    if lname == "journal_mode" {
        let v = value.to_ascii_lowercase();
        if !matches!(v.as_str(), "delete" | "truncate" | "persist") {
            return Some(format!(
                "kvsqlite refuses PRAGMA journal_mode={value}: only the rollback modes DELETE, TRUNCATE and PERSIST keep commits atomic and crash-safe (WAL is not supported)"
            ));
        }
    }
    None
}

/// Whether `PRAGMA synchronous = value` sets OFF, computed as SQLite's pragma does: a value
/// starting with a digit is read by `sqlite3Atoi` (so `7`, `8`, `16`, `0x8` and an overflowing
/// `99999999999`, read as 0, are OFF too), a word by its table (`off`, `no`, `false` are 0;
/// unknown words are NORMAL); the level is then `(n + 1) & 7`, 0 taken as 1, and 1 is OFF.
pub fn synchronous_is_off(value: &str) -> bool {
    let n = if value.starts_with(|c: char| c.is_ascii_digit()) {
        sqlite_atoi(value)
    } else if ["off", "no", "false"]
        .iter()
        .any(|w| value.eq_ignore_ascii_case(w))
    {
        0
    } else {
        return false;
    };
    let level = n.wrapping_add(1) & 7;
    level == 0 || level == 1
}

/// The page size a `PRAGMA page_size = value` sets, when SQLite would accept it: the value
/// read as SQLite's `sqlite3Atoi` reads it, if that is a power of two in 512..=65536. Other
/// values give `None`: SQLite ignores them, and so does the VFS.
pub fn page_size_value(name: &str, value: Option<&str>) -> Option<u32> {
    if !name.eq_ignore_ascii_case("page_size") {
        return None;
    }
    let n = u32::try_from(sqlite_atoi(value?)).ok()?;
    layout::valid_chunk_size(n).then_some(n)
}

/// `value` as SQLite's `sqlite3Atoi` reads it (`sqlite3GetInt32`): an optional sign then
/// leading decimal digits (at most 10 after leading zeros, within `i32`), or, without a sign,
/// `0x` and at most 8 hex digits after leading zeros (below `0x80000000`); trailing text is
/// ignored, and anything else, an overflow included, reads as 0.
fn sqlite_atoi(value: &str) -> i32 {
    let v = value.as_bytes();
    let strip_zeros = |d: &[u8]| -> usize { d.iter().take_while(|&&c| c == b'0').count() };
    if let [b'0', b'x' | b'X', rest @ ..] = v {
        if rest.first().is_some_and(u8::is_ascii_hexdigit) {
            let rest = &rest[strip_zeros(rest)..];
            let n = rest.iter().take_while(|c| c.is_ascii_hexdigit()).count();
            if n > 8 {
                return 0;
            }
            let u = rest[..n]
                .iter()
                .fold(0u32, |u, &c| u * 16 + (c as char).to_digit(16).unwrap_or(0));
            return i32::try_from(u).unwrap_or(0);
        }
    }
    let (neg, rest) = match v {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, v),
    };
    if !rest.first().is_some_and(u8::is_ascii_digit) {
        return 0;
    }
    let rest = &rest[strip_zeros(rest)..];
    let n = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    if n > 10 {
        return 0;
    }
    let magnitude = rest[..n]
        .iter()
        .fold(0i64, |m, &c| m * 10 + i64::from(c - b'0'));
    let signed = if neg { -magnitude } else { magnitude };
    i32::try_from(signed).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::{page_size_value, refused_pragma, sqlite_atoi, synchronous_is_off};

    #[test]
    fn page_size_values_parse_as_sqlite_accepts_them() {
        let v = |s: &str| page_size_value("page_size", Some(s));
        assert_eq!(v("8192"), Some(8192));
        assert_eq!(v("+512"), Some(512));
        assert_eq!(v("065536"), Some(65536));
        assert_eq!(v("0x400"), Some(1024));
        assert_eq!(page_size_value("PAGE_SIZE", Some("2048")), Some(2048));
        // As sqlite3Atoi: trailing text is ignored, leading space or a sign before 0x is not.
        assert_eq!(v("8192abc"), Some(8192));
        assert_eq!(v("8192.0"), Some(8192));
        assert_eq!(v("0x2000zz"), Some(8192));
        assert_eq!(v("0x000000002000"), Some(8192));
        for bad in [
            "",
            "0",
            "256",
            "1000",
            "131072",
            "-1024",
            "abc",
            " 8192",
            "+0x2000",
            "0x",
            "0x1G",
            "99999999999",
            "0x123456789",
        ] {
            assert_eq!(v(bad), None, "{bad:?}");
        }
        assert_eq!(page_size_value("page_size", None), None);
        assert_eq!(page_size_value("cache_size", Some("8192")), None);
    }

    #[test]
    fn atoi_reads_as_sqlite_does() {
        for (text, n) in [
            ("0", 0),
            ("42abc", 42),
            ("-7", -7),
            ("+0008", 8),
            ("2147483647", 2147483647),
            ("2147483648", 0),
            ("-2147483648", i32::MIN),
            ("99999999999", 0),
            ("0x10", 16),
            ("0x7fffffff", i32::MAX),
            ("0x80000000", 0),
            ("+0x10", 0),
            ("x", 0),
            ("", 0),
        ] {
            assert_eq!(sqlite_atoi(text), n, "{text:?}");
        }
    }

    #[test]
    fn every_value_sqlite_turns_into_synchronous_off_is_refused() {
        // (n + 1) & 7 is 0 or 1 for n ≡ 7 or 0 (mod 8): all OFF in SQLite's pragma.
        for off in [
            "OFF",
            "off",
            "No",
            "FALSE",
            "0",
            "00",
            "7",
            "8",
            "15",
            "16",
            "0x8",
            "0x0",
            "99999999999",
            "8.5",
            "'0'",
        ] {
            assert!(synchronous_is_off(off.trim_matches('\'')), "{off}");
            assert!(refused_pragma("synchronous", Some(off)).is_some(), "{off}");
        }
        for kept in [
            "1", "2", "3", "4", "6", "9", "NORMAL", "full", "extra", "on", "yes", "true", "-1",
            "+0", "bogus", "",
        ] {
            assert!(!synchronous_is_off(kept), "{kept}");
            assert!(
                refused_pragma("synchronous", Some(kept)).is_none(),
                "{kept}"
            );
        }
        assert!(refused_pragma("synchronous", None).is_none());
    }
}
