//! The shared store against a real `redis-server` (started by the test on an ephemeral
//! loopback port; `scripts/setup` installs it): two stores stand for two replicas of a fleet
//! and must share limits, locks and slots; Redis killed mid-test must not make a call fail,
//! and the store must return to Redis when it is back.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::redis_server::{RedisServer, Reply};
use chatbot_proxy::metrics::Metrics;
use chatbot_proxy::store::{
    Count, ManualClock, Mode, RedisOptions, SharedClock, Store, SystemClock, Window,
};
use prometheus_client::metrics::counter::Counter;

const MS: fn(u64) -> Duration = Duration::from_millis;

/// 2024-03-01T23:59:59Z.
const BEFORE_MIDNIGHT: u64 = 1_709_337_599_000;

/// A replica's store on `server`, with its own error counter.
fn replica(server: &RedisServer, clock: SharedClock) -> (Store, Counter) {
    let errors = Counter::default();
    let store = Store::with_redis(RedisOptions::new(&server.url()), clock, errors.clone())
        .expect("a valid URL");
    (store, errors)
}

/// Wait (calling the store, which is what starts probes) until it serves from Redis again.
async fn wait_for_redis(store: &Store) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while store.mode() != Mode::Redis {
        assert!(
            Instant::now() < deadline,
            "the store never went back to Redis"
        );
        store.peek("probe-trigger", Window::SECOND).await;
        tokio::time::sleep(MS(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_limit() {
    let server = RedisServer::start();
    let (a, a_errors) = replica(&server, SystemClock::shared());
    let (b, b_errors) = replica(&server, SystemClock::shared());
    let key = "ip:acme:2001:db8::7";
    for n in 1..=6 {
        let replica = if n % 2 == 0 { &a } else { &b };
        let count = replica.hit(key, 1, Window::HOUR).await;
        assert_eq!(count.total, n, "one count for both replicas");
        assert!(count.resets_in <= Window::HOUR.duration());
    }
    assert_eq!(a.peek(key, Window::HOUR).await.total, 6);
    assert_eq!(b.peek(key, Window::HOUR).await.total, 6);
    assert_eq!(
        a.hit(key, 1, Window::MINUTE).await.total,
        1,
        "another window is another count"
    );

    let keys = server.keys("chatbot-proxy:hit:3600000:*");
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys[0].ends_with(":ip:acme:2001:db8::7"), "{keys:?}");
    assert_eq!(
        server.command(&["GET", &keys[0]]),
        Reply::Bulk(Some("6".into()))
    );
    let ttl = server.int(&["PTTL", &keys[0]]);
    assert!(
        ttl > 0 && ttl <= 3_600_000 + 30_000,
        "expires soon after its window: {ttl} ms"
    );

    assert_eq!(a.incr("msgs:conv", Duration::from_secs(3_600)).await, 1);
    assert_eq!(b.incr("msgs:conv", Duration::from_secs(3_600)).await, 2);
    let ttl = server.int(&["PTTL", "chatbot-proxy:n:msgs:conv"]);
    assert!(ttl > 0 && ttl <= 3_600_000, "{ttl}");

    assert_eq!((a.mode(), b.mode()), (Mode::Redis, Mode::Redis));
    assert_eq!((a_errors.get(), b_errors.get()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_daily_budget_restarts_at_midnight_utc() {
    let server = RedisServer::start();
    let clock = ManualClock::new(BEFORE_MIDNIGHT);
    let (a, _) = replica(&server, clock.clone());
    let (b, _) = replica(&server, clock.clone());
    let spent = a.hit("tokens:acme", 900, Window::DAY).await;
    assert_eq!(
        spent,
        Count {
            total: 900,
            resets_in: MS(1_000)
        }
    );
    assert_eq!(b.hit("tokens:acme", 150, Window::DAY).await.total, 1_050);
    clock.advance(MS(999));
    assert_eq!(b.peek("tokens:acme", Window::DAY).await.total, 1_050);
    clock.advance(MS(1));
    let fresh = b.peek("tokens:acme", Window::DAY).await;
    assert_eq!(fresh.total, 0, "a new UTC day");
    assert_eq!(fresh.resets_in, Duration::from_secs(86_400));
    assert_eq!(a.hit("tokens:acme", 100, Window::DAY).await.total, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_exclude_across_replicas_and_expire_after_the_lease() {
    let server = RedisServer::start();
    let (a, _) = replica(&server, SystemClock::shared());
    let (b, _) = replica(&server, SystemClock::shared());
    let lease = MS(400);
    let held = a.try_lock("conv:acme:t1", lease).await.expect("free");
    assert!(b.try_lock("conv:acme:t1", lease).await.is_none());
    assert!(a.try_lock("conv:acme:t1", lease).await.is_none());
    let other = b
        .try_lock("conv:acme:t2", lease)
        .await
        .expect("another key");
    b.unlock("conv:acme:t1", &other).await;
    assert!(
        b.try_lock("conv:acme:t1", lease).await.is_none(),
        "another holder's token frees nothing"
    );
    assert!(a.renew_lock("conv:acme:t1", &held, lease).await);
    let ttl = server.int(&["PTTL", "chatbot-proxy:lock:conv:acme:t1"]);
    assert!(ttl > 0 && ttl <= 400, "{ttl}");

    // The holder stops renewing (as a crashed replica would): the lease ends it.
    tokio::time::sleep(MS(600)).await;
    let taken_over = b
        .try_lock("conv:acme:t1", lease)
        .await
        .expect("the lease ended");
    assert!(
        !a.renew_lock("conv:acme:t1", &held, lease).await,
        "the old holder lost it"
    );
    a.unlock("conv:acme:t1", &held).await;
    assert!(a.try_lock("conv:acme:t1", lease).await.is_none());
    b.unlock("conv:acme:t1", &taken_over).await;
    assert!(a.try_lock("conv:acme:t1", lease).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lock_is_renewed_while_held_and_freed_when_dropped() {
    let server = RedisServer::start();
    let (a, _) = replica(&server, SystemClock::shared());
    let (b, _) = replica(&server, SystemClock::shared());
    let held = a.hold_lock("conv:acme:t1", MS(300)).await.expect("free");
    tokio::time::sleep(MS(1_000)).await;
    assert!(
        b.try_lock("conv:acme:t1", MS(300)).await.is_none(),
        "renewed past its lease"
    );
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.try_lock("conv:acme:t1", MS(300)).await.is_none() {
        assert!(Instant::now() < deadline, "never freed");
        tokio::time::sleep(MS(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_are_shared_renewable_and_expire() {
    let server = RedisServer::start();
    let (a, _) = replica(&server, SystemClock::shared());
    let (b, _) = replica(&server, SystemClock::shared());
    let (key, lease) = ("streams:203.0.113.7", MS(400));
    let first = a.acquire_slot(key, 2, lease).await.expect("free");
    let second = b.acquire_slot(key, 2, lease).await.expect("one left");
    assert!(a.acquire_slot(key, 2, lease).await.is_none(), "2 of 2 held");
    assert!(b.acquire_slot(key, 2, lease).await.is_none());
    b.release_slot(key, &second).await;
    let third = a.acquire_slot(key, 2, lease).await.expect("released");
    assert_eq!(
        server.int(&["ZCARD", "chatbot-proxy:slot:streams:203.0.113.7"]),
        2
    );

    // `first` is renewed, `third` is left to expire (its replica crashed).
    for _ in 0..5 {
        tokio::time::sleep(MS(150)).await;
        assert!(a.renew_slot(key, &first, lease).await);
    }
    assert!(
        !a.renew_slot(key, &third, lease).await,
        "third's lease ended"
    );
    let fourth = b.acquire_slot(key, 2, lease).await.expect("third expired");
    assert!(
        b.acquire_slot(key, 2, lease).await.is_none(),
        "first still held"
    );
    a.release_slot(key, &first).await;
    b.release_slot(key, &fourth).await;
    assert_eq!(
        server.int(&["EXISTS", "chatbot-proxy:slot:streams:203.0.113.7"]),
        0,
        "nothing left behind"
    );
}

/// Log lines of the store, captured in this test binary.
fn store_log() -> &'static Mutex<Vec<(log::Level, String)>> {
    static LINES: OnceLock<Mutex<Vec<(log::Level, String)>>> = OnceLock::new();
    struct Capture;
    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, record: &log::Record) {
            if record.target().starts_with("chatbot_proxy::store") {
                let line = chatbot_proxy::logging::redact(&record.args().to_string()).into_owned();
                store_log().lock().unwrap().push((record.level(), line));
            }
        }
        fn flush(&self) {}
    }
    LINES.get_or_init(|| {
        let _ = log::set_boxed_logger(Box::new(Capture));
        log::set_max_level(log::LevelFilter::Debug);
        Mutex::new(Vec::new())
    })
}

/// Warnings about the server on `port` so far.
fn warnings_about(port: u16) -> Vec<String> {
    let needle = format!("127.0.0.1:{port}");
    store_log()
        .lock()
        .unwrap()
        .iter()
        .filter(|(level, line)| *level == log::Level::Warn && line.contains(&needle))
        .map(|(_, line)| line.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_test_then_back() {
    store_log();
    let mut server = RedisServer::start_with_password(Some("s3cret-redis-pw"));
    let metrics = Metrics::new();
    let store = Store::with_redis(
        RedisOptions::new(&server.url()),
        SystemClock::shared(),
        metrics.store_errors(),
    )
    .unwrap();
    let (other, _) = replica(&server, SystemClock::shared());
    assert_eq!(store.hit("ip:x", 1, Window::HOUR).await.total, 1);
    assert_eq!(other.hit("ip:x", 1, Window::HOUR).await.total, 2);
    let redis_lock = store.try_lock("conv:1", MS(60_000)).await.unwrap();

    server.stop();
    // Every call still answers, from this process's store.
    assert_eq!(store.hit("ip:x", 1, Window::HOUR).await.total, 1);
    assert_eq!(store.mode(), Mode::Fallback);
    assert_eq!(store.hit("ip:x", 1, Window::HOUR).await.total, 2);
    assert_eq!(store.peek("ip:x", Window::HOUR).await.total, 2);
    assert_eq!(store.incr("msgs:conv:1", MS(60_000)).await, 1);
    assert!(
        !store.renew_lock("conv:1", &redis_lock, MS(60_000)).await,
        "Redis's lock cannot be renewed while Redis is away"
    );
    let local_lock = store.try_lock("conv:2", MS(60_000)).await.expect("local");
    assert!(store.try_lock("conv:2", MS(60_000)).await.is_none());
    let slot = store
        .acquire_slot("streams:x", 1, MS(60_000))
        .await
        .unwrap();
    assert!(store
        .acquire_slot("streams:x", 1, MS(60_000))
        .await
        .is_none());
    store.release_slot("streams:x", &slot).await;
    let errors = metrics.store_errors().get();
    assert!(errors >= 1, "the failure is counted");
    let text = metrics.encode(0);
    assert!(
        text.contains(&format!("chatbot_proxy_store_errors_total {errors}")),
        "{text}"
    );
    let warnings = warnings_about(server.port());
    assert_eq!(warnings.len(), 1, "one warning per outage: {warnings:?}");
    assert!(warnings[0].contains("failed"), "{warnings:?}");
    assert!(
        warnings[0].contains("redis://:***@127.0.0.1"),
        "{warnings:?}"
    );

    // Calls during the outage go on while probes fail (counted too).
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics.store_errors().get() == errors {
        assert!(Instant::now() < deadline, "no probe within 10 s");
        store.peek("ip:x", Window::HOUR).await;
        tokio::time::sleep(MS(100)).await;
    }
    assert_eq!(store.mode(), Mode::Fallback);

    server.restart();
    wait_for_redis(&store).await;
    assert_eq!(
        store.hit("ip:x", 5, Window::HOUR).await.total,
        5,
        "counted in the restarted (empty) Redis"
    );
    let keys = server.keys("chatbot-proxy:hit:3600000:*:ip:x");
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(
        server.command(&["GET", &keys[0]]),
        Reply::Bulk(Some("5".into()))
    );
    assert!(
        store.try_lock("conv:2", MS(60_000)).await.is_some(),
        "Redis serves locks again"
    );
    assert!(
        store.renew_lock("conv:2", &local_lock, MS(60_000)).await,
        "a lock taken in the process is renewed there"
    );
    store.unlock("conv:2", &local_lock).await;

    let warnings = warnings_about(server.port());
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[1].contains("is back"), "{warnings:?}");
    let log = store_log().lock().unwrap().clone();
    assert!(
        log.iter()
            .all(|(_, line)| !line.contains("s3cret-redis-pw")),
        "{log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_down_at_start_is_used_once_it_comes_up() {
    let mut server = RedisServer::stopped(None);
    let errors = Counter::default();
    let mut options = RedisOptions::new(&server.url());
    options.probe_every = MS(100);
    let store = Store::with_redis(options, SystemClock::shared(), errors.clone()).unwrap();
    assert_eq!(store.hit("ip:y", 1, Window::MINUTE).await.total, 1);
    assert_eq!(store.mode(), Mode::Fallback);
    assert!(errors.get() >= 1);
    server.restart();
    wait_for_redis(&store).await;
    assert_eq!(store.hit("ip:y", 1, Window::MINUTE).await.total, 1);
    assert_eq!(server.keys("chatbot-proxy:hit:60000:*:ip:y").len(), 1);
}

/// The store is shared by every request of a process: it must be `Send + Sync + Clone`.
#[test]
fn the_store_can_be_shared() {
    fn shared<T: Send + Sync + Clone + 'static>() {}
    shared::<Store>();
    let _: Arc<dyn Fn() -> Store> = Arc::new(|| Store::local(SystemClock::shared()));
}
