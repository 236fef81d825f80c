//! `latch contracts`: the offline verbs (`check`, `diff`, `plan`) on directories written
//! here, with their exact output and exit codes; every rule of `check` names its file,
//! key and code.

use std::path::Path;

use serde_json::Value;
use testkit::clients;
use testkit::prelude::*;

const SCOPES: &str = r#"
[scopes."orders:read"]
description = "read orders"
owner = "team-orders"
[scopes."orders:write"]
description = "write orders"
owner = "team-orders"
"#;

const V1: &str = r#"
changelog = "initial"
reason = "CHG-1"
[contract]
grants = ["client_credentials"]
scopes = { "orders:read" = "enforced" }
audiences = { "https://orders.example" = "enforced" }
"#;

/// A version file: `changelog`, optional extra top-level lines, then the contract body.
fn version(changelog: &str, top: &str, contract: &str) -> String {
    format!("changelog = {changelog:?}\nreason = \"CHG-2\"\n{top}\n[contract]\n{contract}\n")
}

/// The body of V1 with other scopes.
fn with_scopes(scopes: &str) -> String {
    format!(
        "grants = [\"client_credentials\"]\nscopes = {{ {scopes} }}\naudiences = {{ \"https://orders.example\" = \"enforced\" }}"
    )
}

fn write(dir: &Path, rel: &str, text: &str) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A valid directory: the registry and version 1 of client `svc`.
fn base(dir: &Path) {
    write(dir, "scopes.toml", SCOPES);
    write(dir, "clients/svc/1.toml", V1);
}

/// Runs `latch contracts ARGS` in `cwd`; (exit code, stdout, stderr).
async fn contracts(cwd: &Path, args: &[&str]) -> (i32, String, String) {
    let mut cmd = latch_cmd_async();
    cmd.current_dir(cwd).arg("contracts").args(args);
    let (status, out, err) = run_cli(cmd).await;
    (status.code().expect("exit code"), out, err)
}

/// `check --json` of `dir`: the exit code and each problem as (file relative to the
/// directory, key, code), sorted.
async fn check_json(
    cwd: &Path,
    dir: &Path,
    extra: &[&str],
) -> (i32, Vec<(String, String, String)>) {
    let d = dir.to_str().unwrap();
    let mut args = vec!["check", d, "--json"];
    args.extend(extra);
    let (code, out, err) = contracts(cwd, &args).await;
    let v: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("check --json is not JSON ({e}): {out} {err}"));
    assert_eq!(v["ok"], code == 0, "{v}");
    let mut found: Vec<(String, String, String)> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let at = p["at"].as_str().unwrap();
            let rel = at
                .strip_prefix(&format!("{d}/"))
                .or_else(|| at.strip_prefix(d))
                .unwrap_or(at);
            (
                rel.to_string(),
                p["key"].as_str().unwrap().to_string(),
                p["code"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    found.sort();
    (code, found)
}

#[tokio::test]
async fn check_accepts_a_valid_directory_and_says_what_it_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("contracts");
    base(&d);
    write(
        &d,
        "clients/svc/2.toml",
        &version(
            "write in shadow",
            "",
            &with_scopes(r#""orders:read" = "enforced", "orders:write" = "shadow""#),
        ),
    );
    let (code, out, err) = contracts(tmp.path(), &["check", "contracts"]).await;
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    assert_eq!(
        out,
        "contracts: ok (2 scopes, 1 client, 2 versions; no config: contracts for unconfigured clients are not caught (pass --config))\n"
    );

    // A config that configures svc: checked against it.
    let cfg = TestServer::builder()
        .client(
            ClientDef::new("svc")
                .grants(&["client_credentials"])
                .audiences(&["https://orders.example"]),
        )
        .write_config(tmp.path());
    let (code, out, _) = contracts(
        tmp.path(),
        &["check", "contracts", "--config", cfg.to_str().unwrap()],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out,
        format!(
            "contracts: ok (2 scopes, 1 client, 2 versions; clients checked against {})\n",
            cfg.display()
        )
    );
}

#[tokio::test]
async fn check_prints_a_table_of_problems_and_exits_1() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("contracts");
    base(&d);
    write(
        &d,
        "clients/svc/2.toml",
        &version(
            "",
            "",
            &with_scopes(r#""orders:read" = "enforced", "orders:write" = "enforced""#),
        ),
    );
    let (code, out, err) = contracts(tmp.path(), &["check", "contracts"]).await;
    assert_eq!((code, err.as_str()), (1, ""), "{out}");
    assert_eq!(
        out,
        "FILE                          KEY                    CODE                   MESSAGE\n\
         contracts/clients/svc/2.toml  changelog              missing_changelog      every amendment says what changes and why in `changelog`\n\
         contracts/clients/svc/2.toml  scopes.\"orders:write\"  widening_skips_shadow  \"orders:write\" is granted in this version but was not in shadow in the previous one; add it as \"shadow\" first, promote it later\n\
         contracts: 2 problems\n"
    );
}

/// One rule of `check`: the files written over the base directory (an empty text
/// removes the file), the extra arguments, the exit code, and exactly the problems
/// expected as (file, key, code).
struct Case {
    name: &'static str,
    files: Vec<(&'static str, String)>,
    args: Vec<String>,
    code: i32,
    expect: Vec<(&'static str, &'static str, &'static str)>,
}

fn case(
    name: &'static str,
    files: Vec<(&'static str, String)>,
    code: i32,
    expect: Vec<(&'static str, &'static str, &'static str)>,
) -> Case {
    Case {
        name,
        files,
        args: vec![],
        code,
        expect,
    }
}

fn many_scopes(n: usize) -> String {
    (0..n)
        .map(|i| format!("[scopes.\"s{i}\"]\n"))
        .collect::<String>()
}

fn cases(config: &Path) -> Vec<Case> {
    let two = "clients/svc/2.toml";
    let v2 = |top: &str, body: &str| version("v2", top, body);
    let read = r#""orders:read" = "enforced""#;
    let mut out = vec![
        case("registry syntax", vec![("scopes.toml", "scopes = 1".into())], 1,
            vec![("scopes.toml", "", "invalid_file")]),
        case("version syntax", vec![(two, "changelog = 1".into())], 1,
            vec![(two, "", "invalid_file")]),
        case("unknown field", vec![(two, v2("colour = \"red\"", &with_scopes(read)))], 1,
            vec![(two, "", "invalid_file")]),
        case("file name", vec![("clients/svc/two.toml", V1.into())], 1,
            vec![("clients/svc/two.toml", "", "invalid_file_name")]),
        case("version zero", vec![("clients/svc/0.toml", V1.into())], 1,
            vec![("clients/svc/0.toml", "", "invalid_file_name")]),
        case("time", vec![(two, v2("effective_at = \"tomorrow\"", &with_scopes(read)))], 1,
            vec![(two, "effective_at", "invalid_time")]),
        case("long changelog", vec![(two, version(&"x".repeat(4097), "", &with_scopes(read)))], 1,
            vec![(two, "changelog", "text_too_long")]),
        case("long description",
            vec![("scopes.toml", format!("{SCOPES}\n[scopes.\"orders:admin\"]\ndescription = {:?}\n", "x".repeat(4097)))], 1,
            vec![("scopes.toml", "scopes.\"orders:admin\"", "text_too_long")]),
        case("registry name", vec![("scopes.toml", format!("{SCOPES}\n[scopes.\"bad scope\"]\n"))], 1,
            vec![("scopes.toml", "scopes.\"bad scope\"", "invalid_scope_name")]),
        case("registry size", vec![("scopes.toml", format!("{SCOPES}\n{}", many_scopes(9_999)))], 1,
            vec![("scopes.toml", "scopes", "too_many_items")]),
        case("no registry", vec![("scopes.toml", String::new())], 1,
            vec![("scopes.toml", "", "no_registry"), ("clients/svc/1.toml", "scopes.\"orders:read\"", "unregistered_scope")]),
        case("missing changelog", vec![(two, version("  ", "", &with_scopes(read)))], 1,
            vec![(two, "changelog", "missing_changelog")]),
        case("version gap", vec![("clients/svc/3.toml", v2("", &with_scopes(read)))], 1,
            vec![("clients/svc/3.toml", "", "version_gap")]),
        case("effective order",
            vec![
                (two, v2("effective_at = \"2030-01-01T00:00:00Z\"", &with_scopes(read))),
                ("clients/svc/1.toml", V1.replace("[contract]", "effective_at = \"2031-01-01T00:00:00Z\"\n[contract]")),
            ], 1,
            vec![(two, "effective_at", "effective_at_order")]),
        case("rollback content",
            vec![(two, v2("rollback_of = 1", &with_scopes(r#""orders:read" = "deprecated""#)))], 1,
            vec![(two, "rollback_of", "rollback_mismatch")]),
        case("rollback target", vec![(two, v2("rollback_of = 7", &with_scopes(read)))], 1,
            vec![(two, "rollback_of", "rollback_unknown_version")]),
        case("rollback forward", vec![(two, v2("rollback_of = 2", &with_scopes(read)))], 1,
            vec![(two, "rollback_of", "rollback_unknown_version")]),
        case("grant", vec![(two, v2("", &with_scopes(read).replace("[\"client_credentials\"]", "[\"client_credentials\", \"password\"]")))], 1,
            vec![(two, "grants.\"password\"", "unknown_grant")]),
        case("role", vec![(two, v2("", &format!("{}\nroles = [\"root\"]", with_scopes(read))))], 1,
            vec![(two, "roles.\"root\"", "unknown_role")]),
        case("auth method", vec![(two, v2("", &format!("{}\nauth_methods = [\"none\"]", with_scopes(read))))], 1,
            vec![(two, "auth_methods.\"none\"", "unknown_auth_method")]),
        case("contract size",
            vec![(two, v2("", &format!("{}\ntrusted_issuers = [{}]", with_scopes(read),
                (0..257).map(|i| format!("\"https://idp{i}\"")).collect::<Vec<_>>().join(","))))], 1,
            vec![(two, "scopes", "too_many_items")]),
        case("scope name", vec![(two, v2("", &with_scopes(r#""orders:read" = "enforced", "bad scope" = "shadow""#)))], 1,
            vec![(two, "scopes.\"bad scope\"", "invalid_scope_name")]),
        case("unregistered", vec![(two, v2("", &with_scopes(r#""orders:read" = "enforced", "orders:admin" = "shadow""#)))], 1,
            vec![(two, "scopes.\"orders:admin\"", "unregistered_scope")]),
        case("retired",
            vec![("scopes.toml", SCOPES.replace("owner = \"team-orders\"\n[scopes.\"orders:write\"]", "owner = \"team-orders\"\nstatus = \"retired\"\n[scopes.\"orders:write\"]"))], 1,
            vec![("clients/svc/1.toml", "scopes.\"orders:read\"", "scope_retired")]),
        case("audience", vec![(two, v2("", &with_scopes(read).replace("\"https://orders.example\" = \"enforced\"", "\"https://orders.example\" = \"enforced\", \"\" = \"shadow\"")))], 1,
            vec![(two, "audiences", "invalid_audience")]),
        case("no audience", vec![(two, v2("", &with_scopes(read).replace("\"https://orders.example\" = \"enforced\"", "\"https://orders.example\" = \"deprecated\", \"https://new.example\" = \"shadow\"")))], 0,
            vec![]),
        case("ttl above the cap", vec![(two, v2("", &format!("{}\naccess_ttl_secs = 3601", with_scopes(read))))], 1,
            vec![(two, "access_ttl_secs", "access_ttl_out_of_range")]),
        case("ttl zero", vec![(two, v2("", &format!("{}\naccess_ttl_secs = 0", with_scopes(read))))], 1,
            vec![(two, "access_ttl_secs", "access_ttl_out_of_range")]),
        case("ttl at the cap", vec![(two, v2("", &format!("{}\naccess_ttl_secs = 3600", with_scopes(read))))], 0,
            vec![]),
        case("widening", vec![(two, v2("", &with_scopes(r#""orders:read" = "enforced", "orders:write" = "enforced""#)))], 1,
            vec![(two, "scopes.\"orders:write\"", "widening_skips_shadow")]),
        case("audience widening", vec![(two, v2("", &with_scopes(read).replace("\"https://orders.example\" = \"enforced\"", "\"https://orders.example\" = \"enforced\", \"https://new.example\" = \"enforced\"")))], 1,
            vec![(two, "audiences.\"https://new.example\"", "widening_skips_shadow")]),
        case("narrowing", vec![(two, v2("", &with_scopes(r#""orders:write" = "shadow""#)))], 1,
            vec![(two, "scopes.\"orders:read\"", "narrowing_skips_deprecated")]),
        case("narrowing to shadow", vec![(two, v2("", &with_scopes(r#""orders:read" = "shadow""#)))], 1,
            vec![(two, "scopes.\"orders:read\"", "narrowing_skips_deprecated")]),
        case("ramp done right",
            vec![
                (two, v2("", &with_scopes(r#""orders:read" = "deprecated", "orders:write" = "shadow""#))),
                ("clients/svc/3.toml", v2("", &with_scopes(r#""orders:write" = "enforced""#))),
            ], 0, vec![]),
    ];
    // A client that has only a shadow audience cannot get client_credentials tokens.
    out.push(case(
        "only shadow audiences",
        vec![
            (two, v2("", &with_scopes(read).replace("\"https://orders.example\" = \"enforced\"", "\"https://orders.example\" = \"deprecated\", \"https://new.example\" = \"shadow\""))),
            ("clients/svc/3.toml", v2("", &with_scopes(read).replace("\"https://orders.example\" = \"enforced\"", "\"https://new.example\" = \"shadow\""))),
        ],
        1,
        vec![("clients/svc/3.toml", "audiences", "no_audience")],
    ));
    // Unknown clients, against a config that does not configure `svc`.
    let mut unknown = case(
        "unknown client",
        vec![],
        1,
        vec![("clients/svc/1.toml", "", "unknown_client")],
    );
    unknown.args = vec!["--config".into(), config.display().to_string()];
    out.push(unknown);
    let mut bad_config = case(
        "bad config",
        vec![],
        2,
        vec![("latch-bad.toml", "tokens.access_ttl", "invalid_config")],
    );
    bad_config.args = vec![
        "--config".into(),
        config
            .with_file_name("latch-bad.toml")
            .display()
            .to_string(),
    ];
    out.push(bad_config);
    // Unreadable input: exit 2.
    out.push(case(
        "unreadable version",
        vec![("clients/svc/2.toml/x", "x".into())],
        2,
        vec![(two, "", "unreadable")],
    ));
    out.push(case(
        "unreadable registry",
        vec![
            ("scopes.toml", String::new()),
            ("scopes.toml/x", "x".into()),
        ],
        2,
        vec![("scopes.toml", "", "unreadable")],
    ));
    out
}

#[tokio::test]
async fn every_check_rule_names_file_key_and_code() {
    let tmp = tempfile::tempdir().unwrap();
    let config = TestServer::builder().write_config(tmp.path());
    let bad = TestServer::builder().config(|c| c.tokens.access_ttl = hours(2));
    std::fs::write(
        config.with_file_name("latch-bad.toml"),
        bad.render(tmp.path(), &tmp.path().join("data")),
    )
    .unwrap();
    let mut failures = vec![];
    for (i, c) in cases(&config).into_iter().enumerate() {
        let d = tmp.path().join(format!("case{i}"));
        base(&d);
        for (rel, text) in &c.files {
            let path = d.join(rel);
            if text.is_empty() {
                std::fs::remove_file(&path).unwrap();
            } else {
                write(&d, rel, text);
            }
        }
        let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
        let (code, found) = check_json(tmp.path(), &d, &args).await;
        let mut expect: Vec<(String, String, String)> = c
            .expect
            .iter()
            .map(|(f, k, code)| {
                let f = if f.starts_with("latch") {
                    config.with_file_name(f).display().to_string()
                } else {
                    f.to_string()
                };
                (f, k.to_string(), code.to_string())
            })
            .collect();
        expect.sort();
        if (code, &found) != (c.code, &expect) {
            failures.push(format!(
                "{}: exit {code}, found {found:?}; expected exit {}, {expect:?}",
                c.name, c.code
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn check_reads_the_default_config_unless_told_not_to() {
    let tmp = tempfile::tempdir().unwrap();
    base(&tmp.path().join("contracts"));
    // config/latch.toml in the working directory, without `svc`.
    let cfg_dir = tmp.path().join("config");
    std::fs::create_dir_all(&cfg_dir).unwrap();
    TestServer::builder().write_config(&cfg_dir);
    let d = tmp.path().join("contracts");
    let (code, found) = check_json(tmp.path(), &d, &[]).await;
    assert_eq!(
        (code, found),
        (
            1,
            vec![(
                "clients/svc/1.toml".to_string(),
                String::new(),
                "unknown_client".to_string()
            )]
        )
    );
    let (code, found) = check_json(tmp.path(), &d, &["--no-config"]).await;
    assert_eq!((code, found), (0, vec![]));
    // An empty or missing directory cannot be checked.
    let (code, found) = check_json(tmp.path(), &tmp.path().join("nothing"), &["--no-config"]).await;
    assert_eq!(
        (code, found),
        (
            2,
            vec![(String::new(), String::new(), "empty_directory".to_string())]
        )
    );
}

fn diff_dirs(tmp: &Path) {
    let a = tmp.join("a");
    base(&a);
    let b = tmp.join("b");
    write(
        &b,
        "scopes.toml",
        &SCOPES.replace(
            "owner = \"team-orders\"\n[scopes.\"orders:write\"]",
            "owner = \"team-orders\"\nstatus = \"deprecated\"\n[scopes.\"orders:write\"]",
        ),
    );
    write(&b, "clients/svc/1.toml", V1);
    write(
        &b,
        "clients/svc/2.toml",
        &version(
            "ramp",
            "",
            &format!(
                "{}\naccess_ttl_secs = 300\nauth_methods = [\"client_secret_basic\"]",
                with_scopes(r#""orders:read" = "deprecated", "orders:write" = "shadow""#)
            ),
        ),
    );
    write(&b, "clients/new/1.toml", V1);
    write(&a, "clients/gone/1.toml", V1);
}

#[tokio::test]
async fn diff_shows_what_widens_and_marks_what_narrows() {
    let tmp = tempfile::tempdir().unwrap();
    diff_dirs(tmp.path());
    let (code, out, err) = contracts(tmp.path(), &["diff", "a", "b"]).await;
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    assert_eq!(
        out,
        "CLIENT      VERSIONS  CHANGE                                            EFFECT\n\
         (registry)  -         scope orders:read: active → deprecated            -\n\
         gone        1 → -     - scope orders:read (was enforced)                NARROWS\n\
         gone        1 → -     - audience https://orders.example (was enforced)  NARROWS\n\
         gone        1 → -     grants: client_credentials → none                 NARROWS\n\
         new         - → 1     + scope orders:read (enforced)                    widens\n\
         new         - → 1     + audience https://orders.example (enforced)      widens\n\
         new         - → 1     grants: none → client_credentials                 widens\n\
         svc         1 → 2     + scope orders:write (shadow)                     -\n\
         svc         1 → 2     scope orders:read: enforced → deprecated          -\n\
         svc         1 → 2     auth_methods: any → client_secret_basic           NARROWS\n\
         svc         1 → 2     access_ttl_secs: default → 300s                   NARROWS\n\
         NARROWS: when that version takes effect, live tokens beyond it become inactive\n"
    );

    let (code, out, _) = contracts(tmp.path(), &["diff", "a", "b", "--json"]).await;
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["widens"].clone(), v["narrows"].clone()),
        (Value::Bool(true), Value::Bool(true))
    );
    assert_eq!(v["rows"].as_array().unwrap().len(), 11, "{v}");
    let svc = v["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client"] == "svc")
        .unwrap();
    assert_eq!(svc["from_version"], 1);
    assert_eq!(svc["to_version"], 2);
    assert_eq!(
        svc["added"],
        serde_json::json!([["scope orders:write", "shadow"]])
    );
    assert_eq!(
        svc["moved"],
        serde_json::json!([["scope orders:read", "enforced", "deprecated"]])
    );
    assert_eq!(svc["narrows"], true);

    // A shadow entry alone widens nothing.
    write(
        &tmp.path().join("c"),
        "clients/svc/2.toml",
        &version(
            "shadow",
            "",
            &with_scopes(r#""orders:read" = "enforced", "orders:write" = "shadow""#),
        ),
    );
    base(&tmp.path().join("c"));
    let (code, out, _) = contracts(tmp.path(), &["diff", "a", "c", "--json"]).await;
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["widens"].clone(), v["narrows"].clone()),
        (Value::Bool(false), Value::Bool(true)),
        "gone narrows: {v}"
    );

    // Identical directories, and directories that cannot be read.
    let (code, out, _) = contracts(tmp.path(), &["diff", "a", "a"]).await;
    assert_eq!((code, out.as_str()), (0, "no changes from a to a\n"));
    let (code, out, err) = contracts(tmp.path(), &["diff", "a", "missing"]).await;
    assert_eq!(code, 2, "{out}");
    assert_eq!(
        out,
        "FILE     KEY  CODE             MESSAGE\n\
         missing  -    empty_directory  neither scopes.toml nor clients/ found\n"
    );
    assert_eq!(err, "latch: 1 problem in the contracts directory\n");
}

#[tokio::test]
async fn plan_shows_what_is_in_force_at_an_instant() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("contracts");
    base(&d);
    write(
        &d,
        "clients/svc/2.toml",
        &version(
            "write in shadow",
            "effective_at = \"2030-01-01T00:00:00Z\"",
            &with_scopes(r#""orders:read" = "enforced", "orders:write" = "shadow""#),
        ),
    );
    write(
        &d,
        "clients/svc/3.toml",
        &version(
            "promote write, deprecate read",
            "effective_at = \"2030-02-01T12:30:00Z\"",
            &format!(
                "{}\nsuspended = true",
                with_scopes(r#""orders:read" = "deprecated", "orders:write" = "enforced""#)
            ),
        ),
    );
    let plan = |at: &'static str| {
        let cwd = tmp.path().to_path_buf();
        async move { contracts(&cwd, &["plan", "contracts", "--at", at]).await }
    };
    let (code, out, _) = plan("2029-12-31T23:59:59Z").await;
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "in force at 2029-12-31 23:59:59 UTC:\n\
         CLIENT  VERSION  EFFECTIVE (UTC)  SCOPES       AUDIENCES               SHADOW  DEPRECATED  SUSPENDED\n\
         svc     1        when applied     orders:read  https://orders.example  -       -           no\n"
    );
    let (_, out, _) = plan("2030-01-01T00:00:00Z").await;
    assert_eq!(
        out,
        "in force at 2030-01-01 00:00:00 UTC:\n\
         CLIENT  VERSION  EFFECTIVE (UTC)      SCOPES       AUDIENCES               SHADOW        DEPRECATED  SUSPENDED\n\
         svc     2        2030-01-01 00:00:00  orders:read  https://orders.example  orders:write  -           no\n"
    );
    let (_, out, _) = plan("2030-02-01T12:30:00Z").await;
    assert_eq!(
        out,
        "in force at 2030-02-01 12:30:00 UTC:\n\
         CLIENT  VERSION  EFFECTIVE (UTC)      SCOPES                    AUDIENCES               SHADOW  DEPRECATED   SUSPENDED\n\
         svc     3        2030-02-01 12:30:00  orders:read,orders:write  https://orders.example  -       orders:read  yes\n"
    );
    let (code, out, _) = contracts(
        tmp.path(),
        &[
            "plan",
            "contracts",
            "--at",
            "2030-01-15T00:00:00Z",
            "--json",
        ],
    )
    .await;
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["at_ms"], 1_894_665_600_000_i64);
    assert_eq!(v["clients"][0]["version"], 2);
    assert_eq!(
        v["clients"][0]["shadow"],
        serde_json::json!(["orders:write"])
    );

    let (code, out, err) = contracts(tmp.path(), &["plan", "contracts", "--at", "soon"]).await;
    assert_eq!((code, out.as_str()), (2, ""));
    assert_eq!(
        err,
        "latch: --at \"soon\" is not an RFC 3339 time like 2026-12-01T09:00:00Z\n"
    );
}

// === online verbs, against a real server ===

const ORDERS: &str = "orders-service";

/// Runs `latch contracts ARGS --server URL` with the admin's credentials (or `creds`).
async fn online(
    s: &TestServer,
    cwd: &Path,
    args: &[&str],
    creds: Option<(&str, &str)>,
) -> (i32, String, String) {
    let admin = clients::admin();
    let (id, secret) = creds.unwrap_or((admin.id.as_str(), admin.secret.as_str()));
    let mut cmd = latch_cmd_async();
    cmd.current_dir(cwd)
        .arg("contracts")
        .args(args)
        .arg("--server")
        .arg(s.base_url())
        .env("LATCH_ADMIN_CLIENT_ID", id)
        .env("LATCH_ADMIN_CLIENT_SECRET", secret);
    let (status, out, err) = run_cli(cmd).await;
    (status.code().expect("exit code"), out, err)
}

async fn admin_get(s: &TestServer, path: &str) -> Value {
    let admin = clients::admin();
    let r = s.get(path, admin.auth()).await;
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.json()
}

/// `YYYY-MM-DD HH:MM:SS` of a Unix-ms field, as the CLI prints times.
fn shown(ms: &Value) -> String {
    let ms = ms.as_i64().expect("a time in ms");
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
    let text = humantime::format_rfc3339_seconds(t).to_string();
    text.replacen('T', " ", 1).trim_end_matches('Z').to_string()
}

/// A version file whose contract is `contract` (JSON, as the server shows it).
fn version_file(changelog: &str, reason: &str, top: &str, contract: &Value) -> String {
    let body: toml::Value = serde_json::from_value(contract.clone()).unwrap();
    let mut table = toml::Table::new();
    table.insert("contract".into(), body);
    format!(
        "changelog = {changelog:?}\nreason = {reason:?}\n{top}\n{}",
        toml::to_string(&table).unwrap()
    )
}

/// The server's registry with one more scope, as `scopes.toml`.
fn scopes_toml(registry: &Value, extra: &str) -> String {
    let mut r = registry.clone();
    r["scopes"][extra] = serde_json::json!({
        "description": "refunds", "owner": "team-orders", "audiences": [], "status": "active"
    });
    toml::to_string(&serde_json::from_value::<toml::Value>(r).unwrap()).unwrap()
}

#[tokio::test]
async fn apply_list_history_show_cancel_promote_rollback() {
    let s = TestServer::builder().start().await;
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();

    // Version 1 of every configured client, from the configuration.
    let (code, out, err) = online(&s, cwd, &["list", "--json"], None).await;
    assert_eq!(code, 0, "{out} {err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    let row = listed["contracts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client"] == ORDERS)
        .unwrap()
        .clone();
    assert_eq!(
        (
            row["version_in_force"].clone(),
            row["latest_version"].clone()
        ),
        (serde_json::json!(1), serde_json::json!(1))
    );
    let (code, out, _) = online(&s, cwd, &["list"], None).await;
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("CLIENT") && lines[0].ends_with("SUSPENDED"),
        "{out}"
    );
    let orders_line = lines.iter().find(|l| l.starts_with(ORDERS)).unwrap();
    let cells: Vec<&str> = orders_line.split("  ").filter(|c| !c.is_empty()).collect();
    assert_eq!(cells[1].trim(), "1", "{out}");
    assert_eq!(cells[cells.len() - 1].trim(), "no", "{out}");

    // A directory: a new scope in the registry, version 2 puts it in shadow, version 3
    // (a day ahead) enforces it.
    let v1 = admin_get(&s, &format!("/admin/contracts/{ORDERS}/1")).await;
    let mut shadow = v1["body"]["content"].clone();
    shadow["scopes"]["orders:refund"] = "shadow".into();
    let mut enforced = shadow.clone();
    enforced["scopes"]["orders:refund"] = "enforced".into();
    let registry = admin_get(&s, "/admin/scopes").await["registry"].clone();
    let day_ahead = now_secs() + 86_400;
    let ahead = {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(day_ahead as u64);
        humantime::format_rfc3339_seconds(t).to_string()
    };
    let d = cwd.join("contracts");
    write(&d, "scopes.toml", &scopes_toml(&registry, "orders:refund"));
    write(
        &d,
        &format!("clients/{ORDERS}/1.toml"),
        &version_file("as configured", "seed", "", &v1["body"]["content"]),
    );
    write(
        &d,
        &format!("clients/{ORDERS}/2.toml"),
        &version_file("refunds in shadow", "CHG-7", "", &shadow),
    );
    write(
        &d,
        &format!("clients/{ORDERS}/3.toml"),
        &version_file(
            "refunds enforced",
            "",
            &format!("effective_at = {ahead:?}"),
            &enforced,
        ),
    );
    let f = |v: u32| format!("contracts/clients/{ORDERS}/{v}.toml");
    // Version 3's file has no reason, and the registry changes: both need --reason.
    let (code, out, err) = online(&s, cwd, &["apply", "contracts", "--dry-run"], None).await;
    assert_eq!(code, 1, "{out} {err}");
    assert_eq!(
        out,
        format!(
            "FILE                                     KEY     CODE            MESSAGE\n\
             contracts/scopes.toml                    -       missing_reason  differs from the server's registry (version 1): pass --reason to record why\n\
             {}  reason  missing_reason  every amendment records why: set `reason` in the file or pass --reason\n",
            f(3)
        )
    );
    assert_eq!(
        err,
        "latch: 2 problems in the contracts directory; nothing was sent\n"
    );
    let (code, out, err) = online(
        &s,
        cwd,
        &["apply", "contracts", "--dry-run", "--reason", "CHG-7"],
        None,
    )
    .await;
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    let ahead_shown = shown(&serde_json::json!(day_ahead * 1000));
    let expected = format!(
        "DOC                    VERSION  BASE  ACTION  EFFECTIVE (UTC)      FILE\n\
         registry               2        1     amend   when applied         contracts/scopes.toml\n\
         client:orders-service  2        1     amend   when applied         {}\n\
         client:orders-service  3        2     amend   {ahead_shown}  {}\n\
         dry run: 3 amendments would be sent\n",
        f(2),
        f(3)
    );
    assert_eq!(out, expected);
    assert_eq!(
        admin_get(&s, &format!("/admin/contracts/{ORDERS}")).await["history"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "nothing was sent"
    );

    let (code, out, err) =
        online(&s, cwd, &["apply", "contracts", "--reason", "CHG-7"], None).await;
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    assert_eq!(
        out,
        format!(
            "DOC                    VERSION  BASE  ACTION  EFFECTIVE (UTC)      FILE                                     RESULT\n\
             registry               2        1     amend   when applied         contracts/scopes.toml                    in force\n\
             client:orders-service  2        1     amend   when applied         {}  in force\n\
             client:orders-service  3        2     amend   {ahead_shown}  {}  scheduled\n\
             applied 3 amendments\n",
            f(2),
            f(3)
        )
    );
    // In force: the new scope is refused, in shadow.
    let r = s
        .token_resp(&clients::orders(), &[("scope", "orders:refund")])
        .await;
    r.assert_error(400, "invalid_scope");
    assert_eq!(r.json()["reason"], "scope_in_shadow");
    let (code, out, _) = online(&s, cwd, &["apply", "contracts"], None).await;
    assert_eq!(
        (code, out.as_str()),
        (
            0,
            "nothing to apply: the server has every version in contracts\n"
        )
    );

    // History, show.
    let history = admin_get(&s, &format!("/admin/contracts/{ORDERS}")).await;
    let h = history["history"].as_array().unwrap();
    let (code, out, _) = online(&s, cwd, &["history", ORDERS], None).await;
    assert_eq!(code, 0);
    let at = |i: usize, field: &str| shown(&h[i][field]);
    assert_eq!(
        out,
        format!(
            "VERSION  STATE       EFFECTIVE (UTC)      RECORDED (UTC)       AUTHOR          REASON             ROLLBACK OF  CHANGELOG\n\
             1        superseded  {}  {}  latch           the configuration  -            version 1: as configured in [[clients]]\n\
             2        in force    {}  {}  security-admin  CHG-7              -            refunds in shadow\n\
             3        scheduled   {}  {}  security-admin  CHG-7              -            refunds enforced\n",
            at(0, "effective_at_ms"),
            at(0, "recorded_at_ms"),
            at(1, "effective_at_ms"),
            at(1, "recorded_at_ms"),
            at(2, "effective_at_ms"),
            at(2, "recorded_at_ms"),
        )
    );
    let (code, out, _) = online(&s, cwd, &["show", ORDERS], None).await;
    assert_eq!(code, 0);
    assert_eq!(
        out,
        format!(
            "FIELD                                     VALUE\n\
             doc                                       client:orders-service\n\
             version                                   2\n\
             state                                     in force\n\
             effective (UTC)                           {}\n\
             recorded (UTC)                            {}\n\
             author                                    security-admin\n\
             reason                                    CHG-7\n\
             changelog                                 refunds in shadow\n\
             rollback of                               -\n\
             grants                                    client_credentials\n\
             roles                                     none\n\
             access_ttl_secs                           default\n\
             auth_methods                              any\n\
             trusted_issuers                           any\n\
             delegate_service_tokens                   false\n\
             suspended                                 false\n\
             scope orders:read                         enforced\n\
             scope orders:refund                       shadow\n\
             scope orders:write                        enforced\n\
             audience https://orders-internal.example  enforced\n\
             audience https://orders.example           enforced\n",
            at(1, "effective_at_ms"),
            at(1, "recorded_at_ms"),
        )
    );
    let (code, out, _) = online(&s, cwd, &["show", ORDERS, "3", "--json"], None).await;
    assert_eq!(code, 0);
    let v3: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v3, h[2]);

    // Cancel the scheduled version; twice is a conflict.
    let (code, out, err) = online(
        &s,
        cwd,
        &["cancel", ORDERS, "3", "--reason", "not yet"],
        None,
    )
    .await;
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(
        out,
        format!("cancelled client:orders-service version 3: it was to take effect at {ahead_shown} UTC\n")
    );
    let (code, out, err) =
        online(&s, cwd, &["cancel", ORDERS, "3", "--reason", "again"], None).await;
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        "latch: server answered 409: conflict (client:orders-service version 3 is already cancelled; only a scheduled amendment can be cancelled (roll back instead))\n"
    );

    // Promote by hand, then roll back to version 2.
    let (code, out, err) = online(
        &s,
        cwd,
        &[
            "promote",
            ORDERS,
            "--scope",
            "orders:refund",
            "--reason",
            "CHG-8",
        ],
        None,
    )
    .await;
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    let v4 = admin_get(&s, &format!("/admin/contracts/{ORDERS}/4")).await;
    assert_eq!(
        out,
        format!(
            "client:orders-service version 4: scope orders:refund shadow → enforced, in force since {} UTC\n",
            shown(&v4["effective_at_ms"])
        )
    );
    assert!(
        s.token_resp(&clients::orders(), &[("scope", "orders:refund")])
            .await
            .status
            == 200
    );
    let (code, out, err) = online(
        &s,
        cwd,
        &["rollback", ORDERS, "--to", "2", "--reason", "CHG-9"],
        None,
    )
    .await;
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    let v5 = admin_get(&s, &format!("/admin/contracts/{ORDERS}/5")).await;
    assert_eq!(v5["rollback_of"], 2);
    assert_eq!(
        out,
        format!(
            "client:orders-service version 5 restores version 2, in force since {} UTC\n",
            shown(&v5["effective_at_ms"])
        )
    );

    // A refusal with problems: one line, with each problem.
    let (code, out, err) = online(
        &s,
        cwd,
        &["promote", ORDERS, "--scope", "orders:read", "--reason", "x"],
        None,
    )
    .await;
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        "latch: server answered 400: invalid_request (the request does not validate; see problems); problems: client:orders-service orders:read: nothing_to_promote: scope \"orders:read\" is neither in shadow nor deprecated in the latest version\n"
    );
    let (code, _, err) = online(&s, cwd, &["history", "no-such-client"], None).await;
    assert_eq!(code, 1);
    assert!(
        err.starts_with("latch: server answered 404: not_found"),
        "{err}"
    );

    // apply stops at the first refusal: version 6 is recorded, 7 (in the past) refused.
    let d2 = cwd.join("next");
    write(
        &d2,
        "scopes.toml",
        &std::fs::read_to_string(d.join("scopes.toml")).unwrap(),
    );
    write(
        &d2,
        &format!("clients/{ORDERS}/6.toml"),
        &version_file("same as 5", "CHG-10", "", &shadow),
    );
    write(
        &d2,
        &format!("clients/{ORDERS}/7.toml"),
        &version_file(
            "backdated",
            "CHG-11",
            "effective_at = \"2020-01-01T00:00:00Z\"",
            &shadow,
        ),
    );
    let (code, out, err) = online(&s, cwd, &["apply", "next"], None).await;
    assert_eq!(code, 1, "{out} {err}");
    assert_eq!(
        out,
        format!(
            "DOC                    VERSION  BASE  ACTION  EFFECTIVE (UTC)      FILE                                RESULT\n\
             client:orders-service  6        5     amend   when applied         next/clients/{ORDERS}/6.toml  in force\n\
             client:orders-service  7        6     amend   2020-01-01 00:00:00  next/clients/{ORDERS}/7.toml  refused\n\
             applied 1 of 2 amendments; stopped at the refusal below\n"
        )
    );
    assert_eq!(
        err,
        format!("latch: next/clients/{ORDERS}/7.toml: server answered 400: invalid_request (the request does not validate; see problems); problems: client:orders-service effective_at: effective_at_in_past: effective_at lies in the past; amendments take effect now or later\n")
    );

    // A directory with a problem sends nothing.
    let d3 = cwd.join("bad");
    write(
        &d3,
        "scopes.toml",
        &std::fs::read_to_string(d.join("scopes.toml")).unwrap(),
    );
    let mut unregistered = shadow.clone();
    unregistered["scopes"]["orders:nuke"] = "shadow".into();
    write(
        &d3,
        &format!("clients/{ORDERS}/7.toml"),
        &version_file("nuke", "CHG-12", "", &unregistered),
    );
    let (code, out, err) = online(&s, cwd, &["apply", "bad"], None).await;
    assert_eq!(code, 1, "{out} {err}");
    assert_eq!(
        out,
        format!(
            "FILE                               KEY                   CODE                MESSAGE\n\
             bad/clients/{ORDERS}/7.toml  scopes.\"orders:nuke\"  unregistered_scope  scope \"orders:nuke\" is not in the registry\n"
        )
    );
    assert_eq!(
        err,
        "latch: 1 problem in the contracts directory; nothing was sent\n"
    );
    assert_eq!(
        admin_get(&s, &format!("/admin/contracts/{ORDERS}")).await["history"]
            .as_array()
            .unwrap()
            .len(),
        6
    );

    // Credentials: missing, wrong, not an admin.
    let mut cmd = latch_cmd_async();
    cmd.current_dir(cwd)
        .args(["contracts", "list", "--server", &s.base_url()]);
    let (status, out, err) = run_cli(cmd).await;
    assert_eq!((status.code(), out.as_str()), (Some(1), ""));
    assert_eq!(
        err,
        "latch: set LATCH_ADMIN_CLIENT_ID and LATCH_ADMIN_CLIENT_SECRET to an admin client's credentials\n"
    );
    let admin = clients::admin();
    let (code, _, err) = online(
        &s,
        cwd,
        &["list"],
        Some((&admin.id, "wrong-secret-wrong-secret")),
    )
    .await;
    assert_eq!(code, 1);
    assert!(
        err.starts_with("latch: server answered 401: invalid_client"),
        "{err}"
    );
    let rs = clients::rs_all();
    let (code, _, err) = online(&s, cwd, &["list"], Some((&rs.id, &rs.secret))).await;
    assert_eq!(code, 1);
    assert!(
        err.starts_with("latch: server answered 403: unauthorized_client"),
        "{err}"
    );
}
