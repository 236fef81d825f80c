//! The embedded store: SQLite (WAL, `synchronous = FULL`) in the data directory.
//!
//! One process owns a data directory at a time (an advisory lock on `latch.lock`). All
//! statements run on the blocking pool under one mutex, which also orders announcements:
//! a revocation is committed, then announced, before the next one gets its seq.
//!
//! Every open closes the open epoch at the database's seq and opens a new one: a data
//! directory replaced by an older copy thereby closes the copy's epoch at the copy's seq,
//! and every stamp issued after the copy was taken is invalid for good.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::broadcast;

use super::{
    decode_refresh as decode, encode_refresh as encode, BoxFuture, ContractWrite, GrantWrite, Head,
    ListRecords, Store, StoreError, StoreEvent,
};
use crate::audit::{AuditRecord, NewAudit};
use crate::keys::{KeySet, StoredKey};
use crate::nodes::{NodeRecord, NodeReport, Registry};
use crate::revocation::{
    revocation_target, ClosedEpoch, NewRevocation, RevocationEvent, RevocationKind,
};
use crate::sessions::{key_hash, RefreshRecord, Rotation};
use crate::ssf::StoredStream;
use crate::status::{ListId, ListMeta};
use crate::time::now_ms;

const SCHEMA_VERSION: i64 = 3;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS revocations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    revoked_at_ms INTEGER NOT NULL,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    reason TEXT NOT NULL,
    request_id TEXT NOT NULL
);
-- Audit retention (store.audit_retention) deletes by time: by index, not by a table scan.
CREATE INDEX IF NOT EXISTS audit_time ON audit (time_ms);
CREATE TABLE IF NOT EXISTS keys (
    kid TEXT PRIMARY KEY,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    hash TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    used INTEGER NOT NULL DEFAULT 0,
    expires_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS seen (
    key TEXT PRIMARY KEY,
    until_ms INTEGER NOT NULL
);
-- Every session opening prunes expired replay records: by index, not by a table scan.
CREATE INDEX IF NOT EXISTS seen_until ON seen (until_ms);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS contracts (
    doc TEXT NOT NULL,
    version INTEGER NOT NULL,
    amendment TEXT NOT NULL,
    cancelled INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (doc, version)
);
-- Just-in-time elevation grants (opaque JSON, compare-and-set on version), written in
-- the transaction of their log entry. Older latch versions ignore the table.
CREATE TABLE IF NOT EXISTS grants (
    id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    record TEXT NOT NULL
);
-- Shared Signals event streams (opaque JSON, compare-and-set on version) and leases.
-- Older latch versions ignore both tables, so the schema version stays.
CREATE TABLE IF NOT EXISTS ssf_streams (
    id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until_ms INTEGER NOT NULL
);
-- Token Status Lists: one row per list, one per issued index (older versions ignore them).
CREATE TABLE IF NOT EXISTS status_lists (
    id TEXT PRIMARY KEY,
    meta TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS status_records (
    list TEXT NOT NULL,
    idx INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (list, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS epochs (
    id TEXT PRIMARY KEY,
    opened_ms INTEGER NOT NULL,
    start_seq INTEGER NOT NULL,
    closed_at INTEGER
);
";

/// SQLite-backed [`Store`]. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The one connection; every statement runs under this lock on the blocking pool.
    conn: Mutex<Connection>,
    /// Announcements, sent while `conn` is held so they leave in commit order.
    events: broadcast::Sender<StoreEvent>,
    /// The open epoch; changed only under `conn`.
    epoch: AtomicU64,
    /// The node registry: soft state, kept in memory (only this process can hold the
    /// directory, so it has one live node).
    nodes: Mutex<HashMap<String, NodeRecord>>,
    /// Held for the life of the store: the advisory lock on the data directory.
    _lock: File,
}

// === impl EmbeddedStore ===

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Open(format!("create {}: {e}", dir.display())))?;
        let lock_path = dir.join("latch.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::Open(format!("open {}: {e}", lock_path.display())))?;
        lock.try_lock().map_err(|_| {
            StoreError::Open(format!(
                "{} is in use by another latch process",
                dir.display()
            ))
        })?;
        let mut conn = Connection::open(db_path(dir))
            .map_err(|e| StoreError::Open(format!("open database: {e}")))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
        )
        .map_err(|e| StoreError::Open(format!("configure database: {e}")))?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| StoreError::Open(e.to_string()))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Open(format!(
                "database schema {version} is newer than this latch ({SCHEMA_VERSION})"
            )));
        }
        conn.execute_batch(SCHEMA)
            .and_then(|_| conn.pragma_update(None, "user_version", SCHEMA_VERSION))
            .map_err(|e| StoreError::Open(format!("create schema: {e}")))?;
        // Every open is a new epoch: this process cannot know whether the directory is
        // the one it last wrote (it may be an older copy).
        let epoch = open_epoch(&mut conn, None)
            .map_err(|e| StoreError::Open(format!("open epoch: {e}")))?;
        tracing::info!(epoch = %format!("{epoch:016x}"), "store epoch opened");
        let (events, _) = broadcast::channel(4096);
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                events,
                epoch: AtomicU64::new(epoch),
                nodes: Mutex::new(HashMap::new()),
                _lock: lock,
            }),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    fn with_conn<T, F>(&self, f: F) -> BoxFuture<'_, Result<T, StoreError>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &broadcast::Sender<StoreEvent>) -> Result<T, StoreError>
            + Send
            + 'static,
    {
        let inner = self.inner.clone();
        // The caller's span (a request's id) goes along: audit records logged in `f` carry it.
        let span = tracing::Span::current();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let _in_span = span.enter();
                let mut conn = inner.conn.lock().unwrap_or_else(|p| p.into_inner());
                f(&mut conn, &inner.events)
            })
            .await
            .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
        })
    }
}

fn db_path(dir: &Path) -> PathBuf {
    dir.join("latch.db")
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn insert_audit(tx: &Connection, a: &NewAudit, time_ms: i64) -> rusqlite::Result<u64> {
    tx.execute(
        "INSERT INTO audit (time_ms, actor, action, target, reason, request_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![time_ms, a.actor, a.action, a.target, a.reason, a.request_id],
    )?;
    Ok(tx.last_insert_rowid() as u64)
}

/// Marks every refresh token of session `sid` spent.
fn mark_session_spent(tx: &Connection, sid: &str) -> rusqlite::Result<usize> {
    tx.execute(
        "UPDATE refresh_tokens SET used = 1 WHERE used = 0 AND json_extract(record, '$.sid') = ?1",
        params![sid],
    )
}

fn revocation_seq(conn: &Connection) -> rusqlite::Result<u64> {
    let seq: i64 = conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM revocations", [], |r| {
        r.get(0)
    })?;
    Ok(seq as u64)
}

/// Closes the open epoch at the current seq and opens a new one, with `audit` if given,
/// in one transaction. Returns the new epoch's id.
fn open_epoch(conn: &mut Connection, audit: Option<&NewAudit>) -> Result<u64, StoreError> {
    let now = now_ms();
    let id = crate::revocation::new_epoch_id();
    let tx = conn.transaction().map_err(unavailable)?;
    let seq = revocation_seq(&tx).map_err(unavailable)? as i64;
    tx.execute(
        "UPDATE epochs SET closed_at = ?1 WHERE closed_at IS NULL",
        params![seq],
    )
    .map_err(unavailable)?;
    tx.execute(
        "INSERT INTO epochs (id, opened_ms, start_seq, closed_at) VALUES (?1, ?2, ?3, NULL)",
        params![format!("{id:016x}"), now, seq],
    )
    .map_err(unavailable)?;
    let record = match audit {
        Some(a) => Some(a.recorded(insert_audit(&tx, a, now).map_err(unavailable)?, now)),
        None => None,
    };
    tx.commit().map_err(unavailable)?;
    if let Some(r) = &record {
        crate::audit::log(r);
    }
    Ok(id)
}

/// The closed epochs, oldest first.
fn closed_epochs(conn: &Connection) -> Result<Vec<ClosedEpoch>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, closed_at FROM epochs WHERE closed_at IS NOT NULL ORDER BY opened_ms",
        )
        .map_err(unavailable)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .map_err(unavailable)?;
    let mut out = Vec::new();
    for row in rows {
        let (id, closed_at) = row.map_err(unavailable)?;
        let id = u64::from_str_radix(&id, 16)
            .map_err(|_| StoreError::Unavailable(format!("corrupt epoch id {id:?}")))?;
        out.push(ClosedEpoch {
            id,
            closed_at: closed_at as u64,
        });
    }
    Ok(out)
}

fn head_of(conn: &Connection, epoch: u64) -> Result<Head, StoreError> {
    Ok(Head {
        revocation_seq: revocation_seq(conn).map_err(unavailable)?,
        keys_version: keys_version(conn).map_err(unavailable)?,
        epoch,
        closed: closed_epochs(conn)?,
        time_ms: now_ms(),
    })
}

fn keys_version(conn: &Connection) -> rusqlite::Result<u64> {
    let v: Option<i64> = conn
        .query_row(
            "SELECT value FROM meta WHERE name = 'keys_version'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(v.unwrap_or(0) as u64)
}

impl EmbeddedStore {
    /// One log entry with its audit record, in one transaction, then announced; with
    /// `contract`, the contract change's compare-and-set and history write in the same
    /// transaction.
    fn append_logged(
        &self,
        rev: NewRevocation,
        contract: Option<ContractWrite>,
        grant: Option<GrantWrite>,
    ) -> BoxFuture<'_, Result<RevocationEvent, StoreError>> {
        let inner_epoch = self.inner.clone();
        let inner_epoch = move || inner_epoch.epoch.load(Ordering::Acquire);
        self.with_conn(move |conn, events| {
            let now = now_ms();
            let tx = conn.transaction().map_err(unavailable)?;
            let action = match (&contract, &grant) {
                (_, Some(g)) => g.action.as_str(),
                (None, None) => "revoke",
                (Some(w), _) if !w.audit_action.is_empty() => w.audit_action.as_str(),
                (Some(w), _) if w.cancel => "contract_cancel",
                (Some(_), _) => "contract_amend",
            };
            if let Some(g) = &grant {
                let changed = if g.restore {
                    tx.execute(
                        "INSERT INTO grants (id, version, record) VALUES (?1, ?2, ?3)
                         ON CONFLICT(id) DO UPDATE SET version = excluded.version,
                         record = excluded.record WHERE grants.version < excluded.version",
                        params![g.id, g.expected as i64, g.record],
                    )
                } else if g.expected == 0 {
                    tx.execute(
                        "INSERT OR IGNORE INTO grants (id, version, record) VALUES (?1, 1, ?2)",
                        params![g.id, g.record],
                    )
                } else {
                    tx.execute(
                        "UPDATE grants SET version = ?2 + 1, record = ?3
                         WHERE id = ?1 AND version = ?2",
                        params![g.id, g.expected as i64, g.record],
                    )
                }
                .map_err(unavailable)?;
                if changed != 1 {
                    return Err(StoreError::Conflict);
                }
            }
            if let Some(w) = &contract {
                if w.cancel {
                    let changed = tx
                        .execute(
                            "UPDATE contracts SET cancelled = 1
                             WHERE doc = ?1 AND version = ?2 AND cancelled = 0",
                            params![w.doc, w.version as i64],
                        )
                        .map_err(unavailable)?;
                    if changed != 1 {
                        return Err(StoreError::Conflict);
                    }
                } else {
                    let latest: i64 = tx
                        .query_row(
                            "SELECT COALESCE(MAX(version), 0) FROM contracts WHERE doc = ?1",
                            params![w.doc],
                            |r| r.get(0),
                        )
                        .map_err(unavailable)?;
                    if latest as u64 + 1 != w.version {
                        return Err(StoreError::Conflict);
                    }
                    tx.execute(
                        "INSERT INTO contracts (doc, version, amendment) VALUES (?1, ?2, ?3)",
                        params![w.doc, w.version as i64, w.amendment],
                    )
                    .map_err(unavailable)?;
                }
            }
            tx.execute(
                "INSERT INTO revocations (kind, value, revoked_at_ms, reason, actor)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![rev.kind.as_str(), rev.value, now, rev.reason, rev.actor],
            )
            .map_err(unavailable)?;
            let seq = tx.last_insert_rowid() as u64;
            let audit = NewAudit {
                actor: rev.actor.clone(),
                action: action.into(),
                target: match (&contract, &grant) {
                    (_, Some(g)) => format!("grant:{}", g.id),
                    (Some(w), _) if !w.audit_target.is_empty() => w.audit_target.clone(),
                    _ => revocation_target(rev.kind, &rev.value),
                },
                reason: rev.reason.clone(),
                request_id: rev.request_id.clone(),
            };
            let audit_seq = insert_audit(&tx, &audit, now).map_err(unavailable)?;
            tx.commit().map_err(unavailable)?;
            crate::audit::log(&audit.recorded(audit_seq, now));
            let event = RevocationEvent {
                seq,
                kind: rev.kind,
                value: rev.value,
                revoked_at_ms: now,
            };
            let _ = events.send(StoreEvent::Revocation {
                epoch: inner_epoch(),
                event: event.clone(),
            });
            Ok(event)
        })
    }
}

impl Store for EmbeddedStore {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn append_revocation(
        &self,
        rev: NewRevocation,
    ) -> BoxFuture<'_, Result<RevocationEvent, StoreError>> {
        self.append_logged(rev, None, None)
    }

    fn append_contract(
        &self,
        write: ContractWrite,
        audit: NewAudit,
    ) -> BoxFuture<'_, Result<RevocationEvent, StoreError>> {
        let (rev, write) = write.with_audit(audit);
        self.append_logged(rev, Some(write), None)
    }

    fn append_grant(
        &self,
        write: GrantWrite,
        audit: NewAudit,
    ) -> BoxFuture<'_, Result<RevocationEvent, StoreError>> {
        let rev = write.log_entry(audit);
        self.append_logged(rev, None, Some(write))
    }

    fn grant(&self, id: String) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        self.with_conn(move |conn, _| {
            conn.query_row(
                "SELECT record FROM grants WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()
            .map_err(unavailable)
        })
    }

    fn grant_entries(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        self.with_conn(move |conn, _| {
            let mut stmt = conn
                .prepare_cached("SELECT record FROM grants")
                .map_err(unavailable)?;
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(unavailable)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
        })
    }

    fn contract_entries(&self) -> BoxFuture<'_, Result<Vec<(String, bool)>, StoreError>> {
        self.with_conn(move |conn, _| {
            let mut stmt = conn
                .prepare_cached("SELECT amendment, cancelled FROM contracts")
                .map_err(unavailable)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? != 0))
                })
                .map_err(unavailable)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
        })
    }

    fn revocations_after(
        &self,
        after: u64,
        since_ms: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<RevocationEvent>, StoreError>> {
        self.with_conn(move |conn, _| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, kind, value, revoked_at_ms FROM revocations
                     WHERE seq > ?1 AND revoked_at_ms >= ?2 ORDER BY seq LIMIT ?3",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![after as i64, since_ms, limit as i64], |r| {
                    // Borrowed from the row: no allocation per entry for the kind.
                    let kind = match r.get_ref(1)? {
                        rusqlite::types::ValueRef::Text(t) => std::str::from_utf8(t).ok(),
                        _ => None,
                    };
                    Ok(RevocationEvent {
                        seq: r.get::<_, i64>(0)? as u64,
                        // Rows are only ever written from a parsed kind; anything else
                        // revokes everything (fail closed), as before.
                        kind: kind
                            .and_then(RevocationKind::parse)
                            .unwrap_or(RevocationKind::All),
                        value: r.get(2)?,
                        revoked_at_ms: r.get(3)?,
                    })
                })
                .map_err(unavailable)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
        })
    }

    fn head(&self) -> BoxFuture<'_, Result<Head, StoreError>> {
        let inner = self.inner.clone();
        self.with_conn(move |conn, _| head_of(conn, inner.epoch.load(Ordering::Acquire)))
    }

    fn bump_epoch(&self, audit: NewAudit) -> BoxFuture<'_, Result<Head, StoreError>> {
        let inner = self.inner.clone();
        self.with_conn(move |conn, _| {
            let epoch = open_epoch(conn, Some(&audit))?;
            inner.epoch.store(epoch, Ordering::Release);
            head_of(conn, epoch)
        })
    }

    fn prune_revocations(
        &self,
        before_ms: i64,
        token_before_ms: i64,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.with_conn(move |conn, _| {
            // The newest row stays: it carries the head seq.
            let n = conn
                .execute(
                    "DELETE FROM revocations
                     WHERE (revoked_at_ms < ?1 OR (kind = 'token' AND revoked_at_ms < ?2))
                     AND seq < (SELECT MAX(seq) FROM revocations)",
                    params![before_ms, token_before_ms],
                )
                .map_err(unavailable)?;
            Ok(n as u64)
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.inner.events.subscribe()
    }

    fn load_keys(&self) -> BoxFuture<'_, Result<KeySet, StoreError>> {
        self.with_conn(|conn, _| {
            let version = keys_version(conn).map_err(unavailable)?;
            let mut stmt = conn
                .prepare_cached("SELECT kid, record FROM keys")
                .map_err(unavailable)?;
            let entries = stmt
                .query_map([], |r| {
                    Ok(StoredKey {
                        name: r.get(0)?,
                        json: r.get(1)?,
                    })
                })
                .map_err(unavailable)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(unavailable)?;
            Ok(KeySet { version, entries })
        })
    }

    fn save_keys(
        &self,
        expected_version: u64,
        upserts: Vec<StoredKey>,
        audit: Vec<NewAudit>,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.with_conn(move |conn, events| {
            let now = now_ms();
            let tx = conn.transaction().map_err(unavailable)?;
            if keys_version(&tx).map_err(unavailable)? != expected_version {
                return Err(StoreError::Conflict);
            }
            for k in &upserts {
                tx.execute(
                    "INSERT INTO keys (kid, record) VALUES (?1, ?2)
                     ON CONFLICT(kid) DO UPDATE SET record = excluded.record",
                    params![k.name, k.json],
                )
                .map_err(unavailable)?;
            }
            let version = expected_version + 1;
            tx.execute(
                "INSERT INTO meta (name, value) VALUES ('keys_version', ?1)
                 ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                params![version as i64],
            )
            .map_err(unavailable)?;
            let mut records = Vec::with_capacity(audit.len());
            for a in &audit {
                let seq = insert_audit(&tx, a, now).map_err(unavailable)?;
                records.push(a.recorded(seq, now));
            }
            tx.commit().map_err(unavailable)?;
            records.iter().for_each(crate::audit::log);
            let _ = events.send(StoreEvent::KeysChanged { version });
            Ok(version)
        })
    }

    fn append_audit(&self, audit: NewAudit) -> BoxFuture<'_, Result<AuditRecord, StoreError>> {
        self.with_conn(move |conn, _| {
            let now = now_ms();
            let seq = insert_audit(conn, &audit, now).map_err(unavailable)?;
            let record = audit.recorded(seq, now);
            crate::audit::log(&record);
            Ok(record)
        })
    }

    fn claim_once(&self, key: String, until_ms: i64) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.with_conn(move |conn, _| {
            let now = now_ms();
            let tx = conn.transaction().map_err(unavailable)?;
            tx.execute("DELETE FROM seen WHERE until_ms < ?1", params![now])
                .map_err(unavailable)?;
            let inserted = tx
                .execute(
                    "INSERT OR IGNORE INTO seen (key, until_ms) VALUES (?1, ?2)",
                    params![key, until_ms],
                )
                .map_err(unavailable)?;
            tx.commit().map_err(unavailable)?;
            Ok(inserted == 1)
        })
    }

    fn release_claim(&self, key: String) -> BoxFuture<'_, Result<(), StoreError>> {
        self.with_conn(move |conn, _| {
            conn.execute("DELETE FROM seen WHERE key = ?1", params![key])
                .map_err(unavailable)?;
            Ok(())
        })
    }

    fn open_session(
        &self,
        key: String,
        record: RefreshRecord,
        audit: NewAudit,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        // Keyed by the hash alone, as before families: one file needs no spreading.
        let hash = key_hash(&key).to_string();
        self.with_conn(move |conn, _| {
            let now = now_ms();
            let json = encode(&record)?;
            let tx = conn.transaction().map_err(unavailable)?;
            tx.execute(
                "INSERT INTO refresh_tokens (hash, record, used, expires_ms) VALUES (?1, ?2, 0, ?3)",
                params![hash, json, record.expires_at_ms],
            )
            .map_err(unavailable)?;
            let seq = insert_audit(&tx, &audit, now).map_err(unavailable)?;
            tx.commit().map_err(unavailable)?;
            crate::audit::log(&audit.recorded(seq, now));
            Ok(())
        })
    }

    fn refresh_token(
        &self,
        key: String,
    ) -> BoxFuture<'_, Result<Option<(RefreshRecord, bool)>, StoreError>> {
        let hash = key_hash(&key).to_string();
        self.with_conn(move |conn, _| {
            let row: Option<(String, i64)> = conn
                .query_row(
                    "SELECT record, used FROM refresh_tokens WHERE hash = ?1",
                    params![hash],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(unavailable)?;
            row.map(|(json, used)| Ok((decode(&json)?, used != 0)))
                .transpose()
        })
    }

    fn rotate_refresh(
        &self,
        old_key: String,
        new_key: String,
        new: RefreshRecord,
    ) -> BoxFuture<'_, Result<Rotation, StoreError>> {
        let (old_hash, new_hash) = (
            key_hash(&old_key).to_string(),
            key_hash(&new_key).to_string(),
        );
        self.with_conn(move |conn, _| {
            let json = encode(&new)?;
            let tx = conn.transaction().map_err(unavailable)?;
            // The compare-and-set: only a live token is spent, by exactly one caller.
            let spent = tx
                .execute(
                    "UPDATE refresh_tokens SET used = 1 WHERE hash = ?1 AND used = 0",
                    params![old_hash],
                )
                .map_err(unavailable)?;
            if spent == 0 {
                let old: Option<String> = tx
                    .query_row(
                        "SELECT record FROM refresh_tokens WHERE hash = ?1",
                        params![old_hash],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(unavailable)?;
                let Some(json) = old else {
                    return Ok(Rotation::Unknown);
                };
                let old = decode(&json)?;
                // The reuse marks the session in the same transaction: every token of it
                // reads spent from now on (what the Redis store does per family).
                mark_session_spent(&tx, &old.sid).map_err(unavailable)?;
                tx.commit().map_err(unavailable)?;
                return Ok(Rotation::Reused(old));
            }
            tx.execute(
                "INSERT INTO refresh_tokens (hash, record, used, expires_ms) VALUES (?1, ?2, 0, ?3)",
                params![new_hash, json, new.expires_at_ms],
            )
            .map_err(unavailable)?;
            tx.execute(
                "DELETE FROM refresh_tokens WHERE expires_ms < ?1",
                params![now_ms()],
            )
            .map_err(unavailable)?;
            tx.commit().map_err(unavailable)?;
            Ok(Rotation::Rotated)
        })
    }

    fn mark_reused(&self, key: String) -> BoxFuture<'_, Result<(), StoreError>> {
        let hash = key_hash(&key).to_string();
        self.with_conn(move |conn, _| {
            let tx = conn.transaction().map_err(unavailable)?;
            let row: Option<(String, i64)> = tx
                .query_row(
                    "SELECT record, used FROM refresh_tokens WHERE hash = ?1",
                    params![hash],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(unavailable)?;
            if let Some((json, 1)) = row {
                mark_session_spent(&tx, &decode(&json)?.sid).map_err(unavailable)?;
                tx.commit().map_err(unavailable)?;
            }
            Ok(())
        })
    }

    fn prune_audit(&self, before_ms: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.with_conn(move |conn, _| {
            let n = conn
                .execute(
                    "DELETE FROM audit WHERE time_ms < ?1
                     AND seq < (SELECT COALESCE(MAX(seq), 0) FROM audit)",
                    params![before_ms],
                )
                .map_err(unavailable)?;
            Ok(n as u64)
        })
    }

    fn audit_after(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<AuditRecord>, StoreError>> {
        self.with_conn(move |conn, _| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, time_ms, actor, action, target, reason, request_id FROM audit
                     WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(
                    params![after.min(i64::MAX as u64) as i64, limit as i64],
                    |r| {
                        Ok(AuditRecord {
                            seq: r.get::<_, i64>(0)? as u64,
                            time: r.get::<_, i64>(1)?.div_euclid(1000),
                            actor: r.get(2)?,
                            action: r.get(3)?,
                            target: r.get(4)?,
                            reason: r.get(5)?,
                            request_id: r.get(6)?,
                        })
                    },
                )
                .map_err(unavailable)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
        })
    }

    fn report_node(&self, report: NodeReport) -> BoxFuture<'_, Result<i64, StoreError>> {
        Box::pin(async move {
            let now = now_ms();
            let mut nodes = self.inner.nodes.lock().unwrap_or_else(|p| p.into_inner());
            nodes.retain(|_, n| n.forget_at_ms() > now);
            let prev = nodes.remove(&report.id);
            let record = NodeRecord::updated(prev, report, now);
            nodes.insert(record.id.clone(), record);
            Ok(now)
        })
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Registry, StoreError>> {
        Box::pin(async move {
            let now = now_ms();
            let nodes = self.inner.nodes.lock().unwrap_or_else(|p| p.into_inner());
            let mut list: Vec<NodeRecord> = nodes
                .values()
                .filter(|n| n.forget_at_ms() > now)
                .cloned()
                .collect();
            list.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
            Ok(Registry {
                time_ms: now,
                nodes: list,
            })
        })
    }
    fn ssf_streams(&self) -> BoxFuture<'_, Result<Vec<StoredStream>, StoreError>> {
        self.with_conn(|conn, _| {
            let mut stmt = conn
                .prepare_cached("SELECT id, version, record FROM ssf_streams")
                .map_err(unavailable)?;
            let rows = stmt.query_map([], stored_stream).map_err(unavailable)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
        })
    }

    fn ssf_stream(&self, id: String) -> BoxFuture<'_, Result<Option<StoredStream>, StoreError>> {
        self.with_conn(move |conn, _| {
            conn.query_row(
                "SELECT id, version, record FROM ssf_streams WHERE id = ?1",
                params![id],
                stored_stream,
            )
            .optional()
            .map_err(unavailable)
        })
    }

    fn ssf_save_stream(
        &self,
        id: String,
        expected: u64,
        json: String,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.with_conn(move |conn, _| {
            let version = expected as i64 + 1;
            let changed = if expected == 0 {
                conn.execute(
                    "INSERT OR IGNORE INTO ssf_streams (id, version, record) VALUES (?1, 1, ?2)",
                    params![id, json],
                )
            } else {
                conn.execute(
                    "UPDATE ssf_streams SET version = ?2, record = ?3 WHERE id = ?1 AND version = ?4",
                    params![id, version, json, expected as i64],
                )
            }
            .map_err(unavailable)?;
            match changed {
                1 => Ok(version as u64),
                _ => Err(StoreError::Conflict),
            }
        })
    }

    fn ssf_delete_stream(&self, id: String) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.with_conn(move |conn, _| {
            let n = conn
                .execute("DELETE FROM ssf_streams WHERE id = ?1", params![id])
                .map_err(unavailable)?;
            Ok(n == 1)
        })
    }

    fn ssf_lease(&self, holder: String, ttl_ms: i64) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.with_conn(move |conn, _| {
            let now = now_ms();
            let n = conn
                .execute(
                    "INSERT INTO leases (name, holder, until_ms) VALUES ('ssf_push', ?1, ?2)
                     ON CONFLICT(name) DO UPDATE SET holder = excluded.holder,
                       until_ms = excluded.until_ms
                     WHERE leases.holder = excluded.holder OR leases.until_ms <= ?3",
                    params![holder, now + ttl_ms, now],
                )
                .map_err(unavailable)?;
            Ok(n == 1)
        })
    }

    fn status_open_list(&self, meta: ListMeta) -> BoxFuture<'_, Result<(), StoreError>> {
        self.open_list(meta)
    }

    fn status_append(
        &self,
        list: ListId,
        records: Vec<(u64, String)>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.append_status(list, records)
    }

    fn status_records(
        &self,
        list: ListId,
        from: u64,
    ) -> BoxFuture<'_, Result<Option<ListRecords>, StoreError>> {
        self.list_records(list, from)
    }

    fn status_lists(&self, now_ms: i64) -> BoxFuture<'_, Result<Vec<ListMeta>, StoreError>> {
        self.live_lists(now_ms)
    }

    fn status_prune(&self, now_ms: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.prune_lists(now_ms)
    }
}

// === status lists ===

impl EmbeddedStore {
    fn open_list(&self, meta: ListMeta) -> BoxFuture<'_, Result<(), StoreError>> {
        self.with_conn(move |conn, _| {
            let json =
                serde_json::to_string(&meta).map_err(|e| StoreError::Unavailable(e.to_string()))?;
            conn.execute(
                "INSERT INTO status_lists (id, meta, expires_ms) VALUES (?1, ?2, ?3)",
                params![meta.id.to_string(), json, meta.expires_ms],
            )
            .map_err(unavailable)?;
            Ok(())
        })
    }

    fn append_status(
        &self,
        list: ListId,
        records: Vec<(u64, String)>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.with_conn(move |conn, _| {
            let id = list.to_string();
            let tx = conn.transaction().map_err(unavailable)?;
            let known: Option<i64> = tx
                .query_row("SELECT 1 FROM status_lists WHERE id = ?1", params![id], |r| r.get(0))
                .optional()
                .map_err(unavailable)?;
            if known.is_none() {
                return Err(StoreError::Conflict);
            }
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO status_records (list, idx, record) VALUES (?1, ?2, ?3)",
                    )
                    .map_err(unavailable)?;
                for (idx, rec) in &records {
                    stmt.execute(params![id, *idx as i64, rec]).map_err(unavailable)?;
                }
            }
            tx.commit().map_err(unavailable)
        })
    }

    fn list_records(
        &self,
        list: ListId,
        from: u64,
    ) -> BoxFuture<'_, Result<Option<ListRecords>, StoreError>> {
        self.with_conn(move |conn, _| {
            let id = list.to_string();
            let meta: Option<String> = conn
                .query_row(
                    "SELECT meta FROM status_lists WHERE id = ?1",
                    params![id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            let Some(meta) = meta.and_then(|m| serde_json::from_str::<ListMeta>(&m).ok()) else {
                return Ok(None);
            };
            let mut stmt = conn
                .prepare_cached(
                    "SELECT idx, record FROM status_records WHERE list = ?1 AND idx >= ?2",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![id, from.min(i64::MAX as u64) as i64], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
                })
                .map_err(unavailable)?;
            let records = rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)?;
            Ok(Some(ListRecords { meta, records }))
        })
    }

    fn live_lists(&self, now: i64) -> BoxFuture<'_, Result<Vec<ListMeta>, StoreError>> {
        self.with_conn(move |conn, _| {
            let mut stmt = conn
                .prepare_cached("SELECT meta FROM status_lists WHERE expires_ms > ?1")
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![now], |r| r.get::<_, String>(0))
                .map_err(unavailable)?;
            let metas = rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)?;
            Ok(metas
                .iter()
                .filter_map(|m| serde_json::from_str(m).ok())
                .collect())
        })
    }

    fn prune_lists(&self, now: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.with_conn(move |conn, _| {
            let tx = conn.transaction().map_err(unavailable)?;
            tx.execute(
                "DELETE FROM status_records WHERE list IN
                   (SELECT id FROM status_lists WHERE expires_ms <= ?1)",
                params![now],
            )
            .map_err(unavailable)?;
            let n = tx
                .execute(
                    "DELETE FROM status_lists WHERE expires_ms <= ?1",
                    params![now],
                )
                .map_err(unavailable)?;
            tx.commit().map_err(unavailable)?;
            Ok(n as u64)
        })
    }
}

fn stored_stream(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredStream> {
    Ok(StoredStream {
        id: r.get(0)?,
        version: r.get::<_, i64>(1)? as u64,
        json: r.get(2)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(kind: RevocationKind, value: &str) -> NewRevocation {
        NewRevocation {
            kind,
            value: value.into(),
            reason: "test".into(),
            actor: "admin".into(),
            request_id: "r1".into(),
        }
    }

    #[tokio::test]
    async fn revocations_get_gapless_seqs_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            let mut feed = store.subscribe();
            let a = store
                .append_revocation(rev(RevocationKind::Subject, "alice"))
                .await
                .unwrap();
            let b = store
                .append_revocation(rev(RevocationKind::All, ""))
                .await
                .unwrap();
            assert_eq!((a.seq, b.seq), (1, 2));
            match feed.recv().await.unwrap() {
                StoreEvent::Revocation { event, .. } => assert_eq!(event, a),
                other => panic!("unexpected {other:?}"),
            }
            let audit = store.audit_after(0, 10).await.unwrap();
            let targets: Vec<_> = audit.iter().map(|r| r.target.as_str()).collect();
            assert_eq!(targets, ["subject:alice", "all"]);
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.head().await.unwrap().revocation_seq, 2);
        let all = store.revocations_after(0, 0, 100).await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].value, "alice");
        let later = store.revocations_after(1, 0, 100).await.unwrap();
        assert_eq!(later.iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
    }

    #[tokio::test]
    async fn every_open_closes_the_epoch_at_the_databases_seq() {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            store
                .append_revocation(rev(RevocationKind::Subject, "a"))
                .await
                .unwrap();
            store.head().await.unwrap()
        };
        assert!(first.closed.is_empty());
        // An older copy of the directory, taken now.
        let copy = tempfile::tempdir().unwrap();
        std::fs::copy(db_path(dir.path()), db_path(copy.path())).unwrap();
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            store
                .append_revocation(rev(RevocationKind::Subject, "b"))
                .await
                .unwrap();
        }
        // The copy comes back: its epoch closes at its own seq (1), so stamps issued
        // after the copy was taken (seq 2) are invalid; seqs continue from 1.
        let store = EmbeddedStore::open(copy.path()).unwrap();
        let head = store.head().await.unwrap();
        assert_ne!(head.epoch, first.epoch);
        assert_eq!(
            head.closed,
            [ClosedEpoch {
                id: first.epoch,
                closed_at: 1
            }]
        );
        let bumped = store.bump_epoch(NewAudit::default()).await.unwrap();
        assert_ne!(bumped.epoch, head.epoch);
        assert_eq!(bumped.closed.len(), 2);
        assert_eq!(bumped.closed[1].closed_at, 1);
    }

    #[tokio::test]
    async fn pruning_keeps_the_head_and_the_retained_window() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        for v in ["a", "b", "c"] {
            store
                .append_revocation(rev(RevocationKind::Subject, v))
                .await
                .unwrap();
        }
        // Everything is older than "the future": all but the newest go.
        let future = now_ms() + 60_000;
        assert_eq!(store.prune_revocations(future, future).await.unwrap(), 2);
        assert_eq!(store.head().await.unwrap().revocation_seq, 3);
        let left = store.revocations_after(0, 0, 10).await.unwrap();
        assert_eq!(left.iter().map(|e| e.seq).collect::<Vec<_>>(), [3]);
        // Nothing is older than the epoch.
        assert_eq!(store.prune_revocations(0, 0).await.unwrap(), 0);
        let next = store
            .append_revocation(rev(RevocationKind::All, ""))
            .await
            .unwrap();
        assert_eq!(next.seq, 4, "seqs never repeat after pruning");
    }

    #[tokio::test]
    async fn token_entries_are_pruned_past_their_own_retention() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        for (kind, v) in [
            (RevocationKind::Token, "j1"),
            (RevocationKind::Session, "s1"),
            (RevocationKind::Token, "j2"),
            (RevocationKind::Subject, "alice"),
        ] {
            store.append_revocation(rev(kind, v)).await.unwrap();
        }
        // Token entries are past their cut-off, the others are not.
        let pruned = store.prune_revocations(0, now_ms() + 60_000).await.unwrap();
        assert_eq!(pruned, 2);
        let left = store.revocations_after(0, 0, 10).await.unwrap();
        let values: Vec<_> = left.iter().map(|e| e.value.as_str()).collect();
        assert_eq!(values, ["s1", "alice"]);
    }

    #[tokio::test]
    async fn a_second_process_cannot_open_the_same_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _first = EmbeddedStore::open(dir.path()).unwrap();
        assert!(matches!(
            EmbeddedStore::open(dir.path()),
            Err(StoreError::Open(_))
        ));
    }

    fn session(sid: &str) -> RefreshRecord {
        RefreshRecord {
            sid: sid.into(),
            sub: "alice".into(),
            client_id: "idp".into(),
            scope: "profile".into(),
            aud: "https://api".into(),
            username: None,
            rsq: 3,
            rse: 1,
            issued_at_ms: now_ms(),
            expires_at_ms: now_ms() + 60_000,
            jkt: None,
            x5t_s256: None,
            mac: None,
        }
    }

    #[tokio::test]
    async fn refresh_rotation_is_compare_and_set() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store
            .open_session("h0".into(), session("s1"), NewAudit::default())
            .await
            .unwrap();
        // Many concurrent spends of one token: exactly one wins.
        let attempts = (1..=8).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .rotate_refresh("h0".into(), format!("h{i}"), session("s1"))
                    .await
                    .unwrap()
            })
        });
        let mut rotated = 0;
        for a in attempts {
            match a.await.unwrap() {
                Rotation::Rotated => rotated += 1,
                Rotation::Reused(r) => assert_eq!(r.sid, "s1"),
                Rotation::Unknown => panic!("the token exists"),
            }
        }
        assert_eq!(rotated, 1);
        let (_, spent) = store.refresh_token("h0".into()).await.unwrap().unwrap();
        assert!(spent);
        assert_eq!(
            store
                .rotate_refresh("nope".into(), "x".into(), session("s1"))
                .await
                .unwrap(),
            Rotation::Unknown
        );
    }

    #[tokio::test]
    async fn claim_once_refuses_replays_until_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let until = now_ms() + 60_000;
        assert!(store.claim_once("a".into(), until).await.unwrap());
        assert!(!store.claim_once("a".into(), until).await.unwrap());
        assert!(store.claim_once("b".into(), until).await.unwrap());
        // An expired claim is forgotten.
        assert!(store.claim_once("c".into(), now_ms() - 1).await.unwrap());
        assert!(store.claim_once("c".into(), until).await.unwrap());
    }

    #[tokio::test]
    async fn replay_pruning_uses_the_expiry_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let conn = store.inner.conn.lock().unwrap();
        let plan: String = conn
            .query_row(
                "EXPLAIN QUERY PLAN DELETE FROM seen WHERE until_ms < 5",
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("seen_until"), "plan: {plan}");
    }

    #[tokio::test]
    async fn save_keys_is_compare_and_set() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let v1 = store.save_keys(0, vec![], vec![]).await.unwrap();
        assert_eq!(v1, 1);
        assert!(matches!(
            store.save_keys(0, vec![], vec![]).await,
            Err(StoreError::Conflict)
        ));
        assert_eq!(store.load_keys().await.unwrap().version, 1);
    }
}
