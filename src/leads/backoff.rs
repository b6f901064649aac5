//! Retry delays for lead delivery: exponential (1 s, 2 s, 4 s, … up to 5 min), jittered so
//! that leads queued together while the mail server was down do not all retry at once.

use std::hash::BuildHasher;
use std::time::{Duration, SystemTime};

/// An exponential backoff with a ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay after the first failure (before jitter).
    pub first: Duration,
    /// The largest delay (before jitter).
    pub max: Duration,
}

impl Backoff {
    /// Lead delivery: 1 s doubling to 5 min.
    pub const LEADS: Backoff = Backoff {
        first: Duration::from_secs(1),
        max: Duration::from_secs(5 * 60),
    };

    /// The delay after `failures` consecutive failures (1 for the first), given a `jitter`
    /// in `[0, 1)`: between half and all of `first × 2^(failures-1)`, capped at `max`.
    pub fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        let ceiling = self.first.saturating_mul(1 << doublings).min(self.max);
        ceiling.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

/// A random number in `[0, 1)`, good enough to spread retries (not for anything secret).
pub fn jitter() -> f64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    // Each RandomState is freshly keyed, so the hash is unpredictable even for equal inputs.
    let bits = std::collections::hash_map::RandomState::new().hash_one(nanos);
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_one_second_up_to_five_minutes() {
        let top = |failures| Backoff::LEADS.delay(failures, 1.0);
        assert_eq!(top(1), Duration::from_secs(1));
        assert_eq!(top(2), Duration::from_secs(2));
        assert_eq!(top(3), Duration::from_secs(4));
        assert_eq!(top(9), Duration::from_secs(256));
        assert_eq!(top(10), Duration::from_secs(300));
        assert_eq!(top(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn jitter_takes_off_at_most_half() {
        assert_eq!(Backoff::LEADS.delay(1, 0.0), Duration::from_millis(500));
        assert_eq!(Backoff::LEADS.delay(4, 0.5), Duration::from_secs(6));
        assert_eq!(Backoff::LEADS.delay(20, 0.0), Duration::from_secs(150));
    }

    #[test]
    fn zero_failures_count_as_one() {
        assert_eq!(Backoff::LEADS.delay(0, 1.0), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_in_range_and_varies() {
        let samples: Vec<f64> = (0..200).map(|_| jitter()).collect();
        assert!(samples.iter().all(|j| (0.0..1.0).contains(j)));
        let first = samples[0];
        assert!(samples.iter().any(|&j| j != first));
    }
}
