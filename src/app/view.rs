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

    /// Whether `token` is active: signature, key state, time, issuer, revocation, the
    /// client it was issued to still configured (a removed client's tokens die with it,
    /// for introspection and for token exchange alike), and within that client's
    /// contract in force now (a narrowing or a suspension makes exceeding tokens
    /// inactive on every node once the node has applied it; same log, same bound).
    pub fn decide(&self, token: &str) -> Result<Arc<AccessClaims>, Reason> {
        let claims = self
            .app
            .keys
            .with_ring(|ring| self.verifier(ring).decide(token))?;
        self.within_rights(&claims)?;
        Ok(claims)
    }

    /// [`View::decide`] for a token known by its claims and the `kid` that signed it (a
    /// status-list record): the same decision without the signature check.
    pub fn decide_recorded(&self, kid: &str, claims: &AccessClaims) -> Result<(), Reason> {
        self.app
            .keys
            .with_ring(|ring| self.verifier(ring).judge(kid, claims))?;
        self.within_rights(claims)
    }

    /// The client's side of a decision: still configured, within its contract in force,
    /// and no client it was exchanged from suspended. A new reason for a token to be
    /// inactive that does not need its signature belongs here (or in `Verifier::judge`),
    /// so that status lists say it too.
    fn within_rights(&self, claims: &AccessClaims) -> Result<(), Reason> {
        let Some(client) = self.app.contracts.client(&claims.client_id, self.now_ms) else {
            return Err(Reason::UnknownClient);
        };
        // A token carrying an elevation is judged by its grant for the elevated scope
        // (now, on this node's table and clock: nothing cached extends it) and by the
        // contract for the rest.
        let standing = match &claims.grant {
            None => None,
            Some(id) => Some(self.within_grant(claims, id)?),
        };
        let judged = standing.as_ref().unwrap_or(claims);
        within_contract(judged, &client)?;
        if claims.cv != client.contract_version
            && self
                .app
                .contracts
                .exceeded_since(&claims.client_id, claims.cv, judged, self.now_ms)
        {
            return Err(Reason::ContractNarrowed);
        }
        // A delegated token dies with the suspension of any client it was exchanged
        // from, as it dies with their revocation.
        for origin in &claims.dcl {
            if let Some(c) = self.app.contracts.client(origin, self.now_ms) {
                if c.suspended {
                    return Err(Reason::ContractSuspended);
                }
            }
        }
        Ok(())
    }

    /// Whether grant `id` lets `claims` carry its scope now: it is active (started, not
    /// ended, not revoked) by this node's clock, for the token's client, and the client's
    /// contract in force still names the elevation. Returns the claims without the
    /// elevated scope, for the contract checks.
    fn within_grant(&self, claims: &AccessClaims, id: &str) -> Result<AccessClaims, Reason> {
        let Some(g) = self.app.grants.get(id) else {
            return Err(Reason::GrantEnded);
        };
        match g.status(self.now_ms) {
            crate::grants::Status::Active => {}
            crate::grants::Status::Revoked | crate::grants::Status::Denied => {
                return Err(Reason::GrantRevoked)
            }
            _ => return Err(Reason::GrantEnded),
        }
        if g.client_id != claims.client_id
            || g.grantee() != claims.sub
            || !claims.scope.split(' ').any(|s| s == g.scope)
            || claims.exp.saturating_mul(1000) > g.ends_at_ms
            || super::grants::policy(self.app, &g.client_id, &g.scope, self.now_ms).is_none()
        {
            return Err(Reason::GrantRevoked);
        }
        let mut standing = claims.clone();
        standing.scope = claims
            .scope
            .split(' ')
            .filter(|s| *s != g.scope)
            .collect::<Vec<_>>()
            .join(" ");
        Ok(standing)
    }

    /// Claims of a new access token carrying `grant`'s scope: `exp` no later than the
    /// grant's end, and the claim naming the grant.
    pub fn elevate(&self, claims: &mut AccessClaims, grant: &crate::grants::Grant) {
        claims.exp = claims.exp.min(grant.ends_at_ms.div_euclid(1000));
        claims.grant = Some(grant.id.clone());
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

    /// Claims of a new access token for `sub`, issued to `client` under its contract in
    /// force (its version in `cv`, its lifetime if it sets one), carrying this view's
    /// stamp.
    pub fn access_claims(
        &self,
        sub: &str,
        client: &Client,
        aud: String,
        scope: String,
    ) -> AccessClaims {
        let config = &self.app.config;
        let iat = self.now_ms.div_euclid(1000);
        let ttl = client
            .access_ttl
            .unwrap_or(config.tokens.access_ttl)
            .min(crate::config::ACCESS_TTL_CAP);
        AccessClaims {
            iss: config.issuer.clone(),
            sub: sub.to_string(),
            aud,
            exp: iat + ttl.as_secs() as i64,
            iat,
            nbf: iat,
            jti: tokens::random_id(),
            client_id: client.id.to_string(),
            scope,
            sid: None,
            act: None,
            username: None,
            rse: self.stamp.epoch,
            rsq: self.stamp.seq,
            dcl: Vec::new(),
            djt: Vec::new(),
            cv: client.contract_version,
            grant: None,
            status: None,
            cnf: None,
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
            jkt: None,
            x5t_s256: None,
            mac: None,
        }
    }

    /// RFC 9701: `answer` (the JSON object `/introspect` answers) as a JWT for `aud`,
    /// issued at this view's instant, signed with the active key.
    pub fn sign_introspection(&self, aud: &str, answer: &[u8]) -> Result<String, Error> {
        let iat = self.now_ms.div_euclid(1000);
        let claims = tokens::introspection::claims(&self.app.config.issuer, aud, iat, answer);
        self.app.keys.with_ring(|ring| {
            let signer = ring
                .signer()
                .ok_or_else(|| Error::Unavailable("no signing key loaded".into()))?;
            tokens::introspection::sign(signer, &claims)
                .map_err(|e| Error::Internal(format!("signing an introspection answer: {e}")))
        })
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
        self.sign_with_kid(claims).map(|(token, _)| token)
    }

    /// Signs `claims` with the active key; also says which key that was.
    pub fn sign_with_kid(&self, claims: &AccessClaims) -> Result<(String, String), Error> {
        self.app.keys.with_ring(|ring| {
            let signer = ring
                .signer()
                .ok_or_else(|| Error::Unavailable("no signing key loaded".into()))?;
            let token = tokens::sign(signer, claims)
                .map_err(|e| Error::Internal(format!("signing: {e}")))?;
            Ok((token, signer.kid.to_string()))
        })
    }

    /// Signs a Status List Token's claims with the active key (`typ` `statuslist+jwt`).
    pub fn sign_status_list(&self, claims: &serde_json::Value) -> Result<String, Error> {
        self.app.keys.with_ring(|ring| {
            let signer = ring
                .signer()
                .ok_or_else(|| Error::Unavailable("no signing key loaded".into()))?;
            crate::status::sign(signer, claims)
                .map_err(|e| Error::Internal(format!("signing: {e}")))
        })
    }

    /// The version of the key ring this view reads now.
    pub fn keys_version(&self) -> u64 {
        self.app.keys.with_ring(|ring| ring.version)
    }
}

/// Whether `claims` stay within `client`'s rights: a token issued under the version in
/// force passes at once; an older one must carry only scopes and an audience the
/// contract in force still grants. Delegated tokens are judged by their own (acting)
/// client's contract.
pub fn within_contract(claims: &AccessClaims, client: &Client) -> Result<(), Reason> {
    if client.suspended {
        return Err(Reason::ContractSuspended);
    }
    // A scope the registry retired dies with every token carrying it, whatever version
    // the token was issued under (the registry moves independently of the contract).
    if !client.retired_scopes.is_empty()
        && claims
            .scope
            .split(' ')
            .any(|s| client.retired_scopes.iter().any(|r| r == s))
    {
        return Err(Reason::ContractNarrowed);
    }
    if claims.cv == client.contract_version {
        return Ok(());
    }
    let scopes_ok = claims
        .scope
        .split(' ')
        .filter(|s| !s.is_empty())
        .all(|s| client.scopes.iter().any(|c| c == s));
    // A token for the client's own id as audience (a subject token for delegation) is
    // not an audience grant of the contract.
    let aud_ok = client.audiences.contains(&claims.aud) || *client.id == claims.aud;
    if scopes_ok && aud_ok {
        Ok(())
    } else {
        Err(Reason::ContractNarrowed)
    }
}
