//! The record layer of a secure TCP connection: a byte stream sealed in bounded records.
//!
//! Owns: [`SecureStream`], which every control, Raft and blob connection is (plain when the
//! process has no cluster key, sealed otherwise): the socket, the record being written, and the
//! mapping of record errors to `io::Error`s. The record format
//! `[u32 big-endian length][ciphertext][16-byte Poly1305 tag]`, the per-direction ciphers
//! ([`DirectionKey`]) and the receive buffer ([`RecordReader`]) are pure and live in
//! [`idunno_core::auth::record`] (where a fuzz target reaches them). [`SecureStream`] is an
//! `AsyncRead + AsyncWrite`, so the frames, raw blob bytes and Raft frames above it are the ones
//! a plain `TcpStream` carried.
//! Must never: hand the reader a byte that did not authenticate, go on after a failed record
//! (the stream stays failed), report bytes as written before their whole record reached the
//! socket (a stream dropped after a write loses nothing a plain `TcpStream` would keep: no
//! flush is needed), or panic on what a peer sends.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use crate::net::TcpStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub use idunno_core::auth::record::{
    DirectionKey, RECORD_BYTES_MAX, RECORD_HEADER_BYTES, RECORD_PLAINTEXT_MAX, RecordError,
    RecordReader, TAG_BYTES, record_len,
};

/// The `io::Error` of a record error: `InvalidData` for what the peer sent, `UnexpectedEof`
/// for a connection cut inside a record, `Other` for this side's limits.
pub(crate) fn io_error(error: RecordError) -> io::Error {
    let kind = if error.is_invalid_data() {
        io::ErrorKind::InvalidData
    } else if error == RecordError::Truncated {
        io::ErrorKind::UnexpectedEof
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, error)
}

/// Keys and buffers of a sealed connection.
#[derive(Debug)]
struct Records {
    send: DirectionKey,
    /// The receiving direction and its buffer.
    reader: RecordReader,
    /// A sealed record on its way to the socket, and how much of it was written.
    write_buf: Vec<u8>,
    write_pos: usize,
    /// The plaintext of that record (a retried write must offer the same bytes).
    write_plain: Vec<u8>,
}

/// A TCP connection, sealed in records when the connection was authenticated.
#[derive(Debug)]
pub struct SecureStream {
    tcp: TcpStream,
    records: Option<Box<Records>>,
}

impl SecureStream {
    /// A plain connection (an insecure cluster): bytes pass unchanged.
    pub fn plain(tcp: impl Into<TcpStream>) -> Self {
        SecureStream {
            tcp: tcp.into(),
            records: None,
        }
    }

    /// A sealed connection whose handshake produced `send` and `recv` (and read nothing past
    /// its own messages).
    pub(crate) fn sealed(
        tcp: impl Into<TcpStream>,
        send: DirectionKey,
        recv: DirectionKey,
    ) -> Self {
        let records = Records {
            send,
            reader: RecordReader::new(recv),
            write_buf: Vec::with_capacity(RECORD_HEADER_BYTES + RECORD_BYTES_MAX),
            write_pos: 0,
            write_plain: Vec::new(),
        };
        SecureStream {
            tcp: tcp.into(),
            records: Some(Box::new(records)),
        }
    }

    /// Whether the connection is sealed.
    pub fn is_secure(&self) -> bool {
        self.records.is_some()
    }

    /// See [`TcpStream::set_nodelay`].
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.tcp.set_nodelay(nodelay)
    }

    /// See [`TcpStream::peer_addr`].
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.peer_addr()
    }

    /// The socket underneath (tests use it to tamper with the wire).
    pub fn tcp_mut(&mut self) -> &mut TcpStream {
        &mut self.tcp
    }

    /// Seals `plaintext` as this stream's next record into `out` without sending it (tests
    /// tamper with it and send it through [`Self::tcp_mut`]).
    #[cfg(test)]
    pub(crate) fn seal_for_test(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        match &mut self.records {
            Some(records) => records.send.seal_into(plaintext, out).map_err(io_error),
            None => Err(io::Error::other("a plain stream has no records")),
        }
    }
}

impl Records {
    fn poll_read(
        &mut self,
        tcp: &mut TcpStream,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let reader = &mut self.reader;
        loop {
            let plain = reader.plaintext();
            if !plain.is_empty() {
                let n = plain.len().min(buf.remaining());
                buf.put_slice(&plain[..n]);
                reader.consume(n);
                return Poll::Ready(Ok(()));
            }
            if reader.open_next().map_err(io_error)? {
                continue;
            }
            let mut spare = ReadBuf::new(reader.spare());
            ready!(Pin::new(&mut *tcp).poll_read(cx, &mut spare))?;
            let got = spare.filled().len();
            if got == 0 {
                return Poll::Ready(reader.end().map_err(io_error));
            }
            reader.filled(got);
        }
    }

    /// Writes what is left of the record in flight.
    fn poll_drain(&mut self, tcp: &mut TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.write_pos < self.write_buf.len() {
            let n = ready!(Pin::new(&mut *tcp).poll_write(cx, &self.write_buf[self.write_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.write_pos += n;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_write(
        &mut self,
        tcp: &mut TcpStream,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if !self.write_buf.is_empty() {
            // The same write again (its record is under way), or a write given up on: its
            // record goes out whole either way (its nonce is spent, and the receiver expects
            // it), like the part of a plain write that had reached the socket.
            let retried = buf.starts_with(&self.write_plain);
            ready!(self.poll_drain(tcp, cx))?;
            let n = self.write_plain.len();
            self.finish_record();
            if retried {
                return Poll::Ready(Ok(n));
            }
        }
        let n = buf.len().min(RECORD_PLAINTEXT_MAX);
        if n == 0 {
            return Poll::Ready(Ok(0));
        }
        self.send
            .seal_into(&buf[..n], &mut self.write_buf)
            .map_err(io_error)?;
        self.write_plain.extend_from_slice(&buf[..n]);
        ready!(self.poll_drain(tcp, cx))?;
        self.finish_record();
        Poll::Ready(Ok(n))
    }

    /// Forgets the record in flight (sent, or never started).
    fn finish_record(&mut self) {
        self.write_buf.clear();
        self.write_plain.clear();
        self.write_pos = 0;
    }
}

impl AsyncRead for SecureStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.records {
            None => Pin::new(&mut this.tcp).poll_read(cx, buf),
            Some(records) => records.poll_read(&mut this.tcp, cx, buf),
        }
    }
}

impl AsyncWrite for SecureStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match &mut this.records {
            None => Pin::new(&mut this.tcp).poll_write(cx, buf),
            Some(records) => records.poll_write(&mut this.tcp, cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(records) = &mut this.records {
            // A record left by an abandoned write goes out whole rather than half.
            ready!(records.poll_drain(&mut this.tcp, cx))?;
            records.finish_record();
        }
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(records) = &mut this.records {
            ready!(records.poll_drain(&mut this.tcp, cx))?;
            records.finish_record();
        }
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.expect("connect"), b.expect("accept").0)
    }

    async fn sealed_pair() -> (SecureStream, SecureStream) {
        let (a, b) = tcp_pair().await;
        let (k1, k2) = ([1u8; 32], [2u8; 32]);
        let a = SecureStream::sealed(a, DirectionKey::new(&k1), DirectionKey::new(&k2));
        let b = SecureStream::sealed(b, DirectionKey::new(&k2), DirectionKey::new(&k1));
        (a, b)
    }

    #[tokio::test]
    async fn large_and_small_writes_round_trip_in_both_directions() {
        let (mut a, mut b) = sealed_pair().await;
        let big: Vec<u8> = (0..3 * RECORD_PLAINTEXT_MAX + 17)
            .map(|i| (i % 251) as u8)
            .collect();
        let expected = big.clone();
        let writer = tokio::spawn(async move {
            a.write_all(&big).await.expect("write");
            a.write_all(b"tail").await.expect("write");
            let mut back = [0u8; 2];
            a.read_exact(&mut back).await.expect("read back");
            back
        });
        let mut got = vec![0u8; expected.len() + 4];
        b.read_exact(&mut got).await.expect("read");
        assert_eq!(&got[..expected.len()], &expected[..]);
        assert_eq!(&got[expected.len()..], b"tail");
        b.write_all(b"ok").await.expect("answer");
        assert_eq!(&writer.await.expect("join"), b"ok");
        drop(b);
    }

    #[tokio::test]
    async fn a_flipped_bit_fails_the_record_and_the_stream_stays_failed() {
        let (a, mut b) = sealed_pair().await;
        let mut record = Vec::new();
        let mut send = DirectionKey::new(&[1u8; 32]);
        send.seal_into(b"hello", &mut record).expect("seal");
        record[RECORD_HEADER_BYTES + 2] ^= 0x10;
        let mut tcp = a.tcp;
        tcp.write_all(&record).await.expect("write");
        let mut buf = [0u8; 5];
        let first = b.read_exact(&mut buf).await;
        assert_eq!(
            first.err().map(|e| e.kind()),
            Some(io::ErrorKind::InvalidData)
        );
        let again = b.read(&mut buf).await;
        assert!(again.is_err(), "a failed stream never yields data again");
    }

    #[tokio::test]
    async fn a_repeated_or_reordered_record_fails() {
        let (a, mut b) = sealed_pair().await;
        let mut send = DirectionKey::new(&[1u8; 32]);
        let (mut first, mut second) = (Vec::new(), Vec::new());
        send.seal_into(b"one", &mut first).expect("seal");
        send.seal_into(b"two", &mut second).expect("seal");
        let mut tcp = a.tcp;
        // The first record, then the first again instead of the second.
        tcp.write_all(&first).await.expect("write");
        tcp.write_all(&first).await.expect("write");
        let mut buf = [0u8; 3];
        b.read_exact(&mut buf).await.expect("first record");
        assert_eq!(&buf, b"one");
        assert!(b.read_exact(&mut buf).await.is_err(), "a replayed record");
    }

    #[tokio::test]
    async fn an_oversized_length_is_refused_before_reading_the_body() {
        let (a, mut b) = sealed_pair().await;
        let mut tcp = a.tcp;
        let len = u32::try_from(RECORD_BYTES_MAX + 1).expect("small");
        tcp.write_all(&len.to_be_bytes()).await.expect("write");
        let mut buf = [0u8; 1];
        let read = b.read(&mut buf).await;
        assert_eq!(
            read.err().map(|e| e.kind()),
            Some(io::ErrorKind::InvalidData)
        );
    }

    #[tokio::test]
    async fn a_cut_mid_record_is_an_error_and_a_cut_between_records_a_clean_end() {
        let (a, mut b) = sealed_pair().await;
        let mut send = DirectionKey::new(&[1u8; 32]);
        let mut record = Vec::new();
        send.seal_into(b"whole", &mut record).expect("seal");
        send.seal_into(b"half", &mut record).expect("seal");
        let mut tcp = a.tcp;
        tcp.write_all(&record[..record.len() - 3])
            .await
            .expect("write");
        drop(tcp);
        let mut buf = [0u8; 5];
        b.read_exact(&mut buf).await.expect("whole record");
        let rest = b.read(&mut buf).await;
        assert_eq!(
            rest.err().map(|e| e.kind()),
            Some(io::ErrorKind::UnexpectedEof)
        );

        let (a, mut b) = sealed_pair().await;
        drop(a);
        assert_eq!(b.read(&mut buf).await.ok(), Some(0));
    }

    #[tokio::test]
    async fn a_write_given_up_while_the_socket_is_full_keeps_the_stream_in_step() {
        let (mut a, mut b) = sealed_pair().await;
        // Fill the socket until a write stays pending, then give that write up.
        let chunk = vec![7u8; RECORD_PLAINTEXT_MAX];
        let mut written = 0usize;
        loop {
            let write = tokio::time::timeout(Duration::from_millis(50), a.write(&chunk)).await;
            match write {
                Ok(Ok(n)) => written += n,
                Ok(Err(e)) => panic!("write failed: {e}"),
                Err(_) => break,
            }
        }
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            b.read_to_end(&mut all).await.map(|_| all)
        });
        a.write_all(b"end").await.expect("a later write");
        a.shutdown().await.expect("shutdown");
        drop(a);
        let all = reader
            .await
            .expect("join")
            .expect("every record authenticated");
        // The given-up write's record went out whole (its nonce was spent), then "end".
        assert!(all.ends_with(b"end"));
        assert!(
            all.len() == written + RECORD_PLAINTEXT_MAX + 3,
            "{} vs {written}",
            all.len()
        );
    }

    #[tokio::test]
    async fn a_plain_stream_passes_bytes_through() {
        let (a, b) = tcp_pair().await;
        let (mut a, mut b) = (SecureStream::plain(a), SecureStream::plain(b));
        assert!(!a.is_secure());
        a.write_all(b"plain").await.expect("write");
        let mut buf = [0u8; 5];
        b.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"plain");
    }
}
