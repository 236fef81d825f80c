//! `docs/openapi.json` against the real server: every documented operation is driven to
//! its success and its main error answers, and each answer must have a documented status,
//! the documented required headers, the documented content type, and a body the response
//! schema accepts (JSON Schema 2020-12, the `jsonschema` crate). Every documented
//! (operation, status) must be driven here or be listed in [`NOT_DRIVEN`] with why, so the
//! document cannot grow an answer nobody checks. The 503s need a store outage, so they are
//! driven against a redis-mode node whose Redis is stopped; the 408s and 429s against a
//! node with tiny rate limits and a short body deadline. Negative checks show that the
//! checker rejects wrong bodies, statuses and headers.

mod support;

use std::collections::BTreeSet;
use std::sync::Mutex;

use hyper::Method;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::clients::{self, ORDERS_AUD};
use support::*;

const TE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const AT_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const FORM: &str = "application/x-www-form-urlencoded";

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
/// Operations that authenticate a client, so an auth-failure limit can refuse them (429).
const AUTHENTICATED: [(&str, &str); 18] = [
    ("post", "/token"),
    ("post", "/introspect"),
    ("post", "/revoke"),
    ("post", "/admin/revoke"),
    ("get", "/admin/keys"),
    ("post", "/admin/keys/rotate"),
    ("post", "/admin/keys/{kid}/revoke"),
    ("get", "/admin/audit"),
    ("post", "/admin/store/recover"),
    ("get", "/ssf/stream"),
    ("post", "/ssf/stream"),
    ("patch", "/ssf/stream"),
    ("put", "/ssf/stream"),
    ("delete", "/ssf/stream"),
    ("get", "/ssf/status"),
    ("post", "/ssf/status"),
    ("post", "/ssf/verify"),
    ("post", "/ssf/poll/{stream_id}"),
];

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
    ("post", "/revoke", "503", OUTAGE),
    ("post", "/admin/revoke", "503", OUTAGE),
    ("post", "/admin/keys/rotate", "503", OUTAGE),
    ("post", "/admin/keys/{kid}/revoke", "503", OUTAGE),
    ("get", "/admin/audit", "503", OUTAGE),
    ("get", "/readyz", "503", OUTAGE),
    ("post", "/admin/store/recover", "503", OUTAGE),
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
];

/// Whether [`NOT_DRIVEN`] (or, for 408 and 429, [`LIMITS`]) excuses an answer.
fn excused(method: &str, template: &str, status: &str) -> bool {
    let limited = match status {
        "429" => AUTHENTICATED.contains(&(method, template)),
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
        let schema = &content
            .get(&media)
            .ok_or_else(|| format!("Content-Type {media} is not documented"))?["schema"];
        let body: Value = serde_json::from_slice(&resp.body)
            .map_err(|e| format!("body is not JSON ({e}): {:?}", resp.text()))?;
        self.check_body(schema, &body)
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

struct Idp {
    pkcs8: Vec<u8>,
    public: Vec<u8>,
}

impl Idp {
    fn new() -> Idp {
        use ring::signature::KeyPair as _;
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let kp = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        Idp {
            pkcs8: pkcs8.as_ref().to_vec(),
            public: kp.public_key().as_ref().to_vec(),
        }
    }

    fn trusted_issuer_toml(&self) -> String {
        let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": b64url(&self.public),
                                    "kid": IDP_KID, "alg": "EdDSA", "use": "sig"}]});
        // A prefix, so `/admin/revoke` can refuse an ambiguous subject (400).
        format!(
            "[[trusted_issuers]]\nissuer = {IDP_ISS:?}\nsubject_prefix = {IDP_PREFIX:?}\njwks = '{jwks}'\n\n"
        )
    }

    fn assertion(&self, sub: &str, jti: &str) -> String {
        let now = now_secs();
        let claims = json!({"iss": IDP_ISS, "sub": sub, "aud": "http://latch.test", "iat": now,
                            "exp": now + 120, "jti": jti, "preferred_username": "alice@example.com"});
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some(IDP_KID.into());
        jsonwebtoken::encode(&h, &claims, &EncodingKey::from_ed_der(&self.pkcs8)).unwrap()
    }
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

fn wrong_secret(c: &ClientDef) -> ClientDef {
    c.clone()
        .secret("not-the-secret-0123456789abcdef0123456789")
}

async fn start(idp: &Idp) -> TestServer {
    let mut cfg = ServerConfig::default();
    cfg.clients.extend([idp_hook(), reports(), ssf_receiver()]);
    cfg.extra_toml = format!("{SSF_TOML}{}", idp.trusted_issuer_toml());
    TestServer::start(&cfg).await
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
    let idp = Idp::new();
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
    let r = post(te(idp.assertion("alice", "jti-1"), JWT_TYPE), idp_hook()).await;
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
    let r = post(te(idp.assertion("bob", "jti-2"), JWT_TYPE), idp_hook()).await;
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

    // --- Shared Signals ---
    let poll_id = drive_ssf(&api, &s).await;

    // --- for every documented path: another method (405); with a body, 413 and 415 ---
    let admin_auth = basic(&admin.id, &admin.secret);
    let receiver_auth = basic(&ssf_receiver().id, &ssf_receiver().secret);
    for (method, template) in api.operations() {
        let path = template
            .replace("{kid}", &next)
            .replace("{stream_id}", &poll_id);
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
        } else if template.starts_with("/admin/") {
            (&admin_auth, FORM)
        } else {
            (&admin_auth, "application/json")
        };
        let big = vec![b'a'; 20_000];
        let r = raw(
            &s,
            verb.clone(),
            &path,
            &[("content-type", FORM), ("authorization", auth)],
            &big,
        )
        .await;
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

/// Drives every Shared Signals operation to each documented answer but the limits and
/// outages. Returns a poll stream's id.
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
    let idp = Idp::new();
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
        json!({"active": true}),
    ] {
        assert!(api.check_body(&intro, &bad).is_err(), "accepted {bad}");
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
}

/// The 503s: one node in redis mode, Redis stopped. Every documented 503 must be driven
/// here, with `Retry-After` and the error shape the document gives.
#[tokio::test]
async fn outage_answers_match_the_openapi_document() {
    let api = Api::load();
    let mut redis = RedisProcess::start().await;
    let mut cfg = ServerConfig {
        max_staleness: "500ms".into(),
        ..ServerConfig::default()
    };
    cfg.clients.push(ssf_receiver());
    let nodes = Cluster::start(1, &cfg, &redis).await;
    let s = &nodes[0];
    let (orders, admin) = (clients::orders(), clients::admin());
    let token = s.issue(&orders, &[]).await;
    let r = s
        .post_json("/ssf/stream", &json!({}), ssf_receiver().auth())
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let stream = r.json()["stream_id"].as_str().unwrap().to_string();
    let kid = kids_in_state(&s.admin_keys().await, "active")
        .first()
        .expect("an active key")
        .clone();
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
    let r = s.get("/admin/audit", admin.auth()).await;
    r.assert_error(503, "temporarily_unavailable");
    api.assert(Method::GET, "/admin/audit", &r);
    for (method, template, path, body) in ssf_requests(&stream) {
        let r = ssf_request(s, method.clone(), &path, body).await;
        r.assert_error(503, "temporarily_unavailable");
        api.assert(method, template, &r);
    }

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
    let env = |k: &str, v: &str| (k.to_string(), v.to_string());
    // clients[0] is orders-service: two tokens and one recorded revocation per hour; any
    // address one failed authentication per hour.
    let mut cfg = ServerConfig {
        env: vec![
            env("LATCH_LIMITS__BODY_READ_TIMEOUT", "300ms"),
            env("LATCH_LIMITS__AUTH_FAILURE_IP_RATE", "1/h"),
            env("LATCH_LIMITS__AUTH_FAILURE_IP_BURST", "1"),
            env("LATCH_CLIENTS__0__TOKEN_RATE", "1/h"),
            env("LATCH_CLIENTS__0__TOKEN_BURST", "2"),
            env("LATCH_CLIENTS__0__REVOKE_RATE", "1/h"),
            env("LATCH_CLIENTS__0__REVOKE_BURST", "1"),
        ],
        ..ServerConfig::default()
    };
    cfg.clients.push(ssf_receiver());
    let s = TestServer::start(&cfg).await;
    let (orders, admin) = (clients::orders(), clients::admin());
    assert_eq!(cfg.clients[0].id, orders.id, "clients[0] is orders-service");
    let kid = kids_in_state(&s.admin_keys().await, "active")
        .first()
        .expect("an active key")
        .clone();

    // 408: the body never completes. Read before authentication, so no credentials.
    for (method, template) in AUTHENTICATED.iter().filter(|(m, _)| WITH_BODY.contains(m)) {
        let path = template
            .replace("{kid}", &kid)
            .replace("{stream_id}", "any-stream");
        let media = if template.starts_with("/admin/") || template.starts_with("/ssf/") {
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
    for path in ["/admin/keys", "/admin/audit"] {
        let r = s.get(path, admin.auth()).await;
        r.assert_error(429, "slow_down");
        api.assert(Method::GET, path, &r);
    }
    for (method, template, path, body) in ssf_requests("any-stream") {
        let r = ssf_request(&s, method.clone(), &path, body).await;
        r.assert_error(429, "slow_down");
        api.assert(method, template, &r);
    }

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
