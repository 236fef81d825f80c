//! `latch contracts`: review a contracts directory with no server (`check`, `diff`,
//! `plan`), and read or change a running server's contracts through its admin API
//! (`apply`, `list`, `history`, `show`, `cancel`, `promote`, `rollback`, in
//! [`online`]).
//!
//! Every verb prints a table by default and JSON with `--json`, and exits with one of
//! three codes: 0 done (for `check`: no problem found), 1 problems found or the server
//! refused, 2 input that could not be read (a directory, a file, the config, a time).
//!
//! `check` knows which clients exist from latch's config: `--config FILE` (or
//! `LATCH_CONFIG`), else `config/latch.toml` when the current directory has one, else none
//! (`--no-config` forces none); without a config, a contract for an unconfigured client is
//! not caught here (the server still refuses it). The access-token lifetime is checked
//! against the global cap, [`ACCESS_TTL_CAP`], which no config can raise.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde::Serialize;
use serde_json::{json, Value};

use super::{format_unix, table};
use crate::config::{Config, ACCESS_TTL_CAP};
use crate::contracts::files::{self, Dir};
use crate::contracts::review;
use crate::contracts::{delta, Contract, Delta, Problem, Registry, ScopeStatus, REGISTRY};

mod online;

/// Exit code: problems found, or the server refused.
const PROBLEMS: u8 = 1;
/// Exit code: input that could not be read.
const UNREADABLE: u8 = 2;

/// `latch contracts <verb>`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a contracts directory offline (for CI): prints every problem with its
    /// file, key and code. Exit 0 clean, 1 problems, 2 unreadable input.
    Check(CheckArgs),
    /// Per client, what widens and what narrows from directory A to directory B (the
    /// latest version of each client in each).
    Diff {
        a: PathBuf,
        b: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// What a directory puts in force at an instant, per client.
    Plan {
        dir: PathBuf,
        /// RFC 3339, like 2026-12-01T09:00:00Z (default: now).
        #[arg(long)]
        at: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Send a directory to a server: the registry if it differs, then each client's
    /// versions above the server's latest, in order. Stops at the first refusal.
    Apply {
        dir: PathBuf,
        /// Print what would be sent; send nothing.
        #[arg(long)]
        dry_run: bool,
        /// Why: recorded with the registry amendment and with versions whose file has no
        /// `reason`.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Every client's contract: the version in force, scheduled versions, ramps.
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// Every version of one client's contract.
    History {
        client: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// One version of a client's contract (default: the one in force).
    Show {
        client: String,
        version: Option<u64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Cancel a scheduled version before it takes effect.
    Cancel {
        client: String,
        version: u64,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Move a scope or audience to its next stage: shadow → enforced, deprecated →
    /// removed (a new version).
    Promote(PromoteArgs),
    /// Restore an earlier version's content as a new version (no ramp).
    Rollback {
        client: String,
        /// The version whose content to restore.
        #[arg(long)]
        to: u64,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    dir: PathBuf,
    /// latch's config: a contract for a client it does not configure is a problem.
    /// Default: config/latch.toml if it exists.
    #[arg(long, env = "LATCH_CONFIG")]
    config: Option<PathBuf>,
    /// Read no config (the unknown-client rule is skipped).
    #[arg(long)]
    no_config: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["scope", "audience"])))]
pub struct PromoteArgs {
    client: String,
    #[arg(long)]
    scope: Option<String>,
    #[arg(long)]
    audience: Option<String>,
    #[arg(long)]
    reason: String,
    /// When the new version takes effect, RFC 3339 (default: at once).
    #[arg(long)]
    at: Option<String>,
    #[command(flatten)]
    remote: Remote,
}

/// Where the server is, and how to print its answer.
#[derive(Debug, Args)]
pub struct Remote {
    /// Base URL of a running latch (admin credentials from LATCH_ADMIN_CLIENT_ID and
    /// LATCH_ADMIN_CLIENT_SECRET).
    #[arg(long, env = "LATCH_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Print the server's JSON answer instead of a table.
    #[arg(long)]
    json: bool,
}

/// What a verb prints: JSON for `--json`, else text.
struct Output {
    json: Value,
    text: String,
}

impl Output {
    fn print(&self, json: bool) {
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&self.json).unwrap_or_default()
            );
        } else {
            println!("{}", self.text);
        }
    }
}

/// Runs one `latch contracts` verb.
pub fn run(command: Command) -> ExitCode {
    match command {
        Command::Check(a) => check(a),
        Command::Diff { a, b, json } => diff(&a, &b, json),
        Command::Plan { dir, at, json } => plan(&dir, at.as_deref(), json),
        online => online::run(online),
    }
}

// === check ===

impl CheckArgs {
    fn config_path(&self) -> Option<PathBuf> {
        if self.no_config {
            return None;
        }
        let default = Path::new("config/latch.toml");
        self.config
            .clone()
            .or_else(|| default.is_file().then(|| default.to_path_buf()))
    }
}

fn check(a: CheckArgs) -> ExitCode {
    let config = a.config_path();
    let known: Option<Vec<String>> = match &config {
        None => None,
        Some(path) => match Config::load(path) {
            Ok(c) => Some(c.clients.iter().map(|c| c.id.clone()).collect()),
            Err(e) => {
                let p = Problem {
                    at: path.display().to_string(),
                    key: e.key,
                    code: "invalid_config",
                    message: e.reason,
                };
                return report_check(&a, config.as_deref(), None, vec![p], UNREADABLE);
            }
        },
    };
    match files::load(&a.dir) {
        Err(problems) => {
            let code = load_failure_code(&problems);
            report_check(&a, config.as_deref(), None, problems, code)
        }
        Ok(dir) => {
            let problems = review::check(&dir, known.as_deref(), ACCESS_TTL_CAP.as_secs());
            let problems = registry_in(&a.dir, problems);
            let code = if problems.is_empty() { 0 } else { PROBLEMS };
            report_check(&a, config.as_deref(), Some(&dir), problems, code)
        }
    }
}

/// The registry's problems name the document (`registry`) or the bare file name; in a
/// directory both are `DIR/scopes.toml`, the file to fix.
fn registry_in(dir: &Path, mut problems: Vec<Problem>) -> Vec<Problem> {
    let file = dir.join("scopes.toml").display().to_string();
    for p in &mut problems {
        if p.at == REGISTRY || p.at == "scopes.toml" {
            p.at.clone_from(&file);
        }
    }
    problems
}

/// A directory that failed to load: 2 if something could not be read at all (or there is
/// nothing there), 1 if files were read but are wrong.
fn load_failure_code(problems: &[Problem]) -> u8 {
    let unreadable = |p: &Problem| matches!(p.code, "unreadable" | "empty_directory");
    if problems.iter().any(unreadable) {
        UNREADABLE
    } else {
        PROBLEMS
    }
}

fn report_check(
    a: &CheckArgs,
    config: Option<&Path>,
    dir: Option<&Dir>,
    problems: Vec<Problem>,
    code: u8,
) -> ExitCode {
    let shown = a.dir.display();
    let text = match dir {
        Some(d) if problems.is_empty() => {
            let versions: usize = d.clients.values().map(Vec::len).sum();
            let clients = match config {
                Some(c) => format!("clients checked against {}", c.display()),
                None => {
                    "no config: contracts for unconfigured clients are not caught (pass --config)"
                        .to_string()
                }
            };
            let scopes = d.registry.as_ref().map_or(0, |r| r.scopes.len());
            let n = d.clients.len();
            format!(
                "{shown}: ok ({scopes} {}, {n} {}, {versions} {}; {clients})",
                plural(scopes, "scope", "scopes"),
                plural(n, "client", "clients"),
                plural(versions, "version", "versions"),
            )
        }
        _ => format!(
            "{}\n{shown}: {} {}",
            problems_table(&problems),
            problems.len(),
            plural(problems.len(), "problem", "problems")
        ),
    };
    let out = Output {
        json: json!({
            "ok": problems.is_empty(),
            "dir": shown.to_string(),
            "config": config.map(|c| c.display().to_string()),
            "problems": problems,
        }),
        text,
    };
    out.print(a.json);
    ExitCode::from(code)
}

/// FILE, KEY, CODE, MESSAGE: one row per problem.
fn problems_table(problems: &[Problem]) -> String {
    let rows: Vec<Vec<String>> = problems
        .iter()
        .map(|p| {
            vec![
                dash(&p.at),
                dash(&p.key),
                p.code.to_string(),
                p.message.replace('\n', " "),
            ]
        })
        .collect();
    table(&["FILE", "KEY", "CODE", "MESSAGE"], &rows)
}

// === diff ===

/// What one change does to what tokens may carry or a client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Effect {
    Widens,
    /// Live tokens beyond the new contract become inactive when it takes effect.
    Narrows,
    /// Neither (a shadow entry, a deprecation, a new description, ...).
    None,
}

impl Effect {
    fn label(self) -> &'static str {
        match self {
            Effect::Widens => "widens",
            Effect::Narrows => "NARROWS",
            Effect::None => "-",
        }
    }

    fn of(widens: bool, narrows: bool) -> Effect {
        match (widens, narrows) {
            (_, true) => Effect::Narrows,
            (true, false) => Effect::Widens,
            (false, false) => Effect::None,
        }
    }
}

/// One line of a diff.
#[derive(Debug, Clone, Serialize)]
struct DiffRow {
    /// A client id, or `(registry)`.
    client: String,
    from_version: Option<u64>,
    to_version: Option<u64>,
    change: String,
    effect: Effect,
}

fn diff(a: &Path, b: &Path, json: bool) -> ExitCode {
    let (old, new) = match (files::load(a), files::load(b)) {
        (Ok(old), Ok(new)) => (old, new),
        (old, new) => {
            let problems: Vec<Problem> = [old.err(), new.err()]
                .into_iter()
                .flatten()
                .flatten()
                .collect();
            return unloadable(problems, json);
        }
    };
    let mut rows = registry_rows(old.registry.as_ref(), new.registry.as_ref());
    let deltas = review::diff(&old, &new);
    for d in &deltas {
        let latest = |dir: &Dir| {
            dir.clients
                .get(&d.client)
                .and_then(|v| v.last())
                .map(|f| f.contract.clone())
                .unwrap_or_default()
        };
        let (was, now) = (latest(&old), latest(&new));
        for (change, effect) in client_changes(&d.delta, &was, &now) {
            rows.push(DiffRow {
                client: d.client.clone(),
                from_version: d.from_version,
                to_version: d.to_version,
                change,
                effect,
            });
        }
    }
    let narrows = rows.iter().any(|r| r.effect == Effect::Narrows);
    let widens = rows.iter().any(|r| r.effect == Effect::Widens);
    let text = if rows.is_empty() {
        format!("no changes from {} to {}", a.display(), b.display())
    } else {
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    r.client.clone(),
                    versions_text(r.from_version, r.to_version),
                    r.change.clone(),
                    r.effect.label().to_string(),
                ]
            })
            .collect();
        let mut t = table(&["CLIENT", "VERSIONS", "CHANGE", "EFFECT"], &cells);
        if narrows {
            t.push_str(
                "\nNARROWS: when that version takes effect, live tokens beyond it become inactive",
            );
        }
        t
    };
    Output {
        json: json!({ "widens": widens, "narrows": narrows, "rows": rows, "clients": deltas }),
        text,
    }
    .print(json);
    ExitCode::SUCCESS
}

/// `1 → 3`, `- → 1` (a new client), `2 → -` (its files are gone).
fn versions_text(from: Option<u64>, to: Option<u64>) -> String {
    let v = |x: Option<u64>| x.map_or("-".to_string(), |v| v.to_string());
    if from.is_none() && to.is_none() {
        return "-".into();
    }
    format!("{} → {}", v(from), v(to))
}

/// The rows of one client's change: scopes and audiences from the model's delta, each
/// other field with its own direction.
fn client_changes(d: &Delta, was: &Contract, now: &Contract) -> Vec<(String, Effect)> {
    let mut out = Vec::new();
    for (name, stage) in &d.added {
        out.push((
            format!("+ {name} ({})", stage.as_str()),
            Effect::of(stage.grants(), false),
        ));
    }
    for (name, stage) in &d.removed {
        out.push((
            format!("- {name} (was {})", stage.as_str()),
            Effect::of(false, stage.grants()),
        ));
    }
    for (name, from, to) in &d.moved {
        out.push((
            format!("{name}: {} → {}", from.as_str(), to.as_str()),
            Effect::of(!from.grants() && to.grants(), from.grants() && !to.grants()),
        ));
    }
    for field in &d.other {
        // The model's own rules, on the one field: which way it moves.
        let one = delta(Some(&only(was, field)), &only(now, field));
        out.push((
            format!(
                "{field}: {} → {}",
                field_text(was, field),
                field_text(now, field)
            ),
            Effect::of(one.widens, one.narrows),
        ));
    }
    out
}

/// A contract that has only `field` of `c`, every other field at its default.
fn only(c: &Contract, field: &str) -> Contract {
    let mut o = Contract::default();
    match field {
        "grants" => o.grants = c.grants.clone(),
        "roles" => o.roles = c.roles.clone(),
        "auth_methods" => o.auth_methods = c.auth_methods.clone(),
        "trusted_issuers" => o.trusted_issuers = c.trusted_issuers.clone(),
        "access_ttl_secs" => o.access_ttl_secs = c.access_ttl_secs,
        "delegate_service_tokens" => o.delegate_service_tokens = c.delegate_service_tokens,
        "suspended" => o.suspended = c.suspended,
        "elevations" => o.elevations = c.elevations.clone(),
        _ => {}
    }
    o
}

/// A field's value as the diff shows it.
fn field_text(c: &Contract, field: &str) -> String {
    // An empty list means "none" for what is granted, "any" for what is accepted.
    let list = |l: &[String], empty: &str| {
        if l.is_empty() {
            empty.to_string()
        } else {
            l.join(",")
        }
    };
    match field {
        "grants" => list(&c.grants, "none"),
        "roles" => list(&c.roles, "none"),
        "auth_methods" => list(&c.auth_methods, "any"),
        "trusted_issuers" => list(&c.trusted_issuers, "any"),
        "access_ttl_secs" => c
            .access_ttl_secs
            .map_or("default".to_string(), |t| format!("{t}s")),
        "delegate_service_tokens" => c.delegate_service_tokens.to_string(),
        "suspended" => c.suspended.to_string(),
        "elevations" => list(&c.elevations.keys().cloned().collect::<Vec<_>>(), "none"),
        _ => "?".into(),
    }
}

fn status_str(s: ScopeStatus) -> &'static str {
    match s {
        ScopeStatus::Active => "active",
        ScopeStatus::Deprecated => "deprecated",
        ScopeStatus::Retired => "retired",
    }
}

/// The registry's changes: scopes added, removed, or changed (a retired scope can no
/// longer be granted: that narrows).
fn registry_rows(old: Option<&Registry>, new: Option<&Registry>) -> Vec<DiffRow> {
    registry_changes(old, new)
        .into_iter()
        .map(|(change, effect)| DiffRow {
            client: "(registry)".into(),
            from_version: None,
            to_version: None,
            change,
            effect,
        })
        .collect()
}

fn registry_changes(old: Option<&Registry>, new: Option<&Registry>) -> Vec<(String, Effect)> {
    let empty = Registry::default();
    let (old, new) = (old.unwrap_or(&empty), new.unwrap_or(&empty));
    let names: BTreeSet<&String> = old.scopes.keys().chain(new.scopes.keys()).collect();
    let mut out = Vec::new();
    for name in names {
        match (old.scopes.get(name), new.scopes.get(name)) {
            (None, Some(n)) => out.push((
                format!("+ scope {name} ({})", status_str(n.status)),
                Effect::None,
            )),
            (Some(o), None) => out.push((
                format!("- scope {name} (was {})", status_str(o.status)),
                Effect::None,
            )),
            (Some(o), Some(n)) if o != n => {
                if o.status != n.status {
                    out.push((
                        format!(
                            "scope {name}: {} → {}",
                            status_str(o.status),
                            status_str(n.status)
                        ),
                        Effect::of(
                            o.status == ScopeStatus::Retired,
                            n.status == ScopeStatus::Retired,
                        ),
                    ));
                }
                let changed: Vec<&str> = [
                    ("description", o.description != n.description),
                    ("owner", o.owner != n.owner),
                    ("audiences", o.audiences != n.audiences),
                ]
                .into_iter()
                .filter_map(|(f, c)| c.then_some(f))
                .collect();
                if !changed.is_empty() {
                    out.push((
                        format!("scope {name}: {} changed", changed.join(", ")),
                        Effect::None,
                    ));
                }
            }
            _ => {}
        }
    }
    out
}

// === plan ===

fn plan(dir: &Path, at: Option<&str>, json: bool) -> ExitCode {
    let at_ms = match at {
        None => now_ms(),
        Some(t) => match files::parse_time(t) {
            Some(ms) => ms,
            None => {
                eprintln!("latch: --at {t:?} is not an RFC 3339 time like 2026-12-01T09:00:00Z");
                return ExitCode::from(UNREADABLE);
            }
        },
    };
    let d = match files::load(dir) {
        Ok(d) => d,
        Err(problems) => return unloadable(problems, json),
    };
    let planned = review::plan(&d, at_ms);
    let rows: Vec<Vec<String>> = planned
        .iter()
        .map(|p| {
            vec![
                p.client.clone(),
                p.version.to_string(),
                p.effective_at_ms
                    .map_or("when applied".to_string(), ms_text),
                joined(&p.granted_scopes),
                joined(&p.audiences),
                joined(&p.shadow),
                joined(&p.deprecated),
                if p.suspended { "yes" } else { "no" }.to_string(),
            ]
        })
        .collect();
    let text = format!(
        "in force at {} UTC:\n{}",
        ms_text(at_ms),
        table(
            &[
                "CLIENT",
                "VERSION",
                "EFFECTIVE (UTC)",
                "SCOPES",
                "AUDIENCES",
                "SHADOW",
                "DEPRECATED",
                "SUSPENDED",
            ],
            &rows,
        )
    );
    Output {
        json: json!({ "at_ms": at_ms, "clients": planned }),
        text,
    }
    .print(json);
    ExitCode::SUCCESS
}

// === shared ===

/// A directory that would not load, for the verbs that need one whole: its problems, and
/// exit 2 (the verb could not run).
fn unloadable(problems: Vec<Problem>, json: bool) -> ExitCode {
    Output {
        json: json!({ "ok": false, "problems": problems }),
        text: problems_table(&problems),
    }
    .print(json);
    eprintln!(
        "latch: {} {} in the contracts directory",
        problems.len(),
        plural(problems.len(), "problem", "problems")
    );
    ExitCode::from(UNREADABLE)
}

fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 {
        one
    } else {
        many
    }
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

fn joined(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

/// Unix ms as `YYYY-MM-DD HH:MM:SS` (UTC).
fn ms_text(ms: i64) -> String {
    format_unix(ms.div_euclid(1000))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Unix ms as RFC 3339 (`2026-12-01T09:00:00Z`; milliseconds only when there are some).
fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0).unsigned_abs());
    if ms % 1000 == 0 {
        humantime::format_rfc3339_seconds(t).to_string()
    } else {
        humantime::format_rfc3339_millis(t).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_field_moves_its_own_way() {
        let mut old = Contract::default();
        let mut new = Contract::default();
        old.auth_methods = vec![];
        new.auth_methods = vec!["client_secret_basic".into()];
        old.access_ttl_secs = Some(600);
        new.access_ttl_secs = Some(900);
        new.grants = vec!["client_credentials".into()];
        let d = delta(Some(&old), &new);
        let rows = client_changes(&d, &old, &new);
        assert_eq!(
            rows,
            vec![
                (
                    "grants: none → client_credentials".to_string(),
                    Effect::Widens
                ),
                (
                    "auth_methods: any → client_secret_basic".to_string(),
                    Effect::Narrows
                ),
                ("access_ttl_secs: 600s → 900s".to_string(), Effect::Widens),
            ]
        );
    }

    #[test]
    fn times_print_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000_250), "2026-11-18T11:06:40.250Z");
        assert_eq!(ms_text(1_795_000_000_999), "2026-11-18 11:06:40");
    }
}
