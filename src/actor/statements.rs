//! Splitting SQL text into statements, exactly where SQLite itself would see them end.
//!
//! Why it exists: migrations and `kvsqlite run` execute files statement by statement, so that a
//! failure names the statement and its line, and a hand-written splitter gets strings, quoted
//! identifiers, comments and `CREATE TRIGGER … BEGIN … END;` wrong. [`split`] asks SQLite's own
//! `sqlite3_complete` at every `;` instead, so the statements it returns are the ones SQLite's
//! tokenizer sees. [`execute_one`] runs one of them to completion.

use rusqlite::{ffi, Connection};

/// One complete SQL statement cut out of a text by [`split`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// 1-based line (counted by `\n`, so CRLF text counts the same) of the statement's first
    /// character that is neither blank nor part of a comment.
    pub line: usize,
    /// The statement text, from that first character up to and including its closing `;`
    /// (comments inside the statement are kept). The last statement of a text that does not end
    /// with `;` has none, and its trailing blanks are removed.
    pub sql: String,
}

/// The bytes SQLite's tokenizer treats as blank (`complete.c`, `tokenize.c`).
fn is_blank(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0c' | b'\r')
}

/// The index of the first byte in `bytes[from..end]` that is neither blank nor in a comment
/// (`-- …` up to the end of the line, `/* … */`; an unterminated one runs to `end`), or `end`.
fn skip_blank(bytes: &[u8], from: usize, end: usize) -> usize {
    let mut i = from;
    while i < end {
        let b = bytes[i];
        let next = bytes.get(i + 1).copied().filter(|_| i + 1 < end);
        if is_blank(b) {
            i += 1;
        } else if b == b'-' && next == Some(b'-') {
            i = bytes[i..end]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(end, |p| i + p + 1);
        } else if b == b'/' && next == Some(b'*') {
            i = bytes[i + 2..end]
                .windows(2)
                .position(|w| w == b"*/")
                .map_or(end, |p| i + 2 + p + 2);
        } else {
            return i;
        }
    }
    end
}

/// Whether SQLite considers `candidate` one or more complete statements. NUL bytes are passed
/// as `0x01`, a byte SQLite's tokenizer treats as an ordinary (non-blank) character.
fn is_complete(buf: &mut Vec<u8>, candidate: &[u8]) -> bool {
    buf.clear();
    buf.extend(candidate.iter().map(|&b| if b == 0 { 1 } else { b }));
    buf.push(0);
    // SAFETY: `buf` is NUL-terminated (and holds no other NUL), lives across the call, and
    // `sqlite3_complete` only reads up to the terminator.
    unsafe { ffi::sqlite3_complete(buf.as_ptr().cast()) != 0 }
}

/// Counts lines incrementally: positions are asked for in increasing order.
struct LineCounter<'a> {
    bytes: &'a [u8],
    pos: usize,
    line: usize,
}

impl LineCounter<'_> {
    fn line_at(&mut self, pos: usize) -> usize {
        let newlines = self.bytes[self.pos..pos].iter().filter(|&&b| b == b'\n');
        self.line += newlines.count();
        self.pos = pos;
        self.line
    }
}

/// Splits `text` into its complete statements, in order.
///
/// Guarantees:
/// - A statement ends at the first `;` at which SQLite's `sqlite3_complete` says the text since
///   the previous statement is complete, so a `;` inside a string, a quoted identifier, a comment
///   or a trigger body never ends one.
/// - Pieces that hold only blanks, comments and a `;` (empty statements) are dropped.
/// - Text after the last complete statement that holds SQL (not only blanks and comments) is a
///   last statement without `;`, even when it is incomplete (an unterminated string, say):
///   running it then fails in SQLite with SQLite's own message, nothing is silently skipped.
/// - NUL bytes never panic: a NUL is treated as an ordinary non-blank character, kept in the
///   statement text, so a piece holding one is never dropped as blank. SQLite itself would stop
///   reading at a NUL; [`execute_one`] refuses such a statement with an error.
/// - Concatenating the statements' texts gives back `text` minus the blanks and comments
///   between statements.
///
/// Cost: each `;` costs one `sqlite3_complete` over the text since the previous statement, so
/// many `;` inside one long statement cost time quadratic in its length (never unbounded memory).
pub fn split(text: &str) -> Vec<Statement> {
    let bytes = text.as_bytes();
    let mut lines = LineCounter {
        bytes,
        pos: 0,
        line: 1,
    };
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let mut start = 0;
    let mut push = |from: usize, end: usize, out: &mut Vec<Statement>| {
        let first = skip_blank(bytes, from, end);
        let sql = text[first..end].trim_end_matches(|c: char| c.is_ascii() && is_blank(c as u8));
        if sql.is_empty() || sql == ";" {
            return;
        }
        out.push(Statement {
            line: lines.line_at(first),
            sql: sql.to_owned(),
        });
    };
    for (i, &b) in bytes.iter().enumerate() {
        if b == b';' && is_complete(&mut buf, &bytes[start..=i]) {
            push(start, i + 1, &mut out);
            start = i + 1;
        }
    }
    push(start, bytes.len(), &mut out);
    out
}

/// Runs exactly one SQL statement on `conn` to completion, stepping through (and discarding)
/// any rows it returns, so a `SELECT` or a `PRAGMA` works as well as DDL and DML. Returns the
/// number of rows it returned.
///
/// Guarantees: text with no SQL (blanks, comments, a lone `;`) runs nothing and returns 0; text
/// holding more than one statement is refused ([`rusqlite::Error::MultipleStatement`]) before
/// anything runs; text holding a NUL byte is refused ([`rusqlite::Error::NulError`]) before
/// anything runs, because SQLite would silently ignore everything after the NUL.
pub fn execute_one(conn: &Connection, sql: &str) -> rusqlite::Result<u64> {
    if let Err(nul) = std::ffi::CString::new(sql) {
        return Err(rusqlite::Error::NulError(nul));
    }
    let mut stmt = match conn.prepare(sql) {
        Ok(stmt) => stmt,
        Err(rusqlite::Error::Empty) => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut rows = stmt.raw_query();
    let mut n = 0;
    while rows.next()?.is_some() {
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asserts that `split(text)` gives exactly `want` as (line, text) pairs.
    #[track_caller]
    fn check(text: &str, want: &[(usize, &str)]) {
        let got = split(text);
        let got: Vec<(usize, &str)> = got.iter().map(|s| (s.line, s.sql.as_str())).collect();
        assert_eq!(got, want, "split({text:?})");
    }

    #[test]
    fn one_statement_per_semicolon_with_lines() {
        let text = "CREATE TABLE a(x);\nINSERT INTO a VALUES(1);\n\n  SELECT x\n  FROM a;\n";
        assert_eq!(
            split(text),
            vec![
                Statement {
                    line: 1,
                    sql: "CREATE TABLE a(x);".into()
                },
                Statement {
                    line: 2,
                    sql: "INSERT INTO a VALUES(1);".into()
                },
                Statement {
                    line: 4,
                    sql: "SELECT x\n  FROM a;".into()
                },
            ]
        );
    }

    #[test]
    fn semicolons_inside_strings_and_quoted_identifiers() {
        let text =
            "INSERT INTO a VALUES('x;y', 'it''s;');\nSELECT \"we;ird\", [b;c], `d;e` FROM t;";
        check(
            text,
            &[
                (1, "INSERT INTO a VALUES('x;y', 'it''s;');"),
                (2, "SELECT \"we;ird\", [b;c], `d;e` FROM t;"),
            ],
        );
        check(
            "INSERT INTO t VALUES('héllo;wörld'); SELECT 'ü';",
            &[
                (1, "INSERT INTO t VALUES('héllo;wörld');"),
                (1, "SELECT 'ü';"),
            ],
        );
    }

    #[test]
    fn comments_are_skipped_between_statements_and_kept_inside() {
        let text = "-- header; with a semicolon\n/* block;\n comment */\nSELECT 1; -- trailing; comment\n\n/* only a comment; */\nSELECT -- inner;\n 2 /* ; */;\n-- the end;";
        check(
            text,
            &[(4, "SELECT 1;"), (7, "SELECT -- inner;\n 2 /* ; */;")],
        );
        check(
            "SELECT 1; /* c */ SELECT 2;",
            &[(1, "SELECT 1;"), (1, "SELECT 2;")],
        );
    }

    #[test]
    fn trigger_bodies_stay_whole() {
        let text = "CREATE TABLE a(x);\nCREATE TRIGGER t AFTER INSERT ON a\nBEGIN\n  INSERT INTO b VALUES(new.x);\n  UPDATE c SET n = n + 1;\nEND;\nINSERT INTO a VALUES(1);";
        let trigger = "CREATE TRIGGER t AFTER INSERT ON a\nBEGIN\n  INSERT INTO b VALUES(new.x);\n  UPDATE c SET n = n + 1;\nEND;";
        let want = [
            (1, "CREATE TABLE a(x);"),
            (2, trigger),
            (7, "INSERT INTO a VALUES(1);"),
        ];
        check(text, &want);
        // A trigger runs: the split statements execute on SQLite one by one.
        let conn = Connection::open_in_memory().unwrap();
        let full =
            "CREATE TABLE b(x); CREATE TABLE c(n); INSERT INTO c VALUES(0);\n".to_owned() + text;
        for s in split(&full) {
            execute_one(&conn, &s.sql).unwrap();
        }
        let n: i64 = conn.query_row("SELECT n FROM c", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn trailing_text_without_semicolon_is_a_last_statement() {
        check(
            "SELECT 1;\nSELECT 2 -- no end\n\n",
            &[(1, "SELECT 1;"), (2, "SELECT 2 -- no end")],
        );
        check("SELECT 'a;b", &[(1, "SELECT 'a;b")]);
        check("SELECT 1; /* open; comment", &[(1, "SELECT 1;")]);
    }

    #[test]
    fn crlf_lines() {
        check(
            "SELECT 1;\r\n\r\n-- c;\r\nSELECT\r\n 2;\r\nSELECT 3\r\n",
            &[(1, "SELECT 1;"), (4, "SELECT\r\n 2;"), (6, "SELECT 3")],
        );
    }

    #[test]
    fn blank_comment_only_and_empty_statements_are_dropped() {
        for text in [
            "",
            "  \n\t",
            ";",
            ";; \n ;",
            "-- x",
            "/* a */ ; -- b;",
            "/* open",
        ] {
            assert_eq!(split(text), vec![], "{text:?}");
        }
        check(
            ";;SELECT 1;;\n;SELECT 2;",
            &[(1, "SELECT 1;"), (2, "SELECT 2;")],
        );
    }

    #[test]
    fn nul_bytes_are_ordinary_characters_and_refused_at_execution() {
        let text = "SELECT 1;\0;\nSELECT '\0;';";
        check(text, &[(1, "SELECT 1;"), (1, "\0;"), (2, "SELECT '\0;';")]);
        let conn = Connection::open_in_memory().unwrap();
        for s in &split(text)[1..] {
            assert!(matches!(
                execute_one(&conn, &s.sql),
                Err(rusqlite::Error::NulError(_))
            ));
        }
    }

    #[test]
    fn execute_one_steps_rows_and_refuses_several_statements() {
        let conn = Connection::open_in_memory().unwrap();
        assert_eq!(execute_one(&conn, "CREATE TABLE a(x);").unwrap(), 0);
        assert_eq!(
            execute_one(&conn, "INSERT INTO a VALUES(1),(2),(3);").unwrap(),
            0
        );
        assert_eq!(execute_one(&conn, "SELECT x FROM a;").unwrap(), 3);
        assert_eq!(execute_one(&conn, "PRAGMA user_version;").unwrap(), 1);
        assert_eq!(execute_one(&conn, " -- nothing\n;").unwrap(), 0);
        assert!(matches!(
            execute_one(&conn, "DELETE FROM a; DELETE FROM a;"),
            Err(rusqlite::Error::MultipleStatement)
        ));
        let n: i64 = conn
            .query_row("SELECT count(*) FROM a", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 3);
    }
}
