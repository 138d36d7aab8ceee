//! Sealed membership datagrams, keyed by the cluster key.
//!
//! The envelope `[version][session u64][counter u64][unix seconds u64][ciphertext][16-byte tag]`,
//! its XChaCha20-Poly1305 sealing and opening and the [`ReplayGuard`] are pure computation and
//! live in [`idunno_core::auth::datagram`] (where a fuzz target reaches them without this
//! crate's dependencies); this module re-exports them and derives a [`DatagramKey`] from a
//! [`ClusterKey`]. [`super::socket`] supplies the session, counter and wall clock.
//! Must never: expose the cluster key's bytes beyond the key derivation.

pub use idunno_core::auth::datagram::{
    CLOCK_SKEW_MAX_SECS, DATAGRAM_VERSION, DatagramKey, HEADER_BYTES, OVERHEAD_BYTES, Opened,
    REPLAY_WINDOW, Rejection, ReplayGuard, SESSIONS_MAX, TAG_BYTES,
};

use super::ClusterKey;

impl From<&ClusterKey> for DatagramKey {
    /// The datagram key of the cluster whose key is `key`.
    fn from(key: &ClusterKey) -> Self {
        DatagramKey::new(key.bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_key_keys_the_same_cipher_as_its_bytes() {
        let now = 1_800_000_000;
        let sealed = DatagramKey::from(&ClusterKey::from_bytes([3; 32])).seal(1, 2, now, b"x");
        let opened = DatagramKey::new(&[3; 32]).open(&sealed, now);
        assert_eq!(opened.map(|o| o.plaintext), Ok(b"x".to_vec()));
        let other = DatagramKey::from(&ClusterKey::from_bytes([4; 32])).open(&sealed, now);
        assert_eq!(other, Err(Rejection::Forged));
    }
}
