//! The only way to verify or to stamp a token: a [`View`] of a node whose revocation
//! state is fresh, obtained from [`App::fresh`].
//!
//! Two invariants live here instead of in every handler:
//! - **Fail closed when stale.** A `View` exists only if the state was fresh when it was
//!   made; without one, nothing can be verified, signed or stamped.
//! - **Stamp before checking.** The view reads the stamp `(rse, rsq)` when it is made,
//!   before any revocation check the caller then runs through it. A revocation applied
//!   between the check and the signature is at or above the stamp, so it still covers
//!   the new token.

use std::sync::Arc;

use super::error::Error;
use super::App;
use crate::clients::Client;
use crate::ids::ClientId;
use crate::revocation::Point;
use crate::sessions::RefreshRecord;
use crate::tokens::{self, AccessClaims, Reason, Verifier};

/// The node's revocation state is older than `max_staleness`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("revocation state is {age_ms} ms old (max_staleness {max_ms} ms)")]
pub struct Stale {
    pub age_ms: i64,
    pub max_ms: i64,
}

/// A fresh node at one instant, with the stamp read at that instant.
pub struct View<'a> {
    app: &'a App,
    now_ms: i64,
    stamp: Point,
}

impl App {
    /// A view of this node at `now_ms`, if its revocation state is fresh enough.
    pub fn fresh(&self, now_ms: i64) -> Result<View<'_>, Stale> {
        if !self.table.is_fresh(now_ms, self.max_staleness_ms) {
            return Err(Stale {
                age_ms: self.table.age_ms(now_ms),
                max_ms: self.max_staleness_ms,
            });
        }
        Ok(View {
            app: self,
            now_ms,
            stamp: self.table.stamp_now(),
        })
    }
}

impl View<'_> {
    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    /// `(rse, rsq)` as read when the view was made.
    pub fn stamp(&self) -> Point {
        self.stamp
    }

    fn verifier<'r>(&'r self, ring: &'r crate::keys::KeyRing) -> Verifier<'r> {
        Verifier {
            ring,
            table: &self.app.table,
            issuer: &self.app.config.issuer,
            leeway_secs: self.app.config.tokens.leeway.as_secs() as i64,
            now_ms: self.now_ms,
            cache: Some(&self.app.verified),
        }
    }

    /// Whether `token` is active: signature, key state, time, issuer, revocation, and
    /// the client it was issued to still configured (a removed client's tokens die with
    /// it, for introspection and for token exchange alike).
    pub fn decide(&self, token: &str) -> Result<Arc<AccessClaims>, Reason> {
        let claims = self
            .app
            .keys
            .with_ring(|ring| self.verifier(ring).decide(token))?;
        if self.app.clients.get(&claims.client_id).is_none() {
            return Err(Reason::UnknownClient);
        }
        Ok(claims)
    }

    /// [`View::decide`] for a resource server `caller`: a token for an audience the
    /// caller may not see is inactive to it.
    pub fn decide_for(&self, caller: &Client, token: &str) -> Result<Arc<AccessClaims>, Reason> {
        let claims = self.decide(token)?;
        if !caller.may_see_audience(&claims.aud) {
            return Err(Reason::Audience);
        }
        Ok(claims)
    }

    /// Whether `token` is one latch issued and that can still be alive (signature, key,
    /// time; not revocation).
    pub fn authentic(&self, token: &str) -> Result<Arc<AccessClaims>, Reason> {
        self.app
            .keys
            .with_ring(|ring| self.verifier(ring).authentic(token))
    }

    /// Claims of a new access token for `sub`, issued to `client_id`, carrying this
    /// view's stamp.
    pub fn access_claims(
        &self,
        sub: &str,
        client_id: &ClientId,
        aud: String,
        scope: String,
    ) -> AccessClaims {
        let config = &self.app.config;
        let iat = self.now_ms.div_euclid(1000);
        AccessClaims {
            iss: config.issuer.clone(),
            sub: sub.to_string(),
            aud,
            exp: iat + config.tokens.access_ttl.as_secs() as i64,
            iat,
            nbf: iat,
            jti: tokens::random_id(),
            client_id: client_id.to_string(),
            scope,
            sid: None,
            act: None,
            username: None,
            rse: self.stamp.epoch,
            rsq: self.stamp.seq,
            dcl: Vec::new(),
            djt: Vec::new(),
        }
    }

    /// The record of a new session's first refresh token: the session keeps `claims`'
    /// stamp for as long as it lives.
    pub fn refresh_record(&self, claims: &AccessClaims) -> RefreshRecord {
        RefreshRecord {
            sid: claims.sid.clone().unwrap_or_default(),
            sub: claims.sub.clone(),
            client_id: claims.client_id.clone(),
            scope: claims.scope.clone(),
            aud: claims.aud.clone(),
            username: claims.username.clone(),
            rse: claims.rse,
            rsq: claims.rsq,
            issued_at_ms: self.now_ms,
            expires_at_ms: self.now_ms + self.app.config.tokens.refresh_ttl.as_millis() as i64,
            mac: None,
        }
    }

    /// The active key, to sign Security Event Tokens elsewhere (the push thread): only a
    /// fresh view hands it out, as only a fresh view signs.
    pub fn set_signer(&self) -> Result<Arc<crate::keys::Signer>, Error> {
        self.app.keys.with_ring(|ring| {
            ring.signer()
                .cloned()
                .ok_or_else(|| Error::Unavailable("no signing key loaded".into()))
        })
    }

    /// Signs a Security Event Token's claims with the active key (`typ` `secevent+jwt`).
    pub fn sign_set(&self, claims: &serde_json::Value) -> Result<String, Error> {
        self.app.keys.with_ring(|ring| {
            let signer = ring
                .signer()
                .ok_or_else(|| Error::Unavailable("no signing key loaded".into()))?;
            crate::ssf::set::sign(signer, claims)
                .map_err(|e| Error::Internal(format!("signing: {e}")))
        })
    }

    /// Signs `claims` with the active key.
    pub fn sign(&self, claims: &AccessClaims) -> Result<String, Error> {
        self.app.keys.with_ring(|ring| {
            let signer = ring
                .signer()
                .ok_or_else(|| Error::Unavailable("no signing key loaded".into()))?;
            tokens::sign(signer, claims).map_err(|e| Error::Internal(format!("signing: {e}")))
        })
    }
}
