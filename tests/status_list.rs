//! Token Status List against the real binary: every access token names its list and
//! index; every revocation path flips the bit on another node (two nodes on a private
//! Redis) and on the embedded store; a validator following the list sees each revocation
//! once it refreshes after `ttl` (polled to a deadline, the delay logged, never asserted);
//! hostile list requests; the switch that turns lists off.

use std::io::Read;
use std::time::Instant;

use hyper::Method;
use serde_json::{json, Value};
use testkit::clients::{self, ORDERS_AUD};
use testkit::prelude::*;

const TE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const ISSUER: &str = "http://latch.test";

fn idp_hook() -> ClientDef {
    ClientDef::new("idp-hook")
        .grants(&[TE, "refresh_token"])
        .scopes(&["orders:read", "orders:write"])
        .audiences(&[ORDERS_AUD])
        .roles(&["session_issuer"])
}

fn setup(idp: &Idp) -> ServerBuilder {
    TestServer::builder()
        .trusted_issuer(idp.trusted())
        .client(idp_hook())
        .raw_toml("[status_list]\nttl = \"1s\"\nlist_size = 4096\n")
}

/// A token's `status.status_list` reference: (uri, idx).
fn status_of(token: &str) -> (String, u64) {
    let claims = decode_jwt(token).1;
    let r = &claims["status"]["status_list"];
    (
        r["uri"]
            .as_str()
            .expect("status.status_list.uri")
            .to_string(),
        r["idx"].as_u64().expect("status.status_list.idx"),
    )
}

/// The path of a list URI on any node.
fn path_of(uri: &str) -> String {
    uri.strip_prefix(ISSUER)
        .expect("list URI under the issuer")
        .to_string()
}

/// Fetches `uri` from `node` as a validator does: checks the answer (media type, cache
/// bound, `typ`, signature against the node's JWKS, `sub`, `ttl`, `bits`) and returns
/// the decompressed bytes.
async fn fetch_list(node: &TestServer, uri: &str) -> Vec<u8> {
    // A node that is briefly stale on a loaded machine answers 503, as it should; a
    // validator tries again. Anything else must be the list.
    // A list signed just before a key revocation reached the node names a key its JWKS,
    // fetched just after, no longer lists: a validator refuses that list and fetches
    // again, and so does this.
    let (r, jwks) = eventually(
        DEADLINE,
        "a 200 for the list, its key in the JWKS",
        || async {
            let r = node.get(&path_of(uri), None).await;
            if r.status.as_u16() == 503 {
                return Err(format!("503: {}", r.text()));
            }
            if r.status != 200 {
                return Ok((r, Value::Null));
            }
            let (header, _, _) = decode_jwt(&r.text());
            let jwks = node.jwks().await;
            let listed = jwks["keys"]
                .as_array()
                .is_some_and(|keys| keys.iter().any(|k| k["kid"] == header["kid"]));
            match listed {
                true => Ok((r, jwks)),
                false => Err(format!(
                    "kid {} not in the JWKS (yet or any more)",
                    header["kid"]
                )),
            }
        },
    )
    .await;
    assert_eq!(r.status, 200, "{uri}: {}", r.text());
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/statuslist+jwt")
    );
    let cc = r.header("cache-control").expect("Cache-Control");
    let max_age: u64 = cc
        .strip_prefix("public, max-age=")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Cache-Control {cc}"));
    let jwt = r.text();
    let (header, claims, _) = decode_jwt(&jwt);
    let ttl = claims["ttl"].as_u64().expect("ttl");
    assert!(max_age <= ttl, "max-age {max_age} above ttl {ttl}");
    assert_eq!(header["typ"], "statuslist+jwt");
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .expect("the list's kid in the JWKS");
    assert!(verify_with_jwk(&jwt, jwk), "list signature");
    assert_eq!(claims["sub"], uri);
    assert_eq!(claims["iss"], ISSUER);
    assert!(claims["exp"].as_i64().unwrap() > claims["iat"].as_i64().unwrap());
    assert_eq!(claims["status_list"]["bits"], 1);
    let compressed = b64url_decode(claims["status_list"]["lst"].as_str().unwrap());
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(&compressed[..])
        .read_to_end(&mut raw)
        .expect("lst is zlib");
    raw
}

/// The status of `token` in the list `node` serves: 0 VALID, 1 INVALID.
async fn bit(node: &TestServer, token: &str) -> u8 {
    let (uri, idx) = status_of(token);
    let raw = fetch_list(node, &uri).await;
    let byte = raw
        .get((idx / 8) as usize)
        .copied()
        .expect("index within the list");
    (byte >> (idx % 8)) & 1
}

/// Polls `node`'s list until `token` reads INVALID, as a validator that refetches once
/// `ttl` passed; logs the delay. Never asserts a time.
async fn sees_revoked(node: &TestServer, token: &str, what: &str) {
    let started = Instant::now();
    eventually(DEADLINE, what, || async {
        match bit(node, token).await {
            1 => Ok(()),
            _ => Err(format!("{what}: still VALID")),
        }
    })
    .await;
    eprintln!("{what}: INVALID in the list after {:?}", started.elapsed());
}

struct Session {
    access: String,
    refresh: String,
    sid: String,
}

async fn open_session(node: &TestServer, idp: &Idp, sub: &str) -> Session {
    let r = node
        .post_form(
            "/token",
            &[
                ("grant_type", TE),
                ("subject_token", &idp.assertion(sub)),
                ("subject_token_type", JWT_TYPE),
            ],
            idp_hook().auth(),
        )
        .await;
    assert_eq!(r.status, 200, "open session: {}", r.text());
    session(&r.json())
}

fn session(body: &Value) -> Session {
    let access = body["access_token"].as_str().unwrap().to_string();
    Session {
        sid: decode_jwt(&access).1["sid"].as_str().unwrap().to_string(),
        refresh: body["refresh_token"].as_str().unwrap().to_string(),
        access,
    }
}

async fn refresh(node: &TestServer, rt: &str) -> Resp {
    node.post_form(
        "/token",
        &[("grant_type", "refresh_token"), ("refresh_token", rt)],
        idp_hook().auth(),
    )
    .await
}

/// Every revocation path, tokens issued on the first node, lists read from the last.
async fn every_path(nodes: &[TestServer], idp: &Idp) {
    let issuer = &nodes[0];
    let reader = nodes.last().unwrap();
    let orders = clients::orders();
    let billing = clients::billing();

    let by_7009 = issuer.issue(&orders, &[]).await;
    let by_jti = issuer.issue(&orders, &[]).await;
    let by_client = issuer.issue(&billing, &[]).await;
    let bystander = issuer.issue(&orders, &[]).await;
    let by_session = open_session(issuer, idp, "alice").await;
    let by_subject = open_session(issuer, idp, "bob").await;
    let by_reuse = open_session(issuer, idp, "carol").await;

    // Every token names a list under the issuer and starts VALID on the other node.
    for t in [
        &by_7009,
        &by_jti,
        &by_client,
        &bystander,
        &by_session.access,
    ] {
        assert_eq!(bit(reader, t).await, 0, "a fresh token is VALID");
    }
    let (uri, _) = status_of(&by_7009);
    assert!(uri.starts_with(&format!("{ISSUER}/statuslists/")), "{uri}");

    issuer.revoke(&orders, &by_7009).await;
    sees_revoked(reader, &by_7009, "RFC 7009").await;

    let jti = decode_jwt(&by_jti).1["jti"].as_str().unwrap().to_string();
    issuer.admin_revoke("token", Some(&jti), "test").await;
    sees_revoked(reader, &by_jti, "admin token").await;

    issuer
        .admin_revoke("session", Some(&by_session.sid), "test")
        .await;
    sees_revoked(reader, &by_session.access, "admin session").await;

    issuer.admin_revoke("subject", Some("bob"), "test").await;
    sees_revoked(reader, &by_subject.access, "admin subject").await;

    issuer
        .admin_revoke("client", Some(&billing.id), "test")
        .await;
    sees_revoked(reader, &by_client, "admin client").await;

    // Refresh reuse: rotate once (the new access token is VALID), then present the
    // spent refresh token again: the whole session goes.
    let rotated = refresh(issuer, &by_reuse.refresh).await;
    assert_eq!(rotated.status, 200, "refresh: {}", rotated.text());
    let rotated = session(&rotated.json());
    assert_eq!(bit(reader, &rotated.access).await, 0);
    let again = refresh(issuer, &by_reuse.refresh).await;
    again.assert_error(400, "invalid_grant");
    sees_revoked(reader, &rotated.access, "refresh reuse").await;
    sees_revoked(reader, &by_reuse.access, "refresh reuse (first token)").await;

    // Nothing else moved.
    assert_eq!(
        bit(reader, &bystander).await,
        0,
        "an unrevoked token stays VALID"
    );

    // Key revocation: every token the key signed goes; tokens of the next key live.
    let kid = kid_of(&bystander);
    let r = issuer
        .post_json(
            &format!("/admin/keys/{kid}/revoke"),
            &json!({"reason": "test"}),
            clients::admin().auth(),
        )
        .await;
    assert_eq!(r.status, 200, "key revoke: {}", r.text());
    sees_revoked(reader, &bystander, "key revocation").await;
    let after_key = eventually(DEADLINE, "a token signed by the next key", || async {
        let t = issuer.issue(&orders, &[]).await;
        if kid_of(&t) != kid {
            Ok(t)
        } else {
            Err("still the revoked key".to_string())
        }
    })
    .await;
    eventually(
        DEADLINE,
        "the new key's token VALID on the reader",
        || async {
            match bit(reader, &after_key).await {
                0 => Ok(()),
                _ => Err("INVALID".to_string()),
            }
        },
    )
    .await;

    issuer.admin_revoke("all", None, "test").await;
    sees_revoked(reader, &after_key, "admin all").await;
}

#[tokio::test]
async fn every_revocation_path_flips_the_bit_on_the_embedded_store() {
    let idp = Idp::new("https://idp.test");
    let s = setup(&idp).start().await;
    every_path(std::slice::from_ref(&s), &idp).await;
}

#[tokio::test]
async fn every_revocation_path_flips_the_bit_on_another_redis_node() {
    let redis = RedisProcess::start().await;
    let idp = Idp::new("https://idp.test");
    let nodes = setup(&idp).redis(&redis).start_nodes(2).await;
    every_path(&nodes, &idp).await;
}

/// A narrowing of a client's contract (a scope deprecated, then removed) makes the
/// tokens carrying it INVALID in the list another node serves; the others stay VALID.
#[tokio::test]
async fn a_contract_narrowing_flips_the_bits_of_exceeding_tokens() {
    let redis = RedisProcess::start().await;
    let idp = Idp::new("https://idp.test");
    let nodes = setup(&idp).redis(&redis).start_nodes(2).await;
    let orders = clients::orders();
    let write = nodes[0].issue(&orders, &[("scope", "orders:write")]).await;
    let read = nodes[0].issue(&orders, &[("scope", "orders:read")]).await;
    let admin = clients::admin();
    let auth = basic(&admin.id, &admin.secret);
    let call = |method: Method, path: String, body: Option<Value>| {
        let (http, auth) = (nodes[0].http.clone(), auth.clone());
        async move {
            let mut headers = vec![("authorization", auth.as_str())];
            let bytes = match body {
                Some(b) => {
                    headers.push(("content-type", "application/json"));
                    serde_json::to_vec(&b).unwrap()
                }
                None => Vec::new(),
            };
            http.request(method, &path, &headers, bytes).await
        }
    };
    let history = call(Method::GET, format!("/admin/contracts/{}", orders.id), None).await;
    assert_eq!(history.status, 200, "{}", history.text());
    let h = history.json()["history"].as_array().unwrap().clone();
    let version = h.last().unwrap()["version"].as_u64().unwrap();
    let mut content = h.last().unwrap()["body"]["content"].clone();
    content["scopes"]["orders:write"] = json!("deprecated");
    let r = call(
        Method::POST,
        format!("/admin/contracts/{}", orders.id),
        Some(json!({"base_version": version, "contract": content,
                    "changelog": "deprecate", "reason": "TEST"})),
    )
    .await;
    assert_eq!(r.status, 200, "deprecate: {}", r.text());
    let r = call(
        Method::POST,
        format!("/admin/contracts/{}/promote", orders.id),
        Some(json!({"name": "orders:write", "kind": "scope",
                    "base_version": version + 1, "reason": "TEST"})),
    )
    .await;
    assert_eq!(r.status, 200, "remove: {}", r.text());
    sees_revoked(&nodes[1], &write, "contract narrowing").await;
    assert_eq!(bit(&nodes[1], &read).await, 0, "within the contract: VALID");
}

#[tokio::test]
async fn list_requests_that_name_no_list_are_refused_clearly() {
    let idp = Idp::new("https://idp.test");
    let s = setup(&idp).start().await;
    let token = s.issue(&clients::orders(), &[]).await;
    let (uri, _) = status_of(&token);

    // The metadata names the aggregation, which lists the token's list.
    let meta = s
        .get("/.well-known/oauth-authorization-server", None)
        .await
        .json();
    assert_eq!(
        meta["status_list_aggregation_endpoint"],
        format!("{ISSUER}/statuslists")
    );
    let agg = s.get("/statuslists", None).await;
    assert_eq!(agg.status, 200);
    let lists = agg.json()["status_lists"].as_array().unwrap().clone();
    assert!(lists.contains(&json!(uri)), "{lists:?}");

    s.get("/statuslists/0000000000000000", None)
        .await
        .assert_error(404, "not_found");
    for bad in [
        "/statuslists/zz",
        "/statuslists/0123456789ABCDEF",
        "/statuslists/0123456789abcdef0",
        "/statuslists/99999999999999999999",
        "/statuslists/",
        "/statuslists/0123456789abcdef/1",
        "/statuslists/%2e%2e%2fadmin",
    ] {
        s.get(bad, None).await.assert_error(400, "invalid_request");
    }
    let r = s.post_form(&path_of(&uri), &[("a", "b")], None).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow").as_deref(), Some("GET"));
}

/// Each request for a list that does not exist costs the store reads, and lists are
/// public: an address that asks for too many is refused (429 with Retry-After) until its
/// bucket refills, whatever list it asks for then; other addresses, and authentication
/// from the same address, are not affected.
#[tokio::test]
async fn an_address_asking_for_lists_that_do_not_exist_is_slowed_down() {
    let idp = Idp::new("https://idp.test");
    let s = setup(&idp)
        .config(|c| {
            c.limits.auth_failure_ip_rate = Some("1/h".into());
            c.limits.auth_failure_ip_burst = Some(3);
        })
        .start()
        .await;
    let token = s.issue(&clients::orders(), &[]).await;
    // A list that exists costs nothing from the bucket.
    for _ in 0..5 {
        assert_eq!(bit(&s, &token).await, 0);
    }
    for i in 0..3 {
        s.get(&format!("/statuslists/000000000000000{i}"), None)
            .await
            .assert_error(404, "not_found");
    }
    let r = s.get("/statuslists/0000000000000009", None).await;
    r.assert_error(429, "slow_down");
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(wait > 0, "{wait}");
    let (uri, _) = status_of(&token);
    s.get(&path_of(&uri), None)
        .await
        .assert_error(429, "slow_down");
    assert_eq!(
        s.metric("latch_rate_limited_total{endpoint=\"status_list\",limit=\"status_list_miss\"}")
            .await,
        2.0
    );
    // Client authentication from the same address is counted apart.
    assert!(s.is_active(&token).await);
}

#[tokio::test]
async fn lists_can_be_turned_off() {
    let s = TestServer::builder()
        .raw_toml("[status_list]\nenabled = false\n")
        .start()
        .await;
    let token = s.issue(&clients::orders(), &[]).await;
    assert!(decode_jwt(&token).1.get("status").is_none());
    s.get("/statuslists", None)
        .await
        .assert_error(404, "not_found");
    s.get("/statuslists/0000000000000000", None)
        .await
        .assert_error(404, "not_found");
    let meta = s
        .get("/.well-known/oauth-authorization-server", None)
        .await
        .json();
    assert!(meta.get("status_list_aggregation_endpoint").is_none());
}

/// Indices are never reused, and a node opens a new list when its list is full.
#[tokio::test]
async fn indices_are_unique_and_a_full_list_rolls_over() {
    let s = TestServer::builder()
        .raw_toml("[status_list]\nlist_size = 8\n")
        .start()
        .await;
    let orders = clients::orders();
    let mut seen = std::collections::BTreeSet::new();
    let mut lists = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let t = s.issue(&orders, &[]).await;
        let (uri, idx) = status_of(&t);
        assert!(idx < 8, "{idx}");
        assert!(seen.insert((uri.clone(), idx)), "index reused: {uri} {idx}");
        lists.insert(uri);
        assert_eq!(bit(&s, &t).await, 0);
    }
    assert!(lists.len() >= 3, "{lists:?}");
}

/// The invariant under a store crash: tokens are issued flat out on one node while Redis
/// is killed (SIGKILL; AOF `appendfsync always`) and started again. Every token answered
/// 200, before, during or after, reads VALID in the list the other node serves: none was
/// answered without a durable record. Answers during the outage are 503.
#[tokio::test]
async fn every_token_answered_has_its_record_across_a_redis_crash() {
    let mut redis = RedisProcess::start().await;
    let idp = Idp::new("https://idp.test");
    let nodes = setup(&idp)
        .redis(&redis)
        .env("LATCH_LIMITS__TOKEN_RATE", "off")
        .start_nodes(2)
        .await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut issuers = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (http, stop) = (nodes[0].http.clone(), stop.clone());
        issuers.spawn(async move {
            let orders = clients::orders();
            let (mut ok, mut refused) = (Vec::new(), 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = http
                    .post_form(
                        "/token",
                        &[("grant_type", "client_credentials")],
                        orders.auth(),
                    )
                    .await;
                match r.status.as_u16() {
                    200 => ok.push(r.json()["access_token"].as_str().unwrap().to_string()),
                    503 => refused += 1,
                    s => panic!("/token answered {s}: {}", r.text()),
                }
            }
            (ok, refused)
        });
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    redis.stop();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    redis.start_again().await;
    nodes[0].wait_ready().await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut tokens, mut refused) = (Vec::new(), 0);
    while let Some(r) = issuers.join_next().await {
        let (ok, n) = r.unwrap();
        tokens.extend(ok);
        refused += n;
    }
    eprintln!("{} tokens answered, {refused} refused (503)", tokens.len());
    assert!(!tokens.is_empty());
    nodes[1].wait_ready().await;
    // One fetch per list; every answered token's bit must be 0.
    let mut lists: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
    for t in &tokens {
        let (uri, idx) = status_of(t);
        if !lists.contains_key(&uri) {
            let raw = fetch_list(&nodes[1], &uri).await;
            lists.insert(uri.clone(), raw);
        }
        let raw = &lists[&uri];
        let bit = (raw[(idx / 8) as usize] >> (idx % 8)) & 1;
        assert_eq!(bit, 0, "a token answered 200 reads INVALID: {uri} #{idx}");
    }
}

/// Just-in-time elevation: a token carrying a grant's scope reads INVALID on another node
/// once the grant is revoked, and once a grant ends by the clock; ordinary tokens of the
/// same client stay VALID.
#[tokio::test]
async fn a_grant_revoked_or_ended_flips_the_bits_of_its_tokens() {
    const REFUND: &str = "orders:refund-any";
    let redis = RedisProcess::start().await;
    let idp = Idp::new("https://idp.test");
    let oncall = ClientDef::new("alice-oncall").roles(&["admin"]);
    let nodes = setup(&idp)
        .client(oncall.clone())
        .redis(&redis)
        .start_nodes(2)
        .await;
    let (s, reader) = (&nodes[0], &nodes[1]);
    let admin = clients::admin();
    let json_call = |who: ClientDef, method: Method, path: String, body: Option<Value>| {
        let http = s.http.clone();
        async move {
            let auth = basic(&who.id, &who.secret);
            let mut headers = vec![("authorization", auth.as_str())];
            let bytes = match body {
                Some(b) => {
                    headers.push(("content-type", "application/json"));
                    serde_json::to_vec(&b).unwrap()
                }
                None => Vec::new(),
            };
            let r = http.request(method, &path, &headers, bytes).await;
            assert!(r.status.is_success(), "{path}: {} {}", r.status, r.text());
            r.json()
        }
    };
    // The policy: the scope registered, an on-call approver, the elevation in the
    // orders-service contract.
    let v = json_call(admin.clone(), Method::GET, "/admin/scopes".into(), None).await;
    let mut registry = v["registry"].clone();
    registry["scopes"][REFUND] = json!({"description": "refunds", "owner": "team-orders", "audiences": [], "status": "active"});
    registry["approver_groups"] = json!({"oncall": ["alice-oncall"]});
    json_call(
        admin.clone(),
        Method::POST,
        "/admin/scopes".into(),
        Some(
            json!({"base_version": v["latest_version"], "registry": registry,
                    "changelog": "elevation", "reason": "TEST"}),
        ),
    )
    .await;
    let orders = clients::orders();
    let h = json_call(
        admin.clone(),
        Method::GET,
        format!("/admin/contracts/{}", orders.id),
        None,
    )
    .await;
    let last = h["history"].as_array().unwrap().last().unwrap().clone();
    let mut contract = last["body"]["content"].clone();
    contract["elevations"] =
        json!({REFUND: {"max_duration_secs": 3600, "approvers": ["group:oncall"]}});
    json_call(
        admin.clone(),
        Method::POST,
        format!("/admin/contracts/{}", orders.id),
        Some(
            json!({"base_version": last["version"], "contract": contract,
                    "changelog": "elevation", "reason": "TEST"}),
        ),
    )
    .await;

    // Two grants, each approved, each with a token carrying the scope (a token takes the
    // active grant that ends last: the short one first).
    let mut elevated = Vec::new();
    for secs in [2, 3600] {
        let g = json_call(
            orders.clone(),
            Method::POST,
            "/grants".into(),
            Some(json!({"scope": REFUND, "duration_secs": secs,
                        "justification": "INC-1", "ticket": "OPS-1"})),
        )
        .await;
        let id = g["id"].as_str().unwrap().to_string();
        json_call(
            oncall.clone(),
            Method::POST,
            format!("/admin/grants/{id}/approve"),
            Some(json!({"reason": "ok"})),
        )
        .await;
        let t = s
            .issue(&orders, &[("scope", &format!("orders:read {REFUND}"))])
            .await;
        assert_eq!(decode_jwt(&t).1["grant"], id.as_str());
        assert_eq!(bit(reader, &t).await, 0, "an elevated token starts VALID");
        elevated.push((id, t));
    }
    let plain = s.issue(&orders, &[("scope", "orders:read")]).await;

    let (revoked_id, revoked_token) = &elevated[1];
    json_call(
        oncall.clone(),
        Method::POST,
        format!("/admin/grants/{revoked_id}/revoke"),
        Some(json!({"reason": "done"})),
    )
    .await;
    sees_revoked(reader, revoked_token, "grant revoked").await;
    sees_revoked(reader, &elevated[0].1, "grant ended by the clock").await;
    assert_eq!(bit(reader, &plain).await, 0, "ordinary tokens stay VALID");
}

/// Someone who can write to Redis but holds no KEK edits a revoked token's record (its
/// `jti` replaced, so the revocation would no longer match it) and strips another
/// record's MAC. A node that reads the list afterwards uses neither: both indices read
/// INVALID (fail closed), the untouched record reads VALID, and the refusals are counted.
#[tokio::test]
async fn a_record_changed_in_the_store_reads_invalid() {
    let redis = RedisProcess::start().await;
    let idp = Idp::new("https://idp.test").kid("idp-1");
    let a = setup(&idp).redis(&redis).start().await;
    let orders = clients::orders();
    let (changed, stripped, untouched) = (
        a.issue(&orders, &[]).await,
        a.issue(&orders, &[]).await,
        a.issue(&orders, &[]).await,
    );
    let (uri, _) = status_of(&changed);
    assert!(
        [&stripped, &untouched]
            .iter()
            .all(|t| status_of(t).0 == uri),
        "one list"
    );
    let key = testkit::redis::status_list_key(&changed);
    // Replaces the record of `token` (a member of the list's sorted set, scored by its
    // index) with what `edit` makes of it.
    let rewrite = |token: &str, edit: fn(&str, &str) -> String| {
        let (key, redis) = (key.clone(), &redis);
        let idx = status_of(token).1.to_string();
        let jti = decode_jwt(token).1["jti"].as_str().unwrap().to_string();
        async move {
            let members: Vec<String> = redis.cmd(&["ZRANGEBYSCORE", &key, &idx, &idx]).await;
            assert_eq!(members.len(), 1, "one record at {idx}");
            let edited = edit(&members[0], &jti);
            assert_ne!(edited, members[0]);
            let _: i64 = redis.cmd(&["ZREM", &key, &members[0]]).await;
            let _: i64 = redis.cmd(&["ZADD", &key, &idx, &edited]).await;
        }
    };
    rewrite(&changed, |record, jti| record.replace(jti, "forged-jti")).await;
    rewrite(&stripped, |record, _| {
        record
            .split_once('.')
            .expect("a MAC before the record")
            .1
            .to_string()
    })
    .await;

    let r = a
        .post_form("/revoke", &[("token", &changed)], orders.auth())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A node that has not read the list yet.
    let b = setup(&idp).redis(&redis).start().await;
    assert_eq!(
        bit(&b, &changed).await,
        1,
        "the revoked token with a forged jti"
    );
    assert_eq!(bit(&b, &stripped).await, 1, "a record without its MAC");
    assert_eq!(bit(&b, &untouched).await, 0, "an untouched record");
    let series =
        |reason: &str| format!("latch_status_records_rejected_total{{reason=\"{reason}\"}}");
    assert_eq!(b.metric(&series("bad_mac")).await, 1.0);
    assert_eq!(b.metric(&series("unauthenticated")).await, 1.0);
}
