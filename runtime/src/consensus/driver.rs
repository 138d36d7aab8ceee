//! The event loop of one voter: runs the Raft machine on the durable store, the TCP transport,
//! a timer queue and the Raft part of the control protocol, and applies the committed log to the
//! cluster's replicated state ([`ClusterState`]).
//!
//! Owns: the machine, its [`Store`] (`<data dir>/raft`), the replicated state, the timer
//! queue, the mapping between tokio time and the machine's [`Instant`], and the requests waiting
//! for an answer (proposals until their index applies, reads until confirmed and applied).
//! Inputs: peer messages (from [`super::transport::Inbound`]), due timers, control requests
//! (`Leader`, `KvPut`, `KvGet`, `FailedNodes`, `Sched`), and, as leader, a tick that proposes
//! `ExpireLeases` when a scheduler lease is due. Outputs, carried out in the order the machine decided them:
//! each `Persist` goes to the [`Persister`] (a storage thread by default, which fsyncs batches
//! that queue up together) and is acknowledged with `Input::Persisted` when durable (the machine
//! holds every message that depends on it until then); messages are queued on the transport,
//! timers armed, committed entries applied and answered.
//! Must never: decide anything about Raft, reorder the machine's outputs, send before a persist
//! it follows is durable, answer a put before its entry applied, serve a read before the read
//! index applied, hold more than its bounds of waiting requests, or panic on peer or disk data.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use idunno_core::cluster::{ClusterCommand, ClusterOp, ClusterResult, ClusterState};
use idunno_core::consensus::{
    self, Config, Input, KvCommand, KvResult, Message, Output, Payload, READS_PENDING_MAX, Raft,
    Snapshot, StateMachine, Timer, VoterId,
};
use idunno_core::membership::NodeId;
use idunno_core::scheduler::api::{self, SchedAnswer, SchedRequest};
use idunno_core::scheduler::{SchedCommand, SchedResult};
use idunno_core::time::Instant;
use idunno_core::wire::{ControlRequest, ControlResponse};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use super::RaftRequest;
use super::persister::{Completion, PersistMode, PersistStats, Persister};
use super::transport::Outbound;
use crate::dfs::leader::Action as DfsAction;
use crate::storage::{Options as StoreOptions, StorageError, Store};
use crate::timers::TimerQueue;
use crate::view::MembershipView;

/// Most proposals waiting for their entry to apply; more are refused as busy.
pub const PROPOSALS_PENDING_MAX: usize = 4096;
/// How often the leader looks for due scheduler leases to expire (it proposes `ExpireLeases`
/// only when one is due).
pub const EXPIRE_LEASES_EVERY: Duration = Duration::from_millis(500);
/// Most due timers handed in before the loop looks at messages and requests again.
const TIMERS_PER_TURN_MAX: usize = 1024;
/// How long a member must stay gone in the leader's view before the leader proposes its
/// `NodeFailed` (which fences it for good: the DFS drops its replicas, the scheduler its
/// leases). A live member declared dead by stale gossip (after a partition heals, the cut-off
/// side's death certificates for the majority's members spread) refutes and is seen alive again
/// within a few gossip rounds; without this wait the leader fenced such live members, and files
/// whose replicas were all on them lost every replica record (found by the turmoil partition
/// scenario).
pub const FAILURE_GRACE: Duration = Duration::from_secs(3);
/// How long a member must stay suspected in the leader's view before the leader returns its
/// scheduler leases (`WorkerGone`), without waiting for SWIM to declare it failed (about another
/// second at n = 10). A suspicion already means a direct probe and k indirect probes went
/// unanswered; most false suspicions are refuted within a gossip round, which this wait absorbs.
/// Returning a live worker's leases costs only the rerun of its batches: its reports of them are
/// refused (exactly once holds) and it asks for new ones.
pub const SUSPECT_REVOKE_AFTER: Duration = Duration::from_millis(250);
/// How long after a member joins (in this node's view) a placement short of the replication
/// factor waits for it to announce its blob store (`StoreReady`), instead of acknowledging a put
/// on fewer replicas. A store announces within about a second of starting; a member still
/// silent after this is taken for one without a store.
pub const STORE_ANNOUNCE_GRACE: Duration = Duration::from_secs(3);
/// Most queued peer messages handled in one turn before timers and requests get a look.
const MESSAGES_PER_TURN_MAX: usize = 256;

/// Why the Raft driver could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum RaftDriverError {
    /// The durable store could not be opened or written (fatal: the voter must stop).
    #[error("raft storage: {0}")]
    Storage(#[from] StorageError),
    /// The machine refused its setup or persisted state.
    #[error("raft setup: {0}")]
    Setup(consensus::Error),
    /// A stored or installed snapshot did not decode.
    #[error("raft snapshot at index {index} does not decode: {message}")]
    BadSnapshot {
        /// The snapshot's index.
        index: u64,
        /// What was wrong.
        message: String,
    },
}

/// Turns the applied result of a proposal (and its log index) into the client's answer.
type AnswerFn = fn(u64, ClusterResult) -> ControlResponse;

/// A proposal waiting for its entry.
#[derive(Debug)]
struct PendingProposal {
    term: u64,
    reply: oneshot::Sender<ControlResponse>,
    answer: AnswerFn,
}

/// The answer to a key-value put.
fn answer_kv_put(index: u64, result: ClusterResult) -> ControlResponse {
    match result {
        ClusterResult::Kv(KvResult::Done) => ControlResponse::KvDone { index },
        other => ControlResponse::Error(format!("command failed: {other:?}")),
    }
}

/// The answer to a node-failure proposal (nobody waits for it).
fn answer_node_failed(index: u64, result: ClusterResult) -> ControlResponse {
    match result {
        ClusterResult::NodeFailed => ControlResponse::Applied { index },
        other => ControlResponse::Error(format!("command failed: {other:?}")),
    }
}

/// The answer to a scheduler command.
fn answer_sched(_index: u64, result: ClusterResult) -> ControlResponse {
    match result {
        ClusterResult::Sched(result) => ControlResponse::Sched(SchedAnswer::Result(result)),
        other => ControlResponse::Error(format!("command failed: {other:?}")),
    }
}

/// The replicated clock's reading for a proposal: wall-clock microseconds since the Unix epoch,
/// the one epoch every node shares (up to clock skew, which the state's monotonic clamp absorbs).
pub fn cluster_now() -> Instant {
    let micros = crate::net::wall_clock()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    Instant::from_micros(micros)
}

/// Answers a linearizable read from the applied state.
pub type QueryFn = Box<dyn FnOnce(&ClusterState) -> ControlResponse + Send>;

/// A read waiting for its confirmation and its index to apply.
struct PendingRead {
    query: QueryFn,
    reply: oneshot::Sender<ControlResponse>,
}

impl std::fmt::Debug for PendingRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingRead").finish_non_exhaustive()
    }
}

/// One voter's Raft machine wired to its store, transport and clock.
#[derive(Debug)]
pub struct RaftDriver {
    raft: Raft,
    persister: Persister,
    state: ClusterState,
    timers: TimerQueue<Timer>,
    epoch: tokio::time::Instant,
    outbound: Outbound,
    voters: Arc<BTreeMap<VoterId, SocketAddr>>,
    /// Proposals by the log index they were appended at.
    proposals: BTreeMap<u64, PendingProposal>,
    /// Reads by id, waiting for the leader's confirmation.
    reads: BTreeMap<u64, PendingRead>,
    /// Confirmed reads waiting for their index to apply.
    ready_reads: Vec<(u64, PendingRead)>,
    /// The node's membership view (absent in tests that run Raft alone).
    view: Option<watch::Receiver<MembershipView>>,
    /// `NodeFailed` proposals made, with the term they were made in (retried in a later term
    /// if they did not apply).
    failure_proposals: BTreeMap<NodeId, u64>,
    /// Members the view reports gone, and since when (they are proposed after [`FAILURE_GRACE`]).
    gone_since: BTreeMap<NodeId, tokio::time::Instant>,
    /// Since when each live member has been alive in this node's view (placement waits for a
    /// member's store announcement for [`STORE_ANNOUNCE_GRACE`]).
    alive_since: BTreeMap<NodeId, tokio::time::Instant>,
    /// Members the view reports suspected, and since when (their leases are returned after
    /// [`SUSPECT_REVOKE_AFTER`]).
    suspect_since: BTreeMap<NodeId, tokio::time::Instant>,
    /// `WorkerGone` proposals made, with their term (once per term and per spell of the member
    /// being suspected or gone).
    revoke_proposals: BTreeMap<NodeId, u64>,
    /// Compact every this many applied entries.
    compact_every: u64,
    /// The applied index of the last compaction attempt (made or refused).
    compacted_at: u64,
    next_read_id: u64,
    /// Idle workers' asks answered `NoWork` from the applied state (not logged).
    idle_asks_answered: u64,
    next_proposal_id: u64,
    applied: u64,
}

impl RaftDriver {
    /// Opens (or creates) the store in `dir`, restores the machine and the key-value state from
    /// it, and starts the outbound transport and the storage thread. Blocks on the disk; call at
    /// startup, inside tokio.
    pub fn open(
        me: VoterId,
        voters: Arc<BTreeMap<VoterId, SocketAddr>>,
        dir: &Path,
        rng_seed: u64,
    ) -> Result<Self, RaftDriverError> {
        Self::open_with(me, voters, dir, rng_seed, PersistMode::default())
    }

    /// [`Self::open`] with the persist batches written as `mode` says.
    pub fn open_with(
        me: VoterId,
        voters: Arc<BTreeMap<VoterId, SocketAddr>>,
        dir: &Path,
        rng_seed: u64,
        mode: PersistMode,
    ) -> Result<Self, RaftDriverError> {
        let (store, persisted) = Store::open(dir, StoreOptions::default())?;
        let mut state = ClusterState::default();
        let mut applied = 0;
        if let Some(snapshot) = &persisted.snapshot {
            restore_state(&mut state, snapshot)?;
            applied = snapshot.index;
        }
        info!(
            term = persisted.hard_state.term,
            entries = persisted.entries.len(),
            snapshot = applied,
            "raft state recovered"
        );
        let epoch = tokio::time::Instant::now();
        let ids = voters.keys().copied().collect();
        let raft = Raft::restore(
            Config::default(),
            me,
            ids,
            persisted,
            rng_seed,
            Instant::ZERO,
        )
        .map_err(RaftDriverError::Setup)?;
        let outbound = Outbound::start(me, &voters);
        let persister = Persister::start(store, mode)
            .map_err(|e| RaftDriverError::Storage(StorageError::io(dir, e)))?;
        Ok(RaftDriver {
            raft,
            persister,
            state,
            timers: TimerQueue::new(),
            epoch,
            outbound,
            voters,
            proposals: BTreeMap::new(),
            reads: BTreeMap::new(),
            ready_reads: Vec::new(),
            view: None,
            failure_proposals: BTreeMap::new(),
            gone_since: BTreeMap::new(),
            alive_since: BTreeMap::new(),
            suspect_since: BTreeMap::new(),
            revoke_proposals: BTreeMap::new(),
            compact_every: super::COMPACT_EVERY_DEFAULT,
            compacted_at: applied,
            next_read_id: 0,
            idle_asks_answered: 0,
            next_proposal_id: 0,
            applied,
        })
    }

    /// Runs until a fatal storage error (returned) or until both channels close (`Ok`).
    pub async fn run(
        mut self,
        mut requests: mpsc::Receiver<RaftRequest>,
        mut messages: mpsc::Receiver<(VoterId, Message)>,
    ) -> Result<(), RaftDriverError> {
        self.drain()?;
        let mut completions = self.persister.take_completions();
        let mut requests_open = true;
        let mut messages_open = true;
        let mut view = self.view.clone();
        let mut expire_tick = tokio::time::interval(EXPIRE_LEASES_EVERY);
        expire_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while requests_open || messages_open {
            self.propose_failures()?;
            self.maybe_compact()?;
            let wake = self.timers.next_deadline().map(|at| self.deadline_of(at));
            tokio::select! {
                biased;
                changed = changed_opt(view.as_mut()), if view.is_some() => {
                    if changed.is_err() {
                        view = None;
                    }
                }
                done = recv_opt(completions.as_mut()), if completions.is_some() => {
                    self.on_persisted(done)?;
                }
                () = sleep_until_opt(wake), if wake.is_some() => self.on_timers()?,
                _ = expire_tick.tick() => self.propose_expiry()?,
                message = messages.recv(), if messages_open => match message {
                    Some((from, msg)) => {
                        self.input(Input::Message { from, msg })?;
                        for _ in 0..MESSAGES_PER_TURN_MAX {
                            let Ok((from, msg)) = messages.try_recv() else { break };
                            self.input(Input::Message { from, msg })?;
                        }
                    }
                    None => messages_open = false,
                },
                request = requests.recv(), if requests_open => match request {
                    Some(request) => self.on_request(request)?,
                    None => requests_open = false,
                },
            }
        }
        Ok(())
    }

    /// Compacts the log every `every` applied entries (at least 1).
    pub fn with_compaction(mut self, every: u64) -> Self {
        self.compact_every = every.max(1);
        self
    }

    /// Snapshots the state and compacts the log when `compact_every` entries applied since the
    /// last attempt. A state too large for a snapshot keeps its log (and says so).
    fn maybe_compact(&mut self) -> Result<(), RaftDriverError> {
        if self.applied < self.compacted_at.saturating_add(self.compact_every) {
            return Ok(());
        }
        self.compacted_at = self.applied;
        match self.state.snapshot() {
            Ok(data) => {
                debug!(
                    index = self.applied,
                    bytes = data.len(),
                    "compacting the log"
                );
                self.input(Input::Compact {
                    index: self.applied,
                    data,
                })
            }
            Err(e) => {
                warn!(index = self.applied, error = %e, "the state is too large to snapshot; the log is kept");
                Ok(())
            }
        }
    }

    /// Uses `view` to propose `NodeFailed` for members it reports failed or left.
    pub fn with_view(mut self, view: watch::Receiver<MembershipView>) -> Self {
        self.view = Some(view);
        self
    }

    /// As leader, proposes `NodeFailed` for every member the membership view has reported gone
    /// for [`FAILURE_GRACE`] that the state has not recorded, once per term (so a proposal lost
    /// to a leader change is made again by the next leader, which runs this on its own view);
    /// and `WorkerGone` for every member reported gone, or suspected for
    /// [`SUSPECT_REVOKE_AFTER`], once per term and spell.
    fn propose_failures(&mut self) -> Result<(), RaftDriverError> {
        let Some(view) = &self.view else {
            return Ok(());
        };
        // Every node tracks how long members have been gone, so a new leader need not wait
        // the grace again for members its view has long reported gone.
        let now = tokio::time::Instant::now();
        let (gone, suspected, alive): (BTreeSet<NodeId>, BTreeSet<NodeId>, BTreeSet<NodeId>) = {
            let view = view.borrow();
            (
                view.gone().copied().collect(),
                view.suspected().clone(),
                view.alive().clone(),
            )
        };
        self.alive_since.retain(|node, _| alive.contains(node));
        for node in &alive {
            self.alive_since.entry(*node).or_insert(now);
        }
        debug_assert!(gone.is_disjoint(&suspected), "a suspect is alive");
        self.gone_since.retain(|node, _| gone.contains(node));
        for node in &gone {
            self.gone_since.entry(*node).or_insert(now);
        }
        debug_assert!(self.gone_since.len() == gone.len());
        self.suspect_since
            .retain(|node, _| suspected.contains(node));
        for node in &suspected {
            self.suspect_since.entry(*node).or_insert(now);
        }
        if !self.raft.is_leader() {
            return Ok(());
        }
        let recorded = self.state.failed_nodes().to_vec();
        self.failure_proposals
            .retain(|node, _| !recorded.contains(node));
        let term = self.raft.term();
        // The leases of a gone member, or of one suspected for a moment, go back to the queues
        // at once (its batches run elsewhere now); fencing it (`NodeFailed`: replicas dropped,
        // generation retired) waits for the grace. Once per member, term and spell (a member
        // that refutes and is suspected again is a new spell).
        let suspected_long: BTreeSet<NodeId> = self
            .suspect_since
            .iter()
            .filter(|(_, since)| now.saturating_duration_since(**since) >= SUSPECT_REVOKE_AFTER)
            .map(|(node, _)| *node)
            .collect();
        self.revoke_proposals
            .retain(|node, _| gone.contains(node) || suspected.contains(node));
        let revoke: Vec<NodeId> = gone
            .union(&suspected_long)
            .filter(|node| !recorded.contains(node))
            .filter(|node| self.revoke_proposals.get(node) != Some(&term))
            .copied()
            .collect();
        for worker in revoke {
            if self.proposals.len() >= PROPOSALS_PENDING_MAX {
                break;
            }
            debug!(%worker, "returning the leases of a gone or suspected member");
            let (reply, _) = oneshot::channel();
            let op = ClusterOp::Sched(SchedCommand::WorkerGone { worker });
            self.propose(op, reply, answer_sched)?;
            self.revoke_proposals.insert(worker, term);
        }
        let due: Vec<NodeId> = self
            .gone_since
            .iter()
            .filter(|(_, since)| now.saturating_duration_since(**since) >= FAILURE_GRACE)
            .map(|(node, _)| *node)
            .filter(|node| !recorded.contains(node))
            .filter(|node| self.failure_proposals.get(node) != Some(&term))
            .collect();
        for node in due {
            if self.proposals.len() >= PROPOSALS_PENDING_MAX {
                break;
            }
            info!(%node, "proposing the node's failure");
            // Nobody waits for this answer; the next run of this check sees whether it applied.
            let (reply, _) = oneshot::channel();
            self.propose(ClusterOp::NodeFailed { node }, reply, answer_node_failed)?;
            self.failure_proposals.insert(node, term);
        }
        Ok(())
    }

    /// As leader, proposes `ExpireLeases` when a scheduler lease is due (every command also
    /// expires due leases first; this covers the time nobody asks).
    fn propose_expiry(&mut self) -> Result<(), RaftDriverError> {
        if !self.raft.is_leader() {
            return Ok(());
        }
        let now = cluster_now();
        let due = self
            .state
            .scheduler()
            .leases()
            .iter()
            .any(|l| l.expires_at <= now);
        if !due {
            return Ok(());
        }
        let (reply, _) = oneshot::channel();
        let op = ClusterOp::Sched(SchedCommand::ExpireLeases);
        self.propose(op, reply, answer_sched)
    }

    fn now(&self) -> Instant {
        let micros = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        Instant::from_micros(micros)
    }

    fn deadline_of(&self, at: Instant) -> tokio::time::Instant {
        self.epoch
            .checked_add(at.since_epoch())
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400))
    }

    fn input(&mut self, input: Input) -> Result<(), RaftDriverError> {
        let now = self.now();
        if let Err(e) = self.raft.handle(now, input) {
            debug!(error = %e, "raft input dropped");
        }
        self.drain()
    }

    /// Tells the machine that batches up to `batch` are durable.
    fn acknowledge(&mut self, batch: u64) {
        let now = self.now();
        if let Err(e) = self.raft.handle(now, Input::Persisted(batch)) {
            error!(batch, error = %e, "persist acknowledgement refused");
        }
    }

    /// A completion from the storage thread: acknowledges it, or stops the voter on a storage
    /// error (or a stopped thread).
    fn on_persisted(&mut self, done: Option<Completion>) -> Result<(), RaftDriverError> {
        match done {
            Some(Ok(batch)) => {
                self.acknowledge(batch);
                self.drain()
            }
            Some(Err(e)) => Err(RaftDriverError::Storage(e)),
            None => Err(RaftDriverError::Storage(StorageError::Failed)),
        }
    }

    /// Counters of the persistence path.
    pub fn persist_stats(&self) -> PersistStats {
        self.persister.stats()
    }

    fn on_timers(&mut self) -> Result<(), RaftDriverError> {
        for _ in 0..TIMERS_PER_TURN_MAX {
            let now = self.now();
            let Some((_, timer)) = self.timers.pop_due(now) else {
                break;
            };
            self.input(Input::Timer(timer))?;
        }
        Ok(())
    }

    fn leader(&self) -> (Option<VoterId>, Option<SocketAddr>) {
        let id = if self.raft.is_leader() {
            Some(self.raft.id())
        } else {
            self.raft.leader_hint()
        };
        (id, id.and_then(|id| self.voters.get(&id).copied()))
    }

    fn not_leader(&self) -> ControlResponse {
        let (id, addr) = self.leader();
        ControlResponse::NotLeader { id, addr }
    }

    fn on_request(
        &mut self,
        RaftRequest { request, reply }: RaftRequest,
    ) -> Result<(), RaftDriverError> {
        match request {
            ControlRequest::Leader => {
                let (id, addr) = self.leader();
                let term = self.raft.term();
                let _ = reply.send(ControlResponse::Leader { id, addr, term });
            }
            ControlRequest::KvPut { key, value, .. } => {
                let op = ClusterOp::Kv(KvCommand::Put { key, value });
                self.propose(op, reply, answer_kv_put)?;
            }
            ControlRequest::KvGet { key, .. } => {
                let query: QueryFn = Box::new(move |state: &ClusterState| {
                    ControlResponse::KvValue(state.kv().get(&key).map(<[u8]>::to_vec))
                });
                self.read(query, reply)?;
            }
            ControlRequest::FailedNodes { .. } => {
                let query: QueryFn = Box::new(|state: &ClusterState| {
                    ControlResponse::FailedNodes(state.failed_nodes().to_vec())
                });
                self.read(query, reply)?;
            }
            ControlRequest::Sched { request, .. } => match request {
                // An idle worker's ask that would change nothing is answered from the applied
                // state: an idle cluster does not grow the log (or fsync) at every lane's ask.
                // The applied state may lag the log (a job submitted a moment ago); then the
                // worker only asks again after its idle pause.
                SchedRequest::Command(SchedCommand::Lease { worker, request })
                    if self.raft.is_leader()
                        && self.state.scheduler().answers_no_work(
                            cluster_now().max(self.state.now()),
                            worker,
                            request,
                        ) =>
                {
                    self.idle_asks_answered += 1;
                    let _ = reply.send(ControlResponse::Sched(SchedAnswer::Result(
                        SchedResult::NoWork,
                    )));
                }
                SchedRequest::Command(command) => {
                    self.propose(ClusterOp::Sched(command), reply, answer_sched)?;
                }
                SchedRequest::Query(query) => {
                    let query: QueryFn = Box::new(move |state: &ClusterState| {
                        ControlResponse::Sched(api::answer_query(
                            state.scheduler(),
                            cluster_now().max(state.now()),
                            &query,
                        ))
                    });
                    self.read(query, reply)?;
                }
            },
            ControlRequest::NodeStats => {
                let persist = self.persister.stats();
                let group = crate::stats::group_of(
                    "raft",
                    &[
                        ("term", self.raft.term()),
                        ("leader", u64::from(self.raft.is_leader())),
                        ("commit_index", self.raft.commit_index()),
                        ("applied_index", self.applied),
                        ("last_index", self.raft.last_index()),
                        ("proposals_waiting", self.proposals.len() as u64),
                        ("idle_asks_answered", self.idle_asks_answered),
                        ("persist_fsyncs", persist.groups),
                    ],
                    self.raft.metrics(),
                );
                let _ = reply.send(ControlResponse::NodeStats(vec![group]));
            }
            ControlRequest::Dfs { request, .. } if request.for_leader() => {
                let alive = self
                    .view
                    .as_ref()
                    .map(|view| view.borrow().alive().clone())
                    .unwrap_or_default();
                let now = tokio::time::Instant::now();
                let starting: BTreeSet<NodeId> = self
                    .alive_since
                    .iter()
                    .filter(|(node, since)| {
                        alive.contains(node) && now.duration_since(**since) < STORE_ANNOUNCE_GRACE
                    })
                    .map(|(node, _)| *node)
                    .collect();
                match crate::dfs::leader::action(request, alive, starting) {
                    DfsAction::Propose(op) => {
                        self.propose(op, reply, crate::dfs::leader::answer_applied)?;
                    }
                    DfsAction::Read(query) => self.read(query, reply)?,
                    DfsAction::Answer(answer) => {
                        let _ = reply.send(answer);
                    }
                }
            }
            other => {
                let _ = reply.send(ControlResponse::Error(format!(
                    "not a raft request: {other:?}"
                )));
            }
        }
        Ok(())
    }

    fn propose(
        &mut self,
        op: ClusterOp,
        reply: oneshot::Sender<ControlResponse>,
        answer: AnswerFn,
    ) -> Result<(), RaftDriverError> {
        if !self.raft.is_leader() {
            let _ = reply.send(self.not_leader());
            return Ok(());
        }
        if self.proposals.len() >= PROPOSALS_PENDING_MAX {
            self.proposals.retain(|_, p| !p.reply.is_closed());
            if self.proposals.len() >= PROPOSALS_PENDING_MAX {
                let _ = reply.send(ControlResponse::Error("too many pending proposals".into()));
                return Ok(());
            }
        }
        let bytes = match ClusterCommand::new(cluster_now(), op).encode() {
            Ok(bytes) => bytes,
            Err(e) => {
                let _ = reply.send(ControlResponse::Error(format!("bad command: {e}")));
                return Ok(());
            }
        };
        self.next_proposal_id += 1;
        let id = self.next_proposal_id;
        let now = self.now();
        match self.raft.handle(now, Input::Propose { id, command: bytes }) {
            Ok(()) => {
                let index = self.raft.last_index();
                let term = self.raft.term();
                debug_assert!(matches!(
                    self.raft.entry(index).map(|e| &e.payload),
                    Some(Payload::Command { id: got, .. }) if *got == id
                ));
                self.proposals.insert(
                    index,
                    PendingProposal {
                        term,
                        reply,
                        answer,
                    },
                );
            }
            Err(consensus::Error::NotLeader { .. }) => {
                let _ = reply.send(self.not_leader());
            }
            Err(e) => {
                let _ = reply.send(ControlResponse::Error(e.to_string()));
            }
        }
        self.drain()
    }

    /// Answers `query` from the state once the leader has confirmed its leadership and applied
    /// everything committed before the read arrived (ReadIndex): a linearizable read.
    fn read(
        &mut self,
        query: QueryFn,
        reply: oneshot::Sender<ControlResponse>,
    ) -> Result<(), RaftDriverError> {
        if !self.raft.is_leader() {
            let _ = reply.send(self.not_leader());
            return Ok(());
        }
        if self.reads.len() + self.ready_reads.len() >= READS_PENDING_MAX {
            self.reads.retain(|_, r| !r.reply.is_closed());
            self.ready_reads.retain(|(_, r)| !r.reply.is_closed());
            if self.reads.len() + self.ready_reads.len() >= READS_PENDING_MAX {
                let _ = reply.send(ControlResponse::Error("too many pending reads".into()));
                return Ok(());
            }
        }
        self.next_read_id += 1;
        let id = self.next_read_id;
        let now = self.now();
        match self.raft.handle(now, Input::ReadIndex { id }) {
            Ok(()) => {
                self.reads.insert(id, PendingRead { query, reply });
            }
            Err(consensus::Error::NotLeader { .. }) => {
                let _ = reply.send(self.not_leader());
            }
            Err(e) => {
                let _ = reply.send(ControlResponse::Error(e.to_string()));
            }
        }
        self.drain()
    }

    /// Carries out the machine's outputs in order until it has none.
    fn drain(&mut self) -> Result<(), RaftDriverError> {
        while let Some(output) = self.raft.poll_output() {
            match output {
                Output::Persist(batch) => {
                    // The machine hears of a batch only once it is durable (fsynced); until
                    // then it holds every message that depends on it.
                    if let Some(durable) = self.persister.submit(batch)? {
                        self.acknowledge(durable);
                    }
                }
                Output::Send { to, msg } => self.outbound.send(to, &msg),
                Output::SetTimer { timer, at } => {
                    if let Err(e) = self.timers.push(at, timer) {
                        error!(?timer, error = %e, "raft timer dropped");
                    }
                }
                Output::Apply(entries) => {
                    for entry in entries {
                        self.apply(entry.index, entry.term, &entry.payload);
                    }
                    self.serve_ready_reads();
                }
                Output::ReadReady { id, index } => {
                    if let Some(read) = self.reads.remove(&id) {
                        self.ready_reads.push((index, read));
                        self.serve_ready_reads();
                    }
                }
                Output::ReadFailed { id, .. } => {
                    if let Some(PendingRead { reply, .. }) = self.reads.remove(&id) {
                        let _ = reply.send(self.not_leader());
                    }
                }
                Output::RestoreSnapshot(snapshot) => {
                    restore_state(&mut self.state, &snapshot)?;
                    self.applied = snapshot.index;
                    self.fail_proposals_up_to(snapshot.index);
                    self.serve_ready_reads();
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, index: u64, term: u64, payload: &Payload) {
        debug_assert!(index > self.applied, "applies arrive in order, once");
        self.applied = index;
        let result = match payload {
            Payload::Noop => None,
            Payload::Command { bytes, .. } => Some(self.state.apply(index, bytes)),
        };
        let Some(pending) = self.proposals.remove(&index) else {
            return;
        };
        let answer = if pending.term != term {
            ControlResponse::Error("the proposal was lost to a leader change; retry".into())
        } else {
            match result.map(|r| ClusterResult::decode(&r)) {
                Some(Ok(result)) => (pending.answer)(index, result),
                Some(Err(e)) => ControlResponse::Error(format!("bad result: {e}")),
                None => ControlResponse::Error("a no-op took the proposal's place".into()),
            }
        };
        let _ = pending.reply.send(answer);
        self.fail_proposals_up_to(index);
    }

    /// Proposals at or below an applied index that did not apply as theirs are lost.
    fn fail_proposals_up_to(&mut self, index: u64) {
        while let Some(entry) = self.proposals.first_entry() {
            if *entry.key() > index {
                break;
            }
            let _ = entry.remove().reply.send(ControlResponse::Error(
                "the proposal was lost to a leader change; retry".into(),
            ));
        }
    }

    fn serve_ready_reads(&mut self) {
        let applied = self.applied;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.ready_reads)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.ready_reads = waiting;
        for (_, PendingRead { query, reply }) in ready {
            let _ = reply.send(query(&self.state));
        }
    }

    /// Frames dropped by the transport so far, per peer.
    pub fn dropped(&self) -> BTreeMap<VoterId, u64> {
        self.outbound.dropped()
    }
}

fn restore_state(state: &mut ClusterState, snapshot: &Snapshot) -> Result<(), RaftDriverError> {
    state
        .restore(&snapshot.data)
        .map_err(|e| RaftDriverError::BadSnapshot {
            index: snapshot.index,
            message: e.to_string(),
        })
        .inspect_err(|e| warn!(error = %e, "cannot restore the cluster-state snapshot"))
}

/// Sleeps until `deadline`; never completes for `None` (callers also guard the branch).
/// Waits for the view to change; never completes for `None` (callers also guard the branch).
async fn changed_opt(
    view: Option<&mut watch::Receiver<MembershipView>>,
) -> Result<(), watch::error::RecvError> {
    match view {
        Some(view) => view.changed().await,
        None => std::future::pending().await,
    }
}

async fn recv_opt(done: Option<&mut mpsc::UnboundedReceiver<Completion>>) -> Option<Completion> {
    match done {
        Some(done) => done.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
