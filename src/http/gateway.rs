//! `/gateway/check`: forward authentication for gateways (nginx `auth_request`, Traefik
//! `forwardAuth`, Envoy HTTP `ext_authz`). A thin adapter over `app::introspect`: the
//! gateway authenticates as a latch client with role `introspect`, the user's bearer token
//! is decided exactly as `/introspect` decides it for that client (its audience
//! restriction included), and the answer is a status and headers, not a document.
//!
//! - The gateway's credential: `X-Latch-Client-Authorization: Basic ...` (the same
//!   `client_secret_basic` credential `/introspect` takes in `Authorization`, which here
//!   carries the user's token). Its failures are marked `X-Latch-Failure: gateway`.
//! - The user's token: `Authorization: Bearer ...` (RFC 6750 §2.1).
//! - Per-route requirements, from the gateway: `X-Latch-Required-Scope` (space-separated,
//!   every one required) and `X-Latch-Required-Audience` (the token's `aud` must equal
//!   it), or the query parameters `scope` and `audience` of the check URL. Giving one
//!   requirement both ways is refused (which one counts would be ambiguous).
//! - 200 with `X-Latch-Subject`, `X-Latch-Client`, `X-Latch-Scope`, `X-Latch-Audience`;
//!   401/403 with an RFC 6750 `WWW-Authenticate: Bearer` challenge and
//!   `X-Latch-Failure: token`; 503 when the node cannot decide (fail closed).
//!
//! Any method is answered (gateways forward the user's), and the body is never read.
//! `/gateway/check/<anything>` is the same check, for gateways that append the user's
//! path to the check URL (Envoy's `path_prefix`); there the query is the user's and is
//! not read, so requirements come from the headers only.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION};
use hyper::http::request::Parts;
use hyper::{Request, Response};

use super::error::{empty_ok, ApiError, Bearer};
use super::request::{authenticate, require_role, ClientAddr, Form};
use crate::app::introspect::{self, Answer};
use crate::app::App;
use crate::clients::Role;

type Resp = Response<Full<Bytes>>;

/// The check's path; `PATH/...` is answered too (see [`Required::of`]).
pub const PATH: &str = "/gateway/check";
/// The header carrying the gateway's own client credential.
pub const CLIENT_AUTHORIZATION: &str = "x-latch-client-authorization";
const REQUIRED_SCOPE: &str = "x-latch-required-scope";
const REQUIRED_AUDIENCE: &str = "x-latch-required-audience";
const SUBJECT: &str = "x-latch-subject";
const CLIENT: &str = "x-latch-client";
const SCOPE: &str = "x-latch-scope";
const AUDIENCE: &str = "x-latch-audience";

/// Longest bearer token looked at; a longer one is refused unread (latch's tokens are far
/// shorter).
const MAX_TOKEN_BYTES: usize = 8192;

/// `/gateway/check`, any method: the user's bearer token decided for the gateway client.
pub async fn check(app: &App, parts: &Parts) -> Result<Resp, ApiError> {
    let gateway = gateway_client(app, parts).map_err(|e| ApiError::Gateway(Box::new(e)))?;
    let required = Required::of(parts)?;
    let token = bearer(parts)?;
    let answer = introspect::introspect(app, &gateway, token).await?;
    let Answer::Access { claims, .. } = answer else {
        // Inactive, or a refresh token: not something a resource may be reached with.
        return Err(ApiError::Bearer(Bearer::Invalid("the token is not active")));
    };
    if let Some(aud) = required.audience {
        if claims.aud != aud {
            return Err(ApiError::Bearer(Bearer::Invalid("the token is not active")));
        }
    }
    let granted: Vec<&str> = claims.scope.split(' ').collect();
    if let Some(missing) = required
        .scopes
        .iter()
        .find(|s| !granted.contains(&s.as_str()))
    {
        return Err(ApiError::Bearer(Bearer::InsufficientScope(
            missing.to_string(),
        )));
    }
    let mut resp = empty_ok();
    let h = resp.headers_mut();
    for (name, value) in [
        (SUBJECT, &claims.sub),
        (CLIENT, &claims.client_id),
        (SCOPE, &claims.scope),
        (AUDIENCE, &claims.aud),
    ] {
        let v = HeaderValue::from_str(value).map_err(|_| {
            ApiError::Internal(format!("{name} of an active token is not a header value"))
        })?;
        h.insert(HeaderName::from_static(name), v);
    }
    Ok(resp)
}

/// The gateway client, authenticated by `X-Latch-Client-Authorization` exactly as any
/// client is by `Authorization` (same rate limits), and holding role `introspect`.
fn gateway_client(
    app: &App,
    parts: &Parts,
) -> Result<std::sync::Arc<crate::clients::Client>, ApiError> {
    let mut values = parts.headers.get_all(CLIENT_AUTHORIZATION).iter();
    let (Some(credential), None) = (values.next(), values.next()) else {
        return Err(ApiError::InvalidClient);
    };
    // Only the credential and the attributed address go to `authenticate`: nothing of the
    // user's request can stand in for the gateway's credential.
    let (mut own, ()) = Request::new(()).into_parts();
    own.headers.insert(AUTHORIZATION, credential.clone());
    own.extensions.insert(ClientAddr(ClientAddr::of(parts)));
    let client = authenticate(app, &own, None)?;
    require_role(&client, Role::Introspect)?;
    Ok(client)
}

/// The token of `Authorization: Bearer <token>` (RFC 6750 §2.1; the scheme is
/// case-insensitive). No header, or another scheme: no token (a challenge without an
/// error code). A malformed one is `invalid_token`.
fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let Some(value) = parts.headers.get(AUTHORIZATION) else {
        return Err(ApiError::Bearer(Bearer::Missing));
    };
    let malformed = || ApiError::Bearer(Bearer::Invalid("malformed bearer token"));
    let text = value.to_str().map_err(|_| malformed())?;
    let (scheme, token) = text.split_once(' ').unwrap_or((text, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::Bearer(Bearer::Missing));
    }
    let token = token.trim_matches(' ');
    // b64token (RFC 6750 §2.1).
    let b64token = |b: u8| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b);
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES || !token.bytes().all(b64token) {
        return Err(malformed());
    }
    Ok(token)
}

/// What the route behind the gateway requires.
#[derive(Debug, Default)]
struct Required {
    scopes: Vec<String>,
    audience: Option<String>,
}

impl Required {
    fn of(parts: &Parts) -> Result<Required, ApiError> {
        // Under `/gateway/check/...` (Envoy appends the user's path and query to its
        // prefix) the query is the user's: requirements then come from headers only.
        let query = match parts.uri.path() {
            PATH => parts.uri.query().unwrap_or(""),
            _ => "",
        };
        let query = Form::parse(query.as_bytes())?;
        let scope = one_way(parts, REQUIRED_SCOPE, &query, "scope")?;
        let audience = one_way(parts, REQUIRED_AUDIENCE, &query, "audience")?;
        let scopes: Vec<String> = scope
            .unwrap_or_default()
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        // RFC 6749 §3.3 scope-token: NQCHAR, so it can be quoted in the challenge.
        let nqchar = |b: u8| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b);
        if scopes.iter().any(|s| !s.bytes().all(nqchar)) {
            return Err(ApiError::InvalidRequest(
                "the required scope is not a list of scope tokens".into(),
            ));
        }
        Ok(Required {
            scopes,
            audience: audience.filter(|a| !a.is_empty()),
        })
    }
}

/// A requirement given by header or by query parameter, not both; a header at most once.
fn one_way(
    parts: &Parts,
    header: &'static str,
    query: &Form,
    param: &'static str,
) -> Result<Option<String>, ApiError> {
    let mut values = parts.headers.get_all(header).iter();
    let from_header = match (values.next(), values.next()) {
        (None, _) => None,
        (Some(v), None) => Some(v.to_str().map_err(|_| {
            ApiError::InvalidRequest(format!("header {header} is not visible ASCII"))
        })?),
        (Some(_), Some(_)) => {
            return Err(ApiError::InvalidRequest(format!(
                "header {header} is repeated"
            )))
        }
    };
    match (from_header, query.get(param)) {
        (Some(_), Some(_)) => Err(ApiError::InvalidRequest(format!(
            "give {header} or the query parameter {param}, not both"
        ))),
        (Some(v), None) | (None, Some(v)) => Ok(Some(v.trim().to_string())),
        (None, None) => Ok(None),
    }
}
