//! A small HTTP/1.1 client for one server address ([`Http`]) and the answers it returns
//! ([`Resp`]), with the assertions every test makes on OAuth error answers.

use std::net::SocketAddr;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::STARTUP_DEADLINE;

/// One answer, body read in full.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A client for the server at `addr`; cheap to clone (one connection pool).
#[derive(Clone)]
pub struct Http {
    pub addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// The `Authorization` value for HTTP Basic.
pub fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

/// `application/x-www-form-urlencoded` text of `params`.
pub fn form(params: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        s.append_pair(k, v);
    }
    s.finish()
}

// === impl Resp ===

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Parses the body as JSON; panics with the body otherwise.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}); status {} body {:?}",
                self.status,
                self.text()
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header").to_string())
    }

    /// Asserts an error response: given status, JSON with `error` == code and a
    /// string `error_description`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            self.status.as_u16(),
            status,
            "expected {status} {code}, got {} {}",
            self.status,
            self.text()
        );
        let v = self.json();
        assert_eq!(v["error"], code, "error code; body {v}");
        assert!(
            v["error_description"].is_string(),
            "error_description missing; body {v}"
        );
    }

    #[track_caller]
    pub fn assert_no_store(&self) {
        let cc = self.header("cache-control").unwrap_or_default();
        assert!(
            cc.to_ascii_lowercase().contains("no-store"),
            "Cache-Control: no-store missing (got {cc:?}); status {} body {}",
            self.status,
            self.text()
        );
    }
}

// === impl Http ===

impl Http {
    pub fn new(addr: SocketAddr) -> Http {
        // Idle connections are dropped well before the shortest server-side
        // header_read_timeout used in tests (1s), which also closes idle keep-alives:
        // reusing such a connection races with its close.
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .pool_idle_timeout(Duration::from_millis(500))
            .build_http();
        Http { addr, client }
    }

    /// Any request; transport errors (and no answer within [`STARTUP_DEADLINE`]) are `Err`.
    pub async fn try_request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Resp, String> {
        let uri = format!("http://{}{}", self.addr, path);
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let req = req.body(Full::new(Bytes::from(body))).unwrap();
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("{e:?}"))?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("{e:?}"))?
                .to_bytes();
            Ok(Resp {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(STARTUP_DEADLINE, fut).await {
            Ok(r) => r,
            Err(_) => Err(format!("request to {path} timed out")),
        }
    }

    /// Any request; panics on transport errors.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Resp {
        let m = method.clone();
        self.try_request(method, path, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{m} {path}: {e}"))
    }

    /// A form POST with optional Basic credentials; transport errors are `Err`.
    pub async fn try_post_form(
        &self,
        path: &str,
        params: &[(&str, &str)],
        auth: Option<(&str, &str)>,
    ) -> Result<Resp, String> {
        let b;
        let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
        if let Some((id, secret)) = auth {
            b = basic(id, secret);
            headers.push(("authorization", b.as_str()));
        }
        self.try_request(Method::POST, path, &headers, form(params).into_bytes())
            .await
    }

    /// A form POST with optional Basic credentials; panics on transport errors.
    pub async fn post_form(
        &self,
        path: &str,
        params: &[(&str, &str)],
        auth: Option<(&str, &str)>,
    ) -> Resp {
        self.try_post_form(path, params, auth)
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    pub async fn post_json(&self, path: &str, body: &Value, auth: Option<(&str, &str)>) -> Resp {
        let mut headers = vec![("content-type", "application/json")];
        let b;
        if let Some((id, secret)) = auth {
            b = basic(id, secret);
            headers.push(("authorization", b.as_str()));
        }
        self.request(
            Method::POST,
            path,
            &headers,
            serde_json::to_vec(body).unwrap(),
        )
        .await
    }

    pub async fn try_get(&self, path: &str, auth: Option<(&str, &str)>) -> Result<Resp, String> {
        let b;
        let mut headers = vec![];
        if let Some((id, secret)) = auth {
            b = basic(id, secret);
            headers.push(("authorization", b.as_str()));
        }
        self.try_request(Method::GET, path, &headers, vec![]).await
    }

    pub async fn get(&self, path: &str, auth: Option<(&str, &str)>) -> Resp {
        self.try_get(path, auth)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }
}

/// Sends one keep-alive `GET /healthz` on a raw `stream` and reads the status line's
/// code; `None` when the server closed the connection or answered nothing readable (a
/// connection over the cap is closed unanswered).
pub async fn healthz_on(stream: &mut tokio::net::TcpStream) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let mut buf = vec![0u8; 1024];
    let n = stream.read(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf[..n]);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// A raw connection to `addr` that was served (`/healthz` answered 200), retried until
/// [`crate::DEADLINE`]: held open, it keeps a connection slot.
pub async fn served_connection(
    addr: SocketAddr,
    label: &str,
) -> Result<tokio::net::TcpStream, String> {
    crate::poll::try_eventually(crate::DEADLINE, || async {
        let mut conn = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        match healthz_on(&mut conn).await {
            Some(200) => Ok(conn),
            other => Err(format!("{label}: {other:?}")),
        }
    })
    .await
}

/// Checks a node at `addr` whose connection cap is two (`limits.max_connections = 2`):
/// two held connections are served, `over` more are each closed unanswered, releasing
/// one slot lets a new connection in, and the held one still answers. `over` above one
/// spreads the refused tries over a per-core node's sockets.
pub async fn assert_cap_of_two(addr: SocketAddr, over: usize) {
    let a = served_connection(addr, "first").await.unwrap();
    let mut b = served_connection(addr, "second").await.unwrap();
    for i in 0..over {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert_eq!(
            healthz_on(&mut c).await,
            None,
            "connection {} over the cap was served",
            i + 1
        );
    }
    drop(a);
    assert!(served_connection(addr, "after release").await.is_ok());
    assert_eq!(healthz_on(&mut b).await, Some(200), "the held connection");
}
