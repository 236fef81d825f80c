//! Unit tests of the node's use cases, without HTTP: a real [`App`] built as
//! `crate::run` builds it (the embedded store in a temporary directory, a KEK, keys
//! reloaded and ticked, a table loaded and fed by a running follower), called through
//! [`token`], [`introspect`] and the functions of [`super::revoke`].
//!
//! The nodes run with `max_staleness = 1h`, so a slow machine never makes a test node
//! stale by accident; staleness is tested with tables made stale on purpose.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio::sync::watch;

use super::follower::{Follower, FollowerConfig};
use super::introspect::{introspect, Answer};
use super::keys::Keys;
use super::revoke::{admin_revoke, recover_store, revoke_token, AdminRevocation, MAX_FIELD};
use super::token::{token, Exchange, Issued, TokenRequest, TYPE_ACCESS_TOKEN, TYPE_JWT};
use super::{App, Error};
use crate::clients::{Client, Grant};
use crate::config::Config;
use crate::keys::Kek;
use crate::policy::{Refusal, RefusalKind};
use crate::revocation::{Point, RevocationEvent, RevocationKind, Table, Verdict};
use crate::sessions;
use crate::store::embedded::EmbeddedStore;
use crate::store::SharedStore;
use crate::time::{now_ms, now_secs};
use crate::tokens::{AccessClaims, Reason};

const ISSUER: &str = "https://latch.test";
const IDP: &str = "https://idp.test";
/// The trusted issuer's `subject_prefix`: user subjects are `idp|<IdP sub>`.
const PREFIX: &str = "idp|";
const ORDERS_AUD: &str = "https://orders.example";
const ORDERS_AUD2: &str = "https://orders-internal.example";
const BILLING_AUD: &str = "https://billing.example";
const REPORTS_AUD: &str = "https://reports.example";
const AUD_B: &str = "https://b.example";
const AUD_C: &str = "https://c.example";
const TE: &str = crate::clients::TOKEN_EXCHANGE;
const RID: &str = "test-request";
/// A bound for waits on the follower, far above anything it needs: never a threshold.
const WAIT: Duration = Duration::from_secs(30);

/// The clients: (id, grants, scopes, audiences, roles).
type ClientRow = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
    &'static [&'static str],
    &'static [&'static str],
);

const CLIENTS: &[ClientRow] = &[
    (
        "orders-service",
        &["client_credentials"],
        &["orders:read", "orders:write"],
        &[ORDERS_AUD, ORDERS_AUD2],
        &[],
    ),
    (
        "billing-service",
        &["client_credentials"],
        &["billing:read"],
        &[BILLING_AUD],
        &[],
    ),
    // The IdP hook: opens user sessions and refreshes them.
    (
        "idp-hook",
        &[TE, "refresh_token"],
        &["orders:read", "orders:write"],
        &[ORDERS_AUD],
        &["session_issuer"],
    ),
    // A chain of services, each accepting the previous one's audience.
    ("svc-a", &[TE], &["orders:read"], &[ORDERS_AUD, AUD_B], &[]),
    ("svc-b", &[TE], &["orders:read"], &[AUD_B, AUD_C], &[]),
    ("svc-c", &[TE], &["orders:read"], &[AUD_C], &[]),
    // Holds a token exchange grant, but its only audience is another API.
    (
        "reports-service",
        &[TE],
        &["orders:read"],
        &[REPORTS_AUD],
        &[],
    ),
    ("gateway-rs", &[], &[], &[], &["introspect"]),
    ("orders-rs", &[], &[], &[ORDERS_AUD], &["introspect"]),
    ("billing-rs", &[], &[], &[BILLING_AUD], &["introspect"]),
    ("security-admin", &[], &[], &[], &["admin", "introspect"]),
    ("nobody", &[], &[], &[], &[]),
];

// === the identity provider ===

/// A trusted issuer whose Ed25519 key the test holds.
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

    fn jwks(&self) -> String {
        let x = crate::keys::material::b64url(&self.public);
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1"}]}).to_string()
    }

    /// A fresh assertion (its own jti) naming the IdP user `sub`.
    fn assertion(&self, sub: &str) -> String {
        let now = now_secs();
        let claims = json!({
            "iss": IDP, "sub": sub, "aud": ISSUER, "iat": now, "exp": now + 120,
            "jti": crate::tokens::random_id(),
        });
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some("k1".into());
        jsonwebtoken::encode(&h, &claims, &EncodingKey::from_ed_der(&self.pkcs8)).unwrap()
    }
}

// === a node ===

fn config_toml(dir: &std::path::Path, idp: &Idp) -> String {
    let list = |v: &[&str]| serde_json::to_string(v).unwrap();
    let mut s = format!(
        "issuer = \"{ISSUER}\"\nlisten = \"127.0.0.1:0\"\n\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n\n\
         [tokens]\naccess_ttl = \"5m\"\nmax_delegation_depth = 2\n\n\
         [store]\nkind = \"embedded\"\npath = {}\nmax_staleness = \"1h\"\n\n",
        serde_json::to_string(dir.to_str().unwrap()).unwrap()
    );
    for (i, (id, grants, scopes, audiences, roles)) in CLIENTS.iter().enumerate() {
        s.push_str(&format!(
            "[[clients]]\nid = \"{id}\"\nsecret_sha256 = \"{:064x}\"\ngrants = {}\n\
             scopes = {}\naudiences = {}\nroles = {}\n\n",
            i + 1,
            list(grants),
            list(scopes),
            list(audiences),
            list(roles),
        ));
    }
    s.push_str(&format!(
        "[[trusted_issuers]]\nissuer = \"{IDP}\"\nsubject_prefix = \"{PREFIX}\"\njwks = '{}'\n",
        idp.jwks()
    ));
    s
}

/// A node with its follower running; stopped when dropped.
struct Node {
    app: App,
    idp: Idp,
    _stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

async fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let idp = Idp::new();
    let config = Config::from_toml(&config_toml(dir.path(), &idp), []).unwrap();
    let store: SharedStore = Arc::new(EmbeddedStore::open(&config.store.path).unwrap());
    let kek = Kek::from_bytes(&[7u8; 32]).unwrap();
    let keys = Arc::new(Keys::new(store.clone(), kek, config.key_policy()));
    keys.reload().await.unwrap();
    keys.tick().await.unwrap();
    let table = Arc::new(Table::new(config.revocation_retention()));
    let clients = config.clients().unwrap();
    let book = super::contracts::load(&store).await.unwrap();
    let contracts = Arc::new(super::contracts::Contracts::new(clients, book));
    let grants = Arc::new(super::grants::Grants::default());
    let follower = Follower::new(
        store.clone(),
        table.clone(),
        keys.clone(),
        FollowerConfig::new(config.store.max_staleness),
    )
    .with_contracts(contracts.clone())
    .with_grants(grants.clone());
    follower.load().await.unwrap();
    let trusted = config.trusted_issuers().unwrap();
    let ssf = super::ssf::Ssf::new(&config).unwrap();
    let status =
        super::status::StatusLists::new(&config, store.clone(), keys.status_record_mac().clone());
    let app = App::new(
        config,
        super::Parts {
            trusted,
            keys,
            table,
            store,
            metrics: metrics_handle(),
            contracts,
            grants,
            node_id: "test-node".into(),
            ssf,
            status,
        },
    );
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(follower.run(stopped));
    Node {
        app,
        idp,
        _stop: stop,
        _dir: dir,
    }
}

fn metrics_handle() -> metrics_exporter_prometheus::PrometheusHandle {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle()
}

/// A client-credentials request.
fn cc<'a>(scope: Option<&'a str>, resource: Option<&'a str>) -> TokenRequest<'a> {
    TokenRequest::ClientCredentials { scope, resource }
}

/// A token-exchange request with only the subject token and its type.
fn ex<'a>(subject_token: &'a str, subject_token_type: &'a str) -> Exchange<'a> {
    Exchange {
        subject_token: Some(subject_token),
        subject_token_type: Some(subject_token_type),
        requested_token_type: None,
        scope: None,
        audience: None,
        resource: None,
    }
}

impl Node {
    fn client(&self, id: &str) -> Arc<Client> {
        self.app
            .clients
            .get(id)
            .expect("a configured client")
            .clone()
    }

    /// A client's rights now (a client that is not configured: one with no rights).
    fn client_rights(&self, id: &str) -> Client {
        self.app
            .contracts
            .client(id, now_ms())
            .map(|c| (*c).clone())
            .unwrap_or_else(|| Client::new(id, [0u8; 32]))
    }

    /// Another node on the same store, keys and configuration, with its own `table`.
    fn with_table(&self, table: Arc<Table>) -> App {
        let config = self.app.config.clone();
        let trusted = config.trusted_issuers().unwrap();
        App::new(
            config,
            super::Parts {
                trusted,
                keys: self.app.keys.clone(),
                table,
                store: self.app.store.clone(),
                metrics: metrics_handle(),
                contracts: self.app.contracts.clone(),
                grants: self.app.grants.clone(),
                node_id: "test-node-2".into(),
                ssf: super::ssf::Ssf::new(&self.app.config).unwrap(),
                status: super::status::StatusLists::new(
                    &self.app.config,
                    self.app.store.clone(),
                    self.app.keys.status_record_mac().clone(),
                ),
            },
        )
    }

    /// Another node on the same store, loaded now; its follower does not run, so it
    /// falls behind (within `max_staleness`) as this node records revocations.
    async fn lagging_node(&self) -> (App, Follower) {
        let table = Arc::new(Table::new(self.app.config.revocation_retention()));
        let follower = Follower::new(
            self.app.store.clone(),
            table.clone(),
            self.app.keys.clone(),
            FollowerConfig::new(self.app.config.store.max_staleness),
        );
        follower.load().await.unwrap();
        (self.with_table(table), follower)
    }

    async fn token(&self, client: &str, req: TokenRequest<'_>) -> Result<Issued, Error> {
        token(&self.app, &self.client(client), req, RID, None).await
    }

    /// An access token of `client` by client credentials.
    async fn service_token(&self, client: &str) -> String {
        self.token(client, cc(None, None))
            .await
            .expect("client credentials")
            .access_token
    }

    async fn open_session(&self, assertion: &str) -> Result<Issued, Error> {
        let req = TokenRequest::TokenExchange(ex(assertion, TYPE_JWT));
        self.token("idp-hook", req).await
    }

    /// A new session of the IdP user `sub`: (access token, refresh token).
    async fn session(&self, sub: &str) -> (String, String) {
        let issued = self
            .open_session(&self.idp.assertion(sub))
            .await
            .expect("session");
        (issued.access_token, issued.refresh_token.expect("refresh"))
    }

    async fn refresh(&self, client: &str, refresh_token: &str) -> Result<Issued, Error> {
        let req = TokenRequest::RefreshToken {
            refresh_token: Some(refresh_token),
            scope: None,
        };
        self.token(client, req).await
    }

    async fn delegate(
        &self,
        client: &str,
        subject_token: &str,
        audience: &str,
    ) -> Result<Issued, Error> {
        let x = Exchange {
            audience: Some(audience),
            ..ex(subject_token, TYPE_ACCESS_TOKEN)
        };
        self.token(client, TokenRequest::TokenExchange(x)).await
    }

    async fn introspect_as(&self, caller: &str, token: &str) -> Answer {
        introspect(&self.app, &self.client(caller), token)
            .await
            .expect("introspection on a fresh node")
    }

    /// The claims of an access token the gateway (all audiences) sees as active.
    async fn claims(&self, token: &str) -> Arc<AccessClaims> {
        match self.introspect_as("gateway-rs", token).await {
            Answer::Access { claims, .. } => claims,
            other => panic!("expected an active access token, got {other:?}"),
        }
    }

    async fn is_active(&self, token: &str) -> bool {
        match self.introspect_as("gateway-rs", token).await {
            Answer::Access { .. } | Answer::Refresh(_) => true,
            Answer::Inactive => false,
        }
    }

    async fn admin(&self, kind: &str, value: &str) -> Result<RevocationEvent, Error> {
        let req = AdminRevocation {
            kind: kind.into(),
            value: Some(value.into()),
            reason: Some("test".into()),
            issuer: None,
        };
        admin_revoke(&self.app, "security-admin", req, RID).await
    }

    async fn head_seq(&self) -> u64 {
        self.app.store.head().await.unwrap().revocation_seq
    }

    /// Waits (bounded by [`WAIT`]) until the follower has applied `seq`, so new tokens
    /// are stamped at or above it.
    async fn applied(&self, seq: u64) {
        let table = &self.app.table;
        let verdict = table.wait_for(Point::new(table.epoch(), seq), WAIT).await;
        assert_eq!(
            verdict,
            Verdict::Live,
            "the follower never applied seq {seq}"
        );
    }
}

// === checking errors ===

/// The variant of an error, for tables of expected refusals.
fn variant(e: &Error) -> &'static str {
    match e {
        Error::InvalidGrant(_) => "InvalidGrant",
        Error::InvalidClient(_) => "InvalidClient",
        Error::InvalidDpopProof(_) | Error::UseDpopNonce(_) => "Dpop",
        Error::Policy(Refusal {
            kind: RefusalKind::Scope,
            ..
        }) => "Policy(Scope)",
        Error::Policy(Refusal {
            kind: RefusalKind::Target,
            ..
        }) => "Policy(Target)",
        Error::Policy(_) => "Policy(Client)",
        Error::Invalid(_) => "Invalid",
        Error::Conflict(_) => "Conflict",
        Error::NotFound(_) => "NotFound",
        Error::InvalidRequest(_) => "InvalidRequest",
        Error::NotPermitted(_) => "NotPermitted",
        Error::GrantNotAllowed(_) => "GrantNotAllowed",
        Error::RateLimited(_) => "RateLimited",
        Error::Stale(_) => "Stale",
        Error::Unavailable(_) => "Unavailable",
        Error::Store(_) => "Store",
        Error::Keys(_) => "Keys",
        Error::Elevation(_) => "Elevation",
        Error::Internal(_) => "Internal",
    }
}

#[track_caller]
fn assert_refused<T: Debug>(result: Result<T, Error>, want: &str, what: &str) {
    match result {
        Ok(v) => panic!("{what}: expected {want}, got Ok({v:?})"),
        Err(e) => assert_eq!(variant(&e), want, "{what}: {e}"),
    }
}

// === client_credentials ===

#[tokio::test]
async fn client_credentials_grant_scopes_within_the_clients_and_the_audience_asked_for() {
    let n = node().await;
    let issued = n.token("orders-service", cc(None, None)).await.unwrap();
    assert_eq!(issued.grant, Grant::ClientCredentials);
    assert_eq!(issued.scope, "orders:read orders:write", "all by default");
    assert_eq!(issued.expires_in, 300);
    assert!(issued.refresh_token.is_none());
    let c = n.claims(&issued.access_token).await;
    assert_eq!(
        (c.iss.as_str(), c.sub.as_str(), c.client_id.as_str()),
        (ISSUER, "orders-service", "orders-service")
    );
    assert_eq!(c.aud, ORDERS_AUD, "the client's first audience by default");
    assert_eq!(c.scope, "orders:read orders:write");
    assert!(c.sid.is_none() && c.act.is_none() && c.dcl.is_empty());

    let asked = Some("orders:write orders:read orders:write");
    let issued = n.token("orders-service", cc(asked, None)).await.unwrap();
    assert_eq!(
        issued.scope, "orders:write orders:read",
        "as asked, each once"
    );
    assert_eq!(n.claims(&issued.access_token).await.scope, issued.scope);

    let other = n
        .token("orders-service", cc(Some("orders:read"), Some(ORDERS_AUD2)))
        .await
        .unwrap();
    let c = n.claims(&other.access_token).await;
    assert_eq!(
        (c.aud.as_str(), c.scope.as_str()),
        (ORDERS_AUD2, "orders:read")
    );
}

#[tokio::test]
async fn token_requests_outside_the_clients_grants_or_missing_parameters_are_refused() {
    let n = node().await;
    let user_token = n.session("alice").await.0;
    let service_token = n.service_token("orders-service").await;
    let assertion = n.idp.assertion("alice");
    let unknown_rt = sessions::new_refresh_token();
    let te = TokenRequest::TokenExchange;
    let no_rt = TokenRequest::RefreshToken {
        refresh_token: None,
        scope: None,
    };
    let cases: Vec<(&str, &str, TokenRequest<'_>, &str)> = vec![
        (
            "refused scope",
            "orders-service",
            cc(Some("orders:read admin"), None),
            "Policy(Scope)",
        ),
        (
            "foreign resource",
            "orders-service",
            cc(None, Some(BILLING_AUD)),
            "Policy(Target)",
        ),
        (
            "no grant at all",
            "nobody",
            cc(None, None),
            "GrantNotAllowed",
        ),
        (
            "introspector",
            "gateway-rs",
            cc(None, None),
            "GrantNotAllowed",
        ),
        (
            "cc client, exchange",
            "orders-service",
            te(ex(&user_token, TYPE_ACCESS_TOKEN)),
            "GrantNotAllowed",
        ),
        (
            "cc client, refresh",
            "orders-service",
            no_rt,
            "GrantNotAllowed",
        ),
        (
            "exchange client, cc",
            "svc-a",
            cc(None, None),
            "GrantNotAllowed",
        ),
        ("no refresh_token", "idp-hook", no_rt, "InvalidRequest"),
        (
            "no subject_token",
            "svc-a",
            te(Exchange {
                subject_token: None,
                ..ex("", TYPE_ACCESS_TOKEN)
            }),
            "InvalidRequest",
        ),
        (
            "no subject_token_type",
            "svc-a",
            te(Exchange {
                subject_token_type: None,
                ..ex(&user_token, "")
            }),
            "InvalidRequest",
        ),
        (
            "unknown subject_token_type",
            "svc-a",
            te(ex(&user_token, "urn:x:saml")),
            "InvalidRequest",
        ),
        (
            "refresh token requested",
            "svc-a",
            te(Exchange {
                requested_token_type: Some("urn:ietf:params:oauth:token-type:refresh_token"),
                ..ex(&user_token, TYPE_ACCESS_TOKEN)
            }),
            "InvalidRequest",
        ),
        (
            "assertion, not a session issuer",
            "svc-a",
            te(ex(&assertion, TYPE_JWT)),
            "NotPermitted",
        ),
        (
            "service token, no delegate_service_tokens",
            "svc-a",
            te(ex(&service_token, TYPE_ACCESS_TOKEN)),
            "GrantNotAllowed",
        ),
        (
            "garbage subject token",
            "svc-a",
            te(ex("garbage", TYPE_ACCESS_TOKEN)),
            "InvalidGrant",
        ),
        (
            "garbage assertion",
            "idp-hook",
            te(ex("garbage", TYPE_JWT)),
            "InvalidGrant",
        ),
        (
            "a latch token as assertion",
            "idp-hook",
            te(ex(&user_token, TYPE_JWT)),
            "InvalidGrant",
        ),
        (
            "refresh token of no session",
            "idp-hook",
            TokenRequest::RefreshToken {
                refresh_token: Some(&unknown_rt),
                scope: None,
            },
            "InvalidGrant",
        ),
        (
            "refresh token not shaped as one",
            "idp-hook",
            TokenRequest::RefreshToken {
                refresh_token: Some("rt.short"),
                scope: None,
            },
            "InvalidGrant",
        ),
    ];
    for (what, client, req, want) in cases {
        assert_refused(n.token(client, req).await, want, what);
    }
    // None of those recorded anything, and the refused assertion is still unused.
    assert_eq!(n.head_seq().await, 0);
    n.open_session(&assertion)
        .await
        .expect("the assertion was not spent");
}

// === fail closed ===

#[tokio::test]
async fn a_stale_node_answers_nothing_but_stale() {
    let n = node().await;
    let (user_token, refresh_token) = n.session("alice").await;
    let service_token = n.service_token("orders-service").await;
    let assertion = n.idp.assertion("bob");
    let max_ms = n.app.max_staleness_ms;
    let now = now_ms();
    let long_ago = Table::with_epoch(
        n.app.config.revocation_retention(),
        n.app.table.epoch(),
        n.app.table.applied(),
    );
    long_ago.mark_fresh(now - 2 * max_ms);
    let tables = [
        (
            "never marked fresh",
            Table::new(n.app.config.revocation_retention()),
        ),
        ("marked fresh long ago", long_ago),
    ];
    for (what, table) in tables {
        let stale = n.with_table(Arc::new(table));
        let s = match stale.fresh(now_ms()) {
            Ok(_) => panic!("{what}: a view of a stale node"),
            Err(s) => s,
        };
        assert_eq!(s.max_ms, max_ms, "{what}");
        assert!(s.age_ms > max_ms, "{what}: {s:?}");
        let client = |id: &str| stale.clients.get(id).unwrap().clone();
        let hook = client("idp-hook");
        let calls: Vec<(&str, Result<String, Error>)> = vec![
            (
                "client_credentials",
                token(&stale, &client("orders-service"), cc(None, None), RID, None)
                    .await
                    .map(|i| i.access_token),
            ),
            (
                "refresh",
                token(
                    &stale,
                    &hook,
                    TokenRequest::RefreshToken {
                        refresh_token: Some(&refresh_token),
                        scope: None,
                    },
                    RID,
                    None,
                )
                .await
                .map(|i| i.access_token),
            ),
            (
                "open a session",
                token(
                    &stale,
                    &hook,
                    TokenRequest::TokenExchange(ex(&assertion, TYPE_JWT)),
                    RID,
                    None,
                )
                .await
                .map(|i| i.access_token),
            ),
            (
                "delegate",
                token(
                    &stale,
                    &client("svc-a"),
                    TokenRequest::TokenExchange(ex(&user_token, TYPE_ACCESS_TOKEN)),
                    RID,
                    None,
                )
                .await
                .map(|i| i.access_token),
            ),
            (
                "introspect an access token",
                introspect(&stale, &client("gateway-rs"), &service_token)
                    .await
                    .map(|a| format!("{a:?}")),
            ),
            (
                "introspect a refresh token",
                introspect(&stale, &client("gateway-rs"), &refresh_token)
                    .await
                    .map(|a| format!("{a:?}")),
            ),
            (
                "RFC 7009, access token",
                revoke_token(&stale, &client("orders-service"), &service_token, RID)
                    .await
                    .map(|()| String::new()),
            ),
            (
                "RFC 7009, refresh token",
                revoke_token(&stale, &hook, &refresh_token, RID)
                    .await
                    .map(|()| String::new()),
            ),
            (
                "admin revocation",
                admin_revoke(
                    &stale,
                    "security-admin",
                    AdminRevocation {
                        kind: "subject".into(),
                        value: Some(format!("{PREFIX}alice")),
                        ..AdminRevocation::default()
                    },
                    RID,
                )
                .await
                .map(|e| format!("{e:?}")),
            ),
        ];
        for (call, result) in calls {
            assert_refused(result, "Stale", &format!("{what}: {call}"));
        }
    }
    // Nothing was recorded, spent or consumed: the fresh node still honours it all.
    assert_eq!(n.head_seq().await, 0);
    assert!(n.is_active(&service_token).await);
    assert!(n.is_active(&user_token).await);
    n.refresh("idp-hook", &refresh_token)
        .await
        .expect("the refresh token was not spent");
    n.open_session(&assertion)
        .await
        .expect("the assertion was not consumed");
}

// === the stamp ===

#[tokio::test]
async fn a_token_carries_its_views_stamp_and_a_later_revocation_still_covers_it() {
    let n = node().await;
    // Something in the log first, so the stamp is not trivially 0.
    let warm_up = n.admin("token", "some-jti").await.unwrap();
    n.applied(warm_up.seq).await;

    let view = n.app.fresh(now_ms()).expect("a fresh node");
    let stamp = view.stamp();
    assert_eq!(stamp, Point::new(n.app.table.epoch(), warm_up.seq));

    // A revocation lands after the view was made (as one can between a grant's
    // revocation check and its signature), and this node has even applied it since.
    let event = n.admin("subject", "orders-service").await.unwrap();
    assert!(event.seq > stamp.seq, "{event:?} vs {stamp:?}");
    n.applied(event.seq).await;

    // Tokens made through the view still carry the stamp read when it was made.
    let claims = view.access_claims(
        "orders-service",
        &n.client_rights("orders-service"),
        ORDERS_AUD.into(),
        "orders:read".into(),
    );
    assert_eq!(Point::new(claims.rse, claims.rsq), stamp);
    let bystander = view.access_claims(
        "billing-service",
        &n.client_rights("billing-service"),
        BILLING_AUD.into(),
        "billing:read".into(),
    );
    let token = view.sign(&claims).unwrap();
    let bystander = view.sign(&bystander).unwrap();

    // So the revocation covers the token signed after it.
    assert_eq!(view.decide(&token).map(|_| ()), Err(Reason::Revoked));
    assert!(matches!(
        n.introspect_as("gateway-rs", &token).await,
        Answer::Inactive
    ));
    let c = n.claims(&bystander).await;
    assert_eq!(
        Point::new(c.rse, c.rsq),
        stamp,
        "the signed token keeps the view's stamp"
    );

    // A view made now stamps above the revocation: its tokens are not covered.
    let later = n.service_token("orders-service").await;
    let c = n.claims(&later).await;
    assert_eq!(Point::new(c.rse, c.rsq), Point::new(stamp.epoch, event.seq));
}

// === sessions ===

#[tokio::test]
async fn a_session_opens_from_an_assertion_and_each_refresh_rotates() {
    let n = node().await;
    let assertion = n.idp.assertion("alice");
    let opened = n.open_session(&assertion).await.unwrap();
    assert_eq!(opened.grant, Grant::TokenExchange);
    let rt1 = opened.refresh_token.clone().expect("a refresh token");
    let c1 = n.claims(&opened.access_token).await;
    assert_eq!(c1.sub, format!("{PREFIX}alice"));
    assert_eq!(
        (c1.client_id.as_str(), c1.aud.as_str()),
        ("idp-hook", ORDERS_AUD)
    );
    let sid = c1.sid.clone().expect("a session id");
    match n.introspect_as("orders-rs", &rt1).await {
        Answer::Refresh(r) => {
            assert_eq!(
                (r.sid.as_str(), r.sub.as_str()),
                (sid.as_str(), c1.sub.as_str())
            );
            assert_eq!(
                (r.rse, r.rsq),
                (c1.rse, c1.rsq),
                "the session keeps its stamp"
            );
        }
        other => panic!("refresh token: {other:?}"),
    }

    // A refused scope spends nothing.
    let wider = TokenRequest::RefreshToken {
        refresh_token: Some(&rt1),
        scope: Some("orders:admin"),
    };
    assert_refused(
        n.token("idp-hook", wider).await,
        "Policy(Scope)",
        "wider scope",
    );

    let narrower = TokenRequest::RefreshToken {
        refresh_token: Some(&rt1),
        scope: Some("orders:read"),
    };
    let refreshed = n.token("idp-hook", narrower).await.unwrap();
    assert_eq!(refreshed.grant, Grant::RefreshToken);
    assert_eq!(refreshed.scope, "orders:read");
    let rt2 = refreshed
        .refresh_token
        .clone()
        .expect("the next refresh token");
    assert_ne!(rt1, rt2);
    let c2 = n.claims(&refreshed.access_token).await;
    assert_eq!(
        (c2.sid.as_deref(), c2.sub.as_str()),
        (Some(sid.as_str()), c1.sub.as_str())
    );

    let stored = |rt: String| {
        let store = n.app.store.clone();
        async move {
            store
                .refresh_token(sessions::store_key(&rt))
                .await
                .unwrap()
                .unwrap()
                .1
        }
    };
    assert!(stored(rt1.clone()).await, "the old refresh token is spent");
    assert!(!stored(rt2.clone()).await, "the new one is not");
    assert!(matches!(
        n.introspect_as("gateway-rs", &rt1).await,
        Answer::Inactive
    ));
    assert!(matches!(
        n.introspect_as("gateway-rs", &rt2).await,
        Answer::Refresh(_)
    ));

    // The next refresh keeps the session's full scope.
    let third = n.refresh("idp-hook", &rt2).await.unwrap();
    assert_eq!(third.scope, "orders:read orders:write");

    assert_refused(
        n.open_session(&assertion).await,
        "InvalidGrant",
        "assertion replay",
    );
    assert_eq!(n.head_seq().await, 0, "nothing revoked");
}

#[tokio::test]
async fn a_spent_refresh_token_presented_again_revokes_the_session() {
    let n = node().await;
    let (at1, rt1) = n.session("alice").await;
    let (other_at, other_rt) = n.session("alice").await;
    let refreshed = n.refresh("idp-hook", &rt1).await.unwrap();
    let (at2, rt2) = (refreshed.access_token, refreshed.refresh_token.unwrap());
    let sid = n.claims(&at2).await.sid.clone().unwrap();
    assert!(n.is_active(&at2).await);
    let before = n.head_seq().await;

    assert_refused(n.refresh("idp-hook", &rt1).await, "InvalidGrant", "reuse");
    assert_eq!(n.head_seq().await, before + 1, "one session revocation");
    assert!(n.app.table.covers(RevocationKind::Session, &sid, 0));
    assert!(!n.is_active(&at2).await, "the new access token dies");
    assert!(!n.is_active(&at1).await);
    assert!(!n.is_active(&rt2).await, "and the new refresh token");
    assert_refused(
        n.refresh("idp-hook", &rt2).await,
        "InvalidGrant",
        "the rotated token",
    );

    // Reuse again: refused, and nothing more to record.
    assert_refused(
        n.refresh("idp-hook", &rt1).await,
        "InvalidGrant",
        "second reuse",
    );
    assert_eq!(n.head_seq().await, before + 1);

    // The user's other session lives on.
    assert!(n.is_active(&other_at).await);
    n.refresh("idp-hook", &other_rt).await.unwrap();
}

// === delegation ===

#[tokio::test]
async fn a_delegated_token_records_its_chain_and_the_depth_is_bounded() {
    let n = node().await;
    let (user_token, _) = n.session("alice").await;
    let user = n.claims(&user_token).await;

    let d1 = n.delegate("svc-a", &user_token, AUD_B).await.unwrap();
    assert_eq!(d1.scope, "orders:read", "only scopes both hold");
    assert!(d1.refresh_token.is_none());
    let c1 = n.claims(&d1.access_token).await;
    assert_eq!(
        (c1.sub.as_str(), c1.sid.as_deref()),
        (user.sub.as_str(), user.sid.as_deref())
    );
    assert_eq!((c1.client_id.as_str(), c1.aud.as_str()), ("svc-a", AUD_B));
    assert_eq!(c1.act, Some(json!({"sub": "svc-a"})));
    assert_eq!(c1.dcl, ["idp-hook"]);
    assert_eq!(c1.djt, [user.jti.as_str()]);
    assert!(c1.exp <= user.exp);

    let d2 = n.delegate("svc-b", &d1.access_token, AUD_C).await.unwrap();
    let c2 = n.claims(&d2.access_token).await;
    assert_eq!(
        c2.act,
        Some(json!({"sub": "svc-b", "act": {"sub": "svc-a"}}))
    );
    assert_eq!(c2.dcl, ["idp-hook", "svc-a"]);
    assert_eq!(c2.djt, [user.jti.clone(), c1.jti.clone()]);

    // max_delegation_depth = 2.
    assert_refused(
        n.delegate("svc-c", &d2.access_token, AUD_C).await,
        "InvalidGrant",
        "depth",
    );
    // Tokens not meant for the caller.
    assert_refused(
        n.delegate("reports-service", &user_token, REPORTS_AUD)
            .await,
        "InvalidGrant",
        "a user token for the orders API, exchanged by the reports service",
    );
    assert_refused(
        n.delegate("svc-c", &d1.access_token, AUD_C).await,
        "InvalidGrant",
        "a token for B, exchanged by C",
    );
    // A target outside the caller's audiences.
    assert_refused(
        n.delegate("svc-a", &user_token, AUD_C).await,
        "Policy(Target)",
        "audience",
    );
}

/// What a test revokes of a delegation chain.
enum Origin {
    /// An admin revokes this client.
    Client(&'static str),
    /// An admin revokes the jti of the chain's token at this index (0: the user's).
    Jti(usize),
    /// The user token's own client revokes it (RFC 7009).
    Rfc7009,
}

#[tokio::test]
async fn revoking_any_origin_of_a_delegated_token_revokes_it() {
    let cases = [
        ("origin client", Origin::Client("idp-hook")),
        ("middle client", Origin::Client("svc-a")),
        ("origin token", Origin::Jti(0)),
        ("middle token", Origin::Jti(1)),
        ("origin token by RFC 7009", Origin::Rfc7009),
    ];
    for (what, origin) in cases {
        let n = node().await;
        let (user_token, _) = n.session("alice").await;
        let d1 = n
            .delegate("svc-a", &user_token, AUD_B)
            .await
            .unwrap()
            .access_token;
        let d2 = n.delegate("svc-b", &d1, AUD_C).await.unwrap().access_token;
        let mut jtis = Vec::new();
        for t in [&user_token, &d1, &d2] {
            jtis.push(n.claims(t).await.jti.clone());
        }
        // d2 is svc-b's, for alice's session: only its chain ties it to what is revoked.
        match origin {
            Origin::Client(id) => drop(n.admin("client", id).await.unwrap()),
            Origin::Jti(i) => drop(n.admin("token", &jtis[i]).await.unwrap()),
            Origin::Rfc7009 => revoke_token(&n.app, &n.client("idp-hook"), &user_token, RID)
                .await
                .unwrap(),
        }
        assert!(!n.is_active(&d2).await, "{what}: the end of the chain dies");
        if matches!(origin, Origin::Client("svc-a") | Origin::Jti(1)) {
            assert!(n.is_active(&user_token).await, "{what}: the origin lives");
        }
    }
}

// === introspection ===

#[tokio::test]
async fn introspection_respects_the_callers_audiences_and_the_issuing_client() {
    let n = node().await;
    let orders = n.service_token("orders-service").await;
    let billing = n.service_token("billing-service").await;
    let (_, refresh_token) = n.session("alice").await;

    let table: [(&str, &str, &str); 8] = [
        ("gateway-rs", "orders", "access"),
        ("gateway-rs", "billing", "access"),
        ("orders-rs", "orders", "access"),
        ("orders-rs", "billing", "inactive"),
        ("billing-rs", "orders", "inactive"),
        ("billing-rs", "billing", "access"),
        ("orders-rs", "refresh", "refresh"),
        ("billing-rs", "refresh", "inactive"),
    ];
    for (caller, which, want) in table {
        let token = match which {
            "orders" => &orders,
            "billing" => &billing,
            _ => &refresh_token,
        };
        let got = match n.introspect_as(caller, token).await {
            Answer::Access { .. } => "access",
            Answer::Refresh(r) => {
                assert_eq!(r.client_id, "idp-hook");
                "refresh"
            }
            Answer::Inactive => "inactive",
        };
        assert_eq!(got, want, "{caller} introspecting the {which} token");
    }

    // A token latch signed for a client that is not (or no longer) configured.
    let view = n.app.fresh(now_ms()).unwrap();
    let ghost = view
        .sign(&view.access_claims(
            "ghost",
            &n.client_rights("ghost"),
            ORDERS_AUD.into(),
            "orders:read".into(),
        ))
        .unwrap();
    let known = view
        .sign(&view.access_claims(
            "orders-service",
            &n.client_rights("orders-service"),
            ORDERS_AUD.into(),
            "orders:read".into(),
        ))
        .unwrap();
    assert!(view.authentic(&ghost).is_ok(), "a valid token otherwise");
    assert_eq!(
        view.decide(&ghost).map(|_| ()),
        Err(crate::tokens::Reason::UnknownClient),
        "the view refuses a token of a client that is not configured"
    );
    assert!(matches!(
        n.introspect_as("gateway-rs", &ghost).await,
        Answer::Inactive
    ));
    assert!(matches!(
        n.introspect_as("gateway-rs", &known).await,
        Answer::Access { .. }
    ));

    for garbage in ["", "garbage", "eyJ.e30.x", &sessions::new_refresh_token()] {
        assert!(
            matches!(
                n.introspect_as("gateway-rs", garbage).await,
                Answer::Inactive
            ),
            "{garbage:?}"
        );
    }
}

// === RFC 7009 ===

#[tokio::test]
async fn rfc7009_the_owner_revokes_others_may_not_and_unknown_tokens_record_nothing() {
    let n = node().await;
    let orders = n.client("orders-service");
    let billing = n.client("billing-service");
    let t = n.service_token("orders-service").await;

    assert_refused(
        revoke_token(&n.app, &billing, &t, RID).await,
        "NotPermitted",
        "another client",
    );
    assert!(n.is_active(&t).await);
    assert_eq!(n.head_seq().await, 0);

    revoke_token(&n.app, &orders, &t, RID).await.unwrap();
    assert!(!n.is_active(&t).await);
    assert_eq!(n.head_seq().await, 1);
    revoke_token(&n.app, &orders, &t, RID).await.unwrap();
    assert_eq!(
        n.head_seq().await,
        1,
        "already revoked: nothing more recorded"
    );

    // An admin may revoke any token.
    let b = n.service_token("billing-service").await;
    revoke_token(&n.app, &n.client("security-admin"), &b, RID)
        .await
        .unwrap();
    assert!(!n.is_active(&b).await);
    assert_eq!(n.head_seq().await, 2);

    // A JWT signed by a key latch does not hold.
    let foreign = n.idp.assertion("x");
    let unknown_rt = sessions::new_refresh_token();
    for token in ["", "garbage", "eyJ.e30.x", &foreign, &unknown_rt] {
        revoke_token(&n.app, &orders, token, RID)
            .await
            .unwrap_or_else(|e| panic!("{token:?}: {e}"));
        assert_eq!(n.head_seq().await, 2, "{token:?}: nothing recorded");
    }

    // A refresh token: only its client may revoke it, and that ends the session.
    let (at, rt) = n.session("alice").await;
    assert_refused(
        revoke_token(&n.app, &orders, &rt, RID).await,
        "NotPermitted",
        "refresh, another client",
    );
    assert!(n.is_active(&rt).await);
    revoke_token(&n.app, &n.client("idp-hook"), &rt, RID)
        .await
        .unwrap();
    assert_eq!(n.head_seq().await, 3);
    assert!(!n.is_active(&at).await, "the session's access token dies");
    assert!(!n.is_active(&rt).await);
    assert_refused(
        n.refresh("idp-hook", &rt).await,
        "InvalidGrant",
        "refresh after revocation",
    );
}

#[tokio::test]
async fn rfc7009_at_a_node_behind_the_issuer_still_revokes_the_token() {
    let n = node().await;
    let (behind, behind_follower) = n.lagging_node().await;
    // This node moves on; the other one has not applied these yet.
    for value in ["j1", "j2", "j3"] {
        let e = n.admin("token", value).await.unwrap();
        n.applied(e.seq).await;
    }
    let t = n.service_token("orders-service").await;
    assert_eq!(n.claims(&t).await.rsq, 3);
    assert_eq!(behind.table.applied(), 0);

    // The owner asks the node that is behind to revoke it.
    let orders = behind.clients.get("orders-service").unwrap().clone();
    revoke_token(&behind, &orders, &t, RID).await.unwrap();
    behind_follower.load().await.unwrap();
    assert_eq!(n.head_seq().await, 4, "the revocation is recorded");
    assert!(!n.is_active(&t).await, "the revoked token is inactive");
    let gateway = behind.clients.get("gateway-rs").unwrap().clone();
    let answer = introspect(&behind, &gateway, &t).await.unwrap();
    assert!(matches!(answer, Answer::Inactive), "{answer:?}");
}

// === admin revocations ===

#[tokio::test]
async fn admin_revocations_check_the_kind_and_the_value() {
    let n = node().await;
    let req = |kind: &str, value: Option<&str>| AdminRevocation {
        kind: kind.into(),
        value: value.map(str::to_string),
        reason: None,
        issuer: None,
    };
    let long = "x".repeat(MAX_FIELD + 1);
    let invalid: Vec<(&str, AdminRevocation)> = vec![
        ("unknown kind", req("everything", Some("x"))),
        ("no kind", req("", Some("x"))),
        ("all with a value", req("all", Some("x"))),
        ("token without value", req("token", None)),
        ("token with an empty value", req("token", Some(""))),
        ("value too long", req("client", Some(&long))),
        (
            "issuer for kind client",
            AdminRevocation {
                issuer: Some(IDP.into()),
                ..req("client", Some("svc-a"))
            },
        ),
        (
            "issuer for kind token",
            AdminRevocation {
                issuer: Some(IDP.into()),
                ..req("token", Some("j"))
            },
        ),
        (
            "untrusted issuer",
            AdminRevocation {
                issuer: Some("https://evil.test".into()),
                ..req("subject", Some("alice"))
            },
        ),
        (
            "bare IdP sub while prefixes are configured",
            req("subject", Some("alice")),
        ),
        (
            "prefixed value with its issuer",
            AdminRevocation {
                issuer: Some(IDP.into()),
                ..req("subject", Some("idp|alice"))
            },
        ),
        (
            "reason too long",
            AdminRevocation {
                reason: Some(long.clone()),
                ..req("session", Some("s"))
            },
        ),
    ];
    for (what, r) in invalid {
        assert_refused(
            admin_revoke(&n.app, "security-admin", r, RID).await,
            "InvalidRequest",
            what,
        );
    }
    assert_eq!(n.head_seq().await, 0, "nothing recorded");

    let at_limit = "x".repeat(MAX_FIELD);
    let valid: Vec<(AdminRevocation, RevocationKind, &str)> = vec![
        (
            req("token", Some(&at_limit)),
            RevocationKind::Token,
            at_limit.as_str(),
        ),
        (
            req("client", Some("svc-a")),
            RevocationKind::Client,
            "svc-a",
        ),
        (
            req("subject", Some("orders-service")),
            RevocationKind::Subject,
            "orders-service",
        ),
        (
            req("subject", Some("idp|bob")),
            RevocationKind::Subject,
            "idp|bob",
        ),
        (
            AdminRevocation {
                issuer: Some(IDP.into()),
                ..req("subject", Some("alice"))
            },
            RevocationKind::Subject,
            "idp|alice",
        ),
        (req("all", None), RevocationKind::All, ""),
        (req("all", Some("")), RevocationKind::All, ""),
    ];
    for (i, (r, kind, value)) in valid.into_iter().enumerate() {
        let what = format!("{r:?}");
        let e = admin_revoke(&n.app, "security-admin", r, RID)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(
            (e.seq, e.kind, e.value.as_str()),
            (i as u64 + 1, kind, value),
            "{what}"
        );
    }
}

#[tokio::test]
async fn a_subject_revocation_kills_that_subjects_tokens_and_sessions() {
    let n = node().await;
    let (alice_at, alice_rt) = n.session("alice").await;
    let alice_delegated = n
        .delegate("svc-a", &alice_at, AUD_B)
        .await
        .unwrap()
        .access_token;
    let (bob_at, bob_rt) = n.session("bob").await;
    let service = n.service_token("orders-service").await;

    let req = AdminRevocation {
        kind: "subject".into(),
        value: Some("alice".into()),
        reason: Some("offboarding".into()),
        issuer: Some(IDP.into()),
    };
    let e = admin_revoke(&n.app, "security-admin", req, RID)
        .await
        .unwrap();
    assert_eq!(e.value, format!("{PREFIX}alice"));

    for (what, token) in [
        ("access", &alice_at),
        ("refresh", &alice_rt),
        ("delegated", &alice_delegated),
    ] {
        assert!(!n.is_active(token).await, "alice's {what} token");
    }
    assert_refused(
        n.refresh("idp-hook", &alice_rt).await,
        "InvalidGrant",
        "alice refreshes",
    );
    for token in [&bob_at, &bob_rt, &service] {
        assert!(n.is_active(token).await, "others are untouched");
    }
    n.refresh("idp-hook", &bob_rt).await.expect("bob refreshes");
    // Once applied, alice can sign in again: the revocation covers only what came before.
    n.applied(e.seq).await;
    let (again, _) = n.session("alice").await;
    assert!(n.is_active(&again).await);
}

// === store recovery ===

#[tokio::test]
async fn store_recovery_opens_a_new_epoch_and_revoke_all_ends_everything_before() {
    let n = node().await;
    let long = "x".repeat(MAX_FIELD + 1);
    for reason in ["", "  ", long.as_str()] {
        let r = recover_store(&n.app, "security-admin", reason, true, RID).await;
        assert_refused(
            r,
            "InvalidRequest",
            &format!("reason of {} bytes", reason.len()),
        );
    }
    let first = n.app.table.epoch();
    let t = n.service_token("orders-service").await;

    // Without revoke_all, tokens of the closed epoch stay valid.
    let r = recover_store(&n.app, "security-admin", "restored a backup", false, RID)
        .await
        .unwrap();
    assert_ne!(r.epoch, first);
    assert_eq!(
        n.app.table.epoch(),
        r.epoch,
        "this node switched before answering"
    );
    assert!(r.closed.iter().any(|c| c.id == first), "{r:?}");
    assert!(r.revoked_all_seq.is_none());
    assert!(n.is_active(&t).await);

    let r2 = recover_store(&n.app, "security-admin", "and again, revoking", true, RID)
        .await
        .unwrap();
    let all_seq = r2.revoked_all_seq.expect("an all revocation");
    assert_eq!(n.app.table.epoch(), r2.epoch);
    assert!(
        !n.is_active(&t).await,
        "revoke_all ends tokens of earlier epochs"
    );
    n.applied(all_seq).await;
    let later = n.service_token("orders-service").await;
    let c = n.claims(&later).await;
    assert_eq!((c.rse, c.rsq), (r2.epoch, all_seq));
}

// === status lists ===

/// The bits of a rendered Status List Token.
fn list_bits(jwt: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let text = std::str::from_utf8(jwt).unwrap();
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.split('.').nth(1).unwrap())
        .unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    crate::status::decode_lst(claims["status_list"]["lst"].as_str().unwrap()).unwrap()
}

fn bit_of(bits: &[u8], idx: usize) -> u8 {
    (bits[idx / 8] >> (idx % 8)) & 1
}

/// Writes may land out of order (a token signed later can be committed first): a list
/// rendered while index 1 has no record shows it INVALID, and the next fetch after its
/// record landed shows it VALID at once, not after the one-second re-serve.
#[tokio::test]
async fn a_record_that_lands_late_reads_valid_at_the_next_fetch() {
    use crate::status::{ListId, ListMeta, Record};
    let n = node().await;
    let lists = n.app.status.clone().expect("status lists on by default");
    let now = now_ms();
    let view = n.app.fresh(now).unwrap();
    let client = n.app.contracts.client("orders-service", now).unwrap();
    let meta = ListMeta::open(ListId(42), 16, now, 60_000, 3_600_000);
    n.app.store.status_open_list(meta.clone()).await.unwrap();
    let record = |i: u64| {
        let claims = view.access_claims(
            "orders-service",
            &client,
            ORDERS_AUD.into(),
            "orders:read".into(),
        );
        let (_, kid) = view.sign_with_kid(&claims).unwrap();
        (
            i,
            Record::new(&kid, &claims).seal(n.app.keys.status_record_mac(), meta.id, i),
        )
    };
    let (r0, r1, r2) = (record(0), record(1), record(2));
    n.app
        .store
        .status_append(meta.id, vec![r0, r2])
        .await
        .unwrap();
    let first = list_bits(&lists.render(&n.app, meta.id).await.unwrap().jwt);
    assert_eq!(
        (
            bit_of(&first, 0),
            bit_of(&first, 1),
            bit_of(&first, 2),
            bit_of(&first, 3)
        ),
        (0, 1, 0, 1),
        "recorded indices VALID, the others INVALID"
    );
    n.app.store.status_append(meta.id, vec![r1]).await.unwrap();
    let second = list_bits(&lists.render(&n.app, meta.id).await.unwrap().jwt);
    assert_eq!(bit_of(&second, 1), 0, "the late record shows at once");
    // A list the store does not hold: not found.
    let unknown = ListId(43);
    assert!(matches!(
        lists.render(&n.app, unknown).await,
        Err(Error::NotFound(_))
    ));
}
