//! The store contract: what every `Store` promises (src/store/mod.rs, docs/ARCHITECTURE.md),
//! checked by one set of functions against each store latch ships: the embedded SQLite
//! store in a temporary directory, a standalone Redis started on a free port, and a
//! three-master Redis Cluster.
//!
//! Each contract function takes a fresh, empty store and is named after the promise it
//! checks. `contract!` turns the list into `embedded::NAME` and `standalone_redis::NAME`
//! tests, and `redis_cluster_keeps_every_promise` runs the same list one after another on
//! one cluster, flushed in between (a cluster per function would cost three servers each).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use latch::audit::{AuditRecord, NewAudit};
use latch::keys::Kek;
use latch::keys::StoredKey;
use latch::nodes::{NodeReport, ACK_HISTORY};
use latch::revocation::{ClosedEpoch, NewRevocation, RevocationEvent, RevocationKind};
use latch::sessions;
use latch::sessions::{RefreshRecord, Rotation};
use latch::status::{ListId, ListMeta};
use latch::store::embedded::EmbeddedStore;
use latch::store::redis::topology::{Credentials, Options};
use latch::store::redis::{RedisStore, Replication};
use latch::store::{
    encode_refresh, ContractWrite, GrantWrite, SharedStore, Store, StoreError, StoreEvent,
};
use latch::time::now_ms;
use testkit::poll::eventually;
use testkit::redis::RedisProcess;
use testkit::redis_ha::RedisCluster;
use testkit::DEADLINE;

use RevocationKind::{All, Client, Session, Subject, Token};

/// How long one store round trip may take before the store calls Redis unavailable:
/// generous, so that a loaded machine shows up as slowness, not as a failed promise.
const ROUND_TRIP: Duration = Duration::from_secs(10);

/// Concurrent callers in the races below.
const RACERS: usize = 20;

// === stores ===

/// A store and what keeps it alive (its directory, its Redis process).
struct Fixture {
    store: SharedStore,
    backing: Backing,
}

enum Backing {
    Embedded(tempfile::TempDir),
    Redis(RedisProcess),
}

impl Fixture {
    async fn embedded() -> Fixture {
        let dir = tempfile::tempdir().expect("temporary data directory");
        Fixture {
            store: open_embedded(&dir),
            backing: Backing::Embedded(dir),
        }
    }

    async fn redis() -> Fixture {
        let redis = RedisProcess::start().await;
        Fixture {
            store: connect(&redis.url(), Options::default()).await,
            backing: Backing::Redis(redis),
        }
    }

    /// Closes the store and opens it again on the same data. Redis is killed with
    /// SIGKILL and started again from its AOF: a crash, not a clean shutdown.
    async fn restart(self) -> Fixture {
        let Fixture { store, backing } = self;
        drop(store);
        match backing {
            Backing::Embedded(dir) => Fixture {
                store: open_embedded(&dir),
                backing: Backing::Embedded(dir),
            },
            Backing::Redis(mut redis) => {
                redis.stop();
                redis.start_again().await;
                Fixture {
                    store: connect(&redis.url(), Options::default()).await,
                    backing: Backing::Redis(redis),
                }
            }
        }
    }
}

fn open_embedded(dir: &tempfile::TempDir) -> SharedStore {
    Arc::new(EmbeddedStore::open(dir.path()).expect("open the embedded store"))
}

async fn connect(url: &str, options: Options) -> SharedStore {
    let store = RedisStore::connect(url, options, ROUND_TRIP, Replication::default())
        .await
        .expect("connect to redis");
    Arc::new(store)
}

const CLUSTER_PASSWORD: &str = "contract-pass-3Kd";

/// A store on an emptied cluster.
async fn cluster_store(cluster: &RedisCluster) -> SharedStore {
    for node in &cluster.nodes {
        let _: String = node.cmd(&["FLUSHALL"]).await;
    }
    let options = Options {
        redis: Credentials {
            username: None,
            password: Some(cluster.password.clone()),
        },
        ..Options::default()
    };
    connect(&cluster.url(), options).await
}

/// Generates the per-store tests. `#[redis_ignore = "why"]` marks a promise a Redis store
/// is known to break (the reason names the bug); it stays checked on the embedded store.
macro_rules! contract {
    (
        stores: [$( $(#[redis_ignore = $why:literal])? $name:ident ),+ $(,)?],
        fixtures: [$( $fixture_test:ident ),* $(,)?] $(,)?
    ) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let fixture = super::Fixture::embedded().await;
                    super::$name(fixture.store.clone()).await;
                }
            )+
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $fixture_test() {
                    super::$fixture_test(super::Fixture::embedded().await).await;
                }
            )*
        }

        mod standalone_redis {
            $(
                $(#[ignore = $why])?
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let fixture = super::Fixture::redis().await;
                    super::$name(fixture.store.clone()).await;
                }
            )+
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $fixture_test() {
                    super::$fixture_test(super::Fixture::redis().await).await;
                }
            )*
        }

        /// Every store promise, one after another, each on a flushed cluster.
        async fn every_promise_on(cluster: &RedisCluster) {
            $(
                match None::<&str> $(.or(Some($why)))? {
                    Some(why) => eprintln!("cluster: skipped {}: {why}", stringify!($name)),
                    None => {
                        eprintln!("cluster: {}", stringify!($name));
                        $name(cluster_store(cluster).await).await;
                    }
                }
            )+
        }
    };
}

contract! {
    stores: [
        a_new_store_is_empty_with_one_open_epoch,
        revocation_seqs_are_strictly_increasing_and_gapless,
        concurrent_appends_get_distinct_gapless_seqs,
        revocations_after_returns_exactly_those_after_a_seq_in_order,
        revocations_after_pages_by_limit,
        revocations_after_skips_entries_older_than_since_and_still_fills_the_page,
        bump_epoch_closes_the_open_epoch_at_the_current_seq_and_keeps_counting,
        pruning_drops_only_entries_past_their_cut_off,
        token_entries_are_pruned_past_their_own_shorter_cut_off,
        pruning_never_drops_the_newest_entry_nor_the_seq_counter,
        every_append_is_announced_to_every_subscriber_in_seq_order,
        saved_keys_load_back_as_written,
        a_key_save_against_a_stale_version_conflicts_and_changes_nothing,
        of_concurrent_key_saves_from_one_version_exactly_one_wins,
        audit_records_come_back_in_order_and_in_pages,
        audit_records_past_their_retention_are_pruned_and_the_newest_stays,
        every_change_is_audited_with_the_change,
        claim_once_is_true_once_then_false_until_expiry,
        a_released_claim_can_be_made_again,
        of_concurrent_claims_of_one_key_exactly_one_wins,
        contract_amendments_compare_and_set_on_the_version_and_travel_in_the_log,
        of_concurrent_amendments_of_one_document_exactly_one_wins,
        grant_writes_compare_and_set_on_the_version_and_travel_in_the_log,
        of_concurrent_grant_decisions_exactly_one_wins,
        a_grant_version_the_store_lost_is_written_back_only_over_an_older_one,
        a_refresh_token_rotates_once_then_reports_reuse_and_unknown,
        a_reuse_mark_kills_every_token_of_the_family_and_only_those,
        a_chain_begun_without_a_family_still_reads_and_rotates,
        of_concurrent_rotations_of_one_token_exactly_one_wins,
        refresh_records_round_trip_byte_identical,
        the_head_tells_the_stores_time,
        a_node_report_reads_back_on_the_stores_clock,
        a_node_records_each_change_of_applied_once_newest_first,
        the_ack_history_keeps_only_the_newest_changes,
        nodes_are_listed_by_name_and_kept_past_their_expiry,
        streams_save_by_compare_and_set_list_and_delete,
        of_concurrent_stream_saves_from_one_version_exactly_one_wins,
        the_push_lease_has_one_holder_until_it_lapses,
        status_records_read_back_from_an_index_on_and_only_for_a_known_list,
        status_lists_are_listed_until_they_expire_then_pruned,
    ],
    fixtures: [everything_acknowledged_survives_a_restart],
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_keeps_every_promise() {
    let cluster = RedisCluster::start(CLUSTER_PASSWORD).await;
    every_promise_on(&cluster).await;
}

// === helpers ===

fn rev(kind: RevocationKind, value: &str) -> NewRevocation {
    NewRevocation {
        kind,
        value: value.into(),
        reason: "contract test".into(),
        actor: "tester".into(),
        request_id: "req-contract".into(),
    }
}

async fn append(store: &dyn Store, kind: RevocationKind, value: &str) -> RevocationEvent {
    store
        .append_revocation(rev(kind, value))
        .await
        .unwrap_or_else(|e| panic!("append {}:{value}: {e}", kind.as_str()))
}

/// Appends one revocation of each kind (and some awkward values) per round.
async fn append_mixed(store: &dyn Store, n: usize) -> Vec<RevocationEvent> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (kind, value) = match i % 6 {
            0 => (Subject, format!("alice-{i}")),
            1 => (Token, format!("jti-{i}")),
            2 => (Session, format!("sid-{i}")),
            3 => (Client, format!("client-{i}")),
            4 => (All, String::new()),
            _ => (Subject, format!("Zoë \"{i}\"\nline two ✓")),
        };
        out.push(append(store, kind, &value).await);
    }
    out
}

async fn log_after(store: &dyn Store, after: u64) -> Vec<RevocationEvent> {
    store
        .revocations_after(after, i64::MIN, 100_000)
        .await
        .expect("read the log")
}

fn seqs(events: &[RevocationEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

/// Waits until the wall clock is past `ms`: store times are wall-clock milliseconds, so
/// this separates "before" from "after" without assuming how long anything takes.
async fn wait_until_clock_passes(ms: i64) {
    while now_ms() <= ms {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn audit(action: &str, target: &str) -> NewAudit {
    NewAudit {
        actor: "tester".into(),
        action: action.into(),
        target: target.into(),
        reason: format!("reason for {action}"),
        request_id: format!("req-{action}"),
    }
}

async fn all_audit(store: &dyn Store) -> Vec<AuditRecord> {
    store.audit_after(0, 100_000).await.expect("read the audit")
}

fn key(name: &str, json: &str) -> StoredKey {
    StoredKey {
        name: name.into(),
        json: json.into(),
    }
}

async fn loaded_keys(store: &dyn Store) -> (u64, Vec<StoredKey>) {
    let set = store.load_keys().await.expect("load keys");
    let mut entries = set.entries;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    (set.version, entries)
}

fn record(sid: &str) -> RefreshRecord {
    let now = now_ms();
    RefreshRecord {
        sid: sid.into(),
        sub: "alice".into(),
        client_id: "app".into(),
        scope: "profile email".into(),
        aud: "https://api.example".into(),
        username: None,
        rsq: 7,
        rse: 0x00c0_ffee_0000_0001,
        issued_at_ms: now,
        expires_at_ms: now + 3_600_000,
        jkt: None,
        x5t_s256: None,
        mac: None,
    }
}

/// A refresh token's store key (`sessions::store_key`): every token of one session chain
/// shares its family.
fn rkey(family: &str, token: &str) -> String {
    format!("{family}.{}", sessions::hash(token))
}

async fn open(store: &dyn Store, hash: &str, r: &RefreshRecord) {
    store
        .open_session(hash.into(), r.clone(), audit("session_open", "session"))
        .await
        .expect("open a session");
}

async fn rotate(store: &dyn Store, old: &str, new: &str, r: &RefreshRecord) -> Rotation {
    store
        .rotate_refresh(old.into(), new.into(), r.clone())
        .await
        .expect("rotate")
}

async fn lookup(store: &dyn Store, hash: &str) -> Option<(RefreshRecord, bool)> {
    store
        .refresh_token(hash.into())
        .await
        .expect("read a refresh token")
}

// === the revocation log ===

async fn a_new_store_is_empty_with_one_open_epoch(store: SharedStore) {
    let head = store.head().await.unwrap();
    assert_eq!(head.revocation_seq, 0);
    assert_ne!(head.epoch, 0, "0 marks 'no epoch' in stamps");
    assert!(head.closed.is_empty(), "{:?}", head.closed);
    assert_eq!(head.keys_version, 0);
    assert!(log_after(&*store, 0).await.is_empty());
    assert_eq!(loaded_keys(&*store).await, (0, vec![]));
    assert!(all_audit(&*store).await.is_empty());
    assert_eq!(
        store.head().await.unwrap(),
        head,
        "asking again changes nothing"
    );
}

async fn revocation_seqs_are_strictly_increasing_and_gapless(store: SharedStore) {
    let first = store.head().await.unwrap();
    let mut previous_at = i64::MIN;
    for i in 0..12u64 {
        let (kind, value) = if i % 2 == 0 {
            (Subject, format!("user-{i}"))
        } else {
            (All, String::new())
        };
        let before = now_ms();
        let e = append(&*store, kind, &value).await;
        let after = now_ms();
        assert_eq!(e.seq, first.revocation_seq + i + 1, "gapless");
        assert_eq!((e.kind, e.value.as_str()), (kind, value.as_str()));
        assert!(
            (before..=after).contains(&e.revoked_at_ms),
            "revoked_at {} is store time of the append ({before}..={after})",
            e.revoked_at_ms
        );
        assert!(e.revoked_at_ms >= previous_at, "store time never goes back");
        previous_at = e.revoked_at_ms;
        let head = store.head().await.unwrap();
        assert_eq!(head.revocation_seq, e.seq, "the head is the last append");
        assert_eq!(head.epoch, first.epoch, "appends stay in the open epoch");
        assert_eq!(head.closed, first.closed);
    }
}

async fn concurrent_appends_get_distinct_gapless_seqs(store: SharedStore) {
    const EACH: usize = 5;
    let racers: Vec<_> = (0..RACERS)
        .map(|r| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                for i in 0..EACH {
                    mine.push(append(&*store, Token, &format!("jti-{r}-{i}")).await);
                }
                mine
            })
        })
        .collect();
    let mut returned = Vec::new();
    for r in racers {
        returned.extend(r.await.expect("racer"));
    }
    returned.sort_by_key(|e| e.seq);
    let n = (RACERS * EACH) as u64;
    assert_eq!(seqs(&returned), (1..=n).collect::<Vec<_>>());
    assert_eq!(store.head().await.unwrap().revocation_seq, n);
    assert_eq!(
        log_after(&*store, 0).await,
        returned,
        "the log holds what was answered"
    );
}

async fn revocations_after_returns_exactly_those_after_a_seq_in_order(store: SharedStore) {
    let events = append_mixed(&*store, 10).await;
    for after in 0..=events.len() {
        assert_eq!(
            log_after(&*store, after as u64).await,
            events[after..],
            "after {after}"
        );
    }
    assert!(log_after(&*store, 1_000).await.is_empty());
}

async fn revocations_after_pages_by_limit(store: SharedStore) {
    let events = append_mixed(&*store, 10).await;
    for limit in [1, 3, 10, 11] {
        let mut pages = Vec::new();
        let mut after = 0;
        loop {
            let page = store
                .revocations_after(after, i64::MIN, limit)
                .await
                .unwrap();
            assert!(page.len() <= limit, "a page holds at most `limit`");
            let Some(last) = page.last() else { break };
            after = last.seq;
            pages.push(page);
        }
        let read: Vec<_> = pages.concat();
        assert_eq!(read, events, "limit {limit}");
        let sizes: Vec<_> = pages.iter().map(Vec::len).collect();
        assert!(
            sizes[..sizes.len() - 1].iter().all(|&s| s == limit),
            "only the last page may be short: {sizes:?}"
        );
    }
}

async fn revocations_after_skips_entries_older_than_since_and_still_fills_the_page(
    store: SharedStore,
) {
    let old = append_mixed(&*store, 5).await;
    wait_until_clock_passes(old.last().unwrap().revoked_at_ms).await;
    let new = append_mixed(&*store, 3).await;
    let since = new[0].revoked_at_ms;
    assert!(old.iter().all(|e| e.revoked_at_ms < since));
    assert_eq!(store.revocations_after(0, since, 100).await.unwrap(), new);
    // The first `limit` entries of the log are all too old: the page is still full.
    assert_eq!(
        store.revocations_after(0, since, 2).await.unwrap(),
        new[..2]
    );
    assert_eq!(
        store
            .revocations_after(new[0].seq, since, 100)
            .await
            .unwrap(),
        new[1..]
    );
    assert_eq!(log_after(&*store, 0).await.len(), old.len() + new.len());
}

async fn bump_epoch_closes_the_open_epoch_at_the_current_seq_and_keeps_counting(
    store: SharedStore,
) {
    let events = append_mixed(&*store, 3).await;
    let h0 = store.head().await.unwrap();
    let h1 = store
        .bump_epoch(audit("store_recover", "store"))
        .await
        .unwrap();
    assert_ne!(h1.epoch, h0.epoch);
    assert_ne!(h1.epoch, 0);
    assert_eq!(h1.revocation_seq, 3, "the seq does not move");
    assert_eq!(
        h1.closed,
        [ClosedEpoch {
            id: h0.epoch,
            closed_at: 3
        }]
    );
    assert_eq!(
        store.head().await.unwrap(),
        h1,
        "the head reports the new epoch"
    );
    assert_eq!(log_after(&*store, 0).await, events, "the log is kept");
    assert_eq!(
        all_audit(&*store).await.last().unwrap().action,
        "store_recover"
    );
    // Seqs continue above the closed epoch.
    let next = append(&*store, Subject, "after-bump").await;
    assert_eq!(next.seq, 4);
    let h2 = store
        .bump_epoch(audit("store_recover", "store"))
        .await
        .unwrap();
    let closed: BTreeSet<_> = h2.closed.iter().map(|c| (c.id, c.closed_at)).collect();
    assert_eq!(closed, BTreeSet::from([(h0.epoch, 3), (h1.epoch, 4)]));
    assert!(h2.epoch != h0.epoch && h2.epoch != h1.epoch);
    assert_eq!(h2.revocation_seq, 4);
}

async fn pruning_drops_only_entries_past_their_cut_off(store: SharedStore) {
    let old = [
        append(&*store, Token, "old-jti").await,
        append(&*store, Session, "old-sid").await,
    ];
    wait_until_clock_passes(old[1].revoked_at_ms).await;
    let new = vec![
        append(&*store, Token, "new-jti").await,
        append(&*store, Subject, "new-sub").await,
    ];
    let cut = new[0].revoked_at_ms;
    assert_eq!(store.prune_revocations(cut, cut).await.unwrap(), 2);
    assert_eq!(log_after(&*store, 0).await, new);
    assert_eq!(store.head().await.unwrap().revocation_seq, 4);
    assert_eq!(store.prune_revocations(cut, cut).await.unwrap(), 0);
    assert_eq!(append(&*store, All, "").await.seq, 5, "seqs never repeat");
}

async fn token_entries_are_pruned_past_their_own_shorter_cut_off(store: SharedStore) {
    let events = [
        append(&*store, Token, "j1").await,
        append(&*store, Session, "s1").await,
        append(&*store, Token, "j2").await,
        append(&*store, Subject, "alice").await,
    ];
    // Nothing is older than the epoch of time.
    assert_eq!(store.prune_revocations(0, 0).await.unwrap(), 0);
    assert_eq!(log_after(&*store, 0).await, events);
    // Token entries are past their cut-off, the others are not.
    let future = now_ms() + 60_000;
    assert_eq!(store.prune_revocations(0, future).await.unwrap(), 2);
    assert_eq!(
        log_after(&*store, 0).await,
        [events[1].clone(), events[3].clone()]
    );
    assert_eq!(store.head().await.unwrap().revocation_seq, 4);
    assert_eq!(append(&*store, Token, "j3").await.seq, 5);
}

async fn pruning_never_drops_the_newest_entry_nor_the_seq_counter(store: SharedStore) {
    append(&*store, Subject, "a").await;
    append(&*store, Subject, "b").await;
    let newest = append(&*store, Token, "newest").await;
    // Everything is past both cut-offs.
    let future = now_ms() + 60_000;
    store.prune_revocations(future, future).await.unwrap();
    assert_eq!(log_after(&*store, 0).await, std::slice::from_ref(&newest));
    assert_eq!(store.head().await.unwrap().revocation_seq, newest.seq);
    assert_eq!(append(&*store, Subject, "c").await.seq, newest.seq + 1);
}

async fn every_append_is_announced_to_every_subscriber_in_seq_order(store: SharedStore) {
    let mut feeds = [store.subscribe(), store.subscribe()];
    eventually(DEADLINE, "the announcement feed is live", || {
        let live = store.feed_live();
        async move { live.then_some(()).ok_or_else(|| "not live".to_string()) }
    })
    .await;
    let epoch = store.head().await.unwrap().epoch;
    let events = append_mixed(&*store, 6).await;
    for feed in &mut feeds {
        for e in &events {
            match next_announcement(feed).await {
                StoreEvent::Revocation { epoch: at, event } => {
                    assert_eq!(event, *e);
                    assert_eq!(at, epoch);
                }
                other => panic!("expected seq {}, got {other:?}", e.seq),
            }
        }
    }
    // A new epoch is named by the announcements that follow it.
    let bumped = store
        .bump_epoch(audit("store_recover", "store"))
        .await
        .unwrap();
    let e = append(&*store, Client, "after-bump").await;
    // A key-set change is announced too.
    let version = store.save_keys(0, vec![], vec![]).await.unwrap();
    for feed in &mut feeds {
        match next_announcement(feed).await {
            StoreEvent::Revocation { epoch, event } => {
                assert_eq!((epoch, event), (bumped.epoch, e.clone()));
            }
            other => panic!("expected seq {}, got {other:?}", e.seq),
        }
        match next_announcement(feed).await {
            StoreEvent::KeysChanged { version: v } => assert_eq!(v, version),
            other => panic!("expected keys version {version}, got {other:?}"),
        }
    }
}

async fn next_announcement(feed: &mut tokio::sync::broadcast::Receiver<StoreEvent>) -> StoreEvent {
    tokio::time::timeout(DEADLINE, feed.recv())
        .await
        .expect("an announcement within the deadline")
        .expect("no announcement lost or lagged")
}

// === keys ===

async fn saved_keys_load_back_as_written(store: SharedStore) {
    let k1 = key(
        "kid-1",
        r#"{"kid":"kid-1","state":"active","note":"Zoë \"✓\"\n"}"#,
    );
    let manifest = key("~manifest", r#"{"version":1,"kids":{"kid-1":"active"}}"#);
    let v1 = store
        .save_keys(0, vec![k1.clone(), manifest.clone()], vec![])
        .await
        .unwrap();
    assert_eq!(v1, 1);
    assert_eq!(
        loaded_keys(&*store).await,
        (1, vec![k1.clone(), manifest.clone()])
    );
    // An upsert replaces by name and leaves the other entries alone.
    let k1_retiring = key("kid-1", r#"{"kid":"kid-1","state":"retiring"}"#);
    let k2 = key("kid-2", r#"{"kid":"kid-2","state":"next"}"#);
    let v2 = store
        .save_keys(v1, vec![k1_retiring.clone(), k2.clone()], vec![])
        .await
        .unwrap();
    assert_eq!(v2, 2);
    assert_eq!(
        loaded_keys(&*store).await,
        (2, vec![k1_retiring, k2, manifest])
    );
    assert_eq!(store.head().await.unwrap().keys_version, 2);
}

async fn a_key_save_against_a_stale_version_conflicts_and_changes_nothing(store: SharedStore) {
    let a = key("kid-a", r#"{"kid":"kid-a"}"#);
    let v1 = store
        .save_keys(0, vec![a.clone()], vec![audit("key_create", "key:kid-a")])
        .await
        .unwrap();
    let stale = store
        .save_keys(
            0,
            vec![key("kid-b", r#"{"kid":"kid-b"}"#)],
            vec![audit("key_sneak", "key:kid-b")],
        )
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict)), "{stale:?}");
    assert_eq!(loaded_keys(&*store).await, (v1, vec![a]));
    assert_eq!(store.head().await.unwrap().keys_version, v1);
    let actions: Vec<_> = all_audit(&*store)
        .await
        .into_iter()
        .map(|r| r.action)
        .collect();
    assert_eq!(
        actions,
        ["key_create"],
        "a lost save leaves no audit record"
    );
}

async fn of_concurrent_key_saves_from_one_version_exactly_one_wins(store: SharedStore) {
    let racers: Vec<_> = (0..RACERS)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let k = key(&format!("kid-{i}"), &format!(r#"{{"n":{i}}}"#));
                (k.clone(), store.save_keys(0, vec![k], vec![]).await)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for r in racers {
        match r.await.expect("racer") {
            (k, Ok(version)) => {
                assert_eq!(version, 1);
                winners.push(k);
            }
            (_, Err(StoreError::Conflict)) => {}
            (_, Err(e)) => panic!("a lost race is a conflict, not {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one save from version 0 wins");
    assert_eq!(loaded_keys(&*store).await, (1, winners));
}

// === audit ===

async fn audit_records_come_back_in_order_and_in_pages(store: SharedStore) {
    let mut written = Vec::new();
    for i in 0..7 {
        let a = NewAudit {
            actor: format!("actor-{i}"),
            action: format!("action_{i}"),
            target: format!("target:{i}"),
            reason: format!("reason ✓ \"{i}\"\nsecond line"),
            request_id: format!("req-{i}"),
        };
        let before = now_ms().div_euclid(1000);
        let r = store.append_audit(a.clone()).await.unwrap();
        let after = now_ms().div_euclid(1000);
        assert_eq!(
            r,
            a.recorded(r.seq, r.time * 1000),
            "the record is what was appended"
        );
        assert!((before..=after).contains(&r.time), "time is store seconds");
        written.push(r);
    }
    assert!(
        written.windows(2).all(|w| w[0].seq < w[1].seq),
        "seqs increase: {:?}",
        written.iter().map(|r| r.seq).collect::<Vec<_>>()
    );
    assert_eq!(all_audit(&*store).await, written);
    let mut read = Vec::new();
    let mut after = 0;
    loop {
        let page = store.audit_after(after, 3).await.unwrap();
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        after = last.seq;
        read.extend(page);
    }
    assert_eq!(read, written);
    assert_eq!(
        store.audit_after(written[2].seq, 100).await.unwrap(),
        written[3..]
    );
    assert!(store
        .audit_after(written[6].seq, 100)
        .await
        .unwrap()
        .is_empty());
}

async fn audit_records_past_their_retention_are_pruned_and_the_newest_stays(store: SharedStore) {
    for i in 0..5 {
        store
            .append_audit(audit(&format!("old_{i}"), "t"))
            .await
            .unwrap();
    }
    let old = all_audit(&*store).await;
    let cut = old.last().expect("written").time * 1000 + 1000;
    // Store times are in ms, audit times in s: wait past the second the old ones are in.
    wait_until_clock_passes(cut).await;
    for i in 0..3 {
        store
            .append_audit(audit(&format!("new_{i}"), "t"))
            .await
            .unwrap();
    }
    let everything = all_audit(&*store).await;
    assert_eq!(store.prune_audit(cut).await.expect("prune"), 5);
    assert_eq!(all_audit(&*store).await, everything[5..].to_vec());
    assert_eq!(
        store.prune_audit(cut).await.expect("again"),
        0,
        "idempotent"
    );
    // Paged reads go on from any seq, the pruned ones simply absent.
    let page = store.audit_after(0, 2).await.unwrap();
    assert_eq!(page, everything[5..7].to_vec());
    // Everything past its retention: all but the newest go, and seqs continue from it.
    let last = everything.last().unwrap().seq;
    assert_eq!(store.prune_audit(i64::MAX).await.expect("prune all"), 2);
    let kept = all_audit(&*store).await;
    assert_eq!(seqs_of(&kept), vec![last]);
    let next = store.append_audit(audit("after_prune", "t")).await.unwrap();
    assert_eq!(next.seq, last + 1);
}

fn seqs_of(records: &[AuditRecord]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

async fn every_change_is_audited_with_the_change(store: SharedStore) {
    append(&*store, Subject, "alice").await;
    append(&*store, All, "").await;
    store
        .save_keys(
            0,
            vec![key("kid-1", "{}")],
            vec![
                audit("key_create", "key:kid-1"),
                audit("key_promote", "key:kid-1"),
            ],
        )
        .await
        .unwrap();
    open(
        &*store,
        &rkey("fam-audit", "rt-audit"),
        &record("sid-audit"),
    )
    .await;
    store
        .bump_epoch(audit("store_recover", "store"))
        .await
        .unwrap();
    let records = all_audit(&*store).await;
    let seen: Vec<_> = records
        .iter()
        .map(|r| (r.action.as_str(), r.target.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("revoke", "subject:alice"),
            ("revoke", "all"),
            ("key_create", "key:kid-1"),
            ("key_promote", "key:kid-1"),
            ("session_open", "session"),
            ("store_recover", "store"),
        ]
    );
    let revoke = &records[0];
    assert_eq!(
        (
            revoke.actor.as_str(),
            revoke.reason.as_str(),
            revoke.request_id.as_str()
        ),
        ("tester", "contract test", "req-contract")
    );
    assert_eq!(records[5].reason, "reason for store_recover");
    assert!(records.windows(2).all(|w| w[0].seq < w[1].seq));
}

// === replay protection ===

async fn claim_once_is_true_once_then_false_until_expiry(store: SharedStore) {
    let hour = now_ms() + 3_600_000;
    assert!(store.claim_once("jti-a".into(), hour).await.unwrap());
    assert!(!store.claim_once("jti-a".into(), hour).await.unwrap());
    assert!(
        !store.claim_once("jti-a".into(), hour + 1).await.unwrap(),
        "a replay with a later expiry is still a replay"
    );
    assert!(store.claim_once("jti-b".into(), hour).await.unwrap());
    // Once its expiry has passed, a key can be claimed again.
    let soon = now_ms() + 20;
    assert!(store.claim_once("jti-c".into(), soon).await.unwrap());
    wait_until_clock_passes(soon + 1).await;
    assert!(store.claim_once("jti-c".into(), hour).await.unwrap());
    assert!(!store.claim_once("jti-c".into(), hour).await.unwrap());
}

async fn a_released_claim_can_be_made_again(store: SharedStore) {
    let hour = now_ms() + 3_600_000;
    assert!(store.claim_once("jti-r".into(), hour).await.unwrap());
    store.release_claim("jti-r".into()).await.unwrap();
    assert!(store.claim_once("jti-r".into(), hour).await.unwrap());
    assert!(!store.claim_once("jti-r".into(), hour).await.unwrap());
    // Releasing one key leaves the others claimed; releasing nothing is no error.
    assert!(store.claim_once("jti-s".into(), hour).await.unwrap());
    store.release_claim("jti-r".into()).await.unwrap();
    store.release_claim("jti-never".into()).await.unwrap();
    assert!(!store.claim_once("jti-s".into(), hour).await.unwrap());
}

async fn of_concurrent_claims_of_one_key_exactly_one_wins(store: SharedStore) {
    let until = now_ms() + 3_600_000;
    let racers: Vec<_> = (0..RACERS)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.claim_once("jti-raced".into(), until).await })
        })
        .collect();
    let mut won = 0;
    for r in racers {
        if r.await.expect("racer").expect("claim") {
            won += 1;
        }
    }
    assert_eq!(won, 1);
}

// === contracts ===

fn contract_write(doc: &str, version: u64, cancel: bool) -> ContractWrite {
    ContractWrite {
        doc: doc.into(),
        version,
        amendment: if cancel {
            String::new()
        } else {
            format!("{{\"v\":{version}}}")
        },
        change: format!(
            "{{\"op\":\"{}\",\"doc\":\"{doc}\",\"version\":{version}}}",
            if cancel { "cancel" } else { "amend" }
        ),
        cancel,
        audit_target: String::new(),
        audit_action: String::new(),
    }
}

async fn contract_amendments_compare_and_set_on_the_version_and_travel_in_the_log(
    store: SharedStore,
) {
    let doc = "client:svc";
    let first = store
        .append_contract(contract_write(doc, 1, false), audit("contract_amend", doc))
        .await
        .expect("version 1");
    assert_eq!(first.kind, RevocationKind::Contract);
    assert_eq!(
        first.value,
        contract_write(doc, 1, false).change,
        "the log carries the change"
    );
    for (version, why) in [
        (1, "the same version again"),
        (3, "a version that skips one"),
    ] {
        let r = store
            .append_contract(
                contract_write(doc, version, false),
                audit("contract_amend", doc),
            )
            .await;
        assert!(matches!(r, Err(StoreError::Conflict)), "{why}: {r:?}");
    }
    let second = store
        .append_contract(contract_write(doc, 2, false), audit("contract_amend", doc))
        .await
        .expect("version 2");
    assert!(second.seq > first.seq);
    // Another document has its own versions.
    store
        .append_contract(
            contract_write("registry", 1, false),
            audit("contract_amend", "registry"),
        )
        .await
        .expect("the registry's version 1");
    let cancelled = store
        .append_contract(contract_write(doc, 2, true), audit("contract_cancel", doc))
        .await
        .expect("cancel version 2");
    for (version, why) in [(2, "cancelled twice"), (9, "a version that does not exist")] {
        let r = store
            .append_contract(
                contract_write(doc, version, true),
                audit("contract_cancel", doc),
            )
            .await;
        assert!(matches!(r, Err(StoreError::Conflict)), "{why}: {r:?}");
    }
    let mut entries = store.contract_entries().await.expect("entries");
    entries.sort();
    assert_eq!(
        entries,
        vec![
            ("{\"v\":1}".to_string(), false),
            ("{\"v\":1}".to_string(), false),
            ("{\"v\":2}".to_string(), true),
        ]
    );
    let log = store.revocations_after(0, 0, 100).await.expect("log");
    let seqs: Vec<u64> = log
        .iter()
        .filter(|e| e.kind == RevocationKind::Contract)
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs.len(), 4, "every write is one log entry: {log:?}");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(*seqs.last().unwrap(), cancelled.seq);
    assert_eq!(
        store.head().await.expect("head").revocation_seq,
        cancelled.seq
    );
}

async fn of_concurrent_amendments_of_one_document_exactly_one_wins(store: SharedStore) {
    let racers: Vec<_> = (0..RACERS)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append_contract(
                        contract_write("client:raced", 1, false),
                        audit("contract_amend", "client:raced"),
                    )
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for r in racers {
        match r.await.expect("racer") {
            Ok(_) => won += 1,
            Err(StoreError::Conflict) => {}
            Err(e) => panic!("a racer failed otherwise: {e}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(store.contract_entries().await.expect("entries").len(), 1);
}

// === grants ===

fn grant_write(id: &str, expected: u64, what: &str) -> GrantWrite {
    GrantWrite {
        id: id.into(),
        expected,
        record: format!(
            "{{\"id\":\"{id}\",\"version\":{},\"what\":\"{what}\"}}",
            expected + 1
        ),
        action: format!("grant_{what}"),
        restore: false,
    }
}

async fn grant_writes_compare_and_set_on_the_version_and_travel_in_the_log(store: SharedStore) {
    let id = "g-one";
    let first = store
        .append_grant(grant_write(id, 0, "request"), audit("grant_request", id))
        .await
        .expect("the request");
    assert_eq!(first.kind, RevocationKind::Grant);
    assert_eq!(
        first.value,
        grant_write(id, 0, "request").record,
        "the log carries the record"
    );
    for (expected, why) in [
        (0, "a second creation"),
        (2, "a version ahead"),
        (7, "a made-up version"),
    ] {
        let r = store
            .append_grant(
                grant_write(id, expected, "approve"),
                audit("grant_approve", id),
            )
            .await;
        assert!(matches!(r, Err(StoreError::Conflict)), "{why}: {r:?}");
    }
    let second = store
        .append_grant(grant_write(id, 1, "approve"), audit("grant_approve", id))
        .await
        .expect("version 2");
    assert!(second.seq > first.seq);
    assert_eq!(
        store.grant(id.into()).await.expect("read"),
        Some(grant_write(id, 1, "approve").record)
    );
    assert_eq!(store.grant("g-none".into()).await.expect("read"), None);
    store
        .append_grant(
            grant_write("g-two", 0, "request"),
            audit("grant_request", "g-two"),
        )
        .await
        .expect("another grant has its own versions");
    let mut entries = store.grant_entries().await.expect("entries");
    entries.sort();
    let mut want = vec![
        grant_write(id, 1, "approve").record,
        grant_write("g-two", 0, "request").record,
    ];
    want.sort();
    assert_eq!(entries, want);
    let log = store.revocations_after(0, 0, 100).await.expect("log");
    let grants: Vec<&RevocationEvent> = log
        .iter()
        .filter(|e| e.kind == RevocationKind::Grant)
        .collect();
    assert_eq!(
        grants.len(),
        3,
        "every write is one log entry, refusals none: {log:?}"
    );
    // Each write is audited with the grant as its target and the write's action.
    let audits: Vec<(String, String)> = all_audit(&*store)
        .await
        .into_iter()
        .filter(|a| a.target.starts_with("grant:"))
        .map(|a| (a.action, a.target))
        .collect();
    assert_eq!(
        audits,
        vec![
            ("grant_request".to_string(), "grant:g-one".to_string()),
            ("grant_approve".to_string(), "grant:g-one".to_string()),
            ("grant_request".to_string(), "grant:g-two".to_string()),
        ]
    );
}

async fn a_grant_version_the_store_lost_is_written_back_only_over_an_older_one(store: SharedStore) {
    let id = "g-lost";
    let restore = |version: u64, what: &str| GrantWrite {
        id: id.into(),
        expected: version,
        record: format!("{{\"id\":\"{id}\",\"version\":{version},\"what\":\"{what}\"}}"),
        action: "grant_restored".into(),
        restore: true,
    };
    // Not in the store at all: written, at the record's own version.
    store
        .append_grant(restore(3, "revoke"), audit("grant_restored", id))
        .await
        .expect("written back into an empty store");
    // The same or an older version: the store keeps what it has.
    for v in [3, 2] {
        let r = store
            .append_grant(restore(v, "older"), audit("grant_restored", id))
            .await;
        assert!(matches!(r, Err(StoreError::Conflict)), "version {v}: {r:?}");
    }
    assert_eq!(
        store.grant(id.into()).await.expect("read"),
        Some(restore(3, "revoke").record)
    );
    // Decisions go on from the restored version.
    let next = GrantWrite {
        record: format!("{{\"id\":\"{id}\",\"version\":4}}"),
        ..grant_write(id, 3, "approve")
    };
    store
        .append_grant(next, audit("grant_approve", id))
        .await
        .expect("compare-and-set on the restored version");
    let log = store.revocations_after(0, 0, 100).await.expect("log");
    assert_eq!(
        log.iter()
            .filter(|e| e.kind == RevocationKind::Grant)
            .count(),
        2,
        "the write-back and the decision, nothing for the refusals"
    );
}

async fn of_concurrent_grant_decisions_exactly_one_wins(store: SharedStore) {
    let id = "g-raced";
    store
        .append_grant(grant_write(id, 0, "request"), audit("grant_request", id))
        .await
        .expect("the request");
    let racers: Vec<_> = (0..RACERS)
        .map(|i| {
            let store = store.clone();
            let what = if i % 2 == 0 { "approve" } else { "revoke" };
            tokio::spawn(async move {
                store
                    .append_grant(
                        grant_write(id, 1, what),
                        audit(&format!("grant_{what}"), id),
                    )
                    .await
                    .map(|_| what)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for r in racers {
        match r.await.expect("racer") {
            Ok(what) => winners.push(what),
            Err(StoreError::Conflict) => {}
            Err(e) => panic!("a racer failed otherwise: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(
        store.grant(id.into()).await.expect("read"),
        Some(grant_write(id, 1, winners[0]).record),
        "the stored record is the winner's"
    );
    let log = store.revocations_after(0, 0, 1000).await.expect("log");
    assert_eq!(
        log.iter()
            .filter(|e| e.kind == RevocationKind::Grant)
            .count(),
        2
    );
}

// === sessions ===

async fn a_refresh_token_rotates_once_then_reports_reuse_and_unknown(store: SharedStore) {
    let f = |t: &str| rkey("fam-1", t);
    let (h0, h1, h2) = (f("rt-0"), f("rt-1"), f("rt-2"));
    let r0 = record("sid-1");
    let r1 = RefreshRecord {
        issued_at_ms: r0.issued_at_ms + 1,
        ..r0.clone()
    };
    // Another session, its own family: untouched by what happens to the first.
    let other = rkey("fam-2", "rt-other");
    let r_other = record("sid-2");
    open(&*store, &other, &r_other).await;
    open(&*store, &h0, &r0).await;
    assert_eq!(lookup(&*store, &h0).await, Some((r0.clone(), false)));
    assert_eq!(rotate(&*store, &h0, &h1, &r1).await, Rotation::Rotated);
    assert_eq!(
        lookup(&*store, &h0).await,
        Some((r0.clone(), true)),
        "spent"
    );
    assert_eq!(
        lookup(&*store, &h1).await,
        Some((r1.clone(), false)),
        "live"
    );
    // Spending it again is reuse, and stores nothing.
    assert_eq!(
        rotate(&*store, &h0, &h2, &r1).await,
        Rotation::Reused(r0.clone())
    );
    assert_eq!(lookup(&*store, &h2).await, None);
    // The reuse marked the session's family: its live token is spent too, and spending
    // it is reuse as well (the session is compromised, whoever holds which token).
    assert_eq!(
        lookup(&*store, &h1).await,
        Some((r1.clone(), true)),
        "the successor of a reused token"
    );
    assert_eq!(
        rotate(&*store, &h1, &h2, &r1).await,
        Rotation::Reused(r1.clone())
    );
    assert_eq!(lookup(&*store, &h2).await, None);
    assert_eq!(lookup(&*store, &other).await, Some((r_other, false)));
    // Never issued: unknown, and nothing is stored.
    let (stranger, next) = (rkey("fam-3", "rt-never-issued"), rkey("fam-3", "rt-3"));
    assert_eq!(
        rotate(&*store, &stranger, &next, &r1).await,
        Rotation::Unknown
    );
    assert_eq!(lookup(&*store, &stranger).await, None);
    assert_eq!(lookup(&*store, &next).await, None);
}

async fn a_reuse_mark_kills_every_token_of_the_family_and_only_those(store: SharedStore) {
    let f = |t: &str| rkey("fam-mark", t);
    let (h0, h1, h2) = (f("rt-0"), f("rt-1"), f("rt-2"));
    let r = record("sid-mark");
    let other = rkey("fam-live", "rt-live");
    let r_other = record("sid-live");
    open(&*store, &h0, &r).await;
    open(&*store, &other, &r_other).await;
    assert_eq!(rotate(&*store, &h0, &h1, &r).await, Rotation::Rotated);
    // Marking a live or unknown token does nothing.
    store
        .mark_reused(h1.clone())
        .await
        .expect("mark a live token");
    store
        .mark_reused(other.clone())
        .await
        .expect("mark a live token");
    store
        .mark_reused(rkey("fam-none", "rt-none"))
        .await
        .expect("mark an unknown token");
    assert_eq!(lookup(&*store, &h1).await, Some((r.clone(), false)));
    assert_eq!(
        lookup(&*store, &other).await,
        Some((r_other.clone(), false))
    );
    // A spent one marks its family: the live successor reads spent and is never served.
    store
        .mark_reused(h0.clone())
        .await
        .expect("mark a spent token");
    store
        .mark_reused(h0.clone())
        .await
        .expect("marking is idempotent");
    assert_eq!(lookup(&*store, &h1).await, Some((r.clone(), true)));
    assert_eq!(
        rotate(&*store, &h1, &h2, &r).await,
        Rotation::Reused(r.clone())
    );
    assert_eq!(lookup(&*store, &h2).await, None);
    assert_eq!(lookup(&*store, &other).await, Some((r_other, false)));
}

async fn a_chain_begun_without_a_family_still_reads_and_rotates(store: SharedStore) {
    // Stored under its bare hash (as before families), presented with its family.
    let bare = sessions::hash("rt-legacy-0");
    let r = record("sid-legacy");
    open(&*store, &bare, &r).await;
    let (h0, h1) = (
        format!("fam-legacy.{bare}"),
        rkey("fam-legacy", "rt-legacy-1"),
    );
    assert_eq!(lookup(&*store, &h0).await, Some((r.clone(), false)));
    assert_eq!(rotate(&*store, &h0, &h1, &r).await, Rotation::Rotated);
    assert_eq!(lookup(&*store, &h0).await, Some((r.clone(), true)));
    assert_eq!(lookup(&*store, &h1).await, Some((r.clone(), false)));
    assert_eq!(
        rotate(&*store, &h0, &rkey("fam-legacy", "rt-legacy-2"), &r).await,
        Rotation::Reused(r)
    );
}

async fn of_concurrent_rotations_of_one_token_exactly_one_wins(store: SharedStore) {
    for round in 0..10 {
        let family = format!("fam-race-{round}");
        let old = rkey(&family, &format!("rt-race-{round}"));
        let r0 = record(&format!("sid-race-{round}"));
        open(&*store, &old, &r0).await;
        let racers: Vec<_> = (0..RACERS)
            .map(|i| {
                let (store, old, r0) = (store.clone(), old.clone(), r0.clone());
                let new = rkey(&family, &format!("rt-race-{round}-{i}"));
                tokio::spawn(async move {
                    let outcome = rotate(&*store, &old, &new, &r0).await;
                    (new, outcome)
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for r in racers {
            outcomes.push(r.await.expect("racer"));
        }
        let winners: Vec<_> = outcomes
            .iter()
            .filter(|(_, o)| *o == Rotation::Rotated)
            .map(|(new, _)| new.clone())
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: exactly one rotation wins");
        for (new, outcome) in &outcomes {
            if *new == winners[0] {
                // Stored, and spent already: the losers' reuse marked the family.
                assert_eq!(lookup(&*store, new).await, Some((r0.clone(), true)));
            } else {
                assert_eq!(*outcome, Rotation::Reused(r0.clone()), "round {round}");
                assert_eq!(lookup(&*store, new).await, None, "a loser stores nothing");
            }
        }
        assert_eq!(lookup(&*store, &old).await, Some((r0, true)));
    }
}

async fn refresh_records_round_trip_byte_identical(store: SharedStore) {
    let kek = Kek::from_bytes(&[9; 32]).expect("a 32-byte KEK");
    let mac_key = kek.refresh_record_mac();
    let sealed = |hash: &str, mut r: RefreshRecord| {
        sessions::seal(mac_key, hash, &mut r);
        r
    };
    let (h0, h1) = (
        rkey("fam-bytes", "rt-bytes-0"),
        rkey("fam-bytes", "rt-bytes-1"),
    );
    let r0 = sealed(
        &h0,
        RefreshRecord {
            username: Some("Zoë \"the admin\" ✓\n\u{1F600}".into()),
            scope: "profile email offline_access".into(),
            aud: "https://api.example/ü?x=1&y=\"2\"".into(),
            rsq: u64::MAX,
            rse: 0xfedc_ba98_7654_3210,
            ..record("sid-bytes")
        },
    );
    let r1 = sealed(
        &h1,
        RefreshRecord {
            username: None,
            rsq: 0,
            ..r0.clone()
        },
    );
    let identical = |got: &RefreshRecord, want: &RefreshRecord, hash: &str| {
        assert_eq!(got, want);
        assert_eq!(
            encode_refresh(got).unwrap(),
            encode_refresh(want).unwrap(),
            "the bytes the MAC covers"
        );
        assert!(
            sessions::authentic(mac_key, hash, got),
            "the MAC still verifies"
        );
    };
    open(&*store, &h0, &r0).await;
    let (got, spent) = lookup(&*store, &h0).await.expect("stored");
    assert!(!spent);
    identical(&got, &r0, &h0);
    assert_eq!(rotate(&*store, &h0, &h1, &r1).await, Rotation::Rotated);
    let (got, _) = lookup(&*store, &h1).await.expect("stored by the rotation");
    identical(&got, &r1, &h1);
    match rotate(&*store, &h0, &rkey("fam-bytes", "rt-bytes-2"), &r1).await {
        Rotation::Reused(got) => identical(&got, &r0, &h0),
        other => panic!("expected reuse, got {other:?}"),
    }
}

// === durability ===

async fn everything_acknowledged_survives_a_restart(fixture: Fixture) {
    let store = fixture.store.clone();
    let events = append_mixed(&*store, 4).await;
    let before = store.head().await.unwrap();
    let k = key("kid-1", r#"{"kid":"kid-1"}"#);
    store.save_keys(0, vec![k.clone()], vec![]).await.unwrap();
    let (h0, h1) = (
        rkey("fam-durable", "rt-durable-0"),
        rkey("fam-durable", "rt-durable-1"),
    );
    let r = record("sid-durable");
    open(&*store, &h0, &r).await;
    assert_eq!(rotate(&*store, &h0, &h1, &r).await, Rotation::Rotated);
    let hour = now_ms() + 3_600_000;
    assert!(store.claim_once("jti-durable".into(), hour).await.unwrap());
    let audit = all_audit(&*store).await;
    store
        .ssf_save_stream("s-durable".into(), 0, r#"{"v":1}"#.into())
        .await
        .unwrap();
    drop(store);

    let fixture = fixture.restart().await;
    let store = fixture.store.clone();
    let after = store.head().await.unwrap();
    assert_eq!(after.revocation_seq, before.revocation_seq);
    // The store cannot tell it lost nothing: it closes the epoch at the seq it has.
    assert_ne!(after.epoch, before.epoch);
    assert!(
        after.closed.contains(&ClosedEpoch {
            id: before.epoch,
            closed_at: before.revocation_seq
        }),
        "{:?}",
        after.closed
    );
    assert_eq!(log_after(&*store, 0).await, events);
    assert_eq!(loaded_keys(&*store).await, (1, vec![k]));
    assert_eq!(lookup(&*store, &h0).await, Some((r.clone(), true)));
    assert_eq!(lookup(&*store, &h1).await, Some((r, false)));
    assert!(!store.claim_once("jti-durable".into(), hour).await.unwrap());
    assert_eq!(all_audit(&*store).await, audit);
    let stream = store.ssf_stream("s-durable".into()).await.unwrap().unwrap();
    assert_eq!((stream.version, stream.json.as_str()), (1, r#"{"v":1}"#));
    assert_eq!(
        append(&*store, Subject, "after-restart").await.seq,
        before.revocation_seq + 1
    );
}

// === the node registry ===

fn report(id: &str, name: &str, epoch: u64, applied: u64, fresh: Option<i64>) -> NodeReport {
    NodeReport {
        id: id.into(),
        name: name.into(),
        address: "127.0.0.1:8080".into(),
        version: "1.2.3".into(),
        max_staleness_ms: 2000,
        ttl_ms: 10_000,
        epoch,
        applied,
        keys_version: 4,
        fresh_at_ms: fresh,
        ready: true,
    }
}

async fn send(store: &dyn Store, r: NodeReport) -> i64 {
    store.report_node(r).await.expect("report a node")
}

async fn the_head_tells_the_stores_time(store: SharedStore) {
    let before = now_ms();
    let head = store.head().await.unwrap();
    let after = now_ms();
    // The stores run on this machine: their clock is this clock.
    assert!(
        (before..=after).contains(&head.time_ms),
        "{before} <= {} <= {after}",
        head.time_ms
    );
}

async fn a_node_report_reads_back_on_the_stores_clock(store: SharedStore) {
    assert!(store.nodes().await.unwrap().nodes.is_empty());
    let first = send(&*store, report("a1", "node-a", 0xe1, 5, Some(1_000))).await;
    let registry = store.nodes().await.unwrap();
    assert!(registry.time_ms >= first);
    let [n] = registry.nodes.as_slice() else {
        panic!("one node: {registry:?}");
    };
    assert_eq!(
        (
            n.id.as_str(),
            n.name.as_str(),
            n.address.as_str(),
            n.version.as_str()
        ),
        ("a1", "node-a", "127.0.0.1:8080", "1.2.3")
    );
    assert_eq!((n.epoch, n.applied, n.keys_version), (0xe1, 5, 4));
    assert_eq!(
        (n.max_staleness_ms, n.ttl_ms, n.ready),
        (2000, 10_000, true)
    );
    assert_eq!((n.started_at_ms, n.heartbeat_at_ms), (first, first));
    assert_eq!(n.fresh_at_ms, 1_000);
    wait_until_clock_passes(first).await;
    // A later report: a heartbeat; an older proof or none keeps the newest one.
    let mut later = report("a1", "node-a", 0xe1, 5, Some(900));
    later.ready = false;
    later.address = "127.0.0.1:9090".into();
    let second = send(&*store, later).await;
    assert!(second > first);
    send(&*store, report("a1", "node-a", 0xe1, 5, None)).await;
    let n = store.nodes().await.unwrap().nodes.remove(0);
    assert_eq!(n.started_at_ms, first, "started once");
    assert!(n.heartbeat_at_ms >= second);
    assert_eq!(n.fresh_at_ms, 1_000, "a proof is never lowered");
    send(&*store, report("a1", "node-a", 0xe1, 5, Some(5_000))).await;
    let n = store.nodes().await.unwrap().nodes.remove(0);
    assert_eq!(n.fresh_at_ms, 5_000);
    assert!(n.ready, "the last report's readiness");
}

async fn a_node_records_each_change_of_applied_once_newest_first(store: SharedStore) {
    let mut times = vec![];
    for (epoch, applied) in [
        (0xe1, 1),
        (0xe1, 1),
        (0xe1, 3),
        (0xe2, 3),
        (0xe2, 3),
        (0xe2, 9),
    ] {
        times.push(send(&*store, report("b", "node-b", epoch, applied, None)).await);
    }
    let n = store.nodes().await.unwrap().nodes.remove(0);
    let acks: Vec<_> = n
        .acks
        .iter()
        .map(|a| (a.epoch, a.applied, a.at_ms))
        .collect();
    assert_eq!(
        acks,
        [
            (0xe2, 9, times[5]),
            (0xe2, 3, times[3]),
            (0xe1, 3, times[2]),
            (0xe1, 1, times[0]),
        ],
        "a repeated (epoch, applied) is no new change; a new epoch is"
    );
    assert_eq!((n.epoch, n.applied), (0xe2, 9));
}

async fn the_ack_history_keeps_only_the_newest_changes(store: SharedStore) {
    let total = ACK_HISTORY as u64 + 5;
    for applied in 1..=total {
        send(&*store, report("c", "node-c", 0xe1, applied, None)).await;
    }
    let n = store.nodes().await.unwrap().nodes.remove(0);
    assert_eq!(n.acks.len(), ACK_HISTORY);
    assert_eq!(n.acks[0].applied, total);
    assert_eq!(
        n.acks[ACK_HISTORY - 1].applied,
        total - ACK_HISTORY as u64 + 1
    );
}

async fn nodes_are_listed_by_name_and_kept_past_their_expiry(store: SharedStore) {
    let mut short = report("z9", "alpha", 0xe1, 0, None);
    short.ttl_ms = 1;
    let beat = send(&*store, short).await;
    send(&*store, report("a0", "beta", 0xe1, 0, None)).await;
    send(&*store, report("b0", "alpha", 0xe1, 0, None)).await;
    wait_until_clock_passes(beat + 5).await;
    let registry = store.nodes().await.unwrap();
    let listed: Vec<_> = registry
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.id.as_str()))
        .collect();
    assert_eq!(listed, [("alpha", "b0"), ("alpha", "z9"), ("beta", "a0")]);
    // Expired, but kept so that readers can say "gone".
    let gone = registry.nodes.iter().find(|n| n.id == "z9").unwrap();
    assert!(gone.is_gone(registry.time_ms));
}

// === shared signals streams ===

async fn streams_save_by_compare_and_set_list_and_delete(store: SharedStore) {
    assert!(store.ssf_streams().await.unwrap().is_empty());
    assert_eq!(store.ssf_stream("a".into()).await.unwrap(), None);
    // A JSON text with newlines and quotes comes back byte for byte.
    let json = "{\"description\":\"two\\nlines\",\n\"x\":1}".to_string();
    assert_eq!(
        store
            .ssf_save_stream("a".into(), 0, json.clone())
            .await
            .unwrap(),
        1
    );
    assert!(
        matches!(
            store.ssf_save_stream("a".into(), 0, "{}".into()).await,
            Err(StoreError::Conflict)
        ),
        "creating an existing stream conflicts"
    );
    assert!(
        matches!(
            store.ssf_save_stream("b".into(), 1, "{}".into()).await,
            Err(StoreError::Conflict)
        ),
        "updating a missing stream conflicts"
    );
    assert_eq!(
        store
            .ssf_save_stream("b".into(), 0, "{}".into())
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .ssf_save_stream("a".into(), 1, "{\"x\":2}".into())
            .await
            .unwrap(),
        2
    );
    assert!(
        matches!(
            store.ssf_save_stream("a".into(), 1, "{}".into()).await,
            Err(StoreError::Conflict)
        ),
        "a stale version conflicts and changes nothing"
    );
    let a = store.ssf_stream("a".into()).await.unwrap().unwrap();
    assert_eq!(
        (a.id.as_str(), a.version, a.json.as_str()),
        ("a", 2, "{\"x\":2}")
    );
    let mut all = store.ssf_streams().await.unwrap();
    all.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(
        all.iter()
            .map(|s| (s.id.as_str(), s.version))
            .collect::<Vec<_>>(),
        [("a", 2), ("b", 1)]
    );
    assert!(store.ssf_delete_stream("a".into()).await.unwrap());
    assert!(!store.ssf_delete_stream("a".into()).await.unwrap());
    assert_eq!(store.ssf_stream("a".into()).await.unwrap(), None);
    assert_eq!(store.ssf_streams().await.unwrap().len(), 1);
    // A deleted id can be created again, from version 0.
    assert_eq!(
        store
            .ssf_save_stream("a".into(), 0, "{}".into())
            .await
            .unwrap(),
        1
    );
}

async fn of_concurrent_stream_saves_from_one_version_exactly_one_wins(store: SharedStore) {
    store
        .ssf_save_stream("s".into(), 0, "{}".into())
        .await
        .unwrap();
    let racers: Vec<_> = (0..RACERS)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .ssf_save_stream("s".into(), 1, format!("{{\"i\":{i}}}"))
                    .await
            })
        })
        .collect();
    let mut won = Vec::new();
    for (i, r) in racers.into_iter().enumerate() {
        match r.await.unwrap() {
            Ok(v) => won.push((i, v)),
            Err(StoreError::Conflict) => {}
            Err(e) => panic!("racer {i}: {e}"),
        }
    }
    assert_eq!(won.len(), 1, "{won:?}");
    let s = store.ssf_stream("s".into()).await.unwrap().unwrap();
    assert_eq!((s.version, s.json), (2, format!("{{\"i\":{}}}", won[0].0)));
}

async fn the_push_lease_has_one_holder_until_it_lapses(store: SharedStore) {
    assert!(store.ssf_lease("node-a".into(), 60_000).await.unwrap());
    assert!(!store.ssf_lease("node-b".into(), 60_000).await.unwrap());
    assert!(
        store.ssf_lease("node-a".into(), 300).await.unwrap(),
        "the holder renews"
    );
    // Once it lapses (store time), another node takes it and the first no longer holds it.
    testkit::eventually(DEADLINE, "the lapsed lease is taken over", || {
        let store = store.clone();
        async move {
            match store.ssf_lease("node-b".into(), 60_000).await {
                Ok(true) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    assert!(!store.ssf_lease("node-a".into(), 60_000).await.unwrap());
    // Nobody else takes a held lease, however many try at once.
    let racers: Vec<_> = (0..RACERS)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.ssf_lease(format!("racer-{i}"), 60_000).await })
        })
        .collect();
    for r in racers {
        assert!(!r.await.unwrap().unwrap(), "node-b still holds it");
    }
}

// === status lists (Token Status List) ===

fn list_meta(id: u64, now: i64, expires_in_ms: i64) -> ListMeta {
    ListMeta {
        id: ListId(id),
        size: 1024,
        created_ms: now,
        issue_until_ms: now + expires_in_ms / 2,
        expires_ms: now + expires_in_ms,
    }
}

/// Records written in group commits read back by index, from any index on; a list the
/// store never opened takes no record (`Conflict`) and reads as `None`.
async fn status_records_read_back_from_an_index_on_and_only_for_a_known_list(store: SharedStore) {
    let now = now_ms();
    let meta = list_meta(0x1234_5678_9abc_def0, now, 3_600_000);
    store.status_open_list(meta.clone()).await.unwrap();
    let batch = |from: u64, n: u64| -> Vec<(u64, String)> {
        (from..from + n)
            .map(|i| (i, format!("{{\"record\":{i}}}")))
            .collect()
    };
    // Two commits, the second landing first: order of completion does not matter.
    store.status_append(meta.id, batch(100, 50)).await.unwrap();
    store.status_append(meta.id, batch(0, 100)).await.unwrap();
    let all = store
        .status_records(meta.id, 0)
        .await
        .unwrap()
        .expect("the list");
    assert_eq!(all.meta, meta);
    let mut got = all.records.clone();
    got.sort();
    let mut want = batch(0, 150);
    want.sort();
    assert_eq!(got, want);
    let tail = store.status_records(meta.id, 120).await.unwrap().unwrap();
    let idx: BTreeSet<u64> = tail.records.iter().map(|(i, _)| *i).collect();
    assert_eq!(idx, (120..150).collect());

    let unknown = ListId(0x0fed_cba9_8765_4321);
    assert!(store.status_records(unknown, 0).await.unwrap().is_none());
    match store.status_append(unknown, batch(0, 1)).await {
        Err(StoreError::Conflict) => {}
        other => panic!("a record for an unknown list: {other:?}"),
    }
    assert!(store.status_records(unknown, 0).await.unwrap().is_none());
}

/// Open lists are listed; once expired they are not, and pruning drops them with their
/// records.
async fn status_lists_are_listed_until_they_expire_then_pruned(store: SharedStore) {
    let now = now_ms();
    let live = list_meta(1, now, 3_600_000);
    let short = list_meta(2, now, 300);
    store.status_open_list(live.clone()).await.unwrap();
    store.status_open_list(short.clone()).await.unwrap();
    store
        .status_append(short.id, vec![(0, "{}".into())])
        .await
        .unwrap();
    let ids = |lists: Vec<ListMeta>| lists.into_iter().map(|l| l.id).collect::<BTreeSet<_>>();
    assert_eq!(
        ids(store.status_lists(now).await.unwrap()),
        [live.id, short.id].into()
    );
    wait_until_clock_passes(short.expires_ms).await;
    let later = now_ms();
    assert_eq!(
        ids(store.status_lists(later).await.unwrap()),
        [live.id].into()
    );
    assert!(store.status_prune(later).await.unwrap() >= 1);
    assert!(store.status_records(short.id, 0).await.unwrap().is_none());
    assert_eq!(
        ids(store.status_lists(later).await.unwrap()),
        [live.id].into()
    );
    assert!(store.status_records(live.id, 0).await.unwrap().is_some());
}
