//! Authorization contracts (issue 10), tested as an attacker would: version 1 is the
//! configuration and changes nothing; a widening goes through `shadow` and a narrowing
//! through `deprecated`; a narrowing kills exceeding tokens on every node; a scheduled
//! amendment switches every node by the clock under a load of introspections; cancel,
//! rollback and suspension; reason codes that name nothing of other clients; hostile
//! amendments, concurrent writers on both stores, non-admins and odd paths; the audit of
//! every write; authentication methods narrowed by a contract.
//!
//! Nothing asserts on timing. Propagation polls to [`DEADLINE`]; where the clock decides
//! (a scheduled amendment), each answer is judged against the test's clock read before
//! the request and after its answer, which bracket the server's own reading.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use testkit::clients::{self, BILLING_AUD, ORDERS_AUD, ORDERS_AUD2};
use testkit::prelude::*;

const ORDERS: &str = "orders-service";
/// A scope the tests register and roll out to orders-service.
const REFUND: &str = "orders:refund";
/// An audience the tests roll out to orders-service.
const REFUNDS_AUD: &str = "https://refunds.example";

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

/// The RFC 8594 `Sunset` value (an HTTP date) of `ms`.
fn http_date(ms: i64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(ms as u64))
}

/// The whole second `secs` seconds from now, in ms (requests name seconds).
fn whole_second_in(secs: i64) -> i64 {
    (now_ms() / 1000 + secs) * 1000
}

/// Waits until the wall clock is past `ms`.
async fn wait_past(ms: i64) {
    while now_ms() <= ms {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// === the admin API ===

/// An admin request with a request id the test chooses (`x-request-id`).
async fn admin_call(
    http: &Http,
    method: Method,
    path: &str,
    body: Option<&Value>,
    rid: &str,
) -> Resp {
    let admin = clients::admin();
    let auth = basic(&admin.id, &admin.secret);
    let mut headers = vec![("authorization", auth.as_str()), ("x-request-id", rid)];
    let bytes = match body {
        Some(b) => {
            headers.push(("content-type", "application/json"));
            serde_json::to_vec(b).unwrap()
        }
        None => Vec::new(),
    };
    http.request(method, path, &headers, bytes).await
}

async fn post(s: &TestServer, path: &str, body: &Value, rid: &str) -> Resp {
    admin_call(&s.http, Method::POST, path, Some(body), rid).await
}

async fn get(s: &TestServer, path: &str) -> Resp {
    admin_call(&s.http, Method::GET, path, None, "rid-read").await
}

/// The JSON of a 200 answer; panics with `what` and the answer otherwise.
fn ok(r: &Resp, what: &str) -> Value {
    assert_eq!(r.status, StatusCode::OK, "{what}: {}", r.text());
    r.json()
}

async fn history(s: &TestServer, client: &str) -> Vec<Value> {
    let r = get(s, &format!("/admin/contracts/{client}")).await;
    ok(&r, "history")["history"]
        .as_array()
        .expect("history array")
        .clone()
}

/// The latest version of `client` (cancelled ones count: the next amendment's base) and
/// the content of the latest version not cancelled (what an amendment starts from).
async fn latest(s: &TestServer, client: &str) -> (u64, Value) {
    let h = history(s, client).await;
    let version = h.last().expect("a version")["version"].as_u64().unwrap();
    let content = h
        .iter()
        .rev()
        .find(|e| e["cancelled"] == false)
        .expect("a version not cancelled")["body"]["content"]
        .clone();
    (version, content)
}

fn versions(history: &[Value]) -> Vec<u64> {
    history
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect()
}

/// An amendment request body.
fn amendment(base: u64, contract: &Value, effective_at: Option<&str>) -> Value {
    let mut b = json!({
        "base_version": base,
        "contract": contract,
        "changelog": "test amendment",
        "reason": "TEST-1",
    });
    if let Some(t) = effective_at {
        b["effective_at"] = json!(t);
    }
    b
}

async fn amend(s: &TestServer, client: &str, body: &Value) -> Resp {
    post(s, &format!("/admin/contracts/{client}"), body, "rid-amend").await
}

/// Reads `client`'s latest contract, changes it with `f` and amends it, effective now;
/// panics unless 200. Returns the amendment.
async fn edit(s: &TestServer, client: &str, f: impl FnOnce(&mut Value)) -> Value {
    let (v, mut c) = latest(s, client).await;
    f(&mut c);
    let r = amend(s, client, &amendment(v, &c, None)).await;
    ok(&r, "amendment")
}

/// Adds (or changes) `name` in the scope registry with `status`.
async fn register(s: &TestServer, name: &str, status: &str) -> Value {
    let r = get(s, "/admin/scopes").await;
    let v = ok(&r, "registry");
    let base = v["latest_version"].as_u64().expect("latest_version");
    let mut registry = v["registry"].clone();
    registry["scopes"][name] = json!({
        "description": format!("{name} for tests"),
        "owner": "team-tests",
        "audiences": [],
        "status": status,
    });
    let body = json!({
        "base_version": base,
        "registry": registry,
        "changelog": format!("{name} {status}"),
        "reason": "REG-1",
    });
    let r = post(s, "/admin/scopes", &body, "rid-registry").await;
    ok(&r, "registry amendment")
}

async fn promote(s: &TestServer, client: &str, kind: &str, name: &str, at: Option<&str>) -> Resp {
    let (v, _) = latest(s, client).await;
    let mut body = json!({"name": name, "kind": kind, "base_version": v, "reason": "TEST-promote"});
    if let Some(t) = at {
        body["effective_at"] = json!(t);
    }
    post(
        s,
        &format!("/admin/contracts/{client}/promote"),
        &body,
        "rid-promote",
    )
    .await
}

async fn cancel(s: &TestServer, client: &str, version: u64, reason: &str) -> Resp {
    post(
        s,
        &format!("/admin/contracts/{client}/{version}/cancel"),
        &json!({ "reason": reason }),
        "rid-cancel",
    )
    .await
}

async fn rollback(s: &TestServer, client: &str, to: u64, base: u64) -> Resp {
    post(
        s,
        &format!("/admin/contracts/{client}/rollback"),
        &json!({"to": to, "base_version": base, "reason": "INC-7 roll back"}),
        "rid-rollback",
    )
    .await
}

/// `/admin/contracts`'s row for `client`.
async fn listed(s: &TestServer, client: &str) -> Value {
    let r = get(s, "/admin/contracts").await;
    ok(&r, "list")["contracts"]
        .as_array()
        .expect("contracts array")
        .iter()
        .find(|row| row["client"] == client)
        .unwrap_or_else(|| panic!("{client} not listed"))
        .clone()
}

/// `(code, key)` of every problem of a 400 answer.
fn problems(r: &Resp) -> Vec<(String, String)> {
    r.assert_error(400, "invalid_request");
    r.json()["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("no problems in {}", r.text()))
        .iter()
        .map(|p| {
            (
                p["code"].as_str().unwrap().to_string(),
                p["key"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Asserts a 400 whose problems are exactly `want`, in order.
fn assert_problems(r: &Resp, want: &[(&str, &str)], what: &str) {
    let got = problems(r);
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(c, k)| (c.to_string(), k.to_string()))
        .collect();
    assert_eq!(got, want, "{what}: {}", r.text());
}

// === tokens ===

fn cv(token: &str) -> u64 {
    decode_jwt(token).1["cv"].as_u64().expect("numeric cv")
}

fn access_token(r: &Resp, what: &str) -> String {
    ok(r, what)["access_token"].as_str().unwrap().to_string()
}

/// Asserts a refusal at `/token`: status, OAuth error and the stable reason code.
fn assert_refused(r: &Resp, status: u16, error: &str, reason: &str) {
    r.assert_error(status, error);
    assert_eq!(r.json()["reason"], reason, "{}", r.text());
}

async fn introspect_http(http: &Http, token: &str) -> Resp {
    http.post_form("/introspect", &[("token", token)], clients::rs_all().auth())
        .await
}

async fn token_http(http: &Http, client: &ClientDef, extra: &[(&str, &str)]) -> Resp {
    let mut params = vec![("grant_type", "client_credentials")];
    params.extend_from_slice(extra);
    http.post_form("/token", &params, client.auth()).await
}

/// `Ok` iff the introspection answer is 200 and says `active` (and an inactive answer is
/// exactly `{"active":false}`).
fn is(r: &Resp, active: bool) -> Result<(), String> {
    if r.status != StatusCode::OK {
        return Err(format!("{} {}", r.status, r.text()));
    }
    let v = r.json();
    let want = if active {
        v["active"] == true
    } else {
        v == inactive()
    };
    if want {
        Ok(())
    } else {
        Err(format!("want active={active}, got {v}"))
    }
}

/// Polls each node in turn until `check` holds there.
async fn on_every_node<F, Fut>(nodes: &[TestServer], what: &str, check: F)
where
    F: Fn(Http) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    for (i, n) in nodes.iter().enumerate() {
        eventually(DEADLINE, &format!("{what} (node {i})"), || {
            check(n.http.clone())
        })
        .await;
    }
}

/// Waits until every node has applied `client`'s version `version`.
async fn await_version(nodes: &[TestServer], client: &str, version: u64) {
    on_every_node(
        nodes,
        &format!("{client} at version {version}"),
        |http| async move {
            let r = admin_call(
                &http,
                Method::GET,
                &format!("/admin/contracts/{client}"),
                None,
                "rid-read",
            )
            .await;
            let latest = (r.status == StatusCode::OK)
                .then(|| {
                    r.json()["history"]
                        .as_array()
                        .and_then(|h| h.last().cloned())
                })
                .flatten()
                .and_then(|e| e["version"].as_u64());
            match latest {
                Some(v) if v >= version => Ok(()),
                other => Err(format!("latest {other:?}")),
            }
        },
    )
    .await;
}

fn redis_nodes() -> ServerBuilder {
    TestServer::builder().config(|c| c.store.max_staleness = secs(1))
}

// ---------------------------------------------------------------------------
// Version 1
// ---------------------------------------------------------------------------

#[tokio::test]
async fn version_1_is_the_configuration_and_changes_nothing() {
    let mut s = TestServer::builder().start().await;
    let orders = clients::orders();
    let r = s.token_resp(&orders, &[]).await;
    let answer = ok(&r, "token under version 1");
    assert_eq!(answer["scope"], "orders:read orders:write");
    assert!(r.header("deprecation").is_none() && r.header("sunset").is_none());
    let t = answer["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        decode_jwt(&t).1["aud"],
        ORDERS_AUD,
        "the first audience is the default"
    );
    assert_eq!(cv(&t), 1, "tokens carry the version they were issued under");
    let t2 = s
        .issue(
            &orders,
            &[("scope", "orders:write"), ("resource", ORDERS_AUD2)],
        )
        .await;
    assert_eq!(decode_jwt(&t2).1["aud"], ORDERS_AUD2);
    assert_eq!(decode_jwt(&t2).1["scope"], "orders:write");
    let r = s.token_resp(&clients::billing(), &[]).await;
    assert_eq!(ok(&r, "billing")["scope"], "billing:read");

    // The history: one implicit version, the configuration's, in force since ever.
    let h = history(&s, ORDERS).await;
    let v1 = json!({
        "doc": "client:orders-service",
        "version": 1,
        "effective_at": "1970-01-01T00:00:00Z",
        "effective_at_ms": 0,
        "recorded_at_ms": 0,
        "changelog": "version 1: as configured in [[clients]]",
        "author": "latch",
        "reason": "the configuration",
        "rollback_of": null,
        "cancelled": false,
        "in_force": true,
        "body": {"kind": "contract", "content": {
            "grants": ["client_credentials"],
            "scopes": {"orders:read": "enforced", "orders:write": "enforced"},
            "audiences": {(ORDERS_AUD): "enforced", (ORDERS_AUD2): "enforced"},
            "roles": [],
            "auth_methods": [],
            "trusted_issuers": [],
            "delegate_service_tokens": false,
            "suspended": false,
        }},
    });
    assert_eq!(h, vec![v1.clone()]);
    let r = get(&s, "/admin/contracts/orders-service/1").await;
    assert_eq!(ok(&r, "show 1"), v1);
    let r = get(&s, "/admin/contracts").await;
    let rows = ok(&r, "list")["contracts"].as_array().unwrap().clone();
    let ids: Vec<&str> = rows.iter().map(|r| r["client"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "billing-service",
            "gateway-rs",
            "no-roles-client",
            "orders-rs",
            "orders-service",
            "security-admin"
        ]
    );
    for row in &rows {
        let mut want = json!({
            "version_in_force": 1,
            "effective_at": "1970-01-01T00:00:00Z",
            "latest_version": 1,
            "scheduled": [],
            "shadow": [],
            "deprecated": [],
            "suspended": false,
        });
        want["client"] = row["client"].clone();
        assert_eq!(*row, want);
    }
    // The registry: every scope a configured client names, active.
    let r = get(&s, "/admin/scopes").await;
    let reg = ok(&r, "registry");
    assert_eq!(
        (reg["version"].clone(), reg["latest_version"].clone()),
        (json!(1), json!(1))
    );
    let names: Vec<&String> = reg["registry"]["scopes"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(names, ["billing:read", "orders:read", "orders:write"]);
    assert_eq!(
        reg["registry"]["scopes"]["orders:read"],
        json!({"description": "", "owner": "config", "audiences": [ORDERS_AUD, ORDERS_AUD2], "status": "active"})
    );
    // A start writes nothing.
    assert!(
        s.audit(0)
            .await
            .iter()
            .all(|r| !r["action"].as_str().unwrap().starts_with("contract")),
        "a start recorded a contract"
    );

    // The first amendment records version 1, then version 2; nothing narrows, so every
    // token stays active.
    let (base, content) = latest(&s, ORDERS).await;
    assert_eq!(base, 1);
    let body = json!({"base_version": 1, "contract": content, "changelog": "first recorded amendment", "reason": "CHG-1"});
    let r = post(&s, "/admin/contracts/orders-service", &body, "rid-first").await;
    let v2 = ok(&r, "first amendment");
    assert_eq!(r.header("x-request-id").as_deref(), Some("rid-first"));
    assert_eq!(
        (
            v2["version"].clone(),
            v2["author"].clone(),
            v2["in_force"].clone(),
            v2["changelog"].clone()
        ),
        (
            json!(2),
            json!("security-admin"),
            json!(true),
            json!("first recorded amendment")
        )
    );
    let h = history(&s, ORDERS).await;
    assert_eq!(versions(&h), [1, 2]);
    let mut v1_now = v1.clone();
    v1_now["in_force"] = json!(false);
    assert_eq!(h[0], v1_now, "version 1 is recorded as it was");
    let amends: Vec<Value> = s
        .audit(0)
        .await
        .iter()
        .filter(|r| r["action"] == "contract_amend")
        .map(|r| json!([r["actor"], r["reason"], r["request_id"]]))
        .collect();
    assert_eq!(
        amends,
        [
            json!(["latch", "version 1 from the configuration", "rid-first"]),
            json!(["security-admin", "CHG-1", "rid-first"]),
        ]
    );
    assert!(s.is_active(&t).await && s.is_active(&t2).await);
    let t3 = s.issue(&orders, &[]).await;
    assert_eq!(cv(&t3), 2);

    // Recorded means durable: a restart keeps the history and the version in force.
    s.restart().await;
    assert_eq!(versions(&history(&s, ORDERS).await), [1, 2]);
    assert_eq!(listed(&s, ORDERS).await["version_in_force"], 2);
    assert!(s.is_active(&t).await && s.is_active(&t3).await);
    assert_eq!(cv(&s.issue(&orders, &[]).await), 2);
}

// ---------------------------------------------------------------------------
// Widening through shadow
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_widening_goes_through_shadow_counted_then_promoted() {
    let s = TestServer::builder().start().await;
    let orders = clients::orders();
    register(&s, REFUND, "active").await;

    // Straight to enforced: refused, for a scope and for an audience.
    let (v, base) = latest(&s, ORDERS).await;
    let mut c = base.clone();
    c["scopes"][REFUND] = json!("enforced");
    let r = amend(&s, ORDERS, &amendment(v, &c, None)).await;
    assert_problems(
        &r,
        &[("widening_skips_shadow", "scopes.\"orders:refund\"")],
        "scope",
    );
    let mut c = base.clone();
    c["audiences"][REFUNDS_AUD] = json!("enforced");
    let r = amend(&s, ORDERS, &amendment(v, &c, None)).await;
    assert_problems(
        &r,
        &[(
            "widening_skips_shadow",
            "audiences.\"https://refunds.example\"",
        )],
        "audience",
    );
    assert_eq!(
        versions(&history(&s, ORDERS).await),
        [1],
        "a refusal records nothing"
    );

    // In shadow: refused with its reason, counted, never in the default scope.
    let a = edit(&s, ORDERS, |c| {
        c["scopes"][REFUND] = json!("shadow");
        c["audiences"][REFUNDS_AUD] = json!("shadow");
    })
    .await;
    assert_eq!(a["version"], 2);
    assert_eq!(
        listed(&s, ORDERS).await["shadow"],
        json!([REFUND, REFUNDS_AUD])
    );
    // Every node exports the version in force and its ramp, per client.
    for (series, want) in [
        ("latch_contract_version{client=\"orders-service\"}", 2.0),
        (
            "latch_contract_ramp_items{client=\"orders-service\",stage=\"shadow\"}",
            2.0,
        ),
        (
            "latch_contract_ramp_items{client=\"orders-service\",stage=\"deprecated\"}",
            0.0,
        ),
        ("latch_contract_version{client=\"billing-service\"}", 1.0),
    ] {
        let s = &s;
        eventually(DEADLINE, series, || async move {
            let got = s.metric(series).await;
            if got == want {
                Ok(())
            } else {
                Err(format!("{got}"))
            }
        })
        .await;
    }
    let hits = "latch_contract_shadow_hits_total{client=\"orders-service\"}";
    let in_shadow = "latch_contract_decisions_total{reason=\"scope_in_shadow\"}";
    let aud_in_shadow = "latch_contract_decisions_total{reason=\"audience_in_shadow\"}";
    let (hits0, shadow0, aud0) = (
        s.metric(hits).await,
        s.metric(in_shadow).await,
        s.metric(aud_in_shadow).await,
    );
    for scope in [REFUND, REFUND, "orders:read orders:refund"] {
        let r = s.token_resp(&orders, &[("scope", scope)]).await;
        assert_refused(&r, 400, "invalid_scope", "scope_in_shadow");
    }
    let r = s.token_resp(&orders, &[("resource", REFUNDS_AUD)]).await;
    assert_refused(&r, 400, "invalid_target", "audience_in_shadow");
    assert_eq!(
        s.metric(hits).await - hits0,
        4.0,
        "every shadow refusal is a hit"
    );
    assert_eq!(s.metric(in_shadow).await - shadow0, 3.0);
    assert_eq!(s.metric(aud_in_shadow).await - aud0, 1.0);
    let r = s.token_resp(&orders, &[]).await;
    assert_eq!(ok(&r, "default scope")["scope"], "orders:read orders:write");

    // Promoted: granted.
    let granted = "latch_contract_decisions_total{reason=\"granted\"}";
    let granted0 = s.metric(granted).await;
    let r = promote(&s, ORDERS, "scope", REFUND, None).await;
    let p = ok(&r, "promote");
    assert_eq!(p["version"], 3);
    assert_eq!(
        p["changelog"],
        "promote scope orders:refund: shadow → enforced"
    );
    assert_eq!(p["body"]["content"]["scopes"][REFUND], "enforced");
    assert_eq!(p["body"]["content"]["audiences"][REFUNDS_AUD], "shadow");
    let r = s.token_resp(&orders, &[("scope", REFUND)]).await;
    let t = access_token(&r, "promoted scope");
    assert_eq!(
        (decode_jwt(&t).1["scope"].clone(), cv(&t)),
        (json!(REFUND), 3)
    );
    assert_eq!(s.introspect(&t).await["scope"], REFUND);
    let r = s.token_resp(&orders, &[]).await;
    assert_eq!(
        ok(&r, "default scope")["scope"],
        "orders:read orders:write orders:refund"
    );
    assert_eq!(s.metric(granted).await - granted0, 2.0);
    let r = s.token_resp(&orders, &[("resource", REFUNDS_AUD)]).await;
    assert_refused(&r, 400, "invalid_target", "audience_in_shadow");
    ok(
        &promote(&s, ORDERS, "audience", REFUNDS_AUD, None).await,
        "promote audience",
    );
    let t = s.issue(&orders, &[("resource", REFUNDS_AUD)]).await;
    assert_eq!(decode_jwt(&t).1["aud"], REFUNDS_AUD);
    assert_eq!(listed(&s, ORDERS).await["shadow"], json!([]));

    // Nothing left to promote.
    let r = promote(&s, ORDERS, "scope", REFUND, None).await;
    assert_problems(&r, &[("nothing_to_promote", REFUND)], "promote twice");
    let r = promote(&s, ORDERS, "scope", "orders:read", None).await;
    assert_problems(
        &r,
        &[("nothing_to_promote", "orders:read")],
        "promote enforced",
    );
}

// ---------------------------------------------------------------------------
// Narrowing through deprecated, on every node
// ---------------------------------------------------------------------------

/// Checks an answer about something deprecated: 200, the `Deprecation` date, the
/// `Sunset` (or none) and what is deprecated.
fn deprecated_answer(
    r: &Resp,
    since: &str,
    sunset: Option<&str>,
    names: &str,
) -> Result<(), String> {
    if r.status != StatusCode::OK {
        return Err(format!("{} {}", r.status, r.text()));
    }
    let got = (
        r.header("deprecation"),
        r.header("sunset"),
        r.header("x-latch-deprecated"),
    );
    let want = (
        Some(since.to_string()),
        sunset.map(String::from),
        Some(format!("deprecated={names}")),
    );
    if got == want {
        Ok(())
    } else {
        Err(format!("headers {got:?}, want {want:?}"))
    }
}

#[tokio::test]
async fn a_narrowing_through_deprecated_kills_exceeding_tokens_on_the_embedded_store() {
    let s = TestServer::builder().start().await;
    narrowing_through_deprecated(std::slice::from_ref(&s)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrowing_through_deprecated_kills_exceeding_tokens_on_every_redis_node() {
    let redis = RedisProcess::start().await;
    let nodes = redis_nodes().redis(&redis).start_nodes(3).await;
    narrowing_through_deprecated(&nodes).await;
}

/// Deprecation headers, a scheduled removal's `Sunset`, its cancellation, then the
/// removal of a scope and of an audience: tokens carrying them die on every node, the
/// others live on. Writes and reads go to different nodes.
async fn narrowing_through_deprecated(nodes: &[TestServer]) {
    let node = |i: usize| &nodes[i % nodes.len()];
    let orders = clients::orders();
    // Tokens from every node: only the scope to go, only the scope that stays, both, and
    // one for the audience to go.
    let write = node(1).issue(&orders, &[("scope", "orders:write")]).await;
    let read = node(2).issue(&orders, &[("scope", "orders:read")]).await;
    let both = node(0).issue(&orders, &[]).await;
    let aud2 = node(1)
        .issue(
            &orders,
            &[("scope", "orders:read"), ("resource", ORDERS_AUD2)],
        )
        .await;

    // Removing, or sending back to shadow, what is enforced skips `deprecated`: refused.
    let (v, base) = latest(node(0), ORDERS).await;
    let mut gone = base.clone();
    gone["scopes"]
        .as_object_mut()
        .unwrap()
        .remove("orders:write");
    let r = amend(node(0), ORDERS, &amendment(v, &gone, None)).await;
    assert_problems(
        &r,
        &[("narrowing_skips_deprecated", "scopes.\"orders:write\"")],
        "removal",
    );
    let mut back = base.clone();
    back["scopes"]["orders:write"] = json!("shadow");
    let r = amend(node(0), ORDERS, &amendment(v, &back, None)).await;
    assert_problems(
        &r,
        &[("narrowing_skips_deprecated", "scopes.\"orders:write\"")],
        "to shadow",
    );

    // Deprecated: still granted everywhere, and every answer carrying it says so.
    let mut dep = base.clone();
    dep["scopes"]["orders:write"] = json!("deprecated");
    dep["audiences"][ORDERS_AUD2] = json!("deprecated");
    let r = amend(node(0), ORDERS, &amendment(v, &dep, None)).await;
    let v2 = ok(&r, "deprecate");
    let since = format!(
        "@{}",
        v2["effective_at_ms"].as_i64().unwrap().div_euclid(1000)
    );
    let deprecated_everywhere = |sunset: Option<String>| {
        let (since, write, aud2, both) = (since.clone(), write.clone(), aud2.clone(), both.clone());
        move |http: Http| {
            let (since, sunset) = (since.clone(), sunset.clone());
            let (write, aud2, both) = (write.clone(), aud2.clone(), both.clone());
            async move {
                let orders = clients::orders();
                for t in [&write, &both] {
                    let r = introspect_http(&http, t).await;
                    is(&r, true)?;
                    deprecated_answer(&r, &since, sunset.as_deref(), "orders:write")?;
                }
                let r = introspect_http(&http, &aud2).await;
                is(&r, true)?;
                deprecated_answer(&r, &since, None, ORDERS_AUD2)?;
                let r = token_http(&http, &orders, &[("scope", "orders:write")]).await;
                deprecated_answer(&r, &since, sunset.as_deref(), "orders:write")?;
                Ok(())
            }
        }
    };
    on_every_node(
        nodes,
        "deprecated, no removal planned",
        deprecated_everywhere(None),
    )
    .await;
    for n in nodes {
        let r = introspect_http(&n.http, &read).await;
        is(&r, true).unwrap();
        assert_eq!(r.header("deprecation"), None, "nothing deprecated in it");
        let r = token_http(&n.http, &orders, &[]).await;
        assert_eq!(ok(&r, "default scope")["scope"], "orders:read orders:write");
    }
    assert!(
        node(0)
            .metric("latch_contract_deprecated_use_total{name=\"orders:write\"}")
            .await
            >= 1.0
    );

    // A removal scheduled in an hour: the answers name it as `Sunset`.
    let at = rfc3339(whole_second_in(3600));
    let r = promote(node(0), ORDERS, "scope", "orders:write", Some(&at)).await;
    let v3 = ok(&r, "scheduled removal");
    assert_eq!(
        (v3["version"].clone(), v3["in_force"].clone()),
        (json!(3), json!(false))
    );
    let sunset = http_date(v3["effective_at_ms"].as_i64().unwrap());
    on_every_node(
        nodes,
        "Sunset of the planned removal",
        deprecated_everywhere(Some(sunset)),
    )
    .await;

    // Cancelled: no Sunset any more.
    let r = cancel(node(1), ORDERS, 3, "not yet").await;
    assert_eq!(ok(&r, "cancel")["cancelled"], true);
    cancel(node(2), ORDERS, 3, "again")
        .await
        .assert_error(409, "conflict");
    on_every_node(
        nodes,
        "Sunset gone with the cancellation",
        deprecated_everywhere(None),
    )
    .await;

    // Removed now: tokens carrying it are inactive on every node; the others live on.
    let r = promote(node(2), ORDERS, "scope", "orders:write", None).await;
    let v4 = ok(&r, "removal");
    assert_eq!(v4["version"], 4);
    assert_eq!(
        v4["changelog"],
        "promote scope orders:write: deprecated → removed"
    );
    on_every_node(
        nodes,
        "tokens carrying the removed scope inactive",
        |http| {
            let (write, both) = (write.clone(), both.clone());
            async move {
                is(&introspect_http(&http, &write).await, false)?;
                is(&introspect_http(&http, &both).await, false)?;
                let r = token_http(&http, &clients::orders(), &[("scope", "orders:write")]).await;
                if r.status == StatusCode::OK {
                    return Err("orders:write still granted".into());
                }
                assert_refused(&r, 400, "invalid_scope", "scope_not_in_contract");
                Ok(())
            }
        },
    )
    .await;
    for n in nodes {
        is(&introspect_http(&n.http, &read).await, true).unwrap();
        is(&introspect_http(&n.http, &aud2).await, true).unwrap();
    }

    // The deprecated audience goes the same way.
    ok(
        &promote(node(1), ORDERS, "audience", ORDERS_AUD2, None).await,
        "remove audience",
    );
    on_every_node(nodes, "tokens for the removed audience inactive", |http| {
        let aud2 = aud2.clone();
        async move {
            is(&introspect_http(&http, &aud2).await, false)?;
            let r = token_http(&http, &clients::orders(), &[("resource", ORDERS_AUD2)]).await;
            if r.status == StatusCode::OK {
                return Err("the audience is still granted".into());
            }
            assert_refused(&r, 400, "invalid_target", "audience_not_in_contract");
            Ok(())
        }
    })
    .await;
    for n in nodes {
        is(&introspect_http(&n.http, &read).await, true).unwrap();
    }
}

// ---------------------------------------------------------------------------
// A scheduled amendment under load
// ---------------------------------------------------------------------------

/// One request of the load: which, on which node, the test's clock before it was sent
/// and after its answer, and the answer.
struct Sample {
    what: &'static str,
    node: usize,
    sent: i64,
    done: i64,
    status: u16,
    body: Value,
}

/// Whether `s` is what it must be, given the switch at `at` (ms): before `at` (answer
/// complete before it) the old contract, from `at` (sent at or after it) the new one, in
/// between either, always 2xx except the intended refusal of the shadow scope.
fn unintended(s: &Sample, at: i64) -> Option<String> {
    let before = s.done < at;
    let after = s.sent >= at;
    let active = s.body["active"] == true;
    let shadow_refusal = s.status == 400 && s.body["reason"] == "scope_in_shadow";
    let fine = match s.what {
        // Carries the scope the amendment removes.
        "introspect removed" => {
            s.status == 200
                && (if before {
                    active
                } else if after {
                    !active
                } else {
                    true
                })
        }
        // Carries only what stays.
        "introspect kept" => s.status == 200 && active,
        "issue kept" => s.status == 200,
        // The scope the amendment promotes from shadow.
        "issue promoted" => {
            if before {
                shadow_refusal
            } else if after {
                s.status == 200
            } else {
                s.status == 200 || shadow_refusal
            }
        }
        _ => false,
    };
    (!fine).then(|| {
        format!(
            "{} on node {}: sent {} ms and answered {} ms relative to the switch: {} {}",
            s.what,
            s.node,
            s.sent - at,
            s.done - at,
            s.status,
            s.body
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_amendment_switches_by_the_clock_under_load_on_the_embedded_store() {
    let s = TestServer::builder()
        .config(|c| c.limits.token_rate = Some("off".into()))
        .start()
        .await;
    scheduled_switch_under_load(std::slice::from_ref(&s)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_amendment_switches_every_redis_node_by_the_clock_under_load() {
    let redis = RedisProcess::start().await;
    let nodes = redis_nodes()
        .config(|c| c.limits.token_rate = Some("off".into()))
        .redis(&redis)
        .start_nodes(2)
        .await;
    scheduled_switch_under_load(&nodes).await;
}

/// One amendment scheduled a few seconds ahead (a widening from shadow and a removal
/// from deprecated), four tasks per node introspecting and issuing across the switch:
/// no unintended answer, and each answer is the old contract's before the switch and the
/// new one's after it.
async fn scheduled_switch_under_load(nodes: &[TestServer]) {
    let node = |i: usize| &nodes[i % nodes.len()];
    let orders = clients::orders();
    register(node(0), REFUND, "active").await;
    edit(node(0), ORDERS, |c| {
        c["scopes"][REFUND] = json!("shadow");
        c["scopes"]["orders:write"] = json!("deprecated");
    })
    .await;
    await_version(nodes, ORDERS, 2).await;
    let removed = node(0).issue(&orders, &[("scope", "orders:write")]).await;
    let kept = node(1).issue(&orders, &[("scope", "orders:read")]).await;

    // One amendment at a whole second a few seconds ahead: the shadow scope enforced, the
    // deprecated one removed.
    let at = whole_second_in(8);
    let (v, mut c) = latest(node(0), ORDERS).await;
    c["scopes"][REFUND] = json!("enforced");
    c["scopes"].as_object_mut().unwrap().remove("orders:write");
    let r = amend(node(0), ORDERS, &amendment(v, &c, Some(&rfc3339(at)))).await;
    let a = ok(&r, "scheduled amendment");
    assert_eq!(
        (a["effective_at_ms"].as_i64(), a["in_force"].clone()),
        (Some(at), json!(false))
    );
    let scheduled = a["version"].as_u64().unwrap();
    on_every_node(nodes, "the amendment is scheduled", |http| async move {
        let r = admin_call(&http, Method::GET, "/admin/contracts", None, "rid-read").await;
        let rows = r.json()["contracts"].clone();
        let row = rows
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["client"] == ORDERS)
            .unwrap()
            .clone();
        if row["scheduled"] == json!([scheduled]) {
            Ok(())
        } else {
            Err(format!("{row}"))
        }
    })
    .await;
    // Until then, the removal is announced.
    for n in nodes {
        let r = introspect_http(&n.http, &removed).await;
        assert_eq!(r.header("sunset"), Some(http_date(at)), "{}", r.text());
    }

    // The load: four tasks per node until two seconds past the switch.
    let changes = "latch_contract_changes_total{kind=\"scheduled\"}";
    let mut changes0 = Vec::new();
    for n in nodes {
        changes0.push(n.metric(changes).await);
    }
    let mut tasks = Vec::new();
    for (node, n) in nodes.iter().enumerate() {
        for task in 0..4 {
            let http = n.http.clone();
            let (removed, kept) = (removed.clone(), kept.clone());
            tasks.push(tokio::spawn(async move {
                let orders = clients::orders();
                let mut out = Vec::new();
                let mut i = task;
                while now_ms() < at + 2000 {
                    i += 1;
                    let sent = now_ms();
                    let (what, r) = match i % 4 {
                        0 => ("introspect removed", introspect_http(&http, &removed).await),
                        1 => ("introspect kept", introspect_http(&http, &kept).await),
                        2 => (
                            "issue kept",
                            token_http(&http, &orders, &[("scope", "orders:read")]).await,
                        ),
                        _ => (
                            "issue promoted",
                            token_http(&http, &orders, &[("scope", REFUND)]).await,
                        ),
                    };
                    let done = now_ms();
                    let body = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
                    out.push(Sample {
                        what,
                        node,
                        sent,
                        done,
                        status: r.status.as_u16(),
                        body,
                    });
                }
                out
            }));
        }
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.expect("load task"));
    }
    let wrong: Vec<String> = samples.iter().filter_map(|s| unintended(s, at)).collect();
    let before = samples.iter().filter(|s| s.done < at).count();
    let after = samples.iter().filter(|s| s.sent >= at).count();
    eprintln!(
        "{} requests: {before} answered before the switch, {after} sent after it, {} unintended",
        samples.len(),
        wrong.len()
    );
    assert_eq!(
        wrong.len(),
        0,
        "unintended answers, first: {:#?}",
        &wrong[..wrong.len().min(5)]
    );
    for node in 0..nodes.len() {
        for what in ["introspect removed", "issue promoted"] {
            for side in [true, false] {
                let n = samples
                    .iter()
                    .filter(|s| {
                        s.node == node
                            && s.what == what
                            && (if side { s.done < at } else { s.sent >= at })
                    })
                    .count();
                assert!(
                    n > 0,
                    "no {what} on node {node} {} the switch",
                    if side { "before" } else { "after" }
                );
            }
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        let row = listed(n, ORDERS).await;
        assert_eq!(
            (row["version_in_force"].clone(), row["scheduled"].clone()),
            (json!(scheduled), json!([]))
        );
        let c0 = changes0[i];
        eventually(DEADLINE, "the switch is counted", || async move {
            let c = n.metric(changes).await;
            if c > c0 {
                Ok(())
            } else {
                Err(format!("{c}"))
            }
        })
        .await;
    }
}

// ---------------------------------------------------------------------------
// Cancel and rollback
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_cancelled_amendment_never_takes_effect() {
    let s = TestServer::builder().start().await;
    let orders = clients::orders();
    register(&s, REFUND, "active").await;
    edit(&s, ORDERS, |c| c["scopes"][REFUND] = json!("shadow")).await;
    let at = whole_second_in(5);
    let r = promote(&s, ORDERS, "scope", REFUND, Some(&rfc3339(at))).await;
    let v3 = ok(&r, "scheduled promotion");
    assert_eq!(
        (
            v3["version"].clone(),
            v3["effective_at"].clone(),
            v3["effective_at_ms"].clone(),
            v3["in_force"].clone()
        ),
        (json!(3), json!(rfc3339(at)), json!(at), json!(false))
    );
    let row = listed(&s, ORDERS).await;
    assert_eq!(
        (
            row["version_in_force"].clone(),
            row["latest_version"].clone(),
            row["scheduled"].clone()
        ),
        (json!(2), json!(3), json!([3]))
    );
    // Nothing may take effect before a scheduled amendment.
    let (_, c) = latest(&s, ORDERS).await;
    let r = amend(&s, ORDERS, &amendment(3, &c, None)).await;
    assert_problems(
        &r,
        &[("effective_at_before_scheduled", "effective_at")],
        "before the scheduled one",
    );

    let r = cancel(&s, ORDERS, 3, "").await;
    assert_problems(
        &r,
        &[("missing_reason", "reason")],
        "cancel without a reason",
    );
    let r = cancel(&s, ORDERS, 3, "wrong day").await;
    let c3 = ok(&r, "cancel");
    assert_eq!(
        (
            c3["version"].clone(),
            c3["cancelled"].clone(),
            c3["in_force"].clone()
        ),
        (json!(3), json!(true), json!(false))
    );
    cancel(&s, ORDERS, 3, "again")
        .await
        .assert_error(409, "conflict");
    cancel(&s, ORDERS, 2, "in force")
        .await
        .assert_error(409, "conflict");
    cancel(&s, ORDERS, 1, "in force once")
        .await
        .assert_error(409, "conflict");
    cancel(&s, ORDERS, 9, "unknown")
        .await
        .assert_error(404, "not_found");
    assert_eq!(listed(&s, ORDERS).await["scheduled"], json!([]));

    // Its time passes: still version 2, still in shadow.
    wait_past(at).await;
    let row = listed(&s, ORDERS).await;
    assert_eq!(row["version_in_force"], 2);
    let r = s.token_resp(&orders, &[("scope", REFUND)]).await;
    assert_refused(&r, 400, "invalid_scope", "scope_in_shadow");
    let h = history(&s, ORDERS).await;
    assert_eq!(
        (
            h[2]["cancelled"].clone(),
            h[2]["in_force"].clone(),
            h[1]["in_force"].clone()
        ),
        (json!(true), json!(false), json!(true))
    );
    // A cancelled version was never in force: no rollback to it.
    let r = rollback(&s, ORDERS, 3, 3).await;
    assert_problems(
        &r,
        &[("never_in_force", "to")],
        "rollback to a cancelled version",
    );
}

#[tokio::test]
async fn a_rollback_restores_a_version_without_ramp_and_kills_exceeding_tokens() {
    let s = TestServer::builder().start().await;
    let orders = clients::orders();
    register(&s, REFUND, "active").await;
    edit(&s, ORDERS, |c| c["scopes"][REFUND] = json!("shadow")).await;
    ok(&promote(&s, ORDERS, "scope", REFUND, None).await, "promote");
    let refund = s.issue(&orders, &[("scope", REFUND)]).await;
    let all = s.issue(&orders, &[]).await;
    let read = s.issue(&orders, &[("scope", "orders:read")]).await;
    assert_eq!(
        decode_jwt(&all).1["scope"],
        "orders:read orders:write orders:refund"
    );

    // A version scheduled later was never in force either.
    let (_, c) = latest(&s, ORDERS).await;
    let r = amend(
        &s,
        ORDERS,
        &amendment(3, &c, Some(&rfc3339(whole_second_in(3600)))),
    )
    .await;
    assert_eq!(ok(&r, "scheduled")["version"], 4);
    let r = rollback(&s, ORDERS, 4, 4).await;
    assert_problems(
        &r,
        &[("never_in_force", "to")],
        "rollback to a scheduled version",
    );
    ok(&cancel(&s, ORDERS, 4, "not needed").await, "cancel 4");
    rollback(&s, ORDERS, 1, 3)
        .await
        .assert_error(409, "conflict");
    rollback(&s, ORDERS, 99, 4)
        .await
        .assert_error(404, "not_found");
    rollback(&s, ORDERS, 0, 4)
        .await
        .assert_error(404, "not_found");

    // Back to version 1: a narrowing with no `deprecated` stage, allowed for a rollback.
    let r = rollback(&s, ORDERS, 1, 4).await;
    let v5 = ok(&r, "rollback");
    let v1 = &history(&s, ORDERS).await[0];
    assert_eq!(
        (
            v5["version"].clone(),
            v5["rollback_of"].clone(),
            v5["changelog"].clone(),
            v5["reason"].clone(),
            v5["author"].clone()
        ),
        (
            json!(5),
            json!(1),
            json!("rollback to version 1"),
            json!("INC-7 roll back"),
            json!("security-admin")
        )
    );
    assert_eq!(
        v5["body"], v1["body"],
        "a rollback carries the content of the version it restores"
    );
    assert!(
        !s.is_active(&refund).await,
        "a token with the rolled-back scope is active"
    );
    assert!(
        !s.is_active(&all).await,
        "a token with the rolled-back scope is active"
    );
    assert!(s.is_active(&read).await);
    let r = s.token_resp(&orders, &[("scope", REFUND)]).await;
    assert_refused(&r, 400, "invalid_scope", "scope_not_in_contract");

    // The same content as a plain amendment would skip the ramp; as a rollback it is fine.
    let (_, c3) = (3, history(&s, ORDERS).await[2]["body"]["content"].clone());
    let r = amend(&s, ORDERS, &amendment(5, &c3, None)).await;
    assert_problems(
        &r,
        &[("widening_skips_shadow", "scopes.\"orders:refund\"")],
        "plain amendment",
    );
    let v6 = ok(&rollback(&s, ORDERS, 3, 5).await, "rollback to 3");
    assert_eq!(
        (v6["version"].clone(), v6["rollback_of"].clone()),
        (json!(6), json!(3))
    );
    let t = s.issue(&orders, &[("scope", REFUND)]).await;
    assert_eq!(cv(&t), 6);

    // The history keeps every version, who, why and what.
    let h = history(&s, ORDERS).await;
    let summary: Vec<Value> = h
        .iter()
        .map(|e| {
            json!([
                e["version"],
                e["author"],
                e["reason"],
                e["changelog"],
                e["rollback_of"],
                e["cancelled"],
                e["in_force"]
            ])
        })
        .collect();
    assert_eq!(
        summary,
        [
            json!([
                1,
                "latch",
                "the configuration",
                "version 1: as configured in [[clients]]",
                null,
                false,
                false
            ]),
            json!([
                2,
                "security-admin",
                "TEST-1",
                "test amendment",
                null,
                false,
                false
            ]),
            json!([
                3,
                "security-admin",
                "TEST-promote",
                "promote scope orders:refund: shadow → enforced",
                null,
                false,
                false
            ]),
            json!([
                4,
                "security-admin",
                "TEST-1",
                "test amendment",
                null,
                true,
                false
            ]),
            json!([
                5,
                "security-admin",
                "INC-7 roll back",
                "rollback to version 1",
                1,
                false,
                false
            ]),
            json!([
                6,
                "security-admin",
                "INC-7 roll back",
                "rollback to version 3",
                3,
                false,
                true
            ]),
        ]
    );
}

#[tokio::test]
async fn a_token_killed_by_a_narrowing_stays_inactive_when_the_scope_returns() {
    let s = TestServer::builder().start().await;
    let orders = clients::orders();
    register(&s, REFUND, "active").await;
    edit(&s, ORDERS, |c| c["scopes"][REFUND] = json!("shadow")).await;
    ok(&promote(&s, ORDERS, "scope", REFUND, None).await, "promote");
    let refund = s.issue(&orders, &[("scope", REFUND)]).await;
    ok(&rollback(&s, ORDERS, 1, 3).await, "rollback to 1");
    assert!(!s.is_active(&refund).await, "the narrowing kills it");
    ok(&rollback(&s, ORDERS, 3, 4).await, "rollback to 3");
    // Revocations are final and a narrowing travels "the same path": a resource server
    // (or an offline feed) that saw it inactive must never see it active again.
    assert!(
        !s.is_active(&refund).await,
        "a token killed by a narrowing is active again"
    );
}

#[tokio::test]
async fn once_recorded_the_contract_wins_over_the_configuration_at_start() {
    let mut s = TestServer::builder().start().await;
    let orders = clients::orders();
    edit(&s, ORDERS, |_| {}).await;
    let t = s.issue(&orders, &[]).await;
    // The configuration widens both clients; only billing-service has no recorded
    // contract, so only it gets the new scope.
    let mut setup = s.setup.clone();
    setup.config.client_mut(ORDERS).scopes = vec![
        "orders:read".into(),
        "orders:write".into(),
        "orders:admin".into(),
    ];
    setup.config.client_mut("billing-service").scopes =
        vec!["billing:read".into(), "billing:write".into()];
    s.restart_with(&setup).await;
    let r = s.token_resp(&orders, &[("scope", "orders:admin")]).await;
    assert_refused(&r, 400, "invalid_scope", "scope_not_in_contract");
    let r = s.token_resp(&orders, &[]).await;
    assert_eq!(ok(&r, "default scope")["scope"], "orders:read orders:write");
    assert!(s.is_active(&t).await);
    assert_eq!(versions(&history(&s, ORDERS).await), [1, 2]);
    let billing = clients::billing();
    let r = s.token_resp(&billing, &[("scope", "billing:write")]).await;
    assert_eq!(
        ok(&r, "billing:write from the configuration")["scope"],
        "billing:write"
    );
    assert_eq!(history(&s, "billing-service").await.len(), 1);
}

// ---------------------------------------------------------------------------
// Suspension
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_suspended_client_gets_no_token_and_its_live_tokens_die() {
    let s = TestServer::builder().start().await;
    let orders = clients::orders();
    let t = s.issue(&orders, &[]).await;
    let billing = s.issue(&clients::billing(), &[]).await;
    let suspended = "latch_contract_decisions_total{reason=\"contract_suspended\"}";
    let before = s.metric(suspended).await;
    let v2 = edit(&s, ORDERS, |c| c["suspended"] = json!(true)).await;
    assert_eq!(v2["version"], 2);
    for params in [
        vec![],
        vec![("scope", "orders:read")],
        vec![("resource", ORDERS_AUD2)],
    ] {
        let r = s.token_resp(&orders, &params).await;
        assert_refused(&r, 400, "unauthorized_client", "contract_suspended");
        let text = r.text();
        assert!(!text.contains("billing"), "{text}");
    }
    assert_eq!(s.metric(suspended).await - before, 3.0);
    assert!(
        !s.is_active(&t).await,
        "a suspended client's token is active"
    );
    assert!(s.is_active(&billing).await, "another client's token died");
    assert_eq!(listed(&s, ORDERS).await["suspended"], true);

    let v3 = edit(&s, ORDERS, |c| c["suspended"] = json!(false)).await;
    assert_eq!(v3["version"], 3);
    let t = s.issue(&orders, &[]).await;
    assert_eq!(cv(&t), 3);
    assert!(s.is_active(&t).await);
    assert_eq!(listed(&s, ORDERS).await["suspended"], false);
}

/// A gateway allowed to act as other services (token exchange of a service token).
fn gateway() -> ClientDef {
    let mut c = ClientDef::new("orders-gateway")
        .grants(&["urn:ietf:params:oauth:grant-type:token-exchange"])
        .scopes(&["orders:read"])
        .audiences(&[ORDERS_AUD, BILLING_AUD]);
    c.delegate_service_tokens = true;
    c
}

#[tokio::test]
async fn suspending_a_client_kills_tokens_delegated_from_its_tokens() {
    let s = TestServer::builder().client(gateway()).start().await;
    let subject = s
        .issue(&clients::orders(), &[("scope", "orders:read")])
        .await;
    let r = s
        .post_form(
            "/token",
            &[
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:token-exchange",
                ),
                ("subject_token", subject.as_str()),
                (
                    "subject_token_type",
                    "urn:ietf:params:oauth:token-type:access_token",
                ),
                ("resource", BILLING_AUD),
            ],
            gateway().auth(),
        )
        .await;
    let delegated = access_token(&r, "delegation");
    assert_eq!(decode_jwt(&delegated).1["dcl"], json!([ORDERS]));
    assert!(s.is_active(&delegated).await);
    edit(&s, ORDERS, |c| c["suspended"] = json!(true)).await;
    assert!(!s.is_active(&subject).await);
    // `/admin/revoke kind=client` of orders-service would kill it (the chain is in `dcl`);
    // a suspension ("live tokens inactive") must not do less.
    assert!(
        !s.is_active(&delegated).await,
        "a token delegated from a suspended client's token is active"
    );
}

// ---------------------------------------------------------------------------
// Reason codes
// ---------------------------------------------------------------------------

/// A client whose contract names things an attacker would like to learn about.
fn partner() -> ClientDef {
    ClientDef::new("secret-partner")
        .grants(&["client_credentials"])
        .scopes(&["partner:payouts"])
        .audiences(&["https://partner-payouts.example"])
}

/// The body of `r` with `name` replaced, for comparing refusals of different names.
fn without(r: &Resp, name: &str) -> String {
    r.text().replace(name, "NAME")
}

#[tokio::test]
async fn refusals_carry_a_reason_code_and_reveal_no_other_contract() {
    let s = TestServer::builder().client(partner()).start().await;
    let orders = clients::orders();
    let secrets = [
        "billing-service",
        "billing:read",
        BILLING_AUD,
        "secret-partner",
        "partner:payouts",
        "https://partner-payouts.example",
    ];
    let leaks = |r: &Resp, asked: &str| {
        let text = r.text();
        for s in secrets {
            assert!(s == asked || !text.contains(s), "{s:?} leaks in {text}");
        }
    };

    // Another client's scope, a registered scope nobody has, and a made-up one: the same
    // answer, so the refusal is no oracle for other contracts or the registry.
    let mut bodies = Vec::new();
    for scope in ["billing:read", "partner:payouts", "made:up"] {
        let r = s.token_resp(&orders, &[("scope", scope)]).await;
        assert_refused(&r, 400, "invalid_scope", "scope_not_in_contract");
        leaks(&r, scope);
        bodies.push(without(&r, scope));
    }
    assert!(bodies.iter().all(|b| *b == bodies[0]), "{bodies:#?}");
    let mut bodies = Vec::new();
    for aud in [
        BILLING_AUD,
        "https://partner-payouts.example",
        "https://nowhere.example",
    ] {
        let r = s.token_resp(&orders, &[("resource", aud)]).await;
        assert_refused(&r, 400, "invalid_target", "audience_not_in_contract");
        leaks(&r, aud);
        bodies.push(r.text());
    }
    assert!(bodies.iter().all(|b| *b == bodies[0]), "{bodies:#?}");

    // In shadow: its own reasons.
    register(&s, REFUND, "active").await;
    edit(&s, ORDERS, |c| {
        c["scopes"][REFUND] = json!("shadow");
        c["audiences"][REFUNDS_AUD] = json!("shadow");
    })
    .await;
    let r = s.token_resp(&orders, &[("scope", REFUND)]).await;
    assert_refused(&r, 400, "invalid_scope", "scope_in_shadow");
    leaks(&r, REFUND);
    let r = s.token_resp(&orders, &[("resource", REFUNDS_AUD)]).await;
    assert_refused(&r, 400, "invalid_target", "audience_in_shadow");
    leaks(&r, REFUNDS_AUD);

    // Retired in the registry: no longer granted, and said so; the rest still is.
    register(&s, "orders:write", "retired").await;
    let r = s.token_resp(&orders, &[("scope", "orders:write")]).await;
    assert_refused(&r, 400, "invalid_scope", "scope_retired");
    leaks(&r, "orders:write");
    let r = s.token_resp(&orders, &[]).await;
    assert_eq!(ok(&r, "default scope")["scope"], "orders:read");
    // And no contract may grant it any more.
    let (v, mut c) = latest(&s, "billing-service").await;
    c["scopes"]["orders:write"] = json!("shadow");
    ok(
        &amend(&s, "billing-service", &amendment(v, &c, None)).await,
        "shadow of a retired scope",
    );
    let (v, mut c) = latest(&s, "billing-service").await;
    c["scopes"]["orders:write"] = json!("enforced");
    let r = amend(&s, "billing-service", &amendment(v, &c, None)).await;
    assert_problems(
        &r,
        &[("scope_retired", "scopes.\"orders:write\"")],
        "granting a retired scope",
    );
}

#[tokio::test]
async fn retiring_a_scope_makes_live_tokens_carrying_it_inactive() {
    let s = TestServer::builder().start().await;
    let orders = clients::orders();
    // Recorded version 2, so tokens carry the version in force when it is retired.
    edit(&s, ORDERS, |_| {}).await;
    let write = s.issue(&orders, &[("scope", "orders:write")]).await;
    let read = s.issue(&orders, &[("scope", "orders:read")]).await;
    register(&s, "orders:write", "retired").await;
    let r = s.token_resp(&orders, &[("scope", "orders:write")]).await;
    assert_refused(&r, 400, "invalid_scope", "scope_retired");
    assert!(s.is_active(&read).await);
    // "Introspection never reports more than the contract in force allows."
    assert!(
        !s.is_active(&write).await,
        "a token carrying a retired scope is active"
    );
}

#[tokio::test]
async fn a_client_whose_contract_names_a_retired_scope_can_still_be_suspended() {
    let s = TestServer::builder().start().await;
    register(&s, "orders:write", "retired").await;
    // Keeping it is refused (scope_retired), so are deprecating it (still granted),
    // sending it to shadow and removing it (narrowing_skips_deprecated): every
    // amendment of orders-service fails, a suspension of a compromised client too.
    let (v, mut c) = latest(&s, ORDERS).await;
    c["suspended"] = json!(true);
    let r = amend(&s, ORDERS, &amendment(v, &c, None)).await;
    assert_eq!(r.status, StatusCode::OK, "suspension refused: {}", r.text());
    let r = s.token_resp(&clients::orders(), &[]).await;
    assert_refused(&r, 400, "unauthorized_client", "contract_suspended");
}

// ---------------------------------------------------------------------------
// Hostile amendments
// ---------------------------------------------------------------------------

/// A hostile amendment: what it is, its body, the problems (code, key) it must get.
type Case<'a> = (&'a str, Value, Vec<(&'a str, &'a str)>);

#[tokio::test]
async fn hostile_amendments_are_refused_with_the_exact_problem() {
    let s = TestServer::builder().start().await;
    let (v, base) = latest(&s, ORDERS).await;
    assert_eq!(v, 1);
    let long = "x".repeat(4097);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut b = amendment(1, &base, None);
        f(&mut b);
        b
    };
    let contract = |f: &dyn Fn(&mut Value)| {
        let mut c = base.clone();
        f(&mut c);
        amendment(1, &c, None)
    };
    let cases: Vec<Case> = vec![
        (
            "unregistered scope",
            contract(&|c| c["scopes"]["nope:scope"] = json!("shadow")),
            vec![("unregistered_scope", "scopes.\"nope:scope\"")],
        ),
        (
            "huge changelog",
            with(&|b| b["changelog"] = json!(long)),
            vec![("text_too_long", "changelog")],
        ),
        (
            "huge reason",
            with(&|b| b["reason"] = json!(long)),
            vec![("text_too_long", "changelog")],
        ),
        (
            "no changelog",
            with(&|b| b["changelog"] = json!("")),
            vec![("missing_changelog", "changelog")],
        ),
        (
            "blank changelog",
            with(&|b| b["changelog"] = json!(" \t\n")),
            vec![("missing_changelog", "changelog")],
        ),
        (
            "no changelog nor reason",
            with(&|b| {
                b.as_object_mut().unwrap().remove("changelog");
                b.as_object_mut().unwrap().remove("reason");
            }),
            vec![
                ("missing_changelog", "changelog"),
                ("missing_reason", "reason"),
            ],
        ),
        (
            "an hour ago",
            with(&|b| b["effective_at"] = json!(rfc3339(now_ms() - 3_600_000))),
            vec![("effective_at_in_past", "effective_at")],
        ),
        (
            "the epoch",
            with(&|b| b["effective_at"] = json!("1970-01-01T00:00:00Z")),
            vec![("effective_at_in_past", "effective_at")],
        ),
        (
            "367 days ahead",
            with(&|b| b["effective_at"] = json!(rfc3339(now_ms() + 367 * 86_400_000))),
            vec![("effective_at_too_far", "effective_at")],
        ),
        (
            "the year 9999",
            with(&|b| b["effective_at"] = json!("9999-12-31T23:59:59Z")),
            vec![("effective_at_too_far", "effective_at")],
        ),
        (
            "a scope name with a space",
            contract(&|c| c["scopes"]["has space"] = json!("shadow")),
            vec![("invalid_scope_name", "scopes.\"has space\"")],
        ),
        (
            "a scope name with a quote",
            contract(&|c| c["scopes"]["a\"b"] = json!("shadow")),
            vec![("invalid_scope_name", "scopes.\"a\\\"b\"")],
        ),
        (
            "an unknown grant",
            contract(&|c| c["grants"] = json!(["client_credentials", "password"])),
            vec![("unknown_grant", "grants.\"password\"")],
        ),
        (
            "an unknown role",
            contract(&|c| c["roles"] = json!(["root"])),
            vec![("unknown_role", "roles.\"root\"")],
        ),
        (
            "an unknown authentication method",
            contract(&|c| c["auth_methods"] = json!(["private_key_jwt"])),
            vec![("unknown_auth_method", "auth_methods.\"private_key_jwt\"")],
        ),
        (
            "a zero token lifetime",
            contract(&|c| c["access_ttl_secs"] = json!(0)),
            vec![("access_ttl_out_of_range", "access_ttl_secs")],
        ),
        (
            "a lifetime above the cap",
            contract(&|c| c["access_ttl_secs"] = json!(1u64 << 40)),
            vec![("access_ttl_out_of_range", "access_ttl_secs")],
        ),
        (
            "an empty audience",
            contract(&|c| c["audiences"][""] = json!("shadow")),
            vec![("invalid_audience", "audiences")],
        ),
        (
            "every audience removed",
            contract(&|c| c["audiences"] = json!({})),
            vec![
                ("no_audience", "audiences"),
                (
                    "narrowing_skips_deprecated",
                    "audiences.\"https://orders-internal.example\"",
                ),
                (
                    "narrowing_skips_deprecated",
                    "audiences.\"https://orders.example\"",
                ),
            ],
        ),
    ];
    for (what, body, want) in &cases {
        let r = amend(&s, ORDERS, body).await;
        assert_problems(&r, want, what);
    }
    // Too many names at once.
    let many: serde_json::Map<String, Value> = (0..257)
        .map(|i| (format!("s{i}"), json!("shadow")))
        .collect();
    let r = amend(
        &s,
        ORDERS,
        &contract(&|c| c["scopes"] = Value::Object(many.clone())),
    )
    .await;
    assert!(
        problems(&r).contains(&("too_many_items".into(), "scopes".into())),
        "{}",
        r.text()
    );

    // A client latch does not know: its secret would live in the configuration.
    let r = amend(&s, "ghost-client", &amendment(0, &base, None)).await;
    assert_problems(&r, &[("unknown_client", "")], "unknown client");
    assert_eq!(r.json()["problems"][0]["at"], "client:ghost-client");
    get(&s, "/admin/contracts/ghost-client")
        .await
        .assert_error(404, "not_found");

    // Not RFC 3339 at all: refused before any check.
    for t in [
        json!("tomorrow"),
        json!("2030-13-01T00:00:00Z"),
        json!("2030-02-30T00:00:00Z"),
        json!("1700000000"),
        json!(""),
        json!("1960-01-01T00:00:00Z"),
        json!(1_700_000_000),
    ] {
        let mut b = amendment(1, &base, None);
        b["effective_at"] = t.clone();
        let r = amend(&s, ORDERS, &b).await;
        r.assert_error(400, "invalid_request");
        assert!(r.json().get("problems").is_none(), "{t}: {}", r.text());
    }

    // Nothing of all that was recorded or audited.
    assert_eq!(versions(&history(&s, ORDERS).await), [1]);
    assert!(s
        .audit(0)
        .await
        .iter()
        .all(|r| r["action"] != "contract_amend"));

    // Thirty seconds in the past is clock skew: accepted, in force now (not backdated).
    let r = amend(
        &s,
        ORDERS,
        &with(&|b| b["effective_at"] = json!(rfc3339(now_ms() - 30_000))),
    )
    .await;
    let a = ok(&r, "slightly in the past");
    assert_eq!(a["version"], 2);
    assert_eq!(a["effective_at_ms"], a["recorded_at_ms"], "backdated: {a}");
    // Stale, absent or future base versions: a conflict, not a write.
    for base_version in [0u64, 1, 3, u64::MAX] {
        let r = amend(&s, ORDERS, &amendment(base_version, &base, None)).await;
        r.assert_error(409, "conflict");
    }
    assert_eq!(versions(&history(&s, ORDERS).await), [1, 2]);
}

#[tokio::test]
async fn effective_at_that_is_not_rfc_3339_is_refused_even_when_it_looks_close() {
    let s = TestServer::builder().start().await;
    let (_, base) = latest(&s, ORDERS).await;
    let at = rfc3339(whole_second_in(3600));
    let no_zone = at.trim_end_matches('Z').to_string();
    // An operator in UTC+2 writing local time would schedule the change two hours off.
    for t in [
        no_zone.clone(),
        no_zone.replace('T', " "),
        format!("{at}junk"),
    ] {
        let r = amend(&s, ORDERS, &amendment(1, &base, Some(&t))).await;
        r.assert_error(400, "invalid_request");
    }
}

/// Sends `body` (raw bytes) to the amendment path with `content_type`.
async fn raw_amend(s: &TestServer, content_type: Option<&str>, body: Vec<u8>) -> Resp {
    let admin = clients::admin();
    let auth = basic(&admin.id, &admin.secret);
    let mut headers = vec![("authorization", auth.as_str())];
    if let Some(ct) = content_type {
        headers.push(("content-type", ct));
    }
    s.http
        .request(
            Method::POST,
            "/admin/contracts/orders-service",
            &headers,
            body,
        )
        .await
}

/// The status line and headers of the answer to an amendment whose head declares
/// `length` bytes of body, none of which is sent (the server answers without reading).
async fn raw_head(s: &TestServer, length: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let admin = clients::admin();
    let mut stream = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "POST /admin/contracts/orders-service HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n",
        basic(&admin.id, &admin.secret)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(DEADLINE, async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer to a body declared too large");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn malformed_amendment_requests_are_refused() {
    let s = TestServer::builder().start().await;
    let (_, base) = latest(&s, ORDERS).await;
    let good = amendment(1, &base, None);
    let json_ct = Some("application/json");
    let mut cases: Vec<(String, Option<&str>, Vec<u8>, u16)> = vec![
        (
            "not JSON".into(),
            json_ct,
            b"{\"base_version\": 1,".to_vec(),
            400,
        ),
        (
            "plain text".into(),
            json_ct,
            b"amend it please".to_vec(),
            400,
        ),
        ("empty".into(), json_ct, Vec::new(), 400),
        (
            "an array".into(),
            json_ct,
            serde_json::to_vec(&json!([1, good, "x"])).unwrap(),
            400,
        ),
        ("null".into(), json_ct, b"null".to_vec(), 400),
        ("a string".into(), json_ct, b"\"amend\"".to_vec(), 400),
        ("a number".into(), json_ct, b"1".to_vec(), 400),
        (
            "deep nesting".into(),
            json_ct,
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
            400,
        ),
        (
            "no content type".into(),
            None,
            serde_json::to_vec(&good).unwrap(),
            415,
        ),
        (
            "a form".into(),
            Some("application/x-www-form-urlencoded"),
            b"base_version=1".to_vec(),
            415,
        ),
    ];
    let mut changed = |what: &str, f: &dyn Fn(&mut Value)| {
        let mut b = good.clone();
        f(&mut b);
        cases.push((what.into(), json_ct, serde_json::to_vec(&b).unwrap(), 400));
    };
    changed("an unknown field", &|b| b["admin"] = json!(true));
    changed("an unknown contract field", &|b| {
        b["contract"]["superuser"] = json!(true)
    });
    changed("an unknown stage", &|b| {
        b["contract"]["scopes"]["orders:read"] = json!("enabled")
    });
    changed("base_version as a string", &|b| {
        b["base_version"] = json!("1")
    });
    changed("a negative base_version", &|b| {
        b["base_version"] = json!(-1)
    });
    changed("a fractional base_version", &|b| {
        b["base_version"] = json!(1.5)
    });
    changed("base_version above u64", &|b| {
        b["base_version"] = json!(18446744073709551616.0)
    });
    changed("no base_version", &|b| {
        b.as_object_mut().unwrap().remove("base_version");
    });
    changed("no contract", &|b| {
        b.as_object_mut().unwrap().remove("contract");
    });
    changed("a contract that is a list", &|b| {
        b["contract"] = json!(["orders:read"])
    });
    changed("scopes as a list", &|b| {
        b["contract"]["scopes"] = json!(["orders:read"])
    });
    changed("a numeric changelog", &|b| b["changelog"] = json!(42));
    changed("a registry on the contract path", &|b| {
        b["registry"] = json!({"scopes": {}})
    });
    for (what, ct, body, status) in cases {
        let r = raw_amend(&s, ct, body).await;
        assert_eq!(r.status.as_u16(), status, "{what}: {}", r.text());
        let v = r.json();
        assert_eq!(v["error"], "invalid_request", "{what}: {v}");
    }
    // A body declared over the limit and over the 1 MiB a server reads to drain it is
    // refused before it is read.
    let head = raw_head(&s, 2 * 1024 * 1024).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head:?}");
    assert_eq!(versions(&history(&s, ORDERS).await), [1]);
    // The limit is on the body, not the text: a changelog of 4 KiB goes through.
    let mut b = good.clone();
    b["changelog"] = json!("y".repeat(4096));
    assert_eq!(
        ok(
            &raw_amend(&s, json_ct, serde_json::to_vec(&b).unwrap()).await,
            "4096 bytes"
        )["version"],
        2
    );
}

#[tokio::test]
async fn admin_paths_refuse_bad_versions_unknown_clients_and_non_admins() {
    let s = TestServer::builder().start().await;
    let admin = clients::admin();
    let cases: Vec<(Method, &str, u16, &str)> = vec![
        (
            Method::GET,
            "/admin/contracts/orders-service/abc",
            400,
            "invalid_request",
        ),
        (
            Method::GET,
            "/admin/contracts/orders-service/0",
            400,
            "invalid_request",
        ),
        (
            Method::GET,
            "/admin/contracts/orders-service/-1",
            400,
            "invalid_request",
        ),
        (
            Method::GET,
            "/admin/contracts/orders-service/1.0",
            400,
            "invalid_request",
        ),
        (
            Method::GET,
            "/admin/contracts/orders-service/99999999999999999999999",
            400,
            "invalid_request",
        ),
        (
            Method::GET,
            "/admin/contracts/orders-service/18446744073709551616",
            400,
            "invalid_request",
        ),
        (
            Method::GET,
            "/admin/contracts/orders-service/18446744073709551615",
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/admin/contracts/orders-service/2",
            404,
            "not_found",
        ),
        (Method::GET, "/admin/contracts/ghost", 404, "not_found"),
        (Method::GET, "/admin/contracts/ghost/1", 404, "not_found"),
        (
            Method::GET,
            "/admin/contracts/client:orders-service",
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/admin/contracts/orders-service/1/2/3",
            404,
            "not_found",
        ),
        (Method::GET, "/admin/contracts//1", 404, "not_found"),
        (
            Method::POST,
            "/admin/contracts/orders-service/abc/cancel",
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/admin/contracts/orders-service/0/cancel",
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/admin/contracts/orders-service/99999999999999999999999/cancel",
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/admin/contracts/orders-service/7/cancel",
            404,
            "not_found",
        ),
        (
            Method::POST,
            "/admin/contracts/ghost/1/cancel",
            404,
            "not_found",
        ),
        (
            Method::POST,
            "/admin/contracts/ghost/rollback",
            404,
            "not_found",
        ),
        (
            Method::POST,
            "/admin/contracts/ghost/promote",
            404,
            "not_found",
        ),
        (
            Method::DELETE,
            "/admin/contracts/orders-service",
            405,
            "method_not_allowed",
        ),
        (Method::PUT, "/admin/scopes", 405, "method_not_allowed"),
        (
            Method::GET,
            "/admin/contracts/orders-service/rollback",
            405,
            "method_not_allowed",
        ),
    ];
    let long = format!("/admin/contracts/{}", "c".repeat(200));
    let bodies = json!({"reason": "r", "to": 1, "base_version": 0, "name": "x", "kind": "scope"});
    for (method, path, status, code) in
        cases
            .iter()
            .cloned()
            .chain([(Method::GET, long.as_str(), 404, "not_found")])
    {
        let body = match path {
            p if p.ends_with("/cancel") => json!({"reason": "r"}),
            p if p.ends_with("/rollback") && method == Method::POST => {
                json!({"to": 1, "base_version": 0, "reason": "r"})
            }
            p if p.ends_with("/promote") => {
                json!({"name": "x", "kind": "scope", "base_version": 0, "reason": "r"})
            }
            _ => bodies.clone(),
        };
        let b = (method == Method::POST).then_some(&body);
        let r = admin_call(&s.http, method.clone(), path, b, "rid-path").await;
        r.assert_error(status, code);
        if status == 405 {
            assert!(r.header("allow").is_some(), "{method} {path}: no Allow");
        }
    }

    // Not an admin: nothing to read, nothing written.
    let (_, base) = latest(&s, ORDERS).await;
    let writes: Vec<(&str, Value)> = vec![
        ("/admin/contracts/orders-service", amendment(1, &base, None)),
        (
            "/admin/contracts/orders-service/1/cancel",
            json!({"reason": "r"}),
        ),
        (
            "/admin/contracts/orders-service/rollback",
            json!({"to": 1, "base_version": 1, "reason": "r"}),
        ),
        (
            "/admin/contracts/orders-service/promote",
            json!({"name": "orders:read", "kind": "scope", "base_version": 1, "reason": "r"}),
        ),
        (
            "/admin/scopes",
            json!({"base_version": 1, "registry": {"scopes": {}}, "changelog": "c", "reason": "r"}),
        ),
    ];
    let reads = [
        "/admin/contracts",
        "/admin/contracts/orders-service",
        "/admin/contracts/orders-service/1",
        "/admin/scopes",
    ];
    let wrong_secret = ClientDef::new(&admin.id).secret("not-the-admin-secret-0123456789abcdef");
    let callers: Vec<(Option<ClientDef>, u16, &str)> = vec![
        (None, 401, "invalid_client"),
        (Some(wrong_secret), 401, "invalid_client"),
        (Some(clients::orders()), 403, "unauthorized_client"),
        (Some(clients::rs_all()), 403, "unauthorized_client"),
        (Some(clients::nobody()), 403, "unauthorized_client"),
    ];
    for (caller, status, code) in &callers {
        let auth = caller.as_ref().and_then(|c| c.auth());
        for path in reads {
            s.get(path, auth).await.assert_error(*status, code);
        }
        for (path, body) in &writes {
            let r = s.post_json(path, body, auth).await;
            r.assert_error(*status, code);
            if *status == 401 {
                assert!(
                    r.header("www-authenticate").is_some(),
                    "{path}: no WWW-Authenticate"
                );
            }
        }
    }
    assert_eq!(versions(&history(&s, ORDERS).await), [1]);
    assert_eq!(
        ok(&get(&s, "/admin/scopes").await, "registry")["latest_version"],
        1
    );
    assert!(s
        .audit(0)
        .await
        .iter()
        .all(|r| !r["action"].as_str().unwrap().starts_with("contract")));
}

// ---------------------------------------------------------------------------
// Concurrent amendments
// ---------------------------------------------------------------------------

/// Sixteen writers amend the same version at once, spread over `nodes`, twice: exactly one
/// wins each round, every other gets 409 `conflict`, and every node ends with one history.
async fn exactly_one_concurrent_amendment_wins(nodes: &[TestServer]) {
    for round in 0..2u64 {
        let (base, content) = latest(&nodes[0], ORDERS).await;
        assert_eq!(base, 1 + round);
        let gate = Arc::new(tokio::sync::Barrier::new(16));
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let http = nodes[i % nodes.len()].http.clone();
                let gate = gate.clone();
                let mut body = amendment(base, &content, None);
                body["changelog"] = json!(format!("writer {i}"));
                tokio::spawn(async move {
                    gate.wait().await;
                    let rid = format!("rid-writer-{i}");
                    (
                        i,
                        admin_call(
                            &http,
                            Method::POST,
                            "/admin/contracts/orders-service",
                            Some(&body),
                            &rid,
                        )
                        .await,
                    )
                })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            let (i, r) = t.await.expect("writer");
            match r.status.as_u16() {
                200 => winners.push((i, r.json())),
                _ => r.assert_error(409, "conflict"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        let (i, a) = &winners[0];
        assert_eq!(a["version"], base + 1);
        let want: Vec<u64> = (1..=base + 1).collect();
        let changelog = format!("writer {i}");
        on_every_node(nodes, "one history", |http| {
            let (want, changelog) = (want.clone(), changelog.clone());
            async move {
                let r = admin_call(
                    &http,
                    Method::GET,
                    "/admin/contracts/orders-service",
                    None,
                    "rid-read",
                )
                .await;
                let h = r.json()["history"].as_array().cloned().unwrap_or_default();
                if versions(&h) == want && h.last().unwrap()["changelog"] == changelog.as_str() {
                    Ok(())
                } else {
                    Err(format!("{h:?}"))
                }
            }
        })
        .await;
    }
    // Version 1 was recorded exactly once, by the first round.
    let v1s = nodes[0]
        .audit(0)
        .await
        .iter()
        .filter(|r| r["action"] == "contract_amend" && r["actor"] == "latch")
        .count();
    assert_eq!(v1s, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_amendments_on_the_embedded_store_exactly_one_wins() {
    let s = TestServer::builder().start().await;
    exactly_one_concurrent_amendment_wins(std::slice::from_ref(&s)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_amendments_across_redis_nodes_exactly_one_wins() {
    let redis = RedisProcess::start().await;
    let nodes = redis_nodes().redis(&redis).start_nodes(2).await;
    exactly_one_concurrent_amendment_wins(&nodes).await;
}

// ---------------------------------------------------------------------------
// Audit
// ---------------------------------------------------------------------------

#[tokio::test]
async fn every_contract_write_is_audited_with_actor_reason_and_request_id() {
    let s = TestServer::builder().start().await;
    let before = s.audit(0).await.len();
    let mut answers = Vec::new();

    let r = get(&s, "/admin/scopes").await;
    let mut registry = ok(&r, "registry")["registry"].clone();
    registry["scopes"][REFUND] = json!({"description": "refunds", "owner": "payments", "audiences": [ORDERS_AUD], "status": "active"});
    let body = json!({"base_version": 1, "registry": registry, "changelog": "register refunds", "reason": "REG-9"});
    answers.push(("rid-reg", post(&s, "/admin/scopes", &body, "rid-reg").await));
    let (_, mut c) = latest(&s, ORDERS).await;
    c["scopes"][REFUND] = json!("shadow");
    let body = json!({"base_version": 1, "contract": c, "changelog": "refunds in shadow", "reason": "CHG-1"});
    answers.push((
        "rid-amend",
        post(&s, "/admin/contracts/orders-service", &body, "rid-amend").await,
    ));
    let at = rfc3339(whole_second_in(3600));
    let body = json!({"name": REFUND, "kind": "scope", "base_version": 2, "reason": "CHG-2", "effective_at": at});
    answers.push((
        "rid-schedule",
        post(
            &s,
            "/admin/contracts/orders-service/promote",
            &body,
            "rid-schedule",
        )
        .await,
    ));
    let body = json!({"reason": "CHG-3 not this week"});
    answers.push((
        "rid-cancel",
        post(
            &s,
            "/admin/contracts/orders-service/3/cancel",
            &body,
            "rid-cancel",
        )
        .await,
    ));
    let body = json!({"name": REFUND, "kind": "scope", "base_version": 3, "reason": "CHG-4"});
    answers.push((
        "rid-promote",
        post(
            &s,
            "/admin/contracts/orders-service/promote",
            &body,
            "rid-promote",
        )
        .await,
    ));
    let body = json!({"to": 2, "base_version": 4, "reason": "INC-5"});
    answers.push((
        "rid-rollback",
        post(
            &s,
            "/admin/contracts/orders-service/rollback",
            &body,
            "rid-rollback",
        )
        .await,
    ));
    for (rid, r) in &answers {
        ok(r, rid);
        assert_eq!(r.header("x-request-id").as_deref(), Some(*rid));
    }
    // Refused writes leave no record.
    let (_, c) = latest(&s, ORDERS).await;
    post(
        &s,
        "/admin/contracts/orders-service",
        &amendment(1, &c, None),
        "rid-refused-1",
    )
    .await
    .assert_error(409, "conflict");
    let mut bad = c.clone();
    bad["scopes"]["nope:x"] = json!("shadow");
    post(
        &s,
        "/admin/contracts/orders-service",
        &amendment(5, &bad, None),
        "rid-refused-2",
    )
    .await
    .assert_error(400, "invalid_request");
    post(
        &s,
        "/admin/contracts/orders-service/3/cancel",
        &json!({"reason": "r"}),
        "rid-refused-3",
    )
    .await
    .assert_error(409, "conflict");

    let admin = "security-admin";
    let records: Vec<Value> = s.audit(0).await[before..]
        .iter()
        .map(|r| json!([r["action"], r["actor"], r["reason"], r["request_id"]]))
        .collect();
    let amend = "contract_amend";
    // The registry's action is checked by
    // `the_audit_of_a_contract_write_names_the_document_and_version`.
    let registry = records
        .iter()
        .find(|r| r[2] == "REG-9")
        .map(|r| r[0].clone())
        .expect("the registry amendment is audited");
    let v1 = "version 1 from the configuration";
    assert_eq!(
        records,
        [
            json!([registry, "latch", v1, "rid-reg"]),
            json!([registry, admin, "REG-9", "rid-reg"]),
            json!([amend, "latch", v1, "rid-amend"]),
            json!([amend, admin, "CHG-1", "rid-amend"]),
            json!([amend, admin, "CHG-2", "rid-schedule"]),
            json!([
                "contract_cancel",
                admin,
                "CHG-3 not this week",
                "rid-cancel"
            ]),
            json!([amend, admin, "CHG-4", "rid-promote"]),
            json!([amend, admin, "INC-5", "rid-rollback"]),
        ]
    );
}

#[tokio::test]
async fn the_audit_of_a_contract_write_names_the_document_and_version() {
    let s = TestServer::builder().start().await;
    register(&s, REFUND, "active").await;
    edit(&s, ORDERS, |c| c["scopes"][REFUND] = json!("shadow")).await;
    let at = rfc3339(whole_second_in(3600));
    ok(
        &promote(&s, ORDERS, "scope", REFUND, Some(&at)).await,
        "schedule",
    );
    ok(&cancel(&s, ORDERS, 3, "not now").await, "cancel");
    let records: Vec<Value> = s
        .audit(0)
        .await
        .iter()
        .filter(|r| {
            r["action"].as_str().unwrap().contains("_amend") || r["action"] == "contract_cancel"
        })
        .map(|r| json!([r["action"], r["target"]]))
        .collect();
    // Which document and which version: without them the audit cannot answer "who
    // changed orders-service's contract".
    assert_eq!(
        records,
        [
            json!(["registry_amend", "registry@1"]),
            json!(["registry_amend", "registry@2"]),
            json!(["contract_amend", "client:orders-service@1"]),
            json!(["contract_amend", "client:orders-service@2"]),
            json!(["contract_amend", "client:orders-service@3"]),
            json!(["contract_cancel", "client:orders-service@3"]),
        ]
    );
}

// ---------------------------------------------------------------------------
// Authentication methods
// ---------------------------------------------------------------------------

async fn token_by_post(s: &TestServer, client: &ClientDef) -> Resp {
    s.post_form(
        "/token",
        &[
            ("grant_type", "client_credentials"),
            ("client_id", client.id.as_str()),
            ("client_secret", client.secret.as_str()),
        ],
        None,
    )
    .await
}

async fn introspect_by_post(s: &TestServer, rs: &ClientDef, token: &str) -> Resp {
    s.post_form(
        "/introspect",
        &[
            ("token", token),
            ("client_id", rs.id.as_str()),
            ("client_secret", rs.secret.as_str()),
        ],
        None,
    )
    .await
}

#[tokio::test]
async fn a_contract_restricts_client_authentication_methods() {
    let s = TestServer::builder().start().await;
    let orders = clients::orders();
    let rs = clients::rs_all();
    access_token(
        &token_by_post(&s, &orders).await,
        "client_secret_post under version 1",
    );
    let t = s.issue(&orders, &[]).await;

    edit(&s, ORDERS, |c| {
        c["auth_methods"] = json!(["client_secret_basic"])
    })
    .await;
    token_by_post(&s, &orders)
        .await
        .assert_error(401, "invalid_client");
    let t2 = s.issue(&orders, &[]).await;
    edit(&s, ORDERS, |c| {
        c["auth_methods"] = json!(["client_secret_post"])
    })
    .await;
    s.token_resp(&orders, &[])
        .await
        .assert_error(401, "invalid_client");
    access_token(
        &token_by_post(&s, &orders).await,
        "client_secret_post allowed again",
    );

    // A resource server too.
    edit(&s, "gateway-rs", |c| {
        c["auth_methods"] = json!(["client_secret_post"])
    })
    .await;
    s.post_form("/introspect", &[("token", &t)], rs.auth())
        .await
        .assert_error(401, "invalid_client");
    is(&introspect_by_post(&s, &rs, &t2).await, true).unwrap();
    edit(&s, "gateway-rs", |c| c["auth_methods"] = json!([])).await;
    is(
        &s.post_form("/introspect", &[("token", &t)], rs.auth())
            .await,
        true,
    )
    .unwrap();
}
