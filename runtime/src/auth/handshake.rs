//! The handshake that opens a secure TCP connection, keyed by the cluster key.
//!
//! Owns: the roles ([`Role::Peer`] for nodes, [`Role::Client`] for clients), the keys a role
//! proves ([`NodeKeys`]: a peer key and the client token, both derived from the cluster key with
//! BLAKE3 `derive_key`; [`ClientToken`] alone on a client), the hello messages and the key
//! schedule. The exchange (one round trip):
//!
//! ```text
//! client -> node: MAGIC | version | role | client nonce (32 random bytes)
//! node -> client: MAGIC | version | node nonce (32 random bytes) | record 0 (empty), node->client
//! client -> node: record 0 (empty), client->node
//! ```
//!
//! Each direction's record key is BLAKE3 keyed by the role's secret over a direction label and
//! the whole hello transcript, so only a holder of the secret can produce record 0, a replayed
//! connection fails (the other side's nonce is fresh), and a changed role fails too. `MAGIC` read
//! as a frame length is far above any frame's cap, so a plain node answers a hello with a plain
//! error frame, and a secure node tells a hello from a plain frame by its first 4 bytes.
//! Must never: reveal a secret (only MACs over fresh nonces go on the wire), accept a
//! connection before the peer's record 0 authenticated, or read more than a hello's fixed size
//! before that.

use std::fmt;

use chacha20poly1305::aead::OsRng;
use chacha20poly1305::aead::rand_core::RngCore;

use super::stream::DirectionKey;
use super::{ClusterKey, KEY_BYTES, KeyError};

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
/// Environment variable holding a client token as 64 hex digits.
pub const TOKEN_ENV: &str = "IDUNNO_CLIENT_TOKEN";

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
    fn byte(self) -> u8 {
        match self {
            Role::Peer => 1,
            Role::Client => 2,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Role::Peer),
            2 => Some(Role::Client),
            _ => None,
        }
    }
}

/// A secret of 32 bytes that never prints.
#[derive(Clone, PartialEq, Eq)]
struct Secret([u8; KEY_BYTES]);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The token a client proves: derived from the cluster key, so every node can check it, but
/// it does not reveal the key (a client cannot act as a node with it).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ClientToken(Secret);

impl ClientToken {
    /// The token of the cluster whose key is `key`.
    pub fn from_key(key: &ClusterKey) -> Self {
        ClientToken(Secret(blake3::derive_key(TOKEN_CONTEXT, key.bytes())))
    }

    /// Parses 64 hex digits (what `idunno-node token` prints).
    pub fn parse(text: &str, origin: &str) -> Result<Self, KeyError> {
        ClusterKey::parse(text, origin).map(|key| ClientToken(Secret(*key.bytes())))
    }

    /// The token as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        self.0.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// What a node proves and checks: the peer key and the client token.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NodeKeys {
    peer: Secret,
    token: ClientToken,
}

impl NodeKeys {
    /// The keys of the cluster whose key is `key`.
    pub fn from_key(key: &ClusterKey) -> Self {
        NodeKeys {
            peer: Secret(blake3::derive_key(PEER_KEY_CONTEXT, key.bytes())),
            token: ClientToken::from_key(key),
        }
    }

    /// The secret a connection in `role` proves.
    fn secret(&self, role: Role) -> &Secret {
        match role {
            Role::Peer => &self.peer,
            Role::Client => &self.token.0,
        }
    }
}

/// The secret a connecting side proves, with its role.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Credential {
    /// A node: the peer key.
    Node(NodeKeys),
    /// A client: a token.
    Client(ClientToken),
}

impl Credential {
    /// The role this credential connects in.
    pub fn role(&self) -> Role {
        match self {
            Credential::Node(_) => Role::Peer,
            Credential::Client(_) => Role::Client,
        }
    }

    fn secret(&self) -> &Secret {
        match self {
            Credential::Node(keys) => keys.secret(Role::Peer),
            Credential::Client(token) => &token.0,
        }
    }
}

/// A fresh random nonce.
pub fn fresh_nonce() -> [u8; NONCE_BYTES] {
    let mut nonce = [0u8; NONCE_BYTES];
    OsRng.fill_bytes(&mut nonce);
    nonce
}

/// The client's hello.
pub fn client_hello(role: Role, nonce: &[u8; NONCE_BYTES]) -> Vec<u8> {
    let mut hello = Vec::with_capacity(MAGIC.len() + CLIENT_HELLO_REST_BYTES);
    hello.extend_from_slice(&MAGIC);
    hello.push(VERSION);
    hello.push(role.byte());
    hello.extend_from_slice(nonce);
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

/// The node's hello (record 0 is appended by the caller).
pub fn node_hello(nonce: &[u8; NONCE_BYTES]) -> Vec<u8> {
    let mut hello = Vec::with_capacity(MAGIC.len() + NODE_HELLO_REST_BYTES);
    hello.extend_from_slice(&MAGIC);
    hello.push(VERSION);
    hello.extend_from_slice(nonce);
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

/// The two record keys of a connection: (client to node, node to client).
struct SessionKeys {
    client_to_node: [u8; 32],
    node_to_client: [u8; 32],
}

fn session_keys(
    secret: &Secret,
    role: Role,
    client_nonce: &[u8; NONCE_BYTES],
    node_nonce: &[u8; NONCE_BYTES],
) -> SessionKeys {
    let derive = |label: &[u8]| -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_keyed(&secret.0);
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

/// The connecting side's (send, receive) record keys.
pub(crate) fn client_directions(
    credential: &Credential,
    client_nonce: &[u8; NONCE_BYTES],
    node_nonce: &[u8; NONCE_BYTES],
) -> (DirectionKey, DirectionKey) {
    let keys = session_keys(
        credential.secret(),
        credential.role(),
        client_nonce,
        node_nonce,
    );
    (
        DirectionKey::new(&keys.client_to_node),
        DirectionKey::new(&keys.node_to_client),
    )
}

/// The accepting node's (send, receive) record keys for a connection in `role`.
pub(crate) fn node_directions(
    keys: &NodeKeys,
    role: Role,
    client_nonce: &[u8; NONCE_BYTES],
    node_nonce: &[u8; NONCE_BYTES],
) -> (DirectionKey, DirectionKey) {
    let keys = session_keys(keys.secret(role), role, client_nonce, node_nonce);
    (
        DirectionKey::new(&keys.node_to_client),
        DirectionKey::new(&keys.client_to_node),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hellos_round_trip_and_bad_ones_are_errors() {
        let nonce = fresh_nonce();
        let hello = client_hello(Role::Client, &nonce);
        assert_eq!(&hello[..4], &MAGIC);
        let mut rest = [0u8; CLIENT_HELLO_REST_BYTES];
        rest.copy_from_slice(&hello[4..]);
        assert_eq!(parse_client_hello(&rest), Ok((Role::Client, nonce)));
        rest[1] = 9;
        assert_eq!(parse_client_hello(&rest), Err(HelloError::Role(9)));
        rest[0] = 2;
        assert_eq!(parse_client_hello(&rest), Err(HelloError::Version(2)));
        let hello = node_hello(&nonce);
        let mut rest = [0u8; NODE_HELLO_REST_BYTES];
        rest.copy_from_slice(&hello[4..]);
        assert_eq!(parse_node_hello(&rest), Ok(nonce));
    }

    #[test]
    fn magic_is_no_frame_a_node_would_read() {
        let len = u32::from_be_bytes(MAGIC) as usize;
        assert!(len > idunno_core::wire::FRAME_BYTES_MAX);
    }

    #[test]
    fn the_token_is_neither_the_key_nor_the_peer_key_and_roles_get_different_keys() {
        let key = ClusterKey::from_bytes([7; 32]);
        let keys = NodeKeys::from_key(&key);
        let token = ClientToken::from_key(&key);
        assert_ne!(token.to_hex(), key.to_hex());
        assert_ne!(keys.peer, token.0);
        assert_eq!(
            ClientToken::parse(&token.to_hex(), "test").ok(),
            Some(token.clone())
        );
        let (a, b) = (fresh_nonce(), fresh_nonce());
        let peer = session_keys(&keys.peer, Role::Peer, &a, &b);
        let client = session_keys(&token.0, Role::Client, &a, &b);
        assert_ne!(peer.client_to_node, client.client_to_node);
        let other = session_keys(&keys.peer, Role::Peer, &a, &fresh_nonce());
        assert_ne!(peer.client_to_node, other.client_to_node, "fresh nonces");
        assert!(!format!("{keys:?}{token:?}").contains("07"));
    }
}
