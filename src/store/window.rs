//! Fixed counting windows aligned to the unix epoch, and what a count answers.
//!
//! A window of length `w` holds the instants `[k·w, (k+1)·w)` since the epoch, so every replica
//! cuts the same windows without talking to the others, and a one-day window resets at
//! midnight UTC (the epoch is a midnight UTC and days have no leap seconds in unix time).

use std::time::Duration;

/// The length of a fixed counting window; at least one millisecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    ms: u64,
}

impl Window {
    pub const SECOND: Window = Window { ms: 1_000 };
    pub const MINUTE: Window = Window { ms: 60_000 };
    pub const HOUR: Window = Window { ms: 3_600_000 };
    /// From midnight UTC to midnight UTC.
    pub const DAY: Window = Window { ms: 86_400_000 };

    /// A window of `length`, in whole milliseconds; `None` below one millisecond.
    pub fn from_duration(length: Duration) -> Option<Window> {
        let ms = u64::try_from(length.as_millis()).ok()?;
        (ms > 0).then_some(Window { ms })
    }

    /// The window named by the unit of a rate (`N/sec|min|hour|day`).
    pub fn from_unit(unit: &str) -> Option<Window> {
        match unit {
            "sec" => Some(Window::SECOND),
            "min" => Some(Window::MINUTE),
            "hour" => Some(Window::HOUR),
            "day" => Some(Window::DAY),
            _ => None,
        }
    }

    /// The window's length.
    pub fn duration(self) -> Duration {
        Duration::from_millis(self.ms)
    }

    pub(crate) fn millis(self) -> u64 {
        self.ms
    }

    /// The number of the window holding `now_ms` (windows since the epoch).
    pub fn index(self, now_ms: u64) -> u64 {
        now_ms / self.ms
    }

    /// When the window holding `now_ms` began (unix milliseconds).
    pub fn start(self, now_ms: u64) -> u64 {
        now_ms - now_ms % self.ms
    }

    /// When the window holding `now_ms` ends and the next begins (unix milliseconds).
    pub fn end(self, now_ms: u64) -> u64 {
        self.start(now_ms).saturating_add(self.ms)
    }

    /// How long from `now_ms` until the count starts again from zero; never zero.
    pub fn resets_in(self, now_ms: u64) -> Duration {
        Duration::from_millis(self.end(now_ms) - now_ms)
    }
}

/// A window's count after a [`hit`](super::Store::hit) or [`peek`](super::Store::peek).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    /// Everything added in the current window, this call's amount included.
    pub total: u64,
    /// Time left until the window ends and the count restarts from zero.
    pub resets_in: Duration,
}

impl Count {
    /// `resets_in` in whole seconds, rounded up and at least 1: the value of a `Retry-After`
    /// header, so that a client retrying then lands in the next window.
    pub fn retry_after_secs(&self) -> u64 {
        self.resets_in.as_millis().div_ceil(1_000).max(1) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-03-01T00:00:00Z.
    const MIDNIGHT: u64 = 1_709_251_200_000;

    #[test]
    fn a_day_window_runs_from_midnight_utc_to_midnight_utc() {
        let just_before = MIDNIGHT - 1;
        assert_eq!(Window::DAY.end(just_before), MIDNIGHT);
        assert_eq!(Window::DAY.resets_in(just_before), Duration::from_millis(1));
        assert_eq!(Window::DAY.start(MIDNIGHT), MIDNIGHT);
        assert_eq!(Window::DAY.start(MIDNIGHT + 13 * 3_600_000), MIDNIGHT);
        assert_eq!(
            Window::DAY.resets_in(MIDNIGHT),
            Duration::from_secs(86_400),
            "a window that just began has its whole length ahead"
        );
        assert_eq!(
            Window::DAY.index(just_before) + 1,
            Window::DAY.index(MIDNIGHT)
        );
    }

    #[test]
    fn windows_are_aligned_to_the_epoch_not_to_the_first_hit() {
        let now = MIDNIGHT + 3_600_000 + 60_000 * 7 + 1_234;
        assert_eq!(Window::HOUR.start(now), MIDNIGHT + 3_600_000);
        assert_eq!(Window::MINUTE.start(now), MIDNIGHT + 3_600_000 + 420_000);
        assert_eq!(Window::SECOND.start(now), now - 234);
        assert_eq!(Window::SECOND.resets_in(now), Duration::from_millis(766));
        let odd = Window::from_duration(Duration::from_millis(7)).unwrap();
        assert_eq!(odd.start(20), 14);
        assert_eq!(odd.index(20), 2);
    }

    #[test]
    fn units_and_durations() {
        assert_eq!(Window::from_unit("sec"), Some(Window::SECOND));
        assert_eq!(Window::from_unit("min"), Some(Window::MINUTE));
        assert_eq!(Window::from_unit("hour"), Some(Window::HOUR));
        assert_eq!(Window::from_unit("day"), Some(Window::DAY));
        assert_eq!(Window::from_unit("week"), None);
        assert_eq!(Window::from_unit("Sec"), None);
        assert_eq!(Window::from_duration(Duration::from_micros(999)), None);
        assert_eq!(
            Window::from_duration(Duration::from_secs(60)),
            Some(Window::MINUTE)
        );
        assert_eq!(Window::DAY.duration(), Duration::from_secs(86_400));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let count = |ms| Count {
            total: 1,
            resets_in: Duration::from_millis(ms),
        };
        assert_eq!(count(1).retry_after_secs(), 1);
        assert_eq!(count(1_000).retry_after_secs(), 1);
        assert_eq!(count(1_001).retry_after_secs(), 2);
        assert_eq!(count(0).retry_after_secs(), 1);
        assert_eq!(count(86_400_000).retry_after_secs(), 86_400);
    }
}
