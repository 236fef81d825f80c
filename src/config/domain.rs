//! What a validated [`Config`] builds: the domain's own values. Configuration depends on
//! the domain, never the reverse, so clients, limits, keys and sessions know nothing of
//! TOML. Reading trusted issuers' JWKS files is the only IO here, done once at start-up
//! (and by `latch check`), never during validation.

use super::{Config, ConfigError};
use crate::clients::certificate::{self, SubjectMatch};
use crate::clients::{CertAuth, Client, ClientKeys, Clients, Grant, Role};
use crate::keys::KeyPolicy;
use crate::limits::{Rate, RateLimits};
use crate::sessions::trusted::{IssuerSpec, TrustedIssuers};

/// The RFC 8705 certificates of `clients[i]` (validated; the files are read here). A
/// self-signed client must end up with at least one registered certificate.
fn cert_auth(
    i: usize,
    c: &super::ClientConfig,
    jwks: Option<&(String, String)>,
) -> Result<CertAuth, ConfigError> {
    let key = |k: &str| format!("clients[{i}].{k}");
    let pki = match c.tls_client_auth_subject().first() {
        Some((field, value)) => Some(
            SubjectMatch::parse(field, value)
                .map_err(|reason| ConfigError::new(key(field), reason))?,
        ),
        None => None,
    };
    let mut self_signed = Vec::new();
    if c.self_signed_tls_client_auth {
        for t in &c.tls_client_certificate_sha256 {
            self_signed.extend(certificate::parse_thumbprint(t));
        }
        if let Some(path) = &c.tls_client_certificate_file {
            let k = key("tls_client_certificate_file");
            let pem = std::fs::read(path).map_err(|e| {
                ConfigError::new(k.clone(), format!("{}: cannot read: {e}", path.display()))
            })?;
            let found = certificate::thumbprints_of_pem(&pem)
                .map_err(|reason| ConfigError::new(k, format!("{}: {reason}", path.display())))?;
            self_signed.extend(found);
        }
        if let Some((k, text)) = jwks {
            let found = certificate::thumbprints_of_jwks(text)
                .map_err(|reason| ConfigError::new(k.clone(), reason))?;
            self_signed.extend(found);
        }
        if self_signed.is_empty() {
            return Err(ConfigError::new(
                key("self_signed_tls_client_auth"),
                "no certificate registered: the JWKS has no x5c, and neither \
                 tls_client_certificate_file nor tls_client_certificate_sha256 is given",
            ));
        }
    }
    Ok(CertAuth { pki, self_signed })
}

/// A validated rate setting (`"off"` and invalid, which validation refused, are `None`).
fn rate(text: &str, burst: u32) -> Option<Rate> {
    Rate::parse(text, burst).ok().flatten()
}

impl Config {
    /// The client registry (hex, names and rates were checked by validation). Reads the
    /// JWKS files of `private_key_jwt` clients; the error names the key and why.
    pub fn clients(&self) -> Result<Clients, ConfigError> {
        let limits = &self.limits;
        let mut clients = Vec::with_capacity(self.clients.len());
        for (i, c) in self.clients.iter().enumerate() {
            let jwks = jwks_text(&c.jwks_file, &c.jwks, &format!("clients[{i}]"))?;
            let keys = match &jwks {
                Some((key, text)) => {
                    Some(ClientKeys::parse(text).map_err(|reason| ConfigError::new(key, reason))?)
                }
                None => None,
            };
            let certs = cert_auth(i, c, jwks.as_ref())?;
            let mut client = match (c.secret_sha256.is_empty(), keys) {
                (true, Some(keys)) => Client::without_secret(c.id.clone(), keys),
                (true, None) => Client::no_secret(c.id.clone()),
                (_, keys) => {
                    let mut secret = [0u8; 32];
                    for (i, byte) in secret.iter_mut().enumerate() {
                        *byte = u8::from_str_radix(&c.secret_sha256[2 * i..2 * i + 2], 16)
                            .expect("validated hex");
                    }
                    let mut client = Client::new(c.id.clone(), secret);
                    client.keys = keys;
                    client
                }
            };
            client.certs = certs;
            client.grants = c.grants.iter().filter_map(|g| Grant::parse(g)).collect();
            client.scopes = c.scopes.clone();
            client.audiences = c.audiences.clone();
            client.roles = c.roles.iter().filter_map(|r| Role::parse(r)).collect();
            client.delegate_service_tokens = c.delegate_service_tokens;
            client.token_rate = rate(
                c.token_rate.as_ref().unwrap_or(&limits.token_rate),
                c.token_burst.unwrap_or(limits.token_burst),
            );
            client.revoke_rate = rate(
                c.revoke_rate.as_ref().unwrap_or(&limits.revoke_rate),
                c.revoke_burst.unwrap_or(limits.revoke_burst),
            );
            clients.push(client);
        }
        Ok(Clients::new(clients))
    }

    /// This node's rate limits, with empty buckets.
    pub fn rate_limits(&self) -> RateLimits {
        let l = &self.limits;
        RateLimits::new(
            rate(&l.auth_failure_rate, l.auth_failure_burst),
            rate(&l.auth_failure_ip_rate, l.auth_failure_ip_burst),
            l.proxies(),
        )
    }

    /// The timing rules of the key lifecycle.
    pub fn key_policy(&self) -> KeyPolicy {
        KeyPolicy {
            alg: self.keys.algorithm,
            rotate_every_ms: self.keys.rotate_every.as_millis() as i64,
            publish_ahead_ms: self.keys.publish_ahead.as_millis() as i64,
            min_published_ms: (self.jwks_max_age() + self.store.max_staleness).as_millis() as i64,
            retire_after_ms: (self.tokens.access_ttl + self.tokens.leeway).as_millis() as i64,
        }
    }

    /// Reads every trusted issuer's JWKS (its file, or inline) and parses it. The error
    /// names the key (`trusted_issuers[1].jwks_file`) and why.
    pub fn trusted_issuers(&self) -> Result<TrustedIssuers, ConfigError> {
        let mut specs = Vec::with_capacity(self.trusted_issuers.len());
        let mut keys = Vec::with_capacity(self.trusted_issuers.len());
        for (i, c) in self.trusted_issuers.iter().enumerate() {
            let (key, jwks) = jwks_text(&c.jwks_file, &c.jwks, &format!("trusted_issuers[{i}]"))?
                .ok_or_else(|| {
                ConfigError::new(
                    format!("trusted_issuers[{i}].jwks_file"),
                    "exactly one of jwks_file and jwks must be given",
                )
            })?;
            keys.push(key);
            specs.push(IssuerSpec {
                issuer: c.issuer.clone(),
                audience: c.audience.clone().unwrap_or_else(|| self.issuer.clone()),
                subject_prefix: c.subject_prefix.clone().unwrap_or_default(),
                jwks,
            });
        }
        TrustedIssuers::new(&specs).map_err(|(i, reason)| ConfigError::new(keys[i].clone(), reason))
    }
}

/// A JWKS as text, from its file or inline (a TOML table, or a JSON string), with the
/// config key it came from (`<at>.jwks_file` or `<at>.jwks`); `None` when neither is given.
fn jwks_text(
    file: &Option<std::path::PathBuf>,
    inline: &Option<toml::Value>,
    at: &str,
) -> Result<Option<(String, String)>, ConfigError> {
    Ok(match (file, inline) {
        (Some(path), _) => {
            let key = format!("{at}.jwks_file");
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(key.clone(), format!("cannot read {}: {e}", path.display()))
            })?;
            Some((key, text))
        }
        (None, Some(toml::Value::String(s))) => Some((format!("{at}.jwks"), s.clone())),
        (None, Some(other)) => Some((
            format!("{at}.jwks"),
            serde_json::to_string(other).unwrap_or_default(),
        )),
        (None, None) => None,
    })
}
