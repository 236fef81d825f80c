//! Security Event Tokens (RFC 8417) as SSF 1.0 §4 profiles them: explicitly typed
//! `secevent+jwt`, `iss`, `jti`, `iat`, `aud`, `txn`, `sub_id` and one event; no `sub`,
//! no `exp`. Signed like access tokens, by the active key (so the JWKS verifies them),
//! but with their own `typ`: latch's verifier accepts only `at+jwt`, so a SET can never
//! pass for an access token, nor an access token for a SET.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use super::{jti, Pending, Stream};
use crate::keys::{material, KeyError, Signer};

/// The JOSE `typ` of every SET (SSF 1.0 §4.1.1).
pub const TYP: &str = "secevent+jwt";

/// The claims of the SET for `pending` on `stream`, issued by `issuer` at `iat`.
pub fn claims(stream: &Stream, pending: &Pending, issuer: &str, iat: i64) -> Value {
    let mut events = serde_json::Map::new();
    events.insert(pending.event_type.to_string(), pending.event.clone());
    json!({
        "iss": issuer,
        "jti": jti(&stream.id, pending.pos),
        "iat": iat,
        "aud": stream.aud,
        "txn": pending.txn,
        "sub_id": pending.sub_id,
        "events": events,
    })
}

/// Signs `claims` as a SET: a JWS compact serialization with header
/// `{"typ": "secevent+jwt", "alg", "kid"}`.
pub fn sign(signer: &Signer, claims: &Value) -> Result<String, KeyError> {
    let header = json!({"typ": TYP, "alg": signer.alg.as_str(), "kid": signer.kid});
    let payload = serde_json::to_vec(claims).map_err(|e| KeyError::Generate(e.to_string()))?;
    let mut token = material::b64url(header.to_string().as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
    let signature = signer.key.sign(token.as_bytes())?;
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut token);
    Ok(token)
}
