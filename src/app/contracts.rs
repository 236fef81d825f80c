//! The contracts in force on this node: the book of every amendment (loaded from the
//! store at start, then kept current by the follower from the ordered log), and the
//! rights of each client at an instant, built once per (contract version, registry
//! version) and cached.
//!
//! Also the writes: amendments, cancellations, rollbacks and promotions are recorded in
//! the store with a compare-and-set on the document's version, and reach every node
//! (this one included) through the log, in order.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::DashMap;

use super::error::Error;
use super::App;
use crate::audit::NewAudit;
use crate::clients::{Client, Clients, Deprecated, Grant, Role};
use crate::config::ACCESS_TTL_CAP;
use crate::contracts::{
    check_contract, check_ramp, check_registry, client_doc, Amendment, Body, Book, Change,
    Contract, Entry, Problem, Registry, ScopeDef, ScopeStatus, Stage, MAX_SCHEDULE_MS, MAX_TEXT,
    REGISTRY,
};
use crate::revocation::RevocationEvent;
use crate::store::{ContractWrite, SharedStore, StoreError};
use crate::time::now_ms;

/// How far in the past an `effective_at` may lie (clock skew between the caller and
/// latch): beyond, the request is refused rather than silently backdated.
pub const PAST_TOLERANCE_MS: i64 = 60_000;

/// Every client's rights, per contract version.
pub struct Contracts {
    /// The configured clients: secrets and rates (contracts never hold secrets).
    base: Clients,
    book: ArcSwap<Book>,
    /// Documents whose version 1 is implicit (the configuration, not yet recorded): it is
    /// recorded by the first amendment, so a start-up writes nothing.
    implicit: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Client id → its rights in force, while they stay in force: built for one book
    /// generation, until the next scheduled switch. The hot path is one lookup by `&str`.
    built: DashMap<String, Built>,
    /// Bumped by every applied change: a cached entry of an older generation is stale.
    generation: std::sync::atomic::AtomicU64,
}

struct Built {
    generation: u64,
    /// Valid from (the later of the contract's and the registry's `effective_at`) ...
    from_ms: i64,
    /// ... until the next scheduled amendment of either takes effect.
    until_ms: i64,
    client: Arc<Client>,
}

impl Contracts {
    /// The contracts of `base` (the configured clients) under the recorded `book`; a
    /// document with no recorded version gets its implicit version 1 from the
    /// configuration.
    pub fn new(base: Clients, mut book: Book) -> Contracts {
        let mut implicit = std::collections::HashSet::new();
        for a in implicit_versions(&base) {
            if book.latest_version(&a.doc) == 0 {
                implicit.insert(a.doc.clone());
                book.insert(Entry {
                    amendment: a,
                    cancelled: false,
                });
            }
        }
        Contracts {
            base,
            book: ArcSwap::from_pointee(book),
            implicit: std::sync::Mutex::new(implicit),
            built: DashMap::new(),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether `doc`'s version 1 is implicit (not recorded yet).
    fn is_implicit(&self, doc: &str) -> bool {
        self.implicit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(doc)
    }

    /// The configured clients, for authentication.
    pub fn configured(&self) -> &Clients {
        &self.base
    }

    pub fn book(&self) -> Arc<Book> {
        self.book.load_full()
    }

    /// Applies a change from the log (idempotent).
    pub fn apply(&self, change: &Change) {
        if let Change::Amend { amendment } = change {
            self.implicit
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&amendment.doc);
        }
        let mut book = (*self.book.load_full()).clone();
        book.apply(change);
        self.book.store(Arc::new(book));
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.built.clear();
    }

    /// Applies a log entry of kind `contract`; a value that does not parse is logged and
    /// skipped (the store wrote it from a parsed change, so this is corruption).
    pub fn apply_event(&self, e: &RevocationEvent) {
        match serde_json::from_str::<Change>(&e.value) {
            Ok(change) => self.apply(&change),
            Err(error) => {
                tracing::error!(seq = e.seq, %error, "unreadable contract change in the log; skipped")
            }
        }
    }

    /// Whether a token issued to `id` under contract version `cv` exceeds any version of
    /// that contract in force since (cancelled and future ones aside): a token a
    /// narrowing made inactive stays inactive when a later version grants the scope
    /// again, as a revoked token does. (The version in force is checked by the caller.)
    pub fn exceeded_since(
        &self,
        id: &str,
        cv: u64,
        claims: &crate::tokens::AccessClaims,
        now_ms: i64,
    ) -> bool {
        let book = self.book.load();
        let doc = client_doc(id);
        book.history(&doc)
            .iter()
            .filter(|e| {
                !e.cancelled && e.amendment.version > cv && e.amendment.effective_at_ms <= now_ms
            })
            .filter_map(|e| e.amendment.contract())
            .any(|k| {
                let scopes_ok = claims
                    .scope
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .all(|s| k.scopes.get(s).is_some_and(|st| st.grants()));
                let aud_ok =
                    k.audiences.get(&claims.aud).is_some_and(|st| st.grants()) || claims.aud == id;
                k.suspended || !scopes_ok || !aud_ok
            })
    }

    /// The rights of client `id` at `now_ms`: its configuration's secret and rates with
    /// the contract in force, or the configuration alone while no contract is recorded.
    /// `None` for a client that is not configured (it cannot authenticate, and its tokens
    /// are inactive).
    pub fn client(&self, id: &str, now_ms: i64) -> Option<Arc<Client>> {
        let generation = self.generation.load(std::sync::atomic::Ordering::Acquire);
        if let Some(b) = self.built.get(id) {
            if b.generation == generation && b.from_ms <= now_ms && now_ms < b.until_ms {
                return Some(b.client.clone());
            }
        }
        let base = self.base.get(id)?;
        let book = self.book.load();
        let doc = client_doc(id);
        let Some(a) = book.in_force(&doc, now_ms) else {
            return Some(base.clone());
        };
        let registry = book.in_force(REGISTRY, now_ms);
        let scheduled = book.scheduled(&doc, now_ms);
        let next = |list: &[&Amendment]| list.iter().map(|s| s.effective_at_ms).min();
        let until_ms = [next(&scheduled), next(&book.scheduled(REGISTRY, now_ms))]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(i64::MAX);
        let from_ms = a
            .effective_at_ms
            .max(registry.map_or(i64::MIN, |r| r.effective_at_ms));
        let client = Arc::new(build(
            base,
            a,
            registry.and_then(Amendment::registry),
            &scheduled,
        ));
        self.built.insert(
            id.to_string(),
            Built {
                generation,
                from_ms,
                until_ms,
                client: client.clone(),
            },
        );
        Some(client)
    }
}

/// A client's rights under amendment `a`.
fn build(
    base: &Client,
    a: &Amendment,
    registry: Option<&Registry>,
    scheduled: &[&Amendment],
) -> Client {
    let mut c = base.clone();
    let Some(k) = a.contract() else { return c };
    let status = |s: &str| registry.and_then(|r| r.scopes.get(s)).map(|d| d.status);
    // When a granted name stops being granted by a scheduled amendment: its sunset.
    let sunset = |name: &str, scopes: bool| {
        scheduled
            .iter()
            .filter(|s| s.version > a.version)
            .find(|s| {
                s.contract().is_some_and(|next| {
                    let map = if scopes {
                        &next.scopes
                    } else {
                        &next.audiences
                    };
                    !map.get(name).is_some_and(|st| st.grants())
                })
            })
            .map(|s| s.effective_at_ms)
    };
    c.contract_version = a.version;
    c.grants = k.grants.iter().filter_map(|g| Grant::parse(g)).collect();
    c.roles = k.roles.iter().filter_map(|r| Role::parse(r)).collect();
    c.scopes.clear();
    c.retired_scopes.clear();
    c.shadow_scopes.clear();
    c.deprecated.clear();
    for (name, stage) in &k.scopes {
        match (stage, status(name)) {
            (_, Some(ScopeStatus::Retired)) => c.retired_scopes.push(name.clone()),
            (Stage::Shadow, _) => c.shadow_scopes.push(name.clone()),
            (Stage::Deprecated, _) | (Stage::Enforced, Some(ScopeStatus::Deprecated)) => {
                c.scopes.push(name.clone());
                c.deprecated.push(Deprecated {
                    name: name.clone(),
                    since_ms: a.effective_at_ms,
                    sunset_ms: sunset(name, true),
                });
            }
            (Stage::Enforced, _) => c.scopes.push(name.clone()),
        }
    }
    c.audiences.clear();
    c.shadow_audiences.clear();
    for (name, stage) in &k.audiences {
        match stage {
            Stage::Shadow => c.shadow_audiences.push(name.clone()),
            Stage::Deprecated => {
                c.audiences.push(name.clone());
                c.deprecated.push(Deprecated {
                    name: name.clone(),
                    since_ms: a.effective_at_ms,
                    sunset_ms: sunset(name, false),
                });
            }
            Stage::Enforced => c.audiences.push(name.clone()),
        }
    }
    // The configuration's order first (its first audience is the default one, its scope
    // order is the default scope string), then names the contract added, by name.
    let config_order =
        |list: &[String], name: &String| list.iter().position(|x| x == name).unwrap_or(usize::MAX);
    c.scopes.sort_by_key(|s| config_order(&base.scopes, s));
    c.audiences
        .sort_by_key(|a| config_order(&base.audiences, a));
    c.suspended = k.suspended;
    c.access_ttl = k.access_ttl_secs.map(Duration::from_secs);
    c.auth_methods = k.auth_methods.clone();
    c.trusted_issuers = k.trusted_issuers.clone();
    c.delegate_service_tokens = k.delegate_service_tokens;
    c
}

/// The contract a configured client has before any amendment: version 1 seeds it.
pub fn contract_of(c: &Client) -> Contract {
    Contract {
        grants: c
            .grants
            .iter()
            .map(|g| match g {
                Grant::ClientCredentials => "client_credentials",
                Grant::RefreshToken => "refresh_token",
                Grant::TokenExchange => crate::clients::TOKEN_EXCHANGE,
            })
            .map(String::from)
            .collect(),
        scopes: c
            .scopes
            .iter()
            .map(|s| (s.clone(), Stage::Enforced))
            .collect(),
        audiences: c
            .audiences
            .iter()
            .map(|s| (s.clone(), Stage::Enforced))
            .collect(),
        roles: c
            .roles
            .iter()
            .map(|r| match r {
                Role::Introspect => "introspect",
                Role::Admin => "admin",
                Role::SessionIssuer => "session_issuer",
                Role::SsfReceiver => "ssf_receiver",
            })
            .map(String::from)
            .collect(),
        access_ttl_secs: None,
        auth_methods: Vec::new(),
        trusted_issuers: Vec::new(),
        delegate_service_tokens: c.delegate_service_tokens,
        suspended: false,
        elevations: Default::default(),
    }
}

/// The registry before any amendment: every scope a configured client names, active,
/// owned by the configuration, meaningful for the audiences of the clients naming it.
pub fn registry_of(clients: &Clients) -> Registry {
    let mut r = Registry::default();
    for c in clients.iter() {
        for s in &c.scopes {
            let def = r.scopes.entry(s.clone()).or_insert_with(|| ScopeDef {
                description: String::new(),
                owner: "config".into(),
                audiences: Vec::new(),
                status: ScopeStatus::Active,
            });
            for a in &c.audiences {
                if !def.audiences.contains(a) {
                    def.audiences.push(a.clone());
                }
            }
        }
    }
    r
}

/// One line per difference between the configuration and the contracts in force.
pub fn drift(book: &Book, clients: &Clients, now_ms: i64) -> Vec<String> {
    let mut out = Vec::new();
    for c in clients.iter() {
        let doc = client_doc(&c.id);
        let Some(a) = book.in_force(&doc, now_ms) else {
            continue;
        };
        let Some(stored) = a.contract() else { continue };
        let d = crate::contracts::delta(Some(&contract_of(c)), stored);
        if d == crate::contracts::Delta::default() {
            continue;
        }
        let mut parts: Vec<String> = Vec::new();
        parts.extend(
            d.added
                .iter()
                .map(|(n, s)| format!("+{n} ({})", s.as_str())),
        );
        parts.extend(d.removed.iter().map(|(n, _)| format!("-{n}")));
        parts.extend(
            d.moved
                .iter()
                .map(|(n, from, to)| format!("{n} {} -> {}", from.as_str(), to.as_str())),
        );
        parts.extend(d.other.iter().map(|f| format!("{f} changed")));
        out.push(format!(
            "client {}: the store's contract version {} (in force) differs from [[clients]]: {}; the store wins",
            c.id,
            a.version,
            parts.join(", ")
        ));
    }
    let mut stored: Vec<&str> = book
        .docs()
        .filter_map(|d| d.strip_prefix("client:"))
        .filter(|id| clients.get(id).is_none())
        .collect();
    stored.sort_unstable();
    for id in stored {
        out.push(format!(
            "client {id}: has a contract in the store but no [[clients]] entry (no secret): it cannot authenticate"
        ));
    }
    out
}

/// Loads every recorded amendment.
pub async fn load(store: &SharedStore) -> Result<Book, StoreError> {
    let mut entries = Vec::new();
    for (json, cancelled) in store.contract_entries().await? {
        match serde_json::from_str::<Amendment>(&json) {
            Ok(amendment) => entries.push(Entry {
                amendment,
                cancelled,
            }),
            Err(error) => tracing::error!(%error, "unreadable stored amendment; skipped"),
        }
    }
    Ok(Book::new(entries))
}

/// Version 1 of the registry and of every configured client's contract, as the
/// configuration has them: today's `[[clients]]` are version 1 with no change in
/// behaviour. Once a document has a recorded version, the store wins over the
/// configuration (`latch check` reports the difference).
pub fn implicit_versions(clients: &Clients) -> Vec<Amendment> {
    let mut out = vec![seed_amendment(
        REGISTRY.into(),
        Body::Registry(registry_of(clients)),
    )];
    for c in clients.iter() {
        out.push(seed_amendment(
            client_doc(&c.id),
            Body::Contract(contract_of(c)),
        ));
    }
    out
}

fn seed_amendment(doc: String, body: Body) -> Amendment {
    Amendment {
        doc,
        version: 1,
        effective_at_ms: 0,
        recorded_at_ms: 0,
        changelog: "version 1: as configured in [[clients]]".into(),
        author: "latch".into(),
        reason: "the configuration".into(),
        rollback_of: None,
        body,
    }
}

/// Records `amendment` (its version must be the next of its document).
async fn record(
    store: &SharedStore,
    amendment: &Amendment,
    reason: &str,
    request_id: &str,
) -> Result<RevocationEvent, StoreError> {
    let json =
        serde_json::to_string(amendment).map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let change = serde_json::to_string(&Change::Amend {
        amendment: Box::new(amendment.clone()),
    })
    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    store
        .append_contract(
            ContractWrite {
                doc: amendment.doc.clone(),
                version: amendment.version,
                amendment: json,
                change,
                cancel: false,
                audit_target: String::new(),
                audit_action: String::new(),
            },
            NewAudit {
                actor: amendment.author.clone(),
                action: if amendment.doc == REGISTRY {
                    "registry_amend"
                } else {
                    "contract_amend"
                }
                .into(),
                target: format!("{}@{}", amendment.doc, amendment.version),
                reason: reason.to_string(),
                request_id: request_id.to_string(),
            },
        )
        .await
}

/// An amendment as an admin asks for it.
#[derive(Debug, Clone)]
pub struct Proposal {
    pub doc: String,
    /// The version it amends: the document's latest, or the request is a conflict.
    pub base_version: u64,
    pub body: Body,
    pub changelog: String,
    pub reason: String,
    pub effective_at_ms: Option<i64>,
    pub rollback_of: Option<u64>,
}

fn invalid(problems: Vec<Problem>) -> Error {
    Error::Invalid(problems)
}

fn one(at: &str, key: &str, code: &'static str, message: impl Into<String>) -> Problem {
    Problem {
        at: at.to_string(),
        key: key.to_string(),
        code,
        message: message.into(),
    }
}

/// Validates and records an amendment by `author`; answers it as recorded. It takes
/// effect on every node (this one before the answer) through the log.
pub async fn amend(
    app: &App,
    author: &str,
    p: Proposal,
    request_id: &str,
) -> Result<Amendment, Error> {
    let now = now_ms();
    app.fresh(now)?;
    let book = app.contracts.book();
    let latest = book.latest_version(&p.doc);
    let mut problems = Vec::new();
    if p.changelog.trim().is_empty() {
        problems.push(one(
            &p.doc,
            "changelog",
            "missing_changelog",
            "say what changes and why",
        ));
    }
    if p.reason.trim().is_empty() {
        problems.push(one(
            &p.doc,
            "reason",
            "missing_reason",
            "give a reason or a ticket",
        ));
    }
    if p.changelog.len() > MAX_TEXT || p.reason.len() > MAX_TEXT {
        problems.push(one(
            &p.doc,
            "changelog",
            "text_too_long",
            format!("changelog and reason are at most {MAX_TEXT} bytes"),
        ));
    }
    let effective = p.effective_at_ms.unwrap_or(now);
    if effective < now - PAST_TOLERANCE_MS {
        problems.push(one(
            &p.doc,
            "effective_at",
            "effective_at_in_past",
            "effective_at lies in the past; amendments take effect now or later",
        ));
    }
    if effective > now + MAX_SCHEDULE_MS {
        problems.push(one(
            &p.doc,
            "effective_at",
            "effective_at_too_far",
            "effective_at is more than 366 days ahead",
        ));
    }
    if let Some(last) = book.scheduled(&p.doc, now).last() {
        if effective < last.effective_at_ms {
            problems.push(one(
                &p.doc,
                "effective_at",
                "effective_at_before_scheduled",
                format!(
                    "version {} is scheduled later; cancel it first or take effect after it",
                    last.version
                ),
            ));
        }
    }
    let effective = effective.max(now);
    match &p.body {
        Body::Registry(r) => {
            if p.doc != REGISTRY {
                problems.push(one(
                    &p.doc,
                    "",
                    "wrong_document",
                    "a registry amends the registry",
                ));
            }
            problems.extend(check_registry(r));
        }
        Body::Contract(c) => {
            let Some(id) = p.doc.strip_prefix("client:") else {
                return Err(invalid(vec![one(
                    &p.doc,
                    "",
                    "wrong_document",
                    "not a client contract",
                )]));
            };
            if app.contracts.configured().get(id).is_none() {
                problems.push(one(
                    &p.doc,
                    "",
                    "unknown_client",
                    "no such client is configured ([[clients]]); its secret lives there",
                ));
            }
            let empty = Registry::default();
            let registry = book.registry(effective).unwrap_or(&empty);
            problems.extend(check_contract(
                &p.doc,
                c,
                registry,
                ACCESS_TTL_CAP.as_secs(),
            ));
            if p.rollback_of.is_none() {
                if let Some(prev) = book.history(&p.doc).iter().rev().find(|e| !e.cancelled) {
                    if let Some(prev) = prev.amendment.contract() {
                        problems.extend(check_ramp(&p.doc, prev, c));
                    }
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(invalid(problems));
    }
    if p.base_version != latest {
        return Err(Error::Conflict(format!(
            "{} is at version {latest}, not {}: read it again and amend the latest",
            p.doc, p.base_version
        )));
    }
    if app.contracts.is_implicit(&p.doc) {
        // Record the implicit version 1 first, so history starts where behaviour did; a
        // racing node may have recorded it already (same content), which is fine.
        if let Some(v1) = book.version(&p.doc, 1) {
            match record(
                &app.store,
                &v1.amendment,
                "version 1 from the configuration",
                request_id,
            )
            .await
            {
                Ok(event) => settle(app, &event).await,
                Err(StoreError::Conflict) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let amendment = Amendment {
        doc: p.doc.clone(),
        version: latest + 1,
        effective_at_ms: effective,
        recorded_at_ms: now,
        changelog: p.changelog,
        author: author.to_string(),
        reason: p.reason.clone(),
        rollback_of: p.rollback_of,
        body: p.body,
    };
    match record(&app.store, &amendment, &p.reason, request_id).await {
        Ok(event) => {
            settle(app, &event).await;
            Ok(amendment)
        }
        Err(StoreError::Conflict) => Err(Error::Conflict(format!(
            "{} was amended concurrently: read it again and amend the latest",
            p.doc
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Waits (bounded) until this node applied the change, so the answer is in force here.
async fn settle(app: &App, event: &RevocationEvent) {
    let bound = Duration::from_millis(app.max_staleness_ms.clamp(1, 1000) as u64);
    app.table
        .wait_for(
            crate::revocation::Point::new(app.table.epoch(), event.seq),
            bound,
        )
        .await;
}

/// Cancels a scheduled amendment (not yet in force, not cancelled).
pub async fn cancel(
    app: &App,
    author: &str,
    doc: &str,
    version: u64,
    reason: &str,
    request_id: &str,
) -> Result<Amendment, Error> {
    let now = now_ms();
    app.fresh(now)?;
    if reason.trim().is_empty() || reason.len() > MAX_TEXT {
        return Err(invalid(vec![one(
            doc,
            "reason",
            "missing_reason",
            "give a reason (at most 4096 bytes)",
        )]));
    }
    let book = app.contracts.book();
    let Some(entry) = book.version(doc, version) else {
        return Err(Error::NotFound(format!("{doc} has no version {version}")));
    };
    if entry.cancelled || entry.amendment.effective_at_ms <= now {
        return Err(Error::Conflict(format!(
            "{doc} version {version} is already {}; only a scheduled amendment can be cancelled (roll back instead)",
            if entry.cancelled { "cancelled" } else { "in force" }
        )));
    }
    let change = serde_json::to_string(&Change::Cancel {
        doc: doc.to_string(),
        version,
    })
    .map_err(|e| Error::Internal(e.to_string()))?;
    let write = ContractWrite {
        doc: doc.to_string(),
        version,
        amendment: String::new(),
        change,
        cancel: true,
        audit_target: String::new(),
        audit_action: String::new(),
    };
    let audit = NewAudit {
        actor: author.to_string(),
        action: "contract_cancel".into(),
        target: format!("{doc}@{version}"),
        reason: reason.to_string(),
        request_id: request_id.to_string(),
    };
    match app.store.append_contract(write, audit).await {
        Ok(event) => settle(app, &event).await,
        Err(StoreError::Conflict) => {
            return Err(Error::Conflict(format!(
                "{doc} version {version} was cancelled concurrently"
            )))
        }
        Err(e) => return Err(e.into()),
    }
    Ok(entry.amendment.clone())
}

/// A rollback: a new version whose content is version `to`'s, which must have been in
/// force at some time. No ramp: it restores a state that was in force.
pub async fn rollback(
    app: &App,
    author: &str,
    doc: &str,
    to: u64,
    base_version: u64,
    reason: &str,
    request_id: &str,
) -> Result<Amendment, Error> {
    let now = now_ms();
    let book = app.contracts.book();
    let Some(target) = book.version(doc, to) else {
        return Err(Error::NotFound(format!("{doc} has no version {to}")));
    };
    if target.cancelled || target.amendment.effective_at_ms > now {
        return Err(invalid(vec![one(
            doc,
            "to",
            "never_in_force",
            format!("version {to} was never in force; roll back to a version that was"),
        )]));
    }
    amend(
        app,
        author,
        Proposal {
            doc: doc.to_string(),
            base_version,
            body: target.amendment.body.clone(),
            changelog: format!("rollback to version {to}"),
            reason: reason.to_string(),
            effective_at_ms: None,
            rollback_of: Some(to),
        },
        request_id,
    )
    .await
}

/// Moves one scope or audience to its next stage: `shadow` → `enforced` (the widening
/// takes effect), `deprecated` → removed (the narrowing takes effect).
#[allow(clippy::too_many_arguments)]
pub async fn promote(
    app: &App,
    author: &str,
    doc: &str,
    name: &str,
    audience: bool,
    base_version: u64,
    reason: &str,
    effective_at_ms: Option<i64>,
    request_id: &str,
) -> Result<Amendment, Error> {
    let book = app.contracts.book();
    let Some(latest) = book.history(doc).iter().rev().find(|e| !e.cancelled) else {
        return Err(Error::NotFound(format!("{doc} has no contract")));
    };
    let Some(mut contract) = latest.amendment.contract().cloned() else {
        return Err(Error::NotFound(format!("{doc} has no contract")));
    };
    let map = if audience {
        &mut contract.audiences
    } else {
        &mut contract.scopes
    };
    let what = if audience { "audience" } else { "scope" };
    let changelog = match map.get(name).copied() {
        Some(Stage::Shadow) => {
            map.insert(name.to_string(), Stage::Enforced);
            format!("promote {what} {name}: shadow → enforced")
        }
        Some(Stage::Deprecated) => {
            map.remove(name);
            format!("promote {what} {name}: deprecated → removed")
        }
        _ => {
            return Err(invalid(vec![one(
                doc,
                name,
                "nothing_to_promote",
                format!(
                    "{what} {name:?} is neither in shadow nor deprecated in the latest version"
                ),
            )]))
        }
    };
    amend(
        app,
        author,
        Proposal {
            doc: doc.to_string(),
            base_version,
            body: Body::Contract(contract),
            changelog,
            reason: reason.to_string(),
            effective_at_ms,
            rollback_of: None,
        },
        request_id,
    )
    .await
}

/// Keeps the contract metrics of this node current and counts each switch of a client's
/// version in force (a scheduled amendment takes effect by the clock, not by a log entry:
/// this is where a node is seen to switch). Ticks every 500 ms until `shutdown`.
pub async fn run_watch(app: App, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    use crate::metrics as m;
    let mut seen: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = now_ms();
        let book = app.contracts.book();
        for c in app.clients.iter() {
            let doc = client_doc(&c.id);
            let Some(a) = book.in_force(&doc, now) else {
                continue;
            };
            let id = c.id.to_string();
            if let Some(&was) = seen.get(&id) {
                if was != a.version {
                    let kind = if a.rollback_of.is_some() {
                        "rollback"
                    } else if a.effective_at_ms > a.recorded_at_ms + 1000 {
                        "scheduled"
                    } else {
                        "immediate"
                    };
                    metrics::counter!(m::CONTRACT_CHANGES, "kind" => kind).increment(1);
                    tracing::info!(
                        target: "latch::contracts",
                        client = %id,
                        from = was,
                        to = a.version,
                        kind,
                        "contract version in force changed"
                    );
                }
            }
            seen.insert(id.clone(), a.version);
            metrics::gauge!(m::CONTRACT_VERSION, "client" => id.clone()).set(a.version as f64);
            if let Some(k) = a.contract() {
                for stage in [Stage::Shadow, Stage::Deprecated] {
                    let n = k
                        .scopes
                        .values()
                        .chain(k.audiences.values())
                        .filter(|s| **s == stage)
                        .count();
                    metrics::gauge!(m::CONTRACT_RAMP, "client" => id.clone(), "stage" => stage.as_str())
                        .set(n as f64);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn base() -> Clients {
        let mut c = Client::new("svc", [1u8; 32]);
        c.grants = vec![Grant::ClientCredentials];
        c.scopes = vec!["b".into(), "a".into()];
        c.audiences = vec!["https://z".into(), "https://a".into()];
        Clients::new([c])
    }

    fn amendment(version: u64, at: i64, scopes: &[(&str, Stage)]) -> Amendment {
        let mut k = contract_of(base().get("svc").unwrap());
        k.scopes = scopes
            .iter()
            .map(|(n, s)| (n.to_string(), *s))
            .collect::<BTreeMap<_, _>>();
        Amendment {
            doc: client_doc("svc"),
            version,
            effective_at_ms: at,
            recorded_at_ms: 0,
            changelog: "c".into(),
            author: "admin".into(),
            reason: "r".into(),
            rollback_of: None,
            body: Body::Contract(k),
        }
    }

    #[test]
    fn version_one_is_the_configuration_in_its_order() {
        let contracts = Contracts::new(base(), Book::default());
        let c = contracts.client("svc", 10).unwrap();
        assert_eq!(c.contract_version, 1);
        assert_eq!(
            c.scopes,
            vec!["b".to_string(), "a".to_string()],
            "config order kept"
        );
        assert_eq!(
            c.audiences[0], "https://z",
            "the first audience stays the default"
        );
        assert!(contracts.client("nobody", 10).is_none());
        assert!(contracts.is_implicit("client:svc") && contracts.is_implicit(REGISTRY));
        assert!(drift(&contracts.book(), &base(), 10).is_empty());
    }

    #[test]
    fn rights_switch_at_effective_at_and_on_every_change() {
        use Stage::*;
        let contracts = Contracts::new(base(), Book::default());
        let v2 = amendment(2, 100, &[("a", Enforced), ("b", Shadow)]);
        contracts.apply(&Change::Amend {
            amendment: Box::new(v2),
        });
        assert!(!contracts.is_implicit("client:svc"));
        let before = contracts.client("svc", 99).unwrap();
        assert_eq!(before.contract_version, 1, "cached before the switch");
        let after = contracts.client("svc", 100).unwrap();
        assert_eq!(
            after.contract_version, 2,
            "the cache does not outlive effective_at"
        );
        assert_eq!(after.scopes, vec!["a".to_string()]);
        assert_eq!(after.shadow_scopes, vec!["b".to_string()]);
        let v3 = amendment(3, 0, &[("a", Deprecated)]);
        let v4 = amendment(4, 500, &[]);
        contracts.apply(&Change::Amend {
            amendment: Box::new(v3),
        });
        contracts.apply(&Change::Amend {
            amendment: Box::new(v4),
        });
        let c = contracts.client("svc", 200).unwrap();
        assert_eq!(c.contract_version, 3, "a change clears the cache");
        assert_eq!(c.deprecated.len(), 1);
        assert_eq!(
            c.deprecated[0].sunset_ms,
            Some(500),
            "the scheduled removal is the sunset"
        );
        contracts.apply(&Change::Cancel {
            doc: client_doc("svc"),
            version: 4,
        });
        let c = contracts.client("svc", 600).unwrap();
        assert_eq!((c.contract_version, c.deprecated[0].sunset_ms), (3, None));
        let lines = drift(&contracts.book(), &base(), 600);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains("version 3") && lines[0].contains("a enforced -> deprecated"),
            "{}",
            lines[0]
        );
    }
}
