//! Inference jobs on real processes: the worker loop every node runs, the executors it runs
//! batches with, the client side of the scheduler protocol, and the client commands.
//!
//! Owns: [`Executor`] (what runs a granted batch, in three steps, prepare -> [`Prepared::run`]
//! -> [`Ran::store`], so a worker overlaps one batch's run with the next one's fetch: the
//! `noop` model lives in [`noop`], the registry's real models in [`model`], which stores one
//! result file per batch in the file system, format in [`results`]), [`worker`] (ask -> lease
//! -> fetch -> run -> store -> report -> ask, pipelined, with back-off and bounded in-flight
//! leases), [`client`] (a [`client::SchedClient`] that follows the leader, and the chunked
//! submission), and the `client` commands ([`cli`]: the scheduler ones; [`commands`]: `train`,
//! `upload`, `inference` and `c4`'s predictions).
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

/// What is left of a batch to do after [`Executor::prepare`]: run it (the model's compute),
/// which gives a [`Ran`]. Both steps run on a blocking thread, the worker's lane keeping the
/// two apart so it can fetch the next batch while this one runs.
pub struct Prepared {
    run: Box<dyn FnOnce() -> Result<Ran, ExecError> + Send>,
}

/// What is left of a batch after it ran: store its results (in the file system), which gives
/// the completions to report. Runs on a blocking thread.
pub struct Ran {
    store: Box<dyn FnOnce() -> Result<Vec<Completion>, ExecError> + Send>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Prepared")
    }
}

impl std::fmt::Debug for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ran")
    }
}

impl Prepared {
    /// A batch whose run step is `run`.
    pub fn new(run: impl FnOnce() -> Result<Ran, ExecError> + Send + 'static) -> Self {
        Prepared { run: Box::new(run) }
    }

    /// A batch that is complete already (nothing to run or store: an unknown model, a model
    /// that cannot load).
    pub fn done(completions: Vec<Completion>) -> Self {
        Prepared::new(move || Ok(Ran::done(completions)))
    }

    /// Runs the batch (blocks: the model's compute).
    pub fn run(self) -> Result<Ran, ExecError> {
        (self.run)()
    }
}

impl Ran {
    /// A batch whose store step is `store`.
    pub fn new(
        store: impl FnOnce() -> Result<Vec<Completion>, ExecError> + Send + 'static,
    ) -> Self {
        Ran {
            store: Box::new(store),
        }
    }

    /// A batch with nothing to store: its completions as they are.
    pub fn done(completions: Vec<Completion>) -> Self {
        Ran::new(move || Ok(completions))
    }

    /// Stores the results (blocks: file-system I/O); the completions to report, each naming
    /// only what is committed.
    pub fn store(self) -> Result<Vec<Completion>, ExecError> {
        (self.store)()
    }
}

/// Runs granted batches of inputs through models, in three steps so that a worker can overlap
/// them across batches: [`Executor::prepare`] (fetch the inputs and the model), then
/// [`Prepared::run`] (compute), then [`Ran::store`] (write the results). Each step is called on
/// a blocking thread (it may take long; it may block on the runtime's handle for I/O).
pub trait Executor: Send + Sync + 'static {
    /// Fetches what `grant` needs (its inputs, `grant.model`'s weights). The batch, once run
    /// and stored, must give exactly one [`Completion`] per input, in any order, each outcome
    /// within the scheduler's size limits. A model this executor does not know, or an input
    /// that cannot be run, yields a per-input `Failed` outcome, never a panic; `Err` only for
    /// trouble that may pass (the batch is not reported and runs again).
    fn prepare(&self, grant: &Grant) -> Result<Prepared, ExecError>;

    /// The scheduler refused `grant`'s report for good (the lease had expired or was revoked
    /// before this worker reported): nothing refers to what [`Ran::store`] stored for it,
    /// which may be removed. Called on an async task: must not block.
    fn discard(&self, grant: &Grant, results: &[Completion]) {
        let _ = (grant, results);
    }
}

/// The three steps of `executor` on `grant` in a row, on this (blocking) thread: what a caller
/// that does not overlap batches does.
pub fn run_batch(executor: &dyn Executor, grant: &Grant) -> Result<Vec<Completion>, ExecError> {
    executor.prepare(grant)?.run()?.store()
}
