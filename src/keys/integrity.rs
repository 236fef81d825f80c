//! Authenticated key records: what the store holds is used only if it proves it was
//! written by a node holding the KEK, names its own public key, and does not move a key
//! backwards.
//!
//! - Every record carries an HMAC-SHA256 (key derived from the KEK, `keys::material`) over
//!   a canonical encoding of every field that matters (kid, alg, state, all times, the
//!   public JWK, the sealed private key) and `written_at`, the key-set version it was
//!   written at.
//! - The kid must be the RFC 7638 thumbprint of the public key, recomputed here.
//! - A MAC'd manifest (store name [`MANIFEST`]) is rewritten with every key-set change: the
//!   version it was written at and the furthest state of every kid ever written. A record
//!   is used only if the manifest names its kid and its state is not behind the manifest's
//!   (or behind the furthest state this process has seen): an authentic but older record
//!   written back into the store cannot revive a key, even after a restart. A manifest
//!   older than a record (`version < written_at`) was itself rolled back: it admits
//!   nothing.
//!
//! Pure: no IO, no clock. `app::keys::Keys` reports the rejections (log, metric, audit).

use std::collections::{BTreeMap, HashMap};

use ring::hmac;
use serde::{Deserialize, Serialize};

use super::{material, KeyRecord, KeyState, Kid};
use crate::keys::StoredKey;

/// The store name of the manifest. Kids are base64url thumbprints, so no kid is this.
pub const MANIFEST: &str = "~manifest";

/// Why a stored record is not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// Not a key record at all (unparseable JSON, or its name is not its kid).
    Malformed,
    /// No MAC: written before records were authenticated, or planted.
    Unauthenticated,
    /// The MAC does not verify: tampered, or written under another KEK.
    BadMac,
    /// The kid is not the RFC 7638 thumbprint of the record's public key.
    KidMismatch,
    /// Authentic, but its state is behind a state this key already reached: a replay.
    Regressed,
    /// Authentic, but no valid manifest names the key.
    NotInManifest,
    /// The manifest is older than a record it should cover (rolled back), or its MAC fails.
    BadManifest,
}

impl Rejection {
    /// The `reason` label of `latch_key_records_rejected_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::Unauthenticated => "unauthenticated",
            Rejection::BadMac => "bad_mac",
            Rejection::KidMismatch => "kid_mismatch",
            Rejection::Regressed => "regressed",
            Rejection::NotInManifest => "not_in_manifest",
            Rejection::BadManifest => "bad_manifest",
        }
    }
}

/// How far along its life a state is. `revoked` is the end from anywhere; `retired` may
/// still be revoked (a no-op for verification, but never the other way round).
pub fn rank(state: KeyState) -> u8 {
    match state {
        KeyState::Next => 0,
        KeyState::Active => 1,
        KeyState::Retiring => 2,
        KeyState::Retired => 3,
        KeyState::Revoked => 4,
    }
}

fn furthest(a: KeyState, b: KeyState) -> KeyState {
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

/// Merges `state` for `kid` into `known`, keeping the furthest.
pub fn advance(known: &mut BTreeMap<Kid, KeyState>, kid: &Kid, state: KeyState) {
    known
        .entry(kid.clone())
        .and_modify(|s| *s = furthest(*s, state))
        .or_insert(state);
}

/// A key record as stored: the record, the version it was written at, its MAC.
#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    record: KeyRecord,
    /// Absent in records from before authentication; those also lack `mac`.
    #[serde(default)]
    written_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    version: u64,
    states: BTreeMap<Kid, KeyState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
}

/// Length-prefixed fields under a domain label: no two different field lists encode to
/// the same bytes, whatever the fields contain.
struct Canonical(Vec<u8>);

impl Canonical {
    fn new(label: &str) -> Canonical {
        let mut c = Canonical(Vec::with_capacity(512));
        c.field(label.as_bytes());
        c
    }

    fn field(&mut self, bytes: &[u8]) -> &mut Canonical {
        self.0.extend((bytes.len() as u64).to_be_bytes());
        self.0.extend(bytes);
        self
    }

    fn opt(&mut self, v: Option<i64>) -> &mut Canonical {
        match v {
            Some(v) => self.field(b"1").field(&v.to_be_bytes()),
            None => self.field(b"0"),
        }
    }
}

fn record_mac_input(r: &KeyRecord, written_at: u64) -> Vec<u8> {
    // Members sorted by name, so the encoding does not depend on map order.
    let jwk: BTreeMap<&String, &serde_json::Value> = r.public_jwk.iter().collect();
    let jwk = serde_json::to_vec(&jwk).unwrap_or_default();
    let mut c = Canonical::new("latch key record v1");
    c.field(r.kid.as_bytes())
        .field(r.alg.as_str().as_bytes())
        .field(r.state.as_str().as_bytes())
        .field(&r.created_at_ms.to_be_bytes())
        .opt(r.activates_at_ms)
        .opt(r.retiring_at_ms)
        .opt(r.retires_at_ms)
        .opt(r.revoked_at_ms)
        .field(&jwk)
        .field(&r.sealed_private)
        .field(&written_at.to_be_bytes());
    c.0
}

fn manifest_mac_input(version: u64, states: &BTreeMap<Kid, KeyState>) -> Vec<u8> {
    let mut c = Canonical::new("latch key manifest v1");
    c.field(&version.to_be_bytes());
    for (kid, state) in states {
        c.field(kid.as_bytes()).field(state.as_str().as_bytes());
    }
    c.0
}

fn tag(mac: &hmac::Key, input: &[u8]) -> String {
    material::b64url(hmac::sign(mac, input).as_ref())
}

/// Constant-time (ring) check of a base64url tag.
fn verifies(mac: &hmac::Key, input: &[u8], tag: Option<&str>) -> bool {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let Some(Ok(tag)) = tag.map(|t| URL_SAFE_NO_PAD.decode(t)) else {
        return false;
    };
    hmac::verify(mac, input, &tag).is_ok()
}

/// The stored form of `record`, authenticated, as written at key-set `version`.
pub fn seal_record(
    mac: &hmac::Key,
    record: &KeyRecord,
    version: u64,
) -> Result<StoredKey, serde_json::Error> {
    let stored = Stored {
        mac: Some(tag(mac, &record_mac_input(record, version))),
        record: record.clone(),
        written_at: version,
    };
    Ok(StoredKey {
        name: record.kid.to_string(),
        json: serde_json::to_string(&stored)?,
    })
}

/// The stored manifest naming `states`, written at key-set `version`.
pub fn seal_manifest(
    mac: &hmac::Key,
    states: &BTreeMap<Kid, KeyState>,
    version: u64,
) -> Result<StoredKey, serde_json::Error> {
    let manifest = Manifest {
        version,
        states: states.clone(),
        mac: Some(tag(mac, &manifest_mac_input(version, states))),
    };
    Ok(StoredKey {
        name: MANIFEST.to_string(),
        json: serde_json::to_string(&manifest)?,
    })
}

/// What a stored key set proves.
#[derive(Debug, Default)]
pub struct Checked {
    /// Records that passed every check.
    pub records: Vec<KeyRecord>,
    /// `(store name, why)` of everything else.
    pub rejected: Vec<(String, Rejection)>,
    /// The furthest state known for every kid ever written: this process's memory, any
    /// authentic manifest, the accepted records. The next manifest starts from it.
    pub known: BTreeMap<Kid, KeyState>,
}

/// Checks a stored key set. `seen` is the furthest state per kid this process has seen
/// before (its memory across reloads).
pub fn check(mac: &hmac::Key, stored: &[StoredKey], seen: &BTreeMap<Kid, KeyState>) -> Checked {
    let mut out = Checked {
        known: seen.clone(),
        ..Checked::default()
    };
    let mut manifest: Option<Manifest> = None;
    let mut authentic: Vec<(KeyRecord, u64)> = Vec::new();
    for s in stored {
        if s.name == MANIFEST {
            match serde_json::from_str::<Manifest>(&s.json) {
                Ok(m)
                    if verifies(
                        mac,
                        &manifest_mac_input(m.version, &m.states),
                        m.mac.as_deref(),
                    ) =>
                {
                    manifest = Some(m)
                }
                _ => out.rejected.push((s.name.clone(), Rejection::BadManifest)),
            }
            continue;
        }
        let stored: Stored = match serde_json::from_str(&s.json) {
            Ok(r) => r,
            Err(_) => {
                out.rejected.push((s.name.clone(), Rejection::Malformed));
                continue;
            }
        };
        let r = stored.record;
        let why = if r.kid != s.name {
            Some(Rejection::Malformed)
        } else if stored.mac.is_none() {
            Some(Rejection::Unauthenticated)
        } else if !verifies(
            mac,
            &record_mac_input(&r, stored.written_at),
            stored.mac.as_deref(),
        ) {
            Some(Rejection::BadMac)
        } else if material::thumbprint(&r.public_jwk) != r.kid {
            Some(Rejection::KidMismatch)
        } else {
            None
        };
        match why {
            Some(why) => out.rejected.push((s.name.clone(), why)),
            None => authentic.push((r, stored.written_at)),
        }
    }
    let newest_record = authentic.iter().map(|(_, v)| *v).max().unwrap_or(0);
    let manifest = match manifest {
        Some(m) if m.version >= newest_record => Some(m),
        // Rolled back. Its states are not merged either: the next manifest is built from
        // `known`, and a kid listed there is admitted, so a stale list would re-admit the
        // stale records it names.
        Some(_) => {
            out.rejected
                .push((MANIFEST.to_string(), Rejection::BadManifest));
            None
        }
        None => None,
    };
    if let Some(m) = &manifest {
        for (kid, state) in &m.states {
            advance(&mut out.known, kid, *state);
        }
    }
    for (r, _) in authentic {
        let listed = manifest.as_ref().and_then(|m| m.states.get(&r.kid));
        let why = match listed {
            None => Some(Rejection::NotInManifest),
            Some(_) => match out.known.get(&r.kid) {
                Some(k) if rank(*k) > rank(r.state) => Some(Rejection::Regressed),
                _ => None,
            },
        };
        match why {
            Some(why) => out.rejected.push((r.kid.to_string(), why)),
            None => {
                advance(&mut out.known, &r.kid, r.state);
                out.records.push(r);
            }
        }
    }
    out
}

/// The per-process memory of what was already reported, so each `(name, reason)` is
/// logged, counted and audited once.
#[derive(Default)]
pub struct Reported(HashMap<(String, Rejection), ()>);

impl Reported {
    /// Whether this `(name, why)` is new (and remembers it).
    pub fn first(&mut self, name: &str, why: Rejection) -> bool {
        self.0.insert((name.to_string(), why), ()).is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{Alg, Kek};

    fn kek() -> Kek {
        Kek::from_bytes(&[3u8; 32]).unwrap()
    }

    fn record(kek: &Kek, state: KeyState) -> KeyRecord {
        let g = material::generate(Alg::EdDSA).unwrap();
        let kid = material::thumbprint(&g.public_jwk);
        KeyRecord {
            sealed_private: kek.seal(&kid, &g.private_der).unwrap(),
            kid: kid.into(),
            alg: Alg::EdDSA,
            state,
            created_at_ms: 1,
            activates_at_ms: Some(1),
            retiring_at_ms: None,
            retires_at_ms: None,
            revoked_at_ms: None,
            public_jwk: g.public_jwk,
        }
    }

    fn set(kek: &Kek, records: &[&KeyRecord], version: u64) -> Vec<StoredKey> {
        let mac = kek.key_record_mac();
        let mut states = BTreeMap::new();
        let mut out: Vec<StoredKey> = records
            .iter()
            .map(|r| {
                states.insert(r.kid.clone(), r.state);
                seal_record(mac, r, version).unwrap()
            })
            .collect();
        out.push(seal_manifest(mac, &states, version).unwrap());
        out
    }

    fn reasons(c: &Checked) -> Vec<Rejection> {
        c.rejected.iter().map(|(_, r)| *r).collect()
    }

    #[test]
    fn authentic_records_pass() {
        let k = kek();
        let a = record(&k, KeyState::Active);
        let c = check(k.key_record_mac(), &set(&k, &[&a], 1), &BTreeMap::new());
        assert_eq!(c.records, vec![a.clone()]);
        assert!(c.rejected.is_empty());
        assert_eq!(c.known.get(&a.kid), Some(&KeyState::Active));
    }

    #[test]
    fn any_changed_field_or_other_kek_fails_the_mac() {
        let k = kek();
        let a = record(&k, KeyState::Revoked);
        let mut stored = set(&k, &[&a], 1);
        let edits: [fn(&mut serde_json::Value); 4] = [
            |v| v["state"] = "active".into(),
            |v| v["retires_at_ms"] = 99.into(),
            |v| v["public_jwk"]["x"] = "AAAA".into(),
            |v| v["written_at"] = 7.into(),
        ];
        for edit in edits {
            let mut v: serde_json::Value = serde_json::from_str(&stored[0].json).unwrap();
            edit(&mut v);
            let mut tampered = stored.clone();
            tampered[0].json = v.to_string();
            let c = check(k.key_record_mac(), &tampered, &BTreeMap::new());
            assert!(c.records.is_empty());
            assert_eq!(reasons(&c), vec![Rejection::BadMac]);
        }
        let other = Kek::from_bytes(&[4u8; 32]).unwrap();
        let c = check(other.key_record_mac(), &stored, &BTreeMap::new());
        assert!(c.records.is_empty());
        // Without its MAC (a record from before this version), a record is
        // unauthenticated, not trusted.
        let mut v: serde_json::Value = serde_json::from_str(&stored[0].json).unwrap();
        v.as_object_mut().unwrap().remove("mac");
        v.as_object_mut().unwrap().remove("written_at");
        stored[0].json = v.to_string();
        let c = check(k.key_record_mac(), &stored, &BTreeMap::new());
        assert_eq!(reasons(&c), vec![Rejection::Unauthenticated]);
    }

    #[test]
    fn kid_must_be_the_thumbprint() {
        let k = kek();
        let mut a = record(&k, KeyState::Active);
        a.kid = "evil".into();
        let c = check(k.key_record_mac(), &set(&k, &[&a], 1), &BTreeMap::new());
        assert!(c.records.is_empty());
        assert_eq!(reasons(&c), vec![Rejection::KidMismatch]);
    }

    #[test]
    fn an_older_record_cannot_move_a_key_back() {
        let k = kek();
        let active = record(&k, KeyState::Active);
        let old = set(&k, &[&active], 1);
        let mut revoked = active.clone();
        revoked.state = KeyState::Revoked;
        let new = set(&k, &[&revoked], 2);
        // The attacker writes the old record over the new one; the manifest stays.
        let replayed = vec![old[0].clone(), new[1].clone()];
        let c = check(k.key_record_mac(), &replayed, &BTreeMap::new());
        assert!(c.records.is_empty());
        assert_eq!(reasons(&c), vec![Rejection::Regressed]);
        // ... and the old manifest too: this process remembers.
        let seen = check(k.key_record_mac(), &new, &BTreeMap::new()).known;
        let c = check(k.key_record_mac(), &old, &seen);
        assert_eq!(reasons(&c), vec![Rejection::Regressed]);
        // A manifest older than a record it should cover admits nothing.
        let other = record(&k, KeyState::Next);
        let newer = set(&k, &[&revoked, &other], 3);
        let rolled_back = vec![old[0].clone(), newer[1].clone(), old[1].clone()];
        let c = check(k.key_record_mac(), &rolled_back, &BTreeMap::new());
        assert!(c.records.is_empty(), "{:?}", c.records);
        // The manifest a node then writes (from `known`) must not re-admit the old record.
        let rebuilt = vec![
            old[0].clone(),
            seal_manifest(k.key_record_mac(), &c.known, 4).unwrap(),
        ];
        let c = check(k.key_record_mac(), &rebuilt, &BTreeMap::new());
        assert!(c.records.is_empty(), "{:?}", c.records);
    }

    #[test]
    fn records_without_a_manifest_are_not_used() {
        let k = kek();
        let a = record(&k, KeyState::Active);
        let mut stored = set(&k, &[&a], 1);
        stored.pop();
        let c = check(k.key_record_mac(), &stored, &BTreeMap::new());
        assert_eq!(reasons(&c), vec![Rejection::NotInManifest]);
    }
}
