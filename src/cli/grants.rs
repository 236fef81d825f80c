//! `latch grants`: just-in-time elevation from the command line. Every person acts under
//! their own credentials (`LATCH_CLIENT_ID`/`LATCH_CLIENT_SECRET`, else
//! `LATCH_ADMIN_CLIENT_ID`/`LATCH_ADMIN_CLIENT_SECRET`): a requester with its own client,
//! each approver with their own admin client, so the audit names the person.

use std::process::ExitCode;

use clap::Subcommand;
use hyper::Method;
use serde_json::{json, Value};

use super::{format_unix, table, text_cell, AdminClient, CliError};

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Ask for an elevation for your own client (its credentials).
    Request {
        /// The scope to elevate to (one).
        #[arg(long)]
        scope: String,
        /// For a user of your client's sessions (as its tokens name it), not the client.
        #[arg(long)]
        subject: Option<String>,
        /// How long, e.g. 30m, 2h (at most the policy's ceiling).
        #[arg(long, value_parser = crate::config::parse_duration)]
        duration: std::time::Duration,
        /// Why you need it (required by most policies).
        #[arg(long, default_value = "")]
        justification: String,
        /// A ticket reference.
        #[arg(long, default_value = "")]
        ticket: String,
        /// Start at this RFC 3339 time (default: at approval).
        #[arg(long)]
        start_at: Option<String>,
    },
    /// List grants (admins: all; with --mine: your client's own).
    List {
        /// requested, approved, active, ended, expired, denied, revoked.
        #[arg(long)]
        status: Option<String>,
        /// The grantee client.
        #[arg(long)]
        client: Option<String>,
        #[arg(long)]
        scope: Option<String>,
        /// Grants for this user of a client's sessions.
        #[arg(long)]
        subject: Option<String>,
        /// Grants this approver approved, denied or revoked.
        #[arg(long)]
        approver: Option<String>,
        /// Your own client's grants (no admin role needed).
        #[arg(long)]
        mine: bool,
    },
    /// One grant in full: who asked, who approved, when it starts and ends.
    Show {
        id: String,
        /// Read it as its requester (no admin role needed).
        #[arg(long)]
        mine: bool,
    },
    /// Approve a request (an approver of the scope; not the requester).
    Approve {
        id: String,
        #[arg(long)]
        reason: String,
        /// Decide only if the grant is still at this version (as you last read it).
        #[arg(long)]
        version: Option<u64>,
    },
    /// Deny a request.
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
        /// Decide only if the grant is still at this version (as you last read it).
        #[arg(long)]
        version: Option<u64>,
    },
    /// End a grant now, on every node.
    Revoke {
        id: String,
        #[arg(long)]
        reason: String,
        /// Decide only if the grant is still at this version (as you last read it).
        #[arg(long)]
        version: Option<u64>,
    },
}

/// Runs one verb against `server`; prints a table, or the JSON answer with `json`.
pub fn run(command: Command, server: &str, json: bool) -> ExitCode {
    let client = match credentials(server) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("latch: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("latch: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(call(&client, command)) {
        Ok((value, text)) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).unwrap_or_default()
                );
            } else {
                println!("{text}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("latch: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `LATCH_CLIENT_ID`/`LATCH_CLIENT_SECRET` if set, else the admin variables.
fn credentials(server: &str) -> Result<AdminClient, CliError> {
    let id = std::env::var("LATCH_CLIENT_ID").unwrap_or_default();
    let secret = std::env::var("LATCH_CLIENT_SECRET").unwrap_or_default();
    if !id.is_empty() && !secret.is_empty() {
        return AdminClient::new(server, &id, &secret);
    }
    AdminClient::from_env(server)
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn call(client: &AdminClient, command: Command) -> Result<(Value, String), CliError> {
    match command {
        Command::Request {
            scope,
            subject,
            duration,
            justification,
            ticket,
            start_at,
        } => {
            let mut body = json!({
                "scope": scope,
                "duration_secs": duration.as_secs(),
                "justification": justification,
                "ticket": ticket,
            });
            if let Some(t) = start_at {
                body["start_at"] = json!(t);
            }
            if let Some(s) = subject {
                body["subject"] = json!(s);
            }
            let g = client.call(Method::POST, "/grants", Some(body)).await?;
            let text = detail(&g);
            Ok((g, text))
        }
        Command::List {
            status,
            client: grantee,
            scope,
            subject,
            approver,
            mine,
        } => {
            let mut query: Vec<String> = Vec::new();
            for (k, v) in [
                ("status", status),
                ("client", grantee),
                ("scope", scope),
                ("subject", subject),
                ("approver", approver),
            ] {
                if let Some(v) = v {
                    query.push(format!("{k}={}", enc(&v)));
                }
            }
            let base = if mine { "/grants" } else { "/admin/grants" };
            let path = if query.is_empty() {
                base.to_string()
            } else {
                format!("{base}?{}", query.join("&"))
            };
            let answer = client.call(Method::GET, &path, None).await?;
            let text = list_table(&answer["grants"]);
            Ok((answer, text))
        }
        Command::Show { id, mine } => {
            let base = if mine { "/grants" } else { "/admin/grants" };
            let g = client
                .call(Method::GET, &format!("{base}/{}", enc(&id)), None)
                .await?;
            let text = detail(&g);
            Ok((g, text))
        }
        Command::Approve {
            id,
            reason,
            version,
        } => decide(client, &id, "approve", reason, version).await,
        Command::Deny {
            id,
            reason,
            version,
        } => decide(client, &id, "deny", reason, version).await,
        Command::Revoke {
            id,
            reason,
            version,
        } => decide(client, &id, "revoke", reason, version).await,
    }
}

async fn decide(
    client: &AdminClient,
    id: &str,
    verb: &str,
    reason: String,
    version: Option<u64>,
) -> Result<(Value, String), CliError> {
    let mut body = json!({ "reason": reason });
    if let Some(v) = version {
        body["version"] = json!(v);
    }
    let g = client
        .call(
            Method::POST,
            &format!("/admin/grants/{}/{verb}", enc(id)),
            Some(body),
        )
        .await?;
    let text = detail(&g);
    Ok((g, text))
}

/// A time field in ms, readable, or `-` when absent or zero.
fn ms_cell(v: &Value, field: &str) -> String {
    match v[field].as_i64() {
        Some(ms) if ms > 0 => format_unix(ms.div_euclid(1000)),
        _ => "-".into(),
    }
}

fn approvals_cell(g: &Value) -> String {
    let by: Vec<&str> = g["approvals"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|a| a["by"].as_str())
        .collect();
    format!(
        "{}/{}{}",
        by.len(),
        g["approvals_required"].as_u64().unwrap_or(0),
        if by.is_empty() {
            String::new()
        } else {
            format!(" {}", by.join(","))
        }
    )
}

fn list_table(list: &Value) -> String {
    let rows: Vec<Vec<String>> = list
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|g| {
            vec![
                text_cell(g, "id"),
                text_cell(g, "status"),
                match g["subject"].as_str() {
                    Some(sub) => format!("{} for {sub}", text_cell(g, "client_id")),
                    None => text_cell(g, "client_id"),
                },
                text_cell(g, "scope"),
                approvals_cell(g),
                ms_cell(g, "requested_at_ms"),
                ms_cell(g, "starts_at_ms"),
                ms_cell(g, "ends_at_ms"),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "STATUS",
            "CLIENT",
            "SCOPE",
            "APPROVALS",
            "REQUESTED (UTC)",
            "STARTS (UTC)",
            "ENDS (UTC)",
        ],
        &rows,
    )
}

/// One grant, field by field, then its decisions.
fn detail(g: &Value) -> String {
    let mut rows = vec![
        vec!["id".to_string(), text_cell(g, "id")],
        vec!["status".into(), text_cell(g, "status")],
        vec!["client".into(), text_cell(g, "client_id")],
        vec!["scope".into(), text_cell(g, "scope")],
        vec!["requested by".into(), text_cell(g, "requested_by")],
        vec!["requested at".into(), ms_cell(g, "requested_at_ms")],
        vec![
            "request expires".into(),
            ms_cell(g, "request_expires_at_ms"),
        ],
        vec![
            "duration".into(),
            format!("{}s", g["duration_secs"].as_u64().unwrap_or(0)),
        ],
        vec!["justification".into(), text_cell(g, "justification")],
        vec!["ticket".into(), text_cell(g, "ticket")],
        vec!["approvals".into(), approvals_cell(g)],
        vec!["starts".into(), ms_cell(g, "starts_at_ms")],
        vec!["ends".into(), ms_cell(g, "ends_at_ms")],
    ];
    if let Some(sub) = g["subject"].as_str() {
        rows.insert(3, vec!["subject".into(), sub.to_string()]);
    }
    for a in g["approvals"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        rows.push(vec![
            "approved by".into(),
            format!(
                "{} at {} ({})",
                text_cell(a, "by"),
                ms_cell(a, "at_ms"),
                text_cell(a, "reason")
            ),
        ]);
    }
    if g["closed"].is_object() {
        let c = &g["closed"];
        rows.push(vec![
            format!("{} by", text_cell(g, "status")),
            format!(
                "{} at {} ({})",
                text_cell(c, "by"),
                ms_cell(c, "at_ms"),
                text_cell(c, "reason")
            ),
        ]);
    }
    table(&["FIELD", "VALUE"], &rows)
}
