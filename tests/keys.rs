//! Signing-key lifecycle: scheduled rotation, manual rotation, key revocation,
//! and the three algorithms.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::clients;
use testkit::prelude::*;

fn exactly_one(keys: &[Value], state: &str) -> String {
    let v = kids_in_state(keys, state);
    assert_eq!(v.len(), 1, "want exactly one {state} key: {keys:?}");
    v[0].clone()
}

fn check_key_shape(keys: &[Value]) {
    const STATES: [&str; 5] = ["next", "active", "retiring", "retired", "revoked"];
    for k in keys {
        assert!(k["kid"].is_string(), "{k}");
        assert!(k["alg"].is_string(), "{k}");
        let st = k["state"].as_str().unwrap_or_else(|| panic!("state: {k}"));
        assert!(STATES.contains(&st), "unknown state {st}: {k}");
        assert!(k["created_at"].is_u64(), "created_at: {k}");
        for f in ["activates_at", "retires_at"] {
            if let Some(v) = k.get(f) {
                assert!(v.is_u64() || v.is_null(), "{f}: {k}");
            }
        }
    }
}

/// A forced rotation (most tests rotate right after start, when the next key is young).
async fn rotate(s: &TestServer, body: Option<Value>) -> Vec<Value> {
    let mut b = body.unwrap_or_else(|| json!({}));
    b["force"] = json!(true);
    rotate_as_asked(s, Some(b)).await
}

/// A rotation with exactly this body (none if `None`); asserts 200.
async fn rotate_as_asked(s: &TestServer, body: Option<Value>) -> Vec<Value> {
    let r = rotate_resp(s, body).await;
    assert_eq!(r.status, 200, "rotate: {}", r.text());
    let keys = r.json()["keys"].as_array().expect("keys").clone();
    check_key_shape(&keys);
    keys
}

async fn rotate_resp(s: &TestServer, body: Option<Value>) -> Resp {
    match body {
        Some(b) => {
            s.post_json("/admin/keys/rotate", &b, clients::admin().auth())
                .await
        }
        None => {
            let a = clients::admin();
            s.http
                .request(
                    hyper::Method::POST,
                    "/admin/keys/rotate",
                    &[("authorization", &basic(&a.id, &a.secret))],
                    vec![],
                )
                .await
        }
    }
}

async fn revoke_key(s: &TestServer, kid: &str, reason: &str) -> Resp {
    s.post_json(
        &format!("/admin/keys/{kid}/revoke"),
        &json!({ "reason": reason }),
        clients::admin().auth(),
    )
    .await
}

#[tokio::test]
async fn scheduled_rotation_lifecycle() {
    let cfg = TestServer::builder().config(|c| {
        c.keys.rotate_every = secs(3);
        c.keys.publish_ahead = secs(2);
        c.tokens.access_ttl = secs(2);
        c.tokens.leeway = secs(0);
    });
    let s = cfg.start().await;
    let orders = clients::orders();

    // JWKS max-age must be shorter than the pre-publication window (2 s).
    let r = s.get("/.well-known/jwks.json", None).await;
    let cc = r.header("cache-control").expect("cache-control");
    let max_age: u64 = cc
        .split(',')
        .map(str::trim)
        .find_map(|d| d.strip_prefix("max-age="))
        .unwrap_or_else(|| panic!("no max-age in {cc}"))
        .parse()
        .unwrap();
    assert!(max_age < 2, "max-age {max_age} >= publish_ahead 2s");

    let mut history: HashMap<String, Vec<String>> = HashMap::new();
    let mut latest: HashMap<String, String> = HashMap::new();
    let mut target: Option<String> = None;
    let mut retiring_token_checked = false;
    let mut retiring_token: Option<String> = None;
    let start = Instant::now();
    let done = loop {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "lifecycle not observed; history {history:?}\n{}",
            s.diagnostics()
        );
        let keys = s.admin_keys().await;
        check_key_shape(&keys);
        exactly_one(&keys, "active");
        for k in &keys {
            let kid = k["kid"].as_str().unwrap().to_string();
            let st = k["state"].as_str().unwrap().to_string();
            let h = history.entry(kid).or_default();
            if h.last() != Some(&st) {
                h.push(st);
            }
        }
        // Published / unpublished keys.
        let jwks = s.jwks_kids().await;
        for k in &keys {
            let kid = k["kid"].as_str().unwrap();
            match k["state"].as_str().unwrap() {
                // next → active → retiring: all published; cannot be gone
                // within one poll.
                "next" | "active" => {
                    assert!(jwks.contains(&kid.to_string()), "{kid} not in JWKS")
                }
                "retired" | "revoked" => {
                    assert!(!jwks.contains(&kid.to_string()), "{kid} still in JWKS")
                }
                _ => {}
            }
        }
        if target.is_none() {
            target = kids_in_state(&keys, "next").into_iter().next();
        }
        let t = s.issue(&orders, &[]).await;
        let k = kid_of(&t);
        let jwk = s.jwks().await["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["kid"] == k.as_str())
            .cloned();
        // The signing key may have rotated between issue and fetch only if it
        // is now retiring, which is still published.
        let jwk = jwk.unwrap_or_else(|| panic!("signing kid {k} not in JWKS"));
        assert!(verify_with_jwk(&t, &jwk));
        latest.insert(k, t);

        if let Some(tk) = &target {
            let st = key_state(&keys, tk);
            if st.as_deref() == Some("retiring") && !retiring_token_checked {
                retiring_token_checked = true;
                if let Some(tok) = latest.get(tk) {
                    retiring_token = Some(tok.clone());
                    // A token of a retiring key is active until its exp (no leeway).
                    let exp = decode_jwt(tok).1["exp"].as_u64().unwrap();
                    s.is_active_until(tok, exp).await;
                }
            }
            let h = &history[tk];
            if h.iter().any(|x| x == "retiring") && st.as_deref() == Some("retired") {
                break tk.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let h = &history[&done];
    eprintln!("key {done} history {h:?}");
    // Retired keys stay listed.
    assert_eq!(
        *h,
        ["next", "active", "retiring", "retired"],
        "key {done} went through {h:?}"
    );
    assert!(!s.jwks_kids().await.contains(&done));
    let tok = retiring_token.expect("a token signed by the key before it retired");
    assert_eq!(s.introspect(&tok).await, inactive());
    // Rotations are audited.
    assert!(
        s.audit(0).await.iter().any(|r| r["action"] == "key_rotate"),
        "scheduled rotation not audited"
    );
}

#[tokio::test]
async fn manual_rotation() {
    // JWKS max-age 1s; with max_staleness 2s a next key may sign 3s after it appeared.
    let cfg = TestServer::builder().config(|c| c.keys.publish_ahead = secs(2));
    let s = cfg.start().await;
    let keys0 = s.admin_keys().await;
    check_key_shape(&keys0);
    let active0 = exactly_one(&keys0, "active");
    // From the first start, a next key is published.
    let next0 = exactly_one(&keys0, "next");
    assert!(s.jwks_kids().await.contains(&next0));
    let old = s.issue(&clients::orders(), &[]).await;
    assert_eq!(kid_of(&old), active0);

    // Too young for every cached JWKS to know it: refused, naming the override.
    let r = rotate_resp(&s, Some(json!({"reason": "drill"}))).await;
    r.assert_error(409, "conflict");
    assert!(r.text().contains("force"), "{}", r.text());
    assert_eq!(exactly_one(&s.admin_keys().await, "active"), active0);

    // Once it has been published long enough, the same request rotates.
    let keys1 = eventually(DEADLINE, "rotation accepted", || {
        let s = &s;
        async move {
            let r = rotate_resp(s, Some(json!({"reason": "drill"}))).await;
            match r.status.as_u16() {
                200 => Ok(r.json()["keys"].as_array().unwrap().clone()),
                409 => Err(r.text()),
                _ => panic!("rotate: {} {}", r.status, r.text()),
            }
        }
    })
    .await;
    check_key_shape(&keys1);
    assert_eq!(
        key_state(&keys1, &active0).as_deref(),
        Some("retiring"),
        "{keys1:?}"
    );
    let active1 = exactly_one(&keys1, "active");
    assert_eq!(active1, next0, "the published next key must become active");
    let next1 = exactly_one(&keys1, "next");
    assert!(
        !keys0.iter().any(|k| k["kid"] == next1.as_str()),
        "the new next key must be new"
    );
    // GET agrees with the answer.
    let listed = s.admin_keys().await;
    assert_eq!(key_state(&listed, &active0).as_deref(), Some("retiring"));
    assert_eq!(key_state(&listed, &active1).as_deref(), Some("active"));
    assert_eq!(key_state(&listed, &next1).as_deref(), Some("next"));

    assert!(s.is_active(&old).await, "token of the retiring key");
    let new = s.issue(&clients::orders(), &[]).await;
    assert_eq!(kid_of(&new), active1);
    assert!(s.is_active(&new).await);
    let jwks = s.jwks_kids().await;
    for k in [&active0, &active1, &next1] {
        assert!(jwks.contains(k), "{k} missing from JWKS {jwks:?}");
    }
    let audit = s.audit(0).await;
    let rec = audit
        .iter()
        .find(|r| r["action"] == "key_rotate")
        .expect("key_rotate audit record");
    assert_eq!(rec["reason"], "drill", "{rec}");
    assert_eq!(rec["actor"], "security-admin", "{rec}");
    assert!(
        !audit.iter().any(|r| r["action"] == "key_rotate_forced"),
        "{audit:?}"
    );

    // The body is optional; without force, next1 is too young.
    rotate_resp(&s, None).await.assert_error(409, "conflict");
    // Forced: it rotates at once, and the audit says it was forced.
    let keys2 = rotate_as_asked(
        &s,
        Some(json!({"force": true, "reason": "compromise drill"})),
    )
    .await;
    assert_eq!(key_state(&keys2, &active1).as_deref(), Some("retiring"));
    assert_eq!(exactly_one(&keys2, "active"), next1);
    assert!(s.is_active(&old).await);
    assert!(s.is_active(&new).await);
    assert_eq!(kid_of(&s.issue(&clients::orders(), &[]).await), next1);
    let forced = s
        .audit(0)
        .await
        .into_iter()
        .find(|r| r["action"] == "key_rotate_forced")
        .expect("key_rotate_forced audit record");
    assert_eq!(forced["target"], next1.as_str(), "{forced}");
    assert_eq!(forced["reason"], "compromise drill", "{forced}");
}

#[tokio::test]
async fn revoking_the_active_key() {
    let mut s = TestServer::builder().start().await;
    let t = s.issue(&clients::orders(), &[]).await;
    let kid = kid_of(&t);
    assert!(s.is_active(&t).await);

    let r = revoke_key(&s, &kid, "leaked").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let keys = r.json()["keys"].as_array().expect("keys").clone();
    check_key_shape(&keys);
    assert_eq!(
        key_state(&keys, &kid).as_deref(),
        Some("revoked"),
        "{keys:?}"
    );
    let active = exactly_one(&keys, "active");
    assert_ne!(active, kid);

    assert_eq!(s.introspect(&t).await, inactive(), "token of revoked key");
    assert!(!s.jwks_kids().await.contains(&kid), "revoked key in JWKS");
    let t2 = s.issue(&clients::orders(), &[]).await;
    assert_eq!(kid_of(&t2), active);
    assert!(s.is_active(&t2).await);

    let rec = s
        .audit(0)
        .await
        .into_iter()
        .find(|r| r["action"] == "key_revoke")
        .expect("key_revoke audit record");
    assert_eq!(rec["target"], kid.as_str(), "{rec}");
    assert_eq!(rec["reason"], "leaked", "{rec}");

    // Durable.
    s.restart().await;
    assert_eq!(s.introspect(&t).await, inactive());
    assert!(!s.jwks_kids().await.contains(&kid));
    assert!(s.is_active(&t2).await);
    assert_eq!(kid_of(&s.issue(&clients::orders(), &[]).await), active);
}

#[tokio::test]
async fn revoking_a_next_or_retiring_key() {
    let s = TestServer::builder().start().await;
    let old = s.issue(&clients::orders(), &[]).await;
    let keys = rotate(&s, Some(json!({"reason": "x"}))).await;
    let retiring = kid_of(&old);
    assert_eq!(key_state(&keys, &retiring).as_deref(), Some("retiring"));
    let next = exactly_one(&keys, "next");
    let active = exactly_one(&keys, "active");

    // Retiring key revoked: its tokens die at once.
    let r = revoke_key(&s, &retiring, "x").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.introspect(&old).await, inactive());
    assert!(!s.jwks_kids().await.contains(&retiring));

    // Next key revoked: unpublished and never becomes active.
    let r = revoke_key(&s, &next, "x").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!s.jwks_kids().await.contains(&next));
    let keys = rotate(&s, None).await;
    let new_active = exactly_one(&keys, "active");
    assert_ne!(new_active, next, "a revoked next key became active");
    assert_ne!(new_active, active);
    assert_eq!(key_state(&keys, &active).as_deref(), Some("retiring"));
    let t = s.issue(&clients::orders(), &[]).await;
    assert_eq!(kid_of(&t), new_active);
    assert!(s.is_active(&t).await);
}

#[tokio::test]
async fn revoking_unknown_key_is_404() {
    let s = TestServer::builder().start().await;
    let r = revoke_key(&s, "no-such-kid", "x").await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.json()["error"].is_string(), "{}", r.text());
    let keys = s.admin_keys().await;
    exactly_one(&keys, "active");
}

async fn algorithm_case(algorithm: Alg, kty: &str, crv: Option<&str>) {
    let s = TestServer::builder()
        .config(|c| c.keys.algorithm = algorithm)
        .start()
        .await;
    let alg = format!("{algorithm:?}");
    let alg = alg.as_str();
    let t = s.issue(&clients::orders(), &[]).await;
    let (h, _, _) = decode_jwt(&t);
    assert_eq!(h["alg"], alg);
    assert_eq!(h["typ"], "at+jwt");
    let kid = h["kid"].as_str().unwrap();
    let jwks = s.jwks().await;
    let keys = jwks["keys"].as_array().unwrap();
    for k in keys {
        assert_eq!(k["kty"], kty, "{k}");
        assert_eq!(k["alg"], alg, "{k}");
        assert_eq!(k["use"], "sig", "{k}");
        if let Some(crv) = crv {
            assert_eq!(k["crv"], crv, "{k}");
        }
        match kty {
            "OKP" => assert!(k["x"].is_string()),
            "EC" => assert!(k["x"].is_string() && k["y"].is_string()),
            "RSA" => {
                assert!(k["n"].is_string() && k["e"].is_string());
                let n = b64url_decode(k["n"].as_str().unwrap());
                let bits = (n.len() - usize::from(n[0] == 0)) * 8;
                assert!(bits >= 2048, "RSA modulus {bits} bits");
            }
            _ => unreachable!(),
        }
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(k.get(private).is_none(), "private member {private}: {k}");
        }
    }
    let jwk = keys
        .iter()
        .find(|k| k["kid"] == kid)
        .expect("signing key in JWKS");
    assert!(verify_with_jwk(&t, jwk), "{alg} token does not verify");
    assert!(s.is_active(&t).await);
    for k in s.admin_keys().await {
        assert_eq!(k["alg"], alg, "{k}");
    }
    // Tampering breaks it.
    let (h, mut c, sig) = decode_jwt(&t);
    c["sub"] = json!("mallory");
    let forged = format!("{}.{}.{}", encode_part(&h), encode_part(&c), sig);
    assert_eq!(s.introspect(&forged).await, inactive());
}

#[tokio::test]
async fn algorithm_eddsa() {
    algorithm_case(Alg::EdDSA, "OKP", Some("Ed25519")).await;
}

#[tokio::test]
async fn algorithm_es256() {
    algorithm_case(Alg::ES256, "EC", Some("P-256")).await;
}

#[tokio::test]
async fn algorithm_rs256() {
    algorithm_case(Alg::RS256, "RSA", None).await;
}

#[tokio::test]
async fn revoking_next_then_active_still_leaves_a_signing_key() {
    let s = TestServer::builder().start().await;
    let keys = rotate(&s, None).await; // make sure a next key exists
    let next = exactly_one(&keys, "next");
    let active = exactly_one(&keys, "active");
    let t = s.issue(&clients::orders(), &[]).await;
    let r = revoke_key(&s, &next, "x").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = revoke_key(&s, &active, "x").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let keys = s.admin_keys().await;
    let signing = exactly_one(&keys, "active");
    assert!(signing != next && signing != active, "{keys:?}");
    assert_eq!(s.introspect(&t).await, inactive());
    let t2 = s.issue(&clients::orders(), &[]).await;
    assert_eq!(kid_of(&t2), signing);
    assert!(s.is_active(&t2).await);
    assert!(s.jwks_kids().await.contains(&signing));
    // Revoking a key twice is harmless: the same answer, the key stays revoked.
    let r = revoke_key(&s, &active, "again").await;
    assert_eq!(r.status, 200, "second revoke: {}", r.text());
    let keys = r.json()["keys"].as_array().expect("keys").clone();
    assert_eq!(
        key_state(&keys, &active).as_deref(),
        Some("revoked"),
        "{keys:?}"
    );
    assert_eq!(exactly_one(&keys, "active"), signing, "{keys:?}");
    assert!(s.is_active(&t2).await);
}

#[tokio::test]
async fn rotation_under_concurrent_issuance() {
    let s = TestServer::builder().start().await;
    let http = s.http.clone();
    let orders = clients::orders();
    let issuer = tokio::spawn(async move {
        let mut tokens = vec![];
        for _ in 0..150 {
            let r = http
                .post_form(
                    "/token",
                    &[("grant_type", "client_credentials")],
                    orders.auth(),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text());
            tokens.push(r.json()["access_token"].as_str().unwrap().to_string());
        }
        tokens
    });
    for _ in 0..5 {
        rotate(&s, None).await;
    }
    let tokens = issuer.await.unwrap();
    let jwks = s.jwks_kids().await;
    let mut kids = std::collections::BTreeSet::new();
    for t in &tokens {
        let kid = kid_of(t);
        assert!(
            jwks.contains(&kid),
            "kid {kid} of an issued token not in JWKS"
        );
        kids.insert(kid);
        assert!(
            s.is_active(t).await,
            "token issued during rotation inactive"
        );
    }
    let keys = s.admin_keys().await;
    exactly_one(&keys, "active");
    exactly_one(&keys, "next");
    eprintln!("{} tokens over {} keys", tokens.len(), kids.len());
}
