//! One answer at a time per conversation.
//!
//! The upstream refuses a message while a run is active on its thread; the widget should hear
//! a clear 409 `run_active` instead of an upstream error, and should hear it without a round
//! trip. A [`RunGuard`] marks a conversation busy for as long as the proxy streams its answer.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// The conversations with an answer in flight, keyed by tenant and conversation id.
#[derive(Default)]
pub struct ActiveRuns {
    busy: Mutex<HashSet<String>>,
}

impl ActiveRuns {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Mark `conversation` of `tenant` busy, or `None` if it already is.
    pub fn try_start(self: &Arc<Self>, tenant: &str, conversation: &str) -> Option<RunGuard> {
        let key = format!("{tenant}\u{0}{conversation}");
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.insert(key.clone()).then(|| RunGuard {
            runs: self.clone(),
            key,
        })
    }

    /// How many conversations are busy right now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.busy.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Keeps a conversation busy until dropped.
pub struct RunGuard {
    runs: Arc<ActiveRuns>,
    key: String,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        let mut busy = self.runs.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conversation_is_busy_until_its_guard_drops() {
        let runs = ActiveRuns::new();
        let guard = runs.try_start("acme", "thread_a").expect("free");
        assert!(runs.try_start("acme", "thread_a").is_none());
        assert!(
            runs.try_start("other", "thread_a").is_some(),
            "tenants are separate"
        );
        assert!(runs.try_start("acme", "thread_b").is_some());
        drop(guard);
        assert!(runs.try_start("acme", "thread_a").is_some());
        assert!(runs.is_empty());
    }
}
