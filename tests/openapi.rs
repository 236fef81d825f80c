//! `docs/openapi.json` against the real server: every documented operation is driven to
//! its success and its main error answers, and each answer must have a documented status,
//! the documented required headers, the documented content type, and a body the response
//! schema accepts (JSON Schema 2020-12, the `jsonschema` crate). Every documented
//! (operation, status) must be driven here or be listed in [`NOT_DRIVEN`] with why, so the
//! document cannot grow an answer nobody checks. The 503s need a store outage, so they are
//! driven against a redis-mode node whose Redis is stopped; the 408s and 429s against a
//! node with tiny rate limits and a short body deadline. Negative checks show that the
//! checker rejects wrong bodies, statuses and headers. A body that is not JSON (the RFC
//! 9701 JWT) is checked as a string, and a JWT's header and claims against the schemas
//! its media type names in `x-jwt-header` and `x-jwt-claims`.

use std::collections::BTreeSet;
use std::sync::Mutex;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hyper::Method;
use serde_json::{json, Value};
use testkit::client_keys::{jwks, ClientKey, JWT_BEARER};
use testkit::clients::{self, ORDERS_AUD};
use testkit::prelude::*;

const TE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const AT_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const FORM: &str = "application/x-www-form-urlencoded";
const SIGNED: &str = "application/token-introspection+jwt";

/// Form parameters of one request.
type Params<'a> = Vec<(&'a str, &'a str)>;
const IDP_ISS: &str = "https://idp.openapi.test";
const IDP_KID: &str = "idp-openapi-1";
const IDP_PREFIX: &str = "idp|";
const REPORTS_AUD: &str = "https://reports.example";
/// Shaped like a refresh token, never issued.
const UNKNOWN_REFRESH: &str = "rt.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// Why [`real_answers_match_the_openapi_document`] does not drive a 503.
const OUTAGE: &str = "needs a store outage: outage_answers_match_the_openapi_document";
/// Why it does not drive a 408 or 429.
const LIMITS: &str = "needs tiny limits and deadlines: limit_answers_match_the_openapi_document";
/// Public operations with a per-address limit of their own (429): status lists that do
/// not exist.
const LIMITED_PUBLIC: [(&str, &str); 1] = [("get", "/statuslists/{list_id}")];
/// Operations that authenticate a client, so an auth-failure limit can refuse them (429).
const AUTHENTICATED: [(&str, &str); 39] = [
    ("post", "/token"),
    ("get", "/gateway/check"),
    ("post", "/introspect"),
    ("post", "/introspect/batch"),
    ("post", "/revoke"),
    ("post", "/admin/revoke"),
    ("get", "/admin/keys"),
    ("post", "/admin/keys/rotate"),
    ("post", "/admin/keys/{kid}/revoke"),
    ("get", "/admin/audit"),
    ("post", "/admin/store/recover"),
    ("get", "/admin/contracts"),
    ("get", "/admin/contracts/{client}"),
    ("post", "/admin/contracts/{client}"),
    ("get", "/admin/contracts/{client}/{version}"),
    ("post", "/admin/contracts/{client}/{version}/cancel"),
    ("post", "/admin/contracts/{client}/rollback"),
    ("post", "/admin/contracts/{client}/promote"),
    ("get", "/admin/scopes"),
    ("post", "/admin/scopes"),
    ("get", "/admin/nodes"),
    ("get", "/admin/revocations/{seq}"),
    ("get", "/ssf/stream"),
    ("post", "/ssf/stream"),
    ("patch", "/ssf/stream"),
    ("put", "/ssf/stream"),
    ("delete", "/ssf/stream"),
    ("get", "/ssf/status"),
    ("post", "/ssf/status"),
    ("post", "/ssf/verify"),
    ("post", "/ssf/poll/{stream_id}"),
    ("get", "/grants"),
    ("post", "/grants"),
    ("get", "/grants/{id}"),
    ("get", "/admin/grants"),
    ("get", "/admin/grants/{id}"),
    ("post", "/admin/grants/{id}/approve"),
    ("post", "/admin/grants/{id}/deny"),
    ("post", "/admin/grants/{id}/revoke"),
];

/// The contracts admin API's client in concrete paths.
const CONTRACT_CLIENT: &str = "orders-service";

/// A documented path with its parameters filled in: `kid`, the contracts fixture's client,
/// and version 1 (which every configured client has).
fn concrete(template: &str, kid: &str) -> String {
    template
        .replace("{kid}", kid)
        .replace("{client}", CONTRACT_CLIENT)
        .replace("{version}", "1")
        .replace("{seq}", "1")
        .replace("{id}", "g-openapi")
}

/// Methods that carry a body, which can time out (408), be too large (413) or of the
/// wrong type (415).
const WITH_BODY: [&str; 3] = ["post", "patch", "put"];

/// Documented answers the embedded-store test does not provoke, and why. Each must stay
/// documented.
const NOT_DRIVEN: &[(&str, &str, &str, &str)] = &[
    ("post", "/token", "500", "a bug; nothing provokes it"),
    (
        "post",
        "/admin/keys/rotate",
        "500",
        "a bug; nothing provokes it",
    ),
    (
        "post",
        "/admin/keys/{kid}/revoke",
        "500",
        "a bug; nothing provokes it",
    ),
    ("post", "/token", "503", OUTAGE),
    ("post", "/introspect", "503", OUTAGE),
    ("post", "/introspect/batch", "503", OUTAGE),
    ("get", "/gateway/check", "503", OUTAGE),
    ("post", "/revoke", "503", OUTAGE),
    ("post", "/admin/revoke", "503", OUTAGE),
    ("post", "/admin/keys/rotate", "503", OUTAGE),
    ("post", "/admin/keys/{kid}/revoke", "503", OUTAGE),
    ("get", "/admin/audit", "503", OUTAGE),
    ("get", "/readyz", "503", OUTAGE),
    ("post", "/admin/store/recover", "503", OUTAGE),
    ("post", "/admin/contracts/{client}", "503", OUTAGE),
    (
        "post",
        "/admin/contracts/{client}/{version}/cancel",
        "503",
        OUTAGE,
    ),
    ("post", "/admin/contracts/{client}/rollback", "503", OUTAGE),
    ("post", "/admin/contracts/{client}/promote", "503", OUTAGE),
    ("post", "/admin/scopes", "503", OUTAGE),
    ("get", "/admin/nodes", "503", OUTAGE),
    ("get", "/admin/revocations/{seq}", "503", OUTAGE),
    (
        "post",
        "/ssf/poll/{stream_id}",
        "500",
        "a bug (signing failed); nothing provokes it",
    ),
    ("get", "/ssf/stream", "503", OUTAGE),
    ("post", "/ssf/stream", "503", OUTAGE),
    ("patch", "/ssf/stream", "503", OUTAGE),
    ("put", "/ssf/stream", "503", OUTAGE),
    ("delete", "/ssf/stream", "503", OUTAGE),
    ("get", "/ssf/status", "503", OUTAGE),
    ("post", "/ssf/status", "503", OUTAGE),
    ("post", "/ssf/verify", "503", OUTAGE),
    ("post", "/ssf/poll/{stream_id}", "503", OUTAGE),
    ("get", "/grants", "503", OUTAGE),
    ("post", "/grants", "503", OUTAGE),
    ("get", "/grants/{id}", "503", OUTAGE),
    ("get", "/admin/grants", "503", OUTAGE),
    ("get", "/admin/grants/{id}", "503", OUTAGE),
    ("post", "/admin/grants/{id}/approve", "503", OUTAGE),
    ("post", "/admin/grants/{id}/deny", "503", OUTAGE),
    ("post", "/admin/grants/{id}/revoke", "503", OUTAGE),
    ("get", "/statuslists", "503", OUTAGE),
    (
        "get",
        "/statuslists",
        "404",
        "only with status_list.enabled = false (tests/status_list.rs lists_can_be_turned_off)",
    ),
    ("get", "/statuslists/{list_id}", "503", OUTAGE),
];

/// Whether an operation takes a JSON body (else a form).
fn takes_json(template: &str) -> bool {
    template.starts_with("/admin/") || template == "/introspect/batch" || template == "/grants"
}

/// Whether [`NOT_DRIVEN`] (or, for 408 and 429, [`LIMITS`]) excuses an answer.
fn excused(method: &str, template: &str, status: &str) -> bool {
    let limited = match status {
        "429" => {
            AUTHENTICATED.contains(&(method, template))
                || LIMITED_PUBLIC.contains(&(method, template))
        }
        "408" => WITH_BODY.contains(&method) && AUTHENTICATED.contains(&(method, template)),
        _ => false,
    };
    limited
        || NOT_DRIVEN
            .iter()
            .any(|(m, t, st, _)| (*m, *t, *st) == (method, template, status))
}

// ---------------------------------------------------------------------------
// The document and the checker
// ---------------------------------------------------------------------------

struct Api {
    doc: Value,
    /// (method, path template, status) checked against a real answer.
    covered: Mutex<BTreeSet<(String, String, String)>>,
}

impl Api {
    fn load() -> Api {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
        let text = std::fs::read_to_string(path).expect("read docs/openapi.json");
        let doc: Value = serde_json::from_str(&text).expect("docs/openapi.json is JSON");
        Api {
            doc,
            covered: Mutex::new(BTreeSet::new()),
        }
    }

    /// Follows local `$ref`s (`#/components/...`) until a non-reference.
    fn resolve<'a>(&'a self, mut v: &'a Value) -> &'a Value {
        for _ in 0..16 {
            let Some(r) = v.get("$ref").and_then(Value::as_str) else {
                return v;
            };
            let pointer = r.strip_prefix('#').expect("only local references");
            v = self
                .doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("dangling $ref {r}"));
        }
        panic!("$ref chain too long")
    }

    fn path_item(&self, template: &str) -> &Value {
        self.doc["paths"]
            .get(template)
            .unwrap_or_else(|| panic!("{template} is not in docs/openapi.json"))
    }

    /// Documented operations as (method, path template).
    fn operations(&self) -> Vec<(String, String)> {
        let mut out = vec![];
        for (path, item) in self.doc["paths"].as_object().expect("paths") {
            for m in ["get", "post", "put", "delete", "patch"] {
                if item.get(m).is_some() {
                    out.push((m.to_string(), path.clone()));
                }
            }
        }
        out
    }

    /// A validator for `schema`, whose `$ref`s point into this document's components.
    fn validator(&self, schema: &Value) -> jsonschema::Validator {
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.doc["components"],
            "allOf": [schema],
        });
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&root)
            .unwrap_or_else(|e| panic!("schema does not compile: {e}\n{schema}"))
    }

    /// Whether `resp` is one of the answers documented for `method template`. A method the
    /// path does not document must be answered 405 as the path's operations say.
    fn check(&self, method: &Method, template: &str, resp: &Resp) -> Result<(), String> {
        let item = self.path_item(template);
        let m = method.as_str().to_ascii_lowercase();
        // A method the path does not document: 405, as each documented operation of the
        // path says, with `Allow` naming them all.
        let (op_method, op) = match item.get(&m) {
            Some(op) => (m.clone(), op),
            None => {
                if resp.status != 405 {
                    return Err(format!(
                        "{method} {template} is not documented, so it must answer 405, not {}",
                        resp.status
                    ));
                }
                let documented: BTreeSet<String> = item
                    .as_object()
                    .unwrap()
                    .keys()
                    .filter(|k| ["get", "post", "patch", "put", "delete"].contains(&k.as_str()))
                    .map(|k| k.to_ascii_uppercase())
                    .collect();
                let allow = resp.header("allow").unwrap_or_default();
                let allowed: BTreeSet<String> = allow
                    .split(',')
                    .map(|m| m.trim().to_ascii_uppercase())
                    .collect();
                if allowed != documented {
                    return Err(format!(
                        "Allow {allow:?}, documented methods {documented:?}"
                    ));
                }
                let (om, op) = item
                    .as_object()
                    .unwrap()
                    .iter()
                    .find(|(k, _)| documented.contains(&k.to_ascii_uppercase()))
                    .expect("an operation");
                (om.clone(), op)
            }
        };
        let status = resp.status.as_u16().to_string();
        let response = op["responses"].get(&status).ok_or_else(|| {
            format!(
                "{} {template} answered {status}, which is not documented: {}",
                op_method.to_uppercase(),
                resp.text()
            )
        })?;
        self.check_response(self.resolve(response), resp)
            .map_err(|e| format!("{} {template} {status}: {e}", op_method.to_uppercase()))?;
        // A 405 is the path's answer: it covers every operation of the path.
        let methods: Vec<String> = if item.get(&m).is_none() {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| ["get", "post", "patch", "put", "delete"].contains(&k.as_str()))
                .cloned()
                .collect()
        } else {
            vec![op_method]
        };
        let mut covered = self.covered.lock().unwrap();
        for method in methods {
            covered.insert((method, template.to_string(), status.clone()));
        }
        Ok(())
    }

    /// Headers, content type and body of one answer against one response object.
    fn check_response(&self, response: &Value, resp: &Resp) -> Result<(), String> {
        if let Some(headers) = response.get("headers").and_then(Value::as_object) {
            for (name, h) in headers {
                let h = self.resolve(h);
                match resp.header(name) {
                    None if h["required"] == true => {
                        return Err(format!("required header {name} is missing"))
                    }
                    None => {}
                    Some(value) => {
                        self.check_body(&h["schema"], &Value::String(value))
                            .map_err(|e| format!("header {name}: {e}"))?;
                    }
                }
            }
        }
        let content_type = resp.header("content-type");
        let Some(content) = response.get("content").and_then(Value::as_object) else {
            if !resp.body.is_empty() || content_type.is_some() {
                return Err(format!(
                    "documented without content, got {content_type:?} {:?}",
                    resp.text()
                ));
            }
            return Ok(());
        };
        let media = content_type
            .as_deref()
            .and_then(|c| c.split(';').next())
            .map(|m| m.trim().to_ascii_lowercase())
            .ok_or("no Content-Type")?;
        let media_object = content
            .get(&media)
            .ok_or_else(|| format!("Content-Type {media} is not documented"))?;
        let schema = &media_object["schema"];
        if media == "application/json" {
            let body: Value = serde_json::from_slice(&resp.body)
                .map_err(|e| format!("body is not JSON ({e}): {:?}", resp.text()))?;
            return self.check_body(schema, &body);
        }
        let text = std::str::from_utf8(&resp.body).map_err(|_| "body is not UTF-8")?;
        self.check_body(schema, &Value::String(text.to_string()))?;
        for (extension, part) in [("x-jwt-header", 0), ("x-jwt-claims", 1)] {
            let Some(part_schema) = media_object.get(extension) else {
                continue;
            };
            let encoded = text.split('.').nth(part).ok_or("not a compact JWS")?;
            let decoded = URL_SAFE_NO_PAD
                .decode(encoded)
                .map_err(|e| format!("{extension}: not base64url: {e}"))?;
            let json: Value = serde_json::from_slice(&decoded)
                .map_err(|e| format!("{extension}: not JSON: {e}"))?;
            self.check_body(part_schema, &json)
                .map_err(|e| format!("{extension}: {e}"))?;
        }
        Ok(())
    }

    fn check_body(&self, schema: &Value, body: &Value) -> Result<(), String> {
        let v = self.validator(schema);
        let errors: Vec<String> = v
            .iter_errors(body)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!("{body} does not match: {}", errors.join("; ")))
        }
    }

    /// The answer must be documented; panics with the reason otherwise.
    #[track_caller]
    fn assert(&self, method: Method, template: &str, resp: &Resp) {
        if let Err(e) = self.check(&method, template, resp) {
            panic!("{e}");
        }
    }

    /// The schema of a documented JSON answer, for the negative checks.
    fn body_schema(&self, method: &str, template: &str, status: &str) -> Value {
        let r = self.resolve(&self.path_item(template)[method]["responses"][status]);
        r["content"]["application/json"]["schema"].clone()
    }
}

// ---------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------

/// The IdP the test controls.
fn idp() -> Idp {
    Idp::new(IDP_ISS).kid(IDP_KID)
}

fn idp_hook() -> ClientDef {
    ClientDef::new("idp-hook")
        .grants(&[TE, "refresh_token"])
        .scopes(&["profile", "orders:read"])
        .audiences(&[ORDERS_AUD])
        .roles(&["session_issuer"])
}

/// Token exchange for delegation only: opening a session needs a role it lacks. It
/// lists the orders audience so that user tokens for orders are meant for it too (a
/// subject token must be; its own tokens default to the reports audience).
fn reports() -> ClientDef {
    ClientDef::new("reports-service")
        .grants(&[TE])
        .scopes(&["orders:read"])
        .audiences(&[REPORTS_AUD, ORDERS_AUD])
}

/// A Shared Signals receiver.
fn ssf_receiver() -> ClientDef {
    ClientDef::new("ssf-receiver").roles(&["ssf_receiver"])
}

/// `[ssf]` for the fixtures: two streams per receiver, verification at most hourly.
const SSF_TOML: &str =
    "[ssf]\nmax_streams_per_receiver = 2\nmin_verification_interval = \"1h\"\n\n";

/// The key of the `private_key_jwt` client [`keyed`].
fn keyed_key() -> &'static ClientKey {
    static KEY: std::sync::OnceLock<ClientKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| ClientKey::ed25519("keyed-1"))
}

/// A client with keys and no secret: it authenticates with `private_key_jwt` only.
fn keyed() -> ClientDef {
    ClientDef::new("keyed")
        .grants(&["client_credentials"])
        .scopes(&["orders:read"])
        .audiences(&[ORDERS_AUD])
        .roles(&["introspect"])
        .jwks(jwks(&[keyed_key()]))
        .without_secret()
}

fn wrong_secret(c: &ClientDef) -> ClientDef {
    c.clone()
        .secret("not-the-secret-0123456789abcdef0123456789")
}

async fn start(idp: &Idp) -> TestServer {
    TestServer::builder()
        .client(idp_hook())
        .client(reports())
        .client(elevated())
        .client(keyed())
        // A prefix, so `/admin/revoke` can refuse an ambiguous subject (400).
        .trusted_issuer(idp.trusted().subject_prefix(IDP_PREFIX))
        // The batch body limit as low as the others, so one oversized body drives every 413.
        .env("LATCH_INTROSPECTION__BATCH_MAX_BODY_BYTES", "16384")
        .client(ssf_receiver())
        .raw_toml(SSF_TOML)
        .start()
        .await
}

async fn raw(
    s: &TestServer,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    s.http.request(method, path, headers, body.to_vec()).await
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

#[tokio::test]
async fn real_answers_match_the_openapi_document() {
    let api = Api::load();
    let idp = idp();
    let s = start(&idp).await;
    let orders = clients::orders();
    let admin = clients::admin();
    let rs = clients::rs_all();
    let nobody = clients::nobody();

    // --- discovery and health ---
    for (path, template) in [
        (
            "/.well-known/oauth-authorization-server",
            "/.well-known/oauth-authorization-server",
        ),
        ("/.well-known/jwks.json", "/.well-known/jwks.json"),
        ("/healthz", "/healthz"),
        ("/readyz", "/readyz"),
    ] {
        api.assert(Method::GET, template, &s.get(path, None).await);
    }

    // A plain X-Request-Id is echoed; one that is not plain is replaced.
    let r = raw(
        &s,
        Method::GET,
        "/healthz",
        &[("x-request-id", "trace-42.a:b_c")],
        b"",
    )
    .await;
    assert_eq!(r.header("x-request-id").as_deref(), Some("trace-42.a:b_c"));
    let r = raw(
        &s,
        Method::GET,
        "/healthz",
        &[("x-request-id", "not plain!")],
        b"",
    )
    .await;
    let id = r.header("x-request-id").expect("a request id");
    assert_ne!(id, "not plain!");
    api.assert(Method::GET, "/healthz", &r);

    // --- /token: client_credentials, session opening, refresh, delegation ---
    let r = s.token_resp(&orders, &[("scope", "orders:read")]).await;
    api.assert(Method::POST, "/token", &r);
    let access = r.json()["access_token"].as_str().unwrap().to_string();

    let te = |sub_token: String, ty: &'static str| {
        vec![
            ("grant_type".to_string(), TE.to_string()),
            ("subject_token".to_string(), sub_token),
            ("subject_token_type".to_string(), ty.to_string()),
        ]
    };
    let post = |params: Vec<(String, String)>, c: ClientDef| {
        let s = &s;
        async move {
            let p: Vec<(&str, &str)> = params
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            s.post_form("/token", &p, c.auth()).await
        }
    };
    let r = post(
        te(idp.assertion_with_jti("alice", "jti-1"), JWT_TYPE),
        idp_hook(),
    )
    .await;
    api.assert(Method::POST, "/token", &r);
    let session = r.json();
    assert!(
        session["refresh_token"].is_string(),
        "a session has a refresh token: {session}"
    );
    let user_access = session["access_token"].as_str().unwrap().to_string();
    let refresh = session["refresh_token"].as_str().unwrap().to_string();

    let r = s
        .post_form(
            "/token",
            &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
            idp_hook().auth(),
        )
        .await;
    api.assert(Method::POST, "/token", &r);
    assert!(r.json()["refresh_token"].is_string(), "{}", r.text());

    let r = post(te(user_access.clone(), AT_TYPE), reports()).await;
    api.assert(Method::POST, "/token", &r);
    let delegated = r.json()["access_token"].as_str().unwrap().to_string();

    // --- private_key_jwt at /token, /introspect and /revoke ---
    let asserted = |path: &'static str, extra: Vec<(&'static str, String)>, auth: bool| {
        let s = &s;
        let orders = orders.clone();
        async move {
            let a = keyed_key().assertion("keyed");
            let mut p: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
            p.push(("client_assertion_type", JWT_BEARER));
            p.push(("client_assertion", a.as_str()));
            let first = s
                .post_form(path, &p, auth.then(|| orders.auth()).flatten())
                .await;
            // The same assertion again: a replay.
            let again = s.post_form(path, &p, None).await;
            (first, again)
        }
    };
    let cc = || vec![("grant_type", "client_credentials".to_string())];
    let (r, replayed) = asserted("/token", cc(), false).await;
    assert_eq!(r.status, 200, "{}", r.text());
    api.assert(Method::POST, "/token", &r);
    let keyed_access = r.json()["access_token"].as_str().unwrap().to_string();
    replayed.assert_error(401, "invalid_client");
    api.assert(Method::POST, "/token", &replayed);
    // With a secret beside it: 400.
    let (r, _) = asserted("/token", cc(), true).await;
    r.assert_error(400, "invalid_request");
    api.assert(Method::POST, "/token", &r);
    // --- DPoP at /token: a bound token, its introspection, a bad proof ---
    let dpop_key = ClientKey::es256("dpop");
    let dpop = |proof: String| {
        let s = &s;
        let auth = basic(&orders.id, &orders.secret);
        async move {
            let headers = [
                ("content-type", "application/x-www-form-urlencoded"),
                ("authorization", auth.as_str()),
                ("dpop", proof.as_str()),
            ];
            let body = form(&[("grant_type", "client_credentials")]).into_bytes();
            s.http.request(Method::POST, "/token", &headers, body).await
        }
    };
    let r = dpop(dpop_key.dpop_proof(None)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["token_type"], "DPoP");
    api.assert(Method::POST, "/token", &r);
    let bound = r.json()["access_token"].as_str().unwrap().to_string();
    let r = s
        .post_form("/introspect", &[("token", &bound)], rs.auth())
        .await;
    assert_eq!(
        r.json()["cnf"]["jkt"],
        dpop_key.thumbprint(),
        "{}",
        r.text()
    );
    api.assert(Method::POST, "/introspect", &r);
    let r = dpop("not-a-proof".into()).await;
    r.assert_error(400, "invalid_dpop_proof");
    api.assert(Method::POST, "/token", &r);

    for path in ["/introspect", "/revoke"] {
        let (r, replayed) = asserted(path, vec![("token", keyed_access.clone())], false).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        api.assert(Method::POST, path, &r);
        replayed.assert_error(401, "invalid_client");
        api.assert(Method::POST, path, &replayed);
    }

    // /token errors, each a documented code.
    let cases: Vec<(Params, ClientDef, u16, &str)> = vec![
        (vec![("scope", "x")], orders.clone(), 400, "invalid_request"),
        (
            vec![("grant_type", "password")],
            orders.clone(),
            400,
            "unsupported_grant_type",
        ),
        (
            vec![("grant_type", "refresh_token"), ("refresh_token", "rt.x")],
            orders.clone(),
            400,
            "unauthorized_client",
        ),
        (
            vec![("grant_type", "client_credentials"), ("scope", "admin:all")],
            orders.clone(),
            400,
            "invalid_scope",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("resource", "https://elsewhere.example"),
            ],
            orders.clone(),
            400,
            "invalid_target",
        ),
        (
            vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", UNKNOWN_REFRESH),
            ],
            idp_hook(),
            400,
            "invalid_grant",
        ),
        (
            vec![("grant_type", "client_credentials")],
            wrong_secret(&orders),
            401,
            "invalid_client",
        ),
        (
            vec![
                ("grant_type", TE),
                ("subject_token", "x"),
                ("subject_token_type", JWT_TYPE),
            ],
            reports(),
            403,
            "unauthorized_client",
        ),
    ];
    for (params, client, status, code) in cases {
        let r = s.post_form("/token", &params, client.auth()).await;
        r.assert_error(status, code);
        api.assert(Method::POST, "/token", &r);
    }

    // --- /introspect ---
    for token in [access.as_str(), delegated.as_str(), "not-a-token"] {
        let r = s
            .post_form("/introspect", &[("token", token)], rs.auth())
            .await;
        api.assert(Method::POST, "/introspect", &r);
    }
    // An active refresh token needs a live session: open another one.
    let r = post(
        te(idp.assertion_with_jti("bob", "jti-2"), JWT_TYPE),
        idp_hook(),
    )
    .await;
    let live_refresh = r.json()["refresh_token"].as_str().unwrap().to_string();
    let r = s
        .post_form("/introspect", &[("token", &live_refresh)], rs.auth())
        .await;
    assert_eq!(r.json()["token_type"], "refresh_token", "{}", r.text());
    api.assert(Method::POST, "/introspect", &r);
    let r = s
        .post_form("/introspect", &[("token", &delegated)], rs.auth())
        .await;
    assert_eq!(r.json()["act"]["sub"], "reports-service", "{}", r.text());
    for (params, client, status) in [
        (vec![], rs.clone(), 400),
        (vec![("token", access.as_str())], wrong_secret(&rs), 401),
        (vec![("token", access.as_str())], nobody.clone(), 403),
    ] {
        let r = s.post_form("/introspect", &params, client.auth()).await;
        assert_eq!(r.status, status, "{}", r.text());
        api.assert(Method::POST, "/introspect", &r);
    }

    // Signed (RFC 9701) and minimal answers, alone and together, active and inactive.
    let rs_auth = basic(&rs.id, &rs.secret);
    let asks: [&[(&str, &str)]; 3] = [
        &[("accept", SIGNED)],
        &[("prefer", "return=minimal")],
        &[("accept", SIGNED), ("prefer", "return=minimal")],
    ];
    for token in [access.as_str(), "not-a-token", live_refresh.as_str()] {
        for ask in asks {
            let mut headers = vec![("content-type", FORM), ("authorization", rs_auth.as_str())];
            headers.extend_from_slice(ask);
            let body = form(&[("token", token)]);
            let r = raw(&s, Method::POST, "/introspect", &headers, body.as_bytes()).await;
            assert_eq!(r.status, 200, "{ask:?}: {}", r.text());
            let signed = ask.iter().any(|(h, _)| *h == "accept");
            assert_eq!(r.header("content-type").as_deref() == Some(SIGNED), signed);
            api.assert(Method::POST, "/introspect", &r);
        }
    }

    // --- /gateway/check ---
    let gateway =
        |bearer: Option<String>, client: ClientDef, more: Vec<(&'static str, &'static str)>| {
            let s = &s;
            async move {
                let cred = basic(&client.id, &client.secret);
                let mut headers = vec![("x-latch-client-authorization", cred.as_str())];
                if let Some(b) = &bearer {
                    headers.push(("authorization", b.as_str()));
                }
                headers.extend(more);
                raw(s, Method::GET, "/gateway/check", &headers, b"").await
            }
        };
    let bearer = Some(format!("Bearer {access}"));
    /// (bearer, gateway client, more headers, status, error code)
    type GatewayCase<'a> = (Option<String>, ClientDef, Params<'a>, u16, &'a str);
    let gateway_cases: Vec<GatewayCase> = vec![
        (bearer.clone(), rs.clone(), vec![], 200, ""),
        (None, rs.clone(), vec![], 401, "invalid_token"),
        (
            Some("Bearer not-a-token".into()),
            rs.clone(),
            vec![],
            401,
            "invalid_token",
        ),
        (
            bearer.clone(),
            wrong_secret(&rs),
            vec![],
            401,
            "invalid_client",
        ),
        (
            bearer.clone(),
            nobody.clone(),
            vec![],
            403,
            "unauthorized_client",
        ),
        (
            bearer.clone(),
            rs.clone(),
            vec![("x-latch-required-scope", "admin:everything")],
            403,
            "insufficient_scope",
        ),
        (
            bearer.clone(),
            rs.clone(),
            vec![("x-latch-required-scope", "a\"b")],
            400,
            "invalid_request",
        ),
    ];
    for (bearer, client, more, status, code) in gateway_cases {
        let r = gateway(bearer, client, more).await;
        if status == 200 {
            assert_eq!(r.status, 200, "{}", r.text());
        } else {
            r.assert_error(status, code);
        }
        api.assert(Method::GET, "/gateway/check", &r);
    }

    // --- /introspect/batch ---
    let batch = |tokens: Value, client: ClientDef, prefer: Option<&'static str>| {
        let s = &s;
        async move {
            let auth = basic(&client.id, &client.secret);
            let mut headers = vec![
                ("content-type", "application/json"),
                ("authorization", &auth),
            ];
            if let Some(p) = prefer {
                headers.push(("prefer", p));
            }
            let body = serde_json::to_vec(&json!({ "tokens": tokens })).unwrap();
            raw(s, Method::POST, "/introspect/batch", &headers, &body).await
        }
    };
    let mix = json!([access, "not-a-token", live_refresh, delegated, access]);
    for (tokens, client, prefer, status) in [
        (mix.clone(), rs.clone(), None, 200),
        (mix.clone(), rs.clone(), Some("return=minimal"), 200),
        (json!([]), rs.clone(), None, 200),
        (json!([access, 1]), rs.clone(), None, 400),
        (json!([""]), rs.clone(), None, 400),
        (mix.clone(), wrong_secret(&rs), None, 401),
        (mix.clone(), nobody.clone(), None, 403),
        (mix.clone(), orders.clone(), None, 403),
    ] {
        let r = batch(tokens, client, prefer).await;
        assert_eq!(r.status, status, "{}", r.text());
        api.assert(Method::POST, "/introspect/batch", &r);
    }

    // --- /revoke ---
    for (params, client, status) in [
        (vec![("token", access.as_str())], clients::billing(), 403),
        (vec![], orders.clone(), 400),
        (vec![("token", access.as_str())], wrong_secret(&orders), 401),
        (vec![("token", access.as_str())], orders.clone(), 200),
        (vec![("token", live_refresh.as_str())], idp_hook(), 200),
    ] {
        let r = s.post_form("/revoke", &params, client.auth()).await;
        assert_eq!(r.status, status, "{}", r.text());
        api.assert(Method::POST, "/revoke", &r);
    }

    // --- /admin/revoke ---
    for (body, client, status) in [
        (
            json!({"kind": "subject", "value": "idp|alice", "reason": "openapi"}),
            admin.clone(),
            200,
        ),
        // The IdP's own sub with its issuer: latch adds the prefix.
        (
            json!({"kind": "subject", "value": "alice", "issuer": IDP_ISS}),
            admin.clone(),
            200,
        ),
        (json!({"kind": "all"}), admin.clone(), 200),
        (json!({"kind": "everything"}), admin.clone(), 400),
        // No known prefix, not a client id, no issuer: which subject is meant?
        (
            json!({"kind": "subject", "value": "alice"}),
            admin.clone(),
            400,
        ),
        (
            json!({"kind": "subject", "value": "alice", "issuer": "https://nobody.test"}),
            admin.clone(),
            400,
        ),
        (
            json!({"kind": "token", "value": "x", "issuer": IDP_ISS}),
            admin.clone(),
            400,
        ),
        (
            json!({"kind": "subject", "value": "a"}),
            wrong_secret(&admin),
            401,
        ),
        (
            json!({"kind": "subject", "value": "a"}),
            nobody.clone(),
            403,
        ),
    ] {
        let r = s.post_json("/admin/revoke", &body, client.auth()).await;
        assert_eq!(r.status, status, "{body}: {}", r.text());
        api.assert(Method::POST, "/admin/revoke", &r);
        if body["issuer"] == IDP_ISS && status == 200 {
            assert_eq!(r.json()["value"], "idp|alice", "{}", r.text());
        }
        if status == 400 && body["kind"] == "subject" && body.get("issuer").is_none() {
            let why = r.json()["error_description"].to_string();
            assert!(why.contains("ambiguous"), "{why}");
        }
    }

    // --- /admin/keys, rotate, key revocation, audit ---
    for (client, status) in [
        (admin.clone(), 200),
        (wrong_secret(&admin), 401),
        (nobody.clone(), 403),
    ] {
        let r = s.get("/admin/keys", client.auth()).await;
        assert_eq!(r.status, status, "{}", r.text());
        api.assert(Method::GET, "/admin/keys", &r);
    }
    for (body, client, status) in [
        (json!({"reason": "openapi"}), admin.clone(), 409),
        (
            json!({"reason": "openapi", "force": true}),
            admin.clone(),
            200,
        ),
        (json!({"nope": 1}), admin.clone(), 400),
        (json!({}), wrong_secret(&admin), 401),
        (json!({}), nobody.clone(), 403),
    ] {
        let r = s
            .post_json("/admin/keys/rotate", &body, client.auth())
            .await;
        assert_eq!(r.status, status, "{}", r.text());
        api.assert(Method::POST, "/admin/keys/rotate", &r);
    }
    let next = kids_in_state(&s.admin_keys().await, "next");
    let next = next.first().expect("a next key after rotation").clone();
    let revoke_path = format!("/admin/keys/{next}/revoke");
    for (path, body, client, status) in [
        (
            revoke_path.clone(),
            json!({"reason": "openapi"}),
            admin.clone(),
            200,
        ),
        (revoke_path.clone(), json!([1]), admin.clone(), 400),
        (revoke_path.clone(), json!({}), wrong_secret(&admin), 401),
        (revoke_path.clone(), json!({}), nobody.clone(), 403),
        (
            "/admin/keys/no-such-kid/revoke".to_string(),
            json!({}),
            admin.clone(),
            404,
        ),
    ] {
        let r = s.post_json(&path, &body, client.auth()).await;
        assert_eq!(r.status, status, "{}", r.text());
        api.assert(Method::POST, "/admin/keys/{kid}/revoke", &r);
    }
    for (query, client, status) in [
        ("?since=0&limit=1000", admin.clone(), 200),
        ("?limit=0", admin.clone(), 400),
        ("", wrong_secret(&admin), 401),
        ("", nobody.clone(), 403),
    ] {
        let r = s.get(&format!("/admin/audit{query}"), client.auth()).await;
        assert_eq!(r.status, status, "{}", r.text());
        api.assert(Method::GET, "/admin/audit", &r);
    }
    for (body, client, status) in [
        (json!({"reason": "openapi"}), admin.clone(), 200),
        (
            json!({"reason": "openapi", "revoke_all": true}),
            admin.clone(),
            200,
        ),
        (json!({"reason": "  "}), admin.clone(), 400),
        (json!({"revoke_all": true}), admin.clone(), 400),
        (json!({"reason": "x", "nope": 1}), admin.clone(), 400),
        (json!({"reason": "x"}), wrong_secret(&admin), 401),
        (json!({"reason": "x"}), nobody.clone(), 403),
    ] {
        let r = s
            .post_json("/admin/store/recover", &body, client.auth())
            .await;
        assert_eq!(r.status, status, "{body}: {}", r.text());
        api.assert(Method::POST, "/admin/store/recover", &r);
        if status == 200 {
            let j = r.json();
            assert!(!j["closed"].as_array().unwrap().is_empty(), "{j}");
            assert_eq!(
                j["revoked_all_seq"].is_u64(),
                body["revoke_all"] == true,
                "{j}"
            );
        }
    }

    contracts(&api, &s).await;
    grants(&api, &s).await;
    // --- the node registry: /admin/nodes, /admin/revocations/{seq} ---
    let seq = s
        .admin_revoke("subject", Some("idp|registry"), "openapi")
        .await["seq"]
        .as_u64()
        .unwrap();
    for (client, status) in [
        (admin.clone(), 200),
        (wrong_secret(&admin), 401),
        (nobody.clone(), 403),
    ] {
        let r = s.get("/admin/nodes", client.auth()).await;
        assert_eq!(r.status, status, "{}", r.text());
        api.assert(Method::GET, "/admin/nodes", &r);
    }
    let path = format!("/admin/revocations/{seq}");
    for (path, client, status) in [
        (path.as_str(), admin.clone(), 200),
        ("/admin/revocations/abc", admin.clone(), 400),
        (
            "/admin/revocations/99999999999999999999999",
            admin.clone(),
            400,
        ),
        ("/admin/revocations/999999", admin.clone(), 404),
        (path.as_str(), wrong_secret(&admin), 401),
        (path.as_str(), nobody.clone(), 403),
    ] {
        let r = s.get(path, client.auth()).await;
        assert_eq!(r.status, status, "{path}: {}", r.text());
        api.assert(Method::GET, "/admin/revocations/{seq}", &r);
        if status == 200 {
            assert_eq!(r.json()["confirmed"], true, "{}", r.text());
        }
    }
    // --- Shared Signals ---
    let poll_id = drive_ssf(&api, &s).await;

    // --- for every documented path: another method (405); with a body, 413 and 415 ---
    let admin_auth = basic(&admin.id, &admin.secret);
    let receiver_auth = basic(&ssf_receiver().id, &ssf_receiver().secret);
    for (method, template) in api.operations() {
        if template == "/gateway/check" {
            // Answers every method the same (gateways forward the user's): no 405, and
            // no body is read. tests/gateway.rs drives GET, POST, PUT and DELETE.
            continue;
        }
        let path = concrete(&template, &next).replace("{stream_id}", &poll_id);
        let documented = |m: &Method| {
            api.path_item(&template)
                .get(m.as_str().to_ascii_lowercase())
                .is_some()
        };
        let other = [Method::DELETE, Method::GET, Method::OPTIONS]
            .into_iter()
            .find(|m| !documented(m))
            .expect("an undocumented method");
        let r = raw(&s, other.clone(), &path, &[], b"").await;
        api.assert(other, &template, &r);
        if !WITH_BODY.contains(&method.as_str()) {
            continue;
        }
        let verb = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
        let (auth, wrong_type) = if template.starts_with("/ssf/") {
            (&receiver_auth, FORM)
        } else if takes_json(&template) {
            (&admin_auth, FORM)
        } else {
            (&admin_auth, "application/json")
        };
        let r = if template.starts_with("/admin/contracts") || template == "/admin/scopes" {
            // Past the contracts' own 256 KiB: declared, not sent (latch answers at once,
            // and a client still writing that much would see the connection closed).
            declared_too_large(&s, &path, &admin_auth).await
        } else {
            let big = vec![b'a'; 20_000];
            raw(
                &s,
                verb.clone(),
                &path,
                &[("content-type", FORM), ("authorization", auth)],
                &big,
            )
            .await
        };
        r.assert_error(413, "invalid_request");
        api.assert(verb.clone(), &template, &r);
        let r = raw(
            &s,
            verb.clone(),
            &path,
            &[("content-type", wrong_type), ("authorization", auth)],
            b"{\"reason\":\"x\"}",
        )
        .await;
        r.assert_error(415, "invalid_request");
        api.assert(verb, &template, &r);
    }

    // --- Token Status List: a token's list, the aggregation, hostile ids ---
    let list_uri = decode_jwt(&access).1["status"]["status_list"]["uri"]
        .as_str()
        .expect("status.status_list.uri")
        .to_string();
    let list_path = list_uri
        .strip_prefix("http://latch.test")
        .expect("under the issuer")
        .to_string();
    let r = s.get(&list_path, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    api.assert(Method::GET, "/statuslists/{list_id}", &r);
    let r = s.get("/statuslists", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    api.assert(Method::GET, "/statuslists", &r);
    for (path, status) in [
        ("/statuslists/0000000000000000", 404),
        ("/statuslists/NOT-HEX", 400),
        ("/statuslists/0123456789abcdef0123", 400),
    ] {
        let r = s.get(path, None).await;
        assert_eq!(r.status, status, "{path}: {}", r.text());
        api.assert(Method::GET, "/statuslists/{list_id}", &r);
    }
    for (path, template) in [
        (list_path.as_str(), "/statuslists/{list_id}"),
        ("/statuslists", "/statuslists"),
    ] {
        let r = s.post_form(path, &[("a", "b")], None).await;
        api.assert(Method::POST, template, &r);
    }

    // --- an undocumented path: 404 with the documented error shape ---
    let r = s.get("/no/such/path", None).await;
    r.assert_error(404, "not_found");
    api.check_response(
        api.resolve(&json!({"$ref": "#/components/responses/NotFound"})),
        &r,
    )
    .unwrap();

    // --- coverage: every documented answer was driven, or is listed with why ---
    let covered = api.covered.lock().unwrap().clone();
    let mut missing = vec![];
    for (method, template) in api.operations() {
        let responses = api.path_item(&template)[&method]["responses"]
            .as_object()
            .unwrap()
            .clone();
        for status in responses.keys() {
            let key = (method.clone(), template.clone(), status.clone());
            if !covered.contains(&key) && !excused(&method, &template, status) {
                missing.push(format!("{} {template} {status}", method.to_uppercase()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "documented but never driven: {missing:?}"
    );
    for (m, t, st, why) in NOT_DRIVEN {
        assert!(
            api.path_item(t)[m]["responses"].get(st).is_some(),
            "NOT_DRIVEN lists {m} {t} {st} ({why}), which is not documented"
        );
        assert!(
            !covered.contains(&(m.to_string(), t.to_string(), st.to_string())),
            "{m} {t} {st} is driven now; remove it from NOT_DRIVEN"
        );
    }
}

/// The contracts admin API: every operation to its success and its main errors, and the
/// deprecation headers of `/token` and `/introspect` answers (one client's contract
/// amended: a new scope through its ramp, a scheduled version cancelled, a promotion, a
/// rollback, then `orders:read` deprecated with its removal scheduled).
async fn contracts(api: &Api, s: &TestServer) {
    let admin = clients::admin();
    let nobody = clients::nobody();
    let c = format!("/admin/contracts/{CONTRACT_CLIENT}");
    let get = |path: String, client: ClientDef| async move { s.get(&path, client.auth()).await };
    let post = |path: String, body: Value, client: ClientDef| async move {
        s.post_json(&path, &body, client.auth()).await
    };

    // Reads.
    for (client, status) in [
        (admin.clone(), 200),
        (wrong_secret(&admin), 401),
        (nobody.clone(), 403),
    ] {
        for (path, template) in [
            ("/admin/contracts".to_string(), "/admin/contracts"),
            ("/admin/scopes".to_string(), "/admin/scopes"),
            (c.clone(), "/admin/contracts/{client}"),
            (format!("{c}/1"), "/admin/contracts/{client}/{version}"),
        ] {
            let r = get(path, client.clone()).await;
            assert_eq!(r.status, status, "{template}: {}", r.text());
            api.assert(Method::GET, template, &r);
        }
    }
    for (path, template, status) in [
        (
            "/admin/contracts/no-such-client".to_string(),
            "/admin/contracts/{client}",
            404,
        ),
        (format!("{c}/9"), "/admin/contracts/{client}/{version}", 404),
        (format!("{c}/x"), "/admin/contracts/{client}/{version}", 400),
    ] {
        let r = get(path, admin.clone()).await;
        assert_eq!(r.status, status, "{template}: {}", r.text());
        api.assert(Method::GET, template, &r);
    }
    // A path that names no client (a `:` in the id; found by scripts/conformance).
    let r = post("/admin/contracts/a%3Ab".into(), json!({}), admin.clone()).await;
    assert_eq!(r.status, 404, "{}", r.text());
    api.assert(Method::POST, "/admin/contracts/{client}", &r);

    // The registry: a new scope.
    let registry = get("/admin/scopes".into(), admin.clone()).await.json();
    let mut with_refund = registry["registry"].clone();
    with_refund["scopes"]["orders:refund"] = json!({"description": "refunds", "owner": "orders"});
    let mut bad = with_refund.clone();
    bad["scopes"]["bad scope"] = json!({});
    let base = registry["latest_version"].as_u64().unwrap();
    let amend_registry = |base: u64, r: &Value| json!({"base_version": base, "registry": r, "changelog": "refunds", "reason": "openapi"});
    for (body, client, status) in [
        (amend_registry(base, &bad), admin.clone(), 400),
        (amend_registry(base, &with_refund), admin.clone(), 200),
        (amend_registry(base, &with_refund), admin.clone(), 409),
        (
            amend_registry(base, &with_refund),
            wrong_secret(&admin),
            401,
        ),
        (amend_registry(base, &with_refund), nobody.clone(), 403),
    ] {
        let r = post("/admin/scopes".into(), body, client).await;
        assert_eq!(r.status, status, "{}", r.text());
        api.assert(Method::POST, "/admin/scopes", &r);
        if status == 400 {
            assert_eq!(
                r.json()["problems"][0]["code"],
                "invalid_scope_name",
                "{}",
                r.text()
            );
        }
    }

    // Amendments: version 2 puts the new scope in shadow, 3 is scheduled a day ahead.
    let v1 = get(format!("{c}/1"), admin.clone()).await.json()["body"]["content"].clone();
    let mut shadow = v1.clone();
    shadow["scopes"]["orders:refund"] = json!("shadow");
    let mut enforced = v1.clone();
    enforced["scopes"]["orders:refund"] = json!("enforced");
    let mut unregistered = shadow.clone();
    unregistered["scopes"]["orders:nuke"] = json!("shadow");
    let amend = |base: u64, contract: &Value| json!({"base_version": base, "contract": contract, "changelog": "refunds", "reason": "openapi"});
    let ahead = {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(now_secs() as u64 + 86_400);
        humantime::format_rfc3339_seconds(t).to_string()
    };
    let mut scheduled = amend(2, &enforced);
    scheduled["effective_at"] = json!(ahead);
    for (body, client, status) in [
        (amend(1, &unregistered), admin.clone(), 400),
        (amend(1, &shadow), admin.clone(), 200),
        (amend(1, &shadow), admin.clone(), 409),
        (scheduled, admin.clone(), 200),
        (amend(3, &shadow), wrong_secret(&admin), 401),
        (amend(3, &shadow), nobody.clone(), 403),
    ] {
        let r = post(c.clone(), body, client).await;
        assert_eq!(r.status, status, "{}", r.text());
        api.assert(Method::POST, "/admin/contracts/{client}", &r);
    }
    let r = s
        .token_resp(&clients::orders(), &[("scope", "orders:refund")])
        .await;
    r.assert_error(400, "invalid_scope");
    assert_eq!(r.json()["reason"], "scope_in_shadow", "{}", r.text());
    api.assert(Method::POST, "/token", &r);

    // Cancel version 3.
    let cancel = "/admin/contracts/{client}/{version}/cancel";
    for (path, body, client, status) in [
        (
            format!("{c}/3/cancel"),
            json!({"reason": " "}),
            admin.clone(),
            400,
        ),
        (
            format!("{c}/3/cancel"),
            json!({"reason": "openapi"}),
            admin.clone(),
            200,
        ),
        (
            format!("{c}/3/cancel"),
            json!({"reason": "openapi"}),
            admin.clone(),
            409,
        ),
        (
            format!("{c}/9/cancel"),
            json!({"reason": "openapi"}),
            admin.clone(),
            404,
        ),
        (
            format!("{c}/3/cancel"),
            json!({"reason": "x"}),
            wrong_secret(&admin),
            401,
        ),
        (
            format!("{c}/3/cancel"),
            json!({"reason": "x"}),
            nobody.clone(),
            403,
        ),
    ] {
        let r = post(path, body, client).await;
        assert_eq!(r.status, status, "{}", r.text());
        api.assert(Method::POST, cancel, &r);
    }

    // Promote the shadow scope (version 4).
    let promote = |name: &str, kind: &str, base: u64| json!({"name": name, "kind": kind, "base_version": base, "reason": "openapi"});
    for (path, body, client, status) in [
        (
            format!("{c}/promote"),
            promote("orders:refund", "scope", 1),
            admin.clone(),
            409,
        ),
        (
            format!("{c}/promote"),
            promote("orders:read", "scope", 3),
            admin.clone(),
            400,
        ),
        (
            format!("{c}/promote"),
            promote("orders:refund", "nope", 3),
            admin.clone(),
            400,
        ),
        (
            "/admin/contracts/no-such-client/promote".to_string(),
            promote("orders:refund", "scope", 1),
            admin.clone(),
            404,
        ),
        (
            format!("{c}/promote"),
            promote("orders:refund", "scope", 3),
            admin.clone(),
            200,
        ),
        (
            format!("{c}/promote"),
            promote("x", "scope", 4),
            wrong_secret(&admin),
            401,
        ),
        (
            format!("{c}/promote"),
            promote("x", "scope", 4),
            nobody.clone(),
            403,
        ),
    ] {
        let r = post(path, body, client).await;
        assert_eq!(r.status, status, "{}", r.text());
        api.assert(Method::POST, "/admin/contracts/{client}/promote", &r);
    }

    // Roll back to version 2 (version 5).
    let rollback =
        |to: u64, base: u64| json!({"to": to, "base_version": base, "reason": "openapi"});
    for (body, client, status) in [
        (rollback(3, 4), admin.clone(), 400),
        (rollback(99, 4), admin.clone(), 404),
        (rollback(2, 1), admin.clone(), 409),
        (rollback(2, 4), admin.clone(), 200),
        (rollback(2, 5), wrong_secret(&admin), 401),
        (rollback(2, 5), nobody.clone(), 403),
    ] {
        let r = post(format!("{c}/rollback"), body, client).await;
        assert_eq!(r.status, status, "{}", r.text());
        api.assert(Method::POST, "/admin/contracts/{client}/rollback", &r);
        if status == 400 {
            assert_eq!(
                r.json()["problems"][0]["code"],
                "never_in_force",
                "{}",
                r.text()
            );
        }
    }

    // orders:read deprecated now (version 6), removed a day ahead (version 7): tokens
    // carrying it are answered with Deprecation, Sunset and X-Latch-Deprecated.
    let mut deprecated = shadow.clone();
    deprecated["scopes"]["orders:read"] = json!("deprecated");
    let mut removed = deprecated.clone();
    removed["scopes"]
        .as_object_mut()
        .unwrap()
        .remove("orders:read");
    let mut later = amend(6, &removed);
    later["effective_at"] = json!(ahead);
    for body in [amend(5, &deprecated), later] {
        let r = post(c.clone(), body, admin.clone()).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = s
        .token_resp(&clients::orders(), &[("scope", "orders:read")])
        .await;
    api.assert(Method::POST, "/token", &r);
    let token = r.json()["access_token"].as_str().unwrap().to_string();
    let r2 = s
        .post_form(
            "/introspect",
            &[("token", &token)],
            clients::rs_all().auth(),
        )
        .await;
    api.assert(Method::POST, "/introspect", &r2);
    // The signed (RFC 9701) answer carries the same headers.
    let auth = basic(&clients::rs_all().id, &clients::rs_all().secret);
    let headers = [
        ("content-type", FORM),
        ("authorization", auth.as_str()),
        ("accept", SIGNED),
    ];
    let body = form(&[("token", &token)]);
    let r3 = raw(s, Method::POST, "/introspect", &headers, body.as_bytes()).await;
    assert_eq!(r3.header("content-type").as_deref(), Some(SIGNED));
    api.assert(Method::POST, "/introspect", &r3);
    for r in [&r, &r2, &r3] {
        assert!(
            r.header("deprecation").is_some_and(|d| d.starts_with('@')),
            "{:?}",
            r.headers
        );
        assert!(
            r.header("sunset").is_some_and(|d| d.ends_with(" GMT")),
            "{:?}",
            r.headers
        );
        assert_eq!(
            r.header("x-latch-deprecated").as_deref(),
            Some("deprecated=orders:read")
        );
    }
}

/// Drives every Shared Signals operation to each documented answer but the limits and
/// outages. Returns a poll stream's id.
/// A client with an elevation in its contract (see [`grants`]).
fn elevated() -> ClientDef {
    ClientDef::new("elevated-service")
        .grants(&["client_credentials"])
        .scopes(&["orders:read"])
        .audiences(&[ORDERS_AUD])
}

/// The elevation API: a scope registered, an elevation in elevated-service's contract
/// (security-admin approves), then every grant operation to its success and its main
/// errors, and an elevated token introspected (the `grant` member).
async fn grants(api: &Api, s: &TestServer) {
    let admin = clients::admin();
    let nobody = clients::nobody();
    let me = elevated();
    let registry = s.get("/admin/scopes", admin.auth()).await.json();
    let mut r = registry["registry"].clone();
    r["scopes"]["orders:break-glass"] = json!({"description": "break glass", "owner": "orders"});
    r["approver_groups"] = json!({"security": ["security-admin"]});
    let body = json!({"base_version": registry["latest_version"], "registry": r, "changelog": "elevation", "reason": "openapi"});
    let resp = s.post_json("/admin/scopes", &body, admin.auth()).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    api.assert(Method::POST, "/admin/scopes", &resp);
    let c = "/admin/contracts/elevated-service";
    let v1 = s.get(&format!("{c}/1"), admin.auth()).await.json()["body"]["content"].clone();
    let mut v2 = v1.clone();
    v2["elevations"] = json!({"orders:break-glass": {"max_duration_secs": 600, "approvers": ["group:security"], "sensitive": true}});
    let body =
        json!({"base_version": 1, "contract": v2, "changelog": "elevation", "reason": "openapi"});
    let resp = s.post_json(c, &body, admin.auth()).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    api.assert(Method::POST, "/admin/contracts/{client}", &resp);

    // Requests.
    let ask =
        json!({"scope": "orders:break-glass", "duration_secs": 60, "justification": "openapi"});
    for (body, client, status) in [
        (
            json!({"scope": "orders:break-glass", "duration_secs": 601, "justification": "x"}),
            me.clone(),
            400,
        ),
        (json!({"scope": "orders:break-glass"}), me.clone(), 400),
        (ask.clone(), clients::orders(), 403),
        (ask.clone(), wrong_secret(&me), 401),
        (ask.clone(), me.clone(), 201),
    ] {
        let r = s.post_json("/grants", &body, client.auth()).await;
        assert_eq!(r.status, status, "{}", r.text());
        api.assert(Method::POST, "/grants", &r);
    }
    let mine = s.get("/grants", me.auth()).await;
    api.assert(Method::GET, "/grants", &mine);
    let id = mine.json()["grants"][0]["id"].as_str().unwrap().to_string();
    let one = format!("/grants/{id}");
    for (path, template, client, status) in [
        (
            "/grants?status=bogus".to_string(),
            "/grants",
            me.clone(),
            400,
        ),
        ("/grants".to_string(), "/grants", wrong_secret(&me), 401),
        (one.clone(), "/grants/{id}", me.clone(), 200),
        (one.clone(), "/grants/{id}", clients::orders(), 404),
        (one.clone(), "/grants/{id}", wrong_secret(&me), 401),
        (
            "/admin/grants?status=requested".to_string(),
            "/admin/grants",
            admin.clone(),
            200,
        ),
        (
            "/admin/grants?bogus=1".to_string(),
            "/admin/grants",
            admin.clone(),
            400,
        ),
        (
            "/admin/grants".to_string(),
            "/admin/grants",
            wrong_secret(&admin),
            401,
        ),
        (
            "/admin/grants".to_string(),
            "/admin/grants",
            nobody.clone(),
            403,
        ),
        (
            format!("/admin/grants/{id}"),
            "/admin/grants/{id}",
            admin.clone(),
            200,
        ),
        (
            "/admin/grants/g-none".to_string(),
            "/admin/grants/{id}",
            admin.clone(),
            404,
        ),
        (
            format!("/admin/grants/{id}"),
            "/admin/grants/{id}",
            wrong_secret(&admin),
            401,
        ),
        (
            format!("/admin/grants/{id}"),
            "/admin/grants/{id}",
            nobody.clone(),
            403,
        ),
    ] {
        let r = s.get(&path, client.auth()).await;
        assert_eq!(r.status, status, "{path}: {}", r.text());
        api.assert(Method::GET, template, &r);
    }

    // Decisions: each verb to its errors; approve, then use, then revoke.
    let second = s.post_json("/grants", &ask, me.auth()).await.json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let reason = json!({"reason": "openapi"});
    for verb in ["approve", "deny", "revoke"] {
        let template = format!("/admin/grants/{{id}}/{verb}");
        for (path, body, client, status) in [
            (
                format!("/admin/grants/{second}/{verb}"),
                json!({"reason": ""}),
                admin.clone(),
                400,
            ),
            (
                format!("/admin/grants/{second}/{verb}"),
                reason.clone(),
                wrong_secret(&admin),
                401,
            ),
            (
                format!("/admin/grants/{second}/{verb}"),
                reason.clone(),
                nobody.clone(),
                403,
            ),
            (
                format!("/admin/grants/g-none/{verb}"),
                reason.clone(),
                admin.clone(),
                404,
            ),
            (
                format!("/admin/grants/{second}/{verb}"),
                json!({"reason": "x", "version": 9}),
                admin.clone(),
                409,
            ),
        ] {
            let r = s.post_json(&path, &body, client.auth()).await;
            assert_eq!(r.status, status, "{path}: {}", r.text());
            api.assert(Method::POST, &template, &r);
        }
    }
    let r = s
        .post_json(
            &format!("/admin/grants/{second}/deny"),
            &reason,
            admin.auth(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    api.assert(Method::POST, "/admin/grants/{id}/deny", &r);
    let r = s
        .post_json(
            &format!("/admin/grants/{id}/approve"),
            &reason,
            admin.auth(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    api.assert(Method::POST, "/admin/grants/{id}/approve", &r);
    let t = s
        .issue(&me, &[("scope", "orders:read orders:break-glass")])
        .await;
    let r = s
        .post_form(
            "/introspect",
            &[("token", t.as_str())],
            clients::rs_all().auth(),
        )
        .await;
    assert_eq!(r.json()["grant"], id.as_str(), "{}", r.text());
    api.assert(Method::POST, "/introspect", &r);
    // Approved already: 409.
    let r = s
        .post_json(
            &format!("/admin/grants/{id}/approve"),
            &reason,
            admin.auth(),
        )
        .await;
    r.assert_error(409, "conflict");
    api.assert(Method::POST, "/admin/grants/{id}/approve", &r);
    let r = s
        .post_json(&format!("/admin/grants/{id}/revoke"), &reason, admin.auth())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    api.assert(Method::POST, "/admin/grants/{id}/revoke", &r);
    let r = s
        .post_json(
            &format!("/admin/grants/{id}/approve"),
            &reason,
            admin.auth(),
        )
        .await;
    api.assert(Method::POST, "/admin/grants/{id}/approve", &r);
    let third = s.post_json("/grants", &ask, me.auth()).await.json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = s
        .post_json(
            &format!("/admin/grants/{third}/approve"),
            &reason,
            clients::orders().auth(),
        )
        .await;
    r.assert_error(403, "unauthorized_client");
    api.assert(Method::POST, "/admin/grants/{id}/approve", &r);
    // At most 20 waiting requests per client.
    let mut r = s.post_json("/grants", &ask, me.auth()).await;
    for _ in 0..25 {
        if r.status != 201 {
            break;
        }
        r = s.post_json("/grants", &ask, me.auth()).await;
    }
    r.assert_error(409, "conflict");
    assert_eq!(r.json()["reason"], "too_many_pending");
    api.assert(Method::POST, "/grants", &r);
}

async fn drive_ssf(api: &Api, s: &TestServer) -> String {
    let rcv = ssf_receiver();
    let admin = clients::admin();
    let send = |method: Method, path: String, body: Option<Value>, who: Option<ClientDef>| async move {
        let auth = who.map(|c| basic(&c.id, &c.secret));
        let mut headers: Vec<(&str, &str)> = vec![];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        let bytes = body
            .map(|b| serde_json::to_vec(&b).unwrap())
            .unwrap_or_default();
        raw(s, method, &path, &headers, &bytes).await
    };
    let r = s.get("/.well-known/ssf-configuration", None).await;
    api.assert(Method::GET, "/.well-known/ssf-configuration", &r);

    let me = Some(rcv.clone());
    let r = send(
        Method::POST,
        "/ssf/stream".into(),
        Some(json!({"description": "openapi"})),
        me.clone(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    api.assert(Method::POST, "/ssf/stream", &r);
    let id = r.json()["stream_id"].as_str().unwrap().to_string();
    let r = send(
        Method::POST,
        "/ssf/stream".into(),
        Some(json!({})),
        me.clone(),
    )
    .await;
    api.assert(Method::POST, "/ssf/stream", &r);
    let second = r.json()["stream_id"].as_str().unwrap().to_string();
    let q = |id: &str| format!("?stream_id={id}");

    // (method, path, body, who, status): the answers of every SSF operation.
    type Case = (
        Method,
        &'static str,
        String,
        Option<Value>,
        Option<ClientDef>,
        u16,
    );
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            "/ssf/stream",
            String::new(),
            Some(json!({})),
            me.clone(),
            409,
        ),
        (
            Method::POST,
            "/ssf/stream",
            String::new(),
            Some(json!({"bogus": 1})),
            me.clone(),
            400,
        ),
        (
            Method::POST,
            "/ssf/stream",
            String::new(),
            Some(json!({})),
            None,
            401,
        ),
        (
            Method::POST,
            "/ssf/stream",
            String::new(),
            Some(json!({})),
            Some(admin.clone()),
            403,
        ),
        (
            Method::GET,
            "/ssf/stream",
            String::new(),
            None,
            me.clone(),
            200,
        ),
        (Method::GET, "/ssf/stream", q(&id), None, me.clone(), 200),
        (Method::GET, "/ssf/stream", q("nope"), None, me.clone(), 404),
        (Method::GET, "/ssf/stream", q("a/b"), None, me.clone(), 400),
        (Method::GET, "/ssf/stream", String::new(), None, None, 401),
        (
            Method::GET,
            "/ssf/stream",
            String::new(),
            None,
            Some(admin.clone()),
            403,
        ),
        (
            Method::PATCH,
            "/ssf/stream",
            String::new(),
            Some(json!({"stream_id": id, "description": "x"})),
            me.clone(),
            200,
        ),
        (
            Method::PATCH,
            "/ssf/stream",
            String::new(),
            Some(json!({"description": "x"})),
            me.clone(),
            400,
        ),
        (
            Method::PATCH,
            "/ssf/stream",
            String::new(),
            Some(json!({"stream_id": "nope"})),
            me.clone(),
            404,
        ),
        (
            Method::PATCH,
            "/ssf/stream",
            String::new(),
            Some(json!({"stream_id": id})),
            None,
            401,
        ),
        (
            Method::PATCH,
            "/ssf/stream",
            String::new(),
            Some(json!({"stream_id": id})),
            Some(admin.clone()),
            403,
        ),
        (
            Method::PUT,
            "/ssf/stream",
            String::new(),
            Some(json!({"stream_id": id})),
            me.clone(),
            200,
        ),
        (
            Method::PUT,
            "/ssf/stream",
            String::new(),
            Some(json!({"stream_id": id, "iss": "https://other"})),
            me.clone(),
            400,
        ),
        (
            Method::PUT,
            "/ssf/stream",
            String::new(),
            Some(json!({"stream_id": "nope"})),
            me.clone(),
            404,
        ),
        (
            Method::PUT,
            "/ssf/stream",
            String::new(),
            Some(json!({"stream_id": id})),
            None,
            401,
        ),
        (
            Method::PUT,
            "/ssf/stream",
            String::new(),
            Some(json!({"stream_id": id})),
            Some(admin.clone()),
            403,
        ),
        (Method::GET, "/ssf/status", q(&id), None, me.clone(), 200),
        (
            Method::GET,
            "/ssf/status",
            String::new(),
            None,
            me.clone(),
            400,
        ),
        (Method::GET, "/ssf/status", q("nope"), None, me.clone(), 404),
        (Method::GET, "/ssf/status", q(&id), None, None, 401),
        (
            Method::GET,
            "/ssf/status",
            q(&id),
            None,
            Some(admin.clone()),
            403,
        ),
        (
            Method::POST,
            "/ssf/status",
            String::new(),
            Some(json!({"stream_id": id, "status": "paused", "reason": "r"})),
            me.clone(),
            200,
        ),
        (
            Method::POST,
            "/ssf/status",
            String::new(),
            Some(json!({"stream_id": id, "status": "enabled"})),
            me.clone(),
            200,
        ),
        (
            Method::POST,
            "/ssf/status",
            String::new(),
            Some(json!({"stream_id": id, "status": "off"})),
            me.clone(),
            400,
        ),
        (
            Method::POST,
            "/ssf/status",
            String::new(),
            Some(json!({"stream_id": "nope", "status": "paused"})),
            me.clone(),
            404,
        ),
        (
            Method::POST,
            "/ssf/status",
            String::new(),
            Some(json!({"stream_id": id})),
            None,
            401,
        ),
        (
            Method::POST,
            "/ssf/status",
            String::new(),
            Some(json!({"stream_id": id})),
            Some(admin.clone()),
            403,
        ),
        (
            Method::POST,
            "/ssf/verify",
            String::new(),
            Some(json!({"stream_id": id, "state": "s"})),
            me.clone(),
            204,
        ),
        (
            Method::POST,
            "/ssf/verify",
            String::new(),
            Some(json!({"stream_id": id})),
            me.clone(),
            429,
        ),
        (
            Method::POST,
            "/ssf/verify",
            String::new(),
            Some(json!({"stream_id": id, "state": 7})),
            me.clone(),
            400,
        ),
        (
            Method::POST,
            "/ssf/verify",
            String::new(),
            Some(json!({"stream_id": "nope"})),
            me.clone(),
            404,
        ),
        (
            Method::POST,
            "/ssf/verify",
            String::new(),
            Some(json!({"stream_id": id})),
            None,
            401,
        ),
        (
            Method::POST,
            "/ssf/verify",
            String::new(),
            Some(json!({"stream_id": id})),
            Some(admin.clone()),
            403,
        ),
        (
            Method::POST,
            "/ssf/poll/",
            id.clone(),
            Some(json!({"returnImmediately": true})),
            me.clone(),
            200,
        ),
        (
            Method::POST,
            "/ssf/poll/",
            id.clone(),
            Some(json!({"maxEvents": -1})),
            me.clone(),
            400,
        ),
        (
            Method::POST,
            "/ssf/poll/",
            "nope".into(),
            Some(json!({})),
            me.clone(),
            404,
        ),
        (
            Method::POST,
            "/ssf/poll/",
            id.clone(),
            Some(json!({})),
            None,
            401,
        ),
        (
            Method::POST,
            "/ssf/poll/",
            id.clone(),
            Some(json!({})),
            Some(admin.clone()),
            403,
        ),
        (
            Method::DELETE,
            "/ssf/stream",
            q(&second),
            None,
            me.clone(),
            204,
        ),
        (
            Method::DELETE,
            "/ssf/stream",
            String::new(),
            None,
            me.clone(),
            400,
        ),
        (
            Method::DELETE,
            "/ssf/stream",
            q(&second),
            None,
            me.clone(),
            404,
        ),
        (Method::DELETE, "/ssf/stream", q(&id), None, None, 401),
        (
            Method::DELETE,
            "/ssf/stream",
            q(&id),
            None,
            Some(admin.clone()),
            403,
        ),
    ];
    for (method, path, tail, body, who, status) in cases {
        let r = send(method.clone(), format!("{path}{tail}"), body.clone(), who).await;
        assert_eq!(
            r.status,
            status,
            "{method} {path}{tail} {body:?}: {}",
            r.text()
        );
        let template = if path == "/ssf/poll/" {
            "/ssf/poll/{stream_id}"
        } else {
            path
        };
        api.assert(method, template, &r);
    }
    // The verification SET and a revocation's come back from a poll, signed.
    s.admin_revoke("session", Some("openapi-ssf"), "openapi")
        .await;
    // (The node applies the revocation within the propagation bound: poll until then.)
    let r = eventually(
        DEADLINE,
        "the verification and the revocation polled",
        || {
            let send = &send;
            let me = me.clone();
            let id = id.clone();
            async move {
                let r = send(
                    Method::POST,
                    format!("/ssf/poll/{id}"),
                    Some(json!({"returnImmediately": true})),
                    me,
                )
                .await;
                match r.json()["sets"].as_object().map(|s| s.len()) {
                    Some(2) => Ok(r),
                    _ => Err(r.text()),
                }
            }
        },
    )
    .await;
    api.assert(Method::POST, "/ssf/poll/{stream_id}", &r);
    id
}

/// One authenticated request of every Shared Signals operation on `stream` (which need
/// not exist): (method, template, path, body).
fn ssf_requests(stream: &str) -> Vec<(Method, &'static str, String, Option<Value>)> {
    let q = format!("?stream_id={stream}");
    let id = json!({"stream_id": stream});
    vec![
        (Method::GET, "/ssf/stream", "/ssf/stream".into(), None),
        (
            Method::POST,
            "/ssf/stream",
            "/ssf/stream".into(),
            Some(json!({})),
        ),
        (
            Method::PATCH,
            "/ssf/stream",
            "/ssf/stream".into(),
            Some(id.clone()),
        ),
        (
            Method::PUT,
            "/ssf/stream",
            "/ssf/stream".into(),
            Some(id.clone()),
        ),
        (
            Method::DELETE,
            "/ssf/stream",
            format!("/ssf/stream{q}"),
            None,
        ),
        (Method::GET, "/ssf/status", format!("/ssf/status{q}"), None),
        (
            Method::POST,
            "/ssf/status",
            "/ssf/status".into(),
            Some(json!({"stream_id": stream, "status": "paused"})),
        ),
        (Method::POST, "/ssf/verify", "/ssf/verify".into(), Some(id)),
        (
            Method::POST,
            "/ssf/poll/{stream_id}",
            format!("/ssf/poll/{stream}"),
            Some(json!({"returnImmediately": true})),
        ),
    ]
}

/// `method path` with a JSON body, as the Shared Signals receiver.
async fn ssf_request(s: &TestServer, method: Method, path: &str, body: Option<Value>) -> Resp {
    let auth = basic(&ssf_receiver().id, &ssf_receiver().secret);
    let mut headers = vec![("authorization", auth.as_str())];
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    let bytes = body
        .map(|b| serde_json::to_vec(&b).unwrap())
        .unwrap_or_default();
    raw(s, method, path, &headers, &bytes).await
}

/// The checker must be able to say no: wrong bodies, undocumented statuses, missing
/// headers, a body where none is documented.
#[tokio::test]
async fn the_checker_rejects_answers_that_do_not_match() {
    let api = Api::load();
    let idp = idp();
    let s = start(&idp).await;
    let r = s.token_resp(&clients::orders(), &[]).await;
    api.assert(Method::POST, "/token", &r);
    let token = r.json();

    let schema = api.body_schema("post", "/token", "200");
    let mut missing = token.clone();
    missing.as_object_mut().unwrap().remove("access_token");
    let mut extra = token.clone();
    extra["surprise"] = json!(1);
    let mut wrong_type = token.clone();
    wrong_type["expires_in"] = json!("300");
    for bad in [missing, extra, wrong_type] {
        assert!(api.check_body(&schema, &bad).is_err(), "accepted {bad}");
    }

    let intro = api.body_schema("post", "/introspect", "200");
    assert!(api.check_body(&intro, &json!({"active": false})).is_ok());
    for bad in [
        json!({"active": "yes"}),
        json!({"active": false, "reason": "expired"}),
        json!({"active": true, "scope": "x"}),
    ] {
        assert!(api.check_body(&intro, &bad).is_err(), "accepted {bad}");
    }

    // The registry answers are closed too: an unknown node status or field is refused.
    let proof = api.body_schema("get", "/admin/revocations/{seq}", "200");
    let nodes = api.body_schema("get", "/admin/nodes", "200");
    for bad in [
        json!({"seq": 1}),
        json!({"store": {}, "nodes": [], "recent": [], "extra": 1}),
    ] {
        assert!(api.check_body(&proof, &bad).is_err(), "accepted {bad}");
        assert!(api.check_body(&nodes, &bad).is_err(), "accepted {bad}");
    }

    // A signed answer: a JWS whose header and claims have their own schemas.
    let rs = clients::rs_all();
    let auth = basic(&rs.id, &rs.secret);
    let body = form(&[("token", token["access_token"].as_str().unwrap())]);
    let headers = [
        ("content-type", FORM),
        ("authorization", auth.as_str()),
        ("accept", SIGNED),
    ];
    let signed = raw(&s, Method::POST, "/introspect", &headers, body.as_bytes()).await;
    api.assert(Method::POST, "/introspect", &signed);
    let jwt = signed.text();
    let parts: Vec<&str> = jwt.split('.').collect();
    let altered = |part: usize, change: &dyn Fn(&mut Value)| {
        let mut v: Value = serde_json::from_slice(&b64url_decode(parts[part])).unwrap();
        change(&mut v);
        let mut p: Vec<String> = parts.iter().map(|s| s.to_string()).collect();
        p[part] = encode_part(&v);
        let mut r = signed.clone();
        r.body = bytes::Bytes::from(p.join("."));
        r
    };
    let bad_jwts = [
        altered(1, &|c| c["sub"] = json!("orders-service")),
        altered(1, &|c| c["token_introspection"] = json!({"active": "yes"})),
        altered(1, &|c| {
            c.as_object_mut().unwrap().remove("aud");
        }),
        altered(0, &|h| h["typ"] = json!("at+jwt")),
        {
            let mut r = signed.clone();
            r.body = bytes::Bytes::from_static(b"{\"active\":true}");
            r
        },
    ];
    for bad in bad_jwts {
        assert!(
            api.check(&Method::POST, "/introspect", &bad).is_err(),
            "accepted {}",
            bad.text()
        );
    }

    let error = api.body_schema("post", "/introspect", "401");
    assert!(api
        .check_body(
            &error,
            &json!({"error": "invalid_client", "error_description": "x"})
        )
        .is_ok());
    assert!(api
        .check_body(
            &error,
            &json!({"error": "invalid_grant", "error_description": "x"})
        )
        .is_err());

    // A real answer, altered: undocumented status, missing header, wrong body.
    let mut teapot = r.clone();
    teapot.status = hyper::StatusCode::IM_A_TEAPOT;
    assert!(api.check(&Method::POST, "/token", &teapot).is_err());
    let mut no_cache_control = r.clone();
    no_cache_control.headers.remove("cache-control");
    assert!(api
        .check(&Method::POST, "/token", &no_cache_control)
        .is_err());
    let mut bad_body = r.clone();
    bad_body.body = bytes::Bytes::from_static(br#"{"active":false}"#);
    assert!(api.check(&Method::POST, "/token", &bad_body).is_err());
    // An undocumented method must be 405, and the real 200 of /revoke has no body.
    assert!(api.check(&Method::PUT, "/token", &r).is_err());
    let revoked = s
        .post_form(
            "/revoke",
            &[("token", token["access_token"].as_str().unwrap())],
            clients::orders().auth(),
        )
        .await;
    api.assert(Method::POST, "/revoke", &revoked);
    let mut with_body = revoked.clone();
    with_body.body = bytes::Bytes::from_static(b"{}");
    assert!(api.check(&Method::POST, "/revoke", &with_body).is_err());

    // Contracts: an amendment with an extra field or a wrong body, an error with an
    // unknown reason; a 405 of a GET-and-POST path must allow both.
    let c = format!("/admin/contracts/{CONTRACT_CLIENT}");
    let r = s.get(&format!("{c}/1"), clients::admin().auth()).await;
    api.assert(Method::GET, "/admin/contracts/{client}/{version}", &r);
    let amendment = r.json();
    let schema = api.body_schema("get", "/admin/contracts/{client}/{version}", "200");
    let mut extra = amendment.clone();
    extra["surprise"] = json!(1);
    let mut wrong_body = amendment.clone();
    wrong_body["body"]["kind"] = json!("registry");
    let mut bad_stage = amendment.clone();
    bad_stage["body"]["content"]["scopes"]["orders:read"] = json!("maybe");
    for bad in [extra, wrong_body, bad_stage] {
        assert!(api.check_body(&schema, &bad).is_err(), "accepted {bad}");
    }
    let error = api.body_schema("post", "/token", "400");
    let refusal =
        json!({"error": "invalid_scope", "error_description": "x", "reason": "scope_in_shadow"});
    assert!(api.check_body(&error, &refusal).is_ok());
    let mut unknown = refusal.clone();
    unknown["reason"] = json!("because");
    assert!(api.check_body(&error, &unknown).is_err());
    let r = raw(&s, Method::DELETE, &c, &[], b"").await;
    api.assert(Method::DELETE, "/admin/contracts/{client}", &r);
    let mut get_only = r.clone();
    get_only
        .headers
        .insert("allow", hyper::header::HeaderValue::from_static("GET"));
    assert!(api
        .check(&Method::DELETE, "/admin/contracts/{client}", &get_only)
        .is_err());
}

/// The 503s: one node in redis mode, Redis stopped. Every documented 503 must be driven
/// here, with `Retry-After` and the error shape the document gives.
#[tokio::test]
async fn outage_answers_match_the_openapi_document() {
    let api = Api::load();
    let mut redis = RedisProcess::start().await;
    let s = &TestServer::builder()
        .redis(&redis)
        .client(ssf_receiver())
        .config(|c| c.store.max_staleness = ms(500))
        .start()
        .await;
    let (orders, admin) = (clients::orders(), clients::admin());
    let token = s.issue(&orders, &[]).await;
    let list_path = decode_jwt(&token).1["status"]["status_list"]["uri"]
        .as_str()
        .and_then(|u| u.strip_prefix("http://latch.test"))
        .expect("a status list under the issuer")
        .to_string();
    let r = s
        .post_json("/ssf/stream", &json!({}), ssf_receiver().auth())
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let stream = r.json()["stream_id"].as_str().unwrap().to_string();
    let kid = kids_in_state(&s.admin_keys().await, "active")
        .first()
        .expect("an active key")
        .clone();
    // Version 2 of a contract deprecates a scope, so a promotion has something to do.
    let c = format!("/admin/contracts/{CONTRACT_CLIENT}");
    let mut v2 = s.get(&format!("{c}/1"), admin.auth()).await.json()["body"]["content"].clone();
    v2["scopes"]["orders:write"] = json!("deprecated");
    let amend = json!({"base_version": 1, "contract": v2, "changelog": "x", "reason": "openapi"});
    let r = s.post_json(&c, &amend, admin.auth()).await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.logs());
    let registry = s.get("/admin/scopes", admin.auth()).await.json();
    redis.stop();
    // The feed goes down first (503 at once); answers fail closed only once the state
    // is stale too, so wait for that reason.
    eventually(
        DEADLINE,
        "/readyz answers 503 stale once Redis is gone",
        || async {
            let r = s.get("/readyz", None).await;
            if r.status == 503 && r.json()["reason"] == "revocation state is stale" {
                Ok(())
            } else {
                Err(format!("{} {}", r.status, r.text()))
            }
        },
    )
    .await;

    let r = s.get("/readyz", None).await;
    api.assert(Method::GET, "/readyz", &r);
    let form_cases: [(&str, Params, &ClientDef); 3] = [
        (
            "/token",
            vec![("grant_type", "client_credentials")],
            &orders,
        ),
        (
            "/introspect",
            vec![("token", token.as_str())],
            &clients::rs_all(),
        ),
        ("/revoke", vec![("token", token.as_str())], &orders),
    ];
    for (path, params, client) in form_cases {
        let r = s.post_form(path, &params, client.auth()).await;
        r.assert_error(503, "temporarily_unavailable");
        api.assert(Method::POST, path, &r);
    }
    let (cred, bearer) = (
        basic(&clients::rs_all().id, &clients::rs_all().secret),
        format!("Bearer {token}"),
    );
    let headers = [
        ("x-latch-client-authorization", cred.as_str()),
        ("authorization", bearer.as_str()),
    ];
    let r = raw(s, Method::GET, "/gateway/check", &headers, b"").await;
    r.assert_error(503, "temporarily_unavailable");
    api.assert(Method::GET, "/gateway/check", &r);
    let key_path = format!("/admin/keys/{kid}/revoke");
    for (path, template, body) in [
        (
            "/admin/revoke",
            "/admin/revoke",
            json!({"kind": "subject", "value": "alice"}),
        ),
        (
            "/admin/keys/rotate",
            "/admin/keys/rotate",
            json!({"force": true}),
        ),
        (key_path.as_str(), "/admin/keys/{kid}/revoke", json!({})),
        (
            "/admin/store/recover",
            "/admin/store/recover",
            json!({"reason": "openapi"}),
        ),
    ] {
        let r = s.post_json(path, &body, admin.auth()).await;
        r.assert_error(503, "temporarily_unavailable");
        api.assert(Method::POST, template, &r);
    }
    for (path, template) in [
        ("/admin/audit", "/admin/audit"),
        ("/admin/nodes", "/admin/nodes"),
        ("/admin/revocations/1", "/admin/revocations/{seq}"),
    ] {
        let r = s.get(path, admin.auth()).await;
        r.assert_error(503, "temporarily_unavailable");
        api.assert(Method::GET, template, &r);
    }
    let mut amend = amend;
    amend["base_version"] = json!(2);
    for (path, template, body) in [
        (c.clone(), "/admin/contracts/{client}", amend),
        (
            format!("{c}/2/cancel"),
            "/admin/contracts/{client}/{version}/cancel",
            json!({"reason": "openapi"}),
        ),
        (
            format!("{c}/rollback"),
            "/admin/contracts/{client}/rollback",
            json!({"to": 1, "base_version": 2, "reason": "openapi"}),
        ),
        (
            format!("{c}/promote"),
            "/admin/contracts/{client}/promote",
            json!({"name": "orders:write", "kind": "scope", "base_version": 2, "reason": "openapi"}),
        ),
        (
            "/admin/scopes".to_string(),
            "/admin/scopes",
            json!({"base_version": registry["latest_version"], "registry": registry["registry"],
                   "changelog": "x", "reason": "openapi"}),
        ),
    ] {
        let r = s.post_json(&path, &body, admin.auth()).await;
        r.assert_error(503, "temporarily_unavailable");
        api.assert(Method::POST, template, &r);
    }
    let r = s.get("/admin/audit", admin.auth()).await;
    r.assert_error(503, "temporarily_unavailable");
    api.assert(Method::GET, "/admin/audit", &r);
    let r = s
        .post_json(
            "/introspect/batch",
            &json!({"tokens": [token]}),
            clients::rs_all().auth(),
        )
        .await;
    r.assert_error(503, "temporarily_unavailable");
    api.assert(Method::POST, "/introspect/batch", &r);
    for (method, template, path, body) in ssf_requests(&stream) {
        let r = ssf_request(s, method.clone(), &path, body).await;
        r.assert_error(503, "temporarily_unavailable");
        api.assert(method, template, &r);
    }
    for (path, template, client) in [
        ("/grants", "/grants", &orders),
        ("/grants/g-x", "/grants/{id}", &orders),
        ("/admin/grants", "/admin/grants", &admin),
        ("/admin/grants/g-x", "/admin/grants/{id}", &admin),
    ] {
        let r = s.get(path, client.auth()).await;
        r.assert_error(503, "temporarily_unavailable");
        api.assert(Method::GET, template, &r);
    }
    let ask = json!({"scope": "orders:admin", "duration_secs": 60, "justification": "x"});
    let r = s.post_json("/grants", &ask, orders.auth()).await;
    r.assert_error(503, "temporarily_unavailable");
    api.assert(Method::POST, "/grants", &r);
    for verb in ["approve", "deny", "revoke"] {
        let r = s
            .post_json(
                &format!("/admin/grants/g-x/{verb}"),
                &json!({"reason": "x"}),
                admin.auth(),
            )
            .await;
        r.assert_error(503, "temporarily_unavailable");
        api.assert(Method::POST, &format!("/admin/grants/{{id}}/{verb}"), &r);
    }
    // A stale node renders no list (its bits could be behind); the aggregation needs the
    // store.
    let r = s.get(&list_path, None).await;
    r.assert_error(503, "temporarily_unavailable");
    api.assert(Method::GET, "/statuslists/{list_id}", &r);
    let r = s.get("/statuslists", None).await;
    r.assert_error(503, "temporarily_unavailable");
    api.assert(Method::GET, "/statuslists", &r);

    let covered = api.covered.lock().unwrap().clone();
    for (method, template) in api.operations() {
        let documented = api.path_item(&template)[&method]["responses"]
            .get("503")
            .is_some();
        let key = (method.clone(), template.clone(), "503".to_string());
        assert!(
            !documented || covered.contains(&key),
            "{} {template} documents a 503 this test does not drive",
            method.to_uppercase()
        );
    }
}

/// One request whose body never completes, sent by hand (a client library would finish
/// it): the answer, read until latch closes the connection.
async fn stalled_body(s: &TestServer, method: &str, path: &str, content_type: &str) -> Resp {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n\
         Content-Length: 100\r\n\r\n{{\"reason"
    );
    c.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(DEADLINE, async {
        // Bounded: at most 64 reads, and the deadline.
        for _ in 0..64 {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "{path}: latch did not close the connection");
    parse_response(&got).unwrap_or_else(|| panic!("{path}: {:?}", String::from_utf8_lossy(&got)))
}

/// A request that declares a 2 000 000-byte body (over the 1 MiB latch reads to drain a
/// body over its limit) and sends none: the answer to its head.
async fn declared_too_large(s: &TestServer, path: &str, authorization: &str) -> Resp {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Authorization: {authorization}\r\nContent-Length: 2000000\r\n\r\n"
    );
    c.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let answer = tokio::time::timeout(DEADLINE, async {
        // Bounded: at most 64 reads, and the deadline; done once an answer parses.
        for _ in 0..64 {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if let Some(r) = parse_response(&got) {
                return Some(r);
            }
        }
        parse_response(&got)
    })
    .await;
    answer
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("{path}: {:?}", String::from_utf8_lossy(&got)))
}

/// An HTTP/1.1 answer with a Content-Length body, as [`Resp`].
fn parse_response(raw: &[u8]) -> Option<Resp> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut headers = hyper::HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':')?;
        headers.append(
            hyper::header::HeaderName::from_bytes(name.trim().as_bytes()).ok()?,
            hyper::header::HeaderValue::from_str(value.trim()).ok()?,
        );
    }
    let body = &raw[end + 4..];
    let len: usize = headers.get("content-length")?.to_str().ok()?.parse().ok()?;
    Some(Resp {
        status: hyper::StatusCode::from_u16(status).ok()?,
        headers,
        body: bytes::Bytes::copy_from_slice(body.get(..len)?),
    })
}

/// The 408s and 429s: a node with a short body deadline and tiny rates. Every documented
/// 408 and 429 must be driven here.
#[tokio::test]
async fn limit_answers_match_the_openapi_document() {
    let api = Api::load();
    // orders-service: two tokens and one recorded revocation per hour; any address one
    // failed authentication per hour.
    let (orders, admin) = (clients::orders(), clients::admin());
    let s = TestServer::builder()
        .client(ssf_receiver())
        .config(|c| {
            c.limits.body_read_timeout = Some(ms(300));
            c.limits.auth_failure_ip_rate = Some("1/h".into());
            c.limits.auth_failure_ip_burst = Some(1);
            let o = c.client_mut(&orders.id);
            o.token_rate = Some("1/h".into());
            o.token_burst = Some(2);
            o.revoke_rate = Some("1/h".into());
            o.revoke_burst = Some(1);
        })
        .start()
        .await;
    let kid = kids_in_state(&s.admin_keys().await, "active")
        .first()
        .expect("an active key")
        .clone();

    // 408: the body never completes. Read before authentication, so no credentials.
    for (method, template) in AUTHENTICATED.iter().filter(|(m, _)| WITH_BODY.contains(m)) {
        let path = concrete(template, &kid).replace("{stream_id}", "any-stream");
        let media = if takes_json(template) || template.starts_with("/ssf/") {
            "application/json"
        } else {
            FORM
        };
        let verb = method.to_ascii_uppercase();
        let r = stalled_body(&s, &verb, &path, media).await;
        r.assert_error(408, "invalid_request");
        api.assert(Method::from_bytes(verb.as_bytes()).unwrap(), template, &r);
    }

    // 429 by the token rate: two tokens, then refused.
    let first = s.issue(&orders, &[]).await;
    let second = s.issue(&orders, &[]).await;
    let r = s.token_resp(&orders, &[]).await;
    r.assert_error(429, "slow_down");
    api.assert(Method::POST, "/token", &r);
    // The checker insists on Retry-After (a whole number of seconds) on a 429.
    let mut no_retry = r.clone();
    no_retry.headers.remove("retry-after");
    assert!(api.check(&Method::POST, "/token", &no_retry).is_err());
    let mut bad_retry = r.clone();
    bad_retry
        .headers
        .insert("retry-after", hyper::header::HeaderValue::from_static("0"));
    assert!(api.check(&Method::POST, "/token", &bad_retry).is_err());
    // 429 by the revocation rate: one recorded, the next refused (and not recorded).
    let r = s
        .post_form("/revoke", &[("token", &first)], orders.auth())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = s
        .post_form("/revoke", &[("token", &second)], orders.auth())
        .await;
    r.assert_error(429, "slow_down");
    api.assert(Method::POST, "/revoke", &r);
    assert!(
        s.is_active(&second).await,
        "a refused revocation records nothing"
    );

    // One failed authentication uses up this address's failures: from now on every
    // authenticated request from it is refused before its credentials are looked at.
    let r = s
        .post_form(
            "/introspect",
            &[("token", &second)],
            wrong_secret(&clients::rs_all()).auth(),
        )
        .await;
    r.assert_error(401, "invalid_client");
    let key_path = format!("/admin/keys/{kid}/revoke");
    let form_cases: [(&str, Params, ClientDef); 3] = [
        (
            "/token",
            vec![("grant_type", "client_credentials")],
            clients::billing(),
        ),
        (
            "/introspect",
            vec![("token", second.as_str())],
            clients::rs_all(),
        ),
        ("/revoke", vec![("token", second.as_str())], admin.clone()),
    ];
    for (path, params, client) in form_cases {
        let r = s.post_form(path, &params, client.auth()).await;
        r.assert_error(429, "slow_down");
        api.assert(Method::POST, path, &r);
    }
    for (path, template, body) in [
        ("/admin/revoke", "/admin/revoke", json!({"kind": "all"})),
        (
            "/admin/keys/rotate",
            "/admin/keys/rotate",
            json!({"force": true}),
        ),
        (key_path.as_str(), "/admin/keys/{kid}/revoke", json!({})),
        (
            "/admin/store/recover",
            "/admin/store/recover",
            json!({"reason": "x"}),
        ),
    ] {
        let r = s.post_json(path, &body, admin.auth()).await;
        r.assert_error(429, "slow_down");
        api.assert(Method::POST, template, &r);
    }
    for (path, template) in [
        ("/admin/keys", "/admin/keys"),
        ("/admin/audit", "/admin/audit"),
        ("/admin/nodes", "/admin/nodes"),
        ("/admin/revocations/1", "/admin/revocations/{seq}"),
    ] {
        let r = s.get(path, admin.auth()).await;
        r.assert_error(429, "slow_down");
        api.assert(Method::GET, template, &r);
    }
    for (method, template) in AUTHENTICATED.iter().filter(|(_, t)| {
        t.starts_with("/admin/contracts") || *t == "/admin/scopes" || t.contains("/grants")
    }) {
        let path = concrete(template, &kid);
        let r = if *method == "get" {
            s.get(&path, admin.auth()).await
        } else {
            s.post_json(&path, &json!({}), admin.auth()).await
        };
        r.assert_error(429, "slow_down");
        let m = if *method == "get" {
            Method::GET
        } else {
            Method::POST
        };
        api.assert(m, template, &r);
    }
    let r = s
        .post_json(
            "/introspect/batch",
            &json!({"tokens": [second]}),
            clients::rs_all().auth(),
        )
        .await;
    r.assert_error(429, "slow_down");
    api.assert(Method::POST, "/introspect/batch", &r);
    let cred = basic(&clients::rs_all().id, &clients::rs_all().secret);
    let bearer = format!("Bearer {second}");
    let headers = [
        ("x-latch-client-authorization", cred.as_str()),
        ("authorization", bearer.as_str()),
    ];
    let r = raw(&s, Method::GET, "/gateway/check", &headers, b"").await;
    r.assert_error(429, "slow_down");
    api.assert(Method::GET, "/gateway/check", &r);
    for (method, template, path, body) in ssf_requests("any-stream") {
        let r = ssf_request(&s, method.clone(), &path, body).await;
        r.assert_error(429, "slow_down");
        api.assert(method, template, &r);
    }

    // 429 for lists that do not exist, in a bucket of its own at the same rate: one
    // miss uses it up, then every list request from this address is refused.
    let r = s.get("/statuslists/0000000000000000", None).await;
    r.assert_error(404, "not_found");
    let r = s.get("/statuslists/0000000000000001", None).await;
    r.assert_error(429, "slow_down");
    assert!(r.header("retry-after").is_some());
    api.assert(Method::GET, "/statuslists/{list_id}", &r);

    let covered = api.covered.lock().unwrap().clone();
    for (method, template) in api.operations() {
        for status in ["408", "429"] {
            let documented = api.path_item(&template)[&method]["responses"]
                .get(status)
                .is_some();
            let key = (method.clone(), template.clone(), status.to_string());
            assert!(
                !documented || covered.contains(&key),
                "{} {template} documents a {status} this test does not drive",
                method.to_uppercase()
            );
            // The excuse in the main test covers exactly what is driven here.
            assert_eq!(
                documented,
                excused(&method, &template, status),
                "{method} {template} {status}: documented vs excused as {LIMITS}"
            );
        }
    }
}
