//! The scheduler's `client` commands: `submit`, `jobs`, `c1`..`c5`, `cancel`: their grammar
//! (flattened into `idunno-node client`), what each asks the cluster, and how the answer is
//! printed (a table by default, one JSON value with `--json`).
//!
//! Owns: [`JobsRequest`] and [`run`]. Output contract (scripts and tests rely on the JSON):
//! - `submit --json`: `{"job":N,"inputs":N}`
//! - `jobs --json` / `c1 --json` / `c5 --json`: an array of
//!   `{"job","model","status","inputs","done","failed","leased","batch_size","rate_per_sec",
//!   "workers_now":[id..],"workers_done":[{"worker","queries"}..]}`
//! - `c2 JOB --json`: `{"job","samples","mean_us","std_dev_us","median_us","p90_us","p95_us","p99_us"}`
//! - `c3 JOB B --json`: `{"job","batch_size"}`
//! - `c4 JOB [N] --json`: an array of `{"input","name","result"|"error","worker"}`
//! - `cancel JOB --json`: `{"job","revoked"}`
//!
//! Must never: accept a batch size, job id or model it cannot honour without a clear error.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Subcommand;
use idunno_core::scheduler::api::{InputResult, JobSummary, SchedAnswer, SchedQuery};
use idunno_core::scheduler::{
    BATCH_SIZE_MAX, INPUTS_PER_JOB_MAX, InputOutcome, JobId, JobSpec, JobStatus,
    LEASE_MILLIS_DEFAULT, LEASE_MILLIS_MAX, LEASE_MILLIS_MIN, SchedCommand, SchedResult,
};
use serde_json::json;

use super::client::{self, SchedClient, SubmitError};
use crate::control::ClientError;

/// Models a job may name (the worker reports any other as a per-input error).
pub const KNOWN_MODELS: &[&str] = &[super::noop::NOOP_MODEL, "digits-cnn", "efficientnet-lite0"];

/// The scheduler's client requests.
#[derive(Debug, Subcommand, PartialEq, Eq)]
pub enum JobsRequest {
    /// Submit a job: run MODEL on the inputs NAME... (their file-system names), in batches.
    Submit {
        /// The model (noop, digits-cnn, efficientnet-lite0).
        model: String,
        /// The inputs' names.
        #[arg(required = true, num_args = 1..)]
        names: Vec<String>,
        /// Inputs per lease.
        #[arg(long, default_value_t = 1,
              value_parser = clap::value_parser!(u32).range(1..=BATCH_SIZE_MAX as i64))]
        batch: u32,
        /// How long a lease lives without renewal, in ms.
        #[arg(long, default_value_t = LEASE_MILLIS_DEFAULT,
              value_parser = clap::value_parser!(u32)
                  .range(i64::from(LEASE_MILLIS_MIN)..=i64::from(LEASE_MILLIS_MAX)))]
        lease_ms: u32,
        /// The submission's id (a retry with the same id returns the same job); default random.
        #[arg(long)]
        request: Option<u64>,
        /// Accept a model this build does not know (its inputs then fail, each with an error).
        #[arg(long)]
        any_model: bool,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Every job: status, progress, batch size, rate and workers.
    Jobs {
        /// Print one JSON array.
        #[arg(long)]
        json: bool,
    },
    /// C1: each job's query rate over the last 10 s and its queries processed.
    C1 {
        /// Print one JSON array.
        #[arg(long)]
        json: bool,
    },
    /// C2: a job's processing time per query: mean, std-dev, median, p90, p95, p99.
    C2 {
        /// The job (N or job-N).
        #[arg(value_parser = parse_job)]
        job: JobId,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// C3: set a running job's batch size.
    C3 {
        /// The job (N or job-N).
        #[arg(value_parser = parse_job)]
        job: JobId,
        /// The new batch size.
        #[arg(value_parser = clap::value_parser!(u32).range(1..=BATCH_SIZE_MAX as i64))]
        batch: u32,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// C4: a job's results (the first N, default all).
    C4 {
        /// The job (N or job-N).
        #[arg(value_parser = parse_job)]
        job: JobId,
        /// Most results to show.
        n: Option<usize>,
        /// Print one JSON array.
        #[arg(long)]
        json: bool,
    },
    /// C5: the workers of each job (holding a lease now, and having completed queries).
    C5 {
        /// Print one JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a running job.
    Cancel {
        /// The job (N or job-N).
        #[arg(value_parser = parse_job)]
        job: JobId,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// Parses `N` or `job-N`.
pub fn parse_job(text: &str) -> Result<JobId, String> {
    let digits = text.strip_prefix("job-").unwrap_or(text);
    digits
        .parse()
        .map(JobId)
        .map_err(|_| format!("{text:?} is not a job id (N or job-N)"))
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum JobsCliError {
    /// No answer, or a wrong one.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Submitting failed.
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// The arguments cannot be honoured.
    #[error("{0}")]
    Usage(String),
    /// The scheduler refused.
    #[error("refused: {0}")]
    Refused(String),
}

fn status_name(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Running => "running",
        JobStatus::Finished => "finished",
        JobStatus::Cancelled => "cancelled",
    }
}

fn random_request() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 40)
}

/// Runs one request at `node`; the text to print.
pub async fn run(
    node: SocketAddr,
    timeout: Duration,
    request: JobsRequest,
) -> Result<String, JobsCliError> {
    let client = SchedClient::new(node, timeout);
    match request {
        JobsRequest::Submit {
            model,
            names,
            batch,
            lease_ms,
            request,
            any_model,
            json,
        } => {
            if !any_model && !KNOWN_MODELS.contains(&model.as_str()) {
                return Err(JobsCliError::Usage(format!(
                    "unknown model {model:?} (known: {}; --any-model to submit anyway)",
                    KNOWN_MODELS.join(", ")
                )));
            }
            if names.len() > INPUTS_PER_JOB_MAX {
                return Err(JobsCliError::Usage(format!(
                    "{} inputs (at most {INPUTS_PER_JOB_MAX} per job)",
                    names.len()
                )));
            }
            let inputs = names.len();
            let spec = JobSpec {
                model,
                inputs: names,
                batch_size: batch,
                lease_millis: lease_ms,
            };
            let job = client::submit(&client, spec, request.unwrap_or_else(random_request)).await?;
            Ok(if json {
                format!("{}\n", json!({"job": job.0, "inputs": inputs}))
            } else {
                format!("submitted {job} ({inputs} inputs)\n")
            })
        }
        JobsRequest::Jobs { json } => Ok(render_jobs(&jobs(&client).await?, json, Columns::All)),
        JobsRequest::C1 { json } => Ok(render_jobs(&jobs(&client).await?, json, Columns::Rate)),
        JobsRequest::C5 { json } => Ok(render_jobs(&jobs(&client).await?, json, Columns::Workers)),
        JobsRequest::C2 { job, json } => match client.query(SchedQuery::Stats { job }).await? {
            SchedAnswer::Stats(t) => {
                let us = |nanos: u64| nanos as f64 / 1000.0;
                Ok(if json {
                    format!(
                        "{}\n",
                        json!({"job": t.job.0, "samples": t.samples,
                            "mean_us": us(t.mean_nanos), "std_dev_us": us(t.std_dev_nanos),
                            "median_us": t.median, "p90_us": t.p90, "p95_us": t.p95,
                            "p99_us": t.p99})
                    )
                } else {
                    format!(
                        "{:<8} {:>8} {:>12} {:>12} {:>10} {:>10} {:>10} {:>10}\n\
                         {:<8} {:>8} {:>12.1} {:>12.1} {:>10} {:>10} {:>10} {:>10}\n",
                        "JOB",
                        "SAMPLES",
                        "MEAN_US",
                        "STDDEV_US",
                        "MEDIAN_US",
                        "P90_US",
                        "P95_US",
                        "P99_US",
                        t.job.to_string(),
                        t.samples,
                        us(t.mean_nanos),
                        us(t.std_dev_nanos),
                        t.median,
                        t.p90,
                        t.p95,
                        t.p99
                    )
                })
            }
            SchedAnswer::UnknownJob(job) => {
                Err(JobsCliError::Refused(format!("unknown job {job}")))
            }
            other => Err(JobsCliError::Refused(format!(
                "unexpected answer {other:?}"
            ))),
        },
        JobsRequest::C3 { job, batch, json } => {
            let command = SchedCommand::SetBatchSize { job, size: batch };
            match client.command(command).await? {
                SchedResult::BatchSizeSet { job, size } => Ok(if json {
                    format!("{}\n", json!({"job": job.0, "batch_size": size}))
                } else {
                    format!("{job} batch size {size}\n")
                }),
                SchedResult::Rejected(e) => Err(JobsCliError::Refused(e.to_string())),
                other => Err(JobsCliError::Refused(format!(
                    "unexpected answer {other:?}"
                ))),
            }
        }
        JobsRequest::C4 { job, n, json } => {
            let limit = n.unwrap_or(usize::MAX);
            let results = client::all_results(&client, job, limit).await?;
            Ok(render_results(&results, json))
        }
        JobsRequest::Cancel { job, json } => {
            match client.command(SchedCommand::Cancel { job }).await? {
                SchedResult::Cancelled { job, revoked } => Ok(if json {
                    format!("{}\n", json!({"job": job.0, "revoked": revoked}))
                } else {
                    format!("cancelled {job} ({revoked} leases revoked)\n")
                }),
                SchedResult::Rejected(e) => Err(JobsCliError::Refused(e.to_string())),
                other => Err(JobsCliError::Refused(format!(
                    "unexpected answer {other:?}"
                ))),
            }
        }
    }
}

async fn jobs(client: &SchedClient) -> Result<Vec<JobSummary>, JobsCliError> {
    match client.query(SchedQuery::Jobs).await? {
        SchedAnswer::Jobs(jobs) => Ok(jobs),
        other => Err(JobsCliError::Refused(format!(
            "unexpected answer {other:?}"
        ))),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Columns {
    All,
    Rate,
    Workers,
}

fn job_json(j: &JobSummary) -> serde_json::Value {
    let workers_now: Vec<String> = j.workers_now.iter().map(ToString::to_string).collect();
    let workers_done: Vec<serde_json::Value> = j
        .workers_done
        .iter()
        .map(|(w, q)| json!({"worker": w.to_string(), "queries": q}))
        .collect();
    json!({"job": j.job.0, "model": j.model, "status": status_name(j.status),
        "inputs": j.inputs, "done": j.done, "failed": j.failed, "leased": j.leased,
        "batch_size": j.batch_size, "rate_per_sec": j.rate_milli as f64 / 1000.0,
        "workers_now": workers_now, "workers_done": workers_done})
}

fn render_jobs(jobs: &[JobSummary], json: bool, columns: Columns) -> String {
    if json {
        let all: Vec<serde_json::Value> = jobs.iter().map(job_json).collect();
        return format!("{}\n", serde_json::Value::Array(all));
    }
    if jobs.is_empty() {
        return "no jobs\n".to_owned();
    }
    let mut out = String::new();
    match columns {
        Columns::All => {
            out.push_str(&format!(
                "{:<8} {:<18} {:<10} {:>7} {:>7} {:>7} {:>7} {:>6} {:>10}\n",
                "JOB", "MODEL", "STATUS", "INPUTS", "DONE", "FAILED", "LEASED", "BATCH", "RATE/S"
            ));
            for j in jobs {
                out.push_str(&format!(
                    "{:<8} {:<18} {:<10} {:>7} {:>7} {:>7} {:>7} {:>6} {:>10.1}\n",
                    j.job.to_string(),
                    j.model,
                    status_name(j.status),
                    j.inputs,
                    j.done,
                    j.failed,
                    j.leased,
                    j.batch_size,
                    j.rate_milli as f64 / 1000.0
                ));
            }
        }
        Columns::Rate => {
            out.push_str(&format!(
                "{:<8} {:>12} {:>10}\n",
                "JOB", "RATE/S(10s)", "QUERIES"
            ));
            for j in jobs {
                out.push_str(&format!(
                    "{:<8} {:>12.1} {:>10}\n",
                    j.job.to_string(),
                    j.rate_milli as f64 / 1000.0,
                    j.done
                ));
            }
        }
        Columns::Workers => {
            out.push_str(&format!(
                "{:<8} {:<40} {}\n",
                "JOB", "LEASING NOW", "COMPLETED (QUERIES)"
            ));
            for j in jobs {
                let now: Vec<String> = j.workers_now.iter().map(ToString::to_string).collect();
                let done: Vec<String> = j
                    .workers_done
                    .iter()
                    .map(|(w, q)| format!("{w} ({q})"))
                    .collect();
                out.push_str(&format!(
                    "{:<8} {:<40} {}\n",
                    j.job.to_string(),
                    if now.is_empty() {
                        "-".to_owned()
                    } else {
                        now.join(",")
                    },
                    if done.is_empty() {
                        "-".to_owned()
                    } else {
                        done.join(", ")
                    }
                ));
            }
        }
    }
    out
}

fn render_results(results: &[InputResult], json: bool) -> String {
    if json {
        let all: Vec<serde_json::Value> = results
            .iter()
            .map(|r| match &r.outcome {
                InputOutcome::Result(out) => json!({"input": r.input, "name": r.name,
                    "result": out, "worker": r.worker.to_string()}),
                InputOutcome::Failed(e) => json!({"input": r.input, "name": r.name,
                    "error": e, "worker": r.worker.to_string()}),
            })
            .collect();
        return format!("{}\n", serde_json::Value::Array(all));
    }
    if results.is_empty() {
        return "no results yet\n".to_owned();
    }
    let mut out = format!(
        "{:>6} {:<30} {:<30} {}\n",
        "INPUT", "NAME", "RESULT", "WORKER"
    );
    for r in results {
        let shown = match &r.outcome {
            InputOutcome::Result(s) => s.clone(),
            InputOutcome::Failed(e) => format!("error: {e}"),
        };
        out.push_str(&format!(
            "{:>6} {:<30} {:<30} {}\n",
            r.input, r.name, shown, r.worker
        ));
    }
    out
}
