//! Client fixtures: [`ClientDef`] (a `[[clients]]` entry plus the secret the test
//! presents) and the clients most tests share.

use serde::Serialize;

/// One configured client. The file gets the SHA-256 of `secret`; the test keeps the
/// secret to authenticate with.
#[derive(Clone, Debug)]
pub struct ClientDef {
    pub id: String,
    pub secret: String,
    /// Written instead of the secret's digest when set (a malformed hash for `latch check`).
    pub secret_sha256_override: Option<String>,
    pub grants: Vec<String>,
    pub scopes: Vec<String>,
    pub audiences: Vec<String>,
    pub roles: Vec<String>,
    pub delegate_service_tokens: bool,
    pub token_rate: Option<String>,
    pub token_burst: Option<u32>,
    pub revoke_rate: Option<String>,
    pub revoke_burst: Option<u32>,
    /// Public keys for `private_key_jwt`, written inline as a JSON string.
    pub jwks: Option<serde_json::Value>,
    /// Public keys for `private_key_jwt`, as a path to a JWKS file the test wrote.
    pub jwks_file: Option<String>,
    /// No `secret_sha256` in the file: the client has only its keys.
    pub no_secret: bool,
    /// More keys of the entry, as written (the mutual-TLS settings, for one).
    pub extra: Vec<(String, toml::Value)>,
}

/// The `[[clients]]` entry as written.
#[derive(Serialize)]
struct Entry<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "String::is_empty")]
    secret_sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    jwks: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jwks_file: Option<&'a str>,
    grants: &'a [String],
    scopes: &'a [String],
    audiences: &'a [String],
    roles: &'a [String],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    delegate_service_tokens: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_rate: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_burst: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoke_rate: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoke_burst: Option<u32>,
    #[serde(flatten)]
    extra: std::collections::BTreeMap<&'a str, &'a toml::Value>,
}

pub const ORDERS_AUD: &str = "https://orders.example";
pub const ORDERS_AUD2: &str = "https://orders-internal.example";
pub const BILLING_AUD: &str = "https://billing.example";

// === impl ClientDef ===

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

impl ClientDef {
    /// A client with a deterministic secret (>= 32 bytes) derived from its id.
    pub fn new(id: &str) -> Self {
        ClientDef {
            id: id.to_string(),
            secret: format!("{id}-test-secret-0123456789abcdef0123456789abcdef"),
            secret_sha256_override: None,
            grants: vec![],
            scopes: vec![],
            audiences: vec![],
            roles: vec![],
            delegate_service_tokens: false,
            token_rate: None,
            token_burst: None,
            revoke_rate: None,
            revoke_burst: None,
            jwks: None,
            jwks_file: None,
            no_secret: false,
            extra: vec![],
        }
    }

    /// One more key of the entry (`tls_client_auth_subject_dn = "CN=svc"`, ...).
    pub fn with(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.extra.push((key.to_string(), value.into()));
        self
    }

    /// Registers public keys (a JWKS, written inline) for `private_key_jwt`.
    pub fn jwks(mut self, jwks: serde_json::Value) -> Self {
        self.jwks = Some(jwks);
        self
    }

    /// Registers public keys by the path of a JWKS file.
    pub fn jwks_file(mut self, path: &str) -> Self {
        self.jwks_file = Some(path.into());
        self
    }

    /// Leaves the secret out of the file: only `private_key_jwt` can authenticate it.
    pub fn without_secret(mut self) -> Self {
        self.no_secret = true;
        self
    }

    pub fn grants(mut self, v: &[&str]) -> Self {
        self.grants = strings(v);
        self
    }

    pub fn scopes(mut self, v: &[&str]) -> Self {
        self.scopes = strings(v);
        self
    }

    pub fn audiences(mut self, v: &[&str]) -> Self {
        self.audiences = strings(v);
        self
    }

    pub fn roles(mut self, v: &[&str]) -> Self {
        self.roles = strings(v);
        self
    }

    pub fn secret(mut self, s: &str) -> Self {
        self.secret = s.to_string();
        self
    }

    /// Basic credentials for [`crate::Http`] calls.
    pub fn auth(&self) -> Option<(&str, &str)> {
        Some((self.id.as_str(), self.secret.as_str()))
    }

    /// What the config file holds for this client's secret.
    pub fn secret_sha256(&self) -> String {
        sha256_hex(self.secret.as_bytes())
    }
}

impl Serialize for ClientDef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Entry {
            id: &self.id,
            secret_sha256: if self.no_secret {
                String::new()
            } else {
                self.secret_sha256_override
                    .clone()
                    .unwrap_or_else(|| self.secret_sha256())
            },
            jwks: self.jwks.as_ref().map(|j| j.to_string()),
            jwks_file: self.jwks_file.as_deref(),
            grants: &self.grants,
            scopes: &self.scopes,
            audiences: &self.audiences,
            roles: &self.roles,
            delegate_service_tokens: self.delegate_service_tokens,
            token_rate: self.token_rate.as_deref(),
            token_burst: self.token_burst,
            revoke_rate: self.revoke_rate.as_deref(),
            revoke_burst: self.revoke_burst,
            extra: self.extra.iter().map(|(k, v)| (k.as_str(), v)).collect(),
        }
        .serialize(s)
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

// === fixtures ===

/// Issues tokens for the orders audiences.
pub fn orders() -> ClientDef {
    ClientDef::new("orders-service")
        .grants(&["client_credentials"])
        .scopes(&["orders:read", "orders:write"])
        .audiences(&[ORDERS_AUD, ORDERS_AUD2])
}

/// Issues tokens for the billing audience.
pub fn billing() -> ClientDef {
    ClientDef::new("billing-service")
        .grants(&["client_credentials"])
        .scopes(&["billing:read"])
        .audiences(&[BILLING_AUD])
}

/// Resource server that may introspect anything (no audiences).
pub fn rs_all() -> ClientDef {
    ClientDef::new("gateway-rs").roles(&["introspect"])
}

/// Resource server restricted to the orders audience.
pub fn rs_orders() -> ClientDef {
    ClientDef::new("orders-rs")
        .roles(&["introspect"])
        .audiences(&[ORDERS_AUD])
}

/// Administrator (bulk revocation, keys, audit, revoke any token).
pub fn admin() -> ClientDef {
    ClientDef::new("security-admin").roles(&["admin", "introspect"])
}

/// Authenticated client that has no grant and no role at all.
pub fn nobody() -> ClientDef {
    ClientDef::new("no-roles-client")
}

/// The six clients every server gets unless a test says otherwise, in this order
/// (`clients[0]` is orders-service).
pub fn standard() -> Vec<ClientDef> {
    vec![
        orders(),
        billing(),
        rs_all(),
        rs_orders(),
        admin(),
        nobody(),
    ]
}
