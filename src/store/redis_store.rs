//! The Redis store: counters, locks and slots every replica of a fleet shares.
//!
//! One [`ConnectionManager`] per store (a multiplexed connection that reconnects by itself),
//! made on first use so that the store can be built before any runtime runs. Every call is
//! one round trip, bounded by a short timeout, and atomic on the server: counts are a Lua
//! `INCRBY` + `PEXPIRE`, locks `SET NX PX` with compare-and-delete / compare-and-`PEXPIRE`
//! scripts, slots a sorted set of holders scored by lease end, trimmed in the same script that
//! adds to it, on Redis's own clock (so a crashed replica's slots expire by themselves).
//! Errors are returned, never hidden: [`Store`](super::Store) decides what to do with them.

use std::fmt;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};

use super::clock::SharedClock;
use super::token::{Origin, Token};
use super::window::{Count, Window};
use super::{count_key, hit_key, lock_key, millis, slot_key};

/// How a store reaches Redis.
#[derive(Clone)]
pub struct RedisOptions {
    /// `redis://[user:password@]host[:port][/db]`, or `rediss://` for TLS.
    pub url: String,
    /// Put before every key, so that one Redis can serve other programs too.
    pub prefix: String,
    /// The longest a call may take, connecting included, before the process store serves it.
    pub timeout: Duration,
    /// While Redis is unreachable, how often to check whether it is back.
    pub probe_every: Duration,
}

impl RedisOptions {
    /// The defaults: keys under `chatbot-proxy:`, a 250 ms timeout, a probe every second.
    pub fn new(url: &str) -> RedisOptions {
        RedisOptions {
            url: url.to_string(),
            prefix: "chatbot-proxy:".into(),
            timeout: Duration::from_millis(250),
            probe_every: Duration::from_secs(1),
        }
    }
}

impl fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisOptions")
            .field("url", &redacted_url(&self.url))
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("probe_every", &self.probe_every)
            .finish()
    }
}

/// Why a Redis call failed. Its text never holds the URL's password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

/// `INCRBY` the count, and give it an expiry if it has none (a new count).
static HIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return n",
    )
});

/// Extend the lock if the token still holds it.
static RENEW_LOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0",
    )
});

/// Delete the lock if the token still holds it.
static UNLOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0",
    )
});

/// Drop the expired holders, then add one if fewer than ARGV[1] are left. Lease ends are on
/// Redis's clock (`TIME`), the one clock all replicas share.
static ACQUIRE_SLOT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[2])
if redis.call('PTTL', KEYS[1]) < lease then
  redis.call('PEXPIRE', KEYS[1], lease)
end
return 1",
    )
});

/// Extend a holder's lease if it has not ended.
static RENEW_SLOT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
local ends = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not ends or tonumber(ends) <= now then
  return 0
end
redis.call('ZADD', KEYS[1], 'XX', now + lease, ARGV[1])
if redis.call('PTTL', KEYS[1]) < lease then
  redis.call('PEXPIRE', KEYS[1], lease)
end
return 1",
    )
});

/// Counters, locks and slots in Redis. Every call answers within the configured timeout, with
/// its result or a [`StoreError`].
pub struct RedisStore {
    client: Client,
    connection: Mutex<Option<ConnectionManager>>,
    options: RedisOptions,
    clock: SharedClock,
}

impl RedisStore {
    /// A store for `options.url`; connects on first use. Fails only on a malformed URL.
    pub fn new(options: RedisOptions, clock: SharedClock) -> Result<RedisStore, String> {
        let client = Client::open(options.url.as_str()).map_err(|e| {
            format!(
                "REDIS_URL {} is not a Redis URL ({e}): use redis://[user:password@]host[:port][/db] or rediss://...",
                redacted_url(&options.url)
            )
        })?;
        Ok(RedisStore {
            client,
            connection: Mutex::new(None),
            options,
            clock,
        })
    }

    /// The URL with its password masked, for log lines.
    pub fn url_for_logs(&self) -> String {
        redacted_url(&self.options.url)
    }

    pub fn options(&self) -> &RedisOptions {
        &self.options
    }

    /// See [`Store::hit`](super::Store::hit).
    pub async fn hit(&self, key: &str, amount: u64, window: Window) -> Result<Count, StoreError> {
        let now = self.clock.now_unix_ms();
        let resets_in = window.resets_in(now);
        // A little past the window's end, so that a replica whose clock lags still finds it.
        let ttl = millis(resets_in) + window.millis().min(30_000);
        let k = self.key(&hit_key(key, window, now));
        let mut conn = self.connection()?;
        let total: u64 = self
            .bounded(async {
                HIT.key(&k)
                    .arg(amount)
                    .arg(ttl)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(Count { total, resets_in })
    }

    /// See [`Store::peek`](super::Store::peek).
    pub async fn peek(&self, key: &str, window: Window) -> Result<Count, StoreError> {
        let now = self.clock.now_unix_ms();
        let k = self.key(&hit_key(key, window, now));
        let mut conn = self.connection()?;
        let total: Option<u64> = self
            .bounded(redis::cmd("GET").arg(&k).query_async(&mut conn))
            .await?;
        Ok(Count {
            total: total.unwrap_or(0),
            resets_in: window.resets_in(now),
        })
    }

    /// See [`Store::incr`](super::Store::incr).
    pub async fn incr(&self, key: &str, ttl: Duration) -> Result<u64, StoreError> {
        let k = self.key(&count_key(key));
        let mut conn = self.connection()?;
        self.bounded(async {
            HIT.key(&k)
                .arg(1)
                .arg(millis(ttl))
                .invoke_async(&mut conn)
                .await
        })
        .await
    }

    /// See [`Store::try_lock`](super::Store::try_lock).
    pub async fn try_lock(&self, key: &str, lease: Duration) -> Result<Option<Token>, StoreError> {
        let k = self.key(&lock_key(key));
        let token = Token::new(Origin::Redis);
        let mut conn = self.connection()?;
        let set: Option<String> = self
            .bounded(
                redis::cmd("SET")
                    .arg(&k)
                    .arg(token.as_str())
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(lease))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(set.map(|_| token))
    }

    /// See [`Store::renew_lock`](super::Store::renew_lock).
    pub async fn renew_lock(
        &self,
        key: &str,
        token: &Token,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        self.renew(&RENEW_LOCK, &lock_key(key), token, lease).await
    }

    /// See [`Store::unlock`](super::Store::unlock).
    pub async fn unlock(&self, key: &str, token: &Token) -> Result<(), StoreError> {
        let k = self.key(&lock_key(key));
        let mut conn = self.connection()?;
        let _: i64 = self
            .bounded(async {
                UNLOCK
                    .key(&k)
                    .arg(token.as_str())
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(())
    }

    /// See [`Store::acquire_slot`](super::Store::acquire_slot).
    pub async fn acquire_slot(
        &self,
        key: &str,
        max: u32,
        lease: Duration,
    ) -> Result<Option<Token>, StoreError> {
        let k = self.key(&slot_key(key));
        let token = Token::new(Origin::Redis);
        let mut conn = self.connection()?;
        let added: i64 = self
            .bounded(async {
                ACQUIRE_SLOT
                    .key(&k)
                    .arg(max)
                    .arg(token.as_str())
                    .arg(millis(lease))
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok((added == 1).then_some(token))
    }

    /// See [`Store::renew_slot`](super::Store::renew_slot).
    pub async fn renew_slot(
        &self,
        key: &str,
        token: &Token,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        self.renew(&RENEW_SLOT, &slot_key(key), token, lease).await
    }

    /// Extends `token`'s lease on `key` with `script` (a lock's or a slot's); `false` when the
    /// token no longer holds it.
    async fn renew(
        &self,
        script: &redis::Script,
        key: &str,
        token: &Token,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let k = self.key(key);
        let mut conn = self.connection()?;
        let renewed: i64 = self
            .bounded(async {
                script
                    .key(&k)
                    .arg(token.as_str())
                    .arg(millis(lease))
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(renewed == 1)
    }

    /// See [`Store::release_slot`](super::Store::release_slot).
    pub async fn release_slot(&self, key: &str, token: &Token) -> Result<(), StoreError> {
        let k = self.key(&slot_key(key));
        let mut conn = self.connection()?;
        let _: i64 = self
            .bounded(
                redis::cmd("ZREM")
                    .arg(&k)
                    .arg(token.as_str())
                    .query_async(&mut conn),
            )
            .await?;
        Ok(())
    }

    /// `PING`: whether Redis answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.connection()?;
        let _: String = self
            .bounded(redis::cmd("PING").query_async(&mut conn))
            .await?;
        Ok(())
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.options.prefix)
    }

    /// The connection manager, made on first use (it needs a running Tokio runtime).
    fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let mut slot = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        // No retries of its own: while Redis is away the process store serves, and
        // `Store` probes; each failed call makes the manager start one reconnection.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(Some(self.options.timeout))
            .set_response_timeout(Some(self.options.timeout));
        let conn = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .map_err(|e| StoreError(format!("cannot set up a Redis connection: {e}")))?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// `call`, or an error if it takes longer than the timeout.
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.options.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(StoreError(e.to_string())),
            Err(_) => Err(StoreError(format!(
                "no answer within {} ms",
                self.options.timeout.as_millis()
            ))),
        }
    }
}

/// `url` with its password replaced by `***` (the whole URL, if it does not parse).
pub fn redacted_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "<REDIS_URL>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::clock::SystemClock;

    #[test]
    fn log_lines_never_show_the_password() {
        assert_eq!(
            redacted_url("redis://:s3cret-pass@cache.internal:6380/2"),
            "redis://:***@cache.internal:6380/2"
        );
        assert_eq!(
            redacted_url("rediss://user:s3cret-pass@cache.internal"),
            "rediss://user:***@cache.internal"
        );
        assert_eq!(
            redacted_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(redacted_url("not a url s3cret-pass"), "<REDIS_URL>");
        let options = RedisOptions::new("redis://:s3cret-pass@cache.internal");
        assert!(!format!("{options:?}").contains("s3cret"));
    }

    #[test]
    fn a_malformed_url_is_refused_with_what_to_write() {
        let e = RedisStore::new(RedisOptions::new("http://:s3cret@x"), SystemClock::shared())
            .err()
            .expect("refused");
        assert!(e.contains("redis://"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        assert!(RedisStore::new(
            RedisOptions::new("redis://127.0.0.1:1"),
            SystemClock::shared()
        )
        .is_ok());
    }
}
