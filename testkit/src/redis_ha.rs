//! Redis as operators run it, started by the tests: password and ACL users, TLS with a
//! CA made at run time, a master with two replicas and three sentinels, and a three-master
//! Cluster. Every process listens on a free loopback port, runs in its own temporary
//! directory, is stopped by PID on drop, and every wait is bounded.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis::{command, free_port};
use crate::server::ServerBuilder;
use crate::DEADLINE;

/// How long a Redis process may take to answer after it is started.
const START: Duration = Duration::from_secs(15);

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, all made
/// by the test (ECDSA P-256 on ring), as PEM files in a temporary directory.
pub struct Tls {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Tls {
    pub fn generate() -> Tls {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let dir = tempfile::tempdir().expect("tempdir for TLS files");
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "latch test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf = |names: Vec<String>, cn: &str| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(names).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_pem, server_key_pem) =
            leaf(vec!["127.0.0.1".into(), "localhost".into()], "redis");
        let (client_pem, client_key_pem) = leaf(vec!["latch-client".into()], "latch");
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        Tls {
            ca: write("ca.pem", &ca.pem()),
            server_cert: write("server.pem", &server_pem),
            server_key: write("server.key", &server_key_pem),
            client_cert: write("client.pem", &client_pem),
            client_key: write("client.key", &client_key_pem),
            dir,
        }
    }

    /// redis-server arguments for a TLS port that requires client certificates.
    pub fn server_args(&self, tls_port: u16) -> Vec<String> {
        let p = |p: &Path| p.to_str().unwrap().to_string();
        vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            p(&self.server_cert),
            "--tls-key-file".into(),
            p(&self.server_key),
            "--tls-ca-cert-file".into(),
            p(&self.ca),
            "--tls-auth-clients".into(),
            "yes".into(),
        ]
    }
}

/// One `redis-server` (or sentinel) child.
pub struct RedisNode {
    /// The plain port; the harness speaks to the node here.
    pub port: u16,
    pub dir: tempfile::TempDir,
    /// Password of the `default` user, if any (for the harness's own commands).
    pub password: Option<String>,
    /// The TLS port, if the node has one (what sentinels and replicas use then).
    pub tls_port: Option<u16>,
    args: Vec<String>,
    /// Sentinel mode: the config file it runs from (sentinels rewrite it).
    sentinel_conf: Option<String>,
    child: Option<Child>,
    generation: u32,
}

impl RedisNode {
    /// A data node with AOF fsynced on every write, plus `extra` arguments.
    pub async fn start(password: Option<&str>, extra: &[String]) -> RedisNode {
        let mut args: Vec<String> = [
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(p) = password {
            args.extend([
                "--requirepass".into(),
                p.into(),
                "--masterauth".into(),
                p.into(),
            ]);
        }
        args.extend(extra.iter().cloned());
        Self::launch(password, args, None).await
    }

    /// A sentinel whose config is `conf` (without the `port` line).
    pub async fn start_sentinel(password: Option<&str>, conf: &str) -> RedisNode {
        Self::launch(password, vec![], Some(conf.to_string())).await
    }

    async fn launch(password: Option<&str>, args: Vec<String>, conf: Option<String>) -> RedisNode {
        let mut node = RedisNode {
            port: 0,
            dir: tempfile::tempdir().expect("tempdir for redis"),
            password: password.map(str::to_string),
            tls_port: None,
            args,
            sentinel_conf: conf,
            child: None,
            generation: 0,
        };
        let mut last = String::new();
        for _ in 0..10 {
            node.port = free_port();
            match node.spawn().await {
                Ok(()) => return node,
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start: {last}\n{}", node.logs());
    }

    fn log_path(&self, generation: u32) -> PathBuf {
        self.dir.path().join(format!("redis.{generation}.log"))
    }

    async fn spawn(&mut self) -> Result<(), String> {
        let log = self.log_path(self.generation);
        self.generation += 1;
        let mut cmd = Command::new("redis-server");
        if let Some(conf) = &self.sentinel_conf {
            let path = self.dir.path().join("sentinel.conf");
            if self.generation == 1 {
                let text = format!(
                    "port {}\nbind 127.0.0.1\ndir {}\nlogfile {}\n{conf}",
                    self.port,
                    self.dir.path().display(),
                    log.display()
                );
                std::fs::write(&path, text).unwrap();
            }
            cmd.arg(&path).arg("--sentinel");
            cmd.arg("--logfile").arg(&log);
        } else {
            cmd.arg("--port")
                .arg(self.port.to_string())
                .args(["--bind", "127.0.0.1"])
                .arg("--dir")
                .arg(self.dir.path())
                .arg("--logfile")
                .arg(&log)
                .args(&self.args);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn redis-server: {e}"))?;
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return Err(format!("redis-server on {} exited with {st}", self.port));
            }
            match self.try_cmd::<String>(&["PING"]).await {
                Ok(_) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Err(e) if start.elapsed() > START => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("redis-server never answered PING: {e}"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// A URL for the harness (default user).
    pub fn admin_url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The address others use: the TLS port if there is one.
    pub fn announced(&self) -> String {
        format!("127.0.0.1:{}", self.tls_port.unwrap_or(self.port))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis running").id()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL and reap: a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `kill -SIG pid` (STOP, CONT).
    pub fn signal(&self, sig: &str) {
        crate::server::signal(self.pid(), sig);
    }

    /// Starts again on the same port and directory (AOF, nodes.conf, sentinel.conf).
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "start_again while running");
        let mut last = String::new();
        for _ in 0..10 {
            match self.spawn().await {
                Ok(()) => return,
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "redis-server did not start again on {}: {last}\n{}",
            self.port,
            self.logs()
        );
    }

    pub fn logs(&self) -> String {
        (0..self.generation)
            .map(|g| std::fs::read_to_string(self.log_path(g)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// One command on a fresh connection, bounded in time.
    pub async fn try_cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> Result<T, String> {
        command(self.admin_url(), args, Duration::from_secs(3)).await
    }

    pub async fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        self.try_cmd(args)
            .await
            .unwrap_or_else(|e| panic!("redis {args:?} on {}: {e}", self.port))
    }

    /// `ROLE`'s first field: master, slave or sentinel.
    pub async fn role(&self) -> Result<String, String> {
        let v: redis::Value = self.try_cmd(&["ROLE"]).await?;
        match v {
            redis::Value::Array(items) => items
                .first()
                .and_then(|x| redis::from_redis_value_ref::<String>(x).ok())
                .ok_or_else(|| "empty ROLE".into()),
            other => Err(format!("ROLE: {other:?}")),
        }
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A frozen process must be woken to die cleanly and release its port.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(c.id().to_string())
                .status();
        }
        self.kill9();
    }
}

/// The redis-server on PATH accepts `--tls-port` (built with TLS): `Err` says why not.
pub async fn redis_tls_support(tls: &Tls) -> Result<(), String> {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("probe.log");
    let mut child = Command::new("redis-server")
        .args(["--port", "0", "--bind", "127.0.0.1", "--save", ""])
        .arg("--dir")
        .arg(dir.path())
        .arg("--logfile")
        .arg(&log)
        .args(tls.server_args(port))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn redis-server: {e}"))?;
    let start = Instant::now();
    let result = loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            break Err(format!(
                "redis-server with --tls-port exited ({st}): {err} {log}"
            ));
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break Ok(());
        }
        if start.elapsed() > START {
            break Err("redis-server with --tls-port never listened".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// One master, two replicas and three sentinels (quorum 2). The data nodes share one
/// password; the sentinels have their own.
pub struct SentinelSet {
    pub name: String,
    /// Data nodes; which one is master changes with failovers.
    pub data: Vec<RedisNode>,
    pub sentinels: Vec<RedisNode>,
    pub data_password: String,
    pub sentinel_password: String,
    /// With TLS, every link (latch, replication, sentinels) uses the TLS ports.
    pub tls: Option<Tls>,
}

impl SentinelSet {
    pub async fn start(tls: Option<Tls>) -> SentinelSet {
        let data_password = "data-pass-7Qx".to_string();
        let sentinel_password = "sentinel-pass-3Kz".to_string();
        let tls_args = |port: u16| -> Vec<String> {
            match &tls {
                Some(t) => {
                    let mut a = t.server_args(port);
                    a.extend(["--tls-replication".into(), "yes".into()]);
                    a
                }
                None => vec![],
            }
        };
        let mp = free_port();
        let mut master = RedisNode::start(Some(&data_password), &tls_args(mp)).await;
        if tls.is_some() {
            master.tls_port = Some(mp);
        }
        let master_port = master.tls_port.unwrap_or(master.port);
        // Two replicas: with `store.min_replicas_ack = 1` (the Sentinel default) the
        // promoted one still has a replica to confirm writes after the master is lost.
        let mut replicas = Vec::new();
        for _ in 0..2 {
            let rp = free_port();
            let mut replica_args = tls_args(rp);
            replica_args.extend([
                "--replicaof".into(),
                "127.0.0.1".into(),
                master_port.to_string(),
            ]);
            let mut replica = RedisNode::start(Some(&data_password), &replica_args).await;
            replica.tls_port = tls.as_ref().map(|_| rp);
            replicas.push(replica);
        }
        let name = "latchmaster".to_string();
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let sp_tls = free_port();
            let tls_conf = match &tls {
                Some(t) => format!(
                    "tls-port {sp_tls}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
                     tls-auth-clients yes\ntls-replication yes\n",
                    t.server_cert.display(),
                    t.server_key.display(),
                    t.ca.display()
                ),
                None => String::new(),
            };
            let conf = format!(
                "{tls_conf}requirepass {sp}\n\
                 sentinel sentinel-pass {sp}\n\
                 sentinel monitor {name} 127.0.0.1 {master_port} 2\n\
                 sentinel auth-pass {name} {dp}\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 5000\n\
                 sentinel parallel-syncs {name} 1\n",
                sp = sentinel_password,
                dp = data_password,
            );
            let mut s = RedisNode::start_sentinel(Some(&sentinel_password), &conf).await;
            if tls.is_some() {
                s.tls_port = Some(sp_tls);
            }
            sentinels.push(s);
        }
        let set = SentinelSet {
            name,
            data: std::iter::once(master).chain(replicas).collect(),
            sentinels,
            data_password,
            sentinel_password,
            tls,
        };
        set.await_healthy(&set.data[0].announced()).await;
        set
    }

    /// `redis+sentinel://` (or `rediss+sentinel://`) over the three sentinels.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.sentinels.iter().map(RedisNode::announced).collect();
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}+sentinel://{}/{}", hosts.join(","), self.name)
    }

    /// `b` in redis mode on this setup: the sentinels' URL, both credentials (in the
    /// environment, where latch wants passwords), and with TLS the CA and the client
    /// certificate.
    pub fn node(&self, b: ServerBuilder) -> ServerBuilder {
        let mut b = b
            .redis_url(&self.url())
            .env("LATCH_STORE__REDIS_PASSWORD", &self.data_password)
            .env("LATCH_STORE__SENTINEL_PASSWORD", &self.sentinel_password);
        if let Some(t) = &self.tls {
            b = b.config(|c| {
                c.store.tls_ca_file = Some(t.ca.clone());
                c.store.tls_cert_file = Some(t.client_cert.clone());
                c.store.tls_key_file = Some(t.client_key.clone());
            });
        }
        b
    }

    /// The master as the sentinels that answer see it: `host:port` by majority.
    pub async fn master_addr(&self) -> Result<String, String> {
        let mut votes: Vec<String> = Vec::new();
        for s in &self.sentinels {
            if let Ok(v) = s
                .try_cmd::<Vec<String>>(&["SENTINEL", "get-master-addr-by-name", &self.name])
                .await
            {
                if v.len() == 2 {
                    votes.push(format!("{}:{}", v[0], v[1]));
                }
            }
        }
        let first = votes.first().cloned().ok_or("no sentinel answered")?;
        if votes.len() >= 2 && votes.iter().all(|v| *v == first) {
            Ok(first)
        } else {
            Err(format!("sentinels disagree: {votes:?}"))
        }
    }

    /// Index in `data` of the node at `addr`.
    pub fn index_of(&self, addr: &str) -> usize {
        self.data
            .iter()
            .position(|n| n.announced() == addr)
            .unwrap_or_else(|| panic!("{addr} is none of the data nodes"))
    }

    /// Waits until every sentinel agrees on `master`, knows the other sentinels and both
    /// replicas, and the replicas are in sync: the state a failover needs.
    pub async fn await_healthy(&self, master: &str) {
        let start = Instant::now();
        loop {
            let r = self.health(master).await;
            match r {
                Ok(()) => return,
                Err(e) if start.elapsed() > DEADLINE => panic!(
                    "sentinel setup never healthy: {e}\n--- sentinel 0 ---\n{}",
                    self.sentinels[0].logs()
                ),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    async fn health(&self, master: &str) -> Result<(), String> {
        let addr = self.master_addr().await?;
        if addr != master {
            return Err(format!("master is {addr}, want {master}"));
        }
        for s in &self.sentinels {
            let others: Vec<redis::Value> =
                s.try_cmd(&["SENTINEL", "sentinels", &self.name]).await?;
            let replicas: Vec<redis::Value> =
                s.try_cmd(&["SENTINEL", "replicas", &self.name]).await?;
            if others.len() < 2 || replicas.len() < 2 {
                return Err(format!(
                    "sentinel {} knows {} sentinels, {} replicas",
                    s.port,
                    others.len(),
                    replicas.len()
                ));
            }
        }
        let m = &self.data[self.index_of(master)];
        let info: String = m.try_cmd(&["INFO", "replication"]).await?;
        if info.matches("state=online").count() < 2 {
            return Err(format!("replicas not online: {info}"));
        }
        Ok(())
    }

    /// Waits until the sentinels name a master other than `old`; returns it.
    pub async fn await_failover(&self, old: &str, deadline: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Ok(addr) = self.master_addr().await {
                if addr != old {
                    let node = &self.data[self.index_of(&addr)];
                    if node.role().await.as_deref() == Ok("master") {
                        return addr;
                    }
                }
            }
            assert!(
                start.elapsed() < deadline,
                "no failover away from {old} within {deadline:?}\n--- sentinel 0 ---\n{}",
                self.sentinels[0].logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A Redis Cluster of three masters (and, with [`RedisCluster::start_with_replicas`], one
/// replica each), every node with `password`.
pub struct RedisCluster {
    pub nodes: Vec<RedisNode>,
    pub password: String,
}

impl RedisCluster {
    pub async fn start(password: &str) -> RedisCluster {
        Self::start_with(password, 0).await
    }

    /// Three masters with one replica each: six processes. `redis-cli --cluster create`
    /// makes the first three nodes masters and the others their replicas.
    pub async fn start_with_replicas(password: &str) -> RedisCluster {
        let c = Self::start_with(password, 1).await;
        c.await_replicas_in_sync().await;
        c
    }

    /// Indexes of the nodes that are masters right now (by `ROLE`; a dead node is none).
    pub async fn masters(&self) -> Vec<usize> {
        let mut out = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if n.is_running() && n.role().await.as_deref() == Ok("master") {
                out.push(i);
            }
        }
        out
    }

    /// The running master that serves `key`'s slot: the one where `EXISTS` is not
    /// redirected (`MOVED`).
    pub async fn owner_of(&self, key: &str) -> Option<usize> {
        for i in self.masters().await {
            if self.nodes[i].try_cmd::<i64>(&["EXISTS", key]).await.is_ok() {
                return Some(i);
            }
        }
        None
    }

    /// The index of the replica of master `master` (by `ROLE` on the replica).
    pub async fn replica_of(&self, master: usize) -> Option<usize> {
        let port = self.nodes[master].port;
        for (i, n) in self.nodes.iter().enumerate() {
            if i == master || !n.is_running() {
                continue;
            }
            let info: Result<String, String> = n.try_cmd(&["INFO", "replication"]).await;
            if info.is_ok_and(|info| {
                info.contains("role:slave") && info.contains(&format!("master_port:{port}"))
            }) {
                return Some(i);
            }
        }
        None
    }

    /// Waits until every master reports a connected replica in sync (`slave0:...online`).
    pub async fn await_replicas_in_sync(&self) {
        let start = Instant::now();
        for i in self.masters().await {
            loop {
                let info: Result<String, String> =
                    self.nodes[i].try_cmd(&["INFO", "replication"]).await;
                if info
                    .as_deref()
                    .is_ok_and(|i| i.contains("connected_slaves:1") && i.contains("state=online"))
                {
                    break;
                }
                assert!(
                    start.elapsed() < DEADLINE,
                    "master {i} never got its replica in sync: {info:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    async fn start_with(password: &str, replicas: usize) -> RedisCluster {
        let mut args: Vec<String> = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if replicas > 0 {
            // What docs/SCALING.md asks of a deployment: a shard without a master stops
            // only its own slots, not the whole cluster.
            args.extend(["--cluster-require-full-coverage".into(), "no".into()]);
        }
        let mut nodes = Vec::new();
        for _ in 0..3 * (1 + replicas) {
            nodes.push(RedisNode::start(Some(password), &args).await);
        }
        let addrs: Vec<String> = nodes.iter().map(RedisNode::addr).collect();
        let out = tokio::time::timeout(
            DEADLINE,
            tokio::process::Command::new("redis-cli")
                .env("REDISCLI_AUTH", password)
                .arg("--cluster")
                .arg("create")
                .args(&addrs)
                .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("redis-cli --cluster create timed out")
        .expect("run redis-cli");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let c = RedisCluster {
            nodes,
            password: password.to_string(),
        };
        c.await_ok().await;
        c
    }

    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.nodes.iter().map(RedisNode::addr).collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// Waits until every running node says `cluster_state:ok`.
    pub async fn await_ok(&self) {
        let start = Instant::now();
        for n in self.nodes.iter().filter(|n| n.is_running()) {
            loop {
                let info = n.try_cmd::<String>(&["CLUSTER", "INFO"]).await;
                if info
                    .as_deref()
                    .is_ok_and(|i| i.contains("cluster_state:ok"))
                {
                    break;
                }
                assert!(
                    start.elapsed() < DEADLINE,
                    "cluster never ok: {info:?}\n{}",
                    n.logs()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    pub fn kill_all(&mut self) {
        for n in &mut self.nodes {
            n.kill9();
        }
    }

    pub async fn start_all_again(&mut self) {
        for n in &mut self.nodes {
            n.start_again().await;
        }
        self.await_ok().await;
    }
}
