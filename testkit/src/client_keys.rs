//! Client key pairs the test controls, for `private_key_jwt` client assertions (RFC 7523
//! §2.2) and DPoP proofs: EdDSA (Ed25519) or ES256 (P-256), signed with ring.

use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use serde_json::{json, Value};

use crate::issuers::{unique, LATCH_ISSUER};
use crate::jwt::{b64url, encode_part, now_secs};

/// The `client_assertion_type` of a JWT client assertion.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// latch's token endpoint in the default test config: an assertion's `aud`.
pub fn token_endpoint() -> String {
    format!("{LATCH_ISSUER}/token")
}

enum Pair {
    Ed(Ed25519KeyPair),
    Es(EcdsaKeyPair),
}

/// One asymmetric key of a client, with its kid.
pub struct ClientKey {
    pair: Pair,
    pub kid: String,
}

impl ClientKey {
    /// A fresh Ed25519 key, kid `kid`.
    pub fn ed25519(kid: &str) -> ClientKey {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        ClientKey {
            pair: Pair::Ed(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()),
            kid: kid.into(),
        }
    }

    /// A fresh P-256 key, kid `kid`.
    pub fn es256(kid: &str) -> ClientKey {
        let rng = SystemRandom::new();
        let alg = &ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        ClientKey {
            pair: Pair::Es(EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap()),
            kid: kid.into(),
        }
    }

    pub fn alg(&self) -> &'static str {
        match self.pair {
            Pair::Ed(_) => "EdDSA",
            Pair::Es(_) => "ES256",
        }
    }

    /// The raw public key (what an HS256 forger would use as the secret).
    pub fn public_key(&self) -> Vec<u8> {
        match &self.pair {
            Pair::Ed(k) => k.public_key().as_ref().to_vec(),
            Pair::Es(k) => k.public_key().as_ref().to_vec(),
        }
    }

    /// The public JWK, without `kid` (as a DPoP proof carries it).
    pub fn public_jwk(&self) -> Value {
        match &self.pair {
            Pair::Ed(k) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64url(k.public_key().as_ref())})
            }
            Pair::Es(k) => {
                // Uncompressed point: 0x04 || x || y.
                let p = k.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "x": b64url(&p[1..33]), "y": b64url(&p[33..65])})
            }
        }
    }

    /// The public JWK with its kid, for a JWKS.
    pub fn jwk(&self) -> Value {
        let mut j = self.public_jwk();
        j["kid"] = json!(self.kid);
        j
    }

    /// Signs `header.claims` compactly with this key (the header is taken as given).
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", encode_part(header), encode_part(claims));
        let sig = match &self.pair {
            Pair::Ed(k) => k.sign(input.as_bytes()).as_ref().to_vec(),
            Pair::Es(k) => k
                .sign(&SystemRandom::new(), input.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec(),
        };
        format!("{input}.{}", b64url(&sig))
    }

    /// Valid assertion claims for client `id`: `iss` = `sub` = `id`, `aud` = the token
    /// endpoint, issued now, one minute to live, a fresh `jti`.
    pub fn assertion_claims(&self, id: &str) -> Value {
        let now = now_secs();
        json!({
            "iss": id, "sub": id, "aud": token_endpoint(),
            "iat": now, "exp": now + 60, "jti": unique("ca"),
        })
    }

    /// Signs assertion `claims` with header `alg` (this key's) and `kid`.
    pub fn sign_assertion(&self, claims: &Value) -> String {
        self.sign(
            &json!({"alg": self.alg(), "kid": self.kid, "typ": "JWT"}),
            claims,
        )
    }

    /// A valid, fresh client assertion for client `id`.
    pub fn assertion(&self, id: &str) -> String {
        self.sign_assertion(&self.assertion_claims(id))
    }
}

impl ClientKey {
    /// A DPoP proof (RFC 9449 §4.2) for `htm` `htu`, issued `iat`, with a fresh `jti` and
    /// `nonce` when given.
    pub fn dpop_proof_at(&self, htm: &str, htu: &str, iat: u64, nonce: Option<&str>) -> String {
        let header = json!({"typ": "dpop+jwt", "alg": self.alg(), "jwk": self.public_jwk()});
        let mut claims = json!({"jti": unique("dpop"), "htm": htm, "htu": htu, "iat": iat});
        if let Some(n) = nonce {
            claims["nonce"] = json!(n);
        }
        self.sign(&header, &claims)
    }

    /// A fresh DPoP proof for `POST` to latch's token endpoint.
    pub fn dpop_proof(&self, nonce: Option<&str>) -> String {
        self.dpop_proof_at("POST", &token_endpoint(), now_secs(), nonce)
    }

    /// The RFC 7638 thumbprint of the public key (what `cnf.jkt` must be).
    pub fn thumbprint(&self) -> String {
        let j = self.public_jwk();
        let canonical = match j["kty"].as_str() {
            Some("OKP") => format!(r#"{{"crv":{},"kty":"OKP","x":{}}}"#, j["crv"], j["x"]),
            _ => format!(
                r#"{{"crv":{},"kty":"EC","x":{},"y":{}}}"#,
                j["crv"], j["x"], j["y"]
            ),
        };
        b64url(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()).as_ref())
    }
}

/// A JWKS of `keys`.
pub fn jwks(keys: &[&ClientKey]) -> Value {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()})
}
