//! Unit tests of the follower: a fake store the test steers (its log, its epochs, its
//! feed, its failures) and tokio's paused clock.
//!
//! Under `cfg(test)` the follower reads the time from [`now_ms`] here: the wall clock at
//! the test's start plus tokio's elapsed (paused) time, so `tokio::time::advance` moves
//! `fresh_at`, entry expiry and the table's age exactly. Every test asserts on what the
//! table shows: `applied`, the epochs, verdicts, freshness.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use super::{Follower, FollowerConfig, CHUNK, FEED_DOWN_POLL};
use crate::app::keys::Keys;
use crate::audit::{AuditRecord, NewAudit};
use crate::keys::{Alg, Kek, KeyPolicy, KeySet, StoredKey};
use crate::revocation::{
    ClosedEpoch, NewRevocation, Point, Retention, RevocationEvent, RevocationKind, Stamp, Table,
    Verdict,
};
use crate::sessions::{RefreshRecord, Rotation};
use crate::ssf::StoredStream;
use crate::store::{BoxFuture, Head, SharedStore, Store, StoreError, StoreEvent};

use RevocationKind::{Client, Session, Subject, Token};

const E1: u64 = 0xe1;
const E2: u64 = 0xe2;

const MAX_STALENESS: Duration = Duration::from_millis(1000);
const MAX_STALENESS_MS: i64 = 1000;

const RETENTION: Retention = Retention {
    token_ms: 3_600_000,
    session_ms: 86_400_000,
};

// === the clock ===

thread_local! {
    /// (tokio instant, wall-clock ms) at the start of the running test.
    static ORIGIN: Cell<Option<(tokio::time::Instant, i64)>> = const { Cell::new(None) };
}

/// The follower's clock in unit tests. A `#[tokio::test]` runs its tasks on its own thread,
/// so the origin a test set is the one its follower reads.
pub(super) fn now_ms() -> i64 {
    match ORIGIN.get() {
        Some((at, wall)) => wall + at.elapsed().as_millis() as i64,
        None => crate::time::now_ms(),
    }
}

/// Anchors [`now_ms`] to tokio's clock for this test.
fn start_clock() {
    ORIGIN.set(Some((tokio::time::Instant::now(), crate::time::now_ms())));
}

/// Lets the follower task run until it waits for something new. On the current-thread
/// runtime of `#[tokio::test]` a yield hands it the thread, and the fake store answers at
/// once, so this neither depends on timing nor moves the (paused) clock.
async fn settle() {
    for _ in 0..64 {
        tokio::task::yield_now().await;
    }
}

/// Moves the paused clock, then lets the follower react.
async fn advance(by: Duration) {
    tokio::time::advance(by).await;
    settle().await;
}

fn poll_interval() -> Duration {
    FollowerConfig::new(MAX_STALENESS).poll
}

// === the fake store ===

/// A store in memory. Its history, epochs, feed and failures are the test's to steer.
struct FakeStore {
    state: Mutex<State>,
    feed: broadcast::Sender<StoreEvent>,
    /// Every call fails: the store is down.
    failing: AtomicBool,
    /// Only `append_revocation` fails: a write-back cannot be written.
    appends_failing: AtomicBool,
    feed_live: AtomicBool,
    /// How many `head` calls were answered.
    heads: AtomicUsize,
    /// Log reads that still succeed before every further one fails (`usize::MAX`: all).
    log_reads_left: AtomicUsize,
}

#[derive(Default)]
struct State {
    epoch: u64,
    closed: Vec<ClosedEpoch>,
    /// What `head` reports: normally the last seq of `log`.
    seq: u64,
    log: Vec<RevocationEvent>,
    /// Revocations written through the trait (the follower's write-backs).
    written: Vec<NewRevocation>,
    audit: Vec<NewAudit>,
}

/// Fewer than the lag test sends between two yields.
const FEED_CAPACITY: usize = 16;

impl FakeStore {
    fn new(epoch: u64) -> Arc<FakeStore> {
        Arc::new(FakeStore {
            state: Mutex::new(State {
                epoch,
                ..State::default()
            }),
            feed: broadcast::channel(FEED_CAPACITY).0,
            failing: AtomicBool::new(false),
            appends_failing: AtomicBool::new(false),
            feed_live: AtomicBool::new(true),
            heads: AtomicUsize::new(0),
            log_reads_left: AtomicUsize::new(usize::MAX),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Another node's revocation: in the log and the head, not (yet) announced.
    fn log(&self, kind: RevocationKind, value: &str) -> RevocationEvent {
        self.log_at(kind, value, now_ms())
    }

    fn log_at(&self, kind: RevocationKind, value: &str, at_ms: i64) -> RevocationEvent {
        let mut s = self.state();
        s.seq += 1;
        let e = RevocationEvent {
            seq: s.seq,
            kind,
            value: value.into(),
            revoked_at_ms: at_ms,
        };
        s.log.push(e.clone());
        e
    }

    fn announce(&self, e: &RevocationEvent) {
        let epoch = self.state().epoch;
        self.announce_in(epoch, e);
    }

    fn announce_in(&self, epoch: u64, e: &RevocationEvent) {
        let _ = self.feed.send(StoreEvent::Revocation {
            epoch,
            event: e.clone(),
        });
    }

    /// The store comes back from an older copy: everything above `seq` is gone, the open
    /// epoch closed at `seq`, `new_epoch` opened.
    fn lose_after(&self, seq: u64, new_epoch: u64) {
        let mut s = self.state();
        s.log.retain(|e| e.seq <= seq);
        let id = s.epoch;
        s.closed.push(ClosedEpoch { id, closed_at: seq });
        s.epoch = new_epoch;
        s.seq = seq;
    }

    /// The store lost everything (`FLUSHALL`): a new epoch with no history.
    fn forget_everything(&self, new_epoch: u64) {
        let mut s = self.state();
        *s = State {
            epoch: new_epoch,
            written: std::mem::take(&mut s.written),
            audit: std::mem::take(&mut s.audit),
            ..State::default()
        };
    }

    /// Someone rewrote the counter within the open epoch.
    fn rewrite_seq(&self, seq: u64) {
        self.state().seq = seq;
    }

    fn set_failing(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }

    fn set_appends_failing(&self, on: bool) {
        self.appends_failing.store(on, Ordering::SeqCst);
    }

    /// `n` more log reads succeed, then every one fails.
    fn fail_log_reads_after(&self, n: usize) {
        self.log_reads_left.store(n, Ordering::SeqCst);
    }

    fn set_feed_live(&self, on: bool) {
        self.feed_live.store(on, Ordering::SeqCst);
    }

    fn heads(&self) -> usize {
        self.heads.load(Ordering::SeqCst)
    }

    /// (kind, value) of every revocation written through the trait, sorted.
    fn written(&self) -> Vec<(RevocationKind, String)> {
        let mut w: Vec<_> = self
            .state()
            .written
            .iter()
            .map(|r| (r.kind, r.value.clone()))
            .collect();
        w.sort_by(|a, b| (a.0.as_str(), &a.1).cmp(&(b.0.as_str(), &b.1)));
        w
    }

    fn audit_actions(&self) -> Vec<String> {
        self.state()
            .audit
            .iter()
            .map(|a| a.action.clone())
            .collect()
    }

    fn head_of(s: &State) -> Head {
        Head {
            revocation_seq: s.seq,
            keys_version: 0,
            epoch: s.epoch,
            closed: s.closed.clone(),
            time_ms: now_ms(),
        }
    }

    /// Answers at once with `f`'s result, or fails while the store is down.
    fn answer<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State) -> Result<T, StoreError>,
    ) -> BoxFuture<'_, Result<T, StoreError>> {
        let result = if self.failing.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("fake store is down".into()))
        } else {
            f(&mut self.state())
        };
        Box::pin(std::future::ready(result))
    }
}

fn not_faked<T>() -> Result<T, StoreError> {
    Err(StoreError::Unavailable("not used by the follower".into()))
}

impl Store for FakeStore {
    fn kind(&self) -> &'static str {
        "fake"
    }

    /// Like a real store: logged, then announced.
    fn append_revocation(
        &self,
        rev: NewRevocation,
    ) -> BoxFuture<'_, Result<RevocationEvent, StoreError>> {
        let down =
            self.failing.load(Ordering::SeqCst) || self.appends_failing.load(Ordering::SeqCst);
        let result = if down {
            Err(StoreError::Unavailable("fake store refuses writes".into()))
        } else {
            self.state().written.push(rev.clone());
            let e = self.log(rev.kind, &rev.value);
            self.announce(&e);
            Ok(e)
        };
        Box::pin(std::future::ready(result))
    }

    fn revocations_after(
        &self,
        after: u64,
        since_ms: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<RevocationEvent>, StoreError>> {
        let left = self.log_reads_left.load(Ordering::SeqCst);
        if left == 0 {
            let down = StoreError::Unavailable("fake log read fails".into());
            return Box::pin(std::future::ready(Err(down)));
        }
        if left != usize::MAX {
            self.log_reads_left.store(left - 1, Ordering::SeqCst);
        }
        self.answer(move |s| {
            Ok(s.log
                .iter()
                .filter(|e| e.seq > after && e.revoked_at_ms >= since_ms)
                .take(limit)
                .cloned()
                .collect())
        })
    }

    fn head(&self) -> BoxFuture<'_, Result<Head, StoreError>> {
        self.answer(|s| {
            self.heads.fetch_add(1, Ordering::SeqCst);
            Ok(FakeStore::head_of(s))
        })
    }

    fn bump_epoch(&self, audit: NewAudit) -> BoxFuture<'_, Result<Head, StoreError>> {
        self.answer(move |s| {
            let (id, closed_at) = (s.epoch, s.seq);
            s.closed.push(ClosedEpoch { id, closed_at });
            s.epoch = id.wrapping_mul(31).wrapping_add(7);
            s.audit.push(audit);
            Ok(FakeStore::head_of(s))
        })
    }

    fn feed_live(&self) -> bool {
        self.feed_live.load(Ordering::SeqCst)
    }

    fn prune_revocations(&self, _: i64, _: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.answer(|_| Ok(0))
    }

    fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.feed.subscribe()
    }

    fn load_keys(&self) -> BoxFuture<'_, Result<KeySet, StoreError>> {
        self.answer(|_| Ok(KeySet::default()))
    }

    fn save_keys(
        &self,
        _: u64,
        _: Vec<StoredKey>,
        _: Vec<NewAudit>,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.answer(|_| not_faked())
    }

    fn append_audit(&self, audit: NewAudit) -> BoxFuture<'_, Result<AuditRecord, StoreError>> {
        self.answer(move |s| {
            s.audit.push(audit.clone());
            Ok(audit.recorded(s.audit.len() as u64, now_ms()))
        })
    }

    fn claim_once(&self, _: String, _: i64) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.answer(|_| not_faked())
    }

    fn release_claim(&self, _: String) -> BoxFuture<'_, Result<(), StoreError>> {
        self.answer(|_| not_faked())
    }

    fn open_session(
        &self,
        _: String,
        _: RefreshRecord,
        _: NewAudit,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.answer(|_| not_faked())
    }

    fn refresh_token(
        &self,
        _: String,
    ) -> BoxFuture<'_, Result<Option<(RefreshRecord, bool)>, StoreError>> {
        self.answer(|_| not_faked())
    }

    fn rotate_refresh(
        &self,
        _: String,
        _: String,
        _: RefreshRecord,
    ) -> BoxFuture<'_, Result<Rotation, StoreError>> {
        self.answer(|_| not_faked())
    }

    fn mark_reused(&self, _: String) -> BoxFuture<'_, Result<(), StoreError>> {
        self.answer(|_| not_faked())
    }

    fn prune_audit(&self, _: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.answer(|_| not_faked())
    }

    fn audit_after(&self, _: u64, _: usize) -> BoxFuture<'_, Result<Vec<AuditRecord>, StoreError>> {
        self.answer(|_| not_faked())
    }

    fn append_contract(
        &self,
        _: crate::store::ContractWrite,
        _: NewAudit,
    ) -> BoxFuture<'_, Result<RevocationEvent, StoreError>> {
        self.answer(|_| not_faked())
    }

    fn contract_entries(&self) -> BoxFuture<'_, Result<Vec<(String, bool)>, StoreError>> {
        self.answer(|_| not_faked())
    }

    fn append_grant(
        &self,
        _: crate::store::GrantWrite,
        _: NewAudit,
    ) -> BoxFuture<'_, Result<RevocationEvent, StoreError>> {
        self.answer(|_| not_faked())
    }

    fn grant(&self, _: String) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        self.answer(|_| not_faked())
    }

    fn grant_entries(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        self.answer(|_| not_faked())
    }

    fn report_node(&self, _: crate::nodes::NodeReport) -> BoxFuture<'_, Result<i64, StoreError>> {
        self.answer(|_| not_faked())
    }

    fn nodes(&self) -> BoxFuture<'_, Result<crate::nodes::Registry, StoreError>> {
        self.answer(|_| not_faked())
    }

    fn ssf_streams(&self) -> BoxFuture<'_, Result<Vec<StoredStream>, StoreError>> {
        self.answer(|_| not_faked())
    }

    fn ssf_stream(&self, _: String) -> BoxFuture<'_, Result<Option<StoredStream>, StoreError>> {
        self.answer(|_| not_faked())
    }

    fn ssf_save_stream(
        &self,
        _: String,
        _: u64,
        _: String,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.answer(|_| not_faked())
    }

    fn ssf_delete_stream(&self, _: String) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.answer(|_| not_faked())
    }

    fn ssf_lease(&self, _: String, _: i64) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.answer(|_| not_faked())
    }

    fn status_open_list(
        &self,
        _: crate::status::ListMeta,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.answer(|_| not_faked())
    }

    fn status_append(
        &self,
        _: crate::status::ListId,
        _: Vec<(u64, String)>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.answer(|_| not_faked())
    }

    fn status_records(
        &self,
        _: crate::status::ListId,
        _: u64,
    ) -> BoxFuture<'_, Result<Option<crate::store::ListRecords>, StoreError>> {
        self.answer(|_| not_faked())
    }

    fn status_lists(
        &self,
        _: i64,
    ) -> BoxFuture<'_, Result<Vec<crate::status::ListMeta>, StoreError>> {
        self.answer(|_| not_faked())
    }

    fn status_prune(&self, _: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.answer(|_| not_faked())
    }
}

// === a node: table, follower, running task ===

fn follower(store: &Arc<FakeStore>, table: &Arc<Table>) -> Follower {
    let shared: SharedStore = store.clone();
    let kek = Kek::from_bytes(&[7; 32]).expect("a 32-byte KEK");
    let policy = KeyPolicy {
        alg: Alg::EdDSA,
        rotate_every_ms: 86_400_000,
        publish_ahead_ms: 3_600_000,
        min_published_ms: 60_000,
        retire_after_ms: 3_600_000,
    };
    let keys = Arc::new(Keys::new(shared.clone(), kek, policy));
    Follower::new(
        shared,
        table.clone(),
        keys,
        FollowerConfig::new(MAX_STALENESS),
    )
}

/// A loaded table with its follower running.
struct Node {
    table: Arc<Table>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Node {
    async fn start(store: &Arc<FakeStore>) -> Node {
        let table = Arc::new(Table::new(RETENTION));
        let f = follower(store, &table);
        f.load().await.expect("initial load");
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(f.run(stopped));
        settle().await;
        Node { table, stop, task }
    }

    fn applied(&self) -> u64 {
        self.table.applied()
    }

    fn age(&self) -> i64 {
        self.table.age_ms(now_ms())
    }

    fn is_fresh(&self) -> bool {
        self.table.is_fresh(now_ms(), MAX_STALENESS_MS)
    }

    /// The verdict on a token that `kind:value` names, stamped `(rse, rsq)`.
    fn verdict(&self, kind: RevocationKind, value: &str, rse: u64, rsq: u64) -> Verdict {
        verdict(&self.table, kind, value, rse, rsq)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.task.abort();
    }
}

fn verdict(table: &Table, kind: RevocationKind, value: &str, rse: u64, rsq: u64) -> Verdict {
    let mut stamp = Stamp {
        jti: "other-jti",
        sid: Some("other-sid"),
        sub: "other-sub",
        client_id: "other-client",
        rsq,
        rse,
        chain_clients: &[],
        chain_jtis: &[],
    };
    match kind {
        Token => stamp.jti = value,
        Session => stamp.sid = Some(value),
        Subject => stamp.sub = value,
        Client => stamp.client_id = value,
        RevocationKind::All | RevocationKind::Contract | RevocationKind::Grant => {}
    }
    table.verdict(&stamp)
}

/// Revoked for a token stamped just below it, live at its own seq.
fn assert_applied(node: &Node, e: &RevocationEvent, epoch: u64) {
    assert_eq!(
        node.verdict(e.kind, &e.value, epoch, e.seq - 1),
        Verdict::Revoked,
        "seq {} ({}:{}) must revoke what was stamped before it",
        e.seq,
        e.kind.as_str(),
        e.value
    );
    assert_eq!(node.verdict(e.kind, &e.value, epoch, e.seq), Verdict::Live);
}

// === loading ===

#[tokio::test(start_paused = true)]
async fn the_initial_load_applies_the_whole_log_and_sets_the_watermark() {
    start_clock();
    let store = FakeStore::new(E1);
    let events = [
        store.log(Subject, "alice"),
        store.log(Session, "s1"),
        store.log(Token, "j1"),
        store.log(Client, "app"),
    ];
    let node = Node::start(&store).await;
    assert_eq!(node.applied(), 4);
    assert_eq!(node.table.epoch(), E1);
    assert_eq!(node.table.stamp_now(), Point::new(E1, 4));
    for e in &events {
        assert_applied(&node, e, E1);
    }
    assert_eq!(node.age(), 0);
    assert!(node.is_fresh());
}

#[tokio::test(start_paused = true)]
async fn the_initial_load_reads_a_log_longer_than_one_chunk() {
    start_clock();
    let store = FakeStore::new(E1);
    let n = CHUNK as u64 * 2 + 3;
    for i in 1..=n {
        store.log(Token, &format!("j{i}"));
    }
    let node = Node::start(&store).await;
    assert_eq!(node.applied(), n);
    assert_eq!(node.table.len(), n as usize);
    for seq in [1, CHUNK as u64, CHUNK as u64 + 1, n] {
        assert_eq!(
            node.verdict(Token, &format!("j{seq}"), E1, seq - 1),
            Verdict::Revoked
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_load_whose_later_chunk_fails_is_neither_applied_to_the_head_nor_fresh() {
    start_clock();
    let store = FakeStore::new(E1);
    let n = CHUNK as u64 * 3;
    for i in 1..=n {
        store.log(Token, &format!("j{i}"));
    }
    // The first chunk is read; the read of the second (issued while the first is
    // applied) fails.
    store.fail_log_reads_after(1);
    let table = Arc::new(Table::new(RETENTION));
    assert!(follower(&store, &table).load().await.is_err());
    assert_eq!(table.applied(), 0, "applied stays below what was not read");
    assert!(!table.is_fresh(now_ms(), MAX_STALENESS_MS));
    assert!(table.len() <= CHUNK, "nothing past the first chunk");
    // Stamps at the head are not valid on this node: it waits or answers inactive.
    assert_eq!(table.validity(Point::new(E1, n)), Verdict::StampAhead);
    // Once reads succeed again, the load reaches the head.
    store.fail_log_reads_after(usize::MAX);
    follower(&store, &table).load().await.unwrap();
    assert_eq!(table.applied(), n);
    assert_eq!(table.len(), n as usize);
    assert!(table.is_fresh(now_ms(), MAX_STALENESS_MS));
}

#[tokio::test(start_paused = true)]
async fn entries_past_their_retention_are_skipped_but_the_watermark_covers_them() {
    start_clock();
    let store = FakeStore::new(E1);
    let old = now_ms() - RETENTION.token_ms - 1;
    store.log_at(Token, "expired-jti", old);
    let kept = store.log_at(Subject, "alice", old);
    let node = Node::start(&store).await;
    assert_eq!(node.applied(), 2);
    // No live token can carry a jti revoked longer ago than the access-token cap.
    assert_eq!(node.verdict(Token, "expired-jti", E1, 0), Verdict::Live);
    // A subject revocation of the same age still kills refresh chains.
    assert_applied(&node, &kept, E1);
    assert_eq!(node.table.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_node_whose_feed_is_down_loads_but_is_not_fresh() {
    start_clock();
    let store = FakeStore::new(E1);
    store.log(Subject, "alice");
    store.set_feed_live(false);
    let table = Arc::new(Table::new(RETENTION));
    follower(&store, &table).load().await.unwrap();
    assert_eq!(table.applied(), 1);
    assert_eq!(verdict(&table, Subject, "alice", E1, 0), Verdict::Revoked);
    assert_eq!(table.age_ms(now_ms()), i64::MAX);
    assert!(!table.is_fresh(now_ms(), MAX_STALENESS_MS));
}

// === the feed ===

#[tokio::test(start_paused = true)]
async fn an_announcement_of_the_next_seq_is_applied_without_a_head_check() {
    start_clock();
    let store = FakeStore::new(E1);
    store.log(Subject, "alice");
    let node = Node::start(&store).await;
    let heads = store.heads();
    let e = store.log(Subject, "bob");
    store.announce(&e);
    settle().await;
    assert_eq!(node.applied(), 2);
    assert_applied(&node, &e, E1);
    assert_eq!(store.heads(), heads, "applied from the announcement alone");
}

#[tokio::test(start_paused = true)]
async fn an_announcement_is_applied_only_as_the_log_holds_it() {
    start_clock();
    let store = FakeStore::new(E1);
    store.log(Subject, "alice");
    let node = Node::start(&store).await;
    // Anyone who can publish can announce the next seq with nothing behind it.
    let forged = RevocationEvent {
        seq: 2,
        kind: Subject,
        value: "mallory".into(),
        revoked_at_ms: now_ms(),
    };
    store.announce(&forged);
    settle().await;
    assert_eq!(node.applied(), 1, "nothing in the log at seq 2");
    assert_eq!(node.verdict(Subject, "mallory", E1, 1), Verdict::Live);
    // The real seq 2 still gets through.
    let real = store.log(Subject, "bob");
    store.announce(&real);
    settle().await;
    assert_eq!(node.applied(), 2);
    assert_applied(&node, &real, E1);
}

#[tokio::test(start_paused = true)]
async fn a_gap_in_the_announcements_is_read_from_the_log() {
    start_clock();
    let store = FakeStore::new(E1);
    store.log(Subject, "alice");
    let node = Node::start(&store).await;
    let heads = store.heads();
    let missed = [store.log(Token, "j2"), store.log(Session, "s3")];
    let last = store.log(Client, "app4");
    store.announce(&last);
    settle().await;
    assert_eq!(node.applied(), 4);
    for e in missed.iter().chain([&last]) {
        assert_applied(&node, e, E1);
    }
    assert!(store.heads() > heads, "a gap is resolved against the head");
}

#[tokio::test(start_paused = true)]
async fn a_lagging_subscriber_catches_up_from_the_log() {
    start_clock();
    let store = FakeStore::new(E1);
    let node = Node::start(&store).await;
    // More announcements than the channel holds, with no chance to read in between.
    let events: Vec<_> = (0..FEED_CAPACITY * 3)
        .map(|i| {
            let e = store.log(Token, &format!("j{i}"));
            store.announce(&e);
            e
        })
        .collect();
    settle().await;
    assert_eq!(node.applied(), events.len() as u64);
    for e in &events {
        assert_applied(&node, e, E1);
    }
}

#[tokio::test(start_paused = true)]
async fn a_lost_announcement_is_found_by_the_next_head_check() {
    start_clock();
    let store = FakeStore::new(E1);
    store.log(Subject, "alice");
    let node = Node::start(&store).await;
    let e = store.log(Subject, "bob");
    settle().await;
    assert_eq!(node.applied(), 1, "nothing told the node yet");
    advance(poll_interval()).await;
    assert_eq!(node.applied(), 2);
    assert_applied(&node, &e, E1);
    assert_eq!(node.age(), 0);
}

#[tokio::test(start_paused = true)]
async fn while_the_feed_is_down_the_head_is_polled_fast_and_freshness_waits_for_the_feed() {
    start_clock();
    let store = FakeStore::new(E1);
    let node = Node::start(&store).await;
    let poll = poll_interval();
    store.set_feed_live(false);
    let during = [store.log(Subject, "alice"), store.log(Token, "j2")];
    // The next regular check notices the feed is down: it applies what the log has,
    // but proves nothing about freshness.
    advance(poll).await;
    assert_eq!(node.applied(), 2);
    for e in &during {
        assert_applied(&node, e, E1);
    }
    assert_eq!(
        node.age(),
        poll.as_millis() as i64,
        "not fresh without a feed"
    );
    // From then on the head is checked every FEED_DOWN_POLL, well before the next poll.
    assert!(FEED_DOWN_POLL < poll);
    let later = store.log(Client, "app");
    advance(FEED_DOWN_POLL).await;
    assert_eq!(node.applied(), 3);
    assert_applied(&node, &later, E1);
    // The feed is back: the next check proves freshness again.
    store.set_feed_live(true);
    advance(poll).await;
    assert!(node.is_fresh());
    assert!(node.age() < poll.as_millis() as i64);
}

// === staleness ===

#[tokio::test(start_paused = true)]
async fn with_the_store_down_the_table_ages_until_stale_and_is_fresh_once_it_answers() {
    start_clock();
    let store = FakeStore::new(E1);
    let node = Node::start(&store).await;
    assert_eq!(node.age(), 0);
    let poll = poll_interval();
    let step = poll.as_millis() as i64;
    store.set_failing(true);
    let mut elapsed = 0;
    let mut saw_fresh = false;
    while elapsed <= MAX_STALENESS_MS + 2 * step {
        advance(poll).await;
        elapsed += step;
        assert_eq!(node.age(), elapsed, "no failed check may refresh the table");
        assert_eq!(
            node.is_fresh(),
            elapsed <= MAX_STALENESS_MS,
            "at {elapsed} ms"
        );
        saw_fresh |= node.is_fresh();
    }
    assert!(
        saw_fresh,
        "fresh for up to max_staleness after the last proof"
    );
    assert!(!node.is_fresh());
    // A revocation made meanwhile is applied by the first check that gets through.
    let e = store.log(Subject, "alice");
    store.set_failing(false);
    advance(poll).await;
    assert!(node.is_fresh());
    assert_eq!(node.age(), 0);
    assert_applied(&node, &e, E1);
}

// === epochs ===

#[tokio::test(start_paused = true)]
async fn a_new_epoch_lowers_applied_and_what_the_store_lost_is_written_back() {
    start_clock();
    let store = FakeStore::new(E1);
    let kept = [store.log(Subject, "a"), store.log(Session, "s2")];
    let lost = [store.log(Token, "j3"), store.log(Client, "c4")];
    let node = Node::start(&store).await;
    assert_eq!(node.applied(), 4);
    // Restored from a copy taken at seq 2.
    store.lose_after(2, E2);
    advance(poll_interval()).await;
    assert_eq!(node.table.epoch(), E2);
    assert_eq!(node.table.closed_at(E1), Some(2));
    // Stamps of E1 above what the store kept are void; those below stay valid.
    assert_eq!(node.verdict(Subject, "nobody", E1, 3), Verdict::StaleEpoch);
    assert_eq!(node.verdict(Subject, "nobody", E1, 2), Verdict::Live);
    for e in &kept {
        assert_eq!(
            node.verdict(e.kind, &e.value, E1, e.seq - 1),
            Verdict::Revoked
        );
    }
    // What only this node still held went back into the store, in the new epoch...
    assert_eq!(
        store.written(),
        [(Client, "c4".to_string()), (Token, "j3".to_string())]
    );
    let state = store.state();
    assert!(state.written.iter().all(|r| r.actor == "latch"
        && r.reason.contains(&format!("{E1:016x}"))
        && r.reason.contains("seq 2")));
    drop(state);
    assert_eq!(store.audit_actions(), ["revocation_restored"]);
    // ...and still covers every valid stamp of E1.
    for e in &lost {
        assert_eq!(node.verdict(e.kind, &e.value, E1, 2), Verdict::Revoked);
    }
    // The write-backs were announced and are applied in E2.
    assert_eq!(node.applied(), 4);
    assert_eq!(node.table.stamp_now(), Point::new(E2, 4));
    assert!(node.is_fresh());
}

#[tokio::test(start_paused = true)]
async fn a_store_that_forgot_everything_voids_the_old_epoch_without_write_back() {
    start_clock();
    let store = FakeStore::new(E1);
    store.log(Subject, "a");
    store.log(Token, "j2");
    let node = Node::start(&store).await;
    store.forget_everything(E2);
    advance(poll_interval()).await;
    assert_eq!(node.table.epoch(), E2);
    assert_eq!(node.applied(), 0);
    assert_eq!(node.table.stamp_now(), Point::new(E2, 0));
    // The store cannot vouch for any stamp of E1: all of them are void, so nothing
    // needs restoring.
    assert_eq!(node.verdict(Subject, "nobody", E1, 0), Verdict::StaleEpoch);
    assert_eq!(node.verdict(Subject, "nobody", E1, 2), Verdict::StaleEpoch);
    assert!(store.written().is_empty());
    assert!(node.is_fresh());
}

#[tokio::test(start_paused = true)]
async fn a_seq_that_went_back_in_one_epoch_closes_it_and_the_whole_log_is_reread() {
    start_clock();
    let store = FakeStore::new(E1);
    store.log(Subject, "a");
    store.log(Subject, "b");
    // A head the log does not back: the node takes applied = 5.
    store.rewrite_seq(5);
    let node = Node::start(&store).await;
    assert_eq!(node.applied(), 5);
    // The counter is put back and a real revocation gets seq 3: its announcement is at
    // or below applied, so the node skips it.
    store.rewrite_seq(2);
    let victim = store.log(Subject, "victim");
    store.announce(&victim);
    settle().await;
    assert_eq!(node.verdict(Subject, "victim", E1, 2), Verdict::Live);
    // The next head check sees the seq below applied: proof of loss.
    advance(poll_interval()).await;
    assert_eq!(store.audit_actions(), ["store_epoch_bump"]);
    let now = store.state().epoch;
    assert_ne!(now, E1);
    assert_eq!(node.table.epoch(), now);
    assert_eq!(node.table.closed_at(E1), Some(3));
    assert_eq!(node.verdict(Subject, "victim", E1, 2), Verdict::Revoked);
    assert_eq!(node.verdict(Subject, "nobody", E1, 4), Verdict::StaleEpoch);
    assert_eq!(node.applied(), 3);
}

/// The flake of `tests/redteam.rs::an_inflated_then_restored_seq_does_not_hide_a_revocation`:
/// both nodes applied an inflated head, the counter was put back, and a real revocation
/// got a seq at or below both watermarks. The *other* node's head check closes the epoch
/// first (at that revocation's seq), so this node meets a plain epoch change whose
/// closing seq is below its `applied`: reading from the closing seq up would skip the
/// revocation for good.
#[tokio::test(start_paused = true)]
async fn an_epoch_closed_by_another_node_below_this_ones_applied_is_reread_in_full() {
    start_clock();
    let store = FakeStore::new(E1);
    store.log(Subject, "a");
    store.log(Subject, "b");
    store.rewrite_seq(5);
    let node = Node::start(&store).await;
    let other_table = Arc::new(Table::new(RETENTION));
    let other = follower(&store, &other_table);
    other.load().await.unwrap();
    assert_eq!((node.applied(), other_table.applied()), (5, 5));
    // The counter goes back; the real revocation at seq 3 is announced, and skipped.
    store.rewrite_seq(2);
    let victim = store.log(Subject, "victim");
    store.announce(&victim);
    settle().await;
    assert_eq!(node.verdict(Subject, "victim", E1, 2), Verdict::Live);
    // The other node checks the head first and closes E1 at 3.
    other.poll().await.unwrap();
    assert_eq!(store.audit_actions(), ["store_epoch_bump"]);
    assert_eq!(
        verdict(&other_table, Subject, "victim", E1, 2),
        Verdict::Revoked
    );
    // This node then sees only a new epoch, closed at 3, below its applied 5.
    advance(poll_interval()).await;
    assert_eq!(node.table.closed_at(E1), Some(3));
    assert_eq!(node.table.epoch(), store.state().epoch);
    assert_eq!(node.verdict(Subject, "victim", E1, 2), Verdict::Revoked);
    assert_eq!(node.applied(), 3);
    assert_eq!(
        store.audit_actions(),
        ["store_epoch_bump"],
        "one bump, not two"
    );
}

/// The store lost everything (`FLUSHALL`) and a revocation reached it before this
/// node's next head check: the new epoch numbers from 0, so its first seqs are at or
/// below this node's old `applied`, and must still be read.
#[tokio::test(start_paused = true)]
async fn a_revocation_in_an_epoch_that_starts_from_nothing_is_not_skipped() {
    start_clock();
    let store = FakeStore::new(E1);
    store.log(Subject, "a");
    store.log(Token, "j2");
    let node = Node::start(&store).await;
    store.forget_everything(E2);
    let e = store.log(Subject, "after-the-flush");
    assert_eq!(e.seq, 1);
    store.announce_in(E2, &e);
    settle().await;
    assert_eq!(node.table.epoch(), E2);
    assert_eq!(node.applied(), 1);
    assert_applied(&node, &e, E2);
}

#[tokio::test(start_paused = true)]
async fn an_announcement_from_another_epoch_makes_it_switch_at_once() {
    start_clock();
    let store = FakeStore::new(E1);
    store.log(Subject, "a");
    store.log(Subject, "b");
    let node = Node::start(&store).await;
    store.lose_after(2, E2);
    let e = store.log(Token, "j3");
    store.announce_in(E2, &e);
    // No time passes: the announcement alone makes the node read the head.
    settle().await;
    assert_eq!(node.table.epoch(), E2);
    assert_eq!(node.applied(), 3);
    assert_applied(&node, &e, E2);
}

#[tokio::test(start_paused = true)]
async fn a_failed_write_back_is_retried_and_the_node_is_not_fresh_until_it_is_done() {
    start_clock();
    let store = FakeStore::new(E1);
    store.log(Subject, "a");
    let lost = store.log(Token, "j2");
    let node = Node::start(&store).await;
    let poll = poll_interval();
    store.set_appends_failing(true);
    store.lose_after(1, E2);
    advance(poll).await;
    assert_eq!(node.table.epoch(), E2);
    assert!(store.written().is_empty());
    assert_eq!(
        node.age(),
        poll.as_millis() as i64,
        "not fresh before the write-back"
    );
    // The node still holds the revocation itself.
    assert_eq!(node.verdict(Token, "j2", E1, 1), Verdict::Revoked);
    store.set_appends_failing(false);
    advance(poll).await;
    assert_eq!(store.written(), [(lost.kind, lost.value.clone())]);
    assert_eq!(node.age(), 0);
    assert!(node.is_fresh());
    assert_eq!(node.applied(), 2);
    assert_eq!(node.verdict(Token, "j2", E1, 1), Verdict::Revoked);
}
