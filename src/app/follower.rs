//! The follower: keeps this node's table and key ring in step with the store.
//!
//! Announcements from [`Store::subscribe`] are applied at once when they are the next seq;
//! anything else (a gap, a lagged receiver, a lost connection) falls back to reading the
//! durable log. Independently, every `poll` interval the follower asks the store for its
//! head; only a successful round trip that finds nothing missing, while the announcement
//! feed is live, marks the table fresh. So freshness is proven by the store, never assumed
//! from a quiet feed. While the feed is down the head is checked every [`FEED_DOWN_POLL`].
//!
//! When the head names another epoch, the store lost history or was recovered: the
//! follower lowers `applied` to what the store still has, switches epochs, reads the log
//! again and writes back (as new revocations) every entry it holds above the old epoch's
//! closing seq: revocations the store forgot but this node still knows.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use super::contracts::Contracts;
use super::grants::Grants;
use super::keys::Keys;
use super::nodes::{store_clock, Reporter};
use crate::audit::NewAudit;
use crate::metrics as m;
use crate::revocation::{Epochs, NewRevocation, RevocationEvent, RevocationKind, Table};
use crate::store::{Head, SharedStore, StoreError, StoreEvent};
#[cfg(not(test))]
use crate::time::now_ms;
// Unit tests run the follower on tokio's paused clock (follower_tests.rs).
#[cfg(test)]
use tests::now_ms;

/// Head-check interval while the announcement subscription is down: short enough that
/// the propagation bound holds through the poll alone.
pub const FEED_DOWN_POLL: Duration = Duration::from_millis(25);

/// A revocation this node holds that the store lost, waiting to be written back.
#[derive(Debug, Clone)]
struct Restore {
    kind: RevocationKind,
    value: String,
    /// Why: which epoch closed below it.
    reason: String,
}

/// How the follower runs.
#[derive(Debug, Clone, Copy)]
pub struct FollowerConfig {
    /// How often the store's head is checked; a fraction of `max_staleness`.
    pub poll: Duration,
    /// Audit records older than this are pruned with each sweep (`store.audit_retention`);
    /// `None`: kept.
    pub audit_retention: Option<Duration>,
}

impl FollowerConfig {
    pub fn new(max_staleness: Duration) -> FollowerConfig {
        FollowerConfig {
            poll: (max_staleness / 8).clamp(Duration::from_millis(5), Duration::from_millis(250)),
            audit_retention: None,
        }
    }

    pub fn with_audit_retention(mut self, retention: Duration) -> FollowerConfig {
        self.audit_retention = Some(retention);
        self
    }
}

/// How often expired table entries are dropped and the log is pruned, in ms.
const SWEEP_MS: i64 = 60_000;

/// Rows read from the log per round trip while catching up.
const CHUNK: usize = 10_000;

/// Feeds a table from a store.
pub struct Follower {
    store: SharedStore,
    table: Arc<Table>,
    keys: Arc<Keys>,
    /// Where contract changes from the log go (none in follower unit tests).
    contracts: Option<Arc<Contracts>>,
    /// Where grant transitions from the log go (none in follower unit tests).
    grants: Option<Arc<Grants>>,
    config: FollowerConfig,
    /// Revocations to write back into the new epoch; retried on every poll until done,
    /// and the node is not fresh until they are.
    restore: Mutex<Vec<Restore>>,
    /// Grant versions to write back into the new epoch (each only where the store holds
    /// an older one); retried like `restore`.
    restore_grants: Mutex<Vec<Arc<crate::grants::Grant>>>,
    /// The node registry: every freshness proof is recorded there before it is trusted.
    reporter: Option<Arc<Reporter>>,
}

impl Follower {
    pub fn new(
        store: SharedStore,
        table: Arc<Table>,
        keys: Arc<Keys>,
        config: FollowerConfig,
    ) -> Follower {
        Follower {
            store,
            table,
            keys,
            contracts: None,
            grants: None,
            config,
            restore: Mutex::new(Vec::new()),
            restore_grants: Mutex::new(Vec::new()),
            reporter: None,
        }
    }

    /// Hands every contract change of the log to `contracts`, in log order.
    pub fn with_contracts(mut self, contracts: Arc<Contracts>) -> Follower {
        self.contracts = Some(contracts);
        self
    }

    /// Hands every grant transition of the log to `grants`, in log order.
    pub fn with_grants(mut self, grants: Arc<Grants>) -> Follower {
        self.grants = Some(grants);
        self
    }

    /// Applies one log entry: a revocation to the table, a contract change to the
    /// contracts, a grant transition to the grants (before `applied` passes it, so a
    /// fresh node has it).
    fn apply(&self, e: &RevocationEvent) {
        if e.kind == RevocationKind::Contract {
            if let Some(contracts) = &self.contracts {
                contracts.apply_event(e);
            }
        }
        if e.kind == RevocationKind::Grant {
            if let Some(grants) = &self.grants {
                grants.apply_event(e);
            }
        }
        self.table.insert(e);
    }

    /// Records every freshness proof in the node registry before trusting it.
    pub fn with_reporter(mut self, reporter: Arc<Reporter>) -> Follower {
        self.reporter = Some(reporter);
        self
    }

    /// Marks the table fresh as of `started` (local), once the registry holds the proof
    /// `head` gave (the store's time): the registry's proof is never the older one.
    async fn mark_fresh(&self, started: i64, head: &Head) -> Result<(), StoreError> {
        if let Some(reporter) = &self.reporter {
            reporter.prove(head.time_ms).await?;
        }
        self.table.mark_fresh(started);
        Ok(())
    }

    /// Loads every revocation that can still matter, up to the store's head, and marks the
    /// table fresh (once the feed is live). Run before the node reports ready.
    pub async fn load(&self) -> Result<(), StoreError> {
        let started = now_ms();
        let head = self.store.head().await?;
        store_clock().sample(started, head.time_ms, now_ms());
        self.table.set_epochs(Epochs::new(head.epoch, &head.closed));
        self.catch_up(&head, self.table.applied(), false).await?;
        if self.store.feed_live() {
            self.mark_fresh(started, &head).await?;
        }
        Ok(())
    }

    /// Reads the log after `after` up to at least `head`, then moves `applied` to it.
    /// Revocations older than the retention are skipped: no live token can match them.
    /// The next chunk is read (on the store's side: a blocking thread or the network)
    /// while this one is applied.
    async fn catch_up(&self, head: &Head, after: u64, live: bool) -> Result<(), StoreError> {
        let now = now_ms();
        let retention = self.table.retention();
        let since = now - retention.longest_ms();
        let read = |after: u64| {
            let store = self.store.clone();
            tokio::spawn(async move { store.revocations_after(after, since, CHUNK).await })
        };
        let mut next = (after < head.revocation_seq).then(|| read(after));
        while let Some(reading) = next.take() {
            let batch = reading
                .await
                .map_err(|e| StoreError::Unavailable(format!("log read failed: {e}")))??;
            next = match batch.last() {
                Some(last) if batch.len() == CHUNK && last.seq < head.revocation_seq => {
                    Some(read(last.seq))
                }
                _ => None,
            };
            for e in &batch {
                // Token entries outlive only the access-token cap: older ones match nothing.
                if e.revoked_at_ms + retention.for_kind(e.kind) <= now {
                    continue;
                }
                self.apply(e);
                if live {
                    observe_propagation(e.revoked_at_ms);
                }
            }
        }
        self.table.set_applied(head.revocation_seq);
        Ok(())
    }

    /// Applies one announced event if it is the next in sequence; otherwise catches up.
    async fn on_event(&self, event: StoreEvent) -> Result<(), StoreError> {
        match event {
            StoreEvent::Revocation { epoch, event: e } => {
                if epoch != self.table.epoch() {
                    // An epoch this node has not switched to (or left): the head decides.
                    return self.poll().await;
                }
                let applied = self.table.applied();
                if e.seq <= applied {
                    return Ok(());
                }
                if e.seq == applied + 1 {
                    // The channel is not authenticated: whoever may PUBLISH could announce
                    // the next seq with nothing behind it, and a node that took it would
                    // skip the real revocation the store then gives that seq. So the
                    // entry is read from the log, and only what the log holds is applied.
                    // Found by tests/redteam.rs.
                    let logged = self.store.revocations_after(applied, i64::MIN, 1).await?;
                    return match logged.first() {
                        Some(l) if l.seq == e.seq && l.kind == e.kind && l.value == e.value => {
                            self.apply(l);
                            self.table.set_applied(l.seq);
                            observe_propagation(l.revoked_at_ms);
                            Ok(())
                        }
                        _ => {
                            tracing::debug!(seq = e.seq, "announcement not in the log; ignored");
                            self.poll().await
                        }
                    };
                }
                // A gap: something was announced before we saw its predecessors.
                tracing::debug!(seq = e.seq, applied, "gap in revocation feed; reading log");
                self.poll().await
            }
            StoreEvent::KeysChanged { version } => {
                if version > self.keys.with_ring(|r| r.version) {
                    if let Err(error) = self.keys.reload().await {
                        tracing::warn!(%error, "key reload failed");
                    }
                }
                Ok(())
            }
        }
    }

    /// One proof of freshness: the head, anything missing, and the keys if they moved.
    async fn poll(&self) -> Result<(), StoreError> {
        let started = now_ms();
        let feed_was_live = self.store.feed_live();
        let mut head = self.store.head().await?;
        store_clock().sample(started, head.time_ms, now_ms());
        if head.epoch == self.table.epoch() && head.revocation_seq < self.table.applied() {
            // The store went back within one epoch without noticing (someone rewrote its
            // state): proof of loss. Close the epoch; the change below restores.
            tracing::error!(
                applied = self.table.applied(),
                store = head.revocation_seq,
                "the store's revocation seq went back; closing its epoch"
            );
            head = self
                .store
                .bump_epoch(NewAudit {
                    actor: "latch".into(),
                    action: "store_epoch_bump".into(),
                    target: "store".into(),
                    reason: format!(
                        "revocation seq went back from {} to {} in one epoch",
                        self.table.applied(),
                        head.revocation_seq
                    ),
                    request_id: String::new(),
                })
                .await?;
            // The epoch is now closed below `applied`: the change rereads the whole log.
        }
        if head.epoch != self.table.epoch() {
            self.change_epoch(&head).await?;
        } else if head.revocation_seq > self.table.applied() {
            self.catch_up(&head, self.table.applied(), true).await?;
        }
        self.write_back().await?;
        if head.keys_version > self.keys.with_ring(|r| r.version) {
            self.keys
                .reload()
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        }
        if !(feed_was_live && self.store.feed_live()) {
            return Err(StoreError::Unavailable(
                "announcement subscription is down".into(),
            ));
        }
        self.mark_fresh(started, &head).await
    }

    /// Switches to the store's new epoch: lowers `applied` to what the store still has,
    /// switches, reads the log, and queues what this node holds above the old epoch's
    /// closing seq for writing back.
    async fn change_epoch(&self, head: &Head) -> Result<(), StoreError> {
        let old = self.table.epoch();
        let applied = self.table.applied();
        let closed_at = head
            .closed
            .iter()
            .find(|c| c.id == old)
            .map(|c| c.closed_at);
        // Only an `applied` at or below the old epoch's closing seq is backed by the
        // store; then this node holds every entry up to it, and the read starts there.
        // Above it, the store went back (lost history, or a rewritten counter: then
        // announcements at or below `applied` were skipped as applied while the store
        // gave those seqs to real revocations, and whichever node noticed first closed
        // the epoch at or above them). With the old epoch unknown, the new one may number
        // from 0, below `applied`. Either way read every retained entry again (inserting
        // is idempotent). Found by tests/redteam.rs under load (another node closed the
        // epoch) and follower_tests.rs.
        let reread_all = closed_at.is_none_or(|c| applied > c);
        // Entries above the closing seq were lost by the store (or are this node's own
        // writes in the new epoch: writing those again is a harmless duplicate). If the
        // old epoch is unknown to the store, every stamp of it is invalid and nothing
        // needs restoring.
        if let Some(c) = closed_at {
            let now = now_ms();
            let held: Vec<Restore> = self
                .table
                .entries_above(c)
                .into_iter()
                .filter(|(_, _, expires)| *expires == 0 || *expires > now)
                .map(|(kind, value, _)| Restore {
                    kind,
                    value,
                    reason: format!("restored: epoch {old:016x} closed at seq {c}, below it"),
                })
                .collect();
            if !held.is_empty() {
                self.restore
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(held);
            }
            // Grant transitions in the lost tail: every grant this node holds is offered
            // back; the store takes each only where its own version is older.
            if let Some(grants) = &self.grants {
                self.restore_grants
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(grants.all());
            }
        }
        let base = closed_at
            .unwrap_or(applied)
            .min(applied)
            .min(head.revocation_seq);
        self.table.lower_applied(base);
        self.table.set_epochs(Epochs::new(head.epoch, &head.closed));
        metrics::counter!(m::STORE_EPOCH_CHANGES).increment(1);
        tracing::warn!(
            old = %format!("{old:016x}"),
            new = %format!("{:016x}", head.epoch),
            old_closed_at = ?closed_at,
            applied,
            store_seq = head.revocation_seq,
            "store epoch changed; rereading the revocation log"
        );
        // A full reread is not propagation: keep old entries out of the histogram.
        self.catch_up(head, if reread_all { 0 } else { base }, !reread_all)
            .await
    }

    /// Writes back the grant versions the store lost (each iff the store's is older), as
    /// new log entries in the open epoch, audited `grant_restored`.
    async fn write_back_grants(&self) -> Result<(), StoreError> {
        let pending = std::mem::take(
            &mut *self
                .restore_grants
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let mut left = pending.iter();
        let mut restored = 0;
        let mut result = Ok(());
        for g in left.by_ref() {
            let record = serde_json::to_string(&**g)
                .map_err(|e| StoreError::Unavailable(format!("grant record: {e}")))?;
            let write = crate::store::GrantWrite {
                id: g.id.clone(),
                expected: g.version,
                record,
                action: "grant_restored".into(),
                restore: true,
            };
            let audit = NewAudit {
                actor: "latch".into(),
                action: "grant_restored".into(),
                target: format!("grant:{}", g.id),
                reason: format!(
                    "the store lost version {} of this grant; written back",
                    g.version
                ),
                request_id: String::new(),
            };
            match self.store.append_grant(write, audit).await {
                Ok(event) => {
                    self.apply(&event);
                    restored += 1;
                }
                // The store has this version or a newer one: nothing was lost.
                Err(StoreError::Conflict) => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if restored > 0 {
            tracing::warn!(
                count = restored,
                "grant versions the store lost written back"
            );
        }
        if result.is_err() {
            // The one that failed and every one after it are retried on the next poll.
            let failed = pending.len() - left.len() - 1;
            self.restore_grants
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(pending.into_iter().skip(failed));
        }
        result
    }

    /// Writes back the revocations the store lost, as new revocations in the open epoch.
    async fn write_back(&self) -> Result<(), StoreError> {
        self.write_back_grants().await?;
        let pending = std::mem::take(&mut *self.restore.lock().unwrap_or_else(|p| p.into_inner()));
        if pending.is_empty() {
            return Ok(());
        }
        let mut done = 0;
        let mut result = Ok(());
        for r in &pending {
            let rev = NewRevocation {
                kind: r.kind,
                value: r.value.clone(),
                reason: r.reason.clone(),
                actor: "latch".into(),
                request_id: String::new(),
            };
            match self.store.append_revocation(rev).await {
                Ok(event) => {
                    self.apply(&event);
                    done += 1;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if done > 0 {
            metrics::counter!(m::REVOCATIONS_RESTORED).increment(done as u64);
            tracing::warn!(count = done, "revocations the store lost written back");
            let audit = NewAudit {
                actor: "latch".into(),
                action: "revocation_restored".into(),
                target: "store".into(),
                reason: format!(
                    "{done} revocation(s) this node held above the closed epoch written back"
                ),
                request_id: String::new(),
            };
            if let Err(e) = self.store.append_audit(audit).await {
                tracing::warn!(error = %e, "audit of restored revocations failed");
            }
        }
        if done < pending.len() {
            self.restore
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(pending.into_iter().skip(done));
        }
        result
    }

    /// Runs until `shutdown` fires.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut feed = self.store.subscribe();
        let mut poll = tokio::time::interval(self.config.poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut fast = tokio::time::interval(FEED_DOWN_POLL);
        fast.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweep = tokio::time::interval(Duration::from_millis(SWEEP_MS as u64));
        let mut store_up = true;
        loop {
            let result = tokio::select! {
                _ = shutdown.changed() => return,
                event = feed.recv() => match event {
                    Ok(event) => self.on_event(event).await,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(missed = n, "revocation feed lagged; reading log");
                        self.poll().await
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        feed = self.store.subscribe();
                        Ok(())
                    }
                },
                _ = poll.tick() => self.poll().await,
                _ = fast.tick(), if !self.store.feed_live() => self.poll().await,
                _ = self.table.check_requested() => self.poll().await,
                _ = sweep.tick() => {
                    let now = now_ms();
                    let removed = self.table.sweep(now);
                    if removed > 0 {
                        tracing::debug!(removed, "expired revocation entries dropped");
                    }
                    // Each kind is kept for its own retention plus one sweep period:
                    // token entries (the ones any client can create) for the access-token
                    // cap plus leeway, not the 30 days a session entry needs.
                    let retention = self.table.retention();
                    let before = now - retention.session_ms.max(retention.token_ms) - SWEEP_MS;
                    let token_before = now - retention.token_ms - SWEEP_MS;
                    let pruned = self.store.prune_revocations(before, token_before).await.map(|pruned| {
                        if pruned > 0 {
                            tracing::debug!(pruned, "old revocations pruned from the log");
                        }
                    });
                    if let Some(keep) = self.config.audit_retention {
                        // Not a freshness matter: a failed prune is retried next sweep.
                        match self.store.prune_audit(now - keep.as_millis() as i64).await {
                            Ok(n) if n > 0 => tracing::debug!(pruned = n, "audit records past store.audit_retention pruned"),
                            Ok(_) => {}
                            Err(error) => tracing::debug!(%error, "audit prune failed; retried next sweep"),
                        }
                    }
                    pruned
                }
            };
            let now_up = result.is_ok();
            if let Err(error) = result {
                if store_up {
                    tracing::warn!(%error, "revocation feed lost; failing closed after max_staleness");
                }
            } else if !store_up {
                tracing::info!("revocation feed restored");
            }
            store_up = now_up;
            self.update_gauges(store_up);
        }
    }

    fn update_gauges(&self, store_up: bool) {
        let now = now_ms();
        metrics::gauge!(m::STORE_UP).set(if store_up { 1.0 } else { 0.0 });
        metrics::gauge!(m::STORE_FEED_UP).set(if self.store.feed_live() { 1.0 } else { 0.0 });
        metrics::gauge!(m::TABLE_ENTRIES).set(self.table.len() as f64);
        let age = self.table.age_ms(now);
        metrics::gauge!(m::STATE_AGE).set(if age == i64::MAX {
            f64::INFINITY
        } else {
            age as f64 / 1000.0
        });
        self.keys.with_ring(|ring| {
            for state in crate::keys::KeyState::ALL {
                metrics::gauge!(m::SIGNING_KEYS, "state" => state.as_str())
                    .set(ring.count(state) as f64);
            }
            metrics::gauge!(m::KEY_ROTATION_OVERDUE)
                .set(ring.rotation_overdue_ms(now) as f64 / 1000.0);
        });
    }
}

/// Acknowledged (the store's time of the revocation) to applied here, on the store's
/// clock: this node's clock corrected by the offset its head checks measured.
fn observe_propagation(revoked_at_ms: i64) {
    let lag = (now_ms() + store_clock().offset_ms() - revoked_at_ms).max(0) as f64 / 1000.0;
    metrics::histogram!(m::PROPAGATION).record(lag);
}

#[cfg(test)]
#[path = "follower_tests.rs"]
mod tests;
