//! The OAuth endpoints `/token` (RFC 6749, RFC 9068) and `/revoke` (RFC 7009);
//! `/introspect` (RFC 7662) is in `introspection.rs`. Each parses the form, authenticates
//! the client, calls the node's use case in `crate::app` and renders its answer.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::HeaderValue;
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use serde::Serialize;
use serde_json::json;

use super::error::{bytes_response, json_response, ApiError};
use super::request::{authenticate_form, authenticate_form_method, ClientCert, Form};
use crate::app::revoke::revoke_token;
use crate::app::token::{self, Exchange, Issued, TokenRequest, TYPE_ACCESS_TOKEN};
use crate::app::App;
use crate::clients::certificate::is_mtls;
use crate::clients::{Deprecated, Grant};
use crate::tokens::Cnf;

type Resp = Response<Full<Bytes>>;

// === /token ===

#[derive(Serialize)]
struct TokenResponse<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_in: u64,
    scope: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    issued_token_type: Option<&'static str>,
}

pub async fn token(
    app: &App,
    parts: &Parts,
    form: &Form,
    request_id: &str,
) -> Result<Resp, ApiError> {
    let (client, method) = authenticate_form_method(app, parts, form).await?;
    let proof = dpop_header(parts)?;
    // A mutual-TLS client's tokens are bound to the certificate of this handshake
    // (RFC 8705 §3). One binding per token: a DPoP proof beside it is refused, before
    // its jti is spent.
    let certificate = match (is_mtls(method), ClientCert::of(parts)) {
        (true, Some(cert)) => Some(cert.x5t_s256()),
        _ => None,
    };
    if certificate.is_some() && proof.is_some() {
        return Err(ApiError::InvalidRequest(
            "a token is bound to one thing: this client's certificate or a DPoP key, not both"
                .into(),
        ));
    }
    let grant_type = form.required("grant_type")?;
    let grant = Grant::parse(grant_type).ok_or(ApiError::UnsupportedGrantType)?;
    let req = match grant {
        Grant::ClientCredentials => TokenRequest::ClientCredentials {
            scope: form.optional("scope"),
            resource: form.optional("resource"),
        },
        Grant::RefreshToken => TokenRequest::RefreshToken {
            refresh_token: form.optional("refresh_token"),
            scope: form.optional("scope"),
        },
        Grant::TokenExchange => TokenRequest::TokenExchange(Exchange {
            subject_token: form.optional("subject_token"),
            subject_token_type: form.optional("subject_token_type"),
            requested_token_type: form.optional("requested_token_type"),
            scope: form.optional("scope"),
            audience: form.optional("audience"),
            resource: form.optional("resource"),
        }),
    };
    let binding = match certificate {
        Some(x5t_s256) => Some(Cnf::X5t { x5t_s256 }),
        None => crate::app::dpop::check_proof(app, proof, parts.method.as_str())
            .await?
            .map(|jkt| Cnf::Jkt { jkt }),
    };
    let issued: Issued = token::token(app, &client, req, request_id, binding.as_ref()).await?;
    let deprecated = issued.deprecated.clone();
    let body = TokenResponse {
        access_token: &issued.access_token,
        token_type: issued.token_type,
        expires_in: issued.expires_in,
        scope: &issued.scope,
        refresh_token: issued.refresh_token.as_deref(),
        issued_token_type: (issued.grant == Grant::TokenExchange).then_some(TYPE_ACCESS_TOKEN),
    };
    let mut resp = deprecation(json_body(StatusCode::OK, &body), &deprecated);
    if let Some(nonce) = crate::app::dpop::current_nonce(app) {
        if let Ok(v) = HeaderValue::from_str(&nonce) {
            resp.headers_mut().insert("dpop-nonce", v);
        }
    }
    Ok(resp)
}

/// The `DPoP` header (RFC 9449 §4.1), at most one, as text.
fn dpop_header(parts: &Parts) -> Result<Option<&str>, ApiError> {
    let mut values = parts.headers.get_all("dpop").iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::InvalidDpopProof("more than one DPoP header"));
    }
    first
        .to_str()
        .map(Some)
        .map_err(|_| ApiError::InvalidDpopProof("malformed DPoP proof"))
}

// === /revoke ===

pub async fn revoke(
    app: &App,
    parts: &Parts,
    form: &Form,
    request_id: &str,
) -> Result<Resp, ApiError> {
    let caller = authenticate_form(app, parts, form).await?;
    let token = form.required("token")?;
    revoke_token(app, &caller, token, request_id).await?;
    Ok(super::error::empty_ok())
}

/// An answer about a token that carries a deprecated scope or audience says so:
/// `Deprecation: @<unix seconds>` (RFC 9745: since the contract version that deprecated
/// it took effect), `Sunset` (RFC 8594) with the earliest planned removal when one is
/// scheduled, and `X-Latch-Deprecated` naming what is deprecated.
pub(super) fn deprecation(mut resp: Resp, deprecated: &[Deprecated]) -> Resp {
    if deprecated.is_empty() {
        return resp;
    }
    let headers = resp.headers_mut();
    let since = deprecated.iter().map(|d| d.since_ms).min().unwrap_or(0);
    if let Ok(v) = HeaderValue::from_str(&format!("@{}", since.div_euclid(1000))) {
        headers.insert("deprecation", v);
    }
    if let Some(ms) = deprecated.iter().filter_map(|d| d.sunset_ms).min() {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
        if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(at)) {
            headers.insert("sunset", v);
        }
    }
    let names: Vec<&str> = deprecated.iter().map(|d| d.name.as_str()).collect();
    if let Ok(v) = HeaderValue::from_str(&format!("deprecated={}", names.join(" "))) {
        headers.insert("x-latch-deprecated", v);
    }
    resp
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
