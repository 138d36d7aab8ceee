//! `idunno-node demo`: a local cluster on loopback that shows membership converging, detecting
//! a mass failure, a restarted node rejoining as a new generation, and a graceful leave.
//!
//! Owns: the demo's child processes (`idunno-node start`, one per 127.0.0.x address, stderr to a
//! log file each), its steps and their deadlines, and its progress output on stdout.
//! It talks to the nodes only through the control protocol, like any client.
//! Must never: leave a child running on any exit path (errors, panics, Ctrl-C: the [`Cluster`]
//! guard kills and reaps them on drop), or bind outside 127.0.0.0/8.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use idunno_core::membership::{Member, MemberState, NodeId};
use tokio::sync::oneshot;

use crate::auth::ClusterKey;
use crate::cli::DemoArgs;
use crate::control;
use crate::identity::unix_time_ms;
use crate::node::Signals;
use crate::render;

/// How long a child may take to print its `LISTENING` line.
const LISTENING_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two polls of every node's view.
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// Deadline of one control request during polling.
const POLL_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Survivors given to a restarted node as seeds: one, so the others learn of it by gossip.
const RESTART_SEEDS_MAX: usize = 1;

/// A step failed; the message says which and why.
#[derive(Debug)]
struct DemoError(String);

impl<E: std::fmt::Display> From<E> for DemoError {
    fn from(e: E) -> Self {
        DemoError(e.to_string())
    }
}

fn fail<T>(message: impl Into<String>) -> Result<T, DemoError> {
    Err(DemoError(message.into()))
}

/// Runs the demo; exit code 0 only if every step succeeded.
pub fn run(args: DemoArgs) -> ExitCode {
    let started = Instant::now();
    let root = std::env::temp_dir().join(format!(
        "idunno-demo-{}-{}",
        std::process::id(),
        unix_time_ms()
    ));
    let outcome = crate::node::block_on(async {
        let mut cluster = Cluster::new(root.clone())?;
        let mut signals = Signals::new()?;
        let result = tokio::select! {
            result = steps(&args, &mut cluster, started) => result,
            () = signals.next() => fail("interrupted"),
        };
        say(
            started,
            &format!("stopping all {} node processes", cluster.running()),
        );
        drop(cluster);
        result
    });
    let outcome = match outcome {
        Ok(result) => result,
        Err(e) => Err(DemoError(format!("cannot start the async runtime: {e}"))),
    };
    match outcome {
        Ok(()) => {
            let _ = fs::remove_dir_all(&root);
            say(started, "demo passed: every step succeeded");
            ExitCode::SUCCESS
        }
        Err(DemoError(message)) => {
            eprintln!("demo FAILED: {message}");
            eprintln!("node logs are kept in {}", root.display());
            ExitCode::FAILURE
        }
    }
}

/// Prints one progress line with the time since the demo started.
fn say(started: Instant, line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "[{:7.2}s] {line}", started.elapsed().as_secs_f64());
    let _ = out.flush();
}

/// Prints a block (a table) as is.
fn show(block: &str) {
    let mut out = io::stdout().lock();
    let _ = out.write_all(block.as_bytes());
    let _ = out.flush();
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

fn ids(set: &BTreeSet<NodeId>) -> String {
    set.iter()
        .map(NodeId::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The demo's progress state: when it started, each step's deadline and the timings so far.
struct Progress {
    started: Instant,
    step_timeout: Duration,
    timings: Vec<(&'static str, Duration)>,
}

impl Progress {
    fn say(&self, line: &str) {
        say(self.started, line);
    }
}

async fn steps(args: &DemoArgs, cluster: &mut Cluster, started: Instant) -> Result<(), DemoError> {
    let mut progress = Progress {
        started,
        step_timeout: Duration::from_secs(args.step_timeout_secs),
        timings: Vec::new(),
    };
    let n = usize::from(args.nodes);
    let kill = usize::from(args.kill);
    start_all(&mut progress, cluster, n).await?;
    let mut restarted = None;
    if kill > 0 {
        // Spread over the cluster, the seed first: it has no special role once others joined.
        let victims: Vec<usize> = (0..kill).map(|i| i * n / kill).collect();
        let killed = kill_and_detect(&mut progress, cluster, &victims).await?;
        restarted = Some(restart_one(&mut progress, cluster, &victims, &killed).await?);
    }
    leave_one(&mut progress, cluster, restarted).await?;
    let summary = progress
        .timings
        .iter()
        .map(|(what, took)| format!("{what} {}", secs(*took)))
        .collect::<Vec<_>>()
        .join(", ");
    progress.say(&format!("timings: {summary}"));
    Ok(())
}

/// Step 1: starts `n` nodes (the first is the seed the others join) and waits until every node
/// sees all `n` alive.
async fn start_all(
    progress: &mut Progress,
    cluster: &mut Cluster,
    n: usize,
) -> Result<(), DemoError> {
    progress.say(&format!(
        "starting {n} nodes on 127.0.0.2..=127.0.0.{} (logs in {})",
        n + 1,
        cluster.root.display()
    ));
    let seed = cluster.spawn(0, node_ip(0), &[]).await?;
    progress.say(&format!("seed {seed} listening"));
    let mut pending = Vec::new();
    for index in 1..n {
        pending.push(cluster.start_spawn(index, node_ip(index), &[seed.addr])?);
    }
    for (index, line) in pending {
        cluster.finish_spawn(index, line).await?;
    }
    let everyone = cluster.live_ids();
    progress.say(&format!(
        "{n} nodes listening; waiting until every node sees all {n} alive"
    ));
    let took = wait_for_views(
        &everyone,
        &everyone,
        &BTreeSet::new(),
        progress.step_timeout,
    )
    .await?;
    progress.say(&format!(
        "converged: every node sees all {n} alive after {}",
        secs(took)
    ));
    progress.timings.push(("converge", took));
    show_view(seed.addr).await
}

/// Step 2: SIGKILLs the `victims` at once and waits until every survivor's view drops exactly
/// them. Returns the killed ids, in the order of `victims`.
async fn kill_and_detect(
    progress: &mut Progress,
    cluster: &mut Cluster,
    victims: &[usize],
) -> Result<Vec<NodeId>, DemoError> {
    let victim_ids: Vec<NodeId> = victims.iter().filter_map(|&i| cluster.id(i)).collect();
    let killed: BTreeSet<NodeId> = victim_ids.iter().copied().collect();
    progress.say(&format!(
        "SIGKILL {} nodes at once, the seed included: {}",
        killed.len(),
        ids(&killed)
    ));
    for &index in victims {
        cluster.kill(index)?;
    }
    let survivors = cluster.live_ids();
    let took = wait_for_views(&survivors, &survivors, &killed, progress.step_timeout).await?;
    progress.say(&format!(
        "every survivor ({}) dropped exactly the {} killed nodes after {}",
        survivors.len(),
        killed.len(),
        secs(took)
    ));
    progress.timings.push(("detect", took));
    let observer = cluster
        .any_live_addr()
        .ok_or_else(|| DemoError("no survivor".into()))?;
    show_view(observer).await?;
    Ok(victim_ids)
}

/// Step 3: restarts the first victim at its old address, joining through one survivor, and
/// waits until every node sees the new generation alive and the old one gone. Returns its index.
async fn restart_one(
    progress: &mut Progress,
    cluster: &mut Cluster,
    victims: &[usize],
    killed: &[NodeId],
) -> Result<usize, DemoError> {
    let (Some(&index), Some(&old)) = (victims.first(), killed.first()) else {
        return fail("no killed node to restart");
    };
    let survivors = cluster.live_ids();
    let seeds: Vec<SocketAddr> = survivors
        .iter()
        .take(RESTART_SEEDS_MAX)
        .map(|id| id.addr)
        .collect();
    progress.say(&format!(
        "restarting {} (was {old}), joining through {} survivor(s)",
        old.addr,
        seeds.len()
    ));
    let new = cluster.spawn(index, old.addr, &seeds).await?;
    if new.addr != old.addr || new.generation <= old.generation {
        return fail(format!(
            "restarted node is {new}, expected {} with a newer generation than {}",
            old.addr, old.generation
        ));
    }
    let everyone = cluster.live_ids();
    let gone: BTreeSet<NodeId> = killed.iter().copied().collect();
    let took = wait_for_views(&everyone, &everyone, &gone, progress.step_timeout).await?;
    progress.say(&format!(
        "{new} rejoined: all {} nodes see it alive (and {old} dead) after {}",
        everyone.len(),
        secs(took)
    ));
    progress.timings.push(("rejoin", took));
    let observer = survivors
        .first()
        .map(|id| id.addr)
        .ok_or_else(|| DemoError("no survivor".into()))?;
    show_view(observer).await?;
    Ok(index)
}

/// Step 4: asks one node (not `spare`) to leave, waits until every other node shows it gone,
/// then until it has exited with status 0.
async fn leave_one(
    progress: &mut Progress,
    cluster: &mut Cluster,
    spare: Option<usize>,
) -> Result<(), DemoError> {
    let leaver_index = cluster
        .live_indices()
        .into_iter()
        .rev()
        .find(|&i| Some(i) != spare)
        .ok_or_else(|| DemoError("no node left to make leave".into()))?;
    let leaver = cluster
        .id(leaver_index)
        .ok_or_else(|| DemoError("the leaving node has no id".into()))?;
    progress.say(&format!("asking {leaver} to leave"));
    let t0 = Instant::now();
    control::leave(leaver.addr, control::CLIENT_TIMEOUT).await?;
    let mut remaining = cluster.live_ids();
    remaining.remove(&leaver);
    let gone = BTreeSet::from([leaver]);
    wait_for_views(&remaining, &remaining, &gone, progress.step_timeout).await?;
    let took = t0.elapsed();
    progress.say(&format!(
        "every remaining node ({}) shows {leaver} gone after {}",
        remaining.len(),
        secs(took)
    ));
    progress.timings.push(("leave", took));
    cluster
        .wait_exit_success(leaver_index, progress.step_timeout)
        .await?;
    progress.say(&format!(
        "{leaver} finished its leave and exited with status 0 after {}",
        secs(t0.elapsed())
    ));
    let observer = cluster
        .any_live_addr()
        .ok_or_else(|| DemoError("no node remains".into()))?;
    show_view(observer).await
}

/// 127.0.0.2 for node 0, 127.0.0.3 for node 1, and so on, port 0.
fn node_ip(index: usize) -> SocketAddr {
    let host = u8::try_from(index + 2).unwrap_or(u8::MAX);
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, host), 0))
}

async fn show_view(observer: SocketAddr) -> Result<(), DemoError> {
    let members = control::list_members(observer, control::CLIENT_TIMEOUT).await?;
    let mut block = String::new();
    let _ = writeln!(block, "  membership as seen by {observer}:");
    for line in render::members_table(&members).lines() {
        let _ = writeln!(block, "    {line}");
    }
    show(&block);
    Ok(())
}

/// How one node's view differs from what is expected, or `None` if it matches.
fn view_mismatch(
    members: &[Member],
    alive: &BTreeSet<NodeId>,
    gone: &BTreeSet<NodeId>,
) -> Option<String> {
    let seen_alive: BTreeSet<NodeId> = members
        .iter()
        .filter(|m| m.state == MemberState::Alive)
        .map(|m| m.id)
        .collect();
    let mut problems = Vec::new();
    let missing: BTreeSet<NodeId> = alive.difference(&seen_alive).copied().collect();
    if !missing.is_empty() {
        problems.push(format!("not alive: {}", ids(&missing)));
    }
    let extra: BTreeSet<NodeId> = seen_alive.difference(alive).copied().collect();
    if !extra.is_empty() {
        problems.push(format!("unexpectedly alive: {}", ids(&extra)));
    }
    let still_live: BTreeSet<NodeId> = members
        .iter()
        .filter(|m| gone.contains(&m.id) && m.state.is_live())
        .map(|m| m.id)
        .collect();
    if !still_live.is_empty() {
        problems.push(format!("still live: {}", ids(&still_live)));
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// Polls every node of `observers` until each one's alive set is exactly `alive` and none of
/// `gone` is alive or suspect in it. Returns how long it took.
async fn wait_for_views(
    observers: &BTreeSet<NodeId>,
    alive: &BTreeSet<NodeId>,
    gone: &BTreeSet<NodeId>,
    timeout: Duration,
) -> Result<Duration, DemoError> {
    let t0 = Instant::now();
    loop {
        let mut problems = Vec::new();
        for id in observers {
            match control::list_members(id.addr, POLL_REQUEST_TIMEOUT).await {
                Ok(members) => {
                    if let Some(problem) = view_mismatch(&members, alive, gone) {
                        problems.push(format!("{id}: {problem}"));
                    }
                }
                Err(e) => problems.push(format!("{id}: {e}")),
            }
        }
        if problems.is_empty() {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() >= timeout {
            return fail(format!(
                "views did not converge within {}:\n  {}",
                secs(timeout),
                problems.join("\n  ")
            ));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// One child node process.
struct Node {
    id: NodeId,
    process: Child,
}

/// The demo's child processes; killed and reaped when dropped, on every exit path.
struct Cluster {
    exe: PathBuf,
    root: PathBuf,
    /// Indexed by node number; `None` once killed or exited.
    nodes: Vec<Option<Node>>,
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

/// The demo cluster's key file, inside its root directory.
const KEY_FILE: &str = "cluster.key";

impl Cluster {
    fn new(root: PathBuf) -> Result<Self, DemoError> {
        let exe = std::env::current_exe()
            .map_err(|e| DemoError(format!("cannot find the idunno-node executable: {e}")))?;
        fs::create_dir_all(&root)
            .map_err(|e| DemoError(format!("cannot create {}: {e}", root.display())))?;
        // The demo's cluster is authenticated like a real one: one fresh key for its nodes.
        let key = ClusterKey::generate();
        key.write_new_file(&root.join(KEY_FILE))
            .map_err(|e| DemoError(format!("cannot write the cluster key: {e}")))?;
        // The demo's own calls are a client's: they prove the cluster's client token.
        let _ = crate::auth::tcp::install(crate::auth::TcpAuth::client_of(&key));
        Ok(Cluster {
            exe,
            root,
            nodes: Vec::new(),
        })
    }

    fn id(&self, index: usize) -> Option<NodeId> {
        self.nodes.get(index).and_then(Option::as_ref).map(|n| n.id)
    }

    fn live_indices(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.id(i).is_some())
            .collect()
    }

    fn live_ids(&self) -> BTreeSet<NodeId> {
        self.nodes.iter().flatten().map(|n| n.id).collect()
    }

    fn any_live_addr(&self) -> Option<SocketAddr> {
        self.nodes.iter().flatten().map(|n| n.id.addr).next()
    }

    fn running(&self) -> usize {
        self.nodes.iter().flatten().count()
    }

    /// Starts node `index` and waits for its `LISTENING` line.
    async fn spawn(
        &mut self,
        index: usize,
        bind: SocketAddr,
        join: &[SocketAddr],
    ) -> Result<NodeId, DemoError> {
        let (index, line) = self.start_spawn(index, bind, join)?;
        self.finish_spawn(index, line).await
    }

    /// Starts node `index`; the receiver yields its first stdout line.
    fn start_spawn(
        &mut self,
        index: usize,
        bind: SocketAddr,
        join: &[SocketAddr],
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
        let log_path = self.root.join(format!("node-{index}.log"));
        let log = open_log(&log_path)?;
        let mut command = Command::new(&self.exe);
        command
            .arg("start")
            .arg("--bind")
            .arg(bind.to_string())
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--cluster-key-file")
            .arg(self.root.join(KEY_FILE))
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
    async fn finish_spawn(
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
        let log = self.root.join(format!("node-{index}.log"));
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
    fn kill(&mut self, index: usize) -> Result<(), DemoError> {
        match self.nodes.get_mut(index).and_then(Option::take) {
            Some(node) => {
                stop(node.process);
                Ok(())
            }
            None => fail(format!("node {index} is not running")),
        }
    }

    /// Waits until node `index` exits by itself, and checks that it exited with status 0.
    async fn wait_exit_success(
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
    use idunno_core::time::Instant as CoreInstant;

    fn id(host: u8, generation: u64) -> NodeId {
        NodeId::new(SocketAddr::from(([127, 0, 0, host], 4000)), generation)
    }

    fn member(id: NodeId, state: MemberState) -> Member {
        Member {
            id,
            incarnation: 0,
            state,
            since: CoreInstant::ZERO,
        }
    }

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
    fn a_view_matches_only_with_exactly_the_expected_alive_set() {
        let (a, b, c) = (id(2, 1), id(3, 1), id(4, 1));
        let alive = BTreeSet::from([a, b]);
        let gone = BTreeSet::from([c]);
        let good = [
            member(a, MemberState::Alive),
            member(b, MemberState::Alive),
            member(c, MemberState::Dead),
        ];
        assert_eq!(view_mismatch(&good, &alive, &gone), None);
        let absent = [member(a, MemberState::Alive), member(b, MemberState::Alive)];
        assert_eq!(view_mismatch(&absent, &alive, &gone), None);
        let suspect = [
            member(a, MemberState::Alive),
            member(b, MemberState::Alive),
            member(c, MemberState::Suspect),
        ];
        assert!(view_mismatch(&suspect, &alive, &gone).is_some());
        let short = [
            member(a, MemberState::Alive),
            member(b, MemberState::Suspect),
        ];
        assert!(view_mismatch(&short, &alive, &gone).is_some());
        let extra = [
            member(a, MemberState::Alive),
            member(b, MemberState::Alive),
            member(id(5, 1), MemberState::Alive),
        ];
        assert!(view_mismatch(&extra, &alive, &gone).is_some());
    }

    #[test]
    fn demo_addresses_start_at_127_0_0_2_on_port_0() {
        assert_eq!(node_ip(0), "127.0.0.2:0".parse().expect("addr"));
        assert_eq!(node_ip(9), "127.0.0.11:0".parse().expect("addr"));
        assert!(node_ip(249).ip().is_loopback());
    }
}
