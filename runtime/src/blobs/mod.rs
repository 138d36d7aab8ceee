//! The bytes side of the distributed file system: a content-addressed blob store on each node's
//! disk, the streamed transfer protocol between nodes, and the client calls that put and get
//! blobs.
//!
//! Owns: blob files addressed by their BLAKE3 hash ([`store`]), the `BlobPut` / `BlobGet` part
//! of the control protocol with pipelined chain replication ([`transfer`]), the client side
//! ([`client`]) and the periodic scrubber ([`scrubber`]).
//! Must never: know about file names, versions or placement (that is `core::dfs`, which this
//! module does not depend on: it deals in content hashes and node addresses only), hold a whole
//! blob in memory, acknowledge a blob that is not fsynced and hash-checked, or panic on what a
//! peer or the disk hands it.

pub mod client;
mod pool;
pub mod scrubber;
pub mod store;
pub mod transfer;

#[cfg(test)]
mod tests;

use std::fmt;

pub use client::{GetReport, PutMode, get_blob, hash_file, put_blob, put_blob_from};
pub use store::{BlobStore, StoreError, StoreLimits};
pub use transfer::BlobService;

/// Bytes of one transfer or disk chunk: the unit every buffer of the blob path is sized in.
pub const CHUNK_BYTES: usize = 512 * 1024;

/// A blob's address: the BLAKE3 hash of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlobHash(pub [u8; 32]);

impl BlobHash {
    /// The hash of `bytes` (for small in-memory blobs and tests).
    pub fn of(bytes: &[u8]) -> Self {
        BlobHash(*blake3::hash(bytes).as_bytes())
    }

    /// Parses 64 lowercase or uppercase hex digits; `None` for anything else.
    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 64 {
            return None;
        }
        blake3::Hash::from_hex(hex)
            .ok()
            .map(|h| BlobHash(*h.as_bytes()))
    }

    /// The 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
}

impl From<blake3::Hash> for BlobHash {
    fn from(hash: blake3::Hash) -> Self {
        BlobHash(*hash.as_bytes())
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Twelve digits identify a blob in logs; the full hash is in Display.
        write!(f, "BlobHash({}..)", &self.to_hex()[..12])
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Unique scratch directories under the system temp dir, removed on drop.

    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU64, Ordering};

    static NEXT: AtomicU64 = AtomicU64::new(0);

    /// A fresh directory, removed (with its contents) when dropped.
    pub(crate) struct TempDir(PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> Self {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("idunno-blobs-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).expect("create temp dir");
            TempDir(path)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Deterministic pseudo-random bytes (not compressible, not all equal).
    pub(crate) fn bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }
}

#[cfg(test)]
mod hash_tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        let hash = BlobHash::of(b"hello");
        assert_eq!(BlobHash::from_hex(&hash.to_hex()), Some(hash));
        assert_eq!(BlobHash::from_hex("zz"), None);
        assert_eq!(BlobHash::from_hex(&"g".repeat(64)), None);
        assert_eq!(BlobHash::from_hex(&"ab".repeat(33)), None);
    }
}
