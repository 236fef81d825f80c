//! Reading requests: the body under its size limit, content types, form parameters
//! (RFC 6749 §3.2: none repeated), and client authentication (RFC 6749 §2.3.1; RFC 7523
//! assertions; RFC 8705 mutual TLS by the handshake's certificate, [`ClientCert`]).

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::http::request::Parts;
use hyper::Request;
use percent_encoding::percent_decode;

use super::error::ApiError;
use crate::app::App;
use crate::clients::assertion::{JWT_BEARER, PRIVATE_KEY_JWT};
use crate::clients::{Client, Clients, PeerCert, Role};
use crate::time::now_ms;

/// The address a request is attributed to (see `limits::client_address`), set by
/// `http::handle` as a request extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl ClientAddr {
    pub fn of(parts: &Parts) -> IpAddr {
        parts
            .extensions
            .get::<ClientAddr>()
            .map(|a| a.0)
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }
}

/// Reads the whole body within `deadline` (total, not per chunk: a client trickling one
/// byte at a time is cut off too), refusing more than `limit` bytes with 413.
///
/// A body over the limit is still read to its end, and thrown away, when it exceeds the
/// limit by at most [`DRAIN_MAX`] bytes: closing a connection with unread bytes in its receive buffer makes
/// the kernel reset it, and the client may then see the reset instead of the 413 (seen
/// as `IncompleteMessage` from hyper clients). Past that the 413 is sent at once and
/// the connection closes: such a client is not worth the bandwidth.
pub async fn read_body(
    req: Request<Incoming>,
    limit: usize,
    deadline: Duration,
) -> Result<(Parts, Bytes), ApiError> {
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // At most this much is read: the body if it is within `limit`, else to drain it.
    let cap = (limit as u64).saturating_add(DRAIN_MAX);
    if declared.is_some_and(|n| n > cap) {
        return Err(ApiError::PayloadTooLarge);
    }
    let read = tokio::time::timeout(deadline, read_within(body, limit as u64, cap)).await;
    let Ok(read) = read else {
        metrics::counter!(crate::metrics::DEADLINES_TOTAL, "phase" => "body").increment(1);
        return Err(ApiError::RequestTimeout);
    };
    read.map(|bytes| (parts, bytes))
}

/// How far past its limit a too-large body is read and discarded before answering 413.
pub const DRAIN_MAX: u64 = 1 << 20;

/// The body's bytes if it has at most `limit`; 413 once it proves larger (after reading
/// it to its end, up to `cap` = `limit` + [`DRAIN_MAX`] bytes in all).
async fn read_within(mut body: Incoming, limit: u64, cap: u64) -> Result<Bytes, ApiError> {
    let unreadable = || ApiError::InvalidRequest("the request body could not be read".into());
    // Most bodies arrive in one frame: kept as is, without a copy.
    let mut frames: Vec<Bytes> = Vec::new();
    let mut seen: u64 = 0;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| unreadable())?.into_data() else {
            continue; // trailers carry nothing latch reads
        };
        seen += data.len() as u64;
        if seen > cap {
            return Err(ApiError::PayloadTooLarge);
        }
        if seen <= limit {
            frames.push(data);
        } else {
            frames.clear();
        }
    }
    if seen > limit {
        return Err(ApiError::PayloadTooLarge);
    }
    Ok(match frames.len() {
        0 => Bytes::new(),
        1 => frames.pop().unwrap_or_default(),
        _ => frames.concat().into(),
    })
}

/// Requires the media type `expected` (parameters such as charset are allowed).
pub fn require_content_type(parts: &Parts, expected: &'static str) -> Result<(), ApiError> {
    let ok = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim())
        .is_some_and(|m| m.eq_ignore_ascii_case(expected));
    if ok {
        Ok(())
    } else if expected == "application/json" {
        Err(ApiError::UnsupportedMediaType(
            "content type must be application/json",
        ))
    } else {
        Err(ApiError::UnsupportedMediaType(
            "content type must be application/x-www-form-urlencoded",
        ))
    }
}

/// Most form parameters a request may carry (token exchange, the largest, has about ten).
const MAX_PARAMS: usize = 64;

/// Form parameters, each present at most once. A handful per request, so a vector
/// searched in order beats a hash map.
#[derive(Debug, Default)]
pub struct Form {
    params: Vec<(String, String)>,
}

impl Form {
    /// Parses `application/x-www-form-urlencoded`. Repeated names and bytes that do not
    /// decode to UTF-8 are refused.
    pub fn parse(body: &[u8]) -> Result<Form, ApiError> {
        let mut params: Vec<(String, String)> = Vec::new();
        // memchr, not a byte-by-byte split: a token is most of the body.
        let mut rest = body;
        while !rest.is_empty() {
            let (pair, next) = match memchr::memchr(b'&', rest) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &b""[..]),
            };
            rest = next;
            if pair.is_empty() {
                continue;
            }
            // The repeat check below is quadratic, and this runs before authentication:
            // a large body of distinct names would burn CPU that no deadline interrupts
            // (found by tests/redteam.rs). No OAuth request needs more than a handful.
            if params.len() == MAX_PARAMS {
                return Err(ApiError::InvalidRequest(format!(
                    "more than {MAX_PARAMS} form parameters"
                )));
            }
            let (name, value) = match memchr::memchr(b'=', pair) {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &b""[..]),
            };
            let name = decode_component(name)?;
            let value = decode_component(value)?;
            if name.is_empty() {
                continue;
            }
            if params.iter().any(|(n, _)| *n == name) {
                return Err(ApiError::InvalidRequest(format!(
                    "parameter {} is repeated",
                    printable(&name)
                )));
            }
            params.push((name, value));
        }
        Ok(Form { params })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A parameter that must be present and non-empty.
    pub fn required(&self, name: &'static str) -> Result<&str, ApiError> {
        match self.get(name) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(ApiError::InvalidRequest(format!(
                "missing parameter {name}"
            ))),
        }
    }

    /// An optional parameter; empty counts as absent.
    pub fn optional(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }
}

fn decode_component(raw: &[u8]) -> Result<String, ApiError> {
    decoded(raw).map(Cow::into_owned)
}

/// A form-urlencoded component, decoded; borrowed when there is nothing to decode (tokens,
/// client ids and most secrets are plain base64url).
fn decoded(raw: &[u8]) -> Result<Cow<'_, str>, ApiError> {
    let invalid = || ApiError::InvalidRequest("the form body is not valid UTF-8".into());
    if memchr::memchr2(b'%', b'+', raw).is_none() {
        return std::str::from_utf8(raw)
            .map(Cow::Borrowed)
            .map_err(|_| invalid());
    }
    let plus_as_space: Vec<u8> = raw
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    let bytes: Vec<u8> = percent_decode(&plus_as_space).collect();
    String::from_utf8(bytes)
        .map(Cow::Owned)
        .map_err(|_| invalid())
}

/// A parameter name fit for an error message: short and printable.
fn printable(name: &str) -> String {
    let clean: String = name
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(40)
        .collect();
    clean
}

/// Authenticates the calling client of a form request (`/token`, `/introspect`,
/// `/revoke`): by HTTP Basic (`client_secret_basic`), by `client_id` and `client_secret`
/// in the form (`client_secret_post`), or by a signed `client_assertion`
/// (`private_key_jwt`, RFC 7523 §2.2; checked and used once in `app::client_auth`). Using
/// two at once is refused (RFC 6749 §2.3).
///
/// Failures are rate limited per source address and per configured client id: once
/// either has used up its failures, its requests are refused 429 before the secret is
/// even looked at. Clients with role `admin` are exempt from the per-id limit, so
/// nobody can lock the revocation path out by spraying bad secrets for its id.
pub async fn authenticate_form(
    app: &App,
    parts: &Parts,
    form: &Form,
) -> Result<Arc<Client>, ApiError> {
    authenticate_form_method(app, parts, form)
        .await
        .map(|(c, _)| c)
}

/// [`authenticate_form`], also saying which method authenticated the client (the token
/// endpoint binds what it issues to the certificate of a mutual-TLS client).
pub async fn authenticate_form_method(
    app: &App,
    parts: &Parts,
    form: &Form,
) -> Result<(Arc<Client>, &'static str), ApiError> {
    let started = Started::new(app, parts, Some(form))?;
    let presented = match assertion_of(form, started.basic.is_some()) {
        Ok(Some(assertion)) => {
            let client_id = form.optional("client_id");
            crate::app::client_auth::authenticate_assertion(app, assertion, client_id)
                .await
                .map(|c| (c, PRIVATE_KEY_JWT))
                .map_err(ApiError::from)
        }
        Err(e) => Err(e),
        Ok(None) => verify(
            &app.clients,
            &started.basic,
            Some(form),
            ClientCert::of(parts),
        ),
    };
    started.finish(app, presented)
}

/// Authenticates the calling client by HTTP Basic, or, when a form is given, by either
/// secret method (as [`authenticate_form`] does, but without client assertions: a form
/// carrying one is refused, so an endpoint never ignores a credential it was sent).
pub fn authenticate(
    app: &App,
    parts: &Parts,
    form: Option<&Form>,
) -> Result<Arc<Client>, ApiError> {
    let started = Started::new(app, parts, form)?;
    let presented = match form.map(|f| assertion_of(f, started.basic.is_some())) {
        Some(Ok(Some(_))) => Err(ApiError::InvalidRequest(
            "client assertions are accepted at /token, /introspect and /revoke".into(),
        )),
        Some(Err(e)) => Err(e),
        _ => verify(&app.clients, &started.basic, form, ClientCert::of(parts)),
    };
    started.finish(app, presented).map(|(c, _)| c)
}

/// Authenticates client `client_id` by the certificate of the request's TLS handshake
/// alone (RFC 8705 §2; the gateway's `X-Latch-Client-Id`), under the same rate limits
/// and contract as every other method.
pub fn authenticate_by_certificate(
    app: &App,
    parts: &Parts,
    client_id: &str,
) -> Result<Arc<Client>, ApiError> {
    // No Basic header here: the id comes from the caller (the gateway's X-Latch-Client-Id).
    let started = Started::begin(app, parts, None, Started::counted(app, Some(client_id)))?;
    let presented = match ClientCert::of(parts) {
        Some(cert) => by_certificate(&app.clients, client_id, cert),
        None => Err(ApiError::InvalidClient),
    };
    started.finish(app, presented).map(|(c, _)| c)
}

/// The client certificate of the request's TLS handshake (set by the accept loop as a
/// request extension; see `crate::server`).
pub struct ClientCert;

impl ClientCert {
    pub fn of(parts: &Parts) -> Option<&PeerCert> {
        parts.extensions.get::<Arc<PeerCert>>().map(|c| &**c)
    }
}

/// An authentication under way: the rate limits passed, the credentials not yet checked.
struct Started<'a> {
    address: IpAddr,
    basic: Basic,
    counted: Option<&'a str>,
    now: i64,
}

impl<'a> Started<'a> {
    fn new(app: &'a App, parts: &Parts, form: Option<&Form>) -> Result<Started<'a>, ApiError> {
        // The Basic header is parsed once: for the per-id limit and for the check itself.
        let basic = parts
            .headers
            .get(AUTHORIZATION)
            .map(|h| parse_basic(h.as_bytes()));
        let counted = Started::counted(app, presented_id(basic.as_ref(), form).as_deref());
        Started::begin(app, parts, basic, counted)
    }

    /// The configured client a presented id names, when failures count against it (not
    /// an admin's).
    fn counted(app: &'a App, id: Option<&str>) -> Option<&'a str> {
        id.and_then(|id| app.clients.get(id))
            .filter(|c| !c.has_role(Role::Admin))
            .map(|c| c.id.as_str())
    }

    /// The limits for a request whose failures count against `counted` (and its address),
    /// with its `basic` credentials.
    fn begin(
        app: &'a App,
        parts: &Parts,
        basic: Basic,
        counted: Option<&'a str>,
    ) -> Result<Started<'a>, ApiError> {
        let address = ClientAddr::of(parts);
        let now = now_ms();
        app.limits.before_auth(address, counted, now)?;
        Ok(Started {
            address,
            basic,
            counted,
            now,
        })
    }

    /// The client in force by its contract, if the contract accepts `method`; a failure
    /// counts against the limits.
    fn finish(
        self,
        app: &App,
        presented: Result<(Arc<Client>, &'static str), ApiError>,
    ) -> Result<(Arc<Client>, &'static str), ApiError> {
        let result = presented.and_then(|(configured, method)| {
            // The rights come from the contract in force; it may also narrow the methods.
            let client = app
                .contracts
                .client(&configured.id, self.now)
                .ok_or(ApiError::InvalidClient)?;
            if client.accepts_auth_method(method) {
                Ok((client, method))
            } else {
                tracing::debug!(client = %client.id, method, "authentication method not in the contract");
                Err(ApiError::InvalidClient)
            }
        });
        if result.is_err() {
            app.limits.auth_failed(self.address, self.counted, self.now);
        }
        result
    }
}

/// The `client_assertion` of a form that carries one (or its type): exactly the
/// JWT bearer type, and no other credential beside it.
fn assertion_of(form: &Form, has_basic: bool) -> Result<Option<&str>, ApiError> {
    let kind = form.get("client_assertion_type");
    let assertion = form.get("client_assertion");
    if kind.is_none() && assertion.is_none() {
        return Ok(None);
    }
    if has_basic || form.get("client_secret").is_some() {
        return Err(ApiError::InvalidRequest(
            "use one client authentication method, not two".into(),
        ));
    }
    match kind {
        Some(JWT_BEARER) => {}
        Some(_) => {
            return Err(ApiError::InvalidRequest(format!(
                "client_assertion_type must be {JWT_BEARER}"
            )))
        }
        None => {
            return Err(ApiError::InvalidRequest(
                "missing parameter client_assertion_type".into(),
            ))
        }
    }
    form.required("client_assertion").map(Some)
}

/// `Some(None)`: an `Authorization` header that is not valid Basic credentials.
type Basic = Option<Option<(String, String)>>;

/// The client id a request claims, before any verification.
fn presented_id<'a>(
    basic: Option<&'a Option<(String, String)>>,
    form: Option<&'a Form>,
) -> Option<std::borrow::Cow<'a, str>> {
    if let Some(basic) = basic {
        let (id, _) = basic.as_ref()?;
        return Some(decoded(id.as_bytes()).unwrap_or(Cow::Borrowed(id.as_str())));
    }
    form.and_then(|f| f.get("client_id"))
        .map(std::borrow::Cow::Borrowed)
}

/// The configured client whose secret was presented, and how it was presented. A form
/// naming a `client_id` with no secret is mutual TLS (RFC 8705 §2) when the handshake
/// carried a certificate.
fn verify(
    clients: &Clients,
    basic: &Basic,
    form: Option<&Form>,
    cert: Option<&PeerCert>,
) -> Result<(Arc<Client>, &'static str), ApiError> {
    let in_body = form.and_then(|f| f.get("client_secret")).is_some();
    if let Some(basic) = basic {
        if in_body {
            return Err(ApiError::InvalidRequest(
                "use one client authentication method, not two".into(),
            ));
        }
        let (id, secret) = basic.as_ref().ok_or(ApiError::InvalidClient)?;
        return Ok((check(clients, id, secret)?, "client_secret_basic"));
    }
    if let Some(form) = form {
        if let (Some(id), Some(secret)) = (form.get("client_id"), form.get("client_secret")) {
            let client = clients
                .authenticate(id, secret.as_bytes())
                .ok_or(ApiError::InvalidClient)?;
            return Ok((client, "client_secret_post"));
        }
        if let (Some(id), Some(cert)) = (form.get("client_id"), cert) {
            return by_certificate(clients, id, cert);
        }
    }
    Err(ApiError::InvalidClient)
}

/// Client `id`, if `cert` authenticates it (`tls_client_auth` or
/// `self_signed_tls_client_auth`).
fn by_certificate(
    clients: &Clients,
    id: &str,
    cert: &PeerCert,
) -> Result<(Arc<Client>, &'static str), ApiError> {
    let client = clients.get(id).ok_or(ApiError::InvalidClient)?;
    match client.certs.authenticates(cert) {
        Some(method) => Ok((client.clone(), method)),
        None => {
            tracing::debug!(client = %client.id, "client certificate does not authenticate this client");
            Err(ApiError::InvalidClient)
        }
    }
}

/// Basic credentials are form-urlencoded before base64 (RFC 6749 §2.3.1); clients that
/// skip that step are common, so the raw form is tried when decoding changes nothing valid.
fn check<'a>(clients: &Clients, id: &'a str, secret: &'a str) -> Result<Arc<Client>, ApiError> {
    let decode = |raw: &'a str| decoded(raw.as_bytes()).unwrap_or(Cow::Borrowed(raw));
    let (decoded_id, decoded_secret) = (decode(id), decode(secret));
    if let Some(c) = clients.authenticate(&decoded_id, decoded_secret.as_bytes()) {
        return Ok(c);
    }
    if (&*decoded_id, &*decoded_secret) != (id, secret) {
        if let Some(c) = clients.authenticate(id, secret.as_bytes()) {
            return Ok(c);
        }
    }
    Err(ApiError::InvalidClient)
}

fn parse_basic(header: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(header).ok()?.trim();
    let (scheme, rest) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let mut decoded = String::from_utf8(STANDARD.decode(rest.trim()).ok()?).ok()?;
    // One allocation for the two halves: the secret is split off the decoded buffer.
    let colon = decoded.find(':')?;
    let secret = decoded.split_off(colon + 1);
    decoded.truncate(colon);
    Some((decoded, secret))
}

/// Requires a role of an authenticated client.
pub fn require_role(client: &Client, role: Role) -> Result<(), ApiError> {
    if client.has_role(role) {
        Ok(())
    } else {
        Err(ApiError::UnauthorizedClient(
            "this client is not allowed to use this endpoint",
        ))
    }
}

/// Entry points for the fuzz harnesses (`tests/fuzz.rs`); not an API.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// Client authentication without the rate limits and contracts of a node: parses an
    /// `Authorization` header value and the form's credentials exactly as
    /// [`authenticate`] does, and checks them against `clients`.
    pub fn client_authentication(
        clients: &Clients,
        authorization: Option<&[u8]>,
        form: Option<&Form>,
    ) -> Result<(Arc<Client>, &'static str), ApiError> {
        let basic = authorization.map(parse_basic);
        // The id the limits would count, computed for its parsing, not its use.
        let _ = presented_id(basic.as_ref(), form);
        verify(clients, &basic, form, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_rules() {
        type Case<'a> = (&'a [u8], Result<&'a [(&'a str, &'a str)], &'a str>);
        let cases: &[Case] = &[
            (
                b"token=abc&token_type_hint=access_token",
                Ok(&[("token", "abc"), ("token_type_hint", "access_token")]),
            ),
            (b"a=1+2&b=%41%42", Ok(&[("a", "1 2"), ("b", "AB")])),
            (b"&&x=&", Ok(&[("x", "")])),
            (b"token=a&token=b", Err("repeated")),
            (b"t=%ff%fe", Err("UTF-8")),
            (b"\xff\xfe=1", Err("UTF-8")),
        ];
        for (body, expected) in cases {
            let got = Form::parse(body);
            match (got, expected) {
                (Ok(form), Ok(pairs)) => {
                    for (k, v) in pairs.iter() {
                        assert_eq!(form.get(k), Some(*v), "{body:?}");
                    }
                    assert_eq!(form.params.len(), pairs.len());
                }
                (Err(e), Err(needle)) => assert!(e.to_string().contains(needle), "{e}"),
                (got, _) => panic!("{body:?}: unexpected {got:?}"),
            }
        }
    }

    #[test]
    fn basic_header() {
        let h = format!("Basic {}", STANDARD.encode("svc:s3cr%3At"));
        assert_eq!(
            parse_basic(h.as_bytes()),
            Some(("svc".into(), "s3cr%3At".into()))
        );
        assert_eq!(parse_basic(b"Bearer abc"), None);
        assert_eq!(parse_basic(b"Basic !!!"), None);
        assert_eq!(
            parse_basic(format!("Basic {}", STANDARD.encode("nocolon")).as_bytes()),
            None
        );
    }
}
