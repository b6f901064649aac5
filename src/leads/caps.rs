//! Caps on lead e-mails, so that a chatty or abused assistant cannot turn the proxy into a
//! spam relay: at most N per conversation, and at most M per tenant in any rolling hour.
//!
//! The clock is a parameter (`now`), so tests drive time by hand. Memory stays bounded: a
//! tenant keeps at most M timestamps, and a conversation is remembered only after it sent a
//! lead and is forgotten [`CONVERSATION_MEMORY`] after its last one, so at most about
//! M × 24 conversations per tenant are ever tracked.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// The window of the per-tenant cap.
pub const TENANT_WINDOW: Duration = Duration::from_secs(60 * 60);
/// How long a conversation's count is kept after its last lead.
pub const CONVERSATION_MEMORY: Duration = Duration::from_secs(24 * 60 * 60);
/// How often forgotten conversations are swept out.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Which cap refused a lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The conversation already sent `limit` leads.
    Conversation { limit: u32 },
    /// The tenant sent `limit` leads in the last hour.
    Tenant { limit: u32 },
}

/// Lead counts per conversation and per tenant.
#[derive(Debug)]
pub struct Caps {
    per_conversation: u32,
    per_tenant_per_hour: u32,
    /// (tenant, conversation) → (leads sent, time of the last one).
    conversations: HashMap<(String, String), (u32, Instant)>,
    /// tenant → times of its leads within the last [`TENANT_WINDOW`], oldest first.
    tenants: HashMap<String, VecDeque<Instant>>,
    last_sweep: Option<Instant>,
}

impl Caps {
    pub fn new(per_conversation: u32, per_tenant_per_hour: u32) -> Self {
        Caps {
            per_conversation,
            per_tenant_per_hour,
            conversations: HashMap::new(),
            tenants: HashMap::new(),
            last_sweep: None,
        }
    }

    /// Counts one lead from `conversation` of `tenant` at `now`, unless a cap is reached
    /// (then nothing is counted).
    pub fn admit(&mut self, tenant: &str, conversation: &str, now: Instant) -> Result<(), Refusal> {
        self.sweep(now);
        let key = (tenant.to_string(), conversation.to_string());
        let sent = self.conversations.get(&key).map_or(0, |&(count, _)| count);
        if sent >= self.per_conversation {
            return Err(Refusal::Conversation {
                limit: self.per_conversation,
            });
        }
        let window = self.tenants.entry(tenant.to_string()).or_default();
        while window
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= TENANT_WINDOW)
        {
            window.pop_front();
        }
        if window.len() >= self.per_tenant_per_hour as usize {
            return Err(Refusal::Tenant {
                limit: self.per_tenant_per_hour,
            });
        }
        window.push_back(now);
        self.conversations.insert(key, (sent + 1, now));
        Ok(())
    }

    /// How many conversations and tenants are remembered.
    #[cfg(test)]
    pub fn tracked(&self) -> (usize, usize) {
        (self.conversations.len(), self.tenants.len())
    }

    /// Forgets conversations idle for [`CONVERSATION_MEMORY`] and tenants with no lead in the
    /// last hour; runs at most once per [`SWEEP_EVERY`].
    fn sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|last| now.saturating_duration_since(last) < SWEEP_EVERY)
        {
            return;
        }
        self.last_sweep = Some(now);
        self.conversations
            .retain(|_, &mut (_, last)| now.saturating_duration_since(last) < CONVERSATION_MEMORY);
        self.tenants.retain(|_, window| {
            window
                .back()
                .is_some_and(|&t| now.saturating_duration_since(t) < TENANT_WINDOW)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minutes(n: u64) -> Duration {
        Duration::from_secs(60 * n)
    }

    #[test]
    fn a_conversation_may_send_up_to_its_cap() {
        let start = Instant::now();
        let mut caps = Caps::new(2, 100);
        assert_eq!(caps.admit("acme", "thread_1", start), Ok(()));
        assert_eq!(caps.admit("acme", "thread_1", start + minutes(1)), Ok(()));
        assert_eq!(
            caps.admit("acme", "thread_1", start + minutes(2)),
            Err(Refusal::Conversation { limit: 2 })
        );
        // Other conversations, and the same id at another tenant, are counted apart.
        assert_eq!(caps.admit("acme", "thread_2", start + minutes(2)), Ok(()));
        assert_eq!(caps.admit("other", "thread_1", start + minutes(2)), Ok(()));
    }

    #[test]
    fn a_tenant_may_send_up_to_its_cap_in_any_hour() {
        let start = Instant::now();
        let mut caps = Caps::new(10, 3);
        for (i, conversation) in ["c1", "c2", "c3"].iter().enumerate() {
            assert_eq!(
                caps.admit("acme", conversation, start + minutes(i as u64)),
                Ok(())
            );
        }
        assert_eq!(
            caps.admit("acme", "c4", start + minutes(30)),
            Err(Refusal::Tenant { limit: 3 })
        );
        assert_eq!(caps.admit("other", "c4", start + minutes(30)), Ok(()));
        // One hour after the first lead, one slot is free again; not two.
        assert_eq!(caps.admit("acme", "c4", start + minutes(60)), Ok(()));
        assert_eq!(
            caps.admit("acme", "c5", start + minutes(60)),
            Err(Refusal::Tenant { limit: 3 })
        );
    }

    #[test]
    fn a_refused_lead_is_not_counted() {
        let start = Instant::now();
        let mut caps = Caps::new(1, 1);
        assert_eq!(caps.admit("acme", "c1", start), Ok(()));
        assert!(caps.admit("acme", "c2", start).is_err());
        // c2 was refused by the tenant cap, so it still has its own lead to send later.
        assert_eq!(caps.admit("acme", "c2", start + minutes(61)), Ok(()));
    }

    #[test]
    fn zero_caps_refuse_everything() {
        let mut caps = Caps::new(0, 5);
        assert_eq!(
            caps.admit("acme", "c1", Instant::now()),
            Err(Refusal::Conversation { limit: 0 })
        );
        let mut caps = Caps::new(5, 0);
        assert_eq!(
            caps.admit("acme", "c1", Instant::now()),
            Err(Refusal::Tenant { limit: 0 })
        );
    }

    #[test]
    fn memory_is_bounded_by_forgetting_old_entries() {
        let start = Instant::now();
        let mut caps = Caps::new(1, 1000);
        for i in 0..500 {
            caps.admit("acme", &format!("conv_{i}"), start).unwrap();
        }
        assert_eq!(caps.tracked(), (500, 1));
        // A day later everything is forgotten: the sweep keeps only the new conversation.
        let later = start + CONVERSATION_MEMORY;
        caps.admit("acme", "conv_new", later).unwrap();
        assert_eq!(caps.tracked(), (1, 1));
        // And a forgotten conversation may send again.
        assert_eq!(caps.admit("acme", "conv_0", later), Ok(()));
    }

    #[test]
    fn idle_tenants_are_forgotten() {
        let start = Instant::now();
        let mut caps = Caps::new(5, 5);
        caps.admit("acme", "c1", start).unwrap();
        caps.admit("other", "c1", start + minutes(59)).unwrap();
        caps.admit("other", "c2", start + minutes(61)).unwrap();
        assert_eq!(caps.tracked().1, 1);
    }
}
