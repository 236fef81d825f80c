//! The session-version table at scale: the revocation check and applying one event with
//! 1 M and 10 M entries, and the resident memory those entries take.
//!
//! `cargo bench --bench table`. Under `cargo test` (no `--bench` flag) the tables are
//! 10 000 entries, so the smoke run stays quick.

use criterion::{black_box, criterion_group, criterion_main, Criterion};

use latch::revocation::{Retention, Stamp, Table};
use latch::revocation::{RevocationEvent, RevocationKind};

const NOW_MS: i64 = 1_800_000_000_000;

fn sizes() -> Vec<usize> {
    if std::env::args().any(|a| a == "--bench") {
        vec![1_000_000, 10_000_000]
    } else {
        vec![10_000]
    }
}

/// Resident set size of this process, in MiB (Linux).
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// A table of `n` token (jti) revocations, as a busy cluster would hold.
fn table(n: usize) -> Table {
    let t = Table::with_epoch(
        Retention {
            token_ms: 3_600_000,
            session_ms: 3_600_000,
        },
        1,
        n as u64,
    );
    for i in 0..n {
        t.insert(&RevocationEvent {
            seq: i as u64 + 1,
            kind: RevocationKind::Token,
            // The shape of latch's jtis: 22 base64url characters.
            value: format!("{i:0>22}"),
            revoked_at_ms: NOW_MS,
        });
    }
    t
}

fn bench(c: &mut Criterion) {
    for n in sizes() {
        let before = rss_mib();
        let t = table(n);
        let after = rss_mib();
        eprintln!(
            "table with {n} entries: {:.0} MiB resident for the entries ({:.0} bytes each), {:.0} MiB in all",
            after - before,
            (after - before) * 1024.0 * 1024.0 / n as f64,
            after
        );
        let miss = Stamp {
            jti: "not-revoked-jti-000000",
            sid: Some("some-session-id-000000"),
            sub: "alice",
            client_id: "orders-service",
            rsq: 0,
            rse: 1,
            chain_clients: &[],
            chain_jtis: &[],
        };
        let hit = Stamp {
            jti: "0000000000000000000042",
            ..miss
        };
        c.bench_function(&format!("table/is_revoked/miss/{n}"), |b| {
            b.iter(|| black_box(t.is_revoked(black_box(&miss))))
        });
        c.bench_function(&format!("table/is_revoked/hit/{n}"), |b| {
            b.iter(|| black_box(t.is_revoked(black_box(&hit))))
        });
        let mut seq = n as u64;
        c.bench_function(&format!("table/apply_one_event/{n}"), |b| {
            b.iter(|| {
                seq += 1;
                t.insert(black_box(&RevocationEvent {
                    seq,
                    kind: RevocationKind::Subject,
                    value: "bench-subject".into(),
                    revoked_at_ms: NOW_MS,
                }));
                t.set_applied(seq);
            })
        });
        drop(t);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
