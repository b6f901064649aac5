//! The application state: everything the request handlers share, built once at start-up.

use crate::config::{Config, Tenant};
use crate::conversation::Conversations;
use crate::leads::{LeadDesk, OpenError};
use crate::metrics::Metrics;
use crate::shutdown::InFlight;
use crate::store::{FileClock, SharedClock, Store, SystemClock};
use crate::tenant::TenantDirectory;
use crate::upstream::UpstreamClient;
use crate::upstream_call::UpstreamCall;
use std::fmt;
use std::sync::Arc;

/// Everything the request handlers share; built once at start-up.
pub struct AppState {
    pub config: Config,
    pub tenants: TenantDirectory,
    pub upstream: Arc<UpstreamClient>,
    /// Conversation handles, and each conversation's lock and message count.
    pub conversations: Conversations,
    pub leads: Arc<LeadDesk>,
    pub metrics: Arc<Metrics>,
    /// Requests in flight, which the drain waits for on shutdown.
    pub in_flight: Arc<InFlight>,
    /// Counters, budgets, locks and slots: shared through Redis by a fleet, or in-process.
    pub store: Store,
    /// The bot check on create-thread (Turnstile), with its own client to siteverify.
    pub bot_check: crate::turnstile::BotCheck,
}

impl AppState {
    /// Everything the proxy needs at run time; opens the lead journal.
    pub fn new(config: Config) -> Result<Arc<Self>, StartError> {
        let tenants = TenantDirectory::build(&config.tenants)
            .map_err(|e| StartError::Tenants(e.to_string()))?;
        let upstream = UpstreamClient::new(config.upstream.clone());
        let metrics = Arc::new(Metrics::new());
        let store = Store::new(
            config.limits.redis_url.as_ref().map(|url| url.expose()),
            clock(),
            metrics.store_errors(),
        )
        .map_err(StartError::Store)?;
        let smtp = config.smtp.as_ref();
        let leads =
            LeadDesk::open_with_metrics(&config.leads, smtp, Arc::clone(&metrics), store.clone())
                .map_err(StartError::Leads)?;
        let bot_check = crate::turnstile::BotCheck::new(&config.limits.turnstile, &config.tenants);
        let key =
            crate::session_key::load(config.limits.session_secret.as_ref(), &config.leads.dir)
                .map_err(StartError::Session)?;
        let conversations = Conversations::new(key, &config.limits);
        Ok(Arc::new(AppState {
            bot_check,
            config,
            tenants,
            upstream,
            conversations,
            leads,
            metrics,
            in_flight: InFlight::new(),
            store,
        }))
    }

    /// The upstream as `tenant`'s handlers talk to it: with its key, failures counted.
    pub fn upstream_call<'a>(&'a self, tenant: &'a Tenant) -> UpstreamCall<'a> {
        UpstreamCall::new(&self.upstream, &self.metrics, tenant)
    }
}

/// The wall clock of limits, budgets and handles: the machine's, or for the integration
/// tests a file they write (`CHATBOT_PROXY_TEST_CLOCK_FILE`), so they can step over midnight.
fn clock() -> SharedClock {
    match std::env::var_os("CHATBOT_PROXY_TEST_CLOCK_FILE") {
        Some(path) => {
            log::warn!(
                "CHATBOT_PROXY_TEST_CLOCK_FILE is set: time is read from {} (tests only)",
                std::path::Path::new(&path).display()
            );
            FileClock::shared(path)
        }
        None => SystemClock::shared(),
    }
}

/// Why the proxy cannot start; the message says what to fix.
#[derive(Debug)]
pub enum StartError {
    /// The tenants' domains do not make a directory (a bad or duplicate pattern).
    Tenants(String),
    /// The lead desk cannot open: its journal, or the SMTP settings.
    Leads(OpenError),
    /// The shared store's settings are unusable (a malformed `REDIS_URL`).
    Store(String),
    /// The secret that signs conversation handles cannot be read or kept.
    Session(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Tenants(why) | StartError::Store(why) | StartError::Session(why) => {
                f.write_str(why)
            }
            StartError::Leads(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Tenants(_) | StartError::Store(_) | StartError::Session(_) => None,
            StartError::Leads(e) => Some(e),
        }
    }
}
