//! Stopping: signals, the drain, and the count of work in flight.
//!
//! Pingora's own shutdown keeps the process alive for a fixed time (its grace period), then
//! drops whatever still runs. Ours ends as soon as nothing is in flight:
//! - [`Signals`] is the watcher Pingora's main loop waits on. SIGTERM: the listener keeps
//!   accepting for `grace_period_seconds` (for load balancers that need it; 0 by default),
//!   then the drain starts. SIGQUIT: the listening sockets are handed over to a new process
//!   started with `--upgrade`, then the drain starts. SIGINT: exit at once.
//! - When the drain starts Pingora closes the listeners and the idle keep-alive
//!   connections; [`Drain`], a background service, then waits until no request is in
//!   flight ([`InFlight`], counted by the proxy) and the lead desk has no delivery attempt
//!   under way, or until `drain_timeout_seconds` passed, and ends the process. Pingora's grace
//!   period is set to the drain limit, so its own timer never cuts a stream first.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::Notify;

use crate::leads::LeadDesk;

/// A count of things in flight (requests, delivery attempts) that a drain waits for.
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    pub fn new() -> Arc<InFlight> {
        Arc::new(InFlight::default())
    }

    /// Counts one more in flight until the guard is dropped.
    pub fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(Arc::clone(self))
    }

    /// How many are in flight now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Returns once nothing is in flight (at once if nothing is).
    pub async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            // Registered before the count is read: a guard dropped in between still wakes us.
            idle.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// One thing in flight; dropping it ends it.
#[derive(Debug)]
pub struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The shutdown signals, as Pingora's main loop sees them (see the module documentation).
pub struct Signals {
    /// How long the listener keeps accepting after SIGTERM.
    pub grace_period: Duration,
}

/// A Unix signal stream; a process that cannot listen for signals cannot be stopped
/// cleanly, so failing here is fatal (as in Pingora's own watcher).
fn listen(kind: SignalKind, name: &str) -> Signal {
    signal(kind).unwrap_or_else(|e| panic!("cannot listen for {name}: {e}"))
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let mut quit = listen(SignalKind::quit(), "SIGQUIT");
        let mut term = listen(SignalKind::terminate(), "SIGTERM");
        let mut interrupt = listen(SignalKind::interrupt(), "SIGINT");
        log::info!(
            "signals: SIGTERM drains and exits, SIGQUIT hands the listeners over to a process \
             started with --upgrade, SIGINT exits at once"
        );
        tokio::select! {
            _ = quit.recv() => {
                log::info!(
                    "SIGQUIT: handing the listening sockets over to the new process (started \
                     with --upgrade), then finishing the requests in flight"
                );
                ShutdownSignal::GracefulUpgrade
            }
            _ = interrupt.recv() => {
                log::info!("SIGINT: exiting now");
                ShutdownSignal::FastShutdown
            }
            _ = term.recv() => {
                if self.grace_period.is_zero() {
                    log::info!("SIGTERM: no longer accepting; finishing the requests in flight");
                    return ShutdownSignal::GracefulTerminate;
                }
                log::info!(
                    "SIGTERM: still accepting for the grace period of {} s, then finishing \
                     the requests in flight",
                    self.grace_period.as_secs()
                );
                tokio::select! {
                    () = tokio::time::sleep(self.grace_period) => {
                        log::info!("grace period over: no longer accepting");
                        ShutdownSignal::GracefulTerminate
                    }
                    _ = interrupt.recv() => {
                        log::info!("SIGINT during the grace period: exiting now");
                        ShutdownSignal::FastShutdown
                    }
                }
            }
        }
    }
}

/// The background service that ends the process once the drain is over.
pub struct Drain {
    /// Requests in flight (counted by the proxy).
    pub requests: Arc<InFlight>,
    /// The lead desk, whose delivery attempts under way are waited for too, so a lead the
    /// mail server accepted is marked delivered before the process ends.
    pub leads: Arc<LeadDesk>,
    /// The drain limit.
    pub limit: Duration,
}

impl Drain {
    /// Returns once no request is in flight and the lead desk is idle, both at once.
    async fn settled(&self) {
        loop {
            self.requests.wait_idle().await;
            self.leads.wait_idle().await;
            if self.requests.count() == 0 {
                return;
            }
        }
    }
}

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if shutdown.wait_for(|&stopping| stopping).await.is_err() {
            return;
        }
        let started = Instant::now();
        let in_flight = self.requests.count();
        if in_flight > 0 {
            log::info!(
                "draining: {in_flight} request(s) in flight get up to {} s to finish",
                self.limit.as_secs()
            );
        }
        let mut interrupt = listen(SignalKind::interrupt(), "SIGINT");
        tokio::select! {
            () = self.settled() => log::info!(
                "nothing in flight: exiting ({} ms after the drain started)",
                started.elapsed().as_millis()
            ),
            () = tokio::time::sleep(self.limit) => log::warn!(
                "drain limit of {} s reached: exiting, cutting {} request(s) still in flight \
                 (raise drain_timeout_seconds to give them longer)",
                self.limit.as_secs(),
                self.requests.count()
            ),
            _ = interrupt.recv() => log::warn!(
                "SIGINT during the drain: exiting now, cutting {} request(s) in flight",
                self.requests.count()
            ),
        }
        exit()
    }
}

/// Ends the process. Log lines are written unbuffered to stderr; stdout is flushed here.
/// Every journal append was already flushed to disk before it was acknowledged, and a lead
/// whose delivery had not finished stays pending in the journal for the next process.
fn exit() -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_idle_returns_when_the_last_guard_is_dropped() {
        let in_flight = InFlight::new();
        in_flight.wait_idle().await;
        let first = in_flight.enter();
        let second = in_flight.enter();
        assert_eq!(in_flight.count(), 2);
        let waiter = tokio::spawn({
            let in_flight = Arc::clone(&in_flight);
            async move { in_flight.wait_idle().await }
        });
        drop(first);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "one is still in flight");
        drop(second);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("wait_idle must return once nothing is in flight")
            .unwrap();
        assert_eq!(in_flight.count(), 0);
    }
}
