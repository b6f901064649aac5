//! Caps on leads, so that an abused assistant can neither turn the proxy into a spam relay
//! nor crowd real visitors out.
//!
//! Floods are stopped per visitor: at most N leads per conversation (a counter that lives
//! [`CONVERSATION_MEMORY`] from the conversation's first lead) and at most M per client
//! address per UTC day. A lead over either is refused, with an honest tool output.
//!
//! The tenant's hourly cap refuses nothing: it paces delivery. Each e-mail takes a slot in
//! the tenant's current hour ([`Caps::delivery_slot`]); a lead that finds none stays saved
//! in the journal and waits for the next hour. So a flood that gets past the visitor caps
//! delays, but never loses, real visitors' leads.
//!
//! Every count is kept in the shared [`Store`] (in this process, or on Redis for a fleet),
//! in fixed windows on the store's clock (`lead:conv:{tenant}:{conversation}`,
//! `lead:ip:{address}`, `lead:tenant:{tenant}`), so the caps hold across replicas and tests
//! can move time.

use std::net::IpAddr;
use std::time::Duration;

use crate::config::LeadSettings;
use crate::store::{Store, Window};

/// How long a conversation's lead count is kept after its first lead.
pub const CONVERSATION_MEMORY: Duration = Duration::from_secs(24 * 60 * 60);
/// The window of the per-tenant delivery cap.
pub const TENANT_WINDOW: Window = Window::HOUR;
/// The window of the per-address cap: a UTC day.
pub const ADDRESS_WINDOW: Window = Window::DAY;

/// Which cap refused a lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The conversation already sent `limit` leads.
    Conversation { limit: u32 },
    /// The visitor's address already sent `limit` leads today.
    Address { limit: u32 },
}

/// The lead caps, counted in the store.
pub struct Caps {
    store: Store,
    per_conversation: u32,
    per_address_per_day: u32,
    per_tenant_per_hour: u32,
}

impl Caps {
    pub fn new(settings: &LeadSettings, store: Store) -> Self {
        Caps {
            store,
            per_conversation: settings.max_per_conversation,
            per_address_per_day: settings.max_per_address_per_day,
            per_tenant_per_hour: settings.max_per_tenant_per_hour,
        }
    }

    /// Counts one lead from `conversation` of `tenant`, left by `address` (when known),
    /// unless a visitor cap refuses it. The conversation is counted first: a lead that it
    /// refuses does not use up the address's day.
    pub async fn admit(
        &self,
        tenant: &str,
        conversation: &str,
        address: Option<IpAddr>,
    ) -> Result<(), Refusal> {
        let key = format!("lead:conv:{tenant}:{conversation}");
        let sent = self.store.incr(&key, CONVERSATION_MEMORY).await;
        within(sent, self.per_conversation).map_err(|limit| Refusal::Conversation { limit })?;
        if let Some(address) = address {
            let key = format!("lead:ip:{address}");
            let count = self.store.hit(&key, 1, ADDRESS_WINDOW).await;
            within(count.total, self.per_address_per_day)
                .map_err(|limit| Refusal::Address { limit })?;
        }
        Ok(())
    }

    /// Takes one of `tenant`'s delivery slots in the current hour; `Err` with the time the
    /// next hour starts (unix milliseconds on the store's clock) when they are all taken.
    pub async fn delivery_slot(&self, tenant: &str) -> Result<(), u64> {
        let count = self
            .store
            .hit(&format!("lead:tenant:{tenant}"), 1, TENANT_WINDOW)
            .await;
        match within(count.total, self.per_tenant_per_hour) {
            Ok(()) => Ok(()),
            Err(_) => Err(TENANT_WINDOW.end(self.now_unix_ms())),
        }
    }

    /// The per-tenant hourly cap.
    pub fn per_tenant_per_hour(&self) -> u32 {
        self.per_tenant_per_hour
    }

    /// Now, on the store's clock (unix milliseconds).
    pub fn now_unix_ms(&self) -> u64 {
        self.store.clock().now_unix_ms()
    }
}

/// Whether the `count`-th lead (this one included) is within `limit`; `Err(limit)` if not.
fn within(count: u64, limit: u32) -> Result<(), u32> {
    if count <= u64::from(limit) {
        Ok(())
    } else {
        Err(limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ManualClock;
    use std::sync::Arc;

    /// 2024-03-01T10:00:00Z.
    const TEN_AM: u64 = 1_709_287_200_000;

    fn caps(conversation: u32, address: u32, tenant: u32) -> (Caps, Arc<ManualClock>) {
        let clock = ManualClock::new(TEN_AM);
        let settings = LeadSettings {
            max_per_conversation: conversation,
            max_per_address_per_day: address,
            max_per_tenant_per_hour: tenant,
            ..LeadSettings::default()
        };
        (Caps::new(&settings, Store::local(clock.clone())), clock)
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn within_is_inclusive() {
        assert_eq!(within(0, 0), Ok(()));
        assert_eq!(within(3, 3), Ok(()));
        assert_eq!(within(4, 3), Err(3));
        assert_eq!(within(1, 0), Err(0));
    }

    #[tokio::test]
    async fn a_conversation_may_send_up_to_its_cap() {
        let (caps, _) = caps(2, 100, 100);
        let visitor = ip("198.51.100.1");
        assert_eq!(caps.admit("acme", "thread_1", visitor).await, Ok(()));
        assert_eq!(caps.admit("acme", "thread_1", visitor).await, Ok(()));
        assert_eq!(
            caps.admit("acme", "thread_1", visitor).await,
            Err(Refusal::Conversation { limit: 2 })
        );
        // Other conversations, and the same id at another tenant, are counted apart.
        assert_eq!(caps.admit("acme", "thread_2", visitor).await, Ok(()));
        assert_eq!(caps.admit("other", "thread_1", visitor).await, Ok(()));
    }

    #[tokio::test]
    async fn an_address_may_send_up_to_its_daily_cap_across_conversations() {
        let (caps, clock) = caps(10, 3, 100);
        let flooder = ip("198.51.100.66");
        for i in 0..3 {
            let conversation = format!("thread_{i}");
            assert_eq!(caps.admit("acme", &conversation, flooder).await, Ok(()));
        }
        assert_eq!(
            caps.admit("acme", "thread_new", flooder).await,
            Err(Refusal::Address { limit: 3 })
        );
        assert_eq!(
            caps.admit("other", "thread_other", flooder).await,
            Err(Refusal::Address { limit: 3 }),
            "the address is counted across tenants"
        );
        // Other visitors are not affected.
        assert_eq!(
            caps.admit("acme", "thread_x", ip("198.51.100.7")).await,
            Ok(())
        );
        // Without an address (a non-IP peer) only the conversation counts.
        assert_eq!(caps.admit("acme", "thread_y", None).await, Ok(()));
        // The next UTC day the address may send again.
        clock.set(TEN_AM + 14 * 3_600_000);
        assert_eq!(caps.admit("acme", "thread_z", flooder).await, Ok(()));
    }

    #[tokio::test]
    async fn a_lead_refused_by_its_conversation_does_not_use_up_the_address() {
        let (caps, _) = caps(1, 2, 100);
        let visitor = ip("2001:db8::1");
        assert_eq!(caps.admit("acme", "c1", visitor).await, Ok(()));
        for _ in 0..3 {
            assert_eq!(
                caps.admit("acme", "c1", visitor).await,
                Err(Refusal::Conversation { limit: 1 })
            );
        }
        assert_eq!(caps.admit("acme", "c2", visitor).await, Ok(()));
        assert_eq!(
            caps.admit("acme", "c3", visitor).await,
            Err(Refusal::Address { limit: 2 })
        );
    }

    #[tokio::test]
    async fn a_tenant_gets_its_slots_each_hour_and_is_told_when_the_next_begins() {
        let (caps, clock) = caps(10, 10, 3);
        clock.set(TEN_AM + 30 * 60_000);
        for _ in 0..3 {
            assert_eq!(caps.delivery_slot("acme").await, Ok(()));
        }
        let eleven = TEN_AM + 3_600_000;
        assert_eq!(caps.delivery_slot("acme").await, Err(eleven));
        assert_eq!(caps.delivery_slot("acme").await, Err(eleven));
        assert_eq!(caps.delivery_slot("other").await, Ok(()), "per tenant");
        // The next hour, three slots again; not more.
        clock.set(eleven);
        for _ in 0..3 {
            assert_eq!(caps.delivery_slot("acme").await, Ok(()));
        }
        assert_eq!(caps.delivery_slot("acme").await, Err(eleven + 3_600_000));
        assert_eq!(caps.per_tenant_per_hour(), 3);
    }

    #[tokio::test]
    async fn a_conversation_is_forgotten_a_day_after_its_first_lead() {
        let (caps, clock) = caps(1, 100, 100);
        assert_eq!(caps.admit("acme", "c1", None).await, Ok(()));
        assert!(caps.admit("acme", "c1", None).await.is_err());
        clock.set(TEN_AM + CONVERSATION_MEMORY.as_millis() as u64);
        assert_eq!(caps.admit("acme", "c1", None).await, Ok(()));
    }
}
