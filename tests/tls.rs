//! TLS on the main listener: versions, ALPN (HTTP/2 and HTTP/1.1 give the same answers),
//! certificate reloads on SIGHUP and on file change with connections kept, a bad
//! replacement refused, `latch check` reading the files, and the CLI over https.
//!
//! The CA and every certificate are made here at run time (rcgen on ring).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use testkit::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A test CA that issues server certificates for 127.0.0.1 / localhost.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new() -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "latch tls test CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = p.self_signed(&ca_key).unwrap();
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            ca,
            ca_key,
        };
        std::fs::write(pki.ca_file(), pki.ca.pem()).unwrap();
        pki
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn cert_file(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    fn key_file(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    /// A new leaf (new key) named `cn`: (cert PEM, key PEM, cert DER).
    fn leaf(&self, cn: &str) -> (String, String, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    /// Writes a new leaf as the server's files; returns its DER.
    fn install(&self, cn: &str) -> Vec<u8> {
        let (cert, key, der) = self.leaf(cn);
        // The key first, then the certificate, each replaced atomically (as operators
        // and cert-manager do); the watcher may see the new key with the old certificate
        // in between, which it refuses and retries.
        write_atomic(&self.key_file(), &key);
        write_atomic(&self.cert_file(), &cert);
        der
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(self.ca_file()).unwrap();
        for c in CertificateDer::pem_slice_iter(&pem) {
            roots.add(c.unwrap()).unwrap();
        }
        roots
    }

    fn toml(&self, watch: &str) -> String {
        format!(
            "[tls]\ncert_file = {:?}\nkey_file = {:?}\nwatch_interval = {watch:?}\n",
            self.cert_file().to_str().unwrap(),
            self.key_file().to_str().unwrap()
        )
    }
}

fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn client_config(
    pki: &Pki,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(pki.roots())
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Every connection a full handshake: a resumed session shows the certificate of the
    // session it resumes, not the one the server would present now.
    c.resumption = rustls::client::Resumption::disabled();
    Arc::new(c)
}

async fn connect(
    s: &TestServer,
    config: Arc<rustls::ClientConfig>,
) -> Result<TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(s.addr)
        .await
        .map_err(|e| e.to_string())?;
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())
}

/// The DER of the certificate the server presented.
fn peer_leaf(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

type H1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn h1(stream: TlsStream<TcpStream>) -> H1 {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

fn request(method: &str, path: &str, body: &str, auth: Option<&str>) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("https://127.0.0.1{path}"))
        .header("host", "127.0.0.1");
    if !body.is_empty() {
        b = b.header("content-type", "application/x-www-form-urlencoded");
    }
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

async fn h1_send(sender: &mut H1, req: Request<Full<Bytes>>) -> (StatusCode, Bytes) {
    sender.ready().await.unwrap();
    let resp = sender
        .send_request(req)
        .await
        .expect("an answer on this connection");
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

/// A TLS server whose main listener is ready (readiness polled over TLS).
async fn start(pki: &Pki, watch: &str) -> TestServer {
    let s = TestServer::builder()
        .raw_toml(&pki.toml(watch))
        .start_no_ready()
        .await;
    let config = client_config(pki, &[&rustls::version::TLS13], &[b"http/1.1"]);
    let r = try_eventually(STARTUP_DEADLINE, || {
        let config = config.clone();
        let s = &s;
        async move {
            let mut sender = h1(connect(s, config).await?).await;
            match h1_send(&mut sender, request("GET", "/readyz", "", None)).await {
                (StatusCode::OK, _) => Ok(()),
                (st, b) => Err(format!("readyz {st} {b:?}")),
            }
        }
    })
    .await;
    if let Err(e) = r {
        panic!("TLS server never became ready: {e}\n{}", s.diagnostics());
    }
    s
}

#[tokio::test]
async fn tls_1_2_and_1_3_handshakes_and_h2_answers_as_http_1_1() {
    let pki = Pki::new();
    pki.install("first");
    let s = start(&pki, "2s").await;

    for (version, expect) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let stream = connect(&s, client_config(&pki, &[version], &[]))
            .await
            .unwrap_or_else(|e| panic!("{expect:?} handshake: {e}"));
        assert_eq!(stream.get_ref().1.protocol_version(), Some(expect));
        let mut sender = h1(stream).await;
        let (st, _) = h1_send(&mut sender, request("GET", "/readyz", "", None)).await;
        assert_eq!(st, StatusCode::OK, "{expect:?}");
    }

    // ALPN: the server prefers h2; a client offering only http/1.1 gets it.
    let both = client_config(&pki, &[&rustls::version::TLS13], &[b"h2", b"http/1.1"]);
    let h2_stream = connect(&s, both).await.unwrap();
    assert_eq!(h2_stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let only_h1 = client_config(&pki, &[&rustls::version::TLS13], &[b"http/1.1"]);
    let h1_stream = connect(&s, only_h1).await.unwrap();
    assert_eq!(
        h1_stream.get_ref().1.alpn_protocol(),
        Some(&b"http/1.1"[..])
    );

    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(h2_stream))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    let mut h1 = h1(h1_stream).await;

    let orders = clients::orders();
    let basic_auth = basic(&orders.id, &orders.secret);
    let cases: [(&str, &str, &str, Option<&str>); 3] = [
        ("GET", "/.well-known/oauth-authorization-server", "", None),
        ("POST", "/introspect", "token=abc", None),
        (
            "POST",
            "/token",
            "grant_type=client_credentials",
            Some(&basic_auth),
        ),
    ];
    for (method, path, body, auth) in cases {
        let (st1, b1) = h1_send(&mut h1, request(method, path, body, auth)).await;
        h2.ready().await.unwrap();
        let mut r2 = request(method, path, body, auth);
        // HTTP/2 carries the authority in :authority (from the URI), not Host.
        r2.headers_mut().remove("host");
        let resp = h2.send_request(r2).await.expect("HTTP/2 request");
        assert_eq!(resp.version(), hyper::Version::HTTP_2);
        let st2 = resp.status();
        let b2 = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(st1, st2, "{method} {path}");
        let (j1, j2): (Value, Value) = (
            serde_json::from_slice(&b1).unwrap(),
            serde_json::from_slice(&b2).unwrap(),
        );
        if path == "/token" {
            // Two tokens: the same shape, different texts.
            assert_eq!(st1, StatusCode::OK, "{j1}");
            assert_eq!(j1["token_type"], j2["token_type"]);
            assert_eq!(j1["scope"], j2["scope"]);
            assert!(j2["access_token"].as_str().is_some_and(|t| !t.is_empty()));
        } else {
            assert_eq!(j1, j2, "{method} {path}");
        }
    }

    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = Http::new(s.addr).try_get("/readyz", None).await;
    assert!(plain.is_err(), "plain HTTP answered on the TLS listener");
}

/// TLS 1.1 cannot be offered by rustls, so the ClientHello is written by hand: legacy
/// version 3.2 (and 3.1), no supported_versions extension. The server must answer with a fatal
/// `protocol_version` alert (70), not a ServerHello.
#[tokio::test]
async fn tls_1_1_is_refused_with_a_protocol_version_alert() {
    let pki = Pki::new();
    pki.install("first");
    let s = start(&pki, "2s").await;
    for legacy in [[3u8, 1u8], [3, 2]] {
        let mut body = Vec::new();
        body.extend_from_slice(&legacy); // client_version: TLS 1.0 / 1.1
        body.extend_from_slice(&[7u8; 32]); // random
        body.push(0); // session id
        body.extend_from_slice(&[0, 6, 0xc0, 0x09, 0xc0, 0x13, 0x00, 0x2f]); // suites
        body.extend_from_slice(&[1, 0]); // compression: null
                                         // signature_algorithms (ecdsa_secp256r1_sha256): without it rustls stops earlier,
                                         // with handshake_failure, before looking at the version.
        body.extend_from_slice(&[0, 8, 0, 0x0d, 0, 4, 0, 2, 4, 3]);
        let mut hs = vec![1u8, 0, (body.len() >> 8) as u8, body.len() as u8];
        hs.extend_from_slice(&body);
        let mut record = vec![22u8, 3, 1, (hs.len() >> 8) as u8, hs.len() as u8];
        record.extend_from_slice(&hs);
        let mut tcp = TcpStream::connect(s.addr).await.unwrap();
        tcp.write_all(&record).await.unwrap();
        let mut answer = [0u8; 7];
        tokio::time::timeout(DEADLINE, tcp.read_exact(&mut answer))
            .await
            .expect("an answer to the ClientHello")
            .expect("a whole alert record");
        assert_eq!(
            answer[0], 21,
            "an alert record, not a handshake: {answer:?}"
        );
        assert_eq!(answer[5], 2, "fatal: {answer:?}");
        assert_eq!(answer[6], 70, "protocol_version: {answer:?}");
    }
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_open_connections_keep_working() {
    let pki = Pki::new();
    let first = pki.install("first");
    // The watcher looks once an hour: only the signal can change the certificate here.
    let s = start(&pki, "1h").await;
    let config = client_config(&pki, &[&rustls::version::TLS13], &[b"http/1.1"]);
    let before = connect(&s, config.clone()).await.unwrap();
    assert_eq!(peer_leaf(&before), first);
    let mut open = h1(before).await;
    assert_eq!(
        h1_send(&mut open, request("GET", "/readyz", "", None))
            .await
            .0,
        StatusCode::OK
    );

    let second = pki.install("second");
    // Without the signal the old certificate serves.
    let stream = connect(&s, config.clone()).await.unwrap();
    assert_eq!(
        peer_leaf(&stream),
        first,
        "reloaded without a signal or a watch tick"
    );
    s.signal("HUP");
    let want = &second;
    let r = try_eventually(DEADLINE, || {
        let config = config.clone();
        let s = &s;
        async move {
            let stream = connect(s, config).await?;
            if peer_leaf(&stream) == *want {
                Ok(())
            } else {
                Err("still the first certificate".to_string())
            }
        }
    })
    .await;
    r.unwrap_or_else(|e| panic!("{e}\n{}", s.diagnostics()));
    // The connection opened before the reload still answers, on its old session.
    assert_eq!(
        h1_send(&mut open, request("GET", "/readyz", "", None))
            .await
            .0,
        StatusCode::OK
    );
    assert!(
        s.metric("latch_tls_reloads_total{result=\"ok\",trigger=\"signal\"}")
            .await
            >= 1.0
    );
    assert_eq!(s.metric("latch_tls_files_rejected").await, 0.0);
    assert!(s.pid() > 0 && s.logs().contains("TLS certificate reloaded"));
}

#[tokio::test]
async fn a_changed_file_is_picked_up_and_a_bad_one_keeps_the_old_certificate() {
    let pki = Pki::new();
    let first = pki.install("first");
    let s = start(&pki, "200ms").await;
    let config = client_config(&pki, &[&rustls::version::TLS12], &[b"http/1.1"]);
    let before = connect(&s, config.clone()).await.unwrap();
    assert_eq!(peer_leaf(&before), first);
    let mut open = h1(before).await;
    assert_eq!(
        h1_send(&mut open, request("GET", "/readyz", "", None))
            .await
            .0,
        StatusCode::OK
    );

    let serves = |want: Vec<u8>, what: &'static str| {
        let config = config.clone();
        let s = &s;
        async move {
            try_eventually(DEADLINE, || {
                let (config, want) = (config.clone(), want.clone());
                async move {
                    let stream = connect(s, config).await?;
                    if peer_leaf(&stream) == want {
                        Ok(())
                    } else {
                        Err(format!("not yet {what}"))
                    }
                }
            })
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", s.diagnostics()));
        }
    };

    // A change on disk, no signal.
    let second = pki.install("second");
    serves(second.clone(), "the second certificate").await;
    assert_eq!(
        h1_send(&mut open, request("GET", "/readyz", "", None))
            .await
            .0,
        StatusCode::OK
    );
    assert!(
        s.metric("latch_tls_reloads_total{result=\"ok\",trigger=\"watch\"}")
            .await
            >= 1.0
    );

    // Garbage in the certificate file: refused, logged, counted; the second serves.
    write_atomic(&pki.cert_file(), "not a certificate\n");
    let r = try_eventually(DEADLINE, || async {
        match s.metric("latch_tls_files_rejected").await {
            1.0 => Ok(()),
            v => Err(format!("latch_tls_files_rejected {v}")),
        }
    })
    .await;
    r.unwrap_or_else(|e| panic!("{e}\n{}", s.diagnostics()));
    assert!(
        s.metric("latch_tls_reloads_total{result=\"error\",trigger=\"watch\"}")
            .await
            >= 1.0
    );
    let stream = connect(&s, config.clone()).await.unwrap();
    assert_eq!(
        peer_leaf(&stream),
        second,
        "a bad file replaced the certificate"
    );
    let mut fresh = h1(stream).await;
    assert_eq!(
        h1_send(&mut fresh, request("GET", "/readyz", "", None))
            .await
            .0,
        StatusCode::OK
    );
    assert!(
        s.logs().contains("TLS certificate not reloaded"),
        "{}",
        s.logs()
    );

    // A certificate whose key is another one's: refused on SIGHUP too.
    let (third_cert, _, _) = pki.leaf("third");
    write_atomic(&pki.cert_file(), &third_cert);
    let errors = "latch_tls_reloads_total{result=\"error\",trigger=\"signal\"}";
    s.signal("HUP");
    let r = try_eventually(DEADLINE, || async {
        match s.metric(errors).await {
            v if v >= 1.0 => Ok(()),
            v => Err(format!("{errors} {v}")),
        }
    })
    .await;
    r.unwrap_or_else(|e| panic!("{e}\n{}", s.diagnostics()));
    let stream = connect(&s, config.clone()).await.unwrap();
    assert_eq!(
        peer_leaf(&stream),
        second,
        "a mismatched pair replaced the certificate"
    );
    assert!(s.logs().contains("does not match"), "{}", s.logs());

    // A good pair again: served, and the gauge clears.
    let fourth = pki.install("fourth");
    serves(fourth, "the fourth certificate").await;
    assert_eq!(s.metric("latch_tls_files_rejected").await, 0.0);
    assert_eq!(
        h1_send(&mut open, request("GET", "/readyz", "", None))
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn latch_check_reads_the_tls_files() {
    let pki = Pki::new();
    pki.install("first");
    let ok = TestServer::builder().raw_toml(&pki.toml("2s"));
    let (st, out, err) = ok.run_verb("check").await;
    assert!(st.success(), "{out}{err}");
    assert!(
        out.contains("tls on the main listener: 1 certificate(s)"),
        "{out}"
    );

    let half = TestServer::builder().raw_toml(&format!(
        "[tls]\ncert_file = {:?}\n",
        pki.cert_file().to_str().unwrap()
    ));
    let (st, out, err) = half.run_verb("check").await;
    assert_eq!(st.code(), Some(2), "{out}{err}");
    assert!(
        err.contains("tls.key_file") && err.contains("go together"),
        "{err}"
    );

    // The key of another certificate.
    let (_, other_key, _) = pki.leaf("other");
    write_atomic(&pki.key_file(), &other_key);
    let (st, out, err) = ok.run_verb("check").await;
    assert_eq!(st.code(), Some(2), "{out}{err}");
    assert!(
        err.contains("tls.key_file") && err.contains("does not match"),
        "{err}"
    );
    // Never the key itself in the message.
    assert!(!err.contains("PRIVATE KEY"), "{err}");

    // And `serve` refuses to start on it, naming the key.
    let (st, out, err) = ok.run_verb("serve").await;
    assert_eq!(st.code(), Some(2), "{out}{err}");
    assert!(err.contains("tls.key_file"), "{err}");
}

#[tokio::test]
async fn the_cli_talks_https_with_a_ca_file_and_says_why_not_without() {
    let pki = Pki::new();
    pki.install("first");
    let s = start(&pki, "2s").await;
    let url = format!("https://127.0.0.1:{}", s.addr.port());

    let run = |args: Vec<String>, env: Vec<(&'static str, String)>| async move {
        let mut cmd = latch_cmd_async();
        cmd.args(&args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        run_cli(cmd).await
    };
    let ca = pki.ca_file().to_str().unwrap().to_string();
    let hc = |extra: &[&str]| {
        let mut a = vec!["healthcheck".to_string(), "--server".into(), url.clone()];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };

    let (st, out, err) = run(hc(&["--ca-file", &ca]), vec![]).await;
    assert!(st.success(), "healthcheck with --ca-file: {out}{err}");
    let (st, out, err) = run(hc(&[]), vec![("LATCH_CA_FILE", ca.clone())]).await;
    assert!(st.success(), "healthcheck with LATCH_CA_FILE: {out}{err}");

    let (st, _, err) = run(hc(&[]), vec![]).await;
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("TLS") && err.contains("--ca-file"), "{err}");

    let (st, _, err) = run(hc(&["--ca-file", "/nonexistent/ca.pem"]), vec![]).await;
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("--ca-file /nonexistent/ca.pem"), "{err}");

    // An admin verb over https.
    let admin = clients::admin();
    let creds = vec![
        ("LATCH_ADMIN_CLIENT_ID", admin.id.clone()),
        ("LATCH_ADMIN_CLIENT_SECRET", admin.secret.clone()),
    ];
    let keys = |extra: &[&str]| {
        let mut a: Vec<String> = ["keys", "list", "--json", "--server", url.as_str()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let (st, out, err) = run(keys(&["--ca-file", &ca]), creds.clone()).await;
    assert!(st.success(), "keys list over https: {out}{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(v.to_string().contains("active"), "{v}");
    let (st, out, err) = run(keys(&[]), creds).await;
    assert!(!st.success(), "keys list without the CA: {out}");
    assert!(err.contains("--ca-file"), "{err}");
}

#[tokio::test]
async fn the_metrics_listener_serves_tls_with_the_same_certificate_and_its_expiry_gauge() {
    let pki = Pki::new();
    // A leaf whose notAfter is known: 2100-01-01T00:00:00Z.
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["127.0.0.1".into()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "dated");
    p.not_after = rcgen::date_time_ymd(2100, 1, 1);
    let cert = p.signed_by(&key, &pki.ca, &pki.ca_key).unwrap();
    write_atomic(&pki.key_file(), &key.serialize_pem());
    write_atomic(&pki.cert_file(), &cert.pem());
    const NOT_AFTER: i64 = 4_102_444_800;
    let s = TestServer::builder()
        .raw_toml(&format!("{}[metrics]\ntls = true\n", pki.toml("2s")))
        .start_no_ready()
        .await;
    let config = client_config(&pki, &[&rustls::version::TLS13], &[b"http/1.1"]);
    let scrape = || {
        let (config, addr) = (config.clone(), s.metrics_addr);
        async move {
            let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
                .await
                .map_err(|e| e.to_string())?;
            let der = peer_leaf(&tls);
            let mut sender = h1(tls).await;
            let (st, body) = h1_send(&mut sender, request("GET", "/metrics", "", None)).await;
            if st != StatusCode::OK {
                return Err(format!("metrics {st}"));
            }
            Ok::<_, String>((der, String::from_utf8_lossy(&body).into_owned()))
        }
    };
    let (der, text) = try_eventually(STARTUP_DEADLINE, scrape)
        .await
        .unwrap_or_else(|e| panic!("no metrics over TLS: {e}\n{}", s.diagnostics()));
    assert_eq!(der, cert.der().to_vec(), "the main listener's certificate");
    let value: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("latch_tls_certificate_expiry_seconds "))
        .unwrap_or_else(|| panic!("no expiry gauge in:\n{text}"))
        .trim()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let left = NOT_AFTER - now;
    assert!(
        (value as i64) <= left + 1 && (value as i64) >= left - 600,
        "gauge {value}, expected about {left}"
    );
    // Plain HTTP on the metrics port gets no answer.
    let plain = Http::new(s.metrics_addr).try_get("/metrics", None).await;
    assert!(
        plain.is_err(),
        "plain HTTP answered on the TLS metrics listener"
    );
}
