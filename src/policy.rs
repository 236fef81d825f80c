//! Issuance policy: which scopes and which audience a client gets, and whether a
//! session may still be held. Pure functions of a client and a request: no clock, no
//! store, no HTTP.

use crate::clients::{Client, Grant, Role};
use crate::sessions::RefreshRecord;

/// Asked for more than is allowed: what kind of refusal, a stable reason code (documented
/// in docs/API.md; safe to show: it names nothing of other clients), and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{description}")]
pub struct Refusal {
    pub kind: RefusalKind,
    pub reason: &'static str,
    pub description: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// RFC 6749 `invalid_scope`.
    Scope,
    /// RFC 8707 `invalid_target`.
    Target,
    /// The client may get no token at all (RFC 6749 `unauthorized_client`).
    Client,
}

impl Refusal {
    pub fn scope(reason: &'static str, description: String) -> Refusal {
        Refusal {
            kind: RefusalKind::Scope,
            reason,
            description,
        }
    }

    fn target(reason: &'static str, description: impl Into<String>) -> Refusal {
        Refusal {
            kind: RefusalKind::Target,
            reason,
            description: description.into(),
        }
    }

    /// Whether it refused something in `shadow`: a "would have been granted".
    pub fn is_shadow(&self) -> bool {
        self.reason == "scope_in_shadow" || self.reason == "audience_in_shadow"
    }
}

fn quoted(s: &str) -> String {
    format!("{:?}", s.chars().take(64).collect::<String>())
}

/// The requested scopes if all are in `allowed` (each once, in the order asked), else
/// the first that is not; all of `allowed` when none are asked for.
fn within<'a, S: AsRef<str>>(
    allowed: &'a [S],
    requested: Option<&'a str>,
) -> Result<String, &'a str> {
    let allowed: Vec<&str> = allowed.iter().map(AsRef::as_ref).collect();
    let Some(requested) = requested else {
        return Ok(allowed.join(" "));
    };
    let mut granted: Vec<&str> = Vec::new();
    for s in requested.split(' ').filter(|s| !s.is_empty()) {
        if !allowed.contains(&s) {
            return Err(s);
        }
        if !granted.contains(&s) {
            granted.push(s);
        }
    }
    Ok(granted.join(" "))
}

/// The scopes granted from `allowed` (a session's or a subject token's): the requested
/// ones if all are in it, else a refusal naming the first that is not (`scope_not_allowed`).
pub fn scope_within<S: AsRef<str>>(
    allowed: &[S],
    requested: Option<&str>,
) -> Result<String, Refusal> {
    within(allowed, requested).map_err(|s| {
        Refusal::scope(
            "scope_not_allowed",
            format!("scope {} is not allowed here", quoted(s)),
        )
    })
}

/// The scopes a client's contract grants for `requested` (all granted ones when none
/// are asked for). A scope it does not grant is refused with why: `scope_in_shadow` (on
/// trial: counted as "would have been granted"), `scope_retired` (retired in the
/// registry), or `scope_not_in_contract`.
pub fn contract_scope(client: &Client, requested: Option<&str>) -> Result<String, Refusal> {
    within(&client.scopes, requested).map_err(|s| {
        if client.shadow_scopes.iter().any(|x| x == s) {
            Refusal::scope(
                "scope_in_shadow",
                format!(
                    "scope {} is being rolled out to this client and is not granted yet (shadow stage)",
                    quoted(s)
                ),
            )
        } else if client.retired_scopes.iter().any(|x| x == s) {
            Refusal::scope(
                "scope_retired",
                format!("scope {} is retired and no longer granted", quoted(s)),
            )
        } else {
            Refusal::scope(
                "scope_not_in_contract",
                format!("scope {} is not in this client's contract", quoted(s)),
            )
        }
    })
}

/// The refusal of an elevated scope with no grant active now.
pub fn elevation_not_active(scope: &str) -> Refusal {
    Refusal::scope(
        "elevation_not_active",
        format!(
            "scope {} is an elevation: it needs a grant approved for this client and active now; request one (POST /grants)",
            quoted(scope)
        ),
    )
}

/// The scope string of a token carrying `elevated` (covered by an active grant) with the
/// rest of `requested`, which must be within the contract.
pub fn elevated_scope(client: &Client, requested: &str, elevated: &str) -> Result<String, Refusal> {
    let rest: Vec<&str> = requested
        .split(' ')
        .filter(|s| !s.is_empty() && *s != elevated)
        .collect();
    let mut scope = if rest.is_empty() {
        String::new()
    } else {
        contract_scope(client, Some(&rest.join(" ")))?
    };
    if !scope.is_empty() {
        scope.push(' ');
    }
    scope.push_str(elevated);
    Ok(scope)
}

/// Refuses every request of a suspended client.
pub fn not_suspended(client: &Client) -> Result<(), Refusal> {
    if client.suspended {
        return Err(Refusal {
            kind: RefusalKind::Client,
            reason: "contract_suspended",
            description: "this client's contract is suspended; no token is issued".into(),
        });
    }
    Ok(())
}

/// The audience asked for with `resource` (RFC 8707), which must be one of the client's;
/// the client's first audience by default.
pub fn audience(client: &Client, resource: Option<&str>) -> Result<String, Refusal> {
    match resource {
        Some(r) => granted_audience(client, r),
        None => client.audiences.first().cloned().ok_or_else(|| {
            Refusal::target("audience_not_in_contract", "this client has no audience")
        }),
    }
}

/// `aud` if the client's contract grants it; else why not (`audience_in_shadow`,
/// `audience_not_in_contract`).
fn granted_audience(client: &Client, aud: &str) -> Result<String, Refusal> {
    if client.audiences.iter().any(|a| a == aud) {
        Ok(aud.to_string())
    } else if client.shadow_audiences.iter().any(|a| a == aud) {
        Err(Refusal::target(
            "audience_in_shadow",
            "this audience is being rolled out to this client and is not granted yet (shadow stage)",
        ))
    } else {
        Err(Refusal::target(
            "audience_not_in_contract",
            "the requested audience is not in this client's contract",
        ))
    }
}

/// RFC 8693 §2.1: `audience` (a logical name) or `resource` (RFC 8707), either of which
/// must be one of the caller's audiences; both only if they agree.
pub fn exchange_audience(
    client: &Client,
    audience: Option<&str>,
    resource: Option<&str>,
) -> Result<String, Refusal> {
    match (audience, resource) {
        (Some(a), Some(r)) if a != r => Err(Refusal::target(
            "audience_mismatch",
            "audience and resource name different targets; one token has one audience",
        )),
        (Some(a), _) => granted_audience(client, a),
        (None, _) => self::audience(client, resource),
    }
}

/// The scopes a delegation may carry: those of the subject token the caller holds too.
pub fn delegable<'a>(client: &Client, subject_scope: &'a str) -> Vec<&'a str> {
    subject_scope
        .split(' ')
        .filter(|s| !s.is_empty() && client.scopes.iter().any(|c| c == s))
        .collect()
}

/// Whether the client may still hold this session: the record is checked against the
/// client's current configuration, not trusted for what it says (a client that lost the
/// grant, the role, a scope or the audience gets nothing more from its old sessions).
pub fn session_allowed(client: &Client, r: &RefreshRecord) -> bool {
    client.has_grant(Grant::RefreshToken)
        && client.has_role(Role::SessionIssuer)
        && client.audiences.contains(&r.aud)
        && r.scope
            .split(' ')
            .filter(|s| !s.is_empty())
            .all(|s| client.scopes.iter().any(|c| c == s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(scopes: &[&str], audiences: &[&str]) -> Client {
        let mut c = Client::new("svc", [0u8; 32]);
        c.scopes = scopes.iter().map(|s| s.to_string()).collect();
        c.audiences = audiences.iter().map(|s| s.to_string()).collect();
        c
    }

    #[test]
    fn scopes_are_those_asked_for_within_the_allowed() {
        let allowed = ["a", "b", "c"];
        assert_eq!(scope_within(&allowed, None).unwrap(), "a b c");
        assert_eq!(scope_within(&allowed, Some("c a")).unwrap(), "c a");
        assert_eq!(scope_within(&allowed, Some(" a  a ")).unwrap(), "a");
        assert_eq!(scope_within(&allowed, Some("")).unwrap(), "");
        let refusal = scope_within(&allowed, Some("a admin")).expect_err("outside the allowed");
        assert_eq!(
            (refusal.kind, refusal.reason),
            (RefusalKind::Scope, "scope_not_allowed")
        );
        assert!(refusal.description.contains("admin"), "{refusal}");
        let long = "x".repeat(10_000);
        let refusal = scope_within(&allowed, Some(&long)).expect_err("refused");
        assert!(
            refusal.description.len() < 100,
            "the description quotes at most 64 chars: {refusal}"
        );
    }

    #[test]
    fn the_audience_is_the_clients_first_or_the_resource_asked_for() {
        let c = client(&["a"], &["https://one", "https://two"]);
        assert_eq!(audience(&c, None).unwrap(), "https://one");
        assert_eq!(audience(&c, Some("https://two")).unwrap(), "https://two");
        let target = |r: Result<String, Refusal>| r.map_err(|e| (e.kind, e.reason));
        assert_eq!(
            target(audience(&c, Some("https://evil"))),
            Err((RefusalKind::Target, "audience_not_in_contract"))
        );
        assert_eq!(
            target(audience(&client(&[], &[]), None)),
            Err((RefusalKind::Target, "audience_not_in_contract"))
        );
    }

    #[test]
    fn exchange_audience_and_resource_must_agree_and_belong_to_the_caller() {
        let c = client(&["a"], &["https://one", "https://two"]);
        assert_eq!(exchange_audience(&c, None, None).unwrap(), "https://one");
        assert_eq!(
            exchange_audience(&c, Some("https://two"), None).unwrap(),
            "https://two"
        );
        assert_eq!(
            exchange_audience(&c, Some("https://two"), Some("https://two")).unwrap(),
            "https://two"
        );
        assert_eq!(
            exchange_audience(&c, None, Some("https://two")).unwrap(),
            "https://two"
        );
        for (a, r) in [
            (Some("https://one"), Some("https://two")),
            (Some("https://evil"), None),
            (None, Some("https://evil")),
        ] {
            let refusal = exchange_audience(&c, a, r).expect_err("refused");
            assert_eq!(refusal.kind, RefusalKind::Target, "{a:?} {r:?}");
        }
    }

    #[test]
    fn contract_refusals_say_why() {
        let mut c = client(&["read"], &["https://api"]);
        c.shadow_scopes = vec!["write".into()];
        c.retired_scopes = vec!["old".into()];
        c.shadow_audiences = vec!["https://new".into()];
        let reason = |r: Result<String, Refusal>| r.map_err(|e| e.reason);
        assert_eq!(reason(contract_scope(&c, Some("read"))), Ok("read".into()));
        assert_eq!(
            reason(contract_scope(&c, Some("read write"))),
            Err("scope_in_shadow")
        );
        assert_eq!(
            reason(contract_scope(&c, Some("old"))),
            Err("scope_retired")
        );
        assert_eq!(
            reason(contract_scope(&c, Some("admin"))),
            Err("scope_not_in_contract")
        );
        assert_eq!(
            reason(audience(&c, Some("https://new"))),
            Err("audience_in_shadow")
        );
        assert!(contract_scope(&c, Some("write")).unwrap_err().is_shadow());
        assert!(not_suspended(&c).is_ok());
        c.suspended = true;
        let refusal = not_suspended(&c).unwrap_err();
        assert_eq!(
            (refusal.kind, refusal.reason),
            (RefusalKind::Client, "contract_suspended")
        );
    }

    #[test]
    fn delegation_keeps_only_scopes_both_hold() {
        let c = client(&["read", "write"], &[]);
        assert_eq!(delegable(&c, "read admin write"), vec!["read", "write"]);
        assert!(delegable(&c, "admin").is_empty());
        assert!(delegable(&c, "").is_empty());
    }

    #[test]
    fn a_session_is_held_only_within_the_clients_current_config() {
        let mut c = client(&["a", "b"], &["https://api"]);
        c.grants = vec![Grant::RefreshToken];
        c.roles = vec![Role::SessionIssuer];
        let r = RefreshRecord {
            sid: "s".into(),
            sub: "alice".into(),
            client_id: "svc".into(),
            scope: "a b".into(),
            aud: "https://api".into(),
            username: None,
            rsq: 1,
            rse: 1,
            issued_at_ms: 0,
            expires_at_ms: 1,
            jkt: None,
            x5t_s256: None,
            mac: None,
        };
        assert!(session_allowed(&c, &r));
        let widened = RefreshRecord {
            scope: "a b admin".into(),
            ..r.clone()
        };
        assert!(!session_allowed(&c, &widened), "a scope the client lost");
        let moved = RefreshRecord {
            aud: "https://other".into(),
            ..r.clone()
        };
        assert!(!session_allowed(&c, &moved), "an audience the client lost");
        let mut no_grant = client(&["a", "b"], &["https://api"]);
        no_grant.roles = vec![Role::SessionIssuer];
        assert!(
            !session_allowed(&no_grant, &r),
            "the refresh grant was removed"
        );
        let mut no_role = client(&["a", "b"], &["https://api"]);
        no_role.grants = vec![Grant::RefreshToken];
        assert!(
            !session_allowed(&no_role, &r),
            "the session_issuer role was removed"
        );
    }
}
