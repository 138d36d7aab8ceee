//! What the bench binaries (`raft-bench`, `sched-throughput`, `jobs-bench`, `infer-throughput`)
//! share: the error of a failed step, and the local cluster of voters and workers they measure.
//!
//! Owns: [`BenchError`] (any displayable error converts into it), [`fail`], [`node_exe`],
//! [`load_average`], and [`cluster::LocalCluster`].
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

/// The `idunno-node` executable next to this bench's own.
pub fn node_exe() -> Result<std::path::PathBuf, BenchError> {
    let me = std::env::current_exe()?;
    let exe = me.with_file_name(format!("idunno-node{}", std::env::consts::EXE_SUFFIX));
    if !exe.is_file() {
        return fail(format!(
            "{} not found: build it first (cargo build --release -p idunno-runtime --bins)",
            exe.display()
        ));
    }
    Ok(exe)
}

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`), or `?`.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}
