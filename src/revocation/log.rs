//! The revocation log's vocabulary: what can be revoked, a revocation as recorded, and
//! the epochs a stamp belongs to. Stores persist these; nothing here does IO.

use serde::{Deserialize, Serialize};

/// What can be revoked (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevocationKind {
    Token,
    Session,
    Subject,
    Client,
    All,
    /// Not a revocation by itself: a change to the authorization contracts (its value is
    /// a `contracts::Change` as JSON). It travels in the same ordered log, so every node
    /// applies it in order and proves it has it exactly as it proves it has every
    /// revocation; a narrowing it brings makes exceeding tokens inactive. Admins cannot
    /// record it through `/admin/revoke`.
    Contract,
    /// Not a revocation by itself: a grant transition (its value is a `grants::Grant` as
    /// JSON, the new version). Every node applies it in order to its grant table, so a
    /// revoked grant is inactive everywhere within the propagation bound, and a node that
    /// cannot prove it has the log fails closed. Not recordable through `/admin/revoke`.
    Grant,
}

impl RevocationKind {
    pub const ALL: [RevocationKind; 7] = [
        RevocationKind::Token,
        RevocationKind::Session,
        RevocationKind::Subject,
        RevocationKind::Client,
        RevocationKind::All,
        RevocationKind::Contract,
        RevocationKind::Grant,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RevocationKind::Token => "token",
            RevocationKind::Session => "session",
            RevocationKind::Subject => "subject",
            RevocationKind::Client => "client",
            RevocationKind::All => "all",
            RevocationKind::Contract => "contract",
            RevocationKind::Grant => "grant",
        }
    }

    pub fn parse(s: &str) -> Option<RevocationKind> {
        RevocationKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A revocation to be recorded.
#[derive(Debug, Clone)]
pub struct NewRevocation {
    pub kind: RevocationKind,
    /// Empty for [`RevocationKind::All`].
    pub value: String,
    pub reason: String,
    pub actor: String,
    pub request_id: String,
}

/// A revocation as recorded: the unit of the durable log and of the feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationEvent {
    /// Cluster-wide, gapless, assigned by the store.
    pub seq: u64,
    pub kind: RevocationKind,
    pub value: String,
    /// Store time at which it became durable, Unix milliseconds.
    pub revoked_at_ms: i64,
}

/// An epoch that ended: the store restarted, failed over, lost data or was recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClosedEpoch {
    pub id: u64,
    pub closed_at: u64,
}

/// A fresh epoch id: 64 random bits, never 0 (0 marks "no epoch" in stamps).
pub fn new_epoch_id() -> u64 {
    use ring::rand::{SecureRandom, SystemRandom};
    loop {
        let mut bytes = [0u8; 8];
        // SystemRandom fails only if the OS has no randomness, where nothing is safe anyway.
        SystemRandom::new()
            .fill(&mut bytes)
            .expect("operating system randomness");
        let id = u64::from_be_bytes(bytes);
        if id != 0 {
            return id;
        }
    }
}

/// `closed` as stored in Redis and printed in logs: `id:closed_at,...`, ids in hex.
pub fn format_closed(closed: &[ClosedEpoch]) -> String {
    closed
        .iter()
        .map(|c| format!("{:016x}:{}", c.id, c.closed_at))
        .collect::<Vec<_>>()
        .join(",")
}

/// The inverse of [`format_closed`]; malformed items are an error (fail closed).
pub fn parse_closed(text: &str) -> Result<Vec<ClosedEpoch>, String> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (id, at) = item.split_once(':').unwrap_or((item, ""));
            match (u64::from_str_radix(id, 16), at.parse()) {
                (Ok(id), Ok(closed_at)) => Ok(ClosedEpoch { id, closed_at }),
                _ => Err(format!("corrupt epoch list item {item:?}")),
            }
        })
        .collect()
}

/// The audit target of a revocation: `subject:alice`, `token:<jti>`, `all`.
pub fn revocation_target(kind: RevocationKind, value: &str) -> String {
    match kind {
        RevocationKind::All => "all".to_string(),
        RevocationKind::Contract => "contracts".to_string(),
        RevocationKind::Grant => "grants".to_string(),
        k => format!("{}:{}", k.as_str(), value),
    }
}
