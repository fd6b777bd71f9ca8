//! Progress display and Ctrl-C handling of long operations (rekey, conversions): an
//! indicatif bar on a terminal, JSON lines with `--json`, nothing otherwise. The first
//! Ctrl-C (or SIGTERM) asks the operation to stop at the next chunk boundary, which leaves
//! it resumable; a second one terminates the process at once (still recoverable: every step
//! is crash-safe).

use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use sqlite_tde::rotation::Progress;

/// Exit code of an operation stopped by Ctrl-C (resumable).
pub const EXIT_INTERRUPTED: u8 = 130;

/// A progress reporter plus the stop flag set by SIGINT / SIGTERM.
pub struct Reporter {
    stop: Arc<AtomicBool>,
    json: bool,
    bar: Option<ProgressBar>,
    last_json: Option<Instant>,
}

impl Reporter {
    /// Install the signal handlers and choose the display.
    pub fn new(json: bool) -> Reporter {
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            // A second signal while the flag is already set terminates the process.
            let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, stop.clone());
            let _ = signal_hook::flag::register(sig, stop.clone());
        }
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template("{msg:>10} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b
        });
        Reporter { stop, json, bar, last_json: None }
    }

    /// Was a stop requested?
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Report one progress event; `Break` once a stop was requested.
    pub fn update(&mut self, p: &Progress) -> ControlFlow<()> {
        if let Some(b) = &self.bar {
            b.set_message(p.operation);
            b.set_length(p.total);
            b.set_position(p.done);
        }
        if self.json {
            let due = self.last_json.is_none_or(|t| t.elapsed() >= Duration::from_millis(200)) || p.done >= p.total;
            if due {
                self.last_json = Some(Instant::now());
                let line = serde_json::json!({"event": "progress", "operation": p.operation, "done": p.done, "total": p.total});
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        }
        if self.stopped() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    /// Remove the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }

    /// An observer closure for [`sqlite_tde::rotation::with_progress`] sharing this reporter.
    pub fn observer(reporter: &Arc<std::sync::Mutex<Reporter>>) -> impl FnMut(&Progress) -> ControlFlow<()> + 'static {
        let r = reporter.clone();
        move |p| r.lock().unwrap_or_else(|e| e.into_inner()).update(p)
    }
}

/// A crate error as a CLI error; a "key not found" names the keystore that was used (the
/// commonest cause is pointing at another keystore than the one holding the key).
pub fn cli_error(e: sqlite_tde::Error, keystore: &std::path::Path) -> super::error::CliError {
    // Only the embedded KMS has a keystore: an OpenBao "not found" names its server instead.
    let not_found = matches!(&e, sqlite_tde::Error::Kms { source: sqlite_tde::kms::KmsError::NotFound(k), .. }
        if !sqlite_tde::kms::openbao::is_openbao_uri(k));
    let mut err = super::error::CliError::from(e);
    if not_found {
        err.message.push_str(&format!(
            " (keystore {}; use --keystore or SQLITE_TDE_KEYSTORE for another one)",
            keystore.display()
        ));
    }
    err
}
