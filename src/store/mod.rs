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
    /// The epoch of `rsq` (absent in records from before epochs: such a record is dead).
    #[serde(default, with = "crate::revocation::epoch_hex")]
    pub rse: u64,
    pub issued_at_ms: i64,
    pub expires_at_ms: i64,
    /// HMAC-SHA256 (key derived from the KEK) over the token hash and this record's JSON
    /// without this field (`sessions::seal`): every other field, present or future, is
    /// covered, and a record cannot be moved to another token's hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
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

/// One entry of the key set as the store holds it: a name (the kid, or the manifest's
/// name) and opaque JSON. Stores do not interpret it: `keys::integrity` authenticates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub name: String,
    pub json: String,
}

/// Every stored key entry with the version of the set, for compare-and-set updates.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    pub version: u64,
    pub entries: Vec<StoredKey>,
}

/// How far the durable state goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Head {
    /// Highest revocation seq that nodes may apply and stamp tokens with: assigned and,
    /// where `store.min_replicas_ack > 0`, confirmed on that many replicas.
    pub revocation_seq: u64,
    /// Version of the key set.
    pub keys_version: u64,
    /// The open epoch: a random id, created atomically with the seq counter.
    pub epoch: u64,
    /// Every closed epoch this store knows, with the seq it was closed at. A stamp
    /// `(e, n)` of a closed epoch is valid iff `n <= closed_at`.
    pub closed: Vec<ClosedEpoch>,
}

/// An epoch that ended: the store restarted, failed over, lost data or was recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClosedEpoch {
    pub id: u64,
    pub closed_at: u64,
}

/// A fresh epoch id: 64 random bits, never 0 (0 marks "no epoch" in stamps).
pub fn new_epoch_id() -> u64 {
    use ring::rand::{SecureRandom, SystemRandom};
    loop {
        let mut bytes = [0u8; 8];
        // SystemRandom fails only if the OS has no randomness, where nothing is safe anyway.
        SystemRandom::new()
            .fill(&mut bytes)
            .expect("operating system randomness");
        let id = u64::from_be_bytes(bytes);
        if id != 0 {
            return id;
        }
    }
}

/// `closed` as stored in Redis and printed in logs: `id:closed_at,...`, ids in hex.
pub fn format_closed(closed: &[ClosedEpoch]) -> String {
    closed
        .iter()
        .map(|c| format!("{:016x}:{}", c.id, c.closed_at))
        .collect::<Vec<_>>()
        .join(",")
}

/// The inverse of [`format_closed`]; malformed items are an error (fail closed).
pub fn parse_closed(text: &str) -> Result<Vec<ClosedEpoch>, StoreError> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (id, at) = item.split_once(':').unwrap_or((item, ""));
            match (u64::from_str_radix(id, 16), at.parse()) {
                (Ok(id), Ok(closed_at)) => Ok(ClosedEpoch { id, closed_at }),
                _ => Err(StoreError::Unavailable(format!(
                    "corrupt epoch list item {item:?}"
                ))),
            }
        })
        .collect()
}

/// What the feed announces. Announcements are hints for speed; [`Store::head`] is the truth.
#[derive(Debug, Clone)]
pub enum StoreEvent {
    /// A revocation of epoch `epoch`; a follower in another epoch reads the head instead.
    Revocation {
        epoch: u64,
        event: RevocationEvent,
    },
    KeysChanged {
        version: u64,
    },
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

    /// How far the log goes, and the epochs. Also where a store notices that it lost
    /// history (Redis restarted or failed over, the state key is gone) and opens a new
    /// epoch before answering.
    fn head(&self) -> BoxFuture<'_, Result<Head, StoreError>>;

    /// Closes the open epoch at the current seq and opens a new one, with an audit
    /// record (`store_recover`). The operator's step after restoring a backup.
    fn bump_epoch(&self, audit: NewAudit) -> BoxFuture<'_, Result<Head, StoreError>>;

    /// Whether announcements are being received right now (embedded: always). A node
    /// is fresh only while its feed is live, so the propagation bound holds.
    fn feed_live(&self) -> bool {
        true
    }

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
        upserts: Vec<StoredKey>,
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
