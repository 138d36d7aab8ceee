//! The check functions of the authentication fuzz targets: sealed datagrams, the TCP handshake
//! and the TCP record stream, all in `idunno_core::auth` (the code the runtime's sockets run).
//!
//! Owns: [`auth_datagram`], [`auth_handshake`], [`auth_records`] (re-exported by
//! [`crate::fuzz_checks`], which lists them in its target table) and their seed corpora
//! ([`seeds`]). Each input starts with a mode byte: raw bytes where a peer's bytes arrive, or a
//! structured honest exchange (decoded with `arbitrary`) whose bytes the input then changes.
//! The central invariant is authenticity: whatever is accepted is byte for byte what the
//! honest sealer (with the fixed test key) produces for the same fields, so a fuzzer that
//! makes anything else pass has found a forgery.
//!
//! Must never: read a clock, the environment or the file system, or use unseeded randomness.

use arbitrary::{Arbitrary, Unstructured};
use idunno_core::auth::KEY_BYTES;
use idunno_core::auth::datagram::{
    CLOCK_SKEW_MAX_SECS, DATAGRAM_VERSION, DatagramKey, OVERHEAD_BYTES, REPLAY_WINDOW, Rejection,
    ReplayGuard,
};
use idunno_core::auth::handshake::{
    self, Answer, CLIENT_HELLO_REST_BYTES, HelloError, MAGIC, NODE_HELLO_REST_BYTES, NONCE_BYTES,
    PROOF_BYTES, Role, VERSION,
};
use idunno_core::auth::record::{
    DirectionKey, RECORD_HEADER_BYTES, RECORD_PLAINTEXT_MAX, RecordError, RecordReader, TAG_BYTES,
};
use idunno_core::wire::DATAGRAM_BYTES_MAX;

/// The cluster key every target runs under.
const KEY: [u8; KEY_BYTES] = [0x42; KEY_BYTES];
/// Another cluster's key.
const OTHER_KEY: [u8; KEY_BYTES] = [0x17; KEY_BYTES];
/// The receiver's wall clock, in unix seconds.
const NOW: u64 = 1_800_000_000;
/// The nonce a node answers with in the raw handshake mode.
const NODE_NONCE: [u8; NONCE_BYTES] = [0xA5; NONCE_BYTES];
/// The nonce a client opens with in the raw handshake mode.
const CLIENT_NONCE: [u8; NONCE_BYTES] = [0x5A; NONCE_BYTES];
/// Most datagrams one replay-window input checks.
const REPLAY_STEPS_MAX: usize = 512;
/// Most records one structured record input writes.
const RECORDS_MAX: usize = 32;
/// Largest plaintext cap of a structured record input (small, so records straddle the
/// reader's buffer end often).
const RECORD_CAP_MAX: usize = 512;

fn array<const N: usize>(bytes: &[u8]) -> Option<[u8; N]> {
    bytes.get(..N)?.try_into().ok()
}

// ----- datagrams -----

/// Datagram target: mode 0, raw bytes opened as a datagram; mode 1, an honest datagram with
/// its bytes changed, cut or extended; mode 2, a sequence of (session, counter) through the
/// replay window against a model.
pub fn auth_datagram(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => datagram_raw(rest),
        1 => {
            let _ = datagram_tampered(&mut Unstructured::new(rest));
        }
        _ => {
            let _ = replay_window(&mut Unstructured::new(rest));
        }
    }
}

/// Raw bytes: refused unless they are exactly what the key seals for their own header.
fn datagram_raw(bytes: &[u8]) {
    let key = DatagramKey::new(&KEY);
    let opened = key.open(bytes, NOW);
    if bytes.len() < OVERHEAD_BYTES || bytes[0] != DATAGRAM_VERSION {
        assert_eq!(opened, Err(Rejection::Malformed));
        return;
    }
    let field = |at: usize| array::<8>(&bytes[at..]).map(u64::from_be_bytes);
    let (Some(session), Some(counter), Some(stamp)) = (field(1), field(9), field(17)) else {
        panic!("a datagram of {} bytes has a whole header", bytes.len());
    };
    match opened {
        Ok(opened) => {
            assert_eq!((opened.session, opened.counter), (session, counter));
            assert!(stamp.abs_diff(NOW) <= CLOCK_SKEW_MAX_SECS);
            assert_eq!(opened.plaintext.len(), bytes.len() - OVERHEAD_BYTES);
            let sealed = key.seal(session, counter, stamp, &opened.plaintext);
            assert_eq!(sealed, bytes, "an accepted datagram is the honest sealing");
            let other = DatagramKey::new(&OTHER_KEY).open(bytes, NOW);
            assert_eq!(other, Err(Rejection::Forged), "another key refuses it");
        }
        Err(Rejection::Stale) => {
            assert!(stamp.abs_diff(NOW) > CLOCK_SKEW_MAX_SECS);
            // Stale is said only of authentic datagrams.
            let opened = key.open(bytes, stamp);
            let Ok(opened) = opened else {
                panic!("stale but not authentic at its own time: {opened:?}")
            };
            assert_eq!(key.seal(session, counter, stamp, &opened.plaintext), bytes);
        }
        Err(Rejection::Forged) => {}
        Err(other) => panic!("open never says {other:?} of a whole sealed-looking datagram"),
    }
}

/// An honest datagram, changed on the way: accepted exactly when unchanged (and fresh).
fn datagram_tampered(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let key = DatagramKey::new(&KEY);
    let session: u64 = u.arbitrary()?;
    let counter: u64 = u.arbitrary()?;
    let skew = i64::from(u.int_in_range(-300i16..=300)?);
    let stamp = NOW.saturating_add_signed(skew);
    let len = u.int_in_range(0..=DATAGRAM_BYTES_MAX)?;
    let plaintext = u.bytes(len.min(u.len()))?.to_vec();
    let sealed = key.seal(session, counter, stamp, &plaintext);
    assert_eq!(sealed.len(), plaintext.len() + OVERHEAD_BYTES);
    let mut bytes = sealed.clone();
    for _ in 0..u.int_in_range(0..=3)? {
        let at = u.choose_index(bytes.len())?;
        bytes[at] ^= u.arbitrary::<u8>()?;
    }
    if u.ratio(1, 4)? {
        bytes.truncate(u.int_in_range(0..=bytes.len())?);
    }
    if u.ratio(1, 8)? {
        let extra: Vec<u8> = u.arbitrary()?;
        bytes.extend_from_slice(&extra);
    }
    let opened = key.open(&bytes, NOW);
    if bytes == sealed {
        let fresh = stamp.abs_diff(NOW) <= CLOCK_SKEW_MAX_SECS;
        match opened {
            Ok(opened) if fresh => {
                assert_eq!(opened.plaintext, plaintext);
                assert_eq!((opened.session, opened.counter), (session, counter));
                let mut guard = ReplayGuard::default();
                assert_eq!(guard.accept(session, counter), Ok(()));
                assert_eq!(guard.accept(session, counter), Err(Rejection::Replayed));
            }
            Err(Rejection::Stale) if !fresh => {}
            other => panic!("an unchanged datagram (fresh: {fresh}) gave {other:?}"),
        }
    } else {
        assert!(
            matches!(opened, Err(Rejection::Malformed | Rejection::Forged)),
            "a changed datagram gave {opened:?}"
        );
    }
    Ok(())
}

/// One session's accepted counters in the model of the replay window.
#[derive(Default)]
struct SessionModel {
    highest: u64,
    accepted: std::collections::BTreeSet<u64>,
}

/// (session, counter) pairs into a [`ReplayGuard`] and a model: the same decisions, and no
/// pair is ever accepted twice (few sessions, so none is forgotten).
fn replay_window(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let mut guard = ReplayGuard::default();
    let mut model: std::collections::BTreeMap<u64, SessionModel> = Default::default();
    for _ in 0..REPLAY_STEPS_MAX {
        if u.is_empty() {
            break;
        }
        let session = u64::from(u.int_in_range(0..=3u8)?);
        let highest = model.get(&session).map_or(0, |m| m.highest);
        let delta = u64::from(u.int_in_range(0..=2 * REPLAY_WINDOW as u16)?);
        let counter = match u.int_in_range(0..=4u8)? {
            0 => u.arbitrary()?,
            1 => highest.saturating_add(delta),
            2 => highest.saturating_sub(delta),
            3 => u64::MAX - delta,
            _ => {
                let seen = model.get(&session).map(|m| &m.accepted);
                match seen.filter(|s| !s.is_empty()) {
                    Some(s) => *s.iter().nth(u.choose_index(s.len())?).unwrap_or(&0),
                    None => delta,
                }
            }
        };
        let expected = match model.get(&session) {
            None => true,
            Some(m) => {
                !m.accepted.contains(&counter)
                    && (counter > m.highest || m.highest - counter < REPLAY_WINDOW)
            }
        };
        let got = guard.accept(session, counter);
        assert_eq!(
            got.is_ok(),
            expected,
            "session {session} counter {counter}: {got:?}"
        );
        if let Err(rejection) = got {
            assert_eq!(rejection, Rejection::Replayed);
        } else {
            let m = model.entry(session).or_default();
            m.highest = m.highest.max(counter);
            m.accepted.insert(counter);
        }
        assert!(guard.sessions() <= 4);
    }
    Ok(())
}

// ----- handshake -----

/// Handshake target: mode 0, raw bytes as a connecting side's hello and proof to a node;
/// mode 1, raw bytes as a node's hello and proof to a connecting side; mode 2, an honest
/// exchange whose three messages the input changes, with the right key or another.
pub fn auth_handshake(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => node_side_raw(rest),
        1 => client_side_raw(rest),
        _ => {
            let _ = handshake_tampered(&mut Unstructured::new(rest));
        }
    }
}

fn secret_of(role: Role, key: &[u8; KEY_BYTES]) -> [u8; KEY_BYTES] {
    match role {
        Role::Peer => handshake::peer_secret(key),
        Role::Client => handshake::client_token(key),
    }
}

fn node_answer(
    rest: &[u8; CLIENT_HELLO_REST_BYTES],
    node_nonce: &[u8; NONCE_BYTES],
) -> Result<Answer, HelloError> {
    handshake::node_answer(
        &handshake::peer_secret(&KEY),
        &handshake::client_token(&KEY),
        rest,
        node_nonce,
    )
}

/// Checks a proof the way both sides do (header first, then the tag).
fn proof_accepted(recv: &mut DirectionKey, proof: &[u8]) -> bool {
    let (Some(header), Some(mut tag)) = (
        array::<RECORD_HEADER_BYTES>(proof),
        proof
            .get(RECORD_HEADER_BYTES..)
            .and_then(array::<TAG_BYTES>),
    ) else {
        return false;
    };
    if !handshake::proof_header_ok(header) {
        assert!(handshake::check_proof(recv, header, &mut tag).is_err());
        return false;
    }
    handshake::check_proof(recv, header, &mut tag).is_ok()
}

/// A node (the fixed key, the fixed nonce) reads a hello and a proof from raw bytes.
fn node_side_raw(bytes: &[u8]) {
    let Some(magic) = array::<4>(bytes) else {
        return;
    };
    if magic != MAGIC {
        return; // refused as unauthenticated, with a plain answer
    }
    let Some(rest) = array::<CLIENT_HELLO_REST_BYTES>(&bytes[4..]) else {
        return;
    };
    let answer = node_answer(&rest, &NODE_NONCE);
    let mut answer = match answer {
        Err(HelloError::Version(v)) => {
            assert!(v == rest[0] && v != VERSION);
            return;
        }
        Err(HelloError::Role(r)) => {
            assert!(rest[0] == VERSION && r == rest[1] && Role::from_byte(r).is_none());
            return;
        }
        Ok(answer) => answer,
    };
    assert_eq!(answer.role.byte(), rest[1]);
    let reply = &answer.reply;
    assert_eq!(reply.len(), 4 + NODE_HELLO_REST_BYTES + PROOF_BYTES);
    assert_eq!(
        reply[..4 + NODE_HELLO_REST_BYTES],
        handshake::node_hello(&NODE_NONCE)[..]
    );
    // The honest connecting side of this role derives the same keys: it accepts the node's
    // record 0, and its own record 0 is the one proof the node accepts.
    let client_nonce: [u8; NONCE_BYTES] = array(&rest[2..]).unwrap_or_default();
    let node_rest = array(&reply[4..]).unwrap_or([0; NODE_HELLO_REST_BYTES]);
    let honest = handshake::client_answer(
        &secret_of(answer.role, &KEY),
        answer.role,
        &client_nonce,
        &node_rest,
    );
    let Ok(mut honest) = honest else {
        panic!("the node's own hello parses: {honest:?}")
    };
    assert!(proof_accepted(
        &mut honest.recv,
        &reply[4 + NODE_HELLO_REST_BYTES..]
    ));
    let proof = &bytes[4 + CLIENT_HELLO_REST_BYTES..];
    let proof = &proof[..proof.len().min(PROOF_BYTES)];
    if proof_accepted(&mut answer.recv, proof) {
        assert_eq!(
            proof,
            &honest.reply[..],
            "an accepted proof is the honest one"
        );
    }
}

/// A connecting side (the role a byte picks, the fixed nonce) reads a node's hello and proof.
fn client_side_raw(bytes: &[u8]) {
    let Some((&pick, bytes)) = bytes.split_first() else {
        return;
    };
    let role = if pick % 2 == 0 {
        Role::Peer
    } else {
        Role::Client
    };
    let (Some(magic), Some(rest)) = (
        array::<4>(bytes),
        bytes.get(4..).and_then(array::<NODE_HELLO_REST_BYTES>),
    ) else {
        return;
    };
    if magic != MAGIC {
        return; // the node runs without a key: its plain answer is the wire_frame target's
    }
    let answer = handshake::client_answer(&secret_of(role, &KEY), role, &CLIENT_NONCE, &rest);
    let mut answer = match answer {
        Err(HelloError::Version(v)) => {
            assert!(v == rest[0] && v != VERSION);
            return;
        }
        Err(other) => panic!("a node's hello has no role: {other:?}"),
        Ok(answer) => answer,
    };
    assert_eq!(answer.role, role);
    assert_eq!(answer.reply.len(), PROOF_BYTES);
    let node_nonce: [u8; NONCE_BYTES] = array(&rest[1..]).unwrap_or_default();
    let hello = handshake::client_hello(role, &CLIENT_NONCE);
    let node = node_answer(
        &array(&hello[4..]).unwrap_or([0; CLIENT_HELLO_REST_BYTES]),
        &node_nonce,
    );
    let Ok(mut node) = node else {
        panic!("an honest hello parses: {node:?}")
    };
    assert!(
        proof_accepted(&mut node.recv, &answer.reply),
        "the node accepts the honest proof"
    );
    let proof = &bytes[4 + NODE_HELLO_REST_BYTES..];
    let proof = &proof[..proof.len().min(PROOF_BYTES)];
    if proof_accepted(&mut answer.recv, proof) {
        assert_eq!(
            proof,
            &node.reply[4 + NODE_HELLO_REST_BYTES..],
            "an accepted proof is the honest node's"
        );
    }
}

/// Up to three byte changes (position, xor) on a message.
fn tamper(u: &mut Unstructured<'_>, bytes: &mut [u8]) -> arbitrary::Result<()> {
    if u.ratio(3, 4)? {
        return Ok(());
    }
    for _ in 0..u.int_in_range(1..=3)? {
        let at = u.choose_index(bytes.len())?;
        bytes[at] ^= u.arbitrary::<u8>()?;
    }
    Ok(())
}

/// An honest exchange with its messages changed on the way: each side completes exactly when
/// everything its keys depend on arrived unchanged and both hold the same key.
fn handshake_tampered(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let role = if u.arbitrary()? {
        Role::Peer
    } else {
        Role::Client
    };
    let client_nonce: [u8; NONCE_BYTES] = u.arbitrary()?;
    let node_nonce: [u8; NONCE_BYTES] = u.arbitrary()?;
    let same_key = u.ratio(7, 8)?;
    let client_key = if same_key { KEY } else { OTHER_KEY };
    // A token claiming the peer role (or a node key the client role) proves the wrong secret.
    let claimed = if u.ratio(1, 8)? {
        match role {
            Role::Peer => Role::Client,
            Role::Client => Role::Peer,
        }
    } else {
        role
    };
    let honest_secret = claimed == role;

    let hello = handshake::client_hello(claimed, &client_nonce);
    let mut hello_sent = hello.clone();
    tamper(u, &mut hello_sent)?;
    if hello_sent[..4] != MAGIC {
        assert_ne!(hello[..4], hello_sent[..4]);
        return Ok(()); // the node refuses it as unauthenticated
    }
    let Some(hello_rest) = array::<CLIENT_HELLO_REST_BYTES>(&hello_sent[4..]) else {
        return Ok(());
    };
    let Ok(mut node) = node_answer(&hello_rest, &node_nonce) else {
        assert!(
            hello_sent[4..6] != hello[4..6],
            "only a changed version or role is refused"
        );
        return Ok(());
    };
    let mut reply_sent = node.reply.clone();
    tamper(u, &mut reply_sent)?;
    let node_hello_len = 4 + NODE_HELLO_REST_BYTES;
    if reply_sent[..4] != MAGIC {
        return Ok(()); // the client reports a node without a key
    }
    let Some(node_rest) = array::<NODE_HELLO_REST_BYTES>(&reply_sent[4..]) else {
        return Ok(());
    };
    let client_secret = secret_of(role, &client_key);
    let Ok(mut client) =
        handshake::client_answer(&client_secret, claimed, &client_nonce, &node_rest)
    else {
        assert_ne!(
            reply_sent[4], node.reply[4],
            "only a changed version is refused"
        );
        return Ok(());
    };
    let client_ok = proof_accepted(&mut client.recv, &reply_sent[node_hello_len..]);
    let mut proof_sent = client.reply.clone();
    tamper(u, &mut proof_sent)?;
    let node_ok = proof_accepted(&mut node.recv, &proof_sent);

    let keys_match = same_key && honest_secret && hello_sent == hello;
    let expect_node = keys_match
        && reply_sent[..node_hello_len] == node.reply[..node_hello_len]
        && proof_sent == client.reply;
    let expect_client = keys_match && reply_sent == node.reply;
    assert_eq!(node_ok, expect_node, "the node's verdict");
    assert_eq!(client_ok, expect_client, "the connecting side's verdict");
    if node_ok && client_ok {
        assert_eq!(node.role, claimed);
        // Both directions carry records from record 1 on.
        for (send, recv) in [(&mut client.send, node.recv), (&mut node.send, client.recv)] {
            let mut wire = Vec::new();
            assert_eq!(send.seal_into(b"after the handshake", &mut wire), Ok(()));
            let mut reader = RecordReader::new(recv);
            let (opened, ended) = read_all(&mut reader, &wire, &[7]);
            assert_eq!(
                (opened.concat(), ended),
                (b"after the handshake".to_vec(), Ok(()))
            );
        }
    }
    Ok(())
}

// ----- records -----

/// Record target: mode 0, raw bytes as a sealed stream (a cap byte, a chunk byte, then the
/// stream); mode 1, an honest stream of records that the input changes, cuts, repeats,
/// reorders or drops, read in chunks the input picks.
pub fn auth_records(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 2 {
        0 => records_raw(rest),
        _ => {
            let _ = records_tampered(&mut Unstructured::new(rest));
        }
    }
}

/// The plaintext cap a raw record input's cap byte names.
fn raw_cap(byte: u8) -> usize {
    if byte == u8::MAX {
        RECORD_PLAINTEXT_MAX
    } else {
        1 + usize::from(byte) * 4
    }
}

/// Feeds `bytes` to `reader` in chunks cycling through `chunks` (0 counts as 1). Returns the
/// plaintext of every record opened, in order, and how reading ended.
fn read_all(
    reader: &mut RecordReader,
    bytes: &[u8],
    chunks: &[usize],
) -> (Vec<Vec<u8>>, Result<(), RecordError>) {
    let capacity = reader.spare().len();
    let mut records = Vec::new();
    let (mut at, mut turn) = (0, 0);
    loop {
        match reader.open_next() {
            Ok(true) => {
                records.push(reader.plaintext().to_vec());
                let n = reader.plaintext().len();
                reader.consume(n);
                assert!(reader.plaintext().is_empty());
                continue;
            }
            Ok(false) => {}
            Err(error) => {
                assert!(reader.plaintext().is_empty(), "nothing after a failure");
                assert_eq!(reader.open_next(), Err(error), "a failure sticks");
                assert_eq!(reader.end(), Err(error), "a failure sticks at the end too");
                return (records, Err(error));
            }
        }
        if at == bytes.len() {
            return (records, reader.end());
        }
        let buffered = reader.buffered();
        let spare = reader.spare();
        assert!(!spare.is_empty(), "room while waiting for a record");
        assert!(spare.len() + buffered <= capacity, "the buffer never grows");
        let chunk = chunks
            .get(turn % chunks.len().max(1))
            .copied()
            .unwrap_or(1)
            .max(1);
        turn += 1;
        let n = chunk.min(spare.len()).min(bytes.len() - at);
        spare[..n].copy_from_slice(&bytes[at..at + n]);
        reader.filled(n);
        at += n;
    }
}

/// Raw bytes as a record stream: every record the reader opens re-seals to the very bytes it
/// came from, a clean end means every byte was a whole record, and the chunking changes
/// nothing.
fn records_raw(bytes: &[u8]) {
    let (Some(&cap), Some(&chunk)) = (bytes.first(), bytes.get(1)) else {
        return;
    };
    let stream = &bytes[2..];
    let reader = || RecordReader::with_plaintext_max(DirectionKey::new(&KEY), raw_cap(cap));
    let chunks = [1 + usize::from(chunk), 1, 3 + usize::from(chunk) * 7];
    let (records, ended) = read_all(&mut reader(), stream, &chunks);
    let mut mirror = DirectionKey::new(&KEY);
    let mut resealed = Vec::new();
    for plain in &records {
        assert!(plain.len() <= raw_cap(cap));
        assert_eq!(mirror.seal_into(plain, &mut resealed), Ok(()));
    }
    assert_eq!(
        stream.get(..resealed.len()),
        Some(&resealed[..]),
        "opened records are the honest ones"
    );
    if ended.is_ok() {
        assert_eq!(
            resealed.len(),
            stream.len(),
            "a clean end after whole records only"
        );
    }
    let whole = read_all(&mut reader(), stream, &[usize::MAX]);
    assert_eq!(whole, (records, ended), "chunking changes nothing");
}

/// What the input does to an honest stream.
#[derive(Debug, Arbitrary)]
enum Mangle {
    None,
    Flip { at: u32, xor: u8 },
    Cut { at: u32 },
    Repeat { record: u8 },
    Swap { record: u8 },
    Drop { record: u8 },
    Insert { at: u32, bytes: Vec<u8> },
}

/// An honest stream, mangled: the reader yields exactly the records before the first byte that
/// differs, and fails unless the stream ends cleanly on a record boundary.
fn records_tampered(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let cap = u.int_in_range(1..=RECORD_CAP_MAX)?;
    let count = u.int_in_range(0..=RECORDS_MAX)?;
    let mut writer = DirectionKey::new(&KEY);
    let mut records: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for _ in 0..count {
        let len = u.int_in_range(0..=cap)?;
        let fill: u8 = u.arbitrary()?;
        let plain: Vec<u8> = (0..len).map(|i| fill.wrapping_add(i as u8)).collect();
        let mut sealed = Vec::new();
        assert_eq!(writer.seal_into(&plain, &mut sealed), Ok(()));
        records.push((plain, sealed));
    }
    let honest: Vec<u8> = records.iter().flat_map(|(_, s)| s.clone()).collect();
    let mut order: Vec<usize> = (0..records.len()).collect();
    let mangle: Mangle = u.arbitrary()?;
    let pick = |r: u8| usize::from(r) % records.len().max(1);
    match &mangle {
        Mangle::Repeat { record } if !records.is_empty() => {
            order.insert(pick(*record), pick(*record))
        }
        Mangle::Swap { record } if records.len() >= 2 => {
            let i = pick(*record) % (records.len() - 1);
            order.swap(i, i + 1);
        }
        Mangle::Drop { record } if !records.is_empty() => {
            order.remove(pick(*record));
        }
        _ => {}
    }
    let mut stream: Vec<u8> = order.iter().flat_map(|&i| records[i].1.clone()).collect();
    match &mangle {
        Mangle::Flip { at, xor } if !stream.is_empty() => {
            let at = *at as usize % stream.len();
            stream[at] ^= xor;
        }
        Mangle::Cut { at } => stream.truncate(*at as usize % (stream.len() + 1)),
        Mangle::Insert { at, bytes } => {
            let at = *at as usize % (stream.len() + 1);
            stream.splice(at..at, bytes.iter().copied());
        }
        _ => {}
    }
    let chunks: Vec<usize> = (0..u.int_in_range(1..=4)?)
        .map(|_| u.int_in_range(1..=2 * (cap + 20)))
        .collect::<arbitrary::Result<_>>()?;

    // The longest run of whole honest records the stream starts with.
    let mut intact = 0;
    let mut end = 0;
    for (_, sealed) in &records {
        if stream.get(end..end + sealed.len()) != Some(&sealed[..]) {
            break;
        }
        end += sealed.len();
        intact += 1;
    }
    let expected: Vec<u8> = records[..intact]
        .iter()
        .flat_map(|(p, _)| p.clone())
        .collect();
    let mut reader = RecordReader::with_plaintext_max(DirectionKey::new(&KEY), cap);
    let (opened, ended) = read_all(&mut reader, &stream, &chunks);
    assert_eq!(opened.len(), intact, "{mangle:?}");
    assert_eq!(opened.concat(), expected, "{mangle:?}");
    if end == stream.len() {
        assert_eq!(
            ended,
            Ok(()),
            "a stream of whole honest records ends cleanly"
        );
        assert_eq!(stream, honest[..end], "{mangle:?}");
    } else {
        let Err(error) = ended else {
            panic!("{mangle:?}: bytes past the honest records ended cleanly")
        };
        assert_ne!(error, RecordError::CounterExhausted);
    }
    if matches!(mangle, Mangle::None) {
        assert_eq!((opened.len(), ended), (records.len(), Ok(())));
    }
    Ok(())
}

// ----- seeds -----

/// A deterministic byte generator for structured seeds (xorshift64*).
fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

fn with_mode(mode: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![mode];
    out.extend_from_slice(bytes);
    out
}

/// The seed corpus of an authentication target: honest messages for the raw modes, fixed
/// pseudo-random inputs for the structured ones.
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let structured = |mode: u8| {
        (0..6u64).map(move |i| {
            let len = 64 + 200 * i as usize;
            (
                format!("mode{mode}_{i}"),
                with_mode(mode, &pseudo_random(i + 1, len)),
            )
        })
    };
    let mut seeds = Vec::new();
    match target {
        "auth_datagram" => {
            let key = DatagramKey::new(&KEY);
            for (name, stamp, len) in [
                ("empty", NOW, 0),
                ("ping", NOW, 96),
                ("largest", NOW, DATAGRAM_BYTES_MAX),
                ("skewed", NOW - CLOCK_SKEW_MAX_SECS, 300),
                ("stale", NOW + CLOCK_SKEW_MAX_SECS + 1, 40),
            ] {
                let sealed = key.seal(7, 1000, stamp, &pseudo_random(len as u64, len));
                seeds.push((format!("sealed_{name}"), with_mode(0, &sealed)));
            }
            let foreign = DatagramKey::new(&OTHER_KEY).seal(7, 1, NOW, b"another cluster");
            seeds.push(("sealed_other_key".into(), with_mode(0, &foreign)));
            seeds.extend(structured(1));
            seeds.extend(structured(2));
        }
        "auth_handshake" => {
            for role in [Role::Peer, Role::Client] {
                let name = format!("{role:?}").to_lowercase();
                let hello = handshake::client_hello(role, &CLIENT_NONCE);
                let node = node_answer(
                    &array(&hello[4..]).unwrap_or([0; CLIENT_HELLO_REST_BYTES]),
                    &NODE_NONCE,
                );
                let Ok(node) = node else { continue };
                let client = handshake::client_answer(
                    &secret_of(role, &KEY),
                    role,
                    &CLIENT_NONCE,
                    &array(&node.reply[4..]).unwrap_or([0; NODE_HELLO_REST_BYTES]),
                );
                let Ok(client) = client else { continue };
                seeds.push((
                    format!("node_hears_{name}"),
                    with_mode(0, &[hello.clone(), client.reply].concat()),
                ));
                let pick = if role == Role::Peer { 0 } else { 1 };
                seeds.push((
                    format!("{name}_hears_node"),
                    with_mode(1, &[&[pick][..], &node.reply].concat()),
                ));
            }
            let mut bad_role = handshake::client_hello(Role::Peer, &CLIENT_NONCE);
            bad_role[5] = 9;
            seeds.push(("node_hears_unknown_role".into(), with_mode(0, &bad_role)));
            seeds.extend(structured(2));
        }
        "auth_records" => {
            for (name, cap_byte, sizes) in [
                ("small", 3u8, &[0usize, 1, 13, 13, 5][..]),
                ("default_cap", u8::MAX, &[100, RECORD_PLAINTEXT_MAX, 7][..]),
            ] {
                let mut writer = DirectionKey::new(&KEY);
                let mut stream = vec![cap_byte, 2];
                for &size in sizes {
                    let plain = pseudo_random(size as u64, size);
                    if writer.seal_into(&plain, &mut stream).is_err() {
                        continue;
                    }
                }
                seeds.push((format!("stream_{name}"), with_mode(0, &stream)));
            }
            seeds.extend(structured(1));
        }
        _ => {}
    }
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_passes_and_the_honest_ones_are_accepted() {
        for target in ["auth_datagram", "auth_handshake", "auth_records"] {
            let seeds = seeds(target);
            assert!(seeds.len() >= 5, "{target}");
            for (_, bytes) in &seeds {
                match target {
                    "auth_datagram" => auth_datagram(bytes),
                    "auth_handshake" => auth_handshake(bytes),
                    _ => auth_records(bytes),
                }
            }
        }
        // The honest raw seeds really are accepted (so the raw modes' success paths run).
        let key = DatagramKey::new(&KEY);
        let datagram = &seeds("auth_datagram")[1].1;
        assert!(key.open(&datagram[1..], NOW).is_ok());
        let stream = &seeds("auth_records")[0].1;
        let mut reader =
            RecordReader::with_plaintext_max(DirectionKey::new(&KEY), raw_cap(stream[1]));
        assert_eq!(read_all(&mut reader, &stream[3..], &[5]).0.len(), 5);
    }
}
