//! The network and wall-clock seam between the node and the world.
//!
//! Owns: [`DatagramSocket`] (the three socket verbs the membership driver needs), the socket
//! types every node task uses ([`UdpSocket`], [`TcpListener`], [`TcpStream`], [`connect`]) and
//! the wall clock ([`wall_clock`]). Each is tokio's in production; with the `sim` feature and
//! when the calling code runs inside a turmoil simulation ([`simulated`]) they are turmoil's,
//! so one copy of the node code runs over both. The choice is made at run time, per call:
//! a binary built with `sim` (cargo unifies features in `cargo test --features sim`) still
//! uses tokio when it is not inside a simulation.
//! Must never: decode, interpret or drop datagrams or bytes (the machines and codecs do), or
//! pick the simulated network outside a simulation.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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

/// Whether the calling code runs inside a turmoil simulation (always `false` without the
/// `sim` feature). Every choice of network below asks this, at the moment it binds or connects.
pub fn simulated() -> bool {
    #[cfg(feature = "sim")]
    {
        turmoil::in_simulation()
    }
    #[cfg(not(feature = "sim"))]
    {
        false
    }
}

/// The wall clock: the system's, or inside a simulation the host's virtual one (the
/// simulation's epoch plus its virtual time), so wall-clock stamps (generations, the replicated
/// clock, datagram freshness) advance with the simulated timers instead of the real seconds.
pub fn wall_clock() -> SystemTime {
    #[cfg(feature = "sim")]
    if let Some(since) = turmoil::since_epoch() {
        return SystemTime::UNIX_EPOCH + since;
    }
    SystemTime::now()
}

/// `addr` with the unspecified address of its family (what turmoil binds).
#[cfg(feature = "sim")]
fn unspecified(addr: SocketAddr) -> SocketAddr {
    let ip = match addr {
        SocketAddr::V4(_) => std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, addr.port())
}

/// The bound address `bound` as the caller asked for it: the asked IP unless that was
/// unspecified itself.
#[cfg(feature = "sim")]
fn as_asked(bound: SocketAddr, asked: std::net::IpAddr) -> SocketAddr {
    if asked.is_unspecified() {
        bound
    } else {
        SocketAddr::new(asked, bound.port())
    }
}

/// A UDP socket: tokio's, or turmoil's inside a simulation.
#[derive(Debug)]
pub enum UdpSocket {
    /// A real socket.
    Tokio(tokio::net::UdpSocket),
    /// A simulated socket, bound on every address of its host, and the address it was asked
    /// for (turmoil binds only unspecified addresses; the node's identity is the one asked for).
    #[cfg(feature = "sim")]
    Sim(turmoil::net::UdpSocket, std::net::IpAddr),
}

impl UdpSocket {
    /// Binds `addr` on the network of the caller ([`simulated`]).
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        #[cfg(feature = "sim")]
        if simulated() {
            let socket = turmoil::net::UdpSocket::bind(unspecified(addr)).await?;
            return Ok(UdpSocket::Sim(socket, addr.ip()));
        }
        Ok(UdpSocket::Tokio(tokio::net::UdpSocket::bind(addr).await?))
    }
}

impl From<tokio::net::UdpSocket> for UdpSocket {
    fn from(socket: tokio::net::UdpSocket) -> Self {
        UdpSocket::Tokio(socket)
    }
}

impl DatagramSocket for UdpSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            UdpSocket::Tokio(s) => s.local_addr(),
            #[cfg(feature = "sim")]
            UdpSocket::Sim(s, ip) => s.local_addr().map(|a| as_asked(a, *ip)),
        }
    }

    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        match self {
            UdpSocket::Tokio(s) => s.recv_from(buf).await,
            #[cfg(feature = "sim")]
            UdpSocket::Sim(s, _) => s.recv_from(buf).await,
        }
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        match self {
            UdpSocket::Tokio(s) => s.send_to(buf, target).await,
            #[cfg(feature = "sim")]
            UdpSocket::Sim(s, _) => s.send_to(buf, target).await,
        }
    }
}

/// A TCP listener: tokio's, or turmoil's inside a simulation.
pub enum TcpListener {
    /// A real listener.
    Tokio(tokio::net::TcpListener),
    /// A simulated listener and the address it was asked for (see [`UdpSocket::Sim`]).
    #[cfg(feature = "sim")]
    Sim(turmoil::net::TcpListener, std::net::IpAddr),
}

impl TcpListener {
    /// Binds `addr` on the network of the caller ([`simulated`]).
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        #[cfg(feature = "sim")]
        if simulated() {
            let listener = turmoil::net::TcpListener::bind(unspecified(addr)).await?;
            return Ok(TcpListener::Sim(listener, addr.ip()));
        }
        Ok(TcpListener::Tokio(
            tokio::net::TcpListener::bind(addr).await?,
        ))
    }

    /// Accepts the next connection and its peer's address.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        match self {
            TcpListener::Tokio(l) => {
                let (stream, peer) = l.accept().await?;
                Ok((TcpStream::Tokio(stream), peer))
            }
            #[cfg(feature = "sim")]
            TcpListener::Sim(l, _) => {
                let (stream, peer) = l.accept().await?;
                Ok((TcpStream::Sim(stream), peer))
            }
        }
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            TcpListener::Tokio(l) => l.local_addr(),
            #[cfg(feature = "sim")]
            TcpListener::Sim(l, ip) => l.local_addr().map(|a| as_asked(a, *ip)),
        }
    }
}

impl std::fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TcpListener::Tokio(l) => f.debug_tuple("Tokio").field(l).finish(),
            #[cfg(feature = "sim")]
            TcpListener::Sim(l, ip) => f
                .debug_tuple("Sim")
                .field(&l.local_addr().ok())
                .field(ip)
                .finish(),
        }
    }
}

impl From<tokio::net::TcpListener> for TcpListener {
    fn from(listener: tokio::net::TcpListener) -> Self {
        TcpListener::Tokio(listener)
    }
}

/// A TCP connection: tokio's, or turmoil's inside a simulation.
#[derive(Debug)]
pub enum TcpStream {
    /// A real connection.
    Tokio(tokio::net::TcpStream),
    /// A simulated connection.
    #[cfg(feature = "sim")]
    Sim(turmoil::net::TcpStream),
}

/// Opens a TCP connection to `addr` on the network of the caller ([`simulated`]).
pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    #[cfg(feature = "sim")]
    if simulated() {
        return Ok(TcpStream::Sim(
            turmoil::net::TcpStream::connect(addr).await?,
        ));
    }
    Ok(TcpStream::Tokio(
        tokio::net::TcpStream::connect(addr).await?,
    ))
}

impl TcpStream {
    /// See `tokio::net::TcpStream::set_nodelay` (a no-op in simulation).
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        match self {
            TcpStream::Tokio(s) => s.set_nodelay(nodelay),
            #[cfg(feature = "sim")]
            TcpStream::Sim(s) => s.set_nodelay(nodelay),
        }
    }

    /// The remote address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            TcpStream::Tokio(s) => s.peer_addr(),
            #[cfg(feature = "sim")]
            TcpStream::Sim(s) => s.peer_addr(),
        }
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            TcpStream::Tokio(s) => s.local_addr(),
            #[cfg(feature = "sim")]
            TcpStream::Sim(s) => s.local_addr(),
        }
    }
}

impl From<tokio::net::TcpStream> for TcpStream {
    fn from(stream: tokio::net::TcpStream) -> Self {
        TcpStream::Tokio(stream)
    }
}

impl AsyncRead for TcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TcpStream::Tokio(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "sim")]
            TcpStream::Sim(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for TcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TcpStream::Tokio(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "sim")]
            TcpStream::Sim(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TcpStream::Tokio(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "sim")]
            TcpStream::Sim(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TcpStream::Tokio(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "sim")]
            TcpStream::Sim(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TcpStream::Tokio(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            #[cfg(feature = "sim")]
            TcpStream::Sim(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            TcpStream::Tokio(s) => s.is_write_vectored(),
            #[cfg(feature = "sim")]
            TcpStream::Sim(s) => s.is_write_vectored(),
        }
    }
}

/// Runs blocking `f` off the event loop: `tokio::task::spawn_blocking` in production; inside a
/// simulation a plain thread instead. Under turmoil's paused clock a tokio blocking task stops
/// time from advancing until it ends, so a blocking task that waits on the event loop (a disk
/// thread fed chunks from the network) would hang the whole simulation; a plain thread does
/// not hold the clock (the work then takes no virtual time, whatever it takes in real time).
pub fn spawn_blocking<F, T>(f: F) -> Blocking<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    if !simulated() {
        return Blocking::Tokio(tokio::task::spawn_blocking(f));
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("idunno-sim-blocking".to_owned())
        .spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = tx.send(outcome.map_err(|_| ()));
        });
    match spawned {
        Ok(_) => Blocking::Thread(rx),
        Err(e) => Blocking::Failed(Some(e.to_string())),
    }
}

/// Why a blocking task gave no value: it panicked, was cancelled, or could not start.
#[derive(Debug, thiserror::Error)]
#[error("blocking task failed: {0}")]
pub struct BlockingError(String);

/// A running [`spawn_blocking`] task; resolves to its value.
#[derive(Debug)]
pub enum Blocking<T> {
    /// On tokio's blocking pool.
    Tokio(tokio::task::JoinHandle<T>),
    /// On a plain thread (in simulation).
    Thread(tokio::sync::oneshot::Receiver<Result<T, ()>>),
    /// The thread could not be started (the error, until polled).
    Failed(Option<String>),
}

impl<T> Future for Blocking<T> {
    type Output = Result<T, BlockingError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Blocking::Tokio(handle) => Pin::new(handle)
                .poll(cx)
                .map(|r| r.map_err(|e| BlockingError(e.to_string()))),
            Blocking::Thread(rx) => Pin::new(rx).poll(cx).map(|r| match r {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(())) => Err(BlockingError("it panicked".to_owned())),
                Err(_) => Err(BlockingError("its thread ended without a value".to_owned())),
            }),
            Blocking::Failed(e) => Poll::Ready(Err(BlockingError(
                e.take().unwrap_or_else(|| "polled again".to_owned()),
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn outside_a_simulation_the_network_is_tokio() {
        assert!(!simulated());
        let listener = TcpListener::bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        assert!(matches!(listener, TcpListener::Tokio(_)));
        let addr = listener.local_addr().expect("addr");
        let (client, accepted) = tokio::join!(connect(addr), listener.accept());
        let client = client.expect("connect");
        let (server, peer) = accepted.expect("accept");
        assert!(matches!(client, TcpStream::Tokio(_)));
        assert_eq!(client.local_addr().ok(), Some(peer));
        assert_eq!(server.peer_addr().ok(), Some(peer));
        let udp = UdpSocket::bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        assert!(matches!(udp, UdpSocket::Tokio(_)));
        let drift = wall_clock()
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        assert!(
            drift.as_secs() < 5,
            "outside a simulation the wall clock is the system's"
        );
    }
}
