//! The client side of the scheduler protocol, for the worker loop and the `client` commands.
//!
//! Owns: [`SchedClient`] (sends a [`SchedRequest`] to the leader on the kept connections of a
//! [`LeaderClient`]: a worker's steady stream of reports costs no TCP connect and handshake
//! each), [`submit`] (a job of any size up to the input limit, in chunks that fit one request)
//! and [`all_results`] (every page of a job's results).
//! Must never: trust an answer's shape (a wrong answer is an error), or re-send a request (the
//! caller's retry decides).

use std::net::SocketAddr;
use std::time::Duration;

use idunno_core::scheduler::api::{
    INPUTS_PER_CHUNK_MAX, InputResult, RESULTS_PER_ANSWER_MAX, SchedAnswer, SchedQuery,
    SchedRequest,
};
use idunno_core::scheduler::{JobId, JobSpec, SchedCommand, SchedError, SchedResult};
use idunno_core::wire::{ControlRequest, ControlResponse};

use crate::control::ClientError;
pub use crate::leader_client::{
    IDLE_CONNECTIONS_MAX, IDLE_REUSE_MAX, LeaderClient, REDIRECTS_MAX, USES_PER_CONNECTION_MAX,
};

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

/// Sends scheduler requests, following the leader (on the kept connections of a
/// [`LeaderClient`]).
#[derive(Debug)]
pub struct SchedClient {
    inner: LeaderClient,
}

impl SchedClient {
    /// A client that starts at `node`, each request within `timeout`.
    pub fn new(node: SocketAddr, timeout: Duration) -> Self {
        SchedClient {
            inner: LeaderClient::new(node, timeout),
        }
    }

    /// Sends `request` (to the last known leader, else to the leader the node names, else to
    /// the node), following `NotLeader`.
    pub async fn ask(&self, request: SchedRequest) -> Result<SchedAnswer, ClientError> {
        let message = ControlRequest::Sched {
            request,
            forwarded: false,
        };
        match self.inner.ask(&message).await? {
            (_, ControlResponse::Sched(answer)) => Ok(answer),
            (node, other) => Err(ClientError::Unexpected {
                node,
                answer: format!("{other:?}"),
            }),
        }
    }

    /// Proposes `command`; its applied result.
    pub async fn command(&self, command: SchedCommand) -> Result<SchedResult, ClientError> {
        let node = self.inner.node();
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
