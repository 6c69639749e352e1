//! A seeded workload for the history tests, run on a kvsqlite database and a stock SQLite file
//! (the oracle) side by side, and a content hash of a database.

use kvsqlite::rng::Rng;
use rusqlite::types::{Value, ValueRef};
use rusqlite::Connection;

/// One transaction of the workload: statements run between BEGIN and COMMIT (or alone, for
/// VACUUM).
pub struct Tx {
    pub kind: &'static str,
    pub stmts: Vec<(String, Vec<Value>)>,
}

/// A FNV-1a hash of the schema and every row of every table (blob bytes included).
pub fn content_hash(conn: &Connection) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: &[u8]| {
        for &x in b {
            h ^= x as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    let mut tables = Vec::new();
    {
        let mut st = conn
            .prepare("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")
            .unwrap();
        let mut rows = st.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            for i in 0..4 {
                let v: Option<String> = r.get(i).unwrap();
                eat(v.as_deref().unwrap_or("\u{0}").as_bytes());
                eat(&[0xFF]);
            }
            let ty: String = r.get(0).unwrap();
            if ty == "table" {
                tables.push(r.get::<_, String>(1).unwrap());
            }
        }
    }
    for t in tables {
        let mut st = conn
            .prepare(&format!("SELECT * FROM \"{t}\" ORDER BY rowid"))
            .unwrap();
        let n = st.column_count();
        let mut rows = st.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            for i in 0..n {
                match r.get_ref(i).unwrap() {
                    ValueRef::Null => eat(b"N"),
                    ValueRef::Integer(x) => {
                        eat(b"I");
                        eat(&x.to_be_bytes())
                    }
                    ValueRef::Real(x) => {
                        eat(b"R");
                        eat(&x.to_be_bytes())
                    }
                    ValueRef::Text(b) => {
                        eat(b"T");
                        eat(&(b.len() as u64).to_be_bytes());
                        eat(b)
                    }
                    ValueRef::Blob(b) => {
                        eat(b"B");
                        eat(&(b.len() as u64).to_be_bytes());
                        eat(b)
                    }
                }
            }
        }
    }
    h
}

/// `n` transactions: mostly small, with staged ones (blobs of ~600 KB), journal fallbacks
/// (~1.5 MB, over a 1 MiB `max_atomic_bytes`), VACUUMs, shrinking deletes and schema changes.
pub fn workload(seed: u64, n: usize) -> Vec<Tx> {
    let mut rng = Rng::new(seed);
    let mut out = vec![Tx {
        kind: "schema",
        stmts: vec![(
            "CREATE TABLE t0(id INTEGER PRIMARY KEY, a INTEGER, b TEXT, c BLOB)".into(),
            vec![],
        )],
    }];
    let mut tables = vec!["t0".to_string()];
    let mut next_table = 1;
    let mut big_rows = 0;
    while out.len() < n {
        let t = tables[rng.below(tables.len() as u64) as usize].clone();
        let roll = rng.below(100);
        let tx = match roll {
            0..=59 => {
                let mut stmts = Vec::new();
                for _ in 0..1 + rng.below(4) {
                    let a = rng.below(1000) as i64;
                    let len = rng.below(600) as usize;
                    match rng.below(3) {
                        0 | 1 => stmts.push((
                            format!("INSERT INTO {t}(a, b, c) VALUES (?1, ?2, ?3)"),
                            vec![
                                Value::Integer(a),
                                Value::Text(format!("row {a} {}", rng.below(1 << 30))),
                                Value::Blob(rng.bytes(len)),
                            ],
                        )),
                        _ => stmts.push((
                            format!("UPDATE {t} SET a = a + 1, b = b || 'x' WHERE a % 7 = ?1"),
                            vec![Value::Integer(a % 7)],
                        )),
                    }
                }
                Tx {
                    kind: "small",
                    stmts,
                }
            }
            60..=66 => Tx {
                kind: "delete",
                stmts: vec![(
                    format!("DELETE FROM {t} WHERE a % 5 = ?1"),
                    vec![Value::Integer(rng.below(5) as i64)],
                )],
            },
            67..=72 if big_rows < 4 => {
                big_rows += 1;
                Tx {
                    kind: "staged",
                    stmts: vec![(
                        format!("INSERT INTO {t}(a, b, c) VALUES (-1, 'big', ?1)"),
                        vec![Value::Blob(rng.bytes(600_000))],
                    )],
                }
            }
            73..=75 if big_rows < 4 => {
                big_rows += 1;
                Tx {
                    kind: "journal",
                    stmts: vec![(
                        format!("INSERT INTO {t}(a, b, c) VALUES (-2, 'huge', ?1)"),
                        vec![Value::Blob(rng.bytes(1_500_000))],
                    )],
                }
            }
            76..=80 => {
                big_rows = 0;
                let mut stmts = Vec::new();
                for t in &tables {
                    stmts.push((format!("DELETE FROM {t} WHERE a < 0"), vec![]));
                }
                Tx {
                    kind: "shrink",
                    stmts,
                }
            }
            81..=83 => Tx {
                kind: "vacuum",
                stmts: vec![("VACUUM".into(), vec![])],
            },
            84..=87 if tables.len() < 5 => {
                let name = format!("t{next_table}");
                next_table += 1;
                tables.push(name.clone());
                Tx {
                    kind: "schema",
                    stmts: vec![
                        (
                            format!(
                                "CREATE TABLE {name}(id INTEGER PRIMARY KEY, a INTEGER, b TEXT, c BLOB)"
                            ),
                            vec![],
                        ),
                        (format!("CREATE INDEX {name}_a ON {name}(a)"), vec![]),
                    ],
                }
            }
            88..=89 if tables.len() > 1 => {
                let i = 1 + rng.below(tables.len() as u64 - 1) as usize;
                let name = tables.remove(i);
                Tx {
                    kind: "schema",
                    stmts: vec![(format!("DROP TABLE {name}"), vec![])],
                }
            }
            90..=91 => Tx {
                kind: "schema",
                stmts: vec![(
                    format!(
                        "ALTER TABLE {t} ADD COLUMN x{} INTEGER DEFAULT 3",
                        rng.below(1 << 30)
                    ),
                    vec![],
                )],
            },
            _ => continue,
        };
        out.push(tx);
    }
    out
}

/// Runs one transaction on `conn`.
pub fn apply(conn: &Connection, tx: &Tx) {
    if tx.kind == "vacuum" {
        conn.execute_batch("VACUUM").unwrap();
        return;
    }
    conn.execute_batch("BEGIN").unwrap();
    for (sql, params) in &tx.stmts {
        conn.execute(sql, rusqlite::params_from_iter(params.iter()))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    conn.execute_batch("COMMIT").unwrap();
}
