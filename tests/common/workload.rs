//! Deterministic SQL workloads, run through plain SQLite and through `tde`, whose results are
//! compared row by row.

use rusqlite::types::ValueRef;
use rusqlite::Connection;

/// Run a query and render every row as strings.
pub fn rows(c: &Connection, sql: &str) -> Vec<Vec<String>> {
    let mut st = c.prepare(sql).unwrap();
    let n = st.column_count();
    let mut out = Vec::new();
    let mut rs = st.query([]).unwrap();
    while let Some(r) = rs.next().unwrap() {
        out.push(
            (0..n)
                .map(|i| match r.get_ref(i).unwrap() {
                    ValueRef::Null => "NULL".into(),
                    ValueRef::Integer(v) => v.to_string(),
                    ValueRef::Real(v) => v.to_string(),
                    ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                    ValueRef::Blob(b) => format!("x{}", hex::encode(b)),
                })
                .collect(),
        );
    }
    out
}

/// Fill a database with `n` rows carrying `marker` in text, blobs, index keys and a table name.
pub fn populate(c: &Connection, marker: &str, n: usize) {
    c.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, name TEXT, payload BLOB, score REAL);
         CREATE INDEX IF NOT EXISTS items_name ON items(name);
         CREATE TABLE IF NOT EXISTS uniq(x INTEGER UNIQUE);
         CREATE TABLE IF NOT EXISTS big(id INTEGER PRIMARY KEY, b BLOB, c INTEGER UNIQUE);
         CREATE TABLE IF NOT EXISTS \"tbl_{marker}\"(k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID;"
    ))
    .unwrap();
    let tx = c.unchecked_transaction().unwrap();
    {
        let mut ins = tx.prepare("INSERT INTO items(name, payload, score) VALUES(?1, ?2, ?3)").unwrap();
        let mut ins2 = tx.prepare(&format!("INSERT OR REPLACE INTO \"tbl_{marker}\"(k, v) VALUES(?1, ?2)")).unwrap();
        for i in 0..n {
            let name = format!("{marker}-name-{:06}", (i * 7919) % (n.max(1)));
            let mut blob = format!("{marker}-blob-{i}").into_bytes();
            blob.extend(std::iter::repeat_n((i % 251) as u8, 200 + i % 300));
            ins.execute(rusqlite::params![name, blob, i as f64 / 7.0]).unwrap();
            ins2.execute(rusqlite::params![format!("{marker}-key-{i}"), format!("{marker}-value-{i}")]).unwrap();
        }
    }
    tx.commit().unwrap();
}

/// Mutations that exercise rollback, savepoints and a statement journal.
pub fn mutate(c: &Connection, marker: &str) {
    c.execute_batch(&format!(
        "UPDATE items SET score = score * 2 WHERE id % 3 = 0;
         DELETE FROM items WHERE id % 11 = 0;
         BEGIN; UPDATE items SET name = '{marker}-rolled-back'; ROLLBACK;
         SAVEPOINT s1; INSERT INTO items(name) VALUES('{marker}-sp'); ROLLBACK TO s1; RELEASE s1;"
    ))
    .unwrap();
    // A multi-row UPDATE that fails half-way needs a statement journal to undo its first rows.
    // Inside an explicit transaction a failed statement must be undone alone. Pages it
    // changes that are already in the main journal (the first UPDATE put them there) need a
    // statement journal; with > 64 KiB of them it spills to a file.
    c.execute_batch(&format!(
        "INSERT INTO uniq SELECT id FROM items WHERE id < 400;
         INSERT INTO big(b, c) SELECT '{marker}' || zeroblob(500), id FROM items;
         BEGIN; UPDATE big SET b = b || x'01';"
    ))
    .unwrap();
    let r = c.execute(
        "UPDATE big SET b = b || zeroblob(60), c = CASE WHEN id = (SELECT max(id) FROM big) THEN (SELECT min(c) FROM big) ELSE c END",
        [],
    );
    assert!(r.is_err(), "expected a UNIQUE violation");
    c.execute_batch("COMMIT;").unwrap();
}

/// The queries whose results are compared.
pub fn snapshot(c: &Connection, marker: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for q in [
        "SELECT count(*), sum(length(payload)), round(sum(score), 6) FROM items".to_string(),
        "SELECT id, name, hex(substr(payload, 1, 40)) FROM items ORDER BY id LIMIT 50".to_string(),
        "SELECT name FROM items ORDER BY name DESC LIMIT 20".to_string(),
        format!("SELECT k, v FROM \"tbl_{marker}\" ORDER BY k LIMIT 30"),
        "SELECT count(*) FROM uniq".to_string(),
        "SELECT count(*), sum(length(b)) FROM big".to_string(),
        "PRAGMA integrity_check".to_string(),
    ] {
        out.extend(rows(c, &q));
    }
    out
}

/// Spill-heavy temp work: sorts, groups, distinct, index build and temp tables on data larger
/// than the page cache.
pub fn temp_heavy(c: &Connection, marker: &str) -> Vec<Vec<String>> {
    c.execute_batch(&format!(
        "PRAGMA temp_store=FILE; PRAGMA cache_size=20; PRAGMA temp.cache_size=10;
         CREATE TEMP TABLE tt AS SELECT id, name || '-{marker}-temp' AS n, payload FROM items;
         CREATE INDEX IF NOT EXISTS items_payload ON items(payload);"
    ))
    .unwrap();
    let mut out = Vec::new();
    // The cross join with four rows makes every sort and group larger than the sorter's
    // in-memory limit (250 pages), so it spills runs to temp files.
    for q in [
        "SELECT name, length(payload) FROM items, (SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4) ORDER BY payload DESC, name LIMIT 10",
        "SELECT substr(name, 1, 20) || hex(substr(payload, -4)) AS g, count(*) FROM items, (SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3) GROUP BY g ORDER BY g LIMIT 10",
        "SELECT count(*) FROM (SELECT DISTINCT payload || x FROM items, (SELECT 1 AS x UNION ALL SELECT 2 UNION ALL SELECT 3))",
        "SELECT count(*), max(n) FROM tt",
        "SELECT n FROM tt ORDER BY n DESC LIMIT 5",
    ] {
        out.extend(rows(c, q));
    }
    out
}
