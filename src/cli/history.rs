//! Shell history for `sqlite-tde sql`: off unless asked for (`--history`), because typed SQL
//! carries the very values the database encrypts. When on, it lives where other tools keep
//! theirs, `$XDG_STATE_HOME/sqlite-tde/history` (default `~/.local/state/...`), never next to
//! the keystore's `root.key`, and only a redacted form of each line is written: literals and
//! comments become `?`, so the file records the shape of the statements, not their data.

use std::path::{Path, PathBuf};

/// Where the history goes, from the process's environment (read here, at the CLI's edge).
pub fn default_path() -> Option<PathBuf> {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(state.join("sqlite-tde").join("history"))
}

/// Where versions before the redacted history kept a plaintext one.
pub fn legacy_path(keystore: &Path) -> PathBuf {
    keystore.join("shell_history")
}

/// Load the saved (redacted) entries; a missing file is an empty history.
pub fn load(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).map(|s| s.lines().map(str::to_string).collect()).unwrap_or_default()
}

/// Keep the last `MAX_ENTRIES` of `entries` in `path`, owner-only (directory 0700, file 0600),
/// replaced atomically.
pub fn save(path: &Path, entries: &[String]) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let start = entries.len().saturating_sub(MAX_ENTRIES);
    let mut text = String::new();
    for e in &entries[start..] {
        text.push_str(e);
        text.push('\n');
    }
    sqlite_tde::fsutil::write_atomic(path, text.as_bytes(), 0o600)
}

/// How many entries the file keeps.
pub const MAX_ENTRIES: usize = 1000;

/// `line` with every value it spells out replaced: string, blob and double-quoted literals
/// become `'?'` / `X'?'` / `"?"`, numbers `?`, comment text is dropped. Identifiers, keywords,
/// `[names]`, `` `names` `` and parameters (`?1`, `:name`) stay, so the entry still shows what
/// was run. One line at a time: a literal left open at the end of the line is closed.
pub fn redact(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut it = line.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '\'' | '"' => {
                // A doubled quote inside is an escaped quote, not the end.
                loop {
                    match it.next() {
                        None => break,
                        Some(q) if q == c => {
                            if it.peek() == Some(&c) {
                                it.next();
                            } else {
                                break;
                            }
                        }
                        Some(_) => {}
                    }
                }
                out.extend([c, '?', c]);
            }
            '[' | '`' => {
                let close = if c == '[' { ']' } else { '`' };
                out.push(c);
                for n in it.by_ref() {
                    out.push(n);
                    if n == close {
                        break;
                    }
                }
            }
            '-' if it.peek() == Some(&'-') => {
                out.push_str("--");
                break;
            }
            '/' if it.peek() == Some(&'*') => {
                it.next();
                let mut prev = ' ';
                for n in it.by_ref() {
                    if prev == '*' && n == '/' {
                        break;
                    }
                    prev = n;
                }
                out.push_str("/*?*/");
            }
            c if c.is_ascii_digit() || (c == '.' && it.peek().is_some_and(char::is_ascii_digit)) => {
                // The rest of the number: digits, hex digits, '.', an exponent and its sign.
                let mut prev = c;
                while let Some(&n) = it.peek() {
                    let sign = (n == '+' || n == '-') && (prev == 'e' || prev == 'E');
                    if n.is_ascii_alphanumeric() || n == '.' || n == '_' || sign {
                        prev = n;
                        it.next();
                    } else {
                        break;
                    }
                }
                out.push('?');
            }
            c if c.is_alphabetic() || c == '_' || c == '$' || c == '?' || c == ':' || c == '@' => {
                // Identifiers, keywords and parameters keep their digits (`t1`, `?1`).
                out.push(c);
                while let Some(&n) = it.peek() {
                    if n.is_alphanumeric() || n == '_' || n == '$' {
                        out.push(n);
                        it.next();
                    } else {
                        break;
                    }
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn literals_and_comments_are_redacted() {
        for (line, want) in [
            (
                "INSERT INTO t1 VALUES('4111 1111 1111 1111', 42, -3.5e+10, x'deadbeef');",
                "INSERT INTO t1 VALUES('?', ?, -?, x'?');",
            ),
            ("SELECT * FROM [my table] WHERE a = 'it''s' -- secret note", "SELECT * FROM [my table] WHERE a = '?' --"),
            (
                "select \"ssn\" /* 123-45-6789 */ from `t` where x = ?1 and y = :name",
                "select \"?\" /*?*/ from `t` where x = ?1 and y = :name",
            ),
            ("SELECT 0x7fff, .5, 1e5;", "SELECT ?, ?, ?;"),
            ("PRAGMA tde_key='alias/app'", "PRAGMA tde_key='?'"),
            (".mode box", ".mode box"),
            ("INSERT INTO t VALUES('unterminated", "INSERT INTO t VALUES('?'"),
        ] {
            assert_eq!(redact(line), want, "{line}");
        }
    }
}
