//! Dot-commands of the shell (also accepted as `sql` arguments and in piped input).

use std::io::Write;

use super::dump::dump;
use super::error::{CliError, CliResult};
use super::output::Mode;
use super::script::{Flow, Processor};

/// How deep `.read` may nest.
const MAX_READ_DEPTH: usize = 16;

/// Text of `.help`.
pub const HELP: &str = "\
.dump [PATTERN]         SQL text that recreates the database (tables matching PATTERN)
.exit                   Leave the shell
.headers on|off         Show column names
.help                   This help
.mode [MODE]            Output mode: list, csv, line, column, json (no MODE: show it)
.quit                   Leave the shell
.read FILE              Run SQL and dot-commands from FILE
.schema [PATTERN]       CREATE statements (of tables matching PATTERN)
.tables [PATTERN]       Names of tables and views (matching PATTERN)
";

/// Split a dot-command line into words; `'...'` and `"..."` group words with spaces.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(&c) = chars.peek() else { break };
        let mut w = String::new();
        if c == '\'' || c == '"' {
            chars.next();
            for ch in chars.by_ref() {
                if ch == c {
                    break;
                }
                w.push(ch);
            }
        } else {
            while let Some(ch) = chars.next_if(|ch| !ch.is_whitespace()) {
                w.push(ch);
            }
        }
        out.push(w);
    }
    out
}

fn on_off(v: &str) -> Result<bool, CliError> {
    match v.to_ascii_lowercase().as_str() {
        "on" | "yes" | "true" | "1" => Ok(true),
        "off" | "no" | "false" | "0" => Ok(false),
        _ => Err(CliError::failure(format!("expected on or off, not '{v}'"))),
    }
}

/// Run one dot-command line (starting with `.`).
pub fn run(p: &mut Processor<'_>, line: &str) -> CliResult<Flow> {
    let w = words(line.trim_start_matches('.'));
    let arg = |i: usize| w.get(i).map(String::as_str);
    let usage = |text: &str| Err(CliError::failure(format!("usage: {text}")));
    match arg(0).unwrap_or("") {
        "quit" | "exit" | "q" => return Ok(Flow::Quit),
        "help" => p.out.write_all(HELP.as_bytes())?,
        "headers" | "header" => match arg(1) {
            Some(v) if w.len() == 2 => p.settings.headers = on_off(v)?,
            _ => return usage(".headers on|off"),
        },
        "mode" => match arg(1) {
            None => writeln!(p.out, "current output mode: {}", format!("{:?}", p.settings.mode).to_lowercase())?,
            Some(m) => {
                p.settings.mode = m.parse::<Mode>().map_err(CliError::failure)?;
                // As in sqlite3: a column table without its header is hard to read.
                if p.settings.mode == Mode::Column {
                    p.settings.headers = true;
                }
            }
        },
        "tables" => tables(p, arg(1))?,
        "schema" => schema(p, arg(1))?,
        "dump" => dump(p.conn, arg(1), &mut *p.out)?,
        "read" => match arg(1) {
            Some(file) if w.len() == 2 => read(p, file)?,
            _ => return usage(".read FILE"),
        },
        "" => return usage(".COMMAND [ARGS...] (see .help)"),
        other => return Err(CliError::failure(format!("unknown command: .{other} (see .help)"))),
    }
    Ok(Flow::Continue)
}

fn read(p: &mut Processor<'_>, file: &str) -> CliResult {
    if p.read_depth >= MAX_READ_DEPTH {
        return Err(CliError::failure(format!(".read nested more than {MAX_READ_DEPTH} deep")));
    }
    let text = std::fs::read_to_string(file).map_err(|e| CliError::failure(format!("cannot read {file}: {e}")))?;
    p.read_depth += 1;
    let result = p.script(&text);
    p.read_depth -= 1;
    // `.quit` inside a file ends that file, not the session.
    result.map(|_| ())
}

fn tables(p: &mut Processor<'_>, pattern: Option<&str>) -> CliResult {
    let mut stmt = p.conn.prepare(
        "SELECT name FROM sqlite_schema WHERE type IN ('table','view') AND name NOT LIKE 'sqlite_%'
         AND name LIKE coalesce(?1, '%') ORDER BY 1",
    )?;
    let names = stmt.query_map([pattern], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
    if names.is_empty() {
        return Ok(());
    }
    // Laid out in columns down then across, as the sqlite3 shell does, within 80 characters.
    let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
    let per_line = (80 / (width + 2)).max(1);
    let lines = names.len().div_ceil(per_line);
    for line in 0..lines {
        let cells: Vec<String> = names.iter().skip(line).step_by(lines).map(|n| format!("{n:<width$}")).collect();
        writeln!(p.out, "{}", cells.join("  ").trim_end())?;
    }
    Ok(())
}

fn schema(p: &mut Processor<'_>, pattern: Option<&str>) -> CliResult {
    let mut stmt = p.conn.prepare(
        "SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL AND tbl_name LIKE coalesce(?1, '%')
         ORDER BY type <> 'table', rowid",
    )?;
    let rows = stmt.query_map([pattern], |r| r.get::<_, String>(0))?;
    for sql in rows {
        writeln!(p.out, "{};", sql?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::words;

    #[test]
    fn splits_words() {
        assert_eq!(words("read 'a b.sql'"), ["read", "a b.sql"]);
        assert_eq!(words("  mode   csv "), ["mode", "csv"]);
        assert!(words("").is_empty());
    }
}
