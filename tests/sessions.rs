//! User sessions: RFC 8693 token exchange of an IdP assertion (session opening) and of
//! an access token (delegation), rotating refresh tokens with reuse detection, session
//! cascades through `/revoke` and `/admin/revoke`, refresh-token introspection, and the
//! cluster behaviour of sessions in redis mode.

use serde_json::{json, Value};
use testkit::clients::{self, ORDERS_AUD};
use testkit::prelude::*;

const TE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const AT_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// latch's own issuer (the default audience of a trusted issuer).
const LATCH_ISS: &str = "http://latch.test";
const IDP_ISS: &str = "https://idp.test";
const IDP_KID: &str = "idp-1";
/// A second trusted issuer, configured inline with an explicit audience.
const OTHER_ISS: &str = "https://other-idp.test";
const OTHER_KID: &str = "other-1";
const OTHER_AUD: &str = "https://latch-api.test";

const PROFILE_AUD: &str = "https://profile.example";
const REPORTS_AUD: &str = "https://reports.example";
const REPORTS_AUD2: &str = "https://reports-internal.example";

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

/// The IdP hook: opens sessions and refreshes them.
fn idp_hook() -> ClientDef {
    ClientDef::new("idp-hook")
        .grants(&[TE, "refresh_token"])
        .scopes(&["profile", "orders:read", "orders:write"])
        .audiences(&[ORDERS_AUD, PROFILE_AUD])
        .roles(&["session_issuer"])
}

/// A second session issuer (to present another client's refresh tokens).
fn idp_hook2() -> ClientDef {
    ClientDef::new("idp-hook-2")
        .grants(&[TE, "refresh_token"])
        .scopes(&["profile", "orders:read", "orders:write"])
        .audiences(&[ORDERS_AUD, PROFILE_AUD])
        .roles(&["session_issuer"])
}

/// A delegating service: token exchange only, no roles.
/// It serves `ORDERS_AUD` too: user tokens for the orders API reach it, and only tokens
/// meant for it may be delegated (RFC 8693 §2.1 `subject_token` for the caller).
fn reports() -> ClientDef {
    ClientDef::new("reports-service")
        .grants(&[TE])
        .scopes(&["orders:read", "reports:write"])
        .audiences(&[REPORTS_AUD, REPORTS_AUD2, ORDERS_AUD])
}

/// Has the `session_issuer` role but not the token-exchange grant.
fn issuer_without_grant() -> ClientDef {
    ClientDef::new("idp-no-grant")
        .grants(&["client_credentials"])
        .scopes(&["profile"])
        .audiences(&[PROFILE_AUD])
        .roles(&["session_issuer"])
}

fn session_clients() -> Vec<ClientDef> {
    let mut v = clients::standard();
    v.extend([idp_hook(), idp_hook2(), reports(), issuer_without_grant()]);
    v
}

// ---------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------

struct Env {
    s: TestServer,
    idp: Idp,
    other: Idp,
}

/// `https://idp.test` read from a JWKS file, with latch's issuer as the audience.
fn main_idp() -> Idp {
    Idp::new(IDP_ISS).kid(IDP_KID)
}

/// The session clients and `idp`'s entry (prefix `idp|`).
fn session_config(idp: &Idp) -> ServerBuilder {
    TestServer::builder()
        .clients(session_clients())
        .trusted_issuer(idp.trusted().subject_prefix("idp|").jwks_in_file())
}

/// [`session_config`] plus `https://other-idp.test`, inline with its own audience
/// (prefix `other|`); `tweak` changes the rest.
async fn start_with(tweak: impl FnOnce(&mut Config)) -> Env {
    let idp = main_idp();
    let other = Idp::new(OTHER_ISS).kid(OTHER_KID).audience(OTHER_AUD);
    let s = session_config(&idp)
        .trusted_issuer(other.trusted().subject_prefix("other|").audience(OTHER_AUD))
        .config(tweak)
        .start()
        .await;
    Env { s, idp, other }
}

async fn start() -> Env {
    start_with(|_| {}).await
}

#[derive(Debug, Clone)]
struct Session {
    access: String,
    refresh: String,
    sid: String,
    body: Value,
}

fn claims_of(token: &str) -> Value {
    decode_jwt(token).1
}

/// A session from a 200 token response with access and refresh token.
#[track_caller]
fn session_from(r: &Resp, what: &str) -> Session {
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    let body = r.json();
    let access = body["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no access_token in {body}"))
        .to_string();
    let refresh = body["refresh_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no refresh_token in {body}"))
        .to_string();
    let sid = claims_of(&access)["sid"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no sid in {}", claims_of(&access)))
        .to_string();
    Session {
        access,
        refresh,
        sid,
        body,
    }
}

/// Token exchange of a user assertion (session opening).
async fn exchange(
    s: &TestServer,
    client: &ClientDef,
    assertion: &str,
    extra: &[(&str, &str)],
) -> Resp {
    let mut p = vec![
        ("grant_type", TE),
        ("subject_token", assertion),
        ("subject_token_type", JWT_TYPE),
    ];
    p.extend_from_slice(extra);
    s.post_form("/token", &p, client.auth()).await
}

/// Opens a session for `sub` through the IdP hook; panics unless 200.
async fn open_on(s: &TestServer, idp: &Idp, sub: &str, extra: &[(&str, &str)]) -> Session {
    let r = exchange(s, &idp_hook(), &idp.assertion(sub), extra).await;
    session_from(&r, &format!("open session for {sub}"))
}

async fn refresh_resp(
    s: &TestServer,
    client: &ClientDef,
    rt: &str,
    extra: &[(&str, &str)],
) -> Resp {
    let mut p = vec![("grant_type", "refresh_token"), ("refresh_token", rt)];
    p.extend_from_slice(extra);
    s.post_form("/token", &p, client.auth()).await
}

/// Refreshes through the IdP hook; panics unless 200.
async fn refresh_ok(s: &TestServer, rt: &str) -> Session {
    let r = refresh_resp(s, &idp_hook(), rt, &[]).await;
    session_from(&r, "refresh")
}

/// Token exchange of an access token (delegation).
async fn delegate(
    s: &TestServer,
    client: &ClientDef,
    subject: &str,
    extra: &[(&str, &str)],
) -> Resp {
    let mut p = vec![
        ("grant_type", TE),
        ("subject_token", subject),
        ("subject_token_type", AT_TYPE),
    ];
    p.extend_from_slice(extra);
    s.post_form("/token", &p, client.auth()).await
}

/// A delegated token from a 200 response (no refresh token).
#[track_caller]
fn delegated_from(r: &Resp, what: &str) -> String {
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    let body = r.json();
    assert!(
        body.get("refresh_token").is_none(),
        "{what}: delegation must not return a refresh token: {body}"
    );
    body["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no access_token in {body}"))
        .to_string()
}

fn set(items: &[&str]) -> std::collections::BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The refresh is refused with 400 invalid_grant.
async fn assert_refresh_refused(s: &TestServer, rt: &str, what: &str) {
    let r = refresh_resp(s, &idp_hook(), rt, &[]).await;
    assert_eq!(
        r.status,
        400,
        "{what}: refresh must be refused with 400 invalid_grant; got {} {}",
        r.status,
        r.text()
    );
    r.assert_error(400, "invalid_grant");
}

async fn assert_inactive(s: &TestServer, token: &str, what: &str) {
    let v = s.introspect(token).await;
    assert_eq!(v, inactive(), "{what}: must be exactly {{active:false}}");
}

async fn assert_active(s: &TestServer, token: &str, what: &str) {
    let v = s.introspect(token).await;
    assert_eq!(v["active"], true, "{what}: must be active; got {v}");
}

// ---------------------------------------------------------------------------
// 1. Session opening
// ---------------------------------------------------------------------------

#[tokio::test]
async fn session_opening_happy_path() {
    let env = start().await;
    let s = &env.s;
    let hook = idp_hook();

    let r = exchange(s, &hook, &env.idp.assertion("alice"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.assert_no_store();
    assert!(r
        .header("content-type")
        .unwrap_or_default()
        .starts_with("application/json"));
    let sess = session_from(&r, "open");
    let body = &sess.body;
    assert_eq!(body["token_type"], "Bearer", "{body}");
    assert_eq!(body["issued_token_type"], AT_TYPE, "{body}");
    let expires_in = body["expires_in"].as_u64().expect("expires_in integer");
    assert!(expires_in > 0 && expires_in <= 300, "{body}");
    assert_eq!(
        scope_set(&body["scope"]),
        set(&["profile", "orders:read", "orders:write"]),
        "default scope: all of the client's scopes; {body}"
    );
    assert!(!sess.refresh.is_empty());
    assert_ne!(sess.refresh, sess.access);

    let (h, c, _) = decode_jwt(&sess.access);
    assert_eq!(h["typ"], "at+jwt", "{h}");
    assert_eq!(c["iss"], LATCH_ISS, "{c}");
    assert_eq!(c["sub"], "idp|alice", "{c}");
    assert_eq!(c["client_id"], "idp-hook", "{c}");
    assert_eq!(c["username"], "alice@example.com", "{c}");
    assert_eq!(aud_list(&c["aud"]), vec![ORDERS_AUD.to_string()], "{c}");
    assert_eq!(scope_set(&c["scope"]), scope_set(&body["scope"]), "{c}");
    assert!(!sess.sid.is_empty());
    assert!(c.get("act").is_none(), "a session token has no act: {c}");

    // Introspection shows the session.
    let v = s.introspect(&sess.access).await;
    assert_eq!(v["active"], true, "{v}");
    assert_eq!(v["sub"], "idp|alice", "{v}");
    assert_eq!(v["sid"], sess.sid.as_str(), "{v}");
    assert_eq!(v["client_id"], "idp-hook", "{v}");
    assert_eq!(v["username"], "alice@example.com", "{v}");
    assert_eq!(v["token_type"], "Bearer", "{v}");

    // Every exchange opens a fresh session.
    let sess2 = open_on(s, &env.idp, "alice", &[]).await;
    assert_ne!(sess2.sid, sess.sid, "each exchange must get a fresh sid");
    assert_ne!(sess2.refresh, sess.refresh);

    // Explicit scope and resource.
    let r = exchange(
        s,
        &hook,
        &env.idp.assertion("bob"),
        &[("scope", "profile"), ("resource", PROFILE_AUD)],
    )
    .await;
    let sess3 = session_from(&r, "open with scope and resource");
    assert_eq!(scope_set(&sess3.body["scope"]), set(&["profile"]));
    let c3 = claims_of(&sess3.access);
    assert_eq!(aud_list(&c3["aud"]), vec![PROFILE_AUD.to_string()], "{c3}");
    assert_eq!(scope_set(&c3["scope"]), set(&["profile"]), "{c3}");
    assert_eq!(c3["sub"], "idp|bob", "{c3}");
    assert_ne!(sess3.sid, sess.sid);

    // Without preferred_username there is no username claim.
    let mut cl = env.idp.claims("carol");
    cl.as_object_mut().unwrap().remove("preferred_username");
    let sess4 = session_from(
        &exchange(s, &hook, &env.idp.sign(&cl), &[]).await,
        "open without preferred_username",
    );
    let c4 = claims_of(&sess4.access);
    assert_eq!(c4["sub"], "idp|carol");
    assert!(c4.get("username").is_none(), "{c4}");

    // Audit: one session_create per session, actor the IdP hook.
    let records = s.audit(0).await;
    let creates: Vec<&Value> = records
        .iter()
        .filter(|r| r["action"] == "session_create")
        .collect();
    assert_eq!(creates.len(), 4, "session_create records: {records:?}");
    for rec in creates {
        assert_eq!(rec["actor"], "idp-hook", "{rec}");
    }
}

#[tokio::test]
async fn session_opening_validates_scope_and_resource() {
    let env = start().await;
    let s = &env.s;
    let hook = idp_hook();
    for (scope, what) in [
        ("billing:read", "scope the client does not have"),
        ("profile billing:read", "one scope outside the client's"),
        ("reports:write", "another client's scope"),
    ] {
        let r = exchange(s, &hook, &env.idp.assertion("alice"), &[("scope", scope)]).await;
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        r.assert_error(400, "invalid_scope");
    }
    for res in [REPORTS_AUD, "https://unknown.example"] {
        let r = exchange(s, &hook, &env.idp.assertion("alice"), &[("resource", res)]).await;
        r.assert_error(400, "invalid_target");
    }
    // A valid request still works afterwards.
    open_on(s, &env.idp, "alice", &[("scope", "orders:read")]).await;
}

#[tokio::test]
async fn only_session_issuers_with_the_grant_open_sessions() {
    let env = start().await;
    let s = &env.s;
    // Token-exchange grant but no session_issuer role: 403.
    let r = exchange(s, &reports(), &env.idp.assertion("alice"), &[]).await;
    r.assert_error(403, "unauthorized_client");
    // session_issuer role but no token-exchange grant: 400.
    let r = exchange(s, &issuer_without_grant(), &env.idp.assertion("alice"), &[]).await;
    r.assert_error(400, "unauthorized_client");
    // No client authentication: 401.
    let p = [
        ("grant_type", TE),
        ("subject_token", &env.idp.assertion("alice")),
        ("subject_token_type", JWT_TYPE),
    ];
    let r = s.post_form("/token", &p, None).await;
    r.assert_error(401, "invalid_client");
    let r = s
        .post_form(
            "/token",
            &p,
            Some(("idp-hook", "wrong-secret-0123456789abcdef0123456789")),
        )
        .await;
    r.assert_error(401, "invalid_client");
    // The legitimate hook succeeds.
    open_on(s, &env.idp, "alice", &[]).await;
}

#[tokio::test]
async fn second_issuer_inline_jwks_and_explicit_audience() {
    let env = start().await;
    let s = &env.s;
    let hook = idp_hook();
    // Its assertions, for its configured audience, work.
    let sess = session_from(
        &exchange(s, &hook, &env.other.assertion("dave"), &[]).await,
        "other issuer",
    );
    assert_eq!(claims_of(&sess.access)["sub"], "other|dave");
    // Its configured audience is not latch's issuer: an assertion for latch's issuer fails.
    let mut cl = env.other.claims("dave");
    cl["aud"] = json!(LATCH_ISS);
    exchange(s, &hook, &env.other.sign(&cl), &[])
        .await
        .assert_error(400, "invalid_grant");
    // Key confusion: each issuer's assertions verify only with that issuer's keys.
    // iss = idp.test, signed by the other issuer's key (with its kid).
    let mut cl = env.idp.claims("mallory");
    cl["iss"] = json!(IDP_ISS);
    exchange(s, &hook, &env.other.sign(&cl), &[])
        .await
        .assert_error(400, "invalid_grant");
    // iss = other-idp.test with its audience, signed by idp.test's key (with idp's kid).
    let mut cl = env.other.claims("mallory");
    cl["iss"] = json!(OTHER_ISS);
    exchange(s, &hook, &env.idp.sign(&cl), &[])
        .await
        .assert_error(400, "invalid_grant");
}

// ---------------------------------------------------------------------------
// 6. Hostile assertions
// ---------------------------------------------------------------------------

#[tokio::test]
async fn hostile_assertions_are_invalid_grant() {
    let env = start().await;
    let s = &env.s;
    let hook = idp_hook();
    let idp = &env.idp;
    let now = now_secs();
    let attacker = main_idp();

    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = idp.claims("alice");
        f(&mut c);
        c
    };
    let without = |k: &str| {
        let mut c = idp.claims("alice");
        c.as_object_mut().unwrap().remove(k);
        c
    };

    let mut cases: Vec<(&str, String)> = vec![
        (
            "untrusted issuer (signed by the trusted key)",
            idp.sign(&with(&|c| c["iss"] = json!("https://evil.test"))),
        ),
        (
            "untrusted issuer (signed by its own key)",
            Idp::new("https://evil.test")
                .kid(IDP_KID)
                .assertion("alice"),
        ),
        (
            "signed by an unknown key with the trusted kid",
            attacker.assertion("alice"),
        ),
        (
            "signed by an unknown key with an unknown kid",
            attacker.sign_kid("idp-2", &idp.claims("alice")),
        ),
        (
            "trusted key but a kid not in the JWKS",
            idp.sign_kid("idp-2", &idp.claims("alice")),
        ),
        (
            "expired",
            idp.sign(&with(&|c| {
                c["iat"] = json!(now - 180);
                c["exp"] = json!(now - 120);
            })),
        ),
        (
            "iat 10 minutes old",
            idp.sign(&with(&|c| c["iat"] = json!(now - 600))),
        ),
        ("no iat", idp.sign(&without("iat"))),
        ("no jti", idp.sign(&without("jti"))),
        ("no sub", idp.sign(&without("sub"))),
        ("no aud", idp.sign(&without("aud"))),
        (
            "wrong audience",
            idp.sign(&with(&|c| c["aud"] = json!("https://someone-else.example"))),
        ),
        (
            "wrong audience array",
            idp.sign(&with(&|c| {
                c["aud"] = json!(["https://a.example", "https://b.example"])
            })),
        ),
        (
            "the other issuer's audience",
            idp.sign(&with(&|c| c["aud"] = json!(OTHER_AUD))),
        ),
    ];

    // Structural forgeries of a valid assertion.
    let good = idp.assertion("alice");
    let (h, c, sig) = decode_jwt(&good);
    let mut c_admin = c.clone();
    c_admin["sub"] = json!("admin");
    cases.push((
        "claims changed after signing",
        format!("{}.{}.{}", encode_part(&h), encode_part(&c_admin), sig),
    ));
    let none_h = json!({"alg": "none", "typ": "JWT", "kid": IDP_KID});
    cases.push((
        "alg none, empty signature",
        format!(
            "{}.{}.",
            encode_part(&none_h),
            encode_part(&idp.claims("alice"))
        ),
    ));
    cases.push((
        "alg none, original signature",
        format!(
            "{}.{}.{}",
            encode_part(&none_h),
            encode_part(&idp.claims("alice")),
            sig
        ),
    ));
    let hs_h = json!({"alg": "HS256", "typ": "JWT", "kid": IDP_KID});
    cases.push((
        "HS256 with the public key bytes as secret",
        sign_hs256(&idp.public_key(), &hs_h, &idp.claims("alice")),
    ));
    cases.push((
        "HS256 with the JWK x as secret",
        sign_hs256(
            b64url(&idp.public_key()).as_bytes(),
            &hs_h,
            &idp.claims("alice"),
        ),
    ));
    cases.push(("garbage", "garbage".to_string()));
    cases.push(("three dots of nothing", "a.b.c".to_string()));
    // A latch access token is not a user assertion.
    cases.push((
        "a latch access token",
        s.issue(&clients::orders(), &[]).await,
    ));

    for (what, assertion) in &cases {
        let r = exchange(s, &hook, assertion, &[]).await;
        assert_eq!(
            r.status,
            400,
            "{what}: expected 400 invalid_grant, got {} {}",
            r.status,
            r.text()
        );
        r.assert_error(400, "invalid_grant");
        r.assert_no_store();
    }

    // Positive controls: an aud array containing latch's issuer works, and a valid
    // assertion still works after all of that.
    let cl = with(&|c| c["aud"] = json!(["https://a.example", LATCH_ISS]));
    let sess = session_from(
        &exchange(s, &hook, &idp.sign(&cl), &[]).await,
        "aud array containing the audience",
    );
    assert_eq!(claims_of(&sess.access)["sub"], "idp|alice");
    open_on(s, idp, "alice", &[]).await;
    // An assertion issued 4 minutes ago is still young enough.
    let cl = with(&|c| c["iat"] = json!(now_secs() - 240));
    session_from(
        &exchange(s, &hook, &idp.sign(&cl), &[]).await,
        "assertion with iat 4 minutes old",
    );
    // None of the failures opened a session.
    let creates = s
        .audit(0)
        .await
        .into_iter()
        .filter(|r| r["action"] == "session_create")
        .count();
    assert_eq!(creates, 3, "only the three valid assertions open sessions");
}

#[tokio::test]
async fn replayed_assertion_is_refused_also_after_a_restart() {
    let mut env = start().await;
    let hook = idp_hook();
    let claims = env.idp.claims("alice");
    let jti = claims["jti"].as_str().unwrap().to_string();
    let assertion = env.idp.sign(&claims);
    let sess = session_from(&exchange(&env.s, &hook, &assertion, &[]).await, "first use");

    // The same assertion again.
    exchange(&env.s, &hook, &assertion, &[])
        .await
        .assert_error(400, "invalid_grant");
    // A new assertion reusing the jti (different iat/sub).
    let mut c2 = env.idp.claims("bob");
    c2["jti"] = json!(jti);
    c2["iat"] = json!(now_secs() - 1);
    let replay2 = env.idp.sign(&c2);
    exchange(&env.s, &hook, &replay2, &[])
        .await
        .assert_error(400, "invalid_grant");
    // Through another session issuer.
    exchange(&env.s, &idp_hook2(), &assertion, &[])
        .await
        .assert_error(400, "invalid_grant");

    env.s.restart().await;
    exchange(&env.s, &hook, &assertion, &[])
        .await
        .assert_error(400, "invalid_grant");
    exchange(&env.s, &hook, &replay2, &[])
        .await
        .assert_error(400, "invalid_grant");
    // The session survived the restart: its refresh token still rotates.
    let next = refresh_ok(&env.s, &sess.refresh).await;
    assert_eq!(next.sid, sess.sid);
    // Fresh assertions still work.
    open_on(&env.s, &env.idp, "alice", &[]).await;
}

// ---------------------------------------------------------------------------
// 2. Refresh
// ---------------------------------------------------------------------------

#[tokio::test]
async fn refresh_rotates_and_keeps_the_session() {
    let env = start().await;
    let s = &env.s;
    let sess = open_on(s, &env.idp, "alice", &[("scope", "profile orders:read")]).await;

    let r = refresh_resp(s, &idp_hook(), &sess.refresh, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.assert_no_store();
    let next = session_from(&r, "refresh");
    assert_eq!(next.body["token_type"], "Bearer", "{}", next.body);
    assert!(next.body["expires_in"].as_u64().is_some_and(|e| e > 0));
    assert_ne!(next.access, sess.access, "a new access token");
    assert_ne!(next.refresh, sess.refresh, "a new refresh token");
    assert_eq!(next.sid, sess.sid, "same session");
    let c = claims_of(&next.access);
    let c0 = claims_of(&sess.access);
    assert_eq!(c["sub"], "idp|alice");
    assert_eq!(c["client_id"], "idp-hook");
    assert_eq!(c["username"], c0["username"], "{c}");
    assert_ne!(c["jti"], c0["jti"]);
    assert_eq!(aud_list(&c["aud"]), aud_list(&c0["aud"]));
    assert_eq!(
        scope_set(&next.body["scope"]),
        set(&["profile", "orders:read"]),
        "default: the session's scope"
    );
    assert_eq!(scope_set(&c["scope"]), set(&["profile", "orders:read"]));
    assert_active(s, &next.access, "refreshed access token").await;

    // Down-scoping within the session's scope.
    let r = refresh_resp(s, &idp_hook(), &next.refresh, &[("scope", "orders:read")]).await;
    let narrow = session_from(&r, "down-scoped refresh");
    assert_eq!(scope_set(&narrow.body["scope"]), set(&["orders:read"]));
    assert_eq!(
        scope_set(&claims_of(&narrow.access)["scope"]),
        set(&["orders:read"])
    );
    assert_eq!(narrow.sid, sess.sid);

    // Escalation beyond the session's scope (but within the client's): invalid_scope.
    let other = open_on(s, &env.idp, "bob", &[("scope", "profile")]).await;
    for scope in ["profile orders:write", "orders:write", "billing:read"] {
        let r = refresh_resp(s, &idp_hook(), &other.refresh, &[("scope", scope)]).await;
        r.assert_error(400, "invalid_scope");
    }
}

#[tokio::test]
async fn refresh_token_reuse_revokes_the_whole_session() {
    let mut env = start().await;
    let s = &env.s;
    let s1 = open_on(s, &env.idp, "alice", &[]).await;
    let s2 = refresh_ok(s, &s1.refresh).await;
    let s3 = refresh_ok(s, &s2.refresh).await;
    // Another session of the same subject, untouched.
    let bystander = open_on(s, &env.idp, "alice", &[]).await;
    for t in [&s1.access, &s2.access, &s3.access] {
        assert_active(s, t, "before reuse").await;
    }

    // Replay the first refresh token.
    let r = refresh_resp(s, &idp_hook(), &s1.refresh, &[]).await;
    r.assert_error(400, "invalid_grant");
    r.assert_no_store();

    for (t, what) in [
        (&s1.access, "first access token"),
        (&s2.access, "second access token"),
        (&s3.access, "newest access token"),
    ] {
        assert_inactive(s, t, &format!("after reuse: {what}")).await;
    }
    assert_refresh_refused(s, &s3.refresh, "newest refresh token after reuse").await;
    assert_inactive(s, &s3.refresh, "newest refresh token after reuse").await;
    assert_refresh_refused(s, &s2.refresh, "used refresh token after reuse").await;

    // Only that session: the bystander session of the same subject lives on.
    assert_active(s, &bystander.access, "other session of the subject").await;
    let b2 = refresh_ok(s, &bystander.refresh).await;
    assert_eq!(b2.sid, bystander.sid);

    let records = s.audit(0).await;
    assert!(
        records.iter().any(|r| r["action"] == "refresh_reuse"),
        "no refresh_reuse audit record: {records:?}"
    );

    // The reuse revocation is durable.
    env.s.restart().await;
    let s = &env.s;
    assert_inactive(s, &s3.access, "after reuse and a restart").await;
    assert_refresh_refused(s, &s3.refresh, "after reuse and a restart").await;
    assert_active(s, &b2.access, "bystander after a restart").await;
}

/// A rotation answered 503 because no replica confirmed it is undone: the client's
/// retry (what a 503 with Retry-After asks for) rotates once the replica is back, and
/// is not taken for reuse that would log the user out. The undo does not weaken reuse
/// detection: the token spent by the confirmed rotation is reuse as before.
#[tokio::test]
async fn an_unconfirmed_rotation_is_undone_so_the_retry_is_no_reuse() {
    let redis = RedisProcess::start().await;
    let mut replica = RedisProcess::replica_of(&redis).await;
    let idp = main_idp();
    let s = session_config(&idp)
        .redis(&redis)
        .config(|c| {
            c.store.min_replicas_ack = Some(1);
            // Under half of max_staleness (2 s); long enough for a healthy replica on a
            // loaded machine (200 ms once failed the node's start-up writes).
            c.store.replica_ack_timeout = Some(ms(900));
        })
        .start()
        .await;
    let opened = open_on(&s, &idp, "alice", &[]).await;

    replica.stop();
    for attempt in 0..2 {
        let r = refresh_resp(&s, &idp_hook(), &opened.refresh, &[]).await;
        r.assert_error(503, "temporarily_unavailable");
        assert!(r.header("retry-after").is_some(), "attempt {attempt}");
    }
    let _replica = RedisProcess::replica_of(&redis).await;

    // The same token, retried (503s too, as a client does while the replica catches
    // up): a rotation of the same session, not reuse.
    let next = session_from(
        &refresh_settled(&s, &opened.refresh).await,
        "the retried refresh",
    );
    assert_eq!(next.sid, opened.sid);
    assert_active(&s, &opened.access, "the session's first access token").await;
    assert_active(&s, &next.access, "the retried refresh's access token").await;
    let next2 = session_from(&refresh_settled(&s, &next.refresh).await, "refresh again");
    assert_eq!(next2.sid, opened.sid);

    // Spent by a confirmed rotation: presenting it again is reuse, the session dies.
    let r = refresh_settled(&s, &opened.refresh).await;
    r.assert_error(400, "invalid_grant");
    assert_inactive(&s, &next2.access, "after reuse").await;
    assert_refresh_refused(&s, &next2.refresh, "after reuse").await;
}

/// A refresh whose access token cannot be issued (its status-list record cannot be
/// written: the list is gone from the store) answers 503 and leaves the refresh token
/// live: the access token is made before the rotation, so the retry rotates.
#[tokio::test]
async fn a_refresh_that_cannot_issue_leaves_its_token_live() {
    let redis = RedisProcess::start().await;
    let idp = main_idp();
    let s = session_config(&idp).redis(&redis).start().await;
    let opened = open_on(&s, &idp, "alice", &[]).await;
    let list = testkit::redis::status_list_key(&opened.access);
    let removed: i64 = redis.cmd(&["DEL", &list]).await;
    assert_eq!(removed, 1, "the list's key");

    let r = refresh_resp(&s, &idp_hook(), &opened.refresh, &[]).await;
    r.assert_error(503, "temporarily_unavailable");
    // The node has abandoned that list; the retry issues into a new one and rotates.
    let next = refresh_ok(&s, &opened.refresh).await;
    assert_eq!(next.sid, opened.sid);
    assert_ne!(
        testkit::redis::status_list_key(&next.access),
        list,
        "a new list"
    );
    assert_active(&s, &next.access, "the retried refresh's access token").await;
    refresh_ok(&s, &next.refresh).await;
}

/// A session opening that fails after its assertion was claimed (here: the access token's
/// status-list record cannot be written) releases the claim: the IdP hook's retry of the
/// 503 with the same assertion opens the session, and only one.
#[tokio::test]
async fn a_session_opening_that_fails_lets_its_assertion_be_retried() {
    let redis = RedisProcess::start().await;
    let idp = main_idp();
    let s = session_config(&idp).redis(&redis).start().await;
    let first = open_on(&s, &idp, "alice", &[]).await;
    let list = testkit::redis::status_list_key(&first.access);
    let removed: i64 = redis.cmd(&["DEL", &list]).await;
    assert_eq!(removed, 1, "the list's key");

    let assertion = idp.assertion("bob");
    let r = exchange(&s, &idp_hook(), &assertion, &[]).await;
    r.assert_error(503, "temporarily_unavailable");
    let opened = session_from(
        &exchange(&s, &idp_hook(), &assertion, &[]).await,
        "the retried opening",
    );
    assert_active(&s, &opened.access, "the retried opening's access token").await;
    refresh_ok(&s, &opened.refresh).await;
    // Answered once: now the assertion is spent.
    let r = exchange(&s, &idp_hook(), &assertion, &[]).await;
    r.assert_error(400, "invalid_grant");
}

#[tokio::test]
async fn concurrent_refreshes_exactly_one_wins() {
    let env = start().await;
    let s = &env.s;
    let hook = idp_hook();
    for round in 0..10 {
        let sess = open_on(s, &env.idp, "alice", &[]).await;
        let (a, b) = tokio::join!(
            refresh_resp(s, &hook, &sess.refresh, &[]),
            refresh_resp(s, &hook, &sess.refresh, &[])
        );
        let oks = [&a, &b].iter().filter(|r| r.status == 200).count();
        assert_eq!(
            oks,
            1,
            "round {round}: exactly one concurrent refresh must succeed; got {} {} and {} {}",
            a.status,
            a.text(),
            b.status,
            b.text()
        );
        let loser = if a.status == 200 { &b } else { &a };
        loser.assert_error(400, "invalid_grant");
    }
}

#[tokio::test]
async fn refresh_token_is_bound_to_its_client() {
    let env = start().await;
    let s = &env.s;
    let sess = open_on(s, &env.idp, "alice", &[]).await;
    let r = refresh_resp(s, &idp_hook2(), &sess.refresh, &[]).await;
    r.assert_error(400, "invalid_grant");
    // Still usable by its owner, and the session was not revoked.
    assert_active(
        s,
        &sess.access,
        "access token after a foreign refresh attempt",
    )
    .await;
    let next = refresh_ok(s, &sess.refresh).await;
    assert_eq!(next.sid, sess.sid);
    assert_active(s, &next.access, "refreshed").await;
}

#[tokio::test]
async fn malformed_token_requests() {
    let env = start().await;
    let s = &env.s;
    let hook = idp_hook();
    let sess = open_on(s, &env.idp, "alice", &[]).await;

    // Refresh tokens: garbage of every kind is invalid_grant.
    let mut tampered: Vec<char> = sess.refresh.chars().collect();
    let i = tampered.len().saturating_sub(5);
    tampered[i] = if tampered[i] == 'A' { 'B' } else { 'A' };
    let tampered: String = tampered.into_iter().collect();
    let garbage_refresh = [
        "garbage".to_string(),
        "a.b.c".to_string(),
        "%00%ff".to_string(),
        "\u{0}\u{ff}\u{202e}".to_string(),
        "x".repeat(2000),
        tampered,
        format!("{}x", sess.refresh),
        sess.access.clone(),
        env.idp.assertion("alice"),
    ];
    for rt in &garbage_refresh {
        let r = refresh_resp(s, &hook, rt, &[]).await;
        assert_eq!(r.status, 400, "refresh_token {rt:?}: {}", r.text());
        r.assert_error(400, "invalid_grant");
    }
    // None of these harmed the real session.
    assert_active(s, &sess.access, "session after garbage refreshes").await;
    let sess = refresh_ok(s, &sess.refresh).await;

    // Missing or unknown parameters: invalid_request.
    let r = s
        .post_form("/token", &[("grant_type", "refresh_token")], hook.auth())
        .await;
    r.assert_error(400, "invalid_request");
    let assertion = env.idp.assertion("alice");
    for (client, token, ty) in [
        (&hook, assertion.as_str(), JWT_TYPE),
        (&reports(), sess.access.as_str(), AT_TYPE),
    ] {
        let cases: [(&str, Vec<(&str, &str)>); 4] = [
            (
                "exchange without subject_token",
                vec![("grant_type", TE), ("subject_token_type", ty)],
            ),
            (
                "exchange without subject_token_type",
                vec![("grant_type", TE), ("subject_token", token)],
            ),
            (
                "exchange with an unsupported subject_token_type",
                vec![
                    ("grant_type", TE),
                    ("subject_token", token),
                    (
                        "subject_token_type",
                        "urn:ietf:params:oauth:token-type:saml2",
                    ),
                ],
            ),
            (
                "exchange with a made-up subject_token_type",
                vec![
                    ("grant_type", TE),
                    ("subject_token", token),
                    ("subject_token_type", "nonsense"),
                ],
            ),
        ];
        for (what, params) in &cases {
            let r = s.post_form("/token", params, client.auth()).await;
            assert_eq!(r.status, 400, "{what} by {}: {}", client.id, r.text());
            r.assert_error(400, "invalid_request");
        }
    }

    // Garbage subject tokens of both types: invalid_grant.
    for st in ["garbage", "a.b.c", "eyJhbGciOiJub25lIn0.e30."] {
        exchange(s, &hook, st, &[])
            .await
            .assert_error(400, "invalid_grant");
        delegate(s, &reports(), st, &[("resource", REPORTS_AUD)])
            .await
            .assert_error(400, "invalid_grant");
    }
    // The session is still fine.
    refresh_ok(s, &sess.refresh).await;
}

// ---------------------------------------------------------------------------
// 3. Delegation
// ---------------------------------------------------------------------------

#[tokio::test]
async fn delegation_happy_path() {
    let env = start().await;
    let s = &env.s;
    let sess = open_on(s, &env.idp, "alice", &[]).await;
    let svc = reports();

    let r = delegate(s, &svc, &sess.access, &[("resource", REPORTS_AUD)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.assert_no_store();
    let body = r.json();
    assert_eq!(body["token_type"], "Bearer", "{body}");
    assert_eq!(body["issued_token_type"], AT_TYPE, "{body}");
    assert!(body["expires_in"]
        .as_u64()
        .is_some_and(|e| e > 0 && e <= 300));
    // Default scope: the intersection of the subject token's and the client's scopes.
    assert_eq!(scope_set(&body["scope"]), set(&["orders:read"]), "{body}");
    let d = delegated_from(&r, "delegation");
    let (h, c, _) = decode_jwt(&d);
    assert_eq!(h["typ"], "at+jwt");
    assert_eq!(c["sub"], "idp|alice", "{c}");
    assert_eq!(c["sid"], sess.sid.as_str(), "{c}");
    assert_eq!(c["client_id"], "reports-service", "{c}");
    assert_eq!(c["act"], json!({"sub": "reports-service"}), "{c}");
    assert_eq!(aud_list(&c["aud"]), vec![REPORTS_AUD.to_string()], "{c}");
    assert_eq!(scope_set(&c["scope"]), set(&["orders:read"]), "{c}");
    assert_ne!(c["jti"], claims_of(&sess.access)["jti"]);

    let v = s.introspect(&d).await;
    assert_eq!(v["active"], true, "{v}");
    assert_eq!(v["act"], json!({"sub": "reports-service"}), "{v}");
    assert_eq!(v["sub"], "idp|alice", "{v}");
    assert_eq!(v["sid"], sess.sid.as_str(), "{v}");
    assert_eq!(v["client_id"], "reports-service", "{v}");

    // Explicit scope and the second audience.
    let r = delegate(
        s,
        &svc,
        &sess.access,
        &[("resource", REPORTS_AUD2), ("scope", "orders:read")],
    )
    .await;
    let d2 = delegated_from(&r, "explicit scope");
    let c2 = claims_of(&d2);
    assert_eq!(aud_list(&c2["aud"]), vec![REPORTS_AUD2.to_string()]);
    assert_eq!(scope_set(&c2["scope"]), set(&["orders:read"]));
    // The subject token is unaffected by being exchanged.
    assert_active(s, &sess.access, "subject token after delegation").await;
}

#[tokio::test]
async fn delegation_scope_and_audience_rules() {
    let env = start().await;
    let s = &env.s;
    let svc = reports();
    let sess = open_on(s, &env.idp, "alice", &[("scope", "profile orders:read")]).await;
    for (scope, what) in [
        (
            "reports:write",
            "in the client's scopes but not the subject's",
        ),
        ("profile", "in the subject's scopes but not the client's"),
        ("orders:read reports:write", "partly outside the subject's"),
        ("orders:write", "in neither"),
    ] {
        let r = delegate(
            s,
            &svc,
            &sess.access,
            &[("resource", REPORTS_AUD), ("scope", scope)],
        )
        .await;
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        r.assert_error(400, "invalid_scope");
    }
    // Empty intersection by default.
    let profile_only = open_on(s, &env.idp, "bob", &[("scope", "profile")]).await;
    delegate(s, &svc, &profile_only.access, &[("resource", REPORTS_AUD)])
        .await
        .assert_error(400, "invalid_scope");
    // A resource that is not one of the delegating client's audiences.
    for res in [PROFILE_AUD, "https://unknown.example"] {
        delegate(s, &svc, &sess.access, &[("resource", res)])
            .await
            .assert_error(400, "invalid_target");
    }
    // Still fine with valid parameters.
    delegated_from(
        &delegate(s, &svc, &sess.access, &[("resource", REPORTS_AUD)]).await,
        "valid delegation",
    );
}

#[tokio::test]
async fn delegation_refuses_inactive_subject_tokens() {
    let env = start().await;
    let s = &env.s;
    let svc = reports();
    let res = [("resource", REPORTS_AUD)];

    // Revoked by /revoke (its jti).
    let sess = open_on(s, &env.idp, "alice", &[]).await;
    let r = s
        .post_form("/revoke", &[("token", &sess.access)], idp_hook().auth())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_inactive(s, &sess.access, "revoked subject token").await;
    delegate(s, &svc, &sess.access, &res)
        .await
        .assert_error(400, "invalid_grant");

    // Session revoked.
    let sess = open_on(s, &env.idp, "bob", &[]).await;
    s.admin_revoke("session", Some(&sess.sid), "test").await;
    delegate(s, &svc, &sess.access, &res)
        .await
        .assert_error(400, "invalid_grant");

    // Forged: the claims of a real session token signed by an attacker key.
    let good = open_on(s, &env.idp, "carol", &[]).await;
    let (h, c, _) = decode_jwt(&good.access);
    let kp = attacker_ed25519();
    let forged = sign_ed25519(&kp, &h, &c);
    delegate(s, &svc, &forged, &res)
        .await
        .assert_error(400, "invalid_grant");
    // Claims tampered (scope widened) with the original signature.
    let (_, _, sig) = decode_jwt(&good.access);
    let mut c2 = c.clone();
    c2["scope"] = json!("orders:read reports:write");
    let tampered = format!("{}.{}.{}", encode_part(&h), encode_part(&c2), sig);
    delegate(s, &svc, &tampered, &res)
        .await
        .assert_error(400, "invalid_grant");
    // alg none.
    let none = format!(
        "{}.{}.",
        encode_part(&json!({"alg": "none", "typ": "at+jwt", "kid": h["kid"]})),
        encode_part(&c)
    );
    delegate(s, &svc, &none, &res)
        .await
        .assert_error(400, "invalid_grant");
    // A user assertion is not a latch access token; nor is a refresh token.
    delegate(s, &svc, &env.idp.assertion("carol"), &res)
        .await
        .assert_error(400, "invalid_grant");
    delegate(s, &svc, &good.refresh, &res)
        .await
        .assert_error(400, "invalid_grant");
    // The genuine token works.
    delegated_from(&delegate(s, &svc, &good.access, &res).await, "genuine");
}

#[tokio::test]
async fn delegated_tokens_die_with_their_session_and_subject() {
    let env = start().await;
    let s = &env.s;
    let svc = reports();
    let res = [("resource", REPORTS_AUD)];

    // Session revocation.
    let a = open_on(s, &env.idp, "alice", &[]).await;
    let da = delegated_from(&delegate(s, &svc, &a.access, &res).await, "delegate a");
    let other = open_on(s, &env.idp, "alice", &[]).await;
    let d_other = delegated_from(&delegate(s, &svc, &other.access, &res).await, "other");
    assert_active(s, &da, "delegated before revocation").await;
    s.admin_revoke("session", Some(&a.sid), "session compromised")
        .await;
    assert_inactive(s, &da, "delegated token after session revocation").await;
    assert_inactive(s, &a.access, "subject token after session revocation").await;
    assert_active(s, &d_other, "delegated token of another session").await;
    assert_active(s, &other.access, "another session of the subject").await;

    // Subject revocation.
    let b = open_on(s, &env.idp, "bob", &[]).await;
    let db = delegated_from(&delegate(s, &svc, &b.access, &res).await, "delegate b");
    let alice_d = delegated_from(&delegate(s, &svc, &other.access, &res).await, "alice again");
    s.admin_revoke("subject", Some("idp|bob"), "offboarded")
        .await;
    assert_inactive(s, &db, "delegated token after subject revocation").await;
    assert_inactive(s, &b.access, "subject's token after subject revocation").await;
    assert_refresh_refused(s, &b.refresh, "subject's refresh after subject revocation").await;
    assert_active(s, &alice_d, "another subject's delegated token").await;

    // A session opened after the subject revocation works, delegation included.
    let b2 = open_on(s, &env.idp, "bob", &[]).await;
    assert_active(s, &b2.access, "new session after subject revocation").await;
    let db2 = delegated_from(&delegate(s, &svc, &b2.access, &res).await, "delegate b2");
    assert_active(s, &db2, "new delegated token").await;
    let b3 = refresh_ok(s, &b2.refresh).await;
    assert_active(s, &b3.access, "refreshed new session").await;
}

// ---------------------------------------------------------------------------
// 4. Cascades
// ---------------------------------------------------------------------------

#[tokio::test]
async fn revoking_a_refresh_token_kills_its_session() {
    let env = start().await;
    let s = &env.s;
    let hook = idp_hook();

    for hint in [Some("refresh_token"), None, Some("access_token")] {
        let s1 = open_on(s, &env.idp, "alice", &[]).await;
        let s2 = refresh_ok(s, &s1.refresh).await;
        let bystander = open_on(s, &env.idp, "alice", &[]).await;
        let mut p = vec![("token", s2.refresh.as_str())];
        if let Some(h) = hint {
            p.push(("token_type_hint", h));
        }
        let r = s.post_form("/revoke", &p, hook.auth()).await;
        assert_eq!(r.status, 200, "hint {hint:?}: {}", r.text());
        assert!(r.body.is_empty(), "RFC 7009: empty body; got {}", r.text());
        let what = format!("after /revoke of the refresh token (hint {hint:?})");
        assert_inactive(s, &s1.access, &what).await;
        assert_inactive(s, &s2.access, &what).await;
        assert_inactive(s, &s2.refresh, &what).await;
        assert_refresh_refused(s, &s2.refresh, &what).await;
        assert_active(s, &bystander.access, "another session").await;
        // Revoking again: still 200.
        let r = s.post_form("/revoke", &p, hook.auth()).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }

    // Another (non-admin) client may not revoke it: 4xx, and the session lives on.
    let sess = open_on(s, &env.idp, "bob", &[]).await;
    for client in [idp_hook2(), reports(), clients::orders()] {
        let r = s
            .post_form(
                "/revoke",
                &[
                    ("token", &sess.refresh),
                    ("token_type_hint", "refresh_token"),
                ],
                client.auth(),
            )
            .await;
        assert!(
            r.status.is_client_error(),
            "{} revoking another client's refresh token: {} {}",
            client.id,
            r.status,
            r.text()
        );
        assert!(r.json()["error"].is_string(), "{}", r.text());
    }
    assert_active(s, &sess.access, "after foreign revocation attempts").await;
    let sess = refresh_ok(s, &sess.refresh).await;

    // The admin may.
    let r = s
        .post_form(
            "/revoke",
            &[("token", &sess.refresh)],
            clients::admin().auth(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_inactive(s, &sess.access, "after admin /revoke of the refresh token").await;
    assert_refresh_refused(s, &sess.refresh, "after admin /revoke").await;
}

#[tokio::test]
async fn admin_session_and_subject_revocation_kill_access_and_refresh() {
    let env = start().await;
    let s = &env.s;

    // kind = session
    let a1 = open_on(s, &env.idp, "alice", &[]).await;
    let a2 = refresh_ok(s, &a1.refresh).await;
    let a_other = open_on(s, &env.idp, "alice", &[]).await;
    let v = s
        .admin_revoke("session", Some(&a1.sid), "stolen laptop")
        .await;
    assert_eq!(v["kind"], "session", "{v}");
    assert_eq!(v["value"], a1.sid.as_str(), "{v}");
    assert_inactive(s, &a1.access, "session revoked: first access").await;
    assert_inactive(s, &a2.access, "session revoked: current access").await;
    assert_inactive(s, &a2.refresh, "session revoked: refresh introspection").await;
    assert_refresh_refused(s, &a2.refresh, "session revoked: current refresh").await;
    assert_refresh_refused(s, &a1.refresh, "session revoked: used refresh").await;
    assert_active(s, &a_other.access, "another session of the subject").await;
    refresh_ok(s, &a_other.refresh).await;

    // kind = subject
    let b1 = open_on(s, &env.idp, "bob", &[]).await;
    let b2 = open_on(s, &env.idp, "bob", &[("resource", PROFILE_AUD)]).await;
    let b2 = refresh_ok(s, &b2.refresh).await;
    let c1 = open_on(s, &env.idp, "carol", &[]).await;
    s.admin_revoke("subject", Some("idp|bob"), "offboarding")
        .await;
    for (sess, what) in [(&b1, "bob session 1"), (&b2, "bob session 2")] {
        assert_inactive(s, &sess.access, what).await;
        assert_inactive(s, &sess.refresh, what).await;
        assert_refresh_refused(s, &sess.refresh, what).await;
    }
    assert_active(s, &c1.access, "another subject").await;
    refresh_ok(s, &c1.refresh).await;

    // Sessions opened after the subject revocation work normally.
    let b3 = open_on(s, &env.idp, "bob", &[]).await;
    assert_active(s, &b3.access, "new session after offboarding").await;
    let b4 = refresh_ok(s, &b3.refresh).await;
    assert_active(s, &b4.access, "its refreshed token").await;
    let b5 = refresh_ok(s, &b4.refresh).await;
    assert_eq!(b5.sid, b3.sid);
}

#[tokio::test]
async fn client_and_all_revocations_kill_sessions() {
    let env = start().await;
    let s = &env.s;
    let svc = reports();
    let res = [("resource", REPORTS_AUD)];

    // kind = client, the session issuer: its sessions die, refresh included.
    let a = open_on(s, &env.idp, "alice", &[]).await;
    let d = delegated_from(&delegate(s, &svc, &a.access, &res).await, "delegate");
    s.admin_revoke("client", Some("idp-hook"), "hook compromised")
        .await;
    assert_inactive(s, &a.access, "session token after client revocation").await;
    assert_refresh_refused(s, &a.refresh, "refresh after client revocation").await;
    // The delegated token derives from an idp-hook token (`dcl`): it dies with it.
    assert_inactive(s, &d, "delegated token of a revoked origin client").await;

    // kind = client, the delegating service: its delegated tokens die.
    let a2 = open_on(s, &env.idp, "alice", &[]).await;
    let d2 = delegated_from(&delegate(s, &svc, &a2.access, &res).await, "delegate 2");
    assert_active(s, &d2, "delegated after the origin client's revocation").await;
    s.admin_revoke("client", Some("reports-service"), "service compromised")
        .await;
    assert_inactive(s, &d2, "delegated token after its client's revocation").await;
    assert_active(s, &a2.access, "the origin token is not the delegate's").await;

    // New sessions after the client revocation work.
    let b = open_on(s, &env.idp, "bob", &[]).await;
    let b = refresh_ok(s, &b.refresh).await;
    assert_active(s, &b.access, "new session after client revocation").await;

    // kind = all.
    s.admin_revoke("all", None, "incident").await;
    assert_inactive(s, &b.access, "after revoke all").await;
    assert_refresh_refused(s, &b.refresh, "after revoke all").await;
    let c = open_on(s, &env.idp, "carol", &[]).await;
    refresh_ok(s, &c.refresh).await;
}

/// After a refresh that raced a revocation: refused, or whatever it got is dead.
async fn assert_raced_refresh_dead(s: &TestServer, r: &Resp, what: &str) {
    if r.status == 200 {
        let n = session_from(r, what);
        assert_inactive(s, &n.access, &format!("{what}: access token it got")).await;
        assert_refresh_refused(s, &n.refresh, &format!("{what}: refresh token it got")).await;
    } else {
        r.assert_error(400, "invalid_grant");
    }
}

/// After a delegation that raced a revocation: refused, or the token it got is dead.
async fn assert_raced_delegation_dead(s: &TestServer, r: &Resp, what: &str) {
    if r.status == 200 {
        let d = delegated_from(r, what);
        assert_inactive(s, &d, &format!("{what}: delegated token it got")).await;
    } else {
        r.assert_error(400, "invalid_grant");
    }
}

/// Refreshes and delegations racing a session or subject revocation: whichever wins,
/// once all have answered nothing of the session (or subject) is alive.
#[tokio::test]
async fn racing_a_revocation_leaves_nothing_alive() {
    let env = start().await;
    let s = &env.s;
    let hook = idp_hook();
    let svc = reports();
    let res = [("resource", REPORTS_AUD)];
    for round in 0..25 {
        // kind = session: one refresh and three delegations against the revocation.
        let sess = open_on(s, &env.idp, "alice", &[]).await;
        let (r, d1, d2, d3, _) = tokio::join!(
            refresh_resp(s, &hook, &sess.refresh, &[]),
            delegate(s, &svc, &sess.access, &res),
            delegate(s, &svc, &sess.access, &res),
            delegate(s, &svc, &sess.access, &res),
            s.admin_revoke("session", Some(&sess.sid), "race")
        );
        let what = format!("round {round}, session revocation");
        assert_inactive(s, &sess.access, &what).await;
        assert_raced_refresh_dead(s, &r, &format!("{what}: racing refresh")).await;
        for d in [&d1, &d2, &d3] {
            assert_raced_delegation_dead(s, d, &format!("{what}: racing delegation")).await;
        }

        // kind = subject: three sessions refreshed and delegated against the revocation.
        let sub = format!("user-{round}");
        let x = open_on(s, &env.idp, &sub, &[]).await;
        let y = open_on(s, &env.idp, &sub, &[]).await;
        let z = open_on(s, &env.idp, &sub, &[]).await;
        let namespaced = format!("idp|{sub}");
        let (rx, ry, rz, dx, dy, dz, _) = tokio::join!(
            refresh_resp(s, &hook, &x.refresh, &[]),
            refresh_resp(s, &hook, &y.refresh, &[]),
            refresh_resp(s, &hook, &z.refresh, &[]),
            delegate(s, &svc, &x.access, &res),
            delegate(s, &svc, &y.access, &res),
            delegate(s, &svc, &z.access, &res),
            s.admin_revoke("subject", Some(&namespaced), "race")
        );
        let what = format!("round {round}, subject revocation");
        for r in [&rx, &ry, &rz] {
            assert_raced_refresh_dead(s, r, &format!("{what}: racing refresh")).await;
        }
        for d in [&dx, &dy, &dz] {
            assert_raced_delegation_dead(s, d, &format!("{what}: racing delegation")).await;
        }
    }
}

// ---------------------------------------------------------------------------
// 5. Refresh-token introspection
// ---------------------------------------------------------------------------

#[tokio::test]
async fn refresh_tokens_introspect() {
    let env = start().await;
    let s = &env.s;
    let sess = open_on(s, &env.idp, "alice", &[("scope", "profile")]).await;

    for hint in [None, Some("refresh_token"), Some("access_token")] {
        let mut p = vec![("token", sess.refresh.as_str())];
        if let Some(h) = hint {
            p.push(("token_type_hint", h));
        }
        let r = s
            .post_form("/introspect", &p, clients::rs_all().auth())
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.assert_no_store();
        let v = r.json();
        assert_eq!(v["active"], true, "hint {hint:?}: {v}");
        assert_eq!(v["token_type"], "refresh_token", "{v}");
        assert_eq!(v["sub"], "idp|alice", "{v}");
        assert_eq!(v["sid"], sess.sid.as_str(), "{v}");
    }

    // Used.
    let next = refresh_ok(s, &sess.refresh).await;
    assert_inactive(s, &sess.refresh, "used refresh token").await;
    let v = s.introspect(&next.refresh).await;
    assert_eq!(v["active"], true, "{v}");
    assert_eq!(v["sid"], sess.sid.as_str(), "{v}");

    // Revoked.
    let r = s
        .post_form("/revoke", &[("token", &next.refresh)], idp_hook().auth())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_inactive(s, &next.refresh, "revoked refresh token").await;

    // Garbage.
    for t in ["garbage", "a.b.c", &"r".repeat(500)] {
        let v = s.introspect(t).await;
        assert_eq!(v, inactive(), "garbage {t:?}");
    }
}

#[tokio::test]
async fn expired_refresh_tokens_are_dead() {
    let env = start_with(|c| {
        c.tokens.refresh_ttl = secs(3);
        c.tokens.leeway = secs(1);
    })
    .await;
    let s = &env.s;
    // Read before the request: the record's expiry (its creation plus refresh_ttl, no
    // leeway) is no earlier than this plus 3 s.
    let asked = std::time::SystemTime::now();
    let sess = open_on(s, &env.idp, "alice", &[]).await;
    // Every answer, whatever the pace of this machine: active until the refresh_ttl has
    // passed, inactive after.
    let rt = sess.refresh.as_str();
    eventually(DEADLINE, "refresh token expires", || async move {
        let v = s.introspect(rt).await;
        if v == inactive() {
            let age = asked.elapsed().unwrap_or_default();
            assert!(age >= secs(3), "inactive {age:?} after it was issued");
            Ok(())
        } else {
            assert_eq!(v["active"], true, "{v}");
            assert_eq!(v["token_type"], "refresh_token", "{v}");
            Err(format!("still {v}"))
        }
    })
    .await;
    assert_refresh_refused(s, &sess.refresh, "expired refresh token").await;
}

// ---------------------------------------------------------------------------
// 7. Metadata
// ---------------------------------------------------------------------------

#[tokio::test]
async fn metadata_lists_session_grants() {
    let env = start().await;
    let r = env
        .s
        .get("/.well-known/oauth-authorization-server", None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let m = r.json();
    let grants: Vec<&str> = m["grant_types_supported"]
        .as_array()
        .unwrap_or_else(|| panic!("grant_types_supported: {m}"))
        .iter()
        .map(|g| g.as_str().expect("grant string"))
        .collect();
    for g in ["client_credentials", "refresh_token", TE] {
        assert!(grants.contains(&g), "{g} not in {grants:?}");
    }
}

// ---------------------------------------------------------------------------
// 8. Cluster (redis mode)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn sessions_across_a_redis_cluster() {
    let redis = RedisProcess::start().await;
    let idp = main_idp();
    let nodes = session_config(&idp).redis(&redis).start_nodes(2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let hook = idp_hook();

    // An assertion used on A is a replay on B.
    let assertion = idp.assertion("alice");
    let s1 = session_from(&exchange(a, &hook, &assertion, &[]).await, "open on A");
    exchange(b, &hook, &assertion, &[])
        .await
        .assert_error(400, "invalid_grant");

    // Refresh state is shared: rotate on B, then the old token is a reuse on A.
    let s2 = refresh_ok(b, &s1.refresh).await;
    assert_eq!(s2.sid, s1.sid);
    let s3 = refresh_ok(a, &s2.refresh).await;

    // Revoke the session on A; after the 200, B refuses the refresh.
    let v = a
        .admin_revoke("session", Some(&s1.sid), "cluster test")
        .await;
    assert_eq!(v["kind"], "session", "{v}");
    assert_refresh_refused(b, &s3.refresh, "refresh on B after the revocation on A").await;
    assert_refresh_refused(a, &s3.refresh, "refresh on A after the revocation on A").await;
    let at = s3.access.as_str();
    for (node, name) in [(a, "A"), (b, "B")] {
        eventually(
            DEADLINE,
            &format!("session access token inactive on {name}"),
            || async move {
                let v = node.introspect(at).await;
                if v == inactive() {
                    Ok(())
                } else {
                    Err(format!("{v}"))
                }
            },
        )
        .await;
    }

    // Reuse detection across nodes: rotate on A, replay on B, the new token dies on A.
    let t1 = open_on(a, &idp, "bob", &[]).await;
    let t2 = refresh_ok(a, &t1.refresh).await;
    let r = refresh_resp(b, &hook, &t1.refresh, &[]).await;
    r.assert_error(400, "invalid_grant");
    assert_refresh_refused(a, &t2.refresh, "newest refresh token after reuse on B").await;

    // Refreshes on B racing session revocations on A: once both have answered, the
    // refresh tokens are refused at once and the access tokens die on every node.
    for round in 0..8 {
        let sess = open_on(a, &idp, "dave", &[]).await;
        let (r, _) = tokio::join!(
            refresh_resp(b, &hook, &sess.refresh, &[]),
            a.admin_revoke("session", Some(&sess.sid), "race")
        );
        let what = format!("round {round}: refresh on B racing a revocation on A");
        let mut tokens = vec![sess.access.clone()];
        if r.status == 200 {
            let n = session_from(&r, &what);
            assert_refresh_refused(a, &n.refresh, &what).await;
            assert_refresh_refused(b, &n.refresh, &what).await;
            tokens.push(n.access);
        } else {
            r.assert_error(400, "invalid_grant");
        }
        for t in &tokens {
            let t = t.as_str();
            for (node, name) in [(a, "A"), (b, "B")] {
                eventually(
                    DEADLINE,
                    &format!("{what}: inactive on {name}"),
                    || async move {
                        let v = node.introspect(t).await;
                        if v == inactive() {
                            Ok(())
                        } else {
                            Err(format!("{v}"))
                        }
                    },
                )
                .await;
            }
        }
    }

    // /revoke of a refresh token on B; A refuses it.
    let u1 = open_on(b, &idp, "carol", &[]).await;
    let r = b
        .post_form("/revoke", &[("token", &u1.refresh)], hook.auth())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_refresh_refused(a, &u1.refresh, "refresh on A after /revoke on B").await;
}

// ---------------------------------------------------------------------------
// 9. Integrity of refresh-token records
// ---------------------------------------------------------------------------

/// A refresh token's record key in Redis: under its family's hash tag (the 11 characters
/// after `rt.`), docs/ARCHITECTURE.md "Redis keys".
fn rt_key(token: &str) -> String {
    format!(
        "{{latch:s:{}}}:rt:{}",
        &token[3..14],
        sha256_hex(token.as_bytes())
    )
}

/// A refresh token the attacker made up, and its store key in Redis.
fn planted_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).unwrap();
    let token = format!("rt.{}", b64url(&bytes));
    let key = rt_key(&token);
    (token, key)
}

#[tokio::test]
async fn planted_or_moved_refresh_records_yield_nothing() {
    let redis = RedisProcess::start().await;
    let idp = main_idp();
    let nodes = session_config(&idp).redis(&redis).start_nodes(1).await;
    let s = &nodes[0];
    let hook = idp_hook();
    let real = open_on(s, &idp, "alice", &[]).await;
    let real_key = rt_key(&real.refresh);
    let stored: String = redis.cmd(&["HGET", &real_key, "rec"]).await;
    let mut record: Value = serde_json::from_str(&stored).unwrap();
    assert!(record["mac"].is_string(), "records carry a MAC: {record}");
    let expires = (now_secs() + 3600).to_string();

    // 1. A record planted under the attacker's own token: without the MAC, and with a
    //    MAC copied from a real record (bound to another hash).
    for (what, mac) in [
        ("no MAC", None),
        ("copied MAC", Some(record["mac"].clone())),
    ] {
        let (token, key) = planted_token();
        let mut planted = record.clone();
        planted["sub"] = json!("mallory");
        match mac {
            Some(m) => planted["mac"] = m,
            None => {
                planted.as_object_mut().unwrap().remove("mac");
            }
        }
        let _: () = redis
            .cmd(&["HSET", &key, "rec", &planted.to_string(), "used", "0"])
            .await;
        let _: () = redis.cmd(&["EXPIREAT", &key, &expires]).await;
        refresh_resp(s, &hook, &token, &[])
            .await
            .assert_error(400, "invalid_grant");
        assert_eq!(s.introspect(&token).await, inactive(), "{what}");
    }
    // 2. The real, authentic record moved under the attacker's token.
    let (token, key) = planted_token();
    let _: () = redis
        .cmd(&["HSET", &key, "rec", &stored, "used", "0"])
        .await;
    let _: () = redis.cmd(&["EXPIREAT", &key, &expires]).await;
    refresh_resp(s, &hook, &token, &[])
        .await
        .assert_error(400, "invalid_grant");
    assert_eq!(s.introspect(&token).await, inactive());
    // 3. The real record altered in place (another subject): its own token stops working.
    record["sub"] = json!("root");
    let _: () = redis
        .cmd(&["HSET", &real_key, "rec", &record.to_string()])
        .await;
    assert_eq!(s.introspect(&real.refresh).await, inactive());
    refresh_resp(s, &hook, &real.refresh, &[])
        .await
        .assert_error(400, "invalid_grant");
    // ... and the authentic record restored, it works again (the checks above can fail).
    let _: () = redis.cmd(&["HSET", &real_key, "rec", &stored]).await;
    assert_eq!(s.introspect(&real.refresh).await["active"], true);
    let next = refresh_ok(s, &real.refresh).await;
    assert_eq!(next.sid, real.sid);

    assert!(s.metric("latch_refresh_records_rejected_total").await >= 5.0);
    let audit = s.audit(0).await;
    assert!(
        audit
            .iter()
            .any(|r| r["action"] == "refresh_record_rejected" && r["reason"] == "bad_mac"),
        "{audit:?}"
    );
    // Nobody's session was revoked on the attacker's say-so.
    assert!(
        !audit.iter().any(|r| r["action"] == "refresh_reuse"),
        "{audit:?}"
    );
}

#[tokio::test]
async fn a_refresh_rechecks_the_clients_current_grants() {
    let mut env = start().await;
    let s = &env.s;
    let write = open_on(
        s,
        &env.idp,
        "alice",
        &[("scope", "orders:write"), ("resource", ORDERS_AUD)],
    )
    .await;
    let profile = open_on(
        s,
        &env.idp,
        "bob",
        &[("scope", "profile"), ("resource", PROFILE_AUD)],
    )
    .await;
    let control = open_on(
        s,
        &env.idp,
        "carol",
        &[("scope", "orders:read"), ("resource", ORDERS_AUD)],
    )
    .await;

    // The hook loses the scope orders:write and the audience PROFILE_AUD.
    let mut cfg = env.s.setup.clone();
    let hook = cfg.config.client_mut("idp-hook");
    hook.scopes.retain(|s| s != "orders:write");
    hook.audiences.retain(|a| a != PROFILE_AUD);
    env.s.restart_with(&cfg).await;
    let s = &env.s;
    let hook = idp_hook();
    for (what, sess) in [("lost scope", &write), ("lost audience", &profile)] {
        refresh_resp(s, &hook, &sess.refresh, &[])
            .await
            .assert_error(400, "invalid_grant");
        assert_eq!(s.introspect(&sess.refresh).await, inactive(), "{what}");
    }
    let control = refresh_ok(s, &control.refresh).await;

    // The hook loses its session_issuer role: its sessions yield nothing more.
    cfg.config.client_mut("idp-hook").roles.clear();
    env.s.restart_with(&cfg).await;
    refresh_resp(&env.s, &hook, &control.refresh, &[])
        .await
        .assert_error(400, "invalid_grant");
}

#[tokio::test]
async fn an_altered_refresh_record_in_the_embedded_store_yields_nothing() {
    let mut env = start().await;
    let alice = open_on(&env.s, &env.idp, "alice", &[]).await;
    let bob = open_on(&env.s, &env.idp, "bob", &[]).await;
    env.s.kill9();
    {
        let db = rusqlite::Connection::open(env.s.data_path.join("latch.db")).unwrap();
        let hash = sha256_hex(alice.refresh.as_bytes());
        let json: String = db
            .query_row(
                "SELECT record FROM refresh_tokens WHERE hash = ?1",
                [&hash],
                |r| r.get(0),
            )
            .unwrap();
        let mut record: Value = serde_json::from_str(&json).unwrap();
        record["sub"] = json!("root");
        db.execute(
            "UPDATE refresh_tokens SET record = ?1 WHERE hash = ?2",
            [record.to_string(), hash],
        )
        .unwrap();
    }
    env.s.restart().await;
    let s = &env.s;
    assert_eq!(s.introspect(&alice.refresh).await, inactive());
    refresh_resp(s, &idp_hook(), &alice.refresh, &[])
        .await
        .assert_error(400, "invalid_grant");
    // The untouched session still works: the check is on the record, not the store.
    assert_eq!(s.introspect(&bob.refresh).await["active"], true);
    refresh_ok(s, &bob.refresh).await;
    assert!(s
        .audit(0)
        .await
        .iter()
        .any(|r| r["action"] == "refresh_record_rejected"));
}

// ---------------------------------------------------------------------------
// 10. Sessions on a Redis Cluster with replicas (issue 16)
// ---------------------------------------------------------------------------

const CLUSTER_PASS: &str = "cluster-sessions-pass-8Kd";

/// Sessions in the workload: enough that every master holds some of them (a master left
/// out by 40 random families has probability 3 · (2/3)^40 ≈ 3e-7).
const SESSIONS: usize = 40;

/// One session of the workload: the token it spent before the master died, its live
/// one, and the access token it got with it.
struct Tracked {
    spent: String,
    live: String,
    access: String,
}

/// Keys matching `pattern` on one node (SCAN, never KEYS).
async fn count_keys(node: &testkit::redis_ha::RedisNode, pattern: &str) -> usize {
    let mut cursor = "0".to_string();
    let mut n = 0;
    loop {
        let (next, keys): (String, Vec<String>) = node
            .cmd(&["SCAN", &cursor, "MATCH", pattern, "COUNT", "1000"])
            .await;
        n += keys.len();
        if next == "0" {
            return n;
        }
        cursor = next;
    }
}

/// A refresh, repeated while it answers 503: right after a failover a node's cluster client
/// may still route a slot to the dead master or be redirected (`MOVED`) once, and answers
/// 503 meanwhile (fail closed, nothing written). The first other answer is returned.
async fn refresh_settled(node: &TestServer, rt: &str) -> Resp {
    let start = std::time::Instant::now();
    loop {
        let r = refresh_resp(node, &idp_hook(), rt, &[]).await;
        if r.status != 503 || start.elapsed() > DEADLINE {
            return r;
        }
        tokio::time::sleep(ms(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_spread_over_the_masters_and_a_lost_master_fails_closed_only_its_own() {
    let mut cluster = testkit::redis_ha::RedisCluster::start_with_replicas(CLUSTER_PASS).await;
    let idp = main_idp();
    let cfg = session_config(&idp)
        .redis_url(&cluster.url())
        .env("LATCH_STORE__REDIS_PASSWORD", CLUSTER_PASS)
        .config(|c| {
            c.store.max_staleness = secs(2);
            // Every write waits for its shard's replica, as revocations do.
            c.store.min_replicas_ack = Some(1);
            // As long as the config allows (under half of max_staleness): on a loaded
            // 2-core machine a live shard's replica took longer than 500 ms to confirm,
            // and the refresh then failed closed (503) — correct, but not what this test
            // is about.
            c.store.replica_ack_timeout = Some(ms(950));
        });
    // `latch check` finds what docs/SCALING.md asks of a Cluster: no warning.
    let (st, out, err) = cfg.run_verb("check").await;
    assert!(st.success(), "{out}\n{err}");
    assert!(!out.contains("warning"), "{out}");
    let nodes = cfg.start_nodes(2).await;
    let (a, b) = (&nodes[0], &nodes[1]);

    // The workload: sessions opened on A, each refreshed once on B.
    let mut sessions = Vec::new();
    for i in 0..SESSIONS {
        let opened = open_on(a, &idp, &format!("user-{i}"), &[]).await;
        let next = refresh_ok(b, &opened.refresh).await;
        assert_eq!(next.sid, opened.sid);
        sessions.push(Tracked {
            spent: opened.refresh,
            live: next.refresh,
            access: next.access,
        });
    }

    // Spread: every master holds refresh records and replay records; the ordered state
    // is on one of them.
    let masters = cluster.masters().await;
    assert_eq!(masters.len(), 3, "three masters");
    let mut per_master = std::collections::BTreeMap::new();
    for &m in &masters {
        let records = count_keys(&cluster.nodes[m], "{latch:s:*}:rt:*").await;
        let seen = count_keys(&cluster.nodes[m], "{latch:seen:*").await;
        let dbsize: i64 = cluster.nodes[m].cmd(&["DBSIZE"]).await;
        eprintln!("master {m}: {records} refresh records, {seen} replay records, dbsize {dbsize}");
        assert!(records > 0, "master {m} holds no refresh record");
        assert!(seen > 0, "master {m} holds no replay record");
        per_master.insert(m, records);
    }
    assert_eq!(per_master.values().sum::<usize>(), 2 * SESSIONS);
    assert_eq!(
        count_keys(&cluster.nodes[masters[0]], "{latch}:rt:*").await
            + count_keys(&cluster.nodes[masters[1]], "{latch}:rt:*").await
            + count_keys(&cluster.nodes[masters[2]], "{latch}:rt:*").await,
        0,
        "no refresh record in the ordered slot"
    );
    let ordered = cluster
        .owner_of("{latch}:rev:state")
        .await
        .expect("a master owns {latch}");
    let victim = *masters
        .iter()
        .find(|&&m| m != ordered)
        .expect("a master without {latch}");
    let replica = cluster
        .replica_of(victim)
        .await
        .expect("the victim's replica");
    let mut on_victim = Vec::new();
    let mut elsewhere = Vec::new();
    for s in sessions {
        if cluster.owner_of(&rt_key(&s.live)).await == Some(victim) {
            on_victim.push(s);
        } else {
            elsewhere.push(s);
        }
    }
    eprintln!(
        "{{latch}} on master {ordered}; killing master {victim} (replica {replica}): {} of {SESSIONS} sessions on it",
        on_victim.len()
    );
    assert!(!on_victim.is_empty() && !elsewhere.is_empty());

    // The victim's process dies (SIGKILL by its PID); its replica takes over.
    let pid = cluster.nodes[victim].pid();
    eprintln!("SIGKILL redis-server pid {pid}");
    cluster.nodes[victim].kill9();

    // Half of the victim's sessions are probed while it is away; the other half are left
    // alone until the shard has a replica again.
    let (probed, untouched) = on_victim.split_at(on_victim.len().div_ceil(2));

    // While it is away: its sessions fail closed (503, never a token); the others go on
    // refreshing; access tokens introspect as before; revocations propagate.
    for s in probed {
        // Before the failover its master is gone; after, the promoted replica has no
        // replica to confirm the rotation: 503 either way.
        let r = refresh_resp(a, &idp_hook(), &s.live, &[]).await;
        assert_eq!(r.status, 503, "session on the lost shard: {}", r.text());
    }
    let mut moved_on = Vec::new();
    for s in &elsewhere {
        // A client retries a 503 as its Retry-After says: right after a master dies the
        // cluster client can fail one command (fail closed) before it reroutes.
        let r = refresh_settled(b, &s.live).await;
        if r.status != 200 {
            eprintln!("node B:\n{}", b.diagnostics());
        }
        let next = session_from(&r, "session on a live shard");
        moved_on.push(next.refresh);
        assert!(a.is_active(&s.access).await, "access token of a live shard");
    }
    assert!(
        a.is_active(&on_victim[0].access).await,
        "introspection needs no session shard"
    );
    let revoked = elsewhere[0].access.clone();
    let jti = claims_of(&revoked)["jti"].as_str().unwrap().to_string();
    a.admin_revoke("token", Some(&jti), "cluster test").await;
    eventually(DEADLINE, "revocation reaches B", || async {
        match b.is_active(&revoked).await {
            false => Ok(()),
            true => Err("still active on B".to_string()),
        }
    })
    .await;

    // Failover done: the replica is the master of the victim's slots.
    eventually(DEADLINE, "the replica is promoted", || async {
        match cluster.nodes[replica].role().await {
            Ok(r) if r == "master" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    cluster.await_ok().await;
    // The nodes never stopped being ready (the ordered state and the registry are on a
    // master that stayed); wait anyway until both have found the promoted replica.
    a.wait_ready().await;
    b.wait_ready().await;

    // None revived: every token spent before the kill (its rotation was confirmed on the
    // replica before it was answered) is still spent on the promoted replica; presenting
    // it is reuse, which kills the session.
    for s in probed {
        let r = refresh_settled(a, &s.spent).await;
        assert_ne!(
            r.status,
            200,
            "a spent token revived by the failover: {}",
            r.text()
        );
        r.assert_error(400, "invalid_grant");
        let r = refresh_settled(b, &s.live).await;
        assert_ne!(
            r.status,
            200,
            "a live token of a reused session: {}",
            r.text()
        );
        r.assert_error(400, "invalid_grant");
    }
    // The killed process comes back as the new master's replica: the shard confirms
    // writes again and its untouched sessions refresh.
    cluster.nodes[victim].start_again().await;
    cluster.await_ok().await;
    eventually(DEADLINE, "the old master rejoins as a replica", || async {
        match cluster.replica_of(replica).await {
            Some(i) if i == victim => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    cluster.await_replicas_in_sync().await;
    for s in untouched {
        let next = session_from(&refresh_settled(b, &s.live).await, "untouched session");
        session_from(
            &refresh_settled(a, &next.refresh).await,
            "untouched session again",
        );
    }
    // The other shards' sessions never noticed.
    let mut moved_on_again = Vec::new();
    for rt in &moved_on {
        moved_on_again.push(session_from(
            &refresh_settled(a, rt).await,
            "live shard again",
        ));
    }

    // Now the master of `{latch}` dies: the ordered state is gone until its replica takes
    // over and can confirm writes again, so every node fails closed (503 once past
    // `max_staleness`), then catches up from the log on the promoted replica (the shard
    // subscription follows the slot) and propagates revocations again.
    let ordered_replica = cluster
        .replica_of(ordered)
        .await
        .expect("{latch} has a replica");
    let live = moved_on_again[0].access.clone();
    cluster.nodes[ordered].kill9();
    eventually(DEADLINE, "both nodes fail closed", || async {
        let mut answers = Vec::new();
        for n in [a, b] {
            let r = n
                .post_form("/introspect", &[("token", &live)], clients::rs_all().auth())
                .await;
            // Within `max_staleness` of its last proof a node still answers from its
            // table (the bound it promises); past it, 503.
            answers.push(r.status);
        }
        match answers.iter().all(|s| *s == 503) {
            true => Ok(()),
            false => Err(format!("{answers:?}")),
        }
    })
    .await;
    eventually(DEADLINE, "the {latch} replica is promoted", || async {
        match cluster.nodes[ordered_replica].role().await {
            Ok(r) if r == "master" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    cluster.nodes[ordered].start_again().await;
    cluster.await_ok().await;
    cluster.await_replicas_in_sync().await;
    a.wait_ready().await;
    b.wait_ready().await;
    assert!(
        b.is_active(&live).await,
        "a live token survives the failover"
    );
    let jti = claims_of(&live)["jti"].as_str().unwrap().to_string();
    a.admin_revoke("token", Some(&jti), "after the {latch} failover")
        .await;
    eventually(
        DEADLINE,
        "revocation after the failover reaches B",
        || async {
            match b.is_active(&live).await {
                false => Ok(()),
                true => Err("still active on B".to_string()),
            }
        },
    )
    .await;
    // The earlier revocation is still in force on both nodes.
    assert!(!a.is_active(&revoked).await && !b.is_active(&revoked).await);
}
