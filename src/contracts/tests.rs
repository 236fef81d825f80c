use std::collections::BTreeMap;

use super::files::{self, Dir};
use super::review;
use super::*;

fn contract(scopes: &[(&str, Stage)]) -> Contract {
    Contract {
        grants: vec!["client_credentials".into()],
        scopes: scopes.iter().map(|(n, s)| (n.to_string(), *s)).collect(),
        audiences: BTreeMap::from([("https://api".to_string(), Stage::Enforced)]),
        ..Contract::default()
    }
}

fn registry(names: &[&str]) -> Registry {
    Registry {
        scopes: names
            .iter()
            .map(|n| (n.to_string(), ScopeDef::default()))
            .collect(),
        ..Registry::default()
    }
}

fn amendment(version: u64, effective_at_ms: i64, c: Contract) -> Amendment {
    Amendment {
        doc: client_doc("svc"),
        version,
        effective_at_ms,
        recorded_at_ms: 0,
        changelog: format!("v{version}"),
        author: "admin".into(),
        reason: "test".into(),
        rollback_of: None,
        body: Body::Contract(c),
    }
}

#[test]
fn the_book_puts_in_force_the_highest_effective_uncancelled_version() {
    use Stage::*;
    let mut book = Book::new([
        Entry {
            amendment: amendment(1, 0, contract(&[("a", Enforced)])),
            cancelled: false,
        },
        Entry {
            amendment: amendment(2, 100, contract(&[("a", Enforced), ("b", Shadow)])),
            cancelled: false,
        },
    ]);
    let doc = client_doc("svc");
    assert_eq!(book.in_force(&doc, 99).unwrap().version, 1);
    assert_eq!(book.in_force(&doc, 100).unwrap().version, 2);
    assert_eq!(book.scheduled(&doc, 50).len(), 1);
    assert_eq!(book.latest_version(&doc), 2);
    book.apply(&Change::Cancel {
        doc: doc.clone(),
        version: 2,
    });
    assert_eq!(
        book.in_force(&doc, 1000).unwrap().version,
        1,
        "a cancelled amendment never takes effect"
    );
    assert!(book.scheduled(&doc, 50).is_empty());
    assert_eq!(book.latest_version(&doc), 2, "versions are never reused");
    // Replaying the same change is idempotent.
    let a3 = amendment(3, 0, contract(&[]));
    book.apply(&Change::Amend {
        amendment: Box::new(a3.clone()),
    });
    book.apply(&Change::Amend {
        amendment: Box::new(a3),
    });
    assert_eq!(book.history(&doc).len(), 3);
    assert!(book.in_force("client:other", 0).is_none());
}

#[test]
fn a_change_round_trips_through_json() {
    let change = Change::Amend {
        amendment: Box::new(amendment(4, 7, contract(&[("a", Stage::Deprecated)]))),
    };
    let json = serde_json::to_string(&change).unwrap();
    assert_eq!(serde_json::from_str::<Change>(&json).unwrap(), change);
    let cancel = Change::Cancel {
        doc: "client:svc".into(),
        version: 3,
    };
    let json = serde_json::to_string(&cancel).unwrap();
    assert!(json.contains(r#""op":"cancel""#), "{json}");
    assert_eq!(serde_json::from_str::<Change>(&json).unwrap(), cancel);
}

#[test]
fn contracts_name_only_registered_known_things() {
    let r = registry(&["a"]);
    let codes = |c: &Contract| -> Vec<&'static str> {
        check_contract("client:svc", c, &r, 3600)
            .into_iter()
            .map(|p| p.code)
            .collect()
    };
    assert!(codes(&contract(&[("a", Stage::Enforced)])).is_empty());
    assert_eq!(
        codes(&contract(&[("zzz", Stage::Shadow)])),
        vec!["unregistered_scope"]
    );
    assert_eq!(
        codes(&contract(&[("bad scope", Stage::Shadow)])),
        vec!["invalid_scope_name"]
    );
    let mut c = contract(&[("a", Stage::Enforced)]);
    c.grants.push("password".into());
    c.roles.push("root".into());
    c.auth_methods.push("none".into());
    c.access_ttl_secs = Some(7200);
    assert_eq!(
        codes(&c),
        vec![
            "unknown_grant",
            "unknown_role",
            "unknown_auth_method",
            "access_ttl_out_of_range"
        ]
    );
    let mut no_aud = contract(&[("a", Stage::Enforced)]);
    no_aud.audiences.insert("https://api".into(), Stage::Shadow);
    assert_eq!(codes(&no_aud), vec!["no_audience"]);
    let mut retired = registry(&["a"]);
    retired.scopes.get_mut("a").unwrap().status = ScopeStatus::Retired;
    let found: Vec<_> = check_contract("c", &contract(&[("a", Stage::Enforced)]), &retired, 3600)
        .into_iter()
        .map(|p| p.code)
        .collect();
    assert_eq!(found, vec!["scope_retired"]);
}

#[test]
fn ramps_go_through_shadow_in_and_deprecated_out() {
    use Stage::*;
    let codes = |old: &[(&str, Stage)], new: &[(&str, Stage)]| -> Vec<&'static str> {
        check_ramp("c", &contract(old), &contract(new))
            .into_iter()
            .map(|p| p.code)
            .collect()
    };
    assert!(codes(&[("a", Enforced)], &[("a", Enforced), ("b", Shadow)]).is_empty());
    assert!(
        codes(&[("b", Shadow)], &[("b", Enforced)]).is_empty(),
        "promotion"
    );
    assert_eq!(
        codes(&[], &[("b", Enforced)]),
        vec!["widening_skips_shadow"]
    );
    assert!(codes(&[("a", Enforced)], &[("a", Deprecated)]).is_empty());
    assert!(
        codes(&[("a", Deprecated)], &[]).is_empty(),
        "removal after deprecation"
    );
    assert_eq!(
        codes(&[("a", Enforced)], &[]),
        vec!["narrowing_skips_deprecated"]
    );
    assert_eq!(
        codes(&[("a", Enforced)], &[("a", Shadow)]),
        vec!["narrowing_skips_deprecated"]
    );
}

#[test]
fn deltas_say_what_widens_and_what_narrows() {
    use Stage::*;
    let d = delta(
        Some(&contract(&[("a", Enforced)])),
        &contract(&[("a", Enforced), ("b", Shadow)]),
    );
    assert!(
        !d.widens && !d.narrows,
        "a shadow scope grants nothing yet: {d:?}"
    );
    assert_eq!(d.added, vec![("scope b".to_string(), Shadow)]);
    let d = delta(
        Some(&contract(&[("b", Shadow)])),
        &contract(&[("b", Enforced)]),
    );
    assert!(d.widens && !d.narrows);
    let d = delta(Some(&contract(&[("a", Deprecated)])), &contract(&[]));
    assert!(d.narrows && !d.widens);
    let mut suspended = contract(&[("a", Enforced)]);
    suspended.suspended = true;
    let d = delta(Some(&contract(&[("a", Enforced)])), &suspended);
    assert!(d.narrows && d.other == vec!["suspended".to_string()]);
    let mut shorter = contract(&[]);
    shorter.access_ttl_secs = Some(60);
    let mut longer = contract(&[]);
    longer.access_ttl_secs = Some(600);
    assert!(delta(Some(&longer), &shorter).narrows);
    assert!(delta(Some(&shorter), &longer).widens);
}

fn write(dir: &std::path::Path, rel: &str, text: &str) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

const SCOPES: &str = r#"
[scopes."orders:read"]
description = "read orders"
owner = "team-orders"
[scopes."orders:write"]
description = "write orders"
owner = "team-orders"
"#;

const V1: &str = r#"
changelog = "initial"
[contract]
grants = ["client_credentials"]
scopes = { "orders:read" = "enforced" }
audiences = { "https://orders.example" = "enforced" }
"#;

#[test]
fn a_directory_is_checked_diffed_and_planned_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write(d, "scopes.toml", SCOPES);
    write(d, "clients/svc/1.toml", V1);
    write(
        d,
        "clients/svc/2.toml",
        &V1.replace("initial", "write in shadow").replace(
            r#""orders:read" = "enforced" }"#,
            r#""orders:read" = "enforced", "orders:write" = "shadow" }"#,
        ),
    );
    write(
        d,
        "clients/svc/3.toml",
        &V1.replace("initial", "promote write")
            .replace(
                r#""orders:read" = "enforced" }"#,
                r#""orders:read" = "enforced", "orders:write" = "enforced" }"#,
            )
            .replace(
                "[contract]",
                "effective_at = \"2030-01-01T00:00:00Z\"\n[contract]",
            ),
    );
    let dir = files::load(d).expect("loads");
    let known = vec!["svc".to_string()];
    assert!(
        review::check(&dir, Some(&known), 3600).is_empty(),
        "{:?}",
        review::check(&dir, Some(&known), 3600)
    );
    let unknown = review::check(&dir, Some(&[]), 3600);
    assert_eq!(
        unknown.iter().map(|p| p.code).collect::<Vec<_>>(),
        vec!["unknown_client"]
    );

    let now = files::parse_time("2026-12-01T00:00:00Z").unwrap();
    let plan = review::plan(&dir, now);
    assert_eq!(plan[0].version, 2);
    assert_eq!(plan[0].shadow, vec!["orders:write".to_string()]);
    let later = review::plan(&dir, files::parse_time("2030-01-02T00:00:00Z").unwrap());
    assert_eq!(later[0].version, 3);
    assert_eq!(
        later[0].granted_scopes,
        vec!["orders:read".to_string(), "orders:write".to_string()]
    );

    let before = Dir {
        clients: BTreeMap::from([("svc".to_string(), dir.clients["svc"][..1].to_vec())]),
        ..dir.clone()
    };
    let diff = review::diff(&before, &dir);
    assert_eq!(diff.len(), 1);
    assert!(diff[0].delta.widens, "{:?}", diff[0]);
    assert_eq!(
        (diff[0].from_version, diff[0].to_version),
        (Some(1), Some(3))
    );
    assert!(review::diff(&dir, &dir).is_empty());
}

#[test]
fn check_names_file_key_and_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write(d, "scopes.toml", SCOPES);
    write(d, "clients/svc/1.toml", V1);
    // A widening straight to enforced, no changelog.
    write(
        d,
        "clients/svc/2.toml",
        &V1.replace("changelog = \"initial\"", "").replace(
            r#""orders:read" = "enforced" }"#,
            r#""orders:read" = "enforced", "orders:write" = "enforced" }"#,
        ),
    );
    write(
        d,
        "clients/svc/4.toml",
        &V1.replace(r#""orders:read""#, r#""orders:admin""#),
    );
    let dir = files::load(d).unwrap();
    let problems = review::check(&dir, None, 3600);
    let mut found: Vec<(String, &str)> = problems
        .iter()
        .map(|p| {
            (
                std::path::Path::new(&p.at)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                p.code,
            )
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        vec![
            ("2.toml".to_string(), "missing_changelog"),
            ("2.toml".to_string(), "widening_skips_shadow"),
            ("4.toml".to_string(), "narrowing_skips_deprecated"),
            ("4.toml".to_string(), "narrowing_skips_deprecated"),
            ("4.toml".to_string(), "unregistered_scope"),
            ("4.toml".to_string(), "version_gap"),
            ("4.toml".to_string(), "widening_skips_shadow"),
        ]
    );
    let widening = problems
        .iter()
        .find(|p| p.code == "widening_skips_shadow")
        .unwrap();
    assert_eq!(widening.key, r#"scopes."orders:write""#);

    write(d, "clients/svc/x.toml", V1);
    write(d, "clients/svc/5.toml", "changelog = 1");
    let errors = files::load(d).expect_err("bad files");
    let codes: Vec<_> = errors.iter().map(|p| p.code).collect();
    assert!(
        codes.contains(&"invalid_file_name") && codes.contains(&"invalid_file"),
        "{codes:?}"
    );
}
