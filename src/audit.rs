//! Audit records: appended to the store by whoever changes state, and logged as one JSON
//! line each (target `latch::audit`) so log shippers get them without polling.

use crate::store::AuditRecord;

/// Logs one audit record as a single JSON line.
pub fn log(record: &AuditRecord) {
    match serde_json::to_string(record) {
        Ok(line) => tracing::info!(target: "latch::audit", "{line}"),
        Err(error) => tracing::warn!(%error, "audit record not serializable"),
    }
}
