//! latch: a token introspection and revocation server.
//!
//! # Layout
//!
//! - [`config`]: the TOML file, `LATCH_*` overrides, validation (`latch check`).
//! - [`clients`]: configured clients, roles, constant-time authentication.
//! - [`keys`]: signing keys, their lifecycle and rotation, KEK sealing, the JWKS.
//! - [`tokens`]: access-token claims, signing, and the active/inactive decision (no IO).
//! - [`sessions`]: refresh tokens, trusted identity providers and their assertions.
//! - [`revocation`]: the session-version table and the follower that feeds it from the store.
//! - [`nodes`]: the node registry's records and what they prove about a revocation.
//! - [`ssf`]: Shared Signals streams and Security Event Tokens (SSF 1.0, CAEP 1.0; no IO).
//! - [`store`]: the durable state behind one trait; `store::embedded` is SQLite.
//! - [`http`]: routing, request parsing, client auth, the one error → response mapping.
//! - [`server`]: accept loops, connection limits, request deadlines, graceful drain.
//! - [`tls`]: the main listener's certificate, TLS versions, ALPN, reloads.
//! - [`limits`]: per-node rate limits (GCRA), trusted proxies and the client address.
//! - [`cli`]: the operator verbs that talk to a running server's admin API.
//!
//! [`run`] wires them together: open the store, load keys and the table, then listen.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub mod app;
pub mod audit;
pub mod cli;
pub mod clients;
pub mod config;
pub mod contracts;
pub mod dpop;
pub mod grants;
pub mod http;
pub mod ids;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod nodes;
pub mod policy;
pub mod revocation;
pub mod server;
pub mod sessions;
pub mod ssf;
pub mod status;
pub mod store;
pub mod time;
pub mod tls;
pub mod tokens;

use app::follower::{Follower, FollowerConfig};
use app::keys::Keys;
use app::nodes::{Identity, Reporter, ReporterConfig};
use app::App;
use config::{Config, RuntimeFlavor, StoreKind};
use keys::Kek;
use revocation::Table;
use store::{SharedStore, StoreError};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    #[error(transparent)]
    Keys(#[from] app::keys::KeysError),
    #[error("cannot install the SIGHUP handler (TLS reloads): {source}")]
    Signal { source: std::io::Error },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Runs a node until `shutdown` resolves, then drains in-flight requests and returns.
///
/// Prints `latch listening on http://ADDR (metrics on http://ADDR)` (`https://` for the
/// main listener with `[tls]`, and for the metrics one with `metrics.tls`) on stdout once
/// both listeners are bound; `/readyz` answers 200 once keys and revocations are loaded.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let prometheus = metrics::install();
    let (store, kek) = open_store(&config).await?;
    let keys = Arc::new(Keys::new(store.clone(), kek, config.key_policy()));
    keys.reload().await?;
    keys.tick().await?;
    let clients = config.clients()?;
    let book = app::contracts::load(&store).await?;
    let contracts = Arc::new(app::contracts::Contracts::new(clients, book));
    let grants = Arc::new(app::grants::Grants::new(app::grants::load(&store).await?));
    let table = Arc::new(Table::new(config.revocation_retention()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let reporter = Arc::new(Reporter::new(
        store.clone(),
        table.clone(),
        keys.clone(),
        Identity {
            id: nodes::new_node_id(),
            name: (config.node.name.clone())
                .unwrap_or_else(|| nodes::default_name(config.listen.port())),
            address: config.listen.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        },
        ReporterConfig {
            heartbeat: config.node.heartbeat,
            ttl: config.node_ttl(),
            prompt_acks: config.node.acks,
            max_staleness: config.store.max_staleness,
        },
    ));
    // Running before the first load: the load's freshness proof is recorded through it.
    let reporting = tokio::spawn(reporter.clone().run(stop_rx.clone()));
    let follower = Follower::new(
        store.clone(),
        table.clone(),
        keys.clone(),
        FollowerConfig::new(config.store.max_staleness)
            .with_audit_retention(config.store.audit_retention),
    )
    .with_contracts(contracts.clone())
    .with_grants(grants.clone())
    .with_reporter(reporter.clone());
    follower.load().await?;
    store
        .append_audit(audit::NewAudit {
            actor: "latch".into(),
            action: "config_load".into(),
            target: format!("config:{}", config.digest),
            reason: format!("node start, {} clients", config.clients.len()),
            request_id: String::new(),
        })
        .await?;

    // TLS files are read before binding: a bad pair is a config error, as `latch check` says.
    let certs = tls::Certs::load(&config.tls).map_err(config::ConfigError::from)?;
    let client_auth = match config.requests_client_certs() {
        true => Some(Arc::new(
            tls::ClientAuth::load(&config.tls).map_err(config::ConfigError::from)?,
        )),
        false => None,
    };
    let listener = match config.runtime.flavor {
        RuntimeFlavor::MultiThread => Main::Shared(bind(config.listen).await?),
        RuntimeFlavor::PerCore => Main::PerCore(
            server::bind_reuseport(config.listen, config.runtime.worker_count()).map_err(
                |source| StartError::Listen {
                    addr: config.listen,
                    source,
                },
            )?,
        ),
    };
    let metrics_listener = bind(config.metrics.listen).await?;
    let (addr, metrics_addr) = (listener.local(), local(&metrics_listener));
    let limits = server::ListenerLimits {
        max_connections: config.limits.max_connections,
        max_connections_per_ip: config.limits.per_ip_connections(),
        header_read_timeout: config.limits.header_read_timeout,
        write_timeout: config.limits.write_timeout,
        exempt: config.limits.proxies().into(),
    };
    let trusted = config.trusted_issuers()?;
    let name = match &config.node.name {
        Some(_) => None,
        None => Some(nodes::default_name(addr.port())),
    };
    reporter.set_address(addr.to_string(), name);
    // Registered under its real address before it answers anything.
    reporter.report().await?;
    let node_id = reporter.id();
    let ssf = app::ssf::Ssf::new(&config)?;
    let (acceptor, metrics_acceptor, reloader) = match certs {
        Some(certs) => {
            let reload = tls::reloader(
                certs.clone(),
                client_auth.clone(),
                config.tls.watch_interval,
                stop_rx.clone(),
            )
            .map_err(|source| StartError::Signal { source })?;
            // The same certificate resolver: one reload serves both listeners.
            let metrics_listener = config.metrics.tls.then(|| tls::Listener {
                acceptor: tls::acceptor(certs.clone(), false),
                client_auth: None,
            });
            let listener = tls::Listener {
                acceptor: tls::acceptor(certs, client_auth.is_some()),
                client_auth,
            };
            (Some(listener), metrics_listener, Some(reload))
        }
        None => (None, None, None),
    };
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    let metrics_scheme = if metrics_acceptor.is_some() {
        "https"
    } else {
        "http"
    };
    let status =
        app::status::StatusLists::new(&config, store.clone(), keys.status_record_mac().clone());
    let app = App::new(
        config,
        app::Parts {
            trusted,
            keys: keys.clone(),
            table,
            store,
            metrics: prometheus,
            contracts,
            grants,
            node_id,
            ssf,
            status,
        },
    );
    tracing::info!(%addr, %metrics_addr, store = app.store.kind(), "latch started");
    println!("latch listening on {scheme}://{addr} (metrics on {metrics_scheme}://{metrics_addr})");

    let reloading = reloader.map(tokio::spawn);
    let tasks = [
        reporting,
        tokio::spawn(follower.run(stop_rx.clone())),
        tokio::spawn(app::keys::run_rotation(keys, stop_rx.clone())),
        tokio::spawn(app::contracts::run_watch(app.clone(), stop_rx.clone())),
        tokio::spawn(app::grants::run_gauges(app.clone(), stop_rx.clone())),
        tokio::spawn(app::ssf::delivery::run(app.clone(), stop_rx.clone())),
        tokio::spawn(app::status::run_pruning(app.clone(), stop_rx.clone())),
        tokio::spawn(server::serve(
            metrics_listener,
            app.clone(),
            http::handle_metrics,
            server::ListenerLimits {
                max_connections: 64,
                max_connections_per_ip: 64,
                ..limits.clone()
            },
            metrics_acceptor,
            stop_rx.clone(),
        )),
    ];
    let main = match listener {
        Main::Shared(listener) => tokio::spawn(server::serve(
            listener,
            app,
            http::handle,
            limits,
            acceptor,
            stop_rx,
        )),
        Main::PerCore(listeners) => {
            let workers =
                server::serve_per_core(listeners, app, http::handle, limits, acceptor, stop_rx)
                    .map_err(|source| StartError::Listen { addr, source })?;
            tokio::spawn(workers)
        }
    };
    shutdown.await;
    tracing::info!("shutting down: draining in-flight requests");
    let _ = stop_tx.send(true);
    let _ = main.await;
    for t in tasks.into_iter().chain(reloading) {
        let _ = t.await;
    }
    tracing::info!("stopped");
    Ok(())
}

async fn open_store(config: &Config) -> Result<(SharedStore, Kek), StartError> {
    let kek_env = std::env::var("LATCH_KEK").ok();
    match config.store.kind {
        StoreKind::Embedded => {
            let store = store::embedded::EmbeddedStore::open(&config.store.path)?;
            let kek = Kek::load(kek_env, Some(&config.store.path))?;
            Ok((Arc::new(store), kek))
        }
        StoreKind::Redis => {
            // Refuse before connecting: without LATCH_KEK there is nothing to do.
            let kek = Kek::load(kek_env, None)?;
            let url = config.store.redis_url.as_deref().unwrap_or_default();
            let timeout = (config.store.max_staleness / 2)
                .clamp(Duration::from_millis(100), Duration::from_secs(2));
            // Validated with the config; read again here so the files are the current ones.
            let options = config.store.redis_options()?;
            let replication = store::redis::Replication {
                min_acks: config.store.replicas_ack(),
                timeout: config.store.replica_ack_timeout,
            };
            let store =
                store::redis::RedisStore::connect(url, options, timeout, replication).await?;
            Ok((Arc::new(store), kek))
        }
    }
}

/// For `latch check`: how the contracts recorded in the store differ from `[[clients]]`
/// (the store wins once a contract is recorded). Opens the store without keys; an
/// embedded store held by a running node cannot be read and is an error here.
pub async fn contract_drift(config: &Config) -> Result<Vec<String>, StartError> {
    let store: SharedStore = match config.store.kind {
        StoreKind::Embedded => {
            // Never create a data directory just to compare: nothing recorded yet.
            if !config.store.path.join("latch.lock").exists() {
                return Ok(Vec::new());
            }
            Arc::new(store::embedded::EmbeddedStore::open(&config.store.path)?)
        }
        StoreKind::Redis => {
            let url = config.store.redis_url.as_deref().unwrap_or_default();
            let options = config.store.redis_options()?;
            Arc::new(
                store::redis::RedisStore::connect(
                    url,
                    options,
                    Duration::from_secs(2),
                    store::redis::Replication::default(),
                )
                .await?,
            )
        }
    };
    let book = app::contracts::load(&store).await?;
    Ok(app::contracts::drift(
        &book,
        &config.clients()?,
        time::now_ms(),
    ))
}

/// The main listener: one socket for the shared runtime, or one per worker of the
/// `per_core` runtime (`[runtime]`).
enum Main {
    Shared(TcpListener),
    PerCore(Vec<std::net::TcpListener>),
}

impl Main {
    fn local(&self) -> std::net::SocketAddr {
        match self {
            Main::Shared(l) => local(l),
            // `bind_reuseport` binds at least one.
            Main::PerCore(ls) => ls[0].local_addr().expect("a bound listener has an address"),
        }
    }
}

async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })
}

fn local(l: &TcpListener) -> std::net::SocketAddr {
    l.local_addr().expect("a bound listener has an address")
}
