//! `private_key_jwt` client authentication (RFC 7523 §2.2, RFC 7521 §4.2, OpenID Connect
//! Core §9): a JWT the client signs with a key whose public half it registered. Pure: the
//! clock is passed in, and the replay check of `jti` is the caller's (it needs the store).

use std::collections::HashMap;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::{Client, Clients};

/// The only `client_assertion_type` latch accepts.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The method's name in contracts and metadata.
pub const PRIVATE_KEY_JWT: &str = "private_key_jwt";

/// Algorithms a client assertion may be signed with (asymmetric only: an HMAC "signed"
/// with a public key proves nothing).
pub const ALGORITHMS: [&str; 3] = ["EdDSA", "ES256", "RS256"];

/// Longest `jti` accepted, in bytes.
const MAX_JTI: usize = 256;

/// A client's registered public keys, by kid (a key without `kid` is `#<index>`).
#[derive(Clone)]
pub struct ClientKeys {
    by_kid: Arc<HashMap<String, (Algorithm, DecodingKey)>>,
}

impl std::fmt::Debug for ClientKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<&String> = self.by_kid.keys().collect();
        kids.sort();
        f.debug_struct("ClientKeys").field("kids", &kids).finish()
    }
}

impl ClientKeys {
    /// Parses a JWKS (EdDSA/Ed25519, ES256/P-256 and RS256 keys only). The error says why.
    pub fn parse(jwks: &str) -> Result<ClientKeys, String> {
        let by_kid = crate::sessions::trusted::parse_jwks(jwks)?;
        Ok(ClientKeys {
            by_kid: Arc::new(by_kid),
        })
    }

    fn key(&self, kid: Option<&str>) -> Result<&(Algorithm, DecodingKey), &'static str> {
        match kid {
            Some(kid) => self.by_kid.get(kid).ok_or("unknown key"),
            // Without a kid, only a client with a single key is unambiguous.
            None if self.by_kid.len() == 1 => Ok(self.by_kid.values().next().expect("one key")),
            None => Err("assertion has no kid"),
        }
    }
}

/// What the server expects of every assertion.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Accepted `aud` values: the token endpoint URL and the issuer (OpenID Connect Core
    /// §9 names the token endpoint; RFC 7523 §3 allows the issuer).
    pub audiences: Vec<String>,
    /// Longest accepted lifetime: `exp − iat`, or `exp − now` without `iat`.
    pub max_lifetime_secs: i64,
    pub leeway_secs: i64,
}

/// A verified assertion: its client and what the replay record needs.
#[derive(Debug, Clone)]
pub struct Verified {
    pub client: Arc<Client>,
    /// The key of its replay record (client id and `jti`, hashed by the caller).
    pub jti: String,
    /// Until when (Unix ms) the replay record must be kept: as long as it could be
    /// accepted (`exp` plus leeway, rounded up).
    pub until_ms: i64,
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    exp: i64,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    jti: Option<String>,
}

/// Checks a client assertion: the client it names (`sub`, which must equal `iss` and,
/// when the request carries one, `client_id`), a signature by one of that client's keys
/// with the key's own algorithm, `aud`, `exp`, `nbf`, a lifetime of at most
/// `max_lifetime_secs`, no `iat` in the future, and a `jti`. The error is a reason for
/// logs; callers answer `invalid_client` whatever it is.
pub fn verify(
    clients: &Clients,
    token: &str,
    client_id: Option<&str>,
    rules: &Rules,
    now_secs: i64,
) -> Result<Verified, &'static str> {
    if token.len() > crate::tokens::MAX_TOKEN_LEN {
        return Err("assertion too large");
    }
    // `alg: none` and unknown algorithms fail here: jsonwebtoken has no such variant.
    let header = jsonwebtoken::decode_header(token).map_err(|_| "malformed assertion")?;
    let named = unverified_sub(token).ok_or("malformed assertion")?;
    if client_id.is_some_and(|id| id != named) {
        return Err("client_id differs from the assertion's sub");
    }
    let client = clients.get(&named).ok_or("unknown client")?;
    let keys = client
        .keys
        .as_ref()
        .ok_or("client has no registered keys")?;
    let (alg, key) = keys.key(header.kid.as_deref())?;
    // The key decides the algorithm, never the header: no HS256 keyed with a public key.
    if header.alg != *alg {
        return Err("algorithm does not match the key");
    }
    let mut v = Validation::new(*alg);
    v.leeway = rules.leeway_secs.max(0) as u64;
    v.validate_nbf = true;
    v.set_issuer(&[named.as_str()]);
    v.set_audience(&rules.audiences);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let data = jsonwebtoken::decode::<Claims>(token, key, &v).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind::*;
        match e.kind() {
            ExpiredSignature => "assertion expired",
            InvalidAudience => "wrong audience",
            InvalidIssuer => "iss is not the client id",
            ImmatureSignature => "assertion not yet valid",
            InvalidSignature => "bad signature",
            _ => "invalid assertion",
        }
    })?;
    let c = data.claims;
    if c.sub != c.iss {
        return Err("iss is not the client id");
    }
    if let Some(iat) = c.iat {
        if iat > now_secs + rules.leeway_secs {
            return Err("assertion issued in the future");
        }
    }
    let lifetime = c.exp - c.iat.unwrap_or(now_secs);
    if lifetime > rules.max_lifetime_secs {
        return Err("assertion lifetime too long");
    }
    let jti = c
        .jti
        .filter(|j| !j.is_empty())
        .ok_or("assertion has no jti")?;
    if jti.len() > MAX_JTI {
        return Err("jti too long");
    }
    Ok(Verified {
        client: client.clone(),
        jti,
        until_ms: (c.exp + rules.leeway_secs + 1) * 1000,
    })
}

/// The `sub` claim before verification, only to pick the client's keys.
fn unverified_sub(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("sub")?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn b64(data: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(data)
    }

    struct Fixture {
        pair: Ed25519KeyPair,
        clients: Clients,
        rules: Rules,
    }

    fn fixture() -> Fixture {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let jwks = serde_json::json!({"keys": [{
            "kty": "OKP", "crv": "Ed25519", "kid": "k1",
            "x": b64(pair.public_key().as_ref()),
        }]});
        let mut client = Client::new("svc", [0; 32]);
        client.keys = Some(ClientKeys::parse(&jwks.to_string()).unwrap());
        Fixture {
            pair,
            clients: Clients::new([client, Client::new("plain", [1; 32])]),
            rules: Rules {
                audiences: vec!["https://latch.test/token".into()],
                max_lifetime_secs: 300,
                leeway_secs: 30,
            },
        }
    }

    fn sign(pair: &Ed25519KeyPair, header: serde_json::Value, claims: serde_json::Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = pair.sign(input.as_bytes());
        format!("{input}.{}", b64(sig.as_ref()))
    }

    fn claims(now: i64) -> serde_json::Value {
        serde_json::json!({
            "iss": "svc", "sub": "svc", "aud": "https://latch.test/token",
            "iat": now, "exp": now + 60, "jti": "j1",
        })
    }

    #[test]
    fn a_good_assertion_names_its_client_and_replay_window() {
        let f = fixture();
        // jsonwebtoken checks exp against the real clock: use the real now.
        let real = crate::time::now_secs();
        let t_real = sign(
            &f.pair,
            serde_json::json!({"alg": "EdDSA", "kid": "k1"}),
            claims(real),
        );
        let v = verify(&f.clients, &t_real, Some("svc"), &f.rules, real).unwrap();
        assert_eq!(&*v.client.id, "svc");
        assert_eq!(v.jti, "j1");
        assert_eq!(v.until_ms, (real + 60 + 31) * 1000);
    }

    #[test]
    fn hostile_assertions_are_refused_each_for_its_reason() {
        let f = fixture();
        let now = crate::time::now_secs();
        let h = serde_json::json!({"alg": "EdDSA", "kid": "k1"});
        let with = |k: &str, v: serde_json::Value| {
            let mut c = claims(now);
            c[k] = v;
            sign(&f.pair, h.clone(), c)
        };
        let without = |k: &str| {
            let mut c = claims(now);
            c.as_object_mut().unwrap().remove(k);
            sign(&f.pair, h.clone(), c)
        };
        let other = Ed25519KeyPair::from_pkcs8(
            Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                .unwrap()
                .as_ref(),
        )
        .unwrap();
        let cases: Vec<(String, Option<&str>, &str)> = vec![
            (sign(&other, h.clone(), claims(now)), None, "bad signature"),
            (
                with("aud", "https://elsewhere".into()),
                None,
                "wrong audience",
            ),
            (with("exp", (now - 100).into()), None, "assertion expired"),
            (
                with("exp", (now + 3600).into()),
                None,
                "assertion lifetime too long",
            ),
            (
                with("iat", (now + 3600).into()),
                None,
                "assertion issued in the future",
            ),
            (
                with("iss", "plain".into()),
                None,
                "iss is not the client id",
            ),
            (without("jti"), None, "assertion has no jti"),
            (without("exp"), None, "invalid assertion"),
            (
                with("sub", "plain".into()),
                None,
                "client has no registered keys",
            ),
            (with("sub", "nobody".into()), None, "unknown client"),
            (
                sign(&f.pair, h.clone(), claims(now)),
                Some("plain"),
                "client_id differs from the assertion's sub",
            ),
            (
                sign(
                    &f.pair,
                    serde_json::json!({"alg": "EdDSA", "kid": "k9"}),
                    claims(now),
                ),
                None,
                "unknown key",
            ),
            (
                sign(&f.pair, serde_json::json!({"alg": "none"}), claims(now)),
                None,
                "malformed assertion",
            ),
            (
                sign(
                    &f.pair,
                    serde_json::json!({"alg": "HS256", "kid": "k1"}),
                    claims(now),
                ),
                None,
                "algorithm does not match the key",
            ),
            ("not.a.jwt".into(), None, "malformed assertion"),
        ];
        for (token, id, reason) in cases {
            let got = verify(&f.clients, &token, id, &f.rules, now);
            assert_eq!(got.err(), Some(reason), "{reason}");
        }
    }
}
