//! Checks on a SQLite connection shared by the VFS tests.

/// Asserts that `PRAGMA integrity_check` answers exactly `ok`.
pub fn assert_integrity(conn: &rusqlite::Connection) {
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("PRAGMA integrity_check failed to run");
    assert_eq!(check, "ok", "integrity_check");
}
