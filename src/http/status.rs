//! Token Status List endpoints: `GET /statuslists/{id}` (a signed
//! `application/statuslist+jwt`) and `GET /statuslists` (Status List Aggregation). Both
//! are public, as the JWKS is: a list says nothing but bits.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde_json::json;

use hyper::http::request::Parts;

use super::error::{bytes_response, ApiError};
use super::request::ClientAddr;
use crate::app::{App, Error};
use crate::status::{ListId, MEDIA_TYPE};
use crate::time::now_ms;

/// `/statuslists/{id}` → the id as given (checked by [`list`]).
pub fn list_path(path: &str) -> Option<&str> {
    path.strip_prefix("/statuslists/")
}

/// `GET /statuslists/{id}`: the list as this node decides it now, cacheable for `ttl`.
/// Public, and a list this node has not seen costs store reads: an address that asks
/// for lists that do not exist too often is refused (429) until its bucket refills.
pub async fn list(
    app: &App,
    parts: &Parts,
    raw_id: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let lists = app.status.as_ref().ok_or(ApiError::NotFound)?;
    let id = ListId::parse(raw_id).ok_or_else(|| {
        ApiError::InvalidRequest("a status list id is 16 lowercase hex digits".into())
    })?;
    let address = ClientAddr::of(parts);
    app.limits.before_status_list(address, now_ms())?;
    let token = match lists.render(app, id).await {
        Err(Error::NotFound(why)) => {
            app.limits.status_list_missed(address, now_ms());
            return Err(ApiError::NoSuch(why));
        }
        other => other?,
    };
    Ok(bytes_response(
        StatusCode::OK,
        token.jwt,
        MEDIA_TYPE,
        &format!("public, max-age={}", token.max_age),
    ))
}

/// `GET /statuslists`: `{"status_lists": [uri, ...]}`, every list not yet expired.
pub async fn aggregation(app: &App) -> Result<Response<Full<Bytes>>, ApiError> {
    let lists = app.status.as_ref().ok_or(ApiError::NotFound)?;
    let uris = lists.aggregation().await?;
    let body = serde_json::to_vec(&json!({ "status_lists": uris })).unwrap_or_default();
    Ok(bytes_response(
        StatusCode::OK,
        Bytes::from(body),
        "application/json",
        &format!("public, max-age={}", lists.ttl_secs()),
    ))
}
