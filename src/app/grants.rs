//! Just-in-time elevation on the node: the grant table every node keeps (fed by the
//! follower from the ordered log), and the use cases that request, approve, deny and
//! revoke grants. The rules are in `crate::grants` (pure); the policy is the client's
//! contract in force (`Contract::elevations`, approver groups in the registry).
//!
//! Every transition is read from the store, decided, and written back with a
//! compare-and-set on the grant's version together with its log entry and audit record
//! (`Store::append_grant`): of concurrent decisions exactly one is recorded, the others
//! answer 409. The table is only a cache of the log: a grant is honoured on a node only
//! while the node is fresh (`App::fresh`), and only between its start and its end by
//! that node's clock.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

use super::error::Error;
use super::App;
use crate::audit::NewAudit;
use crate::contracts::{client_doc, Elevation};
use crate::grants::{self, Decision, Grant, Status};
use crate::metrics as m;
use crate::revocation::{Point, RevocationEvent};
use crate::store::{GrantWrite, SharedStore, StoreError};
use crate::time::now_ms;

/// Every grant this node knows, by id: the latest version it applied.
#[derive(Default)]
pub struct Grants {
    by_id: DashMap<String, Arc<Grant>>,
}

impl Grants {
    pub fn new(records: impl IntoIterator<Item = Grant>) -> Grants {
        let g = Grants::default();
        for r in records {
            g.upsert(r);
        }
        g
    }

    /// Keeps the higher version (the log may replay an older one after the records).
    fn upsert(&self, g: Grant) {
        self.by_id
            .entry(g.id.clone())
            .and_modify(|cur| {
                if cur.version < g.version {
                    *cur = Arc::new(g.clone());
                }
            })
            .or_insert_with(|| Arc::new(g));
    }

    /// Applies a `grant` log entry. An entry that does not parse as a grant but names
    /// one drops that grant from the table: fail closed, it is never honoured again here.
    pub fn apply_event(&self, e: &RevocationEvent) {
        match serde_json::from_str::<Grant>(&e.value) {
            Ok(g) => self.upsert(g),
            Err(error) => {
                tracing::error!(seq = e.seq, %error, "unreadable grant log entry");
                let id = serde_json::from_str::<serde_json::Value>(&e.value)
                    .ok()
                    .and_then(|v| v["id"].as_str().map(str::to_string));
                if let Some(id) = id {
                    self.by_id.remove(&id);
                }
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<Grant>> {
        self.by_id.get(id).map(|g| g.clone())
    }

    pub fn all(&self) -> Vec<Arc<Grant>> {
        self.by_id.iter().map(|g| g.clone()).collect()
    }
}

/// Every stored grant; unreadable records are skipped with an error log (a grant that
/// cannot be read is never honoured).
pub async fn load(store: &SharedStore) -> Result<Vec<Grant>, StoreError> {
    let mut out = Vec::new();
    for json in store.grant_entries().await? {
        match serde_json::from_str::<Grant>(&json) {
            Ok(g) => out.push(g),
            Err(error) => tracing::error!(%error, "unreadable grant record skipped"),
        }
    }
    Ok(out)
}

/// The elevation of `scope` for `client_id` in the contract in force at `now_ms`, with
/// its approvers' ids (groups expanded).
pub fn policy(
    app: &App,
    client_id: &str,
    scope: &str,
    now_ms: i64,
) -> Option<(Elevation, Vec<String>)> {
    let book = app.contracts.book();
    let a = book.in_force(&client_doc(client_id), now_ms)?;
    let e = a.contract()?.elevations.get(scope)?.clone();
    let approvers = e.approver_ids(book.registry(now_ms));
    Some((e, approvers))
}

/// `client_id` asks for `req`. The grant is recorded as `requested` and waits for
/// approvals.
pub async fn request(
    app: &App,
    client_id: &str,
    req: grants::Request,
    request_id: &str,
) -> Result<Grant, Error> {
    let now = now_ms();
    app.fresh(now)?;
    if !crate::contracts::valid_scope_name(&req.scope) {
        return Err(Error::InvalidRequest(
            "scope must be one scope token (1-128 printable ASCII characters, no spaces)".into(),
        ));
    }
    let pending = app
        .grants
        .all()
        .iter()
        .filter(|g| g.client_id == client_id && g.status(now) == Status::Requested)
        .count();
    if pending >= grants::MAX_PENDING_PER_CLIENT {
        return Err(grants::Refused {
            kind: grants::RefusedKind::Conflict,
            code: "too_many_pending",
            message: format!(
                "this client has {pending} requests waiting for a decision already (at most {}); wait for them to be decided or to expire, or ask an admin to revoke them",
                grants::MAX_PENDING_PER_CLIENT
            ),
        }
        .into());
    }
    let found = policy(app, client_id, &req.scope, now);
    let id = format!("g-{}", &crate::tokens::random_id()[..16]);
    let reason = req.justification.clone();
    let g = grants::request(
        id,
        client_id,
        req,
        found.as_ref().map(|p| &p.0),
        now,
        request_id,
    )?;
    write(app, &g, 0, "grant_request", client_id, &reason, request_id).await?;
    count(&g, "request");
    Ok(g)
}

/// What an admin does to a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Approve,
    Deny,
    Revoke,
}

impl Action {
    fn audit(self) -> &'static str {
        match self {
            Action::Approve => "grant_approve",
            Action::Deny => "grant_deny",
            Action::Revoke => "grant_revoke",
        }
    }
}

/// `actor` (an admin client: one person) approves, denies or revokes grant `id`. The
/// decision is taken on the store's current record and written with a compare-and-set:
/// a concurrent decision that got there first makes this one 409. With `seen`, the
/// decision is on that version only (what the person read): any change since is a 409.
pub async fn decide(
    app: &App,
    actor: &str,
    id: &str,
    action: Action,
    reason: &str,
    seen: Option<u64>,
    request_id: &str,
) -> Result<Grant, Error> {
    let now = now_ms();
    app.fresh(now)?;
    if reason.len() > grants::MAX_TEXT {
        return Err(Error::InvalidRequest(format!(
            "reason is at most {} bytes",
            grants::MAX_TEXT
        )));
    }
    if reason.trim().is_empty() {
        return Err(Error::InvalidRequest(
            "give a reason: it is recorded in the audit log".into(),
        ));
    }
    let g = stored(app, id).await?;
    if let Some(seen) = seen {
        if seen != g.version {
            return Err(Error::Conflict(format!(
                "grant {id} is at version {}, not {seen}: it changed since you read it; read it again",
                g.version
            )));
        }
    }
    let d = Decision {
        by: actor.to_string(),
        at_ms: now,
        reason: reason.to_string(),
        request_id: request_id.to_string(),
    };
    let next = match action {
        Action::Revoke => grants::revoke(&g, d)?,
        Action::Approve | Action::Deny => {
            let Some((policy, approvers)) = policy(app, &g.client_id, &g.scope, now) else {
                return Err(grants::Refused {
                    kind: grants::RefusedKind::Conflict,
                    code: "elevation_not_in_contract",
                    message: "the client's contract in force no longer names this elevation".into(),
                }
                .into());
            };
            if action == Action::Approve {
                grants::approve(&g, actor, &policy, &approvers, d)?
            } else {
                grants::deny(&g, actor, &policy, &approvers, d)?
            }
        }
    };
    // The approval that completes a grant says in the audit when it is active, so the
    // audit alone tells who asked, who approved, and when it started and ends.
    let audited = if next.state == grants::State::Approved && g.state == grants::State::Requested {
        format!(
            "{reason} [active {} to {}]",
            rfc3339(next.starts_at_ms),
            rfc3339(next.ends_at_ms)
        )
    } else {
        reason.to_string()
    };
    write(
        app,
        &next,
        g.version,
        action.audit(),
        actor,
        &audited,
        request_id,
    )
    .await?;
    match action {
        Action::Approve => {
            count(&next, "approve");
            if next.state == grants::State::Approved {
                count(&next, "approved");
            }
        }
        Action::Deny => count(&next, "deny"),
        Action::Revoke => {
            count(&next, "revoke");
            if g.state == grants::State::Approved {
                metrics::counter!(m::GRANTS_REVOKED_EARLY).increment(1);
            }
        }
    }
    Ok(next)
}

/// Unix ms as RFC 3339 UTC, seconds.
fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn count(g: &Grant, decision: &'static str) {
    metrics::counter!(
        m::GRANT_DECISIONS,
        "decision" => decision,
        "sensitive" => if g.sensitive { "true" } else { "false" }
    )
    .increment(1);
}

/// The store's current record of grant `id`.
async fn stored(app: &App, id: &str) -> Result<Grant, Error> {
    if !grants::valid_id(id) {
        return Err(Error::NotFound(format!("no grant {id:?}")));
    }
    let Some(json) = app.store.grant(id.to_string()).await? else {
        return Err(Error::NotFound(format!("no grant {id:?}")));
    };
    serde_json::from_str(&json).map_err(|e| Error::Internal(format!("unreadable grant {id}: {e}")))
}

/// Records `g` (compare-and-set on `expected`), then waits (bounded) until this node
/// applied it, so the answer is in force here.
async fn write(
    app: &App,
    g: &Grant,
    expected: u64,
    action: &str,
    actor: &str,
    reason: &str,
    request_id: &str,
) -> Result<(), Error> {
    let record =
        serde_json::to_string(g).map_err(|e| Error::Internal(format!("grant record: {e}")))?;
    let write = GrantWrite {
        id: g.id.clone(),
        expected,
        record,
        action: action.to_string(),
        restore: false,
    };
    let audit = NewAudit {
        actor: actor.to_string(),
        action: action.to_string(),
        target: format!("grant:{}", g.id),
        reason: reason.to_string(),
        request_id: request_id.to_string(),
    };
    match app.store.append_grant(write, audit).await {
        Ok(event) => {
            // Applied here at once (idempotent with the follower), then the watermark.
            app.grants.apply_event(&event);
            let bound = Duration::from_millis(app.max_staleness_ms.clamp(1, 1000) as u64);
            app.table
                .wait_for(Point::new(app.table.epoch(), event.seq), bound)
                .await;
            Ok(())
        }
        Err(StoreError::Conflict) => Err(Error::Conflict(format!(
            "grant {} was changed concurrently by another decision; read it again",
            g.id
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Which grants to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub status: Option<Status>,
    pub client: Option<String>,
    pub scope: Option<String>,
    /// Grants for this user of a client's sessions.
    pub subject: Option<String>,
    /// Grants this client approved (or decided).
    pub approver: Option<String>,
}

impl Filter {
    fn admits(&self, g: &Grant, now_ms: i64) -> bool {
        self.status.is_none_or(|s| g.status(now_ms) == s)
            && self.client.as_ref().is_none_or(|c| &g.client_id == c)
            && self.scope.as_ref().is_none_or(|s| &g.scope == s)
            && self
                .subject
                .as_ref()
                .is_none_or(|s| g.subject.as_ref() == Some(s))
            && self.approver.as_ref().is_none_or(|a| {
                g.approvals.iter().any(|d| &d.by == a)
                    || g.closed.as_ref().is_some_and(|d| &d.by == a)
            })
    }
}

/// Grants matching `filter`, newest request first, as this (fresh) node knows them.
pub fn list(app: &App, filter: &Filter) -> Result<(i64, Vec<Arc<Grant>>), Error> {
    let view = app.fresh(now_ms())?;
    let now = view.now_ms();
    let mut out: Vec<Arc<Grant>> = app
        .grants
        .all()
        .into_iter()
        .filter(|g| filter.admits(g, now))
        .collect();
    out.sort_by(|a, b| {
        b.requested_at_ms
            .cmp(&a.requested_at_ms)
            .then(a.id.cmp(&b.id))
    });
    Ok((now, out))
}

/// One grant as this (fresh) node knows it; `owner`: only if it is that client's.
pub fn show(app: &App, id: &str, owner: Option<&str>) -> Result<(i64, Arc<Grant>), Error> {
    let view = app.fresh(now_ms())?;
    let found = app
        .grants
        .get(id)
        .filter(|g| owner.is_none_or(|o| g.client_id == o));
    match found {
        Some(g) => Ok((view.now_ms(), g)),
        None => Err(Error::NotFound(format!(
            "no grant {:?}",
            id.chars().take(64).collect::<String>()
        ))),
    }
}

/// Keeps `latch_grants_pending` and `latch_grants_active{scope,sensitive}` current,
/// twice a second, from this node's table (a grant starts and ends by the clock, with
/// no event to count).
pub async fn run_gauges(app: App, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut shown: HashSet<(String, bool)> = HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = now_ms();
        let mut pending = 0u64;
        let mut active: HashMap<(String, bool), u64> = HashMap::new();
        for g in app.grants.all() {
            match g.status(now) {
                Status::Requested => pending += 1,
                Status::Active => *active.entry((g.scope.clone(), g.sensitive)).or_default() += 1,
                _ => {}
            }
        }
        metrics::gauge!(m::GRANTS_PENDING).set(pending as f64);
        for key in &shown {
            if !active.contains_key(key) {
                set_active(key, 0);
            }
        }
        for (key, n) in &active {
            set_active(key, *n);
            shown.insert(key.clone());
        }
    }
}

fn set_active((scope, sensitive): &(String, bool), n: u64) {
    metrics::gauge!(
        m::GRANTS_ACTIVE,
        "scope" => scope.clone(),
        "sensitive" => if *sensitive { "true" } else { "false" }
    )
    .set(n as f64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revocation::RevocationKind;

    fn record(version: u64, state: grants::State) -> Grant {
        let policy = crate::contracts::Elevation {
            max_duration_secs: 600,
            approvers: vec!["alice".into()],
            approvals: 1,
            requester_may_approve: false,
            justification_required: false,
            ticket_required: false,
            request_ttl_secs: 600,
            subjects: Vec::new(),
            sensitive: false,
        };
        let req = grants::Request {
            scope: "db:admin".into(),
            duration_secs: 60,
            ..grants::Request::default()
        };
        let mut g = grants::request("g-1".into(), "svc", req, Some(&policy), 0, "r").unwrap();
        g.version = version;
        g.state = state;
        g
    }

    fn event(seq: u64, value: String) -> RevocationEvent {
        RevocationEvent {
            seq,
            kind: RevocationKind::Grant,
            value,
            revoked_at_ms: 0,
        }
    }

    #[test]
    fn the_table_keeps_the_highest_version_and_drops_a_grant_it_cannot_read() {
        let t = Grants::new([record(2, grants::State::Approved)]);
        // A replay of an older version (the log after the records) changes nothing.
        let v1 = serde_json::to_string(&record(1, grants::State::Requested)).unwrap();
        t.apply_event(&event(1, v1));
        assert_eq!(t.get("g-1").unwrap().version, 2);
        let v3 = serde_json::to_string(&record(3, grants::State::Revoked)).unwrap();
        t.apply_event(&event(3, v3));
        assert_eq!(t.get("g-1").unwrap().state, grants::State::Revoked);
        // An entry that names a grant but does not parse as one: the grant is never
        // honoured again here (fail closed).
        let t = Grants::new([record(2, grants::State::Approved)]);
        t.apply_event(&event(4, r#"{"id":"g-1","version":"x"}"#.into()));
        assert!(t.get("g-1").is_none());
        t.apply_event(&event(5, "not json".into()));
        assert!(t.all().is_empty());
    }
}
