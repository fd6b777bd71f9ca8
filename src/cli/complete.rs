//! Is a buffer of SQL text a complete statement? A port of `sqlite3_complete()` (whose C entry
//! point is only reachable through `unsafe`): true when the text ends with a `;` that is not
//! inside a string, identifier quote or comment, and, for `CREATE TRIGGER`, that `;` follows
//! the body's `END`. The shell uses it to keep reading lines until a statement is whole.

#[derive(Clone, Copy)]
enum Token {
    Semi = 0,
    Ws = 1,
    Other = 2,
    Explain = 3,
    Create = 4,
    Temp = 5,
    Trigger = 6,
    End = 7,
}

/// The state machine of SQLite's `complete.c`: state 1 means "at the end of a statement".
const TRANS: [[u8; 8]; 8] = [
    //  SEMI WS OTHER EXPLAIN CREATE TEMP TRIGGER END
    [1, 0, 2, 3, 4, 2, 2, 2], // 0 INVALID
    [1, 1, 2, 3, 4, 2, 2, 2], // 1 START
    [1, 2, 2, 2, 2, 2, 2, 2], // 2 NORMAL
    [1, 3, 3, 2, 4, 2, 2, 2], // 3 EXPLAIN
    [1, 4, 2, 2, 2, 4, 5, 2], // 4 CREATE
    [6, 5, 5, 5, 5, 5, 5, 5], // 5 TRIGGER
    [6, 6, 5, 5, 5, 5, 5, 7], // 6 SEMI
    [1, 7, 5, 5, 5, 5, 5, 5], // 7 END
];

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$' || !c.is_ascii()
}

/// True when `sql` ends with a complete SQL statement.
pub fn is_complete(sql: &str) -> bool {
    let mut state = 0usize;
    let b: Vec<char> = sql.chars().collect();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let token = match c {
            ';' => {
                i += 1;
                Token::Semi
            }
            c if c.is_whitespace() => {
                i += 1;
                Token::Ws
            }
            '/' if b.get(i + 1) == Some(&'*') => {
                let mut j = i + 2;
                while j + 1 < b.len() && !(b[j] == '*' && b[j + 1] == '/') {
                    j += 1;
                }
                if j + 1 >= b.len() {
                    return false;
                }
                i = j + 2;
                Token::Ws
            }
            '-' if b.get(i + 1) == Some(&'-') => {
                while i < b.len() && b[i] != '\n' {
                    i += 1;
                }
                Token::Ws
            }
            '[' | '`' | '"' | '\'' => {
                let close = if c == '[' { ']' } else { c };
                let mut j = i + 1;
                while j < b.len() && b[j] != close {
                    j += 1;
                }
                if j >= b.len() {
                    return false;
                }
                // A doubled quote is an escaped quote: the scan resumes at it and reopens.
                i = j + 1;
                Token::Other
            }
            c if is_ident_char(c) => {
                let start = i;
                while i < b.len() && is_ident_char(b[i]) {
                    i += 1;
                }
                let word: String = b[start..i].iter().collect::<String>().to_ascii_lowercase();
                match word.as_str() {
                    "create" => Token::Create,
                    "trigger" => Token::Trigger,
                    "temp" | "temporary" => Token::Temp,
                    "end" => Token::End,
                    "explain" => Token::Explain,
                    _ => Token::Other,
                }
            }
            _ => {
                i += 1;
                Token::Other
            }
        };
        state = TRANS[state][token as usize] as usize;
    }
    state == 1
}

#[cfg(test)]
mod tests {
    use super::is_complete;

    #[test]
    fn statements() {
        for (sql, want) in [
            ("", false),
            ("  \n", false),
            ("select 1", false),
            ("select 1;", true),
            ("select 1; -- trailing comment", true),
            ("select ';", false),
            ("select 'a;b';", true),
            ("select 'it''s';", true),
            ("select \"x;\" from t", false),
            ("/* ; */", false),
            ("/* ; ", false),
            ("select [a;b];", true),
            ("create trigger tr after insert on t begin select 1;", false),
            ("create trigger tr after insert on t begin select 1; end;", true),
            ("CREATE TEMP TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END;", true),
            ("create table trigger_log(x);", true),
            ("explain select 1;", true),
        ] {
            assert_eq!(is_complete(sql), want, "{sql:?}");
        }
    }
}
