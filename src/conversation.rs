//! Conversations as the widget holds them: the signed handle create-thread gives out, and
//! what process-message checks before anything goes upstream.
//!
//! A handle ([`crate::handle`]) names one upstream conversation for one tenant for
//! `conversation_ttl`; anything else (a raw upstream id, a forged, altered, expired or other
//! tenant's handle) is 404 `conversation_not_found`. A genuine one is then admitted
//! ([`Conversations::admit`]) if no answer is streaming in it (409 `run_active`: the lock is
//! in the shared store, so it holds across a fleet) and it has taken fewer than
//! `max_messages_per_conversation` messages (429 `rate_limited`, `Retry-After` the time the
//! conversation has left).

use crate::config::Limits;
use crate::errors::ApiError;
use crate::handle::{HandleError, HandleKey};
use crate::store::{Held, Store};
use std::time::Duration;

/// The lock's lease: renewed every third of it while an answer streams, so a replica that
/// dies frees its conversations within this time.
const LOCK_LEASE: Duration = Duration::from_secs(30);

/// Issues and checks conversation handles; counts and locks conversations.
#[derive(Debug)]
pub struct Conversations {
    key: HandleKey,
    ttl: Duration,
    max_messages: u32,
}

/// A genuine handle, opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation<'h> {
    /// The upstream conversation (`thread_...`, `conv_...`).
    pub id: &'h str,
    /// Whole seconds until the handle expires (at least 1).
    pub seconds_left: u64,
}

impl Conversations {
    pub fn new(key: HandleKey, limits: &Limits) -> Conversations {
        Conversations {
            key,
            ttl: limits.conversation_ttl,
            max_messages: limits.max_messages_per_conversation,
        }
    }

    /// The handle of upstream conversation `id`, issued to `tenant` at `now_ms`.
    pub fn issue(&self, tenant: &str, id: &str, now_ms: u64) -> String {
        self.key.issue(tenant, id, now_ms / 1000)
    }

    /// The conversation `handle` names, if `tenant` was given it and it has not expired at
    /// `now_ms`; 404 `conversation_not_found` otherwise, whatever the reason (logged at debug).
    pub fn open<'h>(
        &self,
        tenant: &str,
        handle: &'h str,
        now_ms: u64,
    ) -> Result<Conversation<'h>, ApiError> {
        let now = now_ms / 1000;
        let ttl = self.ttl.as_secs();
        match self.key.open(handle, tenant, now, ttl) {
            Ok(opened) => Ok(Conversation {
                id: opened.id,
                seconds_left: (opened.issued + ttl).saturating_sub(now).max(1),
            }),
            Err(why) => {
                log_refusal(tenant, why);
                Err(ApiError::conversation_not_found())
            }
        }
    }

    /// Let one more message into `conversation` of `tenant`: the conversation's lock, held (and
    /// renewed) until the returned [`Held`] is released or dropped. 409 `run_active` while an
    /// answer streams in it, on this replica or another; 429 `rate_limited` once it has taken
    /// its messages.
    pub async fn admit(
        &self,
        store: &Store,
        tenant: &str,
        conversation: &Conversation<'_>,
    ) -> Result<Held, ApiError> {
        let key = store_key(tenant, conversation.id);
        let lock = store
            .hold_lock(&key, LOCK_LEASE)
            .await
            .ok_or_else(ApiError::run_active)?;
        let taken = store.incr(&key, self.ttl).await;
        if taken > u64::from(self.max_messages) {
            lock.release().await;
            return Err(too_many_messages(self.max_messages, conversation));
        }
        Ok(lock)
    }
}

/// The store key of a conversation's lock and message count (the store keeps the two kinds
/// apart).
fn store_key(tenant: &str, id: &str) -> String {
    format!("conv:{tenant}:{id}")
}

/// 429 for a conversation that has taken its `max` messages.
fn too_many_messages(max: u32, conversation: &Conversation) -> ApiError {
    let mut err = ApiError::rate_limited(Some(conversation.seconds_left.to_string()));
    err.message = format!(
        "This conversation has reached its limit of {max} messages: start a new one with \
         create-thread."
    );
    err
}

fn log_refusal(tenant: &str, why: HandleError) {
    // Not a warning: browsers holding a handle from yesterday are normal.
    log::debug!("tenant {tenant}: process-message refused: {why}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ManualClock;

    const NOW_MS: u64 = 1_795_000_000_000;

    fn conversations(max_messages: u32) -> Conversations {
        let limits = Limits {
            max_messages_per_conversation: max_messages,
            ..Limits::default()
        };
        Conversations::new(HandleKey::new(&[9; 32]).unwrap(), &limits)
    }

    #[test]
    fn a_handle_opens_for_its_tenant_until_its_ttl() {
        let c = conversations(50);
        let handle = c.issue("acme", "thread_abc", NOW_MS);
        let opened = c.open("acme", &handle, NOW_MS + 3_600_000).unwrap();
        assert_eq!(opened.id, "thread_abc");
        assert_eq!(opened.seconds_left, 23 * 3600);
        let last = NOW_MS + 24 * 3_600_000;
        assert_eq!(c.open("acme", &handle, last).unwrap().seconds_left, 1);
        for (tenant, handle, at) in [
            ("acme", handle.as_str(), last + 1_000),
            ("bistro", handle.as_str(), NOW_MS),
            ("acme", "thread_abc", NOW_MS),
        ] {
            let err = c.open(tenant, handle, at).unwrap_err();
            assert_eq!((err.status, err.code), (404, "conversation_not_found"));
        }
    }

    #[tokio::test]
    async fn admit_locks_and_counts_each_conversation() {
        let c = conversations(2);
        let store = Store::local(ManualClock::new(NOW_MS));
        let handle = c.issue("acme", "thread_abc", NOW_MS);
        let opened = c.open("acme", &handle, NOW_MS + 1_000).unwrap();
        let first = c.admit(&store, "acme", &opened).await.unwrap();
        let busy = c.admit(&store, "acme", &opened).await.err().unwrap();
        assert_eq!((busy.status, busy.code), (409, "run_active"));
        let other = Conversation {
            id: "thread_abc",
            seconds_left: 5,
        };
        let elsewhere = c.admit(&store, "bistro", &other).await;
        assert!(elsewhere.is_ok(), "tenants are separate");
        first.release().await;
        c.admit(&store, "acme", &opened)
            .await
            .unwrap()
            .release()
            .await;
        let over = c.admit(&store, "acme", &opened).await.err().unwrap();
        assert_eq!((over.status, over.code), (429, "rate_limited"));
        assert_eq!(over.retry_after.as_deref(), Some("86399"));
        assert!(
            over.message.contains("limit of 2 messages"),
            "{}",
            over.message
        );
        // Refused for its count, the conversation is not left locked.
        let again = c.admit(&store, "acme", &opened).await.err().unwrap();
        assert_eq!(again.code, "rate_limited");
    }
}
