//! The RFC 8935 push client: POSTs one SET to a receiver's endpoint over HTTP/1.1 (TLS for
//! `https`, verified against `ssf.push_ca_file` or the system roots) and says whether it
//! was accepted. Redirects are not followed: an endpoint an operator approved cannot send
//! latch elsewhere.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The media type of a pushed SET (RFC 8935 §2).
pub const SECEVENT_JWT: &str = "application/secevent+jwt";

/// Why a push did not go through. Every one is retried.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("cannot reach the endpoint: {0}")]
    Connect(String),
    #[error("no answer within the push timeout")]
    Timeout,
    /// The receiver answered, but not 2xx; `err` is RFC 8935 §2.3's error code, if given.
    #[error("the receiver answered {status}{}", err.as_deref().map(|e| format!(" ({e})")).unwrap_or_default())]
    Refused { status: u16, err: Option<String> },
}

impl PushError {
    /// The `reason` metric label.
    pub fn label(&self) -> &'static str {
        match self {
            PushError::Connect(_) => "connect",
            PushError::Timeout => "timeout",
            PushError::Refused { .. } => "refused",
        }
    }
}

/// Makes connections to push endpoints. Cheap to clone.
#[derive(Clone)]
pub struct PushClient {
    tls: tokio_rustls::TlsConnector,
    timeout: Duration,
}

/// One open connection to one endpoint, reused for the SETs of a batch.
pub struct Connection {
    endpoint: String,
    sender: SendRequest<Full<Bytes>>,
}

impl PushClient {
    /// A client trusting `roots` for `https` endpoints, giving up on a push after `timeout`.
    pub fn new(roots: rustls::RootCertStore, timeout: Duration) -> PushClient {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            // ring supports every default protocol version; this cannot fail.
            .expect("ring supports the default TLS versions");
        PushClient {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            timeout,
        }
    }

    /// POSTs `set` to `endpoint`, reusing `conn` if it is open to the same endpoint.
    /// `Ok` on any 2xx (RFC 8935 §2.2 asks for 202).
    pub async fn push(
        &self,
        conn: &mut Option<Connection>,
        endpoint: &str,
        authorization: Option<&str>,
        set: &str,
    ) -> Result<(), PushError> {
        let result = tokio::time::timeout(self.timeout, async {
            if conn
                .as_ref()
                .is_none_or(|c| c.endpoint != endpoint || c.sender.is_closed())
            {
                *conn = Some(self.connect(endpoint).await?);
            }
            let c = conn.as_mut().expect("connected above");
            send(&mut c.sender, endpoint, authorization, set).await
        })
        .await;
        let result = result.unwrap_or(Err(PushError::Timeout));
        if result.is_err() {
            *conn = None;
        }
        result
    }

    async fn connect(&self, endpoint: &str) -> Result<Connection, PushError> {
        let uri: Uri = endpoint
            .parse()
            .map_err(|_| PushError::Connect("not a URL".into()))?;
        let https = uri.scheme_str() == Some("https");
        let host = uri
            .host()
            .unwrap_or("")
            .trim_matches(['[', ']'])
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| PushError::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let sender = if https {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| PushError::Connect(e.to_string()))?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| PushError::Connect(format!("TLS: {e}")))?;
            handshake(TokioIo::new(tls)).await?
        } else {
            handshake(TokioIo::new(tcp)).await?
        };
        Ok(Connection {
            endpoint: endpoint.to_string(),
            sender,
        })
    }
}

async fn handshake<T>(io: T) -> Result<SendRequest<Full<Bytes>>, PushError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| PushError::Connect(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "push connection closed");
        }
    });
    Ok(sender)
}

async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    endpoint: &str,
    authorization: Option<&str>,
    set: &str,
) -> Result<(), PushError> {
    let uri: Uri = endpoint
        .parse()
        .map_err(|_| PushError::Connect("not a URL".into()))?;
    let host = uri
        .authority()
        .map(|a| a.as_str())
        .unwrap_or("")
        .to_string();
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(HOST, host)
        .header(CONTENT_TYPE, SECEVENT_JWT)
        .header(ACCEPT, "application/json");
    if let Some(a) = authorization {
        req = req.header(AUTHORIZATION, a);
    }
    let req = req
        .body(Full::new(Bytes::from(set.to_string())))
        .map_err(|e| PushError::Connect(e.to_string()))?;
    sender
        .ready()
        .await
        .map_err(|e| PushError::Connect(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| PushError::Connect(e.to_string()))?;
    let status = resp.status();
    // RFC 8935 §2.3: a refusal carries {"err", "description"}; read a little of it.
    let body = Limited::new(resp.into_body(), 4096)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if status.is_success() {
        return Ok(());
    }
    let err = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("err").and_then(|e| e.as_str()).map(printable));
    Err(PushError::Refused {
        status: status.as_u16(),
        err,
    })
}

/// An error code from a receiver, fit for a log line.
fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect()
}
