//! Admin endpoints (role `admin`, JSON): bulk revocation, key lifecycle, audit.

use bytes::Bytes;
use http_body_util::Full;
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::error::{json_response, ApiError};
use super::oauth::require_fresh;
use super::request::{authenticate, require_content_type, require_role};
use crate::app::App;
use crate::audit::NewAudit;
use crate::clients::{Client, Role};
use crate::revocation::{NewRevocation, RevocationKind};
use crate::time::now_ms;

type Resp = Response<Full<Bytes>>;

/// Longest accepted revocation value or reason.
const MAX_FIELD: usize = 1024;

/// Authenticates by HTTP Basic and requires role `admin`.
pub fn admin(app: &App, parts: &Parts) -> Result<std::sync::Arc<Client>, ApiError> {
    let client = authenticate(app, parts, None)?;
    require_role(&client, Role::Admin)?;
    Ok(client)
}

/// A JSON object body. (serde would also accept an array for a struct, by position.)
fn parse_json<T: serde::de::DeserializeOwned>(parts: &Parts, body: &[u8]) -> Result<T, ApiError> {
    require_content_type(parts, "application/json")?;
    let invalid =
        |e: serde_json::Error| ApiError::InvalidRequest(format!("invalid JSON body: {e}"));
    let value: serde_json::Value = serde_json::from_slice(body).map_err(invalid)?;
    if !value.is_object() {
        return Err(ApiError::InvalidRequest(
            "the JSON body must be an object".into(),
        ));
    }
    serde_json::from_value(value).map_err(invalid)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    kind: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    /// For kind `subject`: `value` is this trusted issuer's own `sub`.
    #[serde(default)]
    issuer: Option<String>,
}

/// The subject a `subject` revocation names, as latch writes it in tokens. With
/// `issuer`, `value` is that IdP's own `sub` and gets its prefix. Without, a value that
/// could be a bare IdP `sub` while prefixes are configured (no known prefix, not a
/// client id) is ambiguous and refused: answering 200 while matching nothing, because
/// of a namespace, would lose the revocation.
fn subject_value(app: &App, value: String, issuer: Option<&str>) -> Result<String, ApiError> {
    if let Some(iss) = issuer {
        let subject = app.trusted.subject_of(iss, &value).ok_or_else(|| {
            ApiError::InvalidRequest(format!(
                "issuer {:?} is not a trusted issuer",
                iss.chars().take(200).collect::<String>()
            ))
        })?;
        // A value already in the namespaced form, with its issuer named as well, would
        // become prefix+prefix+sub: 200 matching nobody. Refuse, naming both forms (an
        // IdP sub that really starts with the prefix is revoked namespaced, without
        // issuer). Found by tests/redteam.rs.
        let prefix = subject.strip_suffix(value.as_str()).unwrap_or("");
        if !prefix.is_empty() && value.starts_with(prefix) {
            return Err(ApiError::InvalidRequest(format!(
                "ambiguous subject: {value:?} already carries this issuer's prefix \
                 {prefix:?}; give the IdP's own sub with \"issuer\", or the namespaced form \
                 without \"issuer\""
            )));
        }
        // An issuer without subject_prefix: its `sub` can equal a client id. No user can
        // hold such a subject (assertions naming a client are refused), so this would
        // match only the service's own tokens: a user's offboarding must not take a
        // service down. Found by tests/redteam.rs.
        if app.clients.contains(&subject) {
            return Err(ApiError::InvalidRequest(
                "this IdP sub equals a client id, and no user of it can hold a token;                  to revoke the client's own tokens, give the value without issuer"
                    .into(),
            ));
        }
        return Ok(subject);
    }
    let trusted = &app.trusted;
    if trusted.has_prefixes() && !trusted.has_known_prefix(&value) && !app.clients.contains(&value)
    {
        return Err(ApiError::InvalidRequest(
            "ambiguous subject: give it as latch writes it in tokens (with its issuer's \
             subject_prefix, e.g. \"idp1|alice\"), or give the IdP's own sub with \
             \"issuer\": \"<trusted issuer URL>\""
                .into(),
        ));
    }
    Ok(value)
}

pub async fn revoke(
    app: &App,
    parts: &Parts,
    body: &[u8],
    request_id: &str,
) -> Result<Resp, ApiError> {
    let client = admin(app, parts)?;
    let req: RevokeRequest = parse_json(parts, body)?;
    let kind = RevocationKind::parse(&req.kind).ok_or_else(|| {
        ApiError::InvalidRequest("kind must be one of token, session, subject, client, all".into())
    })?;
    let value = match (kind, req.value) {
        (RevocationKind::All, None) => String::new(),
        (RevocationKind::All, Some(v)) if v.is_empty() => String::new(),
        (RevocationKind::All, Some(_)) => {
            return Err(ApiError::InvalidRequest("kind all takes no value".into()))
        }
        (_, Some(v)) if !v.is_empty() && v.len() <= MAX_FIELD => v,
        (_, _) => {
            return Err(ApiError::InvalidRequest(format!(
                "kind {} needs a value of 1 to {MAX_FIELD} bytes",
                kind.as_str()
            )))
        }
    };
    let value = match (kind, req.issuer.as_deref()) {
        (RevocationKind::Subject, issuer) => subject_value(app, value, issuer)?,
        (_, None) => value,
        (_, Some(_)) => {
            return Err(ApiError::InvalidRequest(
                "issuer is only for kind subject".into(),
            ))
        }
    };
    let reason = req.reason.unwrap_or_default();
    if reason.len() > MAX_FIELD {
        return Err(ApiError::InvalidRequest(format!(
            "reason is longer than {MAX_FIELD} bytes"
        )));
    }
    require_fresh(app, now_ms())?;
    let event = app
        .revoke(NewRevocation {
            kind,
            value,
            reason,
            actor: client.id.clone(),
            request_id: request_id.to_string(),
        })
        .await?;
    let value = match kind {
        RevocationKind::All => serde_json::Value::Null,
        _ => json!(event.value),
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "seq": event.seq,
            "kind": kind.as_str(),
            "value": value,
            "revoked_at": event.revoked_at_ms.div_euclid(1000),
        }),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    #[serde(default)]
    reason: Option<String>,
}

/// An optional `{"reason"}` body: empty is fine, anything else must be that JSON.
fn reason(parts: &Parts, body: &[u8]) -> Result<String, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(String::new());
    }
    let r: ReasonBody = parse_json(parts, body)?;
    checked_reason(r.reason)
}

fn checked_reason(reason: Option<String>) -> Result<String, ApiError> {
    let reason = reason.unwrap_or_default();
    if reason.len() > MAX_FIELD {
        return Err(ApiError::InvalidRequest(format!(
            "reason is longer than {MAX_FIELD} bytes"
        )));
    }
    Ok(reason)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    #[serde(default)]
    reason: Option<String>,
    /// Rotate even if the promoted key may be unknown to verifiers' cached JWKS.
    #[serde(default)]
    force: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecoverRequest {
    reason: String,
    #[serde(default)]
    revoke_all: bool,
}

/// The operator's step after the store lost history (a restored backup): closes the
/// store's epoch and opens a new one, audited as `store_recover`; with `revoke_all`, also
/// an `all` revocation in the new epoch, so every token and session issued before dies.
/// Freshness is not required: this is what an operator runs when things are broken.
pub async fn recover_store(
    app: &App,
    parts: &Parts,
    body: &[u8],
    request_id: &str,
) -> Result<Resp, ApiError> {
    let client = admin(app, parts)?;
    let req: RecoverRequest = parse_json(parts, body)?;
    if req.reason.trim().is_empty() || req.reason.len() > MAX_FIELD {
        return Err(ApiError::InvalidRequest(format!(
            "reason must be 1 to {MAX_FIELD} bytes"
        )));
    }
    let head = app
        .store
        .bump_epoch(NewAudit {
            actor: client.id.clone(),
            action: "store_recover".into(),
            target: "store".into(),
            reason: req.reason.clone(),
            request_id: request_id.to_string(),
        })
        .await?;
    // Let this node switch before answering, so its next answers are in the new epoch.
    let bound = std::time::Duration::from_millis(app.max_staleness_ms as u64);
    app.table
        .wait_for(head.epoch, head.revocation_seq, bound)
        .await;
    let revoked_all_seq = if req.revoke_all {
        let event = app
            .revoke(NewRevocation {
                kind: RevocationKind::All,
                value: String::new(),
                reason: format!("store recover: {}", req.reason),
                actor: client.id.clone(),
                request_id: request_id.to_string(),
            })
            .await?;
        Some(event.seq)
    } else {
        None
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "epoch": format!("{:016x}", head.epoch),
            "seq": head.revocation_seq,
            "closed": head.closed.iter().map(|c| json!({
                "epoch": format!("{:016x}", c.id),
                "closed_at": c.closed_at,
            })).collect::<Vec<_>>(),
            "revoked_all_seq": revoked_all_seq,
        }),
    ))
}

pub fn list_keys(app: &App, parts: &Parts) -> Result<Resp, ApiError> {
    admin(app, parts)?;
    Ok(json_response(StatusCode::OK, &app.keys.ring().listing()))
}

pub async fn rotate_keys(
    app: &App,
    parts: &Parts,
    body: &[u8],
    request_id: &str,
) -> Result<Resp, ApiError> {
    let client = admin(app, parts)?;
    let req: RotateBody = if body.iter().all(u8::is_ascii_whitespace) {
        RotateBody::default()
    } else {
        parse_json(parts, body)?
    };
    let reason = checked_reason(req.reason)?;
    app.keys
        .rotate_now(req.force, &client.id, &reason, request_id)
        .await?;
    Ok(json_response(StatusCode::OK, &app.keys.ring().listing()))
}

pub async fn revoke_key(
    app: &App,
    parts: &Parts,
    kid: &str,
    body: &[u8],
    request_id: &str,
) -> Result<Resp, ApiError> {
    let client = admin(app, parts)?;
    let reason = reason(parts, body)?;
    app.keys
        .revoke(kid, &client.id, &reason, request_id)
        .await?;
    Ok(json_response(StatusCode::OK, &app.keys.ring().listing()))
}

pub async fn audit(app: &App, parts: &Parts) -> Result<Resp, ApiError> {
    admin(app, parts)?;
    let mut since = 0u64;
    let mut limit = 100usize;
    for (k, v) in form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "since" => {
                since = v.parse().map_err(|_| {
                    ApiError::InvalidRequest("since must be a non-negative integer".into())
                })?
            }
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| ApiError::InvalidRequest("limit must be 1 to 1000".into()))?
            }
            _ => {}
        }
    }
    let records = app.store.audit_after(since, limit).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "records": records }),
    ))
}
