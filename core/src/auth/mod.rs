//! Authentication of cluster traffic as pure computation: what the runtime's sockets seal,
//! open and check, without the sockets.
//!
//! Owns: the membership datagram envelope and its replay window ([`datagram`]), the TCP record
//! layer's framing, per-direction ciphers and a sans-IO record reader ([`record`]), and the TCP
//! handshake's messages, key schedule and the steps each side takes ([`handshake`]). Every key,
//! nonce, counter and timestamp is an argument: the caller (runtime/src/auth) owns the cluster
//! key file, the OS random generator, the wall clock and the sockets.
//! Must never: read a clock, draw randomness, perform I/O, print or `Debug`-format key bytes,
//! allocate from a length that did not authenticate (beyond a fixed cap), or panic on any byte
//! string a peer sends. The wire formats are fixed: changing one breaks every running cluster.

pub mod datagram;
pub mod handshake;
pub mod record;

/// Length of the cluster key, and of every secret derived from it, in bytes.
pub const KEY_BYTES: usize = 32;
