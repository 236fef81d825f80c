//! The revocation table at scale: resident memory for N token revocations, and the cost
//! of a look-up (`Table::is_revoked`) that hits and one that misses, with N entries held.
//! docs/PERFORMANCE.md, "Revocation table memory and start-up".
//!
//! ```text
//! cargo run --release --example table_memory -- [N=10000000]
//! ```
//!
//! The values are 22-character jtis (latch's shape), as in `benches/table.rs`. Resident
//! memory is `VmRSS` from `/proc/self/status` before and after filling the table. Look-ups
//! are timed two ways, each the median of 5 rounds of 2 M calls: one fixed stamp (what
//! the criterion bench measures: everything in cache) and stamps cycling through 1 M
//! different jtis in random order (each look-up a cache miss, as under real traffic).

use std::hint::black_box;
use std::time::Instant;

use latch::revocation::{Retention, RevocationEvent, RevocationKind, Stamp, Table};

const NOW_MS: i64 = 1_800_000_000_000;
const CALLS: usize = 2_000_000;
const ROUNDS: usize = 5;

/// Resident set size of this process, in KiB (Linux).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse().ok())
        })
        .unwrap_or(0)
}

fn jti(i: u64) -> String {
    format!("{i:0>22}")
}

/// xorshift64*: a fixed, reproducible order.
fn shuffled(n: u64, count: usize, mut x: u64) -> Vec<u64> {
    (0..count)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        })
        .collect()
}

/// Median ns per call of `f(i)` for i in 0..CALLS, over ROUNDS rounds.
fn time(mut f: impl FnMut(usize) -> bool) -> f64 {
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            for i in 0..CALLS {
                black_box(f(i));
            }
            start.elapsed().as_nanos() as f64 / CALLS as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}

fn stamp(jti: &str) -> Stamp<'_> {
    Stamp {
        jti,
        sid: Some("some-session-id-000000"),
        sub: "alice",
        client_id: "orders-service",
        rsq: 0,
        rse: 1,
        chain_clients: &[],
        chain_jtis: &[],
    }
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("N: a number of entries"))
        .unwrap_or(10_000_000);
    let before = rss_kib();
    let t = Table::with_epoch(Retention::default(), 1, n);
    let start = Instant::now();
    for i in 0..n {
        t.insert(&RevocationEvent {
            seq: i + 1,
            kind: RevocationKind::Token,
            value: jti(i),
            revoked_at_ms: NOW_MS,
        });
    }
    let fill = start.elapsed();
    let after = rss_kib();
    assert_eq!(t.len() as u64, n);
    let mib = (after - before) as f64 / 1024.0;
    println!(
        "{n} entries: {mib:.0} MiB resident for the entries ({:.1} B each), {:.0} MiB in all; filled in {:.2} s ({:.0} ns/insert)",
        (after - before) as f64 * 1024.0 / n as f64,
        after as f64 / 1024.0,
        fill.as_secs_f64(),
        fill.as_nanos() as f64 / n as f64
    );

    let miss = stamp("not-revoked-jti-000000");
    let hit = stamp("0000000000000000000042");
    let fixed_miss = time(|_| t.is_revoked(black_box(&miss)));
    let fixed_hit = time(|_| t.is_revoked(black_box(&hit)));
    let keys = 1_000_000;
    let hits: Vec<String> = shuffled(n, keys, 0x9e37_79b9_7f4a_7c15)
        .into_iter()
        .map(jti)
        .collect();
    // Same shape, never inserted: 22 characters starting with 'x'.
    let misses: Vec<String> = shuffled(u64::MAX, keys, 0x2545_f491_4f6c_dd1d)
        .into_iter()
        .map(|i| format!("x{:0>21}", i % 10u64.pow(21)))
        .collect();
    let random_hit = time(|i| t.is_revoked(&stamp(&hits[i % keys])));
    let random_miss = time(|i| !t.is_revoked(&stamp(&misses[i % keys])));
    assert!(t.is_revoked(&stamp(&hits[0])));
    assert!(!t.is_revoked(&stamp(&misses[0])));
    println!(
        "is_revoked ns/op: fixed miss {fixed_miss:.1}, fixed hit {fixed_hit:.1}, random miss {random_miss:.1}, random hit {random_hit:.1}"
    );
}
