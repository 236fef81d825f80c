//! Revocation orchestration: RFC 7009 for one token, the admin kinds (token, session,
//! subject, client, all), and the operator's store recovery. Every revocation goes
//! through [`App::revoke`]: durable in the store first, then applied here at once.

use std::time::Duration;

use super::error::Error;
use super::token::stored_refresh;
use super::App;
use crate::audit::NewAudit;
use crate::clients::{Client, Role};
use crate::revocation::{
    ClosedEpoch, NewRevocation, Point, RevocationEvent, RevocationKind, Verdict,
};
use crate::sessions;
use crate::store::StoreError;
use crate::time::now_ms;

/// Longest accepted revocation value or reason.
pub const MAX_FIELD: usize = 1024;

impl App {
    /// Records a revocation in the store (durable once this returns) and applies it to
    /// this node's table at once, then waits (bounded) for the follower to advance the
    /// watermark past it: a token this node issues after the answer is then stamped at or
    /// above the revocation, so a client revoked and re-admitted right away gets a live
    /// token here (found by tests/revocation.rs `revocation_races_with_issuance`). If the
    /// wait runs out, tokens issued meanwhile are stamped below it and die: fail closed.
    /// Every path that revokes goes through here.
    pub async fn revoke(&self, rev: NewRevocation) -> Result<RevocationEvent, StoreError> {
        let kind = rev.kind;
        let event = self.store.append_revocation(rev).await?;
        self.table.insert(&event);
        metrics::counter!(crate::metrics::REVOCATIONS_TOTAL, "kind" => kind.as_str()).increment(1);
        let bound = Duration::from_millis(self.max_staleness_ms.clamp(1, 250) as u64);
        self.table
            .wait_for(Point::new(self.table.epoch(), event.seq), bound)
            .await;
        Ok(event)
    }
}

/// RFC 7009: `caller` revokes a token it holds (an admin: any token). An access token
/// is revoked by its `jti`; a refresh token revokes its whole session. A token that is
/// unknown, expired, malformed or already revoked needs nothing recorded: `Ok`.
pub async fn revoke_token(
    app: &App,
    caller: &Client,
    token: &str,
    request_id: &str,
) -> Result<(), Error> {
    let view = app.fresh(now_ms())?;
    if sessions::is_refresh_token(token) {
        return revoke_refresh(app, caller, token, request_id).await;
    }
    let claims = match view.authentic(token) {
        Ok(c) => c,
        Err(reason) => {
            tracing::debug!(reason = reason.as_str(), "revocation of an inactive token");
            return Ok(());
        }
    };
    if claims.client_id != caller.id && !caller.has_role(Role::Admin) {
        return Err(Error::NotPermitted(
            "the token was not issued to this client",
        ));
    }
    // Nothing to record only if the token is already dead here. A token stamped ahead
    // of this node (issued by a node further along) is not: wait for the follower, and
    // if it is still ahead, record the revocation anyway (found by app::tests).
    app.await_stamp(claims.stamp().point()).await;
    let already = app
        .table
        .covers(RevocationKind::Token, &claims.jti, claims.rsq)
        || matches!(
            app.table.verdict(&claims.stamp()),
            Verdict::Revoked | Verdict::StaleEpoch
        );
    if already {
        return Ok(());
    }
    limit(app, caller, view.now_ms())?;
    app.revoke(NewRevocation {
        kind: RevocationKind::Token,
        value: claims.jti.clone(),
        reason: "RFC 7009 revocation".into(),
        actor: caller.id.to_string(),
        request_id: request_id.to_string(),
    })
    .await?;
    Ok(())
}

/// RFC 7009 for a refresh token: its whole session is revoked.
async fn revoke_refresh(
    app: &App,
    caller: &Client,
    token: &str,
    request_id: &str,
) -> Result<(), Error> {
    let Some((r, _)) = stored_refresh(app, token, request_id).await? else {
        return Ok(());
    };
    if r.client_id != caller.id && !caller.has_role(Role::Admin) {
        return Err(Error::NotPermitted(
            "the token was not issued to this client",
        ));
    }
    let now = now_ms();
    if r.expires_at_ms <= now || app.table.covers(RevocationKind::Session, &r.sid, r.rsq) {
        return Ok(());
    }
    limit(app, caller, now)?;
    app.revoke(NewRevocation {
        kind: RevocationKind::Session,
        value: r.sid.clone(),
        reason: "RFC 7009 revocation of a refresh token".into(),
        actor: caller.id.to_string(),
        request_id: request_id.to_string(),
    })
    .await?;
    Ok(())
}

/// Counts one revocation `caller` is about to record: only those that grow the log count
/// (answers for unknown, expired or already revoked tokens are free), and clients with
/// role `admin` are never limited, so a legitimate bulk revocation is never refused.
fn limit(app: &App, caller: &Client, now: i64) -> Result<(), Error> {
    if caller.has_role(Role::Admin) {
        return Ok(());
    }
    app.limits.revoke(&caller.id, caller.revoke_rate, now)?;
    Ok(())
}

/// What an admin asks to revoke, as sent.
#[derive(Debug, Clone, Default)]
pub struct AdminRevocation {
    pub kind: String,
    pub value: Option<String>,
    pub reason: Option<String>,
    /// For kind `subject`: `value` is this trusted issuer's own `sub`.
    pub issuer: Option<String>,
}

/// An admin revocation of any kind, by `actor`. The value is checked for its kind, a
/// subject is resolved to the form latch writes in tokens, and the node must be fresh.
pub async fn admin_revoke(
    app: &App,
    actor: &str,
    req: AdminRevocation,
    request_id: &str,
) -> Result<RevocationEvent, Error> {
    let invalid = |why: String| Error::InvalidRequest(why);
    let kind = RevocationKind::parse(&req.kind)
        .filter(|k| !matches!(k, RevocationKind::Contract | RevocationKind::Grant))
        .ok_or_else(|| {
            invalid("kind must be one of token, session, subject, client, all".into())
        })?;
    let value = match (kind, req.value) {
        (RevocationKind::All, None) => String::new(),
        (RevocationKind::All, Some(v)) if v.is_empty() => String::new(),
        (RevocationKind::All, Some(_)) => return Err(invalid("kind all takes no value".into())),
        (_, Some(v)) if !v.is_empty() && v.len() <= MAX_FIELD => v,
        (_, _) => {
            return Err(invalid(format!(
                "kind {} needs a value of 1 to {MAX_FIELD} bytes",
                kind.as_str()
            )))
        }
    };
    let value = match (kind, req.issuer.as_deref()) {
        (RevocationKind::Subject, issuer) => subject_value(app, value, issuer)?,
        (_, None) => value,
        (_, Some(_)) => return Err(invalid("issuer is only for kind subject".into())),
    };
    let reason = checked_reason(req.reason)?;
    app.fresh(now_ms())?;
    Ok(app
        .revoke(NewRevocation {
            kind,
            value,
            reason,
            actor: actor.to_string(),
            request_id: request_id.to_string(),
        })
        .await?)
}

/// A reason of at most [`MAX_FIELD`] bytes (absent: empty).
pub fn checked_reason(reason: Option<String>) -> Result<String, Error> {
    let reason = reason.unwrap_or_default();
    if reason.len() > MAX_FIELD {
        return Err(Error::InvalidRequest(format!(
            "reason is longer than {MAX_FIELD} bytes"
        )));
    }
    Ok(reason)
}

/// The subject a `subject` revocation names, as latch writes it in tokens. With
/// `issuer`, `value` is that IdP's own `sub` and gets its prefix. Without, a value that
/// could be a bare IdP `sub` while prefixes are configured (no known prefix, not a
/// client id) is ambiguous and refused: answering 200 while matching nothing, because
/// of a namespace, would lose the revocation.
fn subject_value(app: &App, value: String, issuer: Option<&str>) -> Result<String, Error> {
    if let Some(iss) = issuer {
        let subject = app.trusted.subject_of(iss, &value).ok_or_else(|| {
            Error::InvalidRequest(format!(
                "issuer {:?} is not a trusted issuer",
                iss.chars().take(200).collect::<String>()
            ))
        })?;
        // A value already in the namespaced form, with its issuer named as well, would
        // become prefix+prefix+sub: 200 matching nobody. Refuse, naming both forms (an
        // IdP sub that really starts with the prefix is revoked namespaced, without
        // issuer). Found by tests/redteam.rs.
        let prefix = subject.strip_suffix(value.as_str()).unwrap_or("");
        if !prefix.is_empty() && value.starts_with(prefix) {
            return Err(Error::InvalidRequest(format!(
                "ambiguous subject: {value:?} already carries this issuer's prefix \
                 {prefix:?}; give the IdP's own sub with \"issuer\", or the namespaced form \
                 without \"issuer\""
            )));
        }
        // An issuer without subject_prefix: its `sub` can equal a client id. No user can
        // hold such a subject (assertions naming a client are refused), so this would
        // match only the service's own tokens: a user's offboarding must not take a
        // service down. Found by tests/redteam.rs.
        if app.clients.contains(&subject) {
            return Err(Error::InvalidRequest(
                "this IdP sub equals a client id, and no user of it can hold a token;                  to revoke the client's own tokens, give the value without issuer"
                    .into(),
            ));
        }
        return Ok(subject);
    }
    let trusted = &app.trusted;
    if trusted.has_prefixes() && !trusted.has_known_prefix(&value) && !app.clients.contains(&value)
    {
        return Err(Error::InvalidRequest(
            "ambiguous subject: give it as latch writes it in tokens (with its issuer's \
             subject_prefix, e.g. \"idp1|alice\"), or give the IdP's own sub with \
             \"issuer\": \"<trusted issuer URL>\""
                .into(),
        ));
    }
    Ok(value)
}

/// What a store recovery did.
#[derive(Debug)]
pub struct Recovered {
    pub epoch: u64,
    pub seq: u64,
    pub closed: Vec<ClosedEpoch>,
    pub revoked_all_seq: Option<u64>,
}

/// The operator's step after the store lost history (a restored backup): closes the
/// store's epoch and opens a new one, audited as `store_recover`; with `revoke_all`, also
/// an `all` revocation in the new epoch, so every token and session issued before dies.
/// Freshness is not required: this is what an operator runs when things are broken.
pub async fn recover_store(
    app: &App,
    actor: &str,
    reason: &str,
    revoke_all: bool,
    request_id: &str,
) -> Result<Recovered, Error> {
    if reason.trim().is_empty() || reason.len() > MAX_FIELD {
        return Err(Error::InvalidRequest(format!(
            "reason must be 1 to {MAX_FIELD} bytes"
        )));
    }
    let head = app
        .store
        .bump_epoch(NewAudit {
            actor: actor.to_string(),
            action: "store_recover".into(),
            target: "store".into(),
            reason: reason.to_string(),
            request_id: request_id.to_string(),
        })
        .await?;
    // Let this node switch before answering, so its next answers are in the new epoch.
    let bound = Duration::from_millis(app.max_staleness_ms as u64);
    app.table.wait_for(head.point(), bound).await;
    let revoked_all_seq = if revoke_all {
        let event = app
            .revoke(NewRevocation {
                kind: RevocationKind::All,
                value: String::new(),
                reason: format!("store recover: {reason}"),
                actor: actor.to_string(),
                request_id: request_id.to_string(),
            })
            .await?;
        Some(event.seq)
    } else {
        None
    };
    Ok(Recovered {
        epoch: head.epoch,
        seq: head.revocation_seq,
        closed: head.closed,
        revoked_all_seq,
    })
}
