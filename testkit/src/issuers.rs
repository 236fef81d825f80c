//! Trusted issuers: [`Idp`], an identity provider the test controls (an Ed25519 key, its
//! JWKS, signed assertions), and the `[[trusted_issuers]]` entry that makes latch trust it.

use std::sync::atomic::{AtomicU64, Ordering};

use ring::rand::SecureRandom as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde_json::{json, Value};

use crate::config::{Jwks, TrustedIssuer};
use crate::jwt::{b64url, now_secs, sign_ed25519};

/// The issuer of [`crate::Config::default`]: the audience an assertion names unless
/// the trusted-issuer entry says otherwise.
pub const LATCH_ISSUER: &str = "http://latch.test";

/// An IdP with one Ed25519 key. Its assertions name `aud` ([`LATCH_ISSUER`] unless
/// changed with [`Idp::audience`]) and carry `kid`.
pub struct Idp {
    key: Ed25519KeyPair,
    pub iss: String,
    pub kid: String,
    pub aud: String,
}

// === impl Idp ===

impl Idp {
    /// A fresh key for issuer `iss`, kid `k1`.
    pub fn new(iss: &str) -> Idp {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Idp {
            key: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap(),
            iss: iss.to_string(),
            kid: "k1".into(),
            aud: LATCH_ISSUER.into(),
        }
    }

    pub fn kid(mut self, kid: &str) -> Idp {
        self.kid = kid.into();
        self
    }

    /// The audience its assertions name (pair it with [`TrustedIssuer::audience`]).
    pub fn audience(mut self, aud: &str) -> Idp {
        self.aud = aud.into();
        self
    }

    /// The raw Ed25519 public key (also what an HS256 forger would use as secret).
    pub fn public_key(&self) -> Vec<u8> {
        self.key.public_key().as_ref().to_vec()
    }

    /// The public key as a JWKS.
    pub fn jwks(&self) -> Value {
        json!({"keys": [{
            "kty": "OKP",
            "crv": "Ed25519",
            "x": b64url(self.key.public_key().as_ref()),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        }]})
    }

    /// The `[[trusted_issuers]]` entry: this issuer, inline JWKS, latch's own issuer as
    /// the audience, no subject prefix.
    pub fn trusted(&self) -> TrustedIssuer {
        TrustedIssuer {
            issuer: self.iss.clone(),
            audience: None,
            subject_prefix: None,
            jwks: Jwks::Inline(self.jwks()),
        }
    }

    /// Valid assertion claims for `sub`: fresh `jti`, issued now, two minutes to live.
    pub fn claims(&self, sub: &str) -> Value {
        let now = now_secs();
        json!({
            "iss": self.iss,
            "sub": sub,
            "aud": self.aud,
            "iat": now,
            "exp": now + 120,
            "jti": unique("jti"),
            "preferred_username": format!("{sub}@example.com"),
        })
    }

    /// EdDSA-signs `claims` with this key, header `kid` = `kid` (another kid than the
    /// key's own for tests of unknown keys).
    pub fn sign_kid(&self, kid: &str, claims: &Value) -> String {
        let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": kid});
        sign_ed25519(&self.key, &header, claims)
    }

    pub fn sign(&self, claims: &Value) -> String {
        self.sign_kid(&self.kid, claims)
    }

    /// A valid, fresh assertion for `sub`.
    pub fn assertion(&self, sub: &str) -> String {
        self.sign(&self.claims(sub))
    }

    /// A valid assertion for `sub` with this `jti` (to present the same one twice).
    pub fn assertion_with_jti(&self, sub: &str, jti: &str) -> String {
        let mut c = self.claims(sub);
        c["jti"] = json!(jti);
        self.sign(&c)
    }
}

/// `prefix-<random hex>-<counter>`: unique within the run and across runs.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut b = [0u8; 8];
    ring::rand::SystemRandom::new().fill(&mut b).unwrap();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{prefix}-{hex}-{}", N.fetch_add(1, Ordering::Relaxed))
}
