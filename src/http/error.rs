//! The one mapping from what went wrong to an HTTP answer: status, OAuth error code,
//! headers (`WWW-Authenticate`, `Allow`, `Retry-After`). Internals are logged, not shown.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{
    HeaderValue, ALLOW, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use hyper::{Response, StatusCode};
use serde_json::json;

use crate::app::{self, keys::KeysError};
use crate::grants::RefusedKind;
use crate::limits::Limited;
use crate::policy::{Refusal, RefusalKind};
use crate::store::StoreError;

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing or failed client authentication.
    #[error("client authentication failed")]
    InvalidClient,
    /// RFC 9449 §7.1: 400 `invalid_dpop_proof`.
    #[error("{0}")]
    InvalidDpopProof(&'static str),
    /// RFC 9449 §8: 400 `use_dpop_nonce` with `DPoP-Nonce`.
    #[error("use the DPoP-Nonce this answer carries")]
    UseDpopNonce(String),
    /// Authenticated, but the client lacks the role or grant.
    #[error("{0}")]
    UnauthorizedClient(&'static str),
    /// Like [`ApiError::UnauthorizedClient`], but for a grant type (RFC 6749 §5.2: 400).
    #[error("{0}")]
    GrantNotAllowed(&'static str),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    InvalidGrant(&'static str),
    #[error("{0}")]
    InvalidScope(String),
    #[error("{0}")]
    InvalidTarget(String),
    #[error("unsupported grant_type")]
    UnsupportedGrantType,
    #[error("no such resource")]
    NotFound,
    /// A named thing that does not exist (an unknown revocation seq), said in words.
    #[error("{0}")]
    NoSuch(String),
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    #[error("{0}")]
    UnsupportedMediaType(&'static str),
    #[error("request body too large")]
    PayloadTooLarge,
    /// The request conflicts with the current state; the description says how to proceed.
    #[error("{0}")]
    Conflict(String),
    /// The body did not arrive within `limits.body_read_timeout`.
    #[error("the request body was not received in time")]
    RequestTimeout,
    /// Over a rate limit: 429 with `Retry-After`.
    #[error(transparent)]
    RateLimited(#[from] Limited),
    /// State too stale to decide on, store unreachable, or no signing key: fail closed.
    #[error("{0}")]
    Unavailable(String),
    /// A scope, audience or client refused by the contract in force: the OAuth error of
    /// its kind, with the stable `reason` code next to it.
    #[error("{0}")]
    Refused(Refusal),
    /// A document that does not validate: 400 `invalid_request` with every `problem`.
    #[error("the request does not validate; see problems")]
    Invalid(Vec<crate::contracts::Problem>),
    /// A grant request or decision refused by the elevation rules: 400, 403 or 409 with
    /// the stable `reason` code.
    #[error("{0}")]
    Elevation(crate::grants::Refused),
    /// A bearer token refused at `/gateway/check` (RFC 6750 §3): 401, or 403 for an
    /// insufficient scope, with its `WWW-Authenticate: Bearer` challenge.
    #[error("{0}")]
    Bearer(Bearer),
    /// The gateway's own credential at `/gateway/check` failed, or its client lacks the
    /// role: the inner error's answer, marked `X-Latch-Failure: gateway` so the gateway
    /// can tell its own misconfiguration from a refused user token.
    #[error("{0}")]
    Gateway(Box<ApiError>),
    /// A bug or an impossible state. Logged in full; the client sees only `server_error`.
    #[error("{0}")]
    Internal(String),
}

/// Why a bearer token was refused (RFC 6750 §3.1).
#[derive(Debug)]
pub enum Bearer {
    /// No bearer token at all: a challenge without an error code (RFC 6750 §3.1).
    Missing,
    /// `invalid_token`: malformed, unknown, expired, revoked, for another audience, or
    /// for an audience the caller may not see; the description says which of the first
    /// two only (the rest look alike, as at `/introspect`).
    Invalid(&'static str),
    /// `insufficient_scope` (403): the token lacks the scope named here.
    InsufficientScope(String),
    /// `invalid_token` for a DPoP-bound token (RFC 9449 §7.1): no proof, or one that
    /// fails; the challenge is `DPoP` with the accepted algorithms.
    Dpop(&'static str),
}

impl std::fmt::Display for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bearer::Missing => f.write_str("no bearer token"),
            Bearer::Invalid(why) | Bearer::Dpop(why) => f.write_str(why),
            Bearer::InsufficientScope(_) => f.write_str("the token lacks a required scope"),
        }
    }
}

/// The header that says whose credential an answer of `/gateway/check` refuses.
pub const FAILURE_HEADER: &str = "x-latch-failure";

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        use ApiError::*;
        match self {
            InvalidClient => (StatusCode::UNAUTHORIZED, "invalid_client"),
            InvalidDpopProof(_) => (StatusCode::BAD_REQUEST, "invalid_dpop_proof"),
            UseDpopNonce(_) => (StatusCode::BAD_REQUEST, "use_dpop_nonce"),
            UnauthorizedClient(_) => (StatusCode::FORBIDDEN, "unauthorized_client"),
            GrantNotAllowed(_) => (StatusCode::BAD_REQUEST, "unauthorized_client"),
            InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            InvalidGrant(_) => (StatusCode::BAD_REQUEST, "invalid_grant"),
            InvalidScope(_) => (StatusCode::BAD_REQUEST, "invalid_scope"),
            InvalidTarget(_) => (StatusCode::BAD_REQUEST, "invalid_target"),
            Refused(r) => (
                StatusCode::BAD_REQUEST,
                match r.kind {
                    RefusalKind::Scope => "invalid_scope",
                    RefusalKind::Target => "invalid_target",
                    RefusalKind::Client => "unauthorized_client",
                },
            ),
            Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Elevation(r) => match r.kind {
                RefusedKind::Invalid => (StatusCode::BAD_REQUEST, "invalid_request"),
                RefusedKind::Forbidden => (StatusCode::FORBIDDEN, "access_denied"),
                RefusedKind::Conflict => (StatusCode::CONFLICT, "conflict"),
            },
            UnsupportedGrantType => (StatusCode::BAD_REQUEST, "unsupported_grant_type"),
            NotFound | NoSuch(_) => (StatusCode::NOT_FOUND, "not_found"),
            MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "invalid_request"),
            PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request"),
            Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "invalid_request"),
            // `slow_down` (RFC 8628 §3.5): the caller goes too fast. Distinct from the
            // `temporarily_unavailable` of a 503, which says latch cannot decide.
            RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "slow_down"),
            Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable"),
            Bearer(b) => match b {
                self::Bearer::InsufficientScope(_) => (StatusCode::FORBIDDEN, "insufficient_scope"),
                _ => (StatusCode::UNAUTHORIZED, "invalid_token"),
            },
            Gateway(inner) => inner.status_and_code(),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
        }
    }

    /// The response for this error.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        if let ApiError::Gateway(inner) = self {
            let mut resp = inner.into_response();
            resp.headers_mut()
                .insert(FAILURE_HEADER, HeaderValue::from_static("gateway"));
            return resp;
        }
        let (status, code) = self.status_and_code();
        let description = match &self {
            ApiError::Internal(detail) => {
                tracing::error!(detail = %detail, "internal error");
                "internal error".to_string()
            }
            ApiError::Unavailable(detail) => {
                tracing::debug!(detail = %detail, "unavailable");
                "the server cannot decide safely right now; retry shortly".to_string()
            }
            other => other.to_string(),
        };
        let mut body = json!({ "error": code, "error_description": description });
        match &self {
            ApiError::Refused(r) => body["reason"] = json!(r.reason),
            ApiError::Elevation(r) => body["reason"] = json!(r.code),
            ApiError::Invalid(problems) => body["problems"] = json!(problems),
            _ => {}
        }
        let mut resp = json_response(status, &body);
        let headers = resp.headers_mut();
        match self {
            ApiError::InvalidClient => {
                headers.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"latch\""),
                );
            }
            ApiError::MethodNotAllowed(allow) => {
                headers.insert(ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::Unavailable(_) => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::RateLimited(l) => {
                headers.insert(RETRY_AFTER, HeaderValue::from(l.retry_after_secs));
            }
            ApiError::RequestTimeout => {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            ApiError::UseDpopNonce(nonce) => {
                if let Ok(v) = HeaderValue::from_str(&nonce) {
                    headers.insert("dpop-nonce", v);
                }
            }
            ApiError::Bearer(b) => {
                let challenge = match &b {
                    Bearer::Missing => "Bearer realm=\"latch\"".to_string(),
                    Bearer::Invalid(why) => format!(
                        "Bearer realm=\"latch\", error=\"invalid_token\", error_description=\"{why}\""
                    ),
                    Bearer::InsufficientScope(scope) => format!(
                        "Bearer realm=\"latch\", error=\"insufficient_scope\", scope=\"{scope}\""
                    ),
                    Bearer::Dpop(why) => format!(
                        "DPoP realm=\"latch\", error=\"invalid_token\", error_description=\"{why}\", algs=\"{}\"",
                        crate::dpop::ALGORITHMS.join(" ")
                    ),
                };
                // The scope was checked to be NQCHARs; descriptions are constants.
                if let Ok(v) = HeaderValue::from_str(&challenge) {
                    headers.insert(WWW_AUTHENTICATE, v);
                }
                headers.insert(FAILURE_HEADER, HeaderValue::from_static("token"));
            }
            _ => {}
        }
        resp
    }
}

/// The domain's refusals, in HTTP terms. Every use case's error passes here.
impl From<app::Error> for ApiError {
    fn from(e: app::Error) -> ApiError {
        use app::Error as E;
        match e {
            E::InvalidGrant(why) => ApiError::InvalidGrant(why),
            E::InvalidClient(_) => ApiError::InvalidClient,
            E::InvalidDpopProof(why) => ApiError::InvalidDpopProof(why),
            E::UseDpopNonce(nonce) => ApiError::UseDpopNonce(nonce),
            E::Policy(refusal) => ApiError::Refused(refusal),
            E::Invalid(problems) => ApiError::Invalid(problems),
            E::Conflict(why) => ApiError::Conflict(why),
            E::InvalidRequest(why) => ApiError::InvalidRequest(why),
            E::NotFound(why) => ApiError::NoSuch(why),
            E::NotPermitted(why) => ApiError::UnauthorizedClient(why),
            E::GrantNotAllowed(why) => ApiError::GrantNotAllowed(why),
            E::RateLimited(limited) => ApiError::RateLimited(limited),
            E::Stale(stale) => ApiError::Unavailable(stale.to_string()),
            E::Unavailable(why) => ApiError::Unavailable(why),
            E::Store(e) => e.into(),
            E::Keys(e) => e.into(),
            E::Elevation(r) => ApiError::Elevation(r),
            E::Internal(why) => ApiError::Internal(why),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        ApiError::Unavailable(e.to_string())
    }
}

impl From<KeysError> for ApiError {
    fn from(e: KeysError) -> ApiError {
        match e {
            KeysError::NotFound => ApiError::NotFound,
            KeysError::Store(s) => s.into(),
            KeysError::Contended => ApiError::Unavailable(e.to_string()),
            KeysError::RotationRefused(why) => ApiError::Conflict(why),
            KeysError::Key(k) => ApiError::Internal(k.to_string()),
        }
    }
}

/// A JSON response that no cache may keep.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    bytes_response(status, Bytes::from(bytes), "application/json", "no-store")
}

pub fn bytes_response(
    status: StatusCode,
    body: Bytes,
    content_type: &'static str,
    cache_control: &str,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(cache_control) {
        h.insert(CACHE_CONTROL, v);
    }
    resp
}

/// RFC 7009's answer: 200 with no body (so no content type), not to be cached.
pub fn empty_ok() -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
