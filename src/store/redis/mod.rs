//! The Redis store: the only file that speaks Redis.
//!
//! Only what must be ordered shares the hash tag `{latch}` (one slot, so one Lua script
//! touches several atomically, a requirement of Redis Cluster):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{latch}:rev:state` | hash | the revocation counter and its epochs: `epoch` (open, hex), `seq` (last assigned), `acked` (last confirmed on `min_replicas_ack` replicas), `run_id` (of the server that holds it), `closed` (`id:seq,...`), `start` |
//! | `{latch}:rev:seq` | string | before epochs: the counter; read once as a floor when the state is created |
//! | `{latch}:rev:log` | stream | revocations, entry id `<seq>-0`: kind, value, at (ms), reason, actor |
//! | `{latch}:audit:seq` / `{latch}:audit:log` | string / stream | audit records, id `<seq>-0` |
//! | `{latch}:keys` / `{latch}:keys:version` | hash / string | key records (opaque MAC'd JSON, see `keys::integrity`) by kid, and the manifest under `~manifest`; the key-set version |
//! | `{latch}:ssf:streams` | hash | Shared Signals streams by id: `<version>\n<json>` (compare-and-set on the version) |
//! | `{latch}:ssf:lease` | string | the node holding the push-delivery lease, expiring with it (`PX`) |
//!
//! Sessions and replay records have hash tags of their own, so a Cluster spreads them over
//! every master; what used to be one script with the log is now ordered steps
//! (docs/ARCHITECTURE.md, "Sessions on a sharded store"):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{latch:s:<family>}:rt:<sha256>` | hash | a refresh token's record (`rec`) and `used` |
//! | `{latch:s:<family>}:fam` | hash | `reused`: the family was caught reused; none of its tokens is served again |
//! | `{latch:seen:<sha256>}` | string | an assertion's one-time claim |
//! | `{latch}:rt:<sha256>` | hash | a refresh record of a chain begun before families |
//!
//! The node registry shares `{latch}` although it is never written with the log: every
//! node's freshness proof is recorded there before it is trusted, so on a Cluster a
//! registry on another shard would make that shard's loss stop every node too (found by
//! `tests/sessions.rs::sessions_spread_over_the_masters_and_a_lost_master_fails_closed_only_its_own`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{latch}:nodes:index` | sorted set | node id → the store time at which it is forgotten |
//! | `{latch}:nodes:node:<id>` | hash | the node's last report (see `nodes::NodeRecord`), store times in ms; expires when forgotten |
//! | `{latch}:nodes:acks:<id>` | list | `epoch:applied:ms` for each change of its `applied`, newest first, at most `nodes::ACK_HISTORY` |
//!
//! Announcements go to the channel `{latch}:events` (a shard channel, `SPUBLISH`, on a
//! Cluster), published from inside the script
//! that makes a seq `acked` (the revoke script itself when `min_replicas_ack = 0`, else the
//! ack script run after `WAIT`): a revocation is never announced before it is in the log
//! and, where required, on replicas.
//!
//! Every script that reads the counter first runs `ENSURE`: if the state is missing
//! (first start, `FLUSHALL`, eviction, `DEL`) or was written by a server with another
//! `run_id` (restart, restore, failover), it closes the old epoch (if any) at the seq
//! this server has and opens a new one, continuing from the highest seq anywhere
//! (counter, stream). The new epoch's id is random, passed in by the caller, since Lua's
//! random numbers are not.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::Script;
use tokio::sync::broadcast;

use topology::{redact, Conn, Options, Target, Topology};

use super::{
    decode_refresh, encode_refresh, BoxFuture, ContractWrite, GrantWrite, Head, ListRecords, Store,
    StoreError, StoreEvent,
};
use crate::audit::{AuditRecord, NewAudit};
use crate::keys::{KeySet, StoredKey};
use crate::nodes::{Ack, NodeRecord, NodeReport, Registry};
use crate::revocation::{
    new_epoch_id, parse_closed, revocation_target, NewRevocation, RevocationEvent, RevocationKind,
};
use crate::sessions::{self, RefreshRecord, Rotation};
use crate::ssf::StoredStream;
use crate::status::{ListId, ListMeta};

pub mod settings;
pub mod topology;

const REV_STATE: &str = "{latch}:rev:state";
/// The counter before epochs; a floor for the first state.
const LEGACY_REV_SEQ: &str = "{latch}:rev:seq";
const REV_LOG: &str = "{latch}:rev:log";
const AUDIT_SEQ: &str = "{latch}:audit:seq";
const AUDIT_LOG: &str = "{latch}:audit:log";
const KEYS: &str = "{latch}:keys";
const KEYS_VERSION: &str = "{latch}:keys:version";
const CHANNEL: &str = "{latch}:events";
/// Contract amendments: field `<doc>\n<version>` → the amendment's JSON.
const CONTRACTS: &str = "{latch}:contracts";
/// Latest version per document.
const CONTRACTS_LATEST: &str = "{latch}:contracts:latest";
/// Cancelled amendments: field `<doc>\n<version>` → 1.
const CONTRACTS_CANCELLED: &str = "{latch}:contracts:cancelled";
/// Grants: field id → the record's JSON.
const GRANTS: &str = "{latch}:grants";
/// Grant versions: field id → version (the compare-and-set).
const GRANTS_VERSION: &str = "{latch}:grants:version";
const NODE_INDEX: &str = "{latch}:nodes:index";

fn node_key(id: &str) -> String {
    format!("{{latch}}:nodes:node:{id}")
}

fn node_acks_key(id: &str) -> String {
    format!("{{latch}}:nodes:acks:{id}")
}
const SSF_STREAMS: &str = "{latch}:ssf:streams";
const SSF_LEASE: &str = "{latch}:ssf:lease";

/// A refresh token's Redis keys from its store key (`sessions::store_key`): its record
/// and its family's reuse mark, both under the family's own hash tag, so that a rotation
/// and a reuse mark are one slot while families spread over every master. A bare hash (a
/// token without a family, written before families) keeps its old key in `{latch}` and
/// has no family mark.
fn refresh_keys(key: &str) -> (String, Option<String>) {
    match key.split_once('.') {
        Some((family, hash)) => (
            format!("{{latch:s:{family}}}:rt:{hash}"),
            Some(format!("{{latch:s:{family}}}:fam")),
        ),
        None => (legacy_refresh_key(key), None),
    }
}

/// Where a token's record was kept before families: `{latch}`.
fn legacy_refresh_key(key: &str) -> String {
    format!("{{latch}}:rt:{}", sessions::key_hash(key))
}

/// An assertion's replay record, under its own hash tag.
fn seen_key(key: &str) -> String {
    format!("{{latch:seen:{key}}}")
}

/// Store time in ms, inside a script.
const NOW_MS: &str = "local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// Makes sure the revocation state exists and belongs to this server's history; opens a
/// new epoch otherwise (or when `force`). KEYS[1] state, KEYS[2] rev:log, KEYS[3] legacy
/// rev:seq. Returns epoch, seq, acked, closed, bumped, run_id.
const ENSURE: &str = "
local function log_last(log)
  if redis.call('EXISTS', log) == 0 then return 0 end
  local info = redis.call('XINFO', 'STREAM', log)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      return tonumber(string.match(info[i + 1], '^(%d+)')) or 0
    end
  end
  return 0
end
local function highest_closed(closed)
  local m = 0
  for n in string.gmatch(closed, ':(%d+)') do m = math.max(m, tonumber(n)) end
  return m
end
local function ensure(new_id, force)
  local rid = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)') or ''
  local s = redis.call('HMGET', KEYS[1], 'epoch', 'seq', 'acked', 'run_id', 'closed', 'start')
  local epoch, seq, acked, closed = s[1], tonumber(s[2] or '0'), tonumber(s[3] or '0'), s[5] or ''
  local start = tonumber(s[6] or '') or seq or 0
  local floor = math.max(highest_closed(closed), start)
  -- A state no script writes (a closed epoch above the open one's start, a counter below
  -- its start or below what it acknowledged) was rewritten: seqs of the open epoch would
  -- not be above every closing seq, so its revocations could miss older stamps. Close it.
  local consistent = seq ~= nil and acked ~= nil and floor <= seq and acked <= seq
  if epoch and s[4] == rid and consistent and not force then
    return epoch, seq, acked, closed, 0, rid
  end
  seq = seq or 0
  if epoch then
    if closed ~= '' then closed = closed .. ',' end
    closed = closed .. epoch .. ':' .. seq
  else
    closed = ''
    seq = math.max(seq, tonumber(redis.call('GET', KEYS[3]) or '0'))
  end
  seq = math.max(seq, floor, log_last(KEYS[2]))
  redis.call('HSET', KEYS[1], 'epoch', new_id, 'seq', seq, 'acked', seq, 'run_id', rid,
    'closed', closed, 'start', seq)
  return new_id, seq, seq, closed, 1, rid
end
";

/// The head. KEYS: state rev:log legacy keys:version. ARGV: new epoch id, force (0/1).
const HEAD: &str = "
local epoch, seq, acked, closed, bumped = ensure(ARGV[1], ARGV[2] == '1')
return {epoch, acked, closed, redis.call('GET', KEYS[4]) or '0', bumped, ms}
";

/// Closes the epoch by request, with an audit record.
/// KEYS: state rev:log legacy keys:version audit:seq audit:log.
/// ARGV: new epoch id, actor, action, target, reason, request_id.
const BUMP: &str = "
local epoch, seq, acked, closed = ensure(ARGV[1], true)
local aseq = redis.call('INCR', KEYS[5])
redis.call('XADD', KEYS[6], aseq .. '-0', 'time', ms, 'actor', ARGV[2], 'action', ARGV[3],
  'target', ARGV[4], 'reason', ARGV[5], 'request_id', ARGV[6])
return {epoch, acked, closed, redis.call('GET', KEYS[4]) or '0', aseq, ms}
";

/// Assigns the seq, logs the revocation and its audit record; with no replica acks to
/// wait for, marks it acked and announces it at once.
/// KEYS: state rev:log legacy audit:seq audit:log.
/// ARGV: new epoch id, kind value reason actor request_id target channel min_acks.
const REVOKE: &str = "
local epoch, seq, _, _, _, rid = ensure(ARGV[1], false)
seq = seq + 1
redis.call('HSET', KEYS[1], 'seq', seq)
redis.call('XADD', KEYS[2], seq .. '-0', 'kind', ARGV[2], 'value', ARGV[3], 'at', ms,
  'reason', ARGV[4], 'actor', ARGV[5])
local aseq = redis.call('INCR', KEYS[4])
redis.call('XADD', KEYS[5], aseq .. '-0', 'time', ms, 'actor', ARGV[5], 'action', ARGV[14] or 'revoke',
  'target', ARGV[7], 'reason', ARGV[4], 'request_id', ARGV[6])
if ARGV[9] == '0' then
  redis.call('HSET', KEYS[1], 'acked', seq)
  redis.call(PUB, ARGV[8], 'rev\\n' .. epoch .. '\\n' .. seq .. '\\n' .. ms .. '\\n' .. ARGV[2] .. '\\n' .. ARGV[3])
end
return {epoch, seq, ms, aseq, rid}
";

/// Runs before [`REVOKE`] in the contract script, in the same atomic call: the
/// compare-and-set on the document's version (or the cancellation's checks), then the
/// history write; REVOKE then appends the log entry (kind `contract`), the audit record
/// and the announcement. KEYS[6] contracts, KEYS[7] contracts:latest, KEYS[8]
/// contracts:cancelled. ARGV[10] doc, ARGV[11] version, ARGV[12] amendment JSON, ARGV[13]
/// `amend` or `cancel`. Returns {-1} on a lost compare-and-set.
const CONTRACT_CHECK: &str = "
local cfield = ARGV[10] .. '\\n' .. ARGV[11]
if ARGV[13] == 'amend' then
  local latest = tonumber(redis.call('HGET', KEYS[7], ARGV[10]) or '0')
  if latest + 1 ~= tonumber(ARGV[11]) then return {-1} end
  redis.call('HSET', KEYS[6], cfield, ARGV[12])
  redis.call('HSET', KEYS[7], ARGV[10], ARGV[11])
else
  if redis.call('HEXISTS', KEYS[6], cfield) == 0 or redis.call('HEXISTS', KEYS[8], cfield) == 1 then
    return {-1}
  end
  redis.call('HSET', KEYS[8], cfield, 1)
end
";

/// Runs before [`REVOKE`] in the grant script, in the same atomic call: the
/// compare-and-set on the grant's version, then the record write; REVOKE then appends the
/// log entry (kind `grant`), the audit record and the announcement. KEYS[6] grants,
/// KEYS[7] grants:version. ARGV[10] id, ARGV[11] expected version, ARGV[12] record JSON,
/// ARGV[13] `grant`, or `restore` (ARGV[11] is then the record's version, written iff the
/// stored one is lower). Returns {-1} on a lost compare-and-set.
const GRANT_CHECK: &str = "
local gv = tonumber(redis.call('HGET', KEYS[7], ARGV[10]) or '0')
local want = tonumber(ARGV[11])
if ARGV[13] == 'restore' then
  if gv >= want then return {-1} end
  redis.call('HSET', KEYS[7], ARGV[10], want)
else
  if gv ~= want then return {-1} end
  redis.call('HSET', KEYS[7], ARGV[10], gv + 1)
end
redis.call('HSET', KEYS[6], ARGV[10], ARGV[12])
";

/// After `WAIT` confirmed the replicas: raises `acked` (replication is one ordered stream,
/// so every lower seq is on the replicas too) and announces. Returns 0 and changes nothing
/// if this is not the server the revoke script ran on (a reconnect or failover between
/// the script and `WAIT` would make `WAIT` prove nothing), the entry is not in its log,
/// or the epoch moved on.
/// KEYS: state rev:log. ARGV: epoch seq ms kind value channel run_id.
const ACK: &str = "
if string.match(redis.call('INFO', 'server'), 'run_id:(%w+)') ~= ARGV[7] then return 0 end
if #redis.call('XRANGE', KEYS[2], ARGV[2] .. '-0', ARGV[2] .. '-0') ~= 1 then return 0 end
local s = redis.call('HMGET', KEYS[1], 'epoch', 'acked')
if s[1] ~= ARGV[1] then return 0 end
if tonumber(s[2] or '0') < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'acked', ARGV[2])
end
redis.call(PUB, ARGV[6], 'rev\\n' .. ARGV[1] .. '\\n' .. ARGV[2] .. '\\n' .. ARGV[3] .. '\\n' .. ARGV[4] .. '\\n' .. ARGV[5])
return 1
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
redis.call(PUB, ARGV[2], 'keys\\n' .. nv)
return out
";

/// The key set and its version, read together. KEYS: keys keys:version.
const LOAD_KEYS: &str = "
return {redis.call('GET', KEYS[2]) or '0', redis.call('HGETALL', KEYS[1])}
";

/// A session's first refresh token (its audit record is written before, in `{latch}`).
/// KEYS: rt:<hash>. ARGV: record expires_at_ms.
const OPEN_SESSION: &str = "
redis.call('HSET', KEYS[1], 'rec', ARGV[1], 'used', '0')
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 1
";

/// A refresh token's record and whether it is spent: used, or its family marked reused.
/// KEYS: rt:<hash> [fam].
const READ_REFRESH: &str = "
local v = redis.call('HMGET', KEYS[1], 'rec', 'used')
if not v[1] then return {} end
local spent = v[2] == '1'
if #KEYS >= 2 and redis.call('HEXISTS', KEYS[2], 'reused') == 1 then spent = true end
return {v[1], spent and '1' or '0'}
";

/// Marks the family reused until its last token can have expired: `ttl_ms` past the
/// store's now (the refresh-token lifetime, which bounds every token of the family).
const MARK_FAMILY: &str = "
local function mark(fam, ttl_ms)
  if redis.call('HSETNX', fam, 'reused', ms) == 1 then
    redis.call('PEXPIREAT', fam, ms + ttl_ms)
  end
end
";

/// Spends a refresh token and stores its successor, or says why not. A spent token, or
/// any token of a family marked reused, is reuse: the family is marked (here, atomically
/// with the detection) and nothing is stored.
/// KEYS: rt:<old> rt:<new> [fam]. ARGV: new record, new expires_at_ms, ttl_ms.
/// Returns {1} rotated, {2, old record} reused, {0} unknown.
const ROTATE_REFRESH: &str = "
local used = redis.call('HGET', KEYS[1], 'used')
if not used then return {0} end
local fam = KEYS[3]
if used == '1' or (fam and redis.call('HEXISTS', fam, 'reused') == 1) then
  if fam then mark(fam, tonumber(ARGV[3])) end
  return {2, redis.call('HGET', KEYS[1], 'rec')}
end
redis.call('HSET', KEYS[1], 'used', '1')
redis.call('HSET', KEYS[2], 'rec', ARGV[1], 'used', '0')
redis.call('PEXPIREAT', KEYS[2], ARGV[2])
return {1}
";

/// Undoes a rotation whose successor was never handed out (its confirmation failed):
/// the old token is live again and the successor gone, so the client's retry of the
/// 503 rotates instead of reading as reuse. Only if the successor is there and unspent
/// (so this call's own rotation ran: its key is new and random) and the family is not
/// marked reused (a presentation in between was reuse and stays so).
/// KEYS: rt:<old> rt:<new> [fam]. Returns 1 if undone.
const RELEASE_REFRESH: &str = "
if redis.call('HGET', KEYS[2], 'used') ~= '0' then return 0 end
if redis.call('HGET', KEYS[1], 'used') ~= '1' then return 0 end
if KEYS[3] and redis.call('HEXISTS', KEYS[3], 'reused') == 1 then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'used', '0')
return 1
";

/// How long a 503 answer waits, at most, for [`RedisStore::release`] to undo its rotation.
const RELEASE_BUDGET: Duration = Duration::from_secs(1);

/// Marks the family reused if this token is spent. KEYS: rt:<hash> fam.
/// Returns 1 if marked (now or before).
const MARK_REUSED: &str = "
if redis.call('HGET', KEYS[1], 'used') ~= '1' then return 0 end
local r = cjson.decode(redis.call('HGET', KEYS[1], 'rec'))
local ttl = tonumber(r['expires_at_ms']) - tonumber(r['issued_at_ms'])
mark(KEYS[2], math.max(ttl, 1000))
return 1
";

/// One node's report (the rules of `nodes::NodeRecord::updated`).
/// KEYS: node hash, its acks list, the index. ARGV: id name address version
/// max_staleness ttl epoch applied keys_version fresh_at ('' keeps it) ready gone_kept
/// ack_history. Returns the store time.
const REPORT_NODE: &str = "
local prev = redis.call('HMGET', KEYS[1], 'started_at', 'fresh_at', 'epoch', 'applied')
local started = prev[1] or ms
local fresh = tonumber(prev[2] or '0') or 0
if ARGV[10] ~= '' then fresh = math.max(fresh, tonumber(ARGV[10])) end
if prev[3] ~= ARGV[7] or prev[4] ~= ARGV[8] then
  redis.call('LPUSH', KEYS[2], ARGV[7] .. ':' .. ARGV[8] .. ':' .. ms)
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[13]) - 1)
end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'name', ARGV[2], 'address', ARGV[3],
  'version', ARGV[4], 'max_staleness', ARGV[5], 'ttl', ARGV[6], 'epoch', ARGV[7],
  'applied', ARGV[8], 'keys_version', ARGV[9], 'fresh_at', string.format('%d', fresh),
  'ready', ARGV[11], 'started_at', started, 'heartbeat_at', ms)
local forget = ms + tonumber(ARGV[6]) + tonumber(ARGV[12])
redis.call('PEXPIREAT', KEYS[1], forget)
redis.call('PEXPIREAT', KEYS[2], forget)
redis.call('ZADD', KEYS[3], forget, ARGV[1])
return ms
";

/// Drops forgotten nodes from the index and lists the others. KEYS: the index.
/// Returns {store time, ids}.
const NODE_IDS: &str = "
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ms)
return {ms, redis.call('ZRANGE', KEYS[1], 0, -1)}
";

/// Every listed node's hash and acks. KEYS: (node hash, acks list)*.
const NODE_RECORDS: &str = "
local out = {}
for i = 1, #KEYS, 2 do
  table.insert(out, redis.call('HGETALL', KEYS[i]))
  table.insert(out, redis.call('LRANGE', KEYS[i + 1], 0, -1))
end
return out
";

/// KEYS: audit:seq audit:log. ARGV: actor action target reason request_id.
const AUDIT: &str = "
local aseq = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], aseq .. '-0', 'time', ms, 'actor', ARGV[1], 'action', ARGV[2],
  'target', ARGV[3], 'reason', ARGV[4], 'request_id', ARGV[5])
return {aseq, ms}
";

/// Compare-and-set of one stream. KEYS: ssf:streams. ARGV: id expected json.
/// Returns the new version, or -1 if the stored version is not `expected` (0: absent).
const SSF_SAVE: &str = "
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local v = 0
if cur then v = tonumber(string.match(cur, '^(%d+)')) or -2 end
if v ~= tonumber(ARGV[2]) then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], (v + 1) .. '\\n' .. ARGV[3])
return v + 1
";

/// Takes or renews the lease. KEYS: ssf:lease. ARGV: holder ttl_ms. Returns 1 if held.
/// Status lists (Token Status List): each list is one sorted set under its own hash tag,
/// `{latch:sl:<id>}`, so lists spread over a Cluster's masters (their records are not
/// ordered with the log). The list's metadata is the member at score -1; each record is a
/// member at its index. The index of live lists, `{latch:sl:index}`, scores ids by expiry.
fn status_key(id: ListId) -> String {
    format!("{{latch:sl:{id}}}")
}
const STATUS_INDEX: &str = "{latch:sl:index}";

/// KEYS[1] the list; ARGV[1] its metadata JSON, ARGV[2] its expiry (Unix ms).
const STATUS_OPEN: &str = "
redis.call('ZADD', KEYS[1], -1, ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 1
";

/// KEYS[1] the list; ARGV: index, record, index, record, ... Nothing is written to a list
/// the store no longer holds (expired or lost): 0, and the node abandons it.
const STATUS_APPEND: &str = "
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = #ARGV
local i = 1
while i <= n do
  local last = math.min(i + 999, n)
  redis.call('ZADD', KEYS[1], unpack(ARGV, i, last))
  i = last + 1
end
return 1
";

const SSF_LEASE_SCRIPT: &str = "
local h = redis.call('GET', KEYS[1])
if h and h ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

/// `<version>\n<json>` as stored in `{latch}:ssf:streams`.
fn stored_stream(id: String, value: &str) -> Result<StoredStream, StoreError> {
    let (version, json) = value.split_once('\n').unwrap_or(("", ""));
    let version = version
        .parse()
        .map_err(|_| StoreError::Unavailable(format!("corrupt stream record {id}")))?;
    Ok(StoredStream {
        id,
        version,
        json: json.to_string(),
    })
}

/// Redis-backed [`Store`]. Cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Commands; reconnects by itself, fails fast while Redis is away.
    conn: Conn,
    events: broadcast::Sender<StoreEvent>,
    /// Whether the announcement subscription is up right now.
    feed_live: AtomicBool,
    replication: Replication,
    head: Script,
    bump: Script,
    ack: Script,
    revoke: Script,
    contract: Script,
    grant: Script,
    save_keys: Script,
    load_keys: Script,
    audit: Script,
    open_session: Script,
    read_refresh: Script,
    rotate_refresh: Script,
    release_refresh: Script,
    mark_reused: Script,
    report_node: Script,
    node_ids: Script,
    node_records: Script,
    ssf_save: Script,
    ssf_lease: Script,
    status_open: Script,
    status_append: Script,
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(redact(&e.to_string()))
}

fn script(body: &str) -> Script {
    Script::new(&format!("{NOW_MS}{body}"))
}

/// A script that reads or moves the revocation counter: `ENSURE` first.
fn counter_script(body: &str) -> Script {
    Script::new(&format!("{NOW_MS}{ENSURE}{body}"))
}

/// A script that announces, with `publish`: `SPUBLISH` on a Cluster (a shard channel:
/// the message goes to the shard that owns `{latch}`, where the script runs, not to every
/// node of the cluster bus), `PUBLISH` elsewhere.
fn announcing(script: fn(&str) -> Script, body: &str, publish: &str) -> Script {
    script(&format!("local PUB = '{publish}'\n{body}"))
}

/// How many replicas must confirm a revocation before it is answered and announced.
#[derive(Debug, Clone, Copy, Default)]
pub struct Replication {
    /// `store.min_replicas_ack`; 0: the master's reply is enough.
    pub min_acks: u32,
    /// `store.replica_ack_timeout`: how long `WAIT` may block.
    pub timeout: Duration,
}

fn epoch_hex(id: u64) -> String {
    format!("{id:016x}")
}

fn parse_epoch(text: &str) -> Result<u64, StoreError> {
    u64::from_str_radix(text, 16)
        .ok()
        .filter(|id| *id != 0)
        .ok_or_else(|| StoreError::Unavailable(format!("corrupt epoch id {text:?}")))
}

/// A head from the reply of `HEAD` or `BUMP`: epoch, acked, closed, keys version, ...
fn head_reply(v: &[redis::Value]) -> Result<Head, StoreError> {
    let get = |i: usize| -> Result<String, StoreError> {
        v.get(i)
            .and_then(|x| redis::from_redis_value_ref::<String>(x).ok())
            .ok_or_else(|| StoreError::Unavailable("unexpected script reply".into()))
    };
    let num = |i: usize| -> Result<u64, StoreError> {
        get(i)?
            .parse()
            .map_err(|_| StoreError::Unavailable("unexpected script reply".into()))
    };
    Ok(Head {
        epoch: parse_epoch(&get(0)?)?,
        revocation_seq: num(1)?,
        closed: parse_closed(&get(2)?).map_err(StoreError::Unavailable)?,
        keys_version: num(3)?,
        // HEAD and BUMP both answer the store's time at index 5.
        time_ms: v
            .get(5)
            .and_then(|x| redis::from_redis_value_ref::<i64>(x).ok())
            .unwrap_or(0),
    })
}

impl RedisStore {
    /// Connects, refuses a Redis that may evict keys (see [`settings`]), and starts the
    /// task that forwards announcements. `timeout` bounds every round trip, so a hung
    /// Redis shows up as staleness, not as a stuck request.
    pub async fn connect(
        url: &str,
        options: Options,
        timeout: Duration,
        replication: Replication,
    ) -> Result<RedisStore, StoreError> {
        let (topology, mut conn) = open(url, options, timeout).await?;
        match settings::inspect(&mut conn).await {
            Ok(report) => {
                if !report.refusals.is_empty() {
                    return Err(StoreError::Open(report.refusals.join("; ")));
                }
                for warning in &report.warnings {
                    tracing::warn!(%warning, "redis settings");
                }
            }
            // Redis went away between connecting and asking: the node starts fail-closed
            // as for any outage; the operator sees why here.
            Err(e) => {
                tracing::warn!(error = %redact(&e.to_string()), "could not check the redis settings")
            }
        }
        let (events, _) = broadcast::channel(4096);
        let cluster = topology.is_cluster();
        let publish = if cluster { "SPUBLISH" } else { "PUBLISH" };
        let inner = Arc::new(Inner {
            conn,
            events,
            feed_live: AtomicBool::new(false),
            replication,
            head: counter_script(HEAD),
            bump: counter_script(BUMP),
            ack: announcing(Script::new, ACK, publish),
            revoke: announcing(counter_script, REVOKE, publish),
            contract: announcing(
                counter_script,
                &format!("{CONTRACT_CHECK}{REVOKE}"),
                publish,
            ),
            grant: announcing(counter_script, &format!("{GRANT_CHECK}{REVOKE}"), publish),
            save_keys: announcing(script, SAVE_KEYS, publish),
            load_keys: Script::new(LOAD_KEYS),
            audit: script(AUDIT),
            open_session: Script::new(OPEN_SESSION),
            read_refresh: Script::new(READ_REFRESH),
            rotate_refresh: script(&format!("{MARK_FAMILY}{ROTATE_REFRESH}")),
            release_refresh: Script::new(RELEASE_REFRESH),
            mark_reused: script(&format!("{MARK_FAMILY}{MARK_REUSED}")),
            report_node: script(REPORT_NODE),
            node_ids: script(NODE_IDS),
            node_records: Script::new(NODE_RECORDS),
            ssf_save: Script::new(SSF_SAVE),
            ssf_lease: Script::new(SSF_LEASE_SCRIPT),
            status_open: Script::new(STATUS_OPEN),
            status_append: Script::new(STATUS_APPEND),
        });
        tokio::spawn(forward_announcements(topology, Arc::downgrade(&inner)));
        Ok(RedisStore { inner })
    }

    /// Connects and reads the settings, for `latch check`; starts nothing.
    pub async fn inspect_settings(
        url: &str,
        options: Options,
        timeout: Duration,
    ) -> Result<settings::Report, StoreError> {
        let (_, mut conn) = open(url, options, timeout).await?;
        settings::inspect(&mut conn)
            .await
            .map_err(|e| StoreError::Unavailable(redact(&e.to_string())))
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

    /// Sessions wait for replicas too, but a shortfall is only logged and counted: the
    /// write cannot be undone (an assertion is spent, a refresh token rotated), and
    /// failing the request would only make the user start over.
    async fn best_effort_replicas(&self, conn: &mut Conn, key: &str, what: &str) {
        if self.inner.replication.min_acks > 0 {
            if let Err(error) = self.await_replicas(conn, key).await {
                tracing::warn!(%error, what, "session write not confirmed by replicas");
            }
        }
    }

    /// After a rotation that is answered 503 (its reply lost, or its replicas short):
    /// undoes it if it ran and its successor is unseen ([`RELEASE_REFRESH`]), so the
    /// client's retry is a rotation, not reuse that logs the user out. The 503 waits for
    /// it: a few tries within [`RELEASE_BUDGET`] (the failure that lost the rotation's
    /// reply, such as a Cluster client rerouting after a master died, often fails the
    /// next command too; the script is idempotent). If no try succeeds, the token stays
    /// spent and the retry fails closed (reuse, the session revoked), as before.
    async fn release(&self, conn: &mut Conn, old_rt: &str, new_rt: &str, fam: Option<&str>) {
        let tries = async {
            let mut pause = Duration::from_millis(25);
            loop {
                let mut invocation = self.inner.release_refresh.key(old_rt);
                invocation.key(new_rt);
                if let Some(fam) = fam {
                    invocation.key(fam);
                }
                match invocation.invoke_async::<i64>(conn).await {
                    Ok(undone) => return undone,
                    Err(error) => {
                        let error = redact(&error.to_string());
                        tracing::debug!(%error, "undoing an unconfirmed rotation failed; trying again");
                        tokio::time::sleep(pause).await;
                        pause *= 2;
                    }
                }
            }
        };
        match tokio::time::timeout(RELEASE_BUDGET, tries).await {
            Ok(1) => tracing::info!("unconfirmed refresh-token rotation undone; a retry rotates"),
            Ok(_) => {}
            Err(_) => {
                tracing::warn!("unconfirmed refresh-token rotation not undone; a retry is reuse")
            }
        }
    }

    /// `WAIT min_acks timeout` on `conn`, after the writes it must cover, on the master
    /// that holds `key` (the key just written). Fewer acks: unavailable (the caller
    /// answers 503 and announces nothing).
    async fn await_replicas(&self, conn: &mut Conn, key: &str) -> Result<(), StoreError> {
        let r = self.inner.replication;
        let acks = conn
            .wait_for(key, r.min_acks, r.timeout.as_millis() as u64)
            .await
            .map_err(unavailable)?;
        if acks < u64::from(r.min_acks) {
            metrics::counter!(crate::metrics::REPLICA_ACK_FAILURES).increment(1);
            return Err(StoreError::Unavailable(format!(
                "only {acks} of {} replicas confirmed the write in {:?}",
                r.min_acks, r.timeout
            )));
        }
        Ok(())
    }
}

/// The topology and a command connection. Errors never carry a password.
async fn open(
    url: &str,
    options: Options,
    timeout: Duration,
) -> Result<(Topology, Conn), StoreError> {
    let target = Target::parse(url).map_err(|e| StoreError::Open(format!("redis_url {e}")))?;
    let topology = Topology::new(target, options, timeout)
        .map_err(|e| StoreError::Open(format!("redis_url: {}", redact(&e.to_string()))))?;
    let conn = topology.connect().await.map_err(|e| {
        StoreError::Open(format!(
            "cannot connect to redis: {}",
            redact(&e.to_string())
        ))
    })?;
    Ok((topology, conn))
}

/// How soon the announcement subscription is tried again after it failed. Short and
/// fixed: a node is not fresh without it, so it must come back as soon as Redis does.
const RESUBSCRIBE: Duration = Duration::from_millis(50);

/// Subscribes to the announcement channel and forwards what arrives, reconnecting every
/// [`RESUBSCRIBE`]. Lost messages are not a correctness problem: the follower's head
/// checks find the gap and read the log; `feed_live` tells it whether to trust the feed.
async fn forward_announcements(topology: Topology, store: std::sync::Weak<Inner>) {
    for attempt in 0.. {
        // Ends with the store.
        let Some((tx, inner)) = store
            .upgrade()
            .map(|inner| (inner.events.clone(), Arc::downgrade(&inner)))
        else {
            return;
        };
        let set_live = |live: bool| {
            if let Some(i) = inner.upgrade() {
                i.feed_live.store(live, Ordering::Release);
            }
        };
        if topology.is_cluster() {
            let why = forward_sharded(&topology, &tx, &set_live).await;
            set_live(false);
            tracing::debug!(%why, "redis sharded announcement subscription lost; resubscribing");
            drop(tx);
            tokio::time::sleep(RESUBSCRIBE).await;
            continue;
        }
        let pubsub = match topology.pubsub_client(attempt).await {
            Ok(client) => client.get_async_pubsub().await,
            Err(e) => Err(e),
        };
        match pubsub {
            Ok(pubsub) => {
                let (mut sink, mut messages) = pubsub.split();
                match sink.subscribe(CHANNEL).await {
                    Ok(()) => {
                        set_live(true);
                        let why = forward_until_lost(&mut sink, &mut messages, &tx).await;
                        set_live(false);
                        tracing::debug!(why, "redis announcement subscription lost; resubscribing");
                    }
                    Err(e) => {
                        tracing::debug!(error = %redact(&e.to_string()), "redis subscribe failed")
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %redact(&e.to_string()), "redis pubsub connect failed")
            }
        }
        set_live(false);
        drop(tx);
        tokio::time::sleep(RESUBSCRIBE).await;
    }
}

/// How often the subscription connection is pinged, and how long a PONG may take. A server
/// that is frozen (SIGSTOP, a hung host) keeps the TCP connection open and says nothing, so
/// without this the subscription would stay on it after a Sentinel failover, `feed_live`
/// would stay true, and announcements from the new master would never arrive.
const FEED_PING: Duration = Duration::from_millis(500);
const FEED_PING_TIMEOUT: Duration = Duration::from_millis(1000);

/// On a Cluster: subscribes to the shard channel (`SSUBSCRIBE`), so announcements are
/// served by the master that owns `{latch}` alone instead of crossing every node's
/// cluster bus, and forwards them until the subscription is lost (a disconnection, the
/// slot moving away, a ping unanswered); returns why, for the log.
async fn forward_sharded(
    topology: &Topology,
    tx: &broadcast::Sender<StoreEvent>,
    set_live: &impl Fn(bool),
) -> String {
    let (pushes, mut received) = tokio::sync::mpsc::unbounded_channel();
    let mut conn = match topology.sharded_subscription(CHANNEL, pushes).await {
        Ok(conn) => conn,
        Err(e) => return format!("ssubscribe failed: {}", redact(&e.to_string())),
    };
    set_live(true);
    let mut ping = tokio::time::interval(FEED_PING);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            push = received.recv() => match push {
                Some(push) => match push.kind {
                    redis::PushKind::SMessage => {
                        let payload = push
                            .data
                            .get(1)
                            .and_then(|v| redis::from_redis_value_ref::<Vec<u8>>(v).ok());
                        if let Some(event) = payload.as_deref().and_then(parse_announcement) {
                            let _ = tx.send(event);
                        }
                    }
                    redis::PushKind::Disconnection => return "connection closed".into(),
                    redis::PushKind::SUnsubscribe => return "slot moved".into(),
                    _ => {}
                },
                None => return "connection closed".into(),
            },
            _ = ping.tick() => {
                match tokio::time::timeout(FEED_PING_TIMEOUT, Topology::ping_owner(&mut conn, CHANNEL)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return "ping failed".into(),
                    Err(_) => return "ping timed out".into(),
                }
            }
        }
    }
}

/// Forwards announcements until the subscription ends or stops answering pings; returns
/// why, for the log.
async fn forward_until_lost(
    sink: &mut redis::aio::PubSubSink,
    messages: &mut redis::aio::PubSubStream,
    tx: &broadcast::Sender<StoreEvent>,
) -> &'static str {
    let mut ping = tokio::time::interval(FEED_PING);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = messages.next() => match msg {
                Some(msg) => {
                    if let Some(event) = parse_announcement(msg.get_payload_bytes()) {
                        let _ = tx.send(event);
                    }
                }
                None => return "connection closed",
            },
            _ = ping.tick() => {
                match tokio::time::timeout(FEED_PING_TIMEOUT, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => return "ping failed",
                    Err(_) => return "ping timed out",
                }
            }
        }
    }
}

/// `rev\n<epoch>\n<seq>\n<ms>\n<kind>\n<value>` or `keys\n<version>`.
fn parse_announcement(payload: &[u8]) -> Option<StoreEvent> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.splitn(6, '\n');
    match parts.next()? {
        "rev" => Some(StoreEvent::Revocation {
            epoch: parse_epoch(parts.next()?).ok()?,
            event: RevocationEvent {
                seq: parts.next()?.parse().ok()?,
                revoked_at_ms: parts.next()?.parse().ok()?,
                kind: RevocationKind::parse(parts.next()?)?,
                value: parts.next()?.to_string(),
            },
        }),
        "keys" => Some(StoreEvent::KeysChanged {
            version: parts.next()?.parse().ok()?,
        }),
        _ => None,
    }
}

/// Appends an audit record's fields in the order every audit-writing script reads them
/// (actor, action, target, reason, request id).
fn audit_args<'i, 's>(
    inv: &'i mut redis::ScriptInvocation<'s>,
    a: &NewAudit,
) -> &'i mut redis::ScriptInvocation<'s> {
    inv.arg(&a.actor)
        .arg(&a.action)
        .arg(&a.target)
        .arg(&a.reason)
        .arg(&a.request_id)
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

impl RedisStore {
    /// One log entry with its audit record, announced once durable (and, with
    /// `min_replicas_ack`, replicated); with `contract`, the contract change's
    /// compare-and-set and history write in the same script.
    async fn append_logged(
        &self,
        rev: NewRevocation,
        contract: Option<ContractWrite>,
        grant: Option<GrantWrite>,
    ) -> Result<RevocationEvent, StoreError> {
        let target = match (&contract, &grant) {
            (_, Some(g)) => format!("grant:{}", g.id),
            (Some(w), _) if !w.audit_target.is_empty() => w.audit_target.clone(),
            _ => revocation_target(rev.kind, &rev.value),
        };
        let min_acks = self.inner.replication.min_acks;
        // One connection for the script and WAIT: WAIT covers this connection's writes.
        let mut conn = self.conn();
        let action = match (&contract, &grant) {
            (_, Some(g)) => g.action.as_str(),
            (None, None) => "revoke",
            (Some(w), _) if !w.audit_action.is_empty() => w.audit_action.as_str(),
            (Some(w), _) if w.cancel => "contract_cancel",
            (Some(_), _) => "contract_amend",
        };
        let script = if grant.is_some() {
            &self.inner.grant
        } else if contract.is_some() {
            &self.inner.contract
        } else {
            &self.inner.revoke
        };
        let mut invocation = script.prepare_invoke();
        invocation
            .key(REV_STATE)
            .key(REV_LOG)
            .key(LEGACY_REV_SEQ)
            .key(AUDIT_SEQ)
            .key(AUDIT_LOG)
            .arg(epoch_hex(new_epoch_id()))
            .arg(rev.kind.as_str())
            .arg(&rev.value)
            .arg(&rev.reason)
            .arg(&rev.actor)
            .arg(&rev.request_id)
            .arg(&target)
            .arg(CHANNEL)
            .arg(min_acks);
        if let Some(w) = &contract {
            invocation
                .key(CONTRACTS)
                .key(CONTRACTS_LATEST)
                .key(CONTRACTS_CANCELLED)
                .arg(&w.doc)
                .arg(w.version)
                .arg(&w.amendment)
                .arg(if w.cancel { "cancel" } else { "amend" })
                .arg(action);
        } else if let Some(g) = &grant {
            invocation
                .key(GRANTS)
                .key(GRANTS_VERSION)
                .arg(&g.id)
                .arg(g.expected)
                .arg(&g.record)
                .arg(if g.restore { "restore" } else { "grant" })
                .arg(action);
        }
        let reply: Vec<redis::Value> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if reply.len() == 1 {
            return Err(StoreError::Conflict);
        }
        let (epoch, seq, ms, aseq, run_id): (String, u64, i64, u64, String) =
            redis::from_redis_value_ref(&redis::Value::Array(reply))
                .map_err(|e| StoreError::Unavailable(format!("unexpected reply: {e}")))?;
        let audit = NewAudit {
            actor: rev.actor,
            action: action.into(),
            target,
            reason: rev.reason,
            request_id: rev.request_id,
        };
        crate::audit::log(&audit.recorded(aseq, ms));
        if min_acks > 0 {
            self.await_replicas(&mut conn, REV_STATE).await?;
            let acked: i64 = self
                .inner
                .ack
                .key(REV_STATE)
                .key(REV_LOG)
                .arg(&epoch)
                .arg(seq)
                .arg(ms)
                .arg(rev.kind.as_str())
                .arg(&rev.value)
                .arg(CHANNEL)
                .arg(&run_id)
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            if acked != 1 {
                return Err(StoreError::Unavailable(
                    "redis changed between the revocation and its replica check".into(),
                ));
            }
        }
        Ok(RevocationEvent {
            seq,
            kind: rev.kind,
            value: rev.value,
            revoked_at_ms: ms,
        })
    }
}

/// A node's record from its hash (flat field list) and acks list; `None` if the hash is
/// gone or unreadable (a node forgotten between the two reads).
fn node_record(hash: &[String], acks: &[String]) -> Option<NodeRecord> {
    let f = |name: &str| field(hash, name);
    let int = |name: &str| f(name).parse::<i64>().ok();
    let epoch = |text: &str| u64::from_str_radix(text, 16).ok();
    Some(NodeRecord {
        id: f("id").to_string(),
        name: f("name").to_string(),
        address: f("address").to_string(),
        version: f("version").to_string(),
        max_staleness_ms: int("max_staleness")?,
        ttl_ms: int("ttl")?,
        epoch: epoch(f("epoch"))?,
        applied: f("applied").parse().ok()?,
        keys_version: f("keys_version").parse().ok()?,
        ready: f("ready") == "1",
        started_at_ms: int("started_at")?,
        fresh_at_ms: int("fresh_at")?,
        heartbeat_at_ms: int("heartbeat_at")?,
        acks: acks
            .iter()
            .filter_map(|a| {
                let mut p = a.splitn(3, ':');
                Some(Ack {
                    epoch: epoch(p.next()?)?,
                    applied: p.next()?.parse().ok()?,
                    at_ms: p.next()?.parse().ok()?,
                })
            })
            .collect(),
    })
    .filter(|r| !r.id.is_empty())
}

impl Store for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn append_revocation(
        &self,
        rev: NewRevocation,
    ) -> BoxFuture<'_, Result<RevocationEvent, StoreError>> {
        Box::pin(self.append_logged(rev, None, None))
    }

    fn append_contract(
        &self,
        write: ContractWrite,
        audit: NewAudit,
    ) -> BoxFuture<'_, Result<RevocationEvent, StoreError>> {
        let (rev, write) = write.with_audit(audit);
        Box::pin(self.append_logged(rev, Some(write), None))
    }

    fn append_grant(
        &self,
        write: GrantWrite,
        audit: NewAudit,
    ) -> BoxFuture<'_, Result<RevocationEvent, StoreError>> {
        let rev = write.log_entry(audit);
        Box::pin(self.append_logged(rev, None, Some(write)))
    }

    fn grant(&self, id: String) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn();
            redis::cmd("HGET")
                .arg(GRANTS)
                .arg(&id)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)
        })
    }

    fn grant_entries(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn();
            redis::cmd("HVALS")
                .arg(GRANTS)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)
        })
    }

    fn contract_entries(&self) -> BoxFuture<'_, Result<Vec<(String, bool)>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn();
            let all: Vec<(String, String)> = redis::cmd("HGETALL")
                .arg(CONTRACTS)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            let cancelled: Vec<String> = redis::cmd("HKEYS")
                .arg(CONTRACTS_CANCELLED)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            Ok(all
                .into_iter()
                .map(|(field, json)| {
                    let gone = cancelled.contains(&field);
                    (json, gone)
                })
                .collect())
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
            let mut conn = self.conn();
            let reply: Vec<redis::Value> = self
                .inner
                .head
                .key(REV_STATE)
                .key(REV_LOG)
                .key(LEGACY_REV_SEQ)
                .key(KEYS_VERSION)
                .arg(epoch_hex(new_epoch_id()))
                .arg("0")
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            let head = head_reply(&reply)?;
            let bumped = reply
                .get(4)
                .and_then(|x| redis::from_redis_value_ref::<i64>(x).ok())
                == Some(1);
            if bumped {
                tracing::warn!(
                    epoch = %epoch_hex(head.epoch),
                    seq = head.revocation_seq,
                    "redis revocation state missing, inconsistent or from another server run; new epoch opened"
                );
                if self.inner.replication.min_acks > 0 {
                    self.await_replicas(&mut conn, REV_STATE).await?;
                }
            }
            Ok(head)
        })
    }

    fn bump_epoch(&self, audit: NewAudit) -> BoxFuture<'_, Result<Head, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn();
            let reply: Vec<redis::Value> = audit_args(
                self.inner
                    .bump
                    .key(REV_STATE)
                    .key(REV_LOG)
                    .key(LEGACY_REV_SEQ)
                    .key(KEYS_VERSION)
                    .key(AUDIT_SEQ)
                    .key(AUDIT_LOG)
                    .arg(epoch_hex(new_epoch_id())),
                &audit,
            )
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
            let head = head_reply(&reply)?;
            let num = |i: usize| {
                reply
                    .get(i)
                    .and_then(|x| redis::from_redis_value_ref::<i64>(x).ok())
                    .unwrap_or(0)
            };
            crate::audit::log(&audit.recorded(num(4) as u64, num(5)));
            if self.inner.replication.min_acks > 0 {
                self.await_replicas(&mut conn, REV_STATE).await?;
            }
            Ok(head)
        })
    }

    fn feed_live(&self) -> bool {
        self.inner.feed_live.load(Ordering::Acquire)
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
            // beyond that prefix. `rev:seq` (the head) is a separate key, never touched,
            // and the newest entry stays too (the trait's promise; found by
            // tests/store_contract.rs): the scan stops before it.
            const PAGE: usize = 1000;
            let newest_entry: Entries = redis::cmd("XREVRANGE")
                .arg(REV_LOG)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            let Some(last) = newest_entry.first().map(|(id, _)| entry_seq(id)) else {
                return Ok(0);
            };
            let mut cursor = 0;
            let mut cut = None;
            let mut tokens: Vec<String> = Vec::new();
            let newest = before_ms.max(token_before_ms);
            'scan: loop {
                let page = xrange_after(&mut self.conn(), REV_LOG, cursor, PAGE).await?;
                for (id, f) in &page {
                    let at = field(f, "at").parse::<i64>().unwrap_or(i64::MAX);
                    if at >= newest || entry_seq(id) >= last {
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
            let entries = records
                .chunks_exact(2)
                .map(|pair| StoredKey {
                    name: pair[0].clone(),
                    json: pair[1].clone(),
                })
                .collect();
            Ok(KeySet { version, entries })
        })
    }

    fn save_keys(
        &self,
        expected_version: u64,
        upserts: Vec<StoredKey>,
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
                invocation.arg(&k.name).arg(&k.json);
            }
            for a in &audit {
                audit_args(&mut invocation, a);
            }
            let mut conn = self.conn();
            let out: Vec<i64> = invocation
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            match out.as_slice() {
                [-1] => Err(StoreError::Conflict),
                [version, ms, seqs @ ..] => {
                    for (seq, a) in seqs.iter().zip(&audit) {
                        crate::audit::log(&a.recorded(*seq as u64, *ms));
                    }
                    // A key change lost in a failover could bring a revoked key back:
                    // it is answered only once replicated, like a revocation.
                    if self.inner.replication.min_acks > 0 {
                        self.await_replicas(&mut conn, KEYS).await?;
                    }
                    Ok(*version as u64)
                }
                _ => Err(StoreError::Unavailable("unexpected script reply".into())),
            }
        })
    }

    fn append_audit(&self, audit: NewAudit) -> BoxFuture<'_, Result<AuditRecord, StoreError>> {
        Box::pin(async move {
            let (seq, ms): (u64, i64) =
                audit_args(self.inner.audit.key(AUDIT_SEQ).key(AUDIT_LOG), &audit)
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
            let key = seen_key(&key);
            let mut conn = self.conn();
            let set: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg("1")
                .arg("NX")
                .arg("PXAT")
                .arg(until_ms.max(crate::time::now_ms() + 1))
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            // A claim lost in a failover would let the assertion open a second session:
            // it counts only once its shard's replicas have it, like a revocation.
            if set.is_some() && self.inner.replication.min_acks > 0 {
                if let Err(e) = self.await_replicas(&mut conn, &key).await {
                    // Answered 503: the claim is released so the retry can make it.
                    let _: Result<i64, _> =
                        redis::cmd("DEL").arg(&key).query_async(&mut conn).await;
                    return Err(e);
                }
            }
            Ok(set.is_some())
        })
    }

    fn release_claim(&self, key: String) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let _: i64 = redis::cmd("DEL")
                .arg(seen_key(&key))
                .query_async(&mut self.conn())
                .await
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
        Box::pin(async move {
            // Two slots, in order: the audit record (in `{latch}`), then the record (in its
            // family's slot). A crash between leaves an audited session that never
            // existed (its token was never handed out), never an unaudited one.
            let json = encode_refresh(&record)?;
            self.append_audit(audit).await?;
            let (rt, _) = refresh_keys(&key);
            let mut conn = self.conn();
            let _: i64 = self
                .inner
                .open_session
                .key(&rt)
                .arg(json)
                .arg(record.expires_at_ms)
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            self.best_effort_replicas(&mut conn, &rt, "session open")
                .await;
            Ok(())
        })
    }

    fn refresh_token(
        &self,
        key: String,
    ) -> BoxFuture<'_, Result<Option<(RefreshRecord, bool)>, StoreError>> {
        Box::pin(async move {
            let (rt, fam) = refresh_keys(&key);
            let mut invocation = self.inner.read_refresh.key(&rt);
            if let Some(fam) = &fam {
                invocation.key(fam);
            }
            let mut v: Vec<String> = invocation
                .invoke_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            if v.is_empty() && fam.is_some() {
                // A chain begun before families.
                v = self
                    .inner
                    .read_refresh
                    .key(legacy_refresh_key(&key))
                    .invoke_async(&mut self.conn())
                    .await
                    .map_err(unavailable)?;
            }
            match v.as_slice() {
                [] => Ok(None),
                [json, spent] => Ok(Some((decode_refresh(json)?, spent == "1"))),
                _ => Err(StoreError::Unavailable("unexpected script reply".into())),
            }
        })
    }

    fn rotate_refresh(
        &self,
        old_key: String,
        new_key: String,
        new: RefreshRecord,
    ) -> BoxFuture<'_, Result<Rotation, StoreError>> {
        Box::pin(async move {
            let (mut old_rt, mut fam) = refresh_keys(&old_key);
            let mut new_rt = match (old_key.split_once('.'), new_key.split_once('.')) {
                (Some((f, _)), Some((g, _))) if f == g => refresh_keys(&new_key).0,
                (None, _) => legacy_refresh_key(&new_key),
                _ => {
                    return Err(StoreError::Unavailable(
                        "a refresh token's successor must be of its family".into(),
                    ))
                }
            };
            let mut conn = self.conn();
            let mut v: Vec<redis::Value>;
            loop {
                let mut invocation = self.inner.rotate_refresh.key(&old_rt);
                invocation.key(&new_rt);
                if let Some(fam) = &fam {
                    invocation.key(fam);
                }
                let reply = invocation
                    .arg(encode_refresh(&new)?)
                    .arg(new.expires_at_ms)
                    .arg((new.expires_at_ms - new.issued_at_ms).max(1000))
                    .invoke_async(&mut conn)
                    .await;
                v = match reply {
                    Ok(v) => v,
                    Err(e) => {
                        // The script may have run before the reply was lost.
                        self.release(&mut conn, &old_rt, &new_rt, fam.as_deref())
                            .await;
                        return Err(unavailable(e));
                    }
                };
                let unknown = v
                    .first()
                    .and_then(|x| redis::from_redis_value_ref::<i64>(x).ok())
                    == Some(0);
                // Not in its family's slot: a chain begun before families, whose
                // successors stay in `{latch}` until it ends.
                if unknown && fam.is_some() {
                    (old_rt, fam) = (legacy_refresh_key(&old_key), None);
                    new_rt = legacy_refresh_key(&new_key);
                    continue;
                }
                break;
            }
            let code = v
                .first()
                .and_then(|x| redis::from_redis_value_ref::<i64>(x).ok())
                .unwrap_or(-1);
            let rec = v
                .get(1)
                .and_then(|x| redis::from_redis_value_ref::<String>(x).ok());
            match (code, rec) {
                (1, _) => {
                    // A spend lost in a failover would make the old token spendable again
                    // next to its successor: the successor is handed out only once the
                    // shard's replicas have both (fewer: 503, and the rotation is undone
                    // where it can be, so the client's retry rotates; see
                    // docs/ARCHITECTURE.md, "Sessions on a sharded store").
                    if self.inner.replication.min_acks > 0 {
                        if let Err(e) = self.await_replicas(&mut conn, &old_rt).await {
                            self.release(&mut conn, &old_rt, &new_rt, fam.as_deref())
                                .await;
                            return Err(e);
                        }
                    }
                    Ok(Rotation::Rotated)
                }
                (2, Some(json)) => {
                    if fam.is_some() {
                        self.best_effort_replicas(&mut conn, &old_rt, "reuse mark")
                            .await;
                    }
                    Ok(Rotation::Reused(decode_refresh(&json)?))
                }
                (0, _) => Ok(Rotation::Unknown),
                _ => Err(StoreError::Unavailable("unexpected script reply".into())),
            }
        })
    }

    fn mark_reused(&self, key: String) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let (rt, Some(fam)) = refresh_keys(&key) else {
                return Ok(());
            };
            let mut conn = self.conn();
            let marked: i64 = self
                .inner
                .mark_reused
                .key(&rt)
                .key(&fam)
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            if marked == 1 {
                self.best_effort_replicas(&mut conn, &fam, "reuse mark")
                    .await;
            }
            Ok(())
        })
    }

    fn prune_audit(&self, before_ms: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            // Records are in seq order and seqs are assigned in store-time order (one
            // slot, one script at a time): the old ones are a prefix. Find its end page by
            // page, then trim up to it; the newest record always stays.
            const PAGE: usize = 1000;
            let newest: Entries = redis::cmd("XREVRANGE")
                .arg(AUDIT_LOG)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            let Some(last) = newest.first().map(|(id, _)| entry_seq(id)) else {
                return Ok(0);
            };
            let mut cursor = 0;
            let mut cut = None;
            'scan: loop {
                let page = xrange_after(&mut self.conn(), AUDIT_LOG, cursor, PAGE).await?;
                for (id, f) in &page {
                    let time = field(f, "time").parse::<i64>().unwrap_or(i64::MAX);
                    let seq = entry_seq(id);
                    if time >= before_ms || seq >= last {
                        break 'scan;
                    }
                    cut = Some(seq);
                    cursor = seq;
                }
                if page.len() < PAGE {
                    break;
                }
            }
            let Some(cut) = cut else { return Ok(0) };
            redis::cmd("XTRIM")
                .arg(AUDIT_LOG)
                .arg("MINID")
                .arg(format!("{}-0", cut + 1))
                .query_async(&mut self.conn())
                .await
                .map_err(unavailable)
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

    fn report_node(&self, r: NodeReport) -> BoxFuture<'_, Result<i64, StoreError>> {
        Box::pin(async move {
            let ms: i64 = self
                .inner
                .report_node
                .key(node_key(&r.id))
                .key(node_acks_key(&r.id))
                .key(NODE_INDEX)
                .arg(&r.id)
                .arg(&r.name)
                .arg(&r.address)
                .arg(&r.version)
                .arg(r.max_staleness_ms)
                .arg(r.ttl_ms)
                .arg(epoch_hex(r.epoch))
                .arg(r.applied)
                .arg(r.keys_version)
                .arg(r.fresh_at_ms.map(|f| f.to_string()).unwrap_or_default())
                .arg(if r.ready { "1" } else { "0" })
                .arg(crate::nodes::GONE_KEPT_MS)
                .arg(crate::nodes::ACK_HISTORY)
                .invoke_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            Ok(ms)
        })
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Registry, StoreError>> {
        Box::pin(async move {
            let (time_ms, ids): (i64, Vec<String>) = self
                .inner
                .node_ids
                .key(NODE_INDEX)
                .invoke_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            let mut nodes = Vec::with_capacity(ids.len());
            if !ids.is_empty() {
                let mut invocation = self.inner.node_records.prepare_invoke();
                for id in &ids {
                    invocation.key(node_key(id)).key(node_acks_key(id));
                }
                let lists: Vec<Vec<String>> = invocation
                    .invoke_async(&mut self.conn())
                    .await
                    .map_err(unavailable)?;
                for pair in lists.chunks_exact(2) {
                    nodes.extend(node_record(&pair[0], &pair[1]));
                }
            }
            nodes.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
            Ok(Registry { time_ms, nodes })
        })
    }

    fn ssf_streams(&self) -> BoxFuture<'_, Result<Vec<StoredStream>, StoreError>> {
        Box::pin(async move {
            let all: Vec<(String, String)> = redis::cmd("HGETALL")
                .arg(SSF_STREAMS)
                .query_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            all.into_iter()
                .map(|(id, value)| stored_stream(id, &value))
                .collect()
        })
    }

    fn ssf_stream(&self, id: String) -> BoxFuture<'_, Result<Option<StoredStream>, StoreError>> {
        Box::pin(async move {
            let value: Option<String> = redis::cmd("HGET")
                .arg(SSF_STREAMS)
                .arg(&id)
                .query_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            value.map(|v| stored_stream(id, &v)).transpose()
        })
    }

    fn ssf_save_stream(
        &self,
        id: String,
        expected: u64,
        json: String,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let v: i64 = self
                .inner
                .ssf_save
                .key(SSF_STREAMS)
                .arg(id)
                .arg(expected)
                .arg(json)
                .invoke_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            if v < 0 {
                return Err(StoreError::Conflict);
            }
            Ok(v as u64)
        })
    }

    fn ssf_delete_stream(&self, id: String) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let n: i64 = redis::cmd("HDEL")
                .arg(SSF_STREAMS)
                .arg(id)
                .query_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            Ok(n == 1)
        })
    }

    fn ssf_lease(&self, holder: String, ttl_ms: i64) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let held: i64 = self
                .inner
                .ssf_lease
                .key(SSF_LEASE)
                .arg(holder)
                .arg(ttl_ms.max(1))
                .invoke_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            Ok(held == 1)
        })
    }

    fn status_open_list(&self, meta: ListMeta) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let json =
                serde_json::to_string(&meta).map_err(|e| StoreError::Unavailable(e.to_string()))?;
            let _: i64 = self
                .inner
                .status_open
                .key(status_key(meta.id))
                .arg(json)
                .arg(meta.expires_ms)
                .invoke_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            let _: i64 = redis::cmd("ZADD")
                .arg(STATUS_INDEX)
                .arg(meta.expires_ms)
                .arg(meta.id.to_string())
                .query_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            Ok(())
        })
    }

    fn status_append(
        &self,
        list: ListId,
        records: Vec<(u64, String)>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut invocation = self.inner.status_append.key(status_key(list));
            for (idx, rec) in &records {
                invocation.arg(*idx).arg(rec);
            }
            let written: i64 = invocation
                .invoke_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            if written == 1 {
                Ok(())
            } else {
                Err(StoreError::Conflict)
            }
        })
    }

    fn status_records(
        &self,
        list: ListId,
        from: u64,
    ) -> BoxFuture<'_, Result<Option<ListRecords>, StoreError>> {
        Box::pin(async move {
            let key = status_key(list);
            let meta: Vec<String> = redis::cmd("ZRANGE")
                .arg(&key)
                .arg(-1)
                .arg(-1)
                .arg("BYSCORE")
                .query_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            let Some(meta) = meta
                .first()
                .and_then(|m| serde_json::from_str::<ListMeta>(m).ok())
            else {
                return Ok(None);
            };
            let rows: Vec<(String, f64)> = redis::cmd("ZRANGE")
                .arg(&key)
                .arg(from)
                .arg("+inf")
                .arg("BYSCORE")
                .arg("WITHSCORES")
                .query_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            let records = rows
                .into_iter()
                .filter(|(_, score)| *score >= 0.0)
                .map(|(rec, score)| (score as u64, rec))
                .collect();
            Ok(Some(ListRecords { meta, records }))
        })
    }

    fn status_lists(&self, now_ms: i64) -> BoxFuture<'_, Result<Vec<ListMeta>, StoreError>> {
        Box::pin(async move {
            let ids: Vec<String> = redis::cmd("ZRANGE")
                .arg(STATUS_INDEX)
                .arg(format!("({now_ms}"))
                .arg("+inf")
                .arg("BYSCORE")
                .query_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            let mut metas = Vec::with_capacity(ids.len());
            for id in ids.iter().filter_map(|i| ListId::parse(i)) {
                let meta: Vec<String> = redis::cmd("ZRANGE")
                    .arg(status_key(id))
                    .arg(-1)
                    .arg(-1)
                    .arg("BYSCORE")
                    .query_async(&mut self.conn())
                    .await
                    .map_err(unavailable)?;
                if let Some(m) = meta.first().and_then(|m| serde_json::from_str(m).ok()) {
                    metas.push(m);
                }
            }
            Ok(metas)
        })
    }

    fn status_prune(&self, now_ms: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
        // The lists themselves expire in Redis (PEXPIREAT); only the index is trimmed.
        Box::pin(async move {
            let n: u64 = redis::cmd("ZREMRANGEBYSCORE")
                .arg(STATUS_INDEX)
                .arg("-inf")
                .arg(now_ms)
                .query_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            Ok(n)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_parse() {
        match parse_announcement(
            b"rev\n00000000000000ab\n7\n1700000000000\nsubject\nalice\nand more",
        ) {
            Some(StoreEvent::Revocation { epoch, event: e }) => {
                assert_eq!(epoch, 0xab);
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
            &b"rev\n00000000000000ab\nx\n1\nsubject\na"[..],
            b"rev\n00000000000000ab\n1\n1\nbogus\na",
            b"rev\n7\n1700000000000\nsubject\nalice",
            b"other",
            b"\xff",
        ] {
            assert!(parse_announcement(bad).is_none());
        }
    }
}
