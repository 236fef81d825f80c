//! Shared Signals endpoints (SSF 1.0, RFC 8936): the transmitter configuration, stream
//! management, status, verification and poll. Receivers authenticate by HTTP Basic and
//! need role `ssf_receiver`; bodies are JSON objects. The use cases are in `app::ssf`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;

use super::error::{bytes_response, json_response, ApiError};
use super::request::{authenticate, read_body, require_content_type, require_role};
use crate::app::{ssf, App};
use crate::clients::{Client, Role};
use crate::ssf::request::valid_stream_id;

type Resp = Response<Full<Bytes>>;

/// The SSF endpoints, for routing and the `endpoint` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /.well-known/ssf-configuration[/issuer-path]`
    Configuration,
    /// `/ssf/stream`: GET, POST, PATCH, PUT, DELETE.
    Stream,
    /// `/ssf/status`: GET, POST.
    Status,
    /// `POST /ssf/verify`
    Verify,
    /// `POST /ssf/poll/{stream_id}`
    Poll,
}

impl Endpoint {
    pub fn of(path: &str) -> Option<Endpoint> {
        match path {
            "/ssf/stream" => Some(Endpoint::Stream),
            "/ssf/status" => Some(Endpoint::Status),
            "/ssf/verify" => Some(Endpoint::Verify),
            p if p == WELL_KNOWN || p.starts_with("/.well-known/ssf-configuration/") => {
                Some(Endpoint::Configuration)
            }
            p if p.starts_with(POLL_PREFIX) => Some(Endpoint::Poll),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Configuration => "ssf_configuration",
            Endpoint::Stream => "ssf_stream",
            Endpoint::Status => "ssf_status",
            Endpoint::Verify => "ssf_verify",
            Endpoint::Poll => "ssf_poll",
        }
    }

    /// The `Allow` header of a 405.
    fn allow(self) -> &'static str {
        match self {
            Endpoint::Configuration => "GET",
            Endpoint::Stream => "GET, POST, PATCH, PUT, DELETE",
            Endpoint::Status => "GET, POST",
            Endpoint::Verify | Endpoint::Poll => "POST",
        }
    }
}

const WELL_KNOWN: &str = "/.well-known/ssf-configuration";
const POLL_PREFIX: &str = "/ssf/poll/";

/// Handles a request routed to `endpoint`.
pub async fn dispatch(
    app: &App,
    endpoint: Endpoint,
    req: Request<Incoming>,
    request_id: &str,
) -> Result<Resp, ApiError> {
    let method = req.method().clone();
    let allowed = endpoint.allow().split(", ").any(|m| m == method.as_str());
    if !allowed {
        return Err(ApiError::MethodNotAllowed(endpoint.allow()));
    }
    if endpoint == Endpoint::Configuration {
        return configuration(app, req.uri().path());
    }
    // Only methods with a body read one (so GET and DELETE never answer 408 or 413).
    let (parts, body) = if matches!(method, Method::POST | Method::PATCH | Method::PUT) {
        let limits = &app.config.limits;
        read_body(req, limits.max_body_bytes, limits.body_read_timeout).await?
    } else {
        (req.into_parts().0, Bytes::new())
    };
    let client = receiver(app, &parts)?;
    match (endpoint, method) {
        (Endpoint::Stream, Method::GET) => {
            let id = stream_id_param(&parts, false)?;
            ok(&ssf::read(app, &client, id.as_deref()).await?)
        }
        (Endpoint::Stream, Method::POST) => {
            let body = json_body(&parts, &body)?;
            let created = ssf::create(app, &client, &body, request_id).await?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        (Endpoint::Stream, Method::PATCH | Method::PUT) => {
            let replace = parts.method == Method::PUT;
            let body = json_body(&parts, &body)?;
            ok(&ssf::update(app, &client, &body, replace, request_id).await?)
        }
        (Endpoint::Stream, _) => {
            let id = stream_id_param(&parts, true)?.unwrap_or_default();
            ssf::delete(app, &client, &id, request_id).await?;
            Ok(no_content())
        }
        (Endpoint::Status, Method::GET) => {
            let id = stream_id_param(&parts, true)?.unwrap_or_default();
            ok(&ssf::status(app, &client, &id).await?)
        }
        (Endpoint::Status, _) => {
            let body = json_body(&parts, &body)?;
            ok(&ssf::set_status(app, &client, &body, request_id).await?)
        }
        (Endpoint::Verify, _) => {
            let body = json_body(&parts, &body)?;
            ssf::verify(app, &client, &body).await?;
            Ok(no_content())
        }
        (Endpoint::Poll, _) => {
            let id = parts.uri.path()[POLL_PREFIX.len()..].to_string();
            if !valid_stream_id(&id) {
                return Err(ApiError::NotFound);
            }
            let body = if body.iter().all(u8::is_ascii_whitespace) {
                Value::Object(Default::default())
            } else {
                json_body(&parts, &body)?
            };
            ok(&ssf::poll(app, &client, &id, &body).await?)
        }
        (Endpoint::Configuration, _) => Err(ApiError::NotFound),
    }
}

/// The transmitter configuration: at the well-known path followed by the issuer's path,
/// if it has one (SSF 1.0 §7.2).
fn configuration(app: &App, path: &str) -> Result<Resp, ApiError> {
    let issuer_path = app
        .config
        .issuer_base()
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
        .unwrap_or("");
    if path.strip_prefix(WELL_KNOWN) != Some(issuer_path) {
        return Err(ApiError::NotFound);
    }
    Ok(bytes_response(
        StatusCode::OK,
        app.ssf.metadata.clone(),
        "application/json",
        "public, max-age=3600",
    ))
}

/// HTTP Basic, role `ssf_receiver`.
fn receiver(app: &App, parts: &Parts) -> Result<std::sync::Arc<Client>, ApiError> {
    let client = authenticate(app, parts, None)?;
    require_role(&client, Role::SsfReceiver)?;
    Ok(client)
}

/// A JSON object body.
fn json_body(parts: &Parts, body: &[u8]) -> Result<Value, ApiError> {
    require_content_type(parts, "application/json")?;
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidRequest(format!("invalid JSON body: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::InvalidRequest(
            "the JSON body must be an object".into(),
        ));
    }
    Ok(value)
}

/// The `stream_id` query parameter: at most once, well formed; `required` or optional.
fn stream_id_param(parts: &Parts, required: bool) -> Result<Option<String>, ApiError> {
    let query = parts.uri.query().unwrap_or("");
    let mut found = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k == "stream_id" {
            if found.is_some() {
                return Err(ApiError::InvalidRequest("stream_id is repeated".into()));
            }
            found = Some(v.into_owned());
        }
    }
    match found {
        Some(id) if valid_stream_id(&id) => Ok(Some(id)),
        Some(_) => Err(ApiError::InvalidRequest(
            "stream_id must be a stream id".into(),
        )),
        None if required => Err(ApiError::InvalidRequest(
            "the stream_id query parameter is required".into(),
        )),
        None => Ok(None),
    }
}

fn ok(body: &Value) -> Result<Resp, ApiError> {
    Ok(json_response(StatusCode::OK, body))
}

/// 204 with no body, not to be cached.
fn no_content() -> Resp {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
