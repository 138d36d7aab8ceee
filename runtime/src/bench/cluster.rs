//! The bench binaries' cluster: V Raft voters and W worker nodes, real `idunno-node` processes
//! on loopback at fixed free addresses (the voter list names them before they start), through
//! the demo's process guard ([`crate::demo::cluster::Cluster`]: SIGKILL and reap on every exit
//! path, one fresh cluster key, data in `<root>/node-<i>`, stderr in `<root>/node-<i>.log`).
//!
//! Owns: [`LocalCluster`]: the addresses, the `start` arguments of voters and workers, starting
//! (all at once, or one node again after a kill: a voter restarts from its data dir), and
//! waiting for a leader.
//! Must never: bind outside 127.0.0.0/8, or leave a child running once dropped (the guard).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use idunno_core::membership::NodeId;

use super::{BenchError, fail};
use crate::control;
use crate::demo::DemoError;
use crate::demo::cluster::{Cluster, free_addr};

/// Pause between two asks for the leader.
const LEADER_POLL: Duration = Duration::from_millis(10);

/// A bench's voters (indices `0..voters`) and workers (the rest) on loopback.
pub struct LocalCluster {
    /// The process guard (logs and data under its `root`).
    pub nodes: Cluster,
    /// Every node's address, by index (a killed worker's index is never reused).
    pub addrs: Vec<SocketAddr>,
    first_host: usize,
    voters: usize,
    voters_arg: String,
    voter_args: Vec<String>,
    worker_args: Vec<String>,
}

fn demo(e: DemoError) -> BenchError {
    BenchError(e.0)
}

impl LocalCluster {
    /// Addresses for `voters` voters and `workers` workers at 127.0.0.(first_host + i), running
    /// the `idunno-node` executable next to this one; nothing started yet. Voters get
    /// `--worker-lanes 0` (no worker on them), workers `--worker-lanes lanes`.
    pub fn new(
        root: PathBuf,
        first_host: usize,
        voters: usize,
        workers: usize,
        lanes: u8,
    ) -> Result<Self, BenchError> {
        let exe = super::node_exe()?;
        let nodes = Cluster::with_exe(root, exe).map_err(demo)?;
        let mut cluster = LocalCluster {
            nodes,
            addrs: Vec::new(),
            first_host,
            voters,
            voters_arg: String::new(),
            voter_args: vec!["--worker-lanes".to_owned(), "0".to_owned()],
            worker_args: vec!["--worker-lanes".to_owned(), lanes.to_string()],
        };
        for _ in 0..voters + workers {
            cluster.add_address()?;
        }
        cluster.voters_arg = cluster.addrs[..voters]
            .iter()
            .enumerate()
            .map(|(i, addr)| format!("{}={addr}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        Ok(cluster)
    }

    /// More `start` arguments for every voter started from now on.
    pub fn voter_args(&mut self, args: &[&str]) {
        self.voter_args.extend(args.iter().map(|a| (*a).to_owned()));
    }

    /// Sets `key=value` in every node's environment from now on (e.g. `RUST_LOG`).
    pub fn env(&mut self, key: &str, value: &str) {
        self.nodes.env(key, value);
    }

    /// A fresh address for one more worker; its index.
    pub fn add_address(&mut self) -> Result<usize, BenchError> {
        let index = self.addrs.len();
        let host = u8::try_from(self.first_host + index)
            .map_err(|_| BenchError(format!("node {index}: out of loopback hosts")))?;
        let ip = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)), 0);
        self.addrs.push(free_addr(ip).map_err(demo)?);
        Ok(index)
    }

    /// How many of the nodes are voters (indices `0..voters`).
    pub fn voters(&self) -> usize {
        self.voters
    }

    /// (bind, join seeds: every other running node, `start` arguments) of node `index`.
    fn spawn_args(&self, index: usize) -> (SocketAddr, Vec<SocketAddr>, Vec<String>) {
        let mut extra = vec!["--voters".to_owned(), self.voters_arg.clone()];
        if index < self.voters {
            extra.extend(["--raft-id".to_owned(), (index + 1).to_string()]);
            extra.extend(self.voter_args.iter().cloned());
        } else {
            extra.extend(self.worker_args.iter().cloned());
        }
        let join: Vec<SocketAddr> = self
            .nodes
            .live_indices()
            .into_iter()
            .filter(|&i| i != index)
            .filter_map(|i| self.addrs.get(i).copied())
            .collect();
        (self.addrs[index], join, extra)
    }

    /// Starts node `index` (again: a voter from its data dir) and waits until it listens.
    pub async fn spawn(&mut self, index: usize) -> Result<NodeId, BenchError> {
        if index >= self.addrs.len() {
            return fail(format!("node {index} has no address"));
        }
        let (bind, join, extra) = self.spawn_args(index);
        self.nodes
            .spawn(index, bind, &join, &extra)
            .await
            .map_err(demo)
    }

    /// Starts every node: the first, then the others at once; waits until all listen.
    pub async fn start_all(&mut self) -> Result<(), BenchError> {
        self.spawn(0).await?;
        let mut pending = Vec::new();
        for i in 1..self.addrs.len() {
            let (bind, join, extra) = self.spawn_args(i);
            pending.push(
                self.nodes
                    .start_spawn(i, bind, &join, &extra)
                    .map_err(demo)?,
            );
        }
        for (index, line) in pending {
            self.nodes.finish_spawn(index, line).await.map_err(demo)?;
        }
        Ok(())
    }

    /// SIGKILLs node `index` and reaps it.
    pub fn kill(&mut self, index: usize) -> Result<(), BenchError> {
        self.nodes.kill(index).map_err(demo)
    }

    /// Asks `via` until it names a leader other than `not`, within `timeout`; its address.
    pub async fn wait_leader(
        &self,
        via: SocketAddr,
        not: Option<SocketAddr>,
        timeout: Duration,
    ) -> Result<SocketAddr, BenchError> {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if let Ok((_, Some(addr), _)) = control::leader(via, control::CLIENT_TIMEOUT).await
                && Some(addr) != not
            {
                return Ok(addr);
            }
            tokio::time::sleep(LEADER_POLL).await;
        }
        fail("no leader elected in time")
    }
}
