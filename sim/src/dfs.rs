//! The file-system layer of the simulator: storage nodes with disks, clients that put, get and
//! delete, a leader that re-replicates, and the namespace of `idunno_core::dfs` applied through
//! a metadata log, all watched by [`crate::dfs_checker::DfsChecker`] after every tick.
//!
//! Owns: [`DfsSim`] (the model and its fault hooks), [`MetadataLog`] with its two backends
//! ([`Sequencer`]: one in-process [`ClusterState`], fast, for many seeds; [`RaftLog`]: the real
//! Raft cluster of [`crate::raft`], so the namespace goes through consensus with leader
//! crashes), and [`DfsOptions`] (the transfer-time model and the workload).
//! The model, in ticks of [`DfsOptions::tick`]:
//! - a *disk* holds blobs by hash; a transfer (upload or repair copy) lands on it atomically at
//!   its completion time `latency + size / bandwidth + fsync` (temp file, fsync, rename), so a
//!   crash keeps exactly what completed. A disk's value is the hash of the bytes really stored:
//!   a corrupted copy holds a different hash.
//! - a client's put places replicas (least loaded live nodes, [`idunno_core::dfs::placement`]),
//!   uploads to all of them, and only when every one has it on disk proposes `Commit`; the put
//!   is *acknowledged* when the answer comes back through the log (retried with the same
//!   [`RequestId`] until it does). A failed upload is retried with a new placement.
//! - a get reads the newest version from any reachable replica whose bytes hash right, reports a
//!   bad copy with `ReplicaLost` and falls back to the next.
//! - membership detects a crashed or cut-off node after [`DfsOptions::detect_delay`]; the
//!   leader then proposes `NodeFailed`. A node that comes back after being declared failed
//!   rejoins as a new generation (its old copies are orphans).
//! - the leader plans repairs ([`idunno_core::dfs::repair`]) every tick, bounded by
//!   [`DfsOptions::max_parallel`], copies, and proposes `ReplicaAdded` when a copy is on disk;
//!   a scrubber on every node reports corrupt copies.
//!   Transfers do not share bandwidth (each runs at the full rate); garbage is not deleted.
//! - the last [`DfsOptions::storeless`] nodes have no blob store: they never announce one and
//!   refuse every transfer; the others announce `StoreReady` for each generation (retried until
//!   applied). Placement and repair choose announced stores only (every live node while none
//!   has announced, so a refused upload is placed again), and a check after every tick says no
//!   storage-less node is ever listed as a replica.
//!
//! Must never: read the wall clock, draw randomness from anything but the seed, iterate a hash
//! map, or let a write count before it is on disk.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use idunno_core::cluster::{ClusterCommand, ClusterOp, ClusterState};
use idunno_core::dfs::placement::{Candidate, place};
use idunno_core::dfs::repair::{Repair, plan_repairs};
use idunno_core::dfs::{ContentHash, DfsCommand, DfsConfig, DfsResult, RequestId};
use idunno_core::membership::NodeId;
use idunno_core::time::Instant;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::checker::Violation;
use crate::dfs_checker::{Ack, DfsChecker};
use crate::raft::{RaftCommand, RaftSim};

/// Most ticks one `run_until` may take.
pub const TICKS_PER_RUN_MAX: u64 = 1 << 24;
/// Proposal ids of the file-system layer start here (apart from any workload's).
const PROPOSAL_ID_BASE: u64 = 1 << 40;

/// The metadata log a [`DfsSim`] proposes through.
pub trait MetadataLog {
    /// Runs the log up to `now`, checking its own invariants.
    fn advance_to(&mut self, now: Instant) -> Result<(), Violation>;
    /// Proposes `op` stamped `now` through the current leader; false when none accepts it.
    fn propose(&mut self, now: Instant, op: ClusterOp) -> bool;
    /// The state as the current leader applied it (`None`: no leader now).
    fn leader_state(&self) -> Option<&ClusterState>;
    /// Every running replica's applied state.
    fn states(&self) -> Vec<&ClusterState>;
    /// The state that has applied the most (the final checks read it).
    fn most_applied(&self) -> Option<&ClusterState>;
}

/// A single in-process state: every proposal applies at once, in proposal order.
#[derive(Debug, Default)]
pub struct Sequencer {
    state: ClusterState,
}

impl MetadataLog for Sequencer {
    fn advance_to(&mut self, _now: Instant) -> Result<(), Violation> {
        Ok(())
    }

    fn propose(&mut self, now: Instant, op: ClusterOp) -> bool {
        let _ = self.state.execute(ClusterCommand::new(now, op));
        true
    }

    fn leader_state(&self) -> Option<&ClusterState> {
        Some(&self.state)
    }

    fn states(&self) -> Vec<&ClusterState> {
        vec![&self.state]
    }

    fn most_applied(&self) -> Option<&ClusterState> {
        Some(&self.state)
    }
}

/// The namespace replicated by a simulated Raft cluster ([`RaftSim`], its workload off).
#[derive(Debug)]
pub struct RaftLog {
    sim: RaftSim,
    next_id: u64,
}

impl RaftLog {
    /// Wraps a started cluster and turns its key-value workload off.
    pub fn new(mut sim: RaftSim) -> Self {
        sim.set_workload(false);
        RaftLog {
            sim,
            next_id: PROPOSAL_ID_BASE,
        }
    }

    /// The Raft cluster (to crash and restart voters).
    pub fn raft(&mut self) -> &mut RaftSim {
        &mut self.sim
    }
}

impl MetadataLog for RaftLog {
    fn advance_to(&mut self, now: Instant) -> Result<(), Violation> {
        if now > self.sim.now() {
            self.sim.run_until(now)?;
        }
        Ok(())
    }

    fn propose(&mut self, now: Instant, op: ClusterOp) -> bool {
        let Some(leader) = self.sim.leader() else {
            return false;
        };
        let Ok(command) = ClusterCommand::new(now, op).encode() else {
            return false;
        };
        // Every try gets a fresh id: the namespace, not the log, deduplicates retries.
        let id = self.next_id;
        self.next_id += 1;
        self.sim
            .world_mut()
            .command(leader, RaftCommand::Propose { id, command })
            .is_ok()
    }

    fn leader_state(&self) -> Option<&ClusterState> {
        let leader = self.sim.leader()?;
        self.sim.world().machine(leader).map(|n| n.state())
    }

    fn states(&self) -> Vec<&ClusterState> {
        self.sim
            .live()
            .into_iter()
            .filter_map(|i| self.sim.world().machine(i).map(|n| n.state()))
            .collect()
    }

    fn most_applied(&self) -> Option<&ClusterState> {
        use idunno_core::consensus::StateMachine;
        self.states().into_iter().max_by_key(|s| s.applied_index())
    }
}

/// Knobs of one file-system simulation.
#[derive(Debug, Clone)]
pub struct DfsOptions {
    /// Storage nodes.
    pub nodes: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Replication and retention.
    pub config: DfsConfig,
    /// Distinct file names the clients use.
    pub names: usize,
    /// Smallest file.
    pub file_bytes_min: u64,
    /// Largest file.
    pub file_bytes_max: u64,
    /// A client's pause between operations.
    pub think_time: Duration,
    /// Of 100 operations, how many are puts (the rest: gets, then `delete_percent` deletes).
    pub put_percent: u64,
    /// Of 100 operations, how many are deletes.
    pub delete_percent: u64,
    /// Link latency of a transfer.
    pub latency: Duration,
    /// Bytes per second of one transfer.
    pub bandwidth_bytes_per_s: u64,
    /// Time of the fsync that ends a transfer.
    pub fsync: Duration,
    /// Membership's time to declare a crashed or cut-off node failed.
    pub detect_delay: Duration,
    /// Most repair copies at once.
    pub max_parallel: usize,
    /// How often each node's scrubber re-hashes its blobs.
    pub scrub_interval: Duration,
    /// A client re-proposes an unanswered request after this long.
    pub retry_after: Duration,
    /// Simulation step.
    pub tick: Duration,
    /// How many of the nodes (the last ones) have no blob store; must leave at least one store.
    pub storeless: usize,
}

impl Default for DfsOptions {
    fn default() -> Self {
        DfsOptions {
            nodes: 10,
            clients: 3,
            config: DfsConfig::default(),
            names: 8,
            file_bytes_min: 64 << 10,
            file_bytes_max: 40 << 20,
            think_time: Duration::from_millis(50),
            put_percent: 55,
            delete_percent: 5,
            latency: Duration::from_micros(200),
            bandwidth_bytes_per_s: 125_000_000,
            fsync: Duration::from_millis(10),
            detect_delay: Duration::from_secs(1),
            max_parallel: 8,
            scrub_interval: Duration::from_secs(2),
            retry_after: Duration::from_millis(300),
            tick: Duration::from_millis(5),
            storeless: 0,
        }
    }
}

impl DfsOptions {
    /// Time one transfer of `size` bytes takes.
    pub fn transfer_time(&self, size: u64) -> Duration {
        let micros = size.saturating_mul(1_000_000) / self.bandwidth_bytes_per_s.max(1);
        self.latency + Duration::from_micros(micros) + self.fsync
    }
}

/// One storage node.
#[derive(Debug, Clone)]
pub struct StorageNode {
    /// Incarnation (a restart or a rejoin after being declared failed makes a new one).
    pub generation: u64,
    /// Running.
    pub up: bool,
    /// Cut off from every other node and client.
    pub partitioned: bool,
    /// Blobs on disk: wanted hash -> hash of the bytes really stored (they differ if corrupt).
    pub disk: BTreeMap<ContentHash, ContentHash>,
    /// When it last became unreachable (crash or partition), while it is.
    down_since: Option<Instant>,
    /// Its current generation was declared failed (by detection).
    declared: bool,
    next_scrub: Instant,
    /// It has a blob store (announces it, accepts transfers).
    pub store: bool,
    /// When it may next propose `StoreReady` for its current generation.
    next_announce: Instant,
}

/// The id of storage node `index` at `generation`.
pub fn storage_id(index: usize, generation: u64) -> NodeId {
    let ip = Ipv4Addr::new(10, 1, (index / 256) as u8, (index % 256) as u8);
    NodeId::new(SocketAddr::V4(SocketAddrV4::new(ip, 7000)), generation)
}

/// Node `index` is reachable and holds `hash` with the right bytes.
fn good_on(nodes: &[StorageNode], index: usize, hash: &ContentHash) -> bool {
    nodes
        .get(index)
        .is_some_and(|n| n.up && !n.partitioned && n.disk.get(hash) == Some(hash))
}

/// The node whose current incarnation is `id`.
fn index_on(nodes: &[StorageNode], id: &NodeId) -> Option<usize> {
    // The inverse of `storage_id`: the index is in the address's last two octets.
    let SocketAddr::V4(addr) = id.addr else {
        return None;
    };
    let [_, _, high, low] = addr.ip().octets();
    let index = usize::from(high) * 256 + usize::from(low);
    let node = nodes.get(index)?;
    (storage_id(index, node.generation) == *id).then_some(index)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ClientOp {
    Idle,
    Uploading {
        name: String,
        size: u64,
        hash: ContentHash,
        targets: Vec<NodeId>,
        pending: usize,
        failed: bool,
        attempts: u32,
        first_at: Instant,
    },
    Waiting {
        command: DfsCommand,
        request: RequestId,
        proposed_at: Instant,
        first_at: Instant,
    },
}

#[derive(Debug, Clone)]
struct Client {
    id: u64,
    seq: u64,
    op: ClientOp,
    next_at: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Upload { client: usize },
    Repair(Repair),
}

#[derive(Debug, Clone, Copy)]
struct Transfer {
    purpose: Purpose,
    hash: ContentHash,
    to: usize,
    to_id: NodeId,
    from: Option<(usize, NodeId)>,
    done_at: Instant,
}

/// A repair copy that finished, waiting for its `ReplicaAdded` to show in the namespace.
#[derive(Debug, Clone, Copy)]
struct Landed {
    repair: Repair,
    at: Instant,
}

/// What a run counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DfsStats {
    /// Puts acknowledged.
    pub puts_acked: u64,
    /// Puts refused by the namespace (e.g. every replica failed meanwhile).
    pub puts_refused: u64,
    /// Uploads that failed and were retried with a new placement.
    pub uploads_retried: u64,
    /// Gets served with verified bytes.
    pub gets_ok: u64,
    /// Gets that fell back past a bad or unreachable replica.
    pub gets_fell_back: u64,
    /// Gets that found no good replica.
    pub gets_failed: u64,
    /// Deletes answered.
    pub deletes: u64,
    /// Repair copies started.
    pub repairs_started: u64,
    /// Repair copies that landed.
    pub repairs_landed: u64,
    /// Corrupt copies reported (reader or scrubber).
    pub corrupt_reported: u64,
    /// Node failures committed.
    pub failures_committed: u64,
    /// Requests proposed again (same request id) because no answer came in time.
    pub requests_retried: u64,
    /// Transfers (uploads or repair copies) sent to a node without a blob store (refused).
    pub transfers_to_storeless: u64,
}

/// The file-system cluster under a workload and faults. See the module docs.
#[derive(Debug)]
pub struct DfsSim<L: MetadataLog> {
    log: L,
    options: DfsOptions,
    rng: ChaCha8Rng,
    now: Instant,
    nodes: Vec<StorageNode>,
    clients: Vec<Client>,
    workload_on: bool,
    transfers: Vec<Transfer>,
    landed: Vec<Landed>,
    /// Ids whose failure must be committed: id -> (detect at, last proposed).
    failures: BTreeMap<NodeId, (Instant, Option<Instant>)>,
    checker: DfsChecker,
    stats: DfsStats,
    last_detection: Option<Instant>,
}

impl<L: MetadataLog> DfsSim<L> {
    /// A cluster of `options.nodes` empty storage nodes over `log`.
    pub fn new(seed: u64, options: DfsOptions, log: L) -> Result<Self, String> {
        options.config.validate().map_err(|e| e.to_string())?;
        if options.nodes == 0 || options.nodes > 1000 || options.clients > 64 {
            return Err("between 1 and 1000 nodes, at most 64 clients".into());
        }
        if options.storeless >= options.nodes {
            return Err("at least one node needs a blob store".into());
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let stores = options.nodes - options.storeless;
        let nodes = (0..options.nodes)
            .map(|i| StorageNode {
                generation: 1,
                up: true,
                partitioned: false,
                disk: BTreeMap::new(),
                down_since: None,
                declared: false,
                next_scrub: Instant::ZERO,
                store: i < stores,
                next_announce: Instant::ZERO,
            })
            .collect();
        let clients = (0..options.clients)
            .map(|_| Client {
                id: rng.random(),
                seq: 0,
                op: ClientOp::Idle,
                next_at: Instant::ZERO,
            })
            .collect();
        Ok(DfsSim {
            log,
            checker: DfsChecker::new(options.config),
            options,
            rng,
            now: Instant::ZERO,
            nodes,
            clients,
            workload_on: true,
            transfers: Vec::new(),
            landed: Vec::new(),
            failures: BTreeMap::new(),
            stats: DfsStats::default(),
            last_detection: None,
        })
    }

    // ----- getters -----

    /// Virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The metadata log.
    pub fn log(&self) -> &L {
        &self.log
    }

    /// The metadata log, mutably (to crash Raft voters).
    pub fn log_mut(&mut self) -> &mut L {
        &mut self.log
    }

    /// The checker.
    pub fn checker(&self) -> &DfsChecker {
        &self.checker
    }

    /// Counters so far.
    pub fn stats(&self) -> DfsStats {
        self.stats
    }

    /// When membership last declared a node failed.
    pub fn last_detection(&self) -> Option<Instant> {
        self.last_detection
    }

    /// The storage nodes.
    pub fn nodes(&self) -> &[StorageNode] {
        &self.nodes
    }

    /// A random draw from the simulation's RNG.
    pub fn random_below(&mut self, bound: u64) -> u64 {
        self.rng.random_range(0..bound.max(1))
    }

    /// `count` distinct random node indices.
    pub fn random_nodes(&mut self, count: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..self.nodes.len()).collect();
        let mut chosen = Vec::with_capacity(count);
        while chosen.len() < count && !all.is_empty() {
            let i = self.rng.random_range(0..all.len());
            chosen.push(all.swap_remove(i));
        }
        chosen.sort_unstable();
        chosen
    }

    /// Whether node `index` can be reached now.
    pub fn reachable(&self, index: usize) -> bool {
        self.nodes
            .get(index)
            .is_some_and(|n| n.up && !n.partitioned)
    }

    /// The current id of node `index`.
    pub fn id(&self, index: usize) -> NodeId {
        storage_id(index, self.nodes[index].generation)
    }

    fn index_of(&self, id: &NodeId) -> Option<usize> {
        index_on(&self.nodes, id)
    }

    /// Clients have no operation in progress.
    pub fn clients_idle(&self) -> bool {
        self.clients.iter().all(|c| c.op == ClientOp::Idle)
    }

    // ----- faults -----

    /// Turns new client operations on or off (those in progress finish).
    pub fn set_workload(&mut self, on: bool) {
        self.workload_on = on;
    }

    /// Crashes the nodes at once (their disks keep what completed).
    pub fn crash(&mut self, indices: &[usize]) {
        for &i in indices {
            let now = self.now;
            if let Some(node) = self.nodes.get_mut(i)
                && node.up
            {
                node.up = false;
                node.down_since.get_or_insert(now);
                self.checker
                    .holders_lost(node.disk.iter().filter(|(h, s)| h == s).map(|(h, _)| *h));
            }
        }
    }

    /// Starts crashed node `index` again as a new generation with what its disk kept.
    pub fn restart(&mut self, index: usize) {
        let now = self.now;
        let Some(node) = self.nodes.get_mut(index) else {
            return;
        };
        if node.up {
            return;
        }
        let old = storage_id(index, node.generation);
        let detect_at = node.down_since.unwrap_or(now) + self.options.detect_delay;
        // Membership learns of the new incarnation, and the old one is declared failed.
        if !node.declared {
            self.failures
                .entry(old)
                .or_insert((detect_at.min(now), None));
            self.last_detection = Some(now);
        }
        node.up = true;
        node.generation += 1;
        node.declared = false;
        node.down_since = if node.partitioned { Some(now) } else { None };
    }

    /// Cuts the nodes off from everyone.
    pub fn partition(&mut self, indices: &[usize]) {
        for &i in indices {
            let now = self.now;
            if let Some(node) = self.nodes.get_mut(i)
                && !node.partitioned
            {
                node.partitioned = true;
                node.down_since.get_or_insert(now);
                self.checker
                    .holders_lost(node.disk.iter().filter(|(h, s)| h == s).map(|(h, _)| *h));
            }
        }
    }

    /// Removes every partition. A node declared failed meanwhile rejoins as a new generation.
    pub fn heal(&mut self) {
        for node in &mut self.nodes {
            if node.partitioned {
                node.partitioned = false;
                if node.up {
                    node.down_since = None;
                    if node.declared {
                        node.generation += 1;
                        node.declared = false;
                    }
                }
            }
        }
    }

    /// Corrupts node `index`'s copy of one random blob the namespace lists on it; returns which.
    pub fn corrupt(&mut self, index: usize) -> Option<ContentHash> {
        let id = self.id(index);
        let listed: Vec<ContentHash> = self
            .log
            .leader_state()?
            .dfs()
            .blobs()
            .iter()
            .filter(|(_, b)| b.replicas.contains(&id))
            .map(|(h, _)| *h)
            .collect();
        if listed.is_empty() {
            return None;
        }
        let hash = listed[self.rng.random_range(0..listed.len())];
        let node = self.nodes.get_mut(index)?;
        let stored = node.disk.get_mut(&hash)?;
        let was_good = hash == *stored;
        stored.0[0] ^= 0xff;
        if was_good {
            self.checker.holders_lost(std::iter::once(hash));
        }
        Some(hash)
    }

    // ----- running -----

    /// Runs tick by tick until `deadline`, checking after every tick.
    pub fn run_until(&mut self, deadline: Instant) -> Result<(), Violation> {
        for _ in 0..TICKS_PER_RUN_MAX {
            if self.now >= deadline {
                return Ok(());
            }
            self.now = (self.now + self.options.tick).min(deadline);
            self.tick()?;
        }
        Err(self.violation("run_until", "too many ticks".into()))
    }

    /// Runs for `span`.
    pub fn run_for(&mut self, span: Duration) -> Result<(), Violation> {
        let deadline = self.now + span;
        self.run_until(deadline)
    }

    /// With faults over (call [`Self::heal`] and restart crashed nodes first) and the workload
    /// off: runs until every client operation finished and every blob is back at its
    /// replication factor on reachable nodes with good bytes, then runs the final checks.
    /// Returns when that was reached; an error if not by `deadline`.
    pub fn run_until_converged(&mut self, deadline: Instant) -> Result<Instant, Violation> {
        self.set_workload(false);
        loop {
            if self.clients_idle() && self.fully_replicated() {
                let Some(state) = self.log.most_applied() else {
                    return Err(self.violation("converge", "no state".into()));
                };
                let ns = state.dfs();
                let nodes = &self.nodes;
                self.checker.final_pass(
                    self.now,
                    ns,
                    |i, h| good_on(nodes, i, h),
                    |id| index_on(nodes, id),
                )?;
                return Ok(self.now);
            }
            if self.now >= deadline {
                let under = self
                    .log
                    .leader_state()
                    .map(|s| s.dfs().under_replicated().len());
                let detail = format!(
                    "not converged: clients idle {}, under-replicated {under:?}, transfers {}, \
                     landed {}, failures pending {}, stats {:?}",
                    self.clients_idle(),
                    self.transfers.len(),
                    self.landed.len(),
                    self.failures.len(),
                    self.stats
                );
                return Err(self.violation("converge", detail));
            }
            let step = self.options.tick * 10;
            self.run_for(step)?;
        }
    }

    /// Every blob the leader knows has `min(replication, reachable nodes)` replicas, each
    /// reachable with good bytes.
    pub fn fully_replicated(&self) -> bool {
        let Some(state) = self.log.leader_state() else {
            return false;
        };
        let reachable = (0..self.nodes.len())
            .filter(|&i| self.reachable(i) && self.nodes[i].store)
            .count();
        let want = self.options.config.replication.min(reachable);
        state.dfs().blobs().iter().all(|(hash, blob)| {
            let good = blob
                .replicas
                .iter()
                .filter(|id| self.index_of(id).is_some_and(|i| self.good_copy(i, hash)))
                .count();
            good >= want && good == blob.replicas.len()
        })
    }

    /// Node `index` is reachable and holds `hash` with the right bytes.
    fn good_copy(&self, index: usize, hash: &ContentHash) -> bool {
        good_on(&self.nodes, index, hash)
    }

    fn violation(&self, checker: &'static str, detail: String) -> Violation {
        Violation {
            checker,
            at: self.now,
            detail,
        }
    }

    fn tick(&mut self) -> Result<(), Violation> {
        self.log.advance_to(self.now)?;
        self.complete_transfers();
        self.detect_failures();
        self.announce_stores();
        for c in 0..self.clients.len() {
            self.client_step(c);
        }
        self.repair_step();
        self.scrub_step();
        self.check()
    }

    fn check(&mut self) -> Result<(), Violation> {
        let now = self.now;
        let states = self.log.states();
        self.checker.check_states(now, &states)?;
        let Some(leader) = self.log.leader_state() else {
            return Ok(());
        };
        let ns = leader.dfs();
        let nodes = &self.nodes;
        if let Some((hash, id)) = ns.blobs().iter().find_map(|(h, b)| {
            b.replicas
                .iter()
                .find(|id| index_on(nodes, id).is_some_and(|i| !nodes[i].store))
                .map(|id| (*h, *id))
        }) {
            return Err(Violation {
                checker: "stores_only",
                at: now,
                detail: format!("{hash:?} listed on {id}, which has no blob store"),
            });
        }
        self.checker.check_listed_copies(now, ns, |id, h| {
            index_on(nodes, id).map(|i| nodes[i].disk.contains_key(h))
        })?;
        self.checker.check_readable(
            now,
            ns,
            |i, h| good_on(nodes, i, h),
            |id| index_on(nodes, id),
        )
    }

    fn propose(&mut self, command: DfsCommand) -> bool {
        self.log.propose(self.now, ClusterOp::Dfs(command))
    }

    // ----- transfers -----

    fn start_transfer(
        &mut self,
        purpose: Purpose,
        hash: ContentHash,
        size: u64,
        to: NodeId,
        from: Option<NodeId>,
    ) {
        let Some(to_index) = self.index_of(&to) else {
            // Not a current incarnation: the transfer fails at once (at the next tick).
            self.transfers.push(Transfer {
                purpose,
                hash,
                to: usize::MAX,
                to_id: to,
                from: None,
                done_at: self.now,
            });
            return;
        };
        if !self.nodes[to_index].store {
            self.stats.transfers_to_storeless += 1;
        }
        let from = from.and_then(|id| self.index_of(&id).map(|i| (i, id)));
        self.transfers.push(Transfer {
            purpose,
            hash,
            to: to_index,
            to_id: to,
            from,
            done_at: self.now + self.options.transfer_time(size),
        });
    }

    fn complete_transfers(&mut self) {
        let now = self.now;
        let (done, running): (Vec<Transfer>, Vec<Transfer>) =
            self.transfers.drain(..).partition(|t| t.done_at <= now);
        self.transfers = running;
        for t in done {
            let target_ok = t.to != usize::MAX
                && self.reachable(t.to)
                && self.nodes[t.to].store
                && storage_id(t.to, self.nodes[t.to].generation) == t.to_id;
            let source_ok = match (t.purpose, t.from) {
                (Purpose::Upload { .. }, _) => true,
                (Purpose::Repair(_), Some((i, id))) => {
                    self.good_copy(i, &t.hash) && self.id(i) == id
                }
                (Purpose::Repair(_), None) => false,
            };
            let ok = target_ok && source_ok;
            if ok {
                self.nodes[t.to].disk.insert(t.hash, t.hash);
            }
            match t.purpose {
                Purpose::Upload { client } => self.upload_done(client, ok),
                Purpose::Repair(repair) => {
                    if ok {
                        self.stats.repairs_landed += 1;
                        self.propose(DfsCommand::ReplicaAdded {
                            hash: t.hash,
                            node: t.to_id,
                        });
                        self.landed.push(Landed { repair, at: now });
                    }
                }
            }
        }
    }

    // ----- membership -----

    fn detect_failures(&mut self) {
        let now = self.now;
        let detect = self.options.detect_delay;
        for i in 0..self.nodes.len() {
            let node = &mut self.nodes[i];
            if let Some(since) = node.down_since
                && !node.declared
                && now >= since + detect
            {
                node.declared = true;
                self.last_detection = Some(now);
                self.failures
                    .entry(storage_id(i, node.generation))
                    .or_insert((now, None));
            }
        }
        let Some(state) = self.log.leader_state() else {
            return;
        };
        let committed: Vec<NodeId> = self
            .failures
            .keys()
            .filter(|id| state.dfs().is_failed(id))
            .copied()
            .collect();
        for id in committed {
            self.failures.remove(&id);
            self.stats.failures_committed += 1;
            self.checker.failure_committed(now, id);
        }
        let retry = self.options.retry_after;
        let due: Vec<NodeId> = self
            .failures
            .iter()
            .filter(|(_, (at, last))| *at <= now && last.is_none_or(|t| now >= t + retry))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if self.log.propose(now, ClusterOp::NodeFailed { node: id })
                && let Some(entry) = self.failures.get_mut(&id)
            {
                entry.1 = Some(now);
            }
        }
    }

    /// Every reachable store whose current generation the leader's namespace does not list
    /// proposes `StoreReady` (again after `retry_after` while it is not applied).
    fn announce_stores(&mut self) {
        let now = self.now;
        let Some(state) = self.log.leader_state() else {
            return;
        };
        let due: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                let node = &self.nodes[i];
                node.store
                    && self.reachable(i)
                    && !node.declared
                    && now >= node.next_announce
                    && !state.dfs().stores().contains(&self.id(i))
            })
            .collect();
        for i in due {
            let node = self.id(i);
            self.propose(DfsCommand::StoreReady { node });
            self.nodes[i].next_announce = now + self.options.retry_after;
        }
    }

    /// The nodes membership believes are alive (current incarnations not declared failed).
    fn membership_live(&self, loads: &BTreeMap<NodeId, u64>) -> Vec<Candidate> {
        (0..self.nodes.len())
            .filter(|&i| !self.nodes[i].declared)
            .map(|i| {
                let node = self.id(i);
                Candidate {
                    node,
                    stored_bytes: loads.get(&node).copied().unwrap_or(0),
                }
            })
            .collect()
    }

    // ----- clients -----

    fn client_step(&mut self, c: usize) {
        let now = self.now;
        match self.clients[c].op.clone() {
            ClientOp::Idle => {
                if self.workload_on && now >= self.clients[c].next_at {
                    self.start_op(c);
                }
            }
            ClientOp::Uploading { .. } => {}
            ClientOp::Waiting {
                command,
                request,
                proposed_at,
                first_at,
            } => {
                let answer = self.log.states().into_iter().find_map(|s| {
                    match s.dfs().answer(request.client) {
                        Some((seq, answer)) if seq == request.seq => Some(answer.clone()),
                        _ => None,
                    }
                });
                match answer {
                    Some(answer) => self.answered(c, command, first_at, answer),
                    None if now >= proposed_at + self.options.retry_after => {
                        self.stats.requests_retried += 1;
                        self.propose(command.clone());
                        self.clients[c].op = ClientOp::Waiting {
                            command,
                            request,
                            proposed_at: now,
                            first_at,
                        };
                    }
                    None => {}
                }
            }
        }
    }

    fn answered(
        &mut self,
        c: usize,
        command: DfsCommand,
        first_at: Instant,
        answer: Result<DfsResult, idunno_core::dfs::DfsError>,
    ) {
        let now = self.now;
        let answer = match answer {
            Ok(DfsResult::Duplicate { earlier }) => Ok(*earlier),
            other => other,
        };
        match (command, answer) {
            (
                DfsCommand::Commit {
                    name,
                    hash,
                    request,
                    replicas,
                    ..
                },
                Ok(DfsResult::Committed { version }),
            ) => {
                self.stats.puts_acked += 1;
                self.checker.acked(
                    name,
                    Ack {
                        version,
                        hash,
                        request,
                        started: first_at,
                        acked: now,
                        copies: replicas.len(),
                    },
                );
            }
            (DfsCommand::Commit { .. }, _) => self.stats.puts_refused += 1,
            (DfsCommand::Delete { .. }, _) => self.stats.deletes += 1,
            _ => {}
        }
        let think = self.options.think_time;
        let client = &mut self.clients[c];
        client.op = ClientOp::Idle;
        client.next_at = now + think;
    }

    fn start_op(&mut self, c: usize) {
        let roll = self.rng.random_range(0..100u64);
        let name = format!("f{}", self.rng.random_range(0..self.options.names.max(1)));
        if roll < self.options.put_percent {
            let size = self.rng.random_range(
                self.options.file_bytes_min
                    ..=self.options.file_bytes_max.max(self.options.file_bytes_min),
            );
            let hash = ContentHash(self.rng.random());
            self.start_upload(c, name, size, hash, 0, self.now);
        } else if roll < self.options.put_percent + self.options.delete_percent {
            let request = self.next_request(c);
            self.checker.delete_proposed(&name);
            let command = DfsCommand::Delete { name, request };
            self.propose(command.clone());
            self.clients[c].op = ClientOp::Waiting {
                command,
                request,
                proposed_at: self.now,
                first_at: self.now,
            };
        } else {
            self.get(&name);
            self.clients[c].next_at = self.now + self.options.think_time;
        }
    }

    fn next_request(&mut self, c: usize) -> RequestId {
        let client = &mut self.clients[c];
        client.seq += 1;
        RequestId {
            client: client.id,
            seq: client.seq,
        }
    }

    fn start_upload(
        &mut self,
        c: usize,
        name: String,
        size: u64,
        hash: ContentHash,
        attempts: u32,
        first_at: Instant,
    ) {
        let live = match self.log.leader_state() {
            Some(state) => {
                let ns = state.dfs();
                let mut live = self.membership_live(&ns.loads());
                live.retain(|c| ns.may_store(&c.node));
                live
            }
            None => self.membership_live(&BTreeMap::new()),
        };
        let targets = place(&hash, &live, self.options.config.replication).nodes;
        if targets.is_empty() {
            self.clients[c].op = ClientOp::Idle;
            self.clients[c].next_at = self.now + self.options.retry_after;
            return;
        }
        for &to in &targets {
            self.start_transfer(Purpose::Upload { client: c }, hash, size, to, None);
        }
        self.clients[c].op = ClientOp::Uploading {
            name,
            size,
            hash,
            pending: targets.len(),
            targets,
            failed: false,
            attempts,
            first_at,
        };
    }

    fn upload_done(&mut self, c: usize, ok: bool) {
        let ClientOp::Uploading {
            name,
            size,
            hash,
            targets,
            pending,
            failed,
            attempts,
            first_at,
        } = self.clients[c].op.clone()
        else {
            debug_assert!(false, "an upload finished for a client not uploading");
            return;
        };
        let failed = failed || !ok;
        let pending = pending.saturating_sub(1);
        if pending > 0 {
            self.clients[c].op = ClientOp::Uploading {
                name,
                size,
                hash,
                targets,
                pending,
                failed,
                attempts,
                first_at,
            };
            return;
        }
        if failed {
            // Never commit a version some replica lacks: place and upload again.
            self.stats.uploads_retried += 1;
            if attempts < 5 {
                self.start_upload(c, name, size, hash, attempts + 1, first_at);
            } else {
                self.clients[c].op = ClientOp::Idle;
                self.clients[c].next_at = self.now + self.options.retry_after;
            }
            return;
        }
        let request = self.next_request(c);
        let command = DfsCommand::Commit {
            name,
            size,
            hash,
            replicas: targets,
            request,
        };
        self.propose(command.clone());
        self.clients[c].op = ClientOp::Waiting {
            command,
            request,
            proposed_at: self.now,
            first_at,
        };
    }

    fn get(&mut self, name: &str) {
        let Some(state) = self.log.leader_state() else {
            return;
        };
        let ns = state.dfs();
        let Some(version) = ns.get(name).copied() else {
            return;
        };
        let replicas: Vec<NodeId> = ns
            .blob(&version.hash)
            .map(|b| b.replicas.iter().copied().collect())
            .unwrap_or_default();
        let mut bad = Vec::new();
        let mut served = false;
        for id in replicas {
            let Some(i) = self.index_of(&id) else {
                continue;
            };
            if !self.reachable(i) {
                continue;
            }
            if self.nodes[i].disk.get(&version.hash) == Some(&version.hash) {
                served = true;
                break;
            }
            bad.push(id);
        }
        if !bad.is_empty() {
            self.stats.gets_fell_back += 1;
        }
        for node in bad {
            self.stats.corrupt_reported += 1;
            self.propose(DfsCommand::ReplicaLost {
                hash: version.hash,
                node,
            });
        }
        if served {
            self.stats.gets_ok += 1;
        } else {
            self.stats.gets_failed += 1;
        }
    }

    // ----- leader: repair and scrubbing -----

    fn repair_step(&mut self) {
        let now = self.now;
        let settle = self.options.retry_after * 2;
        let started: Vec<(Repair, u64)> = {
            let Some(state) = self.log.leader_state() else {
                return;
            };
            let ns = state.dfs();
            // A landed copy counts as in flight until the namespace shows it (or a while
            // passed).
            self.landed.retain(|l| {
                now < l.at + settle
                    && !ns
                        .blob(&l.repair.hash)
                        .is_some_and(|b| b.replicas.contains(&l.repair.to))
            });
            let mut in_flight: Vec<Repair> = self
                .transfers
                .iter()
                .filter_map(|t| match t.purpose {
                    Purpose::Repair(r) => Some(r),
                    Purpose::Upload { .. } => None,
                })
                .collect();
            in_flight.extend(self.landed.iter().map(|l| l.repair));
            if in_flight.len() >= self.options.max_parallel {
                return;
            }
            let loads = ns.loads();
            let live = self.membership_live(&loads);
            plan_repairs(ns, &live, &in_flight, self.options.max_parallel)
                .repairs
                .into_iter()
                .map(|r| (r, ns.blob(&r.hash).map_or(0, |b| b.size)))
                .collect()
        };
        for (repair, size) in started {
            self.stats.repairs_started += 1;
            self.start_transfer(
                Purpose::Repair(repair),
                repair.hash,
                size,
                repair.to,
                Some(repair.from),
            );
        }
    }

    fn scrub_step(&mut self) {
        let now = self.now;
        let interval = self.options.scrub_interval;
        let mut reports = Vec::new();
        if !(0..self.nodes.len()).any(|i| self.reachable(i) && now >= self.nodes[i].next_scrub) {
            return;
        }
        let listed: BTreeSet<(ContentHash, NodeId)> = match self.log.leader_state() {
            Some(state) => state
                .dfs()
                .blobs()
                .iter()
                .flat_map(|(h, b)| b.replicas.iter().map(move |n| (*h, *n)))
                .collect(),
            None => return,
        };
        for i in 0..self.nodes.len() {
            if !self.reachable(i) || now < self.nodes[i].next_scrub {
                continue;
            }
            // Stagger the nodes so scrubs do not all land on one tick.
            self.nodes[i].next_scrub = now + interval + self.options.tick * (i as u32);
            let id = self.id(i);
            for (hash, stored) in &self.nodes[i].disk {
                if hash != stored && listed.contains(&(*hash, id)) {
                    reports.push((*hash, id));
                }
            }
        }
        for (hash, node) in reports {
            self.stats.corrupt_reported += 1;
            self.propose(DfsCommand::ReplicaLost { hash, node });
        }
    }
}
