//! RFC 7662: is this token active, and what does it say. Access tokens are decided by
//! the verifier through a fresh [`View`](super::view::View); refresh tokens by their
//! stored record. The caller's audience restriction and the issuing client's existence
//! are part of the decision, not of the HTTP layer.

use std::sync::Arc;

use super::error::Error;
use super::token::stored_refresh;
use super::App;
use crate::clients::Client;
use crate::metrics as m;
use crate::policy;
use crate::sessions::{self, RefreshRecord};
use crate::time::now_ms;
use crate::tokens::{AccessClaims, Reason};

/// The answer to one introspection.
#[derive(Debug)]
pub enum Answer {
    /// An active access token, with the deprecated scopes or audience it carries (and
    /// their planned removal, Unix ms).
    Access {
        claims: Arc<AccessClaims>,
        deprecated: Vec<crate::clients::Deprecated>,
    },
    Refresh(RefreshRecord),
    Inactive,
}

/// Introspects `token` for `caller` (who holds role `introspect`).
pub async fn introspect(app: &App, caller: &Client, token: &str) -> Result<Answer, Error> {
    let now = now_ms();
    let view = app.fresh(now)?;
    if sessions::is_refresh_token(token) {
        let answer = refresh(app, caller, token).await?;
        let result = if answer.is_some() {
            "active"
        } else {
            "inactive"
        };
        metrics::counter!(m::INTROSPECTIONS_TOTAL, "result" => result, "reason" => "refresh_token")
            .increment(1);
        return Ok(answer.map_or(Answer::Inactive, Answer::Refresh));
    }
    let decide = || view.decide_for(caller, token);
    let mut decision = decide();
    if decision == Err(Reason::StampAhead) {
        // Stamped by a node further along (or in an epoch this node has not seen yet):
        // wait briefly for this node's follower, then decide once more.
        if let Ok(claims) = view.authentic(token) {
            app.await_stamp(claims.stamp().point()).await;
            decision = decide();
        }
    }
    match decision {
        Ok(claims) => {
            metrics::counter!(m::INTROSPECTIONS_TOTAL, "result" => "active", "reason" => "")
                .increment(1);
            let deprecated = app
                .contracts
                .client(&claims.client_id, now)
                .map(|c| super::token::deprecated_in(&c, &claims))
                .unwrap_or_default();
            for d in &deprecated {
                metrics::counter!(m::CONTRACT_DEPRECATED_USE, "name" => d.name.clone())
                    .increment(1);
            }
            Ok(Answer::Access { claims, deprecated })
        }
        Err(reason) => {
            metrics::counter!(m::INTROSPECTIONS_TOTAL, "result" => "inactive", "reason" => reason.as_str())
                .increment(1);
            tracing::debug!(reason = reason.as_str(), caller = %caller.id, "token inactive");
            Ok(Answer::Inactive)
        }
    }
}

/// The record of an active refresh token, or `None` when it is inactive.
async fn refresh(app: &App, caller: &Client, token: &str) -> Result<Option<RefreshRecord>, Error> {
    let Some((r, spent)) = stored_refresh(app, &sessions::hash(token), "").await? else {
        return Ok(None);
    };
    app.await_stamp(r.stamp().point()).await;
    let active = !spent
        && r.expires_at_ms > now_ms()
        && !app.table.is_revoked(&r.stamp())
        && caller.may_see_audience(&r.aud)
        && app
            .contracts
            .client(&r.client_id, now_ms())
            .is_some_and(|c| !c.suspended && policy::session_allowed(&c, &r));
    Ok(active.then_some(r))
}
