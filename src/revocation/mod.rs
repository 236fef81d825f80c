//! The session-version table (SPEC §5): for each (kind, value) the highest revocation seq,
//! the gapless `applied` watermark that new tokens are stamped with (`rsq`), the store's
//! epochs (the stamp's `rse`), and how fresh this node's view of the durable log is.
//!
//! A stamp `(rse, rsq)` is valid iff `rse` is an epoch the store knows and `rsq` is at or
//! below that epoch's closing seq (for the open epoch: at or below `applied`). Given a
//! valid stamp, a token is revoked iff an entry for its jti, sid, sub or client_id, or the
//! `all` entry, has a seq greater than its `rsq`: seqs never go back across epochs, so
//! every valid stamp of a closed epoch is below every seq of a later one. Entries may be
//! inserted ahead of `applied` (the node that took a revocation applies it at once); that
//! only ever revokes more, never less.
//!
//! **Architecture Invariant:** nothing here does IO or reads the clock; `follower.rs` feeds
//! the table and tells it the time.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{watch, Notify};

mod entries;
mod log;

use entries::Entries;

pub use log::{
    format_closed, new_epoch_id, parse_closed, revocation_target, ClosedEpoch, NewRevocation,
    RevocationEvent, RevocationKind,
};

/// Epoch ids in tokens and records: 16 lower-case hex digits. Absent (old tokens) is 0,
/// which is never an epoch, so such stamps are invalid.
pub mod epoch_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{id:016x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        if text.len() != 16 {
            return Err(serde::de::Error::custom("an epoch is 16 hex digits"));
        }
        u64::from_str_radix(&text, 16).map_err(serde::de::Error::custom)
    }
}

/// The store's epochs as this node last saw them.
#[derive(Debug, Default)]
pub struct Epochs {
    /// The open epoch (0: not loaded yet; nothing is valid).
    pub current: u64,
    /// Closed epochs and the seq each was closed at.
    pub closed: HashMap<u64, u64>,
    /// Epochs this node saw that the store no longer knows (its state was lost): stamps
    /// of them are stale at once, without waiting for a newer view.
    pub forgotten: HashSet<u64>,
}

impl Epochs {
    pub fn new(current: u64, closed: &[ClosedEpoch]) -> Epochs {
        Epochs {
            current,
            closed: closed.iter().map(|c| (c.id, c.closed_at)).collect(),
            forgotten: HashSet::new(),
        }
    }
}

/// What the table says about a stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Valid and not revoked.
    Live,
    Revoked,
    /// Of an epoch that was closed below the stamp, or no epoch at all: the store never
    /// confirmed this stamp, or lost the history it was issued from. Inactive forever.
    StaleEpoch,
    /// Above what this node has applied, or of an epoch it does not know (yet): the node
    /// may be behind. Callers may wait for the follower ([`Table::wait_for`]) and ask again.
    StampAhead,
}

/// How long after a revocation a token it matches can still be alive, by kind: access
/// tokens live at most the hard cap (plus leeway); a session, subject, client or `all`
/// revocation must also outlive every refresh token it kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub token_ms: i64,
    pub session_ms: i64,
}

impl Retention {
    pub fn for_kind(&self, kind: RevocationKind) -> i64 {
        match kind {
            RevocationKind::Token => self.token_ms,
            _ => self.session_ms,
        }
    }

    /// The longest of them: how far back the log can still matter.
    pub fn longest_ms(&self) -> i64 {
        self.token_ms.max(self.session_ms)
    }
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            token_ms: 3_600_000,
            session_ms: 3_600_000,
        }
    }
}

/// A position in the revocation log: a seq of an epoch. A token's stamp `(rse, rsq)`,
/// the store's head and a node's `applied` are points; keeping both numbers in one type
/// means they cannot be passed in the wrong order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Point {
    /// The epoch (a random id; 0 is "no epoch", never valid).
    pub epoch: u64,
    /// The revocation seq within the cluster-wide log.
    pub seq: u64,
}

impl Point {
    pub fn new(epoch: u64, seq: u64) -> Point {
        Point { epoch, seq }
    }
}

/// The claims of a token that revocation looks at.
#[derive(Debug, Clone, Copy)]
pub struct Stamp<'a> {
    pub jti: &'a str,
    pub sid: Option<&'a str>,
    pub sub: &'a str,
    pub client_id: &'a str,
    pub rsq: u64,
    /// The epoch of `rsq`.
    pub rse: u64,
    /// Delegation chain (`dcl`, `djt`): the client ids and jtis of the tokens this one
    /// was exchanged from. Revoking any of them revokes this token too.
    pub chain_clients: &'a [String],
    pub chain_jtis: &'a [String],
}

impl Stamp<'_> {
    /// `(rse, rsq)` as a point of the log.
    pub fn point(&self) -> Point {
        Point::new(self.rse, self.rsq)
    }
}

/// The table. Shared by `Arc`; every method takes `&self`.
///
/// Per kind, the newest revocation of each value (its seq, and when every token it could
/// match has expired), kept compactly: see [`entries`] for the layout (10 M jtis in about
/// 420 MiB) and why look-ups stay exact.
#[derive(Debug)]
pub struct Table {
    tokens: Entries,
    sessions: Entries,
    subjects: Entries,
    clients: Entries,
    /// Seq of the newest `all` revocation (0: none).
    all: AtomicU64,
    /// Every revocation with seq <= applied has been applied here.
    applied: AtomicU64,
    /// Unix ms at which the follower last confirmed `applied` had reached the store's
    /// head (0: never). Requests fail closed once this is older than `max_staleness`.
    fresh_at_ms: AtomicI64,
    retention: Retention,
    /// The store's epochs. Changed only by the follower, after lowering `applied`.
    epochs: ArcSwap<Epochs>,
    /// Ticks whenever `applied` or the epochs change, for requests waiting on a stamp.
    changed: watch::Sender<u64>,
    /// Asks the follower for a head check now (a request saw a stamp ahead of it).
    check: Notify,
}

impl Default for Table {
    fn default() -> Table {
        Table::new(Retention::default())
    }
}

impl Table {
    pub fn new(retention: Retention) -> Table {
        Table {
            tokens: Entries::default(),
            sessions: Entries::default(),
            subjects: Entries::default(),
            clients: Entries::default(),
            all: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            fresh_at_ms: AtomicI64::new(0),
            retention,
            epochs: ArcSwap::from_pointee(Epochs::default()),
            changed: watch::channel(0).0,
            check: Notify::new(),
        }
    }

    /// A table already in `epoch` with everything up to `applied` applied: for tests and
    /// benches that need valid stamps without a store.
    pub fn with_epoch(retention: Retention, epoch: u64, applied: u64) -> Table {
        let t = Table::new(retention);
        t.set_epochs(Epochs::new(epoch, &[]));
        t.set_applied(applied);
        t
    }

    pub fn retention(&self) -> Retention {
        self.retention
    }

    fn map(&self, kind: RevocationKind) -> Option<&Entries> {
        match kind {
            RevocationKind::Token => Some(&self.tokens),
            RevocationKind::Session => Some(&self.sessions),
            RevocationKind::Subject => Some(&self.subjects),
            RevocationKind::Client => Some(&self.clients),
            RevocationKind::All | RevocationKind::Contract | RevocationKind::Grant => None,
        }
    }

    /// Records a revocation (idempotent; keeps the highest seq per key). It is kept for
    /// the retention of its kind after `revoked_at`.
    pub fn insert(&self, e: &RevocationEvent) {
        if matches!(e.kind, RevocationKind::Contract | RevocationKind::Grant) {
            // A contract change or a grant transition: the follower hands it to the
            // contracts or the grants, not the table.
            return;
        }
        let expires_at_ms = e
            .revoked_at_ms
            .saturating_add(self.retention.for_kind(e.kind));
        let Some(map) = self.map(e.kind) else {
            self.all.fetch_max(e.seq, Ordering::AcqRel);
            return;
        };
        map.insert(&e.value, e.seq, expires_at_ms);
    }

    /// Whether a token with this stamp is revoked, or its stamp is not (yet) valid here:
    /// anything but [`Verdict::Live`] is inactive.
    pub fn is_revoked(&self, t: &Stamp<'_>) -> bool {
        self.verdict(t) != Verdict::Live
    }

    /// The stamp's validity, then the revocation comparison.
    pub fn verdict(&self, t: &Stamp<'_>) -> Verdict {
        let validity = self.validity(t.point());
        if validity != Verdict::Live {
            return validity;
        }
        let newer = |map: &Entries, v: &str| map.get(v).is_some_and(|e| e.seq > t.rsq);
        let revoked = self.all.load(Ordering::Acquire) > t.rsq
            || newer(&self.tokens, t.jti)
            || newer(&self.subjects, t.sub)
            || newer(&self.clients, t.client_id)
            || t.sid.is_some_and(|sid| newer(&self.sessions, sid))
            || t.chain_clients.iter().any(|c| newer(&self.clients, c))
            || t.chain_jtis.iter().any(|j| newer(&self.tokens, j));
        if revoked {
            Verdict::Revoked
        } else {
            Verdict::Live
        }
    }

    /// Whether a stamp is one the store confirmed (Live), never will (StaleEpoch), or
    /// this node cannot tell yet (StampAhead).
    pub fn validity(&self, stamp: Point) -> Verdict {
        let Point {
            epoch: rse,
            seq: rsq,
        } = stamp;
        if rse == 0 {
            return Verdict::StaleEpoch;
        }
        let epochs = self.epochs.load();
        if rse == epochs.current {
            return if rsq <= self.applied() {
                Verdict::Live
            } else {
                Verdict::StampAhead
            };
        }
        match epochs.closed.get(&rse) {
            Some(&closed_at) if rsq <= closed_at => Verdict::Live,
            Some(_) => Verdict::StaleEpoch,
            None if epochs.forgotten.contains(&rse) => Verdict::StaleEpoch,
            None => Verdict::StampAhead,
        }
    }

    /// The stamp for a token issued now: the open epoch and `applied`, read consistently
    /// (the follower lowers `applied` before it switches epochs, so a torn read can only
    /// pair the old epoch with a lower seq, a valid and conservative stamp).
    pub fn stamp_now(&self) -> Point {
        // Epoch changes are rare; a few tries always suffice in practice.
        for _ in 0..16 {
            let before = self.epochs.load().current;
            let applied = self.applied();
            if self.epochs.load().current == before {
                return Point::new(before, applied);
            }
        }
        // Still racing: seq 0 of the current epoch is always valid and stamps low.
        Point::new(self.epochs.load().current, 0)
    }

    /// The open epoch as this node knows it.
    pub fn epoch(&self) -> u64 {
        self.epochs.load().current
    }

    /// The closing seq of `epoch` if this node knows it as closed.
    pub fn closed_at(&self, epoch: u64) -> Option<u64> {
        self.epochs.load().closed.get(&epoch).copied()
    }

    /// Switches to the store's epochs (the follower, after [`Table::lower_applied`]).
    /// Epochs this node knew that the new view lacks are remembered as forgotten.
    pub fn set_epochs(&self, mut epochs: Epochs) {
        let old = self.epochs.load();
        let known = |id: &u64| *id != 0 && *id != epochs.current && !epochs.closed.contains_key(id);
        let lost: Vec<u64> = std::iter::once(old.current)
            .chain(old.closed.keys().copied())
            .chain(old.forgotten.iter().copied())
            .filter(known)
            .collect();
        epochs.forgotten.extend(lost);
        self.epochs.store(Arc::new(epochs));
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Moves `applied` down to `seq` if it is above (an epoch change: lower is safe).
    pub fn lower_applied(&self, seq: u64) {
        self.applied.fetch_min(seq, Ordering::AcqRel);
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Every (kind, value) with an entry above `seq`: what a node still holds of a
    /// history the store lost.
    pub fn entries_above(&self, seq: u64) -> Vec<(RevocationKind, String, i64)> {
        let mut out = Vec::new();
        if self.all.load(Ordering::Acquire) > seq {
            out.push((RevocationKind::All, String::new(), 0));
        }
        for kind in RevocationKind::ALL {
            if let Some(map) = self.map(kind) {
                for (value, e) in map.above(seq) {
                    out.push((kind, value, e.expires_at_ms));
                }
            }
        }
        out
    }

    /// Waits until `(rse, rsq)` is no longer [`Verdict::StampAhead`] or `timeout` passes,
    /// asking the follower for a head check first. Returns the final validity.
    pub async fn wait_for(&self, stamp: Point, timeout: std::time::Duration) -> Verdict {
        let mut changed = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        // At most one wake-up per change; the deadline bounds the loop in time.
        for _ in 0..64 {
            let v = self.validity(stamp);
            if v != Verdict::StampAhead {
                return v;
            }
            self.check.notify_one();
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .map_or(true, |r| r.is_err())
            {
                break;
            }
        }
        self.validity(stamp)
    }

    /// Ticks whenever `applied` or the epochs change (the node registry reports them).
    pub fn watch_applied(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Resolves when a request asked for a head check.
    pub async fn check_requested(&self) {
        self.check.notified().await
    }

    /// Whether revocation `kind:value` already covers tokens stamped `rsq`.
    pub fn covers(&self, kind: RevocationKind, value: &str, rsq: u64) -> bool {
        match (kind, self.map(kind)) {
            (_, Some(map)) => map.get(value).is_some_and(|e| e.seq > rsq),
            (RevocationKind::All, None) => self.all.load(Ordering::Acquire) > rsq,
            (_, None) => false,
        }
    }

    /// Ticks whenever `applied` or the epochs change (for tasks that follow the log, such
    /// as Shared Signals delivery).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The gapless watermark: new tokens are stamped with it.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Advances the watermark (never moves it back).
    pub fn set_applied(&self, seq: u64) {
        if self.applied.fetch_max(seq, Ordering::AcqRel) < seq {
            self.changed.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    pub fn mark_fresh(&self, at_ms: i64) {
        self.fresh_at_ms.fetch_max(at_ms, Ordering::AcqRel);
    }

    /// How old this node's confirmed view of the log is at `now_ms` (`i64::MAX`: never).
    pub fn age_ms(&self, now_ms: i64) -> i64 {
        match self.fresh_at_ms.load(Ordering::Acquire) {
            0 => i64::MAX,
            t => now_ms.saturating_sub(t).max(0),
        }
    }

    pub fn is_fresh(&self, now_ms: i64, max_staleness_ms: i64) -> bool {
        self.age_ms(now_ms) <= max_staleness_ms
    }

    /// Drops entries that can no longer match a live token (expiries are kept in whole
    /// seconds, rounded up, so an entry may stay up to a second longer). Returns how many
    /// went.
    pub fn sweep(&self, now_ms: i64) -> usize {
        [&self.tokens, &self.sessions, &self.subjects, &self.clients]
            .into_iter()
            .map(|map| map.sweep(now_ms))
            .sum()
    }

    pub fn len(&self) -> usize {
        self.tokens.len() + self.sessions.len() + self.subjects.len() + self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_RETENTION: Retention = Retention {
        token_ms: 1000,
        session_ms: 1000,
    };

    fn ev(seq: u64, kind: RevocationKind, value: &str, at: i64) -> RevocationEvent {
        RevocationEvent {
            seq,
            kind,
            value: value.into(),
            revoked_at_ms: at,
        }
    }

    const E: u64 = 0xe1;

    fn stamp<'a>(rsq: u64) -> Stamp<'a> {
        Stamp {
            jti: "j1",
            sid: Some("s1"),
            sub: "alice",
            client_id: "app",
            rsq,
            rse: E,
            chain_clients: &[],
            chain_jtis: &[],
        }
    }

    fn table() -> Table {
        Table::with_epoch(TEST_RETENTION, E, 100)
    }

    #[test]
    fn a_revocation_hits_tokens_stamped_before_it_only() {
        let cases = [
            (RevocationKind::Token, "j1"),
            (RevocationKind::Session, "s1"),
            (RevocationKind::Subject, "alice"),
            (RevocationKind::Client, "app"),
            (RevocationKind::All, ""),
        ];
        for (kind, value) in cases {
            let t = table();
            t.insert(&ev(5, kind, value, 0));
            assert!(t.is_revoked(&stamp(4)), "{kind:?} must revoke rsq 4");
            assert!(!t.is_revoked(&stamp(5)), "{kind:?} must spare rsq 5");
            assert!(t.covers(kind, value, 4));
        }
    }

    #[test]
    fn a_revocation_of_any_origin_hits_the_delegated_token() {
        let clients = ["origin".to_string(), "middle".to_string()];
        let jtis = ["j0".to_string(), "j-mid".to_string()];
        let delegated = Stamp {
            chain_clients: &clients,
            chain_jtis: &jtis,
            ..stamp(4)
        };
        for (kind, value) in [
            (RevocationKind::Client, "origin"),
            (RevocationKind::Client, "middle"),
            (RevocationKind::Token, "j0"),
            (RevocationKind::Token, "j-mid"),
        ] {
            let t = table();
            t.insert(&ev(5, kind, value, 0));
            assert!(t.is_revoked(&delegated), "{kind:?} {value}");
            assert!(!t.is_revoked(&stamp(4)), "{kind:?} {value} spares others");
            assert!(!t.is_revoked(&Stamp {
                rsq: 5,
                ..delegated
            }));
        }
    }

    #[test]
    fn other_values_are_not_touched() {
        let t = table();
        t.insert(&ev(9, RevocationKind::Subject, "bob", 0));
        t.insert(&ev(10, RevocationKind::Session, "s2", 0));
        assert!(!t.is_revoked(&stamp(1)));
        let no_sid = Stamp {
            sid: None,
            ..stamp(1)
        };
        assert!(!t.is_revoked(&no_sid));
    }

    #[test]
    fn keeps_the_highest_seq_and_sweeps_expired_entries() {
        let t = table();
        t.insert(&ev(7, RevocationKind::Subject, "alice", 100));
        t.insert(&ev(3, RevocationKind::Subject, "alice", 50));
        assert!(t.is_revoked(&stamp(6)));
        assert_eq!(t.len(), 1);
        // Expiry (100 + 1000 ms) is kept in whole seconds, rounded up: 2 s.
        assert_eq!(t.sweep(1999), 0);
        assert_eq!(t.sweep(2000), 1);
        assert!(t.is_empty());
        assert!(!t.is_revoked(&stamp(6)));
    }

    #[test]
    fn session_kinds_outlive_token_entries() {
        let t = Table::with_epoch(
            Retention {
                token_ms: 1000,
                session_ms: 10_000,
            },
            E,
            100,
        );
        t.insert(&ev(1, RevocationKind::Token, "j1", 0));
        t.insert(&ev(2, RevocationKind::Subject, "alice", 0));
        assert_eq!(t.sweep(999), 0);
        assert_eq!(t.sweep(1000), 1);
        assert!(t.covers(RevocationKind::Subject, "alice", 1));
        assert!(!t.covers(RevocationKind::Token, "j1", 0));
        assert_eq!(t.sweep(10_000), 1);
    }

    #[test]
    fn watermark_and_freshness() {
        let t = Table::new(TEST_RETENTION);
        assert_eq!(t.age_ms(1_000), i64::MAX);
        assert!(!t.is_fresh(1_000, 2_000));
        t.mark_fresh(1_000);
        assert!(t.is_fresh(3_000, 2_000));
        assert!(!t.is_fresh(3_001, 2_000));
        t.set_applied(4);
        t.set_applied(2);
        assert_eq!(t.applied(), 4);
    }

    #[test]
    fn stamps_are_valid_only_within_what_the_store_confirmed() {
        let t = Table::with_epoch(TEST_RETENTION, E, 5);
        assert_eq!(t.verdict(&stamp(5)), Verdict::Live);
        // Above what this node applied: it may be behind.
        assert_eq!(t.verdict(&stamp(6)), Verdict::StampAhead);
        // No epoch (a token from before epochs): never valid.
        assert_eq!(
            t.verdict(&Stamp { rse: 0, ..stamp(1) }),
            Verdict::StaleEpoch
        );
        // An epoch this node does not know yet.
        assert_eq!(
            t.verdict(&Stamp {
                rse: 0xe2,
                ..stamp(1)
            }),
            Verdict::StampAhead
        );
        // The store closed E at 3 (it lost 4 and 5) and opened E2 from 3.
        t.lower_applied(3);
        t.set_epochs(Epochs::new(
            0xe2,
            &[ClosedEpoch {
                id: E,
                closed_at: 3,
            }],
        ));
        assert_eq!(t.verdict(&stamp(3)), Verdict::Live);
        assert_eq!(t.verdict(&stamp(4)), Verdict::StaleEpoch);
        assert_eq!(t.verdict(&stamp(5)), Verdict::StaleEpoch);
        assert_eq!(t.stamp_now(), Point::new(0xe2, 3));
        // Seqs of the new epoch continue above the closed one: a new revocation
        // covers every valid stamp of E, and a lost-and-forgotten seq stays dead.
        t.insert(&ev(4, RevocationKind::Subject, "alice", 0));
        t.set_applied(4);
        assert_eq!(t.verdict(&stamp(3)), Verdict::Revoked);
        assert_eq!(
            t.verdict(&Stamp {
                rse: 0xe2,
                ..stamp(4)
            }),
            Verdict::Live
        );
        assert_eq!(t.verdict(&stamp(4)), Verdict::StaleEpoch);
        // The store lost its state (FLUSHALL): a new epoch with no history. Every epoch
        // this node knew is forgotten: stale at once, no waiting.
        t.set_epochs(Epochs::new(0xe3, &[]));
        assert_eq!(t.verdict(&stamp(3)), Verdict::StaleEpoch);
        assert_eq!(
            t.verdict(&Stamp {
                rse: 0xe2,
                ..stamp(4)
            }),
            Verdict::StaleEpoch
        );
        assert_eq!(
            t.verdict(&Stamp {
                rse: 0xe4,
                ..stamp(1)
            }),
            Verdict::StampAhead
        );
    }

    #[test]
    fn entries_above_a_seq_are_what_a_node_can_restore() {
        let t = table();
        t.insert(&ev(2, RevocationKind::Subject, "old", 0));
        t.insert(&ev(4, RevocationKind::Token, "j9", 0));
        t.insert(&ev(5, RevocationKind::All, "", 0));
        let mut held: Vec<_> = t
            .entries_above(3)
            .into_iter()
            .map(|(k, v, _)| (k, v))
            .collect();
        held.sort_by_key(|(k, _)| k.as_str());
        assert_eq!(
            held,
            [
                (RevocationKind::All, String::new()),
                (RevocationKind::Token, "j9".to_string())
            ]
        );
    }

    #[tokio::test]
    async fn a_request_waits_for_the_follower_then_gives_up() {
        let t = Arc::new(Table::with_epoch(TEST_RETENTION, E, 5));
        let waiter = {
            let t = t.clone();
            tokio::spawn(async move {
                t.wait_for(Point::new(E, 7), std::time::Duration::from_secs(30))
                    .await
            })
        };
        // The follower is asked for a check; it applies up to 7.
        tokio::time::timeout(std::time::Duration::from_secs(30), t.check_requested())
            .await
            .unwrap();
        t.set_applied(7);
        assert_eq!(waiter.await.unwrap(), Verdict::Live);
        let bound = std::time::Duration::from_millis(20);
        assert_eq!(
            t.wait_for(Point::new(E, 8), bound).await,
            Verdict::StampAhead
        );
    }
}
