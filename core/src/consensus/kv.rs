//! The replicated state machine interface and a small key-value store that implements it.
//!
//! Owns: [`StateMachine`] (what the committed log is applied to: a pure, deterministic function
//! of the entries, with a snapshot of the applied state), [`KvCommand`] / [`KvResult`] (serde
//! encoded) and [`KvStore`].
//! Must never: depend on anything but the command bytes and the state (no clock, no randomness,
//! no hash order), or panic on a malformed command (it yields [`KvResult::Invalid`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::wire::{self, WireError};

/// Longest key the store accepts.
pub const KEY_BYTES_MAX: usize = 1024;

/// What committed entries are applied to. Implementations must be deterministic: the same
/// commands in the same order give the same results and the same state on every node.
pub trait StateMachine {
    /// Applies the command committed at `index` (indices arrive strictly increasing) and
    /// returns the result for the proposer.
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8>;
    /// The index of the last applied command (0 if none).
    fn applied_index(&self) -> u64;
    /// A snapshot of the applied state, or an error when it cannot be encoded within
    /// [`SNAPSHOT_BYTES_MAX`](super::SNAPSHOT_BYTES_MAX): then the caller must not compact
    /// the log (an empty or truncated snapshot would lose the state).
    fn snapshot(&self) -> Result<Vec<u8>, WireError>;
    /// Replaces the state with a snapshot made by [`StateMachine::snapshot`]. On error the
    /// state is unchanged.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), WireError>;
}

/// Encodes a state machine's snapshot as a frame of at most
/// [`SNAPSHOT_BYTES_MAX`](super::SNAPSHOT_BYTES_MAX) bytes.
pub fn encode_snapshot<T: Serialize>(state: &T) -> Result<Vec<u8>, WireError> {
    let bytes = wire::encode_frame(state)?;
    let max = super::SNAPSHOT_BYTES_MAX;
    if bytes.len() > max {
        return Err(WireError::Oversized {
            len: bytes.len(),
            max,
        });
    }
    Ok(bytes)
}

/// A key-value command.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvCommand {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
    },
    /// Read `key` (through the log, so linearizable).
    Get {
        /// The key.
        key: String,
    },
    /// Set `key` to `new` if its current value is `expected` (`None`: absent).
    Cas {
        /// The key.
        key: String,
        /// The value it must have.
        expected: Option<Vec<u8>>,
        /// The value to store.
        new: Vec<u8>,
    },
}

impl KvCommand {
    /// The command bytes to propose.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        wire::encode_frame(self)
    }

    /// Decodes proposal bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let body = bytes
            .get(wire::FRAME_HEADER_BYTES..)
            .ok_or(WireError::Empty)?;
        wire::decode_frame_body(body)
    }
}

/// The result of one [`KvCommand`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvResult {
    /// A put was applied.
    Done,
    /// The value read (or the current value after a failed cas).
    Value(Option<Vec<u8>>),
    /// Whether the cas swapped, and the value it found.
    Cas {
        /// Swapped.
        swapped: bool,
        /// The value before.
        previous: Option<Vec<u8>>,
    },
    /// The command did not decode or broke a limit; nothing changed.
    Invalid,
}

impl KvResult {
    /// Encodes a result (what [`StateMachine::apply`] returns).
    pub fn encode(&self) -> Vec<u8> {
        // Our own enum of bounded values always encodes; an empty vector marks the impossible.
        wire::encode_frame(self).unwrap_or_default()
    }

    /// Decodes a result.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let body = bytes
            .get(wire::FRAME_HEADER_BYTES..)
            .ok_or(WireError::Empty)?;
        wire::decode_frame_body(body)
    }
}

/// Most bytes (keys plus values) the key-value store holds, so that the cluster's whole state
/// stays within one snapshot.
pub const KV_BYTES_MAX: usize = 1 << 20;

/// An in-memory key-value store driven by the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvStore {
    data: BTreeMap<String, Vec<u8>>,
    applied: u64,
    /// Sum of key and value lengths, at most [`KV_BYTES_MAX`].
    bytes: usize,
}

impl KvStore {
    /// The value of `key` as of the last applied command.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.data.get(key).map(Vec::as_slice)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Bytes held (keys plus values).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Sets `key` to `value` unless the store would exceed [`KV_BYTES_MAX`].
    fn insert(&mut self, key: String, value: Vec<u8>) -> bool {
        let old = self.data.get(&key).map_or(0, |v| key.len() + v.len());
        let new = key.len() + value.len();
        let bytes = self.bytes - old + new;
        if bytes > KV_BYTES_MAX {
            return false;
        }
        self.bytes = bytes;
        self.data.insert(key, value);
        debug_assert!(
            self.data.len() > 1024
                || self.bytes
                    == self
                        .data
                        .iter()
                        .map(|(k, v)| k.len() + v.len())
                        .sum::<usize>()
        );
        true
    }

    /// Executes one decoded command (keys over [`KEY_BYTES_MAX`], and puts that would take the
    /// store over [`KV_BYTES_MAX`], yield [`KvResult::Invalid`] and change nothing). [`StateMachine::apply`] is this plus decoding and the applied index;
    /// a composite state machine calls it directly.
    pub fn execute(&mut self, command: KvCommand) -> KvResult {
        if let KvCommand::Put { key, .. } | KvCommand::Get { key } | KvCommand::Cas { key, .. } =
            &command
            && key.len() > KEY_BYTES_MAX
        {
            return KvResult::Invalid;
        }
        match command {
            KvCommand::Put { key, value } => {
                if self.insert(key, value) {
                    KvResult::Done
                } else {
                    KvResult::Invalid
                }
            }
            KvCommand::Get { key } => KvResult::Value(self.data.get(&key).cloned()),
            KvCommand::Cas { key, expected, new } => {
                let previous = self.data.get(&key).cloned();
                if previous != expected {
                    return KvResult::Cas {
                        swapped: false,
                        previous,
                    };
                }
                if !self.insert(key, new) {
                    return KvResult::Invalid;
                }
                KvResult::Cas {
                    swapped: true,
                    previous,
                }
            }
        }
    }
}

impl StateMachine for KvStore {
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
        debug_assert!(index > self.applied, "indices arrive strictly increasing");
        self.applied = index;
        let result = match KvCommand::decode(command) {
            Ok(command) => self.execute(command),
            Err(_) => KvResult::Invalid,
        };
        result.encode()
    }

    fn applied_index(&self) -> u64 {
        self.applied
    }

    fn snapshot(&self) -> Result<Vec<u8>, WireError> {
        encode_snapshot(self)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), WireError> {
        let body = snapshot
            .get(wire::FRAME_HEADER_BYTES..)
            .ok_or(WireError::Empty)?;
        *self = wire::decode_frame_body(body)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_is_bounded_and_overwrites_count_once() {
        let mut kv = KvStore::default();
        let value = vec![7u8; 64 * 1024];
        let mut stored = 0;
        for i in 0..32 {
            match kv.execute(KvCommand::Put {
                key: format!("k{i}"),
                value: value.clone(),
            }) {
                KvResult::Done => stored += 1,
                other => {
                    assert_eq!(other, KvResult::Invalid);
                    break;
                }
            }
        }
        assert_eq!(stored, KV_BYTES_MAX / (64 * 1024 + 3), "{}", kv.bytes());
        assert!(kv.bytes() <= KV_BYTES_MAX);
        // Overwriting an existing key with a value of the same size still fits.
        let put = KvCommand::Put {
            key: "k1".into(),
            value: value.clone(),
        };
        assert_eq!(kv.execute(put), KvResult::Done);
        // A cas that would not fit changes nothing.
        let before = kv.clone();
        let cas = KvCommand::Cas {
            key: "new".into(),
            expected: None,
            new: value,
        };
        assert_eq!(kv.execute(cas), KvResult::Invalid);
        assert_eq!(kv, before);
    }

    #[test]
    fn a_snapshot_over_the_cap_is_an_error_never_an_empty_snapshot() {
        let big = vec![0u8; super::super::SNAPSHOT_BYTES_MAX + 1];
        assert!(matches!(
            encode_snapshot(&big),
            Err(WireError::Oversized { .. })
        ));
        assert!(encode_snapshot(&vec![0u8; 1024]).is_ok_and(|bytes| !bytes.is_empty()));
    }

    fn put(key: &str, value: &[u8]) -> Vec<u8> {
        KvCommand::Put {
            key: key.into(),
            value: value.to_vec(),
        }
        .encode()
        .expect("encodes")
    }

    #[test]
    fn put_get_cas_and_invalid() {
        let mut kv = KvStore::default();
        assert_eq!(
            KvResult::decode(&kv.apply(1, &put("a", b"1"))),
            Ok(KvResult::Done)
        );
        let get = KvCommand::Get { key: "a".into() }
            .encode()
            .expect("encodes");
        assert_eq!(
            KvResult::decode(&kv.apply(2, &get)),
            Ok(KvResult::Value(Some(b"1".to_vec())))
        );
        let cas = KvCommand::Cas {
            key: "a".into(),
            expected: Some(b"0".to_vec()),
            new: b"2".to_vec(),
        }
        .encode()
        .expect("encodes");
        assert_eq!(
            KvResult::decode(&kv.apply(3, &cas)),
            Ok(KvResult::Cas {
                swapped: false,
                previous: Some(b"1".to_vec())
            })
        );
        assert_eq!(
            KvResult::decode(&kv.apply(4, b"garbage")),
            Ok(KvResult::Invalid)
        );
        assert_eq!(kv.get("a"), Some(&b"1"[..]));
        assert_eq!(kv.applied_index(), 4);
    }

    #[test]
    fn same_commands_same_state_and_snapshot_round_trips() {
        let commands: Vec<Vec<u8>> = (0..20).map(|i| put(&format!("k{}", i % 7), &[i])).collect();
        let mut a = KvStore::default();
        let mut b = KvStore::default();
        for (i, c) in commands.iter().enumerate() {
            assert_eq!(a.apply(i as u64 + 1, c), b.apply(i as u64 + 1, c));
        }
        assert_eq!(a, b);
        let mut c = KvStore::default();
        c.restore(&a.snapshot().expect("encodes"))
            .expect("restores");
        assert_eq!(c, a);
        assert!(c.restore(b"\0\0\0\x01junk").is_err());
        assert_eq!(c, a, "a failed restore changes nothing");
    }
}
