//! Lead capture: when the assistant calls the lead tool (`sendEmail` by default) with a
//! visitor's name, e-mail address and message, the proxy e-mails the lead to the tenant and
//! answers the tool call with a sentence the assistant can relay.
//!
//! [`LeadDesk`] is the whole API. A call goes: [`lead`] (parse and validate) → [`caps`]
//! (per-conversation and per-address limits, counted in the shared store) → [`journal`]
//! (appended and flushed to disk, so no captured lead is lost) → [`delivery`] (a first
//! attempt while the assistant waits, at most `send_timeout`, if the tenant's hourly cap has
//! a slot left, else in a later hour; the background service retries with [`backoff`]) →
//! [`reply`] (the tool output). The e-mail itself is built in [`lead`] and sent by
//! [`mailer`].
//!
//! Every call is counted in the proxy's metrics (`leads_total{tenant,result}`).
//!
//! Logging: lead ids, tenants, sites and conversations at info; the visitor's name and
//! address at debug only; the message body and the SMTP password never.

mod backoff;
mod caps;
mod delivery;
mod journal;
mod lead;
mod mailer;
mod outbox;
mod reply;
mod segments;

use std::fmt;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora::services::background::BackgroundService;
use tokio::sync::oneshot;

use crate::config::{LeadSettings, SmtpSettings, Tenant};
use crate::metrics::{LeadResult, Metrics, PendingLeads};
use crate::store::{Store, SystemClock};
use caps::{Caps, Refusal};
use delivery::{Courier, Outcome};
use journal::{unix_now, Journal, LeadRecord};
use mailer::Mailer;

pub use journal::{JournalError, JournalStep};

/// Where a lead-tool call came from.
#[derive(Debug, Clone, Copy)]
pub struct LeadSource<'a> {
    /// The tenant whose assistant called the tool.
    pub tenant: &'a Tenant,
    /// The calling origin, e.g. `https://www.example.com`.
    pub site: &'a str,
    /// The conversation: `thread_...` or `conv_...`.
    pub conversation: &'a str,
    /// The visitor's address, for the per-address cap; `None` when unknown.
    pub client_ip: Option<IpAddr>,
}

/// Captures leads and gets them delivered; one per process, shared by all requests.
pub struct LeadDesk {
    courier: Arc<Courier>,
    caps: Arc<Caps>,
    send_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl LeadDesk {
    /// Open the journal in settings.dir (replaying pending leads), build the mailer if SMTP
    /// is configured. Captures are counted in a registry of the desk's own, caps in a store
    /// of its own on the machine's clock.
    pub fn open(
        settings: &LeadSettings,
        smtp: Option<&SmtpSettings>,
    ) -> Result<Arc<LeadDesk>, OpenError> {
        LeadDesk::open_with_store(settings, smtp, Store::local(SystemClock::shared()))
    }

    /// [`LeadDesk::open`], counting caps in `store` (and on its clock).
    pub fn open_with_store(
        settings: &LeadSettings,
        smtp: Option<&SmtpSettings>,
        store: Store,
    ) -> Result<Arc<LeadDesk>, OpenError> {
        LeadDesk::open_with_metrics(settings, smtp, Arc::new(Metrics::new()), store)
    }

    /// [`LeadDesk::open_with_store`], counting captures in `metrics`.
    pub(crate) fn open_with_metrics(
        settings: &LeadSettings,
        smtp: Option<&SmtpSettings>,
        metrics: Arc<Metrics>,
        store: Store,
    ) -> Result<Arc<LeadDesk>, OpenError> {
        let mailer = smtp.map(Mailer::new).transpose().map_err(OpenError::Smtp)?;
        let (journal, pending) = Journal::open(&settings.dir).map_err(OpenError::Journal)?;
        let path = journal.path().display().to_string();
        match &mailer {
            Some(mailer) => log::info!("lead e-mails go through {}", mailer.server()),
            None => log::warn!(
                "SMTP is not configured: captured leads are saved in {path} but not e-mailed; \
                 add an [smtp] section to the configuration to deliver them"
            ),
        }
        if !pending.is_empty() {
            log::info!(
                "{} lead(s) in {path} are still to be delivered",
                pending.len()
            );
        }
        let caps = Arc::new(Caps::new(settings, store));
        let courier = Courier::new(
            journal,
            pending,
            mailer,
            Arc::clone(&metrics),
            Arc::clone(&caps),
        );
        Ok(Arc::new(LeadDesk {
            courier: Arc::new(courier),
            caps,
            send_timeout: settings.send_timeout,
            metrics,
        }))
    }

    /// Handle one lead-tool call whose raw `arguments` string came from the model: validate,
    /// check the visitor caps, journal (fsync), try to deliver for at most
    /// settings.send_timeout (the attempt goes on in the background if it takes longer, or
    /// in a later hour when the tenant's hourly cap is reached), and return the tool output
    /// sentence. Never panics, never fails.
    pub async fn capture(&self, source: &LeadSource<'_>, arguments: &str) -> String {
        let (result, output) = self.take(source, arguments).await;
        self.metrics.lead(&source.tenant.name, result);
        output
    }

    /// [`LeadDesk::capture`], also saying what became of the lead.
    async fn take(&self, source: &LeadSource<'_>, arguments: &str) -> (LeadResult, String) {
        let tenant = source.tenant;
        let lead = match lead::parse(arguments) {
            Ok(lead) => lead,
            Err(problems) => {
                log::info!(
                    "lead tool call refused for tenant {} (conversation {}): {problems:?}",
                    tenant.name,
                    source.conversation
                );
                return (
                    LeadResult::Invalid,
                    reply::invalid(&problems, &tenant.lead_tool),
                );
            }
        };
        let admitted = self
            .caps
            .admit(&tenant.name, source.conversation, source.client_ip)
            .await;
        if let Err(refusal) = admitted {
            let client = source
                .client_ip
                .map_or_else(|| "-".to_string(), |ip| ip.to_string());
            log::warn!(
                "lead refused for tenant {} (site {}, conversation {}, client {client}): \
                 {refusal:?} reached",
                tenant.name,
                source.site,
                source.conversation
            );
            let output = match refusal {
                Refusal::Conversation { limit } => reply::conversation_cap(limit),
                Refusal::Address { limit } => reply::address_cap(limit),
            };
            return (LeadResult::Capped, output);
        }

        let record = LeadRecord {
            id: new_id(),
            at: unix_now(),
            tenant: tenant.name.clone(),
            site: source.site.to_string(),
            conversation: source.conversation.to_string(),
            to: tenant.lead_recipients.clone(),
            lead,
        };
        log::info!(
            "lead {} captured for tenant {} (site {}, conversation {})",
            record.id,
            tenant.name,
            source.site,
            source.conversation
        );
        log::debug!(
            "lead {}: {} <{}>",
            record.id,
            record.lead.name,
            record.lead.email
        );
        if tenant.lead_recipients.is_empty() {
            log::error!(
                "tenant {} has no lead_recipients: lead {} is saved but cannot be e-mailed",
                tenant.name,
                record.id
            );
        }

        let email = record.lead.email.clone();
        let (saved_tx, saved_rx) = oneshot::channel();
        // A task of its own: journaling and the attempt finish even if this call is dropped.
        let first_attempt = tokio::spawn(Arc::clone(&self.courier).take_in(record, saved_tx));
        let saved = saved_rx.await.unwrap_or(false);
        let outcome = match self.courier.can_send() {
            true => match tokio::time::timeout(self.send_timeout, first_attempt).await {
                Ok(Ok(outcome)) => Some(outcome),
                _ => None,
            },
            false => None,
        };
        match (outcome, saved) {
            (Some(Outcome::Delivered), _) => (LeadResult::Sent, reply::sent(&email)),
            (Some(Outcome::Deferred), true) => (LeadResult::Queued, reply::deferred(&email)),
            (_, true) => (LeadResult::Queued, reply::queued(&email)),
            (_, false) => (LeadResult::NotSaved, reply::not_saved(&email)),
        }
    }

    /// Leads journaled but not yet delivered.
    pub fn pending_count(&self) -> usize {
        self.courier.pending_count()
    }

    /// Returns once no lead is being journaled or delivered and the delivery service has
    /// stopped: what the drain waits for before the process ends.
    pub async fn wait_idle(&self) {
        self.courier.wait_idle().await;
    }

    /// The background delivery service, to add to the Pingora server
    /// (`pingora::services::background::background_service("lead delivery", ...)`): it
    /// delivers pending leads, retries with backoff, wakes at once when capture() queues one,
    /// and stops on shutdown.
    pub fn delivery_service(self: &Arc<Self>) -> impl BackgroundService + Send + Sync + 'static {
        self.courier.service()
    }
}

impl PendingLeads for LeadDesk {
    fn pending_leads(&self) -> usize {
        self.pending_count()
    }
}

/// Why the lead desk cannot open; the message says what to fix.
#[derive(Debug)]
pub enum OpenError {
    /// The SMTP settings do not make a mailer (the `From` mailbox, the TLS set-up).
    Smtp(String),
    /// The journal cannot be opened (see [`JournalError`]).
    Journal(JournalError),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Smtp(why) => f.write_str(why),
            OpenError::Journal(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for OpenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OpenError::Smtp(_) => None,
            OpenError::Journal(e) => Some(e),
        }
    }
}

/// A fresh lead id: `lead_<unix ms>_<16 hex digits>`, unique across restarts.
fn new_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let salt = std::collections::hash_map::RandomState::new()
        .hash_one((millis, COUNTER.fetch_add(1, Ordering::Relaxed)));
    format!("lead_{millis}_{salt:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_shaped() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_id()).collect();
        assert_eq!(ids.len(), 1000);
        let id = ids.iter().next().unwrap();
        let parts: Vec<&str> = id.split('_').collect();
        assert_eq!(parts.len(), 3, "{id}");
        assert_eq!(parts[0], "lead");
        assert!(parts[1].parse::<u64>().is_ok(), "{id}");
        assert_eq!(parts[2].len(), 16, "{id}");
    }
}
