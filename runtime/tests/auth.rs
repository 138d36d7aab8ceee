//! Cluster authentication end to end on loopback: real nodes (real UDP sockets, the real driver
//! and membership machine) with a cluster key. A node with the wrong key is never admitted and
//! its datagrams are counted as refused, while a node with the right key joins the same seed.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use idunno_core::membership::{Member, NodeId};
use idunno_core::wire::{ControlRequest, ControlResponse};
use idunno_runtime::auth::{AuthStats, ClusterKey};
use idunno_runtime::node::{self, NodeHandle, NodeOptions};

/// Generous bound for one node to see another on loopback (join is sub-second normally).
const CONVERGE_WITHIN: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

async fn start(
    key: &ClusterKey,
    join: Vec<SocketAddr>,
) -> (NodeId, NodeHandle, std::sync::Arc<AuthStats>) {
    let Ok(bind) = "127.0.0.1:0".parse::<SocketAddr>() else {
        panic!("loopback address")
    };
    let mut options = NodeOptions::new(bind, join, None);
    options.cluster_key = Some(key.clone());
    let bound = match node::bind(options).await {
        Ok(bound) => bound,
        Err(e) => panic!("bind: {e}"),
    };
    let (id, handle, stats) = (bound.id(), bound.handle(), bound.auth_stats());
    tokio::spawn(bound.run());
    (id, handle, stats)
}

async fn members(handle: &NodeHandle) -> Vec<Member> {
    match handle.request(ControlRequest::ListMembers).await {
        Some(ControlResponse::Members(members)) => members,
        other => panic!("list members: {other:?}"),
    }
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + CONVERGE_WITHIN;
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test]
async fn a_node_with_the_wrong_key_is_never_admitted() {
    let right = ClusterKey::generate();
    let wrong = ClusterKey::generate();
    let (seed, seed_handle, seed_stats) = start(&right, Vec::new()).await;
    let (intruder, intruder_handle, _) = start(&wrong, vec![seed.addr]).await;
    let (friend, friend_handle, _) = start(&right, vec![seed.addr]).await;

    // Positive control: the node with the right key is admitted through the same seed.
    wait_for("the seed sees the node with the right key", async || {
        members(&seed_handle).await.iter().any(|m| m.id == friend)
    })
    .await;
    wait_for("the seed refuses the intruder's datagrams", async || {
        seed_stats.forged.load(Ordering::Relaxed) > 0
    })
    .await;

    for member in members(&seed_handle)
        .await
        .iter()
        .chain(&members(&friend_handle).await)
    {
        assert_ne!(
            member.id.addr, intruder.addr,
            "intruder admitted: {member:?}"
        );
    }
    let seen_by_intruder = members(&intruder_handle).await;
    assert!(
        seen_by_intruder.iter().all(|m| m.id == intruder),
        "the intruder learned members: {seen_by_intruder:?}"
    );
    assert_eq!(seed_stats.replayed.load(Ordering::Relaxed), 0);
    assert!(seed_stats.accepted.load(Ordering::Relaxed) > 0);
}
