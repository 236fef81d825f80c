//! The HTTP interface: routing, per-request metrics and request ids. Endpoint logic lives
//! in `oauth.rs`, `introspection.rs` and `admin.rs`; `error.rs` is the single mapping from
//! errors to answers.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use metrics::{Counter, Histogram};
use serde_json::json;
use tracing::Instrument;

use crate::app::App;
use crate::metrics as m;
use crate::time::now_ms;
use error::{bytes_response, json_response, ApiError};
use request::{read_body, require_content_type, ClientAddr, Form};

pub mod admin;
pub mod contracts;
pub mod error;
pub mod gateway;
pub mod grants;
pub mod introspection;
mod json;
pub mod nodes;
pub mod oauth;
pub mod request;
pub mod ssf;
pub mod status;

const FORM: &str = "application/x-www-form-urlencoded";
const REQUEST_ID: &str = "x-request-id";
/// The request-id header as a name: looked up without parsing its text per request.
static REQUEST_ID_NAME: HeaderName = HeaderName::from_static(REQUEST_ID);
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Which endpoint a request is for; also the `endpoint` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Metadata,
    Jwks,
    Token,
    Introspect,
    IntrospectBatch,
    Revoke,
    AdminRevoke,
    AdminKeys,
    AdminKeysRotate,
    AdminKeyRevoke,
    AdminAudit,
    AdminStoreRecover,
    AdminContracts,
    AdminScopes,
    /// `/grants...` (a client's own elevation requests) and `/admin/grants...`.
    Grants,
    AdminGrants,
    AdminNodes,
    AdminRevocation,
    /// `/gateway/check`: forward authentication, any method.
    Gateway,
    Healthz,
    Readyz,
    /// Token Status List: one list, and the aggregation of all.
    StatusList,
    StatusLists,
    /// Shared Signals (SSF 1.0): configuration, streams, status, verification, poll.
    Ssf(ssf::Endpoint),
    NotFound,
}

impl Route {
    /// The endpoints resource servers and clients call per request, not per change.
    const HOT: [Route; 5] = [
        Route::Token,
        Route::Introspect,
        Route::IntrospectBatch,
        Route::Jwks,
        Route::Gateway,
    ];

    fn hot(self) -> bool {
        Route::HOT.contains(&self)
    }

    fn of(path: &str) -> Route {
        match path {
            "/.well-known/oauth-authorization-server" => Route::Metadata,
            "/.well-known/jwks.json" => Route::Jwks,
            "/token" => Route::Token,
            "/introspect" => Route::Introspect,
            "/introspect/batch" => Route::IntrospectBatch,
            "/revoke" => Route::Revoke,
            "/admin/revoke" => Route::AdminRevoke,
            "/admin/keys" => Route::AdminKeys,
            "/admin/keys/rotate" => Route::AdminKeysRotate,
            "/admin/audit" => Route::AdminAudit,
            "/admin/store/recover" => Route::AdminStoreRecover,
            "/admin/scopes" => Route::AdminScopes,
            p if p == "/admin/contracts" || p.starts_with("/admin/contracts/") => {
                Route::AdminContracts
            }
            p if p == "/admin/grants" || p.starts_with("/admin/grants/") => Route::AdminGrants,
            p if p == "/grants" || p.starts_with("/grants/") => Route::Grants,
            "/admin/nodes" => Route::AdminNodes,
            p if p == gateway::PATH || p.starts_with("/gateway/check/") => Route::Gateway,
            "/healthz" => Route::Healthz,
            "/readyz" => Route::Readyz,
            "/statuslists" => Route::StatusLists,
            p if status::list_path(p).is_some() => Route::StatusList,
            p if key_to_revoke(p).is_some() => Route::AdminKeyRevoke,
            p if nodes::revocation_path(p).is_some() => Route::AdminRevocation,
            p => ssf::Endpoint::of(p).map_or(Route::NotFound, Route::Ssf),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Route::Metadata => "metadata",
            Route::Jwks => "jwks",
            Route::Token => "token",
            Route::Introspect => "introspect",
            Route::IntrospectBatch => "introspect_batch",
            Route::Revoke => "revoke",
            Route::AdminRevoke => "admin_revoke",
            Route::AdminKeys => "admin_keys",
            Route::AdminKeysRotate => "admin_keys_rotate",
            Route::AdminKeyRevoke => "admin_key_revoke",
            Route::AdminAudit => "admin_audit",
            Route::AdminStoreRecover => "admin_store_recover",
            Route::AdminContracts => "admin_contracts",
            Route::AdminScopes => "admin_scopes",
            Route::Grants => "grants",
            Route::AdminGrants => "admin_grants",
            Route::AdminNodes => "admin_nodes",
            Route::AdminRevocation => "admin_revocation",
            Route::Gateway => "gateway_check",
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::StatusList => "status_list",
            Route::StatusLists => "status_lists",
            Route::Ssf(e) => e.label(),
            Route::NotFound => "not_found",
        }
    }

    /// The method this route answers (for 405 and `Allow`).
    fn method(self) -> &'static str {
        match self {
            Route::Metadata
            | Route::Jwks
            | Route::AdminKeys
            | Route::AdminAudit
            | Route::AdminNodes
            | Route::AdminRevocation
            | Route::Healthz
            | Route::Readyz
            | Route::StatusList
            | Route::StatusLists => "GET",
            _ => "POST",
        }
    }
}

/// `/admin/keys/{kid}/revoke` → kid.
fn key_to_revoke(path: &str) -> Option<&str> {
    let kid = path.strip_prefix("/admin/keys/")?.strip_suffix("/revoke")?;
    (!kid.is_empty() && !kid.contains('/')).then_some(kid)
}

/// Headers latch reads that may appear once only: with two, which one counts would be
/// up to whoever parses first (a proxy, then latch), so the request is refused.
const SINGLETONS: [HeaderName; 4] = [
    AUTHORIZATION,
    CONTENT_TYPE,
    CONTENT_LENGTH,
    HeaderName::from_static(REQUEST_ID),
];

/// The service function: every request of the main listener enters here. `peer` is the
/// TCP peer's address.
pub async fn handle(
    app: App,
    mut req: Request<Incoming>,
    peer: IpAddr,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let started = Instant::now();
    let route = Route::of(req.uri().path());
    let address = attribute(&app, &mut req, peer);
    let duplicate = repeated_singleton(&req);
    // A repeated X-Request-Id is not echoed: which one would be up to us.
    let request_id = duplicate
        .is_none()
        .then(|| incoming_request_id(&req))
        .flatten()
        .unwrap_or_else(|| app.next_request_id());
    let result = match duplicate {
        Some(h) => Err(ApiError::InvalidRequest(format!("header {h} is repeated"))),
        None => {
            // Every log line of this request (use cases, store errors, audit) carries its id.
            // A span costs ~5 700 instructions per request with the fmt subscriber (+11 %
            // on introspect-hot, `scripts/instructions-per-request`): on the hot endpoints,
            // which log nothing at info when they succeed, it is a debug span
            // (`LATCH_LOG=info,latch::http=debug` turns it on).
            let span = if route.hot() {
                tracing::debug_span!("request", id = %request_id, endpoint = route.label())
            } else {
                tracing::info_span!("request", id = %request_id, endpoint = route.label())
            };
            within_deadline(&app, route, req, &request_id)
                .instrument(span)
                .await
        }
    };
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            if let ApiError::RateLimited(l) = &e {
                metrics::counter!(m::RATE_LIMITED_TOTAL, "endpoint" => route.label(), "limit" => l.limit.label())
                    .increment(1);
                tracing::debug!(%address, limit = l.limit.label(), "rate limited");
            }
            e.into_response()
        }
    };
    // The id's own buffer becomes the header's (no copy); it was checked to be visible
    // ASCII when it came from the caller, and is ours otherwise.
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(request_id)) {
        resp.headers_mut().insert(REQUEST_ID_NAME.clone(), v);
    }
    let status = status_index(resp.status());
    route_series(route, status, started.elapsed().as_secs_f64());
    Ok(resp)
}

/// Counts a request in `latch_requests_total` and records its duration. The hot routes'
/// series are registered on first use and kept, so their requests pay two atomic updates
/// instead of building a key and looking it up in the registry (the other routes do
/// that: they are not called per token).
fn route_series(route: Route, status: usize, seconds: f64) {
    const HOT: usize = Route::HOT.len();
    static REQUESTS: [[OnceLock<Counter>; STATUS_LABELS.len()]; HOT] =
        [const { [const { OnceLock::new() }; STATUS_LABELS.len()] }; HOT];
    static DURATIONS: [OnceLock<Histogram>; HOT] = [const { OnceLock::new() }; HOT];
    let label = route.label();
    let Some(hot) = Route::HOT.iter().position(|r| *r == route) else {
        metrics::counter!(m::REQUESTS_TOTAL, "endpoint" => label, "status" => STATUS_LABELS[status])
            .increment(1);
        metrics::histogram!(m::REQUEST_DURATION, "endpoint" => label).record(seconds);
        return;
    };
    REQUESTS[hot][status]
        .get_or_init(|| {
            metrics::counter!(m::REQUESTS_TOTAL, "endpoint" => label, "status" => STATUS_LABELS[status])
        })
        .increment(1);
    DURATIONS[hot]
        .get_or_init(|| metrics::histogram!(m::REQUEST_DURATION, "endpoint" => label))
        .record(seconds);
}

/// The address the request is attributed to (rate limits), stored as an extension.
fn attribute(app: &App, req: &mut Request<Incoming>, peer: IpAddr) -> IpAddr {
    let forwarded = req
        .headers()
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let address = crate::limits::client_address(peer, forwarded, &app.limits.proxies);
    req.extensions_mut().insert(ClientAddr(address));
    address
}

/// The first header of [`SINGLETONS`] that appears more than once.
fn repeated_singleton(req: &Request<Incoming>) -> Option<HeaderName> {
    SINGLETONS
        .into_iter()
        .find(|h| req.headers().get_all(h).iter().nth(1).is_some())
}

/// [`dispatch`] under `limits.handler_timeout`: past it, 503 (fail closed) and counted.
async fn within_deadline(
    app: &App,
    route: Route,
    req: Request<Incoming>,
    request_id: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let deadline = app.config.limits.handler_timeout;
    match tokio::time::timeout(deadline, dispatch(app, route, req, request_id)).await {
        Ok(result) => result,
        Err(_) => {
            metrics::counter!(m::DEADLINES_TOTAL, "phase" => "handler").increment(1);
            Err(ApiError::Unavailable(
                "request handler deadline passed".into(),
            ))
        }
    }
}

/// A caller-supplied request id, if it is short and plain enough to log and echo.
fn incoming_request_id(req: &Request<Incoming>) -> Option<String> {
    let v = req.headers().get(&REQUEST_ID_NAME)?.to_str().ok()?;
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    ok.then(|| v.to_string())
}

async fn dispatch(
    app: &App,
    route: Route,
    req: Request<Incoming>,
    request_id: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    if route == Route::NotFound {
        return Err(ApiError::NotFound);
    }
    if matches!(route, Route::AdminContracts | Route::AdminScopes) {
        // These paths answer GET and POST, by sub-path.
        return contracts::dispatch(app, req, request_id).await;
    }
    if matches!(route, Route::Grants | Route::AdminGrants) {
        return grants::dispatch(app, req, request_id).await;
    }
    if let Route::Ssf(endpoint) = route {
        return ssf::dispatch(app, endpoint, req, request_id).await;
    }
    if route == Route::Gateway {
        // Any method (gateways forward the user's); the body is never read.
        let (parts, _) = req.into_parts();
        return gateway::check(app, &parts).await;
    }
    let allowed = route.method();
    if req.method().as_str() != allowed {
        return Err(ApiError::MethodNotAllowed(allowed));
    }
    if req.method() == Method::GET {
        let (parts, _) = req.into_parts();
        return match route {
            Route::Metadata => Ok(bytes_response(
                StatusCode::OK,
                app.metadata.clone(),
                "application/json",
                "public, max-age=3600",
            )),
            Route::Jwks => Ok(bytes_response(
                StatusCode::OK,
                app.keys.with_ring(|r| r.jwks.clone()),
                "application/json",
                &format!("public, max-age={}", app.config.jwks_max_age().as_secs()),
            )),
            Route::Healthz => Ok(json_response(StatusCode::OK, &json!({"status": "ok"}))),
            Route::Readyz => Ok(readyz(app)),
            Route::StatusList => {
                let id = status::list_path(parts.uri.path()).unwrap_or_default();
                status::list(app, &parts, id).await
            }
            Route::StatusLists => status::aggregation(app).await,
            Route::AdminKeys => admin::list_keys(app, &parts),
            Route::AdminAudit => admin::audit(app, &parts).await,
            Route::AdminNodes => nodes::list(app, &parts, request_id).await,
            Route::AdminRevocation => {
                let seq = nodes::revocation_path(parts.uri.path()).unwrap_or_default();
                nodes::get(app, &parts, seq, request_id).await
            }
            _ => Err(ApiError::NotFound),
        };
    }
    let limits = &app.config.limits;
    let max_body = match route {
        Route::IntrospectBatch => app.config.introspection.batch_max_body_bytes,
        _ => limits.max_body_bytes,
    };
    let (parts, body) = read_body(req, max_body, limits.body_read_timeout).await?;
    match route {
        Route::Token | Route::Introspect | Route::Revoke => {
            require_content_type(&parts, FORM)?;
            let form = Form::parse(&body)?;
            match route {
                Route::Token => oauth::token(app, &parts, &form, request_id).await,
                Route::Introspect => introspection::introspect(app, &parts, &form).await,
                _ => oauth::revoke(app, &parts, &form, request_id).await,
            }
        }
        Route::IntrospectBatch => introspection::batch(app, &parts, &body).await,
        Route::AdminRevoke => admin::revoke(app, &parts, &body, request_id).await,
        Route::AdminKeysRotate => admin::rotate_keys(app, &parts, &body, request_id).await,
        Route::AdminStoreRecover => admin::recover_store(app, &parts, &body, request_id).await,
        Route::AdminKeyRevoke => {
            let kid = key_to_revoke(parts.uri.path())
                .unwrap_or_default()
                .to_string();
            admin::revoke_key(app, &parts, &kid, &body, request_id).await
        }
        _ => Err(ApiError::NotFound),
    }
}

/// 200 only when a key signs and the revocation state is fresh; otherwise 503 and why.
fn readyz(app: &App) -> Response<Full<Bytes>> {
    let now = now_ms();
    let reason = if app.keys.with_ring(|r| r.signer().is_none()) {
        Some("no signing key loaded")
    } else if app.fresh(now).is_err() {
        Some("revocation state is stale")
    } else if !app.store.feed_live() {
        // Without the subscription, revocations reach this node only through head checks.
        Some("store announcement feed is down")
    } else {
        None
    };
    match reason {
        None => json_response(StatusCode::OK, &json!({"status": "ready"})),
        Some(reason) => {
            let mut resp = json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "not_ready", "reason": reason}),
            );
            resp.headers_mut()
                .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
            resp
        }
    }
}

/// The `status` label values of `latch_requests_total`.
const STATUS_LABELS: [&str; 15] = [
    "200", "400", "401", "403", "404", "405", "413", "408", "415", "429", "500", "503", "2xx",
    "4xx", "5xx",
];

/// The index in [`STATUS_LABELS`] of a status.
fn status_index(s: StatusCode) -> usize {
    match s.as_u16() {
        200 => 0,
        400 => 1,
        401 => 2,
        403 => 3,
        404 => 4,
        405 => 5,
        413 => 6,
        408 => 7,
        415 => 8,
        429 => 9,
        500 => 10,
        503 => 11,
        c if c < 300 => 12,
        c if c < 500 => 13,
        _ => 14,
    }
}

/// The service function of the metrics listener.
pub async fn handle_metrics(
    app: App,
    req: Request<Incoming>,
    _peer: IpAddr,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => bytes_response(
            StatusCode::OK,
            Bytes::from(app.metrics.render()),
            "text/plain; version=0.0.4",
            "no-store",
        ),
        (_, "/metrics") => ApiError::MethodNotAllowed("GET").into_response(),
        _ => ApiError::NotFound.into_response(),
    };
    Ok(resp)
}
