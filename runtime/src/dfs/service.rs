//! The node-local file-system requests, served on the control port with the node's blob
//! store: `Fetch` (copy a blob from another node, verified, for re-replication) and `Held`
//! (what this node stores).
//!
//! Owns: [`serve`]. A fetch lands in a scratch file beside the store (`<data-dir>/dfs-fetch`),
//! checked against its hash by the blob client, then enters the store (checked again).
//! Must never: answer `Fetched` before the blob is fsynced in the store, leave a scratch file
//! behind on success, or panic on a bad request.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use idunno_core::dfs::{DfsAnswer, DfsRequest};
use idunno_core::wire::{ControlRequest, ControlResponse};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info, warn};

use super::{blob_hash, content_hash};
use crate::blobs::{BlobService, BlobStore, get_blob};
use crate::control::write_frame;

/// Most sources one fetch tries.
pub const FETCH_SOURCES_MAX: usize = 16;
/// Name of the scratch directory (beside the blob store) fetches download into.
pub const FETCH_DIR: &str = "dfs-fetch";

static NEXT_SCRATCH: AtomicU64 = AtomicU64::new(0);

/// Answers one node-local `Dfs` request on `stream`.
pub async fn serve<S>(service: &BlobService, stream: &mut S, request: ControlRequest)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ControlRequest::Dfs { request, .. } = request else {
        return;
    };
    let answer = match request {
        DfsRequest::Held => held(service.store().clone()).await,
        DfsRequest::Fetch { hash, sources } => {
            let sources: Vec<SocketAddr> = sources
                .iter()
                .take(FETCH_SOURCES_MAX)
                .map(|n| n.addr)
                .collect();
            fetch(service.store(), blob_hash(&hash), &sources).await
        }
        other => ControlResponse::Error(format!("not a node-local request: {other:?}")),
    };
    if let Err(e) = write_frame(stream, &answer).await {
        debug!(error = %e, "cannot write the dfs answer");
    }
}

async fn held(store: BlobStore) -> ControlResponse {
    let listed = tokio::task::spawn_blocking(move || store.list()).await;
    match listed {
        Ok(Ok(blobs)) => ControlResponse::Dfs(DfsAnswer::Held(
            blobs
                .iter()
                .map(|(hash, size)| (content_hash(hash), *size))
                .collect(),
        )),
        Ok(Err(e)) => ControlResponse::Error(format!("cannot list the blob store: {e}")),
        Err(e) => ControlResponse::Error(format!("listing failed: {e}")),
    }
}

/// Copies blob `hash` from the first of `sources` that serves a good copy into `store`.
pub async fn fetch(
    store: &BlobStore,
    hash: crate::blobs::BlobHash,
    sources: &[SocketAddr],
) -> ControlResponse {
    if let Some(size) = store.size_of(&hash) {
        // A copy already here counts only if it hashes right (the leader may be replacing
        // this very copy because it was reported corrupt), and only once it is young again:
        // it may be an old orphan that the garbage collector is about to remove (if it did
        // already, the copy is fetched anew).
        if verify_or_remove(store.clone(), hash).await {
            let refresh = store.clone();
            match tokio::task::spawn_blocking(move || refresh.refresh(&hash)).await {
                Ok(Ok(true)) => return ControlResponse::Dfs(DfsAnswer::Fetched { size }),
                Ok(Ok(false)) => debug!(%hash, "the local copy was collected meanwhile"),
                Ok(Err(e)) => warn!(%hash, error = %e, "cannot refresh the local copy"),
                Err(e) => warn!(%hash, error = %e, "refresh task failed"),
            }
        }
    }
    let dir = scratch_dir(store);
    if let Err(e) = tokio::fs::create_dir_all(&dir).await {
        return ControlResponse::Error(format!("cannot create {}: {e}", dir.display()));
    }
    let n = NEXT_SCRATCH.fetch_add(1, Ordering::Relaxed);
    let scratch = dir.join(format!("{}.{}.{n}", hash.to_hex(), std::process::id()));
    let report = match get_blob(sources, hash, &scratch).await {
        Ok(report) => report,
        Err(e) => return ControlResponse::Error(format!("fetch of {hash} failed: {e}")),
    };
    let store = store.clone();
    let path = scratch.clone();
    let size = report.size;
    let stored = tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
        store
            .put_from(hash, size, &mut file)
            .map_err(|e| e.to_string())
    })
    .await;
    let _ = tokio::fs::remove_file(&scratch).await;
    match stored {
        Ok(Ok(_)) => {
            info!(%hash, size, from = %report.served_by, "blob fetched for re-replication");
            ControlResponse::Dfs(DfsAnswer::Fetched { size })
        }
        Ok(Err(e)) => ControlResponse::Error(format!("cannot store {hash}: {e}")),
        Err(e) => ControlResponse::Error(format!("storing {hash} failed: {e}")),
    }
}

/// Whether the local copy of `hash` hashes right; a bad copy is removed.
async fn verify_or_remove(store: BlobStore, hash: crate::blobs::BlobHash) -> bool {
    let checked = tokio::task::spawn_blocking(move || {
        let verified = store.reader(hash, 0).and_then(|mut reader| {
            let mut buf = vec![0u8; crate::blobs::CHUNK_BYTES];
            while reader.read(&mut buf)? > 0 {}
            Ok(())
        });
        match verified {
            Ok(()) => true,
            Err(e) => {
                warn!(%hash, error = %e, "local copy is bad; fetching it again");
                let _ = store.remove(&hash);
                false
            }
        }
    })
    .await;
    checked.unwrap_or(false)
}

fn scratch_dir(store: &BlobStore) -> PathBuf {
    match store.dir().parent() {
        Some(parent) => parent.join(FETCH_DIR),
        None => store.dir().join("..").join(FETCH_DIR),
    }
}
