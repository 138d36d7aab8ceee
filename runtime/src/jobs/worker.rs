//! The worker loop every node runs when Raft is configured: ask for a batch, run it, report it,
//! ask again.
//!
//! Owns: [`WorkerOptions`] and [`run`]: `lanes` loops (so at most `lanes` leases are in flight,
//! never more than the scheduler's per-worker cap), each asking with a fresh request number,
//! running a granted batch on a blocking thread through the [`Executor`] while renewing the
//! lease, and reporting the results together with the ask for the next batch
//! (`CompleteAndLease`: one log entry per batch instead of two), retried until the scheduler
//! answers; a second report of the same lease is refused as unknown. A batch whose executor
//! returns an error is not reported (its lease lapses and it runs again); a report refused on a
//! try with no earlier unanswered try is final, and the executor may discard what it stored. With no work, a lane backs off
//! exponentially from `idle_min` to `idle_max`; a granted batch resets it.
//! Shutdown: the loop stops at the next await once the shutdown signal changes (or the task is
//! aborted); either is safe, because a lease nobody completes expires and its inputs run again.
//! Must never: complete a lease twice, hold more than `lanes` leases, spin without a pause when
//! the cluster has no work or no leader, or panic on an answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use idunno_core::membership::NodeId;
use idunno_core::scheduler::{
    Completion, Grant, LEASES_PER_WORKER_MAX, SchedCommand, SchedError, SchedResult,
};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::Executor;
use super::client::SchedClient;

/// How a node's worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerOptions {
    /// Batches in flight at once (1..=the scheduler's per-worker lease cap); 0 runs no worker.
    pub lanes: usize,
    /// First pause when there is no work.
    pub idle_min: Duration,
    /// Longest pause when there is no work (or no leader).
    pub idle_max: Duration,
    /// Deadline of one request to the cluster.
    pub call_timeout: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            lanes: 2,
            idle_min: Duration::from_millis(5),
            idle_max: Duration::from_millis(500),
            call_timeout: Duration::from_secs(3),
        }
    }
}

/// Counters of one worker (for tests and logs).
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Batches granted.
    pub leased: AtomicU64,
    /// Batches whose report the scheduler accepted.
    pub completed: AtomicU64,
    /// Reports refused (the lease had expired or was revoked).
    pub refused: AtomicU64,
}

/// Runs the worker of node `me`, asking through `client`, until `shutdown` changes.
pub async fn run(
    me: NodeId,
    client: Arc<SchedClient>,
    executor: Arc<dyn Executor>,
    options: WorkerOptions,
    stats: Arc<WorkerStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let lanes = options.lanes.min(LEASES_PER_WORKER_MAX);
    if lanes == 0 {
        return;
    }
    let requests = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    for _ in 0..lanes {
        let lane = Lane {
            me,
            client: Arc::clone(&client),
            executor: Arc::clone(&executor),
            options,
            requests: Arc::clone(&requests),
            stats: Arc::clone(&stats),
        };
        set.spawn(lane.run());
    }
    tokio::select! {
        _ = shutdown.changed() => {}
        _ = async { while set.join_next().await.is_some() {} } => {}
    }
    set.abort_all();
    debug!("worker stopped");
}

struct Lane {
    me: NodeId,
    client: Arc<SchedClient>,
    executor: Arc<dyn Executor>,
    options: WorkerOptions,
    requests: Arc<AtomicU64>,
    stats: Arc<WorkerStats>,
}

impl Lane {
    fn next_request(&self) -> u64 {
        self.requests.fetch_add(1, Ordering::Relaxed) + 1
    }

    async fn run(self) {
        let mut idle = self.options.idle_min;
        let mut next: Option<Grant> = None;
        loop {
            let grant = match next.take() {
                Some(grant) => grant,
                None => {
                    let command = SchedCommand::Lease {
                        worker: self.me,
                        request: self.next_request(),
                    };
                    match self.client.command(command).await {
                        Ok(SchedResult::Granted(grant)) => grant,
                        // Another lane asked with a later number first: ask again at once.
                        Ok(SchedResult::Rejected(SchedError::StaleRequest { .. })) => continue,
                        Ok(SchedResult::NoWork) => {
                            tokio::time::sleep(idle).await;
                            idle = (idle * 2).min(self.options.idle_max);
                            continue;
                        }
                        Ok(other) => {
                            debug!(?other, "lease refused");
                            tokio::time::sleep(idle).await;
                            idle = (idle * 2).min(self.options.idle_max);
                            continue;
                        }
                        Err(e) => {
                            debug!(error = %e, "lease request failed");
                            tokio::time::sleep(idle).await;
                            idle = (idle * 2).min(self.options.idle_max);
                            continue;
                        }
                    }
                }
            };
            idle = self.options.idle_min;
            self.stats.leased.fetch_add(1, Ordering::Relaxed);
            if let Some(results) = self.execute(&grant).await {
                next = self.report(&grant, results).await;
            }
        }
    }

    /// Runs one granted batch on a blocking thread, renewing its lease while it runs.
    async fn execute(&self, grant: &Grant) -> Option<Vec<Completion>> {
        let executor = Arc::clone(&self.executor);
        let owned = grant.clone();
        // `net::spawn_blocking`: under turmoil a tokio blocking task would hold the virtual clock.
        let mut job = crate::net::spawn_blocking(move || executor.run(&owned));
        let renew_every = self.options.call_timeout.max(Duration::from_millis(500));
        let results = loop {
            tokio::select! {
                done = &mut job => break done,
                () = tokio::time::sleep(renew_every) => {
                    let renew = SchedCommand::Renew { lease: grant.lease, worker: self.me };
                    if let Ok(SchedResult::Rejected(e)) = self.client.command(renew).await {
                        debug!(lease = %grant.lease, error = %e, "renewal refused");
                    }
                }
            }
        };
        match results {
            Ok(Ok(results)) => Some(results),
            Ok(Err(e)) => {
                warn!(lease = %grant.lease, error = %e, "the batch did not run; the lease will expire");
                None
            }
            Err(e) => {
                warn!(lease = %grant.lease, error = %e, "the executor failed; the lease will expire");
                None
            }
        }
    }

    /// Reports `results` and asks for the next batch in the same command
    /// (`CompleteAndLease`), retrying the same command while the cluster does not answer (a
    /// retry whose report already applied is refused as an unknown lease, and its ask gets the
    /// same grant back). A refusal of the first try that got an answer, with no earlier try
    /// left unanswered, is final: the executor may then discard what it stored for the batch.
    /// Returns the next batch, if one was granted.
    async fn report(&self, grant: &Grant, results: Vec<Completion>) -> Option<Grant> {
        let started = std::time::Instant::now();
        let mut pause = self.options.idle_min;
        let request = self.next_request();
        // Whether an earlier try may have applied without us hearing the answer.
        let mut maybe_applied = false;
        for _ in 0..8 {
            let command = SchedCommand::CompleteAndLease {
                lease: grant.lease,
                worker: self.me,
                results: results.clone(),
                request,
            };
            match self.client.command(command).await {
                Ok(SchedResult::CompletedThenLeased { completed, next }) => {
                    let report_ms = started.elapsed().as_secs_f64() * 1e3;
                    match *completed {
                        SchedResult::Completed { .. } => {
                            self.stats.completed.fetch_add(1, Ordering::Relaxed);
                            info!(lease = %grant.lease, report_ms, "batch reported");
                        }
                        other => {
                            // Expired, revoked, or applied by an earlier try whose answer was lost.
                            debug!(lease = %grant.lease, ?other, maybe_applied, "report refused");
                            self.stats.refused.fetch_add(1, Ordering::Relaxed);
                            if !maybe_applied {
                                self.executor.discard(grant, &results);
                            }
                        }
                    }
                    return match *next {
                        SchedResult::Granted(next) => Some(next),
                        _ => None,
                    };
                }
                Ok(other) => {
                    debug!(?other, "unexpected answer to a report");
                    return None;
                }
                Err(e) => {
                    maybe_applied = true;
                    debug!(lease = %grant.lease, error = %e, "report failed; retrying");
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(self.options.idle_max);
        }
        None
    }
}
