//! Push delivery (RFC 8935): the node holding the store's push lease runs one worker per
//! enabled push stream; each worker pushes the stream's pending SETs one at a time, in
//! order, retrying a failed push with backoff (never skipping it), and saves the cursor
//! after each batch. Off the request path: a revocation only appends to the log.
//!
//! **One pusher at a time.** The lease (`Store::ssf_lease`, store time) names one node;
//! the holder renews it every third of `ssf.lease`, and its workers stop pushing once
//! two thirds of `ssf.lease` have passed (by the local clock) since the last renewal
//! began without a newer one, so a node that lost the store or froze stops before
//! another can take over. Should two ever push at once (a clock jump), the cursor only
//! moves forward (compare-and-set, max): a receiver may see a SET twice, never a gap.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::client::Connection;
use super::pusher::Job;
use super::{push_allowed, window};
use crate::app::App;
use crate::metrics as m;
use crate::ssf::{self, set, Delivery, Pos, Status, Stream};
use crate::store::StoreError;
use crate::time::now_ms;

/// SETs one worker pushes between cursor saves: at most this many go out again after a
/// crash.
const BATCH: usize = 128;
/// Log entries a worker reads at a time: enough for a batch, though the stream may not
/// carry every revocation, and no more (the read shares the store with revocations).
const WINDOW_READ: usize = 2 * BATCH;
/// An idle worker re-reads its stream at least this often (a verification requested on
/// another node reaches it this way).
const IDLE_RECHECK: Duration = Duration::from_millis(250);
/// After an idle worker wakes to a new revocation, it waits this long so that the
/// revocations recorded meanwhile go out in the same batch: at a steady trickle, one
/// cursor save (a durable store write) per this period, not one per revocation.
const GATHER: Duration = Duration::from_millis(20);
/// The first retry delay of a failed push; it doubles up to `ssf.push_max_backoff`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Until when (local Unix ms) this node may push: two thirds of the lease after the
/// start of its last successful renewal.
type HeldUntil = Arc<AtomicI64>;

fn holds(held: &HeldUntil) -> bool {
    now_ms() < held.load(Ordering::Acquire)
}

/// Runs until `stop`: takes or renews the lease, and while held keeps one worker per
/// enabled push stream whose endpoint is still configured.
pub async fn run(app: App, mut stop: watch::Receiver<bool>) {
    // No receiver, no streams: a node without Shared Signals touches nothing for them.
    let receivers = app
        .config
        .clients
        .iter()
        .any(|c| c.roles.iter().any(|r| r == "ssf_receiver"));
    if !receivers {
        return;
    }
    let lease = app.config.ssf.lease;
    let held: HeldUntil = Arc::new(AtomicI64::new(0));
    let mut workers: HashMap<String, JoinHandle<()>> = HashMap::new();
    let mut refused: HashSet<String> = HashSet::new();
    let mut was_holder = false;
    loop {
        let started = now_ms();
        let holder = match app
            .store
            .ssf_lease(app.ssf.node.clone(), lease.as_millis() as i64)
            .await
        {
            Ok(h) => h,
            Err(error) => {
                tracing::warn!(%error, "ssf push lease not renewed");
                false
            }
        };
        if holder {
            held.store(
                started + (lease.as_millis() as i64) * 2 / 3,
                Ordering::Release,
            );
        } else {
            held.store(0, Ordering::Release);
        }
        if holder != was_holder {
            tracing::info!(holder, node = %app.ssf.node, "ssf push lease");
            was_holder = holder;
        }
        workers.retain(|_, w| !w.is_finished());
        let wanted = if holder {
            push_streams(&app, &mut refused).await
        } else {
            Some(HashSet::new())
        };
        if let Some(wanted) = wanted {
            workers.retain(|id, w| {
                let keep = wanted.contains(id);
                if !keep {
                    w.abort();
                }
                keep
            });
            for id in wanted {
                workers
                    .entry(id.clone())
                    .or_insert_with(|| tokio::spawn(push_stream(app.clone(), id, held.clone())));
            }
        }
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(lease / 3) => {}
            _ = app.ssf.wake.notified() => {}
        }
    }
    for (_, w) in workers {
        w.abort();
    }
}

/// Ids of the enabled push streams whose endpoint is configured for their receiver;
/// `None` if the store could not say.
async fn push_streams(app: &App, refused: &mut HashSet<String>) -> Option<HashSet<String>> {
    let all = match app.store.ssf_streams().await {
        Ok(all) => all,
        Err(error) => {
            tracing::warn!(%error, "ssf streams not listed");
            return None;
        }
    };
    let mut out = HashSet::new();
    for stored in all {
        let Ok(s) = Stream::decode(&stored) else {
            continue;
        };
        let Delivery::Push { endpoint_url, .. } = &s.delivery else {
            continue;
        };
        if s.status != Status::Enabled {
            continue;
        }
        if !push_allowed(&app.config, &s.owner, endpoint_url) {
            // The operator removed the endpoint: nothing goes there, and the stream waits.
            if refused.insert(s.id.clone()) {
                tracing::warn!(stream = %s.id, receiver = %s.owner,
                    "ssf push endpoint no longer configured; the stream is held");
            }
            continue;
        }
        refused.remove(&s.id);
        out.insert(s.id);
    }
    Some(out)
}

/// One stream's worker: push, save the cursor, wait for more; returns when the stream is
/// gone, no longer an enabled push stream, or the lease lapsed.
async fn push_stream(app: App, id: String, held: HeldUntil) {
    let mut changes = app.table.changes();
    let mut conn: Option<Connection> = None;
    let mut backoff = FIRST_BACKOFF;
    while holds(&held) {
        let (stream, version) = match app.store.ssf_stream(id.clone()).await {
            Ok(Some(stored)) => match Stream::decode(&stored) {
                Ok(s) => (s, stored.version),
                Err(error) => {
                    tracing::error!(%error, "ssf stream unreadable");
                    return;
                }
            },
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, stream = %id, "ssf stream not read");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let Delivery::Push {
            endpoint_url,
            authorization_header,
        } = &stream.delivery
        else {
            return;
        };
        if stream.status != Status::Enabled
            || !push_allowed(&app.config, &stream.owner, endpoint_url)
        {
            return;
        }
        let win = match window(&app, &stream, WINDOW_READ).await {
            Ok(w) => w,
            Err(error) => {
                tracing::warn!(%error, stream = %id, "revocation log not read");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let issuer = &app.config.issuer;
        let pending = ssf::pending(&stream, &win, issuer, BATCH);
        if pending.is_empty() {
            let mut skipped = stream.clone();
            if ssf::mark_delivered(&mut skipped, &win, issuer, &[]) {
                // Revocations this stream does not carry: move past them (a lost race
                // only means doing it again).
                let _ = app
                    .store
                    .ssf_save_stream(id.clone(), version, skipped.encode())
                    .await;
                continue;
            }
            let wake = app.ssf.wake.notified();
            let woken = tokio::select! {
                _ = changes.changed() => true,
                _ = wake => true,
                _ = tokio::time::sleep(IDLE_RECHECK) => false,
            };
            if woken {
                tokio::time::sleep(GATHER).await;
            }
            continue;
        }
        let signer = match app
            .fresh(now_ms())
            .map_err(crate::app::Error::from)
            .and_then(|v| v.set_signer())
        {
            Ok(s) => s,
            Err(error) => {
                tracing::debug!(%error, stream = %id, "ssf SETs not signed yet");
                tokio::time::sleep(FIRST_BACKOFF).await;
                continue;
            }
        };
        let iat = now_ms().div_euclid(1000);
        let sets = pending
            .iter()
            .map(|p| (p.pos, set::claims(&stream, p, issuer, iat)))
            .collect();
        let outcome = app
            .ssf
            .pusher
            .push(Job {
                signer,
                endpoint: endpoint_url.clone(),
                authorization: authorization_header.clone(),
                sets,
                conn: conn.take(),
                held_until: held.clone(),
            })
            .await;
        conn = outcome.conn;
        let now = now_ms();
        for (pos, took) in &outcome.delivered {
            metrics::counter!(m::SSF_SETS_DELIVERED, "method" => "push").increment(1);
            metrics::histogram!(m::SSF_PUSH_DURATION).record(took.as_secs_f64());
            if let Some(e) = win.events.iter().find(|e| e.seq == pos.seq) {
                let lag = (now - e.revoked_at_ms).max(0) as f64 / 1000.0;
                metrics::histogram!(m::SSF_DELIVERY_LAG).record(lag);
            }
        }
        if !outcome.delivered.is_empty() {
            backoff = FIRST_BACKOFF;
        }
        let delivered: Vec<Pos> = outcome.delivered.iter().map(|(p, _)| *p).collect();
        let failed = match &outcome.failed {
            Some((pos, error)) => {
                metrics::counter!(m::SSF_PUSH_FAILURES, "reason" => error.label()).increment(1);
                tracing::warn!(%error, stream = %id, jti = %ssf::jti(&id, *pos),
                    retry_in_ms = backoff.as_millis() as u64, "ssf push failed; retrying");
                true
            }
            None => false,
        };
        if !delivered.is_empty() {
            save_cursor(&app, &id, &win, &delivered).await;
        }
        if failed {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(app.config.ssf.push_max_backoff);
        }
    }
}

/// Records `delivered` on stream `id` (compare-and-set, retried on a conflict). A save
/// that fails leaves the SETs pending: they go out again, at least once.
async fn save_cursor(app: &App, id: &str, win: &ssf::Window, delivered: &[Pos]) {
    for _ in 0..super::CAS_ATTEMPTS {
        let (mut stream, version) = match app.store.ssf_stream(id.to_string()).await {
            Ok(Some(stored)) => match Stream::decode(&stored) {
                Ok(s) => (s, stored.version),
                Err(_) => return,
            },
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, stream = %id, "ssf cursor not saved; SETs will be sent again");
                return;
            }
        };
        if !ssf::mark_delivered(&mut stream, win, &app.config.issuer, delivered) {
            return;
        }
        match app
            .store
            .ssf_save_stream(id.to_string(), version, stream.encode())
            .await
        {
            Ok(_) => return,
            Err(StoreError::Conflict) => continue,
            Err(error) => {
                tracing::warn!(%error, stream = %id, "ssf cursor not saved; SETs will be sent again");
                return;
            }
        }
    }
}
