//! The key lifecycle as pure decisions: given the records and the time, which records
//! change. Key generation is passed in, so these functions do no IO and read no clock.

use std::collections::BTreeSet;

use super::{KeyError, KeyPolicy, KeyRecord, KeyState, Kid};

/// Changed and new records, and the audit entries `(action, target)` that explain them.
#[derive(Debug, Default)]
pub struct Plan {
    pub upserts: Vec<KeyRecord>,
    pub audit: Vec<(&'static str, Kid)>,
}

/// Makes a new key in the given state, activating (or activated) at the given time.
pub type Generate<'a> = dyn FnMut(KeyState, i64) -> Result<KeyRecord, KeyError> + 'a;

/// A working copy of the records that remembers what changed.
struct Draft<'g, 'a> {
    keys: Vec<KeyRecord>,
    changed: BTreeSet<Kid>,
    audit: Vec<(&'static str, Kid)>,
    now: i64,
    policy: KeyPolicy,
    generate: &'g mut Generate<'a>,
}

impl Draft<'_, '_> {
    fn index(&self, state: KeyState) -> Option<usize> {
        // Newest first: if ever two keys share a state, the latest one counts.
        (0..self.keys.len())
            .rev()
            .find(|&i| self.keys[i].state == state)
    }

    fn touch(&mut self, i: usize) {
        self.changed.insert(self.keys[i].kid.clone());
    }

    fn create(&mut self, state: KeyState, activates_at: i64) -> Result<usize, KeyError> {
        let mut record = (self.generate)(state, activates_at)?;
        // Publication time counts from here (see `ready_at`), whatever the factory says.
        record.created_at_ms = self.now;
        self.audit.push(("key_create", record.kid.clone()));
        self.keys.push(record);
        let i = self.keys.len() - 1;
        self.touch(i);
        Ok(i)
    }

    fn activate(&mut self, i: usize) {
        self.keys[i].state = KeyState::Active;
        self.keys[i].activates_at_ms = Some(self.now);
        self.touch(i);
    }

    fn start_retiring(&mut self, i: usize) {
        let k = &mut self.keys[i];
        k.state = KeyState::Retiring;
        k.retiring_at_ms = Some(self.now);
        k.retires_at_ms = Some(self.now + self.policy.retire_after_ms);
        self.touch(i);
    }

    /// Active → retiring, next → active (or a fresh active key when there is no next).
    fn rotate(&mut self) -> Result<usize, KeyError> {
        if let Some(a) = self.index(KeyState::Active) {
            self.start_retiring(a);
        }
        let new_active = match self.index(KeyState::Next) {
            Some(n) => {
                self.activate(n);
                n
            }
            None => self.create(KeyState::Active, self.now)?,
        };
        self.audit
            .push(("key_rotate", self.keys[new_active].kid.clone()));
        Ok(new_active)
    }

    /// When the next key at `n` may sign: its scheduled time, but never before it has been
    /// published for `min_published` (a verifier's cached JWKS has it by then).
    fn ready_at(&self, n: usize) -> i64 {
        let k = &self.keys[n];
        k.activates_at_ms
            .unwrap_or(k.created_at_ms)
            .max(k.created_at_ms + self.policy.min_published_ms)
    }

    /// Everything the schedule calls for at `now`.
    fn schedule(&mut self) -> Result<(), KeyError> {
        for i in 0..self.keys.len() {
            let k = &self.keys[i];
            if k.state == KeyState::Retiring && k.retires_at_ms.is_some_and(|t| self.now >= t) {
                self.keys[i].state = KeyState::Retired;
                self.touch(i);
                self.audit.push(("key_retire", self.keys[i].kid.clone()));
            }
        }
        // At most one active key: older extras start retiring.
        while let Some(a) = self.index(KeyState::Active) {
            let older = (0..a)
                .rev()
                .find(|&i| self.keys[i].state == KeyState::Active);
            match older {
                Some(o) => self.start_retiring(o),
                None => break,
            }
        }
        let active = match self.index(KeyState::Active) {
            // No signing key (first start, or the active key was revoked): the next key
            // signs at once however young (an emergency does not wait), else a new one.
            None => match self.index(KeyState::Next) {
                Some(n) => {
                    self.activate(n);
                    self.audit.push(("key_activate", self.keys[n].kid.clone()));
                    n
                }
                None => self.create(KeyState::Active, self.now)?,
            },
            Some(a) => match self.index(KeyState::Next) {
                Some(n) if self.now >= self.ready_at(n) => self.rotate()?,
                // Without a next key there is no rotation: one is published below and
                // promoted once validators have had time to see it.
                _ => a,
            },
        };
        // Always a published next key, from the first start and right after a promotion.
        if self.index(KeyState::Next).is_none() {
            let due =
                self.keys[active].activates_at_ms.unwrap_or(self.now) + self.policy.rotate_every_ms;
            self.create(
                KeyState::Next,
                due.max(self.now + self.policy.min_published_ms),
            )?;
        }
        Ok(())
    }

    fn finish(self) -> Plan {
        let upserts = self
            .keys
            .into_iter()
            .filter(|k| self.changed.contains(&k.kid))
            .collect();
        Plan {
            upserts,
            audit: self.audit,
        }
    }
}

fn draft<'g, 'a>(
    keys: &[KeyRecord],
    now: i64,
    policy: &KeyPolicy,
    generate: &'g mut Generate<'a>,
) -> Draft<'g, 'a> {
    Draft {
        keys: keys.to_vec(),
        changed: BTreeSet::new(),
        audit: vec![],
        now,
        policy: *policy,
        generate,
    }
}

/// What the schedule calls for: the first keys (active and next), a new next key right
/// after every promotion, the rotation itself (never of a next key published for less
/// than `min_published`), retirement of keys whose tokens have all expired.
pub fn scheduled(
    keys: &[KeyRecord],
    now: i64,
    policy: &KeyPolicy,
    generate: &mut Generate<'_>,
) -> Result<Plan, KeyError> {
    let mut d = draft(keys, now, policy, generate);
    d.schedule()?;
    Ok(d.finish())
}

/// Why an operator's rotation would promote a key that validators may not know yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// There is no published next key: a new key would sign at once.
    NoNext,
    /// The next key has not been published for `min_published` yet.
    NextTooYoung { kid: Kid, ready_at_ms: i64 },
}

/// `Some` when rotating now would promote a key published for less than
/// `min_published` (so some verifier's cached JWKS may not have it).
pub fn rotation_refusal(keys: &[KeyRecord], now: i64, policy: &KeyPolicy) -> Option<Refusal> {
    let next = keys.iter().rev().find(|k| k.state == KeyState::Next);
    match next {
        None => Some(Refusal::NoNext),
        Some(n) if now < n.created_at_ms + policy.min_published_ms => Some(Refusal::NextTooYoung {
            kid: n.kid.clone(),
            ready_at_ms: n.created_at_ms + policy.min_published_ms,
        }),
        Some(_) => None,
    }
}

/// An operator's rotation: the active key starts retiring, `next` signs, and a new `next`
/// is published at once (it will sign after `rotate_every`). The caller checks
/// [`rotation_refusal`] first; `forced` records that the operator overrode it.
pub fn rotate_now(
    keys: &[KeyRecord],
    now: i64,
    policy: &KeyPolicy,
    forced: bool,
    generate: &mut Generate<'_>,
) -> Result<Plan, KeyError> {
    let mut d = draft(keys, now, policy, generate);
    let active = d.rotate()?;
    if forced {
        d.audit
            .push(("key_rotate_forced", d.keys[active].kid.clone()));
    }
    if d.index(KeyState::Next).is_none() {
        d.create(KeyState::Next, now + policy.rotate_every_ms)?;
    }
    d.schedule()?;
    Ok(d.finish())
}

/// Emergency revocation of `kid` from any state. `None` when no such key exists. If it was
/// active, another key signs from now on.
pub fn revoke(
    keys: &[KeyRecord],
    kid: &str,
    now: i64,
    policy: &KeyPolicy,
    generate: &mut Generate<'_>,
) -> Result<Option<Plan>, KeyError> {
    let mut d = draft(keys, now, policy, generate);
    let Some(i) = d.keys.iter().position(|k| k.kid == kid) else {
        return Ok(None);
    };
    if d.keys[i].state != KeyState::Revoked {
        d.keys[i].state = KeyState::Revoked;
        d.keys[i].revoked_at_ms = Some(now);
        d.touch(i);
        d.audit.push(("key_revoke", Kid::new(kid)));
    }
    // Promotes next (or creates a key) if the active one is gone; publishes a new next.
    d.schedule()?;
    Ok(Some(d.finish()))
}

#[cfg(test)]
mod tests;
