//! One inference job: its spec, the state of every input, the pending queue and its counters.
//!
//! Owns: [`Job`], [`JobSpec`], [`InputState`], [`InputOutcome`], [`JobStatus`]. A job moves each
//! input Pending -> Leased -> Done exactly once (a return to Pending happens only when its lease
//! is dropped: expiry, the worker's failure, cancellation).
//! Must never: mark an input Done twice, hold an input in the queue and in a lease at once, or
//! trust a spec it did not validate ([`JobSpec::validate`] runs before a job exists).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::stats::JobStatsState;
use super::{
    BATCH_SIZE_MAX, ERROR_BYTES_MAX, INPUTS_PER_JOB_MAX, JobId, LEASE_MILLIS_MAX, LEASE_MILLIS_MIN,
    LeaseId, NAME_BYTES_MAX, SchedError, WORKERS_PER_JOB_KEPT,
};
use crate::membership::NodeId;
use crate::time::Instant;

/// What a client asks for: run `model` over `inputs` in batches of `batch_size`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The model's registered name.
    pub model: String,
    /// The inputs' file-system names, in order (results are reported by index).
    pub inputs: Vec<String>,
    /// Inputs per lease, 1..=[`BATCH_SIZE_MAX`]; settable while running (C3).
    pub batch_size: u32,
    /// How long a lease lives without renewal, in ms,
    /// [`LEASE_MILLIS_MIN`]..=[`LEASE_MILLIS_MAX`]; longer than a batch takes.
    pub lease_millis: u32,
}

impl JobSpec {
    /// Checks every bound; an error names the first one broken.
    pub fn validate(&self) -> Result<(), SchedError> {
        if self.model.is_empty() || self.model.len() > NAME_BYTES_MAX {
            return Err(SchedError::BadName {
                bytes: self.model.len(),
            });
        }
        if self.inputs.is_empty() {
            return Err(SchedError::NoInputs);
        }
        if self.inputs.len() > INPUTS_PER_JOB_MAX {
            return Err(SchedError::TooManyInputs {
                inputs: self.inputs.len(),
            });
        }
        if let Some(bad) = self
            .inputs
            .iter()
            .find(|n| n.is_empty() || n.len() > NAME_BYTES_MAX)
        {
            return Err(SchedError::BadName { bytes: bad.len() });
        }
        check_batch_size(self.batch_size)?;
        if !(LEASE_MILLIS_MIN..=LEASE_MILLIS_MAX).contains(&self.lease_millis) {
            return Err(SchedError::BadLeaseTime {
                millis: self.lease_millis,
            });
        }
        Ok(())
    }

    /// The worst-case bytes this job can occupy in the state (names plus every result).
    pub fn reserve_bytes(&self) -> u64 {
        let names: usize = self.inputs.iter().map(String::len).sum();
        let per_input = INPUT_OVERHEAD_BYTES + ERROR_BYTES_MAX.max(NAME_BYTES_MAX);
        (names + self.model.len() + self.inputs.len() * per_input + JOB_OVERHEAD_BYTES) as u64
    }
}

/// Fixed bytes a job costs in a snapshot beyond its names (statistics ring, counters).
const JOB_OVERHEAD_BYTES: usize = 16 * 1024;
/// Fixed bytes one input costs beyond its name and result (state tag, worker id).
const INPUT_OVERHEAD_BYTES: usize = 40;

/// A batch size is 1..=[`BATCH_SIZE_MAX`].
pub fn check_batch_size(size: u32) -> Result<(), SchedError> {
    if size == 0 || size as usize > BATCH_SIZE_MAX {
        return Err(SchedError::BadBatchSize { size });
    }
    Ok(())
}

/// What became of one input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InputOutcome {
    /// The model ran; its output is stored under this file-system name.
    Result(String),
    /// The input could not be processed (undecodable, ...): the reason.
    Failed(String),
}

impl InputOutcome {
    fn bytes(&self) -> usize {
        match self {
            InputOutcome::Result(s) | InputOutcome::Failed(s) => s.len(),
        }
    }

    /// Checks the size bound.
    pub fn validate(&self) -> Result<(), SchedError> {
        let max = match self {
            InputOutcome::Result(_) => NAME_BYTES_MAX,
            InputOutcome::Failed(_) => ERROR_BYTES_MAX,
        };
        if self.bytes() > max {
            return Err(SchedError::BadName {
                bytes: self.bytes(),
            });
        }
        Ok(())
    }
}

/// Where one input stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InputState {
    /// Waiting in the queue.
    Pending,
    /// Held by a lease.
    Leased(LeaseId),
    /// Finished, exactly once.
    Done {
        /// What came out.
        outcome: InputOutcome,
        /// Who ran it.
        worker: NodeId,
    },
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobStatus {
    /// Inputs remain pending or leased.
    Running,
    /// Every input is Done.
    Finished,
    /// Cancelled: pending inputs were dropped, leases revoked.
    Cancelled,
}

/// One job. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub(super) id: JobId,
    pub(super) request: u64,
    pub(super) spec: JobSpec,
    pub(super) submitted_at: Instant,
    pub(super) status: JobStatus,
    /// No more inputs will be added (a job opened with `Open` is sealed by its last
    /// `AddInputs`); only a sealed job can finish.
    pub(super) sealed: bool,
    pub(super) inputs: Vec<InputState>,
    /// Pending input indices, next first.
    pub(super) pending: VecDeque<u32>,
    pub(super) leased: u32,
    pub(super) done: u32,
    pub(super) failed: u32,
    /// Fair-time pass: queries dispatched (see `fair`).
    pub(super) pass: u64,
    /// Per-query cost EWMA in microseconds (0 until the first completion).
    pub(super) cost_micros: u64,
    pub(super) first_lease_at: Option<Instant>,
    pub(super) finished_at: Option<Instant>,
    pub(super) stats: JobStatsState,
    /// Workers that completed queries: last completion and queries completed (C5), bounded.
    pub(super) workers: BTreeMap<NodeId, (Instant, u64)>,
}

impl Job {
    pub(super) fn new(
        id: JobId,
        request: u64,
        spec: JobSpec,
        now: Instant,
        pass: u64,
        sealed: bool,
    ) -> Self {
        let count = spec.inputs.len();
        debug_assert!(count > 0 && count <= INPUTS_PER_JOB_MAX);
        Job {
            id,
            request,
            submitted_at: now,
            status: JobStatus::Running,
            sealed,
            inputs: vec![InputState::Pending; count],
            pending: (0..count as u32).collect(),
            leased: 0,
            done: 0,
            failed: 0,
            pass,
            cost_micros: 0,
            first_lease_at: None,
            finished_at: None,
            stats: JobStatsState::default(),
            workers: BTreeMap::new(),
            spec,
        }
    }

    /// The job's id.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// The client's submission request id.
    pub fn request(&self) -> u64 {
        self.request
    }

    /// The spec it was submitted with (batch size as currently set).
    pub fn spec(&self) -> &JobSpec {
        &self.spec
    }

    /// Running, finished or cancelled.
    pub fn status(&self) -> JobStatus {
        self.status
    }

    /// Every input's state, by index.
    pub fn inputs(&self) -> &[InputState] {
        &self.inputs
    }

    /// Inputs waiting in the queue.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Inputs held by leases.
    pub fn leased_count(&self) -> u32 {
        self.leased
    }

    /// Inputs finished (including failed ones).
    pub fn done_count(&self) -> u32 {
        self.done
    }

    /// Inputs finished with an error.
    pub fn failed_count(&self) -> u32 {
        self.failed
    }

    /// When it was submitted (replicated clock).
    pub fn submitted_at(&self) -> Instant {
        self.submitted_at
    }

    /// When its first batch was leased.
    pub fn first_lease_at(&self) -> Option<Instant> {
        self.first_lease_at
    }

    /// When its last input finished.
    pub fn finished_at(&self) -> Option<Instant> {
        self.finished_at
    }

    /// Measured per-query cost (EWMA of reported times), if any completion arrived.
    pub fn cost(&self) -> Option<Duration> {
        (self.cost_micros > 0).then(|| Duration::from_micros(self.cost_micros))
    }

    /// The replicated statistics.
    pub fn stats(&self) -> &JobStatsState {
        &self.stats
    }

    /// Workers that completed queries of this job: (worker, last completion, queries).
    pub fn workers(&self) -> impl Iterator<Item = (NodeId, Instant, u64)> + '_ {
        self.workers.iter().map(|(w, (t, q))| (*w, *t, *q))
    }

    pub(super) fn is_running(&self) -> bool {
        self.status == JobStatus::Running
    }

    /// Whether all of its inputs are known (only a sealed job can finish).
    pub fn is_sealed(&self) -> bool {
        self.sealed
    }

    /// Appends `names` as new pending inputs (the caller checked the bounds and that the job
    /// runs and is open); with `seal`, no more may follow. Returns whether the job just
    /// finished (sealed with every input already done).
    pub(super) fn add_inputs(&mut self, names: Vec<String>, seal: bool, now: Instant) -> bool {
        debug_assert!(self.is_running() && !self.sealed);
        debug_assert!(self.inputs.len() + names.len() <= INPUTS_PER_JOB_MAX);
        for name in names {
            let index = self.inputs.len() as u32;
            self.spec.inputs.push(name);
            self.inputs.push(InputState::Pending);
            self.pending.push_back(index);
        }
        self.sealed = seal;
        self.check_counts();
        self.finish_if_done(now)
    }

    fn finish_if_done(&mut self, now: Instant) -> bool {
        if self.sealed && self.done as usize == self.inputs.len() && self.is_running() {
            self.status = JobStatus::Finished;
            self.finished_at = Some(now);
            return true;
        }
        false
    }

    /// Takes up to a batch of pending inputs into `lease`.
    pub(super) fn take_batch(&mut self, lease: LeaseId, now: Instant) -> Vec<u32> {
        let size = (self.spec.batch_size as usize).min(self.pending.len());
        let batch: Vec<u32> = self.pending.drain(..size).collect();
        for &i in &batch {
            debug_assert_eq!(self.inputs[i as usize], InputState::Pending);
            self.inputs[i as usize] = InputState::Leased(lease);
        }
        self.leased += batch.len() as u32;
        self.pass += batch.len() as u64;
        self.first_lease_at.get_or_insert(now);
        self.check_counts();
        batch
    }

    /// Puts a dropped lease's inputs back at the head of the queue.
    pub(super) fn give_back(&mut self, lease: LeaseId, inputs: &[u32]) {
        for &i in inputs.iter().rev() {
            let Some(state) = self.inputs.get_mut(i as usize) else {
                debug_assert!(false, "lease input out of range");
                continue;
            };
            if *state == InputState::Leased(lease) {
                *state = InputState::Pending;
                self.leased -= 1;
                if self.is_running() {
                    self.pending.push_front(i);
                }
            }
        }
        self.check_counts();
    }

    /// Records a lease's accepted results; returns whether the job just finished.
    pub(super) fn complete(
        &mut self,
        lease: LeaseId,
        worker: NodeId,
        results: Vec<(u32, InputOutcome, u64)>,
        now: Instant,
    ) -> bool {
        let mut elapsed = Vec::with_capacity(results.len());
        for (i, outcome, micros) in results {
            let state = &mut self.inputs[i as usize];
            debug_assert_eq!(*state, InputState::Leased(lease), "validated by the caller");
            if matches!(outcome, InputOutcome::Failed(_)) {
                self.failed += 1;
            }
            *state = InputState::Done { outcome, worker };
            self.leased -= 1;
            self.done += 1;
            elapsed.push(micros);
        }
        if !elapsed.is_empty() {
            let mean = elapsed.iter().sum::<u64>() / elapsed.len() as u64;
            self.cost_micros = if self.cost_micros == 0 {
                mean.max(1)
            } else {
                ((self.cost_micros * 7 + mean) / 8).max(1)
            };
        }
        self.stats.record(now, &elapsed);
        let entry = self.workers.entry(worker).or_insert((now, 0));
        *entry = (now, entry.1 + elapsed.len() as u64);
        if self.workers.len() > WORKERS_PER_JOB_KEPT
            && let Some(oldest) = self.workers.iter().min_by_key(|(w, (t, _))| (*t, **w))
        {
            let oldest = *oldest.0;
            self.workers.remove(&oldest);
        }
        self.check_counts();
        self.finish_if_done(now)
    }

    /// Drops the queue (cancelled inputs stay Pending but never run again).
    pub(super) fn cancel(&mut self) {
        self.pending.clear();
        self.status = JobStatus::Cancelled;
    }

    fn check_counts(&self) {
        debug_assert!(
            self.status != JobStatus::Running
                || self.pending.len() + self.leased as usize + self.done as usize
                    == self.inputs.len(),
            "pending + leased + done == inputs"
        );
        debug_assert!(self.failed <= self.done);
        debug_assert_eq!(self.inputs.len(), self.spec.inputs.len());
    }

    /// Full consistency check (tests and simulations; O(inputs)).
    pub fn verify(&self) -> Result<(), String> {
        let mut leased = 0;
        let mut done = 0;
        let mut queued = vec![false; self.inputs.len()];
        for &i in &self.pending {
            let slot = queued
                .get_mut(i as usize)
                .ok_or_else(|| format!("job {}: queued input {i} out of range", self.id.0))?;
            if *slot {
                return Err(format!("job {}: input {i} queued twice", self.id.0));
            }
            *slot = true;
        }
        for (i, state) in self.inputs.iter().enumerate() {
            if queued[i] && *state != InputState::Pending {
                return Err(format!("job {}: input {i} queued but {state:?}", self.id.0));
            }
            match state {
                InputState::Pending => {
                    if self.is_running() && !queued[i] {
                        return Err(format!("job {}: pending input {i} not queued", self.id.0));
                    }
                }
                InputState::Leased(_) => leased += 1,
                InputState::Done { .. } => done += 1,
            }
        }
        if leased != self.leased || done != self.done {
            return Err(format!(
                "job {}: counters leased {} done {} but states say {leased} {done}",
                self.id.0, self.leased, self.done
            ));
        }
        Ok(())
    }
}
