//! The incident verbs: `latch revoke ... --wait`, `latch keys revoke KID --wait` and
//! `latch status`. They read the node registry through the admin API (`GET
//! /admin/revocations/{seq}`, `GET /admin/nodes`); the judgments (applied, pending,
//! failing closed, gone) are the server's, made on the store's clock.
//!
//! Exit codes of `--wait`: 0 every live node applied it or provably fails closed (gone
//! nodes are not waited for); 1 the command failed (refused, unreachable, credentials);
//! 2 bad arguments; 3 not confirmed within `--timeout`, naming the nodes still pending.

use std::collections::BTreeMap;
use std::future::Future;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::Value;

use super::{table, text_cell, time_cell, AdminClient, CliError};

/// Exit code when the wait ended before every node was settled.
pub const NOT_CONFIRMED: u8 = 3;

/// How often the registry is read while waiting.
const POLL: Duration = Duration::from_millis(200);

/// One admin call may take this long before it counts as failed (and is retried).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What `--wait` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The revocation the answer's `seq` names.
    Revocation,
    /// The key-set version the store holds once the key revocation answered.
    Keys,
}

/// Runs `action` (the revocation) and then waits until every node is settled or
/// `timeout` passes. Prints the action's text, one line per node as its status changes,
/// and the final table (or, with `json`, the last registry answer).
pub fn after<F, Fut>(
    server: &str,
    json: bool,
    timeout: Duration,
    target: Target,
    action: F,
) -> ExitCode
where
    F: FnOnce(AdminClient) -> Fut,
    Fut: Future<Output = Result<(Value, String), CliError>>,
{
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("latch: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let (answer, text) = action(AdminClient::from_env(server)?).await?;
        if !json {
            println!("{text}");
        }
        let client = AdminClient::from_env(server)?;
        match target {
            Target::Revocation => {
                let seq = answer["seq"].as_u64().ok_or_else(|| CliError::Refused {
                    status: 200,
                    error: "unexpected_answer".into(),
                    description: Some("the revocation answer has no seq".into()),
                    problems: Vec::new(),
                })?;
                wait_revocation(&client, seq, timeout, json).await
            }
            Target::Keys => wait_keys(&client, timeout, json).await,
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(NOT_CONFIRMED),
        Err(e) => {
            eprintln!("latch: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A node's status as last printed, by id.
type Seen = BTreeMap<String, String>;

/// Polls `GET /admin/revocations/{seq}` until it says confirmed or `timeout` passes.
async fn wait_revocation(
    client: &AdminClient,
    seq: u64,
    timeout: Duration,
    json: bool,
) -> Result<bool, CliError> {
    let path = format!("/admin/revocations/{seq}");
    let started = Instant::now();
    if !json {
        println!(
            "waiting up to {} for every live node to apply seq {seq} or fail closed",
            human(timeout)
        );
    }
    let mut seen = Seen::new();
    let mut last = None;
    loop {
        match call(client, &path).await {
            Ok(answer) => {
                let rows = answer["nodes"].as_array().cloned().unwrap_or_default();
                if !json {
                    print_changes(&mut seen, &rows, revocation_note);
                }
                let confirmed = answer["confirmed"] == true;
                last = Some(answer);
                if confirmed {
                    break;
                }
            }
            // A node answering 503 (it is stale itself) or a lost connection: try again
            // until the deadline; the last good answer is what is reported.
            Err(e) if started.elapsed() < timeout => tracing::debug!(%e, "retrying"),
            Err(e) => return Err(e),
        }
        if started.elapsed() >= timeout {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let answer = last.unwrap_or(Value::Null);
    let confirmed = answer["confirmed"] == true;
    report(
        &answer,
        json,
        confirmed,
        started.elapsed(),
        timeout,
        revocation_table,
    );
    Ok(confirmed)
}

/// Polls `GET /admin/nodes` until every live node runs on the store's key-set version
/// (read once, right after the revocation) or fails closed.
async fn wait_keys(client: &AdminClient, timeout: Duration, json: bool) -> Result<bool, CliError> {
    let started = Instant::now();
    let first = call(client, "/admin/nodes").await?;
    let version = first["store"]["keys_version"].as_u64().unwrap_or(u64::MAX);
    if !json {
        println!(
            "waiting up to {} for every live node to load key set version {version} or fail closed",
            human(timeout)
        );
    }
    let mut seen = Seen::new();
    let mut answer = first;
    loop {
        let rows = keys_rows(&mut answer, version);
        if !json {
            print_changes(&mut seen, &rows, |n| keys_note(n, version));
        }
        if answer["confirmed"] == true || started.elapsed() >= timeout {
            break;
        }
        tokio::time::sleep(POLL).await;
        match call(client, "/admin/nodes").await {
            Ok(a) => answer = a,
            Err(e) if started.elapsed() < timeout => tracing::debug!(%e, "retrying"),
            Err(e) => return Err(e),
        }
    }
    let confirmed = answer["confirmed"] == true;
    report(
        &answer,
        json,
        confirmed,
        started.elapsed(),
        timeout,
        |rows| keys_table(rows, version),
    );
    Ok(confirmed)
}

/// Gives each node of a `/admin/nodes` answer a `status` for key-set `version` and the
/// answer `confirmed` and `waiting_for`, as `/admin/revocations/{seq}` has them.
fn keys_rows(answer: &mut Value, version: u64) -> Vec<Value> {
    let mut waiting = Vec::new();
    let mut rows = answer["nodes"].as_array().cloned().unwrap_or_default();
    for n in &mut rows {
        let status = if n["keys_version"].as_u64().unwrap_or(0) >= version {
            "applied"
        } else {
            match n["state"].as_str() {
                Some("gone") => "gone",
                Some("failing_closed") => "failing_closed",
                _ => "pending",
            }
        };
        if status == "pending" {
            waiting.push(n["id"].clone());
        }
        n["status"] = status.into();
    }
    answer["confirmed"] = waiting.is_empty().into();
    answer["waiting_for"] = waiting.into();
    answer["nodes"] = rows.clone().into();
    rows
}

/// Prints one line per node whose status changed since the last answer.
fn print_changes(seen: &mut Seen, rows: &[Value], note: impl Fn(&Value) -> String) {
    for n in rows {
        let id = text_cell(n, "id");
        let status = text_cell(n, "status");
        if seen.get(&id) != Some(&status) {
            println!(
                "  {:<24} {:<15} {}",
                text_cell(n, "name"),
                status.replace('_', " "),
                note(n)
            );
            seen.insert(id, status);
        }
    }
}

/// The final lines: a summary, the table, and on a timeout the nodes still pending.
fn report(
    answer: &Value,
    json: bool,
    confirmed: bool,
    took: Duration,
    timeout: Duration,
    table: impl Fn(&[Value]) -> String,
) {
    let rows = answer["nodes"].as_array().cloned().unwrap_or_default();
    let count = |s: &str| rows.iter().filter(|n| n["status"] == s).count();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(answer).unwrap_or_default()
        );
    } else {
        let summary = format!(
            "{} applied, {} failing closed, {} gone, {} pending",
            count("applied"),
            count("failing_closed"),
            count("gone"),
            count("pending")
        );
        if confirmed {
            println!("confirmed (waited {}): {summary}", human(took));
        } else {
            println!("NOT confirmed within {}: {summary}", human(timeout));
        }
        println!("{}", table(&rows));
    }
    if !confirmed {
        let pending: Vec<String> = rows
            .iter()
            .filter(|n| n["status"] == "pending")
            .map(|n| format!("{} ({})", text_cell(n, "name"), text_cell(n, "id")))
            .collect();
        eprintln!(
            "latch: not confirmed within {}; still answering without it: {}",
            human(timeout),
            if pending.is_empty() {
                "(no answer from the server)".to_string()
            } else {
                pending.join(", ")
            }
        );
    }
}

fn revocation_note(n: &Value) -> String {
    match n["status"].as_str() {
        Some("applied") => {
            let after = n["after_ms"]
                .as_i64()
                .map(|ms| format!("+{ms} ms"))
                .unwrap_or_else(|| "(time unknown)".into());
            if n["on_start"] == true {
                format!("{after}, read from the log at start (catch-up)")
            } else {
                after
            }
        }
        Some("failing_closed") => stale_note(n),
        Some("gone") => format!(
            "no heartbeat for {} (not waited for)",
            ms_text(n["heartbeat_age_ms"].as_i64())
        ),
        _ => format!("applied up to seq {}", text_cell(n, "applied")),
    }
}

fn keys_note(n: &Value, version: u64) -> String {
    match n["status"].as_str() {
        Some("applied") => format!("key set version {}", text_cell(n, "keys_version")),
        Some("failing_closed") => stale_note(n),
        Some("gone") => format!(
            "no heartbeat for {} (not waited for)",
            ms_text(n["heartbeat_age_ms"].as_i64())
        ),
        _ => format!(
            "key set version {} (waiting for {version})",
            text_cell(n, "keys_version")
        ),
    }
}

fn stale_note(n: &Value) -> String {
    format!(
        "refuses requests: last freshness proof {} old, max_staleness {}",
        ms_text(n["fresh_age_ms"].as_i64()),
        ms_text(n["max_staleness_ms"].as_i64())
    )
}

fn revocation_table(rows: &[Value]) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|n| {
            vec![
                text_cell(n, "name"),
                text_cell(n, "address"),
                text_cell(n, "status").replace('_', " "),
                n["after_ms"]
                    .as_i64()
                    .map(|ms| format!("{ms} ms"))
                    .unwrap_or_else(|| "-".into()),
                text_cell(n, "applied"),
                ms_text(n["fresh_age_ms"].as_i64()),
                text_cell(n, "id"),
            ]
        })
        .collect();
    table(
        &[
            "NODE",
            "ADDRESS",
            "STATUS",
            "AFTER",
            "APPLIED",
            "PROOF AGE",
            "ID",
        ],
        &body,
    )
}

fn keys_table(rows: &[Value], version: u64) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|n| {
            vec![
                text_cell(n, "name"),
                text_cell(n, "address"),
                text_cell(n, "status").replace('_', " "),
                format!("{} / {version}", text_cell(n, "keys_version")),
                ms_text(n["fresh_age_ms"].as_i64()),
                text_cell(n, "id"),
            ]
        })
        .collect();
    table(
        &["NODE", "ADDRESS", "STATUS", "KEY SET", "PROOF AGE", "ID"],
        &body,
    )
}

/// `latch status`: the nodes, their lag, keys by state, the newest revocations and how
/// long each took to reach the last node.
pub async fn status(client: AdminClient) -> Result<(Value, String), CliError> {
    let nodes = client.call(Method::GET, "/admin/nodes", None).await?;
    let keys = client.call(Method::GET, "/admin/keys", None).await?;
    let store = &nodes["store"];
    let mut out = format!(
        "store epoch {}, revocation seq {}, key set version {}, store time {} UTC\n\n",
        text_cell(store, "epoch"),
        text_cell(store, "revocation_seq"),
        text_cell(store, "keys_version"),
        store["time_ms"]
            .as_i64()
            .map(|ms| super::format_unix(ms.div_euclid(1000)))
            .unwrap_or_else(|| "-".into()),
    );
    let rows: Vec<Vec<String>> = nodes["nodes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|n| {
            let mut name = text_cell(n, "name");
            if n["this_node"] == true {
                name.push_str(" *");
            }
            vec![
                name,
                text_cell(n, "address"),
                text_cell(n, "state").replace('_', " "),
                n["lag"]
                    .as_u64()
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "other epoch".into()),
                if n["ready"] == true { "yes" } else { "no" }.into(),
                ms_text(n["fresh_age_ms"].as_i64()),
                ms_text(n["heartbeat_age_ms"].as_i64()),
                text_cell(n, "keys_version"),
                text_cell(n, "version"),
                text_cell(n, "id"),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "NODE",
            "ADDRESS",
            "STATE",
            "LAG",
            "READY",
            "PROOF AGE",
            "HEARTBEAT",
            "KEYS",
            "VERSION",
            "ID",
        ],
        &rows,
    ));
    let mut by_state: BTreeMap<String, usize> = BTreeMap::new();
    for k in keys["keys"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        *by_state.entry(text_cell(k, "state")).or_default() += 1;
    }
    let keys_line: Vec<String> = by_state.iter().map(|(s, n)| format!("{n} {s}")).collect();
    out.push_str(&format!("\n\nkeys: {}\n\n", keys_line.join(", ")));
    let recent: Vec<Vec<String>> = nodes["recent"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .rev()
        .map(|r| {
            let c = &r["counts"];
            vec![
                text_cell(r, "seq"),
                text_cell(r, "kind"),
                text_cell(r, "value"),
                time_cell(r, "revoked_at"),
                match (r["confirmed"] == true, r["reached_last_ms"].as_i64()) {
                    (true, Some(ms)) => format!("{ms} ms"),
                    (true, None) => "confirmed (time unknown)".into(),
                    (false, _) => format!("{} pending", c["pending"]),
                },
                format!(
                    "{} applied, {} failing closed, {} gone",
                    c["applied"], c["failing_closed"], c["gone"]
                ),
            ]
        })
        .collect();
    out.push_str("recent revocations\n");
    out.push_str(&table(
        &[
            "SEQ",
            "KIND",
            "VALUE",
            "REVOKED (UTC)",
            "REACHED LAST NODE",
            "NODES",
        ],
        &recent,
    ));
    let answer = serde_json::json!({ "nodes": nodes, "keys": keys });
    Ok((answer, out))
}

async fn call(client: &AdminClient, path: &str) -> Result<Value, CliError> {
    match tokio::time::timeout(CALL_TIMEOUT, client.call(Method::GET, path, None)).await {
        Ok(r) => r,
        Err(_) => Err(CliError::Unreachable {
            server: path.to_string(),
            reason: format!("no answer within {}", human(CALL_TIMEOUT)),
        }),
    }
}

fn ms_text(ms: Option<i64>) -> String {
    match ms {
        Some(ms) if ms < 10_000 => format!("{ms} ms"),
        Some(ms) => format!("{:.1} s", ms as f64 / 1000.0),
        None => "-".into(),
    }
}

fn human(d: Duration) -> String {
    crate::config::format_duration(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_key_revocation_is_settled_per_node_by_version_and_state() {
        let mut answer = json!({"nodes": [
            {"id": "a", "keys_version": 4, "state": "current"},
            {"id": "b", "keys_version": 3, "state": "failing_closed"},
            {"id": "c", "keys_version": 3, "state": "gone"},
            {"id": "d", "keys_version": 3, "state": "behind"},
        ]});
        let rows = keys_rows(&mut answer, 4);
        let statuses: Vec<_> = rows.iter().map(|n| n["status"].clone()).collect();
        assert_eq!(
            statuses,
            [
                json!("applied"),
                json!("failing_closed"),
                json!("gone"),
                json!("pending")
            ]
        );
        assert_eq!(answer["confirmed"], false);
        assert_eq!(answer["waiting_for"], json!(["d"]));
        let mut settled = json!({"nodes": [{"id": "a", "keys_version": 5, "state": "behind"}]});
        keys_rows(&mut settled, 4);
        assert_eq!(settled["confirmed"], true);
    }
}
