//! `revoke`: POST /admin/revoke `{"kind":"session","value":<new id>}` as fast as possible
//! or at --rate. Every request records a new revocation (the store write, the audit record,
//! the announcement): the write path, as an operator's bulk revocation drives it. Admin
//! revocations are never rate limited, so the server's own cost is what is measured.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::header::HeaderValue;

use super::{note_phase, Ctx};
use crate::cli::RevokeArgs;
use crate::client::{basic_auth, Conn, Failure};
use crate::report::{Report, Row, Timeline};
use crate::runner::{run_phase, Step, Worker};

/// Records one revocation per step; expects 200 with the assigned `seq`.
pub struct RevokeWorker {
    conn: Conn,
    path: String,
    auth: HeaderValue,
    /// Makes every value unique across workers and runs.
    prefix: String,
    n: u64,
}

impl Worker for RevokeWorker {
    async fn prepare(&mut self) -> Result<(), Failure> {
        self.conn.connect().await
    }

    fn connections_opened(&self) -> u64 {
        self.conn.connects
    }

    async fn step(&mut self) -> Step {
        self.n += 1;
        let body = format!(
            r#"{{"kind":"session","value":"{}-{}","reason":"latch-load"}}"#,
            self.prefix, self.n
        );
        let result = match self
            .conn
            .post(
                &self.path,
                &self.auth,
                "application/json",
                Bytes::from(body),
            )
            .await
            .and_then(|r| r.ok())
        {
            Ok(r) if r.contains(br#""seq":"#) => Ok(()),
            Ok(_) => Err(Failure::Unexpected("no seq in the answer")),
            Err(f) => Err(f),
        };
        Step::Done { op: 0, result }
    }
}

/// `revoke`.
pub async fn run(ctx: &Ctx, args: &RevokeArgs) -> Result<Report, String> {
    let mut report = ctx.report("revoke");
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let auth = basic_auth(&args.admin_client);
    let path = ctx.target.path(&args.admin_revoke_path);
    let workers: Vec<RevokeWorker> = (0..ctx.common.concurrency)
        .map(|w| RevokeWorker {
            conn: ctx.conn(),
            path: path.clone(),
            auth: auth.clone(),
            prefix: format!("load-{run}-{w}"),
            n: 0,
        })
        .collect();
    let phase = run_phase(&ctx.plan("revoke"), &["revoke"], workers)
        .await
        .map_err(|e| format!("{}: {e}", ctx.target.url))?;
    let (url, c) = (ctx.target.url.as_str(), ctx.common.concurrency);
    let row = Row::total("revoke", url, c, &phase);
    report.count(&row);
    report.rows.push(row);
    report.timelines.push(Timeline::of("revoke", &phase));
    note_phase(&mut report, c, &phase);
    Ok(report)
}
