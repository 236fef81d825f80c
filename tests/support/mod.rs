//! Shared black-box harness: starts the real `latch` binary as a child process
//! on ephemeral ports and talks HTTP/1.1 to it.
//!
//! Each integration test file does `mod support;` and uses only what it needs.
#![allow(dead_code)]

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// A fixed key-encryption key (base64 of 32 bytes) so that restarts on the same
/// data directory can decrypt the stored signing keys.
pub const TEST_KEK: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// Generous deadline for anything that should happen "soon".
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Deadline for a server to announce itself and become ready (RSA key
/// generation in a debug build can be slow on a 2-core machine).
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------
// Clients and config
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct ClientDef {
    pub id: String,
    pub secret: String,
    pub grants: Vec<String>,
    pub scopes: Vec<String>,
    pub audiences: Vec<String>,
    pub roles: Vec<String>,
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

impl ClientDef {
    /// A client with a deterministic secret (>= 32 bytes) derived from its id.
    pub fn new(id: &str) -> Self {
        ClientDef {
            id: id.to_string(),
            secret: format!("{id}-test-secret-0123456789abcdef0123456789abcdef"),
            grants: vec![],
            scopes: vec![],
            audiences: vec![],
            roles: vec![],
        }
    }
    pub fn grants(mut self, v: &[&str]) -> Self {
        self.grants = strings(v);
        self
    }
    pub fn scopes(mut self, v: &[&str]) -> Self {
        self.scopes = strings(v);
        self
    }
    pub fn audiences(mut self, v: &[&str]) -> Self {
        self.audiences = strings(v);
        self
    }
    pub fn roles(mut self, v: &[&str]) -> Self {
        self.roles = strings(v);
        self
    }
    pub fn secret(mut self, s: &str) -> Self {
        self.secret = s.to_string();
        self
    }
    pub fn auth(&self) -> Option<(&str, &str)> {
        Some((self.id.as_str(), self.secret.as_str()))
    }
    pub fn secret_sha256(&self) -> String {
        sha256_hex(self.secret.as_bytes())
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The clients most tests use.
pub mod clients {
    use super::ClientDef;

    pub const ORDERS_AUD: &str = "https://orders.example";
    pub const ORDERS_AUD2: &str = "https://orders-internal.example";
    pub const BILLING_AUD: &str = "https://billing.example";

    /// Issues tokens for the orders audiences.
    pub fn orders() -> ClientDef {
        ClientDef::new("orders-service")
            .grants(&["client_credentials"])
            .scopes(&["orders:read", "orders:write"])
            .audiences(&[ORDERS_AUD, ORDERS_AUD2])
    }
    /// Issues tokens for the billing audience.
    pub fn billing() -> ClientDef {
        ClientDef::new("billing-service")
            .grants(&["client_credentials"])
            .scopes(&["billing:read"])
            .audiences(&[BILLING_AUD])
    }
    /// Resource server that may introspect anything (no audiences).
    pub fn rs_all() -> ClientDef {
        ClientDef::new("gateway-rs").roles(&["introspect"])
    }
    /// Resource server restricted to the orders audience.
    pub fn rs_orders() -> ClientDef {
        ClientDef::new("orders-rs")
            .roles(&["introspect"])
            .audiences(&[ORDERS_AUD])
    }
    /// Administrator (bulk revocation, keys, audit, revoke any token).
    pub fn admin() -> ClientDef {
        ClientDef::new("security-admin").roles(&["admin", "introspect"])
    }
    /// Authenticated client that has no grant and no role at all.
    pub fn nobody() -> ClientDef {
        ClientDef::new("no-roles-client")
    }

    pub fn standard() -> Vec<ClientDef> {
        vec![
            orders(),
            billing(),
            rs_all(),
            rs_orders(),
            admin(),
            nobody(),
        ]
    }
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub issuer: String,
    pub listen: String,
    pub metrics_listen: String,
    pub access_ttl: String,
    pub refresh_ttl: String,
    pub leeway: String,
    pub algorithm: String,
    pub rotate_every: String,
    pub publish_ahead: String,
    pub max_staleness: String,
    pub max_body_bytes: u64,
    pub max_connections: u64,
    pub header_read_timeout: String,
    pub clients: Vec<ClientDef>,
    /// Appended verbatim to the generated TOML.
    pub extra_toml: String,
    /// Value of `LATCH_KEK`; `None` leaves it unset.
    pub kek: Option<String>,
    /// Extra environment variables for the child.
    pub env: Vec<(String, String)>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            issuer: "http://latch.test".into(),
            listen: "127.0.0.1:0".into(),
            metrics_listen: "127.0.0.1:0".into(),
            access_ttl: "5m".into(),
            refresh_ttl: "30d".into(),
            leeway: "30s".into(),
            algorithm: "EdDSA".into(),
            rotate_every: "24h".into(),
            publish_ahead: "1h".into(),
            max_staleness: "2s".into(),
            max_body_bytes: 16384,
            max_connections: 1024,
            header_read_timeout: "10s".into(),
            clients: clients::standard(),
            extra_toml: String::new(),
            kek: Some(TEST_KEK.into()),
            env: vec![],
        }
    }
}

fn toml_str(s: &str) -> String {
    // TOML basic strings accept JSON string escaping for everything we use.
    serde_json::to_string(s).unwrap()
}

fn toml_arr(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|s| toml_str(s)).collect();
    format!("[{}]", items.join(", "))
}

impl ServerConfig {
    pub fn to_toml(&self, data_path: &Path) -> String {
        let mut s = String::new();
        s.push_str(&format!("issuer = {}\n", toml_str(&self.issuer)));
        s.push_str(&format!("listen = {}\n\n", toml_str(&self.listen)));
        s.push_str(&format!(
            "[metrics]\nlisten = {}\n\n",
            toml_str(&self.metrics_listen)
        ));
        s.push_str(&format!(
            "[tokens]\naccess_ttl = {}\nrefresh_ttl = {}\nleeway = {}\n\n",
            toml_str(&self.access_ttl),
            toml_str(&self.refresh_ttl),
            toml_str(&self.leeway)
        ));
        s.push_str(&format!(
            "[keys]\nalgorithm = {}\nrotate_every = {}\npublish_ahead = {}\n\n",
            toml_str(&self.algorithm),
            toml_str(&self.rotate_every),
            toml_str(&self.publish_ahead)
        ));
        s.push_str(&format!(
            "[store]\nkind = \"embedded\"\npath = {}\nmax_staleness = {}\n\n",
            toml_str(data_path.to_str().unwrap()),
            toml_str(&self.max_staleness)
        ));
        s.push_str(&format!(
            "[limits]\nmax_body_bytes = {}\nmax_connections = {}\nheader_read_timeout = {}\n\n",
            self.max_body_bytes,
            self.max_connections,
            toml_str(&self.header_read_timeout)
        ));
        for c in &self.clients {
            s.push_str(&format!(
                "[[clients]]\nid = {}\nsecret_sha256 = {}\ngrants = {}\nscopes = {}\naudiences = {}\nroles = {}\n\n",
                toml_str(&c.id),
                toml_str(&c.secret_sha256()),
                toml_arr(&c.grants),
                toml_arr(&c.scopes),
                toml_arr(&c.audiences),
                toml_arr(&c.roles),
            ));
        }
        s.push_str(&self.extra_toml);
        s
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_latch")
}

/// A `Command` for the latch binary with a clean LATCH_* environment.
pub fn latch_cmd() -> Command {
    let mut cmd = Command::new(bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("LATCH_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Same as [`latch_cmd`] but async (does not block the test runtime).
pub fn latch_cmd_async() -> tokio::process::Command {
    tokio::process::Command::from(latch_cmd())
}

// ---------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------

pub struct TestServer {
    pub cfg: ServerConfig,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub data_path: PathBuf,
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub http: Http,
    child: Option<Child>,
    stdout_lines: Arc<Mutex<Vec<String>>>,
    stderr_path: PathBuf,
    generation: u32,
}

/// Parses `latch listening on http://HOST:PORT (metrics on http://HOST:PORT)`.
pub fn parse_announce(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.trim().strip_prefix("latch listening on http://")?;
    let (main, rest) = rest.split_once(" (metrics on http://")?;
    let metrics = rest.strip_suffix(')')?;
    Some((main.parse().ok()?, metrics.parse().ok()?))
}

impl TestServer {
    /// Starts a server and waits until `/readyz` answers 200.
    pub async fn start(cfg: &ServerConfig) -> TestServer {
        let s = Self::start_no_ready(cfg).await;
        s.wait_ready().await;
        s
    }

    /// Starts a server and waits only for the announce line.
    pub async fn start_no_ready(cfg: &ServerConfig) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_path = dir.path().join("data");
        std::fs::create_dir_all(&data_path).unwrap();
        let config_path = dir.path().join("latch.toml");
        let stderr_path = dir.path().join("stderr.0.log");
        let mut s = TestServer {
            cfg: cfg.clone(),
            dir,
            config_path,
            data_path,
            addr: "127.0.0.1:1".parse().unwrap(),
            metrics_addr: "127.0.0.1:1".parse().unwrap(),
            http: Http::new("127.0.0.1:1".parse().unwrap()),
            child: None,
            stdout_lines: Arc::new(Mutex::new(Vec::new())),
            stderr_path,
            generation: 0,
        };
        s.spawn().await;
        s
    }

    fn write_config(&self) {
        std::fs::write(&self.config_path, self.cfg.to_toml(&self.data_path)).unwrap();
    }

    async fn spawn(&mut self) {
        self.write_config();
        self.stderr_path = self
            .dir
            .path()
            .join(format!("stderr.{}.log", self.generation));
        self.generation += 1;
        let stderr = std::fs::File::create(&self.stderr_path).unwrap();
        let mut cmd = latch_cmd();
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        if let Some(kek) = &self.cfg.kek {
            cmd.env("LATCH_KEK", kek);
        }
        for (k, v) in &self.cfg.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn latch serve");
        let stdout = child.stdout.take().unwrap();
        let lines = self.stdout_lines.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let reader = BufReader::new(stdout);
            for line in reader.lines() {
                let Ok(line) = line else { break };
                if let Some(addrs) = parse_announce(&line) {
                    let _ = tx.send(addrs);
                }
                lines.lock().unwrap().push(line);
            }
        });
        self.child = Some(child);
        let got = tokio::time::timeout(STARTUP_DEADLINE, rx.recv()).await;
        match got {
            Ok(Some((addr, metrics))) => {
                self.addr = addr;
                self.metrics_addr = metrics;
                self.http = Http::new(addr);
            }
            Ok(None) => {
                let status = self.child.as_mut().unwrap().wait().ok();
                panic!(
                    "latch serve exited ({status:?}) without the announce line\n{}",
                    self.diagnostics()
                );
            }
            Err(_) => panic!(
                "no announce line within {STARTUP_DEADLINE:?}\n{}",
                self.diagnostics()
            ),
        }
    }

    /// Everything the server printed so far, stdout and stderr of every run.
    pub fn logs(&self) -> String {
        let mut out = self.stdout_lines.lock().unwrap().join("\n");
        for g in 0..self.generation {
            let p = self.dir.path().join(format!("stderr.{g}.log"));
            out.push('\n');
            out.push_str(&std::fs::read_to_string(p).unwrap_or_default());
        }
        out
    }

    /// stdout and stderr of the current child, for panic messages.
    pub fn diagnostics(&self) -> String {
        let out = self.stdout_lines.lock().unwrap().join("\n");
        let err = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let err_tail: String = {
            let lines: Vec<&str> = err.lines().collect();
            let start = lines.len().saturating_sub(40);
            lines[start..].join("\n")
        };
        format!("--- stdout ---\n{out}\n--- stderr (tail) ---\n{err_tail}")
    }

    pub async fn wait_ready(&self) {
        let http = self.http.clone();
        let r = try_eventually(STARTUP_DEADLINE, || {
            let http = http.clone();
            async move {
                match http.try_get("/readyz", None).await {
                    Ok(r) if r.status == StatusCode::OK => Ok(()),
                    Ok(r) => Err(format!("readyz {} {}", r.status, r.text())),
                    Err(e) => Err(format!("readyz request failed: {e}")),
                }
            }
        })
        .await;
        if let Err(e) = r {
            panic!("server never became ready: {e}\n{}", self.diagnostics());
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running child").id()
    }

    /// SIGKILL the child and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// kill -9, then start again on the same data dir and config; waits for ready.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
        self.wait_ready().await;
    }

    /// kill -9, then start again with a new config (same data dir); waits for
    /// the announce line only.
    pub async fn restart_with_no_ready(&mut self, cfg: &ServerConfig) {
        self.kill9();
        self.cfg = cfg.clone();
        self.spawn().await;
    }

    pub async fn restart_with(&mut self, cfg: &ServerConfig) {
        self.restart_with_no_ready(cfg).await;
        self.wait_ready().await;
    }

    /// Sends a signal with `kill -SIG pid`.
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} failed");
    }

    /// Waits for the child to exit on its own.
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            let c = self.child.as_mut().expect("running child");
            if let Some(st) = c.try_wait().unwrap() {
                self.child = None;
                return st;
            }
            if start.elapsed() > deadline {
                panic!(
                    "server did not exit within {deadline:?}\n{}",
                    self.diagnostics()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.metrics_addr)
    }

    // ---- OAuth helpers ----------------------------------------------------

    pub async fn post_form(
        &self,
        path: &str,
        params: &[(&str, &str)],
        auth: Option<(&str, &str)>,
    ) -> Resp {
        self.http.post_form(path, params, auth).await
    }

    pub async fn post_json(&self, path: &str, body: &Value, auth: Option<(&str, &str)>) -> Resp {
        self.http.post_json(path, body, auth).await
    }

    pub async fn get(&self, path: &str, auth: Option<(&str, &str)>) -> Resp {
        self.http.get(path, auth).await
    }

    /// client_credentials token request; returns the full response.
    pub async fn token_resp(&self, client: &ClientDef, extra: &[(&str, &str)]) -> Resp {
        let mut params = vec![("grant_type", "client_credentials")];
        params.extend_from_slice(extra);
        self.post_form("/token", &params, client.auth()).await
    }

    /// client_credentials token; panics unless 200.
    pub async fn issue(&self, client: &ClientDef, extra: &[(&str, &str)]) -> String {
        let r = self.token_resp(client, extra).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "token request for {} failed: {}",
            client.id,
            r.text()
        );
        r.json()["access_token"]
            .as_str()
            .expect("access_token string")
            .to_string()
    }

    /// Introspects as `rs`; panics unless 200; returns the JSON.
    pub async fn introspect_as(&self, rs: &ClientDef, token: &str) -> Value {
        let r = self
            .post_form("/introspect", &[("token", token)], rs.auth())
            .await;
        assert_eq!(r.status, StatusCode::OK, "introspect failed: {}", r.text());
        r.json()
    }

    /// Introspects with the unrestricted resource server.
    pub async fn introspect(&self, token: &str) -> Value {
        self.introspect_as(&clients::rs_all(), token).await
    }

    pub async fn is_active(&self, token: &str) -> bool {
        let v = self.introspect(token).await;
        match v.get("active") {
            Some(Value::Bool(true)) => true,
            Some(Value::Bool(false)) => {
                assert_eq!(
                    v,
                    inactive(),
                    "inactive answers must be exactly {{active:false}}"
                );
                false
            }
            _ => panic!("introspection without boolean active: {v}"),
        }
    }

    pub async fn admin_keys(&self) -> Vec<Value> {
        let r = self.get("/admin/keys", clients::admin().auth()).await;
        assert_eq!(r.status, StatusCode::OK, "/admin/keys: {}", r.text());
        r.json()["keys"].as_array().expect("keys array").clone()
    }

    pub async fn jwks(&self) -> Value {
        let r = self.get("/.well-known/jwks.json", None).await;
        assert_eq!(r.status, StatusCode::OK, "jwks: {}", r.text());
        r.json()
    }

    pub async fn jwks_kids(&self) -> Vec<String> {
        self.jwks().await["keys"]
            .as_array()
            .expect("jwks keys array")
            .iter()
            .map(|k| k["kid"].as_str().expect("kid").to_string())
            .collect()
    }

    pub async fn admin_revoke(&self, kind: &str, value: Option<&str>, reason: &str) -> Value {
        let mut body = serde_json::json!({"kind": kind, "reason": reason});
        if let Some(v) = value {
            body["value"] = Value::String(v.into());
        }
        let r = self
            .post_json("/admin/revoke", &body, clients::admin().auth())
            .await;
        assert_eq!(r.status, StatusCode::OK, "/admin/revoke: {}", r.text());
        r.json()
    }

    pub async fn audit(&self, since: u64) -> Vec<Value> {
        let r = self
            .get(
                &format!("/admin/audit?since={since}&limit=1000"),
                clients::admin().auth(),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "/admin/audit: {}", r.text());
        r.json()["records"]
            .as_array()
            .expect("records array")
            .clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn inactive() -> Value {
    serde_json::json!({"active": false})
}

/// Keys of a given state in an `/admin/keys` list.
pub fn kids_in_state(keys: &[Value], state: &str) -> Vec<String> {
    keys.iter()
        .filter(|k| k["state"] == state)
        .map(|k| k["kid"].as_str().expect("kid").to_string())
        .collect()
}

pub fn key_state(keys: &[Value], kid: &str) -> Option<String> {
    keys.iter()
        .find(|k| k["kid"] == kid)
        .map(|k| k["state"].as_str().expect("state string").to_string())
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

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

#[derive(Clone)]
pub struct Http {
    pub addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
}

pub fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

pub fn form(params: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        s.append_pair(k, v);
    }
    s.finish()
}

impl Http {
    pub fn new(addr: SocketAddr) -> Http {
        // Idle connections are dropped well before the shortest server-side
        // header_read_timeout used in tests (1s), which also closes idle keep-alives:
        // reusing such a connection races with its close.
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .pool_idle_timeout(std::time::Duration::from_millis(500))
            .build_http();
        Http { addr, client }
    }

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

    /// Arbitrary request; panics on transport errors.
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

    pub async fn post_form(
        &self,
        path: &str,
        params: &[(&str, &str)],
        auth: Option<(&str, &str)>,
    ) -> Resp {
        let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
        let b;
        if let Some((id, secret)) = auth {
            b = basic(id, secret);
            headers.push(("authorization", b.as_str()));
        }
        self.request(Method::POST, path, &headers, form(params).into_bytes())
            .await
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

// ---------------------------------------------------------------------------
// Polling
// ---------------------------------------------------------------------------

/// Polls `f` every 50 ms until it returns `Ok`, or returns the last `Err`
/// once `deadline` has passed.
pub async fn try_eventually<T, F, Fut>(deadline: Duration, mut f: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                if start.elapsed() > deadline {
                    return Err(e);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Like [`try_eventually`] but panics with `what` and the last error.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    match try_eventually(deadline, f).await {
        Ok(v) => v,
        Err(e) => panic!("not reached within {deadline:?}: {what}; last: {e}"),
    }
}

// ---------------------------------------------------------------------------
// JWT helpers
// ---------------------------------------------------------------------------

pub fn b64url(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

pub fn b64url_decode(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .unwrap_or_else(|e| panic!("bad base64url {s:?}: {e}"))
}

/// Splits a compact JWS into (header, claims, signature-part).
pub fn decode_jwt(token: &str) -> (Value, Value, String) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "JWT must have three parts: {token}");
    let h: Value = serde_json::from_slice(&b64url_decode(parts[0])).expect("header JSON");
    let c: Value = serde_json::from_slice(&b64url_decode(parts[1])).expect("claims JSON");
    (h, c, parts[2].to_string())
}

pub fn encode_part(v: &Value) -> String {
    b64url(&serde_json::to_vec(v).unwrap())
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `aud` as a list whether the server uses a string or an array.
pub fn aud_list(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().expect("aud string").to_string())
            .collect(),
        other => panic!("aud is neither string nor array: {other}"),
    }
}

pub fn scope_set(v: &Value) -> std::collections::BTreeSet<String> {
    v.as_str()
        .unwrap_or_else(|| panic!("scope is not a string: {v}"))
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(|s| s.to_string())
        .collect()
}

/// Verifies a server JWT against a JWK from the JWKS (as a resource server
/// verifying locally would).
pub fn verify_with_jwk(token: &str, jwk: &Value) -> bool {
    use ring::signature;
    let (signing_input, sig) = token.rsplit_once('.').unwrap();
    let sig = b64url_decode(sig);
    match jwk["kty"].as_str().unwrap() {
        "OKP" => {
            let x = b64url_decode(jwk["x"].as_str().unwrap());
            signature::UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(signing_input.as_bytes(), &sig)
                .is_ok()
        }
        "EC" => {
            let mut pt = vec![4u8];
            pt.extend(b64url_decode(jwk["x"].as_str().unwrap()));
            pt.extend(b64url_decode(jwk["y"].as_str().unwrap()));
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, pt)
                .verify(signing_input.as_bytes(), &sig)
                .is_ok()
        }
        "RSA" => {
            let n = b64url_decode(jwk["n"].as_str().unwrap());
            let e = b64url_decode(jwk["e"].as_str().unwrap());
            signature::RsaPublicKeyComponents { n, e }
                .verify(
                    &signature::RSA_PKCS1_2048_8192_SHA256,
                    signing_input.as_bytes(),
                    &sig,
                )
                .is_ok()
        }
        other => panic!("unexpected kty {other}"),
    }
}

/// An Ed25519 key pair the test controls (an attacker's key).
pub fn attacker_ed25519() -> ring::signature::Ed25519KeyPair {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
}

/// Signs header.claims with the attacker's Ed25519 key.
pub fn sign_ed25519(
    kp: &ring::signature::Ed25519KeyPair,
    header: &Value,
    claims: &Value,
) -> String {
    let input = format!("{}.{}", encode_part(header), encode_part(claims));
    let sig = kp.sign(input.as_bytes());
    format!("{input}.{}", b64url(sig.as_ref()))
}

/// HS256-signs header.claims with `secret` as the HMAC key.
pub fn sign_hs256(secret: &[u8], header: &Value, claims: &Value) -> String {
    let input = format!("{}.{}", encode_part(header), encode_part(claims));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64url(tag.as_ref()))
}

/// Runs a CLI command to completion with a deadline; returns (status, stdout, stderr).
pub async fn run_cli(mut cmd: tokio::process::Command) -> (ExitStatus, String, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .expect("CLI command did not finish within the deadline")
        .expect("run CLI");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------
// Redis and clusters (redis mode)
// ---------------------------------------------------------------------------

/// A private `redis-server` child on a free loopback port (never 6379), with the AOF on
/// and fsynced before every reply, in its own temporary directory. Killed on drop; the
/// AOF survives [`RedisProcess::stop`] so that [`RedisProcess::start_again`] replays it.
pub struct RedisProcess {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    generation: u32,
}

/// A free loopback port, as the OS hands it out (it may be taken again before use).
pub fn free_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().unwrap().port();
        if port != 6379 {
            return port;
        }
    }
}

/// One `PING` over a fresh TCP connection: `Ok` on `+PONG`, the reply or error otherwise
/// (`-LOADING` while the AOF is replayed).
pub async fn redis_ping(port: u16) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(b"PING\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
        let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
        if reply.starts_with("+PONG") {
            Ok(())
        } else {
            Err(format!("reply {reply:?}"))
        }
    };
    match tokio::time::timeout(Duration::from_secs(2), fut).await {
        Ok(r) => r,
        Err(_) => Err("PING timed out".into()),
    }
}

impl RedisProcess {
    /// Starts `redis-server` on a free port and waits until it answers `PING`.
    pub async fn start() -> RedisProcess {
        let dir = tempfile::tempdir().expect("tempdir for redis");
        let mut r = RedisProcess {
            port: 0,
            dir,
            child: None,
            generation: 0,
        };
        let mut last = String::new();
        for _ in 0..20 {
            r.port = free_port();
            match r.spawn().await {
                Ok(()) => return r,
                // Most likely someone took the port between the probe and the start.
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start: {last}\n{}", r.logs());
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn log_path(&self, generation: u32) -> PathBuf {
        self.dir.path().join(format!("redis.{generation}.log"))
    }

    async fn spawn(&mut self) -> Result<(), String> {
        let log = self.log_path(self.generation);
        self.generation += 1;
        let mut child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "yes"])
            .args(["--appendfsync", "always"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!("spawn redis-server (is it on PATH? scripts/test installs it): {e}")
            })?;
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return Err(format!(
                    "redis-server on port {} exited with {st}",
                    self.port
                ));
            }
            match redis_ping(self.port).await {
                Ok(()) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Err(e) if start.elapsed() > DEADLINE => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("redis-server never answered PING: {e}"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// The child's pid (for signals).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis running").id()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL (a crash: no SHUTDOWN, no final save) and reap. The AOF stays in the
    /// directory; with `appendfsync always` it holds every acknowledged write.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts Redis again on the same port and directory (the AOF is replayed) and waits
    /// until it answers `PING`.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "start_again while redis is running");
        let mut last = String::new();
        // The port was ours a moment ago; retry briefly in case it is still held.
        for _ in 0..10 {
            match self.spawn().await {
                Ok(()) => return,
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "redis-server did not start again on port {}: {last}\n{}",
            self.port,
            self.logs()
        );
    }

    /// Every log line Redis wrote, all runs.
    pub fn logs(&self) -> String {
        (0..self.generation)
            .map(|g| std::fs::read_to_string(self.log_path(g)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Runs one command on a fresh connection.
    pub async fn try_cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> Result<T, String> {
        let fut = async {
            let client = redis::Client::open(self.url()).map_err(|e| e.to_string())?;
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            let mut cmd = redis::cmd(args[0]);
            for a in &args[1..] {
                cmd.arg(*a);
            }
            cmd.query_async::<T>(&mut conn)
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(DEADLINE, fut).await {
            Ok(r) => r,
            Err(_) => Err(format!("redis {args:?} timed out")),
        }
    }

    /// Runs one command; panics on error.
    pub async fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        self.try_cmd(args)
            .await
            .unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Nodes of one cluster: identical configs in redis mode against one Redis.
pub struct Cluster;

impl Cluster {
    /// `cfg` with the environment that selects redis mode on `redis` (the KEK is the
    /// config's, [`TEST_KEK`] by default, the same on every node).
    pub fn node_config(cfg: &ServerConfig, redis: &RedisProcess) -> ServerConfig {
        let mut cfg = cfg.clone();
        cfg.env
            .retain(|(k, _)| k != "LATCH_STORE__KIND" && k != "LATCH_STORE__REDIS_URL");
        cfg.env.push(("LATCH_STORE__KIND".into(), "redis".into()));
        cfg.env.push(("LATCH_STORE__REDIS_URL".into(), redis.url()));
        cfg
    }

    /// Starts `n` ready nodes: the first alone (it creates the keys), then the rest
    /// together.
    pub async fn start(n: usize, cfg: &ServerConfig, redis: &RedisProcess) -> Vec<TestServer> {
        assert!(n >= 1);
        let cfg = Self::node_config(cfg, redis);
        let mut nodes = vec![TestServer::start(&cfg).await];
        let rest: Vec<_> = (1..n)
            .map(|_| {
                let cfg = cfg.clone();
                tokio::spawn(async move { TestServer::start(&cfg).await })
            })
            .collect();
        for h in rest {
            match h.await {
                Ok(s) => nodes.push(s),
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
        nodes
    }
}
pub mod redis_ha;
