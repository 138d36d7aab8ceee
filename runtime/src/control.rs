//! The control protocol over TCP: the node's server side and the client's side.
//!
//! Owns: accepting control connections (at most [`CONNECTIONS_MAX`] at once and
//! [`CONNECTIONS_PER_PEER_MAX`] from one address, each in its own task
//! with a read timeout), framing (`core::wire`'s length-prefixed frames, with a small cap on
//! requests), handing each request to the driver and writing its answer back; and the client
//! calls (`list_mem`, `list_self`, `leave`, and the Raft ones: `leader`, `kv-put`, `kv-get`,
//! which follow a `NotLeader` answer to the leader a bounded number of times) with a
//! connect-and-answer timeout. Raft requests are routed through [`consensus::route`]; a
//! connection opening with `RaftHello` is handed to the voter's Raft transport, and a
//! `BlobPut` / `BlobGet` request to the node's [`BlobService`] (raw bytes follow those frames).
//! Every connection is opened with [`auth::tcp::connect`] and accepted through a [`TcpGuard`]
//! (sealed when the node has a cluster key); a connection that proved only a client token may
//! not send peer-only requests ([`is_peer_only`]). A worker that closes a connection on which
//! it asked for leases is reported to the membership driver as a [`ProbeHints`] hint.
//! Must never: answer a request itself (the driver does), hold a connection open without a
//! deadline, allocate more than a frame's cap for one message, serve a peer-only request to a
//! client connection, or panic on what a peer sends.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::net::TcpListener;
use idunno_core::membership::{Member, NodeId};
use idunno_core::wire::{self, ControlRequest, ControlResponse, FRAME_HEADER_BYTES, WireError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, debug, warn};

use idunno_core::consensus::VoterId;

use crate::auth::tcp::{self as auth_tcp, MAGIC_FRAME_LEN, NODE_INSECURE};
use crate::auth::{Role, SecureStream, TcpGuard};
use crate::blobs::BlobService;
use crate::conn_limit::ConnectionSlots;
use crate::consensus::{self, RaftRoute};
use crate::driver::{ProbeHints, Request};

/// Most control connections served at once; more are closed at accept.
pub const CONNECTIONS_MAX: usize = 512;
/// Most control connections served at once from one peer address (a worker keeps up to
/// `leader_client::IDLE_CONNECTIONS_MAX` scheduler and as many file-system connections to the
/// leader, and opens more while it uploads or fetches); more are closed at accept, so that no
/// peer can take every slot.
pub const CONNECTIONS_PER_PEER_MAX: usize = 64;
/// Longest a connection may take to deliver a request (or stay idle between requests), and
/// longest the driver may take to answer one.
pub const SERVER_TIMEOUT: Duration = Duration::from_secs(5);
/// Most requests served on one connection.
pub const REQUESTS_PER_CONNECTION_MAX: usize = 1024;
/// Largest request frame body the server accepts, in bytes; requests are tiny.
pub const REQUEST_BYTES_MAX: usize = 64 * 1024;
/// Default client deadline for connecting and getting the answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause after a failed accept (for example, out of file descriptors).
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed or closed mid-frame.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The frame's bytes are not a valid message, or it is too large.
    #[error("{0}")]
    Wire(#[from] WireError),
}

/// Reads one frame; `Ok(None)` on a clean end of stream before a new frame starts.
pub async fn read_frame<T, R>(
    reader: &mut R,
    body_bytes_max: usize,
) -> Result<Option<T>, FrameError>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    let mut header = [0u8; FRAME_HEADER_BYTES];
    let mut filled = 0;
    while filled < FRAME_HEADER_BYTES {
        let read = reader.read(&mut header[filled..]).await?;
        if read == 0 {
            if filled == 0 {
                return Ok(None);
            }
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        filled += read;
    }
    let len = wire::decode_frame_header(header)?;
    if len > body_bytes_max {
        return Err(WireError::Oversized {
            len,
            max: body_bytes_max,
        }
        .into());
    }
    // Grow with the bytes that actually arrive rather than trusting the length up front.
    let mut body = Vec::with_capacity(len.min(4096));
    let limit = u64::try_from(len).unwrap_or(u64::MAX);
    reader.take(limit).read_to_end(&mut body).await?;
    if body.len() != len {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
    }
    Ok(Some(wire::decode_frame_body(&body)?))
}

/// Writes one frame and flushes it.
pub async fn write_frame<T, W>(writer: &mut W, value: &T) -> Result<(), FrameError>
where
    T: Serialize,
    W: AsyncWrite + Unpin,
{
    let bytes = wire::encode_frame(value)?;
    writer.write_all(&bytes).await?;
    writer.flush().await?;
    Ok(())
}

// ----- server -----

/// Accepts control connections forever, serving each in its own task.
pub async fn serve(listener: impl Into<TcpListener>, requests: mpsc::Sender<Request>) {
    serve_with(listener, requests, None).await;
}

/// [`serve`], with the Raft part of the protocol: Raft requests go through
/// [`consensus::route`], and a connection that opens with `RaftHello` is handed to the voter's
/// transport. Without `raft`, Raft requests are answered with an error and hellos closed.
pub async fn serve_with(
    listener: impl Into<TcpListener>,
    requests: mpsc::Sender<Request>,
    raft: Option<RaftRoute>,
) {
    serve_full(listener, requests, raft, None).await;
}

/// [`serve_with`], and with `blobs`, the blob part of the protocol: a `BlobPut` or `BlobGet`
/// request hands the connection to the blob service (which has its own cap on concurrent
/// transfers). Without `blobs`, blob requests are answered with an error.
pub async fn serve_full(
    listener: impl Into<TcpListener>,
    requests: mpsc::Sender<Request>,
    raft: Option<RaftRoute>,
    blobs: Option<Arc<BlobService>>,
) {
    serve_guarded(
        listener,
        requests,
        raft,
        blobs,
        Arc::new(TcpGuard::insecure()),
        None,
    )
    .await;
}

/// [`serve_full`], with every accepted connection going through `guard` first: the handshake
/// when the node has a cluster key (refused connections are counted there and closed). With
/// `hints`, a connection that carried a worker's lease requests and ends with the worker
/// closing it (not by this server's timeout) reports the worker there: a killed worker's
/// kernel closes its sockets at once, so its node gets probed long before its turn.
pub async fn serve_guarded(
    listener: impl Into<TcpListener>,
    requests: mpsc::Sender<Request>,
    raft: Option<RaftRoute>,
    blobs: Option<Arc<BlobService>>,
    guard: Arc<TcpGuard>,
    hints: Option<ProbeHints>,
) {
    let listener = listener.into();
    let slots = ConnectionSlots::new(CONNECTIONS_MAX, CONNECTIONS_PER_PEER_MAX);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let permit = match slots.try_take(peer.ip()) {
            Ok(permit) => permit,
            Err(e) => {
                debug!(%peer, reason = %e, "control connection refused at accept");
                continue;
            }
        };
        let requests = requests.clone();
        let raft = raft.clone();
        let blobs = blobs.clone();
        let guard = Arc::clone(&guard);
        let hints = hints.clone();
        tokio::spawn(
            async move {
                // The handshake holds a control slot, so a flood of them is bounded too.
                let Ok((mut stream, role)) = guard.accept(stream).await else {
                    return;
                };
                let ends = ConnectionEnd {
                    hints: hints.as_ref(),
                    role,
                };
                let handoff =
                    serve_requests(&mut stream, &requests, raft.as_ref(), blobs.is_some(), ends)
                        .await;
                // The control slot is released here; a Raft connection takes a transport slot,
                // a blob transfer one of the blob service's.
                drop(permit);
                match (handoff, blobs) {
                    (Some(Handoff::Raft(from)), _) => {
                        hand_to_raft(stream, from, peer, raft.as_ref());
                    }
                    (Some(Handoff::Dfs(request)), Some(blobs)) => {
                        crate::dfs::service::serve(&blobs, &mut stream, request).await;
                    }
                    (Some(Handoff::Blob(request)), Some(blobs)) => {
                        let _ = stream.set_nodelay(true);
                        blobs.serve(&mut stream, request).await;
                        debug!(%peer, "blob connection closed");
                    }
                    _ => debug!(%peer, "control connection closed"),
                }
            }
            .in_current_span(),
        );
    }
}

fn hand_to_raft(stream: SecureStream, from: VoterId, peer: SocketAddr, raft: Option<&RaftRoute>) {
    match raft.and_then(|r| r.local.as_ref()) {
        Some(local) => match local.inbound.accept(from, stream) {
            Ok(()) => debug!(%peer, ?from, "raft peer connection accepted"),
            Err(e) => warn!(%peer, ?from, error = %e, "raft peer connection refused"),
        },
        None => debug!(%peer, ?from, "raft hello on a node that is not a voter; closed"),
    }
}

/// Serves requests on one connection until the peer closes it, stalls or misbehaves.
pub async fn serve_connection<T>(mut stream: T, requests: mpsc::Sender<Request>)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let ends = ConnectionEnd {
        hints: None,
        role: Role::Peer,
    };
    if let Some(handoff) = serve_requests(&mut stream, &requests, None, false, ends).await {
        debug!(
            ?handoff,
            "raft hello on a connection that cannot carry raft; closed"
        );
    }
}

/// A connection the request loop hands over to another part of the node.
#[derive(Debug)]
enum Handoff {
    /// A `RaftHello` from this voter: the stream carries Raft frames from now on.
    Raft(VoterId),
    /// A blob request: raw bytes may follow its frame.
    Blob(ControlRequest),
    /// A node-local file-system request, answered with the blob store.
    Dfs(ControlRequest),
}

/// Whether only another node may send `request`: a `RaftHello`, a request another node
/// forwarded, a node-internal file-system request (the leader's repair planning, the
/// re-replication copy it orders and the new replica it records), or a worker's scheduler
/// command (lease, renew, complete: a token holder must not report results for a worker or
/// expire its leases). A connection that proved a client token gets an error answer for these.
pub fn is_peer_only(request: &ControlRequest) -> bool {
    use idunno_core::dfs::{DfsCommand, DfsRequest};
    use idunno_core::scheduler::SchedCommand;
    use idunno_core::scheduler::api::SchedRequest;
    matches!(
        request,
        ControlRequest::RaftHello { .. }
            | ControlRequest::Dfs {
                request: DfsRequest::PlanRepairs { .. }
                    | DfsRequest::Fetch { .. }
                    | DfsRequest::Apply(DfsCommand::ReplicaAdded { .. }),
                ..
            }
            | ControlRequest::Sched {
                request: SchedRequest::Command(
                    SchedCommand::Lease { .. }
                        | SchedCommand::Renew { .. }
                        | SchedCommand::Complete { .. }
                        | SchedCommand::CompleteAndLease { .. }
                        | SchedCommand::ExpireLeases
                        | SchedCommand::WorkerGone { .. }
                ),
                ..
            }
            | ControlRequest::KvPut {
                forwarded: true,
                ..
            }
            | ControlRequest::KvGet {
                forwarded: true,
                ..
            }
            | ControlRequest::FailedNodes { forwarded: true }
            | ControlRequest::Sched {
                forwarded: true,
                ..
            }
            | ControlRequest::Dfs {
                forwarded: true,
                ..
            }
    )
}

/// Who is on the other end of a served connection, and where to report a worker that closed
/// it.
#[derive(Debug, Clone, Copy)]
struct ConnectionEnd<'a> {
    hints: Option<&'a ProbeHints>,
    role: Role,
}

/// The worker a request speaks for, when it is a worker's own lease request sent straight
/// to this node (not forwarded: a forwarded one's connection belongs to the forwarder).
fn lease_worker(request: &ControlRequest) -> Option<NodeId> {
    use idunno_core::scheduler::SchedCommand;
    use idunno_core::scheduler::api::SchedRequest;
    match request {
        ControlRequest::Sched {
            request:
                SchedRequest::Command(
                    SchedCommand::Lease { worker, .. }
                    | SchedCommand::Renew { worker, .. }
                    | SchedCommand::Complete { worker, .. }
                    | SchedCommand::CompleteAndLease { worker, .. },
                ),
            forwarded: false,
        } => Some(*worker),
        _ => None,
    }
}

/// The answer of a node without a blob store to a blob or node-local file-system request.
pub const NO_BLOB_STORE: &str =
    "this node keeps no blobs: it has no blob store (started without --data-dir)";

/// Serves requests until the connection ends; returns a [`Handoff`] instead when the peer
/// sends a `RaftHello`, or a blob request while `blobs` is set (the caller then owns the
/// stream). A connection in [`Role::Client`] gets an error answer to peer-only requests.
async fn serve_requests<T>(
    stream: &mut T,
    requests: &mpsc::Sender<Request>,
    raft: Option<&RaftRoute>,
    blobs: bool,
    ConnectionEnd { hints, role }: ConnectionEnd<'_>,
) -> Option<Handoff>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    // The worker whose lease requests this connection carried (a peer's only).
    let mut worker: Option<NodeId> = None;
    let closed_by_peer = |worker: Option<NodeId>| {
        if let (Some(hints), Some(worker)) = (hints, worker) {
            debug!(%worker, "a worker's lease connection closed; probing it out of turn");
            hints.hint(worker);
        }
    };
    for _ in 0..REQUESTS_PER_CONNECTION_MAX {
        let read = tokio::time::timeout(
            SERVER_TIMEOUT,
            read_frame::<ControlRequest, _>(stream, REQUEST_BYTES_MAX),
        )
        .await;
        let request = match read {
            Err(_) => {
                debug!("control connection timed out");
                return None;
            }
            Ok(Ok(None)) => {
                closed_by_peer(worker);
                return None;
            }
            Ok(Ok(Some(request))) => request,
            Ok(Err(FrameError::Io(e))) => {
                debug!(error = %e, "control connection failed");
                closed_by_peer(worker);
                return None;
            }
            Ok(Err(FrameError::Wire(WireError::Oversized { len, .. })))
                if len == MAGIC_FRAME_LEN =>
            {
                warn!(
                    "a peer with a cluster key connected, but this node has none: {NODE_INSECURE}"
                );
                let answer = ControlResponse::Error(NODE_INSECURE.to_owned());
                let _ = tokio::time::timeout(SERVER_TIMEOUT, write_frame(stream, &answer)).await;
                return None;
            }
            Ok(Err(FrameError::Wire(e))) => {
                debug!(error = %e, "bad control frame");
                let answer = ControlResponse::Error(format!("bad request: {e}"));
                let _ = tokio::time::timeout(SERVER_TIMEOUT, write_frame(stream, &answer)).await;
                return None;
            }
        };
        if role == Role::Client && is_peer_only(&request) {
            debug!(?request, "a peer-only request on a client connection");
            let answer = ControlResponse::Error(
                "this request is for cluster nodes only; a client token cannot send it".to_owned(),
            );
            let _ = tokio::time::timeout(SERVER_TIMEOUT, write_frame(stream, &answer)).await;
            return None;
        }
        if let ControlRequest::RaftHello { from } = request {
            return Some(Handoff::Raft(from));
        }
        if role == Role::Peer
            && let Some(asker) = lease_worker(&request)
        {
            worker = Some(asker);
        }
        if blobs && BlobService::is_blob_request(&request) {
            return Some(Handoff::Blob(request));
        }
        if blobs && crate::dfs::is_local_request(&request) {
            return Some(Handoff::Dfs(request));
        }
        debug!(?request, "control request");
        let answer = if request == ControlRequest::NodeStats {
            crate::stats::node_stats(requests, raft).await
        } else if BlobService::is_blob_request(&request) || crate::dfs::is_local_request(&request) {
            // Only stores announce themselves, so placement should never send one here.
            warn!("{NO_BLOB_STORE}: a blob request refused");
            ControlResponse::Error(NO_BLOB_STORE.to_owned())
        } else if consensus::is_raft_request(&request) {
            match raft {
                Some(raft) => consensus::route(raft, request).await,
                None => ControlResponse::Error("raft is not enabled on this node".to_owned()),
            }
        } else {
            ask_driver(requests, request).await
        };
        match tokio::time::timeout(SERVER_TIMEOUT, write_frame(stream, &answer)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                debug!(error = %e, "cannot write control answer");
                return None;
            }
            Err(_) => {
                debug!("control answer timed out");
                return None;
            }
        }
    }
    None
}

pub(crate) async fn ask_driver(
    requests: &mpsc::Sender<Request>,
    request: ControlRequest,
) -> ControlResponse {
    let shutting_down = || ControlResponse::Error("node is shutting down".to_owned());
    let (reply, answer) = oneshot::channel();
    let asked = async {
        requests
            .send(Request { request, reply })
            .await
            .map_err(|_| shutting_down())?;
        answer.await.map_err(|_| shutting_down())
    };
    match tokio::time::timeout(SERVER_TIMEOUT, asked).await {
        Ok(Ok(response)) | Ok(Err(response)) => response,
        Err(_) => ControlResponse::Error("node did not answer in time".to_owned()),
    }
}

// ----- client -----

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No TCP connection could be made.
    #[error("cannot connect to node {node}: {source}")]
    Connect {
        /// The node asked.
        node: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// Connecting and answering took longer than the deadline.
    #[error("node {node} did not answer within {}ms", after.as_millis())]
    Timeout {
        /// The node asked.
        node: SocketAddr,
        /// The deadline.
        after: Duration,
    },
    /// The connection failed after it was made.
    #[error("connection to node {node} failed: {source}")]
    Io {
        /// The node asked.
        node: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The answer did not decode.
    #[error("bad answer from node {node}: {source}")]
    BadAnswer {
        /// The node asked.
        node: SocketAddr,
        /// What was wrong with it.
        source: WireError,
    },
    /// The node closed the connection without answering.
    #[error("node {node} closed the connection without answering")]
    NoAnswer {
        /// The node asked.
        node: SocketAddr,
    },
    /// The node answered with an error.
    #[error("node {node} refused the request: {message}")]
    Refused {
        /// The node asked.
        node: SocketAddr,
        /// Its explanation.
        message: String,
    },
    /// The node answered with the wrong kind of answer.
    #[error("unexpected answer from node {node}: {answer}")]
    Unexpected {
        /// The node asked.
        node: SocketAddr,
        /// The answer, debug-printed.
        answer: String,
    },
}

/// Sends one request to `node`'s control port and returns its answer, within `timeout`.
/// A [`ControlResponse::Error`] answer is returned as [`ClientError::Refused`].
pub async fn call(
    node: SocketAddr,
    request: &ControlRequest,
    timeout: Duration,
) -> Result<ControlResponse, ClientError> {
    let exchange = async {
        let mut stream = auth_tcp::connect(node)
            .await
            .map_err(|source| ClientError::Connect { node, source })?;
        let frame_error = |e: FrameError| match e {
            FrameError::Io(source) => ClientError::Io { node, source },
            FrameError::Wire(source) => ClientError::BadAnswer { node, source },
        };
        write_frame(&mut stream, request)
            .await
            .map_err(frame_error)?;
        let answer = read_frame::<ControlResponse, _>(&mut stream, wire::FRAME_BYTES_MAX)
            .await
            .map_err(frame_error)?;
        answer.ok_or(ClientError::NoAnswer { node })
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Err(ClientError::Timeout {
            node,
            after: timeout,
        }),
        Ok(Err(e)) => Err(e),
        Ok(Ok(ControlResponse::Error(message))) => Err(ClientError::Refused { node, message }),
        Ok(Ok(answer)) => Ok(answer),
    }
}

fn unexpected(node: SocketAddr, answer: &ControlResponse) -> ClientError {
    ClientError::Unexpected {
        node,
        answer: format!("{answer:?}"),
    }
}

/// `node`'s member list (itself included), sorted by id.
pub async fn list_members(node: SocketAddr, timeout: Duration) -> Result<Vec<Member>, ClientError> {
    match call(node, &ControlRequest::ListMembers, timeout).await? {
        ControlResponse::Members(members) => Ok(members),
        other => Err(unexpected(node, &other)),
    }
}

/// `node`'s own counters, in named groups (membership, authentication, worker, Raft).
pub async fn node_stats(
    node: SocketAddr,
    timeout: Duration,
) -> Result<Vec<idunno_core::wire::StatsGroup>, ClientError> {
    match call(node, &ControlRequest::NodeStats, timeout).await? {
        ControlResponse::NodeStats(groups) => Ok(groups),
        other => Err(unexpected(node, &other)),
    }
}

/// `node`'s identity and current incarnation.
pub async fn list_self(node: SocketAddr, timeout: Duration) -> Result<(NodeId, u64), ClientError> {
    match call(node, &ControlRequest::ListSelf, timeout).await? {
        ControlResponse::SelfInfo { id, incarnation } => Ok((id, incarnation)),
        other => Err(unexpected(node, &other)),
    }
}

/// Asks `node` to leave the cluster; returns once it confirmed it is leaving.
pub async fn leave(node: SocketAddr, timeout: Duration) -> Result<(), ClientError> {
    match call(node, &ControlRequest::Leave, timeout).await? {
        ControlResponse::Leaving => Ok(()),
        other => Err(unexpected(node, &other)),
    }
}

/// Most `NotLeader` redirects a client follows.
pub const REDIRECTS_MAX: usize = 3;

/// Who leads, as `node` sees it: (voter id, its address, term).
pub async fn leader(
    node: SocketAddr,
    timeout: Duration,
) -> Result<(Option<VoterId>, Option<SocketAddr>, u64), ClientError> {
    match call(node, &ControlRequest::Leader, timeout).await? {
        ControlResponse::Leader { id, addr, term } => Ok((id, addr, term)),
        other => Err(unexpected(node, &other)),
    }
}

/// Sends a Raft request, following `NotLeader` answers to the named leader.
pub async fn call_following_leader(
    node: SocketAddr,
    request: &ControlRequest,
    timeout: Duration,
) -> Result<(SocketAddr, ControlResponse), ClientError> {
    let mut target = node;
    for _ in 0..REDIRECTS_MAX {
        match call(target, request, timeout).await? {
            ControlResponse::NotLeader {
                addr: Some(leader), ..
            } if leader != target => target = leader,
            ControlResponse::NotLeader { .. } => {
                return Err(ClientError::Refused {
                    node: target,
                    message: "no leader is known right now; retry".to_owned(),
                });
            }
            answer => return Ok((target, answer)),
        }
    }
    Err(ClientError::Refused {
        node: target,
        message: "too many leader redirects; retry".to_owned(),
    })
}

/// Puts `key = value` through the Raft log; returns the log index it committed at.
pub async fn kv_put(
    node: SocketAddr,
    key: String,
    value: Vec<u8>,
    timeout: Duration,
) -> Result<u64, ClientError> {
    let request = ControlRequest::KvPut {
        key,
        value,
        forwarded: false,
    };
    match call_following_leader(node, &request, timeout).await? {
        (_, ControlResponse::KvDone { index }) => Ok(index),
        (at, other) => Err(unexpected(at, &other)),
    }
}

/// Reads `key` linearizably through the leader.
pub async fn kv_get(
    node: SocketAddr,
    key: String,
    timeout: Duration,
) -> Result<Option<Vec<u8>>, ClientError> {
    let request = ControlRequest::KvGet {
        key,
        forwarded: false,
    };
    match call_following_leader(node, &request, timeout).await? {
        (_, ControlResponse::KvValue(value)) => Ok(value),
        (at, other) => Err(unexpected(at, &other)),
    }
}

/// The nodes the replicated state recorded as failed, oldest first (read through the leader).
pub async fn failed_nodes(node: SocketAddr, timeout: Duration) -> Result<Vec<NodeId>, ClientError> {
    let request = ControlRequest::FailedNodes { forwarded: false };
    match call_following_leader(node, &request, timeout).await? {
        (_, ControlResponse::FailedNodes(nodes)) => Ok(nodes),
        (at, other) => Err(unexpected(at, &other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
    }

    /// A fake driver that answers every request with `SelfInfo`.
    fn fake_driver() -> mpsc::Sender<Request> {
        let (tx, mut rx) = mpsc::channel::<Request>(4);
        tokio::spawn(async move {
            while let Some(Request { reply, .. }) = rx.recv().await {
                let _ = reply.send(ControlResponse::SelfInfo {
                    id: NodeId::new(addr(7), 3),
                    incarnation: 1,
                });
            }
        });
        tx
    }

    #[test]
    fn node_internal_requests_are_peer_only_and_client_requests_are_not() {
        use idunno_core::dfs::DfsRequest;
        let plan = ControlRequest::Dfs {
            request: DfsRequest::PlanRepairs {
                in_flight: Vec::new(),
                max_parallel: 1,
            },
            forwarded: false,
        };
        let hello = ControlRequest::RaftHello { from: VoterId(1) };
        let forwarded = ControlRequest::KvGet {
            key: "k".into(),
            forwarded: true,
        };
        let sched = |command| ControlRequest::Sched {
            request: idunno_core::scheduler::api::SchedRequest::Command(command),
            forwarded: false,
        };
        let expire = sched(idunno_core::scheduler::SchedCommand::ExpireLeases);
        let added = ControlRequest::Dfs {
            request: DfsRequest::Apply(idunno_core::dfs::DfsCommand::ReplicaAdded {
                hash: idunno_core::dfs::ContentHash([0; 32]),
                node: NodeId::new(addr(7), 1),
            }),
            forwarded: false,
        };
        for request in [&plan, &hello, &forwarded, &expire, &added] {
            assert!(is_peer_only(request), "{request:?}");
        }
        let asked = ControlRequest::KvGet {
            key: "k".into(),
            forwarded: false,
        };
        let cancel = sched(idunno_core::scheduler::SchedCommand::Cancel {
            job: idunno_core::scheduler::JobId(1),
        });
        let held = ControlRequest::Dfs {
            request: DfsRequest::Held,
            forwarded: false,
        };
        for request in [
            &ControlRequest::ListSelf,
            &ControlRequest::Leave,
            &ControlRequest::NodeStats,
            &asked,
            &cancel,
            &held,
        ] {
            assert!(!is_peer_only(request), "{request:?}");
        }
    }

    /// Serves one connection on which the client sends `request`, reads the answer, then
    /// closes (or, with `close` false, stays silent until the server's read timeout); returns
    /// the hints sent.
    async fn hints_after(request: ControlRequest, role: Role, close: bool) -> Vec<NodeId> {
        let (hints, mut hinted) = ProbeHints::channel();
        let (mut client, mut server) = tokio::io::duplex(4096);
        let requests = fake_driver();
        let ends = ConnectionEnd {
            hints: Some(&hints),
            role,
        };
        let serving = serve_requests(&mut server, &requests, None, false, ends);
        let talking = async move {
            write_frame(&mut client, &request).await.expect("write");
            let answer: Option<ControlResponse> = read_frame(&mut client, wire::FRAME_BYTES_MAX)
                .await
                .expect("read");
            assert!(answer.is_some(), "answered");
            if !close {
                // Outlive the server's read timeout with the connection open.
                tokio::time::sleep(SERVER_TIMEOUT * 2).await;
            }
            drop(client);
        };
        let (handoff, ()) = tokio::join!(serving, talking);
        assert!(handoff.is_none());
        let mut out = Vec::new();
        while let Ok(node) = hinted.try_recv() {
            out.push(node);
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_that_closes_its_lease_connection_is_hinted_and_nothing_else_is() {
        use idunno_core::scheduler::SchedCommand;
        use idunno_core::scheduler::api::SchedRequest;
        let worker = NodeId::new(addr(9), 2);
        let lease = |forwarded| ControlRequest::Sched {
            request: SchedRequest::Command(SchedCommand::Lease { worker, request: 1 }),
            forwarded,
        };
        assert_eq!(
            hints_after(lease(false), Role::Peer, true).await,
            vec![worker]
        );
        // This server's own timeout is not the worker going away.
        assert!(
            hints_after(lease(false), Role::Peer, false)
                .await
                .is_empty()
        );
        // A forwarded lease's connection belongs to the forwarding node.
        assert!(hints_after(lease(true), Role::Peer, true).await.is_empty());
        // A client token may not speak for a worker (refused before it counts).
        assert!(
            hints_after(lease(false), Role::Client, true)
                .await
                .is_empty()
        );
        // A connection that never asked for a lease.
        assert!(
            hints_after(ControlRequest::ListSelf, Role::Peer, true)
                .await
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_request_round_trips_and_several_fit_one_connection() {
        let (client, server) = tokio::io::duplex(1024);
        let requests = fake_driver();
        let server = tokio::spawn(serve_connection(server, requests));
        let mut client = client;
        for _ in 0..3 {
            write_frame(&mut client, &ControlRequest::ListSelf)
                .await
                .expect("write");
            let answer: Option<ControlResponse> = read_frame(&mut client, wire::FRAME_BYTES_MAX)
                .await
                .expect("read");
            assert_eq!(
                answer,
                Some(ControlResponse::SelfInfo {
                    id: NodeId::new(addr(7), 3),
                    incarnation: 1
                })
            );
        }
        drop(client);
        server
            .await
            .expect("server task ends when the client closes");
    }

    /// One ListSelf round trip on `stream`: the answer, or `None` when the server closed it.
    async fn list_self(stream: &mut tokio::net::TcpStream) -> Option<ControlResponse> {
        write_frame(stream, &ControlRequest::ListSelf).await.ok()?;
        read_frame(stream, wire::FRAME_BYTES_MAX).await.ok()?
    }

    #[tokio::test]
    async fn one_peer_address_cannot_take_every_connection_slot() {
        let listener = tokio::net::TcpListener::bind(addr(0)).await.expect("bind");
        let server = listener.local_addr().expect("addr");
        let serving = tokio::spawn(serve(listener, fake_driver()));
        let mut held = Vec::new();
        for _ in 0..CONNECTIONS_PER_PEER_MAX {
            let mut stream = tokio::net::TcpStream::connect(server)
                .await
                .expect("connect");
            assert!(list_self(&mut stream).await.is_some(), "within the share");
            held.push(stream);
        }
        let mut over = tokio::net::TcpStream::connect(server)
            .await
            .expect("connect");
        assert_eq!(
            list_self(&mut over).await,
            None,
            "one connection over the peer's share is closed at accept"
        );
        // Another address still gets in.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::from(([127, 0, 0, 2], 0)))
            .expect("bind 127.0.0.2");
        let mut other = socket.connect(server).await.expect("connect");
        assert!(
            list_self(&mut other).await.is_some(),
            "another peer is served"
        );
        // A slot given back is reusable.
        drop(held.pop());
        let mut again = None;
        for _ in 0..100 {
            let mut stream = tokio::net::TcpStream::connect(server)
                .await
                .expect("connect");
            if list_self(&mut stream).await.is_some() {
                again = Some(stream);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(again.is_some(), "the freed slot was not given back");
        serving.abort();
    }

    #[tokio::test]
    async fn garbage_gets_an_error_answer_and_the_connection_closes() {
        let (mut client, server) = tokio::io::duplex(1024);
        let server = tokio::spawn(serve_connection(server, fake_driver()));
        client
            .write_all(&[0, 0, 0, 3, 0xff, 0xfe, 0xfd])
            .await
            .expect("write");
        let answer: Option<ControlResponse> = read_frame(&mut client, wire::FRAME_BYTES_MAX)
            .await
            .expect("read");
        assert!(
            matches!(answer, Some(ControlResponse::Error(_))),
            "{answer:?}"
        );
        let after: Option<ControlResponse> = read_frame(&mut client, wire::FRAME_BYTES_MAX)
            .await
            .expect("clean close");
        assert_eq!(after, None);
        server.await.expect("server task ends");
    }

    #[tokio::test]
    async fn an_oversized_length_is_refused_before_reading_the_body() {
        let (mut client, server) = tokio::io::duplex(1024);
        let server = tokio::spawn(serve_connection(server, fake_driver()));
        let len = u32::try_from(REQUEST_BYTES_MAX + 1).expect("small");
        client.write_all(&len.to_be_bytes()).await.expect("write");
        let answer: Option<ControlResponse> = read_frame(&mut client, wire::FRAME_BYTES_MAX)
            .await
            .expect("read");
        assert!(
            matches!(answer, Some(ControlResponse::Error(_))),
            "{answer:?}"
        );
        server.await.expect("server task ends");
    }

    #[tokio::test]
    async fn a_truncated_frame_is_an_error_not_a_clean_end() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(&[0, 0, 0, 10, 1, 2]).await.expect("write");
        drop(client);
        let read = read_frame::<ControlRequest, _>(&mut server, REQUEST_BYTES_MAX).await;
        assert!(matches!(read, Err(FrameError::Io(_))), "{read:?}");
    }

    #[tokio::test]
    async fn a_stopped_driver_is_reported_to_the_client() {
        let (tx, rx) = mpsc::channel::<Request>(1);
        drop(rx);
        let (mut client, server) = tokio::io::duplex(1024);
        let server = tokio::spawn(serve_connection(server, tx));
        write_frame(&mut client, &ControlRequest::ListMembers)
            .await
            .expect("write");
        let answer: Option<ControlResponse> = read_frame(&mut client, wire::FRAME_BYTES_MAX)
            .await
            .expect("read");
        assert!(
            matches!(answer, Some(ControlResponse::Error(_))),
            "{answer:?}"
        );
        drop(client);
        server.await.expect("server task ends");
    }
}
