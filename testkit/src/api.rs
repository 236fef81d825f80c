//! latch's HTTP API as tests call it: OAuth (issue, introspect, revoke), the admin API
//! (revoke, keys, audit) and the metrics listener, each asserting the answer it needs.

use hyper::StatusCode;
use serde_json::Value;

use crate::clients::{self, ClientDef};
use crate::http::{Http, Resp};
use crate::jwt::now_secs;
use crate::server::TestServer;

/// The only inactive answer latch gives: exactly `{"active":false}`.
pub fn inactive() -> Value {
    serde_json::json!({"active": false})
}

/// Keys of a given state in an `/admin/keys` list.
pub fn kids_in_state(keys: &[Value], state: &str) -> Vec<String> {
    keys.iter()
        .filter(|k| k["state"] == state)
        .map(|k| k["kid"].as_str().expect("kid").to_string())
        .collect()
}

/// The state of `kid` in an `/admin/keys` list, `None` if it is not listed.
pub fn key_state(keys: &[Value], kid: &str) -> Option<String> {
    keys.iter()
        .find(|k| k["kid"] == kid)
        .map(|k| k["state"].as_str().expect("state string").to_string())
}

impl TestServer {
    pub async fn post_form(
        &self,
        path: &str,
        params: &[(&str, &str)],
        auth: Option<(&str, &str)>,
    ) -> Resp {
        self.http.post_form(path, params, auth).await
    }

    pub async fn post_json(&self, path: &str, body: &Value, auth: Option<(&str, &str)>) -> Resp {
        self.http.post_json(path, body, auth).await
    }

    pub async fn get(&self, path: &str, auth: Option<(&str, &str)>) -> Resp {
        self.http.get(path, auth).await
    }

    /// client_credentials token request; returns the full response.
    pub async fn token_resp(&self, client: &ClientDef, extra: &[(&str, &str)]) -> Resp {
        let mut params = vec![("grant_type", "client_credentials")];
        params.extend_from_slice(extra);
        self.post_form("/token", &params, client.auth()).await
    }

    /// `POST /token` as `client` (Basic) with the form `params` and one `DPoP` header
    /// per proof (RFC 9449); the full response.
    pub async fn token_with_dpop(
        &self,
        client: &ClientDef,
        params: &[(&str, &str)],
        proofs: &[&str],
    ) -> Resp {
        let auth = crate::http::basic(&client.id, &client.secret);
        let mut headers = vec![
            ("content-type", "application/x-www-form-urlencoded"),
            ("authorization", auth.as_str()),
        ];
        headers.extend(proofs.iter().map(|p| ("dpop", *p)));
        let body = crate::http::form(params).into_bytes();
        self.http
            .request(hyper::Method::POST, "/token", &headers, body)
            .await
    }

    /// client_credentials token; panics unless 200.
    pub async fn issue(&self, client: &ClientDef, extra: &[(&str, &str)]) -> String {
        let r = self.token_resp(client, extra).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "token request for {} failed: {}",
            client.id,
            r.text()
        );
        r.json()["access_token"]
            .as_str()
            .expect("access_token string")
            .to_string()
    }

    /// Introspects as `rs`; panics unless 200; returns the JSON.
    pub async fn introspect_as(&self, rs: &ClientDef, token: &str) -> Value {
        let r = self
            .post_form("/introspect", &[("token", token)], rs.auth())
            .await;
        assert_eq!(r.status, StatusCode::OK, "introspect failed: {}", r.text());
        r.json()
    }

    /// Introspects with the unrestricted resource server.
    pub async fn introspect(&self, token: &str) -> Value {
        self.introspect_as(&clients::rs_all(), token).await
    }

    /// Whether introspection says active; an inactive answer must be exactly
    /// `{"active":false}`.
    pub async fn is_active(&self, token: &str) -> bool {
        let v = self.introspect(token).await;
        match v.get("active") {
            Some(Value::Bool(true)) => true,
            Some(Value::Bool(false)) => {
                assert_eq!(
                    v,
                    inactive(),
                    "inactive answers must be exactly {{active:false}}"
                );
                false
            }
            _ => panic!("introspection without boolean active: {v}"),
        }
    }

    /// [`TestServer::is_active`] for a token that expires at `expires` (its `exp` plus
    /// the server's leeway), asserting that an inactive answer comes only once that
    /// time has passed. The clock is read after the answer, and the server's clock at
    /// its decision is no later, so the check holds however slow the machine is.
    pub async fn is_active_until(&self, token: &str, expires: u64) -> bool {
        let active = self.is_active(token).await;
        let now = now_secs();
        assert!(
            active || now >= expires,
            "inactive at {now}, before it expires at {expires}"
        );
        active
    }

    /// RFC 7009 revocation of `token` by `client`; panics unless 200.
    pub async fn revoke(&self, client: &ClientDef, token: &str) {
        let r = self
            .post_form("/revoke", &[("token", token)], client.auth())
            .await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "/revoke: {}\n{}",
            r.text(),
            self.diagnostics()
        );
    }

    /// `/admin/revoke` as the admin; panics unless 200; returns the answer.
    pub async fn admin_revoke(&self, kind: &str, value: Option<&str>, reason: &str) -> Value {
        let mut body = serde_json::json!({"kind": kind, "reason": reason});
        if let Some(v) = value {
            body["value"] = Value::String(v.into());
        }
        let r = self
            .post_json("/admin/revoke", &body, clients::admin().auth())
            .await;
        assert_eq!(r.status, StatusCode::OK, "/admin/revoke: {}", r.text());
        r.json()
    }

    pub async fn admin_keys(&self) -> Vec<Value> {
        let r = self.get("/admin/keys", clients::admin().auth()).await;
        assert_eq!(r.status, StatusCode::OK, "/admin/keys: {}", r.text());
        r.json()["keys"].as_array().expect("keys array").clone()
    }

    pub async fn jwks(&self) -> Value {
        let r = self.get("/.well-known/jwks.json", None).await;
        assert_eq!(r.status, StatusCode::OK, "jwks: {}", r.text());
        r.json()
    }

    pub async fn jwks_kids(&self) -> Vec<String> {
        self.jwks().await["keys"]
            .as_array()
            .expect("jwks keys array")
            .iter()
            .map(|k| k["kid"].as_str().expect("kid").to_string())
            .collect()
    }

    pub async fn audit(&self, since: u64) -> Vec<Value> {
        let r = self
            .get(
                &format!("/admin/audit?since={since}&limit=1000"),
                clients::admin().auth(),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "/admin/audit: {}", r.text());
        r.json()["records"]
            .as_array()
            .expect("records array")
            .clone()
    }

    /// The sum of the Prometheus samples whose line starts with `series` (a name, or a
    /// name with labels); 0 when there is none.
    pub async fn metric(&self, series: &str) -> f64 {
        let r = Http::new(self.metrics_addr).get("/metrics", None).await;
        assert_eq!(r.status, StatusCode::OK, "/metrics: {}", r.text());
        r.text()
            .lines()
            .filter(|l| l.starts_with(series))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}
