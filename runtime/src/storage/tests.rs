//! Tests of the durable Raft store against real files in a temporary directory, with
//! `PersistedState::apply` (core's in-memory model of a durable store) as the oracle.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use idunno_core::consensus::{
    Entry, HardState, Payload, PersistBatch, PersistedState, Snapshot, VoterId,
};

use super::segment::segment_name;
use super::{HARD_STATE_FILE, Options, SNAPSHOT_FILE, StorageError, Store, record};

/// A unique directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("idunno-storage-{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Small segments (about seven records each) so tests roll often.
fn small() -> Options {
    Options {
        segment_bytes_max: 256,
        record_bytes_max: 4096,
    }
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        term,
        index,
        payload: Payload::Command {
            id: 0,
            bytes: vec![0xab; 20],
        },
    }
}

fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    range.map(|i| entry(i, term)).collect()
}

/// Encoded size of one test record (indices and terms below 251 encode in one byte).
fn record_len() -> u64 {
    record::encode(&entry(1, 1), 4096).expect("encodes").len() as u64
}

fn hard(term: u64, vote: Option<u64>) -> HardState {
    HardState {
        term,
        vote: vote.map(VoterId),
    }
}

fn batch(
    n: u64,
    hard_state: HardState,
    snapshot: Option<Snapshot>,
    first_index: u64,
    entries: Vec<Entry>,
) -> PersistBatch {
    PersistBatch {
        batch: n,
        hard_state,
        snapshot,
        first_index,
        entries,
    }
}

/// Applies batches to a fresh store and to the model; checks both after a reopen.
fn apply_all(dir: &Path, batches: &[PersistBatch]) -> (Store, PersistedState) {
    let (mut store, persisted) = Store::open(dir, small()).expect("opens");
    let mut model = persisted;
    for b in batches {
        store.apply_persist(b).expect("persists");
        model.apply(b);
    }
    drop(store);
    let (store, reopened) = Store::open(dir, small()).expect("reopens");
    assert_eq!(reopened, model);
    (store, reopened)
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("lists")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    names.sort();
    names
}

#[test]
fn append_and_reopen_round_trip() {
    let dir = TempDir::new("round-trip");
    let (store, persisted) = apply_all(
        &dir.0,
        &[
            batch(1, hard(1, Some(1)), None, 1, entries(1..=3, 1)),
            batch(2, hard(1, Some(1)), None, 4, entries(4..=5, 1)),
        ],
    );
    assert_eq!(persisted.hard_state, hard(1, Some(1)));
    assert_eq!(persisted.entries, entries(1..=5, 1));
    assert_eq!(store.last_index(), 5);
    assert_eq!(store.term(3), Some(1));
    assert_eq!(store.entries(2, 5).expect("reads"), entries(2..=4, 1));
    assert!(store.entries(4, 9).is_err());
}

#[test]
fn empty_directory_opens_empty() {
    let dir = TempDir::new("empty");
    let (store, persisted) = Store::open(&dir.0, small()).expect("opens");
    assert_eq!(persisted, PersistedState::default());
    assert_eq!(store.last_index(), 0);
    assert!(
        Store::open(
            &dir.0,
            Options {
                segment_bytes_max: 0,
                record_bytes_max: 4096
            }
        )
        .is_err()
    );
}

#[test]
fn log_rolls_across_segments() {
    let dir = TempDir::new("roll");
    let (store, persisted) = apply_all(
        &dir.0,
        &[batch(1, hard(2, None), None, 1, entries(1..=40, 2))],
    );
    assert_eq!(persisted.entries.len(), 40);
    let names = segment_files(&dir.0);
    assert!(names.len() >= 5, "{names:?}");
    assert_eq!(names[0], segment_name(1));
    assert_eq!(names[0], "log-00000000000000000001.seg");
    assert_eq!(store.segment_count(), names.len());
    assert_eq!(store.entries(1, 41).expect("reads"), entries(1..=40, 2));
}

#[test]
fn truncate_suffix_then_append() {
    let dir = TempDir::new("truncate");
    let per_segment = 256 / record_len();
    // Truncate inside a segment, then exactly at a segment boundary, then everything.
    let boundary = 1 + 2 * per_segment;
    let (_, persisted) = apply_all(
        &dir.0,
        &[
            batch(1, hard(1, None), None, 1, entries(1..=30, 1)),
            batch(2, hard(2, None), None, 20, entries(20..=25, 2)),
            batch(
                3,
                hard(3, None),
                None,
                boundary,
                entries(boundary..=boundary + 1, 3),
            ),
            batch(4, hard(4, None), None, 1, entries(1..=2, 4)),
        ],
    );
    assert_eq!(persisted.entries, entries(1..=2, 4));
    assert_eq!(segment_files(&dir.0), vec![segment_name(1)]);
}

#[test]
fn snapshot_compacts_whole_segments_and_survives_reopen() {
    let dir = TempDir::new("compact");
    let snapshot = Snapshot {
        index: 30,
        term: 1,
        data: b"state at 30".to_vec(),
    };
    let (_, before) = apply_all(
        &dir.0,
        &[batch(1, hard(1, None), None, 1, entries(1..=40, 1))],
    );
    let segments_before = segment_files(&dir.0).len();
    let (store, persisted) = apply_all(
        &dir.0,
        &[
            batch(1, hard(1, None), None, 1, entries(1..=40, 1)),
            batch(2, hard(1, None), Some(snapshot.clone()), 41, Vec::new()),
        ],
    );
    assert_eq!(before.entries.len(), 40);
    let names = segment_files(&dir.0);
    assert!(names.len() < segments_before, "{names:?}");
    assert!(!names.contains(&segment_name(1)));
    assert_eq!(persisted.snapshot, Some(snapshot.clone()));
    assert_eq!(persisted.entries, entries(31..=40, 1));
    assert_eq!(store.snapshot().expect("reads"), Some(snapshot));
    assert_eq!(store.term(30), Some(1));
    assert_eq!(store.term(29), None);
}

#[test]
fn snapshot_that_does_not_match_replaces_the_log() {
    let dir = TempDir::new("replace");
    let snapshot = Snapshot {
        index: 50,
        term: 3,
        data: vec![7; 100],
    };
    let (_, persisted) = apply_all(
        &dir.0,
        &[
            batch(1, hard(1, None), None, 1, entries(1..=20, 1)),
            batch(
                2,
                hard(3, Some(2)),
                Some(snapshot.clone()),
                51,
                entries(51..=52, 3),
            ),
        ],
    );
    assert_eq!(persisted.snapshot, Some(snapshot));
    assert_eq!(persisted.entries, entries(51..=52, 3));
    assert_eq!(segment_files(&dir.0), vec![segment_name(51)]);
}

#[test]
fn hard_state_and_snapshot_survive_reopen() {
    let dir = TempDir::new("meta");
    let snapshot = Snapshot {
        index: 3,
        term: 2,
        data: b"kv".to_vec(),
    };
    apply_all(
        &dir.0,
        &[
            batch(1, hard(2, Some(5)), None, 1, entries(1..=3, 2)),
            batch(2, hard(4, Some(1)), Some(snapshot.clone()), 4, Vec::new()),
        ],
    );
    let (store, persisted) = Store::open(&dir.0, small()).expect("reopens");
    assert_eq!(persisted.hard_state, hard(4, Some(1)));
    assert_eq!(persisted.snapshot, Some(snapshot));
    assert!(persisted.entries.is_empty());
    assert_eq!(store.last_index(), 3);
}

/// Byte length and path of the last segment file.
fn last_segment(dir: &Path) -> (PathBuf, u64) {
    let name = segment_files(dir).pop().expect("a segment");
    let path = dir.join(name);
    let len = fs::metadata(&path).expect("stat").len();
    (path, len)
}

#[test]
fn torn_tail_is_truncated_and_the_rest_kept() {
    let dir = TempDir::new("torn");
    apply_all(
        &dir.0,
        &[batch(1, hard(1, None), None, 1, entries(1..=20, 1))],
    );
    let (path, len) = last_segment(&dir.0);
    let file = OpenOptions::new().write(true).open(&path).expect("opens");
    file.set_len(len - record_len() / 2).expect("cuts");
    drop(file);
    let mut file = OpenOptions::new().append(true).open(&path).expect("opens");
    file.write_all(&[0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03])
        .expect("garbage");
    drop(file);

    let (mut store, persisted) = Store::open(&dir.0, small()).expect("recovers");
    assert_eq!(persisted.entries, entries(1..=19, 1));
    assert_eq!(
        fs::metadata(&path).expect("stat").len(),
        len - record_len(),
        "the tail is cut at the last whole record"
    );
    store
        .apply_persist(&batch(2, hard(1, None), None, 20, entries(20..=21, 1)))
        .expect("appends after recovery");
    drop(store);
    let (_, persisted) = Store::open(&dir.0, small()).expect("reopens");
    assert_eq!(persisted.entries, entries(1..=21, 1));
}

#[test]
fn zero_filled_tail_is_torn() {
    let dir = TempDir::new("zeros");
    apply_all(
        &dir.0,
        &[batch(1, hard(1, None), None, 1, entries(1..=3, 1))],
    );
    let (path, len) = last_segment(&dir.0);
    let file = OpenOptions::new().write(true).open(&path).expect("opens");
    file.set_len(len + 100).expect("extends with zeros");
    drop(file);
    let (_, persisted) = Store::open(&dir.0, small()).expect("recovers");
    assert_eq!(persisted.entries, entries(1..=3, 1));
}

/// Writes `bytes` at `offset` of `path`.
fn overwrite(path: &Path, offset: u64, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom};
    let mut file = OpenOptions::new().write(true).open(path).expect("opens");
    file.seek(SeekFrom::Start(offset)).expect("seeks");
    file.write_all(bytes).expect("writes");
}

fn expect_corrupt(dir: &Path, path: &Path, offset: u64) -> String {
    let error = Store::open(dir, small()).expect_err("refuses a corrupt log");
    let message = error.to_string();
    match &error {
        StorageError::Corrupt {
            path: p, offset: o, ..
        } => {
            assert_eq!((p.as_path(), *o), (path, offset), "{message}");
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
    let name = path.file_name().and_then(|n| n.to_str()).expect("name");
    assert!(message.contains(name), "{message}");
    assert!(message.contains(&format!("offset {offset}")), "{message}");
    message
}

#[test]
fn flipped_byte_in_a_middle_record_is_refused_with_file_and_offset() {
    let dir = TempDir::new("flip");
    apply_all(
        &dir.0,
        &[batch(1, hard(1, None), None, 1, entries(1..=30, 1))],
    );
    let first = dir.0.join(segment_name(1));
    let offset = 2 * record_len();
    overwrite(&first, offset + 12, &[0xff]);
    let message = expect_corrupt(&dir.0, &first, offset);
    assert!(message.contains("checksum"), "{message}");
}

#[test]
fn flipped_byte_mid_last_segment_is_not_mistaken_for_a_torn_tail() {
    let dir = TempDir::new("flip-last");
    let count = 4 * (256 / record_len());
    apply_all(
        &dir.0,
        &[batch(1, hard(1, None), None, 1, entries(1..=count, 1))],
    );
    let (path, len) = last_segment(&dir.0);
    assert!(
        len >= 3 * record_len(),
        "needs records after the damaged one"
    );
    overwrite(&path, 20, &[0x00]);
    expect_corrupt(&dir.0, &path, 0);
    // The damaged length field of the first record points past the end of the file.
    overwrite(&path, 0, &1000u32.to_le_bytes());
    expect_corrupt(&dir.0, &path, 0);
}

#[test]
fn four_gigabyte_length_field_is_refused() {
    let dir = TempDir::new("huge");
    apply_all(
        &dir.0,
        &[batch(1, hard(1, None), None, 1, entries(1..=30, 1))],
    );
    let first = dir.0.join(segment_name(1));
    let offset = record_len();
    overwrite(&first, offset, &u32::MAX.to_le_bytes());
    let message = expect_corrupt(&dir.0, &first, offset);
    assert!(message.contains("4294967295"), "{message}");
}

#[test]
fn corrupted_hard_state_file_is_a_clear_error() {
    let dir = TempDir::new("bad-hard-state");
    apply_all(
        &dir.0,
        &[batch(1, hard(9, Some(3)), None, 1, entries(1..=2, 9))],
    );
    let path = dir.0.join(HARD_STATE_FILE);
    let len = fs::metadata(&path).expect("stat").len();
    overwrite(&path, len - 1, &[0x55]);
    let error = Store::open(&dir.0, small()).expect_err("refuses");
    assert!(
        matches!(&error, StorageError::BadStateFile { path: p, .. } if *p == path),
        "{error:?}"
    );
    assert!(error.to_string().contains(HARD_STATE_FILE), "{error}");
}

#[test]
fn truncated_snapshot_file_is_a_clear_error() {
    let dir = TempDir::new("bad-snapshot");
    let snapshot = Snapshot {
        index: 2,
        term: 1,
        data: vec![1; 64],
    };
    apply_all(
        &dir.0,
        &[
            batch(1, hard(1, None), None, 1, entries(1..=2, 1)),
            batch(2, hard(1, None), Some(snapshot), 3, Vec::new()),
        ],
    );
    let path = dir.0.join(SNAPSHOT_FILE);
    let len = fs::metadata(&path).expect("stat").len();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("opens")
        .set_len(len - 10)
        .expect("cuts");
    let error = Store::open(&dir.0, small()).expect_err("refuses");
    assert!(
        matches!(&error, StorageError::BadStateFile { path: p, .. } if *p == path),
        "{error:?}"
    );
}

#[test]
fn gap_between_segments_is_refused() {
    let dir = TempDir::new("gap");
    apply_all(
        &dir.0,
        &[batch(1, hard(1, None), None, 1, entries(1..=30, 1))],
    );
    let names = segment_files(&dir.0);
    fs::remove_file(dir.0.join(&names[1])).expect("removes");
    let error = Store::open(&dir.0, small()).expect_err("refuses");
    assert!(matches!(error, StorageError::Gap { .. }), "{error:?}");
}

#[test]
fn oversized_entry_is_refused_and_the_store_stops_writing() {
    let dir = TempDir::new("oversized");
    let (mut store, _) = Store::open(&dir.0, small()).expect("opens");
    let big = Entry {
        term: 1,
        index: 1,
        payload: Payload::Command {
            id: 1,
            bytes: vec![0; 5000],
        },
    };
    let error = store
        .apply_persist(&batch(1, hard(1, None), None, 1, vec![big]))
        .expect_err("too large");
    assert!(matches!(error, StorageError::Encode { .. }), "{error:?}");
    assert!(matches!(
        store.apply_persist(&batch(2, hard(1, None), None, 1, entries(1..=1, 1))),
        Err(StorageError::Failed)
    ));
}

#[test]
fn random_batches_match_the_model_across_reopens() {
    // A small deterministic generator (no new crates): xorshift.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |bound: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % bound
    };
    let dir = TempDir::new("model");
    let (mut store, mut model) = Store::open(&dir.0, small()).expect("opens");
    let mut term = 1;
    let mut group = Vec::new();
    for n in 1..=120u64 {
        let offset = model.snapshot.as_ref().map_or(0, |s| s.index);
        let last = offset + model.entries.len() as u64;
        let snapshot = (next(10) == 0 && last > offset).then(|| {
            let index = offset + 1 + next(last - offset);
            let term_at = model
                .entries
                .iter()
                .find(|e| e.index == index)
                .map_or(term, |e| e.term);
            Snapshot {
                index,
                term: term_at,
                data: vec![n as u8; 8],
            }
        });
        let floor = snapshot.as_ref().map_or(offset, |s| s.index).max(offset) + 1;
        let first_index = if next(4) == 0 {
            term += 1;
            floor + next(last.saturating_sub(floor) + 1)
        } else {
            last.max(floor - 1) + 1
        };
        let count = next(12);
        let new = (first_index..first_index + count)
            .map(|i| entry(i, term))
            .collect();
        let b = batch(n, hard(term, None), snapshot, first_index, new);
        model.apply(&b);
        // Batches are written one at a time or in groups with one fsync (group commit).
        group.push(b);
        if next(3) == 0 {
            store.apply_persist_group(&group).expect("persists");
            group.clear();
        }
        if next(5) == 0 {
            store.apply_persist_group(&group).expect("persists");
            group.clear();
            drop(store);
            let (reopened, persisted) = Store::open(&dir.0, small()).expect("reopens");
            assert_eq!(persisted, model, "after batch {n}");
            store = reopened;
        }
    }
    store.apply_persist_group(&group).expect("persists");
    drop(store);
    let (_, persisted) = Store::open(&dir.0, small()).expect("reopens");
    assert_eq!(persisted, model, "at the end");
}
