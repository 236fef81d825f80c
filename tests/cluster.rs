//! Cluster mode: several `latch serve` nodes sharing one private `redis-server`.
//!
//! SPEC §5 (revocation across nodes and its invariants) and §6 (keys in a cluster),
//! docs/ARCHITECTURE.md "The path of one revocation (redis store, N nodes)".
//! Nothing here asserts on timing: every wait polls with a generous deadline, and the
//! observed lags are only printed (`cargo test --test cluster -- --nocapture`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use testkit::clients;
use testkit::prelude::*;

const NAMES: [&str; 4] = ["A", "B", "C", "D"];

/// The redis key names of ARCHITECTURE.md.
const REV_STATE: &str = "{latch}:rev:state";
const REV_LOG: &str = "{latch}:rev:log";
const EVENTS: &str = "{latch}:events";

/// Default config with a short `max_staleness`, so fail-closed shows quickly.
fn fast() -> ServerBuilder {
    TestServer::builder().config(|c| c.store.max_staleness = secs(1))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// One introspection answer, transport failures included.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Active,
    Inactive,
    /// 503; whether it carried `Retry-After`.
    Unavailable {
        retry_after: bool,
    },
    Other(String),
}

async fn ask_http(http: &Http, token: &str) -> Answer {
    let rs = clients::rs_all();
    let auth = basic(&rs.id, &rs.secret);
    let r = http
        .try_request(
            Method::POST,
            "/introspect",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("authorization", auth.as_str()),
            ],
            form(&[("token", token)]).into_bytes(),
        )
        .await;
    match r {
        Err(e) => Answer::Other(format!("transport error: {e}")),
        Ok(r) if r.status == StatusCode::OK => {
            let v = r.json();
            match v.get("active") {
                Some(Value::Bool(true)) => Answer::Active,
                Some(Value::Bool(false)) if v == inactive() => Answer::Inactive,
                _ => Answer::Other(format!("200 {v}")),
            }
        }
        Ok(r) if r.status == StatusCode::SERVICE_UNAVAILABLE => Answer::Unavailable {
            retry_after: r.header("retry-after").is_some(),
        },
        Ok(r) => Answer::Other(format!("{} {}", r.status, r.text())),
    }
}

async fn ask(node: &TestServer, token: &str) -> Answer {
    ask_http(&node.http, token).await
}

fn lags(seen: &[Option<Duration>]) -> String {
    seen.iter()
        .enumerate()
        .map(|(i, d)| format!("{} {:?}", NAMES[i], d.unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Polls every node (round robin, every few ms) until each answers `want` for `token`;
/// prints how long after `since` each did, then checks that each still does.
async fn await_all(nodes: &[TestServer], token: &str, want: Answer, since: Instant, what: &str) {
    let mut seen: Vec<Option<Duration>> = vec![None; nodes.len()];
    let mut last: Vec<Option<Answer>> = vec![None; nodes.len()];
    let start = Instant::now();
    while seen.iter().any(Option::is_none) {
        for (i, n) in nodes.iter().enumerate() {
            if seen[i].is_some() {
                continue;
            }
            let a = ask(n, token).await;
            if a == want {
                seen[i] = Some(since.elapsed());
            } else {
                last[i] = Some(a);
            }
        }
        if seen.iter().any(Option::is_none) {
            if start.elapsed() > DEADLINE {
                let i = seen.iter().position(Option::is_none).unwrap();
                panic!(
                    "{what}: node {} never answered {want:?} within {DEADLINE:?}; last {:?}\n{}",
                    NAMES[i],
                    last[i],
                    nodes[i].diagnostics()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    eprintln!(
        "{what}: {want:?} on every node; observed lag {}",
        lags(&seen)
    );
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(
            ask(n, token).await,
            want,
            "{what}: node {} went back after answering {want:?}",
            NAMES[i]
        );
    }
}

/// Asserts the token's answer on every node, right now (no polling).
async fn assert_all(nodes: &[TestServer], token: &str, want: Answer, what: &str) {
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(ask(n, token).await, want, "{what}: node {}", NAMES[i]);
    }
}

/// `/admin/revoke` that retries 503s (the store just came back): returns the JSON.
async fn admin_revoke_retrying(node: &TestServer, kind: &str, value: &str, reason: &str) -> Value {
    let body = json!({"kind": kind, "value": value, "reason": reason});
    let unavailable = std::cell::Cell::new(0);
    let v = eventually(DEADLINE, "/admin/revoke answers 200", || {
        let body = body.clone();
        let http = node.http.clone();
        let unavailable = &unavailable;
        async move {
            let admin = clients::admin();
            let r = http.post_json("/admin/revoke", &body, admin.auth()).await;
            match r.status {
                StatusCode::OK => Ok(r.json()),
                StatusCode::SERVICE_UNAVAILABLE => {
                    unavailable.set(unavailable.get() + 1);
                    Err(format!("503 {}", r.text()))
                }
                s => panic!("/admin/revoke: unexpected {s} {}", r.text()),
            }
        }
    })
    .await;
    if unavailable.get() > 0 {
        eprintln!(
            "/admin/revoke answered 503 {} time(s) before 200",
            unavailable.get()
        );
    }
    v
}

/// Waits until `/readyz` is 200 on every node; prints how long after `since`.
async fn await_ready_all(nodes: &[TestServer], since: Instant, what: &str) {
    let mut seen = vec![None; nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        n.wait_ready().await;
        seen[i] = Some(since.elapsed());
    }
    eprintln!("{what}: /readyz 200 on every node after {}", lags(&seen));
}

// ---------------------------------------------------------------------------
// 1. Propagation
// ---------------------------------------------------------------------------

#[tokio::test]
async fn revocation_on_one_node_reaches_every_node() {
    let redis = RedisProcess::start().await;
    let nodes = fast().redis(&redis).start_nodes(3).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let orders = clients::orders();
    let billing = clients::billing();

    // RFC 7009: one token, revoked by its own client on A, issued on B.
    let one = b.issue(&orders, &[]).await;
    let sibling = c.issue(&orders, &[]).await;
    assert_all(&nodes, &one, Answer::Active, "fresh token").await;
    assert_all(&nodes, &sibling, Answer::Active, "fresh sibling").await;
    let r = a
        .post_form("/revoke", &[("token", &one)], orders.auth())
        .await;
    assert_eq!(r.status, StatusCode::OK, "/revoke: {}", r.text());
    let done = Instant::now();
    assert_eq!(
        ask(a, &one).await,
        Answer::Inactive,
        "the node that answered 200 must already apply the revocation"
    );
    await_all(
        &nodes,
        &one,
        Answer::Inactive,
        done,
        "RFC 7009 /revoke on A",
    )
    .await;
    assert_all(
        &nodes,
        &sibling,
        Answer::Active,
        "a sibling token (other jti)",
    )
    .await;

    // Bulk: kind subject (client_credentials tokens have sub = client id).
    let subs = [
        a.issue(&orders, &[]).await,
        b.issue(&orders, &[]).await,
        c.issue(&orders, &[]).await,
    ];
    let bill = [b.issue(&billing, &[]).await, c.issue(&billing, &[]).await];
    let rev = a
        .admin_revoke("subject", Some(&orders.id), "cluster: offboarding")
        .await;
    let done = Instant::now();
    assert_eq!(rev["kind"], "subject", "{rev}");
    assert_eq!(rev["value"], orders.id.as_str(), "{rev}");
    assert!(rev["seq"].as_u64().is_some(), "seq: {rev}");
    for (i, t) in subs.iter().enumerate() {
        let what = format!("subject revocation on A, token issued on {}", NAMES[i]);
        await_all(&nodes, t, Answer::Inactive, done, &what).await;
    }
    for t in &bill {
        assert_all(&nodes, t, Answer::Active, "another subject's token").await;
    }
    // Tokens issued after the revocation (by a node that has applied it) are not affected.
    for (i, n) in nodes.iter().enumerate() {
        let nodes = &nodes;
        let orders = &orders;
        eventually(
            DEADLINE,
            "a token issued after the revocation is active everywhere",
            || async move {
                let t = n.issue(orders, &[]).await;
                for (j, m) in nodes.iter().enumerate() {
                    let got = ask(m, &t).await;
                    if got != Answer::Active {
                        return Err(format!("issued on {}, {got:?} on {}", NAMES[i], NAMES[j]));
                    }
                }
                Ok(())
            },
        )
        .await;
    }

    // Bulk: kind client.
    let rev = a
        .admin_revoke("client", Some(&billing.id), "cluster: client compromised")
        .await;
    let done = Instant::now();
    assert_eq!(rev["kind"], "client", "{rev}");
    for t in &bill {
        await_all(&nodes, t, Answer::Inactive, done, "client revocation on A").await;
    }
}

// ---------------------------------------------------------------------------
// 2. Invariant 1: durability
// ---------------------------------------------------------------------------

#[tokio::test]
async fn revocations_survive_node_kills_and_a_redis_restart() {
    let mut redis = RedisProcess::start().await;
    let mut nodes = fast().redis(&redis).start_nodes(3).await;
    let orders = clients::orders();
    let billing = clients::billing();

    let dead = nodes[1].issue(&orders, &[]).await;
    let dead_jti = nodes[2].issue(&billing, &[]).await;
    let live = nodes[2].issue(&billing, &[]).await;
    let rev = nodes[0]
        .admin_revoke("subject", Some(&orders.id), "durability")
        .await;
    let s1 = rev["seq"].as_u64().expect("seq");
    let r = nodes[0]
        .post_form("/revoke", &[("token", &dead_jti)], billing.auth())
        .await;
    assert_eq!(r.status, StatusCode::OK, "/revoke: {}", r.text());

    // kill -9 the node that took the revocations, at once, and start it again.
    nodes[0].restart().await;
    // Invariant 4: ready means the full table is loaded: no polling on A.
    assert_eq!(
        ask(&nodes[0], &dead).await,
        Answer::Inactive,
        "A after kill -9"
    );
    assert_eq!(
        ask(&nodes[0], &dead_jti).await,
        Answer::Inactive,
        "A after kill -9"
    );
    assert_eq!(
        ask(&nodes[0], &live).await,
        Answer::Active,
        "A after kill -9"
    );
    let since = Instant::now();
    await_all(&nodes, &dead, Answer::Inactive, since, "after kill -9 of A").await;
    await_all(
        &nodes,
        &dead_jti,
        Answer::Inactive,
        since,
        "after kill -9 of A",
    )
    .await;
    assert_all(&nodes, &live, Answer::Active, "untouched token").await;

    // kill -9 every node, then start them all again.
    for n in nodes.iter_mut() {
        n.kill9();
    }
    for n in nodes.iter_mut() {
        n.restart().await;
    }
    assert_all(
        &nodes,
        &dead,
        Answer::Inactive,
        "after restart of every node",
    )
    .await;
    assert_all(
        &nodes,
        &dead_jti,
        Answer::Inactive,
        "after restart of every node",
    )
    .await;
    assert_all(&nodes, &live, Answer::Active, "after restart of every node").await;

    // Redis crashes (SIGKILL) and comes back on the same port and AOF, nodes running.
    let seq_before: u64 = redis.cmd(&["HGET", REV_STATE, "seq"]).await;
    assert!(seq_before > s1, "rev:state seq {seq_before} <= {s1}");
    redis.stop();
    let down = Instant::now();
    redis.start_again().await;
    eprintln!("redis restarted in {:?}", down.elapsed());
    let seq_after: u64 = redis.cmd(&["HGET", REV_STATE, "seq"]).await;
    assert_eq!(
        seq_after,
        seq_before,
        "the AOF must keep the seq counter\n{}",
        redis.logs()
    );
    await_ready_all(&nodes, down, "redis restart").await;
    assert_all(&nodes, &dead, Answer::Inactive, "after the redis restart").await;
    assert_all(
        &nodes,
        &dead_jti,
        Answer::Inactive,
        "after the redis restart",
    )
    .await;
    assert_all(&nodes, &live, Answer::Active, "after the redis restart").await;

    // Revocations keep working, with the next seq, and reach every node.
    let rev = admin_revoke_retrying(&nodes[1], "subject", &billing.id, "after redis restart").await;
    let done = Instant::now();
    assert_eq!(
        rev["seq"].as_u64(),
        Some(seq_before + 1),
        "the seq continues after the redis restart: {rev}"
    );
    await_all(
        &nodes,
        &live,
        Answer::Inactive,
        done,
        "revocation on B after redis restart",
    )
    .await;
    // A restarted node after the redis restart still loads everything.
    nodes[2].restart().await;
    for t in [&dead, &dead_jti, &live] {
        assert_eq!(
            ask(&nodes[2], t).await,
            Answer::Inactive,
            "C restarted at the end"
        );
    }
}

// ---------------------------------------------------------------------------
// 3. Invariant 3: fail closed
// ---------------------------------------------------------------------------

fn assert_503(r: &Resp, what: &str) {
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{what}: expected 503, got {} {}",
        r.status,
        r.text()
    );
    assert!(
        r.header("retry-after").is_some(),
        "{what}: 503 without Retry-After"
    );
    let v = r.json();
    assert!(v.is_object(), "{what}: 503 body is not a JSON object: {v}");
}

#[tokio::test]
async fn nodes_fail_closed_while_redis_is_down_and_recover() {
    let mut redis = RedisProcess::start().await;
    let nodes = fast().redis(&redis).start_nodes(3).await;
    let orders = clients::orders();
    let billing = clients::billing();
    let admin = clients::admin();

    let live = nodes[0].issue(&orders, &[]).await;
    let dead = nodes[1].issue(&billing, &[]).await;
    let r = nodes[2]
        .post_form("/revoke", &[("token", &dead)], billing.auth())
        .await;
    assert_eq!(r.status, StatusCode::OK, "/revoke: {}", r.text());
    await_all(
        &nodes,
        &dead,
        Answer::Inactive,
        Instant::now(),
        "before the outage",
    )
    .await;
    assert_all(&nodes, &live, Answer::Active, "before the outage").await;

    redis.stop();
    let down = Instant::now();

    // Every node reaches 503 (with Retry-After); after a node's first 503, collect every
    // answer it gives for ~3 s more: none may be active.
    let mut first_503: Vec<Option<Duration>> = vec![None; nodes.len()];
    let mut after: Vec<Vec<Answer>> = vec![vec![]; nodes.len()];
    let mut all_503_at: Option<Instant> = None;
    loop {
        for (i, n) in nodes.iter().enumerate() {
            for t in [&live, &dead] {
                let a = ask(n, t).await;
                if first_503[i].is_some() {
                    after[i].push(a);
                } else if let Answer::Unavailable { retry_after } = a {
                    assert!(retry_after, "node {}: 503 without Retry-After", NAMES[i]);
                    first_503[i] = Some(down.elapsed());
                }
            }
        }
        match all_503_at {
            None if first_503.iter().all(Option::is_some) => all_503_at = Some(Instant::now()),
            None if down.elapsed() > DEADLINE => panic!(
                "not every node failed closed within {DEADLINE:?} of losing redis: first 503 at {first_503:?}\n{}",
                nodes[first_503.iter().position(Option::is_none).unwrap()].diagnostics()
            ),
            Some(t) if t.elapsed() > Duration::from_secs(3) => break,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("redis down: first 503 after {}", lags(&first_503));
    for (i, answers) in after.iter().enumerate() {
        assert!(
            !answers.contains(&Answer::Active),
            "node {} answered active:true after failing closed: {answers:?}",
            NAMES[i]
        );
        let other: Vec<&Answer> = answers
            .iter()
            .filter(|a| **a != (Answer::Unavailable { retry_after: true }))
            .collect();
        assert!(
            other.is_empty(),
            "node {}: while redis is down every introspection must be 503 with Retry-After; \
             {} of {} were not: {other:?}",
            NAMES[i],
            other.len(),
            answers.len()
        );
        eprintln!(
            "node {}: {} introspections while down, all 503",
            NAMES[i],
            answers.len()
        );
    }

    // Readiness, issuance and revocation stop too.
    for (i, n) in nodes.iter().enumerate() {
        let name = NAMES[i];
        let r = n.http.get("/readyz", None).await;
        assert_503(&r, &format!("{name} /readyz"));
        assert!(
            r.json()["reason"].is_string(),
            "{name} /readyz reason: {}",
            r.text()
        );
        let r = n.token_resp(&orders, &[]).await;
        assert_503(&r, &format!("{name} /token"));
        assert!(r.json()["error"].is_string(), "{name} /token: {}", r.text());
        let r = n
            .post_form("/revoke", &[("token", &live)], orders.auth())
            .await;
        assert_503(&r, &format!("{name} /revoke"));
        let r = n
            .post_json(
                "/admin/revoke",
                &json!({"kind": "subject", "value": "x", "reason": "down"}),
                admin.auth(),
            )
            .await;
        assert_503(&r, &format!("{name} /admin/revoke"));
        assert_eq!(
            n.http.get("/healthz", None).await.status,
            StatusCode::OK,
            "{name} /healthz: the process still runs"
        );
    }
    // Nothing claimed while down: the /revoke above did not revoke `live`.

    redis.start_again().await;
    let up = Instant::now();
    await_ready_all(&nodes, up, "redis back").await;
    assert_all(&nodes, &live, Answer::Active, "after recovery").await;
    assert_all(&nodes, &dead, Answer::Inactive, "after recovery").await;
    let fresh = nodes[2].issue(&orders, &[]).await;
    assert_all(&nodes, &fresh, Answer::Active, "issued after recovery").await;
    let r = nodes[1]
        .post_form("/revoke", &[("token", &live)], orders.auth())
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "/revoke after recovery: {}",
        r.text()
    );
    await_all(
        &nodes,
        &live,
        Answer::Inactive,
        Instant::now(),
        "revocation after recovery",
    )
    .await;
    assert_all(&nodes, &fresh, Answer::Active, "sibling after recovery").await;
}

// ---------------------------------------------------------------------------
// 4. Invariant 5: no gap when a node is cut off
// ---------------------------------------------------------------------------

/// One round: node C is frozen (SIGSTOP) for longer than `max_staleness` while A
/// revokes a token (RFC 7009) and a subject; with `cut_feed`, every pub/sub connection is
/// also killed while C is frozen, so C never receives the announcements and must read the
/// log. When C runs again, none of its answers may be `active` for the revoked tokens
/// (503 while it catches up is fine), and it must answer again.
async fn freeze_revoke_wake(nodes: &[TestServer], redis: &RedisProcess, cut_feed: bool) {
    let round = if cut_feed {
        "frozen, feed cut"
    } else {
        "frozen"
    };
    let (a, c) = (&nodes[0], &nodes[2]);
    let orders = clients::orders();
    let billing = clients::billing();
    await_subscribers(redis, 3, "every node subscribed").await;
    let one = c.issue(&orders, &[]).await;
    let subj = c.issue(&billing, &[]).await;
    let other = c.issue(&orders, &[]).await;
    assert_all(nodes, &one, Answer::Active, round).await;
    assert_all(nodes, &subj, Answer::Active, round).await;

    c.signal("STOP");
    let stopped = Instant::now();
    if cut_feed {
        let killed: i64 = redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
        assert!(killed >= 3, "CLIENT KILL TYPE pubsub killed {killed}");
    }
    let r = a
        .post_form("/revoke", &[("token", &one)], orders.auth())
        .await;
    assert_eq!(r.status, StatusCode::OK, "/revoke: {}", r.text());
    a.admin_revoke("subject", Some(&billing.id), round).await;
    let live = &nodes[..2];
    let what = format!("{round}: A and B");
    await_all(live, &one, Answer::Inactive, stopped, &what).await;
    await_all(live, &subj, Answer::Inactive, stopped, &what).await;
    // Frozen for longer than max_staleness (1s), so C's state is stale when it wakes.
    let frozen_for = Duration::from_millis(1600);
    if let Some(rest) = frozen_for.checked_sub(stopped.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    c.signal("CONT");
    let woke = Instant::now();

    let mut answers: Vec<(Answer, Answer)> = vec![];
    let mut first_200: Option<Duration> = None;
    loop {
        let pair = (ask(c, &one).await, ask(c, &subj).await);
        if first_200.is_none() && (pair.0 == Answer::Inactive || pair.1 == Answer::Inactive) {
            first_200 = Some(woke.elapsed());
        }
        answers.push(pair);
        match first_200 {
            Some(t) if woke.elapsed() > t + Duration::from_secs(1) => break,
            None if woke.elapsed() > DEADLINE => break,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let unavailable = answers
        .iter()
        .filter(|(x, y)| {
            matches!(x, Answer::Unavailable { .. }) || matches!(y, Answer::Unavailable { .. })
        })
        .count();
    eprintln!(
        "{round}: C woke: {} answer pairs, {unavailable} with a 503, first 200 after {first_200:?}",
        answers.len()
    );
    let bad = answers
        .iter()
        .filter(|(x, y)| *x == Answer::Active || *y == Answer::Active)
        .count();
    assert!(
        bad == 0,
        "{round}: C answered active:true for a token revoked while it was frozen ({bad} times); \
         first answers: {:?}\n{}",
        &answers[..answers.len().min(10)],
        c.diagnostics()
    );
    for (i, (x, y)) in answers.iter().enumerate() {
        for a in [x, y] {
            assert!(
                matches!(
                    a,
                    Answer::Inactive | Answer::Unavailable { retry_after: true }
                ),
                "{round}: C answer #{i}: {a:?}"
            );
        }
    }
    assert!(
        first_200.is_some(),
        "{round}: C never answered 200 again after SIGCONT\n{}",
        c.diagnostics()
    );
    assert_eq!(
        answers.last().unwrap(),
        &(Answer::Inactive, Answer::Inactive),
        "{round}: C's latest answers"
    );
    c.wait_ready().await;
    assert_all(nodes, &other, Answer::Active, "an unrevoked token").await;
    // The subject's tokens issued from now on are fine again (B applied the revocation).
    let after = c.issue(&billing, &[]).await;
    await_all(nodes, &after, Answer::Active, Instant::now(), round).await;
}

#[tokio::test]
async fn a_frozen_node_never_answers_from_before_the_revocation() {
    let redis = RedisProcess::start().await;
    let nodes = fast().redis(&redis).start_nodes(3).await;
    freeze_revoke_wake(&nodes, &redis, false).await;
    freeze_revoke_wake(&nodes, &redis, true).await;
}

async fn numsub(redis: &RedisProcess) -> i64 {
    let (_, n): (String, i64) = redis.cmd(&["PUBSUB", "NUMSUB", EVENTS]).await;
    n
}

async fn await_subscribers(redis: &RedisProcess, n: i64, what: &str) {
    let start = Instant::now();
    eventually(DEADLINE, what, || async {
        match numsub(redis).await {
            x if x == n => Ok(()),
            x => Err(format!("{x} subscribers")),
        }
    })
    .await;
    eprintln!("{what}: {n} subscribers after {:?}", start.elapsed());
}

/// Every node's pub/sub connection is killed; a revocation made before they resubscribe
/// still reaches every node (from the durable log), and they resubscribe.
#[tokio::test]
async fn revocations_arrive_while_the_announcement_feed_is_cut() {
    let redis = RedisProcess::start().await;
    let nodes = fast().redis(&redis).start_nodes(3).await;
    let orders = clients::orders();
    await_subscribers(&redis, 3, "every node subscribed").await;

    let t1 = nodes[1].issue(&orders, &[]).await;
    let t2 = nodes[2].issue(&orders, &[]).await;
    let killed: i64 = redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    assert!(killed >= 3, "CLIENT KILL TYPE pubsub killed {killed}");
    let r = nodes[0]
        .post_form("/revoke", &[("token", &t1)], orders.auth())
        .await;
    assert_eq!(r.status, StatusCode::OK, "/revoke: {}", r.text());
    let done = Instant::now();
    await_all(
        &nodes,
        &t1,
        Answer::Inactive,
        done,
        "revoked with the feed cut",
    )
    .await;
    assert_all(&nodes, &t2, Answer::Active, "sibling").await;
    await_subscribers(&redis, 3, "every node resubscribed").await;
    let r = nodes[0]
        .post_form("/revoke", &[("token", &t2)], orders.auth())
        .await;
    assert_eq!(r.status, StatusCode::OK, "/revoke: {}", r.text());
    await_all(
        &nodes,
        &t2,
        Answer::Inactive,
        Instant::now(),
        "after resubscribing",
    )
    .await;
    for n in &nodes {
        n.wait_ready().await;
    }
}

// ---------------------------------------------------------------------------
// 5. A gap in the announcements triggers a catch-up from the log
// ---------------------------------------------------------------------------

/// Appends a revocation to the log as the server's script does, without announcing it.
const APPEND_UNANNOUNCED: &str = "
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HSET', KEYS[1], 'acked', seq)
redis.call('XADD', KEYS[2], seq .. '-0', 'kind', ARGV[1], 'value', ARGV[2], 'at', ARGV[3],
  'reason', 'test', 'actor', 'test')
return seq
";

#[tokio::test]
async fn a_gap_in_the_announcements_is_filled_from_the_log() {
    let redis = RedisProcess::start().await;
    let nodes = fast().redis(&redis).start_nodes(3).await;
    let orders = clients::orders();
    let billing = clients::billing();

    // Something revoked first, so that the cluster is not at seq 0.
    let warm = nodes[1].issue(&orders, &[]).await;
    let r = nodes[1]
        .post_form("/revoke", &[("token", &warm)], orders.auth())
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    await_all(&nodes, &warm, Answer::Inactive, Instant::now(), "warm-up").await;

    let target = [
        nodes[0].issue(&orders, &[]).await,
        nodes[1].issue(&orders, &[]).await,
        nodes[2].issue(&orders, &[]).await,
    ];
    let bystander = nodes[2].issue(&billing, &[]).await;

    // Seq N: in the log, never announced (atomically, as the server's script would).
    let now = now_ms().to_string();
    let n: u64 = redis
        .cmd(&[
            "EVAL",
            APPEND_UNANNOUNCED,
            "2",
            REV_STATE,
            REV_LOG,
            "subject",
            &orders.id,
            &now,
        ])
        .await;
    // Seq N+1: a normal revocation of someone else, announced.
    let rev = nodes[0]
        .admin_revoke("subject", Some("someone-else"), "gap trigger")
        .await;
    let done = Instant::now();
    assert_eq!(rev["seq"].as_u64(), Some(n + 1), "{rev}");
    for (i, t) in target.iter().enumerate() {
        let what = format!("unannounced seq {n}, token issued on {}", NAMES[i]);
        await_all(&nodes, t, Answer::Inactive, done, &what).await;
    }
    assert_all(&nodes, &bystander, Answer::Active, "another subject").await;

    // An announcement of a seq that does not exist (nothing in the log): nodes stay
    // ready and do not apply what the log does not hold.
    let ghost = format!("rev\n{}\n{}\nsubject\n{}", n + 5, now_ms(), billing.id);
    let receivers: i64 = redis.cmd(&["PUBLISH", EVENTS, &ghost]).await;
    eprintln!(
        "ghost announcement of seq {} reached {receivers} subscriber(s)",
        n + 5
    );
    let since = Instant::now();
    while since.elapsed() < Duration::from_millis(800) {
        for (i, node) in nodes.iter().enumerate() {
            let r = node.http.get("/readyz", None).await;
            assert_eq!(
                r.status,
                StatusCode::OK,
                "node {} not ready after a ghost announcement: {}",
                NAMES[i],
                r.text()
            );
            assert_eq!(
                ask(node, &bystander).await,
                Answer::Active,
                "node {} applied an announced seq that is not in the log",
                NAMES[i]
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The next real revocation is N+2 and reaches everyone.
    let r = nodes[2]
        .post_form("/revoke", &[("token", &bystander)], billing.auth())
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    await_all(
        &nodes,
        &bystander,
        Answer::Inactive,
        Instant::now(),
        "after the ghost",
    )
    .await;
    let seq: u64 = redis.cmd(&["HGET", REV_STATE, "seq"]).await;
    assert_eq!(seq, n + 2);
    let fresh = nodes[0].issue(&orders, &[]).await;
    assert_eq!(rsq(&fresh), n + 2, "a node caught up stamps the head");
    assert_all(&nodes, &fresh, Answer::Active, "issued after everything").await;
}

// ---------------------------------------------------------------------------
// 6. The race: issuance on B while A revokes
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_issued_before_a_revocation_are_revoked_on_every_node() {
    let redis = RedisProcess::start().await;
    // Issuance runs flat out on B while A revokes: no per-client rate in the way.
    let nodes = fast()
        .redis(&redis)
        .env("LATCH_LIMITS__TOKEN_RATE", "off")
        .start_nodes(3)
        .await;
    let orders = clients::orders();

    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let issuer = {
        let http = nodes[1].http.clone();
        let (stop, count, orders) = (stop.clone(), count.clone(), orders.clone());
        tokio::spawn(async move {
            let mut out: Vec<(String, Instant)> = vec![];
            while !stop.load(Ordering::Acquire) {
                let r = http
                    .post_form(
                        "/token",
                        &[("grant_type", "client_credentials")],
                        orders.auth(),
                    )
                    .await;
                let at = Instant::now();
                assert_eq!(r.status, StatusCode::OK, "/token on B: {}", r.text());
                let t = r.json()["access_token"].as_str().unwrap().to_string();
                out.push((t, at));
                count.fetch_add(1, Ordering::AcqRel);
            }
            out
        })
    };
    let wait_count = |n: usize| {
        let count = count.clone();
        async move {
            eventually(DEADLINE, "tokens issued", || {
                let c = count.load(Ordering::Acquire);
                async move {
                    if c >= n {
                        Ok(())
                    } else {
                        Err(format!("{c} tokens"))
                    }
                }
            })
            .await
        }
    };
    wait_count(40).await;
    let admin = clients::admin();
    let sent = Instant::now();
    let r = nodes[0]
        .http
        .post_json(
            "/admin/revoke",
            &json!({"kind": "subject", "value": orders.id, "reason": "race"}),
            admin.auth(),
        )
        .await;
    let done = Instant::now();
    assert_eq!(r.status, StatusCode::OK, "/admin/revoke: {}", r.text());
    let seq = r.json()["seq"].as_u64().expect("seq");
    let at_done = count.load(Ordering::Acquire);
    wait_count(at_done + 40).await;
    stop.store(true, Ordering::Release);
    let tokens = issuer.await.expect("issuer task");

    // Classes by when B's answer arrived, relative to the revocation's request and 200.
    let mut before = 0; // answer arrived before the revocation was sent
    let mut overlap = (0, 0); // before the 200: (stamped below seq, stamped at/after)
    let mut after = (0, 0); // after the 200: (stamped below seq, stamped at/after)
    let mut expect: Vec<(&str, Answer)> = vec![];
    for (t, at) in &tokens {
        let stamped = rsq(t);
        if *at < sent {
            before += 1;
            assert!(
                stamped < seq,
                "a token whose issuance completed before the revocation was sent has rsq {stamped} >= seq {seq}"
            );
        } else if *at < done {
            if stamped < seq {
                overlap.0 += 1;
            } else {
                overlap.1 += 1;
            }
        } else if stamped < seq {
            after.0 += 1;
        } else {
            after.1 += 1;
        }
        // SPEC §5: revoked iff an entry has seq > rsq; nothing else touches this subject.
        let want = if stamped < seq {
            Answer::Inactive
        } else {
            Answer::Active
        };
        expect.push((t, want));
    }
    eprintln!(
        "race: {} tokens: {before} completed before the revocation was sent; \
         {} completed while it was in flight ({} stamped before seq {seq}, {} issued by B \
         after B had applied it); {} completed after its 200 ({} stamped before, {} after)",
        tokens.len(),
        overlap.0 + overlap.1,
        overlap.0,
        overlap.1,
        after.0 + after.1,
        after.0,
        after.1
    );
    assert!(before > 0, "no token completed before the revocation");

    // Every (token, node) reaches its expected answer; the revoked ones must.
    let mut pending: Vec<(usize, usize)> = (0..expect.len())
        .flat_map(|t| (0..nodes.len()).map(move |n| (t, n)))
        .collect();
    let start = Instant::now();
    while !pending.is_empty() {
        let mut still = vec![];
        for (t, n) in pending {
            let (token, want) = &expect[t];
            let got = ask(&nodes[n], token).await;
            if got != *want {
                if start.elapsed() > DEADLINE {
                    panic!(
                        "token #{t} (rsq {}, seq {seq}): node {} answers {got:?}, want {want:?}",
                        rsq(token),
                        NAMES[n]
                    );
                }
                still.push((t, n));
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let revoked = expect
        .iter()
        .filter(|(_, w)| *w == Answer::Inactive)
        .count();
    eprintln!(
        "race: {revoked} tokens inactive on every node, {} active on every node, after {:?}",
        expect.len() - revoked,
        start.elapsed()
    );
}

// ---------------------------------------------------------------------------
// 7. Keys across nodes
// ---------------------------------------------------------------------------

#[tokio::test]
async fn scheduled_rotation_happens_once_per_period_across_nodes() {
    let redis = RedisProcess::start().await;
    let cfg = fast().config(|c| {
        c.keys.rotate_every = secs(3);
        c.keys.publish_ahead = secs(2);
        c.tokens.access_ttl = secs(2);
        c.tokens.leeway = secs(0);
    });
    let started = Instant::now();
    let nodes = cfg.redis(&redis).start_nodes(3).await;
    let orders = clients::orders();

    let mut polls = 0;
    let mut zero_active = 0;
    let mut active_kids = std::collections::BTreeSet::new();
    let mut cross_inactive = 0;
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(10) {
        for (i, n) in nodes.iter().enumerate() {
            let keys = n.admin_keys().await;
            let active = kids_in_state(&keys, "active");
            assert!(
                active.len() <= 1,
                "node {} lists {} active keys: {keys:?}",
                NAMES[i],
                active.len()
            );
            if active.is_empty() {
                zero_active += 1;
            }
            active_kids.extend(active);
            polls += 1;
        }
        // Tokens signed on one node, introspected on the next one right away.
        for (i, n) in nodes.iter().enumerate() {
            let r = n.token_resp(&orders, &[]).await;
            if r.status != StatusCode::OK {
                eprintln!(
                    "node {} /token during rotation: {} {}",
                    NAMES[i],
                    r.status,
                    r.text()
                );
                continue;
            }
            let t = r.json()["access_token"].as_str().unwrap().to_string();
            let j = (i + 1) % nodes.len();
            let got = ask(&nodes[j], &t).await;
            if got != Answer::Active {
                cross_inactive += 1;
                eprintln!(
                    "token signed on {} with kid {} is {got:?} on {} right after issuance",
                    NAMES[i],
                    kid_of(&t),
                    NAMES[j]
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "rotation: {polls} key listings, {zero_active} with no active key, {} distinct active kids, \
         {cross_inactive} tokens inactive on another node right after issuance",
        active_kids.len()
    );

    let elapsed = started.elapsed().as_secs_f64();
    let records = nodes[2].audit(0).await;
    let rotations: Vec<&Value> = records
        .iter()
        .filter(|r| r["action"] == "key_rotate" && r["actor"] == "latch")
        .collect();
    let times: Vec<i64> = rotations
        .iter()
        .map(|r| r["time"].as_i64().expect("time"))
        .collect();
    eprintln!(
        "rotation: {} scheduled key_rotate records in {elapsed:.1}s at {times:?}",
        rotations.len()
    );
    assert!(
        rotations.len() >= 2,
        "expected scheduled rotations every 3s over {elapsed:.1}s, got {rotations:?}"
    );
    let max = (elapsed / 3.0).ceil() as usize + 1;
    assert!(
        rotations.len() <= max,
        "{} scheduled rotations in {elapsed:.1}s (rotate_every 3s, at most {max}): {rotations:#?}",
        rotations.len()
    );
    // Audit times are whole seconds: 2 s apart at least means not a double rotation.
    for w in times.windows(2) {
        assert!(
            w[1] - w[0] >= 2,
            "two scheduled key_rotate records {}s apart: {times:?}\n{rotations:#?}",
            w[1] - w[0]
        );
    }
    let kids: std::collections::BTreeSet<&str> = rotations
        .iter()
        .map(|r| r["target"].as_str().unwrap())
        .collect();
    assert_eq!(
        kids.len(),
        rotations.len(),
        "a key rotated in twice: {rotations:#?}"
    );

    // All nodes eventually publish byte-identical JWKS documents.
    let start = Instant::now();
    eventually(DEADLINE, "identical JWKS on every node", || async {
        let mut docs = vec![];
        for n in &nodes {
            let r = n.get("/.well-known/jwks.json", None).await;
            assert_eq!(r.status, StatusCode::OK);
            docs.push(r.body);
        }
        if docs.windows(2).all(|w| w[0] == w[1]) {
            Ok(())
        } else {
            Err(format!("{docs:?}"))
        }
    })
    .await;
    eprintln!("identical JWKS after {:?}", start.elapsed());
}

#[tokio::test]
async fn revoking_the_active_key_on_one_node_takes_effect_on_every_node() {
    let redis = RedisProcess::start().await;
    let nodes = fast().redis(&redis).start_nodes(3).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let orders = clients::orders();
    let admin = clients::admin();

    let keys = a.admin_keys().await;
    let active = kids_in_state(&keys, "active");
    assert_eq!(active.len(), 1, "{keys:?}");
    let k = active[0].clone();
    let signed_b = b.issue(&orders, &[]).await;
    let signed_c = c.issue(&orders, &[]).await;
    assert_eq!(
        kid_of(&signed_b),
        k,
        "B signs with the cluster's active key"
    );
    assert_eq!(
        kid_of(&signed_c),
        k,
        "C signs with the cluster's active key"
    );
    assert_all(
        &nodes,
        &signed_b,
        Answer::Active,
        "before the key revocation",
    )
    .await;

    let r = a
        .post_json(
            &format!("/admin/keys/{k}/revoke"),
            &json!({"reason": "cluster: key leaked"}),
            admin.auth(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "key revoke: {}", r.text());
    let done = Instant::now();
    let listing = r.json()["keys"].as_array().expect("keys").clone();
    assert_eq!(
        key_state(&listing, &k).as_deref(),
        Some("revoked"),
        "{listing:?}"
    );
    let now_active = kids_in_state(&listing, "active");
    assert_eq!(now_active.len(), 1, "{listing:?}");
    assert_ne!(now_active[0], k);

    await_all(
        &nodes,
        &signed_b,
        Answer::Inactive,
        done,
        "key revoked on A, token of B",
    )
    .await;
    await_all(
        &nodes,
        &signed_c,
        Answer::Inactive,
        done,
        "key revoked on A, token of C",
    )
    .await;
    for (i, n) in [b, c].into_iter().enumerate() {
        let name = NAMES[i + 1];
        let k = &k;
        let nodes = &nodes;
        let orders = &orders;
        let t = eventually(DEADLINE, "a new kid signs", || async move {
            let t = n.issue(orders, &[]).await;
            if kid_of(&t) == *k {
                Err(format!("{name} still signs with the revoked key"))
            } else {
                Ok(t)
            }
        })
        .await;
        eventually(DEADLINE, "the new token is active everywhere", || {
            let t = t.clone();
            async move {
                for (j, m) in nodes.iter().enumerate() {
                    match ask(m, &t).await {
                        Answer::Active => {}
                        other => return Err(format!("{other:?} on {}", NAMES[j])),
                    }
                }
                Ok(())
            }
        })
        .await;
        eventually(DEADLINE, "the revoked key leaves the JWKS", || async move {
            let kids = n.jwks_kids().await;
            if kids.contains(k) {
                Err(format!("{name} JWKS {kids:?}"))
            } else {
                Ok(())
            }
        })
        .await;
        let keys = n.admin_keys().await;
        assert_eq!(
            key_state(&keys, k).as_deref(),
            Some("revoked"),
            "{name} /admin/keys: {keys:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// 8. Audit from any node
// ---------------------------------------------------------------------------

#[tokio::test]
async fn audit_of_a_revocation_is_visible_on_every_node() {
    let redis = RedisProcess::start().await;
    let nodes = fast().redis(&redis).start_nodes(3).await;
    let reason = format!("cluster audit {}", now_ms());
    let rev = nodes[0]
        .admin_revoke("session", Some("sid-cluster-audit"), &reason)
        .await;
    for (i, n) in nodes.iter().enumerate() {
        let reason = &reason;
        let rec = eventually(DEADLINE, "audit record on every node", || async move {
            n.audit(0)
                .await
                .into_iter()
                .find(|r| r["reason"] == reason.as_str())
                .ok_or_else(|| format!("no record with reason {reason:?} on {}", NAMES[i]))
        })
        .await;
        assert_eq!(rec["action"], "revoke", "{rec}");
        assert_eq!(rec["actor"], clients::admin().id.as_str(), "{rec}");
        let target = rec["target"].as_str().expect("target");
        assert!(
            target.contains("sid-cluster-audit"),
            "target {target:?} (revocation {rev})"
        );
        assert!(
            rec["seq"].as_u64().is_some() && rec["time"].as_i64().is_some(),
            "{rec}"
        );
    }
    // The same log, in the same order, everywhere.
    let mut logs = BTreeMap::new();
    for (i, n) in nodes.iter().enumerate() {
        let seqs: Vec<u64> = n
            .audit(0)
            .await
            .iter()
            .map(|r| r["seq"].as_u64().unwrap())
            .collect();
        logs.insert(NAMES[i], seqs);
    }
    let first = logs.values().next().unwrap().clone();
    assert!(logs.values().all(|l| *l == first), "{logs:?}");
}
