//! Client authentication that needs the node: `private_key_jwt` assertions, verified by
//! the domain (`clients::assertion`) and used at most once across every node (the
//! store's `claim_once`).

use std::sync::Arc;

use super::{App, Error};
use crate::clients::assertion::{self, Rules};
use crate::clients::Client;

/// The rules every assertion is checked against: `aud` is the token endpoint URL or the
/// issuer; lifetime and leeway from `[tokens]`.
pub fn rules(config: &crate::config::Config) -> Rules {
    let base = config.issuer_base();
    let mut audiences = vec![format!("{base}/token"), config.issuer.clone()];
    if base != config.issuer {
        audiences.push(base.to_string());
    }
    Rules {
        audiences,
        max_lifetime_secs: config.tokens.client_assertion_max_lifetime.as_secs() as i64,
        leeway_secs: config.tokens.leeway.as_secs() as i64,
    }
}

/// The configured client a `private_key_jwt` assertion authenticates, once: a second use
/// of its `jti`, here or on any node sharing the store, is refused until the assertion
/// could no longer be accepted anyway.
pub async fn authenticate_assertion(
    app: &App,
    token: &str,
    client_id: Option<&str>,
) -> Result<Arc<Client>, Error> {
    let now = crate::time::now_secs();
    let verified = assertion::verify(&app.clients, token, client_id, &app.assertion_rules, now)
        .map_err(|why| {
            tracing::info!(reason = why, "client assertion refused");
            Error::InvalidClient(why)
        })?;
    let key = crate::sessions::hash(&format!(
        "client-assertion\n{}\n{}",
        verified.client.id.as_str(),
        verified.jti
    ));
    if !app.store.claim_once(key, verified.until_ms).await? {
        tracing::info!(client = %verified.client.id, "client assertion replayed");
        return Err(Error::InvalidClient("assertion replayed"));
    }
    Ok(verified.client)
}
