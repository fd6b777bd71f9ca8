//! What a running rekey or in-place encryption reports to the outside: progress to the
//! thread's observer (the CLI's progress bar, a caller that wants to stop between chunks),
//! and, in debug builds, the crash- and fault-injection points the power-loss tests use.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::ErrorKind;
use std::ops::ControlFlow;

use super::engine::{self, Step};
use crate::error::{Error, Result};

/// Environment variable of the crash-injection hook (debug builds only):
/// `OPERATION:STEP[@N]`, e.g. `rekey:progress-synced@2` aborts the process the third time
/// (counting from 0) a rekey passes that step. Operations: `rekey`, `recover`, `encrypt`.
/// The KMS crate reads the same variable for its `kms:STEP` points.
pub use crate::kms::ENV_CRASH_AT;

/// Environment variable of the fault-injection hook (debug builds only), same syntax as
/// [`ENV_CRASH_AT`]: instead of aborting, the step fails with "no space left on device", as
/// if a write there had hit a full disk (the process goes on and handles the error).
pub const ENV_FAIL_AT: &str = "SQLITE_TDE_TEST_FAIL_AT";

/// Progress of a long operation, reported to the thread's observer.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// `rekey`, `recover` (finishing an interrupted rekey at open), `encrypt` (in place),
    /// `encrypt-recover`.
    pub operation: &'static str,
    /// Bytes done.
    pub done: u64,
    /// Bytes in all.
    pub total: u64,
}

type Observer = Box<dyn FnMut(&Progress) -> ControlFlow<()>>;

thread_local! {
    static OBSERVER: RefCell<Option<Observer>> = const { RefCell::new(None) };
}

/// Run `f` with `observer` receiving the progress of every rekey, recovery or in-place
/// encryption this thread performs (also those run by the VFS while opening a database).
/// Returning `Break` stops the operation cleanly between two chunks; it stays resumable.
pub fn with_progress<R>(observer: impl FnMut(&Progress) -> ControlFlow<()> + 'static, f: impl FnOnce() -> R) -> R {
    let previous = OBSERVER.with(|o| o.borrow_mut().replace(Box::new(observer)));
    struct Restore(Option<Observer>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            OBSERVER.with(|o| *o.borrow_mut() = prev);
        }
    }
    let _restore = Restore(previous);
    f()
}

pub(crate) fn observe(p: &Progress) -> ControlFlow<()> {
    // Take the observer out while it runs, so it may itself do anything (even I/O).
    let taken = OBSERVER.with(|o| o.borrow_mut().take());
    match taken {
        Some(mut obs) => {
            let r = obs(p);
            OBSERVER.with(|o| {
                let mut slot = o.borrow_mut();
                if slot.is_none() {
                    *slot = Some(obs);
                }
            });
            r
        }
        None => ControlFlow::Continue(()),
    }
}

/// The production hook: progress to the thread's observer; in debug builds, the crash
/// injection of [`ENV_CRASH_AT`].
pub(crate) struct VfsHook {
    operation: &'static str,
    crash_at: Option<(Step, u64)>,
    fail_at: Option<(Step, u64)>,
    counts: HashMap<Step, u64>,
}

impl VfsHook {
    pub(crate) fn new(operation: &'static str) -> VfsHook {
        let crash_at = Self::injection(ENV_CRASH_AT, operation);
        let fail_at = Self::injection(ENV_FAIL_AT, operation);
        VfsHook { operation, crash_at, fail_at, counts: HashMap::new() }
    }

    /// A test injection point `OPERATION:STEP[@N]` from `var`, for this operation.
    fn injection(var: &str, operation: &str) -> Option<(Step, u64)> {
        if cfg!(debug_assertions) {
            std::env::var(var).ok().and_then(|v| {
                let (op, rest) = v.split_once(':')?;
                if op != operation {
                    return None;
                }
                let (name, n) = match rest.split_once('@') {
                    Some((s, n)) => (s, n.parse().ok()?),
                    None => (rest, 0),
                };
                Some((Step::from_name(name)?, n))
            })
        } else {
            None
        }
    }
}

impl engine::Hook for VfsHook {
    fn step(&mut self, step: Step) -> Result<()> {
        let n = self.counts.entry(step).or_insert(0);
        let seen = *n;
        *n += 1;
        if self.crash_at == Some((step, seen)) {
            eprintln!("sqlite-tde: test crash injection: {}:{}@{seen}", self.operation, step.name());
            std::process::abort();
        }
        if self.fail_at == Some((step, seen)) {
            return Err(Error::Io(std::io::Error::new(
                ErrorKind::StorageFull,
                format!("test fault injection: {}:{}@{seen}: no space left on device", self.operation, step.name()),
            )));
        }
        Ok(())
    }
    fn progress(&mut self, done: u64, total: u64) -> ControlFlow<()> {
        observe(&Progress { operation: self.operation, done, total })
    }
}
