//! The inference scheduler: jobs, batches, leases, fair-time and per-job statistics, applied
//! through the replicated log on every voter.
//!
//! Owns: [`Scheduler`] (all jobs and live leases), [`SchedCommand`] (what a client, a worker or
//! the leader proposes), [`SchedResult`] (what the proposer gets back), [`SchedError`] (why a
//! command was refused; a refused command changes nothing) and the limits below.
//! Inputs: [`Scheduler::apply`] with the replicated clock `now` (the leader's stamp, clamped
//! never to go back) and [`Scheduler::node_failed`] when membership declares a worker dead.
//! Every call first expires the leases whose `expires_at <= now`, returning their inputs to
//! the queue, so expiry needs no timer of its own; the leader also proposes
//! [`SchedCommand::ExpireLeases`] periodically so expiry happens while nobody asks.
//! Guarantees: an input is Done at most once (a completion must name a live lease held by the
//! completing worker and cover exactly its inputs, otherwise it is refused whole), and while a
//! job runs every input is exactly one of queued, leased or done.
//! Must never: read a clock, draw randomness, iterate a hash map, panic or grow without bound
//! on a hostile command, or perform I/O (the worker loop lives in the runtime).

pub mod api;
mod fair;
mod job;
mod lease;
pub mod stats;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use fair::shares;
pub use job::{InputOutcome, InputState, Job, JobSpec, JobStatus, check_batch_size};
pub use lease::{Lease, LeaseTable};
pub use stats::TimeSummary;

use crate::membership::NodeId;
use crate::time::Instant;

/// Most jobs kept (running or finished); a submission evicts the oldest finished or cancelled
/// job when full.
pub const JOBS_MAX: usize = 64;
/// Most inputs one job may have.
pub const INPUTS_PER_JOB_MAX: usize = 10_000;
/// Largest batch size.
pub const BATCH_SIZE_MAX: usize = 256;
/// Most live leases one worker may hold.
pub const LEASES_PER_WORKER_MAX: usize = 4;
/// Most workers remembered (for lease-request deduplication); when full, a new worker
/// displaces one that holds no lease.
pub const WORKERS_MAX: usize = 1024;
/// Longest model, input or result name, in bytes.
pub const NAME_BYTES_MAX: usize = 128;
/// Longest per-input error text, in bytes.
pub const ERROR_BYTES_MAX: usize = 128;
/// Shortest lease.
pub const LEASE_MILLIS_MIN: u32 = 100;
/// Longest lease.
pub const LEASE_MILLIS_MAX: u32 = 600_000;
/// Default lease time.
pub const LEASE_MILLIS_DEFAULT: u32 = 5_000;
/// Bytes of state the scheduler may reserve (worst case of every kept job), so the cluster's
/// snapshot stays under the Raft snapshot cap (15 MiB) with room for the other parts
/// (`cluster::tests::a_full_state_fits_one_snapshot` checks the sum).
pub const STATE_BYTES_MAX: u64 = 4 << 20;
/// Workers remembered per job for C5.
pub const WORKERS_PER_JOB_KEPT: usize = 64;
/// Longest per-query time a completion may report; longer values are clamped.
pub const ELAPSED_MICROS_MAX: u64 = 3_600_000_000;

/// A job's id (assigned in submission order, never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobId(pub u64);

/// A lease's id (assigned in grant order, never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LeaseId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job-{}", self.0)
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lease-{}", self.0)
    }
}

/// One input's result inside a completion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    /// The input's index in its job.
    pub input: u32,
    /// What came out.
    pub outcome: InputOutcome,
    /// How long the model took on it, in microseconds (C2, fair-time cost).
    pub elapsed_micros: u64,
}

/// What may be proposed to the scheduler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SchedCommand {
    /// Start a job. A repeated `request` returns the job it created.
    Submit {
        /// What to run.
        spec: JobSpec,
        /// The client's id for this submission (idempotence).
        request: u64,
    },
    /// A worker asks for a batch. `request` increases per ask; a repeat returns the same answer.
    Lease {
        /// The asking worker.
        worker: NodeId,
        /// The worker's request number.
        request: u64,
    },
    /// A worker reports a lease's results (exactly its inputs, each once).
    Complete {
        /// The lease.
        lease: LeaseId,
        /// The reporting worker (must hold the lease).
        worker: NodeId,
        /// One result per leased input.
        results: Vec<Completion>,
    },
    /// A worker extends a lease it still works on.
    Renew {
        /// The lease.
        lease: LeaseId,
        /// The worker (must hold it).
        worker: NodeId,
    },
    /// Change a running job's batch size (C3); later leases use it.
    SetBatchSize {
        /// The job.
        job: JobId,
        /// 1..=[`BATCH_SIZE_MAX`].
        size: u32,
    },
    /// Stop a job: its queue is dropped and its leases revoked.
    Cancel {
        /// The job.
        job: JobId,
    },
    /// Expire due leases (the leader proposes this periodically).
    ExpireLeases,
    /// Start a job whose inputs arrive in chunks (a job too large for one command): like
    /// `Submit` with the spec's inputs as the first chunk, but the job cannot finish until an
    /// `AddInputs` seals it. Its inputs may be leased meanwhile.
    Open {
        /// What to run, with the first chunk of inputs.
        spec: JobSpec,
        /// The client's id for this submission (idempotence).
        request: u64,
    },
    /// Append a chunk of inputs to an open job. `offset` is the index its first input takes:
    /// a chunk already applied (a retry) is acknowledged again without change, any other
    /// offset than the job's input count is refused.
    AddInputs {
        /// The job.
        job: JobId,
        /// The index of the chunk's first input.
        offset: u32,
        /// The inputs' names.
        inputs: Vec<String>,
        /// The last chunk: the job is complete and may finish.
        seal: bool,
    },
    /// `Complete` then `Lease` in one command (one log entry instead of two per batch): the
    /// worker reports a lease and asks for its next batch. Each part is applied, or refused,
    /// as its own command would be.
    CompleteAndLease {
        /// The lease reported.
        lease: LeaseId,
        /// The reporting and asking worker.
        worker: NodeId,
        /// One result per leased input.
        results: Vec<Completion>,
        /// The worker's request number for the next batch.
        request: u64,
    },
    /// Membership reports `worker` gone (not yet recorded failed): its leases go back to their
    /// queues at once, so its batches run elsewhere without waiting for the failure to be
    /// recorded. Harmless to a worker that is alive after all: its reports of those leases are
    /// refused (exactly once holds) and it may ask for new batches.
    WorkerGone {
        /// The worker.
        worker: NodeId,
    },
}

/// A granted batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The lease to complete or renew.
    pub lease: LeaseId,
    /// Its job.
    pub job: JobId,
    /// The model to run.
    pub model: String,
    /// (input index, input name) to run.
    pub inputs: Vec<(u32, String)>,
    /// When the lease lapses (replicated clock).
    pub expires_at: Instant,
    /// How long the lease lasts from a grant or a renewal (the job's lease time): the worker
    /// renews well within it.
    pub lease_millis: u32,
}

/// What a [`SchedCommand`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SchedResult {
    /// The job exists (new, or the one this request created before).
    Submitted {
        /// Its id.
        job: JobId,
    },
    /// A batch for the worker.
    Granted(Grant),
    /// Nothing pending anywhere; ask again later.
    NoWork,
    /// The lease's results were recorded.
    Completed {
        /// The job.
        job: JobId,
        /// Inputs recorded.
        inputs: u32,
        /// Whether this finished the job.
        finished: bool,
    },
    /// The lease now lapses at this time.
    Renewed {
        /// New expiry.
        expires_at: Instant,
    },
    /// The batch size was changed.
    BatchSizeSet {
        /// The job.
        job: JobId,
        /// The new size.
        size: u32,
    },
    /// The job was cancelled.
    Cancelled {
        /// The job.
        job: JobId,
        /// Leases revoked.
        revoked: u32,
    },
    /// Leases expired by this command.
    Expired {
        /// How many.
        leases: u32,
    },
    /// Refused; nothing changed (beyond expiring due leases).
    Rejected(SchedError),
    /// Answer to `CompleteAndLease`: what the report did, then what the ask got.
    CompletedThenLeased {
        /// `Completed` or `Rejected`.
        completed: Box<SchedResult>,
        /// `Granted`, `NoWork` or `Rejected`.
        next: Box<SchedResult>,
    },
    /// A chunk of inputs was added (or had been, for a retried chunk).
    InputsAdded {
        /// The job.
        job: JobId,
        /// Its inputs now.
        inputs: u32,
        /// Whether it is sealed.
        sealed: bool,
    },
    /// Answer to `WorkerGone`: how many of its leases went back to their queues.
    Revoked {
        /// How many.
        leases: u32,
    },
}

/// Why a command was refused. Every variant leaves the state as it was (due leases still
/// expire first, as on every command).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum SchedError {
    /// No such job (never existed or evicted).
    #[error("unknown job {0}")]
    UnknownJob(JobId),
    /// No such live lease: never granted, expired, revoked or already completed.
    #[error("unknown, expired or completed lease {0}")]
    UnknownLease(LeaseId),
    /// The lease belongs to another worker.
    #[error("lease {lease} is held by another worker")]
    WrongWorker {
        /// The lease.
        lease: LeaseId,
    },
    /// A completion that does not name each leased input exactly once.
    #[error("completion of {lease} must report each of its {expected} inputs exactly once")]
    BadCompletion {
        /// The lease.
        lease: LeaseId,
        /// Inputs it holds.
        expected: usize,
    },
    /// Batch size 0 or above [`BATCH_SIZE_MAX`].
    #[error("batch size {size} is not in 1..={BATCH_SIZE_MAX}")]
    BadBatchSize {
        /// What was asked.
        size: u32,
    },
    /// Lease time out of range.
    #[error("lease time {millis} ms is not in {LEASE_MILLIS_MIN}..={LEASE_MILLIS_MAX}")]
    BadLeaseTime {
        /// What was asked.
        millis: u32,
    },
    /// An empty or over-long name, result or error text.
    #[error("a name or text of {bytes} bytes (must be 1..={NAME_BYTES_MAX})")]
    BadName {
        /// Its length.
        bytes: usize,
    },
    /// A job without inputs.
    #[error("a job needs at least one input")]
    NoInputs,
    /// More than [`INPUTS_PER_JOB_MAX`] inputs.
    #[error("{inputs} inputs (at most {INPUTS_PER_JOB_MAX})")]
    TooManyInputs {
        /// How many were given.
        inputs: usize,
    },
    /// [`JOBS_MAX`] jobs are kept and none can be evicted, or the state budget is spent.
    #[error("scheduler full: {jobs} jobs kept, {reserved_bytes} bytes reserved")]
    Full {
        /// Jobs kept.
        jobs: usize,
        /// Bytes reserved.
        reserved_bytes: u64,
    },
    /// The worker holds [`LEASES_PER_WORKER_MAX`] leases already.
    #[error("worker holds too many leases")]
    TooManyLeases,
    /// [`WORKERS_MAX`] workers are remembered and every one holds a lease.
    #[error("too many workers")]
    TooManyWorkers,
    /// A lease request older than the worker's last one.
    #[error("stale lease request {request} (last {last})")]
    StaleRequest {
        /// The request.
        request: u64,
        /// The worker's last request.
        last: u64,
    },
    /// The job is finished or cancelled.
    #[error("{0} is not running")]
    NotRunning(JobId),
    /// Inputs added to a sealed job, or at an offset other than its input count.
    #[error("{job} does not take inputs at offset {offset} (it has {inputs}, sealed: {sealed})")]
    BadChunk {
        /// The job.
        job: JobId,
        /// The offset given.
        offset: u32,
        /// Inputs it has.
        inputs: u32,
        /// Whether it is sealed.
        sealed: bool,
    },
}

/// What the scheduler remembers of a worker: its last lease request and answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct WorkerEntry {
    request: u64,
    granted: Option<LeaseId>,
}

/// Counters since the state began (replicated).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedCounters {
    /// Leases granted.
    pub leases_granted: u64,
    /// Leases that lapsed.
    pub leases_expired: u64,
    /// Leases taken from failed workers or cancelled jobs.
    pub leases_revoked: u64,
    /// Completions accepted.
    pub completions_accepted: u64,
    /// Commands refused.
    pub rejected: u64,
    /// The stamp of the latest grant.
    pub last_grant_at: Instant,
}

/// Per-job statistics read out at `now` (C1, C2, C5).
#[derive(Debug, Clone, PartialEq)]
pub struct JobReport {
    /// The job.
    pub job: JobId,
    /// Queries per second over the last 10 s (C1).
    pub rate_per_sec: f64,
    /// Queries completed (C1).
    pub completed: u64,
    /// Processing time per query (C2).
    pub times: TimeSummary,
    /// Current batch size (C3).
    pub batch_size: u32,
    /// Workers holding a lease of the job now (C5).
    pub workers_now: Vec<NodeId>,
}

/// All jobs and leases. See the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scheduler {
    jobs: BTreeMap<JobId, Job>,
    leases: LeaseTable,
    workers: BTreeMap<NodeId, WorkerEntry>,
    next_job: u64,
    next_lease: u64,
    reserved_bytes: u64,
    counters: SchedCounters,
}

impl Scheduler {
    // ----- getters -----

    /// A job.
    pub fn job(&self, job: JobId) -> Option<&Job> {
        self.jobs.get(&job)
    }

    /// Every kept job, by id.
    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values()
    }

    /// The live leases.
    pub fn leases(&self) -> &LeaseTable {
        &self.leases
    }

    /// Counters.
    pub fn counters(&self) -> SchedCounters {
        self.counters
    }

    /// Bytes reserved by the kept jobs (worst case), at most [`STATE_BYTES_MAX`].
    pub fn reserved_bytes(&self) -> u64 {
        self.reserved_bytes
    }

    /// Statistics of `job` at `now` (C1, C2, C3, C5).
    pub fn report(&self, job: JobId, now: Instant) -> Option<JobReport> {
        let j = self.jobs.get(&job)?;
        let mut workers_now: Vec<NodeId> = self
            .leases
            .iter()
            .filter(|l| l.job == job)
            .map(|l| l.worker)
            .collect();
        workers_now.sort();
        workers_now.dedup();
        Some(JobReport {
            job,
            rate_per_sec: j.stats.rate_per_sec(now, j.submitted_at),
            completed: j.stats.completed(),
            times: j.stats.times(),
            batch_size: j.spec.batch_size,
            workers_now,
        })
    }

    /// A worker's last lease request and the lease it was granted, if it is remembered.
    pub fn last_request(&self, worker: NodeId) -> Option<(u64, Option<LeaseId>)> {
        self.workers.get(&worker).map(|e| (e.request, e.granted))
    }

    /// The grant of a live lease (what its worker was told).
    pub fn grant(&self, lease: LeaseId) -> Option<Grant> {
        self.grant_of(self.leases.get(lease)?)
    }

    /// Whether `Lease { worker, request }` applied at `now` would answer `NoWork`, changing
    /// nothing but the worker's remembered request number: no running job has an input
    /// waiting, no lease expires by `now` (which would put inputs back), and `request` is a new
    /// ask (not a retry, which gets its earlier grant again, nor a stale one). The leader
    /// answers such an ask without appending it to the log, so an idle cluster's workers do not
    /// grow the log.
    pub fn answers_no_work(&self, now: Instant, worker: NodeId, request: u64) -> bool {
        let new_ask = match self.workers.get(&worker) {
            Some(entry) => request > entry.request,
            // An unknown worker at the cap evicts an idle one or is refused.
            None => self.workers.len() < WORKERS_MAX,
        };
        new_ask
            && !self.leases.any_expired(now)
            && self.leases.of_worker(worker).count() < LEASES_PER_WORKER_MAX
            && fair::pick(&self.jobs).is_none()
    }

    /// Worker-time shares that equal query rates need, per running job (see `fair`).
    pub fn fair_shares(&self) -> Vec<(JobId, f64)> {
        fair::shares(&self.jobs)
    }

    // ----- inputs -----

    /// Applies one command at the replicated time `now`.
    pub fn apply(&mut self, now: Instant, command: SchedCommand) -> SchedResult {
        let expired = self.expire(now);
        let result = match command {
            SchedCommand::Submit { spec, request } => self.submit(now, spec, request, true),
            SchedCommand::Open { spec, request } => self.submit(now, spec, request, false),
            SchedCommand::AddInputs {
                job,
                offset,
                inputs,
                seal,
            } => self.add_inputs(now, job, offset, inputs, seal),
            SchedCommand::Lease { worker, request } => self.lease(now, worker, request),
            SchedCommand::Complete {
                lease,
                worker,
                results,
            } => self.complete(now, lease, worker, results),
            SchedCommand::Renew { lease, worker } => self.renew(now, lease, worker),
            SchedCommand::SetBatchSize { job, size } => self.set_batch_size(job, size),
            SchedCommand::Cancel { job } => self.cancel(job),
            SchedCommand::ExpireLeases => Ok(SchedResult::Expired { leases: expired }),
            SchedCommand::WorkerGone { worker } => Ok(SchedResult::Revoked {
                leases: self.node_failed(now, worker),
            }),
            SchedCommand::CompleteAndLease {
                lease,
                worker,
                results,
                request,
            } => {
                let completed = self.complete(now, lease, worker, results);
                let completed = self.refused_counted(completed);
                let next = self.lease(now, worker, request);
                let next = self.refused_counted(next);
                Ok(SchedResult::CompletedThenLeased {
                    completed: Box::new(completed),
                    next: Box::new(next),
                })
            }
        };
        self.check();
        result.unwrap_or_else(|e| {
            self.counters.rejected += 1;
            SchedResult::Rejected(e)
        })
    }

    /// Membership declared `worker` dead: its leases go back to their queues at once.
    /// Returns how many leases were revoked.
    pub fn node_failed(&mut self, now: Instant, worker: NodeId) -> u32 {
        self.expire(now);
        let ids: Vec<LeaseId> = self.leases.of_worker(worker).collect();
        for &id in ids.iter().rev() {
            self.drop_lease(id);
        }
        self.counters.leases_revoked += ids.len() as u64;
        self.workers.remove(&worker);
        debug_assert_eq!(self.leases.of_worker(worker).count(), 0);
        self.check();
        ids.len() as u32
    }

    /// Full consistency check of every job and lease (tests and simulations; O(state)).
    pub fn verify(&self) -> Result<(), String> {
        for job in self.jobs.values() {
            job.verify()?;
        }
        for lease in self.leases.iter() {
            let job = self
                .jobs
                .get(&lease.job)
                .ok_or_else(|| format!("{} of unknown {}", lease.id, lease.job))?;
            for &i in &lease.inputs {
                if job.inputs.get(i as usize) != Some(&InputState::Leased(lease.id)) {
                    return Err(format!(
                        "{} holds input {i} of {} not leased to it",
                        lease.id, lease.job
                    ));
                }
            }
        }
        let leased: u64 = self.jobs.values().map(|j| u64::from(j.leased)).sum();
        let held: u64 = self.leases.iter().map(|l| l.inputs.len() as u64).sum();
        if leased != held {
            return Err(format!(
                "jobs count {leased} leased inputs, leases hold {held}"
            ));
        }
        Ok(())
    }

    // ----- commands -----

    fn expire(&mut self, now: Instant) -> u32 {
        let expired = self.leases.take_expired(now);
        // Latest first, so the earliest lease's inputs end up at the head of the queue.
        for lease in expired.iter().rev() {
            self.give_back(lease);
        }
        self.counters.leases_expired += expired.len() as u64;
        expired.len() as u32
    }

    fn submit(
        &mut self,
        now: Instant,
        spec: JobSpec,
        request: u64,
        sealed: bool,
    ) -> Result<SchedResult, SchedError> {
        if let Some(job) = self.jobs.values().find(|j| j.request == request) {
            return Ok(SchedResult::Submitted { job: job.id });
        }
        spec.validate()?;
        let need = spec.reserve_bytes();
        self.make_room(need, 1)?;
        let id = JobId(self.next_job);
        self.next_job += 1;
        let pass = fair::entry_pass(&self.jobs);
        self.reserved_bytes += need;
        self.jobs
            .insert(id, Job::new(id, request, spec, now, pass, sealed));
        debug_assert!(self.reserved_bytes <= STATE_BYTES_MAX);
        Ok(SchedResult::Submitted { job: id })
    }

    /// Evicts finished or cancelled jobs, oldest first, until `need` more bytes and `new_jobs`
    /// more jobs fit; refuses (evicting nothing more) when no job can go.
    fn make_room(&mut self, need: u64, new_jobs: usize) -> Result<(), SchedError> {
        let full = |s: &Self| {
            s.jobs.len() + new_jobs > JOBS_MAX || s.reserved_bytes + need > STATE_BYTES_MAX
        };
        if full(self) && self.jobs.values().filter(|j| !j.is_running()).count() == 0 {
            return Err(SchedError::Full {
                jobs: self.jobs.len(),
                reserved_bytes: self.reserved_bytes,
            });
        }
        while full(self) {
            let Some(victim) = self.jobs.values().find(|j| !j.is_running()).map(|j| j.id) else {
                return Err(SchedError::Full {
                    jobs: self.jobs.len(),
                    reserved_bytes: self.reserved_bytes,
                });
            };
            if let Some(gone) = self.jobs.remove(&victim) {
                self.reserved_bytes -= gone.spec.reserve_bytes();
            }
        }
        Ok(())
    }

    fn add_inputs(
        &mut self,
        now: Instant,
        id: JobId,
        offset: u32,
        inputs: Vec<String>,
        seal: bool,
    ) -> Result<SchedResult, SchedError> {
        let job = self.jobs.get(&id).ok_or(SchedError::UnknownJob(id))?;
        let have = job.inputs.len() as u32;
        // A chunk that is already in (a retry after a lost answer) is acknowledged again.
        let retried = u64::from(offset) + inputs.len() as u64 <= u64::from(have)
            && (!seal || job.sealed)
            && (!inputs.is_empty() || job.sealed);
        if retried {
            return Ok(SchedResult::InputsAdded {
                job: id,
                inputs: have,
                sealed: job.sealed,
            });
        }
        if !job.is_running() {
            return Err(SchedError::NotRunning(id));
        }
        if job.sealed || offset != have {
            return Err(SchedError::BadChunk {
                job: id,
                offset,
                inputs: have,
                sealed: job.sealed,
            });
        }
        let total = have as usize + inputs.len();
        if total > INPUTS_PER_JOB_MAX {
            return Err(SchedError::TooManyInputs { inputs: total });
        }
        if let Some(bad) = inputs
            .iter()
            .find(|n| n.is_empty() || n.len() > NAME_BYTES_MAX)
        {
            return Err(SchedError::BadName { bytes: bad.len() });
        }
        let before = job.spec.reserve_bytes();
        let mut grown = job.spec.clone();
        grown.inputs.extend(inputs.iter().cloned());
        let need = grown.reserve_bytes().saturating_sub(before);
        self.make_room(need, 0)?;
        let Some(job) = self.jobs.get_mut(&id) else {
            debug_assert!(false, "a running job is never evicted");
            return Err(SchedError::UnknownJob(id));
        };
        job.add_inputs(inputs, seal, now);
        self.reserved_bytes += need;
        debug_assert!(self.reserved_bytes <= STATE_BYTES_MAX);
        Ok(SchedResult::InputsAdded {
            job: id,
            inputs: total as u32,
            sealed: seal,
        })
    }

    fn grant_of(&self, lease: &Lease) -> Option<Grant> {
        let job = self.jobs.get(&lease.job)?;
        Some(Grant {
            lease: lease.id,
            job: lease.job,
            model: job.spec.model.clone(),
            inputs: lease
                .inputs
                .iter()
                .filter_map(|&i| Some((i, job.spec.inputs.get(i as usize)?.clone())))
                .collect(),
            expires_at: lease.expires_at,
            lease_millis: job.spec.lease_millis,
        })
    }

    fn lease(
        &mut self,
        now: Instant,
        worker: NodeId,
        request: u64,
    ) -> Result<SchedResult, SchedError> {
        match self.workers.get(&worker) {
            Some(entry) if request < entry.request => {
                return Err(SchedError::StaleRequest {
                    request,
                    last: entry.request,
                });
            }
            Some(entry) if request == entry.request => {
                // A retried ask: the same answer, if the lease is still live.
                let grant = entry
                    .granted
                    .and_then(|id| self.leases.get(id))
                    .and_then(|l| self.grant_of(l));
                return Ok(grant.map_or(SchedResult::NoWork, SchedResult::Granted));
            }
            Some(_) => {}
            None if self.workers.len() >= WORKERS_MAX => {
                // Forget a worker holding no lease (a dead one's late request left it here).
                let idle = self
                    .workers
                    .keys()
                    .find(|w| self.leases.of_worker(**w).next().is_none())
                    .copied();
                let idle = idle.ok_or(SchedError::TooManyWorkers)?;
                self.workers.remove(&idle);
            }
            None => {}
        }
        if self.leases.of_worker(worker).count() >= LEASES_PER_WORKER_MAX {
            return Err(SchedError::TooManyLeases);
        }
        let Some(job_id) = fair::pick(&self.jobs) else {
            self.workers.insert(
                worker,
                WorkerEntry {
                    request,
                    granted: None,
                },
            );
            return Ok(SchedResult::NoWork);
        };
        let id = LeaseId(self.next_lease);
        self.next_lease += 1;
        let Some(job) = self.jobs.get_mut(&job_id) else {
            debug_assert!(false, "picked job exists");
            return Ok(SchedResult::NoWork);
        };
        let inputs = job.take_batch(id, now);
        debug_assert!(!inputs.is_empty(), "picked job has pending inputs");
        let expires_at = now + Duration::from_millis(u64::from(job.spec.lease_millis));
        let lease = Lease {
            id,
            job: job_id,
            inputs,
            worker,
            granted_at: now,
            expires_at,
        };
        let grant = self.grant_of(&lease);
        self.leases.insert(lease);
        self.workers.insert(
            worker,
            WorkerEntry {
                request,
                granted: Some(id),
            },
        );
        self.counters.leases_granted += 1;
        self.counters.last_grant_at = now;
        Ok(grant.map_or(SchedResult::NoWork, SchedResult::Granted))
    }

    fn complete(
        &mut self,
        now: Instant,
        id: LeaseId,
        worker: NodeId,
        results: Vec<Completion>,
    ) -> Result<SchedResult, SchedError> {
        let lease = self.leases.get(id).ok_or(SchedError::UnknownLease(id))?;
        if lease.worker != worker {
            return Err(SchedError::WrongWorker { lease: id });
        }
        let bad = SchedError::BadCompletion {
            lease: id,
            expected: lease.inputs.len(),
        };
        if results.len() != lease.inputs.len() {
            return Err(bad);
        }
        let mut named: Vec<u32> = results.iter().map(|c| c.input).collect();
        named.sort_unstable();
        let mut held = lease.inputs.clone();
        held.sort_unstable();
        if named != held {
            return Err(bad);
        }
        for c in &results {
            c.outcome.validate()?;
        }
        let Some(lease) = self.leases.remove(id) else {
            return Err(SchedError::UnknownLease(id));
        };
        let Some(job) = self.jobs.get_mut(&lease.job) else {
            debug_assert!(false, "a live lease's job exists");
            return Err(SchedError::UnknownJob(lease.job));
        };
        let count = results.len() as u32;
        let results = results
            .into_iter()
            .map(|c| (c.input, c.outcome, c.elapsed_micros.min(ELAPSED_MICROS_MAX)))
            .collect();
        let finished = job.complete(id, worker, results, now);
        self.counters.completions_accepted += 1;
        Ok(SchedResult::Completed {
            job: lease.job,
            inputs: count,
            finished,
        })
    }

    fn renew(
        &mut self,
        now: Instant,
        id: LeaseId,
        worker: NodeId,
    ) -> Result<SchedResult, SchedError> {
        let lease = self.leases.get(id).ok_or(SchedError::UnknownLease(id))?;
        if lease.worker != worker {
            return Err(SchedError::WrongWorker { lease: id });
        }
        let millis = self
            .jobs
            .get(&lease.job)
            .map_or(LEASE_MILLIS_DEFAULT, |j| j.spec.lease_millis);
        let expires_at = self
            .leases
            .extend(id, now + Duration::from_millis(u64::from(millis)))
            .ok_or(SchedError::UnknownLease(id))?;
        Ok(SchedResult::Renewed { expires_at })
    }

    fn set_batch_size(&mut self, id: JobId, size: u32) -> Result<SchedResult, SchedError> {
        let job = self.jobs.get_mut(&id).ok_or(SchedError::UnknownJob(id))?;
        if !job.is_running() {
            return Err(SchedError::NotRunning(id));
        }
        check_batch_size(size)?;
        job.spec.batch_size = size;
        Ok(SchedResult::BatchSizeSet { job: id, size })
    }

    fn cancel(&mut self, id: JobId) -> Result<SchedResult, SchedError> {
        let job = self.jobs.get_mut(&id).ok_or(SchedError::UnknownJob(id))?;
        if !job.is_running() {
            return Err(SchedError::NotRunning(id));
        }
        job.cancel();
        let ids: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|l| l.job == id)
            .map(|l| l.id)
            .collect();
        for &lease in ids.iter().rev() {
            self.drop_lease(lease);
        }
        self.counters.leases_revoked += ids.len() as u64;
        Ok(SchedResult::Cancelled {
            job: id,
            revoked: ids.len() as u32,
        })
    }

    fn drop_lease(&mut self, id: LeaseId) {
        if let Some(lease) = self.leases.remove(id) {
            self.give_back(&lease);
        }
    }

    fn give_back(&mut self, lease: &Lease) {
        if let Some(job) = self.jobs.get_mut(&lease.job) {
            job.give_back(lease.id, &lease.inputs);
        }
    }

    fn refused_counted(&mut self, result: Result<SchedResult, SchedError>) -> SchedResult {
        result.unwrap_or_else(|e| {
            self.counters.rejected += 1;
            SchedResult::Rejected(e)
        })
    }

    fn check(&self) {
        debug_assert!(self.jobs.len() <= JOBS_MAX);
        debug_assert!(self.workers.len() <= WORKERS_MAX);
        debug_assert!(self.reserved_bytes <= STATE_BYTES_MAX);
        debug_assert!(self.next_lease as usize >= self.leases.len());
    }
}
