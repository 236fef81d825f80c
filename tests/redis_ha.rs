//! Redis as operators run it: a password, an ACL user with only what latch needs, TLS
//! with a test-made CA and client certificate, the settings check (eviction policy,
//! persistence), a Sentinel failover under revocation load (master killed, master
//! frozen), and a three-master Cluster (propagation, fail-closed, recovery).
//!
//! Invariant in every case: no acknowledged revocation is lost, no revoked token reads
//! `active:true`, and no user is logged out by a routine failover.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use serde_json::Value;
use testkit::clients::{self, ORDERS_AUD};
use testkit::prelude::*;
use testkit::redis_ha::*;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A form POST with Basic auth, bounded by a short deadline, transport errors as `Err`.
trait TryPost {
    async fn try_post(
        &self,
        path: &str,
        params: &[(&str, &str)],
        auth: Option<(&str, &str)>,
    ) -> Result<Resp, String>;
}

impl TryPost for Http {
    async fn try_post(
        &self,
        path: &str,
        params: &[(&str, &str)],
        auth: Option<(&str, &str)>,
    ) -> Result<Resp, String> {
        let fut = self.try_post_form(path, params, auth);
        match tokio::time::timeout(Duration::from_secs(10), fut).await {
            Ok(r) => r,
            Err(_) => Err(format!("POST {path} timed out")),
        }
    }
}

/// The default setup in redis mode against `url`, with `env` (credentials, TLS files).
fn on(url: &str, env: &[(&str, &str)]) -> ServerBuilder {
    env.iter()
        .fold(TestServer::builder().redis_url(url), |b, (k, v)| {
            b.env(k, v)
        })
}

/// A node must be usable end to end: issue, revoke through RFC 7009, see it inactive.
/// The status of `token` in its status list as `node` serves it: 0 VALID, 1 INVALID.
async fn list_bit(node: &TestServer, token: &str) -> u8 {
    use std::io::Read;
    let status = &decode_jwt(token).1["status"]["status_list"];
    let (uri, idx) = (
        status["uri"].as_str().unwrap(),
        status["idx"].as_u64().unwrap(),
    );
    let r = node
        .get(uri.strip_prefix("http://latch.test").unwrap(), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.text());
    let lst = decode_jwt(&r.text()).1["status_list"]["lst"]
        .as_str()
        .unwrap()
        .to_string();
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(&b64url_decode(&lst)[..])
        .read_to_end(&mut raw)
        .unwrap();
    (raw[(idx / 8) as usize] >> (idx % 8)) & 1
}

async fn assert_works(node: &TestServer, what: &str) {
    let t = node.issue(&clients::orders(), &[]).await;
    assert!(node.is_active(&t).await, "{what}: fresh token inactive");
    // Its status list renders from the store (the list's records are read back).
    let uri = decode_jwt(&t).1["status"]["status_list"]["uri"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| panic!("{what}: no status list in the token"));
    let path = uri
        .strip_prefix("http://latch.test")
        .expect("under the issuer");
    let r = node.get(path, None).await;
    assert_eq!(r.status, StatusCode::OK, "{what}: {path} {}", r.text());
    let r = node
        .post_form("/revoke", &[("token", &t)], clients::orders().auth())
        .await;
    assert_eq!(r.status, StatusCode::OK, "{what}: /revoke {}", r.text());
    assert!(!node.is_active(&t).await, "{what}: revoked token active");
}

const IDP_ISS: &str = "https://idp.test";
const TE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

fn idp_hook() -> ClientDef {
    ClientDef::new("idp-hook")
        .grants(&[TE, "refresh_token"])
        .scopes(&["orders:read"])
        .audiences(&[ORDERS_AUD])
        .roles(&["session_issuer"])
}

/// The IdP the test controls, trusted by latch, to open user sessions.
fn idp() -> Idp {
    Idp::new(IDP_ISS).kid("idp-1")
}

fn ha_config(idp: &Idp) -> ServerBuilder {
    TestServer::builder()
        .client(idp_hook())
        .trusted_issuer(idp.trusted())
}

/// Opens a session for `sub`; returns its refresh token.
async fn open_session(node: &TestServer, idp: &Idp, sub: &str) -> String {
    let assertion = idp.assertion(sub);
    let r = node
        .post_form(
            "/token",
            &[
                ("grant_type", TE),
                ("subject_token", &assertion),
                ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ],
            idp_hook().auth(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "open session: {}", r.text());
    r.json()["refresh_token"].as_str().unwrap().to_string()
}

/// Refreshes `rt`, retrying 503s until `deadline`; returns the new refresh token.
async fn refresh(node: &TestServer, rt: &str, what: &str) -> String {
    let http = node.http.clone();
    eventually(DEADLINE, what, || {
        let http = http.clone();
        let rt = rt.to_string();
        async move {
            let r = http
                .try_post(
                    "/token",
                    &[("grant_type", "refresh_token"), ("refresh_token", &rt)],
                    idp_hook().auth(),
                )
                .await?;
            match r.status {
                StatusCode::OK => Ok(r.json()["refresh_token"].as_str().unwrap().to_string()),
                StatusCode::SERVICE_UNAVAILABLE => Err(format!("503 {}", r.text())),
                s => panic!(
                    "{what}: refresh answered {s} {} (user logged out)",
                    r.text()
                ),
            }
        }
    })
    .await
}

/// Revocation load: alternately on each node, issue a token and revoke it through
/// RFC 7009; every token whose revocation answered 200 is recorded. Bounded in count
/// and time; stops when `stop` is set.
async fn revocation_load(
    nodes: Vec<Http>,
    acked: Arc<Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (u64, u64) {
    let (mut ok, mut refused) = (0u64, 0u64);
    let start = Instant::now();
    for i in 0..3000usize {
        if stop.load(std::sync::atomic::Ordering::Relaxed)
            || start.elapsed() > Duration::from_secs(60)
        {
            break;
        }
        let http = &nodes[i % nodes.len()];
        let auth = clients::orders();
        let token = match http
            .try_post(
                "/token",
                &[("grant_type", "client_credentials")],
                auth.auth(),
            )
            .await
        {
            Ok(r) if r.status == StatusCode::OK => {
                r.json()["access_token"].as_str().unwrap().to_string()
            }
            _ => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        match http
            .try_post("/revoke", &[("token", &token)], auth.auth())
            .await
        {
            Ok(r) if r.status == StatusCode::OK => {
                ok += 1;
                acked.lock().unwrap().push(token);
            }
            Ok(r) if r.status == StatusCode::SERVICE_UNAVAILABLE => refused += 1,
            Ok(r) => panic!("/revoke answered {} {}", r.status, r.text()),
            Err(_) => refused += 1,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (ok, refused)
}

/// Watches `/readyz` of a node: when it first stopped answering 200 after `since`, and
/// when it answered 200 again after that. Ends then, when `stop` is set, or at `limit`.
async fn watch_ready(
    http: Http,
    since: Instant,
    limit: Duration,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (Option<Duration>, Option<Duration>) {
    let (mut down, mut up) = (None, None);
    while since.elapsed() < limit && !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let ok = matches!(http.try_get("/readyz", None).await, Ok(r) if r.status == StatusCode::OK);
        match (down, ok) {
            (None, false) => down = Some(since.elapsed()),
            (Some(_), true) => {
                up = Some(since.elapsed());
                break;
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (down, up)
}

/// Introspects `token` on `http`: `Ok(active)` on 200, `Err` otherwise (503, transport).
async fn active_on(http: &Http, token: &str) -> Result<bool, String> {
    let r = http
        .try_post("/introspect", &[("token", token)], clients::rs_all().auth())
        .await?;
    match r.status {
        StatusCode::OK => Ok(r.json()["active"] == Value::Bool(true)),
        s => Err(format!("{s} {}", r.text())),
    }
}

/// Every acknowledged token reads inactive on every node. A node applies revocations in
/// seq order, so once the newest acknowledged one has reached it (which may take the
/// propagation time), any older one still active was lost.
async fn assert_all_inactive(nodes: &[&TestServer], tokens: &[String], what: &str) {
    let last = tokens.last().expect("some revocations were acknowledged");
    for node in nodes {
        node.wait_ready().await;
        let http = node.http.clone();
        eventually(
            DEADLINE,
            &format!(
                "{what}: the newest acknowledged revocation reaches {}",
                node.addr
            ),
            || {
                let http = http.clone();
                async move {
                    match active_on(&http, last).await? {
                        true => Err("still active".to_string()),
                        false => Ok(()),
                    }
                }
            },
        )
        .await;
        for (i, t) in tokens.iter().enumerate() {
            let active = eventually(DEADLINE, what, || active_on(&http, t)).await;
            assert!(
                !active,
                "{what}: an acknowledged revocation was lost: token {i} of {} acknowledged \
                 is active on {}",
                tokens.len(),
                node.addr
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requirepass_is_used_and_a_wrong_password_never_leaks() {
    let redis = RedisNode::start(Some("right-pass-9Yt"), &[]).await;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let cfg = on(&url, &[("LATCH_STORE__REDIS_PASSWORD", "right-pass-9Yt")]);
    let node = cfg.start().await;
    assert_works(&node, "requirepass").await;
    drop(node);

    // Without the password, or with a wrong one (also in the URL): no start, and the
    // password appears nowhere in what latch prints.
    let wrong = on(&url, &[("LATCH_STORE__REDIS_PASSWORD", "wrong-pass-4Hq")]);
    let in_url = on(
        &format!("redis://:wrong-pass-4Hq@127.0.0.1:{}", redis.port),
        &[],
    );
    let none = on(&url, &[]);
    for (what, cfg) in [("wrong", &wrong), ("in url", &in_url), ("none", &none)] {
        let (st, out, err) = cfg.run_verb("serve").await;
        assert!(
            !st.success(),
            "{what}: latch served without the right password\n{out}\n{err}"
        );
        assert!(
            err.contains("redis"),
            "{what}: error does not say redis: {err}"
        );
        assert!(
            !out.contains("wrong-pass-4Hq") && !err.contains("wrong-pass-4Hq"),
            "{what}: password printed:\n{out}\n{err}"
        );
    }
    let (st, out, _) = in_url.run_verb("check").await;
    assert!(st.success());
    assert!(
        out.contains("could not check") && !out.contains("wrong-pass-4Hq"),
        "{out}"
    );
}

/// The ACL the README documents (without `config|get` and `info`, which are optional).
fn minimal_acl(user: &str, pass: &str, settings: bool) -> Vec<String> {
    let mut v: Vec<String> = [
        "ACL",
        "SETUSER",
        user,
        "reset",
        "on",
        &format!(">{pass}"),
        "~{latch}:*",
        // Refresh-token families and assertion replay records (their own hash tags, so a
        // Cluster spreads them).
        "~{latch:s:*",
        "~{latch:seen:*",
        // Token Status Lists: one key per list under its own hash tag, and their index.
        "~{latch:sl:*",
        "&{latch}:events",
        "+hsetnx",
        "+xrevrange",
        "+ssubscribe",
        "+sunsubscribe",
        "+spublish",
        "+ping",
        // The contracts' history (issue 10): read at start, checked inside the scripts.
        "+hkeys",
        "+hexists",
        "+eval",
        "+evalsha",
        "+script|load",
        "+get",
        "+mget",
        "+set",
        "+hmget",
        "+xrange",
        "+xtrim",
        "+subscribe",
        "+unsubscribe",
        "+wait",
        "+role",
        "+incr",
        "+xadd",
        "+publish",
        "+time",
        "+hset",
        "+hget",
        "+hvals",
        "+pexpireat",
        "+hgetall",
        "+exists",
        "+xinfo|stream",
        "+xdel",
        // INFO server gives the scripts Redis's run_id (a restart or failover opens a new
        // epoch), so it is required, not only for the settings check.
        "+info",
        "+lpush",
        "+ltrim",
        "+lrange",
        "+zadd",
        "+zrange",
        "+zremrangebyscore",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if settings {
        v.push("+config|get".into());
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_with_the_documented_minimal_rights_runs_latch() {
    let redis = RedisNode::start(Some("admin-pass-2Wv"), &[]).await;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    for (user, settings) in [("latch", true), ("latch-nocfg", false)] {
        let acl = minimal_acl(user, "latch-pass-8Jm", settings);
        let args: Vec<&str> = acl.iter().map(String::as_str).collect();
        let _: String = redis.cmd(&args).await;
        let cfg = on(
            &url,
            &[
                ("LATCH_STORE__REDIS_USERNAME", user),
                ("LATCH_STORE__REDIS_PASSWORD", "latch-pass-8Jm"),
            ],
        );
        let node = cfg.start().await;
        assert_works(&node, user).await;
        let logs = node.logs();
        if settings {
            assert!(
                !logs.contains("cannot read maxmemory-policy"),
                "{user}: {logs}"
            );
        } else {
            // CONFIG not permitted: a warning, not a refusal.
            assert!(
                logs.contains("cannot read maxmemory-policy"),
                "{user}: no warning\n{logs}"
            );
        }
        assert!(
            !logs.contains("latch-pass-8Jm"),
            "{user}: password in the logs"
        );
    }
    // The user really is limited: it cannot touch a key outside latch's.
    let client = redis::Client::open(format!(
        "redis://latch:latch-pass-8Jm@127.0.0.1:{}",
        redis.port
    ))
    .unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let denied: redis::RedisResult<String> = redis::cmd("SET")
        .arg("other")
        .arg("1")
        .query_async(&mut conn)
        .await;
    let e = denied.expect_err("the ACL is not limiting");
    assert!(
        e.to_string().to_lowercase().contains("perm"),
        "not an ACL refusal: {e}"
    );
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_test_made_ca_and_client_certificate() {
    let tls = Tls::generate();
    if let Err(reason) = redis_tls_support(&tls).await {
        eprintln!("SKIPPED: the installed redis-server has no TLS: {reason}");
        return;
    }
    let tls_port = free_port();
    let redis = RedisNode::start(Some("tls-pass-5Rb"), &tls.server_args(tls_port)).await;
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (ca, cert, key) = (path(&tls.ca), path(&tls.client_cert), path(&tls.client_key));
    let full = [
        ("LATCH_STORE__REDIS_PASSWORD", "tls-pass-5Rb"),
        ("LATCH_STORE__TLS_CA_FILE", ca.as_str()),
        ("LATCH_STORE__TLS_CERT_FILE", cert.as_str()),
        ("LATCH_STORE__TLS_KEY_FILE", key.as_str()),
    ];
    let cfg = on(&url, &full);
    let (st, out, err) = cfg.run_verb("check").await;
    assert!(st.success(), "latch check over TLS: {out}\n{err}");
    assert!(
        out.contains("maxmemory-policy noeviction"),
        "check did not read the settings over TLS: {out}"
    );
    let node = cfg.start().await;
    assert_works(&node, "tls").await;
    drop(node);

    // Without the client certificate the server refuses the handshake; with another
    // CA latch refuses the server: no start either way.
    let other = Tls::generate();
    let other_ca = path(&other.ca);
    let no_client_cert = on(&url, &full[..2]);
    let wrong_ca = on(
        &url,
        &[
            full[0],
            ("LATCH_STORE__TLS_CA_FILE", other_ca.as_str()),
            full[2],
            full[3],
        ],
    );
    for (what, cfg) in [("no client cert", &no_client_cert), ("wrong CA", &wrong_ca)] {
        let (st, out, err) = cfg.run_verb("serve").await;
        assert!(!st.success(), "{what}: latch served\n{out}\n{err}");
    }

    // A broken file is named by its key.
    let garbage = tls.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let garbage = path(&garbage);
    let bad = on(
        &url,
        &[full[0], ("LATCH_STORE__TLS_CA_FILE", garbage.as_str())],
    );
    let (st, _, err) = bad.run_verb("check").await;
    assert!(!st.success());
    assert!(err.contains("store.tls_ca_file"), "{err}");
    drop(redis);
}

// ---------------------------------------------------------------------------
// Settings check
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicting_policies_are_refused_and_unprotected_writes_warned() {
    let evicting =
        RedisNode::start(None, &["--maxmemory-policy".into(), "allkeys-lru".into()]).await;
    let cfg = on(&format!("redis://{}", evicting.addr()), &[]);
    let (st, out, err) = cfg.run_verb("check").await;
    assert!(!st.success(), "check accepted allkeys-lru: {out}");
    assert!(
        err.contains("maxmemory-policy is allkeys-lru") && err.contains("noeviction"),
        "{err}"
    );
    let (st, _, err) = cfg.run_verb("serve").await;
    assert!(!st.success());
    assert!(err.contains("maxmemory-policy is allkeys-lru"), "{err}");

    let bare = RedisNode::start(
        None,
        &[
            "--appendonly".into(),
            "no".into(),
            "--appendfsync".into(),
            "everysec".into(),
        ],
    )
    .await;
    let cfg = on(&format!("redis://{}", bare.addr()), &[]);
    let (st, out, err) = cfg.run_verb("check").await;
    assert!(st.success(), "{out}\n{err}");
    assert!(
        out.contains("warning: redis") && out.contains("neither AOF"),
        "{out}"
    );
    let node = cfg.start().await;
    assert!(node.logs().contains("neither AOF"), "no start-up warning");
    drop(node);

    // The same Redis with a replica: no warning.
    let _replica = RedisNode::start(
        None,
        &[
            "--replicaof".into(),
            "127.0.0.1".into(),
            bare.port.to_string(),
        ],
    )
    .await;
    let out = eventually(DEADLINE, "replica seen by check", || {
        let cfg = cfg.clone();
        async move {
            let (st, out, _) = cfg.run_verb("check").await;
            if st.success() && out.contains("1 connected replicas") {
                Ok(out)
            } else {
                Err(out)
            }
        }
    })
    .await;
    assert!(!out.contains("neither AOF"), "{out}");

    // Nothing listening: the file is valid; the check says it could not look.
    let cfg = on(&format!("redis://127.0.0.1:{}", free_port()), &[]);
    let (st, out, _) = cfg.run_verb("check").await;
    assert!(
        st.success() && out.contains("could not check the redis settings"),
        "{out}"
    );
}

// ---------------------------------------------------------------------------
// Sentinel
// ---------------------------------------------------------------------------

/// Two nodes on a Sentinel setup with credentials on both legs, a user session, and a
/// revocation load; `fail` breaks the master; afterwards every acknowledged revocation
/// holds on both nodes and the session still refreshes.
async fn failover_under_load(fail: &str, tls: Option<Tls>) {
    let mut set = SentinelSet::start(tls).await;
    let idp = idp();
    let cfg = set.node(ha_config(&idp));
    // `latch check` reads the master through the sentinels, with both credentials.
    let (st, out, err) = cfg.run_verb("check").await;
    assert!(st.success(), "{out}\n{err}");
    assert!(
        out.contains("master: maxmemory-policy noeviction") && out.contains("2 connected replicas"),
        "{out}"
    );
    assert!(!out.contains(&set.data_password) && !out.contains(&set.sentinel_password));
    let a = cfg.start().await;
    let b = cfg.start().await;
    let rt = open_session(&a, &idp, "alice").await;
    let rt = refresh(&b, &rt, "refresh before the failover").await;

    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(revocation_load(
        vec![a.http.clone(), b.http.clone()],
        acked.clone(),
        stop.clone(),
    ));
    eventually(DEADLINE, "load running", || {
        let n = acked.lock().unwrap().len();
        async move {
            if n >= 20 {
                Ok(())
            } else {
                Err(format!("{n} acked"))
            }
        }
    })
    .await;

    let old = set.master_addr().await.unwrap();
    let old_i = set.index_of(&old);
    let broke = Instant::now();
    let watches: Vec<_> = [&a, &b]
        .iter()
        .map(|n| {
            tokio::spawn(watch_ready(
                n.http.clone(),
                broke,
                Duration::from_secs(60),
                stop.clone(),
            ))
        })
        .collect();
    match fail {
        "freeze" => set.data[old_i].signal("STOP"),
        _ => set.data[old_i].kill9(),
    }
    let new = set.await_failover(&old, Duration::from_secs(40)).await;
    let failed_over = broke.elapsed();
    for n in [&a, &b] {
        n.wait_ready().await;
    }
    let before = acked.lock().unwrap().len();
    eventually(
        DEADLINE,
        "revocations acknowledged on the new master",
        || {
            let n = acked.lock().unwrap().len();
            async move {
                if n >= before + 20 {
                    Ok(())
                } else {
                    Err(format!("{n} acked"))
                }
            }
        },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, refused) = load.await.unwrap();
    let mut measured = Vec::new();
    for w in watches {
        measured.push(w.await.unwrap());
    }
    eprintln!(
        "sentinel {fail}: failover after {failed_over:?}; readyz (first non-200, 200 again; None: never) \
         A {:?} B {:?}; {ok} revocations acknowledged, {refused} refused with 503",
        measured[0], measured[1]
    );

    if fail == "freeze" {
        // The old master wakes up, is demoted by the sentinels and follows the new one.
        set.data[old_i].signal("CONT");
        let node = &set.data[old_i];
        eventually(
            Duration::from_secs(40),
            "old master rejoins as replica",
            || async {
                let role = node.role().await?;
                let info: String = node.try_cmd(&["INFO", "replication"]).await?;
                let (_, port) = new.split_once(':').unwrap();
                if role == "slave"
                    && info.contains(&format!("master_port:{port}"))
                    && info.contains("master_link_status:up")
                {
                    Ok(())
                } else {
                    Err(format!("role {role}"))
                }
            },
        )
        .await;
    }

    let tokens = acked.lock().unwrap().clone();
    eprintln!(
        "sentinel {fail}: {before} revocations were acknowledged before the failover was complete"
    );
    assert_all_inactive(&[&a, &b], &tokens, &format!("after {fail}")).await;
    // No user is logged out: the session opened before the failover refreshes on both.
    let rt = refresh(&a, &rt, "refresh after the failover on A").await;
    refresh(&b, &rt, "refresh after the failover on B").await;
    assert_works(&a, "A after failover").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_master_killed_under_load_loses_no_acknowledged_revocation() {
    failover_under_load("kill", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_over_tls_master_killed_under_load() {
    let tls = Tls::generate();
    if let Err(reason) = redis_tls_support(&tls).await {
        eprintln!("SKIPPED: the installed redis-server has no TLS: {reason}");
        return;
    }
    failover_under_load("kill over tls", Some(tls)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_master_frozen_under_load_then_rejoins_as_replica() {
    failover_under_load("freeze", None).await;
}

// ---------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_propagates_fails_closed_and_recovers() {
    let mut cluster = RedisCluster::start("cluster-pass-6Tn").await;
    let cfg = on(
        &cluster.url(),
        &[("LATCH_STORE__REDIS_PASSWORD", "cluster-pass-6Tn")],
    )
    .config(|c| c.store.max_staleness = secs(1));
    // `latch check` reads every master of the cluster.
    let (st, out, err) = cfg.run_verb("check").await;
    assert!(st.success(), "{out}\n{err}");
    assert_eq!(
        out.matches("maxmemory-policy noeviction").count(),
        3,
        "{out}"
    );
    // This cluster keeps Redis's default: one shard without a master stops every slot.
    assert_eq!(
        out.matches("cluster-require-full-coverage yes").count(),
        3,
        "{out}"
    );
    let a = cfg.start().await;
    let b = cfg.start().await;

    // Propagation: revoked on A, inactive on B.
    let t = a.issue(&clients::orders(), &[]).await;
    let live = a.issue(&clients::orders(), &[]).await;
    assert!(b.is_active(&t).await);
    let r = a
        .post_form("/revoke", &[("token", &t)], clients::orders().auth())
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    eventually(DEADLINE, "revocation reaches B", || {
        let b = &b;
        let t = t.clone();
        async move {
            if b.is_active(&t).await {
                Err("active on B".to_string())
            } else {
                Ok(())
            }
        }
    })
    .await;
    // The status list (its own hash tag, on whichever master holds it) is served by B
    // from A's records: the revoked token INVALID, the other VALID.
    assert_eq!(list_bit(&b, &t).await, 1, "revoked: INVALID in B's list");
    assert_eq!(list_bit(&b, &live).await, 0, "live: VALID in B's list");

    // Fail closed: every master down → 503 with Retry-After on both, never active.
    cluster.kill_all();
    let down = Instant::now();
    for n in [&a, &b] {
        let http = n.http.clone();
        let live = live.clone();
        let after = eventually(DEADLINE, "503 after the cluster is gone", || {
            let http = http.clone();
            let live = live.clone();
            async move {
                let r = http
                    .try_post("/introspect", &[("token", &live)], clients::rs_all().auth())
                    .await?;
                match r.status {
                    StatusCode::SERVICE_UNAVAILABLE => {
                        assert!(r.header("retry-after").is_some(), "503 without Retry-After");
                        Ok(down.elapsed())
                    }
                    StatusCode::OK => Err("still answering".into()),
                    s => panic!("{s} {}", r.text()),
                }
            }
        })
        .await;
        eprintln!("cluster down: {} fails closed after {after:?}", n.addr);
        let r = n
            .http
            .try_post("/introspect", &[("token", &t)], clients::rs_all().auth())
            .await
            .unwrap();
        assert_ne!(
            r.status,
            StatusCode::OK,
            "a revoked token answered while the store is gone"
        );
    }

    // Recovery: the masters come back from their AOF and nodes.conf.
    cluster.start_all_again().await;
    let up = Instant::now();
    for n in [&a, &b] {
        n.wait_ready().await;
        eprintln!("cluster back: {} ready after {:?}", n.addr, up.elapsed());
        assert!(
            !n.is_active(&t).await,
            "revocation lost across the cluster restart"
        );
        assert!(n.is_active(&live).await);
    }
    assert_works(&b, "B after the cluster restart").await;
}
