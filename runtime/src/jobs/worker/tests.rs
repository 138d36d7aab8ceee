//! The pipelined lane against a fake scheduler (the real `core::scheduler` state machine applied
//! in process, with a clock the test can move and faults it can inject) and a fake executor
//! that records what it stored and what it was told to discard.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idunno_core::membership::NodeId;
use idunno_core::scheduler::{
    Completion, Grant, InputOutcome, InputState, JobId, JobSpec, JobStatus, LEASES_PER_WORKER_MAX,
    SchedCommand, SchedResult, Scheduler,
};
use idunno_core::time::Instant as CoreInstant;
use tokio::sync::watch;

use super::{SchedPort, WorkerOptions, WorkerStats, run};
use crate::control::ClientError;
use crate::jobs::{ExecError, Executor, Prepared, Ran};

const JOB: JobId = JobId(0);

fn me() -> NodeId {
    NodeId::new("127.0.0.1:4000".parse().expect("addr"), 1)
}

#[derive(Debug, Default)]
struct FakeState {
    sched: Scheduler,
    /// Added to the real elapsed time: the test moves the clock forward with it.
    offset: Duration,
    /// Most leases the worker held at once.
    max_held: usize,
    /// Commands applied, by kind.
    applied: BTreeMap<&'static str, u64>,
}

/// The scheduler state machine behind a lock, answering at once.
#[derive(Debug)]
struct FakeSched {
    state: Mutex<FakeState>,
    start: std::time::Instant,
}

impl FakeSched {
    fn new() -> Arc<Self> {
        Arc::new(FakeSched {
            state: Mutex::new(FakeState::default()),
            start: std::time::Instant::now(),
        })
    }

    fn now(&self, state: &FakeState) -> CoreInstant {
        let elapsed = self.start.elapsed() + state.offset;
        CoreInstant::from_micros(u64::try_from(elapsed.as_micros()).expect("micros"))
    }

    fn apply(&self, command: SchedCommand) -> SchedResult {
        let mut state = self.state.lock().expect("fake state");
        let kind = match &command {
            SchedCommand::Lease { .. } => "lease",
            SchedCommand::Complete { .. } => "complete",
            SchedCommand::CompleteAndLease { .. } => "complete_and_lease",
            SchedCommand::Renew { .. } => "renew",
            _ => "other",
        };
        *state.applied.entry(kind).or_default() += 1;
        let now = self.now(&state);
        let result = state.sched.apply(now, command);
        let held = state.sched.leases().of_worker(me()).count();
        state.max_held = state.max_held.max(held);
        state
            .sched
            .verify()
            .expect("the scheduler stays consistent");
        result
    }

    fn submit(&self, inputs: usize, batch: u32, lease_millis: u32) {
        let spec = JobSpec {
            model: "fake".to_owned(),
            inputs: (0..inputs).map(|i| format!("in-{i}")).collect(),
            batch_size: batch,
            lease_millis,
        };
        let submitted = self.apply(SchedCommand::Submit { spec, request: 1 });
        assert_eq!(submitted, SchedResult::Submitted { job: JOB });
    }

    fn held(&self) -> usize {
        let state = self.state.lock().expect("fake state");
        state.sched.leases().of_worker(me()).count()
    }

    fn advance(&self, by: Duration) {
        self.state.lock().expect("fake state").offset += by;
    }

    fn finished(&self) -> bool {
        let state = self.state.lock().expect("fake state");
        state
            .sched
            .job(JOB)
            .is_some_and(|j| j.status() == JobStatus::Finished)
    }
}

impl SchedPort for FakeSched {
    fn command(
        &self,
        command: SchedCommand,
    ) -> impl Future<Output = Result<SchedResult, ClientError>> + Send {
        let result = self.apply(command);
        async move {
            tokio::task::yield_now().await;
            Ok(result)
        }
    }
}

/// What the fake executor did.
#[derive(Debug, Default)]
struct ExecLog {
    /// Result file name -> the inputs it holds.
    stored: Mutex<BTreeMap<String, Vec<u32>>>,
    discarded: Mutex<BTreeSet<String>>,
    running: AtomicUsize,
    /// Prepare steps that ran while a batch of the same worker was running.
    overlapped: AtomicU64,
}

/// Fetches in `prepare`, runs in `run` (both sleeps), stores one "file" per lease.
struct FakeExec {
    log: Arc<ExecLog>,
    prepare: Duration,
    run: Duration,
}

impl Executor for FakeExec {
    fn prepare(&self, grant: &Grant) -> Result<Prepared, ExecError> {
        std::thread::sleep(self.prepare);
        if self.log.running.load(Ordering::SeqCst) > 0 {
            self.log.overlapped.fetch_add(1, Ordering::SeqCst);
        }
        let (log, run, grant) = (Arc::clone(&self.log), self.run, grant.clone());
        Ok(Prepared::new(move || {
            log.running.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(run);
            log.running.fetch_sub(1, Ordering::SeqCst);
            Ok(Ran::new(move || {
                let file = format!("results/{}", grant.lease);
                let inputs: Vec<u32> = grant.inputs.iter().map(|(i, _)| *i).collect();
                log.stored
                    .lock()
                    .expect("stored")
                    .insert(file.clone(), inputs);
                Ok(grant
                    .inputs
                    .iter()
                    .map(|(input, _)| Completion {
                        input: *input,
                        outcome: InputOutcome::Result(file.clone()),
                        elapsed_micros: 1,
                    })
                    .collect())
            }))
        }))
    }

    fn discard(&self, _grant: &Grant, results: &[Completion]) {
        let mut discarded = self.log.discarded.lock().expect("discarded");
        for c in results {
            if let InputOutcome::Result(file) = &c.outcome {
                discarded.insert(file.clone());
            }
        }
    }
}

struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    stats: Arc<WorkerStats>,
}

fn start(sched: &Arc<FakeSched>, exec: FakeExec, lanes: usize, pipeline: bool) -> Running {
    let options = WorkerOptions {
        lanes,
        idle_min: Duration::from_millis(1),
        idle_max: Duration::from_millis(20),
        call_timeout: Duration::from_secs(1),
        pipeline,
    };
    let stats = Arc::new(WorkerStats::default());
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(run(
        me(),
        Arc::clone(sched),
        Arc::new(exec),
        options,
        Arc::clone(&stats),
        stopped,
    ));
    Running { stop, task, stats }
}

async fn wait_finished(sched: &FakeSched, running: Running) -> Arc<WorkerStats> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !sched.finished() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job did not finish: {:?}",
            sched.state.lock().expect("state").sched.job(JOB)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let _ = running.stop.send(true);
    running.task.await.expect("worker task");
    running.stats
}

/// Every input is done exactly once (the scheduler's own check) with a result file that was
/// stored before it was reported, holds that input, and was not discarded.
fn check_exactly_once(sched: &FakeSched, log: &ExecLog, inputs: usize) {
    let state = sched.state.lock().expect("state");
    let job = state.sched.job(JOB).expect("job");
    assert_eq!(job.inputs().len(), inputs);
    let stored = log.stored.lock().expect("stored");
    let discarded = log.discarded.lock().expect("discarded");
    for (index, input) in job.inputs().iter().enumerate() {
        let InputState::Done { outcome, .. } = input else {
            panic!("input {index} is {input:?}");
        };
        let InputOutcome::Result(file) = outcome else {
            panic!("input {index} failed: {outcome:?}");
        };
        let holds = stored.get(file).expect("reported only after it was stored");
        assert!(
            holds.contains(&(index as u32)),
            "{file} lacks input {index}"
        );
        assert!(
            !discarded.contains(file),
            "{file} is referenced but discarded"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_lanes_run_every_input_once_overlapping_within_the_lease_cap() {
    let sched = FakeSched::new();
    sched.submit(40, 2, 5_000);
    let log = Arc::new(ExecLog::default());
    let exec = FakeExec {
        log: Arc::clone(&log),
        prepare: Duration::from_millis(3),
        run: Duration::from_millis(15),
    };
    let running = start(&sched, exec, 2, true);
    let stats = wait_finished(&sched, running).await;
    check_exactly_once(&sched, &log, 40);
    let state = sched.state.lock().expect("state");
    assert!(
        state.max_held <= LEASES_PER_WORKER_MAX,
        "{}",
        state.max_held
    );
    assert!(
        log.overlapped.load(Ordering::SeqCst) > 0,
        "no batch was fetched while another ran"
    );
    assert_eq!(stats.completed.load(Ordering::SeqCst), 20);
    // Reports mostly go with the next ask: about one log entry per batch, not two.
    let entries: u64 = ["lease", "complete", "complete_and_lease"]
        .iter()
        .map(|k| state.applied.get(k).copied().unwrap_or(0))
        .sum();
    assert!(entries <= 20 + 20 / 2 + 4, "{:?}", state.applied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_lanes_hold_one_lease_each_and_never_overlap() {
    let sched = FakeSched::new();
    sched.submit(20, 2, 5_000);
    let log = Arc::new(ExecLog::default());
    let exec = FakeExec {
        log: Arc::clone(&log),
        prepare: Duration::from_millis(2),
        run: Duration::from_millis(5),
    };
    let running = start(&sched, exec, 1, false);
    let _ = wait_finished(&sched, running).await;
    check_exactly_once(&sched, &log, 20);
    assert_eq!(sched.state.lock().expect("state").max_held, 1);
    assert_eq!(log.overlapped.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_lanes_do_not_pipeline_past_the_lease_cap() {
    let sched = FakeSched::new();
    sched.submit(40, 1, 5_000);
    let log = Arc::new(ExecLog::default());
    let exec = FakeExec {
        log: Arc::clone(&log),
        prepare: Duration::from_millis(1),
        run: Duration::from_millis(5),
    };
    let running = start(&sched, exec, LEASES_PER_WORKER_MAX, true);
    let _ = wait_finished(&sched, running).await;
    check_exactly_once(&sched, &log, 40);
    let state = sched.state.lock().expect("state");
    assert!(
        state.max_held <= LEASES_PER_WORKER_MAX,
        "{}",
        state.max_held
    );
}

/// Waits until the worker holds two leases (one running, one prefetched), then applies `fault`.
async fn strike_when_two_are_held(sched: &FakeSched, fault: impl FnOnce()) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while sched.held() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never held two leases"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    fault();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_prefetched_lease_never_gives_a_second_result() {
    let sched = FakeSched::new();
    // Renewed every 150 ms; the batches run 120 ms, so a prefetched one waits a while.
    sched.submit(12, 1, 300);
    let log = Arc::new(ExecLog::default());
    let exec = FakeExec {
        log: Arc::clone(&log),
        prepare: Duration::from_millis(2),
        run: Duration::from_millis(120),
    };
    let running = start(&sched, exec, 1, true);
    // Let the lane learn the run time (no prefetch before), then expire both leases at once.
    strike_when_two_are_held(&sched, || sched.advance(Duration::from_secs(1))).await;
    let stats = wait_finished(&sched, running).await;
    check_exactly_once(&sched, &log, 12);
    let (refused, dropped) = (
        stats.refused.load(Ordering::SeqCst),
        stats.dropped.load(Ordering::SeqCst),
    );
    assert!(
        refused + dropped >= 1,
        "refused {refused}, dropped {dropped}"
    );
    assert!(sched.state.lock().expect("state").max_held <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_gone_with_two_leases_gets_both_back_to_the_queue() {
    let sched = FakeSched::new();
    sched.submit(12, 1, 5_000);
    let log = Arc::new(ExecLog::default());
    let exec = FakeExec {
        log: Arc::clone(&log),
        prepare: Duration::from_millis(2),
        run: Duration::from_millis(60),
    };
    let running = start(&sched, exec, 1, true);
    let revoked = Arc::new(Mutex::new(None));
    strike_when_two_are_held(&sched, || {
        let answer = sched.apply(SchedCommand::WorkerGone { worker: me() });
        *revoked.lock().expect("revoked") = Some(answer);
    })
    .await;
    assert_eq!(
        revoked.lock().expect("revoked").take(),
        Some(SchedResult::Revoked { leases: 2 })
    );
    let stats = wait_finished(&sched, running).await;
    check_exactly_once(&sched, &log, 12);
    assert!(stats.refused.load(Ordering::SeqCst) + stats.dropped.load(Ordering::SeqCst) >= 1);
}

#[test]
fn renewals_come_twice_per_lease_time() {
    assert_eq!(super::renew_every(5_000), Duration::from_millis(2_500));
    assert_eq!(super::renew_every(0), Duration::from_millis(50));
}
