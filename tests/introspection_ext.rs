//! Introspection beyond the plain RFC 7662 answer, against the real binary: RFC 9701
//! signed answers (verified with the JWKS, embedding exactly the plain answer, for active
//! and inactive tokens alike), `Accept` negotiation, batch introspection (each answer the
//! one `/introspect` gives, the limit, hostile bodies, fail-closed as a whole), and the
//! minimal `Prefer: return=minimal` answer.

use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use testkit::clients::{self, ORDERS_AUD};
use testkit::prelude::*;

const JWT: &str = "application/token-introspection+jwt";
const TE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const IDP_ISS: &str = "https://idp.introspection.test";
/// Shaped like a refresh token, never issued.
const UNKNOWN_REFRESH: &str = "rt.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

// ---------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------

/// An identity provider whose assertions open user sessions (so there are refresh tokens).
fn idp() -> Idp {
    Idp::new(IDP_ISS)
}

fn idp_hook() -> ClientDef {
    ClientDef::new("idp-hook")
        .grants(&[TE, "refresh_token"])
        .scopes(&["profile", "orders:read"])
        .audiences(&[ORDERS_AUD])
        .roles(&["session_issuer"])
}

/// The standard clients, the IdP's hook and the IdP trusted.
fn builder(idp: &Idp) -> ServerBuilder {
    TestServer::builder()
        .client(idp_hook())
        .trusted_issuer(idp.trusted())
}

/// Opens a user session: (access token, refresh token).
async fn session(s: &TestServer, idp: &Idp, sub: &str) -> (String, String) {
    let assertion = idp.assertion(sub);
    let r = s
        .post_form(
            "/token",
            &[
                ("grant_type", TE),
                ("subject_token", &assertion),
                ("subject_token_type", JWT_TYPE),
            ],
            idp_hook().auth(),
        )
        .await;
    assert_eq!(r.status, 200, "session for {sub}: {}", r.text());
    let v = r.json();
    let field = |k: &str| v[k].as_str().unwrap().to_string();
    (field("access_token"), field("refresh_token"))
}

/// `POST /introspect` as `caller` with extra headers.
async fn introspect(
    s: &TestServer,
    caller: &ClientDef,
    token: &str,
    extra: &[(&str, &str)],
) -> Resp {
    let auth = basic(&caller.id, &caller.secret);
    let mut headers = vec![
        ("content-type", "application/x-www-form-urlencoded"),
        ("authorization", auth.as_str()),
    ];
    headers.extend_from_slice(extra);
    s.http
        .request(
            Method::POST,
            "/introspect",
            &headers,
            form(&[("token", token)]).into_bytes(),
        )
        .await
}

/// `POST /introspect/batch` with a raw body.
async fn batch_raw(
    s: &TestServer,
    caller: Option<&ClientDef>,
    content_type: &str,
    body: Vec<u8>,
    extra: &[(&str, &str)],
) -> Resp {
    let auth = caller.map(|c| basic(&c.id, &c.secret));
    let mut headers = vec![("content-type", content_type)];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    headers.extend_from_slice(extra);
    s.http
        .request(Method::POST, "/introspect/batch", &headers, body)
        .await
}

async fn batch(s: &TestServer, caller: &ClientDef, tokens: &[&str]) -> Resp {
    let body = serde_json::to_vec(&json!({ "tokens": tokens })).unwrap();
    batch_raw(s, Some(caller), "application/json", body, &[]).await
}

/// The plain answer's bytes; asserts 200, JSON, no-store.
async fn plain(s: &TestServer, caller: &ClientDef, token: &str) -> Vec<u8> {
    let r = introspect(s, caller, token, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    r.assert_no_store();
    r.body.to_vec()
}

/// Checks an RFC 9701 answer: media type, header, signature against the JWKS, exactly
/// the four claims, `iss`, `aud` = the caller, `iat` within [`from`, `to`]. Returns the
/// JWT's payload as sent (bytes) and the JWT's `alg`.
async fn verified(
    s: &TestServer,
    r: &Resp,
    caller: &ClientDef,
    from: u64,
    to: u64,
) -> (Vec<u8>, String) {
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type").as_deref(),
        Some(JWT),
        "{}",
        r.text()
    );
    r.assert_no_store();
    let jwt = r.text();
    let (header, claims, _) = decode_jwt(&jwt);
    assert_eq!(header["typ"], "token-introspection+jwt", "{header}");
    let kid = header["kid"].as_str().expect("kid");
    let jwks = s.jwks().await;
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap_or_else(|| panic!("kid {kid} is not in the JWKS {jwks}"))
        .clone();
    assert_eq!(header["alg"], jwk["alg"], "the key's own algorithm");
    assert!(
        verify_with_jwk(&jwt, &jwk),
        "signature does not verify: {jwt}"
    );
    let keys: Vec<&str> = claims
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys.len(),
        4,
        "exactly iss, aud, iat, token_introspection: {claims}"
    );
    assert_eq!(claims["iss"], s.setup.config.issuer);
    assert_eq!(claims["aud"], caller.id.as_str());
    let iat = claims["iat"].as_u64().expect("iat");
    assert!(from <= iat && iat <= to, "iat {iat} outside [{from}, {to}]");
    let payload = b64url_decode(jwt.split('.').nth(1).unwrap());
    (payload, header["alg"].as_str().unwrap().to_string())
}

/// The payload ends with `"token_introspection":` and exactly `answer`.
#[track_caller]
fn embeds_exactly(payload: &[u8], answer: &[u8]) {
    let mut tail = b"\"token_introspection\":".to_vec();
    tail.extend_from_slice(answer);
    tail.push(b'}');
    assert!(
        payload.ends_with(&tail),
        "payload {} does not embed {}",
        String::from_utf8_lossy(payload),
        String::from_utf8_lossy(answer)
    );
}

// ---------------------------------------------------------------------------
// RFC 9701
// ---------------------------------------------------------------------------

#[tokio::test]
async fn signed_answers_verify_against_the_jwks_and_embed_exactly_the_plain_answer() {
    let idp = idp();
    let s = builder(&idp).start().await;
    let access = s.issue(&clients::orders(), &[]).await;
    let (user_access, refresh) = session(&s, &idp, "alice").await;
    for caller in [clients::rs_all(), clients::rs_orders(), clients::admin()] {
        for token in [&access, &user_access, &refresh] {
            let expected = plain(&s, &caller, token).await;
            let v: Value = serde_json::from_slice(&expected).unwrap();
            assert_eq!(v["active"], true, "{v}");
            let from = now_secs();
            let r = introspect(&s, &caller, token, &[("accept", JWT)]).await;
            let (payload, _) = verified(&s, &r, &caller, from, now_secs()).await;
            embeds_exactly(&payload, &expected);
            // Not an access token: presented as one, it is inactive.
            assert!(
                !s.is_active(&r.text()).await,
                "a signed answer passed for a token"
            );
        }
    }
    assert!(
        s.metric("latch_introspection_answers_total{format=\"jwt\",detail=\"full\"}")
            .await
            >= 9.0,
        "signed answers are counted"
    );
}

#[tokio::test]
async fn inactive_answers_are_signed_too() {
    let idp = idp();
    let s = builder(&idp).start().await;
    let revoked = s.issue(&clients::orders(), &[]).await;
    let r = s
        .post_form("/revoke", &[("token", &revoked)], clients::orders().auth())
        .await;
    assert_eq!(r.status, 200);
    let billing = s.issue(&clients::billing(), &[]).await;
    let rs = clients::rs_orders();
    for token in [
        revoked.as_str(),
        billing.as_str(),
        "not-a-token",
        UNKNOWN_REFRESH,
    ] {
        assert_eq!(plain(&s, &rs, token).await, br#"{"active":false}"#.to_vec());
        let from = now_secs();
        let r = introspect(&s, &rs, token, &[("accept", JWT)]).await;
        let (payload, _) = verified(&s, &r, &rs, from, now_secs()).await;
        embeds_exactly(&payload, br#"{"active":false}"#);
    }
}

#[tokio::test]
async fn signed_answers_verify_with_every_algorithm() {
    for (algorithm, alg) in [(Alg::ES256, "ES256"), (Alg::RS256, "RS256")] {
        let s = TestServer::builder()
            .config(|c| c.keys.algorithm = algorithm)
            .start()
            .await;
        let meta = s
            .get("/.well-known/oauth-authorization-server", None)
            .await
            .json();
        assert_eq!(
            meta["introspection_signing_alg_values_supported"],
            json!([alg])
        );
        let token = s.issue(&clients::orders(), &[]).await;
        let rs = clients::rs_all();
        let expected = plain(&s, &rs, &token).await;
        let from = now_secs();
        let r = introspect(&s, &rs, &token, &[("accept", JWT)]).await;
        let (payload, signed_with) = verified(&s, &r, &rs, from, now_secs()).await;
        assert_eq!(signed_with, alg);
        embeds_exactly(&payload, &expected);
    }
}

/// After `keys.algorithm` changes, the old active (and next) key keeps signing until it
/// is rotated out: the metadata names every algorithm that may sign, and every signed
/// answer uses one of them.
#[tokio::test]
async fn metadata_names_every_algorithm_that_may_sign() {
    let mut s = TestServer::builder().start().await;
    let meta = s
        .get("/.well-known/oauth-authorization-server", None)
        .await
        .json();
    assert_eq!(
        meta["introspection_signing_alg_values_supported"],
        json!(["EdDSA"])
    );
    let es256 = TestServer::builder().config(|c| c.keys.algorithm = Alg::ES256);
    s.restart_with(&es256).await;
    let meta = s
        .get("/.well-known/oauth-authorization-server", None)
        .await
        .json();
    let algs = meta["introspection_signing_alg_values_supported"].clone();
    assert_eq!(algs, json!(["ES256", "EdDSA"]), "{meta}");
    let token = s.issue(&clients::orders(), &[]).await;
    let rs = clients::rs_all();
    for rotation in 0..2 {
        let from = now_secs();
        let r = introspect(&s, &rs, &token, &[("accept", JWT)]).await;
        let (_, signed_with) = verified(&s, &r, &rs, from, now_secs()).await;
        assert!(
            algs.as_array().unwrap().contains(&json!(signed_with)),
            "rotation {rotation}: signed with {signed_with}, metadata lists {algs}"
        );
        let r = s
            .post_json(
                "/admin/keys/rotate",
                &json!({"force": true}),
                clients::admin().auth(),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

#[tokio::test]
async fn accept_is_negotiated_by_weight_and_json_stays_the_default() {
    let s = TestServer::builder().start().await;
    let rs = clients::rs_all();
    let token = s.issue(&clients::orders(), &[]).await;
    let expected = plain(&s, &rs, &token).await;
    let cases: &[(&[&str], &str)] = &[
        (&[], "application/json"),
        (&["application/json"], "application/json"),
        (&["*/*"], "application/json"),
        (&["application/*"], "application/json"),
        (&["text/html"], "application/json"),
        (&[JWT], JWT),
        (&["Application/Token-Introspection+JWT"], JWT),
        (
            &["application/token-introspection+jwt;q=0.5, application/json"],
            "application/json",
        ),
        (
            &["application/json;q=0.5, application/token-introspection+jwt"],
            JWT,
        ),
        (
            &["application/json, application/token-introspection+jwt"],
            JWT,
        ),
        (
            &["application/token-introspection+jwt;q=0, */*"],
            "application/json",
        ),
        (&["application/json;q=0, */*;q=0.1"], JWT),
        (
            &["application/token-introspection+jwt;q=2"],
            "application/json",
        ),
        (
            &[
                "application/json;q=0.2",
                "application/token-introspection+jwt;q=0.3",
            ],
            JWT,
        ),
    ];
    for (accept, media) in cases {
        let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("accept", *a)).collect();
        let from = now_secs();
        let r = introspect(&s, &rs, &token, &headers).await;
        assert_eq!(
            r.header("content-type").as_deref(),
            Some(*media),
            "Accept {accept:?}"
        );
        if *media == JWT {
            let (payload, _) = verified(&s, &r, &rs, from, now_secs()).await;
            embeds_exactly(&payload, &expected);
        } else {
            assert_eq!(r.body.to_vec(), expected, "Accept {accept:?}");
        }
    }
    // Refusals stay plain OAuth JSON errors, whatever the caller accepts.
    let wrong = rs
        .clone()
        .secret("not-the-secret-0123456789abcdef0123456789");
    let r = introspect(&s, &wrong, &token, &[("accept", JWT)]).await;
    r.assert_error(401, "invalid_client");
    let r = introspect(&s, &clients::nobody(), &token, &[("accept", JWT)]).await;
    r.assert_error(403, "unauthorized_client");
    let auth = basic(&rs.id, &rs.secret);
    let r = s
        .http
        .request(
            Method::POST,
            "/introspect",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("authorization", &auth),
                ("accept", JWT),
            ],
            b"token_type_hint=access_token".to_vec(),
        )
        .await;
    r.assert_error(400, "invalid_request");
}

// ---------------------------------------------------------------------------
// Batch
// ---------------------------------------------------------------------------

/// The expected batch body: the one-by-one answers, in order, in `{"results": [...]}`.
async fn one_by_one(
    s: &TestServer,
    caller: &ClientDef,
    tokens: &[&str],
    extra: &[(&str, &str)],
) -> Vec<u8> {
    let mut out = b"{\"results\":[".to_vec();
    for (i, t) in tokens.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let r = introspect(s, caller, t, extra).await;
        assert_eq!(r.status, 200, "{}", r.text());
        out.extend_from_slice(&r.body);
    }
    out.extend_from_slice(b"]}");
    out
}

#[tokio::test]
async fn batch_answers_equal_one_by_one_answers() {
    let idp = idp();
    let s = builder(&idp).start().await;
    let orders = clients::orders();
    let active = s.issue(&orders, &[]).await;
    let revoked = s.issue(&orders, &[]).await;
    let r = s
        .post_form("/revoke", &[("token", &revoked)], orders.auth())
        .await;
    assert_eq!(r.status, 200);
    let billing = s.issue(&clients::billing(), &[]).await;
    let (user_access, refresh) = session(&s, &idp, "alice").await;
    let (_, dead_refresh) = session(&s, &idp, "bob").await;
    let r = s
        .post_form("/revoke", &[("token", &dead_refresh)], idp_hook().auth())
        .await;
    assert_eq!(r.status, 200);
    let forged = sign_ed25519(
        &attacker_ed25519(),
        &json!({"typ": "at+jwt", "alg": "EdDSA", "kid": "attacker"}),
        &json!({"iss": s.setup.config.issuer, "sub": "x", "aud": ORDERS_AUD, "exp": now_secs() + 60}),
    );
    let huge = "x".repeat(9000);
    let tokens: Vec<&str> = vec![
        &active,
        &revoked,
        &billing,
        &user_access,
        &refresh,
        &dead_refresh,
        UNKNOWN_REFRESH,
        "not-a-token",
        &forged,
        &huge,
        &active,
        "not-a-token",
        &refresh,
    ];
    for caller in [clients::rs_all(), clients::rs_orders(), clients::admin()] {
        let r = batch(&s, &caller, &tokens).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/json")
        );
        r.assert_no_store();
        let expected = one_by_one(&s, &caller, &tokens, &[]).await;
        assert_eq!(
            r.text(),
            String::from_utf8(expected).unwrap(),
            "caller {}",
            caller.id
        );
        let results = r.json()["results"].as_array().unwrap().clone();
        let active_at: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, v)| v["active"] == true)
            .map(|(i, _)| i)
            .collect();
        let expected_active = if caller.id == clients::rs_orders().id {
            vec![0, 3, 4, 10, 12]
        } else {
            vec![0, 2, 3, 4, 10, 12]
        };
        assert_eq!(
            active_at, expected_active,
            "caller {}: {results:?}",
            caller.id
        );
    }
    // The default limit is 100 tokens.
    let hundred = vec![active.as_str(); 100];
    let r = batch(&s, &clients::rs_all(), &hundred).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let results = r.json()["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 100);
    assert!(results.iter().all(|v| v["active"] == true));
    let r = batch(&s, &clients::rs_all(), &vec![active.as_str(); 101]).await;
    r.assert_error(400, "invalid_request");
    assert!(r.text().contains("at most 100"), "{}", r.text());
}

/// A batch latch must refuse: (what, caller, content type, body, status, error code).
type Refused<'a> = (&'a str, Option<ClientDef>, &'a str, Vec<u8>, u16, &'a str);

#[tokio::test]
async fn batch_limits_and_hostile_bodies() {
    let s = TestServer::builder()
        .env("LATCH_INTROSPECTION__BATCH_MAX", "5")
        .env("LATCH_INTROSPECTION__BATCH_MAX_BODY_BYTES", "32768")
        .start()
        .await;
    let rs = clients::rs_all();
    let token = s.issue(&clients::orders(), &[]).await;
    let t = token.as_str();
    let json_body = |v: Value| serde_json::to_vec(&v).unwrap();
    let big = "y".repeat(9_000);
    let too_big = "y".repeat(7_000);
    const JSON: &str = "application/json";

    let refused: Vec<Refused> = vec![
        (
            "six tokens",
            Some(rs.clone()),
            JSON,
            json_body(json!({"tokens": [t, t, t, t, t, t]})),
            400,
            "invalid_request",
        ),
        (
            "tokens not a list",
            Some(rs.clone()),
            JSON,
            json_body(json!({"tokens": t})),
            400,
            "invalid_request",
        ),
        (
            "a number",
            Some(rs.clone()),
            JSON,
            json_body(json!({"tokens": [t, 1]})),
            400,
            "invalid_request",
        ),
        (
            "a null",
            Some(rs.clone()),
            JSON,
            json_body(json!({"tokens": [null]})),
            400,
            "invalid_request",
        ),
        (
            "an object",
            Some(rs.clone()),
            JSON,
            json_body(json!({"tokens": [{"token": t}]})),
            400,
            "invalid_request",
        ),
        (
            "an empty token",
            Some(rs.clone()),
            JSON,
            json_body(json!({"tokens": [t, ""]})),
            400,
            "invalid_request",
        ),
        (
            "no tokens member",
            Some(rs.clone()),
            JSON,
            json_body(json!({})),
            400,
            "invalid_request",
        ),
        (
            "an unknown member",
            Some(rs.clone()),
            JSON,
            json_body(json!({"tokens": [t], "token": t})),
            400,
            "invalid_request",
        ),
        (
            "a bare list",
            Some(rs.clone()),
            JSON,
            json_body(json!([t])),
            400,
            "invalid_request",
        ),
        (
            "not JSON",
            Some(rs.clone()),
            JSON,
            format!("tokens={t}").into_bytes(),
            400,
            "invalid_request",
        ),
        (
            "a form",
            Some(rs.clone()),
            "application/x-www-form-urlencoded",
            format!("token={t}").into_bytes(),
            415,
            "invalid_request",
        ),
        (
            "over the body limit",
            Some(rs.clone()),
            JSON,
            json_body(json!({"tokens": [&too_big, &too_big, &too_big, &too_big, &too_big]})),
            413,
            "invalid_request",
        ),
        (
            "no credentials",
            None,
            JSON,
            json_body(json!({"tokens": [t]})),
            401,
            "invalid_client",
        ),
        (
            "no role introspect",
            Some(clients::orders()),
            JSON,
            json_body(json!({"tokens": [t]})),
            403,
            "unauthorized_client",
        ),
        (
            "no role at all",
            Some(clients::nobody()),
            JSON,
            json_body(json!({"tokens": [t]})),
            403,
            "unauthorized_client",
        ),
    ];
    for (what, caller, media, body, status, code) in refused {
        let r = batch_raw(&s, caller.as_ref(), media, body, &[]).await;
        assert_eq!(r.status.as_u16(), status, "{what}: {}", r.text());
        r.assert_error(status, code);
        r.assert_no_store();
    }
    let r = batch_raw(
        &s,
        Some(&rs),
        JSON,
        json_body(json!({"tokens": vec![t; 6]})),
        &[],
    )
    .await;
    assert!(
        r.text().contains("at most 5"),
        "the limit is named: {}",
        r.text()
    );
    let r = s.get("/introspect/batch", rs.auth()).await;
    r.assert_error(405, "method_not_allowed");
    assert_eq!(r.header("allow").as_deref(), Some("POST"));

    // Answered: the limit exactly, duplicates (per position), huge tokens, none at all.
    let inactive = json!({"active": false});
    let answered: Vec<(&str, Vec<&str>)> = vec![
        ("five duplicates", vec![t; 5]),
        (
            "huge tokens under the body limit",
            vec![&big, t, &big, &big],
        ),
        ("an empty list", vec![]),
    ];
    for (what, tokens) in answered {
        let r = batch(&s, &rs, &tokens).await;
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        let results = r.json()["results"].as_array().unwrap().clone();
        assert_eq!(results.len(), tokens.len(), "{what}");
        for (i, (result, token)) in results.iter().zip(&tokens).enumerate() {
            if *token == t {
                assert_eq!(result["active"], true, "{what} [{i}]");
                assert_eq!(result["jti"], decode_jwt(t).1["jti"], "{what} [{i}]");
            } else {
                assert_eq!(*result, inactive, "{what} [{i}]");
            }
        }
    }
    // The server is still well after all that.
    assert!(s.is_active(t).await);
}

/// A node whose revocation state is stale decides nothing: the whole batch (even an
/// empty one) and signed answers are 503, never a partial answer.
#[tokio::test]
async fn a_stale_node_refuses_whole_batches_and_signed_answers() {
    let mut redis = RedisProcess::start().await;
    let nodes = TestServer::builder()
        .redis(&redis)
        .config(|c| c.store.max_staleness = ms(500))
        .start_nodes(1)
        .await;
    let s = &nodes[0];
    let token = s.issue(&clients::orders(), &[]).await;
    let rs = clients::rs_all();
    let r = batch(s, &rs, &[&token]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    redis.stop();
    eventually(DEADLINE, "/readyz says the state is stale", || async {
        let r = s.get("/readyz", None).await;
        if r.status == 503 && r.json()["reason"] == "revocation state is stale" {
            Ok(())
        } else {
            Err(format!("{} {}", r.status, r.text()))
        }
    })
    .await;
    for tokens in [vec![token.as_str(), "not-a-token"], vec![]] {
        let r = batch(s, &rs, &tokens).await;
        r.assert_error(503, "temporarily_unavailable");
        assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    }
    let r = introspect(s, &rs, &token, &[("accept", JWT)]).await;
    r.assert_error(503, "temporarily_unavailable");
    let r = introspect(s, &rs, &token, &[("prefer", "return=minimal")]).await;
    r.assert_error(503, "temporarily_unavailable");
}

// ---------------------------------------------------------------------------
// Minimal
// ---------------------------------------------------------------------------

#[tokio::test]
async fn minimal_answers_say_only_active() {
    let idp = idp();
    let s = builder(&idp).start().await;
    let rs = clients::rs_orders();
    let active = s.issue(&clients::orders(), &[]).await;
    let billing = s.issue(&clients::billing(), &[]).await;
    let (_, refresh) = session(&s, &idp, "carol").await;
    let minimal = [("prefer", "return=minimal")];
    for (token, body) in [
        (active.as_str(), &br#"{"active":true}"#[..]),
        (refresh.as_str(), br#"{"active":true}"#),
        (billing.as_str(), br#"{"active":false}"#),
        ("not-a-token", br#"{"active":false}"#),
    ] {
        let r = introspect(&s, &rs, token, &minimal).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.body.to_vec(), body.to_vec(), "{}", r.text());
        assert_eq!(
            r.header("preference-applied").as_deref(),
            Some("return=minimal")
        );
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/json")
        );
        r.assert_no_store();
    }
    // Another preference, or none: the full answer, and no Preference-Applied.
    for prefer in [&[("prefer", "return=representation")][..], &[]] {
        let r = introspect(&s, &rs, &active, prefer).await;
        assert_eq!(r.json()["jti"], decode_jwt(&active).1["jti"]);
        assert_eq!(r.header("preference-applied"), None);
    }
    // Minimal and signed: the JWT embeds the minimal answer.
    let from = now_secs();
    let r = introspect(
        &s,
        &rs,
        &active,
        &[("prefer", "return=minimal"), ("accept", JWT)],
    )
    .await;
    let (payload, _) = verified(&s, &r, &rs, from, now_secs()).await;
    embeds_exactly(&payload, br#"{"active":true}"#);
    assert_eq!(
        r.header("preference-applied").as_deref(),
        Some("return=minimal")
    );
    // Minimal batches: every answer minimal.
    let tokens = [active.as_str(), billing.as_str(), refresh.as_str()];
    let body = serde_json::to_vec(&json!({ "tokens": tokens })).unwrap();
    let r = batch_raw(&s, Some(&rs), "application/json", body, &minimal).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.text(),
        r#"{"results":[{"active":true},{"active":false},{"active":true}]}"#
    );
    assert_eq!(
        r.header("preference-applied").as_deref(),
        Some("return=minimal")
    );
    let expected = one_by_one(&s, &rs, &tokens, &minimal).await;
    assert_eq!(r.body.to_vec(), expected);
    assert!(
        s.metric("latch_introspection_answers_total{format=\"batch\",detail=\"minimal\"}")
            .await
            >= 1.0
    );
}

/// A batch limit set above 1 MiB is the limit: a 1.5 MB batch under a 4 MiB limit is
/// answered (reading a too-large body to drain it must not cap what the limit allows).
#[tokio::test]
async fn a_batch_limit_over_one_mebibyte_is_honoured() {
    let s = TestServer::builder()
        .env("LATCH_INTROSPECTION__BATCH_MAX", "200")
        .env("LATCH_INTROSPECTION__BATCH_MAX_BODY_BYTES", "4194304")
        .start()
        .await;
    let rs = clients::rs_all();
    let token = s.issue(&clients::orders(), &[]).await;
    let big = "y".repeat(9_000);
    let mut tokens: Vec<&str> = vec![&big; 169];
    tokens.push(&token);
    let body_len = serde_json::to_vec(&json!({ "tokens": tokens }))
        .unwrap()
        .len();
    assert!(body_len > 1_500_000, "{body_len}");
    let r = batch(&s, &rs, &tokens).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let results = r.json()["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 170);
    assert_eq!(results[169]["active"], true);
    assert_eq!(results[0], json!({"active": false}));
}
