//! The client side of the scheduler protocol, for the worker loop and the `client` commands.
//!
//! Owns: [`SchedClient`] (sends a [`SchedRequest`] to the leader: asks the node it was given
//! who leads, or follows a `NotLeader` answer, and asks the leader directly from then on;
//! forgets it when it stops answering; keeps up to [`IDLE_CONNECTIONS_MAX`] authenticated connections open between
//! requests, so a worker's steady stream of reports costs no TCP connect and handshake each),
//! [`submit`] (a job of any size up to the input limit, in chunks that fit one request) and
//! [`all_results`] (every page of a job's results).
//! A kept connection is used for one request at a time, at most [`USES_PER_CONNECTION_MAX`]
//! times and never after [`IDLE_REUSE_MAX`] idle (both below the server's limits, so the server
//! does not close it under a request); one that fails is dropped and the error returned as it
//! is (the caller's retry decides, as for a fresh connection: a request is never re-sent here).
//! Must never: follow more than [`REDIRECTS_MAX`] redirects for one request, wait without a
//! deadline, send two requests on one connection at once, or trust an answer's shape (a wrong
//! answer is an error).

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use idunno_core::scheduler::api::{
    INPUTS_PER_CHUNK_MAX, InputResult, RESULTS_PER_ANSWER_MAX, SchedAnswer, SchedQuery,
    SchedRequest,
};
use idunno_core::scheduler::{JobId, JobSpec, SchedCommand, SchedError, SchedResult};
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
/// behaviour, kept for the benchmarks' before/after comparison).
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

/// Sends scheduler requests, following the leader.
#[derive(Debug)]
pub struct SchedClient {
    node: SocketAddr,
    timeout: Duration,
    leader: Mutex<Option<SocketAddr>>,
    idle: Mutex<Vec<Idle>>,
}

/// Why a submission failed.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The request did not get an answer.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The scheduler refused it.
    #[error("refused: {0}")]
    Refused(SchedError),
    /// The answer was not the expected one.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

impl SchedClient {
    /// A client that starts at `node`, each request within `timeout`.
    pub fn new(node: SocketAddr, timeout: Duration) -> Self {
        SchedClient {
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

    /// Sends `request` (to the last known leader, else to the leader the node names, else to
    /// the node), following `NotLeader`.
    pub async fn ask(&self, request: SchedRequest) -> Result<SchedAnswer, ClientError> {
        let mut target = match self.cached_leader() {
            Some(leader) => leader,
            None => self.find_leader().await.unwrap_or(self.node),
        };
        let message = ControlRequest::Sched {
            request,
            forwarded: false,
        };
        for _ in 0..REDIRECTS_MAX {
            let answer = match self.call(target, &message).await {
                Ok(answer) => answer,
                Err(e) => {
                    // The leader may be gone: start from the node next time.
                    self.set_leader(None);
                    return Err(e);
                }
            };
            match answer {
                ControlResponse::Sched(answer) => return Ok(answer),
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
                other => {
                    return Err(ClientError::Unexpected {
                        node: target,
                        answer: format!("{other:?}"),
                    });
                }
            }
        }
        self.set_leader(None);
        Err(ClientError::Refused {
            node: target,
            message: "too many leader redirects; retry".to_owned(),
        })
    }

    /// Proposes `command`; its applied result.
    pub async fn command(&self, command: SchedCommand) -> Result<SchedResult, ClientError> {
        let node = self.node;
        match self.ask(SchedRequest::Command(command)).await? {
            SchedAnswer::Result(result) => Ok(result),
            other => Err(ClientError::Unexpected {
                node,
                answer: format!("{other:?}"),
            }),
        }
    }

    /// Reads `query` linearizably.
    pub async fn query(&self, query: SchedQuery) -> Result<SchedAnswer, ClientError> {
        self.ask(SchedRequest::Query(query)).await
    }
}

/// Submits `spec` whatever its input count (up to the job limit): in one `Submit` when it fits
/// one chunk, else `Open` with the first chunk and `AddInputs` for the rest, the last sealing.
/// `request` identifies the submission (retrying it returns the same job).
pub async fn submit(
    client: &SchedClient,
    mut spec: JobSpec,
    request: u64,
) -> Result<JobId, SubmitError> {
    let submitted = |result: SchedResult| match result {
        SchedResult::Submitted { job } => Ok(job),
        SchedResult::Rejected(e) => Err(SubmitError::Refused(e)),
        other => Err(SubmitError::Unexpected(format!("{other:?}"))),
    };
    if spec.inputs.len() <= INPUTS_PER_CHUNK_MAX {
        let result = client
            .command(SchedCommand::Submit { spec, request })
            .await?;
        return submitted(result);
    }
    let rest = spec.inputs.split_off(INPUTS_PER_CHUNK_MAX);
    let job = submitted(client.command(SchedCommand::Open { spec, request }).await?)?;
    let chunks: Vec<&[String]> = rest.chunks(INPUTS_PER_CHUNK_MAX).collect();
    let mut offset = INPUTS_PER_CHUNK_MAX as u32;
    for (i, chunk) in chunks.iter().enumerate() {
        let seal = i + 1 == chunks.len();
        let command = SchedCommand::AddInputs {
            job,
            offset,
            inputs: chunk.to_vec(),
            seal,
        };
        match client.command(command).await? {
            SchedResult::InputsAdded { .. } => {}
            SchedResult::Rejected(e) => return Err(SubmitError::Refused(e)),
            other => return Err(SubmitError::Unexpected(format!("{other:?}"))),
        }
        offset += chunk.len() as u32;
    }
    Ok(job)
}

/// Every finished input of `job`, by index, up to `limit`.
pub async fn all_results(
    client: &SchedClient,
    job: JobId,
    limit: usize,
) -> Result<Vec<InputResult>, SubmitError> {
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let query = SchedQuery::Results {
            job,
            from,
            max: RESULTS_PER_ANSWER_MAX,
        };
        match client.query(query).await? {
            SchedAnswer::Results { results, next } => {
                out.extend(results);
                match next {
                    Some(next) if next > from && out.len() < limit => from = next,
                    _ => break,
                }
            }
            SchedAnswer::UnknownJob(job) => {
                return Err(SubmitError::Refused(SchedError::UnknownJob(job)));
            }
            other => return Err(SubmitError::Unexpected(format!("{other:?}"))),
        }
    }
    out.truncate(limit);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::control::{read_frame, write_frame};

    /// A fake node that leads and answers every scheduler request with `NoWork`; closes each
    /// connection after `answers_per_connection` answers. Counts the connections it accepted.
    async fn fake_node(answers_per_connection: usize) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    for _ in 0..answers_per_connection {
                        let Ok(Some(request)) =
                            read_frame::<ControlRequest, _>(&mut stream, 1 << 16).await
                        else {
                            return;
                        };
                        let answer = match request {
                            // It leads itself.
                            ControlRequest::Leader => ControlResponse::Leader {
                                id: Some(idunno_core::consensus::VoterId(1)),
                                addr: Some(addr),
                                term: 1,
                            },
                            _ => ControlResponse::Sched(SchedAnswer::Result(SchedResult::NoWork)),
                        };
                        if write_frame(&mut stream, &answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn ask() -> SchedCommand {
        SchedCommand::ExpireLeases
    }

    #[tokio::test]
    async fn requests_share_one_kept_connection() {
        if !matches!(
            crate::auth::tcp::process_auth(),
            crate::auth::TcpAuth::Insecure
        ) {
            return; // another test of this process installed a key; the fake node has none
        }
        let (addr, accepted) = fake_node(usize::MAX).await;
        let client = SchedClient::new(addr, Duration::from_secs(2));
        for _ in 0..5 {
            assert_eq!(
                client.command(ask()).await.expect("answer"),
                SchedResult::NoWork
            );
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_node_closed_fails_once_and_is_replaced() {
        if !matches!(
            crate::auth::tcp::process_auth(),
            crate::auth::TcpAuth::Insecure
        ) {
            return;
        }
        // The first connection carries the leader lookup and the first request.
        let (addr, accepted) = fake_node(2).await;
        let client = SchedClient::new(addr, Duration::from_secs(2));
        assert_eq!(
            client.command(ask()).await.expect("first"),
            SchedResult::NoWork
        );
        // The kept connection was closed by the node: the error comes back as is (the
        // request is not re-sent here), and the next request opens a new connection.
        assert!(client.command(ask()).await.is_err());
        assert_eq!(
            client.command(ask()).await.expect("third"),
            SchedResult::NoWork
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
