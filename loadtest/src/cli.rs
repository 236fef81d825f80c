//! Command-line interface: the subcommands, their flags, and the small parsers they use.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Default issuing client: the demo `orders-service` of config/latch.toml.
pub const DEFAULT_ISSUER: &str = "orders-service:demo-orders-secret-0123456789abcdef0123456789";
/// Default introspecting client: the demo resource server `orders-api`.
pub const DEFAULT_INTROSPECTOR: &str = "orders-api:demo-resource-secret-0123456789abcdef01234567";
/// Size of latch's active introspection answer for a demo `client_credentials` token.
pub const DEFAULT_BODY_BYTES: usize = 268;

#[derive(Parser, Debug)]
#[command(
    name = "latch-load",
    version,
    about = "Load generator for latch (and any RFC 7662 / RFC 7009 server)",
    long_about = "Load generator for latch (and any RFC 7662 / RFC 7009 server).\n\n\
        Every scenario keeps exactly --concurrency keep-alive HTTP/1.1 connections open, one \
        per worker task, records every request's latency in an HdrHistogram, and prints a \
        table on stdout (progress goes to stderr)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Introspect a few tokens (--tokens, default 8) again and again: the cache-hot path.
    IntrospectHot(HotArgs),
    /// Pre-issue enough tokens, then introspect each exactly once: the first-sight path.
    IntrospectCold(ColdArgs),
    /// Issue tokens: POST /token grant_type=client_credentials.
    Issue(IssueArgs),
    /// Hot introspection with a trickle of issuance and revocation.
    Mixed(MixedArgs),
    /// Revoke pre-issued tokens (RFC 7009), each once: revocation throughput; with
    /// --compare-target, against a second deployment too, and the ratio.
    Revoke(RevokeArgs),
    /// Issue on node 1, revoke on node 1, and time until every node answers inactive.
    RevokePropagation(PropagationArgs),
    /// Introspection load against the bare hyper baseline server only (the HTTP floor).
    Baseline(BaselineArgs),
    /// Run the bare hyper baseline server in the foreground (used as a child process).
    ServeBaseline(ServeBaselineArgs),
}

/// Flags shared by every load scenario.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Base URL of the server under test.
    #[arg(
        long,
        default_value = "http://127.0.0.1:8080",
        env = "LATCH_LOAD_TARGET"
    )]
    pub target: String,
    /// Keep-alive connections, one per worker task.
    #[arg(long, short = 'c', default_value_t = 32)]
    pub concurrency: usize,
    /// Measured duration (after the warm-up), e.g. 10s, 1s, 500ms.
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Warm-up before the measured phase; its requests are not recorded.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Worker threads of the generator's tokio runtime (default: number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Fixed request rate (req/s across all workers); without it the load is closed-loop.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Pin the server under test to these CPUs (`taskset -c` syntax: 0, 0-1, 0,2): the
    /// baseline child, and latch itself when --target-pid names it. Disjoint from
    /// --load-cpus, so the two do not compete for a core.
    #[arg(long, value_parser = parse_cpus)]
    pub server_cpus: Option<CpuList>,
    /// Pin this generator (all its threads) to these CPUs.
    #[arg(long, value_parser = parse_cpus)]
    pub load_cpus: Option<CpuList>,
    /// PID of the server under test: pinned with --server-cpus, and the CPU time it used
    /// per phase is reported next to the generator's.
    #[arg(long)]
    pub target_pid: Option<u32>,
    /// Per-request timeout; a request that takes longer counts as an error.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Token endpoint path.
    #[arg(long, default_value = "/token")]
    pub token_path: String,
    /// Introspection endpoint path.
    #[arg(long, default_value = "/introspect")]
    pub introspect_path: String,
    /// Revocation endpoint path.
    #[arg(long, default_value = "/revoke")]
    pub revoke_path: String,
    /// Issuing client as id:secret (HTTP Basic at the token and revocation endpoints).
    #[arg(long, default_value = DEFAULT_ISSUER, value_parser = parse_credentials)]
    pub issuer_client: Credentials,
    /// Introspecting client as id:secret (HTTP Basic at the introspection endpoint).
    #[arg(long, default_value = DEFAULT_INTROSPECTOR, value_parser = parse_credentials)]
    pub introspect_client: Credentials,
    /// Optional `scope` parameter sent with every token request.
    #[arg(long)]
    pub scope: Option<String>,
    /// Write a JSON report (same numbers, plus the command line and a timestamp).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an SVG plot (latency percentile curves and throughput over time).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Exit 1 when more than this many requests failed (default: only when all failed).
    #[arg(long)]
    pub max_errors: Option<u64>,
    /// CI smoke run: --duration 1s --warmup 200ms, at most 50 propagation iterations, and
    /// exit 1 on any error (unless --max-errors says otherwise).
    #[arg(long)]
    pub smoke: bool,
    /// No progress lines on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

impl Common {
    /// Applies --smoke.
    pub fn resolve(mut self) -> Common {
        if self.smoke {
            self.duration = Duration::from_secs(1);
            self.warmup = Duration::from_millis(200);
            self.max_errors = self.max_errors.or(Some(0));
        }
        self
    }
}

/// Flags for running the bare baseline server next to a scenario.
#[derive(Args, Debug, Clone)]
pub struct BaselineFlags {
    /// First run the same load against a bare hyper server, then against the target, and
    /// report the ratio.
    #[arg(long)]
    pub baseline: bool,
    /// Worker threads of the baseline server (default: number of CPUs, as latch).
    #[arg(long)]
    pub baseline_threads: Option<usize>,
}

#[derive(Args, Debug)]
pub struct HotArgs {
    #[command(flatten)]
    pub common: Common,
    /// Number of tokens to obtain and introspect in turn.
    #[arg(long, default_value_t = 8)]
    pub tokens: usize,
    #[command(flatten)]
    pub baseline: BaselineFlags,
    #[command(flatten)]
    pub ask: AskFlags,
}

/// What each hot introspection asks for (latch's extensions of RFC 7662).
#[derive(Args, Debug, Clone)]
pub struct AskFlags {
    /// Ask for the minimal answer: `Prefer: return=minimal` (only `{"active":true}`).
    #[arg(long)]
    pub minimal: bool,
    /// Ask for the signed answer: `Accept: application/token-introspection+jwt` (RFC 9701).
    #[arg(long, conflicts_with = "batch")]
    pub signed: bool,
    /// Introspect N tokens per request, as JSON `{"tokens": [...]}` to --batch-path.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub batch: Option<u16>,
    /// Batch introspection endpoint path.
    #[arg(long, default_value = "/introspect/batch")]
    pub batch_path: String,
}

#[derive(Args, Debug)]
pub struct ColdArgs {
    #[command(flatten)]
    pub common: Common,
    /// Tokens to pre-issue (default: estimated from a short calibration run, or from --rate).
    #[arg(long)]
    pub tokens: Option<usize>,
    /// Upper bound for the estimated pool size (memory: about 0.6 KB per token).
    #[arg(long, default_value_t = 400_000)]
    pub max_tokens: usize,
    #[command(flatten)]
    pub baseline: BaselineFlags,
}

#[derive(Args, Debug)]
pub struct IssueArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub baseline: BaselineFlags,
}

#[derive(Args, Debug)]
pub struct MixedArgs {
    #[command(flatten)]
    pub common: Common,
    /// Number of hot tokens that are introspected.
    #[arg(long, default_value_t = 8)]
    pub tokens: usize,
    /// One issuance per this many operations (0: none).
    #[arg(long, default_value_t = 100)]
    pub issue_every: u64,
    /// One revocation (of a token issued during the run) per this many operations (0: none).
    #[arg(long, default_value_t = 1000)]
    pub revoke_every: u64,
}

#[derive(Args, Debug)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub common: Common,
    /// Tokens issued before each measured phase (each is revoked once; a phase ends early
    /// when they run out).
    #[arg(long, default_value_t = 60_000)]
    pub tokens: usize,
    /// A second deployment to run the same load against, alternating with --target.
    #[arg(long)]
    pub compare_target: Option<String>,
    /// Rounds of one compare and one target phase (compare first in odd rounds).
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
}

#[derive(Args, Debug)]
pub struct PropagationArgs {
    #[command(flatten)]
    pub common: Common,
    /// Node base URLs, comma-separated; node 1 issues and revokes. Default: --target alone.
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Measured iterations (the run also stops when --duration is over).
    #[arg(long, default_value_t = 200)]
    pub iterations: u64,
    /// Pause between two polls of one node (0: back-to-back).
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Give up on a node that still answers active this long after the revocation.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub poll_timeout: Duration,
}

#[derive(Args, Debug)]
pub struct BaselineArgs {
    #[command(flatten)]
    pub common: Common,
    /// Size of the fixed JSON answer.
    #[arg(long, default_value_t = DEFAULT_BODY_BYTES)]
    pub body_bytes: usize,
    /// Worker threads of the baseline server (default: number of CPUs, as latch).
    #[arg(long)]
    pub baseline_threads: Option<usize>,
}

#[derive(Args, Debug)]
pub struct ServeBaselineArgs {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Size of the fixed JSON answer.
    #[arg(long, default_value_t = DEFAULT_BODY_BYTES)]
    pub body_bytes: usize,
    /// Worker threads (default: number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// A client id and secret, sent as HTTP Basic.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub id: String,
    pub secret: String,
}

fn parse_credentials(s: &str) -> Result<Credentials, String> {
    match s.split_once(':') {
        Some((id, secret)) if !id.is_empty() => Ok(Credentials {
            id: id.to_string(),
            secret: secret.to_string(),
        }),
        _ => Err("expected id:secret".to_string()),
    }
}

/// Parses a duration as humantime does (`10s`, `500ms`, `250us`, `2m`, `1.5s`, `1m 30s`),
/// or a bare number of seconds (`2`, `0.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return s
            .parse::<f64>()
            .ok()
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
            .ok_or_else(|| format!("invalid duration {s:?} (examples: 10s, 500ms, 2m)"));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration {s:?}: {e} (examples: 10s, 500ms, 2m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("200ms").unwrap(), Duration::from_millis(200));
        assert_eq!(parse_duration("100us").unwrap(), Duration::from_micros(100));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("0.25").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5m").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1min").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("50ns").unwrap(), Duration::from_nanos(50));
        assert_eq!(parse_duration("100µs").unwrap(), Duration::from_micros(100));
        assert_eq!(parse_duration(" 10 s ").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1m 30s").unwrap(), Duration::from_secs(90));
        for bad in ["", "fast", "3 fortnights", "-1s", ".", "1..2", "5 parsecs"] {
            let e = parse_duration(bad).expect_err(bad);
            assert!(e.contains("invalid duration"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn credentials() {
        let c = parse_credentials("a:b:c").unwrap();
        assert_eq!((c.id.as_str(), c.secret.as_str()), ("a", "b:c"));
        assert!(parse_credentials("nocolon").is_err());
    }
}

/// A set of CPU numbers (`--server-cpus`, `--load-cpus`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

impl std::fmt::Display for CpuList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text: Vec<String> = self.0.iter().map(usize::to_string).collect();
        f.write_str(&text.join(","))
    }
}

fn parse_cpus(s: &str) -> Result<CpuList, String> {
    crate::cpu::parse_cpu_list(s).map(CpuList)
}
