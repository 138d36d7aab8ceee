//! Scheduler fault scenarios: ten workers pull batches of two jobs of different cost from the
//! scheduler replicated by seven Raft voters, while 30% of the nodes (the leader among them)
//! crash at once, a partition splits the cluster, crashed nodes restart as new generations,
//! a batch size changes mid-job and a job is added later. `idunno_sim::sched::SchedChecker`
//! runs after every tick (every committed result never changes, at most one per input; no
//! lease held by a dead worker once its failure committed and one lease time passed), and at
//! the end every input of every job has exactly one result.
//!
//! Owns: the scenario scripts and the simulated measurements (printed with `--nocapture`).
//! Must never: use a seed that is not printed on failure, or run unbounded (every phase has a
//! deadline).
//!
//! Run: `cargo test --features sim -p idunno-sim --test scheduler` (a few seeds by default);
//! `SIM_SEEDS=200` for a longer sweep, `SIM_SEED=n` to replay one seed.
#![cfg(feature = "sim")]

use std::time::Duration;

use idunno_sim::checker::Violation;
use idunno_sim::scenario;
use idunno_sim::sched::{JobPlan, SchedMetrics, SchedOptions, SchedSim};

/// Seeds of the chaos scenario in the default run.
const SEEDS: u64 = 4;

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn plan(model: &str, inputs: usize, batch_size: u32, cost_ms: u64) -> JobPlan {
    JobPlan {
        model: model.into(),
        inputs,
        batch_size,
        cost: ms(cost_ms),
        lease_millis: 2_000,
    }
}

/// `count` distinct slots of `0..nodes` other than `except`, drawn with the sim's RNG.
fn others(sim: &mut SchedSim, nodes: usize, count: usize, except: usize) -> Vec<usize> {
    let mut slots: Vec<usize> = (0..nodes).filter(|&i| i != except).collect();
    for i in 0..count.min(slots.len()) {
        let j = i + sim
            .raft_mut()
            .world_mut()
            .random_below((slots.len() - i) as u64) as usize;
        slots.swap(i, j);
    }
    slots.truncate(count);
    slots
}

fn chaos(seed: u64) -> Result<SchedMetrics, Violation> {
    chaos_run(seed).map(|(m, _)| m)
}

/// The chaos script; returns the metrics and the world's trace digest.
fn chaos_run(seed: u64) -> Result<(SchedMetrics, u64), Violation> {
    let options = SchedOptions::lan();
    let nodes = options.nodes;
    let mut sim = SchedSim::new(seed, options)?;
    let cheap = sim.submit(&plan("cheap", 600, 4, 5));
    sim.submit(&plan("dear", 160, 2, 100));
    sim.run_for(ms(1_000))?;
    // Batch size change mid-job (C3).
    sim.set_batch_size(cheap, 8)?;
    sim.run_for(ms(500))?;
    // 30% of the nodes at once, the leader (coordinator) among them.
    let leader = sim.raft().leader().unwrap_or(0);
    let mut crashed = others(&mut sim, nodes, 2, leader);
    crashed.push(leader);
    sim.crash(&crashed);
    sim.run_for(ms(500))?;
    // A job added later.
    sim.submit(&plan("later", 150, 4, 10));
    sim.run_for(ms(1_000))?;
    // A partition: three nodes against the rest, then healed.
    let side = others(&mut sim, nodes, 3, usize::MAX);
    sim.partition(&side);
    sim.run_for(ms(1_500))?;
    sim.heal();
    sim.run_for(ms(500))?;
    // The crashed nodes come back as new generations.
    for slot in crashed {
        sim.restart(slot)?;
    }
    let deadline = sim.now() + Duration::from_secs(60);
    sim.run_until_finished(deadline)?;
    sim.final_check()?;
    Ok((sim.metrics().clone(), sim.raft().world().trace_digest()))
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let s = scenario!("the_same_seed_gives_the_same_run", 1);
    s.run(|seed| {
        let (a, digest_a) = chaos_run(seed)?;
        let (b, digest_b) = chaos_run(seed)?;
        assert_eq!(digest_a, digest_b, "trace digests differ");
        assert_eq!(a.moved_elsewhere, b.moved_elsewhere);
        assert_eq!(a.completions, b.completions);
        Ok::<_, Violation>(())
    });
}

#[test]
fn crash_30_percent_with_the_leader_partition_restart_every_input_one_result() {
    let s = scenario!(
        "crash_30_percent_with_the_leader_partition_restart_every_input_one_result",
        SEEDS
    );
    let results = s.run(chaos);
    for (seed, m) in &results {
        assert!(!m.detections.is_empty(), "seed {seed}: no failure detected");
        assert!(
            !m.first_batch_waits.is_empty(),
            "seed {seed}: no job started"
        );
    }
    let waits: Vec<Duration> = results
        .iter()
        .flat_map(|(_, m)| m.moved_elsewhere.clone())
        .collect();
    eprintln!(
        "chaos: {} seeds, crash->inputs elsewhere max {:?}",
        results.len(),
        waits.iter().max()
    );
}

fn percentile(mut v: Vec<f64>, pct: usize) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() * pct).div_ceil(100)).clamp(1, v.len()) - 1]
}

fn secs(v: &[Duration]) -> Vec<f64> {
    v.iter().map(Duration::as_secs_f64).collect()
}

/// Fair-time band between a 5 ms and a 100 ms model (20x cost), the wait of a job added
/// later, a worker crash and a leader crash; printed as a markdown table (simulated time).
fn measure(seed: u64) -> Result<SchedMetrics, Violation> {
    let options = SchedOptions::lan();
    let nodes = options.nodes;
    let mut sim = SchedSim::new(seed, options)?;
    sim.submit(&plan("cheap", 2_400, 8, 5));
    sim.submit(&plan("dear", 2_400, 2, 100));
    sim.run_for(ms(13_000))?;
    sim.submit(&plan("later", 300, 4, 10));
    sim.run_for(ms(2_000))?;
    // One worker that holds a lease (not the leader), then the leader.
    let leader = sim.raft().leader().unwrap_or(0);
    let victim = others(&mut sim, nodes, 1, leader);
    sim.crash(&victim);
    sim.run_for(ms(3_000))?;
    let leader = sim.raft().leader().unwrap_or(0);
    sim.crash(&[leader]);
    sim.run_for(ms(3_000))?;
    Ok(sim.metrics().clone())
}

#[test]
fn fair_time_new_job_and_failover_measurements() {
    let s = scenario!("fair_time_new_job_and_failover_measurements", 1);
    let results = s.run(measure);
    let all = |f: fn(&SchedMetrics) -> Vec<f64>| -> Vec<f64> {
        results.iter().flat_map(|(_, m)| f(m)).collect()
    };
    let bands = all(|m| m.fair_bands.clone());
    let first = all(|m| secs(&m.first_batch_waits));
    let moved = all(|m| secs(&m.moved_elsewhere));
    let leader = all(|m| secs(&m.leader_to_next_grant));
    let detect = all(|m| secs(&m.detections));
    println!(
        "| simulated ({} seeds) | samples | median | p99 | max |",
        results.len()
    );
    println!("|---|---|---|---|---|");
    for (name, v) in [
        ("fair-time band (max-min)/mean, 10 s rates", &bands),
        ("new job: submit -> first batch (s)", &first),
        ("crash -> NodeFailed committed (s)", &detect),
        ("worker crash -> its inputs leased elsewhere (s)", &moved),
        ("leader crash -> next lease committed (s)", &leader),
    ] {
        println!(
            "| {name} | {} | {:.3} | {:.3} | {:.3} |",
            v.len(),
            percentile(v.clone(), 50),
            percentile(v.clone(), 99),
            percentile(v.clone(), 100)
        );
    }
    assert!(!bands.is_empty(), "no fair-time sample");
    assert!(!leader.is_empty(), "no leader failover measured");
}
