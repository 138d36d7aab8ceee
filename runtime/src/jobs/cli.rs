//! The scheduler's `client` commands: `submit`, `jobs`, `c1`..`c5`, `cancel`, `train`,
//! `upload`, `inference` (these three, and `c4`, carried out in [`super::commands`]): their grammar
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
//! - `c4 JOB [N] --json`: an array, one entry per input of the job (the first N) in index
//!   order: `{"index","input","name","status","worker","result","class_id","label",
//!   "probability","top5","error"}`; `input` and `name` are the input's file-system name (null
//!   while pending), `status` is `done`, `failed` or `pending`, `result` the scheduler's
//!   outcome text (a model's result file `results/job-J/lease-L.jsonl`, the no-op's echo),
//!   `class_id`/`label`/`probability`/`top5` the prediction read from the result file (null
//!   when there is none), `error` why it failed
//! - `train MODEL --json`: `{"model","file","version","bytes","accuracy"}` (accuracy null for
//!   pretrained weights); the weights are stored as `models/MODEL`
//! - `upload DIR [N] [--prefix P] --json`: `{"prefix","files","bytes"}`; files go to
//!   `P/<file name>`, P defaulting to `inputs/<base name of DIR>`
//! - `inference MODEL DIR [--batch B] [--wait] --json`: `{"job","model","inputs"}` (with
//!   `--wait` also `"status","done","failed"` once the job stopped); DIR is `inputs/x` or `x`
//! - `cancel JOB --json`: `{"job","revoked"}`
//!
//! Must never: accept a batch size, job id or model it cannot honour without a clear error.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Subcommand;
use idunno_core::scheduler::api::{JobSummary, SchedAnswer, SchedQuery};
use idunno_core::scheduler::{
    BATCH_SIZE_MAX, INPUTS_PER_JOB_MAX, JobId, JobSpec, JobStatus, LEASE_MILLIS_DEFAULT,
    LEASE_MILLIS_MAX, LEASE_MILLIS_MIN, SchedCommand, SchedResult,
};
use serde_json::json;

use super::client::{self, SchedClient, SubmitError};
use super::commands;
use crate::control::ClientError;

/// Models a job may name (the worker reports any other as a per-input error).
pub const KNOWN_MODELS: &[&str] = &[super::noop::NOOP_MODEL, "digits-cnn", "efficientnet-lite0"];

/// The scheduler's client requests.
#[derive(Debug, Subcommand, PartialEq, Eq)]
pub enum JobsRequest {
    /// Submit a job: run MODEL on the inputs NAME... (their file-system names), in batches.
    Submit {
        /// The model (noop, noop:MS for MS ms per query, digits-cnn, efficientnet-lite0).
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
    /// Train MODEL here (digits-cnn) or load its pretrained weights (efficientnet-lite0) and
    /// store the weights in the file system as models/MODEL, where workers load them.
    Train {
        /// The model.
        model: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Put the first N regular files of the local directory DIR (sorted by name; all when N
    /// is absent) into the file system as PREFIX/<file name>.
    Upload {
        /// The local directory.
        dir: std::path::PathBuf,
        /// How many files.
        #[arg(value_parser = clap::value_parser!(u64).range(1..=INPUTS_PER_JOB_MAX as u64))]
        n: Option<u64>,
        /// The file-system prefix (default inputs/<base name of DIR>).
        #[arg(long)]
        prefix: Option<String>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Run MODEL on every file under the file-system directory DIR (inputs/x, or x meaning
    /// inputs/x) as one job.
    Inference {
        /// The model (noop, noop:MS for MS ms per query, digits-cnn, efficientnet-lite0).
        model: String,
        /// The file-system directory of the inputs.
        dir: String,
        /// Inputs per lease.
        #[arg(long, default_value_t = 8,
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
        /// Show progress on stderr until the job is done.
        #[arg(long)]
        wait: bool,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// C4: a job's results per input, with the predictions (the first N inputs, default all).
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
            if !any_model
                && !KNOWN_MODELS.contains(&model.as_str())
                && !super::noop::is_noop(&model)
            {
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
            let shown = commands::predictions(node, timeout, job, limit).await?;
            Ok(commands::render_predictions(&shown, json))
        }
        JobsRequest::Train { model, json } => commands::train(node, timeout, &model, json).await,
        JobsRequest::Upload {
            dir,
            n,
            prefix,
            json,
        } => {
            let n = n.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
            commands::upload(node, timeout, &dir, n, prefix, json).await
        }
        JobsRequest::Inference {
            model,
            dir,
            batch,
            lease_ms,
            request,
            wait,
            json,
        } => {
            let request = request.unwrap_or_else(random_request);
            commands::inference(
                node, timeout, &model, &dir, batch, lease_ms, request, wait, json,
            )
            .await
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
