//! The distributed file system on real processes: the leader's part of the `Dfs` requests,
//! the node-local part (re-replication copies, what a node holds), the client commands, and
//! the background tasks (re-replication at the leader, corrupt-replica reports, garbage).
//!
//! Owns: [`leader`] (what the Raft driver does with a leader-side [`DfsRequest`]: a proposal
//! or a linearizable read), [`service`] (node-local requests served with the blob store),
//! [`client`] (put/get/delete/ls/store/get-versions/list), [`tasks`] (repair, reports, gc).
//! Must never: decide placement, repair or versioning itself (core::dfs does), hold a whole
//! file in memory, commit a version before every replica acknowledged its bytes durable, or
//! panic on what a peer, a user or the disk hands it.

pub mod client;
pub mod leader;
pub mod service;
pub mod tasks;

#[cfg(test)]
mod tests;

use idunno_core::dfs::{ContentHash, DfsRequest};
use idunno_core::wire::ControlRequest;

use crate::blobs::BlobHash;

/// The blob store's address of a namespace hash (the same 32 bytes).
pub fn blob_hash(hash: &ContentHash) -> BlobHash {
    BlobHash(hash.0)
}

/// The namespace's name for a blob hash.
pub fn content_hash(hash: &BlobHash) -> ContentHash {
    ContentHash(hash.0)
}

/// Whether `request` is a file-system request the leader answers (routed like Raft requests).
pub fn is_leader_request(request: &ControlRequest) -> bool {
    matches!(request, ControlRequest::Dfs { request, .. } if request.for_leader())
}

/// Whether `request` is a node-local file-system request (served with the blob store).
pub fn is_local_request(request: &ControlRequest) -> bool {
    matches!(request, ControlRequest::Dfs { request, .. } if !request.for_leader())
}

/// A leader-side request wrapped for the control protocol.
pub fn to_leader(request: DfsRequest, forwarded: bool) -> ControlRequest {
    ControlRequest::Dfs { request, forwarded }
}
