//! The periodic scrubber: re-hashes every stored blob at a bounded rate and reports the corrupt
//! ones.
//!
//! Owns: the scrub schedule ([`ScrubOptions`]) and forwarding what a pass found onto the node's
//! corrupt-blob channel (which the node will forward to the leader, so the replica is replaced).
//! Must never: read faster than its rate, run two passes at once, or stop the node on a disk
//! error (it logs and tries again next interval).

use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{BlobHash, BlobStore};

/// When and how fast the scrubber runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrubOptions {
    /// Pause between the end of one pass and the start of the next; must not be zero.
    pub interval: Duration,
    /// Most bytes re-hashed per second (0: no limit).
    pub bytes_per_second_max: u64,
}

impl Default for ScrubOptions {
    fn default() -> Self {
        ScrubOptions {
            interval: Duration::from_secs(3600),
            bytes_per_second_max: 50 * 1024 * 1024,
        }
    }
}

/// Runs scrub passes forever, every `options.interval`, sending each corrupt blob's hash
/// (already removed from the store) to `reports`. Ends when `reports` is closed.
pub async fn run(store: BlobStore, options: ScrubOptions, reports: mpsc::Sender<BlobHash>) {
    debug_assert!(!options.interval.is_zero());
    let interval = options.interval.max(Duration::from_millis(1));
    loop {
        tokio::time::sleep(interval).await;
        let pass = store.clone();
        let rate = options.bytes_per_second_max;
        let report = match tokio::task::spawn_blocking(move || pass.scrub(rate)).await {
            Ok(Ok(report)) => report,
            Ok(Err(e)) => {
                warn!(error = %e, "scrub pass failed; retrying next interval");
                continue;
            }
            Err(e) => {
                warn!(error = %e, "scrub task failed; retrying next interval");
                continue;
            }
        };
        info!(
            checked = report.checked,
            bytes = report.bytes,
            corrupt = report.corrupt.len(),
            "scrub pass done"
        );
        for hash in report.corrupt {
            warn!(%hash, "scrub found a corrupt blob; removed");
            if reports.send(hash).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobs::StoreLimits;
    use crate::blobs::testutil::{TempDir, bytes};

    #[tokio::test]
    async fn a_pass_reports_and_removes_a_corrupt_blob() {
        let dir = TempDir::new("scrubber");
        let store = BlobStore::open(dir.path(), StoreLimits::default()).expect("open");
        let data = bytes(10_000, 1);
        let hash = BlobHash::of(&data);
        store
            .put_from(hash, data.len() as u64, &mut &data[..])
            .expect("put");
        let mut flipped = data.clone();
        flipped[5] ^= 0x40;
        std::fs::write(store.path_of(&hash), &flipped).expect("corrupt");
        let (tx, mut rx) = mpsc::channel(4);
        let options = ScrubOptions {
            interval: Duration::from_millis(10),
            bytes_per_second_max: 0,
        };
        let task = tokio::spawn(run(store.clone(), options, tx));
        let reported = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a report in time");
        assert_eq!(reported, Some(hash));
        assert!(!store.contains(&hash));
        task.abort();
    }
}
