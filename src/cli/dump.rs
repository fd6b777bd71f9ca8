//! `.dump`: SQL text that recreates the database's schema and content, in the layout of the
//! sqlite3 shell's `.dump`, so it can be replayed into an encrypted or a plain database.

use std::io::Write;

use rusqlite::types::Value;
use rusqlite::Connection;

use super::error::CliResult;

/// `"name"` with embedded quotes doubled. Always quoted: a bare name could be a keyword.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with embedded quotes doubled.
fn quote_text(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A value as an SQL literal that reads back as the same value.
fn literal(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Integer(i) => i.to_string(),
        // Rust's shortest round-trip form (`0.1`, `1.0`, `1e20`) is valid SQL; infinities are
        // spelled as overflowing literals, which SQLite reads as ±Inf.
        Value::Real(r) if r.is_infinite() => if *r > 0.0 { "1e999" } else { "-1e999" }.into(),
        Value::Real(r) => format!("{r:?}"),
        Value::Text(t) => quote_text(t),
        Value::Blob(b) => format!("X'{}'", hex::encode_upper(b)),
    }
}

/// Write the dump of the tables matching the LIKE `pattern` (all when `None`), with their
/// indexes, triggers and views.
pub fn dump(conn: &Connection, pattern: Option<&str>, out: &mut dyn Write) -> CliResult {
    // One read transaction, so the dump is a consistent snapshot.
    conn.execute_batch("SAVEPOINT sqlite_tde_dump")?;
    let result = dump_inner(conn, pattern, out);
    let _ = conn.execute_batch("RELEASE sqlite_tde_dump");
    result
}

fn dump_inner(conn: &Connection, pattern: Option<&str>, out: &mut dyn Write) -> CliResult {
    writeln!(out, "PRAGMA foreign_keys=OFF;")?;
    writeln!(out, "BEGIN TRANSACTION;")?;
    let mut stmt = conn.prepare(
        "SELECT name, sql FROM sqlite_schema WHERE type = 'table' AND sql IS NOT NULL
         AND name LIKE coalesce(?1, '%') ORDER BY name = 'sqlite_sequence', rowid",
    )?;
    let tables = stmt
        .query_map([pattern], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    let mut writable_schema = false;
    for (name, sql) in &tables {
        if name == "sqlite_sequence" {
            // Created by SQLite itself with the first AUTOINCREMENT table.
            writeln!(out, "DELETE FROM sqlite_sequence;")?;
        } else if name.starts_with("sqlite_stat") {
            writeln!(out, "ANALYZE sqlite_schema;")?;
        } else if name.starts_with("sqlite_") {
            continue;
        } else if sql.len() >= 20 && sql[..20].eq_ignore_ascii_case("CREATE VIRTUAL TABLE") {
            // Creating the virtual table would also create its shadow tables, which are dumped
            // as ordinary tables; enter it into the schema directly instead (as sqlite3 does).
            if !writable_schema {
                writeln!(out, "PRAGMA writable_schema=ON;")?;
                writable_schema = true;
            }
            writeln!(
                out,
                "INSERT INTO sqlite_schema(type,name,tbl_name,rootpage,sql) VALUES('table',{},{},0,{});",
                quote_text(name),
                quote_text(name),
                quote_text(sql)
            )?;
            continue;
        } else {
            writeln!(out, "{sql};")?;
        }
        dump_rows(conn, name, out)?;
    }
    let mut stmt = conn.prepare(
        "SELECT sql FROM sqlite_schema WHERE type IN ('index','trigger','view') AND sql IS NOT NULL
         AND tbl_name LIKE coalesce(?1, '%') ORDER BY rowid",
    )?;
    for sql in stmt.query_map([pattern], |r| r.get::<_, String>(0))? {
        writeln!(out, "{};", sql?)?;
    }
    if writable_schema {
        writeln!(out, "PRAGMA writable_schema=OFF;")?;
    }
    writeln!(out, "COMMIT;")?;
    Ok(())
}

/// `INSERT` statements for every row of `table`. Generated columns cannot be inserted, so
/// when there are any the statements name the stored columns.
fn dump_rows(conn: &Connection, table: &str, out: &mut dyn Write) -> CliResult {
    let mut info = conn.prepare("SELECT name, hidden FROM pragma_table_xinfo(?1) ORDER BY cid")?;
    let cols = info
        .query_map([table], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    let stored: Vec<String> = cols.iter().filter(|(_, hidden)| *hidden == 0).map(|(n, _)| quote_ident(n)).collect();
    if stored.is_empty() {
        return Ok(());
    }
    let target = if stored.len() == cols.len() {
        quote_ident(table)
    } else {
        format!("{}({})", quote_ident(table), stored.join(","))
    };
    let mut stmt = conn.prepare(&format!("SELECT {} FROM {}", stored.join(","), quote_ident(table)))?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let values =
            (0..stored.len()).map(|i| row.get::<_, Value>(i).map(|v| literal(&v))).collect::<Result<Vec<_>, _>>()?;
        writeln!(out, "INSERT INTO {target} VALUES({});", values.join(","))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_round_trips() {
        let src = Connection::open_in_memory().unwrap();
        src.execute_batch(
            "CREATE TABLE t(a INTEGER PRIMARY KEY AUTOINCREMENT, b, c AS (b || 'x'));
             INSERT INTO t(b) VALUES('it''s'), (1.0), (0.1), (1e300), (x'00ff'), (NULL), (-5);
             CREATE INDEX tb ON t(b);
             CREATE VIEW v AS SELECT a FROM t;
             CREATE TABLE \"we\"\"ird\"(x); INSERT INTO \"we\"\"ird\" VALUES(9e999);",
        )
        .unwrap();
        let mut text = Vec::new();
        dump(&src, None, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        let dst = Connection::open_in_memory().unwrap();
        dst.execute_batch(&text).unwrap();
        let q = "SELECT group_concat(quote(a) || ':' || quote(b) || ':' || quote(c), ';') FROM t";
        let s: String = src.query_row(q, [], |r| r.get(0)).unwrap();
        let d: String = dst.query_row(q, [], |r| r.get(0)).unwrap();
        assert_eq!(s, d);
        let inf: f64 = dst.query_row("SELECT x FROM \"we\"\"ird\"", [], |r| r.get(0)).unwrap();
        assert!(inf.is_infinite());
        let seq: i64 = dst.query_row("SELECT seq FROM sqlite_sequence", [], |r| r.get(0)).unwrap();
        assert_eq!(seq, 7);
        let n: i64 = dst.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 5, "{text}");
    }
}
