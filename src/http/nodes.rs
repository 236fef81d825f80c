//! `GET /admin/nodes` and `GET /admin/revocations/{seq}` (role `admin`, audited reads):
//! parse, authenticate, call `app::nodes`, render. The judgments are `crate::nodes`'.

use bytes::Bytes;
use http_body_util::Full;
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use super::admin::admin;
use super::error::{json_response, ApiError};
use crate::app::{nodes, App};
use crate::nodes::{Confirmation, Epochs, NodeRecord, Proof};
use crate::revocation::{RevocationEvent, RevocationKind};
use crate::store::Head;

type Resp = Response<Full<Bytes>>;

/// `/admin/revocations/{seq}` → the seq text, if the path has that shape.
pub fn revocation_path(path: &str) -> Option<&str> {
    let seq = path.strip_prefix("/admin/revocations/")?;
    (!seq.is_empty() && !seq.contains('/')).then_some(seq)
}

/// A revocation seq as written in a path: decimal digits, 1 to `u64::MAX`.
pub fn parse_seq(text: &str) -> Result<u64, ApiError> {
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::InvalidRequest(
            "seq must be a decimal integer (the seq a revocation answered)".into(),
        ));
    }
    match text.parse::<u64>() {
        Ok(0) => Err(ApiError::InvalidRequest("seq must be at least 1".into())),
        Ok(seq) => Ok(seq),
        Err(_) => Err(ApiError::InvalidRequest(format!(
            "seq is out of range (at most {})",
            u64::MAX
        ))),
    }
}

/// `GET /admin/nodes`: the store's head, every node the registry holds, the newest
/// revocations and how far each got.
pub async fn list(app: &App, parts: &Parts, request_id: &str) -> Result<Resp, ApiError> {
    let client = admin(app, parts)?;
    let status = nodes::status(app, &client.id, request_id).await?;
    let now = status.registry.time_ms;
    let epochs = epochs(&status.head);
    let nodes: Vec<Value> = status
        .registry
        .nodes
        .iter()
        .map(|n| {
            let mut v = node(n, now);
            v["state"] = json!(n.state(&epochs, status.head.revocation_seq, now).as_str());
            v["lag"] = json!(n.lag(&epochs, status.head.revocation_seq));
            v["this_node"] = json!(n.id == status.this_node);
            v
        })
        .collect();
    let recent: Vec<Value> = status
        .recent
        .iter()
        .map(|e| {
            let proof = Proof::of(&status.registry, &epochs, e.clone());
            let mut v = revocation(e);
            v["confirmed"] = json!(proof.is_confirmed());
            v["reached_last_ms"] = json!(proof.reached_last_ms());
            v["counts"] = counts(&proof);
            v
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "store": store(&status.head, now),
            "nodes": nodes,
            "recent": recent,
        }),
    ))
}

/// `GET /admin/revocations/{seq}`: the revocation and, per node, applied (when), pending,
/// failing closed or gone.
pub async fn get(
    app: &App,
    parts: &Parts,
    seq_text: &str,
    request_id: &str,
) -> Result<Resp, ApiError> {
    let client = admin(app, parts)?;
    let seq = parse_seq(seq_text)?;
    let status = nodes::revocation(app, &client.id, seq, request_id).await?;
    let now = status.registry.time_ms;
    let epochs = epochs(&status.head);
    let proof = Proof::of(&status.registry, &epochs, status.revocation.clone());
    let rows: Vec<Value> = proof
        .nodes
        .iter()
        .map(|(n, c)| {
            let mut v = node(n, now);
            v["status"] = json!(c.as_str());
            let (at, on_start) = match c {
                Confirmation::Applied { at_ms, on_start } => (*at_ms, *on_start),
                _ => (None, false),
            };
            v["applied_at_ms"] = json!(at);
            v["after_ms"] = json!(at.map(|a| (a - status.revocation.revoked_at_ms).max(0)));
            v["on_start"] = json!(on_start);
            v
        })
        .collect();
    let mut body = revocation(&status.revocation);
    body["store_time_ms"] = json!(now);
    body["confirmed"] = json!(proof.is_confirmed());
    body["waiting_for"] = json!(proof
        .waiting_for()
        .iter()
        .map(|n| n.id.as_str())
        .collect::<Vec<_>>());
    body["counts"] = counts(&proof);
    body["reached_last_ms"] = json!(proof.reached_last_ms());
    body["nodes"] = json!(rows);
    Ok(json_response(StatusCode::OK, &body))
}

fn epochs(head: &Head) -> Epochs<'_> {
    Epochs {
        current: head.epoch,
        closed: &head.closed,
    }
}

fn store(head: &Head, now: i64) -> Value {
    json!({
        "time_ms": now,
        "epoch": format!("{:016x}", head.epoch),
        "revocation_seq": head.revocation_seq,
        "keys_version": head.keys_version,
    })
}

/// A node's record as the answers show it; ages are on the store's clock at `now`.
fn node(n: &NodeRecord, now: i64) -> Value {
    json!({
        "id": n.id,
        "name": n.name,
        "address": n.address,
        "version": n.version,
        "ready": n.ready,
        "epoch": format!("{:016x}", n.epoch),
        "applied": n.applied,
        "keys_version": n.keys_version,
        "started_at_ms": n.started_at_ms,
        "heartbeat_at_ms": n.heartbeat_at_ms,
        "heartbeat_age_ms": (now - n.heartbeat_at_ms).max(0),
        "fresh_at_ms": (n.fresh_at_ms > 0).then_some(n.fresh_at_ms),
        "fresh_age_ms": (n.fresh_at_ms > 0).then(|| (now - n.fresh_at_ms).max(0)),
        "max_staleness_ms": n.max_staleness_ms,
        "ttl_ms": n.ttl_ms,
    })
}

fn revocation(e: &RevocationEvent) -> Value {
    json!({
        "seq": e.seq,
        "kind": e.kind.as_str(),
        "value": match e.kind {
            RevocationKind::All => Value::Null,
            _ => json!(e.value),
        },
        "revoked_at": e.revoked_at_ms.div_euclid(1000),
        "revoked_at_ms": e.revoked_at_ms,
    })
}

fn counts(proof: &Proof<'_>) -> Value {
    json!({
        "applied": proof.count("applied"),
        "pending": proof.count("pending"),
        "failing_closed": proof.count("failing_closed"),
        "gone": proof.count("gone"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_in_paths() {
        for (text, want) in [("1", Some(1)), ("42", Some(42)), ("007", Some(7))] {
            assert_eq!(parse_seq(text).ok(), want, "{text}");
        }
        assert_eq!(parse_seq("18446744073709551615").ok(), Some(u64::MAX));
        for bad in [
            "0",
            "-1",
            "+1",
            "1e3",
            "0x10",
            "abc",
            "1.0",
            " 1",
            "%31",
            "18446744073709551616",
            "99999999999999999999999999999999999999",
        ] {
            assert!(parse_seq(bad).is_err(), "{bad}");
        }
        assert_eq!(revocation_path("/admin/revocations/12"), Some("12"));
        assert_eq!(revocation_path("/admin/revocations/"), None);
        assert_eq!(revocation_path("/admin/revocations/1/x"), None);
    }
}
