//! The in-process store: what one machine uses, and what a fleet falls back on while Redis
//! is unreachable.
//!
//! Entries live in a fixed number of shards (each a `Mutex<HashMap>`, held for a few
//! instructions and never across an `.await`), so concurrent requests rarely wait on each
//! other. Memory is bounded: expired entries are dropped when met, one shard is swept every
//! [`SWEEP_EVERY_MS`] by whichever call comes along, and a full shard first drops its expired
//! entries, then the sixteenth of its entries that expire soonest.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::clock::SharedClock;
use super::token::{Origin, Token};
use super::window::{Count, Window};
use super::{count_key, hit_key, lock_key, millis, slot_key};

const SHARDS: usize = 32;
/// Entries kept at most by [`LocalStore::new`] (about 100 MB at the worst).
const DEFAULT_CAPACITY: usize = 1 << 20;
/// How often (in the store's clock) one more shard is swept of its expired entries.
const SWEEP_EVERY_MS: u64 = 250;

enum Value {
    Count(u64),
    Lock(String),
    /// Slot holders and when each one's lease ends.
    Slots(Vec<(String, u64)>),
}

struct Entry {
    /// Unix milliseconds; the entry is gone from then on.
    expires_at: u64,
    value: Value,
}

type Shard = HashMap<String, Entry>;

/// Counters, locks and slots of this process. Every operation is synchronous and short.
pub struct LocalStore {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    hasher: RandomState,
    clock: SharedClock,
    next_sweep_ms: AtomicU64,
    sweep_cursor: AtomicUsize,
}

impl LocalStore {
    /// A store holding at most 2^20 entries (about 100 MB at the worst).
    pub fn new(clock: SharedClock) -> LocalStore {
        LocalStore::with_capacity(clock, DEFAULT_CAPACITY)
    }

    /// A store holding at most about `entries` entries (rounded up to fill every shard).
    pub fn with_capacity(clock: SharedClock, entries: usize) -> LocalStore {
        LocalStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect(),
            per_shard: entries.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
            clock,
            next_sweep_ms: AtomicU64::new(0),
            sweep_cursor: AtomicUsize::new(0),
        }
    }

    /// Add `amount` to `key`'s count in the current `window`; the count after it.
    pub fn hit(&self, key: &str, amount: u64, window: Window) -> Count {
        let now = self.now();
        let k = hit_key(key, window, now);
        let mut shard = self.shard(&k);
        let total = match live(&mut shard, &k, now) {
            Some(Entry {
                value: Value::Count(n),
                ..
            }) => {
                *n = n.saturating_add(amount);
                *n
            }
            _ => {
                let entry = Entry {
                    expires_at: window.end(now),
                    value: Value::Count(amount),
                };
                self.insert(&mut shard, k, entry, now);
                amount
            }
        };
        Count {
            total,
            resets_in: window.resets_in(now),
        }
    }

    /// `key`'s count in the current `window`, adding nothing.
    pub fn peek(&self, key: &str, window: Window) -> Count {
        let now = self.now();
        let k = hit_key(key, window, now);
        let mut shard = self.shard(&k);
        let total = match live(&mut shard, &k, now) {
            Some(Entry {
                value: Value::Count(n),
                ..
            }) => *n,
            _ => 0,
        };
        Count {
            total,
            resets_in: window.resets_in(now),
        }
    }

    /// Add one to `key`'s count, which ends `ttl` after its first increment; the count after.
    pub fn incr(&self, key: &str, ttl: Duration) -> u64 {
        let now = self.now();
        let k = count_key(key);
        let mut shard = self.shard(&k);
        match live(&mut shard, &k, now) {
            Some(Entry {
                value: Value::Count(n),
                ..
            }) => {
                *n = n.saturating_add(1);
                *n
            }
            _ => {
                let entry = Entry {
                    expires_at: now.saturating_add(millis(ttl)),
                    value: Value::Count(1),
                };
                self.insert(&mut shard, k, entry, now);
                1
            }
        }
    }

    /// Take `key`'s lock for `lease`, or `None` while someone holds it.
    pub fn try_lock(&self, key: &str, lease: Duration) -> Option<Token> {
        let now = self.now();
        let k = lock_key(key);
        let mut shard = self.shard(&k);
        if live(&mut shard, &k, now).is_some() {
            return None;
        }
        let token = Token::new(Origin::Local);
        let entry = Entry {
            expires_at: now.saturating_add(millis(lease)),
            value: Value::Lock(token.as_str().to_string()),
        };
        self.insert(&mut shard, k, entry, now);
        Some(token)
    }

    /// Extend the lock to `lease` from now, if `token` still holds it.
    pub fn renew_lock(&self, key: &str, token: &Token, lease: Duration) -> bool {
        let now = self.now();
        let k = lock_key(key);
        let mut shard = self.shard(&k);
        match live(&mut shard, &k, now) {
            Some(entry) if matches!(&entry.value, Value::Lock(t) if t == token.as_str()) => {
                entry.expires_at = now.saturating_add(millis(lease));
                true
            }
            _ => false,
        }
    }

    /// Free the lock, if `token` still holds it.
    pub fn unlock(&self, key: &str, token: &Token) {
        let k = lock_key(key);
        let mut shard = self.shard(&k);
        if matches!(shard.get(&k), Some(Entry { value: Value::Lock(t), .. }) if t == token.as_str())
        {
            shard.remove(&k);
        }
    }

    /// Take one of `key`'s `max` slots for `lease`, or `None` while all are held.
    pub fn acquire_slot(&self, key: &str, max: u32, lease: Duration) -> Option<Token> {
        let now = self.now();
        let k = slot_key(key);
        let until = now.saturating_add(millis(lease));
        let mut shard = self.shard(&k);
        let token = Token::new(Origin::Local);
        match live(&mut shard, &k, now) {
            Some(Entry {
                value: Value::Slots(holders),
                expires_at,
            }) => {
                holders.retain(|(_, end)| *end > now);
                if holders.len() >= max as usize {
                    return None;
                }
                holders.push((token.as_str().to_string(), until));
                *expires_at = (*expires_at).max(until);
            }
            _ => {
                if max == 0 {
                    return None;
                }
                let entry = Entry {
                    expires_at: until,
                    value: Value::Slots(vec![(token.as_str().to_string(), until)]),
                };
                self.insert(&mut shard, k, entry, now);
            }
        }
        Some(token)
    }

    /// Extend a slot to `lease` from now, if `token` still holds it.
    pub fn renew_slot(&self, key: &str, token: &Token, lease: Duration) -> bool {
        let now = self.now();
        let k = slot_key(key);
        let until = now.saturating_add(millis(lease));
        let mut shard = self.shard(&k);
        let Some(Entry {
            value: Value::Slots(holders),
            expires_at,
        }) = live(&mut shard, &k, now)
        else {
            return false;
        };
        match holders
            .iter_mut()
            .find(|(t, end)| t == token.as_str() && *end > now)
        {
            Some((_, end)) => {
                *end = until;
                *expires_at = (*expires_at).max(until);
                true
            }
            None => false,
        }
    }

    /// Free a slot, if `token` holds it.
    pub fn release_slot(&self, key: &str, token: &Token) {
        let k = slot_key(key);
        let mut shard = self.shard(&k);
        if let Some(Entry {
            value: Value::Slots(holders),
            ..
        }) = shard.get_mut(&k)
        {
            holders.retain(|(t, _)| t != token.as_str());
            if holders.is_empty() {
                shard.remove(&k);
            }
        }
    }

    /// Entries held, expired ones not yet dropped included.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drop every expired entry now (calls already do it a shard at a time).
    pub fn sweep(&self) {
        let now = self.clock.now_unix_ms();
        for shard in self.shards.iter() {
            lock(shard).retain(|_, e| e.expires_at > now);
        }
    }

    /// The time, after sweeping one shard if one is due.
    fn now(&self) -> u64 {
        let now = self.clock.now_unix_ms();
        let due = self.next_sweep_ms.load(Ordering::Relaxed);
        if now >= due
            && self
                .next_sweep_ms
                .compare_exchange(
                    due,
                    now + SWEEP_EVERY_MS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            let i = self.sweep_cursor.fetch_add(1, Ordering::Relaxed) % SHARDS;
            lock(&self.shards[i]).retain(|_, e| e.expires_at > now);
        }
        now
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        lock(&self.shards[i])
    }

    /// Insert, making room first if the shard is full.
    fn insert(&self, shard: &mut Shard, key: String, entry: Entry, now: u64) {
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            shard.retain(|_, e| e.expires_at > now);
            if shard.len() >= self.per_shard {
                evict_soonest(shard, (self.per_shard / 16).max(1));
            }
        }
        shard.insert(key, entry);
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(|p| p.into_inner())
}

/// `key`'s entry unless it has expired (an expired one is dropped).
fn live<'a>(shard: &'a mut Shard, key: &str, now: u64) -> Option<&'a mut Entry> {
    if shard.get(key).is_some_and(|e| e.expires_at <= now) {
        shard.remove(key);
    }
    shard.get_mut(key)
}

/// Drop the `n` entries that expire soonest.
fn evict_soonest(shard: &mut Shard, n: usize) {
    let mut ends: Vec<u64> = shard.values().map(|e| e.expires_at).collect();
    let n = n.min(ends.len());
    if n == 0 {
        return;
    }
    let threshold = *ends.select_nth_unstable(n - 1).1;
    let mut left = n;
    shard.retain(|_, e| {
        if left > 0 && e.expires_at <= threshold {
            left -= 1;
            false
        } else {
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::clock::ManualClock;
    use std::sync::Arc;

    /// 2024-03-01T23:59:59Z.
    const BEFORE_MIDNIGHT: u64 = 1_709_337_599_000;

    fn store() -> (Arc<ManualClock>, LocalStore) {
        let clock = ManualClock::new(BEFORE_MIDNIGHT);
        (clock.clone(), LocalStore::new(clock))
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn hits_add_up_within_a_window_and_restart_in_the_next() {
        let (clock, store) = store();
        assert_eq!(store.hit("a", 1, Window::SECOND).total, 1);
        assert_eq!(store.hit("a", 2, Window::SECOND).total, 3);
        assert_eq!(store.hit("b", 1, Window::SECOND).total, 1, "keys are apart");
        assert_eq!(
            store.hit("a", 1, Window::MINUTE).total,
            1,
            "windows are apart"
        );
        clock.advance(MS(999));
        let count = store.peek("a", Window::SECOND);
        assert_eq!(count.total, 3);
        assert_eq!(count.resets_in, MS(1));
        clock.advance(MS(1));
        assert_eq!(store.peek("a", Window::SECOND).total, 0);
        assert_eq!(store.hit("a", 1, Window::SECOND).total, 1);
    }

    #[test]
    fn a_daily_budget_restarts_at_midnight_utc() {
        let (clock, store) = store();
        clock.advance(MS(500));
        let spent = store.hit("tokens:acme", 9_000, Window::DAY);
        assert_eq!(spent.total, 9_000);
        assert_eq!(spent.resets_in, MS(500));
        assert_eq!(spent.retry_after_secs(), 1);
        clock.advance(MS(499));
        assert_eq!(store.peek("tokens:acme", Window::DAY).total, 9_000);
        clock.advance(MS(1));
        let fresh = store.peek("tokens:acme", Window::DAY);
        assert_eq!(fresh.total, 0, "a new UTC day");
        assert_eq!(fresh.resets_in, Duration::from_secs(86_400));
    }

    #[test]
    fn peek_adds_nothing_and_keeps_nothing() {
        let (_, store) = store();
        assert_eq!(store.peek("a", Window::HOUR).total, 0);
        assert_eq!(store.peek("a", Window::HOUR).total, 0);
        assert!(store.is_empty());
    }

    #[test]
    fn a_counter_lasts_its_ttl_from_the_first_increment() {
        let (clock, store) = store();
        assert_eq!(store.incr("conv", MS(1_000)), 1);
        clock.advance(MS(600));
        assert_eq!(store.incr("conv", MS(1_000)), 2);
        clock.advance(MS(400));
        assert_eq!(
            store.incr("conv", MS(1_000)),
            1,
            "expired 1 s after the first"
        );
    }

    #[test]
    fn a_lock_excludes_until_unlocked_or_its_lease_ends() {
        let (clock, store) = store();
        let first = store.try_lock("conv", MS(1_000)).expect("free");
        assert!(store.try_lock("conv", MS(1_000)).is_none());
        assert!(store.try_lock("other", MS(1_000)).is_some());
        clock.advance(MS(999));
        assert!(store.try_lock("conv", MS(1_000)).is_none());
        clock.advance(MS(1));
        let second = store.try_lock("conv", MS(1_000)).expect("lease over");
        assert!(
            !store.renew_lock("conv", &first, MS(1_000)),
            "the old holder lost it"
        );
        store.unlock("conv", &first);
        assert!(
            store.try_lock("conv", MS(1_000)).is_none(),
            "the old holder cannot free the new holder's lock"
        );
        store.unlock("conv", &second);
        assert!(store.try_lock("conv", MS(1_000)).is_some());
    }

    #[test]
    fn renewing_a_lock_extends_its_lease() {
        let (clock, store) = store();
        let token = store.try_lock("conv", MS(1_000)).unwrap();
        for _ in 0..5 {
            clock.advance(MS(700));
            assert!(store.renew_lock("conv", &token, MS(1_000)));
        }
        assert!(store.try_lock("conv", MS(1_000)).is_none());
        clock.advance(MS(1_000));
        assert!(!store.renew_lock("conv", &token, MS(1_000)), "too late");
        assert!(store.try_lock("conv", MS(1_000)).is_some());
    }

    #[test]
    fn slots_admit_max_holders_until_released_or_expired() {
        let (clock, store) = store();
        let a = store.acquire_slot("ip", 2, MS(1_000)).unwrap();
        clock.advance(MS(500));
        let b = store.acquire_slot("ip", 2, MS(1_000)).unwrap();
        assert!(store.acquire_slot("ip", 2, MS(1_000)).is_none());
        assert!(store.acquire_slot("other", 2, MS(1_000)).is_some());
        store.release_slot("ip", &b);
        let c = store.acquire_slot("ip", 2, MS(1_000)).expect("b released");
        assert!(store.renew_slot("ip", &c, MS(1_000)));
        clock.advance(MS(500));
        assert!(!store.renew_slot("ip", &a, MS(1_000)), "a's lease ended");
        let d = store.acquire_slot("ip", 2, MS(1_000)).expect("a expired");
        assert!(store.acquire_slot("ip", 2, MS(1_000)).is_none());
        store.release_slot("ip", &c);
        store.release_slot("ip", &d);
        assert!(store.acquire_slot("ip", 0, MS(1_000)).is_none());
        assert!(store.acquire_slot("free", 0, MS(1_000)).is_none());
    }

    #[test]
    fn memory_is_bounded_and_expired_entries_go_first() {
        let clock = ManualClock::new(BEFORE_MIDNIGHT);
        let store = LocalStore::with_capacity(clock.clone(), 64);
        let capacity = 64_usize.div_ceil(SHARDS).max(1) * SHARDS;
        let lock = store.try_lock("long", Duration::from_secs(3_600)).unwrap();
        for i in 0..10_000 {
            store.hit(&format!("ip{i}"), 1, Window::SECOND);
        }
        assert!(store.len() <= capacity, "{} entries", store.len());
        assert!(
            store.try_lock("long", MS(1)).is_none(),
            "the longest-lived entry stays while shorter ones are evicted"
        );
        clock.advance(MS(1_000));
        store.sweep();
        assert_eq!(store.len(), 1, "the lock outlives the second windows");
        store.unlock("long", &lock);
        assert!(store.is_empty());
    }

    #[test]
    fn calls_sweep_expired_entries_shard_by_shard() {
        let (clock, store) = store();
        for i in 0..1_000 {
            store.hit(&format!("ip{i}"), 1, Window::SECOND);
        }
        clock.advance(MS(1_000));
        for _ in 0..SHARDS {
            clock.advance(MS(SWEEP_EVERY_MS));
            store.peek("x", Window::SECOND);
        }
        assert!(store.is_empty(), "{} left", store.len());
    }
}
