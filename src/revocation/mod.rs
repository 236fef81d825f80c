//! The session-version table (SPEC §5): for each (kind, value) the highest revocation seq,
//! the gapless `applied` watermark that new tokens are stamped with (`rsq`), and how fresh
//! this node's view of the durable log is.
//!
//! A token is revoked iff an entry for its jti, sid, sub or client_id, or the `all` entry,
//! has a seq greater than its `rsq`. Entries may be inserted ahead of `applied` (the node
//! that took a revocation applies it at once); that only ever revokes more, never less.
//!
//! **Architecture Invariant:** nothing here does IO or reads the clock; `follower.rs` feeds
//! the table and tells it the time.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use dashmap::DashMap;

/// A concurrent map with a fast, per-process seeded hasher.
type Map<V> = DashMap<Box<str>, V, foldhash::fast::RandomState>;

use crate::store::{RevocationEvent, RevocationKind};

pub mod follower;

/// One table entry: the newest revocation of a (kind, value), kept until every token it
/// could match has expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    seq: u64,
    expires_at_ms: i64,
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

/// The claims of a token that revocation looks at.
#[derive(Debug, Clone, Copy)]
pub struct Stamp<'a> {
    pub jti: &'a str,
    pub sid: Option<&'a str>,
    pub sub: &'a str,
    pub client_id: &'a str,
    pub rsq: u64,
    /// Delegation chain (`dcl`, `djt`): the client ids and jtis of the tokens this one
    /// was exchanged from. Revoking any of them revokes this token too.
    pub chain_clients: &'a [String],
    pub chain_jtis: &'a [String],
}

/// The table. Shared by `Arc`; every method takes `&self`.
#[derive(Debug, Default)]
pub struct Table {
    tokens: Map<Entry>,
    sessions: Map<Entry>,
    subjects: Map<Entry>,
    clients: Map<Entry>,
    /// Seq of the newest `all` revocation (0: none).
    all: AtomicU64,
    /// Every revocation with seq <= applied has been applied here.
    applied: AtomicU64,
    /// Unix ms at which the follower last confirmed `applied` had reached the store's
    /// head (0: never). Requests fail closed once this is older than `max_staleness`.
    fresh_at_ms: AtomicI64,
    retention: Retention,
}

impl Table {
    pub fn new(retention: Retention) -> Table {
        Table {
            retention,
            ..Table::default()
        }
    }

    pub fn retention(&self) -> Retention {
        self.retention
    }

    fn map(&self, kind: RevocationKind) -> Option<&Map<Entry>> {
        match kind {
            RevocationKind::Token => Some(&self.tokens),
            RevocationKind::Session => Some(&self.sessions),
            RevocationKind::Subject => Some(&self.subjects),
            RevocationKind::Client => Some(&self.clients),
            RevocationKind::All => None,
        }
    }

    /// Records a revocation (idempotent; keeps the highest seq per key). It is kept for
    /// the retention of its kind after `revoked_at`.
    pub fn insert(&self, e: &RevocationEvent) {
        let expires_at_ms = e
            .revoked_at_ms
            .saturating_add(self.retention.for_kind(e.kind));
        let Some(map) = self.map(e.kind) else {
            self.all.fetch_max(e.seq, Ordering::AcqRel);
            return;
        };
        let entry = Entry {
            seq: e.seq,
            expires_at_ms,
        };
        map.entry(e.value.as_str().into())
            .and_modify(|cur| {
                if cur.seq < e.seq {
                    *cur = entry;
                }
            })
            .or_insert(entry);
    }

    /// Whether a token with this stamp is revoked.
    pub fn is_revoked(&self, t: &Stamp<'_>) -> bool {
        let newer = |map: &Map<Entry>, v: &str| map.get(v).is_some_and(|e| e.seq > t.rsq);
        self.all.load(Ordering::Acquire) > t.rsq
            || newer(&self.tokens, t.jti)
            || newer(&self.subjects, t.sub)
            || newer(&self.clients, t.client_id)
            || t.sid.is_some_and(|sid| newer(&self.sessions, sid))
            || t.chain_clients.iter().any(|c| newer(&self.clients, c))
            || t.chain_jtis.iter().any(|j| newer(&self.tokens, j))
    }

    /// Whether revocation `kind:value` already covers tokens stamped `rsq`.
    pub fn covers(&self, kind: RevocationKind, value: &str, rsq: u64) -> bool {
        match self.map(kind) {
            Some(map) => map.get(value).is_some_and(|e| e.seq > rsq),
            None => self.all.load(Ordering::Acquire) > rsq,
        }
    }

    /// The gapless watermark: new tokens are stamped with it.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Advances the watermark (never moves it back).
    pub fn set_applied(&self, seq: u64) {
        self.applied.fetch_max(seq, Ordering::AcqRel);
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

    /// Drops entries that can no longer match a live token. Returns how many went.
    pub fn sweep(&self, now_ms: i64) -> usize {
        let mut removed = 0;
        for map in [&self.tokens, &self.sessions, &self.subjects, &self.clients] {
            let before = map.len();
            map.retain(|_, e| e.expires_at_ms > now_ms);
            removed += before - map.len();
        }
        removed
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

    fn stamp<'a>(rsq: u64) -> Stamp<'a> {
        Stamp {
            jti: "j1",
            sid: Some("s1"),
            sub: "alice",
            client_id: "app",
            rsq,
            chain_clients: &[],
            chain_jtis: &[],
        }
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
            let t = Table::new(TEST_RETENTION);
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
            let t = Table::new(TEST_RETENTION);
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
        let t = Table::new(TEST_RETENTION);
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
        let t = Table::new(TEST_RETENTION);
        t.insert(&ev(7, RevocationKind::Subject, "alice", 100));
        t.insert(&ev(3, RevocationKind::Subject, "alice", 50));
        assert!(t.is_revoked(&stamp(6)));
        assert_eq!(t.len(), 1);
        assert_eq!(t.sweep(1099), 0);
        assert_eq!(t.sweep(1100), 1);
        assert!(t.is_empty());
        assert!(!t.is_revoked(&stamp(6)));
    }

    #[test]
    fn session_kinds_outlive_token_entries() {
        let t = Table::new(Retention {
            token_ms: 100,
            session_ms: 1000,
        });
        t.insert(&ev(1, RevocationKind::Token, "j1", 0));
        t.insert(&ev(2, RevocationKind::Subject, "alice", 0));
        assert_eq!(t.sweep(100), 1);
        assert!(t.covers(RevocationKind::Subject, "alice", 1));
        assert!(!t.covers(RevocationKind::Token, "j1", 0));
        assert_eq!(t.sweep(1000), 1);
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
}
