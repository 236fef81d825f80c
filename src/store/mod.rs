//! Durable state behind one trait: the revocation log, signing keys, and the audit log.
//!
//! A store assigns every revocation its cluster-wide `seq`, makes it durable together with
//! its audit record, and announces it on [`Store::subscribe`]. Nodes never trust the
//! announcement alone: [`Store::head`] tells how far the log goes, and the follower
//! (`revocation::follower`) fills any gap from [`Store::revocations_after`].
//!
//! `embedded.rs` is SQLite in the data directory, `redis.rs` is Redis; nothing else in
//! latch speaks SQL or Redis.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::keys::KeyRecord;

pub mod embedded;
pub mod redis;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A cloneable handle to whichever store the config selected.
pub type SharedStore = Arc<dyn Store>;

/// What can be revoked (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevocationKind {
    Token,
    Session,
    Subject,
    Client,
    All,
}

impl RevocationKind {
    pub const ALL: [RevocationKind; 5] = [
        RevocationKind::Token,
        RevocationKind::Session,
        RevocationKind::Subject,
        RevocationKind::Client,
        RevocationKind::All,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RevocationKind::Token => "token",
            RevocationKind::Session => "session",
            RevocationKind::Subject => "subject",
            RevocationKind::Client => "client",
            RevocationKind::All => "all",
        }
    }

    pub fn parse(s: &str) -> Option<RevocationKind> {
        RevocationKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A revocation to be recorded.
#[derive(Debug, Clone)]
pub struct NewRevocation {
    pub kind: RevocationKind,
    /// Empty for [`RevocationKind::All`].
    pub value: String,
    pub reason: String,
    pub actor: String,
    pub request_id: String,
}

/// A revocation as recorded: the unit of the durable log and of the feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationEvent {
    /// Cluster-wide, gapless, assigned by the store.
    pub seq: u64,
    pub kind: RevocationKind,
    pub value: String,
    /// Store time at which it became durable, Unix milliseconds.
    pub revoked_at_ms: i64,
}

/// An audit record to append (the store assigns `seq` and `time`).
#[derive(Debug, Clone, Default)]
pub struct NewAudit {
    pub actor: String,
    pub action: String,
    pub target: String,
    pub reason: String,
    pub request_id: String,
}

impl NewAudit {
    /// The record as stored under `seq` at `time_ms`.
    pub fn recorded(&self, seq: u64, time_ms: i64) -> AuditRecord {
        AuditRecord {
            seq,
            time: time_ms.div_euclid(1000),
            actor: self.actor.clone(),
            action: self.action.clone(),
            target: self.target.clone(),
            reason: self.reason.clone(),
            request_id: self.request_id.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    /// Unix seconds.
    pub time: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub reason: String,
    pub request_id: String,
}

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
    pub issued_at_ms: i64,
    pub expires_at_ms: i64,
}

/// The outcome of spending a refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// It was live; it is now spent and the new one is live.
    Rotated,
    /// It had been spent before (or concurrently, by a request that won): reuse.
    Reused(RefreshRecord),
    /// No such token (never issued, or expired and gone).
    Unknown,
}

/// Every key record with the version of the set, for compare-and-set updates.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    pub version: u64,
    pub keys: Vec<KeyRecord>,
}

/// How far the durable state goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Head {
    /// Highest revocation seq assigned.
    pub revocation_seq: u64,
    /// Version of the key set.
    pub keys_version: u64,
}

/// What the feed announces. Announcements are hints for speed; [`Store::head`] is the truth.
#[derive(Debug, Clone)]
pub enum StoreEvent {
    Revocation(RevocationEvent),
    KeysChanged { version: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not take or answer the request; nothing was recorded.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A compare-and-set lost: somebody else changed the state first.
    #[error("conflict: the state changed concurrently")]
    Conflict,
    /// The data directory is held by another process, or is unusable.
    #[error("store cannot be opened: {0}")]
    Open(String),
}

/// The durable state of latch. Implementations must make each method's effect durable
/// before its future resolves `Ok`.
pub trait Store: Send + Sync + 'static {
    /// `embedded` or `redis`, for logs and readiness answers.
    fn kind(&self) -> &'static str;

    /// Assigns the next seq, records the revocation and its audit record atomically, then
    /// announces it. Resolves only once durable.
    fn append_revocation(
        &self,
        rev: NewRevocation,
    ) -> BoxFuture<'_, Result<RevocationEvent, StoreError>>;

    /// Revocations with seq > `after` and `revoked_at_ms >= since_ms`, in seq order, at
    /// most `limit` of them.
    fn revocations_after(
        &self,
        after: u64,
        since_ms: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<RevocationEvent>, StoreError>>;

    fn head(&self) -> BoxFuture<'_, Result<Head, StoreError>>;

    /// Drops revocations from the log (never the newest, and never the seq counter):
    /// `token` entries recorded before `token_before_ms`, every other kind before
    /// `before_ms`. Each cut-off is past its kind's retention, so no live token can match
    /// what goes, and no node needs it to catch up (catch-up skips it anyway). Returns
    /// how many went.
    fn prune_revocations(
        &self,
        before_ms: i64,
        token_before_ms: i64,
    ) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// The feed of announcements. A lagging receiver loses messages; callers recover
    /// from [`Store::revocations_after`].
    fn subscribe(&self) -> broadcast::Receiver<StoreEvent>;

    fn load_keys(&self) -> BoxFuture<'_, Result<KeySet, StoreError>>;

    /// Writes `upserts` and appends `audit` iff the key-set version is still
    /// `expected_version`; returns the new version. [`StoreError::Conflict`] otherwise.
    fn save_keys(
        &self,
        expected_version: u64,
        upserts: Vec<KeyRecord>,
        audit: Vec<NewAudit>,
    ) -> BoxFuture<'_, Result<u64, StoreError>>;

    fn append_audit(&self, audit: NewAudit) -> BoxFuture<'_, Result<AuditRecord, StoreError>>;

    /// Records `key` until `until_ms` if it is not recorded yet; `false` if it was (replay).
    fn claim_once(&self, key: String, until_ms: i64) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Stores the first refresh token of a new session, with its audit record.
    fn open_session(
        &self,
        hash: String,
        record: RefreshRecord,
        audit: NewAudit,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// A refresh token's record and whether it was spent.
    fn refresh_token(
        &self,
        hash: String,
    ) -> BoxFuture<'_, Result<Option<(RefreshRecord, bool)>, StoreError>>;

    /// Spends `old_hash` and stores `new_hash` in one compare-and-set: of concurrent
    /// callers exactly one gets [`Rotation::Rotated`].
    fn rotate_refresh(
        &self,
        old_hash: String,
        new_hash: String,
        new: RefreshRecord,
    ) -> BoxFuture<'_, Result<Rotation, StoreError>>;

    /// Audit records with seq > `after`, oldest first.
    fn audit_after(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<AuditRecord>, StoreError>>;
}

/// Key records are stored as JSON by every store.
pub fn encode_key_record(k: &KeyRecord) -> Result<String, StoreError> {
    serde_json::to_string(k).map_err(|e| StoreError::Unavailable(e.to_string()))
}

pub fn decode_key_records(jsons: &[String]) -> Result<Vec<KeyRecord>, StoreError> {
    jsons
        .iter()
        .map(|json| {
            serde_json::from_str(json)
                .map_err(|e| StoreError::Unavailable(format!("corrupt key record: {e}")))
        })
        .collect()
}

pub fn encode_refresh(r: &RefreshRecord) -> Result<String, StoreError> {
    serde_json::to_string(r).map_err(|e| StoreError::Unavailable(e.to_string()))
}

pub fn decode_refresh(json: &str) -> Result<RefreshRecord, StoreError> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::Unavailable(format!("corrupt refresh record: {e}")))
}

/// The audit target of a revocation: `subject:alice`, `token:<jti>`, `all`.
pub fn revocation_target(kind: RevocationKind, value: &str) -> String {
    match kind {
        RevocationKind::All => "all".to_string(),
        k => format!("{}:{}", k.as_str(), value),
    }
}
