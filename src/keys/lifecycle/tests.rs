use super::*;
use crate::keys::Alg;

const POLICY: KeyPolicy = KeyPolicy {
    alg: Alg::EdDSA,
    rotate_every_ms: 10_000,
    publish_ahead_ms: 3_000,
    min_published_ms: 2_000,
    retire_after_ms: 4_000,
};

/// A key factory that numbers its keys k1, k2, ... and needs no crypto.
struct Factory(u32);

impl Factory {
    fn gen(&mut self) -> impl FnMut(KeyState, i64) -> Result<KeyRecord, KeyError> + '_ {
        move |state, activates_at| {
            self.0 += 1;
            Ok(KeyRecord {
                kid: format!("k{}", self.0).into(),
                alg: Alg::EdDSA,
                state,
                created_at_ms: activates_at,
                activates_at_ms: Some(activates_at),
                retiring_at_ms: None,
                retires_at_ms: None,
                revoked_at_ms: None,
                public_jwk: Default::default(),
                sealed_private: vec![],
            })
        }
    }
}

/// Applies a plan's upserts to the records, as the store does.
fn apply(keys: &mut Vec<KeyRecord>, plan: Plan) -> Vec<&'static str> {
    for u in plan.upserts {
        match keys.iter_mut().find(|k| k.kid == u.kid) {
            Some(k) => *k = u,
            None => keys.push(u),
        }
    }
    plan.audit.into_iter().map(|(a, _)| a).collect()
}

fn states(keys: &[KeyRecord]) -> Vec<(String, KeyState)> {
    keys.iter().map(|k| (k.kid.to_string(), k.state)).collect()
}

fn s(list: &[(&str, KeyState)]) -> Vec<(String, KeyState)> {
    list.iter().map(|(k, st)| (k.to_string(), *st)).collect()
}

use KeyState::*;

/// Runs one planner step and applies it; evaluates to its audit actions.
macro_rules! step {
    ($keys:ident, $plan:expr) => {{
        let plan: Result<Plan, KeyError> = $plan;
        apply(&mut $keys, plan.unwrap())
    }};
}

#[test]
fn walks_next_active_retiring_retired_on_schedule() {
    let mut f = Factory(0);
    let mut keys = vec![];
    // (time, expected states after the scheduled step at that time)
    let timeline: &[(i64, &[(&str, KeyState)])] = &[
        // From the first start, a next key is published beside the active one.
        (0, &[("k1", Active), ("k2", Next)]),
        (9_999, &[("k1", Active), ("k2", Next)]),
        // The rotation promotes it and publishes a new next at once.
        (10_000, &[("k1", Retiring), ("k2", Active), ("k3", Next)]),
        // retire_after (4s) later, k1 is gone.
        (13_999, &[("k1", Retiring), ("k2", Active), ("k3", Next)]),
        (14_000, &[("k1", Retired), ("k2", Active), ("k3", Next)]),
        (
            20_000,
            &[
                ("k1", Retired),
                ("k2", Retiring),
                ("k3", Active),
                ("k4", Next),
            ],
        ),
    ];
    for (now, expected) in timeline {
        step!(keys, scheduled(&keys, *now, &POLICY, &mut f.gen()));
        assert_eq!(states(&keys), s(expected), "at {now}");
    }
    let k1 = &keys[0];
    assert_eq!(
        (k1.retiring_at_ms, k1.retires_at_ms),
        (Some(10_000), Some(14_000))
    );
    // Every promoted key had been published for at least min_published.
    for k in &keys[1..3] {
        assert!(k.activates_at_ms.unwrap() >= k.created_at_ms + POLICY.min_published_ms);
    }
}

#[test]
fn a_scheduled_rotation_waits_until_the_next_key_is_old_enough() {
    let mut f = Factory(0);
    let mut keys = vec![];
    step!(keys, scheduled(&keys, 0, &POLICY, &mut f.gen()));
    // As if the next key had appeared late (say its predecessor was revoked).
    keys[1].created_at_ms = 9_500;
    step!(keys, scheduled(&keys, 10_000, &POLICY, &mut f.gen()));
    assert_eq!(states(&keys), s(&[("k1", Active), ("k2", Next)]));
    step!(keys, scheduled(&keys, 11_499, &POLICY, &mut f.gen()));
    assert_eq!(states(&keys), s(&[("k1", Active), ("k2", Next)]));
    step!(keys, scheduled(&keys, 11_500, &POLICY, &mut f.gen()));
    assert_eq!(
        states(&keys),
        s(&[("k1", Retiring), ("k2", Active), ("k3", Next)])
    );
}

#[test]
fn nothing_to_do_means_an_empty_plan() {
    let mut f = Factory(0);
    let mut keys = vec![];
    step!(keys, scheduled(&keys, 0, &POLICY, &mut f.gen()));
    let plan = scheduled(&keys, 1_000, &POLICY, &mut f.gen()).unwrap();
    assert!(plan.upserts.is_empty() && plan.audit.is_empty());
}

#[test]
fn a_late_node_rotates_to_the_published_key() {
    let mut f = Factory(0);
    let mut keys = vec![];
    step!(keys, scheduled(&keys, 0, &POLICY, &mut f.gen()));
    // Down through the whole rotation period.
    let audit = step!(keys, scheduled(&keys, 25_000, &POLICY, &mut f.gen()));
    assert_eq!(
        states(&keys),
        s(&[("k1", Retiring), ("k2", Active), ("k3", Next)])
    );
    assert!(audit.contains(&"key_rotate"));
}

#[test]
fn manual_rotation_is_refused_until_next_is_old_enough() {
    let mut f = Factory(0);
    let mut keys = vec![];
    step!(keys, scheduled(&keys, 0, &POLICY, &mut f.gen()));
    assert_eq!(
        rotation_refusal(&keys, 1_999, &POLICY),
        Some(Refusal::NextTooYoung {
            kid: "k2".into(),
            ready_at_ms: 2_000
        })
    );
    assert_eq!(rotation_refusal(&keys, 2_000, &POLICY), None);
    let audit = step!(keys, rotate_now(&keys, 2_500, &POLICY, false, &mut f.gen()));
    assert_eq!(
        states(&keys),
        s(&[("k1", Retiring), ("k2", Active), ("k3", Next)])
    );
    assert_eq!(keys[1].activates_at_ms, Some(2_500));
    assert_eq!(keys[2].activates_at_ms, Some(12_500));
    assert_eq!(audit, ["key_rotate", "key_create"]);
    // The new next key is young again: a forced rotation says so in the audit.
    assert!(rotation_refusal(&keys, 2_600, &POLICY).is_some());
    let audit = step!(keys, rotate_now(&keys, 2_600, &POLICY, true, &mut f.gen()));
    assert_eq!(audit, ["key_rotate", "key_rotate_forced", "key_create"]);
    assert_eq!(
        states(&keys),
        s(&[
            ("k1", Retiring),
            ("k2", Retiring),
            ("k3", Active),
            ("k4", Next)
        ])
    );
    // Without a next key (a store from before this rule), rotation is refused; forced, it
    // makes a fresh active key and a next one.
    let mut keys = vec![];
    step!(keys, scheduled(&keys, 0, &POLICY, &mut f.gen()));
    keys.retain(|k| k.state != Next);
    assert_eq!(rotation_refusal(&keys, 100, &POLICY), Some(Refusal::NoNext));
    step!(keys, rotate_now(&keys, 100, &POLICY, true, &mut f.gen()));
    let st: Vec<KeyState> = keys.iter().map(|k| k.state).collect();
    assert_eq!(st, [Retiring, Active, Next]);
}

#[test]
fn revoking_the_active_key_hands_signing_to_another() {
    let mut f = Factory(0);
    let mut keys = vec![];
    step!(keys, scheduled(&keys, 0, &POLICY, &mut f.gen()));
    let plan = revoke(&keys, "k1", 500, &POLICY, &mut f.gen()).unwrap();
    // An emergency does not wait for the next key to age.
    let audit = step!(keys, Ok(plan.unwrap()));
    assert_eq!(
        states(&keys),
        s(&[("k1", Revoked), ("k2", Active), ("k3", Next)])
    );
    assert_eq!(keys[0].revoked_at_ms, Some(500));
    assert_eq!(audit, ["key_revoke", "key_activate", "key_create"]);
    // No next key to promote: a new key is made, and a next one.
    keys.retain(|k| k.state != Next);
    let plan = revoke(&keys, "k2", 8_000, &POLICY, &mut f.gen()).unwrap();
    step!(keys, Ok(plan.unwrap()));
    assert_eq!(
        states(&keys),
        s(&[
            ("k1", Revoked),
            ("k2", Revoked),
            ("k4", Active),
            ("k5", Next)
        ])
    );
    assert!(revoke(&keys, "nope", 8_000, &POLICY, &mut f.gen())
        .unwrap()
        .is_none());
}

#[test]
fn revoking_a_retiring_or_next_key() {
    let mut f = Factory(0);
    let mut keys = vec![];
    step!(keys, scheduled(&keys, 0, &POLICY, &mut f.gen()));
    step!(keys, rotate_now(&keys, 2_000, &POLICY, false, &mut f.gen()));
    // k1 retiring, k2 active, k3 next
    let plan = revoke(&keys, "k1", 2_200, &POLICY, &mut f.gen()).unwrap();
    step!(keys, Ok(plan.unwrap()));
    let plan = revoke(&keys, "k3", 2_300, &POLICY, &mut f.gen()).unwrap();
    step!(keys, Ok(plan.unwrap()));
    // The revoked next key is replaced at once.
    assert_eq!(
        states(&keys),
        s(&[
            ("k1", Revoked),
            ("k2", Active),
            ("k3", Revoked),
            ("k4", Next)
        ])
    );
}
