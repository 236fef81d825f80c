//! A session's refresh token as stored, and what spending one can come to.

use serde::{Deserialize, Serialize};

use crate::revocation::Stamp;

/// A refresh token as stored. The token itself is never stored, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshRecord {
    pub sid: String,
    pub sub: String,
    pub client_id: String,
    pub scope: String,
    pub aud: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The session's revocation stamp, inherited by every refresh token of the session:
    /// a revocation of the session, subject or client after it opened kills the chain.
    pub rsq: u64,
    /// The epoch of `rsq` (absent in records from before epochs: such a record is dead).
    #[serde(default, with = "crate::revocation::epoch_hex")]
    pub rse: u64,
    pub issued_at_ms: i64,
    pub expires_at_ms: i64,
    /// The DPoP key (RFC 7638 thumbprint) the session was opened with: every refresh
    /// must carry a proof by that key (RFC 9449 §5). Absent: not bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jkt: Option<String>,
    /// The client certificate (`x5t#S256`, RFC 8705 §3.1) the session was opened with
    /// over mutual TLS: every refresh must be authenticated by that certificate. Absent:
    /// not bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x5t_s256: Option<String>,
    /// HMAC-SHA256 (key derived from the KEK) over the token hash and this record's JSON
    /// without this field (`sessions::seal`): every other field, present or future, is
    /// covered, and a record cannot be moved to another token's hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl RefreshRecord {
    /// What revocations are matched against: the session, its subject and client, at
    /// the session's stamp.
    pub fn stamp(&self) -> Stamp<'_> {
        Stamp {
            jti: "",
            sid: Some(&self.sid),
            sub: &self.sub,
            client_id: &self.client_id,
            rsq: self.rsq,
            rse: self.rse,
            chain_clients: &[],
            chain_jtis: &[],
        }
    }
}

/// The outcome of spending a refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
// Returned by value once per refresh and never stored: boxing the record would add an
// allocation to the reuse path for nothing.
#[allow(clippy::large_enum_variant)]
pub enum Rotation {
    /// It was live; it is now spent and the new one is live.
    Rotated,
    /// It had been spent before (or concurrently, by a request that won): reuse.
    Reused(RefreshRecord),
    /// No such token (never issued, or expired and gone).
    Unknown,
}
