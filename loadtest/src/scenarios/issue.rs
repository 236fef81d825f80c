//! `issue`: POST /token grant_type=client_credentials, as fast as possible or at --rate.

use std::sync::Arc;

use super::{baseline_then_target, Ctx};
use crate::cli::IssueArgs;
use crate::client::{Conn, Failure, Oauth};
use crate::report::Report;
use crate::runner::{Step, Worker};

/// Sends token requests; expects an `access_token` (from the target) or the fixed
/// active answer (from the baseline).
pub struct IssueWorker {
    conn: Conn,
    oauth: Arc<Oauth>,
    against_baseline: bool,
}

impl Worker for IssueWorker {
    async fn prepare(&mut self) -> Result<(), Failure> {
        self.conn.connect().await
    }

    fn connections_opened(&self) -> u64 {
        self.conn.connects
    }

    async fn step(&mut self) -> Step {
        let result = if self.against_baseline {
            let o = &self.oauth;
            match self
                .conn
                .post_form(&o.token_path, &o.issuer_auth, o.token_request.clone())
                .await
                .and_then(|r| r.ok())
            {
                Ok(r) if r.active() == Some(true) => Ok(()),
                Ok(_) => Err(Failure::Unexpected("baseline answer")),
                Err(f) => Err(f),
            }
        } else {
            self.oauth.issue(&mut self.conn).await.map(|_| ())
        };
        Step::Done { op: 0, result }
    }
}

/// `issue`.
pub async fn run(ctx: &Ctx, args: &IssueArgs) -> Result<Report, String> {
    let mut report = ctx.report("issue");
    // One token first: the target works, and the baseline answers as many bytes.
    let answer = ctx
        .oauth
        .issue(&mut ctx.conn())
        .await
        .map_err(|f| format!("cannot obtain a token from {}: {f}", ctx.target.url))?
        .body
        .len();
    report.detail("token_answer_bytes", answer);
    let (oauth, c, timeout) = (
        ctx.oauth.clone(),
        ctx.common.concurrency,
        ctx.common.timeout,
    );
    baseline_then_target(
        ctx,
        &mut report,
        "issue",
        &args.baseline,
        answer,
        |target, baseline| {
            (0..c)
                .map(|_| IssueWorker {
                    conn: Conn::new(target.clone(), timeout),
                    oauth: oauth.clone(),
                    against_baseline: baseline,
                })
                .collect()
        },
    )
    .await?;
    Ok(report)
}
