//! One latch process ([`TestServer`]) and what starting one takes ([`ServerBuilder`]):
//! the typed config, the KEK, extra environment, raw TOML overrides. The process runs
//! `latch serve` from a temporary directory on `127.0.0.1:0`; the harness learns the
//! ports from the announce line and waits for `/readyz`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::StatusCode;

use crate::cli::{latch_cmd, run_cli};
use crate::clients::ClientDef;
use crate::config::{raw_override, Config, StoreKind, TrustedIssuer};
use crate::http::Http;
use crate::poll::try_eventually;
use crate::redis::RedisProcess;
use crate::{STARTUP_DEADLINE, TEST_KEK};

/// Everything a start needs besides a directory. Cheap to clone: tests keep one to
/// restart a node with, or change a copy for a restart with another config.
#[derive(Clone, Debug)]
pub struct ServerBuilder {
    /// The typed `latch.toml`.
    pub config: Config,
    /// `LATCH_KEK`; `None` leaves it unset. [`TEST_KEK`] by default.
    pub kek: Option<String>,
    /// Extra environment of the child: secrets, `RUST_LOG`, `LATCH_*` overlay tests.
    pub env: Vec<(String, String)>,
    /// TOML snippets merged over the typed document, in order ([`raw_override`]).
    pub raw: Vec<String>,
}

/// A running (or killed) `latch serve` child. Killed on drop.
pub struct TestServer {
    /// What it was last started with.
    pub setup: ServerBuilder,
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

/// Parses `latch listening on http://HOST:PORT (metrics on http://HOST:PORT)` (`https://`
/// for a main listener with TLS).
pub fn parse_announce(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.trim().strip_prefix("latch listening on ")?;
    let rest = (rest.strip_prefix("http://")).or_else(|| rest.strip_prefix("https://"))?;
    let (main, rest) = rest.split_once(" (metrics on ")?;
    let rest = (rest.strip_prefix("http://")).or_else(|| rest.strip_prefix("https://"))?;
    let metrics = rest.strip_suffix(')')?;
    Some((main.parse().ok()?, metrics.parse().ok()?))
}

/// `kill -SIG pid`; panics if `kill` fails.
pub fn signal(pid: u32, sig: &str) {
    let st = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -{sig} {pid} failed");
}

// === impl ServerBuilder ===

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder {
            config: Config::default(),
            kek: Some(TEST_KEK.into()),
            env: vec![],
            raw: vec![],
        }
    }
}

impl ServerBuilder {
    /// Changes the typed config.
    pub fn config(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.config);
        self
    }

    /// Adds a client to those configured.
    pub fn client(mut self, c: ClientDef) -> Self {
        self.config.clients.push(c);
        self
    }

    /// Replaces the configured clients.
    pub fn clients(mut self, cs: impl IntoIterator<Item = ClientDef>) -> Self {
        self.config.clients = cs.into_iter().collect();
        self
    }

    /// Adds a `[[trusted_issuers]]` entry (see [`crate::Idp::trusted`]).
    pub fn trusted_issuer(mut self, t: TrustedIssuer) -> Self {
        self.config.trusted_issuers.push(t);
        self
    }

    /// Redis mode on `redis`.
    pub fn redis(self, redis: &RedisProcess) -> Self {
        self.redis_url(&redis.url())
    }

    /// Redis mode on any URL (credentials go in [`ServerBuilder::env`]).
    pub fn redis_url(mut self, url: &str) -> Self {
        self.config.store.kind = StoreKind::Redis;
        self.config.store.redis_url = Some(url.into());
        self
    }

    /// One more variable in the child's environment.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// `LATCH_KEK` unset: the embedded store makes and keeps its own.
    pub fn without_kek(mut self) -> Self {
        self.kek = None;
        self
    }

    /// The escape hatch for what no typed value expresses (an unknown key, a malformed
    /// value): a TOML snippet merged over the typed document.
    pub fn raw_toml(mut self, snippet: &str) -> Self {
        self.raw.push(snippet.into());
        self
    }

    /// The config file's text for a server whose directory is `dir` and data directory
    /// `data` (JWKS files are written into `dir`).
    pub fn render(&self, dir: &Path, data: &Path) -> String {
        let mut doc = self.config.to_table(dir, data);
        for snippet in &self.raw {
            raw_override(&mut doc, snippet);
        }
        toml::to_string(&doc).expect("the config document serializes")
    }

    /// Writes `dir/latch.toml` (data directory `dir/data`) and returns its path.
    pub fn write_config(&self, dir: &Path) -> PathBuf {
        let data = dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let path = dir.join("latch.toml");
        std::fs::write(&path, self.render(dir, &data)).unwrap();
        path
    }

    /// Applies the KEK and the extra environment to a command.
    pub fn apply_env(&self, cmd: &mut std::process::Command) {
        if let Some(kek) = &self.kek {
            cmd.env("LATCH_KEK", kek);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
    }

    /// Runs `latch <verb> --config <file>` to completion with this config and
    /// environment, in a fresh directory; returns (status, stdout, stderr).
    pub async fn run_verb(&self, verb: &str) -> (ExitStatus, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = self.write_config(dir.path());
        let mut cmd = latch_cmd();
        cmd.arg(verb).arg("--config").arg(&path);
        self.apply_env(&mut cmd);
        let cmd = tokio::process::Command::from(cmd);
        run_cli(cmd).await
    }

    /// Starts a server and waits until `/readyz` answers 200.
    pub async fn start(&self) -> TestServer {
        let s = self.start_no_ready().await;
        s.wait_ready().await;
        s
    }

    /// Starts a server and waits only for the announce line.
    pub async fn start_no_ready(&self) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_path = dir.path().join("data");
        std::fs::create_dir_all(&data_path).unwrap();
        let config_path = dir.path().join("latch.toml");
        let stderr_path = dir.path().join("stderr.0.log");
        let unbound: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut s = TestServer {
            setup: self.clone(),
            dir,
            config_path,
            data_path,
            addr: unbound,
            metrics_addr: unbound,
            http: Http::new(unbound),
            child: None,
            stdout_lines: Arc::new(Mutex::new(Vec::new())),
            stderr_path,
            generation: 0,
        };
        s.spawn().await;
        s
    }

    /// Starts `n` ready nodes of one cluster (redis mode, the same KEK): the first alone
    /// (it creates the keys), then the rest together.
    pub async fn start_nodes(&self, n: usize) -> Vec<TestServer> {
        assert!(n >= 1);
        assert_eq!(
            self.config.store.kind,
            StoreKind::Redis,
            "nodes of a cluster share a Redis: call .redis(..) first"
        );
        let mut nodes = vec![self.start().await];
        let rest: Vec<_> = (1..n)
            .map(|_| {
                let b = self.clone();
                tokio::spawn(async move { b.start().await })
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

// === impl TestServer ===

impl TestServer {
    /// The default setup: [`Config::default`], [`TEST_KEK`], no extra environment.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    fn write_config(&self) {
        let text = self.setup.render(self.dir.path(), &self.data_path);
        std::fs::write(&self.config_path, text).unwrap();
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
        self.setup.apply_env(&mut cmd);
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

    /// Waits until `/readyz` answers 200; panics with the logs otherwise.
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

    /// kill -9, then start again with another setup (same data dir); waits for the
    /// announce line only.
    pub async fn restart_with_no_ready(&mut self, setup: &ServerBuilder) {
        self.kill9();
        self.setup = setup.clone();
        self.spawn().await;
    }

    /// kill -9, then start again with another setup (same data dir); waits for ready.
    pub async fn restart_with(&mut self, setup: &ServerBuilder) {
        self.restart_with_no_ready(setup).await;
        self.wait_ready().await;
    }

    /// Sends a signal with `kill -SIG pid`.
    pub fn signal(&self, sig: &str) {
        signal(self.pid(), sig);
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
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}
