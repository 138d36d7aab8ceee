//! The consensus layer of the simulator: a cluster of Raft voters in a [`World`], each with a
//! durable store that survives crashes and a key-value state machine, and [`RaftSim`], the
//! harness that drives it with a client workload and faults while the checkers of
//! [`crate::raft_checker`] watch every step.
//!
//! Owns: the [`Machine`] adapter ([`RaftNode`]: decodes messages, turns `Persist` into an fsync
//! that completes after [`RaftOptions::fsync_delay`], applies committed entries to the
//! cluster's replicated state ([`ClusterState`]: the key-value store the workload uses, and the
//! file-system and scheduler state other sims drive through it), compacts every [`COMPACT_EVERY_ENTRIES`] applied entries, serves ReadIndex
//! reads once applied), the per-slot durable state (only batches whose fsync completed; a crash
//! loses the rest), crash / restart from durable state, the client workload (writes and reads
//! sent to any node that believes it leads, recorded in a [`History`] for the linearizability
//! check), and the convergence check after faults heal.
//! Inputs: scenario calls (`start_all`, `crash`, `restart`, `partition`, `run_until`, ...).
//! Outputs: [`Violation`]s and an [`Outcome`] per run.
//! Must never: let a write count as durable before its fsync timer fired, reach into a
//! machine's private state, advance time other than through the world, or loop without a bound.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use idunno_core::cluster::{ClusterCommand, ClusterOp, ClusterState};
use idunno_core::consensus::{
    self, Config, Entry, Input, KvCommand, Output, Payload, PersistBatch, PersistedState,
    READS_PENDING_MAX, Raft, StateMachine, Timer, VoterId,
};
use idunno_core::time::Instant;

use crate::checker::Violation;
use crate::linearizability::History;
use crate::machine::{Effect, Machine};
use crate::network::FaultOptions;
use crate::raft_checker::{Observed, RaftChecker};
use crate::world::{World, node_addr};

/// Most world steps one `run_until` call may take.
pub const STEPS_PER_RUN_MAX: u64 = 1 << 28;
/// A node compacts its log once this many applied entries follow its snapshot.
pub const COMPACT_EVERY_ENTRIES: u64 = 64;
/// Most keys the workload writes (small, so cas and get see each other's writes).
const WORKLOAD_KEYS: u64 = 8;

/// The simulated node's timers: Raft's own, and the completion of an fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RaftTimer {
    /// A Raft timer.
    Raft(Timer),
    /// The fsync of this persist batch completes.
    Fsync(u64),
}

/// What a simulated node reports.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RaftNote {
    /// This batch is now durable (the cluster copies it into the slot's durable store).
    Synced(PersistBatch),
    /// The state machine was replaced by a snapshot covering everything up to `index`.
    Restored {
        /// The snapshot's last index.
        index: u64,
    },
    /// Read `id` was served with this value.
    ReadDone {
        /// The read.
        id: u64,
        /// The value of its key.
        value: Option<Vec<u8>>,
    },
    /// Read `id` could not be confirmed (leadership lost).
    ReadFailed {
        /// The read.
        id: u64,
    },
    /// This committed entry was applied with this result.
    Applied {
        /// The entry.
        entry: Entry,
        /// What the state machine returned (empty for a no-op).
        result: Vec<u8>,
    },
}

/// Commands for a simulated node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RaftCommand {
    /// Propose a command (fails unless leader).
    Propose {
        /// Proposal id.
        id: u64,
        /// The command.
        command: Vec<u8>,
    },
    /// A linearizable read of `key` through ReadIndex (fails unless leader).
    Read {
        /// Read id.
        id: u64,
        /// The key.
        key: String,
    },
}

/// One simulated voter: the Raft machine, its unsynced writes and its state machine.
#[derive(Debug)]
pub struct RaftNode {
    raft: Raft,
    fsync_delay: Duration,
    now: Instant,
    unsynced: VecDeque<PersistBatch>,
    state: ClusterState,
    effects: VecDeque<Effect<RaftTimer, RaftNote>>,
    /// Reads waiting for confirmation: id -> key.
    reads_waiting: BTreeMap<u64, String>,
    /// Confirmed reads waiting for the apply index: (id, key, read index).
    reads_ready: Vec<(u64, String, u64)>,
}

impl RaftNode {
    /// The Raft machine.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The replicated state as applied on this node.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    fn pump(&mut self) {
        while let Some(output) = self.raft.poll_output() {
            match output {
                Output::Persist(batch) => {
                    self.effects.push_back(Effect::SetTimer {
                        timer: RaftTimer::Fsync(batch.batch),
                        at: self.now + self.fsync_delay,
                    });
                    self.unsynced.push_back(batch);
                }
                Output::Send { to, msg } => match consensus::encode(&msg) {
                    Ok(bytes) => self.effects.push_back(Effect::Send {
                        to: voter_addr(to),
                        bytes,
                    }),
                    Err(e) => debug_assert!(false, "unencodable message {msg:?}: {e}"),
                },
                Output::SetTimer { timer, at } => self.effects.push_back(Effect::SetTimer {
                    timer: RaftTimer::Raft(timer),
                    at,
                }),
                Output::ReadReady { id, index } => {
                    if let Some(key) = self.reads_waiting.remove(&id) {
                        self.reads_ready.push((id, key, index));
                    }
                }
                Output::ReadFailed { id, .. } => {
                    self.reads_waiting.remove(&id);
                    self.effects
                        .push_back(Effect::Notify(RaftNote::ReadFailed { id }));
                }
                Output::RestoreSnapshot(snapshot) => {
                    let restored = self.state.restore(&snapshot.data);
                    debug_assert!(restored.is_ok(), "a leader's snapshot restores");
                    self.effects.push_back(Effect::Notify(RaftNote::Restored {
                        index: snapshot.index,
                    }));
                }
                Output::Apply(entries) => {
                    for entry in entries {
                        let result = match &entry.payload {
                            Payload::Noop => Vec::new(),
                            Payload::Command { bytes, .. } => self.state.apply(entry.index, bytes),
                        };
                        self.effects
                            .push_back(Effect::Notify(RaftNote::Applied { entry, result }));
                    }
                }
            }
        }
    }

    fn input(&mut self, now: Instant, input: Input) -> Result<(), String> {
        self.now = now;
        let result = self.raft.handle(now, input);
        self.pump();
        let applied = self.raft.applied_index();
        let kv = self.state.kv();
        let effects = &mut self.effects;
        self.reads_ready.retain(|(id, key, index)| {
            if *index > applied {
                return true;
            }
            let value = kv.get(key).map(<[u8]>::to_vec);
            effects.push_back(Effect::Notify(RaftNote::ReadDone { id: *id, value }));
            false
        });
        if applied >= self.raft.first_index() + COMPACT_EVERY_ENTRIES {
            // A state too large to snapshot keeps its log (never an empty snapshot).
            let Ok(data) = self.state.snapshot() else {
                return result.map_err(|e| e.to_string());
            };
            let compacted = self.raft.handle(
                now,
                Input::Compact {
                    index: applied,
                    data,
                },
            );
            debug_assert!(
                compacted.is_ok(),
                "compaction at the applied index: {compacted:?}"
            );
            self.pump();
        }
        result.map_err(|e| e.to_string())
    }
}

/// The address of voter `id` (voter `i` lives in slot `i`).
pub fn voter_addr(id: VoterId) -> SocketAddr {
    node_addr(usize::try_from(id.0).unwrap_or(usize::MAX))
}

fn voter_of(addr: SocketAddr) -> Option<VoterId> {
    let [_, _, x, y] = match addr.ip() {
        std::net::IpAddr::V4(ip) => ip.octets(),
        std::net::IpAddr::V6(_) => return None,
    };
    let y = u64::from(y).checked_sub(1)?;
    Some(VoterId(u64::from(x) * 250 + y))
}

impl Machine for RaftNode {
    type Timer = RaftTimer;
    type Notify = RaftNote;
    type Command = RaftCommand;
    type Error = String;

    fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), String> {
        let from = voter_of(from).ok_or("unknown address")?;
        let msg = consensus::decode(bytes).map_err(|e| e.to_string())?;
        self.input(now, Input::Message { from, msg })
    }

    fn handle_timer(&mut self, now: Instant, timer: RaftTimer) -> Result<(), String> {
        match timer {
            RaftTimer::Raft(timer) => self.input(now, Input::Timer(timer)),
            RaftTimer::Fsync(batch) => {
                // Batches complete in order; this one and everything before it are durable.
                while self.unsynced.front().is_some_and(|b| b.batch <= batch) {
                    if let Some(done) = self.unsynced.pop_front() {
                        self.effects
                            .push_back(Effect::Notify(RaftNote::Synced(done)));
                    }
                }
                self.input(now, Input::Persisted(batch))
            }
        }
    }

    fn handle_command(&mut self, now: Instant, command: RaftCommand) -> Result<(), String> {
        match command {
            RaftCommand::Propose { id, command } => self.input(now, Input::Propose { id, command }),
            RaftCommand::Read { id, key } => {
                if self.reads_waiting.len() + self.reads_ready.len() >= READS_PENDING_MAX {
                    return Err("too many reads".into());
                }
                self.reads_waiting.insert(id, key);
                let result = self.input(now, Input::ReadIndex { id });
                if result.is_err() {
                    self.reads_waiting.remove(&id);
                }
                result
            }
        }
    }

    fn poll_effect(&mut self) -> Option<Effect<RaftTimer, RaftNote>> {
        self.effects.pop_front()
    }
}

/// Knobs of one simulated cluster.
#[derive(Debug, Clone)]
pub struct RaftOptions {
    /// Voters (slots 0..voters).
    pub voters: usize,
    /// Raft settings.
    pub config: Config,
    /// Network faults.
    pub faults: FaultOptions,
    /// How long an fsync takes; writes not synced when a node crashes are lost.
    pub fsync_delay: Duration,
    /// How often the client proposes to the leader it knows.
    pub propose_interval: Duration,
}

impl RaftOptions {
    /// `voters` voters on a LAN with 1 ms fsyncs and a proposal every 20 ms.
    pub fn lan(voters: usize) -> Self {
        RaftOptions {
            voters,
            config: Config::lan(),
            faults: FaultOptions::lan(),
            fsync_delay: Duration::from_millis(1),
            propose_interval: Duration::from_millis(20),
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Terms that had a leader.
    pub leader_terms: usize,
    /// Entries committed.
    pub committed: usize,
    /// Proposals the client made that a leader accepted.
    pub proposals_accepted: u64,
    /// Proposals refused (no leader, or not the leader any more).
    pub proposals_refused: u64,
    /// Linearizable reads served.
    pub reads_served: u64,
    /// Reads that failed or were lost.
    pub reads_unanswered: u64,
    /// World steps.
    pub steps: u64,
    /// Snapshots installed from a leader (reported by nodes).
    pub snapshots_installed: u64,
    /// Log compactions by the running nodes.
    pub compactions: u64,
}

/// A Raft cluster under a workload, watched by the checkers. See the module docs.
#[derive(Debug)]
pub struct RaftSim {
    world: World<RaftNode>,
    options: RaftOptions,
    voters: BTreeSet<VoterId>,
    durable: Vec<PersistedState>,
    checker: RaftChecker,
    history: History,
    next_proposal: u64,
    next_propose_at: Instant,
    workload_on: bool,
    outcome: Outcome,
}

impl RaftSim {
    /// A cluster of `options.voters` voters, none started.
    pub fn new(seed: u64, options: RaftOptions) -> Result<Self, String> {
        options.config.validate().map_err(|e| e.to_string())?;
        let world = World::new(seed, options.voters, options.faults.clone())?;
        let voters = (0..options.voters as u64).map(VoterId).collect();
        Ok(RaftSim {
            world,
            voters,
            durable: vec![PersistedState::default(); options.voters],
            checker: RaftChecker::default(),
            history: History::default(),
            next_proposal: 1,
            next_propose_at: Instant::ZERO,
            workload_on: true,
            outcome: Outcome::default(),
            options,
        })
    }

    // ----- getters -----

    /// The world.
    pub fn world(&self) -> &World<RaftNode> {
        &self.world
    }

    /// The world, mutably (network faults, random draws).
    pub fn world_mut(&mut self) -> &mut World<RaftNode> {
        &mut self.world
    }

    /// The virtual time.
    pub fn now(&self) -> Instant {
        self.world.now()
    }

    /// The checkers' state.
    pub fn checker(&self) -> &RaftChecker {
        &self.checker
    }

    /// The Raft machine in slot `index`, if running.
    pub fn raft(&self, index: usize) -> Option<&Raft> {
        self.world.machine(index).map(RaftNode::raft)
    }

    /// Running slots.
    pub fn live(&self) -> Vec<usize> {
        (0..self.options.voters)
            .filter(|&i| self.world.is_running(i))
            .collect()
    }

    /// The client history of writes and reads.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// The running leader with the highest term, if any.
    pub fn leader(&self) -> Option<usize> {
        self.live()
            .into_iter()
            .filter(|&i| self.raft(i).is_some_and(Raft::is_leader))
            .max_by_key(|&i| self.raft(i).map_or(0, Raft::term))
    }

    /// What was durable in slot `index` (what a restart starts from).
    pub fn durable(&self, index: usize) -> &PersistedState {
        &self.durable[index]
    }

    /// Counters so far.
    pub fn outcome(&self) -> Outcome {
        Outcome {
            leader_terms: self.checker.leaders().len(),
            committed: self.checker.committed().len(),
            steps: self.world.stats().steps,
            reads_served: self.history.reads_served(),
            reads_unanswered: self.history.reads_unanswered(),
            compactions: self
                .live()
                .iter()
                .filter_map(|&i| self.raft(i))
                .map(|r| r.metrics().compactions)
                .sum(),
            ..self.outcome
        }
    }

    /// Turns the client workload on or off.
    pub fn set_workload(&mut self, on: bool) {
        self.workload_on = on;
    }

    fn violation(&self, checker: &'static str, detail: String) -> Violation {
        Violation {
            checker,
            at: self.now(),
            detail,
        }
    }

    // ----- lifecycle -----

    /// Starts (or restarts) slot `index` from its durable state.
    pub fn start(&mut self, index: usize) -> Result<(), Violation> {
        let persisted = self.durable[index].clone();
        let config = self.options.config.clone();
        let voters = self.voters.clone();
        let fsync_delay = self.options.fsync_delay;
        let snapshot_index = persisted.snapshot.as_ref().map_or(0, |s| s.index);
        let started = self.world.start(index, |info| {
            let mut state = ClusterState::default();
            if let Some(snapshot) = &persisted.snapshot {
                state.restore(&snapshot.data).map_err(|e| e.to_string())?;
            }
            let raft = Raft::restore(
                config,
                VoterId(index as u64),
                voters,
                persisted,
                info.rng_seed,
                info.now,
            )
            .map_err(|e| e.to_string())?;
            let mut node = RaftNode {
                raft,
                fsync_delay,
                now: info.now,
                unsynced: VecDeque::new(),
                state,
                effects: VecDeque::new(),
                reads_waiting: BTreeMap::new(),
                reads_ready: Vec::new(),
            };
            node.pump();
            Ok::<_, String>(node)
        });
        let generation = started.map_err(|e| self.violation("start", e))?;
        let now = self.now();
        self.checker
            .on_restore(now, index, generation, snapshot_index)?;
        Ok(())
    }

    /// Starts every slot.
    pub fn start_all(&mut self) -> Result<(), Violation> {
        (0..self.options.voters).try_for_each(|i| self.start(i))
    }

    /// Crashes the slots at once: their unsynced writes are lost.
    pub fn crash(&mut self, indices: &[usize]) {
        for &index in indices {
            self.world.stop(index);
        }
    }

    /// Crashes slot `index` (if running) and starts it again from its durable state.
    pub fn restart(&mut self, index: usize) -> Result<(), Violation> {
        self.world.stop(index);
        self.start(index)
    }

    /// Removes every partition and stops random loss and duplication (latency stays).
    pub fn heal_network(&mut self) {
        self.world.network_mut().heal_all();
    }

    // ----- running -----

    /// Runs every event due by `deadline` with the workload, checking after every step.
    pub fn run_until(&mut self, deadline: Instant) -> Result<(), Violation> {
        for _ in 0..STEPS_PER_RUN_MAX {
            if self.workload_on && self.next_propose_at <= deadline {
                let due = self
                    .world
                    .next_event_time()
                    .is_none_or(|t| t >= self.next_propose_at);
                if due {
                    self.world.advance_to(self.next_propose_at.max(self.now()));
                    self.propose_once();
                    self.next_propose_at = self.now() + self.options.propose_interval;
                    continue;
                }
            }
            if self.world.next_event_time().is_none_or(|t| t > deadline) {
                self.world.advance_to(deadline);
                return Ok(());
            }
            self.world.step();
            self.after_step()?;
        }
        Err(self.violation("run_until", format!("more than {STEPS_PER_RUN_MAX} steps")))
    }

    /// Runs for `span` of virtual time.
    pub fn run_for(&mut self, span: Duration) -> Result<(), Violation> {
        let deadline = self.now() + span;
        self.run_until(deadline)
    }

    /// Proposes `command` to slot `index` (which must believe it leads), outside the workload.
    /// Returns the proposal id, or `None` when the node refused it (not the leader).
    pub fn propose(&mut self, index: usize, command: Vec<u8>) -> Result<Option<u64>, Violation> {
        let id = self.next_proposal;
        self.next_proposal += 1;
        let accepted = self
            .world
            .command(index, RaftCommand::Propose { id, command })
            .is_ok();
        // Commands run outside `step`; their effects are checked like one.
        self.after_step()?;
        Ok(accepted.then_some(id))
    }

    fn propose_once(&mut self) {
        // The client may hold stale leader information: any node that believes it leads.
        let leaders: Vec<usize> = self
            .live()
            .into_iter()
            .filter(|&i| self.raft(i).is_some_and(Raft::is_leader))
            .collect();
        if leaders.is_empty() {
            self.outcome.proposals_refused += 1;
            return;
        }
        let leader = leaders[self.world.random_below(leaders.len() as u64) as usize];
        let id = self.next_proposal;
        self.next_proposal += 1;
        let key = format!("k{}", self.world.random_below(WORKLOAD_KEYS));
        if self.world.random_below(3) == 0 {
            let now = self.now();
            self.history.read_invoked(id, key.clone(), now);
            let _ = self.world.command(leader, RaftCommand::Read { id, key });
            let _ = self.after_step();
            return;
        }
        let value = id.to_le_bytes().to_vec();
        let command = match self.world.random_below(3) {
            0 => KvCommand::Put { key, value },
            1 => KvCommand::Get { key },
            _ => KvCommand::Cas {
                key,
                expected: None,
                new: value,
            },
        };
        let now = self.now();
        let Ok(command) = ClusterCommand::new(now, ClusterOp::Kv(command)).encode() else {
            debug_assert!(false, "workload command does not encode");
            return;
        };
        let now = self.now();
        let generation = self.world.generation(leader);
        match self
            .world
            .command(leader, RaftCommand::Propose { id, command })
        {
            Ok(()) => {
                self.outcome.proposals_accepted += 1;
                self.history.write_invoked(id, leader, generation, now);
            }
            Err(_) => self.outcome.proposals_refused += 1,
        }
        // Commands run outside `step`; their effects (a persist, sends) are checked like one.
        let _ = self.after_step();
    }

    fn after_step(&mut self) -> Result<(), Violation> {
        let now = self.now();
        for note in self.world.take_notifications() {
            match note.notify {
                RaftNote::Synced(batch) => self.durable[note.index].apply(&batch),
                RaftNote::Restored { index } => {
                    self.outcome.snapshots_installed += 1;
                    self.checker
                        .on_restore(now, note.index, note.generation, index)?;
                }
                RaftNote::ReadDone { id, value } => self.history.read_done(id, value, now),
                RaftNote::ReadFailed { .. } => {}
                RaftNote::Applied { entry, result } => {
                    if let Payload::Command { id, .. } = entry.payload {
                        self.history.applied(id, note.index, note.generation, now);
                    }
                    self.checker
                        .on_apply(now, note.index, note.generation, &entry, &result)?;
                }
            }
        }
        let nodes = observed(&self.world);
        self.checker.on_step(now, &nodes)
    }

    /// After faults healed: a leader is elected and commits a fresh entry (a client marker,
    /// proposed again under a new id every election timeout until one commits, as a client
    /// would retry) within `deadline`, every running node applies everything committed exactly
    /// once, and the final checker pass holds. Returns when that was reached.
    pub fn run_until_converged(&mut self, deadline: Instant) -> Result<Instant, Violation> {
        let step = self.options.config.heartbeat_interval;
        let retry = self.options.config.election_timeout_min;
        let mut markers = BTreeSet::new();
        let mut last_try: Option<Instant> = None;
        self.set_workload(false);
        loop {
            let marker_committed = markers
                .iter()
                .any(|id| self.checker.committed_ids().contains(id));
            if marker_committed && self.converged() {
                let now = self.now();
                let nodes = observed(&self.world);
                self.checker.final_pass(now, &nodes)?;
                self.history
                    .check_linearizable(now, self.checker.committed())?;
                return Ok(now);
            }
            let retry_due = last_try.is_none_or(|t| self.now() >= t + retry);
            if !marker_committed
                && retry_due
                && let Some(leader) = self.leader()
            {
                let id = self.next_proposal;
                self.next_proposal += 1;
                let marker = KvCommand::Put {
                    key: "converged".into(),
                    value: id.to_le_bytes().to_vec(),
                };
                let command = ClusterCommand::new(self.now(), ClusterOp::Kv(marker))
                    .encode()
                    .map_err(|e| self.violation("converge", e.to_string()))?;
                if self
                    .world
                    .command(leader, RaftCommand::Propose { id, command })
                    .is_ok()
                {
                    markers.insert(id);
                    last_try = Some(self.now());
                }
            }
            if self.now() >= deadline {
                let detail = format!(
                    "not converged: committed {} entries, a marker committed: {marker_committed}, \
                     leader {:?}, live {:?} (role, term, commit, last index) {:?}, applied {:?}",
                    self.checker.committed().len(),
                    self.leader(),
                    self.live(),
                    self.live()
                        .iter()
                        .filter_map(|&i| self.raft(i))
                        .map(|r| (r.role(), r.term(), r.commit_index(), r.last_index()))
                        .collect::<Vec<_>>(),
                    self.live()
                        .iter()
                        .map(|&i| self.checker.applied_by(i, self.world.generation(i)))
                        .collect::<Vec<_>>()
                );
                return Err(self.violation("converge", detail));
            }
            self.run_for(step)?;
        }
    }

    fn converged(&self) -> bool {
        let Some(leader) = self.leader() else {
            return false;
        };
        let Some(commit) = self.raft(leader).map(Raft::commit_index) else {
            return false;
        };
        let leaders = self
            .live()
            .into_iter()
            .filter(|&i| self.raft(i).is_some_and(Raft::is_leader))
            .count();
        leaders == 1
            && self
                .checker
                .committed()
                .last_key_value()
                .is_some_and(|(&i, _)| i >= commit)
            && self
                .live()
                .into_iter()
                .all(|i| self.checker.applied_by(i, self.world.generation(i)) == commit)
    }
}

fn observed(world: &World<RaftNode>) -> Vec<Observed<'_>> {
    (0..world.node_count())
        .filter_map(|index| {
            Some(Observed {
                index,
                generation: world.generation(index),
                raft: world.machine(index)?.raft(),
            })
        })
        .collect()
}
