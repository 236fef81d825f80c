use super::*;
use crate::keys::Alg;

const POLICY: KeyPolicy = KeyPolicy {
    alg: Alg::EdDSA,
    rotate_every_ms: 10_000,
    publish_ahead_ms: 3_000,
    retire_after_ms: 4_000,
};

/// A key factory that numbers its keys k1, k2, ... and needs no crypto.
struct Factory(u32);

impl Factory {
    fn gen(&mut self) -> impl FnMut(KeyState, i64) -> Result<KeyRecord, KeyError> + '_ {
        move |state, activates_at| {
            self.0 += 1;
            Ok(KeyRecord {
                kid: format!("k{}", self.0),
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
    keys.iter().map(|k| (k.kid.clone(), k.state)).collect()
}

fn s(list: &[(&str, KeyState)]) -> Vec<(String, KeyState)> {
    list.iter().map(|(k, st)| (k.to_string(), *st)).collect()
}

use KeyState::*;

#[test]
fn walks_next_active_retiring_retired_on_schedule() {
    let mut f = Factory(0);
    let mut keys = vec![];
    // (time, expected states after the scheduled step at that time)
    let timeline: &[(i64, &[(&str, KeyState)])] = &[
        (0, &[("k1", Active)]),
        (6_999, &[("k1", Active)]),
        // publish_ahead before the rotation at 10_000, the next key appears.
        (7_000, &[("k1", Active), ("k2", Next)]),
        (9_999, &[("k1", Active), ("k2", Next)]),
        (10_000, &[("k1", Retiring), ("k2", Active)]),
        // retire_after (4s) later, k1 is gone.
        (13_999, &[("k1", Retiring), ("k2", Active)]),
        (14_000, &[("k1", Retired), ("k2", Active)]),
        (17_000, &[("k1", Retired), ("k2", Active), ("k3", Next)]),
        (20_000, &[("k1", Retired), ("k2", Retiring), ("k3", Active)]),
    ];
    for (now, expected) in timeline {
        let plan = scheduled(&keys, *now, &POLICY, &mut f.gen()).unwrap();
        {
            let p = plan;
            apply(&mut keys, p)
        };
        assert_eq!(states(&keys), s(expected), "at {now}");
    }
    let k1 = &keys[0];
    assert_eq!(
        (k1.retiring_at_ms, k1.retires_at_ms),
        (Some(10_000), Some(14_000))
    );
}

#[test]
fn nothing_to_do_means_an_empty_plan() {
    let mut f = Factory(0);
    let mut keys = vec![];
    {
        let p = scheduled(&keys, 0, &POLICY, &mut f.gen()).unwrap();
        apply(&mut keys, p)
    };
    let plan = scheduled(&keys, 1_000, &POLICY, &mut f.gen()).unwrap();
    assert!(plan.upserts.is_empty() && plan.audit.is_empty());
}

#[test]
fn a_late_node_rotates_straight_to_a_new_key() {
    let mut f = Factory(0);
    let mut keys = vec![];
    {
        let p = scheduled(&keys, 0, &POLICY, &mut f.gen()).unwrap();
        apply(&mut keys, p)
    };
    // Down through the whole pre-publication window and the rotation.
    let audit = {
        let p = scheduled(&keys, 25_000, &POLICY, &mut f.gen()).unwrap();
        apply(&mut keys, p)
    };
    assert_eq!(states(&keys), s(&[("k1", Retiring), ("k2", Active)]));
    assert!(audit.contains(&"key_rotate"));
}

#[test]
fn manual_rotation_promotes_next_and_publishes_a_new_one() {
    let mut f = Factory(0);
    let mut keys = vec![];
    {
        let p = scheduled(&keys, 0, &POLICY, &mut f.gen()).unwrap();
        apply(&mut keys, p)
    };
    {
        let p = scheduled(&keys, 8_000, &POLICY, &mut f.gen()).unwrap();
        apply(&mut keys, p)
    };
    let audit = {
        let p = rotate_now(&keys, 8_500, &POLICY, &mut f.gen()).unwrap();
        apply(&mut keys, p)
    };
    assert_eq!(
        states(&keys),
        s(&[("k1", Retiring), ("k2", Active), ("k3", Next)])
    );
    assert_eq!(keys[1].activates_at_ms, Some(8_500));
    assert_eq!(keys[2].activates_at_ms, Some(18_500));
    assert_eq!(audit, ["key_rotate", "key_create"]);
    // Without a next key, rotation makes a fresh active key.
    let mut keys = vec![];
    {
        let p = scheduled(&keys, 0, &POLICY, &mut f.gen()).unwrap();
        apply(&mut keys, p)
    };
    {
        let p = rotate_now(&keys, 100, &POLICY, &mut f.gen()).unwrap();
        apply(&mut keys, p)
    };
    let st: Vec<KeyState> = keys.iter().map(|k| k.state).collect();
    assert_eq!(st, [Retiring, Active, Next]);
}

#[test]
fn revoking_the_active_key_hands_signing_to_another() {
    let mut f = Factory(0);
    let mut keys = vec![];
    {
        let p = scheduled(&keys, 0, &POLICY, &mut f.gen()).unwrap();
        apply(&mut keys, p)
    };
    {
        let p = scheduled(&keys, 7_000, &POLICY, &mut f.gen()).unwrap();
        apply(&mut keys, p)
    };
    let plan = revoke(&keys, "k1", 7_500, &POLICY, &mut f.gen())
        .unwrap()
        .unwrap();
    let audit = {
        let p = plan;
        apply(&mut keys, p)
    };
    assert_eq!(states(&keys), s(&[("k1", Revoked), ("k2", Active)]));
    assert_eq!(keys[0].revoked_at_ms, Some(7_500));
    assert_eq!(audit, ["key_revoke", "key_activate"]);
    // No next key to promote: a new key is made.
    let plan = revoke(&keys, "k2", 8_000, &POLICY, &mut f.gen())
        .unwrap()
        .unwrap();
    {
        let p = plan;
        apply(&mut keys, p)
    };
    assert_eq!(
        states(&keys),
        s(&[("k1", Revoked), ("k2", Revoked), ("k3", Active)])
    );
    assert!(revoke(&keys, "nope", 8_000, &POLICY, &mut f.gen())
        .unwrap()
        .is_none());
}

#[test]
fn revoking_a_retiring_or_next_key() {
    let mut f = Factory(0);
    let mut keys = vec![];
    {
        let p = scheduled(&keys, 0, &POLICY, &mut f.gen()).unwrap();
        apply(&mut keys, p)
    };
    {
        let p = rotate_now(&keys, 100, &POLICY, &mut f.gen()).unwrap();
        apply(&mut keys, p)
    };
    // k1 retiring, k2 active, k3 next
    {
        let p = revoke(&keys, "k1", 200, &POLICY, &mut f.gen())
            .unwrap()
            .unwrap();
        apply(&mut keys, p)
    };
    {
        let p = revoke(&keys, "k3", 300, &POLICY, &mut f.gen())
            .unwrap()
            .unwrap();
        apply(&mut keys, p)
    };
    assert_eq!(
        states(&keys),
        s(&[("k1", Revoked), ("k2", Active), ("k3", Revoked)])
    );
    // The revoked next key is replaced when the window opens.
    {
        let p = scheduled(&keys, 7_100, &POLICY, &mut f.gen()).unwrap();
        apply(&mut keys, p)
    };
    assert_eq!(
        keys.last().map(|k| (k.kid.as_str(), k.state)),
        Some(("k4", Next))
    );
}
