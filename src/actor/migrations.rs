//! Ordered, checksummed schema migrations for an actor's database.
//!
//! Why it exists: an actor's schema lives in its database, so every wake must bring the database
//! to the schema the code expects — applying each migration exactly once, in order, each in its
//! own transaction — and must refuse to start when what was applied no longer matches the files
//! (an edited or deleted migration), instead of running on a schema nobody wrote down.
//!
//! Files are named `NNNN_name.sql`: four or more ASCII digits (the migration's number), `_`, a
//! name of ASCII letters, digits, `_` or `-`, and `.sql`. The numbers of a list must be exactly
//! `1..=n`, in order. What was applied is recorded in [`TABLE`]
//! (`id INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL`): no wall-clock column,
//! so applying the same migrations to the same database always writes the same bytes.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension};
use sha2::{Digest, Sha256};

use super::statements;

/// The table that records the applied migrations.
pub const TABLE: &str = "_kvsqlite_migrations";

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS _kvsqlite_migrations(\
     id INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL)";

/// One migration: its number, its file name and its SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// The number its file name starts with (`0001_init.sql` → 1); the `id` it is recorded under.
    pub number: u32,
    /// The file name, e.g. `0001_init.sql`; errors name the migration by it.
    pub name: String,
    /// The SQL text, run statement by statement (see [`statements::split`]).
    pub sql: String,
}

impl Migration {
    /// A migration from a file name and its SQL (for a list embedded with `include_str!`).
    /// Fails with [`MigrationError::BadName`] unless `name` is `NNNN_name.sql` as described in
    /// the module documentation; the number is taken from the name.
    pub fn new(name: &str, sql: impl Into<String>) -> Result<Self, MigrationError> {
        let number = parse_name(name).ok_or_else(|| MigrationError::BadName {
            file: name.to_owned(),
        })?;
        Ok(Migration {
            number,
            name: name.to_owned(),
            sql: sql.into(),
        })
    }
}

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    /// The numbers of the migrations applied by this call, in the order they were applied.
    pub applied: Vec<u32>,
    /// How many migrations of the list had been applied before this call.
    pub already_applied: usize,
}

/// Why migrations could not be loaded, checked or applied. Every variant's `Display` is one line
/// that names the file (and, for [`MigrationError::Failed`], the line and the statement).
#[derive(Debug)]
pub enum MigrationError {
    /// Reading the directory or a file failed.
    Io {
        /// The directory or the file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A `.sql` file (or a [`Migration`]) whose name is not `NNNN_name.sql`, whose number does
    /// not fit a `u32`, or whose number differs from the one its name starts with.
    BadName {
        /// The file name (lossily converted when it is not UTF-8).
        file: String,
    },
    /// A migration file whose content is not UTF-8.
    NotUtf8 {
        /// The file name.
        file: String,
    },
    /// A number of `1..=n` that no migration has.
    Gap {
        /// The missing number.
        missing: u32,
        /// The file after the gap (the first with a higher number).
        next: String,
    },
    /// Two migrations with the same number.
    Duplicate {
        /// The number.
        number: u32,
        /// The file that comes first in the list.
        first: String,
        /// The other file.
        second: String,
    },
    /// A list whose numbers are `1..=n` but not in increasing order.
    OutOfOrder {
        /// The file whose number is lower than its predecessor's.
        file: String,
        /// Its predecessor in the list.
        after: String,
    },
    /// An applied migration whose SQL changed since it was applied.
    Edited {
        /// The migration's file name (as in the list).
        file: String,
        /// The checksum recorded when it was applied.
        applied: String,
        /// The checksum of its SQL now.
        current: String,
    },
    /// A migration recorded as applied that the list does not have.
    Missing {
        /// Its recorded id (number).
        id: i64,
        /// Its recorded file name.
        name: String,
    },
    /// A statement of a migration failed; the migration's transaction was rolled back.
    Failed {
        /// The migration's file name.
        file: String,
        /// The 1-based line of the statement in the file.
        line: usize,
        /// The statement's text.
        statement: String,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// Any other SQLite error (beginning, recording or committing a migration, reading the
    /// table); `file` names the migration when there is one.
    Sqlite {
        /// The migration being applied, if any.
        file: Option<String>,
        /// What was being done.
        action: &'static str,
        /// SQLite's error.
        source: rusqlite::Error,
    },
}

/// `statement` on one line as the query log shows it (whitespace collapsed, at most
/// [`super::query_log::SQL_CHARS`] characters), with `…` when it was cut.
fn one_line(statement: &str) -> String {
    let mut line = super::query_log::collapse(statement);
    let full = statement
        .split_whitespace()
        .map(|w| w.chars().count() + 1)
        .sum::<usize>()
        .saturating_sub(1);
    if full > line.chars().count() {
        line.push('…');
    }
    line
}

impl fmt::Display for MigrationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Self::BadName { file } => write!(
                f,
                "{file}: a migration must be named NNNN_name.sql (4+ digits, `_`, letters, digits, `_` or `-`)"
            ),
            Self::NotUtf8 { file } => write!(f, "{file}: the migration is not UTF-8 text"),
            Self::Gap { missing, next } => {
                write!(f, "{next}: no migration numbered {missing:04} before it")
            }
            Self::Duplicate {
                number,
                first,
                second,
            } => write!(f, "{second}: number {number:04} is also used by {first}"),
            Self::OutOfOrder { file, after } => {
                write!(f, "{file}: listed after {after}, whose number is higher")
            }
            Self::Edited {
                file,
                applied,
                current,
            } => write!(
                f,
                "{file}: already applied but edited since (checksum {applied} when applied, {current} now)"
            ),
            Self::Missing { id, name } => write!(
                f,
                "{name}: applied to this database (number {id:04}) but no longer among the migrations"
            ),
            Self::Failed {
                file,
                line,
                statement,
                source,
            } => write!(f, "{file}:{line}: {source} in `{}`", one_line(statement)),
            Self::Sqlite {
                file: Some(file),
                action,
                source,
            } => write!(f, "{file}: {action}: {source}"),
            Self::Sqlite {
                file: None,
                action,
                source,
            } => write!(f, "migrations: {action}: {source}"),
        }
    }
}

impl std::error::Error for MigrationError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            Self::Failed { source, .. } | Self::Sqlite { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Maps a SQLite error met while doing `action` (on migration `file`, if any) to
/// [`MigrationError::Sqlite`].
fn sqlite_error(
    file: Option<&str>,
    action: &'static str,
) -> impl FnOnce(rusqlite::Error) -> MigrationError {
    let file = file.map(str::to_owned);
    move |source| MigrationError::Sqlite {
        file,
        action,
        source,
    }
}

/// The number of a migration file name `NNNN_name.sql`, or `None` when it is not one.
fn parse_name(file: &str) -> Option<u32> {
    let stem = file.strip_suffix(".sql")?;
    let (digits, name) = stem.split_once('_')?;
    let valid_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if digits.len() < 4 || !digits.bytes().all(|b| b.is_ascii_digit()) || !valid_name {
        return None;
    }
    digits.parse().ok()
}

/// Loads the migrations of `dir`, sorted by number (then name).
///
/// Only files whose name ends in `.sql` count; other files, directories, and hidden files (name
/// starting with `.`, such as editor lock files) are ignored. A `.sql` file with a bad name
/// ([`MigrationError::BadName`]), content that is not UTF-8 ([`MigrationError::NotUtf8`]) or
/// that cannot be read ([`MigrationError::Io`]) is an error naming it. The list is not
/// validated: see [`validate`].
pub fn load_dir(dir: &Path) -> Result<Vec<Migration>, MigrationError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MigrationError::Io { path, source }
    };
    let mut list = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let Some(os_name) = path.file_name() else {
            continue;
        };
        let lossy = os_name.to_string_lossy().into_owned();
        if !lossy.ends_with(".sql") || lossy.starts_with('.') {
            continue;
        }
        if std::fs::metadata(&path).map_err(io(&path))?.is_dir() {
            continue;
        }
        let file = os_name.to_str().ok_or_else(|| MigrationError::BadName {
            file: lossy.clone(),
        })?;
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        let sql = String::from_utf8(bytes).map_err(|_| MigrationError::NotUtf8 {
            file: file.to_owned(),
        })?;
        list.push(Migration::new(file, sql)?);
    }
    list.sort_by(|a, b| (a.number, &a.name).cmp(&(b.number, &b.name)));
    Ok(list)
}

/// Checks that `list` can be applied: every name is `NNNN_name.sql` with the migration's own
/// number ([`MigrationError::BadName`]), no number appears twice
/// ([`MigrationError::Duplicate`], naming both files), the numbers are exactly `1..=n`
/// ([`MigrationError::Gap`], naming the missing number and the file after it) and they are in
/// increasing order ([`MigrationError::OutOfOrder`]).
pub fn validate(list: &[Migration]) -> Result<(), MigrationError> {
    for m in list {
        if parse_name(&m.name) != Some(m.number) {
            return Err(MigrationError::BadName {
                file: m.name.clone(),
            });
        }
    }
    let mut sorted: Vec<&Migration> = list.iter().collect();
    sorted.sort_by_key(|m| m.number);
    for pair in sorted.windows(2) {
        if pair[0].number == pair[1].number {
            return Err(MigrationError::Duplicate {
                number: pair[0].number,
                first: pair[0].name.clone(),
                second: pair[1].name.clone(),
            });
        }
    }
    for (expected, m) in (1u32..).zip(&sorted) {
        if m.number != expected {
            return Err(MigrationError::Gap {
                missing: expected,
                next: m.name.clone(),
            });
        }
    }
    for pair in list.windows(2) {
        if pair[1].number < pair[0].number {
            return Err(MigrationError::OutOfOrder {
                file: pair[1].name.clone(),
                after: pair[0].name.clone(),
            });
        }
    }
    Ok(())
}

/// The SHA-256 of `sql`'s exact bytes, as 64 lowercase hex digits. Byte-exact on purpose: a
/// change of line endings is an edit, since inside a string literal it changes the data.
pub fn checksum(sql: &str) -> String {
    Sha256::digest(sql.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The indexes into `list` of the migrations not yet applied to `conn`, in list order.
///
/// Reads only, and writes nothing: it first asks `sqlite_schema` whether [`TABLE`] exists (a
/// database without it has every migration pending) and then reads the table. An applied
/// migration whose recorded checksum differs from its SQL's is [`MigrationError::Edited`]; a
/// recorded id that no migration of `list` has is [`MigrationError::Missing`]. The recorded
/// name is informative only: a migration renamed with its number and SQL unchanged still counts
/// as applied.
pub fn pending(conn: &Connection, list: &[Migration]) -> Result<Vec<usize>, MigrationError> {
    let sqlite = |action| sqlite_error(None, action);
    let exists = conn
        .query_row(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [TABLE],
            |_| Ok(()),
        )
        .optional()
        .map_err(sqlite("looking for the migrations table"))?
        .is_some();
    if !exists {
        return Ok((0..list.len()).collect());
    }
    let by_number: HashMap<u32, usize> = list
        .iter()
        .enumerate()
        .map(|(i, m)| (m.number, i))
        .collect();
    let mut applied = vec![false; list.len()];
    let mut stmt = conn
        .prepare("SELECT id, name, checksum FROM _kvsqlite_migrations ORDER BY id")
        .map_err(sqlite("reading the migrations table"))?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get(1)?, r.get(2)?)))
        .map_err(sqlite("reading the migrations table"))?;
    for row in rows {
        let (id, name, recorded): (i64, String, String) =
            row.map_err(sqlite("reading the migrations table"))?;
        let Some(&i) = u32::try_from(id).ok().and_then(|n| by_number.get(&n)) else {
            return Err(MigrationError::Missing { id, name });
        };
        let current = checksum(&list[i].sql);
        if recorded != current {
            return Err(MigrationError::Edited {
                file: list[i].name.clone(),
                applied: recorded,
                current,
            });
        }
        applied[i] = true;
    }
    Ok((0..list.len()).filter(|&i| !applied[i]).collect())
}

/// The error a migration statement gets when it would end the migration's transaction.
fn transaction_control_error() -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISUSE),
        Some(
            "a migration may not BEGIN, COMMIT, END or ROLLBACK: each runs in its own transaction"
                .to_owned(),
        ),
    )
}

/// Applies `m` to `conn` in its own transaction and records it in [`TABLE`].
///
/// `BEGIN IMMEDIATE`; create [`TABLE`] if missing; run `m`'s statements one by one (see
/// [`statements::split`]); insert `(number, name, checksum)`; `COMMIT`. On any failure after
/// `BEGIN` it rolls back, so the migration leaves nothing behind (neither its changes nor the
/// table). A statement that fails is [`MigrationError::Failed`] with its line and text; a
/// statement that would begin or end a transaction (`BEGIN`, `COMMIT`, `END`, `ROLLBACK`, as
/// SQLite compiles it: see [`super::guard::transaction_control`]) fails that way before it runs;
/// savepoints (`SAVEPOINT`, `RELEASE`, `ROLLBACK TO`) nest inside the migration's transaction
/// and are allowed. Fails without touching anything when `conn` is already inside a
/// transaction (the `BEGIN` fails). It does not check whether `m` was applied before: a second
/// apply fails (on a statement or on the record's primary key) and is rolled back.
pub fn apply(conn: &Connection, m: &Migration) -> Result<(), MigrationError> {
    let sqlite = |action| sqlite_error(Some(&m.name), action);
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(sqlite("beginning its transaction"))?;
    let result = apply_in_transaction(conn, m).and_then(|()| {
        conn.execute_batch("COMMIT")
            .map_err(sqlite("committing its transaction"))
    });
    if result.is_err() && !conn.is_autocommit() {
        // The error that made us roll back is the one to report; if the rollback itself fails,
        // SQLite has already rolled back or the connection is unusable, and says so next time.
        let _ = conn.execute_batch("ROLLBACK");
    }
    result
}

/// Everything of [`apply`] between `BEGIN` and `COMMIT`.
fn apply_in_transaction(conn: &Connection, m: &Migration) -> Result<(), MigrationError> {
    let sqlite = |action| sqlite_error(Some(&m.name), action);
    conn.execute_batch(CREATE_TABLE)
        .map_err(sqlite("creating the migrations table"))?;
    for s in statements::split(&m.sql) {
        let control = super::guard::transaction_control(conn, &s.sql);
        let result = if control.is_some_and(|c| c.starts_or_ends()) {
            Err(transaction_control_error())
        } else {
            statements::execute_one(conn, &s.sql).map(|_| ())
        };
        if let Err(source) = result {
            return Err(MigrationError::Failed {
                file: m.name.clone(),
                line: s.line,
                statement: s.sql,
                source,
            });
        }
    }
    conn.execute(
        "INSERT INTO _kvsqlite_migrations(id, name, checksum) VALUES (?1, ?2, ?3)",
        (m.number, &m.name, checksum(&m.sql)),
    )
    .map_err(sqlite("recording it as applied"))?;
    Ok(())
}

/// Brings `conn` up to date with `list`: [`validate`], then [`pending`], then [`apply`] each
/// pending migration in order. Stops at the first error: the migrations applied before it stay
/// applied, the failing one leaves nothing. With nothing pending it writes nothing.
pub fn migrate(conn: &Connection, list: &[Migration]) -> Result<MigrateReport, MigrationError> {
    validate(list)?;
    let todo = pending(conn, list)?;
    let mut report = MigrateReport {
        applied: Vec::with_capacity(todo.len()),
        already_applied: list.len() - todo.len(),
    };
    for i in todo {
        apply(conn, &list[i])?;
        report.applied.push(list[i].number);
    }
    Ok(report)
}
