//! RFC 9701: an introspection answer as a signed JWT, for resource servers that need to
//! prove later what latch told them (non-repudiation), or that receive the answer through
//! an intermediary.
//!
//! The JWT carries exactly four claims: `iss` (latch), `aud` (the resource server that
//! asked: its client id), `iat` (when latch decided) and `token_introspection` (the JSON
//! object `/introspect` answers, byte for byte, `{"active":false}` included). No `sub`,
//! no `exp`: it is not an access token and must not pass for one (RFC 9701 §5, §8), and
//! its `typ` header, `token-introspection+jwt`, tells it apart from latch's `at+jwt`.
//!
//! **Architecture Invariant:** no IO, no clock: the caller passes `iat` and the signer.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::json;

use crate::keys::{KeyError, Signer};

/// The JWS `typ` of a signed introspection answer (RFC 9701 §5).
pub const TYP: &str = "token-introspection+jwt";

/// Its media type: what a resource server asks for in `Accept`, and the `Content-Type` of
/// the answer (RFC 9701 §4, §5).
pub const MEDIA_TYPE: &str = "application/token-introspection+jwt";

/// The claims set of the JWT. `answer` is the JSON object `/introspect` would answer; it
/// is embedded as is, so what the resource server verifies is exactly that object.
pub fn claims(iss: &str, aud: &str, iat: i64, answer: &[u8]) -> Vec<u8> {
    // Strings through serde_json (escaping); the answer spliced in unchanged.
    let iss = json!(iss).to_string();
    let aud = json!(aud).to_string();
    let mut out = Vec::with_capacity(iss.len() + aud.len() + answer.len() + 64);
    out.extend_from_slice(b"{\"iss\":");
    out.extend_from_slice(iss.as_bytes());
    out.extend_from_slice(b",\"aud\":");
    out.extend_from_slice(aud.as_bytes());
    out.extend_from_slice(b",\"iat\":");
    out.extend_from_slice(iat.to_string().as_bytes());
    out.extend_from_slice(b",\"token_introspection\":");
    out.extend_from_slice(answer);
    out.push(b'}');
    out
}

/// The compact JWS of `claims` (RFC 7515 §7.1) under the header `typ`, `alg`, `kid` of
/// `signer`: the key that signs access tokens, so the JWKS verifies both.
pub fn sign(signer: &Signer, claims: &[u8]) -> Result<String, KeyError> {
    let header = json!({"typ": TYP, "alg": signer.alg.as_str(), "kid": signer.kid});
    let mut jws = String::with_capacity(claims.len() * 4 / 3 + 200);
    URL_SAFE_NO_PAD.encode_string(header.to_string(), &mut jws);
    jws.push('.');
    URL_SAFE_NO_PAD.encode_string(claims, &mut jws);
    let signature = signer.key.sign(jws.as_bytes())?;
    jws.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut jws);
    Ok(jws)
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, Validation};
    use serde_json::Value;

    use super::*;
    use crate::keys::{material, Alg};

    fn signer(alg: Alg) -> (Signer, DecodingKey) {
        let g = material::generate(alg).unwrap();
        let kid = material::thumbprint(&g.public_jwk);
        let decoding = material::decoding_key(alg, &kid, &g.public_jwk).unwrap();
        let key = material::SigningKey::from_der(alg, &kid, &g.private_der).unwrap();
        let signer = Signer {
            kid: kid.into(),
            alg,
            key,
            header_b64: String::new(),
        };
        (signer, decoding)
    }

    #[test]
    fn the_claims_embed_the_answer_unchanged() {
        let answer = br#"{"active":true,"scope":"a b","sub":"\"quoted\""}"#;
        let c = claims("https://latch.test", "rs\"1", 1_800_000_000, answer);
        let v: Value = serde_json::from_slice(&c).expect("claims are JSON");
        assert_eq!(v["iss"], "https://latch.test");
        assert_eq!(v["aud"], "rs\"1");
        assert_eq!(v["iat"], 1_800_000_000);
        let embedded = serde_json::to_vec(&v["token_introspection"]).unwrap();
        assert_eq!(embedded, answer.to_vec());
        assert_eq!(v.as_object().unwrap().len(), 4, "exactly four claims: {v}");
    }

    #[test]
    fn every_algorithm_signs_a_jwt_its_public_key_verifies() {
        for alg in [Alg::EdDSA, Alg::ES256, Alg::RS256] {
            let (signer, decoding) = signer(alg);
            let c = claims("https://latch.test", "rs", 1, br#"{"active":false}"#);
            let jwt = sign(&signer, &c).unwrap();
            let header = jsonwebtoken::decode_header(&jwt).unwrap();
            assert_eq!(header.typ.as_deref(), Some(TYP), "{alg:?}");
            assert_eq!(header.kid.as_deref(), Some(signer.kid.as_ref()));
            assert_eq!(header.alg, alg.jwt());
            let mut validation = Validation::new(alg.jwt());
            validation.validate_exp = false;
            validation.set_audience(&["rs"]);
            validation.required_spec_claims.clear();
            let data = jsonwebtoken::decode::<Value>(&jwt, &decoding, &validation)
                .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
            assert_eq!(data.claims["token_introspection"]["active"], false);
            // One altered byte of the claims and it no longer verifies.
            let (head, rest) = jwt.split_once('.').unwrap();
            let (body, sig) = rest.split_once('.').unwrap();
            let other = URL_SAFE_NO_PAD.encode(claims("https://latch.test", "rs", 2, b"{}"));
            assert_ne!(other, body);
            let forged = format!("{head}.{other}.{sig}");
            assert!(jsonwebtoken::decode::<Value>(&forged, &decoding, &validation).is_err());
        }
    }
}
