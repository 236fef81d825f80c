//! The OAuth endpoints `/token` (RFC 6749, RFC 9068) and `/revoke` (RFC 7009);
//! `/introspect` (RFC 7662) is in `introspection.rs`. Each parses the form, authenticates
//! the client, calls the node's use case in `crate::app` and renders its answer.

use super::error::{bytes_response, ApiError};
use super::json::JsonObject;
use super::request::{authenticate_form, authenticate_form_method, ClientCert, Form};
use crate::app::revoke::revoke_token;
use crate::app::token::{self, Exchange, Issued, TokenRequest, TYPE_ACCESS_TOKEN};
use crate::app::App;
use crate::clients::certificate::is_mtls;
use crate::clients::{Deprecated, Grant};
use crate::tokens::Cnf;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::HeaderValue;
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};

type Resp = Response<Full<Bytes>>;

// === /token ===

/// The RFC 6749 §5.1 answer (RFC 8693 §2.2.1 adds `issued_token_type`), written member
/// by member: every value is latch's own (the tokens are base64url, the scope is of
/// registered names), so nothing is escaped in practice.
fn token_body(issued: &Issued) -> Bytes {
    let refresh = issued.refresh_token.as_deref();
    let mut w = JsonObject::with_capacity(
        issued.access_token.len() + refresh.map_or(0, str::len) + issued.scope.len() + 160,
    );
    w.str("access_token", &issued.access_token);
    w.str("token_type", issued.token_type);
    w.int("expires_in", issued.expires_in.min(i64::MAX as u64) as i64);
    w.str("scope", &issued.scope);
    if let Some(rt) = refresh {
        w.str("refresh_token", rt);
    }
    if issued.grant == Grant::TokenExchange {
        w.str("issued_token_type", TYPE_ACCESS_TOKEN);
    }
    w.finish()
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
    let body = bytes_response(
        StatusCode::OK,
        token_body(&issued),
        "application/json",
        "no-store",
    );
    let mut resp = deprecation(body, &issued.deprecated);
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn issued(grant: Grant, scope: &str, refresh: Option<&str>) -> Issued {
        Issued {
            access_token: "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2ln".into(),
            expires_in: 900,
            scope: scope.into(),
            refresh_token: refresh.map(str::to_string),
            grant,
            token_type: "DPoP",
            deprecated: Vec::new(),
        }
    }

    /// The direct writer says what serde_json would, member for member and in order,
    /// escapes included.
    #[test]
    fn the_token_answer_is_the_json_serde_would_write() {
        let cases = [
            (
                issued(Grant::ClientCredentials, "orders:read orders:write", None),
                None,
            ),
            (
                issued(Grant::RefreshToken, "a", Some("rt.abc_DEF-123")),
                None,
            ),
            (
                issued(Grant::TokenExchange, "", Some("rt.x")),
                Some(TYPE_ACCESS_TOKEN),
            ),
            (
                issued(Grant::ClientCredentials, "odd\"scope\\\n\u{1}é", None),
                None,
            ),
        ];
        for (i, itt) in cases {
            let mut want = json!({
                "access_token": i.access_token,
                "token_type": i.token_type,
                "expires_in": i.expires_in,
                "scope": i.scope,
            });
            if let Some(rt) = &i.refresh_token {
                want["refresh_token"] = json!(rt);
            }
            if let Some(t) = itt {
                want["issued_token_type"] = json!(t);
            }
            let body = token_body(&i);
            let got: Value = serde_json::from_slice(&body).expect("valid JSON");
            assert_eq!(got, want);
            let text = std::str::from_utf8(&body).unwrap();
            let order: Vec<usize> = ["access_token", "token_type", "expires_in", "scope"]
                .iter()
                .map(|k| text.find(&format!("\"{k}\"")).unwrap())
                .collect();
            assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
        }
    }
}
