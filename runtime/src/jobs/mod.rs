//! Inference jobs on real processes: the worker loop every node runs, the executors it runs
//! batches with, the client side of the scheduler protocol, and the client commands.
//!
//! Owns: [`Executor`] (what runs a granted batch: the `noop` model lives in [`noop`], the
//! registry's real models in [`model`], which stores one result file per batch in the file
//! system, format in [`results`]), [`worker`] (ask -> lease -> run -> complete -> ask, with
//! back-off and bounded in-flight leases), [`client`] (a [`client::SchedClient`] that follows
//! the leader, and the chunked submission), and the `client` commands ([`cli`]: the scheduler
//! ones; [`commands`]: `train`, `upload`, `inference` and `c4`'s predictions).
//! Must never: decide anything about scheduling (core::scheduler does, through the Raft log),
//! hold a lease without a deadline, or panic on an answer a node sends.

pub mod cli;
pub mod client;
pub mod commands;
pub mod model;
pub mod noop;
pub mod results;
pub mod worker;

use idunno_core::scheduler::{Completion, Grant};

/// Why a batch produced nothing to report: the worker reports nothing, the lease lapses and
/// its inputs run again (on this worker or another). For failures that may pass (the file
/// system did not answer); a failure that will not pass is a per-input `Failed` outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ExecError(pub String);

/// Runs granted batches of inputs through models. Called on a blocking thread (it may take
/// long; it may block on the runtime's handle for I/O).
pub trait Executor: Send + Sync + 'static {
    /// Runs `grant.model` on each of `grant.inputs`: exactly one [`Completion`] per input, in
    /// any order, each outcome within the scheduler's size limits. A model this executor does
    /// not know, or an input that cannot be run, yields a per-input `Failed` outcome, never a
    /// panic.
    fn run(&self, grant: &Grant) -> Result<Vec<Completion>, ExecError>;

    /// The scheduler refused `grant`'s report for good (the lease had expired or was revoked
    /// before this worker reported): nothing refers to what [`Executor::run`] stored for it,
    /// which may be removed. Called on an async task: must not block.
    fn discard(&self, grant: &Grant, results: &[Completion]) {
        let _ = (grant, results);
    }
}
