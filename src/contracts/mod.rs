//! Authorization contracts: what each client may do, as versioned, audited amendments
//! with effective dates, and the scope registry they name.
//!
//! - The **registry** is the one list of scope names (RFC 6749 scope tokens: printable
//!   ASCII without spaces, quotes or backslashes, at most 128 bytes), each with a
//!   description, an owner, the audiences where it means something and a status
//!   (`active`, `deprecated`, `retired`).
//! - A **contract** is one client's grants, scopes, audiences, roles, token lifetime,
//!   accepted authentication methods and trusted issuers. Scopes and audiences carry a
//!   ramp [`Stage`]: `enforced` (granted), `shadow` (refused, but counted and logged as
//!   "would have been granted"), `deprecated` (granted, with `Deprecation`/`Sunset`
//!   headers).
//! - An **amendment** is an immutable version of one document (the registry, or one
//!   client's contract) with a changelog, an author, a reason and `effective_at`.
//!   Versions of a document increase by one; a rollback is a new version whose content is
//!   an earlier one's; a cancelled amendment never takes effect.
//! - The [`Book`] holds every amendment and answers what is in force at an instant.
//!
//! Everything here is pure: no clock (time is passed in), no store, no HTTP.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::clients::{Grant, Role};

pub mod files;
pub mod review;

/// Longest changelog, reason or description accepted, in bytes.
pub const MAX_TEXT: usize = 4096;
/// Most scopes, audiences or trusted issuers one contract may name.
pub const MAX_ITEMS: usize = 256;
/// Most scopes the registry may hold.
pub const MAX_SCOPES: usize = 10_000;
/// How far ahead an amendment may be scheduled.
pub const MAX_SCHEDULE_MS: i64 = 366 * 24 * 3600 * 1000;
/// Client authentication methods a contract may accept.
pub const AUTH_METHODS: [&str; 5] = [
    "client_secret_basic",
    "client_secret_post",
    "private_key_jwt",
    "tls_client_auth",
    "self_signed_tls_client_auth",
];

/// The name of the registry document.
pub const REGISTRY: &str = "registry";

/// The document name of a client's contract.
pub fn client_doc(client_id: &str) -> String {
    format!("client:{client_id}")
}

/// Where a scope or an audience is in its ramp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Granted.
    Enforced,
    /// A widening on trial: refused, counted, logged as "would have been granted".
    Shadow,
    /// A narrowing announced: still granted, with deprecation headers and a metric.
    Deprecated,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Enforced => "enforced",
            Stage::Shadow => "shadow",
            Stage::Deprecated => "deprecated",
        }
    }

    /// Whether tokens may carry it.
    pub fn grants(self) -> bool {
        self != Stage::Shadow
    }
}

/// A registered scope's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ScopeStatus {
    #[default]
    Active,
    Deprecated,
    Retired,
}

/// One registered scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ScopeDef {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub owner: String,
    /// The audiences where the scope means something (empty: any).
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub status: ScopeStatus,
}

/// The scope registry: name → definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    #[serde(default)]
    pub scopes: BTreeMap<String, ScopeDef>,
    /// Named groups of approvers (admin client ids, one per person), which an
    /// [`Elevation`]'s `approvers` names as `group:<name>`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub approver_groups: BTreeMap<String, Vec<String>>,
}

/// Longest grant an elevation may allow: 7 days.
pub const MAX_ELEVATION_SECS: u64 = 7 * 24 * 3600;
/// Longest a request may wait for its decision: 7 days.
pub const MAX_REQUEST_TTL_SECS: u64 = 7 * 24 * 3600;
/// Most distinct approvals an elevation may require.
pub const MAX_APPROVALS: u32 = 5;

/// Just-in-time elevation of one scope for one client (issue 11): the scope is not in the
/// client's standing rights, but a grant approved under this policy lets tokens carry it
/// for a bounded time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Elevation {
    /// The hard ceiling on a grant's duration, in seconds: no request or approval exceeds it.
    pub max_duration_secs: u64,
    /// Who may approve: admin client ids (one per person), or `group:<name>` of the
    /// registry's `approver_groups`.
    pub approvers: Vec<String>,
    /// How many distinct approvers must approve (1 to 5).
    #[serde(default = "one_approval")]
    pub approvals: u32,
    /// Whether the requesting client may approve its own request (never by default).
    #[serde(default)]
    pub requester_may_approve: bool,
    /// Whether a request must say why.
    #[serde(default = "yes")]
    pub justification_required: bool,
    /// Whether a request must name a ticket.
    #[serde(default)]
    pub ticket_required: bool,
    /// How long a request waits for its decision before it expires, in seconds.
    #[serde(default = "default_request_ttl")]
    pub request_ttl_secs: u64,
    /// Which users of this client's sessions may be elevated: empty (the default) only the
    /// client itself; `"*"` any subject; else these subjects (as tokens name them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
    /// Sensitive scopes are counted apart (`latch_grants_active{sensitive="true"}`) and
    /// alerted on by the shipped Prometheus rules.
    #[serde(default)]
    pub sensitive: bool,
}

fn one_approval() -> u32 {
    1
}
fn yes() -> bool {
    true
}
fn default_request_ttl() -> u64 {
    3600
}

impl Elevation {
    /// Whether a grant for `subject` (a user of the client's sessions) is allowed.
    pub fn allows_subject(&self, subject: &str) -> bool {
        self.subjects.iter().any(|s| s == "*" || s == subject)
    }

    /// The approvers' client ids, groups expanded from `registry` (unknown groups name
    /// nobody), deduplicated.
    pub fn approver_ids(&self, registry: Option<&Registry>) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for a in &self.approvers {
            match a.strip_prefix("group:") {
                Some(g) => {
                    if let Some(members) = registry.and_then(|r| r.approver_groups.get(g)) {
                        out.extend(members.iter().cloned());
                    }
                }
                None => out.push(a.clone()),
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// One client's contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Contract {
    #[serde(default)]
    pub grants: Vec<String>,
    #[serde(default)]
    pub scopes: BTreeMap<String, Stage>,
    #[serde(default)]
    pub audiences: BTreeMap<String, Stage>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Access-token lifetime in seconds (absent: the server's `tokens.access_ttl`); never
    /// above the global cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_ttl_secs: Option<u64>,
    /// Accepted client authentication methods (empty: every method the client can use).
    #[serde(default)]
    pub auth_methods: Vec<String>,
    /// For session issuers: the trusted issuers whose assertions it may present (empty:
    /// every trusted issuer).
    #[serde(default)]
    pub trusted_issuers: Vec<String>,
    #[serde(default)]
    pub delegate_service_tokens: bool,
    /// A suspended client gets no token, and its live tokens are inactive.
    #[serde(default)]
    pub suspended: bool,
    /// Scopes this client may hold only by an approved, time-bound grant, with each
    /// one's approval policy.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub elevations: BTreeMap<String, Elevation>,
}

impl Contract {
    /// The scopes tokens may carry (enforced and deprecated).
    pub fn granted_scopes(&self) -> impl Iterator<Item = &str> {
        self.scopes
            .iter()
            .filter(|(_, s)| s.grants())
            .map(|(n, _)| n.as_str())
    }

    pub fn granted_audiences(&self) -> impl Iterator<Item = &str> {
        self.audiences
            .iter()
            .filter(|(_, s)| s.grants())
            .map(|(n, _)| n.as_str())
    }
}

/// What an amendment sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "content")]
pub enum Body {
    Registry(Registry),
    Contract(Contract),
}

/// One immutable version of a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amendment {
    /// [`REGISTRY`] or `client:<id>`.
    pub doc: String,
    pub version: u64,
    /// When it takes effect, Unix ms.
    pub effective_at_ms: i64,
    /// When it was recorded, Unix ms.
    pub recorded_at_ms: i64,
    pub changelog: String,
    /// The admin client or operator that made it.
    pub author: String,
    /// Why, or the ticket.
    pub reason: String,
    /// Set on a rollback: the version whose content this restores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
    pub body: Body,
}

impl Amendment {
    pub fn contract(&self) -> Option<&Contract> {
        match &self.body {
            Body::Contract(c) => Some(c),
            Body::Registry(_) => None,
        }
    }

    pub fn registry(&self) -> Option<&Registry> {
        match &self.body {
            Body::Registry(r) => Some(r),
            Body::Contract(_) => None,
        }
    }

    /// The client id of a contract amendment.
    pub fn client(&self) -> Option<&str> {
        self.doc.strip_prefix("client:")
    }
}

/// A change to the book, as the ordered log carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "op")]
pub enum Change {
    Amend { amendment: Box<Amendment> },
    Cancel { doc: String, version: u64 },
}

impl Change {
    pub fn doc(&self) -> &str {
        match self {
            Change::Amend { amendment } => &amendment.doc,
            Change::Cancel { doc, .. } => doc,
        }
    }
}

/// A stored amendment and whether it was cancelled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub amendment: Amendment,
    #[serde(default)]
    pub cancelled: bool,
}

/// Every amendment of every document.
#[derive(Debug, Clone, Default)]
pub struct Book {
    docs: HashMap<String, Vec<Entry>>,
}

impl Book {
    pub fn new(entries: impl IntoIterator<Item = Entry>) -> Book {
        let mut book = Book::default();
        for e in entries {
            book.insert(e);
        }
        book
    }

    /// Adds an entry; the same version again replaces it (idempotent replay).
    pub fn insert(&mut self, e: Entry) {
        let list = self.docs.entry(e.amendment.doc.clone()).or_default();
        match list.binary_search_by_key(&e.amendment.version, |x| x.amendment.version) {
            Ok(i) => list[i] = e,
            Err(i) => list.insert(i, e),
        }
    }

    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::Amend { amendment } => self.insert(Entry {
                amendment: (**amendment).clone(),
                cancelled: false,
            }),
            Change::Cancel { doc, version } => {
                if let Some(e) = self
                    .docs
                    .get_mut(doc)
                    .and_then(|l| l.iter_mut().find(|e| e.amendment.version == *version))
                {
                    e.cancelled = true;
                }
            }
        }
    }

    /// Every version of `doc`, oldest first.
    pub fn history(&self, doc: &str) -> &[Entry] {
        self.docs.get(doc).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn docs(&self) -> impl Iterator<Item = &str> {
        self.docs.keys().map(String::as_str)
    }

    /// The highest version number of `doc` ever recorded (0: none); the next amendment
    /// is this plus one.
    pub fn latest_version(&self, doc: &str) -> u64 {
        self.history(doc).last().map_or(0, |e| e.amendment.version)
    }

    /// The amendment of `doc` in force at `now_ms`: the highest version, not cancelled,
    /// whose `effective_at` has come.
    pub fn in_force(&self, doc: &str, now_ms: i64) -> Option<&Amendment> {
        self.history(doc)
            .iter()
            .rev()
            .find(|e| !e.cancelled && e.amendment.effective_at_ms <= now_ms)
            .map(|e| &e.amendment)
    }

    /// Amendments of `doc` not cancelled and not yet in effect at `now_ms`.
    pub fn scheduled(&self, doc: &str, now_ms: i64) -> Vec<&Amendment> {
        self.history(doc)
            .iter()
            .filter(|e| !e.cancelled && e.amendment.effective_at_ms > now_ms)
            .map(|e| &e.amendment)
            .collect()
    }

    pub fn version(&self, doc: &str, version: u64) -> Option<&Entry> {
        self.history(doc)
            .iter()
            .find(|e| e.amendment.version == version)
    }

    /// The registry in force (empty if none was ever recorded).
    pub fn registry(&self, now_ms: i64) -> Option<&Registry> {
        self.in_force(REGISTRY, now_ms)
            .and_then(Amendment::registry)
    }
}

/// Whether `name` is a scope token (RFC 6749 §3.3) latch accepts.
pub fn valid_scope_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

/// A problem with a document: where and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// `registry`, `client:<id>`, or a file path.
    pub at: String,
    /// The key within it (`scopes."orders:write"`).
    pub key: String,
    /// A stable code.
    pub code: &'static str,
    pub message: String,
}

/// Checks a contract on its own and against `registry` (which may be the one the same
/// change brings): schema-level rules that need no history.
pub fn check_contract(
    doc: &str,
    c: &Contract,
    registry: &Registry,
    ttl_cap_secs: u64,
) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut problem = |key: String, code: &'static str, message: String| {
        out.push(Problem {
            at: doc.to_string(),
            key,
            code,
            message,
        })
    };
    for g in &c.grants {
        if Grant::parse(g).is_none() {
            problem(
                format!("grants.{g:?}"),
                "unknown_grant",
                format!("unknown grant {g:?}"),
            );
        }
    }
    for r in &c.roles {
        if Role::parse(r).is_none() {
            problem(
                format!("roles.{r:?}"),
                "unknown_role",
                format!("unknown role {r:?}"),
            );
        }
    }
    for m in &c.auth_methods {
        if !AUTH_METHODS.contains(&m.as_str()) {
            problem(
                format!("auth_methods.{m:?}"),
                "unknown_auth_method",
                format!("unknown client authentication method {m:?}"),
            );
        }
    }
    if c.scopes.len() > MAX_ITEMS
        || c.audiences.len() > MAX_ITEMS
        || c.trusted_issuers.len() > MAX_ITEMS
    {
        problem(
            "scopes".into(),
            "too_many_items",
            format!("at most {MAX_ITEMS} scopes, audiences and trusted issuers each"),
        );
    }
    for name in c.scopes.keys() {
        if !valid_scope_name(name) {
            problem(
                format!("scopes.{:?}", name.chars().take(64).collect::<String>()),
                "invalid_scope_name",
                "a scope is 1-128 printable ASCII characters without spaces, quotes or backslashes"
                    .into(),
            );
            continue;
        }
        match registry.scopes.get(name) {
            None => problem(
                format!("scopes.{name:?}"),
                "unregistered_scope",
                format!("scope {name:?} is not in the registry"),
            ),
            Some(def)
                if def.status == ScopeStatus::Retired
                    && c.scopes[name] == Stage::Enforced
                    && !c.suspended =>
            {
                problem(
                    format!("scopes.{name:?}"),
                    "scope_retired",
                    format!("scope {name:?} is retired in the registry and cannot be granted"),
                )
            }
            _ => {}
        }
    }
    for a in c.audiences.keys() {
        if a.is_empty() || a.len() > 1024 {
            problem(
                "audiences".into(),
                "invalid_audience",
                "an audience is 1-1024 bytes".into(),
            );
        }
    }
    if c.grants.iter().any(|g| g == "client_credentials") && c.granted_audiences().next().is_none()
    {
        problem(
            "audiences".into(),
            "no_audience",
            "a client with the client_credentials grant needs at least one granted audience".into(),
        );
    }
    if let Some(ttl) = c.access_ttl_secs {
        if ttl == 0 || ttl > ttl_cap_secs {
            problem(
                "access_ttl_secs".into(),
                "access_ttl_out_of_range",
                format!("access_ttl_secs must be 1 to {ttl_cap_secs} (the global cap)"),
            );
        }
    }
    out.extend(check_elevations(doc, c, registry));
    out
}

/// Checks a contract's elevation policies against `registry`.
fn check_elevations(doc: &str, c: &Contract, registry: &Registry) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut problem = |key: String, code: &'static str, message: String| {
        out.push(Problem {
            at: doc.to_string(),
            key,
            code,
            message,
        })
    };
    if c.elevations.len() > MAX_ITEMS {
        problem(
            "elevations".into(),
            "too_many_items",
            format!("at most {MAX_ITEMS} elevations"),
        );
    }
    let client = doc.strip_prefix("client:").unwrap_or("");
    for (name, e) in &c.elevations {
        let key = format!("elevations.{:?}", name.chars().take(64).collect::<String>());
        if !valid_scope_name(name) {
            problem(
                key,
                "invalid_scope_name",
                "a scope is 1-128 printable ASCII characters without spaces, quotes or backslashes"
                    .into(),
            );
            continue;
        }
        match registry.scopes.get(name) {
            None => problem(
                key.clone(),
                "unregistered_scope",
                format!("scope {name:?} is not in the registry"),
            ),
            Some(def) if def.status == ScopeStatus::Retired => problem(
                key.clone(),
                "scope_retired",
                format!("scope {name:?} is retired in the registry and cannot be elevated to"),
            ),
            _ => {}
        }
        if c.scopes.get(name).is_some_and(|s| s.grants()) {
            problem(
                key.clone(),
                "elevation_of_granted_scope",
                format!("scope {name:?} is a standing right of this contract already; elevate only to scopes it does not hold"),
            );
        }
        if e.max_duration_secs == 0 || e.max_duration_secs > MAX_ELEVATION_SECS {
            problem(
                format!("{key}.max_duration_secs"),
                "duration_out_of_range",
                format!("max_duration_secs must be 1 to {MAX_ELEVATION_SECS}"),
            );
        }
        if e.request_ttl_secs == 0 || e.request_ttl_secs > MAX_REQUEST_TTL_SECS {
            problem(
                format!("{key}.request_ttl_secs"),
                "request_ttl_out_of_range",
                format!("request_ttl_secs must be 1 to {MAX_REQUEST_TTL_SECS}"),
            );
        }
        if e.approvals == 0 || e.approvals > MAX_APPROVALS {
            problem(
                format!("{key}.approvals"),
                "approvals_out_of_range",
                format!("approvals must be 1 to {MAX_APPROVALS}"),
            );
        }
        for a in &e.approvers {
            if let Some(g) = a.strip_prefix("group:") {
                if !registry.approver_groups.contains_key(g) {
                    problem(
                        format!("{key}.approvers"),
                        "unknown_approver_group",
                        format!("approver group {g:?} is not in the registry's approver_groups"),
                    );
                }
            } else if a.is_empty() || a.len() > 256 {
                problem(
                    format!("{key}.approvers"),
                    "invalid_approver",
                    "an approver is a client id (1-256 bytes) or group:<name>".into(),
                );
            }
        }
        if e.subjects.len() > MAX_ITEMS || e.subjects.iter().any(|s| s.is_empty() || s.len() > 256)
        {
            problem(
                format!("{key}.subjects"),
                "invalid_subject",
                format!("subjects: at most {MAX_ITEMS}, each 1-256 bytes (or \"*\")"),
            );
        }
        let eligible = e
            .approver_ids(Some(registry))
            .into_iter()
            .filter(|a| e.requester_may_approve || a != client)
            .count();
        if (eligible as u64) < u64::from(e.approvals) {
            problem(
                format!("{key}.approvers"),
                "not_enough_approvers",
                format!(
                    "{} distinct approvals are required but only {eligible} approver(s) other than the requester are named",
                    e.approvals
                ),
            );
        }
    }
    out
}

/// Checks a registry on its own.
pub fn check_registry(r: &Registry) -> Vec<Problem> {
    let mut out = Vec::new();
    if r.scopes.len() > MAX_SCOPES {
        out.push(Problem {
            at: REGISTRY.into(),
            key: "scopes".into(),
            code: "too_many_items",
            message: format!("at most {MAX_SCOPES} scopes"),
        });
    }
    for (name, def) in &r.scopes {
        if !valid_scope_name(name) {
            out.push(Problem {
                at: REGISTRY.into(),
                key: format!("scopes.{:?}", name.chars().take(64).collect::<String>()),
                code: "invalid_scope_name",
                message:
                    "a scope is 1-128 printable ASCII characters without spaces, quotes or backslashes"
                        .into(),
            });
        }
        if def.description.len() > MAX_TEXT || def.owner.len() > MAX_TEXT {
            out.push(Problem {
                at: REGISTRY.into(),
                key: format!("scopes.{name:?}"),
                code: "text_too_long",
                message: format!("description and owner are at most {MAX_TEXT} bytes"),
            });
        }
    }
    out
}

/// What changes from `old` to `new`: what widens, what narrows, what moves stage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Delta {
    /// Scopes and audiences newly named, with the stage they enter at.
    pub added: Vec<(String, Stage)>,
    /// Scopes and audiences no longer named, with the stage they were at.
    pub removed: Vec<(String, Stage)>,
    /// Stage changes: name, from, to.
    pub moved: Vec<(String, Stage, Stage)>,
    /// Other fields that changed (grants, roles, ttl, ...), by name.
    pub other: Vec<String>,
    /// Whether anything a token may carry, or a client may do, grows.
    pub widens: bool,
    /// Whether anything shrinks: then exceeding live tokens become inactive.
    pub narrows: bool,
}

fn delta_map(
    kind: &str,
    old: &BTreeMap<String, Stage>,
    new: &BTreeMap<String, Stage>,
    d: &mut Delta,
) {
    for (name, &stage) in new {
        match old.get(name) {
            None => {
                d.added.push((format!("{kind} {name}"), stage));
                d.widens |= stage.grants();
            }
            Some(&was) if was != stage => {
                d.moved.push((format!("{kind} {name}"), was, stage));
                d.widens |= !was.grants() && stage.grants();
                d.narrows |= was.grants() && !stage.grants();
            }
            _ => {}
        }
    }
    for (name, &was) in old {
        if !new.contains_key(name) {
            d.removed.push((format!("{kind} {name}"), was));
            d.narrows |= was.grants();
        }
    }
}

fn set_delta(name: &str, old: &[String], new: &[String], d: &mut Delta, more_is_wider: bool) {
    let added = new.iter().any(|x| !old.contains(x));
    let removed = old.iter().any(|x| !new.contains(x));
    if added || removed {
        d.other.push(name.to_string());
        if more_is_wider {
            d.widens |= added;
            d.narrows |= removed;
        } else {
            // An empty list means "all": going to or from empty flips the direction.
            d.widens |= removed || (new.is_empty() && !old.is_empty());
            d.narrows |= added || (old.is_empty() && !new.is_empty());
        }
    }
}

/// The delta from `old` (absent: nothing) to `new`.
pub fn delta(old: Option<&Contract>, new: &Contract) -> Delta {
    let empty = Contract::default();
    let old = old.unwrap_or(&empty);
    let mut d = Delta::default();
    delta_map("scope", &old.scopes, &new.scopes, &mut d);
    delta_map("audience", &old.audiences, &new.audiences, &mut d);
    set_delta("grants", &old.grants, &new.grants, &mut d, true);
    set_delta("roles", &old.roles, &new.roles, &mut d, true);
    set_delta(
        "auth_methods",
        &old.auth_methods,
        &new.auth_methods,
        &mut d,
        false,
    );
    set_delta(
        "trusted_issuers",
        &old.trusted_issuers,
        &new.trusted_issuers,
        &mut d,
        false,
    );
    if old.access_ttl_secs != new.access_ttl_secs {
        d.other.push("access_ttl_secs".into());
        match (old.access_ttl_secs, new.access_ttl_secs) {
            (Some(a), Some(b)) if b < a => d.narrows = true,
            (Some(_), Some(_)) => d.widens = true,
            _ => {
                d.widens = true;
                d.narrows = true;
            }
        }
    }
    if old.delegate_service_tokens != new.delegate_service_tokens {
        d.other.push("delegate_service_tokens".into());
        d.widens |= new.delegate_service_tokens;
        d.narrows |= old.delegate_service_tokens;
    }
    if old.elevations != new.elevations {
        // A new or longer elevation widens what a client may come to hold; a removed one
        // narrows it (its live grants stop being honoured).
        d.other.push("elevations".into());
        d.widens |= new
            .elevations
            .keys()
            .any(|k| old.elevations.get(k) != new.elevations.get(k));
        d.narrows |= old
            .elevations
            .keys()
            .any(|k| !new.elevations.contains_key(k));
    }
    if old.suspended != new.suspended {
        d.other.push("suspended".into());
        d.widens |= old.suspended;
        d.narrows |= new.suspended;
    }
    d
}

/// Ramp rules between consecutive versions (skipped for rollbacks and for a first
/// version): a scope or audience enters granted only through `shadow`, and leaves only
/// from `deprecated`.
pub fn check_ramp(doc: &str, old: &Contract, new: &Contract) -> Vec<Problem> {
    let mut out = Vec::new();
    for (kind, o, n) in [
        ("scopes", &old.scopes, &new.scopes),
        ("audiences", &old.audiences, &new.audiences),
    ] {
        for (name, &stage) in n {
            let was = o.get(name).copied();
            if stage.grants() && was.is_none() {
                out.push(Problem {
                    at: doc.into(),
                    key: format!("{kind}.{name:?}"),
                    code: "widening_skips_shadow",
                    message: format!(
                        "{name:?} is granted in this version but was not in shadow in the previous one; add it as \"shadow\" first, promote it later"
                    ),
                });
            }
        }
        for (name, &was) in o {
            let now = n.get(name).copied();
            if was == Stage::Enforced && now.is_none_or(|s| !s.grants()) {
                out.push(Problem {
                    at: doc.into(),
                    key: format!("{kind}.{name:?}"),
                    code: "narrowing_skips_deprecated",
                    message: format!(
                        "{name:?} stops being granted without a \"deprecated\" stage first; mark it deprecated, remove it later"
                    ),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
