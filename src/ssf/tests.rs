//! Unit tests of the stream rules: which SETs a revocation yields, what is pending, how
//! deliveries and acknowledgements move the cursor, and the request checks.

use serde_json::json;

use super::request::{self, Expected, Fields};
use super::*;

const ISS: &str = "https://latch.example";

fn ev(seq: u64, kind: RevocationKind, value: &str) -> RevocationEvent {
    RevocationEvent {
        seq,
        kind,
        value: value.into(),
        revoked_at_ms: 1_700_000_000_000 + seq as i64,
    }
}

fn stream(head: u64) -> Stream {
    Stream::new(
        "s1".into(),
        "rcv".into(),
        "https://rcv.example".into(),
        head,
        Fields {
            events_requested: None,
            delivery: Delivery::Poll,
            description: None,
        },
        0,
    )
}

fn window(events: Vec<RevocationEvent>, upto: u64) -> Window {
    Window { events, upto }
}

fn positions(p: &[Pending]) -> Vec<(u64, u32)> {
    p.iter().map(|p| (p.pos.seq, p.pos.part)).collect()
}

#[test]
fn every_revocation_kind_maps_to_its_caep_events() {
    use RevocationKind::*;
    type Case = (
        RevocationKind,
        &'static str,
        Vec<(&'static str, serde_json::Value)>,
    );
    let cases: Vec<Case> = vec![
        (
            Token,
            "j1",
            vec![(
                SESSION_REVOKED,
                json!({"format": "jwt_id", "iss": ISS, "jti": "j1"}),
            )],
        ),
        (
            Session,
            "sid1",
            vec![(
                SESSION_REVOKED,
                json!({"format": "complex", "session": {"format": "opaque", "id": "sid1"}}),
            )],
        ),
        (
            Subject,
            "alice",
            vec![(
                SESSION_REVOKED,
                json!({"format": "complex", "user": {"format": "iss_sub", "iss": ISS, "sub": "alice"}}),
            )],
        ),
        (
            Client,
            "orders",
            vec![
                (
                    SESSION_REVOKED,
                    json!({"format": "complex", "application": {"format": "opaque", "id": "orders"}}),
                ),
                (
                    CREDENTIAL_CHANGE,
                    json!({"format": "complex", "application": {"format": "opaque", "id": "orders"}}),
                ),
            ],
        ),
        (
            All,
            "",
            vec![(
                SESSION_REVOKED,
                json!({"format": "complex", "tenant": {"format": "uri", "uri": ISS}}),
            )],
        ),
    ];
    for (kind, value, expected) in cases {
        let sets = revocation_sets(&ev(7, kind, value), ISS);
        let got: Vec<_> = sets
            .iter()
            .map(|p| (p.event_type, p.sub_id.clone()))
            .collect();
        assert_eq!(got, expected, "{kind:?}");
        for (i, p) in sets.iter().enumerate() {
            assert_eq!(p.pos, Pos::new(7, i as u32));
            assert_eq!(p.txn, "rev-7", "one txn per revocation");
            assert_eq!(p.event["event_timestamp"], json!(1_700_000_000));
        }
    }
    let cc = &revocation_sets(&ev(3, Client, "orders"), ISS)[1].event;
    assert_eq!(cc["credential_type"], "app");
    assert_eq!(cc["change_type"], "revoke");
}

#[test]
fn pending_is_in_order_after_the_cursor_and_filtered_by_requested_types() {
    let mut s = stream(10);
    let log = vec![
        ev(10, RevocationKind::Token, "old"),
        ev(11, RevocationKind::Client, "c"),
        ev(12, RevocationKind::Subject, "bob"),
    ];
    s.queue_verification(Some("st".into()), 11, 1);
    let w = window(log.clone(), 12);
    let p = pending(&s, &w, ISS, 100);
    assert_eq!(positions(&p), vec![(11, 0), (11, 1), (11, 2), (12, 0)]);
    assert_eq!(p[2].event_type, VERIFICATION);
    assert_eq!(p[2].event, json!({"state": "st"}));
    assert_eq!(p[2].sub_id, json!({"format": "opaque", "id": "s1"}));
    assert_eq!(positions(&pending(&s, &w, ISS, 2)), vec![(11, 0), (11, 1)]);

    s.events_requested = Some(vec![CREDENTIAL_CHANGE.into(), "urn:unknown".into()]);
    assert_eq!(s.events_delivered(), vec![CREDENTIAL_CHANGE]);
    assert_eq!(
        positions(&pending(&s, &w, ISS, 100)),
        vec![(11, 1), (11, 2)]
    );

    // Beyond what the read covered, a verification waits for the revocations before it.
    let short = window(log[..1].to_vec(), 10);
    assert!(pending(&s, &short, ISS, 100).is_empty());

    s.status = Status::Paused;
    assert!(
        pending(&s, &w, ISS, 100).is_empty(),
        "a paused stream sends nothing"
    );
}

#[test]
fn delivery_moves_the_cursor_only_over_a_delivered_prefix() {
    let mut s = stream(0);
    let log: Vec<_> = (1..=4)
        .map(|i| ev(i, RevocationKind::Session, "x"))
        .collect();
    let w = window(log, 4);
    // Out of order: 2 and 3 acknowledged, 1 not: nothing moves, but they are remembered.
    assert!(mark_delivered(
        &mut s,
        &w,
        ISS,
        &[Pos::new(2, 0), Pos::new(3, 0)]
    ));
    assert_eq!(s.cursor, Pos::new(0, 1));
    assert_eq!(positions(&pending(&s, &w, ISS, 10)), vec![(1, 0), (4, 0)]);
    // Unknown, past and future positions are ignored.
    assert!(!mark_delivered(
        &mut s,
        &w,
        ISS,
        &[Pos::new(0, 0), Pos::new(9, 0), Pos::new(1, 7)]
    ));
    mark_delivered(&mut s, &w, ISS, &[Pos::new(1, 0)]);
    assert_eq!(s.cursor, Pos::new(3, 0));
    assert!(s.acked_ahead.is_empty());
    mark_delivered(&mut s, &w, ISS, &[Pos::new(4, 0)]);
    assert_eq!(
        s.cursor,
        Pos::new(4, 1),
        "all delivered: the cursor reaches the window's end"
    );
    assert!(pending(&s, &w, ISS, 10).is_empty());
}

#[test]
fn a_stream_skips_revocations_it_does_not_carry_and_keeps_later_verifications() {
    let mut s = stream(0);
    s.events_requested = Some(vec![CREDENTIAL_CHANGE.into()]);
    let w = window(
        vec![
            ev(1, RevocationKind::Token, "t"),
            ev(2, RevocationKind::Token, "u"),
        ],
        2,
    );
    assert!(pending(&s, &w, ISS, 10).is_empty());
    mark_delivered(&mut s, &w, ISS, &[]);
    assert_eq!(s.cursor, Pos::new(2, 1));
    // A verification queued at an older head still lands after the cursor.
    s.queue_verification(None, 1, 5);
    let v = pending(&s, &w, ISS, 10);
    assert_eq!(positions(&v), vec![(2, 2)]);
    mark_delivered(&mut s, &w, ISS, &[Pos::new(2, 2)]);
    assert!(s.control.is_empty());
    s.queue_verification(None, 2, 6);
    assert_eq!(
        positions(&pending(&s, &w, ISS, 10)),
        vec![(2, 3)],
        "parts never repeat"
    );
}

#[test]
fn disabling_drops_held_events_and_enabling_starts_at_the_head() {
    let mut s = stream(0);
    s.queue_verification(None, 0, 1);
    s.set_status(Status::Paused, None, 3);
    assert_eq!(s.control.len(), 1, "paused holds");
    s.set_status(Status::Disabled, Some("maintenance".into()), 3);
    assert!(s.control.is_empty());
    s.set_status(Status::Enabled, None, 9);
    assert_eq!(s.cursor, Pos::new(9, 1));
    let paused_then_enabled = {
        let mut t = stream(0);
        t.set_status(Status::Paused, None, 5);
        t.set_status(Status::Enabled, None, 9);
        t.cursor
    };
    assert_eq!(
        paused_then_enabled,
        Pos::new(0, 1),
        "paused keeps its cursor"
    );
}

#[test]
fn jtis_round_trip_and_nothing_else_parses() {
    let p = Pos::new(42, 3);
    assert_eq!(parse_jti("s1", &jti("s1", p)), Some(p));
    for bad in [
        "s2.42.3",
        "s1.42",
        "s1.-1.0",
        "s1.x.0",
        "s1.42.3.1",
        "s1..0",
        "s1.42.+3",
        "",
    ] {
        assert_eq!(parse_jti("s1", bad), None, "{bad}");
    }
}

#[test]
fn stored_streams_round_trip() {
    let mut s = stream(3);
    s.queue_verification(Some("x".into()), 3, 1);
    s.acked_ahead.insert(Pos::new(5, 0));
    let stored = StoredStream {
        id: s.id.clone(),
        version: 1,
        json: s.encode(),
    };
    assert_eq!(Stream::decode(&stored).unwrap(), s);
}

#[test]
fn create_requests_are_checked_member_by_member() {
    let push = json!({"method": PUSH, "endpoint_url": "http://r/e"});
    type Case = (serde_json::Value, Result<(), &'static str>);
    let cases: Vec<Case> = vec![
        (json!({}), Ok(())),
        (
            json!({"delivery": push, "events_requested": [SESSION_REVOKED], "description": "d"}),
            Ok(()),
        ),
        (json!([]), Err("must be an object")),
        (json!("x"), Err("must be an object")),
        (
            json!({"stream_id": "a"}),
            Err("supplied by the transmitter"),
        ),
        (json!({"aud": "a"}), Err("supplied by the transmitter")),
        (json!({"bogus": 1}), Err("unknown member")),
        (json!({"events_requested": "x"}), Err("events_requested")),
        (json!({"events_requested": [1]}), Err("events_requested")),
        (
            json!({"events_requested": vec!["u"; 33]}),
            Err("events_requested"),
        ),
        (json!({"description": 5}), Err("description")),
        (
            json!({"delivery": "push"}),
            Err("delivery must be an object"),
        ),
        (json!({"delivery": {}}), Err("delivery.method is required")),
        (
            json!({"delivery": {"method": "urn:x"}}),
            Err("unsupported delivery.method"),
        ),
        (
            json!({"delivery": {"method": PUSH}}),
            Err("endpoint_url is required"),
        ),
        (
            json!({"delivery": {"method": PUSH, "endpoint_url": 3}}),
            Err("endpoint_url must be a URL"),
        ),
        (
            json!({"delivery": {"method": PUSH, "endpoint_url": "http://r", "authorization_header": "a\nb"}}),
            Err("authorization_header"),
        ),
        (
            json!({"delivery": {"method": PUSH, "endpoint_url": "http://r", "x": 1}}),
            Err("unknown member"),
        ),
        (
            json!({"delivery": {"method": POLL, "endpoint_url": "http://elsewhere"}}),
            Err("supplied by the transmitter"),
        ),
    ];
    for (body, expected) in cases {
        match (request::create(&body), expected) {
            (Ok(_), Ok(())) => {}
            (Err(e), Err(needle)) => assert!(e.contains(needle), "{body}: {e}"),
            (got, _) => panic!("{body}: unexpected {got:?}"),
        }
    }
    let long = "é".repeat(1000);
    let f = request::create(&json!({"description": long})).unwrap();
    assert_eq!(
        f.description.unwrap().chars().count(),
        request::MAX_DESCRIPTION
    );
    assert_eq!(
        request::create(&json!({})).unwrap().delivery,
        Delivery::Poll
    );
}

#[test]
fn updates_keep_or_delete_what_is_left_out_and_check_transmitter_members() {
    let mut s = stream(0);
    s.description = Some("old".into());
    s.events_requested = Some(vec![SESSION_REVOKED.into()]);
    let x = Expected {
        issuer: ISS,
        stream: &s,
        min_verification_interval: Some(5),
        poll_url: "https://latch.example/ssf/poll/s1",
    };
    let patched =
        request::update(&json!({"stream_id": "s1", "description": "new"}), &x, false).unwrap();
    assert_eq!(patched.description.as_deref(), Some("new"));
    assert_eq!(
        patched.events_requested, s.events_requested,
        "PATCH keeps what is left out"
    );
    let replaced =
        request::update(&json!({"stream_id": "s1", "description": "new"}), &x, true).unwrap();
    assert_eq!(
        replaced.events_requested, None,
        "PUT deletes what is left out"
    );
    let ok = json!({"stream_id": "s1", "iss": ISS, "aud": ["https://rcv.example"], "events_delivered": [SESSION_REVOKED],
        "events_supported": [CREDENTIAL_CHANGE, SESSION_REVOKED], "min_verification_interval": 5,
        "delivery": {"method": POLL, "endpoint_url": "https://latch.example/ssf/poll/s1"}});
    request::update(&ok, &x, true).unwrap();
    for (key, value) in [
        ("iss", json!("https://other")),
        ("aud", json!("x")),
        ("events_delivered", json!([CREDENTIAL_CHANGE])),
        ("events_supported", json!([])),
        ("min_verification_interval", json!(1)),
        ("inactivity_timeout", json!(10)),
    ] {
        let mut body = json!({"stream_id": "s1"});
        body[key] = value;
        let e = request::update(&body, &x, false).unwrap_err();
        assert!(e.contains("does not match"), "{key}: {e}");
    }
}

#[test]
fn status_verification_and_poll_bodies() {
    assert_eq!(
        request::status(&json!({"stream_id": "s", "status": "paused", "reason": "r"})).unwrap(),
        (Status::Paused, Some("r".into()))
    );
    for bad in [
        json!({"stream_id": "s"}),
        json!({"status": "off"}),
        json!({"status": 1}),
        json!({"status": "enabled", "x": 1}),
        json!({"status": "enabled", "reason": "r".repeat(300)}),
    ] {
        assert!(request::status(&bad).is_err(), "{bad}");
    }
    assert_eq!(
        request::verification(&json!({"stream_id": "s", "state": "abc"})).unwrap(),
        Some("abc".into())
    );
    assert!(request::verification(&json!({"state": 1})).is_err());
    assert!(request::verification(&json!({"state": "x".repeat(2000)})).is_err());

    let p = request::poll(&json!({}), 100).unwrap();
    assert_eq!(
        (p.max_events, p.return_immediately, p.ack.len()),
        (100, false, 0)
    );
    let p = request::poll(&json!({"maxEvents": 5000, "returnImmediately": true, "ack": ["a"], "setErrs": {"b": {"err": "invalid_key", "description": "d"}}}), 100).unwrap();
    assert_eq!(p.max_events, request::MAX_EVENTS);
    assert!(p.return_immediately);
    assert_eq!(
        p.set_errs,
        vec![("b".to_string(), "invalid_key".to_string())]
    );
    for bad in [
        json!({"maxEvents": -1}),
        json!({"maxEvents": 1.5}),
        json!({"maxEvents": "5"}),
        json!({"returnImmediately": "yes"}),
        json!({"ack": "a"}),
        json!({"ack": [1]}),
        json!({"ack": vec!["a"; 1001]}),
        json!({"setErrs": []}),
        json!({"setErrs": {"a": "x"}}),
        json!({"setErrs": {"a": {"description": "x"}}}),
        json!({"other": 1}),
        json!([]),
    ] {
        assert!(request::poll(&bad, 10).is_err(), "{bad}");
    }
}

#[test]
fn stream_ids_are_unreserved_characters() {
    assert!(request::valid_stream_id("AbC-_.~09"));
    for bad in ["", "a/b", "a b", "ä", &"a".repeat(65)] {
        assert!(!request::valid_stream_id(bad), "{bad}");
    }
}

#[test]
fn a_contract_entry_yields_no_set_and_the_cursor_passes_it() {
    use RevocationKind::*;
    assert!(revocation_sets(&ev(5, Contract, "orders-service@2"), ISS).is_empty());
    let mut s = stream(10);
    let w = window(
        vec![ev(11, Contract, "orders-service@2"), ev(12, Subject, "bob")],
        12,
    );
    assert_eq!(positions(&pending(&s, &w, ISS, 100)), [(12, 0)]);
    assert!(mark_delivered(&mut s, &w, ISS, &[Pos::new(12, 0)]));
    assert!(pending(&s, &w, ISS, 100).is_empty());
    assert!(s.cursor >= Pos::new(12, 0));
    // A window holding only a contract entry: nothing pending, the cursor passes it.
    let mut s = stream(10);
    let w = window(vec![ev(11, Contract, "orders-service@2")], 11);
    assert!(pending(&s, &w, ISS, 100).is_empty());
    assert!(mark_delivered(&mut s, &w, ISS, &[]));
    assert!(s.cursor > Pos::new(11, 0));
}
