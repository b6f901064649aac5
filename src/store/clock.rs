//! Time as the store sees it: milliseconds since the unix epoch, from a [`Clock`] the store is
//! given, so that tests can stand at 23:59:59 UTC and step over midnight without waiting.
//!
//! Fixed windows (rate limits, daily budgets, lead caps) are cut on this clock, in this process
//! and on Redis alike; lock and slot leases on Redis run on Redis's own clock (one clock for
//! every replica), leases in the process store on this one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since 1970-01-01T00:00:00Z.
    fn now_unix_ms(&self) -> u64;
}

/// The clock every store shares with its handles.
pub type SharedClock = Arc<dyn Clock>;

/// The machine's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl SystemClock {
    /// The machine's clock, shared.
    pub fn shared() -> SharedClock {
        Arc::new(SystemClock)
    }
}

impl Clock for SystemClock {
    fn now_unix_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock that moves only when told to, for tests.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicU64,
}

impl ManualClock {
    /// A clock standing at `unix_ms`.
    pub fn new(unix_ms: u64) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            now_ms: AtomicU64::new(unix_ms),
        })
    }

    /// Stand at `unix_ms`.
    pub fn set(&self, unix_ms: u64) {
        self.now_ms.store(unix_ms, Ordering::SeqCst);
    }

    /// Move forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.now_ms.fetch_add(by, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_unix_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

/// A clock read from a file holding unix milliseconds, re-read on every call: how the
/// integration tests move a running proxy's time (environment variable
/// `CHATBOT_PROXY_TEST_CLOCK_FILE`, never for production). An unreadable file reads as the
/// machine's time.
#[derive(Debug)]
pub struct FileClock {
    path: std::path::PathBuf,
}

impl FileClock {
    pub fn shared(path: impl Into<std::path::PathBuf>) -> SharedClock {
        Arc::new(FileClock { path: path.into() })
    }
}

impl Clock for FileClock {
    fn now_unix_ms(&self) -> u64 {
        std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or_else(|| SystemClock.now_unix_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(1_000);
        assert_eq!(clock.now_unix_ms(), 1_000);
        clock.advance(Duration::from_millis(250));
        assert_eq!(clock.now_unix_ms(), 1_250);
        clock.set(5);
        assert_eq!(clock.now_unix_ms(), 5);
    }

    #[test]
    fn the_system_clock_is_past_2024() {
        // 2024-01-01T00:00:00Z: a clock stuck at 0 or counting seconds would fail.
        assert!(SystemClock.now_unix_ms() > 1_704_067_200_000);
    }
}
