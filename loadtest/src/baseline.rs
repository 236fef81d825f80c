//! The baseline: a bare hyper HTTP/1.1 server that reads each request body and answers a
//! fixed RFC 7662 JSON body, run as a child process (`latch-load serve-baseline`) so that it
//! gets what latch gets: its own process, its own multi-thread tokio runtime, the same
//! loopback path. Scenario throughput divided by baseline throughput is the server's cost.

use std::convert::Infallible;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

use crate::cli::ServeBaselineArgs;

/// A fixed active RFC 7662 answer of exactly `size` bytes (the `jti` is padded), or the
/// shortest such answer when `size` is smaller than that.
pub fn answer_body(size: usize) -> Bytes {
    let make = |jti: &str| {
        format!(
            concat!(
                r#"{{"active":true,"scope":"orders:read orders:write","client_id":"orders-service","#,
                r#""sub":"orders-service","aud":"https://orders.example","iss":"http://baseline.invalid","#,
                r#""exp":4102444800,"iat":4102444500,"nbf":4102444500,"jti":"{}","token_type":"Bearer"}}"#
            ),
            jti
        )
    };
    let bare = make("").len();
    if size >= bare {
        return Bytes::from(make(&"x".repeat(size - bare)));
    }
    // Too long even with an empty jti: a smaller, still valid, answer.
    let small = format!(
        r#"{{"active":true,"jti":"{}"}}"#,
        "x".repeat(size.saturating_sub(24))
    );
    Bytes::from(small)
}

/// `latch-load serve-baseline`: serves until stdin closes (the parent went away) or forever
/// when stdin is a terminal. Prints `baseline listening on http://ADDR` once bound.
pub fn serve_main(args: &ServeBaselineArgs) -> ExitCode {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(t) = args.threads {
        rt.worker_threads(t.max(1));
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("latch-load: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let body = answer_body(args.body_bytes);
    rt.block_on(async move {
        let listener = match TcpListener::bind(&args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("latch-load: cannot listen on {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        let addr = listener
            .local_addr()
            .expect("bound listener has an address");
        println!(
            "baseline listening on http://{addr} ({} byte answers)",
            body.len()
        );
        tokio::select! {
            _ = accept_loop(listener, body) => ExitCode::SUCCESS,
            _ = stdin_closed() => ExitCode::SUCCESS,
        }
    })
}

/// Resolves when stdin reaches end of file (never, when stdin is a terminal).
async fn stdin_closed() {
    use std::io::IsTerminal as _;
    if std::io::stdin().is_terminal() {
        return std::future::pending().await;
    }
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// Accepts connections like latch's listener does (keep-alive, TCP_NODELAY, a header
/// read timeout) and serves the fixed answer.
async fn accept_loop(listener: TcpListener, body: Bytes) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .keep_alive(true);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        let service = service_fn(move |req| answer(req, body.clone()));
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

async fn answer(req: Request<Incoming>, body: Bytes) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the whole request body, as a real endpoint must before it can answer.
    let _ = req.into_body().collect().await;
    let mut resp = Response::new(Full::new(body));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// A running baseline child process; killed on [`BaselineServer::stop`] or drop.
pub struct BaselineServer {
    child: Child,
    pub url: String,
}

impl BaselineServer {
    /// Starts `latch-load serve-baseline` on a free loopback port.
    pub async fn spawn(body_bytes: usize, threads: Option<usize>) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
        let mut cmd = Command::new(exe);
        cmd.args(["serve-baseline", "--listen", "127.0.0.1:0", "--body-bytes"])
            .arg(body_bytes.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(t) = threads {
            cmd.arg("--threads").arg(t.to_string());
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the baseline server: {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .map_err(|_| "baseline server did not start within 10 s".to_string())?
            .map_err(|e| format!("baseline server: {e}"))?
            .ok_or("baseline server exited before listening")?;
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .ok_or_else(|| format!("unexpected baseline output: {line}"))?
            .to_string();
        Ok(BaselineServer { child, url })
    }

    /// The child's process id (for pinning and its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_size() {
        for size in [200, 268, 300, 1000] {
            let b = answer_body(size);
            assert_eq!(b.len(), size);
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
            assert_eq!(v["active"], true);
        }
        let small = answer_body(40);
        assert_eq!(small.len(), 40);
        let v: serde_json::Value = serde_json::from_slice(&small).unwrap();
        assert_eq!(v["active"], true);
    }
}
