//! Membership message types: what one SWIM node says to another.
//!
//! Owns: [`NodeId`], [`MemberState`], [`Update`] (one dissemination record), [`Message`] and
//! [`Packet`] (one datagram's worth: a message plus piggybacked updates).
//! Must never: contain logic beyond ordering and size accounting; decisions live in the machine.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A member's identity: its address plus a generation chosen at process start, so a restarted
/// node is a new member and its predecessor's incarnations die out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId {
    /// Where the node receives datagrams (and its control/TCP port).
    pub addr: SocketAddr,
    /// Strictly increasing across restarts of the process at `addr`.
    pub generation: u64,
}

impl NodeId {
    /// A node id from its parts.
    pub const fn new(addr: SocketAddr, generation: u64) -> Self {
        NodeId { addr, generation }
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.addr, self.generation)
    }
}

/// What a node believes about a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Failed a probe; declared dead when its suspicion timeout runs out unless it refutes.
    Suspect,
    /// Declared failed. Kept as a tombstone for a while so stale gossip cannot resurrect it.
    Dead,
    /// Left gracefully. Also a tombstone.
    Left,
}

impl MemberState {
    /// Alive or suspect: still counted as part of the cluster.
    pub const fn is_live(self) -> bool {
        matches!(self, MemberState::Alive | MemberState::Suspect)
    }
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Dead => "dead",
            MemberState::Left => "left",
        };
        f.write_str(s)
    }
}

/// One dissemination record, piggybacked on packets and exchanged in push-pull syncs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Update {
    /// `node` is alive at `incarnation` (a join, or a refutation with a bumped incarnation).
    Alive {
        /// The member.
        node: NodeId,
        /// Its incarnation.
        incarnation: u64,
    },
    /// `by` suspects `node` at `incarnation`.
    Suspect {
        /// The member.
        node: NodeId,
        /// The incarnation suspected.
        incarnation: u64,
        /// Who suspects it (distinct suspecters shorten the timeout).
        by: NodeId,
    },
    /// `by` declared `node` failed at `incarnation`.
    Dead {
        /// The member.
        node: NodeId,
        /// The incarnation declared dead.
        incarnation: u64,
        /// Who declared it.
        by: NodeId,
    },
    /// `node` left gracefully.
    Left {
        /// The member.
        node: NodeId,
        /// Its incarnation when leaving.
        incarnation: u64,
    },
}

impl Update {
    /// The member this update is about.
    pub const fn node(&self) -> NodeId {
        match *self {
            Update::Alive { node, .. }
            | Update::Suspect { node, .. }
            | Update::Dead { node, .. }
            | Update::Left { node, .. } => node,
        }
    }

    /// The incarnation it carries.
    pub const fn incarnation(&self) -> u64 {
        match *self {
            Update::Alive { incarnation, .. }
            | Update::Suspect { incarnation, .. }
            | Update::Dead { incarnation, .. }
            | Update::Left { incarnation, .. } => incarnation,
        }
    }

    /// The state it asserts.
    pub const fn state(&self) -> MemberState {
        match self {
            Update::Alive { .. } => MemberState::Alive,
            Update::Suspect { .. } => MemberState::Suspect,
            Update::Dead { .. } => MemberState::Dead,
            Update::Left { .. } => MemberState::Left,
        }
    }
}

/// The main message of a packet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Direct probe; answered with [`Message::Ack`] carrying the same `seq`.
    Ping {
        /// Prober's sequence number.
        seq: u64,
    },
    /// Answer to a ping, or a relay's report that the indirect target answered.
    Ack {
        /// The sequence number being acknowledged.
        seq: u64,
    },
    /// Ask the receiver to probe `target` on the sender's behalf and relay the ack.
    PingReq {
        /// The original prober's sequence number, echoed in the relayed ack.
        seq: u64,
        /// The member to probe.
        target: NodeId,
    },
    /// Ask a seed to admit the sender; the seed answers with [`Message::Sync`] chunks.
    Join,
    /// Anti-entropy: a chunk of the sender's member table. `reply` is false on the initiating
    /// side of a push-pull (the receiver answers with its own chunk) and true on answers.
    Sync {
        /// Member records, at most what fits in one datagram.
        entries: Vec<Update>,
        /// Whether this is an answer (and must not be answered again).
        reply: bool,
    },
    /// No main message: the packet only carries piggybacked updates.
    Gossip,
}

/// One membership datagram.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packet {
    /// The sender.
    pub from: NodeId,
    /// The member this packet is meant for, when the sender knows it; a node drops packets
    /// addressed to another generation at its address.
    pub to: Option<NodeId>,
    /// The main message.
    pub message: Message,
    /// Piggybacked dissemination records.
    pub gossip: Vec<Update>,
}
