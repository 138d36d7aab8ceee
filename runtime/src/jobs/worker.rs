//! The worker loop every node runs when Raft is configured: ask for a batch, fetch it, run it,
//! store and report it, ask again; pipelined, so the executor's CPU does not wait for the
//! network between two batches.
//!
//! Owns: [`WorkerOptions`] and [`run`]: `lanes` loops, each asking with a fresh request number
//! from one counter. A lane runs one batch at a time on a blocking thread (the [`Executor`]'s
//! run step). While batch N runs, the lane stores and reports batch N-1 and leases and fetches
//! batch N+1 (the executor's prepare step), so N+1 starts the moment N ends. The next batch is
//! asked for when the lane expects N to end within what asking and fetching took last time
//! (per-model estimates, worker-wide), never earlier: a lane does not sit on a batch that an
//! idle lane elsewhere could run. With no estimate yet (a model this worker never ran) it does
//! not prefetch. The report goes with the ask when both are due (`CompleteAndLease`: one log
//! entry per batch); a report due well before the ask goes alone (`Complete`) and the ask
//! follows as a `Lease`. An idle lane reports with the ask, as before.
//! Exactly once: a batch is reported only after its results are stored; reports are retried
//! with the same command while the cluster does not answer (a retry whose report already
//! applied is refused as unknown); a refusal of a try with no earlier unanswered try is final,
//! and the executor may discard what it stored. Every lease a lane holds, the prefetched one
//! waiting included, is renewed every half of its lease time until it is reported or given up;
//! a renewal refused marks it lost, and a prefetched batch whose lease is lost is dropped
//! without running (its inputs run elsewhere). A batch whose executor step fails is not
//! reported (its lease lapses and it runs again).
//! Bounds: a pipelined lane holds at most two leases (the one running and the one stored or
//! prefetched), and lanes pipeline only when `2 * lanes <= LEASES_PER_WORKER_MAX`; otherwise
//! each lane holds one, as a serial lane does.
//! With no work, a lane backs off exponentially from `idle_min` to `idle_max`; a granted batch
//! resets it. Shutdown: the loop stops at the next await once the shutdown signal changes (or
//! the task is aborted); either is safe, because a lease nobody completes expires and its
//! inputs run again.
//! Must never: complete a lease twice, report a batch before its results are stored, hold more
//! than the bounds above, spin without a pause when the cluster has no work or no leader, or
//! panic on an answer.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idunno_core::membership::NodeId;
use idunno_core::scheduler::{
    Completion, Grant, LEASE_MILLIS_MIN, LEASES_PER_WORKER_MAX, SchedCommand, SchedError,
    SchedResult,
};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::client::SchedClient;
use super::{Executor, Prepared, Ran};
use crate::control::ClientError;

/// Most models a worker keeps run-time estimates for (model names come from jobs).
pub const ESTIMATES_MAX: usize = 64;
/// Tries of one report while the cluster does not answer.
pub const REPORT_TRIES_MAX: usize = 8;

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
    /// Whether lanes overlap fetching, storing and reporting with running (see the module
    /// docs); off, each lane does one step at a time (for comparison).
    pub pipeline: bool,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            lanes: 2,
            idle_min: Duration::from_millis(5),
            idle_max: Duration::from_millis(200),
            call_timeout: Duration::from_secs(3),
            pipeline: true,
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
    /// Prefetched batches dropped without running because their lease was lost while they
    /// waited.
    pub dropped: AtomicU64,
}

/// What a worker sends its commands through: the leader-following [`SchedClient`] (a fake
/// scheduler in tests).
pub trait SchedPort: Send + Sync + 'static {
    /// Proposes `command`; its applied result.
    fn command(
        &self,
        command: SchedCommand,
    ) -> impl Future<Output = Result<SchedResult, ClientError>> + Send;
}

impl SchedPort for SchedClient {
    fn command(
        &self,
        command: SchedCommand,
    ) -> impl Future<Output = Result<SchedResult, ClientError>> + Send {
        SchedClient::command(self, command)
    }
}

/// Runs the worker of node `me`, asking through `client`, until `shutdown` changes.
pub async fn run<S: SchedPort>(
    me: NodeId,
    client: Arc<S>,
    executor: Arc<dyn Executor>,
    options: WorkerOptions,
    stats: Arc<WorkerStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let lanes = options.lanes.min(LEASES_PER_WORKER_MAX);
    if lanes == 0 {
        return;
    }
    let pipelined = options.pipeline && 2 * lanes <= LEASES_PER_WORKER_MAX;
    let requests = Arc::new(AtomicU64::new(0));
    let estimates = Arc::new(Mutex::new(BTreeMap::new()));
    let mut set = JoinSet::new();
    for index in 0..lanes {
        let lane = Lane {
            me,
            index,
            client: Arc::clone(&client),
            executor: Arc::clone(&executor),
            options,
            pipelined,
            requests: Arc::clone(&requests),
            stats: Arc::clone(&stats),
            estimates: Arc::clone(&estimates),
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

/// How often a lease of `lease_millis` is renewed: every half of it.
pub fn renew_every(lease_millis: u32) -> Duration {
    Duration::from_millis(u64::from(lease_millis.max(LEASE_MILLIS_MIN) / 2))
}

/// Microseconds since the Unix epoch now (0 if the clock is before it): log stamps that line
/// up across processes.
fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// What a worker learned of a model's batches: the run time per input, and how long asking
/// for a batch and fetching it took (moving averages, in milliseconds).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Estimate {
    run_ms_per_input: Option<f64>,
    feed_ms: Option<f64>,
}

fn blend(old: Option<f64>, new: f64) -> f64 {
    old.map_or(new, |old| 0.7 * old + 0.3 * new)
}

type Estimates = Arc<Mutex<BTreeMap<String, Estimate>>>;

/// A lease the lane holds, renewed in the background every half of its lease time until this
/// is dropped; `lost` once a renewal was refused (the lease expired or was revoked).
struct Held {
    grant: Grant,
    lost: Arc<AtomicBool>,
    renewer: tokio::task::AbortHandle,
}

impl Held {
    fn lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// Per-batch step timings, for the log.
#[derive(Debug, Clone, Copy, Default)]
struct Times {
    fetch_ms: f64,
    wait_ms: f64,
    run_ms: f64,
    run_start_us: u64,
    run_end_us: u64,
}

/// A batch fetched, waiting for its turn to run.
struct Ready {
    held: Held,
    prepared: Prepared,
    since: Instant,
    times: Times,
}

/// A batch that ran, waiting to be stored.
struct Done {
    held: Held,
    ran: Ran,
    times: Times,
}

/// A batch stored, waiting to be reported.
struct Stored {
    held: Held,
    results: Vec<Completion>,
}

/// What an ask got.
enum Asked {
    /// A batch.
    Granted(Grant),
    /// Ask again at once (another lane asked with a later request number first).
    Again,
    /// No batch (no work, no leader, a refusal): pause before asking again.
    Idle,
}

struct Lane<S> {
    me: NodeId,
    index: usize,
    client: Arc<S>,
    executor: Arc<dyn Executor>,
    options: WorkerOptions,
    pipelined: bool,
    requests: Arc<AtomicU64>,
    stats: Arc<WorkerStats>,
    estimates: Estimates,
}

impl<S: SchedPort> Lane<S> {
    fn next_request(&self) -> u64 {
        self.requests.fetch_add(1, Ordering::Relaxed) + 1
    }

    async fn run(self) {
        let mut idle = self.options.idle_min;
        let mut ready: Option<Ready> = None;
        let mut done: Option<Done> = None;
        loop {
            let batch = match ready.take() {
                Some(batch) => batch,
                None => {
                    let asked = match done.take() {
                        // An idle lane reports together with its ask.
                        Some(done) => match self.store(done).await {
                            Some(stored) => self.report(stored, true).await,
                            None => self.ask().await,
                        },
                        None => self.ask().await,
                    };
                    let grant = match asked {
                        Asked::Granted(grant) => grant,
                        Asked::Again => continue,
                        Asked::Idle => {
                            tokio::time::sleep(idle).await;
                            idle = (idle * 2).min(self.options.idle_max);
                            continue;
                        }
                    };
                    idle = self.options.idle_min;
                    match self.prepare(grant).await {
                        Some(batch) => batch,
                        None => continue,
                    }
                }
            };
            if batch.held.lost() {
                // Its lease lapsed or was revoked while it waited: its inputs run elsewhere.
                debug!(lease = %batch.held.grant.lease, "dropping a prefetched batch whose lease is lost");
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let due = self.ask_due(&batch.held.grant);
            let previous = done.take();
            if self.pipelined {
                // The feed asks when the run ends, if that comes before the estimate.
                let ended = tokio::sync::Notify::new();
                let run = async {
                    let ran = self.run_batch(batch).await;
                    ended.notify_one();
                    ran
                };
                let (ran, fed) = tokio::join!(run, self.feed(previous, due, &ended));
                done = ran;
                ready = fed;
            } else {
                let run = self.run_batch(batch);
                debug_assert!(
                    previous.is_none(),
                    "a serial lane has nothing left to report"
                );
                done = run.await;
            }
        }
    }

    /// When to ask for the batch after `running` (which starts now): when it should end
    /// within what asking and fetching took last time, with a margin. `None`: this worker
    /// never ran the model, so no prefetch.
    fn ask_due(&self, running: &Grant) -> Option<Instant> {
        let estimate = self
            .estimates
            .lock()
            .ok()?
            .get(&running.model)
            .copied()
            .unwrap_or_default();
        let run_ms = estimate.run_ms_per_input? * running.inputs.len() as f64;
        let lead_ms = 1.5 * estimate.feed_ms.unwrap_or(0.0) + 20.0;
        let wait_ms = (run_ms - lead_ms).max(0.0);
        Some(Instant::now() + Duration::from_secs_f64(wait_ms / 1e3))
    }

    fn learn(&self, model: &str, learn: impl FnOnce(&mut Estimate)) {
        let Ok(mut estimates) = self.estimates.lock() else {
            return;
        };
        if !estimates.contains_key(model) && estimates.len() >= ESTIMATES_MAX {
            estimates.clear();
        }
        learn(estimates.entry(model.to_owned()).or_default());
        debug_assert!(estimates.len() <= ESTIMATES_MAX);
    }

    /// While a batch runs: stores and reports `previous`, and at `due` (or when the run has
    /// `ended`, if that is sooner) asks for the next batch and fetches it. `None` when there is
    /// no next batch yet (or no prefetch: `due` None).
    async fn feed(
        &self,
        previous: Option<Done>,
        due: Option<Instant>,
        ended: &tokio::sync::Notify,
    ) -> Option<Ready> {
        let stored = match previous {
            Some(done) => self.store(done).await,
            None => None,
        };
        let Some(due) = due else {
            if let Some(stored) = stored {
                self.report(stored, false).await;
            }
            return None;
        };
        let mut stored = stored;
        if Instant::now() < due {
            // Report now; ask when it is due.
            if let Some(stored) = stored.take() {
                self.report(stored, false).await;
            }
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                () = ended.notified() => {}
            }
        }
        let started = Instant::now();
        let mut asked = match stored {
            Some(stored) => self.report(stored, true).await,
            None => self.ask().await,
        };
        for _ in 0..3 {
            if !matches!(asked, Asked::Again) {
                break;
            }
            asked = self.ask().await;
        }
        let Asked::Granted(grant) = asked else {
            return None;
        };
        let model = grant.model.clone();
        let ready = self.prepare(grant).await;
        let feed_ms = ms(started.elapsed());
        self.learn(&model, |e| e.feed_ms = Some(blend(e.feed_ms, feed_ms)));
        ready
    }

    /// Asks for a batch (`Lease`).
    async fn ask(&self) -> Asked {
        let command = SchedCommand::Lease {
            worker: self.me,
            request: self.next_request(),
        };
        let asked = self.client.command(command).await;
        self.asked(asked)
    }

    fn asked(&self, answer: Result<SchedResult, ClientError>) -> Asked {
        match answer {
            Ok(SchedResult::Granted(grant)) => {
                self.stats.leased.fetch_add(1, Ordering::Relaxed);
                Asked::Granted(grant)
            }
            Ok(SchedResult::Rejected(SchedError::StaleRequest { .. })) => Asked::Again,
            Ok(SchedResult::NoWork) => Asked::Idle,
            Ok(other) => {
                debug!(?other, "lease refused");
                Asked::Idle
            }
            Err(e) => {
                debug!(error = %e, "lease request failed");
                Asked::Idle
            }
        }
    }

    /// Starts renewing `grant`'s lease; the lane holds it until the result is dropped.
    fn hold(&self, grant: Grant) -> Held {
        let (client, me, lease) = (Arc::clone(&self.client), self.me, grant.lease);
        let every = renew_every(grant.lease_millis);
        let lost = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&lost);
        let renewer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let renew = SchedCommand::Renew { lease, worker: me };
                match client.command(renew).await {
                    Ok(SchedResult::Rejected(e)) => {
                        debug!(%lease, error = %e, "renewal refused: the lease is lost");
                        flag.store(true, Ordering::Relaxed);
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => debug!(%lease, error = %e, "renewal failed"),
                }
            }
        });
        Held {
            grant,
            lost,
            renewer: renewer.abort_handle(),
        }
    }

    /// Fetches a granted batch (the executor's prepare step, on a blocking thread) while its
    /// lease is renewed. `None` when that failed: the lease lapses and the batch runs again.
    async fn prepare(&self, grant: Grant) -> Option<Ready> {
        let held = self.hold(grant);
        let executor = Arc::clone(&self.executor);
        let owned = held.grant.clone();
        let started = Instant::now();
        // `net::spawn_blocking`: under turmoil a tokio blocking task would hold the virtual clock.
        let prepared = crate::net::spawn_blocking(move || executor.prepare(&owned)).await;
        match prepared {
            Ok(Ok(prepared)) => Some(Ready {
                held,
                prepared,
                since: Instant::now(),
                times: Times {
                    fetch_ms: ms(started.elapsed()),
                    ..Times::default()
                },
            }),
            Ok(Err(e)) => {
                warn!(lease = %held.grant.lease, error = %e, "the batch was not fetched; the lease will expire");
                None
            }
            Err(e) => {
                warn!(lease = %held.grant.lease, error = %e, "the executor failed; the lease will expire");
                None
            }
        }
    }

    /// Runs a fetched batch on a blocking thread (its lease renewed meanwhile).
    async fn run_batch(&self, batch: Ready) -> Option<Done> {
        let Ready {
            held,
            prepared,
            since,
            mut times,
        } = batch;
        times.wait_ms = ms(since.elapsed());
        let started = Instant::now();
        times.run_start_us = unix_micros();
        let ran = crate::net::spawn_blocking(move || prepared.run()).await;
        times.run_end_us = unix_micros();
        times.run_ms = ms(started.elapsed());
        match ran {
            Ok(Ok(ran)) => {
                let per_input = times.run_ms / held.grant.inputs.len().max(1) as f64;
                self.learn(&held.grant.model, |e| {
                    e.run_ms_per_input = Some(blend(e.run_ms_per_input, per_input));
                });
                Some(Done { held, ran, times })
            }
            Ok(Err(e)) => {
                warn!(lease = %held.grant.lease, error = %e, "the batch did not run; the lease will expire");
                None
            }
            Err(e) => {
                warn!(lease = %held.grant.lease, error = %e, "the executor failed; the lease will expire");
                None
            }
        }
    }

    /// Stores a batch's results (on a blocking thread, its lease renewed meanwhile). `None`
    /// when that failed: nothing is reported, the lease lapses and the batch runs again.
    async fn store(&self, done: Done) -> Option<Stored> {
        let Done { held, ran, times } = done;
        let started = Instant::now();
        let stored = crate::net::spawn_blocking(move || ran.store()).await;
        let store_ms = ms(started.elapsed());
        let grant = &held.grant;
        match stored {
            Ok(Ok(results)) => {
                info!(
                    job = %grant.job, lease = %grant.lease, model = %grant.model,
                    inputs = grant.inputs.len(), lane = self.index, fetch_ms = times.fetch_ms,
                    wait_ms = times.wait_ms, run_ms = times.run_ms, store_ms,
                    run_start_us = times.run_start_us, run_end_us = times.run_end_us,
                    "batch ran"
                );
                debug_assert_eq!(results.len(), grant.inputs.len());
                Some(Stored { held, results })
            }
            Ok(Err(e)) => {
                warn!(lease = %grant.lease, error = %e, "the batch's results were not stored; the lease will expire");
                None
            }
            Err(e) => {
                warn!(lease = %grant.lease, error = %e, "the executor failed; the lease will expire");
                None
            }
        }
    }

    /// Reports `stored` (`Complete`), or reports it and asks for the next batch in the same
    /// command when `ask` (`CompleteAndLease`), retrying the same command while the cluster
    /// does not answer (a retry whose report already applied is refused as an unknown lease,
    /// and its ask gets the same grant back). A refusal of the first try that got an answer,
    /// with no earlier try left unanswered, is final: the executor may then discard what it
    /// stored for the batch. Returns what the ask got (`Idle` without one).
    async fn report(&self, stored: Stored, ask: bool) -> Asked {
        let Stored { held, results } = stored;
        let grant = &held.grant;
        let started = Instant::now();
        let mut pause = self.options.idle_min;
        let request = self.next_request();
        // Whether an earlier try may have applied without us hearing the answer.
        let mut maybe_applied = false;
        for _ in 0..REPORT_TRIES_MAX {
            let command = if ask {
                SchedCommand::CompleteAndLease {
                    lease: grant.lease,
                    worker: self.me,
                    results: results.clone(),
                    request,
                }
            } else {
                SchedCommand::Complete {
                    lease: grant.lease,
                    worker: self.me,
                    results: results.clone(),
                }
            };
            let (completed, next) = match self.client.command(command).await {
                Ok(SchedResult::CompletedThenLeased { completed, next }) if ask => {
                    (*completed, Some(*next))
                }
                Ok(answer @ (SchedResult::Completed { .. } | SchedResult::Rejected(_))) if !ask => {
                    (answer, None)
                }
                Ok(other) => {
                    debug!(?other, "unexpected answer to a report");
                    return Asked::Idle;
                }
                Err(e) => {
                    maybe_applied = true;
                    debug!(lease = %grant.lease, error = %e, "report failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(self.options.idle_max);
                    continue;
                }
            };
            let report_ms = ms(started.elapsed());
            match completed {
                SchedResult::Completed { .. } => {
                    self.stats.completed.fetch_add(1, Ordering::Relaxed);
                    info!(job = %grant.job, lease = %grant.lease, report_ms, ask, "batch reported");
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
            // The reported lease is no longer held (its renewals stop) before the next one is.
            drop(held);
            return match next {
                Some(next) => self.asked(Ok(next)),
                None => Asked::Idle,
            };
        }
        Asked::Idle
    }
}

#[cfg(test)]
mod tests;
