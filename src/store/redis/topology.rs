//! Which Redis latch talks to, from `store.redis_url`:
//!
//! | URL | topology |
//! |---|---|
//! | `redis://[:password@]host:port[/db]` | one standalone server |
//! | `redis+sentinel://host:port[,host:port…]/master-name` | Sentinel: the current master of `master-name` |
//! | `redis+cluster://host:port[,host:port…]` | Cluster, from these seed nodes |
//!
//! A [`Conn`] runs commands on the right node and reconnects by itself; a
//! [`Topology`] also finds a node for the announcement subscription.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisFuture, RedisResult, Value};
use tokio::sync::Mutex;

/// A parsed `store.redis_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Standalone(String),
    Sentinel {
        sentinels: Vec<String>,
        master: String,
    },
    Cluster(Vec<String>),
}

impl Target {
    /// Parses and checks a URL; the error says what is wrong.
    pub fn parse(url: &str) -> Result<Target, String> {
        let hosts = |rest: &str| -> Result<Vec<String>, String> {
            let list: Vec<String> = rest
                .split(',')
                .filter(|h| !h.is_empty())
                .map(|h| format!("redis://{h}"))
                .collect();
            if list.is_empty() {
                return Err("names no host".into());
            }
            for h in &list {
                Client::open(h.as_str()).map_err(|e| format!("bad host {h:?}: {e}"))?;
            }
            Ok(list)
        };
        if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            let (list, master) = rest
                .split_once('/')
                .ok_or("a sentinel URL ends with /master-name")?;
            if master.is_empty() {
                return Err("a sentinel URL ends with /master-name".into());
            }
            return Ok(Target::Sentinel {
                sentinels: hosts(list)?,
                master: master.to_string(),
            });
        }
        if let Some(rest) = url.strip_prefix("redis+cluster://") {
            return Ok(Target::Cluster(hosts(rest.trim_end_matches('/'))?));
        }
        if url.starts_with("redis://") {
            Client::open(url).map_err(|e| e.to_string())?;
            return Ok(Target::Standalone(url.to_string()));
        }
        Err("must start with redis://, redis+sentinel:// or redis+cluster://".into())
    }
}

/// How to reach Redis, with the timeouts that keep a hung server from hanging requests.
#[derive(Clone)]
pub struct Topology {
    target: Target,
    timeout: Duration,
    /// Sentinel mode: asks the sentinels for the current master.
    sentinel: Option<Arc<Mutex<SentinelClient>>>,
}

impl Topology {
    pub fn new(target: Target, timeout: Duration) -> RedisResult<Topology> {
        let sentinel = match &target {
            Target::Sentinel { sentinels, master } => {
                Some(Arc::new(Mutex::new(SentinelClient::build(
                    sentinels.clone(),
                    master.clone(),
                    None,
                    SentinelServerType::Master,
                )?)))
            }
            _ => None,
        };
        Ok(Topology {
            target,
            timeout,
            sentinel,
        })
    }

    fn config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
    }

    /// A client for a node that receives every announcement. `attempt` rotates through
    /// cluster seed nodes, so a dead one is skipped on the next try.
    pub async fn pubsub_client(&self, attempt: usize) -> RedisResult<Client> {
        match &self.target {
            Target::Standalone(url) => Client::open(url.as_str()),
            // Cluster pub/sub is broadcast to every node, so any node will do.
            Target::Cluster(nodes) => Client::open(nodes[attempt % nodes.len()].as_str()),
            Target::Sentinel { .. } => self.master_client().await,
        }
    }

    async fn master_client(&self) -> RedisResult<Client> {
        let sentinel = self.sentinel.as_ref().expect("sentinel topology");
        tokio::time::timeout(self.timeout, sentinel.lock().await.async_get_client())
            .await
            .map_err(|_| {
                redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "sentinel did not answer",
                ))
            })?
    }

    /// Connects for commands.
    pub async fn connect(&self) -> RedisResult<Conn> {
        match &self.target {
            Target::Standalone(url) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_secs(1));
                let client = Client::open(url.as_str())?;
                Ok(Conn::Single(
                    ConnectionManager::new_with_config(client, config).await?,
                ))
            }
            Target::Cluster(nodes) => {
                let client = redis::cluster::ClusterClient::builder(nodes.clone())
                    .connection_timeout(self.timeout)
                    .response_timeout(self.timeout)
                    .retries(1)
                    .build()?;
                Ok(Conn::Cluster(client.get_async_connection().await?))
            }
            Target::Sentinel { .. } => {
                let conn = SentinelConn {
                    topology: self.clone(),
                    cached: Arc::new(Mutex::new(None)),
                };
                conn.get().await?;
                Ok(Conn::Sentinel(conn))
            }
        }
    }
}

/// A command connection to whatever the topology is. Cheap to clone.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(SentinelConn),
}

/// Sentinel mode: a multiplexed connection to the current master, found again through
/// the sentinels after any connection error (a failover shows up as one).
#[derive(Clone)]
pub struct SentinelConn {
    topology: Topology,
    cached: Arc<Mutex<Option<MultiplexedConnection>>>,
}

impl SentinelConn {
    async fn get(&self) -> RedisResult<MultiplexedConnection> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            return Ok(c.clone());
        }
        let client = self.topology.master_client().await?;
        let conn = client
            .get_multiplexed_async_connection_with_config(&self.topology.config())
            .await?;
        *cached = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets the connection after an error that may mean the master moved.
    async fn check<T>(&self, result: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &result {
            let moved = e.is_io_error()
                || e.is_connection_dropped()
                || e.is_timeout()
                || e.is_connection_refusal()
                || e.code() == Some("READONLY");
            if moved {
                *self.cached.lock().await = None;
            }
        }
        result
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(s) => Box::pin(async move {
                let mut conn = s.get().await?;
                let result = conn.req_packed_command(cmd).await;
                s.check(result).await
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(s) => Box::pin(async move {
                let mut conn = s.get().await?;
                let result = conn.req_packed_commands(pipeline, offset, count).await;
                s.check(result).await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_topology() {
        assert_eq!(
            Target::parse("redis://127.0.0.1:6390/2"),
            Ok(Target::Standalone("redis://127.0.0.1:6390/2".into()))
        );
        assert_eq!(
            Target::parse("redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/main"),
            Ok(Target::Sentinel {
                sentinels: vec![
                    "redis://10.0.0.1:26379".into(),
                    "redis://10.0.0.2:26379".into()
                ],
                master: "main".into()
            })
        );
        assert_eq!(
            Target::parse("redis+cluster://a:7000,b:7001"),
            Ok(Target::Cluster(vec![
                "redis://a:7000".into(),
                "redis://b:7001".into()
            ]))
        );
        for bad in [
            "http://x",
            "redis+sentinel://a:1",
            "redis+sentinel://a:1/",
            "redis+cluster://",
            "",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad:?}");
        }
    }
}
