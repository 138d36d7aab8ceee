//! The TCP transport for Raft messages between voters.
//!
//! Owns: one outbound connection per peer voter (connect to the peer's node address, which is
//! its control port, send a [`ControlRequest::RaftHello`] naming this voter, then
//! `consensus::encode` frames), reconnecting with exponential backoff; a bounded outbound queue
//! per peer ([`PEER_QUEUE_FRAMES_MAX`] frames and [`PEER_QUEUE_BYTES_MAX`] bytes; when full the
//! oldest frame is dropped and counted, since Raft tolerates loss); and the inbound side
//! ([`Inbound`]): connections the control server hands over after their hello, at most
//! [`INBOUND_CONNECTIONS_PER_VOTER`] per configured voter, each read frame by frame (capped at
//! [`MESSAGE_BYTES_MAX`]) into the driver's bounded message channel.
//! Must never: decide anything about Raft, accept a hello from an unknown voter or from this
//! voter itself, hold more than the bounds above, block the driver (sends only enqueue), or
//! panic on what a peer sends.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::auth::SecureStream;
use idunno_core::consensus::{self, MESSAGE_BYTES_MAX, Message, VoterId};
use idunno_core::wire::{self, ControlRequest};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, warn};

use crate::control::{FrameError, read_frame};

/// Most frames queued for one peer; beyond this the oldest is dropped and counted.
pub const PEER_QUEUE_FRAMES_MAX: usize = 1024;
/// Most bytes queued for one peer; beyond this the oldest frames are dropped and counted.
pub const PEER_QUEUE_BYTES_MAX: usize = 32 << 20;
/// Inbound connections accepted per configured voter at once (a restarted peer's new
/// connection may overlap its old one briefly).
pub const INBOUND_CONNECTIONS_PER_VOTER: usize = 2;
/// Capacity of the channel from all inbound connections to the driver.
pub const INBOUND_QUEUE_MAX: usize = 1024;
/// Longest an inbound connection may stay silent (leaders heartbeat far more often).
pub const INBOUND_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a connect (with its hello) or one frame write may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest one frame write may take before the connection is dropped and remade.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// First pause after a failed connect; doubles up to [`RECONNECT_BACKOFF_MAX`].
pub const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest pause between connect attempts.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Frames waiting for one peer.
#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Vec<u8>>,
    bytes: usize,
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<Queue>,
    notify: Notify,
    dropped: AtomicU64,
}

impl Shared {
    /// Enqueues a frame, dropping the oldest ones while over a bound.
    fn push(&self, frame: Vec<u8>) {
        let Ok(mut queue) = self.queue.lock() else {
            return;
        };
        queue.bytes += frame.len();
        queue.frames.push_back(frame);
        while queue.frames.len() > PEER_QUEUE_FRAMES_MAX || queue.bytes > PEER_QUEUE_BYTES_MAX {
            let Some(old) = queue.frames.pop_front() else {
                break;
            };
            queue.bytes -= old.len();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        debug_assert!(queue.frames.len() <= PEER_QUEUE_FRAMES_MAX);
        drop(queue);
        self.notify.notify_one();
    }

    fn pop(&self) -> Option<Vec<u8>> {
        let mut queue = self.queue.lock().ok()?;
        let frame = queue.frames.pop_front()?;
        queue.bytes -= frame.len();
        Some(frame)
    }

    /// Drops everything queued (a peer we cannot reach gets no stale backlog), counting it.
    fn clear(&self) {
        if let Ok(mut queue) = self.queue.lock() {
            let dropped = queue.frames.len() as u64;
            queue.frames.clear();
            queue.bytes = 0;
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
    }

    fn is_empty(&self) -> bool {
        self.queue
            .lock()
            .map(|q| q.frames.is_empty())
            .unwrap_or(true)
    }
}

/// The outbound side: one queue and one connection task per peer voter. Dropping it stops the
/// tasks.
#[derive(Debug)]
pub struct Outbound {
    peers: BTreeMap<VoterId, Arc<Shared>>,
    tasks: Vec<JoinHandle<()>>,
    encode_failures: u64,
}

impl Outbound {
    /// Starts one connection task per voter in `voters` other than `me`. Call inside tokio.
    pub fn start(me: VoterId, voters: &BTreeMap<VoterId, SocketAddr>) -> Self {
        let mut peers = BTreeMap::new();
        let mut tasks = Vec::new();
        for (&id, &addr) in voters {
            if id == me {
                continue;
            }
            let shared = Arc::new(Shared::default());
            peers.insert(id, Arc::clone(&shared));
            tasks.push(tokio::spawn(
                peer_task(me, id, addr, shared).in_current_span(),
            ));
        }
        Outbound {
            peers,
            tasks,
            encode_failures: 0,
        }
    }

    /// Encodes `msg` and queues it for `to`; never blocks. Unknown peers and unencodable
    /// messages are dropped (logged).
    pub fn send(&mut self, to: VoterId, msg: &Message) {
        let Some(shared) = self.peers.get(&to) else {
            debug!(?to, "send to an unknown voter dropped");
            return;
        };
        match consensus::encode(msg) {
            Ok(frame) => shared.push(frame),
            Err(e) => {
                self.encode_failures += 1;
                warn!(?to, error = %e, "cannot encode a raft message; dropped");
            }
        }
    }

    /// Frames dropped so far for each peer (queue overflow or unreachable peer).
    pub fn dropped(&self) -> BTreeMap<VoterId, u64> {
        self.peers
            .iter()
            .map(|(&id, shared)| (id, shared.dropped.load(Ordering::Relaxed)))
            .collect()
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Keeps one connection to `peer` alive and writes its queue into it.
async fn peer_task(me: VoterId, peer: VoterId, addr: SocketAddr, shared: Arc<Shared>) {
    let mut backoff = RECONNECT_BACKOFF_MIN;
    let mut connected_once = false;
    loop {
        match connect(me, addr).await {
            Ok(stream) => {
                if !connected_once {
                    info!(?peer, %addr, "raft peer connected");
                    connected_once = true;
                }
                backoff = RECONNECT_BACKOFF_MIN;
                let error = write_loop(stream, &shared).await;
                debug!(?peer, %addr, %error, "raft peer connection lost");
            }
            Err(e) => {
                debug!(?peer, %addr, error = %e, "raft peer connect failed");
                shared.clear();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
            }
        }
    }
}

async fn connect(me: VoterId, addr: SocketAddr) -> std::io::Result<SecureStream> {
    let hello = wire::encode_frame(&ControlRequest::RaftHello { from: me })
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let attempt = async {
        let mut stream = crate::auth::tcp::connect(addr).await?;
        stream.set_nodelay(true)?;
        stream.write_all(&hello).await?;
        Ok(stream)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// Writes queued frames until a write fails; flushes whenever the queue runs dry.
async fn write_loop(stream: SecureStream, shared: &Shared) -> std::io::Error {
    let mut writer = BufWriter::new(stream);
    loop {
        let frame = match shared.pop() {
            Some(frame) => frame,
            None => {
                shared.notify.notified().await;
                continue;
            }
        };
        let write = async {
            writer.write_all(&frame).await?;
            if shared.is_empty() {
                writer.flush().await?;
            }
            Ok::<(), std::io::Error>(())
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return e,
            Err(_) => return std::io::ErrorKind::TimedOut.into(),
        }
    }
}

/// Why an inbound connection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboundRefused {
    /// The hello named a voter that is not configured.
    #[error("{0:?} is not a configured voter")]
    UnknownVoter(VoterId),
    /// The hello named this voter.
    #[error("hello claims to come from this voter")]
    FromSelf,
    /// Too many inbound connections are open.
    #[error("too many inbound raft connections")]
    TooMany,
}

/// The inbound side: accepts connections handed over by the control server.
#[derive(Debug, Clone)]
pub struct Inbound {
    me: VoterId,
    voters: Arc<BTreeMap<VoterId, SocketAddr>>,
    messages: mpsc::Sender<(VoterId, Message)>,
    slots: Arc<Semaphore>,
}

impl Inbound {
    /// An inbound side feeding `messages`; returns it and the receiver for the driver.
    pub fn new(
        me: VoterId,
        voters: Arc<BTreeMap<VoterId, SocketAddr>>,
    ) -> (Self, mpsc::Receiver<(VoterId, Message)>) {
        let (messages, receiver) = mpsc::channel(INBOUND_QUEUE_MAX);
        let slots = Arc::new(Semaphore::new(
            voters.len().max(1) * INBOUND_CONNECTIONS_PER_VOTER,
        ));
        (
            Inbound {
                me,
                voters,
                messages,
                slots,
            },
            receiver,
        )
    }

    /// Takes over `stream`, whose hello named `from`, and reads its messages in a new task.
    pub fn accept(&self, from: VoterId, stream: SecureStream) -> Result<(), InboundRefused> {
        if from == self.me {
            return Err(InboundRefused::FromSelf);
        }
        if !self.voters.contains_key(&from) {
            return Err(InboundRefused::UnknownVoter(from));
        }
        let permit = Arc::clone(&self.slots)
            .try_acquire_owned()
            .map_err(|_| InboundRefused::TooMany)?;
        let messages = self.messages.clone();
        tokio::spawn(
            async move {
                let _permit = permit;
                read_loop(from, stream, messages).await;
            }
            .in_current_span(),
        );
        Ok(())
    }
}

async fn read_loop(
    from: VoterId,
    mut stream: SecureStream,
    messages: mpsc::Sender<(VoterId, Message)>,
) {
    loop {
        let read = tokio::time::timeout(
            INBOUND_IDLE_TIMEOUT,
            read_frame::<Message, _>(&mut stream, MESSAGE_BYTES_MAX),
        )
        .await;
        match read {
            Ok(Ok(Some(msg))) => {
                if messages.send((from, msg)).await.is_err() {
                    return;
                }
            }
            Ok(Ok(None)) => return,
            Ok(Err(FrameError::Io(e))) => {
                debug!(?from, error = %e, "raft inbound connection failed");
                return;
            }
            Ok(Err(FrameError::Wire(e))) => {
                debug!(?from, error = %e, "bad raft frame; closing the connection");
                return;
            }
            Err(_) => {
                debug!(?from, "raft inbound connection idle; closing it");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts() {
        let shared = Shared::default();
        for i in 0..PEER_QUEUE_FRAMES_MAX + 3 {
            shared.push(vec![(i % 256) as u8]);
        }
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(shared.pop(), Some(vec![3]));
        shared.clear();
        assert!(shared.is_empty());
        assert_eq!(
            shared.dropped.load(Ordering::Relaxed),
            3 + PEER_QUEUE_FRAMES_MAX as u64 - 1
        );
    }

    #[test]
    fn a_byte_bound_also_drops_the_oldest() {
        let shared = Shared::default();
        let big = PEER_QUEUE_BYTES_MAX / 2 + 1;
        shared.push(vec![1; big]);
        shared.push(vec![2; big]);
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(shared.pop().map(|f| f[0]), Some(2));
    }

    #[tokio::test]
    async fn unknown_and_self_hellos_are_refused() {
        let voters = Arc::new(BTreeMap::from([
            (VoterId(1), "127.0.0.1:1".parse().expect("addr")),
            (VoterId(2), "127.0.0.1:2".parse().expect("addr")),
        ]));
        let (inbound, _rx) = Inbound::new(VoterId(1), voters);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connect = || async {
            tokio::net::TcpStream::connect(addr)
                .await
                .map(SecureStream::plain)
        };
        let (a, _) = tokio::join!(connect(), listener.accept());
        let a = a.expect("connect");
        assert_eq!(inbound.accept(VoterId(1), a), Err(InboundRefused::FromSelf));
        let (b, _) = tokio::join!(connect(), listener.accept());
        assert_eq!(
            inbound.accept(VoterId(9), b.expect("connect")),
            Err(InboundRefused::UnknownVoter(VoterId(9)))
        );
    }

    #[tokio::test]
    async fn messages_cross_the_control_port_after_a_hello_and_unknown_voters_are_refused() {
        use crate::consensus::{LocalVoter, RaftRoute};
        use idunno_core::consensus::Body;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Voter 2's address is never listened on: its queue is cleared, never blocking 1.
        let voters = Arc::new(BTreeMap::from([
            (VoterId(1), addr),
            (VoterId(2), "127.0.0.1:1".parse().expect("addr")),
            (VoterId(3), "127.0.0.1:1".parse().expect("addr")),
        ]));
        let (inbound, mut received) = Inbound::new(VoterId(1), Arc::clone(&voters));
        let (raft_tx, _raft_rx) = mpsc::channel(1);
        let route = RaftRoute {
            self_addr: addr,
            voters: Arc::clone(&voters),
            local: Some(LocalVoter {
                requests: raft_tx,
                inbound,
            }),
        };
        let (requests, _requests_rx) = mpsc::channel(1);
        let server = tokio::spawn(crate::control::serve_with(listener, requests, Some(route)));
        // Voter 3 talks to voter 1 (its other peer, 2, is unreachable).
        let mut outbound = Outbound::start(VoterId(3), &voters);
        let msg = |term| Message {
            term,
            context: 7,
            body: Body::PreVoteResponse {
                candidate: VoterId(1),
                granted: true,
            },
        };
        for term in 1..=3 {
            outbound.send(VoterId(1), &msg(term));
            outbound.send(VoterId(2), &msg(term));
        }
        for term in 1..=3 {
            let got = tokio::time::timeout(Duration::from_secs(10), received.recv())
                .await
                .expect("delivered in time");
            assert_eq!(
                got,
                Some((VoterId(3), msg(term))),
                "in order, tagged with the sender"
            );
        }
        assert_eq!(outbound.dropped().get(&VoterId(1)), Some(&0));
        // A hello naming an unknown voter gets no connection (the server closes it).
        let mut rogue = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let hello =
            wire::encode_frame(&ControlRequest::RaftHello { from: VoterId(99) }).expect("encodes");
        rogue.write_all(&hello).await.expect("write");
        let frame = consensus::encode(&msg(9)).expect("encodes");
        let _ = rogue.write_all(&frame).await;
        let late = tokio::time::timeout(Duration::from_millis(300), received.recv()).await;
        assert!(late.is_err(), "nothing from an unknown voter: {late:?}");
        server.abort();
    }
}
