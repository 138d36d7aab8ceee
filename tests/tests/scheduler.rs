//! Six real `idunno-node` processes on 127.0.0.70-75: three Raft voters and three non-voting
//! members, every one running a worker with the no-op model. Two jobs are submitted (one too
//! large for a single request, so it goes in chunks); a worker and then the Raft leader are
//! SIGKILLed while the jobs run (the leader must first take the worker's closed lease
//! connection as a hint to probe it). Every input of both jobs must end with exactly one
//! result (its own name, from the no-op model), and the statistics commands (c1, c2, c5,
//! jobs) answer.
//!
//! Every wait is an `eventually` with a generous deadline: the test asserts what the cluster
//! ends up doing, never how fast (throughput is measured by `sched-throughput`).

use std::collections::BTreeSet;
use std::net::SocketAddr;

use idunno_tests::harness::{
    CONVERGE_TIMEOUT, Cluster, RaftLayout, client_json, eventually, leader,
};

const VOTERS: u8 = 3;
const MEMBERS: u8 = 3;
/// This test's addresses start here (unique among the tests in this crate).
const FIRST_HOST: u8 = 70;
/// Inputs of the two jobs (the first exceeds one submission chunk).
const JOB_INPUTS: [usize; 2] = [2000, 300];

/// The job's results, checked: every input exactly once, each the no-op's echo of its name.
fn check_results(node: SocketAddr, job: u64, inputs: usize) -> Result<(), String> {
    let results = client_json(node, &["c4", &job.to_string()])?;
    let results = results.as_array().ok_or("c4 is not an array")?;
    let mut seen = BTreeSet::new();
    for r in results {
        let input = r["index"].as_u64().ok_or("a result without index")?;
        if !seen.insert(input) {
            return Err(format!("job {job}: input {input} reported twice"));
        }
        if r["result"] != r["name"] {
            return Err(format!("job {job}: input {input} has result {r}"));
        }
    }
    if seen.len() != inputs || seen.iter().next_back() != Some(&(inputs as u64 - 1)) {
        return Err(format!(
            "job {job}: {} of {inputs} inputs have results",
            seen.len()
        ));
    }
    Ok(())
}

#[test]
fn two_jobs_finish_exactly_once_through_killing_a_worker_and_the_leader() {
    let mut cluster = Cluster::new("scheduler6");
    let (all, index_of) = RaftLayout::new(FIRST_HOST, VOTERS).start(&mut cluster, MEMBERS, &[]);
    let leader_addr = eventually("a leader is elected", CONVERGE_TIMEOUT, || {
        leader(all[3])?
            .addr
            .ok_or_else(|| "no leader yet".to_owned())
    });

    // Two jobs through a non-voting member: one in chunks (batch 1), one in one piece (batch 4);
    // short leases, so the killed nodes' batches come back soon even before their failure is
    // recorded.
    let mut jobs = Vec::new();
    for (k, &n) in JOB_INPUTS.iter().enumerate() {
        let names: Vec<String> = (0..n).map(|i| format!("job{k}/in-{i}")).collect();
        let batch = if k == 0 { "1" } else { "4" };
        let mut args = vec!["submit", "noop", "--batch", batch, "--lease-ms", "1500"];
        args.extend(names.iter().map(String::as_str));
        let request = format!("{}", 1000 + k);
        args.extend(["--request", &request]);
        let answer = eventually(&format!("job {k} is submitted"), CONVERGE_TIMEOUT, || {
            client_json(all[4], &args)
        });
        jobs.push(answer["job"].as_u64().expect("a job id"));
    }

    // Mid-job (once the workers are under way): SIGKILL one non-voting worker and the leader
    // (a voter, and a worker too).
    let progress = eventually("the workers are under way", CONVERGE_TIMEOUT, || {
        let listed = client_json(all[4], &["jobs"])?;
        let done = listed[0]["done"].as_u64().unwrap_or(0);
        if done > 0 {
            Ok(listed)
        } else {
            Err(format!("no progress yet: {listed}"))
        }
    });
    eprintln!("at the kills: {progress}");
    let worker = all[5];
    cluster.node_mut(index_of[5]).kill();
    // The killed worker's lease connections to the leader closed with it: the leader probes
    // it out of turn (a hint, not a verdict) instead of waiting for its round-robin turn.
    let leader_at = all
        .iter()
        .position(|&a| a == leader_addr)
        .expect("leader is a node");
    eventually(
        "the leader takes the worker's closed lease connection as a probe hint",
        CONVERGE_TIMEOUT,
        || {
            let log = cluster.node(index_of[leader_at]).log_tail(4000);
            let hinted = log.lines().any(|line| {
                line.contains("probing a member out of turn") && line.contains(&worker.to_string())
            });
            if hinted {
                Ok(())
            } else {
                Err("no probe hint about the killed worker logged yet".to_owned())
            }
        },
    );
    cluster.node_mut(index_of[leader_at]).kill();
    let survivors: Vec<SocketAddr> = all
        .iter()
        .copied()
        .filter(|&a| a != worker && a != leader_addr)
        .collect();

    // Both jobs finish, every input with exactly one result.
    for (&job, &n) in jobs.iter().zip(&JOB_INPUTS) {
        let through = survivors[0];
        eventually(&format!("job {job} finishes"), CONVERGE_TIMEOUT * 2, || {
            let listed = client_json(through, &["jobs"])?;
            let entry = listed
                .as_array()
                .and_then(|jobs| jobs.iter().find(|j| j["job"] == job))
                .ok_or_else(|| format!("job {job} is not listed: {listed}"))?;
            if entry["status"] == "finished" {
                Ok(())
            } else {
                Err(format!("job {job}: {entry}"))
            }
        });
        eventually(&format!("job {job}'s results"), CONVERGE_TIMEOUT, || {
            check_results(through, job, n)
        });
        let times = eventually(&format!("c2 of job {job}"), CONVERGE_TIMEOUT, || {
            client_json(survivors[1], &["c2", &job.to_string()])
        });
        // The statistics keep a bounded window of samples.
        let samples = times["samples"].as_u64().unwrap_or(0);
        assert!(samples > 0 && samples <= n as u64, "c2: {times}");
    }
    let rates = eventually("c1 answers", CONVERGE_TIMEOUT, || {
        client_json(survivors[2], &["c1"])
    });
    assert_eq!(rates.as_array().map(Vec::len), Some(2), "c1: {rates}");
    let workers = eventually("c5 answers", CONVERGE_TIMEOUT, || {
        client_json(survivors[0], &["c5"])
    });
    let served: usize = workers
        .as_array()
        .map(|jobs| {
            jobs.iter()
                .filter_map(|j| j["workers_done"].as_array())
                .map(Vec::len)
                .sum()
        })
        .unwrap_or(0);
    assert!(served >= 2, "several workers served the jobs: {workers}");
    // Bad input is refused with a clear error.
    let bad = client_json(survivors[0], &["c2", "job-999"]).expect_err("unknown job refused");
    assert!(bad.contains("unknown job"), "{bad}");
}
