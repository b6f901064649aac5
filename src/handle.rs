//! Signed conversation handles: what the widget holds instead of the upstream's thread or
//! conversation id.
//!
//! `create-thread` answers `<upstream id>.<token>`, where the token is base64url of the time of
//! issue (8 bytes, unix seconds, big-endian) followed by the first 16 bytes of an HMAC-SHA256,
//! keyed with the session secret, over the tenant's name, the upstream id and that time.
//! `process-message` accepts a handle only if its signature is right for the calling tenant and
//! it is younger than the conversation TTL, so a visitor can neither post into another
//! conversation nor reuse a handle across tenants or forever. Nothing is stored: any replica
//! that shares the secret verifies any handle.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::{digest, hmac};
use std::fmt;

/// Bytes of the HMAC kept in a handle (128 bits).
const MAC_LEN: usize = 16;
/// Bytes of the time of issue.
const TIME_LEN: usize = 8;
/// The shortest secret accepted.
pub const MIN_SECRET_LEN: usize = 32;
/// Characters of a handle's token: base64url of the time and the MAC, without padding.
pub const TOKEN_CHARS: usize = (TIME_LEN + MAC_LEN) / 3 * 4;
/// The longest `safety_identifier` OpenAI accepts.
const SAFETY_ID_CHARS: usize = 64;

/// A verified handle: the upstream conversation and when the handle was issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened<'h> {
    /// The upstream conversation id (`thread_...`, `conv_...`).
    pub id: &'h str,
    /// When the handle was issued, unix seconds.
    pub issued: u64,
}

/// The key that signs and checks handles.
pub struct HandleKey {
    key: hmac::Key,
}

impl fmt::Debug for HandleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HandleKey(***)")
    }
}

/// Why a handle was refused (all answered alike to the browser: the conversation is unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandleError {
    /// Not `<id>.<token>`, or a token of the wrong shape.
    Malformed,
    /// Signed with another key, for another tenant or another id, or altered.
    BadSignature,
    /// Older than the conversation TTL (or issued in the future).
    Expired,
}

impl fmt::Display for HandleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HandleError::Malformed => "not a conversation handle",
            HandleError::BadSignature => "the handle's signature does not match",
            HandleError::Expired => "the handle has expired",
        })
    }
}

impl std::error::Error for HandleError {}

impl HandleKey {
    /// A key from a secret of at least [`MIN_SECRET_LEN`] bytes.
    pub fn new(secret: &[u8]) -> Option<HandleKey> {
        (secret.len() >= MIN_SECRET_LEN).then(|| HandleKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        })
    }

    fn tag(&self, tenant: &str, id: &str, issued: u64) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        // Lengths first, so no two (tenant, id) pairs sign the same bytes.
        ctx.update(&(tenant.len() as u64).to_be_bytes());
        ctx.update(tenant.as_bytes());
        ctx.update(&(id.len() as u64).to_be_bytes());
        ctx.update(id.as_bytes());
        ctx.update(&issued.to_be_bytes());
        ctx.sign()
    }

    /// The handle of upstream conversation `id` for `tenant`, issued at `now` (unix seconds).
    pub fn issue(&self, tenant: &str, id: &str, now: u64) -> String {
        let mut token = [0u8; TIME_LEN + MAC_LEN];
        token[..TIME_LEN].copy_from_slice(&now.to_be_bytes());
        token[TIME_LEN..].copy_from_slice(&self.tag(tenant, id, now).as_ref()[..MAC_LEN]);
        format!("{id}.{}", URL_SAFE_NO_PAD.encode(token))
    }

    /// The upstream id inside `handle`, if it was issued to `tenant` by this key and is not
    /// older than `ttl_seconds` at `now`.
    pub fn verify<'h>(
        &self,
        handle: &'h str,
        tenant: &str,
        now: u64,
        ttl_seconds: u64,
    ) -> Result<&'h str, HandleError> {
        self.open(handle, tenant, now, ttl_seconds)
            .map(|opened| opened.id)
    }

    /// [`verify`](Self::verify), also telling when the handle was issued (so the caller knows
    /// how long the conversation has left).
    pub fn open<'h>(
        &self,
        handle: &'h str,
        tenant: &str,
        now: u64,
        ttl_seconds: u64,
    ) -> Result<Opened<'h>, HandleError> {
        let (id, token) = handle.rsplit_once('.').ok_or(HandleError::Malformed)?;
        if id.is_empty() || token.len() != TOKEN_CHARS {
            return Err(HandleError::Malformed);
        }
        let token = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| HandleError::Malformed)?;
        let (time, mac) = token.split_at(TIME_LEN);
        let issued = u64::from_be_bytes(time.try_into().map_err(|_| HandleError::Malformed)?);
        let expected = self.tag(tenant, id, issued);
        // Compared in constant time: every byte is looked at whatever the first difference.
        let difference = expected.as_ref()[..MAC_LEN]
            .iter()
            .zip(mac)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if difference != 0 || mac.len() != MAC_LEN {
            return Err(HandleError::BadSignature);
        }
        // A little tolerance for clocks of replicas that disagree slightly.
        if issued > now + 300 || now.saturating_sub(issued) > ttl_seconds {
            return Err(HandleError::Expired);
        }
        Ok(Opened { id, issued })
    }
}

/// What the Responses API's `safety_identifier` carries for the visitor holding `handle`: the
/// hex SHA-256 of the handle (at most 64 characters), so OpenAI's abuse controls can act on
/// one visitor's conversation rather than on the tenant's whole organisation, without ever
/// seeing the handle (which would let anyone post into that conversation).
pub fn safety_identifier(handle: &str) -> String {
    let hash = digest::digest(&digest::SHA256, handle.as_bytes());
    let mut hex = hex::encode(hash);
    hex.truncate(SAFETY_ID_CHARS);
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 24 * 3600;
    const NOW: u64 = 1_795_000_000;

    fn key(byte: u8) -> HandleKey {
        HandleKey::new(&[byte; 32]).unwrap()
    }

    #[test]
    fn a_handle_verifies_for_its_tenant_within_the_ttl() {
        let handle = key(1).issue("acme", "thread_abc123", NOW);
        assert!(handle.starts_with("thread_abc123."), "{handle}");
        assert_eq!(
            key(1).verify(&handle, "acme", NOW, DAY),
            Ok("thread_abc123")
        );
        assert_eq!(
            key(1).verify(&handle, "acme", NOW + DAY, DAY),
            Ok("thread_abc123")
        );
    }

    #[test]
    fn raw_ids_and_garbage_are_malformed() {
        for handle in ["thread_abc123", "", ".", "thread_abc.", "thread.x", "a.b.c"] {
            assert_eq!(
                key(1).verify(handle, "acme", NOW, DAY),
                Err(HandleError::Malformed),
                "{handle:?}"
            );
        }
    }

    #[test]
    fn another_tenant_key_or_id_breaks_the_signature() {
        let handle = key(1).issue("acme", "thread_abc123", NOW);
        assert_eq!(
            key(1).verify(&handle, "bistro", NOW, DAY),
            Err(HandleError::BadSignature)
        );
        assert_eq!(
            key(2).verify(&handle, "acme", NOW, DAY),
            Err(HandleError::BadSignature)
        );
        let (_, token) = handle.rsplit_once('.').unwrap();
        let moved = format!("thread_other.{token}");
        assert_eq!(
            key(1).verify(&moved, "acme", NOW, DAY),
            Err(HandleError::BadSignature)
        );
    }

    #[test]
    fn every_altered_character_is_refused() {
        let handle = key(1).issue("acme", "conv_9f8e", NOW);
        for (i, c) in handle.char_indices() {
            for replacement in ['A', '_', '.', '0'] {
                if replacement == c {
                    continue;
                }
                let mut altered = handle.clone();
                altered.replace_range(i..i + c.len_utf8(), &replacement.to_string());
                assert!(
                    key(1).verify(&altered, "acme", NOW, DAY).is_err(),
                    "{altered} was accepted"
                );
            }
        }
    }

    #[test]
    fn an_expired_or_future_handle_is_refused() {
        let handle = key(1).issue("acme", "thread_abc123", NOW);
        assert_eq!(
            key(1).verify(&handle, "acme", NOW + DAY + 1, DAY),
            Err(HandleError::Expired)
        );
        let future = key(1).issue("acme", "thread_abc123", NOW + 3600);
        assert_eq!(
            key(1).verify(&future, "acme", NOW, DAY),
            Err(HandleError::Expired)
        );
    }

    #[test]
    fn the_tenant_and_id_cannot_trade_characters() {
        // "ab" + "c" and "a" + "bc" must not sign the same bytes.
        let handle = key(1).issue("ab", "c", NOW);
        let (_, token) = handle.rsplit_once('.').unwrap();
        assert!(key(1)
            .verify(&format!("bc.{token}"), "a", NOW, DAY)
            .is_err());
    }

    #[test]
    fn open_tells_when_the_handle_was_issued() {
        let handle = key(1).issue("acme", "conv_9f8e", NOW);
        let (_, token) = handle.rsplit_once('.').unwrap();
        assert_eq!(token.len(), TOKEN_CHARS);
        assert_eq!(
            key(1).open(&handle, "acme", NOW + 60, DAY),
            Ok(Opened {
                id: "conv_9f8e",
                issued: NOW
            })
        );
    }

    #[test]
    fn the_safety_identifier_is_a_hash_that_hides_the_handle() {
        let handle = key(1).issue("acme", "conv_9f8e", NOW);
        let id = safety_identifier(&handle);
        assert_eq!(id.len(), 64);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert!(!id.contains("conv_9f8e") && !handle.contains(&id));
        assert_eq!(id, safety_identifier(&handle), "stable for one visitor");
        let other = key(1).issue("acme", "conv_9f8e", NOW + 1);
        assert_ne!(id, safety_identifier(&other), "one per handle");
        // SHA-256 of "abc" (FIPS 180-2, appendix B.1).
        assert_eq!(
            safety_identifier("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(HandleKey::new(&[7; 31]).is_none());
        assert!(format!("{:?}", key(1)).contains("***"));
    }
}
