//! Operations: health, readiness, metrics listener, HTTP/1.1 keep-alive,
//! header read timeout, concurrency.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use testkit::clients;
use testkit::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn healthz_and_readyz() {
    let s = TestServer::builder().start().await;
    let r = s.get("/healthz", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = s.get("/readyz", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Neither needs credentials, and bad credentials do not matter.
    let r = s.get("/healthz", Some(("x", "y"))).await;
    assert_eq!(r.status, 200);
}

/// Value of the first sample whose line starts with `name` and contains all
/// `labels` (as `k="v"` fragments).
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .next()
}

#[tokio::test]
async fn metrics_listener_serves_prometheus_text() {
    let s = TestServer::builder().start().await;
    assert_ne!(s.addr, s.metrics_addr);
    // Traffic of every kind.
    let t = s.issue(&clients::orders(), &[]).await;
    assert!(s.is_active(&t).await);
    assert_eq!(s.introspect("garbage").await, inactive());
    let t2 = s.issue(&clients::orders(), &[]).await;
    let r = s
        .post_form("/revoke", &[("token", &t2)], clients::orders().auth())
        .await;
    assert_eq!(r.status, 200);
    s.admin_revoke("subject", Some("alice"), "metrics").await;
    let _ = s.get("/nope", None).await;

    let metrics = Http::new(s.metrics_addr);
    let r = metrics.get("/metrics", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("text/plain"), "content-type {ct:?}");
    let text = r.text();

    let mut missing = vec![];
    for name in [
        "latch_requests_total",
        "latch_request_duration_seconds",
        "latch_introspections_total",
        "latch_tokens_issued_total",
        "latch_revocations_total",
        "latch_revocation_propagation_seconds",
        "latch_revocation_table_entries",
        "latch_revocation_state_age_seconds",
        "latch_signing_keys",
        "latch_store_up",
    ] {
        if !text.lines().any(|l| {
            !l.starts_with('#')
                && (l.starts_with(&format!("{name}{{"))
                    || l.starts_with(&format!("{name} "))
                    || l.starts_with(&format!("{name}_bucket"))
                    || l.starts_with(&format!("{name}_count")))
        }) {
            missing.push(name);
        }
    }
    assert!(missing.is_empty(), "metrics missing {missing:?}:\n{text}");

    let v = sample(
        &text,
        "latch_tokens_issued_total",
        &["grant=\"client_credentials\""],
    );
    assert!(v.is_some_and(|v| v >= 2.0), "tokens issued {v:?}:\n{text}");
    // Introspections are counted by result: the active and the inactive
    // answer above must land in (at least) two different result series.
    let results: std::collections::BTreeSet<String> = text
        .lines()
        .filter(|l| l.starts_with("latch_introspections_total{"))
        .filter_map(|l| {
            let i = l.find("result=\"")? + "result=\"".len();
            let j = l[i..].find('"')?;
            Some(l[i..i + j].to_string())
        })
        .collect();
    assert!(
        results.len() >= 2,
        "introspections not split by result: {results:?}\n{text}"
    );
    let v = sample(&text, "latch_revocations_total", &["kind=\"subject\""]);
    assert!(v.is_some_and(|v| v >= 1.0), "subject revocations {v:?}");
    let v = sample(&text, "latch_revocations_total", &["kind=\"token\""]);
    assert!(v.is_some_and(|v| v >= 1.0), "token revocations {v:?}");
    let v = sample(&text, "latch_revocation_table_entries", &[]);
    assert!(v.is_some_and(|v| v >= 2.0), "table entries {v:?}");
    let v = sample(&text, "latch_signing_keys", &["state=\"active\""]);
    assert_eq!(v, Some(1.0), "exactly one active key");
    let v = sample(&text, "latch_store_up", &[]);
    assert_eq!(v, Some(1.0), "store up");
    let v = sample(
        &text,
        "latch_requests_total",
        &["endpoint=", "status=\"200\""],
    );
    assert!(v.is_some_and(|v| v >= 1.0), "requests_total {v:?}");

    // Metrics are not exposed on the main listener.
    let r = s.get("/metrics", None).await;
    assert_eq!(r.status, 404, "/metrics on the main listener");
}

#[tokio::test]
async fn keep_alive_connection_serves_several_requests() {
    let s = TestServer::builder().start().await;
    let stream = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn_task = tokio::spawn(conn);
    let host = s.addr.to_string();
    let orders = clients::orders();
    let rs = clients::rs_all();

    let mut token = String::new();
    for i in 0..6 {
        let req = match i % 3 {
            0 => Request::builder()
                .method(Method::GET)
                .uri("/.well-known/jwks.json")
                .header("host", &host)
                .body(Full::new(Bytes::new()))
                .unwrap(),
            1 => Request::builder()
                .method(Method::POST)
                .uri("/token")
                .header("host", &host)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("authorization", basic(&orders.id, &orders.secret))
                .body(Full::new(Bytes::from("grant_type=client_credentials")))
                .unwrap(),
            _ => Request::builder()
                .method(Method::POST)
                .uri("/introspect")
                .header("host", &host)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("authorization", basic(&rs.id, &rs.secret))
                .body(Full::new(Bytes::from(form(&[("token", &token)]))))
                .unwrap(),
        };
        sender
            .ready()
            .await
            .unwrap_or_else(|e| panic!("connection not reusable before request {i}: {e}"));
        let resp = sender
            .send_request(req)
            .await
            .unwrap_or_else(|e| panic!("request {i} on the kept-alive connection: {e}"));
        let status = resp.status();
        let close = resp
            .headers()
            .get("connection")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(status, 200, "request {i}: {:?}", body);
        assert!(!close, "server closed the connection after request {i}");
        let v: Value = serde_json::from_slice(&body).unwrap();
        match i % 3 {
            1 => token = v["access_token"].as_str().unwrap().to_string(),
            2 => assert_eq!(v["active"], true),
            _ => {}
        }
    }
    drop(sender);
    let _ = tokio::time::timeout(Duration::from_secs(5), conn_task).await;
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let cfg = TestServer::builder().config(|c| c.limits.header_read_timeout = secs(1));
    let s = cfg.start().await;
    let mut stream = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    stream
        .write_all(b"POST /introspect HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    // The server must close (or answer 408) without the rest of the headers.
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let closed = tokio::time::timeout(DEADLINE, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "connection with incomplete headers still open after {DEADLINE:?}"
    );
    // hyper gives up on the headers without an answer: the connection just closes.
    assert!(
        got.is_empty(),
        "answer to a request whose headers never completed: {}",
        String::from_utf8_lossy(&got)
    );
    // The server still serves others.
    assert_eq!(s.get("/healthz", None).await.status, 200);
}

#[tokio::test]
async fn concurrent_introspections() {
    let s = TestServer::builder().start().await;
    let t = s.issue(&clients::orders(), &[]).await;
    let rs = clients::rs_all();
    let mut tasks = vec![];
    for i in 0..64 {
        let http = s.http.clone();
        let token = if i % 2 == 0 {
            t.clone()
        } else {
            format!("junk{i}")
        };
        let rs = rs.clone();
        tasks.push(tokio::spawn(async move {
            let r = http
                .post_form("/introspect", &[("token", &token)], rs.auth())
                .await;
            (i, r)
        }));
    }
    for task in tasks {
        let (i, r) = task.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        if i % 2 == 0 {
            assert_eq!(v["active"], true, "{v}");
        } else {
            assert_eq!(v, inactive());
        }
    }
}

#[tokio::test]
async fn env_overrides_config() {
    // The file says 5m; the environment wins.
    let s = TestServer::builder()
        .env("LATCH_TOKENS__ACCESS_TTL", "1m")
        .start()
        .await;
    let t = s.issue(&clients::orders(), &[]).await;
    let (_, c, _) = decode_jwt(&t);
    assert_eq!(
        c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(),
        60,
        "LATCH_TOKENS__ACCESS_TTL=1m not applied"
    );
}

#[tokio::test]
async fn audit_is_logged_as_json_and_secrets_never_are() {
    let s = TestServer::builder().env("RUST_LOG", "debug").start().await;
    let orders = clients::orders();
    let wrong = "wrong-secret-that-must-not-be-logged-0123456789";
    let t = s.issue(&orders, &[]).await;
    // Successful and failed authentication, both methods.
    let _ = s
        .post_form(
            "/token",
            &[("grant_type", "client_credentials")],
            Some((&orders.id, wrong)),
        )
        .await;
    let _ = s
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
    let _ = s
        .post_form(
            "/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", &orders.id),
                ("client_secret", wrong),
            ],
            None,
        )
        .await;
    assert!(s.is_active(&t).await);
    s.admin_revoke("subject", Some("erin"), "logged").await;

    let logs = eventually(DEADLINE, "audit JSON line logged", || {
        let logs = s.logs();
        async move {
            let found = logs.lines().any(|l| {
                serde_json::from_str::<Value>(l.trim()).is_ok_and(|v| {
                    let v = if v.get("fields").is_some() {
                        &v["fields"]
                    } else {
                        &v
                    };
                    v["action"] == "revoke" && v["target"] == "subject:erin"
                }) || (l.contains("\"action\":\"revoke\"") && l.contains("subject:erin"))
            });
            if found {
                Ok(logs)
            } else {
                Err("no JSON audit line with action revoke, target subject:erin".into())
            }
        }
    })
    .await;
    eprintln!("{} log lines", logs.lines().count());
    for (what, secret) in [
        ("orders secret", orders.secret.clone()),
        ("wrong secret", wrong.to_string()),
        ("admin secret", clients::admin().secret.clone()),
        ("rs secret", clients::rs_all().secret.clone()),
        (
            "Basic credentials",
            basic(&orders.id, &orders.secret)["Basic ".len()..].to_string(),
        ),
        (
            "wrong Basic credentials",
            basic(&orders.id, wrong)["Basic ".len()..].to_string(),
        ),
    ] {
        assert!(!logs.contains(&secret), "{what} appears in the logs");
    }
    // Tokens are bearer credentials too: the full token is not logged.
    assert!(!logs.contains(&t), "an access token appears in the logs");
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_and_slots_come_back() {
    let s = TestServer::builder()
        .config(|c| {
            c.limits.max_connections = 2;
            // All from 127.0.0.1: allow it the whole cap (the default share is half).
            c.limits.max_connections_per_ip = Some(2);
        })
        .start()
        .await;
    // Two kept-alive connections hold both slots (once the harness's own pooled
    // connection from the readiness check has been let go); a third is closed unanswered.
    assert_cap_of_two(s.addr, 1).await;
}

#[tokio::test]
async fn every_start_audits_the_effective_config() {
    let cfg = TestServer::builder();
    let mut s = cfg.start().await;
    let loads = |records: Vec<Value>| -> Vec<String> {
        records
            .into_iter()
            .filter(|r| r["action"] == "config_load" && r["actor"] == "latch")
            .map(|r| r["target"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let first = loads(s.audit(0).await);
    assert_eq!(
        first.len(),
        1,
        "one config_load record per start: {first:?}"
    );
    assert!(first[0].starts_with("config:"), "{first:?}");
    // Same config again: a second record with the same digest.
    s.restart().await;
    let second = loads(s.audit(0).await);
    assert_eq!(second.len(), 2, "{second:?}");
    assert_eq!(second[0], second[1], "same config, same digest");
    // A changed config (through the environment) is a different digest.
    let changed = cfg.env("LATCH_TOKENS__ACCESS_TTL", "2m");
    s.restart_with(&changed).await;
    let third = loads(s.audit(0).await);
    assert_eq!(third.len(), 3, "{third:?}");
    assert_ne!(
        third[2], third[0],
        "a changed config must change the digest"
    );
}
