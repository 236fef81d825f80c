//! TLS on the main listener (rustls, ring provider): the certificate chain and key from
//! `tls.cert_file` / `tls.key_file`, TLS 1.2 and 1.3 only, ALPN `h2` and `http/1.1`.
//!
//! The server config never changes; its certificate resolver ([`Certs`]) hands every new
//! handshake the pair in use now, held in an `ArcSwap`. [`run_reload`] replaces that pair
//! on SIGHUP and when the files' contents change (compared every `tls.watch_interval`).
//! Established connections keep the session they negotiated, so a reload drops none. A
//! pair that cannot be read, parsed or whose key does not match the certificate is
//! refused: the pair in use stays, an error is logged and `latch_tls_reloads_total
//! {result="error"}` counts it (`latch_tls_files_rejected` is 1 until a good pair loads).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

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
        Ok(Some(Arc::new(Certs {
            current: ArcSwap::from_pointee(pair),
            cert_file: cert.to_path_buf(),
            key_file: key.to_path_buf(),
            last_seen: Mutex::new(files.digest()),
        })))
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
            self.current.store(Arc::new(pair));
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

/// The acceptor of the main listener: TLS 1.3 and 1.2 (ring), no client certificates,
/// ALPN `h2` then `http/1.1`.
pub fn acceptor(certs: Arc<Certs>) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        // ring supports both versions; this cannot fail.
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Installs the SIGHUP handler now (so a SIGHUP after the announce line is never the
/// default action, which ends the process) and returns the reload task.
pub fn reloader(
    certs: Arc<Certs>,
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
            let c = certs.clone();
            let _ = tokio::task::spawn_blocking(move || c.reload(trigger)).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_or_neither_is_off_or_checked() {
        let off = TlsConfig {
            cert_file: None,
            key_file: None,
            watch_interval: std::time::Duration::from_secs(2),
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
