//! What the bench binaries (`raft-bench`, `sched-throughput`, `jobs-bench`, `infer-throughput`)
//! share: the error of a failed step, and the local cluster of voters and workers they measure.
//!
//! Owns: [`BenchError`] (any displayable error converts into it), [`fail`], and
//! [`cluster::LocalCluster`].
//! Must never: be used by the node itself (a bench's errors are strings for a human).

pub mod cluster;

/// A failed step of a bench; the message says which and why.
#[derive(Debug)]
pub struct BenchError(pub String);

impl<E: std::fmt::Display> From<E> for BenchError {
    fn from(e: E) -> Self {
        BenchError(e.to_string())
    }
}

/// `Err(BenchError(message))`.
pub fn fail<T>(message: impl Into<String>) -> Result<T, BenchError> {
    Err(BenchError(message.into()))
}
