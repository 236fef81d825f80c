//! Trusted identity providers (`[[trusted_issuers]]`) and the user assertions they sign:
//! the subject tokens an IdP hook exchanges for a new session (RFC 8693).

use std::collections::HashMap;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

/// How old an assertion may be (by its `iat`) when it is exchanged.
pub const MAX_ASSERTION_AGE_SECS: i64 = 300;

/// Until when (Unix ms) the replay record of an assertion must be kept: as long as
/// [`TrustedIssuers::verify`] could accept it, i.e. until `exp` or `iat` plus the maximum
/// age, whichever is first, plus leeway (and one second for the rounding of seconds).
pub fn replay_until_ms(exp: i64, iat: i64, leeway_secs: i64) -> i64 {
    let last = exp.min(iat + MAX_ASSERTION_AGE_SECS);
    (last + leeway_secs + 1) * 1000
}

/// One trusted issuer as configured, its JWKS as text (read from a file or inline).
#[derive(Debug, Clone)]
pub struct IssuerSpec {
    pub issuer: String,
    /// The `aud` its assertions must carry.
    pub audience: String,
    /// Prepended to its `sub` (empty: none).
    pub subject_prefix: String,
    pub jwks: String,
}

/// One trusted issuer: its audience, subject prefix and verification keys by kid.
struct Issuer {
    audience: String,
    /// Prepended to its `sub` (empty: none).
    prefix: String,
    keys: HashMap<String, (Algorithm, DecodingKey)>,
}

/// Every trusted issuer, by `iss`.
#[derive(Default)]
pub struct TrustedIssuers {
    by_iss: HashMap<String, Issuer>,
}

/// What latch takes from a valid assertion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assertion {
    pub iss: String,
    /// The subject as latch names it: the issuer's `subject_prefix` + the IdP's `sub`.
    pub sub: String,
    /// The IdP's own `sub`.
    pub idp_sub: String,
    pub jti: String,
    pub exp: i64,
    pub iat: i64,
    pub username: Option<String>,
}

#[derive(Deserialize)]
struct AssertionClaims {
    iss: String,
    sub: String,
    #[serde(default)]
    jti: Option<String>,
    exp: i64,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    preferred_username: Option<String>,
}

impl TrustedIssuers {
    /// The issuers of `specs`, each with its JWKS parsed. On a bad JWKS, the index of
    /// its spec and why.
    pub fn new(specs: &[IssuerSpec]) -> Result<TrustedIssuers, (usize, String)> {
        let mut by_iss = HashMap::new();
        for (i, spec) in specs.iter().enumerate() {
            let keys = parse_jwks(&spec.jwks).map_err(|reason| (i, reason))?;
            by_iss.insert(
                spec.issuer.clone(),
                Issuer {
                    audience: spec.audience.clone(),
                    prefix: spec.subject_prefix.clone(),
                    keys,
                },
            );
        }
        Ok(TrustedIssuers { by_iss })
    }

    /// Checks an assertion: signature by a key of a trusted issuer, `iss`, `aud`, `exp`,
    /// `iat` within [`MAX_ASSERTION_AGE_SECS`], `sub` and `jti` present. Replay of `jti`
    /// is the caller's to check (it needs the store). The error is a reason for logs.
    pub fn verify(&self, token: &str, leeway_secs: u64) -> Result<Assertion, &'static str> {
        if token.len() > crate::tokens::MAX_TOKEN_LEN {
            return Err("assertion too large");
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| "malformed assertion")?;
        let unverified = unverified_issuer(token).ok_or("malformed assertion")?;
        let issuer = self.by_iss.get(&unverified).ok_or("untrusted issuer")?;
        let (alg, key) = match header.kid.as_deref() {
            Some(kid) => issuer.keys.get(kid).ok_or("unknown key")?,
            // Without a kid, only an issuer with a single key is unambiguous.
            None if issuer.keys.len() == 1 => issuer.keys.values().next().expect("one key"),
            None => return Err("assertion has no kid"),
        };
        if header.alg != *alg {
            return Err("algorithm does not match the key");
        }
        let mut v = Validation::new(*alg);
        v.leeway = leeway_secs;
        // An assertion marked not yet valid is refused (with leeway), as RFC 7519 §4.1.5
        // asks; jsonwebtoken skips `nbf` unless told.
        v.validate_nbf = true;
        v.set_issuer(&[&unverified]);
        v.set_audience(&[&issuer.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<AssertionClaims>(token, key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind::*;
            match e.kind() {
                ExpiredSignature => "assertion expired",
                InvalidAudience => "wrong audience",
                InvalidIssuer => "wrong issuer",
                ImmatureSignature => "assertion not yet valid",
                InvalidSignature => "bad signature",
                _ => "invalid assertion",
            }
        })?;
        let c = data.claims;
        let now = crate::time::now_secs();
        let iat = c.iat.ok_or("assertion has no iat")?;
        if now - iat > MAX_ASSERTION_AGE_SECS + leeway_secs as i64 {
            return Err("assertion too old");
        }
        if iat > now + leeway_secs as i64 {
            return Err("assertion issued in the future");
        }
        let jti = c
            .jti
            .filter(|j| !j.is_empty())
            .ok_or("assertion has no jti")?;
        if c.sub.is_empty() {
            return Err("assertion has no sub");
        }
        Ok(Assertion {
            sub: format!("{}{}", issuer.prefix, c.sub),
            idp_sub: c.sub,
            iss: c.iss,
            jti,
            exp: c.exp,
            iat,
            username: c.preferred_username,
        })
    }
}

impl TrustedIssuers {
    /// The subject latch writes for `idp_sub` of `issuer`, or `None` if the issuer is
    /// not trusted.
    pub fn subject_of(&self, issuer: &str, idp_sub: &str) -> Option<String> {
        let i = self.by_iss.get(issuer)?;
        Some(format!("{}{idp_sub}", i.prefix))
    }

    /// Whether any trusted issuer writes a prefix (then a bare IdP `sub` is ambiguous).
    pub fn has_prefixes(&self) -> bool {
        self.by_iss.values().any(|i| !i.prefix.is_empty())
    }

    /// Whether `subject` carries the prefix of some trusted issuer.
    pub fn has_known_prefix(&self, subject: &str) -> bool {
        self.by_iss
            .values()
            .any(|i| !i.prefix.is_empty() && subject.starts_with(&i.prefix))
    }
}

/// The `iss` claim before verification, only to pick the issuer's keys.
fn unverified_issuer(token: &str) -> Option<String> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(str::to_string)
}

/// Verification keys by kid (a key without `kid` is `#<index>`); only EdDSA (Ed25519),
/// ES256 (P-256) and RS256. Also the keys of `private_key_jwt` clients.
pub fn parse_jwks(text: &str) -> Result<HashMap<String, (Algorithm, DecodingKey)>, String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = HashMap::new();
    for (n, jwk) in set.keys.iter().enumerate() {
        let kid = jwk.common.key_id.clone().unwrap_or_else(|| format!("#{n}"));
        let alg = match &jwk.algorithm {
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                Algorithm::EdDSA
            }
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            _ => {
                return Err(format!(
                    "key {kid}: only Ed25519, P-256 and RSA keys are accepted"
                ))
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {kid}: {e}"))?;
        keys.insert(kid, (alg, key));
    }
    if keys.is_empty() {
        return Err("the JWKS has no keys".into());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_records_last_exactly_as_long_as_acceptance() {
        // A long-lived assertion: its age limit ends acceptance first.
        assert_eq!(
            replay_until_ms(1_000 + 86_400, 1_000, 30),
            (1_000 + MAX_ASSERTION_AGE_SECS + 31) * 1000
        );
        // A short-lived one: its exp does.
        assert_eq!(replay_until_ms(1_060, 1_000, 30), (1_060 + 31) * 1000);
    }
}
