//! What contracts add to every request, with a few clients and with 1 000: the rights of
//! the calling client under the contract in force (`Contracts::client`, called by
//! authentication and again by the introspection decision), cached and rebuilt after a
//! change; and what one amendment costs each node when it applies it from the log
//! (`Contracts::apply`: a copy of the book, the cache cleared).
//!
//! `cargo bench --bench contracts`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};

use latch::app::contracts::{contract_of, Contracts};
use latch::clients::{Client, Clients, Grant};
use latch::contracts::{client_doc, Amendment, Body, Book, Change, Stage};

const NOW_MS: i64 = 1_800_000_000_000;

/// `n` configured clients like the shipped demo's orders-service, the first named so.
fn clients(n: usize) -> Clients {
    Clients::new((0..n).map(|i| {
        let id = if i == 0 {
            "orders-service".to_string()
        } else {
            format!("svc-{i:04}")
        };
        let mut c = Client::new(id.clone(), [0u8; 32]);
        c.grants = vec![Grant::ClientCredentials];
        c.scopes = vec![format!("{id}:read"), format!("{id}:write")];
        c.audiences = vec![format!("https://{id}.example")];
        c
    }))
}

/// Version 2 of `c`'s contract: a new audience in shadow.
fn amendment(c: &Client, version: u64) -> Change {
    let mut contract = contract_of(c);
    contract.audiences.insert(
        format!("https://{}-next-{version}.example", c.id.as_str()),
        Stage::Shadow,
    );
    Change::Amend {
        amendment: Box::new(Amendment {
            doc: client_doc(&c.id),
            version,
            effective_at_ms: NOW_MS - 1000,
            recorded_at_ms: NOW_MS - 1000,
            changelog: "next audience in shadow".into(),
            author: "bench".into(),
            reason: "BENCH".into(),
            rollback_of: None,
            body: Body::Contract(contract),
        }),
    }
}

/// The contracts of `n` clients; with `amended`, each with a recorded version 2.
fn contracts(n: usize, amended: bool) -> Contracts {
    let base = clients(n);
    let contracts = Contracts::new(base.clone(), Book::new(Vec::new()));
    if amended {
        for c in base.iter() {
            contracts.apply(&amendment(c, 2));
        }
    }
    contracts
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("contracts");
    for (n, amended) in [(3, false), (1000, false), (1000, true)] {
        let label = format!("{n} clients{}", if amended { ", amended" } else { "" });
        let k = contracts(n, amended);
        let _ = k.client("orders-service", NOW_MS);
        g.bench_function(BenchmarkId::new("client (cached)", &label), |b| {
            b.iter(|| k.client(black_box("orders-service"), black_box(NOW_MS)))
        });
        // A cancellation of a version that does not exist changes nothing but is applied
        // like any change: the book is copied and every cached client dropped.
        let noop = Change::Cancel {
            doc: client_doc("orders-service"),
            version: 999,
        };
        g.bench_function(BenchmarkId::new("apply one change", &label), |b| {
            b.iter(|| k.apply(black_box(&noop)))
        });
        g.bench_function(
            BenchmarkId::new("client (rebuilt after a change)", &label),
            |b| {
                b.iter(|| {
                    k.apply(&noop);
                    k.client(black_box("orders-service"), black_box(NOW_MS))
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
