//! The key lifecycle as pure decisions: given the records and the time, which records
//! change. Key generation is passed in, so these functions do no IO and read no clock.

use std::collections::BTreeSet;

use super::{KeyError, KeyPolicy, KeyRecord, KeyState};

/// Changed and new records, and the audit entries `(action, target)` that explain them.
#[derive(Debug, Default)]
pub struct Plan {
    pub upserts: Vec<KeyRecord>,
    pub audit: Vec<(&'static str, String)>,
}

/// Makes a new key in the given state, activating (or activated) at the given time.
pub type Generate<'a> = dyn FnMut(KeyState, i64) -> Result<KeyRecord, KeyError> + 'a;

/// A working copy of the records that remembers what changed.
struct Draft<'g, 'a> {
    keys: Vec<KeyRecord>,
    changed: BTreeSet<String>,
    audit: Vec<(&'static str, String)>,
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
        let record = (self.generate)(state, activates_at)?;
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
            None => match self.index(KeyState::Next) {
                Some(n) => {
                    self.activate(n);
                    self.audit.push(("key_activate", self.keys[n].kid.clone()));
                    n
                }
                None => self.create(KeyState::Active, self.now)?,
            },
            Some(a) => {
                let due =
                    self.keys[a].activates_at_ms.unwrap_or(self.now) + self.policy.rotate_every_ms;
                let next_due = self
                    .index(KeyState::Next)
                    .map(|n| self.keys[n].activates_at_ms.unwrap_or(due));
                match next_due {
                    Some(t) if self.now >= t => self.rotate()?,
                    None if self.now >= due => self.rotate()?,
                    _ => a,
                }
            }
        };
        if self.index(KeyState::Next).is_none() {
            let due =
                self.keys[active].activates_at_ms.unwrap_or(self.now) + self.policy.rotate_every_ms;
            if self.now >= due - self.policy.publish_ahead_ms {
                self.create(KeyState::Next, due)?;
            }
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

/// What the schedule calls for: the first key, the next key `publish_ahead` before the
/// rotation, the rotation itself, retirement of keys whose tokens have all expired.
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

/// An operator's rotation: the active key starts retiring, `next` signs, and a new `next`
/// is published at once (it will sign after `rotate_every`).
pub fn rotate_now(
    keys: &[KeyRecord],
    now: i64,
    policy: &KeyPolicy,
    generate: &mut Generate<'_>,
) -> Result<Plan, KeyError> {
    let mut d = draft(keys, now, policy, generate);
    d.rotate()?;
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
        d.audit.push(("key_revoke", kid.to_string()));
    }
    // Promotes next (or creates a key) if the active one is gone; publishes a new next.
    d.schedule()?;
    Ok(Some(d.finish()))
}

#[cfg(test)]
mod tests;
