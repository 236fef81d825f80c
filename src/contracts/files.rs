//! Contracts as files, for review in version control and checks in CI:
//!
//! ```text
//! DIR/scopes.toml                      the registry: [scopes."orders:read"] description, owner, audiences, status
//! DIR/clients/<client id>/<n>.toml     version n of that client's contract
//! ```
//!
//! A version file holds the amendment's metadata and its whole content:
//!
//! ```toml
//! changelog = "orders:write in shadow for the new checkout"
//! reason = "CHG-1234"
//! effective_at = "2026-12-01T09:00:00Z"   # optional: absent means when applied
//! [contract]
//! grants = ["client_credentials"]
//! scopes = { "orders:read" = "enforced", "orders:write" = "shadow" }
//! audiences = { "https://orders.example" = "enforced" }
//! ```
//!
//! Reading does IO (the CLI's job); everything after is pure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Contract, Problem, Registry, MAX_TEXT};

/// One version file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionFile {
    #[serde(default)]
    changelog: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    effective_at: Option<String>,
    #[serde(default)]
    rollback_of: Option<u64>,
    contract: Contract,
}

/// One version of a client's contract, as read from its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileVersion {
    pub path: PathBuf,
    pub version: u64,
    pub changelog: String,
    pub reason: String,
    /// Unix ms; `None`: effective when applied.
    pub effective_at_ms: Option<i64>,
    pub rollback_of: Option<u64>,
    pub contract: Contract,
}

/// A contracts directory.
#[derive(Debug, Clone, Default)]
pub struct Dir {
    pub registry: Option<Registry>,
    /// Client id → its versions, in version order.
    pub clients: BTreeMap<String, Vec<FileVersion>>,
}

impl Dir {
    /// The highest version of each client.
    pub fn latest(&self) -> impl Iterator<Item = (&str, &FileVersion)> {
        self.clients
            .iter()
            .filter_map(|(id, v)| v.last().map(|f| (id.as_str(), f)))
    }

    /// The version of each client in force at `at_ms` (files without `effective_at` count
    /// as in force).
    pub fn at(&self, at_ms: i64) -> BTreeMap<&str, &FileVersion> {
        self.clients
            .iter()
            .filter_map(|(id, versions)| {
                versions
                    .iter()
                    .rev()
                    .find(|f| f.effective_at_ms.is_none_or(|t| t <= at_ms))
                    .map(|f| (id.as_str(), f))
            })
            .collect()
    }
}

fn problem(path: &Path, key: &str, code: &'static str, message: impl Into<String>) -> Problem {
    Problem {
        at: path.display().to_string(),
        key: key.to_string(),
        code,
        message: message.into(),
    }
}

/// Parses an RFC 3339 timestamp (`2026-12-01T09:00:00Z`) to Unix ms.
pub fn parse_time(text: &str) -> Option<i64> {
    // Strict: a time zone (`Z`) is required; a local time is refused, not read as UTC.
    let t = humantime::parse_rfc3339(text).ok()?;
    let ms = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
    i64::try_from(ms).ok()
}

/// Reads a contracts directory. Every problem found is returned (not only the first),
/// each naming the file, the key and why.
pub fn load(dir: &Path) -> Result<Dir, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut out = Dir::default();
    let registry_path = dir.join("scopes.toml");
    match std::fs::read_to_string(&registry_path) {
        Ok(text) => match toml::from_str::<Registry>(&text) {
            Ok(r) => out.registry = Some(r),
            Err(e) => problems.push(problem(&registry_path, "", "invalid_file", e.message())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => problems.push(problem(&registry_path, "", "unreadable", e.to_string())),
    }
    let clients_dir = dir.join("clients");
    let entries = match std::fs::read_dir(&clients_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if out.registry.is_none() {
                problems.push(problem(
                    dir,
                    "",
                    "empty_directory",
                    "neither scopes.toml nor clients/ found",
                ));
            }
            return if problems.is_empty() {
                Ok(out)
            } else {
                Err(problems)
            };
        }
        Err(e) => {
            problems.push(problem(&clients_dir, "", "unreadable", e.to_string()));
            return Err(problems);
        }
    };
    let mut client_dirs: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    client_dirs.sort();
    for client_dir in client_dirs {
        if !client_dir.is_dir() {
            continue;
        }
        let id = client_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&client_dir) {
            Ok(e) => e.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => {
                problems.push(problem(&client_dir, "", "unreadable", e.to_string()));
                continue;
            }
        };
        files.retain(|p| p.extension().is_some_and(|e| e == "toml"));
        let mut versions = Vec::new();
        for path in files {
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
            let Some(version) = stem
                .as_deref()
                .and_then(|s| s.parse::<u64>().ok())
                .filter(|v| *v > 0)
            else {
                problems.push(problem(
                    &path,
                    "",
                    "invalid_file_name",
                    "a version file is named <version>.toml, the version a positive integer",
                ));
                continue;
            };
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    problems.push(problem(&path, "", "unreadable", e.to_string()));
                    continue;
                }
            };
            let file: VersionFile = match toml::from_str(&text) {
                Ok(f) => f,
                Err(e) => {
                    problems.push(problem(&path, "", "invalid_file", e.message()));
                    continue;
                }
            };
            let effective_at_ms = match file.effective_at.as_deref().map(|t| (t, parse_time(t))) {
                None => None,
                Some((_, Some(ms))) => Some(ms),
                Some((t, None)) => {
                    problems.push(problem(
                        &path,
                        "effective_at",
                        "invalid_time",
                        format!("{t:?} is not an RFC 3339 time like 2026-12-01T09:00:00Z"),
                    ));
                    continue;
                }
            };
            if file.changelog.len() > MAX_TEXT || file.reason.len() > MAX_TEXT {
                problems.push(problem(
                    &path,
                    "changelog",
                    "text_too_long",
                    format!("changelog and reason are at most {MAX_TEXT} bytes"),
                ));
            }
            versions.push(FileVersion {
                path,
                version,
                changelog: file.changelog,
                reason: file.reason,
                effective_at_ms,
                rollback_of: file.rollback_of,
                contract: file.contract,
            });
        }
        versions.sort_by_key(|v| v.version);
        out.clients.insert(id, versions);
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}
