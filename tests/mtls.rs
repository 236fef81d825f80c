//! Mutual TLS (RFC 8705) and bound tokens at the gateway, against the real binary on an
//! ephemeral TLS port: `tls_client_auth` by subject DN and SANs under a configured client
//! CA, `self_signed_tls_client_auth` by registered certificate, certificate-bound tokens
//! (`cnf.x5t#S256`) at introspection and at `/gateway/check` with the forwarded
//! certificate, a gateway that authenticates itself by mutual TLS, DPoP-bound tokens at
//! the gateway (proof, `htm`/`htu`, `ath`, replay), and a session refreshed only with the
//! certificate it was opened with. Hostile cases throughout: a certificate from the wrong
//! CA, the right CA with the wrong subject, an unregistered self-signed certificate, no
//! certificate at all, another certificate forwarded.
//!
//! Every CA and certificate is made here at run time (rcgen on ring).

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::{json, Value};
use testkit::client_keys::ClientKey;
use testkit::clients::ORDERS_AUD;
use testkit::prelude::*;
use tokio::net::TcpStream;

// === certificates ===

/// A CA that signs certificates.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A client certificate with this subject (CN, O) and these SANs.
    fn client(&self, cn: &str, sans: Vec<SanType>) -> Leaf {
        let (p, key) = client_params(cn, sans);
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf::of(&cert, key)
    }
}

fn client_params(cn: &str, sans: Vec<SanType>) -> (CertificateParams, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    // rcgen starts with a CN of its own: the order must be this one (O, then CN).
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(DnType::OrganizationName, "latch test");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.subject_alt_names = sans;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    (p, key)
}

/// A self-signed client certificate.
fn self_signed(cn: &str) -> Leaf {
    let (p, key) = client_params(cn, vec![]);
    let cert = p.self_signed(&key).unwrap();
    Leaf::of(&cert, key)
}

/// A client's certificate and key.
struct Leaf {
    der: Vec<u8>,
    pem: String,
    key: Vec<u8>,
    /// The P-256 public key, uncompressed (0x04 || x || y).
    public: Vec<u8>,
}

impl Leaf {
    fn of(cert: &rcgen::Certificate, key: KeyPair) -> Leaf {
        Leaf {
            der: cert.der().to_vec(),
            pem: cert.pem(),
            key: key.serialize_der(),
            public: key.public_key_raw().to_vec(),
        }
    }

    /// A JWKS with this certificate's key and the certificate in `x5c` (RFC 8705 §2.2).
    fn jwks(&self) -> Value {
        use base64::Engine;
        let std = base64::engine::general_purpose::STANDARD;
        json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": "c1",
            "x": b64url(&self.public[1..33]), "y": b64url(&self.public[33..65]),
            "x5c": [std.encode(&self.der)],
        }]})
    }

    fn sha256_hex(&self) -> String {
        sha256_hex(&self.der)
    }

    /// `x5t#S256`.
    fn x5t(&self) -> String {
        b64url(ring::digest::digest(&ring::digest::SHA256, &self.der).as_ref())
    }

    /// As nginx's `$ssl_client_escaped_cert` forwards it.
    fn escaped(&self) -> String {
        let mut out = String::new();
        for b in self.pem.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }
}

/// The server's own certificate (for 127.0.0.1) and the client CA, in a directory.
struct Pki {
    dir: tempfile::TempDir,
    server_ca: Ca,
    client_ca: Ca,
}

impl Pki {
    fn new() -> Pki {
        let server_ca = Ca::new("latch mtls test server CA");
        let client_ca = Ca::new("latch mtls test client CA");
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["127.0.0.1".into()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, "latch");
        let cert = p.signed_by(&key, &server_ca.cert, &server_ca.key).unwrap();
        let pki = Pki {
            dir,
            server_ca,
            client_ca,
        };
        std::fs::write(pki.path("server.pem"), cert.pem()).unwrap();
        std::fs::write(pki.path("server.key"), key.serialize_pem()).unwrap();
        std::fs::write(pki.path("client-ca.pem"), pki.client_ca.cert.pem()).unwrap();
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn toml(&self) -> String {
        format!(
            "[tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\n",
            self.path("server.pem").to_str().unwrap(),
            self.path("server.key").to_str().unwrap(),
            self.path("client-ca.pem").to_str().unwrap(),
        )
    }

    fn client_config(&self, cert: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.server_ca.cert.der().to_vec()))
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut c = match cert {
            Some(l) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from(l.der.clone())],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(l.key.clone())),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        c.resumption = rustls::client::Resumption::disabled();
        Arc::new(c)
    }
}

// === requests over TLS ===

/// One request on a new TLS connection presenting `cert`.
async fn send(
    s: &TestServer,
    pki: &Pki,
    cert: Option<&Leaf>,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(pki.client_config(cert))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .expect("TLS handshake (a client certificate is asked for, never required)");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut b = Request::builder().method(method).uri(path);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        b = b.header("host", "127.0.0.1");
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = sender
        .send_request(b.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// `POST /token` with `params` (and `client_id`) over a connection presenting `cert`.
async fn token_as(
    s: &TestServer,
    pki: &Pki,
    cert: Option<&Leaf>,
    client_id: &str,
    params: &[(&str, &str)],
    more: &[(&str, &str)],
) -> Resp {
    let mut all = vec![("client_id", client_id)];
    all.extend_from_slice(params);
    let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
    headers.extend_from_slice(more);
    send(s, pki, cert, Method::POST, "/token", &headers, &form(&all)).await
}

async fn client_credentials(s: &TestServer, pki: &Pki, cert: Option<&Leaf>, id: &str) -> Resp {
    token_as(
        s,
        pki,
        cert,
        id,
        &[("grant_type", "client_credentials")],
        &[],
    )
    .await
}

/// Introspection by the unrestricted resource server (Basic), over TLS.
async fn introspect(s: &TestServer, pki: &Pki, token: &str) -> Value {
    let rs = clients::rs_all();
    let auth = basic(&rs.id, &rs.secret);
    let r = send(
        s,
        pki,
        None,
        Method::POST,
        "/introspect",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("authorization", &auth),
        ],
        &form(&[("token", token)]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// `/gateway/check` as the unrestricted resource server (its credential in the
/// gateway header), with the user's `Authorization` and more headers.
async fn gateway_check(
    s: &TestServer,
    pki: &Pki,
    authorization: &str,
    more: &[(&str, &str)],
) -> Resp {
    let rs = clients::rs_all();
    let cred = basic(&rs.id, &rs.secret);
    let mut headers = vec![
        ("x-latch-client-authorization", cred.as_str()),
        ("authorization", authorization),
    ];
    headers.extend_from_slice(more);
    send(s, pki, None, Method::GET, "/gateway/check", &headers, "").await
}

/// A client-credentials token for a secret client, over TLS.
async fn issue(s: &TestServer, pki: &Pki, client: &ClientDef) -> String {
    issue_presenting(s, pki, None, client).await
}

/// [`issue`], the connection presenting `cert` (authentication is still by the secret).
async fn issue_presenting(
    s: &TestServer,
    pki: &Pki,
    cert: Option<&Leaf>,
    client: &ClientDef,
) -> String {
    let auth = basic(&client.id, &client.secret);
    let r = send(
        s,
        pki,
        cert,
        Method::POST,
        "/token",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("authorization", &auth),
        ],
        &form(&[("grant_type", "client_credentials")]),
    )
    .await;
    access_token(&r)
}

fn mtls_client(id: &str) -> ClientDef {
    ClientDef::new(id)
        .without_secret()
        .grants(&["client_credentials"])
        .scopes(&["orders:read"])
        .audiences(&[ORDERS_AUD])
}

/// A TLS server with `clients` beside the standard ones; ready once `/readyz` answers
/// over TLS.
async fn start(pki: &Pki, clients: Vec<ClientDef>) -> TestServer {
    start_with(pki, clients, |b| b).await
}

async fn start_with(
    pki: &Pki,
    extra: Vec<ClientDef>,
    f: impl FnOnce(ServerBuilder) -> ServerBuilder,
) -> TestServer {
    let mut b = TestServer::builder().raw_toml(&pki.toml());
    for c in extra {
        b = b.client(c);
    }
    let s = f(b).start_no_ready().await;
    let r = try_eventually(STARTUP_DEADLINE, || async {
        let tcp = TcpStream::connect(s.addr)
            .await
            .map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(pki.client_config(None))
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        drop(tls);
        let r = send(&s, pki, None, Method::GET, "/readyz", &[], "").await;
        match r.status {
            StatusCode::OK => Ok(()),
            st => Err(format!("readyz {st}")),
        }
    })
    .await;
    if let Err(e) = r {
        panic!("TLS server never became ready: {e}\n{}", s.diagnostics());
    }
    s
}

fn access_token(r: &Resp) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["access_token"].as_str().unwrap().to_string()
}

// === tests ===

#[tokio::test]
async fn tls_client_auth_by_subject_or_san_and_self_signed_by_registration() {
    let pki = Pki::new();
    let wrong_ca = Ca::new("latch mtls test client CA");
    let dn = pki.client_ca.client("pki-dn", vec![]);
    let dns = pki.client_ca.client(
        "anything",
        vec![SanType::DnsName("svc.example".try_into().unwrap())],
    );
    let uri = pki.client_ca.client(
        "anything",
        vec![SanType::URI("spiffe://latch.test/svc".try_into().unwrap())],
    );
    let own = self_signed("selfie");
    let by_file = self_signed("selfie-file");
    let by_jwks = self_signed("selfie-jwks");
    std::fs::write(pki.path("selfie-file.pem"), &by_file.pem).unwrap();
    let s = start(
        &pki,
        vec![
            mtls_client("pki-dn").with("tls_client_auth_subject_dn", "CN=pki-dn,O=latch test"),
            mtls_client("pki-dns").with("tls_client_auth_san_dns", "svc.example"),
            mtls_client("pki-uri").with("tls_client_auth_san_uri", "spiffe://latch.test/svc"),
            mtls_client("selfie")
                .with("self_signed_tls_client_auth", true)
                .with(
                    "tls_client_certificate_sha256",
                    toml::Value::Array(vec![own.sha256_hex().into()]),
                ),
            mtls_client("selfie-file")
                .with("self_signed_tls_client_auth", true)
                .with(
                    "tls_client_certificate_file",
                    pki.path("selfie-file.pem").to_str().unwrap(),
                ),
            mtls_client("selfie-jwks")
                .jwks(by_jwks.jwks())
                .with("self_signed_tls_client_auth", true),
        ],
    )
    .await;

    // Each client with its certificate: a token bound to that certificate.
    for (id, leaf) in [
        ("pki-dn", &dn),
        ("pki-dns", &dns),
        ("pki-uri", &uri),
        ("selfie", &own),
        ("selfie-file", &by_file),
        ("selfie-jwks", &by_jwks),
    ] {
        let r = client_credentials(&s, &pki, Some(leaf), id).await;
        let token = access_token(&r);
        assert_eq!(r.json()["token_type"], "Bearer", "{id}");
        let (_, claims, _) = decode_jwt(&token);
        assert_eq!(claims["cnf"], json!({"x5t#S256": leaf.x5t()}), "{id}");
    }

    // Hostile: the same subject from another CA; the right CA with another subject or
    // SAN; a self-signed certificate with the right subject but not registered; a
    // registered self-signed one where a CA-issued one is required; another client's
    // certificate; no certificate at all.
    let foreign = wrong_ca.client("pki-dn", vec![]);
    let wrong_subject = pki.client_ca.client("pki-dn2", vec![]);
    let wrong_san = pki.client_ca.client(
        "pki-dns",
        vec![SanType::DnsName("other.example".try_into().unwrap())],
    );
    let unregistered = self_signed("selfie");
    let self_made_dn = self_signed("pki-dn");
    let cases: [(&str, Option<&Leaf>, &str); 9] = [
        ("pki-dn", Some(&foreign), "certificate from another CA"),
        ("pki-dn", Some(&wrong_subject), "right CA, wrong subject"),
        ("pki-dns", Some(&wrong_san), "right CA, wrong SAN"),
        ("selfie", Some(&unregistered), "unregistered self-signed"),
        ("pki-dn", Some(&self_made_dn), "self-signed for a CA client"),
        ("selfie", Some(&dn), "another client's certificate"),
        (
            "selfie-jwks",
            Some(&by_file),
            "another self-signed client's certificate",
        ),
        ("pki-dn", None, "no certificate"),
        ("selfie", None, "no certificate"),
    ];
    for (id, leaf, what) in cases {
        let r = client_credentials(&s, &pki, leaf, id).await;
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        assert_eq!(r.json()["error"], "invalid_client", "{what}");
    }

    // A mutual-TLS client cannot also bind its token to a DPoP key.
    let key = ClientKey::ed25519("p");
    let proof = key.dpop_proof(None);
    let r = token_as(
        &s,
        &pki,
        Some(&own),
        "selfie",
        &[("grant_type", "client_credentials")],
        &[("dpop", &proof)],
    )
    .await;
    r.assert_error(400, "invalid_request");

    // A secret client presenting a certificate: authenticated by its secret, not bound.
    let token = issue_presenting(&s, &pki, Some(&dn), &clients::orders()).await;
    assert!(decode_jwt(&token).1.get("cnf").is_none());

    // Metadata says so.
    let m = send(
        &s,
        &pki,
        None,
        Method::GET,
        "/.well-known/oauth-authorization-server",
        &[],
        "",
    )
    .await
    .json();
    let methods = m["token_endpoint_auth_methods_supported"].clone();
    for method in [
        "tls_client_auth",
        "self_signed_tls_client_auth",
        "private_key_jwt",
    ] {
        assert!(
            methods.as_array().unwrap().contains(&json!(method)),
            "{method}: {m}"
        );
    }
    assert_eq!(m["tls_client_certificate_bound_access_tokens"], true, "{m}");
}

#[tokio::test]
async fn a_certificate_bound_token_shows_its_cnf_and_passes_the_gateway_only_with_its_certificate()
{
    let pki = Pki::new();
    let a = self_signed("svc");
    let b = self_signed("svc");
    let s = start(
        &pki,
        vec![mtls_client("svc")
            .with("self_signed_tls_client_auth", true)
            .with(
                "tls_client_certificate_sha256",
                toml::Value::Array(vec![a.x5t().into(), b.sha256_hex().into()]),
            )],
    )
    .await;
    let token = access_token(&client_credentials(&s, &pki, Some(&a), "svc").await);

    // Introspection: active, Bearer, and the certificate's thumbprint to compare.
    let i = introspect(&s, &pki, &token).await;
    assert_eq!(i["active"], true, "{i}");
    assert_eq!(i["token_type"], "Bearer", "{i}");
    assert_eq!(i["cnf"], json!({"x5t#S256": a.x5t()}), "{i}");

    let bearer = format!("Bearer {token}");
    // Certificate B forwarded (it authenticates the same client, but the token is A's).
    let r = gateway_check(&s, &pki, &bearer, &[("x-latch-client-cert", &b.escaped())]).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let challenge = r.header("www-authenticate").unwrap();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    assert_eq!(r.header("x-latch-failure").as_deref(), Some("token"));
    // None forwarded; garbage forwarded.
    let r = gateway_check(&s, &pki, &bearer, &[]).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = gateway_check(
        &s,
        &pki,
        &bearer,
        &[("x-latch-client-cert", "not%20a%20cert")],
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text());
    // As DPoP: refused, whatever the certificate.
    let r = gateway_check(
        &s,
        &pki,
        &format!("DPoP {token}"),
        &[("x-latch-client-cert", &a.escaped())],
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text());
    // Certificate A: through, with the token's subject.
    let r = gateway_check(&s, &pki, &bearer, &[("x-latch-client-cert", &a.escaped())]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-latch-subject").as_deref(), Some("svc"));
    // Plain PEM is accepted as well as nginx's escaped form.
    let r = gateway_check(
        &s,
        &pki,
        &bearer,
        &[("x-latch-client-cert", &a.pem.replace('\n', "%0A"))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn a_gateway_authenticates_itself_by_mutual_tls() {
    let pki = Pki::new();
    let gw_cert = pki.client_ca.client("gateway", vec![]);
    let gateway = ClientDef::new("gw")
        .without_secret()
        .roles(&["introspect"])
        .with("tls_client_auth_subject_dn", "CN=gateway,O=latch test");
    let s = start(&pki, vec![gateway]).await;
    let token = issue(&s, &pki, &clients::orders()).await;
    let bearer = format!("Bearer {token}");
    let check = |cert: Option<&'static Leaf>, id: Option<&'static str>| {
        let (s, pki, bearer) = (&s, &pki, bearer.clone());
        async move {
            let mut h = vec![("authorization", bearer.as_str())];
            if let Some(id) = id {
                h.push(("x-latch-client-id", id));
            }
            send(s, pki, cert, Method::GET, "/gateway/check", &h, "").await
        }
    };
    let gw: &'static Leaf = Box::leak(Box::new(gw_cert));
    let other: &'static Leaf = Box::leak(Box::new(pki.client_ca.client("not-gateway", vec![])));
    let r = check(Some(gw), Some("gw")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-latch-client").as_deref(),
        Some(clients::orders().id.as_str())
    );
    // Another certificate, no certificate, no client id, another client's id: the
    // gateway's own failure.
    for (cert, id, what) in [
        (Some(other), Some("gw"), "wrong certificate"),
        (None, Some("gw"), "no certificate"),
        (Some(gw), None, "no client id"),
        (Some(gw), Some("orders-service"), "another client id"),
    ] {
        let r = check(cert, id).await;
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        assert_eq!(
            r.header("x-latch-failure").as_deref(),
            Some("gateway"),
            "{what}"
        );
    }
}

/// A DPoP proof for the user's request, with `ath` for `token` when given.
fn resource_proof(key: &ClientKey, htm: &str, htu: &str, token: Option<&str>) -> String {
    let header = json!({"typ": "dpop+jwt", "alg": key.alg(), "jwk": key.public_jwk()});
    let mut claims = json!({
        "jti": format!("rp-{}", rand_suffix()),
        "htm": htm, "htu": htu, "iat": now_secs(),
    });
    if let Some(t) = token {
        claims["ath"] = json!(b64url(
            ring::digest::digest(&ring::digest::SHA256, t.as_bytes()).as_ref()
        ));
    }
    key.sign(&header, &claims)
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

#[tokio::test]
async fn a_dpop_bound_token_passes_the_gateway_only_with_a_fresh_proof_for_the_request() {
    let pki = Pki::new();
    let s = start(&pki, vec![]).await;
    let key = ClientKey::ed25519("p");
    let other = ClientKey::ed25519("p");
    let orders = clients::orders();
    let auth = basic(&orders.id, &orders.secret);
    let proof = key.dpop_proof(None);
    let r = send(
        &s,
        &pki,
        None,
        Method::POST,
        "/token",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("authorization", &auth),
            ("dpop", &proof),
        ],
        &form(&[("grant_type", "client_credentials")]),
    )
    .await;
    let token = access_token(&r);
    assert_eq!(r.json()["token_type"], "DPoP");
    let url = "https://api.example/orders/1";
    let fwd = [
        ("x-forwarded-method", "GET"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "api.example"),
        ("x-forwarded-uri", "/orders/1?expand=items"),
    ];
    let dpop_auth = format!("DPoP {token}");
    let with = |proof: &str| {
        let mut h = fwd.to_vec();
        h.push(("dpop", proof));
        h.into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    };
    let refused = |r: &Resp, what: &str| {
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(challenge.starts_with("DPoP "), "{what}: {challenge}");
        assert!(
            challenge.contains("error=\"invalid_token\""),
            "{what}: {challenge}"
        );
    };
    let call = |authz: String, headers: Vec<(String, String)>| {
        let (s, pki) = (&s, &pki);
        async move {
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect();
            gateway_check(s, pki, &authz, &h).await
        }
    };

    // As a plain bearer token, even with a good proof: refused.
    let good = resource_proof(&key, "GET", url, Some(&token));
    let r = call(format!("Bearer {token}"), with(&good)).await;
    refused(&r, "bearer scheme");
    // No proof.
    let r = call(
        dpop_auth.clone(),
        fwd.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
    )
    .await;
    refused(&r, "no proof");
    // Wrong htu, wrong htm, no ath, wrong ath, another key.
    let cases = [
        (
            resource_proof(&key, "GET", "https://api.example/orders/2", Some(&token)),
            "wrong htu",
        ),
        (resource_proof(&key, "POST", url, Some(&token)), "wrong htm"),
        (resource_proof(&key, "GET", url, None), "no ath"),
        (
            resource_proof(&key, "GET", url, Some("another-token")),
            "wrong ath",
        ),
        (
            resource_proof(&other, "GET", url, Some(&token)),
            "another key",
        ),
    ];
    for (proof, what) in &cases {
        let r = call(dpop_auth.clone(), with(proof)).await;
        refused(&r, what);
    }
    // The gateway did not forward the URL: refused.
    let r = call(dpop_auth.clone(), vec![("dpop".into(), good.clone())]).await;
    refused(&r, "no forwarded URL");
    // The good proof passes once; replayed, it is refused.
    let r = call(dpop_auth.clone(), with(&good)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(dpop_auth.clone(), with(&good)).await;
    refused(&r, "replayed proof");
    // Envoy's form: the user's path appended to the check path, the user's Host kept,
    // only X-Forwarded-Proto added.
    let rs = clients::rs_all();
    let cred = basic(&rs.id, &rs.secret);
    let envoy = |proof: String| {
        let (s, pki, cred, dpop_auth) = (&s, &pki, cred.clone(), dpop_auth.clone());
        async move {
            send(
                s,
                pki,
                None,
                Method::GET,
                "/gateway/check/orders/1?expand=items",
                &[
                    ("host", "api.example"),
                    ("x-forwarded-proto", "https"),
                    ("x-latch-client-authorization", &cred),
                    ("authorization", &dpop_auth),
                    ("dpop", &proof),
                ],
                "",
            )
            .await
        }
    };
    let r = envoy(resource_proof(&key, "GET", url, Some(&token))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = envoy(resource_proof(
        &key,
        "GET",
        "https://api.example/orders/2",
        Some(&token),
    ))
    .await;
    refused(&r, "envoy, wrong htu");
    // An unbound token presented as DPoP: refused.
    let plain = issue(&s, &pki, &orders).await;
    let proof = resource_proof(&key, "GET", url, Some(&plain));
    let r = call(format!("DPoP {plain}"), with(&proof)).await;
    assert_eq!(r.status, 401, "{}", r.text());
}

#[tokio::test]
async fn a_session_opened_over_mutual_tls_refreshes_only_with_the_same_certificate() {
    let pki = Pki::new();
    let idp = Idp::new("https://idp.mtls.test");
    let a = self_signed("hook");
    let b = self_signed("hook");
    let hook = ClientDef::new("idp-hook")
        .without_secret()
        .grants(&[
            "urn:ietf:params:oauth:grant-type:token-exchange",
            "refresh_token",
        ])
        .scopes(&["profile"])
        .audiences(&[ORDERS_AUD])
        .roles(&["session_issuer"])
        .with("self_signed_tls_client_auth", true)
        .with(
            "tls_client_certificate_sha256",
            toml::Value::Array(vec![a.sha256_hex().into(), b.sha256_hex().into()]),
        );
    let s = start_with(&pki, vec![hook], |sb| sb.trusted_issuer(idp.trusted())).await;
    let assertion = idp.assertion("alice");
    let r = token_as(
        &s,
        &pki,
        Some(&a),
        "idp-hook",
        &[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", assertion.as_str()),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
        ],
        &[],
    )
    .await;
    let first = access_token(&r);
    assert_eq!(decode_jwt(&first).1["cnf"]["x5t#S256"], a.x5t());
    let refresh = r.json()["refresh_token"].as_str().unwrap().to_string();
    let params = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh.as_str()),
    ];
    // Certificate B authenticates the client but is not the session's: refused, and the
    // refresh token is not spent.
    let r = token_as(&s, &pki, Some(&b), "idp-hook", &params, &[]).await;
    r.assert_error(400, "invalid_grant");
    // The session's certificate: a new token bound to it.
    let r = token_as(&s, &pki, Some(&a), "idp-hook", &params, &[]).await;
    let next = access_token(&r);
    assert_eq!(decode_jwt(&next).1["cnf"]["x5t#S256"], a.x5t());
    assert_eq!(decode_jwt(&next).1["sub"], decode_jwt(&first).1["sub"]);
}

#[tokio::test]
async fn check_refuses_mutual_tls_settings_that_cannot_work() {
    let pki = Pki::new();
    let base = || mtls_client("m");
    let cases: Vec<(ClientDef, bool, &str)> = vec![
        (
            base()
                .with("tls_client_auth_subject_dn", "CN=a")
                .with("tls_client_auth_san_dns", "a.example"),
            true,
            "clients[0].tls_client_auth_san_dns",
        ),
        (
            base().with("tls_client_auth_subject_dn", "not a dn"),
            true,
            "clients[0].tls_client_auth_subject_dn",
        ),
        (
            base().with("tls_client_auth_san_ip", "ten"),
            true,
            "clients[0].tls_client_auth_san_ip",
        ),
        (
            base().with(
                "tls_client_certificate_sha256",
                toml::Value::Array(vec!["ab".into()]),
            ),
            true,
            "clients[0].tls_client_certificate_sha256",
        ),
        (
            base().with("self_signed_tls_client_auth", true),
            true,
            "clients[0].self_signed_tls_client_auth",
        ),
        // Without TLS on the listener, mutual TLS cannot work.
        (
            base().with("tls_client_auth_san_dns", "a.example"),
            false,
            "clients[0].tls_client_auth_san_dns",
        ),
    ];
    for (client, tls, needle) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut b = TestServer::builder().clients([client]);
        if tls {
            b = b.raw_toml(&pki.toml());
        }
        let path = b.write_config(dir.path());
        let mut cmd = latch_cmd_async();
        cmd.arg("check").arg("--config").arg(&path);
        let (status, out, err) = run_cli(cmd).await;
        assert!(!status.success(), "{needle}: {out}");
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

#[tokio::test]
async fn the_client_ca_file_is_reloaded_with_the_certificate() {
    let pki = Pki::new();
    let old = pki.client_ca.client("svc", vec![]);
    let s = start(
        &pki,
        vec![mtls_client("svc").with("tls_client_auth_subject_dn", "CN=svc,O=latch test")],
    )
    .await;
    assert_eq!(
        client_credentials(&s, &pki, Some(&old), "svc").await.status,
        200
    );
    // The client CA is replaced (atomically) and the process told.
    let next_ca = Ca::new("latch mtls test client CA 2");
    let new = next_ca.client("svc", vec![]);
    assert_eq!(
        client_credentials(&s, &pki, Some(&new), "svc").await.status,
        401
    );
    let tmp = pki.path("client-ca.pem.tmp");
    std::fs::write(&tmp, next_ca.cert.pem()).unwrap();
    std::fs::rename(&tmp, pki.path("client-ca.pem")).unwrap();
    s.signal("HUP");
    eventually(DEADLINE, "the new client CA is in use", || async {
        match client_credentials(&s, &pki, Some(&new), "svc").await.status {
            StatusCode::OK => Ok(()),
            st => Err(format!("{st}")),
        }
    })
    .await;
    // The old CA's certificates no longer authenticate.
    let r = client_credentials(&s, &pki, Some(&old), "svc").await;
    r.assert_error(401, "invalid_client");
    // A broken file is refused; the CAs in use stay.
    std::fs::write(&tmp, "not a certificate").unwrap();
    std::fs::rename(&tmp, pki.path("client-ca.pem")).unwrap();
    s.signal("HUP");
    eventually(DEADLINE, "the refusal is logged", || async {
        if s.diagnostics().contains("TLS client CAs not reloaded") {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    })
    .await;
    assert_eq!(
        client_credentials(&s, &pki, Some(&new), "svc").await.status,
        200
    );
}

/// A gateway's failed certificate authentications count against the client id it names,
/// as every other method's do: a gateway cannot try certificates for a client id without
/// end (the address's own limit is set far above here, so only the id's can refuse).
#[tokio::test]
async fn failed_gateway_certificates_count_against_the_named_client() {
    let pki = Pki::new();
    let gateway = ClientDef::new("gw")
        .without_secret()
        .roles(&["introspect"])
        .with("tls_client_auth_subject_dn", "CN=gateway,O=latch test");
    let s = start_with(&pki, vec![gateway], |b| {
        b.config(|c| {
            c.limits.auth_failure_rate = Some("3/m".into());
            c.limits.auth_failure_burst = Some(3);
            c.limits.auth_failure_ip_rate = Some("1000/m".into());
            c.limits.auth_failure_ip_burst = Some(1000);
        })
    })
    .await;
    let token = issue(&s, &pki, &clients::orders()).await;
    let bearer = format!("Bearer {token}");
    let other = pki.client_ca.client("not-gateway", vec![]);
    let h = [
        ("authorization", bearer.as_str()),
        ("x-latch-client-id", "gw"),
    ];
    let mut statuses = Vec::new();
    let mut limited = String::new();
    for _ in 0..6 {
        let r = send(
            &s,
            &pki,
            Some(&other),
            Method::GET,
            "/gateway/check",
            &h,
            "",
        )
        .await;
        statuses.push(r.status.as_u16());
        if r.status == 429 {
            limited = r.text();
        }
    }
    assert_eq!(&statuses[..3], &[401, 401, 401], "{statuses:?}");
    assert!(
        statuses[3..].contains(&429),
        "failures past the client's burst are rate limited: {statuses:?}"
    );
    assert!(limited.contains("auth_failure_client"), "{limited}");
}
