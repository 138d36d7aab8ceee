//! Unit tests of the scheduler: exactly-once completion, expiry, failed workers, batch size
//! changes, fair-time, statistics math, bounds, and a property test over random commands.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;

use super::stats::{percentile, summarize};
use super::*;

fn node(i: u64) -> NodeId {
    NodeId::new(
        format!("10.0.0.{}:7000", i % 250 + 1)
            .parse()
            .expect("addr"),
        i,
    )
}

fn at(ms: u64) -> Instant {
    Instant::from_micros(ms * 1000)
}

fn spec(model: &str, inputs: usize, batch: u32) -> JobSpec {
    JobSpec {
        model: model.into(),
        inputs: (0..inputs).map(|i| format!("in/{i}.png")).collect(),
        batch_size: batch,
        lease_millis: 1000,
    }
}

fn submit(s: &mut Scheduler, now: Instant, spec: JobSpec, request: u64) -> JobId {
    match s.apply(now, SchedCommand::Submit { spec, request }) {
        SchedResult::Submitted { job } => job,
        other => panic!("not submitted: {other:?}"),
    }
}

fn lease(s: &mut Scheduler, now: Instant, worker: NodeId, request: u64) -> Option<Grant> {
    match s.apply(now, SchedCommand::Lease { worker, request }) {
        SchedResult::Granted(g) => Some(g),
        SchedResult::NoWork => None,
        other => panic!("lease: {other:?}"),
    }
}

fn results(grant: &Grant, micros: u64) -> Vec<Completion> {
    grant
        .inputs
        .iter()
        .map(|(i, name)| Completion {
            input: *i,
            outcome: InputOutcome::Result(format!("out/{name}")),
            elapsed_micros: micros,
        })
        .collect()
}

fn complete(s: &mut Scheduler, now: Instant, worker: NodeId, grant: &Grant) -> SchedResult {
    s.apply(
        now,
        SchedCommand::Complete {
            lease: grant.lease,
            worker,
            results: results(grant, 1000),
        },
    )
}

#[test]
fn a_job_runs_to_completion_in_batches() {
    let mut s = Scheduler::default();
    let job = submit(&mut s, at(0), spec("digits", 10, 4), 1);
    let mut finished = false;
    for round in 0..3 {
        let g = lease(&mut s, at(round), node(1), round + 1).expect("work");
        assert_eq!(g.job, job);
        assert_eq!(g.model, "digits");
        assert!(g.inputs.len() <= 4);
        if let SchedResult::Completed { finished: f, .. } = complete(&mut s, at(round), node(1), &g)
        {
            finished = f;
        }
        s.verify().expect("consistent");
    }
    assert!(finished);
    let j = s.job(job).expect("job");
    assert_eq!(j.status(), JobStatus::Finished);
    assert_eq!(j.done_count(), 10);
    assert!(lease(&mut s, at(5), node(1), 10).is_none());
}

#[test]
fn a_completion_applies_at_most_once() {
    let mut s = Scheduler::default();
    let job = submit(&mut s, at(0), spec("m", 4, 2), 1);
    let g = lease(&mut s, at(1), node(1), 1).expect("work");
    // Wrong worker: refused, nothing changes.
    let before = s.clone();
    let wrong = complete(&mut s, at(2), node(2), &g);
    assert_eq!(
        wrong,
        SchedResult::Rejected(SchedError::WrongWorker { lease: g.lease })
    );
    assert_eq!(s.job(job), before.job(job));
    // Missing, duplicated or foreign inputs: refused whole.
    for bad in [
        vec![results(&g, 1)[0].clone()],
        vec![results(&g, 1)[0].clone(), results(&g, 1)[0].clone()],
        vec![
            results(&g, 1)[0].clone(),
            Completion {
                input: 3,
                ..results(&g, 1)[1].clone()
            },
        ],
    ] {
        let r = s.apply(
            at(2),
            SchedCommand::Complete {
                lease: g.lease,
                worker: node(1),
                results: bad,
            },
        );
        assert!(
            matches!(r, SchedResult::Rejected(SchedError::BadCompletion { .. })),
            "{r:?}"
        );
    }
    assert_eq!(s.job(job).expect("job").done_count(), 0);
    // The real completion, then a duplicate.
    assert!(matches!(
        complete(&mut s, at(3), node(1), &g),
        SchedResult::Completed { inputs: 2, .. }
    ));
    let after = s.job(job).cloned();
    let dup = complete(&mut s, at(4), node(1), &g);
    assert_eq!(
        dup,
        SchedResult::Rejected(SchedError::UnknownLease(g.lease))
    );
    assert_eq!(s.job(job).cloned(), after);
}

#[test]
fn an_expired_lease_returns_its_inputs_and_its_late_completion_is_refused() {
    let mut s = Scheduler::default();
    let job = submit(&mut s, at(0), spec("m", 2, 2), 1);
    let g = lease(&mut s, at(0), node(1), 1).expect("work");
    assert_eq!(s.job(job).expect("job").pending_count(), 0);
    // 1000 ms lease: at 999 ms it holds, at 1000 ms it lapses (any command expires it).
    assert_eq!(
        s.apply(at(999), SchedCommand::ExpireLeases),
        SchedResult::Expired { leases: 0 }
    );
    assert_eq!(
        s.apply(at(1000), SchedCommand::ExpireLeases),
        SchedResult::Expired { leases: 1 }
    );
    assert_eq!(s.job(job).expect("job").pending_count(), 2);
    let late = complete(&mut s, at(1001), node(1), &g);
    assert_eq!(
        late,
        SchedResult::Rejected(SchedError::UnknownLease(g.lease))
    );
    // Someone else gets the same inputs and completes them.
    let g2 = lease(&mut s, at(1002), node(2), 1).expect("work again");
    assert_eq!(g2.inputs, g.inputs);
    assert!(matches!(
        complete(&mut s, at(1003), node(2), &g2),
        SchedResult::Completed { finished: true, .. }
    ));
    let j = s.job(job).expect("job");
    assert!(
        j.inputs()
            .iter()
            .all(|st| matches!(st, InputState::Done { worker, .. } if *worker == node(2)))
    );
    assert_eq!(s.counters().leases_expired, 1);
}

#[test]
fn renewal_keeps_a_lease_alive() {
    let mut s = Scheduler::default();
    submit(&mut s, at(0), spec("m", 1, 1), 1);
    let g = lease(&mut s, at(0), node(1), 1).expect("work");
    assert_eq!(
        s.apply(
            at(900),
            SchedCommand::Renew {
                lease: g.lease,
                worker: node(2)
            }
        ),
        SchedResult::Rejected(SchedError::WrongWorker { lease: g.lease })
    );
    assert_eq!(
        s.apply(
            at(900),
            SchedCommand::Renew {
                lease: g.lease,
                worker: node(1)
            }
        ),
        SchedResult::Renewed {
            expires_at: at(1900)
        }
    );
    assert_eq!(
        s.apply(at(1500), SchedCommand::ExpireLeases),
        SchedResult::Expired { leases: 0 }
    );
    assert!(matches!(
        complete(&mut s, at(1800), node(1), &g),
        SchedResult::Completed { .. }
    ));
}

#[test]
fn a_failed_worker_gives_its_leases_back_at_once() {
    let mut s = Scheduler::default();
    let job = submit(&mut s, at(0), spec("m", 6, 2), 1);
    let a = lease(&mut s, at(0), node(1), 1).expect("a");
    let b = lease(&mut s, at(0), node(1), 2).expect("b");
    let c = lease(&mut s, at(0), node(2), 1).expect("c");
    assert_eq!(s.node_failed(at(10), node(1)), 2);
    assert_eq!(s.leases().len(), 1);
    assert_eq!(s.leases().of_worker(node(1)).count(), 0);
    assert_eq!(s.job(job).expect("job").pending_count(), 4);
    s.verify().expect("consistent");
    for g in [&a, &b] {
        assert_eq!(
            complete(&mut s, at(11), node(1), g),
            SchedResult::Rejected(SchedError::UnknownLease(g.lease))
        );
    }
    assert!(matches!(
        complete(&mut s, at(11), node(2), &c),
        SchedResult::Completed { .. }
    ));
    // The returned inputs run elsewhere.
    let again = lease(&mut s, at(12), node(3), 1).expect("returned work");
    assert_eq!(again.inputs, a.inputs);
}

#[test]
fn a_gone_worker_loses_its_leases_but_may_ask_again() {
    let mut s = Scheduler::default();
    let job = submit(&mut s, at(0), spec("m", 4, 2), 1);
    let a = lease(&mut s, at(0), node(1), 1).expect("a");
    assert_eq!(
        s.apply(at(5), SchedCommand::WorkerGone { worker: node(1) }),
        SchedResult::Revoked { leases: 1 }
    );
    assert_eq!(s.leases().of_worker(node(1)).count(), 0);
    assert_eq!(s.job(job).expect("job").pending_count(), 4);
    // Alive after all: its late report is refused, exactly once holds, and it works on.
    assert_eq!(
        complete(&mut s, at(6), node(1), &a),
        SchedResult::Rejected(SchedError::UnknownLease(a.lease))
    );
    assert!(lease(&mut s, at(7), node(1), 2).is_some());
    assert_eq!(
        s.apply(at(8), SchedCommand::WorkerGone { worker: node(9) }),
        SchedResult::Revoked { leases: 0 }
    );
    s.verify().expect("consistent");
}

#[test]
fn a_repeated_lease_request_gets_the_same_answer() {
    let mut s = Scheduler::default();
    submit(&mut s, at(0), spec("m", 8, 2), 1);
    let g = lease(&mut s, at(0), node(1), 5).expect("work");
    assert_eq!(lease(&mut s, at(1), node(1), 5), Some(g.clone()));
    assert_eq!(s.leases().len(), 1);
    assert_eq!(
        s.apply(
            at(2),
            SchedCommand::Lease {
                worker: node(1),
                request: 4
            }
        ),
        SchedResult::Rejected(SchedError::StaleRequest {
            request: 4,
            last: 5
        })
    );
    // A repeated submission is the same job.
    assert_eq!(submit(&mut s, at(3), spec("other", 1, 1), 1), g.job);
    assert_eq!(s.jobs().count(), 1);
}

#[test]
fn workers_without_leases_make_room_for_new_ones() {
    let mut s = Scheduler::default();
    submit(&mut s, at(0), spec("m", 1, 1), 1);
    let holder = lease(&mut s, at(0), node(0), 1).expect("work");
    for i in 1..WORKERS_MAX as u64 {
        assert!(lease(&mut s, at(0), node(i), 1).is_none());
    }
    // Full: a new worker displaces one without a lease, never the holder.
    assert!(lease(&mut s, at(0), node(5000), 1).is_none());
    assert!(s.last_request(node(5000)).is_some());
    assert_eq!(s.last_request(node(0)), Some((1, Some(holder.lease))));
    // The first idle one in id order: same address as node(0), next generation.
    assert!(s.last_request(node(250)).is_none());
    assert!(s.last_request(node(1)).is_some());
}

#[test]
fn batch_size_changes_apply_to_later_leases() {
    let mut s = Scheduler::default();
    let job = submit(&mut s, at(0), spec("m", 20, 2), 1);
    let g = lease(&mut s, at(0), node(1), 1).expect("work");
    assert_eq!(g.inputs.len(), 2);
    assert_eq!(
        s.apply(at(1), SchedCommand::SetBatchSize { job, size: 5 }),
        SchedResult::BatchSizeSet { job, size: 5 }
    );
    let g2 = lease(&mut s, at(1), node(2), 1).expect("work");
    assert_eq!(g2.inputs.len(), 5);
    for size in [0, BATCH_SIZE_MAX as u32 + 1, u32::MAX] {
        assert_eq!(
            s.apply(at(2), SchedCommand::SetBatchSize { job, size }),
            SchedResult::Rejected(SchedError::BadBatchSize { size })
        );
    }
    assert_eq!(
        s.apply(
            at(2),
            SchedCommand::SetBatchSize {
                job: JobId(99),
                size: 3
            }
        ),
        SchedResult::Rejected(SchedError::UnknownJob(JobId(99)))
    );
    assert!(matches!(
        complete(&mut s, at(3), node(1), &g),
        SchedResult::Completed { inputs: 2, .. }
    ));
    assert_eq!(s.job(job).expect("job").spec().batch_size, 5);
}

#[test]
fn fair_time_alternates_and_a_new_job_is_served_next() {
    let mut s = Scheduler::default();
    let a = submit(&mut s, at(0), spec("cheap", 1000, 4), 1);
    let b = submit(&mut s, at(0), spec("dear", 1000, 4), 2);
    let mut served: BTreeMap<JobId, usize> = BTreeMap::new();
    let mut request = 0;
    for i in 0..100u64 {
        request += 1;
        let g = lease(&mut s, at(i), node(1), request).expect("work");
        // The dear job's queries cost 20x; both stay at equal dispatch counts.
        let micros = if g.job == a { 1_000 } else { 20_000 };
        s.apply(
            at(i),
            SchedCommand::Complete {
                lease: g.lease,
                worker: node(1),
                results: results(&g, micros),
            },
        );
        *served.entry(g.job).or_default() += g.inputs.len();
    }
    assert_eq!(served[&a], served[&b]);
    let shares = s.fair_shares();
    let share_b = shares
        .iter()
        .find(|(j, _)| *j == b)
        .map(|(_, x)| *x)
        .expect("b");
    assert!((share_b - 20.0 / 21.0).abs() < 0.01, "{shares:?}");
    // A job added now gets the very next lease, then shares; it cannot starve the others.
    let c = submit(&mut s, at(200), spec("new", 1000, 4), 3);
    request += 1;
    assert_eq!(
        lease(&mut s, at(200), node(2), request).map(|g| g.job),
        Some(c)
    );
    let mut later: BTreeMap<JobId, usize> = BTreeMap::new();
    for i in 0..90u64 {
        request += 1;
        let g = lease(&mut s, at(201 + i), node(2), request).expect("work");
        complete(&mut s, at(201 + i), node(2), &g);
        *later.entry(g.job).or_default() += 1;
    }
    assert!(later.values().all(|&n| (29..=31).contains(&n)), "{later:?}");
}

#[test]
fn a_job_with_pending_inputs_is_never_starved() {
    // Leases of one job keep expiring (its pass goes back), yet every job gets served.
    let mut s = Scheduler::default();
    let jobs: Vec<JobId> = (0..5)
        .map(|r| submit(&mut s, at(0), spec("m", 50, 1), r))
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..20u64 {
        let g = lease(&mut s, at(i * 2000), node(i), 1).expect("work");
        seen.insert(g.job);
    }
    assert_eq!(seen.len(), jobs.len());
}

#[test]
fn cancel_revokes_leases_and_stops_the_queue() {
    let mut s = Scheduler::default();
    let job = submit(&mut s, at(0), spec("m", 10, 2), 1);
    let g = lease(&mut s, at(0), node(1), 1).expect("work");
    assert_eq!(
        s.apply(at(1), SchedCommand::Cancel { job }),
        SchedResult::Cancelled { job, revoked: 1 }
    );
    assert_eq!(
        complete(&mut s, at(2), node(1), &g),
        SchedResult::Rejected(SchedError::UnknownLease(g.lease))
    );
    assert!(lease(&mut s, at(3), node(1), 2).is_none());
    assert_eq!(
        s.apply(at(4), SchedCommand::Cancel { job }),
        SchedResult::Rejected(SchedError::NotRunning(job))
    );
    s.verify().expect("consistent");
}

#[test]
fn bad_input_is_refused_with_clear_errors() {
    let mut s = Scheduler::default();
    let cases = [
        (spec("m", 0, 1), SchedError::NoInputs),
        (
            spec("m", INPUTS_PER_JOB_MAX + 1, 1),
            SchedError::TooManyInputs {
                inputs: INPUTS_PER_JOB_MAX + 1,
            },
        ),
        (spec("m", 1, 0), SchedError::BadBatchSize { size: 0 }),
        (
            spec("m", 1, 100_000),
            SchedError::BadBatchSize { size: 100_000 },
        ),
        (spec("", 1, 1), SchedError::BadName { bytes: 0 }),
        (
            JobSpec {
                lease_millis: 0,
                ..spec("m", 1, 1)
            },
            SchedError::BadLeaseTime { millis: 0 },
        ),
        (
            JobSpec {
                inputs: vec!["x".repeat(NAME_BYTES_MAX + 1)],
                ..spec("m", 1, 1)
            },
            SchedError::BadName {
                bytes: NAME_BYTES_MAX + 1,
            },
        ),
    ];
    for (i, (spec, error)) in cases.into_iter().enumerate() {
        assert_eq!(
            s.apply(
                at(0),
                SchedCommand::Submit {
                    spec,
                    request: i as u64
                }
            ),
            SchedResult::Rejected(error)
        );
    }
    assert_eq!(s.jobs().count(), 0);
    assert_eq!(
        s.apply(at(0), SchedCommand::Cancel { job: JobId(7) }),
        SchedResult::Rejected(SchedError::UnknownJob(JobId(7)))
    );
    assert_eq!(
        s.apply(
            at(0),
            SchedCommand::Renew {
                lease: LeaseId(7),
                worker: node(1)
            }
        ),
        SchedResult::Rejected(SchedError::UnknownLease(LeaseId(7)))
    );
    // Over-long result text is refused and the lease stays live.
    submit(&mut s, at(0), spec("m", 1, 1), 100);
    let g = lease(&mut s, at(0), node(1), 1).expect("work");
    let long = vec![Completion {
        input: 0,
        outcome: InputOutcome::Failed("e".repeat(ERROR_BYTES_MAX + 1)),
        elapsed_micros: 1,
    }];
    assert!(matches!(
        s.apply(
            at(1),
            SchedCommand::Complete {
                lease: g.lease,
                worker: node(1),
                results: long
            }
        ),
        SchedResult::Rejected(SchedError::BadName { .. })
    ));
    assert!(s.leases().get(g.lease).is_some());
    // Per-worker lease cap.
    submit(&mut s, at(0), spec("m", 100, 1), 101);
    for r in 2..=LEASES_PER_WORKER_MAX as u64 {
        lease(&mut s, at(1), node(1), r).expect("work");
    }
    assert_eq!(
        s.apply(
            at(1),
            SchedCommand::Lease {
                worker: node(1),
                request: 99
            }
        ),
        SchedResult::Rejected(SchedError::TooManyLeases)
    );
}

#[test]
fn the_state_budget_and_job_cap_hold_and_finished_jobs_make_room() {
    let mut s = Scheduler::default();
    let mut request = 0;
    // Big jobs until the budget refuses one.
    let big = || JobSpec {
        inputs: (0..INPUTS_PER_JOB_MAX)
            .map(|i| format!("{i:0>100}"))
            .collect(),
        ..spec("m", 1, 256)
    };
    let first = submit(&mut s, at(0), big(), request);
    loop {
        request += 1;
        match s.apply(
            at(0),
            SchedCommand::Submit {
                spec: big(),
                request,
            },
        ) {
            SchedResult::Submitted { .. } => assert!(request < 100, "budget never reached"),
            SchedResult::Rejected(SchedError::Full { .. }) => break,
            other => panic!("{other:?}"),
        }
    }
    assert!(s.reserved_bytes() <= STATE_BYTES_MAX);
    let snapshot = crate::wire::encode_frame(&s).expect("encodes");
    assert!(
        snapshot.len() as u64 <= STATE_BYTES_MAX,
        "{} bytes",
        snapshot.len()
    );
    // Finish the first job: it is evicted to make room.
    s.apply(at(0), SchedCommand::Cancel { job: first });
    request += 1;
    assert!(matches!(
        s.apply(
            at(0),
            SchedCommand::Submit {
                spec: big(),
                request
            }
        ),
        SchedResult::Submitted { .. }
    ));
    assert!(s.job(first).is_none());
}

#[test]
fn percentiles_match_a_sorted_reference() {
    let samples: Vec<u64> = (0..1000u64).map(|i| (i * 7919) % 1000 + 1).collect();
    let mut sorted = samples.clone();
    sorted.sort_unstable();
    let summary = summarize(&samples);
    assert_eq!(summary.samples, 1000);
    assert_eq!(summary.median, sorted[499]);
    assert_eq!(summary.p90, sorted[899]);
    assert_eq!(summary.p95, sorted[949]);
    assert_eq!(summary.p99, sorted[989]);
    assert!((summary.mean - 500.5).abs() < 1e-9);
    let var: f64 = sorted
        .iter()
        .map(|&x| (x as f64 - 500.5).powi(2))
        .sum::<f64>()
        / 1000.0;
    assert!((summary.std_dev - var.sqrt()).abs() < 1e-9);
    assert_eq!(percentile(&[5], 99), 5);
    assert_eq!(percentile(&[], 50), 0);
    assert_eq!(percentile(&[1, 2, 3, 4], 50), 2);
    assert_eq!(summarize(&[]), TimeSummary::default());
}

#[test]
fn rate_counts_the_last_ten_seconds_and_the_ring_is_bounded() {
    let mut st = stats::JobStatsState::default();
    for sec in 0..30u64 {
        // 10 queries per second.
        st.record(Instant::from_micros(sec * 1_000_000), &[5; 10]);
    }
    let now = Instant::from_micros(29_500_000);
    assert!(
        (st.rate_per_sec(now, Instant::ZERO) - 10.0).abs() < 1.01,
        "{}",
        st.rate_per_sec(now, Instant::ZERO)
    );
    assert_eq!(st.completed(), 300);
    assert_eq!(st.times().samples, 300);
    st.record(now, &vec![9; 2000]);
    assert_eq!(st.times().samples, stats::SAMPLES_KEPT);
    assert_eq!(st.times().median, 9);
}

#[test]
fn reports_show_rate_times_and_workers() {
    let mut s = Scheduler::default();
    let job = submit(&mut s, at(0), spec("m", 100, 5), 1);
    let g = lease(&mut s, at(0), node(1), 1).expect("work");
    let _held = lease(&mut s, at(0), node(2), 1).expect("work");
    s.apply(
        at(500),
        SchedCommand::Complete {
            lease: g.lease,
            worker: node(1),
            results: results(&g, 2_000),
        },
    );
    let r = s.report(job, at(1000)).expect("report");
    assert_eq!(r.completed, 5);
    assert!((r.rate_per_sec - 5.0).abs() < 1e-9);
    assert_eq!(r.times.median, 2_000);
    assert_eq!(r.workers_now, vec![node(2)]);
    assert_eq!(
        s.job(job)
            .expect("job")
            .workers()
            .map(|(w, _, q)| (w, q))
            .collect::<Vec<_>>(),
        vec![(node(1), 5)]
    );
    assert!(s.report(JobId(9), at(0)).is_none());
}

/// One random step of the property test.
#[derive(Debug, Clone)]
enum Step {
    Lease(u8),
    Complete { worker: u8, pick: u8, wrong: bool },
    Fail(u8),
    Advance(u16),
    Batch(u8),
    Renew(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => any::<u8>().prop_map(Step::Lease),
        4 => (any::<u8>(), any::<u8>(), any::<bool>()).prop_map(|(worker, pick, wrong)| Step::Complete { worker, pick, wrong }),
        1 => any::<u8>().prop_map(Step::Fail),
        2 => (0u16..1500).prop_map(Step::Advance),
        1 => any::<u8>().prop_map(Step::Batch),
        1 => any::<u8>().prop_map(Step::Renew),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Whatever happens, each input receives exactly one accepted completion by the end.
    #[test]
    fn every_input_ends_done_exactly_once(steps in proptest::collection::vec(step(), 0..200)) {
        let mut s = Scheduler::default();
        let mut now = 0u64;
        let jobs = [submit(&mut s, at(0), spec("a", 23, 3), 1), submit(&mut s, at(0), spec("b", 17, 2), 2)];
        let mut requests: BTreeMap<u8, u64> = BTreeMap::new();
        let mut granted: Vec<(NodeId, Grant)> = Vec::new();
        let mut accepted: BTreeMap<(JobId, u32), u32> = BTreeMap::new();
        let apply_complete = |s: &mut Scheduler, now: u64, w: NodeId, g: &Grant, accepted: &mut BTreeMap<(JobId, u32), u32>| {
            if let SchedResult::Completed { .. } = complete(s, at(now), w, g) {
                for (i, _) in &g.inputs {
                    *accepted.entry((g.job, *i)).or_default() += 1;
                }
            }
        };
        for st in steps {
            match st {
                Step::Lease(w) => {
                    let r = requests.entry(w % 6).or_default();
                    // Now and then a retry of the last ask (same request number).
                    if w % 5 != 0 || *r == 0 {
                        *r += 1;
                    }
                    let worker = node(u64::from(w % 6));
                    let no_work = s.answers_no_work(at(now), worker, *r);
                    let answer = s.apply(at(now), SchedCommand::Lease { worker, request: *r });
                    if no_work {
                        prop_assert_eq!(&answer, &SchedResult::NoWork);
                    }
                    if let SchedResult::Granted(g) = answer {
                        granted.push((worker, g));
                    }
                }
                Step::Complete { worker, pick, wrong } => {
                    if !granted.is_empty() {
                        let (w, g) = granted[pick as usize % granted.len()].clone();
                        let w = if wrong { node(u64::from(worker % 6)) } else { w };
                        apply_complete(&mut s, now, w, &g, &mut accepted);
                    }
                }
                Step::Fail(w) => { s.node_failed(at(now), node(u64::from(w % 6))); }
                Step::Advance(ms) => now += u64::from(ms),
                Step::Batch(b) => { s.apply(at(now), SchedCommand::SetBatchSize { job: jobs[usize::from(b % 2)], size: u32::from(b % 7) }); }
                Step::Renew(pick) => {
                    if !granted.is_empty() {
                        let (w, g) = &granted[pick as usize % granted.len()];
                        s.apply(at(now), SchedCommand::Renew { lease: g.lease, worker: *w });
                    }
                }
            }
            prop_assert!(s.verify().is_ok(), "{:?}", s.verify());
            prop_assert!(accepted.values().all(|&n| n == 1));
        }
        // Drain: a fresh worker finishes everything (old leases expire).
        now += 10_000;
        for r in 1..100u64 {
            match s.apply(at(now), SchedCommand::Lease { worker: node(99), request: r }) {
                SchedResult::Granted(g) => apply_complete(&mut s, now, node(99), &g, &mut accepted),
                _ => break,
            }
        }
        for job in jobs {
            let j = s.job(job).expect("job");
            prop_assert_eq!(j.status(), JobStatus::Finished);
            for i in 0..j.inputs().len() as u32 {
                prop_assert_eq!(accepted.get(&(job, i)).copied(), Some(1), "input {} of {}", i, job);
            }
        }
    }
}

#[test]
fn lease_time_is_clamped_by_the_spec() {
    let s = spec("m", 1, 1);
    assert!(
        JobSpec {
            lease_millis: LEASE_MILLIS_MAX + 1,
            ..s.clone()
        }
        .validate()
        .is_err()
    );
    assert!(
        JobSpec {
            lease_millis: LEASE_MILLIS_MIN,
            ..s
        }
        .validate()
        .is_ok()
    );
    assert_eq!(
        Duration::from_millis(u64::from(LEASE_MILLIS_DEFAULT)),
        Duration::from_secs(5)
    );
}

fn add(
    s: &mut Scheduler,
    now: Instant,
    job: JobId,
    offset: u32,
    n: usize,
    seal: bool,
) -> SchedResult {
    let inputs = (0..n)
        .map(|i| format!("c/{}", offset as usize + i))
        .collect();
    s.apply(
        now,
        SchedCommand::AddInputs {
            job,
            offset,
            inputs,
            seal,
        },
    )
}

#[test]
fn an_open_job_takes_chunks_and_finishes_only_once_sealed() {
    let mut s = Scheduler::default();
    let job = match s.apply(
        at(1),
        SchedCommand::Open {
            spec: spec("noop", 2, 4),
            request: 9,
        },
    ) {
        SchedResult::Submitted { job } => job,
        other => panic!("{other:?}"),
    };
    // Its first chunk runs to completion, but the job is not finished: it is open.
    let g = lease(&mut s, at(2), node(1), 1).expect("work");
    s.apply(
        at(3),
        SchedCommand::Complete {
            lease: g.lease,
            worker: node(1),
            results: results(&g, 5),
        },
    );
    assert_eq!(s.job(job).expect("kept").status(), JobStatus::Running);
    assert!(matches!(
        add(&mut s, at(4), job, 2, 3, false),
        SchedResult::InputsAdded {
            inputs: 5,
            sealed: false,
            ..
        }
    ));
    // A retried chunk is acknowledged and adds nothing; a gap or overlap is refused.
    assert!(matches!(
        add(&mut s, at(4), job, 2, 3, false),
        SchedResult::InputsAdded { inputs: 5, .. }
    ));
    assert!(matches!(
        add(&mut s, at(4), job, 7, 1, false),
        SchedResult::Rejected(SchedError::BadChunk { .. })
    ));
    assert!(matches!(
        add(&mut s, at(4), job, 4, 2, false),
        SchedResult::Rejected(SchedError::BadChunk { .. })
    ));
    assert!(matches!(
        add(&mut s, at(5), job, 5, 1, true),
        SchedResult::InputsAdded {
            inputs: 6,
            sealed: true,
            ..
        }
    ));
    assert!(matches!(
        add(&mut s, at(5), job, 6, 1, false),
        SchedResult::Rejected(SchedError::BadChunk { sealed: true, .. })
    ));
    s.verify().expect("consistent");
    let mut seen = 2;
    for r in 2..10 {
        let Some(g) = lease(&mut s, at(6), node(1), r) else {
            break;
        };
        seen += g.inputs.len();
        s.apply(
            at(7),
            SchedCommand::Complete {
                lease: g.lease,
                worker: node(1),
                results: results(&g, 5),
            },
        );
    }
    assert_eq!(seen, 6, "every input leased exactly once");
    assert_eq!(s.job(job).expect("kept").status(), JobStatus::Finished);
    s.verify().expect("consistent");
}

#[test]
fn chunks_keep_the_input_limit_and_an_empty_seal_finishes_a_done_job() {
    let mut s = Scheduler::default();
    let job = match s.apply(
        at(1),
        SchedCommand::Open {
            spec: spec("noop", INPUTS_PER_JOB_MAX - 1, 256),
            request: 1,
        },
    ) {
        SchedResult::Submitted { job } => job,
        other => panic!("{other:?}"),
    };
    let offset = (INPUTS_PER_JOB_MAX - 1) as u32;
    assert!(matches!(
        add(&mut s, at(2), job, offset, 2, false),
        SchedResult::Rejected(SchedError::TooManyInputs { .. })
    ));
    assert!(matches!(
        add(&mut s, at(2), job, offset, 1, false),
        SchedResult::InputsAdded { .. }
    ));
    for r in 1..100 {
        let Some(g) = lease(&mut s, at(3), node(2), r) else {
            break;
        };
        s.apply(
            at(3),
            SchedCommand::Complete {
                lease: g.lease,
                worker: node(2),
                results: results(&g, 1),
            },
        );
    }
    assert_eq!(s.job(job).expect("kept").status(), JobStatus::Running);
    assert!(matches!(
        add(&mut s, at(4), job, INPUTS_PER_JOB_MAX as u32, 0, true),
        SchedResult::InputsAdded { sealed: true, .. }
    ));
    assert_eq!(s.job(job).expect("kept").status(), JobStatus::Finished);
    let answer = api::answer_query(
        &s,
        at(5),
        &api::SchedQuery::Results {
            job,
            from: 0,
            max: u32::MAX,
        },
    );
    match answer {
        api::SchedAnswer::Results { results, next } => {
            assert_eq!(results.len(), INPUTS_PER_JOB_MAX);
            assert_eq!(next, None);
        }
        other => panic!("{other:?}"),
    }
    s.verify().expect("consistent");
}

#[test]
fn complete_and_lease_reports_then_grants_the_next_batch() {
    let mut s = Scheduler::default();
    let job = submit(&mut s, at(1), spec("noop", 3, 1), 1);
    let first = lease(&mut s, at(2), node(1), 1).expect("work");
    let step = |s: &mut Scheduler, g: &Grant, request: u64| {
        s.apply(
            at(3),
            SchedCommand::CompleteAndLease {
                lease: g.lease,
                worker: node(1),
                results: results(g, 2),
                request,
            },
        )
    };
    let SchedResult::CompletedThenLeased { completed, next } = step(&mut s, &first, 2) else {
        panic!("not a combined answer");
    };
    assert!(matches!(
        *completed,
        SchedResult::Completed { inputs: 1, .. }
    ));
    let SchedResult::Granted(second) = *next else {
        panic!("no next batch: {next:?}")
    };
    // A retry of the same combined command: the report is refused (already applied), the ask
    // gets the same grant back.
    let SchedResult::CompletedThenLeased { completed, next } = step(&mut s, &first, 2) else {
        panic!("not a combined answer");
    };
    assert!(matches!(
        *completed,
        SchedResult::Rejected(SchedError::UnknownLease(_))
    ));
    assert_eq!(*next, SchedResult::Granted(second.clone()));
    let SchedResult::CompletedThenLeased { next, .. } = step(&mut s, &second, 3) else {
        panic!("not a combined answer");
    };
    let SchedResult::Granted(third) = *next else {
        panic!("no third batch")
    };
    let SchedResult::CompletedThenLeased { completed, next } = step(&mut s, &third, 4) else {
        panic!("not a combined answer");
    };
    assert!(matches!(
        *completed,
        SchedResult::Completed { finished: true, .. }
    ));
    assert_eq!(*next, SchedResult::NoWork);
    assert_eq!(s.job(job).expect("kept").done_count(), 3);
    s.verify().expect("consistent");
}

#[test]
fn an_idle_ask_is_answered_without_the_log_only_when_nothing_would_change() {
    let mut s = Scheduler::default();
    assert!(
        s.answers_no_work(at(0), node(1), 1),
        "no job: a new ask gets NoWork"
    );
    let job = submit(&mut s, at(0), spec("digits", 4, 2), 1);
    assert!(
        !s.answers_no_work(at(0), node(1), 1),
        "pending inputs: the ask must be applied"
    );
    let first = lease(&mut s, at(1), node(1), 1).expect("work");
    let second = lease(&mut s, at(1), node(2), 1).expect("work");
    assert_eq!((first.job, second.job), (job, job));
    // Every input is leased: a new ask finds nothing, but a retry of a granted ask must
    // reach the log to get its grant again, and a stale one its refusal.
    assert!(s.answers_no_work(at(2), node(1), 2));
    assert!(
        !s.answers_no_work(at(2), node(1), 1),
        "a retry gets its earlier grant"
    );
    assert_eq!(lease(&mut s, at(2), node(1), 1), Some(first.clone()));
    assert!(
        !s.answers_no_work(at(2), node(1), 0),
        "a stale ask is refused"
    );
    // A lease that has expired by `now` puts its inputs back when the ask applies.
    assert!(!s.answers_no_work(at(5_000), node(3), 1));
    s.apply(at(5_000), SchedCommand::ExpireLeases);
    assert!(
        !s.answers_no_work(at(5_000), node(3), 1),
        "inputs are pending again"
    );
}
