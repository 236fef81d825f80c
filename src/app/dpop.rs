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
    let key = crate::sessions::hash(&format!("dpop\n{}\n{}", p.jkt, p.jti));
    if !app.store.claim_once(key, p.until_ms).await? {
        tracing::info!("DPoP proof replayed");
        return Err(Error::InvalidDpopProof("DPoP proof replayed"));
    }
    Ok(Some(p.jkt))
}
