//! The `latch` command line: check, gen-secret, operator verbs, demo-secret
//! refusal, graceful shutdown.

use std::path::Path;

use serde_json::Value;
use testkit::clients;
use testkit::prelude::*;

fn write_config(dir: &Path, cfg: &ServerBuilder) -> std::path::PathBuf {
    cfg.write_config(dir)
}

async fn check(path: &Path, env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = latch_cmd_async();
    cmd.arg("check").arg("--config").arg(path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let (st, out, err) = run_cli(cmd).await;
    (st.success(), format!("{out}\n{err}"))
}

#[tokio::test]
async fn check_accepts_a_good_config() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_config(dir.path(), &TestServer::builder());
    let (ok, out) = check(&p, &[]).await;
    assert!(ok, "check rejected a good config: {out}");
}

#[tokio::test]
async fn check_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = TestServer::builder();
    let good_text = good.render(dir.path(), &dir.path().join("data"));
    let case = |f: &dyn Fn(&mut Config)| good.clone().config(f);

    let cases: Vec<(&str, ServerBuilder)> = vec![
        (
            "clients[0].secret_sha256",
            case(&|c| c.clients[0].secret_sha256_override = Some("xyz".into())),
        ),
        (
            "clients[1].secret_sha256",
            case(&|c| c.clients[1].secret_sha256_override = Some("G".repeat(64))),
        ),
        (
            "tokens.access_ttl",
            case(&|c| c.tokens.access_ttl = hours(2)),
        ),
        (
            "tokens.leeway",
            good.clone().raw_toml("tokens.leeway = \"soon\""),
        ),
        ("tokens.bogus", good.clone().raw_toml("tokens.bogus = 1")),
        (
            "keys.publish_ahead",
            case(&|c| c.keys.publish_ahead = hours(48)),
        ),
        (
            "keys.algorithm",
            good.clone().raw_toml("keys.algorithm = \"HS256\""),
        ),
        ("clients[2].roles", {
            assert_eq!(good.config.clients[2].id, "gateway-rs");
            case(&|c| c.clients[2].roles = vec!["superuser".into()])
        }),
    ];
    let mut failures = vec![];
    for (key, cfg) in cases {
        let bad = tempfile::tempdir().unwrap();
        let p = cfg.write_config(bad.path());
        let text = std::fs::read_to_string(&p).unwrap();
        assert_ne!(
            text,
            good.render(bad.path(), &bad.path().join("data")),
            "test case {key} did not change the config"
        );
        let (ok, out) = check(&p, &[]).await;
        if ok {
            failures.push(format!("{key}: check accepted the bad config"));
        } else if !out.contains(key) {
            failures.push(format!("{key}: output does not name the key: {out}"));
        }
    }
    // Environment overrides are validated too.
    let p = dir.path().join("good.toml");
    std::fs::write(&p, &good_text).unwrap();
    let (ok, out) = check(&p, &[("LATCH_TOKENS__ACCESS_TTL", "2h")]).await;
    if ok || !out.contains("tokens.access_ttl") {
        failures.push(format!(
            "LATCH_TOKENS__ACCESS_TTL=2h: ok={ok}, output {out}"
        ));
    }
    // Missing file.
    let (ok, _) = check(&dir.path().join("missing.toml"), &[]).await;
    if ok {
        failures.push("missing config file accepted".into());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn candidates(out: &str) -> Vec<String> {
    let mut v = vec![];
    for tok in out.split_whitespace() {
        let t = tok.trim_matches(|c| matches!(c, '"' | '\'' | ',' | ';'));
        v.push(t.to_string());
        for sep in ['=', ':'] {
            if let Some((_, rest)) = t.split_once(sep) {
                v.push(rest.trim_matches('"').to_string());
            }
        }
    }
    v.retain(|s| !s.is_empty());
    v
}

async fn gen_secret() -> (String, String) {
    let mut cmd = latch_cmd_async();
    cmd.arg("gen-secret");
    let (st, out, err) = run_cli(cmd).await;
    assert!(st.success(), "gen-secret failed: {out} {err}");
    let c = candidates(&out);
    let hashes: Vec<&String> = c
        .iter()
        .filter(|s| s.len() == 64 && s.chars().all(|ch| matches!(ch, '0'..='9' | 'a'..='f')))
        .collect();
    assert!(
        !hashes.is_empty(),
        "no lowercase sha256 hex in output: {out}"
    );
    for h in &hashes {
        if let Some(secret) = c.iter().find(|s| &sha256_hex(s.as_bytes()) == *h) {
            return (secret.clone(), (*h).clone());
        }
    }
    panic!("no printed value hashes to the printed secret_sha256: {out}");
}

#[tokio::test]
async fn gen_secret_prints_secret_and_its_hash() {
    let (s1, h1) = gen_secret().await;
    let (s2, h2) = gen_secret().await;
    assert!(s1.len() >= 32, "secret too short: {s1}");
    assert_ne!(s1, s2, "gen-secret is not random");
    assert_ne!(h1, h2);

    // The generated secret works as a client secret.
    let client = ClientDef::new("generated")
        .secret(&s1)
        .roles(&["introspect"]);
    let cfg = TestServer::builder().clients(vec![clients::orders(), client.clone()]);
    assert_eq!(client.secret_sha256(), h1);
    let s = cfg.start().await;
    let t = s.issue(&clients::orders(), &[]).await;
    assert_eq!(s.introspect_as(&client, &t).await["active"], true);
}

/// Demo secrets from the shipped config (`# demo secret: X` comments).
fn demo_secrets() -> Vec<String> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/latch.toml");
    let Ok(text) = std::fs::read_to_string(&p) else {
        return vec![];
    };
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("# demo secret:"))
        .map(|s| s.trim().to_string())
        .collect()
}

#[tokio::test]
async fn shipped_config_is_valid_and_its_demo_secrets_match() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/latch.toml");
    let text = std::fs::read_to_string(&p).expect("config/latch.toml");
    let (ok, out) = check(&p, &[]).await;
    assert!(ok, "shipped config fails check: {out}");
    let secrets = demo_secrets();
    assert!(!secrets.is_empty(), "no '# demo secret:' comments");
    for s in &secrets {
        assert!(s.len() >= 32, "demo secret shorter than 32 bytes: {s}");
        assert!(
            text.contains(&sha256_hex(s.as_bytes())),
            "demo secret {s} does not match any secret_sha256"
        );
    }
}

#[tokio::test]
async fn demo_secrets_refused_on_non_loopback() {
    let secrets = demo_secrets();
    assert!(
        !secrets.is_empty(),
        "no demo secrets found in config/latch.toml"
    );
    for demo in secrets {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TestServer::builder()
            .config(|c| c.listen = "0.0.0.0:0".parse().unwrap())
            .clients(vec![
                clients::orders(),
                ClientDef::new("demo-user")
                    .secret(&demo)
                    .roles(&["introspect"]),
            ]);
        let p = write_config(dir.path(), &cfg);
        let (ok, out) = check(&p, &[]).await;
        assert!(!ok, "check accepted demo secret on 0.0.0.0: {out}");
        // The refusal names a config key: the offending client's secret or
        // the listen address.
        assert!(
            out.contains("clients[1].secret_sha256") || out.contains("`listen`"),
            "check output does not name the key: {out}"
        );

        let mut cmd = latch_cmd_async();
        cmd.arg("serve")
            .arg("--config")
            .arg(&p)
            .env("LATCH_KEK", TEST_KEK);
        let (st, out, err) = run_cli(cmd).await;
        assert!(!st.success(), "serve ran with a demo secret on 0.0.0.0");
        assert!(
            !out.contains("latch listening on"),
            "serve announced listening: {out}"
        );
        assert!(
            format!("{out}{err}").contains("demo"),
            "serve did not say why: {out} {err}"
        );

        // The same config on loopback is fine, and 0.0.0.0 without demo
        // secrets is fine.
        let cfg_lo = cfg
            .clone()
            .config(|c| c.listen = "127.0.0.1:0".parse().unwrap());
        let p = write_config(dir.path(), &cfg_lo);
        let (ok, out) = check(&p, &[]).await;
        assert!(ok, "demo secret on loopback rejected: {out}");
        let cfg_any = TestServer::builder().config(|c| c.listen = "0.0.0.0:0".parse().unwrap());
        let p = write_config(dir.path(), &cfg_any);
        let (ok, out) = check(&p, &[]).await;
        assert!(ok, "0.0.0.0 without demo secrets rejected: {out}");
    }
}

async fn operator(
    s: &TestServer,
    args: &[&str],
    creds: Option<(&str, &str)>,
) -> (bool, String, String) {
    // `@SERVER` marks where `--server URL` goes; otherwise it is appended.
    let url = s.base_url();
    let mut full: Vec<&str> = vec![];
    for a in args {
        if *a == "@SERVER" {
            full.extend(["--server", url.as_str()]);
        } else {
            full.push(a);
        }
    }
    if !args.contains(&"@SERVER") {
        full.extend(["--server", url.as_str()]);
    }
    let mut cmd = latch_cmd_async();
    cmd.args(&full);
    if let Some((id, secret)) = creds {
        cmd.env("LATCH_ADMIN_CLIENT_ID", id)
            .env("LATCH_ADMIN_CLIENT_SECRET", secret);
    }
    let (st, out, err) = run_cli(cmd).await;
    (st.success(), out, err)
}

fn json_list(v: &Value, field: &str) -> Vec<Value> {
    match v {
        Value::Array(a) => a.clone(),
        Value::Object(_) => v[field]
            .as_array()
            .unwrap_or_else(|| panic!("no {field} in {v}"))
            .clone(),
        _ => panic!("unexpected JSON {v}"),
    }
}

#[tokio::test]
async fn operator_revoke_verbs() {
    let s = TestServer::builder().start().await;
    let admin = clients::admin();
    let creds = Some((admin.id.as_str(), admin.secret.as_str()));

    let t_orders = s.issue(&clients::orders(), &[]).await;
    let (ok, out, err) = operator(
        &s,
        &[
            "revoke",
            "--subject",
            "orders-service",
            "--reason",
            "offboarding",
        ],
        creds,
    )
    .await;
    assert!(ok, "revoke --subject failed: {out} {err}");
    assert!(!out.trim().is_empty(), "no table output");
    assert_eq!(s.introspect(&t_orders).await, inactive());

    let t_billing = s.issue(&clients::billing(), &[]).await;
    let (ok, out, err) = operator(
        &s,
        &[
            "revoke",
            "--client",
            "billing-service",
            "--reason",
            "x",
            "--json",
        ],
        creds,
    )
    .await;
    assert!(ok, "revoke --client --json failed: {out} {err}");
    let v: Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("--json output is not JSON ({e}): {out}"));
    assert!(v["seq"].is_u64(), "{v}");
    assert_eq!(v["kind"], "client");
    assert_eq!(v["value"], "billing-service");
    assert_eq!(s.introspect(&t_billing).await, inactive());

    let t = s.issue(&clients::orders(), &[]).await;
    let jti = decode_jwt(&t).1["jti"].as_str().unwrap().to_string();
    let (ok, out, err) = operator(&s, &["revoke", "--token", &jti, "--reason", "x"], creds).await;
    assert!(ok, "revoke --token failed: {out} {err}");
    assert_eq!(s.introspect(&t).await, inactive());

    // Failures exit non-zero and revoke nothing.
    let t = s.issue(&clients::orders(), &[]).await;
    let (ok, _, _) = operator(
        &s,
        &["revoke", "--subject", "orders-service", "--reason", "x"],
        Some((&admin.id, "wrong-secret-wrong-secret-wrong-secret")),
    )
    .await;
    assert!(!ok, "wrong admin credentials exited 0");
    let (ok, _, _) = operator(
        &s,
        &["revoke", "--subject", "orders-service", "--reason", "x"],
        Some((&clients::rs_all().id, &clients::rs_all().secret)),
    )
    .await;
    assert!(!ok, "non-admin credentials exited 0");
    let (ok, _, _) = operator(
        &s,
        &["revoke", "--subject", "orders-service", "--reason", "x"],
        None,
    )
    .await;
    assert!(!ok, "missing credentials exited 0");
    assert!(s.is_active(&t).await, "a failed CLI revoke revoked");

    // Unreachable server.
    let mut cmd = latch_cmd_async();
    cmd.args([
        "revoke",
        "--subject",
        "x",
        "--reason",
        "x",
        "--server",
        "http://127.0.0.1:9",
    ])
    .env("LATCH_ADMIN_CLIENT_ID", &admin.id)
    .env("LATCH_ADMIN_CLIENT_SECRET", &admin.secret);
    let (st, _, _) = run_cli(cmd).await;
    assert!(!st.success(), "unreachable server exited 0");

    // Audit through the CLI.
    let (ok, out, err) = operator(&s, &["audit", "--since", "0"], creds).await;
    assert!(ok, "audit failed: {out} {err}");
    assert!(out.contains("subject:orders-service"), "audit table: {out}");
    let (ok, out, err) = operator(&s, &["audit", "--since", "0", "--json"], creds).await;
    assert!(ok, "audit --json failed: {out} {err}");
    let v: Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("audit --json is not JSON ({e}): {out}"));
    let records = json_list(&v, "records");
    for target in [
        "subject:orders-service",
        "client:billing-service",
        &format!("token:{jti}"),
    ] {
        assert!(
            records
                .iter()
                .any(|r| r["action"] == "revoke" && r["target"] == target),
            "{target} not in CLI audit: {records:?}"
        );
    }
}

#[tokio::test]
async fn operator_key_verbs() {
    let s = TestServer::builder().start().await;
    let admin = clients::admin();
    let creds = Some((admin.id.as_str(), admin.secret.as_str()));
    let active0 = kids_in_state(&s.admin_keys().await, "active")[0].clone();

    let (ok, out, err) = operator(&s, &["keys", "@SERVER", "list"], creds).await;
    assert!(ok, "keys list failed: {out} {err}");
    assert!(out.contains(&active0), "keys table lacks {active0}: {out}");

    let (ok, out, err) = operator(&s, &["keys", "@SERVER", "--json", "list"], creds).await;
    assert!(ok, "keys list --json failed: {out} {err}");
    let v: Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("keys list --json is not JSON ({e}): {out}"));
    let keys = json_list(&v, "keys");
    assert_eq!(key_state(&keys, &active0).as_deref(), Some("active"));

    // The next key was published a moment ago: refused without --force, naming it.
    let (ok, out, err) = operator(&s, &["keys", "@SERVER", "--json", "rotate"], creds).await;
    assert!(!ok, "keys rotate of a young next key succeeded: {out}");
    assert!(
        format!("{out}{err}").contains("--force"),
        "the refusal must name --force: {out} {err}"
    );
    let (ok, out, err) = operator(
        &s,
        &["keys", "@SERVER", "--json", "rotate", "--force"],
        creds,
    )
    .await;
    assert!(ok, "keys rotate --force failed: {out} {err}");
    let after = s.admin_keys().await;
    assert_eq!(key_state(&after, &active0).as_deref(), Some("retiring"));
    let active1 = kids_in_state(&after, "active")[0].clone();
    assert_ne!(active1, active0);

    let t = s.issue(&clients::orders(), &[]).await;
    let (ok, out, err) = operator(
        &s,
        &["keys", "@SERVER", "revoke", "--reason", "leaked", &active1],
        creds,
    )
    .await;
    assert!(ok, "keys revoke failed: {out} {err}");
    assert_eq!(
        key_state(&s.admin_keys().await, &active1).as_deref(),
        Some("revoked")
    );
    assert_eq!(s.introspect(&t).await, inactive());

    let (ok, _, _) = operator(
        &s,
        &["keys", "@SERVER", "revoke", "--reason", "x", "no-such-kid"],
        creds,
    )
    .await;
    assert!(!ok, "revoking an unknown kid exited 0");
    let (ok, _, _) = operator(&s, &["keys", "@SERVER", "list"], Some((&admin.id, "nope"))).await;
    assert!(!ok, "keys list with a wrong secret exited 0");
}

#[tokio::test]
async fn sigterm_shuts_down_gracefully() {
    let mut s = TestServer::builder().start().await;
    let t = s.issue(&clients::orders(), &[]).await;
    let b = s.issue(&clients::billing(), &[]).await;
    let rev = s
        .admin_revoke("client", Some("billing-service"), "before shutdown")
        .await;
    assert!(rev["seq"].is_u64());
    s.signal("TERM");
    let st = s.wait_exit(DEADLINE).await;
    assert!(st.success(), "exit status after SIGTERM: {st:?}");
    // Restart on the same data: state intact.
    s.restart().await;
    assert!(s.is_active(&t).await);
    assert_eq!(s.introspect(&b).await, inactive());
}

#[tokio::test]
async fn operator_flags_work_after_the_key_verb() {
    // `latch keys list --server URL --json` reads like `latch revoke ...
    // --server URL` and `latch audit --since 0 --server URL`.
    let s = TestServer::builder().start().await;
    let admin = clients::admin();
    let creds = Some((admin.id.as_str(), admin.secret.as_str()));
    let (ok, out, err) = operator(&s, &["keys", "list", "@SERVER", "--json"], creds).await;
    assert!(ok, "keys list --server URL --json failed: {out} {err}");
    let v: Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("keys list --json is not JSON ({e}): {out}"));
    assert!(!json_list(&v, "keys").is_empty());
}

#[tokio::test]
async fn check_config_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let good = TestServer::builder();
    let case = |f: &dyn Fn(&mut Config)| good.clone().config(f);
    let mut failures = vec![];

    // Accepted: the cap itself, publish_ahead == rotate_every.
    for (what, cfg) in [
        (
            "access_ttl = 1h (the cap)",
            case(&|c| c.tokens.access_ttl = hours(1)),
        ),
        (
            "publish_ahead = rotate_every",
            case(&|c| c.keys.publish_ahead = c.keys.rotate_every),
        ),
        ("ES256", case(&|c| c.keys.algorithm = Alg::ES256)),
        ("RS256", case(&|c| c.keys.algorithm = Alg::RS256)),
    ] {
        let (ok, out) = check(&cfg.write_config(dir.path()), &[]).await;
        if !ok {
            failures.push(format!("{what}: rejected: {out}"));
        }
    }
    // Rejected, naming the key.
    for (key, cfg) in [
        (
            "tokens.access_ttl",
            case(&|c| c.tokens.access_ttl = mins(61)),
        ),
        (
            "clients[1].id",
            case(&|c| c.clients[1].id = c.clients[0].id.clone()),
        ),
        (
            "clients[0].grants",
            case(&|c| c.clients[0].grants = vec!["password".into()]),
        ),
        (
            "store.kind",
            good.clone().raw_toml("store.kind = \"postgres\""),
        ),
        ("listen", good.clone().raw_toml("listen = \"nowhere\"")),
    ] {
        let (ok, out) = check(&cfg.write_config(dir.path()), &[]).await;
        if ok {
            failures.push(format!("{key}: accepted"));
        } else if !out.contains(key) {
            failures.push(format!("{key}: not named: {out}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn serve_refuses_a_malformed_kek() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_config(dir.path(), &TestServer::builder());
    for kek in ["not base64 !!!", "c2hvcnQ="] {
        let mut cmd = latch_cmd_async();
        cmd.arg("serve")
            .arg("--config")
            .arg(&p)
            .env("LATCH_KEK", kek);
        let (st, out, err) = run_cli(cmd).await;
        assert!(!st.success(), "serve started with LATCH_KEK={kek:?}");
        assert!(!out.contains("latch listening on"), "{out}");
        assert!(
            format!("{out}{err}").contains("LATCH_KEK"),
            "error does not name LATCH_KEK: {out} {err}"
        );
    }
}

#[tokio::test]
async fn sigterm_with_an_idle_keep_alive_connection() {
    use hyper_util::rt::TokioIo;
    let mut s = TestServer::builder().start().await;
    // One request on a kept-alive connection, then leave it idle and open.
    let stream = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .uri("/healthz")
        .header("host", s.addr.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    s.signal("TERM");
    let st = s.wait_exit(DEADLINE).await;
    assert!(st.success(), "exit status after SIGTERM: {st:?}");
    drop(sender);
}

#[tokio::test]
async fn redis_mode_refuses_to_start_without_a_kek() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_config(dir.path(), &TestServer::builder());
    let mut cmd = latch_cmd_async();
    cmd.arg("serve")
        .arg("--config")
        .arg(&p)
        .env_remove("LATCH_KEK")
        .env("LATCH_STORE__KIND", "redis")
        // Nothing listens there: the refusal must come before any connection attempt.
        .env("LATCH_STORE__REDIS_URL", "redis://127.0.0.1:1");
    let (st, out, err) = run_cli(cmd).await;
    assert!(!st.success(), "redis mode started without LATCH_KEK");
    assert!(!out.contains("latch listening on"), "{out}");
    assert!(
        err.contains("LATCH_KEK"),
        "error does not name LATCH_KEK: {out} {err}"
    );
}

/// A jti, a session id or a subject may start with `-` (one random base64url jti in 32
/// does): the CLI takes it as the value, not as a flag.
#[tokio::test]
async fn revoke_values_may_start_with_a_hyphen() {
    let s = TestServer::builder().start().await;
    let admin = clients::admin();
    let creds = Some((admin.id.as_str(), admin.secret.as_str()));
    for (flag, value) in [
        ("--token", "-jti-starting-with-a-hyphen"),
        ("--session", "-sid"),
        ("--subject", "-someone"),
    ] {
        let (ok, out, err) = operator(
            &s,
            &["revoke", flag, value, "--reason", "hyphen", "--json"],
            creds,
        )
        .await;
        assert!(ok, "revoke {flag} {value}: {out} {err}");
        let answer: Value = serde_json::from_str(&out).expect("JSON answer");
        assert_eq!(answer["value"], value, "{out}");
    }
}

/// A verb whose stdout is a pipe nobody reads (`latch gen-secret | true`) ends by SIGPIPE,
/// quietly, as command-line tools do: no panic message.
#[test]
fn a_closed_stdout_ends_a_verb_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = latch_cmd()
        .arg("gen-secret")
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run latch gen-secret");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(13), "{:?}: {stderr}", out.status);
}
