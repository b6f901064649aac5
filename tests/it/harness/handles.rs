//! Conversation handles in tests: what create-thread answers is `<upstream id>.<token>`.
//!
//! [`upstream_id`] is the conversation the upstream sees; [`Proxy::mint_handle`] signs a handle
//! for any upstream id with the secret the proxy generated in its working directory, for the
//! tests that need a conversation the proxy lets through but the upstream does not know (or
//! whose creation the upstream would refuse).

use std::time::{SystemTime, UNIX_EPOCH};

use chatbot_proxy::handle::HandleKey;

use super::Proxy;

/// The upstream conversation id inside `handle` (the part before its last `.`).
pub fn upstream_id(handle: &str) -> &str {
    handle.rsplit_once('.').map_or(handle, |(id, _)| id)
}

/// What the proxy sends upstream as the Responses API's `safety_identifier` for `handle`.
pub fn safety_identifier(handle: &str) -> String {
    chatbot_proxy::handle::safety_identifier(handle)
}

impl Proxy {
    /// A genuine handle of upstream conversation `id` for tenant `tenant`, issued now, signed
    /// with the secret the proxy keeps in `data/session.key` of its working directory (the
    /// default leads directory, no `SESSION_SECRET`).
    pub fn mint_handle(&self, tenant: &str, id: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("a clock after 1970")
            .as_secs();
        let path = self.working_dir().join("data").join("session.key");
        let secret = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("the proxy's generated secret {}: {e}", path.display()));
        HandleKey::new(secret.trim().as_bytes())
            .expect("a secret of at least 32 bytes")
            .issue(tenant, id, now)
    }
}
