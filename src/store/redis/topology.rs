//! Which Redis latch talks to, from `store.redis_url`, and how it authenticates:
//!
//! | URL | topology |
//! |---|---|
//! | `redis[s]://[user:password@]host:port[/db]` | one standalone server |
//! | `redis[s]+sentinel://host:port[,host:port…]/master-name` | Sentinel: the current master of `master-name` |
//! | `redis[s]+cluster://host:port[,host:port…]` | Cluster, from these seed nodes |
//!
//! The `s` means TLS to every node (and to the sentinels), verified against
//! `store.tls_ca_file` (or the system roots), with an optional client certificate.
//! ACL credentials come from [`Options`]: one pair for the data nodes, one for the
//! sentinels. A [`Conn`] runs commands on the right node and reconnects by itself; a
//! [`Topology`] also finds a node for the announcement subscription. Nothing else in
//! latch knows the topology.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr,
};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture,
    RedisResult, TlsCertificates, TlsMode, Value,
};
use tokio::sync::Mutex;

/// A parsed `store.redis_url`. Host lists hold `redis://host:port` (or `rediss://`).
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
    /// Parses and checks a URL; the error says what is wrong and never repeats a password.
    pub fn parse(url: &str) -> Result<Target, String> {
        if url.contains("#insecure") {
            return Err(
                "TLS certificate verification cannot be turned off (#insecure); \
                 give the CA in store.tls_ca_file"
                    .into(),
            );
        }
        let hosts = |rest: &str, scheme: &str| -> Result<Vec<String>, String> {
            let list: Vec<String> = rest
                .split(',')
                .filter(|h| !h.is_empty())
                .map(|h| format!("{scheme}://{h}"))
                .collect();
            if list.is_empty() {
                return Err("names no host".into());
            }
            for h in &list {
                if h.contains('@') {
                    // One URL cannot say whose credentials these are (sentinel or master).
                    return Err("sentinel and cluster URLs carry no credentials; use \
                        store.redis_username/redis_password (and sentinel_username/sentinel_password)"
                        .into());
                }
                Client::open(h.as_str()).map_err(|e| format!("bad host {h:?}: {e}"))?;
            }
            Ok(list)
        };
        for (prefix, scheme) in [
            ("redis+sentinel://", "redis"),
            ("rediss+sentinel://", "rediss"),
        ] {
            if let Some(rest) = url.strip_prefix(prefix) {
                let (list, master) = rest
                    .split_once('/')
                    .ok_or("a sentinel URL ends with /master-name")?;
                if master.is_empty() {
                    return Err("a sentinel URL ends with /master-name".into());
                }
                return Ok(Target::Sentinel {
                    sentinels: hosts(list, scheme)?,
                    master: master.to_string(),
                });
            }
        }
        for (prefix, scheme) in [
            ("redis+cluster://", "redis"),
            ("rediss+cluster://", "rediss"),
        ] {
            if let Some(rest) = url.strip_prefix(prefix) {
                return Ok(Target::Cluster(hosts(rest.trim_end_matches('/'), scheme)?));
            }
        }
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            Client::open(url).map_err(|e| redact(&e.to_string()))?;
            return Ok(Target::Standalone(url.to_string()));
        }
        Err(
            "must start with redis://, rediss://, redis[s]+sentinel:// or redis[s]+cluster://"
                .into(),
        )
    }

    /// True when the URL asks for TLS.
    pub fn tls(&self) -> bool {
        match self {
            Target::Standalone(url) => url.starts_with("rediss://"),
            Target::Sentinel { sentinels, .. } => sentinels[0].starts_with("rediss://"),
            Target::Cluster(nodes) => nodes[0].starts_with("rediss://"),
        }
    }

    /// True when the standalone URL itself carries a password.
    pub fn has_url_password(&self) -> bool {
        match self {
            Target::Standalone(url) => url
                .as_str()
                .into_connection_info()
                .is_ok_and(|i| i.redis_settings().password().is_some()),
            _ => false,
        }
    }
}

/// `text` with the userinfo of any `redis[s]://user:pass@` URL in it replaced, so a
/// password never reaches a log line or an error message.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (before, after) = rest.split_at(i + 3);
        out.push_str(before);
        let end = after
            .find(|c: char| c.is_whitespace() || c == '/' || c == '"' || c == '\'')
            .unwrap_or(after.len());
        match after[..end].rfind('@') {
            Some(at) => {
                out.push_str("***@");
                rest = &after[at + 1..];
            }
            None => rest = after,
        }
    }
    out.push_str(rest);
    out
}

/// ACL credentials for one kind of node.
#[derive(Clone, Default)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Everything besides the URL that it takes to reach Redis.
#[derive(Clone, Default, Debug)]
pub struct Options {
    /// For the data nodes (standalone, cluster nodes, the Sentinel master).
    pub redis: Credentials,
    /// For the sentinels themselves.
    pub sentinel: Credentials,
    /// CA and client certificate (PEM) for `rediss` URLs; `None` uses the system roots.
    pub tls: Option<TlsCertificates>,
}

/// Makes rustls use ring, the only crypto library of latch. Idempotent.
fn install_ring_provider() {
    // Err means a provider is installed already: by an earlier call, that is ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// How to reach Redis, with the timeouts that keep a hung server from hanging requests.
#[derive(Clone)]
pub struct Topology {
    target: Target,
    options: Arc<Options>,
    timeout: Duration,
    /// Sentinel mode: asks the sentinels for the current master.
    sentinel: Option<Arc<Mutex<SentinelClient>>>,
}

impl Topology {
    pub fn new(target: Target, options: Options, timeout: Duration) -> RedisResult<Topology> {
        install_ring_provider();
        let sentinel = match &target {
            Target::Sentinel { sentinels, master } => Some(Arc::new(Mutex::new(sentinel_client(
                &target, sentinels, master, &options,
            )?))),
            _ => None,
        };
        Ok(Topology {
            target,
            options: Arc::new(options),
            timeout,
            sentinel,
        })
    }

    /// A client for one data node, with the data nodes' credentials and TLS.
    fn node_client(&self, url: &str) -> RedisResult<Client> {
        let info: ConnectionInfo = url.into_connection_info()?;
        let mut settings = info.redis_settings().clone();
        if let Some(u) = &self.options.redis.username {
            settings = settings.set_username(u);
        }
        if let Some(p) = &self.options.redis.password {
            settings = settings.set_password(p);
        }
        let info = info.set_redis_settings(settings);
        match (&self.options.tls, self.target.tls()) {
            (Some(certs), true) => Client::build_with_tls(info, certs.clone()),
            _ => Client::open(info),
        }
    }

    fn config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
    }

    /// A client for a node that receives every announcement. `attempt` rotates through
    /// cluster seed nodes, so a dead one is skipped on the next try.
    fn cluster_builder(&self, nodes: &[String]) -> redis::cluster::ClusterClientBuilder {
        let mut builder = redis::cluster::ClusterClient::builder(nodes.to_vec())
            .connection_timeout(self.timeout)
            .response_timeout(self.timeout)
            .retries(1);
        if let Some(u) = &self.options.redis.username {
            builder = builder.username(u);
        }
        if let Some(p) = &self.options.redis.password {
            builder = builder.password(p);
        }
        if self.target.tls() {
            builder = builder.tls(TlsMode::Secure);
            if let Some(certs) = &self.options.tls {
                builder = builder.certs(certs.clone());
            }
        }
        builder
    }

    /// On a Cluster: a connection of its own (RESP3) subscribed to the shard channel
    /// `channel` (`SSUBSCRIBE`, Redis 7), whose messages and disconnections arrive on
    /// `pushes`. The subscription is served by the master that owns the channel's slot.
    pub async fn sharded_subscription(
        &self,
        channel: &str,
        pushes: tokio::sync::mpsc::UnboundedSender<redis::PushInfo>,
    ) -> RedisResult<ClusterConnection> {
        let Target::Cluster(nodes) = &self.target else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "sharded pub/sub needs a Cluster",
            )));
        };
        let client = self
            .cluster_builder(nodes)
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(pushes)
            .build()?;
        let mut conn = client.get_async_connection().await?;
        conn.ssubscribe(channel).await?;
        Ok(conn)
    }

    /// `PING` to the master that owns `key`'s slot, on `conn` (the connection a sharded
    /// subscription to that slot lives on).
    pub async fn ping_owner(conn: &mut ClusterConnection, key: &str) -> RedisResult<()> {
        let route = Route::with_slot(Slot::for_key(key), SlotAddr::Master);
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
        conn.route_command(redis::cmd("PING"), routing).await?;
        Ok(())
    }

    /// Whether the target is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    pub async fn pubsub_client(&self, attempt: usize) -> RedisResult<Client> {
        match &self.target {
            Target::Standalone(url) => self.node_client(url),
            // Cluster pub/sub is broadcast to every node, so any node will do.
            Target::Cluster(nodes) => self.node_client(&nodes[attempt % nodes.len()]),
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
                let client = self.node_client(url)?;
                Ok(Conn::Single(
                    ConnectionManager::new_with_config(client, config).await?,
                ))
            }
            Target::Cluster(nodes) => {
                let client = self.cluster_builder(nodes).build()?;
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

/// Asks the sentinels (with their own credentials) for the master, and connects to it
/// with the data nodes' credentials; TLS on both legs for `rediss+sentinel://`.
fn sentinel_client(
    target: &Target,
    sentinels: &[String],
    master: &str,
    options: &Options,
) -> RedisResult<SentinelClient> {
    let addrs = sentinels
        .iter()
        .map(|h| h.as_str().into_connection_info().map(|i| i.addr().clone()))
        .collect::<RedisResult<Vec<_>>>()?;
    let mut b = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)?;
    if let Some(u) = &options.redis.username {
        b = b.set_client_to_redis_username(u);
    }
    if let Some(p) = &options.redis.password {
        b = b.set_client_to_redis_password(p);
    }
    if let Some(u) = &options.sentinel.username {
        b = b.set_client_to_sentinel_username(u);
    }
    if let Some(p) = &options.sentinel.password {
        b = b.set_client_to_sentinel_password(p);
    }
    if target.tls() {
        b = b
            .set_client_to_redis_tls_mode(TlsMode::Secure)
            .set_client_to_sentinel_tls_mode(TlsMode::Secure);
        if let Some(certs) = &options.tls {
            b = b
                .set_client_to_redis_certificates(certs.clone())
                .set_client_to_sentinel_certificates(certs.clone());
        }
    }
    b.build()
}

/// A command connection to whatever the topology is. Cheap to clone.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(SentinelConn),
}

impl Conn {
    /// `WAIT replicas timeout_ms` on the node that holds `key`: on a Cluster the master of
    /// its slot (the redis crate would send `WAIT` to every master and answer the least,
    /// so a shard without a replica would fail every write on every other shard);
    /// elsewhere the one master. The writes it covers are this connection's to that node.
    pub async fn wait_for(
        &mut self,
        key: &str,
        replicas: u32,
        timeout_ms: u64,
    ) -> RedisResult<u64> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(timeout_ms);
        match self {
            Conn::Cluster(c) => {
                let route = Route::with_slot(Slot::for_key(key), SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                let v = c.route_command(cmd, routing).await?;
                Ok(redis::from_redis_value(v)?)
            }
            other => cmd.query_async(other).await,
        }
    }

    /// Runs `cmd` on every master: the one server, the Sentinel master, or each Cluster
    /// primary. Each answer comes with the node it is from; a node's error is its own.
    pub async fn on_each_master(
        &mut self,
        cmd: &Cmd,
    ) -> RedisResult<Vec<(String, RedisResult<Value>)>> {
        match self {
            Conn::Cluster(c) => {
                let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                let Value::Map(answers) = c.route_command(cmd.clone(), routing).await? else {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::UnexpectedReturnType,
                        "no per-node answers",
                    )));
                };
                Ok(answers
                    .into_iter()
                    .map(|(node, v)| {
                        let node = redis::from_redis_value_ref::<String>(&node).unwrap_or_default();
                        let v = match v {
                            Value::ServerError(e) => Err(e.into()),
                            v => Ok(v),
                        };
                        (node, v)
                    })
                    .collect())
            }
            other => {
                let v = cmd.query_async::<Value>(other).await;
                Ok(vec![("master".to_string(), v)])
            }
        }
    }
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
        assert_eq!(
            Target::parse("rediss+sentinel://a:1,b:2/m"),
            Ok(Target::Sentinel {
                sentinels: vec!["rediss://a:1".into(), "rediss://b:2".into()],
                master: "m".into()
            })
        );
        assert!(Target::parse("rediss+cluster://a:1").unwrap().tls());
        assert!(Target::parse("rediss://a:1").unwrap().tls());
        assert!(!Target::parse("redis+cluster://a:1").unwrap().tls());
        assert!(Target::parse("redis://u:p@a:1").unwrap().has_url_password());
        for bad in [
            "rediss://a:1/#insecure",
            "redis+sentinel://u:secret@a:1/m",
            "redis+cluster://:secret@a:1",
            "http://x",
            "redis+sentinel://a:1",
            "redis+sentinel://a:1/",
            "redis+cluster://",
            "",
        ] {
            let e = Target::parse(bad).unwrap_err();
            assert!(!e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn redacts_userinfo() {
        assert_eq!(
            redact("cannot reach redis://user:s3cret@h:1/0 (x); rediss://:p@h2:2"),
            "cannot reach redis://***@h:1/0 (x); rediss://***@h2:2"
        );
        assert_eq!(
            redact("redis://h:1 and no secret"),
            "redis://h:1 and no secret"
        );
    }
}
