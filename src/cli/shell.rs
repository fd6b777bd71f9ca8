//! The interactive shell: line editing and in-session recall (rustyline) over the line
//! processor, and, only when asked, a redacted history file (see [`super::history`]).
//! Errors are reported and the session goes on, as in the sqlite3 shell.

use std::path::Path;

use rustyline::error::ReadlineError;
use rustyline::DefaultEditor;

use super::error::{CliError, CliResult};
use super::script::{Flow, Processor};

const PROMPT: &str = "sqlite-tde> ";
const CONTINUATION: &str = "       ...> ";

/// Run the shell on `proc` until `.quit` or end of input. With `history`, the redacted
/// entries saved there are offered for recall and this session's lines are added, redacted.
pub fn run(proc: &mut Processor<'_>, db: &Path, history: Option<&Path>) -> CliResult {
    let mut editor = DefaultEditor::new().map_err(|e| CliError::failure(format!("cannot start line editor: {e}")))?;
    let mut saved = history.map(super::history::load).unwrap_or_default();
    for e in &saved {
        let _ = editor.add_history_entry(e.as_str());
    }
    println!("sqlite-tde shell on {} (encrypted). Enter \".help\" for usage hints.", db.display());
    match history {
        Some(p) => println!("History: {} (literals redacted).", p.display()),
        None => println!("History is not saved (--history keeps one, literals redacted)."),
    }
    let result = session(proc, &mut editor, &mut saved);
    if let Some(p) = history {
        if let Err(e) = super::history::save(p, &saved) {
            eprintln!("warning: cannot save history to {}: {e}", p.display());
        }
    }
    result
}

fn session(proc: &mut Processor<'_>, editor: &mut DefaultEditor, saved: &mut Vec<String>) -> CliResult {
    loop {
        let prompt = if proc.pending() { CONTINUATION } else { PROMPT };
        let line = match editor.readline(prompt) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                // Ctrl-C abandons the statement being typed, not the session.
                proc.discard();
                continue;
            }
            Err(ReadlineError::Eof) => {
                report(proc.finish());
                return Ok(());
            }
            Err(e) => return Err(CliError::failure(format!("reading input: {e}"))),
        };
        if !line.trim().is_empty() {
            // Recall within the session is of what was typed; only the file is redacted.
            let _ = editor.add_history_entry(line.as_str());
            saved.push(super::history::redact(&line));
        }
        match proc.line(&line) {
            Ok(Flow::Quit) => return Ok(()),
            Ok(Flow::Continue) => {}
            Err(e) => {
                proc.discard();
                report(Err(e));
            }
        }
    }
}

fn report(result: CliResult<Flow>) {
    if let Err(e) = result {
        if !e.quiet {
            eprintln!("Error: {}", e.message);
        }
    }
}
