//! Operator verbs (`latch revoke`, `keys`, `audit`): a small client of a running server's
//! admin API, with readable tables by default and JSON on request.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub mod wait;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(
        "set LATCH_ADMIN_CLIENT_ID and LATCH_ADMIN_CLIENT_SECRET to an admin client's credentials"
    )]
    MissingCredentials,
    #[error("--server must be an http:// URL, got {0:?}")]
    BadServer(String),
    #[error("cannot reach {server}: {reason}")]
    Unreachable { server: String, reason: String },
    #[error("server answered {status}: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        status: u16,
        error: String,
        description: Option<String>,
    },
}

/// Talks to one server's admin API with one client's credentials.
pub struct AdminClient {
    base: String,
    authorization: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl AdminClient {
    /// Credentials from `LATCH_ADMIN_CLIENT_ID` / `LATCH_ADMIN_CLIENT_SECRET`.
    pub fn from_env(server: &str) -> Result<AdminClient, CliError> {
        let id = std::env::var("LATCH_ADMIN_CLIENT_ID").unwrap_or_default();
        let secret = std::env::var("LATCH_ADMIN_CLIENT_SECRET").unwrap_or_default();
        if id.is_empty() || secret.is_empty() {
            return Err(CliError::MissingCredentials);
        }
        AdminClient::new(server, &id, &secret)
    }

    pub fn new(server: &str, id: &str, secret: &str) -> Result<AdminClient, CliError> {
        if !server.starts_with("http://") {
            return Err(CliError::BadServer(server.to_string()));
        }
        let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let credentials = format!("{}:{}", encode(id), encode(secret));
        Ok(AdminClient {
            base: server.trim_end_matches('/').to_string(),
            authorization: format!("Basic {}", STANDARD.encode(credentials)),
            http: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    /// Sends a request; a non-2xx answer becomes [`CliError::Refused`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, CliError> {
        let url = format!("{}{}", self.base, path);
        let unreachable = |reason: String| CliError::Unreachable {
            server: self.base.clone(),
            reason,
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(&url)
            .header(AUTHORIZATION, &self.authorization);
        let payload = match body {
            Some(v) => {
                builder = builder.header(CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
            }
            None => Bytes::new(),
        };
        let req = builder
            .body(Full::new(payload))
            .map_err(|_| CliError::BadServer(self.base.clone()))?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(CliError::Refused {
                status: status.as_u16(),
                error: value["error"]
                    .as_str()
                    .unwrap_or("unknown_error")
                    .to_string(),
                description: value["error_description"].as_str().map(str::to_string),
            });
        }
        Ok(value)
    }
}

/// Formats Unix seconds as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn format_unix(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (H. Hinnant's algorithm), proleptic Gregorian.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Renders rows as an aligned text table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// A time field of a JSON object, readable, or `-`.
pub fn time_cell(v: &Value, field: &str) -> String {
    v[field]
        .as_i64()
        .map(format_unix)
        .unwrap_or_else(|| "-".into())
}

/// A string field of a JSON object, or `-`.
pub fn text_cell(v: &Value, field: &str) -> String {
    match &v[field] {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_unix_time() {
        assert_eq!(format_unix(0), "1970-01-01 00:00:00");
        assert_eq!(format_unix(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(format_unix(1_795_000_000), "2026-11-18 11:06:40");
    }

    #[test]
    fn aligns_tables() {
        let t = table(&["A", "LONG"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    LONG\nxyz  1");
    }
}
