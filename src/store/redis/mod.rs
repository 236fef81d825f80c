//! The Redis store: the only file that speaks Redis.
//!
//! Every key shares the hash tag `{latch}`, so each Lua script touches one slot (a
//! requirement of Redis Cluster) and runs atomically:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{latch}:rev:seq` | string | last revocation seq (INCR) |
//! | `{latch}:rev:log` | stream | revocations, entry id `<seq>-0`: kind, value, at (ms), reason, actor |
//! | `{latch}:audit:seq` / `{latch}:audit:log` | string / stream | audit records, id `<seq>-0` |
//! | `{latch}:keys` / `{latch}:keys:version` | hash / string | key records (JSON) by kid; the key-set version |
//!
//! Announcements go to the channel `{latch}:events`, published from inside the same script
//! that assigned the seq: Redis runs scripts one at a time, so announcements leave in seq
//! order, and a revocation is never announced without being in the log.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::{AsyncCommands, Script};
use tokio::sync::broadcast;

use topology::{Conn, Target, Topology};

use super::{
    decode_key_records, decode_refresh, encode_key_record, encode_refresh, revocation_target,
    AuditRecord, BoxFuture, Head, KeySet, NewAudit, NewRevocation, RefreshRecord, RevocationEvent,
    RevocationKind, Rotation, Store, StoreError, StoreEvent,
};
use crate::keys::KeyRecord;

pub mod topology;

const REV_SEQ: &str = "{latch}:rev:seq";
const REV_LOG: &str = "{latch}:rev:log";
const AUDIT_SEQ: &str = "{latch}:audit:seq";
const AUDIT_LOG: &str = "{latch}:audit:log";
const KEYS: &str = "{latch}:keys";
const KEYS_VERSION: &str = "{latch}:keys:version";
const CHANNEL: &str = "{latch}:events";

/// A refresh token's key, by the SHA-256 of the token.
fn refresh_key(hash: &str) -> String {
    format!("{{latch}}:rt:{hash}")
}

/// Store time in ms, inside a script.
const NOW_MS: &str = "local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// Assigns the seq, logs the revocation and its audit record, announces it.
/// KEYS: rev:seq rev:log audit:seq audit:log. ARGV: kind value reason actor request_id target channel.
const REVOKE: &str = "
local seq = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], seq .. '-0', 'kind', ARGV[1], 'value', ARGV[2], 'at', ms,
  'reason', ARGV[3], 'actor', ARGV[4])
local aseq = redis.call('INCR', KEYS[3])
redis.call('XADD', KEYS[4], aseq .. '-0', 'time', ms, 'actor', ARGV[4], 'action', 'revoke',
  'target', ARGV[6], 'reason', ARGV[3], 'request_id', ARGV[5])
redis.call('PUBLISH', ARGV[7], 'rev\\n' .. seq .. '\\n' .. ms .. '\\n' .. ARGV[1] .. '\\n' .. ARGV[2])
return {seq, ms, aseq}
";

/// Compare-and-set of the key set, with its audit records, then the announcement.
/// KEYS: keys keys:version audit:seq audit:log.
/// ARGV: expected channel n (kid json)*n (actor action target reason request_id)*.
const SAVE_KEYS: &str = "
local v = tonumber(redis.call('GET', KEYS[2]) or '0')
if v ~= tonumber(ARGV[1]) then return {-1} end
local n = tonumber(ARGV[3])
local i = 4
for _ = 1, n do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
local out = {0, ms}
while i <= #ARGV do
  local aseq = redis.call('INCR', KEYS[3])
  redis.call('XADD', KEYS[4], aseq .. '-0', 'time', ms, 'actor', ARGV[i], 'action', ARGV[i + 1],
    'target', ARGV[i + 2], 'reason', ARGV[i + 3], 'request_id', ARGV[i + 4])
  table.insert(out, aseq)
  i = i + 5
end
local nv = redis.call('INCR', KEYS[2])
out[1] = nv
redis.call('PUBLISH', ARGV[2], 'keys\\n' .. nv)
return out
";

/// The key set and its version, read together. KEYS: keys keys:version.
const LOAD_KEYS: &str = "
return {redis.call('GET', KEYS[2]) or '0', redis.call('HVALS', KEYS[1])}
";

/// A session's first refresh token and its audit record.
/// KEYS: rt:<hash> audit:seq audit:log. ARGV: record expires_at_ms actor action target reason request_id.
const OPEN_SESSION: &str = "
redis.call('HSET', KEYS[1], 'rec', ARGV[1], 'used', '0')
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
local aseq = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[3], aseq .. '-0', 'time', ms, 'actor', ARGV[3], 'action', ARGV[4],
  'target', ARGV[5], 'reason', ARGV[6], 'request_id', ARGV[7])
return {aseq, ms}
";

/// Spends a refresh token and stores its successor, or says why not.
/// KEYS: rt:<old> rt:<new>. ARGV: new record, new expires_at_ms.
/// Returns {1} rotated, {2, old record} reused, {0} unknown.
const ROTATE_REFRESH: &str = "
local used = redis.call('HGET', KEYS[1], 'used')
if not used then return {0} end
if used == '1' then return {2, redis.call('HGET', KEYS[1], 'rec')} end
redis.call('HSET', KEYS[1], 'used', '1')
redis.call('HSET', KEYS[2], 'rec', ARGV[1], 'used', '0')
redis.call('PEXPIREAT', KEYS[2], ARGV[2])
return {1}
";

/// KEYS: audit:seq audit:log. ARGV: actor action target reason request_id.
const AUDIT: &str = "
local aseq = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], aseq .. '-0', 'time', ms, 'actor', ARGV[1], 'action', ARGV[2],
  'target', ARGV[3], 'reason', ARGV[4], 'request_id', ARGV[5])
return {aseq, ms}
";

/// Redis-backed [`Store`]. Cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Commands; reconnects by itself, fails fast while Redis is away.
    conn: Conn,
    events: broadcast::Sender<StoreEvent>,
    revoke: Script,
    save_keys: Script,
    load_keys: Script,
    audit: Script,
    open_session: Script,
    rotate_refresh: Script,
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn script(body: &str) -> Script {
    Script::new(&format!("{NOW_MS}{body}"))
}

impl RedisStore {
    /// Connects, and starts the task that forwards announcements. `timeout` bounds every
    /// round trip, so a hung Redis shows up as staleness, not as a stuck request.
    pub async fn connect(url: &str, timeout: Duration) -> Result<RedisStore, StoreError> {
        let target = Target::parse(url).map_err(|e| StoreError::Open(format!("redis_url {e}")))?;
        let topology = Topology::new(target, timeout)
            .map_err(|e| StoreError::Open(format!("redis_url: {e}")))?;
        let conn = topology
            .connect()
            .await
            .map_err(|e| StoreError::Open(format!("cannot connect to redis: {e}")))?;
        let (events, _) = broadcast::channel(4096);
        let inner = Arc::new(Inner {
            conn,
            events,
            revoke: script(REVOKE),
            save_keys: script(SAVE_KEYS),
            load_keys: Script::new(LOAD_KEYS),
            audit: script(AUDIT),
            open_session: script(OPEN_SESSION),
            rotate_refresh: Script::new(ROTATE_REFRESH),
        });
        tokio::spawn(forward_announcements(topology, Arc::downgrade(&inner)));
        Ok(RedisStore { inner })
    }

    /// Removes log entries with seq <= `last`.
    async fn trim_before(&self, last: Option<u64>) -> Result<u64, StoreError> {
        let Some(last) = last else { return Ok(0) };
        redis::cmd("XTRIM")
            .arg(REV_LOG)
            .arg("MINID")
            .arg(format!("{}-0", last + 1))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    fn conn(&self) -> Conn {
        self.inner.conn.clone()
    }
}

/// Subscribes to the announcement channel and forwards what arrives, reconnecting with
/// backoff. Lost messages are not a correctness problem: the follower's head checks
/// find the gap and read the log.
async fn forward_announcements(topology: Topology, store: std::sync::Weak<Inner>) {
    let mut backoff = Duration::from_millis(50);
    for attempt in 0.. {
        // Ends with the store.
        let Some(tx) = store.upgrade().map(|inner| inner.events.clone()) else {
            return;
        };
        let pubsub = match topology.pubsub_client(attempt).await {
            Ok(client) => client.get_async_pubsub().await,
            Err(e) => Err(e),
        };
        match pubsub {
            Ok(mut pubsub) => match pubsub.subscribe(CHANNEL).await {
                Ok(()) => {
                    backoff = Duration::from_millis(50);
                    let mut messages = pubsub.on_message();
                    while let Some(msg) = messages.next().await {
                        if let Some(event) = parse_announcement(msg.get_payload_bytes()) {
                            let _ = tx.send(event);
                        }
                    }
                    tracing::debug!("redis announcement subscription ended; reconnecting");
                }
                Err(error) => tracing::debug!(%error, "redis subscribe failed"),
            },
            Err(error) => tracing::debug!(%error, "redis pubsub connect failed"),
        }
        drop(tx);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// `rev\n<seq>\n<ms>\n<kind>\n<value>` or `keys\n<version>`.
fn parse_announcement(payload: &[u8]) -> Option<StoreEvent> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.splitn(5, '\n');
    match parts.next()? {
        "rev" => Some(StoreEvent::Revocation(RevocationEvent {
            seq: parts.next()?.parse().ok()?,
            revoked_at_ms: parts.next()?.parse().ok()?,
            kind: RevocationKind::parse(parts.next()?)?,
            value: parts.next()?.to_string(),
        })),
        "keys" => Some(StoreEvent::KeysChanged {
            version: parts.next()?.parse().ok()?,
        }),
        _ => None,
    }
}

/// Stream entries as (id, flat field list).
type Entries = Vec<(String, Vec<String>)>;

/// Up to `count` entries of a stream whose ids are `<seq>-0`, after `after`.
async fn xrange_after(
    conn: &mut Conn,
    key: &str,
    after: u64,
    count: usize,
) -> Result<Entries, StoreError> {
    redis::cmd("XRANGE")
        .arg(key)
        .arg(format!("({after}-0"))
        .arg("+")
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await
        .map_err(unavailable)
}

fn field<'a>(fields: &'a [String], name: &str) -> &'a str {
    fields
        .chunks(2)
        .find(|kv| kv[0] == name)
        .and_then(|kv| kv.get(1))
        .map(String::as_str)
        .unwrap_or("")
}

fn entry_seq(id: &str) -> u64 {
    id.split('-')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn audit_entry(id: &str, f: &[String]) -> AuditRecord {
    AuditRecord {
        seq: entry_seq(id),
        time: field(f, "time")
            .parse::<i64>()
            .unwrap_or(0)
            .div_euclid(1000),
        actor: field(f, "actor").into(),
        action: field(f, "action").into(),
        target: field(f, "target").into(),
        reason: field(f, "reason").into(),
        request_id: field(f, "request_id").into(),
    }
}

impl Store for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn append_revocation(
        &self,
        rev: NewRevocation,
    ) -> BoxFuture<'_, Result<RevocationEvent, StoreError>> {
        Box::pin(async move {
            let target = revocation_target(rev.kind, &rev.value);
            let (seq, ms, aseq): (u64, i64, u64) = self
                .inner
                .revoke
                .key(REV_SEQ)
                .key(REV_LOG)
                .key(AUDIT_SEQ)
                .key(AUDIT_LOG)
                .arg(rev.kind.as_str())
                .arg(&rev.value)
                .arg(&rev.reason)
                .arg(&rev.actor)
                .arg(&rev.request_id)
                .arg(&target)
                .arg(CHANNEL)
                .invoke_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            let audit = NewAudit {
                actor: rev.actor,
                action: "revoke".into(),
                target,
                reason: rev.reason,
                request_id: rev.request_id,
            };
            crate::audit::log(&audit.recorded(aseq, ms));
            Ok(RevocationEvent {
                seq,
                kind: rev.kind,
                value: rev.value,
                revoked_at_ms: ms,
            })
        })
    }

    fn revocations_after(
        &self,
        after: u64,
        since_ms: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<RevocationEvent>, StoreError>> {
        Box::pin(async move {
            let mut out = Vec::new();
            let mut cursor = after;
            // Entries older than `since_ms` are skipped here, so keep reading until
            // `limit` newer ones are found or the log ends.
            loop {
                let page = xrange_after(&mut self.conn(), REV_LOG, cursor, limit).await?;
                let full = page.len() == limit;
                for (id, f) in &page {
                    cursor = entry_seq(id);
                    let at: i64 = field(f, "at").parse().unwrap_or(0);
                    if at < since_ms {
                        continue;
                    }
                    let Some(kind) = RevocationKind::parse(field(f, "kind")) else {
                        continue;
                    };
                    out.push(RevocationEvent {
                        seq: cursor,
                        kind,
                        value: field(f, "value").into(),
                        revoked_at_ms: at,
                    });
                }
                if !full || out.len() >= limit {
                    out.truncate(limit);
                    return Ok(out);
                }
            }
        })
    }

    fn head(&self) -> BoxFuture<'_, Result<Head, StoreError>> {
        Box::pin(async move {
            let (seq, version): (Option<u64>, Option<u64>) = self
                .conn()
                .mget(&[REV_SEQ, KEYS_VERSION])
                .await
                .map_err(unavailable)?;
            Ok(Head {
                revocation_seq: seq.unwrap_or(0),
                keys_version: version.unwrap_or(0),
            })
        })
    }

    fn prune_revocations(
        &self,
        before_ms: i64,
        token_before_ms: i64,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            // Entries are in seq order, and seqs are assigned in store-time order, so the
            // entries older than `before_ms` form a prefix: trim up to its end. Token
            // entries past their own, shorter cut-off are deleted one by one (XDEL)
            // beyond that prefix. `rev:seq` (the head) is a separate key, never touched.
            const PAGE: usize = 1000;
            let mut cursor = 0;
            let mut cut = None;
            let mut tokens: Vec<String> = Vec::new();
            let newest = before_ms.max(token_before_ms);
            'scan: loop {
                let page = xrange_after(&mut self.conn(), REV_LOG, cursor, PAGE).await?;
                for (id, f) in &page {
                    let at = field(f, "at").parse::<i64>().unwrap_or(i64::MAX);
                    if at >= newest {
                        break 'scan;
                    }
                    if at < before_ms && tokens.is_empty() {
                        cut = Some(entry_seq(id));
                    } else if at < token_before_ms && field(f, "kind") == "token" {
                        tokens.push(id.clone());
                    }
                    cursor = entry_seq(id);
                }
                if page.len() < PAGE {
                    break;
                }
            }
            let mut pruned = self.trim_before(cut).await?;
            for ids in tokens.chunks(PAGE) {
                let n: u64 = redis::cmd("XDEL")
                    .arg(REV_LOG)
                    .arg(ids)
                    .query_async(&mut self.conn())
                    .await
                    .map_err(unavailable)?;
                pruned += n;
            }
            Ok(pruned)
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.inner.events.subscribe()
    }

    fn load_keys(&self) -> BoxFuture<'_, Result<KeySet, StoreError>> {
        Box::pin(async move {
            let (version, records): (u64, Vec<String>) = self
                .inner
                .load_keys
                .key(KEYS)
                .key(KEYS_VERSION)
                .invoke_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            let keys = decode_key_records(&records)?;
            Ok(KeySet { version, keys })
        })
    }

    fn save_keys(
        &self,
        expected_version: u64,
        upserts: Vec<KeyRecord>,
        audit: Vec<NewAudit>,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let mut invocation = self.inner.save_keys.prepare_invoke();
            invocation
                .key(KEYS)
                .key(KEYS_VERSION)
                .key(AUDIT_SEQ)
                .key(AUDIT_LOG)
                .arg(expected_version)
                .arg(CHANNEL)
                .arg(upserts.len());
            for k in &upserts {
                let json = encode_key_record(k)?;
                invocation.arg(&k.kid).arg(json);
            }
            for a in &audit {
                invocation
                    .arg(&a.actor)
                    .arg(&a.action)
                    .arg(&a.target)
                    .arg(&a.reason)
                    .arg(&a.request_id);
            }
            let out: Vec<i64> = invocation
                .invoke_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            match out.as_slice() {
                [-1] => Err(StoreError::Conflict),
                [version, ms, seqs @ ..] => {
                    for (seq, a) in seqs.iter().zip(&audit) {
                        crate::audit::log(&a.recorded(*seq as u64, *ms));
                    }
                    Ok(*version as u64)
                }
                _ => Err(StoreError::Unavailable("unexpected script reply".into())),
            }
        })
    }

    fn append_audit(&self, audit: NewAudit) -> BoxFuture<'_, Result<AuditRecord, StoreError>> {
        Box::pin(async move {
            let (seq, ms): (u64, i64) = self
                .inner
                .audit
                .key(AUDIT_SEQ)
                .key(AUDIT_LOG)
                .arg(&audit.actor)
                .arg(&audit.action)
                .arg(&audit.target)
                .arg(&audit.reason)
                .arg(&audit.request_id)
                .invoke_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            let record = audit.recorded(seq, ms);
            crate::audit::log(&record);
            Ok(record)
        })
    }

    fn claim_once(&self, key: String, until_ms: i64) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let set: Option<String> = redis::cmd("SET")
                .arg(format!("{{latch}}:seen:{key}"))
                .arg("1")
                .arg("NX")
                .arg("PXAT")
                .arg(until_ms.max(crate::time::now_ms() + 1))
                .query_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            Ok(set.is_some())
        })
    }

    fn open_session(
        &self,
        hash: String,
        record: RefreshRecord,
        audit: NewAudit,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let (seq, ms): (u64, i64) = self
                .inner
                .open_session
                .key(refresh_key(&hash))
                .key(AUDIT_SEQ)
                .key(AUDIT_LOG)
                .arg(encode_refresh(&record)?)
                .arg(record.expires_at_ms)
                .arg(&audit.actor)
                .arg(&audit.action)
                .arg(&audit.target)
                .arg(&audit.reason)
                .arg(&audit.request_id)
                .invoke_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            crate::audit::log(&audit.recorded(seq, ms));
            Ok(())
        })
    }

    fn refresh_token(
        &self,
        hash: String,
    ) -> BoxFuture<'_, Result<Option<(RefreshRecord, bool)>, StoreError>> {
        Box::pin(async move {
            let (rec, used): (Option<String>, Option<String>) = redis::cmd("HMGET")
                .arg(refresh_key(&hash))
                .arg("rec")
                .arg("used")
                .query_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            match rec {
                Some(json) => Ok(Some((decode_refresh(&json)?, used.as_deref() == Some("1")))),
                None => Ok(None),
            }
        })
    }

    fn rotate_refresh(
        &self,
        old_hash: String,
        new_hash: String,
        new: RefreshRecord,
    ) -> BoxFuture<'_, Result<Rotation, StoreError>> {
        Box::pin(async move {
            let reply: (i64, Option<String>) = {
                let v: Vec<redis::Value> = self
                    .inner
                    .rotate_refresh
                    .key(refresh_key(&old_hash))
                    .key(refresh_key(&new_hash))
                    .arg(encode_refresh(&new)?)
                    .arg(new.expires_at_ms)
                    .invoke_async(&mut self.conn())
                    .await
                    .map_err(unavailable)?;
                let code = v
                    .first()
                    .and_then(|x| redis::from_redis_value_ref::<i64>(x).ok())
                    .unwrap_or(-1);
                let rec = v
                    .get(1)
                    .and_then(|x| redis::from_redis_value_ref::<String>(x).ok());
                (code, rec)
            };
            match reply {
                (1, _) => Ok(Rotation::Rotated),
                (2, Some(json)) => Ok(Rotation::Reused(decode_refresh(&json)?)),
                (0, _) => Ok(Rotation::Unknown),
                _ => Err(StoreError::Unavailable("unexpected script reply".into())),
            }
        })
    }

    fn audit_after(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<AuditRecord>, StoreError>> {
        Box::pin(async move {
            let page = xrange_after(&mut self.conn(), AUDIT_LOG, after, limit).await?;
            Ok(page.iter().map(|(id, f)| audit_entry(id, f)).collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_parse() {
        match parse_announcement(b"rev\n7\n1700000000000\nsubject\nalice\nand more") {
            Some(StoreEvent::Revocation(e)) => {
                assert_eq!((e.seq, e.revoked_at_ms), (7, 1_700_000_000_000));
                assert_eq!(e.kind, RevocationKind::Subject);
                assert_eq!(e.value, "alice\nand more");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_announcement(b"keys\n3"),
            Some(StoreEvent::KeysChanged { version: 3 })
        ));
        for bad in [
            &b"rev\nx\n1\nsubject\na"[..],
            b"rev\n1\n1\nbogus\na",
            b"other",
            b"\xff",
        ] {
            assert!(parse_announcement(bad).is_none());
        }
    }
}
