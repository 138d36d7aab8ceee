//! idunno-core: the pure, deterministic state machines of the idunno cluster.
//!
//! Owns: the wire codec ([`wire`]), the sealing, opening and handshake steps of cluster
//! authentication ([`auth`]), virtual time ([`time`]), SWIM group membership
//! ([`membership`]), the Raft log that replicates the coordinator's state ([`consensus`]), that
//! state itself ([`cluster`]), the file-system metadata and its placement and repair decisions
//! ([`dfs`]), and the inference scheduler: jobs, leases, fair-time and statistics
//! ([`scheduler`]).
//!
//! Every machine here has one shape (see `docs/architecture.md`):
//! `handle(now, Input)` feeds an event in, `poll_output()` drains what it wants done
//! (send bytes, arm a timer, report an event) until `None`. Time arrives only as an argument
//! and randomness only from a seeded RNG the machine was given.
//!
//! Must never: perform I/O, read a clock, spawn threads, use global randomness, or let
//! hash-map iteration order reach a decision. `core/clippy.toml` enforces the first four.

pub mod auth;
pub mod cluster;
pub mod consensus;
pub mod dfs;
pub mod membership;
pub mod scheduler;
pub mod time;
pub mod wire;
