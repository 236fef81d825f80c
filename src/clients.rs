//! Configured OAuth clients: their grants, scopes, audiences and roles, and authentication
//! of a presented secret in constant time.

use std::collections::HashMap;
use std::sync::Arc;

use subtle::ConstantTimeEq;

use crate::config::{ClientConfig, LimitsConfig};
use crate::limits::Rate;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    ClientCredentials,
    RefreshToken,
    TokenExchange,
}

pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

impl Grant {
    pub fn parse(s: &str) -> Option<Grant> {
        match s {
            "client_credentials" => Some(Grant::ClientCredentials),
            "refresh_token" => Some(Grant::RefreshToken),
            TOKEN_EXCHANGE => Some(Grant::TokenExchange),
            _ => None,
        }
    }

    /// The label used in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Grant::ClientCredentials => "client_credentials",
            Grant::RefreshToken => "refresh_token",
            Grant::TokenExchange => "token_exchange",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Introspect,
    Admin,
    SessionIssuer,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "introspect" => Some(Role::Introspect),
            "admin" => Some(Role::Admin),
            "session_issuer" => Some(Role::SessionIssuer),
            _ => None,
        }
    }
}

/// One client, as configured.
#[derive(Debug)]
pub struct Client {
    pub id: String,
    secret_sha256: [u8; 32],
    pub grants: Vec<Grant>,
    /// Allowed scopes; also the default when a request names none.
    pub scopes: Vec<String>,
    /// Audiences this client may ask tokens for (the first is the default). For a resource
    /// server with role `introspect`, the only audiences whose tokens it sees as active.
    pub audiences: Vec<String>,
    pub roles: Vec<Role>,
    /// May delegate a token without `sid` (another service's token) by token exchange.
    pub delegate_service_tokens: bool,
    /// Token issuance limit (`None`: unlimited).
    pub token_rate: Option<Rate>,
    /// RFC 7009 revocation limit (`None`: unlimited).
    pub revoke_rate: Option<Rate>,
}

impl Client {
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    pub fn has_grant(&self, grant: Grant) -> bool {
        self.grants.contains(&grant)
    }

    /// Whether a token for `aud` may be shown to this client as active at `/introspect`.
    pub fn may_see_audience(&self, aud: &str) -> bool {
        self.audiences.is_empty() || self.audiences.iter().any(|a| a == aud)
    }
}

/// The client registry. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Clients {
    by_id: Arc<HashMap<String, Arc<Client>>>,
}

impl Clients {
    /// Builds the registry from validated config (hex, names and rates were checked
    /// there); `limits` gives the default rates.
    pub fn from_config(configs: &[ClientConfig], limits: &LimitsConfig) -> Clients {
        let by_id = configs
            .iter()
            .map(|c| {
                let mut secret = [0u8; 32];
                for (i, byte) in secret.iter_mut().enumerate() {
                    *byte = u8::from_str_radix(&c.secret_sha256[2 * i..2 * i + 2], 16)
                        .expect("validated hex");
                }
                let client = Client {
                    id: c.id.clone(),
                    secret_sha256: secret,
                    grants: c.grants.iter().filter_map(|g| Grant::parse(g)).collect(),
                    scopes: c.scopes.clone(),
                    audiences: c.audiences.clone(),
                    roles: c.roles.iter().filter_map(|r| Role::parse(r)).collect(),
                    delegate_service_tokens: c.delegate_service_tokens,
                    token_rate: rate(
                        c.token_rate.as_ref().unwrap_or(&limits.token_rate),
                        c.token_burst.unwrap_or(limits.token_burst),
                    ),
                    revoke_rate: rate(
                        c.revoke_rate.as_ref().unwrap_or(&limits.revoke_rate),
                        c.revoke_burst.unwrap_or(limits.revoke_burst),
                    ),
                };
                (c.id.clone(), Arc::new(client))
            })
            .collect();
        Clients {
            by_id: Arc::new(by_id),
        }
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Client>> {
        self.by_id.get(id)
    }

    /// Whether `id` names a configured client (user subjects must never equal one).
    pub fn contains(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    /// Checks a presented secret. The digest comparison is constant time, and an unknown
    /// client id costs the same hash and comparison as a known one.
    pub fn authenticate(&self, id: &str, secret: &[u8]) -> Option<Arc<Client>> {
        let presented = ring::digest::digest(&ring::digest::SHA256, secret);
        let (expected, client) = match self.by_id.get(id) {
            Some(c) => (c.secret_sha256, Some(c)),
            None => ([0u8; 32], None),
        };
        let equal: bool = presented.as_ref().ct_eq(&expected).into();
        match client {
            Some(c) if equal => Some(c.clone()),
            _ => None,
        }
    }
}

/// A validated rate setting (`"off"` and invalid, which `latch check` refused, are `None`).
fn rate(text: &str, burst: u32) -> Option<Rate> {
    Rate::parse(text, burst).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Clients {
        let secret = "a-secret-that-is-long-enough-0123456789";
        let hex: String = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Clients::from_config(
            &[ClientConfig {
                id: "svc".into(),
                secret_sha256: hex,
                grants: vec!["client_credentials".into()],
                scopes: vec!["a".into()],
                audiences: vec!["https://a".into()],
                roles: vec!["introspect".into()],
                delegate_service_tokens: false,
                token_rate: None,
                token_burst: None,
                revoke_rate: None,
                revoke_burst: None,
            }],
            &crate::config::Config::from_toml("issuer = \"https://a.example\"", [])
                .unwrap()
                .limits,
        )
    }

    #[test]
    fn authenticates_only_the_right_secret() {
        let clients = registry();
        let ok = clients.authenticate("svc", b"a-secret-that-is-long-enough-0123456789");
        assert_eq!(ok.map(|c| c.id.clone()).as_deref(), Some("svc"));
        assert!(clients.authenticate("svc", b"wrong").is_none());
        assert!(clients
            .authenticate("nobody", b"a-secret-that-is-long-enough-0123456789")
            .is_none());
        // An all-zero digest must not match an unknown client.
        assert!(clients.authenticate("nobody", b"").is_none());
    }

    #[test]
    fn parses_grants_and_roles() {
        let clients = registry();
        let c = clients.get("svc").unwrap();
        assert!(c.has_grant(Grant::ClientCredentials));
        assert!(!c.has_grant(Grant::RefreshToken));
        assert!(c.has_role(Role::Introspect));
        assert!(!c.has_role(Role::Admin));
        assert!(c.may_see_audience("https://a"));
        assert!(!c.may_see_audience("https://b"));
    }
}
