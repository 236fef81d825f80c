//! Proof of effect (issue 17): three latch nodes on a private Redis, the node registry
//! behind `GET /admin/nodes` and `GET /admin/revocations/{seq}`, and the incident CLI
//! (`latch revoke --wait`, `latch keys revoke --wait`, `latch status`).
//!
//! Every wait polls to a deadline; no assertion depends on how fast anything was. The
//! frozen-node test relies on its steps taking less than the node's `max_staleness`
//! (4 s) between the freeze and the first wait, as every fault test here does.

use std::process::ExitStatus;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{json, Value};
use testkit::prelude::*;

/// Heartbeat and expiry of the nodes in these tests (`max_staleness` per test).
fn node_env(b: ServerBuilder, heartbeat: &str, ttl: &str) -> ServerBuilder {
    b.env("LATCH_NODE__HEARTBEAT", heartbeat)
        .env("LATCH_NODE__TTL", ttl)
        // The CLI revokes clients in a loop below: no per-client limits in the way.
        .env("LATCH_LIMITS__REVOKE_RATE", "off")
}

async fn cluster(max_staleness: &str, ttl: &str) -> (RedisProcess, Vec<TestServer>) {
    let redis = RedisProcess::start().await;
    let staleness = humantime::parse_duration(max_staleness).expect("a duration");
    let setup = node_env(
        TestServer::builder()
            .redis(&redis)
            .config(|c| c.store.max_staleness = staleness),
        "200ms",
        ttl,
    );
    let nodes = setup.start_nodes(3).await;
    (redis, nodes)
}

/// `latch ARGS --server URL` as the admin; (status, stdout, stderr).
async fn cli(server: &TestServer, args: &[&str]) -> (ExitStatus, String, String) {
    let admin = clients::admin();
    let mut cmd = latch_cmd_async();
    cmd.args(args)
        .arg("--server")
        .arg(server.base_url())
        .env("LATCH_ADMIN_CLIENT_ID", &admin.id)
        .env("LATCH_ADMIN_CLIENT_SECRET", &admin.secret);
    run_cli(cmd).await
}

/// `GET path` as the admin; panics unless 200.
async fn admin_get(s: &TestServer, path: &str) -> Value {
    let r = s.get(path, clients::admin().auth()).await;
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    r.json()
}

/// The node registry's id of `s` (from `/admin/nodes` on `s` itself).
async fn node_id(s: &TestServer) -> String {
    let nodes = admin_get(s, "/admin/nodes").await;
    let me = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["this_node"] == true)
        .unwrap_or_else(|| panic!("no node marked this_node: {nodes}"));
    me["id"].as_str().unwrap().to_string()
}

/// The row of node `id` in an answer's `nodes`.
fn row<'a>(answer: &'a Value, id: &str) -> &'a Value {
    answer["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["id"] == id))
        .unwrap_or_else(|| panic!("node {id} not in {answer}"))
}

fn seq_of(stdout: &str) -> u64 {
    let rest = stdout
        .split("seq ")
        .nth(1)
        .unwrap_or_else(|| panic!("no seq in {stdout:?}"));
    rest.split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

async fn metric_count(s: &TestServer, name: &str) -> f64 {
    let text = Http::new(s.metrics_addr).get("/metrics", None).await.text();
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_confirms_the_revocation_on_all_three_nodes() {
    let (_redis, nodes) = cluster("2s", "10s").await;
    let ids = [
        node_id(&nodes[0]).await,
        node_id(&nodes[1]).await,
        node_id(&nodes[2]).await,
    ];
    let token = nodes[1].issue(&clients::orders(), &[]).await;
    for n in &nodes {
        assert!(n.is_active(&token).await);
    }
    let (st, out, err) = cli(
        &nodes[0],
        &[
            "revoke",
            "--client",
            "orders-service",
            "--reason",
            "incident 17",
            "--wait",
            "--timeout",
            "15s",
        ],
    )
    .await;
    assert!(st.success(), "--wait did not confirm: {st}\n{out}\n{err}");
    assert!(out.contains("confirmed"), "{out}");
    let seq = seq_of(&out);
    // Once confirmed, the token is inactive on every node.
    for n in &nodes {
        assert!(
            !n.is_active(&token).await,
            "active on {} after --wait",
            n.addr
        );
    }
    let answer = admin_get(&nodes[2], &format!("/admin/revocations/{seq}")).await;
    assert_eq!(answer["confirmed"], true, "{answer}");
    assert_eq!(answer["kind"], "client");
    assert_eq!(answer["value"], "orders-service");
    for id in &ids {
        let r = row(&answer, id);
        assert_eq!(r["status"], "applied", "{answer}");
        assert!(r["applied_at_ms"].is_i64(), "when it applied: {r}");
        assert!(r["after_ms"].as_i64().unwrap() >= 0, "{r}");
        assert!(out.contains(r["name"].as_str().unwrap()), "{out}");
    }
    assert_eq!(answer["counts"]["applied"], 3);
    assert!(answer["reached_last_ms"].is_i64(), "{answer}");
    // The status screen shows the three nodes current and the revocation reaching all.
    let (st, out, err) = cli(&nodes[1], &["status"]).await;
    assert!(st.success(), "{err}");
    for id in &ids {
        assert!(out.contains(id.as_str()), "{out}");
    }
    assert!(out.contains("3 applied, 0 failing closed, 0 gone"), "{out}");
    // Reads are audited.
    let audit = nodes[0].audit(0).await;
    for action in ["revocation_read", "nodes_read"] {
        assert!(
            audit
                .iter()
                .any(|r| r["action"] == action && r["actor"] == clients::admin().id),
            "{action} not audited: {audit:?}"
        );
    }
    // Every node exports the propagation histogram, and observed this revocation.
    for n in &nodes {
        let count = metric_count(n, "latch_revocation_propagation_seconds_count").await;
        assert!(count >= 1.0, "no propagation observed on {}", n.addr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_node_is_pending_then_failing_closed() {
    let (_redis, nodes) = cluster("4s", "60s").await;
    let frozen = node_id(&nodes[2]).await;
    nodes[2].signal("STOP");
    // Each attempt is a new revocation, waited for briefly. Until the frozen node's last
    // freshness proof is older than its max_staleness, it is pending and the CLI exits
    // non-zero naming it; from then on it is failing closed and the CLI exits 0.
    let refused = AtomicUsize::new(0);
    let (first, frozen_id, count) = (&nodes[0], &frozen, &refused);
    let last = eventually(
        DEADLINE,
        "the frozen node is reported failing closed",
        move || async move {
            let frozen = frozen_id;
            let (st, out, err) = cli(
                first,
                &[
                    "revoke",
                    "--client",
                    "billing-service",
                    "--reason",
                    "freeze",
                    "--wait",
                    "--timeout",
                    "300ms",
                    "--json",
                ],
            )
            .await;
            let answer: Value = serde_json::from_str(out.trim_start_matches(|c| c != '{'))
                .unwrap_or_else(|e| panic!("--json output ({e}): {out}\n{err}"));
            let status = row(&answer, frozen)["status"].clone();
            if st.success() {
                return Ok((answer, status));
            }
            assert_eq!(st.code(), Some(3), "{out}\n{err}");
            assert_eq!(
                status, "pending",
                "a non-zero exit names a pending node: {answer}"
            );
            assert!(
                err.contains(frozen.as_str()),
                "the pending node is named: {err}"
            );
            assert_eq!(answer["waiting_for"], json!([frozen]));
            count.fetch_add(1, Ordering::SeqCst);
            Err(format!("still pending: {status}"))
        },
    )
    .await;
    let (answer, status) = last;
    assert!(
        refused.load(Ordering::SeqCst) >= 1,
        "the frozen node was never seen pending"
    );
    assert_eq!(status, "failing_closed", "{answer}");
    assert_eq!(answer["confirmed"], true);
    let r = row(&answer, &frozen);
    assert!(
        r["fresh_age_ms"].as_i64().unwrap() > r["max_staleness_ms"].as_i64().unwrap(),
        "{r}"
    );
    // The other two applied it.
    let applied = answer["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["status"] == "applied")
        .count();
    assert_eq!(applied, 2, "{answer}");
    let seq = answer["seq"].as_u64().unwrap();
    // Thawed, it catches up and says so.
    nodes[2].signal("CONT");
    eventually(DEADLINE, "the thawed node applied it", || async {
        let a = admin_get(&nodes[1], &format!("/admin/revocations/{seq}")).await;
        match row(&a, &frozen)["status"].as_str() {
            Some("applied") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_gone_and_not_waited_for_and_its_restart_reports_catch_up() {
    let (_redis, mut nodes) = cluster("2s", "3s").await;
    let killed = node_id(&nodes[2]).await;
    nodes[2].kill9();
    eventually(DEADLINE, "the killed node is reported gone", || async {
        let a = admin_get(&nodes[0], "/admin/nodes").await;
        match row(&a, &killed)["state"].as_str() {
            Some("gone") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let (st, out, err) = cli(
        &nodes[0],
        &[
            "revoke",
            "--subject",
            "carol",
            "--reason",
            "gone",
            "--wait",
            "--timeout",
            "15s",
            "--json",
        ],
    )
    .await;
    assert!(st.success(), "a gone node is not waited for: {out}\n{err}");
    let answer: Value = serde_json::from_str(out.trim_start_matches(|c| c != '{')).unwrap();
    assert_eq!(row(&answer, &killed)["status"], "gone", "{answer}");
    assert_eq!(answer["counts"]["applied"], 2, "{answer}");
    let seq = answer["seq"].as_u64().unwrap();

    // The node comes back as a new process: a new id, which read the revocation from the
    // log while catching up at start.
    nodes[2].restart().await;
    let restarted = node_id(&nodes[2]).await;
    assert_ne!(restarted, killed);
    let a = admin_get(&nodes[0], &format!("/admin/revocations/{seq}")).await;
    let r = row(&a, &restarted);
    assert_eq!(r["status"], "applied", "{a}");
    assert_eq!(r["on_start"], true, "{r}");
    assert!(
        r["applied_at_ms"].as_i64().unwrap() >= r["started_at_ms"].as_i64().unwrap(),
        "{r}"
    );
    assert_eq!(row(&a, &killed)["status"], "gone");
    assert_eq!(a["confirmed"], true);
    let (st, out, _) = cli(&nodes[2], &["status"]).await;
    assert!(st.success());
    assert!(out.contains(&restarted) && out.contains(&killed), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_to_the_registry_endpoints_get_clear_errors() {
    let s = TestServer::builder().start().await;
    let admin = clients::admin();
    let seq = s.admin_revoke("subject", Some("dave"), "hostile").await["seq"]
        .as_u64()
        .unwrap();
    let ok = s
        .get(&format!("/admin/revocations/{seq}"), admin.auth())
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let cases: &[(&str, u16, &str, &str)] = &[
        (
            "/admin/revocations/999999",
            404,
            "not_found",
            "no revocation with seq 999999",
        ),
        ("/admin/revocations/0", 400, "invalid_request", "at least 1"),
        (
            "/admin/revocations/-1",
            400,
            "invalid_request",
            "decimal integer",
        ),
        (
            "/admin/revocations/abc",
            400,
            "invalid_request",
            "decimal integer",
        ),
        (
            "/admin/revocations/1e3",
            400,
            "invalid_request",
            "decimal integer",
        ),
        (
            "/admin/revocations/0x1",
            400,
            "invalid_request",
            "decimal integer",
        ),
        (
            "/admin/revocations/%31",
            400,
            "invalid_request",
            "decimal integer",
        ),
        (
            "/admin/revocations/18446744073709551616",
            400,
            "invalid_request",
            "out of range",
        ),
        (
            "/admin/revocations/99999999999999999999999999999999999999999999",
            400,
            "invalid_request",
            "out of range",
        ),
        (
            "/admin/revocations/18446744073709551615",
            404,
            "not_found",
            "no revocation",
        ),
        ("/admin/revocations/", 404, "not_found", "no such resource"),
        (
            "/admin/revocations/1/x",
            404,
            "not_found",
            "no such resource",
        ),
    ];
    for (path, status, code, says) in cases {
        let r = s.get(path, admin.auth()).await;
        r.assert_error(*status, code);
        let why = r.json()["error_description"].as_str().unwrap().to_string();
        assert!(why.contains(says), "{path}: {why}");
    }
    let path = format!("/admin/revocations/{seq}");
    for p in [path.as_str(), "/admin/nodes"] {
        s.get(p, None).await.assert_error(401, "invalid_client");
        s.get(p, clients::rs_all().auth())
            .await
            .assert_error(403, "unauthorized_client");
        let r = s.post_json(p, &json!({}), admin.auth()).await;
        r.assert_error(405, "method_not_allowed");
        assert_eq!(r.header("allow").as_deref(), Some("GET"));
    }
}

/// The embedded store has the one node, through the same interface, and the CLI waits
/// for key revocations too.
#[tokio::test]
async fn an_embedded_node_is_its_own_registry() {
    let s = node_env(TestServer::builder(), "200ms", "10s")
        .env("LATCH_NODE__NAME", "solo")
        .start()
        .await;
    let nodes = admin_get(&s, "/admin/nodes").await;
    let list = nodes["nodes"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{nodes}");
    assert_eq!(list[0]["name"], "solo");
    assert_eq!(list[0]["address"], s.addr.to_string());
    assert_eq!(list[0]["state"], "current", "{nodes}");
    assert_eq!(list[0]["this_node"], true);

    let (st, out, err) = cli(
        &s,
        &["revoke", "--subject", "erin", "--reason", "solo", "--wait"],
    )
    .await;
    assert!(st.success(), "{out}\n{err}");
    assert!(out.contains("solo") && out.contains("applied"), "{out}");

    let kid = kids_in_state(&s.admin_keys().await, "next")[0].clone();
    let (st, out, err) = cli(
        &s,
        &[
            "keys",
            "revoke",
            &kid,
            "--reason",
            "leak",
            "--wait",
            "--timeout",
            "10s",
        ],
    )
    .await;
    assert!(st.success(), "{out}\n{err}");
    assert!(out.contains("key set version"), "{out}");
    let (st, out, _) = cli(&s, &["status"]).await;
    assert!(st.success());
    assert!(out.contains("1 revoked"), "keys by state: {out}");
    assert!(out.contains("erin"), "recent revocations: {out}");
}

/// A gone node must be provably failing closed too: `node.ttl` has to outlast
/// `store.max_staleness` and its margin, and `latch check` names the key otherwise.
#[tokio::test]
async fn check_refuses_a_node_ttl_that_a_stale_node_could_outlive() {
    let dir = tempfile::tempdir().unwrap();
    let path = TestServer::builder().write_config(dir.path());
    for (env, ok, says) in [
        (vec![("LATCH_NODE__TTL", "2s")], false, "node.ttl"),
        (vec![("LATCH_NODE__TTL", "2071ms")], true, ""),
        (
            vec![("LATCH_NODE__TTL", "3s"), ("LATCH_NODE__HEARTBEAT", "2s")],
            false,
            "node.ttl",
        ),
        (
            vec![("LATCH_NODE__HEARTBEAT", "5ms")],
            false,
            "node.heartbeat",
        ),
        (vec![("LATCH_NODE__NAME", "")], false, "node.name"),
        (vec![("LATCH_NODE__ACKS", "false")], true, ""),
        // The default ttl follows a long max_staleness; an explicit one must cover it.
        (vec![("LATCH_STORE__MAX_STALENESS", "30s")], true, ""),
        (
            vec![
                ("LATCH_STORE__MAX_STALENESS", "30s"),
                ("LATCH_NODE__TTL", "10s"),
            ],
            false,
            "node.ttl",
        ),
    ] {
        let mut cmd = latch_cmd_async();
        cmd.arg("check").arg("--config").arg(&path);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let (st, out, err) = run_cli(cmd).await;
        assert_eq!(st.success(), ok, "{env:?}: {out}{err}");
        assert!(err.contains(says), "{env:?}: {err}");
    }
}
