//! Client authentication beyond shared secrets: `private_key_jwt` (RFC 7523 §2.2) at
//! `/token`, `/introspect` and `/revoke`, its metadata, and the hostile cases: a wrong key,
//! a replayed assertion (on the same node, and on another node sharing Redis), expired, a
//! wrong `aud`, no `jti`, `alg: none`, HS256 keyed with the public key, a lifetime over
//! the limit, and a secret beside an assertion. DPoP (RFC 9449) at `/token`: bound tokens
//! (`cnf.jkt`, `token_type: DPoP`) and their introspection, server nonces, and hostile
//! proofs: wrong `htm`/`htu`, replayed (on another node too), too old, a bad signature,
//! `alg: none`, a private key in the header, two headers.

use serde_json::{json, Value};
use testkit::client_keys::{jwks, token_endpoint, ClientKey, JWT_BEARER};
use testkit::clients::ORDERS_AUD;
use testkit::issuers::{unique, LATCH_ISSUER};
use testkit::prelude::*;

/// A `private_key_jwt`-only client (no secret) that may get tokens and introspect.
fn keyed(id: &str, keys: &[&ClientKey]) -> ClientDef {
    ClientDef::new(id)
        .grants(&["client_credentials"])
        .scopes(&["orders:read"])
        .audiences(&[ORDERS_AUD])
        .roles(&["introspect"])
        .jwks(jwks(keys))
        .without_secret()
}

/// A POST of `params` plus the assertion, with no Basic credentials.
async fn post_asserted(
    s: &TestServer,
    path: &str,
    params: &[(&str, &str)],
    assertion: &str,
) -> Resp {
    let mut p = params.to_vec();
    p.push(("client_assertion_type", JWT_BEARER));
    p.push(("client_assertion", assertion));
    s.post_form(path, &p, None).await
}

async fn token_with(s: &TestServer, assertion: &str) -> Resp {
    post_asserted(
        s,
        "/token",
        &[("grant_type", "client_credentials")],
        assertion,
    )
    .await
}

#[tokio::test]
async fn a_keyed_client_authenticates_at_token_introspect_and_revoke() {
    let ed = ClientKey::ed25519("ed-1");
    let es = ClientKey::es256("es-1");
    let client = keyed("keyed", &[&ed, &es]);
    let s = TestServer::builder().client(client.clone()).start().await;

    // EdDSA at /token, with client_id beside the assertion (allowed when it matches).
    let mut p = vec![("grant_type", "client_credentials"), ("client_id", "keyed")];
    let a = ed.assertion("keyed");
    p.push(("client_assertion_type", JWT_BEARER));
    p.push(("client_assertion", &a));
    let r = s.post_form("/token", &p, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["access_token"].as_str().unwrap().to_string();
    let (_, claims, _) = decode_jwt(&token);
    assert_eq!(claims["client_id"], "keyed");

    // ES256 at /introspect; `aud` may also be the issuer itself.
    let mut c = es.assertion_claims("keyed");
    c["aud"] = json!(LATCH_ISSUER);
    let r = post_asserted(
        &s,
        "/introspect",
        &[("token", &token)],
        &es.sign_assertion(&c),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["active"], true, "{}", r.text());

    // /revoke, then the token is inactive.
    let r = post_asserted(&s, "/revoke", &[("token", &token)], &ed.assertion("keyed")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.introspect(&token).await["active"], false);

    // It has no secret: its default test secret, by Basic or in the form, is refused.
    let r = s.token_resp(&client, &[]).await;
    r.assert_error(401, "invalid_client");
    let r = s
        .post_form(
            "/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "keyed"),
                ("client_secret", &client.secret),
            ],
            None,
        )
        .await;
    r.assert_error(401, "invalid_client");
}

#[tokio::test]
async fn hostile_assertions_are_refused() {
    let key = ClientKey::ed25519("k1");
    // The same kid, another key: what an attacker without the private key can sign.
    let attacker = ClientKey::ed25519("k1");
    let both = ClientDef::new("both")
        .grants(&["client_credentials"])
        .scopes(&["orders:read"])
        .audiences(&[ORDERS_AUD])
        .jwks(jwks(&[&key]));
    let s = TestServer::builder()
        .client(keyed("keyed", &[&key]))
        .client(both.clone())
        .start()
        .await;
    let now = now_secs();
    let with = |k: &str, v: Value| {
        let mut c = key.assertion_claims("keyed");
        c[k] = v;
        key.sign_assertion(&c)
    };
    let without = |k: &str| {
        let mut c = key.assertion_claims("keyed");
        c.as_object_mut().unwrap().remove(k);
        key.sign_assertion(&c)
    };
    let header = |alg: &str| json!({"alg": alg, "kid": "k1", "typ": "JWT"});
    let cases: Vec<(&str, String)> = vec![
        ("wrong key", attacker.assertion("keyed")),
        (
            "wrong aud",
            with("aud", json!("https://elsewhere.example/token")),
        ),
        ("expired", with("exp", json!(now - 120))),
        ("no jti", without("jti")),
        ("no exp", without("exp")),
        ("lifetime over 5 minutes", with("exp", json!(now + 600))),
        ("iss is not the client", with("iss", json!("both"))),
        ("another client's sub", with("sub", json!("both"))),
        (
            "unknown kid",
            key.sign(
                &json!({"alg": "EdDSA", "kid": "nope"}),
                &key.assertion_claims("keyed"),
            ),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                encode_part(&json!({"alg": "none", "kid": "k1"})),
                encode_part(&key.assertion_claims("keyed"))
            ),
        ),
        (
            "HS256 keyed with the public key",
            sign_hs256(
                &key.public_key(),
                &header("HS256"),
                &key.assertion_claims("keyed"),
            ),
        ),
        ("garbage", "not-a-jwt".into()),
    ];
    for (what, assertion) in &cases {
        let r = token_with(&s, assertion).await;
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        assert_eq!(r.json()["error"], "invalid_client", "{what}: {}", r.text());
    }

    // A client_id other than the assertion's subject.
    let r = s
        .post_form(
            "/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "both"),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", &key.assertion("keyed")),
            ],
            None,
        )
        .await;
    r.assert_error(401, "invalid_client");

    // A secret and an assertion at once: one method, not two (Basic or in the form).
    let a = key.assertion("both");
    let params = [
        ("grant_type", "client_credentials"),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", a.as_str()),
    ];
    let r = s.post_form("/token", &params, both.auth()).await;
    r.assert_error(400, "invalid_request");
    let mut p = params.to_vec();
    p.push(("client_id", "both"));
    p.push(("client_secret", &both.secret));
    let r = s.post_form("/token", &p, None).await;
    r.assert_error(400, "invalid_request");
    // Each alone works for a client with both.
    assert_eq!(token_with(&s, &key.assertion("both")).await.status, 200);
    assert_eq!(s.token_resp(&both, &[]).await.status, 200);

    // Another assertion type, or a type without the assertion.
    let r = s
        .post_form(
            "/token",
            &[
                ("grant_type", "client_credentials"),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:saml2-bearer",
                ),
                ("client_assertion", &key.assertion("keyed")),
            ],
            None,
        )
        .await;
    r.assert_error(400, "invalid_request");
    let r = s
        .post_form(
            "/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", JWT_BEARER),
            ],
            None,
        )
        .await;
    r.assert_error(400, "invalid_request");
}

#[tokio::test]
async fn an_assertion_is_used_once_on_the_embedded_store() {
    let key = ClientKey::es256("k1");
    let s = TestServer::builder()
        .client(keyed("keyed", &[&key]))
        .start()
        .await;
    let a = key.assertion("keyed");
    assert_eq!(token_with(&s, &a).await.status, 200);
    // Replayed, at the same endpoint or another.
    token_with(&s, &a).await.assert_error(401, "invalid_client");
    post_asserted(&s, "/introspect", &[("token", "x")], &a)
        .await
        .assert_error(401, "invalid_client");
    // The same jti in a new assertion is a replay too.
    let mut c = key.assertion_claims("keyed");
    c["jti"] = json!(decode_jwt(&a).1["jti"]);
    token_with(&s, &key.sign_assertion(&c))
        .await
        .assert_error(401, "invalid_client");
}

#[tokio::test]
async fn an_assertion_used_on_one_node_is_refused_on_another() {
    let redis = RedisProcess::start().await;
    let key = ClientKey::ed25519("k1");
    let nodes = TestServer::builder()
        .redis(&redis)
        .client(keyed("keyed", &[&key]))
        .start_nodes(2)
        .await;
    let a = key.assertion("keyed");
    assert_eq!(token_with(&nodes[0], &a).await.status, 200);
    token_with(&nodes[1], &a)
        .await
        .assert_error(401, "invalid_client");
    token_with(&nodes[0], &a)
        .await
        .assert_error(401, "invalid_client");
    // A fresh assertion still works on either.
    assert_eq!(
        token_with(&nodes[1], &key.assertion("keyed")).await.status,
        200
    );
}

#[tokio::test]
async fn keys_from_a_file_and_a_configured_lifetime() {
    let key = ClientKey::ed25519("k1");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyed.jwks.json");
    std::fs::write(&path, jwks(&[&key]).to_string()).unwrap();
    let client = ClientDef::new("keyed")
        .grants(&["client_credentials"])
        .scopes(&["orders:read"])
        .audiences(&[ORDERS_AUD])
        .jwks_file(path.to_str().unwrap())
        .without_secret();
    let s = TestServer::builder()
        .client(client)
        .raw_toml("[tokens]\nclient_assertion_max_lifetime = \"30s\"")
        .start()
        .await;
    // One minute to live is over the 30 s configured.
    token_with(&s, &key.assertion("keyed"))
        .await
        .assert_error(401, "invalid_client");
    let mut c = key.assertion_claims("keyed");
    c["exp"] = json!(c["iat"].as_u64().unwrap() + 30);
    c["jti"] = json!(unique("ca"));
    let r = token_with(&s, &key.sign_assertion(&c)).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn metadata_advertises_private_key_jwt() {
    let s = TestServer::builder().start().await;
    let m = s
        .get("/.well-known/oauth-authorization-server", None)
        .await
        .json();
    assert_eq!(m["token_endpoint"], token_endpoint());
    for endpoint in ["token", "introspection", "revocation"] {
        let methods = &m[format!("{endpoint}_endpoint_auth_methods_supported")];
        assert!(
            methods
                .as_array()
                .unwrap()
                .contains(&json!("private_key_jwt")),
            "{endpoint}: {methods}"
        );
        let algs = &m[format!("{endpoint}_endpoint_auth_signing_alg_values_supported")];
        assert_eq!(algs, &json!(["EdDSA", "ES256", "RS256"]), "{endpoint}");
    }
}

#[tokio::test]
async fn check_refuses_a_client_without_secret_or_keys_and_a_bad_jwks() {
    let dir = tempfile::tempdir().unwrap();
    let base = || {
        ClientDef::new("keyed")
            .grants(&["client_credentials"])
            .audiences(&[ORDERS_AUD])
            .without_secret()
    };
    for (client, needle) in [
        (base(), "clients[0].secret_sha256"),
        (base().jwks(json!({"keys": []})), "clients[0].jwks"),
        (
            base().jwks_file("/nonexistent/jwks.json"),
            "clients[0].jwks_file",
        ),
    ] {
        let path = TestServer::builder()
            .clients([client])
            .write_config(dir.path());
        let mut cmd = latch_cmd_async();
        cmd.arg("check").arg("--config").arg(&path);
        let (status, out, err) = run_cli(cmd).await;
        assert!(!status.success(), "{needle}: {out}");
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

// === DPoP ===

/// A client_credentials request of `client` with these `DPoP` header values.
async fn token_dpop(s: &TestServer, client: &ClientDef, proofs: &[&str]) -> Resp {
    s.token_with_dpop(client, &[("grant_type", "client_credentials")], proofs)
        .await
}

#[tokio::test]
async fn dpop_binds_the_token_to_the_proof_key_and_introspection_shows_it() {
    let s = TestServer::builder().start().await;
    let orders = clients::orders();
    for key in [ClientKey::ed25519("p"), ClientKey::es256("p")] {
        let r = token_dpop(&s, &orders, &[&key.dpop_proof(None)]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let body = r.json();
        assert_eq!(body["token_type"], "DPoP", "{body}");
        let token = body["access_token"].as_str().unwrap();
        let (_, claims, _) = decode_jwt(token);
        assert_eq!(claims["cnf"], json!({"jkt": key.thumbprint()}), "{claims}");
        let i = s.introspect(token).await;
        assert_eq!(i["active"], true, "{i}");
        assert_eq!(i["cnf"]["jkt"], key.thumbprint(), "{i}");
        assert_eq!(i["token_type"], "DPoP", "{i}");
    }
    // Without a proof: a Bearer token, no cnf.
    let r = s.token_resp(&orders, &[]).await;
    assert_eq!(r.json()["token_type"], "Bearer");
    let token = r.json()["access_token"].as_str().unwrap().to_string();
    let i = s.introspect(&token).await;
    assert!(i.get("cnf").is_none(), "{i}");
    // Metadata.
    let m = s
        .get("/.well-known/oauth-authorization-server", None)
        .await
        .json();
    assert_eq!(
        m["dpop_signing_alg_values_supported"],
        json!(["EdDSA", "ES256", "RS256"])
    );
}

#[tokio::test]
async fn hostile_dpop_proofs_are_refused() {
    let s = TestServer::builder().start().await;
    let orders = clients::orders();
    let key = ClientKey::ed25519("p");
    let other = ClientKey::ed25519("p");
    let now = now_secs();
    let endpoint = token_endpoint();
    let claims = || json!({"jti": unique("dpop"), "htm": "POST", "htu": endpoint, "iat": now});
    let header = |alg: &str, jwk: Value| json!({"typ": "dpop+jwt", "alg": alg, "jwk": jwk});
    let mut private = key.public_jwk();
    private["d"] = json!("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let replayed = key.dpop_proof(None);
    assert_eq!(token_dpop(&s, &orders, &[&replayed]).await.status, 200);
    let cases: Vec<(&str, String)> = vec![
        ("replayed", replayed.clone()),
        ("wrong htm", key.dpop_proof_at("GET", &endpoint, now, None)),
        (
            "wrong htu",
            key.dpop_proof_at("POST", "http://latch.test/introspect", now, None),
        ),
        (
            "another host",
            key.dpop_proof_at("POST", "https://evil.example/token", now, None),
        ),
        (
            "too old",
            key.dpop_proof_at("POST", &endpoint, now - 600, None),
        ),
        (
            "in the future",
            key.dpop_proof_at("POST", &endpoint, now + 600, None),
        ),
        (
            "signed by another key",
            other.sign(&header("EdDSA", key.public_jwk()), &claims()),
        ),
        (
            "typ JWT",
            key.sign(
                &json!({"typ": "JWT", "alg": "EdDSA", "jwk": key.public_jwk()}),
                &claims(),
            ),
        ),
        (
            "no jwk",
            key.sign(&json!({"typ": "dpop+jwt", "alg": "EdDSA"}), &claims()),
        ),
        (
            "private key in the header",
            key.sign(&header("EdDSA", private), &claims()),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                encode_part(&header("none", key.public_jwk())),
                encode_part(&claims())
            ),
        ),
        (
            "HS256 keyed with the public key",
            sign_hs256(
                &key.public_key(),
                &header("HS256", key.public_jwk()),
                &claims(),
            ),
        ),
        ("garbage", "not-a-proof".into()),
    ];
    for (what, proof) in &cases {
        let r = token_dpop(&s, &orders, &[proof]).await;
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        assert_eq!(
            r.json()["error"],
            "invalid_dpop_proof",
            "{what}: {}",
            r.text()
        );
    }
    // Two DPoP headers.
    let r = token_dpop(&s, &orders, &[&key.dpop_proof(None), &key.dpop_proof(None)]).await;
    r.assert_error(400, "invalid_dpop_proof");
}

#[tokio::test]
async fn dpop_nonces_are_required_when_configured_and_any_node_accepts_them() {
    let redis = RedisProcess::start().await;
    let nodes = TestServer::builder()
        .redis(&redis)
        .raw_toml("[dpop]\nrequire_nonce = true")
        .start_nodes(2)
        .await;
    let orders = clients::orders();
    let key = ClientKey::es256("p");
    // No nonce: use_dpop_nonce, with the nonce to use.
    let r = token_dpop(&nodes[0], &orders, &[&key.dpop_proof(None)]).await;
    r.assert_error(400, "use_dpop_nonce");
    let nonce = r.header("dpop-nonce").expect("a DPoP-Nonce header");
    // A made-up nonce: the same.
    let r = token_dpop(&nodes[0], &orders, &[&key.dpop_proof(Some("1.AAAA"))]).await;
    r.assert_error(400, "use_dpop_nonce");
    // The nonce works on the other node; the answer carries the next nonce.
    let proof = key.dpop_proof(Some(&nonce));
    let r = token_dpop(&nodes[1], &orders, &[&proof]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["token_type"], "DPoP");
    assert!(r.header("dpop-nonce").is_some());
    // The same proof on the first node: a replay across nodes.
    let r = token_dpop(&nodes[0], &orders, &[&proof]).await;
    r.assert_error(400, "invalid_dpop_proof");
}

#[tokio::test]
async fn a_session_opened_with_dpop_refreshes_only_with_a_proof_by_its_key() {
    let idp = Idp::new("https://idp.dpop.test");
    let hook = ClientDef::new("idp-hook")
        .grants(&[
            "urn:ietf:params:oauth:grant-type:token-exchange",
            "refresh_token",
        ])
        .scopes(&["profile"])
        .audiences(&[ORDERS_AUD])
        .roles(&["session_issuer"]);
    let s = TestServer::builder()
        .trusted_issuer(idp.trusted())
        .client(hook.clone())
        .start()
        .await;
    let key = ClientKey::ed25519("p");
    let other = ClientKey::ed25519("p");
    let assertion = idp.assertion("alice");
    let open = [
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("subject_token", assertion.as_str()),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
    ];
    let r = s
        .token_with_dpop(&hook, &open, &[&key.dpop_proof(None)])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["token_type"], "DPoP");
    let refresh = r.json()["refresh_token"].as_str().unwrap().to_string();
    let params = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh.as_str()),
    ];
    // Another key, or no proof: refused, and the refresh token is not spent.
    let r = s
        .token_with_dpop(&hook, &params, &[&other.dpop_proof(None)])
        .await;
    r.assert_error(400, "invalid_grant");
    let r = s.token_with_dpop(&hook, &params, &[]).await;
    r.assert_error(400, "invalid_grant");
    // The session's key: a new access token bound to it.
    let r = s
        .token_with_dpop(&hook, &params, &[&key.dpop_proof(None)])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["access_token"].as_str().unwrap().to_string();
    assert_eq!(decode_jwt(&token).1["cnf"]["jkt"], key.thumbprint());
}

/// Amends `client`'s contract to accept only `methods`, effective now.
async fn accept_only(s: &TestServer, client: &str, methods: &[&str]) {
    let admin = clients::admin();
    let path = format!("/admin/contracts/{client}");
    let h = s.get(&path, admin.auth()).await;
    assert_eq!(h.status, 200, "{}", h.text());
    let history = h.json()["history"].as_array().unwrap().clone();
    let last = history.last().unwrap();
    let mut contract = last["body"]["content"].clone();
    contract["auth_methods"] = json!(methods);
    let body = json!({
        "base_version": last["version"],
        "contract": contract,
        "changelog": "client authentication methods",
        "reason": "TEST-pkjwt",
    });
    let r = s.post_json(&path, &body, admin.auth()).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn the_contract_narrows_the_methods_a_client_with_both_may_use() {
    let key = ClientKey::ed25519("k1");
    let both = ClientDef::new("both")
        .grants(&["client_credentials"])
        .scopes(&["orders:read"])
        .audiences(&[ORDERS_AUD])
        .jwks(jwks(&[&key]));
    let s = TestServer::builder().client(both.clone()).start().await;
    accept_only(&s, "both", &["client_secret_basic"]).await;
    token_with(&s, &key.assertion("both"))
        .await
        .assert_error(401, "invalid_client");
    assert_eq!(s.token_resp(&both, &[]).await.status, 200);
    accept_only(&s, "both", &["private_key_jwt"]).await;
    s.token_resp(&both, &[])
        .await
        .assert_error(401, "invalid_client");
    assert_eq!(token_with(&s, &key.assertion("both")).await.status, 200);
}
