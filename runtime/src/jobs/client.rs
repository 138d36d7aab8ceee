//! The client side of the scheduler protocol, for the worker loop and the `client` commands.
//!
//! Owns: [`SchedClient`] (sends a [`SchedRequest`] to the node it was given, remembers the
//! leader a `NotLeader` answer names and asks it directly next time, forgets it when it stops
//! answering), [`submit`] (a job of any size up to the input limit, in chunks that fit one
//! request) and [`all_results`] (every page of a job's results).
//! Must never: follow more than [`REDIRECTS_MAX`] redirects for one request, wait without a
//! deadline, or trust an answer's shape (a wrong answer is an error).

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use idunno_core::scheduler::api::{
    INPUTS_PER_CHUNK_MAX, InputResult, RESULTS_PER_ANSWER_MAX, SchedAnswer, SchedQuery,
    SchedRequest,
};
use idunno_core::scheduler::{JobId, JobSpec, SchedCommand, SchedError, SchedResult};
use idunno_core::wire::{ControlRequest, ControlResponse};

use crate::control::{self, ClientError};

/// Most `NotLeader` redirects followed for one request.
pub const REDIRECTS_MAX: usize = 3;

/// Sends scheduler requests, following the leader.
#[derive(Debug)]
pub struct SchedClient {
    node: SocketAddr,
    timeout: Duration,
    leader: Mutex<Option<SocketAddr>>,
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

    /// Sends `request` (to the last known leader, else to the node), following `NotLeader`.
    pub async fn ask(&self, request: SchedRequest) -> Result<SchedAnswer, ClientError> {
        let mut target = self.cached_leader().unwrap_or(self.node);
        let message = ControlRequest::Sched {
            request,
            forwarded: false,
        };
        for _ in 0..REDIRECTS_MAX {
            let answer = match control::call(target, &message, self.timeout).await {
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
