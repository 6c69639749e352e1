//! The checked-in list of corpus records that kvsqlite cannot match, each with its reason.
//!
//! A listed record that fails is reported as *expected-different* (counted on its own, never as
//! passed and never silently skipped); a listed record that passes is reported as passing, with
//! a note that its entry is stale.
//!
//! File format (`sql/known-deviations.txt`): one entry per line, `PATH:LINE REASON`; `PATH` is
//! matched against the end of the script's path, whole components only (so
//! `evidence/in1.test:42` matches `../shared/corpus/sqllogictest/evidence/in1.test` line 42);
//! `LINE` is the record's line (the `statement`/`query` line, after any guards); blank lines and
//! lines starting with `#` are ignored. A line without a reason is an error.

use std::path::Path;

/// One listed deviation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deviation {
    /// Path suffix, `/`-separated.
    pub path: String,
    /// Record line.
    pub line: usize,
    /// Why kvsqlite differs.
    pub reason: String,
}

/// The whole list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KnownDeviations {
    entries: Vec<Deviation>,
}

impl KnownDeviations {
    /// No deviations.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Parses the list; `source` names it in errors. Errors carry `source:line`.
    pub fn parse(text: &str, source: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| format!("{source}:{}: {why}: {line:?}", n + 1);
            let (loc, reason) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| bad("expected `PATH:LINE REASON`"))?;
            let (path, num) = loc
                .rsplit_once(':')
                .ok_or_else(|| bad("expected `PATH:LINE REASON`"))?;
            let num: usize = num
                .parse()
                .map_err(|_| bad("the line number is not a number"))?;
            let reason = reason.trim();
            if path.is_empty() || reason.is_empty() {
                return Err(bad("every entry needs a path and a reason"));
            }
            entries.push(Deviation {
                path: path.replace('\\', "/"),
                line: num,
                reason: reason.to_string(),
            });
        }
        Ok(KnownDeviations { entries })
    }

    /// Reads and parses a list file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The entries.
    pub fn entries(&self) -> &[Deviation] {
        &self.entries
    }

    /// The reason listed for the record at `line` of `script`, if any.
    pub fn lookup(&self, script: &Path, line: usize) -> Option<&str> {
        let script = script.to_string_lossy().replace('\\', "/");
        self.entries
            .iter()
            .find(|d| {
                d.line == line
                    && (script == d.path
                        || script
                            .strip_suffix(d.path.as_str())
                            .is_some_and(|head| head.ends_with('/')))
            })
            .map(|d| d.reason.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_lookup() {
        let list = KnownDeviations::parse(
            "# header\n\nevidence/in1.test:42 reason one\nselect1.test:7\tother reason\n",
            "list",
        )
        .unwrap();
        assert_eq!(list.entries().len(), 2);
        let p = Path::new("../shared/corpus/sqllogictest/evidence/in1.test");
        assert_eq!(list.lookup(p, 42), Some("reason one"));
        assert_eq!(list.lookup(p, 43), None);
        assert_eq!(
            list.lookup(Path::new("x/select1.test"), 7),
            Some("other reason")
        );
        assert_eq!(
            list.lookup(Path::new("select1.test"), 7),
            Some("other reason")
        );
        assert_eq!(list.lookup(Path::new("xselect1.test"), 7), None);
    }

    #[test]
    fn malformed_entries_name_their_line() {
        let e = KnownDeviations::parse("ok.test:1 fine\nnoline reason\n", "l.txt").unwrap_err();
        assert!(e.starts_with("l.txt:2: expected `PATH:LINE REASON`"), "{e}");
        let e = KnownDeviations::parse("a.test:x reason\n", "l.txt").unwrap_err();
        assert!(
            e.starts_with("l.txt:1: the line number is not a number"),
            "{e}"
        );
        let e = KnownDeviations::parse("a.test:3\n", "l.txt").unwrap_err();
        assert!(e.starts_with("l.txt:1: expected"), "{e}");
    }
}
