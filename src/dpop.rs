//! DPoP (RFC 9449) at the token endpoint: a proof JWT in the `DPoP` header, signed by a
//! key whose public half it carries; latch binds the tokens it issues to that key's RFC
//! 7638 thumbprint (`cnf.jkt`). Pure: the clock is passed in, and the replay check of
//! `jti` is the caller's (it needs the store). Server nonces are stateless: an HMAC of a
//! time window under a key every node shares, so any node accepts any node's nonce.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The proof's `typ`.
pub const TYP: &str = "dpop+jwt";

/// Algorithms a proof may be signed with (asymmetric only).
pub const ALGORITHMS: [&str; 3] = ["EdDSA", "ES256", "RS256"];

/// Longest proof accepted, in bytes (a header with an RSA key is the largest).
const MAX_PROOF: usize = 8192;
/// Longest `jti` accepted, in bytes.
const MAX_JTI: usize = 256;

/// What a proof must match.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The endpoint's URL (`htu`), without query or fragment.
    pub htu: String,
    /// How old (by `iat`) a proof may be.
    pub max_age_secs: i64,
    pub leeway_secs: i64,
}

/// A valid proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// RFC 7638 thumbprint of the proof's key: the `cnf.jkt` of what is issued.
    pub jkt: String,
    pub jti: String,
    /// Until when (Unix ms) the replay record must be kept: as long as the proof could
    /// be accepted.
    pub until_ms: i64,
    /// The `nonce` claim, if any (the caller checks it when nonces are required).
    pub nonce: Option<String>,
    /// The `ath` claim, if any (RFC 9449 §4.3: required, and checked by the caller, when
    /// the proof goes with an access token).
    pub ath: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    htm: Option<String>,
    #[serde(default)]
    htu: Option<String>,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    ath: Option<String>,
}

/// Checks a DPoP proof for a request with HTTP method `method`: `typ`, an asymmetric
/// `alg` matching the public `jwk` in the header (no private members), the signature by
/// that key, `htm`, `htu` (query and fragment ignored), `iat` within `max_age_secs` (and
/// not in the future, beyond leeway), a `jti`. The error is a reason for logs and for
/// `error_description`.
pub fn verify(
    proof: &str,
    method: &str,
    rules: &Rules,
    now_secs: i64,
) -> Result<Proof, &'static str> {
    if proof.len() > MAX_PROOF {
        return Err("DPoP proof too large");
    }
    let header = jsonwebtoken::decode_header(proof).map_err(|_| "malformed DPoP proof")?;
    if header.typ.as_deref() != Some(TYP) {
        return Err("DPoP proof typ is not dpop+jwt");
    }
    let raw_jwk = raw_header_jwk(proof).ok_or("DPoP proof has no jwk")?;
    if raw_jwk.contains_key("d") || raw_jwk.contains_key("p") || raw_jwk.contains_key("k") {
        return Err("DPoP proof jwk is not a public key");
    }
    let jwk: Jwk = header.jwk.clone().ok_or("DPoP proof has no jwk")?;
    let alg = match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        _ => return Err("DPoP proof key type not supported"),
    };
    // The key decides the algorithm: `none`, HMAC and mismatches are refused.
    if header.alg != alg {
        return Err("DPoP proof alg does not match its key");
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| "DPoP proof jwk is not usable")?;
    let mut v = Validation::new(alg);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_aud = false;
    let c = jsonwebtoken::decode::<Claims>(proof, &key, &v)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => "DPoP proof signature is invalid",
            _ => "malformed DPoP proof",
        })?
        .claims;
    if c.htm.as_deref() != Some(method) {
        return Err("DPoP proof htm does not match the request");
    }
    let htu = c
        .htu
        .as_deref()
        .ok_or("DPoP proof htu does not match the request")?;
    if strip(htu) != strip(&rules.htu) {
        return Err("DPoP proof htu does not match the request");
    }
    let iat = c.iat.ok_or("DPoP proof has no iat")?;
    if iat > now_secs + rules.leeway_secs {
        return Err("DPoP proof issued in the future");
    }
    if now_secs - iat > rules.max_age_secs + rules.leeway_secs {
        return Err("DPoP proof too old");
    }
    let jti = c
        .jti
        .filter(|j| !j.is_empty())
        .ok_or("DPoP proof has no jti")?;
    if jti.len() > MAX_JTI {
        return Err("DPoP proof jti too long");
    }
    Ok(Proof {
        jkt: crate::keys::material::thumbprint(&raw_jwk),
        jti,
        until_ms: (iat + rules.max_age_secs + rules.leeway_secs + 1) * 1000,
        nonce: c.nonce,
        ath: c.ath,
    })
}

/// The `ath` a proof sent with `access_token` must carry (RFC 9449 §4.2): base64url of
/// the SHA-256 of the token's ASCII.
pub fn ath(access_token: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        access_token.as_bytes(),
    ))
}

/// A URL without its query and fragment (RFC 9449 §4.3: they are ignored in `htu`).
fn strip(url: &str) -> &str {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    &url[..end]
}

/// The header's `jwk` as JSON members, for the thumbprint and the private-member check.
fn raw_header_jwk(proof: &str) -> Option<Map<String, Value>> {
    let header = proof.split('.').next()?;
    let bytes = URL_SAFE_NO_PAD.decode(header).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    match v.get("jwk")? {
        Value::Object(m) => Some(m.clone()),
        _ => None,
    }
}

/// The server nonce of time window `window` (`now / window length`): an HMAC under a key
/// all nodes share, so it needs no state.
pub fn nonce(key: &ring::hmac::Key, window: i64) -> String {
    let tag = ring::hmac::sign(key, format!("dpop-nonce\n{window}").as_bytes());
    format!("{window}.{}", URL_SAFE_NO_PAD.encode(&tag.as_ref()[..16]))
}

/// Whether `presented` is the nonce of the current window or the one before it.
pub fn nonce_valid(key: &ring::hmac::Key, presented: &str, current_window: i64) -> bool {
    let Some((w, _)) = presented.split_once('.') else {
        return false;
    };
    let Ok(w) = w.parse::<i64>() else {
        return false;
    };
    if w != current_window && w != current_window - 1 {
        return false;
    }
    let expected = nonce(key, w);
    subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), presented.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair};
    use serde_json::json;

    fn b64(d: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(d)
    }

    fn pair() -> Ed25519KeyPair {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    fn jwk(p: &Ed25519KeyPair) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "x": b64(p.public_key().as_ref())})
    }

    fn sign(p: &Ed25519KeyPair, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        format!("{input}.{}", b64(p.sign(input.as_bytes()).as_ref()))
    }

    const NOW: i64 = 1_800_000_000;

    fn rules() -> Rules {
        Rules {
            htu: "https://latch.test/token".into(),
            max_age_secs: 60,
            leeway_secs: 5,
        }
    }

    fn claims() -> Value {
        json!({"jti": "p1", "htm": "POST", "htu": "https://latch.test/token?x=1", "iat": NOW})
    }

    #[test]
    fn a_good_proof_gives_the_thumbprint() {
        let p = pair();
        let h = json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": jwk(&p)});
        let got = verify(&sign(&p, &h, &claims()), "POST", &rules(), NOW).unwrap();
        let Value::Object(m) = jwk(&p) else {
            unreachable!()
        };
        assert_eq!(got.jkt, crate::keys::material::thumbprint(&m));
        assert_eq!(got.jti, "p1");
        assert_eq!(got.until_ms, (NOW + 66) * 1000);
    }

    #[test]
    fn hostile_proofs_are_refused_each_for_its_reason() {
        let p = pair();
        let other = pair();
        let h = json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": jwk(&p)});
        let with = |k: &str, v: Value| {
            let mut c = claims();
            c[k] = v;
            sign(&p, &h, &c)
        };
        let mut private = jwk(&p);
        private["d"] = json!("AAAA");
        let cases: Vec<(String, &str)> = vec![
            (
                sign(&other, &h, &claims()),
                "DPoP proof signature is invalid",
            ),
            (
                with("htm", json!("GET")),
                "DPoP proof htm does not match the request",
            ),
            (
                with("htu", json!("https://evil.test/token")),
                "DPoP proof htu does not match the request",
            ),
            (with("iat", json!(NOW - 600)), "DPoP proof too old"),
            (
                with("iat", json!(NOW + 600)),
                "DPoP proof issued in the future",
            ),
            (with("jti", json!("")), "DPoP proof has no jti"),
            (
                sign(
                    &p,
                    &json!({"typ": "JWT", "alg": "EdDSA", "jwk": jwk(&p)}),
                    &claims(),
                ),
                "DPoP proof typ is not dpop+jwt",
            ),
            (
                sign(&p, &json!({"typ": "dpop+jwt", "alg": "EdDSA"}), &claims()),
                "DPoP proof has no jwk",
            ),
            (
                sign(
                    &p,
                    &json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": private}),
                    &claims(),
                ),
                "DPoP proof jwk is not a public key",
            ),
            (
                sign(
                    &p,
                    &json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk(&p)}),
                    &claims(),
                ),
                "DPoP proof alg does not match its key",
            ),
            (
                sign(
                    &p,
                    &json!({"typ": "dpop+jwt", "alg": "none", "jwk": jwk(&p)}),
                    &claims(),
                ),
                "malformed DPoP proof",
            ),
        ];
        for (proof, reason) in cases {
            assert_eq!(
                verify(&proof, "POST", &rules(), NOW).err(),
                Some(reason),
                "{reason}"
            );
        }
    }

    #[test]
    fn nonces_last_two_windows_and_cannot_be_forged() {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"k");
        let other = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"other");
        let n = nonce(&key, 100);
        assert!(nonce_valid(&key, &n, 100));
        assert!(nonce_valid(&key, &n, 101));
        assert!(!nonce_valid(&key, &n, 102));
        assert!(!nonce_valid(&key, &nonce(&other, 100), 100));
        assert!(!nonce_valid(&key, "100.AAAA", 100));
        assert!(!nonce_valid(&key, "garbage", 100));
    }
}
