//! The interactive shell: line editing and history (rustyline) over the line processor.
//! Errors are reported and the session goes on, as in the sqlite3 shell.

use std::path::Path;

use rustyline::error::ReadlineError;
use rustyline::DefaultEditor;

use super::error::{CliError, CliResult};
use super::script::{Flow, Processor};

const PROMPT: &str = "sqlite-tde> ";
const CONTINUATION: &str = "       ...> ";

/// Run the shell on `proc` until `.quit` or end of input.
pub fn run(proc: &mut Processor<'_>, db: &Path, history: &Path) -> CliResult {
    let mut editor = DefaultEditor::new().map_err(|e| CliError::failure(format!("cannot start line editor: {e}")))?;
    // No history yet is normal; an unreadable one only costs the recall.
    let _ = editor.load_history(history);
    println!("sqlite-tde shell on {} (encrypted). Enter \".help\" for usage hints.", db.display());
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
                break;
            }
            Err(e) => {
                save(&mut editor, history);
                return Err(CliError::failure(format!("reading input: {e}")));
            }
        };
        if !line.trim().is_empty() {
            let _ = editor.add_history_entry(line.as_str());
        }
        match proc.line(&line) {
            Ok(Flow::Quit) => break,
            Ok(Flow::Continue) => {}
            Err(e) => {
                proc.discard();
                report(Err(e));
            }
        }
    }
    save(&mut editor, history);
    Ok(())
}

fn report(result: CliResult<Flow>) {
    if let Err(e) = result {
        if !e.quiet {
            eprintln!("Error: {}", e.message);
        }
    }
}

fn save(editor: &mut DefaultEditor, history: &Path) {
    if let Err(e) = editor.save_history(history) {
        eprintln!("warning: cannot save history to {}: {e}", history.display());
    }
}
