//! Key material: generation, the public JWK and its RFC 7638 thumbprint (the `kid`),
//! jsonwebtoken keys, and sealing private keys under the key-encryption key (KEK).
//!
//! All of it is ring, except RSA key generation, which ring does not offer: with the
//! `rsa-keygen` feature the `rsa` crate makes the key pair and nothing else.

use std::io::Write;
use std::path::Path;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::DecodingKey;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use ring::{hkdf, hmac};
use serde_json::{json, Map, Value};

use super::Alg;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key generation failed: {0}")]
    Generate(String),
    #[error("LATCH_KEK is not valid: {0}")]
    BadKek(String),
    #[error("redis mode needs LATCH_KEK (base64 of 32 random bytes)")]
    KekRequired,
    #[error("cannot read or create the KEK file {path}: {reason}")]
    KekFile { path: String, reason: String },
    #[error("cannot decrypt the private key of {kid}: wrong LATCH_KEK, or a damaged record")]
    Unseal { kid: String },
    #[error("key {kid} has an unusable public key: {reason}")]
    BadPublic { kid: String, reason: String },
}

/// A freshly generated key pair.
pub struct Generated {
    /// Public JWK members (kty, crv, x, y / n, e); no kid, alg or use.
    pub public_jwk: Map<String, Value>,
    /// PKCS#8 (Ed25519, P-256) or PKCS#1 (RSA) DER, as jsonwebtoken's `from_*_der` take it.
    pub private_der: Vec<u8>,
}

pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Generates a key pair for `alg`.
pub fn generate(alg: Alg) -> Result<Generated, KeyError> {
    let rng = SystemRandom::new();
    let fail = |e: ring::error::Unspecified| KeyError::Generate(e.to_string());
    match alg {
        Alg::EdDSA => {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(fail)?;
            let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
                .map_err(|e| KeyError::Generate(e.to_string()))?;
            let jwk =
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64url(pair.public_key().as_ref())});
            Ok(Generated {
                public_jwk: into_map(jwk),
                private_der: pkcs8.as_ref().to_vec(),
            })
        }
        Alg::ES256 => {
            let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).map_err(fail)?;
            let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng)
                .map_err(|e| KeyError::Generate(e.to_string()))?;
            // Uncompressed point: 0x04 || x (32) || y (32).
            let point = pair.public_key().as_ref();
            let jwk = json!({
                "kty": "EC", "crv": "P-256",
                "x": b64url(&point[1..33]), "y": b64url(&point[33..65]),
            });
            Ok(Generated {
                public_jwk: into_map(jwk),
                private_der: pkcs8.as_ref().to_vec(),
            })
        }
        Alg::RS256 => generate_rsa(),
    }
}

#[cfg(feature = "rsa-keygen")]
fn generate_rsa() -> Result<Generated, KeyError> {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::traits::PublicKeyParts;

    let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048)
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    let der = key
        .to_pkcs1_der()
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    let jwk = json!({
        "kty": "RSA",
        "n": b64url(&key.n().to_bytes_be()),
        "e": b64url(&key.e().to_bytes_be()),
    });
    Ok(Generated {
        public_jwk: into_map(jwk),
        private_der: der.as_bytes().to_vec(),
    })
}

#[cfg(not(feature = "rsa-keygen"))]
fn generate_rsa() -> Result<Generated, KeyError> {
    Err(KeyError::Generate(
        "RS256 key generation needs the rsa-keygen feature".into(),
    ))
}

fn into_map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!("built from an object literal"),
    }
}

/// RFC 7638 JWK thumbprint (SHA-256, base64url): the required members in lexicographic
/// order, no whitespace. Used as the `kid`, so a kid names exactly one public key.
pub fn thumbprint(jwk: &Map<String, Value>) -> String {
    let members: &[&str] = match jwk.get("kty").and_then(Value::as_str) {
        Some("OKP") => &["crv", "kty", "x"],
        Some("EC") => &["crv", "kty", "x", "y"],
        _ => &["e", "kty", "n"],
    };
    let mut canonical = String::from("{");
    for (i, m) in members.iter().enumerate() {
        if i > 0 {
            canonical.push(',');
        }
        let v = jwk.get(*m).and_then(Value::as_str).unwrap_or("");
        canonical.push_str(&format!("{}:{}", json!(m), json!(v)));
    }
    canonical.push('}');
    b64url(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()).as_ref())
}

/// The verification key for a stored public JWK.
pub fn decoding_key(
    alg: Alg,
    kid: &str,
    jwk: &Map<String, Value>,
) -> Result<DecodingKey, KeyError> {
    let bad = |reason: &str| KeyError::BadPublic {
        kid: kid.to_string(),
        reason: reason.to_string(),
    };
    let member = |m: &str| -> Result<Vec<u8>, KeyError> {
        let s = jwk.get(m).and_then(Value::as_str).ok_or_else(|| bad(m))?;
        URL_SAFE_NO_PAD.decode(s).map_err(|_| bad(m))
    };
    match alg {
        Alg::EdDSA => Ok(DecodingKey::from_ed_der(&member("x")?)),
        Alg::ES256 => {
            let mut point = vec![0x04];
            point.extend(member("x")?);
            point.extend(member("y")?);
            Ok(DecodingKey::from_ec_der(&point))
        }
        Alg::RS256 => Ok(DecodingKey::from_rsa_raw_components(
            &member("n")?,
            &member("e")?,
        )),
    }
}

/// A parsed private key, kept for the life of the ring so signing does not re-parse DER
/// (and, for Ed25519, re-derive the public key) on every token.
pub enum SigningKey {
    Ed25519(Ed25519KeyPair),
    Es256(EcdsaKeyPair),
    Rs256(ring::rsa::KeyPair),
}

impl SigningKey {
    /// Parses unsealed private DER (PKCS#8 for Ed25519 and P-256, PKCS#1 for RSA).
    pub fn from_der(alg: Alg, kid: &str, der: &[u8]) -> Result<SigningKey, KeyError> {
        let bad = |e: &dyn std::fmt::Display| KeyError::BadPublic {
            kid: kid.to_string(),
            reason: format!("private key: {e}"),
        };
        Ok(match alg {
            Alg::EdDSA => {
                SigningKey::Ed25519(Ed25519KeyPair::from_pkcs8(der).map_err(|e| bad(&e))?)
            }
            Alg::ES256 => SigningKey::Es256(
                EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    der,
                    &SystemRandom::new(),
                )
                .map_err(|e| bad(&e))?,
            ),
            Alg::RS256 => {
                SigningKey::Rs256(ring::rsa::KeyPair::from_der(der).map_err(|e| bad(&e))?)
            }
        })
    }

    /// The JWS signature of `message` (RFC 7518: raw Ed25519, fixed-size r||s for ES256,
    /// PKCS#1 v1.5 with SHA-256 for RS256).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let failed = |_| KeyError::Generate("signing failed".into());
        match self {
            SigningKey::Ed25519(k) => Ok(k.sign(message).as_ref().to_vec()),
            SigningKey::Es256(k) => Ok(k
                .sign(&SystemRandom::new(), message)
                .map_err(failed)?
                .as_ref()
                .to_vec()),
            SigningKey::Rs256(k) => {
                let mut sig = vec![0u8; k.public().modulus_len()];
                k.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    message,
                    &mut sig,
                )
                .map_err(failed)?;
                Ok(sig)
            }
        }
    }
}

/// HKDF `info` labels of the MAC keys derived from the KEK. A new label (`v2`) is a new,
/// unrelated key: records MAC'd under one never verify under another.
pub const KEY_RECORD_MAC_INFO: &[u8] = b"latch key-record mac v1";
pub const REFRESH_RECORD_MAC_INFO: &[u8] = b"latch refresh-record mac v1";
pub const STATUS_RECORD_MAC_INFO: &[u8] = b"latch status-record mac v1";

/// The key-encryption key: AES-256-GCM over private keys at rest, the kid as associated
/// data so a sealed key cannot be moved to another record. It also yields, through HKDF,
/// the HMAC-SHA256 keys that authenticate stored key, refresh-token and status-list
/// records: whoever can write to the store but does not hold the KEK cannot forge any.
pub struct Kek {
    key: LessSafeKey,
    key_record_mac: hmac::Key,
    refresh_record_mac: hmac::Key,
    status_record_mac: hmac::Key,
}

/// HKDF-SHA256 (ring) from the KEK to an HMAC-SHA256 key, separated by `info`.
fn derive_mac_key(kek: &[u8], info: &'static [u8]) -> hmac::Key {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"latch").extract(kek);
    let infos = [info];
    let okm = prk
        .expand(&infos, hmac::HMAC_SHA256)
        .expect("HMAC-SHA256 key length is within HKDF-SHA256's limit");
    hmac::Key::from(okm)
}

impl Kek {
    pub fn from_bytes(bytes: &[u8]) -> Result<Kek, KeyError> {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| KeyError::BadKek("must decode to exactly 32 bytes".into()))?;
        Ok(Kek {
            key: LessSafeKey::new(unbound),
            key_record_mac: derive_mac_key(bytes, KEY_RECORD_MAC_INFO),
            refresh_record_mac: derive_mac_key(bytes, REFRESH_RECORD_MAC_INFO),
            status_record_mac: derive_mac_key(bytes, STATUS_RECORD_MAC_INFO),
        })
    }

    /// The key that authenticates stored key records (and the key-set manifest).
    pub fn key_record_mac(&self) -> &hmac::Key {
        &self.key_record_mac
    }

    /// The key that authenticates stored refresh-token records.
    pub fn refresh_record_mac(&self) -> &hmac::Key {
        &self.refresh_record_mac
    }

    /// The key that authenticates stored status-list records.
    pub fn status_record_mac(&self) -> &hmac::Key {
        &self.status_record_mac
    }

    /// Parses base64 (standard or URL-safe, padding optional) of 32 bytes.
    pub fn from_base64(text: &str) -> Result<Kek, KeyError> {
        let text = text.trim();
        let bytes = STANDARD
            .decode(text)
            .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))
            .map_err(|_| KeyError::BadKek("not base64".into()))?;
        Kek::from_bytes(&bytes)
    }

    /// `LATCH_KEK` if set; otherwise, when `data_dir` is given (embedded mode), the `kek`
    /// file there, created with mode 0600 on first start.
    pub fn load(env_value: Option<String>, data_dir: Option<&Path>) -> Result<Kek, KeyError> {
        if let Some(v) = env_value.filter(|v| !v.trim().is_empty()) {
            return Kek::from_base64(&v);
        }
        let Some(dir) = data_dir else {
            return Err(KeyError::KekRequired);
        };
        let path = dir.join("kek");
        let file_err = |reason: String| KeyError::KekFile {
            path: path.display().to_string(),
            reason,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Kek::from_base64(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map_err(|e| file_err(e.to_string()))?;
                let mut bytes = [0u8; 32];
                SystemRandom::new()
                    .fill(&mut bytes)
                    .map_err(|_| file_err("no randomness".into()))?;
                write_private_file(&path, STANDARD.encode(bytes).as_bytes())
                    .map_err(|e| file_err(e.to_string()))?;
                Kek::from_bytes(&bytes)
            }
            Err(e) => Err(file_err(e.to_string())),
        }
    }

    pub fn seal(&self, kid: &str, plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| KeyError::Generate("no randomness".into()))?;
        let mut buf = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(kid.as_bytes()),
                &mut buf,
            )
            .map_err(|_| KeyError::Generate("seal failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend(buf);
        Ok(out)
    }

    pub fn open(&self, kid: &str, sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
        let unseal = || KeyError::Unseal {
            kid: kid.to_string(),
        };
        if sealed.len() < NONCE_LEN {
            return Err(unseal());
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| unseal())?;
        let mut buf = ct.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(kid.as_bytes()), &mut buf)
            .map_err(|_| unseal())?;
        Ok(plain.to_vec())
    }
}

fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trips_and_binds_the_kid() {
        let kek = Kek::from_bytes(&[7u8; 32]).unwrap();
        let sealed = kek.seal("kid-1", b"private").unwrap();
        assert_eq!(kek.open("kid-1", &sealed).unwrap(), b"private");
        assert!(kek.open("kid-2", &sealed).is_err());
        let other = Kek::from_bytes(&[8u8; 32]).unwrap();
        assert!(other.open("kid-1", &sealed).is_err());
    }

    #[test]
    fn kek_file_is_created_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = Kek::load(None, Some(dir.path())).unwrap();
        let mode = std::fs::metadata(dir.path().join("kek"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = Kek::load(None, Some(dir.path())).unwrap();
        let sealed = a.seal("k", b"x").unwrap();
        assert_eq!(b.open("k", &sealed).unwrap(), b"x");
        assert!(matches!(Kek::load(None, None), Err(KeyError::KekRequired)));
        assert!(Kek::from_base64("c2hvcnQ=").is_err());
    }

    #[test]
    fn mac_keys_are_derived_per_purpose_and_per_kek() {
        let a = Kek::from_bytes(&[7u8; 32]).unwrap();
        let b = Kek::from_bytes(&[7u8; 32]).unwrap();
        let other = Kek::from_bytes(&[8u8; 32]).unwrap();
        let tag = hmac::sign(a.key_record_mac(), b"record");
        assert!(hmac::verify(b.key_record_mac(), b"record", tag.as_ref()).is_ok());
        assert!(hmac::verify(b.refresh_record_mac(), b"record", tag.as_ref()).is_err());
        assert!(hmac::verify(other.key_record_mac(), b"record", tag.as_ref()).is_err());
    }

    #[test]
    fn thumbprint_matches_rfc7638_example() {
        // RFC 7638 §3.1 example key.
        let jwk: Map<String, Value> = serde_json::from_str(r#"{"kty":"RSA","e":"AQAB","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"}"#).unwrap();
        assert_eq!(
            thumbprint(&jwk),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }
}
