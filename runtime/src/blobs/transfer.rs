//! The server side of blob transfers on a node's control port: `BlobPut` with pipelined chain
//! replication (HDFS style) and `BlobGet`.
//!
//! Put: the node reserves space, opens the next hop of the chain (which does the same, down to
//! the last replica) and answers `BlobReady` only when the whole chain is ready. Then each
//! [`CHUNK_BYTES`] chunk read from upstream goes at once to a disk thread (hash + write) and to
//! the downstream connection, through bounded queues. Each replica answers only after its own
//! fsync and hash check and its downstream's answer, so acknowledgements flow back up the chain
//! and the client gets one answer: `BlobStored` naming every replica, or `BlobFailed` naming the
//! first one that failed.
//! Get: `BlobData { size }`, then the bytes; the last chunk is only sent once the whole blob
//! hashed right, so a corrupt copy ends the connection early (and is removed and reported).
//! Owns: the per-node cap on concurrent transfers, every timeout of a transfer, and the channel
//! that reports corrupt blobs found while serving.
//! Must never: buffer more than a few chunks per transfer, wait on a peer without a deadline,
//! acknowledge bytes that are not durable on every replica of the chain, or panic on what a peer
//! sends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::auth::SecureStream;
use idunno_core::wire::{ControlRequest, ControlResponse, FRAME_BYTES_MAX};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, warn};

use super::pool::{ChunkPool, Recycler};
use super::store::{BlobStore, StoreError};
use super::{BlobHash, CHUNK_BYTES};
use crate::control::{FrameError, read_frame, write_frame};

/// Most blob transfers (puts and gets) one node serves at once; more are refused.
pub const TRANSFERS_MAX: usize = 32;
/// Chunks queued between the network and the disk (or the next hop) of one transfer.
pub const QUEUE_CHUNKS: usize = 4;
/// Longest replica chain a put may name.
pub const CHAIN_MAX: usize = 16;
/// Longest wait for one read or write of a transfer to make progress.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a hop may take to set up its part of the chain, per hop below it.
pub const READY_TIMEOUT_PER_HOP: Duration = Duration::from_secs(5);
/// Queue of corrupt-blob reports; when full, reports are counted and dropped (the scrubber
/// finds the blob again).
pub const CORRUPT_QUEUE_MAX: usize = 1024;

/// Longest a replica with `hops_below` replicas after it may take to answer after the last
/// byte: its fsync of `size` bytes plus its downstream's answer, at a pessimistic 20 MB/s.
pub fn ack_timeout(size: u64, hops_below: usize) -> Duration {
    let flush = Duration::from_secs(10) + Duration::from_millis(size / 20_000);
    flush * u32::try_from(hops_below + 1).unwrap_or(u32::MAX)
}

/// A chunk shared between the disk thread and the next hop without copying.
pub(crate) type Chunk = Arc<Vec<u8>>;

/// Serves `BlobPut` and `BlobGet` for one node's store.
#[derive(Debug)]
pub struct BlobService {
    store: BlobStore,
    self_addr: SocketAddr,
    slots: Arc<Semaphore>,
    corrupt: mpsc::Sender<BlobHash>,
    corrupt_dropped: AtomicU64,
}

/// What a transfer task failed on: a message to log (the peer is already answered or gone).
type Failure = String;

impl BlobService {
    /// A service for `store`, answering as the node at `self_addr`; corrupt blobs it finds are
    /// removed and reported on the returned channel.
    pub fn new(store: BlobStore, self_addr: SocketAddr) -> (Self, mpsc::Receiver<BlobHash>) {
        let (corrupt, reports) = mpsc::channel(CORRUPT_QUEUE_MAX);
        let service = BlobService {
            store,
            self_addr,
            slots: Arc::new(Semaphore::new(TRANSFERS_MAX)),
            corrupt,
            corrupt_dropped: AtomicU64::new(0),
        };
        (service, reports)
    }

    /// The store served.
    pub fn store(&self) -> &BlobStore {
        &self.store
    }

    /// A sender for corrupt-blob reports (the scrubber shares the node's channel).
    pub fn corrupt_reports(&self) -> mpsc::Sender<BlobHash> {
        self.corrupt.clone()
    }

    /// Whether `request` is one this service serves.
    pub fn is_blob_request(request: &ControlRequest) -> bool {
        matches!(
            request,
            ControlRequest::BlobPut { .. } | ControlRequest::BlobGet { .. }
        )
    }

    /// Serves one blob request whose frame was read from `stream`; the raw bytes (if any)
    /// follow on it. The connection is done when this returns.
    pub async fn serve<S>(&self, stream: &mut S, request: ControlRequest)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let Ok(_permit) = self.slots.try_acquire() else {
            let busy = ControlResponse::BlobFailed {
                replica: self.self_addr,
                reason: format!("busy: {TRANSFERS_MAX} transfers in progress"),
            };
            let _ = tokio::time::timeout(IO_TIMEOUT, write_frame(stream, &busy)).await;
            return;
        };
        let result = match request {
            ControlRequest::BlobPut { hash, size, chain } => {
                self.serve_put(stream, BlobHash(hash), size, chain).await
            }
            ControlRequest::BlobGet { hash, offset } => {
                self.serve_get(stream, BlobHash(hash), offset).await
            }
            other => Err(format!("not a blob request: {other:?}")),
        };
        if let Err(failure) = result {
            debug!(%failure, "blob transfer ended early");
        }
    }

    fn failed(&self, reason: impl ToString) -> ControlResponse {
        ControlResponse::BlobFailed {
            replica: self.self_addr,
            reason: reason.to_string(),
        }
    }

    fn report_corrupt(&self, hash: BlobHash) {
        warn!(%hash, "corrupt blob found while serving it; removed");
        if self.corrupt.try_send(hash).is_err() {
            self.corrupt_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn serve_put<S>(
        &self,
        upstream: &mut S,
        hash: BlobHash,
        size: u64,
        chain: Vec<SocketAddr>,
    ) -> Result<(), Failure>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let refusal = if chain.len() > CHAIN_MAX {
            Some(format!("chain of {} exceeds {CHAIN_MAX}", chain.len()))
        } else if chain.contains(&self.self_addr) {
            Some("the chain names this node twice".to_owned())
        } else {
            None
        };
        if let Some(reason) = refusal {
            send(upstream, &self.failed(&reason)).await?;
            return Err(reason);
        }
        let store = self.store.clone();
        let writer = tokio::task::spawn_blocking(move || store.writer(hash, size))
            .await
            .map_err(|e| e.to_string())
            .and_then(|w| w.map_err(|e| e.to_string()));
        let writer = match writer {
            Ok(writer) => writer,
            Err(reason) => {
                send(upstream, &self.failed(&reason)).await?;
                return Err(reason);
            }
        };
        let downstream = match chain.split_first() {
            None => None,
            Some((&next, rest)) => match open_hop(next, hash, size, rest).await {
                Ok(stream) => Some((next, stream)),
                Err(answer) => {
                    send(upstream, &answer).await?;
                    return Err(format!("downstream refused: {answer:?}"));
                }
            },
        };
        send(upstream, &ControlResponse::BlobReady).await?;

        let pool = ChunkPool::new();
        let (disk_tx, disk_rx) = mpsc::channel::<Chunk>(QUEUE_CHUNKS);
        let recycler = pool.recycler();
        let disk = crate::net::spawn_blocking(move || write_chunks(writer, disk_rx, recycler));
        let (forward, hop) = match downstream {
            None => (None, None),
            Some((next, stream)) => {
                let (tx, rx) = mpsc::channel::<Chunk>(QUEUE_CHUNKS);
                let hops_below = chain.len() - 1;
                let recycler = pool.recycler();
                let task =
                    tokio::spawn(forward_chunks(stream, next, size, hops_below, rx, recycler));
                (Some(tx), Some(task))
            }
        };
        let pumped = pump(upstream, size, &pool, Some(disk_tx), forward).await;
        let local = disk.await.map_err(|e| e.to_string()).and_then(|r| r);
        let below = match hop {
            None => Ok(Vec::new()),
            Some(task) => task
                .await
                .unwrap_or_else(|e| Err((self.self_addr, e.to_string()))),
        };
        // The upstream is gone or broke the protocol: nobody to answer, nothing kept.
        pumped?;
        let answer = match (local, below) {
            (Err(reason), _) => self.failed(reason),
            (Ok(()), Err((replica, reason))) => ControlResponse::BlobFailed { replica, reason },
            (Ok(()), Ok(below)) => {
                let mut replicas = Vec::with_capacity(below.len() + 1);
                replicas.push(self.self_addr);
                replicas.extend(below);
                ControlResponse::BlobStored { replicas }
            }
        };
        send(upstream, &answer).await
    }

    async fn serve_get<S>(&self, stream: &mut S, hash: BlobHash, offset: u64) -> Result<(), Failure>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let store = self.store.clone();
        let opened = tokio::task::spawn_blocking(move || store.reader(hash, offset))
            .await
            .map_err(|e| e.to_string())?;
        let reader = match opened {
            Ok(reader) => reader,
            Err(e) => {
                if matches!(e, StoreError::Corrupt { .. }) {
                    self.remove_corrupt(hash).await;
                }
                send(stream, &ControlResponse::Error(e.to_string())).await?;
                return Err(e.to_string());
            }
        };
        let size = reader.size();
        send(stream, &ControlResponse::BlobData { size }).await?;
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(QUEUE_CHUNKS);
        let pool = ChunkPool::new();
        let recycler = pool.recycler();
        let read = crate::net::spawn_blocking(move || read_chunks(reader, tx, &pool));
        let mut sent = offset;
        while let Some(chunk) = rx.recv().await {
            timed(IO_TIMEOUT, stream.write_all(&chunk)).await?;
            sent += chunk.len() as u64;
            recycler.give(chunk);
        }
        let finished = read.await.map_err(|e| e.to_string())?;
        if let Err(e) = finished {
            if matches!(e, StoreError::Corrupt { .. }) {
                self.remove_corrupt(hash).await;
            }
            // Closing before `size` bytes tells the client this copy is bad.
            return Err(e.to_string());
        }
        debug_assert_eq!(sent, size);
        timed(IO_TIMEOUT, stream.flush()).await
    }

    async fn remove_corrupt(&self, hash: BlobHash) {
        let store = self.store.clone();
        let removed = tokio::task::spawn_blocking(move || store.remove(&hash)).await;
        if let Ok(Err(e)) = removed {
            warn!(%hash, error = %e, "cannot remove a corrupt blob");
        }
        self.report_corrupt(hash);
    }
}

/// Runs `io` with a deadline, as a transfer failure.
async fn timed<T, E: ToString>(
    after: Duration,
    io: impl Future<Output = Result<T, E>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(after, io).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no progress in {}ms", after.as_millis())),
    }
}

async fn send<S>(stream: &mut S, answer: &ControlResponse) -> Result<(), Failure>
where
    S: AsyncWrite + Unpin,
{
    timed(IO_TIMEOUT, write_frame(stream, answer)).await
}

/// Reads one answer frame from a transfer peer.
pub(crate) async fn read_answer<S>(
    stream: &mut S,
    after: Duration,
) -> Result<ControlResponse, Failure>
where
    S: AsyncRead + Unpin,
{
    let read = tokio::time::timeout(
        after,
        read_frame::<ControlResponse, _>(stream, FRAME_BYTES_MAX),
    )
    .await;
    match read {
        Err(_) => Err(format!("no answer within {}ms", after.as_millis())),
        Ok(Ok(Some(answer))) => Ok(answer),
        Ok(Ok(None)) => Err("closed the connection without answering".to_owned()),
        Ok(Err(FrameError::Io(e))) => Err(format!("connection failed: {e}")),
        Ok(Err(FrameError::Wire(e))) => Err(format!("bad answer: {e}")),
    }
}

/// Connects to the next hop and sets up its part of the chain; on failure, the answer to pass
/// upstream (naming the replica that failed). The whole setup is bounded by
/// [`READY_TIMEOUT_PER_HOP`] per hop from `next` down, so a hop always gives up on its own
/// downstream before its upstream gives up on it, and the failure names the right replica.
pub(crate) async fn open_hop(
    next: SocketAddr,
    hash: BlobHash,
    size: u64,
    rest: &[SocketAddr],
) -> Result<SecureStream, ControlResponse> {
    let failed = |reason: String| ControlResponse::BlobFailed {
        replica: next,
        reason,
    };
    let budget = READY_TIMEOUT_PER_HOP * u32::try_from(rest.len() + 1).unwrap_or(u32::MAX);
    let setup = async {
        let mut stream = crate::auth::tcp::connect(next)
            .await
            .map_err(|e| failed(format!("cannot connect: {e}")))?;
        let _ = stream.set_nodelay(true);
        let request = ControlRequest::BlobPut {
            hash: hash.0,
            size,
            chain: rest.to_vec(),
        };
        write_frame(&mut stream, &request)
            .await
            .map_err(|e| failed(e.to_string()))?;
        match read_answer(&mut stream, budget).await {
            Ok(ControlResponse::BlobReady) => Ok(stream),
            Ok(refusal @ ControlResponse::BlobFailed { .. }) => Err(refusal),
            Ok(ControlResponse::Error(message)) => Err(failed(message)),
            Ok(other) => Err(failed(format!("unexpected answer {other:?}"))),
            Err(reason) => Err(failed(reason)),
        }
    };
    match tokio::time::timeout(budget, setup).await {
        Ok(result) => result,
        Err(_) => Err(failed(format!("not ready within {}ms", budget.as_millis()))),
    }
}

/// Reads exactly `size` raw bytes from `upstream` in chunks and hands each to the disk and the
/// next hop (whichever are still alive). Fails if the upstream stalls, closes early or errs.
pub(crate) async fn pump<R>(
    upstream: &mut R,
    size: u64,
    pool: &ChunkPool,
    mut disk: Option<mpsc::Sender<Chunk>>,
    mut forward: Option<mpsc::Sender<Chunk>>,
) -> Result<(), Failure>
where
    R: AsyncRead + Unpin,
{
    let mut left = size;
    while left > 0 {
        let len = usize::try_from(left)
            .unwrap_or(CHUNK_BYTES)
            .min(CHUNK_BYTES);
        let mut chunk = pool.take(len);
        timed(IO_TIMEOUT, upstream.read_exact(&mut chunk)).await?;
        left -= len as u64;
        let chunk = Arc::new(chunk);
        // A consumer that stopped (disk error, dead next hop) reports its own failure; the
        // stream is still drained so the upstream gets an answer.
        if let Some(tx) = &disk
            && tx.send(Arc::clone(&chunk)).await.is_err()
        {
            disk = None;
        }
        if let Some(tx) = &forward
            && tx.send(chunk).await.is_err()
        {
            forward = None;
        }
    }
    Ok(())
}

/// The disk thread of a put: writes chunks until the queue closes, then finishes the blob.
fn write_chunks(
    mut writer: super::store::BlobWriter,
    mut chunks: mpsc::Receiver<Chunk>,
    recycler: Recycler,
) -> Result<(), String> {
    while let Some(chunk) = chunks.blocking_recv() {
        writer.write(&chunk).map_err(|e| e.to_string())?;
        recycler.give_shared(chunk);
    }
    writer.finish().map(|_| ()).map_err(|e| e.to_string())
}

/// The forwarding task of a put: sends chunks to the next hop, then waits for its answer.
/// Returns the replicas that acknowledged, or the replica that failed and why.
async fn forward_chunks(
    mut stream: SecureStream,
    next: SocketAddr,
    size: u64,
    hops_below: usize,
    mut chunks: mpsc::Receiver<Chunk>,
    recycler: Recycler,
) -> Result<Vec<SocketAddr>, (SocketAddr, String)> {
    let mut sent = 0u64;
    while let Some(chunk) = chunks.recv().await {
        timed(IO_TIMEOUT, stream.write_all(&chunk))
            .await
            .map_err(|e| (next, format!("sending failed: {e}")))?;
        sent += chunk.len() as u64;
        recycler.give_shared(chunk);
    }
    if sent != size {
        // The upstream broke off: dropping the connection short of `size` makes every hop
        // below discard what it got.
        return Err((
            next,
            format!("upstream stopped after {sent} of {size} bytes"),
        ));
    }
    match read_answer(&mut stream, ack_timeout(size, hops_below)).await {
        Ok(ControlResponse::BlobStored { replicas }) if replicas.len() == hops_below + 1 => {
            Ok(replicas)
        }
        Ok(ControlResponse::BlobFailed { replica, reason }) => Err((replica, reason)),
        Ok(other) => Err((next, format!("unexpected answer {other:?}"))),
        Err(reason) => Err((next, reason)),
    }
}

/// The disk thread of a get: reads verified chunks into the queue; the last chunk only comes
/// once the whole blob hashed right.
fn read_chunks(
    mut reader: super::store::BlobReader,
    chunks: mpsc::Sender<Vec<u8>>,
    pool: &ChunkPool,
) -> Result<(), StoreError> {
    loop {
        let mut chunk = pool.take(CHUNK_BYTES);
        let read = reader.read(&mut chunk)?;
        if read == 0 {
            return Ok(());
        }
        chunk.truncate(read);
        if chunks.blocking_send(chunk).is_err() {
            // The connection side stopped; nothing more to do.
            return Ok(());
        }
    }
}
