//! User sessions: refresh tokens, and the identity providers whose assertions open them.
//!
//! A refresh token is opaque: `rt.` and 43 base64url characters. The first
//! [`FAMILY_LEN`] of them name the token's family (every token of one session chain shares
//! them, see [`next_refresh_token`]); the other 32 are fresh random bits (192) for each
//! token. The store keeps only the token's SHA-256, under its family ([`store_key`]), with
//! the session it belongs to ([`RefreshRecord`]). Every use spends it and issues the next
//! one; presenting a spent one revokes the whole session.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

mod record;
pub mod trusted;

pub use record::{RefreshRecord, Rotation};

/// What a refresh token starts with (a JWT never does: its header starts with `eyJ`).
pub const REFRESH_PREFIX: &str = "rt.";

/// How many characters after the prefix name a token's family (66 bits): the Redis store
/// keeps a family's records under one hash tag, so a rotation and a reuse mark touch one
/// slot, while families spread over every master of a Cluster.
pub const FAMILY_LEN: usize = 11;

/// The first refresh token of a new session (a new family).
pub fn new_refresh_token() -> String {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("operating system randomness");
    format!("{REFRESH_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The successor of `previous`: its family, and 192 fresh random bits.
pub fn next_refresh_token(previous: &str) -> String {
    let fresh = new_refresh_token();
    match family(previous) {
        Some(f) => format!(
            "{REFRESH_PREFIX}{f}{}",
            &fresh[REFRESH_PREFIX.len() + FAMILY_LEN..]
        ),
        None => fresh,
    }
}

/// The family part of a well-formed refresh token.
pub fn family(token: &str) -> Option<&str> {
    is_refresh_token(token).then(|| &token[REFRESH_PREFIX.len()..REFRESH_PREFIX.len() + FAMILY_LEN])
}

/// Where the store keeps a token's record: `<family>.<hash>`. The record's MAC covers the
/// [`hash`] alone, so the embedded store (keyed by the hash) and records written before
/// families existed read as before.
pub fn store_key(token: &str) -> String {
    match family(token) {
        Some(f) => format!("{f}.{}", hash(token)),
        None => hash(token),
    }
}

/// The hash part of a [`store_key`].
pub fn key_hash(key: &str) -> &str {
    key.split_once('.').map_or(key, |(_, h)| h)
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
            jkt: None,
            x5t_s256: None,
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
        let a = new_refresh_token();
        let ha = hash(&a);
        let b = new_refresh_token();
        assert_ne!(a, b);
        assert!(is_refresh_token(&a));
        assert!(!is_refresh_token("rt.short"));
        assert!(!is_refresh_token("eyJhbGciOi.x.y"));
        assert_eq!(ha, hash(&a));
        assert_eq!(ha.len(), 64);
    }

    #[test]
    fn a_successor_keeps_its_family_and_nothing_else() {
        let a = new_refresh_token();
        let b = next_refresh_token(&a);
        let c = next_refresh_token(&b);
        assert!(is_refresh_token(&b) && is_refresh_token(&c));
        assert_eq!(family(&a), family(&b));
        assert_eq!(family(&b), family(&c));
        assert_ne!(family(&a), family(&new_refresh_token()));
        let secret = |t: &str| t[REFRESH_PREFIX.len() + FAMILY_LEN..].to_string();
        assert_ne!(secret(&a), secret(&b));
        assert_ne!(secret(&b), secret(&c));
        let key = store_key(&b);
        assert_eq!(key, format!("{}.{}", family(&b).unwrap(), hash(&b)));
        assert_eq!(key_hash(&key), hash(&b));
        assert_eq!(key_hash(&hash(&b)), hash(&b), "a bare hash is its own key");
        assert_eq!(store_key("garbage"), hash("garbage"));
    }
}
