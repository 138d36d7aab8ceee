//! File-system fault scenarios: 10 storage nodes, clients putting, getting and deleting, the
//! namespace applied through a metadata log (a sequencer for many seeds, the real Raft cluster
//! for fewer), under 30% simultaneous crashes, partitions, crash-restarts, corrupt copies and a
//! metadata-leader crash, checked after every tick by `idunno_sim::dfs_checker` (committed
//! versions never change, versions increase, one version per acknowledged put in order, no
//! acknowledged version lost while fewer than 4 of its copies failed) and, after the faults, by
//! the convergence check (every file back at its replication factor on good copies) and the
//! final pass.
//!
//! Owns: the scenario scripts and what must hold in each.
//! Must never: use a seed that is not printed on failure, or run unbounded (every phase has a
//! deadline).
//!
//! Run: `cargo test --features sim -p idunno-sim --test dfs` (100 seeds per sequencer scenario,
//! 50 for the sequencer chaos, 30 per Raft-backed scenario); `SIM_SEEDS=10000` for a long sweep, `SIM_SEED=n` to replay one seed. The
//! restore-time measurement prints with `-- --nocapture restore_time`.
#![cfg(feature = "sim")]

use std::time::Duration;

use idunno_core::time::Instant;
use idunno_sim::checker::Violation;
use idunno_sim::dfs::{DfsOptions, DfsSim, MetadataLog, RaftLog, Sequencer};
use idunno_sim::{RaftOptions, RaftSim, scenario};

/// Seeds per sequencer scenario in the default run.
const SEEDS: u64 = 100;
/// Seeds per Raft-backed scenario in the default run.
const RAFT_SEEDS: u64 = 30;

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn setup(detail: String) -> Violation {
    Violation {
        checker: "setup",
        at: Instant::ZERO,
        detail,
    }
}

fn sequenced(seed: u64, options: DfsOptions) -> Result<DfsSim<Sequencer>, Violation> {
    DfsSim::new(seed, options, Sequencer::default()).map_err(setup)
}

fn raft_backed(seed: u64, options: DfsOptions) -> Result<DfsSim<RaftLog>, Violation> {
    let mut raft = RaftSim::new(seed, RaftOptions::lan(7)).map_err(setup)?;
    raft.set_workload(false);
    raft.start_all()?;
    let deadline = raft.now() + ms(5_000);
    while raft.leader().is_none() {
        if raft.now() >= deadline {
            return Err(setup("no metadata leader".into()));
        }
        raft.run_for(ms(50))?;
    }
    DfsSim::new(seed, options, RaftLog::new(raft)).map_err(setup)
}

/// Heals, restarts every crashed node, and waits for convergence (bounded).
fn settle<L: MetadataLog>(sim: &mut DfsSim<L>) -> Result<Instant, Violation> {
    sim.heal();
    for i in 0..sim.nodes().len() {
        sim.restart(i);
    }
    let deadline = sim.now() + ms(30_000);
    sim.run_until_converged(deadline)
}

fn expect(sim_now: Instant, ok: bool, what: &str) -> Result<(), Violation> {
    if ok {
        Ok(())
    } else {
        Err(Violation {
            checker: "scenario",
            at: sim_now,
            detail: what.into(),
        })
    }
}

#[test]
fn steady_puts_and_gets() {
    scenario!("steady_puts_and_gets", SEEDS).run(|seed| {
        let mut sim = sequenced(seed, DfsOptions::default())?;
        sim.run_for(ms(3_000))?;
        settle(&mut sim)?;
        let stats = sim.stats();
        expect(sim.now(), stats.puts_acked > 10, "puts acknowledged")?;
        expect(sim.now(), stats.gets_ok > 0, "gets served")?;
        expect(
            sim.now(),
            stats.gets_failed == 0,
            "no get fails without faults",
        )?;
        expect(
            sim.now(),
            stats.repairs_started == 0,
            "no repairs without faults",
        )?;
        Ok::<_, Violation>(())
    });
}

#[test]
fn crash_30_percent_mid_writes() {
    scenario!("crash_30_percent_mid_writes", SEEDS).run(|seed| {
        let mut sim = sequenced(seed, DfsOptions::default())?;
        sim.run_for(ms(1_500))?;
        let victims = sim.random_nodes(3);
        sim.crash(&victims);
        sim.run_for(ms(3_000))?;
        expect(sim.now(), sim.stats().repairs_landed > 0, "repairs ran")?;
        settle(&mut sim)?;
        expect(
            sim.now(),
            sim.checker().acked_count() > 5,
            "puts acknowledged",
        )?;
        Ok::<_, Violation>(())
    });
}

#[test]
fn concurrent_writers_to_one_name() {
    scenario!("concurrent_writers_to_one_name", SEEDS).run(|seed| {
        let options = DfsOptions {
            clients: 6,
            names: 1,
            put_percent: 90,
            delete_percent: 0,
            think_time: ms(1),
            file_bytes_max: 1 << 20,
            ..DfsOptions::default()
        };
        let mut sim = sequenced(seed, options)?;
        sim.run_for(ms(1_000))?;
        let victims = sim.random_nodes(2);
        sim.crash(&victims);
        sim.run_for(ms(1_000))?;
        settle(&mut sim)?;
        let acks = sim.checker().acks().get("f0").map_or(0, Vec::len);
        expect(sim.now(), acks > 20, "many acknowledged puts to one name")?;
        Ok::<_, Violation>(())
    });
}

#[test]
fn partition_and_heal() {
    scenario!("partition_and_heal", SEEDS).run(|seed| {
        let mut sim = sequenced(seed, DfsOptions::default())?;
        sim.run_for(ms(1_000))?;
        let cut = sim.random_nodes(3);
        sim.partition(&cut);
        // Longer than detection: the cut nodes are declared failed and rejoin as new
        // incarnations after the heal.
        let span = 500 + sim.random_below(2_500);
        sim.run_for(ms(span))?;
        sim.heal();
        sim.run_for(ms(1_000))?;
        settle(&mut sim)?;
        Ok::<_, Violation>(())
    });
}

#[test]
fn crash_restart_rounds() {
    scenario!("crash_restart_rounds", SEEDS).run(|seed| {
        let mut sim = sequenced(seed, DfsOptions::default())?;
        sim.run_for(ms(500))?;
        for _ in 0..6 {
            let count = 1 + sim.random_below(3) as usize;
            let victims = sim.random_nodes(count);
            sim.crash(&victims);
            let down = 100 + sim.random_below(2_000);
            sim.run_for(ms(down))?;
            for &v in &victims {
                sim.restart(v);
            }
            // Let repair catch up before the next round (at most 3 copies lost at a time).
            let deadline = sim.now() + ms(20_000);
            while !sim.fully_replicated() && sim.now() < deadline {
                sim.run_for(ms(100))?;
            }
        }
        settle(&mut sim)?;
        Ok::<_, Violation>(())
    });
}

#[test]
fn corrupt_copies_are_reported_and_replaced() {
    scenario!("corrupt_copies_are_reported_and_replaced", SEEDS).run(|seed| {
        let mut sim = sequenced(seed, DfsOptions::default())?;
        sim.run_for(ms(1_500))?;
        // Quiet first, so no overwrite or delete retires a corrupted blob before it is found.
        sim.set_workload(false);
        sim.run_for(ms(1_000))?;
        let mut corrupted = 0;
        for v in sim.random_nodes(3) {
            corrupted += usize::from(sim.corrupt(v).is_some());
        }
        sim.run_for(ms(3_000))?;
        // Convergence requires every listed copy to hash right: the bad ones were replaced.
        settle(&mut sim)?;
        let reported = sim.stats().corrupt_reported;
        expect(
            sim.now(),
            corrupted == 0 || reported > 0,
            "a corrupt copy was reported",
        )?;
        Ok::<_, Violation>(())
    });
}

/// After a second of traffic, crashes the metadata leader and three random nodes at once, runs
/// 2.5 s, and restarts the leader with its log.
fn crash_the_leader_and_three(sim: &mut DfsSim<RaftLog>) -> Result<(), Violation> {
    sim.run_for(ms(1_000))?;
    let leader = sim.log_mut().raft().leader();
    if let Some(leader) = leader {
        sim.log_mut().raft().crash(&[leader]);
    }
    let victims = sim.random_nodes(3);
    sim.crash(&victims);
    sim.run_for(ms(2_500))?;
    if let Some(leader) = leader {
        sim.log_mut().raft().restart(leader)?;
    }
    Ok(())
}

#[test]
fn raft_backed_with_leader_and_storage_crashes() {
    scenario!("raft_backed_with_leader_and_storage_crashes", RAFT_SEEDS).run(|seed| {
        let mut sim = raft_backed(seed, DfsOptions::default())?;
        crash_the_leader_and_three(&mut sim)?;
        sim.run_for(ms(500))?;
        settle(&mut sim)?;
        expect(
            sim.now(),
            sim.checker().acked_count() > 5,
            "puts acknowledged",
        )?;
        if std::env::var_os("SIM_VERBOSE").is_some() {
            eprintln!("seed {seed}: {:?}", sim.stats());
        }
        Ok::<_, Violation>(())
    });
}

fn three_storage_less() -> DfsOptions {
    DfsOptions {
        storeless: 3,
        ..DfsOptions::default()
    }
}

/// Three of ten nodes have no blob store: they never appear as a replica (checked after every
/// tick by the simulator), under 30% crashes.
#[test]
fn storage_less_nodes_never_hold_replicas() {
    scenario!("storage_less_nodes_never_hold_replicas", SEEDS).run(|seed| {
        let mut sim = sequenced(seed, three_storage_less())?;
        let storeless = sim.nodes().iter().filter(|n| !n.store).count();
        expect(sim.now(), storeless == 3, "three storage-less nodes")?;
        sim.run_for(ms(1_500))?;
        let victims = sim.random_nodes(3);
        sim.crash(&victims);
        sim.run_for(ms(3_000))?;
        settle(&mut sim)?;
        expect(
            sim.now(),
            sim.checker().acked_count() > 5,
            "puts acknowledged",
        )?;
        // The sequencer applies the announcements before the first put: from then on no
        // upload or repair copy is ever sent to a node without a store (it would be refused
        // and placed again, so the check after every tick alone could not tell).
        expect(
            sim.now(),
            sim.stats().transfers_to_storeless == 0,
            "a transfer was sent to a node without a blob store",
        )?;
        Ok::<_, Violation>(())
    });
}

/// The same over Raft, where the stores' announcements are applied one by one (an early put
/// may be placed on fewer nodes and repaired later) and a metadata leader crashes.
#[test]
fn raft_backed_storage_less_nodes_never_hold_replicas() {
    scenario!(
        "raft_backed_storage_less_nodes_never_hold_replicas",
        RAFT_SEEDS / 3
    )
    .run(|seed| {
        let mut sim = raft_backed(seed, three_storage_less())?;
        crash_the_leader_and_three(&mut sim)?;
        settle(&mut sim)?;
        expect(
            sim.now(),
            sim.checker().acked_count() > 5,
            "puts acknowledged",
        )?;
        Ok::<_, Violation>(())
    });
}

#[test]
fn raft_backed_with_partitions() {
    scenario!("raft_backed_with_partitions", RAFT_SEEDS).run(|seed| {
        let mut sim = raft_backed(seed, DfsOptions::default())?;
        sim.run_for(ms(800))?;
        // Cut the metadata leader off (it keeps believing it leads for a while) and three
        // storage nodes; heal both after a random span.
        if let Some(leader) = sim.log_mut().raft().leader() {
            sim.log_mut()
                .raft()
                .world_mut()
                .network_mut()
                .partition(&[leader], true);
        }
        let cut = sim.random_nodes(3);
        sim.partition(&cut);
        let span = 300 + sim.random_below(2_500);
        sim.run_for(ms(span))?;
        sim.log_mut().raft().heal_network();
        sim.heal();
        sim.run_for(ms(500))?;
        settle(&mut sim)?;
        Ok::<_, Violation>(())
    });
}

/// Random faults for `rounds` rounds: crashes, partitions, restarts, heals and corrupt copies,
/// never more than `replication - 1` storage faults between two moments of full replication
/// (so no blob can lose every copy), plus `metadata_fault` (the Raft log's own faults) on some
/// rounds.
fn chaos<L: MetadataLog>(
    sim: &mut DfsSim<L>,
    rounds: usize,
    mut metadata_fault: impl FnMut(&mut DfsSim<L>) -> Result<(), Violation>,
) -> Result<(), Violation> {
    let mut faults_since_full = 0;
    for _ in 0..rounds {
        if sim.fully_replicated() {
            faults_since_full = 0;
        }
        let down: Vec<usize> = (0..sim.nodes().len())
            .filter(|&i| !sim.nodes()[i].up)
            .collect();
        let unreachable = (0..sim.nodes().len())
            .filter(|&i| !sim.reachable(i))
            .count();
        match sim.random_below(6) {
            0 | 1 => {
                let k = 1 + sim.random_below(3) as usize;
                // At most 30% of the nodes out at once, and at most 3 copies lost per blob.
                if faults_since_full + k <= 3 && unreachable + k <= 3 {
                    let victims = sim.random_nodes(k);
                    faults_since_full += victims.iter().filter(|&&v| sim.reachable(v)).count();
                    if sim.random_below(2) == 0 {
                        sim.crash(&victims);
                    } else {
                        sim.partition(&victims);
                    }
                }
            }
            2 => {
                for v in down {
                    sim.restart(v);
                }
            }
            3 => sim.heal(),
            4 => {
                if faults_since_full < 3 {
                    let victim = sim.random_nodes(1);
                    if let Some(&v) = victim.first()
                        && sim.corrupt(v).is_some()
                    {
                        faults_since_full += 1;
                    }
                }
            }
            _ => metadata_fault(sim)?,
        }
        let span = 100 + sim.random_below(1_500);
        sim.run_for(ms(span))?;
    }
    Ok(())
}

#[test]
fn chaos_sequenced() {
    scenario!("chaos_sequenced", SEEDS / 2).run(|seed| {
        let mut sim = sequenced(seed, DfsOptions::default())?;
        sim.run_for(ms(500))?;
        chaos(&mut sim, 12, |_| Ok(()))?;
        settle(&mut sim)?;
        if std::env::var_os("SIM_VERBOSE").is_some() {
            eprintln!("seed {seed}: {:?}", sim.stats());
        }
        Ok::<_, Violation>(())
    });
}

#[test]
fn chaos_raft_backed() {
    scenario!("chaos_raft_backed", RAFT_SEEDS).run(|seed| {
        let mut sim = raft_backed(seed, DfsOptions::default())?;
        sim.run_for(ms(500))?;
        chaos(&mut sim, 12, |sim| {
            // Crash the metadata leader if at most two voters are down, else restart them all.
            let raft = sim.log_mut().raft();
            let down: Vec<usize> = (0..7).filter(|i| !raft.live().contains(i)).collect();
            if down.len() < 3
                && let Some(leader) = raft.leader()
            {
                raft.crash(&[leader]);
                return Ok(());
            }
            down.into_iter().try_for_each(|i| raft.restart(i))
        })?;
        for i in 0..7 {
            if !sim.log_mut().raft().live().contains(&i) {
                sim.log_mut().raft().restart(i)?;
            }
        }
        sim.log_mut().raft().heal_network();
        settle(&mut sim)?;
        if std::env::var_os("SIM_VERBOSE").is_some() {
            eprintln!(
                "seed {seed}: {:?} {:?}",
                sim.stats(),
                sim.log_mut().raft().outcome()
            );
        }
        Ok::<_, Violation>(())
    });
}

#[test]
fn same_seed_same_run() {
    let run = |seed: u64| -> Result<String, Violation> {
        let mut sim = sequenced(seed, DfsOptions::default())?;
        sim.run_for(ms(1_000))?;
        let victims = sim.random_nodes(3);
        sim.crash(&victims);
        sim.run_for(ms(2_000))?;
        let mut raft = raft_backed(seed, DfsOptions::default())?;
        raft.run_for(ms(1_000))?;
        Ok(format!(
            "{:?} {:?} {:?} {:?}",
            sim.stats(),
            sim.checker().acks(),
            raft.stats(),
            raft.checker().acks()
        ))
    };
    for seed in [1, 7] {
        let a = run(seed).expect("runs");
        let b = run(seed).expect("runs");
        assert_eq!(a, b, "seed {seed} ran differently twice");
    }
}

/// Simulated time from the detection of a crash of 3 of 10 nodes to every file back at its
/// replication factor (workload stopped, files already fully replicated before the crash).
/// Prints median and p99 over the seeds. `SIM_DFS_MAX_PARALLEL=n` overrides the bound on
/// parallel copies (default 8).
#[test]
fn restore_time_after_crash_of_3() {
    let mut options = DfsOptions::default();
    if let Some(n) = std::env::var("SIM_DFS_MAX_PARALLEL")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        options.max_parallel = n;
    }
    let max_parallel = options.max_parallel;
    let results = scenario!("restore_time_after_crash_of_3", SEEDS).run(|seed| {
        let mut sim = sequenced(seed, options.clone())?;
        sim.run_for(ms(3_000))?;
        sim.run_until_converged(sim.now() + ms(60_000))?;
        let victims = sim.random_nodes(3);
        sim.crash(&victims);
        let deadline = sim.now() + ms(60_000);
        loop {
            sim.run_for(ms(5))?;
            let detected = sim.last_detection().is_some();
            if detected && sim.fully_replicated() {
                break;
            }
            expect(sim.now(), sim.now() < deadline, "restored within 60 s")?;
        }
        let detected = sim.last_detection().unwrap_or(Instant::ZERO);
        let blobs = sim
            .log()
            .leader_state()
            .map_or(0, |s| s.dfs().blobs().len());
        Ok::<_, Violation>((
            sim.now().saturating_duration_since(detected),
            blobs,
            sim.stats().repairs_landed,
        ))
    });
    let mut times: Vec<Duration> = results.iter().map(|(_, (t, _, _))| *t).collect();
    times.sort();
    if times.is_empty() {
        return;
    }
    let p = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    let copies: u64 = results.iter().map(|(_, (_, _, c))| *c).sum();
    let blobs: usize = results.iter().map(|(_, (_, b, _))| *b).sum();
    eprintln!(
        "restore after crash of 3/10 (simulated, max_parallel {max_parallel}): seeds {}, \
         median {:?}, p99 {:?}, max {:?}; mean blobs {:.1}, mean copies {:.1}",
        times.len(),
        p(0.5),
        p(0.99),
        times[times.len() - 1],
        blobs as f64 / times.len() as f64,
        copies as f64 / times.len() as f64,
    );
}
