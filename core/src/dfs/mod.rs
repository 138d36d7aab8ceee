//! The distributed file system's replicated metadata: which names exist, their versions, which
//! nodes hold each version's bytes, and the pure decisions built on it (placement, repair).
//!
//! Owns: the vocabulary ([`ContentHash`], [`RequestId`], [`DfsConfig`], [`DfsCommand`],
//! [`DfsResult`], [`DfsError`]) and the modules [`names`] (name validation), [`namespace`] (the
//! state the Raft log applies), [`placement`] (where a new file's replicas go) and [`repair`]
//! (which copies restore the replication factor).
//! The bytes themselves live on the nodes' disks, addressed by their BLAKE3 hash; the write path
//! stores and fsyncs them on every chosen replica *before* a [`DfsCommand::Commit`] is proposed,
//! so a committed version is never missing bytes it promised.
//! Must never: compute a hash, touch a disk or the network, read a clock, draw randomness, or
//! panic on a command (a bad one is an error that changes nothing).

pub mod names;
pub mod namespace;
pub mod placement;
pub mod repair;
pub mod request;

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::membership::NodeId;

pub use names::{NameError, validate_name};
pub use namespace::{Blob, Garbage, Namespace, Version};
pub use request::{DfsAnswer, DfsRequest, VersionInfo};

/// Most replicas one commit may name.
pub const REPLICATION_MAX: usize = 16;
/// Most versions of one name the configuration may keep.
pub const VERSIONS_KEPT_MAX: usize = 64;
/// Largest file size the namespace accepts (1 TiB).
pub const FILE_BYTES_MAX: u64 = 1 << 40;

/// The BLAKE3 digest of a blob's bytes. Core only stores and compares it, never computes it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ContentHash(pub [u8; 32]);

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The first 8 bytes are plenty to tell blobs apart in a log line.
        write!(f, "ContentHash(")?;
        self.0[..8].iter().try_for_each(|b| write!(f, "{b:02x}"))?;
        write!(f, "..)")
    }
}

/// The idempotence key of a client request: a retried put or delete (after a leader change or
/// a lost answer) carries the same id and is applied once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId {
    /// The client (random per client process; unique in practice).
    pub client: u64,
    /// The client's request counter, strictly increasing per client.
    pub seq: u64,
}

/// The file system's settings, replicated with the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DfsConfig {
    /// Replicas per blob, 1..=[`REPLICATION_MAX`]; a version survives `replication - 1`
    /// simultaneous failures.
    pub replication: usize,
    /// Versions kept per name, 1..=[`VERSIONS_KEPT_MAX`]; older ones become garbage.
    pub versions_kept: usize,
}

impl Default for DfsConfig {
    fn default() -> Self {
        DfsConfig {
            replication: 4,
            versions_kept: 5,
        }
    }
}

/// A configuration refused by [`DfsConfig::validate`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DfsConfigError {
    /// `replication` is 0 or above [`REPLICATION_MAX`].
    #[error("replication {0} is outside 1..={REPLICATION_MAX}")]
    Replication(usize),
    /// `versions_kept` is 0 or above [`VERSIONS_KEPT_MAX`].
    #[error("versions_kept {0} is outside 1..={VERSIONS_KEPT_MAX}")]
    VersionsKept(usize),
}

impl DfsConfig {
    /// Checks the ranges documented on the fields.
    pub fn validate(&self) -> Result<(), DfsConfigError> {
        if !(1..=REPLICATION_MAX).contains(&self.replication) {
            return Err(DfsConfigError::Replication(self.replication));
        }
        if !(1..=VERSIONS_KEPT_MAX).contains(&self.versions_kept) {
            return Err(DfsConfigError::VersionsKept(self.versions_kept));
        }
        Ok(())
    }
}

/// A change to the namespace, proposed through the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DfsCommand {
    /// A new version of `name`: its bytes (`size` bytes hashing to `hash`) are already stored
    /// and fsynced on every node of `replicas`.
    Commit {
        /// The file name (validated on apply).
        name: String,
        /// Bytes in the file.
        size: u64,
        /// Their BLAKE3 digest.
        hash: ContentHash,
        /// The nodes that acknowledged the bytes on disk.
        replicas: Vec<NodeId>,
        /// The idempotence key.
        request: RequestId,
    },
    /// Deletes every version of `name`.
    Delete {
        /// The file name.
        name: String,
        /// The idempotence key.
        request: RequestId,
    },
    /// A re-replication copy of `hash` finished on `node` (stored and fsynced).
    ReplicaAdded {
        /// The blob.
        hash: ContentHash,
        /// The node that now holds it.
        node: NodeId,
    },
    /// `node`'s copy of `hash` is corrupt or missing (reported by a reader or the scrubber).
    ReplicaLost {
        /// The blob.
        hash: ContentHash,
        /// The node whose copy is bad.
        node: NodeId,
    },
    /// `node` has a blob store and takes replicas (announced by the node when it starts, once
    /// per generation). Placement and repair choose only such nodes; see
    /// [`Namespace::may_store`] for a cluster where nobody announced yet.
    StoreReady {
        /// The node (address and generation).
        node: NodeId,
    },
}

/// What a successful [`DfsCommand`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DfsResult {
    /// The commit became `version` of its name.
    Committed {
        /// The new version number.
        version: u64,
    },
    /// The name and its `versions` kept versions were deleted.
    Deleted {
        /// How many versions went.
        versions: usize,
    },
    /// The replica was recorded (or was already known).
    ReplicaAdded,
    /// The replica was forgotten (or was already unknown).
    ReplicaLost,
    /// The request was applied before; this is its answer then. Nothing changed now.
    Duplicate {
        /// The earlier answer.
        earlier: Box<DfsResult>,
    },
    /// The node is recorded as a store (or already was, or a newer generation at its address
    /// already is: then nothing changed).
    StoreReady,
}

/// Why a [`DfsCommand`] was refused. Every refusal leaves the namespace unchanged (only the
/// rejection counters and, for requests, the remembered answer move).
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum DfsError {
    /// The name is not valid.
    #[error("invalid name: {0}")]
    InvalidName(#[from] NameError),
    /// No such file.
    #[error("no file named {name:?}")]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// The commit names no replica, too many, or one twice.
    #[error("a commit needs 1..={REPLICATION_MAX} distinct replicas, got {count}")]
    BadReplicas {
        /// How many were named.
        count: usize,
    },
    /// Every named replica was already declared failed: the bytes may be gone.
    #[error("every replica of the commit has failed")]
    NoLiveReplica,
    /// The file is larger than [`FILE_BYTES_MAX`].
    #[error("file of {size} bytes is larger than {FILE_BYTES_MAX}")]
    TooLarge {
        /// Its size.
        size: u64,
    },
    /// The namespace holds its maximum number of names.
    #[error("the namespace is full ({max} names)")]
    NamespaceFull {
        /// The bound.
        max: usize,
    },
    /// The blob is not referenced by any kept version (it may be garbage now).
    #[error("no kept version refers to blob {hash}")]
    UnknownBlob {
        /// The blob.
        hash: ContentHash,
    },
    /// The node was declared failed; a copy on it does not count.
    #[error("node {node} has been declared failed")]
    NodeFailed {
        /// The node.
        node: NodeId,
    },
    /// The request is older than the last one applied for its client.
    #[error("request {seq} of client {client} is older than its last applied request {last}")]
    StaleRequest {
        /// The client.
        client: u64,
        /// The request's sequence number.
        seq: u64,
        /// The last sequence number applied for the client.
        last: u64,
    },
    /// The namespace records its maximum number of storage nodes.
    #[error("{max} storage nodes are recorded already")]
    StoresFull {
        /// The bound.
        max: usize,
    },
    /// A request named no file, or more than it may.
    #[error("a request may name 1..={max} files, got {count}")]
    BadNameCount {
        /// How many it named.
        count: usize,
        /// The bound.
        max: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_display_as_hex() {
        let mut bytes = [0u8; 32];
        bytes[0] = 0xab;
        bytes[31] = 0x01;
        let text = ContentHash(bytes).to_string();
        assert_eq!(text.len(), 64);
        assert!(text.starts_with("ab00"));
        assert!(text.ends_with("01"));
        assert_eq!(
            format!("{:?}", ContentHash(bytes)),
            "ContentHash(ab00000000000000..)"
        );
    }

    #[test]
    fn config_ranges() {
        assert_eq!(DfsConfig::default().validate(), Ok(()));
        let bad = DfsConfig {
            replication: 0,
            ..DfsConfig::default()
        };
        assert_eq!(bad.validate(), Err(DfsConfigError::Replication(0)));
        let bad = DfsConfig {
            versions_kept: VERSIONS_KEPT_MAX + 1,
            ..DfsConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}
