//! The leader's part of the file-system requests: turns a [`DfsRequest`] into what the Raft
//! driver does with it: propose a namespace change, or answer a linearizable read of the
//! namespace (placement and repair plans included, computed on the live membership view).
//!
//! Owns: [`action`] and the answer functions. The driver keeps the proposal and read queues.
//! Must never: touch the network or a disk, or decide anything core::dfs decides.

use std::collections::BTreeSet;

use idunno_core::cluster::{ClusterOp, ClusterResult, ClusterState};
use idunno_core::dfs::placement::{self, Candidate};
use idunno_core::dfs::repair::{self, Repair};
use idunno_core::dfs::request::VERSIONS_ASKED_MAX;
use idunno_core::dfs::{DfsAnswer, DfsCommand, DfsError, DfsRequest, VersionInfo};
use idunno_core::membership::NodeId;
use idunno_core::wire::ControlResponse;

use crate::consensus::driver::QueryFn;

/// Most copies the repair planner may be asked to keep running at once.
pub const REPAIRS_PARALLEL_MAX: usize = 64;

/// What the driver does with a leader-side request.
pub enum Action {
    /// Propose this operation; answer with [`answer_applied`] once applied.
    Propose(ClusterOp),
    /// Answer this query from the state after a ReadIndex.
    Read(QueryFn),
    /// Answer at once.
    Answer(ControlResponse),
}

/// What to do with `request`, given the members the leader's membership view reports alive.
pub fn action(request: DfsRequest, alive: BTreeSet<NodeId>) -> Action {
    match request {
        DfsRequest::Apply(command) => {
            if let DfsCommand::Commit { name, .. } | DfsCommand::Delete { name, .. } = &command
                && let Err(e) = idunno_core::dfs::validate_name(name)
            {
                return Action::Answer(dfs(DfsAnswer::Applied(Err(DfsError::InvalidName(e)))));
            }
            Action::Propose(ClusterOp::Dfs(command))
        }
        DfsRequest::Place { hash, .. } => Action::Read(Box::new(move |state: &ClusterState| {
            let ns = state.dfs();
            let candidates = candidates(state, &alive);
            let placed = placement::place(&hash, &candidates, ns.config().replication);
            dfs(DfsAnswer::Placed {
                replicas: placed.nodes,
            })
        })),
        DfsRequest::Versions { name, count } => {
            let count = count.clamp(1, VERSIONS_ASKED_MAX);
            Action::Read(Box::new(move |state: &ClusterState| {
                dfs(DfsAnswer::Versions(versions(state, &name, count)))
            }))
        }
        DfsRequest::List { prefix } => Action::Read(Box::new(move |state: &ClusterState| {
            let names = state.dfs().list(&prefix);
            dfs(DfsAnswer::Names(
                names.into_iter().map(str::to_owned).collect(),
            ))
        })),
        DfsRequest::FilesOn { node } => Action::Read(Box::new(move |state: &ClusterState| {
            let files = state.dfs().files_on(&node);
            dfs(DfsAnswer::Files(
                files.into_iter().map(|(n, v)| (n.to_owned(), v)).collect(),
            ))
        })),
        DfsRequest::Referenced => Action::Read(Box::new(|state: &ClusterState| {
            dfs(DfsAnswer::Referenced(
                state.dfs().blobs().keys().copied().collect(),
            ))
        })),
        DfsRequest::PlanRepairs {
            in_flight,
            max_parallel,
        } => Action::Read(Box::new(move |state: &ClusterState| {
            let live = candidates(state, &alive);
            let running: Vec<Repair> = in_flight
                .iter()
                .map(|&(hash, to)| Repair { hash, from: to, to })
                .collect();
            let plan = repair::plan_repairs(
                state.dfs(),
                &live,
                &running,
                max_parallel.min(REPAIRS_PARALLEL_MAX),
            );
            dfs(DfsAnswer::Repairs(
                plan.repairs
                    .into_iter()
                    .map(|r| (r.hash, r.from, r.to))
                    .collect(),
            ))
        })),
        DfsRequest::Fetch { .. } | DfsRequest::Held => Action::Answer(ControlResponse::Error(
            "a node-local file-system request reached the leader's queue".to_owned(),
        )),
    }
}

/// The live members the namespace has not recorded as failed, with their loads.
fn candidates(state: &ClusterState, alive: &BTreeSet<NodeId>) -> Vec<Candidate> {
    let ns = state.dfs();
    let loads = ns.loads();
    alive
        .iter()
        .filter(|node| !ns.is_failed(node))
        .map(|node| Candidate {
            node: *node,
            stored_bytes: loads.get(node).copied().unwrap_or(0),
        })
        .collect()
}

fn versions(state: &ClusterState, name: &str, count: usize) -> Result<Vec<VersionInfo>, DfsError> {
    idunno_core::dfs::validate_name(name)?;
    let ns = state.dfs();
    let kept = ns.versions(name, count);
    if kept.is_empty() {
        return Err(DfsError::NotFound {
            name: name.to_owned(),
        });
    }
    Ok(kept
        .into_iter()
        .map(|v| VersionInfo {
            name: name.to_owned(),
            version: v.number,
            size: v.size,
            hash: v.hash,
            replicas: ns
                .blob(&v.hash)
                .map(|b| b.replicas.iter().copied().collect())
                .unwrap_or_default(),
        })
        .collect())
}

fn dfs(answer: DfsAnswer) -> ControlResponse {
    ControlResponse::Dfs(answer)
}

/// The answer to a file-system proposal once applied.
pub fn answer_applied(_index: u64, result: ClusterResult) -> ControlResponse {
    match result {
        ClusterResult::Dfs(result) => dfs(DfsAnswer::Applied(result)),
        other => ControlResponse::Error(format!("command failed: {other:?}")),
    }
}
