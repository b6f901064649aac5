//! A lock or a slot held for as long as a value lives: renewed in the background while an
//! answer streams, freed when dropped.
//!
//! The lease is renewed every third of its length, so a holder survives two lost renewals;
//! when a renewal finds the lock or slot gone (its lease ended, or Redis became unreachable)
//! renewing stops and the holder carries on: a stream in progress is never cut for it.

use std::time::Duration;

use tokio::task::JoinHandle;

use super::{Store, Token};

#[derive(Debug, Clone, Copy)]
enum Kind {
    Lock,
    Slot,
}

/// A held lock or slot; see [`Store::hold_lock`] and [`Store::hold_slot`].
pub struct Held {
    store: Store,
    key: String,
    kind: Kind,
    token: Option<Token>,
    renewer: Option<JoinHandle<()>>,
}

impl Store {
    /// [`try_lock`](Store::try_lock), renewed every `lease / 3` until the [`Held`] is dropped
    /// or [released](Held::release). The one-answer-per-conversation lock: take it before
    /// sending a message upstream, keep it for the whole stream.
    pub async fn hold_lock(&self, key: &str, lease: Duration) -> Option<Held> {
        let token = self.try_lock(key, lease).await?;
        Some(Held::start(self, key, Kind::Lock, token, lease))
    }

    /// [`acquire_slot`](Store::acquire_slot), renewed every `lease / 3` until the [`Held`] is
    /// dropped or [released](Held::release). Concurrent streams per address.
    pub async fn hold_slot(&self, key: &str, max: u32, lease: Duration) -> Option<Held> {
        let token = self.acquire_slot(key, max, lease).await?;
        Some(Held::start(self, key, Kind::Slot, token, lease))
    }
}

impl Held {
    fn start(store: &Store, key: &str, kind: Kind, token: Token, lease: Duration) -> Held {
        let every = (lease / 3).max(Duration::from_millis(1));
        let renewer = {
            let (store, key, token) = (store.clone(), key.to_string(), token.clone());
            tokio::spawn(async move {
                loop {
                    // Pingora's timer: a Tokio timer armed here would be the runtime's
                    // earliest and wake its driver with a write (a system call per message).
                    pingora_timeout::fast_timeout::fast_sleep(every).await;
                    let renewed = match kind {
                        Kind::Lock => store.renew_lock(&key, &token, lease).await,
                        Kind::Slot => store.renew_slot(&key, &token, lease).await,
                    };
                    if !renewed {
                        log::debug!("store: a held {kind:?} could not be renewed; left to expire");
                        break;
                    }
                }
            })
        };
        Held {
            store: store.clone(),
            key: key.to_string(),
            kind,
            token: Some(token),
            renewer: Some(renewer),
        }
    }

    /// The holder's token.
    pub fn token(&self) -> &Token {
        self.token
            .as_ref()
            .expect("a Held has its token until dropped")
    }

    /// Stop renewing and free the lock or slot now, waiting for the store to do it.
    pub async fn release(mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
        if let Some(token) = self.token.take() {
            free(&self.store, &self.key, self.kind, &token).await;
        }
    }
}

impl Drop for Held {
    /// Stop renewing and free the lock or slot in the background (if no runtime is left to
    /// do it, its lease ends it).
    fn drop(&mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
        let Some(token) = self.token.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (store, key, kind) = (self.store.clone(), std::mem::take(&mut self.key), self.kind);
            runtime.spawn(async move { free(&store, &key, kind, &token).await });
        }
    }
}

async fn free(store: &Store, key: &str, kind: Kind, token: &Token) {
    match kind {
        Kind::Lock => store.unlock(key, token).await,
        Kind::Slot => store.release_slot(key, token).await,
    }
}
