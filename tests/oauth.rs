//! OAuth surface: metadata, JWKS, client_credentials, introspection, client
//! authentication and roles.

use hyper::Method;
use serde_json::Value;
use testkit::clients::{self, BILLING_AUD, ORDERS_AUD, ORDERS_AUD2};
use testkit::prelude::*;

async fn server() -> TestServer {
    TestServer::builder().start().await
}

fn str_array(v: &Value, field: &str) -> Vec<String> {
    v[field]
        .as_array()
        .unwrap_or_else(|| panic!("{field} must be an array: {v}"))
        .iter()
        .map(|x| x.as_str().expect("string").to_string())
        .collect()
}

#[tokio::test]
async fn metadata_has_rfc8414_fields() {
    let s = server().await;
    let r = s.get("/.well-known/oauth-authorization-server", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .unwrap_or_default()
            .starts_with("application/json"),
        "content-type {:?}",
        r.header("content-type")
    );
    let m = r.json();
    assert_eq!(m["issuer"], "http://latch.test");
    for (field, suffix) in [
        ("token_endpoint", "/token"),
        ("jwks_uri", "/.well-known/jwks.json"),
        ("introspection_endpoint", "/introspect"),
        ("revocation_endpoint", "/revoke"),
    ] {
        let url = m[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} missing: {m}"));
        assert!(
            url.starts_with("http://") || url.starts_with("https://"),
            "{field} must be an absolute URL: {url}"
        );
        assert!(url.ends_with(suffix), "{field} = {url}, want *{suffix}");
    }
    // Lists only grants the server implements: client_credentials always,
    // never anything outside SPEC §2.
    let grants = str_array(&m, "grant_types_supported");
    assert!(
        grants.contains(&"client_credentials".to_string()),
        "{grants:?}"
    );
    for g in &grants {
        assert!(
            [
                "client_credentials",
                "refresh_token",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ]
            .contains(&g.as_str()),
            "unexpected grant {g}"
        );
    }
    for field in [
        "token_endpoint_auth_methods_supported",
        "introspection_endpoint_auth_methods_supported",
        "revocation_endpoint_auth_methods_supported",
    ] {
        let methods = str_array(&m, field);
        for meth in ["client_secret_basic", "client_secret_post"] {
            assert!(
                methods.contains(&meth.to_string()),
                "{meth} not in {field}: {methods:?}"
            );
        }
    }
    assert!(
        m["response_types_supported"].is_array(),
        "response_types_supported: {m}"
    );
    let scopes = str_array(&m, "scopes_supported");
    for sc in ["orders:read", "orders:write", "billing:read"] {
        assert!(
            scopes.contains(&sc.to_string()),
            "{sc} not in scopes_supported {scopes:?}"
        );
    }
}

#[tokio::test]
async fn jwks_lists_public_signing_keys_with_short_max_age() {
    let s = server().await;
    let r = s.get("/.well-known/jwks.json", None).await;
    assert_eq!(r.status, 200);
    let cc = r
        .header("cache-control")
        .expect("JWKS must carry Cache-Control");
    let max_age: u64 = cc
        .split(',')
        .map(str::trim)
        .find_map(|d| d.strip_prefix("max-age="))
        .unwrap_or_else(|| panic!("no max-age in {cc:?}"))
        .parse()
        .expect("numeric max-age");
    assert!(
        max_age < 3600,
        "max-age {max_age} must be shorter than publish_ahead (1h)"
    );
    let jwks = r.json();
    let keys = jwks["keys"].as_array().expect("keys array");
    assert!(!keys.is_empty(), "JWKS has no keys");
    for k in keys {
        assert!(k["kid"].is_string(), "kid: {k}");
        assert_eq!(k["kty"], "OKP", "{k}");
        assert_eq!(k["crv"], "Ed25519", "{k}");
        assert_eq!(k["alg"], "EdDSA", "{k}");
        assert_eq!(k["use"], "sig", "{k}");
        assert!(k["x"].is_string(), "{k}");
        for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
            assert!(k.get(private).is_none(), "private member {private} in {k}");
        }
    }
    // The kid that signs tokens is published, and its key verifies them.
    let token = s.issue(&clients::orders(), &[]).await;
    let (h, _, _) = decode_jwt(&token);
    let jwk = keys
        .iter()
        .find(|k| k["kid"] == h["kid"])
        .unwrap_or_else(|| panic!("signing kid {} not in JWKS", h["kid"]));
    assert!(
        verify_with_jwk(&token, jwk),
        "token does not verify with the JWKS key"
    );
}

#[tokio::test]
async fn client_credentials_happy_path() {
    let s = server().await;
    let orders = clients::orders();
    let r = s.token_resp(&orders, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.assert_no_store();
    assert!(r
        .header("content-type")
        .unwrap_or_default()
        .starts_with("application/json"));
    let body = r.json();
    assert_eq!(body["token_type"], "Bearer");
    let expires_in = body["expires_in"].as_u64().expect("expires_in integer");
    assert!(
        expires_in > 0 && expires_in <= 300,
        "expires_in {expires_in}"
    );
    assert_eq!(
        scope_set(&body["scope"]),
        ["orders:read", "orders:write"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        "default scopes are all allowed scopes"
    );
    assert!(
        body.get("refresh_token").is_none(),
        "client_credentials must not return a refresh token: {body}"
    );
    let token = body["access_token"].as_str().unwrap();
    let (h, c, _) = decode_jwt(token);
    assert_eq!(h["typ"], "at+jwt");
    assert_eq!(h["alg"], "EdDSA");
    assert!(h["kid"].as_str().is_some_and(|k| !k.is_empty()), "{h}");
    assert_eq!(c["iss"], "http://latch.test");
    assert_eq!(c["sub"], "orders-service");
    assert_eq!(c["client_id"], "orders-service");
    assert_eq!(
        aud_list(&c["aud"]),
        vec![ORDERS_AUD.to_string()],
        "default audience is the first one"
    );
    assert_eq!(scope_set(&c["scope"]), scope_set(&body["scope"]));
    let exp = c["exp"].as_u64().expect("exp");
    let iat = c["iat"].as_u64().expect("iat");
    let nbf = c["nbf"].as_u64().expect("nbf");
    assert_eq!(exp - iat, 300, "access_ttl 5m");
    assert!(nbf <= iat + 1 && nbf + 300 >= iat, "nbf {nbf} iat {iat}");
    assert!(c["jti"].as_str().is_some_and(|j| !j.is_empty()), "{c}");
    assert!(c["rsq"].is_u64(), "rsq must be an integer: {c}");
    assert!(
        c["rse"]
            .as_str()
            .is_some_and(|e| e.len() == 16 && e.bytes().all(|b| b.is_ascii_hexdigit())),
        "rse must be the store epoch, 16 hex digits: {c}"
    );
    assert!(c.get("sid").is_none() && c.get("act").is_none(), "{c}");

    // Every token gets its own jti.
    let t2 = s.issue(&orders, &[]).await;
    let (_, c2, _) = decode_jwt(&t2);
    assert_ne!(c["jti"], c2["jti"]);
}

#[tokio::test]
async fn client_credentials_scope_and_resource() {
    let s = server().await;
    let orders = clients::orders();

    let r = s.token_resp(&orders, &[("scope", "orders:read")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["scope"], "orders:read");
    let (_, c, _) = decode_jwt(r.json()["access_token"].as_str().unwrap());
    assert_eq!(c["scope"], "orders:read");

    let r = s.token_resp(&orders, &[("resource", ORDERS_AUD2)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (_, c, _) = decode_jwt(r.json()["access_token"].as_str().unwrap());
    assert_eq!(aud_list(&c["aud"]), vec![ORDERS_AUD2.to_string()]);

    let r = s
        .token_resp(
            &orders,
            &[("scope", "orders:write"), ("resource", ORDERS_AUD)],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (_, c, _) = decode_jwt(r.json()["access_token"].as_str().unwrap());
    assert_eq!(c["scope"], "orders:write");
    assert_eq!(aud_list(&c["aud"]), vec![ORDERS_AUD.to_string()]);
}

#[tokio::test]
async fn client_credentials_errors() {
    let s = server().await;
    let orders = clients::orders();

    let r = s.token_resp(&orders, &[("scope", "billing:read")]).await;
    r.assert_error(400, "invalid_scope");
    r.assert_no_store();

    let r = s
        .token_resp(&orders, &[("scope", "orders:read orders:admin")])
        .await;
    r.assert_error(400, "invalid_scope");

    let r = s.token_resp(&orders, &[("resource", BILLING_AUD)]).await;
    r.assert_error(400, "invalid_target");

    // A client without the client_credentials grant.
    let r = s.token_resp(&clients::rs_all(), &[]).await;
    r.assert_error(400, "unauthorized_client");

    let r = s
        .post_form("/token", &[("grant_type", "password")], orders.auth())
        .await;
    r.assert_error(400, "unsupported_grant_type");

    let r = s
        .post_form("/token", &[("scope", "orders:read")], orders.auth())
        .await;
    r.assert_error(400, "invalid_request");

    let r = s
        .post_form(
            "/token",
            &[
                ("grant_type", "client_credentials"),
                ("grant_type", "client_credentials"),
            ],
            orders.auth(),
        )
        .await;
    r.assert_error(400, "invalid_request");
}

#[tokio::test]
async fn introspection_of_active_token_has_all_fields() {
    let s = server().await;
    let token = s.issue(&clients::orders(), &[]).await;
    let (_, c, _) = decode_jwt(&token);
    let r = s
        .post_form(
            "/introspect",
            &[("token", &token)],
            clients::rs_all().auth(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.assert_no_store();
    let v = r.json();
    assert_eq!(v["active"], true, "{v}");
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["client_id"], "orders-service");
    assert_eq!(v["sub"], "orders-service");
    assert_eq!(v["iss"], "http://latch.test");
    assert_eq!(aud_list(&v["aud"]), vec![ORDERS_AUD.to_string()]);
    assert_eq!(scope_set(&v["scope"]), scope_set(&c["scope"]));
    for f in ["exp", "iat", "nbf"] {
        assert!(v[f].is_u64(), "{f} must be an integer: {v}");
        assert_eq!(v[f], c[f], "{f}");
    }
    assert_eq!(v["jti"], c["jti"]);

    // token_type_hint is only a hint.
    for hint in ["access_token", "refresh_token", "something_else"] {
        let r = s
            .post_form(
                "/introspect",
                &[("token", &token), ("token_type_hint", hint)],
                clients::rs_all().auth(),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["active"], true, "hint {hint}: {}", r.text());
    }
}

#[tokio::test]
async fn audience_restricted_resource_server() {
    let s = server().await;
    let orders_tok = s.issue(&clients::orders(), &[]).await;
    let orders2_tok = s
        .issue(&clients::orders(), &[("resource", ORDERS_AUD2)])
        .await;
    let billing_tok = s.issue(&clients::billing(), &[]).await;
    let rs = clients::rs_orders();

    assert_eq!(s.introspect_as(&rs, &orders_tok).await["active"], true);
    assert_eq!(s.introspect_as(&rs, &orders2_tok).await, inactive());
    assert_eq!(s.introspect_as(&rs, &billing_tok).await, inactive());
    // The unrestricted resource server sees all of them.
    for t in [&orders_tok, &orders2_tok, &billing_tok] {
        assert!(s.is_active(t).await);
    }
}

#[tokio::test]
async fn client_secret_basic_and_post() {
    let s = server().await;
    let orders = clients::orders();
    // client_secret_post at /token
    let r = s
        .post_form(
            "/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", &orders.id),
                ("client_secret", &orders.secret),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["access_token"].as_str().unwrap().to_string();
    // client_secret_post at /introspect
    let rs = clients::rs_all();
    let r = s
        .post_form(
            "/introspect",
            &[
                ("token", &token),
                ("client_id", &rs.id),
                ("client_secret", &rs.secret),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["active"], true);
    // client_secret_basic at /introspect
    assert!(s.is_active(&token).await);
    // client_secret_post at /revoke
    let r = s
        .post_form(
            "/revoke",
            &[
                ("token", &token),
                ("client_id", &orders.id),
                ("client_secret", &orders.secret),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!s.is_active(&token).await);
}

#[tokio::test]
async fn missing_or_bad_client_auth_is_401() {
    let s = server().await;
    let orders = clients::orders();
    let token = s.issue(&orders, &[]).await;

    let check = |r: Resp, what: &str| {
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        assert_eq!(r.json()["error"], "invalid_client", "{what}");
        assert_eq!(
            r.header("www-authenticate").as_deref(),
            Some("Basic realm=\"latch\""),
            "{what}"
        );
        if !what.starts_with("/admin") {
            r.assert_no_store();
        }
    };

    for path in ["/token", "/introspect", "/revoke"] {
        let params: &[(&str, &str)] = match path {
            "/token" => &[("grant_type", "client_credentials")],
            _ => &[("token", token.as_str())],
        };
        check(
            s.post_form(path, params, None).await,
            &format!("{path} no auth"),
        );
        check(
            s.post_form(
                path,
                params,
                Some((&orders.id, "wrong-secret-wrong-secret-wrong-secret")),
            )
            .await,
            &format!("{path} wrong secret"),
        );
        check(
            s.post_form(path, params, Some(("no-such-client", &orders.secret)))
                .await,
            &format!("{path} unknown client"),
        );
    }
    // Wrong secret via client_secret_post.
    let r = s
        .post_form(
            "/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", &orders.id),
                ("client_secret", "nope"),
            ],
            None,
        )
        .await;
    check(r, "post wrong secret");
    // Malformed Authorization header.
    let r = s
        .http
        .request(
            Method::POST,
            "/token",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("authorization", "Basic !!!not-base64!!!"),
            ],
            b"grant_type=client_credentials".to_vec(),
        )
        .await;
    check(r, "malformed basic");
    // Admin endpoints too.
    check(s.get("/admin/keys", None).await, "/admin/keys no auth");
    check(
        s.get("/admin/audit?since=0", Some((&orders.id, "x"))).await,
        "/admin/audit wrong secret",
    );
    // The failed attempts did not harm the token.
    assert!(s.is_active(&token).await);
}

#[tokio::test]
async fn missing_role_is_403() {
    let s = server().await;
    let orders = clients::orders();
    let token = s.issue(&orders, &[]).await;

    let r = s
        .post_form("/introspect", &[("token", &token)], orders.auth())
        .await;
    r.assert_error(403, "unauthorized_client");
    r.assert_no_store();

    let r = s.get("/admin/keys", orders.auth()).await;
    r.assert_error(403, "unauthorized_client");
    let r = s
        .get("/admin/audit?since=0", clients::rs_all().auth())
        .await;
    r.assert_error(403, "unauthorized_client");
    let r = s
        .post_json(
            "/admin/revoke",
            &serde_json::json!({"kind":"all","reason":"x"}),
            clients::rs_all().auth(),
        )
        .await;
    r.assert_error(403, "unauthorized_client");
    let r = s
        .post_json(
            "/admin/keys/rotate",
            &serde_json::json!({"reason":"x"}),
            clients::nobody().auth(),
        )
        .await;
    r.assert_error(403, "unauthorized_client");
    // Nothing was revoked by the refused calls.
    assert!(s.is_active(&token).await);
}

#[tokio::test]
async fn revoke_response_is_200_empty_no_store() {
    let s = server().await;
    let orders = clients::orders();
    let token = s.issue(&orders, &[]).await;
    let r = s
        .post_form("/revoke", &[("token", &token)], orders.auth())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body.is_empty(), "revoke body must be empty: {}", r.text());
    assert!(
        r.headers.get("content-type").is_none(),
        "an empty answer claims no media type: {:?}",
        r.headers.get("content-type")
    );
    r.assert_no_store();
}

#[tokio::test]
async fn unknown_path_is_404_json() {
    let s = server().await;
    let r = s.get("/nope", None).await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].is_string(), "{}", r.text());
    let r = s
        .post_form(
            "/token/extra",
            &[("grant_type", "client_credentials")],
            None,
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
}

#[tokio::test]
async fn form_encoding_is_decoded_properly() {
    // Secrets with characters that change under form-urlencoding, as base64
    // secrets have.
    let odd = ClientDef::new("odd-secret-client")
        .secret("Zm9v+YmFy/YmF6=cXV4+MTIz/NDU2=Nzg5+YWJj/ZGVm==")
        .grants(&["client_credentials"])
        .scopes(&["orders:read", "orders:write"])
        .audiences(&[ORDERS_AUD]);
    let cfg = TestServer::builder().clients(vec![odd.clone(), clients::rs_all()]);
    let s = cfg.start().await;

    // client_secret_post: the form encoding of '+', '/', '=' is undone.
    let r = s
        .post_form(
            "/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", &odd.id),
                ("client_secret", &odd.secret),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "client_secret_post: {}", r.text());

    // client_secret_basic per RFC 6749 §2.3.1: id and secret are
    // form-urlencoded before base64.
    let enc = |v: &str| form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
    let auth = basic(&enc(&odd.id), &enc(&odd.secret));
    let r = s
        .http
        .request(
            Method::POST,
            "/token",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("authorization", &auth),
            ],
            b"grant_type=client_credentials".to_vec(),
        )
        .await;
    assert_eq!(r.status, 200, "encoded client_secret_basic: {}", r.text());

    // Percent-encoded parameter names and '+' for space in values.
    let r = s
        .http
        .request(
            Method::POST,
            "/token",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("authorization", &auth),
            ],
            b"grant%5Ftype=client_credentials&scope=orders%3Aread+orders:write".to_vec(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        scope_set(&r.json()["scope"]),
        ["orders:read", "orders:write"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
}
