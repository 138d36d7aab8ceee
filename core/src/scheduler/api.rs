//! The scheduler's client protocol: what a client or worker asks a node ([`SchedRequest`]) and
//! what it gets back ([`SchedAnswer`]), carried in `ControlRequest::Sched` /
//! `ControlResponse::Sched`.
//!
//! Owns: the request and answer types, the read-only queries ([`SchedQuery`]) answered from the
//! replicated state by [`answer_query`], and their bounds. Commands are proposed through the
//! Raft log as they are; queries are linearizable reads at the leader.
//! Must never: change the scheduler (queries read only), carry floats (answers are compared for
//! equality on the wire, so rates and times are integers), or answer without a bound on size.

use serde::{Deserialize, Serialize};

use super::{InputOutcome, InputState, JobId, JobStatus, SchedCommand, SchedResult, Scheduler};
use crate::membership::NodeId;
use crate::time::Instant;

/// Most results one [`SchedQuery::Results`] answer carries.
pub const RESULTS_PER_ANSWER_MAX: u32 = 10_000;
/// Most inputs a client sends in one `Open` / `AddInputs` chunk (so a chunk of names of
/// [`super::NAME_BYTES_MAX`] bytes stays far below the 64 KiB request cap).
pub const INPUTS_PER_CHUNK_MAX: usize = 256;

/// A scheduler request to a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SchedRequest {
    /// Propose a command through the log; answered with its applied result.
    Command(SchedCommand),
    /// Read the replicated state linearizably.
    Query(SchedQuery),
}

/// A read-only question.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SchedQuery {
    /// Every kept job (C1 rate and count, C5 workers).
    Jobs,
    /// One job's processing-time statistics (C2).
    Stats {
        /// The job.
        job: JobId,
    },
    /// One job's finished inputs from index `from` on, at most `max` (C4).
    Results {
        /// The job.
        job: JobId,
        /// First input index.
        from: u32,
        /// Most entries (capped at [`RESULTS_PER_ANSWER_MAX`]).
        max: u32,
    },
}

/// A node's answer to a [`SchedRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SchedAnswer {
    /// A command's applied result.
    Result(SchedResult),
    /// Answer to [`SchedQuery::Jobs`], by job id.
    Jobs(Vec<JobSummary>),
    /// Answer to [`SchedQuery::Stats`].
    Stats(JobTimes),
    /// Answer to [`SchedQuery::Results`]; `next` is the index to ask from for more, if any.
    Results {
        /// Finished inputs, by index.
        results: Vec<InputResult>,
        /// Where the next page starts (`None`: no more inputs).
        next: Option<u32>,
    },
    /// The query named an unknown job.
    UnknownJob(JobId),
}

/// One job at a glance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSummary {
    /// The job.
    pub job: JobId,
    /// Its model.
    pub model: String,
    /// Running, finished or cancelled.
    pub status: JobStatus,
    /// Whether all its inputs are known.
    pub sealed: bool,
    /// Inputs.
    pub inputs: u32,
    /// Inputs finished (failed ones included).
    pub done: u32,
    /// Inputs finished with an error.
    pub failed: u32,
    /// Inputs held by leases now.
    pub leased: u32,
    /// Current batch size.
    pub batch_size: u32,
    /// Queries per second over the last 10 s, times 1000 (C1).
    pub rate_milli: u64,
    /// Workers holding a lease of the job now (C5).
    pub workers_now: Vec<NodeId>,
    /// Workers that completed its queries, with how many (C5), by worker.
    pub workers_done: Vec<(NodeId, u64)>,
    /// Submission time (replicated clock).
    pub submitted_at: Instant,
    /// When its first batch was leased, if one was.
    pub first_lease_at: Option<Instant>,
    /// When it finished, if it did.
    pub finished_at: Option<Instant>,
}

/// Processing time per query of one job, in microseconds (C2); the mean and standard
/// deviation in nanoseconds so they stay integers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobTimes {
    /// The job.
    pub job: JobId,
    /// Samples summarized.
    pub samples: u64,
    /// Mean, ns.
    pub mean_nanos: u64,
    /// Population standard deviation, ns.
    pub std_dev_nanos: u64,
    /// Median, µs.
    pub median: u64,
    /// 90th percentile, µs.
    pub p90: u64,
    /// 95th percentile, µs.
    pub p95: u64,
    /// 99th percentile, µs.
    pub p99: u64,
}

/// One finished input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputResult {
    /// Its index.
    pub input: u32,
    /// Its name.
    pub name: String,
    /// What came out.
    pub outcome: InputOutcome,
    /// Who ran it.
    pub worker: NodeId,
}

fn nanos(micros: f64) -> u64 {
    if micros.is_finite() && micros > 0.0 {
        (micros * 1000.0).round().min(u64::MAX as f64) as u64
    } else {
        0
    }
}

/// Answers `query` from `scheduler` at the replicated time `now`.
pub fn answer_query(scheduler: &Scheduler, now: Instant, query: &SchedQuery) -> SchedAnswer {
    match *query {
        SchedQuery::Jobs => SchedAnswer::Jobs(
            scheduler
                .jobs()
                .filter_map(|job| {
                    let report = scheduler.report(job.id(), now)?;
                    Some(JobSummary {
                        job: job.id(),
                        model: job.spec().model.clone(),
                        status: job.status(),
                        sealed: job.is_sealed(),
                        inputs: job.inputs().len() as u32,
                        done: job.done_count(),
                        failed: job.failed_count(),
                        leased: job.leased_count(),
                        batch_size: job.spec().batch_size,
                        rate_milli: nanos(report.rate_per_sec),
                        workers_now: report.workers_now,
                        workers_done: job.workers().map(|(w, _, n)| (w, n)).collect(),
                        submitted_at: job.submitted_at(),
                        first_lease_at: job.first_lease_at(),
                        finished_at: job.finished_at(),
                    })
                })
                .collect(),
        ),
        SchedQuery::Stats { job } => match scheduler.report(job, now) {
            None => SchedAnswer::UnknownJob(job),
            Some(report) => {
                let t = report.times;
                SchedAnswer::Stats(JobTimes {
                    job,
                    samples: t.samples as u64,
                    mean_nanos: nanos(t.mean),
                    std_dev_nanos: nanos(t.std_dev),
                    median: t.median,
                    p90: t.p90,
                    p95: t.p95,
                    p99: t.p99,
                })
            }
        },
        SchedQuery::Results { job, from, max } => {
            let Some(j) = scheduler.job(job) else {
                return SchedAnswer::UnknownJob(job);
            };
            let max = max.clamp(1, RESULTS_PER_ANSWER_MAX) as usize;
            let start = (from as usize).min(j.inputs().len());
            let end = start.saturating_add(max).min(j.inputs().len());
            let results = (start..end)
                .filter_map(|i| match j.inputs().get(i)? {
                    InputState::Done { outcome, worker } => Some(InputResult {
                        input: i as u32,
                        name: j.spec().inputs.get(i)?.clone(),
                        outcome: outcome.clone(),
                        worker: *worker,
                    }),
                    _ => None,
                })
                .collect();
            let next = (end < j.inputs().len()).then_some(end as u32);
            SchedAnswer::Results { results, next }
        }
    }
}
