//! Abuse by clients with or without credentials (issue 9), tried as an attacker would:
//! stalled and trickling bodies, one address hoarding connections, duplicate singleton
//! headers, floods of token requests, revocations and bad secrets. Every refusal must be
//! a clear answer (408, 400, 429 with an OAuth body), never a 5xx, and never cost a
//! legitimate revocation.

use std::net::SocketAddr;

use hyper::Method;
use serde_json::Value;
use testkit::clients;
use testkit::config::Limits;
use testkit::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FORM: &str = "application/x-www-form-urlencoded";

/// The default setup with these `[limits]`.
fn with_limits(f: impl FnOnce(&mut Limits)) -> ServerBuilder {
    TestServer::builder().config(|c| f(&mut c.limits))
}

/// A connection from `from` (any 127/8 address on Linux) to `to`.
async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(format!("{from}:0").parse().unwrap())?;
    sock.connect(to).await
}

/// Sends the head of `POST /introspect` declaring 100 body bytes, and six of them.
async fn stall(stream: &mut TcpStream) {
    let rs = clients::rs_all();
    let head = format!(
        "POST /introspect HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\
         Content-Type: {FORM}\r\nContent-Length: 100\r\n\r\ntoken=",
        basic(&rs.id, &rs.secret)
    );
    let _ = stream.write_all(head.as_bytes()).await;
}

/// Reads what the server sends until it closes or a whole head arrived.
async fn answer(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
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
    String::from_utf8_lossy(&got).into_owned()
}

/// `/healthz` and a valid introspection are answered (polled to the deadline).
async fn served(s: &TestServer, token: &str, what: &str) {
    let http = Http::new(s.addr);
    eventually(DEADLINE, &format!("{what}: /healthz"), || {
        let http = http.clone();
        async move {
            match http.try_get("/healthz", None).await {
                Ok(r) if r.status == 200 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    let rs = clients::rs_all();
    eventually(DEADLINE, &format!("{what}: introspection"), || {
        let http = http.clone();
        let (id, secret) = (rs.id.clone(), rs.secret.clone());
        async move {
            let b = basic(&id, &secret);
            let body = form(&[("token", token)]).into_bytes();
            let headers = [("content-type", FORM), ("authorization", b.as_str())];
            match http
                .try_request(Method::POST, "/introspect", &headers, body)
                .await
            {
                Ok(r) if r.status == 200 && r.json()["active"] == true => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
}

#[tokio::test]
async fn stalled_bodies_are_cut_off_and_everyone_else_is_served() {
    let s = with_limits(|l| {
        l.body_read_timeout = Some(secs(1));
        l.max_connections_per_ip = Some(8);
        l.max_connections = 8;
    })
    .start()
    .await;
    let token = s.issue(&clients::orders(), &[]).await;
    // The attack of the issue: every slot held by a body that never completes.
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        stall(&mut c).await;
        stalled.push(c);
    }
    served(&s, &token, "with 8 stalled bodies").await;
    // The stalled requests were answered 408 (or closed), not left open.
    for c in stalled.iter_mut() {
        let text = answer(c).await;
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 408"),
            "a stalled body got {text:?}"
        );
    }
    assert!(
        s.metric("latch_request_deadline_exceeded_total{phase=\"body\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn a_trickling_body_is_cut_off_by_the_total_deadline() {
    let s = with_limits(|l| l.body_read_timeout = Some(secs(1)))
        .start()
        .await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    let rs = clients::rs_all();
    let head = format!(
        "POST /introspect HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\
         Content-Type: {FORM}\r\nContent-Length: 10000\r\n\r\n",
        basic(&rs.id, &rs.secret)
    );
    c.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = c.into_split();
    // One byte every 100 ms would take 1000 s; each byte resets no per-chunk timer.
    let writer = tokio::spawn(async move {
        for _ in 0..400 {
            if wr.write_all(b"a").await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let _ = tokio::time::timeout(DEADLINE, async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    writer.abort();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "trickling body: {text:?}");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert!(
        body.is_empty() || body.contains("invalid_request"),
        "{text}"
    );
}

#[tokio::test]
async fn one_address_cannot_hold_more_than_its_share() {
    // Bodies are given a minute: only the per-address share keeps the others served.
    let s = with_limits(|l| {
        l.body_read_timeout = Some(secs(60));
        l.handler_timeout = Some(secs(60));
        l.max_connections_per_ip = Some(3);
        l.max_connections = 8;
    })
    .start()
    .await;
    let token = s.issue(&clients::orders(), &[]).await;
    let mut held = Vec::new();
    for _ in 0..8 {
        match connect_from("127.0.0.2", s.addr).await {
            Ok(mut c) => {
                stall(&mut c).await;
                held.push(c);
            }
            Err(e) => panic!("cannot connect from 127.0.0.2: {e}"),
        }
    }
    // 127.0.0.1 still gets in, long before any body deadline.
    served(&s, &token, "with 127.0.0.2 hoarding").await;
    let refused = s
        .metric("latch_connections_refused_total{reason=\"per_ip\"}")
        .await;
    assert!(refused >= 5.0, "per-address refusals: {refused}");
    drop(held);
}

#[tokio::test]
async fn duplicate_singleton_headers_are_refused() {
    let s = TestServer::builder().start().await;
    let token = s.issue(&clients::orders(), &[]).await;
    let rs = clients::rs_all();
    let good = basic(&rs.id, &rs.secret);
    let other = basic(&clients::admin().id, &clients::admin().secret);
    let body = || form(&[("token", &token)]).into_bytes();
    let cases: &[(&str, Vec<(&str, &str)>)] = &[
        (
            "two Authorization (the first valid)",
            vec![
                ("content-type", FORM),
                ("authorization", &good),
                ("authorization", "Basic AAAA"),
            ],
        ),
        (
            "two valid Authorization of different clients",
            vec![
                ("content-type", FORM),
                ("authorization", &other),
                ("authorization", &good),
            ],
        ),
        (
            "two Content-Type",
            vec![
                ("content-type", FORM),
                ("content-type", "application/json"),
                ("authorization", &good),
            ],
        ),
        (
            "two X-Request-Id",
            vec![
                ("content-type", FORM),
                ("authorization", &good),
                ("x-request-id", "a"),
                ("x-request-id", "b"),
            ],
        ),
    ];
    for (what, headers) in cases {
        let r = s
            .http
            .request(Method::POST, "/introspect", headers, body())
            .await;
        r.assert_error(400, "invalid_request");
        assert!(
            r.json()["error_description"]
                .as_str()
                .unwrap()
                .contains("repeated"),
            "{what}: {}",
            r.text()
        );
    }
    // Duplicate Authorization on an admin GET too.
    let r = s
        .http
        .request(
            Method::GET,
            "/admin/keys",
            &[("authorization", &other), ("authorization", &other)],
            vec![],
        )
        .await;
    r.assert_error(400, "invalid_request");
    // Two Content-Length that disagree: refused by hyper's parser before latch sees
    // the request. (Two identical ones are one length, RFC 9112 §6.3; hyper merges them.)
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    let b = form(&[("token", &token)]);
    let raw = format!(
        "POST /introspect HTTP/1.1\r\nHost: x\r\nAuthorization: {good}\r\n\
         Content-Type: {FORM}\r\nContent-Length: {n}\r\nContent-Length: {m}\r\n\r\n{b}",
        n = b.len(),
        m = b.len() + 1
    );
    c.write_all(raw.as_bytes()).await.unwrap();
    let text = answer(&mut c).await;
    assert!(
        text.starts_with("HTTP/1.1 400"),
        "two Content-Length: {text:?}"
    );
    // One of each is fine.
    assert!(s.is_active(&token).await);
}

#[tokio::test]
async fn token_issuance_is_limited_per_client() {
    // orders-service has its own override; billing keeps the default.
    let s = TestServer::builder()
        .config(|c| {
            let orders = c.client_mut("orders-service");
            orders.token_rate = Some("1/h".into());
            orders.token_burst = Some(3);
        })
        .start()
        .await;
    let orders = clients::orders();
    for i in 0..3 {
        let r = s.token_resp(&orders, &[]).await;
        assert_eq!(r.status, 200, "request {i} within the burst: {}", r.text());
    }
    let r = s.token_resp(&orders, &[]).await;
    r.assert_error(429, "slow_down");
    r.assert_no_store();
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=3600).contains(&retry), "Retry-After {retry}");
    // Another client is not affected.
    s.issue(&clients::billing(), &[]).await;
    let n = s
        .metric("latch_rate_limited_total{endpoint=\"token\",limit=\"token\"}")
        .await;
    assert_eq!(n, 1.0);
}

#[tokio::test]
async fn revocation_floods_are_limited_but_no_legitimate_revocation_is_lost() {
    let s = with_limits(|l| {
        l.revoke_rate = Some("1/h".into());
        l.revoke_burst = Some(2);
    })
    .start()
    .await;
    let orders = clients::orders();
    let mut tokens = Vec::new();
    for _ in 0..4 {
        tokens.push(s.issue(&orders, &[]).await);
    }
    let revoke = |t: String, who: ClientDef| {
        let s = &s;
        async move { s.post_form("/revoke", &[("token", &t)], who.auth()).await }
    };
    // The attacker's loop: mint, revoke, mint, revoke...
    for t in &tokens[..2] {
        assert_eq!(revoke(t.clone(), orders.clone()).await.status, 200);
    }
    let r = revoke(tokens[2].clone(), orders.clone()).await;
    r.assert_error(429, "slow_down");
    assert!(r.header("retry-after").is_some());
    // The refused revocation is not silently dropped: the token is still active, and
    // the 429 told the client so; an admin (never limited) revokes it.
    assert!(s.is_active(&tokens[2]).await);
    // Revoking what is already revoked, or garbage, costs the log nothing and is free.
    assert_eq!(revoke(tokens[0].clone(), orders.clone()).await.status, 200);
    assert_eq!(revoke("garbage".into(), orders.clone()).await.status, 200);
    for t in &tokens[2..] {
        assert_eq!(revoke(t.clone(), clients::admin()).await.status, 200);
    }
    for t in &tokens {
        assert!(!s.is_active(t).await, "every token ends revoked");
    }
    // Bulk revocation is never rate limited.
    for _ in 0..5 {
        s.admin_revoke("client", Some("orders-service"), "flood test")
            .await;
    }
}

#[tokio::test]
async fn failed_authentication_is_limited_per_address() {
    let s = with_limits(|l| {
        l.auth_failure_ip_rate = Some("1/h".into());
        l.auth_failure_ip_burst = Some(3);
        l.trusted_proxies = vec!["127.0.0.1/32".into()];
    })
    .start()
    .await;
    let orders = clients::orders();
    let post = |xff: &'static str, secret: &'static str| {
        let s = &s;
        let id = orders.id.clone();
        let real = orders.secret.clone();
        async move {
            let secret = if secret.is_empty() {
                real
            } else {
                secret.to_string()
            };
            let b = basic(&id, &secret);
            let body = form(&[("grant_type", "client_credentials")]).into_bytes();
            let headers = [
                ("content-type", FORM),
                ("authorization", b.as_str()),
                ("x-forwarded-for", xff),
            ];
            s.http.request(Method::POST, "/token", &headers, body).await
        }
    };
    for _ in 0..3 {
        post("198.51.100.7", "guess-0123456789")
            .await
            .assert_error(401, "invalid_client");
    }
    // The guessing address is now refused before its secret is looked at, even with
    // the right one; a client-written hop on the left does not change its address.
    post("198.51.100.7", "")
        .await
        .assert_error(429, "slow_down");
    post("203.0.113.1, 198.51.100.7", "")
        .await
        .assert_error(429, "slow_down");
    // Other clients behind the same gateway are not locked out.
    assert_eq!(post("198.51.100.8", "").await.status, 200);
    let n = s
        .metric("latch_rate_limited_total{endpoint=\"token\",limit=\"auth_failure_address\"}")
        .await;
    assert_eq!(n, 2.0);
}

#[tokio::test]
async fn failed_authentication_is_limited_per_client_id_but_admin_is_never_locked_out() {
    let s = with_limits(|l| {
        l.auth_failure_rate = Some("1/h".into());
        l.auth_failure_burst = Some(3);
        l.trusted_proxies = vec!["127.0.0.1/32".into()];
    })
    .start()
    .await;
    // A distributed guesser: every attempt from another address.
    let attempt = |id: &'static str, secret: String, n: u32| {
        let s = &s;
        async move {
            let b = basic(id, &secret);
            let xff = format!("198.51.100.{n}");
            let body = form(&[("token", "x")]).into_bytes();
            let headers = [
                ("content-type", FORM),
                ("authorization", b.as_str()),
                ("x-forwarded-for", xff.as_str()),
            ];
            s.http
                .request(Method::POST, "/introspect", &headers, body)
                .await
        }
    };
    let rs = clients::rs_all();
    for n in 0..3 {
        attempt("gateway-rs", "wrong-secret".into(), n)
            .await
            .assert_error(401, "invalid_client");
    }
    attempt("gateway-rs", rs.secret.clone(), 50)
        .await
        .assert_error(429, "slow_down");
    // Another client id is unaffected.
    let orders_rs = clients::rs_orders();
    assert_eq!(
        attempt("orders-rs", orders_rs.secret.clone(), 51)
            .await
            .status,
        200
    );
    // Spraying the admin id does not lock the revocation path out.
    let admin = clients::admin();
    for n in 0..6 {
        attempt("security-admin", "wrong-secret".into(), 100 + n)
            .await
            .assert_error(401, "invalid_client");
    }
    let v: Value = s
        .admin_revoke("subject", Some("mallory"), "still works")
        .await;
    assert!(v["seq"].as_u64().is_some(), "{v}");
    assert_eq!(
        attempt("security-admin", admin.secret.clone(), 200)
            .await
            .status,
        200
    );
}

/// The pruning contract, against both stores: token entries go past their own cut-off,
/// other kinds only past theirs, the newest entry (the head) stays.
async fn check_pruning(store: &dyn latch::store::Store, what: &str) {
    use latch::revocation::{NewRevocation, RevocationKind};
    let rev = |kind, value: &str| NewRevocation {
        kind,
        value: value.into(),
        reason: "flood".into(),
        actor: "test".into(),
        request_id: String::new(),
    };
    for (kind, v) in [
        (RevocationKind::Token, "j1"),
        (RevocationKind::Subject, "alice"),
        (RevocationKind::Token, "j2"),
        (RevocationKind::Session, "s1"),
        (RevocationKind::Token, "j3"),
    ] {
        store.append_revocation(rev(kind, v)).await.unwrap();
    }
    let head = store.head().await.unwrap().revocation_seq;
    let future = latch::time::now_ms() + 60_000;
    // Only token entries are past their cut-off; the newest (j3) carries the head in
    // SQLite and stays there; Redis keeps its head in a separate key.
    let pruned = store.prune_revocations(0, future).await.unwrap();
    let left: Vec<String> = store
        .revocations_after(0, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.value)
        .collect();
    assert!(pruned >= 2, "{what}: pruned {pruned}");
    assert!(
        left.starts_with(&["alice".to_string(), "s1".to_string()]),
        "{what}: {left:?}"
    );
    assert!(
        !left.iter().any(|v| v == "j1" || v == "j2"),
        "{what}: {left:?}"
    );
    assert_eq!(store.head().await.unwrap().revocation_seq, head, "{what}");
    // Everything past both cut-offs: the log empties (but for SQLite's head row).
    store.prune_revocations(future, future).await.unwrap();
    let left = store.revocations_after(0, 0, 100).await.unwrap();
    assert!(left.len() <= 1, "{what}: {left:?}");
    let next = store
        .append_revocation(rev(RevocationKind::Token, "j4"))
        .await
        .unwrap();
    assert_eq!(
        next.seq,
        head + 1,
        "{what}: seqs never repeat after pruning"
    );
}

#[tokio::test]
async fn token_log_entries_are_pruned_past_their_own_retention_in_both_stores() {
    let dir = tempfile::tempdir().unwrap();
    let embedded = latch::store::embedded::EmbeddedStore::open(dir.path()).unwrap();
    check_pruning(&embedded, "embedded").await;
    let redis = RedisProcess::start().await;
    let store = latch::store::redis::RedisStore::connect(
        &redis.url(),
        Default::default(),
        std::time::Duration::from_secs(2),
        latch::store::redis::Replication {
            min_acks: 0,
            timeout: std::time::Duration::from_millis(500),
        },
    )
    .await
    .unwrap();
    check_pruning(&store, "redis").await;
}

#[tokio::test]
async fn a_request_stuck_on_the_store_is_cut_off_at_the_handler_deadline() {
    // Redis frozen: a revocation's store call hangs. The handler deadline (1 s) is
    // shorter than the store's own timeout (2 s at this max_staleness), so it is the
    // one that answers: 503 temporarily_unavailable, counted, never a hang or a 500.
    let redis = RedisProcess::start().await;
    let s = TestServer::builder()
        .redis(&redis)
        .config(|c| {
            c.store.max_staleness = secs(30);
            c.limits.body_read_timeout = Some(secs(1));
            c.limits.handler_timeout = Some(secs(1));
        })
        .start()
        .await;
    let stop = |sig: &str| redis.signal(sig);
    stop("STOP");
    let body = serde_json::json!({"kind": "subject", "value": "zoe", "reason": "x"});
    let r = s
        .post_json("/admin/revoke", &body, clients::admin().auth())
        .await;
    stop("CONT");
    r.assert_error(503, "temporarily_unavailable");
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    let n = s
        .metric("latch_request_deadline_exceeded_total{phase=\"handler\"}")
        .await;
    assert!(n >= 1.0, "handler deadline not counted: {n}");
    // Redis back: the retried revocation goes through.
    eventually(DEADLINE, "revocation after redis resumes", || async {
        let r = s
            .post_json("/admin/revoke", &body, clients::admin().auth())
            .await;
        match r.status.as_u16() {
            200 => Ok(()),
            other => Err(format!("{other} {}", r.text())),
        }
    })
    .await;
}
