//! The file-system client: `put`, `get`, `delete`, `ls`, `store`, `get-versions` and `list`
//! against any node (leader-side requests follow `NotLeader` to the leader).
//!
//! Owns: [`DfsClient`] (a random client id per process and its request counter: a retried
//! put or delete keeps its [`RequestId`] and is applied once), the put sequence (hash the
//! local file, ask the leader where it goes, stream it to the replicas with the blob client,
//! then propose `Commit`), the get sequence (a linearizable read of the metadata, the bytes
//! from any replica with fallback, in [`read_order`]: the entry node's own copy first, then a
//! per-blob order that spreads reads over the holders; bad replicas reported as
//! `ReplicaLost`), the output
//! rendering (tables, or `--json`), and [`main`] for `idunno-node client`.
//! Must never: hold a whole file in memory, commit before every replica acknowledged the
//! bytes durable (a failed put leaves no version), or leave unverified bytes at a destination.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use idunno_core::dfs::namespace::FILES_MAX;
use idunno_core::dfs::request::{NEWEST_NAMES_MAX, PLACE_EXCLUDE_MAX};
use idunno_core::dfs::{
    ContentHash, DfsAnswer, DfsCommand, DfsError, DfsRequest, DfsResult, NameError, RequestId,
    VersionInfo, validate_name,
};
use idunno_core::membership::NodeId;
use idunno_core::wire::{ControlRequest, ControlResponse};
use tokio::io::AsyncWriteExt;
use tracing::debug;

use super::{blob_hash, content_hash, to_leader};
use crate::blobs::client::{GetError, PutError, ReplicaFault};
use crate::blobs::{PutMode, get_blob, hash_file, put_blob_from};
use crate::cli::DfsClientCommand;
use crate::control::{self, ClientError};
use crate::leader_client::LeaderClient;

/// Tries at a put (placement + transfer) before giving up; a replica that died since the
/// leader's view last changed fails one try.
pub const PUT_TRIES: usize = 3;
/// Tries at a proposal after a leader change or a lost answer (same request id each time).
pub const PROPOSE_TRIES: usize = 8;
/// Pause between tries.
pub const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Pauses of [`RETRY_PAUSE`] a put waits while the leader has no replica to place on (longer in
/// all than the leader's wait for announcing stores, `STORE_ANNOUNCE_GRACE`).
pub const PLACE_WAITS_MAX: usize = 8;

/// Why a file-system command failed.
#[derive(Debug, thiserror::Error)]
pub enum DfsClientError {
    /// The local file cannot be read or written.
    #[error("{}: {source}", path.display())]
    Local {
        /// The local path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The name is not valid.
    #[error("invalid name {name:?}: {source}")]
    InvalidName {
        /// The name.
        name: String,
        /// What is wrong with it.
        source: NameError,
    },
    /// The cluster could not be asked.
    #[error(transparent)]
    Control(#[from] ClientError),
    /// The namespace refused.
    #[error("{0}")]
    Refused(DfsError),
    /// No live node can take a replica.
    #[error("no live node can take a replica right now")]
    NoReplicas,
    /// The bytes could not be stored on the chosen replicas.
    #[error("put failed: {0}")]
    Put(#[from] PutError),
    /// No replica served a good copy.
    #[error("get failed: {0}")]
    Get(#[from] GetError),
    /// More names match than the caller accepts.
    #[error("more than {max} names start with {prefix:?}")]
    TooManyNames {
        /// The prefix listed.
        prefix: String,
        /// The bound.
        max: usize,
    },
    /// The file is larger than the caller accepts.
    #[error("{name:?} has {size} bytes, more than the {max} accepted")]
    TooLarge {
        /// The name.
        name: String,
        /// Its newest version's size.
        size: u64,
        /// The bound.
        max: u64,
    },
    /// An answer of the wrong kind.
    #[error("unexpected answer from {node}: {answer}")]
    Unexpected {
        /// Who answered.
        node: SocketAddr,
        /// The answer.
        answer: String,
    },
}

/// A committed put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutDone {
    /// The name.
    pub name: String,
    /// The version number it became.
    pub version: u64,
    /// Its size.
    pub size: u64,
    /// Its hash.
    pub hash: ContentHash,
    /// The replicas that acknowledged its bytes.
    pub replicas: Vec<NodeId>,
}

/// A finished get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetDone {
    /// The version fetched.
    pub version: VersionInfo,
    /// The replica whose bytes were kept.
    pub served_by: SocketAddr,
    /// Replicas reported as holding a bad copy.
    pub reported: Vec<SocketAddr>,
}

/// The order in which a reader asks `replicas` for the blob `hash`: the reader's own node
/// first when it holds a copy (no network, and its own CPU does the serving), then the rest by
/// rendezvous hashing of (blob, replica), highest first. Every reader of one blob agrees on the
/// order (a retry sees the same), while different blobs start at different replicas, so a
/// batch of reads spreads over the holders instead of all landing on the lowest-addressed
/// one (the namespace lists replicas in address order).
pub fn read_order(replicas: &[NodeId], local: SocketAddr, hash: &ContentHash) -> Vec<SocketAddr> {
    let score = |addr: &SocketAddr| {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&hash.0);
        hasher.update(addr.to_string().as_bytes());
        *hasher.finalize().as_bytes()
    };
    let mut order: Vec<(bool, [u8; 32], SocketAddr)> = replicas
        .iter()
        .map(|n| (n.addr != local, score(&n.addr), n.addr))
        .collect();
    // Local first (`false` sorts first), then the highest score.
    order.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
    order.dedup_by_key(|entry| entry.2);
    order.into_iter().map(|(_, _, addr)| addr).collect()
}

/// A file-system client bound to one entry node.
#[derive(Debug)]
pub struct DfsClient {
    node: SocketAddr,
    timeout: Duration,
    client: u64,
    seq: u64,
    /// The leader's requests go through this (kept connections, shared by clones of the Arc).
    leader: Arc<LeaderClient>,
}

impl DfsClient {
    /// A client with a fresh random id, asking `node` first.
    pub fn new(node: SocketAddr, timeout: Duration) -> Self {
        Self::with_leader(Arc::new(LeaderClient::new(node, timeout)))
    }

    /// A client with a fresh random id whose leader requests share `leader`'s kept
    /// connections (a worker keeps one for all its batches).
    pub fn with_leader(leader: Arc<LeaderClient>) -> Self {
        DfsClient {
            node: leader.node(),
            timeout: leader.timeout(),
            client: random_client_id(),
            seq: 0,
            leader,
        }
    }

    /// Asks the leader (first through `node`, then directly).
    async fn ask(&self, request: DfsRequest) -> Result<(SocketAddr, DfsAnswer), ClientError> {
        let request = to_leader(request, false);
        match self.leader.ask(&request).await? {
            (at, ControlResponse::Dfs(answer)) => Ok((at, answer)),
            (at, other) => Err(ClientError::Unexpected {
                node: at,
                answer: format!("{other:?}"),
            }),
        }
    }

    /// Proposes `command`, retrying (same request id) while no leader answers.
    async fn apply(&self, command: DfsCommand) -> Result<DfsResult, DfsClientError> {
        let mut last = None;
        for attempt in 0..PROPOSE_TRIES {
            if attempt > 0 {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            match self.ask(DfsRequest::Apply(command.clone())).await {
                Ok((_, DfsAnswer::Applied(Ok(DfsResult::Duplicate { earlier })))) => {
                    return Ok(*earlier);
                }
                Ok((_, DfsAnswer::Applied(Ok(result)))) => return Ok(result),
                Ok((_, DfsAnswer::Applied(Err(e)))) => return Err(DfsClientError::Refused(e)),
                Ok((at, other)) => return Err(unexpected(at, &other)),
                Err(e) => {
                    debug!(error = %e, attempt, "proposal not answered; retrying");
                    last = Some(e);
                }
            }
        }
        Err(last.map_or(DfsClientError::NoReplicas, DfsClientError::Control))
    }

    fn next_request(&mut self) -> RequestId {
        self.seq += 1;
        RequestId {
            client: self.client,
            seq: self.seq,
        }
    }

    /// Stores `local` as a new version of `name`.
    pub async fn put(&mut self, local: &Path, name: &str) -> Result<PutDone, DfsClientError> {
        check_name(name)?;
        let local_error = |source| DfsClientError::Local {
            path: local.to_owned(),
            source,
        };
        let meta = tokio::fs::metadata(local).await.map_err(local_error)?;
        if !meta.is_file() {
            return Err(local_error(std::io::Error::other("not a regular file")));
        }
        let (hash, size) = hash_file(local).await.map_err(local_error)?;
        let mut tries = 0;
        // Empty placements with no refusal (stores still announcing, or none at all).
        let mut waits = 0;
        // Replicas that refused this blob: the next placement leaves them out, so a dead
        // replica (not yet detected) costs one failed try and no pause.
        let mut refused: Vec<NodeId> = Vec::new();
        let replicas = loop {
            tries += 1;
            let (at, answer) = self
                .ask(DfsRequest::Place {
                    hash: content_hash(&hash),
                    size,
                    exclude: refused.clone(),
                })
                .await?;
            let DfsAnswer::Placed { replicas } = answer else {
                return Err(unexpected(at, &answer));
            };
            debug_assert!(replicas.iter().all(|n| !refused.contains(n)));
            if replicas.is_empty() {
                if refused.is_empty() {
                    // No store to place on yet (the leader waits for stores that are still
                    // announcing): wait a little, a bounded number of times.
                    waits += 1;
                    tries -= 1; // a wait is not a try of the replicas
                    if waits > PLACE_WAITS_MAX {
                        return Err(DfsClientError::NoReplicas);
                    }
                    debug!(waits, "no replicas to place on yet; waiting");
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
                if tries >= PUT_TRIES {
                    return Err(DfsClientError::NoReplicas);
                }
                // Every live node refused: no other choice than to wait and try them again.
                debug!(refused = refused.len(), "every live node refused; pausing");
                refused.clear();
                tokio::time::sleep(RETRY_PAUSE * 2).await;
                continue;
            }
            let addrs: Vec<SocketAddr> = replicas.iter().map(|n| n.addr).collect();
            let file = tokio::fs::File::open(local).await.map_err(local_error)?;
            let file = Progress::new(file, size, name);
            match put_blob_from(&addrs, hash, size, file, PutMode::Chain).await {
                Ok(()) => break replicas,
                Err(PutError::Replica { replica, reason }) if tries < PUT_TRIES => {
                    if exclude_refused(&mut refused, &replicas, replica) {
                        debug!(%replica, %reason, "a replica refused; placing again without it");
                    } else {
                        // Not one of ours, or the list is full: nothing better than a pause.
                        debug!(%replica, %reason, "put failed on a replica; pausing");
                        tokio::time::sleep(RETRY_PAUSE * 2).await;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        };
        let request = self.next_request();
        let result = self
            .apply(DfsCommand::Commit {
                name: name.to_owned(),
                size,
                hash: content_hash(&hash),
                replicas: replicas.clone(),
                request,
            })
            .await?;
        match result {
            DfsResult::Committed { version } => Ok(PutDone {
                name: name.to_owned(),
                version,
                size,
                hash: content_hash(&hash),
                replicas,
            }),
            other => Err(DfsClientError::Unexpected {
                node: self.node,
                answer: format!("{other:?}"),
            }),
        }
    }

    /// Up to `count` kept versions of `name`, newest first.
    pub async fn versions(
        &self,
        name: &str,
        count: usize,
    ) -> Result<Vec<VersionInfo>, DfsClientError> {
        check_name(name)?;
        let (at, answer) = self
            .ask(DfsRequest::Versions {
                name: name.to_owned(),
                count,
            })
            .await?;
        match answer {
            DfsAnswer::Versions(Ok(versions)) => Ok(versions),
            DfsAnswer::Versions(Err(e)) => Err(DfsClientError::Refused(e)),
            other => Err(unexpected(at, &other)),
        }
    }

    /// The newest version of each of `names`, in order: one linearizable read per
    /// [`NEWEST_NAMES_MAX`] names (a batch's inputs in one round trip instead of one each).
    /// A name with no version, or an invalid one, gets its own `Err`; `Err` for the whole
    /// call when the leader does not answer.
    pub async fn newest(
        &self,
        names: &[String],
    ) -> Result<Vec<Result<VersionInfo, DfsError>>, DfsClientError> {
        let mut out = Vec::with_capacity(names.len());
        for chunk in names.chunks(NEWEST_NAMES_MAX) {
            let (at, answer) = self
                .ask(DfsRequest::Newest {
                    names: chunk.to_vec(),
                })
                .await?;
            match answer {
                DfsAnswer::Newest(Ok(each)) if each.len() == chunk.len() => out.extend(each),
                DfsAnswer::Newest(Err(e)) => return Err(DfsClientError::Refused(e)),
                other => return Err(unexpected(at, &other)),
            }
        }
        Ok(out)
    }

    /// Fetches `version`'s bytes into `dest` (verified), reporting bad replicas.
    async fn fetch(
        &self,
        version: &VersionInfo,
        dest: &Path,
    ) -> Result<(SocketAddr, Vec<SocketAddr>), DfsClientError> {
        let addrs = read_order(&version.replicas, self.node, &version.hash);
        let outcome = get_blob(&addrs, blob_hash(&version.hash), dest).await;
        let bad = match &outcome {
            Ok(report) => report.bad.clone(),
            Err(GetError::NoGoodReplica { bad }) => bad.clone(),
            Err(_) => Vec::new(),
        };
        let mut reported = Vec::new();
        for (addr, fault) in bad {
            // An unreachable node is membership's business; a wrong or missing copy is ours.
            if matches!(fault, ReplicaFault::Unreachable(_)) {
                continue;
            }
            let Some(node) = version.replicas.iter().find(|n| n.addr == addr) else {
                continue;
            };
            let lost = DfsCommand::ReplicaLost {
                hash: version.hash,
                node: *node,
            };
            match self.apply(lost).await {
                Ok(_) => reported.push(addr),
                Err(e) => debug!(%addr, error = %e, "cannot report a bad replica"),
            }
        }
        let report = outcome?;
        Ok((report.served_by, reported))
    }

    /// Fetches the newest version of `name` into `dest`.
    pub async fn get(&self, name: &str, dest: &Path) -> Result<GetDone, DfsClientError> {
        let versions = self.versions(name, 1).await?;
        let Some(version) = versions.into_iter().next() else {
            return Err(DfsClientError::Refused(DfsError::NotFound {
                name: name.to_owned(),
            }));
        };
        let (served_by, reported) = self.fetch(&version, dest).await?;
        Ok(GetDone {
            version,
            served_by,
            reported,
        })
    }

    /// Fetches the newest version of `name` into `dest` unless it is larger than `max` bytes
    /// (refused before any byte moves).
    pub async fn get_at_most(
        &self,
        name: &str,
        dest: &Path,
        max: u64,
    ) -> Result<GetDone, DfsClientError> {
        let versions = self.versions(name, 1).await?;
        let Some(version) = versions.into_iter().next() else {
            return Err(DfsClientError::Refused(DfsError::NotFound {
                name: name.to_owned(),
            }));
        };
        self.get_version(version, dest, max).await
    }

    /// Fetches the bytes of `version` (from [`DfsClient::versions`]) into `dest` unless it is
    /// larger than `max` bytes.
    pub async fn get_version(
        &self,
        version: VersionInfo,
        dest: &Path,
        max: u64,
    ) -> Result<GetDone, DfsClientError> {
        if version.size > max {
            return Err(DfsClientError::TooLarge {
                name: version.name.clone(),
                size: version.size,
                max,
            });
        }
        let (served_by, reported) = self.fetch(&version, dest).await?;
        Ok(GetDone {
            version,
            served_by,
            reported,
        })
    }

    /// The last `count` versions of `name`, newest first, into `dest`, each between a
    /// delimiter line `===== idunno NAME version V: SIZE bytes, blake3 HASH =====` and
    /// `===== end of NAME version V =====`.
    pub async fn get_versions(
        &self,
        name: &str,
        count: usize,
        dest: &Path,
    ) -> Result<Vec<VersionInfo>, DfsClientError> {
        let versions = self.versions(name, count).await?;
        let local_error = |source| DfsClientError::Local {
            path: dest.to_owned(),
            source,
        };
        let partial = crate::blobs::client::partial_path(dest);
        let mut out = tokio::fs::File::create(&partial)
            .await
            .map_err(local_error)?;
        let scratch = partial.with_extension("version");
        let result = async {
            for v in &versions {
                self.fetch(v, &scratch).await?;
                let header = format!(
                    "===== idunno {} version {}: {} bytes, blake3 {} =====\n",
                    v.name, v.version, v.size, v.hash
                );
                out.write_all(header.as_bytes())
                    .await
                    .map_err(local_error)?;
                let mut part = tokio::fs::File::open(&scratch).await.map_err(local_error)?;
                tokio::io::copy(&mut part, &mut out)
                    .await
                    .map_err(local_error)?;
                let footer = format!("\n===== end of {} version {} =====\n", v.name, v.version);
                out.write_all(footer.as_bytes())
                    .await
                    .map_err(local_error)?;
            }
            out.sync_all().await.map_err(local_error)?;
            Ok::<_, DfsClientError>(())
        }
        .await;
        let _ = tokio::fs::remove_file(&scratch).await;
        match result {
            Ok(()) => {
                tokio::fs::rename(&partial, dest)
                    .await
                    .map_err(local_error)?;
                Ok(versions)
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&partial).await;
                Err(e)
            }
        }
    }

    /// Deletes every version of `name`; how many went.
    pub async fn delete(&mut self, name: &str) -> Result<usize, DfsClientError> {
        check_name(name)?;
        let request = self.next_request();
        match self
            .apply(DfsCommand::Delete {
                name: name.to_owned(),
                request,
            })
            .await?
        {
            DfsResult::Deleted { versions } => Ok(versions),
            other => Err(DfsClientError::Unexpected {
                node: self.node,
                answer: format!("{other:?}"),
            }),
        }
    }

    /// Names starting with `prefix`, in order: every page, up to `max` names; refused with
    /// [`DfsClientError::TooManyNames`] when more than `max` match.
    pub async fn list_at_most(
        &self,
        prefix: &str,
        max: usize,
    ) -> Result<Vec<String>, DfsClientError> {
        let mut all: Vec<String> = Vec::new();
        let mut start_after: Option<String> = None;
        loop {
            let (page, more) = self.list_page(prefix, start_after.take()).await?;
            if let (Some(last), Some(first)) = (all.last(), page.first())
                && first <= last
            {
                // A leader that ignores the cursor would loop forever.
                return Err(DfsClientError::Unexpected {
                    node: self.node,
                    answer: format!("a listing page went back from {last:?} to {first:?}"),
                });
            }
            all.extend(page);
            if all.len() > max {
                return Err(DfsClientError::TooManyNames {
                    prefix: prefix.to_owned(),
                    max,
                });
            }
            if !more {
                return Ok(all);
            }
            match all.last() {
                Some(last) => start_after = Some(last.clone()),
                None => return Ok(all),
            }
        }
    }

    /// Every name starting with `prefix`, in order (all pages; the namespace holds at most
    /// `namespace::FILES_MAX` names).
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, DfsClientError> {
        self.list_at_most(prefix, FILES_MAX).await
    }

    /// One page of the names starting with `prefix` after `start_after`, and whether more
    /// remain.
    pub async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<String>,
    ) -> Result<(Vec<String>, bool), DfsClientError> {
        let (at, answer) = self
            .ask(DfsRequest::List {
                prefix: prefix.to_owned(),
                start_after,
            })
            .await?;
        match answer {
            DfsAnswer::Names { names, more } => Ok((names, more)),
            other => Err(unexpected(at, &other)),
        }
    }

    /// What the entry node stores: its id, the (name, version) pairs the namespace places on
    /// it, and the blobs in its store.
    pub async fn store(&self) -> Result<StoreListing, DfsClientError> {
        let (node, _) = control::list_self(self.node, self.timeout).await?;
        let (at, answer) = self.ask(DfsRequest::FilesOn { node }).await?;
        let DfsAnswer::Files(files) = answer else {
            return Err(unexpected(at, &answer));
        };
        let held = ControlRequest::Dfs {
            request: DfsRequest::Held,
            forwarded: false,
        };
        let blobs = match control::call(self.node, &held, self.timeout).await? {
            ControlResponse::Dfs(DfsAnswer::Held(blobs)) => blobs,
            other => {
                return Err(DfsClientError::Unexpected {
                    node: self.node,
                    answer: format!("{other:?}"),
                });
            }
        };
        Ok(StoreListing { node, files, blobs })
    }
}

/// What `store` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreListing {
    /// The node asked.
    pub node: NodeId,
    /// (name, version) pairs the namespace says it holds.
    pub files: Vec<(String, u64)>,
    /// (hash, size) of every blob in its store.
    pub blobs: Vec<(ContentHash, u64)>,
}

/// Adds the node at `failed` among `placed` to `refused` (bounded by [`PLACE_EXCLUDE_MAX`]);
/// whether it was added (false: not a placed node, already there, or the list is full).
fn exclude_refused(refused: &mut Vec<NodeId>, placed: &[NodeId], failed: SocketAddr) -> bool {
    let Some(node) = placed.iter().find(|n| n.addr == failed) else {
        return false;
    };
    if refused.contains(node) || refused.len() >= PLACE_EXCLUDE_MAX {
        return false;
    }
    refused.push(*node);
    true
}

fn check_name(name: &str) -> Result<(), DfsClientError> {
    validate_name(name)
        .map(|_| ())
        .map_err(|source| DfsClientError::InvalidName {
            name: name.to_owned(),
            source,
        })
}

fn unexpected(at: SocketAddr, answer: &DfsAnswer) -> DfsClientError {
    DfsClientError::Unexpected {
        node: at,
        answer: format!("{answer:?}"),
    }
}

/// A client id unlikely to collide with another process's: BLAKE3 of the process id, the
/// wall clock and a stack address.
fn random_client_id() -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&std::process::id().to_le_bytes());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.update(&nanos.to_le_bytes());
    let marker = 0u8;
    hasher.update(&(std::ptr::addr_of!(marker) as usize).to_le_bytes());
    let bytes = hasher.finalize();
    let mut id = [0u8; 8];
    id.copy_from_slice(&bytes.as_bytes()[..8]);
    u64::from_le_bytes(id)
}

/// Files at least this large show a progress bar on a terminal.
pub const PROGRESS_BYTES_MIN: u64 = 8 << 20;
/// How often `get`'s bar looks at the bytes written so far.
const GET_PROGRESS_POLL: Duration = Duration::from_millis(100);

/// A source that shows how much of it was read on a progress bar (stderr, only when stderr is
/// a terminal, see `crate::progress`), when the file is large.
struct Progress<R> {
    inner: R,
    bar: Option<indicatif::ProgressBar>,
}

impl<R> Progress<R> {
    fn new(inner: R, total: u64, label: &str) -> Self {
        let bar = (total >= PROGRESS_BYTES_MIN)
            .then(|| crate::progress::transfer(&format!("put {label}"), total));
        Progress { inner, bar }
    }
}

impl<R> Drop for Progress<R> {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Progress<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = &polled {
            let got = (buf.filled().len() - before) as u64;
            if let Some(bar) = &self.bar {
                bar.inc(got);
            }
        }
        polled
    }
}

// ----- the command line -----

/// Runs one `idunno-node client` file-system command and prints its answer.
pub fn main(node: SocketAddr, timeout: Duration, command: DfsClientCommand) -> ExitCode {
    let result = crate::node::block_on(run(node, timeout, command));
    let text = match result {
        Ok(text) => text,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match text {
        Ok(text) => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: cannot write the answer: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// [`DfsClient::get`] with a progress bar for a large file, fed from the size of the partial
/// file being written.
async fn get_with_progress(
    client: &DfsClient,
    name: &str,
    local: &Path,
) -> Result<GetDone, DfsClientError> {
    let versions = client.versions(name, 1).await?;
    let Some(version) = versions.into_iter().next() else {
        return Err(DfsClientError::Refused(DfsError::NotFound {
            name: name.to_owned(),
        }));
    };
    if version.size < PROGRESS_BYTES_MIN {
        return client.get_version(version, local, u64::MAX).await;
    }
    let bar = crate::progress::transfer(&format!("get {name}"), version.size);
    let partial = crate::blobs::client::partial_path(local);
    let fetch = client.get_version(version, local, u64::MAX);
    tokio::pin!(fetch);
    let done = loop {
        tokio::select! {
            done = &mut fetch => break done,
            () = tokio::time::sleep(GET_PROGRESS_POLL) => {
                if let Ok(meta) = tokio::fs::metadata(&partial).await {
                    bar.set_position(meta.len());
                }
            }
        }
    };
    bar.finish_and_clear();
    done
}

async fn run(
    node: SocketAddr,
    timeout: Duration,
    command: DfsClientCommand,
) -> Result<String, DfsClientError> {
    let mut client = DfsClient::new(node, timeout);
    match command {
        DfsClientCommand::Put { local, name, json } => {
            let done = client.put(&local, &name).await?;
            let replicas: Vec<String> = done.replicas.iter().map(ToString::to_string).collect();
            Ok(if json {
                format!(
                    "{}\n",
                    serde_json::json!({
                        "name": done.name, "version": done.version, "size": done.size,
                        "hash": done.hash.to_string(), "replicas": replicas,
                    })
                )
            } else {
                format!(
                    "stored {} version {} ({} bytes) on {}\n",
                    done.name,
                    done.version,
                    done.size,
                    replicas.join(" ")
                )
            })
        }
        DfsClientCommand::Get { name, local, json } => {
            let done = get_with_progress(&client, &name, &local).await?;
            let reported: Vec<String> = done.reported.iter().map(ToString::to_string).collect();
            Ok(if json {
                format!(
                    "{}\n",
                    serde_json::json!({
                        "name": name, "version": done.version.version, "size": done.version.size,
                        "hash": done.version.hash.to_string(),
                        "served_by": done.served_by.to_string(), "reported": reported,
                    })
                )
            } else {
                let mut line = format!(
                    "got {name} version {} ({} bytes) from {} into {}\n",
                    done.version.version,
                    done.version.size,
                    done.served_by,
                    local.display()
                );
                if !reported.is_empty() {
                    line.push_str(&format!("reported bad copies on {}\n", reported.join(" ")));
                }
                line
            })
        }
        DfsClientCommand::Delete { name, json } => {
            let versions = client.delete(&name).await?;
            Ok(if json {
                format!(
                    "{}\n",
                    serde_json::json!({"name": name, "versions": versions})
                )
            } else {
                format!("deleted {name} ({versions} versions)\n")
            })
        }
        DfsClientCommand::Ls { name, json } => {
            let versions = client.versions(&name, 1).await?;
            let Some(v) = versions.first() else {
                return Err(DfsClientError::Refused(DfsError::NotFound { name }));
            };
            let replicas: Vec<String> = v.replicas.iter().map(ToString::to_string).collect();
            Ok(if json {
                format!(
                    "{}\n",
                    serde_json::json!({
                        "name": v.name, "version": v.version, "size": v.size,
                        "hash": v.hash.to_string(), "replicas": replicas,
                    })
                )
            } else {
                let mut out = format!(
                    "{} version {} ({} bytes, {} replicas)\n",
                    v.name,
                    v.version,
                    v.size,
                    replicas.len()
                );
                for r in &replicas {
                    out.push_str(&format!("  {r}\n"));
                }
                out
            })
        }
        DfsClientCommand::Store { json } => {
            let listing = client.store().await?;
            Ok(render_store(&listing, json))
        }
        DfsClientCommand::GetVersions {
            name,
            n,
            local,
            json,
        } => {
            let count = usize::try_from(n).unwrap_or(1);
            let versions = client.get_versions(&name, count, &local).await?;
            let numbers: Vec<u64> = versions.iter().map(|v| v.version).collect();
            Ok(if json {
                format!(
                    "{}\n",
                    serde_json::json!({"name": name, "versions": numbers, "file": local.display().to_string()})
                )
            } else {
                let list: Vec<String> = numbers.iter().map(ToString::to_string).collect();
                format!(
                    "wrote {name} versions {} (newest first) into {}\n",
                    list.join(", "),
                    local.display()
                )
            })
        }
        DfsClientCommand::List { prefix, json } => {
            let names = client.list(&prefix).await?;
            Ok(if json {
                format!("{}\n", serde_json::json!(names))
            } else if names.is_empty() {
                "no files\n".to_owned()
            } else {
                names.iter().map(|n| format!("{n}\n")).collect()
            })
        }
    }
}

fn render_store(listing: &StoreListing, json: bool) -> String {
    if json {
        let files: Vec<serde_json::Value> = listing
            .files
            .iter()
            .map(|(name, version)| serde_json::json!({"name": name, "version": version}))
            .collect();
        let blobs: Vec<serde_json::Value> = listing
            .blobs
            .iter()
            .map(|(hash, size)| serde_json::json!({"hash": hash.to_string(), "size": size}))
            .collect();
        return format!(
            "{}\n",
            serde_json::json!({"node": listing.node.to_string(), "files": files, "blobs": blobs})
        );
    }
    let mut out = format!(
        "node {}: {} file versions, {} blobs\n",
        listing.node,
        listing.files.len(),
        listing.blobs.len()
    );
    if !listing.files.is_empty() {
        out.push_str(&format!("{:<40} {:>8}\n", "NAME", "VERSION"));
        for (name, version) in &listing.files {
            out.push_str(&format!("{name:<40} {version:>8}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn node(last: u8) -> NodeId {
        NodeId::new(SocketAddr::from(([127, 0, 0, last], 7000)), 1)
    }

    fn hash(i: u32) -> ContentHash {
        ContentHash(*blake3::hash(&i.to_le_bytes()).as_bytes())
    }

    #[test]
    fn the_readers_own_copy_comes_first_and_every_replica_once() {
        let replicas = [node(1), node(2), node(3), node(4)];
        for i in 0..32 {
            let order = read_order(&replicas, node(3).addr, &hash(i));
            assert_eq!(order.first(), Some(&node(3).addr));
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(sorted, replicas.map(|n| n.addr).to_vec());
            // Another reader of the same blob agrees on the order of the others.
            let elsewhere = read_order(&replicas, node(9).addr, &hash(i));
            let others: Vec<SocketAddr> = elsewhere
                .iter()
                .copied()
                .filter(|a| *a != node(3).addr)
                .collect();
            assert_eq!(&order[1..], others.as_slice());
        }
    }

    #[test]
    fn reads_of_different_blobs_spread_over_the_replicas() {
        let replicas = [node(1), node(2), node(3), node(4)];
        let mut first = BTreeMap::new();
        for i in 0..400 {
            let order = read_order(&replicas, node(9).addr, &hash(i));
            *first.entry(order[0]).or_insert(0) += 1;
        }
        // Each of the four is asked first for roughly a quarter of the blobs (not always the
        // lowest address, as the namespace's order would have it).
        assert_eq!(first.len(), 4, "{first:?}");
        assert!(
            first.values().all(|&n| (50..=150).contains(&n)),
            "{first:?}"
        );
    }
}
