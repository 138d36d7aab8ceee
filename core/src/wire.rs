//! The wire codec: every byte that crosses a socket is encoded and decoded here.
//!
//! Owns: the top-level message types ([`Datagram`] for UDP, [`ControlRequest`] /
//! [`ControlResponse`] for the client's TCP frames), the frame layout (a version byte, then the
//! bincode 2 serde encoding) and the hard size limits.
//! Must never: panic on any input, allocate more than the size cap for one message, or let a
//! second encoding appear elsewhere (bincode is used through this module only, so it can be
//! swapped in one place).
//!
//! Datagram layout: `[WIRE_VERSION][bincode(Datagram)]`, at most [`DATAGRAM_BYTES_MAX`] bytes.
//! TCP frame layout: `[u32 big-endian body length][WIRE_VERSION][bincode(T)]`, the body at most
//! [`FRAME_BYTES_MAX`] bytes.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize as SerializeDerive};

use std::net::SocketAddr;

use crate::consensus::VoterId;
use crate::membership::{Member, NodeId, Packet};

/// Version of the wire format; the first byte of every datagram and frame body.
pub const WIRE_VERSION: u8 = 1;
/// Largest datagram we send or accept, in bytes (fits an Ethernet MTU with IP/UDP headers).
pub const DATAGRAM_BYTES_MAX: usize = 1400;
/// Largest TCP frame body we send or accept, in bytes.
pub const FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Length of the big-endian length prefix in front of every TCP frame.
pub const FRAME_HEADER_BYTES: usize = 4;

/// bincode's own allocation limit per decode, so a hostile length field cannot make it
/// reserve more than a frame could hold.
const DECODE_LIMIT_BYTES: usize = FRAME_BYTES_MAX;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT_BYTES>()
}

/// Why bytes could not be encoded or decoded. Decoding errors never change any state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The input was empty.
    #[error("empty message")]
    Empty,
    /// The message is larger than the cap for its channel.
    #[error("message of {len} bytes exceeds the {max}-byte limit")]
    Oversized {
        /// Length seen or produced.
        len: usize,
        /// The cap that applies.
        max: usize,
    },
    /// The version byte is not one we speak.
    #[error("unsupported wire version {0} (this node speaks {WIRE_VERSION})")]
    UnknownVersion(u8),
    /// The body is not a valid encoding of the expected type.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A valid message followed by extra bytes.
    #[error("{0} unexpected trailing bytes")]
    TrailingBytes(usize),
    /// The value could not be encoded (a bug: our own types always encode).
    #[error("could not encode: {0}")]
    Encode(String),
}

/// Everything sent over UDP.
#[derive(Debug, Clone, PartialEq, Eq, SerializeDerive, Deserialize)]
pub enum Datagram {
    /// SWIM membership traffic.
    Membership(Packet),
}

/// A client's request to a node's control port (TCP, same address as the node's UDP port).
#[derive(Debug, Clone, PartialEq, Eq, SerializeDerive, Deserialize)]
pub enum ControlRequest {
    /// The node's membership view: every member it knows, live or recently dead.
    ListMembers,
    /// The node's own identity.
    ListSelf,
    /// Leave the cluster gracefully, then exit.
    Leave,
    /// The first frame of a Raft peer connection on the control port: every later frame on it
    /// is a `consensus::encode` message from voter `from`. Never answered.
    RaftHello {
        /// The sending voter.
        from: VoterId,
    },
    /// Who leads the Raft log (any node answers, voter or not).
    Leader,
    /// Set `key` to `value` through the Raft log; a follower forwards it to the leader.
    KvPut {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// Already forwarded once by another node: answer, never forward again.
        forwarded: bool,
    },
    /// Read `key` linearizably (ReadIndex at the leader); a follower forwards it to the leader.
    KvGet {
        /// The key.
        key: String,
        /// Already forwarded once by another node: answer, never forward again.
        forwarded: bool,
    },
    /// Store the blob whose BLAKE3 hash is `hash` and forward it along `chain` (pipelined chain
    /// replication). The node answers [`ControlResponse::BlobReady`] (or a refusal) once it and
    /// every node of `chain` accepted the transfer; then exactly `size` raw bytes follow on the
    /// connection, and the node answers once with [`ControlResponse::BlobStored`] (itself and the
    /// whole chain have the blob fsynced and hash-checked) or [`ControlResponse::BlobFailed`].
    BlobPut {
        /// BLAKE3 hash of the bytes that follow.
        hash: [u8; 32],
        /// Number of raw bytes that follow.
        size: u64,
        /// The replicas after this one, in order; empty for the last (or a fan-out target).
        chain: Vec<SocketAddr>,
    },
    /// Send the blob whose hash is `hash`, from byte `offset` on. The node answers
    /// [`ControlResponse::BlobData`] followed by `size - offset` raw bytes, or an error.
    BlobGet {
        /// BLAKE3 hash of the blob.
        hash: [u8; 32],
        /// First byte to send.
        offset: u64,
    },
    /// The nodes the replicated state has recorded as failed, oldest first (a linearizable read
    /// at the leader; a follower forwards it).
    FailedNodes {
        /// Already forwarded once by another node: answer, never forward again.
        forwarded: bool,
    },
    /// A scheduler command (proposed through the log) or query (a linearizable read) at the
    /// leader; a follower forwards it.
    Sched {
        /// What is asked.
        request: crate::scheduler::api::SchedRequest,
        /// Already forwarded once by another node: answer, never forward again.
        forwarded: bool,
    },
    /// A file-system request (see [`crate::dfs::request`]); the leader's part is forwarded to
    /// the leader once.
    Dfs {
        /// What is asked.
        request: crate::dfs::DfsRequest,
        /// Already forwarded once by another node: answer, never forward again.
        forwarded: bool,
    },
    /// This node's own counters (membership, Raft, authentication, worker): answered by the
    /// node asked, never forwarded.
    NodeStats,
}

/// Most groups in a [`ControlResponse::NodeStats`] answer.
pub const STATS_GROUPS_MAX: usize = 16;
/// Most counters in one [`StatsGroup`].
pub const STATS_COUNTERS_MAX: usize = 64;

/// One named group of a node's counters (for example `raft` or `membership`), as the `stats`
/// client command shows them. Counters are monotonic totals since the process started, except
/// where the name says otherwise (`term`, `commit_index`, ...).
#[derive(Debug, Clone, PartialEq, Eq, SerializeDerive, Deserialize)]
pub struct StatsGroup {
    /// The group's name.
    pub name: String,
    /// `(counter name, value)`, in a fixed order.
    pub counters: Vec<(String, u64)>,
}

impl StatsGroup {
    /// A group named `name` with `counters`, cut to [`STATS_COUNTERS_MAX`].
    pub fn new(name: &str, counters: &[(&str, u64)]) -> Self {
        StatsGroup {
            name: name.to_owned(),
            counters: counters
                .iter()
                .take(STATS_COUNTERS_MAX)
                .map(|&(n, v)| (n.to_owned(), v))
                .collect(),
        }
    }
}

/// A node's answer to a [`ControlRequest`].
#[derive(Debug, Clone, PartialEq, Eq, SerializeDerive, Deserialize)]
pub enum ControlResponse {
    /// Answer to [`ControlRequest::ListMembers`], sorted by node id.
    Members(Vec<Member>),
    /// Answer to [`ControlRequest::ListSelf`].
    SelfInfo {
        /// This node's identity.
        id: NodeId,
        /// Its current incarnation.
        incarnation: u64,
    },
    /// Answer to [`ControlRequest::Leave`]: the node is announcing its departure and will exit.
    Leaving,
    /// The request was refused or failed.
    Error(String),
    /// Answer to [`ControlRequest::Leader`].
    Leader {
        /// The leader's voter id, if one is known.
        id: Option<VoterId>,
        /// The leader's node address (its control port), if known.
        addr: Option<SocketAddr>,
        /// The answering voter's term (0 from a non-voter that could not ask).
        term: u64,
    },
    /// A Raft request reached a node that does not lead and did not forward it: retry at
    /// `addr`, if known.
    NotLeader {
        /// The leader's voter id, if known.
        id: Option<VoterId>,
        /// The leader's node address, if known.
        addr: Option<SocketAddr>,
    },
    /// Answer to [`ControlRequest::KvPut`]: committed and applied at log `index`.
    KvDone {
        /// The log index of the put.
        index: u64,
    },
    /// Answer to [`ControlRequest::KvGet`]: the value (`None`: absent).
    KvValue(Option<Vec<u8>>),
    /// First answer to [`ControlRequest::BlobPut`]: this node and its whole chain accepted the
    /// transfer; send the bytes.
    BlobReady,
    /// Last answer to [`ControlRequest::BlobPut`]: these nodes (this one first, then the chain)
    /// hold the blob, fsynced and hash-checked.
    BlobStored {
        /// Every replica that acknowledged, in chain order.
        replicas: Vec<SocketAddr>,
    },
    /// A [`ControlRequest::BlobPut`] failed at `replica`; no acknowledgement covers the blob.
    BlobFailed {
        /// The replica that failed (or could not be reached).
        replica: SocketAddr,
        /// Why.
        reason: String,
    },
    /// Answer to [`ControlRequest::BlobGet`]: the blob's total size; `size - offset` raw bytes
    /// follow. The sender closes the connection early if its copy turns out corrupt.
    BlobData {
        /// Total size of the blob in bytes.
        size: u64,
    },
    /// Answer to [`ControlRequest::FailedNodes`].
    FailedNodes(Vec<NodeId>),
    /// A command of the replicated state applied at log `index` (an answer nobody needs to read,
    /// like that of a `NodeFailed` proposal).
    Applied {
        /// The log index.
        index: u64,
    },
    /// Answer to [`ControlRequest::Sched`].
    Sched(crate::scheduler::api::SchedAnswer),
    /// Answer to [`ControlRequest::Dfs`].
    Dfs(crate::dfs::DfsAnswer),
    /// Answer to [`ControlRequest::NodeStats`]: at most [`STATS_GROUPS_MAX`] groups.
    NodeStats(Vec<StatsGroup>),
}

/// Number of bytes `value` takes in the bincode encoding (without the version byte).
pub fn encoded_len<T: Serialize>(value: &T) -> Result<usize, WireError> {
    let mut counter = SizeCounter(0);
    bincode::serde::encode_into_writer(value, &mut counter, config())
        .map_err(|e| WireError::Encode(e.to_string()))?;
    Ok(counter.0)
}

struct SizeCounter(usize);

impl bincode::enc::write::Writer for SizeCounter {
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0 += bytes.len();
        Ok(())
    }
}

fn encode_body<T: Serialize>(value: &T, prefix: &[u8], max: usize) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(prefix);
    out.push(WIRE_VERSION);
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .map_err(|e| WireError::Encode(e.to_string()))?;
    let body_len = out.len() - prefix.len();
    if body_len > max {
        return Err(WireError::Oversized { len: body_len, max });
    }
    Ok(out)
}

fn decode_body<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, WireError> {
    let (&version, body) = bytes.split_first().ok_or(WireError::Empty)?;
    if bytes.len() > max {
        return Err(WireError::Oversized {
            len: bytes.len(),
            max,
        });
    }
    if version != WIRE_VERSION {
        return Err(WireError::UnknownVersion(version));
    }
    let (value, used) = bincode::serde::decode_from_slice::<T, _>(body, config())
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(WireError::TrailingBytes(body.len() - used));
    }
    Ok(value)
}

/// Encodes one datagram; fails with [`WireError::Oversized`] above [`DATAGRAM_BYTES_MAX`].
pub fn encode_datagram(datagram: &Datagram) -> Result<Vec<u8>, WireError> {
    encode_body(datagram, &[], DATAGRAM_BYTES_MAX)
}

/// Decodes one datagram. Any byte string is a valid input: garbage returns an error.
pub fn decode_datagram(bytes: &[u8]) -> Result<Datagram, WireError> {
    decode_body(bytes, DATAGRAM_BYTES_MAX)
}

/// Encodes `value` as one TCP frame: length prefix, version byte, body.
pub fn encode_frame<T: Serialize>(value: &T) -> Result<Vec<u8>, WireError> {
    let mut out = encode_body(value, &[0; FRAME_HEADER_BYTES], FRAME_BYTES_MAX)?;
    let body_len = out.len() - FRAME_HEADER_BYTES;
    let len = u32::try_from(body_len).map_err(|_| WireError::Oversized {
        len: body_len,
        max: FRAME_BYTES_MAX,
    })?;
    out[..FRAME_HEADER_BYTES].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// Reads a frame header: the body length that follows, checked against [`FRAME_BYTES_MAX`].
pub fn decode_frame_header(header: [u8; FRAME_HEADER_BYTES]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(header) as usize;
    if len == 0 {
        return Err(WireError::Empty);
    }
    if len > FRAME_BYTES_MAX {
        return Err(WireError::Oversized {
            len,
            max: FRAME_BYTES_MAX,
        });
    }
    Ok(len)
}

/// Decodes a frame body (the bytes after the header).
pub fn decode_frame_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, WireError> {
    decode_body(body, FRAME_BYTES_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::{Message, Update};
    use std::net::SocketAddr;

    fn node(port: u16, generation: u64) -> NodeId {
        NodeId::new(SocketAddr::from(([127, 0, 0, 1], port)), generation)
    }

    fn sample() -> Datagram {
        Datagram::Membership(Packet {
            from: node(7000, 5),
            to: Some(node(7001, 9)),
            message: Message::Ping { seq: 77 },
            gossip: vec![Update::Suspect {
                node: node(7002, 1),
                incarnation: 3,
                by: node(7000, 5),
            }],
        })
    }

    #[test]
    fn datagram_round_trips() {
        let bytes = encode_datagram(&sample()).expect("encodes");
        assert_eq!(bytes[0], WIRE_VERSION);
        assert_eq!(decode_datagram(&bytes), Ok(sample()));
    }

    #[test]
    fn bad_datagrams_are_errors() {
        let good = encode_datagram(&sample()).expect("encodes");
        assert_eq!(decode_datagram(&[]), Err(WireError::Empty));
        let mut wrong_version = good.clone();
        wrong_version[0] = 99;
        assert_eq!(
            decode_datagram(&wrong_version),
            Err(WireError::UnknownVersion(99))
        );
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(decode_datagram(&trailing), Err(WireError::TrailingBytes(1)));
        for cut in 1..good.len() {
            assert!(decode_datagram(&good[..cut]).is_err(), "truncated at {cut}");
        }
        let big = vec![WIRE_VERSION; DATAGRAM_BYTES_MAX + 1];
        assert!(matches!(
            decode_datagram(&big),
            Err(WireError::Oversized { .. })
        ));
    }

    #[test]
    fn oversized_datagram_is_not_encoded() {
        let gossip = (0..200)
            .map(|i| Update::Alive {
                node: node(i, u64::MAX),
                incarnation: u64::MAX,
            })
            .collect();
        let datagram = Datagram::Membership(Packet {
            from: node(1, 1),
            to: None,
            message: Message::Gossip,
            gossip,
        });
        assert!(matches!(
            encode_datagram(&datagram),
            Err(WireError::Oversized { .. })
        ));
    }

    #[test]
    fn frames_round_trip_and_caps_hold() {
        let frame = encode_frame(&ControlRequest::ListMembers).expect("encodes");
        let header: [u8; FRAME_HEADER_BYTES] =
            frame[..FRAME_HEADER_BYTES].try_into().expect("four bytes");
        let len = decode_frame_header(header).expect("valid header");
        assert_eq!(len, frame.len() - FRAME_HEADER_BYTES);
        assert_eq!(
            decode_frame_body::<ControlRequest>(&frame[FRAME_HEADER_BYTES..]),
            Ok(ControlRequest::ListMembers)
        );
        assert_eq!(decode_frame_header([0; 4]), Err(WireError::Empty));
        assert!(matches!(
            decode_frame_header([0xff; 4]),
            Err(WireError::Oversized { .. })
        ));
        assert!(decode_frame_body::<ControlResponse>(&[WIRE_VERSION, 250, 250]).is_err());
    }

    #[test]
    fn encoded_len_matches_encoding() {
        let len = encoded_len(&sample()).expect("encodes");
        assert_eq!(len + 1, encode_datagram(&sample()).expect("encodes").len());
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
                let _ = decode_datagram(&bytes);
                let _ = decode_frame_body::<ControlRequest>(&bytes);
                let _ = decode_frame_body::<ControlResponse>(&bytes);
            }
        }
    }
}
