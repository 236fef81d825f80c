//! Signing keys: states, the in-memory key ring, rotation, emergency revocation, JWKS.
//!
//! A key moves `next` (published, not signing) → `active` (signs; exactly one) →
//! `retiring` (published, verifies) → `retired` (gone); `revoked` is the exit from any
//! state. The store holds the records (private keys sealed under the KEK) with a version
//! number; every change is a compare-and-set on that version, so among racing nodes
//! exactly one performs each transition and the others follow its announcement.
//!
//! The ring that requests read is an immutable snapshot behind an `ArcSwap`: one writer
//! (this module), many lock-free readers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use jsonwebtoken::DecodingKey;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

pub mod integrity;
pub mod lifecycle;
pub mod material;
mod stored;

pub use crate::ids::Kid;
pub use material::{Kek, KeyError};
pub use stored::{KeySet, StoredKey};

/// The JWS `typ` of latch's access tokens (RFC 9068 §2.1); the signer's header is
/// rendered once per key with it.
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// Signing algorithm (SPEC §3). One configured algorithm signs; each key records its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Alg {
    #[default]
    EdDSA,
    ES256,
    RS256,
}

impl Alg {
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::EdDSA => "EdDSA",
            Alg::ES256 => "ES256",
            Alg::RS256 => "RS256",
        }
    }

    pub fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Alg::EdDSA => jsonwebtoken::Algorithm::EdDSA,
            Alg::ES256 => jsonwebtoken::Algorithm::ES256,
            Alg::RS256 => jsonwebtoken::Algorithm::RS256,
        }
    }

    /// Whether this binary can generate keys for the algorithm.
    pub fn can_generate(self) -> bool {
        self != Alg::RS256 || cfg!(feature = "rsa-keygen")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    Next,
    Active,
    Retiring,
    Retired,
    Revoked,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Next => "next",
            KeyState::Active => "active",
            KeyState::Retiring => "retiring",
            KeyState::Retired => "retired",
            KeyState::Revoked => "revoked",
        }
    }

    pub const ALL: [KeyState; 5] = [
        KeyState::Next,
        KeyState::Active,
        KeyState::Retiring,
        KeyState::Retired,
        KeyState::Revoked,
    ];
}

/// One key as stored. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub kid: Kid,
    pub alg: Alg,
    pub state: KeyState,
    pub created_at_ms: i64,
    /// When it becomes (next) or became (active, retiring) the signing key.
    pub activates_at_ms: Option<i64>,
    /// When it stopped signing.
    pub retiring_at_ms: Option<i64>,
    /// When it leaves the JWKS and stops verifying: every token it signed has expired.
    pub retires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
    /// Public JWK members (kty, crv, x, y / n, e).
    pub public_jwk: Map<String, Value>,
    /// Nonce || AES-256-GCM ciphertext of the private key, the kid as associated data.
    #[serde(with = "sealed_b64")]
    pub sealed_private: Vec<u8>,
}

/// Why a key does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    NotSigning,
    Retired,
    Revoked,
}

/// A key as requests use it for verification.
pub struct VerifyKey {
    pub kid: Kid,
    pub alg: Alg,
    pub state: KeyState,
    pub retires_at_ms: Option<i64>,
    pub decoding: DecodingKey,
}

impl VerifyKey {
    /// Whether tokens signed by this key may be active at `now_ms`. A retiring key past
    /// its time counts as retired before the rotation task has recorded it.
    pub fn check(&self, now_ms: i64) -> Result<(), KeyRefusal> {
        match self.state {
            KeyState::Active => Ok(()),
            KeyState::Retiring => match self.retires_at_ms {
                Some(t) if now_ms >= t => Err(KeyRefusal::Retired),
                _ => Ok(()),
            },
            KeyState::Next => Err(KeyRefusal::NotSigning),
            KeyState::Retired => Err(KeyRefusal::Retired),
            KeyState::Revoked => Err(KeyRefusal::Revoked),
        }
    }
}

/// The key that signs now.
pub struct Signer {
    pub kid: Kid,
    pub alg: Alg,
    pub key: material::SigningKey,
    /// The base64url JWS header (`typ`, `alg`, `kid`), the same for every token.
    pub header_b64: String,
}

/// The base64url JWS header of every access token `kid` signs: `typ`, `alg`, `kid`.
pub fn access_header_b64(alg: Alg, kid: &str) -> String {
    let header = json!({"typ": ACCESS_TOKEN_TYP, "alg": alg.as_str(), "kid": kid});
    material::b64url(header.to_string().as_bytes())
}

/// An immutable snapshot of every key.
pub struct KeyRing {
    pub version: u64,
    /// Sorted by creation time.
    pub records: Vec<KeyRecord>,
    by_kid: HashMap<Kid, Arc<VerifyKey>, foldhash::fast::RandomState>,
    /// Every key by the base64url JWS header latch signs access tokens with under it
    /// ([`access_header_b64`]): a token whose header segment is one of these, byte for
    /// byte, names that key, its algorithm and the access-token type without a parse.
    by_header: HashMap<String, Arc<VerifyKey>, foldhash::fast::RandomState>,
    signer: Option<Arc<Signer>>,
    /// The rendered JWKS document.
    pub jwks: Bytes,
    /// The furthest state known for every kid ever written (`integrity::Checked::known`):
    /// what the next manifest is built from, and what a replayed record is checked against.
    pub known: BTreeMap<Kid, KeyState>,
}

impl KeyRing {
    pub fn empty() -> KeyRing {
        KeyRing {
            version: 0,
            records: vec![],
            by_kid: HashMap::default(),
            by_header: HashMap::default(),
            signer: None,
            jwks: Bytes::from_static(br#"{"keys":[]}"#),
            known: BTreeMap::new(),
        }
    }

    /// Builds a snapshot of records that passed `integrity::check`; unseals only the
    /// active key's private half.
    pub fn build(version: u64, mut records: Vec<KeyRecord>, kek: &Kek) -> KeyRing {
        records.sort_by_key(|r| (r.created_at_ms, r.kid.clone()));
        let mut by_kid = HashMap::default();
        let mut by_header = HashMap::default();
        let mut signer = None;
        let mut published = Vec::new();
        for r in &records {
            match material::decoding_key(r.alg, &r.kid, &r.public_jwk) {
                Ok(decoding) => {
                    let key = Arc::new(VerifyKey {
                        kid: r.kid.clone(),
                        alg: r.alg,
                        state: r.state,
                        retires_at_ms: r.retires_at_ms,
                        decoding,
                    });
                    by_header.insert(access_header_b64(r.alg, &r.kid), key.clone());
                    by_kid.insert(r.kid.clone(), key);
                }
                Err(error) => tracing::error!(%error, "key record skipped"),
            }
            if matches!(
                r.state,
                KeyState::Next | KeyState::Active | KeyState::Retiring
            ) {
                let mut jwk = r.public_jwk.clone();
                jwk.insert("kid".into(), json!(r.kid));
                jwk.insert("alg".into(), json!(r.alg.as_str()));
                jwk.insert("use".into(), json!("sig"));
                published.push(Value::Object(jwk));
            }
            if r.state == KeyState::Active {
                let key = kek
                    .open(&r.kid, &r.sealed_private)
                    .and_then(|der| material::SigningKey::from_der(r.alg, &r.kid, &der));
                match key {
                    Ok(key) => {
                        signer = Some(Arc::new(Signer {
                            kid: r.kid.clone(),
                            alg: r.alg,
                            key,
                            header_b64: access_header_b64(r.alg, &r.kid),
                        }))
                    }
                    Err(error) => tracing::error!(%error, "active key cannot sign"),
                }
            }
        }
        let jwks = serde_json::to_vec(&json!({ "keys": published })).unwrap_or_default();
        let mut known = BTreeMap::new();
        for r in &records {
            integrity::advance(&mut known, &r.kid, r.state);
        }
        KeyRing {
            version,
            records,
            by_kid,
            by_header,
            signer,
            jwks: Bytes::from(jwks),
            known,
        }
    }

    pub fn get(&self, kid: &str) -> Option<&Arc<VerifyKey>> {
        self.by_kid.get(kid)
    }

    /// The key whose access-token header is exactly `header_b64` (see
    /// [`access_header_b64`]); `None` for any other header, which the caller then parses.
    pub fn by_header(&self, header_b64: &str) -> Option<&Arc<VerifyKey>> {
        self.by_header.get(header_b64)
    }

    pub fn signer(&self) -> Option<&Arc<Signer>> {
        self.signer.as_ref()
    }

    /// The `GET /admin/keys` document (times in Unix seconds).
    pub fn listing(&self) -> Value {
        let secs = |ms: Option<i64>| ms.map(|m| m.div_euclid(1000));
        let keys: Vec<Value> = self
            .records
            .iter()
            .map(|r| {
                let mut o = Map::new();
                o.insert("kid".into(), json!(r.kid));
                o.insert("alg".into(), json!(r.alg.as_str()));
                o.insert("state".into(), json!(r.state.as_str()));
                o.insert("created_at".into(), json!(r.created_at_ms.div_euclid(1000)));
                for (name, v) in [
                    ("activates_at", r.activates_at_ms),
                    ("retires_at", r.retires_at_ms),
                    ("revoked_at", r.revoked_at_ms),
                ] {
                    if let Some(s) = secs(v) {
                        o.insert(name.into(), json!(s));
                    }
                }
                Value::Object(o)
            })
            .collect();
        json!({ "keys": keys })
    }

    /// Count of keys per state, for the `latch_signing_keys` gauge.
    pub fn count(&self, state: KeyState) -> usize {
        self.records.iter().filter(|r| r.state == state).count()
    }

    /// How long the `next` key has been due to sign without signing (0 when no key is
    /// past due): a rotation that does not happen (store unwritable, every node down) for
    /// the `latch_signing_key_rotation_overdue_seconds` gauge.
    pub fn rotation_overdue_ms(&self, now: i64) -> i64 {
        self.records
            .iter()
            .filter(|r| r.state == KeyState::Next)
            .filter_map(|r| r.activates_at_ms)
            .map(|due| now.saturating_sub(due))
            .max()
            .unwrap_or(0)
            .max(0)
    }
}

/// The timing rules of the key lifecycle, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct KeyPolicy {
    pub alg: Alg,
    pub rotate_every_ms: i64,
    pub publish_ahead_ms: i64,
    /// The least time a next key is published before it may sign: the JWKS max-age plus
    /// the staleness bound (a lagging node may publish it that much later).
    pub min_published_ms: i64,
    /// How long a retiring key keeps verifying: the longest token lifetime plus leeway.
    pub retire_after_ms: i64,
}

impl KeyPolicy {
    /// How often the rotation task looks at the clock.
    pub fn tick(&self) -> Duration {
        let shortest = self
            .rotate_every_ms
            .min(self.publish_ahead_ms)
            .min(self.min_published_ms.max(1));
        let ms = (shortest / 8).clamp(50, 1000);
        Duration::from_millis(ms as u64)
    }
}

/// Generates and seals a key in the given state.
pub fn new_record(
    kek: &Kek,
    alg: Alg,
    state: KeyState,
    activates_at_ms: i64,
    now_ms: i64,
) -> Result<KeyRecord, KeyError> {
    let generated = material::generate(alg)?;
    let kid = material::thumbprint(&generated.public_jwk);
    let sealed_private = kek.seal(&kid, &generated.private_der)?;
    Ok(KeyRecord {
        kid: kid.into(),
        alg,
        state,
        created_at_ms: now_ms,
        activates_at_ms: Some(activates_at_ms),
        retiring_at_ms: None,
        retires_at_ms: None,
        revoked_at_ms: None,
        public_jwk: generated.public_jwk,
        sealed_private,
    })
}

mod sealed_b64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}
