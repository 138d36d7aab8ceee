//! A client of the Raft leader's control requests that keeps its connections, shared by the
//! scheduler client (`jobs::client::SchedClient`) and the file-system client
//! (`dfs::client::DfsClient`).
//!
//! Owns: [`LeaderClient`]: asks the node it was given who leads, or follows a `NotLeader`
//! answer, and asks the leader directly from then on; forgets it when it stops answering; keeps
//! up to [`IDLE_CONNECTIONS_MAX`] authenticated connections open between requests, so a
//! worker's steady stream of reports, lookups and commits costs no TCP connect and handshake
//! each (before, every file-system request opened one connection to the node and one to the
//! leader). A kept connection is used for one request at a time, at most
//! [`USES_PER_CONNECTION_MAX`] times and never after [`IDLE_REUSE_MAX`] idle (both below the
//! server's limits, so the server does not close it under a request); one that fails is
//! dropped and the error returned as it is (the caller's retry decides, as for a fresh
//! connection: a request is never re-sent here).
//! Must never: follow more than [`REDIRECTS_MAX`] redirects for one request, wait without a
//! deadline, send two requests on one connection at once, or re-send a request.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use idunno_core::wire::{self, ControlRequest, ControlResponse};

use crate::auth::SecureStream;
use crate::control::{self, ClientError, FrameError};

/// Most `NotLeader` redirects followed for one request.
pub const REDIRECTS_MAX: usize = 3;
/// Most idle connections one client keeps.
pub const IDLE_CONNECTIONS_MAX: usize = 8;
/// Most requests sent on one kept connection (the server serves
/// [`control::REQUESTS_PER_CONNECTION_MAX`]).
pub const USES_PER_CONNECTION_MAX: usize = control::REQUESTS_PER_CONNECTION_MAX - 24;
/// Longest a kept connection may idle and still be used (the server drops a connection idle
/// for [`control::SERVER_TIMEOUT`]).
pub const IDLE_REUSE_MAX: Duration = Duration::from_secs(2);

/// Whether `IDUNNO_SCHED_FRESH_CONNECTIONS=1` asks for one connection per request (the old
/// behaviour, kept for the benchmarks' before/after comparison; it applies to the file-system
/// client too).
fn fresh_connections() -> bool {
    static FRESH: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FRESH.get_or_init(|| std::env::var("IDUNNO_SCHED_FRESH_CONNECTIONS").is_ok_and(|v| v == "1"))
}

/// An open connection between two requests.
#[derive(Debug)]
struct Idle {
    to: SocketAddr,
    stream: SecureStream,
    uses: usize,
    since: Instant,
}

/// Sends control requests to the Raft leader on kept connections (see the module docs).
#[derive(Debug)]
pub struct LeaderClient {
    node: SocketAddr,
    timeout: Duration,
    leader: Mutex<Option<SocketAddr>>,
    idle: Mutex<Vec<Idle>>,
}

impl LeaderClient {
    /// A client that starts at `node`, each request within `timeout`.
    pub fn new(node: SocketAddr, timeout: Duration) -> Self {
        LeaderClient {
            node,
            timeout,
            leader: Mutex::new(None),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// A kept connection to `to` that is still fresh, if any (stale ones are dropped).
    fn take_idle(&self, to: SocketAddr) -> Option<Idle> {
        let mut idle = self.idle.lock().ok()?;
        idle.retain(|c| c.since.elapsed() < IDLE_REUSE_MAX);
        let at = idle.iter().rposition(|c| c.to == to)?;
        Some(idle.swap_remove(at))
    }

    /// Keeps `conn` for the next request, unless it is used up or enough are kept.
    fn keep(&self, mut conn: Idle) {
        conn.uses += 1;
        conn.since = Instant::now();
        if conn.uses >= USES_PER_CONNECTION_MAX || fresh_connections() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < IDLE_CONNECTIONS_MAX
        {
            idle.push(conn);
        }
    }

    /// Sends `request` to `to` on a kept connection or a new one and reads the answer, within
    /// the client's timeout; like [`control::call`], an `Error` answer is `Refused`.
    async fn call(
        &self,
        to: SocketAddr,
        request: &ControlRequest,
    ) -> Result<ControlResponse, ClientError> {
        let exchange = async {
            let mut conn = match self.take_idle(to) {
                Some(conn) => conn,
                None => {
                    let stream = crate::auth::tcp::connect(to)
                        .await
                        .map_err(|source| ClientError::Connect { node: to, source })?;
                    let _ = stream.set_nodelay(true);
                    Idle {
                        to,
                        stream,
                        uses: 0,
                        since: Instant::now(),
                    }
                }
            };
            let frame_error = |e: FrameError| match e {
                FrameError::Io(source) => ClientError::Io { node: to, source },
                FrameError::Wire(source) => ClientError::BadAnswer { node: to, source },
            };
            control::write_frame(&mut conn.stream, request)
                .await
                .map_err(frame_error)?;
            let answer =
                control::read_frame::<ControlResponse, _>(&mut conn.stream, wire::FRAME_BYTES_MAX)
                    .await
                    .map_err(frame_error)?
                    .ok_or(ClientError::NoAnswer { node: to })?;
            // Only a connection that answered in full goes back (a timed-out one is dropped
            // with this future, half-read), and not after an error answer (the server may
            // close it after one).
            if !matches!(answer, ControlResponse::Error(_)) {
                self.keep(conn);
            }
            Ok(answer)
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Err(ClientError::Timeout {
                node: to,
                after: self.timeout,
            }),
            Ok(Err(e)) => Err(e),
            Ok(Ok(ControlResponse::Error(message))) => {
                Err(ClientError::Refused { node: to, message })
            }
            Ok(Ok(answer)) => Ok(answer),
        }
    }

    fn cached_leader(&self) -> Option<SocketAddr> {
        self.leader.lock().map_or(None, |l| *l)
    }

    fn set_leader(&self, leader: Option<SocketAddr>) {
        if let Ok(mut slot) = self.leader.lock() {
            *slot = leader;
        }
    }

    /// Asks the node who leads and remembers the answer: a node that does not lead would
    /// otherwise forward every request (asking the voters who leads, then the leader, on fresh
    /// connections each time), so a worker talks to the leader directly instead.
    async fn find_leader(&self) -> Option<SocketAddr> {
        match self.call(self.node, &ControlRequest::Leader).await {
            Ok(ControlResponse::Leader {
                addr: Some(leader), ..
            }) => {
                self.set_leader(Some(leader));
                Some(leader)
            }
            _ => None,
        }
    }

    /// The node this client starts at.
    pub fn node(&self) -> SocketAddr {
        self.node
    }

    /// The deadline of each request.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends `message` (to the last known leader, else to the leader the node names, else to
    /// the node), following `NotLeader`; who answered, and the answer (an `Error` answer is
    /// `Refused`). The caller checks the answer's kind.
    pub async fn ask(
        &self,
        message: &ControlRequest,
    ) -> Result<(SocketAddr, ControlResponse), ClientError> {
        let mut target = match self.cached_leader() {
            Some(leader) => leader,
            None => self.find_leader().await.unwrap_or(self.node),
        };
        for _ in 0..REDIRECTS_MAX {
            let answer = match self.call(target, message).await {
                Ok(answer) => answer,
                Err(e) => {
                    // The leader may be gone: start from the node next time.
                    self.set_leader(None);
                    return Err(e);
                }
            };
            match answer {
                ControlResponse::NotLeader {
                    addr: Some(leader), ..
                } if leader != target => {
                    self.set_leader(Some(leader));
                    target = leader;
                }
                ControlResponse::NotLeader { .. } => {
                    self.set_leader(None);
                    return Err(ClientError::Refused {
                        node: target,
                        message: "no leader is known right now; retry".to_owned(),
                    });
                }
                answer => return Ok((target, answer)),
            }
        }
        self.set_leader(None);
        Err(ClientError::Refused {
            node: target,
            message: "too many leader redirects; retry".to_owned(),
        })
    }
}
