use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{EncodingKey, Header};

use super::*;
use crate::keys::{material, Alg, Kek, KeyRecord, KeyRing, KeyState};
use crate::revocation::{RevocationEvent, RevocationKind};
use crate::tokens::cache::VerifiedCache;

const ISS: &str = "https://latch.test";
const NOW_MS: i64 = 1_800_000_000_000;
const NOW: i64 = NOW_MS / 1000;

fn kek() -> Kek {
    Kek::from_bytes(&[9u8; 32]).unwrap()
}

/// A record in `state`, and its private DER for forging tokens in tests.
fn record(alg: Alg, state: KeyState) -> (KeyRecord, Vec<u8>) {
    let g = material::generate(alg).unwrap();
    let kid = material::thumbprint(&g.public_jwk);
    let sealed_private = kek().seal(&kid, &g.private_der).unwrap();
    let r = KeyRecord {
        kid: kid.into(),
        alg,
        state,
        created_at_ms: NOW_MS - 1000,
        activates_at_ms: Some(NOW_MS - 1000),
        retiring_at_ms: None,
        retires_at_ms: None,
        revoked_at_ms: None,
        public_jwk: g.public_jwk,
        sealed_private,
    };
    (r, g.private_der)
}

/// Claims of a plain access token; other modules' tests start from these.
pub(crate) fn claims() -> AccessClaims {
    AccessClaims {
        iss: ISS.into(),
        sub: "alice".into(),
        aud: "https://api".into(),
        exp: NOW + 300,
        iat: NOW,
        nbf: NOW,
        jti: "jti-1".into(),
        client_id: "app".into(),
        scope: "read".into(),
        sid: Some("sid-1".into()),
        act: None,
        username: None,
        rsq: 3,
        rse: EPOCH,
        dcl: Vec::new(),
        djt: Vec::new(),
        cv: 0,
        grant: None,
        status: None,
        cnf: None,
    }
}

const EPOCH: u64 = 0xabc;

fn test_table() -> Table {
    Table::with_epoch(crate::revocation::Retention::default(), EPOCH, 1000)
}

fn verifier<'a>(ring: &'a KeyRing, table: &'a Table) -> Verifier<'a> {
    Verifier {
        ring,
        table,
        issuer: ISS,
        leeway_secs: 30,
        now_ms: NOW_MS,
        cache: None,
    }
}

/// Signs arbitrary claims with a header of our choosing.
fn forge(header: Header, claims: &impl serde::Serialize, key: &EncodingKey) -> String {
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn header(alg: Alg, kid: &str, typ: &str) -> Header {
    let mut h = Header::new(alg.jwt());
    h.kid = Some(kid.into());
    h.typ = Some(typ.into());
    h
}

#[test]
fn every_algorithm_signs_and_verifies() {
    for alg in [Alg::EdDSA, Alg::ES256, Alg::RS256] {
        let (r, _) = record(alg, KeyState::Active);
        let ring = KeyRing::build(1, vec![r], &kek());
        let table = test_table();
        let token = sign(ring.signer().unwrap(), &claims()).unwrap();
        let got = verifier(&ring, &table).decide(&token);
        assert_eq!(got.as_deref(), Ok(&claims()), "{alg:?}");
    }
}

#[test]
fn hostile_and_stale_tokens_are_inactive_with_the_right_reason() {
    let (active, der) = record(Alg::EdDSA, KeyState::Active);
    let (retired, retired_der) = record(Alg::EdDSA, KeyState::Retired);
    let (revoked, revoked_der) = record(Alg::EdDSA, KeyState::Revoked);
    let (next, next_der) = record(Alg::EdDSA, KeyState::Next);
    let (mut retiring_late, late_der) = record(Alg::EdDSA, KeyState::Retiring);
    retiring_late.retires_at_ms = Some(NOW_MS - 1);
    let kid = active.kid.clone();
    let x = active.public_jwk["x"].as_str().unwrap().to_string();
    let ring = KeyRing::build(
        1,
        vec![
            active.clone(),
            retired.clone(),
            revoked.clone(),
            next.clone(),
            retiring_late.clone(),
        ],
        &kek(),
    );
    let table = test_table();
    table.insert(&RevocationEvent {
        seq: 9,
        kind: RevocationKind::Subject,
        value: "mallory".into(),
        revoked_at_ms: NOW_MS,
    });
    let ed = |d: &[u8]| EncodingKey::from_ed_der(d);
    let good = sign(ring.signer().unwrap(), &claims()).unwrap();
    let with = |f: &dyn Fn(&mut AccessClaims)| {
        let mut c = claims();
        f(&mut c);
        forge(header(Alg::EdDSA, &kid, TYP), &c, &ed(&der))
    };
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = {
        let mut c = claims();
        c.sub = "root".into();
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
        format!("{}.{}.{}", parts[0], payload, parts[2])
    };
    let alg_none = {
        let h = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","typ":"at+jwt","kid":"{kid}"}}"#));
        format!("{h}.{}.", parts[1])
    };
    let hs256_with_public_key = {
        let mut h = Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some(kid.to_string());
        h.typ = Some(TYP.into());
        let raw = URL_SAFE_NO_PAD.decode(&x).unwrap();
        forge(h, &claims(), &EncodingKey::from_secret(&raw))
    };
    let es256_header_on_ed_key = {
        let h =
            URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"ES256","typ":"at+jwt","kid":"{kid}"}}"#));
        format!("{h}.{}.{}", parts[1], parts[2])
    };
    let cases: Vec<(&str, String, Reason)> = vec![
        (
            "alg none (no such algorithm to jsonwebtoken)",
            alg_none,
            Reason::Malformed,
        ),
        (
            "HS256 keyed with the public key",
            hs256_with_public_key,
            Reason::WrongAlgorithm,
        ),
        (
            "header alg swapped",
            es256_header_on_ed_key,
            Reason::WrongAlgorithm,
        ),
        ("tampered payload", tampered, Reason::BadSignature),
        (
            "bad base64 in the payload",
            format!("{}.!!!.{}", parts[0], parts[2]),
            Reason::BadSignature,
        ),
        (
            "bad base64 in the header",
            format!("!!!.{}.{}", parts[1], parts[2]),
            Reason::Malformed,
        ),
        ("two parts", "abc.def".into(), Reason::Malformed),
        ("empty", String::new(), Reason::Malformed),
        ("huge", "a".repeat(10_000), Reason::TooLarge),
        (
            "wrong typ",
            forge(header(Alg::EdDSA, &kid, "JWT"), &claims(), &ed(&der)),
            Reason::WrongType,
        ),
        (
            "no kid",
            {
                let mut h = header(Alg::EdDSA, &kid, TYP);
                h.kid = None;
                forge(h, &claims(), &ed(&der))
            },
            Reason::UnknownKey,
        ),
        (
            "unknown kid",
            forge(header(Alg::EdDSA, "nope", TYP), &claims(), &ed(&der)),
            Reason::UnknownKey,
        ),
        (
            "retired kid",
            forge(
                header(Alg::EdDSA, &retired.kid, TYP),
                &claims(),
                &ed(&retired_der),
            ),
            Reason::RetiredKey,
        ),
        (
            "revoked kid",
            forge(
                header(Alg::EdDSA, &revoked.kid, TYP),
                &claims(),
                &ed(&revoked_der),
            ),
            Reason::RevokedKey,
        ),
        (
            "next kid",
            forge(
                header(Alg::EdDSA, &next.kid, TYP),
                &claims(),
                &ed(&next_der),
            ),
            Reason::KeyNotSigning,
        ),
        (
            "retiring past its time",
            forge(
                header(Alg::EdDSA, &retiring_late.kid, TYP),
                &claims(),
                &ed(&late_der),
            ),
            Reason::RetiredKey,
        ),
        (
            "another key's signature",
            forge(header(Alg::EdDSA, &kid, TYP), &claims(), &ed(&next_der)),
            Reason::BadSignature,
        ),
        (
            "expired beyond leeway",
            with(&|c| c.exp = NOW - 30),
            Reason::Expired,
        ),
        (
            "nbf beyond leeway",
            with(&|c| c.nbf = NOW + 31),
            Reason::NotYetValid,
        ),
        (
            "wrong issuer",
            with(&|c| c.iss = "https://evil.test".into()),
            Reason::WrongIssuer,
        ),
        (
            "missing claim",
            forge(
                header(Alg::EdDSA, &kid, TYP),
                &serde_json::json!({"iss": ISS, "sub": "x"}),
                &ed(&der),
            ),
            Reason::Malformed,
        ),
        (
            "revoked subject",
            with(&|c| c.sub = "mallory".into()),
            Reason::Revoked,
        ),
        ("no epoch", with(&|c| c.rse = 0), Reason::StaleEpoch),
        ("stamp ahead", with(&|c| c.rsq = 1001), Reason::StampAhead),
        (
            "unknown epoch",
            with(&|c| c.rse = 0xdef),
            Reason::StampAhead,
        ),
    ];
    let v = verifier(&ring, &table);
    assert!(v.decide(&good).is_ok());
    for (name, token, reason) in cases {
        assert_eq!(v.decide(&token).map(|_| ()), Err(reason), "{name}");
    }
    // Inside the leeway both ways is still active.
    assert!(v.decide(&with(&|c| c.exp = NOW - 29)).is_ok());
    assert!(v.decide(&with(&|c| c.nbf = NOW + 30)).is_ok());
    // The revoked subject's tokens issued after the revocation are active.
    assert!(v
        .decide(&with(&|c| {
            c.sub = "mallory".into();
            c.rsq = 9;
        }))
        .is_ok());
}

#[test]
fn ids_are_random_and_url_safe() {
    let a = random_id();
    assert_eq!(a.len(), 22);
    assert_ne!(a, random_id());
    assert!(a
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
}

#[test]
fn cached_tokens_are_checked_again_for_everything_that_can_change() {
    let (active, _) = record(Alg::EdDSA, KeyState::Active);
    let ring = KeyRing::build(1, vec![active.clone()], &kek());
    let table = test_table();
    let cache = VerifiedCache::new(100);
    let token = sign(ring.signer().unwrap(), &claims()).unwrap();
    let with_cache = |ring, table, now_ms| Verifier {
        cache: Some(&cache),
        now_ms,
        ..verifier(ring, table)
    };
    assert!(with_cache(&ring, &table, NOW_MS).decide(&token).is_ok());
    assert_eq!(cache.len(), 1);
    // A second decision is a hit (nothing new cached) and still active.
    assert!(with_cache(&ring, &table, NOW_MS).decide(&token).is_ok());
    assert_eq!(cache.len(), 1);
    // Time moves past exp + leeway.
    let late = (claims().exp + 30) * 1000;
    assert_eq!(
        with_cache(&ring, &table, late).decide(&token).map(|_| ()),
        Err(Reason::Expired)
    );
    // The key is revoked: a new ring snapshot.
    let mut revoked = active.clone();
    revoked.state = KeyState::Revoked;
    let ring2 = KeyRing::build(2, vec![revoked], &kek());
    assert_eq!(
        with_cache(&ring2, &table, NOW_MS)
            .decide(&token)
            .map(|_| ()),
        Err(Reason::RevokedKey)
    );
    // The key is gone altogether.
    let ring3 = KeyRing::build(3, vec![], &kek());
    assert_eq!(
        with_cache(&ring3, &table, NOW_MS)
            .decide(&token)
            .map(|_| ()),
        Err(Reason::UnknownKey)
    );
    // The session is revoked.
    table.insert(&RevocationEvent {
        seq: 4,
        kind: RevocationKind::Session,
        value: "sid-1".into(),
        revoked_at_ms: NOW_MS,
    });
    assert_eq!(
        with_cache(&ring, &table, NOW_MS).decide(&token).map(|_| ()),
        Err(Reason::Revoked)
    );
    // A token differing in one byte is not a hit.
    let mut tampered = token.clone();
    tampered.pop();
    tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
    assert!(with_cache(&ring, &test_table(), NOW_MS)
        .decide(&tampered)
        .is_err());
}

/// latch's own header names its key without a parse; any other encoding of a header is
/// parsed and held to the same rules; either way the key's algorithm verifies.
#[test]
fn own_headers_skip_the_parse_and_other_headers_are_parsed() {
    let (active, der) = record(Alg::EdDSA, KeyState::Active);
    let (next, _) = record(Alg::EdDSA, KeyState::Next);
    let (_, stranger_der) = record(Alg::EdDSA, KeyState::Active);
    let kid = active.kid.clone();
    let ring = KeyRing::build(1, vec![active, next.clone()], &kek());
    let table = test_table();
    let v = verifier(&ring, &table);
    let own = crate::keys::access_header_b64(Alg::EdDSA, &kid);
    let good = sign(ring.signer().unwrap(), &claims()).unwrap();
    assert!(good.starts_with(&format!("{own}.")));
    assert_eq!(ring.by_header(&own).map(|k| &*k.kid), Some(&*kid));
    assert_eq!(v.decide(&good).as_deref(), Ok(&claims()));

    // The same fields in another order (jsonwebtoken writes `typ` first): not latch's
    // bytes, so parsed; still latch's key, algorithm and type, so active.
    let reordered = forge(
        header(Alg::EdDSA, &kid, TYP),
        &claims(),
        &EncodingKey::from_ed_der(&der),
    );
    assert!(ring
        .by_header(reordered.split('.').next().unwrap())
        .is_none());
    assert_eq!(v.decide(&reordered).as_deref(), Ok(&claims()));

    // latch's exact header for the active key, signed by someone else's key.
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims()).unwrap());
    let input = format!("{own}.{payload}");
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&stranger_der).unwrap();
    let sig = URL_SAFE_NO_PAD.encode(pair.sign(input.as_bytes()).as_ref());
    assert_eq!(
        v.decide(&format!("{input}.{sig}")),
        Err(Reason::BadSignature)
    );
    // A signature that is not base64url, and a fourth part.
    assert_eq!(v.decide(&format!("{input}.!!")), Err(Reason::Malformed));
    assert_eq!(v.decide(&format!("{good}.x")), Err(Reason::Malformed));

    // latch's exact header of a key that does not sign yet: refused by its state.
    let next_header = crate::keys::access_header_b64(Alg::EdDSA, &next.kid);
    assert_eq!(
        v.decide(&format!("{next_header}.{payload}.{sig}")),
        Err(Reason::KeyNotSigning)
    );
}

#[test]
fn cnf_is_one_binding_in_its_rfc_shape() {
    let jkt: Cnf = serde_json::from_str(r#"{"jkt":"abc"}"#).unwrap();
    assert_eq!(jkt, Cnf::Jkt { jkt: "abc".into() });
    assert_eq!(jkt.jkt(), Some("abc"));
    assert_eq!(Cnf::token_type(Some(&jkt)), "DPoP");
    let x5t: Cnf = serde_json::from_str(r#"{"x5t#S256":"def"}"#).unwrap();
    assert_eq!(x5t.x5t_s256(), Some("def"));
    assert_eq!(x5t.jkt(), None);
    assert_eq!(Cnf::token_type(Some(&x5t)), "Bearer");
    assert_eq!(Cnf::token_type(None), "Bearer");
    assert_eq!(
        serde_json::to_string(&x5t).unwrap(),
        r#"{"x5t#S256":"def"}"#
    );
    // Both, neither, or something else: not a binding latch wrote.
    for bad in [
        r#"{"jkt":"abc","x5t#S256":"def"}"#,
        r#"{}"#,
        r#"{"x5t":"def"}"#,
    ] {
        assert!(serde_json::from_str::<Cnf>(bad).is_err(), "{bad}");
    }
}
