//! HTTP client side: one exact keep-alive HTTP/1.1 connection per worker, and the OAuth
//! requests (token, introspect, revoke) the scenarios send over it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::cli::Credentials;

/// Where requests go: a parsed `http://host:port[/prefix]` base URL.
#[derive(Debug)]
pub struct Target {
    /// The URL as given, for reports.
    pub url: String,
    /// `host:port` to connect to.
    authority: String,
    /// Value of the `Host` header.
    host: HeaderValue,
    /// Path prefix (no trailing slash), prepended to every endpoint path.
    prefix: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Arc<Target>, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
        let (hostport, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if hostport.is_empty() {
            return Err(format!("{url}: no host"));
        }
        let has_port = match hostport.rfind(':') {
            Some(i) => !hostport[i..].contains(']'),
            None => false,
        };
        let authority = if has_port {
            hostport.to_string()
        } else {
            format!("{hostport}:80")
        };
        let host = HeaderValue::from_str(hostport).map_err(|_| format!("{url}: bad host"))?;
        Ok(Arc::new(Target {
            url: url.trim_end_matches('/').to_string(),
            authority,
            host,
            prefix: prefix.to_string(),
        }))
    }

    /// Full request path for an endpoint path such as `/introspect`.
    pub fn path(&self, endpoint: &str) -> String {
        format!("{}{}", self.prefix, endpoint)
    }
}

/// `Authorization: Basic ...` for a client (id and secret form-encoded first, RFC 6749 §2.3.1).
pub fn basic_auth(c: &Credentials) -> HeaderValue {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let raw = format!("{}:{}", enc(&c.id), enc(&c.secret));
    let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
    HeaderValue::from_str(&format!("Basic {b64}")).expect("base64 is a valid header value")
}

/// A form body from name/value pairs.
pub fn form(pairs: &[(&str, &str)]) -> Bytes {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    Bytes::from(s.finish())
}

/// Why a request did not produce an acceptable answer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    /// TCP connect or HTTP handshake failed.
    Connect,
    /// The connection broke while the request was in flight.
    Io,
    /// No complete answer within --timeout.
    Timeout,
    /// An answer with a status outside 2xx.
    Status(u16),
    /// A 2xx answer with the wrong content (e.g. `active:false` where `active:true` was due).
    Unexpected(&'static str),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect => write!(f, "connect"),
            Failure::Io => write!(f, "io"),
            Failure::Timeout => write!(f, "timeout"),
            Failure::Status(code) => write!(f, "http {code}"),
            Failure::Unexpected(what) => write!(f, "unexpected: {what}"),
        }
    }
}

/// A complete answer.
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Reply {
    /// Fails unless the status is 2xx.
    pub fn ok(self) -> Result<Reply, Failure> {
        if self.status.is_success() {
            Ok(self)
        } else {
            Err(Failure::Status(self.status.as_u16()))
        }
    }

    pub fn contains(&self, needle: &[u8]) -> bool {
        self.body.windows(needle.len()).any(|w| w == needle)
    }

    /// RFC 7662 `active` member: `Some(true)`, `Some(false)`, or `None` when absent.
    pub fn active(&self) -> Option<bool> {
        if self.contains(br#""active":true"#) {
            Some(true)
        } else if self.contains(br#""active":false"#) {
            Some(false)
        } else {
            None
        }
    }
}

/// One keep-alive HTTP/1.1 connection (hyper's `client::conn::http1`, no pool), reopened
/// on demand after it breaks.
pub struct Conn {
    target: Arc<Target>,
    timeout: Duration,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// How many times the connection had to be (re)opened.
    pub connects: u64,
}

impl Conn {
    pub fn new(target: Arc<Target>, timeout: Duration) -> Conn {
        Conn {
            target,
            timeout,
            sender: None,
            connects: 0,
        }
    }

    /// Opens the connection now (if it is not open), so that the first measured request
    /// does not pay for the handshake.
    pub async fn connect(&mut self) -> Result<(), Failure> {
        if let Some(s) = &self.sender {
            if !s.is_closed() {
                return Ok(());
            }
        }
        self.sender = None;
        let open = async {
            let stream = TcpStream::connect(&self.target.authority).await.ok()?;
            stream.set_nodelay(true).ok()?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .ok()?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Some(sender)
        };
        match tokio::time::timeout(self.timeout, open).await {
            Ok(Some(sender)) => {
                self.connects += 1;
                self.sender = Some(sender);
                Ok(())
            }
            _ => {
                // Back off a little, so a dead target is not hammered in a tight loop.
                tokio::time::sleep(Duration::from_millis(10)).await;
                Err(Failure::Connect)
            }
        }
    }

    /// POSTs a form body with the given `Authorization` and reads the whole answer.
    pub async fn post_form(
        &mut self,
        path: &str,
        auth: &HeaderValue,
        body: Bytes,
    ) -> Result<Reply, Failure> {
        self.post(path, auth, "application/x-www-form-urlencoded", body)
            .await
    }

    /// POSTs a body of `content_type` with the given `Authorization` and reads the whole
    /// answer.
    pub async fn post(
        &mut self,
        path: &str,
        auth: &HeaderValue,
        content_type: &'static str,
        body: Bytes,
    ) -> Result<Reply, Failure> {
        self.connect().await?;
        let request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(HOST, self.target.host.clone())
            .header(AUTHORIZATION, auth.clone())
            .header(CONTENT_TYPE, content_type)
            .body(Full::new(body))
            .expect("valid request");
        let sender = self.sender.as_mut().expect("connected above");
        let exchange = async {
            if sender.ready().await.is_err() {
                return Err(Failure::Io);
            }
            let response = sender
                .send_request(request)
                .await
                .map_err(|_| Failure::Io)?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|_| Failure::Io)?
                .to_bytes();
            Ok(Reply { status, body })
        };
        let result = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Timeout),
        };
        if result.is_err() {
            // Never reuse a connection in an unknown state.
            self.sender = None;
        }
        result
    }
}

/// The OAuth requests of the scenarios, with their answers checked.
pub struct Oauth {
    pub token_path: String,
    pub introspect_path: String,
    pub revoke_path: String,
    pub issuer_auth: HeaderValue,
    pub introspect_auth: HeaderValue,
    pub token_request: Bytes,
}

impl Oauth {
    pub fn new(target: &Target, c: &crate::cli::Common) -> Oauth {
        let mut pairs = vec![("grant_type", "client_credentials")];
        if let Some(scope) = &c.scope {
            pairs.push(("scope", scope.as_str()));
        }
        Oauth {
            token_path: target.path(&c.token_path),
            introspect_path: target.path(&c.introspect_path),
            revoke_path: target.path(&c.revoke_path),
            issuer_auth: basic_auth(&c.issuer_client),
            introspect_auth: basic_auth(&c.introspect_client),
            token_request: form(&pairs),
        }
    }

    /// Issues a token; returns the whole answer (the caller extracts what it needs).
    pub async fn issue(&self, conn: &mut Conn) -> Result<Reply, Failure> {
        let reply = conn
            .post_form(
                &self.token_path,
                &self.issuer_auth,
                self.token_request.clone(),
            )
            .await?
            .ok()?;
        if !reply.contains(br#""access_token":""#) {
            return Err(Failure::Unexpected("no access_token"));
        }
        Ok(reply)
    }

    /// Issues a token and returns it.
    pub async fn issue_token(&self, conn: &mut Conn) -> Result<String, Failure> {
        let reply = self.issue(conn).await?;
        access_token(&reply.body).ok_or(Failure::Unexpected("unreadable token answer"))
    }

    /// Introspects a pre-encoded `token=...` body; returns the `active` member.
    pub async fn introspect(&self, conn: &mut Conn, body: Bytes) -> Result<bool, Failure> {
        let reply = conn
            .post_form(&self.introspect_path, &self.introspect_auth, body)
            .await?
            .ok()?;
        reply
            .active()
            .ok_or(Failure::Unexpected("no active member"))
    }

    /// Revokes a pre-encoded `token=...` body as the issuing client (RFC 7009).
    pub async fn revoke(&self, conn: &mut Conn, body: Bytes) -> Result<(), Failure> {
        conn.post_form(&self.revoke_path, &self.issuer_auth, body)
            .await?
            .ok()
            .map(|_| ())
    }
}

/// The `token=...` form body for a token.
pub fn token_form(token: &str) -> Bytes {
    form(&[("token", token)])
}

/// Extracts `access_token` from a token endpoint answer.
pub fn access_token(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("access_token")?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(t.path("/token"), "/token");
        let t = Target::parse("http://example.test/auth/").unwrap();
        assert_eq!(t.authority, "example.test:80");
        assert_eq!(t.path("/token"), "/auth/token");
        let t = Target::parse("http://[::1]:9000").unwrap();
        assert_eq!(t.authority, "[::1]:9000");
        assert!(Target::parse("https://x").is_err());
    }

    #[test]
    fn basic() {
        let c = Credentials {
            id: "a b".into(),
            secret: "s:1".into(),
        };
        // "a+b:s%3A1"
        assert_eq!(basic_auth(&c), "Basic YStiOnMlM0Ex");
    }
}
