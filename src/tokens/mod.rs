//! Access tokens (RFC 9068 JWT profile): claims, issuance, and the decision whether a
//! presented token is active.
//!
//! **Architecture Invariant:** no IO and no clock here. Callers pass the key ring, the
//! revocation table and `now`; the answer is a [`Decision`], and "inactive" is a decision
//! with a [`Reason`], never an error.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use std::sync::Arc;

use crate::keys::{KeyRefusal, KeyRing, Signer};
use crate::revocation::{Stamp, Table, Verdict};

/// `typ` of every access token (RFC 9068 §2.1).
pub use crate::keys::ACCESS_TOKEN_TYP as TYP;

pub mod cache;
pub mod introspection;

use cache::{Verified, VerifiedCache};

/// Longest token text worth parsing; ours are far shorter. Longer is malformed.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The claims latch puts in an access token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    pub client_id: String,
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Revocation stamp: the issuing node's `applied` watermark (SPEC §5).
    pub rsq: u64,
    /// The store epoch of `rsq`, 16 hex digits. Tokens without it (issued before epochs
    /// existed) are inactive.
    #[serde(default, with = "crate::revocation::epoch_hex")]
    pub rse: u64,
    /// Delegation chain, oldest first: the `client_id` of every token this one was
    /// exchanged from (RFC 8693 delegation), so revoking any of those clients revokes it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dcl: Vec<String>,
    /// The `jti` of every token in the chain, so RFC 7009 revocation of a parent kills
    /// what was derived from it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub djt: Vec<String>,
    /// The version of the client's authorization contract the token was issued under
    /// (0: none recorded). A token of an older version is checked against the contract
    /// in force at every introspection; one that exceeds it is inactive.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cv: u64,
    /// The just-in-time elevation grant that lets the token carry a scope its client's
    /// contract does not: checked at every introspection (active now, same client, the
    /// scope still elevatable); `exp` is never after the grant's end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    /// Where the token's status is published (Token Status List): its list and index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// What the token is bound to (RFC 7800 `cnf`): a DPoP key or a client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Cnf>,
}

/// The `cnf` of a bound token: exactly one binding, never both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Cnf {
    /// DPoP (RFC 9449 §6.1): the RFC 7638 thumbprint of the proof key.
    Jkt { jkt: String },
    /// Mutual TLS (RFC 8705 §3.1): base64url SHA-256 of the client's leaf certificate
    /// (DER), from the handshake of the request that issued the token.
    X5t {
        #[serde(rename = "x5t#S256")]
        x5t_s256: String,
    },
}

impl Cnf {
    /// The DPoP key thumbprint, for a DPoP-bound token.
    pub fn jkt(&self) -> Option<&str> {
        match self {
            Cnf::Jkt { jkt } => Some(jkt),
            Cnf::X5t { .. } => None,
        }
    }

    /// The certificate thumbprint, for a certificate-bound token.
    pub fn x5t_s256(&self) -> Option<&str> {
        match self {
            Cnf::X5t { x5t_s256 } => Some(x5t_s256),
            Cnf::Jkt { .. } => None,
        }
    }

    /// The `token_type` of a token bound this way (RFC 9449 §5: `DPoP`; RFC 8705 keeps
    /// `Bearer`).
    pub fn token_type(cnf: Option<&Cnf>) -> &'static str {
        match cnf {
            Some(Cnf::Jkt { .. }) => "DPoP",
            _ => "Bearer",
        }
    }
}

/// The `status` claim of an access token (draft §6.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub status_list: StatusRef,
}

/// Where a token's status is: index `idx` of the list at `uri`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRef {
    pub idx: u64,
    pub uri: String,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl AccessClaims {
    pub fn stamp(&self) -> Stamp<'_> {
        Stamp {
            jti: &self.jti,
            sid: self.sid.as_deref(),
            sub: &self.sub,
            client_id: &self.client_id,
            rsq: self.rsq,
            rse: self.rse,
            chain_clients: &self.dcl,
            chain_jtis: &self.djt,
        }
    }
}

/// Why a token is not active. Goes to metrics and debug logs, never to the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Malformed,
    TooLarge,
    UnknownKey,
    KeyNotSigning,
    RetiredKey,
    RevokedKey,
    WrongAlgorithm,
    WrongType,
    BadSignature,
    WrongIssuer,
    Expired,
    NotYetValid,
    Revoked,
    /// The stamp's epoch was closed below it, or it has none: the store lost (or never
    /// had) the history the token was stamped from.
    StaleEpoch,
    /// The stamp is above what this node could confirm, even after waiting for the store.
    StampAhead,
    Audience,
    UnknownClient,
    /// The client's contract in force no longer allows what the token carries.
    ContractNarrowed,
    /// The client's contract is suspended.
    ContractSuspended,
    /// The token's elevation grant was revoked (or denied, or cannot be read).
    GrantRevoked,
    /// The token's elevation grant is not active now: it ended, or it is unknown here.
    GrantEnded,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::TooLarge => "too_large",
            Reason::UnknownKey => "unknown_key",
            Reason::KeyNotSigning => "key_not_signing",
            Reason::RetiredKey => "retired_key",
            Reason::RevokedKey => "revoked_key",
            Reason::WrongAlgorithm => "wrong_algorithm",
            Reason::WrongType => "wrong_type",
            Reason::BadSignature => "bad_signature",
            Reason::WrongIssuer => "wrong_issuer",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::Revoked => "revoked",
            Reason::StaleEpoch => "stale_epoch",
            Reason::StampAhead => "stamp_ahead",
            Reason::ContractNarrowed => "contract_narrowed",
            Reason::ContractSuspended => "contract_suspended",
            Reason::GrantRevoked => "grant_revoked",
            Reason::GrantEnded => "grant_ended",
            Reason::Audience => "audience",
            Reason::UnknownClient => "unknown_client",
        }
    }
}

/// Everything a decision depends on.
pub struct Verifier<'a> {
    pub ring: &'a KeyRing,
    pub table: &'a Table,
    pub issuer: &'a str,
    pub leeway_secs: i64,
    pub now_ms: i64,
    /// Verified tokens; `None` verifies every time.
    pub cache: Option<&'a VerifiedCache>,
}

impl Verifier<'_> {
    /// Signature, key state, type, issuer and time: whether latch issued this token and
    /// it can be alive now. Revocation is [`Verifier::decide`]'s next step.
    pub fn authentic(&self, token: &str) -> Result<Arc<AccessClaims>, Reason> {
        if let Some(hit) = self.cache.and_then(|c| c.get(token)) {
            // The signature and claims stand; what may have changed is checked again.
            self.key_usable(&hit.kid)?;
            self.in_time(&hit.claims)?;
            return Ok(hit.claims.clone());
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(Reason::TooLarge);
        }
        // JWS compact form: header.payload.signature (base64url has no '.', so a fourth
        // part fails the payload's decoding below).
        let (signing_input, signature) = token.rsplit_once('.').ok_or(Reason::Malformed)?;
        let (header_b64, payload_b64) = signing_input.split_once('.').ok_or(Reason::Malformed)?;
        let key = match self.ring.by_header(header_b64) {
            // The header latch writes for this key, byte for byte: kid, algorithm and type
            // are known without parsing it.
            Some(key) => self.usable(key)?,
            None => self.parsed_header_key(token)?,
        };
        // The key's algorithm, never the header's (checked equal above when parsed).
        let verified = jsonwebtoken::crypto::verify(
            signature,
            signing_input.as_bytes(),
            &key.decoding,
            key.alg.jwt(),
        )
        .map_err(|_| Reason::Malformed)?;
        if !verified {
            return Err(Reason::BadSignature);
        }
        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| Reason::Malformed)?;
        let claims: AccessClaims =
            serde_json::from_slice(&payload).map_err(|_| Reason::Malformed)?;
        let claims = Arc::new(claims);
        let kid = &*key.kid;
        if claims.iss != self.issuer {
            return Err(Reason::WrongIssuer);
        }
        self.in_time(&claims)?;
        if let Some(cache) = self.cache {
            let verified = Verified {
                kid: kid.into(),
                claims: claims.clone(),
            };
            cache.insert(token, verified, self.now_ms.div_euclid(1000));
        }
        Ok(claims)
    }

    /// The key of a header that is not exactly latch's own for any key (another encoding
    /// of the same fields, or not latch's at all): parsed, then held to what latch signs.
    fn parsed_header_key(&self, token: &str) -> Result<&crate::keys::VerifyKey, Reason> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Reason::Malformed)?;
        let kid = header.kid.as_deref().ok_or(Reason::UnknownKey)?;
        let key = self.key_usable(kid)?;
        // Only the algorithm recorded with the key: no `none`, no HMAC with a public key.
        if header.alg != key.alg.jwt() {
            return Err(Reason::WrongAlgorithm);
        }
        if !header.typ.as_deref().is_some_and(is_access_token_type) {
            return Err(Reason::WrongType);
        }
        Ok(key)
    }

    /// The key named `kid`, if tokens it signed may be active now.
    fn key_usable(&self, kid: &str) -> Result<&crate::keys::VerifyKey, Reason> {
        self.usable(self.ring.get(kid).ok_or(Reason::UnknownKey)?)
    }

    /// `key`, if tokens it signed may be active now.
    fn usable<'k>(
        &self,
        key: &'k crate::keys::VerifyKey,
    ) -> Result<&'k crate::keys::VerifyKey, Reason> {
        key.check(self.now_ms).map_err(|r| match r {
            KeyRefusal::NotSigning => Reason::KeyNotSigning,
            KeyRefusal::Retired => Reason::RetiredKey,
            KeyRefusal::Revoked => Reason::RevokedKey,
        })?;
        Ok(key)
    }

    /// `exp` and `nbf`, with leeway.
    fn in_time(&self, claims: &AccessClaims) -> Result<(), Reason> {
        let now = self.now_ms.div_euclid(1000);
        if now >= claims.exp.saturating_add(self.leeway_secs) {
            return Err(Reason::Expired);
        }
        if now.saturating_add(self.leeway_secs) < claims.nbf {
            return Err(Reason::NotYetValid);
        }
        Ok(())
    }

    /// [`Verifier::decide`] for claims whose signature is not at hand (a status-list
    /// record of a token latch signed with `kid`): key state, time, revocation.
    pub fn judge(&self, kid: &str, claims: &AccessClaims) -> Result<(), Reason> {
        self.key_usable(kid)?;
        self.in_time(claims)?;
        self.not_revoked(claims)
    }

    /// The revocation table's verdict on `claims`' stamp, as a decision.
    fn not_revoked(&self, claims: &AccessClaims) -> Result<(), Reason> {
        match self.table.verdict(&claims.stamp()) {
            Verdict::Live => Ok(()),
            Verdict::Revoked => Err(Reason::Revoked),
            Verdict::StaleEpoch => Err(Reason::StaleEpoch),
            Verdict::StampAhead => Err(Reason::StampAhead),
        }
    }

    /// The full decision: authentic and not revoked.
    pub fn decide(&self, token: &str) -> Result<Arc<AccessClaims>, Reason> {
        let claims = self.authentic(token)?;
        self.not_revoked(&claims)?;
        Ok(claims)
    }
}

/// RFC 9068 §4: `at+jwt`, or the full media type, case-insensitively.
fn is_access_token_type(typ: &str) -> bool {
    typ.eq_ignore_ascii_case(TYP) || typ.eq_ignore_ascii_case("application/at+jwt")
}

/// Signs claims with the active key: a JWS compact serialization (RFC 7515 §7.1) of the
/// signer's fixed header and the claims, signed by ring.
///
/// Hand-written on purpose, not `jsonwebtoken::encode`: that takes the private key as DER
/// and ring parses it again on every token (for Ed25519 also re-deriving the public key),
/// where the [`Signer`] holds a key parsed once per key-ring snapshot and a header encoded
/// once. `cargo bench --bench tokens -- sign` measures both (`sign/*` against
/// `sign_jsonwebtoken/*`); the figures are in docs/PERFORMANCE.md.
pub fn sign(signer: &Signer, claims: &AccessClaims) -> Result<String, crate::keys::KeyError> {
    let payload =
        serde_json::to_vec(claims).map_err(|e| crate::keys::KeyError::Generate(e.to_string()))?;
    let mut token = String::with_capacity(signer.header_b64.len() + payload.len() * 2 + 100);
    token.push_str(&signer.header_b64);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
    let signature = signer.key.sign(token.as_bytes())?;
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut token);
    Ok(token)
}

/// 128 random bits, base64url: token ids, session ids.
pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    // SystemRandom fails only if the OS has no randomness, where nothing is safe anyway.
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("operating system randomness");
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
pub(crate) mod tests;
