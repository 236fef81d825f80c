//! Revocation: RFC 7009 `/revoke`, bulk `/admin/revoke`, audit, durability.

use hyper::Method;
use serde_json::{json, Value};
use testkit::clients;
use testkit::prelude::*;

fn jti(token: &str) -> String {
    decode_jwt(token).1["jti"].as_str().unwrap().to_string()
}

/// Finds the audit record for a revocation target after `since`.
async fn find_audit(s: &TestServer, action: &str, target: &str) -> Option<Value> {
    s.audit(0)
        .await
        .into_iter()
        .find(|r| r["action"] == action && r["target"] == target)
}

#[tokio::test]
async fn revoke_own_token() {
    let s = TestServer::builder().start().await;
    let orders = clients::orders();
    let t1 = s.issue(&orders, &[]).await;
    let t2 = s.issue(&orders, &[]).await;
    let r = s
        .post_form(
            "/revoke",
            &[("token", &t1), ("token_type_hint", "access_token")],
            orders.auth(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body.is_empty());
    assert_eq!(s.introspect(&t1).await, inactive());
    // Only that token (its jti) is revoked.
    assert!(s.is_active(&t2).await, "revoking one jti revoked a sibling");
    // Revoking again is still 200.
    let r = s
        .post_form("/revoke", &[("token", &t1)], orders.auth())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Audit: action revoke, target token:<jti>, actor the client.
    let rec = find_audit(&s, "revoke", &format!("token:{}", jti(&t1)))
        .await
        .expect("audit record for /revoke");
    assert_eq!(rec["actor"], "orders-service", "{rec}");
}

#[tokio::test]
async fn revoke_unknown_or_malformed_token_is_200() {
    let s = TestServer::builder().start().await;
    let orders = clients::orders();
    let real = s.issue(&orders, &[]).await;
    let (h, c, _) = decode_jwt(&real);
    let kp = attacker_ed25519();
    let forged = sign_ed25519(&kp, &h, &c);
    let unknown_kid = sign_ed25519(&kp, &json!({"alg":"EdDSA","typ":"at+jwt","kid":"zz"}), &c);
    for t in [
        "garbage",
        "a.b.c",
        forged.as_str(),
        unknown_kid.as_str(),
        "eyJhbGciOiJub25lIn0.e30.",
    ] {
        for hint in [None, Some("access_token"), Some("refresh_token")] {
            let mut params = vec![("token", t)];
            if let Some(h) = hint {
                params.push(("token_type_hint", h));
            }
            let r = s.post_form("/revoke", &params, orders.auth()).await;
            assert_eq!(r.status, 200, "revoke {t:?} hint {hint:?}: {}", r.text());
        }
    }
    // An empty token: an empty parameter counts as absent, a malformed request.
    let r = s
        .post_form("/revoke", &[("token", "")], orders.auth())
        .await;
    r.assert_error(400, "invalid_request");
    // A forged token with the real jti must not revoke the real token.
    assert!(
        s.is_active(&real).await,
        "a forged token with a real jti revoked the real token"
    );
}

#[tokio::test]
async fn cross_client_revoke_is_refused() {
    let s = TestServer::builder().start().await;
    let orders_tok = s.issue(&clients::orders(), &[]).await;
    let r = s
        .post_form(
            "/revoke",
            &[("token", &orders_tok)],
            clients::billing().auth(),
        )
        .await;
    r.assert_error(403, "unauthorized_client");
    r.assert_no_store();
    assert!(
        s.is_active(&orders_tok).await,
        "token revoked by another client"
    );
    // A resource server (introspect role, not admin) cannot either.
    let r = s
        .post_form(
            "/revoke",
            &[("token", &orders_tok)],
            clients::rs_all().auth(),
        )
        .await;
    r.assert_error(403, "unauthorized_client");
    assert!(s.is_active(&orders_tok).await);
    assert!(
        find_audit(&s, "revoke", &format!("token:{}", jti(&orders_tok)))
            .await
            .is_none(),
        "refused revocation was audited as a revocation"
    );
}

#[tokio::test]
async fn admin_may_revoke_any_token() {
    let s = TestServer::builder().start().await;
    let orders_tok = s.issue(&clients::orders(), &[]).await;
    let r = s
        .post_form(
            "/revoke",
            &[("token", &orders_tok)],
            clients::admin().auth(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.introspect(&orders_tok).await, inactive());
    let rec = find_audit(&s, "revoke", &format!("token:{}", jti(&orders_tok)))
        .await
        .expect("audit record");
    assert_eq!(rec["actor"], "security-admin");
}

/// Issues, revokes with `/admin/revoke`, and checks before/after semantics.
/// `victim_value` picks the value from the victim token; `spared` says
/// whether the other client's token must survive.
async fn bulk_case(kind: &str, use_value: bool) {
    let s = TestServer::builder().start().await;
    let orders = clients::orders();
    let victim = s.issue(&orders, &[]).await;
    let victim2 = s.issue(&orders, &[]).await;
    let bystander = s.issue(&clients::billing(), &[]).await;
    let value = match kind {
        "token" => Some(jti(&victim)),
        "subject" | "client" => Some("orders-service".to_string()),
        "all" => None,
        _ => unreachable!(),
    };
    let value = if use_value { value } else { None };
    let before = s.audit(0).await.len();

    let resp = s
        .admin_revoke(kind, value.as_deref(), &format!("test {kind}"))
        .await;
    let seq = resp["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("seq: {resp}"));
    assert!(seq > 0, "{resp}");
    assert_eq!(resp["kind"], kind, "{resp}");
    match &value {
        Some(v) => assert_eq!(resp["value"], v.as_str(), "{resp}"),
        None => assert!(
            resp.get("value").is_none() || resp["value"].is_null(),
            "{resp}"
        ),
    }
    let revoked_at = resp["revoked_at"].as_u64().expect("revoked_at integer");
    assert!(revoked_at + 60 >= now_secs() && revoked_at <= now_secs() + 60);

    // Earlier tokens of that kind/value are inactive.
    assert_eq!(s.introspect(&victim).await, inactive(), "{kind}: victim");
    match kind {
        "token" => assert!(s.is_active(&victim2).await, "token: sibling jti"),
        _ => assert_eq!(s.introspect(&victim2).await, inactive(), "{kind}: victim2"),
    }
    if kind == "all" {
        assert_eq!(s.introspect(&bystander).await, inactive(), "all: bystander");
    } else {
        assert!(s.is_active(&bystander).await, "{kind}: bystander revoked");
    }
    // Tokens issued after the revocation are not affected.
    let after = s.issue(&orders, &[]).await;
    assert!(
        decode_jwt(&after).1["rsq"].as_u64().unwrap() >= seq,
        "a token issued after revocation {seq} carries a lower rsq"
    );
    assert!(s.is_active(&after).await, "{kind}: token issued after");
    let after_b = s.issue(&clients::billing(), &[]).await;
    assert!(s.is_active(&after_b).await);

    // Audit.
    let target = match &value {
        Some(v) => format!("{kind}:{v}"),
        None => "all".to_string(),
    };
    let records = s.audit(0).await;
    assert!(records.len() > before, "no new audit record");
    let rec = records
        .iter()
        .find(|r| r["action"] == "revoke" && r["target"] == target.as_str())
        .unwrap_or_else(|| panic!("no audit record revoke/{target}: {records:?}"));
    assert_eq!(rec["actor"], "security-admin", "{rec}");
    assert_eq!(rec["reason"], format!("test {kind}"), "{rec}");
    assert!(rec["seq"].is_u64() && rec["time"].is_u64(), "{rec}");
    assert!(rec.get("request_id").is_some(), "{rec}");
}

#[tokio::test]
async fn admin_revoke_token() {
    bulk_case("token", true).await;
}

#[tokio::test]
async fn admin_revoke_subject() {
    bulk_case("subject", true).await;
}

#[tokio::test]
async fn admin_revoke_client() {
    bulk_case("client", true).await;
}

#[tokio::test]
async fn admin_revoke_all() {
    bulk_case("all", false).await;
}

#[tokio::test]
async fn admin_revoke_session_without_tokens_is_accepted() {
    // No session tokens can be minted without a trusted IdP; this checks the
    // kind is accepted and audited and harms no client_credentials token.
    let s = TestServer::builder().start().await;
    let t = s.issue(&clients::orders(), &[]).await;
    let resp = s.admin_revoke("session", Some("sid-123"), "x").await;
    assert_eq!(resp["kind"], "session");
    assert_eq!(resp["value"], "sid-123");
    assert!(s.is_active(&t).await);
    assert!(find_audit(&s, "revoke", "session:sid-123").await.is_some());
}

#[tokio::test]
async fn admin_revoke_sequence_numbers_increase() {
    let s = TestServer::builder().start().await;
    let a = s.admin_revoke("subject", Some("alice"), "x").await;
    let b = s.admin_revoke("subject", Some("bob"), "y").await;
    assert!(b["seq"].as_u64().unwrap() > a["seq"].as_u64().unwrap());
    // /admin/audit since/limit semantics.
    let all = s.audit(0).await;
    let pos_alice = all
        .iter()
        .position(|r| r["target"] == "subject:alice")
        .expect("alice audited");
    let pos_bob = all
        .iter()
        .position(|r| r["target"] == "subject:bob")
        .expect("bob audited");
    assert!(pos_alice < pos_bob, "audit must be oldest first");
    let seqs: Vec<u64> = all.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let alice_seq = all[pos_alice]["seq"].as_u64().unwrap();
    let later = s.audit(alice_seq).await;
    assert!(later.iter().all(|r| r["seq"].as_u64().unwrap() > alice_seq));
    assert!(later.iter().any(|r| r["target"] == "subject:bob"));
    let r = s
        .get("/admin/audit?since=0&limit=1", clients::admin().auth())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["records"].as_array().unwrap().len(), 1);
    assert_eq!(r.json()["records"][0]["seq"], all[0]["seq"]);
    let r = s
        .get("/admin/audit?since=abc", clients::admin().auth())
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["error"].is_string(), "{}", r.text());
}

#[tokio::test]
async fn admin_revoke_bad_input() {
    let s = TestServer::builder().start().await;
    let admin = clients::admin();
    let t = s.issue(&clients::orders(), &[]).await;
    let mut failures = vec![];
    for body in [
        json!({"kind": "planet", "value": "earth", "reason": "x"}),
        json!({"kind": "subject", "reason": "x"}),
        json!({"kind": "client", "reason": "x"}),
        json!({"kind": "token", "reason": "x"}),
        json!({"kind": "session", "reason": "x"}),
        json!({"kind": 5, "value": "x", "reason": "x"}),
        json!({"kind": "subject", "value": "", "reason": "x"}),
        json!({"value": "orders-service", "reason": "x"}),
        json!(["subject", "orders-service"]),
        json!(["client", "orders-service", "x"]),
        json!("all"),
        json!(null),
    ] {
        let r = s.post_json("/admin/revoke", &body, admin.auth()).await;
        let is_json_error = serde_json::from_slice::<Value>(&r.body)
            .map(|v| v["error"].is_string())
            .unwrap_or(false);
        if r.status != 400 || !is_json_error {
            failures.push(format!("{body}: {} {}", r.status, r.text()));
        }
    }
    let r = s
        .http
        .request(
            Method::POST,
            "/admin/revoke",
            &[
                ("content-type", "application/json"),
                ("authorization", &basic(&admin.id, &admin.secret)),
            ],
            b"kind=all".to_vec(),
        )
        .await;
    if r.status != 400 {
        failures.push(format!("body kind=all: {} {}", r.status, r.text()));
    }
    if !s.is_active(&t).await {
        failures.push("a malformed admin revoke revoked orders-service's token".into());
    }
    assert!(
        failures.is_empty(),
        "malformed /admin/revoke bodies not refused with 400:\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
async fn revocations_survive_kill_9() {
    let cfg = TestServer::builder();
    let mut s = cfg.start().await;
    let orders = clients::orders();
    let by_rfc7009 = s.issue(&orders, &[]).await;
    let by_subject = s.issue(&clients::billing(), &[]).await;
    let survivor = s.issue(&orders, &[]).await;

    let r = s
        .post_form("/revoke", &[("token", &by_rfc7009)], orders.auth())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rev = s
        .admin_revoke("subject", Some("billing-service"), "offboarding")
        .await;
    let seq = rev["seq"].as_u64().unwrap();

    // kill -9 right after the 200s, and restart on the same data dir.
    s.restart_with_no_ready(&cfg).await;
    // Until ready, introspection must never say active for revoked tokens. The node
    // listens once it has announced itself, so every request gets an answer.
    let rs = clients::rs_all();
    let mut saw_ready = false;
    for _ in 0..2000 {
        for t in [&by_rfc7009, &by_subject] {
            let r = s.post_form("/introspect", &[("token", t)], rs.auth()).await;
            match r.status.as_u16() {
                200 => assert_eq!(r.json(), inactive(), "revoked token active after restart"),
                503 => {}
                other => panic!("introspect during startup: {other} {}", r.text()),
            }
        }
        if s.get("/readyz", None).await.status == 200 {
            saw_ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(saw_ready, "not ready after restart\n{}", s.diagnostics());

    assert_eq!(s.introspect(&by_rfc7009).await, inactive());
    assert_eq!(s.introspect(&by_subject).await, inactive());
    // Keys survived too: an unrevoked token from before the crash still works.
    assert!(
        s.is_active(&survivor).await,
        "signing keys lost across restart"
    );
    // New tokens for the revoked subject work; sequence keeps increasing.
    let fresh = s.issue(&clients::billing(), &[]).await;
    assert!(s.is_active(&fresh).await);
    let rev2 = s.admin_revoke("subject", Some("someone"), "x").await;
    assert!(
        rev2["seq"].as_u64().unwrap() > seq,
        "seq went backwards after restart"
    );
    // The audit log survived.
    assert!(find_audit(&s, "revoke", "subject:billing-service")
        .await
        .is_some());
    assert!(
        find_audit(&s, "revoke", &format!("token:{}", jti(&by_rfc7009)))
            .await
            .is_some()
    );

    // Second crash: still revoked.
    s.restart().await;
    assert_eq!(s.introspect(&by_subject).await, inactive());
    assert_eq!(s.introspect(&by_rfc7009).await, inactive());
    assert!(s.is_active(&fresh).await);
}

#[tokio::test]
async fn embedded_mode_without_kek_restarts() {
    // Without LATCH_KEK the embedded store creates its own KEK in the data dir
    // (mode 0600) and reuses it on restart.
    let cfg = TestServer::builder().without_kek();
    let mut s = cfg.start().await;
    let t = s.issue(&clients::orders(), &[]).await;
    let kek = s.data_path.join("kek");
    let meta = std::fs::metadata(&kek).expect("kek file in the data dir");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "kek file mode");
    s.restart().await;
    assert!(s.is_active(&t).await);
}

#[tokio::test]
async fn audit_query_validation() {
    let s = TestServer::builder().start().await;
    let admin = clients::admin();
    for q in [
        "since=abc",
        "since=-1",
        "since=1.5",
        "since=0&limit=abc",
        "since=0&limit=-3",
    ] {
        let r = s.get(&format!("/admin/audit?{q}"), admin.auth()).await;
        assert_eq!(r.status, 400, "{q}: {}", r.text());
        assert!(r.json()["error"].is_string(), "{q}: {}", r.text());
    }
    // `since` is optional in the CLI (`latch audit [--since SEQ]`); the API
    // with since=0 returns everything.
    s.admin_revoke("subject", Some("carol"), "x").await;
    let r = s.get("/admin/audit?since=0", admin.auth()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["records"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["target"] == "subject:carol"));
}

#[tokio::test]
async fn revocation_table_keeps_one_entry_per_kind_and_value() {
    // The table holds, per (kind, value), the highest seq: repeating a
    // revocation does not grow it. (Expiry of entries happens after the
    // maximum token lifetime, 1 h + leeway, too long for a test.)
    let s = TestServer::builder().start().await;
    let metrics = Http::new(s.metrics_addr);
    let entries = || {
        let metrics = metrics.clone();
        async move {
            let text = metrics.get("/metrics", None).await.text();
            text.lines()
                .find(|l| l.starts_with("latch_revocation_table_entries"))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no latch_revocation_table_entries in\n{text}"))
        }
    };
    let t = s.issue(&clients::orders(), &[]).await;
    s.admin_revoke("subject", Some("dave"), "x").await;
    // The gauge is published by the follower's loop, a moment after the answer.
    let one = eventually(DEADLINE, "the entry counted", || async move {
        let n = entries().await;
        if n >= 1.0 {
            Ok(n)
        } else {
            Err(format!("{n} entries"))
        }
    })
    .await;
    for _ in 0..5 {
        s.admin_revoke("subject", Some("dave"), "again").await;
    }
    s.admin_revoke("client", Some("orders-service"), "x").await;
    // Exactly one more entry, for the client: had the repeats grown the table, the count
    // would pass `one + 1` and never come back to it.
    eventually(
        DEADLINE,
        "one more entry, for the client only",
        || async move {
            let n = entries().await;
            if n == one + 1.0 {
                Ok(())
            } else {
                Err(format!("{n} entries, want {}", one + 1.0))
            }
        },
    )
    .await;
    // The highest seq wins: an older token stays revoked, a newer one lives.
    assert_eq!(s.introspect(&t).await, inactive());
    let fresh = s.issue(&clients::orders(), &[]).await;
    assert!(s.is_active(&fresh).await);
}

#[tokio::test]
async fn revocation_races_with_issuance() {
    // Tokens whose issuance completed before the revocation was sent must be
    // inactive; tokens requested after its 200 must be active. Ordering is
    // causal (observed by this process), not timed.
    use std::time::Instant;
    let s = TestServer::builder().start().await;
    let http = s.http.clone();
    let orders = clients::orders();
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let (stop2, count2) = (stop.clone(), count.clone());
    let issuer = tokio::spawn(async move {
        let mut out = vec![];
        while !stop2.load(Ordering::SeqCst) {
            let sent = Instant::now();
            let r = http
                .post_form(
                    "/token",
                    &[("grant_type", "client_credentials")],
                    orders.auth(),
                )
                .await;
            let received = Instant::now();
            assert_eq!(r.status, 200, "{}", r.text());
            let t = r.json()["access_token"].as_str().unwrap().to_string();
            out.push((sent, received, t));
            count2.fetch_add(1, Ordering::SeqCst);
        }
        out
    });
    let wait_for = |n: usize| {
        let count = count.clone();
        eventually(DEADLINE, "tokens issued", move || {
            let c = count.load(Ordering::SeqCst);
            async move {
                if c >= n {
                    Ok(())
                } else {
                    Err(format!("{c} tokens"))
                }
            }
        })
    };
    wait_for(5).await;
    let mut rounds = vec![];
    for i in 0..3 {
        let before = s.issue(&clients::orders(), &[]).await;
        let sent = Instant::now();
        s.admin_revoke("client", Some("orders-service"), &format!("race {i}"))
            .await;
        let acked = Instant::now();
        rounds.push((sent, acked));
        assert_eq!(s.introspect(&before).await, inactive());
    }
    let n = count.load(Ordering::SeqCst);
    wait_for(n + 10).await;
    stop.store(true, Ordering::SeqCst);
    let issued = issuer.await.unwrap();
    let (last_sent, last_acked) = *rounds.last().unwrap();
    let mut checked_before = 0;
    let mut checked_after = 0;
    for (sent, received, t) in &issued {
        if *received < last_sent {
            assert_eq!(
                s.introspect(t).await,
                inactive(),
                "token issued before a client revocation still active"
            );
            checked_before += 1;
        } else if *sent > last_acked {
            assert!(
                s.is_active(t).await,
                "token requested after the revocation's 200 is inactive"
            );
            checked_after += 1;
        }
    }
    eprintln!(
        "{} tokens: {checked_before} before, {checked_after} after the last revocation",
        issued.len()
    );
    assert!(
        checked_before > 0,
        "no token completed before the revocations"
    );
    // And fresh tokens after everything are active.
    let fresh = s.issue(&clients::orders(), &[]).await;
    assert!(s.is_active(&fresh).await);
}

#[tokio::test]
async fn store_write_failure_is_503_and_claims_nothing() {
    // Another process holds the SQLite write lock: the store cannot take a
    // revocation, so the answer is 503 and nothing is claimed.
    let s = TestServer::builder().start().await;
    let orders = clients::orders();
    let t = s.issue(&orders, &[]).await;
    let db = s.data_path.join("latch.db");
    assert!(db.exists(), "embedded store file {db:?} not found");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();

    let r = s
        .post_json(
            "/admin/revoke",
            &json!({"kind": "subject", "value": "orders-service", "reason": "x"}),
            clients::admin().auth(),
        )
        .await;
    r.assert_error(503, "temporarily_unavailable");
    let r = s
        .post_form("/revoke", &[("token", &t)], orders.auth())
        .await;
    r.assert_error(503, "temporarily_unavailable");
    r.assert_no_store();

    conn.execute_batch("ROLLBACK").unwrap();
    drop(conn);
    // Once the store is back, nothing was revoked by the failed calls.
    let tok = t.clone();
    let http = s.http.clone();
    let v = eventually(DEADLINE, "introspection answers again", || {
        let (tok, http) = (tok.clone(), http.clone());
        async move {
            let r = http
                .post_form("/introspect", &[("token", &tok)], clients::rs_all().auth())
                .await;
            if r.status == 200 {
                Ok(r.json())
            } else {
                Err(format!("{} {}", r.status, r.text()))
            }
        }
    })
    .await;
    assert_eq!(v["active"], true, "a 503 revocation took effect: {v}");
    assert!(
        !s.audit(0)
            .await
            .iter()
            .any(|r| r["target"] == "subject:orders-service"),
        "a 503 revocation was audited"
    );
    // And now it works.
    let r = s
        .post_form("/revoke", &[("token", &t)], orders.auth())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.introspect(&t).await, inactive());
}
