//! The file system's background tasks on a node: announcing its blob store (`StoreReady`, so
//! placement may choose it), re-replication (acts only while this node's Raft driver leads),
//! corrupt-replica reports (from the scrubber and the blob service, sent to the leader as
//! `ReplicaLost`), and garbage collection of blobs no kept version refers to.
//!
//! Owns: [`announce_store`], [`repair_loop`], [`report_corrupt`], [`gc_loop`] and their
//! settings ([`GcOptions`]).
//! Re-replication: every [`REPAIR_INTERVAL`] the task asks its own Raft driver (never
//! forwarded, so only the leader answers) for the copies to start, given those running; each
//! copy asks the target to fetch the blob from a live source (verified, fsynced), then proposes
//! `ReplicaAdded`. At most [`REPAIRS_PARALLEL`] copies run at once.
//! Must never: decide what to copy (core::dfs::repair does), delete a blob a kept version
//! refers to or one younger than the grace period (it may be a put not yet committed), or stop
//! on an error (it logs it and tries again next round).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use idunno_core::dfs::{ContentHash, DfsAnswer, DfsCommand, DfsRequest};
use idunno_core::membership::NodeId;
use idunno_core::wire::{ControlRequest, ControlResponse};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info, warn};

use super::{blob_hash, content_hash, to_leader};
use crate::blobs::{BlobHash, BlobStore};
use crate::control;

/// How often the leader looks for under-replicated blobs.
pub const REPAIR_INTERVAL: Duration = Duration::from_millis(1000);
/// Most re-replication copies running at once.
pub const REPAIRS_PARALLEL: usize = 4;
/// Longest one copy may take (a 1 GB blob at ~10 MB/s, with margin).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(180);
/// Longest a question to this node's own driver or to the leader may take.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a node collects its garbage.
pub const GC_INTERVAL: Duration = Duration::from_secs(30);
/// A blob younger than this is never collected (a put may not have committed yet).
pub const GC_GRACE: Duration = Duration::from_secs(600);
/// First pause between tries to announce the store (doubled up to [`ANNOUNCE_PAUSE_MAX`]).
pub const ANNOUNCE_PAUSE: Duration = Duration::from_millis(100);
/// Longest pause between tries to announce the store: short, because until it is announced
/// puts place their replicas on the other stores only (one try per generation, so cheap).
pub const ANNOUNCE_PAUSE_MAX: Duration = Duration::from_secs(1);

/// When and what a node's garbage collector removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcOptions {
    /// Pause between passes; must not be zero.
    pub interval: Duration,
    /// Age (file modification time) under which an unreferenced blob is kept: it must exceed
    /// the longest put (bytes stored, version not yet committed) by a wide margin.
    pub grace: Duration,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            interval: GC_INTERVAL,
            grace: GC_GRACE,
        }
    }
}

/// Proposes `StoreReady` for `me` (this node's generation) until the log applied it: from
/// then on placement and repair may choose this node. Ends then, or when the cluster refuses
/// it for good (this generation was declared failed, or the set is full).
pub async fn announce_store(self_addr: SocketAddr, me: NodeId) {
    let ready = to_leader(
        DfsRequest::Apply(DfsCommand::StoreReady { node: me }),
        false,
    );
    let mut pause = ANNOUNCE_PAUSE;
    loop {
        match control::call_following_leader(self_addr, &ready, ASK_TIMEOUT).await {
            Ok((_, ControlResponse::Dfs(DfsAnswer::Applied(Ok(_))))) => {
                info!("blob store announced: this node takes replicas");
                return;
            }
            Ok((_, ControlResponse::Dfs(DfsAnswer::Applied(Err(e))))) => {
                warn!(error = %e, "the cluster refused this node's blob store");
                return;
            }
            Ok((_, other)) => debug!(?other, "store announcement not applied; retrying"),
            Err(e) => debug!(error = %e, "cannot announce the store yet; retrying"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(ANNOUNCE_PAUSE_MAX);
    }
}

/// While this node leads, restores the replication factor of under-replicated blobs.
/// `self_addr` is this node's control address (its Raft driver answers there).
pub async fn repair_loop(self_addr: SocketAddr) {
    let mut running: JoinSet<(ContentHash, NodeId, bool)> = JoinSet::new();
    let mut in_flight: BTreeSet<(ContentHash, NodeId)> = BTreeSet::new();
    let mut tick = tokio::time::interval(REPAIR_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(done) = running.join_next(), if !running.is_empty() => {
                if let Ok((hash, to, ok)) = done {
                    in_flight.remove(&(hash, to));
                    debug!(?hash, %to, ok, "re-replication copy finished");
                }
                continue;
            }
        }
        if in_flight.len() >= REPAIRS_PARALLEL {
            continue;
        }
        let ask = ControlRequest::Dfs {
            request: DfsRequest::PlanRepairs {
                in_flight: in_flight.iter().copied().collect(),
                max_parallel: REPAIRS_PARALLEL,
            },
            forwarded: true,
        };
        let repairs = match control::call(self_addr, &ask, ASK_TIMEOUT).await {
            Ok(ControlResponse::Dfs(DfsAnswer::Repairs(repairs))) => repairs,
            // Not the leader (or no leader yet): nothing to do here.
            Ok(_) => continue,
            Err(e) => {
                debug!(error = %e, "cannot plan repairs");
                continue;
            }
        };
        for (hash, from, to) in repairs {
            if !in_flight.insert((hash, to)) {
                continue;
            }
            info!(?hash, %from, %to, "re-replicating");
            running.spawn(
                async move {
                    let ok = copy_one(self_addr, hash, from, to).await;
                    (hash, to, ok)
                }
                .in_current_span(),
            );
        }
    }
}

/// Asks `to` to fetch `hash` from `from`, then records the new replica.
async fn copy_one(self_addr: SocketAddr, hash: ContentHash, from: NodeId, to: NodeId) -> bool {
    let fetch = ControlRequest::Dfs {
        request: DfsRequest::Fetch {
            hash,
            sources: vec![from],
        },
        forwarded: false,
    };
    match control::call(to.addr, &fetch, FETCH_TIMEOUT).await {
        Ok(ControlResponse::Dfs(DfsAnswer::Fetched { .. })) => {}
        Ok(other) => {
            warn!(?hash, %to, ?other, "re-replication copy refused");
            return false;
        }
        Err(e) => {
            warn!(?hash, %to, error = %e, "re-replication copy failed");
            return false;
        }
    }
    let added = to_leader(
        DfsRequest::Apply(DfsCommand::ReplicaAdded { hash, node: to }),
        false,
    );
    match control::call_following_leader(self_addr, &added, ASK_TIMEOUT).await {
        Ok((_, ControlResponse::Dfs(DfsAnswer::Applied(Ok(_))))) => {
            info!(?hash, %to, "replica added");
            true
        }
        Ok((_, other)) => {
            warn!(?hash, %to, ?other, "replica not recorded");
            false
        }
        Err(e) => {
            warn!(?hash, %to, error = %e, "cannot record the replica");
            false
        }
    }
}

/// Sends every corrupt blob this node reports to the leader as `ReplicaLost` for `me`.
pub async fn report_corrupt(
    self_addr: SocketAddr,
    me: NodeId,
    mut corrupt: mpsc::Receiver<BlobHash>,
) {
    while let Some(hash) = corrupt.recv().await {
        warn!(%hash, "corrupt blob removed from this node's store; reporting it");
        let lost = to_leader(
            DfsRequest::Apply(DfsCommand::ReplicaLost {
                hash: content_hash(&hash),
                node: me,
            }),
            false,
        );
        for attempt in 0..5u32 {
            match control::call_following_leader(self_addr, &lost, ASK_TIMEOUT).await {
                Ok((_, ControlResponse::Dfs(DfsAnswer::Applied(_)))) => break,
                Ok((_, other)) => {
                    debug!(%hash, ?other, "report not applied");
                    break;
                }
                Err(e) => {
                    debug!(%hash, error = %e, attempt, "cannot report; retrying");
                    tokio::time::sleep(Duration::from_millis(500) * (attempt + 1)).await;
                }
            }
        }
    }
}

/// Every `options.interval`, deletes local blobs no kept version refers to (older than
/// `options.grace`), asking the leader (through this node) which blobs are referenced.
pub async fn gc_loop(self_addr: SocketAddr, store: BlobStore, options: GcOptions) {
    debug_assert!(!options.interval.is_zero());
    let grace = options.grace;
    let mut tick = tokio::time::interval(options.interval.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let ask = to_leader(DfsRequest::Referenced, false);
        let referenced = match control::call_following_leader(self_addr, &ask, ASK_TIMEOUT).await {
            Ok((_, ControlResponse::Dfs(DfsAnswer::Referenced(hashes)))) => hashes,
            Ok((_, other)) => {
                debug!(?other, "no referenced set; gc skipped");
                continue;
            }
            Err(e) => {
                debug!(error = %e, "no referenced set; gc skipped");
                continue;
            }
        };
        let live: BTreeSet<BlobHash> = referenced.iter().map(blob_hash).collect();
        let store = store.clone();
        let removed =
            tokio::task::spawn_blocking(move || store.gc(&live, grace, SystemTime::now())).await;
        match removed {
            Ok(Ok(removed)) if !removed.is_empty() => {
                info!(count = removed.len(), "garbage blobs removed");
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "gc failed"),
            Err(e) => warn!(error = %e, "gc task failed"),
        }
    }
}
