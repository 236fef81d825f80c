//! The OAuth endpoints: `/token` (RFC 6749, RFC 9068), `/introspect` (RFC 7662),
//! `/revoke` (RFC 7009).

use bytes::Bytes;
use http_body_util::Full;
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use serde::Serialize;
use serde_json::{json, Value};

use super::error::{bytes_response, json_response, ApiError};
use super::request::{authenticate, require_role, Form};
use crate::app::App;
use crate::clients::{Client, Grant, Role};
use crate::metrics as m;
use crate::revocation::{NewRevocation, RevocationKind};
use crate::time::now_ms;
use crate::tokens::{self, AccessClaims, Reason, Verifier};

type Resp = Response<Full<Bytes>>;

/// Fails closed when this node's revocation state is too old to stand behind.
pub fn require_fresh(app: &App, now: i64) -> Result<(), ApiError> {
    if app.is_fresh(now) {
        Ok(())
    } else {
        Err(ApiError::Unavailable(format!(
            "revocation state is {} ms old (max_staleness {} ms)",
            app.table.age_ms(now),
            app.max_staleness_ms
        )))
    }
}

pub fn verifier<'a>(app: &'a App, ring: &'a crate::keys::KeyRing, now: i64) -> Verifier<'a> {
    Verifier {
        ring,
        table: &app.table,
        issuer: &app.config.issuer,
        leeway_secs: app.config.tokens.leeway.as_secs() as i64,
        now_ms: now,
        cache: Some(&app.verified),
    }
}

// === /token ===

#[derive(Serialize)]
struct TokenResponse<'a> {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    scope: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    issued_token_type: Option<&'static str>,
}

pub async fn token(
    app: &App,
    parts: &Parts,
    form: &Form,
    request_id: &str,
) -> Result<Resp, ApiError> {
    let client = authenticate(app, parts, Some(form))?;
    let grant_type = form.required("grant_type")?;
    let grant = Grant::parse(grant_type).ok_or(ApiError::UnsupportedGrantType)?;
    if !client.has_grant(grant) {
        return Err(ApiError::GrantNotAllowed(
            "this client may not use this grant type",
        ));
    }
    app.limits.token(&client.id, client.token_rate, now_ms())?;
    match grant {
        Grant::ClientCredentials => client_credentials(app, &client, form),
        Grant::RefreshToken => super::sessions::refresh(app, &client, form, request_id).await,
        Grant::TokenExchange => super::sessions::exchange(app, &client, form, request_id).await,
    }
}

fn client_credentials(app: &App, client: &Client, form: &Form) -> Result<Resp, ApiError> {
    let scope = scope_within(&client.scopes, form.optional("scope"))?;
    let aud = audience(client, form)?;
    let now = now_ms();
    require_fresh(app, now)?;
    let stamp = app.table.stamp_now();
    let claims = access_claims(app, now, &client.id, &client.id, aud, scope, stamp);
    issue(app, &claims, Grant::ClientCredentials, None)
}

/// The audience asked for with `resource` (RFC 8707), which must be one of the client's;
/// the client's first audience by default.
pub fn audience(client: &Client, form: &Form) -> Result<String, ApiError> {
    match form.optional("resource") {
        Some(r) if client.audiences.iter().any(|a| a == r) => Ok(r.to_string()),
        Some(_) => Err(ApiError::InvalidTarget(
            "resource is not an audience of this client".into(),
        )),
        None => client
            .audiences
            .first()
            .cloned()
            .ok_or_else(|| ApiError::InvalidTarget("this client has no audience".into())),
    }
}

/// The scopes granted: the requested ones if all are in `allowed`, else all of `allowed`.
pub fn scope_within<S: AsRef<str>>(
    allowed: &[S],
    requested: Option<&str>,
) -> Result<String, ApiError> {
    let allowed: Vec<&str> = allowed.iter().map(AsRef::as_ref).collect();
    let Some(requested) = requested else {
        return Ok(allowed.join(" "));
    };
    let mut granted: Vec<&str> = Vec::new();
    for s in requested.split(' ').filter(|s| !s.is_empty()) {
        if !allowed.contains(&s) {
            return Err(ApiError::InvalidScope(format!(
                "scope {:?} is not allowed here",
                s.chars().take(64).collect::<String>()
            )));
        }
        if !granted.contains(&s) {
            granted.push(s);
        }
    }
    Ok(granted.join(" "))
}

/// Claims of a new access token, stamped with `stamp` = (epoch, seq) from
/// [`crate::revocation::Table::stamp_now`]. Where the grant checked revocations first
/// (refresh, delegation), the stamp must be read *before* that check: a revocation
/// applied in between then still covers the new token.
pub fn access_claims(
    app: &App,
    now_ms: i64,
    sub: &str,
    client_id: &str,
    aud: String,
    scope: String,
    stamp: (u64, u64),
) -> AccessClaims {
    let iat = now_ms.div_euclid(1000);
    AccessClaims {
        iss: app.config.issuer.clone(),
        sub: sub.to_string(),
        aud,
        exp: iat + app.config.tokens.access_ttl.as_secs() as i64,
        iat,
        nbf: iat,
        jti: tokens::random_id(),
        client_id: client_id.to_string(),
        scope,
        sid: None,
        act: None,
        username: None,
        rse: stamp.0,
        rsq: stamp.1,
        dcl: Vec::new(),
        djt: Vec::new(),
    }
}

/// Signs `claims` and answers the token response (with a refresh token for sessions).
pub fn issue(
    app: &App,
    claims: &AccessClaims,
    grant: Grant,
    refresh_token: Option<String>,
) -> Result<Resp, ApiError> {
    let access_token = app.keys.with_ring(|ring| {
        let signer = ring
            .signer()
            .ok_or_else(|| ApiError::Unavailable("no signing key loaded".into()))?;
        tokens::sign(signer, claims).map_err(|e| ApiError::Internal(format!("signing: {e}")))
    })?;
    metrics::counter!(m::TOKENS_ISSUED_TOTAL, "grant" => grant.label()).increment(1);
    let body = TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: (claims.exp - claims.iat).max(0) as u64,
        scope: &claims.scope,
        refresh_token,
        issued_token_type: (grant == Grant::TokenExchange)
            .then_some("urn:ietf:params:oauth:token-type:access_token"),
    };
    Ok(json_body(StatusCode::OK, &body))
}

// === /introspect ===

#[derive(Serialize)]
struct Introspection<'a> {
    active: bool,
    scope: &'a str,
    client_id: &'a str,
    sub: &'a str,
    aud: &'a str,
    iss: &'a str,
    exp: i64,
    iat: i64,
    nbf: i64,
    jti: &'a str,
    token_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    act: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<&'a str>,
}

const INACTIVE: &[u8] = br#"{"active":false}"#;

fn inactive() -> Resp {
    bytes_response(
        StatusCode::OK,
        Bytes::from_static(INACTIVE),
        "application/json",
        "no-store",
    )
}

pub async fn introspect(app: &App, parts: &Parts, form: &Form) -> Result<Resp, ApiError> {
    let caller = authenticate(app, parts, Some(form))?;
    require_role(&caller, Role::Introspect)?;
    let token = form.required("token")?;
    let now = now_ms();
    require_fresh(app, now)?;
    if crate::sessions::is_refresh_token(token) {
        let answer = super::sessions::introspect_refresh(app, &caller, token).await?;
        let result = if answer.is_some() {
            "active"
        } else {
            "inactive"
        };
        metrics::counter!(m::INTROSPECTIONS_TOTAL, "result" => result, "reason" => "refresh_token")
            .increment(1);
        return Ok(match answer {
            Some(v) => json_response(StatusCode::OK, &v),
            None => inactive(),
        });
    }
    let decide = || {
        app.keys.with_ring(|ring| {
            let claims = verifier(app, ring, now).decide(token)?;
            if !caller.may_see_audience(&claims.aud) {
                return Err(Reason::Audience);
            }
            if app.clients.get(&claims.client_id).is_none() {
                return Err(Reason::UnknownClient);
            }
            Ok(claims)
        })
    };
    let mut decision = decide();
    if decision == Err(Reason::StampAhead) {
        // Stamped by a node further along (or in an epoch this node has not seen yet):
        // wait briefly for this node's follower, then decide once more.
        if let Ok(claims) = app
            .keys
            .with_ring(|ring| verifier(app, ring, now).authentic(token))
        {
            app.await_stamp(claims.rse, claims.rsq).await;
            decision = decide();
        }
    }
    match decision {
        Ok(c) => {
            metrics::counter!(m::INTROSPECTIONS_TOTAL, "result" => "active", "reason" => "")
                .increment(1);
            let body = Introspection {
                active: true,
                scope: &c.scope,
                client_id: &c.client_id,
                sub: &c.sub,
                aud: &c.aud,
                iss: &c.iss,
                exp: c.exp,
                iat: c.iat,
                nbf: c.nbf,
                jti: &c.jti,
                token_type: "Bearer",
                sid: c.sid.as_deref(),
                act: c.act.as_ref(),
                username: c.username.as_deref(),
            };
            Ok(json_body(StatusCode::OK, &body))
        }
        Err(reason) => {
            metrics::counter!(m::INTROSPECTIONS_TOTAL, "result" => "inactive", "reason" => reason.as_str())
                .increment(1);
            tracing::debug!(reason = reason.as_str(), caller = %caller.id, "token inactive");
            Ok(inactive())
        }
    }
}

// === /revoke ===

pub async fn revoke(
    app: &App,
    parts: &Parts,
    form: &Form,
    request_id: &str,
) -> Result<Resp, ApiError> {
    let caller = authenticate(app, parts, Some(form))?;
    let token = form.required("token")?;
    let now = now_ms();
    require_fresh(app, now)?;
    if crate::sessions::is_refresh_token(token) {
        return super::sessions::revoke_refresh(app, &caller, token, request_id).await;
    }
    // Only a token latch issued and that can still be alive needs recording; anything
    // else (unknown, expired, malformed, already revoked) is answered 200 as it stands.
    let claims = match app
        .keys
        .with_ring(|ring| verifier(app, ring, now).authentic(token))
    {
        Ok(c) => c,
        Err(reason) => {
            tracing::debug!(reason = reason.as_str(), "revocation of an inactive token");
            return Ok(super::error::empty_ok());
        }
    };
    if claims.client_id != caller.id && !caller.has_role(Role::Admin) {
        return Err(ApiError::UnauthorizedClient(
            "the token was not issued to this client",
        ));
    }
    if app
        .table
        .covers(RevocationKind::Token, &claims.jti, claims.rsq)
        || app.table.is_revoked(&claims.stamp())
    {
        return Ok(super::error::empty_ok());
    }
    limit_revocation(app, &caller, now)?;
    app.revoke(NewRevocation {
        kind: RevocationKind::Token,
        value: claims.jti.clone(),
        reason: "RFC 7009 revocation".into(),
        actor: caller.id.clone(),
        request_id: request_id.to_string(),
    })
    .await?;
    Ok(super::error::empty_ok())
}

/// Counts one revocation `caller` is about to record: only those that grow the log count
/// (answers for unknown, expired or already revoked tokens are free), and clients with
/// role `admin` are never limited, so a legitimate bulk revocation is never refused.
pub fn limit_revocation(app: &App, caller: &Client, now: i64) -> Result<(), ApiError> {
    if caller.has_role(Role::Admin) {
        return Ok(());
    }
    app.limits.revoke(&caller.id, caller.revoke_rate, now)?;
    Ok(())
}

fn json_body<T: Serialize>(status: StatusCode, body: &T) -> Resp {
    match serde_json::to_vec(body) {
        Ok(bytes) => bytes_response(status, Bytes::from(bytes), "application/json", "no-store"),
        Err(_) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"error": "server_error"}),
        ),
    }
}
