//! Admin endpoints (role `admin`, JSON): bulk revocation, key lifecycle, audit.

use bytes::Bytes;
use http_body_util::Full;
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::error::{json_response, ApiError};
use super::request::{authenticate, require_content_type, require_role};
use crate::app::revoke::{self, checked_reason, AdminRevocation};
use crate::app::App;
use crate::clients::{Client, Role};
use crate::keys::Kid;
use crate::revocation::RevocationKind;

type Resp = Response<Full<Bytes>>;

/// Authenticates by HTTP Basic and requires role `admin`.
pub fn admin(app: &App, parts: &Parts) -> Result<std::sync::Arc<Client>, ApiError> {
    let client = authenticate(app, parts, None)?;
    require_role(&client, Role::Admin)?;
    Ok(client)
}

/// A JSON object body. (serde would also accept an array for a struct, by position.)
pub(super) fn parse_json<T: serde::de::DeserializeOwned>(
    parts: &Parts,
    body: &[u8],
) -> Result<T, ApiError> {
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

pub async fn revoke(
    app: &App,
    parts: &Parts,
    body: &[u8],
    request_id: &str,
) -> Result<Resp, ApiError> {
    let client = admin(app, parts)?;
    let req: RevokeRequest = parse_json(parts, body)?;
    let request = AdminRevocation {
        kind: req.kind,
        value: req.value,
        reason: req.reason,
        issuer: req.issuer,
    };
    let event = revoke::admin_revoke(app, &client.id, request, request_id).await?;
    let kind = event.kind;
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
    Ok(checked_reason(r.reason)?)
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

/// `POST /admin/store/recover`: see [`revoke::recover_store`].
pub async fn recover_store(
    app: &App,
    parts: &Parts,
    body: &[u8],
    request_id: &str,
) -> Result<Resp, ApiError> {
    let client = admin(app, parts)?;
    let req: RecoverRequest = parse_json(parts, body)?;
    let done =
        revoke::recover_store(app, &client.id, &req.reason, req.revoke_all, request_id).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "epoch": format!("{:016x}", done.epoch),
            "seq": done.seq,
            "closed": done.closed.iter().map(|c| json!({
                "epoch": format!("{:016x}", c.id),
                "closed_at": c.closed_at,
            })).collect::<Vec<_>>(),
            "revoked_all_seq": done.revoked_all_seq,
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
        .revoke(&Kid::new(kid), &client.id, &reason, request_id)
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
