//! TLS on the main listener (rustls, ring provider): the certificate chain and key from
//! `tls.cert_file` / `tls.key_file`, TLS 1.2 and 1.3 only, ALPN `h2` and `http/1.1`.
//!
//! The server config never changes; its certificate resolver ([`Certs`]) hands every new
//! handshake the pair in use now, held in an `ArcSwap`. [`reloader`] replaces that pair
//! on SIGHUP and when the files' contents change (compared every `tls.watch_interval`).
//! Established connections keep the session they negotiated, so a reload drops none. A
//! pair that cannot be read, parsed or whose key does not match the certificate is
//! refused: the pair in use stays, an error is logged and `latch_tls_reloads_total
//! {result="error"}` counts it (`latch_tls_files_rejected` is 1 until a good pair loads).
//! `latch_tls_certificate_expiry_seconds` says how long the certificate in use has left.
//!
//! Mutual TLS (RFC 8705): with [`acceptor`]`(.., true)` every client is asked for a
//! certificate and none is required; [`ClientAuth`] judges the chain a connection
//! presented against `tls.client_ca_file`, and the accept loop hands the result to every
//! request of that connection (`crate::clients::PeerCert`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use crate::clients::PeerCert;
use crate::config::{ConfigError, TlsConfig};
use crate::metrics as m;

/// ALPN protocol ids, in the server's order of preference.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Why a certificate/key pair was not loaded: which config key's file, and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct TlsError {
    /// `tls.cert_file` or `tls.key_file`.
    pub key: &'static str,
    pub path: PathBuf,
    pub reason: String,
}

impl From<TlsError> for ConfigError {
    fn from(e: TlsError) -> ConfigError {
        ConfigError::new(e.key, e.to_string())
    }
}

/// The two files' bytes, as read at one moment.
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl Files {
    fn read(cert: &Path, key: &Path) -> Result<Files, TlsError> {
        let read = |k: &'static str, p: &Path| {
            std::fs::read(p).map_err(|e| TlsError {
                key: k,
                path: p.to_path_buf(),
                reason: format!("cannot read: {e}"),
            })
        };
        Ok(Files {
            cert: read("tls.cert_file", cert)?,
            key: read("tls.key_file", key)?,
        })
    }

    /// SHA-256 over both files: what "changed" means for the watcher.
    fn digest(&self) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(&(self.cert.len() as u64).to_be_bytes());
        ctx.update(&self.cert);
        ctx.update(&self.key);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    fn parse(&self, cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
        let bad_cert = |reason: String| TlsError {
            key: "tls.cert_file",
            path: cert.to_path_buf(),
            reason,
        };
        let bad_key = |reason: String| TlsError {
            key: "tls.key_file",
            path: key.to_path_buf(),
            reason,
        };
        let chain = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad_cert(format!("not a PEM certificate file: {e}")))?;
        if chain.is_empty() {
            return Err(bad_cert("holds no PEM certificate".into()));
        }
        // Never echo the key file's contents: only what kind of problem it has.
        let private = PrivateKeyDer::from_pem_slice(&self.key)
            .map_err(|_| bad_key("holds no PEM private key (PKCS#8, PKCS#1 or SEC1)".into()))?;
        let provider = rustls::crypto::ring::default_provider();
        CertifiedKey::from_der(chain, private, &provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                bad_key("does not match the first certificate of tls.cert_file".into())
            }
            rustls::Error::General(_) => bad_key("not a key type ring can sign with".into()),
            other => bad_cert(format!("not usable: {other}")),
        })
    }
}

/// Reads and checks a pair, as `latch check` and the start do. Returns the chain length.
pub fn check(config: &TlsConfig) -> Result<Option<usize>, TlsError> {
    let Some((cert, key)) = config.files() else {
        return Ok(None);
    };
    let files = Files::read(cert, key)?;
    Ok(Some(files.parse(cert, key)?.cert.len()))
}

/// The pair new handshakes get, and which files it came from.
#[derive(Debug)]
pub struct Certs {
    current: ArcSwap<CertifiedKey>,
    /// The notAfter (Unix seconds) of the leaf in use; `i64::MIN` when it cannot be read.
    not_after: AtomicI64,
    cert_file: PathBuf,
    key_file: PathBuf,
    /// Digest of the files last tried (loaded or refused): unchanged files are not retried
    /// by the watcher, so a bad pair is reported once, not every interval.
    last_seen: Mutex<[u8; 32]>,
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
    out
}

fn read_ca(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError {
        key: "tls.client_ca_file",
        path: path.to_path_buf(),
        reason: format!("cannot read: {e}"),
    })
}

/// The verifier of the CA certificates in `pem` (read from `path`).
fn roots(path: &Path, pem: &[u8]) -> Result<Roots, TlsError> {
    let bad = |reason: String| TlsError {
        key: "tls.client_ca_file",
        path: path.to_path_buf(),
        reason,
    };
    let mut store = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem) {
        let c = c.map_err(|e| bad(format!("not a PEM certificate file: {e}")))?;
        store
            .add(c)
            .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
    }
    if store.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider)
            .allow_unauthenticated()
            .build()
            .map_err(|e| bad(format!("not usable: {e}")))?;
    Ok(Roots(verifier))
}

/// The notAfter (Unix seconds) of a pair's leaf certificate; `i64::MIN` when unreadable
/// (rustls accepted it, so that would be an odd certificate: no gauge then).
fn not_after(pair: &CertifiedKey) -> i64 {
    use x509_cert::der::Decode;
    pair.cert
        .first()
        .and_then(|leaf| x509_cert::Certificate::from_der(leaf).ok())
        .map(|c| {
            c.tbs_certificate
                .validity
                .not_after
                .to_unix_duration()
                .as_secs() as i64
        })
        .unwrap_or(i64::MIN)
}

/// What started a reload (the `trigger` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Signal,
    Watch,
}

impl Trigger {
    fn label(self) -> &'static str {
        match self {
            Trigger::Signal => "signal",
            Trigger::Watch => "watch",
        }
    }
}

impl Certs {
    /// Loads the configured pair; `None` when TLS is off.
    pub fn load(config: &TlsConfig) -> Result<Option<Arc<Certs>>, TlsError> {
        let Some((cert, key)) = config.files() else {
            return Ok(None);
        };
        let files = Files::read(cert, key)?;
        let pair = files.parse(cert, key)?;
        metrics::gauge!(m::TLS_FILES_REJECTED).set(0.0);
        let certs = Certs {
            not_after: AtomicI64::new(not_after(&pair)),
            current: ArcSwap::from_pointee(pair),
            cert_file: cert.to_path_buf(),
            key_file: key.to_path_buf(),
            last_seen: Mutex::new(files.digest()),
        };
        certs.publish_expiry();
        Ok(Some(Arc::new(certs)))
    }

    /// Sets `latch_tls_certificate_expiry_seconds` for the certificate in use, now.
    pub fn publish_expiry(&self) {
        let at = self.not_after.load(Ordering::Relaxed);
        if at != i64::MIN {
            let left = at - crate::time::now_secs();
            metrics::gauge!(m::TLS_CERT_EXPIRY).set(left as f64);
        }
    }

    /// Re-reads the files. A signal always retries; the watcher only when the contents
    /// differ from the last pair tried. `Ok(true)` when a new pair is in use.
    pub fn reload(&self, trigger: Trigger) -> Result<bool, TlsError> {
        let outcome = Files::read(&self.cert_file, &self.key_file).and_then(|files| {
            let digest = files.digest();
            {
                let mut seen = self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
                if trigger == Trigger::Watch && *seen == digest {
                    return Ok(false);
                }
                *seen = digest;
            }
            let pair = files.parse(&self.cert_file, &self.key_file)?;
            self.not_after.store(not_after(&pair), Ordering::Relaxed);
            self.current.store(Arc::new(pair));
            self.publish_expiry();
            Ok(true)
        });
        let result = match &outcome {
            Ok(false) => return outcome,
            Ok(true) => "ok",
            Err(_) => "error",
        };
        // A file that cannot be read at all is retried every interval; count it once per
        // change of the error.
        if let Err(e) = &outcome {
            if trigger == Trigger::Watch && !self.note_error(e) {
                return outcome;
            }
        }
        metrics::counter!(m::TLS_RELOADS, "result" => result, "trigger" => trigger.label())
            .increment(1);
        match &outcome {
            Ok(_) => {
                metrics::gauge!(m::TLS_FILES_REJECTED).set(0.0);
                tracing::info!(trigger = trigger.label(), "TLS certificate reloaded");
            }
            Err(error) => {
                metrics::gauge!(m::TLS_FILES_REJECTED).set(1.0);
                tracing::error!(
                    trigger = trigger.label(),
                    key = error.key,
                    %error,
                    "TLS certificate not reloaded; the previous one stays in use"
                );
            }
        }
        outcome
    }

    /// Records a read error in `last_seen`; false when it is the same as last time.
    fn note_error(&self, e: &TlsError) -> bool {
        let d = ring::digest::digest(&ring::digest::SHA256, e.to_string().as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        let mut seen = self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
        if *seen == out {
            return false;
        }
        *seen = out;
        true
    }
}

/// The acceptor of the main listener: TLS 1.3 and 1.2 (ring), ALPN `h2` then
/// `http/1.1`. With `client_certs`, every client is asked for a certificate (RFC 8705);
/// none is required, and any is accepted in the handshake once it proves possession of
/// its key: whether it is trusted is decided per request ([`ClientAuth::peer`] and the
/// client's configuration), so a self-signed certificate can reach its client's check.
pub fn acceptor(certs: Arc<Certs>, client_certs: bool) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        // ring supports both versions; this cannot fail.
        .expect("ring supports TLS 1.2 and 1.3");
    let mut config = if client_certs {
        builder
            .with_client_cert_verifier(Arc::new(AnyClientCert {
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_cert_resolver(certs)
    } else {
        builder.with_no_client_auth().with_cert_resolver(certs)
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// A TLS listener: its acceptor and, when it asks for client certificates, how their
/// chains are judged.
#[derive(Clone)]
pub struct Listener {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub client_auth: Option<Arc<ClientAuth>>,
}

/// Asks for a client certificate, requires none, and accepts any well-formed one whose
/// key signs the handshake (rustls checks that signature with ring, below). No CA names
/// are sent: a client holding only a self-signed certificate must still offer it (Go's
/// TLS stack, for one, sends nothing when its certificate matches none of the names).
#[derive(Debug)]
struct AnyClientCert {
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::server::danger::ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        use x509_cert::der::Decode;
        // Trust is decided later, per request; here only that it is a certificate.
        x509_cert::Certificate::from_der(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// What a connection's client certificate is worth: its chain is validated by webpki
/// (rustls's `WebPkiClientVerifier`: signatures, validity now, the client-auth key usage)
/// against `tls.client_ca_file`. Without that file no chain is trusted, and only
/// self-signed clients can authenticate by certificate. The file is re-read with the
/// certificate pair (SIGHUP, or its contents changed): a file that cannot be used is
/// refused and the CAs in use stay.
#[derive(Debug)]
pub struct ClientAuth {
    ca: arc_swap::ArcSwapOption<Roots>,
    file: Option<PathBuf>,
    /// Digest of the file last tried (as `Certs::last_seen`).
    last_seen: Mutex<[u8; 32]>,
}

/// A verifier over the configured client CAs.
#[derive(Debug)]
struct Roots(Arc<dyn rustls::server::danger::ClientCertVerifier>);

impl ClientAuth {
    /// Reads `tls.client_ca_file` when set.
    pub fn load(config: &TlsConfig) -> Result<ClientAuth, TlsError> {
        let Some(path) = &config.client_ca_file else {
            return Ok(ClientAuth {
                ca: arc_swap::ArcSwapOption::empty(),
                file: None,
                last_seen: Mutex::new([0; 32]),
            });
        };
        let pem = read_ca(path)?;
        let roots = roots(path, &pem)?;
        Ok(ClientAuth {
            ca: arc_swap::ArcSwapOption::from_pointee(roots),
            file: Some(path.clone()),
            last_seen: Mutex::new(sha256(&pem)),
        })
    }

    /// Re-reads `tls.client_ca_file` (a signal always; the watcher only when its contents
    /// changed). `Ok(true)` when new CAs are in use; on an error the old ones stay.
    pub fn reload(&self, trigger: Trigger) -> Result<bool, TlsError> {
        let Some(path) = &self.file else {
            return Ok(false);
        };
        let outcome = read_ca(path).and_then(|pem| {
            let digest = sha256(&pem);
            {
                let mut seen = self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
                if trigger == Trigger::Watch && *seen == digest {
                    return Ok(false);
                }
                *seen = digest;
            }
            self.ca.store(Some(Arc::new(roots(path, &pem)?)));
            Ok(true)
        });
        match &outcome {
            Ok(true) => tracing::info!(trigger = trigger.label(), "TLS client CAs reloaded"),
            Ok(false) => {}
            Err(error) => {
                // A file that cannot be read is retried every interval; say so once.
                let digest = sha256(error.to_string().as_bytes());
                let mut seen = self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
                if trigger == Trigger::Signal || *seen != digest {
                    *seen = digest;
                    tracing::error!(
                        trigger = trigger.label(),
                        key = error.key,
                        %error,
                        "TLS client CAs not reloaded; the previous ones stay in use"
                    );
                }
            }
        }
        outcome
    }

    /// The client certificate of an established connection, if it presented one.
    pub fn peer(&self, conn: &rustls::ServerConnection) -> Option<PeerCert> {
        self.judge(conn.peer_certificates()?)
    }

    /// A presented chain (leaf first), judged now.
    fn judge(&self, chain: &[CertificateDer<'_>]) -> Option<PeerCert> {
        let (leaf, intermediates) = chain.split_first()?;
        let trusted = self.ca.load().as_ref().is_some_and(|v| {
            v.0.verify_client_cert(leaf, intermediates, rustls::pki_types::UnixTime::now())
                .is_ok()
        });
        Some(PeerCert::new(leaf.to_vec(), trusted))
    }
}

/// Installs the SIGHUP handler now (so a SIGHUP after the announce line is never the
/// default action, which ends the process) and returns the reload task.
pub fn reloader(
    certs: Arc<Certs>,
    client_auth: Option<Arc<ClientAuth>>,
    interval: std::time::Duration,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    Ok(async move {
        // The pair was read at start: the first comparison is one interval later.
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let trigger = tokio::select! {
                _ = hup.recv() => Trigger::Signal,
                _ = tick.tick() => Trigger::Watch,
                _ = stop.changed() => return,
            };
            // File reads and parsing are blocking but small; keep them off the reactor.
            let (c, ca) = (certs.clone(), client_auth.clone());
            let _ = tokio::task::spawn_blocking(move || {
                let _ = c.reload(trigger);
                if let Some(ca) = ca {
                    let _ = ca.reload(trigger);
                }
            })
            .await;
            // The time left shrinks whether or not anything changed.
            certs.publish_expiry();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_chains_are_trusted_only_under_the_configured_ca() {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let ca = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name.push(DnType::CommonName, name);
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            (p.self_signed(&key).unwrap(), key)
        };
        let leaf = |issuer: &(rcgen::Certificate, KeyPair)| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name.push(DnType::CommonName, "svc");
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            CertificateDer::from(
                p.signed_by(&key, &issuer.0, &issuer.1)
                    .unwrap()
                    .der()
                    .to_vec(),
            )
        };
        let dir = tempfile::tempdir().unwrap();
        let (good, bad) = (ca("client CA"), ca("client CA"));
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, good.0.pem()).unwrap();
        let config = TlsConfig {
            cert_file: None,
            key_file: None,
            watch_interval: std::time::Duration::from_secs(2),
            client_ca_file: Some(file),
        };
        let auth = ClientAuth::load(&config).unwrap();
        let trusted = auth.judge(&[leaf(&good)]).unwrap();
        assert!(trusted.chain_trusted);
        assert!(!auth.judge(&[leaf(&bad)]).unwrap().chain_trusted);
        assert!(auth.judge(&[]).is_none());
        // Without a CA file nothing is trusted; the certificate is still reported.
        let none = ClientAuth::load(&TlsConfig {
            client_ca_file: None,
            ..config.clone()
        })
        .unwrap();
        assert!(!none.judge(&[leaf(&good)]).unwrap().chain_trusted);
    }

    #[test]
    fn both_or_neither_is_off_or_checked() {
        let off = TlsConfig {
            cert_file: None,
            key_file: None,
            watch_interval: std::time::Duration::from_secs(2),
            client_ca_file: None,
        };
        assert_eq!(check(&off).unwrap(), None);
        let missing = TlsConfig {
            cert_file: Some("/nonexistent/cert.pem".into()),
            key_file: Some("/nonexistent/key.pem".into()),
            ..off
        };
        let e = check(&missing).unwrap_err();
        assert_eq!(e.key, "tls.cert_file");
        assert!(e.reason.contains("cannot read"), "{e}");
    }
}
