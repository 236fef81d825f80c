//! JWTs from the outside: decoding latch's tokens, verifying them with a JWK as a
//! resource server would, and signing tokens of the test's own (an attacker's key, HMAC
//! with a public key as secret, an IdP's assertions).

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;

pub fn b64url(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

pub fn b64url_decode(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .unwrap_or_else(|e| panic!("bad base64url {s:?}: {e}"))
}

/// Splits a compact JWS into (header, claims, signature-part).
pub fn decode_jwt(token: &str) -> (Value, Value, String) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "JWT must have three parts: {token}");
    let h: Value = serde_json::from_slice(&b64url_decode(parts[0])).expect("header JSON");
    let c: Value = serde_json::from_slice(&b64url_decode(parts[1])).expect("claims JSON");
    (h, c, parts[2].to_string())
}

/// The `kid` of a token's header.
pub fn kid_of(token: &str) -> String {
    decode_jwt(token).0["kid"]
        .as_str()
        .expect("kid in the header")
        .to_string()
}

/// The revocation seq a token is stamped with (`rsq`).
pub fn rsq(token: &str) -> u64 {
    decode_jwt(token).1["rsq"].as_u64().expect("numeric rsq")
}

pub fn encode_part(v: &Value) -> String {
    b64url(&serde_json::to_vec(v).unwrap())
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `aud` as a list whether the server uses a string or an array.
pub fn aud_list(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().expect("aud string").to_string())
            .collect(),
        other => panic!("aud is neither string nor array: {other}"),
    }
}

pub fn scope_set(v: &Value) -> BTreeSet<String> {
    v.as_str()
        .unwrap_or_else(|| panic!("scope is not a string: {v}"))
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(|s| s.to_string())
        .collect()
}

/// Verifies a server JWT against a JWK from the JWKS (as a resource server verifying
/// locally would).
pub fn verify_with_jwk(token: &str, jwk: &Value) -> bool {
    use ring::signature;
    let (signing_input, sig) = token.rsplit_once('.').unwrap();
    let sig = b64url_decode(sig);
    match jwk["kty"].as_str().unwrap() {
        "OKP" => {
            let x = b64url_decode(jwk["x"].as_str().unwrap());
            signature::UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(signing_input.as_bytes(), &sig)
                .is_ok()
        }
        "EC" => {
            let mut pt = vec![4u8];
            pt.extend(b64url_decode(jwk["x"].as_str().unwrap()));
            pt.extend(b64url_decode(jwk["y"].as_str().unwrap()));
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, pt)
                .verify(signing_input.as_bytes(), &sig)
                .is_ok()
        }
        "RSA" => {
            let n = b64url_decode(jwk["n"].as_str().unwrap());
            let e = b64url_decode(jwk["e"].as_str().unwrap());
            signature::RsaPublicKeyComponents { n, e }
                .verify(
                    &signature::RSA_PKCS1_2048_8192_SHA256,
                    signing_input.as_bytes(),
                    &sig,
                )
                .is_ok()
        }
        other => panic!("unexpected kty {other}"),
    }
}

/// An Ed25519 key pair the test controls (an attacker's key).
pub fn attacker_ed25519() -> ring::signature::Ed25519KeyPair {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
}

/// Signs header.claims with an Ed25519 key.
pub fn sign_ed25519(
    kp: &ring::signature::Ed25519KeyPair,
    header: &Value,
    claims: &Value,
) -> String {
    let input = format!("{}.{}", encode_part(header), encode_part(claims));
    let sig = kp.sign(input.as_bytes());
    format!("{input}.{}", b64url(sig.as_ref()))
}

/// HS256-signs header.claims with `secret` as the HMAC key.
pub fn sign_hs256(secret: &[u8], header: &Value, claims: &Value) -> String {
    let input = format!("{}.{}", encode_part(header), encode_part(claims));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64url(tag.as_ref()))
}
