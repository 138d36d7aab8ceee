//! The Raft leader fences a member (`NodeFailed`) only once its membership view has reported
//! it gone for `FAILURE_GRACE`: a member declared dead by stale gossip that refutes within the
//! grace keeps its replicas and leases (the turmoil partition scenario found the bug this pins).
//! A worker's leases go back to the queue sooner: once it has been suspected for
//! `SUSPECT_REVOKE_AFTER`, but not when it refutes the suspicion before that.
//!
//! An idle worker's ask that would change nothing is answered without a log entry.
//!
//! Owns: one single-voter Raft driver on paused time, fed a membership view by hand.
//! Must never: depend on wall-clock timing (time is paused and advanced by tokio).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use idunno_core::consensus::VoterId;
use idunno_core::membership::{Event, NodeId};
use idunno_core::scheduler::api::{SchedAnswer, SchedRequest};
use idunno_core::scheduler::{JobSpec, SchedCommand, SchedResult};
use idunno_core::wire::{ControlRequest, ControlResponse};
use idunno_runtime::consensus::RaftRequest;
use idunno_runtime::consensus::driver::{FAILURE_GRACE, RaftDriver, SUSPECT_REVOKE_AFTER};
use idunno_runtime::consensus::persister::PersistMode;
use idunno_runtime::view;
use tokio::sync::{mpsc, oneshot};

async fn ask(requests: &mpsc::Sender<RaftRequest>, request: ControlRequest) -> ControlResponse {
    let (reply, answer) = oneshot::channel();
    requests
        .send(RaftRequest { request, reply })
        .await
        .expect("the driver runs");
    answer.await.expect("the driver answers")
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A single voter leading on paused time, fed the membership view through the returned sender.
struct Leader {
    requests: mpsc::Sender<RaftRequest>,
    view: tokio::sync::watch::Sender<view::MembershipView>,
    task: tokio::task::JoinHandle<Result<(), idunno_runtime::consensus::driver::RaftDriverError>>,
    dir: std::path::PathBuf,
    _messages: mpsc::Sender<(VoterId, idunno_core::consensus::Message)>,
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start_leader(name: &str, port: u16) -> Leader {
    let dir = std::env::temp_dir().join(format!("idunno-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let me = addr(port);
    let voters = Arc::new(BTreeMap::from([(VoterId(1), me)]));
    let (view_tx, view_rx) = view::channel(NodeId::new(me, 1));
    // Inline fsync: a storage thread works in real time, which paused time would outrun.
    let driver = RaftDriver::open_with(VoterId(1), voters, &dir, 7, PersistMode::Inline)
        .expect("open the store")
        .with_view(view_rx);
    let (requests, requests_rx) = mpsc::channel(16);
    let (messages, messages_rx) = mpsc::channel(16);
    let task = tokio::spawn(driver.run(requests_rx, messages_rx));
    let mut leading = false;
    for _ in 0..100 {
        if let ControlResponse::Leader { id: Some(_), .. } =
            ask(&requests, ControlRequest::Leader).await
        {
            leading = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(leading, "a single voter leads");
    Leader {
        requests,
        view: view_tx,
        task,
        dir,
        _messages: messages,
    }
}

#[tokio::test(start_paused = true)]
async fn a_member_that_comes_back_within_the_grace_is_not_fenced() {
    let leader = start_leader("failure-grace", 7101).await;
    let (requests, view_tx) = (&leader.requests, &leader.view);

    let flapping = NodeId::new(addr(7102), 5);
    let crashed = NodeId::new(addr(7103), 5);
    view_tx.send_modify(|v| {
        v.apply(&Event::Failed(flapping));
        v.apply(&Event::Failed(crashed));
    });
    tokio::time::sleep(FAILURE_GRACE / 2).await;
    view_tx.send_modify(|v| {
        v.apply(&Event::Joined(flapping));
    });
    tokio::time::sleep(FAILURE_GRACE * 2).await;
    let failed = ask(requests, ControlRequest::FailedNodes { forwarded: false }).await;
    assert_eq!(
        failed,
        ControlResponse::FailedNodes(vec![crashed]),
        "only the member gone for the whole grace is fenced"
    );
}

async fn sched(requests: &mpsc::Sender<RaftRequest>, command: SchedCommand) -> SchedResult {
    let request = ControlRequest::Sched {
        request: SchedRequest::Command(command),
        forwarded: false,
    };
    match ask(requests, request).await {
        ControlResponse::Sched(SchedAnswer::Result(result)) => result,
        other => panic!("unexpected answer {other:?}"),
    }
}

/// A leader with two live workers at `port + 1` and `port + 2`, a one-input job with a long
/// lease whose only batch the first holds, and that first worker just suspected.
async fn a_leased_worker_suspected(name: &str, port: u16) -> (Leader, NodeId, NodeId) {
    let leader = start_leader(name, port).await;
    let worker = NodeId::new(addr(port + 1), 3);
    let other = NodeId::new(addr(port + 2), 3);
    leader.view.send_modify(|v| {
        v.apply(&Event::Joined(worker));
        v.apply(&Event::Joined(other));
    });
    let spec = JobSpec {
        model: "noop:1".into(),
        inputs: vec!["inputs/one".into()],
        batch_size: 1,
        lease_millis: 600_000,
    };
    let submitted = sched(&leader.requests, SchedCommand::Submit { spec, request: 1 }).await;
    assert!(
        matches!(submitted, SchedResult::Submitted { .. }),
        "{submitted:?}"
    );
    let granted = sched(&leader.requests, SchedCommand::Lease { worker, request: 1 }).await;
    assert!(matches!(granted, SchedResult::Granted(_)), "{granted:?}");
    leader.view.send_modify(|v| {
        v.apply(&Event::Suspect(worker));
    });
    (leader, worker, other)
}

#[tokio::test(start_paused = true)]
async fn a_suspected_workers_lease_returns_before_it_is_declared_failed() {
    let (leader, _worker, other) = a_leased_worker_suspected("suspect-revoke", 7111).await;
    let requests = &leader.requests;
    tokio::time::sleep(SUSPECT_REVOKE_AFTER * 4).await;
    let regranted = sched(
        requests,
        SchedCommand::Lease {
            worker: other,
            request: 1,
        },
    )
    .await;
    match regranted {
        SchedResult::Granted(grant) => assert_eq!(grant.inputs, vec![(0, "inputs/one".into())]),
        other => panic!("the suspect's batch was not leased again: {other:?}"),
    }
    let failed = ask(requests, ControlRequest::FailedNodes { forwarded: false }).await;
    assert_eq!(
        failed,
        ControlResponse::FailedNodes(vec![]),
        "a suspect is not fenced"
    );
}

#[tokio::test(start_paused = true)]
async fn a_suspicion_refuted_at_once_keeps_the_lease() {
    let (leader, worker, other) = a_leased_worker_suspected("suspect-refuted", 7121).await;
    let requests = &leader.requests;
    tokio::time::sleep(SUSPECT_REVOKE_AFTER / 5).await;
    leader.view.send_modify(|v| {
        v.apply(&Event::Refuted(worker));
    });
    tokio::time::sleep(SUSPECT_REVOKE_AFTER * 4).await;
    let answer = sched(
        requests,
        SchedCommand::Lease {
            worker: other,
            request: 1,
        },
    )
    .await;
    assert_eq!(
        answer,
        SchedResult::NoWork,
        "the refuting worker keeps its batch"
    );
}

/// The Raft driver's counter `name` (from `NodeStats`).
async fn raft_counter(requests: &mpsc::Sender<RaftRequest>, name: &str) -> u64 {
    let ControlResponse::NodeStats(groups) = ask(requests, ControlRequest::NodeStats).await else {
        panic!("no stats");
    };
    groups
        .iter()
        .filter(|g| g.name == "raft")
        .flat_map(|g| g.counters.iter())
        .find(|(n, _)| n == name)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no raft counter {name}"))
}

#[tokio::test(start_paused = true)]
async fn an_idle_workers_asks_do_not_grow_the_log() {
    let leader = start_leader("idle-asks", 7131).await;
    let requests = &leader.requests;
    let worker = NodeId::new(addr(7132), 1);
    let before = raft_counter(requests, "last_index").await;
    for request in 1..=20 {
        let answer = sched(requests, SchedCommand::Lease { worker, request }).await;
        assert_eq!(answer, SchedResult::NoWork);
    }
    assert_eq!(
        raft_counter(requests, "last_index").await,
        before,
        "no entry for an idle ask"
    );
    assert_eq!(raft_counter(requests, "idle_asks_answered").await, 20);

    // With work, the ask goes through the log and is granted; its retry gets the same grant.
    let spec = JobSpec {
        model: "noop".into(),
        inputs: vec!["in/0".into()],
        batch_size: 1,
        lease_millis: 60_000,
    };
    let submitted = sched(requests, SchedCommand::Submit { spec, request: 1 }).await;
    assert!(
        matches!(submitted, SchedResult::Submitted { .. }),
        "{submitted:?}"
    );
    let SchedResult::Granted(grant) = sched(
        requests,
        SchedCommand::Lease {
            worker,
            request: 21,
        },
    )
    .await
    else {
        panic!("the pending input is granted");
    };
    let retried = sched(
        requests,
        SchedCommand::Lease {
            worker,
            request: 21,
        },
    )
    .await;
    assert_eq!(
        retried,
        SchedResult::Granted(grant),
        "a retry is applied, not short-cut"
    );
    // Nothing pending again: the next new ask is answered from the state.
    let logged = raft_counter(requests, "last_index").await;
    assert!(logged >= before + 3, "submit, grant and retry were logged");
    let other = NodeId::new(addr(7133), 1);
    assert_eq!(
        sched(
            requests,
            SchedCommand::Lease {
                worker: other,
                request: 1
            }
        )
        .await,
        SchedResult::NoWork
    );
    assert_eq!(raft_counter(requests, "last_index").await, logged);
}
