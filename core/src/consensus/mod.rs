//! Raft consensus as a sans-IO state machine: the replicated log behind the coordinator.
//!
//! Owns: one voter's term, vote, log, commit and apply positions; leader election with
//! randomized timeouts (from the seeded RNG it owns), pre-vote and check-quorum (a partitioned
//! voter cannot depose a healthy leader: voters that heard from a leader within
//! `election_timeout_min` refuse (pre-)votes, and a leader that has not heard from a quorum
//! within that time steps down); log replication with batching (up to
//! `entries_per_message_max` entries and [`MESSAGE_PAYLOAD_BYTES_MAX`] bytes per message) and
//! pipelining (`inflight_max` messages per follower); commit by a majority of the current term;
//! conflict back-off with a hint from the follower; log compaction behind a state-machine
//! snapshot (`Input::Compact`) and InstallSnapshot for followers that need compacted entries
//! (sent whole, at most [`SNAPSHOT_BYTES_MAX`]); linearizable reads through ReadIndex (a
//! heartbeat round stamped with a read round; a quorum of answers stamped at or after it
//! confirms leadership, and the read waits at least for this term's no-op).
//!
//! Inputs ([`Raft::handle`]): peer messages, timers (handed back exactly as requested; stale
//! tokens are counted and ignored), proposals, reads, compactions, and persistence
//! acknowledgements.
//! Outputs ([`Raft::poll_output`]): numbered [`PersistBatch`]es, messages, timers, committed
//! entries to apply (in order, exactly once per index per instance), snapshots to restore, and
//! read confirmations.
//!
//! Persist-before-send: every message produced while a persist batch is outstanding is held
//! until `Input::Persisted` acknowledges that batch (raft-rs's "persisted messages"). That
//! covers granted votes, append acknowledgements, and a candidate's own vote (counted only once
//! durable). A leader counts its own log toward commit only up to its last durable entry.
//!
//! Must never: perform I/O, read a clock, use global randomness, panic on peer data, let a
//! message that depends on unpersisted state leave, or apply an index twice or out of order.

mod config;
mod kv;
mod msg;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use config::{Config, ConfigError, INFLIGHT_MAX_LIMIT, UNCOMMITTED_ENTRIES_LIMIT};
pub use kv::{
    KEY_BYTES_MAX, KV_BYTES_MAX, KvCommand, KvResult, KvStore, StateMachine, encode_snapshot,
};
pub use msg::{
    Body, COMMAND_BYTES_MAX, ENTRIES_PER_MESSAGE_MAX, Entry, HardState, MESSAGE_BYTES_MAX,
    MESSAGE_PAYLOAD_BYTES_MAX, Malformed, Message, Payload, PersistBatch, PersistedState,
    SNAPSHOT_BYTES_MAX, Snapshot, VoterId, decode, encode,
};

use crate::time::Instant;

/// Most voters a cluster may configure.
pub const VOTERS_MAX: usize = 64;
/// Most messages held back waiting for a persist acknowledgement; beyond this the oldest are
/// dropped and counted (Raft tolerates lost messages).
pub const HELD_MESSAGES_MAX: usize = 4096;
/// Most read-index requests a leader holds unconfirmed; more fail with
/// [`Error::ReadQueueFull`].
pub const READS_PENDING_MAX: usize = 1024;
/// Most entries scanned backwards when computing a conflict hint.
const CONFLICT_SCAN_MAX: u64 = 4096;

/// Identifies one armed timer; a timer whose token is no longer current is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimerToken(u64);

/// What a timer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimerKind {
    /// No word from a leader: start a pre-vote (followers and candidates).
    Election,
    /// Leader: send AppendEntries to every follower.
    Heartbeat,
    /// Leader: step down unless a quorum answered since the last check.
    CheckQuorum,
}

/// A timer request, handed back as [`Input::Timer`] when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timer {
    /// What it is for.
    pub kind: TimerKind,
    /// Which arming it belongs to.
    pub token: TimerToken,
}

/// Everything that can happen to the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A message from voter `from` (decoded by the driver with [`decode`]).
    Message {
        /// The sender.
        from: VoterId,
        /// The message.
        msg: Message,
    },
    /// A timer requested through [`Output::SetTimer`] fired.
    Timer(Timer),
    /// Append a command (leader only).
    Propose {
        /// The proposer's id, echoed in the applied entry.
        id: u64,
        /// The command, at most [`COMMAND_BYTES_MAX`] bytes.
        command: Vec<u8>,
    },
    /// Every persist batch up to and including this one is durable.
    Persisted(u64),
    /// A linearizable read (leader only): once a quorum confirms this node still leads,
    /// [`Output::ReadReady`] names the index the state machine must have applied before the
    /// read is served.
    ReadIndex {
        /// The caller's id for this read, echoed back.
        id: u64,
    },
    /// Compact the log up to `index` (at most the applied index), replacing it with `data`,
    /// the state machine's snapshot right after applying `index`.
    Compact {
        /// Last index the snapshot covers.
        index: u64,
        /// The snapshot bytes, at most [`SNAPSHOT_BYTES_MAX`].
        data: Vec<u8>,
    },
}

/// Something the driver must do, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Make this durable (fsync), then answer with [`Input::Persisted`].
    Persist(PersistBatch),
    /// Send a message (encode it with [`encode`]).
    Send {
        /// Destination voter.
        to: VoterId,
        /// The message.
        msg: Message,
    },
    /// Hand `timer` back at `at`.
    SetTimer {
        /// The timer.
        timer: Timer,
        /// When.
        at: Instant,
    },
    /// Committed entries, contiguous and in order, to apply to the state machine.
    Apply(Vec<Entry>),
    /// Read `id` may be served once the state machine has applied `index`.
    ReadReady {
        /// The read's id.
        id: u64,
        /// The read index.
        index: u64,
    },
    /// Read `id` cannot be confirmed: this node stopped leading. Retry at the leader.
    ReadFailed {
        /// The read's id.
        id: u64,
        /// Who this node now believes leads, if anyone.
        leader_hint: Option<VoterId>,
    },
    /// Replace the state machine with this snapshot (installed from the leader); later
    /// [`Output::Apply`] continue from `snapshot.index + 1`.
    RestoreSnapshot(Snapshot),
}

/// Why an input was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    /// A proposal reached a node that is not the leader. State unchanged.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// The leader this node last heard from in its current term, if any.
        leader_hint: Option<VoterId>,
    },
    /// The command exceeds [`COMMAND_BYTES_MAX`]. State unchanged.
    #[error("command of {bytes} bytes exceeds {max}")]
    CommandTooLarge {
        /// Its size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The leader already holds `Config::uncommitted_entries_max` uncommitted entries.
    /// State unchanged.
    #[error("{uncommitted} uncommitted entries: proposal queue full")]
    ProposalQueueFull {
        /// Entries not yet committed.
        uncommitted: u64,
    },
    /// A message from someone that is not a configured voter; dropped and counted, state
    /// otherwise unchanged.
    #[error("message from {0:?}, not a voter")]
    UnknownPeer(VoterId),
    /// A message claiming to come from this node; dropped and counted.
    #[error("message claims to come from this node")]
    FromSelf,
    /// A structurally invalid message; dropped and counted.
    #[error("malformed message: {0:?}")]
    Malformed(Malformed),
    /// A vote response naming another candidate (delayed across a restart or re-election, or
    /// delivered to the wrong voter); dropped and counted, state unchanged (not even its term
    /// is looked at).
    #[error("a vote response for {0:?}, not for this node")]
    Misdirected(VoterId),
    /// An acknowledgement for a batch never issued; ignored and counted.
    #[error("persisted({acked}) but only {issued} batches were issued")]
    UnknownBatch {
        /// The acknowledged number.
        acked: u64,
        /// The last issued.
        issued: u64,
    },
    /// [`READS_PENDING_MAX`] reads are already waiting for confirmation. State unchanged.
    #[error("too many reads waiting for confirmation")]
    ReadQueueFull,
    /// A compaction beyond the applied index, or with an oversized snapshot. State unchanged.
    #[error("cannot compact to {index}: applied {applied}, or snapshot over the size limit")]
    BadCompaction {
        /// The requested index.
        index: u64,
        /// The applied index.
        applied: u64,
    },
    /// Construction with a bad config, voter set or persisted state. Nothing was built.
    #[error("invalid setup: {0}")]
    InvalidSetup(String),
}

/// Counters for everything the machine dropped, sent and decided.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    /// Messages handed in.
    pub messages_received: u64,
    /// Messages emitted.
    pub messages_sent: u64,
    /// Messages refused as malformed, from non-voters or from self.
    pub messages_invalid: u64,
    /// Messages of an older term, answered or dropped.
    pub messages_stale_term: u64,
    /// Stale responses ignored (old rejections, answers to a finished election).
    pub responses_stale: u64,
    /// Vote responses addressed to another candidate, dropped.
    pub responses_misdirected: u64,
    /// Timers whose token was no longer current.
    pub timers_stale: u64,
    /// Messages dropped because too many were waiting for a persist ack.
    pub held_dropped: u64,
    /// Pre-votes started.
    pub pre_votes_started: u64,
    /// Real elections started.
    pub elections_started: u64,
    /// Terms in which this node became leader.
    pub leaderships: u64,
    /// (Pre-)vote requests refused because a leader was heard from recently.
    pub votes_refused_in_lease: u64,
    /// Leaderships ended by check-quorum.
    pub check_quorum_step_downs: u64,
    /// Persist batches issued.
    pub persist_batches: u64,
    /// Entries appended to this node's log (by proposal, no-op or replication).
    pub entries_appended: u64,
    /// Entries removed from this node's log by conflict resolution.
    pub entries_truncated: u64,
    /// Entries handed out to apply.
    pub entries_applied: u64,
    /// Proposals refused.
    pub proposals_refused: u64,
    /// Followers moved back to probing (rejection or stall).
    pub probes_restarted: u64,
    /// Snapshots sent to followers.
    pub snapshots_sent: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// Compactions of this node's log.
    pub compactions: u64,
    /// Reads confirmed by a quorum.
    pub reads_ready: u64,
    /// Reads failed by a loss of leadership.
    pub reads_failed: u64,
}

/// A voter's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Following (or waiting for) a leader.
    Follower,
    /// Asking for pre-votes.
    PreCandidate,
    /// Asking for votes in its term.
    Candidate,
    /// Leading its term.
    Leader,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProgressState {
    /// One message at a time until the match point is found.
    Probe,
    /// Pipelined: `next` runs ahead of `matched` by up to `inflight_max` messages.
    Replicate,
}

#[derive(Debug, Clone)]
struct Progress {
    matched: u64,
    next: u64,
    state: ProgressState,
    /// Probe: a probe is outstanding.
    paused: bool,
    /// Replicate: last index of each message in flight, ascending.
    inflight: VecDeque<u64>,
    /// Heartbeats since the last acknowledgement that moved `matched`.
    stall: u32,
    /// Heard from since the last check-quorum.
    active: bool,
}

#[derive(Debug, Clone)]
enum RoleState {
    Follower,
    PreCandidate {
        granted: BTreeSet<VoterId>,
    },
    Candidate {
        granted: BTreeSet<VoterId>,
        /// The batch that made our own vote durable; counted once acked.
        self_vote_batch: u64,
    },
    Leader {
        progress: BTreeMap<VoterId, Progress>,
        /// Index of this term's first entry (its no-op): reads wait at least for it.
        term_start: u64,
        /// Reads waiting for a quorum, in round order.
        reads: VecDeque<PendingRead>,
    },
}

#[derive(Debug, Clone)]
struct PendingRead {
    id: u64,
    index: u64,
    round: u64,
    confirmed: BTreeSet<VoterId>,
}

/// One Raft voter. See the module docs.
#[derive(Debug)]
pub struct Raft {
    config: Config,
    id: VoterId,
    voters: BTreeSet<VoterId>,
    rng: ChaCha8Rng,
    hard: HardState,
    /// The latest snapshot; the log starts right after it.
    snapshot: Option<Snapshot>,
    /// Entries after the snapshot: `log[i]` has index `offset + i + 1`.
    log: Vec<Entry>,
    commit: u64,
    applied: u64,
    role: RoleState,
    leader_hint: Option<VoterId>,
    /// When a leader of the current term was last heard from (the lease voters respect).
    leader_contact_at: Option<Instant>,
    // persistence
    hard_dirty: bool,
    snapshot_dirty: bool,
    unstable_from: Option<u64>,
    batch_issued: u64,
    batch_acked: u64,
    /// Last log index each unacknowledged batch covers.
    batch_last_index: VecDeque<(u64, u64)>,
    /// Highest log index known durable (for the leader's own match).
    durable_index: u64,
    // outputs
    sends: Vec<(VoterId, Message)>,
    held: VecDeque<(u64, VoterId, Message)>,
    outputs: VecDeque<Output>,
    next_token: u64,
    election_token: TimerToken,
    heartbeat_token: TimerToken,
    check_quorum_token: TimerToken,
    metrics: Metrics,
    /// Leader: the current read-index round (stamped on every message).
    read_round: u64,
    /// Follower: the stamp of the message being answered.
    reply_context: u64,
}

impl Raft {
    // ----- construction -----

    /// A fresh voter with an empty log.
    pub fn new(
        config: Config,
        id: VoterId,
        voters: BTreeSet<VoterId>,
        seed: u64,
        now: Instant,
    ) -> Result<Self, Error> {
        Raft::restore(config, id, voters, PersistedState::default(), seed, now)
    }

    /// A voter restarting from what was durable. Commit and apply start at the snapshot (the
    /// driver restores its state machine from `persisted.snapshot`); the rest of the state
    /// machine is rebuilt by applying the log again as commits become known.
    pub fn restore(
        config: Config,
        id: VoterId,
        voters: BTreeSet<VoterId>,
        persisted: PersistedState,
        seed: u64,
        now: Instant,
    ) -> Result<Self, Error> {
        config
            .validate()
            .map_err(|e| Error::InvalidSetup(e.to_string()))?;
        if voters.is_empty() || voters.len() > VOTERS_MAX || !voters.contains(&id) {
            return Err(Error::InvalidSetup(format!(
                "voters must be 1..={VOTERS_MAX} ids including {id:?}"
            )));
        }
        let offset = persisted.snapshot.as_ref().map_or(0, |s| s.index);
        let mut term = persisted.snapshot.as_ref().map_or(0, |s| s.term);
        for (i, entry) in persisted.entries.iter().enumerate() {
            if entry.index != offset + i as u64 + 1 || entry.term < term {
                return Err(Error::InvalidSetup(format!(
                    "persisted log broken at position {i}"
                )));
            }
            term = entry.term;
        }
        if term > persisted.hard_state.term {
            return Err(Error::InvalidSetup(
                "persisted log has a term above the hard state".into(),
            ));
        }
        let durable_index = offset + persisted.entries.len() as u64;
        let mut raft = Raft {
            config,
            id,
            voters,
            rng: ChaCha8Rng::seed_from_u64(seed),
            hard: persisted.hard_state,
            log: persisted.entries,
            snapshot: persisted.snapshot,
            commit: offset,
            applied: offset,
            role: RoleState::Follower,
            leader_hint: None,
            leader_contact_at: None,
            hard_dirty: false,
            snapshot_dirty: false,
            unstable_from: None,
            batch_issued: 0,
            batch_acked: 0,
            batch_last_index: VecDeque::new(),
            durable_index,
            sends: Vec::new(),
            held: VecDeque::new(),
            outputs: VecDeque::new(),
            next_token: 0,
            election_token: TimerToken(0),
            heartbeat_token: TimerToken(0),
            check_quorum_token: TimerToken(0),
            metrics: Metrics::default(),
            read_round: 0,
            reply_context: 0,
        };
        raft.arm_election(now);
        raft.check_invariants();
        Ok(raft)
    }

    // ----- getters -----

    /// This voter.
    pub fn id(&self) -> VoterId {
        self.id
    }

    /// The configured voters.
    pub fn voters(&self) -> &BTreeSet<VoterId> {
        &self.voters
    }

    /// Current term.
    pub fn term(&self) -> u64 {
        self.hard.term
    }

    /// Current hard state (term, vote), durable or not.
    pub fn hard_state(&self) -> HardState {
        self.hard
    }

    /// Current role.
    pub fn role(&self) -> Role {
        match self.role {
            RoleState::Follower => Role::Follower,
            RoleState::PreCandidate { .. } => Role::PreCandidate,
            RoleState::Candidate { .. } => Role::Candidate,
            RoleState::Leader { .. } => Role::Leader,
        }
    }

    /// Whether this node leads its term.
    pub fn is_leader(&self) -> bool {
        matches!(self.role, RoleState::Leader { .. })
    }

    /// The leader this node believes in for its term (itself when leading).
    pub fn leader_hint(&self) -> Option<VoterId> {
        self.leader_hint
    }

    /// The in-memory log after the snapshot (durable or not), from [`Raft::first_index`].
    pub fn log(&self) -> &[Entry] {
        &self.log
    }

    /// The latest snapshot, if the log was compacted.
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }

    /// Index of the first entry still in the log (the snapshot's index + 1).
    pub fn first_index(&self) -> u64 {
        self.offset() + 1
    }

    fn offset(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, |s| s.index)
    }

    /// Index of the last entry (the snapshot's index if the log is empty, else 0).
    pub fn last_index(&self) -> u64 {
        self.offset() + self.log.len() as u64
    }

    /// Highest index known committed.
    pub fn commit_index(&self) -> u64 {
        self.commit
    }

    /// Highest index handed out to apply.
    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    /// The entry at `index`, if present (not compacted).
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        let i = usize::try_from(index.checked_sub(self.offset() + 1)?).ok()?;
        self.log.get(i)
    }

    /// Counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Persist batches issued and not yet acknowledged.
    pub fn persist_outstanding(&self) -> u64 {
        self.batch_issued - self.batch_acked
    }

    /// A majority of the voters.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    // ----- inputs -----

    /// Feeds one input. On `Err` the input was dropped (and counted); see each variant.
    pub fn handle(&mut self, now: Instant, input: Input) -> Result<(), Error> {
        self.check_invariants();
        let term_before = self.hard.term;
        let commit_before = self.commit;
        let result = match input {
            Input::Message { from, msg } => self.on_message(now, from, msg),
            Input::Timer(timer) => {
                self.on_timer(now, timer);
                Ok(())
            }
            Input::Propose { id, command } => self.on_propose(id, command),
            Input::Persisted(batch) => self.on_persisted(now, batch),
            Input::Compact { index, data } => self.on_compact(index, data),
            Input::ReadIndex { id } => self.on_read_index(id),
        };
        self.flush();
        debug_assert!(self.hard.term >= term_before, "term never decreases");
        debug_assert!(self.commit >= commit_before, "commit never decreases");
        self.check_invariants();
        result
    }

    /// The next output; call until `None` after every [`Raft::handle`].
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    fn on_message(&mut self, now: Instant, from: VoterId, msg: Message) -> Result<(), Error> {
        self.metrics.messages_received += 1;
        if from == self.id {
            self.metrics.messages_invalid += 1;
            return Err(Error::FromSelf);
        }
        if !self.voters.contains(&from) {
            self.metrics.messages_invalid += 1;
            return Err(Error::UnknownPeer(from));
        }
        if let Err(why) = msg.validate() {
            self.metrics.messages_invalid += 1;
            return Err(Error::Malformed(why));
        }
        if let Some(candidate) = msg.body.addressee()
            && candidate != self.id
        {
            self.metrics.responses_misdirected += 1;
            return Err(Error::Misdirected(candidate));
        }
        self.reply_context = msg.context;
        let result = self.on_valid_message(now, from, msg);
        self.reply_context = 0;
        result
    }

    fn on_valid_message(&mut self, now: Instant, from: VoterId, msg: Message) -> Result<(), Error> {
        // Pre-vote requests carry a future term and change nothing; handle them first.
        if let Body::PreVote {
            last_index,
            last_term,
        } = msg.body
        {
            self.on_pre_vote(now, from, msg.term, last_index, last_term);
            return Ok(());
        }
        if msg.term > self.hard.term {
            if let Body::RequestVote { .. } = msg.body
                && self.in_lease(now)
            {
                self.metrics.votes_refused_in_lease += 1;
                return Ok(());
            }
            if let Body::PreVoteResponse { granted: true, .. } = msg.body {
                // A grant is stamped with the term we would campaign in; not a newer term.
            } else {
                let leader = matches!(msg.body, Body::AppendEntries { .. }).then_some(from);
                self.become_follower(now, msg.term, leader);
            }
        } else if msg.term < self.hard.term {
            self.metrics.messages_stale_term += 1;
            self.answer_stale(from, &msg);
            return Ok(());
        }
        match msg.body {
            Body::PreVote { .. } => {}
            Body::PreVoteResponse { granted, candidate } => {
                debug_assert_eq!(candidate, self.id, "misdirected responses were dropped");
                self.on_pre_vote_response(now, from, msg.term, granted)
            }
            Body::RequestVote {
                last_index,
                last_term,
            } => self.on_request_vote(now, from, last_index, last_term),
            Body::VoteResponse { granted, candidate } => {
                debug_assert_eq!(candidate, self.id, "misdirected responses were dropped");
                self.on_vote_response(now, from, granted)
            }
            Body::AppendEntries {
                prev_index,
                prev_term,
                entries,
                leader_commit,
            } => self.on_append(now, from, prev_index, prev_term, entries, leader_commit),
            Body::InstallSnapshot { snapshot } => self.on_install_snapshot(now, from, snapshot),
            Body::AppendResponse {
                prev_index,
                index,
                success,
            } => self.on_append_response(from, msg.context, prev_index, index, success),
        }
        Ok(())
    }

    /// A message of an older term: tell the sender our term so a deposed leader or stale
    /// candidate learns it (needed with pre-vote and check-quorum, or it could be stuck).
    fn answer_stale(&mut self, from: VoterId, msg: &Message) {
        let body = match msg.body {
            Body::AppendEntries { prev_index, .. } => Body::AppendResponse {
                prev_index,
                index: 0,
                success: false,
            },
            Body::InstallSnapshot { .. } => Body::AppendResponse {
                prev_index: 0,
                index: 0,
                success: false,
            },
            Body::RequestVote { .. } => Body::VoteResponse {
                candidate: from,
                granted: false,
            },
            _ => return,
        };
        self.send(from, body);
    }

    fn on_pre_vote(
        &mut self,
        now: Instant,
        from: VoterId,
        term: u64,
        last_index: u64,
        last_term: u64,
    ) {
        let up_to_date = self.is_up_to_date(last_index, last_term);
        let in_lease = self.in_lease(now);
        let granted = term > self.hard.term && up_to_date && !in_lease;
        if term > self.hard.term && in_lease {
            self.metrics.votes_refused_in_lease += 1;
        }
        let reply_term = if granted { term } else { self.hard.term };
        self.sends.push((
            from,
            Message {
                term: reply_term,
                context: 0,
                body: Body::PreVoteResponse {
                    candidate: from,
                    granted,
                },
            },
        ));
    }

    fn on_pre_vote_response(&mut self, now: Instant, from: VoterId, term: u64, granted: bool) {
        let quorum = self.quorum();
        let RoleState::PreCandidate { granted: votes } = &mut self.role else {
            self.metrics.responses_stale += 1;
            return;
        };
        if !granted || term != self.hard.term + 1 {
            self.metrics.responses_stale += u64::from(granted);
            return;
        }
        votes.insert(from);
        if votes.len() >= quorum {
            self.start_election(now);
        }
    }

    fn on_request_vote(&mut self, now: Instant, from: VoterId, last_index: u64, last_term: u64) {
        let can_vote = self.hard.vote.is_none() || self.hard.vote == Some(from);
        let granted = can_vote
            && self.is_up_to_date(last_index, last_term)
            && matches!(
                self.role,
                RoleState::Follower | RoleState::PreCandidate { .. }
            );
        if granted {
            self.role = RoleState::Follower;
            debug_assert!(self.hard.vote.is_none() || self.hard.vote == Some(from));
            if self.hard.vote.is_none() {
                self.hard.vote = Some(from);
                self.hard_dirty = true;
            }
            self.arm_election(now);
        }
        self.send(
            from,
            Body::VoteResponse {
                candidate: from,
                granted,
            },
        );
    }

    fn on_vote_response(&mut self, now: Instant, from: VoterId, granted: bool) {
        let RoleState::Candidate { granted: votes, .. } = &mut self.role else {
            self.metrics.responses_stale += 1;
            return;
        };
        if granted {
            votes.insert(from);
        }
        self.maybe_win(now);
    }

    fn on_append(
        &mut self,
        now: Instant,
        from: VoterId,
        prev_index: u64,
        prev_term: u64,
        entries: Vec<Entry>,
        leader_commit: u64,
    ) {
        if !self.follow(now, from) {
            return;
        }
        let reply_prev = prev_index;
        let (mut prev_index, mut prev_term, mut entries) = (prev_index, prev_term, entries);
        let offset = self.offset();
        if prev_index < offset {
            // Entries up to the snapshot are committed, so they match the leader's: skip them.
            let snapshot_term = self.term_at(offset).unwrap_or(0);
            entries.retain(|e| e.index > offset);
            prev_index = offset;
            prev_term = snapshot_term;
            if entries.is_empty() {
                self.send(
                    from,
                    Body::AppendResponse {
                        prev_index: reply_prev,
                        index: offset,
                        success: true,
                    },
                );
                return;
            }
            if entries.first().map(|e| e.index) != Some(offset + 1) {
                return;
            }
        }
        if prev_index > self.last_index() {
            let hint = self.last_index() + 1;
            self.send(
                from,
                Body::AppendResponse {
                    prev_index,
                    index: hint,
                    success: false,
                },
            );
            return;
        }
        if self.term_at(prev_index) != Some(prev_term) {
            let hint = self.conflict_hint(prev_index);
            self.send(
                from,
                Body::AppendResponse {
                    prev_index,
                    index: hint,
                    success: false,
                },
            );
            return;
        }
        if entries
            .iter()
            .any(|e| e.index <= self.commit && self.term_at(e.index).is_some_and(|t| t != e.term))
        {
            // Contradicts a committed entry: no legitimate leader sends that (found by fuzzing).
            // Refuse the whole message before touching the log.
            self.metrics.messages_invalid += 1;
            return;
        }
        let matched = prev_index + entries.len() as u64;
        let prev_index = reply_prev;
        for entry in entries {
            match self.term_at(entry.index) {
                Some(term) if term == entry.term => continue,
                Some(_) => self.truncate_from(entry.index),
                None => {}
            }
            debug_assert_eq!(entry.index, self.last_index() + 1);
            self.append(entry);
        }
        let new_commit = leader_commit.min(matched);
        if new_commit > self.commit {
            self.commit = new_commit;
        }
        self.send(
            from,
            Body::AppendResponse {
                prev_index,
                index: matched,
                success: true,
            },
        );
    }

    /// `from` leads our current term (it sent an append or a snapshot): follow it and reset the
    /// election timer. False, with the message counted as invalid, when we lead this term
    /// ourselves: a second leader in one term is impossible in Raft, so the message is forged or
    /// corrupted and dropping it keeps our log and role (found by fuzzing).
    fn follow(&mut self, now: Instant, from: VoterId) -> bool {
        if self.is_leader() {
            self.metrics.messages_invalid += 1;
            return false;
        }
        if !matches!(self.role, RoleState::Follower) {
            let term = self.hard.term;
            self.become_follower(now, term, Some(from));
        }
        self.leader_hint = Some(from);
        self.leader_contact_at = Some(now);
        self.arm_election(now);
        true
    }

    fn on_install_snapshot(&mut self, now: Instant, from: VoterId, snapshot: Snapshot) {
        if !self.follow(now, from) {
            return;
        }
        if snapshot.index <= self.commit {
            // Nothing new: what we have committed matches the leader up to our commit.
            let index = self.commit;
            self.send(
                from,
                Body::AppendResponse {
                    prev_index: 0,
                    index,
                    success: true,
                },
            );
            return;
        }
        self.metrics.snapshots_installed += 1;
        let index = snapshot.index;
        if self.term_at(index) == Some(snapshot.term) {
            let keep_from = (index - self.offset()) as usize;
            self.log.drain(..keep_from);
        } else {
            self.metrics.entries_truncated += self.log.len() as u64;
            self.log.clear();
            self.unstable_from = Some(index + 1);
            self.durable_index = self.durable_index.min(index);
            for (_, last) in &mut self.batch_last_index {
                *last = (*last).min(index);
            }
        }
        if self.unstable_from.is_some_and(|u| u <= index) {
            self.unstable_from = Some(index + 1);
        }
        self.commit = index;
        self.applied = index;
        self.snapshot = Some(snapshot.clone());
        self.snapshot_dirty = true;
        self.outputs.push_back(Output::RestoreSnapshot(snapshot));
        self.send(
            from,
            Body::AppendResponse {
                prev_index: 0,
                index,
                success: true,
            },
        );
    }

    fn on_compact(&mut self, index: u64, data: Vec<u8>) -> Result<(), Error> {
        if index > self.applied || data.len() > SNAPSHOT_BYTES_MAX {
            return Err(Error::BadCompaction {
                index,
                applied: self.applied,
            });
        }
        let offset = self.offset();
        if index <= offset {
            return Ok(());
        }
        let Some(term) = self.term_at(index) else {
            debug_assert!(false, "applied entries are in the log");
            return Ok(());
        };
        self.log.drain(..(index - offset) as usize);
        if self.unstable_from.is_some_and(|u| u <= index) {
            self.unstable_from = Some(index + 1);
        }
        self.snapshot = Some(Snapshot { index, term, data });
        self.snapshot_dirty = true;
        self.metrics.compactions += 1;
        Ok(())
    }

    fn on_append_response(
        &mut self,
        from: VoterId,
        context: u64,
        prev_index: u64,
        index: u64,
        success: bool,
    ) {
        let last_index = self.last_index();
        let inflight_max = self.config.inflight_max;
        let RoleState::Leader { progress, .. } = &mut self.role else {
            self.metrics.responses_stale += 1;
            return;
        };
        let Some(p) = progress.get_mut(&from) else {
            return;
        };
        p.active = true;
        self.confirm_reads(from, context);
        let RoleState::Leader { progress, .. } = &mut self.role else {
            return;
        };
        let Some(p) = progress.get_mut(&from) else {
            return;
        };
        if success {
            if index > last_index {
                // Claims entries we never sent: a bug or a lie; ignore it.
                self.metrics.messages_invalid += 1;
                return;
            }
            if index > p.matched {
                p.matched = index;
                p.stall = 0;
                while p.inflight.front().is_some_and(|&last| last <= index) {
                    p.inflight.pop_front();
                }
            }
            p.next = p.next.max(p.matched + 1);
            if p.state == ProgressState::Probe {
                p.state = ProgressState::Replicate;
                p.paused = false;
                p.inflight.clear();
                p.next = p.matched + 1;
            }
            debug_assert!(p.inflight.len() <= inflight_max);
            self.maybe_commit();
        } else {
            if prev_index > last_index {
                // Rejects an append we could never have sent (found by fuzzing).
                self.metrics.messages_invalid += 1;
                return;
            }
            if prev_index < p.matched
                || (p.state == ProgressState::Probe && prev_index + 1 != p.next)
            {
                self.metrics.responses_stale += 1;
                return;
            }
            // `matched <= last_index`, so the bounds are ordered and `next` stays within the log.
            let upper = prev_index.max(p.matched + 1).min(last_index + 1);
            let hint = index.clamp(p.matched + 1, upper);
            p.next = hint;
            p.state = ProgressState::Probe;
            p.paused = false;
            p.inflight.clear();
            self.metrics.probes_restarted += 1;
        }
        self.send_append(from, false);
    }

    fn on_timer(&mut self, now: Instant, timer: Timer) {
        let current = match timer.kind {
            TimerKind::Election => self.election_token,
            TimerKind::Heartbeat => self.heartbeat_token,
            TimerKind::CheckQuorum => self.check_quorum_token,
        };
        if timer.token != current {
            self.metrics.timers_stale += 1;
            return;
        }
        match timer.kind {
            TimerKind::Election => self.on_election_timeout(now),
            TimerKind::Heartbeat => self.on_heartbeat(now),
            TimerKind::CheckQuorum => self.on_check_quorum(now),
        }
    }

    fn on_election_timeout(&mut self, now: Instant) {
        debug_assert!(!self.is_leader());
        self.arm_election(now);
        self.leader_hint = None;
        self.leader_contact_at = None;
        self.metrics.pre_votes_started += 1;
        let mut granted = BTreeSet::new();
        granted.insert(self.id);
        self.role = RoleState::PreCandidate { granted };
        if self.quorum() == 1 {
            self.start_election(now);
            return;
        }
        let (last_index, last_term) = (self.last_index(), self.last_term());
        let term = self.hard.term + 1;
        for peer in self.peers() {
            self.sends.push((
                peer,
                Message {
                    term,
                    context: 0,
                    body: Body::PreVote {
                        last_index,
                        last_term,
                    },
                },
            ));
        }
    }

    fn start_election(&mut self, now: Instant) {
        self.metrics.elections_started += 1;
        self.hard.term += 1;
        self.hard.vote = Some(self.id);
        self.hard_dirty = true;
        self.leader_hint = None;
        self.arm_election(now);
        // The vote becomes durable with the batch flushed at the end of this input.
        self.role = RoleState::Candidate {
            granted: BTreeSet::new(),
            self_vote_batch: self.batch_issued + 1,
        };
        let (last_index, last_term) = (self.last_index(), self.last_term());
        for peer in self.peers() {
            self.send(
                peer,
                Body::RequestVote {
                    last_index,
                    last_term,
                },
            );
        }
    }

    fn maybe_win(&mut self, now: Instant) {
        let quorum = self.quorum();
        let RoleState::Candidate {
            granted,
            self_vote_batch,
        } = &self.role
        else {
            return;
        };
        let self_counted = usize::from(self.batch_acked >= *self_vote_batch);
        if granted.len() + self_counted >= quorum && self_counted == 1 {
            self.become_leader(now);
        }
    }

    fn become_leader(&mut self, now: Instant) {
        debug_assert_eq!(self.hard.vote, Some(self.id), "a leader voted for itself");
        self.metrics.leaderships += 1;
        let next = self.last_index() + 1;
        let progress = self
            .peers()
            .into_iter()
            .map(|peer| {
                (
                    peer,
                    Progress {
                        matched: 0,
                        next,
                        state: ProgressState::Probe,
                        paused: false,
                        inflight: VecDeque::new(),
                        stall: 0,
                        active: false,
                    },
                )
            })
            .collect();
        self.role = RoleState::Leader {
            progress,
            term_start: next,
            reads: VecDeque::new(),
        };
        self.leader_hint = Some(self.id);
        self.leader_contact_at = Some(now);
        self.election_token = self.fresh_token(); // disarm
        let entry = Entry {
            term: self.hard.term,
            index: next,
            payload: Payload::Noop,
        };
        self.append(entry);
        self.heartbeat_token = self.arm(TimerKind::Heartbeat, now + self.config.heartbeat_interval);
        self.check_quorum_token = self.arm(
            TimerKind::CheckQuorum,
            now + self.config.election_timeout_min,
        );
        self.broadcast_append(false);
        self.maybe_commit();
    }

    fn become_follower(&mut self, now: Instant, term: u64, leader: Option<VoterId>) {
        debug_assert!(term >= self.hard.term);
        if term > self.hard.term {
            self.hard.term = term;
            self.hard.vote = None;
            self.hard_dirty = true;
        }
        self.fail_reads(leader);
        self.role = RoleState::Follower;
        self.leader_hint = leader;
        self.heartbeat_token = self.fresh_token();
        self.check_quorum_token = self.fresh_token();
        self.arm_election(now);
    }

    fn on_heartbeat(&mut self, now: Instant) {
        debug_assert!(self.is_leader());
        self.leader_contact_at = Some(now);
        self.heartbeat_token = self.arm(TimerKind::Heartbeat, now + self.config.heartbeat_interval);
        self.broadcast_append(true);
    }

    fn on_check_quorum(&mut self, now: Instant) {
        let quorum = self.quorum();
        let RoleState::Leader { progress, .. } = &mut self.role else {
            return;
        };
        let active = 1 + progress.values().filter(|p| p.active).count();
        for p in progress.values_mut() {
            p.active = false;
        }
        if active < quorum {
            self.metrics.check_quorum_step_downs += 1;
            let term = self.hard.term;
            self.become_follower(now, term, None);
            self.leader_contact_at = None;
            return;
        }
        self.check_quorum_token = self.arm(
            TimerKind::CheckQuorum,
            now + self.config.election_timeout_min,
        );
    }

    fn on_propose(&mut self, id: u64, command: Vec<u8>) -> Result<(), Error> {
        if !self.is_leader() {
            self.metrics.proposals_refused += 1;
            return Err(Error::NotLeader {
                leader_hint: self.leader_hint,
            });
        }
        if command.len() > COMMAND_BYTES_MAX {
            self.metrics.proposals_refused += 1;
            return Err(Error::CommandTooLarge {
                bytes: command.len(),
                max: COMMAND_BYTES_MAX,
            });
        }
        let uncommitted = self.last_index() - self.commit;
        if uncommitted >= self.config.uncommitted_entries_max as u64 {
            self.metrics.proposals_refused += 1;
            return Err(Error::ProposalQueueFull { uncommitted });
        }
        let entry = Entry {
            term: self.hard.term,
            index: self.last_index() + 1,
            payload: Payload::Command { id, bytes: command },
        };
        self.append(entry);
        self.broadcast_append(false);
        Ok(())
    }

    fn on_read_index(&mut self, id: u64) -> Result<(), Error> {
        let quorum = self.quorum();
        let commit = self.commit;
        let RoleState::Leader {
            term_start, reads, ..
        } = &mut self.role
        else {
            return Err(Error::NotLeader {
                leader_hint: self.leader_hint,
            });
        };
        if reads.len() >= READS_PENDING_MAX {
            return Err(Error::ReadQueueFull);
        }
        // Entries committed before this term are only known committed here once this term's
        // no-op is: the read waits for at least that.
        let index = commit.max(*term_start);
        if quorum == 1 {
            self.metrics.reads_ready += 1;
            self.outputs.push_back(Output::ReadReady { id, index });
            return Ok(());
        }
        self.read_round += 1;
        reads.push_back(PendingRead {
            id,
            index,
            round: self.read_round,
            confirmed: BTreeSet::new(),
        });
        // A heartbeat round stamped with the new round confirms it.
        for peer in self.peers() {
            self.send_heartbeat(peer);
        }
        Ok(())
    }

    /// An empty AppendEntries from what `peer` is known to hold (skipped while it needs a
    /// snapshot; the next heartbeat round retries).
    fn send_heartbeat(&mut self, peer: VoterId) {
        let offset = self.offset();
        let RoleState::Leader { progress, .. } = &self.role else {
            return;
        };
        let Some(p) = progress.get(&peer) else {
            return;
        };
        let prev_index = if p.state == ProgressState::Probe {
            p.next - 1
        } else {
            p.matched
        };
        if prev_index >= offset {
            self.send_entries(peer, prev_index, 0);
        }
    }

    fn confirm_reads(&mut self, from: VoterId, context: u64) {
        let quorum = self.quorum();
        let RoleState::Leader { reads, .. } = &mut self.role else {
            return;
        };
        for read in reads.iter_mut() {
            if read.round > context {
                break;
            }
            read.confirmed.insert(from);
        }
        // Rounds are confirmed in order: a later round's quorum confirms every earlier read.
        let Some(last_ready) = reads.iter().rposition(|r| r.confirmed.len() + 1 >= quorum) else {
            return;
        };
        for read in reads.drain(..=last_ready) {
            self.metrics.reads_ready += 1;
            self.outputs.push_back(Output::ReadReady {
                id: read.id,
                index: read.index,
            });
        }
    }

    fn fail_reads(&mut self, leader_hint: Option<VoterId>) {
        let RoleState::Leader { reads, .. } = &mut self.role else {
            return;
        };
        for read in std::mem::take(reads) {
            self.metrics.reads_failed += 1;
            self.outputs.push_back(Output::ReadFailed {
                id: read.id,
                leader_hint,
            });
        }
    }

    fn on_persisted(&mut self, now: Instant, batch: u64) -> Result<(), Error> {
        if batch > self.batch_issued {
            return Err(Error::UnknownBatch {
                acked: batch,
                issued: self.batch_issued,
            });
        }
        if batch <= self.batch_acked {
            return Ok(());
        }
        self.batch_acked = batch;
        while let Some(&(b, last)) = self.batch_last_index.front() {
            if b > batch {
                break;
            }
            self.durable_index = last;
            self.batch_last_index.pop_front();
        }
        while let Some((b, _, _)) = self.held.front() {
            if *b > batch {
                break;
            }
            if let Some((_, to, msg)) = self.held.pop_front() {
                self.metrics.messages_sent += 1;
                self.outputs.push_back(Output::Send { to, msg });
            }
        }
        self.maybe_win(now);
        self.maybe_commit();
        Ok(())
    }

    // ----- replication -----

    fn broadcast_append(&mut self, heartbeat: bool) {
        for peer in self.peers() {
            self.send_append(peer, heartbeat);
        }
    }

    /// Sends what `peer` needs, within the pipelining and batching bounds. A heartbeat also
    /// re-probes a paused follower, detects a stalled pipeline, and carries the commit index.
    fn send_append(&mut self, peer: VoterId, heartbeat: bool) {
        let last_index = self.last_index();
        let (inflight_max, stall_max) =
            (self.config.inflight_max, self.config.stall_heartbeats_max);
        let RoleState::Leader { progress, .. } = &mut self.role else {
            return;
        };
        let Some(p) = progress.get_mut(&peer) else {
            return;
        };
        if heartbeat {
            match p.state {
                ProgressState::Probe => p.paused = false,
                ProgressState::Replicate => {
                    if p.inflight.is_empty() {
                        p.stall = 0;
                    } else {
                        p.stall += 1;
                    }
                    if p.stall >= stall_max {
                        p.state = ProgressState::Probe;
                        p.paused = false;
                        p.inflight.clear();
                        p.next = p.matched + 1;
                        p.stall = 0;
                        self.metrics.probes_restarted += 1;
                    }
                }
            }
        }
        let offset = self.snapshot.as_ref().map_or(0, |s| s.index);
        if p.next <= offset {
            if p.state == ProgressState::Probe && p.paused {
                return;
            }
            p.state = ProgressState::Probe;
            p.paused = true;
            p.inflight.clear();
            if let Some(snapshot) = self.snapshot.clone() {
                self.metrics.snapshots_sent += 1;
                self.send(peer, Body::InstallSnapshot { snapshot });
            }
            return;
        }
        let (from, state) = match p.state {
            ProgressState::Probe if p.paused => return,
            ProgressState::Probe => (p.next, ProgressState::Probe),
            ProgressState::Replicate if p.inflight.len() >= inflight_max || p.next > last_index => {
                if heartbeat && p.matched >= offset {
                    // Keep the lease and the commit index flowing from what is known to match.
                    let prev_index = p.matched;
                    self.send_entries(peer, prev_index, 0);
                }
                return;
            }
            ProgressState::Replicate => (p.next, ProgressState::Replicate),
        };
        debug_assert!(from >= 1 && from <= last_index + 1);
        let count = self.batch_len(from);
        let RoleState::Leader { progress, .. } = &mut self.role else {
            return;
        };
        let Some(p) = progress.get_mut(&peer) else {
            return;
        };
        match state {
            ProgressState::Probe => p.paused = true,
            ProgressState::Replicate => {
                debug_assert!(count > 0);
                p.next = from + count;
                p.inflight.push_back(from + count - 1);
            }
        }
        self.send_entries(peer, from - 1, count);
    }

    /// How many entries from `from` fit in one message.
    fn batch_len(&self, from: u64) -> u64 {
        let mut count = 0u64;
        let mut bytes = 0usize;
        let mut index = from;
        while let Some(entry) = self.entry(index) {
            if count as usize >= self.config.entries_per_message_max {
                break;
            }
            let len = entry.payload.len_bytes();
            if count > 0 && bytes + len > MESSAGE_PAYLOAD_BYTES_MAX {
                break;
            }
            bytes += len;
            count += 1;
            index += 1;
        }
        count
    }

    fn send_entries(&mut self, peer: VoterId, prev_index: u64, count: u64) {
        let Some(prev_term) = self.term_at(prev_index) else {
            debug_assert!(false, "prev_index {prev_index} beyond the log");
            return;
        };
        let start = (prev_index - self.offset()) as usize;
        let entries = self.log[start..start + count as usize].to_vec();
        let leader_commit = self.commit;
        self.send(
            peer,
            Body::AppendEntries {
                prev_index,
                prev_term,
                entries,
                leader_commit,
            },
        );
    }

    fn maybe_commit(&mut self) {
        let RoleState::Leader { progress, .. } = &self.role else {
            return;
        };
        let mut matched: Vec<u64> = progress.values().map(|p| p.matched).collect();
        matched.push(self.durable_index.min(self.last_index()));
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let candidate = matched[self.quorum() - 1];
        if candidate > self.commit && self.term_at(candidate) == Some(self.hard.term) {
            self.commit = candidate;
            // Followers learn the new commit index with the next message (or heartbeat).
        }
    }

    // ----- log -----

    fn append(&mut self, entry: Entry) {
        debug_assert_eq!(entry.index, self.last_index() + 1, "appends are contiguous");
        debug_assert!(
            entry.term >= self.last_term(),
            "terms never decrease in a log"
        );
        debug_assert!(entry.term <= self.hard.term);
        self.unstable_from = Some(
            self.unstable_from
                .map_or(entry.index, |u| u.min(entry.index)),
        );
        self.log.push(entry);
        self.metrics.entries_appended += 1;
    }

    fn truncate_from(&mut self, index: u64) {
        debug_assert!(index > self.commit, "a committed entry would be truncated");
        debug_assert!(!self.is_leader(), "a leader never truncates its log");
        debug_assert!(index > self.offset());
        let keep = (index - self.offset() - 1) as usize;
        self.metrics.entries_truncated += (self.log.len() - keep) as u64;
        self.log.truncate(keep);
        self.durable_index = self.durable_index.min(index - 1);
        for (_, last) in &mut self.batch_last_index {
            *last = (*last).min(index - 1);
        }
        self.unstable_from = Some(self.unstable_from.map_or(index, |u| u.min(index)));
    }

    fn term_at(&self, index: u64) -> Option<u64> {
        if index == 0 {
            return Some(0);
        }
        match &self.snapshot {
            Some(s) if s.index == index => Some(s.term),
            _ => self.entry(index).map(|e| e.term),
        }
    }

    fn last_term(&self) -> u64 {
        self.log
            .last()
            .map(|e| e.term)
            .or(self.snapshot.as_ref().map(|s| s.term))
            .unwrap_or(0)
    }

    fn is_up_to_date(&self, last_index: u64, last_term: u64) -> bool {
        (last_term, last_index) >= (self.last_term(), self.last_index())
    }

    /// The first index of the conflicting term at `index` (bounded scan): the leader retries
    /// from there, skipping a whole term of divergent entries per round trip.
    fn conflict_hint(&self, index: u64) -> u64 {
        let Some(term) = self.term_at(index) else {
            return self.last_index() + 1;
        };
        let mut first = index;
        let floor = index.saturating_sub(CONFLICT_SCAN_MAX).max(self.commit + 1);
        while first > floor && self.term_at(first - 1) == Some(term) {
            first -= 1;
        }
        first.max(1)
    }

    // ----- effects -----

    fn peers(&self) -> Vec<VoterId> {
        self.voters
            .iter()
            .copied()
            .filter(|&v| v != self.id)
            .collect()
    }

    fn in_lease(&self, now: Instant) -> bool {
        if self.is_leader() {
            return true;
        }
        self.leader_contact_at
            .is_some_and(|at| now.saturating_duration_since(at) < self.config.election_timeout_min)
    }

    fn send(&mut self, to: VoterId, body: Body) {
        let term = self.hard.term;
        let context = if self.is_leader() {
            self.read_round
        } else {
            self.reply_context
        };
        self.sends.push((
            to,
            Message {
                term,
                context,
                body,
            },
        ));
    }

    /// Ends one input: issues the persist batch for what changed, then releases or holds the
    /// messages produced, then hands out newly committed entries.
    fn flush(&mut self) {
        if self.hard_dirty || self.unstable_from.is_some() || self.snapshot_dirty {
            self.batch_issued += 1;
            self.metrics.persist_batches += 1;
            let offset = self.offset();
            let first_index = self
                .unstable_from
                .unwrap_or(self.last_index() + 1)
                .max(offset + 1);
            let start = (first_index - offset - 1) as usize;
            let entries = self
                .log
                .get(start..)
                .map(<[Entry]>::to_vec)
                .unwrap_or_default();
            let snapshot = if self.snapshot_dirty {
                self.snapshot.clone()
            } else {
                None
            };
            self.outputs.push_back(Output::Persist(PersistBatch {
                batch: self.batch_issued,
                hard_state: self.hard,
                snapshot,
                first_index,
                entries,
            }));
            self.batch_last_index
                .push_back((self.batch_issued, self.last_index()));
            self.hard_dirty = false;
            self.snapshot_dirty = false;
            self.unstable_from = None;
        }
        for (to, msg) in std::mem::take(&mut self.sends) {
            debug_assert!(to != self.id, "never a message to itself");
            debug_assert!(
                msg.body.addressee().is_none_or(|candidate| candidate == to),
                "a vote response names the voter it goes to"
            );
            if self.batch_acked == self.batch_issued {
                self.metrics.messages_sent += 1;
                self.outputs.push_back(Output::Send { to, msg });
            } else {
                if self.held.len() >= HELD_MESSAGES_MAX {
                    self.held.pop_front();
                    self.metrics.held_dropped += 1;
                }
                self.held.push_back((self.batch_issued, to, msg));
            }
        }
        while self.applied < self.commit {
            let first = self.applied + 1;
            let last = self
                .commit
                .min(self.applied + self.config.apply_batch_max as u64);
            let offset = self.offset();
            debug_assert!(first > offset, "applied never trails the snapshot");
            let entries =
                self.log[(first - offset - 1) as usize..(last - offset) as usize].to_vec();
            self.metrics.entries_applied += entries.len() as u64;
            self.applied = last;
            self.outputs.push_back(Output::Apply(entries));
        }
    }

    fn arm_election(&mut self, now: Instant) {
        let min = self.config.election_timeout_min;
        let micros = u64::try_from(min.as_micros()).unwrap_or(u64::MAX).max(1);
        let jitter = Duration::from_micros(self.rng.random_range(0..micros));
        self.election_token = self.arm(TimerKind::Election, now + min + jitter);
    }

    fn arm(&mut self, kind: TimerKind, at: Instant) -> TimerToken {
        let token = self.fresh_token();
        self.outputs.push_back(Output::SetTimer {
            timer: Timer { kind, token },
            at,
        });
        token
    }

    fn fresh_token(&mut self) -> TimerToken {
        self.next_token += 1;
        TimerToken(self.next_token)
    }

    fn check_invariants(&self) {
        debug_assert!(self.commit <= self.last_index(), "commit <= last index");
        debug_assert!(self.applied <= self.commit, "applied <= commit");
        debug_assert!(self.offset() <= self.applied, "the snapshot is applied");
        debug_assert!(
            self.log
                .first()
                .is_none_or(|e| e.index == self.offset() + 1),
            "the log starts right after the snapshot"
        );
        debug_assert!(self.batch_acked <= self.batch_issued);
        debug_assert!(self.durable_index <= self.last_index() || self.unstable_from.is_some());
        debug_assert!(
            self.last_term() <= self.hard.term,
            "no entry from the future"
        );
        debug_assert!(
            !self.is_leader() || self.hard.vote == Some(self.id),
            "a leader voted for itself in its term"
        );
        debug_assert!(
            !matches!(self.role, RoleState::Candidate { .. }) || self.hard.vote == Some(self.id),
            "a candidate voted for itself"
        );
        debug_assert!(self.held.len() <= HELD_MESSAGES_MAX);
        if let RoleState::Leader { progress, .. } = &self.role {
            for p in progress.values() {
                debug_assert!(p.matched < p.next, "match < next");
                debug_assert!(p.next <= self.last_index() + 1, "next <= last + 1");
                debug_assert!(p.inflight.len() <= self.config.inflight_max);
            }
        }
    }
}
