//! The demo's child processes: one `idunno-node start` per 127.0.0.x address, stdout read for
//! its `LISTENING` line, stderr appended to `node-<i>.log` in the demo's directory, every node
//! authenticated with the demo's own fresh cluster key.
//!
//! Owns: [`Cluster`], the guard that SIGKILLs and reaps every child it started when dropped (on
//! every exit path: errors, panics, Ctrl-C), and the loopback addresses ([`node_ip`],
//! [`free_addr`]).
//! Must never: leave a child running once dropped, or bind outside 127.0.0.0/8.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use idunno_core::membership::NodeId;
use tokio::sync::oneshot;

use super::{DemoError, fail, secs};
use crate::auth::ClusterKey;

/// How long a child may take to print its `LISTENING` line.
const LISTENING_TIMEOUT: Duration = Duration::from_secs(20);
/// The demo cluster's key file, inside its root directory.
pub const KEY_FILE: &str = "cluster.key";
/// Tries at finding a port free for both UDP and TCP.
const FREE_PORT_TRIES: usize = 64;

/// One child node process.
struct Node {
    id: NodeId,
    process: Child,
}

/// The demo's child processes; killed and reaped when dropped, on every exit path.
pub struct Cluster {
    exe: PathBuf,
    /// The demo's directory: key file, node logs, node data directories, inputs.
    pub root: PathBuf,
    /// Indexed by node number; `None` once killed or exited.
    nodes: Vec<Option<Node>>,
    /// Set in every child's environment (besides what the children inherit).
    envs: Vec<(String, String)>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.iter_mut().filter_map(Option::take) {
            stop(node.process);
        }
    }
}

/// SIGKILLs and reaps a child (an already exited child is only reaped).
fn stop(mut process: Child) {
    let _ = process.kill();
    let _ = process.wait();
}

impl Cluster {
    /// A cluster with no node yet, rooted at `root` (created, with a fresh key file).
    pub fn new(root: PathBuf) -> Result<Self, DemoError> {
        let exe = std::env::current_exe()
            .map_err(|e| DemoError(format!("cannot find the idunno-node executable: {e}")))?;
        Self::with_exe(root, exe)
    }

    /// [`Cluster::new`], with children running `exe` (a bench binary's `idunno-node`).
    pub fn with_exe(root: PathBuf, exe: PathBuf) -> Result<Self, DemoError> {
        fs::create_dir_all(&root)
            .map_err(|e| DemoError(format!("cannot create {}: {e}", root.display())))?;
        // The demo's cluster is authenticated like a real one: one fresh key for its nodes.
        let key = ClusterKey::generate();
        key.write_new_file(&root.join(KEY_FILE))
            .map_err(|e| DemoError(format!("cannot write the cluster key: {e}")))?;
        // The demo's own calls are a client's: they prove the cluster's client token (its
        // `client` children derive it from the key file, see `demo::client`).
        let _ = crate::auth::tcp::install(crate::auth::TcpAuth::client_of(&key));
        Ok(Cluster {
            exe,
            root,
            nodes: Vec::new(),
            envs: Vec::new(),
        })
    }

    /// Sets `key=value` in the environment of every child started from now on.
    pub fn env(&mut self, key: &str, value: &str) {
        self.envs.retain(|(k, _)| k != key);
        self.envs.push((key.to_owned(), value.to_owned()));
    }

    /// The `idunno-node` executable the children run (and the demo's clients).
    pub fn exe(&self) -> &Path {
        &self.exe
    }

    /// The cluster key file (its client token is what the demo's clients prove).
    pub fn key_file(&self) -> PathBuf {
        self.root.join(KEY_FILE)
    }

    /// Node `index`'s id, while it runs.
    pub fn id(&self, index: usize) -> Option<NodeId> {
        self.nodes.get(index).and_then(Option::as_ref).map(|n| n.id)
    }

    /// The index of the running node at `addr`.
    pub fn index_of(&self, addr: SocketAddr) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| self.id(i).is_some_and(|id| id.addr == addr))
    }

    /// The process id of node `index`, while it runs.
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.nodes.get(index)?.as_ref().map(|n| n.process.id())
    }

    /// Indices of the running nodes, ascending.
    pub fn live_indices(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.id(i).is_some())
            .collect()
    }

    /// Ids of the running nodes.
    pub fn live_ids(&self) -> BTreeSet<NodeId> {
        self.nodes.iter().flatten().map(|n| n.id).collect()
    }

    /// The address of some running node (the lowest index).
    pub fn any_live_addr(&self) -> Option<SocketAddr> {
        self.nodes.iter().flatten().map(|n| n.id.addr).next()
    }

    /// How many nodes run.
    pub fn running(&self) -> usize {
        self.nodes.iter().flatten().count()
    }

    /// Node `index`'s log file.
    pub fn log_path(&self, index: usize) -> PathBuf {
        self.root.join(format!("node-{index}.log"))
    }

    /// Starts node `index` and waits for its `LISTENING` line.
    pub async fn spawn(
        &mut self,
        index: usize,
        bind: SocketAddr,
        join: &[SocketAddr],
        extra: &[String],
    ) -> Result<NodeId, DemoError> {
        let (index, line) = self.start_spawn(index, bind, join, extra)?;
        self.finish_spawn(index, line).await
    }

    /// Starts node `index` (data in `root/node-<index>`, extra `start` arguments `extra`); the
    /// receiver yields its first stdout line.
    pub fn start_spawn(
        &mut self,
        index: usize,
        bind: SocketAddr,
        join: &[SocketAddr],
        extra: &[String],
    ) -> Result<(usize, oneshot::Receiver<io::Result<String>>), DemoError> {
        if !bind.ip().is_loopback() {
            return fail(format!(
                "refusing to bind {bind}: the demo stays on loopback"
            ));
        }
        if self.id(index).is_some() {
            return fail(format!("node {index} is already running"));
        }
        let data_dir = self.root.join(format!("node-{index}"));
        let log = open_log(&self.log_path(index))?;
        let mut command = Command::new(&self.exe);
        command
            .arg("start")
            .arg("--bind")
            .arg(bind.to_string())
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--cluster-key-file")
            .arg(self.root.join(KEY_FILE))
            .args(extra)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        if !join.is_empty() {
            let seeds: Vec<String> = join.iter().map(SocketAddr::to_string).collect();
            command.arg("--join").arg(seeds.join(","));
        }
        let mut process = command
            .spawn()
            .map_err(|e| DemoError(format!("cannot start {}: {e}", self.exe.display())))?;
        let Some(stdout) = process.stdout.take() else {
            stop(process);
            return fail("child has no stdout");
        };
        let (tx, rx) = oneshot::channel();
        // A plain thread, not spawn_blocking: a child that never answers must not hold up the
        // runtime's shutdown. The read ends when the child dies (the pipe closes).
        std::thread::spawn(move || {
            let mut line = String::new();
            let read = BufReader::new(stdout).read_line(&mut line).map(|_| line);
            let _ = tx.send(read);
        });
        if self.nodes.len() <= index {
            self.nodes.resize_with(index + 1, || None);
        }
        // Provisional id until the LISTENING line gives the real one; `finish_spawn` fixes it.
        self.nodes[index] = Some(Node {
            id: NodeId::new(bind, 0),
            process,
        });
        Ok((index, rx))
    }

    /// Waits for node `index`'s `LISTENING <addr> <generation>` line and records its id.
    pub async fn finish_spawn(
        &mut self,
        index: usize,
        line: oneshot::Receiver<io::Result<String>>,
    ) -> Result<NodeId, DemoError> {
        let read = tokio::time::timeout(LISTENING_TIMEOUT, line).await;
        let parsed = match read {
            Ok(Ok(Ok(line))) => parse_listening(&line),
            Ok(Ok(Err(e))) => Err(format!("cannot read its stdout: {e}")),
            Ok(Err(_)) => Err("its stdout reader vanished".to_owned()),
            Err(_) => Err(format!(
                "no LISTENING line within {}",
                secs(LISTENING_TIMEOUT)
            )),
        };
        let log = self.log_path(index);
        match (parsed, self.nodes.get_mut(index).and_then(Option::as_mut)) {
            (Ok(id), Some(node)) => {
                node.id = id;
                Ok(id)
            }
            (Err(why), _) => {
                self.kill(index)?;
                fail(format!(
                    "node {index} did not start: {why} (see {})",
                    log.display()
                ))
            }
            (Ok(_), None) => fail(format!("node {index} vanished while starting")),
        }
    }

    /// SIGKILLs node `index` and waits until it is reaped (its ports are free again).
    pub fn kill(&mut self, index: usize) -> Result<(), DemoError> {
        match self.nodes.get_mut(index).and_then(Option::take) {
            Some(node) => {
                stop(node.process);
                Ok(())
            }
            None => fail(format!("node {index} is not running")),
        }
    }

    /// Fails, naming the node and its log, if a node that should run has exited.
    pub fn check_alive(&mut self) -> Result<(), DemoError> {
        for index in 0..self.nodes.len() {
            let exited = match self.nodes[index].as_mut() {
                Some(node) => node.process.try_wait().ok().flatten(),
                None => None,
            };
            if let Some(status) = exited {
                self.nodes[index] = None;
                return fail(format!(
                    "node {index} exited unexpectedly ({status}); see {}",
                    self.log_path(index).display()
                ));
            }
        }
        Ok(())
    }

    /// Waits until node `index` exits by itself, and checks that it exited with status 0.
    pub async fn wait_exit_success(
        &mut self,
        index: usize,
        timeout: Duration,
    ) -> Result<(), DemoError> {
        let t0 = Instant::now();
        loop {
            let Some(node) = self.nodes.get_mut(index).and_then(Option::as_mut) else {
                return fail(format!("node {index} is not running"));
            };
            match node.process.try_wait() {
                Ok(Some(status)) => {
                    self.nodes[index] = None;
                    if status.success() {
                        return Ok(());
                    }
                    return fail(format!("node {index} exited with {status}"));
                }
                Ok(None) if t0.elapsed() >= timeout => {
                    return fail(format!(
                        "node {index} did not exit within {}",
                        secs(timeout)
                    ));
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => return fail(format!("cannot wait for node {index}: {e}")),
            }
        }
    }
}

fn open_log(path: &Path) -> Result<fs::File, DemoError> {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| DemoError(format!("cannot open {}: {e}", path.display())))
}

/// 127.0.0.2 for node 0, 127.0.0.3 for node 1, and so on, port 0.
pub fn node_ip(index: usize) -> SocketAddr {
    let host = u8::try_from(index + 2).unwrap_or(u8::MAX);
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, host), 0))
}

/// A port on `ip` free for both UDP and TCP right now (a Raft voter needs a fixed address,
/// since the voter list names it before it starts).
pub fn free_addr(ip: SocketAddr) -> Result<SocketAddr, DemoError> {
    if !ip.ip().is_loopback() {
        return fail(format!("refusing to bind {ip}: the demo stays on loopback"));
    }
    for _ in 0..FREE_PORT_TRIES {
        let udp = UdpSocket::bind(SocketAddr::new(ip.ip(), 0))
            .map_err(|e| DemoError(format!("cannot bind a probe socket on {}: {e}", ip.ip())))?;
        let addr = udp
            .local_addr()
            .map_err(|e| DemoError(format!("probe socket address: {e}")))?;
        if TcpListener::bind(addr).is_ok() {
            return Ok(addr);
        }
    }
    fail(format!("no port free for UDP and TCP on {}", ip.ip()))
}

/// Parses `LISTENING <addr> <generation>`.
pub fn parse_listening(line: &str) -> Result<NodeId, String> {
    let mut words = line.split_whitespace();
    match (words.next(), words.next(), words.next(), words.next()) {
        (Some("LISTENING"), Some(addr), Some(generation), None) => {
            let addr: SocketAddr = addr
                .parse()
                .map_err(|e| format!("bad address {addr:?}: {e}"))?;
            let generation: u64 = generation
                .parse()
                .map_err(|e| format!("bad generation {generation:?}: {e}"))?;
            Ok(NodeId::new(addr, generation))
        }
        _ => Err(format!(
            "expected `LISTENING <addr> <generation>`, got {line:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_lines_parse_and_garbage_does_not() {
        assert_eq!(
            parse_listening("LISTENING 127.0.0.2:40312 1764166000123\n"),
            Ok(NodeId::new(
                "127.0.0.2:40312".parse().expect("addr"),
                1_764_166_000_123
            ))
        );
        assert!(parse_listening("").is_err());
        assert!(parse_listening("LISTENING 127.0.0.2:40312").is_err());
        assert!(parse_listening("LISTENING nowhere 12").is_err());
        assert!(parse_listening("LISTENING 127.0.0.2:1 12 extra").is_err());
    }

    #[test]
    fn demo_addresses_start_at_127_0_0_2_on_port_0() {
        assert_eq!(node_ip(0), "127.0.0.2:0".parse().expect("addr"));
        assert_eq!(node_ip(9), "127.0.0.11:0".parse().expect("addr"));
        assert!(node_ip(249).ip().is_loopback());
    }

    #[test]
    fn free_addresses_stay_on_loopback() {
        let addr = free_addr(node_ip(0)).expect("a free port on 127.0.0.2");
        assert_eq!(addr.ip(), node_ip(0).ip());
        assert_ne!(addr.port(), 0);
        assert!(free_addr("10.0.0.1:0".parse().expect("addr")).is_err());
    }
}
