//! Integrity of stored key records (issue 8): a record is used only if its MAC (under a
//! key derived from the KEK) verifies, its kid is the thumbprint of its public key, and
//! its state is not behind one the key already reached. Whoever can write to the store
//! cannot plant a key, alter one, or revive a revoked one, in redis or embedded mode.

use serde_json::{json, Value};
use testkit::clients;
use testkit::prelude::*;

const KEYS: &str = "{latch}:keys";
const KEYS_VERSION: &str = "{latch}:keys:version";
const MANIFEST: &str = "~manifest";

fn one(keys: &[Value], state: &str) -> String {
    let v = kids_in_state(keys, state);
    assert_eq!(v.len(), 1, "want exactly one {state} key: {keys:?}");
    v[0].clone()
}

fn rejected(reason: &str) -> String {
    format!("latch_key_records_rejected_total{{reason=\"{reason}\"}}")
}

/// Waits until the node has reported `kid` rejected for `reason` (log, metric, audit).
async fn wait_rejected(s: &TestServer, kid: &str, reason: &str) {
    eventually(
        DEADLINE,
        &format!("{kid} rejected ({reason})"),
        || async move {
            let audit = s.audit(0).await;
            let hit = audit.iter().any(|r| {
                r["action"] == "key_record_rejected" && r["target"] == kid && r["reason"] == reason
            });
            if hit {
                Ok(())
            } else {
                Err(format!("{audit:?}"))
            }
        },
    )
    .await;
    assert!(s.metric(&rejected(reason)).await >= 1.0, "metric {reason}");
}

/// Issues a token, waiting while the node has no signing key yet (it promotes the
/// published next key on its next scheduled tick, within a second).
async fn issue_soon(s: &TestServer) -> String {
    eventually(DEADLINE, "a token is issued", || async move {
        let r = s.token_resp(&clients::orders(), &[]).await;
        match r.status.as_u16() {
            200 => Ok(r.json()["access_token"].as_str().unwrap().to_string()),
            503 => Err(r.text()),
            _ => panic!("token: {} {}", r.status, r.text()),
        }
    })
    .await
}

/// A token signed by a key the attacker holds, with claims a real token would carry, a
/// fresh jti and a revocation stamp far above anything issued.
fn forged_token(s_token: &str, kid: &str, kp: &ring::signature::Ed25519KeyPair) -> String {
    let (mut header, mut claims, _) = decode_jwt(s_token);
    header["kid"] = json!(kid);
    header["alg"] = json!("EdDSA");
    claims["jti"] = json!("forged-jti");
    claims["rsq"] = json!(1u64 << 50);
    claims["exp"] = json!(now_secs() + 3000);
    sign_ed25519(kp, &header, &claims)
}

fn attacker_jwk(kp: &ring::signature::Ed25519KeyPair) -> Value {
    use ring::signature::KeyPair;
    json!({"kty": "OKP", "crv": "Ed25519", "x": b64url(kp.public_key().as_ref())})
}

/// RFC 7638 thumbprint of an Ed25519 JWK (what latch uses as kid).
fn thumbprint(jwk: &Value) -> String {
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        jwk["x"].as_str().unwrap()
    );
    b64url(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()).as_ref())
}

/// A record that looks like latch's, for the attacker's key, in a state that verifies.
fn planted_record(kid: &str, jwk: &Value, mac: &str) -> Value {
    json!({
        "kid": kid, "alg": "EdDSA", "state": "retiring",
        "created_at_ms": 1, "activates_at_ms": 1, "retiring_at_ms": 2,
        "retires_at_ms": (now_secs() + 86_400) * 1000, "revoked_at_ms": null,
        "public_jwk": jwk, "sealed_private": "AAAA", "written_at": 1, "mac": mac,
    })
}

#[tokio::test]
async fn a_fresh_server_publishes_a_next_key() {
    let s = TestServer::builder().start().await;
    let keys = s.admin_keys().await;
    let active = one(&keys, "active");
    let next = one(&keys, "next");
    let jwks = s.jwks_kids().await;
    assert!(jwks.contains(&active) && jwks.contains(&next), "{jwks:?}");
    assert_eq!(kid_of(&s.issue(&clients::orders(), &[]).await), active);
}

#[tokio::test]
async fn planted_keys_are_never_trusted_nor_published() {
    let redis = RedisProcess::start().await;
    let nodes = TestServer::builder().redis(&redis).start_nodes(1).await;
    let s = &nodes[0];
    let real = s.issue(&clients::orders(), &[]).await;
    let active = kid_of(&real);
    let real_record: Value =
        serde_json::from_str(&redis.cmd::<String>(&["HGET", KEYS, &active]).await).unwrap();
    let copied_mac = real_record["mac"].as_str().expect("records carry a MAC");

    // The attacker's own key under its true thumbprint, with a MAC they cannot compute
    // (one copied from a real record); and under a kid that is not its thumbprint.
    let kp = attacker_ed25519();
    let jwk = attacker_jwk(&kp);
    let good_kid = thumbprint(&jwk);
    for kid in [good_kid.as_str(), "evil"] {
        let record = planted_record(kid, &jwk, copied_mac);
        let _: () = redis.cmd(&["HSET", KEYS, kid, &record.to_string()]).await;
    }
    // A record without any MAC, as written before records were authenticated.
    let mut legacy = planted_record("legacy", &jwk, "");
    legacy.as_object_mut().unwrap().remove("mac");
    legacy.as_object_mut().unwrap().remove("written_at");
    let _: () = redis
        .cmd(&["HSET", KEYS, "legacy", &legacy.to_string()])
        .await;
    let _: i64 = redis.cmd(&["INCR", KEYS_VERSION]).await;

    wait_rejected(s, &good_kid, "bad_mac").await;
    wait_rejected(s, "evil", "bad_mac").await;
    wait_rejected(s, "legacy", "unauthenticated").await;
    let jwks = s.jwks_kids().await;
    for kid in [good_kid.as_str(), "evil", "legacy"] {
        assert!(
            !jwks.contains(&kid.to_string()),
            "{kid} published: {jwks:?}"
        );
        let forged = forged_token(&real, kid, &kp);
        assert_eq!(s.introspect(&forged).await, inactive(), "token of {kid}");
        assert!(
            !s.admin_keys().await.iter().any(|k| k["kid"] == kid),
            "{kid} listed"
        );
    }
    // Still inactive after a revocation of everything (its stamp is far above it).
    s.admin_revoke("all", None, "drill").await;
    let forged = forged_token(&real, &good_kid, &kp);
    assert_eq!(s.introspect(&forged).await, inactive());
    // Reported once per record and reason, however often the set is reloaded.
    let _: i64 = redis.cmd(&["INCR", KEYS_VERSION]).await;
    let fresh = s.issue(&clients::orders(), &[]).await;
    assert!(s.is_active(&fresh).await, "the real keys still work");
    let audit = s.audit(0).await;
    let n = audit
        .iter()
        .filter(|r| r["action"] == "key_record_rejected" && r["target"] == "evil")
        .count();
    assert_eq!(n, 1, "{audit:?}");
}

#[tokio::test]
async fn a_tampered_key_record_stops_verifying() {
    let redis = RedisProcess::start().await;
    let nodes = TestServer::builder().redis(&redis).start_nodes(1).await;
    let s = &nodes[0];
    let token = s.issue(&clients::orders(), &[]).await;
    let active = kid_of(&token);
    assert!(s.is_active(&token).await);
    // Push its expiry out: a change the MAC covers.
    let mut record: Value =
        serde_json::from_str(&redis.cmd::<String>(&["HGET", KEYS, &active]).await).unwrap();
    record["created_at_ms"] = json!(record["created_at_ms"].as_i64().unwrap() + 1);
    let _: () = redis
        .cmd(&["HSET", KEYS, &active, &record.to_string()])
        .await;
    let _: i64 = redis.cmd(&["INCR", KEYS_VERSION]).await;

    wait_rejected(s, &active, "bad_mac").await;
    assert_eq!(s.introspect(&token).await, inactive());
    assert!(!s.jwks_kids().await.contains(&active));
    // The node never signs with it again: it promotes the published next key.
    let t2 = issue_soon(s).await;
    assert_ne!(kid_of(&t2), active);
    assert!(s.is_active(&t2).await);
}

#[tokio::test]
async fn a_replayed_older_record_does_not_revive_a_revoked_key() {
    let redis = RedisProcess::start().await;
    let cfg = TestServer::builder().redis(&redis);
    let mut s = cfg.start().await;
    let token = s.issue(&clients::orders(), &[]).await;
    let kid = kid_of(&token);
    let old_record: String = redis.cmd(&["HGET", KEYS, &kid]).await;
    let old_manifest: String = redis.cmd(&["HGET", KEYS, MANIFEST]).await;

    let r = s
        .post_json(
            &format!("/admin/keys/{kid}/revoke"),
            &json!({"reason": "compromised"}),
            clients::admin().auth(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.introspect(&token).await, inactive());

    // The attacker writes the authentic record of the active key back.
    let _: () = redis.cmd(&["HSET", KEYS, &kid, &old_record]).await;
    let _: i64 = redis.cmd(&["INCR", KEYS_VERSION]).await;
    wait_rejected(&s, &kid, "regressed").await;
    assert_eq!(s.introspect(&token).await, inactive());
    assert!(!s.jwks_kids().await.contains(&kid));
    assert_ne!(kid_of(&s.issue(&clients::orders(), &[]).await), kid);

    // A restarted node knows nothing but the store: the manifest still says revoked.
    s.restart().await;
    wait_rejected(&s, &kid, "regressed").await;
    assert_eq!(s.introspect(&token).await, inactive());
    assert!(!s.jwks_kids().await.contains(&kid));

    // The old manifest written back too: it is older than records it must cover, so it
    // admits nothing; the node fails closed to fresh keys, never to the revoked one.
    let _: () = redis.cmd(&["HSET", KEYS, MANIFEST, &old_manifest]).await;
    let _: i64 = redis.cmd(&["INCR", KEYS_VERSION]).await;
    s.restart().await;
    wait_rejected(&s, MANIFEST, "bad_manifest").await;
    assert_eq!(s.introspect(&token).await, inactive());
    assert!(!s.jwks_kids().await.contains(&kid));
    let t2 = s.issue(&clients::orders(), &[]).await;
    assert_ne!(kid_of(&t2), kid);
    assert!(s.is_active(&t2).await);
}

#[tokio::test]
async fn embedded_store_tampering_and_unauthenticated_records() {
    let mut s = TestServer::builder().start().await;
    let token = s.issue(&clients::orders(), &[]).await;
    let active = kid_of(&token);
    let next = one(&s.admin_keys().await, "next");
    s.kill9();
    {
        let db = rusqlite::Connection::open(s.data_path.join("latch.db")).unwrap();
        let get = |kid: &str| -> Value {
            let json: String = db
                .query_row("SELECT record FROM keys WHERE kid = ?1", [kid], |r| {
                    r.get(0)
                })
                .unwrap();
            serde_json::from_str(&json).unwrap()
        };
        // The active key altered; the next key stripped of its MAC, as before upgrading.
        let mut a = get(&active);
        a["retires_at_ms"] = json!(i64::MAX);
        let mut n = get(&next);
        n.as_object_mut().unwrap().remove("mac");
        n.as_object_mut().unwrap().remove("written_at");
        for (kid, v) in [(&active, a), (&next, n)] {
            db.execute(
                "UPDATE keys SET record = ?1 WHERE kid = ?2",
                [v.to_string(), kid.to_string()],
            )
            .unwrap();
        }
    }
    s.restart().await;
    wait_rejected(&s, &active, "bad_mac").await;
    wait_rejected(&s, &next, "unauthenticated").await;
    assert_eq!(s.introspect(&token).await, inactive());
    let jwks = s.jwks_kids().await;
    assert!(!jwks.contains(&active) && !jwks.contains(&next), "{jwks:?}");
    // A fresh key signs; a fresh next key is published.
    let keys = s.admin_keys().await;
    let signing = one(&keys, "active");
    one(&keys, "next");
    let t2 = s.issue(&clients::orders(), &[]).await;
    assert_eq!(kid_of(&t2), signing);
    assert!(s.is_active(&t2).await);
}

#[tokio::test]
async fn embedded_store_a_replayed_record_does_not_revive_a_revoked_key() {
    let mut s = TestServer::builder().start().await;
    let token = s.issue(&clients::orders(), &[]).await;
    let kid = kid_of(&token);
    let db_path = s.data_path.join("latch.db");
    let read = |kid: &str| -> String {
        let db = rusqlite::Connection::open(&db_path).unwrap();
        db.query_row("SELECT record FROM keys WHERE kid = ?1", [kid], |r| {
            r.get(0)
        })
        .unwrap()
    };
    let old_record = read(&kid);
    let r = s
        .post_json(
            &format!("/admin/keys/{kid}/revoke"),
            &json!({"reason": "compromised"}),
            clients::admin().auth(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_ne!(read(&kid), old_record);
    s.kill9();
    {
        let db = rusqlite::Connection::open(&db_path).unwrap();
        db.execute(
            "UPDATE keys SET record = ?1 WHERE kid = ?2",
            [old_record.as_str(), kid.as_str()],
        )
        .unwrap();
        db.execute(
            "UPDATE meta SET value = value + 1 WHERE name = 'keys_version'",
            [],
        )
        .unwrap();
    }
    s.restart().await;
    wait_rejected(&s, &kid, "regressed").await;
    assert_eq!(s.introspect(&token).await, inactive());
    assert!(!s.jwks_kids().await.contains(&kid));
    assert_ne!(kid_of(&s.issue(&clients::orders(), &[]).await), kid);
}
