//! Rendering of result rows in the shell's output modes (`list`, `csv`, `line`, `column`,
//! `json`), following the sqlite3 shell's conventions so output can be compared with it.

use std::io::{self, Write};
use std::str::FromStr;

use rusqlite::types::Value;

/// How result rows are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Columns joined by `|`, one row per line (the default, as in sqlite3).
    #[default]
    List,
    /// RFC 4180 CSV with CRLF line ends; NULL is an empty field, an empty string is `""`.
    Csv,
    /// One `name = value` line per column, a blank line between rows.
    Line,
    /// Aligned columns, with a header and an underline when headers are on.
    Column,
    /// A JSON array of objects per statement.
    Json,
}

impl Mode {
    /// Names accepted by `.mode`.
    pub const NAMES: &'static str = "list, csv, line, column, json";
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "list" => Ok(Mode::List),
            "csv" => Ok(Mode::Csv),
            "line" => Ok(Mode::Line),
            "column" => Ok(Mode::Column),
            "json" => Ok(Mode::Json),
            other => Err(format!("unknown mode '{other}' (choose from {})", Mode::NAMES)),
        }
    }
}

/// Output settings the dot-commands change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Settings {
    pub mode: Mode,
    /// Print column names (`.headers on`).
    pub headers: bool,
}

/// Render a REAL as the sqlite3 shell prints it (SQLite's `printf("%!.15g")`): 15
/// significant digits, trailing zeros dropped but at least one digit after the point, and an
/// exponent of at least two digits outside `1e-4 <= |r| < 1e15` (`1.5`, `1.0`, `1.0e+20`,
/// `0.333333333333333`). Recent SQLite releases convert reals to text with up to 17 digits
/// instead; the shorter classic form is kept because it is what users and scripts compare
/// against, and it is stable across SQLite versions.
pub fn format_real(r: f64) -> String {
    if r.is_nan() {
        // SQLite stores NaN as NULL, so this only shows up for values made in Rust.
        return "NaN".into();
    }
    if r.is_infinite() {
        return if r > 0.0 { "Inf".into() } else { "-Inf".into() };
    }
    if r == 0.0 {
        // SQLite prints negative zero as 0.0 too.
        return "0.0".into();
    }
    let (digits, exp) = fifteen_digits(r.abs());
    let sign = if r < 0.0 { "-" } else { "" };
    if !(-4..15).contains(&exp) {
        let frac = trim_zeros(&digits[1..]);
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{}.{frac}e{esign}{:02}", &digits[..1], exp.unsigned_abs())
    } else if exp >= 0 {
        let int_len = exp as usize + 1;
        format!("{sign}{}.{}", &digits[..int_len], trim_zeros(&digits[int_len..]))
    } else {
        let zeros = "0".repeat((-exp - 1) as usize);
        format!("{sign}0.{zeros}{}", trim_zeros(&digits))
    }
}

/// The 15 significant digits SQLite's printf shows, and the decimal exponent of the first.
/// SQLite rounds ties away from zero where Rust's formatting rounds them to even, so the
/// rounding is done here on a longer expansion (41 digits: enough to see past any tie a
/// 53-bit mantissa can produce at the 16th digit).
fn fifteen_digits(r: f64) -> (String, i32) {
    let sci = format!("{r:.40e}");
    let (mantissa, exp) = sci.split_once('e').expect("exponent form");
    let mut exp: i32 = exp.parse().expect("decimal exponent");
    let all: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let mut value: u64 = all[..15].parse().expect("digits");
    if all.as_bytes()[15] >= b'5' {
        value += 1;
        if value == 1_000_000_000_000_000 {
            value = 100_000_000_000_000;
            exp += 1;
        }
    }
    (value.to_string(), exp)
}

/// Drop trailing zeros of a fraction's digits, keeping at least one digit.
fn trim_zeros(frac: &str) -> &str {
    let t = frac.trim_end_matches('0');
    if t.is_empty() {
        "0"
    } else {
        t
    }
}

/// A value as the text the shell shows: NULL empty, numbers in decimal, text and blobs as
/// their raw bytes.
pub fn value_bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::Null => Vec::new(),
        Value::Integer(i) => i.to_string().into_bytes(),
        Value::Real(r) => format_real(*r).into_bytes(),
        Value::Text(t) => t.clone().into_bytes(),
        Value::Blob(b) => b.clone(),
    }
}

/// A value as a JSON literal. Blobs become a hex string (raw bytes are not valid JSON text),
/// and non-finite reals `null` (JSON has no infinities).
pub fn value_json(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(r) if r.is_finite() => format_real(*r),
        Value::Real(_) => "null".into(),
        Value::Text(t) => serde_json::Value::String(t.clone()).to_string(),
        Value::Blob(b) => format!("\"{}\"", hex::encode(b)),
    }
}

/// Does a CSV field need quoting? Same rule as the sqlite3 shell: empty, or any byte that is
/// a control character, space, `"`, `,`, or not ASCII.
fn csv_needs_quotes(b: &[u8]) -> bool {
    b.is_empty() || b.iter().any(|&c| c <= b' ' || c == b'"' || c == b',' || c >= 0x7f)
}

fn write_csv_field(out: &mut dyn Write, b: &[u8], is_null: bool) -> io::Result<()> {
    if is_null || !csv_needs_quotes(b) {
        return out.write_all(b);
    }
    out.write_all(b"\"")?;
    for chunk in b.split_inclusive(|&c| c == b'"') {
        out.write_all(chunk)?;
        if chunk.ends_with(b"\"") {
            out.write_all(b"\"")?;
        }
    }
    out.write_all(b"\"")
}

/// Prints the rows of one statement. Streaming except in `column` mode, which needs every
/// row to size the columns.
pub struct RowPrinter<'o> {
    settings: Settings,
    names: Vec<String>,
    out: &'o mut dyn Write,
    rows: usize,
    /// Rendered cells kept for `column` mode.
    buffered: Vec<Vec<String>>,
}

impl<'o> RowPrinter<'o> {
    /// Start printing a statement with these result columns.
    pub fn new(settings: Settings, names: Vec<String>, out: &'o mut dyn Write) -> RowPrinter<'o> {
        RowPrinter { settings, names, out, rows: 0, buffered: Vec::new() }
    }

    /// Print one row.
    pub fn row(&mut self, values: &[Value]) -> io::Result<()> {
        let first = self.rows == 0;
        self.rows += 1;
        match self.settings.mode {
            Mode::List => {
                if first && self.settings.headers {
                    writeln!(self.out, "{}", self.names.join("|"))?;
                }
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        self.out.write_all(b"|")?;
                    }
                    self.out.write_all(&value_bytes(v))?;
                }
                self.out.write_all(b"\n")
            }
            Mode::Csv => {
                if first && self.settings.headers {
                    for (i, n) in self.names.iter().enumerate() {
                        if i > 0 {
                            self.out.write_all(b",")?;
                        }
                        write_csv_field(self.out, n.as_bytes(), false)?;
                    }
                    self.out.write_all(b"\r\n")?;
                }
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        self.out.write_all(b",")?;
                    }
                    write_csv_field(self.out, &value_bytes(v), matches!(v, Value::Null))?;
                }
                self.out.write_all(b"\r\n")
            }
            Mode::Line => {
                if !first {
                    self.out.write_all(b"\n")?;
                }
                let width = self.names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
                for (n, v) in self.names.iter().zip(values) {
                    write!(self.out, "{n:>width$} = ")?;
                    self.out.write_all(&value_bytes(v))?;
                    self.out.write_all(b"\n")?;
                }
                Ok(())
            }
            Mode::Column => {
                let cells = values.iter().map(|v| String::from_utf8_lossy(&value_bytes(v)).into_owned()).collect();
                self.buffered.push(cells);
                Ok(())
            }
            Mode::Json => {
                self.out.write_all(if first { b"[" } else { b",\n" })?;
                self.out.write_all(b"{")?;
                for (i, (n, v)) in self.names.iter().zip(values).enumerate() {
                    if i > 0 {
                        self.out.write_all(b",")?;
                    }
                    write!(self.out, "{}:{}", serde_json::Value::String(n.clone()), value_json(v))?;
                }
                self.out.write_all(b"}")
            }
        }
    }

    /// End the statement: flush buffered `column` output, close the JSON array.
    pub fn finish(self) -> io::Result<()> {
        match self.settings.mode {
            Mode::Json if self.rows > 0 => self.out.write_all(b"]\n"),
            Mode::Column if self.rows > 0 => {
                write_columns(self.out, &self.names, &self.buffered, self.settings.headers)
            }
            _ => Ok(()),
        }
    }
}

fn write_columns(out: &mut dyn Write, names: &[String], rows: &[Vec<String>], headers: bool) -> io::Result<()> {
    let mut widths: Vec<usize> = names.iter().map(|n| if headers { n.chars().count() } else { 0 }).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: &mut dyn Iterator<Item = &str>| -> io::Result<()> {
        let mut s = String::new();
        for (i, (c, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            s.push_str(c);
            s.extend(std::iter::repeat_n(' ', w - c.chars().count()));
        }
        writeln!(out, "{}", s.trim_end())
    };
    if headers {
        line(out, &mut names.iter().map(String::as_str))?;
        let dashes: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        line(out, &mut dashes.iter().map(String::as_str))?;
    }
    for r in rows {
        line(out, &mut r.iter().map(String::as_str))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reals_match_sqlite() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let samples = [
            1.5,
            1.0,
            1e20,
            0.1,
            1.0 / 3.0,
            123456789012345678.0,
            -0.0,
            1e-7,
            2.5e15,
            1e15,
            1e14,
            9.99e15,
            1e-300,
            123.456,
            100.0,
            -2.75,
            0.0001,
            0.00001,
            999999999999999.0,
            9999999999999999.0,
            f64::MAX,
            f64::MIN_POSITIVE,
            std::f64::consts::PI,
            -1e100,
            42.0,
            // A tie at the 16th digit: SQLite rounds it up, not to even.
            508025621151756.5,
            -508025621151756.5,
        ];
        for r in samples {
            let sqlite: String = conn.query_row("SELECT printf('%!.15g', ?1)", [r], |row| row.get(0)).unwrap();
            assert_eq!(format_real(r), sqlite, "value {r:e}");
        }
    }

    fn render(settings: Settings, names: &[&str], rows: &[Vec<Value>]) -> String {
        let mut out = Vec::new();
        let mut p = RowPrinter::new(settings, names.iter().map(|s| s.to_string()).collect(), &mut out);
        for r in rows {
            p.row(r).unwrap();
        }
        p.finish().unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn modes() {
        let rows = vec![
            vec![Value::Integer(1), Value::Text("a,b".into()), Value::Null],
            vec![Value::Real(1e20), Value::Text(String::new()), Value::Blob(b"A".to_vec())],
        ];
        let s = |mode, headers| Settings { mode, headers };
        assert_eq!(render(s(Mode::List, false), &["x", "y", "z"], &rows), "1|a,b|\n1.0e+20||A\n");
        assert_eq!(render(s(Mode::List, true), &["x", "y", "z"], &rows), "x|y|z\n1|a,b|\n1.0e+20||A\n");
        assert_eq!(render(s(Mode::Csv, true), &["x", "y", "z"], &rows), "x,y,z\r\n1,\"a,b\",\r\n1.0e+20,\"\",A\r\n");
        assert_eq!(render(s(Mode::Line, false), &["x", "yy"], &rows[..1]), " x = 1\nyy = a,b\n");
        assert_eq!(
            render(s(Mode::Json, false), &["x", "y", "z"], &rows),
            "[{\"x\":1,\"y\":\"a,b\",\"z\":null},\n{\"x\":1.0e+20,\"y\":\"\",\"z\":\"41\"}]\n"
        );
        assert_eq!(
            render(s(Mode::Column, true), &["x", "yy"], &[vec![Value::Integer(10), Value::Text("q".into())]]),
            "x   yy\n--  --\n10  q\n"
        );
        assert_eq!(render(s(Mode::Json, false), &["x"], &[]), "");
    }
}
