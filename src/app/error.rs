//! Why the node refused, or could not do, what was asked: in the domain's words, with
//! no HTTP in sight. `http::error` maps each to a status and an OAuth error code, in one
//! place.

use super::keys::KeysError;
use super::view::Stale;
use crate::limits::Limited;
use crate::policy::Refusal;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Client authentication failed (RFC 6749 `invalid_client`); the reason is for logs.
    #[error("client authentication failed: {0}")]
    InvalidClient(&'static str),
    /// A DPoP proof that fails a check (RFC 9449 `invalid_dpop_proof`).
    #[error("{0}")]
    InvalidDpopProof(&'static str),
    /// A DPoP proof without the server nonce it needs: this one (`use_dpop_nonce`).
    #[error("use the DPoP-Nonce this answer carries")]
    UseDpopNonce(String),
    /// The grant, refresh token or subject token is not valid (RFC 6749 `invalid_grant`).
    #[error("{0}")]
    InvalidGrant(&'static str),
    /// Asked for more than the client or the token holds.
    #[error(transparent)]
    Policy(#[from] Refusal),
    /// A parameter or a request body is wrong in a way the caller can fix.
    #[error("{0}")]
    InvalidRequest(String),
    /// What was asked for does not exist (the description says what).
    #[error("{0}")]
    NotFound(String),
    /// Authenticated, but not allowed to act on this.
    #[error("{0}")]
    NotPermitted(&'static str),
    /// The client may not use this grant (RFC 6749 §5.2 `unauthorized_client`).
    #[error("{0}")]
    GrantNotAllowed(&'static str),
    /// Over a rate limit.
    #[error(transparent)]
    RateLimited(#[from] Limited),
    /// The revocation state is too old to decide on: fail closed.
    #[error(transparent)]
    Stale(#[from] Stale),
    /// Something needed to decide safely is missing or late: fail closed.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] KeysError),
    /// A document that does not validate: every problem found.
    #[error("the request does not validate")]
    Invalid(Vec<crate::contracts::Problem>),
    /// The state changed since the caller read it (a lost compare-and-set), or the
    /// request needs another state first.
    #[error("{0}")]
    Conflict(String),
    /// A grant request or decision refused by the elevation rules (a stable code).
    #[error(transparent)]
    Elevation(#[from] crate::grants::Refused),
    /// A bug or an impossible state.
    #[error("{0}")]
    Internal(String),
}
