//! The datagram socket seam between the driver and the network.
//!
//! Owns: [`DatagramSocket`], the three socket verbs the membership driver needs, and its
//! implementation for `tokio::net::UdpSocket`. A simulated network (turmoil) implements the same
//! trait, so the driver runs unchanged over it.
//! Must never: decode, interpret or drop datagrams; that is the machine's job.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

/// Largest datagram the driver reads in one call, in bytes. Larger datagrams are truncated by the
/// socket and then fail to decode in the machine (the machine caps datagrams at 1400 bytes).
pub const RECV_BUFFER_BYTES: usize = 1500;

/// An unconnected datagram socket. Both futures must be cancel safe: the driver polls
/// `recv_from` inside `select!` and drops it when another event wins.
pub trait DatagramSocket {
    /// The address the socket is bound to (the real port when bound to port 0).
    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// Receives one datagram into `buf`: its length (truncated to `buf.len()`) and its source.
    fn recv_from(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<(usize, SocketAddr)>>;

    /// Sends `buf` as one datagram to `target`.
    fn send_to(&self, buf: &[u8], target: SocketAddr) -> impl Future<Output = io::Result<usize>>;
}

impl DatagramSocket for tokio::net::UdpSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::UdpSocket::local_addr(self)
    }

    fn recv_from(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<(usize, SocketAddr)>> {
        tokio::net::UdpSocket::recv_from(self, buf)
    }

    fn send_to(&self, buf: &[u8], target: SocketAddr) -> impl Future<Output = io::Result<usize>> {
        tokio::net::UdpSocket::send_to(self, buf, target)
    }
}
