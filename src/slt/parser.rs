//! Parsing sqllogictest scripts into records, following the reference runner's reading rules.
//!
//! The rules (those of SQLite's `sqllogictest.c`): a line ending in `\r\n` loses its `\r`; a line
//! whose first character is `#` is a comment and is invisible (it neither belongs to nor ends a
//! record); a line of only whitespace is blank; records are separated by blank lines; the first
//! line of a record is split on whitespace into tokens; `skipif ENGINE` / `onlyif ENGINE` lines
//! (anything after the engine name, such as `# a comment`, is ignored) guard the record that
//! follows them. Lines after a one-line record (`hash-threshold`, `halt`, `control`) up to the
//! next blank line are ignored, as the reference does.
//!
//! Parsing never fails as a whole: a malformed record becomes [`RecordKind::Invalid`] with its
//! line and a message, so the runner reports it as a failure at `file:line` and goes on.

/// What a guard line asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// `skipif ENGINE`: skip the record when the engine under test is `ENGINE`.
    SkipIf(String),
    /// `onlyif ENGINE`: run the record only when the engine under test is `ENGINE`.
    OnlyIf(String),
}

impl Condition {
    /// True when this guard says to skip the record on an engine named `engine`
    /// (names compare case-insensitively, as in the reference).
    pub fn skips(&self, engine: &str) -> bool {
        match self {
            Condition::SkipIf(e) => e.eq_ignore_ascii_case(engine),
            Condition::OnlyIf(e) => !e.eq_ignore_ascii_case(engine),
        }
    }
}

/// The type letter of one result column; it decides how values are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    /// `T`: the value as text.
    Text,
    /// `I`: the value as a 64-bit integer.
    Integer,
    /// `R`: the value as a real with three decimals (`%.3f`).
    Real,
}

/// How a query's values are ordered before they are compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortMode {
    /// In the order the query returned them.
    NoSort,
    /// Rows sorted by their printed values, column by column (byte order).
    RowSort,
    /// Every value sorted on its own (byte order).
    ValueSort,
}

/// Whether a statement must succeed or fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// `statement ok`.
    Ok,
    /// `statement error`.
    Error,
}

/// The expected output of a query: the lines after `----`, one value (or one hash line) per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedOutput {
    /// Line number of the first expected line (the line after `----`).
    pub line: usize,
    /// The lines, exactly as written (without line ending).
    pub lines: Vec<String>,
}

/// Our own directives (`control ...`): kvsqlite-only, unknown to the reference runner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// `control restart`: close the database and open it again from its store with every cache
    /// dropped (under `--native`: reopen the file).
    Restart,
}

/// What a record does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// `statement ok|error` followed by SQL (every statement in it is run).
    Statement {
        /// Success or failure expected.
        expect: Expect,
        /// The SQL, lines joined with `\n`.
        sql: String,
    },
    /// `query TYPES [SORT [LABEL]]`, SQL, then `----` and the expected values.
    Query {
        /// One type per result column.
        types: Vec<ColumnType>,
        /// Ordering applied before comparing.
        sort: SortMode,
        /// Queries sharing a label must produce the same hash.
        label: Option<String>,
        /// The SQL, lines joined with `\n`.
        sql: String,
        /// Line number of the SQL's last line (where `----` and results follow).
        sql_end_line: usize,
        /// `None` when the record has no `----` line: the query must only succeed.
        expected: Option<ExpectedOutput>,
    },
    /// `hash-threshold N`: results with more than N values are compared by hash (0: never).
    HashThreshold(usize),
    /// `halt`: stop reading the script.
    Halt,
    /// `control ...`: one of our directives.
    Control(Control),
    /// A record that could not be parsed; the runner reports it as a failure.
    Invalid {
        /// What is wrong.
        message: String,
    },
}

/// One record of a script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// 1-based line number of the record's first line (after any guards).
    pub line: usize,
    /// The `skipif`/`onlyif` guards in front of it.
    pub conditions: Vec<Condition>,
    /// What it does.
    pub kind: RecordKind,
    /// 1-based line number of the record's last line (before the blank line that ends it).
    pub end_line: usize,
}

impl Record {
    /// True when the guards say to skip this record on `engine`.
    pub fn skipped_on(&self, engine: &str) -> bool {
        self.conditions.iter().any(|c| c.skips(engine))
    }
}

/// A line of the script after comment removal.
struct Line<'a> {
    number: usize,
    text: &'a str,
}

impl Line<'_> {
    fn is_blank(&self) -> bool {
        self.text.bytes().all(|b| b.is_ascii_whitespace())
    }
}

/// Splits the script into lines, dropping `\r` before `\n` and comment lines.
fn lines(script: &str) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    let mut rest = script;
    let mut number = 0;
    while !rest.is_empty() {
        number += 1;
        let (raw, next) = match rest.find('\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        rest = next;
        let text = raw.strip_suffix('\r').unwrap_or(raw);
        if text.starts_with('#') {
            continue;
        }
        out.push(Line { number, text });
    }
    out
}

/// Parses a whole script. Never fails: malformed records come back as [`RecordKind::Invalid`].
pub fn parse(script: &str) -> Vec<Record> {
    let lines = lines(script);
    let mut records = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].is_blank() {
            i += 1;
            continue;
        }
        let mut conditions = Vec::new();
        let mut tokens: Vec<&str> = lines[i].text.split_ascii_whitespace().take(4).collect();
        let mut guard_error = None;
        while matches!(tokens.first(), Some(&"skipif") | Some(&"onlyif")) {
            let engine = tokens.get(1).copied().unwrap_or("");
            if engine.is_empty() {
                guard_error = Some(format!("`{}` names no engine", tokens[0]));
            }
            conditions.push(if tokens[0] == "skipif" {
                Condition::SkipIf(engine.to_string())
            } else {
                Condition::OnlyIf(engine.to_string())
            });
            if i + 1 >= lines.len() || lines[i + 1].is_blank() {
                guard_error = Some("a skipif/onlyif guard is not followed by a record".into());
                tokens.clear();
                break;
            }
            i += 1;
            tokens = lines[i].text.split_ascii_whitespace().take(4).collect();
        }
        let line = lines[i].number;
        i += 1;
        let kind = if let Some(message) = guard_error {
            RecordKind::Invalid { message }
        } else {
            parse_record(&tokens, &lines, &mut i)
        };
        // Skip the rest of the record up to the next blank line.
        while i < lines.len() && !lines[i].is_blank() {
            i += 1;
        }
        records.push(Record {
            line,
            conditions,
            kind,
            end_line: lines[i - 1].number,
        });
    }
    records
}

/// Joins the non-blank lines from `*i` up to (not including) a blank line or a line equal to
/// `stop`, advancing `*i` past them.
fn take_sql(lines: &[Line<'_>], i: &mut usize, stop: Option<&str>) -> String {
    let mut sql = String::new();
    while *i < lines.len() && !lines[*i].is_blank() && Some(lines[*i].text) != stop {
        if !sql.is_empty() {
            sql.push('\n');
        }
        sql.push_str(lines[*i].text);
        *i += 1;
    }
    sql
}

fn parse_record(tokens: &[&str], lines: &[Line<'_>], i: &mut usize) -> RecordKind {
    let invalid = |message: String| RecordKind::Invalid { message };
    match tokens.first().copied().unwrap_or("") {
        "statement" => {
            let expect = match tokens.get(1).copied() {
                Some("ok") => Expect::Ok,
                Some("error") => Expect::Error,
                other => {
                    return invalid(format!(
                        "statement argument should be `ok` or `error`, got {:?}",
                        other.unwrap_or("")
                    ))
                }
            };
            let sql = take_sql(lines, i, None);
            if sql.is_empty() {
                return invalid("statement record has no SQL".into());
            }
            RecordKind::Statement { expect, sql }
        }
        "query" => {
            let type_str = tokens.get(1).copied().unwrap_or("");
            if type_str.is_empty() {
                return invalid("query record has no type string".into());
            }
            let mut types = Vec::with_capacity(type_str.len());
            for c in type_str.chars() {
                types.push(match c {
                    'T' => ColumnType::Text,
                    'I' => ColumnType::Integer,
                    'R' => ColumnType::Real,
                    other => {
                        return invalid(format!(
                            "unknown type character {other:?} in type string (expected T, I or R)"
                        ))
                    }
                });
            }
            let sort = match tokens.get(2).copied() {
                None | Some("nosort") => SortMode::NoSort,
                Some("rowsort") => SortMode::RowSort,
                Some("valuesort") => SortMode::ValueSort,
                Some(other) => return invalid(format!("unknown sort method {other:?}")),
            };
            let label = tokens.get(3).map(|s| s.to_string());
            let sql = take_sql(lines, i, Some("----"));
            if sql.is_empty() {
                return invalid("query record has no SQL".into());
            }
            let sql_end_line = lines[*i - 1].number;
            let expected = if *i < lines.len() && lines[*i].text == "----" {
                *i += 1;
                let line = lines.get(*i).map_or(0, |l| l.number);
                let mut out = Vec::new();
                while *i < lines.len() && !lines[*i].is_blank() {
                    out.push(lines[*i].text.to_string());
                    *i += 1;
                }
                Some(ExpectedOutput { line, lines: out })
            } else {
                None
            };
            RecordKind::Query {
                types,
                sort,
                label,
                sql,
                sql_end_line,
                expected,
            }
        }
        "hash-threshold" => match tokens.get(1).and_then(|t| t.parse::<usize>().ok()) {
            Some(n) => RecordKind::HashThreshold(n),
            None => invalid("hash-threshold needs a non-negative integer".into()),
        },
        "halt" => RecordKind::Halt,
        "control" => match tokens.get(1).copied() {
            Some("restart") => RecordKind::Control(Control::Restart),
            other => invalid(format!(
                "unknown control directive {:?} (known: restart)",
                other.unwrap_or("")
            )),
        },
        other => invalid(format!("unknown record type {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_guards_comments_and_crlf() {
        let script = "# leading comment\r\nhash-threshold 3\r\n\r\nstatement ok\r\nCREATE TABLE t(a)\r\n\r\n\
            skipif mysql # not there\r\nonlyif sqlite\r\nquery IT rowsort lbl\r\nSELECT 1,\r\n# inner comment\r\n'x'\r\n----\r\n1\r\nx\r\n\r\n\
            statement error\nnonsense\n\nonlyif oracle\nhalt\n\ncontrol restart\n\nquery I\nSELECT 1\n";
        let recs = parse(script);
        assert_eq!(recs.len(), 7);
        assert_eq!(recs[0].kind, RecordKind::HashThreshold(3));
        assert_eq!(recs[0].line, 2);
        assert_eq!(
            recs[1].kind,
            RecordKind::Statement {
                expect: Expect::Ok,
                sql: "CREATE TABLE t(a)".into()
            }
        );
        assert_eq!(recs[2].line, 9);
        assert_eq!(
            recs[2].conditions,
            vec![
                Condition::SkipIf("mysql".into()),
                Condition::OnlyIf("sqlite".into())
            ]
        );
        assert_eq!(
            recs[2].kind,
            RecordKind::Query {
                types: vec![ColumnType::Integer, ColumnType::Text],
                sort: SortMode::RowSort,
                label: Some("lbl".into()),
                sql: "SELECT 1,\n'x'".into(),
                sql_end_line: 12,
                expected: Some(ExpectedOutput {
                    line: 14,
                    lines: vec!["1".into(), "x".into()]
                }),
            }
        );
        assert!(!recs[2].skipped_on("sqlite"));
        assert!(recs[2].skipped_on("mysql"));
        assert_eq!(
            recs[3].kind,
            RecordKind::Statement {
                expect: Expect::Error,
                sql: "nonsense".into()
            }
        );
        assert_eq!(recs[4].kind, RecordKind::Halt);
        assert!(recs[4].skipped_on("SQLite"));
        assert_eq!(recs[5].kind, RecordKind::Control(Control::Restart));
        assert_eq!(recs[6].line, 25);
        assert_eq!(recs[2].end_line, 15);
        assert_eq!(recs[6].end_line, 26);
    }

    #[test]
    fn query_without_dashes_has_no_expectation() {
        let recs = parse("query I nosort\nSELECT 1\n");
        assert!(matches!(
            &recs[0].kind,
            RecordKind::Query { expected: None, sql, .. } if sql == "SELECT 1"
        ));
    }

    #[test]
    fn malformed_records_are_invalid_with_their_line() {
        let recs = parse(
            "\n\nquery X\nSELECT 1\n\nstatement maybe\nSELECT 1\n\nfrobnicate\n\nquery I sideways\nSELECT 1\n\n\
             control reboot\n\nskipif sqlite\n\nhash-threshold x\n",
        );
        let got: Vec<(usize, bool)> = recs
            .iter()
            .map(|r| (r.line, matches!(r.kind, RecordKind::Invalid { .. })))
            .collect();
        assert_eq!(
            got,
            vec![
                (3, true),
                (6, true),
                (9, true),
                (11, true),
                (14, true),
                (16, true),
                (18, true)
            ]
        );
    }
}
