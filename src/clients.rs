//! Configured OAuth clients: their grants, scopes, audiences and roles, and authentication
//! of a presented secret in constant time.

use std::collections::HashMap;
use std::sync::Arc;

use subtle::ConstantTimeEq;

use crate::ids::ClientId;
use crate::limits::Rate;

pub mod assertion;
pub mod certificate;

pub use assertion::ClientKeys;
pub use certificate::{CertAuth, PeerCert};

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
    /// A Shared Signals receiver: manages its own event streams and polls them.
    SsfReceiver,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "introspect" => Some(Role::Introspect),
            "admin" => Some(Role::Admin),
            "session_issuer" => Some(Role::SessionIssuer),
            "ssf_receiver" => Some(Role::SsfReceiver),
            _ => None,
        }
    }
}

/// A granted scope or audience on its way out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deprecated {
    pub name: String,
    /// When the contract version that deprecates it took effect, Unix ms.
    pub since_ms: i64,
    /// When a scheduled amendment stops granting it, Unix ms.
    pub sunset_ms: Option<i64>,
}

/// One client: its secret and rates from the configuration, its rights from the
/// authorization contract in force (`crate::app::contracts` builds one per version).
#[derive(Debug, Clone)]
pub struct Client {
    pub id: ClientId,
    secret_sha256: [u8; 32],
    /// Whether a secret is configured (a `private_key_jwt`-only client has none, and no
    /// secret authenticates it).
    has_secret: bool,
    /// Registered public keys for `private_key_jwt` (`None`: that method is unavailable).
    pub keys: Option<ClientKeys>,
    /// Certificates it may authenticate with by mutual TLS (RFC 8705; empty: neither
    /// `tls_client_auth` nor `self_signed_tls_client_auth` is available).
    pub certs: CertAuth,
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
    /// The contract version these rights come from (0: the configuration, no contract
    /// recorded yet).
    pub contract_version: u64,
    /// Scopes and audiences in `shadow`: refused, counted as "would have been granted".
    pub shadow_scopes: Vec<String>,
    pub shadow_audiences: Vec<String>,
    /// Granted scopes and audiences that are deprecated (by the contract's ramp or the
    /// registry), with the planned removal time (Unix ms) when one is scheduled.
    pub deprecated: Vec<Deprecated>,
    /// Scopes the contract names but the registry retired: never granted.
    pub retired_scopes: Vec<String>,
    /// No token is issued, and live tokens are inactive.
    pub suspended: bool,
    /// Access-token lifetime (`None`: the server's `tokens.access_ttl`).
    pub access_ttl: Option<std::time::Duration>,
    /// Accepted authentication methods (empty: every method).
    pub auth_methods: Vec<String>,
    /// Trusted issuers whose assertions it may present (empty: every trusted issuer).
    pub trusted_issuers: Vec<String>,
}

impl Client {
    /// A client that authenticates with a secret whose SHA-256 is `secret_sha256`, with
    /// no grants, scopes, audiences or roles yet (set the public fields).
    pub fn new(id: impl Into<String>, secret_sha256: [u8; 32]) -> Client {
        Client {
            id: ClientId::new(id),
            secret_sha256,
            has_secret: true,
            keys: None,
            certs: CertAuth::default(),
            grants: Vec::new(),
            scopes: Vec::new(),
            audiences: Vec::new(),
            roles: Vec::new(),
            delegate_service_tokens: false,
            token_rate: None,
            revoke_rate: None,
            contract_version: 0,
            shadow_scopes: Vec::new(),
            shadow_audiences: Vec::new(),
            deprecated: Vec::new(),
            retired_scopes: Vec::new(),
            suspended: false,
            access_ttl: None,
            auth_methods: Vec::new(),
            trusted_issuers: Vec::new(),
        }
    }

    /// A client with no secret: it authenticates only with `private_key_jwt`.
    pub fn without_secret(id: impl Into<String>, keys: ClientKeys) -> Client {
        let mut c = Client::no_secret(id);
        c.keys = Some(keys);
        c
    }

    /// A client with no secret (set `keys` or `certs`, else nothing authenticates it).
    pub fn no_secret(id: impl Into<String>) -> Client {
        let mut c = Client::new(id, [0; 32]);
        c.has_secret = false;
        c
    }

    /// Whether it may authenticate with `method` (`client_secret_basic`,
    /// `client_secret_post`, `private_key_jwt`): the contract's list when it has one.
    pub fn accepts_auth_method(&self, method: &str) -> bool {
        self.auth_methods.is_empty() || self.auth_methods.iter().any(|m| m == method)
    }

    /// The methods it can authenticate with at all: the secret ones when it has a
    /// secret, `private_key_jwt` when it has keys, the mutual-TLS ones when it has
    /// certificates of that kind.
    pub fn can_use(&self, method: &str) -> bool {
        match method {
            assertion::PRIVATE_KEY_JWT => self.keys.is_some(),
            certificate::TLS_CLIENT_AUTH => self.certs.pki.is_some(),
            certificate::SELF_SIGNED_TLS_CLIENT_AUTH => !self.certs.self_signed.is_empty(),
            _ => self.has_secret,
        }
    }

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
    by_id: Arc<HashMap<ClientId, Arc<Client>, foldhash::fast::RandomState>>,
}

impl Clients {
    /// The registry of `clients` (ids are unique: config validation checked).
    pub fn new(clients: impl IntoIterator<Item = Client>) -> Clients {
        let by_id = clients
            .into_iter()
            .map(|c| (c.id.clone(), Arc::new(c)))
            .collect();
        Clients {
            by_id: Arc::new(by_id),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Client>> {
        self.by_id.values()
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
            Some(c) if equal && c.has_secret => Some(c.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Clients {
        let secret = "a-secret-that-is-long-enough-0123456789";
        let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
        let mut client = Client::new("svc", digest.as_ref().try_into().unwrap());
        client.grants = vec![Grant::ClientCredentials];
        client.audiences = vec!["https://a".into()];
        client.roles = vec![Role::Introspect];
        Clients::new([client])
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
    fn grants_roles_and_audiences_decide() {
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
