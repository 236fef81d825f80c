//! The Shared Signals transmitter against the real binary: push to a receiver this test
//! runs on loopback (a tiny hyper server), poll with acknowledgements, a receiver that
//! was down, refused endpoints and hostile stream requests, and two nodes on a private
//! Redis. Every wait polls to a deadline; no test measures time.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use testkit::clients::{self, ORDERS_AUD};
use testkit::http::basic;
use testkit::jwt::{decode_jwt, verify_with_jwk};
use testkit::redis_ha::Tls;
use testkit::{eventually, ClientDef, RedisProcess, Resp, ServerBuilder, TestServer, DEADLINE};

const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
const CREDENTIAL_CHANGE: &str =
    "https://schemas.openid.net/secevent/caep/event-type/credential-change";
const VERIFICATION: &str = "https://schemas.openid.net/secevent/ssf/event-type/verification";
const PUSH: &str = "urn:ietf:rfc:8935";
const POLL: &str = "urn:ietf:rfc:8936";
const RECEIVER_AUD: &str = "https://risk.example";
const RECEIVER_AUTH: &str = "Bearer receiver-own-token-3f9a";

fn receiver() -> ClientDef {
    ClientDef::new("risk-engine").roles(&["ssf_receiver"])
}

/// A receiver with role `ssf_receiver` but no `[[ssf.receivers]]` entry: poll only.
fn other_receiver() -> ClientDef {
    ClientDef::new("other-receiver").roles(&["ssf_receiver"])
}

/// A config whose receiver may push to `push` (and to a second endpoint nobody serves).
fn cfg(push: &[String]) -> ServerBuilder {
    cfg_with(push, "")
}

/// [`cfg`] with more `[ssf]` lines.
fn cfg_with(push: &[String], ssf: &str) -> ServerBuilder {
    let endpoints: Vec<String> = push
        .iter()
        .cloned()
        .chain(["http://127.0.0.1:9/unused".to_string()])
        .collect();
    // A short lease by default: failover tests wait less.
    let lease = if ssf.contains("lease") {
        ""
    } else {
        "lease = \"1s\"\n"
    };
    TestServer::builder()
        .client(receiver())
        .client(other_receiver())
        .raw_toml(&format!(
            "[ssf]\n{lease}poll_wait = \"3s\"\npush_max_backoff = \"200ms\"\n\
         min_verification_interval = \"1h\"\nmax_streams_per_receiver = 3\n{ssf}\n\
         [[ssf.receivers]]\nclient_id = \"risk-engine\"\naudience = \"{RECEIVER_AUD}\"\n\
         push_endpoints = {}\n",
            serde_json::to_string(&endpoints).unwrap()
        ))
}

// === the receiver this test runs ===

/// One SET as the receiver got it.
#[derive(Debug, Clone)]
struct Got {
    set: String,
    content_type: String,
    authorization: Option<String>,
}

/// An RFC 8935 receiver on loopback: records every push and answers 202, or 503 while
/// `refusing`. [`Receiver::stop`] closes the port (and every open connection).
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Got>>>,
    refusing: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
    /// Serves HTTPS with this when set.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut r = Receiver {
            addr: listener.local_addr().unwrap(),
            got: Arc::default(),
            refusing: Arc::default(),
            task: None,
            tls: None,
        };
        r.serve(listener);
        r
    }

    /// A receiver serving HTTPS with the test CA's certificate for 127.0.0.1.
    async fn start_tls(tls: &Tls) -> Receiver {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(&tls.server_cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&tls.server_key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut r = Receiver {
            addr: listener.local_addr().unwrap(),
            got: Arc::default(),
            refusing: Arc::default(),
            task: None,
            tls: Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        };
        r.serve(listener);
        r
    }

    fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}/events", self.addr)
    }

    fn serve(&mut self, listener: TcpListener) {
        let (got, refusing) = (self.got.clone(), self.refusing.clone());
        let tls = self.tls.clone();
        self.task = Some(tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (got, refusing, tls) = (got.clone(), refusing.clone(), tls.clone());
                conns.spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (got, refusing) = (got.clone(), refusing.clone());
                            async move { Ok::<_, Infallible>(answer(req, &got, &refusing).await) }
                        });
                    let builder = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acceptor) => {
                            // A handshake the client aborts (an unknown CA) ends here.
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        }));
    }

    /// Closes the port and every connection: pushes fail to connect.
    fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Listens again on the same port.
    async fn restart(&mut self) {
        let listener = eventually(DEADLINE, "rebind the receiver's port", || {
            let addr = self.addr;
            async move { TcpListener::bind(addr).await.map_err(|e| e.to_string()) }
        })
        .await;
        self.serve(listener);
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until at least `n` SETs arrived; returns them all.
    async fn wait_for(&self, n: usize, what: &str) -> Vec<Got> {
        eventually(DEADLINE, what, || async {
            let got = self.got();
            if got.len() >= n {
                Ok(got)
            } else {
                Err(format!("{} of {n} SETs", got.len()))
            }
        })
        .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    got: &Mutex<Vec<Got>>,
    refusing: &AtomicBool,
) -> Response<Full<Bytes>> {
    let header = |n: &str| {
        req.headers()
            .get(n)
            .map(|v| v.to_str().unwrap_or("").to_string())
    };
    let content_type = header("content-type").unwrap_or_default();
    let authorization = header("authorization");
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if refusing.load(Ordering::Acquire) {
        let mut r = Response::new(Full::new(Bytes::from_static(
            br#"{"err":"invalid_request","description":"down for maintenance"}"#,
        )));
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        return r;
    }
    got.lock().unwrap().push(Got {
        set: String::from_utf8_lossy(&body).into_owned(),
        content_type,
        authorization,
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::ACCEPTED;
    r
}

// === helpers ===

async fn send(
    s: &TestServer,
    method: Method,
    path: &str,
    body: Option<&Value>,
    who: &ClientDef,
) -> Resp {
    let auth = basic(&who.id, &who.secret);
    let mut headers = vec![("authorization", auth.as_str())];
    let bytes = match body {
        Some(b) => {
            headers.push(("content-type", "application/json"));
            serde_json::to_vec(b).unwrap()
        }
        None => Vec::new(),
    };
    s.http.request(method, path, &headers, bytes).await
}

async fn create(s: &TestServer, body: &Value) -> Value {
    let r = send(s, Method::POST, "/ssf/stream", Some(body), &receiver()).await;
    assert_eq!(r.status, StatusCode::CREATED, "create: {}", r.text());
    r.assert_no_store();
    r.json()
}

async fn create_push(s: &TestServer, url: &str) -> String {
    let stream = create(
        s,
        &json!({"delivery": {"method": PUSH, "endpoint_url": url, "authorization_header": RECEIVER_AUTH},
                "events_requested": [SESSION_REVOKED, CREDENTIAL_CHANGE, "urn:example:unknown"],
                "description": "push test"}),
    )
    .await;
    stream["stream_id"].as_str().unwrap().to_string()
}

async fn verify(s: &TestServer, id: &str, state: &str) {
    let r = send(
        s,
        Method::POST,
        "/ssf/verify",
        Some(&json!({"stream_id": id, "state": state})),
        &receiver(),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "verify: {}", r.text());
}

async fn poll(s: &TestServer, id: &str, body: &Value) -> Value {
    let r = send(
        s,
        Method::POST,
        &format!("/ssf/poll/{id}"),
        Some(body),
        &receiver(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "poll: {}", r.text());
    r.json()
}

/// A SET checked as a receiver would: explicit type, signature by the JWKS key its
/// `kid` names, `iss`, `aud`, no `sub` nor `exp`, exactly one event. Returns the claims.
fn check_set(set: &str, jwks: &Value, issuer: &str) -> Value {
    let (header, claims, _) = decode_jwt(set);
    assert_eq!(header["typ"], "secevent+jwt", "{header}");
    let kid = header["kid"].as_str().expect("kid");
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap_or_else(|| panic!("kid {kid} not in the JWKS"));
    assert!(verify_with_jwk(set, jwk), "signature of {claims}");
    assert_eq!(claims["iss"], issuer);
    assert_eq!(claims["aud"], RECEIVER_AUD);
    assert!(
        claims.get("sub").is_none() && claims.get("exp").is_none(),
        "{claims}"
    );
    assert!(claims["iat"].is_i64() && claims["jti"].is_string() && claims["txn"].is_string());
    assert_eq!(claims["events"].as_object().unwrap().len(), 1, "{claims}");
    claims
}

/// `(seq, part)` from a jti `<stream>.<seq>.<part>`.
fn position(claims: &Value) -> (u64, u32) {
    let jti = claims["jti"].as_str().unwrap();
    let mut it = jti.rsplitn(3, '.');
    let part = it.next().unwrap().parse().unwrap();
    let seq = it.next().unwrap().parse().unwrap();
    (seq, part)
}

fn event_type(claims: &Value) -> String {
    claims["events"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone()
}

/// New jtis arrive in strictly increasing position; repeats (at least once) are allowed.
fn assert_in_order(claims: &[Value]) {
    let mut seen = BTreeSet::new();
    let mut last = None;
    for c in claims {
        let p = position(c);
        if seen.insert(p) {
            assert!(
                last < Some(p),
                "a new SET {p:?} after {last:?}: out of order"
            );
            last = Some(p);
        }
    }
}

// === tests ===

#[tokio::test]
async fn the_configuration_document_names_every_endpoint() {
    let s = cfg(&[]).start().await;
    let r = s.get("/.well-known/ssf-configuration", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    let doc = r.json();
    let base = "http://latch.test";
    assert_eq!(doc["spec_version"], "1_0");
    assert_eq!(doc["issuer"], base);
    assert_eq!(doc["jwks_uri"], format!("{base}/.well-known/jwks.json"));
    assert_eq!(doc["delivery_methods_supported"], json!([PUSH, POLL]));
    assert_eq!(doc["configuration_endpoint"], format!("{base}/ssf/stream"));
    assert_eq!(doc["status_endpoint"], format!("{base}/ssf/status"));
    assert_eq!(doc["verification_endpoint"], format!("{base}/ssf/verify"));
    assert_eq!(doc["default_subjects"], "ALL");
    assert!(doc.get("add_subject_endpoint").is_none());
    let r = s.get("/.well-known/ssf-configuration/other", None).await;
    r.assert_error(404, "not_found");
}

#[tokio::test]
async fn push_delivers_every_revocation_path_in_order_signed_by_the_jwks_key() {
    let rcv = Receiver::start().await;
    let s = cfg(&[rcv.url()]).start().await;
    let id = create_push(&s, &rcv.url()).await;
    verify(&s, &id, "state-1").await;
    let first = rcv.wait_for(1, "the verification event").await;
    assert_eq!(first[0].content_type, "application/secevent+jwt");
    assert_eq!(first[0].authorization.as_deref(), Some(RECEIVER_AUTH));

    // Every path: RFC 7009 by the holder, then each admin kind.
    let orders = clients::orders();
    let token = s.issue(&orders, &[]).await;
    let jti = decode_jwt(&token).1["jti"].as_str().unwrap().to_string();
    let r = s
        .post_form("/revoke", &[("token", &token)], orders.auth())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    s.admin_revoke("token", Some("jti-by-admin"), "test").await;
    s.admin_revoke("session", Some("sid-1"), "test").await;
    s.admin_revoke("subject", Some("alice"), "test").await;
    s.admin_revoke("client", Some("billing-service"), "test")
        .await;
    s.admin_revoke("all", None, "test").await;

    let got = rcv.wait_for(8, "every revocation's SETs").await;
    let jwks = s.jwks().await;
    let claims: Vec<Value> = got
        .iter()
        .map(|g| check_set(&g.set, &jwks, "http://latch.test"))
        .collect();
    assert_in_order(&claims);
    assert_eq!(claims.len(), 8, "exactly once here: nothing failed");
    let iss = "http://latch.test";
    let expected = [
        (VERIFICATION, json!({"format": "opaque", "id": id})),
        (
            SESSION_REVOKED,
            json!({"format": "jwt_id", "iss": iss, "jti": jti}),
        ),
        (
            SESSION_REVOKED,
            json!({"format": "jwt_id", "iss": iss, "jti": "jti-by-admin"}),
        ),
        (
            SESSION_REVOKED,
            json!({"format": "complex", "session": {"format": "opaque", "id": "sid-1"}}),
        ),
        (
            SESSION_REVOKED,
            json!({"format": "complex", "user": {"format": "iss_sub", "iss": iss, "sub": "alice"}}),
        ),
        (
            SESSION_REVOKED,
            json!({"format": "complex", "application": {"format": "opaque", "id": "billing-service"}}),
        ),
        (
            CREDENTIAL_CHANGE,
            json!({"format": "complex", "application": {"format": "opaque", "id": "billing-service"}}),
        ),
        (
            SESSION_REVOKED,
            json!({"format": "complex", "tenant": {"format": "uri", "uri": iss}}),
        ),
    ];
    for (c, (ty, sub_id)) in claims.iter().zip(expected) {
        assert_eq!(event_type(c), ty, "{c}");
        assert_eq!(c["sub_id"], sub_id, "{c}");
    }
    assert_eq!(claims[0]["events"][VERIFICATION]["state"], "state-1");
    assert_eq!(claims[5]["txn"], claims[6]["txn"], "one cause, one txn");
    let cc = &claims[6]["events"][CREDENTIAL_CHANGE];
    assert_eq!(
        (cc["credential_type"].as_str(), cc["change_type"].as_str()),
        (Some("app"), Some("revoke"))
    );
    assert!(claims[1]["events"][SESSION_REVOKED]["event_timestamp"].is_i64());
    // A SET is not an access token: introspection refuses it.
    assert_eq!(s.introspect(&got[1].set).await, json!({"active": false}));
}

#[tokio::test]
async fn poll_delivery_with_acks_return_immediately_and_max_events() {
    let s = cfg(&[]).start().await;
    let stream = create(&s, &json!({})).await;
    let id = stream["stream_id"].as_str().unwrap().to_string();
    assert_eq!(
        stream["delivery"],
        json!({"method": POLL, "endpoint_url": format!("http://latch.test/ssf/poll/{id}")})
    );
    assert_eq!(
        stream["events_delivered"],
        json!([SESSION_REVOKED, CREDENTIAL_CHANGE])
    );

    let empty = poll(&s, &id, &json!({"returnImmediately": true})).await;
    assert_eq!(empty, json!({"sets": {}, "moreAvailable": false}));
    for sub in ["a", "b", "c"] {
        s.admin_revoke("subject", Some(sub), "test").await;
    }
    // The node applies them within the propagation bound; an unacknowledged poll changes
    // nothing, so poll until all three are there.
    eventually(DEADLINE, "three SETs pending", || async {
        let p = poll(&s, &id, &json!({"returnImmediately": true})).await;
        match p["sets"].as_object().unwrap().len() {
            3 => Ok(()),
            n => Err(format!("{n} pending")),
        }
    })
    .await;
    let first = poll(&s, &id, &json!({"returnImmediately": true, "maxEvents": 2})).await;
    let jwks = s.jwks().await;
    let jtis =
        |v: &Value| -> Vec<String> { v["sets"].as_object().unwrap().keys().cloned().collect() };
    let got = jtis(&first);
    assert_eq!(got.len(), 2);
    assert_eq!(first["moreAvailable"], true);
    for (jti, set) in first["sets"].as_object().unwrap() {
        let c = check_set(set.as_str().unwrap(), &jwks, "http://latch.test");
        assert_eq!(&c["jti"], jti);
    }
    // Not acknowledged: returned again (at least once).
    let again = poll(&s, &id, &json!({"returnImmediately": true, "maxEvents": 2})).await;
    assert_eq!(jtis(&again), got);
    // Acknowledged: the next poll returns what follows.
    let next = poll(&s, &id, &json!({"returnImmediately": true, "ack": got})).await;
    let third = jtis(&next);
    assert_eq!(third.len(), 1);
    let c = check_set(
        next["sets"][&third[0]].as_str().unwrap(),
        &jwks,
        "http://latch.test",
    );
    assert_eq!(c["sub_id"]["user"]["sub"], "c");
    assert_eq!(next["moreAvailable"], false);
    // A SET reported in setErrs counts as delivered; maxEvents 0 only acknowledges.
    let done = poll(&s, &id, &json!({"maxEvents": 0, "setErrs": {third[0].clone(): {"err": "invalid_key", "description": "x"}}})).await;
    assert_eq!(done["sets"], json!({}));
    assert_eq!(
        poll(&s, &id, &json!({"returnImmediately": true})).await["sets"],
        json!({})
    );

    // Long poll: a poll waiting for events returns the one revoked meanwhile.
    let waiting = {
        let http = s.http.clone();
        let path = format!("/ssf/poll/{id}");
        let auth = basic(&receiver().id, &receiver().secret);
        tokio::spawn(async move {
            http.request(
                Method::POST,
                &path,
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                b"{}".to_vec(),
            )
            .await
        })
    };
    // Whether the revocation comes before or during the wait, it must be returned: poll
    // until it is (the long poll may time out empty if it started first and ran long).
    s.admin_revoke("subject", Some("d"), "test").await;
    let r = waiting.await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let sets = r.json()["sets"].as_object().unwrap().clone();
    let found = if sets.is_empty() {
        eventually(DEADLINE, "the revocation made during the poll", || async {
            let p = poll(&s, &id, &json!({"returnImmediately": true})).await;
            let sets = p["sets"].as_object().unwrap().clone();
            if sets.is_empty() {
                Err("nothing yet".to_string())
            } else {
                Ok(sets)
            }
        })
        .await
    } else {
        sets
    };
    let set = found
        .values()
        .next()
        .expect("the revocation made during the poll")
        .as_str()
        .unwrap();
    assert_eq!(
        check_set(set, &jwks, "http://latch.test")["sub_id"]["user"]["sub"],
        "d"
    );
    // An empty body is a poll with the defaults.
    let auth = basic(&receiver().id, &receiver().secret);
    let r = s
        .http
        .request(
            Method::POST,
            &format!("/ssf/poll/{id}"),
            &[("authorization", &auth)],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test]
async fn a_receiver_that_was_down_gets_every_event_after_it_comes_back_across_a_restart() {
    let mut rcv = Receiver::start().await;
    let mut s = cfg(&[rcv.url()]).start().await;
    let id = create_push(&s, &rcv.url()).await;
    s.admin_revoke("subject", Some("before-outage"), "test")
        .await;
    rcv.wait_for(1, "the first SET").await;

    rcv.stop();
    for i in 0..5 {
        s.admin_revoke("session", Some(&format!("sid-down-{i}")), "test")
            .await;
    }
    // The node crashes while the receiver is away; the cursor is in the store.
    s.kill9();
    s.restart().await;
    for i in 5..8 {
        s.admin_revoke("session", Some(&format!("sid-down-{i}")), "test")
            .await;
    }
    // Back, but refusing for a while (503): retried, nothing skipped.
    rcv.refusing.store(true, Ordering::Release);
    rcv.restart().await;
    eventually(DEADLINE, "a refused push counted", || async {
        let text = reqwest_metrics(&s).await;
        if text.contains("latch_ssf_push_failures_total{reason=\"refused\"}") {
            Ok(())
        } else {
            Err("no refused push yet".into())
        }
    })
    .await;
    rcv.refusing.store(false, Ordering::Release);
    let got = rcv
        .wait_for(9, "every SET made while the receiver was down")
        .await;
    let jwks = s.jwks().await;
    let claims: Vec<Value> = got
        .iter()
        .map(|g| check_set(&g.set, &jwks, "http://latch.test"))
        .collect();
    assert_in_order(&claims);
    let sessions: BTreeSet<String> = claims
        .iter()
        .filter_map(|c| c["sub_id"]["session"]["id"].as_str().map(str::to_string))
        .collect();
    let expected: BTreeSet<String> = (0..8).map(|i| format!("sid-down-{i}")).collect();
    assert_eq!(sessions, expected, "no gap");
    let _ = id;
}

/// Waits until poll stream `probe` of `s` carries the revocation of subject `sub` (so the
/// node applied it), and acknowledges everything on it.
async fn applied(s: &TestServer, probe: &str, sub: &str) {
    eventually(DEADLINE, "the node applied the revocation", || async {
        let p = poll(s, probe, &json!({"returnImmediately": true})).await;
        let sets = p["sets"].as_object().unwrap();
        let jtis: Vec<String> = sets.keys().cloned().collect();
        let seen = sets
            .values()
            .any(|v| decode_jwt(v.as_str().unwrap()).1["sub_id"]["user"]["sub"] == sub);
        poll(
            s,
            probe,
            &json!({"returnImmediately": true, "maxEvents": 0, "ack": jtis}),
        )
        .await;
        if seen {
            Ok(())
        } else {
            Err(format!("{sub} not applied yet"))
        }
    })
    .await;
}

/// SETs `s` pushed, by its metrics.
async fn pushed_count(s: &TestServer) -> u64 {
    reqwest_metrics(s)
        .await
        .lines()
        .find(|l| l.starts_with("latch_ssf_sets_delivered_total{method=\"push\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The metrics text of `s`.
async fn reqwest_metrics(s: &TestServer) -> String {
    let http = testkit::Http::new(s.metrics_addr);
    http.get("/metrics", None).await.text()
}

#[tokio::test]
async fn push_over_https_verifies_the_receiver_against_push_ca_file() {
    let tls = Tls::generate();
    let rcv = Receiver::start_tls(&tls).await;
    let ca = format!("push_ca_file = {:?}", tls.ca.to_str().unwrap());
    let s = cfg_with(&[rcv.url()], &ca).start().await;
    create_push(&s, &rcv.url()).await;
    s.admin_revoke("subject", Some("over-tls"), "test").await;
    let got = rcv.wait_for(1, "the SET pushed over TLS").await;
    let c = check_set(&got[0].set, &s.jwks().await, "http://latch.test");
    assert_eq!(c["sub_id"]["user"]["sub"], "over-tls");

    // Without the test CA (the system roots), the receiver's certificate is not trusted:
    // nothing is delivered, every attempt fails to connect and is retried.
    let untrusted = Receiver::start_tls(&tls).await;
    let s2 = cfg(&[untrusted.url()]).start().await;
    create_push(&s2, &untrusted.url()).await;
    s2.admin_revoke("subject", Some("never"), "test").await;
    eventually(DEADLINE, "failed TLS pushes counted", || async {
        let text = reqwest_metrics(&s2).await;
        match text
            .lines()
            .find(|l| l.starts_with("latch_ssf_push_failures_total{reason=\"connect\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
        {
            Some(n) if n >= 2 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(
        untrusted.got().is_empty(),
        "a certificate the roots do not trust got a SET"
    );
}

#[tokio::test]
async fn a_push_endpoint_not_configured_is_refused() {
    let rcv = Receiver::start().await;
    let s = cfg(&[rcv.url()]).start().await;
    let push = |url: &str| json!({"delivery": {"method": PUSH, "endpoint_url": url}});
    for url in [
        "http://127.0.0.1:1/elsewhere".to_string(),
        format!("{}/", rcv.url()),
        rcv.url().replace("http://", "https://"),
        "http://attacker.example/events".to_string(),
    ] {
        let r = send(
            &s,
            Method::POST,
            "/ssf/stream",
            Some(&push(&url)),
            &receiver(),
        )
        .await;
        r.assert_error(400, "invalid_request");
        assert!(
            r.json()["error_description"]
                .as_str()
                .unwrap()
                .contains("not a push endpoint configured"),
            "{}",
            r.text()
        );
    }
    // A receiver with no configured endpoint cannot push anywhere, not even to another's.
    let r = send(
        &s,
        Method::POST,
        "/ssf/stream",
        Some(&push(&rcv.url())),
        &other_receiver(),
    )
    .await;
    r.assert_error(400, "invalid_request");
    // Nor can a poll stream be switched to an unconfigured endpoint.
    let id = create(&s, &json!({})).await["stream_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut body = push("http://127.0.0.1:1/elsewhere");
    body["stream_id"] = json!(id);
    send(&s, Method::PATCH, "/ssf/stream", Some(&body), &receiver())
        .await
        .assert_error(400, "invalid_request");
    assert!(rcv.got().is_empty());
}

#[tokio::test]
async fn stream_management_create_read_update_replace_status_and_delete() {
    let rcv = Receiver::start().await;
    let s = cfg(&[rcv.url()]).start().await;
    let id = create_push(&s, &rcv.url()).await;
    let one = send(
        &s,
        Method::GET,
        &format!("/ssf/stream?stream_id={id}"),
        None,
        &receiver(),
    )
    .await;
    assert_eq!(one.status, StatusCode::OK);
    let one = one.json();
    assert_eq!(one["iss"], "http://latch.test");
    assert_eq!(one["aud"], RECEIVER_AUD);
    assert_eq!(one["min_verification_interval"], 3600);
    assert_eq!(one["description"], "push test");
    assert_eq!(
        one["events_requested"],
        json!([SESSION_REVOKED, CREDENTIAL_CHANGE, "urn:example:unknown"])
    );
    assert_eq!(
        one["delivery"],
        json!({"method": PUSH, "endpoint_url": rcv.url(), "authorization_header": RECEIVER_AUTH})
    );
    let list = send(&s, Method::GET, "/ssf/stream", None, &receiver())
        .await
        .json();
    assert_eq!(list, json!([one]));
    assert_eq!(
        send(&s, Method::GET, "/ssf/stream", None, &other_receiver())
            .await
            .json(),
        json!([])
    );

    // PATCH: only credential-change; PUT: back to everything, description gone.
    let patched = send(&s, Method::PATCH, "/ssf/stream", Some(&json!({"stream_id": id, "events_requested": [CREDENTIAL_CHANGE], "iss": "http://latch.test"})), &receiver()).await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text());
    assert_eq!(
        patched.json()["events_delivered"],
        json!([CREDENTIAL_CHANGE])
    );
    assert_eq!(patched.json()["description"], "push test");
    s.admin_revoke("subject", Some("not-carried"), "test").await;
    s.admin_revoke("client", Some("orders-service"), "test")
        .await;
    let got = rcv.wait_for(1, "the credential-change").await;
    let c = decode_jwt(&got[0].set).1;
    assert_eq!(event_type(&c), CREDENTIAL_CHANGE);
    let put = send(
        &s,
        Method::PUT,
        "/ssf/stream",
        Some(&json!({"stream_id": id, "delivery": {"method": PUSH, "endpoint_url": rcv.url()}})),
        &receiver(),
    )
    .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text());
    let put = put.json();
    assert!(
        put.get("description").is_none() && put.get("events_requested").is_none(),
        "{put}"
    );
    assert_eq!(
        put["delivery"],
        json!({"method": PUSH, "endpoint_url": rcv.url()})
    );

    // Paused: held, then delivered once enabled. Disabled: dropped.
    let status = |st: &str| json!({"stream_id": id, "status": st, "reason": format!("test {st}")});
    let r = send(
        &s,
        Method::POST,
        "/ssf/status",
        Some(&status("paused")),
        &receiver(),
    )
    .await;
    assert_eq!(
        r.json(),
        json!({"stream_id": id, "status": "paused", "reason": "test paused"})
    );
    let r = send(
        &s,
        Method::GET,
        &format!("/ssf/status?stream_id={id}"),
        None,
        &receiver(),
    )
    .await;
    assert_eq!(r.json()["status"], "paused");
    // A poll stream shows when the node has applied a revocation: status changes act on
    // what the node applied, so wait for that before each.
    let probe = create(&s, &json!({})).await["stream_id"]
        .as_str()
        .unwrap()
        .to_string();
    s.admin_revoke("subject", Some("held"), "test").await;
    applied(&s, &probe, "held").await;
    send(
        &s,
        Method::POST,
        "/ssf/status",
        Some(&status("disabled")),
        &receiver(),
    )
    .await;
    s.admin_revoke("subject", Some("dropped"), "test").await;
    applied(&s, &probe, "dropped").await;
    send(
        &s,
        Method::POST,
        "/ssf/status",
        Some(&status("enabled")),
        &receiver(),
    )
    .await;
    s.admin_revoke("subject", Some("after"), "test").await;
    let got = rcv.wait_for(2, "the SET after re-enabling").await;
    let subs: Vec<String> = got[1..]
        .iter()
        .map(|g| {
            decode_jwt(&g.set).1["sub_id"]["user"]["sub"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(
        subs,
        ["after"],
        "disabling dropped what was held and what came while disabled"
    );

    let r = send(
        &s,
        Method::DELETE,
        &format!("/ssf/stream?stream_id={id}"),
        None,
        &receiver(),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(r.body.is_empty());
    send(
        &s,
        Method::GET,
        &format!("/ssf/stream?stream_id={id}"),
        None,
        &receiver(),
    )
    .await
    .assert_error(404, "not_found");
    let audit: Vec<String> = s
        .audit(0)
        .await
        .iter()
        .map(|a| a["action"].as_str().unwrap().to_string())
        .collect();
    for action in [
        "ssf_stream_create",
        "ssf_stream_update",
        "ssf_stream_paused",
        "ssf_stream_delete",
    ] {
        assert!(
            audit.iter().any(|a| a == action),
            "{action} not audited: {audit:?}"
        );
    }
}

#[tokio::test]
async fn hostile_stream_requests_get_a_clear_4xx() {
    let s = cfg(&[]).start().await;
    let mine = create(&s, &json!({})).await["stream_id"]
        .as_str()
        .unwrap()
        .to_string();
    let theirs = send(
        &s,
        Method::POST,
        "/ssf/stream",
        Some(&json!({})),
        &other_receiver(),
    )
    .await
    .json()["stream_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = receiver();
    let rauth = basic(&r.id, &r.secret);
    let admin = clients::admin();
    let aauth = basic(&admin.id, &admin.secret);
    let json_ct = ("content-type", "application/json");
    type Case<'a> = (
        Method,
        String,
        Vec<(&'a str, &'a str)>,
        String,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            "/ssf/stream".into(),
            vec![json_ct],
            "{}".to_string(),
            401,
            "invalid_client",
        ),
        (
            Method::POST,
            "/ssf/stream".into(),
            vec![json_ct, ("authorization", &aauth)],
            "{}".to_string(),
            403,
            "unauthorized_client",
        ),
        (
            Method::POST,
            "/ssf/stream".into(),
            vec![("authorization", &rauth)],
            "{}".to_string(),
            415,
            "invalid_request",
        ),
        (
            Method::POST,
            "/ssf/stream".into(),
            vec![json_ct, ("authorization", &rauth)],
            "{".to_string(),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/ssf/stream".into(),
            vec![json_ct, ("authorization", &rauth)],
            "[]".to_string(),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/ssf/stream".into(),
            vec![json_ct, ("authorization", &rauth)],
            r#"{"stream_id":"x"}"#.to_string(),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/ssf/stream".into(),
            vec![json_ct, ("authorization", &rauth)],
            r#"{"delivery":{"method":"urn:ietf:rfc:9999"}}"#.to_string(),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/ssf/stream".into(),
            vec![json_ct, ("authorization", &rauth)],
            r#"{"events_requested":"all"}"#.to_string(),
            400,
            "invalid_request",
        ),
        (
            Method::GET,
            format!("/ssf/stream?stream_id={theirs}"),
            vec![("authorization", &rauth)],
            "".to_string(),
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/ssf/stream?stream_id=nope".into(),
            vec![("authorization", &rauth)],
            "".to_string(),
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/ssf/stream?stream_id=a/b".into(),
            vec![("authorization", &rauth)],
            "".to_string(),
            400,
            "invalid_request",
        ),
        (
            Method::GET,
            format!("/ssf/stream?stream_id={mine}&stream_id={mine}"),
            vec![("authorization", &rauth)],
            "".to_string(),
            400,
            "invalid_request",
        ),
        (
            Method::DELETE,
            "/ssf/stream".into(),
            vec![("authorization", &rauth)],
            "".to_string(),
            400,
            "invalid_request",
        ),
        (
            Method::DELETE,
            format!("/ssf/stream?stream_id={theirs}"),
            vec![("authorization", &rauth)],
            "".to_string(),
            404,
            "not_found",
        ),
        (
            Method::PATCH,
            "/ssf/stream".into(),
            vec![json_ct, ("authorization", &rauth)],
            r#"{"description":"x"}"#.to_string(),
            400,
            "invalid_request",
        ),
        (
            Method::PATCH,
            "/ssf/stream".into(),
            vec![json_ct, ("authorization", &rauth)],
            format!(r#"{{"stream_id":"{theirs}"}}"#),
            404,
            "not_found",
        ),
        (
            Method::PATCH,
            "/ssf/stream".into(),
            vec![json_ct, ("authorization", &rauth)],
            format!(r#"{{"stream_id":"{mine}","aud":"https://else"}}"#),
            400,
            "invalid_request",
        ),
        (
            Method::PUT,
            "/ssf/stream".into(),
            vec![json_ct, ("authorization", &rauth)],
            format!(
                r#"{{"stream_id":"{mine}","delivery":{{"method":"urn:ietf:rfc:8936","endpoint_url":"http://else"}}}}"#
            ),
            400,
            "invalid_request",
        ),
        (
            Method::HEAD,
            "/ssf/stream".into(),
            vec![("authorization", &rauth)],
            "".to_string(),
            405,
            "",
        ),
        (
            Method::GET,
            "/ssf/status".into(),
            vec![("authorization", &rauth)],
            "".to_string(),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/ssf/status".into(),
            vec![json_ct, ("authorization", &rauth)],
            format!(r#"{{"stream_id":"{mine}","status":"off"}}"#),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/ssf/status".into(),
            vec![json_ct, ("authorization", &rauth)],
            format!(r#"{{"stream_id":"{theirs}","status":"paused"}}"#),
            404,
            "not_found",
        ),
        (
            Method::POST,
            "/ssf/verify".into(),
            vec![json_ct, ("authorization", &rauth)],
            format!(r#"{{"stream_id":"{theirs}"}}"#),
            404,
            "not_found",
        ),
        (
            Method::POST,
            "/ssf/verify".into(),
            vec![json_ct, ("authorization", &rauth)],
            format!(r#"{{"stream_id":"{mine}","state":7}}"#),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            format!("/ssf/poll/{theirs}"),
            vec![json_ct, ("authorization", &rauth)],
            "{}".to_string(),
            404,
            "not_found",
        ),
        (
            Method::POST,
            format!("/ssf/poll/{mine}"),
            vec![json_ct, ("authorization", &rauth)],
            r#"{"maxEvents":-1}"#.to_string(),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            format!("/ssf/poll/{mine}"),
            vec![json_ct, ("authorization", &rauth)],
            r#"{"ack":"all"}"#.to_string(),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/ssf/poll/a%2Fb".into(),
            vec![json_ct, ("authorization", &rauth)],
            "{}".to_string(),
            404,
            "not_found",
        ),
        (
            Method::GET,
            format!("/ssf/poll/{mine}"),
            vec![("authorization", &rauth)],
            "".to_string(),
            405,
            "",
        ),
    ];
    for (method, path, headers, body, status, code) in cases {
        let resp = s
            .http
            .request(method.clone(), &path, &headers, body.as_bytes().to_vec())
            .await;
        let what = format!("{method} {path} {body}");
        if status == 405 {
            assert_eq!(resp.status.as_u16(), 405, "{what}: {}", resp.text());
            assert!(resp.header("allow").is_some(), "{what}: Allow");
        } else {
            assert_eq!(resp.status.as_u16(), status, "{what}: {}", resp.text());
            resp.assert_error(status, code);
        }
    }
    // The second verification within min_verification_interval: 429 with Retry-After.
    verify(&s, &mine, "one").await;
    let r = send(
        &s,
        Method::POST,
        "/ssf/verify",
        Some(&json!({"stream_id": mine})),
        &receiver(),
    )
    .await;
    r.assert_error(429, "slow_down");
    assert!(r.header("retry-after").is_some());
    // A push stream cannot be polled.
    let push = create_push(&s, "http://127.0.0.1:9/unused").await;
    send(
        &s,
        Method::POST,
        &format!("/ssf/poll/{push}"),
        Some(&json!({})),
        &receiver(),
    )
    .await
    .assert_error(400, "invalid_request");
    // More streams than allowed: 409 (3 allowed).
    create(&s, &json!({})).await;
    send(
        &s,
        Method::POST,
        "/ssf/stream",
        Some(&json!({})),
        &receiver(),
    )
    .await
    .assert_error(409, "conflict");
    let theirs_list = send(&s, Method::GET, "/ssf/stream", None, &other_receiver())
        .await
        .json();
    assert_eq!(
        theirs_list.as_array().unwrap().len(),
        1,
        "one receiver's requests never touched the other's streams"
    );
}

#[tokio::test]
async fn two_nodes_on_redis_deliver_each_event_in_order_and_a_restart_keeps_the_cursor() {
    let redis = RedisProcess::start().await;
    let rcv = Receiver::start().await;
    let mut nodes = cfg_with(&[rcv.url()], "lease = \"3s\"")
        .redis(&redis)
        .start_nodes(2)
        .await;
    let id = create_push(&nodes[0], &rcv.url()).await;
    // Each node takes revocations; exactly one pushes.
    for i in 0..6 {
        nodes[i % 2]
            .admin_revoke("session", Some(&format!("two-{i}")), "test")
            .await;
    }
    rcv.wait_for(6, "SETs of revocations taken on both nodes")
        .await;
    // One node holds the lease and pushes; the other pushed nothing (the lease is long
    // enough here that a slow renewal does not hand it over).
    let pushed = eventually(DEADLINE, "the pushes counted", || async {
        let mut pushed = Vec::new();
        for n in &nodes {
            pushed.push(pushed_count(n).await);
        }
        if pushed.iter().sum::<u64>() >= 6 {
            Ok(pushed)
        } else {
            Err(format!("{pushed:?}"))
        }
    })
    .await;
    assert_eq!(
        pushed.iter().filter(|c| **c > 0).count(),
        1,
        "exactly one node pushes: {pushed:?}"
    );
    assert_eq!(
        pushed.iter().sum::<u64>(),
        6,
        "each SET pushed once: {pushed:?}"
    );
    // Whichever node pushes, kill it, then the other; each comes back. Revocations
    // keep coming all along.
    let mut next = 6;
    for victim in [0, 1] {
        nodes[victim].kill9();
        let other = 1 - victim;
        for _ in 0..3 {
            nodes[other]
                .admin_revoke("session", Some(&format!("two-{next}")), "test")
                .await;
            next += 1;
        }
        nodes[victim].restart().await;
        nodes[victim]
            .admin_revoke("session", Some(&format!("two-{next}")), "test")
            .await;
        next += 1;
    }
    let expected: BTreeSet<String> = (0..next).map(|i| format!("two-{i}")).collect();
    let claims = eventually(
        DEADLINE,
        "every SET across both nodes' restarts",
        || async {
            let claims: Vec<Value> = rcv.got().iter().map(|g| decode_jwt(&g.set).1).collect();
            let seen: BTreeSet<String> = claims
                .iter()
                .filter_map(|c| c["sub_id"]["session"]["id"].as_str().map(str::to_string))
                .collect();
            if seen == expected {
                Ok(claims)
            } else {
                Err(format!("{} of {} sessions", seen.len(), expected.len()))
            }
        },
    )
    .await;
    let jwks = nodes[0].jwks().await;
    for g in rcv.got() {
        check_set(&g.set, &jwks, "http://latch.test");
    }
    assert_in_order(&claims);
    eprintln!(
        "{} SETs delivered for {} revocations (repeats: at least once)",
        claims.len(),
        next
    );
    // Polling works from either node on a stream created on the other.
    let poll_id = create(&nodes[1], &json!({})).await["stream_id"]
        .as_str()
        .unwrap()
        .to_string();
    nodes[1]
        .admin_revoke("subject", Some("polled"), "test")
        .await;
    let got = eventually(DEADLINE, "the SET polled on the other node", || async {
        let p = poll(&nodes[0], &poll_id, &json!({"returnImmediately": true})).await;
        let sets = p["sets"].as_object().unwrap().clone();
        if sets.is_empty() {
            Err("nothing yet".to_string())
        } else {
            Ok(sets)
        }
    })
    .await;
    let set = got.values().next().unwrap().as_str().unwrap();
    assert_eq!(decode_jwt(set).1["sub_id"]["user"]["sub"], "polled");
    let _ = (id, ORDERS_AUD);
}

/// A contract change is an entry of the revocation log that revokes nothing (issue 10):
/// it yields no SET, and the revocation after it is delivered as usual.
#[tokio::test]
async fn a_contract_change_yields_no_set() {
    let s = cfg(&[]).start().await;
    let id = create(&s, &json!({})).await["stream_id"]
        .as_str()
        .unwrap()
        .to_string();
    let admin = clients::admin();
    let c = "/admin/contracts/orders-service";
    let v1 = s.get(&format!("{c}/1"), admin.auth()).await.json()["body"]["content"].clone();
    let mut v2 = v1.clone();
    v2["scopes"]["orders:read"] = json!("deprecated");
    let body = json!({"base_version": 1, "contract": v2, "changelog": "ssf", "reason": "ssf test"});
    let r = s.post_json(c, &body, admin.auth()).await;
    assert_eq!(r.status, 200, "amend: {}", r.text());
    s.admin_revoke("subject", Some("after-contract"), "test")
        .await;
    // The contract entry precedes the revocation in the log: once the revocation's SET
    // is pending, the contract entry has been applied too.
    let p = eventually(DEADLINE, "the revocation's SET", || async {
        let p = poll(&s, &id, &json!({"returnImmediately": true})).await;
        match p["sets"].as_object().unwrap().len() {
            0 => Err("nothing pending yet".to_string()),
            _ => Ok(p),
        }
    })
    .await;
    let sets: Vec<&Value> = p["sets"].as_object().unwrap().values().collect();
    assert_eq!(sets.len(), 1, "only the revocation's SET: {p}");
    let claims = check_set(
        sets[0].as_str().unwrap(),
        &s.jwks().await,
        "http://latch.test",
    );
    assert_eq!(
        claims["sub_id"]["user"]["sub"], "after-contract",
        "{claims}"
    );
    assert!(claims["events"].get(SESSION_REVOKED).is_some(), "{claims}");
}
