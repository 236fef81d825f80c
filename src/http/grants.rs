//! Just-in-time elevation endpoints (JSON). `/grants`: any authenticated client requests
//! an elevation for itself and sees its own grants. `/admin/grants` (role `admin`, one
//! admin client per person): list, show, approve, deny, revoke. Parses, authenticates,
//! calls `app::grants`, renders.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::admin::{admin, parse_json};
use super::error::{json_response, ApiError};
use super::request::{authenticate, read_body};
use crate::app::grants::{self as uc, Action, Filter};
use crate::app::App;
use crate::contracts::files::parse_time;
use crate::grants::{self, Grant, Status};

type Resp = Response<Full<Bytes>>;

/// What a request under `/grants` or `/admin/grants` asks for.
#[derive(Debug, PartialEq, Eq)]
enum Op {
    Request,
    Mine,
    MineOne(String),
    List,
    Show(String),
    Decide(String, Action),
}

/// The operation for `method` on `path`; 404 for an unknown path, 405 with the method
/// the path answers.
fn op(method: &Method, path: &str) -> Result<Op, ApiError> {
    let get = method == Method::GET;
    let post = method == Method::POST;
    let wrong = |allowed: &'static str| Err(ApiError::MethodNotAllowed(allowed));
    let (admin, rest) = match path.strip_prefix("/admin/grants") {
        Some(rest) => (true, rest),
        None => (
            false,
            path.strip_prefix("/grants").ok_or(ApiError::NotFound)?,
        ),
    };
    let segments: Vec<&str> = rest.split('/').skip(1).collect();
    let id = |s: &str| -> Result<String, ApiError> {
        if grants::valid_id(s) {
            Ok(s.to_string())
        } else {
            Err(ApiError::NoSuch(format!(
                "no grant {:?}: a grant id is g- and up to 62 letters, digits, - or _",
                s.chars().take(64).collect::<String>()
            )))
        }
    };
    match (admin, segments.as_slice()) {
        (false, []) if post => Ok(Op::Request),
        (false, []) if get => Ok(Op::Mine),
        (false, []) => wrong("GET, POST"),
        (false, [g]) if get => Ok(Op::MineOne(id(g)?)),
        (false, [_]) => wrong("GET"),
        (true, []) if get => Ok(Op::List),
        (true, []) => wrong("GET"),
        (true, [g]) if get => Ok(Op::Show(id(g)?)),
        (true, [_]) => wrong("GET"),
        (true, [g, verb @ ("approve" | "deny" | "revoke")]) => {
            if !post {
                return wrong("POST");
            }
            let action = match *verb {
                "approve" => Action::Approve,
                "deny" => Action::Deny,
                _ => Action::Revoke,
            };
            Ok(Op::Decide(id(g)?, action))
        }
        _ => Err(ApiError::NotFound),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestBody {
    scope: String,
    /// A user of the client's sessions, as its tokens name it (absent: the client).
    #[serde(default)]
    subject: Option<String>,
    duration_secs: u64,
    /// RFC 3339 (`Z` required); absent: at approval.
    #[serde(default)]
    start_at: Option<String>,
    #[serde(default)]
    justification: String,
    #[serde(default)]
    ticket: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    reason: String,
    /// The version the decider read: decide on it only (409 if it changed).
    #[serde(default)]
    version: Option<u64>,
}

/// Every request of the two paths enters here.
pub async fn dispatch(
    app: &App,
    req: Request<Incoming>,
    request_id: &str,
) -> Result<Resp, ApiError> {
    let op = op(req.method(), req.uri().path())?;
    let limits = &app.config.limits;
    let (parts, body) = read_body(req, limits.max_body_bytes, limits.body_read_timeout).await?;
    match op {
        Op::Request | Op::Mine | Op::MineOne(_) => {
            let client = authenticate(app, &parts, None)?;
            crate::policy::not_suspended(&client).map_err(ApiError::Refused)?;
            match op {
                Op::Request => {
                    let b: RequestBody = parse_json(&parts, &body)?;
                    let start_at_ms = match b.start_at.as_deref() {
                        None | Some("") => None,
                        Some(t) => Some(parse_time(t).ok_or_else(|| {
                            ApiError::InvalidRequest(
                                "start_at must be an RFC 3339 time with a zone, e.g. 2026-01-02T03:04:05Z"
                                    .into(),
                            )
                        })?),
                    };
                    let req = grants::Request {
                        scope: b.scope,
                        subject: b.subject,
                        duration_secs: b.duration_secs,
                        start_at_ms,
                        justification: b.justification,
                        ticket: b.ticket,
                    };
                    let g = uc::request(app, &client.id, req, request_id).await?;
                    let now = crate::time::now_ms();
                    Ok(json_response(StatusCode::CREATED, &render(&g, now)))
                }
                Op::Mine => {
                    let mut filter = filter(parts.uri.query())?;
                    filter.client = Some(client.id.to_string());
                    listing(app, &filter)
                }
                Op::MineOne(id) => {
                    let (now, g) = uc::show(app, &id, Some(&client.id))?;
                    Ok(json_response(StatusCode::OK, &render(&g, now)))
                }
                _ => Err(ApiError::NotFound),
            }
        }
        Op::List => {
            admin(app, &parts)?;
            listing(app, &filter(parts.uri.query())?)
        }
        Op::Show(id) => {
            admin(app, &parts)?;
            let (now, g) = uc::show(app, &id, None)?;
            Ok(json_response(StatusCode::OK, &render(&g, now)))
        }
        Op::Decide(id, action) => {
            let client = admin(app, &parts)?;
            let b: DecisionBody = parse_json(&parts, &body)?;
            let g = uc::decide(
                app, &client.id, &id, action, &b.reason, b.version, request_id,
            )
            .await?;
            let now = crate::time::now_ms();
            Ok(json_response(StatusCode::OK, &render(&g, now)))
        }
    }
}

fn listing(app: &App, filter: &Filter) -> Result<Resp, ApiError> {
    let (now, found) = uc::list(app, filter)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "grants": found.iter().map(|g| render(g, now)).collect::<Vec<_>>() }),
    ))
}

/// `?status=&client=&scope=&approver=`; unknown keys and bad statuses are 400.
fn filter(query: Option<&str>) -> Result<Filter, ApiError> {
    let mut f = Filter::default();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let v = v.into_owned();
        match k.as_ref() {
            "status" => {
                f.status = Some(Status::parse(&v).ok_or_else(|| {
                    ApiError::InvalidRequest(
                    "status is one of requested, approved, active, ended, expired, denied, revoked"
                        .into(),
                )
                })?)
            }
            "client" => f.client = Some(v),
            "scope" => f.scope = Some(v),
            "subject" => f.subject = Some(v),
            "approver" => f.approver = Some(v),
            other => {
                return Err(ApiError::InvalidRequest(format!(
                    "unknown parameter {:?}: use status, client, scope, subject or approver",
                    other.chars().take(64).collect::<String>()
                )))
            }
        }
    }
    Ok(f)
}

/// A grant as answered: the record with its status at `now_ms`.
fn render(g: &Grant, now_ms: i64) -> Value {
    let mut v = serde_json::to_value(g).unwrap_or(Value::Null);
    v["status"] = json!(g.status(now_ms).as_str());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_operations() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(op(&post, "/grants").unwrap(), Op::Request);
        assert_eq!(op(&get, "/grants").unwrap(), Op::Mine);
        assert_eq!(
            op(&get, "/grants/g-abc").unwrap(),
            Op::MineOne("g-abc".into())
        );
        assert_eq!(op(&get, "/admin/grants").unwrap(), Op::List);
        assert_eq!(
            op(&get, "/admin/grants/g-abc").unwrap(),
            Op::Show("g-abc".into())
        );
        assert_eq!(
            op(&post, "/admin/grants/g-abc/revoke").unwrap(),
            Op::Decide("g-abc".into(), Action::Revoke)
        );
        assert!(matches!(
            op(&get, "/admin/grants/g-abc/approve"),
            Err(ApiError::MethodNotAllowed(_))
        ));
        assert!(matches!(
            op(&post, "/admin/grants"),
            Err(ApiError::MethodNotAllowed(_))
        ));
        assert!(matches!(op(&get, "/grants/nope"), Err(ApiError::NoSuch(_))));
        assert!(matches!(
            op(&get, "/admin/grants/g-a/b/c"),
            Err(ApiError::NotFound)
        ));
        assert!(matches!(
            op(&Method::DELETE, "/grants"),
            Err(ApiError::MethodNotAllowed(_))
        ));
    }
}
