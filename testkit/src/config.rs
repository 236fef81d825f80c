//! `latch.toml` as typed values: a test changes fields (`c.tokens.access_ttl = secs(2)`),
//! and the harness serializes the whole with `toml`. Only what a test sets explicitly is
//! written besides the harness's defaults, so latch's own defaults stay in force.
//!
//! The escape hatch for configs that no typed value can express (an unknown key, a
//! malformed duration, an algorithm latch refuses) is [`raw_override`]: a TOML snippet
//! merged over the typed document (`ServerBuilder::raw_toml`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::clients::{self, ClientDef};

/// The whole file. [`Config::default`] is what the harness has always started latch with:
/// issuer `http://latch.test`, both listeners on `127.0.0.1:0`, EdDSA keys, the embedded
/// store, [`clients::standard`] and no trusted issuer.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    pub issuer: String,
    pub listen: SocketAddr,
    pub metrics: Metrics,
    pub tokens: Tokens,
    pub keys: Keys,
    pub store: Store,
    pub limits: Limits,
    pub clients: Vec<ClientDef>,
    /// Written by [`Config::to_table`], which knows where to put JWKS files.
    #[serde(skip)]
    pub trusted_issuers: Vec<TrustedIssuer>,
}

/// `[metrics]`.
#[derive(Clone, Debug, Serialize)]
pub struct Metrics {
    pub listen: SocketAddr,
}

/// `[tokens]`.
#[derive(Clone, Debug, Serialize)]
pub struct Tokens {
    #[serde(serialize_with = "duration")]
    pub access_ttl: Duration,
    #[serde(serialize_with = "duration")]
    pub refresh_ttl: Duration,
    #[serde(serialize_with = "duration")]
    pub leeway: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_delegation_depth: Option<usize>,
}

/// `[keys]`.
#[derive(Clone, Debug, Serialize)]
pub struct Keys {
    pub algorithm: Alg,
    #[serde(serialize_with = "duration")]
    pub rotate_every: Duration,
    #[serde(serialize_with = "duration")]
    pub publish_ahead: Duration,
}

/// The signing algorithms latch accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Alg {
    EdDSA,
    ES256,
    RS256,
}

/// `[store]`. Passwords are not here: they belong in the environment
/// (`LATCH_STORE__REDIS_PASSWORD`, `ServerBuilder::env`), as latch asks of operators.
#[derive(Clone, Debug, Serialize)]
pub struct Store {
    pub kind: StoreKind,
    /// `None`: the server's own data directory, filled in at start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    #[serde(serialize_with = "duration")]
    pub max_staleness: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentinel_username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_replicas_ack: Option<u32>,
    #[serde(
        serialize_with = "optional_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub replica_ack_timeout: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Embedded,
    Redis,
}

/// `[limits]`. Rates are latch's own syntax (`"10/s"`, `"1/h"`, `"off"`).
#[derive(Clone, Debug, Serialize)]
pub struct Limits {
    pub max_body_bytes: u64,
    pub max_connections: u64,
    #[serde(serialize_with = "duration")]
    pub header_read_timeout: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_cache_entries: Option<u64>,
    #[serde(
        serialize_with = "optional_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub body_read_timeout: Option<Duration>,
    #[serde(
        serialize_with = "optional_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub handler_timeout: Option<Duration>,
    #[serde(
        serialize_with = "optional_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub write_timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_ip: Option<u64>,
    /// CIDRs, e.g. `"127.0.0.1/32"`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_rate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_burst: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoke_rate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoke_burst: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_failure_rate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_failure_burst: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_failure_ip_rate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_failure_ip_burst: Option<u32>,
}

/// One `[[trusted_issuers]]` entry; [`crate::Idp::trusted`] makes one for a test's IdP.
#[derive(Clone, Debug)]
pub struct TrustedIssuer {
    pub issuer: String,
    /// `None`: latch's own issuer is the audience assertions must name.
    pub audience: Option<String>,
    pub subject_prefix: Option<String>,
    pub jwks: Jwks,
}

/// Where latch reads a trusted issuer's keys from.
#[derive(Clone, Debug)]
pub enum Jwks {
    /// `jwks = '<JSON>'` in the file itself.
    Inline(Value),
    /// `jwks_file = "<path>"`: the harness writes this JWKS next to the config.
    File(Value),
}

// === impl Config ===

impl Default for Config {
    fn default() -> Self {
        let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
        Config {
            issuer: "http://latch.test".into(),
            listen: loopback,
            metrics: Metrics { listen: loopback },
            tokens: Tokens {
                access_ttl: mins(5),
                refresh_ttl: days(30),
                leeway: secs(30),
                max_delegation_depth: None,
            },
            keys: Keys {
                algorithm: Alg::EdDSA,
                rotate_every: hours(24),
                publish_ahead: hours(1),
            },
            store: Store {
                kind: StoreKind::Embedded,
                path: None,
                redis_url: None,
                max_staleness: secs(2),
                redis_username: None,
                sentinel_username: None,
                tls_ca_file: None,
                tls_cert_file: None,
                tls_key_file: None,
                min_replicas_ack: None,
                replica_ack_timeout: None,
            },
            limits: Limits {
                max_body_bytes: 16384,
                max_connections: 1024,
                header_read_timeout: secs(10),
                token_cache_entries: None,
                body_read_timeout: None,
                handler_timeout: None,
                write_timeout: None,
                max_connections_per_ip: None,
                trusted_proxies: vec![],
                token_rate: None,
                token_burst: None,
                revoke_rate: None,
                revoke_burst: None,
                auth_failure_rate: None,
                auth_failure_burst: None,
                auth_failure_ip_rate: None,
                auth_failure_ip_burst: None,
            },
            clients: clients::standard(),
            trusted_issuers: vec![],
        }
    }
}

impl Config {
    /// The client with this id; panics if there is none (a typo in a test).
    pub fn client_mut(&mut self, id: &str) -> &mut ClientDef {
        self.clients
            .iter_mut()
            .find(|c| c.id == id)
            .unwrap_or_else(|| panic!("no client {id:?} in the config"))
    }

    /// The document, with `store.path` defaulting to `data` and every [`Jwks::File`]
    /// written into `dir`.
    pub fn to_table(&self, dir: &Path, data: &Path) -> toml::Table {
        let mut cfg = self.clone();
        if cfg.store.path.is_none() {
            cfg.store.path = Some(data.to_path_buf());
        }
        let mut table = toml::Table::try_from(&cfg).expect("the typed config serializes");
        if !self.trusted_issuers.is_empty() {
            let issuers = self
                .trusted_issuers
                .iter()
                .enumerate()
                .map(|(i, t)| toml::Value::Table(t.to_table(&dir.join(format!("jwks-{i}.json")))))
                .collect();
            table.insert("trusted_issuers".into(), toml::Value::Array(issuers));
        }
        table
    }
}

// === impl TrustedIssuer ===

impl TrustedIssuer {
    /// The entry; a [`Jwks::File`] is written to `file`.
    fn to_table(&self, file: &Path) -> toml::Table {
        let mut t = toml::Table::new();
        t.insert("issuer".into(), self.issuer.clone().into());
        if let Some(a) = &self.audience {
            t.insert("audience".into(), a.clone().into());
        }
        if let Some(p) = &self.subject_prefix {
            t.insert("subject_prefix".into(), p.clone().into());
        }
        match &self.jwks {
            // A JSON string, as operators paste it; latch also takes a TOML table.
            Jwks::Inline(v) => {
                t.insert("jwks".into(), v.to_string().into());
            }
            Jwks::File(v) => {
                std::fs::write(file, serde_json::to_vec(v).unwrap()).expect("write JWKS file");
                let path = file.to_str().expect("UTF-8 temporary path");
                t.insert("jwks_file".into(), path.into());
            }
        }
        t
    }

    pub fn audience(mut self, aud: &str) -> Self {
        self.audience = Some(aud.into());
        self
    }

    pub fn subject_prefix(mut self, prefix: &str) -> Self {
        self.subject_prefix = Some(prefix.into());
        self
    }

    /// Read from a file the harness writes instead of inline.
    pub fn jwks_in_file(mut self) -> Self {
        if let Jwks::Inline(v) = self.jwks {
            self.jwks = Jwks::File(v);
        }
        self
    }
}

// === raw TOML ===

/// Merges `over` into `base`: tables recursively, anything else (arrays too) replaced.
/// `raw_override(doc, "tokens.leeway = \"soon\"")` changes one key and keeps the rest.
pub fn raw_override(base: &mut toml::Table, over: &str) {
    let over: toml::Table = over
        .parse()
        .unwrap_or_else(|e| panic!("raw TOML override does not parse: {e}\n{over}"));
    merge(base, over);
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

// === durations ===

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub fn mins(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}

pub fn hours(n: u64) -> Duration {
    Duration::from_secs(n * 3600)
}

pub fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

/// A duration the way latch's config writes it: the largest unit that is exact
/// (`"30d"`, `"5m"`, `"1500ms"`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

fn duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

fn optional_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => duration(d, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_use_the_largest_exact_unit() {
        for (d, text) in [
            (ms(0), "0s"),
            (ms(300), "300ms"),
            (ms(1500), "1500ms"),
            (secs(2), "2s"),
            (secs(90), "90s"),
            (mins(5), "5m"),
            (hours(24), "1d"),
            (days(30), "30d"),
        ] {
            assert_eq!(format_duration(d), text);
        }
    }

    #[test]
    fn the_default_document_names_every_section_and_client() {
        let t = Config::default().to_table(Path::new("/tmp/x"), Path::new("/tmp/x/data"));
        assert_eq!(t["issuer"].as_str(), Some("http://latch.test"));
        assert_eq!(t["tokens"]["access_ttl"].as_str(), Some("5m"));
        assert_eq!(t["store"]["kind"].as_str(), Some("embedded"));
        assert_eq!(t["store"]["path"].as_str(), Some("/tmp/x/data"));
        assert_eq!(t["clients"].as_array().map(Vec::len), Some(6));
        assert!(t["store"].get("redis_url").is_none());
        assert!(t.get("trusted_issuers").is_none());
        // Values come before tables, so the text parses back to the same document.
        let text = toml::to_string(&t).unwrap();
        assert_eq!(text.parse::<toml::Table>().unwrap(), t);
    }

    #[test]
    fn a_raw_override_changes_one_key_and_keeps_the_rest() {
        let mut t = Config::default().to_table(Path::new("/x"), Path::new("/x/data"));
        raw_override(
            &mut t,
            "tokens.leeway = \"soon\"\n[keys]\nalgorithm = \"HS256\"",
        );
        assert_eq!(t["tokens"]["leeway"].as_str(), Some("soon"));
        assert_eq!(t["tokens"]["access_ttl"].as_str(), Some("5m"));
        assert_eq!(t["keys"]["algorithm"].as_str(), Some("HS256"));
        assert_eq!(t["keys"]["rotate_every"].as_str(), Some("1d"));
    }
}
