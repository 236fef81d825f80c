//! The follower: keeps this node's table and key ring in step with the store.
//!
//! Announcements from [`Store::subscribe`] are applied at once when they are the next seq;
//! anything else (a gap, a lagged receiver, a lost connection) falls back to reading the
//! durable log. Independently, every `poll` interval the follower asks the store for its
//! head; only a successful round trip that finds nothing missing marks the table fresh.
//! So freshness is proven by the store, never assumed from a quiet feed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use super::Table;
use crate::keys::Keys;
use crate::metrics as m;
use crate::store::{Head, SharedStore, StoreError, StoreEvent};
use crate::time::now_ms;

/// How the follower runs.
#[derive(Debug, Clone, Copy)]
pub struct FollowerConfig {
    /// How often the store's head is checked; a fraction of `max_staleness`.
    pub poll: Duration,
}

impl FollowerConfig {
    pub fn new(max_staleness: Duration) -> FollowerConfig {
        FollowerConfig {
            poll: (max_staleness / 8).clamp(Duration::from_millis(5), Duration::from_millis(250)),
        }
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
    config: FollowerConfig,
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
            config,
        }
    }

    /// Loads every revocation that can still matter, up to the store's head, and marks the
    /// table fresh. Run before the node reports ready.
    pub async fn load(&self) -> Result<(), StoreError> {
        let started = now_ms();
        let head = self.store.head().await?;
        self.catch_up(head, false).await?;
        self.table.mark_fresh(started);
        Ok(())
    }

    /// Reads the log after `applied` up to at least `head`, then moves `applied` to it.
    /// Revocations older than the retention are skipped: no live token can match them.
    async fn catch_up(&self, head: Head, live: bool) -> Result<(), StoreError> {
        let now = now_ms();
        let retention = self.table.retention();
        let since = now - retention.longest_ms();
        let mut after = self.table.applied();
        while after < head.revocation_seq {
            let batch = self.store.revocations_after(after, since, CHUNK).await?;
            for e in &batch {
                // Token entries outlive only the access-token cap: older ones match nothing.
                if e.revoked_at_ms + retention.for_kind(e.kind) <= now {
                    continue;
                }
                self.table.insert(e);
                if live {
                    observe_propagation(e.revoked_at_ms);
                }
            }
            match batch.last() {
                Some(last) if batch.len() == CHUNK => after = last.seq,
                _ => break,
            }
        }
        self.table.set_applied(head.revocation_seq);
        Ok(())
    }

    /// Applies one announced event if it is the next in sequence; otherwise catches up.
    async fn on_event(&self, event: StoreEvent) -> Result<(), StoreError> {
        match event {
            StoreEvent::Revocation(e) => {
                let applied = self.table.applied();
                if e.seq <= applied {
                    return Ok(());
                }
                if e.seq == applied + 1 {
                    self.table.insert(&e);
                    self.table.set_applied(e.seq);
                    observe_propagation(e.revoked_at_ms);
                    return Ok(());
                }
                // A gap: something was announced before we saw its predecessors.
                tracing::debug!(seq = e.seq, applied, "gap in revocation feed; reading log");
                let head = self.store.head().await?;
                self.catch_up(head, true).await
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
        let head = self.store.head().await?;
        if head.revocation_seq < self.table.applied() {
            // The store lost acknowledged revocations (e.g. Redis restarted without its
            // AOF). Nothing this node could answer would be safe: stay stale, loudly.
            return Err(StoreError::Unavailable(format!(
                "the store's revocation log went back from seq {} to {}; restart this node \
                 after checking the store's persistence",
                self.table.applied(),
                head.revocation_seq
            )));
        }
        if head.revocation_seq > self.table.applied() {
            self.catch_up(head, true).await?;
        }
        if head.keys_version > self.keys.with_ring(|r| r.version) {
            self.keys
                .reload()
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        }
        self.table.mark_fresh(started);
        Ok(())
    }

    /// Runs until `shutdown` fires.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut feed = self.store.subscribe();
        let mut poll = tokio::time::interval(self.config.poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                    self.store.prune_revocations(before, token_before).await.map(|pruned| {
                        if pruned > 0 {
                            tracing::debug!(pruned, "old revocations pruned from the log");
                        }
                    })
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
        });
    }
}

fn observe_propagation(revoked_at_ms: i64) {
    let lag = (now_ms() - revoked_at_ms).max(0) as f64 / 1000.0;
    metrics::histogram!(m::PROPAGATION).record(lag);
}
