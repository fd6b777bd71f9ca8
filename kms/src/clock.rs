//! Time for the KMS: an injectable clock (deletion windows, rotation periods, import expiry
//! and audit timestamps all read it), and UTC date formatting/parsing without a calendar crate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds in a day.
pub const DAY: u64 = 86_400;

/// Environment variable that pins the clock of the `sqlite-tde` CLI to a Unix time, in debug
/// builds only (tests and drills: it lets a child process run "in the future" to cross a
/// deletion window). A release build does not contain the code that reads it: there it would
/// skip the deletion waiting period and forge audit timestamps.
#[cfg(debug_assertions)]
pub const ENV_TEST_NOW: &str = "SQLITE_TDE_TEST_NOW";

/// A source of the current time in Unix seconds.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> u64;

    /// The boot clock, which setting the wall clock does not move (see
    /// `kms::local::deletion`); `None` where it cannot be read.
    fn boot(&self) -> Option<BootReading> {
        None
    }
}

/// A reading of the kernel's boot clock: seconds since boot (suspend included, not settable),
/// and which boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootReading {
    pub boot_id: String,
    pub secs: u64,
}

/// Linux: `/proc/sys/kernel/random/boot_id` and the first field of `/proc/uptime`
/// (`CLOCK_BOOTTIME`).
fn system_boot() -> Option<BootReading> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?.trim().to_string();
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs = uptime.split(['.', ' ']).next()?.parse().ok()?;
    (!boot_id.is_empty()).then_some(BootReading { boot_id, secs })
}

/// The operating system's clock. It reads no configuration: a test clock is a different
/// [`Clock`], chosen where the program starts ([`pin_process_clock`]) or injected
/// (`LocalKms::with_clock`).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    }

    fn boot(&self) -> Option<BootReading> {
        system_boot()
    }
}

/// The time pinned by [`pin_process_clock`], if any (debug builds only).
#[cfg(debug_assertions)]
static PINNED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Debug builds only: make every [`process_clock`] taken from now on a clock stopped at `now`.
/// The CLI calls it at start-up with [`ENV_TEST_NOW`]; nothing else may.
#[cfg(debug_assertions)]
pub fn pin_process_clock(now: u64) {
    let _ = PINNED.set(now);
}

/// The clock a KMS made by this process runs on: the system clock (in debug builds, the one
/// [`pin_process_clock`] pinned).
pub fn process_clock() -> std::sync::Arc<dyn Clock> {
    #[cfg(debug_assertions)]
    if let Some(&t) = PINNED.get() {
        return std::sync::Arc::new(ManualClock::new(t));
    }
    std::sync::Arc::new(SystemClock)
}

/// A clock that only moves when told to (in-process tests). Its boot clock starts at the wall
/// time it was made with and follows [`ManualClock::advance`] and [`ManualClock::set`];
/// [`ManualClock::jump`] moves the wall clock alone, [`ManualClock::reboot`] starts a new boot.
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicU64,
    boot_secs: AtomicU64,
    boot: AtomicU64,
}

impl ManualClock {
    pub fn new(now: u64) -> ManualClock {
        ManualClock { now: AtomicU64::new(now), boot_secs: AtomicU64::new(now), boot: AtomicU64::new(0) }
    }
    /// Set the time: time passes on both clocks up to `now` (a later time), or the wall clock
    /// is set back (an earlier one).
    pub fn set(&self, now: u64) {
        let before = self.now.swap(now, Ordering::SeqCst);
        self.boot_secs.fetch_add(now.saturating_sub(before), Ordering::SeqCst);
    }
    /// Let `secs` pass.
    pub fn advance(&self, secs: u64) {
        self.now.fetch_add(secs, Ordering::SeqCst);
        self.boot_secs.fetch_add(secs, Ordering::SeqCst);
    }
    /// Set the wall clock `secs` forward without time passing (an operator or NTP error).
    pub fn jump(&self, secs: u64) {
        self.now.fetch_add(secs, Ordering::SeqCst);
    }
    /// A reboot: a new boot id, its boot clock at 0.
    pub fn reboot(&self) {
        self.boot.fetch_add(1, Ordering::SeqCst);
        self.boot_secs.store(0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }

    fn boot(&self) -> Option<BootReading> {
        let boot = self.boot.load(Ordering::SeqCst);
        Some(BootReading { boot_id: format!("manual-clock-boot-{boot}"), secs: self.boot_secs.load(Ordering::SeqCst) })
    }
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian; H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// RFC 3339 UTC, e.g. `2025-01-31T12:00:00Z`.
pub fn format_time(secs: u64) -> String {
    let days = (secs / DAY) as i64;
    let rem = secs % DAY;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// Parse a time: Unix seconds (`1700000000`), an RFC 3339 UTC time
/// (`2025-01-31T12:00:00Z`, fractional seconds and `+HH:MM` offsets accepted), or a date
/// (`2025-01-31`, midnight UTC).
pub fn parse_time(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let bad = || format!("invalid time '{s}': use Unix seconds, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ");
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_err(|_| bad());
    }
    let (date, time) = match s.split_once(['T', 't', ' ']) {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut dp = date.split('-');
    let (Some(y), Some(m), Some(d), None) = (dp.next(), dp.next(), dp.next(), dp.next()) else { return Err(bad()) };
    let y: i64 = y.parse().map_err(|_| bad())?;
    let m: u32 = m.parse().map_err(|_| bad())?;
    let d: u32 = d.parse().map_err(|_| bad())?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || y < 1970 {
        return Err(bad());
    }
    let mut secs = days_from_civil(y, m, d) * DAY as i64;
    if let Some(t) = time {
        let (clock, offset) = if let Some(c) = t.strip_suffix(['Z', 'z']) {
            (c, 0i64)
        } else if let Some(i) = t.rfind(['+', '-']) {
            let (c, o) = t.split_at(i);
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let (oh, om) = o[1..].split_once(':').ok_or_else(bad)?;
            let oh: i64 = oh.parse().map_err(|_| bad())?;
            let om: i64 = om.parse().map_err(|_| bad())?;
            (c, sign * (oh * 3600 + om * 60))
        } else {
            (t, 0)
        };
        let clock = clock.split('.').next().unwrap_or(clock);
        let mut parts = clock.split(':');
        let h: i64 = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let mi: i64 = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let se: i64 = parts.next().unwrap_or("0").parse().map_err(|_| bad())?;
        if h > 23 || mi > 59 || se > 60 {
            return Err(bad());
        }
        secs += h * 3600 + mi * 60 + se - offset;
    }
    u64::try_from(secs).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for t in [0u64, 951_782_400, 1_700_000_000, 4_102_444_800] {
            assert_eq!(parse_time(&format_time(t)).unwrap(), t);
        }
        assert_eq!(format_time(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(parse_time("2023-11-14").unwrap(), 1_699_920_000);
        assert_eq!(parse_time("2023-11-14T23:13:20+01:00").unwrap(), 1_700_000_000);
        assert!(parse_time("yesterday").is_err());
    }

    /// `SQLITE_TDE_TEST_NOW` used to be read by `SystemClock` itself, in every build: a release
    /// binary run with it destroyed keys pending deletion at once and wrote audit records with
    /// forged times. The system clock reads no environment now, and the pin that replaces the
    /// variable does not exist without debug assertions (run this test with
    /// `--config 'profile.test.package.sqlite-tde.debug-assertions=false'` to check that build).
    #[test]
    fn system_clock_ignores_the_test_variable() {
        let real = || SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        std::env::set_var("SQLITE_TDE_TEST_NOW", "1000");
        let t = SystemClock.now();
        std::env::remove_var("SQLITE_TDE_TEST_NOW");
        assert!(t >= real() - 5 && t <= real(), "SystemClock honoured SQLITE_TDE_TEST_NOW: {t}");
        // Nothing pinned in this process: the process clock is the system clock.
        assert!(process_clock().now() >= real() - 5);
    }

    #[test]
    fn the_boot_clock_is_read() {
        if cfg!(target_os = "linux") {
            let b = SystemClock.boot().expect("/proc/uptime and boot_id");
            assert_eq!(b.boot_id.len(), 36, "{b:?}");
            assert!(SystemClock.boot().unwrap().secs >= b.secs);
        }
    }
}
