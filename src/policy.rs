//! Issuance policy: which scopes and which audience a client gets, and whether a
//! session may still be held. Pure functions of a client and a request: no clock, no
//! store, no HTTP.

use crate::clients::{Client, Grant, Role};
use crate::sessions::RefreshRecord;

/// Asked for more than is allowed: the scope or the audience.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// RFC 6749 `invalid_scope`.
    #[error("{0}")]
    Scope(String),
    /// RFC 8707 `invalid_target`.
    #[error("{0}")]
    Target(String),
}

/// The scopes granted: the requested ones if all are in `allowed` (each once, in the
/// order asked), else a refusal naming the first that is not; all of `allowed` when
/// none are asked for.
pub fn scope_within<S: AsRef<str>>(
    allowed: &[S],
    requested: Option<&str>,
) -> Result<String, Refusal> {
    let allowed: Vec<&str> = allowed.iter().map(AsRef::as_ref).collect();
    let Some(requested) = requested else {
        return Ok(allowed.join(" "));
    };
    let mut granted: Vec<&str> = Vec::new();
    for s in requested.split(' ').filter(|s| !s.is_empty()) {
        if !allowed.contains(&s) {
            return Err(Refusal::Scope(format!(
                "scope {:?} is not allowed here",
                s.chars().take(64).collect::<String>()
            )));
        }
        if !granted.contains(&s) {
            granted.push(s);
        }
    }
    Ok(granted.join(" "))
}

/// The audience asked for with `resource` (RFC 8707), which must be one of the client's;
/// the client's first audience by default.
pub fn audience(client: &Client, resource: Option<&str>) -> Result<String, Refusal> {
    match resource {
        Some(r) if client.audiences.iter().any(|a| a == r) => Ok(r.to_string()),
        Some(_) => Err(Refusal::Target(
            "resource is not an audience of this client".into(),
        )),
        None => client
            .audiences
            .first()
            .cloned()
            .ok_or_else(|| Refusal::Target("this client has no audience".into())),
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
        (Some(a), Some(r)) if a != r => Err(Refusal::Target(
            "audience and resource name different targets; one token has one audience".into(),
        )),
        (Some(a), _) if !client.audiences.iter().any(|c| c == a) => Err(Refusal::Target(
            "audience is not an audience of this client".into(),
        )),
        (Some(a), _) => Ok(a.to_string()),
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
        let Err(Refusal::Scope(why)) = scope_within(&allowed, Some("a admin")) else {
            panic!("a scope outside the allowed must be refused");
        };
        assert!(why.contains("admin"), "{why}");
        let long = "x".repeat(10_000);
        let Err(Refusal::Scope(why)) = scope_within(&allowed, Some(&long)) else {
            panic!("refused");
        };
        assert!(
            why.len() < 100,
            "the description quotes at most 64 chars: {why}"
        );
    }

    #[test]
    fn the_audience_is_the_clients_first_or_the_resource_asked_for() {
        let c = client(&["a"], &["https://one", "https://two"]);
        assert_eq!(audience(&c, None).unwrap(), "https://one");
        assert_eq!(audience(&c, Some("https://two")).unwrap(), "https://two");
        assert!(matches!(
            audience(&c, Some("https://evil")),
            Err(Refusal::Target(_))
        ));
        assert!(matches!(
            audience(&client(&[], &[]), None),
            Err(Refusal::Target(_))
        ));
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
            assert!(
                matches!(exchange_audience(&c, a, r), Err(Refusal::Target(_))),
                "{a:?} {r:?}"
            );
        }
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
