//! Hostile input at the introspection endpoint and the HTTP edge. Every bad
//! token must answer exactly `{"active":false}`; bad requests get JSON errors,
//! never a 500.

use hyper::Method;
use serde_json::{json, Value};
use testkit::clients::{self, BILLING_AUD};
use testkit::prelude::*;

const FORM: &str = "application/x-www-form-urlencoded";

/// Builds header.claims.sig from parts.
fn assemble(h: &Value, c: &Value, sig: &str) -> String {
    format!("{}.{}.{}", encode_part(h), encode_part(c), sig)
}

async fn assert_all_inactive(s: &TestServer, cases: &[(String, String)]) {
    let mut failures = vec![];
    for (name, token) in cases {
        let r = s
            .post_form("/introspect", &[("token", token)], clients::rs_all().auth())
            .await;
        if r.status != 200 {
            failures.push(format!("{name}: status {} body {}", r.status, r.text()));
            continue;
        }
        let v: Value = match serde_json::from_slice(&r.body) {
            Ok(v) => v,
            Err(_) => {
                failures.push(format!("{name}: non-JSON body {}", r.text()));
                continue;
            }
        };
        if v != inactive() {
            failures.push(format!("{name}: got {v}"));
        }
    }
    assert!(
        failures.is_empty(),
        "hostile tokens not answered with exactly {{\"active\":false}}:\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
async fn forged_and_malformed_tokens_are_inactive() {
    let s = TestServer::builder().start().await;
    let real = s.issue(&clients::orders(), &[]).await;
    assert!(s.is_active(&real).await, "sanity: the real token is active");
    let (h, c, sig) = decode_jwt(&real);
    let kid = h["kid"].as_str().unwrap().to_string();
    let jwks = s.jwks().await;
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .expect("signing key in JWKS")
        .clone();
    let x_str = jwk["x"].as_str().expect("OKP x").to_string();
    let x_bytes = b64url_decode(&x_str);
    let jwk_json = serde_json::to_string(&jwk).unwrap();
    let jwks_json = serde_json::to_string(&jwks).unwrap();

    let mut cases: Vec<(String, String)> = vec![];
    let mut add = |name: &str, t: String| cases.push((name.to_string(), t));

    // alg none, with and without the original signature.
    for alg in ["none", "None", "NONE", "nOnE"] {
        let hn = json!({"alg": alg, "typ": "at+jwt", "kid": kid});
        add(&format!("alg {alg}, empty sig"), assemble(&hn, &c, ""));
        add(&format!("alg {alg}, real sig"), assemble(&hn, &c, &sig));
    }
    add(
        "no alg at all",
        assemble(&json!({"typ":"at+jwt","kid":kid}), &c, &sig),
    );

    // HMAC with the public key as the secret, valid kid.
    {
        let hh = json!({"alg": "HS256", "typ": "at+jwt", "kid": kid});
        add("HS256 key=x bytes", sign_hs256(&x_bytes, &hh, &c));
        add("HS256 key=x string", sign_hs256(x_str.as_bytes(), &hh, &c));
        add(
            "HS256 key=JWK JSON",
            sign_hs256(jwk_json.as_bytes(), &hh, &c),
        );
        add(
            "HS256 key=JWKS JSON",
            sign_hs256(jwks_json.as_bytes(), &hh, &c),
        );
        add("HS256 key=empty", sign_hs256(b"", &hh, &c));
    }

    // Tampered payload, original signature.
    let mut c2 = c.clone();
    c2["sub"] = json!("admin");
    add("tampered sub", assemble(&h, &c2, &sig));
    let mut c2 = c.clone();
    c2["scope"] = json!("orders:read orders:write admin");
    add("tampered scope", assemble(&h, &c2, &sig));
    let mut c2 = c.clone();
    c2["exp"] = json!(c["exp"].as_u64().unwrap() + 86400);
    add("tampered exp", assemble(&h, &c2, &sig));
    let mut c2 = c.clone();
    c2["rsq"] = json!(u64::MAX);
    add("tampered rsq", assemble(&h, &c2, &sig));

    // Header altered (typ / kid), original signature.
    let mut h2 = h.clone();
    h2["typ"] = json!("JWT");
    add("typ JWT, original sig", assemble(&h2, &c, &sig));
    let mut h2 = h.clone();
    h2["kid"] = json!("no-such-kid");
    add("unknown kid, original sig", assemble(&h2, &c, &sig));
    let mut h2 = h.clone();
    h2["alg"] = json!("ES256");
    add("alg switched to ES256", assemble(&h2, &c, &sig));

    // Signed by a key we control.
    let kp = attacker_ed25519();
    let ha = json!({"alg":"EdDSA","typ":"at+jwt","kid":"attacker-key"});
    add("attacker key, own kid", sign_ed25519(&kp, &ha, &c));
    let ha = json!({"alg":"EdDSA","typ":"at+jwt","kid":kid});
    add("attacker key, server kid", sign_ed25519(&kp, &ha, &c));
    let ha = json!({"alg":"EdDSA","typ":"at+jwt","kid":"../../../../etc/passwd"});
    add("attacker key, path kid", sign_ed25519(&kp, &ha, &c));
    let ha = json!({"alg":"EdDSA","typ":"at+jwt"});
    add("attacker key, no kid", sign_ed25519(&kp, &ha, &c));
    use ring::signature::KeyPair as _;
    let ha = json!({"alg":"EdDSA","typ":"at+jwt","kid":"attacker-key",
        "jwk": {"kty":"OKP","crv":"Ed25519","x": b64url(kp.public_key().as_ref())}});
    add("attacker key, embedded jwk", sign_ed25519(&kp, &ha, &c));
    let ha = json!({"alg":"EdDSA","typ":"at+jwt","kid":kid,"jku":"http://127.0.0.1:1/jwks.json"});
    add("attacker key, jku", sign_ed25519(&kp, &ha, &c));

    // Broken encodings and structure.
    let parts: Vec<&str> = real.split('.').collect();
    add(
        "bad base64 header",
        format!("!!!.{}.{}", parts[1], parts[2]),
    );
    add(
        "bad base64 payload",
        format!("{}.$$$.{}", parts[0], parts[2]),
    );
    add("bad base64 sig", format!("{}.{}.***", parts[0], parts[1]));
    add(
        "sig truncated",
        format!("{}.{}.{}", parts[0], parts[1], &parts[2][..10]),
    );
    add("sig empty", format!("{}.{}.", parts[0], parts[1]));
    add("two parts", format!("{}.{}", parts[0], parts[1]));
    add("four parts", format!("{real}.{}", parts[2]));
    add("five parts (JWE shape)", format!("{real}.a.b"));
    add(
        "whitespace inside",
        format!("{} .{}.{}", parts[0], parts[1], parts[2]),
    );
    add("trailing dot", format!("{real}."));
    add("dots", "..".to_string());
    add("single dot", ".".to_string());
    add("plain word", "hello".to_string());
    add("abc.def.ghi", "abc.def.ghi".to_string());
    add(
        "header not JSON",
        format!("{}.{}.{}", b64url(b"not json"), parts[1], parts[2]),
    );
    add(
        "claims not an object",
        format!("{}.{}.{}", parts[0], b64url(b"[1,2,3]"), parts[2]),
    );
    add(
        "claims not JSON",
        format!("{}.{}.{}", parts[0], b64url(b"\xff\xfe"), parts[2]),
    );
    add("lowercased token", real.to_lowercase());
    add("NUL byte", format!("{real}\u{0}"));
    add("unicode", "ťøķëñ.ťøķëñ.ťøķëñ".to_string());
    add("10 KB of a", "a".repeat(10 * 1024));
    add(
        "10 KB JWT-shaped",
        format!(
            "{}.{}.{}",
            parts[0],
            b64url(&vec![b'{'; 7 * 1024]),
            parts[2]
        ),
    );
    add("Bearer prefix", format!("Bearer {real}"));

    assert_all_inactive(&s, &cases).await;

    // And the real token is still fine after all that.
    assert!(s.is_active(&real).await);
}

#[tokio::test]
async fn empty_token_is_not_active() {
    let s = TestServer::builder().start().await;
    let r = s
        .post_form("/introspect", &[("token", "")], clients::rs_all().auth())
        .await;
    // An empty parameter counts as absent: a malformed request, never an answer.
    r.assert_error(400, "invalid_request");
}

#[tokio::test]
async fn expired_token_becomes_inactive() {
    let cfg = TestServer::builder().config(|c| {
        c.tokens.access_ttl = secs(2);
        c.tokens.leeway = secs(0);
    });
    let s = cfg.start().await;
    let token = s.issue(&clients::orders(), &[]).await;
    let (_, c, _) = decode_jwt(&token);
    let exp = c["exp"].as_u64().unwrap();
    assert_eq!(exp - c["iat"].as_u64().unwrap(), 2);
    // Every answer, whatever the pace of this machine: inactive only once exp has
    // passed (no leeway), never before.
    eventually(DEADLINE, "expired token inactive", || async {
        if s.is_active_until(&token, exp).await {
            Err("still active".into())
        } else {
            Ok(())
        }
    })
    .await;
    // Expired stays expired (no leeway to bring it back).
    assert!(!s.is_active_until(&token, exp).await);
    // Revoking an expired token is still a 200 (RFC 7009).
    let r = s
        .post_form("/revoke", &[("token", &token)], clients::orders().auth())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn tokens_from_another_issuer_are_inactive() {
    let cfg_a = TestServer::builder().config(|c| c.issuer = "http://issuer-a.test".into());
    let mut s = cfg_a.start().await;
    let token_a = s.issue(&clients::orders(), &[]).await;
    assert!(s.is_active(&token_a).await);

    let cfg_b = TestServer::builder().config(|c| c.issuer = "http://issuer-b.test".into());
    s.restart_with(&cfg_b).await;
    // Same keys (same data dir and KEK), different issuer.
    assert_eq!(s.introspect(&token_a).await, inactive());
    let token_b = s.issue(&clients::orders(), &[]).await;
    let (_, cb, _) = decode_jwt(&token_b);
    assert_eq!(cb["iss"], "http://issuer-b.test");
    assert!(s.is_active(&token_b).await);
}

#[tokio::test]
async fn revoked_key_tokens_are_inactive() {
    let s = TestServer::builder().start().await;
    let token = s.issue(&clients::orders(), &[]).await;
    let (h, _, _) = decode_jwt(&token);
    let kid = h["kid"].as_str().unwrap();
    let r = s
        .post_json(
            &format!("/admin/keys/{kid}/revoke"),
            &json!({"reason": "compromised"}),
            clients::admin().auth(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.introspect(&token).await, inactive());
}

#[tokio::test]
async fn retired_key_tokens_are_inactive() {
    // A retired key is gone; the tokens it signed must not come back active.
    // (Retirement waits for every token of the key to expire, so this can only
    // check that nothing resurrects them.)
    let cfg = TestServer::builder().config(|c| {
        c.tokens.access_ttl = secs(2);
        c.tokens.leeway = secs(0);
    });
    let s = cfg.start().await;
    let token = s.issue(&clients::orders(), &[]).await;
    let (h, _, _) = decode_jwt(&token);
    let kid = h["kid"].as_str().unwrap().to_string();
    let r = s
        .post_json(
            "/admin/keys/rotate",
            &json!({"reason": "test", "force": true}),
            clients::admin().auth(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let kid2 = kid.clone();
    eventually(DEADLINE, "old key retired", || {
        let s = &s;
        let kid = kid2.clone();
        async move {
            // Retired keys stay listed.
            match key_state(&s.admin_keys().await, &kid).as_deref() {
                Some("retired") => Ok(()),
                other => Err(format!("state {other:?}")),
            }
        }
    })
    .await;
    assert!(!s.jwks_kids().await.contains(&kid), "retired key in JWKS");
    assert_eq!(s.introspect(&token).await, inactive());
}

#[tokio::test]
async fn token_for_other_audience_is_inactive_at_restricted_rs() {
    let s = TestServer::builder().start().await;
    let billing = s.issue(&clients::billing(), &[]).await;
    let (_, c, _) = decode_jwt(&billing);
    assert_eq!(aud_list(&c["aud"]), vec![BILLING_AUD.to_string()]);
    assert_eq!(
        s.introspect_as(&clients::rs_orders(), &billing).await,
        inactive()
    );
    assert!(s.is_active(&billing).await);
}

#[tokio::test]
async fn bad_requests_get_json_errors() {
    let s = TestServer::builder().start().await;
    let rs = clients::rs_all();
    let orders = clients::orders();
    let token = s.issue(&orders, &[]).await;
    let auth_rs = basic(&rs.id, &rs.secret);
    let auth_orders = basic(&orders.id, &orders.secret);

    // Repeated parameters.
    let r = s
        .post_form(
            "/introspect",
            &[("token", &token), ("token", "other")],
            rs.auth(),
        )
        .await;
    r.assert_error(400, "invalid_request");
    let r = s
        .post_form(
            "/introspect",
            &[
                ("token", &token),
                ("token_type_hint", "a"),
                ("token_type_hint", "b"),
            ],
            rs.auth(),
        )
        .await;
    r.assert_error(400, "invalid_request");
    let r = s
        .post_form(
            "/revoke",
            &[("token", &token), ("token", &token)],
            orders.auth(),
        )
        .await;
    r.assert_error(400, "invalid_request");
    assert!(
        s.is_active(&token).await,
        "a refused revoke must not revoke"
    );

    // Missing token.
    let r = s.post_form("/introspect", &[], rs.auth()).await;
    r.assert_error(400, "invalid_request");
    let r = s
        .post_form(
            "/introspect",
            &[("token_type_hint", "access_token")],
            rs.auth(),
        )
        .await;
    r.assert_error(400, "invalid_request");
    let r = s.post_form("/revoke", &[], orders.auth()).await;
    r.assert_error(400, "invalid_request");

    // Garbage (non-form, non-UTF-8) body with the right content type.
    let garbage: Vec<u8> = vec![0xff, 0xfe, 0x00, 0x80, b'%', b'%', 0xc3, 0x28, b'&', b'='];
    for (path, auth) in [
        ("/introspect", &auth_rs),
        ("/revoke", &auth_orders),
        ("/token", &auth_orders),
    ] {
        let r = s
            .http
            .request(
                Method::POST,
                path,
                &[("content-type", FORM), ("authorization", auth)],
                garbage.clone(),
            )
            .await;
        r.assert_error(400, "invalid_request");
    }

    // Wrong / missing content type: 415.
    for (path, auth) in [
        ("/introspect", &auth_rs),
        ("/revoke", &auth_orders),
        ("/token", &auth_orders),
    ] {
        let body = format!("token={token}&grant_type=client_credentials").into_bytes();
        for ct in [Some("application/json"), Some("text/plain"), None] {
            let mut headers = vec![("authorization", auth.as_str())];
            if let Some(ct) = ct {
                headers.push(("content-type", ct));
            }
            let r = s
                .http
                .request(Method::POST, path, &headers, body.clone())
                .await;
            assert_eq!(r.status, 415, "{path} with {ct:?}: {}", r.text());
            assert!(r.json()["error"].is_string(), "{}", r.text());
        }
    }
    // Content type with a charset parameter is still form.
    let r = s
        .http
        .request(
            Method::POST,
            "/introspect",
            &[
                (
                    "content-type",
                    "application/x-www-form-urlencoded; charset=UTF-8",
                ),
                ("authorization", &auth_rs),
            ],
            form(&[("token", &token)]).into_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["active"], true);

    // Body over max_body_bytes (16384): 413.
    let big = format!("token={}", "a".repeat(20 * 1024));
    for (path, auth) in [
        ("/introspect", &auth_rs),
        ("/revoke", &auth_orders),
        ("/token", &auth_orders),
    ] {
        let r = s
            .http
            .request(
                Method::POST,
                path,
                &[("content-type", FORM), ("authorization", auth)],
                big.clone().into_bytes(),
            )
            .await;
        assert_eq!(r.status, 413, "{path}: {}", r.text());
        assert!(r.json()["error"].is_string(), "{}", r.text());
    }
    let r = s
        .http
        .request(
            Method::POST,
            "/admin/revoke",
            &[
                ("content-type", "application/json"),
                (
                    "authorization",
                    &basic(&clients::admin().id, &clients::admin().secret),
                ),
            ],
            format!(
                "{{\"kind\":\"subject\",\"value\":\"x\",\"reason\":\"{}\"}}",
                "r".repeat(20 * 1024)
            )
            .into_bytes(),
        )
        .await;
    assert_eq!(r.status, 413, "/admin/revoke: {}", r.text());

    // Wrong method: 405 with Allow.
    for (method, path, allowed) in [
        (Method::GET, "/token", "POST"),
        (Method::GET, "/introspect", "POST"),
        (Method::PUT, "/revoke", "POST"),
        (Method::DELETE, "/introspect", "POST"),
        (Method::POST, "/.well-known/jwks.json", "GET"),
        (
            Method::POST,
            "/.well-known/oauth-authorization-server",
            "GET",
        ),
        (Method::DELETE, "/admin/keys", "GET"),
        (Method::GET, "/admin/revoke", "POST"),
        (Method::POST, "/healthz", "GET"),
    ] {
        let r = s.http.request(method.clone(), path, &[], vec![]).await;
        assert_eq!(r.status, 405, "{method} {path}: {}", r.text());
        let allow = r
            .header("allow")
            .unwrap_or_else(|| panic!("{method} {path}: no Allow header"));
        assert!(
            allow.split(',').any(|m| m.trim() == allowed),
            "{method} {path}: Allow {allow:?} lacks {allowed}"
        );
        assert!(r.json()["error"].is_string(), "{}", r.text());
    }

    // Unknown path.
    let r = s.get("/../../etc/passwd", None).await;
    assert_eq!(r.status, 404, "{}", r.text());

    // Garbage JSON at the admin API.
    let r = s
        .http
        .request(
            Method::POST,
            "/admin/revoke",
            &[
                ("content-type", "application/json"),
                (
                    "authorization",
                    &basic(&clients::admin().id, &clients::admin().secret),
                ),
            ],
            b"{\"kind\": \"subject\", \"value\": ".to_vec(),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["error"].is_string());

    // The server survived all of it.
    assert!(s.is_active(&token).await);
}

#[tokio::test]
async fn body_limit_boundary() {
    let s = TestServer::builder().start().await;
    let rs = clients::rs_all();
    let auth = basic(&rs.id, &rs.secret);
    let at_limit = format!("token={}", "a".repeat(16384 - "token=".len()));
    assert_eq!(at_limit.len(), 16384);
    let r = s
        .http
        .request(
            Method::POST,
            "/introspect",
            &[("content-type", FORM), ("authorization", &auth)],
            at_limit.into_bytes(),
        )
        .await;
    assert_eq!(
        r.status,
        200,
        "body of exactly max_body_bytes: {}",
        r.text()
    );
    assert_eq!(r.json(), inactive());
    let over = format!("token={}", "a".repeat(16385 - "token=".len()));
    let r = s
        .http
        .request(
            Method::POST,
            "/introspect",
            &[("content-type", FORM), ("authorization", &auth)],
            over.into_bytes(),
        )
        .await;
    assert_eq!(r.status, 413, "max_body_bytes + 1: {}", r.text());
}

/// A client that sends a body somewhat over the limit gets its 413, every time: latch reads
/// such a body to its end before answering (a connection closed with unread bytes is reset
/// by the kernel, and the client would see the reset instead of the answer).
#[tokio::test]
async fn a_body_over_the_limit_gets_its_413_every_time() {
    let s = TestServer::builder().start().await;
    let rs = clients::rs_all();
    let auth = basic(&rs.id, &rs.secret);
    let big = format!("token={}", "a".repeat(64 * 1024));
    let mut answers = std::collections::BTreeMap::new();
    for _ in 0..40 {
        let r = s
            .http
            .try_request(
                Method::POST,
                "/introspect",
                &[("content-type", FORM), ("authorization", &auth)],
                big.clone().into_bytes(),
            )
            .await;
        let key = match r {
            Ok(r) => {
                r.assert_error(413, "invalid_request");
                "413".to_string()
            }
            Err(e) => e,
        };
        *answers.entry(key).or_insert(0) += 1;
    }
    assert_eq!(answers.get("413"), Some(&40), "{answers:?}");
    assert!(s.is_active(&s.issue(&clients::orders(), &[]).await).await);
}

#[tokio::test]
async fn chunked_body_over_limit_is_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::builder().start().await;
    let rs = clients::rs_all();
    let mut stream = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "POST /introspect HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\
         Content-Type: {FORM}\r\nTransfer-Encoding: chunked\r\n\r\n",
        basic(&rs.id, &rs.secret)
    );
    let mut body = Vec::new();
    body.extend_from_slice(b"6\r\ntoken=\r\n");
    for _ in 0..8 {
        body.extend_from_slice(format!("{:x}\r\n", 4096).as_bytes());
        body.extend_from_slice(&[b'a'; 4096]);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    // The server may answer and close before reading everything.
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(DEADLINE, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 413"),
        "chunked 32 KiB body: {text:?}"
    );
}

#[tokio::test]
async fn pathological_inputs_do_not_500() {
    let s = TestServer::builder().start().await;
    let rs = clients::rs_all();
    let admin = clients::admin();
    let token = s.issue(&clients::orders(), &[]).await;

    // Thousands of tiny form parameters.
    let mut many = String::from("token=x");
    for i in 0..2000 {
        many.push_str(&format!("&p{i}=1"));
    }
    assert!(many.len() < 16384);
    let r = s
        .http
        .request(
            Method::POST,
            "/introspect",
            &[
                ("content-type", FORM),
                ("authorization", &basic(&rs.id, &rs.secret)),
            ],
            many.into_bytes(),
        )
        .await;
    // More than 64 parameters are refused before any is compared with another.
    r.assert_error(400, "invalid_request");

    // Deeply nested JSON at the admin API.
    let nested = format!("{}{}", "[".repeat(8000), "]".repeat(8000));
    let r = s
        .http
        .request(
            Method::POST,
            "/admin/revoke",
            &[
                ("content-type", "application/json"),
                ("authorization", &basic(&admin.id, &admin.secret)),
            ],
            nested.into_bytes(),
        )
        .await;
    assert_eq!(r.status, 400, "deeply nested JSON: {}", r.text());

    // Bad percent escapes and a token made of escapes: an escape that is not one is
    // kept as text (a token nobody issued), one that decodes to bytes outside UTF-8 is
    // refused, and a parameter without a value is absent.
    for (body, status) in [
        ("token=%zz%%%".to_string(), 200),
        ("token=%ff%fe%00".to_string(), 400),
        (format!("token={}", "%41".repeat(1000)), 200),
        ("=&=&token".to_string(), 400),
    ] {
        let r = s
            .http
            .request(
                Method::POST,
                "/introspect",
                &[
                    ("content-type", FORM),
                    ("authorization", &basic(&rs.id, &rs.secret)),
                ],
                body.clone().into_bytes(),
            )
            .await;
        match status {
            200 => {
                assert_eq!(r.status, 200, "{body}: {}", r.text());
                assert_eq!(r.json(), inactive(), "{body}");
            }
            _ => {
                assert_eq!(r.status, 400, "{body}: {}", r.text());
                r.assert_error(400, "invalid_request");
            }
        }
    }

    // Huge header value.
    let huge = "x".repeat(64 * 1024);
    // Within hyper's read buffer (about 400 KiB), so an ordinary request.
    let r = s
        .http
        .request(Method::GET, "/healthz", &[("x-huge", &huge)], vec![])
        .await;
    assert_eq!(r.status, 200, "huge header: {}", r.text());
    assert!(s.is_active(&token).await, "server state harmed");
}
