//! Delivery: taking a captured lead in (journal, then outbox), one attempt to e-mail a
//! lead, and the background service that delivers pending leads with backoff. The service
//! also adopts, every few seconds, the journal segments of processes that have exited (the
//! old process after an upgrade) and delivers their leads.
//!
//! The guarantees, in order of importance: a lead is on disk before the visitor is told it
//! was received; a lead is never in two attempts at once (the outbox's claims); a delivered
//! lead is marked in the journal so a restart does not send it again. A crash between the
//! server's acceptance and that mark sends the lead once more after the restart: delivery is
//! at least once, never at most once.
//!
//! Each e-mail first takes a slot in its tenant's hourly cap (`caps`); a lead that finds none
//! waits in the outbox, still journaled, and the service makes it due when the next hour
//! begins on the store's clock (looked at every [`WAIT_POLL`] while a lead waits).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinSet;

use super::backoff::{jitter, Backoff};
use super::caps::Caps;
use super::journal::{unix_now, Journal, JournalError, LeadRecord, Record};
use super::lead::{self, Context};
use super::mailer::Mailer;
use super::outbox::Outbox;
use crate::metrics::Metrics;
use crate::shutdown::InFlight;

/// Attempts the background service runs at once.
const PARALLEL_ATTEMPTS: usize = 4;
/// How long attempts under way may finish after shutdown starts (so a delivered lead gets
/// its mark rather than being sent again after the restart).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often the journal segments of processes that have exited (after an upgrade) are
/// looked for and adopted.
const ADOPT_EVERY: Duration = Duration::from_secs(2);
/// How often the service looks whether waiting leads' hour has begun (the store's clock may
/// be a test's, which moves without telling anyone).
const WAIT_POLL: Duration = Duration::from_secs(1);

/// How an attempt ended, for the tool output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The mail server accepted the e-mail.
    Delivered,
    /// The lead waits in the outbox (for a retry, for SMTP to be configured, or parked).
    Queued,
    /// The tenant's hourly cap is reached: the lead waits in the outbox for the next hour.
    Deferred,
}

/// The journal, the outbox and the mailer, shared by captures and the background service.
pub struct Courier {
    journal: Mutex<Journal>,
    journal_path: PathBuf,
    outbox: Mutex<Outbox>,
    mailer: Option<Mailer>,
    /// Rung when the outbox's next due time may have moved earlier.
    wake: Notify,
    backoff: Backoff,
    /// Journal writes and delivery attempts under way, and the background service while it
    /// runs: the drain waits for them before the process ends.
    busy: Arc<InFlight>,
    /// Counts the attempts the mailer declined to make.
    metrics: Arc<Metrics>,
    /// The tenants' hourly delivery slots.
    caps: Arc<Caps>,
}

impl Courier {
    /// A courier for `pending` leads replayed from `journal`, all due now.
    pub fn new(
        journal: Journal,
        pending: Vec<LeadRecord>,
        mailer: Option<Mailer>,
        metrics: Arc<Metrics>,
        caps: Arc<Caps>,
    ) -> Self {
        let now = Instant::now();
        let mut outbox = Outbox::default();
        for record in pending {
            outbox.add(record, now);
        }
        Courier {
            journal_path: journal.path().to_path_buf(),
            journal: Mutex::new(journal),
            outbox: Mutex::new(outbox),
            mailer,
            wake: Notify::new(),
            backoff: Backoff::LEADS,
            busy: InFlight::new(),
            metrics,
            caps,
        }
    }

    /// Whether leads can be e-mailed at all (SMTP is configured).
    pub fn can_send(&self) -> bool {
        self.mailer.is_some()
    }

    /// Leads not yet delivered.
    pub fn pending_count(&self) -> usize {
        self.outbox().len()
    }

    /// Returns once no lead is being journaled or delivered and the background service has
    /// stopped (it stops on shutdown).
    pub async fn wait_idle(&self) {
        self.busy.wait_idle().await;
    }

    /// The background service that delivers pending leads.
    pub fn service(self: &Arc<Self>) -> DeliveryService {
        DeliveryService {
            courier: Arc::clone(self),
        }
    }

    /// Journals a new lead and puts it in the outbox, then tells `saved` whether the journal
    /// write succeeded, then (when SMTP is configured) makes the first attempt.
    pub async fn take_in(
        self: Arc<Self>,
        record: LeadRecord,
        saved: oneshot::Sender<bool>,
    ) -> Outcome {
        let _busy = self.busy.enter();
        let id = record.id.clone();
        let journaled = self.write(Record::Lead(record.clone())).await;
        if let Err(e) = &journaled {
            log::error!("lead {id}: {e}; the lead is kept in memory only, until it is delivered");
        }
        let claimed = if self.can_send() {
            Some(self.outbox().claim_new(record, Instant::now()))
        } else {
            self.outbox().add(record, Instant::now());
            None
        };
        self.wake.notify_one();
        let _ = saved.send(journaled.is_ok());
        match claimed {
            Some(record) => self.attempt(record).await,
            None => Outcome::Queued,
        }
    }

    /// One attempt to e-mail a lead the caller has claimed. Settles the claim: delivered
    /// (marked in the journal), due again after a backoff delay, waiting for the tenant's
    /// next hour (no delivery slot left), or parked when the e-mail cannot be built (a bad
    /// recipient: retrying cannot help until the next start).
    pub async fn attempt(self: Arc<Self>, record: Arc<LeadRecord>) -> Outcome {
        let _busy = self.busy.enter();
        let mut claim = Claim {
            courier: &self,
            id: &record.id,
            settled: false,
        };
        let Some(mailer) = &self.mailer else {
            return Outcome::Queued;
        };
        if self.outbox().needs_slot(&record.id) {
            if let Err(next_hour) = self.caps.delivery_slot(&record.tenant).await {
                self.outbox().wait_until(&record.id, next_hour);
                claim.settled = true;
                self.wake.notify_one();
                let wait = next_hour.saturating_sub(self.caps.now_unix_ms());
                log::info!(
                    "lead {} of tenant {}: the tenant's {} e-mails of this hour are sent; the \
                     lead stays saved and is delivered in the next hour (in {} s)",
                    record.id,
                    record.tenant,
                    self.caps.per_tenant_per_hour(),
                    wait.div_ceil(1_000)
                );
                return Outcome::Deferred;
            }
            self.outbox().slotted(&record.id);
        }
        let context = Context {
            lead_id: &record.id,
            site: &record.site,
            conversation: &record.conversation,
        };
        let message = match lead::email(&record.lead, mailer.from(), &record.to, context) {
            Ok(message) => message,
            Err(e) => {
                self.outbox().park(&record.id);
                claim.settled = true;
                log::error!(
                    "lead {} of tenant {} cannot be e-mailed: {e}; it stays in {} and is \
                     tried again after the next start",
                    record.id,
                    record.tenant,
                    self.journal_path.display()
                );
                return Outcome::Queued;
            }
        };
        match mailer.send(message).await {
            Ok(()) => {
                log::info!("lead {} of tenant {} delivered", record.id, record.tenant);
                let mark = Record::Delivered {
                    id: record.id.clone(),
                    at: unix_now(),
                };
                if let Err(e) = self.write(mark).await {
                    log::error!(
                        "lead {} was delivered but not marked so: {e}; it will be sent again \
                         after a restart",
                        record.id
                    );
                }
                // Forgotten only once the mark is written: no pending lead means every
                // delivery is on disk.
                self.outbox().delivered(&record.id);
                claim.settled = true;
                Outcome::Delivered
            }
            Err(e) => {
                let now = Instant::now();
                let mut delay = Duration::ZERO;
                let failures = self.outbox().retry_at(&record.id, |failures| {
                    delay = self.backoff.delay(failures, jitter());
                    now + delay
                });
                claim.settled = true;
                self.wake.notify_one();
                let what = match e.refusal() {
                    Some(refusal) => {
                        self.metrics.lead_delivery_refused(refusal);
                        "refused by the proxy"
                    }
                    None => "failed",
                };
                log::warn!(
                    "lead {} of tenant {}: delivery attempt {failures} {what}: {e}; the lead \
                     stays queued, next attempt in {:.1} s",
                    record.id,
                    record.tenant,
                    delay.as_secs_f64()
                );
                Outcome::Queued
            }
        }
    }

    /// Appends a record to the journal on a blocking thread (the append waits for the disk).
    /// The write completes even if the caller stops waiting.
    async fn write(self: &Arc<Self>, record: Record) -> Result<(), JournalError> {
        let courier = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let mut journal = courier.journal.lock().unwrap_or_else(|p| p.into_inner());
            journal.append(&record)
        })
        .await
        .unwrap_or_else(|e| Err(JournalError::Unfinished(e)))
    }

    /// Adopts the journal segments of processes that have exited (on a blocking thread) and
    /// queues their leads, due now.
    async fn adopt_orphans(self: &Arc<Self>) {
        let courier = Arc::clone(self);
        let adopted = tokio::task::spawn_blocking(move || {
            let mut journal = courier.journal.lock().unwrap_or_else(|p| p.into_inner());
            journal.adopt_orphans()
        })
        .await
        .unwrap_or_default();
        if adopted.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut outbox = self.outbox();
        for record in adopted {
            outbox.add(record, now);
        }
        drop(outbox);
        self.wake.notify_one();
    }

    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A claimed lead; an attempt dropped before it settled (cancelled, or panicked) gives the
/// lead back to the outbox, due at once.
struct Claim<'a> {
    courier: &'a Courier,
    id: &'a str,
    settled: bool,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.courier.outbox().release(self.id, Instant::now());
            self.courier.wake.notify_one();
        }
    }
}

/// The background service: delivers pending leads as they fall due, a few at a time, until
/// shutdown. Without SMTP it only waits for shutdown.
pub struct DeliveryService {
    courier: Arc<Courier>,
}

#[async_trait]
impl BackgroundService for DeliveryService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let courier = &self.courier;
        let _running = courier.busy.enter();
        if !courier.can_send() {
            while !*shutdown.borrow() {
                if shutdown.changed().await.is_err() {
                    break;
                }
            }
            return;
        }
        log::info!(
            "lead delivery started with {} pending lead(s)",
            courier.pending_count()
        );
        let mut running = JoinSet::new();
        let mut adopt_at = Instant::now() + ADOPT_EVERY;
        while !*shutdown.borrow() {
            let released = courier
                .outbox()
                .release_waiting(courier.caps.now_unix_ms(), Instant::now());
            if released > 0 {
                log::info!("{released} lead(s) waiting for a new hour are due again");
            }
            let room = PARALLEL_ATTEMPTS.saturating_sub(running.len());
            for record in courier.outbox().claim_due(Instant::now(), room) {
                running.spawn(Arc::clone(courier).attempt(record));
            }
            // With every slot busy, only a finishing attempt frees one: no timer then.
            let next_due = if running.len() < PARALLEL_ATTEMPTS {
                courier.outbox().next_due()
            } else {
                None
            };
            // Waiting leads: look again at the clock soon.
            let next_due = match courier.outbox().has_waiting() {
                true => {
                    let poll = Instant::now() + WAIT_POLL;
                    Some(next_due.map_or(poll, |due| due.min(poll)))
                }
                false => next_due,
            };
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                () = courier.wake.notified() => {}
                () = sleep_until(next_due) => {}
                Some(_) = running.join_next(), if !running.is_empty() => {}
                () = tokio::time::sleep_until(adopt_at.into()) => {
                    courier.adopt_orphans().await;
                    adopt_at = Instant::now() + ADOPT_EVERY;
                }
            }
        }
        let finishing = async { while running.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, finishing)
            .await
            .is_err()
        {
            log::warn!(
                "lead delivery stopped with attempts under way; they are retried after the restart"
            );
        }
        log::info!(
            "lead delivery stopped with {} pending lead(s)",
            courier.pending_count()
        );
    }
}

/// Sleeps until `due`, or forever without one.
async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due.into()).await,
        None => std::future::pending().await,
    }
}
