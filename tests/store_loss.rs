//! A store that forgets (issue 8): Redis restored from an older snapshot, `FLUSHALL`, the
//! revocation state deleted, an embedded data directory replaced by an older copy, replica
//! acknowledgements, and readiness only with a live announcement feed.
//!
//! The invariant checked in every case: no token issued before the loss and no revoked
//! token reads `active:true` afterwards, and revocations made after the loss cover tokens
//! stamped before it. docs/ARCHITECTURE.md "Epochs: when the store forgets".
//! Nothing here asserts on timing; waits poll to a generous deadline, and the measured
//! durations are printed (`cargo test --test store_loss -- --nocapture`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use hyper::StatusCode;
use serde_json::{json, Value};
use testkit::clients;
use testkit::prelude::*;

/// Short staleness so fail-closed shows quickly.
fn fast() -> ServerBuilder {
    TestServer::builder().config(|c| c.store.max_staleness = secs(1))
}

fn claims(token: &str) -> Value {
    decode_jwt(token).1
}

/// Introspection that retries 503s (a node catching up after the store came back), and
/// fails the test on any other non-200. `true` for active.
async fn active_eventually_answered(node: &TestServer, token: &str, what: &str) -> bool {
    let rs = clients::rs_all();
    eventually(DEADLINE, what, || {
        let http = node.http.clone();
        let rs = rs.clone();
        async move {
            let r = http
                .post_form("/introspect", &[("token", token)], rs.auth())
                .await;
            match r.status {
                StatusCode::OK => match r.json()["active"] {
                    Value::Bool(b) => Ok(b),
                    _ => panic!("{what}: introspection without active: {}", r.text()),
                },
                StatusCode::SERVICE_UNAVAILABLE => Err(format!("503 {}", r.text())),
                s => panic!("{what}: unexpected {s} {}", r.text()),
            }
        }
    })
    .await
}

/// Asserts `token` reads inactive on every node (503 while catching up is allowed,
/// `active:true` never).
async fn assert_inactive(nodes: &[&TestServer], token: &str, what: &str) {
    for (i, n) in nodes.iter().enumerate() {
        assert!(
            !active_eventually_answered(n, token, what).await,
            "{what}: node {i} answers active:true\n{}",
            n.diagnostics()
        );
    }
}

/// Waits until `token` reads inactive on every node, then checks it stays so: for a
/// revocation made on another node (propagation), and for a loss no request reveals (a
/// `FLUSHALL`, a deleted key), which each node finds at its next head check.
async fn await_inactive(nodes: &[&TestServer], token: &str, what: &str) {
    let found = Instant::now();
    for (i, n) in nodes.iter().enumerate() {
        eventually(DEADLINE, what, || async {
            if active_eventually_answered(n, token, what).await {
                Err(format!("node {i} still active"))
            } else {
                Ok(())
            }
        })
        .await;
    }
    eprintln!(
        "{what}: inactive everywhere {:?} after the loss",
        found.elapsed()
    );
    assert_inactive(nodes, token, what).await;
}

/// `/admin/revoke` retrying 503s.
async fn revoke_retrying(node: &TestServer, kind: &str, value: Option<&str>) -> Value {
    let mut body = json!({"kind": kind, "reason": "store loss test"});
    if let Some(v) = value {
        body["value"] = json!(v);
    }
    eventually(DEADLINE, "/admin/revoke answers 200", || {
        let http = node.http.clone();
        let body = body.clone();
        async move {
            let r = http
                .post_json("/admin/revoke", &body, clients::admin().auth())
                .await;
            match r.status {
                StatusCode::OK => Ok(r.json()),
                StatusCode::SERVICE_UNAVAILABLE => Err(format!("503 {}", r.text())),
                s => panic!("/admin/revoke: unexpected {s} {}", r.text()),
            }
        }
    })
    .await
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn replace_dir(dir: &Path, with: &Path) {
    std::fs::remove_dir_all(dir).unwrap();
    copy_dir(with, dir);
}

/// A snapshot of Redis's persistence (its AOF directory), taken while nothing writes.
fn redis_snapshot(redis: &RedisProcess, into: &Path) -> PathBuf {
    let aof = redis.dir.path().join("appendonlydir");
    let to = into.join("appendonlydir");
    copy_dir(&aof, &to);
    to
}

/// Crashes Redis, puts `snapshot` back as its persistence, starts it again.
async fn redis_restore(redis: &mut RedisProcess, snapshot: &Path) {
    redis.stop();
    replace_dir(&redis.dir.path().join("appendonlydir"), snapshot);
    redis.start_again().await;
}

async fn audit_actions(node: &TestServer) -> Vec<String> {
    let r = node
        .get("/admin/audit?since=0&limit=1000", clients::admin().auth())
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap_or("").to_string())
        .collect()
}

// ---------------------------------------------------------------------------
// Redis restored from an older snapshot: the issue's scenario 1
// ---------------------------------------------------------------------------

#[tokio::test]
async fn redis_restored_from_an_older_snapshot_brings_no_token_back() {
    let mut redis = RedisProcess::start().await;
    let cfg = fast().redis(&redis);
    let node1 = cfg.start().await;
    let mut node2 = cfg.start().await;
    let orders = clients::orders();
    let billing = clients::billing();

    // Before the snapshot: a token that will be revoked after it, and a bystander.
    let victim = node1.issue(&orders, &[]).await;
    let bystander = node2.issue(&billing, &[]).await;
    let backup = tempfile::tempdir().unwrap();
    let snapshot = redis_snapshot(&redis, backup.path());

    // After the snapshot: three revocations (the victim among them), then a token T
    // stamped above everything the snapshot holds.
    node1.revoke(&orders, &victim).await;
    revoke_retrying(&node2, "subject", Some("somebody")).await;
    let last = revoke_retrying(&node1, "subject", Some("somebody-else")).await;
    let last_seq = last["seq"].as_u64().unwrap();
    eventually(DEADLINE, "node 1 stamps the last revocation", || {
        let node1 = &node1;
        let orders = orders.clone();
        async move {
            let t = node1.issue(&orders, &[]).await;
            if rsq(&t) >= last_seq {
                Ok(())
            } else {
                Err(format!("rsq {}", rsq(&t)))
            }
        }
    })
    .await;
    let t = node1.issue(&orders, &[]).await;
    assert!(rsq(&t) >= last_seq);
    assert!(!node1.is_active(&victim).await);

    // Redis comes back from the snapshot; node 1 keeps running, node 2 restarts.
    let down = Instant::now();
    redis_restore(&mut redis, &snapshot).await;
    // Until node 1 reaches the restored Redis it answers from its own (pre-loss) view;
    // from its first head check on, it is in the new epoch.
    eventually(DEADLINE, "node 1 sees the new epoch", || async {
        match node1.metric("latch_store_epoch_changes_total").await {
            n if n >= 1.0 => Ok(()),
            n => Err(format!("{n} epoch changes")),
        }
    })
    .await;
    node1.wait_ready().await;
    eprintln!(
        "redis restored: node 1 in the new epoch and ready {:?} after the crash",
        down.elapsed()
    );
    node2.restart().await;

    // Nothing issued before the loss reads active because of it: T's stamp is from a
    // history the store no longer has, and the victim's revocation was written back by
    // node 1, which still held it.
    assert_inactive(&[&node1, &node2], &t, "T (stamped above the snapshot)").await;
    assert_inactive(
        &[&node1, &node2],
        &victim,
        "the victim revoked after the snapshot",
    )
    .await;
    assert!(
        node2.is_active(&bystander).await,
        "a token from before the snapshot that nobody revoked stays active"
    );
    assert!(node1.metric("latch_store_epoch_changes_total").await >= 1.0);
    assert!(node1.metric("latch_revocations_restored_total").await >= 1.0);
    assert!(
        audit_actions(&node2)
            .await
            .iter()
            .any(|a| a == "revocation_restored"),
        "the write-back is audited"
    );

    // The issue's steps on node 2: revoke all, then a client. Revocations after the loss
    // cover tokens stamped before it.
    revoke_retrying(&node2, "all", None).await;
    revoke_retrying(&node2, "client", Some(&orders.id)).await;
    for token in [&t, &victim, &bystander] {
        await_inactive(&[&node1, &node2], token, "after revoke all on node 2").await;
    }
    // More revocations push the store's seq past T's stamp: T stays dead.
    for i in 0..(rsq(&t) + 2) {
        revoke_retrying(&node1, "subject", Some(&format!("filler-{i}"))).await;
    }
    let head: u64 = redis.cmd(&["HGET", "{latch}:rev:state", "seq"]).await;
    assert!(head > rsq(&t), "the seq passed T's stamp ({head})");
    assert_inactive(&[&node1, &node2], &t, "T after the seq passed its stamp").await;

    // The cluster works: a new token is active on both nodes and revocable.
    let fresh = node2.issue(&billing, &[]).await;
    for n in [&node1, &node2] {
        assert!(active_eventually_answered(n, &fresh, "a token issued after everything").await);
    }
    node2.revoke(&billing, &fresh).await;
    await_inactive(&[&node1, &node2], &fresh, "the new token revoked").await;
}

#[tokio::test]
async fn a_restore_is_caught_even_when_every_node_restarted() {
    let mut redis = RedisProcess::start().await;
    let cfg = fast().redis(&redis);
    let mut node = cfg.start().await;
    let orders = clients::orders();

    let before = node.issue(&orders, &[]).await;
    let backup = tempfile::tempdir().unwrap();
    let snapshot = redis_snapshot(&redis, backup.path());
    revoke_retrying(&node, "subject", Some("somebody")).await;
    let last = revoke_retrying(&node, "subject", Some("somebody-else")).await;
    let last_seq = last["seq"].as_u64().unwrap();
    let t = eventually(DEADLINE, "a token stamped above the snapshot", || async {
        let t = node.issue(&orders, &[]).await;
        if rsq(&t) >= last_seq {
            Ok(t)
        } else {
            Err(format!("rsq {}", rsq(&t)))
        }
    })
    .await;

    // No node survives to notice: only Redis itself (its run_id) tells the history changed.
    node.kill9();
    redis_restore(&mut redis, &snapshot).await;
    node.restart().await;
    assert_inactive(&[&node], &t, "T after a restore nobody watched").await;
    // New revocations reuse the lost seqs: T must stay dead when they pass its stamp.
    for i in 0..(rsq(&t) + 1) {
        revoke_retrying(&node, "subject", Some(&format!("filler-{i}"))).await;
    }
    let head: u64 = redis.cmd(&["HGET", "{latch}:rev:state", "seq"]).await;
    assert!(head >= rsq(&t), "the seq reached T's stamp ({head})");
    assert_inactive(&[&node], &t, "T once the seq passed its stamp").await;
    // Revoked tokens stay revoked, tokens from before the snapshot stay valid.
    assert!(node.is_active(&before).await);
    let after = node.issue(&orders, &[]).await;
    assert!(node.is_active(&after).await);
}

// ---------------------------------------------------------------------------
// FLUSHALL and a deleted state key under running nodes
// ---------------------------------------------------------------------------

async fn state_lost_scenario(loss: &[&str]) {
    let redis = RedisProcess::start().await;
    let cfg = fast().redis(&redis);
    let node1 = cfg.start().await;
    let node2 = cfg.start().await;
    let orders = clients::orders();
    let billing = clients::billing();

    let kept = node1.issue(&orders, &[]).await;
    let revoked = node2.issue(&billing, &[]).await;
    node2.revoke(&billing, &revoked).await;
    // Propagation to the other node: wait for it.
    await_inactive(&[&node1, &node2], &revoked, "revoked before the loss").await;

    let _: redis::Value = redis.cmd(loss).await;

    // Every token issued before the loss is inactive from each node's next head check on:
    // its epoch is gone. The revoked one never reads active.
    assert_inactive(&[&node1, &node2], &revoked, "revoked token after the loss").await;
    await_inactive(&[&node1, &node2], &kept, "token from before the loss").await;
    // A revocation after the loss works, and so do new tokens.
    revoke_retrying(&node1, "subject", Some("after-the-loss")).await;
    let fresh = eventually(DEADLINE, "a token is issued after the loss", || {
        let http = node2.http.clone();
        let orders = orders.clone();
        async move {
            let r = http
                .post_form(
                    "/token",
                    &[("grant_type", "client_credentials")],
                    orders.auth(),
                )
                .await;
            match r.status {
                StatusCode::OK => Ok(r.json()["access_token"].as_str().unwrap().to_string()),
                s => Err(format!("{s} {}", r.text())),
            }
        }
    })
    .await;
    for n in [&node1, &node2] {
        assert!(active_eventually_answered(n, &fresh, "new token after the loss").await);
    }
    node1.revoke(&orders, &fresh).await;
    await_inactive(&[&node1, &node2], &fresh, "new token revoked").await;
    assert_inactive(&[&node1, &node2], &kept, "old token, at the end").await;
}

#[tokio::test]
async fn flushall_under_running_nodes_brings_no_token_back() {
    state_lost_scenario(&["FLUSHALL"]).await;
}

#[tokio::test]
async fn deleting_the_revocation_state_brings_no_token_back() {
    state_lost_scenario(&["DEL", "{latch}:rev:state"]).await;
}

// ---------------------------------------------------------------------------
// The embedded store: a data directory replaced by an older copy; store recover
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_older_embedded_data_dir_and_store_recover() {
    let mut s = fast().start().await;
    let orders = clients::orders();
    let billing = clients::billing();

    let revoked_before = s.issue(&orders, &[]).await;
    s.revoke(&orders, &revoked_before).await;
    let revoked_after = s.issue(&billing, &[]).await;
    // The copy, taken offline.
    s.kill9();
    let backup = tempfile::tempdir().unwrap();
    copy_dir(&s.data_path, backup.path());
    s.restart().await;

    // After the copy: a revocation and a token T stamped above the copy.
    s.revoke(&billing, &revoked_after).await;
    revoke_retrying(&s, "subject", Some("nobody")).await;
    let t = s.issue(&orders, &[]).await;
    assert!(s.is_active(&t).await);

    // The directory goes back to the copy.
    s.kill9();
    replace_dir(&s.data_path, backup.path());
    s.restart().await;
    assert_inactive(&[&s], &t, "T, stamped after the copy was taken").await;
    assert_inactive(&[&s], &revoked_before, "revoked before the copy").await;
    for i in 0..(rsq(&t) + 1) {
        revoke_retrying(&s, "subject", Some(&format!("filler-{i}"))).await;
    }
    assert_inactive(&[&s], &t, "T once new seqs passed its stamp").await;

    // The revocation made after the copy is gone with it; nothing on this node held it.
    // The operator's step: recover, revoking everything issued before.
    let admin = clients::admin();
    let mut cmd = latch_cmd_async();
    cmd.args(["store", "recover", "--reason", "restored an older backup"])
        .arg("--revoke-all")
        .args(["--server", &s.base_url(), "--json"])
        .env("LATCH_ADMIN_CLIENT_ID", &admin.id)
        .env("LATCH_ADMIN_CLIENT_SECRET", &admin.secret);
    let (st, out, err) = run_cli(cmd).await;
    assert!(st.success(), "store recover failed: {out}\n{err}");
    let answer: Value = serde_json::from_str(&out).expect("JSON answer");
    assert!(answer["revoked_all_seq"].as_u64().is_some(), "{answer}");
    assert_eq!(answer["epoch"].as_str().map(str::len), Some(16), "{answer}");

    for token in [&t, &revoked_before, &revoked_after] {
        assert_inactive(&[&s], token, "after store recover --revoke-all").await;
    }
    let actions = audit_actions(&s).await;
    assert!(
        actions.iter().any(|a| a == "store_recover"),
        "store recover is audited: {actions:?}"
    );
    // New tokens work.
    let fresh = s.issue(&orders, &[]).await;
    assert!(s.is_active(&fresh).await);

    // Bad input is a clear 400, and only admins may recover.
    let r = s
        .post_json(
            "/admin/store/recover",
            &json!({"reason": ""}),
            clients::admin().auth(),
        )
        .await;
    r.assert_error(400, "invalid_request");
    let r = s
        .post_json(
            "/admin/store/recover",
            &json!({"reason": "x"}),
            clients::orders().auth(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
}

// ---------------------------------------------------------------------------
// Acknowledged means replicated
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_revocation_is_answered_only_once_a_replica_has_it() {
    let redis = RedisProcess::start().await;
    let mut replica = RedisProcess::replica_of(&redis).await;
    let node = fast()
        .redis(&redis)
        .config(|c| {
            c.store.min_replicas_ack = Some(1);
            c.store.replica_ack_timeout = Some(ms(200));
        })
        .start()
        .await;
    let orders = clients::orders();

    // With the replica up: 200, and the replica holds the revocation.
    let ok = revoke_retrying(&node, "subject", Some("replicated")).await;
    let seq = ok["seq"].as_u64().unwrap();
    let replica_url = format!("redis://127.0.0.1:{}", replica.port);
    let on_replica: u64 = {
        let client = redis::Client::open(replica_url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("HGET")
            .arg("{latch}:rev:state")
            .arg("seq")
            .query_async(&mut conn)
            .await
            .unwrap()
    };
    assert!(on_replica >= seq, "replica has seq {on_replica} < {seq}");

    // With the replica gone: 503 with Retry-After, nothing half-promised, and the node
    // stays consistent (ready, answering, its tokens intact).
    let token = node.issue(&orders, &[]).await;
    replica.stop();
    let refused = Instant::now();
    let r = eventually(
        DEADLINE,
        "a revocation is refused without a replica",
        || {
            let http = node.http.clone();
            async move {
                let r = http
                    .post_json(
                        "/admin/revoke",
                        &json!({"kind": "subject", "value": "unreplicated", "reason": "x"}),
                        clients::admin().auth(),
                    )
                    .await;
                match r.status {
                    StatusCode::SERVICE_UNAVAILABLE => Ok(r),
                    s => Err(format!("{s} {}", r.text())),
                }
            }
        },
    )
    .await;
    eprintln!(
        "without a replica: 503 after {:?} (replica_ack_timeout 200ms)",
        refused.elapsed()
    );
    r.assert_error(503, "temporarily_unavailable");
    assert!(r.header("retry-after").is_some());
    let r = node
        .post_form("/revoke", &[("token", &token)], orders.auth())
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    node.wait_ready().await;
    assert!(
        node.is_active(&token).await,
        "a refused revocation is not applied by the node that refused it"
    );

    // The replica returns: revocations are answered 200 again and take effect.
    let _replica2 = RedisProcess::replica_of(&redis).await;
    let jti = claims(&token)["jti"].as_str().unwrap().to_string();
    revoke_retrying(&node, "token", Some(&jti)).await;
    assert_inactive(&[&node], &token, "revoked once a replica is back").await;
}

// ---------------------------------------------------------------------------
// Feed first, then ready
// ---------------------------------------------------------------------------

#[tokio::test]
async fn after_a_redis_restart_ready_means_the_feed_is_live() {
    let mut redis = RedisProcess::start().await;
    let nodes = fast().redis(&redis).start_nodes(2).await;
    let orders = clients::orders();

    let token = nodes[1].issue(&orders, &[]).await;
    let down = Instant::now();
    redis.stop();
    redis.start_again().await;
    for n in &nodes {
        // The restart is a new epoch (another run_id): seeing it proves the node has
        // reached the new Redis; from then on, ready must mean subscribed.
        eventually(DEADLINE, "the node sees the restart", || async {
            match n.metric("latch_store_epoch_changes_total").await {
                c if c >= 1.0 => Ok(()),
                c => Err(format!("{c} epoch changes")),
            }
        })
        .await;
        n.wait_ready().await;
    }
    eprintln!(
        "redis restart: both nodes ready {:?} after the crash",
        down.elapsed()
    );
    // Ready only with a live subscription: both nodes are subscribed now.
    let subs: Vec<redis::Value> = redis.cmd(&["PUBSUB", "NUMSUB", "{latch}:events"]).await;
    let n: i64 = match subs.get(1) {
        Some(redis::Value::Int(n)) => *n,
        other => panic!("PUBSUB NUMSUB: {other:?}"),
    };
    assert!(n >= 2, "{n} subscribers once both nodes are ready");

    let sent = Instant::now();
    nodes[0].revoke(&orders, &token).await;
    let seen = eventually(DEADLINE, "node 2 sees the revocation", || async {
        if active_eventually_answered(&nodes[1], &token, "node 2").await {
            Err("still active".to_string())
        } else {
            Ok(sent.elapsed())
        }
    })
    .await;
    eprintln!("propagation after the restart: {seen:?}");
}

// ---------------------------------------------------------------------------
// A grant revoked after the snapshot stays revoked (issue 11)
// ---------------------------------------------------------------------------

/// An admin JSON call; panics unless `want`.
async fn admin_json(node: &TestServer, path: &str, body: Value, want: u16) -> Value {
    let r = node.post_json(path, &body, clients::admin().auth()).await;
    assert_eq!(r.status, want, "{path}: {}", r.text());
    r.json()
}

#[tokio::test]
async fn a_grant_revoked_after_the_snapshot_stays_revoked_after_a_restore() {
    const SCOPE: &str = "orders:refund-any";
    let mut redis = RedisProcess::start().await;
    let cfg = fast().redis(&redis);
    let node1 = cfg.start().await;
    let mut node2 = cfg.start().await;
    let orders = clients::orders();

    // The policy (in the snapshot): orders-service may be elevated, security-admin approves.
    let admin = clients::admin();
    let reg = node1.get("/admin/scopes", admin.auth()).await.json();
    let mut registry = reg["registry"].clone();
    registry["scopes"][SCOPE] = json!({"description": "break glass"});
    let body = json!({"base_version": reg["latest_version"], "registry": registry, "changelog": "x", "reason": "x"});
    admin_json(&node1, "/admin/scopes", body, 200).await;
    let h = node1
        .get("/admin/contracts/orders-service", admin.auth())
        .await
        .json();
    let last = h["history"].as_array().unwrap().last().unwrap().clone();
    let mut contract = last["body"]["content"].clone();
    contract["elevations"] =
        json!({SCOPE: {"max_duration_secs": 3600, "approvers": ["security-admin"]}});
    let body = json!({"base_version": last["version"], "contract": contract, "changelog": "x", "reason": "x"});
    admin_json(&node1, "/admin/contracts/orders-service", body, 200).await;
    // A grant, approved, and a token carrying it (all in the snapshot).
    let ask = json!({"scope": SCOPE, "duration_secs": 3600, "justification": "INC-1"});
    let r = node1.post_json("/grants", &ask, orders.auth()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    admin_json(
        &node1,
        &format!("/admin/grants/{id}/approve"),
        json!({"reason": "ok"}),
        200,
    )
    .await;
    let t = node1.issue(&orders, &[("scope", SCOPE)]).await;
    assert_eq!(claims(&t)["grant"], id.as_str());
    for n in [&node1, &node2] {
        assert!(active_eventually_answered(n, &t, "the elevated token").await);
    }
    let backup = tempfile::tempdir().unwrap();
    let snapshot = redis_snapshot(&redis, backup.path());

    // After the snapshot: the grant is revoked.
    admin_json(
        &node1,
        &format!("/admin/grants/{id}/revoke"),
        json!({"reason": "done"}),
        200,
    )
    .await;
    await_inactive(&[&node1, &node2], &t, "the grant revoked").await;

    // Redis comes back from the snapshot (the grant approved again there); node 1 keeps
    // running and writes back the version it holds; node 2 restarts and loads the store.
    redis_restore(&mut redis, &snapshot).await;
    eventually(DEADLINE, "node 1 sees the new epoch", || async {
        match node1.metric("latch_store_epoch_changes_total").await {
            n if n >= 1.0 => Ok(()),
            n => Err(format!("{n} epoch changes")),
        }
    })
    .await;
    node1.wait_ready().await;
    node2.restart().await;
    assert_inactive(
        &[&node1, &node2],
        &t,
        "the elevated token after the restore",
    )
    .await;
    let g = node2
        .get(&format!("/admin/grants/{id}"), admin.auth())
        .await;
    assert_eq!(g.json()["status"], "revoked", "{}", g.text());
    let r = node2.token_resp(&orders, &[("scope", SCOPE)]).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["reason"], "elevation_not_active");
    assert!(audit_actions(&node2)
        .await
        .iter()
        .any(|a| a == "grant_restored"));
}
