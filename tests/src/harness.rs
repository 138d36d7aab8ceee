//! Process harness: real `idunno-node` processes on loopback, driven through the real client.
//!
//! Owns: finding (or building) the `idunno-node` binary ([`node_binary`]), starting nodes on
//! 127.0.0.x with port 0 and reading their `LISTENING <addr> <generation>` line with a deadline
//! ([`Cluster::start`]), running client commands with a deadline and parsing their JSON
//! ([`list_mem`], [`list_self`], [`leave`]), polling until a condition holds ([`eventually`]), and
//! the [`Cluster`] guard that SIGKILLs every child it started when dropped, also while a failing
//! test unwinds (and then prints each node's log tail). Every cluster gets a fresh cluster key
//! (`IDUNNO_CLUSTER_KEY`), so real-process tests run authenticated membership and sealed TCP;
//! [`client`] proves the key of the cluster that started the node it asks ([`client_with`]
//! picks another credential, or none).
//!
//! The CLI contract it relies on:
//! - `idunno-node start --bind ADDR [--join ADDR,..] [--data-dir DIR]` prints exactly one stdout
//!   line `LISTENING <addr> <generation>` once bound, logs to stderr, runs until SIGTERM/SIGINT or
//!   a completed `leave` (exit 0).
//! - `idunno-node client --node ADDR list_mem --json`: a JSON array of
//!   `{"id":"addr#gen","addr","generation","incarnation","state"}`.
//! - `idunno-node client --node ADDR list_self --json`: `{"id","addr","generation","incarnation"}`.
//! - `idunno-node client --node ADDR leave`.
//! - `idunno-node client --node ADDR leader --json`: `{"id":N|null,"addr":"ADDR"|null,"term":T}`.
//! - `idunno-node client --node ADDR kv-put KEY VALUE --json`: `{"key","index"}`.
//! - `idunno-node client --node ADDR kv-get KEY --json`: `{"key","value":"V"|null}`.
//! - `idunno-node client --node ADDR failed --json`: `["addr#generation", ...]`.
//! - `idunno-node client --node ADDR put LOCAL NAME --json`:
//!   `{"name","version","size","hash","replicas":["addr#generation",..]}`.
//! - `idunno-node client --node ADDR get NAME LOCAL --json`:
//!   `{"name","version","size","hash","served_by","reported":["addr",..]}`.
//! - `idunno-node client --node ADDR ls NAME --json`: `{"name","version","size","hash","replicas"}`.
//! - `idunno-node client --node ADDR submit|jobs|c1|c2|c3|c4|c5|cancel .. --json`: the JSON
//!   shapes listed in `runtime/src/jobs/cli.rs` ([`client_json`]).
//!
//! Must never: bind or contact anything outside 127.0.0.0/8, wait without a deadline, or outlive
//! a test with a child still running (short of the test runner itself being SIGKILLed).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// Environment variable naming the `idunno-node` binary to test; overrides every other lookup.
pub const NODE_BIN_ENV: &str = "IDUNNO_NODE_BIN";
/// Environment variable scaling every harness deadline (a float, default 1), for slow machines.
pub const PATIENCE_ENV: &str = "IDUNNO_TEST_PATIENCE";

/// How long a node may take to print its `LISTENING` line.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one client command may take.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
/// Default patience for cluster-level conditions: generous, because tests assert behaviour and
/// not speed (detection time is measured by the sim benchmarks, not here).
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between two polls of [`eventually`].
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// `base` scaled by [`PATIENCE_ENV`].
pub fn patience(base: Duration) -> Duration {
    let scale = std::env::var(PATIENCE_ENV)
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(1.0);
    base.mul_f64(scale)
}

/// Polls `probe` every [`POLL_INTERVAL`] until it returns `Ok`, for at most `timeout` (scaled by
/// [`PATIENCE_ENV`]). Panics with `what` and the last failure when the deadline passes.
pub fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + patience(timeout);
    let mut attempts: u64 = 0;
    loop {
        attempts += 1;
        match probe() {
            Ok(value) => return value,
            Err(last) => {
                if Instant::now() >= deadline {
                    panic!(
                        "condition never held: {what}\n  after {attempts} attempts over {:?}; \
                         last failure: {last}",
                        patience(timeout)
                    );
                }
            }
        }
        thread::sleep(POLL_INTERVAL);
    }
}

// ----- the binary -----

/// The `idunno-node` binary: [`NODE_BIN_ENV`] if set; else the one next to the test executable
/// (`target/<profile>/idunno-node`, with a warning when runtime or core sources are newer);
/// else built with `$CARGO build -p idunno-runtime --bin idunno-node` in the same profile.
/// Building from inside `cargo test` works with cargo 1.95 (it does not hold the build lock
/// while tests run); should a cargo hold it, the build is stopped at cargo's "Blocking waiting
/// for file lock" message with instructions instead of waiting forever.
pub fn node_binary() -> &'static Path {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BINARY.get_or_init(locate_node_binary) {
        Ok(path) => path,
        Err(message) => panic!("{message}"),
    }
}

fn locate_node_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(NODE_BIN_ENV) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("{NODE_BIN_ENV}={} is not a file", path.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    // target/<profile>/deps/<test-exe> -> target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("cannot find the profile dir above {}", exe.display()))?;
    let candidate = profile_dir.join(format!("idunno-node{}", std::env::consts::EXE_SUFFIX));
    if candidate.is_file() {
        warn_if_stale(&candidate);
        return Ok(candidate);
    }
    build_node_binary(profile_dir)?;
    if candidate.is_file() {
        Ok(candidate)
    } else {
        Err(format!(
            "built idunno-node but it is not at {}; set {NODE_BIN_ENV}",
            candidate.display()
        ))
    }
}

/// Warns (on stderr) when a source file of the node is newer than the binary found next to the
/// tests: `cargo test -p idunno-tests` does not rebuild `idunno-node`.
fn warn_if_stale(binary: &Path) {
    let Ok(built) = fs::metadata(binary).and_then(|m| m.modified()) else {
        return;
    };
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut newer = Vec::new();
    for dir in ["runtime/src", "core/src"] {
        newest_under(&workspace.join(dir), built, &mut newer, 64);
    }
    if let Some(file) = newer.first() {
        eprintln!(
            "idunno-tests: WARNING: {} is older than {}; rebuild it with `cargo build -p \
             idunno-runtime --bin idunno-node` (or run `cargo test` at the workspace root)",
            binary.display(),
            file.display()
        );
    }
}

/// Collects files under `dir` modified after `than` (at most `limit` directory levels deep).
fn newest_under(dir: &Path, than: std::time::SystemTime, out: &mut Vec<PathBuf>, limit: u32) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() && limit > 0 {
            newest_under(&path, than, out, limit - 1);
        } else if entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|m| m > than)
        {
            out.push(path);
        }
    }
}

/// Cargo's message when another cargo holds the build directory lock; building would then wait
/// for it (forever, should that cargo be our own parent `cargo test`).
const CARGO_LOCK_MESSAGE: &str = "Blocking waiting for file lock";

fn build_node_binary(profile_dir: &Path) -> Result<(), String> {
    let how_to_fix = format!(
        "build it first with `cargo build -p idunno-runtime --bin idunno-node` (same profile \
         as the tests), run `cargo test` at the workspace root (which builds it), or point \
         {NODE_BIN_ENV} at a binary"
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_owned(),
        Some(other) => other.to_owned(),
    };
    eprintln!("idunno-tests: idunno-node not found; building it (profile {profile})");
    let mut child = Command::new(cargo)
        .args(["build", "-p", "idunno-runtime", "--bin", "idunno-node"])
        .args(["--profile", &profile])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run cargo ({e}); {how_to_fix}"))?;
    let stderr = child.stderr.take().ok_or("cargo stderr not captured")?;
    let (lines_tx, lines_rx) = mpsc::channel::<String>();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let status = loop {
        match lines_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                if line.contains(CARGO_LOCK_MESSAGE) {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "idunno-node is missing and cannot be built from inside `cargo test` \
                         (another cargo holds the build directory lock); {how_to_fix}"
                    ));
                }
                log.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break child.wait(),
        }
    };
    let _ = reader.join();
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!(
            "building idunno-node failed ({s}):\n{}\n{how_to_fix}",
            tail(&log.join("\n"), 40)
        )),
        Err(e) => Err(format!("waiting for cargo: {e}; {how_to_fix}")),
    }
}

// ----- client -----

/// A member's state as the client prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Answering probes.
    Alive,
    /// Failed a probe, not yet declared dead.
    Suspect,
    /// Declared failed.
    Dead,
    /// Left gracefully.
    Left,
}

impl State {
    /// Alive or suspect: still part of the cluster.
    pub fn is_live(self) -> bool {
        matches!(self, State::Alive | State::Suspect)
    }
}

/// One entry of `list_mem --json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MemberInfo {
    /// `addr#generation`.
    pub id: String,
    /// The member's address.
    pub addr: SocketAddr,
    /// Its generation.
    pub generation: u64,
    /// Highest incarnation seen.
    pub incarnation: u64,
    /// Its state in the answering node's view.
    pub state: State,
}

/// The answer of `list_self --json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SelfInfo {
    /// `addr#generation`.
    pub id: String,
    /// The node's address.
    pub addr: SocketAddr,
    /// Its generation.
    pub generation: u64,
    /// Its incarnation.
    pub incarnation: u64,
}

/// The id the contract gives a member: `addr#generation`.
pub fn node_id(addr: SocketAddr, generation: u64) -> String {
    format!("{addr}#{generation}")
}

/// A node's answer to `list_mem`, with lookups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View(pub Vec<MemberInfo>);

impl View {
    /// The state of `addr#generation`, if listed.
    pub fn state_of(&self, addr: SocketAddr, generation: u64) -> Option<State> {
        self.0
            .iter()
            .find(|m| m.addr == addr && m.generation == generation)
            .map(|m| m.state)
    }

    /// Ids of the members in state alive, sorted.
    pub fn alive(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .0
            .iter()
            .filter(|m| m.state == State::Alive)
            .map(|m| m.id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Checks the listing against the contract: every id is `addr#generation`, ids are unique.
    pub fn check_well_formed(&self) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for m in &self.0 {
            if m.id != node_id(m.addr, m.generation) {
                return Err(format!("member id {} is not addr#generation", m.id));
            }
            if !seen.insert(m.id.clone()) {
                return Err(format!("member {} listed twice", m.id));
            }
        }
        Ok(())
    }
}

/// The output of a finished client command.
#[derive(Debug, Clone)]
pub struct ClientOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything it printed on stdout.
    pub stdout: String,
    /// Everything it printed on stderr.
    pub stderr: String,
}

/// The cluster key of every node a [`Cluster`] of this process started, by address, so that
/// [`client`] proves the key of the node it asks.
fn node_keys() -> &'static Mutex<BTreeMap<SocketAddr, String>> {
    static KEYS: OnceLock<Mutex<BTreeMap<SocketAddr, String>>> = OnceLock::new();
    KEYS.get_or_init(Mutex::default)
}

/// The environment variables that give a client a credential.
const CREDENTIAL_ENVS: [&str; 3] = [
    "IDUNNO_CLUSTER_KEY",
    "IDUNNO_CLUSTER_KEY_FILE",
    "IDUNNO_CLIENT_TOKEN",
];

/// Runs `idunno-node client --node NODE ARGS..` with a [`CLIENT_TIMEOUT`] deadline (the client
/// is killed past it), proving the key of the cluster that started `node` (as an operator's
/// client holding the key file would). `Err` when it could not run or ran out of time; a
/// non-zero exit is `Ok`.
pub fn client(node: SocketAddr, args: &[&str]) -> Result<ClientOutput, String> {
    let key = node_keys()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&node)
        .cloned();
    match key {
        Some(key) => client_with(node, args, Some(("IDUNNO_CLUSTER_KEY", &key))),
        None => client_with(node, args, None),
    }
}

/// The cluster key of the cluster that started `node`, if a harness cluster did.
pub fn key_of(node: SocketAddr) -> Option<String> {
    node_keys()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&node)
        .cloned()
}

/// [`client`] with exactly one credential variable set (`None`: no credential at all).
pub fn client_with(
    node: SocketAddr,
    args: &[&str],
    credential: Option<(&str, &str)>,
) -> Result<ClientOutput, String> {
    let mut command = Command::new(node_binary());
    for name in CREDENTIAL_ENVS {
        command.env_remove(name);
    }
    if let Some((name, value)) = credential {
        command.env(name, value);
    }
    let mut child = command
        .arg("client")
        .args(["--node", &node.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run the client: {e}"))?;
    let stdout = read_all_in_background(child.stdout.take());
    let stderr = read_all_in_background(child.stderr.take());
    let deadline = Instant::now() + patience(CLIENT_TIMEOUT);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("client {args:?} against {node} timed out"));
            }
            Err(e) => return Err(format!("waiting for the client: {e}")),
        }
    };
    Ok(ClientOutput {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn read_all_in_background(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn client_ok(node: SocketAddr, args: &[&str]) -> Result<String, String> {
    let out = client(node, args)?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "client {args:?} against {node} failed ({}): {}",
            out.status,
            out.stderr.trim()
        ))
    }
}

/// `list_mem --json` against `node`, parsed and checked for well-formedness.
pub fn list_mem(node: SocketAddr) -> Result<View, String> {
    let stdout = client_ok(node, &["list_mem", "--json"])?;
    let members: Vec<MemberInfo> = serde_json::from_str(stdout.trim())
        .map_err(|e| format!("list_mem from {node} is not the contract's JSON ({e}): {stdout}"))?;
    let view = View(members);
    view.check_well_formed()?;
    Ok(view)
}

/// `list_self --json` against `node`, parsed.
pub fn list_self(node: SocketAddr) -> Result<SelfInfo, String> {
    let stdout = client_ok(node, &["list_self", "--json"])?;
    let me: SelfInfo = serde_json::from_str(stdout.trim())
        .map_err(|e| format!("list_self from {node} is not the contract's JSON ({e}): {stdout}"))?;
    if me.id != node_id(me.addr, me.generation) {
        return Err(format!("list_self id {} is not addr#generation", me.id));
    }
    Ok(me)
}

/// `leave` against `node`.
pub fn leave(node: SocketAddr) -> Result<(), String> {
    client_ok(node, &["leave"]).map(|_| ())
}

/// What `leader --json` says.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LeaderInfo {
    /// The leader's voter id, if known.
    pub id: Option<u64>,
    /// The leader's node address, if known.
    pub addr: Option<SocketAddr>,
    /// The answering voter's term.
    pub term: u64,
}

/// `leader --json` against `node`.
pub fn leader(node: SocketAddr) -> Result<LeaderInfo, String> {
    let stdout = client_ok(node, &["leader", "--json"])?;
    serde_json::from_str(stdout.trim())
        .map_err(|e| format!("leader from {node} is not the contract's JSON ({e}): {stdout}"))
}

/// `kv-put KEY VALUE --json` against `node`: the log index the put committed at.
pub fn kv_put(node: SocketAddr, key: &str, value: &str) -> Result<u64, String> {
    let stdout = client_ok(
        node,
        &["--timeout-ms", "10000", "kv-put", key, value, "--json"],
    )?;
    let answer: serde_json::Value = serde_json::from_str(stdout.trim())
        .map_err(|e| format!("kv-put from {node} is not JSON ({e}): {stdout}"))?;
    answer["index"]
        .as_u64()
        .ok_or_else(|| format!("kv-put from {node} has no index: {stdout}"))
}

/// `kv-get KEY --json` against `node`: the value, `None` when absent.
pub fn kv_get(node: SocketAddr, key: &str) -> Result<Option<String>, String> {
    let stdout = client_ok(node, &["--timeout-ms", "10000", "kv-get", key, "--json"])?;
    let answer: serde_json::Value = serde_json::from_str(stdout.trim())
        .map_err(|e| format!("kv-get from {node} is not JSON ({e}): {stdout}"))?;
    match &answer["value"] {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(value) => Ok(Some(value.clone())),
        other => Err(format!("kv-get from {node}: bad value {other}")),
    }
}

/// `failed --json` against `node`: the node ids (`addr#generation`) the replicated state has
/// recorded as failed, oldest first.
pub fn failed_nodes(node: SocketAddr) -> Result<Vec<String>, String> {
    let stdout = client_ok(node, &["--timeout-ms", "10000", "failed", "--json"])?;
    serde_json::from_str(stdout.trim())
        .map_err(|e| format!("failed from {node} is not a JSON array of ids ({e}): {stdout}"))
}

/// `put LOCAL NAME --json` against `node`: the version number and the replicas' ids.
pub fn dfs_put(node: SocketAddr, local: &Path, name: &str) -> Result<(u64, Vec<String>), String> {
    let local = local.to_string_lossy();
    let stdout = client_ok(
        node,
        &["--timeout-ms", "10000", "put", &local, name, "--json"],
    )?;
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .map_err(|e| format!("put answer is not JSON ({e}): {stdout}"))?;
    let version = v["version"]
        .as_u64()
        .ok_or(format!("no version in {stdout}"))?;
    let replicas = string_list(&v["replicas"]);
    Ok((version, replicas))
}

/// `get NAME LOCAL --json` against `node`: the version fetched and the replicas reported bad.
pub fn dfs_get(node: SocketAddr, name: &str, local: &Path) -> Result<(u64, Vec<String>), String> {
    let local = local.to_string_lossy();
    let stdout = client_ok(
        node,
        &["--timeout-ms", "10000", "get", name, &local, "--json"],
    )?;
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .map_err(|e| format!("get answer is not JSON ({e}): {stdout}"))?;
    let version = v["version"]
        .as_u64()
        .ok_or(format!("no version in {stdout}"))?;
    Ok((version, string_list(&v["reported"])))
}

/// `ls NAME --json` against `node`: the newest version, its hash and its replicas' ids.
pub fn dfs_ls(node: SocketAddr, name: &str) -> Result<(u64, String, Vec<String>), String> {
    let stdout = client_ok(node, &["--timeout-ms", "10000", "ls", name, "--json"])?;
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .map_err(|e| format!("ls answer is not JSON ({e}): {stdout}"))?;
    let version = v["version"]
        .as_u64()
        .ok_or(format!("no version in {stdout}"))?;
    let hash = v["hash"].as_str().unwrap_or_default().to_owned();
    Ok((version, hash, string_list(&v["replicas"])))
}

fn string_list(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `client ARGS.. --json` against `node` (a scheduler command: `submit`, `jobs`, `c1`..`c5`,
/// `cancel`), its JSON answer; a non-zero exit is an `Err` with the client's stderr.
pub fn client_json(node: SocketAddr, args: &[&str]) -> Result<serde_json::Value, String> {
    let mut all = vec!["--timeout-ms", "10000"];
    all.extend_from_slice(args);
    all.push("--json");
    let stdout = client_ok(node, &all)?;
    serde_json::from_str(stdout.trim())
        .map_err(|e| format!("{args:?} from {node} is not JSON ({e}): {stdout}"))
}

/// The loopback address `127.0.0.last` (each test file owns a range of them).
pub fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A port free for both UDP and TCP on `ip` right now (nodes need fixed addresses, since the
/// voter list names them before they start).
pub fn free_addr(ip: IpAddr) -> SocketAddr {
    for _ in 0..64 {
        let udp = UdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind a probe socket");
        let addr = udp.local_addr().expect("probe address");
        if TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free port on {ip}");
}

// ----- nodes -----

/// One `idunno-node start` process. Killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Node {
    child: Child,
    exited: Option<ExitStatus>,
    /// The address it bound (the real port, never 0).
    pub addr: SocketAddr,
    /// The generation it announced.
    pub generation: u64,
    /// Its stderr log file.
    pub log: PathBuf,
    /// Stdout lines after the `LISTENING` line (the contract says there are none).
    pub extra_stdout: Arc<Mutex<Vec<String>>>,
}

impl Node {
    /// Its id, `addr#generation`.
    pub fn id(&self) -> String {
        node_id(self.addr, self.generation)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILLs the process (if still running) and reaps it.
    pub fn kill(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }

    /// The exit status, if it has exited (reaps it).
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// The last `lines` lines of its stderr log.
    pub fn log_tail(&self, lines: usize) -> String {
        fs::read_to_string(&self.log)
            .map(|s| tail(&s, lines))
            .unwrap_or_else(|e| format!("(no log at {}: {e})", self.log.display()))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What to start: `--bind`, `--join` and whether to pass a `--data-dir`.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Bind address; port 0 picks a free one.
    pub bind: SocketAddr,
    /// Seeds to join through.
    pub join: Vec<SocketAddr>,
    /// Pass `--data-dir <scratch>/<label>` (kept across restarts of the same label).
    pub data_dir: bool,
    /// A name for logs and the data dir.
    pub label: String,
    /// Further `start` arguments (for example `--raft-id`, `--voters`).
    pub extra_args: Vec<String>,
}

impl NodeSpec {
    /// Bind `ip` on port 0, no seeds, with a data dir, labelled by the ip.
    pub fn on(ip: IpAddr) -> Self {
        assert!(
            ip.is_loopback(),
            "tests only ever bind 127.0.0.0/8, not {ip}"
        );
        NodeSpec {
            bind: SocketAddr::new(ip, 0),
            join: Vec::new(),
            data_dir: true,
            label: ip.to_string(),
            extra_args: Vec::new(),
        }
    }

    /// Pass these further arguments to `start`.
    pub fn args(mut self, args: &[String]) -> Self {
        self.extra_args.extend(args.iter().cloned());
        self
    }

    /// Join through these seeds.
    pub fn join(mut self, seeds: &[SocketAddr]) -> Self {
        self.join = seeds.to_vec();
        self
    }

    /// Bind exactly this address (for restarts at the same port).
    pub fn at(mut self, addr: SocketAddr) -> Self {
        assert!(addr.ip().is_loopback(), "tests only ever bind 127.0.0.0/8");
        self.bind = addr;
        self
    }
}

/// Where a Raft cluster's nodes go on loopback: voter `i` (0-based, Raft id `i + 1`) on
/// `127.0.0.<first + i>` at a free port, and the `--voters` list naming them all.
#[derive(Debug, Clone)]
pub struct RaftLayout {
    /// Every voter's address, by index (id - 1).
    pub voters: Vec<SocketAddr>,
    /// The `--voters` argument: `1=ADDR,2=ADDR,...`.
    pub voters_arg: String,
}

impl RaftLayout {
    /// `voters` voters on `127.0.0.<first>` onwards.
    pub fn new(first: u8, voters: u8) -> Self {
        let voters: Vec<SocketAddr> = (0..voters).map(|i| free_addr(ip(first + i))).collect();
        let voters_arg = voters
            .iter()
            .enumerate()
            .map(|(i, addr)| format!("{}={addr}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        RaftLayout { voters, voters_arg }
    }

    /// Voter `i`'s spec: its address, `--raft-id i+1`, the voter set, joining the other voters
    /// (voter 0 joins nobody: it is the one the others find first).
    pub fn voter(&self, i: usize) -> NodeSpec {
        let addr = self.voters[i];
        let others: Vec<SocketAddr> = self.voters.iter().copied().filter(|&a| a != addr).collect();
        let spec = NodeSpec::on(addr.ip()).at(addr).args(&[
            "--raft-id".to_owned(),
            (i + 1).to_string(),
            "--voters".to_owned(),
            self.voters_arg.clone(),
        ]);
        if i == 0 { spec } else { spec.join(&others) }
    }

    /// A non-voting member's spec on `ip`: the voter set, joining through the voters.
    pub fn member(&self, ip: IpAddr) -> NodeSpec {
        NodeSpec::on(ip)
            .join(&self.voters)
            .args(&["--voters".to_owned(), self.voters_arg.clone()])
    }

    /// Starts every voter (with `extra` arguments) and `members` members on the addresses after
    /// the voters'; returns each node's address and its index in `cluster`, voters first.
    pub fn start(
        &self,
        cluster: &mut Cluster,
        members: u8,
        extra: &[String],
    ) -> (Vec<SocketAddr>, Vec<usize>) {
        let mut all = Vec::new();
        let mut index_of = Vec::new();
        for i in 0..self.voters.len() {
            index_of.push(cluster.start(&self.voter(i).args(extra)));
            all.push(self.voters[i]);
        }
        let first_member = self.voters.last().map_or(1, |a| match a.ip() {
            IpAddr::V4(v4) => v4.octets()[3].saturating_add(1),
            IpAddr::V6(_) => 1,
        });
        for m in 0..members {
            let index = cluster.start(&self.member(ip(first_member + m)).args(extra));
            index_of.push(index);
            all.push(cluster.node(index).addr);
        }
        (all, index_of)
    }
}

/// The guard over every node a test starts: kills them all when dropped, and when the test is
/// panicking, prints each node's log tail first so the failure explains itself.
#[derive(Debug)]
pub struct Cluster {
    name: String,
    scratch: PathBuf,
    nodes: Vec<Node>,
    starts: usize,
    /// The cluster key every node gets (64 hex digits in `IDUNNO_CLUSTER_KEY`).
    key: String,
}

/// A fresh cluster key as 64 hex digits (test-grade randomness: std's per-process hash keys).
fn fresh_key() -> String {
    use std::hash::{BuildHasher, Hasher};
    (0..4u8)
        .map(|i| {
            let mut hasher = std::hash::RandomState::new().build_hasher();
            hasher.write_u8(i);
            format!("{:016x}", hasher.finish())
        })
        .collect()
}

impl Cluster {
    /// An empty cluster whose logs and data dirs go under a fresh scratch directory.
    pub fn new(name: &str) -> Self {
        let scratch =
            std::env::temp_dir().join(format!("idunno-tests-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&scratch);
        fs::create_dir_all(&scratch)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", scratch.display()));
        Cluster {
            name: name.to_owned(),
            scratch,
            nodes: Vec::new(),
            starts: 0,
            key: fresh_key(),
        }
    }

    /// The cluster key (64 hex digits) every node of this cluster gets.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Starts a node and waits (at most [`LISTEN_TIMEOUT`]) for its `LISTENING` line; returns
    /// its index in this cluster. Panics with the node's log if it does not come up.
    pub fn start(&mut self, spec: &NodeSpec) -> usize {
        match self.try_start(spec) {
            Ok(node) => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
            Err(e) => panic!("[{}] node {} did not start: {e}", self.name, spec.label),
        }
    }

    fn try_start(&mut self, spec: &NodeSpec) -> Result<Node, String> {
        assert!(
            spec.bind.ip().is_loopback(),
            "tests only ever bind 127.0.0.0/8"
        );
        self.starts += 1;
        let log = self
            .scratch
            .join(format!("{}-{}.log", spec.label, self.starts));
        let log_file = File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let mut command = Command::new(node_binary());
        command
            .args(["start", "--bind", &spec.bind.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file);
        if !spec.join.is_empty() {
            let seeds: Vec<String> = spec.join.iter().map(SocketAddr::to_string).collect();
            command.args(["--join", &seeds.join(",")]);
        }
        if spec.data_dir {
            let dir = self.scratch.join(format!("data-{}", spec.label));
            command.arg("--data-dir").arg(dir);
        }
        command.args(&spec.extra_args);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        // Every test cluster is authenticated, as a production one should be.
        command.env("IDUNNO_CLUSTER_KEY", &self.key);
        command.env_remove("IDUNNO_CLUSTER_KEY_FILE");
        command.env_remove("IDUNNO_CLIENT_TOKEN");
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot spawn {}: {e}", node_binary().display()))?;
        let stdout = child.stdout.take().ok_or("stdout not captured")?;
        let extra_stdout = Arc::new(Mutex::new(Vec::new()));
        let listening = watch_stdout(stdout, Arc::clone(&extra_stdout));
        let wait = patience(LISTEN_TIMEOUT);
        let outcome = match listening.recv_timeout(wait) {
            Ok(line) => parse_listening(&line),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(format!("no LISTENING line in {wait:?}")),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err("stdout closed before a LISTENING line".to_owned())
            }
        };
        let mut node = Node {
            child,
            exited: None,
            addr: spec.bind,
            generation: 0,
            log,
            extra_stdout,
        };
        match outcome {
            Ok((addr, generation)) => {
                if addr.ip() != spec.bind.ip()
                    || (spec.bind.port() != 0 && addr.port() != spec.bind.port())
                    || addr.port() == 0
                {
                    return Err(format!("bound {addr}, asked for {}", spec.bind));
                }
                node.addr = addr;
                node.generation = generation;
                node_keys()
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(addr, self.key.clone());
                Ok(node)
            }
            Err(e) => {
                node.kill();
                Err(format!(
                    "{e} (exit: {:?})\n--- stderr ---\n{}",
                    node.exited,
                    node.log_tail(40)
                ))
            }
        }
    }

    /// The node at `index`.
    pub fn node(&self, index: usize) -> &Node {
        &self.nodes[index]
    }

    /// The node at `index`, mutably.
    pub fn node_mut(&mut self, index: usize) -> &mut Node {
        &mut self.nodes[index]
    }

    /// Where logs and data dirs go.
    pub fn scratch(&self) -> &Path {
        &self.scratch
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        if thread::panicking() {
            for node in &self.nodes {
                eprintln!(
                    "--- [{}] node {} (pid {}) exit {:?}, log {} ---\n{}",
                    self.name,
                    node.id(),
                    node.pid(),
                    node.exited,
                    node.log.display(),
                    node.log_tail(30)
                );
            }
            eprintln!("[{}] logs kept in {}", self.name, self.scratch.display());
        } else {
            let _ = fs::remove_dir_all(&self.scratch);
        }
    }
}

/// Reads the child's stdout on a thread: the first `LISTENING` line goes to the returned
/// channel, every other line into `extra` (the thread ends at EOF, when the child exits).
fn watch_stdout(
    stdout: impl Read + Send + 'static,
    extra: Arc<Mutex<Vec<String>>>,
) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !sent && line.starts_with("LISTENING ") {
                let _ = tx.send(line);
                sent = true;
            } else if let Ok(mut extra) = extra.lock() {
                extra.push(line);
            }
        }
    });
    rx
}

/// Parses `LISTENING <addr> <generation>`.
pub fn parse_listening(line: &str) -> Result<(SocketAddr, u64), String> {
    let mut words = line.split_whitespace();
    match (words.next(), words.next(), words.next(), words.next()) {
        (Some("LISTENING"), Some(addr), Some(generation), None) => {
            let addr = addr
                .parse()
                .map_err(|e| format!("bad address in {line:?}: {e}"))?;
            let generation = generation
                .parse()
                .map_err(|e| format!("bad generation in {line:?}: {e}"))?;
            Ok((addr, generation))
        }
        _ => Err(format!("not a LISTENING line: {line:?}")),
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_listening_line() {
        let (addr, generation) =
            parse_listening("LISTENING 127.0.0.20:4242 17").expect("valid line");
        assert_eq!(addr, "127.0.0.20:4242".parse().expect("addr"));
        assert_eq!(generation, 17);
        assert!(parse_listening("LISTENING 127.0.0.20:4242").is_err());
        assert!(parse_listening("LISTENING 127.0.0.20:4242 x").is_err());
        assert!(parse_listening("LISTENING nowhere 1").is_err());
        assert!(parse_listening("LISTENING 127.0.0.20:1 1 extra").is_err());
    }

    #[test]
    fn parses_the_contract_json() {
        let json = r#"[{"id":"127.0.0.20:5#3","addr":"127.0.0.20:5","generation":3,
                        "incarnation":0,"state":"suspect"}]"#;
        let members: Vec<MemberInfo> = serde_json::from_str(json).expect("contract JSON");
        let view = View(members);
        assert!(view.check_well_formed().is_ok());
        let addr: SocketAddr = "127.0.0.20:5".parse().expect("addr");
        assert_eq!(view.state_of(addr, 3), Some(State::Suspect));
        assert_eq!(view.state_of(addr, 2), None);
        let bad = View(vec![MemberInfo {
            id: "x".into(),
            ..view.0[0].clone()
        }]);
        assert!(bad.check_well_formed().is_err());
    }

    #[test]
    fn eventually_returns_the_first_success_and_panics_past_the_deadline() {
        let mut calls = 0;
        let value = eventually("third time", Duration::from_secs(10), || {
            calls += 1;
            if calls >= 3 {
                Ok(calls)
            } else {
                Err("not yet".into())
            }
        });
        assert_eq!(value, 3);
        let result = std::panic::catch_unwind(|| {
            eventually(
                "never",
                Duration::from_millis(1),
                || -> Result<(), String> { Err("nope".into()) },
            )
        });
        assert!(result.is_err());
    }
}
