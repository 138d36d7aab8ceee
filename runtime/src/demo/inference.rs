//! The inference demo's steps: start the cluster (the first `--voters` nodes are Raft voters,
//! every node a worker), wait for membership and a leader, train the models, write and upload
//! the inputs, start both jobs at once, SIGKILL `--kill` nodes (the coordinator, that is the Raft
//! leader, among them) once about half the inputs are done, wait for both jobs, then check and
//! print the results and the statistics.
//!
//! Owns: those steps, their deadlines and their output; the check that every input of both jobs
//! has exactly one result and none failed ([`check_results`]); the digits accuracy against the
//! labels written into the input files.
//! Must never: talk to the nodes except as a client (`idunno-node client ... --json`, and the
//! control protocol for membership and the leader), or call the demo passed when any input is
//! missing, duplicated or failed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use idunno_core::membership::NodeId;
use serde_json::Value;

use idunno_core::scheduler::JobStatus;
use idunno_core::scheduler::api::{SchedAnswer, SchedQuery};

use super::client::{ClientCmd, client_json, client_text};
use super::cluster::{Cluster, free_addr, node_ip};
use super::inputs;
use super::membership::wait_for_views;
use super::{DemoError, Progress, fail, ids, secs, show_indented};
use crate::cli::DemoArgs;
use crate::control;
use crate::jobs::client::SchedClient;

/// The two models the demo runs.
const DIGITS_MODEL: &str = "digits-cnn";
const PHOTOS_MODEL: &str = "efficientnet-lite0";
/// The no-op model (`--noop`).
const NOOP_MODEL: &str = crate::jobs::noop::NOOP_MODEL;
/// Deadline of one quick client command (a status read).
const QUICK_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of a training command.
const TRAIN_TIMEOUT: Duration = Duration::from_secs(300);
/// Deadline of an upload or a results read.
const BULK_TIMEOUT: Duration = Duration::from_secs(120);
/// Pause between two reads of the jobs' progress.
const JOBS_POLL: Duration = Duration::from_millis(50);
/// Least time between two progress lines.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Share of all inputs done (in percent) at which the nodes are killed.
const KILL_AT_PERCENT: u64 = 50;

/// One job of the demo, as started.
#[derive(Debug, Clone)]
struct Job {
    /// What it classifies, for the output ("digits", "photos").
    what: &'static str,
    model: String,
    id: u64,
    /// The inputs' file-system names, in order.
    names: Vec<String>,
}

/// The demo's inputs, written and uploaded.
struct Inputs {
    /// Each digit file's label, by file name.
    labels: BTreeMap<String, u8>,
    /// The digits' file-system names.
    digits: Vec<String>,
    /// The photos' file-system names.
    photos: Vec<String>,
    /// Each photo's top class in a single-process run, when the photos came with one.
    reference: Option<BTreeMap<String, u64>>,
}

/// A job's progress, as `jobs --json` reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct JobProgress {
    inputs: u64,
    done: u64,
    failed: u64,
    rate: f64,
    finished: bool,
}

/// The inference demo.
pub async fn steps(
    args: &DemoArgs,
    cluster: &mut Cluster,
    mut progress: Progress,
) -> Result<(), DemoError> {
    let progress = &mut progress;
    let addrs = start_cluster(args, cluster, progress).await?;
    let exe = ClientCmd {
        exe: cluster.exe().to_owned(),
        key_file: cluster.key_file(),
    };
    let entry = addrs[addrs.len() - 1];
    let trained = if args.noop {
        progress.say("--noop: no training, no upload; both jobs run the no-op model");
        None
    } else {
        Some(train(&exe, entry, progress).await?)
    };
    let inputs = prepare_inputs(args, &cluster.root, &exe, entry, progress).await?;
    let jobs = start_jobs(
        args,
        &exe,
        entry,
        inputs.digits.clone(),
        inputs.photos.clone(),
        progress,
    )
    .await?;
    let (entry, killed) = run_jobs(args, cluster, entry, &jobs, progress).await?;
    let mut failures = Vec::new();
    for job in &jobs {
        let real = !args.noop;
        let check = match job.what {
            "digits" if real => Check::Digits(&inputs.labels, trained),
            "photos" if real => Check::Photos(inputs.reference.as_ref()),
            _ => Check::None,
        };
        if let Err(DemoError(e)) = report_job(&exe, entry, job, check, progress).await {
            failures.push(e);
        }
    }
    statistics(&exe, entry, &jobs, &killed, progress).await?;
    progress.say(&format!("timings: {}", progress.summary()));
    if !failures.is_empty() {
        return fail(failures.join("\n"));
    }
    progress.say(&format!(
        "every input of both jobs has exactly one result and none failed ({} inputs)",
        jobs.iter().map(|j| j.names.len()).sum::<usize>()
    ));
    Ok(())
}

fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

/// Starts the nodes (node 0 first, the others joining it), waits until every node sees all of
/// them alive and a leader is elected. Returns the nodes' addresses, by index.
async fn start_cluster(
    args: &DemoArgs,
    cluster: &mut Cluster,
    progress: &mut Progress,
) -> Result<Vec<SocketAddr>, DemoError> {
    let n = usize::from(args.nodes);
    let voters = usize::from(args.voters);
    let addrs = (0..n)
        .map(|i| free_addr(node_ip(i)))
        .collect::<Result<Vec<_>, _>>()?;
    let voters_arg = addrs
        .iter()
        .take(voters)
        .enumerate()
        .map(|(i, addr)| format!("{}={addr}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    progress.say(&format!(
        "starting {n} nodes on 127.0.0.2..=127.0.0.{}: {voters} Raft voters, every node a \
         worker (logs in {})",
        n + 1,
        cluster.root.display()
    ));
    let extra = |i: usize| {
        let mut extra = vec!["--voters".to_owned(), voters_arg.clone()];
        if i < voters {
            extra.extend(["--raft-id".to_owned(), (i + 1).to_string()]);
        }
        extra
    };
    let t0 = Instant::now();
    cluster.spawn(0, addrs[0], &[], &extra(0)).await?;
    let mut pending = Vec::new();
    for (i, &addr) in addrs.iter().enumerate().skip(1) {
        pending.push(cluster.start_spawn(i, addr, &[addrs[0]], &extra(i))?);
    }
    for (index, line) in pending {
        cluster.finish_spawn(index, line).await?;
    }
    let everyone = cluster.live_ids();
    wait_for_views(
        &everyone,
        &everyone,
        &BTreeSet::new(),
        progress.step_timeout,
    )
    .await?;
    let (id, addr) = wait_for_leader(addrs[n - 1], None, progress.step_timeout).await?;
    let took = t0.elapsed();
    progress.say(&format!(
        "{n} nodes up, every node sees all {n} alive, Raft leader (the coordinator) is voter \
         {id} at {addr}, after {}",
        secs(took)
    ));
    progress.timings.push(("start", took));
    Ok(addrs)
}

/// Polls `node` until it names a leader other than `not`: (voter id, address).
async fn wait_for_leader(
    node: SocketAddr,
    not: Option<SocketAddr>,
    timeout: Duration,
) -> Result<(u64, SocketAddr), DemoError> {
    let t0 = Instant::now();
    let mut last = String::from("not asked yet");
    while t0.elapsed() < timeout {
        match control::leader(node, QUICK_TIMEOUT).await {
            Ok((Some(id), Some(addr), _)) if Some(addr) != not => return Ok((id.0, addr)),
            Ok((_, _, term)) => last = format!("no new leader known (term {term})"),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fail(format!(
        "no leader within {} (asked {node}: {last})",
        secs(timeout)
    ))
}

fn args(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

/// Trains digits-cnn and stores efficientnet-lite0's pretrained weights in the file system.
/// Returns digits-cnn's held-out accuracy.
async fn train(
    exe: &ClientCmd,
    entry: SocketAddr,
    progress: &mut Progress,
) -> Result<f64, DemoError> {
    let mut accuracy = None;
    let started = Instant::now();
    for model in [DIGITS_MODEL, PHOTOS_MODEL] {
        progress.say(&format!("train {model} ..."));
        let t0 = Instant::now();
        let answer = client_json(exe, entry, &args(&["train", model]), TRAIN_TIMEOUT).await?;
        let took = t0.elapsed();
        let file = answer["file"].as_str().unwrap_or("?");
        let version = answer["version"].as_u64().unwrap_or(0);
        let bytes = answer["bytes"].as_u64().unwrap_or(0);
        let held_out = answer["accuracy"].as_f64();
        let shown = held_out.map_or_else(
            || "pretrained".to_owned(),
            |a| format!("held-out accuracy {}", percent(a)),
        );
        progress.say(&format!(
            "{model}: {shown}; weights in the file system as {file} version {version} \
             ({bytes} bytes), after {}",
            secs(took)
        ));
        if model == DIGITS_MODEL {
            accuracy = held_out;
        }
    }
    progress.timings.push(("train", started.elapsed()));
    accuracy.ok_or_else(|| DemoError("train digits-cnn reported no accuracy".into()))
}

/// Writes the digits and the photos into the demo's directory and uploads both (with
/// `--noop`, only names them). Returns the digits' labels by file name and both jobs' input
/// names in the file system.
async fn prepare_inputs(
    args: &DemoArgs,
    root: &Path,
    exe: &ClientCmd,
    entry: SocketAddr,
    progress: &mut Progress,
) -> Result<Inputs, DemoError> {
    let split = inputs::test_split()?;
    let count = args
        .digits
        .map_or(split.len(), |d| usize::try_from(d).unwrap_or(usize::MAX));
    let digits_dir = root.join("inputs").join("digits");
    let labels = inputs::write_digits(&digits_dir, count)?;
    let photos_from = args
        .photos
        .clone()
        .unwrap_or_else(inputs::default_photos_dir);
    let photos_dir = root.join("inputs").join("photos");
    let photos = inputs::copy_photos(&photos_from, &photos_dir, args.photo_copies)?;
    progress.say(&format!(
        "wrote {} digits of the held-out test split (of {}) to {} and {} photos from {} \
         ({} copies each) to {}",
        labels.len(),
        split.len(),
        digits_dir.display(),
        photos.len() / usize::from(args.photo_copies),
        photos_from.display(),
        args.photo_copies,
        photos_dir.display()
    ));
    let t0 = Instant::now();
    let mut names = Vec::new();
    for (dir, files) in [
        (&digits_dir, labels.keys().cloned().collect::<Vec<_>>()),
        (&photos_dir, photos.clone()),
    ] {
        let prefix = dfs_prefix(dir);
        if !args.noop {
            upload(exe, entry, dir, &prefix, files.len(), progress).await?;
        }
        names.push(
            files
                .iter()
                .map(|f| format!("{prefix}/{f}"))
                .collect::<Vec<_>>(),
        );
    }
    if !args.noop {
        progress.timings.push(("upload", t0.elapsed()));
    }
    let photos = names.pop().unwrap_or_default();
    let digits = names.pop().unwrap_or_default();
    Ok(Inputs {
        labels,
        digits,
        photos,
        reference: inputs::read_reference(&photos_from)?,
    })
}

/// `inputs/<base name of DIR>`, the prefix `upload` gives a directory's files.
fn dfs_prefix(dir: &Path) -> String {
    let base = dir.file_name().and_then(|n| n.to_str()).unwrap_or("inputs");
    format!("inputs/{base}")
}

async fn upload(
    exe: &ClientCmd,
    entry: SocketAddr,
    dir: &Path,
    prefix: &str,
    expected: usize,
    progress: &mut Progress,
) -> Result<(), DemoError> {
    let t0 = Instant::now();
    let dir_arg = dir.display().to_string();
    let answer = client_json(
        exe,
        entry,
        &args(&["upload", &dir_arg, "--prefix", prefix]),
        BULK_TIMEOUT,
    )
    .await?;
    let files = answer["files"].as_u64().unwrap_or(0);
    let bytes = answer["bytes"].as_u64().unwrap_or(0);
    if usize::try_from(files).ok() != Some(expected) {
        return fail(format!(
            "upload {dir_arg}: {files} files stored, expected {expected}: {answer}"
        ));
    }
    progress.say(&format!(
        "uploaded {files} files ({bytes} bytes) as {prefix}/... in {}",
        secs(t0.elapsed())
    ));
    Ok(())
}

/// Starts both jobs at once. Returns them, digits first.
async fn start_jobs(
    args: &DemoArgs,
    exe: &ClientCmd,
    entry: SocketAddr,
    digits: Vec<String>,
    photos: Vec<String>,
    progress: &mut Progress,
) -> Result<Vec<Job>, DemoError> {
    let (digits_model, photos_model) = if args.noop {
        (NOOP_MODEL, NOOP_MODEL)
    } else {
        (DIGITS_MODEL, PHOTOS_MODEL)
    };
    let digits_job = start_job(
        exe,
        entry,
        args.noop,
        "digits",
        digits_model,
        digits,
        args.digits_batch,
    );
    let photos_job = start_job(
        exe,
        entry,
        args.noop,
        "photos",
        photos_model,
        photos,
        args.photos_batch,
    );
    let (digits_job, photos_job) = tokio::join!(digits_job, photos_job);
    let jobs = vec![digits_job?, photos_job?];
    for job in &jobs {
        progress.say(&format!(
            "started job-{}: {} on {} {} ({}/...)",
            job.id,
            job.model,
            job.names.len(),
            job.what,
            job.names
                .first()
                .and_then(|n| n.rsplit_once('/'))
                .map_or("", |(p, _)| p)
        ));
    }
    Ok(jobs)
}

async fn start_job(
    exe: &ClientCmd,
    entry: SocketAddr,
    noop: bool,
    what: &'static str,
    model: &str,
    names: Vec<String>,
    batch: u32,
) -> Result<Job, DemoError> {
    let batch = batch.to_string();
    let words = if noop {
        let mut words = args(&["submit", model, "--batch", &batch]);
        words.extend(names.iter().cloned());
        words
    } else {
        let prefix = names
            .first()
            .and_then(|n| n.rsplit_once('/'))
            .map_or(String::new(), |(p, _)| p.to_owned());
        args(&["inference", model, &prefix, "--batch", &batch])
    };
    let answer = client_json(exe, entry, &words, BULK_TIMEOUT).await?;
    let Some(id) = answer["job"].as_u64() else {
        return fail(format!("starting the {what} job: no job id in {answer}"));
    };
    let inputs = answer["inputs"].as_u64().unwrap_or(0);
    if usize::try_from(inputs).ok() != Some(names.len()) {
        return fail(format!(
            "the {what} job has {inputs} inputs, expected {}",
            names.len()
        ));
    }
    Ok(Job {
        what,
        model: model.to_owned(),
        id,
        names,
    })
}

/// Each demo job's progress and the workers holding leases now, read through the scheduler's
/// client library (in process, so the demo can poll often without starting a process each
/// time; the same `Jobs` query `jobs --json` prints).
async fn read_progress(
    entry: SocketAddr,
    jobs: &[Job],
) -> Result<(Vec<JobProgress>, BTreeSet<NodeId>), DemoError> {
    let client = SchedClient::new(entry, QUICK_TIMEOUT);
    let all = match client.query(SchedQuery::Jobs).await? {
        SchedAnswer::Jobs(all) => all,
        other => return fail(format!("jobs: unexpected answer {other:?}")),
    };
    let mut out = Vec::new();
    let mut leasing = BTreeSet::new();
    for job in jobs {
        let Some(j) = all.iter().find(|j| j.job.0 == job.id) else {
            return fail(format!("jobs does not list job-{}", job.id));
        };
        out.push(JobProgress {
            inputs: u64::from(j.inputs),
            done: u64::from(j.done),
            failed: u64::from(j.failed),
            rate: j.rate_milli as f64 / 1000.0,
            finished: j.status != JobStatus::Running,
        });
        leasing.extend(j.workers_now.iter().copied());
    }
    Ok((out, leasing))
}

fn progress_line(jobs: &[Job], now: &[JobProgress]) -> String {
    jobs.iter()
        .zip(now)
        .map(|(job, p)| {
            format!(
                "job-{} {}: {}/{} done{} ({:.1}/s over 10 s)",
                job.id,
                job.model,
                p.done,
                p.inputs,
                if p.failed > 0 {
                    format!(", {} failed", p.failed)
                } else {
                    String::new()
                },
                p.rate
            )
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Follows both jobs to the end, killing nodes halfway. Returns the node to ask from then on
/// and the nodes killed.
async fn run_jobs(
    args: &DemoArgs,
    cluster: &mut Cluster,
    mut entry: SocketAddr,
    jobs: &[Job],
    progress: &mut Progress,
) -> Result<(SocketAddr, BTreeSet<NodeId>), DemoError> {
    let mut killed = BTreeSet::new();
    let t0 = Instant::now();
    let timeout = Duration::from_secs(args.jobs_timeout_secs);
    let total: u64 = jobs.iter().map(|j| j.names.len() as u64).sum();
    let mut killed_at: Option<(Instant, u64)> = None;
    let mut resumed = false;
    let mut last_line = Instant::now();
    let mut last_error = String::new();
    loop {
        cluster.check_alive()?;
        if t0.elapsed() >= timeout {
            return fail(format!(
                "the jobs did not finish within {} (last: {last_error})",
                secs(timeout)
            ));
        }
        let (now, leasing) = match read_progress(entry, jobs).await {
            Ok(read) => read,
            Err(DemoError(e)) => {
                // Expected for a moment after the kills (no leader yet): keep polling.
                last_error = e;
                tokio::time::sleep(JOBS_POLL).await;
                continue;
            }
        };
        // `done` counts failed inputs too.
        let finished: u64 = now.iter().map(|p| p.done).sum();
        if last_line.elapsed() >= PROGRESS_EVERY || now.iter().all(|p| p.finished) {
            progress.say(&progress_line(jobs, &now));
            last_line = Instant::now();
        }
        if let Some((at, before)) = killed_at
            && !resumed
            && finished > before
        {
            resumed = true;
            progress.say(&format!(
                "after the kills the first results committed {} later",
                secs(at.elapsed())
            ));
            progress.timings.push(("resume after kill", at.elapsed()));
        }
        if now.iter().all(|p| p.finished) {
            if killed_at.is_none() && args.kill > 0 {
                return fail(format!(
                    "both jobs finished before {KILL_AT_PERCENT}% of their inputs were seen \
                     done, so no node was killed: give them more inputs"
                ));
            }
            let took = t0.elapsed();
            progress.say(&format!(
                "both jobs finished in {} ({:.1} inputs/s overall)",
                secs(took),
                total as f64 / took.as_secs_f64().max(1e-3)
            ));
            progress.timings.push(("jobs", took));
            return Ok((entry, killed));
        }
        if killed_at.is_none() && args.kill > 0 && finished * 100 >= total * KILL_AT_PERCENT {
            progress.say(&progress_line(jobs, &now));
            (entry, killed) =
                kill_nodes(args, cluster, entry, &leasing, finished, total, progress).await?;
            killed_at = Some((Instant::now(), finished));
        }
        tokio::time::sleep(JOBS_POLL).await;
    }
}

/// The nodes to kill: the leader's index first, then nodes holding leases now, then others from
/// the highest index down; never `entry` unless it leads.
fn pick_victims(
    cluster: &Cluster,
    leader: usize,
    entry: SocketAddr,
    leasing: &BTreeSet<NodeId>,
    kill: usize,
) -> Vec<usize> {
    let mut victims = vec![leader];
    let candidates: Vec<(usize, NodeId)> = cluster
        .live_indices()
        .into_iter()
        .rev()
        .filter_map(|i| cluster.id(i).map(|id| (i, id)))
        .filter(|&(i, id)| i != leader && id.addr != entry)
        .collect();
    for (i, _) in candidates
        .iter()
        .filter(|(_, id)| leasing.contains(id))
        .chain(candidates.iter().filter(|(_, id)| !leasing.contains(id)))
    {
        if victims.len() >= kill {
            break;
        }
        victims.push(*i);
    }
    debug_assert!(victims.len() <= kill.max(1));
    victims
}

/// SIGKILLs `--kill` nodes at once, the leader among them, and waits for a new leader. Returns
/// a surviving node to ask from then on, and the nodes killed.
async fn kill_nodes(
    args: &DemoArgs,
    cluster: &mut Cluster,
    entry: SocketAddr,
    leasing: &BTreeSet<NodeId>,
    finished: u64,
    total: u64,
    progress: &mut Progress,
) -> Result<(SocketAddr, BTreeSet<NodeId>), DemoError> {
    let (leader_id, leader_addr) = wait_for_leader(entry, None, progress.step_timeout).await?;
    let Some(leader) = cluster.index_of(leader_addr) else {
        return fail(format!("the leader {leader_addr} is not a demo node"));
    };
    let victims = pick_victims(cluster, leader, entry, leasing, usize::from(args.kill));
    let killed: BTreeSet<NodeId> = victims.iter().filter_map(|&i| cluster.id(i)).collect();
    progress.say(&format!(
        "{finished}/{total} inputs done: SIGKILL {} nodes at once, the coordinator (Raft \
         leader, voter {leader_id}) among them: {}",
        killed.len(),
        ids(&killed)
    ));
    let t0 = Instant::now();
    for &index in &victims {
        cluster.kill(index)?;
    }
    let survivor = cluster
        .live_ids()
        .into_iter()
        .map(|id| id.addr)
        .find(|&a| a == entry)
        .or_else(|| cluster.any_live_addr())
        .ok_or_else(|| DemoError("no node survived".into()))?;
    let (new_id, new_addr) =
        wait_for_leader(survivor, Some(leader_addr), progress.step_timeout).await?;
    let took = t0.elapsed();
    progress.say(&format!(
        "new coordinator: voter {new_id} at {new_addr}, elected {} after the kills",
        secs(took)
    ));
    progress.timings.push(("new leader", took));
    Ok((survivor, killed))
}

/// One input's outcome, as `c4 --json` reports it.
#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    name: String,
    /// The error, for a failed input.
    error: Option<String>,
    class_id: Option<u64>,
    label: Option<String>,
    probability: Option<f64>,
    /// The result's file in the file system, when the report names one.
    file: Option<String>,
}

/// Reads one `c4` entry: `{"index","input","name","status","worker","result","class_id",
/// "label","probability","top5","error"}` (`result`: the result file of a model, the no-op's
/// echo) or the older `{"input": index,"name","result"|"error","worker"}`. An entry without a
/// name (a pending input) is named from `names` by its index.
fn parse_outcome(r: &Value, names: &[String]) -> Option<Outcome> {
    let index = r["index"].as_u64().or_else(|| r["input"].as_u64());
    let name = r["name"]
        .as_str()
        .or_else(|| r["input"].as_str())
        .map(str::to_owned)
        .or_else(|| {
            let i = usize::try_from(index?).ok()?;
            names.get(i).cloned()
        })?;
    let error = r["error"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| match r["status"].as_str() {
            Some("done") | None => None,
            Some(other) => Some(format!("status {other}")),
        });
    let result = r["result"].as_str();
    let file = ["file", "result_file"]
        .iter()
        .find_map(|k| r[*k].as_str())
        .or(result.filter(|t| t.starts_with("results/")))
        .map(str::to_owned);
    Some(Outcome {
        name,
        error,
        class_id: r["class_id"].as_u64(),
        label: r["label"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| result.map(str::to_owned)),
        probability: r["probability"].as_f64(),
        file,
    })
}

/// Checks that `results` hold exactly one outcome per name of `job` and none failed.
fn check_results(job: &Job, results: &[Outcome]) -> Result<(), String> {
    let expected: BTreeSet<&str> = job.names.iter().map(String::as_str).collect();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut problems = Vec::new();
    for r in results {
        if !expected.contains(r.name.as_str()) {
            problems.push(format!("a result for {:?}, not an input", r.name));
        }
        *seen.entry(r.name.as_str()).or_default() += 1;
        if let Some(e) = &r.error {
            problems.push(format!("{} failed: {e}", r.name));
        }
    }
    let twice: Vec<&str> = seen
        .iter()
        .filter(|&(_, &c)| c > 1)
        .map(|(n, _)| *n)
        .collect();
    if !twice.is_empty() {
        problems.push(format!(
            "{} inputs with several results: {twice:?}",
            twice.len()
        ));
    }
    let missing: Vec<&str> = expected
        .iter()
        .filter(|n| !seen.contains_key(*n))
        .copied()
        .collect();
    if !missing.is_empty() {
        problems.push(format!("{} inputs without a result", missing.len()));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        problems.truncate(10);
        Err(format!(
            "job-{} ({}): {}",
            job.id,
            job.model,
            problems.join("; ")
        ))
    }
}

/// The predicted digit of a digits-cnn outcome.
fn predicted_digit(o: &Outcome) -> Option<u8> {
    if let Some(class) = o.class_id {
        return u8::try_from(class).ok();
    }
    o.label.as_deref()?.trim().parse().ok()
}

/// Accuracy of `results` against the labels of the files: (correct, classified).
fn digits_accuracy(results: &[Outcome], labels: &BTreeMap<String, u8>) -> (usize, usize) {
    let mut correct = 0;
    let mut total = 0;
    for r in results.iter().filter(|r| r.error.is_none()) {
        let file = r.name.rsplit('/').next().unwrap_or(&r.name);
        if let (Some(&truth), Some(guess)) = (labels.get(file), predicted_digit(r)) {
            total += 1;
            if truth == guess {
                correct += 1;
            }
        }
    }
    (correct, total)
}

/// What a job's results are checked against, beyond exactly-once.
#[derive(Debug, Clone, Copy)]
enum Check<'a> {
    /// Nothing (the no-op model).
    None,
    /// Digits: the labels in the files, and training's own accuracy on the split.
    Digits(&'a BTreeMap<String, u8>, Option<f64>),
    /// Photos: the copies of a photo agree, and match the single-process reference if any.
    Photos(Option<&'a BTreeMap<String, u64>>),
}

/// Reads, checks and prints one job's results.
async fn report_job(
    exe: &ClientCmd,
    entry: SocketAddr,
    job: &Job,
    check: Check<'_>,
    progress: &mut Progress,
) -> Result<(), DemoError> {
    let answer = client_json(
        exe,
        entry,
        &args(&["c4", &job.id.to_string()]),
        BULK_TIMEOUT,
    )
    .await?;
    let Some(all) = answer.as_array() else {
        return fail(format!("c4 job-{}: not an array", job.id));
    };
    let results: Vec<Outcome> = all
        .iter()
        .filter_map(|r| parse_outcome(r, &job.names))
        .collect();
    if results.len() != all.len() {
        return fail(format!(
            "c4 job-{}: {} entries without an input name",
            job.id,
            all.len() - results.len()
        ));
    }
    let mut checked = check_results(job, &results);
    progress.say(&format!(
        "job-{} {}: {} results for {} inputs{}",
        job.id,
        job.model,
        results.len(),
        job.names.len(),
        if checked.is_ok() {
            ", exactly one each, none failed"
        } else {
            ""
        }
    ));
    if let Check::Digits(labels, trained) = check {
        let (correct, classified) = digits_accuracy(&results, labels);
        let share = correct as f64 / classified.max(1) as f64;
        let training = trained.map_or_else(String::new, |a| {
            format!(
                "; training's own evaluation of the same split said {}",
                percent(a)
            )
        });
        progress.say(&format!(
            "digits-cnn accuracy on the held-out digits: {} ({correct}/{classified} correct \
             against the labels in the files{training})",
            percent(share)
        ));
    } else if let Check::Photos(reference) = check {
        let agreed = photo_labels(job, &results, reference, progress);
        if checked.is_ok() {
            checked = agreed;
        }
    }
    print_result_files(exe, entry, job, &results, progress).await;
    checked.map_err(DemoError)
}

/// Prints the top label of each distinct photo; checks that its copies agree and that it is
/// the single-process reference's top class, when there is a reference.
fn photo_labels(
    job: &Job,
    results: &[Outcome],
    reference: Option<&BTreeMap<String, u64>>,
    progress: &mut Progress,
) -> Result<(), String> {
    let mut by_photo: BTreeMap<&str, Vec<&Outcome>> = BTreeMap::new();
    for r in results {
        let file = r.name.rsplit('/').next().unwrap_or(&r.name);
        by_photo
            .entry(inputs::original_name(file))
            .or_default()
            .push(r);
    }
    let mut block = format!("{}'s top label per photo:\n", job.model);
    let mut problems = Vec::new();
    let mut matched = 0;
    for (photo, copies) in &by_photo {
        let classes: BTreeSet<Option<u64>> = copies.iter().map(|r| r.class_id).collect();
        if classes.len() != 1 {
            problems.push(format!("the copies of {photo} disagree: {classes:?}"));
        }
        let first = copies[0];
        let class = first.class_id;
        let expected = reference.and_then(|r| r.get(*photo)).copied();
        let verdict = match (expected, class) {
            (Some(e), Some(c)) if e == c => {
                matched += 1;
                "  = single-process reference"
            }
            (Some(e), _) => {
                problems.push(format!("{photo}: class {class:?}, the reference says {e}"));
                "  != single-process reference"
            }
            (None, _) => "",
        };
        block.push_str(&format!(
            "  {photo:<24} {:<20} class {:>4} p={:.3} ({} copies){verdict}\n",
            first.label.as_deref().unwrap_or("?"),
            class.map_or_else(|| "?".to_owned(), |c| c.to_string()),
            first.probability.unwrap_or(f64::NAN),
            copies.len()
        ));
    }
    show_indented(&block);
    if let Some(reference) = reference {
        progress.say(&format!(
            "{matched}/{} photos have the single-process reference's top class (all copies \
             of each photo agree: {})",
            by_photo.len(),
            if problems.iter().any(|p| p.contains("disagree")) {
                "no"
            } else {
                "yes"
            }
        ));
        debug_assert!(matched <= reference.len().max(by_photo.len()));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "job-{} ({}): {}",
            job.id,
            job.model,
            problems.join("; ")
        ))
    }
}

/// Where the results are: the result file of the first input and its replicas.
async fn print_result_files(
    exe: &ClientCmd,
    entry: SocketAddr,
    job: &Job,
    results: &[Outcome],
    progress: &mut Progress,
) {
    let Some(first) = results.iter().find_map(|r| r.file.clone()) else {
        progress.say(&format!(
            "job-{}'s results are in the replicated log: `idunno-node client --node {entry} c4 \
             {}`",
            job.id, job.id
        ));
        return;
    };
    let dir = first.rsplit_once('/').map_or("", |(d, _)| d);
    let files = client_json(
        exe,
        entry,
        &args(&["list", &format!("{dir}/")]),
        QUICK_TIMEOUT,
    )
    .await
    .ok()
    .and_then(|names| names.as_array().map(Vec::len));
    progress.say(&format!(
        "job-{}'s results are files in the file system: {dir}/ ({} files, one per batch; \
         `c4 {}` reads them); ls {first}:",
        job.id,
        files.map_or_else(|| "?".to_owned(), |n| n.to_string()),
        job.id
    ));
    match client_text(exe, entry, &args(&["ls", &first]), QUICK_TIMEOUT).await {
        Ok(text) => show_indented(&text),
        Err(DemoError(e)) => show_indented(&format!("(ls failed: {e})")),
    }
}

/// Prints C1 (rates), C2 (processing times) of each job and C5 (workers).
async fn statistics(
    exe: &ClientCmd,
    entry: SocketAddr,
    jobs: &[Job],
    killed: &BTreeSet<NodeId>,
    progress: &mut Progress,
) -> Result<(), DemoError> {
    progress.say("C1: query rate (last 10 s) and queries processed per job");
    show_indented(&client_text(exe, entry, &args(&["c1"]), QUICK_TIMEOUT).await?);
    for job in jobs {
        progress.say(&format!(
            "C2 job-{} ({}): processing time per query",
            job.id, job.model
        ));
        let id = job.id.to_string();
        show_indented(&client_text(exe, entry, &args(&["c2", &id]), QUICK_TIMEOUT).await?);
    }
    progress.say(&format!(
        "C5: the workers of each job (killed: {})",
        if killed.is_empty() {
            "none".to_owned()
        } else {
            ids(killed)
        }
    ));
    show_indented(&client_text(exe, entry, &args(&["c5"]), QUICK_TIMEOUT).await?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::PathBuf;

    fn job(names: &[&str]) -> Job {
        Job {
            what: "digits",
            model: DIGITS_MODEL.to_owned(),
            id: 1,
            names: names.iter().map(|n| (*n).to_owned()).collect(),
        }
    }

    fn outcome(name: &str, class: u64) -> Outcome {
        Outcome {
            name: name.to_owned(),
            error: None,
            class_id: Some(class),
            label: Some(class.to_string()),
            probability: Some(0.9),
            file: None,
        }
    }

    #[test]
    fn exactly_one_result_per_input_and_none_failed() {
        let j = job(&["inputs/digits/0000.txt", "inputs/digits/0001.txt"]);
        let a = outcome("inputs/digits/0000.txt", 1);
        let b = outcome("inputs/digits/0001.txt", 2);
        assert_eq!(check_results(&j, &[a.clone(), b.clone()]), Ok(()));
        assert!(
            check_results(&j, std::slice::from_ref(&a)).is_err(),
            "missing"
        );
        assert!(
            check_results(&j, &[a.clone(), b.clone(), a.clone()]).is_err(),
            "twice"
        );
        let stray = outcome("inputs/digits/9999.txt", 3);
        assert!(
            check_results(&j, &[a.clone(), b.clone(), stray]).is_err(),
            "stray"
        );
        let failed = Outcome {
            error: Some("undecodable".into()),
            ..b
        };
        assert!(check_results(&j, &[a, failed]).is_err(), "failed");
    }

    #[test]
    fn both_c4_shapes_parse() {
        let names = vec!["inputs/photos/00-coffee.png".to_owned(), "x".to_owned()];
        let model = json!({"index": 0, "input": "inputs/photos/00-coffee.png",
            "name": "inputs/photos/00-coffee.png", "status": "done", "worker": "w",
            "result": "results/job-2/lease-7.jsonl", "class_id": 967, "label": "espresso",
            "probability": 0.95, "top5": [967, 968], "error": null});
        let o = parse_outcome(&model, &names).expect("parses");
        assert_eq!(o.name, "inputs/photos/00-coffee.png");
        assert_eq!(o.class_id, Some(967));
        assert_eq!(o.label.as_deref(), Some("espresso"));
        assert_eq!(o.file.as_deref(), Some("results/job-2/lease-7.jsonl"));
        assert_eq!(o.error, None);
        let pending = json!({"index": 1, "input": null, "name": null, "status": "pending"});
        let o = parse_outcome(&pending, &names).expect("named by index");
        assert_eq!(o.name, "x");
        assert!(o.error.is_some());
        let failed = json!({"index": 1, "input": "x", "name": "x", "status": "failed",
            "error": "undecodable"});
        assert_eq!(
            parse_outcome(&failed, &names)
                .expect("parses")
                .error
                .as_deref(),
            Some("undecodable")
        );
        let older = json!({"input": 3, "name": "inputs/digits/0003.txt",
            "result": "inputs/digits/0003.txt", "worker": "127.0.0.2:1#1"});
        let o = parse_outcome(&older, &names).expect("parses");
        assert_eq!(o.name, "inputs/digits/0003.txt");
        assert_eq!((o.error, o.file), (None, None));
        assert_eq!(parse_outcome(&json!({"input": 5}), &names), None);
    }

    #[test]
    fn accuracy_compares_predictions_with_the_file_labels() {
        let labels = BTreeMap::from([("0000.txt".to_owned(), 1), ("0001.txt".to_owned(), 2)]);
        let results = [
            outcome("inputs/digits/0000.txt", 1),
            outcome("inputs/digits/0001.txt", 7),
        ];
        assert_eq!(digits_accuracy(&results, &labels), (1, 2));
    }

    #[test]
    fn the_upload_prefix_is_inputs_and_the_directory_name() {
        assert_eq!(dfs_prefix(&PathBuf::from("/tmp/x/digits")), "inputs/digits");
    }
}
