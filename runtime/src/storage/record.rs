//! The record codec shared by log segments and the small state files.
//!
//! Owns: the on-disk record layout `[u32 LE body length][u32 LE crc32 of the body][body]`, where
//! the body is the version byte plus bincode body of `idunno_core::wire` (a frame without its
//! length prefix), and the checks a record passes before its body is trusted.
//! Inputs: values to encode, or a byte slice plus an offset to decode at.
//! Must never: allocate from an unchecked length field, panic on any byte string, call bincode
//! directly (the wire module owns the encoding), or perform I/O.

use idunno_core::wire::{self, FRAME_HEADER_BYTES};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bytes in front of every record body: the length and the checksum.
pub const RECORD_HEADER_BYTES: usize = 8;

/// Why a record could not be read at some offset. Reading changes no state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordFault {
    /// Fewer than [`RECORD_HEADER_BYTES`] bytes remain.
    PartialHeader {
        /// Bytes that remain.
        remaining: usize,
    },
    /// The length field is zero (no valid record has an empty body).
    EmptyBody,
    /// The length field is above the cap; nothing was allocated.
    TooLarge {
        /// The length field.
        len: u64,
        /// The cap.
        max: usize,
    },
    /// The body runs past the end of the bytes.
    PartialBody {
        /// The length field.
        len: usize,
        /// Bytes that remain after the header.
        remaining: usize,
    },
    /// The body's checksum does not match.
    Checksum {
        /// Checksum stored in the header.
        stored: u32,
        /// Checksum of the bytes found.
        actual: u32,
    },
    /// The checksum matches but the body does not decode.
    Undecodable(String),
}

impl RecordFault {
    /// Whether this fault is what an interrupted append leaves behind (a record cut short),
    /// as opposed to bytes that are complete but wrong.
    pub fn is_partial(&self) -> bool {
        matches!(
            self,
            RecordFault::PartialHeader { .. } | RecordFault::PartialBody { .. }
        )
    }
}

impl std::fmt::Display for RecordFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordFault::PartialHeader { remaining } => {
                write!(f, "partial record header ({remaining} bytes)")
            }
            RecordFault::EmptyBody => write!(f, "record length is zero"),
            RecordFault::TooLarge { len, max } => {
                write!(f, "record length {len} exceeds the {max}-byte cap")
            }
            RecordFault::PartialBody { len, remaining } => write!(
                f,
                "record body of {len} bytes cut short ({remaining} bytes present)"
            ),
            RecordFault::Checksum { stored, actual } => write!(
                f,
                "checksum mismatch (stored {stored:#010x}, computed {actual:#010x})"
            ),
            RecordFault::Undecodable(why) => write!(f, "record does not decode: {why}"),
        }
    }
}

/// Encodes `value` as one record. Fails if the body would exceed `body_bytes_max`.
pub fn encode<T: Serialize>(value: &T, body_bytes_max: usize) -> Result<Vec<u8>, String> {
    let frame = wire::encode_frame(value).map_err(|e| e.to_string())?;
    let body = &frame[FRAME_HEADER_BYTES..];
    if body.is_empty() || body.len() > body_bytes_max {
        return Err(format!(
            "record body of {} bytes exceeds the {body_bytes_max}-byte cap",
            body.len()
        ));
    }
    let len = u32::try_from(body.len()).map_err(|_| "record body over 4 GiB".to_string())?;
    let mut out = Vec::with_capacity(RECORD_HEADER_BYTES + body.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(body);
    debug_assert_eq!(out.len(), RECORD_HEADER_BYTES + body.len());
    Ok(out)
}

/// Checks the record that starts at `bytes[offset..]` and returns its body and total length
/// (header included). The length field is checked against `body_bytes_max` before anything
/// else looks at the body.
pub fn check(
    bytes: &[u8],
    offset: usize,
    body_bytes_max: usize,
) -> Result<(&[u8], usize), RecordFault> {
    let rest = bytes.get(offset..).unwrap_or(&[]);
    let Some((header, after)) = rest.split_first_chunk::<RECORD_HEADER_BYTES>() else {
        return Err(RecordFault::PartialHeader {
            remaining: rest.len(),
        });
    };
    let (len_bytes, crc_bytes) = header.split_at(4);
    let len = u32::from_le_bytes(len_bytes.try_into().unwrap_or([0; 4]));
    let stored = u32::from_le_bytes(crc_bytes.try_into().unwrap_or([0; 4]));
    if len == 0 {
        return Err(RecordFault::EmptyBody);
    }
    let len = len as usize;
    if len > body_bytes_max {
        return Err(RecordFault::TooLarge {
            len: len as u64,
            max: body_bytes_max,
        });
    }
    let Some(body) = after.get(..len) else {
        return Err(RecordFault::PartialBody {
            len,
            remaining: after.len(),
        });
    };
    let actual = crc32fast::hash(body);
    if actual != stored {
        return Err(RecordFault::Checksum { stored, actual });
    }
    Ok((body, RECORD_HEADER_BYTES + len))
}

/// Decodes a body that passed [`check`].
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, RecordFault> {
    wire::decode_frame_body(body).map_err(|e| RecordFault::Undecodable(e.to_string()))
}

/// Checks and decodes the record at `bytes[offset..]`, returning the value and the record's
/// total length.
pub fn read<T: DeserializeOwned>(
    bytes: &[u8],
    offset: usize,
    body_bytes_max: usize,
) -> Result<(T, usize), RecordFault> {
    let (body, total) = check(bytes, offset, body_bytes_max)?;
    Ok((decode_body(body)?, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use idunno_core::consensus::HardState;

    #[test]
    fn round_trip_and_faults() {
        let value = HardState {
            term: 7,
            vote: None,
        };
        let bytes = encode(&value, 1024).expect("encodes");
        let (back, used) = read::<HardState>(&bytes, 0, 1024).expect("reads");
        assert_eq!((back, used), (value, bytes.len()));
        for cut in 0..bytes.len() {
            let fault = read::<HardState>(&bytes[..cut], 0, 1024).expect_err("cut");
            assert!(fault.is_partial(), "cut at {cut}: {fault}");
        }
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        assert!(matches!(
            read::<HardState>(&flipped, 0, 1024),
            Err(RecordFault::Checksum { .. })
        ));
        assert!(encode(&value, 1).is_err());
    }

    #[test]
    fn huge_length_field_is_refused_before_reading() {
        let mut bytes = u32::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 4]);
        assert_eq!(
            check(&bytes, 0, 1 << 20),
            Err(RecordFault::TooLarge {
                len: u64::from(u32::MAX),
                max: 1 << 20
            })
        );
    }
}
