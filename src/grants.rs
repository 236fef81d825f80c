//! Just-in-time elevation: a grant lets one client hold one extra scope for a bounded
//! time, once enough distinct approvers said yes (issue 11).
//!
//! A [`Grant`] is a record with a version. Its stored state is one of `requested`,
//! `approved`, `denied`, `revoked`; what it *is* at an instant ([`Status`]) also depends
//! on the clock: a request nobody decided is `expired` past its expiry, an approved grant
//! is `approved` (scheduled) before its start, `active` from its start and `ended` at its
//! end. Ending by time needs no write: the end is in the record and bounds the token's
//! `exp`.
//!
//! Every transition here is a pure function of (record, actor, policy, now) that returns
//! the next version or a [`Refused`] with a stable code. The node writes the result with a
//! compare-and-set on the version (`Store::append_grant`), so of concurrent decisions on
//! one grant exactly one is recorded.

use serde::{Deserialize, Serialize};

use crate::contracts::Elevation;

/// Longest justification or ticket accepted, in bytes.
pub const MAX_TEXT: usize = 1024;
/// How far in the past a requested start may lie (clock skew between the requester and
/// latch), in ms.
pub const START_TOLERANCE_MS: i64 = 60_000;
/// Most requests one client may have waiting for a decision at once (as a node sees
/// them): a client cannot flood the approvers or the store.
pub const MAX_PENDING_PER_CLIENT: usize = 20;
/// Longest grant id accepted in a path, in bytes.
pub const MAX_GRANT_ID: usize = 64;

/// A stored grant state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Requested,
    Approved,
    Denied,
    Revoked,
}

/// What a grant is at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting for approvals.
    Requested,
    /// Nobody decided before the request's expiry.
    Expired,
    Denied,
    /// Approved, its start not reached yet.
    Approved,
    Active,
    /// Its end came.
    Ended,
    /// Revoked before its end (or before a decision).
    Revoked,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Requested => "requested",
            Status::Expired => "expired",
            Status::Denied => "denied",
            Status::Approved => "approved",
            Status::Active => "active",
            Status::Ended => "ended",
            Status::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        [
            Status::Requested,
            Status::Expired,
            Status::Denied,
            Status::Approved,
            Status::Active,
            Status::Ended,
            Status::Revoked,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }
}

/// One person's decision: who, when, why, under which request id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub by: String,
    pub at_ms: i64,
    pub reason: String,
    pub request_id: String,
}

/// One grant, as stored and as carried by the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub id: String,
    /// Starts at 1; every transition adds one (compare-and-set).
    pub version: u64,
    /// The grantee: the client whose tokens may carry the scope.
    pub client_id: String,
    /// For a user of the client's sessions: that subject (as tokens name it); absent, the
    /// client itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub scope: String,
    pub state: State,
    /// Who asked (the grantee itself, with its own credentials).
    pub requested_by: String,
    pub requested_at_ms: i64,
    /// Past this instant an undecided request is `expired`.
    pub request_expires_at_ms: i64,
    pub duration_secs: u64,
    /// A requested start (absent: at approval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at_ms: Option<i64>,
    pub justification: String,
    pub ticket: String,
    pub request_id: String,
    /// Distinct approvals needed, from the policy when requested.
    pub approvals_required: u32,
    pub approvals: Vec<Decision>,
    /// Set when approved: the grant is active in `[starts_at_ms, ends_at_ms)`.
    #[serde(default)]
    pub starts_at_ms: i64,
    #[serde(default)]
    pub ends_at_ms: i64,
    /// The denial or revocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed: Option<Decision>,
    /// The scope is marked sensitive in the policy.
    #[serde(default)]
    pub sensitive: bool,
}

/// Why a transition is refused: a stable code, what to do, and the class of answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    pub kind: RefusedKind,
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedKind {
    /// The request is malformed or outside the policy (400).
    Invalid,
    /// The actor may not do this (403).
    Forbidden,
    /// The grant is not in a state that allows it (409).
    Conflict,
}

fn refused(kind: RefusedKind, code: &'static str, message: impl Into<String>) -> Refused {
    Refused {
        kind,
        code,
        message: message.into(),
    }
}

/// What a client asks for.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub scope: String,
    /// A user of the requesting client's sessions (absent: the client itself).
    pub subject: Option<String>,
    pub duration_secs: u64,
    pub start_at_ms: Option<i64>,
    pub justification: String,
    pub ticket: String,
}

impl Grant {
    /// What the grant is at `now_ms`.
    pub fn status(&self, now_ms: i64) -> Status {
        match self.state {
            State::Requested if now_ms >= self.request_expires_at_ms => Status::Expired,
            State::Requested => Status::Requested,
            State::Denied => Status::Denied,
            State::Revoked => Status::Revoked,
            State::Approved if now_ms < self.starts_at_ms => Status::Approved,
            State::Approved if now_ms < self.ends_at_ms => Status::Active,
            State::Approved => Status::Ended,
        }
    }

    /// Whose tokens it elevates: the subject, or the client itself.
    pub fn grantee(&self) -> &str {
        self.subject.as_deref().unwrap_or(&self.client_id)
    }

    /// Whether tokens of `client_id` for `sub` may carry `scope` by this grant at `now_ms`.
    pub fn covers(&self, client_id: &str, sub: &str, scope: &str, now_ms: i64) -> bool {
        self.client_id == client_id
            && self.grantee() == sub
            && self.scope == scope
            && self.status(now_ms) == Status::Active
    }
}

/// A new request by `client_id` under `policy` (the client's elevation of the scope in
/// force; `None`: the scope cannot be elevated for this client).
pub fn request(
    id: String,
    client_id: &str,
    req: Request,
    policy: Option<&Elevation>,
    now_ms: i64,
    request_id: &str,
) -> Result<Grant, Refused> {
    use RefusedKind::*;
    let Some(policy) = policy else {
        return Err(refused(
            Forbidden,
            "elevation_not_in_contract",
            format!(
                "scope {:?} cannot be elevated to for this client: its contract names no such elevation",
                req.scope.chars().take(128).collect::<String>()
            ),
        ));
    };
    if let Some(subject) = &req.subject {
        if subject.is_empty() || subject.len() > 256 {
            return Err(refused(
                Invalid,
                "invalid_subject",
                "subject must be 1-256 bytes, as the client's session tokens name it",
            ));
        }
        if !policy.allows_subject(subject) {
            return Err(refused(
                Forbidden,
                "subject_not_allowed",
                "this elevation is not open to that subject of the client's sessions",
            ));
        }
    }
    if req.duration_secs == 0 {
        return Err(refused(
            Invalid,
            "invalid_duration",
            "duration must be at least 1 second",
        ));
    }
    if req.duration_secs > policy.max_duration_secs {
        return Err(refused(
            Invalid,
            "duration_above_ceiling",
            format!(
                "duration {}s is above this elevation's ceiling of {}s",
                req.duration_secs, policy.max_duration_secs
            ),
        ));
    }
    if req.justification.len() > MAX_TEXT || req.ticket.len() > MAX_TEXT {
        return Err(refused(
            Invalid,
            "text_too_long",
            format!("justification and ticket are at most {MAX_TEXT} bytes"),
        ));
    }
    if policy.justification_required && req.justification.trim().is_empty() {
        return Err(refused(
            Invalid,
            "justification_required",
            "this elevation requires a justification: say why you need it",
        ));
    }
    if policy.ticket_required && req.ticket.trim().is_empty() {
        return Err(refused(
            Invalid,
            "ticket_required",
            "this elevation requires a ticket reference",
        ));
    }
    let expires = now_ms.saturating_add(policy.request_ttl_secs.saturating_mul(1000) as i64);
    if let Some(start) = req.start_at_ms {
        if start < now_ms - START_TOLERANCE_MS {
            return Err(refused(
                Invalid,
                "start_in_past",
                "start_at lies in the past; omit it to start at approval",
            ));
        }
        if start > expires {
            return Err(refused(
                Invalid,
                "start_after_request_expiry",
                format!(
                    "start_at is after this request would expire ({}s from now); ask later or sooner",
                    policy.request_ttl_secs
                ),
            ));
        }
    }
    Ok(Grant {
        id,
        version: 1,
        client_id: client_id.to_string(),
        subject: req.subject,
        scope: req.scope,
        state: State::Requested,
        requested_by: client_id.to_string(),
        requested_at_ms: now_ms,
        request_expires_at_ms: expires,
        duration_secs: req.duration_secs,
        start_at_ms: req.start_at_ms,
        justification: req.justification,
        ticket: req.ticket,
        request_id: request_id.to_string(),
        approvals_required: policy.approvals,
        approvals: Vec::new(),
        starts_at_ms: 0,
        ends_at_ms: 0,
        closed: None,
        sensitive: policy.sensitive,
    })
}

/// Refuses a decision on a grant that is not waiting for one.
fn must_be_pending(g: &Grant, now_ms: i64) -> Result<(), Refused> {
    use RefusedKind::Conflict;
    match g.status(now_ms) {
        Status::Requested => Ok(()),
        Status::Expired => Err(refused(
            Conflict,
            "request_expired",
            "this request expired before enough approvals; ask again",
        )),
        Status::Denied => Err(refused(
            Conflict,
            "request_denied",
            "this request was denied",
        )),
        Status::Revoked => Err(refused(Conflict, "grant_revoked", "this grant was revoked")),
        Status::Approved | Status::Active | Status::Ended => Err(refused(
            Conflict,
            "already_approved",
            "this request has all the approvals it needs already",
        )),
    }
}

/// Whether `actor` may decide on `g` under `policy` with `approvers` (expanded ids).
fn may_decide(
    g: &Grant,
    actor: &str,
    policy: &Elevation,
    approvers: &[String],
) -> Result<(), Refused> {
    use RefusedKind::Forbidden;
    let requester = actor == g.requested_by || actor == g.client_id || actor == g.grantee();
    if requester && !policy.requester_may_approve {
        return Err(refused(
            Forbidden,
            "self_approval",
            "the requester may not decide on its own request; another approver must",
        ));
    }
    if !approvers.iter().any(|a| a == actor) {
        return Err(refused(
            Forbidden,
            "approver_not_allowed",
            "you are not an approver for this scope's elevation",
        ));
    }
    Ok(())
}

/// `actor` approves; the grant is approved once it has `approvals_required` distinct
/// approvals (or the policy's, if that is higher now). Its duration counts from then, or
/// from the requested start if that is later.
pub fn approve(
    g: &Grant,
    actor: &str,
    policy: &Elevation,
    approvers: &[String],
    d: Decision,
) -> Result<Grant, Refused> {
    let now_ms = d.at_ms;
    must_be_pending(g, now_ms)?;
    may_decide(g, actor, policy, approvers)?;
    if g.approvals.iter().any(|a| a.by == actor) {
        return Err(refused(
            RefusedKind::Conflict,
            "already_approved_by_you",
            "you approved this request already; another approver must",
        ));
    }
    if g.duration_secs > policy.max_duration_secs {
        return Err(refused(
            RefusedKind::Conflict,
            "duration_above_ceiling",
            format!(
                "the ceiling is now {}s, below this request's {}s; ask again",
                policy.max_duration_secs, g.duration_secs
            ),
        ));
    }
    let mut next = g.clone();
    next.version += 1;
    next.approvals.push(d);
    let required = g.approvals_required.max(policy.approvals);
    if next.approvals.len() as u64 >= u64::from(required) {
        next.state = State::Approved;
        next.starts_at_ms = g.start_at_ms.unwrap_or(now_ms).max(now_ms);
        next.ends_at_ms = next
            .starts_at_ms
            .saturating_add(g.duration_secs.saturating_mul(1000) as i64);
    }
    Ok(next)
}

/// `actor`, an approver of the scope, denies a pending request.
pub fn deny(
    g: &Grant,
    actor: &str,
    policy: &Elevation,
    approvers: &[String],
    d: Decision,
) -> Result<Grant, Refused> {
    must_be_pending(g, d.at_ms)?;
    may_decide(g, actor, policy, approvers)?;
    let mut next = g.clone();
    next.version += 1;
    next.state = State::Denied;
    next.closed = Some(d);
    Ok(next)
}

/// Revokes a grant that is pending, scheduled or active: it stops at once on every node
/// that applied the change.
pub fn revoke(g: &Grant, d: Decision) -> Result<Grant, Refused> {
    use RefusedKind::Conflict;
    match g.status(d.at_ms) {
        Status::Requested | Status::Approved | Status::Active => {}
        Status::Revoked => return Err(refused(Conflict, "grant_revoked", "already revoked")),
        s => {
            return Err(refused(
                Conflict,
                "grant_not_live",
                format!("this grant is {}; there is nothing to revoke", s.as_str()),
            ))
        }
    }
    let mut next = g.clone();
    next.version += 1;
    next.state = State::Revoked;
    next.closed = Some(d);
    Ok(next)
}

/// Whether `id` looks like a grant id: `g-` and URL-safe characters, bounded.
pub fn valid_id(id: &str) -> bool {
    id.len() <= MAX_GRANT_ID
        && id.starts_with("g-")
        && id.len() > 2
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests;
