//! The contracts admin API (role `admin`, JSON): list, history, show, amend, cancel,
//! roll back, promote, and the scope registry. Parses, authenticates, calls
//! `app::contracts`, renders.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::admin::{admin, parse_json};
use super::error::{json_response, ApiError};
use super::request::read_body;
use crate::app::contracts::{self as uc, Proposal};
use crate::app::App;
use crate::contracts::{
    client_doc, files::parse_time, Amendment, Body, Contract, Registry, REGISTRY,
};
use crate::time::now_ms;

type Resp = Response<Full<Bytes>>;

/// Contract documents can be larger than an OAuth form; still bounded.
const MAX_CONTRACT_BODY: usize = 256 * 1024;

/// What a request under `/admin/contracts` or `/admin/scopes` asks for.
#[derive(Debug, PartialEq, Eq)]
enum Op {
    List,
    History(String),
    Show(String, u64),
    Amend(String),
    Cancel(String, u64),
    Rollback(String),
    Promote(String),
    Registry,
    AmendRegistry,
}

fn version(text: &str) -> Result<u64, ApiError> {
    text.parse::<u64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| ApiError::InvalidRequest("a version is a positive integer".into()))
}

/// The operation for `method` on `path`; 404 for an unknown path, 405 with the method
/// the path answers.
fn op(method: &Method, path: &str) -> Result<Op, ApiError> {
    let get = method == Method::GET;
    let post = method == Method::POST;
    let wrong = |allowed: &'static str| Err(ApiError::MethodNotAllowed(allowed));
    if path == "/admin/scopes" {
        return match () {
            _ if get => Ok(Op::Registry),
            _ if post => Ok(Op::AmendRegistry),
            _ => wrong("GET, POST"),
        };
    }
    let rest = path
        .strip_prefix("/admin/contracts")
        .ok_or(ApiError::NotFound)?;
    // Segments are percent-decoded (a client id may hold characters a URI escapes); a
    // segment that does not decode to UTF-8 names nothing.
    let decoded: Vec<String> = rest
        .split('/')
        .skip(1)
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|d| d.into_owned())
                .map_err(|_| ApiError::NotFound)
        })
        .collect::<Result<_, _>>()?;
    let parts: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let valid = |s: &str| !s.is_empty() && s.len() <= 128 && !s.contains(':');
    match parts.as_slice() {
        [] if get => Ok(Op::List),
        [] => wrong("GET"),
        [c] if valid(c) && get => Ok(Op::History(c.to_string())),
        [c] if valid(c) && post => Ok(Op::Amend(c.to_string())),
        [c] if valid(c) => wrong("GET, POST"),
        [c, "rollback"] if valid(c) && post => Ok(Op::Rollback(c.to_string())),
        [c, "promote"] if valid(c) && post => Ok(Op::Promote(c.to_string())),
        [c, "rollback" | "promote"] if valid(c) => wrong("POST"),
        [c, v] if valid(c) && get => Ok(Op::Show(c.to_string(), version(v)?)),
        [c, _] if valid(c) => wrong("GET"),
        [c, v, "cancel"] if valid(c) && post => Ok(Op::Cancel(c.to_string(), version(v)?)),
        [c, _, "cancel"] if valid(c) => wrong("POST"),
        _ => Err(ApiError::NotFound),
    }
}

/// Every request of the two paths enters here.
pub async fn dispatch(
    app: &App,
    req: Request<Incoming>,
    request_id: &str,
) -> Result<Resp, ApiError> {
    let op = op(req.method(), req.uri().path())?;
    let limit = app.config.limits.max_body_bytes.max(MAX_CONTRACT_BODY);
    let (parts, body) = read_body(req, limit, app.config.limits.body_read_timeout).await?;
    let client = admin(app, &parts)?;
    let actor = client.id.as_str();
    let now = now_ms();
    let answer = match op {
        Op::List => list(app, now),
        Op::History(c) => {
            let doc = client_doc(&c);
            let book = app.contracts.book();
            if book.history(&doc).is_empty() {
                return Err(ApiError::NotFound);
            }
            json!({
                "client": c,
                "history": book.history(&doc).iter().map(|e| render(&e.amendment, e.cancelled, &book, now)).collect::<Vec<_>>(),
            })
        }
        Op::Show(c, v) => {
            let doc = client_doc(&c);
            let book = app.contracts.book();
            let e = book.version(&doc, v).ok_or(ApiError::NotFound)?;
            render(&e.amendment, e.cancelled, &book, now)
        }
        Op::Registry => {
            let book = app.contracts.book();
            let in_force = book.in_force(REGISTRY, now);
            json!({
                "version": in_force.map_or(0, |a| a.version),
                "latest_version": book.latest_version(REGISTRY),
                "registry": in_force.and_then(Amendment::registry).cloned().unwrap_or_default(),
            })
        }
        Op::Amend(c) => {
            let r: AmendBody = parse_json(&parts, &body)?;
            let proposal = Proposal {
                doc: client_doc(&c),
                base_version: r.base_version,
                body: Body::Contract(r.contract),
                changelog: r.changelog,
                reason: r.reason,
                effective_at_ms: effective(r.effective_at.as_deref())?,
                rollback_of: None,
            };
            written(app, uc::amend(app, actor, proposal, request_id).await?)
        }
        Op::AmendRegistry => {
            let r: RegistryBody = parse_json(&parts, &body)?;
            let proposal = Proposal {
                doc: REGISTRY.into(),
                base_version: r.base_version,
                body: Body::Registry(r.registry),
                changelog: r.changelog,
                reason: r.reason,
                effective_at_ms: effective(r.effective_at.as_deref())?,
                rollback_of: None,
            };
            written(app, uc::amend(app, actor, proposal, request_id).await?)
        }
        Op::Cancel(c, v) => {
            let r: ReasonBody = parse_json(&parts, &body)?;
            uc::cancel(app, actor, &client_doc(&c), v, &r.reason, request_id).await?;
            let book = app.contracts.book();
            let e = book.version(&client_doc(&c), v).ok_or(ApiError::NotFound)?;
            render(&e.amendment, true, &book, now_ms())
        }
        Op::Rollback(c) => {
            let r: RollbackBody = parse_json(&parts, &body)?;
            let a = uc::rollback(
                app,
                actor,
                &client_doc(&c),
                r.to,
                r.base_version,
                &r.reason,
                request_id,
            )
            .await?;
            written(app, a)
        }
        Op::Promote(c) => {
            let r: PromoteBody = parse_json(&parts, &body)?;
            let audience = match r.kind.as_str() {
                "scope" => false,
                "audience" => true,
                _ => {
                    return Err(ApiError::InvalidRequest(
                        "kind must be scope or audience".into(),
                    ))
                }
            };
            let a = uc::promote(
                app,
                actor,
                &client_doc(&c),
                &r.name,
                audience,
                r.base_version,
                &r.reason,
                effective(r.effective_at.as_deref())?,
                request_id,
            )
            .await?;
            written(app, a)
        }
    };
    Ok(json_response(StatusCode::OK, &answer))
}

fn effective(text: Option<&str>) -> Result<Option<i64>, ApiError> {
    match text {
        None => Ok(None),
        Some(t) => parse_time(t).map(Some).ok_or_else(|| {
            ApiError::InvalidRequest(
                "effective_at must be an RFC 3339 time like 2026-12-01T09:00:00Z".into(),
            )
        }),
    }
}

fn written(app: &App, a: Amendment) -> Value {
    let book = app.contracts.book();
    render(&a, false, &book, now_ms())
}

fn rfc3339(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// An amendment as the API shows it.
fn render(a: &Amendment, cancelled: bool, book: &crate::contracts::Book, now: i64) -> Value {
    let in_force = book
        .in_force(&a.doc, now)
        .is_some_and(|f| f.version == a.version);
    json!({
        "doc": a.doc,
        "version": a.version,
        "effective_at": rfc3339(a.effective_at_ms),
        "effective_at_ms": a.effective_at_ms,
        "recorded_at_ms": a.recorded_at_ms,
        "changelog": a.changelog,
        "author": a.author,
        "reason": a.reason,
        "rollback_of": a.rollback_of,
        "cancelled": cancelled,
        "in_force": in_force,
        "body": a.body,
    })
}

fn list(app: &App, now: i64) -> Value {
    let book = app.contracts.book();
    let mut rows: Vec<Value> = app
        .clients
        .iter()
        .map(|c| {
            let doc = client_doc(&c.id);
            let in_force = book.in_force(&doc, now);
            let stage = |stage: crate::contracts::Stage| -> Vec<String> {
                in_force
                    .and_then(Amendment::contract)
                    .map(|k| {
                        k.scopes
                            .iter()
                            .chain(k.audiences.iter())
                            .filter(|(_, s)| **s == stage)
                            .map(|(n, _)| n.clone())
                            .collect()
                    })
                    .unwrap_or_default()
            };
            json!({
                "client": c.id.as_str(),
                "version_in_force": in_force.map_or(0, |a| a.version),
                "effective_at": in_force.map(|a| rfc3339(a.effective_at_ms)),
                "latest_version": book.latest_version(&doc),
                "scheduled": book.scheduled(&doc, now).iter().map(|a| a.version).collect::<Vec<_>>(),
                "shadow": stage(crate::contracts::Stage::Shadow),
                "deprecated": stage(crate::contracts::Stage::Deprecated),
                "suspended": in_force.and_then(Amendment::contract).is_some_and(|k| k.suspended),
            })
        })
        .collect();
    rows.sort_by(|a, b| a["client"].as_str().cmp(&b["client"].as_str()));
    json!({ "contracts": rows })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AmendBody {
    base_version: u64,
    contract: Contract,
    #[serde(default)]
    changelog: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    effective_at: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryBody {
    base_version: u64,
    registry: Registry,
    #[serde(default)]
    changelog: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    effective_at: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    to: u64,
    base_version: u64,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromoteBody {
    name: String,
    kind: String,
    base_version: u64,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    effective_at: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_methods_map_to_operations() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(op(&get, "/admin/contracts").unwrap(), Op::List);
        assert_eq!(
            op(&get, "/admin/contracts/svc").unwrap(),
            Op::History("svc".into())
        );
        assert_eq!(
            op(&post, "/admin/contracts/svc").unwrap(),
            Op::Amend("svc".into())
        );
        assert_eq!(
            op(&get, "/admin/contracts/svc/3").unwrap(),
            Op::Show("svc".into(), 3)
        );
        assert_eq!(
            op(&post, "/admin/contracts/svc/3/cancel").unwrap(),
            Op::Cancel("svc".into(), 3)
        );
        assert_eq!(
            op(&post, "/admin/contracts/svc/rollback").unwrap(),
            Op::Rollback("svc".into())
        );
        assert_eq!(
            op(&post, "/admin/contracts/svc/promote").unwrap(),
            Op::Promote("svc".into())
        );
        assert_eq!(op(&get, "/admin/scopes").unwrap(), Op::Registry);
        assert_eq!(op(&post, "/admin/scopes").unwrap(), Op::AmendRegistry);
        assert!(matches!(
            op(&get, "/admin/contracts/svc/x"),
            Err(ApiError::InvalidRequest(_))
        ));
        assert!(matches!(
            op(&get, "/admin/contracts/svc/99999999999999999999999"),
            Err(ApiError::InvalidRequest(_))
        ));
        assert!(matches!(
            op(&get, "/admin/contracts/svc/0"),
            Err(ApiError::InvalidRequest(_))
        ));
        assert!(matches!(
            op(&Method::DELETE, "/admin/contracts"),
            Err(ApiError::MethodNotAllowed(_))
        ));
        assert!(matches!(
            op(&get, "/admin/contracts/svc/1/2/3"),
            Err(ApiError::NotFound)
        ));
        assert!(matches!(
            op(&get, "/admin/contracts//"),
            Err(ApiError::NotFound)
        ));
        assert_eq!(
            op(&get, "/admin/contracts/a%2Fb").unwrap(),
            Op::History("a/b".into())
        );
        assert!(matches!(
            op(&get, "/admin/contracts/%FF"),
            Err(ApiError::NotFound)
        ));
    }
}
