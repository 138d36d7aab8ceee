//! Fault scenarios of the real node over turmoil's simulated network.
//!
//! Owns: ten hosts running the full node (`node::bind` + `BoundNode::run`: membership, Raft
//! with seven voters, the DFS with a data dir per host, the scheduler and noop workers), one
//! client host driving them with the runtime's own client code (`DfsClient`, `jobs::client`,
//! `control`), the faults (a crash of three hosts with the leader among them, a partition of
//! the leader with one follower, packet loss, a restart with the persisted data dir) and the
//! invariants checked after them: a leader commits, every acknowledged file reads back with its
//! bytes, every input of the job has exactly one result, and the membership views of the live
//! hosts agree on exactly the live hosts.
//! Seeds: each scenario runs a fixed seed by default; `SIM_SEED=n` replays one seed,
//! `SIM_SEEDS=N` sweeps `SIM_SEED_BASE..+N` (as in `sim/src/scenario.rs`). A failure prints its
//! seed and the command that replays it.
//! Must never: use the host's real network or clock for the nodes (turmoil's are chosen by
//! `runtime::net` at run time), or pass without checking every invariant.
#![cfg(feature = "sim")]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use idunno_core::consensus::VoterId;
use idunno_core::membership::{Config, MemberState};
use idunno_core::scheduler::{InputOutcome, JobId, JobSpec};
use idunno_runtime::auth::ClusterKey;
use idunno_runtime::consensus::persister::PersistMode;
use idunno_runtime::consensus::{COMPACT_EVERY_DEFAULT, RaftOptions};
use idunno_runtime::control;
use idunno_runtime::dfs::client::DfsClient;
use idunno_runtime::jobs::client::{self as sched, SchedClient};
use idunno_runtime::jobs::worker::WorkerOptions;
use idunno_runtime::node::{self, BlobOptions, NodeOptions};

/// Hosts running a node.
const HOSTS: usize = 10;
/// The first this many hosts are Raft voters.
const VOTERS: usize = 7;
/// Every node's port (UDP and TCP).
const PORT: u16 = 7000;
/// The simulation's wall-clock epoch (2026-01-01T00:00:00Z): fixed, so stamps replay.
const EPOCH_SECS: u64 = 1_767_225_600;
/// Deadline of one client call.
const CALL: Duration = Duration::from_secs(3);
/// Files put before the job (acknowledged ones must read back).
const FILES: usize = 4;
/// Inputs uploaded and given to the job (batch size 1, so the job spans many leases).
const INPUTS: usize = 12;
/// The model the workers run.
const DIGITS: &str = "digits-cnn";
/// Files put while the fault is on.
const FILES_DURING: usize = 3;
/// Longest the client waits for the cluster to recover, in virtual time.
const RECOVERY: Duration = Duration::from_secs(90);
/// Longest a scenario may run, in virtual time.
const SIM_DURATION: Duration = Duration::from_secs(400);

/// The fault a scenario injects when the job has been submitted.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// Three hosts crash at once, the Raft leader among them.
    CrashThree,
    /// The leader and one follower are cut off from everyone else, then the cut heals.
    PartitionLeader,
    /// Every link drops messages at this rate for a while.
    Loss(f64),
    /// Three hosts crash (the leader among them); one restarts with its data dir.
    CrashThenBounce,
}

/// What the client and the fault loop share (both run on the test's thread).
#[derive(Debug, Default)]
struct Shared {
    /// The leader the client saw before submitting.
    leader: Option<SocketAddr>,
    /// The job, once submitted (the fault loop strikes then).
    job: Option<JobId>,
    /// Set by the fault loop when the fault is over (healed, or permanent crashes done).
    healed: bool,
    /// The hosts whose software runs (the fault loop keeps it).
    live: Vec<SocketAddr>,
    /// Files the cluster acknowledged, with their bytes.
    acked: BTreeMap<String, Vec<u8>>,
    /// What the client did, for the failure report.
    log: Vec<String>,
}

type State = Rc<RefCell<Shared>>;

fn name(i: usize) -> String {
    format!("n{i}")
}

/// Host `i`'s node address (inside the simulation).
fn addr_of(i: usize) -> SocketAddr {
    SocketAddr::new(turmoil::lookup(name(i)), PORT)
}

fn key() -> ClusterKey {
    ClusterKey::from_bytes([0x5a; 32])
}

/// Host `i`'s node: a voter below [`VOTERS`], every other host a seed, its data dir `dir`.
fn node_options(i: usize, dir: &Path) -> NodeOptions {
    let voters = (0..VOTERS)
        .map(|v| (VoterId(v as u64 + 1), addr_of(v)))
        .collect();
    // Every other host is a seed: a node restarted while its only seeds are down stays alone
    // (it remembers no members across restarts), which seed 100 of the restart scenario found
    // with seeds n0..n2.
    let join = (0..HOSTS).filter(|&s| s != i).map(addr_of).collect();
    NodeOptions {
        bind: addr_of(i),
        join,
        data_dir: Some(dir.to_path_buf()),
        config: Config::lan(),
        raft: Some(RaftOptions {
            id: (i < VOTERS).then(|| VoterId(i as u64 + 1)),
            voters,
            compact_every: COMPACT_EVERY_DEFAULT,
            // fsync on the event loop: a storage thread's real time would race the virtual clock.
            persist: PersistMode::Inline,
        }),
        cluster_key: Some(key()),
        blobs: BlobOptions::default(),
        worker: WorkerOptions::default(),
    }
}

/// A small deterministic generator for the fault loop's choices.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn note(state: &State, line: String) {
    state.borrow_mut().log.push(line);
}

/// The live hosts, starting at a different one per attempt.
fn targets(state: &State, attempt: usize) -> Vec<SocketAddr> {
    let mut live = state.borrow().live.clone();
    if !live.is_empty() {
        let n = live.len();
        live.rotate_left(attempt % n);
    }
    live
}

async fn pause() {
    tokio::time::sleep(Duration::from_millis(250)).await;
}

/// The leader's address, asking the live hosts until one names it.
async fn wait_leader(state: &State, within: Duration) -> Result<SocketAddr, String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut attempt = 0;
    while tokio::time::Instant::now() < deadline {
        for node in targets(state, attempt) {
            if let Ok((Some(_), Some(addr), _)) = control::leader(node, CALL).await {
                return Ok(addr);
            }
        }
        attempt += 1;
        pause().await;
    }
    Err(format!("no leader within {within:?}"))
}

/// Puts `bytes` as `name` through some live host, `tries` times at most; records the ack.
async fn put(state: &State, dir: &Path, name: &str, bytes: &[u8], tries: usize) -> bool {
    let local = dir.join(name.replace('/', "_"));
    if std::fs::write(&local, bytes).is_err() {
        return false;
    }
    for attempt in 0..tries {
        let Some(&node) = targets(state, attempt).first() else {
            pause().await;
            continue;
        };
        let mut dfs = DfsClient::new(node, CALL);
        match dfs.put(&local, name).await {
            Ok(done) => {
                note(state, format!("put {name} v{} via {node}", done.version));
                state
                    .borrow_mut()
                    .acked
                    .insert(name.to_owned(), bytes.to_vec());
                return true;
            }
            Err(e) => note(state, format!("put {name} via {node} failed: {e}")),
        }
        pause().await;
    }
    false
}

/// digits-cnn's weights, trained once per test process (a few epochs: the scenarios check
/// exactly-once results, not accuracy).
fn digits_weights() -> Result<Vec<u8>, String> {
    static WEIGHTS: std::sync::OnceLock<Result<Vec<u8>, String>> = std::sync::OnceLock::new();
    WEIGHTS
        .get_or_init(|| {
            let config = idunno_models::digits::TrainConfig {
                epochs: 2,
                ..Default::default()
            };
            let device = idunno_models::default_device();
            let (model, _) = idunno_models::registry::train(DIGITS, &config, &device)
                .map_err(|e| format!("training {DIGITS}: {e}"))?;
            model.weights_to_bytes().map_err(|e| e.to_string())
        })
        .clone()
}

/// Input `k` of the job: a digit of the held-out split, in the format digits-cnn reads.
fn digit_input(k: usize) -> Result<Vec<u8>, String> {
    let test = idunno_runtime::demo::inputs::test_split().map_err(|e| e.0)?;
    let (pixels, label) = test
        .pixels
        .get(k)
        .zip(test.labels.get(k))
        .ok_or("the test split is too small")?;
    Ok(idunno_runtime::demo::inputs::digit_line(pixels, *label).into_bytes())
}

fn file_bytes(seed: u64, name: &str) -> Vec<u8> {
    format!("{name} of seed {seed}\n").repeat(40).into_bytes()
}

/// The client: files, inputs, a job; then (after the fault) the invariants.
async fn client(state: State, seed: u64, dir: PathBuf) -> Result<(), String> {
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    wait_leader(&state, RECOVERY).await?;
    for k in 0..FILES {
        let name = format!("files/f{k}");
        put(&state, &dir, &name, &file_bytes(seed, &name), 20).await;
    }
    let weights = digits_weights()?;
    let weights_name = idunno_runtime::jobs::model::weights_file_name(DIGITS);
    if !put(&state, &dir, &weights_name, &weights, 20).await {
        return Err(format!("could not store {weights_name} before any fault"));
    }
    let mut inputs = Vec::new();
    for k in 0..INPUTS {
        let name = format!("inputs/x{k:02}");
        if !put(&state, &dir, &name, &digit_input(k)?, 20).await {
            return Err(format!("could not upload {name} before any fault"));
        }
        inputs.push(name);
    }
    let leader = wait_leader(&state, RECOVERY).await?;
    state.borrow_mut().leader = Some(leader);
    let spec = JobSpec {
        model: DIGITS.to_owned(),
        inputs: inputs.clone(),
        batch_size: 1,
        lease_millis: 2000,
    };
    let mut job = None;
    for attempt in 0..20 {
        let Some(&node) = targets(&state, attempt).first() else {
            continue;
        };
        match sched::submit(&SchedClient::new(node, CALL), spec.clone(), seed + 1).await {
            Ok(id) => {
                job = Some(id);
                break;
            }
            Err(e) => note(&state, format!("submit via {node} failed: {e}")),
        }
        pause().await;
    }
    let job = job.ok_or("the job was never accepted before any fault")?;
    note(&state, format!("job {job} submitted; leader {leader}"));
    state.borrow_mut().job = Some(job);
    // While the fault is on: more puts; each acknowledged one must survive.
    for k in 0..FILES_DURING {
        let name = format!("during/f{k}");
        put(&state, &dir, &name, &file_bytes(seed, &name), 2).await;
    }
    while !state.borrow().healed {
        pause().await;
    }
    note(&state, "fault over".to_owned());
    check_commits(&state).await?;
    check_job(&state, job, &inputs).await?;
    check_files(&state, &dir).await?;
    check_membership(&state).await?;
    Ok(())
}

/// A leader commits: a put through the Raft log succeeds.
async fn check_commits(state: &State) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + RECOVERY;
    let mut attempt = 0;
    while tokio::time::Instant::now() < deadline {
        for node in targets(state, attempt) {
            if control::kv_put(node, "recovered".to_owned(), vec![1], CALL)
                .await
                .is_ok()
            {
                note(state, format!("a leader committed (asked {node})"));
                return Ok(());
            }
        }
        attempt += 1;
        pause().await;
    }
    Err("no leader committed after the fault".to_owned())
}

/// Every input has exactly one result: a prediction stored in a result file of the job.
async fn check_job(state: &State, job: JobId, inputs: &[String]) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + RECOVERY;
    let mut attempt = 0;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        let Some(&node) = targets(state, attempt).first() else {
            pause().await;
            continue;
        };
        attempt += 1;
        match sched::all_results(&SchedClient::new(node, CALL), job, inputs.len()).await {
            Ok(results) if results.len() == inputs.len() => {
                let mut seen = BTreeSet::new();
                for r in &results {
                    let index = r.input as usize;
                    if !seen.insert(index) {
                        return Err(format!("input {index} has two results"));
                    }
                    let Some(name) = inputs.get(index) else {
                        return Err(format!("a result for input {index}, which the job lacks"));
                    };
                    let stored = matches!(&r.outcome,
                        InputOutcome::Result(file) if file.starts_with(&format!("results/{job}/")));
                    if &r.name != name || !stored {
                        return Err(format!("input {index} ({name}) has result {r:?}"));
                    }
                }
                note(state, format!("job {job}: {} results", results.len()));
                return Ok(());
            }
            Ok(results) => last = format!("{} of {} results", results.len(), inputs.len()),
            Err(e) => last = e.to_string(),
        }
        pause().await;
    }
    Err(format!("job {job} did not finish: {last}"))
}

/// Every acknowledged file reads back with its bytes.
async fn check_files(state: &State, dir: &Path) -> Result<(), String> {
    let acked = state.borrow().acked.clone();
    for (name, bytes) in &acked {
        let local = dir.join(format!("read-{}", name.replace('/', "_")));
        let deadline = tokio::time::Instant::now() + RECOVERY;
        let mut attempt = 0;
        loop {
            let Some(&node) = targets(state, attempt).first() else {
                return Err("no live host".to_owned());
            };
            attempt += 1;
            match DfsClient::new(node, CALL).get(name, &local).await {
                Ok(_) => {
                    let got = std::fs::read(&local).map_err(|e| e.to_string())?;
                    if &got != bytes {
                        return Err(format!("{name} read back {} other bytes", got.len()));
                    }
                    break;
                }
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(format!("acknowledged {name} is unreadable: {e}"));
                }
                Err(_) => pause().await,
            }
        }
    }
    note(
        state,
        format!("{} acknowledged files read back", acked.len()),
    );
    Ok(())
}

/// The live hosts' views agree: each sees exactly the live hosts alive.
async fn check_membership(state: &State) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + RECOVERY;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        let live: BTreeSet<SocketAddr> = state.borrow().live.iter().copied().collect();
        let mut agreed = true;
        for &node in &live {
            match control::list_members(node, CALL).await {
                Ok(members) => {
                    let alive: BTreeSet<SocketAddr> = members
                        .iter()
                        .filter(|m| m.state == MemberState::Alive)
                        .map(|m| m.id.addr)
                        .collect();
                    if alive != live {
                        agreed = false;
                        last = format!("{node} sees {alive:?}, live are {live:?}");
                        break;
                    }
                }
                Err(e) => {
                    agreed = false;
                    last = format!("{node}: {e}");
                    break;
                }
            }
        }
        if agreed {
            note(
                state,
                format!("membership converged on {} hosts", live.len()),
            );
            return Ok(());
        }
        pause().await;
    }
    Err(format!("membership did not converge: {last}"))
}

/// Runs one scenario with `seed`; `Err` names the violated invariant and the client's log.
fn run(fault: Fault, label: &str, seed: u64) -> Result<(), String> {
    // Data dirs in memory when the machine has a tmpfs: every Raft append and blob is
    // fsynced, and real fsyncs would make the simulation disk-bound.
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let root = base.join(format!(
        "idunno-turmoil-{}-{label}-{seed}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&root);
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(SystemTime::UNIX_EPOCH + Duration::from_secs(EPOCH_SECS))
        .simulation_duration(SIM_DURATION)
        .build();
    for i in 0..HOSTS {
        let dir = root.join(name(i));
        sim.host(name(i), move || {
            let dir = dir.clone();
            async move {
                // A host the cluster fences comes back as a new generation, as `start` does.
                node::run(node_options(i, &dir), |_| std::future::pending()).await?;
                Ok(())
            }
        });
    }
    let state: State = Rc::default();
    state.borrow_mut().live = (0..HOSTS)
        .map(|i| (sim.lookup(name(i)), PORT).into())
        .collect();
    let client_state = Rc::clone(&state);
    let client_dir = root.join("client");
    sim.client("client", async move {
        client(client_state, seed, client_dir)
            .await
            .map_err(|e| e.into())
    });
    let outcome = drive(&mut sim, &state, fault, seed);
    let log = state.borrow().log.join("\n  ");
    match outcome {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&root);
            Ok(())
        }
        Err(e) => Err(format!(
            "{e}\n  at {:?} virtual; client log:\n  {log}\n  (data dirs kept in {})",
            sim.elapsed(),
            root.display()
        )),
    }
}

/// Steps the simulation, striking with `fault` once the job is submitted.
fn drive(sim: &mut turmoil::Sim<'_>, state: &State, fault: Fault, seed: u64) -> Result<(), String> {
    let mut rng = SplitMix(seed ^ 0x7475_726d_6f69_6c21);
    let addr_of_host =
        |sim: &turmoil::Sim<'_>, i: usize| -> SocketAddr { (sim.lookup(name(i)), PORT).into() };
    // When the fault started, and which hosts it hit.
    let mut struck: Option<(Duration, Vec<usize>)> = None;
    let mut bounced = false;
    loop {
        if sim.step().map_err(|e| e.to_string())? {
            return Ok(());
        }
        let now = sim.elapsed();
        let (job, leader, healed) = {
            let s = state.borrow();
            (s.job, s.leader, s.healed)
        };
        if healed || job.is_none() {
            continue;
        }
        let Some(leader) = leader else { continue };
        let leader_host = (0..HOSTS)
            .find(|&i| addr_of_host(sim, i) == leader)
            .ok_or("the leader is not a host")?;
        match (&struck, fault) {
            (None, Fault::CrashThree | Fault::CrashThenBounce) => {
                let mut hit = vec![leader_host];
                while hit.len() < 3 {
                    let h = rng.below(HOSTS);
                    if !hit.contains(&h) {
                        hit.push(h);
                    }
                }
                for &h in &hit {
                    sim.crash(name(h));
                }
                let crashed: Vec<SocketAddr> = hit.iter().map(|&h| addr_of_host(sim, h)).collect();
                let mut s = state.borrow_mut();
                s.live.retain(|a| !crashed.contains(a));
                s.log.push(format!("crashed {hit:?} at {now:?}"));
                if fault == Fault::CrashThree {
                    s.healed = true;
                }
                drop(s);
                struck = Some((now, hit));
            }
            (Some((at, hit)), Fault::CrashThenBounce)
                if !bounced && now >= *at + Duration::from_secs(8) =>
            {
                let back = hit[0];
                sim.bounce(name(back));
                bounced = true;
                let mut s = state.borrow_mut();
                s.live.push(addr_of_host(sim, back));
                s.healed = true;
                s.log.push(format!("restarted n{back} at {now:?}"));
            }
            (None, Fault::PartitionLeader) => {
                let follower = loop {
                    let v = rng.below(VOTERS);
                    if v != leader_host {
                        break v;
                    }
                };
                let side = [leader_host, follower];
                for &a in &side {
                    for b in (0..HOSTS).filter(|b| !side.contains(b)) {
                        sim.partition(name(a), name(b));
                    }
                    sim.partition(name(a), "client");
                }
                state
                    .borrow_mut()
                    .log
                    .push(format!("partitioned {side:?} at {now:?}"));
                struck = Some((now, side.to_vec()));
            }
            (Some((at, side)), Fault::PartitionLeader) if now >= *at + Duration::from_secs(10) => {
                for &a in side {
                    for b in (0..HOSTS).filter(|b| !side.contains(b)) {
                        sim.repair(name(a), name(b));
                    }
                    sim.repair(name(a), "client");
                }
                let mut s = state.borrow_mut();
                s.healed = true;
                s.log.push(format!("healed at {now:?}"));
            }
            (None, Fault::Loss(rate)) => {
                sim.set_fail_rate(rate);
                state
                    .borrow_mut()
                    .log
                    .push(format!("loss {rate} from {now:?}"));
                struck = Some((now, Vec::new()));
            }
            (Some((at, _)), Fault::Loss(_)) if now >= *at + Duration::from_secs(10) => {
                sim.set_fail_rate(0.0);
                let mut s = state.borrow_mut();
                s.healed = true;
                s.log.push(format!("loss over at {now:?}"));
            }
            _ => {}
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Runs `fault` for the default seed, `SIM_SEED`, or the `SIM_SEEDS` sweep; panics at the first
/// failing seed with the command that replays it.
fn scenario(test: &str, fault: Fault, default_seed: u64) {
    if std::env::var_os("SIM_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("SIM_LOG"))
            .with_test_writer()
            .try_init();
    }
    let seeds: Vec<u64> = match (env_u64("SIM_SEED"), env_u64("SIM_SEEDS")) {
        (Some(seed), _) => vec![seed],
        (None, Some(count)) => {
            let base = env_u64("SIM_SEED_BASE").unwrap_or(0);
            (0..count).map(|i| base.wrapping_add(i)).collect()
        }
        (None, None) => vec![default_seed],
    };
    for seed in seeds {
        if let Err(e) = run(fault, test, seed) {
            panic!(
                "scenario {test} failed with seed {seed}: {e}\nreplay: SIM_SEED={seed} cargo test \
                 --features sim -p idunno-runtime --test turmoil {test} -- --exact --nocapture"
            );
        }
        eprintln!("scenario {test}: seed {seed} ok");
    }
}

#[test]
fn crash_three_with_the_leader_mid_job() {
    scenario("crash_three_with_the_leader_mid_job", Fault::CrashThree, 1);
}

/// Found a real bug (seed 2, and 101 in a sweep): after the heal, the cut-off pair's death
/// certificates for the majority's members spread, the members refute (same generation), but
/// the leader had already proposed `NodeFailed` for them and the DFS dropped every replica
/// record on them, so an acknowledged file had none left ("no replica served a good copy: []").
/// Fixed by `consensus::driver::FAILURE_GRACE`.
#[test]
fn partition_the_leader_with_one_follower_then_heal() {
    scenario(
        "partition_the_leader_with_one_follower_then_heal",
        Fault::PartitionLeader,
        2,
    );
}

#[test]
fn three_percent_loss() {
    scenario("three_percent_loss", Fault::Loss(0.03), 3);
}

#[test]
fn thirty_percent_loss() {
    scenario("thirty_percent_loss", Fault::Loss(0.30), 4);
}

#[test]
fn crashed_host_restarts_with_its_data_dir() {
    scenario(
        "crashed_host_restarts_with_its_data_dir",
        Fault::CrashThenBounce,
        5,
    );
}
