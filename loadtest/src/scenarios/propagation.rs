//! `revoke-propagation`: issue a token on node 1, check it is active on every node, revoke
//! it on node 1 (RFC 7009), then poll every node until it answers `{"active":false}` and
//! record, per node, the time from the revocation's 200 to that first inactive answer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

use super::Ctx;
use crate::cli::PropagationArgs;
use crate::client::{token_form, Conn, Failure, Oauth, Target};
use crate::report::{Report, Row};
use crate::runner::{new_histogram, record};

/// A node: where it is, its endpoint paths, and the connection that polls it.
struct Node {
    target: Arc<Target>,
    oauth: Arc<Oauth>,
    conn: Option<Conn>,
}

/// Per-node results.
struct NodeStats {
    lag: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    polls: u64,
    poll_time: Duration,
    /// Iterations where the very first poll already answered inactive.
    first_poll_inactive: u64,
}

/// What one poller reports back.
struct Polled {
    conn: Conn,
    lag: Result<Duration, Failure>,
    polls: u64,
    poll_time: Duration,
}

/// Sleeps `d`; below the tokio timer's 1 ms granularity, on a blocking thread.
async fn pause(d: Duration) {
    if d.is_zero() {
        return;
    }
    if d < Duration::from_millis(1) {
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(d)).await;
    } else {
        tokio::time::sleep(d).await;
    }
}

/// Polls one node until the token introspects inactive (or the timeout).
async fn poll(
    mut conn: Conn,
    oauth: Arc<Oauth>,
    body: bytes::Bytes,
    revoked_at: Instant,
    interval: Duration,
    timeout: Duration,
) -> Polled {
    let mut polls = 0;
    let began = Instant::now();
    let lag = loop {
        polls += 1;
        match oauth.introspect(&mut conn, body.clone()).await {
            Ok(false) => break Ok(revoked_at.elapsed()),
            Ok(true) => {}
            Err(f) => break Err(f),
        }
        if revoked_at.elapsed() > timeout {
            break Err(Failure::Unexpected("still active at --poll-timeout"));
        }
        pause(interval).await;
    };
    Polled {
        conn,
        lag,
        polls,
        poll_time: began.elapsed(),
    }
}

fn bump(errors: &mut BTreeMap<String, u64>, what: impl Into<String>) {
    *errors.entry(what.into()).or_default() += 1;
}

/// `revoke-propagation`.
pub async fn run(ctx: &Ctx, args: &PropagationArgs) -> Result<Report, String> {
    let mut report = ctx.report("revoke-propagation");
    let wanted = if ctx.common.smoke {
        args.iterations.min(50)
    } else {
        args.iterations
    };
    let urls = if args.nodes.is_empty() {
        vec![ctx.common.target.clone()]
    } else {
        args.nodes.clone()
    };
    let timeout = ctx.common.timeout;
    let mut nodes = Vec::new();
    for url in &urls {
        let target = Target::parse(url.trim())?;
        let oauth = Arc::new(Oauth::new(&target, &ctx.common));
        let mut conn = Conn::new(target.clone(), timeout);
        conn.connect()
            .await
            .map_err(|f| format!("cannot reach node {}: {f}", target.url))?;
        nodes.push(Node {
            target,
            oauth,
            conn: Some(conn),
        });
    }
    let origin = nodes[0].oauth.clone();
    let mut issuer = Conn::new(nodes[0].target.clone(), timeout);
    origin
        .issue_token(&mut issuer)
        .await
        .map_err(|f| format!("cannot obtain a token from {}: {f}", nodes[0].target.url))?;

    let mut stats: Vec<NodeStats> = nodes
        .iter()
        .map(|_| NodeStats {
            lag: new_histogram(),
            errors: BTreeMap::new(),
            polls: 0,
            poll_time: Duration::ZERO,
            first_poll_inactive: 0,
        })
        .collect();
    let mut slowest = new_histogram();
    let mut issue_lat = new_histogram();
    let mut revoke_lat = new_histogram();
    let mut issue_errors = BTreeMap::new();
    let mut revoke_errors = BTreeMap::new();

    let start = Instant::now();
    let warm_end = start + ctx.common.warmup;
    let end = warm_end + ctx.common.duration;
    let mut measured = 0u64;
    let mut first_measured: Option<Instant> = None;
    let mut last_done = start;
    let mut last_print = start;
    let mut iterations = 0u64;
    let mut failed = 0u64;
    while measured < wanted && Instant::now() < end {
        let began = Instant::now();
        let recording = began >= warm_end;
        if recording && first_measured.is_none() {
            first_measured = Some(began);
        }
        iterations += 1;
        if !ctx.common.quiet && began - last_print >= Duration::from_secs(1) {
            last_print = began;
            eprintln!(
                "[revoke-propagation] {:>5.1}s {} iterations {iterations}  measured {measured}  errors {failed}",
                (began - start).as_secs_f64(),
                if recording { "measure" } else { "warm-up" },
            );
        }

        // 1. Issue on node 1.
        let token = match origin.issue_token(&mut issuer).await {
            Ok(t) => t,
            Err(f) => {
                failed += 1;
                if recording {
                    bump(&mut issue_errors, f.to_string());
                }
                pause(Duration::from_millis(10)).await;
                continue;
            }
        };
        if recording {
            record(&mut issue_lat, began.elapsed());
        }
        let body = token_form(&token);

        // 2. Active everywhere?
        let mut all_active = true;
        for (node, st) in nodes.iter_mut().zip(stats.iter_mut()) {
            let conn = node.conn.as_mut().expect("conn is home between iterations");
            let what = match node.oauth.introspect(conn, body.clone()).await {
                Ok(true) => continue,
                Ok(false) => "not active before the revocation".to_string(),
                Err(f) => format!("check before the revocation: {f}"),
            };
            all_active = false;
            if recording {
                bump(&mut st.errors, what);
            }
        }
        if !all_active {
            failed += 1;
            continue;
        }

        // 3. Revoke on node 1; the clock starts at its 200.
        let t0 = Instant::now();
        if let Err(f) = origin.revoke(&mut issuer, body.clone()).await {
            failed += 1;
            if recording {
                bump(&mut revoke_errors, f.to_string());
            }
            continue;
        }
        let revoked_at = Instant::now();
        if recording {
            record(&mut revoke_lat, revoked_at - t0);
        }

        // 4. Poll every node at once until it answers inactive.
        let pollers: Vec<_> = nodes
            .iter_mut()
            .map(|node| {
                let conn = node.conn.take().expect("conn is home between iterations");
                tokio::spawn(poll(
                    conn,
                    node.oauth.clone(),
                    body.clone(),
                    revoked_at,
                    args.poll_interval,
                    args.poll_timeout,
                ))
            })
            .collect();
        let mut worst: Option<Duration> = None;
        let mut complete = true;
        for (i, p) in pollers.into_iter().enumerate() {
            let polled = p.await.map_err(|e| format!("poller panicked: {e}"))?;
            nodes[i].conn = Some(polled.conn);
            let st = &mut stats[i];
            match polled.lag {
                Ok(lag) => {
                    if recording {
                        record(&mut st.lag, lag);
                        st.polls += polled.polls;
                        st.poll_time += polled.poll_time;
                        st.first_poll_inactive += u64::from(polled.polls == 1);
                    }
                    if i > 0 || nodes.len() == 1 {
                        worst = worst.max(Some(lag));
                    }
                }
                Err(f) => {
                    complete = false;
                    if recording {
                        bump(&mut st.errors, f.to_string());
                    }
                }
            }
        }
        if !complete {
            failed += 1;
            continue;
        }
        if recording {
            if let Some(w) = worst {
                record(&mut slowest, w);
            }
            measured += 1;
            last_done = Instant::now();
        }
    }

    let window = first_measured
        .map(|f| last_done.saturating_duration_since(f))
        .unwrap_or_default();
    let others: Vec<usize> = if nodes.len() == 1 {
        vec![0]
    } else {
        (1..nodes.len()).collect()
    };
    let mut each = new_histogram();
    let mut each_errors = BTreeMap::new();
    for &i in &others {
        each.add(&stats[i].lag).expect("same bounds");
        for (k, n) in &stats[i].errors {
            *each_errors
                .entry(format!("node {}: {k}", i + 1))
                .or_default() += n;
        }
    }
    report.ok_requests = measured;
    report.failed_requests = stats
        .iter()
        .flat_map(|s| s.errors.values())
        .chain(issue_errors.values())
        .chain(revoke_errors.values())
        .sum();
    // With one node its own row is the headline; with more, the other nodes together.
    if nodes.len() > 1 {
        let group = if nodes.len() == 2 {
            "node 2".to_string()
        } else {
            format!("nodes 2-{}", nodes.len())
        };
        report.rows.push(Row::new(
            "lag/each node",
            &group,
            1,
            window,
            each,
            each_errors,
        ));
        report.rows.push(Row::new(
            "lag/all nodes",
            &group,
            1,
            window,
            slowest,
            BTreeMap::new(),
        ));
    }
    for (i, (node, st)) in nodes.iter().zip(&stats).enumerate() {
        let label = if i == 0 {
            "lag/node 1 (origin)".to_string()
        } else {
            format!("lag/node {}", i + 1)
        };
        report.rows.push(Row::new(
            label,
            &node.target.url,
            1,
            window,
            st.lag.clone(),
            st.errors.clone(),
        ));
    }
    let o = &nodes[0].target.url;
    report
        .rows
        .push(Row::new("issue", o, 1, window, issue_lat, issue_errors));
    report
        .rows
        .push(Row::new("revoke", o, 1, window, revoke_lat, revoke_errors));
    let polls: u64 = stats.iter().map(|s| s.polls).sum();
    let poll_time: Duration = stats.iter().map(|s| s.poll_time).sum();
    report.detail("nodes", urls.clone());
    report.detail("iterations_measured", measured);
    report.detail("iterations_total", iterations);
    report.detail("iterations_failed", failed);
    if polls > 0 {
        report.detail(
            "mean_poll_round_trip_us",
            (poll_time.as_secs_f64() * 1e6 / polls as f64).round(),
        );
        report.detail(
            "polls_per_node_per_iteration",
            ((polls as f64 / measured.max(1) as f64 / nodes.len() as f64) * 100.0).round() / 100.0,
        );
    }
    report.detail(
        "first_poll_already_inactive",
        stats
            .iter()
            .map(|s| format!("{}/{}", s.first_poll_inactive, s.lag.len()))
            .collect::<Vec<_>>(),
    );
    report.detail("poll_interval_us", args.poll_interval.as_micros() as u64);
    let mut note = "lag = time from the revocation's 200 on node 1 until the node's first \
        {\"active\":false} answer arrived (an upper bound; its resolution is one poll round trip)"
        .to_string();
    if nodes.len() > 1 {
        note.push_str("; lag/all nodes = the slowest of the other nodes in each iteration");
    }
    report.notes.push(note);
    if measured < wanted {
        report.notes.push(format!(
            "stopped by --duration after {measured} of {wanted} measured iterations"
        ));
    }
    Ok(report)
}
