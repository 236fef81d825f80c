//! `introspect-hot` (a few tokens, introspected again and again: plain, minimal, signed or
//! batched) and `introspect-cold` (a pre-issued pool, each token introspected exactly once).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue, ACCEPT};

use super::{
    active_answer_size, baseline_then_target, hot_token_texts, hot_tokens, issue_pool, Ctx,
};
use crate::cli::{AskFlags, ColdArgs, HotArgs};
use crate::client::{token_form, Conn, Failure, Oauth, Reply};
use crate::report::Report;
use crate::runner::{run_phase, Plan, Step, Worker};

/// The RFC 9701 media type.
const SIGNED: &str = "application/token-introspection+jwt";

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

/// `introspect-hot`: the same few tokens again and again, asked as the flags say (plain,
/// `--minimal`, `--signed`, `--batch N`).
pub async fn hot(ctx: &Ctx, args: &HotArgs) -> Result<Report, String> {
    let ask = Arc::new(Ask::new(ctx, &args.ask));
    let mut report = ctx.report("introspect-hot");
    let texts = hot_token_texts(ctx, args.tokens).await?;
    let bodies = Arc::new(ask.bodies(&texts));
    let answer = ask.answer_size(ctx, &bodies[0]).await?;
    report.detail("hot_tokens", texts.len());
    report.detail("ask", ask.label);
    report.detail("tokens_per_request", ask.tokens);
    report.detail("active_answer_bytes", answer);
    let (oauth, c) = (ctx.oauth.clone(), ctx.common.concurrency);
    let timeout = ctx.common.timeout;
    baseline_then_target(
        ctx,
        &mut report,
        ask.label,
        &args.baseline,
        answer,
        |target, against_baseline| {
            (0..c)
                .map(|i| AskWorker {
                    conn: Conn::new(target.clone(), timeout),
                    oauth: oauth.clone(),
                    ask: ask.clone(),
                    bodies: bodies.clone(),
                    next: i,
                    against_baseline,
                })
                .collect()
        },
    )
    .await?;
    if ask.tokens > 1 {
        if let Some(row) = report.rows.last() {
            let per_second = (row.throughput * ask.tokens as f64).round();
            report.detail("tokens_per_second", per_second);
        }
    }
    Ok(report)
}

/// What each `introspect-hot` request asks for, and how its answer is checked.
pub struct Ask {
    /// Row label: `introspect-hot`, or with `/minimal`, `/signed`, `/batch` ...
    label: &'static str,
    path: String,
    content_type: &'static str,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Tokens per request: 1, or the batch size.
    tokens: usize,
    minimal: bool,
    signed: bool,
}

impl Ask {
    fn new(ctx: &Ctx, flags: &AskFlags) -> Ask {
        let mut headers = Vec::new();
        if flags.minimal {
            headers.push((
                HeaderName::from_static("prefer"),
                HeaderValue::from_static("return=minimal"),
            ));
        }
        if flags.signed {
            headers.push((ACCEPT, HeaderValue::from_static(SIGNED)));
        }
        let label = match (flags.batch.is_some(), flags.signed, flags.minimal) {
            (true, _, false) => "introspect-hot/batch",
            (true, _, true) => "introspect-hot/batch+minimal",
            (false, true, false) => "introspect-hot/signed",
            (false, true, true) => "introspect-hot/signed+minimal",
            (false, false, true) => "introspect-hot/minimal",
            (false, false, false) => "introspect-hot",
        };
        let (path, content_type) = match flags.batch {
            Some(_) => (ctx.target.path(&flags.batch_path), "application/json"),
            None => (
                ctx.oauth.introspect_path.clone(),
                "application/x-www-form-urlencoded",
            ),
        };
        Ask {
            label,
            path,
            content_type,
            headers,
            tokens: flags.batch.map_or(1, usize::from),
            minimal: flags.minimal,
            signed: flags.signed,
        }
    }

    /// The request bodies the workers cycle through: one form per token, or one batch per
    /// starting token (each the next `tokens` tokens, round robin).
    fn bodies(&self, texts: &[String]) -> Vec<Bytes> {
        if self.content_type != "application/json" {
            return texts.iter().map(|t| token_form(t)).collect();
        }
        (0..texts.len())
            .map(|start| {
                let batch: Vec<&str> = (0..self.tokens)
                    .map(|k| texts[(start + k) % texts.len()].as_str())
                    .collect();
                Bytes::from(serde_json::json!({ "tokens": batch }).to_string())
            })
            .collect()
    }

    async fn send(&self, conn: &mut Conn, oauth: &Oauth, body: Bytes) -> Result<Reply, Failure> {
        conn.post(
            &self.path,
            &oauth.introspect_auth,
            self.content_type,
            &self.headers,
            body,
        )
        .await?
        .ok()
    }

    /// Whether the target's answer says every token is active, in the form asked for.
    fn check(&self, reply: &Reply) -> Result<(), Failure> {
        let ok = if self.signed {
            signed_payload(&reply.body).is_some_and(|p| {
                let needle: &[u8] = br#""active":true"#;
                p.windows(needle.len()).any(|w| w == needle)
            })
        } else if self.tokens > 1 {
            let needle: &[u8] = br#""active":true"#;
            let actives = reply.body.windows(needle.len()).filter(|w| *w == needle);
            actives.count() == self.tokens && !reply.contains(br#""active":false"#)
        } else if self.minimal {
            reply.body.as_ref() == br#"{"active":true}"#
        } else {
            reply.active() == Some(true)
        };
        if ok {
            Ok(())
        } else {
            Err(Failure::Unexpected(
                "not every token active, or not the form asked for",
            ))
        }
    }

    /// One request as the workers will send it: the target answers it in the form asked
    /// for, every token active; returns the answer's size (for the baseline).
    async fn answer_size(&self, ctx: &Ctx, body: &Bytes) -> Result<usize, String> {
        let reply = self
            .send(&mut ctx.conn(), &ctx.oauth, body.clone())
            .await
            .map_err(|f| format!("introspection at {} failed: {f}", ctx.target.url))?;
        self.check(&reply).map_err(|f| {
            format!(
                "{f} at {}: {}",
                ctx.target.url,
                String::from_utf8_lossy(&reply.body)
            )
        })?;
        Ok(reply.body.len())
    }
}

/// The decoded payload of a compact JWS.
fn signed_payload(body: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(body).ok()?;
    let payload = text.split('.').nth(1)?;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
}

/// Sends the hot requests as [`Ask`] says; against the baseline (which answers one fixed
/// JSON body) it checks only `"active":true`.
pub struct AskWorker {
    conn: Conn,
    oauth: Arc<Oauth>,
    ask: Arc<Ask>,
    bodies: Arc<Vec<Bytes>>,
    next: usize,
    against_baseline: bool,
}

impl Worker for AskWorker {
    async fn prepare(&mut self) -> Result<(), Failure> {
        self.conn.connect().await
    }

    fn connections_opened(&self) -> u64 {
        self.conn.connects
    }

    async fn step(&mut self) -> Step {
        self.next = self.next.wrapping_add(1);
        let body = self.bodies[self.next % self.bodies.len()].clone();
        let result = match self.ask.send(&mut self.conn, &self.oauth, body).await {
            Ok(reply) if self.against_baseline => match reply.active() {
                Some(true) => Ok(()),
                _ => Err(Failure::Unexpected("baseline answer")),
            },
            Ok(reply) => self.ask.check(&reply),
            Err(f) => Err(f),
        };
        Step::Done { op: 0, result }
    }
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
