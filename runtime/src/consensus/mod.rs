//! Raft on real processes: the voter's driver, its TCP transport, and the routing of the Raft
//! part of the control protocol (`Leader`, `KvPut`, `KvGet`) on every node.
//!
//! Owns: [`RaftOptions`] (this node's voter id, if any, and the voter set `id -> node address`),
//! [`RaftRoute`] (what the control server needs: the local driver's request channel and the
//! transport's inbound side on voters, the voter addresses everywhere), and [`route`]: a voter
//! asks its own driver; a non-voter asks the voters who leads; a request that reached a node
//! that does not lead is forwarded once to the leader (marked `forwarded`, so it is never
//! forwarded twice), and answered with `NotLeader` (the leader's address) if that fails.
//! Peer messages travel on the control port: a connection whose first frame is
//! `ControlRequest::RaftHello { from }` carries `consensus::encode` frames from then on.
//! Must never: decide anything about Raft (core does), forward a request more than once, wait
//! without a deadline, or panic on peer data.

pub mod driver;
pub mod persister;
pub mod transport;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use idunno_core::consensus::VoterId;
use idunno_core::wire::{ControlRequest, ControlResponse};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::control;

/// Capacity of the request channel that feeds the Raft driver.
pub const RAFT_REQUESTS_QUEUE_MAX: usize = 256;
/// Longest the local driver may take to answer (a put waits for its commit).
pub const LOCAL_ANSWER_TIMEOUT: Duration = Duration::from_millis(2500);
/// Longest a forwarded request may take at the leader.
pub const FORWARD_TIMEOUT: Duration = Duration::from_millis(2500);
/// Longest a non-voter waits for one voter to say who leads.
pub const LEADER_PROBE_TIMEOUT: Duration = Duration::from_millis(800);

/// Raft settings of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftOptions {
    /// This node's voter id; `None` for a non-voting member that only routes requests.
    pub id: Option<VoterId>,
    /// Every voter's node address (its `--bind` address), by id.
    pub voters: BTreeMap<VoterId, SocketAddr>,
    /// Compact the log into a snapshot of the state every this many applied entries.
    pub compact_every: u64,
    /// Where the voter's persist batches are written and fsynced.
    pub persist: persister::PersistMode,
}

/// Default of [`RaftOptions::compact_every`].
pub const COMPACT_EVERY_DEFAULT: u64 = 4096;

/// A Raft control request for the driver, with the channel its answer goes back on.
#[derive(Debug)]
pub struct RaftRequest {
    /// What is asked (`Leader`, `KvPut`, `KvGet` or `FailedNodes`).
    pub request: ControlRequest,
    /// Where the answer goes; a dropped receiver is ignored.
    pub reply: oneshot::Sender<ControlResponse>,
}

/// The voter side of a node: its driver's requests and its transport's inbound side.
#[derive(Debug, Clone)]
pub struct LocalVoter {
    /// Requests for the driver.
    pub requests: mpsc::Sender<RaftRequest>,
    /// Accepts peer connections handed over by the control server.
    pub inbound: transport::Inbound,
}

/// What the control server needs to route Raft requests.
#[derive(Debug, Clone)]
pub struct RaftRoute {
    /// This node's address (never forwarded to).
    pub self_addr: SocketAddr,
    /// Every voter's node address.
    pub voters: Arc<BTreeMap<VoterId, SocketAddr>>,
    /// Present on voters.
    pub local: Option<LocalVoter>,
}

/// Whether `request` belongs to the Raft part of the control protocol (and is answered).
pub fn is_raft_request(request: &ControlRequest) -> bool {
    matches!(
        request,
        ControlRequest::Leader
            | ControlRequest::KvPut { .. }
            | ControlRequest::KvGet { .. }
            | ControlRequest::FailedNodes { .. }
            | ControlRequest::Sched { .. }
    ) || crate::dfs::is_leader_request(request)
}

/// Answers a Raft request on this node: locally on a voter, through the voters on a
/// non-voter, forwarding once to the leader when this node does not lead.
pub async fn route(route: &RaftRoute, request: ControlRequest) -> ControlResponse {
    let forwarded = matches!(
        request,
        ControlRequest::KvPut {
            forwarded: true,
            ..
        } | ControlRequest::KvGet {
            forwarded: true,
            ..
        } | ControlRequest::FailedNodes { forwarded: true }
            | ControlRequest::Sched {
                forwarded: true,
                ..
            }
            | ControlRequest::Dfs {
                forwarded: true,
                ..
            }
    );
    let answer = match &route.local {
        Some(local) => ask_local(local, request.clone()).await,
        None => ask_voters(route, &request).await,
    };
    let ControlResponse::NotLeader {
        addr: Some(leader), ..
    } = answer
    else {
        return answer;
    };
    if forwarded || leader == route.self_addr || matches!(request, ControlRequest::Leader) {
        return answer;
    }
    let onward = match request {
        ControlRequest::KvPut { key, value, .. } => ControlRequest::KvPut {
            key,
            value,
            forwarded: true,
        },
        ControlRequest::KvGet { key, .. } => ControlRequest::KvGet {
            key,
            forwarded: true,
        },
        ControlRequest::FailedNodes { .. } => ControlRequest::FailedNodes { forwarded: true },
        ControlRequest::Sched { request, .. } => ControlRequest::Sched {
            request,
            forwarded: true,
        },
        ControlRequest::Dfs { request, .. } => ControlRequest::Dfs {
            request,
            forwarded: true,
        },
        _ => return answer,
    };
    match control::call(leader, &onward, FORWARD_TIMEOUT).await {
        Ok(forwarded_answer) => forwarded_answer,
        Err(control::ClientError::Refused { message, .. }) => ControlResponse::Error(message),
        Err(e) => {
            debug!(%leader, error = %e, "forwarding to the leader failed");
            answer
        }
    }
}

pub(crate) async fn ask_local(local: &LocalVoter, request: ControlRequest) -> ControlResponse {
    let stopped = || ControlResponse::Error("the raft driver has stopped".to_owned());
    let (reply, answer) = oneshot::channel();
    let asked = async {
        local
            .requests
            .send(RaftRequest { request, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())
    };
    match tokio::time::timeout(LOCAL_ANSWER_TIMEOUT, asked).await {
        Ok(Ok(response)) | Ok(Err(response)) => response,
        Err(_) => ControlResponse::Error("the raft driver did not answer in time".to_owned()),
    }
}

/// A non-voter: asks the voters, in id order, until one names the leader.
async fn ask_voters(route: &RaftRoute, request: &ControlRequest) -> ControlResponse {
    for &addr in route.voters.values() {
        if addr == route.self_addr {
            continue;
        }
        match control::call(addr, &ControlRequest::Leader, LEADER_PROBE_TIMEOUT).await {
            Ok(ControlResponse::Leader {
                id: Some(id),
                addr: Some(leader),
                term,
            }) => {
                return match request {
                    ControlRequest::Leader => ControlResponse::Leader {
                        id: Some(id),
                        addr: Some(leader),
                        term,
                    },
                    _ => ControlResponse::NotLeader {
                        id: Some(id),
                        addr: Some(leader),
                    },
                };
            }
            Ok(other) => debug!(%addr, ?other, "voter does not know the leader"),
            Err(e) => debug!(%addr, error = %e, "voter did not answer"),
        }
    }
    match request {
        ControlRequest::Leader => ControlResponse::Leader {
            id: None,
            addr: None,
            term: 0,
        },
        _ => ControlResponse::NotLeader {
            id: None,
            addr: None,
        },
    }
}
