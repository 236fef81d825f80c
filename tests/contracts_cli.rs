//! `latch contracts`: the offline verbs (`check`, `diff`, `plan`) on directories written
//! here, with their exact output and exit codes; every rule of `check` names its file,
//! key and code.

use std::path::Path;

use serde_json::Value;
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
