//! Shared Signals (OpenID SSF 1.0, CAEP 1.0): the vocabulary of event streams and the
//! pure decisions about them. No IO: `app::ssf` reads and writes streams through the
//! store, signs and delivers; this module says what a stream holds, which Security Event
//! Tokens (RFC 8417) are pending on it, and how acknowledgements move its cursor.
//!
//! # Positions
//!
//! Every SET of a stream has a position [`Pos`] `(seq, part)`: a revocation with log seq
//! `s` yields its SETs at `(s, 0)` (`session-revoked`) and `(s, 1)` (`credential-change`,
//! for a client revocation only); a verification requested when the node had applied `s`
//! sits at `(s, n)` with `n >= 2` from the stream's own counter, so it follows every
//! revocation the requester had seen. SETs go out in position order. The stream's
//! `cursor` is the highest position below which everything was delivered (pushed and
//! answered 2xx, or acknowledged by a poll); it only moves forward, so a restart or
//! another node resumes right after it (at least once, never a gap).

pub mod request;
pub mod set;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::revocation::{RevocationEvent, RevocationKind};

/// `spec_version` of the transmitter configuration: the final SSF 1.0.
pub const SPEC_VERSION: &str = "1_0";
/// RFC 8935 push delivery (`delivery.method`).
pub const PUSH: &str = "urn:ietf:rfc:8935";
/// RFC 8936 poll delivery (`delivery.method`).
pub const POLL: &str = "urn:ietf:rfc:8936";
/// CAEP 1.0 §3.1.
pub const SESSION_REVOKED: &str =
    "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
/// CAEP 1.0 §3.3.
pub const CREDENTIAL_CHANGE: &str =
    "https://schemas.openid.net/secevent/caep/event-type/credential-change";
/// SSF 1.0 §8.1.4.1; sent on request whatever the stream's event types.
pub const VERIFICATION: &str = "https://schemas.openid.net/secevent/ssf/event-type/verification";
/// The event types latch emits, in the order `events_supported` lists them.
pub const EVENTS_SUPPORTED: [&str; 2] = [SESSION_REVOKED, CREDENTIAL_CHANGE];

/// Most verification events a stream holds undelivered; more requests are refused (429).
pub const MAX_CONTROL: usize = 16;
/// Most positions a poll may acknowledge ahead of the cursor (acks of SETs not yet
/// returned, or beyond this many, are ignored: the SETs come again).
pub const MAX_ACKED_AHEAD: usize = 4096;

/// Where a SET stands in its stream's order.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Pos {
    pub seq: u64,
    pub part: u32,
}

impl Pos {
    pub const fn new(seq: u64, part: u32) -> Pos {
        Pos { seq, part }
    }
}

/// The first part number of a verification event at a seq: above every revocation part.
pub const FIRST_CONTROL_PART: u32 = 2;

/// A stream's status (SSF 1.0 §8.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Events are transmitted.
    #[default]
    Enabled,
    /// Nothing is transmitted; events are held and go out once enabled again.
    Paused,
    /// Nothing is transmitted nor held: enabling again starts from the log's head.
    Disabled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Enabled => "enabled",
            Status::Paused => "paused",
            Status::Disabled => "disabled",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        [Status::Enabled, Status::Paused, Status::Disabled]
            .into_iter()
            .find(|x| x.as_str() == s)
    }
}

/// How SETs leave (SSF 1.0 §6.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method")]
pub enum Delivery {
    /// RFC 8935: latch POSTs each SET to `endpoint_url`, one of the endpoints the
    /// operator configured for this receiver.
    #[serde(rename = "urn:ietf:rfc:8935")]
    Push {
        endpoint_url: String,
        /// Sent as the `Authorization` header of every push, if given. A secret: never
        /// logged.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        authorization_header: Option<String>,
    },
    /// RFC 8936: the receiver polls `{issuer}/ssf/poll/{stream_id}`.
    #[serde(rename = "urn:ietf:rfc:8936")]
    Poll,
}

impl Delivery {
    pub fn method(&self) -> &'static str {
        match self {
            Delivery::Push { .. } => PUSH,
            Delivery::Poll => POLL,
        }
    }

    /// The `method` metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Delivery::Push { .. } => "push",
            Delivery::Poll => "poll",
        }
    }
}

/// A SET that is not a revocation: held in the stream until delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    pub pos: Pos,
    /// The receiver's `state` of a verification request, echoed in the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// One event stream as stored: the receiver's configuration and the delivery state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stream {
    pub id: String,
    /// The receiver (client id) that created it; only it may see or change the stream.
    pub owner: String,
    /// `aud` of every SET: the receiver's configured audience.
    pub aud: String,
    /// As the receiver asked; `None`: every supported type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_requested: Option<Vec<String>>,
    pub delivery: Delivery,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Everything at or below was delivered.
    pub cursor: Pos,
    /// Positions above the cursor a poll acknowledged out of order.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub acked_ahead: BTreeSet<Pos>,
    /// Verification events not yet delivered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub control: Vec<Control>,
    /// The part number the next verification event gets (>= [`FIRST_CONTROL_PART`]).
    pub next_part: u32,
    /// When a verification was last requested (Unix ms), for `min_verification_interval`.
    #[serde(default)]
    pub last_verification_ms: i64,
    pub created_at_ms: i64,
}

/// A stream as the store keeps it: opaque JSON under a version for compare-and-set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredStream {
    pub id: String,
    /// 1 for a new stream, +1 with every save.
    pub version: u64,
    pub json: String,
}

impl Stream {
    /// A new enabled stream whose cursor is `head`: it carries revocations recorded after
    /// it was created, not the history.
    pub fn new(
        id: String,
        owner: String,
        aud: String,
        head: u64,
        fields: request::Fields,
        now_ms: i64,
    ) -> Stream {
        Stream {
            id,
            owner,
            aud,
            events_requested: fields.events_requested,
            delivery: fields.delivery,
            description: fields.description,
            status: Status::Enabled,
            reason: None,
            cursor: Pos::new(head, 1),
            acked_ahead: BTreeSet::new(),
            control: Vec::new(),
            next_part: FIRST_CONTROL_PART,
            last_verification_ms: 0,
            created_at_ms: now_ms,
        }
    }

    pub fn decode(stored: &StoredStream) -> Result<Stream, String> {
        serde_json::from_str(&stored.json)
            .map_err(|e| format!("corrupt stream record {}: {e}", stored.id))
    }

    pub fn encode(&self) -> String {
        // A struct of strings, numbers and sets of them always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// `events_delivered`: the supported types the receiver asked for (all if it named
    /// none), in the order of [`EVENTS_SUPPORTED`].
    pub fn events_delivered(&self) -> Vec<&'static str> {
        EVENTS_SUPPORTED
            .into_iter()
            .filter(|t| match &self.events_requested {
                None => true,
                Some(asked) => asked.iter().any(|a| a == t),
            })
            .collect()
    }

    /// Changes the status. Disabling drops held verification events; enabling a disabled
    /// stream moves its cursor to `head` (a disabled stream holds nothing, SSF 1.0 §8.1.2).
    pub fn set_status(&mut self, status: Status, reason: Option<String>, head: u64) {
        if status == Status::Disabled {
            self.control.clear();
            self.acked_ahead.clear();
        }
        if self.status == Status::Disabled && status != Status::Disabled {
            self.cursor = self.cursor.max(Pos::new(head, 1));
        }
        self.status = status;
        self.reason = reason;
    }

    /// Queues a verification event after everything up to `head`. The caller checked
    /// the interval and [`MAX_CONTROL`].
    pub fn queue_verification(&mut self, state: Option<String>, head: u64, now_ms: i64) {
        let pos = Pos::new(head.max(self.cursor.seq), self.next_part);
        self.next_part = self.next_part.saturating_add(1);
        self.last_verification_ms = now_ms;
        if self.status != Status::Disabled {
            self.control.push(Control { pos, state });
        }
    }
}

/// What a read of the log after a stream's cursor saw: the revocations, and how far the
/// read covers (the node's applied seq if the read reached it, else the last seq read).
#[derive(Debug, Clone, Default)]
pub struct Window {
    pub events: Vec<RevocationEvent>,
    pub upto: u64,
}

/// One SET waiting on a stream, before it is signed.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub pos: Pos,
    pub event_type: &'static str,
    /// `sub_id` (SSF 1.0 §3.1).
    pub sub_id: serde_json::Value,
    /// The event object under `events[event_type]`.
    pub event: serde_json::Value,
    /// `txn`: the same for every SET of one revocation.
    pub txn: String,
}

/// The SETs a revocation yields, by part, with their type, subject and event object.
///
/// | kind | SETs |
/// |---|---|
/// | `token` | `session-revoked` for `{format: jwt_id, iss, jti}` |
/// | `session` | `session-revoked` for `{format: complex, session: {format: opaque, id: sid}}` |
/// | `subject` | `session-revoked` for `{format: complex, user: {format: iss_sub, iss, sub}}` |
/// | `client` | `session-revoked` for `{format: complex, application: {format: opaque, id}}`, then `credential-change` (`credential_type: app`, `change_type: revoke`) for the same subject |
/// | `all` | `session-revoked` for `{format: complex, tenant: {format: uri, uri: issuer}}` |
/// | `contract` | none: a contract change is in the log but revokes nothing |
pub fn revocation_sets(e: &RevocationEvent, issuer: &str) -> Vec<Pending> {
    use serde_json::json;
    let txn = format!("rev-{}", e.seq);
    let ts = e.revoked_at_ms.div_euclid(1000);
    let revoked = json!({ "event_timestamp": ts });
    let sub_id = match e.kind {
        RevocationKind::Token => json!({"format": "jwt_id", "iss": issuer, "jti": e.value}),
        RevocationKind::Session => {
            json!({"format": "complex", "session": {"format": "opaque", "id": e.value}})
        }
        RevocationKind::Subject => json!({
            "format": "complex",
            "user": {"format": "iss_sub", "iss": issuer, "sub": e.value},
        }),
        RevocationKind::Client => json!({
            "format": "complex",
            "application": {"format": "opaque", "id": e.value},
        }),
        RevocationKind::All => json!({
            "format": "complex",
            "tenant": {"format": "uri", "uri": issuer},
        }),
        RevocationKind::Contract | RevocationKind::Grant => return Vec::new(),
    };
    let mut out = vec![Pending {
        pos: Pos::new(e.seq, 0),
        event_type: SESSION_REVOKED,
        sub_id: sub_id.clone(),
        event: revoked,
        txn: txn.clone(),
    }];
    if e.kind == RevocationKind::Client {
        out.push(Pending {
            pos: Pos::new(e.seq, 1),
            event_type: CREDENTIAL_CHANGE,
            sub_id,
            event: json!({
                "event_timestamp": ts,
                "credential_type": "app",
                "change_type": "revoke",
                "friendly_name": e.value,
            }),
            txn,
        });
    }
    out
}

/// A verification event of stream `stream_id` (SSF 1.0 §8.1.4.1).
fn verification(stream_id: &str, c: &Control) -> Pending {
    use serde_json::json;
    let event = match &c.state {
        Some(state) => json!({ "state": state }),
        None => json!({}),
    };
    Pending {
        pos: c.pos,
        event_type: VERIFICATION,
        sub_id: json!({"format": "opaque", "id": stream_id}),
        event,
        txn: format!("verify-{}-{}", c.pos.seq, c.pos.part),
    }
}

/// Every SET pending on `stream` within `window`, in order, acknowledged ones left out,
/// at most `limit`. Paused and disabled streams have none.
pub fn pending(stream: &Stream, window: &Window, issuer: &str, limit: usize) -> Vec<Pending> {
    if stream.status != Status::Enabled {
        return Vec::new();
    }
    open_sets(stream, window, issuer, limit, false)
}

/// The SETs after the cursor within `window` whatever the status (acknowledgements count
/// on a paused stream too), with or without those acknowledged out of order.
fn open_sets(
    stream: &Stream,
    window: &Window,
    issuer: &str,
    limit: usize,
    with_acked: bool,
) -> Vec<Pending> {
    let delivered = stream.events_delivered();
    let open = |p: &Pos| *p > stream.cursor && (with_acked || !stream.acked_ahead.contains(p));
    let mut out: Vec<Pending> = window
        .events
        .iter()
        .filter(|e| e.seq <= window.upto)
        .flat_map(|e| revocation_sets(e, issuer))
        .filter(|p| delivered.contains(&p.event_type) && open(&p.pos))
        .collect();
    out.extend(
        stream
            .control
            .iter()
            .filter(|c| c.pos.seq <= window.upto && open(&c.pos))
            .map(|c| verification(&stream.id, c)),
    );
    out.sort_by_key(|p| p.pos);
    out.truncate(limit);
    out
}

/// Marks `delivered` positions as delivered and moves the cursor over every pending SET
/// of `window` that now is, in order. Positions that are not pending in `window` (unknown,
/// already behind the cursor, beyond the window) are ignored. Returns whether anything
/// changed.
pub fn mark_delivered(
    stream: &mut Stream,
    window: &Window,
    issuer: &str,
    delivered: &[Pos],
) -> bool {
    let before = (
        stream.cursor,
        stream.acked_ahead.len(),
        stream.control.len(),
    );
    let open = open_sets(stream, window, issuer, usize::MAX, true);
    for p in delivered {
        if stream.acked_ahead.len() >= MAX_ACKED_AHEAD {
            break;
        }
        if open.iter().any(|o| o.pos == *p) {
            stream.acked_ahead.insert(*p);
        }
    }
    let mut all_done = true;
    for o in &open {
        if stream.acked_ahead.remove(&o.pos) {
            stream.cursor = stream.cursor.max(o.pos);
        } else {
            all_done = false;
            break;
        }
    }
    if all_done {
        // Nothing pending up to `upto`: skip the revocations this stream does not carry.
        stream.cursor = stream.cursor.max(Pos::new(window.upto, 1));
    }
    let cursor = stream.cursor;
    stream.acked_ahead.retain(|p| *p > cursor);
    stream.control.retain(|c| c.pos > cursor);
    before
        != (
            stream.cursor,
            stream.acked_ahead.len(),
            stream.control.len(),
        )
}

/// The `jti` of the SET at `pos` on stream `stream_id`: unique per issuer, and the same
/// on every delivery, so a receiver can drop repeats and a poll can acknowledge it.
pub fn jti(stream_id: &str, pos: Pos) -> String {
    format!("{stream_id}.{}.{}", pos.seq, pos.part)
}

/// The position a `jti` of stream `stream_id` names; `None` for any other text.
pub fn parse_jti(stream_id: &str, jti: &str) -> Option<Pos> {
    let rest = jti.strip_prefix(stream_id)?.strip_prefix('.')?;
    let (seq, part) = rest.split_once('.')?;
    let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !plain(seq) || !plain(part) {
        return None;
    }
    Some(Pos::new(seq.parse().ok()?, part.parse().ok()?))
}

#[cfg(test)]
mod tests;
