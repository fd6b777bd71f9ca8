//! Scheduled deletion that a wall-clock jump cannot bring forward.
//!
//! The waiting period (7-30 days) must elapse on the wall clock *and* on the kernel's boot
//! clock (`CLOCK_BOOTTIME` as /proc/uptime reports it: seconds since boot, suspend included,
//! not settable), two independent readings. The boot clock restarts with every boot, so the
//! keystore keeps a checkpoint per pending key: the waiting time still to be confirmed, and the
//! boot and both clocks when it was taken. Between a checkpoint and a reading in the same boot,
//! the time confirmed is the smaller of the two clocks' advances (a wall clock set forward, or
//! back, confirms nothing extra). Time in a boot after its last checkpoint, and while the
//! machine is off, is not counted: a reboot can only delay the deletion (by at most
//! [`CHECKPOINT_SECS`] plus the downtime), never bring it forward. Checkpoints are written by the
//! on-use maintenance at most once per [`CHECKPOINT_SECS`] of boot time, and after a reboot.
//!
//! Keys scheduled where no boot clock could be read, and keys scheduled by versions before this
//! record existed, are deleted on the wall clock alone.

use serde::{Deserialize, Serialize};

use crate::clock::BootReading;

/// How often (boot-clock seconds) a pending deletion's checkpoint is renewed.
pub const CHECKPOINT_SECS: u64 = 3600;

/// How long (wall-clock seconds) on-use maintenance waits before retrying a deletion whose
/// HSM objects could not be destroyed (`kms rotate-due` always retries).
pub const RETRY_SECS: u64 = 300;

/// A due deletion that could not destroy the key's HSM objects: the key stays pending
/// deletion (keystore field `deletion_failure`) until a retry succeeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionFailure {
    /// Wall clock of the failed attempt.
    pub at: u64,
    pub error: String,
}

/// The boot-clock side of a pending deletion (keystore field `deletion_clock`, FORMAT.md §4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionClock {
    /// Waiting time, in seconds, the boot clock has still to confirm after the checkpoint.
    pub remaining: u64,
    /// The boot the checkpoint was taken in (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
    /// The boot clock at the checkpoint.
    pub boot_secs: u64,
    /// The wall clock at the checkpoint.
    pub wall_secs: u64,
}

impl DeletionClock {
    /// The checkpoint of a deletion scheduled now for `window` seconds.
    pub fn start(window: u64, wall: u64, boot: &BootReading) -> DeletionClock {
        DeletionClock { remaining: window, boot_id: boot.boot_id.clone(), boot_secs: boot.secs, wall_secs: wall }
    }

    /// Seconds of waiting confirmed since the checkpoint: as much as both clocks advanced, and
    /// nothing after a reboot.
    fn confirmed(&self, wall: u64, boot: &BootReading) -> u64 {
        if boot.boot_id != self.boot_id {
            return 0;
        }
        boot.secs.saturating_sub(self.boot_secs).min(wall.saturating_sub(self.wall_secs))
    }

    /// Has the whole waiting period been confirmed? (The wall-clock deadline is checked too,
    /// by the caller.) No boot clock now: not confirmed, the deletion waits.
    pub fn elapsed(&self, wall: u64, boot: Option<&BootReading>) -> bool {
        boot.is_some_and(|b| self.confirmed(wall, b) >= self.remaining)
    }

    /// Is a new checkpoint due (another boot, or [`CHECKPOINT_SECS`] since the last)?
    pub fn stale(&self, boot: Option<&BootReading>) -> bool {
        boot.is_some_and(|b| b.boot_id != self.boot_id || b.secs >= self.boot_secs.saturating_add(CHECKPOINT_SECS))
    }

    /// Take a new checkpoint: what was confirmed since the last is subtracted.
    pub fn checkpoint(&mut self, wall: u64, boot: &BootReading) {
        let done = self.confirmed(wall, boot);
        *self = DeletionClock {
            remaining: self.remaining.saturating_sub(done),
            boot_id: boot.boot_id.clone(),
            boot_secs: boot.secs,
            wall_secs: wall,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(id: &str, secs: u64) -> BootReading {
        BootReading { boot_id: id.into(), secs }
    }

    #[test]
    fn both_clocks_must_advance() {
        let c = DeletionClock::start(7 * 86_400, 1_000_000, &at("a", 50));
        // The wall clock jumped 30 days, the boot clock moved a minute: not elapsed.
        assert!(!c.elapsed(1_000_000 + 30 * 86_400, Some(&at("a", 110))));
        // Both moved 7 days: elapsed.
        assert!(c.elapsed(1_000_000 + 7 * 86_400, Some(&at("a", 50 + 7 * 86_400))));
        // No boot clock, or another boot: not confirmed.
        assert!(!c.elapsed(1_000_000 + 8 * 86_400, None));
        assert!(!c.elapsed(1_000_000 + 8 * 86_400, Some(&at("b", 8 * 86_400))));
    }

    #[test]
    fn checkpoints_carry_confirmed_time_across_reboots() {
        let mut c = DeletionClock::start(7 * 86_400, 0, &at("a", 0));
        assert!(!c.stale(Some(&at("a", 10))));
        assert!(c.stale(Some(&at("a", CHECKPOINT_SECS))));
        c.checkpoint(3 * 86_400, &at("a", 3 * 86_400));
        assert_eq!(c.remaining, 4 * 86_400);
        // Rebooted (a day of downtime): the new boot starts from what was confirmed.
        assert!(c.stale(Some(&at("b", 5))));
        c.checkpoint(4 * 86_400, &at("b", 5));
        assert_eq!(c.remaining, 4 * 86_400);
        assert!(!c.elapsed(7 * 86_400, Some(&at("b", 5 + 3 * 86_400))));
        assert!(c.elapsed(8 * 86_400, Some(&at("b", 5 + 4 * 86_400))));
    }
}
