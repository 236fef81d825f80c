//! The node registry's vocabulary and its judgments: what a node reports about itself,
//! what the store keeps of it, and what that proves about one revocation. No IO and no
//! clock: every judgment takes the store's time, so all of them are made on one clock.
//!
//! A node is judged by what it recorded, never by what it says over HTTP:
//! - **gone**: its last heartbeat is older than its `ttl` (it stopped, was killed, or
//!   cannot reach the store);
//! - **failing closed**: its last recorded freshness proof is older than its
//!   `max_staleness` plus [`margin_ms`]. A node records a proof in the registry *before*
//!   it trusts it (`app::follower`), so the recorded proof is never older than the one
//!   the node answers from: once the registry says stale, the node refuses (503);
//! - **pending**: live, fresh, and not yet at the revocation's seq;
//! - **applied**: its `applied` watermark covers the seq (in the seq's epoch).

use serde::Serialize;

use crate::revocation::{ClosedEpoch, RevocationEvent};

/// How many `applied` changes the store keeps per node (newest first): enough to say when
/// each of the last revocations reached it.
pub const ACK_HISTORY: usize = 256;

/// How long the registry keeps a node whose heartbeat expired, so it is reported `gone`
/// rather than forgotten, in ms.
pub const GONE_KEPT_MS: i64 = 3_600_000;

/// The tolerance of the staleness judgment, in ms: 50 ms plus 1% of `max_staleness`.
/// Clock offsets do not matter (a node's age and the registry's are differences on the
/// same clock each); this covers a node's clock running up to 1% slower than the store's.
/// A wall-clock step backwards on a node is not tolerated (it would make the node think
/// itself fresher than it is, with or without the registry).
pub fn margin_ms(max_staleness_ms: i64) -> i64 {
    50 + max_staleness_ms / 100
}

/// What a node writes about itself: who it is and how far it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReport {
    /// Random per process start (16 hex digits).
    pub id: String,
    /// A human label: `node.name`, else `hostname:port`.
    pub name: String,
    /// The address its main listener is bound to.
    pub address: String,
    /// latch's version.
    pub version: String,
    pub max_staleness_ms: i64,
    /// Past this age of its last heartbeat the node is gone.
    pub ttl_ms: i64,
    /// The store epoch of `applied` (0: not loaded yet).
    pub epoch: u64,
    /// Every revocation with seq <= this is applied on the node.
    pub applied: u64,
    /// The key-set version its ring is built from.
    pub keys_version: u64,
    /// A freshness proof: the store's time of a head check after which the node had
    /// applied everything. `None` leaves the recorded one as it is.
    pub fresh_at_ms: Option<i64>,
    /// Whether its `/readyz` would answer 200.
    pub ready: bool,
}

/// One change of a node's `applied`, as the store recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Ack {
    pub epoch: u64,
    pub applied: u64,
    /// Store time of the report that first carried it.
    pub at_ms: i64,
}

/// What the store holds about one node: its last report, with the store's times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub id: String,
    pub name: String,
    pub address: String,
    pub version: String,
    pub max_staleness_ms: i64,
    pub ttl_ms: i64,
    pub epoch: u64,
    pub applied: u64,
    pub keys_version: u64,
    pub ready: bool,
    /// Store time of its first report.
    pub started_at_ms: i64,
    /// Store time of its latest recorded freshness proof (0: none yet).
    pub fresh_at_ms: i64,
    /// Store time of its latest report.
    pub heartbeat_at_ms: i64,
    /// Changes of `(epoch, applied)`, newest first, at most [`ACK_HISTORY`].
    pub acks: Vec<Ack>,
}

/// The registry as read at one store instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    /// The store's time when it was read: every judgment uses this clock.
    pub time_ms: i64,
    pub nodes: Vec<NodeRecord>,
}

/// The store's epochs, to tell whether a node's `applied` covers a seq.
#[derive(Debug, Clone, Default)]
pub struct Epochs<'a> {
    pub current: u64,
    pub closed: &'a [ClosedEpoch],
}

impl Epochs<'_> {
    /// Whether `applied` in `epoch` covers `seq` of the open epoch's log: in the open
    /// epoch if it reached it; in a closed epoch only up to where that epoch closed.
    pub fn covers(&self, epoch: u64, applied: u64, seq: u64) -> bool {
        if applied < seq {
            return false;
        }
        epoch == self.current
            || self
                .closed
                .iter()
                .any(|c| c.id == epoch && seq <= c.closed_at)
    }
}

/// A node's condition at one store instant, whatever revocation is asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Live, fresh, and at the store's head.
    Current,
    /// Live and fresh, but behind the store's head.
    Behind,
    /// Live, but its freshness proof is too old: it refuses to answer.
    FailingClosed,
    /// Its heartbeat expired.
    Gone,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Current => "current",
            NodeState::Behind => "behind",
            NodeState::FailingClosed => "failing_closed",
            NodeState::Gone => "gone",
        }
    }
}

// === impl NodeRecord ===

impl NodeRecord {
    /// The record once `report` arrives at store time `now_ms`: what every store does
    /// (the Redis store in Lua, the same rules).
    pub fn updated(prev: Option<NodeRecord>, report: NodeReport, now_ms: i64) -> NodeRecord {
        let (started_at_ms, fresh_at_ms, mut acks) = match prev {
            Some(p) => (p.started_at_ms, p.fresh_at_ms, p.acks),
            None => (now_ms, 0, Vec::new()),
        };
        let moved = acks
            .first()
            .is_none_or(|a| (a.epoch, a.applied) != (report.epoch, report.applied));
        if moved {
            acks.insert(
                0,
                Ack {
                    epoch: report.epoch,
                    applied: report.applied,
                    at_ms: now_ms,
                },
            );
            acks.truncate(ACK_HISTORY);
        }
        NodeRecord {
            fresh_at_ms: report
                .fresh_at_ms
                .map_or(fresh_at_ms, |f| f.max(fresh_at_ms)),
            id: report.id,
            name: report.name,
            address: report.address,
            version: report.version,
            max_staleness_ms: report.max_staleness_ms,
            ttl_ms: report.ttl_ms,
            epoch: report.epoch,
            applied: report.applied,
            keys_version: report.keys_version,
            ready: report.ready,
            started_at_ms,
            heartbeat_at_ms: now_ms,
            acks,
        }
    }

    /// Store time after which the registry forgets this node.
    pub fn forget_at_ms(&self) -> i64 {
        self.heartbeat_at_ms + self.ttl_ms + GONE_KEPT_MS
    }

    pub fn is_gone(&self, now_ms: i64) -> bool {
        now_ms.saturating_sub(self.heartbeat_at_ms) > self.ttl_ms
    }

    /// Whether the node provably refuses to answer at `now_ms` (see the module doc).
    pub fn is_failing_closed(&self, now_ms: i64) -> bool {
        self.fresh_at_ms == 0
            || now_ms.saturating_sub(self.fresh_at_ms)
                > self.max_staleness_ms + margin_ms(self.max_staleness_ms)
    }

    /// How far behind `head_seq` of the open epoch it is (`None`: another epoch).
    pub fn lag(&self, epochs: &Epochs<'_>, head_seq: u64) -> Option<u64> {
        (self.epoch == epochs.current).then(|| head_seq.saturating_sub(self.applied))
    }

    pub fn state(&self, epochs: &Epochs<'_>, head_seq: u64, now_ms: i64) -> NodeState {
        if self.is_gone(now_ms) {
            NodeState::Gone
        } else if self.is_failing_closed(now_ms) {
            NodeState::FailingClosed
        } else if self.lag(epochs, head_seq) == Some(0) {
            NodeState::Current
        } else {
            NodeState::Behind
        }
    }

    /// When the store first recorded an `applied` that covers `seq`: the earliest
    /// covering change still in the history (`None` when the history no longer reaches
    /// back that far).
    pub fn applied_at(&self, epochs: &Epochs<'_>, seq: u64) -> Option<i64> {
        let covering = self
            .acks
            .iter()
            .take_while(|a| epochs.covers(a.epoch, a.applied, seq))
            .count();
        if covering == 0 || (covering == self.acks.len() && self.acks.len() >= ACK_HISTORY) {
            return None;
        }
        Some(self.acks[covering - 1].at_ms)
    }

    /// What this node proves about `rev` at `now_ms`.
    pub fn confirm(&self, epochs: &Epochs<'_>, rev: &RevocationEvent, now_ms: i64) -> Confirmation {
        if epochs.covers(self.epoch, self.applied, rev.seq) {
            return Confirmation::Applied {
                at_ms: self.applied_at(epochs, rev.seq),
                on_start: self.started_at_ms > rev.revoked_at_ms,
            };
        }
        if self.is_gone(now_ms) {
            Confirmation::Gone
        } else if self.is_failing_closed(now_ms) {
            Confirmation::FailingClosed
        } else {
            Confirmation::Pending
        }
    }
}

/// What one node proves about one revocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmation {
    /// Its watermark covers the seq: every token the revocation matches is inactive there.
    /// `at_ms`: store time of its first report covering it; `on_start`: the node started
    /// after the revocation and read it from the log while catching up.
    Applied { at_ms: Option<i64>, on_start: bool },
    /// Live and still answering, not there yet: the only state a responder waits for.
    Pending,
    /// Not there, but it refuses every request until it catches up.
    FailingClosed,
    /// Not there, and its heartbeat expired: not waited for.
    Gone,
}

impl Confirmation {
    pub fn as_str(self) -> &'static str {
        match self {
            Confirmation::Applied { .. } => "applied",
            Confirmation::Pending => "pending",
            Confirmation::FailingClosed => "failing_closed",
            Confirmation::Gone => "gone",
        }
    }

    /// Whether this node is settled for the revocation (anything but pending).
    pub fn is_settled(self) -> bool {
        self != Confirmation::Pending
    }
}

/// How a revocation stands across the registry.
#[derive(Debug, Clone)]
pub struct Proof<'r> {
    pub revocation: RevocationEvent,
    /// Every node the registry holds, with what it proves.
    pub nodes: Vec<(&'r NodeRecord, Confirmation)>,
}

impl<'r> Proof<'r> {
    pub fn of(
        registry: &'r Registry,
        epochs: &Epochs<'_>,
        revocation: RevocationEvent,
    ) -> Proof<'r> {
        let nodes = registry
            .nodes
            .iter()
            .map(|n| (n, n.confirm(epochs, &revocation, registry.time_ms)))
            .collect();
        Proof { revocation, nodes }
    }

    /// Every node has applied it, fails closed, or is gone.
    pub fn is_confirmed(&self) -> bool {
        self.nodes.iter().all(|(_, c)| c.is_settled())
    }

    /// The nodes still answering without it.
    pub fn waiting_for(&self) -> Vec<&'r NodeRecord> {
        self.nodes
            .iter()
            .filter(|(_, c)| !c.is_settled())
            .map(|(n, _)| *n)
            .collect()
    }

    pub fn count(&self, status: &str) -> usize {
        self.nodes
            .iter()
            .filter(|(_, c)| c.as_str() == status)
            .count()
    }

    /// How long it took to reach the last node that applied it while running (nodes
    /// that caught up at start are not counted): `None` while a node is pending, or when
    /// a node's history no longer says when it applied it.
    pub fn reached_last_ms(&self) -> Option<i64> {
        let mut last = Some(0i64);
        for (_, c) in &self.nodes {
            match c {
                Confirmation::Pending => return None,
                Confirmation::Applied {
                    at_ms: Some(at),
                    on_start: false,
                } => last = last.map(|l| l.max(at - self.revocation.revoked_at_ms)),
                Confirmation::Applied {
                    at_ms: None,
                    on_start: false,
                } => last = None,
                _ => {}
            }
        }
        last.map(|l| l.max(0))
    }
}

/// A fresh node id: 16 random hex digits, new at every process start.
pub fn new_node_id() -> String {
    format!("{:016x}", crate::revocation::new_epoch_id())
}

/// A node name of `hostname:port` when `node.name` is not set.
pub fn default_name(port: u16) -> String {
    let host = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{port}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revocation::RevocationKind;

    const E: u64 = 0xe1;

    fn node(applied: u64, fresh_at_ms: i64, heartbeat_at_ms: i64) -> NodeRecord {
        NodeRecord {
            id: "n1".into(),
            name: "a:1".into(),
            address: "127.0.0.1:1".into(),
            version: "0".into(),
            max_staleness_ms: 2000,
            ttl_ms: 5000,
            epoch: E,
            applied,
            keys_version: 1,
            ready: true,
            started_at_ms: 0,
            fresh_at_ms,
            heartbeat_at_ms,
            acks: vec![],
        }
    }

    fn rev(seq: u64, at: i64) -> RevocationEvent {
        RevocationEvent {
            seq,
            kind: RevocationKind::Subject,
            value: "alice".into(),
            revoked_at_ms: at,
        }
    }

    fn epochs() -> Epochs<'static> {
        Epochs {
            current: E,
            closed: &[],
        }
    }

    #[test]
    fn a_node_is_judged_on_the_stores_clock() {
        let now = 100_000;
        let margin = margin_ms(2000);
        let cases = [
            // (applied, fresh_at, heartbeat_at, expected for seq 10)
            (10, now, now, "applied"),
            (9, now, now, "pending"),
            (9, now - 2000 - margin, now, "pending"),
            (9, now - 2000 - margin - 1, now, "failing_closed"),
            (9, 0, now, "failing_closed"),
            (9, now, now - 5000, "pending"),
            (9, now, now - 5001, "gone"),
            // Applied wins: a node that died after applying it had applied it.
            (10, now, now - 5001, "applied"),
        ];
        for (applied, fresh, beat, want) in cases {
            let n = node(applied, fresh, beat);
            let got = n.confirm(&epochs(), &rev(10, now - 10), now);
            assert_eq!(
                got.as_str(),
                want,
                "applied {applied} fresh {fresh} beat {beat}"
            );
        }
    }

    #[test]
    fn applied_in_a_closed_epoch_covers_only_up_to_its_closing_seq() {
        let closed = [ClosedEpoch {
            id: 0xe0,
            closed_at: 7,
        }];
        let e = Epochs {
            current: E,
            closed: &closed,
        };
        assert!(e.covers(0xe0, 9, 7));
        assert!(!e.covers(0xe0, 9, 8), "seq 8 belongs to the new epoch");
        assert!(!e.covers(0xbad, 100, 1), "an unknown epoch covers nothing");
        assert!(e.covers(E, 8, 8));
        assert!(!e.covers(E, 7, 8));
    }

    #[test]
    fn the_time_a_seq_was_applied_comes_from_the_earliest_covering_ack() {
        let mut n = node(12, 1, 1);
        n.acks = vec![
            Ack {
                epoch: E,
                applied: 12,
                at_ms: 300,
            },
            Ack {
                epoch: E,
                applied: 10,
                at_ms: 200,
            },
            Ack {
                epoch: E,
                applied: 5,
                at_ms: 100,
            },
        ];
        assert_eq!(n.applied_at(&epochs(), 11), Some(300));
        assert_eq!(n.applied_at(&epochs(), 10), Some(200));
        assert_eq!(n.applied_at(&epochs(), 6), Some(200));
        assert_eq!(n.applied_at(&epochs(), 5), Some(100));
        assert_eq!(n.applied_at(&epochs(), 13), None, "not applied");
        // A full history whose oldest entry covers the seq does not know when.
        n.acks = (0..ACK_HISTORY as u64)
            .map(|i| Ack {
                epoch: E,
                applied: 1000 - i,
                at_ms: 1000 - i as i64,
            })
            .collect();
        assert_eq!(n.applied_at(&epochs(), 3), None);
        assert_eq!(n.applied_at(&epochs(), 1000), Some(1000));
    }

    #[test]
    fn a_revocation_is_confirmed_when_no_node_is_pending() {
        let now = 50_000;
        let mut a = node(10, now, now);
        a.acks = vec![Ack {
            epoch: E,
            applied: 10,
            at_ms: now - 4,
        }];
        let mut late = node(10, now, now);
        late.id = "late".into();
        late.started_at_ms = now - 1;
        late.acks = vec![Ack {
            epoch: E,
            applied: 10,
            at_ms: now - 1,
        }];
        let stale = node(3, now - 60_000, now);
        let gone = node(3, now - 60_000, now - 60_000);
        let pending = node(9, now, now);
        let mut registry = Registry {
            time_ms: now,
            nodes: vec![a, late, stale, gone],
        };
        let proof = Proof::of(&registry, &epochs(), rev(10, now - 10));
        assert!(proof.is_confirmed());
        assert!(proof.waiting_for().is_empty());
        assert_eq!(
            proof.reached_last_ms(),
            Some(6),
            "the late starter is not counted"
        );
        let states: Vec<_> = proof.nodes.iter().map(|(_, c)| c.as_str()).collect();
        assert_eq!(states, ["applied", "applied", "failing_closed", "gone"]);
        registry.nodes.push(pending);
        let proof = Proof::of(&registry, &epochs(), rev(10, now - 10));
        assert!(!proof.is_confirmed());
        assert_eq!(proof.waiting_for().len(), 1);
        assert_eq!(proof.reached_last_ms(), None);
    }

    #[test]
    fn node_states() {
        let now = 10_000;
        let e = epochs();
        assert_eq!(node(5, now, now).state(&e, 5, now), NodeState::Current);
        assert_eq!(node(4, now, now).state(&e, 5, now), NodeState::Behind);
        assert_eq!(node(5, 0, now).state(&e, 5, now), NodeState::FailingClosed);
        assert_eq!(node(5, now, 0).state(&e, 5, now), NodeState::Gone);
        let mut other = node(5, now, now);
        other.epoch = 0xe0;
        assert_eq!(other.lag(&e, 5), None);
        assert_eq!(other.state(&e, 5, now), NodeState::Behind);
    }
}
