//! idunno-runtime: the tokio driver that runs idunno's sans-IO state machines on real sockets,
//! and the pieces of the `idunno-node` binary (start / client / demo).
//!
//! Owns: sockets, timers, the wall clock, OS randomness, files on disk, processes and signals.
//! Everything that decides lives in `idunno-core`; this crate only translates: a socket, timer
//! or command event goes into `handle`, and the machine's outputs are carried out in order.
//!
//! Modules, one job each:
//! - [`auth`]: the cluster key and the authenticated membership socket.
//! - [`net`]: the network and wall-clock seam (tokio in production, turmoil in simulation).
//! - [`timers`]: the timer queue that hands timers back to the machine when they are due.
//! - [`driver`]: the event loop of one node's membership machine.
//! - [`view`]: the membership view (alive and gone members) the driver publishes.
//! - [`consensus`]: Raft on real processes: the voter's driver, its TCP transport and the
//!   routing of `leader` / `kv-put` / `kv-get` (forwarded to the leader).
//! - [`blobs`]: the DFS's bytes: the content-addressed blob store, chain-replicated transfers,
//!   the blob client and the scrubber.
//! - [`jobs`]: the worker loop, the executors (the `noop` model) and the scheduler client.
//! - [`control`]: the TCP control server and the client side of the control protocol.
//! - [`identity`]: the node's generation, persisted so it strictly increases across restarts.
//! - [`node`]: binds the sockets and wires driver, control server and signals together.
//! - [`render`]: member tables and JSON for the client and the demo.
//! - [`progress`]: the client commands' progress bars on stderr (indicatif).
//! - [`demo`]: the local-cluster demo (spawns `idunno-node start` children).
//! - [`cli`]: the command line (clap).
//! - [`logging`]: tracing subscriber setup.
//!
//! Must never: make a membership decision, panic on peer, user or disk input, or bind outside
//! the addresses it is told to bind.

pub mod auth;
pub mod bench;
pub mod blobs;
pub mod cli;
pub mod conn_limit;
pub mod consensus;
pub mod control;
pub mod demo;
pub mod dfs;
pub mod driver;
pub mod identity;
pub mod jobs;
pub mod leader_client;
pub mod logging;
pub mod net;
pub mod node;
pub mod progress;
pub mod render;
pub mod stats;
pub mod storage;
pub mod timers;
pub mod view;
