//! Configuration: TOML file, `LATCH_<SECTION>__<KEY>` environment overlay, validation.
//!
//! Loading goes file → `toml::Value` → environment overlay → typed [`Config`] → semantic
//! checks. Every failure is a [`ConfigError`] naming the exact key (`clients[0].roles`) and
//! the reason, so `latch check` can tell an operator what to fix.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::clients::{Grant, Role};
use crate::keys::Alg;

/// Hard cap on access-token lifetime (SPEC §3). Revocation entries live this long plus
/// leeway, whatever the configured `access_ttl`, so lowering the TTL never shortens them.
pub const ACCESS_TTL_CAP: Duration = Duration::from_secs(3600);

/// SHA-256 of the demo secrets shipped in `config/latch.toml` and printed in the README.
/// A server holding any of them refuses to listen on a non-loopback address.
pub const DEMO_SECRET_SHA256: &[&str] = &[
    // demo-orders-secret-0123456789abcdef0123456789
    "20291ddf6a9a96cc775752e946ed86001a099403e4a970809404560707ec9dff",
    // demo-resource-secret-0123456789abcdef01234567
    "f8200fe3e58aed70ced2092963fe980ecc710c9d6220a556d726f902538657ec",
    // demo-admin-secret-0123456789abcdef0123456789a
    "b8bbcc769867abdd276bf2ce447ac865a9ab441d8b536beb46f946ef12e86278",
    // demo-idp-secret-0123456789abcdef0123456789abcd
    "a4d7a8c5ddb853df14bb45ebe2c6dbe49b4cf4abcbb32ba03917cdeb4f7db52f",
    // demo-alice-secret-0123456789abcdef0123456789a
    "34aed1cbc836a98af730685abf6673f4c4549300f57efee8fcd4c160c9de3415",
    // demo-bob-secret-0123456789abcdef0123456789abc
    "4cefa588fa4317ea615f78b3d79fd85ebcae718f2620ad4cb4c926fc6f07065e",
];

/// A configuration problem: which key, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config key `{key}`: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// The validated configuration of one node.
#[derive(Debug, Clone)]
pub struct Config {
    /// `iss` of every token; also the base of the metadata URLs.
    pub issuer: String,
    pub listen: SocketAddr,
    pub metrics: MetricsConfig,
    pub tokens: TokensConfig,
    pub keys: KeysConfig,
    pub store: StoreConfig,
    pub limits: LimitsConfig,
    pub introspection: IntrospectionConfig,
    pub clients: Vec<ClientConfig>,
    pub trusted_issuers: Vec<TrustedIssuerConfig>,
    /// This node in the node registry.
    pub node: NodeConfig,
    /// The Shared Signals transmitter (`[ssf]`).
    pub ssf: SsfConfig,
    /// TLS on the main listener (`[tls]`); off unless both files are given.
    pub tls: TlsConfig,
    /// Token Status List (`[status_list]`).
    pub status_list: StatusListConfig,
    /// DPoP proofs at the token endpoint (`[dpop]`).
    pub dpop: DpopConfig,
    /// How the main listener's requests are run (`[runtime]`).
    pub runtime: RuntimeConfig,
    /// SHA-256 (hex, first 16 chars) of the effective config, environment included:
    /// recorded in the audit log at every start, so config changes are visible there.
    pub digest: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    #[serde(default = "default_metrics_listen")]
    pub listen: SocketAddr,
    /// Serve the metrics listener over TLS with the main listener's `[tls]` certificate
    /// (reloaded with it); no client certificates are asked for there.
    #[serde(default)]
    pub tls: bool,
}

/// `[tls]`: the main listener's certificate chain and private key (PEM files). Both or
/// neither; read at start, by `latch check`, on SIGHUP and when the files change.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// How often the files are compared with the ones in use.
    #[serde(default = "d_2s", with = "duration")]
    pub watch_interval: Duration,
    /// PEM CA certificates that issue client certificates for `tls_client_auth`
    /// (RFC 8705 §2.1). Read at start and reloaded with the certificate pair. The
    /// listener asks every TLS client for a
    /// certificate (never requires one) when this is set or any client is configured
    /// for mutual TLS.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

impl TlsConfig {
    /// The two files, when TLS is on.
    pub fn files(&self) -> Option<(&Path, &Path)> {
        match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => Some((c, k)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensConfig {
    #[serde(default = "d_5m", with = "duration")]
    pub access_ttl: Duration,
    #[serde(default = "d_30d", with = "duration")]
    pub refresh_ttl: Duration,
    #[serde(default = "d_30s", with = "duration")]
    pub leeway: Duration,
    /// How many `act` levels a delegated token may carry (RFC 8693 §4.1); an exchange
    /// that would nest deeper is refused with `invalid_grant`.
    #[serde(default = "default_delegation_depth")]
    pub max_delegation_depth: usize,
    /// Longest lifetime of a `private_key_jwt` client assertion (`exp − iat`).
    #[serde(default = "d_5m", with = "duration")]
    pub client_assertion_max_lifetime: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    #[serde(default)]
    pub algorithm: Alg,
    #[serde(default = "d_24h", with = "duration")]
    pub rotate_every: Duration,
    #[serde(default = "d_1h", with = "duration")]
    pub publish_ahead: Duration,
}

/// `[node]`: how this node appears in the node registry (docs/ARCHITECTURE.md, "Proof
/// of effect").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// A label for operators; default `hostname:port`.
    #[serde(default)]
    pub name: Option<String>,
    /// A report to the registry at least this often.
    #[serde(default = "d_1s", with = "duration")]
    pub heartbeat: Duration,
    /// Past this age of its last heartbeat a node is reported gone (and not waited for).
    /// Default: 10s, or longer when `store.max_staleness` needs it ([`Config::node_ttl`]).
    #[serde(default, deserialize_with = "optional_duration")]
    pub ttl: Option<Duration>,
    /// Report every change of the applied watermark at once (coalesced); `false` leaves
    /// it to heartbeats and freshness proofs.
    #[serde(default = "yes")]
    pub acks: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    #[default]
    Embedded,
    Redis,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(default)]
    pub kind: StoreKind,
    /// Data directory of the embedded store.
    #[serde(default = "default_path")]
    pub path: PathBuf,
    #[serde(default)]
    pub redis_url: Option<String>,
    #[serde(default = "d_2s", with = "duration")]
    pub max_staleness: Duration,
    /// ACL user and password for the Redis data nodes (standalone, Cluster, the Sentinel
    /// master). The password belongs in `LATCH_STORE__REDIS_PASSWORD`, not in the file.
    #[serde(default)]
    pub redis_username: Option<String>,
    #[serde(default)]
    pub redis_password: Option<Secret>,
    /// The sentinels' own ACL user and password (Sentinel mode only).
    #[serde(default)]
    pub sentinel_username: Option<String>,
    #[serde(default)]
    pub sentinel_password: Option<Secret>,
    /// PEM CA bundle that verifies Redis servers on `rediss` URLs (else the system roots).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate chain and its private key, for Redis with `tls-auth-clients`.
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// Replicas that must confirm (Redis `WAIT`) a revocation before it is answered 200.
    /// Unset: 1 for `redis+sentinel://`, 0 otherwise; the embedded store has no replicas.
    #[serde(default)]
    pub min_replicas_ack: Option<u32>,
    /// How long a write waits for `min_replicas_ack` replicas before answering 503.
    #[serde(default = "d_500ms", with = "duration")]
    pub replica_ack_timeout: Duration,
    /// How long audit records are kept; older ones are pruned (by every node, once a
    /// minute), so the audit log cannot grow without limit.
    #[serde(default = "d_365d", with = "duration")]
    pub audit_retention: Duration,
}

/// A configured secret: never printed, not even by `{:?}`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl StoreConfig {
    /// How to reach Redis besides the URL: credentials, and the TLS files read and
    /// checked. The error names the key at fault.
    pub fn redis_options(&self) -> Result<crate::store::redis::topology::Options, ConfigError> {
        use crate::store::redis::topology::{Credentials, Options, Target};
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let url = self.redis_url.as_deref().unwrap_or("");
        let target =
            Target::parse(url).map_err(|reason| ConfigError::new("store.redis_url", reason))?;
        let sentinel = matches!(target, Target::Sentinel { .. });
        if !sentinel && (self.sentinel_username.is_some() || self.sentinel_password.is_some()) {
            let key = if self.sentinel_username.is_some() {
                "store.sentinel_username"
            } else {
                "store.sentinel_password"
            };
            return Err(ConfigError::new(
                key,
                "only for a redis+sentinel:// (or rediss+sentinel://) store.redis_url",
            ));
        }
        if target.has_url_password() && self.redis_password.is_some() {
            return Err(ConfigError::new(
                "store.redis_password",
                "store.redis_url carries a password already; give it once",
            ));
        }
        if self.redis_username.is_some()
            && self.redis_password.is_none()
            && !target.has_url_password()
        {
            return Err(ConfigError::new(
                "store.redis_password",
                "required with store.redis_username (LATCH_STORE__REDIS_PASSWORD)",
            ));
        }
        if self.sentinel_username.is_some() && self.sentinel_password.is_none() {
            return Err(ConfigError::new(
                "store.sentinel_password",
                "required with store.sentinel_username (LATCH_STORE__SENTINEL_PASSWORD)",
            ));
        }
        let any_tls = self.tls_ca_file.is_some()
            || self.tls_cert_file.is_some()
            || self.tls_key_file.is_some();
        if any_tls && !target.tls() {
            let key = if self.tls_ca_file.is_some() {
                "store.tls_ca_file"
            } else if self.tls_cert_file.is_some() {
                "store.tls_cert_file"
            } else {
                "store.tls_key_file"
            };
            return Err(ConfigError::new(
                key,
                "TLS files need a rediss:// (or rediss+sentinel://, rediss+cluster://) store.redis_url",
            ));
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            let key = if self.tls_cert_file.is_some() {
                "store.tls_key_file"
            } else {
                "store.tls_cert_file"
            };
            return Err(ConfigError::new(
                key,
                "store.tls_cert_file and store.tls_key_file go together",
            ));
        }
        let read = |key: &str, path: &Path| {
            std::fs::read(path)
                .map_err(|e| ConfigError::new(key, format!("cannot read {}: {e}", path.display())))
        };
        let certs = |key: &str, path: &Path| -> Result<Vec<u8>, ConfigError> {
            let pem = read(key, path)?;
            let n = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    ConfigError::new(
                        key,
                        format!("{}: not a PEM certificate file: {e}", path.display()),
                    )
                })?
                .len();
            if n == 0 {
                return Err(ConfigError::new(
                    key,
                    format!("{}: holds no PEM certificate", path.display()),
                ));
            }
            Ok(pem)
        };
        let root_cert = match &self.tls_ca_file {
            Some(p) => Some(certs("store.tls_ca_file", p)?),
            None => None,
        };
        let client_tls = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => {
                let client_cert = certs("store.tls_cert_file", cert)?;
                let client_key = read("store.tls_key_file", key)?;
                // The error never quotes the key file.
                PrivateKeyDer::from_pem_slice(&client_key).map_err(|_| {
                    ConfigError::new(
                        "store.tls_key_file",
                        format!("{}: holds no PEM private key", key.display()),
                    )
                })?;
                Some(redis::ClientTlsConfig {
                    client_cert,
                    client_key,
                })
            }
            _ => None,
        };
        let tls = (target.tls() && (root_cert.is_some() || client_tls.is_some())).then_some(
            redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        );
        Ok(Options {
            redis: Credentials {
                username: self.redis_username.clone(),
                password: self.redis_password.as_ref().map(|s| s.0.clone()),
            },
            sentinel: Credentials {
                username: self.sentinel_username.clone(),
                password: self.sentinel_password.as_ref().map(|s| s.0.clone()),
            },
            tls,
        })
    }

    /// `min_replicas_ack` with its default applied.
    pub fn replicas_ack(&self) -> u32 {
        self.min_replicas_ack.unwrap_or_else(|| {
            // rediss+sentinel:// too: ask the parser, not the prefix.
            let sentinel = self.kind == StoreKind::Redis
                && self.redis_url.as_deref().is_some_and(|u| {
                    matches!(
                        crate::store::redis::topology::Target::parse(u),
                        Ok(crate::store::redis::topology::Target::Sentinel { .. })
                    )
                });
            u32::from(sentinel)
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    #[serde(default = "default_body")]
    pub max_body_bytes: usize,
    #[serde(default = "default_conns")]
    pub max_connections: usize,
    #[serde(default = "d_10s", with = "duration")]
    pub header_read_timeout: Duration,
    /// Verified tokens remembered for fast repeat introspection (0 disables the cache).
    #[serde(default = "default_token_cache")]
    pub token_cache_entries: usize,
    /// Whole-body deadline: a body not fully received by then is answered 408.
    #[serde(default = "d_10s", with = "duration")]
    pub body_read_timeout: Duration,
    /// Deadline for one request from its headers to its answer (body read included).
    #[serde(default = "d_15s", with = "duration")]
    pub handler_timeout: Duration,
    /// A response write that makes no progress for this long closes the connection.
    #[serde(default = "d_10s", with = "duration")]
    pub write_timeout: Duration,
    /// Connections one peer address may hold at once; default half of `max_connections`.
    #[serde(default)]
    pub max_connections_per_ip: Option<usize>,
    /// Proxies (CIDRs) whose `X-Forwarded-For` names the client; exempt from the
    /// per-address connection share.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Token issuance per client: `"N/s"`, `"N/m"`, `"N/h"` or `"off"`.
    #[serde(default = "default_token_rate")]
    pub token_rate: String,
    #[serde(default = "default_token_burst")]
    pub token_burst: u32,
    /// RFC 7009 revocations per client (clients with role `admin` are exempt).
    #[serde(default = "default_revoke_rate")]
    pub revoke_rate: String,
    #[serde(default = "default_revoke_burst")]
    pub revoke_burst: u32,
    /// Failed client authentications per client id.
    #[serde(default = "default_auth_failure_rate")]
    pub auth_failure_rate: String,
    #[serde(default = "default_auth_failure_burst")]
    pub auth_failure_burst: u32,
    /// Failed client authentications per source address.
    #[serde(default = "default_auth_failure_ip_rate")]
    pub auth_failure_ip_rate: String,
    #[serde(default = "default_auth_failure_ip_burst")]
    pub auth_failure_ip_burst: u32,
}

impl LimitsConfig {
    /// `max_connections_per_ip`, or its default: half the cap (at least 1).
    pub fn per_ip_connections(&self) -> usize {
        self.max_connections_per_ip
            .unwrap_or((self.max_connections / 2).max(1))
    }

    /// The parsed `trusted_proxies` (validated at load).
    pub fn proxies(&self) -> Vec<crate::limits::Cidr> {
        self.trusted_proxies
            .iter()
            .filter_map(|c| crate::limits::Cidr::parse(c).ok())
            .collect()
    }
}

/// `[introspection]`: batch introspection (`POST /introspect/batch`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// Most tokens one batch may carry; more is 400.
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    /// Body limit of a batch (every other endpoint has `limits.max_body_bytes`); more is 413.
    #[serde(default = "default_batch_body")]
    pub batch_max_body_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub id: String,
    /// SHA-256 (hex) of its secret; may be left out when it has keys (`jwks` or
    /// `jwks_file`), then it authenticates only with `private_key_jwt`.
    #[serde(default)]
    pub secret_sha256: String,
    /// Its public keys for `private_key_jwt` (RFC 7523): a JWKS file ...
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// ... or the JWKS inline (a TOML table or a JSON string).
    #[serde(default)]
    pub jwks: Option<toml::Value>,
    /// `tls_client_auth` (RFC 8705 §2.1): a certificate issued under `tls.client_ca_file`
    /// whose subject DN (RFC 4514) or one subject alternative name equals the one value
    /// given here (at most one of the five, RFC 8705 §2.1.2).
    #[serde(default)]
    pub tls_client_auth_subject_dn: Option<String>,
    #[serde(default)]
    pub tls_client_auth_san_dns: Option<String>,
    #[serde(default)]
    pub tls_client_auth_san_uri: Option<String>,
    #[serde(default)]
    pub tls_client_auth_san_ip: Option<String>,
    #[serde(default)]
    pub tls_client_auth_san_email: Option<String>,
    /// `self_signed_tls_client_auth` (RFC 8705 §2.2): the client's registered
    /// certificates are those of `tls_client_certificate_file`,
    /// `tls_client_certificate_sha256` and the `x5c` of its JWKS.
    #[serde(default)]
    pub self_signed_tls_client_auth: bool,
    /// PEM file of the client's self-signed certificate(s).
    #[serde(default)]
    pub tls_client_certificate_file: Option<PathBuf>,
    /// SHA-256 of the client's self-signed certificate(s): hex, or base64url (`x5t#S256`).
    #[serde(default)]
    pub tls_client_certificate_sha256: Vec<String>,
    #[serde(default)]
    pub grants: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// May this client delegate (token-exchange) a token without `sid`, i.e. act as
    /// another service? Off by default (RFC 8693 §5: impersonation needs explicit trust).
    #[serde(default)]
    pub delegate_service_tokens: bool,
    /// Per-client overrides of `limits.token_rate` / `token_burst`.
    #[serde(default)]
    pub token_rate: Option<String>,
    #[serde(default)]
    pub token_burst: Option<u32>,
    /// Per-client overrides of `limits.revoke_rate` / `revoke_burst`.
    #[serde(default)]
    pub revoke_rate: Option<String>,
    #[serde(default)]
    pub revoke_burst: Option<u32>,
}

impl ClientConfig {
    /// The `tls_client_auth_*` values given, by RFC 8705 §2.1.2 name.
    pub fn tls_client_auth_subject(&self) -> Vec<(&'static str, &str)> {
        [
            (
                "tls_client_auth_subject_dn",
                &self.tls_client_auth_subject_dn,
            ),
            ("tls_client_auth_san_dns", &self.tls_client_auth_san_dns),
            ("tls_client_auth_san_uri", &self.tls_client_auth_san_uri),
            ("tls_client_auth_san_ip", &self.tls_client_auth_san_ip),
            ("tls_client_auth_san_email", &self.tls_client_auth_san_email),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
        .collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedIssuerConfig {
    pub issuer: String,
    #[serde(default)]
    pub audience: Option<String>,
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    #[serde(default)]
    pub jwks: Option<toml::Value>,
    /// Prepended to the IdP's `sub` in user tokens (`"idp1|"`), so two IdPs, or an IdP
    /// and a client id, never name the same subject (RFC 9068 §5). Required, and
    /// distinct, when more than one issuer is trusted.
    #[serde(default)]
    pub subject_prefix: Option<String>,
}

/// `[ssf]`: the Shared Signals transmitter (SSF 1.0). Receivers are clients with role
/// `ssf_receiver`; push goes only to endpoints listed here for the receiver.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SsfConfig {
    /// Longest wait of an RFC 8936 poll without `returnImmediately` (below
    /// `limits.handler_timeout`); unset: half the handler timeout, at most 10s (see
    /// [`SsfConfig::poll_wait`]).
    #[serde(default, rename = "poll_wait", with = "opt_duration")]
    pub poll_wait_setting: Option<Duration>,
    /// SETs a poll returns when it names no `maxEvents`.
    #[serde(default = "default_poll_max_events")]
    pub poll_max_events: usize,
    /// One push (connect, send, answer) gives up after this long, then is retried.
    #[serde(default = "d_5s", with = "duration")]
    pub push_timeout: Duration,
    /// Retries of a failed push back off from 100 ms, doubling up to this.
    #[serde(default = "d_30s", with = "duration")]
    pub push_max_backoff: Duration,
    /// The push-delivery lease: one node pushes every push stream while it holds it,
    /// renewing it every third of this; another node takes over at most this long after
    /// the holder stops.
    #[serde(default = "d_5s", with = "duration")]
    pub lease: Duration,
    /// Streams one receiver may hold (more: 409).
    #[serde(default = "default_max_streams")]
    pub max_streams_per_receiver: usize,
    /// `min_verification_interval` of every stream; faster verification requests: 429.
    #[serde(default = "d_5s", with = "duration")]
    pub min_verification_interval: Duration,
    /// PEM CA bundle that verifies `https` push endpoints (else the system roots).
    #[serde(default)]
    pub push_ca_file: Option<PathBuf>,
    #[serde(default)]
    pub receivers: Vec<SsfReceiverConfig>,
}

/// `[status_list]`: the Token Status List (draft-ietf-oauth-status-list). On, every access
/// token carries `status.status_list {idx, uri}` and is answered only once its record is
/// durable (docs/ARCHITECTURE.md, "Token Status List").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusListConfig {
    /// Off: tokens carry no `status` claim, issuance writes nothing, the endpoints 404.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `ttl` of every Status List Token and its `Cache-Control: max-age`: how long a
    /// validator may use a list before fetching it again (1s to 1h).
    #[serde(default = "d_30s", with = "duration")]
    pub ttl: Duration,
    /// Indices per list (8 to 16 Mi); a node opens a new list when its list is full.
    #[serde(default = "default_list_size")]
    pub list_size: u64,
    /// A node issues into one list for at most this long (1s to 1h), so a list's last
    /// token expires at most `window` + the access-token cap + leeway after it opened,
    /// and the list is dropped then.
    #[serde(default = "d_5m", with = "duration")]
    pub window: Duration,
    /// Most records of one group commit (one store write).
    #[serde(default = "default_commit_batch")]
    pub commit_batch: usize,
    /// Group commits a node keeps in flight at once (pipelined on the store connection).
    /// One gathered the largest batches and issued the most tokens on both stores
    /// (docs/PERFORMANCE.md, "Token Status List").
    #[serde(default = "default_commits_in_flight")]
    pub commits_in_flight: usize,
}

/// `[runtime]`: the threads that serve the main listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// `multi_thread` (one tokio runtime whose workers share every connection) or
    /// `per_core` (one single-threaded runtime per worker, each with its own socket on
    /// the listening port, `SO_REUSEPORT`).
    #[serde(default)]
    pub flavor: RuntimeFlavor,
    /// Worker threads (`multi_thread`) or runtimes (`per_core`); 0 (the default): one per
    /// CPU this process may run on.
    #[serde(default)]
    pub workers: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeFlavor {
    #[default]
    MultiThread,
    PerCore,
}

impl RuntimeConfig {
    /// The most workers accepted: far more than any machine latch runs on has cores.
    const MAX_WORKERS: usize = 256;

    fn validate(&self) -> Result<(), ConfigError> {
        if self.workers > Self::MAX_WORKERS {
            return Err(ConfigError::new(
                "runtime.workers",
                format!("must be 0 (one per CPU) to {}", Self::MAX_WORKERS),
            ));
        }
        Ok(())
    }

    /// The number of workers: `workers`, or the CPUs this process may run on (its
    /// affinity mask and cgroup quota count; 1 if unknown).
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// `[dpop]`: DPoP (RFC 9449) proofs at `/token`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpopConfig {
    /// How old (by `iat`) a proof may be (1s to 5m); leeway `tokens.leeway` on top.
    #[serde(default = "d_1m", with = "duration")]
    pub max_age: Duration,
    /// Every proof must carry a nonce latch provided (`use_dpop_nonce` and `DPoP-Nonce`).
    #[serde(default)]
    pub require_nonce: bool,
    /// How long one server nonce is valid for (the current window and the previous one
    /// are accepted), 1s to 1h.
    #[serde(default = "d_5m", with = "duration")]
    pub nonce_lifetime: Duration,
}

impl DpopConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=300).contains(&self.max_age.as_secs()) {
            return Err(ConfigError::new("dpop.max_age", "must be 1s to 5m"));
        }
        if !(1..=3600).contains(&self.nonce_lifetime.as_secs()) {
            return Err(ConfigError::new("dpop.nonce_lifetime", "must be 1s to 1h"));
        }
        Ok(())
    }
}

impl StatusListConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let secs = |d: Duration| (1..=3600).contains(&d.as_secs()) && d.subsec_nanos() == 0;
        if !secs(self.ttl) {
            return Err(ConfigError::new(
                "status_list.ttl",
                "must be whole seconds, 1s to 1h",
            ));
        }
        if !(8..=crate::status::MAX_LIST_SIZE).contains(&self.list_size) {
            return Err(ConfigError::new(
                "status_list.list_size",
                "must be 8 to 16777216",
            ));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.window) {
            return Err(ConfigError::new("status_list.window", "must be 1s to 1h"));
        }
        if !(1..=65536).contains(&self.commit_batch) {
            return Err(ConfigError::new(
                "status_list.commit_batch",
                "must be 1 to 65536",
            ));
        }
        if !(1..=64).contains(&self.commits_in_flight) {
            return Err(ConfigError::new(
                "status_list.commits_in_flight",
                "must be 1 to 64",
            ));
        }
        Ok(())
    }
}

fn default_list_size() -> u64 {
    65536
}
fn default_commit_batch() -> usize {
    4096
}
fn default_commits_in_flight() -> usize {
    1
}

/// `[[ssf.receivers]]`: what one receiver's streams get.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SsfReceiverConfig {
    /// A client with role `ssf_receiver`.
    pub client_id: String,
    /// `aud` of its SETs; default: its client id.
    #[serde(default)]
    pub audience: Option<String>,
    /// The only URLs its push streams may name (exact match), `http` or `https`.
    #[serde(default)]
    pub push_endpoints: Vec<String>,
}

impl SsfConfig {
    /// How long a poll may wait: as configured, else half of `handler_timeout`, at most
    /// 10s (so a config without `[ssf]` stays valid whatever its deadline).
    pub fn poll_wait(&self, handler_timeout: Duration) -> Duration {
        self.poll_wait_setting
            .unwrap_or_else(|| Duration::from_secs(10).min(handler_timeout / 2))
    }

    /// The configuration of receiver `client_id`, if listed.
    pub fn receiver(&self, client_id: &str) -> Option<&SsfReceiverConfig> {
        self.receivers.iter().find(|r| r.client_id == client_id)
    }

    fn validate(&self, clients: &[ClientConfig], limits: &LimitsConfig) -> Result<(), ConfigError> {
        if self.poll_wait(limits.handler_timeout) >= limits.handler_timeout {
            return Err(ConfigError::new(
                "ssf.poll_wait",
                "must be less than limits.handler_timeout (a poll waits inside the handler)",
            ));
        }
        if !(1..=1000).contains(&self.poll_max_events) {
            return Err(ConfigError::new("ssf.poll_max_events", "must be 1 to 1000"));
        }
        for (key, d) in [
            ("ssf.push_timeout", self.push_timeout),
            ("ssf.push_max_backoff", self.push_max_backoff),
        ] {
            if d.is_zero() {
                return Err(ConfigError::new(key, "must be positive"));
            }
        }
        if self.lease < Duration::from_millis(300) {
            return Err(ConfigError::new("ssf.lease", "must be at least 300ms"));
        }
        if self.max_streams_per_receiver == 0 || self.max_streams_per_receiver > 100 {
            return Err(ConfigError::new(
                "ssf.max_streams_per_receiver",
                "must be 1 to 100",
            ));
        }
        let mut seen = HashSet::new();
        for (i, r) in self.receivers.iter().enumerate() {
            let key = |k: &str| format!("ssf.receivers[{i}].{k}");
            let client = clients.iter().find(|c| c.id == r.client_id);
            if !client.is_some_and(|c| c.roles.iter().any(|x| x == "ssf_receiver")) {
                return Err(ConfigError::new(
                    key("client_id"),
                    format!("{:?} is not a client with role ssf_receiver", r.client_id),
                ));
            }
            if !seen.insert(r.client_id.as_str()) {
                return Err(ConfigError::new(key("client_id"), "listed twice"));
            }
            if r.audience.as_deref() == Some("") {
                return Err(ConfigError::new(key("audience"), "must not be empty"));
            }
            for (j, url) in r.push_endpoints.iter().enumerate() {
                check_push_endpoint(url).map_err(|why| {
                    ConfigError::new(format!("ssf.receivers[{i}].push_endpoints[{j}]"), why)
                })?;
            }
        }
        Ok(())
    }
}

/// A push endpoint: an absolute `http` or `https` URL with a host, no user info, no
/// fragment.
pub fn check_push_endpoint(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|_| "not a URL".to_string())?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err("must be an http or https URL".into());
    }
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or("");
    if uri.host().unwrap_or("").is_empty() || authority.contains('@') {
        return Err("must name a host, without user info".into());
    }
    if url.contains('#') {
        return Err("must not have a fragment".into());
    }
    Ok(())
}

/// The file as written, before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    issuer: String,
    #[serde(default = "default_listen")]
    listen: SocketAddr,
    #[serde(default)]
    metrics: Option<MetricsConfig>,
    #[serde(default)]
    tokens: Option<TokensConfig>,
    #[serde(default)]
    keys: Option<KeysConfig>,
    #[serde(default)]
    store: Option<StoreConfig>,
    #[serde(default)]
    limits: Option<LimitsConfig>,
    #[serde(default)]
    introspection: Option<IntrospectionConfig>,
    #[serde(default)]
    clients: Vec<ClientConfig>,
    #[serde(default)]
    trusted_issuers: Vec<TrustedIssuerConfig>,
    #[serde(default)]
    node: Option<NodeConfig>,
    ssf: Option<SsfConfig>,
    #[serde(default)]
    tls: Option<TlsConfig>,
    #[serde(default)]
    status_list: Option<StatusListConfig>,
    #[serde(default)]
    dpop: Option<DpopConfig>,
    #[serde(default)]
    runtime: Option<RuntimeConfig>,
}

/// Top-level scalar keys that `LATCH_<KEY>` may override (everything else needs a section).
const TOP_LEVEL_KEYS: &[&str] = &["issuer", "listen"];

// === impl Config ===

impl Config {
    /// Reads `path`, overlays the process environment, and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new("(file)", format!("cannot read {}: {e}", path.display()))
        })?;
        Self::from_toml(&text, std::env::vars())
    }

    /// Parses TOML text with the given environment (name, value) pairs overlaid.
    pub fn from_toml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut value: toml::Value = toml::from_str(text).map_err(|e| {
            ConfigError::new(
                "(syntax)",
                e.to_string().lines().collect::<Vec<_>>().join(" "),
            )
        })?;
        for (name, raw) in env {
            overlay_env(&mut value, &name, &raw)?;
        }
        // Passwords stay out of the digest: it is audited, and a hash of a weak password
        // among otherwise known settings could be guessed offline.
        let mut digested = value.clone();
        if let Some(toml::Value::Table(store)) = digested.get_mut("store") {
            for (k, v) in store.iter_mut() {
                if k.ends_with("password") {
                    *v = toml::Value::String("<redacted>".into());
                } else if let (true, toml::Value::String(url)) = (k == "redis_url", &*v) {
                    *v = toml::Value::String(crate::store::redis::topology::redact(url));
                }
            }
        }
        let effective = toml::to_string(&digested).unwrap_or_default();
        let digest: String = ring::digest::digest(&ring::digest::SHA256, effective.as_bytes())
            .as_ref()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect();
        let raw: RawConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            // An empty name (`[""]`, found by tests/fuzz.rs) would make an error that
            // names no key at all.
            let key = if key == "." || key.is_empty() {
                "(top)".into()
            } else {
                key
            };
            ConfigError::new(key, e.into_inner().to_string())
        })?;
        let config = Config {
            issuer: raw.issuer,
            listen: raw.listen,
            metrics: raw.metrics.unwrap_or_else(from_empty),
            tokens: raw.tokens.unwrap_or_else(from_empty),
            keys: raw.keys.unwrap_or_else(from_empty),
            store: raw.store.unwrap_or_else(from_empty),
            limits: raw.limits.unwrap_or_else(from_empty),
            introspection: raw.introspection.unwrap_or_else(from_empty),
            clients: raw.clients,
            trusted_issuers: raw.trusted_issuers,
            node: raw.node.unwrap_or_else(from_empty),
            ssf: raw.ssf.unwrap_or_else(from_empty),
            tls: raw.tls.unwrap_or_else(from_empty),
            status_list: raw.status_list.unwrap_or_else(from_empty),
            dpop: raw.dpop.unwrap_or_else(from_empty),
            runtime: raw.runtime.unwrap_or_else(from_empty),
            digest,
        };
        config.validate()?;
        Ok(config)
    }

    /// Semantic checks that the types cannot express.
    fn validate(&self) -> Result<(), ConfigError> {
        let issuer = self.issuer.trim_end_matches('/');
        if !(issuer.starts_with("https://") || issuer.starts_with("http://")) || issuer.len() < 9 {
            return Err(ConfigError::new(
                "issuer",
                "must be an http(s) URL, e.g. https://auth.example",
            ));
        }
        if issuer.contains(['?', '#']) {
            return Err(ConfigError::new(
                "issuer",
                "must not have a query or fragment (RFC 8414)",
            ));
        }
        let t = &self.tokens;
        if t.access_ttl.is_zero() || t.access_ttl > ACCESS_TTL_CAP {
            return Err(ConfigError::new(
                "tokens.access_ttl",
                "must be between 1s and the hard cap of 1h",
            ));
        }
        if t.access_ttl < Duration::from_secs(1) {
            return Err(ConfigError::new("tokens.access_ttl", "must be at least 1s"));
        }
        if t.refresh_ttl < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "tokens.refresh_ttl",
                "must be at least 1s",
            ));
        }
        if t.leeway > Duration::from_secs(300) {
            return Err(ConfigError::new("tokens.leeway", "must be at most 5m"));
        }
        let k = &self.keys;
        if k.rotate_every < Duration::from_secs(1) {
            return Err(ConfigError::new("keys.rotate_every", "must be at least 1s"));
        }
        if k.publish_ahead.is_zero() || k.publish_ahead > k.rotate_every {
            return Err(ConfigError::new(
                "keys.publish_ahead",
                "must be positive and at most keys.rotate_every",
            ));
        }
        if !k.algorithm.can_generate() {
            return Err(ConfigError::new(
                "keys.algorithm",
                "RS256 needs the `rsa-keygen` feature, which this binary was built without",
            ));
        }
        let s = &self.store;
        if s.kind == StoreKind::Redis {
            let url = s.redis_url.as_deref().unwrap_or("");
            if url.is_empty() {
                return Err(ConfigError::new(
                    "store.redis_url",
                    "required when store.kind = \"redis\"",
                ));
            }
            s.redis_options()?;
        }
        if s.kind == StoreKind::Embedded && s.path.as_os_str().is_empty() {
            return Err(ConfigError::new("store.path", "must not be empty"));
        }
        if s.kind == StoreKind::Embedded && s.replicas_ack() > 0 {
            return Err(ConfigError::new(
                "store.min_replicas_ack",
                "must be 0 with the embedded store (it has no replicas)",
            ));
        }
        if s.replicas_ack() > 0
            && (s.replica_ack_timeout.is_zero() || s.replica_ack_timeout * 2 >= s.max_staleness)
        {
            // WAIT blocks the node's one command connection: it must end well within
            // the staleness bound, or a missing replica would also stall head checks.
            return Err(ConfigError::new(
                "store.replica_ack_timeout",
                "must be positive and less than half of store.max_staleness",
            ));
        }
        if s.audit_retention < Duration::from_secs(86_400) {
            return Err(ConfigError::new(
                "store.audit_retention",
                "must be at least 1d",
            ));
        }
        if s.max_staleness < Duration::from_millis(10) {
            return Err(ConfigError::new(
                "store.max_staleness",
                "must be at least 10ms",
            ));
        }
        let l = &self.limits;
        if !(256..=1 << 20).contains(&l.max_body_bytes) {
            return Err(ConfigError::new(
                "limits.max_body_bytes",
                "must be between 256 and 1048576",
            ));
        }
        if l.max_connections == 0 {
            return Err(ConfigError::new(
                "limits.max_connections",
                "must be at least 1",
            ));
        }
        if l.header_read_timeout.is_zero() {
            return Err(ConfigError::new(
                "limits.header_read_timeout",
                "must be positive",
            ));
        }
        self.validate_deadlines_and_rates()?;
        self.validate_node()?;
        self.validate_introspection()?;
        if self.metrics.tls && self.tls.files().is_none() {
            return Err(ConfigError::new(
                "metrics.tls",
                "needs tls.cert_file and tls.key_file (the metrics listener uses that certificate)",
            ));
        }
        if self.tls.client_ca_file.is_some() && self.tls.files().is_none() {
            return Err(ConfigError::new(
                "tls.client_ca_file",
                "needs TLS on the listener (tls.cert_file and tls.key_file)",
            ));
        }
        self.validate_clients()?;
        for (i, ti) in self.trusted_issuers.iter().enumerate() {
            if ti.issuer.is_empty() {
                return Err(ConfigError::new(
                    format!("trusted_issuers[{i}].issuer"),
                    "must not be empty",
                ));
            }
            if ti.jwks_file.is_some() == ti.jwks.is_some() {
                return Err(ConfigError::new(
                    format!("trusted_issuers[{i}].jwks_file"),
                    "exactly one of jwks_file and jwks must be given",
                ));
            }
        }
        self.validate_subject_prefixes()?;
        self.ssf.validate(&self.clients, &self.limits)?;
        let tls = &self.tls;
        match (&tls.cert_file, &tls.key_file) {
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "tls.key_file",
                    "tls.cert_file and tls.key_file go together",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "tls.cert_file",
                    "tls.cert_file and tls.key_file go together",
                ))
            }
            _ => {}
        }
        if tls.watch_interval < Duration::from_millis(100) {
            return Err(ConfigError::new(
                "tls.watch_interval",
                "must be at least 100ms",
            ));
        }
        self.status_list.validate()?;
        self.dpop.validate()?;
        self.runtime.validate()?;
        if let Some(i) = self.demo_secret_client() {
            if !self.listen.ip().is_loopback() {
                return Err(ConfigError::new(
                    "listen",
                    format!(
                        "client {:?} (clients[{i}].secret_sha256) uses a published demo secret; \
                         latch listens only on a loopback address until every demo secret is \
                         replaced (latch gen-secret)",
                        self.clients[i].id
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A gone node must also be failing closed: `ttl` past `max_staleness` and its margin.
    fn validate_node(&self) -> Result<(), ConfigError> {
        let n = &self.node;
        if let Some(name) = &n.name {
            if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
                return Err(ConfigError::new(
                    "node.name",
                    "must be 1 to 200 bytes without control characters",
                ));
            }
        }
        if n.heartbeat < Duration::from_millis(10) {
            return Err(ConfigError::new("node.heartbeat", "must be at least 10ms"));
        }
        let floor = self.node_ttl_floor();
        if let Some(ttl) = n.ttl {
            if ttl < n.heartbeat * 2 || ttl <= floor {
                return Err(ConfigError::new(
                    "node.ttl",
                    format!(
                        "must be at least twice node.heartbeat and more than \
                         store.max_staleness plus its margin ({}ms), so that a gone node \
                         also fails closed",
                        floor.as_millis()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `store.max_staleness` plus the registry's margin: a node silent longer than this
    /// is provably failing closed.
    fn node_ttl_floor(&self) -> Duration {
        let staleness = self.store.max_staleness.as_millis() as i64;
        Duration::from_millis((staleness + crate::nodes::margin_ms(staleness)) as u64)
    }

    /// `node.ttl`, or by default 10s, at least twice the heartbeat and a heartbeat past
    /// `max_staleness` and its margin.
    pub fn node_ttl(&self) -> Duration {
        self.node.ttl.unwrap_or_else(|| {
            Duration::from_secs(10)
                .max(self.node.heartbeat * 2)
                .max(self.node_ttl_floor() + self.node.heartbeat)
        })
    }

    fn validate_deadlines_and_rates(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        for (key, d) in [
            ("limits.body_read_timeout", l.body_read_timeout),
            ("limits.handler_timeout", l.handler_timeout),
            ("limits.write_timeout", l.write_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::new(key, "must be positive"));
            }
        }
        if l.body_read_timeout > l.handler_timeout {
            return Err(ConfigError::new(
                "limits.body_read_timeout",
                "must not exceed limits.handler_timeout (the body is read inside the handler)",
            ));
        }
        if l.max_connections_per_ip == Some(0) {
            return Err(ConfigError::new(
                "limits.max_connections_per_ip",
                "must be at least 1",
            ));
        }
        for (i, c) in l.trusted_proxies.iter().enumerate() {
            crate::limits::Cidr::parse(c)
                .map_err(|r| ConfigError::new(format!("limits.trusted_proxies[{i}]"), r))?;
        }
        for (key, rate, burst) in [
            ("limits.token_rate", &l.token_rate, l.token_burst),
            ("limits.revoke_rate", &l.revoke_rate, l.revoke_burst),
            (
                "limits.auth_failure_rate",
                &l.auth_failure_rate,
                l.auth_failure_burst,
            ),
            (
                "limits.auth_failure_ip_rate",
                &l.auth_failure_ip_rate,
                l.auth_failure_ip_burst,
            ),
        ] {
            crate::limits::Rate::parse(rate, burst).map_err(|r| ConfigError::new(key, r))?;
        }
        for (i, c) in self.clients.iter().enumerate() {
            let token = c.token_rate.as_ref().unwrap_or(&l.token_rate);
            crate::limits::Rate::parse(token, c.token_burst.unwrap_or(l.token_burst))
                .map_err(|r| ConfigError::new(format!("clients[{i}].token_rate"), r))?;
            let revoke = c.revoke_rate.as_ref().unwrap_or(&l.revoke_rate);
            crate::limits::Rate::parse(revoke, c.revoke_burst.unwrap_or(l.revoke_burst))
                .map_err(|r| ConfigError::new(format!("clients[{i}].revoke_rate"), r))?;
        }
        if self.tokens.max_delegation_depth == 0 || self.tokens.max_delegation_depth > 16 {
            return Err(ConfigError::new(
                "tokens.max_delegation_depth",
                "must be 1 to 16",
            ));
        }
        let lifetime = self.tokens.client_assertion_max_lifetime;
        if lifetime < Duration::from_secs(1) || lifetime > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                "tokens.client_assertion_max_lifetime",
                "must be 1s to 1h",
            ));
        }
        Ok(())
    }

    fn validate_introspection(&self) -> Result<(), ConfigError> {
        let i = &self.introspection;
        if !(1..=1000).contains(&i.batch_max) {
            return Err(ConfigError::new(
                "introspection.batch_max",
                "must be between 1 and 1000",
            ));
        }
        if !(256..=8 << 20).contains(&i.batch_max_body_bytes) {
            return Err(ConfigError::new(
                "introspection.batch_max_body_bytes",
                "must be between 256 and 8388608",
            ));
        }
        Ok(())
    }

    /// RFC 9068 §5: user subjects must not collide with each other or with client ids.
    fn validate_subject_prefixes(&self) -> Result<(), ConfigError> {
        let several = self.trusted_issuers.len() > 1;
        let mut seen: Vec<&str> = Vec::new();
        for (i, ti) in self.trusted_issuers.iter().enumerate() {
            let key = format!("trusted_issuers[{i}].subject_prefix");
            let prefix = ti.subject_prefix.as_deref().unwrap_or("");
            if prefix.is_empty() {
                if several {
                    return Err(ConfigError::new(
                        key,
                        "required (and distinct) when more than one issuer is trusted, \
                         so their subjects cannot collide; e.g. \"idp1|\"",
                    ));
                }
                continue;
            }
            if prefix.len() > 64 || prefix.chars().any(char::is_whitespace) {
                return Err(ConfigError::new(key, "1-64 characters without spaces"));
            }
            if let Some(other) = seen
                .iter()
                .find(|p| p.starts_with(prefix) || prefix.starts_with(**p))
            {
                return Err(ConfigError::new(
                    key,
                    format!("{prefix:?} overlaps the prefix {other:?} of another issuer"),
                ));
            }
            if let Some(c) = self.clients.iter().find(|c| c.id.starts_with(prefix)) {
                return Err(ConfigError::new(
                    key,
                    format!(
                        "client id {:?} starts with {prefix:?}: a user could be named like it",
                        c.id
                    ),
                ));
            }
            seen.push(prefix);
        }
        Ok(())
    }

    /// The RFC 8705 settings of `clients[i]`; true when it may authenticate by mutual TLS.
    fn validate_client_certs(&self, i: usize, c: &ClientConfig) -> Result<bool, ConfigError> {
        let key = |k: &str| format!("clients[{i}].{k}");
        let subject = c.tls_client_auth_subject();
        if subject.len() > 1 {
            return Err(ConfigError::new(
                key(subject[1].0),
                format!(
                    "give one of the tls_client_auth_* values, not {} and {}",
                    subject[0].0, subject[1].0
                ),
            ));
        }
        if let Some((field, value)) = subject.first() {
            crate::clients::certificate::SubjectMatch::parse(field, value)
                .map_err(|reason| ConfigError::new(key(field), reason))?;
            if self.tls.client_ca_file.is_none() {
                return Err(ConfigError::new(
                    key(field),
                    "tls_client_auth needs tls.client_ca_file (the CA that issues client \
                     certificates)",
                ));
            }
        }
        let registered =
            c.tls_client_certificate_file.is_some() || !c.tls_client_certificate_sha256.is_empty();
        if registered && !c.self_signed_tls_client_auth {
            let k = if c.tls_client_certificate_file.is_some() {
                "tls_client_certificate_file"
            } else {
                "tls_client_certificate_sha256"
            };
            return Err(ConfigError::new(
                key(k),
                "only with self_signed_tls_client_auth = true",
            ));
        }
        for (j, t) in c.tls_client_certificate_sha256.iter().enumerate() {
            if crate::clients::certificate::parse_thumbprint(t).is_none() {
                return Err(ConfigError::new(
                    format!("clients[{i}].tls_client_certificate_sha256[{j}]"),
                    "must be a SHA-256: 64 hex characters or 43 base64url ones",
                ));
            }
        }
        if c.self_signed_tls_client_auth && !registered && c.jwks.is_none() && c.jwks_file.is_none()
        {
            return Err(ConfigError::new(
                key("self_signed_tls_client_auth"),
                "register the certificate: tls_client_certificate_file, \
                 tls_client_certificate_sha256, or an x5c in jwks / jwks_file",
            ));
        }
        let mtls = !subject.is_empty() || c.self_signed_tls_client_auth;
        if mtls && self.tls.files().is_none() {
            let k = subject
                .first()
                .map_or("self_signed_tls_client_auth", |s| s.0);
            return Err(ConfigError::new(
                key(k),
                "mutual TLS needs TLS on the listener (tls.cert_file and tls.key_file)",
            ));
        }
        Ok(mtls)
    }

    /// Whether the listener asks TLS clients for a certificate.
    pub fn requests_client_certs(&self) -> bool {
        self.tls.client_ca_file.is_some()
            || self
                .clients
                .iter()
                .any(|c| c.self_signed_tls_client_auth || !c.tls_client_auth_subject().is_empty())
    }

    fn validate_clients(&self) -> Result<(), ConfigError> {
        let mut seen = HashSet::new();
        for (i, c) in self.clients.iter().enumerate() {
            let key = |k: &str| format!("clients[{i}].{k}");
            if c.id.is_empty() || c.id.contains([':', ' ']) || c.id.len() > 128 {
                return Err(ConfigError::new(
                    key("id"),
                    "must be 1-128 characters without ':' or spaces",
                ));
            }
            if !seen.insert(c.id.as_str()) {
                return Err(ConfigError::new(
                    key("id"),
                    format!("duplicate client id {:?}", c.id),
                ));
            }
            if c.jwks_file.is_some() && c.jwks.is_some() {
                return Err(ConfigError::new(
                    key("jwks_file"),
                    "give jwks_file or jwks, not both",
                ));
            }
            let has_keys = c.jwks_file.is_some() || c.jwks.is_some();
            let has_certs = self.validate_client_certs(i, c)?;
            if c.secret_sha256.is_empty() && !has_keys && !has_certs {
                return Err(ConfigError::new(
                    key("secret_sha256"),
                    "required (sha256 of the secret; see latch gen-secret) unless the client \
                     has public keys (jwks or jwks_file) for private_key_jwt or is configured \
                     for mutual TLS",
                ));
            }
            if !c.secret_sha256.is_empty()
                && (c.secret_sha256.len() != 64
                    || !c.secret_sha256.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err(ConfigError::new(
                    key("secret_sha256"),
                    "must be 64 hex characters (sha256 of the secret; see latch gen-secret)",
                ));
            }
            for (j, g) in c.grants.iter().enumerate() {
                if Grant::parse(g).is_none() {
                    return Err(ConfigError::new(
                        format!("clients[{i}].grants[{j}]"),
                        format!("unknown grant {g:?}"),
                    ));
                }
            }
            for (j, r) in c.roles.iter().enumerate() {
                if Role::parse(r).is_none() {
                    return Err(ConfigError::new(
                        format!("clients[{i}].roles[{j}]"),
                        format!(
                            "unknown role {r:?} (introspect, admin, session_issuer, ssf_receiver)"
                        ),
                    ));
                }
            }
            for (j, s) in c.scopes.iter().enumerate() {
                if s.is_empty()
                    || !s
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
                {
                    return Err(ConfigError::new(
                        format!("clients[{i}].scopes[{j}]"),
                        "a scope is non-empty printable ASCII without spaces, quotes or backslashes",
                    ));
                }
            }
            for (j, a) in c.audiences.iter().enumerate() {
                if a.is_empty() {
                    return Err(ConfigError::new(
                        format!("clients[{i}].audiences[{j}]"),
                        "must not be empty",
                    ));
                }
            }
            if c.grants.iter().any(|g| g == "client_credentials") && c.audiences.is_empty() {
                return Err(ConfigError::new(
                    key("audiences"),
                    "a client with the client_credentials grant needs at least one audience",
                ));
            }
        }
        Ok(())
    }

    /// True when any configured client uses a secret published with latch.
    pub fn has_demo_secret(&self) -> bool {
        self.demo_secret_client().is_some()
    }

    /// Index of the first client whose secret is a published demo secret.
    fn demo_secret_client(&self) -> Option<usize> {
        self.clients.iter().position(|c| {
            DEMO_SECRET_SHA256
                .iter()
                .any(|d| d.eq_ignore_ascii_case(&c.secret_sha256))
        })
    }

    /// Issuer without a trailing slash: the base of every published URL.
    pub fn issuer_base(&self) -> &str {
        self.issuer.trim_end_matches('/')
    }

    /// How long a revocation entry must be kept: until every token it could match has
    /// expired. Access tokens: the hard cap plus leeway, whatever `access_ttl` says, so
    /// lowering it never shortens an entry. Sessions, subjects, clients, all: also every
    /// refresh token.
    pub fn revocation_retention(&self) -> crate::revocation::Retention {
        let token = ACCESS_TTL_CAP + self.tokens.leeway;
        let session = token.max(self.tokens.refresh_ttl + self.tokens.leeway);
        crate::revocation::Retention {
            token_ms: token.as_millis() as i64,
            session_ms: session.as_millis() as i64,
        }
    }

    /// `Cache-Control: max-age` of the JWKS: well inside the pre-publication window, so a
    /// verifier that caches the document sees a `next` key before it signs.
    pub fn jwks_max_age(&self) -> Duration {
        (self.keys.publish_ahead / 2).min(Duration::from_secs(300))
    }
}

/// Applies one environment variable to the TOML tree, if it is a config override.
fn overlay_env(root: &mut toml::Value, name: &str, raw: &str) -> Result<(), ConfigError> {
    let Some(rest) = name.strip_prefix("LATCH_") else {
        return Ok(());
    };
    let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
    if path.len() == 1 && !TOP_LEVEL_KEYS.contains(&path[0].as_str()) {
        // LATCH_KEK, LATCH_ADMIN_CLIENT_ID, ...: not config keys.
        return Ok(());
    }
    if path.iter().any(|p| p.is_empty()) {
        return Err(ConfigError::new(name, "malformed override variable name"));
    }
    // A password is a string whatever it looks like (`0123`, `true`).
    let value = if path.last().is_some_and(|k| k.ends_with("password")) {
        toml::Value::String(raw.into())
    } else {
        parse_env_value(raw)
    };
    let display = path.join(".");
    let mut node = root;
    for (i, seg) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        node = match node {
            toml::Value::Table(t) => {
                if last {
                    t.insert(seg.clone(), value);
                    return Ok(());
                }
                t.entry(seg.clone())
                    .or_insert_with(|| toml::Value::Table(Default::default()))
            }
            toml::Value::Array(a) => {
                let idx: usize = seg.parse().map_err(|_| {
                    ConfigError::new(
                        display.clone(),
                        format!("from {name}: array index expected, got {seg:?}"),
                    )
                })?;
                let len = a.len();
                let slot = a.get_mut(idx).ok_or_else(|| {
                    ConfigError::new(
                        display.clone(),
                        format!("from {name}: index {idx} out of range ({len} entries)"),
                    )
                })?;
                if last {
                    *slot = value;
                    return Ok(());
                }
                slot
            }
            _ => {
                return Err(ConfigError::new(
                    display,
                    format!("from {name}: not a section"),
                ))
            }
        };
    }
    Ok(())
}

/// An override value is TOML when it parses as such (`8080`, `true`, `["a","b"]`), else a string.
fn parse_env_value(raw: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

/// A section given no keys at all: every field at its default.
fn from_empty<T: for<'de> Deserialize<'de>>() -> T {
    toml::Value::Table(Default::default())
        .try_into()
        .expect("every section has defaults for all fields")
}

/// Parses a duration as humantime does ("500ms", "2s", "5m", "1h30m", "30d", also "1h 30m",
/// "1.5h", "2 weeks"), in whole milliseconds: latch keeps and sends durations in ms.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| {
        format!("invalid duration {s:?}: {e} (examples: \"500ms\", \"5m\", \"1h30m\")")
    })?;
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!("invalid duration {s:?}: finer than a millisecond"));
    }
    Ok(d)
}

/// Formats a duration the way the config writes it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    for (unit, n) in [("d", 86400), ("h", 3600), ("m", 60)] {
        if s >= n && s.is_multiple_of(n) {
            return format!("{}{unit}", s / n);
        }
    }
    format!("{s}s")
}

/// An optional duration string.
fn optional_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

mod duration {
    use super::*;
    use serde::Deserializer;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// An optional duration: absent is `None`.
mod opt_duration {
    use super::*;
    use serde::Deserializer;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::duration::deserialize(d).map(Some)
    }
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreKind::Embedded => "embedded",
            StoreKind::Redis => "redis",
        })
    }
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:8080".parse().unwrap()
}
fn default_metrics_listen() -> SocketAddr {
    "127.0.0.1:9090".parse().unwrap()
}
fn default_path() -> PathBuf {
    PathBuf::from("data")
}
fn default_body() -> usize {
    16 * 1024
}
fn default_batch_max() -> usize {
    100
}
fn default_batch_body() -> usize {
    256 * 1024
}
fn default_token_cache() -> usize {
    100_000
}
fn default_conns() -> usize {
    4096
}
fn d_500ms() -> Duration {
    Duration::from_millis(500)
}
fn d_1s() -> Duration {
    Duration::from_secs(1)
}
fn yes() -> bool {
    true
}
fn d_2s() -> Duration {
    Duration::from_secs(2)
}
fn d_10s() -> Duration {
    Duration::from_secs(10)
}
fn d_15s() -> Duration {
    Duration::from_secs(15)
}
fn default_delegation_depth() -> usize {
    3
}
fn default_token_rate() -> String {
    "100/s".into()
}
fn default_token_burst() -> u32 {
    200
}
fn default_revoke_rate() -> String {
    "10/s".into()
}
fn default_revoke_burst() -> u32 {
    100
}
fn default_auth_failure_rate() -> String {
    "60/m".into()
}
fn default_auth_failure_burst() -> u32 {
    30
}
fn default_auth_failure_ip_rate() -> String {
    "120/m".into()
}
fn default_auth_failure_ip_burst() -> u32 {
    60
}
fn d_5s() -> Duration {
    Duration::from_secs(5)
}
fn default_poll_max_events() -> usize {
    100
}
fn default_max_streams() -> usize {
    8
}
fn d_30s() -> Duration {
    Duration::from_secs(30)
}
fn d_1m() -> Duration {
    Duration::from_secs(60)
}
fn d_5m() -> Duration {
    Duration::from_secs(300)
}
fn d_1h() -> Duration {
    Duration::from_secs(3600)
}
fn d_24h() -> Duration {
    Duration::from_secs(86400)
}
fn d_365d() -> Duration {
    Duration::from_secs(365 * 86_400)
}

fn d_30d() -> Duration {
    Duration::from_secs(30 * 86400)
}

mod domain;

#[cfg(test)]
mod tests;
