//! The scenarios, and what they share: the run context, token helpers, and the
//! baseline-then-target driver behind `--baseline`.

pub mod introspect;
pub mod issue;
pub mod mixed;
pub mod propagation;
pub mod revoke;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use crate::baseline::BaselineServer;
use crate::cli::{BaselineFlags, Common};
use crate::client::{token_form, Conn, Oauth, Target};
use crate::cpu::{Meter, Usage};
use crate::report::{Comparison, Report, Row, Timeline};
use crate::runner::{run_phase, PhaseResult, Plan, Worker};

/// What every scenario starts from.
pub struct Ctx {
    pub common: Common,
    pub target: Arc<Target>,
    pub oauth: Arc<Oauth>,
    /// Generator runtime threads.
    pub threads: usize,
    pub started: SystemTime,
}

impl Ctx {
    pub fn new(common: Common, threads: usize) -> Result<Ctx, String> {
        if common.concurrency == 0 {
            return Err("--concurrency must be at least 1".into());
        }
        if let Some(r) = common.rate {
            if !(r > 0.0 && r.is_finite()) {
                return Err("--rate must be a positive number".into());
            }
        }
        let target = Target::parse(&common.target)?;
        let oauth = Arc::new(Oauth::new(&target, &common));
        Ok(Ctx {
            common,
            target,
            oauth,
            threads,
            started: SystemTime::now(),
        })
    }

    pub fn conn(&self) -> Conn {
        Conn::new(self.target.clone(), self.common.timeout)
    }

    pub fn report(&self, scenario: &str) -> Report {
        Report::new(
            scenario,
            self.started,
            self.threads,
            self.common.rate,
            self.common.warmup,
        )
    }

    pub fn plan(&self, label: &str) -> Plan {
        Plan {
            label: label.to_string(),
            warmup: self.common.warmup,
            duration: self.common.duration,
            rate: self.common.rate,
            quiet: self.common.quiet,
        }
    }
}

/// Issues `n` tokens on one connection, for the hot scenarios (n is small), as
/// `token=...` form bodies.
pub async fn hot_tokens(ctx: &Ctx, n: usize) -> Result<Vec<Bytes>, String> {
    Ok(hot_token_texts(ctx, n)
        .await?
        .iter()
        .map(|t| token_form(t))
        .collect())
}

/// Issues `n` tokens on one connection (at least one); returns them as issued.
pub async fn hot_token_texts(ctx: &Ctx, n: usize) -> Result<Vec<String>, String> {
    let mut conn = ctx.conn();
    let mut tokens = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let t = ctx.oauth.issue_token(&mut conn).await.map_err(|f| {
            format!(
                "cannot obtain a token from {}{}: {f}",
                ctx.target.url, ctx.common.token_path
            )
        })?;
        tokens.push(t);
    }
    Ok(tokens)
}

/// Introspects one token and returns the size of the active answer (for the baseline).
pub async fn active_answer_size(ctx: &Ctx, token: &Bytes) -> Result<usize, String> {
    let mut conn = ctx.conn();
    let reply = conn
        .post_form(
            &ctx.oauth.introspect_path,
            &ctx.oauth.introspect_auth,
            token.clone(),
        )
        .await
        .and_then(|r| r.ok())
        .map_err(|f| format!("introspection at {} failed: {f}", ctx.target.url))?;
    match reply.active() {
        Some(true) => Ok(reply.body.len()),
        _ => Err(format!(
            "a fresh token introspects inactive at {}: {}",
            ctx.target.url,
            String::from_utf8_lossy(&reply.body)
        )),
    }
}

/// Issues `n` tokens over `concurrency` connections in parallel; returns them as
/// `token=...` bodies and how long it took.
pub async fn issue_pool(ctx: &Ctx, n: usize) -> Result<(Vec<Bytes>, Duration), String> {
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..ctx.common.concurrency.min(n.max(1)) {
        let (next, failures) = (next.clone(), failures.clone());
        let oauth = ctx.oauth.clone();
        let mut conn = ctx.conn();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                loop {
                    match oauth.issue_token(&mut conn).await {
                        Ok(t) => {
                            mine.push(token_form(&t));
                            break;
                        }
                        Err(f) => {
                            if failures.fetch_add(1, Ordering::Relaxed) >= 100 {
                                return Err(f);
                            }
                        }
                    }
                }
            }
            Ok(mine)
        }));
    }
    let quiet = ctx.common.quiet;
    let progress = {
        let next = next.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                if !quiet {
                    let done = next.load(Ordering::Relaxed).min(n);
                    eprintln!("[pre-issue] {done}/{n} tokens");
                }
            }
        })
    };
    let mut pool = Vec::with_capacity(n);
    let mut failure = None;
    for t in tasks {
        match t.await.map_err(|e| format!("issuer task panicked: {e}"))? {
            Ok(mine) => pool.extend(mine),
            Err(f) => failure = Some(f),
        }
    }
    progress.abort();
    if let Some(f) = failure {
        return Err(format!(
            "pre-issuing tokens at {} failed more than 100 times (last: {f})",
            ctx.target.url
        ));
    }
    Ok((pool, began.elapsed()))
}

/// Runs the load built by `make` first against the baseline server (when asked for), then
/// against the target; adds the rows, the comparison and the timelines to `report`.
/// `make(target, against_baseline)` returns the workers of one phase.
pub async fn baseline_then_target<W, F>(
    ctx: &Ctx,
    report: &mut Report,
    label: &'static str,
    flags: &BaselineFlags,
    body_bytes: usize,
    make: F,
) -> Result<(), String>
where
    W: Worker,
    F: Fn(Arc<Target>, bool) -> Vec<W>,
{
    let mut baseline_row = None;
    if flags.baseline {
        let server = BaselineServer::spawn(body_bytes, flags.baseline_threads).await?;
        if let (Some(cpus), Some(pid)) = (&ctx.common.server_cpus, server.pid()) {
            crate::cpu::pin_process(pid, &cpus.0)?;
        }
        let target = Target::parse(&server.url)?;
        let meter = Meter::start(server.pid());
        let result = run_phase(&ctx.plan("baseline"), &["baseline"], make(target, true)).await;
        let usage = meter.stop();
        server.stop().await;
        let phase = result.map_err(|e| format!("baseline: {e}"))?;
        let row = baseline_row_of(ctx, report, body_bytes, &phase);
        note_cpu(report, "baseline", &row, &phase, usage);
        baseline_row = Some(row);
    }
    let meter = Meter::start(ctx.common.target_pid);
    let phase = run_phase(&ctx.plan(label), &[label], make(ctx.target.clone(), false))
        .await
        .map_err(|e| format!("{}: {e}", ctx.target.url))?;
    let usage = meter.stop();
    let row = Row::from_op(
        label,
        &ctx.target.url,
        ctx.common.concurrency,
        &phase,
        &phase.ops[0],
    );
    note_cpu(report, "target", &row, &phase, usage);
    if let Some(cpus) = &ctx.common.server_cpus {
        report.detail("server_cpus", cpus.to_string());
    }
    if ctx.common.load_cpus.is_some() {
        // What the kernel applied, not what was asked.
        let applied = crate::cpu::current_affinity()?;
        report.detail("load_cpus", crate::cli::CpuList(applied).to_string());
    }
    report.timelines.push(Timeline::of(label, &phase));
    note_phase(report, ctx.common.concurrency, &phase);
    report.count(&row);
    if let Some(b) = baseline_row {
        report.comparison = Some(Comparison::of(&row, &b));
        report.rows.push(b);
    }
    report.rows.push(row);
    Ok(())
}

/// CPU each side used in a phase (warm-up included), in total and per request answered
/// in it: `{side}_server_cpu_s`, `{side}_server_cpu_us_per_request` (when the server's PID
/// is known: the baseline child always, latch with --target-pid), `{side}_load_cpu_s`.
fn note_cpu(report: &mut Report, side: &str, row: &Row, phase: &PhaseResult, usage: Usage) {
    let requests = (row.requests + phase.warmup_requests).max(1) as f64;
    if let Some(server) = usage.server {
        report.detail(
            &format!("{side}_server_cpu_s"),
            round3(server.as_secs_f64()),
        );
        report.detail(
            &format!("{side}_server_cpu_us_per_request"),
            round3(server.as_secs_f64() * 1e6 / requests),
        );
    }
    report.detail(
        &format!("{side}_load_cpu_s"),
        round3(usage.generator.as_secs_f64()),
    );
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The baseline's row, its timeline and answer size in the report.
fn baseline_row_of(ctx: &Ctx, report: &mut Report, body_bytes: usize, phase: &PhaseResult) -> Row {
    report.timelines.push(Timeline::of("baseline", phase));
    report.detail("baseline_answer_bytes", body_bytes);
    Row::from_op(
        "baseline",
        &server_label(body_bytes),
        ctx.common.concurrency,
        phase,
        &phase.ops[0],
    )
}

fn server_label(body_bytes: usize) -> String {
    format!("bare hyper ({body_bytes} B)")
}

/// Adds phase facts worth knowing to the report.
pub fn note_phase(report: &mut Report, concurrency: usize, phase: &PhaseResult) {
    report.detail("warmup_requests", phase.warmup_requests);
    if phase.workers_ready < concurrency {
        report.notes.push(format!(
            "only {} of {concurrency} connections were open when the clock started",
            phase.workers_ready
        ));
    }
    if report.rate.is_some() {
        report.detail("late_sends", phase.late);
    }
    if phase.reconnects > 0 {
        report.notes.push(format!(
            "{} connections had to be reopened during the run (closed by the server or after errors)",
            phase.reconnects
        ));
    }
    if phase.exhausted {
        report.notes.push(format!(
            "the work ran out after {:.2}s of the measured window",
            phase.measured.as_secs_f64()
        ));
    }
}

/// Runs the bare baseline server and introspection load against it only.
pub async fn baseline_only(
    ctx: &Ctx,
    body_bytes: usize,
    threads: Option<usize>,
) -> Result<Report, String> {
    let mut report = ctx.report("baseline");
    let server = BaselineServer::spawn(body_bytes, threads).await?;
    let target = Target::parse(&server.url)?;
    // A token-sized dummy: the request is as large as a real introspection request.
    let token = token_form(&"x".repeat(520));
    let tokens = Arc::new(vec![token]);
    let workers = (0..ctx.common.concurrency)
        .map(|i| {
            introspect::IntrospectWorker::hot(
                Conn::new(target.clone(), ctx.common.timeout),
                ctx.oauth.clone(),
                tokens.clone(),
                i,
            )
        })
        .collect();
    let result = run_phase(&ctx.plan("baseline"), &["baseline"], workers).await;
    server.stop().await;
    let phase = result?;
    let row = baseline_row_of(ctx, &mut report, body_bytes, &phase);
    report.count(&row);
    report.rows.push(row);
    Ok(report)
}
