//! Consensus fault scenarios: Raft clusters under a key-value workload with crashes (losing
//! unsynced writes), restarts, symmetric and one-way partitions, loss, duplication and
//! reordering, checked after every step by `idunno_sim::raft_checker` (election safety, log
//! matching, leader completeness, state-machine safety, committed entries never change) and,
//! after the faults heal, by a convergence check (a leader commits, every committed entry is
//! applied exactly once on every live node).
//!
//! Owns: the scenario scripts and what must hold in each.
//! Must never: use a seed that is not printed on failure, or run unbounded (every phase has a
//! deadline).
//!
//! Run: `cargo test --features sim -p idunno-sim --test consensus` (500 seeds per scenario, 1000 for chaos);
//! `SIM_SEEDS=10000` for a long sweep, `SIM_SEED=n` to replay one seed.
#![cfg(feature = "sim")]

use std::time::Duration;

use idunno_core::time::Instant;
use idunno_sim::checker::Violation;
use idunno_sim::raft::Outcome;
use idunno_sim::{FaultOptions, RaftOptions, RaftSim, scenario};

/// Seeds per scenario in the default run (each scenario takes well under a second per
/// 100 seeds in the dev profile).
const SEEDS: u64 = 500;

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn fail(sim: &RaftSim, checker: &'static str, detail: String) -> Violation {
    Violation {
        checker,
        at: sim.now(),
        detail,
    }
}

/// A started cluster that has elected a leader and committed some of the workload.
fn cluster(seed: u64, options: RaftOptions) -> Result<RaftSim, Violation> {
    let mut sim = RaftSim::new(seed, options).map_err(|detail| Violation {
        checker: "setup",
        at: Instant::ZERO,
        detail,
    })?;
    sim.start_all()?;
    let deadline = sim.now() + ms(5_000);
    while sim.leader().is_none() || sim.checker().committed().len() < 3 {
        if sim.now() >= deadline {
            return Err(fail(&sim, "bootstrap", "no leader committing".into()));
        }
        sim.run_for(ms(50))?;
    }
    Ok(sim)
}

/// `count` distinct slots other than `except`, drawn with the simulation's RNG.
fn others(sim: &mut RaftSim, count: usize, except: usize) -> Vec<usize> {
    let mut slots: Vec<usize> = (0..sim.world().node_count())
        .filter(|&i| i != except)
        .collect();
    for i in 0..count.min(slots.len()) {
        let j = i + sim.world_mut().random_below((slots.len() - i) as u64) as usize;
        slots.swap(i, j);
    }
    slots.truncate(count);
    slots
}

/// Runs until a leader of a term above `term_before` commits an entry of its own term, which
/// must happen within `within`; returns how long it took.
fn new_leader_commits(
    sim: &mut RaftSim,
    term_before: u64,
    within: Duration,
) -> Result<Duration, Violation> {
    let start = sim.now();
    let deadline = start + within;
    loop {
        let committed_new = sim
            .checker()
            .committed()
            .last_key_value()
            .is_some_and(|(_, e)| e.term > term_before);
        if committed_new {
            return Ok(sim.now() - start);
        }
        if sim.now() >= deadline {
            return Err(fail(
                sim,
                "new_leader_commits",
                format!("no commit in a term above {term_before} within {within:?}"),
            ));
        }
        sim.run_for(ms(10))?;
    }
}

/// Heals the network, restarts every crashed slot and waits for convergence.
fn heal_and_converge(sim: &mut RaftSim) -> Result<Outcome, Violation> {
    sim.heal_network();
    for slot in 0..sim.world().node_count() {
        if !sim.world().is_running(slot) {
            sim.start(slot)?;
        }
    }
    let deadline = sim.now() + ms(10_000);
    sim.run_until_converged(deadline)?;
    Ok(sim.outcome())
}

fn leader_term(sim: &RaftSim) -> Result<(usize, u64), Violation> {
    let leader = sim
        .leader()
        .ok_or_else(|| fail(sim, "leader", "no leader".into()))?;
    let term = sim.raft(leader).map_or(0, |r| r.term());
    Ok((leader, term))
}

fn report(name: &str, results: &[(u64, (Outcome, Duration))]) {
    let seeds = results.len();
    let committed: usize = results.iter().map(|(_, (o, _))| o.committed).sum();
    let steps: u64 = results.iter().map(|(_, (o, _))| o.steps).sum();
    let accepted: u64 = results.iter().map(|(_, (o, _))| o.proposals_accepted).sum();
    let refused: u64 = results.iter().map(|(_, (o, _))| o.proposals_refused).sum();
    let terms: usize = results.iter().map(|(_, (o, _))| o.leader_terms).sum();
    let installed: u64 = results
        .iter()
        .map(|(_, (o, _))| o.snapshots_installed)
        .sum();
    let compactions: u64 = results.iter().map(|(_, (o, _))| o.compactions).sum();
    let reads: u64 = results.iter().map(|(_, (o, _))| o.reads_served).sum();
    let mut failover: Vec<Duration> = results.iter().map(|(_, (_, d))| *d).collect();
    failover.sort_unstable();
    let median = failover.get(seeds / 2).copied().unwrap_or_default();
    let max = failover.last().copied().unwrap_or_default();
    eprintln!(
        "{name}: {seeds} seeds, {steps} steps, {terms} leader terms, {committed} entries \
         committed, proposals {accepted} accepted / {refused} refused, {compactions} \
         compactions, {installed} snapshots installed, {reads} linearizable reads checked; time to first commit of \
         a new term after the fault: median {median:?}, max {max:?}"
    );
}

/// 7 voters (the default 10-node cluster's voter set): 2 (30%) or, on odd seeds, 3 of them
/// crash at once, the leader among them; the remaining majority elects and commits.
#[test]
fn crash_2_or_3_of_7_including_the_leader() {
    let s = scenario!("crash_2_or_3_of_7_including_the_leader", SEEDS);
    let results = s.run(|seed| {
        let mut sim = cluster(seed, RaftOptions::lan(7))?;
        sim.run_for(ms(300))?;
        let (leader, term) = leader_term(&sim)?;
        let mut victims = others(&mut sim, 1 + (seed % 2) as usize, leader);
        victims.push(leader);
        sim.crash(&victims);
        let failover = new_leader_commits(&mut sim, term, ms(3_000))?;
        sim.run_for(ms(200))?;
        Ok::<_, Violation>((heal_and_converge(&mut sim)?, failover))
    });
    report("crash_2_or_3_of_7_including_the_leader", &results);
}

#[test]
fn leader_crashes_and_restarts_losing_unsynced_writes() {
    let s = scenario!("leader_crashes_and_restarts_losing_unsynced_writes", SEEDS);
    let results = s.run(|seed| {
        let options = RaftOptions {
            fsync_delay: ms(4),
            propose_interval: ms(5),
            ..RaftOptions::lan(5)
        };
        let mut sim = cluster(seed, options)?;
        let mut failover = Duration::ZERO;
        for _ in 0..3 {
            let (leader, term) = leader_term(&sim)?;
            sim.crash(&[leader]);
            failover = failover.max(new_leader_commits(&mut sim, term, ms(3_000))?);
            // A follower crashes too and comes straight back without its unsynced tail.
            let (new_leader, _) = leader_term(&sim)?;
            let follower = others(&mut sim, 1, new_leader)[0];
            sim.restart(follower)?;
            sim.run_for(ms(100))?;
            if !sim.world().is_running(leader) {
                sim.start(leader)?;
            }
            sim.run_for(ms(200))?;
        }
        Ok::<_, Violation>((heal_and_converge(&mut sim)?, failover))
    });
    report(
        "leader_crashes_and_restarts_losing_unsynced_writes",
        &results,
    );
}

#[test]
fn symmetric_partition_isolates_the_leader_in_a_minority() {
    let s = scenario!(
        "symmetric_partition_isolates_the_leader_in_a_minority",
        SEEDS
    );
    let results = s.run(|seed| {
        let mut sim = cluster(seed, RaftOptions::lan(5))?;
        let (leader, term) = leader_term(&sim)?;
        let mut side = others(&mut sim, 1, leader);
        side.push(leader);
        sim.world_mut().network_mut().partition(&side, true);
        let failover = new_leader_commits(&mut sim, term, ms(3_000))?;
        sim.run_for(ms(500))?;
        // Check-quorum: the old leader has stepped down.
        if sim
            .raft(leader)
            .is_some_and(|r| r.is_leader() && r.term() == term)
        {
            return Err(fail(
                &sim,
                "check_quorum",
                "minority leader still leads".into(),
            ));
        }
        Ok::<_, Violation>((heal_and_converge(&mut sim)?, failover))
    });
    report(
        "symmetric_partition_isolates_the_leader_in_a_minority",
        &results,
    );
}

#[test]
fn one_way_partitions_of_the_leader() {
    let s = scenario!("one_way_partitions_of_the_leader", SEEDS);
    let results = s.run(|seed| {
        let mut sim = cluster(seed, RaftOptions::lan(5))?;
        let (leader, term) = leader_term(&sim)?;
        let n = sim.world().node_count();
        if seed % 2 == 0 {
            // The leader can hear but not speak.
            sim.world_mut().network_mut().partition(&[leader], false);
        } else {
            // The leader can speak but not hear: it keeps followers in its lease until
            // check-quorum makes it step down.
            for from in (0..n).filter(|&i| i != leader) {
                sim.world_mut().network_mut().block(from, leader);
            }
        }
        let failover = new_leader_commits(&mut sim, term, ms(4_000))?;
        sim.run_for(ms(300))?;
        Ok::<_, Violation>((heal_and_converge(&mut sim)?, failover))
    });
    report("one_way_partitions_of_the_leader", &results);
}

#[test]
fn a_follower_cut_off_cannot_depose_a_healthy_leader() {
    let s = scenario!("a_follower_cut_off_cannot_depose_a_healthy_leader", SEEDS);
    let results = s.run(|seed| {
        let mut sim = cluster(seed, RaftOptions::lan(5))?;
        let (leader, term) = leader_term(&sim)?;
        let follower = others(&mut sim, 1, leader)[0];
        sim.world_mut().network_mut().partition(&[follower], true);
        sim.run_for(ms(2_000))?;
        sim.heal_network();
        sim.run_for(ms(1_000))?;
        let (after, term_after) = leader_term(&sim)?;
        if (after, term_after) != (leader, term) {
            return Err(fail(
                &sim,
                "pre_vote",
                format!("leader {leader} term {term} replaced by {after} term {term_after}"),
            ));
        }
        Ok::<_, Violation>((heal_and_converge(&mut sim)?, Duration::ZERO))
    });
    report(
        "a_follower_cut_off_cannot_depose_a_healthy_leader",
        &results,
    );
}

#[test]
fn loss_3_percent_with_duplication() {
    let s = scenario!("loss_3_percent_with_duplication", SEEDS);
    let results = s.run(|seed| {
        let options = RaftOptions {
            faults: FaultOptions {
                duplicate_percent: 3.0,
                ..FaultOptions::lossy(3.0)
            },
            ..RaftOptions::lan(5)
        };
        let mut sim = cluster(seed, options)?;
        let (leader, term) = leader_term(&sim)?;
        sim.run_for(ms(500))?;
        sim.crash(&[leader]);
        let failover = new_leader_commits(&mut sim, term, ms(4_000))?;
        Ok::<_, Violation>((heal_and_converge(&mut sim)?, failover))
    });
    report("loss_3_percent_with_duplication", &results);
}

#[test]
fn loss_30_percent() {
    let s = scenario!("loss_30_percent", SEEDS);
    let results = s.run(|seed| {
        let mut sim = cluster(seed, RaftOptions::lan(5))?;
        sim.world_mut()
            .network_mut()
            .set_options(FaultOptions {
                duplicate_percent: 5.0,
                ..FaultOptions::lossy(30.0)
            })
            .map_err(|e| fail(&sim, "setup", e))?;
        sim.run_for(ms(1_500))?;
        Ok::<_, Violation>((heal_and_converge(&mut sim)?, Duration::ZERO))
    });
    report("loss_30_percent", &results);
}

/// Random faults for 3 s: crashes (of any number of voters), restarts that lose unsynced
/// writes, symmetric and one-way partitions of random groups, heals, and loss/duplication
/// changes; 3, 5 or 7 voters and a varying fsync latency. Safety is checked throughout;
/// liveness after everything heals.
#[test]
fn chaos() {
    let s = scenario!("chaos", 2 * SEEDS);
    let results = s.run(|seed| {
        let voters = 3 + 2 * (seed % 3) as usize;
        let options = RaftOptions {
            fsync_delay: Duration::from_micros(200 + (seed / 3 % 8) * 700),
            propose_interval: ms(10),
            ..RaftOptions::lan(voters)
        };
        let mut sim = cluster(seed, options)?;
        for _ in 0..20 {
            chaos_step(&mut sim, voters)?;
            let pause = 20 + sim.world_mut().random_below(250);
            sim.run_for(ms(pause))?;
        }
        Ok::<_, Violation>((heal_and_converge(&mut sim)?, Duration::ZERO))
    });
    report("chaos", &results);
}

fn chaos_step(sim: &mut RaftSim, voters: usize) -> Result<(), Violation> {
    let pick = sim.world_mut().random_below(voters as u64) as usize;
    match sim.world_mut().random_below(9) {
        0 | 1 => sim.crash(&[pick]),
        2 | 3 if !sim.world().is_running(pick) => sim.start(pick)?,
        2 | 3 => sim.restart(pick)?,
        4 | 5 => {
            let size = 1 + sim.world_mut().random_below((voters / 2) as u64) as usize;
            let side = others(sim, size, voters);
            let symmetric = sim.world_mut().random_below(2) == 0;
            sim.world_mut().network_mut().partition(&side, symmetric);
        }
        6 => sim.heal_network(),
        7 => {
            let loss = sim.world_mut().random_below(40) as f64;
            let options = FaultOptions {
                duplicate_percent: 5.0,
                ..FaultOptions::lossy(loss)
            };
            let set = sim.world_mut().network_mut().set_options(options);
            set.map_err(|e| fail(sim, "setup", e))?;
        }
        _ => {
            if let Some(leader) = sim.leader() {
                sim.crash(&[leader]);
            }
        }
    }
    Ok(())
}

#[test]
fn same_seed_same_run() {
    let run = |seed| {
        let mut sim = cluster(seed, RaftOptions::lan(5)).expect("bootstraps");
        let (leader, _) = leader_term(&sim).expect("leader");
        sim.crash(&[leader]);
        sim.run_for(ms(1_000)).expect("runs");
        (
            sim.world().trace_digest(),
            sim.checker().committed().clone(),
        )
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7).0, run(8).0);
}
