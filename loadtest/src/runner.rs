//! The load engine: runs exactly `concurrency` worker tasks for warm-up + duration, closed
//! loop or paced at a fixed rate, records each request's latency in a per-worker
//! HdrHistogram, merges them, and prints progress to stderr once a second.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::client::Failure;

/// In --rate mode, a request sent later than this after its scheduled time was held back
/// by the generator (every worker busy waiting for the server): its latency is then taken
/// from the scheduled time, so that a stalled server is not hidden (coordinated omission).
/// Smaller delays are pacing and scheduling jitter and are not charged to the server.
pub const LATE_SLACK: Duration = Duration::from_millis(1);

/// Shortest sleep of the pacer thread: it releases the requests due in each such slice.
const PACER_SLICE: Duration = Duration::from_micros(50);

/// Highest latency the histograms hold (µs); longer requests are clamped to it.
const MAX_LATENCY_US: u64 = 60_000_000;

/// A new latency histogram in microseconds, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// Records `d` in microseconds (at least 1).
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_micros() as u64).clamp(1, MAX_LATENCY_US));
}

/// What one call of [`Worker::step`] did.
pub enum Step {
    /// One request of operation kind `op` (index into the phase's operation names).
    Done {
        op: usize,
        result: Result<(), Failure>,
    },
    /// Nothing left to do (e.g. the cold token pool is used up).
    Exhausted,
}

/// One worker task's state: its own connection(s) and whatever it sends.
pub trait Worker: Send + 'static {
    /// Opens connections before the clock starts.
    fn prepare(&mut self) -> impl Future<Output = Result<(), Failure>> + Send;
    /// Sends one request and checks its answer.
    fn step(&mut self) -> impl Future<Output = Step> + Send;
    /// Connections this worker has opened so far (more than one: the server closed some).
    fn connections_opened(&self) -> u64;
}

/// How a phase runs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Shown in progress lines.
    pub label: String,
    pub warmup: Duration,
    pub duration: Duration,
    pub rate: Option<f64>,
    pub quiet: bool,
}

/// Results of one operation kind in one phase.
pub struct OpStats {
    pub name: &'static str,
    /// Latencies of successful requests completed in the measured window (µs).
    pub hist: Histogram<u64>,
    /// Failed requests completed in the measured window, by kind of failure.
    pub errors: BTreeMap<String, u64>,
}

/// Results of one phase.
pub struct PhaseResult {
    pub ops: Vec<OpStats>,
    /// Length of the measured window: the duration, or less if the work ran out.
    pub measured: Duration,
    /// True when a worker ran out of work before the duration was over.
    pub exhausted: bool,
    /// Successful requests per `bucket` of the measured window, all operations together.
    pub timeline: Vec<u64>,
    pub bucket: Duration,
    /// Requests (successful or not) completed during the warm-up.
    pub warmup_requests: u64,
    /// Workers whose connection was open before the clock started.
    pub workers_ready: usize,
    /// Connections opened during the run beyond each worker's first one.
    pub reconnects: u64,
    /// --rate mode: measured requests sent late (latency counted from the schedule).
    pub late: u64,
}

struct Shared {
    start: Instant,
    warm_end: Instant,
    end: Instant,
    period: Option<f64>,
    /// --rate mode: one permit per request that is due, released by the pacer thread.
    pacer: Option<Arc<Semaphore>>,
    tickets: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    exhausted: AtomicBool,
    /// Set when every worker has stopped (ends the pacer thread).
    finished: AtomicBool,
    bucket: Duration,
    /// --rate mode: measured requests sent more than LATE_SLACK after their scheduled time.
    late: AtomicU64,
}

struct WorkerOut {
    hists: Vec<Histogram<u64>>,
    errors: Vec<BTreeMap<String, u64>>,
    timeline: Vec<u64>,
    last_done: Option<Instant>,
    warmup_requests: u64,
    connections: u64,
}

/// Timeline bucket for a measured duration: 100 ms, or coarser for long runs.
fn bucket_for(duration: Duration) -> Duration {
    Duration::from_millis(100).max(duration / 200)
}

/// Runs `workers` (one task each) through warm-up and the measured window.
/// `ops` names the operation kinds the workers report. Fails when no worker could connect.
pub async fn run_phase<W: Worker>(
    plan: &Plan,
    ops: &[&'static str],
    workers: Vec<W>,
) -> Result<PhaseResult, String> {
    // Connect every worker before the clock starts.
    let mut prepared = Vec::with_capacity(workers.len());
    let mut handles = Vec::with_capacity(workers.len());
    for mut w in workers {
        handles.push(tokio::spawn(async move {
            let r = w.prepare().await;
            (w, r)
        }));
    }
    let mut last_failure = None;
    for h in handles {
        let (w, r) = h.await.map_err(|e| format!("worker panicked: {e}"))?;
        match r {
            Ok(()) => prepared.push((w, true)),
            Err(f) => {
                last_failure = Some(f);
                prepared.push((w, false));
            }
        }
    }
    let workers_ready = prepared.iter().filter(|(_, ok)| *ok).count();
    if workers_ready == 0 {
        return Err(format!(
            "no worker could open a connection ({})",
            last_failure.map(|f| f.to_string()).unwrap_or_default()
        ));
    }

    let start = Instant::now();
    let bucket = bucket_for(plan.duration);
    let shared = Arc::new(Shared {
        start,
        warm_end: start + plan.warmup,
        end: start + plan.warmup + plan.duration,
        period: plan.rate.filter(|r| *r > 0.0).map(|r| 1.0 / r),
        pacer: plan.rate.map(|_| Arc::new(Semaphore::new(0))),
        tickets: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        exhausted: AtomicBool::new(false),
        finished: AtomicBool::new(false),
        bucket,
        late: AtomicU64::new(0),
    });
    let progress = (!plan.quiet).then(|| tokio::spawn(progress(plan.clone(), shared.clone())));
    let pacer = shared.pacer.is_some().then(|| {
        let shared = shared.clone();
        std::thread::spawn(move || pace(&shared))
    });
    let mut tasks = Vec::with_capacity(prepared.len());
    for (w, _) in prepared {
        tasks.push(tokio::spawn(drive(w, shared.clone(), ops.len())));
    }
    let mut outs = Vec::with_capacity(tasks.len());
    for t in tasks {
        outs.push(t.await.map_err(|e| format!("worker panicked: {e}"))?);
    }
    if let Some(p) = progress {
        p.abort();
    }
    if let Some(p) = pacer {
        shared.finished.store(true, Ordering::Relaxed);
        let _ = p.join();
    }

    // Merge.
    let mut stats: Vec<OpStats> = ops
        .iter()
        .map(|name| OpStats {
            name,
            hist: new_histogram(),
            errors: BTreeMap::new(),
        })
        .collect();
    let mut timeline = Vec::new();
    let mut last_done: Option<Instant> = None;
    let mut warmup_requests = 0;
    let mut connections = 0;
    let nworkers = outs.len() as u64;
    for out in outs {
        connections += out.connections;
        for (i, h) in out.hists.iter().enumerate() {
            stats[i].hist.add(h).expect("same histogram bounds");
        }
        for (i, errs) in out.errors.into_iter().enumerate() {
            for (k, n) in errs {
                *stats[i].errors.entry(k).or_default() += n;
            }
        }
        if timeline.len() < out.timeline.len() {
            timeline.resize(out.timeline.len(), 0);
        }
        for (i, n) in out.timeline.into_iter().enumerate() {
            timeline[i] += n;
        }
        last_done = last_done.max(out.last_done);
        warmup_requests += out.warmup_requests;
    }
    let exhausted = shared.exhausted.load(Ordering::Relaxed);
    let measured = if exhausted {
        last_done
            .map(|t| t.saturating_duration_since(shared.warm_end))
            .unwrap_or_default()
    } else {
        plan.duration
    };
    let full_buckets = measured.as_nanos().div_ceil(bucket.as_nanos()) as usize;
    timeline.resize(full_buckets, 0);
    Ok(PhaseResult {
        ops: stats,
        measured,
        exhausted,
        timeline,
        bucket,
        warmup_requests,
        workers_ready,
        reconnects: connections.saturating_sub(nworkers),
        late: shared.late.load(Ordering::Relaxed),
    })
}

/// One worker task's loop.
async fn drive<W: Worker>(mut w: W, shared: Arc<Shared>, nops: usize) -> WorkerOut {
    let mut out = WorkerOut {
        hists: (0..nops).map(|_| new_histogram()).collect(),
        errors: vec![BTreeMap::new(); nops],
        timeline: Vec::new(),
        last_done: None,
        warmup_requests: 0,
        connections: 0,
    };
    loop {
        let now = Instant::now();
        if now >= shared.end || shared.exhausted.load(Ordering::Relaxed) {
            break;
        }
        let mut began = now;
        let mut late = false;
        if let (Some(period), Some(pacer)) = (shared.period, &shared.pacer) {
            // Wait for the pacer to release a request; it closes the semaphore at the end.
            match pacer.acquire().await {
                Ok(permit) => permit.forget(),
                Err(_) => break,
            }
            let ticket = shared.tickets.fetch_add(1, Ordering::Relaxed);
            let due = shared.start + Duration::from_secs_f64(period * ticket as f64);
            let sent = Instant::now();
            late = sent > due + LATE_SLACK;
            began = if late { due } else { sent };
        }
        let step = w.step().await;
        let done = Instant::now();
        let (op, result) = match step {
            Step::Exhausted => {
                shared.exhausted.store(true, Ordering::Relaxed);
                if let Some(p) = &shared.pacer {
                    p.close();
                }
                break;
            }
            Step::Done { op, result } => (op, result),
        };
        shared.requests.fetch_add(1, Ordering::Relaxed);
        if result.is_err() {
            shared.errors.fetch_add(1, Ordering::Relaxed);
        }
        if done < shared.warm_end {
            out.warmup_requests += 1;
            continue;
        }
        if done >= shared.end {
            continue;
        }
        out.last_done = Some(done);
        if late {
            shared.late.fetch_add(1, Ordering::Relaxed);
        }
        match result {
            Ok(()) => {
                record(&mut out.hists[op], done - began);
                let b = ((done - shared.warm_end).as_nanos() / shared.bucket.as_nanos()) as usize;
                if out.timeline.len() <= b {
                    out.timeline.resize(b + 1, 0);
                }
                out.timeline[b] += 1;
            }
            Err(f) => *out.errors[op].entry(f.to_string()).or_default() += 1,
        }
    }
    out.connections = w.connections_opened();
    out
}

/// The pacer thread of --rate mode: releases request k at `start + k / rate`, checking
/// every PACER_SLICE at most (the tokio timer's 1 ms would send requests in bursts), and
/// closes the semaphore at the end of the run.
fn pace(shared: &Shared) {
    let (Some(period), Some(sem)) = (shared.period, &shared.pacer) else {
        return;
    };
    let start = shared.start.into_std();
    let end = shared.end.into_std();
    let mut released: u64 = 0;
    loop {
        let now = std::time::Instant::now();
        if now >= end
            || shared.exhausted.load(Ordering::Relaxed)
            || shared.finished.load(Ordering::Relaxed)
        {
            break;
        }
        // Requests due by now: k = 0, 1, ... with start + k * period <= now.
        let due = ((now - start).as_secs_f64() / period).floor() as u64 + 1;
        if due > released {
            sem.add_permits((due - released) as usize);
            released = due;
        }
        let next = start + Duration::from_secs_f64(period * released as f64);
        let wait = next.saturating_duration_since(now).max(PACER_SLICE);
        std::thread::sleep(wait.min(end.saturating_duration_since(now)));
    }
    sem.close();
}

/// Prints one progress line per second to stderr until aborted.
async fn progress(plan: Plan, shared: Arc<Shared>) {
    let mut tick = tokio::time::interval_at(
        shared.start + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let mut last = 0;
    loop {
        let now = tick.tick().await;
        let requests = shared.requests.load(Ordering::Relaxed);
        let errors = shared.errors.load(Ordering::Relaxed);
        let phase = if now < shared.warm_end {
            "warm-up"
        } else {
            "measure"
        };
        eprintln!(
            "[{}] {:>5.1}s {:<7} requests {:>9}  {:>8.0} req/s  errors {}",
            plan.label,
            (now - shared.start).as_secs_f64(),
            phase,
            requests,
            (requests - last) as f64,
            errors
        );
        let _ = std::io::stderr().flush();
        last = requests;
    }
}
