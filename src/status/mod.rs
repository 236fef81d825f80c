//! Token Status List (draft-ietf-oauth-status-list): the vocabulary of latch's lists, no IO.
//!
//! Every access token carries `status.status_list {idx, uri}`. A node issues into its own
//! open list (random 64-bit id, so nodes never coordinate per token) and never reuses an
//! index. The store keeps one [`Record`] per index: what a revocation can match (the
//! token's claims without the signature, and its `kid`). Any node renders any list by
//! deciding each record against its own revocation table; an index without a record is
//! `INVALID` (no token was answered with it: a token is answered only once its record is
//! durable), so a lost record fails closed.
//!
//! Here: list ids and metadata, the record, and the encoding of a list (one bit per
//! index, least significant bit first, zlib-compressed, base64url) as a
//! `statuslist+jwt`'s claims.

use std::io::Write;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use crate::tokens::{AccessClaims, Status, StatusRef};

/// `typ` of a Status List Token (draft §5.1).
pub const TYP: &str = "statuslist+jwt";
/// Its media type (draft §14).
pub const MEDIA_TYPE: &str = "application/statuslist+jwt";
/// Bits per status: `VALID` 0 / `INVALID` 1.
pub const BITS: u8 = 1;
/// The largest list a node may be configured to open (bits; 16 Mi indices, 2 MiB raw).
pub const MAX_LIST_SIZE: u64 = 1 << 24;

/// A list's id: 64 random bits, 16 lowercase hex digits in URIs and keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListId(pub u64);

impl ListId {
    /// A fresh random id.
    pub fn random() -> ListId {
        use ring::rand::{SecureRandom, SystemRandom};
        let mut b = [0u8; 8];
        SystemRandom::new()
            .fill(&mut b)
            .expect("operating system randomness");
        ListId(u64::from_be_bytes(b))
    }

    /// Exactly 16 lowercase hex digits, else `None` (a path segment from a caller).
    pub fn parse(s: &str) -> Option<ListId> {
        if s.len() != 16
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(ListId)
    }
}

impl std::fmt::Display for ListId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// What the store keeps about a list besides its records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListMeta {
    #[serde(with = "hex_id")]
    pub id: ListId,
    /// Number of indices (bits) the list has.
    pub size: u64,
    /// When it was opened, Unix ms.
    pub created_ms: i64,
    /// Tokens are issued into it until this instant (Unix ms), no later.
    pub issue_until_ms: i64,
    /// Every token of the list has expired by then (Unix ms): the list and its records
    /// are dropped.
    pub expires_ms: i64,
}

mod hex_id {
    use super::ListId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &ListId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&id.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ListId, D::Error> {
        let s = String::deserialize(d)?;
        ListId::parse(&s).ok_or_else(|| serde::de::Error::custom("list id"))
    }
}

impl ListMeta {
    /// A list opened at `now_ms` with `size` indices, issued into for `window_ms`, whose
    /// tokens live at most `token_life_ms` (the access-token cap plus leeway).
    pub fn open(
        id: ListId,
        size: u64,
        now_ms: i64,
        window_ms: i64,
        token_life_ms: i64,
    ) -> ListMeta {
        ListMeta {
            id,
            size,
            created_ms: now_ms,
            issue_until_ms: now_ms + window_ms,
            expires_ms: now_ms + window_ms + token_life_ms,
        }
    }
}

/// What the store keeps for one index: the claims a revocation can match (everything the
/// token says, without its `status` and signature) and the key that signed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub kid: String,
    #[serde(rename = "c")]
    pub claims: AccessClaims,
}

impl Record {
    pub fn new(kid: &str, claims: &AccessClaims) -> Record {
        let mut claims = claims.clone();
        claims.status = None;
        Record {
            kid: kid.to_string(),
            claims,
        }
    }

    /// The stored form of this record at `idx` of `list`: `<mac>.<json>`, the MAC an
    /// HMAC-SHA256 (base64url) under `key` over the list id, the index and the JSON. A
    /// store writer without the KEK can then neither plant a record nor change one (give
    /// a revoked token's index another subject or `jti`) nor move one to another index.
    pub fn seal(&self, key: &hmac::Key, list: ListId, idx: u64) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        let tag = hmac::sign(key, mac_input(list, idx, &json).as_bytes());
        let mut out = URL_SAFE_NO_PAD.encode(tag.as_ref());
        out.push('.');
        out.push_str(&json);
        out
    }

    /// The record stored at `idx` of `list`, if latch wrote it there (its MAC verifies,
    /// constant-time, ring); else why not. Either way not a record: the index reads
    /// INVALID.
    pub fn open(key: &hmac::Key, list: ListId, idx: u64, stored: &str) -> Result<Record, Rejected> {
        let (tag, json) = stored.split_once('.').ok_or(Rejected::Unauthenticated)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| Rejected::Unauthenticated)?;
        hmac::verify(key, mac_input(list, idx, json).as_bytes(), &tag)
            .map_err(|_| Rejected::BadMac)?;
        serde_json::from_str(json).map_err(|_| Rejected::Malformed)
    }
}

/// Why a stored status-list record is not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// No MAC (written by a latch before records were authenticated, or by someone else).
    Unauthenticated,
    /// A MAC that does not verify for this list and index.
    BadMac,
    /// Authentic but not a record this version reads.
    Malformed,
}

impl Rejected {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::Unauthenticated => "unauthenticated",
            Rejected::BadMac => "bad_mac",
            Rejected::Malformed => "malformed",
        }
    }
}

fn mac_input(list: ListId, idx: u64, json: &str) -> String {
    format!("latch status record v1\n{list}\n{idx}\n{json}")
}

/// A list's statuses, one bit per index, every bit `INVALID` until set valid.
pub struct Bits {
    bytes: Vec<u8>,
}

impl Bits {
    /// `size` indices, all INVALID.
    pub fn all_invalid(size: u64) -> Bits {
        let n = size.div_ceil(8) as usize;
        let mut bytes = vec![0xff; n];
        // Bits past `size` in the last byte are 0 (VALID): no token has them.
        let rem = size % 8;
        if rem != 0 {
            if let Some(last) = bytes.last_mut() {
                *last = (1u8 << rem) - 1;
            }
        }
        Bits { bytes }
    }

    /// Index `idx` is VALID (0). Bits are numbered least significant first (draft §4.1).
    pub fn set_valid(&mut self, idx: u64) {
        if let Some(b) = self.bytes.get_mut((idx / 8) as usize) {
            *b &= !(1u8 << (idx % 8));
        }
    }

    /// The status of `idx`: 0 VALID, 1 INVALID (past the end: INVALID).
    pub fn get(&self, idx: u64) -> u8 {
        self.bytes
            .get((idx / 8) as usize)
            .map_or(1, |b| (b >> (idx % 8)) & 1)
    }

    /// `lst`: the bytes zlib-compressed (RFC 1950, best compression), base64url.
    pub fn lst(&self) -> String {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        // Writing to a Vec cannot fail.
        let _ = z.write_all(&self.bytes);
        let compressed = z.finish().unwrap_or_default();
        URL_SAFE_NO_PAD.encode(compressed)
    }
}

/// The claims of a Status List Token (draft §5.1): `sub` the list's URI, `iat`, `exp`,
/// `ttl`, `status_list {bits, lst}`.
pub fn list_claims(iss: &str, uri: &str, iat: i64, exp: i64, ttl_secs: u64, lst: &str) -> Value {
    json!({
        "iss": iss,
        "sub": uri,
        "iat": iat,
        "exp": exp,
        "ttl": ttl_secs,
        "status_list": { "bits": BITS, "lst": lst },
    })
}

/// A Status List Token: `claims` as a JWS signed by `signer`, header `typ`
/// `statuslist+jwt`, the signer's `alg` and `kid`.
pub fn sign(signer: &crate::keys::Signer, claims: &Value) -> Result<String, crate::keys::KeyError> {
    let header = json!({"typ": TYP, "alg": signer.alg.as_str(), "kid": signer.kid});
    let payload = claims.to_string();
    let mut jws = String::with_capacity(payload.len() * 4 / 3 + 200);
    URL_SAFE_NO_PAD.encode_string(header.to_string(), &mut jws);
    jws.push('.');
    URL_SAFE_NO_PAD.encode_string(payload, &mut jws);
    let signature = signer.key.sign(jws.as_bytes())?;
    jws.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut jws);
    Ok(jws)
}

/// Decodes `lst` back to bytes (tests, and the size report).
pub fn decode_lst(lst: &str) -> Option<Vec<u8>> {
    use std::io::Read;
    let compressed = URL_SAFE_NO_PAD.decode(lst).ok()?;
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(&compressed[..])
        .read_to_end(&mut out)
        .ok()?;
    Some(out)
}

#[cfg(test)]
mod tests;
