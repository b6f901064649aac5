//! Shared state for limits: counts in fixed windows, counters with a lifetime, locks and
//! slots with leases, in this process or in Redis for a fleet.
//!
//! What sits on it (issue 10): per-address and per-tenant rate limits and daily token budgets
//! ([`Store::hit`] / [`Store::peek`] in [`Window`]s aligned to the unix epoch, so a day ends at
//! midnight UTC), messages per conversation ([`Store::incr`]), the one-answer-per-conversation
//! lock ([`Store::try_lock`], or [`Store::hold_lock`] which renews itself while an answer
//! streams), concurrent streams per address ([`Store::acquire_slot`] / [`Store::hold_slot`]),
//! and lead caps ([`Store::hit`]).
//!
//! [`Store`] is the one handle the proxy uses; it never fails. Without `REDIS_URL` it is the
//! in-process [`LocalStore`]. With it, calls go to the [`RedisStore`], and when Redis errs or
//! does not answer within its timeout the call is served by the in-process store instead: one
//! warning per outage (URL without its password), `chatbot_proxy_store_errors_total` counts
//! every failed Redis call, a background probe checks at most once per
//! [`RedisOptions::probe_every`] whether Redis is back, and one line says when it is. Counts
//! made in the process during an outage stay there; the fleet shares limits again from then on.
//!
//! Keys are the caller's (say `ip:{tenant}:{address}`); the store keeps each kind of state
//! apart and, on Redis, puts them under the `chatbot-proxy:` prefix.

mod clock;
mod held;
mod local;
mod redis_store;
mod token;
mod window;

pub use clock::{Clock, FileClock, ManualClock, SharedClock, SystemClock};
pub use held::Held;
pub use local::LocalStore;
pub use redis_store::{redacted_url, RedisOptions, RedisStore, StoreError};
pub use token::Token;
pub use window::{Count, Window};

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

use token::Origin;

/// Where a store's calls go right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No Redis configured: this process only.
    Local,
    /// Redis, shared by every replica.
    Redis,
    /// Redis configured but failing: this process, until the probe finds Redis back.
    Fallback,
}

/// The proxy's shared state: cheap to clone, every clone the same store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    clock: SharedClock,
    local: LocalStore,
    remote: Option<Remote>,
}

/// Redis, and whether it currently serves.
struct Remote {
    redis: RedisStore,
    errors: Counter,
    down: AtomicBool,
    probing: AtomicBool,
    next_probe: Mutex<Instant>,
    url: String,
}

impl Store {
    /// In this process only.
    pub fn local(clock: SharedClock) -> Store {
        Store {
            inner: Arc::new(Inner {
                local: LocalStore::new(clock.clone()),
                clock,
                remote: None,
            }),
        }
    }

    /// On Redis at `options.url`, falling back on this process while it fails; `errors` is
    /// `chatbot_proxy_store_errors_total` (see [`Metrics::store_errors`]). Connects on first
    /// use, so it can be built before the runtime starts; fails only on a malformed URL. The
    /// URL's password is registered with the log redactor.
    ///
    /// [`Metrics::store_errors`]: crate::metrics::Metrics::store_errors
    pub fn with_redis(
        options: RedisOptions,
        clock: SharedClock,
        errors: Counter,
    ) -> Result<Store, String> {
        if let Some(password) = url::Url::parse(&options.url)
            .ok()
            .and_then(|u| u.password().map(str::to_string))
        {
            crate::logging::register_secret(&password);
        }
        let redis = RedisStore::new(options, clock.clone())?;
        Ok(Store {
            inner: Arc::new(Inner {
                local: LocalStore::new(clock.clone()),
                clock,
                remote: Some(Remote {
                    url: redis.url_for_logs(),
                    redis,
                    errors,
                    down: AtomicBool::new(false),
                    probing: AtomicBool::new(false),
                    next_probe: Mutex::new(Instant::now()),
                }),
            }),
        })
    }

    /// On Redis when `redis_url` is given (the `REDIS_URL` setting, default options), in this
    /// process otherwise.
    pub fn new(
        redis_url: Option<&str>,
        clock: SharedClock,
        errors: Counter,
    ) -> Result<Store, String> {
        match redis_url {
            Some(url) => Store::with_redis(RedisOptions::new(url), clock, errors),
            None => Ok(Store::local(clock)),
        }
    }

    /// Where calls go right now.
    pub fn mode(&self) -> Mode {
        match &self.inner.remote {
            None => Mode::Local,
            Some(r) if r.down.load(Ordering::SeqCst) => Mode::Fallback,
            Some(_) => Mode::Redis,
        }
    }

    /// The store's clock: windows are cut on it.
    pub fn clock(&self) -> &SharedClock {
        &self.inner.clock
    }

    /// Add `amount` to `key`'s count in the current `window` (aligned to the epoch); the
    /// count after it, and when the window ends. A limit of `N` per window is exceeded when
    /// `total > N`: answer 429 with `Retry-After: count.retry_after_secs()`.
    pub async fn hit(&self, key: &str, amount: u64, window: Window) -> Count {
        self.serve(
            |r| r.hit(key, amount, window),
            |l| l.hit(key, amount, window),
        )
        .await
    }

    /// `key`'s count in the current `window`, adding nothing (a budget checked before a
    /// request whose cost is known only after it).
    pub async fn peek(&self, key: &str, window: Window) -> Count {
        self.serve(|r| r.peek(key, window), |l| l.peek(key, window))
            .await
    }

    /// Add one to `key`'s counter, which ends `ttl` after its first increment (messages per
    /// conversation, with the conversation's lifetime); the count after it.
    pub async fn incr(&self, key: &str, ttl: Duration) -> u64 {
        self.serve(|r| r.incr(key, ttl), |l| l.incr(key, ttl)).await
    }

    /// Take `key`'s lock for `lease`, or `None` while another holder has it. Renew it with
    /// [`renew_lock`](Self::renew_lock) before the lease ends, free it with
    /// [`unlock`](Self::unlock); a holder that crashes loses it when the lease ends.
    pub async fn try_lock(&self, key: &str, lease: Duration) -> Option<Token> {
        self.serve(|r| r.try_lock(key, lease), |l| l.try_lock(key, lease))
            .await
    }

    /// Extend the lock to `lease` from now; `false` if `token` no longer holds it (its lease
    /// ended, or the store that gave it is unreachable).
    pub async fn renew_lock(&self, key: &str, token: &Token, lease: Duration) -> bool {
        match token.origin {
            Origin::Local => self.inner.local.renew_lock(key, token, lease),
            Origin::Redis => self
                .on_redis(|r| r.renew_lock(key, token, lease))
                .await
                .unwrap_or(false),
        }
    }

    /// Free the lock if `token` still holds it.
    pub async fn unlock(&self, key: &str, token: &Token) {
        match token.origin {
            Origin::Local => self.inner.local.unlock(key, token),
            Origin::Redis => {
                self.on_redis(|r| r.unlock(key, token)).await;
            }
        }
    }

    /// Take one of `key`'s `max` slots for `lease`, or `None` while all are held. Renew with
    /// [`renew_slot`](Self::renew_slot), free with [`release_slot`](Self::release_slot); a
    /// crashed holder's slot frees itself when its lease ends.
    pub async fn acquire_slot(&self, key: &str, max: u32, lease: Duration) -> Option<Token> {
        self.serve(
            |r| r.acquire_slot(key, max, lease),
            |l| l.acquire_slot(key, max, lease),
        )
        .await
    }

    /// Extend a slot to `lease` from now; `false` if `token` no longer holds it.
    pub async fn renew_slot(&self, key: &str, token: &Token, lease: Duration) -> bool {
        match token.origin {
            Origin::Local => self.inner.local.renew_slot(key, token, lease),
            Origin::Redis => self
                .on_redis(|r| r.renew_slot(key, token, lease))
                .await
                .unwrap_or(false),
        }
    }

    /// Free a slot if `token` holds it.
    pub async fn release_slot(&self, key: &str, token: &Token) {
        match token.origin {
            Origin::Local => self.inner.local.release_slot(key, token),
            Origin::Redis => {
                self.on_redis(|r| r.release_slot(key, token)).await;
            }
        }
    }

    /// Redis while it serves, the process store otherwise (and when Redis fails this call).
    async fn serve<'a, T, F>(
        &'a self,
        remote: impl FnOnce(&'a RedisStore) -> F,
        local: impl FnOnce(&LocalStore) -> T,
    ) -> T
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        if let Some(value) = self.on_redis(remote).await {
            return value;
        }
        local(&self.inner.local)
    }

    /// The call's result from Redis, or `None` when there is no Redis, it is down (a probe
    /// is started if one is due), or it fails this call.
    async fn on_redis<'a, T, F>(&'a self, call: impl FnOnce(&'a RedisStore) -> F) -> Option<T>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        let remote = self.inner.remote.as_ref()?;
        if remote.down.load(Ordering::SeqCst) {
            self.probe_if_due(remote);
            return None;
        }
        match call(&remote.redis).await {
            Ok(value) => Some(value),
            Err(e) => {
                remote.failed(&e);
                None
            }
        }
    }

    /// Check in the background whether Redis is back, unless a check ran less than
    /// `probe_every` ago or runs now.
    fn probe_if_due(&self, remote: &Remote) {
        let now = Instant::now();
        if now < *lock(&remote.next_probe) || remote.probing.swap(true, Ordering::SeqCst) {
            return;
        }
        *lock(&remote.next_probe) = now + remote.redis.options().probe_every;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            remote.probing.store(false, Ordering::SeqCst);
            return;
        };
        let store = self.clone();
        runtime.spawn(async move {
            let Some(remote) = store.inner.remote.as_ref() else {
                return;
            };
            // A failed call makes the connection manager start reconnecting; the second
            // ping waits for that reconnection.
            let answer = match remote.redis.ping().await {
                Ok(()) => Ok(()),
                Err(_) => remote.redis.ping().await,
            };
            match answer {
                Ok(()) => remote.back(),
                Err(e) => {
                    remote.errors.inc();
                    log::debug!("store: Redis at {} still failing: {e}", remote.url);
                }
            }
            remote.probing.store(false, Ordering::SeqCst);
        });
    }
}

impl Remote {
    /// A Redis call failed: count it; the first failure of an outage is logged and switches
    /// the store to the process.
    fn failed(&self, e: &StoreError) {
        self.errors.inc();
        if !self.down.swap(true, Ordering::SeqCst) {
            *lock(&self.next_probe) = Instant::now() + self.redis.options().probe_every;
            log::warn!(
                "store: Redis at {} failed ({e}); counting limits in this process until it is back",
                self.url
            );
        }
    }

    /// Redis answered a probe: serve from it again.
    fn back(&self) {
        if self.down.swap(false, Ordering::SeqCst) {
            log::warn!(
                "store: Redis at {} is back; limits are shared across replicas again",
                self.url
            );
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whole milliseconds of `d`, at least 1 (Redis refuses a zero expiry).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The key of `key`'s count in the window holding `now_ms`: a new key each window, so the
/// count restarts without anyone resetting it.
pub(crate) fn hit_key(key: &str, window: Window, now_ms: u64) -> String {
    format!("hit:{}:{}:{key}", window.millis(), window.index(now_ms))
}

pub(crate) fn count_key(key: &str) -> String {
    format!("n:{key}")
}

pub(crate) fn lock_key(key: &str) -> String {
    format!("lock:{key}")
}

pub(crate) fn slot_key(key: &str) -> String {
    format!("slot:{key}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    /// A loopback port nothing listens on (bound, then closed).
    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn without_redis_the_process_store_serves() {
        let clock = ManualClock::new(1_709_337_599_000);
        let store = Store::new(None, clock.clone(), Counter::default()).unwrap();
        assert_eq!(store.mode(), Mode::Local);
        assert_eq!(store.hit("ip", 2, Window::DAY).await.total, 2);
        assert_eq!(store.peek("ip", Window::DAY).await.total, 2);
        clock.advance(MS(1_000));
        assert_eq!(store.peek("ip", Window::DAY).await.total, 0, "midnight UTC");
        assert_eq!(store.incr("conv", MS(10)).await, 1);
        let token = store.try_lock("conv", MS(100)).await.unwrap();
        assert!(store.try_lock("conv", MS(100)).await.is_none());
        assert!(store.renew_lock("conv", &token, MS(100)).await);
        store.unlock("conv", &token).await;
        let slot = store.acquire_slot("ip", 1, MS(100)).await.unwrap();
        assert!(store.acquire_slot("ip", 1, MS(100)).await.is_none());
        assert!(store.renew_slot("ip", &slot, MS(100)).await);
        store.release_slot("ip", &slot).await;
        assert!(store.acquire_slot("ip", 1, MS(100)).await.is_some());
    }

    #[tokio::test]
    async fn a_held_lock_outlives_its_lease_and_frees_when_dropped() {
        let clock = ManualClock::new(0);
        let store = Store::local(clock.clone());
        let held = store.hold_lock("conv", MS(300)).await.unwrap();
        for _ in 0..4 {
            tokio::time::sleep(MS(150)).await;
            clock.advance(MS(150));
        }
        assert!(
            store.try_lock("conv", MS(300)).await.is_none(),
            "renewed past its first lease"
        );
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(5);
        while store.try_lock("conv", MS(300)).await.is_none() {
            assert!(Instant::now() < deadline, "never freed");
            tokio::time::sleep(MS(10)).await;
        }
        let slot = store.hold_slot("ip", 1, MS(300)).await.unwrap();
        assert!(store.hold_slot("ip", 1, MS(300)).await.is_none());
        slot.release().await;
        assert!(store.hold_slot("ip", 1, MS(300)).await.is_some());
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_replaced_by_the_process_store() {
        let metrics = Metrics::new();
        let url = format!("redis://:pw-s3cret@127.0.0.1:{}", closed_port());
        let mut options = RedisOptions::new(&url);
        options.probe_every = MS(20);
        let store =
            Store::with_redis(options, SystemClock::shared(), metrics.store_errors()).unwrap();
        assert_eq!(store.mode(), Mode::Redis, "until a call fails");
        assert_eq!(store.hit("ip", 1, Window::MINUTE).await.total, 1);
        assert_eq!(store.mode(), Mode::Fallback);
        assert_eq!(store.hit("ip", 1, Window::MINUTE).await.total, 2);
        assert!(store.try_lock("conv", MS(1_000)).await.is_some());
        assert!(store.try_lock("conv", MS(1_000)).await.is_none());
        assert!(metrics.store_errors().get() >= 1);
        // Probes keep failing (and counting) while Redis stays away.
        let before = metrics.store_errors().get();
        let deadline = Instant::now() + Duration::from_secs(5);
        while metrics.store_errors().get() == before {
            assert!(Instant::now() < deadline, "no probe");
            store.peek("ip", Window::MINUTE).await;
            tokio::time::sleep(MS(30)).await;
        }
        assert_eq!(store.mode(), Mode::Fallback);
        let text = metrics.encode(0);
        assert!(
            text.lines()
                .any(|l| l.starts_with("chatbot_proxy_store_errors_total ")
                    && l != "chatbot_proxy_store_errors_total 0"),
            "{text}"
        );
    }

    #[test]
    fn the_error_counter_is_registered_at_zero() {
        let text = Metrics::new().encode(0);
        assert!(
            text.contains("# TYPE chatbot_proxy_store_errors counter"),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l == "chatbot_proxy_store_errors_total 0"),
            "{text}"
        );
    }

    #[test]
    fn each_kind_of_state_has_its_own_keys() {
        let at = 1_709_337_599_000;
        assert_eq!(
            hit_key("ip:acme:::1", Window::DAY, at),
            format!("hit:86400000:{}:ip:acme:::1", at / 86_400_000)
        );
        let keys = [
            hit_key("k", Window::SECOND, at),
            count_key("k"),
            lock_key("k"),
            slot_key("k"),
        ];
        let unique: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(unique.len(), 4);
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(millis(MS(1_500)), 1_500);
    }
}
