//! The verified-token cache: once a token's signature and claims were verified, later
//! introspections of the same token skip the signature check and the JSON parse.
//!
//! Only the expensive, immutable part is cached: "this exact text was signed by key
//! `kid` and says these claims". Everything that can change — the key's state, the time,
//! revocations, the caller's audiences — is checked again on every hit.
//!
//! **Architecture Invariant:** the key is the whole token text, never a part of it: a hit
//! means byte-for-byte the token that was verified.

use std::sync::Arc;

use dashmap::DashMap;

use super::AccessClaims;

/// A verified token: which key signed it, and what it says.
#[derive(Debug)]
pub struct Verified {
    pub kid: Box<str>,
    pub claims: Arc<AccessClaims>,
}

/// A bounded map from token text to [`Verified`].
#[derive(Debug)]
pub struct VerifiedCache {
    /// Seeded per process: callers choose the keys.
    map: DashMap<Box<str>, Arc<Verified>, foldhash::fast::RandomState>,
    capacity: usize,
}

impl VerifiedCache {
    pub fn new(capacity: usize) -> VerifiedCache {
        VerifiedCache {
            map: DashMap::default(),
            capacity,
        }
    }

    pub fn get(&self, token: &str) -> Option<Arc<Verified>> {
        if self.capacity == 0 {
            return None;
        }
        self.map.get(token).map(|v| v.clone())
    }

    /// Remembers a verified token. At capacity, expired entries go first, then arbitrary
    /// ones, so the cache never grows past `capacity` (plus one pruning batch).
    pub fn insert(&self, token: &str, verified: Verified, now_secs: i64) {
        if self.capacity == 0 {
            return;
        }
        if self.map.len() >= self.capacity {
            self.prune(now_secs);
        }
        self.map.insert(token.into(), Arc::new(verified));
    }

    fn prune(&self, now_secs: i64) {
        self.map.retain(|_, v| v.claims.exp > now_secs);
        let excess = self.map.len().saturating_sub(self.capacity * 9 / 10);
        if excess > 0 {
            let victims: Vec<Box<str>> = self
                .map
                .iter()
                .take(excess)
                .map(|e| e.key().clone())
                .collect();
            for k in victims {
                self.map.remove(&k);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(exp: i64) -> Verified {
        Verified {
            kid: "k".into(),
            claims: Arc::new(AccessClaims {
                iss: "i".into(),
                sub: "s".into(),
                aud: "a".into(),
                exp,
                iat: 0,
                nbf: 0,
                jti: "j".into(),
                client_id: "c".into(),
                scope: String::new(),
                sid: None,
                act: None,
                username: None,
                rsq: 0,
                rse: 0,
                dcl: Vec::new(),
                djt: Vec::new(),
                cv: 0,
                grant: None,
                status: None,
            }),
        }
    }

    #[test]
    fn stays_bounded_and_prefers_dropping_expired_entries() {
        let cache = VerifiedCache::new(10);
        for i in 0..10 {
            cache.insert(&format!("old{i}"), verified(5), 0);
        }
        cache.insert("live", verified(100), 10);
        assert!(cache.len() <= 10);
        assert!(cache.get("live").is_some());
        assert!(cache.get("old0").is_none(), "expired entries go first");
        for i in 0..100 {
            cache.insert(&format!("t{i}"), verified(100), 10);
            assert!(cache.len() <= 10);
        }
    }

    #[test]
    fn zero_capacity_disables_it() {
        let cache = VerifiedCache::new(0);
        cache.insert("t", verified(100), 0);
        assert!(cache.get("t").is_none());
    }
}
