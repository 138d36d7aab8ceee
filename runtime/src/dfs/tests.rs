//! The file-system client against an in-process stand-in for the leader (the real
//! [`super::leader::action`] on a [`ClusterState`], answering every connection) and real blob
//! services on loopback: a dead chosen replica is placed around at once, and listings page.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idunno_core::cluster::{ClusterCommand, ClusterOp, ClusterState};
use idunno_core::dfs::request::LIST_PAGE_NAMES;
use idunno_core::dfs::{ContentHash, DfsCommand, DfsRequest, RequestId};
use idunno_core::membership::NodeId;
use idunno_core::time::Instant;
use idunno_core::wire::{self, ControlRequest, ControlResponse};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::client::{DfsClient, DfsClientError};
use super::leader::{self, Action};
use crate::blobs::testutil::TempDir;
use crate::blobs::{BlobService, BlobStore, StoreLimits};
use crate::control::{self, read_frame, write_frame};

const TIMEOUT: Duration = Duration::from_secs(10);

/// What the stand-in leader saw and holds.
#[derive(Default)]
struct Seen {
    state: ClusterState,
    /// (exclude, answer) of every placement asked.
    placements: Vec<(Vec<NodeId>, Vec<NodeId>)>,
}

/// A control server that answers leader-side `Dfs` requests as the leader would, with
/// `alive` as its membership view.
async fn fake_leader(
    alive: BTreeSet<NodeId>,
) -> (SocketAddr, Arc<Mutex<Seen>>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let shared = seen.clone();
    let task = tokio::spawn(async move {
        let mut clock = 0u64;
        while let Ok((mut stream, _)) = listener.accept().await {
            let Ok(Some(request)) =
                read_frame::<ControlRequest, _>(&mut stream, wire::FRAME_BYTES_MAX).await
            else {
                continue;
            };
            let ControlRequest::Dfs { request, .. } = request else {
                continue;
            };
            let exclude = match &request {
                DfsRequest::Place { exclude, .. } => Some(exclude.clone()),
                _ => None,
            };
            clock += 1;
            let answer = {
                let mut seen = shared.lock().expect("lock");
                let answer = match leader::action(request, alive.clone(), BTreeSet::new()) {
                    Action::Read(query) => query(&seen.state),
                    Action::Propose(op) => {
                        let command = ClusterCommand::new(Instant::from_micros(clock), op);
                        leader::answer_applied(clock, seen.state.execute(command))
                    }
                    Action::Answer(answer) => answer,
                };
                if let (
                    Some(exclude),
                    ControlResponse::Dfs(idunno_core::dfs::DfsAnswer::Placed { replicas }),
                ) = (exclude, &answer)
                {
                    seen.placements.push((exclude, replicas.clone()));
                }
                answer
            };
            let _ = write_frame(&mut stream, &answer).await;
        }
    });
    (addr, seen, task)
}

/// One blob-serving node on loopback.
struct BlobNode {
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

impl Drop for BlobNode {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn blob_node() -> BlobNode {
    let dir = TempDir::new("dfs-client");
    let store = BlobStore::open(dir.path(), StoreLimits::default()).expect("open store");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (service, _corrupt) = BlobService::new(store, addr);
    let (requests, _) = mpsc::channel(1);
    let server = tokio::spawn(control::serve_full(
        listener,
        requests,
        None,
        Some(Arc::new(service)),
    ));
    BlobNode {
        addr,
        server,
        _dir: dir,
    }
}

fn id(addr: SocketAddr) -> NodeId {
    NodeId::new(addr, 1)
}

/// A put whose placement names a dead node (alive in the leader's view, nothing listening)
/// places again at once without it: two placements, the second excluding exactly the dead
/// node, and the committed version never lists it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_chosen_replica_is_placed_around_at_once() {
    let live: Vec<BlobNode> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(blob_node().await);
        }
        v
    };
    // The only node on its host, so distinct-host placement always picks it first time.
    let dead = {
        let listener = TcpListener::bind("127.0.0.2:0")
            .await
            .expect("bind 127.0.0.2");
        listener.local_addr().expect("addr")
    };
    let mut alive: BTreeSet<NodeId> = live.iter().map(|n| id(n.addr)).collect();
    alive.insert(id(dead));
    let (leader_addr, seen, leader_task) = fake_leader(alive).await;

    let dir = TempDir::new("dfs-client-src");
    let local = dir.path().join("input.bin");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&local, &data).expect("write local");

    let mut client = DfsClient::new(leader_addr, TIMEOUT);
    let done = client.put(&local, "in/a").await.expect("put succeeds");
    assert_eq!(done.version, 1);
    assert!(!done.replicas.contains(&id(dead)), "{:?}", done.replicas);
    assert_eq!(done.replicas.len(), 4, "the four live nodes");

    let placements = seen.lock().expect("lock").placements.clone();
    assert_eq!(placements.len(), 2, "one failed try, then one re-placement");
    assert!(placements[0].0.is_empty());
    assert!(placements[0].1.contains(&id(dead)), "{placements:?}");
    assert_eq!(
        placements[1].0,
        vec![id(dead)],
        "the refused node is excluded"
    );
    assert!(!placements[1].1.contains(&id(dead)), "never re-picked");

    // The bytes are on the committed replicas.
    let back = dir.path().join("back.bin");
    let got = client.get("in/a", &back).await.expect("get");
    let sorted = |v: &[NodeId]| v.iter().copied().collect::<BTreeSet<_>>();
    assert_eq!(sorted(&got.version.replicas), sorted(&done.replicas));
    assert_eq!(std::fs::read(&back).expect("read back"), data);
    leader_task.abort();
}

/// `list` follows the cursor over every page; `list_at_most` takes exactly its bound and
/// refuses one more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_page_and_are_bounded() {
    let (leader_addr, seen, leader_task) = fake_leader(BTreeSet::new()).await;
    let holder = id("127.0.0.1:9".parse().expect("addr"));
    let total = 2 * LIST_PAGE_NAMES + 1;
    {
        let mut seen = seen.lock().expect("lock");
        for i in 0..total {
            let op = ClusterOp::Dfs(DfsCommand::Commit {
                name: format!("inputs/d/{i:05}"),
                size: 1,
                hash: ContentHash([3; 32]),
                replicas: vec![holder],
                request: RequestId {
                    client: 9,
                    seq: i as u64 + 1,
                },
            });
            seen.state
                .execute(ClusterCommand::new(Instant::from_micros(1), op));
        }
        let op = ClusterOp::Dfs(DfsCommand::Commit {
            name: "inputs/e".into(),
            size: 1,
            hash: ContentHash([3; 32]),
            replicas: vec![holder],
            request: RequestId { client: 10, seq: 1 },
        });
        seen.state
            .execute(ClusterCommand::new(Instant::from_micros(1), op));
    }
    let client = DfsClient::new(leader_addr, TIMEOUT);
    let names = client.list("inputs/d/").await.expect("list");
    assert_eq!(names.len(), total);
    assert!(
        names.windows(2).all(|w| w[0] < w[1]),
        "in order, no repeats"
    );
    assert_eq!(
        client
            .list_at_most("inputs/d/", total)
            .await
            .expect("exactly the bound")
            .len(),
        total
    );
    assert!(matches!(
        client.list_at_most("inputs/d/", total - 1).await,
        Err(DfsClientError::TooManyNames { max, .. }) if max == total - 1
    ));
    assert!(client.list("nothing/").await.expect("empty").is_empty());
    assert_eq!(client.list("inputs/").await.expect("all").len(), total + 1);
    leader_task.abort();
}
