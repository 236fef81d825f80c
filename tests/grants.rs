//! Just-in-time elevation (issue 11), tested as a requester, approvers and an attacker
//! would: the policy lives in the client's contract; a request waits for distinct
//! approvers; tokens carry the elevated scope only while the grant is active, with a
//! claim naming it and an `exp` no later than its end; the grant ends by the clock, or at
//! once on every node when revoked; concurrent decisions have exactly one outcome; every
//! hostile input gets a clear refusal; every transition is audited with its actor.
//!
//! Nothing asserts on timing: propagation polls to [`DEADLINE`]; where the clock decides
//! (a grant's end), the test waits until its own clock is past the instant, which the
//! server's clock (the same machine's) then is too.

use std::time::{Duration, UNIX_EPOCH};

use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use testkit::clients::{self, ORDERS_AUD};
use testkit::prelude::*;

const ORDERS: &str = "orders-service";
/// An elevation: 1 approval from the on-call group or security-admin.
const REFUND: &str = "orders:refund-any";
/// A sensitive elevation: 2 distinct on-call approvals and a ticket.
const ADMIN: &str = "orders:admin";
/// An elevation whose requests expire after 1 s.
const EXPORT: &str = "orders:export";

// === time ===

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms as u64)).to_string()
}

/// Waits until the wall clock is past `ms`.
async fn wait_past(ms: i64) {
    while now_ms() <= ms {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// === people ===

fn person(id: &str) -> ClientDef {
    ClientDef::new(id).roles(&["admin"])
}

/// The on-call approvers, one admin client per person.
fn alice() -> ClientDef {
    person("alice-oncall")
}
fn bob() -> ClientDef {
    person("bob-oncall")
}
fn carol() -> ClientDef {
    person("carol-oncall")
}
/// An admin who approves nothing.
fn mallory() -> ClientDef {
    person("mallory-admin")
}
/// An admin that is also a service, with an elevation it may not approve itself.
fn ops_bot() -> ClientDef {
    ClientDef::new("ops-bot")
        .roles(&["admin"])
        .grants(&["client_credentials"])
        .scopes(&["orders:read"])
        .audiences(&[ORDERS_AUD])
}

/// A session issuer: an IdP hook whose users' sessions may be elevated.
fn hook() -> ClientDef {
    ClientDef::new("idp-hook")
        .grants(&[TE, "refresh_token"])
        .scopes(&["orders:read"])
        .audiences(&[ORDERS_AUD])
        .roles(&["session_issuer"])
}

const TE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

fn idp() -> Idp {
    Idp::new("https://idp.grants.test")
}

fn builder() -> ServerBuilder {
    builder_with(&idp())
}

/// The server's clients, trusting `idp`'s assertions.
fn builder_with(idp: &Idp) -> ServerBuilder {
    let mut all = clients::standard();
    all.extend([alice(), bob(), carol(), mallory(), ops_bot(), hook()]);
    TestServer::builder()
        .clients(all)
        .trusted_issuer(idp.trusted())
}

// === calls ===

fn auth(c: &ClientDef) -> String {
    basic(&c.id, &c.secret)
}

async fn call(
    s: &TestServer,
    who: &ClientDef,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Resp {
    let a = auth(who);
    let mut headers = vec![("authorization", a.as_str())];
    let bytes = match body {
        Some(b) => {
            headers.push(("content-type", "application/json"));
            serde_json::to_vec(b).unwrap()
        }
        None => Vec::new(),
    };
    s.http.request(method, path, &headers, bytes).await
}

fn ok(r: &Resp, status: StatusCode, what: &str) -> Value {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    r.json()
}

/// A refusal: status, error code and the stable reason.
fn refused(r: &Resp, status: u16, reason: &str) {
    assert_eq!(r.status.as_u16(), status, "{reason}: {}", r.text());
    assert_eq!(r.json()["reason"], reason, "{}", r.text());
}

async fn ask(s: &TestServer, who: &ClientDef, body: Value) -> Resp {
    call(s, who, Method::POST, "/grants", Some(&body)).await
}

fn asking(scope: &str, secs: u64) -> Value {
    json!({"scope": scope, "duration_secs": secs, "justification": "INC-7 refunds stuck", "ticket": "OPS-1"})
}

async fn request(s: &TestServer, scope: &str, secs: u64) -> String {
    let g = ok(
        &ask(s, &clients::orders(), asking(scope, secs)).await,
        StatusCode::CREATED,
        "request",
    );
    assert_eq!(g["status"], "requested");
    g["id"].as_str().unwrap().to_string()
}

async fn decide(s: &TestServer, who: &ClientDef, id: &str, verb: &str) -> Resp {
    let body = json!({"reason": format!("{verb} by {}", who.id)});
    call(
        s,
        who,
        Method::POST,
        &format!("/admin/grants/{id}/{verb}"),
        Some(&body),
    )
    .await
}

/// A decision on `version` only, as a person who read that version decides.
async fn decide_on(s: &TestServer, who: &ClientDef, id: &str, verb: &str, version: u64) -> Resp {
    let body = json!({"reason": format!("{verb} by {}", who.id), "version": version});
    call(
        s,
        who,
        Method::POST,
        &format!("/admin/grants/{id}/{verb}"),
        Some(&body),
    )
    .await
}

async fn show(s: &TestServer, id: &str) -> Value {
    ok(
        &call(
            s,
            &alice(),
            Method::GET,
            &format!("/admin/grants/{id}"),
            None,
        )
        .await,
        StatusCode::OK,
        "show",
    )
}

async fn token_for(s: &TestServer, scope: &str) -> Resp {
    s.token_resp(&clients::orders(), &[("scope", scope)]).await
}

/// The sum of the samples of `name` whose labels include every `labels` pair, in any
/// order.
async fn metric(s: &TestServer, name: &str, labels: &[(&str, &str)]) -> f64 {
    let r = Http::new(s.metrics_addr).get("/metrics", None).await;
    r.text()
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// === the policy, in the contracts ===

async fn admin_post(s: &TestServer, path: &str, body: &Value) -> Resp {
    call(s, &clients::admin(), Method::POST, path, Some(body)).await
}

/// Registers the elevation scopes and the on-call group, and gives orders-service and
/// ops-bot their elevations.
async fn set_policy(s: &TestServer) {
    let r = call(s, &clients::admin(), Method::GET, "/admin/scopes", None).await;
    let v = ok(&r, StatusCode::OK, "registry");
    let mut registry = v["registry"].clone();
    for name in [REFUND, ADMIN, EXPORT] {
        registry["scopes"][name] = json!({"description": name, "owner": "team-orders", "audiences": [], "status": "active"});
    }
    registry["approver_groups"] = json!({"oncall": ["alice-oncall", "bob-oncall", "carol-oncall"]});
    let body = json!({"base_version": v["latest_version"], "registry": registry, "changelog": "elevation scopes", "reason": "SEC-11"});
    ok(
        &admin_post(s, "/admin/scopes", &body).await,
        StatusCode::OK,
        "registry amendment",
    );
    let r = amend_elevations(
        s,
        ORDERS,
        json!({
            REFUND: {"max_duration_secs": 3600, "approvers": ["group:oncall", "security-admin"], "request_ttl_secs": 600},
            ADMIN: {"max_duration_secs": 1800, "approvers": ["group:oncall"], "approvals": 2, "ticket_required": true, "sensitive": true},
            EXPORT: {"max_duration_secs": 600, "approvers": ["group:oncall"], "request_ttl_secs": 1},
        }),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = amend_elevations(
        s,
        "ops-bot",
        json!({REFUND: {"max_duration_secs": 600, "approvers": ["ops-bot", "alice-oncall"]}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

/// The latest contract of `client` and its version.
async fn contract(s: &TestServer, client: &str) -> (u64, Value) {
    let r = call(
        s,
        &clients::admin(),
        Method::GET,
        &format!("/admin/contracts/{client}"),
        None,
    )
    .await;
    let h = ok(&r, StatusCode::OK, "history")["history"]
        .as_array()
        .unwrap()
        .clone();
    let last = h.last().unwrap();
    (
        last["version"].as_u64().unwrap(),
        last["body"]["content"].clone(),
    )
}

async fn amend_elevations(s: &TestServer, client: &str, elevations: Value) -> Resp {
    let (v, mut c) = contract(s, client).await;
    c["elevations"] = elevations;
    let body =
        json!({"base_version": v, "contract": c, "changelog": "elevations", "reason": "SEC-11"});
    let r = admin_post(s, &format!("/admin/contracts/{client}"), &body).await;
    if r.status == StatusCode::OK {
        return r;
    }
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    r
}

// === tests ===

/// Request → approve → tokens carry the scope with the grant's claim and an `exp` no
/// later than its end → the grant ends by the clock: one second after its end the token
/// is inactive (the 30 s leeway on `exp` does not save it) and no new token is issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_is_requested_approved_used_and_ends_by_itself() {
    let s = builder().start().await;
    set_policy(&s).await;
    let id = request(&s, REFUND, 3).await;
    refused(&token_for(&s, REFUND).await, 400, "elevation_not_active");
    let g = ok(
        &decide(&s, &alice(), &id, "approve").await,
        StatusCode::OK,
        "approve",
    );
    assert_eq!(g["status"], "active");
    assert_eq!(g["approvals"][0]["by"], "alice-oncall");
    let ends_at_ms = g["ends_at_ms"].as_i64().unwrap();
    assert_eq!(
        ends_at_ms - g["starts_at_ms"].as_i64().unwrap(),
        3000,
        "from approval"
    );
    assert!(g["starts_at_ms"].as_i64().unwrap() >= g["requested_at_ms"].as_i64().unwrap());

    let r = token_for(&s, &format!("orders:read {REFUND}")).await;
    let t = ok(&r, StatusCode::OK, "elevated token");
    assert_eq!(t["scope"], format!("orders:read {REFUND}"));
    let token = t["access_token"].as_str().unwrap().to_string();
    let claims = decode_jwt(&token).1;
    assert_eq!(claims["grant"], id.as_str());
    assert!(
        claims["exp"].as_i64().unwrap() * 1000 <= ends_at_ms,
        "exp ≤ the grant's end"
    );
    let v = s.introspect(&token).await;
    assert_eq!(v["active"], true, "{v}");
    assert_eq!(v["grant"], id.as_str());
    // A token without the elevation is an ordinary one.
    let plain = s
        .issue(&clients::orders(), &[("scope", "orders:read")])
        .await;
    assert!(decode_jwt(&plain).1.get("grant").is_none());

    wait_past(ends_at_ms + 1000).await;
    let ended_before = metric(
        &s,
        "latch_introspections_total",
        &[("result", "inactive"), ("reason", "grant_ended")],
    )
    .await;
    assert!(
        !s.is_active(&token).await,
        "one second after the grant ended"
    );
    let ended_after = metric(
        &s,
        "latch_introspections_total",
        &[("result", "inactive"), ("reason", "grant_ended")],
    )
    .await;
    assert_eq!(
        ended_after,
        ended_before + 1.0,
        "inactive because the grant ended"
    );
    refused(&token_for(&s, REFUND).await, 400, "elevation_not_active");
    assert!(s.is_active(&plain).await, "ordinary tokens live on");
    assert_eq!(show(&s, &id).await["status"], "ended");
    refused(
        &decide(&s, &bob(), &id, "revoke").await,
        409,
        "grant_not_live",
    );

    // The audit names who asked and who approved, with reasons and request ids.
    let audit = s.audit(0).await;
    let ours: Vec<(&str, &str)> = audit
        .iter()
        .filter(|a| a["target"] == format!("grant:{id}"))
        .map(|a| (a["action"].as_str().unwrap(), a["actor"].as_str().unwrap()))
        .collect();
    assert_eq!(
        ours,
        vec![("grant_request", ORDERS), ("grant_approve", "alice-oncall")]
    );
    let approval = audit
        .iter()
        .find(|a| a["target"] == format!("grant:{id}") && a["action"] == "grant_approve")
        .unwrap();
    let reason = approval["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("approve by alice-oncall [active ") && reason.ends_with("Z]"),
        "the audit says when it is active: {reason}"
    );
}

/// Revoked early: inactive at once on the node that recorded it, the token refused, and
/// counted; a second revocation is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_revocation_ends_the_grant_at_once() {
    let s = builder().start().await;
    set_policy(&s).await;
    let id = request(&s, REFUND, 600).await;
    ok(
        &decide(&s, &bob(), &id, "approve").await,
        StatusCode::OK,
        "approve",
    );
    let token = ok(&token_for(&s, REFUND).await, StatusCode::OK, "token")["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(s.is_active(&token).await);
    let early = metric(&s, "latch_grants_revoked_early_total", &[]).await;
    let g = ok(
        &decide(&s, &carol(), &id, "revoke").await,
        StatusCode::OK,
        "revoke",
    );
    assert_eq!(g["status"], "revoked");
    assert_eq!(g["closed"]["by"], "carol-oncall");
    assert!(
        !s.is_active(&token).await,
        "revoked: inactive on this node at once"
    );
    refused(&token_for(&s, REFUND).await, 400, "elevation_not_active");
    refused(
        &decide(&s, &carol(), &id, "revoke").await,
        409,
        "grant_revoked",
    );
    assert_eq!(
        metric(&s, "latch_grants_revoked_early_total", &[]).await,
        early + 1.0
    );
    let listed = ok(
        &call(
            &s,
            &alice(),
            Method::GET,
            "/admin/grants?status=revoked&approver=carol-oncall",
            None,
        )
        .await,
        StatusCode::OK,
        "list",
    );
    assert_eq!(listed["grants"].as_array().unwrap().len(), 1);
    assert_eq!(listed["grants"][0]["id"], id.as_str());
}

/// Two distinct approvers for a sensitive scope; the same approver twice is refused; the
/// requester never approves; an approver not named for the scope is refused; a denied
/// or expired request cannot be approved; the policy's ceiling, start window, ticket and
/// justification hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_and_decisions_are_refused() {
    let s = builder().start().await;
    set_policy(&s).await;
    let orders = clients::orders();

    // Requests outside the policy.
    refused(
        &ask(&s, &orders, asking(REFUND, 3601)).await,
        400,
        "duration_above_ceiling",
    );
    refused(
        &ask(&s, &orders, asking(REFUND, 0)).await,
        400,
        "invalid_duration",
    );
    let mut b = asking(REFUND, 60);
    b["start_at"] = json!(rfc3339(now_ms() - 3_600_000));
    refused(&ask(&s, &orders, b).await, 400, "start_in_past");
    let mut b = asking(REFUND, 60);
    b["start_at"] = json!(rfc3339(now_ms() + 86_400_000));
    refused(
        &ask(&s, &orders, b).await,
        400,
        "start_after_request_expiry",
    );
    refused(
        &ask(&s, &orders, json!({"scope": REFUND, "duration_secs": 60})).await,
        400,
        "justification_required",
    );
    refused(
        &ask(
            &s,
            &orders,
            json!({"scope": ADMIN, "duration_secs": 60, "justification": "x"}),
        )
        .await,
        400,
        "ticket_required",
    );
    refused(
        &ask(&s, &orders, asking("billing:read", 60)).await,
        403,
        "elevation_not_in_contract",
    );
    refused(
        &ask(&s, &clients::billing(), asking(REFUND, 60)).await,
        403,
        "elevation_not_in_contract",
    );
    for bad in [
        json!([1]),
        json!({"scope": REFUND}),
        json!({"scope": REFUND, "duration_secs": 1, "extra": 1}),
        json!({"scope": "a b", "duration_secs": 1, "justification": "x"}),
    ] {
        ask(&s, &orders, bad)
            .await
            .assert_error(400, "invalid_request");
    }
    let mut b = asking(REFUND, 60);
    b["start_at"] = json!("tomorrow");
    ask(&s, &orders, b)
        .await
        .assert_error(400, "invalid_request");

    // Two approvals needed: the same person twice is refused, a second person completes it.
    let id = request(&s, ADMIN, 60).await;
    let once = ok(
        &decide(&s, &alice(), &id, "approve").await,
        StatusCode::OK,
        "first approval",
    );
    assert_eq!(once["status"], "requested");
    refused(
        &decide(&s, &alice(), &id, "approve").await,
        409,
        "already_approved_by_you",
    );
    refused(&token_for(&s, ADMIN).await, 400, "elevation_not_active");
    refused(
        &decide(&s, &mallory(), &id, "approve").await,
        403,
        "approver_not_allowed",
    );
    refused(
        &decide(&s, &clients::admin(), &id, "approve").await,
        403,
        "approver_not_allowed",
    );
    let done = ok(
        &decide(&s, &bob(), &id, "approve").await,
        StatusCode::OK,
        "second approval",
    );
    assert_eq!(done["status"], "active");
    refused(
        &decide(&s, &carol(), &id, "approve").await,
        409,
        "already_approved",
    );
    assert_eq!(
        ok(
            &token_for(&s, ADMIN).await,
            StatusCode::OK,
            "sensitive token"
        )["scope"],
        ADMIN
    );

    // The requester may not approve its own request (an admin that is also a service).
    let bot = ops_bot();
    let r = ok(
        &ask(&s, &bot, asking(REFUND, 60)).await,
        StatusCode::CREATED,
        "bot request",
    );
    let bot_grant = r["id"].as_str().unwrap().to_string();
    refused(
        &decide(&s, &bot, &bot_grant, "approve").await,
        403,
        "self_approval",
    );
    refused(
        &decide(&s, &bot, &bot_grant, "deny").await,
        403,
        "self_approval",
    );

    // Denied, then approved: refused.
    let denied = request(&s, REFUND, 60).await;
    let d = ok(
        &decide(&s, &carol(), &denied, "deny").await,
        StatusCode::OK,
        "deny",
    );
    assert_eq!(d["status"], "denied");
    refused(
        &decide(&s, &alice(), &denied, "approve").await,
        409,
        "request_denied",
    );

    // Expired: nobody decided within the request's 1 s.
    let expired = request(&s, EXPORT, 60).await;
    let g = show(&s, &expired).await;
    wait_past(g["request_expires_at_ms"].as_i64().unwrap()).await;
    refused(
        &decide(&s, &alice(), &expired, "approve").await,
        409,
        "request_expired",
    );
    assert_eq!(show(&s, &expired).await["status"], "expired");

    // Decisions need a reason; odd ids and paths; non-admins; the requester's own view.
    let r = call(
        &s,
        &alice(),
        Method::POST,
        &format!("/admin/grants/{bot_grant}/approve"),
        Some(&json!({"reason": ""})),
    )
    .await;
    r.assert_error(400, "invalid_request");
    call(&s, &alice(), Method::GET, "/admin/grants/g-nope", None)
        .await
        .assert_error(404, "not_found");
    call(&s, &alice(), Method::GET, "/admin/grants/..%2Fetc", None)
        .await
        .assert_error(404, "not_found");
    call(
        &s,
        &alice(),
        Method::GET,
        "/admin/grants?status=bogus",
        None,
    )
    .await
    .assert_error(400, "invalid_request");
    call(&s, &alice(), Method::GET, "/admin/grants?bogus=1", None)
        .await
        .assert_error(400, "invalid_request");
    call(&s, &alice(), Method::DELETE, "/admin/grants", None)
        .await
        .assert_error(405, "method_not_allowed");
    call(&s, &orders, Method::GET, "/admin/grants", None)
        .await
        .assert_error(403, "unauthorized_client");
    call(
        &s,
        &orders,
        Method::POST,
        &format!("/admin/grants/{id}/revoke"),
        Some(&json!({"reason": "mine"})),
    )
    .await
    .assert_error(403, "unauthorized_client");
    s.http
        .get("/grants", None)
        .await
        .assert_error(401, "invalid_client");
    let mine = ok(
        &call(&s, &orders, Method::GET, "/grants", None).await,
        StatusCode::OK,
        "own list",
    );
    let ids: Vec<&str> = mine["grants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&id.as_str()) && !ids.contains(&bot_grant.as_str()),
        "only its own: {ids:?}"
    );
    ok(
        &call(&s, &orders, Method::GET, &format!("/grants/{id}"), None).await,
        StatusCode::OK,
        "own grant",
    );
    call(
        &s,
        &clients::billing(),
        Method::GET,
        &format!("/grants/{id}"),
        None,
    )
    .await
    .assert_error(404, "not_found");
    call(&s, &bot, Method::GET, &format!("/grants/{id}"), None)
        .await
        .assert_error(404, "not_found");

    // At most 20 requests waiting per client: no flooding the approvers or the store.
    let mine = call(&s, &orders, Method::GET, "/grants?status=requested", None).await;
    let waiting = ok(&mine, StatusCode::OK, "waiting")["grants"]
        .as_array()
        .unwrap()
        .len();
    for _ in waiting..20 {
        request(&s, REFUND, 60).await;
    }
    refused(
        &ask(&s, &orders, asking(REFUND, 60)).await,
        409,
        "too_many_pending",
    );
    // Another client is not affected.
    ok(
        &ask(&s, &bot, asking(REFUND, 60)).await,
        StatusCode::CREATED,
        "another client",
    );
}

/// The policy is validated as part of the contract: an elevation of a scope the contract
/// already grants, too few approvers once the requester is excluded, an unknown group, a
/// ceiling above 7 days, an unregistered scope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elevation_policies_are_validated_with_the_contract() {
    let s = builder().start().await;
    set_policy(&s).await;
    for (elevations, code) in [
        (
            json!({"orders:read": {"max_duration_secs": 60, "approvers": ["alice-oncall"]}}),
            "elevation_of_granted_scope",
        ),
        (
            json!({REFUND: {"max_duration_secs": 60, "approvers": ["orders-service"]}}),
            "not_enough_approvers",
        ),
        (
            json!({REFUND: {"max_duration_secs": 60, "approvers": ["alice-oncall"], "approvals": 2}}),
            "not_enough_approvers",
        ),
        (
            json!({REFUND: {"max_duration_secs": 60, "approvers": ["group:nobody"]}}),
            "unknown_approver_group",
        ),
        (
            json!({REFUND: {"max_duration_secs": 604801, "approvers": ["alice-oncall"]}}),
            "duration_out_of_range",
        ),
        (
            json!({"never:registered": {"max_duration_secs": 60, "approvers": ["alice-oncall"]}}),
            "unregistered_scope",
        ),
    ] {
        let r = amend_elevations(&s, ORDERS, elevations).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{code}: {}", r.text());
        let codes: Vec<String> = r.json()["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["code"].as_str().unwrap().to_string())
            .collect();
        assert!(codes.iter().any(|c| c == code), "{code}: {codes:?}");
    }
    // Removing the elevation from the contract ends the live grants it allowed.
    let id = request(&s, REFUND, 600).await;
    ok(
        &decide(&s, &alice(), &id, "approve").await,
        StatusCode::OK,
        "approve",
    );
    let token = ok(&token_for(&s, REFUND).await, StatusCode::OK, "token")["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(s.is_active(&token).await);
    let r = amend_elevations(&s, ORDERS, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(
        !s.is_active(&token).await,
        "the contract no longer names the elevation"
    );
    refused(&token_for(&s, REFUND).await, 400, "scope_not_in_contract");
}

/// Concurrent decisions on one grant, over HTTP, each by a person who read version 1:
/// approve against revoke against a second approval, and two approvals of a two-person
/// rule. Exactly one is recorded; the others get 409; the audit holds exactly the
/// winner. (Without `version`, a decision arriving after another one is applied to the
/// new version: that is a later decision, not a race; the store-level race of writers
/// from one version is in tests/store_contract.rs, on SQLite, Redis and Cluster.)
async fn concurrent_decisions_have_one_outcome(s: &TestServer) {
    set_policy(s).await;
    for round in 0..4 {
        let id = request(s, REFUND, 600).await;
        let (p1, p2, p3) = (alice(), bob(), carol());
        let (a, b, c) = tokio::join!(
            decide_on(s, &p1, &id, "approve", 1),
            decide_on(s, &p2, &id, "revoke", 1),
            decide_on(s, &p3, &id, "approve", 1),
        );
        let statuses = [a.status.as_u16(), b.status.as_u16(), c.status.as_u16()];
        assert_eq!(
            statuses.iter().filter(|s| **s == 200).count(),
            1,
            "round {round}: {statuses:?}"
        );
        assert_eq!(
            statuses.iter().filter(|s| **s == 409).count(),
            2,
            "round {round}: {statuses:?}"
        );
        let g = show(s, &id).await;
        let want = if b.status == StatusCode::OK {
            "revoked"
        } else {
            "active"
        };
        assert_eq!(g["status"], want, "round {round}");
        assert_eq!(g["version"], 2, "one decision recorded");
        let decisions = s
            .audit(0)
            .await
            .into_iter()
            .filter(|a| a["target"] == format!("grant:{id}") && a["action"] != "grant_request")
            .count();
        assert_eq!(decisions, 1, "round {round}: one decision audited");
    }
    let id = request(s, ADMIN, 60).await;
    let (p1, p2) = (alice(), bob());
    let (a, b) = tokio::join!(
        decide_on(s, &p1, &id, "approve", 1),
        decide_on(s, &p2, &id, "approve", 1)
    );
    let mut statuses = [a.status.as_u16(), b.status.as_u16()];
    statuses.sort();
    assert_eq!(
        statuses,
        [200, 409],
        "two approvals from one version: one wins"
    );
    assert_eq!(
        show(s, &id).await["status"],
        "requested",
        "one of two approvals"
    );
    let loser = if a.status == StatusCode::OK {
        bob()
    } else {
        alice()
    };
    let g = ok(
        &decide(s, &loser, &id, "approve").await,
        StatusCode::OK,
        "the loser approves again",
    );
    assert_eq!(g["status"], "active");
    assert_eq!(g["approvals"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_decisions_have_one_outcome_on_sqlite() {
    let s = builder().start().await;
    concurrent_decisions_have_one_outcome(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_decisions_have_one_outcome_on_redis() {
    let redis = RedisProcess::start().await;
    let s = builder().redis(&redis).start().await;
    concurrent_decisions_have_one_outcome(&s).await;
}

/// Two nodes on one Redis: a grant approved on A is honoured on B; revoked on A, the token
/// is inactive on B within the propagation bound; B lists it revoked; a node started
/// later loads the grants from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_revoked_on_node_a_is_inactive_on_node_b() {
    let redis = RedisProcess::start().await;
    let setup = builder().redis(&redis);
    let mut nodes = setup.start_nodes(2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    set_policy(a).await;
    let id = request(a, REFUND, 600).await;
    ok(
        &decide(a, &alice(), &id, "approve").await,
        StatusCode::OK,
        "approve on A",
    );
    // B learns the grant through the log: it issues and honours elevated tokens too.
    let on_b = eventually(DEADLINE, "B issues under the grant", || async {
        let r = token_for(b, REFUND).await;
        (r.status == StatusCode::OK)
            .then(|| r.json()["access_token"].as_str().unwrap().to_string())
            .ok_or_else(|| r.text())
    })
    .await;
    let on_a = ok(&token_for(a, REFUND).await, StatusCode::OK, "token on A")["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(b.is_active(&on_a).await && a.is_active(&on_b).await);
    ok(
        &decide(a, &carol(), &id, "revoke").await,
        StatusCode::OK,
        "revoke on A",
    );
    eventually(DEADLINE, "the token is inactive on B", || async {
        (!b.is_active(&on_a).await)
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    })
    .await;
    assert!(!b.is_active(&on_b).await && !a.is_active(&on_b).await);
    let g = ok(
        &call(
            b,
            &alice(),
            Method::GET,
            &format!("/admin/grants/{id}"),
            None,
        )
        .await,
        StatusCode::OK,
        "B's view",
    );
    assert_eq!(g["status"], "revoked");
    // A restarted node loads every grant from the store.
    nodes[1].restart().await;
    let b = &nodes[1];
    assert!(!b.is_active(&on_a).await, "still revoked after a restart");
    let g = ok(
        &call(
            b,
            &alice(),
            Method::GET,
            &format!("/admin/grants/{id}"),
            None,
        )
        .await,
        StatusCode::OK,
        "after restart",
    );
    assert_eq!(g["status"], "revoked");
}

/// The metrics: pending requests, active grants by scope and sensitivity, decisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_pending_active_and_decisions() {
    let s = builder().start().await;
    set_policy(&s).await;
    let id = request(&s, ADMIN, 600).await;
    eventually(DEADLINE, "one pending", || async {
        (metric(&s, "latch_grants_pending", &[]).await == 1.0)
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    })
    .await;
    ok(
        &decide(&s, &alice(), &id, "approve").await,
        StatusCode::OK,
        "1/2",
    );
    ok(
        &decide(&s, &bob(), &id, "approve").await,
        StatusCode::OK,
        "2/2",
    );
    let active = [("scope", ADMIN), ("sensitive", "true")];
    eventually(DEADLINE, "one sensitive grant active", || async {
        (metric(&s, "latch_grants_active", &active).await == 1.0
            && metric(&s, "latch_grants_pending", &[]).await == 0.0)
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    })
    .await;
    assert_eq!(
        metric(
            &s,
            "latch_grant_decisions_total",
            &[("decision", "approve"), ("sensitive", "true")]
        )
        .await,
        2.0
    );
    assert_eq!(
        metric(
            &s,
            "latch_grant_decisions_total",
            &[("decision", "approved"), ("sensitive", "true")]
        )
        .await,
        1.0
    );
    ok(&token_for(&s, ADMIN).await, StatusCode::OK, "token");
    assert_eq!(
        metric(
            &s,
            "latch_grant_tokens_issued_total",
            &[("sensitive", "true")]
        )
        .await,
        1.0
    );
    ok(
        &decide(&s, &carol(), &id, "revoke").await,
        StatusCode::OK,
        "revoke",
    );
    eventually(DEADLINE, "none active", || async {
        (metric(&s, "latch_grants_active", &active).await == 0.0)
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    })
    .await;
}

/// The CLI: each person under their own credentials; tables by default, `--json`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_requests_lists_approves_and_revokes_as_each_person() {
    let s = builder().start().await;
    set_policy(&s).await;
    let run = |who: ClientDef, args: Vec<String>| {
        let base = s.base_url();
        async move {
            let mut cmd = latch_cmd_async();
            cmd.arg("grants").args(&args).arg("--server").arg(base);
            cmd.env("LATCH_CLIENT_ID", &who.id)
                .env("LATCH_CLIENT_SECRET", &who.secret);
            cmd.env_remove("LATCH_ADMIN_CLIENT_ID")
                .env_remove("LATCH_ADMIN_CLIENT_SECRET");
            run_cli(cmd).await
        }
    };
    let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (st, out, err) = run(
        clients::orders(),
        a(&[
            "request",
            "--scope",
            REFUND,
            "--duration",
            "10m",
            "--justification",
            "INC-9",
            "--json",
        ]),
    )
    .await;
    assert!(st.success(), "{err}");
    let g: Value = serde_json::from_str(&out).unwrap();
    let id = g["id"].as_str().unwrap().to_string();
    let (st, out, err) = run(alice(), a(&["list", "--status", "requested"])).await;
    assert!(st.success(), "{err}");
    assert!(
        out.starts_with("ID") && out.contains(&id) && out.contains("0/1"),
        "{out}"
    );
    let (st, _, err) = run(clients::orders(), a(&["approve", &id, "--reason", "me"])).await;
    assert!(
        !st.success() && err.contains("403"),
        "the requester is no admin: {err}"
    );
    let (st, out, err) = run(alice(), a(&["approve", &id, "--reason", "INC-9 confirmed"])).await;
    assert!(st.success(), "{err}");
    assert!(
        out.contains("active") && out.contains("approved by") && out.contains("alice-oncall"),
        "{out}"
    );
    let (st, out, _) = run(clients::orders(), a(&["list", "--mine", "--json"])).await;
    assert!(st.success());
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["grants"][0]["status"],
        "active"
    );
    let (st, out, err) = run(bob(), a(&["revoke", &id, "--reason", "done early"])).await;
    assert!(st.success(), "{err}");
    assert!(
        out.contains("revoked by") && out.contains("bob-oncall"),
        "{out}"
    );
    let (st, out, _) = run(alice(), a(&["show", &id])).await;
    assert!(st.success() && out.contains("revoked"), "{out}");
    let (st, _, err) = run(bob(), a(&["revoke", &id, "--reason", "again"])).await;
    assert!(!st.success() && err.contains("409"), "{err}");
}

/// A user's session: the IdP hook asks for an elevation of one of its users; once
/// approved, that user's session refreshes with the elevated scope (the grant named, `exp`
/// no later than its end); other users, and the session's own scope, are unchanged; the
/// policy names which users may be elevated; a revocation ends it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_of_a_session_is_elevated_through_the_session_issuer() {
    let idp = idp();
    let s = builder_with(&idp).start().await;
    set_policy(&s).await;
    let r = amend_elevations(
        &s,
        "idp-hook",
        json!({REFUND: {"max_duration_secs": 600, "approvers": ["group:oncall"], "subjects": ["alice"]}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let open = |sub: &'static str| {
        let s = &s;
        let assertion = idp.assertion(sub);
        async move {
            let p = [
                ("grant_type", TE),
                ("subject_token", assertion.as_str()),
                ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
                ("scope", "orders:read"),
            ];
            let r = s.post_form("/token", &p, hook().auth()).await;
            ok(&r, StatusCode::OK, "session")["refresh_token"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let refresh = |rt: String, scope: &'static str| {
        let s = &s;
        async move {
            let p = [
                ("grant_type", "refresh_token"),
                ("refresh_token", rt.as_str()),
                ("scope", scope),
            ];
            s.post_form("/token", &p, hook().auth()).await
        }
    };
    let both = "orders:read orders:refund-any";
    let rt = open("alice").await;
    let r = refresh(rt.clone(), both).await;
    refused(&r, 400, "elevation_not_active");
    // The refusal spent nothing: the same refresh token is used below (spent, it would
    // count as reuse and revoke the session).
    let rt_bob = open("bob").await;

    let for_user = |sub: &str| json!({"scope": REFUND, "subject": sub, "duration_secs": 300, "justification": "support case 12"});
    refused(
        &ask(&s, &hook(), for_user("bob")).await,
        403,
        "subject_not_allowed",
    );
    let g = ok(
        &ask(&s, &hook(), for_user("alice")).await,
        StatusCode::CREATED,
        "request for alice",
    );
    assert_eq!(g["subject"], "alice");
    let id = g["id"].as_str().unwrap().to_string();
    let g = ok(
        &decide(&s, &alice(), &id, "approve").await,
        StatusCode::OK,
        "approve",
    );
    let ends_at_ms = g["ends_at_ms"].as_i64().unwrap();

    let r = refresh(rt, both).await;
    let t = ok(&r, StatusCode::OK, "elevated refresh");
    assert_eq!(t["scope"], both);
    let token = t["access_token"].as_str().unwrap().to_string();
    let claims = decode_jwt(&token).1;
    assert_eq!(
        (claims["sub"].as_str(), claims["grant"].as_str()),
        (Some("alice"), Some(id.as_str()))
    );
    assert!(claims["exp"].as_i64().unwrap() * 1000 <= ends_at_ms);
    assert!(s.is_active(&token).await);
    // The session keeps its own scope: the next refresh without the elevated scope is plain.
    let rt = t["refresh_token"].as_str().unwrap().to_string();
    let plain = ok(
        &refresh(rt, "orders:read").await,
        StatusCode::OK,
        "plain refresh",
    );
    assert!(decode_jwt(plain["access_token"].as_str().unwrap())
        .1
        .get("grant")
        .is_none());
    // Another user of the same client is not elevated.
    refused(&refresh(rt_bob, both).await, 400, "elevation_not_active");
    // The client's own tokens are not elevated by a user's grant (it has no such grant).
    let mine = ok(
        &call(
            &s,
            &alice(),
            Method::GET,
            "/admin/grants?subject=alice",
            None,
        )
        .await,
        StatusCode::OK,
        "by subject",
    );
    assert_eq!(mine["grants"].as_array().unwrap().len(), 1);

    ok(
        &decide(&s, &bob(), &id, "revoke").await,
        StatusCode::OK,
        "revoke",
    );
    assert!(
        !s.is_active(&token).await,
        "the user's elevated token dies with the grant"
    );
    let rt = plain["refresh_token"].as_str().unwrap().to_string();
    refused(&refresh(rt, both).await, 400, "elevation_not_active");
}

/// Redis Cluster, two nodes: the same promises as on one Redis. Decisions from one
/// version on both nodes at once have exactly one outcome; a grant approved on A is
/// honoured on B; revoked on B, its token is inactive on A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_decisions_have_one_outcome_and_revocations_reach_every_node() {
    const PASSWORD: &str = "grants-cluster-7Qz";
    let cluster = testkit::redis_ha::RedisCluster::start(PASSWORD).await;
    let setup = builder()
        .redis_url(&cluster.url())
        .env("LATCH_STORE__REDIS_PASSWORD", PASSWORD);
    let nodes = setup.start_nodes(2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    set_policy(a).await;
    for round in 0..3 {
        let id = request(a, REFUND, 600).await;
        eventually(DEADLINE, "B knows the request", || async {
            let r = call(
                b,
                &alice(),
                Method::GET,
                &format!("/admin/grants/{id}"),
                None,
            )
            .await;
            (r.status == StatusCode::OK)
                .then_some(())
                .ok_or_else(|| r.text())
        })
        .await;
        let (p1, p2, p3) = (alice(), bob(), carol());
        let (x, y, z) = tokio::join!(
            decide_on(a, &p1, &id, "approve", 1),
            decide_on(b, &p2, &id, "revoke", 1),
            decide_on(b, &p3, &id, "approve", 1),
        );
        let statuses = [x.status.as_u16(), y.status.as_u16(), z.status.as_u16()];
        assert_eq!(
            statuses.iter().filter(|s| **s == 200).count(),
            1,
            "round {round}: {statuses:?}"
        );
        assert_eq!(
            statuses.iter().filter(|s| **s == 409).count(),
            2,
            "round {round}: {statuses:?}"
        );
        assert_eq!(
            show(a, &id).await["version"],
            2,
            "round {round}: one decision recorded"
        );
    }
    let id = request(a, REFUND, 600).await;
    ok(
        &decide(a, &alice(), &id, "approve").await,
        StatusCode::OK,
        "approve on A",
    );
    let on_b = eventually(DEADLINE, "B issues under the grant", || async {
        let r = token_for(b, REFUND).await;
        (r.status == StatusCode::OK)
            .then(|| r.json()["access_token"].as_str().unwrap().to_string())
            .ok_or_else(|| r.text())
    })
    .await;
    assert!(a.is_active(&on_b).await);
    ok(
        &decide(b, &bob(), &id, "revoke").await,
        StatusCode::OK,
        "revoke on B",
    );
    eventually(DEADLINE, "the token is inactive on A", || async {
        (!a.is_active(&on_b).await)
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    })
    .await;
}
