//! latch's black-box test harness: starts the real `latch` binary on ephemeral ports (and
//! private `redis-server` children), writes its config from typed values, and speaks
//! HTTP/1.1 to it. Only latch's integration tests use it (`use testkit::prelude::*;`).
//!
//! ```ignore
//! let redis = RedisProcess::start().await;
//! let idp = Idp::new("https://idp.test");
//! let nodes = TestServer::builder()
//!     .redis(&redis)
//!     .trusted_issuer(idp.trusted())
//!     .client(ClientDef::new("idp-hook").roles(&["session_issuer"]))
//!     .config(|c| c.store.max_staleness = secs(1))
//!     .start_nodes(2)
//!     .await;
//! ```
//!
//! # Layout
//!
//! | module | concern |
//! |---|---|
//! | [`server`] | [`TestServer`]: one latch process (spawn, announce line, readiness, kill -9, restart, signals, logs) and [`ServerBuilder`], what a start needs |
//! | [`config`] | [`Config`]: `latch.toml` as typed values serialized with `toml`, and the raw TOML override for odd or hostile configs |
//! | [`clients`] | [`ClientDef`] and the client fixtures most tests share |
//! | [`client_keys`] | [`client_keys::ClientKey`]: a client's EdDSA or ES256 key, its JWKS, `private_key_jwt` assertions |
//! | [`http`] | [`Http`], a small HTTP/1.1 client, and [`Resp`] |
//! | [`api`] | OAuth and admin calls on a [`TestServer`]: issue, introspect, revoke, keys, audit, metrics |
//! | [`issuers`] | [`Idp`]: an identity provider the test controls, its assertions and its `[[trusted_issuers]]` entry |
//! | [`jwt`] | decoding and signing JWTs; verifying with a JWK as a resource server would |
//! | [`redis`] | [`RedisProcess`]: a private standalone Redis (AOF, fsync always) on a free port |
//! | [`redis_ha`] | Redis as operators run it: passwords, ACL, TLS, Sentinel, Cluster |
//! | [`cli`] | the `latch` command for CLI verbs, run to completion with a deadline |
//! | [`poll`] | [`eventually`]: polling to a generous deadline instead of sleeping |
//!
//! Every process the harness starts listens on a loopback port the OS chose (never a
//! fixed one, never Redis's 6379), lives in its own temporary directory and is killed on
//! drop. Waits are bounded by [`DEADLINE`] or [`STARTUP_DEADLINE`]; nothing here measures
//! how fast anything is.

use std::time::Duration;

pub mod api;
pub mod cli;
pub mod client_keys;
pub mod clients;
pub mod config;
pub mod http;
pub mod issuers;
pub mod jwt;
pub mod poll;
pub mod redis;
pub mod redis_ha;
pub mod server;

pub use crate::clients::ClientDef;
pub use crate::config::Config;
pub use crate::http::{Http, Resp};
pub use crate::issuers::Idp;
pub use crate::poll::{eventually, try_eventually};
pub use crate::redis::RedisProcess;
pub use crate::server::{ServerBuilder, TestServer};

/// A fixed key-encryption key (base64 of 32 bytes) so that restarts on the same data
/// directory, and every node of a cluster, can decrypt the stored signing keys.
pub const TEST_KEK: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// Generous deadline for anything that should happen "soon".
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Deadline for a server to announce itself and become ready (RSA key generation in a
/// debug build can be slow on a 2-core machine).
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(90);

/// What most test files need, for `use testkit::prelude::*;`.
pub mod prelude {
    pub use crate::api::{inactive, key_state, kids_in_state};
    pub use crate::cli::{latch_cmd, latch_cmd_async, run_cli};
    pub use crate::clients::{self, sha256_hex, ClientDef};
    pub use crate::config::{days, hours, mins, ms, secs, Alg, Config, StoreKind, TrustedIssuer};
    pub use crate::http::{
        assert_cap_of_two, basic, form, healthz_on, served_connection, Http, Resp,
    };
    pub use crate::issuers::Idp;
    pub use crate::jwt::{
        attacker_ed25519, aud_list, b64url, b64url_decode, decode_jwt, encode_part, kid_of,
        now_secs, rsq, scope_set, sign_ed25519, sign_hs256, verify_with_jwk,
    };
    pub use crate::poll::{eventually, try_eventually};
    pub use crate::redis::{free_port, RedisProcess};
    pub use crate::server::{ServerBuilder, TestServer};
    pub use crate::{DEADLINE, STARTUP_DEADLINE, TEST_KEK};
}
