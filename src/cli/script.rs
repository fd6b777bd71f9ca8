//! Line-oriented input shared by the interactive shell, piped stdin and `.read`: lines
//! accumulate until they form a complete statement, and a line starting with `.` outside a
//! statement is a dot-command.

use std::io::Write;

use rusqlite::Connection;

use super::complete::is_complete;
use super::dot;
use super::error::CliResult;
use super::output::Settings;
use super::sql::execute;

/// Whether to keep going after a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// `.quit` or `.exit`.
    Quit,
}

/// Executes input against one connection, with the output settings the dot-commands change.
pub struct Processor<'c> {
    /// The database.
    pub conn: &'c Connection,
    /// Current output mode and headers.
    pub settings: Settings,
    /// Where results go (flushed after every statement and dot-command).
    pub out: Box<dyn Write + 'c>,
    /// Lines of a statement not complete yet.
    buffer: String,
    /// Nesting of `.read`, bounded so a file reading itself fails instead of overflowing.
    pub(super) read_depth: usize,
}

impl<'c> Processor<'c> {
    /// A processor writing to `out`.
    pub fn new(conn: &'c Connection, settings: Settings, out: Box<dyn Write + 'c>) -> Processor<'c> {
        Processor { conn, settings, out, buffer: String::new(), read_depth: 0 }
    }

    /// Is a statement partly entered (the shell shows the continuation prompt)?
    pub fn pending(&self) -> bool {
        !self.buffer.is_empty()
    }

    /// Forget a partly entered statement (Ctrl-C in the shell).
    pub fn discard(&mut self) {
        self.buffer.clear();
    }

    /// Feed one line of input.
    pub fn line(&mut self, line: &str) -> CliResult<Flow> {
        if self.buffer.is_empty() {
            let t = line.trim_start();
            if t.starts_with('.') {
                return self.dot(t);
            }
            if t.is_empty() || t.starts_with("--") {
                return Ok(Flow::Continue);
            }
        }
        self.buffer.push_str(line);
        self.buffer.push('\n');
        // Only a line with a `;` can complete a statement; checking just those keeps long
        // multi-line statements from being rescanned at every line.
        if line.contains(';') && is_complete(&self.buffer) {
            let sql = std::mem::take(&mut self.buffer);
            self.sql(&sql)?;
        }
        Ok(Flow::Continue)
    }

    /// End of input: run what is left (SQLite reports an incomplete statement as an error).
    pub fn finish(&mut self) -> CliResult<Flow> {
        if self.pending() {
            let sql = std::mem::take(&mut self.buffer);
            self.sql(&sql)?;
        }
        Ok(Flow::Continue)
    }

    /// Run a whole text line by line, stopping at the first error.
    pub fn script(&mut self, text: &str) -> CliResult<Flow> {
        for line in text.lines() {
            if self.line(line)? == Flow::Quit {
                self.discard();
                return Ok(Flow::Quit);
            }
        }
        self.finish()
    }

    /// Run one command-line argument: a dot-command, or SQL text of any number of statements.
    pub fn argument(&mut self, arg: &str) -> CliResult<Flow> {
        let t = arg.trim_start();
        if t.starts_with('.') {
            self.dot(t)
        } else {
            self.sql(arg).map(|()| Flow::Continue)
        }
    }

    /// Run SQL text, flushing whatever it printed even when it fails part-way.
    pub fn sql(&mut self, sql: &str) -> CliResult {
        let result = execute(self.conn, sql, self.settings, &mut *self.out);
        self.out.flush()?;
        result
    }

    fn dot(&mut self, line: &str) -> CliResult<Flow> {
        let result = dot::run(self, line);
        self.out.flush()?;
        result
    }
}
