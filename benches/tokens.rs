//! Sign per algorithm (latch's own JWS assembly, and jsonwebtoken's `encode` for
//! comparison), verify per algorithm, and the full in-process decision for an active token,
//! first seen (signature checked) and again (from the verified-token cache).
//!
//! `cargo bench --bench tokens`; results and the machine are in docs/PERFORMANCE.md.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use jsonwebtoken::{EncodingKey, Header};

use latch::keys::{material, Alg, Kek, KeyRecord, KeyRing, KeyState};
use latch::revocation::Table;
use latch::revocation::{RevocationEvent, RevocationKind};
use latch::tokens::cache::VerifiedCache;
use latch::tokens::{self, AccessClaims, Verifier};

const NOW_MS: i64 = 1_800_000_000_000;

/// A ring with one active key of `alg`, and that key's private DER.
fn ring(alg: Alg) -> (KeyRing, Vec<u8>) {
    let kek = Kek::from_bytes(&[1u8; 32]).unwrap();
    let g = material::generate(alg).unwrap();
    let kid = material::thumbprint(&g.public_jwk);
    let record = KeyRecord {
        sealed_private: kek.seal(&kid, &g.private_der).unwrap(),
        kid: kid.into(),
        alg,
        state: KeyState::Active,
        created_at_ms: NOW_MS,
        activates_at_ms: Some(NOW_MS),
        retiring_at_ms: None,
        retires_at_ms: None,
        revoked_at_ms: None,
        public_jwk: g.public_jwk,
    };
    (KeyRing::build(1, vec![record], &kek), g.private_der)
}

fn claims() -> AccessClaims {
    let now = NOW_MS / 1000;
    AccessClaims {
        iss: "https://latch.bench".into(),
        sub: "orders-service".into(),
        aud: "https://orders.example".into(),
        exp: now + 300,
        iat: now,
        nbf: now,
        jti: tokens::random_id(),
        client_id: "orders-service".into(),
        scope: "orders:read orders:write".into(),
        sid: None,
        act: None,
        username: None,
        rsq: 42,
        rse: 1,
        dcl: Vec::new(),
        djt: Vec::new(),
        cv: 0,
        grant: None,
        status: None,
        cnf: None,
    }
}

fn bench(c: &mut Criterion) {
    for alg in [Alg::EdDSA, Alg::ES256, Alg::RS256] {
        let (ring, private_der) = ring(alg);
        let table = Table::with_epoch(latch::revocation::Retention::default(), 1, 42);
        // Some unrelated revocations, so the table lookups are not against empty maps.
        for i in 0..10_000u64 {
            table.insert(&RevocationEvent {
                seq: i + 1,
                kind: RevocationKind::Subject,
                value: format!("user-{i}"),
                revoked_at_ms: NOW_MS,
            });
        }
        let signer = ring.signer().unwrap();
        let token = tokens::sign(signer, &claims()).unwrap();
        let verifier = Verifier {
            ring: &ring,
            table: &table,
            issuer: "https://latch.bench",
            leeway_secs: 30,
            now_ms: NOW_MS,
            cache: None,
        };
        let name = alg.as_str();
        c.bench_function(&format!("sign/{name}"), |b| {
            b.iter(|| tokens::sign(signer, black_box(&claims())).unwrap())
        });
        // The same token through jsonwebtoken: `encode` hands ring the DER on every call,
        // which ring parses again. The gap is why `tokens::sign` builds the JWS itself.
        let key = match alg {
            Alg::EdDSA => EncodingKey::from_ed_der(&private_der),
            Alg::ES256 => EncodingKey::from_ec_der(&private_der),
            Alg::RS256 => EncodingKey::from_rsa_der(&private_der),
        };
        let mut header = Header::new(alg.jwt());
        header.typ = Some(tokens::TYP.into());
        header.kid = Some(signer.kid.to_string());
        c.bench_function(&format!("sign_jsonwebtoken/{name}"), |b| {
            b.iter(|| jsonwebtoken::encode(&header, black_box(&claims()), &key).unwrap())
        });
        // The signature check alone (what issue 15's introspect-cold target is measured
        // against): the key's algorithm over the signing input, nothing else.
        let key = ring.get(&signer.kid).unwrap();
        let (input, signature) = token.rsplit_once('.').unwrap();
        c.bench_function(&format!("verify/{name}"), |b| {
            b.iter(|| {
                jsonwebtoken::crypto::verify(
                    black_box(signature),
                    black_box(input.as_bytes()),
                    &key.decoding,
                    key.alg.jwt(),
                )
                .unwrap()
            })
        });
        c.bench_function(&format!("decide/{name}"), |b| {
            b.iter(|| verifier.decide(black_box(&token)).unwrap())
        });
        // The hot path: the same token again, from the verified-token cache.
        let cache = VerifiedCache::new(1024);
        let cached = Verifier {
            cache: Some(&cache),
            ..verifier
        };
        cached.decide(&token).unwrap();
        c.bench_function(&format!("decide_cached/{name}"), |b| {
            b.iter(|| cached.decide(black_box(&token)).unwrap())
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
