//! Start-up to ready with N live revocations in the embedded store's log: seeds a data
//! directory, then starts `latch serve` on it several times and times each start from
//! the spawn to the first `200` from `/readyz` (and to the "listening" line).
//! docs/PERFORMANCE.md, "Revocation table memory and start-up".
//!
//! ```text
//! cargo build --release --bin latch --example startup_ready
//! ./target/release/examples/startup_ready [N=1000000] [RUNS=5] [LATCH=target/release/latch]
//! ```
//!
//! Seeding: the store creates the directory (schema, epoch, via `EmbeddedStore::open`),
//! then the rows go into its `revocations` table in one SQLite transaction (a million
//! `append_revocation` calls would each wait for an fsync). Nine in ten are token (jti)
//! revocations, one in ten session revocations, all revoked within the last minute, so
//! every one is live and loaded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use latch::store::embedded::EmbeddedStore;
use latch::time::now_ms;

fn seed(dir: &Path, n: u64) {
    drop(EmbeddedStore::open(dir).expect("open the store"));
    let mut conn = rusqlite::Connection::open(dir.join("latch.db")).expect("open latch.db");
    let tx = conn.transaction().expect("begin");
    {
        let mut stmt = tx
            .prepare(
                "INSERT INTO revocations (seq, kind, value, revoked_at_ms, reason, actor)
                 VALUES (?1, ?2, ?3, ?4, 'seeded', 'startup_ready')",
            )
            .expect("prepare");
        let now = now_ms();
        for i in 0..n {
            let (kind, value) = if i % 10 == 9 {
                ("session", format!("sid-{i:0>18}"))
            } else {
                ("token", format!("{i:0>22}"))
            };
            let at = now - 60_000 + (i as i64 * 60_000 / n as i64);
            stmt.execute(rusqlite::params![i as i64 + 1, kind, value, at])
                .expect("insert");
        }
    }
    tx.commit().expect("commit");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `GET path` on 127.0.0.1:port: the status line and body, if it answered.
fn get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    Some(answer)
}

fn ready(port: u16) -> bool {
    get(port, "/readyz").is_some_and(|a| a.starts_with("HTTP/1.1 200"))
}

/// The node's `latch_revocation_table_entries` gauge, once the follower has set it.
fn table_entries(metrics_port: u16) -> Option<u64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let n = get(metrics_port, "/metrics").and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("latch_revocation_table_entries "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        });
        if let Some(n) = n.filter(|n| *n > 0.0) {
            return Some(n as u64);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// One start: (to the "listening" line, to ready, the table's entries once ready).
fn start(latch: &Path, dir: &Path) -> (Duration, Duration, Option<u64>) {
    let (port, metrics_port) = (free_port(), free_port());
    let started = Instant::now();
    let mut child = Command::new(latch)
        .arg("serve")
        .env("LATCH_STORE__PATH", dir)
        .env("LATCH_LISTEN", format!("127.0.0.1:{port}"))
        .env("LATCH_METRICS__LISTEN", format!("127.0.0.1:{metrics_port}"))
        .env("LATCH_ISSUER", "http://latch.startup")
        .env("LATCH_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn latch (run from the repository: it reads config/latch.toml)");
    let stdout = child.stdout.take().expect("piped stdout");
    let listening = std::thread::spawn(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).ok();
        started.elapsed()
    });
    let deadline = started + Duration::from_secs(120);
    while !ready(port) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("latch exited before it was ready: {status}");
        }
        assert!(Instant::now() < deadline, "latch was not ready in 120 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    let to_ready = started.elapsed();
    let entries = table_entries(metrics_port);
    child.kill().expect("stop latch");
    child.wait().expect("reap latch");
    (listening.join().expect("reader"), to_ready, entries)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().map_or(1_000_000, |a| a.parse().expect("N"));
    let runs: usize = args.next().map_or(5, |a| a.parse().expect("RUNS"));
    let latch = PathBuf::from(args.next().unwrap_or("target/release/latch".into()));
    let dir = std::env::temp_dir().join(format!("latch-startup-{}", std::process::id()));
    let t = Instant::now();
    seed(&dir, n);
    println!(
        "seeded {n} revocations in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let mut times: Vec<f64> = Vec::new();
    for run in 1..=runs {
        let (listening, ready, entries) = start(&latch, &dir);
        println!(
            "run {run}: listening after {} ms, ready after {} ms, table entries {entries:?}",
            listening.as_millis(),
            ready.as_millis()
        );
        times.push(ready.as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{n} revocations: ready after {:.0} ms (median of {runs}; min {:.0}, max {:.0})",
        times[runs / 2],
        times[0],
        times[runs - 1]
    );
    std::fs::remove_dir_all(&dir).ok();
}
