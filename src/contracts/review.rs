//! Deploy-time review of a contracts directory, with no server: `check` (every rule a
//! server would refuse an amendment for, and the ramp rules), `diff` (what widens and
//! what narrows per client), `plan` (what is in force at an instant).

use serde::Serialize;

use super::files::{Dir, FileVersion};
use super::{
    check_contract, check_ramp, check_registry, client_doc, delta, Delta, Problem, Registry, Stage,
};

/// Every problem of `dir`. `known_clients`: the client ids latch's configuration defines
/// (a contract for any other client is an error); `None` skips that rule.
pub fn check(dir: &Dir, known_clients: Option<&[String]>, ttl_cap_secs: u64) -> Vec<Problem> {
    let mut out = Vec::new();
    let empty = Registry::default();
    let registry = match &dir.registry {
        Some(r) => {
            out.extend(check_registry(r));
            r
        }
        None => {
            out.push(Problem {
                at: "scopes.toml".into(),
                key: String::new(),
                code: "no_registry",
                message: "scopes.toml (the scope registry) is missing; contracts can only name registered scopes".into(),
            });
            &empty
        }
    };
    for (id, versions) in &dir.clients {
        let at = |f: &FileVersion| f.path.display().to_string();
        if let Some(known) = known_clients {
            if !known.iter().any(|k| k == id) {
                if let Some(first) = versions.first() {
                    out.push(Problem {
                        at: at(first),
                        key: String::new(),
                        code: "unknown_client",
                        message: format!(
                            "client {id:?} is not configured in latch (no [[clients]] entry)"
                        ),
                    });
                }
            }
        }
        let mut previous: Option<&FileVersion> = None;
        for f in versions {
            let mut found = check_contract(&at(f), &f.contract, registry, ttl_cap_secs);
            if f.changelog.trim().is_empty() {
                found.push(Problem {
                    at: at(f),
                    key: "changelog".into(),
                    code: "missing_changelog",
                    message: "every amendment says what changes and why in `changelog`".into(),
                });
            }
            if let Some(prev) = previous {
                if f.version != prev.version + 1 {
                    found.push(Problem {
                        at: at(f),
                        key: String::new(),
                        code: "version_gap",
                        message: format!(
                            "version {} follows {}; versions go up by one",
                            f.version, prev.version
                        ),
                    });
                }
                if let (Some(a), Some(b)) = (prev.effective_at_ms, f.effective_at_ms) {
                    if b < a {
                        found.push(Problem {
                            at: at(f),
                            key: "effective_at".into(),
                            code: "effective_at_order",
                            message: "takes effect before the version it amends".into(),
                        });
                    }
                }
            }
            match f.rollback_of {
                Some(target) => match versions.iter().find(|v| v.version == target) {
                    Some(t) if t.version < f.version && t.contract == f.contract => {}
                    Some(t) if t.version < f.version => found.push(Problem {
                        at: at(f),
                        key: "rollback_of".into(),
                        code: "rollback_mismatch",
                        message: format!("a rollback to version {target} must carry exactly that version's contract"),
                    }),
                    _ => found.push(Problem {
                        at: at(f),
                        key: "rollback_of".into(),
                        code: "rollback_unknown_version",
                        message: format!("version {target} is not an earlier version of this client"),
                    }),
                },
                None => {
                    if let Some(prev) = previous {
                        found.extend(check_ramp(&at(f), &prev.contract, &f.contract));
                    }
                }
            }
            out.extend(found);
            previous = Some(f);
        }
    }
    out
}

/// One client's change between two directories.
#[derive(Debug, Clone, Serialize)]
pub struct ClientDelta {
    pub client: String,
    pub from_version: Option<u64>,
    pub to_version: Option<u64>,
    #[serde(flatten)]
    pub delta: Delta,
}

/// Per client, what changes from `a`'s latest versions to `b`'s.
pub fn diff(a: &Dir, b: &Dir) -> Vec<ClientDelta> {
    let mut ids: Vec<&String> = a.clients.keys().chain(b.clients.keys()).collect();
    ids.sort();
    ids.dedup();
    let mut out = Vec::new();
    for id in ids {
        let old = a.clients.get(id).and_then(|v| v.last());
        let new = b.clients.get(id).and_then(|v| v.last());
        let delta = match (old, new) {
            (_, Some(n)) => delta(old.map(|o| &o.contract), &n.contract),
            (Some(o), None) => {
                // The client's contract file is gone: everything it granted narrows away.
                let mut d = delta(None, &o.contract);
                std::mem::swap(&mut d.added, &mut d.removed);
                d.narrows = d.widens;
                d.widens = false;
                d
            }
            (None, None) => continue,
        };
        if delta == Delta::default() {
            continue;
        }
        out.push(ClientDelta {
            client: id.clone(),
            from_version: old.map(|o| o.version),
            to_version: new.map(|n| n.version),
            delta,
        });
    }
    out
}

/// One client's contract in force at an instant.
#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    pub client: String,
    pub doc: String,
    pub version: u64,
    pub effective_at_ms: Option<i64>,
    pub granted_scopes: Vec<String>,
    pub shadow: Vec<String>,
    pub deprecated: Vec<String>,
    pub audiences: Vec<String>,
    pub suspended: bool,
}

/// What `dir` puts in force at `at_ms`.
pub fn plan(dir: &Dir, at_ms: i64) -> Vec<Planned> {
    dir.at(at_ms)
        .into_iter()
        .map(|(id, f)| {
            let c = &f.contract;
            let with = |stage: Stage| -> Vec<String> {
                c.scopes
                    .iter()
                    .chain(c.audiences.iter())
                    .filter(|(_, s)| **s == stage)
                    .map(|(n, _)| n.clone())
                    .collect()
            };
            Planned {
                client: id.to_string(),
                doc: client_doc(id),
                version: f.version,
                effective_at_ms: f.effective_at_ms,
                granted_scopes: c.granted_scopes().map(String::from).collect(),
                shadow: with(Stage::Shadow),
                deprecated: with(Stage::Deprecated),
                audiences: c.granted_audiences().map(String::from).collect(),
                suspended: c.suspended,
            }
        })
        .collect()
}
