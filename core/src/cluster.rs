//! The cluster's replicated state: everything the coordinator must not lose, applied from the
//! Raft log on every voter.
//!
//! Owns: [`ClusterState`] (the one [`StateMachine`] the runtime and the simulator replicate: the
//! key-value store, the failed-node list, the file-system namespace ([`crate::dfs`]) and the
//! inference scheduler ([`crate::scheduler`])),
//! [`ClusterCommand`] (a timestamped [`ClusterOp`], the bytes a leader proposes) and
//! [`ClusterResult`] (what the proposer gets back).
//! Time: the proposing leader stamps each command with its `now`; apply clamps it so the
//! replicated clock never runs backwards across leader changes. Every replica computes the
//! same state from the same log, so lease expiry and statistics use only these stamps.
//! Must never: read a clock, draw randomness, iterate a hash map, or panic on a malformed or
//! hostile command (it yields [`ClusterResult::Invalid`] and changes nothing but the applied
//! index).

use serde::{Deserialize, Serialize};

use crate::consensus::{KvCommand, KvResult, KvStore, StateMachine, encode_snapshot};
use crate::dfs::{DfsCommand, DfsError, DfsResult, Namespace};
use crate::membership::NodeId;
use crate::scheduler::{SchedCommand, SchedResult, Scheduler};
use crate::time::Instant;
use crate::wire::{self, WireError};

/// One operation on the cluster's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterOp {
    /// A key-value command.
    Kv(KvCommand),
    /// Membership declared `node` failed (proposed by the leader when its detector reports it):
    /// every part of the state forgets what the node held.
    NodeFailed {
        /// The failed node (address and generation).
        node: NodeId,
    },
    /// A file-system change (see [`crate::dfs`]).
    Dfs(DfsCommand),
    /// A scheduler command (jobs, leases, completions).
    Sched(SchedCommand),
}

/// A proposal: an operation stamped with the proposing leader's clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterCommand {
    /// The leader's `now` when it proposed.
    pub now: Instant,
    /// What to do.
    pub op: ClusterOp,
}

impl ClusterCommand {
    /// A command proposed at `now`.
    pub fn new(now: Instant, op: ClusterOp) -> Self {
        ClusterCommand { now, op }
    }

    /// The bytes to propose.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        wire::encode_frame(self)
    }

    /// Decodes proposal bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let body = bytes
            .get(wire::FRAME_HEADER_BYTES..)
            .ok_or(WireError::Empty)?;
        wire::decode_frame_body(body)
    }
}

/// The result of one [`ClusterCommand`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterResult {
    /// A key-value result.
    Kv(KvResult),
    /// A node failure was recorded.
    NodeFailed,
    /// The command did not decode; nothing changed.
    Invalid,
    /// A file-system result.
    Dfs(Result<DfsResult, DfsError>),
    /// A scheduler result.
    Sched(SchedResult),
}

impl ClusterResult {
    /// Encodes a result (what [`StateMachine::apply`] returns).
    pub fn encode(&self) -> Vec<u8> {
        // Our own enum of bounded values always encodes; an empty vector marks the impossible.
        wire::encode_frame(self).unwrap_or_default()
    }

    /// Decodes a result.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let body = bytes
            .get(wire::FRAME_HEADER_BYTES..)
            .ok_or(WireError::Empty)?;
        wire::decode_frame_body(body)
    }
}

/// Everything the Raft log replicates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    kv: KvStore,
    applied: u64,
    /// The replicated clock: the largest command stamp applied so far.
    now: Instant,
    /// Nodes reported failed, oldest first, at most [`FAILED_NODES_KEPT`].
    failed: Vec<NodeId>,
    /// The file-system namespace.
    dfs: Namespace,
    /// Jobs and leases.
    scheduler: Scheduler,
}

/// How many failed nodes the state remembers (for `list` commands and deduplication).
pub const FAILED_NODES_KEPT: usize = 256;

impl ClusterState {
    /// The key-value store.
    pub fn kv(&self) -> &KvStore {
        &self.kv
    }

    /// The replicated clock: the latest command stamp applied.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Recently failed nodes, oldest first.
    pub fn failed_nodes(&self) -> &[NodeId] {
        &self.failed
    }

    /// The file-system namespace.
    pub fn dfs(&self) -> &Namespace {
        &self.dfs
    }

    /// The inference scheduler.
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// Applies one decoded command.
    pub fn execute(&mut self, command: ClusterCommand) -> ClusterResult {
        // A new leader's clock may lag the old one's: the replicated clock never goes back.
        self.now = self.now.max(command.now);
        match command.op {
            ClusterOp::Kv(kv) => ClusterResult::Kv(self.kv.execute(kv)),
            ClusterOp::NodeFailed { node } => {
                self.scheduler.node_failed(self.now, node);
                if !self.failed.contains(&node) {
                    if self.failed.len() >= FAILED_NODES_KEPT {
                        self.failed.remove(0);
                    }
                    self.failed.push(node);
                    self.dfs.node_failed(node);
                }
                debug_assert!(self.failed.len() <= FAILED_NODES_KEPT);
                ClusterResult::NodeFailed
            }
            ClusterOp::Dfs(command) => ClusterResult::Dfs(self.dfs.execute(self.now, command)),
            ClusterOp::Sched(command) => {
                ClusterResult::Sched(self.scheduler.apply(self.now, command))
            }
        }
    }
}

impl StateMachine for ClusterState {
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
        debug_assert!(index > self.applied, "indices arrive strictly increasing");
        self.applied = index;
        let result = match ClusterCommand::decode(command) {
            Ok(command) => self.execute(command),
            Err(_) => ClusterResult::Invalid,
        };
        result.encode()
    }

    fn applied_index(&self) -> u64 {
        self.applied
    }

    fn snapshot(&self) -> Result<Vec<u8>, WireError> {
        encode_snapshot(self)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), WireError> {
        let body = snapshot
            .get(wire::FRAME_HEADER_BYTES..)
            .ok_or(WireError::Empty)?;
        *self = wire::decode_frame_body(body)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(micros: u64, op: ClusterOp) -> Vec<u8> {
        ClusterCommand::new(Instant::from_micros(micros), op)
            .encode()
            .expect("encodes")
    }

    fn put(key: &str) -> ClusterOp {
        ClusterOp::Kv(KvCommand::Put {
            key: key.into(),
            value: b"v".to_vec(),
        })
    }

    #[test]
    fn kv_goes_through_and_garbage_is_invalid() {
        let mut state = ClusterState::default();
        let done = ClusterResult::decode(&state.apply(1, &at(5, put("a")))).expect("decodes");
        assert_eq!(done, ClusterResult::Kv(KvResult::Done));
        assert_eq!(state.kv().get("a"), Some(&b"v"[..]));
        let bad = ClusterResult::decode(&state.apply(2, b"\x00\x00\x00\x02\x01\xff"));
        assert_eq!(bad.expect("decodes"), ClusterResult::Invalid);
        assert_eq!(state.applied_index(), 2);
        let long = "k".repeat(crate::consensus::KEY_BYTES_MAX + 1);
        let refused = ClusterResult::decode(&state.apply(3, &at(6, put(&long))));
        assert_eq!(
            refused.expect("decodes"),
            ClusterResult::Kv(KvResult::Invalid)
        );
        assert_eq!(state.kv().len(), 1);
    }

    #[test]
    fn the_replicated_clock_never_goes_back() {
        let mut state = ClusterState::default();
        state.apply(1, &at(100, put("a")));
        state.apply(2, &at(40, put("b")));
        assert_eq!(state.now(), Instant::from_micros(100));
        state.apply(3, &at(150, put("c")));
        assert_eq!(state.now(), Instant::from_micros(150));
    }

    #[test]
    fn failed_nodes_are_bounded_and_deduplicated() {
        let mut state = ClusterState::default();
        let addr = "127.0.0.1:7000".parse().expect("addr");
        for i in 0..(FAILED_NODES_KEPT as u64 + 10) {
            let node = NodeId::new(addr, i);
            state.apply(2 * i + 1, &at(i, ClusterOp::NodeFailed { node }));
            state.apply(2 * i + 2, &at(i, ClusterOp::NodeFailed { node }));
        }
        assert_eq!(state.failed_nodes().len(), FAILED_NODES_KEPT);
        assert_eq!(state.failed_nodes()[0], NodeId::new(addr, 10));
    }

    #[test]
    fn dfs_commands_and_failures_reach_the_namespace() {
        use crate::dfs::{ContentHash, RequestId};
        let mut state = ClusterState::default();
        let addr = "127.0.0.1:7000".parse().expect("addr");
        let node = NodeId::new(addr, 1);
        let commit = ClusterOp::Dfs(DfsCommand::Commit {
            name: "f".into(),
            size: 3,
            hash: ContentHash([7; 32]),
            replicas: vec![node],
            request: RequestId { client: 1, seq: 1 },
        });
        let done = ClusterResult::decode(&state.apply(1, &at(9, commit))).expect("decodes");
        assert_eq!(
            done,
            ClusterResult::Dfs(Ok(DfsResult::Committed { version: 1 }))
        );
        assert_eq!(
            state.dfs().get("f").map(|v| v.created),
            Some(Instant::from_micros(9))
        );
        state.apply(2, &at(10, ClusterOp::NodeFailed { node }));
        assert_eq!(state.dfs().replicas("f").map(|r| r.len()), Some(0));
        let mut copy = ClusterState::default();
        copy.restore(&state.snapshot().expect("encodes"))
            .expect("restores");
        assert_eq!(copy, state);
    }

    #[test]
    fn scheduler_commands_and_node_failures_reach_the_scheduler() {
        use crate::scheduler::{JobSpec, SchedCommand, SchedResult};
        let mut state = ClusterState::default();
        let worker = NodeId::new("127.0.0.1:7001".parse().expect("addr"), 1);
        let spec = JobSpec {
            model: "digits".into(),
            inputs: vec!["a".into(), "b".into()],
            batch_size: 2,
            lease_millis: 1000,
        };
        let sched = |c| ClusterOp::Sched(c);
        let submit = state.apply(1, &at(5, sched(SchedCommand::Submit { spec, request: 1 })));
        assert!(matches!(
            ClusterResult::decode(&submit).expect("decodes"),
            ClusterResult::Sched(SchedResult::Submitted { .. })
        ));
        let lease = state.apply(2, &at(6, sched(SchedCommand::Lease { worker, request: 1 })));
        assert!(matches!(
            ClusterResult::decode(&lease).expect("decodes"),
            ClusterResult::Sched(SchedResult::Granted(_))
        ));
        assert_eq!(state.scheduler().leases().len(), 1);
        state.apply(3, &at(7, ClusterOp::NodeFailed { node: worker }));
        assert_eq!(state.scheduler().leases().len(), 0);
        let mut copy = ClusterState::default();
        copy.restore(&state.snapshot().expect("encodes"))
            .expect("restores");
        assert_eq!(copy, state);
    }

    /// The worst case the parts' own bounds allow (IPv4 addresses, real-looking generations)
    /// must fit one snapshot beside the scheduler's reserved budget; otherwise the log could
    /// never be compacted again.
    #[test]
    fn a_full_state_fits_one_snapshot() {
        use crate::consensus::{KV_BYTES_MAX, SNAPSHOT_BYTES_MAX};
        use crate::dfs::namespace::FILES_MAX;
        use crate::dfs::{ContentHash, RequestId};
        let mut state = ClusterState::default();
        let replicas: Vec<NodeId> = (1..=4u8)
            .map(|i| {
                let addr = std::net::SocketAddr::from(([10, 0, 0, i], 40_000 + u16::from(i)));
                NodeId::new(addr, 1_800_000_000_000 + u64::from(i))
            })
            .collect();
        let mut seq = 0u64;
        // Every name at its kept versions, each version its own blob.
        for version in 0..crate::dfs::DfsConfig::default().versions_kept as u64 {
            for i in 0..FILES_MAX as u64 {
                seq += 1;
                let mut hash = [0u8; 32];
                hash[..8].copy_from_slice(&i.to_be_bytes());
                hash[8..16].copy_from_slice(&version.to_be_bytes());
                let commit = DfsCommand::Commit {
                    name: format!("inputs/batch-{i:06}/image-{i:06}.jpg"),
                    size: 1 << 20,
                    hash: ContentHash(hash),
                    replicas: replicas.clone(),
                    request: RequestId {
                        client: seq % 4096,
                        seq,
                    },
                };
                let done = state.execute(ClusterCommand::new(
                    Instant::from_micros(seq),
                    ClusterOp::Dfs(commit),
                ));
                assert!(matches!(done, ClusterResult::Dfs(Ok(_))), "{done:?}");
            }
        }
        // Every storage node the namespace records.
        for i in 0..crate::dfs::namespace::STORES_MAX as u32 {
            let [_, _, high, low] = i.to_be_bytes();
            let addr = std::net::SocketAddr::from(([10, 1, high, low], 40_000));
            let node = NodeId::new(addr, 1_800_000_000_000 + u64::from(i));
            let ready = ClusterOp::Dfs(DfsCommand::StoreReady { node });
            let done = state.execute(ClusterCommand::new(Instant::from_micros(seq), ready));
            assert_eq!(done, ClusterResult::Dfs(Ok(DfsResult::StoreReady)));
        }
        // The key-value store full.
        for i in 0.. {
            let op = ClusterOp::Kv(KvCommand::Put {
                key: format!("key-{i}"),
                value: vec![1; 1000],
            });
            if state.execute(ClusterCommand::new(Instant::from_micros(seq), op))
                != ClusterResult::Kv(KvResult::Done)
            {
                break;
            }
        }
        assert!(state.kv().bytes() + 1100 > KV_BYTES_MAX);
        let bytes = state
            .snapshot()
            .expect("a full namespace and store snapshot")
            .len();
        let budget = SNAPSHOT_BYTES_MAX - crate::scheduler::STATE_BYTES_MAX as usize;
        assert!(
            bytes <= budget,
            "{bytes} bytes leave no room for the scheduler's budget"
        );
    }

    #[test]
    fn snapshot_round_trips() {
        let mut state = ClusterState::default();
        state.apply(1, &at(7, put("a")));
        let mut copy = ClusterState::default();
        copy.restore(&state.snapshot().expect("encodes"))
            .expect("restores");
        assert_eq!(copy, state);
        assert!(copy.restore(b"junk").is_err());
        assert_eq!(copy, state);
    }
}
