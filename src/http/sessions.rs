//! User sessions at the OAuth endpoints: token exchange (RFC 8693) to open a session or
//! to delegate, the rotating `refresh_token` grant with reuse detection, and refresh
//! tokens at `/introspect` and `/revoke`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use serde::Serialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::oauth::{access_claims, audience, issue, require_fresh, scope_within, verifier};
use super::request::{require_role, Form};
use crate::app::App;
use crate::audit::NewAudit;
use crate::clients::{Client, Grant, Role};
use crate::revocation::{NewRevocation, RevocationKind};
use crate::revocation::{Stamp, Verdict};
use crate::sessions;
use crate::sessions::{RefreshRecord, Rotation};
use crate::time::now_ms;

type Resp = Response<Full<Bytes>>;

pub const TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

fn stamp(r: &RefreshRecord) -> Stamp<'_> {
    Stamp {
        jti: "",
        sid: Some(&r.sid),
        sub: &r.sub,
        client_id: &r.client_id,
        rsq: r.rsq,
        rse: r.rse,
        chain_clients: &[],
        chain_jtis: &[],
    }
}

// === token exchange ===

pub async fn exchange(
    app: &App,
    client: &Client,
    form: &Form,
    request_id: &str,
) -> Result<Resp, ApiError> {
    let subject_token = form.required("subject_token")?;
    check_requested_type(form)?;
    match form.required("subject_token_type")? {
        TYPE_JWT => {
            require_role(client, Role::SessionIssuer)?;
            open_session(app, client, form, subject_token, request_id).await
        }
        TYPE_ACCESS_TOKEN => delegate(app, client, form, subject_token),
        _ => Err(ApiError::InvalidRequest(format!(
            "subject_token_type must be {TYPE_JWT} or {TYPE_ACCESS_TOKEN}"
        ))),
    }
}

/// An IdP hook hands latch a user: a new session, its first access and refresh tokens.
async fn open_session(
    app: &App,
    client: &Client,
    form: &Form,
    assertion: &str,
    request_id: &str,
) -> Result<Resp, ApiError> {
    let now = now_ms();
    require_fresh(app, now)?;
    let leeway = app.config.tokens.leeway.as_secs();
    let a = app.trusted.verify(assertion, leeway).map_err(|reason| {
        tracing::debug!(reason, client = %client.id, "assertion refused");
        ApiError::InvalidGrant("the subject token is not a valid assertion of a trusted issuer")
    })?;
    // RFC 9068 §5: a user must never be named like a client (nor, with prefixes, like a
    // user of another IdP; config validation keeps prefixes apart from client ids).
    if app.clients.contains(&a.sub) {
        tracing::warn!(issuer = %a.iss, client = %client.id, subject = %a.sub, "assertion names a client id as its subject; refused");
        app.store
            .append_audit(NewAudit {
                actor: client.id.clone(),
                action: "assertion_refused".into(),
                target: format!("subject:{}", a.sub),
                reason: format!("assertion from {} names a client id as its subject", a.iss),
                request_id: request_id.to_string(),
            })
            .await?;
        return Err(ApiError::InvalidGrant(
            "the assertion's subject collides with a client id",
        ));
    }
    let scope = scope_within(&client.scopes, form.optional("scope"))?;
    let aud = exchange_audience(client, form)?;
    // One use per assertion, remembered exactly as long as it could be accepted: until
    // its `exp` or its maximum age, whichever comes first, plus leeway.
    let replay_key = sessions::hash(&format!("{}\n{}", a.iss, a.jti));
    let until = sessions::trusted::replay_until_ms(a.exp, a.iat, leeway as i64);
    if !app.store.claim_once(replay_key, until).await? {
        tracing::debug!(client = %client.id, "assertion replayed");
        return Err(ApiError::InvalidGrant("the assertion was already used"));
    }
    let stamp = app.table.stamp_now();
    let mut claims = access_claims(app, now, &a.sub, &client.id, aud, scope, stamp);
    claims.sid = Some(crate::tokens::random_id());
    claims.username = a.username;
    let (refresh_token, hash) = sessions::new_refresh_token();
    let mut record = refresh_record(app, &claims, now, stamp);
    sessions::seal(app.keys.refresh_record_mac(), &hash, &mut record);
    let audit = NewAudit {
        actor: client.id.clone(),
        action: "session_create".into(),
        target: format!("session:{}", record.sid),
        reason: format!("subject {} from {} (IdP sub {})", a.sub, a.iss, a.idp_sub),
        request_id: request_id.to_string(),
    };
    app.store.open_session(hash, record, audit).await?;
    issue(app, &claims, Grant::TokenExchange, Some(refresh_token))
}

fn refresh_record(
    app: &App,
    claims: &crate::tokens::AccessClaims,
    now: i64,
    stamp: (u64, u64),
) -> RefreshRecord {
    RefreshRecord {
        sid: claims.sid.clone().unwrap_or_default(),
        sub: claims.sub.clone(),
        client_id: claims.client_id.clone(),
        scope: claims.scope.clone(),
        aud: claims.aud.clone(),
        username: claims.username.clone(),
        rse: stamp.0,
        rsq: stamp.1,
        issued_at_ms: now,
        expires_at_ms: now + app.config.tokens.refresh_ttl.as_millis() as i64,
        mac: None,
    }
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
fn delegate(
    app: &App,
    client: &Client,
    form: &Form,
    subject_token: &str,
) -> Result<Resp, ApiError> {
    let now = now_ms();
    require_fresh(app, now)?;
    // Read before the subject token's revocation check (see `access_claims`).
    let stamp = app.table.stamp_now();
    let subject = app
        .keys
        .with_ring(|ring| verifier(app, ring, now).decide(subject_token))
        .map_err(|reason| {
            tracing::debug!(reason = reason.as_str(), client = %client.id, "subject token refused");
            ApiError::InvalidGrant("the subject token is not active")
        })?;
    if subject.aud != client.id && !client.audiences.iter().any(|a| *a == subject.aud) {
        tracing::info!(client = %client.id, aud = %subject.aud, "subject token meant for another audience");
        return Err(ApiError::InvalidGrant(
            "the subject token was not issued for this client",
        ));
    }
    if subject.sid.is_none() && !client.delegate_service_tokens {
        return Err(ApiError::GrantNotAllowed(
            "this client may not act as another service (the subject token has no session)",
        ));
    }
    let chain = subject.dcl.len() + 1;
    if chain > app.config.tokens.max_delegation_depth {
        return Err(ApiError::InvalidGrant(
            "the subject token is already delegated as deeply as allowed",
        ));
    }
    let allowed: Vec<&str> = subject
        .scope
        .split(' ')
        .filter(|s| client.scopes.iter().any(|c| c == s))
        .collect();
    let scope = scope_within(&allowed, form.optional("scope"))?;
    if scope.is_empty() {
        return Err(ApiError::InvalidScope(
            "no scope is shared by the subject token and this client".into(),
        ));
    }
    let aud = exchange_audience(client, form)?;
    let mut claims = access_claims(app, now, &subject.sub, &client.id, aud, scope, stamp);
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
    issue(app, &claims, Grant::TokenExchange, None)
}

/// RFC 8693 §2.1: `audience` (a logical name) or `resource` (RFC 8707), either of which
/// must be one of the caller's audiences; both only if they agree.
fn exchange_audience(client: &Client, form: &Form) -> Result<String, ApiError> {
    match (form.optional("audience"), form.optional("resource")) {
        (Some(a), Some(r)) if a != r => Err(ApiError::InvalidTarget(
            "audience and resource name different targets; one token has one audience".into(),
        )),
        (Some(a), _) if !client.audiences.iter().any(|c| c == a) => Err(ApiError::InvalidTarget(
            "audience is not an audience of this client".into(),
        )),
        (Some(a), _) => Ok(a.to_string()),
        (None, _) => audience(client, form),
    }
}

/// RFC 8693 §2.1 `requested_token_type`: latch issues access tokens (JWTs) only.
fn check_requested_type(form: &Form) -> Result<(), ApiError> {
    match form.optional("requested_token_type") {
        None | Some(TYPE_ACCESS_TOKEN) | Some(TYPE_JWT) => Ok(()),
        Some(_) => Err(ApiError::InvalidRequest(format!(
            "requested_token_type must be {TYPE_ACCESS_TOKEN} or {TYPE_JWT}"
        ))),
    }
}

// === refresh_token grant ===

pub async fn refresh(
    app: &App,
    client: &Client,
    form: &Form,
    request_id: &str,
) -> Result<Resp, ApiError> {
    let token = form.required("refresh_token")?;
    let now = now_ms();
    require_fresh(app, now)?;
    let invalid = || ApiError::InvalidGrant("the refresh token is not valid");
    if !sessions::is_refresh_token(token) {
        return Err(invalid());
    }
    let hash = sessions::hash(token);
    sync_revocations(app).await?;
    let (record, spent) = stored_refresh(app, &hash, request_id)
        .await?
        .ok_or_else(invalid)?;
    if record.client_id != client.id {
        tracing::debug!(client = %client.id, "refresh token of another client");
        return Err(invalid());
    }
    if !still_allowed(client, &record) {
        tracing::debug!(client = %client.id, "session no longer within the client's grants");
        return Err(invalid());
    }
    if spent {
        return reuse(app, &record, request_id).await;
    }
    // Read before the revocation check (see `access_claims`).
    let new_stamp = app.table.stamp_now();
    if record.expires_at_ms <= now || app.table.is_revoked(&stamp(&record)) {
        return Err(invalid());
    }
    let session_scope: Vec<&str> = record.scope.split(' ').filter(|s| !s.is_empty()).collect();
    let scope = scope_within(&session_scope, form.optional("scope"))?;
    let mut claims = access_claims(
        app,
        now,
        &record.sub,
        &client.id,
        record.aud.clone(),
        scope,
        new_stamp,
    );
    claims.sid = Some(record.sid.clone());
    claims.username = record.username.clone();
    let (next_token, next_hash) = sessions::new_refresh_token();
    // The session keeps its scope and its stamp; only the token and its expiry move.
    let mut next = RefreshRecord {
        issued_at_ms: now,
        expires_at_ms: now + app.config.tokens.refresh_ttl.as_millis() as i64,
        ..record.clone()
    };
    sessions::seal(app.keys.refresh_record_mac(), &next_hash, &mut next);
    match app
        .store
        .rotate_refresh(hash.clone(), next_hash, next)
        .await?
    {
        Rotation::Rotated => issue(app, &claims, Grant::RefreshToken, Some(next_token)),
        Rotation::Reused(r) if sessions::authentic(app.keys.refresh_record_mac(), &hash, &r) => {
            reuse(app, &r, request_id).await
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
async fn stored_refresh(
    app: &App,
    hash: &str,
    request_id: &str,
) -> Result<Option<(RefreshRecord, bool)>, ApiError> {
    let Some((record, spent)) = app.store.refresh_token(hash.to_string()).await? else {
        return Ok(None);
    };
    if !sessions::authentic(app.keys.refresh_record_mac(), hash, &record) {
        rejected(app, hash, request_id).await;
        return Ok(None);
    }
    Ok(Some((record, spent)))
}

/// Logs, counts and audits a refresh-token record whose MAC failed (never its content:
/// it is the attacker's).
async fn rejected(app: &App, hash: &str, request_id: &str) {
    let target = format!("refresh:{}", &hash[..hash.len().min(12)]);
    tracing::warn!(%target, "refresh-token record with a bad MAC; treated as unknown");
    metrics::counter!(crate::metrics::REFRESH_RECORDS_REJECTED).increment(1);
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

/// Whether the client may still hold this session: the record is checked against the
/// client's current config, not trusted for what it says (a client that lost the grant,
/// the role, a scope or the audience gets nothing more from its old sessions).
fn still_allowed(client: &Client, r: &RefreshRecord) -> bool {
    client.has_grant(Grant::RefreshToken)
        && client.has_role(Role::SessionIssuer)
        && client.audiences.contains(&r.aud)
        && r.scope
            .split(' ')
            .filter(|s| !s.is_empty())
            .all(|s| client.scopes.iter().any(|c| c == s))
}

/// A spent refresh token came back: whoever holds it, the session is compromised.
async fn reuse(app: &App, record: &RefreshRecord, request_id: &str) -> Result<Resp, ApiError> {
    tracing::warn!(sid = %record.sid, client = %record.client_id, "refresh token reuse; revoking the session");
    if !app
        .table
        .covers(RevocationKind::Session, &record.sid, record.rsq)
    {
        app.revoke(NewRevocation {
            kind: RevocationKind::Session,
            value: record.sid.clone(),
            reason: "refresh token reuse".into(),
            actor: "latch".into(),
            request_id: request_id.to_string(),
        })
        .await?;
    }
    app.store
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
        .await?;
    Err(ApiError::InvalidGrant(
        "the refresh token was already used; the session is revoked",
    ))
}

/// Waits until this node has applied every revocation the store has, so a refresh right
/// after a revocation on another node is refused here too. Bounded by `max_staleness`.
/// After an epoch change this also waits for the node to switch to the new epoch.
async fn sync_revocations(app: &App) -> Result<(), ApiError> {
    let head = app.store.head().await?;
    let timeout = Duration::from_millis(app.max_staleness_ms as u64);
    // Live once this node is in the store's epoch and has applied up to its head.
    match app
        .table
        .wait_for(head.epoch, head.revocation_seq, timeout)
        .await
    {
        Verdict::Live => Ok(()),
        _ => Err(ApiError::Unavailable("revocations not yet applied".into())),
    }
}

// === refresh tokens at /introspect and /revoke ===

#[derive(Serialize)]
struct RefreshIntrospection<'a> {
    active: bool,
    token_type: &'static str,
    client_id: &'a str,
    sub: &'a str,
    sid: &'a str,
    scope: &'a str,
    aud: &'a str,
    iss: &'a str,
    exp: i64,
    iat: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<&'a str>,
}

/// The introspection answer for a refresh token, or `None` for `{"active":false}`.
pub async fn introspect_refresh(
    app: &App,
    caller: &Client,
    token: &str,
) -> Result<Option<Value>, ApiError> {
    let Some((r, spent)) = stored_refresh(app, &sessions::hash(token), "").await? else {
        return Ok(None);
    };
    let now = now_ms();
    app.await_stamp(r.rse, r.rsq).await;
    if spent
        || r.expires_at_ms <= now
        || app.table.is_revoked(&stamp(&r))
        || !caller.may_see_audience(&r.aud)
        || !app
            .clients
            .get(&r.client_id)
            .is_some_and(|c| still_allowed(c, &r))
    {
        return Ok(None);
    }
    let body = RefreshIntrospection {
        active: true,
        token_type: "refresh_token",
        client_id: &r.client_id,
        sub: &r.sub,
        sid: &r.sid,
        scope: &r.scope,
        aud: &r.aud,
        iss: &app.config.issuer,
        exp: r.expires_at_ms.div_euclid(1000),
        iat: r.issued_at_ms.div_euclid(1000),
        username: r.username.as_deref(),
    };
    Ok(serde_json::to_value(body).ok())
}

/// RFC 7009 for a refresh token: its whole session is revoked.
pub async fn revoke_refresh(
    app: &App,
    caller: &Client,
    token: &str,
    request_id: &str,
) -> Result<Resp, ApiError> {
    let Some((r, _)) = stored_refresh(app, &sessions::hash(token), request_id).await? else {
        return Ok(super::error::empty_ok());
    };
    if r.client_id != caller.id && !caller.has_role(Role::Admin) {
        return Err(ApiError::UnauthorizedClient(
            "the token was not issued to this client",
        ));
    }
    if r.expires_at_ms <= now_ms() || app.table.covers(RevocationKind::Session, &r.sid, r.rsq) {
        return Ok(super::error::empty_ok());
    }
    super::oauth::limit_revocation(app, caller, now_ms())?;
    app.revoke(NewRevocation {
        kind: RevocationKind::Session,
        value: r.sid.clone(),
        reason: "RFC 7009 revocation of a refresh token".into(),
        actor: caller.id.clone(),
        request_id: request_id.to_string(),
    })
    .await?;
    Ok(super::error::empty_ok())
}
