//! Raft's data types: identities, log entries, hard state, persist batches and peer messages,
//! with their wire encoding (one TCP frame of [`crate::wire`] per message) and the structural
//! checks every decoded message passes before the machine looks at it.
//!
//! Owns: [`VoterId`], [`Entry`], [`HardState`], [`PersistBatch`], [`Message`], the size limits
//! of one message, and [`encode`] / [`decode`].
//! Must never: trust a decoded message's shape (indices, counts, sizes) before
//! [`Message::validate`] has passed, or panic on any byte string.

use serde::{Deserialize, Serialize};

use crate::wire::{self, FRAME_HEADER_BYTES, WireError};

/// Most entries one AppendEntries carries (batching bound).
pub const ENTRIES_PER_MESSAGE_MAX: usize = 64;
/// Most command bytes one AppendEntries carries (at least one entry is always allowed, and one
/// command is at most [`COMMAND_BYTES_MAX`]).
pub const MESSAGE_PAYLOAD_BYTES_MAX: usize = 1 << 20;
/// Largest command a proposal may carry.
pub const COMMAND_BYTES_MAX: usize = 64 * 1024;
/// Largest state-machine snapshot (sent whole in one InstallSnapshot; chunking is future work).
pub const SNAPSHOT_BYTES_MAX: usize = 15 << 20;
/// Largest encoded message accepted by [`decode`]: a snapshot (the largest body) plus headroom
/// for headers.
pub const MESSAGE_BYTES_MAX: usize = SNAPSHOT_BYTES_MAX + 64 * 1024;

/// A voter's identity: a small number that survives restarts.
///
/// Not `membership::NodeId`: that one carries the node's generation, which changes on every
/// restart, while Raft's vote and log must stay attached to the same voter across restarts.
/// The runtime maps a `VoterId` to the current address of that voter.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct VoterId(pub u64);

/// What a log entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Payload {
    /// Appended by every new leader to commit entries of earlier terms.
    Noop,
    /// A client command, opaque to Raft.
    Command {
        /// The proposer's id for this proposal (client-chosen, echoed back on apply).
        id: u64,
        /// The command bytes, at most [`COMMAND_BYTES_MAX`].
        bytes: Vec<u8>,
    },
}

impl Payload {
    /// Bytes of command data (0 for a no-op).
    pub fn len_bytes(&self) -> usize {
        match self {
            Payload::Noop => 0,
            Payload::Command { bytes, .. } => bytes.len(),
        }
    }
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    /// Term of the leader that created it.
    pub term: u64,
    /// Position in the log, from 1.
    pub index: u64,
    /// What it carries.
    pub payload: Payload,
}

/// A state-machine snapshot: the state right after applying every entry up to `index`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Snapshot {
    /// Last index it covers (the log before and at it is compacted away).
    pub index: u64,
    /// Term of the entry at `index`.
    pub term: u64,
    /// The state machine's snapshot bytes, at most [`SNAPSHOT_BYTES_MAX`].
    pub data: Vec<u8>,
}

/// What must be durable before a vote or an acknowledgement leaves the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct HardState {
    /// Latest term seen.
    pub term: u64,
    /// Who this node voted for in `term`.
    pub vote: Option<VoterId>,
}

/// One numbered write the driver must make durable (fsync) and then acknowledge with
/// `Input::Persisted(batch)`. Batches are numbered 1, 2, ... and must be applied in order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PersistBatch {
    /// Sequence number of this batch.
    pub batch: u64,
    /// The hard state to store (always the current one).
    pub hard_state: HardState,
    /// A new snapshot, stored first: stored entries up to its index are dropped (all of them
    /// if the stored entry at its index has another term).
    pub snapshot: Option<Snapshot>,
    /// Then every stored entry with index >= `first_index` is discarded, and `entries`
    /// appended. `entries` (if any) start at `first_index`.
    pub first_index: u64,
    /// The entries to append.
    pub entries: Vec<Entry>,
}

/// Everything that was durable when a node stopped: what `Raft::restore` starts from.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PersistedState {
    /// The hard state.
    pub hard_state: HardState,
    /// The latest snapshot, if the log was ever compacted.
    pub snapshot: Option<Snapshot>,
    /// The log after the snapshot, contiguous indices in order.
    pub entries: Vec<Entry>,
}

impl PersistedState {
    /// Applies one batch the way a durable store must.
    pub fn apply(&mut self, batch: &PersistBatch) {
        self.hard_state = batch.hard_state;
        if let Some(snapshot) = &batch.snapshot {
            let matches = self
                .entries
                .iter()
                .any(|e| e.index == snapshot.index && e.term == snapshot.term);
            if matches {
                self.entries.retain(|e| e.index > snapshot.index);
            } else {
                self.entries.clear();
            }
            self.snapshot = Some(snapshot.clone());
        }
        self.entries.retain(|e| e.index < batch.first_index);
        self.entries.extend(batch.entries.iter().cloned());
    }
}

/// A Raft message between voters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    /// The sender's term (for a pre-vote request: the term it would campaign in).
    pub term: u64,
    /// Read-index round: a leader stamps its current round, a follower echoes the stamp of the
    /// message it answers. An answer stamped `r` confirms leadership for reads of round <= r.
    pub context: u64,
    /// What it says.
    pub body: Body,
}

/// The kinds of Raft message.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Body {
    /// "Would you vote for me in `term`?" Changes no state at the receiver.
    PreVote {
        /// Index of the sender's last entry.
        last_index: u64,
        /// Term of the sender's last entry.
        last_term: u64,
    },
    /// Answer to [`Body::PreVote`].
    PreVoteResponse {
        /// The pre-candidate it answers: any other receiver drops it (a response delayed or
        /// misdelivered across a restart or a re-election is never counted for someone else).
        candidate: VoterId,
        /// Whether the vote would be granted.
        granted: bool,
    },
    /// A real vote request.
    RequestVote {
        /// Index of the candidate's last entry.
        last_index: u64,
        /// Term of the candidate's last entry.
        last_term: u64,
    },
    /// Answer to [`Body::RequestVote`]; a grant is released only after the vote is durable.
    VoteResponse {
        /// The candidate it answers: any other receiver drops it (as for
        /// [`Body::PreVoteResponse`]).
        candidate: VoterId,
        /// Whether the vote was granted.
        granted: bool,
    },
    /// Replication and heartbeat.
    AppendEntries {
        /// Index of the entry before `entries`.
        prev_index: u64,
        /// Its term.
        prev_term: u64,
        /// New entries, contiguous from `prev_index + 1`, bounded by
        /// [`ENTRIES_PER_MESSAGE_MAX`] and [`MESSAGE_PAYLOAD_BYTES_MAX`].
        entries: Vec<Entry>,
        /// The leader's commit index.
        leader_commit: u64,
    },
    /// The leader's snapshot, for a follower that needs compacted entries.
    InstallSnapshot {
        /// The snapshot.
        snapshot: Snapshot,
    },
    /// Answer to [`Body::AppendEntries`] and [`Body::InstallSnapshot`], released only after the entries are durable.
    AppendResponse {
        /// The `prev_index` of the request answered.
        prev_index: u64,
        /// On success: the follower's log matches the leader's up to here. On rejection: a hint,
        /// the next index the leader should try (conflict back-off).
        index: u64,
        /// Whether the entries were accepted.
        success: bool,
    },
}

impl Body {
    /// The voter a response is addressed to, for the responses that name it (the vote
    /// responses); `None` for every other kind.
    pub fn addressee(&self) -> Option<VoterId> {
        match self {
            Body::PreVoteResponse { candidate, .. } | Body::VoteResponse { candidate, .. } => {
                Some(*candidate)
            }
            Body::PreVote { .. }
            | Body::RequestVote { .. }
            | Body::AppendEntries { .. }
            | Body::InstallSnapshot { .. }
            | Body::AppendResponse { .. } => None,
        }
    }
}

/// Why a message is malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// More than [`ENTRIES_PER_MESSAGE_MAX`] entries.
    TooManyEntries,
    /// More than [`MESSAGE_PAYLOAD_BYTES_MAX`] (plus one command) of payload.
    TooManyBytes,
    /// A command above [`COMMAND_BYTES_MAX`].
    CommandTooLarge,
    /// Entries not contiguous from `prev_index + 1`, or terms not non-decreasing, or above the
    /// message term, or below `prev_term`.
    BadEntries,
    /// `prev_term` set with `prev_index` 0, or a last-entry term above the request's term.
    BadIndex,
    /// A snapshot at index 0, of a term above the message's, or above [`SNAPSHOT_BYTES_MAX`].
    BadSnapshot,
}

impl Message {
    /// Structural checks that need no node state.
    pub fn validate(&self) -> Result<(), Malformed> {
        match &self.body {
            Body::PreVote {
                last_index,
                last_term,
            }
            | Body::RequestVote {
                last_index,
                last_term,
            } => {
                if (*last_index == 0) != (*last_term == 0) || *last_term > self.term {
                    return Err(Malformed::BadIndex);
                }
            }
            Body::AppendEntries {
                prev_index,
                prev_term,
                entries,
                ..
            } => {
                if (*prev_index == 0 && *prev_term != 0) || *prev_term > self.term {
                    return Err(Malformed::BadIndex);
                }
                if entries.len() > ENTRIES_PER_MESSAGE_MAX {
                    return Err(Malformed::TooManyEntries);
                }
                let mut bytes = 0usize;
                let mut term = *prev_term;
                for (offset, entry) in entries.iter().enumerate() {
                    let len = entry.payload.len_bytes();
                    if len > COMMAND_BYTES_MAX {
                        return Err(Malformed::CommandTooLarge);
                    }
                    bytes = bytes.saturating_add(len);
                    let expected = prev_index.checked_add(offset as u64 + 1);
                    if Some(entry.index) != expected || entry.term < term || entry.term > self.term
                    {
                        return Err(Malformed::BadEntries);
                    }
                    term = entry.term;
                }
                if bytes > MESSAGE_PAYLOAD_BYTES_MAX + COMMAND_BYTES_MAX {
                    return Err(Malformed::TooManyBytes);
                }
            }
            Body::InstallSnapshot { snapshot } => {
                if snapshot.index == 0
                    || snapshot.term == 0
                    || snapshot.term > self.term
                    || snapshot.data.len() > SNAPSHOT_BYTES_MAX
                {
                    return Err(Malformed::BadSnapshot);
                }
            }
            Body::PreVoteResponse { .. }
            | Body::VoteResponse { .. }
            | Body::AppendResponse { .. } => {}
        }
        Ok(())
    }
}

/// Encodes a message as one frame (length prefix, version byte, bincode body).
pub fn encode(message: &Message) -> Result<Vec<u8>, WireError> {
    let bytes = wire::encode_frame(message)?;
    if bytes.len() > MESSAGE_BYTES_MAX {
        return Err(WireError::Oversized {
            len: bytes.len(),
            max: MESSAGE_BYTES_MAX,
        });
    }
    Ok(bytes)
}

/// Decodes one frame made by [`encode`]; any byte string is a valid input. Does not run
/// [`Message::validate`] (the machine does, to count it).
pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
    if bytes.len() > MESSAGE_BYTES_MAX {
        return Err(WireError::Oversized {
            len: bytes.len(),
            max: MESSAGE_BYTES_MAX,
        });
    }
    let header: [u8; FRAME_HEADER_BYTES] = bytes
        .get(..FRAME_HEADER_BYTES)
        .and_then(|h| h.try_into().ok())
        .ok_or(WireError::Empty)?;
    let len = wire::decode_frame_header(header)?;
    let body = &bytes[FRAME_HEADER_BYTES..];
    if body.len() != len {
        return Err(WireError::TrailingBytes(body.len().abs_diff(len)));
    }
    wire::decode_frame_body(body)
}
