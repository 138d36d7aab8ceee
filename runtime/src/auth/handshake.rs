//! The handshake that opens a secure TCP connection: the secrets each side proves.
//!
//! Owns: the keys a role proves ([`NodeKeys`]: a peer key and the client token, both derived
//! from the [`ClusterKey`]; [`ClientToken`] alone on a client; [`Credential`], what a connecting
//! side proves), their parsing and printing, and fresh random nonces. The messages, the key
//! schedule and each side's step are pure and live in [`idunno_core::auth::handshake`]
//! (re-exported here; a fuzz target reaches them there). The exchange (one round trip):
//!
//! ```text
//! client -> node: MAGIC | version | role | client nonce (32 random bytes)
//! node -> client: MAGIC | version | node nonce (32 random bytes) | record 0 (empty), node->client
//! client -> node: record 0 (empty), client->node
//! ```
//!
//! Each direction's record key is BLAKE3 keyed by the role's secret over a direction label and
//! the whole hello transcript, so only a holder of the secret can produce record 0, a replayed
//! connection fails (the other side's nonce is fresh), and a changed role fails too.
//! [`super::tcp`] does the I/O.
//! Must never: reveal a secret (only MACs over fresh nonces go on the wire), or print one.

use std::fmt;

use chacha20poly1305::aead::OsRng;
use chacha20poly1305::aead::rand_core::RngCore;
use idunno_core::auth::handshake::{self as steps, Answer};

pub use idunno_core::auth::handshake::{
    CLIENT_HELLO_REST_BYTES, HelloError, MAGIC, NODE_HELLO_REST_BYTES, NONCE_BYTES, PROOF_BYTES,
    Role, VERSION, check_proof, client_hello, node_hello, parse_client_hello, parse_node_hello,
    proof_header_ok,
};

use super::{ClusterKey, KEY_BYTES, KeyError};

/// Environment variable holding a client token as 64 hex digits.
pub const TOKEN_ENV: &str = "IDUNNO_CLIENT_TOKEN";

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
        ClientToken(Secret(steps::client_token(key.bytes())))
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
            peer: Secret(steps::peer_secret(key.bytes())),
            token: ClientToken::from_key(key),
        }
    }

    /// The node's answer to a client hello (the bytes after [`MAGIC`]), with a fresh
    /// `node_nonce`: the connection's role, the node's hello and proof, and its record keys.
    pub(crate) fn answer(
        &self,
        rest: &[u8; CLIENT_HELLO_REST_BYTES],
        node_nonce: &[u8; NONCE_BYTES],
    ) -> Result<Answer, HelloError> {
        steps::node_answer(&self.peer.0, &self.token.0.0, rest, node_nonce)
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
            Credential::Node(keys) => &keys.peer,
            Credential::Client(token) => &token.0,
        }
    }

    /// This side's answer to the node's hello (the bytes after [`MAGIC`]), for a connection
    /// whose hello carried `client_nonce`: its proof and its record keys.
    pub(crate) fn answer(
        &self,
        client_nonce: &[u8; NONCE_BYTES],
        rest: &[u8; NODE_HELLO_REST_BYTES],
    ) -> Result<Answer, HelloError> {
        steps::client_answer(&self.secret().0, self.role(), client_nonce, rest)
    }
}

/// A fresh random nonce.
pub fn fresh_nonce() -> [u8; NONCE_BYTES] {
    let mut nonce = [0u8; NONCE_BYTES];
    OsRng.fill_bytes(&mut nonce);
    nonce
}

/// The key schedule over a runtime secret (the unit tests compare roles and nonces with it).
#[cfg(test)]
fn session_keys(
    secret: &Secret,
    role: Role,
    client_nonce: &[u8; NONCE_BYTES],
    node_nonce: &[u8; NONCE_BYTES],
) -> steps::SessionKeys {
    steps::session_keys(&secret.0, role, client_nonce, node_nonce)
}

#[cfg(test)]
mod tests {
    use super::*;

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
