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

use tokio::sync::broadcast;

use crate::audit::{AuditRecord, NewAudit};
use crate::keys::{KeySet, StoredKey};
use crate::nodes::{NodeReport, Registry};
use crate::revocation::{ClosedEpoch, NewRevocation, Point, RevocationEvent};
use crate::sessions::{RefreshRecord, Rotation};
use crate::ssf::StoredStream;
use crate::status::{ListId, ListMeta};

pub mod embedded;
pub mod redis;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A cloneable handle to whichever store the config selected.
pub type SharedStore = Arc<dyn Store>;

/// How far the durable state goes. Two heads are equal when they say the same about the
/// state, whenever they were read (`time_ms` is not compared).
#[derive(Debug, Clone, Default)]
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
    /// The store's clock when it answered, Unix ms: the one clock the node registry is
    /// judged on (a freshness proof is recorded with this time).
    pub time_ms: i64,
}

impl Head {
    /// The head of the log: the open epoch at its highest confirmed seq.
    pub fn point(&self) -> Point {
        Point::new(self.epoch, self.revocation_seq)
    }
}

/// One contract change to record (see [`Store::append_contract`]).
#[derive(Debug, Clone)]
pub struct ContractWrite {
    /// `registry` or `client:<id>`.
    pub doc: String,
    pub version: u64,
    /// The amendment's JSON, stored as its history (empty for a cancellation).
    pub amendment: String,
    /// The change's JSON: the log entry's value.
    pub change: String,
    pub cancel: bool,
    /// The audit record's target and action (filled by the store from the audit it is
    /// given; empty: `contracts` and `contract_amend`/`contract_cancel`).
    pub audit_target: String,
    pub audit_action: String,
}
/// One grant transition to record (see [`Store::append_grant`]).
#[derive(Debug, Clone)]
pub struct GrantWrite {
    pub id: String,
    /// The version the stored record must have (0: no record yet); the write stores
    /// `expected + 1`.
    pub expected: u64,
    /// The new record's JSON (`grants::Grant`): stored, and the log entry's value.
    pub record: String,
    /// The audit action (`grant_request`, `grant_approve`, `grant_deny`, `grant_revoke`,
    /// `grant_restored`).
    pub action: String,
    /// A node writing back a version the store lost: then `expected` is the record's own
    /// version, and the write happens iff the stored version is lower (or there is none);
    /// the stored version becomes `expected`.
    pub restore: bool,
}

impl PartialEq for Head {
    fn eq(&self, other: &Head) -> bool {
        (
            self.revocation_seq,
            self.keys_version,
            self.epoch,
            &self.closed,
        ) == (
            other.revocation_seq,
            other.keys_version,
            other.epoch,
            &other.closed,
        )
    }
}

impl Eq for Head {}

impl ContractWrite {
    /// The log entry this write appends (kind `contract`, value the change) and the write
    /// carrying `audit`'s target and action: what both stores record, in one place.
    pub fn with_audit(self, audit: NewAudit) -> (NewRevocation, ContractWrite) {
        let rev = NewRevocation {
            kind: crate::revocation::RevocationKind::Contract,
            value: self.change.clone(),
            reason: audit.reason,
            actor: audit.actor,
            request_id: audit.request_id,
        };
        let write = ContractWrite {
            audit_target: audit.target,
            audit_action: audit.action,
            ..self
        };
        (rev, write)
    }
}

impl GrantWrite {
    /// The log entry this write appends: kind `grant`, value the record.
    pub fn log_entry(&self, audit: NewAudit) -> NewRevocation {
        NewRevocation {
            kind: crate::revocation::RevocationKind::Grant,
            value: self.record.clone(),
            reason: audit.reason,
            actor: audit.actor,
            request_id: audit.request_id,
        }
    }
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

    /// Forgets the claim of `key`, by the caller whose [`Store::claim_once`] won it and
    /// then answered nothing for it (its request failed), so that a retry may claim it.
    fn release_claim(&self, key: String) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Stores the first refresh token of a new session, with its audit record.
    ///
    /// Refresh tokens are named by their store key (`sessions::store_key`:
    /// `<family>.<hash>`, or a bare hash for a token without a family). Every token of one
    /// session chain has the same family.
    fn open_session(
        &self,
        key: String,
        record: RefreshRecord,
        audit: NewAudit,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// A refresh token's record and whether it was spent. A token whose family (the
    /// embedded store: whose session) was marked reused reads as spent.
    fn refresh_token(
        &self,
        key: String,
    ) -> BoxFuture<'_, Result<Option<(RefreshRecord, bool)>, StoreError>>;

    /// Spends `old_key` and stores `new_key` (of the same family) in one compare-and-set:
    /// of concurrent callers exactly one gets [`Rotation::Rotated`]. A spent token, or any
    /// token of a family marked reused, is [`Rotation::Reused`], and the family is marked
    /// reused by the same atomic step (see [`Store::mark_reused`]); nothing is stored.
    fn rotate_refresh(
        &self,
        old_key: String,
        new_key: String,
        new: RefreshRecord,
    ) -> BoxFuture<'_, Result<Rotation, StoreError>>;

    /// Marks the family of `key` (the embedded store: its session) reused if `key` is a
    /// spent token: from then on every token of it reads spent and rotates to
    /// [`Rotation::Reused`]. Nothing for an unknown or live token. Idempotent.
    fn mark_reused(&self, key: String) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Records a contract change (`contracts::Change` as JSON) atomically with its log
    /// entry (kind `contract`, value the same JSON, announced like a revocation) and its
    /// audit record. For an amendment, `write.version` must be the document's latest
    /// version plus one, else nothing is written and the answer is `Conflict`: of
    /// concurrent amendments to one document exactly one wins. For a cancellation, the
    /// version must exist and not be cancelled yet (else `Conflict`).
    fn append_contract(
        &self,
        write: ContractWrite,
        audit: NewAudit,
    ) -> BoxFuture<'_, Result<RevocationEvent, StoreError>>;

    /// Records a grant transition atomically with its log entry (kind `grant`, value the
    /// record's JSON, announced like a revocation) and its audit record (target
    /// `grant:<id>`), iff the stored record's version is `write.expected` (0: none):
    /// of concurrent decisions on one grant exactly one is recorded; the others get
    /// `Conflict` and nothing is written.
    fn append_grant(
        &self,
        write: GrantWrite,
        audit: NewAudit,
    ) -> BoxFuture<'_, Result<RevocationEvent, StoreError>>;

    /// One grant's record (JSON), if it exists.
    fn grant(&self, id: String) -> BoxFuture<'_, Result<Option<String>, StoreError>>;

    /// Every grant record (JSON), in no order.
    fn grant_entries(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>>;

    /// Every recorded amendment (its JSON) and whether it was cancelled, in no order.
    fn contract_entries(&self) -> BoxFuture<'_, Result<Vec<(String, bool)>, StoreError>>;

    /// Drops audit records written before `before_ms` (store time), oldest first, never
    /// the newest record (its seq is where the next one continues). Returns how many went.
    fn prune_audit(&self, before_ms: i64) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Audit records with seq > `after`, oldest first.
    fn audit_after(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<AuditRecord>, StoreError>>;

    /// Records `report` as its node's entry in the registry, on the store's clock: the
    /// first report sets `started_at`; a changed `(epoch, applied)` is appended to the
    /// node's ack history (newest first, at most `nodes::ACK_HISTORY`) at the store's
    /// time; a given `fresh_at_ms` raises the recorded proof (never lowers it); every
    /// report is a heartbeat. A node is kept `nodes::GONE_KEPT_MS` past its expiry, then
    /// forgotten. Returns the store's time of the write.
    ///
    /// The registry is soft state, not history: a store may keep it in memory (the
    /// embedded store does), and losing it only makes nodes look stale until their next
    /// report.
    fn report_node(&self, report: NodeReport) -> BoxFuture<'_, Result<i64, StoreError>>;

    /// Every node the registry holds (gone ones too, until forgotten), ordered by name
    /// then id, and the store's time at which it was read.
    fn nodes(&self) -> BoxFuture<'_, Result<Registry, StoreError>>;
    /// Every Shared Signals event stream (opaque JSON, see `ssf::Stream`), in no
    /// particular order.
    fn ssf_streams(&self) -> BoxFuture<'_, Result<Vec<StoredStream>, StoreError>>;

    /// One event stream, if it exists.
    fn ssf_stream(&self, id: String) -> BoxFuture<'_, Result<Option<StoredStream>, StoreError>>;

    /// Writes stream `id` iff its version is `expected` (0: iff there is no such stream)
    /// and returns the new version (`expected + 1`); [`StoreError::Conflict`] otherwise.
    fn ssf_save_stream(
        &self,
        id: String,
        expected: u64,
        json: String,
    ) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Deletes stream `id`; `true` if it existed.
    fn ssf_delete_stream(&self, id: String) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Takes or renews the push-delivery lease for `holder` until `ttl_ms` from now, by
    /// the store's clock, iff it is free, expired or already `holder`'s. `true`: `holder`
    /// holds it. At most one holder at a time, as far as the store's clock goes.
    fn ssf_lease(&self, holder: String, ttl_ms: i64) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Records a new status list (Token Status List) until `meta.expires_ms`, before
    /// any of its records.
    fn status_open_list(&self, meta: ListMeta) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Records many indices of list `list` in one write (the group commit): durable
    /// when `Ok`. A list the store does not hold (expired, lost) takes nothing:
    /// `Conflict`, and the caller abandons it.
    fn status_append(
        &self,
        list: ListId,
        records: Vec<(u64, String)>,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// List `list` with its records of indices `>= from`; `None` if the store holds no
    /// such list (unknown or expired).
    fn status_records(
        &self,
        list: ListId,
        from: u64,
    ) -> BoxFuture<'_, Result<Option<ListRecords>, StoreError>>;

    /// Every list not expired at `now_ms` (the aggregation endpoint), in no order.
    fn status_lists(&self, now_ms: i64) -> BoxFuture<'_, Result<Vec<ListMeta>, StoreError>>;

    /// Drops lists (and their records) expired at `now_ms`; returns how many went.
    fn status_prune(&self, now_ms: i64) -> BoxFuture<'_, Result<u64, StoreError>>;
}

/// A status list as the store holds it: its metadata and the records of indices at or
/// above the asked-for index, each `(idx, record JSON)`, in no particular order.
#[derive(Debug, Clone)]
pub struct ListRecords {
    pub meta: ListMeta,
    pub records: Vec<(u64, String)>,
}

pub fn encode_refresh(r: &RefreshRecord) -> Result<String, StoreError> {
    serde_json::to_string(r).map_err(|e| StoreError::Unavailable(e.to_string()))
}

pub fn decode_refresh(json: &str) -> Result<RefreshRecord, StoreError> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::Unavailable(format!("corrupt refresh record: {e}")))
}
