//! Audit records: appended to the store by whoever changes state, and logged as one JSON
//! line each (target `latch::audit`) so log shippers get them without polling.

use serde::{Deserialize, Serialize};

/// An audit record to append (the store assigns `seq` and `time`).
#[derive(Debug, Clone, Default)]
pub struct NewAudit {
    pub actor: String,
    pub action: String,
    pub target: String,
    pub reason: String,
    pub request_id: String,
}

impl NewAudit {
    /// The record as stored under `seq` at `time_ms`.
    pub fn recorded(&self, seq: u64, time_ms: i64) -> AuditRecord {
        AuditRecord {
            seq,
            time: time_ms.div_euclid(1000),
            actor: self.actor.clone(),
            action: self.action.clone(),
            target: self.target.clone(),
            reason: self.reason.clone(),
            request_id: self.request_id.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    /// Unix seconds.
    pub time: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub reason: String,
    pub request_id: String,
}

/// Logs one audit record as a single JSON line.
pub fn log(record: &AuditRecord) {
    match serde_json::to_string(record) {
        Ok(line) => tracing::info!(target: "latch::audit", "{line}"),
        Err(error) => tracing::warn!(%error, "audit record not serializable"),
    }
}
