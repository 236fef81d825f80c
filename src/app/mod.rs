//! The node: its shared state ([`App`], handed to every request and background task)
//! and the use cases that combine the domain with the store: issuing tokens
//! ([`token`]), introspection ([`introspect`]), revocation ([`revoke`]), the key service
//! ([`keys`]) and the follower that feeds the revocation table ([`follower`]). Every
//! decision on a token goes through a [`View`] from [`App::fresh`]. The HTTP layer calls
//! these and maps [`Error`] to answers.

pub mod client_auth;
pub mod contracts;
pub mod dpop;
mod error;
pub mod follower;
pub mod grants;
pub mod introspect;
pub mod keys;
pub mod nodes;
pub mod revoke;
pub mod ssf;
pub mod status;
pub mod token;
mod view;

#[cfg(test)]
mod tests;

pub use error::Error;
pub use view::{Stale, View};

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::clients::Clients;
use crate::config::Config;
use crate::keys::{KeyRing, KeyState};
use crate::revocation::{Point, Table, Verdict};
use crate::sessions::trusted::TrustedIssuers;
use crate::store::SharedStore;
use crate::tokens::cache::VerifiedCache;
use keys::Keys;

/// A cheap, cloneable handle to the node's state.
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

pub struct Inner {
    /// The validated configuration this node started with.
    pub config: Config,
    /// Configured clients: secrets and rates, for authentication.
    pub clients: Clients,
    /// The authorization contracts in force: every client's rights at an instant.
    pub contracts: Arc<contracts::Contracts>,
    /// Just-in-time elevation grants, fed by the follower from the log.
    pub grants: Arc<grants::Grants>,
    /// Identity providers whose assertions open user sessions.
    pub trusted: TrustedIssuers,
    /// The key ring and the operations that change keys.
    pub keys: Arc<Keys>,
    /// The session-version table, fed by the follower.
    pub table: Arc<Table>,
    /// Durable state.
    pub store: SharedStore,
    /// Tokens whose signature was verified, so repeat introspections skip it.
    pub verified: VerifiedCache,
    /// Pre-rendered RFC 8414 metadata.
    pub metadata: Bytes,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Per-node rate limits (token issuance, revocation, failed authentication).
    pub limits: crate::limits::RateLimits,
    /// Past this age of the revocation state, requests fail closed, in ms.
    pub max_staleness_ms: i64,
    /// What a `private_key_jwt` client assertion must satisfy (`client_auth::rules`).
    pub assertion_rules: crate::clients::assertion::Rules,
    /// What a DPoP proof at `/token` must satisfy (`dpop::rules`).
    pub dpop_rules: crate::dpop::Rules,
    /// This node's id in the registry (random per process start).
    node_id: String,
    /// The Shared Signals transmitter: its metadata, push client and wake-ups.
    pub ssf: ssf::Ssf,
    /// Token Status Lists (`None` when `[status_list] enabled = false`).
    pub status: Option<Arc<status::StatusLists>>,
    /// Distinguishes this process's request ids from other nodes'.
    node_tag: String,
    request_seq: AtomicU64,
}

impl Deref for App {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

/// What a node is made of, loaded before it serves: see `crate::run`.
pub struct Parts {
    pub trusted: TrustedIssuers,
    pub keys: Arc<Keys>,
    pub table: Arc<Table>,
    pub store: SharedStore,
    pub metrics: PrometheusHandle,
    pub contracts: Arc<contracts::Contracts>,
    pub grants: Arc<grants::Grants>,
    /// This node's id in the registry.
    pub node_id: String,
    /// The Shared Signals transmitter.
    pub ssf: ssf::Ssf,
    /// Token Status Lists, if enabled.
    pub status: Option<Arc<status::StatusLists>>,
}

impl App {
    pub fn new(config: Config, parts: Parts) -> App {
        let Parts {
            trusted,
            keys,
            table,
            store,
            metrics,
            contracts,
            grants,
            node_id,
            ssf,
            status,
        } = parts;
        let clients = contracts.configured().clone();
        let signing_algs = signing_algorithms(&config, &keys.ring());
        let metadata =
            Bytes::from(serde_json::to_vec(&metadata(&config, &signing_algs)).unwrap_or_default());
        let node_tag = crate::tokens::random_id()[..6].to_string();
        let verified = VerifiedCache::new(config.limits.token_cache_entries);
        App {
            inner: Arc::new(Inner {
                max_staleness_ms: config.store.max_staleness.as_millis() as i64,
                limits: config.rate_limits(),
                assertion_rules: client_auth::rules(&config),
                dpop_rules: dpop::rules(&config),
                config,
                verified,
                clients,
                contracts,
                grants,
                trusted,
                keys,
                table,
                store,
                metadata,
                metrics,
                node_id,
                ssf,
                status,
                node_tag,
                request_seq: AtomicU64::new(0),
            }),
        }
    }

    /// This node's id in the registry.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// A new request id, unique across nodes.
    pub fn next_request_id(&self) -> String {
        let n = self.request_seq.fetch_add(1, Ordering::Relaxed);
        // Without the formatting machinery: this runs on every request.
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(n);
        let mut id = String::with_capacity(self.node_tag.len() + 1 + digits.len());
        id.push_str(&self.node_tag);
        id.push('-');
        id.push_str(digits);
        id
    }

    /// If `(rse, rsq)` is ahead of this node (another node stamped it from a newer view,
    /// or a newer epoch), waits briefly for the follower to catch up; the caller then
    /// decides again, and a stamp still ahead is inactive. Bounded by `max_staleness`
    /// and 250 ms.
    pub async fn await_stamp(&self, stamp: Point) {
        if self.table.validity(stamp) == Verdict::StampAhead {
            self.table.wait_for(stamp, self.stamp_wait_bound()).await;
        }
    }

    /// How long [`App::await_stamp`] waits at most: `max_staleness`, capped at 250 ms.
    pub fn stamp_wait_bound(&self) -> Duration {
        Duration::from_millis(self.max_staleness_ms.clamp(1, 250) as u64)
    }
}

/// The algorithms that may sign while this process runs: `keys.algorithm` (every key it
/// creates) first, then those of the active and next keys it started with (they sign
/// until rotated out, e.g. after `keys.algorithm` changed). For RFC 9701 metadata.
fn signing_algorithms(config: &Config, ring: &KeyRing) -> Vec<&'static str> {
    let mut algs = vec![config.keys.algorithm.as_str()];
    for r in &ring.records {
        if matches!(r.state, KeyState::Active | KeyState::Next) && !algs.contains(&r.alg.as_str()) {
            algs.push(r.alg.as_str());
        }
    }
    algs
}

/// The RFC 8414 authorization server metadata document.
fn metadata(config: &Config, signing_algs: &[&str]) -> serde_json::Value {
    let base = config.issuer_base();
    let mut scopes: Vec<&str> = config
        .clients
        .iter()
        .flat_map(|c| c.scopes.iter().map(String::as_str))
        .collect();
    scopes.sort_unstable();
    scopes.dedup();
    // The mutual-TLS methods only where the listener can use them: self-signed when it
    // asks for client certificates, tls_client_auth when it also has a client CA.
    let mtls = config.requests_client_certs();
    let auth_methods: Vec<&str> = crate::contracts::AUTH_METHODS
        .into_iter()
        .filter(|m| match *m {
            crate::clients::certificate::TLS_CLIENT_AUTH => {
                mtls && config.tls.client_ca_file.is_some()
            }
            crate::clients::certificate::SELF_SIGNED_TLS_CLIENT_AUTH => mtls,
            _ => true,
        })
        .collect();
    let assertion_algs = crate::clients::assertion::ALGORITHMS;
    let mut doc = json!({
        "issuer": config.issuer,
        "token_endpoint": format!("{base}/token"),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "introspection_endpoint": format!("{base}/introspect"),
        "revocation_endpoint": format!("{base}/revoke"),
        "grant_types_supported": [
            "client_credentials",
            "refresh_token",
            crate::clients::TOKEN_EXCHANGE,
        ],
        "token_endpoint_auth_methods_supported": auth_methods,
        "introspection_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "token_endpoint_auth_signing_alg_values_supported": assertion_algs,
        "introspection_endpoint_auth_signing_alg_values_supported": assertion_algs,
        "revocation_endpoint_auth_signing_alg_values_supported": assertion_algs,
        "response_types_supported": [],
        "scopes_supported": scopes,
        // RFC 9701 §7: `Accept: application/token-introspection+jwt` is signed with one of these.
        "introspection_signing_alg_values_supported": signing_algs,
        "dpop_signing_alg_values_supported": crate::dpop::ALGORITHMS,
    });
    if mtls {
        // RFC 8705 §3.3: tokens of mutual-TLS clients are bound to their certificate.
        doc["tls_client_certificate_bound_access_tokens"] = json!(true);
    }
    if config.status_list.enabled {
        // draft-ietf-oauth-status-list §9 (Status List Aggregation).
        doc["status_list_aggregation_endpoint"] = json!(format!("{base}/statuslists"));
    }
    doc
}
