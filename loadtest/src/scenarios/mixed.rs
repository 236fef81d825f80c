//! `mixed`: hot introspection with a trickle of issuance and revocation on the same
//! connections, as a resource-server fleet plus token-issuing services would send it.
//! Only tokens issued during the run are revoked, so the hot tokens stay active.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::{hot_tokens, note_phase, Ctx};
use crate::cli::MixedArgs;
use crate::client::{token_form, Conn, Failure, Oauth};
use crate::report::{Report, Row, Timeline};
use crate::runner::{run_phase, Step, Worker};

const INTROSPECT: usize = 0;
const ISSUE: usize = 1;
const REVOKE: usize = 2;
const OPS: [&str; 3] = ["introspect", "issue", "revoke"];

/// Issued tokens waiting to be revoked are capped, so memory stays flat when revocation
/// is rarer than issuance.
const MAX_REVOCABLE: usize = 10_000;

/// State shared by the workers of the run.
struct Mix {
    oauth: Arc<Oauth>,
    hot: Vec<Bytes>,
    issue_every: u64,
    revoke_every: u64,
    /// Operations started so far: decides which operation comes next.
    counter: AtomicU64,
    /// Tokens issued during the run and not yet revoked.
    revocable: Mutex<Vec<Bytes>>,
}

struct MixedWorker {
    conn: Conn,
    mix: Arc<Mix>,
    next_hot: usize,
}

impl MixedWorker {
    async fn issue(&mut self) -> Step {
        let result = match self.mix.oauth.issue_token(&mut self.conn).await {
            Ok(t) => {
                let mut pool = self.mix.revocable.lock().expect("not poisoned");
                if pool.len() < MAX_REVOCABLE {
                    pool.push(token_form(&t));
                }
                Ok(())
            }
            Err(f) => Err(f),
        };
        Step::Done { op: ISSUE, result }
    }
}

impl Worker for MixedWorker {
    async fn prepare(&mut self) -> Result<(), Failure> {
        self.conn.connect().await
    }

    fn connections_opened(&self) -> u64 {
        self.conn.connects
    }

    async fn step(&mut self) -> Step {
        let m = self.mix.clone();
        let n = m.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let due = |every: u64| every > 0 && n.is_multiple_of(every);
        if due(m.revoke_every) {
            let token = m.revocable.lock().expect("not poisoned").pop();
            match token {
                Some(t) => {
                    let result = m.oauth.revoke(&mut self.conn, t).await;
                    return Step::Done { op: REVOKE, result };
                }
                // Nothing issued yet: issue instead, the next revocation finds it.
                None => return self.issue().await,
            }
        }
        if due(m.issue_every) {
            return self.issue().await;
        }
        self.next_hot = self.next_hot.wrapping_add(1);
        let token = m.hot[self.next_hot % m.hot.len()].clone();
        let result = match m.oauth.introspect(&mut self.conn, token).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Failure::Unexpected("active:false")),
            Err(f) => Err(f),
        };
        Step::Done {
            op: INTROSPECT,
            result,
        }
    }
}

/// `mixed`.
pub async fn run(ctx: &Ctx, args: &MixedArgs) -> Result<Report, String> {
    let mut report = ctx.report("mixed");
    let mix = Arc::new(Mix {
        oauth: ctx.oauth.clone(),
        hot: hot_tokens(ctx, args.tokens).await?,
        issue_every: args.issue_every,
        revoke_every: args.revoke_every,
        counter: AtomicU64::new(0),
        revocable: Mutex::new(Vec::new()),
    });
    report.detail("hot_tokens", mix.hot.len());
    report.detail("issue_every", args.issue_every);
    report.detail("revoke_every", args.revoke_every);
    let workers = (0..ctx.common.concurrency)
        .map(|i| MixedWorker {
            conn: ctx.conn(),
            mix: mix.clone(),
            next_hot: i,
        })
        .collect();
    let phase = run_phase(&ctx.plan("mixed"), &OPS, workers)
        .await
        .map_err(|e| format!("{}: {e}", ctx.target.url))?;
    let (url, c) = (ctx.target.url.as_str(), ctx.common.concurrency);
    let total = Row::total("mixed/all", url, c, &phase);
    report.count(&total);
    for op in &phase.ops {
        report.rows.push(Row::from_op(
            format!("mixed/{}", op.name),
            url,
            c,
            &phase,
            op,
        ));
    }
    report.rows.push(total);
    report
        .timelines
        .push(Timeline::of("mixed (all operations)", &phase));
    note_phase(&mut report, c, &phase);
    Ok(report)
}
