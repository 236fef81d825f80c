//! Where SETs are signed and pushed: one thread of its own, at a lower scheduling
//! priority (nice 10 on Linux) than the threads that answer requests. Signing and the
//! HTTP exchange are the CPU cost of Shared Signals (about 60 µs per SET on the test
//! machine, more than a revocation itself with Redis); on this thread they use what the
//! request path leaves, so a node that is busy answering falls behind on delivery, never
//! the other way round. The thread shares no lock with the request path: it gets a batch
//! of claims and the active key (an `Arc<Signer>`), and hands back what was delivered.
//! Store reads and cursor saves stay with the worker on the main runtime.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::client::{Connection, PushClient, PushError};
use crate::keys::Signer;
use crate::ssf::{set, Pos};
use crate::time::now_ms;

/// One batch for one stream: push these SETs in order, stop at the first failure.
pub struct Job {
    pub signer: Arc<Signer>,
    pub endpoint: String,
    pub authorization: Option<String>,
    /// The SETs' claims, in order.
    pub sets: Vec<(Pos, Value)>,
    /// The stream's open connection, if any; handed back in the [`Outcome`].
    pub conn: Option<Connection>,
    /// Until when (local Unix ms) the node may push: the lease, checked before each SET.
    pub held_until: Arc<AtomicI64>,
}

/// What a [`Job`] did.
pub struct Outcome {
    /// Positions accepted by the receiver, in order, with the push's duration.
    pub delivered: Vec<(Pos, Duration)>,
    /// The push that failed (the batch stopped there).
    pub failed: Option<(Pos, PushError)>,
    pub conn: Option<Connection>,
}

/// The handle to the push thread. Cheap to share.
pub struct Pusher {
    client: PushClient,
    /// `None` if the thread could not be started: jobs then run on the caller's runtime.
    jobs: Option<mpsc::UnboundedSender<(Job, oneshot::Sender<Outcome>)>>,
}

impl Pusher {
    /// Starts the push thread.
    pub fn start(client: PushClient) -> Pusher {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Job, oneshot::Sender<Outcome>)>();
        let thread_client = client.clone();
        let started = std::thread::Builder::new()
            .name("latch-ssf-push".into())
            .spawn(move || {
                lower_priority();
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(error) => {
                        tracing::error!(%error, "ssf push runtime not started");
                        return;
                    }
                };
                runtime.block_on(async move {
                    while let Some((job, reply)) = rx.recv().await {
                        let client = thread_client.clone();
                        tokio::spawn(async move {
                            let _ = reply.send(run(&client, job).await);
                        });
                    }
                });
            });
        let jobs = match started {
            Ok(_) => Some(tx),
            Err(error) => {
                tracing::warn!(%error, "ssf push thread not started; pushing from the main runtime");
                None
            }
        };
        Pusher { client, jobs }
    }

    /// Runs `job` on the push thread and waits for its outcome.
    pub async fn push(&self, job: Job) -> Outcome {
        let Some(jobs) = &self.jobs else {
            return run(&self.client, job).await;
        };
        let (reply, answer) = oneshot::channel();
        if jobs.send((job, reply)).is_err() {
            return Outcome {
                delivered: Vec::new(),
                failed: None,
                conn: None,
            };
        }
        answer.await.unwrap_or(Outcome {
            delivered: Vec::new(),
            failed: None,
            conn: None,
        })
    }
}

/// Signs and pushes the job's SETs one by one, in order.
async fn run(client: &PushClient, job: Job) -> Outcome {
    let mut conn = job.conn;
    let mut delivered = Vec::with_capacity(job.sets.len());
    for (pos, claims) in &job.sets {
        if now_ms() >= job.held_until.load(Ordering::Acquire) {
            break;
        }
        let token = match set::sign(&job.signer, claims) {
            Ok(t) => t,
            Err(error) => {
                tracing::error!(%error, "SET not signed");
                break;
            }
        };
        let started = Instant::now();
        match client
            .push(
                &mut conn,
                &job.endpoint,
                job.authorization.as_deref(),
                &token,
            )
            .await
        {
            Ok(()) => delivered.push((*pos, started.elapsed())),
            Err(error) => {
                return Outcome {
                    delivered,
                    failed: Some((*pos, error)),
                    conn,
                }
            }
        }
    }
    Outcome {
        delivered,
        failed: None,
        conn,
    }
}

/// Lowers this thread's scheduling priority (nice 10): the request path comes first.
#[cfg(target_os = "linux")]
fn lower_priority() {
    // SAFETY: neither call takes a pointer; on Linux, PRIO_PROCESS with a thread id
    // changes that one thread's nice value.
    let result = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10)
    };
    if result != 0 {
        tracing::warn!("could not lower the ssf push thread's priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}
