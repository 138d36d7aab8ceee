//! `sched-throughput`: the scheduler's end-to-end throughput with the no-op model over real
//! `idunno-node` processes, beside Ray's no-op task throughput in the same run.
//!
//! Starts 3 voters (fsync on: the store always fsyncs; no worker on them) and W worker nodes
//! (non-voting members, `--worker-lanes L`) on 127.0.0.64.., each with its own data dir, with
//! a fresh cluster key, as a [`LocalCluster`], using the `idunno-node` binary next to this
//! executable (build the runtime's binaries first). For
//! each batch size it submits a `noop` job of N inputs (in chunks, through a worker node) and
//! polls until it finished, then reads the replicated timestamps: every batch was leased (one
//! committed `Lease`), run, and completed (one committed `Complete`) between the job's first
//! lease and its finish. Then, with the cluster stopped, it runs
//! `scripts/ray_noop_throughput.py` (N no-op Ray tasks, `ray.init(num_cpus=2)`, submitted then
//! gathered) with `--python` and prints one markdown table with both.
//!
//! ```sh
//! cargo build --release -p idunno-runtime --bins
//! python3 -m venv /tmp/rayvenv && /tmp/rayvenv/bin/pip install ray
//! target/release/sched-throughput --python /tmp/rayvenv/bin/python
//! ```
//!
//! Must never: leave a child running (the [`LocalCluster`]'s guard kills and reaps on drop) or
//! its temp dir behind, or bind outside 127.0.0.0/8.

use idunno_runtime::bench::cluster::LocalCluster;
use idunno_runtime::bench::{BenchError, fail};
use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use idunno_core::scheduler::api::{JobSummary, SchedAnswer, SchedQuery};
use idunno_core::scheduler::{JobSpec, JobStatus};
use idunno_runtime::identity::unix_time_ms;
use idunno_runtime::jobs::client::{SchedClient, submit};
use idunno_runtime::node::block_on;

/// First node's address is 127.0.0.FIRST_HOST (the tests use .2-.59 and .70-.75).
const FIRST_HOST: usize = 64;
/// How long the cluster may take to elect a leader.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Give-up time for one job.
const JOB_TIMEOUT: Duration = Duration::from_secs(600);
/// Pause between two progress polls.
const POLL_EVERY: Duration = Duration::from_millis(20);
/// The Ray baseline script, relative to the workspace root.
const RAY_SCRIPT: &str = "scripts/ray_noop_throughput.py";

/// Scheduling throughput with the no-op model, beside Ray.
#[derive(Debug, Parser)]
#[command(name = "sched-throughput")]
struct Args {
    /// Inputs of each job (and Ray tasks).
    #[arg(long, default_value_t = 10_000)]
    inputs: usize,
    /// Batch sizes, one job (and table row) each.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1u32, 16])]
    batch: Vec<u32>,
    /// Worker nodes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=8))]
    workers: u8,
    /// Batches each worker runs at once (1..=4).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=4))]
    lanes: u8,
    /// Python with Ray installed; the Ray row is skipped (and says why) if it fails.
    #[arg(long, default_value = "python3")]
    python: String,
    /// The Ray script (default: scripts/ray_noop_throughput.py of this workspace).
    #[arg(long)]
    ray_script: Option<PathBuf>,
}

fn progress(line: &str) {
    eprintln!("sched-throughput: {line}");
}

/// One job's measurement.
#[derive(Debug)]
struct Row {
    batch: u32,
    inputs: usize,
    /// Submission start to the client seeing the job finished (includes the submission).
    wall: Duration,
    /// First lease to finish, replicated clock.
    busy: Duration,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let root = std::env::temp_dir().join(format!(
        "idunno-sched-throughput-{}-{}",
        std::process::id(),
        unix_time_ms()
    ));
    let outcome = block_on(async {
        let rows = {
            let mut cluster = LocalCluster::new(
                root.clone(),
                FIRST_HOST,
                VOTERS,
                usize::from(args.workers),
                args.lanes,
            )?;
            cluster.env(
                "RUST_LOG",
                &std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            );
            let rows = run_jobs(&args, &mut cluster).await;
            drop(cluster);
            // The children are killed and reaped; their data and logs go too.
            let _ = fs::remove_dir_all(&root);
            rows?
        };
        let ray = ray(&args);
        Ok::<_, BenchError>(report(&args, &rows, &ray))
    });
    match outcome {
        Ok(Ok(report)) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Ok(Err(BenchError(message))) => {
            eprintln!("sched-throughput FAILED: {message}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("sched-throughput FAILED: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_jobs(args: &Args, cluster: &mut LocalCluster) -> Result<Vec<Row>, BenchError> {
    progress(&format!(
        "starting 3 voters and {} workers ({} lanes each) from {} (data in {})",
        args.workers,
        args.lanes,
        cluster.addrs[0],
        cluster.nodes.root.display()
    ));
    cluster.start_all().await?;
    let entry = cluster.addrs[VOTERS];
    cluster.wait_leader(entry, None, SETTLE_TIMEOUT).await?;
    let client = SchedClient::new(entry, Duration::from_secs(10));
    let mut rows = Vec::new();
    for (k, &batch) in args.batch.iter().enumerate() {
        let spec = JobSpec {
            model: "noop".into(),
            inputs: (0..args.inputs).map(|i| format!("in-{i}")).collect(),
            batch_size: batch,
            lease_millis: 5000,
        };
        progress(&format!("job {k}: {} inputs, batch {batch}", args.inputs));
        let started = Instant::now();
        let job = submit(&client, spec, 7_000 + k as u64).await?;
        let summary = loop {
            if let SchedAnswer::Jobs(jobs) = client.query(SchedQuery::Jobs).await? {
                let mine: Option<JobSummary> = jobs.into_iter().find(|j| j.job == job);
                match mine {
                    Some(j) if j.status == JobStatus::Finished => break j,
                    Some(j) if j.status == JobStatus::Cancelled => return fail("job cancelled"),
                    Some(_) => {}
                    None => return fail(format!("{job} vanished")),
                }
            }
            if started.elapsed() > JOB_TIMEOUT {
                return fail(format!("{job} did not finish in time"));
            }
            tokio::time::sleep(POLL_EVERY).await;
        };
        let wall = started.elapsed();
        let (Some(first), Some(end)) = (summary.first_lease_at, summary.finished_at) else {
            return fail("a finished job without timestamps");
        };
        if summary.done as usize != args.inputs || summary.failed != 0 {
            return fail(format!("{job}: {summary:?}"));
        }
        let busy = end.saturating_duration_since(first);
        progress(&format!(
            "job {k}: wall {wall:?}, first lease -> finish {busy:?}"
        ));
        rows.push(Row {
            batch,
            inputs: args.inputs,
            wall,
            busy,
        });
    }
    Ok(rows)
}

/// Ray's measurement: (tasks, seconds, version) or why there is none.
fn ray(args: &Args) -> Result<(u64, f64, String), String> {
    let script = args.ray_script.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(RAY_SCRIPT)
    });
    progress(&format!(
        "running Ray: {} {}",
        args.python,
        script.display()
    ));
    let out = Command::new(&args.python)
        .arg(&script)
        .arg(args.inputs.to_string())
        .arg("2")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", args.python))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.starts_with('{'));
    let Some(line) = line.filter(|_| out.status.success()) else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        return Err(format!("Ray failed ({}): {}", out.status, tail.join(" / ")));
    };
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    Ok((
        v["tasks"].as_u64().unwrap_or(0),
        v["seconds"].as_f64().unwrap_or(0.0),
        v["ray"].as_str().unwrap_or("?").to_owned(),
    ))
}

fn report(args: &Args, rows: &[Row], ray: &Result<(u64, f64, String), String>) -> String {
    let mut out = String::new();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        out,
        "\nScheduling throughput, no-op model, {} inputs; 3 voters (fsync on) + {} worker \
         nodes x {} lanes, all on one machine ({cores} cores), {} build.\n",
        args.inputs,
        args.workers,
        args.lanes,
        if cfg!(debug_assertions) {
            "dev (debug assertions on)"
        } else {
            "release"
        }
    );
    let _ = writeln!(
        out,
        "| system | batch | batches leased+completed / s | queries / s | first lease -> finish (s) | submit -> seen finished (s) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for r in rows {
        let batches = r.inputs.div_ceil(r.batch as usize) as f64;
        let busy = r.busy.as_secs_f64().max(1e-9);
        let _ = writeln!(
            out,
            "| idunno | {} | {:.0} | {:.0} (end to end {:.0}) | {:.2} | {:.2} |",
            r.batch,
            batches / busy,
            r.inputs as f64 / busy,
            r.inputs as f64 / r.wall.as_secs_f64().max(1e-9),
            busy,
            r.wall.as_secs_f64()
        );
    }
    match ray {
        Ok((tasks, seconds, version)) => {
            let _ = writeln!(
                out,
                "| Ray {version} (num_cpus=2) | 1 task | {:.0} | {:.0} | - | {:.2} |",
                *tasks as f64 / seconds,
                *tasks as f64 / seconds,
                seconds
            );
            if let Some(best) = rows.first() {
                let ours = best.inputs as f64 / best.wall.as_secs_f64().max(1e-9);
                let _ = writeln!(
                    out,
                    "\nidunno batch {} end to end vs Ray: {:.2}x (target >= 2x)",
                    best.batch,
                    ours / (*tasks as f64 / seconds)
                );
            }
        }
        Err(why) => {
            let _ = writeln!(out, "| Ray | - | not measured: {why} | | | |");
        }
    }
    let _ = writeln!(
        out,
        "\nCommand: `sched-throughput --inputs {} --batch {} --workers {} --lanes {} --python {}`",
        args.inputs,
        args.batch
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        args.workers,
        args.lanes,
        args.python
    );
    out
}

const VOTERS: usize = 3;
