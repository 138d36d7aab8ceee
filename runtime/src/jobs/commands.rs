//! The inference `client` commands: `train`, `upload`, `inference` and `c4`'s predictions.
//!
//! Owns: what each asks the cluster and how its answer is printed (a table by default, one
//! JSON value with `--json`; the shapes are in `jobs::cli`'s contract):
//! - [`train`]: trains digits-cnn (seeded, held-out accuracy) or loads efficientnet-lite0's
//!   pretrained weights in this process, and puts the weight bytes in the file system as
//!   `models/MODEL` (a worker loads them from there, per version);
//! - [`upload`]: puts the first N regular files of a local directory (sorted by name) as
//!   `PREFIX/<file name>`, [`UPLOAD_PARALLEL`] at a time, a progress bar on stderr;
//! - [`inference`]: lists a prefix of the file system and submits one job with its names
//!   (chunked), optionally waiting for it with a progress bar on stderr;
//! - [`predictions`]: a job's outcome per input (done, failed or pending), reading each
//!   referenced result file once.
//!
//! Must never: submit a job for an unknown or untrained model, an empty directory, or more
//! inputs than a job takes; read a result file larger than its cap; print progress on stdout.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use idunno_core::dfs::{DfsError, validate_name};
use idunno_core::scheduler::api::{InputResult, SchedAnswer, SchedQuery};
use idunno_core::scheduler::{INPUTS_PER_JOB_MAX, InputOutcome, JobId, JobSpec, JobStatus};
use idunno_models::ClassScore;
use idunno_models::digits::TrainConfig;
use idunno_models::registry;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::cli::JobsCliError;
use super::client::{self, SchedClient};
use super::model::{self, weights_file_name};
use super::noop::is_noop;
use super::results::{self, RESULT_FILE_BYTES_MAX, ResultLine};
use crate::dfs::client::{DfsClient, DfsClientError};

/// Files uploaded at once.
pub const UPLOAD_PARALLEL: usize = 4;
/// Result files fetched at once by `c4`.
pub const RESULTS_PARALLEL: usize = 8;
/// The file-system directory `upload` puts directories under by default.
pub const INPUTS_DIR: &str = "inputs";
/// How often `inference --wait` polls the job.
const WAIT_POLL: Duration = Duration::from_millis(500);

fn usage(text: impl Into<String>) -> JobsCliError {
    JobsCliError::Usage(text.into())
}

fn dfs_error(e: DfsClientError) -> JobsCliError {
    JobsCliError::Refused(e.to_string())
}

/// A scratch file in the system's temporary directory, unique to this process.
fn temp_file(label: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    std::env::temp_dir().join(format!(
        "idunno-client-{}-{nanos}-{label}",
        std::process::id()
    ))
}

/// The registry model named `model`, or a usage error listing the known ones.
fn known_model(model: &str) -> Result<registry::ModelInfo, JobsCliError> {
    registry::info(model).map_err(|_| {
        usage(format!(
            "unknown model {model:?} (known: {})",
            registry::names().join(", ")
        ))
    })
}

/// `train MODEL`: the weights in the file system as `models/MODEL`.
pub async fn train(
    node: SocketAddr,
    timeout: Duration,
    model: &str,
    json: bool,
) -> Result<String, JobsCliError> {
    let info = known_model(model)?;
    let name = info.name;
    let started = std::time::Instant::now();
    let built = tokio::task::spawn_blocking(move || {
        let device = idunno_models::default_device();
        if info.trainable {
            registry::train(name, &TrainConfig::default(), &device)
                .map(|(m, report)| (m, Some(report.test_accuracy)))
        } else {
            registry::load(name, &device).map(|m| (m, None))
        }
        .and_then(|(m, accuracy)| m.weights_to_bytes().map(|bytes| (bytes, accuracy)))
    })
    .await
    .map_err(|e| JobsCliError::Refused(format!("training stopped: {e}")))?;
    let (bytes, accuracy) =
        built.map_err(|e| JobsCliError::Refused(format!("cannot build {name}: {e}")))?;
    let build_secs = started.elapsed().as_secs_f64();
    let local = temp_file("weights");
    std::fs::write(&local, &bytes)
        .map_err(|e| JobsCliError::Refused(format!("{}: {e}", local.display())))?;
    let file = weights_file_name(name);
    let mut dfs = DfsClient::new(node, timeout);
    let put = dfs.put(&local, &file).await;
    let _ = std::fs::remove_file(&local);
    let done = put.map_err(dfs_error)?;
    Ok(if json {
        format!(
            "{}\n",
            json!({"model": name, "file": file, "version": done.version, "bytes": done.size,
                "accuracy": accuracy})
        )
    } else {
        let how = match accuracy {
            Some(a) => format!(
                "trained in {build_secs:.1} s, held-out accuracy {:.2}%",
                a * 100.0
            ),
            None => "pretrained weights".to_owned(),
        };
        format!(
            "{name}: {how}; stored as {file} version {} ({} bytes)\n",
            done.version, done.size
        )
    })
}

/// The default prefix of `upload DIR`: `inputs/<base name of DIR>`.
pub fn default_prefix(dir: &Path) -> Result<String, JobsCliError> {
    let base = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
        .ok_or_else(|| usage(format!("{} has no base name; give --prefix", dir.display())))?;
    Ok(format!("{INPUTS_DIR}/{base}"))
}

/// The first `n` regular files of `dir` (all when `None`), sorted by name.
pub fn local_inputs(dir: &Path, n: Option<usize>) -> Result<Vec<(String, PathBuf)>, JobsCliError> {
    let entries = std::fs::read_dir(dir).map_err(|e| usage(format!("{}: {e}", dir.display())))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| usage(format!("{}: {e}", dir.display())))?;
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if !is_file {
            continue;
        }
        let path = entry.path();
        let name = entry.file_name().into_string().map_err(|raw| {
            usage(format!(
                "{}: the file name {raw:?} is not UTF-8",
                dir.display()
            ))
        })?;
        files.push((name, path));
    }
    files.sort();
    if files.is_empty() {
        return Err(usage(format!("{} has no regular files", dir.display())));
    }
    if let Some(n) = n {
        files.truncate(n);
    }
    Ok(files)
}

/// `upload DIR [N] [--prefix P]`.
pub async fn upload(
    node: SocketAddr,
    timeout: Duration,
    dir: &Path,
    n: Option<usize>,
    prefix: Option<String>,
    json: bool,
) -> Result<String, JobsCliError> {
    if n == Some(0) {
        return Err(usage("N must be at least 1"));
    }
    let prefix = match prefix {
        Some(p) => p.trim_end_matches('/').to_owned(),
        None => default_prefix(dir)?,
    };
    let files = local_inputs(dir, n)?;
    if files.len() > INPUTS_PER_JOB_MAX {
        return Err(usage(format!(
            "{} files: a job takes at most {INPUTS_PER_JOB_MAX} inputs; give N",
            files.len()
        )));
    }
    let mut work = Vec::with_capacity(files.len());
    for (file, path) in files {
        let name = format!("{prefix}/{file}");
        validate_name(&name).map_err(|e| usage(format!("cannot upload as {name:?}: {e}")))?;
        work.push((name, path));
    }
    let total = work.len();
    let total_bytes: u64 = work
        .iter()
        .map(|(_, path)| std::fs::metadata(path).map_or(0, |m| m.len()))
        .sum();
    let bar = crate::progress::upload(total_bytes, total);
    let gate = Arc::new(Semaphore::new(UPLOAD_PARALLEL));
    let mut set = JoinSet::new();
    for (name, path) in work {
        let gate = Arc::clone(&gate);
        set.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let mut dfs = DfsClient::new(node, timeout);
            dfs.put(&path, &name)
                .await
                .map_err(|e| format!("{name}: {e}"))
        });
    }
    let (mut done, mut bytes, mut first_error) = (0usize, 0u64, None);
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(put)) => {
                done += 1;
                bytes += put.size;
                bar.inc(put.size);
                bar.set_message(crate::progress::upload_message(done, total));
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    bar.finish_and_clear();
    if let Some(e) = first_error {
        return Err(JobsCliError::Refused(format!(
            "{} of {total} files not uploaded; first: {e}",
            total - done
        )));
    }
    Ok(if json {
        format!(
            "{}\n",
            json!({"prefix": prefix, "files": done, "bytes": bytes})
        )
    } else {
        format!("uploaded {done} files ({bytes} bytes) under {prefix}/\n")
    })
}

/// The file-system prefix `inference` reads: `inputs/x` as is, `x` as `inputs/x`.
pub fn input_prefix(dir: &str) -> String {
    let dir = dir.trim_end_matches('/');
    if dir == INPUTS_DIR || dir.starts_with(&format!("{INPUTS_DIR}/")) {
        dir.to_owned()
    } else {
        format!("{INPUTS_DIR}/{dir}")
    }
}

/// `inference MODEL DIR [--batch B] [--wait]`.
#[allow(clippy::too_many_arguments)]
pub async fn inference(
    node: SocketAddr,
    timeout: Duration,
    model: &str,
    dir: &str,
    batch: u32,
    lease_ms: u32,
    request: u64,
    wait: bool,
    json: bool,
) -> Result<String, JobsCliError> {
    let dfs = DfsClient::new(node, timeout);
    if !is_noop(model) {
        known_model(model)?;
        match dfs.versions(&weights_file_name(model), 1).await {
            Ok(v) if !v.is_empty() => {}
            Ok(_) | Err(DfsClientError::Refused(DfsError::NotFound { .. })) => {
                return Err(usage(model::not_trained(model)));
            }
            Err(e) => return Err(dfs_error(e)),
        }
    }
    let prefix = input_prefix(dir);
    // Every page of the listing, refused past the scheduler's limit (exactly that many run).
    let names = match dfs
        .list_at_most(&format!("{prefix}/"), INPUTS_PER_JOB_MAX)
        .await
    {
        Ok(names) => names,
        Err(DfsClientError::TooManyNames { max, .. }) => {
            return Err(usage(format!(
                "more than {max} files under {prefix}/: a job takes at most {INPUTS_PER_JOB_MAX} \
                 inputs (upload fewer, or split them over several directories)"
            )));
        }
        Err(e) => return Err(dfs_error(e)),
    };
    if names.is_empty() {
        return Err(usage(format!(
            "no files under {prefix}/ (upload a directory first)"
        )));
    }
    debug_assert!(names.len() <= INPUTS_PER_JOB_MAX);
    let inputs = names.len();
    let client = SchedClient::new(node, timeout);
    let spec = JobSpec {
        model: model.to_owned(),
        inputs: names,
        batch_size: batch,
        lease_millis: lease_ms,
    };
    let job = client::submit(&client, spec, request).await?;
    let mut status = None;
    if wait {
        status = Some(wait_for(&client, job, inputs).await?);
    }
    Ok(if json {
        let mut v = json!({"job": job.0, "model": model, "inputs": inputs});
        if let Some((status, done, failed)) = status {
            v["status"] = json!(status);
            v["done"] = json!(done);
            v["failed"] = json!(failed);
        }
        format!("{v}\n")
    } else {
        let mut text = format!("submitted {job}: {model} on {inputs} inputs under {prefix}/\n");
        if let Some((status, done, failed)) = status {
            text.push_str(&format!("{job} {status}: {done} done, {failed} failed\n"));
        }
        text
    })
}

/// Polls `job` until it is no longer running, a progress bar on stderr; (status, done,
/// failed).
async fn wait_for(
    client: &SchedClient,
    job: JobId,
    inputs: usize,
) -> Result<(&'static str, u32, u32), JobsCliError> {
    let bar = crate::progress::job(&job.to_string(), inputs as u64);
    let outcome = loop {
        // Any other answer (a leader change): ask again.
        if let Ok(SchedAnswer::Jobs(jobs)) = client.query(SchedQuery::Jobs).await {
            let Some(j) = jobs.iter().find(|j| j.job == job) else {
                break Err(JobsCliError::Refused(format!("unknown job {job}")));
            };
            bar.set_position(u64::from(j.done) + u64::from(j.failed));
            bar.set_message(crate::progress::job_message(
                j.failed,
                j.rate_milli as f64 / 1000.0,
            ));
            match j.status {
                JobStatus::Running => {}
                JobStatus::Finished => break Ok(("finished", j.done, j.failed)),
                JobStatus::Cancelled => break Ok(("cancelled", j.done, j.failed)),
            }
        }
        tokio::time::sleep(WAIT_POLL).await;
    };
    bar.finish_and_clear();
    outcome
}

/// One input's outcome as `c4` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Shown {
    /// Its index in the job.
    pub index: u32,
    /// Its name (unknown while pending).
    pub input: Option<String>,
    /// done, failed or pending.
    pub status: &'static str,
    /// The worker that ran it.
    pub worker: Option<String>,
    /// The scheduler's outcome text (the result file's name, or the no-op's echo).
    pub result: Option<String>,
    /// The prediction's line, when the result file had one.
    pub line: Option<ResultLine>,
    /// Why it failed (or why its result file could not be read).
    pub error: Option<String>,
}

/// `c4 JOB [N]`: each of the first `limit` inputs of `job`, reading each result file once.
pub async fn predictions(
    node: SocketAddr,
    timeout: Duration,
    job: JobId,
    limit: usize,
) -> Result<Vec<Shown>, JobsCliError> {
    let client = SchedClient::new(node, timeout);
    let summary = match client.query(SchedQuery::Jobs).await? {
        SchedAnswer::Jobs(jobs) => jobs.into_iter().find(|j| j.job == job),
        other => {
            return Err(JobsCliError::Refused(format!(
                "unexpected answer {other:?}"
            )));
        }
    };
    let Some(summary) = summary else {
        return Err(JobsCliError::Refused(format!("unknown job {job}")));
    };
    let count = (summary.inputs as usize).min(limit);
    let finished: Vec<InputResult> = client::all_results(&client, job, count)
        .await?
        .into_iter()
        .filter(|r| (r.input as usize) < count)
        .collect();
    let files: Vec<String> = {
        let mut set: Vec<String> = finished
            .iter()
            .filter_map(|r| match &r.outcome {
                InputOutcome::Result(name)
                    if name.starts_with(&format!("{}/", results::RESULTS_DIR)) =>
                {
                    Some(name.clone())
                }
                _ => None,
            })
            .collect();
        set.sort();
        set.dedup();
        set
    };
    let read = read_result_files(node, timeout, files).await;
    let mut by_index: BTreeMap<u32, Shown> = BTreeMap::new();
    for r in finished {
        let mut shown = Shown {
            index: r.input,
            input: Some(r.name.clone()),
            status: "done",
            worker: Some(r.worker.to_string()),
            result: None,
            line: None,
            error: None,
        };
        match r.outcome {
            InputOutcome::Failed(e) => {
                shown.status = "failed";
                shown.error = Some(e);
            }
            InputOutcome::Result(text) => {
                match read.get(&text) {
                    Some(Ok(lines)) => {
                        match lines
                            .iter()
                            .find(|l| l.index == r.input && l.input == r.name)
                        {
                            Some(line) => shown.line = Some(line.clone()),
                            None => {
                                shown.error = Some(format!("{text} has no line for this input"));
                            }
                        }
                    }
                    Some(Err(e)) => shown.error = Some(format!("cannot read {text}: {e}")),
                    None => {}
                }
                shown.result = Some(text);
            }
        }
        by_index.insert(shown.index, shown);
    }
    Ok((0..count as u32)
        .map(|index| {
            by_index.remove(&index).unwrap_or(Shown {
                index,
                input: None,
                status: "pending",
                worker: None,
                result: None,
                line: None,
                error: None,
            })
        })
        .collect())
}

/// Reads and decodes each result file once, [`RESULTS_PARALLEL`] at a time.
async fn read_result_files(
    node: SocketAddr,
    timeout: Duration,
    files: Vec<String>,
) -> BTreeMap<String, Result<Vec<ResultLine>, String>> {
    let dfs = Arc::new(DfsClient::new(node, timeout));
    let gate = Arc::new(Semaphore::new(RESULTS_PARALLEL));
    let mut set = JoinSet::new();
    for name in files {
        let dfs = Arc::clone(&dfs);
        let gate = Arc::clone(&gate);
        set.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let local = temp_file("result");
            let got = dfs
                .get_at_most(&name, &local, RESULT_FILE_BYTES_MAX as u64)
                .await
                .map_err(|e| e.to_string());
            let lines = match got {
                Ok(_) => match tokio::fs::read(&local).await {
                    Ok(bytes) => results::decode(&bytes).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e),
            };
            let _ = tokio::fs::remove_file(&local).await;
            (name, lines)
        });
    }
    let mut out = BTreeMap::new();
    while let Some(joined) = set.join_next().await {
        if let Ok((name, lines)) = joined {
            out.insert(name, lines);
        }
    }
    out
}

fn top5_json(top5: &[ClassScore]) -> serde_json::Value {
    serde_json::Value::Array(
        top5.iter()
            .map(
                |c| json!({"class_id": c.class_id, "label": c.label, "probability": c.probability}),
            )
            .collect(),
    )
}

/// `c4`'s output: a JSON array of `{"index","input","name","status","worker","result",
/// "class_id","label","probability","top5","error"}` (absent values null), or a table.
pub fn render_predictions(shown: &[Shown], json: bool) -> String {
    if json {
        let all: Vec<serde_json::Value> = shown
            .iter()
            .map(|s| {
                let line = s.line.as_ref();
                let error = s
                    .error
                    .clone()
                    .or_else(|| line.and_then(|l| l.error.clone()));
                json!({"index": s.index, "input": s.input, "name": s.input,
                    "status": s.status, "worker": s.worker, "result": s.result,
                    "class_id": line.and_then(|l| l.class_id),
                    "label": line.and_then(|l| l.label.clone()),
                    "probability": line.and_then(|l| l.probability),
                    "top5": line.map_or(serde_json::Value::Null, |l| top5_json(&l.top5)),
                    "error": error})
            })
            .collect();
        return format!("{}\n", serde_json::Value::Array(all));
    }
    if shown.is_empty() {
        return "no inputs\n".to_owned();
    }
    let width = shown
        .iter()
        .filter_map(|s| s.input.as_ref().map(|i| i.chars().count()))
        .max()
        .unwrap_or(5)
        .clamp(5, 50);
    let mut out = format!(
        "{:>6} {:<width$} {:<8} {:>6} {:<24} {:>11}\n",
        "INDEX", "INPUT", "STATUS", "CLASS", "LABEL", "PROBABILITY"
    );
    for s in shown {
        let input = s.input.as_deref().unwrap_or("-");
        let (class, label, probability) = match s.line.as_ref() {
            Some(ResultLine {
                class_id: Some(c),
                label: Some(l),
                probability: Some(p),
                ..
            }) => (c.to_string(), l.clone(), format!("{p:.4}")),
            _ => match (&s.error, &s.result) {
                (Some(e), _) => ("-".to_owned(), format!("error: {e}"), "-".to_owned()),
                (None, Some(r)) => ("-".to_owned(), r.clone(), "-".to_owned()),
                _ => ("-".to_owned(), "-".to_owned(), "-".to_owned()),
            },
        };
        out.push_str(&format!(
            "{:>6} {:<width$} {:<8} {:>6} {:<24} {:>11}\n",
            s.index, input, s.status, class, label, probability
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert_eq!(input_prefix("digits"), "inputs/digits");
        assert_eq!(input_prefix("inputs/digits/"), "inputs/digits");
        assert_eq!(input_prefix("inputs"), "inputs");
        assert_eq!(input_prefix("other/x"), "inputs/other/x");
        assert_eq!(
            default_prefix(Path::new("/tmp/some/photos"))
                .ok()
                .as_deref(),
            Some("inputs/photos")
        );
    }

    #[test]
    fn local_inputs_are_sorted_regular_files_and_refuse_empty_dirs() {
        let dir = std::env::temp_dir().join(format!("idunno-upload-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
        assert!(local_inputs(&dir, None).is_err(), "no regular files");
        for name in ["b.txt", "a.txt", "c.txt"] {
            std::fs::write(dir.join(name), name).expect("write");
        }
        let all = local_inputs(&dir, None).expect("files");
        let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a.txt", "b.txt", "c.txt"]);
        assert_eq!(local_inputs(&dir, Some(2)).expect("two").len(), 2);
        assert!(local_inputs(&dir.join("missing"), None).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unknown_models_list_the_known_ones() {
        let e = known_model("resnet").expect_err("unknown").to_string();
        assert!(
            e.contains("digits-cnn") && e.contains("efficientnet-lite0"),
            "{e}"
        );
    }

    #[test]
    fn pending_and_failed_inputs_render() {
        let shown = vec![
            Shown {
                index: 0,
                input: Some("inputs/d/a".into()),
                status: "failed",
                worker: Some("w".into()),
                result: None,
                line: None,
                error: Some("bad".into()),
            },
            Shown {
                index: 1,
                input: None,
                status: "pending",
                worker: None,
                result: None,
                line: None,
                error: None,
            },
        ];
        let v: serde_json::Value =
            serde_json::from_str(&render_predictions(&shown, true)).expect("json");
        assert_eq!(v[0]["error"], "bad");
        assert_eq!(v[1]["status"], "pending");
        assert!(v[1]["class_id"].is_null());
        let table = render_predictions(&shown, false);
        assert!(
            table.contains("pending") && table.contains("error: bad"),
            "{table}"
        );
    }
}
