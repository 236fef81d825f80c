//! The `latch contracts` verbs that speak to a running server's admin API (docs/API.md,
//! "Contracts"), with the admin credentials every operator verb uses.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use hyper::Method;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use serde_json::{json, Value};

use super::{
    dash, load_failure_code, ms_text, now_ms, problems_table, registry_changes, registry_in,
    rfc3339, Command, Output, PromoteArgs, PROBLEMS, UNREADABLE,
};
use crate::cli::{table, AdminClient, CliError};
use crate::config::ACCESS_TTL_CAP;
use crate::contracts::files::{self, Dir, FileVersion};
use crate::contracts::{review, Contract, Problem, Registry, Stage, MAX_TEXT};

/// What a client id cannot carry as it is in a path segment. The server takes the
/// segment as it comes (no percent-decoding), so only what would break the URI is
/// escaped; an id with `/`, `?`, `#` or `%` cannot be addressed.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'/')
    .add(b'%');

/// Why a verb did not finish: what to say, the exit code, and what it did before.
struct Failure {
    message: String,
    code: u8,
    /// Printed before the message (apply's steps so far, a problems table).
    done: Option<Output>,
}

impl From<CliError> for Failure {
    fn from(e: CliError) -> Failure {
        Failure {
            message: e.to_string(),
            code: PROBLEMS,
            done: None,
        }
    }
}

impl Failure {
    fn input(message: String) -> Failure {
        Failure {
            message,
            code: UNREADABLE,
            done: None,
        }
    }
}

/// Runs an online verb (the offline ones never reach here).
pub(super) fn run(command: Command) -> ExitCode {
    let remote = match &command {
        Command::Apply { remote, .. }
        | Command::List { remote }
        | Command::History { remote, .. }
        | Command::Show { remote, .. }
        | Command::Cancel { remote, .. }
        | Command::Rollback { remote, .. }
        | Command::Promote(PromoteArgs { remote, .. }) => remote,
        Command::Check(_) | Command::Diff { .. } | Command::Plan { .. } => {
            unreachable!("offline verbs run in cli::contracts")
        }
    };
    let json = remote.json;
    let result = AdminClient::from_env(&remote.server)
        .map_err(Failure::from)
        .and_then(|client| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Failure::input(format!("cannot start the runtime: {e}")))?;
            rt.block_on(verb(&client, command))
        });
    match result {
        Ok(out) => {
            out.print(json);
            ExitCode::SUCCESS
        }
        Err(f) => {
            if let Some(done) = &f.done {
                done.print(json);
            }
            eprintln!("latch: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

async fn verb(c: &AdminClient, command: Command) -> Result<Output, Failure> {
    match command {
        Command::Apply {
            dir,
            dry_run,
            reason,
            ..
        } => apply(c, &dir, dry_run, reason.as_deref()).await,
        Command::List { .. } => list(c).await,
        Command::History { client, .. } => history(c, &client).await,
        Command::Show {
            client, version, ..
        } => show(c, &client, version).await,
        Command::Cancel {
            client,
            version,
            reason,
            ..
        } => cancel(c, &client, version, &reason).await,
        Command::Promote(a) => promote(c, a).await,
        Command::Rollback {
            client, to, reason, ..
        } => rollback(c, &client, to, &reason).await,
        Command::Check(_) | Command::Diff { .. } | Command::Plan { .. } => {
            unreachable!("offline verbs run in cli::contracts")
        }
    }
}

fn contract_path(client: &str) -> String {
    format!("/admin/contracts/{}", utf8_percent_encode(client, SEGMENT))
}

// === reading ===

async fn list(c: &AdminClient) -> Result<Output, Failure> {
    let answer = c.call(Method::GET, "/admin/contracts", None).await?;
    let rows: Vec<Vec<String>> = items(&answer["contracts"])
        .iter()
        .map(|x| {
            vec![
                text(&x["client"]),
                text(&x["version_in_force"]),
                time(x, "effective_at"),
                text(&x["latest_version"]),
                text(&x["scheduled"]),
                text(&x["shadow"]),
                text(&x["deprecated"]),
                yes_no(&x["suspended"]),
            ]
        })
        .collect();
    let text = table(
        &[
            "CLIENT",
            "IN FORCE",
            "SINCE (UTC)",
            "LATEST",
            "SCHEDULED",
            "SHADOW",
            "DEPRECATED",
            "SUSPENDED",
        ],
        &rows,
    );
    Ok(Output { json: answer, text })
}

async fn history(c: &AdminClient, client: &str) -> Result<Output, Failure> {
    let answer = c.call(Method::GET, &contract_path(client), None).await?;
    let list = items(&answer["history"]);
    let in_force = list
        .iter()
        .find(|a| a["in_force"] == true)
        .and_then(|a| a["version"].as_u64());
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|a| {
            vec![
                text(&a["version"]),
                state(a, in_force).to_string(),
                time(a, "effective_at"),
                time(a, "recorded_at"),
                text(&a["author"]),
                first_line(&a["reason"]),
                text(&a["rollback_of"]),
                first_line(&a["changelog"]),
            ]
        })
        .collect();
    let text = table(
        &[
            "VERSION",
            "STATE",
            "EFFECTIVE (UTC)",
            "RECORDED (UTC)",
            "AUTHOR",
            "REASON",
            "ROLLBACK OF",
            "CHANGELOG",
        ],
        &rows,
    );
    Ok(Output { json: answer, text })
}

/// An amendment's state in its history: `in force`, `scheduled` (not cancelled, after the
/// one in force: it has not taken effect yet), `cancelled` or `superseded`.
fn state(a: &Value, in_force: Option<u64>) -> &'static str {
    let version = a["version"].as_u64().unwrap_or(0);
    if a["cancelled"] == true {
        "cancelled"
    } else if a["in_force"] == true {
        "in force"
    } else if in_force.is_none_or(|v| version > v) {
        "scheduled"
    } else {
        "superseded"
    }
}

async fn show(c: &AdminClient, client: &str, version: Option<u64>) -> Result<Output, Failure> {
    let answer = match version {
        Some(v) => {
            let path = format!("{}/{v}", contract_path(client));
            c.call(Method::GET, &path, None).await?
        }
        None => {
            let h = c.call(Method::GET, &contract_path(client), None).await?;
            let list = items(&h["history"]);
            list.iter()
                .find(|a| a["in_force"] == true)
                .or(list.last())
                .cloned()
                .ok_or_else(|| Failure {
                    message: format!("client {client:?} has no contract version"),
                    code: PROBLEMS,
                    done: None,
                })?
        }
    };
    let text = amendment_table(&answer);
    Ok(Output { json: answer, text })
}

/// FIELD, VALUE: an amendment's metadata, then its contract.
fn amendment_table(a: &Value) -> String {
    let st = if a["cancelled"] == true {
        "cancelled"
    } else if a["in_force"] == true {
        "in force"
    } else if a["effective_at_ms"].as_i64().is_some_and(|t| t > now_ms()) {
        "scheduled"
    } else {
        "superseded"
    };
    let mut rows: Vec<Vec<String>> = vec![
        vec!["doc".into(), text(&a["doc"])],
        vec!["version".into(), text(&a["version"])],
        vec!["state".into(), st.into()],
        vec!["effective (UTC)".into(), time(a, "effective_at")],
        vec!["recorded (UTC)".into(), time(a, "recorded_at")],
        vec!["author".into(), text(&a["author"])],
        vec!["reason".into(), first_line(&a["reason"])],
        vec!["changelog".into(), first_line(&a["changelog"])],
        vec!["rollback of".into(), text(&a["rollback_of"])],
    ];
    match contract_of(a) {
        Some(k) => rows.extend(contract_rows(&k)),
        None => rows.push(vec!["content".into(), a["body"]["content"].to_string()]),
    }
    table(&["FIELD", "VALUE"], &rows)
}

fn contract_rows(k: &Contract) -> Vec<Vec<String>> {
    let list = |l: &[String], empty: &str| {
        if l.is_empty() {
            empty.to_string()
        } else {
            l.join(",")
        }
    };
    let mut rows = vec![
        vec!["grants".into(), list(&k.grants, "none")],
        vec!["roles".into(), list(&k.roles, "none")],
        vec![
            "access_ttl_secs".into(),
            k.access_ttl_secs
                .map_or("default".into(), |t| t.to_string()),
        ],
        vec!["auth_methods".into(), list(&k.auth_methods, "any")],
        vec!["trusted_issuers".into(), list(&k.trusted_issuers, "any")],
        vec![
            "delegate_service_tokens".into(),
            k.delegate_service_tokens.to_string(),
        ],
        vec!["suspended".into(), k.suspended.to_string()],
    ];
    for (kind, map) in [("scope", &k.scopes), ("audience", &k.audiences)] {
        for (name, stage) in map {
            rows.push(vec![format!("{kind} {name}"), stage.as_str().into()]);
        }
    }
    rows
}

fn contract_of(a: &Value) -> Option<Contract> {
    (a["body"]["kind"] == "contract")
        .then(|| serde_json::from_value(a["body"]["content"].clone()).ok())
        .flatten()
}

// === changing one contract ===

async fn cancel(
    c: &AdminClient,
    client: &str,
    version: u64,
    reason: &str,
) -> Result<Output, Failure> {
    let path = format!("{}/{version}/cancel", contract_path(client));
    let answer = c
        .call(Method::POST, &path, Some(json!({ "reason": reason })))
        .await?;
    let text = format!(
        "cancelled {} version {}: it was to take effect at {} UTC",
        text(&answer["doc"]),
        text(&answer["version"]),
        time(&answer, "effective_at")
    );
    Ok(Output { json: answer, text })
}

/// The highest version in a client's history (the base of its next amendment, cancelled
/// versions count), and the contract of the latest version not cancelled (what a
/// promotion starts from).
async fn latest(c: &AdminClient, client: &str) -> Result<(u64, Option<Contract>), Failure> {
    let h = c.call(Method::GET, &contract_path(client), None).await?;
    let list = items(&h["history"]);
    let version = |a: &&Value| a["version"].as_u64().unwrap_or(0);
    let base = list.iter().map(|a| version(&a)).max().unwrap_or(0);
    let current = list
        .iter()
        .filter(|a| a["cancelled"] != true)
        .max_by_key(version)
        .and_then(contract_of);
    Ok((base, current))
}

async fn promote(c: &AdminClient, a: PromoteArgs) -> Result<Output, Failure> {
    let (kind, name) = match (&a.scope, &a.audience) {
        (Some(s), _) => ("scope", s.clone()),
        (None, Some(aud)) => ("audience", aud.clone()),
        (None, None) => unreachable!("clap requires --scope or --audience"),
    };
    if let Some(t) = &a.at {
        if files::parse_time(t).is_none() {
            return Err(Failure::input(format!(
                "--at {t:?} is not an RFC 3339 time like 2026-12-01T09:00:00Z"
            )));
        }
    }
    let (base, before) = latest(c, &a.client).await?;
    let mut body = json!({
        "name": name, "kind": kind, "reason": a.reason, "base_version": base,
    });
    if let Some(t) = &a.at {
        body["effective_at"] = json!(t);
    }
    let path = format!("{}/promote", contract_path(&a.client));
    let answer = c.call(Method::POST, &path, Some(body)).await?;
    let stage = |k: Option<&Contract>| {
        k.and_then(|k| match kind {
            "scope" => k.scopes.get(&name),
            _ => k.audiences.get(&name),
        })
        .map_or("absent", |s: &Stage| s.as_str())
    };
    let after = contract_of(&answer);
    let text = format!(
        "{} version {}: {kind} {name} {} → {}, {}",
        text(&answer["doc"]),
        text(&answer["version"]),
        stage(before.as_ref()),
        stage(after.as_ref()).replace("absent", "removed"),
        when(&answer)
    );
    Ok(Output { json: answer, text })
}

async fn rollback(c: &AdminClient, client: &str, to: u64, reason: &str) -> Result<Output, Failure> {
    let (base, _) = latest(c, client).await?;
    let path = format!("{}/rollback", contract_path(client));
    let body = json!({ "to": to, "reason": reason, "base_version": base });
    let answer = c.call(Method::POST, &path, Some(body)).await?;
    let text = format!(
        "{} version {} restores version {to}, {}",
        text(&answer["doc"]),
        text(&answer["version"]),
        when(&answer)
    );
    Ok(Output { json: answer, text })
}

/// `in force since T UTC` or `scheduled for T UTC`.
fn when(a: &Value) -> String {
    if a["in_force"] == true {
        format!("in force since {} UTC", time(a, "effective_at"))
    } else {
        format!("scheduled for {} UTC", time(a, "effective_at"))
    }
}

// === apply ===

/// One amendment `apply` sends.
struct Step {
    doc: String,
    version: u64,
    base_version: u64,
    /// `amend`, or `rollback to N`.
    action: String,
    effective_at_ms: Option<i64>,
    file: PathBuf,
    path: String,
    body: Value,
}

impl Step {
    fn row(&self, result: Option<&str>) -> Vec<String> {
        let mut row = vec![
            self.doc.clone(),
            self.version.to_string(),
            self.base_version.to_string(),
            self.action.clone(),
            self.effective_at_ms
                .map_or("when applied".to_string(), ms_text),
            self.file.display().to_string(),
        ];
        row.extend(result.map(str::to_string));
        row
    }

    fn json(&self, answer: Option<&Value>) -> Value {
        json!({
            "doc": self.doc,
            "version": self.version,
            "base_version": self.base_version,
            "action": self.action,
            "effective_at": self.effective_at_ms.map(rfc3339),
            "file": self.file.display().to_string(),
            "answer": answer,
        })
    }
}

async fn apply(
    c: &AdminClient,
    dir_path: &Path,
    dry_run: bool,
    reason: Option<&str>,
) -> Result<Output, Failure> {
    let dir = files::load(dir_path).map_err(|p| problems_failure(&p, load_failure_code(&p)))?;
    let scopes = c.call(Method::GET, "/admin/scopes", None).await?;
    let contracts = c.call(Method::GET, "/admin/contracts", None).await?;
    let steps = steps(&dir, dir_path, &scopes, &contracts, reason)?;
    if steps.is_empty() {
        return Ok(Output {
            json: json!({ "dry_run": dry_run, "steps": [] }),
            text: format!(
                "nothing to apply: the server has every version in {}",
                dir_path.display()
            ),
        });
    }
    if dry_run {
        let rows: Vec<Vec<String>> = steps.iter().map(|s| s.row(None)).collect();
        return Ok(Output {
            json: json!({
                "dry_run": true,
                "steps": steps.iter().map(|s| s.json(None)).collect::<Vec<_>>(),
            }),
            text: format!(
                "{}\ndry run: {} amendments would be sent",
                table(&STEP_HEADERS[..6], &rows),
                steps.len()
            ),
        });
    }
    send(c, &steps).await
}

/// What `apply` sends, in order, given the server's registry (`GET /admin/scopes`) and
/// contract list (`GET /admin/contracts`): the registry if it differs, then each client's
/// versions above the server's latest. Everything a server would refuse for that can be
/// known here is checked first, against the registry that will be in force (the
/// directory's, else the server's); any problem and nothing is sent.
fn steps(
    dir: &Dir,
    dir_path: &Path,
    scopes: &Value,
    contracts: &Value,
    reason: Option<&str>,
) -> Result<Vec<Step>, Failure> {
    let server_registry: Registry = serde_json::from_value(scopes["registry"].clone())
        .map_err(|e| Failure::input(format!("the server's registry is not understood: {e}")))?;
    let mut checked = dir.clone();
    checked.registry.get_or_insert(server_registry.clone());
    let mut problems = review::check(&checked, None, ACCESS_TTL_CAP.as_secs());
    if dir.registry.is_some() {
        problems = registry_in(dir_path, problems);
    }
    let mut steps = Vec::new();
    if let Some(r) = dir.registry.as_ref().filter(|r| **r != server_registry) {
        // The base is the latest version, scheduled ones included.
        let base = scopes["latest_version"]
            .as_u64()
            .or(scopes["version"].as_u64())
            .unwrap_or(0);
        let file = dir_path.join("scopes.toml");
        match reason {
            Some(reason) => steps.push(registry_step(&server_registry, r, base, file, reason)),
            None => problems.push(Problem {
                at: file.display().to_string(),
                key: String::new(),
                code: "missing_reason",
                message: format!(
                    "differs from the server's registry (version {base}): pass --reason to record why"
                ),
            }),
        }
    }
    let latest: HashMap<&str, u64> = items(&contracts["contracts"])
        .iter()
        .filter_map(|x| Some((x["client"].as_str()?, x["latest_version"].as_u64()?)))
        .collect();
    for (id, versions) in &dir.clients {
        let on_server = latest.get(id.as_str()).copied().unwrap_or(0);
        for f in versions.iter().filter(|f| f.version > on_server) {
            match client_step(id, f, reason) {
                Ok(step) => steps.push(step),
                Err(p) => problems.push(p),
            }
        }
    }
    if problems.is_empty() {
        return Ok(steps);
    }
    let mut f = problems_failure(&problems, PROBLEMS);
    f.message = format!("{}; nothing was sent", f.message);
    Err(f)
}

/// The registry amendment: its changelog lists what changes.
fn registry_step(old: &Registry, new: &Registry, base: u64, file: PathBuf, reason: &str) -> Step {
    let changes: Vec<String> = registry_changes(Some(old), Some(new))
        .into_iter()
        .map(|(change, _)| change)
        .collect();
    let mut changelog = format!("scopes.toml: {}", changes.join("; "));
    truncate(&mut changelog, MAX_TEXT);
    Step {
        doc: "registry".into(),
        version: base + 1,
        base_version: base,
        action: "amend".into(),
        effective_at_ms: None,
        file,
        path: "/admin/scopes".into(),
        body: json!({
            "base_version": base, "registry": new, "changelog": changelog, "reason": reason,
        }),
    }
}

const STEP_HEADERS: [&str; 7] = [
    "DOC",
    "VERSION",
    "BASE",
    "ACTION",
    "EFFECTIVE (UTC)",
    "FILE",
    "RESULT",
];

/// Sends the steps in order; stops at the first refusal.
async fn send(c: &AdminClient, steps: &[Step]) -> Result<Output, Failure> {
    let mut rows = Vec::new();
    let mut done = Vec::new();
    for step in steps {
        match c
            .call(Method::POST, &step.path, Some(step.body.clone()))
            .await
        {
            Ok(answer) => {
                let result = if answer["in_force"] == true {
                    "in force"
                } else {
                    "scheduled"
                };
                rows.push(step.row(Some(result)));
                done.push(step.json(Some(&answer)));
            }
            Err(e) => {
                rows.push(step.row(Some("refused")));
                let error = match &e {
                    CliError::Refused {
                        status,
                        error,
                        description,
                        problems,
                    } => json!({
                        "status": status, "error": error,
                        "error_description": description, "problems": problems,
                    }),
                    other => {
                        json!({ "error": "unreachable", "error_description": other.to_string() })
                    }
                };
                let applied = done.len();
                done.push(step.json(None));
                return Err(Failure {
                    message: format!("{}: {e}", step.file.display()),
                    code: PROBLEMS,
                    done: Some(Output {
                        json: json!({ "dry_run": false, "steps": done, "error": error }),
                        text: format!(
                            "{}\napplied {applied} of {} amendments; stopped at the refusal below",
                            table(&STEP_HEADERS, &rows),
                            steps.len()
                        ),
                    }),
                });
            }
        }
    }
    Ok(Output {
        json: json!({ "dry_run": false, "steps": done }),
        text: format!(
            "{}\napplied {} amendments",
            table(&STEP_HEADERS, &rows),
            steps.len()
        ),
    })
}

/// The request that records one version file: an amendment, or (with `rollback_of`) a
/// rollback, which takes effect when applied.
fn client_step(client: &str, f: &FileVersion, reason: Option<&str>) -> Result<Step, Problem> {
    let at = f.path.display().to_string();
    let reason = if f.reason.trim().is_empty() {
        reason.ok_or_else(|| Problem {
            at: at.clone(),
            key: "reason".into(),
            code: "missing_reason",
            message: "every amendment records why: set `reason` in the file or pass --reason"
                .into(),
        })?
    } else {
        f.reason.as_str()
    };
    let base = f.version - 1;
    let (action, path, body) = match f.rollback_of {
        Some(to) => {
            if f.effective_at_ms.is_some() {
                return Err(Problem {
                    at,
                    key: "effective_at".into(),
                    code: "rollback_scheduled",
                    message: "a rollback takes effect when applied; remove effective_at".into(),
                });
            }
            (
                format!("rollback to {to}"),
                format!("{}/rollback", contract_path(client)),
                json!({ "to": to, "reason": reason, "base_version": base }),
            )
        }
        None => {
            let mut body = json!({
                "base_version": base, "contract": f.contract,
                "changelog": f.changelog, "reason": reason,
            });
            if let Some(ms) = f.effective_at_ms {
                body["effective_at"] = json!(rfc3339(ms));
            }
            ("amend".into(), contract_path(client), body)
        }
    };
    Ok(Step {
        doc: crate::contracts::client_doc(client),
        version: f.version,
        base_version: base,
        action,
        effective_at_ms: f.effective_at_ms,
        file: f.path.clone(),
        path,
        body,
    })
}

fn problems_failure(problems: &[Problem], code: u8) -> Failure {
    Failure {
        message: format!(
            "{} {} in the contracts directory",
            problems.len(),
            super::plural(problems.len(), "problem", "problems")
        ),
        code,
        done: Some(Output {
            json: json!({ "ok": false, "problems": problems }),
            text: problems_table(problems),
        }),
    }
}

// === cells ===

fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// A JSON value as a cell: strings as they are, lists joined with commas, `-` for
/// nothing.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => dash(s),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(a) if !a.is_empty() => a.iter().map(text).collect::<Vec<_>>().join(","),
        _ => "-".into(),
    }
}

fn yes_no(v: &Value) -> String {
    if *v == true { "yes" } else { "no" }.into()
}

/// The first line of a text field (a cell stays one line), `…` if there is more.
fn first_line(v: &Value) -> String {
    let s = v.as_str().unwrap_or_default();
    match s.split_once('\n') {
        Some((first, _)) => format!("{first}…"),
        None => dash(s),
    }
}

/// `<field>_ms` (Unix ms), else `<field>` (RFC 3339), as `YYYY-MM-DD HH:MM:SS`; `-`.
fn time(v: &Value, field: &str) -> String {
    if let Some(ms) = v[format!("{field}_ms")].as_i64() {
        return ms_text(ms);
    }
    v[field]
        .as_str()
        .and_then(files::parse_time)
        .map_or("-".into(), ms_text)
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max - '…'.len_utf8();
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
}
