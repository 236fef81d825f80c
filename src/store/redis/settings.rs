//! Whether the Redis behind latch keeps what it acknowledged: its eviction policy and
//! its persistence, read at start-up and by `latch check`.
//!
//! latch's promise rests on Redis never dropping a key on its own: an evicted
//! `{latch}:rev:seq` or log entry brings revoked tokens back, an evicted one-time claim
//! lets an assertion be replayed. So any `maxmemory-policy` but `noeviction` is refused.
//! Losing the tail on a crash is covered by AOF with `appendfsync always` or by a
//! replica; with neither, the operator is warned.

use redis::{Cmd, Value};

use super::topology::Conn;

/// What the check found, each line naming the node and the setting.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Settings latch will not run on.
    pub refusals: Vec<String>,
    /// Settings that weaken a guarantee, or that could not be read.
    pub warnings: Vec<String>,
    /// What was read, for `latch check`.
    pub notes: Vec<String>,
}

/// One node's answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSettings {
    /// `Err` carries why it could not be read (an ACL, a managed service).
    pub policy: Result<String, String>,
    pub appendonly: Result<String, String>,
    pub appendfsync: Result<String, String>,
    pub replicas: Result<u64, String>,
    /// `cluster-enabled` and `cluster-require-full-coverage`, if readable (no rule needs
    /// them: unreadable is silent).
    pub cluster_enabled: Option<String>,
    pub full_coverage: Option<String>,
}

impl Default for NodeSettings {
    fn default() -> Self {
        let missing = || Err("no answer".to_string());
        NodeSettings {
            policy: missing(),
            appendonly: missing(),
            appendfsync: missing(),
            replicas: Err("no answer".to_string()),
            cluster_enabled: None,
            full_coverage: None,
        }
    }
}

/// Reads the settings of every master.
pub async fn inspect(conn: &mut Conn) -> redis::RedisResult<Report> {
    let mut nodes: Vec<(String, NodeSettings)> = Vec::new();
    let config = |name: &str| {
        let mut c = redis::cmd("CONFIG");
        c.arg("GET").arg(name);
        c
    };
    let mut info = redis::cmd("INFO");
    info.arg("replication");
    let queries: [(&str, Cmd); 6] = [
        ("maxmemory-policy", config("maxmemory-policy")),
        ("appendonly", config("appendonly")),
        ("appendfsync", config("appendfsync")),
        ("cluster-enabled", config("cluster-enabled")),
        (
            "cluster-require-full-coverage",
            config("cluster-require-full-coverage"),
        ),
        ("replication", info),
    ];
    for (what, cmd) in queries {
        for (node, answer) in conn.on_each_master(&cmd).await? {
            let at = match nodes.iter().position(|(n, _)| *n == node) {
                Some(i) => i,
                None => {
                    nodes.push((node, NodeSettings::default()));
                    nodes.len() - 1
                }
            };
            let s = &mut nodes[at].1;
            let answer = answer.map_err(|e| e.to_string());
            match what {
                "maxmemory-policy" => s.policy = answer.and_then(|v| config_value(&v)),
                "appendonly" => s.appendonly = answer.and_then(|v| config_value(&v)),
                "appendfsync" => s.appendfsync = answer.and_then(|v| config_value(&v)),
                "cluster-enabled" => s.cluster_enabled = answer.and_then(|v| config_value(&v)).ok(),
                "cluster-require-full-coverage" => {
                    s.full_coverage = answer.and_then(|v| config_value(&v)).ok()
                }
                _ => s.replicas = answer.and_then(|v| connected_replicas(&v)),
            }
        }
    }
    let mut report = Report::default();
    for (node, s) in &nodes {
        judge(node, s, &mut report);
    }
    Ok(report)
}

/// The value of a one-parameter `CONFIG GET` (a map in RESP3, a pair in RESP2).
fn config_value(v: &Value) -> Result<String, String> {
    let text = |v: &Value| redis::from_redis_value_ref::<String>(v).ok();
    let found = match v {
        Value::Map(pairs) => pairs.first().and_then(|(_, v)| text(v)),
        Value::Array(items) => items.get(1).and_then(text),
        _ => None,
    };
    found.ok_or_else(|| "not readable (CONFIG GET returned nothing)".to_string())
}

/// `connected_slaves:N` from `INFO replication`.
fn connected_replicas(v: &Value) -> Result<u64, String> {
    let text = redis::from_redis_value_ref::<String>(v).map_err(|e| e.to_string())?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("connected_slaves:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| "INFO replication has no connected_slaves".to_string())
}

/// Applies latch's rules to one node's settings.
pub fn judge(node: &str, s: &NodeSettings, report: &mut Report) {
    match &s.policy {
        Ok(p) if p == "noeviction" => report
            .notes
            .push(format!("{node}: maxmemory-policy noeviction")),
        Ok(p) => report.refusals.push(format!(
            "{node}: maxmemory-policy is {p}; latch needs noeviction: an evicted key \
             ({{latch}}:rev:seq, a revocation, a one-time claim) can bring a revoked token \
             back or let an assertion be replayed"
        )),
        Err(e) => report.warnings.push(format!(
            "{node}: cannot read maxmemory-policy ({e}); make sure it is noeviction, \
             or Redis may evict revocations"
        )),
    }
    let aof = match (&s.appendonly, &s.appendfsync) {
        (Ok(on), Ok(fsync)) => {
            report
                .notes
                .push(format!("{node}: appendonly {on}, appendfsync {fsync}"));
            Some(on == "yes" && fsync == "always")
        }
        (Err(e), _) | (_, Err(e)) => {
            report.warnings.push(format!(
                "{node}: cannot read appendonly/appendfsync ({e}); latch cannot tell \
                 whether acknowledged writes survive a crash"
            ));
            None
        }
    };
    let replicas = match &s.replicas {
        Ok(n) => {
            report.notes.push(format!("{node}: {n} connected replicas"));
            Some(*n)
        }
        Err(e) => {
            report
                .warnings
                .push(format!("{node}: cannot read INFO replication ({e})"));
            None
        }
    };
    if s.cluster_enabled.as_deref() == Some("yes") && s.full_coverage.as_deref() == Some("yes") {
        report.warnings.push(format!(
            "{node}: cluster-require-full-coverage yes: while any shard has no master, every \
             node refuses every slot, so losing one session shard also stops the {{latch}} \
             slot and every latch node fails closed; set it to no (docs/SCALING.md)"
        ));
    }
    if aof == Some(false) && replicas == Some(0) {
        report.warnings.push(format!(
            "{node}: neither AOF with appendfsync always nor a replica protects acknowledged \
             writes: a crash can lose the newest revocations (set appendonly yes and \
             appendfsync always, or add a replica)"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(policy: &str, on: &str, fsync: &str, replicas: u64) -> NodeSettings {
        NodeSettings {
            policy: Ok(policy.into()),
            appendonly: Ok(on.into()),
            appendfsync: Ok(fsync.into()),
            replicas: Ok(replicas),
            cluster_enabled: None,
            full_coverage: None,
        }
    }

    #[test]
    fn refuses_every_evicting_policy_and_names_it() {
        for p in [
            "allkeys-lru",
            "allkeys-random",
            "volatile-lru",
            "volatile-ttl",
        ] {
            let mut r = Report::default();
            judge("n", &settings(p, "yes", "always", 0), &mut r);
            assert_eq!(r.refusals.len(), 1, "{p}");
            assert!(r.refusals[0].contains("maxmemory-policy") && r.refusals[0].contains(p));
        }
        let mut r = Report::default();
        judge("n", &settings("noeviction", "yes", "always", 0), &mut r);
        assert!(r.refusals.is_empty() && r.warnings.is_empty(), "{r:?}");
    }

    #[test]
    fn warns_when_nothing_protects_acknowledged_writes() {
        let mut r = Report::default();
        judge("n", &settings("noeviction", "yes", "everysec", 0), &mut r);
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].contains("appendfsync always"));
        for ok in [
            settings("noeviction", "no", "everysec", 1),
            settings("noeviction", "yes", "always", 0),
        ] {
            let mut r = Report::default();
            judge("n", &ok, &mut r);
            assert!(r.warnings.is_empty(), "{r:?}");
        }
    }

    #[test]
    fn a_cluster_that_stops_whole_on_one_shard_is_warned() {
        let cluster = |enabled: &str, coverage: &str| NodeSettings {
            cluster_enabled: Some(enabled.into()),
            full_coverage: Some(coverage.into()),
            ..settings("noeviction", "yes", "always", 1)
        };
        let mut r = Report::default();
        judge("n", &cluster("yes", "yes"), &mut r);
        assert_eq!(r.warnings.len(), 1, "{r:?}");
        assert!(r.warnings[0].contains("cluster-require-full-coverage"));
        for quiet in [cluster("yes", "no"), cluster("no", "yes")] {
            let mut r = Report::default();
            judge("n", &quiet, &mut r);
            assert!(r.warnings.is_empty(), "{r:?}");
        }
    }

    #[test]
    fn unreadable_settings_warn_and_do_not_refuse() {
        let denied = NodeSettings {
            policy: Err("NOPERM".into()),
            appendonly: Err("NOPERM".into()),
            appendfsync: Err("NOPERM".into()),
            replicas: Ok(0),
            cluster_enabled: None,
            full_coverage: None,
        };
        let mut r = Report::default();
        judge("n", &denied, &mut r);
        assert!(r.refusals.is_empty());
        assert_eq!(r.warnings.len(), 2, "{r:?}");
    }

    #[test]
    fn parses_answers_of_both_protocols() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        assert_eq!(
            config_value(&Value::Array(vec![b("maxmemory-policy"), b("noeviction")])),
            Ok("noeviction".into())
        );
        assert_eq!(
            config_value(&Value::Map(vec![(b("appendonly"), b("yes"))])),
            Ok("yes".into())
        );
        assert!(config_value(&Value::Array(vec![])).is_err());
        assert_eq!(
            connected_replicas(&b("# Replication\r\nrole:master\r\nconnected_slaves:2\r\n")),
            Ok(2)
        );
    }
}
