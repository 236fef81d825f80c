//! RFC 7662: is this token active, and what does it say. Access tokens are decided by
//! the verifier through a fresh [`View`]; refresh tokens by their stored record. The
//! caller's audience restriction and the issuing client's existence are part of the
//! decision, not of the HTTP layer.
//!
//! Three ways to ask, one decision ([`decide`]):
//! - [`introspect`]: one token;
//! - [`introspect_signed`]: one token, and the view that decided it signs the answer
//!   (RFC 9701), so nothing is signed by a node that could not decide;
//! - [`introspect_batch`]: up to `introspection.batch_max` tokens through one view: one
//!   instant, one freshness check, so a stale node refuses the whole batch, never a part.

use std::sync::{Arc, OnceLock};

use metrics::Counter;

use tokio::time::Instant;

use super::error::Error;
use super::token::stored_refresh;
use super::view::View;
use super::App;
use crate::clients::Client;
use crate::ids::ClientId;
use crate::metrics as m;
use crate::policy;
use crate::revocation::{Point, Verdict};
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
    /// Boxed: a refresh record is several times the size of the other answers.
    Refresh(Box<RefreshRecord>),
    Inactive,
}

/// An answer kept with the view that decided it, so that view can sign it.
pub struct Decided<'a> {
    pub answer: Answer,
    view: View<'a>,
    audience: ClientId,
}

impl Decided<'_> {
    /// RFC 9701: the JWT whose `token_introspection` is `answer_json`, the JSON rendering
    /// of [`Decided::answer`], for the caller as `aud`, signed with the active key.
    pub fn sign(&self, answer_json: &[u8]) -> Result<String, Error> {
        self.view.sign_introspection(&self.audience, answer_json)
    }
}

/// Introspects `token` for `caller` (who holds role `introspect`).
pub async fn introspect(app: &App, caller: &Client, token: &str) -> Result<Answer, Error> {
    let view = app.fresh(now_ms())?;
    decide(app, &view, caller, token, &mut StampWaits::default()).await
}

/// [`introspect`], keeping the view for an RFC 9701 signature.
pub async fn introspect_signed<'a>(
    app: &'a App,
    caller: &Client,
    token: &str,
) -> Result<Decided<'a>, Error> {
    let view = app.fresh(now_ms())?;
    let answer = decide(app, &view, caller, token, &mut StampWaits::default()).await?;
    Ok(Decided {
        answer,
        view,
        audience: caller.id.clone(),
    })
}

/// Introspects every token of `tokens` for `caller`, in order: each answer is the one
/// [`introspect`] gives for that token. At most `introspection.batch_max` tokens, none
/// empty; a duplicate is answered at each of its positions.
pub async fn introspect_batch(
    app: &App,
    caller: &Client,
    tokens: &[String],
) -> Result<Vec<Answer>, Error> {
    let max = app.config.introspection.batch_max;
    if tokens.len() > max {
        return Err(Error::InvalidRequest(format!(
            "at most {max} tokens per batch (introspection.batch_max), got {}",
            tokens.len()
        )));
    }
    if let Some(i) = tokens.iter().position(String::is_empty) {
        return Err(Error::InvalidRequest(format!("tokens[{i}] is empty")));
    }
    let view = app.fresh(now_ms())?;
    let mut waits = StampWaits::default();
    let mut answers = Vec::with_capacity(tokens.len());
    for token in tokens {
        answers.push(decide(app, &view, caller, token, &mut waits).await?);
    }
    Ok(answers)
}

/// The decision for one token, through `view`.
async fn decide(
    app: &App,
    view: &View<'_>,
    caller: &Client,
    token: &str,
    waits: &mut StampWaits,
) -> Result<Answer, Error> {
    if sessions::is_refresh_token(token) {
        let answer = refresh(app, caller, token, waits).await?;
        let result = if answer.is_some() {
            "active"
        } else {
            "inactive"
        };
        metrics::counter!(m::INTROSPECTIONS_TOTAL, "result" => result, "reason" => "refresh_token")
            .increment(1);
        return Ok(answer.map_or(Answer::Inactive, |r| Answer::Refresh(Box::new(r))));
    }
    let decide = || view.decide_for(caller, token);
    let mut decision = decide();
    if decision == Err(Reason::StampAhead) {
        // Stamped by a node further along (or in an epoch this node has not seen yet):
        // wait briefly for this node's follower, then decide once more.
        if let Ok(claims) = view.authentic(token) {
            waits.wait(app, claims.stamp().point()).await;
            decision = decide();
        }
    }
    match decision {
        Ok(claims) => {
            count_decision(None);
            let deprecated = app
                .contracts
                .client(&claims.client_id, view.now_ms())
                .map(|c| super::token::deprecated_in(&c, &claims))
                .unwrap_or_default();
            for d in &deprecated {
                metrics::counter!(m::CONTRACT_DEPRECATED_USE, "name" => d.name.clone())
                    .increment(1);
            }
            Ok(Answer::Access { claims, deprecated })
        }
        Err(reason) => {
            count_decision(Some(reason));
            tracing::debug!(reason = reason.as_str(), caller = %caller.id, "token inactive");
            Ok(Answer::Inactive)
        }
    }
}

/// Counts an access-token decision in `latch_introspections_total` (`None`: active). Each
/// series is registered on first use and kept: introspection pays an atomic add, not a
/// key build and registry look-up.
fn count_decision(inactive: Option<Reason>) {
    const SLOTS: usize = 32;
    static SERIES: [OnceLock<Counter>; SLOTS + 1] = [const { OnceLock::new() }; SLOTS + 1];
    let slot = match inactive {
        None => SLOTS,
        Some(reason) if (reason as usize) < SLOTS => reason as usize,
        Some(reason) => {
            metrics::counter!(m::INTROSPECTIONS_TOTAL, "result" => "inactive", "reason" => reason.as_str())
                .increment(1);
            return;
        }
    };
    SERIES[slot]
        .get_or_init(|| match inactive {
            None => metrics::counter!(m::INTROSPECTIONS_TOTAL, "result" => "active", "reason" => ""),
            Some(reason) => {
                metrics::counter!(m::INTROSPECTIONS_TOTAL, "result" => "inactive", "reason" => reason.as_str())
            }
        })
        .increment(1);
}

/// The record of an active refresh token, or `None` when it is inactive.
async fn refresh(
    app: &App,
    caller: &Client,
    token: &str,
    waits: &mut StampWaits,
) -> Result<Option<RefreshRecord>, Error> {
    let Some((r, spent)) = stored_refresh(app, token, "").await? else {
        return Ok(None);
    };
    waits.wait(app, r.stamp().point()).await;
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

/// Waiting for stamps ahead of this node, bounded per request: one token may wait up to
/// [`App::stamp_wait_bound`] (as [`App::await_stamp`] alone would); a batch shares that
/// bound across all its tokens, from its first wait, so a batch of tokens stamped in an
/// epoch this node cannot reach costs one bound, not one per token.
#[derive(Default)]
struct StampWaits {
    until: Option<Instant>,
}

impl StampWaits {
    async fn wait(&mut self, app: &App, stamp: Point) {
        if app.table.validity(stamp) != Verdict::StampAhead {
            return;
        }
        let until = *self
            .until
            .get_or_insert_with(|| Instant::now() + app.stamp_wait_bound());
        // Past the deadline the decision is made on what this node has: inactive.
        let _ = tokio::time::timeout_at(until, app.await_stamp(stamp)).await;
    }
}
