use super::*;

fn policy() -> Elevation {
    Elevation {
        max_duration_secs: 3600,
        approvers: vec!["alice".into(), "bob".into(), "svc".into()],
        approvals: 1,
        requester_may_approve: false,
        justification_required: true,
        ticket_required: false,
        request_ttl_secs: 600,
        sensitive: false,
        subjects: Vec::new(),
    }
}

fn ask(duration_secs: u64, start_at_ms: Option<i64>) -> Request {
    Request {
        scope: "db:admin".into(),
        subject: None,
        duration_secs,
        start_at_ms,
        justification: "incident 42".into(),
        ticket: String::new(),
    }
}

fn by(who: &str, at_ms: i64) -> Decision {
    Decision {
        by: who.into(),
        at_ms,
        reason: "ok".into(),
        request_id: "r".into(),
    }
}

const T: i64 = 1_000_000;

fn requested(p: &Elevation) -> Grant {
    request("g-1".into(), "svc", ask(600, None), Some(p), T, "r").unwrap()
}

#[test]
fn a_request_checks_the_policy() {
    let p = policy();
    let code = |r: Result<Grant, Refused>| r.unwrap_err().code;
    assert_eq!(
        code(request("g-1".into(), "svc", ask(600, None), None, T, "r")),
        "elevation_not_in_contract"
    );
    assert_eq!(
        code(request(
            "g-1".into(),
            "svc",
            ask(3601, None),
            Some(&p),
            T,
            "r"
        )),
        "duration_above_ceiling"
    );
    assert_eq!(
        code(request("g-1".into(), "svc", ask(0, None), Some(&p), T, "r")),
        "invalid_duration"
    );
    assert_eq!(
        code(request(
            "g-1".into(),
            "svc",
            ask(60, Some(T - 61_000)),
            Some(&p),
            T,
            "r"
        )),
        "start_in_past"
    );
    assert_eq!(
        code(request(
            "g-1".into(),
            "svc",
            ask(60, Some(T + 600_001)),
            Some(&p),
            T,
            "r"
        )),
        "start_after_request_expiry"
    );
    let mut bare = ask(60, None);
    bare.justification = " ".into();
    assert_eq!(
        code(request("g-1".into(), "svc", bare, Some(&p), T, "r")),
        "justification_required"
    );
    let mut t = p.clone();
    t.ticket_required = true;
    assert_eq!(
        code(request(
            "g-1".into(),
            "svc",
            ask(60, None),
            Some(&t),
            T,
            "r"
        )),
        "ticket_required"
    );
    let g = requested(&p);
    assert_eq!(g.status(T), Status::Requested);
    assert_eq!(g.status(T + 600_000), Status::Expired);
}

#[test]
fn approval_starts_the_clock_and_time_ends_it() {
    let p = policy();
    let g = requested(&p);
    let ids = p.approver_ids(None);
    let a = approve(&g, "alice", &p, &ids, by("alice", T + 5_000)).unwrap();
    assert_eq!(a.version, 2);
    assert_eq!(
        a.starts_at_ms,
        T + 5_000,
        "from approval, not from the request"
    );
    assert_eq!(a.ends_at_ms, T + 5_000 + 600_000);
    assert!(a.covers("svc", "svc", "db:admin", T + 5_000));
    assert!(
        !a.covers("svc", "svc", "db:admin", a.ends_at_ms),
        "ends at its end"
    );
    assert!(!a.covers("other", "other", "db:admin", T + 6_000));
    assert_eq!(a.status(a.ends_at_ms), Status::Ended);
}

#[test]
fn a_requested_start_counts_the_duration_from_it() {
    let p = policy();
    let g = request(
        "g-1".into(),
        "svc",
        ask(60, Some(T + 100_000)),
        Some(&p),
        T,
        "r",
    )
    .unwrap();
    let a = approve(&g, "bob", &p, &p.approver_ids(None), by("bob", T + 1_000)).unwrap();
    assert_eq!((a.starts_at_ms, a.ends_at_ms), (T + 100_000, T + 160_000));
    assert_eq!(a.status(T + 2_000), Status::Approved);
    assert_eq!(a.status(T + 100_000), Status::Active);
}

#[test]
fn hostile_decisions_are_refused() {
    let p = policy();
    let ids = p.approver_ids(None);
    let g = requested(&p);
    let code = |r: Result<Grant, Refused>| r.unwrap_err().code;
    assert_eq!(
        code(approve(&g, "svc", &p, &ids, by("svc", T))),
        "self_approval"
    );
    assert_eq!(
        code(approve(&g, "mallory", &p, &ids, by("mallory", T))),
        "approver_not_allowed"
    );
    assert_eq!(
        code(approve(&g, "alice", &p, &ids, by("alice", T + 600_000))),
        "request_expired"
    );
    let denied = deny(&g, "bob", &p, &ids, by("bob", T)).unwrap();
    assert_eq!(
        code(approve(&denied, "alice", &p, &ids, by("alice", T))),
        "request_denied"
    );
    let mut two = p.clone();
    two.approvals = 2;
    let g2 = request("g-2".into(), "svc", ask(60, None), Some(&two), T, "r").unwrap();
    let once = approve(&g2, "alice", &two, &ids, by("alice", T)).unwrap();
    assert_eq!(once.status(T), Status::Requested, "one of two approvals");
    assert_eq!(
        code(approve(&once, "alice", &two, &ids, by("alice", T))),
        "already_approved_by_you"
    );
    let both = approve(&once, "bob", &two, &ids, by("bob", T + 1)).unwrap();
    assert_eq!(both.status(T + 1), Status::Active);
    assert_eq!(
        code(approve(&both, "svc", &two, &ids, by("svc", T + 2))),
        "already_approved"
    );
    let mut self_ok = p.clone();
    self_ok.requester_may_approve = true;
    assert!(approve(&g, "svc", &self_ok, &ids, by("svc", T)).is_ok());
}

#[test]
fn revoke_ends_a_live_grant_only() {
    let p = policy();
    let ids = p.approver_ids(None);
    let g = requested(&p);
    let a = approve(&g, "alice", &p, &ids, by("alice", T)).unwrap();
    let r = revoke(&a, by("bob", T + 10)).unwrap();
    assert_eq!(r.status(T + 10), Status::Revoked);
    assert!(!r.covers("svc", "svc", "db:admin", T + 10));
    assert_eq!(
        revoke(&r, by("bob", T + 11)).unwrap_err().code,
        "grant_revoked"
    );
    assert_eq!(
        revoke(&a, by("bob", a.ends_at_ms)).unwrap_err().code,
        "grant_not_live"
    );
}

#[test]
fn grant_ids_are_checked() {
    assert!(valid_id("g-AbC_9-x"));
    for bad in [
        "",
        "g-",
        "x-abc",
        "g-a/b",
        "g-a b",
        &format!("g-{}", "a".repeat(63)),
    ] {
        assert!(!valid_id(bad), "{bad:?}");
    }
}

#[test]
fn a_subject_grant_elevates_that_user_only_and_only_if_the_policy_opens_it() {
    let mut p = policy();
    let mut r = ask(600, None);
    r.subject = Some("idp|alice".into());
    assert_eq!(
        request("g-1".into(), "svc", r.clone(), Some(&p), T, "r")
            .unwrap_err()
            .code,
        "subject_not_allowed"
    );
    p.subjects = vec!["idp|alice".into()];
    let g = request("g-1".into(), "svc", r.clone(), Some(&p), T, "r").unwrap();
    let ids = p.approver_ids(None);
    // The user may not approve their own elevation either (were they an approver).
    let mut with_user = p.clone();
    with_user.approvers.push("idp|alice".into());
    let ids_user = with_user.approver_ids(None);
    assert_eq!(
        approve(&g, "idp|alice", &with_user, &ids_user, by("idp|alice", T))
            .unwrap_err()
            .code,
        "self_approval"
    );
    let a = approve(&g, "alice", &p, &ids, by("alice", T)).unwrap();
    assert!(a.covers("svc", "idp|alice", "db:admin", T));
    assert!(
        !a.covers("svc", "svc", "db:admin", T),
        "not the client's own tokens"
    );
    assert!(
        !a.covers("svc", "idp|bob", "db:admin", T),
        "not another user's"
    );
    r.subject = Some(String::new());
    assert_eq!(
        request("g-2".into(), "svc", r, Some(&p), T, "r")
            .unwrap_err()
            .code,
        "invalid_subject"
    );
}
