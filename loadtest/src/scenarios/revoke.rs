//! `revoke`: RFC 7009 revocation throughput. A pool of fresh tokens is issued first, then
//! each is revoked exactly once (every revocation appends to the log and reaches every
//! node). With `--compare-target`, the same load runs against a second deployment in the
//! same invocation, alternating for `--rounds` rounds (compare first in odd rounds, target
//! first in even ones, so a drift over the run favours neither), and the report
//! gives the throughput ratio: how latch measures the cost of a feature that can be
//! switched off on the second deployment (e.g. `node.acks = false`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::{issue_pool, Ctx};
use crate::cli::RevokeArgs;
use crate::client::{Conn, Failure, Oauth, Target};
use crate::report::{Report, Row};
use crate::runner::{run_phase, Step, Worker};

/// Revokes the next unused token of the pool; stops when it is used up.
pub struct RevokeWorker {
    conn: Conn,
    oauth: Arc<Oauth>,
    tokens: Arc<Vec<Bytes>>,
    cursor: Arc<AtomicUsize>,
}

impl Worker for RevokeWorker {
    async fn prepare(&mut self) -> Result<(), Failure> {
        self.conn.connect().await
    }

    fn connections_opened(&self) -> u64 {
        self.conn.connects
    }

    async fn step(&mut self) -> Step {
        let i = self.cursor.fetch_add(1, Ordering::Relaxed);
        let Some(token) = self.tokens.get(i).cloned() else {
            return Step::Exhausted;
        };
        Step::Done {
            op: 0,
            result: self.oauth.revoke(&mut self.conn, token).await,
        }
    }
}

/// One measured phase against `target` (a fresh pool each time).
async fn phase(
    ctx: &Ctx,
    args: &RevokeArgs,
    target: Arc<Target>,
    label: &str,
) -> Result<Row, String> {
    let mut common = ctx.common.clone();
    common.target = target.url.clone();
    let sub = Ctx::new(common, ctx.threads)?;
    let (pool, took) = issue_pool(&sub, args.tokens).await?;
    if !ctx.common.quiet {
        eprintln!(
            "[{label}] {} tokens issued at {} in {:.2}s",
            pool.len(),
            target.url,
            took.as_secs_f64()
        );
    }
    let tokens = Arc::new(pool);
    let cursor = Arc::new(AtomicUsize::new(0));
    let workers: Vec<RevokeWorker> = (0..ctx.common.concurrency)
        .map(|_| RevokeWorker {
            conn: Conn::new(target.clone(), ctx.common.timeout),
            oauth: sub.oauth.clone(),
            tokens: tokens.clone(),
            cursor: cursor.clone(),
        })
        .collect();
    // The runner keeps operation names for the life of the run.
    let op: &'static str = Box::leak(label.to_string().into_boxed_str());
    let result = run_phase(&ctx.plan(label), &[op], workers)
        .await
        .map_err(|e| format!("{}: {e}", target.url))?;
    if result.exhausted {
        eprintln!("[{label}] the pool ran out: raise --tokens");
    }
    Ok(Row::from_op(
        label,
        &target.url,
        ctx.common.concurrency,
        &result,
        &result.ops[0],
    ))
}

/// `revoke`.
pub async fn run(ctx: &Ctx, args: &RevokeArgs) -> Result<Report, String> {
    let mut report = ctx.report("revoke");
    report.detail("pool_tokens_per_phase", args.tokens);
    let compare = args
        .compare_target
        .as_deref()
        .map(Target::parse)
        .transpose()?;
    let mut target_rows = vec![];
    let mut compare_rows = vec![];
    for round in 1..=args.rounds.max(1) {
        // ABBA: odd rounds measure the compare deployment first, even rounds the target,
        // so a drift over the run (a growing log, an AOF rewrite) favours neither.
        let target_first = round % 2 == 0;
        if target_first {
            target_rows
                .push(phase(ctx, args, ctx.target.clone(), &format!("target/{round}")).await?);
        }
        if let Some(c) = &compare {
            compare_rows.push(phase(ctx, args, c.clone(), &format!("compare/{round}")).await?);
        }
        if !target_first {
            target_rows
                .push(phase(ctx, args, ctx.target.clone(), &format!("target/{round}")).await?);
        }
    }
    let total = |rows: &[Row]| -> (u64, f64) {
        rows.iter()
            .fold((0, 0.0), |(n, s), r| (n + r.requests, s + r.duration_s))
    };
    let (tn, ts) = total(&target_rows);
    if let Some(c) = &compare {
        let (cn, cs) = total(&compare_rows);
        let (t_rate, c_rate) = (tn as f64 / ts.max(1e-9), cn as f64 / cs.max(1e-9));
        report.detail("target_revocations_per_s", (t_rate * 10.0).round() / 10.0);
        report.detail("compare_revocations_per_s", (c_rate * 10.0).round() / 10.0);
        report.detail(
            "throughput_target_over_compare",
            (t_rate / c_rate.max(1e-9) * 1000.0).round() / 1000.0,
        );
        report.detail("compare_target", c.url.clone());
    }
    for (t, c) in target_rows.into_iter().zip(
        compare_rows
            .into_iter()
            .map(Some)
            .chain(std::iter::repeat_with(|| None)),
    ) {
        if let Some(c) = c {
            report.count(&c);
            report.rows.push(c);
        }
        report.count(&t);
        report.rows.push(t);
    }
    Ok(report)
}
