//! The shipped Prometheus rules (`deploy/prometheus/latch-rules.yml`): valid YAML of the
//! rule-file shape, every metric they read is one latch exports, and the propagation
//! alert fires at the documented bound. Where `promtool` is installed it also checks the
//! file and runs its unit tests (`latch-rules.test.yml`).

use std::path::Path;
use std::process::Command;

use serde_yaml::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn rules() -> Value {
    let path = root().join("deploy/prometheus/latch-rules.yml");
    let text = std::fs::read_to_string(&path).expect("read the rules file");
    serde_yaml::from_str(&text).expect("the rules file is YAML")
}

/// Every `latch_*` name in `expr`, with histogram suffixes dropped.
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("latch_"))
        .map(|w| {
            ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| w.strip_suffix(s))
                .unwrap_or(w)
                .to_string()
        })
        .collect()
}

#[test]
fn every_rule_is_well_formed_and_reads_metrics_latch_exports() {
    let metrics_rs = std::fs::read_to_string(root().join("src/metrics.rs")).unwrap();
    let groups = rules()["groups"].as_sequence().expect("groups").clone();
    assert!(!groups.is_empty());
    let mut alerts = vec![];
    for g in &groups {
        assert!(g["name"].as_str().is_some_and(|n| !n.is_empty()), "{g:?}");
        for r in g["rules"].as_sequence().expect("rules") {
            let name = r["alert"].as_str().expect("every rule is an alert");
            let expr = r["expr"].as_str().expect("expr");
            assert!(r["for"].as_str().is_some(), "{name}: for");
            let severity = r["labels"]["severity"].as_str();
            assert!(
                matches!(severity, Some("warning" | "critical")),
                "{name}: severity {severity:?}"
            );
            for a in ["summary", "description"] {
                assert!(r["annotations"][a].as_str().is_some(), "{name}: {a}");
            }
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{name} reads no latch metric");
            for m in names {
                assert!(
                    metrics_rs.contains(&format!("\"{m}\"")),
                    "{name} reads {m}, which src/metrics.rs does not define"
                );
            }
            alerts.push(name.to_string());
        }
    }
    assert!(alerts.contains(&"LatchRevocationPropagationSlow".to_string()));
}

#[test]
fn the_propagation_alert_fires_at_the_documented_bound() {
    let groups = rules()["groups"].as_sequence().unwrap().clone();
    let rule = groups
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().clone())
        .find(|r| r["alert"] == "LatchRevocationPropagationSlow")
        .expect("the propagation alert");
    let expr: String = rule["expr"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(expr.contains("histogram_quantile(0.99,"), "{expr}");
    assert!(
        expr.contains("latch_revocation_propagation_seconds_bucket"),
        "{expr}"
    );
    assert!(
        expr.ends_with("> 0.005"),
        "the bound is 5 ms at p99: {expr}"
    );
    let perf = std::fs::read_to_string(root().join("docs/PERFORMANCE.md")).unwrap();
    assert!(
        perf.contains("p99 ≤ 5 ms"),
        "docs/PERFORMANCE.md no longer states the 5 ms p99 bound the alert uses"
    );
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests() {
    if Command::new("promtool").arg("--version").output().is_err() {
        eprintln!("promtool is not installed (Debian package `prometheus`): not run");
        return;
    }
    let dir = root().join("deploy/prometheus");
    for args in [
        &["check", "rules", "latch-rules.yml"][..],
        &["test", "rules", "latch-rules.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
