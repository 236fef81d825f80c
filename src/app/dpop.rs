//! DPoP (RFC 9449) at the token endpoint: the proof is checked by the domain
//! (`crate::dpop`), its server nonce checked when required, and its `jti` used once
//! across every node (the store's `claim_once`).

use super::{App, Error};
use crate::dpop::{self, Rules};

/// The rules a proof at `/token` is checked against.
pub fn rules(config: &crate::config::Config) -> Rules {
    Rules {
        htu: format!("{}/token", config.issuer_base()),
        max_age_secs: config.dpop.max_age.as_secs() as i64,
        leeway_secs: config.tokens.leeway.as_secs() as i64,
    }
}

/// The nonce a client should use now (`DPoP-Nonce`), when nonces are required.
pub fn current_nonce(app: &App) -> Option<String> {
    let d = &app.config.dpop;
    d.require_nonce.then(|| {
        let window = crate::time::now_secs() / d.nonce_lifetime.as_secs().max(1) as i64;
        dpop::nonce(app.keys.refresh_record_mac(), window)
    })
}

/// The thumbprint (`cnf.jkt`) to bind issued tokens to: `None` without a `DPoP`
/// header; a proof that fails a check, lacks a valid required nonce, or was used
/// before (on any node) is refused.
pub async fn check_proof(
    app: &App,
    proof: Option<&str>,
    method: &str,
) -> Result<Option<String>, Error> {
    let Some(proof) = proof else { return Ok(None) };
    let now = crate::time::now_secs();
    let p = dpop::verify(proof, method, &app.dpop_rules, now).map_err(|why| {
        tracing::info!(reason = why, "DPoP proof refused");
        Error::InvalidDpopProof(why)
    })?;
    let d = &app.config.dpop;
    if d.require_nonce {
        let window = now / d.nonce_lifetime.as_secs().max(1) as i64;
        let ok = p
            .nonce
            .as_deref()
            .is_some_and(|n| dpop::nonce_valid(app.keys.refresh_record_mac(), n, window));
        if !ok {
            return Err(Error::UseDpopNonce(dpop::nonce(
                app.keys.refresh_record_mac(),
                window,
            )));
        }
    }
    if !claim(app, &p).await? {
        tracing::info!("DPoP proof replayed");
        return Err(Error::InvalidDpopProof("DPoP proof replayed"));
    }
    Ok(Some(p.jkt))
}

/// Uses a proof's `jti` once, across every node and every place a proof is accepted.
async fn claim(app: &App, p: &dpop::Proof) -> Result<bool, Error> {
    let key = crate::sessions::hash(&format!("dpop\n{}\n{}", p.jkt, p.jti));
    Ok(app.store.claim_once(key, p.until_ms).await?)
}

/// Why a proof that goes with a DPoP-bound access token at a resource was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused(pub &'static str);

/// Checks the proof sent with DPoP-bound `access_token` for the request `method` `htu`
/// at a resource (the gateway check, RFC 9449 §7.1): a valid proof for that method and
/// URL, by the key the token is bound to (`jkt`), with `ath` the token's hash, used
/// once. The outer error is the store's (fail closed); the inner says why the proof is
/// refused. Server nonces are a token-endpoint matter here: not required.
pub async fn check_resource_proof(
    app: &App,
    proof: &str,
    method: &str,
    htu: &str,
    access_token: &str,
    jkt: &str,
) -> Result<Result<(), Refused>, Error> {
    let rules = Rules {
        htu: htu.to_string(),
        ..app.dpop_rules.clone()
    };
    let p = match dpop::verify(proof, method, &rules, crate::time::now_secs()) {
        Ok(p) => p,
        Err(why) => return Ok(Err(Refused(why))),
    };
    let expected = dpop::ath(access_token);
    let ath_ok = p
        .ath
        .as_deref()
        .is_some_and(|a| subtle::ConstantTimeEq::ct_eq(a.as_bytes(), expected.as_bytes()).into());
    if !ath_ok {
        return Ok(Err(Refused(
            "DPoP proof ath does not match the access token",
        )));
    }
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        p.jkt.as_bytes(),
        jkt.as_bytes(),
    )) {
        return Ok(Err(Refused(
            "DPoP proof is not by the key the token is bound to",
        )));
    }
    if !claim(app, &p).await? {
        tracing::info!("DPoP proof replayed at a resource");
        return Ok(Err(Refused("DPoP proof replayed")));
    }
    Ok(Ok(()))
}
