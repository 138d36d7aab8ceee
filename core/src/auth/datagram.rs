//! Sealed membership datagrams: authenticated encryption with replay protection (pure: the
//! runtime's `AuthSocket` passes in the key, its session, counter and wall-clock seconds).
//!
//! Owns: the datagram envelope `[version][session u64][counter u64][unix seconds u64]
//! [ciphertext][16-byte tag]` (header authenticated as associated data), sealing and opening it
//! with XChaCha20-Poly1305 under a key derived from the cluster key for this purpose only, and
//! [`ReplayGuard`], which accepts each `(session, counter)` once within a sliding window.
//! A sender picks a random session id at start and counts up, so nonces never repeat; a datagram
//! whose timestamp is more than [`CLOCK_SKEW_MAX_SECS`] from the receiver's clock is refused,
//! which bounds what a replay can do once a session has been forgotten.
//! Must never: record a session before its datagram authenticates (forgeries cannot evict real
//! sessions), allocate from an unauthenticated length, or panic on any input.

use std::collections::BTreeMap;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use super::KEY_BYTES;

/// First byte of a sealed datagram.
pub const DATAGRAM_VERSION: u8 = 0xA1;
/// Bytes of the authenticated header.
pub const HEADER_BYTES: usize = 1 + 8 + 8 + 8;
/// Bytes of the Poly1305 tag.
pub const TAG_BYTES: usize = 16;
/// What sealing adds to a datagram.
pub const OVERHEAD_BYTES: usize = HEADER_BYTES + TAG_BYTES;
/// How far behind the newest counter of a session a datagram may arrive (reordering).
pub const REPLAY_WINDOW: u64 = 128;
/// Sessions remembered at once; the least recently heard is forgotten first.
pub const SESSIONS_MAX: usize = 1024;
/// Largest accepted difference between a datagram's timestamp and the receiver's clock.
pub const CLOCK_SKEW_MAX_SECS: u64 = 120;
/// Context string of the key derivation (BLAKE3 `derive_key`): this key seals datagrams only.
const KEY_CONTEXT: &str = "idunno 2026-11-26 membership datagram key v1";
/// Last 8 bytes of every datagram nonce (the first 16 are session and counter).
const NONCE_SUFFIX: [u8; 8] = *b"idunnoUD";

/// Why a datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Too short, or not a sealed datagram of this version.
    #[error("not a sealed datagram")]
    Malformed,
    /// The tag did not verify: wrong key, or bytes changed on the way.
    #[error("authentication failed")]
    Forged,
    /// Authentic, but its timestamp is too far from this node's clock.
    #[error("timestamp too far from this node's clock")]
    Stale,
    /// Authentic, but this `(session, counter)` was already accepted or is too old.
    #[error("replayed")]
    Replayed,
}

/// An authenticated datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The sender's session id.
    pub session: u64,
    /// The sender's counter.
    pub counter: u64,
    /// The plaintext.
    pub plaintext: Vec<u8>,
}

/// The datagram cipher.
#[derive(Clone)]
pub struct DatagramKey {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for DatagramKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatagramKey(<redacted>)")
    }
}

fn nonce(session: u64, counter: u64) -> XNonce {
    let mut bytes = [0u8; 24];
    bytes[..8].copy_from_slice(&session.to_be_bytes());
    bytes[8..16].copy_from_slice(&counter.to_be_bytes());
    bytes[16..].copy_from_slice(&NONCE_SUFFIX);
    XNonce::from(bytes)
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let slice = bytes.get(at..at + 8)?;
    let array: [u8; 8] = slice.try_into().ok()?;
    Some(u64::from_be_bytes(array))
}

impl DatagramKey {
    /// The datagram key of the cluster whose key is `cluster_key`.
    pub fn new(cluster_key: &[u8; KEY_BYTES]) -> Self {
        let derived = blake3::derive_key(KEY_CONTEXT, cluster_key);
        DatagramKey {
            cipher: XChaCha20Poly1305::new(&derived.into()),
        }
    }

    /// Seals `plaintext` as datagram `counter` of `session`, stamped `unix_secs`.
    pub fn seal(&self, session: u64, counter: u64, unix_secs: u64, plaintext: &[u8]) -> Vec<u8> {
        let mut header = [0u8; HEADER_BYTES];
        header[0] = DATAGRAM_VERSION;
        header[1..9].copy_from_slice(&session.to_be_bytes());
        header[9..17].copy_from_slice(&counter.to_be_bytes());
        header[17..25].copy_from_slice(&unix_secs.to_be_bytes());
        let payload = Payload {
            msg: plaintext,
            aad: &header,
        };
        // Encryption fails only for plaintexts beyond 256 GiB; a datagram is never that big.
        let sealed = self
            .cipher
            .encrypt(&nonce(session, counter), payload)
            .unwrap_or_default();
        let mut datagram = Vec::with_capacity(HEADER_BYTES + sealed.len());
        datagram.extend_from_slice(&header);
        datagram.extend_from_slice(&sealed);
        debug_assert_eq!(datagram.len(), plaintext.len() + OVERHEAD_BYTES);
        datagram
    }

    /// Verifies and decrypts a datagram, checking its timestamp against `now_unix_secs`.
    /// Replays are the [`ReplayGuard`]'s job.
    pub fn open(&self, datagram: &[u8], now_unix_secs: u64) -> Result<Opened, Rejection> {
        if datagram.len() < OVERHEAD_BYTES || datagram[0] != DATAGRAM_VERSION {
            return Err(Rejection::Malformed);
        }
        let (header, sealed) = datagram.split_at(HEADER_BYTES);
        let session = read_u64(header, 1).ok_or(Rejection::Malformed)?;
        let counter = read_u64(header, 9).ok_or(Rejection::Malformed)?;
        let stamp = read_u64(header, 17).ok_or(Rejection::Malformed)?;
        let payload = Payload {
            msg: sealed,
            aad: header,
        };
        let plaintext = self
            .cipher
            .decrypt(&nonce(session, counter), payload)
            .map_err(|_| Rejection::Forged)?;
        if stamp.abs_diff(now_unix_secs) > CLOCK_SKEW_MAX_SECS {
            return Err(Rejection::Stale);
        }
        Ok(Opened {
            session,
            counter,
            plaintext,
        })
    }
}

/// What one session has been seen sending.
#[derive(Debug, Clone, Copy)]
struct Window {
    /// The highest counter accepted.
    highest: u64,
    /// Bit `i` set: counter `highest - i` was accepted.
    seen: u128,
    /// When this session was last accepted (the guard's own tick), for eviction.
    touched: u64,
}

/// Accepts each authenticated `(session, counter)` at most once.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    sessions: BTreeMap<u64, Window>,
    tick: u64,
}

impl ReplayGuard {
    /// Records `(session, counter)`, or refuses it as a replay (or as older than the window).
    pub fn accept(&mut self, session: u64, counter: u64) -> Result<(), Rejection> {
        self.tick += 1;
        let tick = self.tick;
        if let Some(window) = self.sessions.get_mut(&session) {
            if counter > window.highest {
                let shift = counter - window.highest;
                window.seen = if shift >= 128 {
                    0
                } else {
                    window.seen << shift
                };
                window.seen |= 1;
                window.highest = counter;
            } else {
                let behind = window.highest - counter;
                if behind >= REPLAY_WINDOW || window.seen & (1u128 << behind) != 0 {
                    return Err(Rejection::Replayed);
                }
                window.seen |= 1u128 << behind;
            }
            window.touched = tick;
            return Ok(());
        }
        if self.sessions.len() >= SESSIONS_MAX {
            let oldest = self
                .sessions
                .iter()
                .min_by_key(|(_, window)| window.touched)
                .map(|(&id, _)| id);
            if let Some(id) = oldest {
                self.sessions.remove(&id);
            }
        }
        self.sessions.insert(
            session,
            Window {
                highest: counter,
                seen: 1,
                touched: tick,
            },
        );
        debug_assert!(self.sessions.len() <= SESSIONS_MAX);
        Ok(())
    }

    /// Sessions remembered.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn key(byte: u8) -> DatagramKey {
        DatagramKey::new(&[byte; KEY_BYTES])
    }

    #[test]
    fn round_trip() {
        let k = key(1);
        let sealed = k.seal(7, 3, NOW, b"ping");
        assert_eq!(sealed.len(), 4 + OVERHEAD_BYTES);
        let opened = k.open(&sealed, NOW);
        assert_eq!(
            opened,
            Ok(Opened {
                session: 7,
                counter: 3,
                plaintext: b"ping".to_vec()
            })
        );
    }

    #[test]
    fn the_payload_is_not_readable_without_the_key() {
        let sealed = key(1).seal(7, 3, NOW, b"members: 10.0.0.1");
        assert!(!sealed.windows(7).any(|w| w == b"members"));
        assert_eq!(key(2).open(&sealed, NOW), Err(Rejection::Forged));
    }

    #[test]
    fn every_flipped_bit_is_rejected() {
        let k = key(1);
        let sealed = k.seal(7, 3, NOW, b"suspect node 4");
        for byte in 0..sealed.len() {
            for bit in 0..8 {
                let mut bad = sealed.clone();
                bad[byte] ^= 1 << bit;
                let opened = k.open(&bad, NOW);
                assert!(
                    matches!(opened, Err(Rejection::Forged | Rejection::Malformed)),
                    "byte {byte} bit {bit}: {opened:?}"
                );
            }
        }
    }

    #[test]
    fn short_and_foreign_datagrams_are_malformed() {
        let k = key(1);
        assert_eq!(k.open(&[], NOW), Err(Rejection::Malformed));
        assert_eq!(
            k.open(&[0; OVERHEAD_BYTES - 1], NOW),
            Err(Rejection::Malformed)
        );
        let mut plain = vec![1u8; 200];
        plain[0] = 1;
        assert_eq!(k.open(&plain, NOW), Err(Rejection::Malformed));
        // A sealed empty message is valid.
        assert!(k.open(&k.seal(1, 1, NOW, b""), NOW).is_ok());
    }

    #[test]
    fn stale_timestamps_are_rejected() {
        let k = key(1);
        let old = k.seal(7, 3, NOW - CLOCK_SKEW_MAX_SECS - 1, b"x");
        assert_eq!(k.open(&old, NOW), Err(Rejection::Stale));
        let future = k.seal(7, 4, NOW + CLOCK_SKEW_MAX_SECS + 1, b"x");
        assert_eq!(k.open(&future, NOW), Err(Rejection::Stale));
        let edge = k.seal(7, 5, NOW - CLOCK_SKEW_MAX_SECS, b"x");
        assert!(k.open(&edge, NOW).is_ok());
    }

    #[test]
    fn replays_are_rejected_and_reordering_is_not() {
        let mut guard = ReplayGuard::default();
        assert_eq!(guard.accept(9, 10), Ok(()));
        assert_eq!(guard.accept(9, 10), Err(Rejection::Replayed));
        assert_eq!(guard.accept(9, 12), Ok(()));
        assert_eq!(guard.accept(9, 11), Ok(()), "late but new");
        assert_eq!(guard.accept(9, 11), Err(Rejection::Replayed));
        assert_eq!(guard.accept(9, 12 + REPLAY_WINDOW), Ok(()));
        assert_eq!(
            guard.accept(9, 12),
            Err(Rejection::Replayed),
            "outside the window"
        );
        assert_eq!(guard.accept(9, 13), Ok(()), "inside the window, never seen");
        assert_eq!(guard.accept(10, 10), Ok(()), "another session");
        assert_eq!(guard.accept(9, u64::MAX), Ok(()));
        assert_eq!(guard.accept(9, u64::MAX), Err(Rejection::Replayed));
    }

    #[test]
    fn sessions_are_bounded_and_the_quietest_is_forgotten() {
        let mut guard = ReplayGuard::default();
        for session in 0..SESSIONS_MAX as u64 {
            assert_eq!(guard.accept(session, 0), Ok(()));
        }
        assert_eq!(
            guard.accept(0, 1),
            Ok(()),
            "session 0 is now the most recent"
        );
        assert_eq!(guard.accept(u64::MAX, 0), Ok(()));
        assert_eq!(guard.sessions(), SESSIONS_MAX);
        assert_eq!(
            guard.accept(0, 1),
            Err(Rejection::Replayed),
            "session 0 kept"
        );
        assert_eq!(guard.accept(1, 0), Ok(()), "session 1 was forgotten");
    }
}
