//! `jobs-bench`: the scheduler's latencies and fairness on real `idunno-node` processes on
//! loopback (the numbers issue #6 asks for beside the simulator's).
//!
//! Starts 3 Raft voters (no worker on them) and W worker nodes (non-voting members,
//! `--worker-lanes L`), authenticated with a fresh cluster key, as a
//! [`idunno_runtime::bench::cluster::LocalCluster`] (the demo's process guard, which kills and
//! reaps every child on every exit path), running the `idunno-node` binary next to this
//! executable. The jobs run
//! the no-op models (`noop`, and `noop:MS`, which costs MS ms per query and stamps each result
//! with the unix time its batch started). Then, `--reps` times each:
//!
//! - **new job -> first batch leased**: while a job keeps every worker busy, submit a small
//!   job; the time from the client's submit call to the job's replicated `first_lease_at`
//!   (both wall clocks of this machine), and from its replicated `submitted_at`.
//! - **fair-time band**: two jobs of different per-query cost run together; once both have
//!   been served for a full 10 s window, each second the band `(max - min) / mean` of their
//!   10 s query rates as the scheduler reports them (`JobSummary::rate_milli`), while both
//!   still have pending inputs (the simulator's definition, `sim/src/sched.rs`).
//! - **worker SIGKILL -> its inputs running elsewhere**: a job of as many 5 s batches as half
//!   the lanes (every input leased, spare lanes left); SIGKILL a worker holding some; the time
//!   until it holds none and every input is leased or done again. The job then finishes (so no
//!   lane is still busy with it) and a fresh worker replaces the dead one.
//! - **coordinator SIGKILL -> next batch**: a job of many 20 ms batches; SIGKILL the Raft leader;
//!   the time until the first batch that started running after the kill, from the results'
//!   stamps (a batch that started within [`OLD_GRANT_GRACE`] of the kill was granted by the old
//!   leader: no election ends before the 300 ms election timeout). The voter restarts with its
//!   data afterwards.
//!
//! Prints a markdown table (median and max per measure) on stdout, progress on stderr.
//!
//! ```sh
//! cargo build --release -p idunno-runtime --bins
//! target/release/jobs-bench --reps 5
//! ```
//!
//! Must never: leave a child running (the guard), bind outside 127.0.0.0/8, or report a
//! measurement that did not complete (a rep that times out fails the bench, saying which).

use idunno_runtime::bench::{BenchError, fail, load_average};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use idunno_core::scheduler::api::{JobSummary, SchedAnswer, SchedQuery};
use idunno_core::scheduler::{InputOutcome, JobId, JobSpec, SchedCommand, SchedResult};
use idunno_runtime::bench::cluster::LocalCluster;
use idunno_runtime::identity::unix_time_ms;
use idunno_runtime::jobs::client::{SchedClient, all_results, submit};
use idunno_runtime::jobs::noop::parse_timed_result;
use idunno_runtime::node::block_on;

/// The voters.
const VOTERS: usize = 3;
/// Node `i` binds 127.0.0.(FIRST_HOST + i) (the tests use .2-.59 and .70-.75, sched-throughput
/// .64-.74).
const FIRST_HOST: usize = 100;
/// Deadline of one client request.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline of one measurement or wait.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two polls of the jobs' state.
const POLL_EVERY: Duration = Duration::from_millis(5);
/// A batch that started within this long after the leader's kill was granted by the old
/// leader (the election timeout is 300..600 ms, so no new leader grants that early).
const OLD_GRANT_GRACE: Duration = Duration::from_millis(150);
/// Per-query cost of the jobs that keep the workers busy (ms).
const BUSY_MS: u64 = 20;
/// Per-query cost of the worker-kill job's batches (ms): longer than a failover.
const SLOW_MS: u64 = 5_000;

/// Scheduling latencies and fair-time on real processes.
#[derive(Debug, Parser)]
#[command(name = "jobs-bench")]
struct Args {
    /// Worker nodes (besides the 3 voters).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(2..=16))]
    workers: u8,
    /// Batches each worker runs at once.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=4))]
    lanes: u8,
    /// Repetitions of each kill and of the new-job measure.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Seconds of fair-time samples (after the first 10 s window).
    #[arg(long, default_value_t = 20)]
    fair_secs: u64,
    /// Per-query cost of the cheap fair-time job (ms).
    #[arg(long, default_value_t = 5)]
    cheap_ms: u64,
    /// Per-query cost of the expensive fair-time job (ms).
    #[arg(long, default_value_t = 50)]
    dear_ms: u64,
    /// Measures to run (comma-separated: new-job, fair, worker-kill, leader-kill).
    #[arg(long, value_delimiter = ',',
          default_values_t = vec!["new-job".to_owned(), "fair".to_owned(),
                                  "worker-kill".to_owned(), "leader-kill".to_owned()])]
    only: Vec<String>,
    /// Keep the node logs (their directory is printed) even when the bench passes.
    #[arg(long)]
    keep_logs: bool,
}

fn progress(line: &str) {
    eprintln!("jobs-bench: {line}");
}

fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// One measure's samples, in seconds (or as a share, for the band).
#[derive(Debug, Default)]
struct Samples {
    what: &'static str,
    target: &'static str,
    unit: Unit,
    values: Vec<f64>,
}

#[derive(Debug, Default, Clone, Copy)]
enum Unit {
    #[default]
    Seconds,
    Percent,
}

impl Samples {
    fn new(what: &'static str, target: &'static str, unit: Unit) -> Self {
        Samples {
            what,
            target,
            unit,
            values: Vec::new(),
        }
    }

    fn show(&self, v: f64) -> String {
        match self.unit {
            Unit::Seconds => format!("{v:.3} s"),
            Unit::Percent => format!("{:.1}%", v * 100.0),
        }
    }

    fn row(&self) -> String {
        let mut sorted = self.values.clone();
        sorted.sort_by(f64::total_cmp);
        let (median, max) = match sorted.len() {
            0 => ("-".to_owned(), "-".to_owned()),
            n => (self.show(sorted[(n - 1) / 2]), self.show(sorted[n - 1])),
        };
        let min = sorted.first().map_or("-".to_owned(), |&v| self.show(v));
        format!(
            "| {} | {} | {median} | {min} | {max} | {} |",
            self.what,
            sorted.len(),
            self.target
        )
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let root = std::env::temp_dir().join(format!(
        "idunno-jobs-bench-{}-{}",
        std::process::id(),
        unix_time_ms()
    ));
    let load_before = load_average();
    let outcome = block_on(async {
        let mut bench = Bench::start(&args, root.clone()).await?;
        let samples = bench.run(&args).await;
        drop(bench);
        samples
    });
    match outcome {
        Ok(Ok(samples)) => {
            if args.keep_logs {
                eprintln!("node logs are kept in {}", root.display());
            } else {
                let _ = std::fs::remove_dir_all(&root);
            }
            print!("{}", report(&args, &samples, &load_before));
            ExitCode::SUCCESS
        }
        Ok(Err(BenchError(message))) => {
            eprintln!("jobs-bench FAILED: {message}");
            eprintln!("node logs are kept in {}", root.display());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("jobs-bench FAILED: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn report(args: &Args, samples: &[Samples], load_before: &str) -> String {
    let mut out = String::new();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        out,
        "\nScheduling on real processes: 3 voters (fsync on, no worker) + {} worker nodes x {} \
         lanes on loopback, one machine ({cores} cores), {} build, load average {load_before} \
         before and {} after.\n",
        args.workers,
        args.lanes,
        if cfg!(debug_assertions) {
            "dev (debug assertions on)"
        } else {
            "release"
        },
        load_average()
    );
    let _ = writeln!(out, "| measure | samples | median | min | max | target |");
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for s in samples {
        let _ = writeln!(out, "{}", s.row());
    }
    let _ = writeln!(
        out,
        "\nCommand: `jobs-bench --workers {} --lanes {} --reps {} --fair-secs {} --cheap-ms {} \
         --dear-ms {}`",
        args.workers, args.lanes, args.reps, args.fair_secs, args.cheap_ms, args.dear_ms
    );
    out
}

/// The bench's cluster and what it knows about it.
struct Bench {
    cluster: LocalCluster,
    /// The worker node the bench asks through (never killed).
    entry: SocketAddr,
    client: SchedClient,
    next_request: u64,
}

impl Bench {
    async fn start(args: &Args, root: PathBuf) -> Result<Self, BenchError> {
        let cluster = LocalCluster::new(
            root,
            FIRST_HOST,
            VOTERS,
            usize::from(args.workers),
            args.lanes,
        )?;
        let entry = cluster.addrs[VOTERS];
        let mut bench = Bench {
            cluster,
            entry,
            client: SchedClient::new(entry, CALL_TIMEOUT),
            next_request: unix_time_ms(),
        };
        progress(&format!(
            "starting 3 voters and {} workers x {} lanes (logs in {})",
            args.workers,
            args.lanes,
            bench.cluster.nodes.root.display()
        ));
        bench.cluster.start_all().await?;
        bench.wait_leader(None).await?;
        // Let every worker find the leader before the first measure.
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(bench)
    }

    /// Polls until a leader other than `not` is known; its address.
    async fn wait_leader(&self, not: Option<SocketAddr>) -> Result<SocketAddr, BenchError> {
        self.cluster
            .wait_leader(self.entry, not, STEP_TIMEOUT)
            .await
    }

    fn request(&mut self) -> u64 {
        self.next_request += 1;
        self.next_request
    }

    /// Submits a job of `inputs` inputs named `<tag>-<i>` running `model`.
    async fn submit(
        &mut self,
        tag: &str,
        model: &str,
        inputs: usize,
        batch: u32,
    ) -> Result<JobId, BenchError> {
        let spec = JobSpec {
            model: model.to_owned(),
            inputs: (0..inputs).map(|i| format!("{tag}-{i}")).collect(),
            batch_size: batch,
            lease_millis: 5000,
        };
        let request = self.request();
        Ok(submit(&self.client, spec, request).await?)
    }

    async fn jobs(&self) -> Result<Vec<JobSummary>, BenchError> {
        match self.client.query(SchedQuery::Jobs).await? {
            SchedAnswer::Jobs(jobs) => Ok(jobs),
            other => fail(format!("jobs: unexpected answer {other:?}")),
        }
    }

    async fn job(&self, job: JobId) -> Result<JobSummary, BenchError> {
        self.jobs()
            .await?
            .into_iter()
            .find(|j| j.job == job)
            .ok_or_else(|| BenchError(format!("{job} is not listed")))
    }

    /// Polls `job` until `done(summary)`; the summary that satisfied it.
    async fn until(
        &self,
        job: JobId,
        what: &str,
        done: impl Fn(&JobSummary) -> bool,
    ) -> Result<JobSummary, BenchError> {
        let t0 = Instant::now();
        let mut last = String::from("not read yet");
        while t0.elapsed() < STEP_TIMEOUT {
            match self.job(job).await {
                Ok(j) if done(&j) => return Ok(j),
                Ok(j) => last = format!("{j:?}"),
                Err(BenchError(e)) => last = e,
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
        fail(format!(
            "{job}: {what} did not happen in time (last: {last})"
        ))
    }

    async fn cancel(&self, job: JobId) -> Result<(), BenchError> {
        let t0 = Instant::now();
        loop {
            match self.client.command(SchedCommand::Cancel { job }).await {
                Ok(SchedResult::Rejected(e)) => return fail(format!("cancel {job}: {e}")),
                Ok(_) => return Ok(()),
                Err(e) if t0.elapsed() > STEP_TIMEOUT => return fail(format!("cancel {job}: {e}")),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn run(&mut self, args: &Args) -> Result<Vec<Samples>, BenchError> {
        let mut out = Vec::new();
        let wants = |what: &str| args.only.iter().any(|o| o == what);
        if wants("new-job") {
            out.extend(self.new_job(args).await?);
        }
        if wants("fair") {
            out.push(self.fair(args).await?);
        }
        if wants("worker-kill") {
            out.extend(self.worker_kill(args).await?);
        }
        if wants("leader-kill") {
            out.extend(self.leader_kill(args).await?);
        }
        Ok(out)
    }

    async fn new_job(&mut self, args: &Args) -> Result<Vec<Samples>, BenchError> {
        let mut client_side = Samples::new(
            "new job while another runs: submit call -> first batch leased",
            "< 0.5 s (original 1.3 s)",
            Unit::Seconds,
        );
        let mut replicated = Samples::new(
            "new job: replicated submitted_at -> first_lease_at",
            "",
            Unit::Seconds,
        );
        let busy = self
            .submit("busy", &format!("noop:{BUSY_MS}"), 10_000, 1)
            .await?;
        self.until(busy, "running", |j| j.done >= 20).await?;
        for r in 0..args.reps {
            let t_submit = unix_micros();
            let job = self.submit(&format!("new{r}"), "noop", 8, 1).await?;
            let j = self
                .until(job, "a first lease", |j| j.first_lease_at.is_some())
                .await?;
            let Some(first) = j.first_lease_at else {
                return fail("no first lease");
            };
            let secs = |micros: u64| micros as f64 / 1e6;
            client_side
                .values
                .push(secs(first.as_micros().saturating_sub(t_submit)));
            replicated.values.push(secs(
                first.as_micros().saturating_sub(j.submitted_at.as_micros()),
            ));
            progress(&format!(
                "new job {r}: first lease {:.3} s after the submit call",
                secs(first.as_micros().saturating_sub(t_submit))
            ));
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        self.cancel(busy).await?;
        Ok(vec![client_side, replicated])
    }

    async fn fair(&mut self, args: &Args) -> Result<Samples, BenchError> {
        let mut band = Samples::new(
            "fair-time band (max-min)/mean of the 10 s query rates",
            "<= 5% (original 20%)",
            Unit::Percent,
        );
        let cheap = format!("noop:{}", args.cheap_ms);
        let dear = format!("noop:{}", args.dear_ms);
        progress(&format!(
            "fair-time: {cheap} and {dear} together, {} s of samples after a 10 s window",
            args.fair_secs
        ));
        let a = self.submit("cheap", &cheap, 10_000, 1).await?;
        let b = self.submit("dear", &dear, 10_000, 1).await?;
        let window = Duration::from_secs(10);
        let t0 = Instant::now();
        let mut next = Instant::now();
        while t0.elapsed() < window + Duration::from_secs(args.fair_secs + 5)
            && band.values.len() < usize::try_from(args.fair_secs).unwrap_or(usize::MAX)
        {
            tokio::time::sleep_until(next.into()).await;
            next += Duration::from_secs(1);
            let jobs = self.jobs().await?;
            let now = unix_micros();
            let both: Vec<&JobSummary> = jobs.iter().filter(|j| j.job == a || j.job == b).collect();
            let ready = both.len() == 2
                && both.iter().all(|j| {
                    j.inputs > j.done + j.leased
                        && j.first_lease_at.is_some_and(|t| {
                            now >= t.as_micros() + u64::try_from(window.as_micros()).unwrap_or(0)
                        })
                });
            if !ready {
                if both.iter().any(|j| j.inputs <= j.done + j.leased) {
                    progress("fair-time: a job ran out of inputs; stopping the samples");
                    break;
                }
                continue;
            }
            let rates: Vec<f64> = both.iter().map(|j| j.rate_milli as f64 / 1e3).collect();
            let max = rates.iter().copied().fold(f64::MIN, f64::max);
            let min = rates.iter().copied().fold(f64::MAX, f64::min);
            let mean = rates.iter().sum::<f64>() / rates.len() as f64;
            if mean > 0.0 {
                band.values.push((max - min) / mean);
                progress(&format!(
                    "fair-time: rates {:.1}/s and {:.1}/s, band {:.2}%",
                    rates[0],
                    rates[1],
                    (max - min) / mean * 100.0
                ));
            }
        }
        self.cancel(a).await?;
        self.cancel(b).await?;
        if band.values.is_empty() {
            return fail("fair-time: no sample (the jobs ran out of inputs too early)");
        }
        Ok(band)
    }

    async fn worker_kill(&mut self, args: &Args) -> Result<Vec<Samples>, BenchError> {
        let mut moved = Samples::new(
            "worker SIGKILL -> its inputs leased elsewhere",
            "<= 2 s (original 6.3 s)",
            Unit::Seconds,
        );
        let mut revoked = Samples::new(
            "worker SIGKILL -> its leases revoked (failure committed)",
            "",
            Unit::Seconds,
        );
        let lanes = usize::from(args.workers) * usize::from(args.lanes);
        let batches = (lanes / 2).max(1);
        for r in 0..args.reps {
            let job = self
                .submit(&format!("wk{r}"), &format!("noop:{SLOW_MS}"), batches, 1)
                .await?;
            let entry = self.entry;
            let j = self
                .until(job, "every input leased", |j| {
                    j.leased == j.inputs && j.workers_now.iter().any(|w| w.addr != entry)
                })
                .await?;
            let Some(victim) = j.workers_now.iter().copied().find(|w| w.addr != entry) else {
                return fail("no victim");
            };
            let Some(index) = self.cluster.nodes.index_of(victim.addr) else {
                return fail(format!("{victim} is not a bench node"));
            };
            let t_kill = Instant::now();
            self.cluster.kill(index)?;
            let mut revoked_at = None;
            let t0 = Instant::now();
            let moved_after = loop {
                if t0.elapsed() > STEP_TIMEOUT {
                    return fail(format!("{job}: {victim}'s inputs did not move in time"));
                }
                if let Ok(j) = self.job(job).await {
                    let held = j.workers_now.contains(&victim);
                    if !held && revoked_at.is_none() {
                        revoked_at = Some(t_kill.elapsed());
                    }
                    if !held && j.inputs == j.done + j.leased {
                        break t_kill.elapsed();
                    }
                }
                tokio::time::sleep(POLL_EVERY).await;
            };
            let revoked_after = revoked_at.unwrap_or(moved_after);
            progress(&format!(
                "worker kill {r}: {victim}'s leases revoked after {:.3} s, its inputs leased \
                 elsewhere after {:.3} s",
                revoked_after.as_secs_f64(),
                moved_after.as_secs_f64()
            ));
            moved.values.push(moved_after.as_secs_f64());
            revoked.values.push(revoked_after.as_secs_f64());
            // Not cancelled: a revoked batch keeps its lane busy until it ends, so the next
            // rep starts once every batch has run.
            self.until(job, "finished", |j| j.done == j.inputs).await?;
            // A fresh worker at a new address replaces the dead one.
            let index = self.cluster.add_address()?;
            self.cluster.spawn(index).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Ok(vec![moved, revoked])
    }

    async fn leader_kill(&mut self, args: &Args) -> Result<Vec<Samples>, BenchError> {
        let mut next_batch = Samples::new(
            "coordinator (Raft leader) SIGKILL -> next batch starts on a worker",
            "<= 1.5 s (original 5.8 s)",
            Unit::Seconds,
        );
        let mut elected = Samples::new(
            "coordinator SIGKILL -> a new leader known (polled)",
            "",
            Unit::Seconds,
        );
        for r in 0..args.reps {
            let job = self
                .submit(&format!("lk{r}"), &format!("noop:{BUSY_MS}"), 10_000, 1)
                .await?;
            self.until(job, "running", |j| j.done >= 50).await?;
            let leader = self.wait_leader(None).await?;
            let Some(index) = self.cluster.nodes.index_of(leader) else {
                return fail(format!("the leader {leader} is not a bench node"));
            };
            let t_kill_unix = unix_micros();
            let t_kill = Instant::now();
            self.cluster.kill(index)?;
            self.client_forget_leader();
            self.wait_leader(Some(leader)).await?;
            let elected_after = t_kill.elapsed();
            tokio::time::sleep(Duration::from_secs(3)).await;
            self.cancel(job).await?;
            let results = all_results(&self.client, job, usize::MAX).await?;
            let grace = u64::try_from(OLD_GRANT_GRACE.as_micros()).unwrap_or(0);
            let mut old_grants = BTreeSet::new();
            let mut first_new = None::<u64>;
            for r in &results {
                let InputOutcome::Result(text) = &r.outcome else {
                    continue;
                };
                let Some((started, _)) = parse_timed_result(text) else {
                    continue;
                };
                if started >= t_kill_unix && started < t_kill_unix + grace {
                    old_grants.insert(started);
                } else if started >= t_kill_unix + grace {
                    first_new = Some(first_new.map_or(started, |f| f.min(started)));
                }
            }
            let Some(first_new) = first_new else {
                return fail(format!(
                    "{job}: no batch ran within 3 s of the leader's kill"
                ));
            };
            let after = (first_new - t_kill_unix) as f64 / 1e6;
            progress(&format!(
                "leader kill {r}: new leader known after {:.3} s, next batch started after \
                 {after:.3} s ({} batches granted before the kill started just after it)",
                elected_after.as_secs_f64(),
                old_grants.len()
            ));
            next_batch.values.push(after);
            elected.values.push(elected_after.as_secs_f64());
            // The voter comes back with its Raft log.
            self.cluster.spawn(index).await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        Ok(vec![next_batch, elected])
    }

    /// Makes the bench's client ask its entry node again (the cached leader is dead).
    fn client_forget_leader(&mut self) {
        self.client = SchedClient::new(self.entry, CALL_TIMEOUT);
    }
}
