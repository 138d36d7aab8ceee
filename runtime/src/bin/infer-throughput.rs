//! `infer-throughput`: images/s of efficientnet-lite0 through a local cluster with W workers
//! against one `idunno-node predict` process using every core, on the same photos, in the same
//! run (issue #6: the cluster should reach >= 95% of the single process).
//!
//! Inputs: the bundled photos (`models/testdata`, or `--photos DIR`), copied `--copies` times.
//!
//! - **predict**: `idunno-node predict efficientnet-lite0 <every photo> --json` as one child
//!   process (rayon uses every core; the inputs of each batch of 8 decode in parallel), timed
//!   from spawn to exit, `--reps` times; also a one-photo run, whose time (start-up, loading the
//!   weights, one image) gives the steady rate `(N - 1) / (T(N) - T(1))`.
//! - **cluster**: 1 Raft voter (no worker) and W worker nodes (`--worker-lanes L`, each with
//!   `RAYON_NUM_THREADS=T`: one core per worker on a W-core machine), real `idunno-node`
//!   processes on loopback ([`LocalCluster`]). `train efficientnet-lite0` stores the pretrained
//!   weights, `upload` stores the photos, one warm-up job loads the model on every worker, then
//!   `--reps` jobs `inference efficientnet-lite0 inputs/photos --batch B` run one after the
//!   other, each timed from the client's `inference` call to the job finished (end to end), and
//!   from its first lease to its end on the replicated clock (steady). Every job must end with
//!   every input done and none failed.
//!
//! Also the CPU time (user + system, from /proc) per image: of the predict runs, and of each
//! node during the timed jobs, so a gap shows whether it is overhead or idle cores.
//!
//! Prints a markdown table on stdout, progress on stderr.
//!
//! ```sh
//! cargo build --release -p idunno-runtime --bins
//! target/release/infer-throughput --copies 128 --reps 3
//! ```
//!
//! Must never: leave a child running (the cluster guard; a predict child past its deadline is
//! killed), bind outside 127.0.0.0/8, or report a run whose results are incomplete.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use idunno_core::scheduler::JobStatus;
use idunno_core::scheduler::api::{JobSummary, SchedAnswer, SchedQuery};
use idunno_runtime::bench::cluster::LocalCluster;
use idunno_runtime::bench::{BenchError, fail, load_average, node_exe};
use idunno_runtime::demo::client::{ClientCmd, client_json};
use idunno_runtime::demo::inputs::{copy_photos, default_photos_dir};
use idunno_runtime::identity::unix_time_ms;
use idunno_runtime::jobs::client::SchedClient;
use idunno_runtime::node::block_on;

/// The model measured.
const MODEL: &str = "efficientnet-lite0";
/// Node `i` binds 127.0.0.(FIRST_HOST + i) (jobs-bench uses .100 and up, sched-throughput .64-.74).
const FIRST_HOST: usize = 80;
/// Deadline of one client request.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of training, an upload, or one job.
const STEP_TIMEOUT: Duration = Duration::from_secs(600);
/// Pause between two polls of a job (each is a read through the Raft leader, which shares the
/// cores with the workers; the steady rate uses the replicated timestamps, not the polls).
const POLL_EVERY: Duration = Duration::from_millis(50);
/// How long the nodes' CPU is sampled with no job running.
const IDLE_WINDOW: Duration = Duration::from_secs(3);
/// The file-system prefix of the photos.
const PREFIX: &str = "inputs/photos";

/// Cluster images/s against one local process.
#[derive(Debug, Parser)]
#[command(name = "infer-throughput")]
struct Args {
    /// Copies of each photo (6 bundled photos: 128 copies make 768 inputs).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=99))]
    copies: u16,
    /// Directory of the photos (PNG, JPEG); the bundled ones by default.
    #[arg(long)]
    photos: Option<PathBuf>,
    /// Worker nodes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=16))]
    workers: u8,
    /// Batches each worker runs at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=4))]
    lanes: u8,
    /// Threads of each worker's rayon pool (`RAYON_NUM_THREADS`; 0: every core).
    #[arg(long, default_value_t = 1)]
    worker_threads: u16,
    /// Threads of the predict process's rayon pool (`RAYON_NUM_THREADS`; 0: every core it may
    /// run on). On a machine with more cores than workers, set it to workers x worker threads
    /// so both sides compute on the same number of cores.
    #[arg(long, default_value_t = 0)]
    predict_threads: u16,
    /// Batch size of the jobs (predict always runs batches of 8).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    batch: u32,
    /// Timed runs of each side.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Keep the node logs (their directory is printed) even when the bench passes.
    #[arg(long)]
    keep_logs: bool,
}

fn progress(line: &str) {
    eprintln!("infer-throughput: {line}");
}

/// Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`: 100 on Linux).
const CLOCK_TICKS: f64 = 100.0;

/// CPU seconds (user + system) of process `pid` from /proc/PID/stat, with the given field
/// offsets after the command name (0: utime; 2: cutime, the reaped children's).
fn proc_cpu(pid: &str, first_field: usize) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime is field 14, cutime field 16.
    let at = |field: usize| fields.get(field - 3)?.parse::<f64>().ok();
    let user = at(14 + first_field)?;
    let system = at(15 + first_field)?;
    Some((user + system) / CLOCK_TICKS)
}

/// CPU seconds of this process's reaped children so far.
fn children_cpu() -> f64 {
    proc_cpu("self", 2).unwrap_or(f64::NAN)
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n => sorted[(n - 1) / 2],
    }
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// Runs `exe predict MODEL files.. --json` to completion; its wall time. Fails unless it
/// printed one result per file and no error.
fn time_predict(
    exe: &Path,
    files: &[PathBuf],
    out_file: &Path,
    threads: u16,
) -> Result<Duration, BenchError> {
    let out = std::fs::File::create(out_file)?;
    let t0 = Instant::now();
    let mut command = Command::new(exe);
    command.arg("predict").arg(MODEL).args(files).arg("--json");
    match threads {
        0 => command.env_remove("RAYON_NUM_THREADS"),
        n => command.env("RAYON_NUM_THREADS", n.to_string()),
    };
    let mut child = command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::piped())
        .spawn()?;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if t0.elapsed() > STEP_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return fail("predict did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let took = t0.elapsed();
    if !status.success() {
        return fail(format!("predict exited with {status}"));
    }
    let text = std::fs::read_to_string(out_file)?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let errors = lines.iter().filter(|l| l.contains("\"error\"")).count();
    if lines.len() != files.len() || errors > 0 {
        return fail(format!(
            "predict printed {} lines ({errors} errors) for {} files",
            lines.len(),
            files.len()
        ));
    }
    Ok(took)
}

/// The predict side: (times of the full runs, time of the one-photo run, CPU seconds of all
/// the full runs).
fn predict_side(
    exe: &Path,
    files: &[PathBuf],
    root: &Path,
    reps: usize,
    threads: u16,
) -> Result<(Vec<f64>, f64, f64), BenchError> {
    let out_file = root.join("predict.jsonl");
    let one = files.first().cloned().map(|f| vec![f]).unwrap_or_default();
    // Warm the page cache and the executable.
    time_predict(exe, &one, &out_file, threads)?;
    let single = time_predict(exe, &one, &out_file, threads)?.as_secs_f64();
    let mut full = Vec::new();
    let cpu_before = children_cpu();
    for rep in 0..reps {
        let took = time_predict(exe, files, &out_file, threads)?.as_secs_f64();
        progress(&format!(
            "predict run {}: {} photos in {took:.2} s ({:.1} images/s; load {})",
            rep + 1,
            files.len(),
            files.len() as f64 / took,
            load_average()
        ));
        full.push(took);
    }
    Ok((full, single, children_cpu() - cpu_before))
}

/// One cluster job's timings: (end to end, first lease to finished) in seconds.
struct JobRun {
    end_to_end: f64,
    steady: f64,
}

struct ClusterSide {
    cluster: LocalCluster,
    client_cmd: ClientCmd,
    entry: std::net::SocketAddr,
    sched: SchedClient,
}

impl ClusterSide {
    async fn start(args: &Args, root: PathBuf) -> Result<Self, BenchError> {
        let mut cluster =
            LocalCluster::new(root, FIRST_HOST, 1, usize::from(args.workers), args.lanes)?;
        // The voter runs no model, so the variable only matters on the workers.
        cluster.env("RAYON_NUM_THREADS", &args.worker_threads.to_string());
        let entry = cluster.addrs[1];
        progress(&format!(
            "starting 1 voter and {} workers x {} lanes, {} rayon thread(s) each (logs in {})",
            args.workers,
            args.lanes,
            args.worker_threads,
            cluster.nodes.root.display()
        ));
        cluster.start_all().await?;
        cluster.wait_leader(entry, None, STEP_TIMEOUT).await?;
        let client_cmd = ClientCmd {
            exe: cluster.nodes.exe().to_owned(),
            key_file: cluster.nodes.key_file(),
        };
        Ok(ClusterSide {
            cluster,
            client_cmd,
            entry,
            sched: SchedClient::new(entry, CALL_TIMEOUT),
        })
    }

    async fn client(&self, words: &[&str]) -> Result<serde_json::Value, BenchError> {
        let words: Vec<String> = words.iter().map(|w| (*w).to_owned()).collect();
        client_json(&self.client_cmd, self.entry, &words, STEP_TIMEOUT)
            .await
            .map_err(|e| BenchError(e.0))
    }

    async fn summary(&self, job: u64) -> Result<JobSummary, BenchError> {
        match self.sched.query(SchedQuery::Jobs).await? {
            SchedAnswer::Jobs(all) => match all.into_iter().find(|j| j.job.0 == job) {
                Some(summary) => Ok(summary),
                None => fail(format!("jobs does not list job-{job}")),
            },
            other => fail(format!("jobs: unexpected answer {other:?}")),
        }
    }

    /// Runs one job over every photo; its timings once finished with every input done.
    async fn run_job(&self, batch: u32, inputs: usize) -> Result<JobRun, BenchError> {
        let t0 = Instant::now();
        let batch = batch.to_string();
        let answer = self
            .client(&["inference", MODEL, PREFIX, "--batch", &batch])
            .await?;
        let Some(job) = answer["job"].as_u64() else {
            return fail(format!("inference: no job id in {answer}"));
        };
        loop {
            if t0.elapsed() > STEP_TIMEOUT {
                return fail(format!("job-{job} did not finish in time"));
            }
            let summary = match self.summary(job).await {
                Ok(summary) => summary,
                Err(BenchError(e)) => {
                    progress(&format!("polling job-{job}: {e}"));
                    tokio::time::sleep(POLL_EVERY).await;
                    continue;
                }
            };
            if summary.status != JobStatus::Running {
                let end_to_end = t0.elapsed().as_secs_f64();
                let expected = u32::try_from(inputs).unwrap_or(u32::MAX);
                if summary.status != JobStatus::Finished
                    || summary.inputs != expected
                    || summary.done != expected
                    || summary.failed != 0
                {
                    return fail(format!(
                        "job-{job} ended {:?} with {} of {} inputs done, {} failed (expected {inputs})",
                        summary.status, summary.done, summary.inputs, summary.failed
                    ));
                }
                let (Some(first), Some(end)) = (summary.first_lease_at, summary.finished_at) else {
                    return fail(format!("job-{job} finished without its timestamps"));
                };
                let steady = end.saturating_duration_since(first).as_secs_f64();
                return Ok(JobRun { end_to_end, steady });
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

/// One node's CPU use.
struct NodeCpu {
    who: String,
    /// CPU seconds during the timed jobs.
    busy: f64,
    /// Cores used while no job ran (CPU seconds per second).
    idle_share: f64,
}

struct Measured {
    images: usize,
    predict_full: Vec<f64>,
    predict_single: f64,
    /// CPU seconds of all the full predict runs.
    predict_cpu: f64,
    /// Each node's CPU, voter first.
    cluster_cpu: Vec<NodeCpu>,
    warm_up: JobRun,
    jobs: Vec<JobRun>,
    load_before: String,
    load_after: String,
}

async fn cluster_side(
    args: &Args,
    root: &Path,
    photos_dir: &Path,
    images: usize,
) -> Result<(JobRun, Vec<JobRun>, Vec<NodeCpu>), BenchError> {
    let mut side = ClusterSide::start(args, root.join("cluster")).await?;
    progress("storing the pretrained weights (train efficientnet-lite0)");
    side.client(&["train", MODEL]).await?;
    let dir = photos_dir.display().to_string();
    let t0 = Instant::now();
    let uploaded = side.client(&["upload", &dir, "--prefix", PREFIX]).await?;
    if uploaded["files"].as_u64() != u64::try_from(images).ok() {
        return fail(format!("upload stored {uploaded}, expected {images} files"));
    }
    progress(&format!(
        "uploaded {images} photos in {:.2} s",
        t0.elapsed().as_secs_f64()
    ));
    let warm_up = side.run_job(args.batch, images).await?;
    progress(&format!(
        "warm-up job: {images} photos in {:.2} s ({:.1} images/s)",
        warm_up.end_to_end,
        images as f64 / warm_up.end_to_end
    ));
    let nodes = 1 + usize::from(args.workers);
    let pids: Vec<String> = (0..nodes)
        .map(|i| {
            side.cluster
                .nodes
                .pid(i)
                .map_or_else(String::new, |p| p.to_string())
        })
        .collect();
    let cpu_now = |pids: &[String]| -> Vec<f64> {
        pids.iter()
            .map(|p| proc_cpu(p, 0).unwrap_or(f64::NAN))
            .collect()
    };
    // The nodes' own cost with no job: an idle window before the timed jobs.
    let idle_before = cpu_now(&pids);
    tokio::time::sleep(IDLE_WINDOW).await;
    let idle_after = cpu_now(&pids);
    let idle: Vec<f64> = idle_after
        .iter()
        .zip(&idle_before)
        .map(|(a, b)| (a - b) / IDLE_WINDOW.as_secs_f64())
        .collect();
    let cpu_before = cpu_now(&pids);
    let mut jobs = Vec::new();
    for rep in 0..args.reps {
        let run = side.run_job(args.batch, images).await?;
        progress(&format!(
            "cluster job {}: {images} photos in {:.2} s end to end ({:.1} images/s), {:.2} s \
             first lease to end ({:.1} images/s; load {})",
            rep + 1,
            run.end_to_end,
            images as f64 / run.end_to_end,
            run.steady,
            images as f64 / run.steady,
            load_average()
        ));
        jobs.push(run);
    }
    let cpu_after = cpu_now(&pids);
    let cpu: Vec<NodeCpu> = (0..nodes)
        .map(|i| NodeCpu {
            who: if i == 0 {
                "voter".to_owned()
            } else {
                format!("worker {i}")
            },
            busy: cpu_after[i] - cpu_before[i],
            idle_share: idle[i],
        })
        .collect();
    side.cluster
        .nodes
        .check_alive()
        .map_err(|e| BenchError(e.0))?;
    Ok((warm_up, jobs, cpu))
}

fn run(args: &Args, root: &Path) -> Result<Measured, BenchError> {
    let exe = node_exe()?;
    let photos_from = args.photos.clone().unwrap_or_else(default_photos_dir);
    let photos_dir = root.join("photos");
    let names = copy_photos(&photos_from, &photos_dir, args.copies).map_err(|e| BenchError(e.0))?;
    let files: Vec<PathBuf> = names.iter().map(|n| photos_dir.join(n)).collect();
    let images = files.len();
    let load_before = load_average();
    progress(&format!(
        "{images} photos; predict first ({} cores; load {load_before})",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    let (predict_full, predict_single, predict_cpu) =
        predict_side(&exe, &files, root, args.reps, args.predict_threads)?;
    let (warm_up, jobs, cluster_cpu) = block_on(cluster_side(args, root, &photos_dir, images))??;
    Ok(Measured {
        images,
        predict_full,
        predict_single,
        predict_cpu,
        cluster_cpu,
        warm_up,
        jobs,
        load_before,
        load_after: load_average(),
    })
}

fn report(args: &Args, m: &Measured) -> String {
    let n = m.images as f64;
    let rate = |t: f64| n / t;
    let predict_rates: Vec<f64> = m.predict_full.iter().map(|&t| rate(t)).collect();
    let predict_steady: Vec<f64> = m
        .predict_full
        .iter()
        .map(|&t| (n - 1.0) / (t - m.predict_single).max(f64::EPSILON))
        .collect();
    let cluster_rates: Vec<f64> = m.jobs.iter().map(|j| rate(j.end_to_end)).collect();
    let cluster_steady: Vec<f64> = m.jobs.iter().map(|j| rate(j.steady)).collect();
    let row = |what: &str, rates: &[f64], base: f64| {
        let (lo, hi) = min_max(rates);
        let med = median(rates);
        format!(
            "| {what} | {} | {med:.1} | {lo:.1} | {hi:.1} | {:.1}% |\n",
            rates.len(),
            100.0 * med / base
        )
    };
    let base = median(&predict_rates);
    let base_steady = median(&predict_steady);
    let mut out = format!(
        "{} photos of efficientnet-lite0; cluster: 1 voter + {} workers x {} lane(s), {} rayon \
         thread(s) per worker, batch {}; predict: one process, {}, batches of 8; \
         {} cores online, load average {} before, {} after\n\n",
        m.images,
        args.workers,
        args.lanes,
        args.worker_threads,
        args.batch,
        match args.predict_threads {
            0 => "every core".to_owned(),
            n => format!("{n} rayon thread(s)"),
        },
        std::thread::available_parallelism().map_or(0, usize::from),
        m.load_before,
        m.load_after
    );
    out.push_str("| run | reps | median images/s | min | max | of predict (same kind) |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|\n");
    out.push_str(&row("predict process, spawn to exit", &predict_rates, base));
    out.push_str(&row(
        "predict, steady ((N-1) / (T(N) - T(1)))",
        &predict_steady,
        base_steady,
    ));
    out.push_str(&row(
        "cluster job, `inference` call to finished",
        &cluster_rates,
        base,
    ));
    out.push_str(&row(
        "cluster job, first lease to finished",
        &cluster_steady,
        base_steady,
    ));
    out.push_str(&format!(
        "\npredict of one photo (start-up, weights, one image): {:.2} s; cluster warm-up job \
         (loads the weights on each worker): {:.2} s\n",
        m.predict_single, m.warm_up.end_to_end
    ));
    // CPU per image: where the cluster spends more than the single process.
    let timed_images = n * m.jobs.len() as f64;
    let predict_images = n * m.predict_full.len() as f64;
    let per_image = |cpu: f64, images: f64| 1000.0 * cpu / images.max(1.0);
    let mut parts: Vec<String> = m
        .cluster_cpu
        .iter()
        .map(|c| format!("{} {:.2}", c.who, per_image(c.busy, timed_images)))
        .collect();
    let cluster_total: f64 = m.cluster_cpu.iter().map(|c| c.busy).sum();
    parts.push(format!(
        "all nodes {:.2}",
        per_image(cluster_total, timed_images)
    ));
    out.push_str(&format!(
        "CPU ms per image (user + system): predict {:.2}; cluster: {}\n",
        per_image(m.predict_cpu, predict_images),
        parts.join(", ")
    ));
    let idle: Vec<String> = m
        .cluster_cpu
        .iter()
        .map(|c| format!("{} {:.1}%", c.who, 100.0 * c.idle_share))
        .collect();
    out.push_str(&format!(
        "CPU of each node with no job ({} s before the timed jobs): {}\n",
        IDLE_WINDOW.as_secs(),
        idle.join(", ")
    ));
    out
}

fn main() -> ExitCode {
    let args = Args::parse();
    let root = std::env::temp_dir().join(format!(
        "idunno-infer-throughput-{}-{}",
        std::process::id(),
        unix_time_ms()
    ));
    match run(&args, &root) {
        Ok(measured) => {
            if args.keep_logs {
                eprintln!("node logs are kept in {}", root.display());
            } else {
                let _ = std::fs::remove_dir_all(&root);
            }
            print!("{}", report(&args, &measured));
            ExitCode::SUCCESS
        }
        Err(BenchError(message)) => {
            eprintln!("infer-throughput FAILED: {message}");
            eprintln!("node logs are kept in {}", root.display());
            ExitCode::FAILURE
        }
    }
}
