//! sched-bench: scheduling throughput of the pure scheduler state machine with a no-op model.
//!
//! Owns: the benchmark protocol (ten workers each lease a batch and complete it at once, round
//! robin; when the jobs run dry, new ones are submitted; per batch size, once straight through
//! [`Scheduler::apply`] and once through [`ClusterState::apply`] with every command encoded as
//! the bytes a leader proposes and every result decoded, as each Raft voter applies them) and
//! the markdown table it prints. Raft replication, fsync and the network are not included: this
//! is the ceiling the state machine puts on the coordinator.
//! Must never: draw unseeded randomness (there is none) or report anything but measured wall
//! time of the loop itself.
//!
//! Run: `cargo run --release -p idunno-sim --bin sched-bench` (or `-- --seconds 0.5`).

use std::process::ExitCode;
use std::time::Duration;

use idunno_core::cluster::{ClusterCommand, ClusterOp, ClusterResult, ClusterState};
use idunno_core::consensus::StateMachine;
use idunno_core::membership::NodeId;
use idunno_core::scheduler::{
    Completion, Grant, InputOutcome, JobSpec, SchedCommand, SchedResult, Scheduler,
};
use idunno_core::time::Instant;

/// Workers taking turns.
const WORKERS: u64 = 10;
/// Inputs per submitted job (fits one 64 KiB Raft command).
const INPUTS_PER_JOB: usize = 2_000;
/// Jobs kept running side by side.
const JOBS_RUNNING: usize = 2;

/// Where commands go.
trait Target {
    fn apply(&mut self, now: Instant, command: SchedCommand) -> Result<SchedResult, String>;
}

impl Target for Scheduler {
    fn apply(&mut self, now: Instant, command: SchedCommand) -> Result<SchedResult, String> {
        Ok(Scheduler::apply(self, now, command))
    }
}

/// The replicated path: encode, apply through the log's state machine, decode.
struct Replicated {
    state: ClusterState,
    index: u64,
}

impl Target for Replicated {
    fn apply(&mut self, now: Instant, command: SchedCommand) -> Result<SchedResult, String> {
        let bytes = ClusterCommand::new(now, ClusterOp::Sched(command))
            .encode()
            .map_err(|e| e.to_string())?;
        self.index += 1;
        let result = self.state.apply(self.index, &bytes);
        match ClusterResult::decode(&result).map_err(|e| e.to_string())? {
            ClusterResult::Sched(r) => Ok(r),
            other => Err(format!("unexpected {other:?}")),
        }
    }
}

#[derive(Debug, Default)]
struct Row {
    batches: u64,
    inputs: u64,
    commands: u64,
    seconds: f64,
}

fn worker(i: u64) -> NodeId {
    NodeId::new(
        format!("10.0.{}.{}:7000", i / 250, i % 250 + 1)
            .parse()
            .unwrap_or_else(|_| ([127, 0, 0, 1], 7000).into()),
        1,
    )
}

fn spec(batch: u32) -> JobSpec {
    JobSpec {
        model: "noop".into(),
        inputs: (0..INPUTS_PER_JOB).map(|i| format!("in/{i:05}")).collect(),
        batch_size: batch,
        lease_millis: 5_000,
    }
}

fn run(target: &mut impl Target, batch: u32, budget: Duration) -> Result<Row, String> {
    let mut row = Row::default();
    let mut request = 0u64;
    let mut requests = vec![0u64; WORKERS as usize];
    let mut now_micros = 0u64;
    let started = std::time::Instant::now();
    while started.elapsed() < budget {
        for w in 0..WORKERS {
            now_micros += 10;
            let now = Instant::from_micros(now_micros);
            requests[w as usize] += 1;
            let lease = SchedCommand::Lease {
                worker: worker(w),
                request: requests[w as usize],
            };
            row.commands += 1;
            let grant: Grant = match target.apply(now, lease)? {
                SchedResult::Granted(g) => g,
                SchedResult::NoWork => {
                    for _ in 0..JOBS_RUNNING {
                        request += 1;
                        row.commands += 1;
                        let submit = SchedCommand::Submit {
                            spec: spec(batch),
                            request,
                        };
                        match target.apply(now, submit)? {
                            SchedResult::Submitted { .. } => {}
                            other => return Err(format!("submit: {other:?}")),
                        }
                    }
                    continue;
                }
                other => return Err(format!("lease: {other:?}")),
            };
            let results = grant
                .inputs
                .iter()
                .map(|(i, name)| Completion {
                    input: *i,
                    outcome: InputOutcome::Result(format!("out/{name}")),
                    elapsed_micros: 1,
                })
                .collect();
            let complete = SchedCommand::Complete {
                lease: grant.lease,
                worker: worker(w),
                results,
            };
            row.commands += 1;
            match target.apply(now, complete)? {
                SchedResult::Completed { inputs, .. } => {
                    row.batches += 1;
                    row.inputs += u64::from(inputs);
                }
                other => return Err(format!("complete: {other:?}")),
            }
        }
    }
    row.seconds = started.elapsed().as_secs_f64();
    Ok(row)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let seconds = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(2.0);
    let budget = Duration::from_secs_f64(seconds.clamp(0.01, 600.0));
    println!(
        "sched-bench: {WORKERS} workers, {JOBS_RUNNING} jobs x {INPUTS_PER_JOB} inputs at a time, no-op model, {seconds} s per row"
    );
    println!();
    println!(
        "| path | batch size | batches/s (leased + completed) | inputs/s | commands applied/s |"
    );
    println!("|---|---|---|---|---|");
    for batch in [1u32, 8, 32] {
        for path in ["Scheduler::apply", "ClusterState::apply (encoded)"] {
            let row = if path.starts_with("Scheduler") {
                run(&mut Scheduler::default(), batch, budget)
            } else {
                run(
                    &mut Replicated {
                        state: ClusterState::default(),
                        index: 0,
                    },
                    batch,
                    budget,
                )
            };
            match row {
                Ok(r) => println!(
                    "| {path} | {batch} | {:.0} | {:.0} | {:.0} |",
                    r.batches as f64 / r.seconds,
                    r.inputs as f64 / r.seconds,
                    r.commands as f64 / r.seconds
                ),
                Err(e) => {
                    eprintln!("sched-bench: {path} batch {batch}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    ExitCode::SUCCESS
}
