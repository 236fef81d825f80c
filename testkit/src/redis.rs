//! A private standalone `redis-server` ([`RedisProcess`]) for redis-mode nodes: a free
//! loopback port (never 6379), its own directory, AOF fsynced before every reply, killed
//! on drop. Passwords, ACL, TLS, Sentinel and Cluster are in [`crate::redis_ha`].

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::DEADLINE;

/// One `redis-server` child. The AOF survives [`RedisProcess::stop`], so that
/// [`RedisProcess::start_again`] replays it.
pub struct RedisProcess {
    pub port: u16,
    pub dir: tempfile::TempDir,
    /// Arguments after the harness's own (port, AOF, directory, log file).
    extra: Vec<String>,
    child: Option<Child>,
    generation: u32,
}

/// The Redis key of the status list an access token names (`status.status_list.uri`):
/// one sorted set per list, `{latch:sl:<id>}` (docs/ARCHITECTURE.md), for tests that
/// tamper with it.
pub fn status_list_key(token: &str) -> String {
    let claims = crate::jwt::decode_jwt(token).1;
    let uri = claims["status"]["status_list"]["uri"]
        .as_str()
        .expect("a status list in the access token");
    format!("{{latch:sl:{}}}", uri.rsplit('/').next().unwrap())
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

/// One command on a fresh connection to `url`, bounded by `limit`.
pub(crate) async fn command<T: redis::FromRedisValue>(
    url: String,
    args: &[&str],
    limit: Duration,
) -> Result<T, String> {
    let fut = async {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
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
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("redis {args:?} timed out")),
    }
}

// === impl RedisProcess ===

impl RedisProcess {
    /// Starts `redis-server` on a free port and waits until it answers `PING`.
    pub async fn start() -> RedisProcess {
        Self::start_with(vec![]).await
    }

    /// A replica of `master` without persistence of its own; returns once `master`
    /// reports it online.
    pub async fn replica_of(master: &RedisProcess) -> RedisProcess {
        let r = Self::start_with(vec![
            "--appendonly".into(),
            "no".into(),
            "--replicaof".into(),
            "127.0.0.1".into(),
            master.port.to_string(),
        ])
        .await;
        let online = format!("port={},state=online", r.port);
        crate::eventually(DEADLINE, "the replica is in sync", || async {
            let info: String = master.try_cmd(&["INFO", "replication"]).await?;
            if info.contains(&online) {
                Ok(())
            } else {
                Err(info)
            }
        })
        .await;
        r
    }

    async fn start_with(extra: Vec<String>) -> RedisProcess {
        let dir = tempfile::tempdir().expect("tempdir for redis");
        let mut r = RedisProcess {
            port: 0,
            dir,
            extra,
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
            .args(&self.extra)
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

    /// `kill -SIG pid` (STOP, CONT).
    pub fn signal(&self, sig: &str) {
        crate::server::signal(self.pid(), sig);
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
        command(self.url(), args, DEADLINE).await
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
