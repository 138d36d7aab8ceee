//! `raft-bench`: the Raft key-value log over real `idunno-node` processes on loopback.
//!
//! Starts N voters (the `idunno-node` binary next to this executable, so build the runtime's
//! binaries first) on 127.0.0.60.., each with its own data dir (the store always fsyncs), with a
//! fresh cluster key, as a [`LocalCluster`], then
//! measures (1) commit throughput and latency: C concurrent clients putting their own keys to the
//! leader for S seconds (a put is answered only once committed and applied), and (2) failover:
//! SIGKILL the leader, then put through every survivor (any node forwards) until one put
//! commits; the time from the kill to that commit, 5 times (the killed node restarts from its
//! data dir and catches up in between). Prints a markdown table.
//!
//! ```sh
//! cargo build --release -p idunno-runtime --bins
//! cargo run --release -p idunno-runtime --bin raft-bench -- --voters 7 --seconds 10 --clients 32
//! ```
//!
//! Must never: leave a child running (errors, panics, Ctrl-C: the [`LocalCluster`]'s guard
//! kills and reaps on drop) or its temp dir behind, or bind outside 127.0.0.0/8.

use idunno_runtime::bench::cluster::LocalCluster;
use idunno_runtime::bench::{BenchError, fail};
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use idunno_runtime::control;
use idunno_runtime::identity::unix_time_ms;
use idunno_runtime::node::block_on;
use tokio::task::JoinSet;

/// First voter's address is 127.0.0.FIRST_HOST (the tests use .2-.59).
const FIRST_HOST: usize = 60;
/// How long the cluster may take to elect a leader / a restarted node to catch up.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of one put during the failover probe (the leader-side commit waits 2.5 s at most).
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between two failed probe puts to the same node.
const PROBE_RETRY: Duration = Duration::from_millis(5);
/// Give-up time for one failover.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(20);
/// Payload of every put.
const VALUE_BYTES: usize = 64;
/// Keys each throughput client cycles through.
const KEYS_PER_CLIENT: u64 = 64;

/// Raft commit throughput, latency and failover time over real processes.
#[derive(Debug, Parser)]
#[command(name = "raft-bench")]
struct Args {
    /// Number of voters (1..=9; at least 3 for the failover part).
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u8).range(1..=9))]
    voters: u8,
    /// Length of the throughput run, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent clients in the throughput run.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    clients: u16,
    /// Leader kills in the failover part (0 skips it).
    #[arg(long, default_value_t = 5)]
    failovers: u16,
    /// Where the voters fsync their log (`idunno-node start --raft-persist`): background or inline.
    #[arg(long, default_value = "background", value_parser = ["background", "inline"])]
    persist: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let root = std::env::temp_dir().join(format!(
        "idunno-raft-bench-{}-{}",
        std::process::id(),
        unix_time_ms()
    ));
    let outcome = block_on(async {
        let mut cluster =
            LocalCluster::new(root.clone(), FIRST_HOST, usize::from(args.voters), 0, 0)?;
        cluster.voter_args(&["--raft-persist", &args.persist]);
        cluster.env(
            "RUST_LOG",
            &std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        );
        let interrupted = interrupted()?;
        let report = tokio::select! {
            result = bench(&args, &mut cluster) => result,
            () = interrupted => fail("interrupted"),
        };
        drop(cluster);
        // The children are killed and reaped; their data and logs go too.
        let _ = fs::remove_dir_all(&root);
        report
    });
    match outcome {
        Ok(Ok(report)) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Ok(Err(BenchError(message))) => {
            eprintln!("raft-bench FAILED: {message}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("raft-bench FAILED: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Completes at the first SIGINT or SIGTERM.
fn interrupted() -> io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

fn progress(line: &str) {
    eprintln!("raft-bench: {line}");
}

async fn bench(args: &Args, cluster: &mut LocalCluster) -> Result<String, BenchError> {
    let n = cluster.addrs.len();
    progress(&format!(
        "starting {n} voters on {} .. {} (data in {})",
        cluster.addrs[0],
        cluster.addrs[n - 1],
        cluster.nodes.root.display()
    ));
    cluster.start_all().await?;
    let t0 = Instant::now();
    let leader = wait_for_leader(cluster, None).await?;
    progress(&format!(
        "leader {} elected, first put committed after {:.2}s",
        cluster.addrs[leader],
        t0.elapsed().as_secs_f64()
    ));

    let throughput = throughput(args, cluster.addrs[leader]).await?;
    progress(&format!(
        "throughput: {} puts in {:.2}s",
        throughput.latencies.len(),
        throughput.elapsed.as_secs_f64()
    ));

    let mut failovers = Vec::new();
    if args.failovers > 0 && n >= 3 {
        for round in 0..args.failovers {
            let took = failover(cluster, round).await?;
            failovers.push(took);
        }
    }
    Ok(report(args, &throughput, &failovers))
}

/// The index of the voter that leads once a put through it has committed.
async fn wait_for_leader(
    cluster: &LocalCluster,
    avoid: Option<usize>,
) -> Result<usize, BenchError> {
    let t0 = Instant::now();
    let mut last_error = String::from("no answer yet");
    while t0.elapsed() < SETTLE_TIMEOUT {
        for index in cluster.nodes.live_indices() {
            match control::leader(cluster.addrs[index], control::CLIENT_TIMEOUT).await {
                Ok((_, Some(addr), _)) => {
                    let Some(leader) = cluster.addrs.iter().position(|&a| a == addr) else {
                        last_error = format!("unknown leader address {addr}");
                        continue;
                    };
                    if Some(leader) == avoid || cluster.nodes.id(leader).is_none() {
                        last_error =
                            format!("{} still names the dead leader", cluster.addrs[index]);
                        continue;
                    }
                    let key = format!("settle-{}", unix_time_ms());
                    match control::kv_put(addr, key, vec![0; 8], control::CLIENT_TIMEOUT).await {
                        Ok(_) => return Ok(leader),
                        Err(e) => last_error = e.to_string(),
                    }
                }
                Ok((_, None, term)) => last_error = format!("no leader in term {term}"),
                Err(e) => last_error = e.to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fail(format!(
        "no leader committed within {}s: {last_error}",
        SETTLE_TIMEOUT.as_secs()
    ))
}

struct Throughput {
    latencies: Vec<Duration>,
    errors: usize,
    elapsed: Duration,
}

/// `args.clients` concurrent clients put distinct keys to `leader` for `args.seconds`.
async fn throughput(args: &Args, leader: SocketAddr) -> Result<Throughput, BenchError> {
    progress(&format!(
        "throughput: {} clients putting {VALUE_BYTES}-byte values to {leader} for {}s",
        args.clients, args.seconds
    ));
    let run = Duration::from_secs(args.seconds);
    let t0 = Instant::now();
    let mut clients = JoinSet::new();
    for client in 0..args.clients {
        clients.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            let mut seq = 0u64;
            while t0.elapsed() < run {
                // Each client cycles through its own 64 keys: the store holds at most
                // KV_BYTES_MAX, and an overwrite costs Raft exactly what a new key does.
                let key = format!("c{client}-{}", seq % KEYS_PER_CLIENT);
                seq += 1;
                let sent = Instant::now();
                match control::kv_put(
                    leader,
                    key,
                    vec![b'v'; VALUE_BYTES],
                    control::CLIENT_TIMEOUT,
                )
                .await
                {
                    Ok(_) => latencies.push(sent.elapsed()),
                    Err(e) => {
                        if errors == 0 {
                            eprintln!("raft-bench: client {client}: first failed put: {e}");
                        }
                        errors += 1;
                    }
                }
            }
            (latencies, errors)
        });
    }
    let mut all = Throughput {
        latencies: Vec::new(),
        errors: 0,
        elapsed: Duration::ZERO,
    };
    while let Some(joined) = clients.join_next().await {
        let (latencies, errors) = joined?;
        all.latencies.extend(latencies);
        all.errors += errors;
    }
    all.elapsed = t0.elapsed();
    if all.latencies.is_empty() {
        return fail(format!("no put committed ({} errors)", all.errors));
    }
    all.latencies.sort_unstable();
    Ok(all)
}

/// SIGKILLs the leader, probes every survivor with puts until one commits, then restarts the
/// killed voter and waits until it has caught up. Returns the time from the kill to the commit.
async fn failover(cluster: &mut LocalCluster, round: u16) -> Result<Duration, BenchError> {
    let leader = wait_for_leader(cluster, None).await?;
    let survivors: Vec<SocketAddr> = cluster
        .nodes
        .live_indices()
        .into_iter()
        .filter(|&i| i != leader)
        .map(|i| cluster.addrs[i])
        .collect();
    let killed_at = Instant::now();
    cluster.kill(leader)?;
    let mut probes = JoinSet::new();
    for (p, node) in survivors.into_iter().enumerate() {
        probes.spawn(async move {
            let mut seq = 0u64;
            loop {
                let key = format!("failover-{round}-{p}-{seq}");
                seq += 1;
                if control::kv_put(node, key, vec![b'f'; VALUE_BYTES], PROBE_TIMEOUT)
                    .await
                    .is_ok()
                {
                    return Instant::now();
                }
                tokio::time::sleep(PROBE_RETRY).await;
            }
        });
    }
    let first = tokio::time::timeout(FAILOVER_TIMEOUT, probes.join_next()).await;
    probes.abort_all();
    let took = match first {
        Ok(Some(Ok(committed))) => committed.duration_since(killed_at),
        Ok(Some(Err(e))) => return fail(format!("a failover probe failed: {e}")),
        Ok(None) => return fail("no survivors to probe"),
        Err(_) => {
            return fail(format!(
                "no put committed within {}s of killing the leader",
                FAILOVER_TIMEOUT.as_secs()
            ));
        }
    };
    progress(&format!(
        "failover {}: killed leader {}, first put committed after {} ms",
        round + 1,
        cluster.addrs[leader],
        took.as_millis()
    ));
    cluster.spawn(leader).await?;
    wait_caught_up(cluster, leader).await?;
    Ok(took)
}

/// Waits until restarted voter `index` names the current leader and a put through it commits
/// (it forwards to the leader; by then it has taken the leader's AppendEntries).
async fn wait_caught_up(cluster: &LocalCluster, index: usize) -> Result<(), BenchError> {
    let node = cluster.addrs[index];
    let t0 = Instant::now();
    let mut last_error = String::from("no answer yet");
    while t0.elapsed() < SETTLE_TIMEOUT {
        match control::leader(node, control::CLIENT_TIMEOUT).await {
            Ok((_, Some(leader), _)) if leader != node => {
                let key = format!("catch-up-{}", unix_time_ms());
                match control::kv_put(node, key, vec![0; 8], control::CLIENT_TIMEOUT).await {
                    Ok(_) => return Ok(()),
                    Err(e) => last_error = e.to_string(),
                }
            }
            Ok(answer) => last_error = format!("leader answer {answer:?}"),
            Err(e) => last_error = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fail(format!(
        "restarted voter {node} did not catch up within {}s: {last_error}",
        SETTLE_TIMEOUT.as_secs()
    ))
}

/// The `q`-quantile of sorted `values` (nearest rank).
fn quantile(values: &[Duration], q: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn report(args: &Args, throughput: &Throughput, failovers: &[Duration]) -> String {
    let mut out = String::new();
    let lat = &throughput.latencies;
    let rate = lat.len() as f64 / throughput.elapsed.as_secs_f64();
    let _ = writeln!(
        out,
        "\n{} voters, {} clients, {}s, {VALUE_BYTES}-byte values, fsync on\n",
        args.voters, args.clients, args.seconds
    );
    let _ = writeln!(out, "| measure | value |");
    let _ = writeln!(out, "|---|---|");
    let _ = writeln!(
        out,
        "| committed puts/s | {rate:.0} ({} puts in {:.2} s, {} errors) |",
        lat.len(),
        throughput.elapsed.as_secs_f64(),
        throughput.errors
    );
    let _ = writeln!(out, "| put latency median | {} |", ms(quantile(lat, 0.5)));
    let _ = writeln!(out, "| put latency p99 | {} |", ms(quantile(lat, 0.99)));
    let _ = writeln!(
        out,
        "| put latency max | {} |",
        ms(lat.last().copied().unwrap_or_default())
    );
    if !failovers.is_empty() {
        let mut sorted = failovers.to_vec();
        sorted.sort_unstable();
        let each: Vec<String> = failovers
            .iter()
            .map(|d| d.as_millis().to_string())
            .collect();
        let _ = writeln!(
            out,
            "| leader SIGKILL -> first commit, median of {} | {} |",
            sorted.len(),
            ms(quantile(&sorted, 0.5))
        );
        let _ = writeln!(
            out,
            "| leader SIGKILL -> first commit, max | {} |",
            ms(sorted.last().copied().unwrap_or_default())
        );
        let _ = writeln!(
            out,
            "| leader SIGKILL -> first commit, each (ms) | {} |",
            each.join(", ")
        );
    }
    out
}
