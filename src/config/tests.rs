use super::*;

const GOOD: &str = r#"
issuer = "https://auth.example"
listen = "127.0.0.1:0"
[tokens]
access_ttl = "10m"
[[clients]]
id = "svc"
secret_sha256 = "0000000000000000000000000000000000000000000000000000000000000001"
grants = ["client_credentials"]
scopes = ["a"]
audiences = ["https://api"]
"#;

fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_toml(
        text,
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

fn err_key(text: &str, env: &[(&str, &str)]) -> String {
    load(text, env).expect_err("must be refused").key
}

#[test]
fn defaults_fill_missing_sections() {
    let c = load(GOOD, &[]).unwrap();
    assert_eq!(c.tokens.access_ttl, Duration::from_secs(600));
    assert_eq!(c.tokens.leeway, Duration::from_secs(30));
    assert_eq!(c.keys.algorithm, Alg::EdDSA);
    assert_eq!(c.keys.rotate_every, Duration::from_secs(86400));
    assert_eq!(c.store.kind, StoreKind::Embedded);
    assert_eq!(c.store.max_staleness, Duration::from_secs(2));
    assert_eq!(c.store.audit_retention, Duration::from_secs(365 * 86_400));
    assert_eq!(c.limits.max_body_bytes, 16384);
    assert_eq!(c.metrics.listen, "127.0.0.1:9090".parse().unwrap());
    assert!(c.jwks_max_age() < c.keys.publish_ahead);
}

#[test]
fn environment_overrides_keys_and_sections() {
    let c = load(
        GOOD,
        &[
            ("LATCH_TOKENS__ACCESS_TTL", "2m"),
            ("LATCH_LIMITS__MAX_BODY_BYTES", "4096"),
            ("LATCH_STORE__PATH", "/var/lib/latch"),
            ("LATCH_ISSUER", "https://other.example"),
            ("LATCH_CLIENTS__0__SCOPES", r#"["a", "b"]"#),
            ("LATCH_KEK", "not a config key"),
            ("UNRELATED", "x"),
        ],
    )
    .unwrap();
    assert_eq!(c.tokens.access_ttl, Duration::from_secs(120));
    assert_eq!(c.limits.max_body_bytes, 4096);
    assert_eq!(c.store.path, PathBuf::from("/var/lib/latch"));
    assert_eq!(c.issuer, "https://other.example");
    assert_eq!(c.clients[0].scopes, ["a", "b"]);
}

#[test]
fn errors_name_the_exact_key() {
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("[tokens]\naccess_ttl = \"2h\"", &[], "tokens.access_ttl"),
        (
            "[tokens]\naccess_ttl = \"5 parsecs\"",
            &[],
            "tokens.access_ttl",
        ),
        ("[tokens]\nleeway = \"1h\"", &[], "tokens.leeway"),
        ("[keys]\npublish_ahead = \"48h\"", &[], "keys.publish_ahead"),
        ("[keys]\nalgorithm = \"HS256\"", &[], "keys.algorithm"),
        (
            "[store]\nkind = \"redis\"\nredis_url = \"\"",
            &[],
            "store.redis_url",
        ),
        ("[store]\nbogus = 1", &[], "store"),
        (
            "[store]\nkind = \"redis\"\nredis_url = \"http://x\"",
            &[],
            "store.redis_url",
        ),
        (
            "[store]\nkind = \"redis\"\nredis_url = \"redis+sentinel://a:1\"",
            &[],
            "store.redis_url",
        ),
        ("[limits]\nmax_body_bytes = 1", &[], "limits.max_body_bytes"),
        (
            "",
            &[("LATCH_TOKENS__ACCESS_TTL", "3h")],
            "tokens.access_ttl",
        ),
        ("", &[("LATCH_CLIENTS__5__ID", "x")], "clients.5.id"),
        // A table with an empty name (found by tests/fuzz.rs).
        ("[\"\"]", &[], "(top)"),
    ];
    for (extra, env, key) in cases {
        // Sections in `extra` must come before the [[clients]] array of GOOD.
        let base = GOOD.replace("[tokens]\naccess_ttl = \"10m\"\n", "");
        let (head, clients) = base.split_at(base.find("[[clients]]").unwrap());
        let text = format!("{head}\n{extra}\n{clients}");
        let got = err_key(&text, env);
        assert!(
            got.starts_with(key),
            "{extra:?} {env:?}: got key {got:?}, want {key:?}"
        );
    }
}

#[test]
fn client_errors_name_index_and_field() {
    let bad = |field: &str, value: &str| GOOD.replace(field, value);
    assert_eq!(
        err_key(
            &bad("secret_sha256 = \"0000", "secret_sha256 = \"zz00"),
            &[]
        ),
        "clients[0].secret_sha256"
    );
    assert_eq!(
        err_key(
            &bad(
                "grants = [\"client_credentials\"]",
                "grants = [\"password\"]"
            ),
            &[]
        ),
        "clients[0].grants[0]"
    );
    assert_eq!(
        err_key(
            &bad(
                "audiences = [\"https://api\"]",
                "audiences = []\nroles = [\"root\"]"
            ),
            &[]
        ),
        "clients[0].roles[0]"
    );
    assert_eq!(
        err_key(&bad("audiences = [\"https://api\"]", "audiences = []"), &[]),
        "clients[0].audiences"
    );
    let twice = format!("{GOOD}{}", &GOOD[GOOD.find("[[clients]]").unwrap()..]);
    assert_eq!(err_key(&twice, &[]), "clients[1].id");
    assert_eq!(
        err_key(
            &GOOD.replace("issuer = \"https://auth.example\"", "issuer = \"auth\""),
            &[]
        ),
        "issuer"
    );
}

#[test]
fn demo_secrets_keep_latch_on_loopback() {
    let demo = GOOD.replace(
        "0000000000000000000000000000000000000000000000000000000000000001",
        DEMO_SECRET_SHA256[0],
    );
    assert!(load(&demo, &[]).unwrap().has_demo_secret());
    let e = load(&demo, &[("LATCH_LISTEN", "0.0.0.0:8080")]).unwrap_err();
    assert_eq!(e.key, "listen");
    assert!(load(&demo, &[("LATCH_LISTEN", "[::1]:8080")]).is_ok());
    assert!(load(GOOD, &[("LATCH_LISTEN", "0.0.0.0:8080")]).is_ok());
}

#[test]
fn the_shipped_config_is_valid_and_demo() {
    let text = include_str!("../../config/latch.toml");
    let c = load(text, &[]).unwrap();
    assert!(c.has_demo_secret());
    assert_eq!(c.store.kind, StoreKind::Embedded);
}

#[test]
fn durations() {
    let ok = [
        ("500ms", 500),
        ("2s", 2000),
        ("5m", 300_000),
        ("1h30m", 5_400_000),
        ("30d", 2_592_000_000),
        // The forms docs/API.md adds (humantime's).
        ("1h 30m", 5_400_000),
        ("1.5h", 5_400_000),
        ("5 m", 300_000),
        ("2 weeks", 14 * 86_400_000),
        ("90 seconds", 90_000),
        ("1M", 2_630_016_000),
        ("1y", 31_557_600_000),
        ("2000us", 2),
        (" 2s ", 2000),
    ];
    for (text, ms) in ok {
        assert_eq!(
            parse_duration(text).unwrap(),
            Duration::from_millis(ms),
            "{text}"
        );
        assert_eq!(
            parse_duration(&format_duration(Duration::from_millis(ms)))
                .unwrap()
                .as_millis(),
            ms as u128
        );
    }
    let bad = [
        ("", "empty"),
        ("5", "time unit needed"),
        ("m", "expected number"),
        ("-1s", "expected number"),
        ("5 parsecs", "unknown time unit \"parsecs\""),
        ("1.5ms", "finer than a millisecond"),
        ("100us", "finer than a millisecond"),
        ("99999999999999999999d", "too large"),
    ];
    for (text, why) in bad {
        let e = parse_duration(text).expect_err(text);
        assert!(
            e.starts_with(&format!("invalid duration {text:?}: ")) && e.contains(why),
            "{text:?}: {e}"
        );
    }
}

#[test]
fn a_bad_duration_names_the_key_and_why() {
    let text = GOOD.replace("access_ttl = \"10m\"", "access_ttl = \"10\"");
    let e = load(&text, &[]).expect_err("a bare number must be refused");
    assert_eq!(e.key, "tokens.access_ttl");
    assert!(
        e.reason.starts_with(
            "invalid duration \"10\": time unit needed, for example 10sec or 10ms \
             (examples: \"500ms\", \"5m\", \"1h30m\")"
        ),
        "{}",
        e.reason
    );
    let e = load(GOOD, &[("LATCH_STORE__MAX_STALENESS", "2.5ms")]).expect_err("sub-ms");
    assert_eq!(e.key, "store.max_staleness");
    assert!(
        e.reason.contains("finer than a millisecond"),
        "{}",
        e.reason
    );
}

#[test]
fn redis_auth_and_tls_keys_are_checked_and_named() {
    let redis = |url: &str| {
        vec![
            ("LATCH_STORE__KIND", "redis".to_string()),
            ("LATCH_STORE__REDIS_URL", url.to_string()),
        ]
    };
    let check = |url: &str, extra: &[(&str, &str)]| {
        let mut env = redis(url);
        env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        load(GOOD, &env)
    };
    let key =
        |url: &str, extra: &[(&str, &str)]| check(url, extra).expect_err("must be refused").key;
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "no pem here").unwrap();
    let garbage = garbage.to_str().unwrap();

    // A numeric-looking password stays a string, and is never printed by {:?}.
    let c = check("redis://h:1", &[("LATCH_STORE__REDIS_PASSWORD", "0123")]).unwrap();
    assert_eq!(c.store.redis_password, Some(Secret("0123".into())));
    assert!(!format!("{c:?}").contains("0123"));
    let o = c.store.redis_options().unwrap();
    assert_eq!(o.redis.password.as_deref(), Some("0123"));
    assert!(!format!("{o:?}").contains("0123"));

    assert_eq!(
        key("redis://h:1", &[("LATCH_STORE__SENTINEL_PASSWORD", "x")]),
        "store.sentinel_password"
    );
    assert_eq!(
        key("redis://h:1", &[("LATCH_STORE__REDIS_USERNAME", "u")]),
        "store.redis_password"
    );
    assert_eq!(
        key(
            "redis+sentinel://h:1/m",
            &[("LATCH_STORE__SENTINEL_USERNAME", "u")]
        ),
        "store.sentinel_password"
    );
    assert_eq!(
        key("redis://:p@h:1", &[("LATCH_STORE__REDIS_PASSWORD", "q")]),
        "store.redis_password"
    );
    assert_eq!(
        key("redis://h:1", &[("LATCH_STORE__TLS_CA_FILE", garbage)]),
        "store.tls_ca_file"
    );
    assert_eq!(
        key("rediss://h:1", &[("LATCH_STORE__TLS_CA_FILE", garbage)]),
        "store.tls_ca_file"
    );
    assert_eq!(
        key(
            "rediss://h:1",
            &[("LATCH_STORE__TLS_CA_FILE", "/nonexistent/ca.pem")]
        ),
        "store.tls_ca_file"
    );
    assert_eq!(
        key("rediss://h:1", &[("LATCH_STORE__TLS_CERT_FILE", garbage)]),
        "store.tls_key_file"
    );
    assert_eq!(
        key("redis+sentinel://u:secret@h:1/m", &[]),
        "store.redis_url"
    );
    let e = check("redis+cluster://u:secret@h:1", &[]).unwrap_err();
    assert!(!e.to_string().contains("secret"), "{e}");
    // TLS without files uses the system roots.
    assert!(check("rediss+cluster://h:1,h:2", &[])
        .unwrap()
        .store
        .redis_options()
        .unwrap()
        .tls
        .is_none());
}

#[test]
fn passwords_do_not_enter_the_audited_digest() {
    let env = |p: &'static str| {
        vec![
            ("LATCH_STORE__KIND", "redis"),
            ("LATCH_STORE__REDIS_URL", "redis://h:1"),
            ("LATCH_STORE__REDIS_PASSWORD", p),
        ]
    };
    let a = load(GOOD, &env("one")).unwrap();
    let b = load(GOOD, &env("two")).unwrap();
    assert_eq!(a.digest, b.digest);
    let c = load(
        GOOD,
        &[
            ("LATCH_STORE__KIND", "redis"),
            ("LATCH_STORE__REDIS_URL", "redis://h:2"),
        ],
    )
    .unwrap();
    assert_ne!(a.digest, c.digest);
    let in_url = |u: &'static str| {
        load(
            GOOD,
            &[
                ("LATCH_STORE__KIND", "redis"),
                ("LATCH_STORE__REDIS_URL", u),
            ],
        )
        .unwrap()
        .digest
    };
    assert_eq!(in_url("redis://:one@h:1"), in_url("redis://:two@h:1"));
}

#[test]
fn replica_acks_default_by_topology_and_are_checked() {
    let redis = |url: &str| {
        vec![
            ("LATCH_STORE__KIND", "redis".to_string()),
            ("LATCH_STORE__REDIS_URL", url.to_string()),
        ]
    };
    let with = |env: Vec<(&'static str, String)>| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        load(GOOD, &env)
    };
    assert_eq!(load(GOOD, &[]).unwrap().store.replicas_ack(), 0);
    assert_eq!(
        with(redis("redis://127.0.0.1:6390"))
            .unwrap()
            .store
            .replicas_ack(),
        0
    );
    let sentinel = with(redis("redis+sentinel://127.0.0.1:26379/main")).unwrap();
    assert_eq!(sentinel.store.replicas_ack(), 1);
    assert_eq!(
        sentinel.store.replica_ack_timeout,
        Duration::from_millis(500)
    );
    let mut env = redis("redis+sentinel://127.0.0.1:26379/main");
    env.push(("LATCH_STORE__MIN_REPLICAS_ACK", "0".into()));
    assert_eq!(with(env).unwrap().store.replicas_ack(), 0);
    // The embedded store has no replicas.
    assert_eq!(
        err_key(GOOD, &[("LATCH_STORE__MIN_REPLICAS_ACK", "1")]),
        "store.min_replicas_ack"
    );
    // WAIT must end well within the staleness bound.
    let mut env = redis("redis+sentinel://127.0.0.1:26379/main");
    env.push(("LATCH_STORE__REPLICA_ACK_TIMEOUT", "1s".into()));
    assert_eq!(with(env).unwrap_err().key, "store.replica_ack_timeout");
}

/// Two trusted issuers with an inline Ed25519 JWKS each, `prefixes` as given.
fn two_issuers(prefixes: [Option<&str>; 2]) -> String {
    let jwks = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"k"}]}"#;
    let mut text = GOOD.to_string();
    for (i, p) in prefixes.iter().enumerate() {
        text.push_str(&format!(
            "[[trusted_issuers]]\nissuer = \"https://idp{i}.example\"\njwks = '{jwks}'\n"
        ));
        if let Some(p) = p {
            text.push_str(&format!("subject_prefix = \"{p}\"\n"));
        }
    }
    text
}

#[test]
fn subject_prefixes_keep_issuers_and_clients_apart() {
    assert!(load(&two_issuers([Some("a|"), Some("b|")]), &[]).is_ok());
    let cases: &[([Option<&str>; 2], &str)] = &[
        ([None, Some("b|")], "trusted_issuers[0].subject_prefix"),
        ([Some("a|"), None], "trusted_issuers[1].subject_prefix"),
        (
            [Some("a|"), Some("a|")],
            "trusted_issuers[1].subject_prefix",
        ),
        // One prefix starting the other: "ab|x" of issuer 1 is "a" + "b|x" of issuer 0.
        (
            [Some("a"), Some("ab|")],
            "trusted_issuers[1].subject_prefix",
        ),
        // Client "svc" would be reachable as prefix "s" + IdP sub "vc".
        ([Some("s"), Some("b|")], "trusted_issuers[0].subject_prefix"),
    ];
    for (prefixes, key) in cases {
        assert_eq!(err_key(&two_issuers(*prefixes), &[]), *key, "{prefixes:?}");
    }
}

#[test]
fn deadlines_rates_and_proxies_are_checked() {
    let c = load(GOOD, &[]).unwrap();
    assert_eq!(c.limits.per_ip_connections(), 2048);
    assert_eq!(c.tokens.max_delegation_depth, 3);
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("LATCH_LIMITS__BODY_READ_TIMEOUT", "1m")],
            "limits.body_read_timeout",
        ),
        (
            &[("LATCH_LIMITS__WRITE_TIMEOUT", "0s")],
            "limits.write_timeout",
        ),
        (
            &[("LATCH_LIMITS__MAX_CONNECTIONS_PER_IP", "0")],
            "limits.max_connections_per_ip",
        ),
        (
            &[("LATCH_LIMITS__TRUSTED_PROXIES", r#"["10.0.0.0/33"]"#)],
            "limits.trusted_proxies[0]",
        ),
        (&[("LATCH_LIMITS__TOKEN_RATE", "fast")], "limits.token_rate"),
        (&[("LATCH_LIMITS__REVOKE_BURST", "0")], "limits.revoke_rate"),
        (
            &[("LATCH_CLIENTS__0__TOKEN_RATE", "5/d")],
            "clients[0].token_rate",
        ),
        (
            &[("LATCH_TOKENS__MAX_DELEGATION_DEPTH", "0")],
            "tokens.max_delegation_depth",
        ),
    ];
    for (env, key) in cases {
        assert_eq!(err_key(GOOD, env), *key, "{env:?}");
    }
    let off = load(GOOD, &[("LATCH_CLIENTS__0__REVOKE_RATE", "off")]).unwrap();
    assert_eq!(off.clients[0].revoke_rate.as_deref(), Some("off"));
}

#[test]
fn clients_are_built_from_their_config() {
    let text = GOOD.replace(
        "audiences = [\"https://api\"]",
        "audiences = [\"https://api\"]\nroles = [\"introspect\"]\ntoken_rate = \"5/s\"",
    );
    let clients = load(&text, &[]).unwrap().clients();
    let c = clients.get("svc").expect("the configured client");
    assert!(c.has_grant(crate::clients::Grant::ClientCredentials));
    assert!(!c.has_grant(crate::clients::Grant::RefreshToken));
    assert!(c.has_role(crate::clients::Role::Introspect));
    assert!(!c.has_role(crate::clients::Role::Admin));
    assert_eq!(c.scopes, vec!["a".to_string()]);
    assert!(c.token_rate.is_some(), "per-client rate parsed");
    assert!(clients.get("other").is_none());
}

#[test]
fn a_bad_jwks_is_reported_by_the_load_not_by_validation() {
    let text = format!(
        "{GOOD}[[trusted_issuers]]\nissuer = \"https://idp.example\"\njwks = '{{\"keys\":[{{\"kty\":\"nope\"}}]}}'\n"
    );
    let c = load(&text, &[]).expect("validation reads no JWKS");
    let e = c
        .trusted_issuers()
        .map(|_| ())
        .expect_err("the JWKS is refused");
    assert_eq!(e.key, "trusted_issuers[0].jwks");
    let missing = format!(
        "{GOOD}[[trusted_issuers]]\nissuer = \"https://idp.example\"\njwks_file = \"/nonexistent/jwks.json\"\n"
    );
    let e = load(&missing, &[])
        .unwrap()
        .trusted_issuers()
        .map(|_| ())
        .expect_err("no such file");
    assert_eq!(e.key, "trusted_issuers[0].jwks_file");
    assert!(e.reason.contains("cannot read"), "{}", e.reason);
}

#[test]
fn introspection_batch_limits_have_defaults_and_bounds() {
    let c = load(GOOD, &[]).unwrap();
    assert_eq!(c.introspection.batch_max, 100);
    assert_eq!(c.introspection.batch_max_body_bytes, 256 * 1024);
    let c = load(
        GOOD,
        &[
            ("LATCH_INTROSPECTION__BATCH_MAX", "1000"),
            ("LATCH_INTROSPECTION__BATCH_MAX_BODY_BYTES", "1048576"),
        ],
    )
    .unwrap();
    assert_eq!(c.introspection.batch_max, 1000);
    assert_eq!(c.introspection.batch_max_body_bytes, 1 << 20);
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("LATCH_INTROSPECTION__BATCH_MAX", "0")],
            "introspection.batch_max",
        ),
        (
            &[("LATCH_INTROSPECTION__BATCH_MAX", "1001")],
            "introspection.batch_max",
        ),
        (
            &[("LATCH_INTROSPECTION__BATCH_MAX_BODY_BYTES", "255")],
            "introspection.batch_max_body_bytes",
        ),
        (
            &[("LATCH_INTROSPECTION__BATCH_MAX_BODY_BYTES", "8388609")],
            "introspection.batch_max_body_bytes",
        ),
        (&[("LATCH_INTROSPECTION__BATCH", "5")], "introspection"),
    ];
    for (env, key) in cases {
        assert!(err_key(GOOD, env).starts_with(key), "{env:?}");
    }
}

#[test]
fn ssf_receivers_and_limits_are_checked_and_named() {
    let receiver = r#"
[[clients]]
id = "rcv"
secret_sha256 = "0000000000000000000000000000000000000000000000000000000000000002"
roles = ["ssf_receiver"]
"#;
    let with = |ssf: &str| format!("{GOOD}{receiver}{ssf}");
    let ok = load(
        &with("[ssf]\nlease = \"1s\"\n[[ssf.receivers]]\nclient_id = \"rcv\"\npush_endpoints = [\"https://r.example/events\", \"http://127.0.0.1:9/x?a=b\"]\n"),
        &[],
    )
    .unwrap();
    assert_eq!(ok.ssf.lease, Duration::from_secs(1));
    assert_eq!(
        ok.ssf.poll_wait(ok.limits.handler_timeout),
        Duration::from_millis(7500)
    );
    // Without [ssf], a short handler deadline stays valid: the poll waits half of it.
    let short = load(
        GOOD,
        &[
            ("LATCH_LIMITS__HANDLER_TIMEOUT", "2s"),
            ("LATCH_LIMITS__BODY_READ_TIMEOUT", "1s"),
        ],
    )
    .unwrap();
    assert_eq!(
        short.ssf.poll_wait(short.limits.handler_timeout),
        Duration::from_secs(1)
    );
    assert!(ok.ssf.receiver("rcv").is_some() && ok.ssf.receiver("svc").is_none());
    let cases: &[(&str, &str)] = &[
        (
            "[[ssf.receivers]]\nclient_id = \"svc\"\n",
            "ssf.receivers[0].client_id",
        ),
        (
            "[[ssf.receivers]]\nclient_id = \"nobody\"\n",
            "ssf.receivers[0].client_id",
        ),
        (
            "[[ssf.receivers]]\nclient_id = \"rcv\"\n[[ssf.receivers]]\nclient_id = \"rcv\"\n",
            "ssf.receivers[1].client_id",
        ),
        (
            "[[ssf.receivers]]\nclient_id = \"rcv\"\naudience = \"\"\n",
            "ssf.receivers[0].audience",
        ),
        (
            "[[ssf.receivers]]\nclient_id = \"rcv\"\npush_endpoints = [\"ftp://x/y\"]\n",
            "ssf.receivers[0].push_endpoints[0]",
        ),
        (
            "[[ssf.receivers]]\nclient_id = \"rcv\"\npush_endpoints = [\"https://u:p@x/y\"]\n",
            "ssf.receivers[0].push_endpoints[0]",
        ),
        (
            "[[ssf.receivers]]\nclient_id = \"rcv\"\npush_endpoints = [\"/relative\"]\n",
            "ssf.receivers[0].push_endpoints[0]",
        ),
        (
            "[[ssf.receivers]]\nclient_id = \"rcv\"\npush_endpoints = [\"https://x/y#f\"]\n",
            "ssf.receivers[0].push_endpoints[0]",
        ),
        (
            "[[ssf.receivers]]\nclient_id = \"rcv\"\nbogus = 1\n",
            "ssf.receivers[0].bogus",
        ),
        ("[ssf]\npoll_wait = \"15s\"\n", "ssf.poll_wait"),
        ("[ssf]\nlease = \"100ms\"\n", "ssf.lease"),
        (
            "[ssf]\nmax_streams_per_receiver = 0\n",
            "ssf.max_streams_per_receiver",
        ),
        ("[ssf]\npoll_max_events = 5000\n", "ssf.poll_max_events"),
        ("[ssf]\npush_timeout = \"0s\"\n", "ssf.push_timeout"),
    ];
    for (ssf, key) in cases {
        assert_eq!(err_key(&with(ssf), &[]), *key, "{ssf}");
    }
}

#[test]
fn audit_retention_is_at_least_a_day() {
    let c = load(GOOD, &[("LATCH_STORE__AUDIT_RETENTION", "90d")]).unwrap();
    assert_eq!(c.store.audit_retention, Duration::from_secs(90 * 86_400));
    for short in ["23h", "0s"] {
        let e = load(GOOD, &[("LATCH_STORE__AUDIT_RETENTION", short)]).expect_err(short);
        assert_eq!(e.key, "store.audit_retention");
        assert!(e.reason.contains("at least 1d"), "{}", e.reason);
    }
    let e = load(GOOD, &[("LATCH_STORE__AUDIT_RETENTION", "forever")]).expect_err("bad");
    assert_eq!(e.key, "store.audit_retention");
}

#[test]
fn tls_files_go_together_and_are_off_by_default() {
    let c = load(GOOD, &[]).unwrap();
    assert!(c.tls.files().is_none());
    assert_eq!(c.tls.watch_interval, Duration::from_secs(2));
    assert_eq!(
        err_key(GOOD, &[("LATCH_TLS__CERT_FILE", "/etc/latch/cert.pem")]),
        "tls.key_file"
    );
    assert_eq!(
        err_key(GOOD, &[("LATCH_TLS__KEY_FILE", "/etc/latch/key.pem")]),
        "tls.cert_file"
    );
    let both = [
        ("LATCH_TLS__CERT_FILE", "/etc/latch/cert.pem"),
        ("LATCH_TLS__KEY_FILE", "/etc/latch/key.pem"),
    ];
    // Validation does no IO: the files are read at start and by `latch check`.
    let c = load(GOOD, &both).unwrap();
    assert!(c.tls.files().is_some());
    let mut fast = both.to_vec();
    fast.push(("LATCH_TLS__WATCH_INTERVAL", "10ms"));
    assert_eq!(err_key(GOOD, &fast), "tls.watch_interval");
    assert_eq!(
        err_key(GOOD, &[("LATCH_TLS__CERTFILE", "x")]),
        "tls.certfile"
    );
}
