//! The driver over an in-memory network through the `DatagramSocket` seam, with tokio's paused
//! clock: the same code that runs on UDP forms a cluster, detects a crashed node and finishes a
//! graceful leave, in virtual time. (turmoil will plug in at the same seam.)

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idunno_core::membership::{Config, Member, MemberState, NodeId};
use idunno_core::wire::{ControlRequest, ControlResponse};
use idunno_runtime::driver::{Driver, Exit, Request};
use idunno_runtime::net::DatagramSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::LocalSet;

type Inbox = mpsc::UnboundedSender<(SocketAddr, Vec<u8>)>;

/// A lossless network: each address has an inbox; sending to an unknown address drops.
#[derive(Clone, Default)]
struct Network {
    inboxes: Arc<Mutex<BTreeMap<SocketAddr, Inbox>>>,
}

impl Network {
    fn socket(&self, addr: SocketAddr) -> MemorySocket {
        let (tx, rx) = mpsc::unbounded_channel();
        self.inboxes.lock().expect("not poisoned").insert(addr, tx);
        MemorySocket {
            addr,
            network: self.clone(),
            inbox: tokio::sync::Mutex::new(rx),
        }
    }

    fn unplug(&self, addr: SocketAddr) {
        self.inboxes.lock().expect("not poisoned").remove(&addr);
    }
}

struct MemorySocket {
    addr: SocketAddr,
    network: Network,
    inbox: tokio::sync::Mutex<mpsc::UnboundedReceiver<(SocketAddr, Vec<u8>)>>,
}

impl DatagramSocket for MemorySocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let mut inbox = self.inbox.lock().await;
        match inbox.recv().await {
            Some((from, bytes)) => {
                let len = bytes.len().min(buf.len());
                buf[..len].copy_from_slice(&bytes[..len]);
                Ok((len, from))
            }
            None => std::future::pending().await,
        }
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        let inbox = self
            .network
            .inboxes
            .lock()
            .expect("not poisoned")
            .get(&target)
            .cloned();
        if let Some(inbox) = inbox {
            let _ = inbox.send((self.addr, buf.to_vec()));
        }
        Ok(buf.len())
    }
}

fn addr(host: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, host], 7000))
}

struct Running {
    id: NodeId,
    requests: mpsc::Sender<Request>,
    task: tokio::task::JoinHandle<Exit>,
}

fn start(network: &Network, host: u8, seeds: Vec<SocketAddr>) -> Running {
    let socket = network.socket(addr(host));
    let driver = Driver::new(Config::default(), socket, 1, u64::from(host)).expect("valid config");
    let id = driver.id();
    let (requests, rx) = mpsc::channel(8);
    let task = tokio::task::spawn_local(async move { driver.run(seeds, rx).await.0 });
    Running { id, requests, task }
}

async fn ask(node: &Running, request: ControlRequest) -> Option<ControlResponse> {
    let (reply, answer) = oneshot::channel();
    node.requests.send(Request { request, reply }).await.ok()?;
    answer.await.ok()
}

async fn members(node: &Running) -> Vec<Member> {
    match ask(node, ControlRequest::ListMembers).await {
        Some(ControlResponse::Members(members)) => members,
        other => panic!("unexpected answer {other:?}"),
    }
}

/// The live members (alive or suspect), or `None` while any of them is only suspected.
fn alive(members: &[Member]) -> Option<Vec<NodeId>> {
    let live: Vec<&Member> = members.iter().filter(|m| m.state.is_live()).collect();
    live.iter()
        .all(|m| m.state == MemberState::Alive)
        .then(|| live.iter().map(|m| m.id).collect())
}

/// Polls (in virtual time) until every node in `nodes` sees exactly `expect` alive and no
/// other member alive or suspect.
async fn until_alive_is(nodes: &[&Running], expect: &[NodeId]) {
    for _ in 0..600 {
        let mut all = true;
        for node in nodes {
            all &= alive(&members(node).await).as_deref() == Some(expect);
        }
        if all {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("views never became {expect:?}");
}

#[tokio::test(start_paused = true)]
async fn a_cluster_forms_detects_a_crash_and_a_leave_completes() {
    LocalSet::new()
        .run_until(async {
            let network = Network::default();
            let a = start(&network, 2, vec![]);
            let b = start(&network, 3, vec![addr(2)]);
            let c = start(&network, 4, vec![addr(2)]);
            let mut everyone = vec![a.id, b.id, c.id];
            everyone.sort();
            until_alive_is(&[&a, &b, &c], &everyone).await;

            // Crash c: its task stops and its address drops every datagram.
            c.task.abort();
            network.unplug(addr(4));
            let survivors = vec![a.id, b.id];
            until_alive_is(&[&a, &b], &survivors).await;
            let dead: Vec<MemberState> = members(&a)
                .await
                .iter()
                .filter(|m| m.id == c.id)
                .map(|m| m.state)
                .collect();
            assert_eq!(dead, vec![MemberState::Dead]);

            // b leaves gracefully: its driver returns `Left`, and a sees it as left.
            assert_eq!(
                ask(&b, ControlRequest::Leave).await,
                Some(ControlResponse::Leaving)
            );
            assert_eq!(b.task.await.expect("not aborted"), Exit::Left);
            until_alive_is(&[&a], &[a.id]).await;
            let left = members(&a)
                .await
                .into_iter()
                .find(|m| m.id == b.id)
                .map(|m| m.state);
            assert_eq!(left, Some(MemberState::Left));
            assert_eq!(
                ask(&a, ControlRequest::ListSelf).await,
                Some(ControlResponse::SelfInfo {
                    id: a.id,
                    incarnation: 0
                })
            );
        })
        .await;
}
