//! idunno-sim: the deterministic whole-cluster simulator over `idunno-core`.
//!
//! Owns: a generic simulated world ([`world::World`]: virtual clock, one seeded RNG, an event
//! queue ordered by `(time, sequence number)`, a faulty network, node crash and restart) that
//! drives any sans-IO machine implementing [`machine::Machine`]; the membership layer on top of
//! it ([`swim`]); the membership checkers ([`checker`]); the Raft layer ([`raft`], checked by
//! [`raft_checker`] and [`linearizability`]); the file system ([`dfs`], checked by
//! [`dfs_checker`]: the namespace through a metadata log, a sequencer or the Raft cluster); the
//! scheduler over Raft ([`sched`]: workers pulling batches, failure detection, its checker); and
//! the seed loop that prints a failing seed with the command that replays it ([`scenario`]).
//! A new layer implements [`machine::Machine`] and gets its own cluster module and checkers.
//!
//! Must never: read the wall clock, use randomness that is not drawn from the simulation seed,
//! iterate a hash map, really send anything, or run an unbounded loop. Same seed, same run, bit
//! for bit ([`world::World::trace_digest`] proves it).
//!
//! The fault scenarios live in `sim/tests/` behind the `sim` cargo feature:
//! `cargo test --features sim` (add `SIM_SEEDS=10000` for a long sweep, or `SIM_SEED=n` to
//! replay one seed). The benchmarks are `cargo run --release -p idunno-sim --bin swim-bench`
//! and `--bin sched-bench`.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod checker;
pub mod dfs;
pub mod dfs_checker;
pub mod linearizability;
pub mod machine;
pub mod network;
pub mod queue;
pub mod raft;
pub mod raft_checker;
pub mod scenario;
pub mod sched;
pub mod swim;
pub mod trace;
pub mod world;

pub use checker::Violation;
pub use machine::{Effect, Machine};
pub use network::{FaultOptions, Network};
pub use raft::{RaftOptions, RaftSim};
pub use swim::{SwimCluster, SwimSim};
pub use world::World;
