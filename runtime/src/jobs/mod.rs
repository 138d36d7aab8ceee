//! Inference jobs on real processes: the worker loop every node runs, the executors it runs
//! batches with, and the client side of the scheduler protocol.
//!
//! Owns: [`Executor`] (what runs a batch of one model; the `noop` model lives in [`noop`], the
//! real models will implement the same trait), [`worker`] (ask -> lease -> run -> complete ->
//! ask, with back-off and bounded in-flight leases), and [`client`] (a [`client::SchedClient`]
//! that follows the leader, and the chunked submission).
//! Must never: decide anything about scheduling (core::scheduler does, through the Raft log),
//! hold a lease without a deadline, or panic on an answer a node sends.

pub mod cli;
pub mod client;
pub mod noop;
pub mod worker;

use idunno_core::scheduler::Completion;

/// Runs batches of inputs through models. Called on a blocking thread (it may take long).
pub trait Executor: Send + Sync + 'static {
    /// Runs `model` on each `(index, input name)`: exactly one [`Completion`] per input, in any
    /// order. A model this executor does not know yields a per-input `Failed` outcome, never a
    /// panic.
    fn run(&self, model: &str, inputs: &[(u32, String)]) -> Vec<Completion>;
}
