//! Token Status List on the node: assigning each new access token an index, the group
//! commit that makes its record durable before the token is answered, and rendering any
//! list (this node's or another's) from its stored records and this node's revocation
//! table.
//!
//! **Architecture Invariant:** no live token's index lacks a durable record. A token is
//! signed with its `status` claim, its record is written by the group commit, and only
//! after the write is acknowledged is the token answered; a failed write fails the
//! request (503) and abandons the list. An index without a record renders `INVALID`.
//!
//! Each list's bits are the same decision `/introspect` makes, minus the signature
//! ([`View::decide_recorded`]), so every revocation path (RFC 7009, admin kinds, refresh
//! reuse, key revocation, contract narrowing) flips them: they all go through the table,
//! the key ring or the contracts, and none needs to know about lists.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::error::Error;
use super::view::View;
use super::App;
use crate::config::{Config, StatusListConfig};
use crate::metrics as m;
use crate::revocation::Point;
use crate::status::{self, Bits, ListId, ListMeta, Record, Status, StatusRef};
use crate::store::{SharedStore, StoreError};
use crate::time::now_ms;
use crate::tokens::AccessClaims;

/// How long a rendered list is served again unchanged while nothing it depends on moved
/// (the table's applied point, the key ring, its records). Time-driven changes (a key
/// retiring, a scheduled contract, expiry) show within this.
const RENDER_REUSE_MS: i64 = 1000;

/// The node's status lists: the list it issues into, the committer, the render cache.
pub struct StatusLists {
    config: StatusListConfig,
    /// `{issuer}/statuslists/`.
    base_uri: String,
    issuer: String,
    /// How long after its last possible issuance a list's tokens can live (ms).
    token_life_ms: i64,
    store: SharedStore,
    /// The list this node issues into.
    open: Mutex<Option<Arc<OpenList>>>,
    /// One opener at a time.
    opening: tokio::sync::Mutex<()>,
    /// Records waiting for the group commit.
    commits: mpsc::UnboundedSender<Pending>,
    /// What this node knows of each list it rendered.
    cache: DashMap<ListId, Arc<tokio::sync::Mutex<ListCache>>>,
    /// Authenticates stored records ([`Record::seal`]), derived from the KEK.
    mac: ring::hmac::Key,
}

/// A list this node issues into.
struct OpenList {
    meta: ListMeta,
    uri: String,
    next: AtomicU64,
    /// A write failed: no more indices from it (what was answered stays valid).
    abandoned: AtomicBool,
}

/// One token's record on its way to the store.
struct Pending {
    list: Arc<OpenList>,
    idx: u64,
    record: String,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// What a node holds of one list: its records (immutable once written) and the last
/// rendering.
#[derive(Default)]
struct ListCache {
    meta: Option<ListMeta>,
    /// By index; boxed so that unfilled slots cost a pointer.
    records: Vec<Option<Box<Record>>>,
    /// The lowest index without a record: the next load starts here.
    first_gap: u64,
    /// Indices whose stored record was refused (reported once each).
    rejected: Vec<u64>,
    rendered: Option<Rendered>,
}

struct Rendered {
    key: (Point, u64, usize),
    at_ms: i64,
    jwt: Bytes,
}

/// A rendered Status List Token and for how long (seconds) a validator may keep it.
pub struct ListToken {
    pub jwt: Bytes,
    pub max_age: u64,
}

impl StatusLists {
    /// `None` when `[status_list] enabled = false`. Starts the committer. `mac`
    /// authenticates the records (the KEK's status-record key).
    pub fn new(
        config: &Config,
        store: SharedStore,
        mac: ring::hmac::Key,
    ) -> Option<Arc<StatusLists>> {
        let sl = &config.status_list;
        if !sl.enabled {
            return None;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let lists = Arc::new(StatusLists {
            config: sl.clone(),
            base_uri: format!("{}/statuslists/", config.issuer_base()),
            issuer: config.issuer.clone(),
            token_life_ms: (crate::config::ACCESS_TTL_CAP + config.tokens.leeway).as_millis()
                as i64,
            store: store.clone(),
            open: Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
            commits: tx,
            cache: DashMap::new(),
            mac,
        });
        tokio::spawn(commit_loop(
            store,
            rx,
            sl.commit_batch,
            Arc::new(Semaphore::new(sl.commits_in_flight)),
        ));
        Some(lists)
    }

    /// The URI of list `id`.
    pub fn uri(&self, id: ListId) -> String {
        format!("{}{id}", self.base_uri)
    }

    /// `ttl` in seconds.
    pub fn ttl_secs(&self) -> u64 {
        self.config.ttl.as_secs()
    }

    /// An index for a token expiring at `exp` (Unix s), in this node's open list, opening
    /// a new list when there is none, it is full, its window passed, or it was abandoned.
    async fn assign(&self, now: i64, exp: i64) -> Result<(Arc<OpenList>, u64), Error> {
        loop {
            if let Some((list, idx)) = self.take_index(now, exp) {
                return Ok((list, idx));
            }
            let _one = self.opening.lock().await;
            if self.take_index_peek(now, exp) {
                continue;
            }
            let meta = ListMeta::open(
                ListId::random(),
                self.config.list_size,
                now,
                self.config.window.as_millis() as i64,
                self.token_life_ms,
            );
            self.store.status_open_list(meta.clone()).await?;
            metrics::counter!(m::STATUS_LISTS_OPENED).increment(1);
            let uri = self.uri(meta.id);
            let list = Arc::new(OpenList {
                meta,
                uri,
                next: AtomicU64::new(0),
                abandoned: AtomicBool::new(false),
            });
            *self.open.lock().unwrap_or_else(|p| p.into_inner()) = Some(list);
        }
    }

    fn usable(list: &OpenList, now: i64, exp: i64) -> bool {
        !list.abandoned.load(Ordering::Acquire)
            && now < list.meta.issue_until_ms
            && exp.saturating_mul(1000) <= list.meta.expires_ms
    }

    fn take_index(&self, now: i64, exp: i64) -> Option<(Arc<OpenList>, u64)> {
        let list = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        if !Self::usable(&list, now, exp) {
            return None;
        }
        let idx = list.next.fetch_add(1, Ordering::AcqRel);
        (idx < list.meta.size).then_some((list, idx))
    }

    /// Whether the open list (maybe just opened by another request) can still take one.
    fn take_index_peek(&self, now: i64, exp: i64) -> bool {
        let guard = self.open.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().is_some_and(|l| {
            Self::usable(l, now, exp) && l.next.load(Ordering::Acquire) < l.meta.size
        })
    }

    /// Gives `claims` an index, signs it, and returns the token once its record is
    /// durable. A failed write: 503, and the list is abandoned.
    pub async fn sign_recorded(
        &self,
        view: &View<'_>,
        claims: &AccessClaims,
    ) -> Result<String, Error> {
        let (list, idx) = self.assign(view.now_ms(), claims.exp).await?;
        let mut claims = claims.clone();
        claims.status = Some(Status {
            status_list: StatusRef {
                idx,
                uri: list.uri.clone(),
            },
        });
        let (token, kid) = view.sign_with_kid(&claims)?;
        let record = Record::new(&kid, &claims).seal(&self.mac, list.meta.id, idx);
        let (done, durable) = oneshot::channel();
        let pending = Pending {
            list,
            idx,
            record,
            done,
        };
        if self.commits.send(pending).is_err() {
            return Err(Error::Unavailable("status list committer stopped".into()));
        }
        match durable.await {
            Ok(Ok(())) => Ok(token),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(Error::Unavailable("status list commit lost".into())),
        }
    }

    /// The Status List Token of list `id` as this node decides it now.
    pub async fn render(&self, app: &App, id: ListId) -> Result<ListToken, Error> {
        let entry = self.cache.entry(id).or_default().clone();
        let mut cache = entry.lock().await;
        let loaded = self.store.status_records(id, cache.first_gap).await?;
        let now = now_ms();
        let Some(loaded) = loaded.filter(|l| l.meta.expires_ms > now) else {
            drop(cache);
            self.cache.remove(&id);
            return Err(Error::NotFound(format!("no status list {id}")));
        };
        let mut ahead: Vec<Point> = Vec::new();
        for (idx, text) in loaded.records {
            if idx >= loaded.meta.size {
                continue;
            }
            let record = match Record::open(&self.mac, id, idx, &text) {
                Ok(record) => record,
                Err(why) => {
                    if !cache.rejected.contains(&idx) {
                        cache.rejected.push(idx);
                        tracing::warn!(list = %id, idx, reason = why.as_str(), "status-list record refused; its index reads INVALID");
                        metrics::counter!(m::STATUS_RECORDS_REJECTED, "reason" => why.as_str())
                            .increment(1);
                    }
                    continue;
                }
            };
            let point = record.claims.stamp().point();
            if app.table.validity(point) == crate::revocation::Verdict::StampAhead
                && !ahead.contains(&point)
            {
                ahead.push(point);
            }
            let i = idx as usize;
            if cache.records.len() <= i {
                cache.records.resize_with(i + 1, || None);
            }
            cache.records[i] = Some(Box::new(record));
        }
        cache.first_gap = cache
            .records
            .iter()
            .position(Option::is_none)
            .unwrap_or(cache.records.len()) as u64;
        cache.meta = Some(loaded.meta.clone());
        // A record stamped by a node further along: wait (bounded) for this one to catch
        // up rather than render a brand-new token INVALID.
        for point in ahead {
            app.await_stamp(point).await;
        }
        let view = app.fresh(now_ms())?;
        // The count of records held, not the highest index: a record that fills a gap
        // (commits may land out of order) must change the rendering at once.
        let held = cache.records.iter().filter(|r| r.is_some()).count();
        let key = (app.table.stamp_now(), view.keys_version(), held);
        if let Some(r) = &cache.rendered {
            let age = view.now_ms() - r.at_ms;
            if r.key == key && (0..RENDER_REUSE_MS).contains(&age) {
                return Ok(ListToken {
                    jwt: r.jwt.clone(),
                    max_age: self.ttl_secs().saturating_sub((age / 1000) as u64),
                });
            }
        }
        let mut bits = Bits::all_invalid(loaded.meta.size);
        for (i, record) in cache.records.iter().enumerate() {
            if let Some(r) = record {
                if view.decide_recorded(&r.kid, &r.claims).is_ok() {
                    bits.set_valid(i as u64);
                }
            }
        }
        let iat = view.now_ms().div_euclid(1000);
        let ttl = self.ttl_secs();
        let claims = status::list_claims(
            &self.issuer,
            &self.uri(id),
            iat,
            iat + ttl as i64,
            ttl,
            &bits.lst(),
        );
        let jwt = Bytes::from(view.sign_status_list(&claims)?);
        metrics::counter!(m::STATUS_LISTS_RENDERED).increment(1);
        cache.rendered = Some(Rendered {
            key,
            at_ms: view.now_ms(),
            jwt: jwt.clone(),
        });
        Ok(ListToken { jwt, max_age: ttl })
    }

    /// The URIs of every list not yet expired (draft §9, Status List Aggregation).
    pub async fn aggregation(&self) -> Result<Vec<String>, Error> {
        let mut lists = self.store.status_lists(now_ms()).await?;
        lists.sort_by_key(|l| (l.created_ms, l.id));
        Ok(lists.into_iter().map(|l| self.uri(l.id)).collect())
    }

    /// Drops expired lists from the store and from this node's cache.
    pub async fn prune(&self) -> Result<u64, StoreError> {
        let now = now_ms();
        let n = self.store.status_prune(now).await?;
        self.cache.retain(|_, c| {
            c.try_lock()
                .map_or(true, |c| c.meta.as_ref().is_none_or(|m| m.expires_ms > now))
        });
        Ok(n)
    }
}

/// The group commit: takes whatever records are waiting (up to `batch_max`) as one store
/// write per list, keeping up to `in_flight` writes going at once; each waiter learns
/// the result of its write.
async fn commit_loop(
    store: SharedStore,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    batch_max: usize,
    in_flight: Arc<Semaphore>,
) {
    while let Some(first) = rx.recv().await {
        // Waiting for a slot lets the next batch grow meanwhile.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let store = store.clone();
        tokio::spawn(async move {
            write_batch(&store, batch).await;
            drop(permit);
        });
    }
}

async fn write_batch(store: &SharedStore, mut batch: Vec<Pending>) {
    // Almost always one list; at a rollover two.
    batch.sort_by_key(|p| p.list.meta.id);
    while !batch.is_empty() {
        let id = batch[0].list.meta.id;
        let split = batch
            .iter()
            .position(|p| p.list.meta.id != id)
            .unwrap_or(batch.len());
        let rest = batch.split_off(split);
        let records = batch.iter().map(|p| (p.idx, p.record.clone())).collect();
        let result = store.status_append(id, records).await;
        let label = if result.is_ok() { "ok" } else { "failed" };
        metrics::counter!(m::STATUS_COMMITS, "result" => label).increment(1);
        if result.is_ok() {
            metrics::counter!(m::STATUS_RECORDS_WRITTEN).increment(batch.len() as u64);
        }
        if let Err(error) = &result {
            tracing::warn!(%error, list = %id, "status list records not written; abandoning the list");
            batch[0].list.abandoned.store(true, Ordering::Release);
        }
        for p in batch {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(StoreError::Conflict) => Err(StoreError::Unavailable(
                    "the status list is gone from the store".into(),
                )),
                Err(e) => Err(StoreError::Unavailable(e.to_string())),
            };
            let _ = p.done.send(r);
        }
        batch = rest;
    }
}

/// Prunes expired lists once a minute until `shutdown`.
pub async fn run_pruning(app: App, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let Some(lists) = app.status.clone() else {
        return;
    };
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(error) = lists.prune().await {
                    tracing::warn!(%error, "could not prune expired status lists");
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}
