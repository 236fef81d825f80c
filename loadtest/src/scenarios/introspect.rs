//! `introspect-hot` (a few tokens, introspected again and again) and `introspect-cold`
//! (a pre-issued pool, each token introspected exactly once).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{active_answer_size, baseline_then_target, hot_tokens, issue_pool, Ctx};
use crate::cli::{ColdArgs, HotArgs};
use crate::client::{Conn, Failure, Oauth};
use crate::report::Report;
use crate::runner::{run_phase, Plan, Step, Worker};

/// Which token a worker sends next.
enum Source {
    /// Round robin over the hot tokens, starting at a per-worker offset.
    Hot { next: usize },
    /// The next unused token of the shared pool; `wrap` starts over at the end instead of
    /// stopping (used against the baseline, which does not care about freshness).
    Cold {
        cursor: Arc<AtomicUsize>,
        wrap: bool,
    },
}

/// Sends introspection requests and expects `"active":true`.
pub struct IntrospectWorker {
    conn: Conn,
    oauth: Arc<Oauth>,
    tokens: Arc<Vec<Bytes>>,
    source: Source,
}

impl IntrospectWorker {
    pub fn hot(conn: Conn, oauth: Arc<Oauth>, tokens: Arc<Vec<Bytes>>, worker: usize) -> Self {
        IntrospectWorker {
            conn,
            oauth,
            tokens,
            source: Source::Hot { next: worker },
        }
    }

    fn cold(
        conn: Conn,
        oauth: Arc<Oauth>,
        tokens: Arc<Vec<Bytes>>,
        cursor: Arc<AtomicUsize>,
        wrap: bool,
    ) -> Self {
        IntrospectWorker {
            conn,
            oauth,
            tokens,
            source: Source::Cold { cursor, wrap },
        }
    }
}

impl Worker for IntrospectWorker {
    async fn prepare(&mut self) -> Result<(), Failure> {
        self.conn.connect().await
    }

    fn connections_opened(&self) -> u64 {
        self.conn.connects
    }

    async fn step(&mut self) -> Step {
        let token = match &mut self.source {
            Source::Hot { next } => {
                *next = next.wrapping_add(1);
                self.tokens[*next % self.tokens.len()].clone()
            }
            Source::Cold { cursor, wrap } => {
                let i = cursor.fetch_add(1, Ordering::Relaxed);
                match self.tokens.get(i) {
                    Some(t) => t.clone(),
                    None if *wrap => self.tokens[i % self.tokens.len()].clone(),
                    None => return Step::Exhausted,
                }
            }
        };
        let result = match self.oauth.introspect(&mut self.conn, token).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Failure::Unexpected("active:false")),
            Err(f) => Err(f),
        };
        Step::Done { op: 0, result }
    }
}

/// `introspect-hot`.
pub async fn hot(ctx: &Ctx, args: &HotArgs) -> Result<Report, String> {
    let mut report = ctx.report("introspect-hot");
    let tokens = Arc::new(hot_tokens(ctx, args.tokens).await?);
    let answer = active_answer_size(ctx, &tokens[0]).await?;
    report.detail("hot_tokens", tokens.len());
    report.detail("active_answer_bytes", answer);
    let (oauth, c) = (ctx.oauth.clone(), ctx.common.concurrency);
    let timeout = ctx.common.timeout;
    baseline_then_target(
        ctx,
        &mut report,
        "introspect-hot",
        &args.baseline,
        answer,
        |target, _| {
            (0..c)
                .map(|i| {
                    IntrospectWorker::hot(
                        Conn::new(target.clone(), timeout),
                        oauth.clone(),
                        tokens.clone(),
                        i,
                    )
                })
                .collect()
        },
    )
    .await?;
    Ok(report)
}

/// `introspect-cold`.
pub async fn cold(ctx: &Ctx, args: &ColdArgs) -> Result<Report, String> {
    let mut report = ctx.report("introspect-cold");
    let window = ctx.common.warmup + ctx.common.duration;
    let c = ctx.common.concurrency;
    // Fail fast, with a clear message, when the target cannot issue.
    hot_tokens(ctx, 1).await?;
    let (wanted, how) = match (args.tokens, ctx.common.rate) {
        (Some(n), _) => (n, "--tokens".to_string()),
        (None, Some(rate)) => (
            (rate * window.as_secs_f64() * 1.05).ceil() as usize + 2 * c,
            "--rate".to_string(),
        ),
        (None, None) => {
            let rate = calibrate(ctx).await?;
            (
                (rate * window.as_secs_f64() * 1.25).ceil() as usize + 2 * c,
                format!("calibration: {rate:.0} req/s cold"),
            )
        }
    };
    let n = wanted.clamp(1, args.max_tokens.max(1));
    if n < wanted {
        report.notes.push(format!(
            "pool capped at --max-tokens {n} (wanted {wanted}); the run may stop early"
        ));
    }
    if !ctx.common.quiet {
        eprintln!("[pre-issue] issuing {n} tokens ({how}) over {c} connections");
    }
    let (pool, took) = issue_pool(ctx, n).await?;
    let answer = active_answer_size(ctx, &pool[0]).await?;
    report.detail("pool_tokens", pool.len());
    report.detail("pool_size_from", how);
    report.detail(
        "pre_issue_seconds",
        (took.as_secs_f64() * 1000.0).round() / 1000.0,
    );
    report.detail(
        "pre_issue_rate",
        (pool.len() as f64 / took.as_secs_f64()).round(),
    );
    report.detail("active_answer_bytes", answer);
    // The answer-size probe used pool[0]; start the measured use after it.
    let pool = Arc::new(pool);
    let oauth = ctx.oauth.clone();
    let timeout = ctx.common.timeout;
    let used = Arc::new(AtomicUsize::new(0));
    let used_target = used.clone();
    baseline_then_target(
        ctx,
        &mut report,
        "introspect-cold",
        &args.baseline,
        answer,
        |target, baseline| {
            let cursor = if baseline {
                Arc::new(AtomicUsize::new(0))
            } else {
                used_target.store(1, Ordering::Relaxed);
                used_target.clone()
            };
            (0..c)
                .map(|_| {
                    IntrospectWorker::cold(
                        Conn::new(target.clone(), timeout),
                        oauth.clone(),
                        pool.clone(),
                        cursor.clone(),
                        baseline,
                    )
                })
                .collect()
        },
    )
    .await?;
    let used = used.load(Ordering::Relaxed).min(pool.len());
    report.detail("pool_tokens_used", used);
    Ok(report)
}

/// Measures closed-loop cold introspection over a small pool of its own, to size the
/// real pool (cold introspection is much slower than hot, so hot numbers would overshoot).
async fn calibrate(ctx: &Ctx) -> Result<f64, String> {
    let n = (50 * ctx.common.concurrency).max(2000);
    let (pool, _) = issue_pool(ctx, n).await?;
    let pool = Arc::new(pool);
    let cursor = Arc::new(AtomicUsize::new(0));
    let plan = Plan {
        label: "calibrate".into(),
        warmup: Duration::ZERO,
        duration: Duration::from_secs(2),
        rate: None,
        quiet: true,
    };
    let workers = (0..ctx.common.concurrency)
        .map(|_| {
            IntrospectWorker::cold(
                ctx.conn(),
                ctx.oauth.clone(),
                pool.clone(),
                cursor.clone(),
                false,
            )
        })
        .collect();
    let phase = run_phase(&plan, &["calibrate"], workers).await?;
    let ok = phase.ops[0].hist.len();
    if ok == 0 || phase.measured.is_zero() {
        return Err(format!(
            "calibration: no successful introspection at {} ({:?})",
            ctx.target.url, phase.ops[0].errors
        ));
    }
    Ok(ok as f64 / phase.measured.as_secs_f64())
}
