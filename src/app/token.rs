//! The token endpoint's grants: `client_credentials`, the rotating `refresh_token` grant
//! with reuse detection, and token exchange (RFC 8693) to open a user session or to
//! delegate. The HTTP layer parses a [`TokenRequest`] and renders the [`Issued`] answer.

use std::time::Duration;

use serde_json::json;

use super::error::Error;
use super::view::View;
use super::App;
use crate::audit::NewAudit;
use crate::clients::{Client, Deprecated, Grant, Role};
use crate::metrics as m;
use crate::policy;
use crate::revocation::{NewRevocation, RevocationKind, Verdict};
use crate::sessions::{self, RefreshRecord, Rotation};
use crate::time::now_ms;
use crate::tokens::{AccessClaims, Cnf};

pub const TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// A token request, by grant, with the parameters each grant reads (empty counts as
/// absent). Required parameters are checked once the client is known to hold the grant.
#[derive(Debug, Clone, Copy)]
pub enum TokenRequest<'a> {
    ClientCredentials {
        scope: Option<&'a str>,
        resource: Option<&'a str>,
    },
    RefreshToken {
        refresh_token: Option<&'a str>,
        scope: Option<&'a str>,
    },
    TokenExchange(Exchange<'a>),
}

impl TokenRequest<'_> {
    pub fn grant(&self) -> Grant {
        match self {
            TokenRequest::ClientCredentials { .. } => Grant::ClientCredentials,
            TokenRequest::RefreshToken { .. } => Grant::RefreshToken,
            TokenRequest::TokenExchange(_) => Grant::TokenExchange,
        }
    }
}

/// RFC 8693 §2.1 parameters.
#[derive(Debug, Clone, Copy)]
pub struct Exchange<'a> {
    pub subject_token: Option<&'a str>,
    pub subject_token_type: Option<&'a str>,
    pub requested_token_type: Option<&'a str>,
    pub scope: Option<&'a str>,
    pub audience: Option<&'a str>,
    pub resource: Option<&'a str>,
}

/// A successful token response.
#[derive(Debug)]
pub struct Issued {
    pub access_token: String,
    pub expires_in: u64,
    pub scope: String,
    pub refresh_token: Option<String>,
    pub grant: Grant,
    /// `Bearer`, or `DPoP` for a DPoP-bound token (RFC 9449 §5).
    pub token_type: &'static str,
    /// Deprecated scopes or audiences the token carries, each with its planned removal
    /// (Unix ms) when scheduled: the answer says so (`Deprecation`, `Sunset`).
    pub deprecated: Vec<Deprecated>,
}

/// Issues tokens to an authenticated `client` (its rights under the contract in force):
/// checks that it may use the grant and its issuance rate, then runs the grant. Every
/// decision is counted by reason and logged with the client, the requested and granted
/// scopes, the contract version and the reason; a refusal of something in `shadow` is
/// logged as "would have been granted".
pub async fn token(
    app: &App,
    client: &Client,
    req: TokenRequest<'_>,
    request_id: &str,
    binding: Option<&Cnf>,
) -> Result<Issued, Error> {
    let requested = match req {
        TokenRequest::ClientCredentials { scope, .. }
        | TokenRequest::RefreshToken { scope, .. } => scope,
        TokenRequest::TokenExchange(x) => x.scope,
    };
    let result = grant(app, client, req, request_id, binding).await;
    match &result {
        Ok(issued) => {
            // Counted here, once the grant is complete: a refresh signs its access token
            // before it rotates, and a refused rotation issues nothing.
            metrics::counter!(m::TOKENS_ISSUED_TOTAL, "grant" => issued.grant.label()).increment(1);
            metrics::counter!(m::CONTRACT_DECISIONS, "reason" => "granted").increment(1);
            for d in &issued.deprecated {
                metrics::counter!(m::CONTRACT_DEPRECATED_USE, "name" => d.name.clone())
                    .increment(1);
            }
            tracing::debug!(
                target: "latch::contracts",
                client = %client.id,
                requested = requested.unwrap_or(""),
                granted = %issued.scope,
                contract_version = client.contract_version,
                reason = "granted",
                "token decision"
            );
        }
        Err(Error::Policy(refusal)) => {
            metrics::counter!(m::CONTRACT_DECISIONS, "reason" => refusal.reason).increment(1);
            if refusal.is_shadow() {
                let name = requested.unwrap_or("").to_string();
                metrics::counter!(m::CONTRACT_SHADOW_HITS, "client" => client.id.to_string())
                    .increment(1);
                tracing::info!(
                    target: "latch::contracts",
                    client = %client.id,
                    requested = %name,
                    contract_version = client.contract_version,
                    stage = "shadow",
                    reason = refusal.reason,
                    "would have been granted"
                );
            } else {
                tracing::info!(
                    target: "latch::contracts",
                    client = %client.id,
                    requested = requested.unwrap_or(""),
                    contract_version = client.contract_version,
                    reason = refusal.reason,
                    "token refused"
                );
            }
        }
        Err(_) => {}
    }
    result
}

async fn grant(
    app: &App,
    client: &Client,
    req: TokenRequest<'_>,
    request_id: &str,
    binding: Option<&Cnf>,
) -> Result<Issued, Error> {
    policy::not_suspended(client)?;
    if !client.has_grant(req.grant()) {
        return Err(Error::GrantNotAllowed(
            "this client may not use this grant type",
        ));
    }
    app.limits.token(&client.id, client.token_rate, now_ms())?;
    match req {
        TokenRequest::ClientCredentials { scope, resource } => {
            let standing = policy::contract_scope(client, scope);
            let aud = policy::audience(client, resource)?;
            let view = app.fresh(now_ms())?;
            // A scope outside the contract may still come from an active elevation grant,
            // read after the view was made (its stamp covers any later revocation).
            let (scope, grant) = match standing {
                Ok(scope) => (scope, None),
                Err(refusal) => {
                    let (scope, grant) = elevated(app, client, scope, refusal, view.now_ms())?;
                    (scope, Some(grant))
                }
            };
            let mut claims = view.access_claims(&client.id, client, aud, scope);
            if let Some(g) = &grant {
                elevate(&view, client, &mut claims, g)?;
            }
            issue(
                app,
                &view,
                client,
                &claims,
                Grant::ClientCredentials,
                binding,
            )
            .await
        }
        TokenRequest::RefreshToken {
            refresh_token,
            scope,
        } => {
            let refresh_token = required("refresh_token", refresh_token)?;
            refresh(app, client, refresh_token, scope, request_id, binding).await
        }
        TokenRequest::TokenExchange(x) => exchange(app, client, x, request_id, binding).await,
    }
}

/// The scope and grant of a token asking for one scope outside `client`'s contract that
/// the contract names as an elevation and an active grant covers now; else `refusal`
/// (the scope is no elevation, or more than one such scope is asked for) or
/// `elevation_not_active` (no grant active now).
fn elevated(
    app: &App,
    client: &Client,
    requested: Option<&str>,
    refusal: policy::Refusal,
    now: i64,
) -> Result<(String, std::sync::Arc<crate::grants::Grant>), Error> {
    let Some(requested) = requested else {
        return Err(refusal.into());
    };
    let outside: Vec<&str> = requested
        .split(' ')
        .filter(|s| !s.is_empty() && !client.scopes.iter().any(|c| c == s))
        .collect();
    let [scope] = outside[..] else {
        return Err(refusal.into());
    };
    if super::grants::policy(app, &client.id, scope, now).is_none() {
        return Err(refusal.into());
    }
    let grant = app
        .grants
        .all()
        .into_iter()
        .filter(|g| g.covers(&client.id, &client.id, scope, now))
        .max_by_key(|g| g.ends_at_ms)
        .ok_or_else(|| policy::elevation_not_active(scope))?;
    let scope = policy::elevated_scope(client, requested, scope)?;
    Ok((scope, grant))
}

/// [`elevated`] for a refresh of `sub`'s session: one requested scope beyond the
/// session's, which the client's contract names as an elevation and a grant for this
/// user covers now; the rest within the session's scope.
fn elevated_session(
    app: &App,
    client: &Client,
    sub: &str,
    session_scope: &[&str],
    requested: Option<&str>,
    refusal: policy::Refusal,
    now: i64,
) -> Result<(String, std::sync::Arc<crate::grants::Grant>), Error> {
    let Some(requested) = requested else {
        return Err(refusal.into());
    };
    let outside: Vec<&str> = requested
        .split(' ')
        .filter(|s| !s.is_empty() && !session_scope.contains(s))
        .collect();
    let [scope] = outside[..] else {
        return Err(refusal.into());
    };
    if super::grants::policy(app, &client.id, scope, now).is_none() {
        return Err(refusal.into());
    }
    let grant = app
        .grants
        .all()
        .into_iter()
        .filter(|g| g.covers(&client.id, sub, scope, now))
        .max_by_key(|g| g.ends_at_ms)
        .ok_or_else(|| policy::elevation_not_active(scope))?;
    let rest: Vec<&str> = requested
        .split(' ')
        .filter(|s| !s.is_empty() && *s != scope)
        .collect();
    let mut granted = if rest.is_empty() {
        String::new()
    } else {
        policy::scope_within(session_scope, Some(&rest.join(" ")))?
    };
    if !granted.is_empty() {
        granted.push(' ');
    }
    granted.push_str(scope);
    Ok((granted, grant))
}

/// Signs `claims` (bound to `binding`, if any). With status lists on, the token gets its
/// index and is returned only once its record is durable. The grant adds the refresh
/// token, if it has one, once nothing can fail any more.
async fn issue(
    app: &App,
    view: &View<'_>,
    client: &Client,
    claims: &AccessClaims,
    grant: Grant,
    binding: Option<&Cnf>,
) -> Result<Issued, Error> {
    let bound;
    let claims = match binding {
        Some(cnf) => {
            bound = AccessClaims {
                cnf: Some(cnf.clone()),
                ..claims.clone()
            };
            &bound
        }
        None => claims,
    };
    let access_token = match &app.status {
        Some(lists) => lists.sign_recorded(view, claims).await?,
        None => view.sign(claims)?,
    };
    Ok(Issued {
        access_token,
        expires_in: (claims.exp - claims.iat).max(0) as u64,
        scope: claims.scope.clone(),
        refresh_token: None,
        grant,
        token_type: Cnf::token_type(claims.cnf.as_ref()),
        deprecated: deprecated_in(client, claims),
    })
}

/// The deprecated scopes and audience `claims` carry under `client`'s contract.
pub fn deprecated_in(client: &Client, claims: &AccessClaims) -> Vec<Deprecated> {
    if client.deprecated.is_empty() {
        return Vec::new();
    }
    client
        .deprecated
        .iter()
        .filter(|d| d.name == claims.aud || claims.scope.split(' ').any(|s| s == d.name))
        .cloned()
        .collect()
}

/// A parameter the grant cannot do without.
fn required<'a>(name: &str, value: Option<&'a str>) -> Result<&'a str, Error> {
    value.ok_or_else(|| Error::InvalidRequest(format!("missing parameter {name}")))
}

// === token exchange ===

async fn exchange(
    app: &App,
    client: &Client,
    x: Exchange<'_>,
    request_id: &str,
    binding: Option<&Cnf>,
) -> Result<Issued, Error> {
    let subject_token = required("subject_token", x.subject_token)?;
    // RFC 8693 §2.1 `requested_token_type`: latch issues access tokens (JWTs) only.
    match x.requested_token_type {
        None | Some(TYPE_ACCESS_TOKEN) | Some(TYPE_JWT) => {}
        Some(_) => {
            return Err(Error::InvalidRequest(format!(
                "requested_token_type must be {TYPE_ACCESS_TOKEN} or {TYPE_JWT}"
            )))
        }
    }
    match required("subject_token_type", x.subject_token_type)? {
        TYPE_JWT => {
            if !client.has_role(Role::SessionIssuer) {
                return Err(Error::NotPermitted(
                    "this client is not allowed to use this endpoint",
                ));
            }
            open_session(app, client, subject_token, x, request_id, binding).await
        }
        TYPE_ACCESS_TOKEN => delegate(app, client, subject_token, x, binding).await,
        _ => Err(Error::InvalidRequest(format!(
            "subject_token_type must be {TYPE_JWT} or {TYPE_ACCESS_TOKEN}"
        ))),
    }
}

/// An IdP hook hands latch a user: a new session, its first access and refresh tokens.
async fn open_session(
    app: &App,
    client: &Client,
    assertion: &str,
    x: Exchange<'_>,
    request_id: &str,
    binding: Option<&Cnf>,
) -> Result<Issued, Error> {
    let now = now_ms();
    app.fresh(now)?;
    let leeway = app.config.tokens.leeway.as_secs();
    let a = app.trusted.verify(assertion, leeway).map_err(|reason| {
        tracing::debug!(reason, client = %client.id, "assertion refused");
        Error::InvalidGrant("the subject token is not a valid assertion of a trusted issuer")
    })?;
    // RFC 9068 §5: a user must never be named like a client (nor, with prefixes, like a
    // user of another IdP; config validation keeps prefixes apart from client ids).
    if app.clients.contains(&a.sub) {
        tracing::warn!(issuer = %a.iss, client = %client.id, subject = %a.sub, "assertion names a client id as its subject; refused");
        app.store
            .append_audit(NewAudit {
                actor: client.id.to_string(),
                action: "assertion_refused".into(),
                target: format!("subject:{}", a.sub),
                reason: format!("assertion from {} names a client id as its subject", a.iss),
                request_id: request_id.to_string(),
            })
            .await?;
        return Err(Error::InvalidGrant(
            "the assertion's subject collides with a client id",
        ));
    }
    if !client.trusted_issuers.is_empty() && !client.trusted_issuers.contains(&a.iss) {
        tracing::info!(client = %client.id, issuer = %a.iss, "assertion issuer not in the client's contract");
        return Err(Error::InvalidGrant(
            "this client's contract does not accept assertions of this issuer",
        ));
    }
    let scope = policy::contract_scope(client, x.scope)?;
    let aud = policy::exchange_audience(client, x.audience, x.resource)?;
    // One use per assertion, remembered exactly as long as it could be accepted: until
    // its `exp` or its maximum age, whichever comes first, plus leeway.
    let replay_key = sessions::hash(&format!("{}\n{}", a.iss, a.jti));
    let until = sessions::trusted::replay_until_ms(a.exp, a.iat, leeway as i64);
    if !app.store.claim_once(replay_key.clone(), until).await? {
        tracing::debug!(client = %client.id, "assertion replayed");
        return Err(Error::InvalidGrant("the assertion was already used"));
    }
    let opened: Result<Issued, Error> = async {
        let view = app.fresh(now)?;
        let mut claims = view.access_claims(&a.sub, client, aud, scope);
        claims.sid = Some(crate::tokens::random_id());
        claims.username = a.username;
        let refresh_token = sessions::new_refresh_token();
        let mut record = view.refresh_record(&claims);
        record.jkt = binding.and_then(Cnf::jkt).map(str::to_string);
        record.x5t_s256 = binding.and_then(Cnf::x5t_s256).map(str::to_string);
        sessions::seal(
            app.keys.refresh_record_mac(),
            &sessions::hash(&refresh_token),
            &mut record,
        );
        let audit = NewAudit {
            actor: client.id.to_string(),
            action: "session_create".into(),
            target: format!("session:{}", record.sid),
            reason: format!("subject {} from {} (IdP sub {})", a.sub, a.iss, a.idp_sub),
            request_id: request_id.to_string(),
        };
        // The access token before the session, so that a session is never stored without
        // its answer having been made (a failed issuance leaves no session behind).
        let mut issued = issue(app, &view, client, &claims, Grant::TokenExchange, binding).await?;
        app.store
            .open_session(sessions::store_key(&refresh_token), record, audit)
            .await?;
        issued.refresh_token = Some(refresh_token);
        Ok(issued)
    }
    .await;
    if opened.is_err() {
        // Nothing was answered for this assertion: it may be presented again (the IdP
        // hook's retry of the 503). Best effort: a claim that stays makes that retry a
        // replay, as before.
        if let Err(error) = app.store.release_claim(replay_key).await {
            tracing::warn!(%error, "could not release the claim of an assertion whose session failed");
        }
    }
    opened
}

/// A service acting for a user: a down-scoped token for another audience, with the
/// service recorded in `act` (RFC 8693 §4.1). It keeps the user's `sub` and `sid`, so
/// revoking the user or the session revokes it too, and it carries the chain of client
/// ids and jtis it derives from (`dcl`, `djt`), so revoking any origin client or token
/// revokes it as well.
///
/// Refused (RFC 8693 §2.2.2, §5): a subject token not meant for the caller (its `aud`
/// is neither the caller's id nor one of its audiences) or nested deeper than
/// `tokens.max_delegation_depth` (`invalid_grant`); a service token (no `sid`) unless the
/// caller has `delegate_service_tokens` (`unauthorized_client`); an `audience` or
/// `resource` outside the caller's audiences (`invalid_target`).
async fn delegate(
    app: &App,
    client: &Client,
    subject_token: &str,
    x: Exchange<'_>,
    binding: Option<&Cnf>,
) -> Result<Issued, Error> {
    // The view's stamp is read before the subject token's revocation check.
    let view = app.fresh(now_ms())?;
    if let Ok(claims) = view.authentic(subject_token) {
        // A subject token from a node further along: wait for this node to catch up
        // rather than refuse a brand-new token (found by app::tests).
        app.await_stamp(claims.stamp().point()).await;
    }
    let subject = view.decide(subject_token).map_err(|reason| {
        tracing::debug!(reason = reason.as_str(), client = %client.id, "subject token refused");
        Error::InvalidGrant("the subject token is not active")
    })?;
    if subject.aud != client.id && !client.audiences.iter().any(|a| *a == subject.aud) {
        tracing::info!(client = %client.id, aud = %subject.aud, "subject token meant for another audience");
        return Err(Error::InvalidGrant(
            "the subject token was not issued for this client",
        ));
    }
    if subject.sid.is_none() && !client.delegate_service_tokens {
        return Err(Error::GrantNotAllowed(
            "this client may not act as another service (the subject token has no session)",
        ));
    }
    if subject.dcl.len() + 1 > app.config.tokens.max_delegation_depth {
        return Err(Error::InvalidGrant(
            "the subject token is already delegated as deeply as allowed",
        ));
    }
    let scope = policy::scope_within(&policy::delegable(client, &subject.scope), x.scope)?;
    if scope.is_empty() {
        return Err(policy::Refusal::scope(
            "scope_not_allowed",
            "no scope is shared by the subject token and this client".into(),
        )
        .into());
    }
    let aud = policy::exchange_audience(client, x.audience, x.resource)?;
    let mut claims = view.access_claims(&subject.sub, client, aud, scope);
    claims.exp = claims.exp.min(subject.exp);
    claims.sid = subject.sid.clone();
    claims.username = subject.username.clone();
    let mut act = json!({ "sub": client.id });
    if let Some(prior) = &subject.act {
        act["act"] = prior.clone();
    }
    claims.act = Some(act);
    claims.dcl = subject.dcl.clone();
    claims.dcl.push(subject.client_id.clone());
    claims.djt = subject.djt.clone();
    claims.djt.push(subject.jti.clone());
    issue(app, &view, client, &claims, Grant::TokenExchange, binding).await
}

// === refresh_token grant ===

async fn refresh(
    app: &App,
    client: &Client,
    token: &str,
    scope: Option<&str>,
    request_id: &str,
    binding: Option<&Cnf>,
) -> Result<Issued, Error> {
    let now = now_ms();
    app.fresh(now)?;
    let invalid = || Error::InvalidGrant("the refresh token is not valid");
    if !sessions::is_refresh_token(token) {
        return Err(invalid());
    }
    let hash = sessions::hash(token);
    let key = sessions::store_key(token);
    sync_revocations(app).await?;
    let (record, spent) = stored_refresh(app, token, request_id)
        .await?
        .ok_or_else(invalid)?;
    if record.client_id != client.id {
        tracing::debug!(client = %client.id, "refresh token of another client");
        return Err(invalid());
    }
    if !policy::session_allowed(client, &record) {
        tracing::debug!(client = %client.id, "session no longer within the client's grants");
        return Err(invalid());
    }
    if spent {
        return Err(reuse(app, &key, &record, request_id).await);
    }
    if record.jkt.is_some() && record.jkt.as_deref() != binding.and_then(Cnf::jkt) {
        tracing::info!(client = %client.id, "refresh without a proof by the session's DPoP key");
        return Err(Error::InvalidGrant(
            "the refresh token is bound to a DPoP key; send a proof by that key",
        ));
    }
    // RFC 8705 §3: a session opened over mutual TLS is refreshed only with the same
    // certificate (the record is MAC-covered: a store writer cannot move the binding).
    if record.x5t_s256.is_some() && record.x5t_s256.as_deref() != binding.and_then(Cnf::x5t_s256) {
        tracing::info!(client = %client.id, "refresh without the session's client certificate");
        return Err(Error::InvalidGrant(
            "the refresh token is bound to a client certificate; present that certificate",
        ));
    }
    // The view's stamp is read before the session's revocation check.
    let view = app.fresh(now)?;
    if record.expires_at_ms <= now || app.table.is_revoked(&record.stamp()) {
        return Err(invalid());
    }
    let session_scope: Vec<&str> = record.scope.split(' ').filter(|s| !s.is_empty()).collect();
    // One scope beyond the session's may come from an active elevation grant for this
    // user of this client (read after the view was made). The session keeps its scope.
    let (scope, grant) = match policy::scope_within(&session_scope, scope) {
        Ok(scope) => (scope, None),
        Err(refusal) => {
            let (scope, g) = elevated_session(
                app,
                client,
                &record.sub,
                &session_scope,
                scope,
                refusal,
                view.now_ms(),
            )?;
            (scope, Some(g))
        }
    };
    let mut claims = view.access_claims(&record.sub, client, record.aud.clone(), scope);
    if let Some(g) = &grant {
        elevate(&view, client, &mut claims, g)?;
    }
    claims.sid = Some(record.sid.clone());
    claims.username = record.username.clone();
    // Same family: the Redis store spends this one and stores that one in one slot.
    let next_token = sessions::next_refresh_token(token);
    let next_hash = sessions::hash(&next_token);
    // The session keeps its scope and its stamp; only the token and its expiry move.
    let mut next = RefreshRecord {
        issued_at_ms: now,
        expires_at_ms: now + app.config.tokens.refresh_ttl.as_millis() as i64,
        ..record.clone()
    };
    sessions::seal(app.keys.refresh_record_mac(), &next_hash, &mut next);
    // The access token first (signed, its status record durable), the rotation last:
    // once the old token is spent nothing may fail, or the client's retry of the 503
    // would read as reuse and revoke the session. Unused if the rotation refuses.
    let mut issued = issue(app, &view, client, &claims, Grant::RefreshToken, binding).await?;
    match app
        .store
        .rotate_refresh(key.clone(), sessions::store_key(&next_token), next)
        .await?
    {
        Rotation::Rotated => {
            issued.refresh_token = Some(next_token);
            Ok(issued)
        }
        Rotation::Reused(r) if sessions::authentic(app.keys.refresh_record_mac(), &hash, &r) => {
            Err(reuse(app, &key, &r, request_id).await)
        }
        Rotation::Reused(_) => {
            rejected(app, &hash, request_id).await;
            Err(invalid())
        }
        Rotation::Unknown => Err(invalid()),
    }
}

/// A refresh token's record and whether it was spent, if the store has one that proves
/// (by its MAC) that latch wrote it for this token hash. A record that does not is
/// reported and treated as absent: a record planted in the store yields nothing.
pub(super) async fn stored_refresh(
    app: &App,
    token: &str,
    request_id: &str,
) -> Result<Option<(RefreshRecord, bool)>, Error> {
    let hash = sessions::hash(token);
    let Some((record, spent)) = app.store.refresh_token(sessions::store_key(token)).await? else {
        return Ok(None);
    };
    if !sessions::authentic(app.keys.refresh_record_mac(), &hash, &record) {
        rejected(app, &hash, request_id).await;
        return Ok(None);
    }
    Ok(Some((record, spent)))
}

/// Logs, counts and audits a refresh-token record whose MAC failed (never its content:
/// it is the attacker's).
async fn rejected(app: &App, hash: &str, request_id: &str) {
    let target = format!("refresh:{}", &hash[..hash.len().min(12)]);
    tracing::warn!(%target, "refresh-token record with a bad MAC; treated as unknown");
    metrics::counter!(m::REFRESH_RECORDS_REJECTED).increment(1);
    let audit = NewAudit {
        actor: "latch".into(),
        action: "refresh_record_rejected".into(),
        target,
        reason: "bad_mac".into(),
        request_id: request_id.to_string(),
    };
    if let Err(error) = app.store.append_audit(audit).await {
        tracing::warn!(%error, "could not audit a rejected refresh-token record");
    }
}

/// A spent refresh token came back: whoever holds it, the session is compromised. The
/// session is revoked and the reuse audited; the answer is always a refusal.
///
/// In order (docs/ARCHITECTURE.md, "Sessions on a sharded store"): the family is marked
/// reused in its own slot first (a rotation that found the reuse has marked it already),
/// so no token of it is served again whatever happens next; then the revocation goes to
/// the ordered log. A process that dies between the two leaves a marked family with no
/// revocation: the next presentation of any of its tokens reads as spent and comes here
/// again, which appends the revocation then (it is skipped once the table covers it).
async fn reuse(app: &App, key: &str, record: &RefreshRecord, request_id: &str) -> Error {
    tracing::warn!(sid = %record.sid, client = %record.client_id, "refresh token reuse; revoking the session");
    // Tried even if the mark failed (its shard away): the revocation alone kills the
    // session; the answer is a refusal either way.
    let marked = app.store.mark_reused(key.to_string()).await;
    if !app
        .table
        .covers(RevocationKind::Session, &record.sid, record.rsq)
    {
        let revoked = app
            .revoke(NewRevocation {
                kind: RevocationKind::Session,
                value: record.sid.clone(),
                reason: "refresh token reuse".into(),
                actor: "latch".into(),
                request_id: request_id.to_string(),
            })
            .await;
        if let Err(e) = revoked {
            return e.into();
        }
    }
    if let Err(error) = marked {
        // The revocation is in the log (or was already): the session is dead by its stamp.
        tracing::warn!(%error, sid = %record.sid, "could not mark the refresh-token family reused");
    }
    let audited = app
        .store
        .append_audit(NewAudit {
            actor: record.client_id.clone(),
            action: "refresh_reuse".into(),
            target: format!("session:{}", record.sid),
            reason: format!(
                "spent refresh token presented again; subject {}",
                record.sub
            ),
            request_id: request_id.to_string(),
        })
        .await;
    match audited {
        Ok(_) => Error::InvalidGrant("the refresh token was already used; the session is revoked"),
        Err(e) => e.into(),
    }
}

/// Waits until this node has applied every revocation the store has, so a refresh right
/// after a revocation on another node is refused here too. Bounded by `max_staleness`.
/// After an epoch change this also waits for the node to switch to the new epoch. The
/// wait is on the table's change watch, not a poll.
async fn sync_revocations(app: &App) -> Result<(), Error> {
    let head = app.store.head().await?;
    let timeout = Duration::from_millis(app.max_staleness_ms as u64);
    match app.table.wait_for(head.point(), timeout).await {
        Verdict::Live => Ok(()),
        _ => Err(Error::Unavailable("revocations not yet applied".into())),
    }
}

/// Claims of a token carrying `grant`'s scope (client credentials and session refresh
/// alike): `exp` no later than the grant's end, refused if that leaves no lifetime,
/// counted and logged.
fn elevate(
    view: &View<'_>,
    client: &Client,
    claims: &mut AccessClaims,
    g: &crate::grants::Grant,
) -> Result<(), Error> {
    view.elevate(claims, g);
    if claims.exp <= claims.iat {
        // The grant ends within this second: a token would be born expired.
        return Err(policy::elevation_not_active(&g.scope).into());
    }
    metrics::counter!(
        m::GRANT_TOKENS_ISSUED,
        "sensitive" => if g.sensitive { "true" } else { "false" }
    )
    .increment(1);
    tracing::info!(
        target: "latch::grants",
        client = %client.id,
        subject = %claims.sub,
        grant = %g.id,
        scope = %g.scope,
        exp = claims.exp,
        "token issued under an elevation grant"
    );
    Ok(())
}
