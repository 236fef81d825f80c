//! User sessions: refresh tokens, and the identity providers whose assertions open them.
//!
//! A refresh token is opaque: `rt.` and 256 random bits. The store keeps only its SHA-256,
//! with the session it belongs to ([`RefreshRecord`]). Every use spends it
//! and issues the next one; presenting a spent one revokes the whole session.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

mod record;
pub mod trusted;

pub use record::{RefreshRecord, Rotation};

/// What a refresh token starts with (a JWT never does: its header starts with `eyJ`).
pub const REFRESH_PREFIX: &str = "rt.";

/// A new refresh token and the hash the store keeps.
pub fn new_refresh_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("operating system randomness");
    let token = format!("{REFRESH_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    let hash = hash(&token);
    (token, hash)
}

/// Whether `token` has the shape of a latch refresh token.
pub fn is_refresh_token(token: &str) -> bool {
    token.len() == REFRESH_PREFIX.len() + 43 && token.starts_with(REFRESH_PREFIX)
}

/// Hex SHA-256 of a refresh token: its key in the store.
pub fn hash(token: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What the refresh-record MAC covers: a label, the token hash (the record's key in the
/// store), and the record's JSON with the MAC left out. serde writes a struct's fields in
/// declaration order, so the bytes are the same on every node running this code.
fn mac_input(hash: &str, record: &RefreshRecord) -> Vec<u8> {
    let unsigned = RefreshRecord {
        mac: None,
        ..record.clone()
    };
    let mut out = b"latch refresh record v1\n".to_vec();
    out.extend(hash.as_bytes());
    out.push(b'\n');
    out.extend(serde_json::to_vec(&unsigned).unwrap_or_default());
    out
}

/// Sets `record.mac` for storing under `hash`.
pub fn seal(key: &hmac::Key, hash: &str, record: &mut RefreshRecord) {
    record.mac = None;
    let tag = hmac::sign(key, &mac_input(hash, record));
    record.mac = Some(URL_SAFE_NO_PAD.encode(tag.as_ref()));
}

/// Whether `record`, read from under `hash`, was written by a node holding the KEK
/// (constant-time comparison, ring).
pub fn authentic(key: &hmac::Key, hash: &str, record: &RefreshRecord) -> bool {
    let Some(Ok(tag)) = record.mac.as_deref().map(|t| URL_SAFE_NO_PAD.decode(t)) else {
        return false;
    };
    hmac::verify(key, &mac_input(hash, record), &tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> RefreshRecord {
        RefreshRecord {
            sid: "s1".into(),
            sub: "alice".into(),
            client_id: "hook".into(),
            scope: "a b".into(),
            aud: "https://x".into(),
            username: None,
            rsq: 3,
            rse: 7,
            issued_at_ms: 1,
            expires_at_ms: 2,
            mac: None,
        }
    }

    #[test]
    fn refresh_records_are_bound_to_their_hash_and_content() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &[1u8; 32]);
        let mut r = record();
        assert!(!authentic(&key, "h1", &r), "no MAC, not authentic");
        seal(&key, "h1", &mut r);
        assert!(authentic(&key, "h1", &r));
        assert!(!authentic(&key, "h2", &r), "moved to another token");
        let json = serde_json::to_string(&r).unwrap();
        let back: RefreshRecord = serde_json::from_str(&json).unwrap();
        assert!(
            authentic(&key, "h1", &back),
            "survives the store round trip"
        );
        let widened = RefreshRecord {
            scope: "a b admin".into(),
            ..r.clone()
        };
        assert!(!authentic(&key, "h1", &widened));
        let other = hmac::Key::new(hmac::HMAC_SHA256, &[2u8; 32]);
        assert!(!authentic(&other, "h1", &r));
    }

    #[test]
    fn refresh_tokens_are_random_and_recognisable() {
        let (a, ha) = new_refresh_token();
        let (b, _) = new_refresh_token();
        assert_ne!(a, b);
        assert!(is_refresh_token(&a));
        assert!(!is_refresh_token("rt.short"));
        assert!(!is_refresh_token("eyJhbGciOi.x.y"));
        assert_eq!(ha, hash(&a));
        assert_eq!(ha.len(), 64);
    }
}
