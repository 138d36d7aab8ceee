//! The membership layer of the simulator: a cluster of SWIM machines in a [`World`], and
//! [`SwimSim`], the harness that drives it with faults while the checkers watch.
//!
//! Owns: the [`Machine`] adapter for [`Membership`], node identities (slot address + world
//! generation), bootstrapping through seeds, crash / restart / graceful leave of a node, and the
//! wiring of notifications into the checkers after every step.
//! Inputs: scenario calls (`bootstrap`, `crash`, `restart`, `leave`, `run_until...`).
//! Outputs: [`Violation`]s, detection records, false-positive records and counters.
//! Must never: reach into a machine's internals (only its public observers), advance time other
//! than through the world, or run a loop without a step bound.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use idunno_core::membership::{
    Config, Error as SwimError, Event, Input, Membership, NodeId, Output, Timer,
};
use idunno_core::time::Instant;

use crate::checker::{
    self, Departure, FalsePositiveChecker, RemovalChecker, Violation, removal_bound,
};
use crate::machine::{Effect, Machine};
use crate::network::FaultOptions;
use crate::world::{Notification, World, node_addr};

/// How many of the first slots serve as seeds for joins.
pub const SEEDS_COUNT: usize = 3;
/// Most world steps one `run_until` call may take (a guard against a runaway scenario).
pub const STEPS_PER_RUN_MAX: u64 = 1 << 32;
/// Granularity of the "until converged / until removed" loops.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Operator commands for a membership node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SwimCommand {
    /// Join through these seed addresses.
    Join(Vec<SocketAddr>),
    /// Leave gracefully.
    Leave,
    /// Probe this member out of turn (the runtime's hint when a worker's connection closes).
    ProbeSoon(NodeId),
}

impl Machine for Membership {
    type Timer = Timer;
    type Notify = Event;
    type Command = SwimCommand;
    type Error = SwimError;

    fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), SwimError> {
        self.handle(now, Input::Datagram { from, bytes })
    }

    fn handle_timer(&mut self, now: Instant, timer: Timer) -> Result<(), SwimError> {
        self.handle(now, Input::Timer(timer))
    }

    fn handle_command(&mut self, now: Instant, command: SwimCommand) -> Result<(), SwimError> {
        match command {
            SwimCommand::Join(seeds) => self.handle(now, Input::Join { seeds }),
            SwimCommand::Leave => self.handle(now, Input::Leave),
            SwimCommand::ProbeSoon(node) => self.handle(now, Input::ProbeSoon(node)),
        }
    }

    fn poll_effect(&mut self) -> Option<Effect<Timer, Event>> {
        self.poll_output().map(|output| match output {
            Output::Send { to, bytes } => Effect::Send { to, bytes },
            Output::SetTimer { timer, at } => Effect::SetTimer { timer, at },
            Output::Event(event) => Effect::Notify(event),
        })
    }
}

/// A cluster of membership machines in one world. See the module docs.
#[derive(Debug)]
pub struct SwimCluster {
    world: World<Membership>,
    config: Config,
    seeds: Vec<SocketAddr>,
}

impl SwimCluster {
    /// `node_count` slots, none started; the first [`SEEDS_COUNT`] are the seeds.
    pub fn new(
        seed: u64,
        node_count: usize,
        config: Config,
        faults: FaultOptions,
    ) -> Result<Self, String> {
        config.validate().map_err(|e| e.to_string())?;
        let world = World::new(seed, node_count, faults)?;
        let seeds = (0..node_count.min(SEEDS_COUNT)).map(node_addr).collect();
        Ok(SwimCluster {
            world,
            config,
            seeds,
        })
    }

    /// The world (clock, network, counters).
    pub fn world(&self) -> &World<Membership> {
        &self.world
    }

    /// The world, mutably (to partition, heal, or step by hand).
    pub fn world_mut(&mut self) -> &mut World<Membership> {
        &mut self.world
    }

    /// The membership config every node runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Number of slots.
    pub fn node_count(&self) -> usize {
        self.world.node_count()
    }

    /// Starts slot `index` as a new generation and tells it to join through the seeds.
    pub fn start(&mut self, index: usize) -> Result<NodeId, String> {
        let config = self.config.clone();
        let generation = self.world.start(index, |info| {
            Membership::new(
                config,
                NodeId::new(info.addr, info.generation),
                info.rng_seed,
                info.now,
            )
        })?;
        self.world
            .command(index, SwimCommand::Join(self.seeds.clone()))?;
        Ok(NodeId::new(node_addr(index), generation))
    }

    /// Drops the instance in slot `index`; returns who it was.
    pub fn crash(&mut self, index: usize) -> Option<NodeId> {
        let id = self.id(index)?;
        self.world.stop(index);
        Some(id)
    }

    /// Tells slot `index` to leave gracefully.
    pub fn leave(&mut self, index: usize) -> Result<(), String> {
        self.world.command(index, SwimCommand::Leave)
    }

    /// Tells slot `index` that `about` may be gone (a probe out of turn, as the runtime does
    /// when a worker's connection to that node closes).
    pub fn hint(&mut self, index: usize, about: NodeId) -> Result<(), String> {
        self.world.command(index, SwimCommand::ProbeSoon(about))
    }

    /// The running instance's identity in slot `index`.
    pub fn id(&self, index: usize) -> Option<NodeId> {
        self.world
            .machine(index)
            .map(|_| NodeId::new(node_addr(index), self.world.generation(index)))
    }

    /// The running instance in slot `index`.
    pub fn node(&self, index: usize) -> Option<&Membership> {
        self.world.machine(index)
    }

    /// The running instance with identity `id` (not an older or newer generation).
    pub fn node_by_id(&self, id: NodeId) -> Option<&Membership> {
        let index = self.world.index_of(id.addr)?;
        self.node(index).filter(|m| m.me() == id)
    }

    /// Whether slot `index` runs and is not leaving.
    pub fn is_live(&self, index: usize) -> bool {
        self.node(index).is_some_and(|m| !m.is_leaving())
    }

    /// Slots that run and are not leaving, ascending.
    pub fn live_indices(&self) -> Vec<usize> {
        (0..self.node_count())
            .filter(|&i| self.is_live(i))
            .collect()
    }

    /// Identities of the live nodes.
    pub fn live_ids(&self) -> BTreeSet<NodeId> {
        self.live_indices()
            .into_iter()
            .filter_map(|i| self.id(i))
            .collect()
    }
}

/// Counts of every membership event reported, all nodes together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventTally {
    /// `Joined`.
    pub joined: u64,
    /// `Suspect`.
    pub suspect: u64,
    /// `Refuted`.
    pub refuted: u64,
    /// `Failed`.
    pub failed: u64,
    /// `Left`.
    pub left: u64,
    /// `SelfLeft`.
    pub self_left: u64,
}

impl EventTally {
    fn count(&mut self, event: Event) {
        match event {
            Event::Joined(_) => self.joined += 1,
            Event::Suspect(_) => self.suspect += 1,
            Event::Refuted(_) => self.refuted += 1,
            Event::Failed(_) => self.failed += 1,
            Event::Left(_) => self.left += 1,
            Event::SelfLeft => self.self_left += 1,
        }
    }
}

/// A membership cluster under test with its checkers. See the module docs.
#[derive(Debug)]
pub struct SwimSim {
    cluster: SwimCluster,
    removal: RemovalChecker,
    false_positives: FalsePositiveChecker,
    tally: EventTally,
    removal_bound: Duration,
}

impl SwimSim {
    /// A cluster of `node_count` slots, none started yet.
    pub fn new(
        seed: u64,
        node_count: usize,
        config: Config,
        faults: FaultOptions,
    ) -> Result<Self, String> {
        let removal_bound = removal_bound(&config, node_count);
        Ok(SwimSim {
            cluster: SwimCluster::new(seed, node_count, config, faults)?,
            removal: RemovalChecker::default(),
            false_positives: FalsePositiveChecker::default(),
            tally: EventTally::default(),
            removal_bound,
        })
    }

    /// The cluster.
    pub fn cluster(&self) -> &SwimCluster {
        &self.cluster
    }

    /// The cluster, mutably (network faults; use the harness's own methods for node lifecycle).
    pub fn cluster_mut(&mut self) -> &mut SwimCluster {
        &mut self.cluster
    }

    /// The virtual time.
    pub fn now(&self) -> Instant {
        self.cluster.world.now()
    }

    /// The removal checker (detection records).
    pub fn removal(&self) -> &RemovalChecker {
        &self.removal
    }

    /// The false-positive checker.
    pub fn false_positives(&self) -> &FalsePositiveChecker {
        &self.false_positives
    }

    /// Every event counted so far.
    pub fn tally(&self) -> EventTally {
        self.tally
    }

    /// The removal deadline after a departure.
    pub fn removal_bound(&self) -> Duration {
        self.removal_bound
    }

    /// Overrides the removal deadline for departures from now on.
    pub fn set_removal_bound(&mut self, bound: Duration) {
        self.removal_bound = bound;
    }

    /// Digest of everything that happened (see [`World::trace_digest`]).
    pub fn trace_digest(&self) -> u64 {
        self.cluster.world.trace_digest()
    }

    // ----- lifecycle -----

    /// Starts every slot, the seeds first, the rest spread over `spread`, then runs until every
    /// view agrees (or `deadline`).
    pub fn bootstrap(&mut self, spread: Duration, deadline: Instant) -> Result<Instant, Violation> {
        let n = self.cluster.node_count();
        let step = spread / u32::try_from(n.max(1)).unwrap_or(u32::MAX);
        for index in 0..n {
            if index > 0 {
                let next = self.now() + step;
                self.run_until(next)?;
            }
            self.cluster
                .start(index)
                .map_err(|e| self.violation("bootstrap", e))?;
        }
        self.run_until_converged(deadline)
    }

    /// Crashes every slot in `indices` at once.
    pub fn crash(&mut self, indices: &[usize]) -> Result<Vec<NodeId>, Violation> {
        let now = self.now();
        let mut crashed = Vec::with_capacity(indices.len());
        for &index in indices {
            let id = self
                .cluster
                .crash(index)
                .ok_or_else(|| self.violation("crash", format!("slot {index} is not running")))?;
            self.removal.on_observer_gone(now, id);
            crashed.push(id);
        }
        for &id in &crashed {
            let observers = self.observers_of(id);
            self.removal
                .on_departure(now, id, Departure::Crash, observers, self.removal_bound);
        }
        Ok(crashed)
    }

    /// Crashes slot `index` and starts it again at once as a new generation that rejoins.
    pub fn restart(&mut self, index: usize) -> Result<NodeId, Violation> {
        if self.cluster.node(index).is_some() {
            self.crash(&[index])?;
        }
        self.cluster
            .start(index)
            .map_err(|e| self.violation("restart", e))
    }

    /// Starts a crashed or never-started slot.
    pub fn start(&mut self, index: usize) -> Result<NodeId, Violation> {
        self.cluster
            .start(index)
            .map_err(|e| self.violation("start", e))
    }

    /// Tells slot `index` to leave gracefully; it is stopped when it reports `SelfLeft`.
    pub fn leave(&mut self, index: usize) -> Result<NodeId, Violation> {
        let now = self.now();
        let id = self
            .cluster
            .id(index)
            .ok_or_else(|| self.violation("leave", format!("slot {index} is not running")))?;
        self.cluster
            .leave(index)
            .map_err(|e| self.violation("leave", e))?;
        self.removal.on_observer_gone(now, id);
        let observers = self.observers_of(id);
        self.removal
            .on_departure(now, id, Departure::Leave, observers, self.removal_bound);
        Ok(id)
    }

    /// Tells slot `index` that `about` may be gone: a probe out of turn, never a verdict.
    pub fn hint(&mut self, index: usize, about: NodeId) -> Result<(), Violation> {
        self.cluster
            .hint(index, about)
            .map_err(|e| self.violation("hint", e))
    }

    /// Live nodes whose view holds `id`.
    fn observers_of(&self, id: NodeId) -> BTreeSet<NodeId> {
        self.cluster
            .live_indices()
            .into_iter()
            .filter_map(|i| self.cluster.node(i))
            .filter(|m| m.state_of(id).is_some_and(|s| s.is_live()))
            .map(|m| m.me())
            .collect()
    }

    /// Removes every partition and stops random loss and duplication (latency stays).
    pub fn heal_network(&mut self) {
        self.cluster.world.network_mut().heal_all();
    }

    // ----- running -----

    /// Runs every event due by `deadline`, feeding the checkers after every step.
    pub fn run_until(&mut self, deadline: Instant) -> Result<(), Violation> {
        for _ in 0..STEPS_PER_RUN_MAX {
            let due = self
                .cluster
                .world
                .next_event_time()
                .is_some_and(|t| t <= deadline);
            if !due {
                self.cluster.world.advance_to(deadline);
                return self.removal.check_deadlines(self.now());
            }
            self.cluster.world.step();
            if self.cluster.world.has_notifications() {
                self.process_notifications();
            }
            if self.removal.next_deadline().is_some_and(|d| self.now() > d) {
                self.removal.check_deadlines(self.now())?;
            }
        }
        Err(self.violation("run_until", format!("more than {STEPS_PER_RUN_MAX} steps")))
    }

    /// Runs for `span` of virtual time.
    pub fn run_for(&mut self, span: Duration) -> Result<(), Violation> {
        let deadline = self.now() + span;
        self.run_until(deadline)
    }

    /// Runs until every live view is exactly the set of live nodes; fails at `deadline`.
    pub fn run_until_converged(&mut self, deadline: Instant) -> Result<Instant, Violation> {
        loop {
            if checker::views_agree(&self.cluster) {
                return Ok(self.now());
            }
            if self.now() >= deadline {
                checker::check_views_agree(&self.cluster)?;
                return Ok(self.now());
            }
            let next = (self.now() + POLL_INTERVAL).min(deadline);
            self.run_until(next)?;
        }
    }

    /// Runs until views agree and no live node suspects another (suspicions raised under loss
    /// were refuted or resolved); fails at `deadline`.
    pub fn run_until_settled(&mut self, deadline: Instant) -> Result<Instant, Violation> {
        loop {
            if checker::views_agree(&self.cluster) && checker::no_suspects(&self.cluster) {
                return Ok(self.now());
            }
            if self.now() >= deadline {
                checker::check_views_agree(&self.cluster)?;
                return Err(self.violation(
                    "views_agree",
                    "some live node still suspects a live node at the deadline".to_owned(),
                ));
            }
            let next = (self.now() + POLL_INTERVAL).min(deadline);
            self.run_until(next)?;
        }
    }

    /// Runs until every departed node has left every live view; fails at `deadline` or when a
    /// removal bound passes.
    pub fn run_until_removed(&mut self, deadline: Instant) -> Result<Instant, Violation> {
        loop {
            if self.removal.all_removed() {
                self.removal.check_views(&self.cluster)?;
                return Ok(self.now());
            }
            if self.now() >= deadline {
                return Err(self.violation(
                    "crashed_node_removed",
                    format!(
                        "{} departure(s) still in some view at the scenario deadline",
                        self.removal.open().count()
                    ),
                ));
            }
            let next = (self.now() + POLL_INTERVAL).min(deadline);
            self.run_until(next)?;
        }
    }

    /// The final pass: removals complete and confirmed from outside, and views agree.
    pub fn check_quiescent(&self) -> Result<(), Violation> {
        self.removal.check_deadlines(self.now())?;
        self.removal.check_views(&self.cluster)?;
        checker::check_views_agree(&self.cluster)
    }

    fn process_notifications(&mut self) {
        let notes = self.cluster.world.take_notifications();
        for note in &notes {
            self.tally.count(note.notify);
            let observer = NodeId::new(node_addr(note.index), note.generation);
            if note.notify == Event::SelfLeft {
                self.stop_left(note);
                continue;
            }
            self.removal.on_notify(observer, note);
            self.false_positives
                .on_notify(observer, note, &self.cluster);
        }
    }

    /// A node finished its graceful leave: the driver stops it, as the runtime would.
    fn stop_left(&mut self, note: &Notification<Event>) {
        let current = self.cluster.world.generation(note.index) == note.generation;
        if current {
            self.cluster.world.stop(note.index);
        }
    }

    fn violation(&self, checker: &'static str, detail: String) -> Violation {
        Violation {
            checker,
            at: self.now(),
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim(seed: u64, n: usize, faults: FaultOptions) -> SwimSim {
        let mut sim = SwimSim::new(seed, n, Config::lan(), faults).expect("valid");
        sim.bootstrap(Duration::from_millis(100), Instant::from_micros(30_000_000))
            .expect("bootstraps");
        sim
    }

    #[test]
    fn small_cluster_converges_and_detects_a_crash() {
        let mut sim = sim(1, 5, FaultOptions::lan());
        let crashed = sim.crash(&[4]).expect("crash");
        let deadline = sim.now() + Duration::from_secs(60);
        sim.run_until_removed(deadline).expect("removed");
        sim.check_quiescent().expect("quiescent");
        let removal = sim.removal().removal(crashed[0]).expect("tracked");
        assert!(removal.first_at.is_some() && removal.all_at.is_some());
        assert_eq!(sim.false_positives().records().len(), 0);
    }

    #[test]
    fn replay_is_exact() {
        let run = |seed| {
            let mut s = sim(seed, 4, FaultOptions::lossy(5.0));
            s.crash(&[3]).expect("crash");
            s.run_for(Duration::from_secs(5)).expect("runs");
            s.trace_digest()
        };
        assert_eq!(run(9), run(9));
        assert_ne!(run(9), run(10));
    }
}
