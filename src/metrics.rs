//! Every metric name and label of latch (SPEC §10), and the Prometheus recorder.
//!
//! Labels are bounded: endpoints, statuses, reasons, grants and kinds come from fixed sets.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const REQUESTS_TOTAL: &str = "latch_requests_total";
pub const REQUEST_DURATION: &str = "latch_request_duration_seconds";
pub const INTROSPECTIONS_TOTAL: &str = "latch_introspections_total";
pub const TOKENS_ISSUED_TOTAL: &str = "latch_tokens_issued_total";
pub const REVOCATIONS_TOTAL: &str = "latch_revocations_total";
pub const PROPAGATION: &str = "latch_revocation_propagation_seconds";
pub const TABLE_ENTRIES: &str = "latch_revocation_table_entries";
pub const STATE_AGE: &str = "latch_revocation_state_age_seconds";
pub const SIGNING_KEYS: &str = "latch_signing_keys";
/// How long the `next` signing key has been past its due time without signing (0 normally).
pub const KEY_ROTATION_OVERDUE: &str = "latch_signing_key_rotation_overdue_seconds";
pub const STORE_UP: &str = "latch_store_up";
pub const CONNECTIONS_REFUSED: &str = "latch_connections_refused_total";
/// TLS certificate reloads by result (ok, error) and trigger (signal, watch).
pub const TLS_RELOADS: &str = "latch_tls_reloads_total";
/// 1 while the newest certificate/key files were refused (the previous pair serves).
pub const TLS_FILES_REJECTED: &str = "latch_tls_files_rejected";
/// TLS handshakes that failed, by reason (error, timeout).
pub const TLS_HANDSHAKE_FAILURES: &str = "latch_tls_handshake_failures_total";
/// Seconds until the notAfter of the listener certificate in use (negative once expired).
pub const TLS_CERT_EXPIRY: &str = "latch_tls_certificate_expiry_seconds";
pub const KEY_RECORDS_REJECTED: &str = "latch_key_records_rejected_total";
pub const REFRESH_RECORDS_REJECTED: &str = "latch_refresh_records_rejected_total";
pub const STORE_EPOCH_CHANGES: &str = "latch_store_epoch_changes_total";
pub const REVOCATIONS_RESTORED: &str = "latch_revocations_restored_total";
pub const STORE_FEED_UP: &str = "latch_store_feed_up";
pub const REPLICA_ACK_FAILURES: &str = "latch_store_replica_ack_failures_total";
/// Requests or connections cut off at a deadline, by `phase` (body, handler, write).
pub const DEADLINES_TOTAL: &str = "latch_request_deadline_exceeded_total";
/// Registry reports (heartbeats, acknowledgements, freshness proofs) that failed.
pub const NODE_REPORTS_FAILED: &str = "latch_node_reports_failed_total";
/// Requests refused 429, by `endpoint` and `limit` (`limits::Limit::label`).
pub const RATE_LIMITED_TOTAL: &str = "latch_rate_limited_total";
/// Token-endpoint decisions under the contracts, by `reason` (`granted` or a refusal code).
pub const CONTRACT_DECISIONS: &str = "latch_contract_decisions_total";
/// Requests refused for a scope or audience in `shadow` ("would have been granted"), by `client`.
pub const CONTRACT_SHADOW_HITS: &str = "latch_contract_shadow_hits_total";
/// Token and introspection answers carrying a deprecated scope or audience, by `name`.
pub const CONTRACT_DEPRECATED_USE: &str = "latch_contract_deprecated_use_total";
/// The contract version in force per client on this node (gauge, label `client`).
pub const CONTRACT_VERSION: &str = "latch_contract_version";
/// Scopes and audiences per client in a ramp stage (gauge, labels `client`, `stage`).
pub const CONTRACT_RAMP: &str = "latch_contract_ramp_items";
/// Contract changes applied by this node, by `kind` (`scheduled`: took effect at a
/// planned time; `immediate`; `rollback`; `cancel`).
pub const CONTRACT_CHANGES: &str = "latch_contract_changes_total";
/// Introspection answers by `format` (`json`, `jwt`: RFC 9701, `batch`) and `detail`
/// (`full`, `minimal`: `Prefer: return=minimal`); a batch counts once.
pub const INTROSPECTION_ANSWERS_TOTAL: &str = "latch_introspection_answers_total";
/// SETs delivered (pushed and answered 2xx, or acknowledged by a poll), by `method`.
pub const SSF_SETS_DELIVERED: &str = "latch_ssf_sets_delivered_total";
/// Failed pushes, by `reason` (connect, timeout, refused); each is retried.
pub const SSF_PUSH_FAILURES: &str = "latch_ssf_push_failures_total";
/// One accepted push, connect to answer.
pub const SSF_PUSH_DURATION: &str = "latch_ssf_push_duration_seconds";
/// Revocation recorded to its SET accepted by the receiver (push).
pub const SSF_DELIVERY_LAG: &str = "latch_ssf_delivery_lag_seconds";
/// Status lists this node opened (Token Status List).
pub const STATUS_LISTS_OPENED: &str = "latch_status_lists_opened_total";
/// Status List Tokens this node rendered (not counting re-served renderings).
pub const STATUS_LISTS_RENDERED: &str = "latch_status_lists_rendered_total";
pub const STATUS_RECORDS_REJECTED: &str = "latch_status_records_rejected_total";
/// Group commits of status-list records (store writes), by `result` (`ok`, `failed`).
pub const STATUS_COMMITS: &str = "latch_status_commits_total";
/// Status-list records written; divided by `latch_status_commits_total`, the mean batch.
pub const STATUS_RECORDS_WRITTEN: &str = "latch_status_records_written_total";

const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once and returns the handle that renders it.
/// Grant requests waiting for approvals, as this node's grant table holds them (gauge).
pub const GRANTS_PENDING: &str = "latch_grants_pending";
/// Active grants by scope and sensitivity (gauge; `scope` is from the contracts'
/// elevations, a bounded set).
pub const GRANTS_ACTIVE: &str = "latch_grants_active";
/// Grant decisions recorded on this node by `decision` (`request`, `approve`,
/// `approved` (the approval that completed it), `deny`, `revoke`) and `sensitive`.
pub const GRANT_DECISIONS: &str = "latch_grant_decisions_total";
/// Grants revoked before their end (counted by the node that recorded it).
pub const GRANTS_REVOKED_EARLY: &str = "latch_grants_revoked_early_total";
/// Tokens issued carrying an elevated scope, by `sensitive`.
pub const GRANT_TOKENS_ISSUED: &str = "latch_grant_tokens_issued_total";

pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .expect("static bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first (a host embedding latch);
            // rendering then shows nothing, which is visible, not wrong.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(REQUESTS_TOTAL, "HTTP requests by endpoint and status");
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "HTTP request latency by endpoint"
    );
    describe_counter!(INTROSPECTIONS_TOTAL, "Introspections by result and reason");
    describe_gauge!(GRANTS_PENDING, "Grant requests waiting for approvals");
    describe_gauge!(GRANTS_ACTIVE, "Active grants by scope and sensitivity");
    describe_counter!(
        GRANT_DECISIONS,
        "Grant requests and decisions recorded on this node by decision"
    );
    describe_counter!(
        GRANTS_REVOKED_EARLY,
        "Grants revoked before their end on this node"
    );
    describe_counter!(
        GRANT_TOKENS_ISSUED,
        "Access tokens issued carrying an elevated scope"
    );
    describe_counter!(TOKENS_ISSUED_TOTAL, "Access tokens issued by grant");
    describe_counter!(STATUS_LISTS_OPENED, "Status lists this node opened");
    describe_counter!(STATUS_LISTS_RENDERED, "Status List Tokens rendered");
    describe_counter!(
        STATUS_RECORDS_REJECTED,
        "Stored status-list records not used (their index reads INVALID), by reason (once per index per process)"
    );
    describe_counter!(
        STATUS_COMMITS,
        "Group commits of status-list records by result"
    );
    describe_counter!(STATUS_RECORDS_WRITTEN, "Status-list records written");
    describe_counter!(
        REVOCATIONS_TOTAL,
        "Revocations accepted on this node by kind"
    );
    describe_histogram!(
        PROPAGATION,
        Unit::Seconds,
        "Revocation acknowledged by the store to applied on this node, on the store's clock"
    );
    describe_gauge!(TABLE_ENTRIES, "Entries in the session-version table");
    describe_gauge!(
        STATE_AGE,
        Unit::Seconds,
        "Age of this node's confirmed view of the revocation log"
    );
    describe_gauge!(SIGNING_KEYS, "Signing keys by state");
    describe_gauge!(
        KEY_ROTATION_OVERDUE,
        Unit::Seconds,
        "How long the next signing key has been past its due time without signing"
    );
    describe_gauge!(STORE_UP, "1 when the last store round trip succeeded");
    describe_counter!(
        KEY_RECORDS_REJECTED,
        "Stored key records not used, by reason (once per record and reason per process)"
    );
    describe_counter!(
        REFRESH_RECORDS_REJECTED,
        "Stored refresh-token records whose MAC failed"
    );
    describe_counter!(
        STORE_EPOCH_CHANGES,
        "Store epoch changes seen by this node (store restarted, failed over, lost data or recovered)"
    );
    describe_counter!(
        REVOCATIONS_RESTORED,
        "Revocations this node held and wrote back after the store lost them"
    );
    describe_counter!(
        REPLICA_ACK_FAILURES,
        "Writes answered 503 because fewer than store.min_replicas_ack replicas confirmed them"
    );
    describe_gauge!(
        STORE_FEED_UP,
        "1 while the store's announcement subscription is live"
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections closed at the connection cap, by reason (cap, per_ip)"
    );
    describe_counter!(
        TLS_RELOADS,
        "TLS certificate reloads by result (ok, error) and trigger (signal, watch)"
    );
    describe_gauge!(
        TLS_FILES_REJECTED,
        "1 while the newest tls.cert_file/tls.key_file were refused and the previous pair serves"
    );
    describe_gauge!(
        TLS_CERT_EXPIRY,
        "Seconds until the notAfter of the TLS certificate in use (set at load and reload, kept current every tls.watch_interval)"
    );
    describe_counter!(
        TLS_HANDSHAKE_FAILURES,
        "TLS handshakes on the main listener that failed, by reason (error, timeout)"
    );
    describe_counter!(
        DEADLINES_TOTAL,
        "Requests cut off at a deadline, by phase (body, handler, write)"
    );
    describe_counter!(
        NODE_REPORTS_FAILED,
        "Node registry reports that failed; while they fail the node cannot prove freshness"
    );
    describe_counter!(
        RATE_LIMITED_TOTAL,
        "Requests refused by a rate limit, by endpoint and limit"
    );
    describe_counter!(
        INTROSPECTION_ANSWERS_TOTAL,
        "Introspection answers by format (json, jwt, batch) and detail (full, minimal)"
    );
    describe_counter!(
        SSF_SETS_DELIVERED,
        "Security Event Tokens delivered, by method (push, poll)"
    );
    describe_counter!(
        SSF_PUSH_FAILURES,
        "Failed SET pushes by reason (connect, timeout, refused); every one is retried"
    );
    describe_histogram!(
        SSF_PUSH_DURATION,
        Unit::Seconds,
        "One accepted SET push, connection included"
    );
    describe_histogram!(
        SSF_DELIVERY_LAG,
        Unit::Seconds,
        "Revocation recorded to its SET accepted by a push receiver"
    );
}
