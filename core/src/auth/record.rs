//! The record layer of a secure TCP connection, without the socket: framing, the
//! per-direction cipher, and a sans-IO reader that turns received bytes into authenticated
//! plaintext.
//!
//! Owns: the record format `[u32 big-endian length][ciphertext][16-byte Poly1305 tag]` with
//! ChaCha20-Poly1305 under one key per direction and a per-direction record counter as the
//! nonce (so a reordered, dropped, repeated or changed record fails its tag; the length header
//! is authenticated as associated data); [`DirectionKey`] (seal and open one record);
//! [`record_len`] (the header's bounds check); and [`RecordReader`], the receive buffer the
//! runtime's `SecureStream` reads the socket into (it asks for [`RecordReader::spare`], reports
//! [`RecordReader::filled`] or [`RecordReader::end`], and takes [`RecordReader::plaintext`]).
//! Must never: expose a plaintext byte that did not authenticate, go on after a failed record
//! (a reader stays failed), accept a length beyond its cap before reading the body, grow its
//! buffer after construction, reuse a nonce, or panic on any byte string.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};

use super::KEY_BYTES;

/// Largest plaintext in one record, in bytes.
pub const RECORD_PLAINTEXT_MAX: usize = 64 * 1024;
/// Bytes of the Poly1305 tag at the end of every record.
pub const TAG_BYTES: usize = 16;
/// Bytes of the record length header.
pub const RECORD_HEADER_BYTES: usize = 4;
/// Largest record body (ciphertext and tag) a reader accepts.
pub const RECORD_BYTES_MAX: usize = RECORD_PLAINTEXT_MAX + TAG_BYTES;

/// Why a record could not be sealed or opened. Every variant but [`RecordError::TooLarge`]
/// ends the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// A header announcing less than a tag or more than the reader's cap (refused before the
    /// body is read).
    #[error("record length out of bounds")]
    LengthOutOfBounds,
    /// A record body shorter than its tag.
    #[error("record shorter than its tag")]
    ShorterThanTag,
    /// The tag did not verify: changed, replayed, reordered, or sealed with another key.
    #[error("record failed authentication (changed, replayed or reordered)")]
    Forged,
    /// The connection ended inside a record.
    #[error("the connection ended inside a record")]
    Truncated,
    /// 2^64 records in one direction: a nonce would repeat, so nothing more is sealed or
    /// opened.
    #[error("record counter exhausted")]
    CounterExhausted,
    /// A plaintext too large for one record's length header (nothing was sealed).
    #[error("record too large")]
    TooLarge,
}

impl RecordError {
    /// Whether the peer's bytes caused it (malformed or unauthentic data), as opposed to the
    /// connection ending early or this side's own limits.
    pub fn is_invalid_data(self) -> bool {
        matches!(
            self,
            RecordError::LengthOutOfBounds | RecordError::ShorterThanTag | RecordError::Forged
        )
    }
}

/// One direction's cipher and record counter.
pub struct DirectionKey {
    cipher: ChaCha20Poly1305,
    counter: u64,
}

impl std::fmt::Debug for DirectionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DirectionKey(<redacted>, record {})", self.counter)
    }
}

impl DirectionKey {
    /// A direction keyed by `key`, starting at record 0.
    pub fn new(key: &[u8; KEY_BYTES]) -> Self {
        DirectionKey {
            cipher: ChaCha20Poly1305::new(Key::from_slice(key)),
            counter: 0,
        }
    }

    /// Records sealed or opened so far (the next record's number).
    pub fn records(&self) -> u64 {
        self.counter
    }

    fn next_nonce(&mut self) -> Result<Nonce, RecordError> {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&self.counter.to_be_bytes());
        // A counter never wraps: 2^64 records is beyond any connection's life, but a reused
        // nonce would be fatal, so the direction fails instead.
        self.counter = self
            .counter
            .checked_add(1)
            .ok_or(RecordError::CounterExhausted)?;
        Ok(Nonce::from(nonce))
    }

    /// Appends one sealed record holding `plaintext` (at most [`RECORD_PLAINTEXT_MAX`] bytes
    /// for a reader with the default cap) to `out`.
    pub fn seal_into(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        debug_assert!(plaintext.len() <= RECORD_PLAINTEXT_MAX);
        let body_len = plaintext.len() + TAG_BYTES;
        let header = u32::try_from(body_len)
            .map_err(|_| RecordError::TooLarge)?
            .to_be_bytes();
        let nonce = self.next_nonce()?;
        let start = out.len();
        out.extend_from_slice(&header);
        out.extend_from_slice(plaintext);
        let body = &mut out[start + RECORD_HEADER_BYTES..];
        // Encryption fails only beyond 256 GiB; the length header already refused that.
        let tag = self
            .cipher
            .encrypt_in_place_detached(&nonce, &header, body)
            .map_err(|_| RecordError::TooLarge)?;
        out.extend_from_slice(&tag);
        debug_assert_eq!(out.len(), start + RECORD_HEADER_BYTES + body_len);
        Ok(())
    }

    /// Opens one record body in place; returns the plaintext length (at the start of `body`).
    /// On `Err` the body's bytes are unspecified and the direction's counter has moved on, so
    /// the connection must end.
    pub fn open_in_place(
        &mut self,
        header: [u8; RECORD_HEADER_BYTES],
        body: &mut [u8],
    ) -> Result<usize, RecordError> {
        let plain_len = body
            .len()
            .checked_sub(TAG_BYTES)
            .ok_or(RecordError::ShorterThanTag)?;
        let nonce = self.next_nonce()?;
        let (plain, tag) = body.split_at_mut(plain_len);
        let tag = Tag::from_slice(tag);
        self.cipher
            .decrypt_in_place_detached(&nonce, &header, plain, tag)
            .map_err(|_| RecordError::Forged)?;
        Ok(plain_len)
    }
}

/// The length a record header announces, checked against [`RECORD_BYTES_MAX`].
pub fn record_len(header: [u8; RECORD_HEADER_BYTES]) -> Result<usize, RecordError> {
    record_len_within(header, RECORD_BYTES_MAX)
}

fn record_len_within(
    header: [u8; RECORD_HEADER_BYTES],
    record_bytes_max: usize,
) -> Result<usize, RecordError> {
    let len = u32::from_be_bytes(header) as usize;
    if !(TAG_BYTES..=record_bytes_max).contains(&len) {
        return Err(RecordError::LengthOutOfBounds);
    }
    Ok(len)
}

/// The receiving half of a sealed connection, without the socket.
///
/// One fixed buffer of twice a whole record: `[read_start, read_end)` holds received bytes not
/// yet opened, `[plain_start, plain_end)` the opened plaintext of the last record, not yet
/// taken. Records are opened in place, so plaintext is never copied before the reader takes it.
pub struct RecordReader {
    recv: DirectionKey,
    /// Largest record body (ciphertext and tag) accepted.
    record_bytes_max: usize,
    buf: Vec<u8>,
    read_start: usize,
    read_end: usize,
    plain_start: usize,
    plain_end: usize,
    /// Set once a record failed or the stream ended mid-record: the reader stays failed.
    failed: Option<RecordError>,
}

impl std::fmt::Debug for RecordReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordReader")
            .field("recv", &self.recv)
            .field("record_bytes_max", &self.record_bytes_max)
            .field("buffered", &(self.read_end - self.read_start))
            .field("plaintext", &(self.plain_end - self.plain_start))
            .field("failed", &self.failed)
            .finish()
    }
}

impl RecordReader {
    /// A reader of records up to [`RECORD_PLAINTEXT_MAX`] bytes of plaintext.
    pub fn new(recv: DirectionKey) -> Self {
        Self::with_plaintext_max(recv, RECORD_PLAINTEXT_MAX)
    }

    /// A reader of records up to `plaintext_max` bytes of plaintext (the fuzz target uses
    /// small caps, so records straddle the buffer's end often). `plaintext_max` is at most
    /// [`RECORD_PLAINTEXT_MAX`].
    pub fn with_plaintext_max(recv: DirectionKey, plaintext_max: usize) -> Self {
        let record_bytes_max = plaintext_max.min(RECORD_PLAINTEXT_MAX) + TAG_BYTES;
        RecordReader {
            recv,
            record_bytes_max,
            buf: vec![0u8; 2 * (RECORD_HEADER_BYTES + record_bytes_max)],
            read_start: 0,
            read_end: 0,
            plain_start: 0,
            plain_end: 0,
            failed: None,
        }
    }

    /// Authenticated plaintext waiting to be taken (empty when none).
    pub fn plaintext(&self) -> &[u8] {
        &self.buf[self.plain_start..self.plain_end]
    }

    /// Marks the first `n` bytes of [`Self::plaintext`] as taken.
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.plain_end - self.plain_start);
        self.plain_start = (self.plain_start + n).min(self.plain_end);
    }

    /// Why the reader failed, if it did (it stays failed).
    pub fn failed(&self) -> Option<RecordError> {
        self.failed
    }

    /// Bytes received and not yet opened.
    pub fn buffered(&self) -> usize {
        self.read_end - self.read_start
    }

    /// Once the plaintext is taken, opens the next whole received record. `Ok(true)`: a record
    /// opened (its plaintext, possibly empty, is in [`Self::plaintext`]); `Ok(false)`: more
    /// bytes are needed (or plaintext is still waiting); `Err`: the stream failed, now and for
    /// every later call.
    pub fn open_next(&mut self) -> Result<bool, RecordError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        if self.plain_start < self.plain_end {
            return Ok(false);
        }
        let available = self.read_end - self.read_start;
        let Some(header) = self
            .buf
            .get(self.read_start..self.read_start + RECORD_HEADER_BYTES)
            .filter(|_| available >= RECORD_HEADER_BYTES)
            .and_then(|h| <[u8; RECORD_HEADER_BYTES]>::try_from(h).ok())
        else {
            return Ok(false);
        };
        let len = record_len_within(header, self.record_bytes_max).map_err(|e| self.fail(e))?;
        if available < RECORD_HEADER_BYTES + len {
            return Ok(false);
        }
        let body_start = self.read_start + RECORD_HEADER_BYTES;
        let body = &mut self.buf[body_start..body_start + len];
        let plain_len = self
            .recv
            .open_in_place(header, body)
            .map_err(|e| self.fail(e))?;
        self.plain_start = body_start;
        self.plain_end = body_start + plain_len;
        self.read_start = body_start + len;
        debug_assert!(self.read_start <= self.read_end);
        Ok(true)
    }

    fn fail(&mut self, error: RecordError) -> RecordError {
        self.failed = Some(error);
        self.plain_start = self.plain_end;
        error
    }

    /// Space the socket may fill next: never empty while the reader waits for bytes (no
    /// plaintext waiting, not failed), and always room for the rest of a whole record.
    pub fn spare(&mut self) -> &mut [u8] {
        let whole = RECORD_HEADER_BYTES + self.record_bytes_max;
        if self.plain_start == self.plain_end && self.buf.len() - self.read_end < whole {
            self.compact();
        }
        debug_assert!(
            self.read_end < self.buf.len() || self.plain_start < self.plain_end,
            "no room while waiting for a record"
        );
        &mut self.buf[self.read_end..]
    }

    /// Moves the unopened bytes to the front of the buffer (only when no plaintext waits).
    fn compact(&mut self) {
        debug_assert_eq!(self.plain_start, self.plain_end);
        if self.read_start == 0 {
            return;
        }
        self.buf.copy_within(self.read_start..self.read_end, 0);
        self.read_end -= self.read_start;
        self.read_start = 0;
        self.plain_start = 0;
        self.plain_end = 0;
    }

    /// The socket put `n` bytes at the start of the last [`Self::spare`].
    pub fn filled(&mut self, n: usize) {
        debug_assert!(self.read_end + n <= self.buf.len());
        self.read_end = (self.read_end + n).min(self.buf.len());
    }

    /// The socket reached its end: `Ok` between records (a clean end), `Err` inside one (and
    /// the reader fails).
    pub fn end(&mut self) -> Result<(), RecordError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        if self.read_start == self.read_end {
            return Ok(());
        }
        Err(self.fail(RecordError::Truncated))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (DirectionKey, RecordReader) {
        (
            DirectionKey::new(&[1; KEY_BYTES]),
            RecordReader::new(DirectionKey::new(&[1; KEY_BYTES])),
        )
    }

    /// Feeds `bytes` in chunks of `chunk` and collects plaintext until the bytes run out.
    fn feed(reader: &mut RecordReader, bytes: &[u8], chunk: usize) -> Result<Vec<u8>, RecordError> {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            out.extend_from_slice(reader.plaintext());
            let n = reader.plaintext().len();
            reader.consume(n);
            if reader.open_next()? {
                continue;
            }
            if at == bytes.len() {
                reader.end()?;
                return Ok(out);
            }
            let spare = reader.spare();
            let n = chunk.min(spare.len()).min(bytes.len() - at);
            spare[..n].copy_from_slice(&bytes[at..at + n]);
            reader.filled(n);
            at += n;
        }
    }

    #[test]
    fn records_round_trip_in_any_chunking() {
        let mut plain = Vec::new();
        let (mut send, _) = pair();
        let mut wire = Vec::new();
        for size in [
            0,
            1,
            100,
            RECORD_PLAINTEXT_MAX,
            17,
            RECORD_PLAINTEXT_MAX - 1,
        ] {
            let part: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            assert_eq!(send.seal_into(&part, &mut wire), Ok(()));
            plain.extend_from_slice(&part);
        }
        for chunk in [1, 7, 4096, usize::MAX] {
            let (_, mut reader) = pair();
            assert_eq!(
                feed(&mut reader, &wire, chunk).as_ref(),
                Ok(&plain),
                "{chunk}"
            );
        }
    }

    #[test]
    fn a_flipped_bit_fails_the_stream_for_good() {
        let (mut send, mut reader) = pair();
        let mut wire = Vec::new();
        assert!(send.seal_into(b"hello", &mut wire).is_ok());
        wire[RECORD_HEADER_BYTES + 2] ^= 0x10;
        assert_eq!(feed(&mut reader, &wire, 3), Err(RecordError::Forged));
        assert_eq!(reader.open_next(), Err(RecordError::Forged));
        assert!(reader.plaintext().is_empty());
        assert!(RecordError::Forged.is_invalid_data());
    }

    #[test]
    fn repeated_reordered_and_truncated_records_fail() {
        let (mut send, _) = pair();
        let (mut one, mut two) = (Vec::new(), Vec::new());
        assert!(send.seal_into(b"one", &mut one).is_ok());
        assert!(send.seal_into(b"two", &mut two).is_ok());
        let (_, mut reader) = pair();
        let repeated = [one.clone(), one.clone()].concat();
        assert_eq!(feed(&mut reader, &repeated, 100), Err(RecordError::Forged));
        let (_, mut reader) = pair();
        assert_eq!(feed(&mut reader, &two, 100), Err(RecordError::Forged));
        let (_, mut reader) = pair();
        let cut = &[one.clone(), two.clone()].concat()[..one.len() + 5];
        assert_eq!(feed(&mut reader, cut, 100), Err(RecordError::Truncated));
        assert!(!RecordError::Truncated.is_invalid_data());
    }

    #[test]
    fn lengths_out_of_bounds_are_refused_from_the_header_alone() {
        for len in [0, TAG_BYTES - 1, RECORD_BYTES_MAX + 1, u32::MAX as usize] {
            let header = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
            assert_eq!(record_len(header), Err(RecordError::LengthOutOfBounds));
            let (_, mut reader) = pair();
            assert_eq!(
                feed(&mut reader, &header, 4),
                Err(RecordError::LengthOutOfBounds)
            );
        }
        assert_eq!(
            record_len((RECORD_BYTES_MAX as u32).to_be_bytes()),
            Ok(RECORD_BYTES_MAX)
        );
    }

    #[test]
    fn a_small_cap_refuses_larger_records_and_keeps_its_buffer() {
        let (mut send, _) = pair();
        let mut reader = RecordReader::with_plaintext_max(DirectionKey::new(&[1; KEY_BYTES]), 8);
        let capacity = reader.spare().len();
        let mut wire = Vec::new();
        for _ in 0..50 {
            assert!(send.seal_into(b"12345678", &mut wire).is_ok());
        }
        assert_eq!(feed(&mut reader, &wire, 5).map(|p| p.len()), Ok(400));
        let spare = reader.spare().len();
        assert!(spare >= RECORD_HEADER_BYTES + 8 + TAG_BYTES && spare <= capacity);
        let mut big = Vec::new();
        assert!(send.seal_into(b"123456789", &mut big).is_ok());
        assert_eq!(
            feed(&mut reader, &big, 5),
            Err(RecordError::LengthOutOfBounds)
        );
    }

    #[test]
    fn an_exhausted_counter_seals_and_opens_nothing() {
        let mut send = DirectionKey::new(&[1; KEY_BYTES]);
        send.counter = u64::MAX;
        let mut out = Vec::new();
        assert_eq!(
            send.seal_into(b"x", &mut out),
            Err(RecordError::CounterExhausted)
        );
        assert_eq!(send.records(), u64::MAX);
        let mut body = [0u8; TAG_BYTES];
        assert_eq!(
            send.open_in_place([0, 0, 0, 16], &mut body),
            Err(RecordError::CounterExhausted)
        );
        assert_eq!(
            send.open_in_place([0; 4], &mut [0u8; 3]),
            Err(RecordError::ShorterThanTag)
        );
    }

    #[test]
    fn debug_never_shows_key_bytes() {
        let key = DirectionKey::new(&[0x5a; KEY_BYTES]);
        let reader = RecordReader::new(DirectionKey::new(&[0x5a; KEY_BYTES]));
        let shown = format!("{key:?}{reader:?}");
        assert!(!shown.contains("5a"), "{shown}");
    }
}
