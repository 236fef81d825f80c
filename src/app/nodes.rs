//! This node in the registry, and the registry for the responder.
//!
//! [`Reporter`] is the node's one writer to the registry: a task that writes the node's
//! report (`nodes::NodeReport`) on every heartbeat, at once when `applied` moves (prompt
//! acknowledgements), and whenever the follower has a freshness proof to record. One
//! write is in flight at a time; whatever changed meanwhile is read when the next write
//! starts, so acknowledgements coalesce and the latest value wins.
//!
//! **Architecture Invariant:** the follower trusts a freshness proof only once the
//! registry holds it ([`Reporter::prove`] before `Table::mark_fresh`), so the registry's
//! proof is never older than the one the node answers from, and "failing closed" in the
//! registry is a fact about the node, not a guess.
//!
//! [`status`] and [`revocation`] are the two audited reads behind `GET /admin/nodes` and
//! `GET /admin/revocations/{seq}`.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::{watch, Notify};

use super::error::Error;
use super::keys::Keys;
use super::App;
use crate::audit::NewAudit;
use crate::metrics as m;
use crate::nodes::{NodeReport, Registry};
use crate::revocation::{RevocationEvent, Table};
use crate::store::{Head, SharedStore, StoreError};
use crate::time::now_ms;

/// Under a stream of revocations, acknowledgements are written at most this often per
/// node (an idle node's first one goes at once): the registry costs a few hundred writes
/// per second per node, not one per revocation (docs/PERFORMANCE.md, "Revocation
/// throughput with acknowledgements").
pub const ACK_GAP: Duration = Duration::from_millis(5);

/// How many of the newest revocations `GET /admin/nodes` shows.
pub const RECENT: u64 = 5;

/// Who this node is in the registry (fixed for the life of the process).
#[derive(Debug, Clone)]
pub struct Identity {
    /// Random per process start.
    pub id: String,
    pub name: String,
    pub address: String,
    pub version: String,
}

/// How the reporter runs.
#[derive(Debug, Clone, Copy)]
pub struct ReporterConfig {
    /// A report at least this often.
    pub heartbeat: Duration,
    /// Past this age of the last heartbeat the node is gone.
    pub ttl: Duration,
    /// Report every change of `applied` at once (`node.acks`); otherwise only with
    /// heartbeats and freshness proofs.
    pub prompt_acks: bool,
    pub max_staleness: Duration,
}

/// What the writes so far have done with freshness proofs.
#[derive(Debug, Clone, Copy, Default)]
struct Outcome {
    /// The newest proof a successful write carried.
    recorded: i64,
    /// The newest proof a failed write carried.
    failed: i64,
}

/// The node's writer to the registry. Shared by `Arc` between its task and the follower.
pub struct Reporter {
    store: SharedStore,
    table: Arc<Table>,
    keys: Arc<Keys>,
    /// Who this node is; the address is known only once the listener is bound.
    me: Mutex<Identity>,
    config: ReporterConfig,
    /// The newest freshness proof to record (store ms; 0: none yet).
    proof: AtomicI64,
    /// Asks the task for a write now.
    wake: Notify,
    outcome: watch::Sender<Outcome>,
}

// === impl Reporter ===

impl Reporter {
    pub fn new(
        store: SharedStore,
        table: Arc<Table>,
        keys: Arc<Keys>,
        me: Identity,
        config: ReporterConfig,
    ) -> Reporter {
        Reporter {
            store,
            table,
            keys,
            me: Mutex::new(me),
            config,
            proof: AtomicI64::new(0),
            wake: Notify::new(),
            outcome: watch::channel(Outcome::default()).0,
        }
    }

    fn identity(&self) -> Identity {
        self.me.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn id(&self) -> String {
        self.identity().id
    }

    /// Sets the bound address (and the name, unless `node.name` gave one), once known.
    pub fn set_address(&self, address: String, name: Option<String>) {
        let mut me = self.me.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(name) = name {
            me.name = name;
        }
        me.address = address;
    }

    /// Records a freshness proof (the store's time `at_ms` of a head check after which
    /// everything was applied) and resolves once a write carrying it succeeded. The
    /// follower marks the node fresh only after this.
    pub async fn prove(&self, at_ms: i64) -> Result<(), StoreError> {
        let mut outcome = self.outcome.subscribe();
        self.proof.fetch_max(at_ms, Ordering::AcqRel);
        self.wake.notify_one();
        let wait = async {
            loop {
                let o = *outcome.borrow_and_update();
                if o.recorded >= at_ms {
                    return Ok(());
                }
                if o.failed >= at_ms {
                    return Err(StoreError::Unavailable(
                        "the freshness proof could not be recorded in the node registry".into(),
                    ));
                }
                if outcome.changed().await.is_err() {
                    return Err(StoreError::Unavailable("node reporter stopped".into()));
                }
            }
        };
        tokio::time::timeout(self.config.max_staleness, wait)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(
                    "recording the freshness proof timed out".into(),
                ))
            })
    }

    /// Writes one report now (also the node's first registration).
    pub async fn report(&self) -> Result<i64, StoreError> {
        let proof = self.proof.load(Ordering::Acquire);
        let crate::revocation::Point {
            epoch,
            seq: applied,
        } = self.table.stamp_now();
        let me = self.identity();
        let report = NodeReport {
            id: me.id,
            name: me.name,
            address: me.address,
            version: me.version,
            max_staleness_ms: self.config.max_staleness.as_millis() as i64,
            ttl_ms: self.config.ttl.as_millis() as i64,
            epoch,
            applied,
            keys_version: self.keys.with_ring(|r| r.version),
            fresh_at_ms: (proof > 0).then_some(proof),
            ready: self.ready(),
        };
        let result = self.store.report_node(report).await;
        self.outcome.send_modify(|o| match result {
            Ok(_) => o.recorded = o.recorded.max(proof),
            Err(_) => o.failed = o.failed.max(proof),
        });
        if result.is_err() {
            metrics::counter!(m::NODE_REPORTS_FAILED).increment(1);
        }
        result
    }

    /// What `/readyz` would say: a signing key, fresh state, a live feed.
    fn ready(&self) -> bool {
        let max_ms = self.config.max_staleness.as_millis() as i64;
        self.keys.with_ring(|r| r.signer().is_some())
            && self.table.is_fresh(now_ms(), max_ms)
            && self.store.feed_live()
    }

    /// Runs until `shutdown` fires: a report on every heartbeat, on every proof, and
    /// (with prompt acknowledgements) whenever `applied` moved, one at a time; an
    /// acknowledgement right after another write waits out [`ACK_GAP`] (a proof does not).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut applied = self.table.watch_applied();
        let mut beat = tokio::time::interval(self.config.heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut up = true;
        let mut last_write = Instant::now() - ACK_GAP;
        loop {
            let ack = tokio::select! {
                _ = shutdown.changed() => return,
                _ = self.wake.notified() => false,
                _ = applied.changed(), if self.config.prompt_acks => true,
                _ = beat.tick() => false,
            };
            if ack {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep_until(last_write + ACK_GAP) => {}
                }
            }
            // Changes that arrive while this write is in flight are marked on `applied`
            // and picked up by the next one: coalesced, the latest value wins.
            applied.borrow_and_update();
            let result = self.report().await;
            last_write = Instant::now();
            match result {
                Ok(_) if !up => {
                    tracing::info!("node registry reachable again");
                    up = true;
                }
                Err(error) if up => {
                    tracing::warn!(%error, "node registry report failed");
                    up = false;
                }
                _ => {}
            }
        }
    }
}

/// The store's clock as this node sees it: `store - local`, from head round trips.
/// The propagation histogram reads it, so it measures on the store's clock.
pub struct StoreClock {
    offset_ms: AtomicI64,
}

/// Samples taken over a round trip longer than this are not precise enough to keep.
const CLOCK_SAMPLE_MAX_RTT_MS: i64 = 20;

impl StoreClock {
    /// A head check sent at local `before` and answered at local `after`, with the
    /// store's time `store_ms` (0: the store did not say).
    pub fn sample(&self, before: i64, store_ms: i64, after: i64) {
        if store_ms > 0 && (0..=CLOCK_SAMPLE_MAX_RTT_MS).contains(&(after - before)) {
            let offset = store_ms - (before + after) / 2;
            self.offset_ms.store(offset, Ordering::Relaxed);
        }
    }

    /// `store - local` in ms (0 until sampled).
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }
}

/// The process's estimate of the store's clock.
pub fn store_clock() -> &'static StoreClock {
    static CLOCK: StoreClock = StoreClock {
        offset_ms: AtomicI64::new(0),
    };
    &CLOCK
}

/// What `GET /admin/nodes` shows: the store's head, every node, the newest revocations.
#[derive(Debug)]
pub struct Status {
    pub head: Head,
    pub registry: Registry,
    /// The newest revocations still in the log, oldest first.
    pub recent: Vec<RevocationEvent>,
    /// This node's id, to mark it in the answer.
    pub this_node: String,
}

/// The cluster at a glance, read by `actor` (audited `nodes_read`).
pub async fn status(app: &App, actor: &str, request_id: &str) -> Result<Status, Error> {
    let head = app.store.head().await?;
    let registry = app.store.nodes().await?;
    let from = head.revocation_seq.saturating_sub(RECENT);
    let mut recent = app
        .store
        .revocations_after(from, i64::MIN, RECENT as usize)
        .await?;
    recent.retain(|e| e.seq <= head.revocation_seq);
    audit_read(app, actor, "nodes_read", "nodes", request_id).await?;
    Ok(Status {
        head,
        registry,
        recent,
        this_node: app.node_id().to_string(),
    })
}

/// One revocation and what every node proves about it.
#[derive(Debug)]
pub struct RevocationStatus {
    pub head: Head,
    pub registry: Registry,
    pub revocation: RevocationEvent,
}

/// Revocation `seq` and the registry, read by `actor` (audited `revocation_read`). A seq
/// the store never acknowledged, or pruned from its log, is not found.
pub async fn revocation(
    app: &App,
    actor: &str,
    seq: u64,
    request_id: &str,
) -> Result<RevocationStatus, Error> {
    let head = app.store.head().await?;
    let unknown = || {
        Error::NotFound(format!(
            "no revocation with seq {seq}: the store's log goes up to {} \
             (older entries are pruned once nothing they match can be alive)",
            head.revocation_seq
        ))
    };
    if seq == 0 || seq > head.revocation_seq {
        return Err(unknown());
    }
    let revocation = app
        .store
        .revocations_after(seq - 1, i64::MIN, 1)
        .await?
        .into_iter()
        .next()
        .filter(|e| e.seq == seq)
        .ok_or_else(unknown)?;
    let registry = app.store.nodes().await?;
    audit_read(
        app,
        actor,
        "revocation_read",
        &format!("revocation:{seq}"),
        request_id,
    )
    .await?;
    Ok(RevocationStatus {
        head,
        registry,
        revocation,
    })
}

async fn audit_read(
    app: &App,
    actor: &str,
    action: &str,
    target: &str,
    request_id: &str,
) -> Result<(), Error> {
    app.store
        .append_audit(NewAudit {
            actor: actor.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            reason: String::new(),
            request_id: request_id.to_string(),
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{Alg, Kek, KeyPolicy};
    use crate::revocation::{Epochs, Retention};
    use crate::store::embedded::EmbeddedStore;

    /// A reporter on a fresh embedded store, its task running; (reporter, table, store,
    /// the stop switch, the data directory).
    fn reporter(
        prompt_acks: bool,
    ) -> (
        Arc<Reporter>,
        Arc<Table>,
        SharedStore,
        watch::Sender<bool>,
        tempfile::TempDir,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStore = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let table = Arc::new(Table::new(Retention::default()));
        table.set_epochs(Epochs::new(0xe1, &[]));
        let policy = KeyPolicy {
            alg: Alg::EdDSA,
            rotate_every_ms: 86_400_000,
            publish_ahead_ms: 3_600_000,
            min_published_ms: 60_000,
            retire_after_ms: 3_600_000,
        };
        let kek = Kek::from_bytes(&[7; 32]).unwrap();
        let keys = Arc::new(Keys::new(store.clone(), kek, policy));
        let r = Arc::new(Reporter::new(
            store.clone(),
            table.clone(),
            keys,
            Identity {
                id: "n1".into(),
                name: "node-1".into(),
                address: "127.0.0.1:1".into(),
                version: "test".into(),
            },
            ReporterConfig {
                heartbeat: Duration::from_secs(3600),
                ttl: Duration::from_secs(10),
                prompt_acks,
                max_staleness: Duration::from_secs(2),
            },
        ));
        let (stop, rx) = watch::channel(false);
        tokio::spawn(r.clone().run(rx));
        (r, table, store, stop, dir)
    }

    async fn settle() {
        for _ in 0..64 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn acknowledgements_coalesce_and_the_latest_value_wins() {
        let (_r, table, store, _stop, _dir) = reporter(true);
        settle().await;
        // A burst of 100 applied revocations while the node is busy: far fewer writes,
        // the last of which carries the newest watermark.
        for seq in 1..=100 {
            table.set_applied(seq);
        }
        tokio::time::sleep(ACK_GAP * 3).await;
        settle().await;
        let node = store.nodes().await.unwrap().nodes.remove(0);
        assert_eq!(node.applied, 100);
        assert!(node.acks.len() <= 3, "{:?}", node.acks);
        // An idle node's next acknowledgement goes out without waiting for a heartbeat.
        tokio::time::sleep(Duration::from_secs(1)).await;
        table.set_applied(101);
        tokio::time::sleep(ACK_GAP).await;
        settle().await;
        assert_eq!(store.nodes().await.unwrap().nodes[0].applied, 101);
    }

    #[tokio::test(start_paused = true)]
    async fn without_prompt_acks_only_heartbeats_and_proofs_report() {
        let (r, table, store, _stop, _dir) = reporter(false);
        settle().await;
        table.set_applied(7);
        tokio::time::sleep(Duration::from_secs(1)).await;
        settle().await;
        assert_eq!(store.nodes().await.unwrap().nodes[0].applied, 0);
        // A proof is recorded before prove() returns, with the watermark of that moment.
        r.prove(1_234).await.unwrap();
        let node = store.nodes().await.unwrap().nodes.remove(0);
        assert_eq!((node.applied, node.fresh_at_ms), (7, 1_234));
    }

    #[test]
    fn the_store_clock_keeps_only_precise_samples() {
        let c = StoreClock {
            offset_ms: AtomicI64::new(0),
        };
        c.sample(1000, 5005, 1010);
        assert_eq!(c.offset_ms(), 4000);
        c.sample(2000, 9000, 2100);
        assert_eq!(c.offset_ms(), 4000, "a 100 ms round trip is too coarse");
        c.sample(3000, 0, 3001);
        assert_eq!(c.offset_ms(), 4000, "a store that gives no time");
        c.sample(3000, 2999, 3002);
        assert_eq!(c.offset_ms(), -2);
    }
}
