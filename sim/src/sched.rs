//! The scheduler layer of the simulator: ten workers pulling batches from the scheduler that a
//! seven-voter Raft cluster replicates, with crashes (the coordinator, i.e. the Raft leader,
//! included), partitions, restarts and modelled failure detection, watched by
//! [`SchedChecker`] after every tick.
//!
//! Owns: [`SchedSim`] (the harness: node slots `0..nodes` each run a worker, slots
//! `0..voters` also run a Raft voter from [`RaftSim`]), the worker loop (ask -> lease -> run for
//! the model's cost with seeded jitter -> complete and ask in one command, `CompleteAndLease`,
//! as the runtime's worker does), the coordinator's duties (propose
//! `ExpireLeases` periodically; propose `NodeFailed` once the failure detector reports a crash),
//! the failure-detection model (a crash is reported after a delay drawn uniformly from
//! [`SchedOptions::detection_min`]..[`SchedOptions::detection_max`]; no false suspicions),
//! [`SchedChecker`] (every input has at most one committed result and it never changes; no
//! lease is held by a dead worker once its failure committed and one lease time passed; at the
//! end every input has exactly one result) and [`SchedMetrics`] (simulated timings).
//! Inputs: scenario calls (`submit`, `crash`, `restart`, `partition`, `run_for`, ...).
//! Outputs: [`Violation`]s and [`SchedMetrics`].
//! Must never: read the wall clock, draw randomness outside the world's seeded RNG, learn a
//! command's outcome other than by reading a live node's applied state, or loop unbounded.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use idunno_core::cluster::{ClusterCommand, ClusterOp, ClusterState};
use idunno_core::consensus::Raft;
use idunno_core::membership::NodeId;
use idunno_core::scheduler::{
    Completion, Grant, InputOutcome, InputState, JobId, JobSpec, JobStatus, LeaseId, SchedCommand,
};
use idunno_core::time::Instant;

use crate::checker::Violation;
use crate::raft::{RaftOptions, RaftSim};
use crate::world::node_addr;

/// Grace after a failure commits for lease requests the dead worker had in flight.
const IN_FLIGHT_GRACE: Duration = Duration::from_secs(2);
/// Most ticks one `run_for` may take.
const TICKS_PER_RUN_MAX: u64 = 10_000_000;

/// A job the scenario submits.
#[derive(Debug, Clone)]
pub struct JobPlan {
    /// Model name (its cost is `cost`).
    pub model: String,
    /// Number of inputs.
    pub inputs: usize,
    /// Initial batch size.
    pub batch_size: u32,
    /// Model time per query (before jitter).
    pub cost: Duration,
    /// Lease time.
    pub lease_millis: u32,
}

/// Knobs of a scheduler simulation.
#[derive(Debug, Clone)]
pub struct SchedOptions {
    /// Node slots; each runs a worker.
    pub nodes: usize,
    /// The Raft cluster (its `voters` are slots `0..voters`).
    pub raft: RaftOptions,
    /// Harness granularity: workers and the coordinator act once per tick.
    pub tick: Duration,
    /// Shortest modelled failure-detection delay.
    pub detection_min: Duration,
    /// Longest modelled failure-detection delay.
    pub detection_max: Duration,
    /// How often the leader proposes `ExpireLeases`.
    pub expire_interval: Duration,
    /// A proposal not visible in the applied state after this long is proposed again.
    pub retry_after: Duration,
    /// How long a worker that got no work waits before asking again.
    pub idle_backoff: Duration,
    /// Model-time jitter, percent either side.
    pub jitter_percent: u64,
    /// How often the checker compares every input of every node with the canonical results.
    pub full_check_interval: Duration,
}

impl SchedOptions {
    /// Ten workers, seven voters on a LAN; detection 0.5-1.5 s (SWIM `lan`: 0.5 s probes,
    /// 0.2 s probe timeout, suspicion ~1 s).
    pub fn lan() -> Self {
        let mut raft = RaftOptions::lan(7);
        raft.propose_interval = Duration::from_secs(3600);
        SchedOptions {
            nodes: 10,
            raft,
            tick: Duration::from_millis(1),
            detection_min: Duration::from_millis(500),
            detection_max: Duration::from_millis(1500),
            expire_interval: Duration::from_millis(250),
            retry_after: Duration::from_millis(400),
            idle_backoff: Duration::from_millis(20),
            jitter_percent: 10,
            full_check_interval: Duration::from_millis(250),
        }
    }
}

/// Simulated timings (virtual time; see the module docs for the detection model).
#[derive(Debug, Clone, Default)]
pub struct SchedMetrics {
    /// Samples, once per second, of (max - min) / mean of the running jobs' 10 s query rates,
    /// taken while at least two jobs have run a full window and still have pending inputs.
    pub fair_bands: Vec<f64>,
    /// Per job: from its first submit proposal until its first lease is visible in applied
    /// state (what the worker waits for; tick resolution).
    pub first_batch_waits: Vec<Duration>,
    /// Per crash: until every input the crashed workers held is leased elsewhere or done.
    pub moved_elsewhere: Vec<Duration>,
    /// Per leader crash: until a lease granted after the crash is visible in applied state.
    pub leader_to_next_grant: Vec<Duration>,
    /// Per crashed worker: until its `NodeFailed` is visible in applied state.
    pub detections: Vec<Duration>,
    /// Leases granted, completions accepted (final state).
    pub leases_granted: u64,
    /// Completions accepted.
    pub completions: u64,
}

#[derive(Debug, Clone)]
enum Phase {
    Idle {
        at: Instant,
    },
    Asking {
        request: u64,
        proposed_at: Instant,
    },
    Running {
        grant: Grant,
        done_at: Instant,
        results: Vec<Completion>,
    },
    /// A `CompleteAndLease` proposed: the report of `lease` and the ask numbered `request`.
    Reporting {
        lease: LeaseId,
        results: Vec<Completion>,
        request: u64,
        proposed_at: Instant,
    },
}

#[derive(Debug, Clone)]
struct Worker {
    alive: bool,
    generation: u64,
    phase: Phase,
    next_request: u64,
}

#[derive(Debug, Clone)]
struct Detection {
    node: NodeId,
    crashed_at: Instant,
    due: Instant,
    proposed_at: Option<Instant>,
    /// Sim time and replicated stamp when the failure was first seen applied.
    committed: Option<(Instant, Instant)>,
}

#[derive(Debug, Clone)]
struct Submission {
    request: u64,
    spec: JobSpec,
    first_proposed: Option<Instant>,
    proposed_at: Option<Instant>,
    job: Option<JobId>,
    first_batch_seen: bool,
}

#[derive(Debug, Clone)]
struct MoveWatch {
    crashed_at: Instant,
    dead: BTreeSet<NodeId>,
    inputs: BTreeSet<(JobId, u32)>,
}

/// The checker of the scheduler invariants; reads applied states from outside.
#[derive(Debug, Clone, Default)]
pub struct SchedChecker {
    /// The first committed result seen for every input.
    canonical: BTreeMap<JobId, Vec<Option<(InputOutcome, NodeId)>>>,
    /// Done counts last seen per (slot, generation, job): never decrease.
    done_seen: BTreeMap<(usize, u64, JobId), u32>,
    /// Applied index last checked per (slot, generation).
    applied_seen: BTreeMap<(usize, u64), u64>,
    last_full_check: Option<Instant>,
}

impl SchedChecker {
    /// Inputs with a committed result so far.
    pub fn results(&self) -> usize {
        self.canonical
            .values()
            .map(|v| v.iter().filter(|r| r.is_some()).count())
            .sum()
    }

    fn violation(now: Instant, checker: &'static str, detail: String) -> Violation {
        Violation {
            checker,
            at: now,
            detail,
        }
    }

    /// Cheap per-tick checks of one node's applied state: done counts never go back.
    fn on_state(
        &mut self,
        now: Instant,
        slot: usize,
        generation: u64,
        state: &ClusterState,
    ) -> Result<(), Violation> {
        let applied = idunno_core::consensus::StateMachine::applied_index(state);
        if self.applied_seen.insert((slot, generation), applied) == Some(applied) {
            return Ok(());
        }
        for job in state.scheduler().jobs() {
            let done = job.done_count();
            if done as usize > job.inputs().len() {
                return Err(Self::violation(
                    now,
                    "one_result_per_input",
                    format!(
                        "slot {slot}: {} counts {done} of {} done",
                        job.id(),
                        job.inputs().len()
                    ),
                ));
            }
            let before = self.done_seen.insert((slot, generation, job.id()), done);
            if before.is_some_and(|b| b > done) {
                return Err(Self::violation(
                    now,
                    "committed_results_never_change",
                    format!(
                        "slot {slot}: {} went from {before:?} to {done} done",
                        job.id()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Full comparison of one node's results with the canonical ones.
    fn full_scan(
        &mut self,
        now: Instant,
        slot: usize,
        state: &ClusterState,
    ) -> Result<(), Violation> {
        let sched = state.scheduler();
        sched.verify().map_err(|e| {
            Self::violation(now, "scheduler_consistent", format!("slot {slot}: {e}"))
        })?;
        for job in sched.jobs() {
            let canon = self
                .canonical
                .entry(job.id())
                .or_insert_with(|| vec![None; job.inputs().len()]);
            if canon.len() != job.inputs().len() {
                return Err(Self::violation(
                    now,
                    "committed_results_never_change",
                    format!(
                        "slot {slot}: {} has {} inputs, first seen with {}",
                        job.id(),
                        job.inputs().len(),
                        canon.len()
                    ),
                ));
            }
            for (i, st) in job.inputs().iter().enumerate() {
                // A lagging node may not have applied the result yet; only a different
                // result is a violation.
                let InputState::Done { outcome, worker } = st else {
                    continue;
                };
                match &canon[i] {
                    Some((o, w)) if o != outcome || w != worker => {
                        return Err(Self::violation(
                            now,
                            "one_result_per_input",
                            format!(
                                "slot {slot}: input {i} of {} has {outcome:?} by {worker}, committed was {o:?} by {w}",
                                job.id()
                            ),
                        ));
                    }
                    Some(_) => {}
                    None => canon[i] = Some((outcome.clone(), *worker)),
                }
            }
        }
        Ok(())
    }
}

/// The scheduler under workers, faults and checkers. See the module docs.
#[derive(Debug)]
pub struct SchedSim {
    raft: RaftSim,
    options: SchedOptions,
    workers: Vec<Worker>,
    costs: BTreeMap<String, Duration>,
    submissions: Vec<Submission>,
    detections: Vec<Detection>,
    moves: Vec<MoveWatch>,
    leader_crashes: Vec<Instant>,
    /// One side of the current partition (slots), if any.
    partition: Option<BTreeSet<usize>>,
    next_expire_at: Instant,
    next_sample_at: Instant,
    checker: SchedChecker,
    metrics: SchedMetrics,
}

impl SchedSim {
    /// A cluster with every node started and a leader elected.
    pub fn new(seed: u64, options: SchedOptions) -> Result<Self, Violation> {
        let setup = |detail: String| Violation {
            checker: "setup",
            at: Instant::ZERO,
            detail,
        };
        if options.nodes < options.raft.voters || options.nodes > 250 {
            return Err(setup(format!(
                "{} nodes for {} voters",
                options.nodes, options.raft.voters
            )));
        }
        let mut raft = RaftSim::new(seed, options.raft.clone()).map_err(setup)?;
        raft.set_workload(false);
        raft.start_all()?;
        let workers = (0..options.nodes)
            .map(|_| Worker {
                alive: true,
                generation: 1,
                phase: Phase::Idle { at: Instant::ZERO },
                next_request: 1,
            })
            .collect();
        let mut sim = SchedSim {
            raft,
            workers,
            costs: BTreeMap::new(),
            submissions: Vec::new(),
            detections: Vec::new(),
            moves: Vec::new(),
            leader_crashes: Vec::new(),
            partition: None,
            next_expire_at: Instant::ZERO,
            next_sample_at: Instant::ZERO,
            checker: SchedChecker::default(),
            metrics: SchedMetrics::default(),
            options,
        };
        let deadline = sim.now() + Duration::from_secs(5);
        while sim.raft.leader().is_none() {
            if sim.now() >= deadline {
                return Err(sim.violation("bootstrap", "no leader".into()));
            }
            sim.raft.run_for(Duration::from_millis(10))?;
        }
        Ok(sim)
    }

    // ----- getters -----

    /// Virtual time.
    pub fn now(&self) -> Instant {
        self.raft.now()
    }

    /// The Raft harness.
    pub fn raft(&self) -> &RaftSim {
        &self.raft
    }

    /// The Raft harness, mutably (random draws).
    pub fn raft_mut(&mut self) -> &mut RaftSim {
        &mut self.raft
    }

    /// Timings so far.
    pub fn metrics(&self) -> &SchedMetrics {
        &self.metrics
    }

    /// The checker.
    pub fn checker(&self) -> &SchedChecker {
        &self.checker
    }

    /// The worker identity of slot `slot` now.
    pub fn worker_id(&self, slot: usize) -> NodeId {
        NodeId::new(node_addr(slot), self.workers[slot].generation)
    }

    /// Live voter slots with their states.
    fn states(&self) -> Vec<(usize, u64, &ClusterState)> {
        (0..self.options.raft.voters)
            .filter_map(|i| {
                let node = self.raft.world().machine(i)?;
                Some((i, self.raft.world().generation(i), node.state()))
            })
            .collect()
    }

    /// The live node state with the most applied (a committed prefix of the log).
    pub fn best_state(&self) -> Option<&ClusterState> {
        let slot = self.best_slot()?;
        self.raft.world().machine(slot).map(|n| n.state())
    }

    fn best_slot(&self) -> Option<usize> {
        self.states()
            .into_iter()
            .max_by_key(|(i, _, s)| {
                (
                    idunno_core::consensus::StateMachine::applied_index(*s),
                    std::cmp::Reverse(*i),
                )
            })
            .map(|(i, _, _)| i)
    }

    /// The job a submission created, once applied.
    pub fn job_of(&self, submission: usize) -> Option<JobId> {
        self.submissions.get(submission)?.job
    }

    /// Whether every submitted job is applied and finished in the best state.
    pub fn all_finished(&self) -> bool {
        let Some(state) = self.best_state() else {
            return false;
        };
        self.submissions.iter().all(|s| {
            s.job
                .and_then(|j| state.scheduler().job(j))
                .is_some_and(|j| j.status() == JobStatus::Finished)
        })
    }

    fn violation(&self, checker: &'static str, detail: String) -> Violation {
        SchedChecker::violation(self.now(), checker, detail)
    }

    fn same_side(&self, a: usize, b: usize) -> bool {
        self.partition
            .as_ref()
            .is_none_or(|side| side.contains(&a) == side.contains(&b))
    }

    /// The leader a node on `from`'s side would reach (highest term), if any.
    fn leader_for(&self, from: usize) -> Option<usize> {
        self.raft
            .live()
            .into_iter()
            .filter(|&i| self.same_side(from, i))
            .filter(|&i| self.raft.raft(i).is_some_and(Raft::is_leader))
            .max_by_key(|&i| self.raft.raft(i).map_or(0, Raft::term))
    }

    fn propose(&mut self, from: usize, op: ClusterOp) -> Result<bool, Violation> {
        let Some(leader) = self.leader_for(from) else {
            return Ok(false);
        };
        let bytes = ClusterCommand::new(self.now(), op)
            .encode()
            .map_err(|e| self.violation("encode", e.to_string()))?;
        Ok(self.raft.propose(leader, bytes)?.is_some())
    }

    // ----- scenario -----

    /// Submits a job now (proposed until applied). Returns the submission's number.
    pub fn submit(&mut self, plan: &JobPlan) -> usize {
        self.costs.insert(plan.model.clone(), plan.cost);
        let request = self.submissions.len() as u64 + 1;
        self.submissions.push(Submission {
            request,
            spec: JobSpec {
                model: plan.model.clone(),
                inputs: (0..plan.inputs)
                    .map(|i| format!("inputs/{}/{i}", plan.model))
                    .collect(),
                batch_size: plan.batch_size,
                lease_millis: plan.lease_millis,
            },
            first_proposed: None,
            proposed_at: None,
            job: None,
            first_batch_seen: false,
        });
        self.submissions.len() - 1
    }

    /// Proposes a batch-size change of a submitted job (once; returns whether accepted).
    pub fn set_batch_size(&mut self, submission: usize, size: u32) -> Result<bool, Violation> {
        let Some(job) = self.job_of(submission) else {
            return Ok(false);
        };
        let leader = self.raft.leader().unwrap_or(0);
        self.propose(
            leader,
            ClusterOp::Sched(SchedCommand::SetBatchSize { job, size }),
        )
    }

    /// Crashes the node slots at once (voter and worker). Failure detection reports each
    /// after the modelled delay.
    pub fn crash(&mut self, slots: &[usize]) {
        let now = self.now();
        if self.raft.leader().is_some_and(|l| slots.contains(&l)) {
            self.leader_crashes.push(now);
        }
        let mut dead = BTreeSet::new();
        for &slot in slots {
            if slot >= self.workers.len() || !self.workers[slot].alive {
                continue;
            }
            let node = self.worker_id(slot);
            dead.insert(node);
            self.workers[slot].alive = false;
            if slot < self.options.raft.voters {
                self.raft.crash(&[slot]);
            }
            let span = self
                .options
                .detection_max
                .saturating_sub(self.options.detection_min);
            let jitter = self
                .raft
                .world_mut()
                .random_below(span.as_micros() as u64 + 1);
            self.detections.push(Detection {
                node,
                crashed_at: now,
                due: now + self.options.detection_min + Duration::from_micros(jitter),
                proposed_at: None,
                committed: None,
            });
        }
        let held: BTreeSet<(JobId, u32)> = self
            .best_state()
            .map(|s| {
                s.scheduler()
                    .leases()
                    .iter()
                    .filter(|l| dead.contains(&l.worker))
                    .flat_map(|l| l.inputs.iter().map(|&i| (l.job, i)))
                    .collect()
            })
            .unwrap_or_default();
        if !held.is_empty() {
            self.moves.push(MoveWatch {
                crashed_at: now,
                dead,
                inputs: held,
            });
        }
    }

    /// Restarts a crashed slot as a new generation (a new worker identity).
    pub fn restart(&mut self, slot: usize) -> Result<(), Violation> {
        if slot >= self.workers.len() || self.workers[slot].alive {
            return Ok(());
        }
        if slot < self.options.raft.voters {
            self.raft.start(slot)?;
        }
        let now = self.now();
        let worker = &mut self.workers[slot];
        worker.alive = true;
        worker.generation += 1;
        worker.next_request = 1;
        worker.phase = Phase::Idle { at: now };
        Ok(())
    }

    /// Splits the nodes: `side` against the rest, symmetric, for voters and workers alike.
    pub fn partition(&mut self, side: &[usize]) {
        let voters: Vec<usize> = side
            .iter()
            .copied()
            .filter(|&i| i < self.options.raft.voters)
            .collect();
        self.raft.world_mut().network_mut().partition(&voters, true);
        self.partition = Some(side.iter().copied().collect());
    }

    /// Removes the partition.
    pub fn heal(&mut self) {
        self.raft.heal_network();
        self.partition = None;
    }

    /// Runs `span` of virtual time, tick by tick.
    pub fn run_for(&mut self, span: Duration) -> Result<(), Violation> {
        let deadline = self.now() + span;
        for _ in 0..TICKS_PER_RUN_MAX {
            if self.now() >= deadline {
                return Ok(());
            }
            self.tick()?;
        }
        Err(self.violation("run_for", "too many ticks".into()))
    }

    /// Runs until every submitted job finished, or fails at `deadline`.
    pub fn run_until_finished(&mut self, deadline: Instant) -> Result<(), Violation> {
        while !self.all_finished() {
            if self.now() >= deadline {
                let detail = self
                    .best_state()
                    .map(|s| {
                        s.scheduler()
                            .jobs()
                            .map(|j| {
                                format!(
                                    "{}: {:?} pending {} leased {} done {}",
                                    j.id(),
                                    j.status(),
                                    j.pending_count(),
                                    j.leased_count(),
                                    j.done_count()
                                )
                            })
                            .collect::<Vec<_>>()
                            .join("; ")
                    })
                    .unwrap_or_default();
                return Err(self.violation(
                    "jobs_finish",
                    format!(
                        "not finished: {detail}; leader {:?}; leases {:?}",
                        self.raft.leader(),
                        self.best_state().map(|s| s
                            .scheduler()
                            .leases()
                            .iter()
                            .map(|l| (l.id, l.worker, l.expires_at))
                            .collect::<Vec<_>>())
                    ),
                ));
            }
            self.run_for(Duration::from_millis(10))?;
        }
        Ok(())
    }

    /// The end-of-run check: every input of every job has exactly one result, the same on
    /// every live node that applied it.
    pub fn final_check(&mut self) -> Result<(), Violation> {
        let now = self.now();
        let states: Vec<(usize, ClusterState)> = self
            .states()
            .into_iter()
            .map(|(i, _, s)| (i, s.clone()))
            .collect();
        for (slot, state) in &states {
            self.checker.full_scan(now, *slot, state)?;
        }
        let Some(best) = self.best_state().cloned() else {
            return Err(self.violation("final", "no live node".into()));
        };
        for sub in &self.submissions {
            let job = sub
                .job
                .and_then(|j| best.scheduler().job(j))
                .ok_or_else(|| {
                    self.violation("final", format!("submission {} never applied", sub.request))
                })?;
            let canon = self.checker.canonical.get(&job.id());
            let results = canon.map_or(0, |c| c.iter().filter(|r| r.is_some()).count());
            if job.status() != JobStatus::Finished || results != job.inputs().len() {
                return Err(self.violation(
                    "exactly_one_result",
                    format!(
                        "{}: {:?}, {results} of {} inputs have a result",
                        job.id(),
                        job.status(),
                        job.inputs().len()
                    ),
                ));
            }
        }
        self.metrics.leases_granted = best.scheduler().counters().leases_granted;
        self.metrics.completions = best.scheduler().counters().completions_accepted;
        Ok(())
    }

    // ----- one tick -----

    fn tick(&mut self) -> Result<(), Violation> {
        self.raft.run_for(self.options.tick)?;
        let now = self.now();
        self.coordinator(now)?;
        for slot in 0..self.workers.len() {
            self.step_worker(slot, now)?;
        }
        self.observe(now)
    }

    fn coordinator(&mut self, now: Instant) -> Result<(), Violation> {
        let Some(leader) = self.raft.leader() else {
            return Ok(());
        };
        if now >= self.next_expire_at {
            self.propose(leader, ClusterOp::Sched(SchedCommand::ExpireLeases))?;
            self.next_expire_at = now + self.options.expire_interval;
        }
        let retry = self.options.retry_after;
        let failed: BTreeSet<NodeId> = self
            .best_state()
            .map(|s| s.failed_nodes().iter().copied().collect())
            .unwrap_or_default();
        let stamp = self.best_state().map_or(Instant::ZERO, ClusterState::now);
        for i in 0..self.detections.len() {
            let d = self.detections[i].clone();
            if d.committed.is_some() {
                continue;
            }
            if failed.contains(&d.node) {
                self.detections[i].committed = Some((now, stamp));
                self.metrics.detections.push(now - d.crashed_at);
            } else if now >= d.due && d.proposed_at.is_none_or(|t| now >= t + retry) {
                self.propose(leader, ClusterOp::NodeFailed { node: d.node })?;
                self.detections[i].proposed_at = Some(now);
            }
        }
        for i in 0..self.submissions.len() {
            let sub = self.submissions[i].clone();
            if sub.job.is_some() {
                continue;
            }
            let applied = self.best_state().and_then(|s| {
                s.scheduler()
                    .jobs()
                    .find(|j| j.request() == sub.request)
                    .map(|j| j.id())
            });
            if let Some(job) = applied {
                self.submissions[i].job = Some(job);
            } else if sub.proposed_at.is_none_or(|t| now >= t + retry) {
                let op = ClusterOp::Sched(SchedCommand::Submit {
                    spec: sub.spec.clone(),
                    request: sub.request,
                });
                self.propose(leader, op)?;
                self.submissions[i].proposed_at = Some(now);
                self.submissions[i].first_proposed.get_or_insert(now);
            }
        }
        Ok(())
    }

    /// Once a worker's ask has applied (at `now`): run the batch it was granted (`current`:
    /// the applied ask is this one, not a later one), or idle for `backoff`.
    fn after_ask(
        &mut self,
        current: bool,
        granted: Option<LeaseId>,
        now: Instant,
        backoff: Duration,
    ) -> Phase {
        let grant = granted
            .filter(|_| current)
            .and_then(|id| self.best_state()?.scheduler().grant(id));
        match grant {
            Some(grant) => {
                let (span, results) = self.run_time(&grant);
                Phase::Running {
                    grant,
                    done_at: now + span,
                    results,
                }
            }
            None => Phase::Idle { at: now + backoff },
        }
    }

    fn run_time(&mut self, grant: &Grant) -> (Duration, Vec<Completion>) {
        let cost = self
            .costs
            .get(&grant.model)
            .copied()
            .unwrap_or(Duration::from_millis(1));
        let jitter = self.options.jitter_percent;
        let mut total = Duration::ZERO;
        let mut results = Vec::with_capacity(grant.inputs.len());
        for (input, _) in &grant.inputs {
            let pct = 100 - jitter + self.raft.world_mut().random_below(2 * jitter + 1);
            let micros = (cost.as_micros() as u64 * pct / 100).max(1);
            total += Duration::from_micros(micros);
            results.push(Completion {
                input: *input,
                outcome: InputOutcome::Result(format!("results/{}/{input}", grant.job.0)),
                elapsed_micros: micros,
            });
        }
        (total, results)
    }

    fn step_worker(&mut self, slot: usize, now: Instant) -> Result<(), Violation> {
        if !self.workers[slot].alive {
            return Ok(());
        }
        let me = self.worker_id(slot);
        let retry = self.options.retry_after;
        let backoff = self.options.idle_backoff;
        let next = match self.workers[slot].phase.clone() {
            Phase::Idle { at } if at <= now => {
                let request = self.workers[slot].next_request;
                let op = ClusterOp::Sched(SchedCommand::Lease {
                    worker: me,
                    request,
                });
                if self.propose(slot, op)? {
                    self.workers[slot].next_request += 1;
                    Phase::Asking {
                        request,
                        proposed_at: now,
                    }
                } else {
                    Phase::Idle { at: now + backoff }
                }
            }
            Phase::Asking {
                request,
                proposed_at,
            } => {
                let answer = self
                    .best_state()
                    .and_then(|s| s.scheduler().last_request(me));
                match answer {
                    Some((seen, granted)) if seen >= request => {
                        self.after_ask(seen == request, granted, now, backoff)
                    }
                    _ if now >= proposed_at + retry => {
                        let op = ClusterOp::Sched(SchedCommand::Lease {
                            worker: me,
                            request,
                        });
                        self.propose(slot, op)?;
                        Phase::Asking {
                            request,
                            proposed_at: now,
                        }
                    }
                    _ => return Ok(()),
                }
            }
            Phase::Running {
                grant,
                done_at,
                results,
            } if done_at <= now => {
                // The report and the ask for the next batch share one log entry, as the
                // runtime's worker does.
                let request = self.workers[slot].next_request;
                self.workers[slot].next_request += 1;
                let op = ClusterOp::Sched(SchedCommand::CompleteAndLease {
                    lease: grant.lease,
                    worker: me,
                    results: results.clone(),
                    request,
                });
                self.propose(slot, op)?;
                Phase::Reporting {
                    lease: grant.lease,
                    results,
                    request,
                    proposed_at: now,
                }
            }
            Phase::Reporting {
                lease,
                results,
                request,
                proposed_at,
            } => {
                let answer = self
                    .best_state()
                    .and_then(|s| s.scheduler().last_request(me));
                match answer {
                    // Applied (report and ask apply together): run what the ask got.
                    Some((seen, granted)) if seen >= request => {
                        self.after_ask(seen == request, granted, now, backoff)
                    }
                    _ if now >= proposed_at + retry => {
                        let live = self
                            .best_state()
                            .is_some_and(|s| s.scheduler().leases().get(lease).is_some());
                        if live {
                            let op = ClusterOp::Sched(SchedCommand::CompleteAndLease {
                                lease,
                                worker: me,
                                results: results.clone(),
                                request,
                            });
                            self.propose(slot, op)?;
                            Phase::Reporting {
                                lease,
                                results,
                                request,
                                proposed_at: now,
                            }
                        } else {
                            // The lease is gone (expired or revoked): only the ask is left,
                            // under the same number.
                            let op = ClusterOp::Sched(SchedCommand::Lease {
                                worker: me,
                                request,
                            });
                            self.propose(slot, op)?;
                            Phase::Asking {
                                request,
                                proposed_at: now,
                            }
                        }
                    }
                    _ => return Ok(()),
                }
            }
            _ => return Ok(()),
        };
        self.workers[slot].phase = next;
        Ok(())
    }

    fn observe(&mut self, now: Instant) -> Result<(), Violation> {
        // Per tick: cheap checks on every node whose applied state moved.
        let live: Vec<(usize, u64)> = self.states().iter().map(|(i, g, _)| (*i, *g)).collect();
        for &(slot, generation) in &live {
            if let Some(node) = self.raft.world().machine(slot) {
                self.checker.on_state(now, slot, generation, node.state())?;
            }
        }
        let full_due = self
            .checker
            .last_full_check
            .is_none_or(|t| now >= t + self.options.full_check_interval);
        if full_due {
            self.checker.last_full_check = Some(now);
            for &(slot, _) in &live {
                if let Some(node) = self.raft.world().machine(slot) {
                    self.checker.full_scan(now, slot, node.state())?;
                }
            }
        }
        self.no_dead_leases(now)?;
        self.measure(now);
        Ok(())
    }

    fn no_dead_leases(&self, now: Instant) -> Result<(), Violation> {
        let lease_max = self
            .submissions
            .iter()
            .map(|s| Duration::from_millis(u64::from(s.spec.lease_millis)))
            .max()
            .unwrap_or_default();
        for (slot, _, state) in self.states() {
            for d in &self.detections {
                let Some((_, stamp)) = d.committed else {
                    continue;
                };
                if state.now() < stamp + lease_max + IN_FLIGHT_GRACE {
                    continue;
                }
                if let Some(lease) = state.scheduler().leases().of_worker(d.node).next() {
                    return Err(SchedChecker::violation(
                        now,
                        "no_lease_held_by_dead_worker",
                        format!(
                            "slot {slot}: {lease} still held by {} (failed, committed at stamp {:?}, state now {:?})",
                            d.node,
                            stamp,
                            state.now()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn measure(&mut self, now: Instant) {
        // Borrow the best node's state and the metric fields separately (no clone per tick).
        let Some(slot) = self.best_slot() else {
            return;
        };
        let Some(node) = self.raft.world().machine(slot) else {
            return;
        };
        let sched = node.state().scheduler();
        for sub in &mut self.submissions {
            if sub.first_batch_seen {
                continue;
            }
            if let (Some(first), Some(job)) =
                (sub.first_proposed, sub.job.and_then(|j| sched.job(j)))
                && job.first_lease_at().is_some()
            {
                sub.first_batch_seen = true;
                self.metrics.first_batch_waits.push(now - first);
            }
        }
        self.moves.retain(|m| {
            let moved = m.inputs.iter().all(|(job, i)| {
                let Some(st) = sched.job(*job).and_then(|j| j.inputs().get(*i as usize)) else {
                    return true;
                };
                match st {
                    InputState::Pending => false,
                    InputState::Leased(l) => sched
                        .leases()
                        .get(*l)
                        .is_some_and(|l| !m.dead.contains(&l.worker)),
                    InputState::Done { .. } => true,
                }
            });
            if moved {
                self.metrics.moved_elsewhere.push(now - m.crashed_at);
            }
            !moved
        });
        let last_grant = sched.counters().last_grant_at;
        self.leader_crashes.retain(|&t| {
            let granted = last_grant > t;
            if granted {
                self.metrics.leader_to_next_grant.push(now - t);
            }
            !granted
        });
        if now >= self.next_sample_at {
            self.next_sample_at = now + Duration::from_secs(1);
            let window = idunno_core::scheduler::stats::RATE_WINDOW;
            let rates: Vec<f64> = sched
                .jobs()
                .filter(|j| j.status() == JobStatus::Running && j.pending_count() > 0)
                .filter(|j| j.first_lease_at().is_some_and(|t| now >= t + window))
                .filter_map(|j| sched.report(j.id(), now).map(|r| r.rate_per_sec))
                .collect();
            if rates.len() >= 2 {
                let max = rates.iter().copied().fold(f64::MIN, f64::max);
                let min = rates.iter().copied().fold(f64::MAX, f64::min);
                let mean = rates.iter().sum::<f64>() / rates.len() as f64;
                if mean > 0.0 {
                    self.metrics.fair_bands.push((max - min) / mean);
                }
            }
        }
    }
}
