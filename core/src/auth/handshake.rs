//! The handshake that opens a secure TCP connection, as pure steps: messages, key schedule,
//! and what each side computes from what it received.
//!
//! Owns: the roles ([`Role::Peer`] for nodes, [`Role::Client`] for clients), the derivation of
//! the peer key and the client token from the cluster key (BLAKE3 `derive_key`), the hello
//! messages and their parsers, the key schedule ([`session_keys`]), and the two answers:
//! [`node_answer`] (the accepting node's reply to a client hello) and [`client_answer`] (the
//! connecting side's proof after the node's hello). The exchange (one round trip):
//!
//! ```text
//! client -> node: MAGIC | version | role | client nonce (32 random bytes)
//! node -> client: MAGIC | version | node nonce (32 random bytes) | record 0 (empty), node->client
//! client -> node: record 0 (empty), client->node
//! ```
//!
//! Each direction's record key is BLAKE3 keyed by the role's secret over a direction label and
//! the whole hello transcript, so only a holder of the secret can produce record 0
//! ([`check_proof`]), a replayed connection fails (the other side's nonce is fresh), and a
//! changed role fails too. `MAGIC` read as a frame length is far above any frame's cap, so a
//! plain node answers a hello with a plain error frame, and a secure node tells a hello from a
//! plain frame by its first 4 bytes.
//! The caller (runtime/src/auth/tcp.rs) owns the socket, the deadlines and the random nonces.
//! Must never: reveal a secret (only MACs over fresh nonces go on the wire), report a proof as
//! valid unless it authenticated under the transcript's key, or panic on any bytes.

use super::KEY_BYTES;
use super::record::{DirectionKey, RECORD_HEADER_BYTES, RecordError, TAG_BYTES, record_len};

/// First bytes of every hello; as a frame length, 4.28 GB, which no frame may be.
pub const MAGIC: [u8; 4] = [0xFF, b'I', b'D', b'N'];
/// Handshake version.
pub const VERSION: u8 = 1;
/// Bytes of random nonce each side contributes.
pub const NONCE_BYTES: usize = 32;
/// Bytes of the client's hello after [`MAGIC`]: version, role, nonce.
pub const CLIENT_HELLO_REST_BYTES: usize = 1 + 1 + NONCE_BYTES;
/// Bytes of the node's hello after [`MAGIC`]: version, nonce (record 0 follows).
pub const NODE_HELLO_REST_BYTES: usize = 1 + NONCE_BYTES;
/// Bytes of a proof: record 0, empty (a header and a tag).
pub const PROOF_BYTES: usize = RECORD_HEADER_BYTES + TAG_BYTES;

const PEER_KEY_CONTEXT: &str = "idunno 2026-11-27 tcp peer key v1";
const TOKEN_CONTEXT: &str = "idunno 2026-11-27 tcp client token v1";
const CLIENT_TO_NODE: &[u8] = b"client->node";
const NODE_TO_CLIENT: &[u8] = b"node->client";

/// Who opens a connection: a node (every request) or a client (client requests only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Another node, proving the cluster key: may send `RaftHello` and forwarded requests.
    Peer,
    /// A client, proving a client token: may send client requests only.
    Client,
}

impl Role {
    /// The role's byte in a client hello.
    pub fn byte(self) -> u8 {
        match self {
            Role::Peer => 1,
            Role::Client => 2,
        }
    }

    /// The role a hello byte names, if any.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Role::Peer),
            2 => Some(Role::Client),
            _ => None,
        }
    }
}

/// The secret a node proves as a peer, derived from the cluster key.
pub fn peer_secret(cluster_key: &[u8; KEY_BYTES]) -> [u8; KEY_BYTES] {
    blake3::derive_key(PEER_KEY_CONTEXT, cluster_key)
}

/// The token a client proves, derived from the cluster key (it does not reveal the key, nor
/// the peer secret, so a client cannot act as a node with it).
pub fn client_token(cluster_key: &[u8; KEY_BYTES]) -> [u8; KEY_BYTES] {
    blake3::derive_key(TOKEN_CONTEXT, cluster_key)
}

/// The client's hello.
pub fn client_hello(role: Role, nonce: &[u8; NONCE_BYTES]) -> Vec<u8> {
    let mut hello = Vec::with_capacity(MAGIC.len() + CLIENT_HELLO_REST_BYTES);
    hello.extend_from_slice(&MAGIC);
    hello.push(VERSION);
    hello.push(role.byte());
    hello.extend_from_slice(nonce);
    debug_assert_eq!(hello.len(), MAGIC.len() + CLIENT_HELLO_REST_BYTES);
    hello
}

/// Why a hello is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// Another handshake version.
    #[error("handshake version {0}, this build speaks version {VERSION}")]
    Version(u8),
    /// A role byte that names no role.
    #[error("unknown role {0}")]
    Role(u8),
}

/// Reads the client's hello after its [`MAGIC`]: its role and nonce.
pub fn parse_client_hello(
    rest: &[u8; CLIENT_HELLO_REST_BYTES],
) -> Result<(Role, [u8; NONCE_BYTES]), HelloError> {
    if rest[0] != VERSION {
        return Err(HelloError::Version(rest[0]));
    }
    let role = Role::from_byte(rest[1]).ok_or(HelloError::Role(rest[1]))?;
    let mut nonce = [0u8; NONCE_BYTES];
    nonce.copy_from_slice(&rest[2..]);
    Ok((role, nonce))
}

/// The node's hello (record 0 follows it).
pub fn node_hello(nonce: &[u8; NONCE_BYTES]) -> Vec<u8> {
    let mut hello = Vec::with_capacity(MAGIC.len() + NODE_HELLO_REST_BYTES + PROOF_BYTES);
    hello.extend_from_slice(&MAGIC);
    hello.push(VERSION);
    hello.extend_from_slice(nonce);
    debug_assert_eq!(hello.len(), MAGIC.len() + NODE_HELLO_REST_BYTES);
    hello
}

/// Reads the node's hello after its [`MAGIC`]: its nonce.
pub fn parse_node_hello(
    rest: &[u8; NODE_HELLO_REST_BYTES],
) -> Result<[u8; NONCE_BYTES], HelloError> {
    if rest[0] != VERSION {
        return Err(HelloError::Version(rest[0]));
    }
    let mut nonce = [0u8; NONCE_BYTES];
    nonce.copy_from_slice(&rest[1..]);
    Ok(nonce)
}

/// The two record keys of a connection.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKeys {
    /// Key of the records the connecting side sends.
    pub client_to_node: [u8; KEY_BYTES],
    /// Key of the records the node sends.
    pub node_to_client: [u8; KEY_BYTES],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(<redacted>)")
    }
}

/// The key schedule: each direction's key is BLAKE3 keyed by `secret` over the direction's
/// label and the hello transcript (magic, version, role, both nonces).
pub fn session_keys(
    secret: &[u8; KEY_BYTES],
    role: Role,
    client_nonce: &[u8; NONCE_BYTES],
    node_nonce: &[u8; NONCE_BYTES],
) -> SessionKeys {
    let derive = |label: &[u8]| -> [u8; KEY_BYTES] {
        let mut hasher = blake3::Hasher::new_keyed(secret);
        hasher.update(label);
        hasher.update(&MAGIC);
        hasher.update(&[VERSION, role.byte()]);
        hasher.update(client_nonce);
        hasher.update(node_nonce);
        *hasher.finalize().as_bytes()
    };
    let keys = SessionKeys {
        client_to_node: derive(CLIENT_TO_NODE),
        node_to_client: derive(NODE_TO_CLIENT),
    };
    debug_assert_ne!(keys.client_to_node, keys.node_to_client);
    keys
}

/// One side's result of a handshake step: the role of the connection, the bytes to send next,
/// and the side's (send, receive) record keys, each past record 0 once the proofs are done.
#[derive(Debug)]
pub struct Answer {
    /// The connection's role.
    pub role: Role,
    /// What to send: the node's hello and record 0 (node), or record 0 (client).
    pub reply: Vec<u8>,
    /// This side's sending direction (record 0 already sealed into `reply`).
    pub send: DirectionKey,
    /// This side's receiving direction (record 0 still to check with [`check_proof`]).
    pub recv: DirectionKey,
}

/// The node's answer to a client hello (`rest`, the bytes after [`MAGIC`]): the secret of the
/// role it claims (`peer` or `token`) keys the connection, and `reply` is the node's hello
/// with `node_nonce` and its record 0.
pub fn node_answer(
    peer: &[u8; KEY_BYTES],
    token: &[u8; KEY_BYTES],
    rest: &[u8; CLIENT_HELLO_REST_BYTES],
    node_nonce: &[u8; NONCE_BYTES],
) -> Result<Answer, HelloError> {
    let (role, client_nonce) = parse_client_hello(rest)?;
    let secret = match role {
        Role::Peer => peer,
        Role::Client => token,
    };
    let keys = session_keys(secret, role, &client_nonce, node_nonce);
    let mut send = DirectionKey::new(&keys.node_to_client);
    let recv = DirectionKey::new(&keys.client_to_node);
    let mut reply = node_hello(node_nonce);
    seal_proof(&mut send, &mut reply);
    debug_assert_eq!(
        reply.len(),
        MAGIC.len() + NODE_HELLO_REST_BYTES + PROOF_BYTES
    );
    Ok(Answer {
        role,
        reply,
        send,
        recv,
    })
}

/// The connecting side's answer to the node's hello (`rest`, the bytes after [`MAGIC`]), for
/// a connection in `role` proving `secret` with its hello's `client_nonce`: `reply` is its
/// record 0.
pub fn client_answer(
    secret: &[u8; KEY_BYTES],
    role: Role,
    client_nonce: &[u8; NONCE_BYTES],
    rest: &[u8; NODE_HELLO_REST_BYTES],
) -> Result<Answer, HelloError> {
    let node_nonce = parse_node_hello(rest)?;
    let keys = session_keys(secret, role, client_nonce, &node_nonce);
    let mut send = DirectionKey::new(&keys.client_to_node);
    let recv = DirectionKey::new(&keys.node_to_client);
    let mut reply = Vec::with_capacity(PROOF_BYTES);
    seal_proof(&mut send, &mut reply);
    debug_assert_eq!(reply.len(), PROOF_BYTES);
    Ok(Answer {
        role,
        reply,
        send,
        recv,
    })
}

fn seal_proof(send: &mut DirectionKey, out: &mut Vec<u8>) {
    debug_assert_eq!(send.records(), 0, "the proof is record 0");
    // Sealing an empty record fails only once 2^64 records were sealed; this is the first.
    let sealed = send.seal_into(&[], out);
    debug_assert!(sealed.is_ok());
}

/// Whether a proof's header announces what a proof is (an empty record); a side reads the
/// proof's tag only after this.
pub fn proof_header_ok(header: [u8; RECORD_HEADER_BYTES]) -> bool {
    record_len(header) == Ok(TAG_BYTES)
}

/// Checks the other side's record 0 with `recv` (the [`Answer`]'s receiving direction).
pub fn check_proof(
    recv: &mut DirectionKey,
    header: [u8; RECORD_HEADER_BYTES],
    tag: &mut [u8; TAG_BYTES],
) -> Result<(), RecordError> {
    if !proof_header_ok(header) {
        return Err(RecordError::LengthOutOfBounds);
    }
    let plain = recv.open_in_place(header, tag)?;
    debug_assert_eq!(plain, 0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&bytes[at..at + N]);
        out
    }

    #[test]
    fn hellos_round_trip_and_bad_ones_are_errors() {
        let nonce = [9u8; NONCE_BYTES];
        let hello = client_hello(Role::Client, &nonce);
        assert_eq!(&hello[..4], &MAGIC);
        let mut rest: [u8; CLIENT_HELLO_REST_BYTES] = split(&hello, 4);
        assert_eq!(parse_client_hello(&rest), Ok((Role::Client, nonce)));
        rest[1] = 9;
        assert_eq!(parse_client_hello(&rest), Err(HelloError::Role(9)));
        rest[0] = 2;
        assert_eq!(parse_client_hello(&rest), Err(HelloError::Version(2)));
        let hello = node_hello(&nonce);
        let rest: [u8; NODE_HELLO_REST_BYTES] = split(&hello, 4);
        assert_eq!(parse_node_hello(&rest), Ok(nonce));
    }

    #[test]
    fn the_token_is_neither_the_key_nor_the_peer_key_and_roles_get_different_keys() {
        let key = [7u8; KEY_BYTES];
        let (peer, token) = (peer_secret(&key), client_token(&key));
        assert_ne!(token, key);
        assert_ne!(peer, token);
        let (a, b) = ([1u8; NONCE_BYTES], [2u8; NONCE_BYTES]);
        let by_peer = session_keys(&peer, Role::Peer, &a, &b);
        let by_client = session_keys(&token, Role::Client, &a, &b);
        assert_ne!(by_peer.client_to_node, by_client.client_to_node);
        let other = session_keys(&peer, Role::Peer, &a, &[3u8; NONCE_BYTES]);
        assert_ne!(by_peer.client_to_node, other.client_to_node, "fresh nonces");
        assert!(!format!("{by_peer:?}").contains("07"));
    }

    /// Runs both sides over byte strings; whether each side accepted the other's proof.
    fn exchange(
        node_key: &[u8; KEY_BYTES],
        client_secret: [u8; KEY_BYTES],
        role: Role,
    ) -> (bool, bool) {
        let (client_nonce, node_nonce) = ([4u8; NONCE_BYTES], [5u8; NONCE_BYTES]);
        let hello = client_hello(role, &client_nonce);
        let node = node_answer(
            &peer_secret(node_key),
            &client_token(node_key),
            &split(&hello, 4),
            &node_nonce,
        );
        let Ok(mut node) = node else {
            panic!("a well-formed hello: {node:?}")
        };
        assert_eq!(node.role, role);
        let rest = split(&node.reply, 4);
        let client = client_answer(&client_secret, role, &client_nonce, &rest);
        let Ok(mut client) = client else {
            panic!("a well-formed node hello: {client:?}")
        };
        let at = 4 + NODE_HELLO_REST_BYTES;
        let mut tag = split(&node.reply, at + RECORD_HEADER_BYTES);
        let client_ok = check_proof(&mut client.recv, split(&node.reply, at), &mut tag).is_ok();
        let mut tag = split(&client.reply, RECORD_HEADER_BYTES);
        let node_ok = check_proof(&mut node.recv, split(&client.reply, 0), &mut tag).is_ok();
        (node_ok, client_ok)
    }

    #[test]
    fn the_right_secret_passes_both_ways_and_a_wrong_one_neither() {
        let key = [7u8; KEY_BYTES];
        assert_eq!(exchange(&key, peer_secret(&key), Role::Peer), (true, true));
        assert_eq!(
            exchange(&key, client_token(&key), Role::Client),
            (true, true)
        );
        let other = [8u8; KEY_BYTES];
        assert_eq!(
            exchange(&key, peer_secret(&other), Role::Peer),
            (false, false)
        );
        // A token claiming the peer role proves the wrong secret.
        assert_eq!(
            exchange(&key, client_token(&key), Role::Peer),
            (false, false)
        );
    }

    #[test]
    fn a_proof_with_another_length_is_refused_from_its_header() {
        let mut recv = DirectionKey::new(&[1; KEY_BYTES]);
        let mut tag = [0u8; TAG_BYTES];
        assert_eq!(
            check_proof(&mut recv, [0, 0, 0, 17], &mut tag),
            Err(RecordError::LengthOutOfBounds)
        );
        assert_eq!(recv.records(), 0, "nothing was opened");
        assert!(proof_header_ok([0, 0, 0, 16]));
    }
}
