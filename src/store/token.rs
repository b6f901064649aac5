//! Tokens naming one holder of a lock or a slot, so that only that holder renews or frees it.
//!
//! A token only has to be unique among the holders of one key, across replicas: it is the
//! process id, a per-process counter and 64 bits from the standard library's per-process
//! random hash keys. It never leaves the proxy, so it needs no secrecy.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Which store handed a token out: it is renewed and freed there, even if the other store
/// serves by then (a lock taken in the process during a Redis outage is freed in the process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Local,
    Redis,
}

/// One holder of a lock or a slot, from [`Store::try_lock`](super::Store::try_lock) or
/// [`Store::acquire_slot`](super::Store::acquire_slot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    id: String,
    pub(crate) origin: Origin,
}

impl Token {
    pub(crate) fn new(origin: Origin) -> Token {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        // Read once: each call is a system call, and a token is made for every message.
        static PID: OnceLock<u32> = OnceLock::new();
        let pid = *PID.get_or_init(std::process::id);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(n);
        let random = hasher.finish();
        Token {
            id: format!("{pid:x}-{n:x}-{random:016x}"),
            origin,
        }
    }

    /// The token as stored (a Redis value or a sorted-set member).
    pub fn as_str(&self) -> &str {
        &self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn tokens_are_unique() {
        let tokens: HashSet<String> = (0..10_000)
            .map(|_| Token::new(Origin::Local).as_str().to_string())
            .collect();
        assert_eq!(tokens.len(), 10_000);
    }
}
