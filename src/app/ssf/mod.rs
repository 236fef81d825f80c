//! The Shared Signals transmitter's use cases (SSF 1.0 §7-8, RFC 8936): stream
//! management for receivers, verification, poll delivery, and the push delivery task
//! ([`delivery`]). Streams live in the store (`Store::ssf_*`); every change is a
//! compare-and-set on the stream's version, so nodes never lose each other's updates.
//! The SETs themselves come from the revocation log, read after the stream's cursor.

pub mod client;
pub mod delivery;
pub mod pusher;

use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::Notify;

use super::error::Error;
use super::App;
use crate::audit::NewAudit;
use crate::clients::Client;
use crate::config::{Config, ConfigError};
use crate::limits::{Limit, Limited};
use crate::metrics as m;
use crate::ssf::request::{self, Expected};
use crate::ssf::{self, set, Delivery, Pending, Pos, Status, Stream, Window, EVENTS_SUPPORTED};
use crate::store::StoreError;
use crate::time::now_ms;
use client::PushClient;

/// Log entries one poll's read of a stream's window takes at most (a poll returns up to
/// 1000 SETs).
const WINDOW_READ: usize = 1000;
/// Attempts of one compare-and-set loop before answering 503.
const CAS_ATTEMPTS: usize = 16;
/// A waiting poll re-reads the stream at least this often (a verification requested on
/// another node reaches it this way).
const POLL_RECHECK: Duration = Duration::from_millis(250);

/// The transmitter's per-node state.
pub struct Ssf {
    /// This node's name in the push lease.
    pub node: String,
    /// The rendered `/.well-known/ssf-configuration`.
    pub metadata: Bytes,
    /// Signs and pushes SETs, on a thread of lower priority than the request path.
    pub pusher: pusher::Pusher,
    /// Wakes the delivery task and waiting polls when a stream changed on this node.
    pub wake: Notify,
}

impl Ssf {
    /// The transmitter of `config`; reads `ssf.push_ca_file` (or the system roots).
    pub fn new(config: &Config) -> Result<Ssf, ConfigError> {
        let roots = push_roots(config)?;
        Ok(Ssf {
            node: format!("{}-{}", std::process::id(), crate::tokens::random_id()),
            metadata: Bytes::from(serde_json::to_vec(&metadata(config)).unwrap_or_default()),
            pusher: pusher::Pusher::start(PushClient::new(roots, config.ssf.push_timeout)),
            wake: Notify::new(),
        })
    }
}

/// Roots that verify `https` push endpoints.
fn push_roots(config: &Config) -> Result<rustls::RootCertStore, ConfigError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    match &config.ssf.push_ca_file {
        Some(path) => {
            let bad = |why: String| ConfigError::new("ssf.push_ca_file", why);
            let pem = std::fs::read(path)
                .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| bad(format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| bad(format!("{}: {e}", path.display())))?;
            }
            if roots.is_empty() {
                return Err(bad(format!("{}: holds no PEM certificate", path.display())));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    Ok(roots)
}

/// The transmitter configuration metadata (SSF 1.0 §7.1).
fn metadata(config: &Config) -> Value {
    let base = config.issuer_base();
    json!({
        "spec_version": ssf::SPEC_VERSION,
        "issuer": config.issuer,
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "delivery_methods_supported": [ssf::PUSH, ssf::POLL],
        "configuration_endpoint": format!("{base}/ssf/stream"),
        "status_endpoint": format!("{base}/ssf/status"),
        "verification_endpoint": format!("{base}/ssf/verify"),
        // Receivers authenticate with HTTP Basic, as every latch client does.
        "authorization_schemes": [{"spec_urn": "urn:ietf:rfc:7617"}],
        "default_subjects": "ALL",
    })
}

/// The poll `endpoint_url` of stream `id`.
fn poll_url(config: &Config, id: &str) -> String {
    format!("{}/ssf/poll/{id}", config.issuer_base())
}

/// `aud` of `client`'s streams: its configured audience, else its client id.
fn audience(config: &Config, client: &Client) -> String {
    config
        .ssf
        .receiver(&client.id)
        .and_then(|r| r.audience.clone())
        .unwrap_or_else(|| client.id.to_string())
}

/// Whether `endpoint` is one the operator configured for receiver `owner`.
pub fn push_allowed(config: &Config, owner: &str, endpoint: &str) -> bool {
    config
        .ssf
        .receiver(owner)
        .is_some_and(|r| r.push_endpoints.iter().any(|e| e == endpoint))
}

fn check_delivery(app: &App, owner: &str, delivery: &Delivery) -> Result<(), Error> {
    match delivery {
        Delivery::Push { endpoint_url, .. } if !push_allowed(&app.config, owner, endpoint_url) => {
            Err(Error::InvalidRequest(
                "delivery.endpoint_url is not a push endpoint configured for this receiver \
                 (ssf.receivers[].push_endpoints)"
                    .into(),
            ))
        }
        _ => Ok(()),
    }
}

/// A stream's configuration as the receiver sees it (SSF 1.0 §8.1.1).
pub fn render(config: &Config, s: &Stream) -> Value {
    let delivery = match &s.delivery {
        Delivery::Push {
            endpoint_url,
            authorization_header,
        } => {
            let mut d = json!({"method": ssf::PUSH, "endpoint_url": endpoint_url});
            if let Some(a) = authorization_header {
                d["authorization_header"] = json!(a);
            }
            d
        }
        Delivery::Poll => json!({"method": ssf::POLL, "endpoint_url": poll_url(config, &s.id)}),
    };
    let mut out = json!({
        "stream_id": s.id,
        "iss": config.issuer,
        "aud": s.aud,
        "events_supported": EVENTS_SUPPORTED,
        "events_delivered": s.events_delivered(),
        "delivery": delivery,
    });
    if let Some(asked) = &s.events_requested {
        out["events_requested"] = json!(asked);
    }
    if let Some(secs) = min_verification_interval(config) {
        out["min_verification_interval"] = json!(secs);
    }
    if let Some(d) = &s.description {
        out["description"] = json!(d);
    }
    out
}

fn min_verification_interval(config: &Config) -> Option<u64> {
    let secs = config.ssf.min_verification_interval.as_secs();
    (secs > 0).then_some(secs)
}

fn render_status(s: &Stream) -> Value {
    let mut out = json!({"stream_id": s.id, "status": s.status.as_str()});
    if let Some(r) = &s.reason {
        out["reason"] = json!(r);
    }
    out
}

fn invalid(why: String) -> Error {
    Error::InvalidRequest(why)
}

/// Stream `id` as stored, with its version, if it exists and belongs to `owner`
/// (another receiver's stream does not exist for this one: 404).
async fn load(app: &App, owner: &str, id: &str) -> Result<(Stream, u64), Error> {
    let stored = app
        .store
        .ssf_stream(id.to_string())
        .await?
        .ok_or(Error::NotFound("no such stream".into()))?;
    // A record that does not parse is the store's fault, like a corrupt refresh record.
    let stream = Stream::decode(&stored).map_err(StoreError::Unavailable)?;
    if stream.owner != owner {
        return Err(Error::NotFound("no such stream".into()));
    }
    Ok((stream, stored.version))
}

/// Loads, changes and saves stream `id` of `owner` until the compare-and-set holds.
async fn modify<F>(app: &App, owner: &str, id: &str, mut change: F) -> Result<Stream, Error>
where
    F: FnMut(&mut Stream) -> Result<(), Error>,
{
    for _ in 0..CAS_ATTEMPTS {
        let (mut stream, version) = load(app, owner, id).await?;
        change(&mut stream)?;
        match app
            .store
            .ssf_save_stream(id.to_string(), version, stream.encode())
            .await
        {
            Ok(_) => {
                app.ssf.wake.notify_waiters();
                return Ok(stream);
            }
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Unavailable(
        "the stream is changing too fast; retry".into(),
    ))
}

async fn audit(app: &App, client: &Client, action: &str, id: &str, request_id: &str) {
    let record = NewAudit {
        actor: client.id.to_string(),
        action: action.into(),
        target: format!("ssf_stream:{id}"),
        reason: String::new(),
        request_id: request_id.to_string(),
    };
    if let Err(error) = app.store.append_audit(record).await {
        tracing::warn!(%error, stream = id, action, "stream change not audited");
    }
}

// === stream management ===

/// POST to the configuration endpoint: a new stream, from the log's head on. 201.
pub async fn create(
    app: &App,
    client: &Client,
    body: &Value,
    request_id: &str,
) -> Result<Value, Error> {
    let fields = request::create(body).map_err(invalid)?;
    check_delivery(app, &client.id, &fields.delivery)?;
    let mine = owned(app, client).await?.len();
    if mine >= app.config.ssf.max_streams_per_receiver {
        return Err(Error::Conflict(format!(
            "this receiver already has {mine} streams, the most allowed \
             (ssf.max_streams_per_receiver); update or delete one"
        )));
    }
    let id = crate::tokens::random_id();
    let stream = Stream::new(
        id.clone(),
        client.id.to_string(),
        audience(&app.config, client),
        app.table.applied(),
        fields,
        now_ms(),
    );
    app.store
        .ssf_save_stream(id.clone(), 0, stream.encode())
        .await
        .map_err(|e| match e {
            StoreError::Conflict => Error::Unavailable("a new stream id collided; retry".into()),
            e => e.into(),
        })?;
    app.ssf.wake.notify_waiters();
    audit(app, client, "ssf_stream_create", &id, request_id).await;
    tracing::info!(stream = %id, receiver = %client.id, method = stream.delivery.label(), "ssf stream created");
    Ok(render(&app.config, &stream))
}

/// The streams of `client`, oldest first.
async fn owned(app: &App, client: &Client) -> Result<Vec<Stream>, Error> {
    let mut out = Vec::new();
    for stored in app.store.ssf_streams().await? {
        match Stream::decode(&stored) {
            Ok(s) if s.owner == *client.id => out.push(s),
            Ok(_) => {}
            Err(error) => tracing::error!(%error, "stream record skipped"),
        }
    }
    out.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
    Ok(out)
}

/// GET the configuration endpoint: one stream, or (no `stream_id`) every stream of the
/// receiver as an array.
pub async fn read(app: &App, client: &Client, id: Option<&str>) -> Result<Value, Error> {
    match id {
        Some(id) => Ok(render(&app.config, &load(app, &client.id, id).await?.0)),
        None => Ok(Value::Array(
            owned(app, client)
                .await?
                .iter()
                .map(|s| render(&app.config, s))
                .collect(),
        )),
    }
}

/// PATCH (`replace` false) or PUT (`replace` true) of the configuration endpoint.
pub async fn update(
    app: &App,
    client: &Client,
    body: &Value,
    replace: bool,
    request_id: &str,
) -> Result<Value, Error> {
    let id = request::stream_id(body).map_err(invalid)?.to_string();
    let stream = modify(app, &client.id, &id, |s| {
        let poll_url = poll_url(&app.config, &s.id);
        let expected = Expected {
            issuer: &app.config.issuer,
            stream: s,
            min_verification_interval: min_verification_interval(&app.config),
            poll_url: &poll_url,
        };
        let fields = request::update(body, &expected, replace).map_err(invalid)?;
        check_delivery(app, &s.owner, &fields.delivery)?;
        s.events_requested = fields.events_requested;
        s.delivery = fields.delivery;
        s.description = fields.description;
        Ok(())
    })
    .await?;
    audit(app, client, "ssf_stream_update", &id, request_id).await;
    Ok(render(&app.config, &stream))
}

/// DELETE of the configuration endpoint. 204.
pub async fn delete(app: &App, client: &Client, id: &str, request_id: &str) -> Result<(), Error> {
    load(app, &client.id, id).await?;
    if !app.store.ssf_delete_stream(id.to_string()).await? {
        return Err(Error::NotFound("no such stream".into()));
    }
    app.ssf.wake.notify_waiters();
    audit(app, client, "ssf_stream_delete", id, request_id).await;
    tracing::info!(stream = %id, receiver = %client.id, "ssf stream deleted");
    Ok(())
}

/// GET of the status endpoint.
pub async fn status(app: &App, client: &Client, id: &str) -> Result<Value, Error> {
    Ok(render_status(&load(app, &client.id, id).await?.0))
}

/// POST of the status endpoint.
pub async fn set_status(
    app: &App,
    client: &Client,
    body: &Value,
    request_id: &str,
) -> Result<Value, Error> {
    let id = request::stream_id(body).map_err(invalid)?.to_string();
    let (status, reason) = request::status(body).map_err(invalid)?;
    let head = app.table.applied();
    let stream = modify(app, &client.id, &id, |s| {
        s.set_status(status, reason.clone(), head);
        Ok(())
    })
    .await?;
    audit(
        app,
        client,
        &format!("ssf_stream_{}", status.as_str()),
        &id,
        request_id,
    )
    .await;
    Ok(render_status(&stream))
}

/// POST of the verification endpoint: a verification event is queued after every
/// revocation this node has applied. 204.
pub async fn verify(app: &App, client: &Client, body: &Value) -> Result<(), Error> {
    let id = request::stream_id(body).map_err(invalid)?.to_string();
    let state = request::verification(body).map_err(invalid)?;
    let interval_ms = app.config.ssf.min_verification_interval.as_millis() as i64;
    let head = app.table.applied();
    modify(app, &client.id, &id, |s| {
        let now = now_ms();
        let wait_ms = s.last_verification_ms + interval_ms - now;
        if wait_ms > 0 || s.control.len() >= ssf::MAX_CONTROL {
            return Err(Error::RateLimited(Limited {
                limit: Limit::SsfVerification,
                retry_after_secs: (wait_ms.max(1000) as u64).div_ceil(1000),
            }));
        }
        s.queue_verification(state.clone(), head, now);
        Ok(())
    })
    .await?;
    Ok(())
}

// === delivery ===

/// The log after `stream`'s cursor, up to what this node applied, at most `read` entries.
pub async fn window(app: &App, stream: &Stream, read: usize) -> Result<Window, StoreError> {
    let applied = app.table.applied();
    // Parts 0 and 1 are revocations: past part 1, the cursor's own seq is done.
    let after = if stream.cursor.part >= 1 {
        stream.cursor.seq
    } else {
        stream.cursor.seq.saturating_sub(1)
    };
    if after >= applied {
        return Ok(Window {
            events: Vec::new(),
            upto: applied,
        });
    }
    let page = app.store.revocations_after(after, 0, read).await?;
    let last = page.last().map(|e| e.seq);
    let full = page.len() == read;
    let events: Vec<_> = page.into_iter().filter(|e| e.seq <= applied).collect();
    let upto = match last {
        Some(last) if full && last <= applied => last,
        _ => applied,
    };
    Ok(Window { events, upto })
}

/// Signs the SETs of `pending` on `stream`. Fails closed (503) on a stale node, whose key
/// ring may be behind.
pub fn sign_all(
    app: &App,
    stream: &Stream,
    pending: &[Pending],
) -> Result<Vec<(Pos, String)>, Error> {
    let view = app.fresh(now_ms())?;
    let iat = view.now_ms().div_euclid(1000);
    pending
        .iter()
        .map(|p| {
            let claims = set::claims(stream, p, &app.config.issuer, iat);
            Ok((p.pos, view.sign_set(&claims)?))
        })
        .collect()
}

/// An RFC 8936 poll of stream `id`: acknowledgements first, then up to `maxEvents`
/// pending SETs, waiting up to `ssf.poll_wait` for one unless `returnImmediately`.
pub async fn poll(app: &App, client: &Client, id: &str, body: &Value) -> Result<Value, Error> {
    let req = request::poll(body, app.config.ssf.poll_max_events).map_err(invalid)?;
    let wait = app.config.ssf.poll_wait(app.config.limits.handler_timeout);
    let deadline = tokio::time::Instant::now() + wait;
    let mut changes = app.table.changes();
    let mut acks: Vec<Pos> = req
        .ack
        .iter()
        .chain(req.set_errs.iter().map(|(jti, _)| jti))
        .filter_map(|jti| ssf::parse_jti(id, jti))
        .collect();
    if let Some((jti, err)) = req.set_errs.first() {
        // One line per poll, however many it reports.
        tracing::warn!(stream = %id, count = req.set_errs.len(), first_jti = %jti, first_err = %err,
            "receiver could not process SETs (counted as delivered)");
    }
    loop {
        let (mut stream, version) = load(app, &client.id, id).await?;
        if stream.delivery != Delivery::Poll {
            return Err(Error::InvalidRequest("this stream delivers by push".into()));
        }
        let win = window(app, &stream, WINDOW_READ).await?;
        let before = stream.cursor;
        if ssf::mark_delivered(&mut stream, &win, &app.config.issuer, &acks) {
            match app
                .store
                .ssf_save_stream(id.to_string(), version, stream.encode())
                .await
            {
                Ok(_) => {
                    let n = acks.iter().filter(|p| **p > before).count();
                    metrics::counter!(m::SSF_SETS_DELIVERED, "method" => "poll")
                        .increment(n as u64);
                }
                // Someone else moved the stream: take the acks again from the new state.
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        acks.clear();
        let win = if stream.cursor != before {
            window(app, &stream, WINDOW_READ).await?
        } else {
            win
        };
        let limit = req.max_events;
        let mut pending = ssf::pending(&stream, &win, &app.config.issuer, limit.saturating_add(1));
        let more = pending.len() > limit || win.upto < app.table.applied();
        pending.truncate(limit);
        let now = tokio::time::Instant::now();
        if !pending.is_empty() || req.return_immediately || limit == 0 || now >= deadline {
            let sets: serde_json::Map<String, Value> = sign_all(app, &stream, &pending)?
                .into_iter()
                .map(|(pos, set)| (ssf::jti(id, pos), Value::String(set)))
                .collect();
            return Ok(
                json!({ "sets": sets, "moreAvailable": more && stream.status == Status::Enabled }),
            );
        }
        let wake = app.ssf.wake.notified();
        tokio::select! {
            _ = changes.changed() => {}
            _ = wake => {}
            _ = tokio::time::sleep_until(deadline.min(now + POLL_RECHECK)) => {}
        }
    }
}
