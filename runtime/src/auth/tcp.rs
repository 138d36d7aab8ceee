//! Opening and accepting TCP connections, secure when the process has a cluster key.
//!
//! Owns: the one place each side of every TCP connection is made: [`connect`] (used right after
//! `TcpStream::connect` by control calls, the Raft transport and the blob clients, with the
//! process's credential from [`install`]) and [`TcpGuard::accept`] (used right after `accept`
//! by the control server, with the node's own keys), the handshake I/O around
//! [`super::handshake`], and the counters of refused connections ([`TcpAuthStats`]).
//! A process without a credential connects in plain TCP; a node without keys accepts plain TCP.
//! Must never: hand over a connection whose handshake did not complete, wait on a peer without
//! a deadline, log a secret, or let a client token open a connection as a peer.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use idunno_core::wire::{self, ControlResponse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, warn};

use super::handshake::{
    self, CLIENT_HELLO_REST_BYTES, ClientToken, Credential, HelloError, MAGIC,
    NODE_HELLO_REST_BYTES, NodeKeys, Role, TOKEN_ENV,
};
use super::stream::{RECORD_HEADER_BYTES, SecureStream, TAG_BYTES};
use super::{ClusterKey, KeyError};
use crate::net::TcpStream;

/// Longest the accepting side waits for a handshake to complete.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// [`MAGIC`] read as a frame length: what a node without a key sees of a secure hello.
pub const MAGIC_FRAME_LEN: usize = u32::from_be_bytes(MAGIC) as usize;
/// Largest plain answer a connecting side reads when the node turns out not to speak the
/// handshake (its error frame).
const PLAIN_ANSWER_BYTES_MAX: usize = 4096;

/// What a node answers, in plain text, to a connection without the handshake.
pub const KEY_REQUIRED: &str = "this cluster requires a key: give this client the cluster key \
     (IDUNNO_CLUSTER_KEY_FILE or IDUNNO_CLUSTER_KEY) or a client token (IDUNNO_CLIENT_TOKEN, \
     printed by `idunno-node token`)";
/// What a node without a key answers to a secure hello.
pub const NODE_INSECURE: &str = "this node runs without a cluster key (insecure) and cannot \
     take a secure connection: start every node of the cluster with the same key";

/// What this process proves when it opens a connection.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum TcpAuth {
    /// No key: plain TCP (an insecure cluster).
    Insecure,
    /// A credential: every connection runs the handshake and is sealed.
    Secure(Credential),
}

impl TcpAuth {
    /// A node's: the peer key of `key`, or insecure.
    pub fn node(key: Option<&ClusterKey>) -> Self {
        key.map_or(TcpAuth::Insecure, |key| {
            TcpAuth::Secure(Credential::Node(NodeKeys::from_key(key)))
        })
    }

    /// A client's of the cluster whose key is `key`: its client token.
    pub fn client_of(key: &ClusterKey) -> Self {
        TcpAuth::Secure(Credential::Client(ClientToken::from_key(key)))
    }

    /// A client's, from the environment: the token of the cluster key named by
    /// `IDUNNO_CLUSTER_KEY_FILE` or held in `IDUNNO_CLUSTER_KEY`, else the token in
    /// `IDUNNO_CLIENT_TOKEN`, else insecure. A client never connects as a peer.
    pub fn client_from_env() -> Result<Self, KeyError> {
        if let Some(key) = ClusterKey::from_file_or_env(None)? {
            return Ok(Self::client_of(&key));
        }
        match std::env::var(TOKEN_ENV) {
            Ok(text) if !text.is_empty() => Ok(TcpAuth::Secure(Credential::Client(
                ClientToken::parse(&text, TOKEN_ENV)?,
            ))),
            Ok(_) | Err(std::env::VarError::NotPresent) => Ok(TcpAuth::Insecure),
            Err(std::env::VarError::NotUnicode(_)) => Err(KeyError::Malformed {
                origin: TOKEN_ENV.to_owned(),
                problem: "it is not valid text".into(),
            }),
        }
    }
}

static PROCESS_AUTH: OnceLock<TcpAuth> = OnceLock::new();
static INSECURE: TcpAuth = TcpAuth::Insecure;

/// Sets what every connection this process opens proves. The first call wins (one process,
/// one cluster); `Err` gives `auth` back when another one was installed before.
pub fn install(auth: TcpAuth) -> Result<(), TcpAuth> {
    PROCESS_AUTH.set(auth.clone()).or_else(|_| {
        if PROCESS_AUTH.get() == Some(&auth) {
            Ok(())
        } else {
            Err(auth)
        }
    })
}

/// What connections of this process prove ([`TcpAuth::Insecure`] until [`install`]).
pub fn process_auth() -> &'static TcpAuth {
    PROCESS_AUTH.get().unwrap_or(&INSECURE)
}

/// Why a secure connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The socket failed or closed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The node's proof did not authenticate.
    #[error(
        "authentication failed: the node has a different cluster key (or this client's token is \
         wrong)"
    )]
    WrongKey,
    /// The node answered in plain TCP.
    #[error(
        "the node does not speak the secure handshake (it runs without a cluster key, and this \
         process has one: mixed clusters are refused); it said: {0}"
    )]
    NodeInsecure(String),
    /// The node closed the connection during the handshake.
    #[error("the node closed the connection during the handshake (it refused the key, or is busy)")]
    Closed,
    /// The node's hello was not acceptable.
    #[error("bad handshake from the node: {0}")]
    Hello(#[from] HelloError),
}

impl From<HandshakeError> for io::Error {
    fn from(e: HandshakeError) -> Self {
        match e {
            HandshakeError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::PermissionDenied, other.to_string()),
        }
    }
}

/// Connects to `addr` with this process's credential ([`process_auth`]).
pub async fn connect(addr: SocketAddr) -> io::Result<SecureStream> {
    connect_with(addr, process_auth()).await
}

/// Connects to `addr` proving `auth`. Refusals are `PermissionDenied` errors whose message
/// says why (a wrong key, a node without a key); the caller bounds the time.
pub async fn connect_with(addr: SocketAddr, auth: &TcpAuth) -> io::Result<SecureStream> {
    let tcp = crate::net::connect(addr).await?;
    match auth {
        TcpAuth::Insecure => Ok(SecureStream::plain(tcp)),
        TcpAuth::Secure(credential) => Ok(client_handshake(tcp, credential).await?),
    }
}

async fn client_handshake(
    mut tcp: TcpStream,
    credential: &Credential,
) -> Result<SecureStream, HandshakeError> {
    // The hello is small and must not wait for an ack of a previous segment.
    tcp.set_nodelay(true)?;
    let client_nonce = handshake::fresh_nonce();
    tcp.write_all(&handshake::client_hello(credential.role(), &client_nonce))
        .await?;
    let mut magic = [0u8; 4];
    read_or_closed(&mut tcp, &mut magic).await?;
    if magic != MAGIC {
        return Err(HandshakeError::NodeInsecure(
            plain_answer(&mut tcp, magic).await,
        ));
    }
    let mut rest = [0u8; NODE_HELLO_REST_BYTES];
    read_or_closed(&mut tcp, &mut rest).await?;
    let answer = credential.answer(&client_nonce, &rest)?;
    let (send, mut recv) = (answer.send, answer.recv);
    // Prove first, then check: the node counts a wrong key even when this side gives up.
    tcp.write_all(&answer.reply).await?;
    let mut header = [0u8; RECORD_HEADER_BYTES];
    read_or_closed(&mut tcp, &mut header).await?;
    if !handshake::proof_header_ok(header) {
        return Err(HandshakeError::WrongKey);
    }
    let mut tag = [0u8; TAG_BYTES];
    read_or_closed(&mut tcp, &mut tag).await?;
    if handshake::check_proof(&mut recv, header, &mut tag).is_err() {
        return Err(HandshakeError::WrongKey);
    }
    Ok(SecureStream::sealed(tcp, send, recv))
}

async fn read_or_closed(tcp: &mut TcpStream, buf: &mut [u8]) -> Result<(), HandshakeError> {
    match tcp.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(HandshakeError::Closed),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Err(HandshakeError::Closed),
        Err(e) => Err(e.into()),
    }
}

/// The error message of a plain frame whose header is `header`, or a description of the bytes.
async fn plain_answer(tcp: &mut TcpStream, header: [u8; 4]) -> String {
    let unknown = || "(no readable answer)".to_owned();
    let Ok(len) = wire::decode_frame_header(header) else {
        return unknown();
    };
    if len > PLAIN_ANSWER_BYTES_MAX {
        return unknown();
    }
    let mut body = vec![0u8; len];
    if tcp.read_exact(&mut body).await.is_err() {
        return unknown();
    }
    match wire::decode_frame_body::<ControlResponse>(&body) {
        Ok(ControlResponse::Error(message)) => message,
        Ok(other) => format!("{other:?}"),
        Err(_) => unknown(),
    }
}

/// Counters of the connections a node accepted and refused.
#[derive(Debug, Default)]
pub struct TcpAuthStats {
    /// Connections whose handshake completed.
    pub accepted: AtomicU64,
    /// Connections without a handshake (a client or node without the key).
    pub unauthenticated: AtomicU64,
    /// Connections whose proof failed: a wrong key or token, changed bytes, a replay.
    pub forged: AtomicU64,
    /// Handshakes that were malformed, timed out or broke off.
    pub broken: AtomicU64,
}

impl TcpAuthStats {
    /// All refused connections.
    pub fn refused(&self) -> u64 {
        self.unauthenticated.load(Ordering::Relaxed)
            + self.forged.load(Ordering::Relaxed)
            + self.broken.load(Ordering::Relaxed)
    }
}

/// Why an accepted connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// It did not start with the handshake (the peer has no key); it was told so in plain.
    #[error("no handshake (the peer has no cluster key)")]
    Unauthenticated,
    /// Its proof did not authenticate.
    #[error("authentication failed (a wrong cluster key or token, or a replayed connection)")]
    Forged,
    /// A malformed hello, a timeout or a broken connection.
    #[error("broken handshake")]
    Broken,
}

/// The accepting side of a node: its keys (or none) and its counters.
pub struct TcpGuard {
    keys: Option<NodeKeys>,
    stats: std::sync::Arc<TcpAuthStats>,
}

impl fmt::Debug for TcpGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpGuard")
            .field("secure", &self.keys.is_some())
            .field("stats", &self.stats)
            .finish()
    }
}

impl TcpGuard {
    /// A guard for a node whose cluster key is `key` (plain TCP without one).
    pub fn new(key: Option<&ClusterKey>) -> Self {
        TcpGuard {
            keys: key.map(NodeKeys::from_key),
            stats: std::sync::Arc::default(),
        }
    }

    /// A guard that accepts plain TCP.
    pub fn insecure() -> Self {
        Self::new(None)
    }

    /// Whether connections must authenticate.
    pub fn is_secure(&self) -> bool {
        self.keys.is_some()
    }

    /// The counters.
    pub fn stats(&self) -> std::sync::Arc<TcpAuthStats> {
        std::sync::Arc::clone(&self.stats)
    }

    /// Runs the node's side of the handshake on an accepted connection, within
    /// [`HANDSHAKE_TIMEOUT`]; the role it proved, or why it was refused (counted and logged).
    pub async fn accept(&self, tcp: impl Into<TcpStream>) -> Result<(SecureStream, Role), Refusal> {
        let tcp = tcp.into();
        let Some(keys) = &self.keys else {
            return Ok((SecureStream::plain(tcp), Role::Peer));
        };
        let peer = tcp.peer_addr().ok();
        let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, node_handshake(tcp, keys))
            .await
            .unwrap_or(Err(Refusal::Broken));
        let counter = match outcome {
            Ok(_) => &self.stats.accepted,
            Err(Refusal::Unauthenticated) => &self.stats.unauthenticated,
            Err(Refusal::Forged) => &self.stats.forged,
            Err(Refusal::Broken) => &self.stats.broken,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Err(refusal) = &outcome {
            let refused = self.stats.refused();
            // Every refusal is counted; the log shows the first and then every power of two,
            // so a flood cannot flood the log.
            if refused.is_power_of_two() {
                warn!(?peer, %refusal, refused, "refused a TCP connection");
            } else {
                debug!(?peer, %refusal, refused, "refused a TCP connection");
            }
        }
        outcome
    }
}

async fn node_handshake(
    mut tcp: TcpStream,
    keys: &NodeKeys,
) -> Result<(SecureStream, Role), Refusal> {
    let broken = |_| Refusal::Broken;
    let mut magic = [0u8; 4];
    tcp.read_exact(&mut magic).await.map_err(broken)?;
    if magic != MAGIC {
        if let Ok(answer) = wire::encode_frame(&ControlResponse::Error(KEY_REQUIRED.to_owned())) {
            let _ = tcp.write_all(&answer).await;
        }
        return Err(Refusal::Unauthenticated);
    }
    let mut rest = [0u8; CLIENT_HELLO_REST_BYTES];
    tcp.read_exact(&mut rest).await.map_err(broken)?;
    let answer = keys
        .answer(&rest, &handshake::fresh_nonce())
        .map_err(|_| Refusal::Broken)?;
    let (send, mut recv, role) = (answer.send, answer.recv, answer.role);
    tcp.set_nodelay(true).map_err(broken)?;
    tcp.write_all(&answer.reply).await.map_err(broken)?;
    let mut header = [0u8; RECORD_HEADER_BYTES];
    tcp.read_exact(&mut header).await.map_err(broken)?;
    if !handshake::proof_header_ok(header) {
        return Err(Refusal::Forged);
    }
    let mut tag = [0u8; TAG_BYTES];
    tcp.read_exact(&mut tag).await.map_err(broken)?;
    handshake::check_proof(&mut recv, header, &mut tag).map_err(|_| Refusal::Forged)?;
    Ok((SecureStream::sealed(tcp, send, recv), role))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{self, ClientError, read_frame, write_frame};
    use crate::driver::Request;
    use idunno_core::membership::NodeId;
    use idunno_core::wire::ControlRequest;
    use std::sync::atomic::AtomicUsize;
    use std::sync::{Arc, Mutex};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    const WAIT: Duration = Duration::from_secs(5);

    /// A control server with `key` whose fake driver answers `SelfInfo` and counts requests.
    async fn server(key: Option<&ClusterKey>) -> (SocketAddr, Arc<TcpAuthStats>, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let asked = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = mpsc::channel::<Request>(4);
        let counter = Arc::clone(&asked);
        tokio::spawn(async move {
            while let Some(Request { reply, .. }) = rx.recv().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = reply.send(ControlResponse::SelfInfo {
                    id: NodeId::new(addr, 1),
                    incarnation: 1,
                });
            }
        });
        let guard = Arc::new(TcpGuard::new(key));
        let stats = guard.stats();
        tokio::spawn(control::serve_guarded(
            listener, tx, None, None, guard, None,
        ));
        (addr, stats, asked)
    }

    async fn ask(
        addr: SocketAddr,
        auth: &TcpAuth,
        request: &ControlRequest,
    ) -> io::Result<ControlResponse> {
        let exchange = async {
            let mut stream = connect_with(addr, auth).await?;
            write_frame(&mut stream, request)
                .await
                .map_err(io::Error::other)?;
            read_frame::<ControlResponse, _>(&mut stream, wire::FRAME_BYTES_MAX)
                .await
                .map_err(io::Error::other)?
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
        };
        tokio::time::timeout(WAIT, exchange)
            .await
            .map_err(io::Error::other)?
    }

    /// Waits (boundedly) until `counter` reaches `at_least`: the node counts a handshake a
    /// moment after the connecting side is done with it.
    async fn wait_for(counter: &AtomicU64, at_least: u64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while counter.load(Ordering::Relaxed) < at_least && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn key(byte: u8) -> ClusterKey {
        ClusterKey::from_bytes([byte; 32])
    }

    #[tokio::test]
    async fn nodes_and_clients_with_the_key_are_served_and_a_token_cannot_act_as_a_node() {
        let (addr, stats, asked) = server(Some(&key(1))).await;
        let node = TcpAuth::node(Some(&key(1)));
        let client = TcpAuth::client_of(&key(1));
        for auth in [&node, &client] {
            let answer = ask(addr, auth, &ControlRequest::ListSelf).await;
            assert!(
                matches!(answer, Ok(ControlResponse::SelfInfo { .. })),
                "{answer:?}"
            );
        }
        let token =
            ClientToken::parse(&ClientToken::from_key(&key(1)).to_hex(), "test").expect("hex");
        let by_token = TcpAuth::Secure(Credential::Client(token));
        let hello = ControlRequest::RaftHello {
            from: idunno_core::consensus::VoterId(1),
        };
        let answer = ask(addr, &by_token, &hello).await;
        assert!(
            matches!(&answer, Ok(ControlResponse::Error(m)) if m.contains("nodes only")),
            "{answer:?}"
        );
        let forwarded = ControlRequest::KvGet {
            key: "k".into(),
            forwarded: true,
        };
        let answer = ask(addr, &by_token, &forwarded).await;
        assert!(
            matches!(answer, Ok(ControlResponse::Error(_))),
            "{answer:?}"
        );
        assert_eq!(asked.load(Ordering::SeqCst), 2);
        wait_for(&stats.accepted, 4).await;
        assert_eq!(stats.accepted.load(Ordering::Relaxed), 4);
        assert_eq!(stats.refused(), 0);
    }

    #[tokio::test]
    async fn a_wrong_key_is_refused_clearly_and_counted() {
        let (addr, stats, asked) = server(Some(&key(1))).await;
        for auth in [TcpAuth::node(Some(&key(2))), TcpAuth::client_of(&key(2))] {
            let refused = ask(addr, &auth, &ControlRequest::ListSelf).await;
            let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(message.contains("different cluster key"), "{message}");
        }
        // The node counts both, whichever side noticed first.
        wait_for(&stats.forged, 2).await;
        assert_eq!(stats.forged.load(Ordering::Relaxed), 2);
        assert_eq!(stats.accepted.load(Ordering::Relaxed), 0);
        assert_eq!(
            asked.load(Ordering::SeqCst),
            0,
            "nothing reached the driver"
        );
    }

    #[tokio::test]
    async fn a_client_without_a_key_gets_a_clear_refusal() {
        let (addr, stats, asked) = server(Some(&key(1))).await;
        // The library call of a process without a credential, as `idunno-node client` makes it.
        let refused = control::call(addr, &ControlRequest::ListSelf, WAIT).await;
        let message = match refused {
            Err(ClientError::Refused { message, .. }) => message,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(
            message.starts_with("this cluster requires a key"),
            "{message}"
        );
        wait_for(&stats.unauthenticated, 1).await;
        assert_eq!(stats.unauthenticated.load(Ordering::Relaxed), 1);
        assert_eq!(asked.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn mixed_clusters_fail_clearly_both_ways() {
        let (plain_addr, _, asked) = server(None).await;
        let refused = ask(
            plain_addr,
            &TcpAuth::node(Some(&key(1))),
            &ControlRequest::ListSelf,
        )
        .await;
        let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("runs without a cluster key"), "{message}");
        assert_eq!(asked.load(Ordering::SeqCst), 0);
        // And a plain node's own calls to a keyed node are told the cluster requires a key.
        let (secure_addr, _, _) = server(Some(&key(1))).await;
        let answer = ask(secure_addr, &TcpAuth::Insecure, &ControlRequest::ListSelf).await;
        assert!(
            matches!(&answer, Ok(ControlResponse::Error(m)) if m.starts_with("this cluster requires a key")),
            "{answer:?}"
        );
    }

    /// A proxy between a client and `to` that records every byte the client sent.
    async fn recording_proxy(to: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let tape = Arc::clone(&recorded);
        tokio::spawn(async move {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let Ok(server) = TcpStream::connect(to).await else {
                return;
            };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
            });
            let mut buf = [0u8; 4096];
            while let Ok(n) = client_read.read(&mut buf).await {
                if n == 0 || server_write.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                tape.lock().expect("tape").extend_from_slice(&buf[..n]);
            }
        });
        (addr, recorded)
    }

    #[tokio::test]
    async fn a_replayed_connection_is_refused() {
        let (addr, stats, asked) = server(Some(&key(1))).await;
        let (proxy, recorded) = recording_proxy(addr).await;
        let answer = ask(
            proxy,
            &TcpAuth::client_of(&key(1)),
            &ControlRequest::ListSelf,
        )
        .await;
        assert!(
            matches!(answer, Ok(ControlResponse::SelfInfo { .. })),
            "{answer:?}"
        );
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        let tape = recorded.lock().expect("tape").clone();
        assert!(
            tape.len() > 38,
            "the hello, the proof and the request were recorded"
        );
        // Replay the whole recorded client side on a fresh connection.
        let mut replay = TcpStream::connect(addr).await.expect("connect");
        replay.write_all(&tape).await.expect("replay");
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(WAIT, replay.read_to_end(&mut rest)).await;
        wait_for(&stats.forged, 1).await;
        assert_eq!(stats.forged.load(Ordering::Relaxed), 1, "counted as forged");
        assert_eq!(
            asked.load(Ordering::SeqCst),
            1,
            "the replayed request was not served"
        );
    }

    #[tokio::test]
    async fn a_bit_flipped_in_a_request_record_closes_the_connection_unserved() {
        let (addr, stats, asked) = server(Some(&key(1))).await;
        let mut stream = connect_with(addr, &TcpAuth::client_of(&key(1)))
            .await
            .expect("handshake");
        wait_for(&stats.accepted, 1).await;
        assert_eq!(stats.accepted.load(Ordering::Relaxed), 1);
        // Seal the request with a copy of the stream's key: a record the node would accept,
        // then flip one bit of it on the wire.
        let frame = wire::encode_frame(&ControlRequest::ListSelf).expect("encodes");
        let mut sealed = Vec::new();
        stream.seal_for_test(&frame, &mut sealed).expect("seal");
        sealed[RECORD_HEADER_BYTES] ^= 0x01;
        stream.tcp_mut().write_all(&sealed).await.expect("write");
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(WAIT, stream.tcp_mut().read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "the node closed the connection");
        assert!(rest.is_empty(), "and answered nothing: {rest:?}");
        assert_eq!(asked.load(Ordering::SeqCst), 0);
    }
}
