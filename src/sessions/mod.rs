//! User sessions: refresh tokens, and the identity providers whose assertions open them.
//!
//! A refresh token is opaque: `rt.` and 256 random bits. The store keeps only its SHA-256,
//! with the session it belongs to ([`crate::store::RefreshRecord`]). Every use spends it
//! and issues the next one; presenting a spent one revokes the whole session.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};

pub mod trusted;

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

#[cfg(test)]
mod tests {
    use super::*;

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
