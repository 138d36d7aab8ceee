//! swim-bench: failure-detection time, false positives and traffic of the SWIM membership
//! machine in the deterministic simulator, swept over cluster size and message loss.
//!
//! Owns: the benchmark protocol (boot a converged cluster losslessly, turn loss on, measure a
//! quiet window for traffic, then crash one random node at a time, time until one observer
//! (the next live slot) suspects it and its removal from the first and from every live view,
//! restart it as a new generation, let it settle, repeat) and the markdown table it prints.
//! With `--hint` the observer is told at the crash that the node may be gone
//! (`Input::ProbeSoon`, as a node's runtime does when a worker's lease connection to it
//! closes), so the observer column compares hinted and unhinted suspicion.
//! Must never: use wall-clock time or unseeded randomness in what it measures (wall time is
//! only reported as the benchmark's own run time).
//!
//! Run: `cargo run --release -p idunno-sim --bin swim-bench` (full sweep), or with
//! `-- --sizes 10,100 --loss 0,10 --seed 7 --quick [--hint]`.

use std::process::ExitCode;
use std::time::Duration;

use idunno_core::membership::{Config, Count, MemberState, Traffic};
use idunno_core::time::Instant;
use idunno_sim::checker::Violation;
use idunno_sim::{FaultOptions, SwimSim};

/// One point of the sweep.
#[derive(Debug, Clone, Copy)]
struct Point {
    nodes: usize,
    loss_percent: f64,
    trials: usize,
    quiet: Duration,
}

/// Everything measured at one point.
#[derive(Debug, Clone, Default)]
struct Measured {
    /// Crash -> the observer holds the node suspect (or dead).
    observer: Vec<Duration>,
    first: Vec<Duration>,
    all: Vec<Duration>,
    undetected: usize,
    false_positive_events: usize,
    forced_out: usize,
    node_seconds: f64,
    bytes_per_node_second: f64,
    datagrams_per_node_second: f64,
    virtual_seconds: f64,
    wall_seconds: f64,
    /// Sent traffic by kind over the quiet window, summed over the nodes.
    traffic: Vec<(&'static str, Count)>,
}

/// Longest wait for every live member to drop a crashed node before the trial counts as
/// undetected.
const TRIAL_WAIT_MAX: Duration = Duration::from_secs(120);
/// Longest wait after bootstrap for every join announcement to be fully disseminated.
const BOOT_SETTLE_MAX: Duration = Duration::from_secs(60);
/// Time after a restart for the new generation to spread before the next crash.
const SETTLE: Duration = Duration::from_secs(4);

struct Options {
    sizes: Vec<usize>,
    losses: Vec<f64>,
    seed: u64,
    quick: bool,
    /// Overrides the quiet window (seconds), for steady-state traffic studies.
    quiet_s: Option<u64>,
    /// Hint the observer about each crash (a probe out of turn).
    hint: bool,
}

fn parse_list<T: std::str::FromStr>(value: &str) -> Result<Vec<T>, String> {
    value
        .split(',')
        .map(|v| {
            v.trim()
                .parse::<T>()
                .map_err(|_| format!("bad list item {v:?}"))
        })
        .collect()
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        sizes: vec![10, 100, 1000],
        losses: vec![0.0, 3.0, 10.0, 30.0],
        seed: 1,
        quick: false,
        quiet_s: None,
        hint: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--sizes" => options.sizes = parse_list(&value()?)?,
            "--loss" => options.losses = parse_list(&value()?)?,
            "--seed" => {
                options.seed = value()?.parse().map_err(|_| "bad --seed".to_owned())?;
            }
            "--quick" => options.quick = true,
            "--hint" => options.hint = true,
            "--quiet-s" => {
                options.quiet_s = Some(value()?.parse().map_err(|_| "bad --quiet-s".to_owned())?);
            }
            "-h" | "--help" => {
                return Err(
                    "usage: swim-bench [--sizes 10,100,1000] [--loss 0,3,10,30] \
                            [--seed N] [--quick] [--quiet-s S] [--hint]"
                        .to_owned(),
                );
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(options)
}

fn point(nodes: usize, loss_percent: f64, quick: bool) -> Point {
    let (trials, quiet_s): (usize, u64) = match nodes {
        0..=10 => (60, 60),
        11..=100 => (30, 30),
        // n = 1000 costs about 10 s of CPU per virtual second at 30% loss: keep it short.
        _ => (if loss_percent >= 30.0 { 3 } else { 10 }, 5),
    };
    let trials = if quick { trials.div_ceil(4) } else { trials };
    Point {
        nodes,
        loss_percent,
        trials,
        quiet: Duration::from_secs(quiet_s),
    }
}

fn pending_broadcasts(sim: &SwimSim) -> usize {
    let cluster = sim.cluster();
    cluster
        .live_indices()
        .into_iter()
        .filter_map(|i| cluster.node(i))
        .map(|m| m.pending_broadcasts())
        .sum()
}

/// Every live node's traffic counters, summed.
fn traffic_by_kind(sim: &SwimSim) -> Traffic {
    let cluster = sim.cluster();
    let mut sum = Traffic::default();
    for m in cluster
        .live_indices()
        .into_iter()
        .filter_map(|i| cluster.node(i))
    {
        sum.add(&m.metrics().traffic);
    }
    sum
}

/// Decision counters summed over the live nodes: suspicions raised, refutations, failures
/// declared, probes, retries, extensions, extensions answered.
fn decisions(sim: &SwimSim) -> [u64; 7] {
    let cluster = sim.cluster();
    let mut out = [0u64; 7];
    for m in cluster
        .live_indices()
        .into_iter()
        .filter_map(|i| cluster.node(i))
    {
        let x = m.metrics();
        let row = [
            x.suspicions_raised,
            x.refutations,
            x.failures_declared,
            x.probes,
            x.probe_retries,
            x.probe_extensions,
            x.probe_extensions_answered,
        ];
        for (o, v) in out.iter_mut().zip(row) {
            *o += v;
        }
    }
    out
}

/// How many live nodes have each local health score.
fn awareness_histogram(sim: &SwimSim) -> std::collections::BTreeMap<u32, usize> {
    let cluster = sim.cluster();
    let mut out = std::collections::BTreeMap::new();
    for m in cluster
        .live_indices()
        .into_iter()
        .filter_map(|i| cluster.node(i))
    {
        *out.entry(m.awareness()).or_insert(0) += 1;
    }
    out
}

fn total_traffic(sim: &SwimSim) -> (u64, u64) {
    sim.cluster()
        .world()
        .network()
        .traffic_all()
        .iter()
        .fold((0, 0), |(b, d), t| (b + t.bytes_sent, d + t.datagrams_sent))
}

/// Runs for `span`, adding live-node time to `node_seconds`.
fn run_counting(
    sim: &mut SwimSim,
    span: Duration,
    node_seconds: &mut f64,
) -> Result<(), Violation> {
    let live = sim.cluster().live_indices().len() as f64;
    sim.run_for(span)?;
    *node_seconds += live * span.as_secs_f64();
    Ok(())
}

/// Step of the wait for the observer's suspicion (virtual time; the simulation itself does
/// not depend on how it is stepped).
const OBSERVER_STEP: Duration = Duration::from_millis(10);

fn measure(seed: u64, p: Point, hint: bool) -> Result<Measured, Violation> {
    let started = std::time::Instant::now();
    let setup = |e: String| Violation {
        checker: "setup",
        at: Instant::ZERO,
        detail: e,
    };
    let mut sim = SwimSim::new(seed, p.nodes, Config::lan(), FaultOptions::lan()).map_err(setup)?;
    // Trials that time out are counted, not failed.
    sim.set_removal_bound(Duration::from_secs(24 * 3600));
    let spread = Duration::from_millis(5 * p.nodes as u64);
    sim.bootstrap(spread, Instant::ZERO + spread + Duration::from_secs(120))?;
    // Let the join announcements finish their retransmissions, so the quiet window measures
    // steady state and not the bootstrap.
    let settle_deadline = sim.now() + BOOT_SETTLE_MAX;
    while sim.now() < settle_deadline && pending_broadcasts(&sim) > 0 {
        sim.run_for(Duration::from_millis(100))?;
    }
    sim.cluster_mut()
        .world_mut()
        .network_mut()
        .set_options(FaultOptions::lossy(p.loss_percent))
        .map_err(setup)?;
    let mut m = Measured::default();
    let fp_before = sim.false_positives().unpartitioned();
    let forced_before = sim.false_positives().forced_out();
    let measure_from = sim.now();

    // Quiet window: steady-state traffic.
    let (bytes_0, datagrams_0) = total_traffic(&sim);
    let kinds_0 = traffic_by_kind(&sim);
    let decisions_0 = decisions(&sim);
    run_counting(&mut sim, p.quiet, &mut m.node_seconds)?;
    if std::env::var_os("SWIM_BENCH_DEBUG").is_some() {
        let d1 = decisions(&sim);
        let delta: Vec<u64> = d1.iter().zip(decisions_0).map(|(a, b)| a - b).collect();
        eprintln!(
            "n = {}, loss {}%: quiet window: suspicions raised {}, refutations {}, failures \
             declared {}, probes {}, retries {}, extensions {} (answered {}); awareness \
             histogram {:?}",
            p.nodes,
            p.loss_percent,
            delta[0],
            delta[1],
            delta[2],
            delta[3],
            delta[4],
            delta[5],
            delta[6],
            awareness_histogram(&sim)
        );
    }
    let (bytes_1, datagrams_1) = total_traffic(&sim);
    let kinds_1 = traffic_by_kind(&sim);
    m.traffic = kinds_1
        .named()
        .iter()
        .zip(kinds_0.named())
        .map(|(&(name, after), (_, before))| (name, after.since(&before)))
        .collect();
    let per_node_second = p.nodes as f64 * p.quiet.as_secs_f64();
    m.bytes_per_node_second = (bytes_1 - bytes_0) as f64 / per_node_second;
    m.datagrams_per_node_second = (datagrams_1 - datagrams_0) as f64 / per_node_second;

    for _ in 0..p.trials {
        let live = sim.cluster().live_indices();
        let pick = sim
            .cluster_mut()
            .world_mut()
            .random_below(live.len() as u64) as usize;
        let index = live[pick];
        // The observer is the next live slot (no random draw, so runs without `--hint` crash
        // the same nodes at the same times as before the observer was timed).
        let observer = live[(pick + 1) % live.len()];
        let crashed = sim.crash(&[index])?[0];
        let crash_at = sim.now();
        if hint {
            sim.hint(observer, crashed)?;
        }
        let suspects = |sim: &SwimSim| {
            sim.cluster()
                .node(observer)
                .and_then(|m| m.state_of(crashed))
                .is_none_or(|state| state != MemberState::Alive)
        };
        while !suspects(&sim) && sim.now() - crash_at < TRIAL_WAIT_MAX {
            run_counting(&mut sim, OBSERVER_STEP, &mut m.node_seconds)?;
        }
        m.observer.push(sim.now() - crash_at);
        // Back onto the removal loop's 100 ms grid from the crash, so the restart (and every
        // later trial) happens when it did before the observer was timed.
        let grid = Duration::from_millis(100);
        let steps = (sim.now() - crash_at)
            .as_micros()
            .div_ceil(grid.as_micros());
        let on_grid = crash_at + grid * u32::try_from(steps).unwrap_or(u32::MAX);
        let now = sim.now();
        if on_grid > now {
            run_counting(&mut sim, on_grid - now, &mut m.node_seconds)?;
        }
        while sim
            .removal()
            .removal(crashed)
            .is_some_and(|r| r.all_at.is_none())
            && sim.now() - crash_at < TRIAL_WAIT_MAX
        {
            run_counting(&mut sim, Duration::from_millis(100), &mut m.node_seconds)?;
        }
        let removal = sim.removal().removal(crashed).cloned();
        match removal.as_ref().and_then(|r| r.all_detection()) {
            Some(all) => m.all.push(all),
            None => {
                m.undetected += 1;
                m.all.push(TRIAL_WAIT_MAX);
            }
        }
        let first = removal.and_then(|r| r.first_detection());
        m.first.push(first.unwrap_or(TRIAL_WAIT_MAX));
        sim.start(index)?;
        run_counting(&mut sim, SETTLE, &mut m.node_seconds)?;
    }
    m.false_positive_events = sim.false_positives().unpartitioned() - fp_before;
    m.forced_out = sim.false_positives().forced_out() - forced_before;
    m.virtual_seconds = (sim.now() - measure_from).as_secs_f64();
    m.wall_seconds = started.elapsed().as_secs_f64();
    Ok(m)
}

/// Nearest-rank percentile of `samples` (`q` in 0..=100).
fn percentile(samples: &[Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let config = Config::lan();
    println!(
        "SWIM failure detection, seed {}, Config::lan() (probe {:?}, probe timeout {:?}, \
         suspicion mult {} x max mult {}, k = {}, gossip {:?} x fanout {}, retransmit mult {}, \
         push-pull {:?}), network 0.2 ms + exp(0.3 ms) latency\n",
        options.seed,
        config.probe_interval,
        config.probe_timeout,
        config.suspicion_mult,
        config.suspicion_max_mult,
        config.suspicion_confirmations,
        config.gossip_interval,
        config.gossip_fanout,
        config.retransmit_mult,
        config.push_pull_interval,
    );
    println!(
        "Observer: the next live slot after the crashed one{}.\n",
        if options.hint {
            ", hinted at the crash (`--hint`: probe it out of turn)"
        } else {
            ", not hinted"
        }
    );
    println!(
        "| n | loss | trials | first: median | first: p99 | all: median | all: p99 | undetected \
         | FP events / node-h | forced out / node-h | bytes / node / s | datagrams / node / s \
         | virtual s | wall s | observer suspects: median | p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut breakdown: Vec<(usize, f64, Measured, Point)> = Vec::new();
    for &nodes in &options.sizes {
        for &loss in &options.losses {
            let mut p = point(nodes, loss, options.quick);
            if let Some(quiet_s) = options.quiet_s {
                p.quiet = Duration::from_secs(quiet_s);
            }
            let m = match measure(options.seed, p, options.hint) {
                Ok(m) => m,
                Err(v) => {
                    eprintln!(
                        "n = {nodes}, loss = {loss}%: {v}\nreplay: cargo run --release -p \
                         idunno-sim --bin swim-bench -- --sizes {nodes} --loss {loss} --seed {}{}",
                        options.seed,
                        if options.hint { " --hint" } else { "" }
                    );
                    return ExitCode::FAILURE;
                }
            };
            let hours = m.node_seconds / 3600.0;
            let s = |d: Duration| format!("{:.2} s", d.as_secs_f64());
            println!(
                "| {nodes} | {loss}% | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.0} | {:.1} | {:.0} | {:.1} | {} | {} |",
                p.trials,
                s(percentile(&m.first, 50.0)),
                s(percentile(&m.first, 99.0)),
                s(percentile(&m.all, 50.0)),
                s(percentile(&m.all, 99.0)),
                m.undetected,
                m.false_positive_events as f64 / hours,
                m.forced_out as f64 / hours,
                m.bytes_per_node_second,
                m.datagrams_per_node_second,
                m.virtual_seconds,
                m.wall_seconds,
                s(percentile(&m.observer, 50.0)),
                s(percentile(&m.observer, 99.0)),
            );
            breakdown.push((nodes, loss, m, p));
        }
    }
    print_breakdown(&breakdown);
    ExitCode::SUCCESS
}

/// The quiet window's sent bytes per node per second by kind (records inside packets are
/// part of their packet's bytes; their columns say how much of it they are).
fn print_breakdown(points: &[(usize, f64, Measured, Point)]) {
    let Some((_, _, first, _)) = points.first() else {
        return;
    };
    println!(
        "\nSent bytes / node / s in the quiet window, by kind (record columns are part of the packet columns):\n"
    );
    let names: Vec<&str> = first.traffic.iter().map(|(name, _)| *name).collect();
    println!("| n | loss | {} |", names.join(" | "));
    println!("|---|---|{}", "---|".repeat(names.len()));
    for (nodes, loss, m, p) in points {
        let per = *nodes as f64 * p.quiet.as_secs_f64();
        let cells: Vec<String> = m
            .traffic
            .iter()
            .map(|(_, c)| format!("{:.0}", c.bytes as f64 / per))
            .collect();
        println!("| {nodes} | {loss}% | {} |", cells.join(" | "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_secs).collect();
        assert_eq!(percentile(&samples, 50.0), Duration::from_secs(50));
        assert_eq!(percentile(&samples, 99.0), Duration::from_secs(99));
        assert_eq!(percentile(&samples[..4], 99.0), Duration::from_secs(4));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }
}
