//! Operator verbs (`latch revoke`, `keys`, `audit`, `contracts`): a small client of a
//! running server's admin API, with readable tables by default and JSON on request.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, Uri};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

pub mod contracts;
pub mod grants;
pub mod wait;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(
        "set LATCH_ADMIN_CLIENT_ID and LATCH_ADMIN_CLIENT_SECRET to an admin client's credentials"
    )]
    MissingCredentials,
    #[error("--server must be an http:// or https:// URL, got {0:?}")]
    BadServer(String),
    #[error("--ca-file {}: {reason}", path.display())]
    BadCaFile { path: PathBuf, reason: String },
    #[error("cannot reach {server}: {reason}")]
    Unreachable { server: String, reason: String },
    #[error("server answered {status}: {error}{}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default(), problems_text(problems))]
    Refused {
        status: u16,
        error: String,
        description: Option<String>,
        /// A validation failure's `problems` (`{"at","key","code","message"}` each).
        problems: Vec<Value>,
    },
}

/// `; problems: AT KEY: CODE: MESSAGE; ...`, or nothing: keeps a refusal on one line.
fn problems_text(problems: &[Value]) -> String {
    if problems.is_empty() {
        return String::new();
    }
    let each: Vec<String> = problems
        .iter()
        .map(|p| {
            let field = |name: &str| p[name].as_str().unwrap_or_default().replace('\n', " ");
            let place = [field("at"), field("key")]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            format!("{place}: {}: {}", field("code"), field("message"))
        })
        .collect();
    format!("; problems: {}", each.join("; "))
}

/// `--ca-file` as given on the command line (else `LATCH_CA_FILE` is read).
static CA_FILE: OnceLock<PathBuf> = OnceLock::new();

/// Sets the CA file every `https://` connection of this process trusts (`--ca-file`).
pub fn set_ca_file(path: PathBuf) {
    let _ = CA_FILE.set(path);
}

fn ca_file() -> Option<PathBuf> {
    CA_FILE.get().cloned().or_else(|| {
        std::env::var_os("LATCH_CA_FILE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
}

/// How the CLI reaches one server: plain TCP for `http://`, TLS (rustls on ring, ALPN
/// `http/1.1`) for `https://`, trusting `--ca-file` / `LATCH_CA_FILE` or else the system's
/// roots. One connection per request: the verbs make few.
#[derive(Clone)]
struct Transport {
    host: String,
    port: u16,
    authority: String,
    /// The server URL's path (no trailing `/`), before every request path.
    prefix: String,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Transport {
    fn new(server: &str) -> Result<Transport, CliError> {
        let bad = || CliError::BadServer(server.to_string());
        let uri: Uri = server.parse().map_err(|_| bad())?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad()),
        };
        let authority = uri.authority().ok_or_else(bad)?.as_str().to_string();
        let host = uri
            .host()
            .ok_or_else(bad)?
            .trim_matches(['[', ']'])
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https { Some(connector()?) } else { None };
        Ok(Transport {
            host,
            port,
            authority,
            prefix: uri.path().trim_end_matches('/').to_string(),
            tls,
        })
    }

    /// Sends `req` (its URI a path) on a new connection.
    async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, String> {
        let (mut parts, body) = req.into_parts();
        parts
            .headers
            .insert(HOST, self.authority.parse().map_err(|_| "bad host")?);
        let req = Request::from_parts(parts, body);
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => exchange(TokioIo::new(tcp), req).await,
            Some(connector) => {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| e.to_string())?;
                let stream = connector.connect(name, tcp).await.map_err(|e| {
                    let hint = if e.to_string().contains("certificate") {
                        " (if the server's certificate is from a private CA, give that CA \
                         with --ca-file or LATCH_CA_FILE)"
                    } else {
                        ""
                    };
                    format!("TLS: {e}{hint}")
                })?;
                exchange(TokioIo::new(stream), req).await
            }
        }
    }
}

async fn exchange<T>(io: T, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender.send_request(req).await.map_err(|e| e.to_string())
}

/// The TLS client config: TLS 1.2+, ring, the CA file's certificates or the system roots.
fn connector() -> Result<tokio_rustls::TlsConnector, CliError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file() {
        Some(path) => {
            let bad = |reason: String| CliError::BadCaFile {
                path: path.clone(),
                reason,
            };
            let pem = std::fs::read(&path).map_err(|e| bad(format!("cannot read: {e}")))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| bad(format!("not a PEM certificate file: {e}")))?;
                roots.add(cert).map_err(|e| bad(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(bad("holds no PEM certificate".into()));
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        // ring supports both versions; this cannot fail.
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Talks to one server's admin API with one client's credentials.
pub struct AdminClient {
    base: String,
    authorization: String,
    http: Transport,
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
        let http = Transport::new(server)?;
        let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let credentials = format!("{}:{}", encode(id), encode(secret));
        Ok(AdminClient {
            base: server.trim_end_matches('/').to_string(),
            authorization: format!("Basic {}", STANDARD.encode(credentials)),
            http,
        })
    }

    /// Sends a request; a non-2xx answer becomes [`CliError::Refused`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, CliError> {
        let unreachable = |reason: String| CliError::Unreachable {
            server: self.base.clone(),
            reason,
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.http.prefix))
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
        let resp = self.http.send(req).await.map_err(unreachable)?;
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
                problems: value["problems"].as_array().cloned().unwrap_or_default(),
            });
        }
        Ok(value)
    }
}

/// `latch healthcheck`: `GET {server}/readyz` without credentials, as a container's or a
/// service manager's health check does. `Ok` only for a 200 within `timeout`; anything else
/// (refused, 503 while the node fails closed, a timeout) is the reason it is not ready.
pub async fn healthcheck(server: &str, timeout: Duration) -> Result<(), CliError> {
    let http = Transport::new(server)?;
    let unreachable = |reason: String| CliError::Unreachable {
        server: server.to_string(),
        reason,
    };
    let req = Request::get(format!("{}/readyz", http.prefix))
        .body(Full::new(Bytes::new()))
        .map_err(|_| CliError::BadServer(server.to_string()))?;
    let resp = tokio::time::timeout(timeout, http.send(req))
        .await
        .map_err(|_| {
            unreachable(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            ))
        })?
        .map_err(unreachable)?;
    let status = resp.status();
    if status == hyper::StatusCode::OK {
        return Ok(());
    }
    let bytes = tokio::time::timeout(timeout, resp.into_body().collect())
        .await
        .ok()
        .and_then(Result::ok)
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Err(CliError::Refused {
        status: status.as_u16(),
        error: value["status"].as_str().unwrap_or("not_ready").to_string(),
        description: value["reason"].as_str().map(str::to_string),
        problems: Vec::new(),
    })
}

/// Formats Unix seconds as `YYYY-MM-DD HH:MM:SS` UTC; a time outside years 1970 to 9999
/// (which no server sends) is shown as the number itself.
pub fn format_unix(secs: i64) -> String {
    // The last second of year 9999: humantime formats four-digit years only.
    const MAX: i64 = 253_402_300_799;
    if !(0..=MAX).contains(&secs) {
        return secs.to_string();
    }
    let time = UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs());
    // `2026-11-18T11:06:40Z` → `2026-11-18 11:06:40`.
    humantime::format_rfc3339_seconds(time)
        .to_string()
        .replacen('T', " ", 1)
        .trim_end_matches('Z')
        .to_string()
}

/// Renders rows as an aligned text table: columns two spaces apart, no borders, no
/// trailing spaces, never wrapped (the output may go to a pipe).
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::NOTHING)
        .set_header(headers.to_vec())
        .add_rows(rows.iter().cloned());
    for column in t.column_iter_mut() {
        column.set_padding((0, 2));
    }
    t.trim_fmt()
}

/// How a field of a JSON object becomes a table cell.
#[derive(Debug, Clone, Copy)]
pub enum Cell {
    /// [`text_cell`]
    Text,
    /// [`time_cell`]
    Time,
}

/// A table of the objects in `list` (a JSON array; anything else is no rows), one column
/// per `(header, field, cell)`.
pub fn objects_table(list: &Value, columns: &[(&str, &str, Cell)]) -> String {
    let headers: Vec<&str> = columns.iter().map(|&(header, _, _)| header).collect();
    let rows: Vec<Vec<String>> = list
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|object| {
            columns
                .iter()
                .map(|&(_, field, cell)| match cell {
                    Cell::Text => text_cell(object, field),
                    Cell::Time => time_cell(object, field),
                })
                .collect()
        })
        .collect();
    table(&headers, &rows)
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
        assert_eq!(format_unix(253_402_300_799), "9999-12-31 23:59:59");
        assert_eq!(format_unix(253_402_300_800), "253402300800");
        assert_eq!(format_unix(-1), "-1");
    }

    #[test]
    fn aligns_tables() {
        let t = table(&["A", "LONG"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    LONG\nxyz  1");
        let t = table(
            &["SEQ", "TIME (UTC)", "REASON"],
            &[
                vec!["7".into(), format_unix(0), "-".into()],
                vec!["12".into(), "-".into(), "key exposed".into()],
            ],
        );
        assert_eq!(
            t,
            "SEQ  TIME (UTC)           REASON\n\
             7    1970-01-01 00:00:00  -\n\
             12   -                    key exposed"
        );
    }

    #[test]
    fn tables_of_objects() {
        use Cell::{Text, Time};
        let list = serde_json::json!([
            {"kid": "k1", "at": 0, "n": 3},
            {"kid": "", "at": null},
        ]);
        let columns = [("KID", "kid", Text), ("AT", "at", Time), ("N", "n", Text)];
        assert_eq!(
            objects_table(&list, &columns),
            "KID  AT                   N\n\
             k1   1970-01-01 00:00:00  3\n\
             -    -                    -"
        );
        assert_eq!(objects_table(&Value::Null, &columns), "KID  AT  N");
    }
}
