//! `/gateway/check`: forward authentication for gateways (nginx `auth_request`, Traefik
//! `forwardAuth`, Envoy HTTP `ext_authz`). A thin adapter over `app::introspect`: the
//! gateway authenticates as a latch client with role `introspect`, the user's bearer token
//! is decided exactly as `/introspect` decides it for that client (its audience
//! restriction included), and the answer is a status and headers, not a document.
//!
//! - The gateway's credential: `X-Latch-Client-Authorization: Basic ...` (the same
//!   `client_secret_basic` credential `/introspect` takes in `Authorization`, which here
//!   carries the user's token), or mutual TLS on the gateway's own connection with
//!   `X-Latch-Client-Id`. Its failures are marked `X-Latch-Failure: gateway`.
//! - The user's token: `Authorization: Bearer ...` (RFC 6750 §2.1), or `DPoP ...` for a
//!   DPoP-bound one. A bound token needs its proof (`bound`): the user's certificate
//!   forwarded in `X-Latch-Client-Cert`, or a DPoP proof for the forwarded request
//!   (`X-Forwarded-Method`, `-Proto`, `-Host`, `-Uri`).
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

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION};
use hyper::http::request::Parts;
use hyper::{Request, Response};
use subtle::ConstantTimeEq;

use super::error::{empty_ok, ApiError, Bearer};
use super::request::{authenticate, authenticate_by_certificate, require_role, ClientAddr, Form};
use crate::app::introspect::{self, Answer};
use crate::app::App;
use crate::clients::certificate;
use crate::clients::{PeerCert, Role};
use crate::tokens::Cnf;

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
/// The gateway's client id when it authenticates by mutual TLS.
pub const CLIENT_ID: &str = "x-latch-client-id";
/// The user's client certificate, forwarded by the gateway (URL-escaped PEM).
pub const CLIENT_CERT: &str = "x-latch-client-cert";
/// The user's request, forwarded by the gateway (Traefik's names; nginx sets them).
const FORWARDED_METHOD: &str = "x-forwarded-method";
const FORWARDED_PROTO: &str = "x-forwarded-proto";
const FORWARDED_HOST: &str = "x-forwarded-host";
const FORWARDED_URI: &str = "x-forwarded-uri";

/// Longest bearer token looked at; a longer one is refused unread (latch's tokens are far
/// shorter).
const MAX_TOKEN_BYTES: usize = 8192;

/// `/gateway/check`, any method: the user's bearer token decided for the gateway client.
pub async fn check(app: &App, parts: &Parts) -> Result<Resp, ApiError> {
    let gateway = gateway_client(app, parts).map_err(|e| ApiError::Gateway(Box::new(e)))?;
    let required = Required::of(parts)?;
    let (scheme, token) = presented(parts)?;
    let answer = introspect::introspect(app, &gateway, token).await?;
    let Answer::Access { claims, .. } = answer else {
        // Inactive, or a refresh token: not something a resource may be reached with.
        return Err(ApiError::Bearer(Bearer::Invalid("the token is not active")));
    };
    // A bound token is no bearer token: whoever presents it proves the binding, before
    // anything else about it is told.
    bound(app, parts, scheme, token, claims.cnf.as_ref()).await?;
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

/// The gateway client, holding role `introspect`, authenticated either by
/// `X-Latch-Client-Authorization` exactly as any client is by `Authorization`, or by
/// mutual TLS: the certificate of the gateway's own TLS connection to latch, for the
/// client named in `X-Latch-Client-Id` (RFC 8705 §2). Same rate limits either way.
fn gateway_client(app: &App, parts: &Parts) -> Result<Arc<crate::clients::Client>, ApiError> {
    let credential = one_header(parts, CLIENT_AUTHORIZATION).ok_or(ApiError::InvalidClient)?;
    let client_id = one_header(parts, CLIENT_ID).ok_or(ApiError::InvalidClient)?;
    // Only the credential, the handshake's certificate and the attributed address go to
    // authentication: nothing of the user's request can stand in for the gateway's.
    let (mut own, ()) = Request::new(()).into_parts();
    own.extensions.insert(ClientAddr(ClientAddr::of(parts)));
    let client = match (credential, client_id) {
        (Some(credential), None) => {
            own.headers.insert(AUTHORIZATION, credential.clone());
            authenticate(app, &own, None)?
        }
        (None, Some(id)) => {
            if let Some(cert) = parts.extensions.get::<Arc<PeerCert>>() {
                own.extensions.insert(cert.clone());
            }
            let id = id.to_str().map_err(|_| ApiError::InvalidClient)?;
            authenticate_by_certificate(app, &own, id)?
        }
        // Two credentials, or none.
        _ => return Err(ApiError::InvalidClient),
    };
    require_role(&client, Role::Introspect)?;
    Ok(client)
}

/// A header that must not be repeated: `None` when it is, `Some(None)` when absent.
fn one_header<'a>(parts: &'a Parts, name: &'static str) -> Option<Option<&'a HeaderValue>> {
    let mut values = parts.headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (first, None) => Some(first),
        _ => None,
    }
}

/// How the user's token was presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Bearer,
    Dpop,
}

/// The token of `Authorization: Bearer <token>` (RFC 6750 §2.1) or `Authorization: DPoP
/// <token>` (RFC 9449 §7.1); schemes are case-insensitive. No header, or another scheme:
/// no token (a challenge without an error code). A malformed one is `invalid_token`.
fn presented(parts: &Parts) -> Result<(Scheme, &str), ApiError> {
    let Some(value) = parts.headers.get(AUTHORIZATION) else {
        return Err(ApiError::Bearer(Bearer::Missing));
    };
    let malformed = || ApiError::Bearer(Bearer::Invalid("malformed bearer token"));
    let text = value.to_str().map_err(|_| malformed())?;
    let (scheme, token) = text.split_once(' ').unwrap_or((text, ""));
    let scheme = if scheme.eq_ignore_ascii_case("bearer") {
        Scheme::Bearer
    } else if scheme.eq_ignore_ascii_case("dpop") {
        Scheme::Dpop
    } else {
        return Err(ApiError::Bearer(Bearer::Missing));
    };
    let token = token.trim_matches(' ');
    // b64token (RFC 6750 §2.1).
    let b64token = |b: u8| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b);
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES || !token.bytes().all(b64token) {
        return Err(malformed());
    }
    Ok((scheme, token))
}

/// The proof a bound token needs (none for an unbound one, which must come as Bearer):
/// - `cnf.x5t#S256` (RFC 8705 §3): the user's client certificate, forwarded by the
///   gateway in `X-Latch-Client-Cert` (URL-escaped PEM, nginx's
///   `$ssl_client_escaped_cert`), must be the one the token is bound to. The header is
///   believed only because the gateway authenticated itself; the scheme stays Bearer.
/// - `cnf.jkt` (RFC 9449 §7): `Authorization: DPoP`, and a `DPoP` proof by the bound key
///   for the user's request (`X-Forwarded-Method`, else this request's method, and the
///   URL of `X-Forwarded-Proto`, `-Host` and `-Uri`) with `ath` the token's hash, used
///   once across every node.
async fn bound(
    app: &App,
    parts: &Parts,
    scheme: Scheme,
    token: &str,
    cnf: Option<&Cnf>,
) -> Result<(), ApiError> {
    let invalid = |why| Err(ApiError::Bearer(Bearer::Invalid(why)));
    let dpop = |why| Err(ApiError::Bearer(Bearer::Dpop(why)));
    match cnf {
        None if scheme == Scheme::Dpop => invalid("the token is not DPoP-bound"),
        None => Ok(()),
        Some(Cnf::X5t { x5t_s256 }) => {
            if scheme != Scheme::Bearer {
                return invalid("a certificate-bound token is sent with the Bearer scheme");
            }
            let Some(Some(value)) = one_header(parts, CLIENT_CERT) else {
                return invalid("the token is bound to a client certificate; none was forwarded");
            };
            let Some(leaf) = certificate::forwarded_leaf(value.as_bytes()) else {
                return invalid("the forwarded client certificate is not a PEM certificate");
            };
            let presented = PeerCert::new(leaf, false).x5t_s256();
            if bool::from(presented.as_bytes().ct_eq(x5t_s256.as_bytes())) {
                Ok(())
            } else {
                invalid("the token is bound to another client certificate")
            }
        }
        Some(Cnf::Jkt { jkt }) => {
            if scheme != Scheme::Dpop {
                return dpop("a DPoP-bound token is sent with the DPoP scheme and a proof");
            }
            let proof = match one_header(parts, "dpop") {
                Some(Some(p)) => p
                    .to_str()
                    .map_err(|_| ApiError::Bearer(Bearer::Dpop("malformed DPoP proof")))?,
                Some(None) => return dpop("the token is DPoP-bound; no DPoP proof was sent"),
                None => return dpop("more than one DPoP header"),
            };
            let Some((method, htu)) = forwarded_request(parts) else {
                return dpop("the gateway did not forward the request's URL (X-Forwarded-Proto, X-Forwarded-Host, X-Forwarded-Uri)");
            };
            match crate::app::dpop::check_resource_proof(app, proof, &method, &htu, token, jkt)
                .await?
            {
                Ok(()) => Ok(()),
                Err(refused) => dpop(refused.0),
            }
        }
    }
}

/// The user's request as the gateway forwarded it: its method and its URL without query.
fn forwarded_request(parts: &Parts) -> Option<(String, String)> {
    let text = |name: &'static str| -> Option<&str> {
        let v = one_header(parts, name)??.to_str().ok()?.trim();
        (!v.is_empty()).then_some(v)
    };
    let method = match one_header(parts, FORWARDED_METHOD)? {
        Some(_) => text(FORWARDED_METHOD)?.to_string(),
        None => parts.method.as_str().to_string(),
    };
    let proto = text(FORWARDED_PROTO)?.to_ascii_lowercase();
    if proto != "https" && proto != "http" {
        return None;
    }
    // Under `/gateway/check/...` (Envoy's `path_prefix`) the gateway sent the user's path
    // and Host as its own: they stand in for the forwarded ones it does not send.
    let appended = parts
        .uri
        .path()
        .strip_prefix(PATH)
        .filter(|rest| rest.starts_with('/'));
    let host = match (one_header(parts, FORWARDED_HOST)?, appended) {
        (Some(_), _) => text(FORWARDED_HOST)?,
        (None, Some(_)) => match parts.uri.authority() {
            Some(a) => a.as_str(),
            None => text("host")?,
        },
        (None, None) => return None,
    };
    let uri = match (one_header(parts, FORWARDED_URI)?, appended) {
        (Some(_), _) => text(FORWARDED_URI)?,
        (None, Some(rest)) => rest,
        (None, None) => return None,
    };
    if !uri.starts_with('/') || host.contains(['/', '?', '#', '@']) {
        return None;
    }
    let path = &uri[..uri.find(['?', '#']).unwrap_or(uri.len())];
    Some((
        method,
        format!("{proto}://{}{path}", host.to_ascii_lowercase()),
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder().method("GET").uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_users_request_is_read_from_the_forwarded_headers_or_envoys_path() {
        let fwd = [
            ("x-forwarded-method", "POST"),
            ("x-forwarded-proto", "HTTPS"),
            ("x-forwarded-host", "API.example:8443"),
            ("x-forwarded-uri", "/orders/1?x=1#f"),
        ];
        assert_eq!(
            forwarded_request(&parts(PATH, &fwd)),
            Some((
                "POST".to_string(),
                "https://api.example:8443/orders/1".to_string()
            ))
        );
        // Envoy: the method and Host of the check, the path after the prefix.
        let envoy = parts(
            "/gateway/check/orders/2?y=2",
            &[("x-forwarded-proto", "https"), ("host", "api.example")],
        );
        assert_eq!(
            forwarded_request(&envoy),
            Some((
                "GET".to_string(),
                "https://api.example/orders/2".to_string()
            ))
        );
        // Without the prefix's path, the Host of the check is latch's own: not used.
        assert_eq!(
            forwarded_request(&parts(
                PATH,
                &[("x-forwarded-proto", "https"), ("host", "latch")]
            )),
            None
        );
        // A scheme other than http(s), a host with a path, a relative URI, a repeated
        // header: nothing.
        for (k, v) in [
            ("x-forwarded-proto", "ftp"),
            ("x-forwarded-host", "a.example/evil"),
            ("x-forwarded-uri", "orders"),
        ] {
            let mut h: Vec<(&str, &str)> = fwd.iter().copied().filter(|(n, _)| *n != k).collect();
            h.push((k, v));
            assert_eq!(forwarded_request(&parts(PATH, &h)), None, "{k}: {v}");
        }
        let mut twice = fwd.to_vec();
        twice.push(("x-forwarded-uri", "/other"));
        assert_eq!(forwarded_request(&parts(PATH, &twice)), None);
    }

    #[test]
    fn the_users_token_comes_as_bearer_or_dpop() {
        let p = |v: &str| parts(PATH, &[("authorization", v)]);
        assert_eq!(
            presented(&p("Bearer abc")).unwrap(),
            (Scheme::Bearer, "abc")
        );
        assert_eq!(presented(&p("dpop abc")).unwrap(), (Scheme::Dpop, "abc"));
        assert!(matches!(
            presented(&p("Basic abc")),
            Err(ApiError::Bearer(Bearer::Missing))
        ));
        assert!(matches!(
            presented(&p("DPoP a b")),
            Err(ApiError::Bearer(Bearer::Invalid(_)))
        ));
    }
}
