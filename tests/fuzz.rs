//! Fuzz harnesses driven by `cargo test` (stable Rust, no cargo-fuzz): each target replays
//! its stored seed corpus (`fuzz/corpus/<target>/`), then mutates it for a bounded number
//! of iterations with a seeded generator, so a run is deterministic and a failure can be
//! replayed from the seed it prints.
//!
//! - `token`: compact JWS text → `tokens::Verifier::decide` (with and without the verified
//!   cache) never panics, and nothing but the one token latch signed is active.
//! - `form`: a form body and an `Authorization` value → `http::request::Form::parse` and
//!   client authentication never panic, refuse with 400 or 401 only, and accept only the
//!   configured secret.
//! - `config`: TOML text and `LATCH_*` overrides → `Config::from_toml` (and `Config::load`
//!   for the corpus) returns a `ConfigError` naming a key, never panics; a config it
//!   accepts builds its domain values without panicking.
//!
//! Bounds: `LATCH_FUZZ_ITERS` mutants per target (default 2000, a few seconds each in a
//! debug build), `LATCH_FUZZ_SEED` (default 1). An input that fails is written to
//! `target/tmp/fuzz-failures/<target>-<iteration>` and shown (escaped) in the panic.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use latch::config::Config;
use latch::http::error::ApiError;
use latch::http::request::{fuzzing, Form};
use latch::keys::{material, Alg, Kek, KeyRecord, KeyRing, KeyState};
use latch::revocation::{Retention, Table};
use latch::tokens::cache::VerifiedCache;
use latch::tokens::{AccessClaims, Verifier};

const ISS: &str = "https://latch.fuzz";
const NOW_MS: i64 = 1_800_000_000_000;
const EPOCH: u64 = 0xfeed;

/// Configured clients of the `form` target (the demo config's): (id, secret).
const SECRETS: [(&str, &str); 2] = [
    ("admin", "demo-admin-secret-0123456789abcdef0123456789a"),
    (
        "orders-service",
        "demo-orders-secret-0123456789abcdef0123456789",
    ),
];

// === the mutator ===

/// Byte-level mutations of corpus entries: bit flips, interesting bytes, insertions and
/// deletions, repeated chunks, dictionary tokens and splices of two entries.
struct Mutator {
    rng: fastrand::Rng,
    dict: Vec<Vec<u8>>,
}

impl Mutator {
    fn new(seed: u64, dict: &[&[u8]]) -> Mutator {
        Mutator {
            rng: fastrand::Rng::with_seed(seed),
            dict: dict.iter().map(|d| d.to_vec()).collect(),
        }
    }

    fn mutate(&mut self, corpus: &[Vec<u8>]) -> Vec<u8> {
        let mut data = corpus[self.rng.usize(..corpus.len())].clone();
        for _ in 0..self.rng.usize(1..=4) {
            self.step(&mut data, corpus);
        }
        data
    }

    fn step(&mut self, data: &mut Vec<u8>, corpus: &[Vec<u8>]) {
        const INTERESTING: &[u8] = b"\0\xff\x7f.=&%+:;\"'[]{}\\\n \t-_0123456789";
        let at = |rng: &mut fastrand::Rng, len: usize| rng.usize(..=len);
        match self.rng.u8(..9) {
            0 if !data.is_empty() => {
                let i = self.rng.usize(..data.len());
                data[i] ^= 1 << self.rng.u8(..8);
            }
            1 if !data.is_empty() => {
                let i = self.rng.usize(..data.len());
                data[i] = INTERESTING[self.rng.usize(..INTERESTING.len())];
            }
            2 => {
                let i = at(&mut self.rng, data.len());
                data.insert(i, self.rng.u8(..));
            }
            3 if !data.is_empty() => {
                let i = self.rng.usize(..data.len());
                let n = self.rng.usize(1..=(data.len() - i).min(16));
                data.drain(i..i + n);
            }
            4 if !data.is_empty() => {
                // Repeat a chunk: long segments, repeated parameters, nested tables.
                let i = self.rng.usize(..data.len());
                let n = self.rng.usize(1..=(data.len() - i).min(64));
                let chunk = data[i..i + n].to_vec();
                for _ in 0..self.rng.usize(1..=8) {
                    data.splice(i..i, chunk.iter().copied());
                }
            }
            5 | 6 if !self.dict.is_empty() => {
                let word = self.dict[self.rng.usize(..self.dict.len())].clone();
                let i = at(&mut self.rng, data.len());
                data.splice(i..i, word);
            }
            7 => {
                let other = &corpus[self.rng.usize(..corpus.len())];
                let cut = at(&mut self.rng, data.len());
                let from = at(&mut self.rng, other.len());
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            _ => {
                let i = at(&mut self.rng, data.len());
                data.truncate(i);
            }
        }
    }
}

fn iterations() -> usize {
    std::env::var("LATCH_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

fn seed() -> u64 {
    std::env::var("LATCH_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// The stored corpus of `target`, in file-name order.
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    let entries: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(!entries.is_empty(), "empty corpus {}", dir.display());
    entries
}

/// Replays `seeds`, then checks `iterations()` mutants of them; a panic in `check` (a bug
/// found, or a failed assertion) is reported with the input that caused it.
fn fuzz(target: &str, seeds: Vec<Vec<u8>>, dict: &[&[u8]], check: impl Fn(&[u8])) -> usize {
    let seed = seed();
    let mut mutator = Mutator::new(seed, dict);
    let replay = seeds.len();
    let total = replay + iterations();
    for i in 0..total {
        let input = if i < replay {
            seeds[i].clone()
        } else {
            mutator.mutate(&seeds)
        };
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(&input))) {
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join(format!("{target}-{i}"));
            std::fs::write(&file, &input).unwrap();
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let shown: String = input.escape_ascii().to_string().chars().take(400).collect();
            panic!(
                "fuzz target {target}, LATCH_FUZZ_SEED={seed}, input {i} \
                 ({}): {what}\ninput: {shown}",
                file.display()
            );
        }
    }
    eprintln!(
        "fuzz target {target}: {replay} stored inputs and {} mutants, seed {seed}",
        total - replay
    );
    total
}

// === token ===

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A key ring of one active Ed25519 key, and its kid.
fn ring() -> (KeyRing, String) {
    let kek = Kek::from_bytes(&[7u8; 32]).unwrap();
    let g = material::generate(Alg::EdDSA).unwrap();
    let kid = material::thumbprint(&g.public_jwk);
    let record = KeyRecord {
        kid: kid.clone().into(),
        alg: Alg::EdDSA,
        state: KeyState::Active,
        created_at_ms: NOW_MS - 1000,
        activates_at_ms: Some(NOW_MS - 1000),
        retiring_at_ms: None,
        retires_at_ms: None,
        revoked_at_ms: None,
        sealed_private: kek.seal(&kid, &g.private_der).unwrap(),
        public_jwk: g.public_jwk,
    };
    (KeyRing::build(1, vec![record], &kek), kid)
}

fn claims() -> AccessClaims {
    let now = NOW_MS / 1000;
    serde_json::from_value(serde_json::json!({
        "iss": ISS, "sub": "alice", "aud": "https://api", "exp": now + 300, "iat": now,
        "nbf": now, "jti": "jti-1", "client_id": "app", "scope": "read", "rsq": 3, "rse": format!("{EPOCH:016x}"),
    }))
    .expect("claims")
}

#[test]
fn token_decisions_never_panic_and_only_latchs_token_is_active() {
    let (ring, kid) = ring();
    let table = Table::with_epoch(Retention::default(), EPOCH, 1000);
    let cache = VerifiedCache::new(64);
    let verifier = |cache| Verifier {
        ring: &ring,
        table: &table,
        issuer: ISS,
        leeway_secs: 30,
        now_ms: NOW_MS,
        cache,
    };
    let signed = latch::tokens::sign(ring.signer().expect("signer"), &claims()).unwrap();
    // The harness can tell active from inactive: latch's own token is active.
    assert!(
        verifier(None).decide(&signed).is_ok(),
        "a token latch signed"
    );

    // Seeds made at run time with the real kid: the classic forgeries and latch's token.
    let payload = b64(serde_json::to_string(&claims()).unwrap().as_bytes());
    let header = |alg: &str, typ: &str| {
        b64(format!(r#"{{"alg":"{alg}","kid":"{kid}","typ":"{typ}"}}"#).as_bytes())
    };
    let unsigned = format!("{}.{payload}.", header("none", "at+jwt"));
    let hs_input = format!("{}.{payload}", header("HS256", "at+jwt"));
    let jwk = serde_json::to_vec(&ring.listing()).unwrap();
    let mac = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &jwk),
        hs_input.as_bytes(),
    );
    let confused = format!("{hs_input}.{}", b64(mac.as_ref()));
    let untyped = format!(
        "{}.{payload}.{}",
        header("EdDSA", "JWT"),
        signed.rsplit('.').next().unwrap()
    );
    let mut seeds = corpus("token");
    seeds.extend([signed.clone(), unsigned, confused, untyped].map(String::into_bytes));
    let dict: &[&[u8]] = &[
        b".",
        b"..",
        b"eyJ",
        b"e30",
        b"=",
        b"%",
        b"\"",
        kid.as_bytes(),
    ];

    fuzz("token", seeds, dict, |input| {
        let text = String::from_utf8_lossy(input);
        for cached in [None, Some(&cache)] {
            if let Ok(claims) = verifier(cached).decide(&text) {
                assert_eq!(
                    text, signed,
                    "active, yet not the token latch signed: {claims:?}"
                );
            }
        }
    });
}

// === form ===

/// A corpus entry: the `Authorization` value on the first line (none when empty), the
/// form body after it.
fn split_auth(input: &[u8]) -> (Option<&[u8]>, &[u8]) {
    match input.iter().position(|&b| b == b'\n') {
        Some(0) => (None, &input[1..]),
        Some(i) => (Some(&input[..i]), &input[i + 1..]),
        None => (None, input),
    }
}

/// `+` as space, then percent-decoding: what latch does to form components.
fn form_decoded(bytes: &[u8]) -> Vec<u8> {
    let plus: Vec<u8> = bytes
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    percent_encoding::percent_decode(&plus).collect()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn form_and_client_authentication_never_panic_and_refuse_clearly() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/latch.toml"))
            .unwrap();
    let clients = Config::from_toml(&text, Vec::new())
        .expect("demo config")
        .clients();
    let mut seeds = corpus("form");
    for (id, secret) in SECRETS {
        let basic = STANDARD.encode(format!("{id}:{secret}"));
        seeds.push(
            format!("Basic {basic}\ngrant_type=client_credentials&scope=orders%3Aread")
                .into_bytes(),
        );
        seeds.push(format!("\nclient_id={id}&client_secret={secret}&token=x").into_bytes());
    }
    let dict: &[&[u8]] = &[
        b"&",
        b"=",
        b"%",
        b"%C3%A9",
        b"%FF",
        b"+",
        b"client_id=",
        b"client_secret=",
        b"Basic ",
        b"basic ",
        b"token=",
        b"admin",
        b"orders-service",
        b"\n",
    ];

    let accepted = std::cell::Cell::new(0usize);
    fuzz("form", seeds, dict, |input| {
        let (authorization, body) = split_auth(input);
        let form = match Form::parse(body) {
            Ok(form) => Some(form),
            Err(ApiError::InvalidRequest(_)) => None,
            Err(other) => panic!("form refused with {other:?}"),
        };
        match fuzzing::client_authentication(&clients, authorization, form.as_ref()) {
            Ok((client, _method)) => {
                accepted.set(accepted.get() + 1);
                let secret = SECRETS
                    .iter()
                    .find(|(id, _)| *id == client.id.as_str())
                    .map(|(_, s)| *s)
                    .unwrap_or_else(|| panic!("authenticated as {}", client.id.as_str()));
                let in_header = authorization
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| h.trim().split_once(' '))
                    .and_then(|(_, b)| STANDARD.decode(b.trim()).ok())
                    .is_some_and(|raw| {
                        contains(&raw, secret) || contains(&form_decoded(&raw), secret)
                    });
                assert!(
                    in_header || contains(&form_decoded(body), secret),
                    "authenticated as {} without its secret",
                    client.id.as_str()
                );
            }
            Err(ApiError::InvalidClient | ApiError::InvalidRequest(_)) => {}
            Err(other) => panic!("client authentication refused with {other:?}"),
        }
    });
    // The demo seeds authenticate: the harness sees acceptance as well as refusal.
    assert!(
        accepted.get() >= SECRETS.len() * 2,
        "accepted {}",
        accepted.get()
    );
}

// === config ===

/// Overrides tried with every config input, drawn by the input's length.
const OVERRIDES: &[(&str, &str)] = &[
    ("LATCH_ISSUER", "http://latch.test"),
    ("LATCH_LISTEN", "127.0.0.1:0"),
    ("LATCH_LIMITS__TOKEN_RATE", "off"),
    ("LATCH_LIMITS__TOKEN_RATE", "0/s"),
    ("LATCH_STORE__KIND", "redis"),
    ("LATCH_STORE__REDIS_URL", "redis+sentinel://:x@[::1]:1,/"),
    ("LATCH_CLIENTS__0__ROLES", "[\"admin\"]"),
    ("LATCH_CLIENTS__99__ID", "x"),
    ("LATCH_TOKENS__ACCESS_TTL", "99999999999999999999s"),
    ("LATCH_KEYS__ALGORITHM", "none"),
    ("LATCH___", "1"),
    ("LATCH_LIMITS__MAX_BODY_BYTES", "-1"),
    ("LATCH_NODE__HEARTBEAT", "0s"),
    ("LATCH_INTROSPECTION__BATCH_MAX", "18446744073709551616"),
];

fn check_config(config: &Config) {
    let _ = config.clients();
    let _ = config.rate_limits();
    let _ = config.key_policy();
    let _ = config.store.redis_options();
    let _ = config.node_ttl();
    let _ = config.jwks_max_age();
    let _ = config.revocation_retention();
    let _ = config.has_demo_secret();
}

#[test]
fn config_loading_returns_config_errors_never_panics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seeds = corpus("config");
    seeds.push(std::fs::read(root.join("config/latch.toml")).unwrap());
    // Config::load (file → env overlay → validate) for every stored input.
    let dir = tempfile::tempdir().unwrap();
    for (i, seed) in seeds.iter().enumerate() {
        let path = dir.path().join(format!("{i}.toml"));
        std::fs::write(&path, seed).unwrap();
        if let Ok(config) = Config::load(&path) {
            check_config(&config);
        }
    }
    let dict: &[&[u8]] = &[
        b"=",
        b"\"",
        b"[",
        b"]",
        b"[[clients]]\n",
        b"[store]\n",
        b"[limits]\n",
        b"0",
        b"-1",
        b"18446744073709551615",
        b"1h",
        b"0s",
        b"\"off\"",
        b"\"redis\"",
        b"true",
        b"\n",
        b"{}",
        b"\"1/s\"",
        b"[\"admin\"]",
        b"1e400",
        b"\"\xc3\xa9\"",
    ];
    let accepted = std::cell::Cell::new(0usize);
    fuzz("config", seeds, dict, |input| {
        let text = String::from_utf8_lossy(input);
        let (name, value) = OVERRIDES[input.len() % OVERRIDES.len()];
        for env in [Vec::new(), vec![(name.to_string(), value.to_string())]] {
            match Config::from_toml(&text, env) {
                Ok(config) => {
                    accepted.set(accepted.get() + 1);
                    check_config(&config);
                }
                Err(e) => assert!(!e.key.is_empty() && !e.reason.is_empty(), "{e:?}"),
            }
        }
    });
    assert!(accepted.get() > 0, "no input was a valid config");
}
