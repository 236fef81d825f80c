//! What one Redis (one shard, one slot) sustains through latch's store, without HTTP:
//! docs/SCALING.md. Closed loop, `--concurrency` tasks for `--seconds`, one operation kind:
//!
//! - `revoke`: `Store::append_revocation` (the `{latch}` slot: counter, log, audit,
//!   announcement; with `--acks N` also `WAIT N` and the ack script);
//! - `refresh`: `Store::rotate_refresh` on pre-opened sessions, each task walking its own
//!   chains (per-family slots: spread over every master of a Cluster);
//! - `open`: `Store::claim_once` + `Store::open_session` (a replay record, an audit record
//!   in `{latch}`, a refresh record in its family's slot).
//!
//! ```text
//! cargo run --release --example store_throughput -- URL OP [--concurrency 32] [--seconds 5] [--acks 0] [--password P]
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use latch::audit::NewAudit;
use latch::revocation::{NewRevocation, RevocationKind};
use latch::sessions::{self, RefreshRecord};
use latch::store::redis::topology::{Credentials, Options};
use latch::store::redis::{RedisStore, Replication};
use latch::store::Store;
use latch::time::now_ms;

fn record(sid: &str) -> RefreshRecord {
    let now = now_ms();
    RefreshRecord {
        sid: sid.into(),
        sub: format!("user-{sid}"),
        client_id: "idp-hook".into(),
        scope: "profile orders:read".into(),
        aud: "https://orders.example".into(),
        username: Some("someone@example.com".into()),
        rsq: 1,
        rse: 0x00c0_ffee_0000_0001,
        issued_at_ms: now,
        expires_at_ms: now + 30 * 86_400_000,
        jkt: None,
        x5t_s256: None,
        mac: Some("x".repeat(43)),
    }
}

fn audit(action: &str) -> NewAudit {
    NewAudit {
        actor: "bench".into(),
        action: action.into(),
        target: "session:bench".into(),
        reason: "throughput".into(),
        request_id: "req-bench".into(),
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str, default: &str| -> String {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
            .unwrap_or_else(|| default.to_string())
    };
    let (url, op) = match (args.first(), args.get(1)) {
        (Some(u), Some(o)) => (u.clone(), o.clone()),
        _ => {
            eprintln!("usage: store_throughput URL revoke|refresh|open [--concurrency N] [--seconds S] [--acks N] [--password P]");
            std::process::exit(2);
        }
    };
    let concurrency: usize = flag("--concurrency", "32").parse().expect("--concurrency");
    let seconds: u64 = flag("--seconds", "5").parse().expect("--seconds");
    let acks: u32 = flag("--acks", "0").parse().expect("--acks");
    let password = flag("--password", "");
    let options = Options {
        redis: Credentials {
            username: None,
            password: (!password.is_empty()).then_some(password),
        },
        ..Options::default()
    };
    let store: Arc<RedisStore> = Arc::new(
        RedisStore::connect(
            &url,
            options,
            Duration::from_secs(5),
            Replication {
                min_acks: acks,
                timeout: Duration::from_millis(500),
            },
        )
        .await
        .expect("connect"),
    );
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let (store, done, failed, op) = (store.clone(), done.clone(), failed.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            // `refresh`: this task's chain, opened first (not counted).
            let mut token = sessions::new_refresh_token();
            let sid = format!("bench-{t}");
            if op == "refresh" {
                store
                    .open_session(sessions::store_key(&token), record(&sid), audit("open"))
                    .await
                    .expect("open a session");
            }
            while Instant::now() < until {
                i += 1;
                let ok = match op.as_str() {
                    "revoke" => store
                        .append_revocation(NewRevocation {
                            kind: RevocationKind::Token,
                            value: format!("jti-{t}-{i}"),
                            reason: "throughput".into(),
                            actor: "bench".into(),
                            request_id: "req-bench".into(),
                        })
                        .await
                        .is_ok(),
                    "refresh" => {
                        let next = sessions::next_refresh_token(&token);
                        let r = store
                            .rotate_refresh(
                                sessions::store_key(&token),
                                sessions::store_key(&next),
                                record(&sid),
                            )
                            .await;
                        token = next;
                        matches!(r, Ok(sessions::Rotation::Rotated))
                    }
                    "open" => {
                        let claim = sessions::hash(&format!("iss\njti-{t}-{i}"));
                        let fresh = sessions::new_refresh_token();
                        store
                            .claim_once(claim, now_ms() + 600_000)
                            .await
                            .is_ok_and(|c| c)
                            && store
                                .open_session(
                                    sessions::store_key(&fresh),
                                    record(&format!("{sid}-{i}")),
                                    audit("session_create"),
                                )
                                .await
                                .is_ok()
                    }
                    other => panic!("unknown operation {other}"),
                };
                if ok {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    println!(
        "op={op} url={url} concurrency={concurrency} acks={acks} seconds={elapsed:.2} ok={n} failed={} per_second={:.0}",
        failed.load(Ordering::Relaxed),
        n as f64 / elapsed
    );
}
