//! Token exchange and subjects under attack (issue 9): a token leaked from one resource
//! server exchanged by another, a service taking on another service's identity, endless
//! `act` nesting, revocation that must follow delegation, user subjects named like
//! clients or like another IdP's users, and assertions not yet valid.

use serde_json::{json, Value};
use testkit::clients::{self, ORDERS_AUD};
use testkit::prelude::*;

const TE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const AT_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const IDP1: &str = "https://idp1.test";
const IDP2: &str = "https://idp2.test";
const REPORTS_AUD: &str = "https://reports.example";
const AUD_B: &str = "https://b.example";
const AUD_C: &str = "https://c.example";
const AUD_D: &str = "https://d.example";

// === clients ===

fn hook() -> ClientDef {
    ClientDef::new("idp-hook")
        .grants(&[TE])
        .scopes(&["orders:read"])
        .audiences(&[ORDERS_AUD])
        .roles(&["session_issuer"])
}

/// The issue's attacker: its only audience is the reports API.
fn reports() -> ClientDef {
    ClientDef::new("reports-service")
        .grants(&[TE])
        .scopes(&["orders:read"])
        .audiences(&[REPORTS_AUD])
}

/// Serves the orders API (so orders tokens are meant for it), calls B.
fn svc_a() -> ClientDef {
    ClientDef::new("svc-a")
        .grants(&[TE])
        .scopes(&["orders:read"])
        .audiences(&[ORDERS_AUD, AUD_B])
}

fn svc_b() -> ClientDef {
    ClientDef::new("svc-b")
        .grants(&[TE])
        .scopes(&["orders:read"])
        .audiences(&[AUD_B, AUD_C])
}

fn svc_c() -> ClientDef {
    ClientDef::new("svc-c")
        .grants(&[TE])
        .scopes(&["orders:read"])
        .audiences(&[AUD_C, AUD_D])
}

/// Like svc-a, but trusted to act as other services (`delegate_service_tokens`).
fn impersonator() -> ClientDef {
    ClientDef::new("orders-gateway")
        .grants(&[TE])
        .scopes(&["orders:read"])
        .audiences(&[ORDERS_AUD, AUD_B])
}

fn all_clients() -> Vec<ClientDef> {
    let mut v = clients::standard();
    v.extend([hook(), reports(), svc_a(), svc_b(), svc_c(), impersonator()]);
    v
}

// === the identity providers ===

struct Env {
    s: TestServer,
    idp1: Idp,
    idp2: Idp,
}

/// The config: one IdP without a prefix, or two with `idp1|` and `idp2|`.
fn config(idp1: &Idp, idp2: &Idp, two_idps: bool) -> ServerBuilder {
    let b = TestServer::builder().clients(all_clients());
    if two_idps {
        b.trusted_issuer(idp1.trusted().subject_prefix("idp1|"))
            .trusted_issuer(idp2.trusted().subject_prefix("idp2|"))
    } else {
        b.trusted_issuer(idp1.trusted())
    }
}

async fn start_with(two_idps: bool, tweak: impl FnOnce(&mut Config)) -> Env {
    let (idp1, idp2) = (Idp::new(IDP1), Idp::new(IDP2));
    Env {
        s: config(&idp1, &idp2, two_idps).config(tweak).start().await,
        idp1,
        idp2,
    }
}

async fn start(two_idps: bool) -> Env {
    start_with(two_idps, |_| {}).await
}

async fn open_session(s: &TestServer, assertion: &str) -> Resp {
    s.post_form(
        "/token",
        &[
            ("grant_type", TE),
            ("subject_token", assertion),
            ("subject_token_type", JWT_TYPE),
        ],
        hook().auth(),
    )
    .await
}

/// A user's access token (aud = ORDERS_AUD) from `idp`.
async fn user_token(s: &TestServer, idp: &Idp, sub: &str) -> String {
    let r = open_session(s, &idp.sign(&idp.claims(sub))).await;
    assert_eq!(r.status, 200, "session for {sub}: {}", r.text());
    r.json()["access_token"].as_str().unwrap().to_string()
}

async fn exchange(s: &TestServer, who: &ClientDef, token: &str, extra: &[(&str, &str)]) -> Resp {
    let mut params = vec![
        ("grant_type", TE),
        ("subject_token", token),
        ("subject_token_type", AT_TYPE),
    ];
    params.extend_from_slice(extra);
    s.post_form("/token", &params, who.auth()).await
}

#[track_caller]
fn token_of(r: &Resp, what: &str) -> String {
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    r.json()["access_token"].as_str().unwrap().to_string()
}

// === tests ===

#[tokio::test]
async fn a_token_meant_for_another_audience_cannot_be_exchanged() {
    let env = start(false).await;
    let s = &env.s;
    // The issue's reproduction: an orders-service token for the orders API, exchanged
    // by a client whose only audience is the reports API.
    let leaked = s.issue(&clients::orders(), &[]).await;
    exchange(s, &reports(), &leaked, &[])
        .await
        .assert_error(400, "invalid_grant");
    // A user's token for the orders API is not the reports service's to exchange either.
    let user = user_token(s, &env.idp1, "alice").await;
    let r = exchange(s, &reports(), &user, &[]).await;
    r.assert_error(400, "invalid_grant");
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("not issued for this client"));
    // The orders API's own service may.
    token_of(
        &exchange(s, &svc_a(), &user, &[("resource", AUD_B)]).await,
        "svc-a",
    );
}

#[tokio::test]
async fn a_service_cannot_take_on_another_services_identity_unless_allowed() {
    let env = start_with(false, |c| {
        c.client_mut("orders-gateway").delegate_service_tokens = true;
    })
    .await;
    let s = &env.s;
    // A client-credentials token (no sid) meant for svc-a's audience.
    let service = s.issue(&clients::orders(), &[]).await;
    let r = exchange(s, &svc_a(), &service, &[]).await;
    r.assert_error(400, "unauthorized_client");
    // The configured gateway may, and the result says who acts.
    let t = token_of(
        &exchange(s, &impersonator(), &service, &[("resource", AUD_B)]).await,
        "gateway",
    );
    let c = decode_jwt(&t).1;
    assert_eq!(c["sub"], "orders-service", "{c}");
    assert_eq!(c["act"]["sub"], "orders-gateway", "{c}");
    assert_eq!(c["dcl"], json!(["orders-service"]), "{c}");
}

#[tokio::test]
async fn audience_resource_and_requested_token_type_are_honoured() {
    let env = start(false).await;
    let s = &env.s;
    let user = user_token(s, &env.idp1, "alice").await;
    let a = svc_a();
    for (extra, status, code) in [
        (vec![("audience", REPORTS_AUD)], 400, "invalid_target"),
        (vec![("resource", REPORTS_AUD)], 400, "invalid_target"),
        (
            vec![("audience", AUD_B), ("resource", ORDERS_AUD)],
            400,
            "invalid_target",
        ),
        (
            vec![(
                "requested_token_type",
                "urn:ietf:params:oauth:token-type:refresh_token",
            )],
            400,
            "invalid_request",
        ),
        (
            vec![("requested_token_type", "urn:x:made-up")],
            400,
            "invalid_request",
        ),
    ] {
        exchange(s, &a, &user, &extra)
            .await
            .assert_error(status, code);
    }
    for (extra, aud) in [
        (vec![("audience", AUD_B)], AUD_B),
        (vec![("resource", AUD_B)], AUD_B),
        (vec![("audience", AUD_B), ("resource", AUD_B)], AUD_B),
        (vec![("requested_token_type", AT_TYPE)], ORDERS_AUD),
        (
            vec![("requested_token_type", JWT_TYPE), ("audience", AUD_B)],
            AUD_B,
        ),
    ] {
        let t = token_of(&exchange(s, &a, &user, &extra).await, &format!("{extra:?}"));
        assert_eq!(decode_jwt(&t).1["aud"], aud, "{extra:?}");
    }
}

#[tokio::test]
async fn delegation_depth_is_bounded_and_revocation_follows_the_chain() {
    let env = start_with(false, |c| c.tokens.max_delegation_depth = Some(2)).await;
    let s = &env.s;
    let user = user_token(s, &env.idp1, "alice").await;
    let hop1 = token_of(
        &exchange(s, &svc_a(), &user, &[("audience", AUD_B)]).await,
        "hop 1",
    );
    let hop2 = token_of(
        &exchange(s, &svc_b(), &hop1, &[("audience", AUD_C)]).await,
        "hop 2",
    );
    let c = decode_jwt(&hop2).1;
    assert_eq!(
        c["act"],
        json!({"sub": "svc-b", "act": {"sub": "svc-a"}}),
        "{c}"
    );
    assert_eq!(c["dcl"], json!(["idp-hook", "svc-a"]), "{c}");
    assert_eq!(c["djt"].as_array().map(Vec::len), Some(2), "{c}");
    // A third hop would nest deeper than allowed.
    exchange(s, &svc_c(), &hop2, &[("audience", AUD_D)])
        .await
        .assert_error(400, "invalid_grant");

    // RFC 7009 revocation of a parent token by its holder kills what was derived from it.
    let user2 = user_token(s, &env.idp1, "bob").await;
    let p1 = token_of(
        &exchange(s, &svc_a(), &user2, &[("audience", AUD_B)]).await,
        "p1",
    );
    let p2 = token_of(
        &exchange(s, &svc_b(), &p1, &[("audience", AUD_C)]).await,
        "p2",
    );
    let r = s
        .post_form("/revoke", &[("token", &p1)], svc_a().auth())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!s.is_active(&p2).await, "child of a revoked token");
    assert!(
        s.is_active(&user2).await,
        "the parent's own parent is untouched"
    );

    // Revoking the origin client kills every token derived from its tokens.
    assert!(s.is_active(&hop2).await);
    s.admin_revoke("client", Some("idp-hook"), "hook compromised")
        .await;
    for (t, what) in [(&user, "origin"), (&hop1, "hop 1"), (&hop2, "hop 2")] {
        assert!(
            !s.is_active(t).await,
            "{what} after its origin client's revocation"
        );
    }
    // A middle client's revocation reaches its descendants only.
    let user3 = user_token(s, &env.idp1, "carol").await;
    let q1 = token_of(
        &exchange(s, &svc_a(), &user3, &[("audience", AUD_B)]).await,
        "q1",
    );
    let q2 = token_of(
        &exchange(s, &svc_b(), &q1, &[("audience", AUD_C)]).await,
        "q2",
    );
    s.admin_revoke("client", Some("svc-a"), "svc-a compromised")
        .await;
    assert!(!s.is_active(&q1).await && !s.is_active(&q2).await);
    assert!(
        s.is_active(&user3).await,
        "the user's own token is not svc-a's"
    );
}

#[tokio::test]
async fn an_assertion_naming_a_client_is_refused() {
    let env = start(false).await;
    let s = &env.s;
    for sub in ["orders-service", "security-admin", "idp-hook"] {
        let r = open_session(s, &env.idp1.sign(&env.idp1.claims(sub))).await;
        r.assert_error(400, "invalid_grant");
    }
    assert!(
        s.logs()
            .contains("assertion names a client id as its subject"),
        "the refusal is logged with the issuer"
    );
    let refused: Vec<Value> = s
        .audit(0)
        .await
        .into_iter()
        .filter(|r| r["action"] == "assertion_refused")
        .collect();
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert_eq!(refused[0]["target"], "subject:orders-service");
    assert!(refused[0]["reason"].as_str().unwrap().contains(IDP1));
    // The service itself is untouched, and a real user works.
    let service = s.issue(&clients::orders(), &[]).await;
    assert!(s.is_active(&service).await);
    user_token(s, &env.idp1, "alice").await;
}

#[tokio::test]
async fn subjects_of_two_idps_never_collide_and_revocation_hits_the_right_one() {
    let env = start(true).await;
    let s = &env.s;
    let a1 = user_token(s, &env.idp1, "alice").await;
    let a2 = user_token(s, &env.idp2, "alice").await;
    assert_eq!(decode_jwt(&a1).1["sub"], "idp1|alice");
    assert_eq!(decode_jwt(&a2).1["sub"], "idp2|alice");
    // An IdP sub shaped like a client id is namespaced away from it.
    let shaped = user_token(s, &env.idp1, "orders-service").await;
    assert_eq!(decode_jwt(&shaped).1["sub"], "idp1|orders-service");

    // The IdP hook's form (the IdP's own sub) without an issuer: refused, naming both.
    let admin = clients::admin();
    let r = s
        .post_json(
            "/admin/revoke",
            &json!({"kind": "subject", "value": "alice", "reason": "x"}),
            admin.auth(),
        )
        .await;
    r.assert_error(400, "invalid_request");
    let d = r.json()["error_description"].as_str().unwrap().to_string();
    assert!(d.contains("issuer") && d.contains("subject_prefix"), "{d}");
    // An unknown issuer is refused, and issuer is only for subjects.
    for body in [
        json!({"kind": "subject", "value": "alice", "issuer": "https://evil.test"}),
        json!({"kind": "client", "value": "svc-a", "issuer": IDP1}),
    ] {
        s.post_json("/admin/revoke", &body, admin.auth())
            .await
            .assert_error(400, "invalid_request");
    }
    assert!(
        s.is_active(&a1).await && s.is_active(&a2).await,
        "nothing revoked yet"
    );
    // With the issuer: that IdP's alice, and only her.
    let r = s
        .post_json(
            "/admin/revoke",
            &json!({"kind": "subject", "value": "alice", "issuer": IDP1, "reason": "x"}),
            admin.auth(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["value"], "idp1|alice");
    assert!(!s.is_active(&a1).await);
    assert!(
        s.is_active(&a2).await,
        "the other IdP's alice is another person"
    );
    // The namespaced form works without an issuer; so does a client id.
    s.admin_revoke("subject", Some("idp2|alice"), "x").await;
    assert!(!s.is_active(&a2).await);
    s.admin_revoke("subject", Some("billing-service"), "x")
        .await;
}

#[tokio::test]
async fn assertions_not_yet_valid_are_refused() {
    let env = start(false).await;
    let s = &env.s;
    let idp = &env.idp1;
    let mut early = idp.claims("alice");
    early["nbf"] = json!(now_secs() + 600);
    open_session(s, &idp.sign(&early))
        .await
        .assert_error(400, "invalid_grant");
    // Within the leeway (30 s) of clock skew: accepted.
    let mut skewed = idp.claims("alice");
    skewed["nbf"] = json!(now_secs() + 5);
    assert_eq!(open_session(s, &idp.sign(&skewed)).await.status, 200);
}

#[tokio::test]
async fn cli_revokes_a_subject_by_issuer() {
    let env = start(true).await;
    let s = &env.s;
    let a1 = user_token(s, &env.idp1, "dave").await;
    let admin = clients::admin();
    let run = |args: Vec<String>| {
        let mut cmd = latch_cmd_async();
        cmd.args(args)
            .env("LATCH_ADMIN_CLIENT_ID", &admin.id)
            .env("LATCH_ADMIN_CLIENT_SECRET", &admin.secret);
        run_cli(cmd)
    };
    let server = s.base_url();
    let base = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["revoke", "--server", &server, "--reason", "cli"]
            .iter()
            .map(|x| x.to_string())
            .collect();
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let (status, _, err) = run(base(&["--subject", "dave"])).await;
    assert!(!status.success(), "a bare IdP sub is ambiguous");
    assert!(err.contains("issuer"), "{err}");
    assert!(s.is_active(&a1).await);
    let (status, out, err) = run(base(&["--subject", "dave", "--issuer", IDP1])).await;
    assert!(status.success(), "{out}{err}");
    assert!(out.contains("idp1|dave"), "{out}");
    assert!(!s.is_active(&a1).await);
}

#[tokio::test]
async fn revocation_follows_delegation_on_every_node() {
    let redis = RedisProcess::start().await;
    let (idp1, idp2) = (Idp::new(IDP1), Idp::new(IDP2));
    let cfg = config(&idp1, &idp2, false);
    let nodes = cfg.redis(&redis).start_nodes(2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let user = user_token(a, &idp1, "erin").await;
    let hop1 = token_of(
        &exchange(a, &svc_a(), &user, &[("audience", AUD_B)]).await,
        "hop 1",
    );
    let hop2 = token_of(
        &exchange(b, &svc_b(), &hop1, &[("audience", AUD_C)]).await,
        "hop 2",
    );
    for n in [a, b] {
        assert!(n.is_active(&hop2).await, "hop 2 before any revocation");
    }
    // RFC 7009 revocation of the parent on node B reaches its child on node A.
    let r = b
        .post_form("/revoke", &[("token", &hop1)], svc_a().auth())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    for (n, name) in [(a, "a"), (b, "b")] {
        eventually(
            DEADLINE,
            &format!("hop 2 inactive on node {name}"),
            || async {
                match n.is_active(&hop2).await {
                    false => Ok(()),
                    true => Err("still active".to_string()),
                }
            },
        )
        .await;
    }
    // Revoking the origin client on node A reaches a fresh chain on node B.
    let user2 = user_token(b, &idp1, "frank").await;
    let c1 = token_of(
        &exchange(b, &svc_a(), &user2, &[("audience", AUD_B)]).await,
        "c1",
    );
    a.admin_revoke("client", Some("idp-hook"), "hook compromised")
        .await;
    for (n, name) in [(a, "a"), (b, "b")] {
        eventually(DEADLINE, &format!("c1 inactive on node {name}"), || async {
            match n.is_active(&c1).await {
                false => Ok(()),
                true => Err("still active".to_string()),
            }
        })
        .await;
    }
    let _ = idp2;
}
