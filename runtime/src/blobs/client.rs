//! The client side of blob transfers: put a blob on a set of replicas (chain or fan-out) and
//! get one from the first replica whose bytes hash right.
//!
//! Owns: hashing a local file before a put, streaming it in [`CHUNK_BYTES`] chunks, and the
//! get fallback that records which replicas were bad (the caller proposes `ReplicaLost` for
//! them).
//! Must never: hold a whole blob in memory, leave unverified bytes at a get's destination, or
//! report success before every replica acknowledged a durable, hash-checked copy.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::auth::SecureStream;
use idunno_core::wire::{ControlRequest, ControlResponse};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::pool::{ChunkPool, Recycler};
use super::transfer::{self, Chunk, IO_TIMEOUT, QUEUE_CHUNKS, ack_timeout, read_answer};
use super::{BlobHash, CHUNK_BYTES};
use crate::control::write_frame;

/// How a put reaches its replicas.
///
/// Chain is the default. Measured with `dfs-bench` on one 2-core box (every replica in one
/// process, one disk), chain and fan-out cost the same CPU per byte and run at the same speed
/// within noise: there the four replicas' disk writes and hashing bound both. They differ on a
/// real network: fan-out sends every byte R times over the client's link, so its throughput is
/// at most link/R, while chain sends it once and each hop forwards a chunk as soon as it has
/// it (writing it to disk at the same time), so a put runs near the slowest single hop's speed.
/// Chain also names the failed replica as precisely (acks flow back hop by hop).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PutMode {
    /// The client sends once to the first replica, which forwards along the chain while it
    /// writes (HDFS style). The client's upload bandwidth is used once.
    #[default]
    Chain,
    /// The client sends to every replica in parallel.
    FanOut,
}

/// Why a put failed. No replica acknowledged the blob as a whole put when this is returned
/// (some may hold a durable copy: an orphan the garbage collector removes).
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    /// No replica was named.
    #[error("a put needs at least one replica")]
    NoReplicas,
    /// The local source could not be read.
    #[error("cannot read {path}: {source}")]
    Source {
        /// The source.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The source yielded a different number of bytes than announced.
    #[error("the source changed while being sent: expected {expected} bytes")]
    SourceChanged {
        /// Bytes announced.
        expected: u64,
    },
    /// A replica refused, failed or could not be reached.
    #[error("replica {replica} failed: {reason}")]
    Replica {
        /// The replica that failed.
        replica: SocketAddr,
        /// Why.
        reason: String,
    },
}

/// What was wrong with a replica during a get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaFault {
    /// It could not be reached or stopped answering.
    Unreachable(String),
    /// It answered that it does not hold the blob (or refused).
    Refused(String),
    /// Its bytes did not hash right or ended early.
    Corrupt(String),
}

/// A successful get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetReport {
    /// The blob's size.
    pub size: u64,
    /// The replica whose bytes were kept.
    pub served_by: SocketAddr,
    /// Replicas tried before it, and what was wrong with each.
    pub bad: Vec<(SocketAddr, ReplicaFault)>,
}

/// Why a get failed: every replica was tried.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// The destination could not be written.
    #[error("cannot write {path}: {source}")]
    Destination {
        /// The destination.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// No replica had a good copy.
    #[error("no replica served a good copy: {bad:?}")]
    NoGoodReplica {
        /// Every replica and what was wrong with it.
        bad: Vec<(SocketAddr, ReplicaFault)>,
    },
}

/// BLAKE3 hash and size of a local file, read in chunks.
pub async fn hash_file(path: &Path) -> Result<(BlobHash, u64), std::io::Error> {
    let path = path.to_owned();
    let hashed = tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&path)?;
        let mut hasher = blake3::Hasher::new();
        let size = std::io::copy(&mut file, &mut hasher)?;
        Ok::<_, std::io::Error>((BlobHash::from(hasher.finalize()), size))
    })
    .await;
    hashed.map_err(std::io::Error::other)?
}

/// Puts the file at `path` on `replicas` (in chain order); returns its hash once every replica
/// acknowledged a durable, hash-checked copy.
pub async fn put_blob(
    replicas: &[SocketAddr],
    path: &Path,
    mode: PutMode,
) -> Result<BlobHash, PutError> {
    let source_error = |source| PutError::Source {
        path: path.to_owned(),
        source,
    };
    let (hash, size) = hash_file(path).await.map_err(source_error)?;
    let file = tokio::fs::File::open(path).await.map_err(source_error)?;
    put_blob_from(replicas, hash, size, file, mode).await?;
    Ok(hash)
}

/// Puts `size` bytes from `source`, whose BLAKE3 hash is `hash`, on `replicas`.
pub async fn put_blob_from<R>(
    replicas: &[SocketAddr],
    hash: BlobHash,
    size: u64,
    mut source: R,
    mode: PutMode,
) -> Result<(), PutError>
where
    R: AsyncRead + Unpin,
{
    let Some((&first, rest)) = replicas.split_first() else {
        return Err(PutError::NoReplicas);
    };
    let targets: Vec<(SocketAddr, Vec<SocketAddr>)> = match mode {
        PutMode::Chain => vec![(first, rest.to_vec())],
        PutMode::FanOut => replicas.iter().map(|&r| (r, Vec::new())).collect(),
    };
    // Set every connection up first: nothing is sent until all targets are ready.
    let mut opened = Vec::with_capacity(targets.len());
    for (target, chain) in &targets {
        opened.push(transfer::open_hop(*target, hash, size, chain));
    }
    let mut streams = Vec::with_capacity(targets.len());
    for (result, (target, chain)) in futures_join(opened).await.into_iter().zip(&targets) {
        match result {
            Ok(stream) => streams.push((*target, chain.len(), stream)),
            Err(answer) => return Err(replica_error(*target, answer)),
        }
    }
    let mut senders = Vec::with_capacity(streams.len());
    let mut tasks = JoinSet::new();
    let pool = ChunkPool::new();
    for (index, (target, hops_below, stream)) in streams.into_iter().enumerate() {
        let (tx, rx) = mpsc::channel::<Chunk>(QUEUE_CHUNKS);
        senders.push(Some(tx));
        let recycler = pool.recycler();
        tasks.spawn(async move {
            let sent = send_and_wait(stream, target, size, hops_below, rx, recycler);
            (index, sent.await)
        });
    }
    let mut left = size;
    while left > 0 {
        let len = usize::try_from(left)
            .unwrap_or(CHUNK_BYTES)
            .min(CHUNK_BYTES);
        let mut chunk = pool.take(len);
        if let Err(e) = source.read_exact(&mut chunk).await {
            return Err(if e.kind() == std::io::ErrorKind::UnexpectedEof {
                PutError::SourceChanged { expected: size }
            } else {
                PutError::Source {
                    path: PathBuf::from("-"),
                    source: e,
                }
            });
        }
        left -= len as u64;
        let chunk = std::sync::Arc::new(chunk);
        let mut alive = 0;
        for slot in &mut senders {
            if let Some(tx) = slot {
                if tx.send(std::sync::Arc::clone(&chunk)).await.is_err() {
                    *slot = None;
                } else {
                    alive += 1;
                }
            }
        }
        if alive == 0 {
            break;
        }
    }
    drop(senders);
    let mut results: Vec<Option<Result<(), PutError>>> = (0..targets.len()).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, result)) => results[index] = Some(result),
            Err(e) => {
                return Err(PutError::Replica {
                    replica: first,
                    reason: format!("transfer task failed: {e}"),
                });
            }
        }
    }
    // The first failure in replica order names the replica.
    for result in results.into_iter().flatten() {
        result?;
    }
    Ok(())
}

/// Runs the futures concurrently and returns their outputs in order.
async fn futures_join<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in pinned.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

fn replica_error(target: SocketAddr, answer: ControlResponse) -> PutError {
    match answer {
        ControlResponse::BlobFailed { replica, reason } => PutError::Replica { replica, reason },
        other => PutError::Replica {
            replica: target,
            reason: format!("unexpected answer {other:?}"),
        },
    }
}

/// Sends the chunks to one target, then waits for its acknowledgement of the whole chain.
async fn send_and_wait(
    mut stream: SecureStream,
    target: SocketAddr,
    size: u64,
    hops_below: usize,
    mut chunks: mpsc::Receiver<Chunk>,
    recycler: Recycler,
) -> Result<(), PutError> {
    let failed = |reason: String| PutError::Replica {
        replica: target,
        reason,
    };
    let mut sent = 0u64;
    while let Some(chunk) = chunks.recv().await {
        match tokio::time::timeout(IO_TIMEOUT, stream.write_all(&chunk)).await {
            Ok(Ok(())) => {
                sent += chunk.len() as u64;
                recycler.give_shared(chunk);
            }
            // The replica may have answered why before it stopped reading.
            Ok(Err(e)) => {
                let fallback = failed(format!("send: {e}"));
                return Err(answer_or(&mut stream, target, fallback).await);
            }
            Err(_) => {
                return Err(failed(format!(
                    "no progress in {}ms",
                    IO_TIMEOUT.as_millis()
                )));
            }
        }
    }
    if sent != size {
        return Err(PutError::SourceChanged { expected: size });
    }
    match read_answer(&mut stream, ack_timeout(size, hops_below)).await {
        Ok(ControlResponse::BlobStored { replicas }) if replicas.len() == hops_below + 1 => Ok(()),
        Ok(answer @ ControlResponse::BlobFailed { .. }) => Err(replica_error(target, answer)),
        Ok(other) => Err(replica_error(target, other)),
        Err(reason) => Err(failed(reason)),
    }
}

/// A failure answer the peer may have sent before closing, else `fallback`.
async fn answer_or(stream: &mut SecureStream, target: SocketAddr, fallback: PutError) -> PutError {
    match read_answer(stream, Duration::from_millis(200)).await {
        Ok(answer @ ControlResponse::BlobFailed { .. }) => replica_error(target, answer),
        _ => fallback,
    }
}

/// Gets the blob `hash` into the file `dest` from the first of `replicas` (in preference
/// order) whose bytes hash right. `dest` appears only once verified (written as
/// `dest.partial`, fsynced, renamed).
pub async fn get_blob(
    replicas: &[SocketAddr],
    hash: BlobHash,
    dest: &Path,
) -> Result<GetReport, GetError> {
    let partial = partial_path(dest);
    let mut bad = Vec::new();
    for &replica in replicas {
        match get_from(replica, hash, &partial).await {
            Ok(size) => {
                tokio::fs::rename(&partial, dest).await.map_err(|source| {
                    GetError::Destination {
                        path: dest.to_owned(),
                        source,
                    }
                })?;
                return Ok(GetReport {
                    size,
                    served_by: replica,
                    bad,
                });
            }
            Err(Attempt::Destination(source)) => {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(GetError::Destination {
                    path: partial,
                    source,
                });
            }
            Err(Attempt::Replica(fault)) => bad.push((replica, fault)),
        }
    }
    let _ = tokio::fs::remove_file(&partial).await;
    Err(GetError::NoGoodReplica { bad })
}

/// `dest` with `.partial` appended to its file name (never replacing its extension, so
/// `a.txt` and `a.partial` stay distinct).
pub fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".partial");
    dest.with_file_name(name)
}

enum Attempt {
    Destination(std::io::Error),
    Replica(ReplicaFault),
}

/// One get attempt from one replica into `partial` (truncated first); the size on success.
async fn get_from(replica: SocketAddr, hash: BlobHash, partial: &Path) -> Result<u64, Attempt> {
    let unreachable = |reason: String| Attempt::Replica(ReplicaFault::Unreachable(reason));
    let mut stream =
        match tokio::time::timeout(IO_TIMEOUT, crate::auth::tcp::connect(replica)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(unreachable(format!("cannot connect: {e}"))),
            Err(_) => return Err(unreachable("connect timed out".to_owned())),
        };
    let request = ControlRequest::BlobGet {
        hash: hash.0,
        offset: 0,
    };
    match tokio::time::timeout(IO_TIMEOUT, write_frame(&mut stream, &request)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(unreachable(e.to_string())),
        Err(_) => return Err(unreachable("request timed out".to_owned())),
    }
    let size = match read_answer(&mut stream, IO_TIMEOUT).await {
        Ok(ControlResponse::BlobData { size }) => size,
        Ok(ControlResponse::Error(message)) => {
            return Err(Attempt::Replica(ReplicaFault::Refused(message)));
        }
        Ok(other) => {
            return Err(Attempt::Replica(ReplicaFault::Refused(format!(
                "unexpected answer {other:?}"
            ))));
        }
        Err(reason) => return Err(unreachable(reason)),
    };
    let file = std::fs::File::create(partial).map_err(Attempt::Destination)?;
    let (tx, rx) = mpsc::channel::<Vec<u8>>(QUEUE_CHUNKS);
    let pool = ChunkPool::new();
    let recycler = pool.recycler();
    let disk = crate::net::spawn_blocking(move || hash_and_write(file, rx, recycler));
    let mut left = size;
    let mut received: Result<(), String> = Ok(());
    while left > 0 {
        let len = usize::try_from(left)
            .unwrap_or(CHUNK_BYTES)
            .min(CHUNK_BYTES);
        let mut chunk = pool.take(len);
        match tokio::time::timeout(IO_TIMEOUT, stream.read_exact(&mut chunk)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                received = Err(format!(
                    "stream ended after {} of {size} bytes: {e}",
                    size - left
                ));
                break;
            }
            Err(_) => {
                received = Err(format!("no progress in {}ms", IO_TIMEOUT.as_millis()));
                break;
            }
        }
        left -= len as u64;
        if tx.send(chunk).await.is_err() {
            break;
        }
    }
    drop(tx);
    let written = disk
        .await
        .map_err(|e| Attempt::Destination(std::io::Error::other(e)))?
        .map_err(Attempt::Destination)?;
    if let Err(reason) = received {
        // A server that finds its copy corrupt closes early: treat a short stream as corrupt.
        return Err(Attempt::Replica(ReplicaFault::Corrupt(reason)));
    }
    let (actual, bytes) = written;
    if bytes != size || actual != hash {
        return Err(Attempt::Replica(ReplicaFault::Corrupt(format!(
            "bytes hash to {actual}"
        ))));
    }
    Ok(size)
}

/// The disk thread of a get: hashes and writes chunks, then fsyncs.
fn hash_and_write(
    mut file: std::fs::File,
    mut chunks: mpsc::Receiver<Vec<u8>>,
    recycler: Recycler,
) -> Result<(BlobHash, u64), std::io::Error> {
    use std::io::Write;
    let mut hasher = blake3::Hasher::new();
    let mut bytes = 0u64;
    while let Some(chunk) = chunks.blocking_recv() {
        hasher.update(&chunk);
        file.write_all(&chunk)?;
        bytes += chunk.len() as u64;
        recycler.give(chunk);
    }
    file.sync_all()?;
    Ok((BlobHash::from(hasher.finalize()), bytes))
}
