//! The membership socket with authentication: seals what the driver sends, opens and checks what
//! it receives, and counts what it refuses.
//!
//! Owns: [`AuthSocket`], a [`DatagramSocket`] over another one, this process's datagram session
//! (a random id and a counter), the [`ReplayGuard`] and the rejection counters ([`AuthStats`]).
//! Without a key it passes datagrams through unchanged (an insecure cluster, announced loudly by
//! the node at start).
//! Must never: hand the driver a datagram that did not authenticate, hold its lock across an
//! `await` (both futures stay cancel safe), or let one bad datagram end `recv_from`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chacha20poly1305::aead::OsRng;
use chacha20poly1305::aead::rand_core::RngCore;
use tracing::debug;

use super::ClusterKey;
use super::datagram::{DatagramKey, OVERHEAD_BYTES, Rejection, ReplayGuard};
use crate::net::{DatagramSocket, RECV_BUFFER_BYTES};

/// Counters of refused datagrams (shared, readable while the node runs).
#[derive(Debug, Default)]
pub struct AuthStats {
    /// Datagrams accepted.
    pub accepted: AtomicU64,
    /// Not sealed datagrams at all (too short, wrong version): a node without the key, or noise.
    pub malformed: AtomicU64,
    /// The tag failed: a wrong key or changed bytes.
    pub forged: AtomicU64,
    /// Authentic but with a timestamp too far from this node's clock.
    pub stale: AtomicU64,
    /// Authentic but already accepted.
    pub replayed: AtomicU64,
}

impl AuthStats {
    /// All refused datagrams.
    pub fn rejected(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
            + self.forged.load(Ordering::Relaxed)
            + self.stale.load(Ordering::Relaxed)
            + self.replayed.load(Ordering::Relaxed)
    }

    fn count(&self, rejection: Rejection) {
        let counter = match rejection {
            Rejection::Malformed => &self.malformed,
            Rejection::Forged => &self.forged,
            Rejection::Stale => &self.stale,
            Rejection::Replayed => &self.replayed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Keyed state of a secure socket.
#[derive(Debug)]
struct Sealing {
    key: DatagramKey,
    session: u64,
    counter: AtomicU64,
    guard: Mutex<ReplayGuard>,
}

/// A [`DatagramSocket`] that authenticates every datagram with the cluster key.
#[derive(Debug)]
pub struct AuthSocket<S> {
    inner: S,
    sealing: Option<Sealing>,
    stats: Arc<AuthStats>,
}

fn unix_secs() -> u64 {
    crate::net::wall_clock()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl<S: DatagramSocket> AuthSocket<S> {
    /// Wraps `inner`; with `None` datagrams pass through unauthenticated.
    pub fn new(inner: S, key: Option<&ClusterKey>) -> Self {
        let sealing = key.map(|key| Sealing {
            key: DatagramKey::from(key),
            session: OsRng.next_u64(),
            counter: AtomicU64::new(0),
            guard: Mutex::new(ReplayGuard::default()),
        });
        AuthSocket {
            inner,
            sealing,
            stats: Arc::new(AuthStats::default()),
        }
    }

    /// Whether datagrams are authenticated.
    pub fn is_secure(&self) -> bool {
        self.sealing.is_some()
    }

    /// The rejection counters.
    pub fn stats(&self) -> Arc<AuthStats> {
        Arc::clone(&self.stats)
    }

    /// The wrapped socket.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Opens one received datagram into `buf`, or says why not.
    fn open_into(
        &self,
        sealing: &Sealing,
        datagram: &[u8],
        buf: &mut [u8],
    ) -> Result<usize, Rejection> {
        let opened = sealing.key.open(datagram, unix_secs())?;
        // A poisoned lock only means another thread panicked mid-update of a plain window;
        // its state is still a valid window.
        let mut guard = sealing
            .guard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.accept(opened.session, opened.counter)?;
        drop(guard);
        let len = opened.plaintext.len().min(buf.len());
        buf[..len].copy_from_slice(&opened.plaintext[..len]);
        Ok(len)
    }
}

impl<S: DatagramSocket> DatagramSocket for AuthSocket<S> {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let Some(sealing) = &self.sealing else {
            return self.inner.recv_from(buf).await;
        };
        let mut sealed = [0u8; RECV_BUFFER_BYTES + OVERHEAD_BYTES];
        loop {
            // Cancel safe: nothing is awaited between a receive and its return.
            let (len, from) = self.inner.recv_from(&mut sealed).await?;
            match self.open_into(sealing, &sealed[..len], buf) {
                Ok(len) => {
                    self.stats.accepted.fetch_add(1, Ordering::Relaxed);
                    return Ok((len, from));
                }
                Err(rejection) => {
                    self.stats.count(rejection);
                    debug!(%from, %rejection, "datagram refused");
                }
            }
        }
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        let Some(sealing) = &self.sealing else {
            return self.inner.send_to(buf, target).await;
        };
        let counter = sealing.counter.fetch_add(1, Ordering::Relaxed);
        let datagram = sealing.key.seal(sealing.session, counter, unix_secs(), buf);
        self.inner.send_to(&datagram, target).await?;
        Ok(buf.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UdpSocket;

    async fn pair(
        key_a: Option<&ClusterKey>,
        key_b: Option<&ClusterKey>,
    ) -> Option<(AuthSocket<UdpSocket>, AuthSocket<UdpSocket>)> {
        let a = UdpSocket::bind("127.0.0.1:0").await.ok()?;
        let b = UdpSocket::bind("127.0.0.1:0").await.ok()?;
        Some((AuthSocket::new(a, key_a), AuthSocket::new(b, key_b)))
    }

    async fn recv(socket: &AuthSocket<UdpSocket>) -> Option<Vec<u8>> {
        let mut buf = [0u8; RECV_BUFFER_BYTES];
        let wait = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            socket.recv_from(&mut buf),
        );
        let (len, _) = wait.await.ok()?.ok()?;
        Some(buf[..len].to_vec())
    }

    #[tokio::test]
    async fn same_key_delivers_and_wrong_key_is_counted_then_dropped() {
        let right = ClusterKey::from_bytes([1; 32]);
        let wrong = ClusterKey::from_bytes([2; 32]);
        let Some((a, b)) = pair(Some(&right), Some(&right)).await else {
            panic!("bind failed");
        };
        let Some((intruder, _)) = pair(Some(&wrong), None).await else {
            panic!("bind failed");
        };
        let b_addr = b.local_addr().ok();
        let Some(b_addr) = b_addr else {
            panic!("no address")
        };
        assert!(intruder.send_to(b"let me in", b_addr).await.is_ok());
        assert!(a.inner().send_to(b"plaintext", b_addr).await.is_ok());
        assert!(a.send_to(b"hello", b_addr).await.is_ok());
        // The two refused datagrams were sent first; recv skips them and returns the good one.
        assert_eq!(recv(&b).await.as_deref(), Some(&b"hello"[..]));
        let stats = b.stats();
        assert_eq!(stats.forged.load(Ordering::Relaxed), 1);
        assert_eq!(stats.malformed.load(Ordering::Relaxed), 1);
        assert_eq!(stats.accepted.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_replayed_datagram_is_dropped() {
        let key = ClusterKey::from_bytes([1; 32]);
        let Some((a, b)) = pair(Some(&key), Some(&key)).await else {
            panic!("bind failed");
        };
        let Some((tap, _)) = pair(None, None).await else {
            panic!("bind failed");
        };
        let (Ok(b_addr), Ok(tap_addr)) = (b.local_addr(), tap.local_addr()) else {
            panic!("no address")
        };
        // Capture a sealed datagram on its way, then deliver it twice.
        assert!(a.send_to(b"alive", tap_addr).await.is_ok());
        let mut captured = [0u8; RECV_BUFFER_BYTES + OVERHEAD_BYTES];
        let got = tap.inner().recv_from(&mut captured).await;
        let Ok((len, _)) = got else {
            panic!("nothing captured")
        };
        for _ in 0..2 {
            assert!(tap.inner().send_to(&captured[..len], b_addr).await.is_ok());
        }
        assert!(a.send_to(b"fresh", b_addr).await.is_ok());
        assert_eq!(recv(&b).await.as_deref(), Some(&b"alive"[..]));
        assert_eq!(recv(&b).await.as_deref(), Some(&b"fresh"[..]));
        assert_eq!(b.stats().replayed.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn without_a_key_datagrams_pass_through() {
        let Some((a, b)) = pair(None, None).await else {
            panic!("bind failed");
        };
        assert!(!a.is_secure());
        let Ok(b_addr) = b.local_addr() else {
            panic!("no address")
        };
        assert!(a.send_to(b"plain", b_addr).await.is_ok());
        assert_eq!(recv(&b).await.as_deref(), Some(&b"plain"[..]));
    }
}
