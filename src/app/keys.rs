//! This node's signing keys in use: the ring requests read, reloaded from the store,
//! and the operations that change keys there (scheduled rotation, manual rotation,
//! emergency revocation). The pure rules live in `crate::keys` (lifecycle, integrity,
//! material); this module adds the store and the clock.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::audit::NewAudit;
use crate::keys::{
    integrity, lifecycle, new_record, Kek, KeyError, KeyPolicy, KeyRecord, KeyRing, Kid, StoredKey,
};
use crate::store::{SharedStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("no such key")]
    NotFound,
    #[error("the key set kept changing concurrently; try again")]
    Contended,
    /// A manual rotation would make a key sign that verifiers may not have fetched yet.
    #[error("{0}")]
    RotationRefused(String),
}

/// The key ring of this node and the operations that change keys. Shared by `Arc`.
pub struct Keys {
    /// The snapshot requests read.
    ring: ArcSwap<KeyRing>,
    kek: Arc<Kek>,
    store: SharedStore,
    policy: KeyPolicy,
    /// Serializes this node's writes (the store's compare-and-set serializes nodes).
    writer: tokio::sync::Mutex<()>,
    /// Rejected records already logged, counted and audited by this process.
    reported: Mutex<integrity::Reported>,
}

/// Which change an operator asked for.
enum Change {
    Scheduled,
    Rotate { force: bool },
    Revoke(String),
}

impl Keys {
    pub fn new(store: SharedStore, kek: Kek, policy: KeyPolicy) -> Keys {
        Keys {
            ring: ArcSwap::from_pointee(KeyRing::empty()),
            kek: Arc::new(kek),
            store,
            policy,
            writer: tokio::sync::Mutex::new(()),
            reported: Mutex::new(integrity::Reported::default()),
        }
    }

    /// The key that authenticates refresh-token records (derived from the KEK).
    pub fn refresh_record_mac(&self) -> &ring::hmac::Key {
        self.kek.refresh_record_mac()
    }

    /// The key that authenticates status-list records (derived from the KEK).
    pub fn status_record_mac(&self) -> &ring::hmac::Key {
        self.kek.status_record_mac()
    }

    /// The current snapshot.
    pub fn ring(&self) -> Arc<KeyRing> {
        self.ring.load_full()
    }

    /// Cheap access for the hot path.
    pub fn with_ring<T>(&self, f: impl FnOnce(&KeyRing) -> T) -> T {
        f(&self.ring.load())
    }

    /// Re-reads the key set from the store if it is newer than ours. Only records that pass
    /// `integrity::check` enter the ring; the others are reported once each.
    pub async fn reload(&self) -> Result<(), KeysError> {
        let set = self.store.load_keys().await?;
        let current = self.ring.load_full();
        if set.version >= current.version {
            let kek = self.kek.clone();
            let seen = current.known.clone();
            let (ring, rejected) = tokio::task::spawn_blocking(move || {
                let checked = integrity::check(kek.key_record_mac(), &set.entries, &seen);
                let mut ring = KeyRing::build(set.version, checked.records, &kek);
                ring.known = checked.known;
                (ring, checked.rejected)
            })
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            // Never move backwards if a newer snapshot was installed meanwhile.
            if ring.version >= self.ring.load().version {
                self.ring.store(Arc::new(ring));
            }
            self.report(rejected).await;
        }
        Ok(())
    }

    /// Logs (kid only), counts and audits each rejected record once per process.
    async fn report(&self, rejected: Vec<(String, integrity::Rejection)>) {
        let fresh: Vec<(String, integrity::Rejection)> = {
            let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
            rejected
                .into_iter()
                .filter(|(name, why)| reported.first(name, *why))
                .collect()
        };
        for (name, why) in fresh {
            // A planted name can be anything: bound what reaches the log and the audit.
            let name: String = name.chars().take(64).collect();
            tracing::warn!(kid = %name, reason = why.as_str(), "stored key record rejected; it is not used");
            metrics::counter!(crate::metrics::KEY_RECORDS_REJECTED, "reason" => why.as_str())
                .increment(1);
            let audit = NewAudit {
                actor: "latch".into(),
                action: "key_record_rejected".into(),
                target: name,
                reason: why.as_str().into(),
                request_id: String::new(),
            };
            if let Err(error) = self.store.append_audit(audit).await {
                tracing::warn!(%error, "could not audit a rejected key record");
            }
        }
    }

    /// Applies whatever the schedule calls for now (first key, next key, rotation,
    /// retirement). Called at start and by the rotation task.
    pub async fn tick(&self) -> Result<(), KeysError> {
        self.change(Change::Scheduled, "latch", "", "").await
    }

    /// `POST /admin/keys/rotate`. Refused ([`KeysError::RotationRefused`]) when it would
    /// promote a key published for less than `min_published`, unless `force`.
    pub async fn rotate_now(
        &self,
        force: bool,
        actor: &str,
        reason: &str,
        request_id: &str,
    ) -> Result<(), KeysError> {
        self.change(Change::Rotate { force }, actor, reason, request_id)
            .await
    }

    /// `POST /admin/keys/{kid}/revoke`.
    pub async fn revoke(
        &self,
        kid: &Kid,
        actor: &str,
        reason: &str,
        request_id: &str,
    ) -> Result<(), KeysError> {
        self.change(Change::Revoke(kid.to_string()), actor, reason, request_id)
            .await
    }

    async fn change(
        &self,
        change: Change,
        actor: &str,
        reason: &str,
        request_id: &str,
    ) -> Result<(), KeysError> {
        let _writer = self.writer.lock().await;
        for _attempt in 0..5 {
            let ring = self.ring();
            let records = ring.records.clone();
            let (policy, kek) = (self.policy, self.kek.clone());
            let now = crate::time::now_ms();
            let kid = match &change {
                Change::Revoke(k) => Some(k.clone()),
                _ => None,
            };
            let rotate = match change {
                Change::Rotate { force } => {
                    let refusal = lifecycle::rotation_refusal(&records, now, &policy);
                    match (refusal, force) {
                        (Some(r), false) => return Err(refused(&r, now)),
                        (refusal, _) => Some(refusal.is_some()),
                    }
                }
                _ => None,
            };
            let plan = tokio::task::spawn_blocking(move || {
                let mut generate =
                    |state, activates_at| new_record(&kek, policy.alg, state, activates_at, now);
                match (kid, rotate) {
                    (Some(kid), _) => {
                        lifecycle::revoke(&records, &kid, now, &policy, &mut generate)
                    }
                    (None, Some(forced)) => {
                        lifecycle::rotate_now(&records, now, &policy, forced, &mut generate)
                            .map(Some)
                    }
                    (None, None) => {
                        lifecycle::scheduled(&records, now, &policy, &mut generate).map(Some)
                    }
                }
            })
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))??;
            let Some(plan) = plan else {
                return Err(KeysError::NotFound);
            };
            if plan.upserts.is_empty() {
                return Ok(());
            }
            let audit = plan
                .audit
                .into_iter()
                .map(|(action, target)| NewAudit {
                    actor: actor.to_string(),
                    action: action.to_string(),
                    target: target.to_string(),
                    reason: reason.to_string(),
                    request_id: request_id.to_string(),
                })
                .collect();
            let upserts = self.seal(&ring, plan.upserts)?;
            match self.store.save_keys(ring.version, upserts, audit).await {
                Ok(_) => return self.reload().await,
                // Another node changed the keys first: follow it, then decide again.
                Err(StoreError::Conflict) => self.reload().await?,
                Err(e) => return Err(e.into()),
            }
        }
        Err(KeysError::Contended)
    }
}

impl Keys {
    /// The stored form of `upserts` and of the manifest that goes with them, all MAC'd as
    /// written at the version this save will create. The manifest keeps every kid ever
    /// known, at its furthest state.
    fn seal(&self, ring: &KeyRing, upserts: Vec<KeyRecord>) -> Result<Vec<StoredKey>, KeysError> {
        let version = ring.version + 1;
        let mac = self.kek.key_record_mac();
        let mut known = ring.known.clone();
        let encoding = |e: serde_json::Error| StoreError::Unavailable(e.to_string());
        let mut out = Vec::with_capacity(upserts.len() + 1);
        for r in &upserts {
            integrity::advance(&mut known, &r.kid, r.state);
            out.push(integrity::seal_record(mac, r, version).map_err(encoding)?);
        }
        out.push(integrity::seal_manifest(mac, &known, version).map_err(encoding)?);
        Ok(out)
    }
}

/// The operator-facing explanation of a refused rotation, naming the override.
fn refused(r: &lifecycle::Refusal, now: i64) -> KeysError {
    KeysError::RotationRefused(match r {
        lifecycle::Refusal::NoNext => "there is no published next key, so a new key would sign \
            before any verifier has fetched it; pass force: true (latch keys rotate --force) to \
            rotate anyway, or keys revoke for a compromised key"
            .to_string(),
        lifecycle::Refusal::NextTooYoung { kid, ready_at_ms } => format!(
            "the next key {kid} has not been published long enough for cached JWKS documents to \
             include it; it may be promoted in {}s, or pass force: true (latch keys rotate \
             --force) to rotate anyway",
            (ready_at_ms - now + 999).div_euclid(1000)
        ),
    })
}

/// Runs scheduled key changes until `shutdown` fires.
pub async fn run_rotation(keys: Arc<Keys>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(keys.policy.tick());
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => return,
        }
        if let Err(error) = keys.tick().await {
            tracing::warn!(%error, "scheduled key change failed; retrying");
        }
    }
}
