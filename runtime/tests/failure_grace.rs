//! The Raft leader fences a member (`NodeFailed`) only once its membership view has reported
//! it gone for `FAILURE_GRACE`: a member declared dead by stale gossip that refutes within the
//! grace keeps its replicas and leases (the turmoil partition scenario found the bug this pins).
//!
//! Owns: one single-voter Raft driver on paused time, fed a membership view by hand.
//! Must never: depend on wall-clock timing (time is paused and advanced by tokio).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use idunno_core::consensus::VoterId;
use idunno_core::membership::{Event, NodeId};
use idunno_core::wire::{ControlRequest, ControlResponse};
use idunno_runtime::consensus::RaftRequest;
use idunno_runtime::consensus::driver::{FAILURE_GRACE, RaftDriver};
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

#[tokio::test(start_paused = true)]
async fn a_member_that_comes_back_within_the_grace_is_not_fenced() {
    let dir = std::env::temp_dir().join(format!("idunno-failure-grace-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let me = addr(7101);
    let voters = Arc::new(BTreeMap::from([(VoterId(1), me)]));
    let (view_tx, view_rx) = view::channel(NodeId::new(me, 1));
    // Inline fsync: a storage thread works in real time, which paused time would outrun.
    let driver = RaftDriver::open_with(VoterId(1), voters, &dir, 7, PersistMode::Inline)
        .expect("open the store")
        .with_view(view_rx);
    let (requests, requests_rx) = mpsc::channel(16);
    let (_messages, messages_rx) = mpsc::channel(16);
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
    let failed = ask(&requests, ControlRequest::FailedNodes { forwarded: false }).await;
    assert_eq!(
        failed,
        ControlResponse::FailedNodes(vec![crashed]),
        "only the member gone for the whole grace is fenced"
    );
    task.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
