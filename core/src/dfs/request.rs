//! The file-system part of the control protocol: what a client (or the leader) asks a node
//! about files, and what it answers. Carried by `ControlRequest::Dfs` / `ControlResponse::Dfs`.
//!
//! Owns: [`DfsRequest`], [`DfsAnswer`] and [`VersionInfo`] (a kept version with its replicas,
//! as a client sees it).
//! Must never: decide anything (the runtime routes requests, core's namespace and placement
//! decide), or carry file bytes (those travel as blobs).

use serde::{Deserialize, Serialize};

use super::{ContentHash, DfsCommand, DfsError, DfsResult};
use crate::membership::NodeId;

/// Most versions one [`DfsRequest::Versions`] may ask for.
pub const VERSIONS_ASKED_MAX: usize = super::VERSIONS_KEPT_MAX;
/// Most names one [`DfsRequest::Newest`] may ask about (32 names of the longest allowed fit in
/// half a request frame); a worker asks for a larger batch in chunks.
pub const NEWEST_NAMES_MAX: usize = 32;
/// Most nodes one [`DfsRequest::Place`] may exclude (the leader ignores the rest).
pub const PLACE_EXCLUDE_MAX: usize = 16;
/// Most names one [`DfsAnswer::Names`] page carries (a client pages through longer listings).
pub const LIST_PAGE_NAMES: usize = 1_000;

/// A file-system request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DfsRequest {
    /// Leader: where should a new blob of `size` bytes go (live nodes, least loaded first)?
    Place {
        /// The blob's hash (the placement tie-break).
        hash: ContentHash,
        /// Its size.
        size: u64,
        /// Nodes not to choose (they just refused this blob; at most [`PLACE_EXCLUDE_MAX`]
        /// are honoured). Empty on a first placement.
        exclude: Vec<NodeId>,
    },
    /// Leader: propose a namespace change and answer once it is applied.
    Apply(DfsCommand),
    /// Leader, linearizable read: up to `count` kept versions of `name`, newest first.
    Versions {
        /// The file name.
        name: String,
        /// How many (1..=[`VERSIONS_ASKED_MAX`]).
        count: usize,
    },
    /// Leader, linearizable read: the newest version of each name (1..=[`NEWEST_NAMES_MAX`]
    /// of them), so a worker looks up a whole batch's inputs in one read.
    Newest {
        /// The file names, answered in this order.
        names: Vec<String>,
    },
    /// Leader, linearizable read: one page of the names starting with `prefix`, in order,
    /// after `start_after` (the last name of the previous page; `None` from the first).
    List {
        /// The prefix ("" lists everything).
        prefix: String,
        /// Continue after this name (exclusive).
        start_after: Option<String>,
    },
    /// Leader, linearizable read: the (name, version) pairs the namespace says `node` holds.
    FilesOn {
        /// The node.
        node: NodeId,
    },
    /// Leader, linearizable read: every blob a kept version refers to (what a node's garbage
    /// collector must keep).
    Referenced,
    /// Leader only (never forwarded by the repair task that sends it): the copies to start now
    /// to restore the replication factor, given the copies already running.
    PlanRepairs {
        /// Copies running: (blob, target node).
        in_flight: Vec<(ContentHash, NodeId)>,
        /// Most copies running at once.
        max_parallel: usize,
    },
    /// The node that receives it: copy blob `hash` (`size` bytes) from one of `sources` into
    /// its own store, verified; answered once it is durable (re-replication, sent by the
    /// leader). Never forwarded.
    Fetch {
        /// The blob.
        hash: ContentHash,
        /// Nodes believed to hold a good copy, tried in order.
        sources: Vec<NodeId>,
    },
    /// The node that receives it: the blobs in its own store (hash, size). Never forwarded.
    Held,
}

impl DfsRequest {
    /// Whether the leader answers it (it is forwarded there); the others are node-local.
    pub fn for_leader(&self) -> bool {
        !matches!(self, DfsRequest::Fetch { .. } | DfsRequest::Held)
    }
}

/// One kept version of a file, as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The file name.
    pub name: String,
    /// Its version number.
    pub version: u64,
    /// Bytes in it.
    pub size: u64,
    /// The BLAKE3 digest of its bytes.
    pub hash: ContentHash,
    /// The nodes the namespace says hold a verified copy (declared-failed ones excluded).
    pub replicas: Vec<NodeId>,
}

/// The answer to a [`DfsRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DfsAnswer {
    /// Answer to [`DfsRequest::Place`]: the chosen nodes, best first (fewer than the factor
    /// when too few are alive).
    Placed {
        /// The nodes.
        replicas: Vec<NodeId>,
    },
    /// Answer to [`DfsRequest::Apply`]: what the namespace did.
    Applied(Result<DfsResult, DfsError>),
    /// Answer to [`DfsRequest::Versions`].
    Versions(Result<Vec<VersionInfo>, DfsError>),
    /// Answer to [`DfsRequest::Newest`]: per name, in the order asked, its newest version or
    /// why there is none (`NotFound`, `InvalidName`); the whole request is refused
    /// (`InvalidRequest`) when it names none or more than [`NEWEST_NAMES_MAX`].
    Newest(Result<Vec<Result<VersionInfo, DfsError>>, DfsError>),
    /// Answer to [`DfsRequest::List`]: one page of names, in order.
    Names {
        /// The names (at most [`LIST_PAGE_NAMES`]).
        names: Vec<String>,
        /// More names match after the last one (ask again with it as `start_after`).
        more: bool,
    },
    /// Answer to [`DfsRequest::FilesOn`].
    Files(Vec<(String, u64)>),
    /// Answer to [`DfsRequest::Referenced`].
    Referenced(Vec<ContentHash>),
    /// Answer to [`DfsRequest::PlanRepairs`]: (blob, live source, target) per copy to start.
    Repairs(Vec<(ContentHash, NodeId, NodeId)>),
    /// Answer to [`DfsRequest::Fetch`]: the blob is durable here.
    Fetched {
        /// Its size.
        size: u64,
    },
    /// Answer to [`DfsRequest::Held`].
    Held(Vec<(ContentHash, u64)>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dfs::RequestId;
    use crate::wire::{self, ControlRequest, ControlResponse};

    fn round_trip<T>(value: &T) -> T
    where
        T: Serialize + serde::de::DeserializeOwned,
    {
        let bytes = wire::encode_frame(value).expect("encodes");
        wire::decode_frame_body(&bytes[wire::FRAME_HEADER_BYTES..]).expect("decodes")
    }

    #[test]
    fn requests_and_answers_cross_the_wire() {
        let node = NodeId::new("127.0.0.1:7000".parse().expect("addr"), 3);
        let request = ControlRequest::Dfs {
            request: DfsRequest::Apply(DfsCommand::Commit {
                name: "a/b".into(),
                size: 9,
                hash: ContentHash([5; 32]),
                replicas: vec![node],
                request: RequestId { client: 7, seq: 1 },
            }),
            forwarded: true,
        };
        assert_eq!(round_trip(&request), request);
        let answer = ControlResponse::Dfs(DfsAnswer::Versions(Ok(vec![VersionInfo {
            name: "a/b".into(),
            version: 2,
            size: 9,
            hash: ContentHash([5; 32]),
            replicas: vec![node],
        }])));
        assert_eq!(round_trip(&answer), answer);
        let refused = ControlResponse::Dfs(DfsAnswer::Applied(Err(DfsError::NotFound {
            name: "x".into(),
        })));
        assert_eq!(round_trip(&refused), refused);
    }

    #[test]
    fn only_fetch_and_held_stay_on_the_node() {
        assert!(!DfsRequest::Held.for_leader());
        assert!(
            !DfsRequest::Fetch {
                hash: ContentHash([0; 32]),
                sources: Vec::new()
            }
            .for_leader()
        );
        assert!(DfsRequest::Referenced.for_leader());
        assert!(
            DfsRequest::List {
                prefix: String::new(),
                start_after: None,
            }
            .for_leader()
        );
    }
}
