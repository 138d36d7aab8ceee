//! Durable storage for the Raft log: what `Output::Persist` writes and `Raft::restore` reads.
//!
//! Owns: one directory holding the segmented log ([`segment`]), the hard state file and the
//! latest snapshot file ([`meta`]), all made of checksummed records ([`record`]); applying a
//! [`PersistBatch`] durably; recovering a [`PersistedState`] at open.
//! Inputs: persist batches from the consensus machine (through the driver). Outputs: `Ok` once
//! the batch is on disk and fsynced, so the driver may then hand back `Input::Persisted(batch)`.
//! Must never: return `Ok` from [`Store::apply_persist`] before everything in the batch is
//! fsynced, panic on disk contents, silently shorten the log (only a torn tail at the end of
//! the last segment is cut, with a warning), or make a consensus decision.
//!
//! Directory layout:
//! - `log-<first index as 20 digits>.seg`: segments, each `[u32 LE len][u32 LE crc32][body]*`
//!   with the body an `Entry` in the wire module's frame body encoding.
//! - `hardstate`: one record holding the `HardState`.
//! - `snapshot`: one record holding the latest `Snapshot`.
//!
//! Write order inside one batch: hard state, then snapshot (and the log compaction it allows),
//! then suffix truncation, then appends, then fsync. Each step leaves a state that recovery
//! accepts, so a crash at any point loses at most the unacknowledged batch.
//!
//! The directory is assumed to be used by one process at a time (no lock file yet).

pub mod meta;
pub mod record;
pub mod segment;

#[cfg(test)]
pub(crate) mod tests;

use std::fs;
use std::path::{Path, PathBuf};

use idunno_core::consensus::{
    Entry, HardState, PersistBatch, PersistedState, SNAPSHOT_BYTES_MAX, Snapshot,
};
use idunno_core::wire::FRAME_BYTES_MAX;

pub use segment::SegmentLog;

/// Default size at which the log rolls to a new segment, in bytes.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;
/// Default largest encoded entry (record body), in bytes. A command is at most
/// `COMMAND_BYTES_MAX` (64 KiB), so this leaves ample headroom.
pub const RECORD_BYTES_DEFAULT: usize = 1 << 20;
/// Smallest allowed record cap, in bytes.
pub const RECORD_BYTES_MIN: usize = 64;
/// Largest body of the hard state file, in bytes.
pub const HARD_STATE_BYTES_MAX: usize = 1024;
/// Largest body of the snapshot file, in bytes: the largest snapshot plus headroom.
pub const SNAPSHOT_RECORD_BYTES_MAX: usize = SNAPSHOT_BYTES_MAX + 64 * 1024;
/// Name of the hard state file.
pub const HARD_STATE_FILE: &str = "hardstate";
/// Name of the snapshot file.
pub const SNAPSHOT_FILE: &str = "snapshot";

/// Storage knobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// A segment rolls once appending a record would take it above this many bytes (a single
    /// record larger than this still gets a segment of its own). At least 1.
    pub segment_bytes_max: u64,
    /// Largest record body accepted on append or at recovery, in bytes; in
    /// [`RECORD_BYTES_MIN`]..=`wire::FRAME_BYTES_MAX`.
    pub record_bytes_max: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_bytes_max: SEGMENT_BYTES_DEFAULT,
            record_bytes_max: RECORD_BYTES_DEFAULT,
        }
    }
}

impl Options {
    /// Checks the ranges documented on the fields.
    pub fn validate(&self) -> Result<(), StorageError> {
        if self.segment_bytes_max == 0 {
            return Err(StorageError::InvalidOptions(
                "segment_bytes_max must not be zero".into(),
            ));
        }
        if !(RECORD_BYTES_MIN..=FRAME_BYTES_MAX).contains(&self.record_bytes_max) {
            return Err(StorageError::InvalidOptions(format!(
                "record_bytes_max must be in {RECORD_BYTES_MIN}..={FRAME_BYTES_MAX}"
            )));
        }
        Ok(())
    }

    /// Largest segment file recovery will read: the roll size plus one whole record.
    pub fn segment_file_bytes_max(&self) -> u64 {
        self.segment_bytes_max + (record::RECORD_HEADER_BYTES + self.record_bytes_max) as u64
    }
}

/// Why storage failed. Errors from [`Store::open`] change nothing that was acknowledged; an
/// error from [`Store::apply_persist`] leaves the batch possibly half-written and the store
/// refuses further writes ([`StorageError::Failed`]) until it is reopened.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An operating-system I/O error on the named path.
    #[error("i/o error on {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A log record that is complete but wrong (or cut short where it cannot be a torn tail).
    #[error("corrupt raft log record in {} at byte offset {offset}: {reason}", path.display())]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the record in that file.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// Segment indices are not contiguous.
    #[error("raft log not contiguous: {} starts at index {found}, expected {expected}", path.display())]
    Gap {
        /// The segment file that does not follow on.
        path: PathBuf,
        /// The index it should start at.
        expected: u64,
        /// The index it starts at.
        found: u64,
    },
    /// The hard state or snapshot file is damaged.
    #[error("damaged state file {}: {reason}", path.display())]
    BadStateFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A value could not be encoded within its cap (nothing was written for it).
    #[error("cannot encode a record for {}: {reason}", path.display())]
    Encode {
        /// The file it was meant for.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Entries to append do not follow the log (a caller bug; nothing was written for them).
    #[error("append out of order: index {found} where {expected} was expected")]
    BadAppend {
        /// The index the next entry must have.
        expected: u64,
        /// The index it has.
        found: u64,
    },
    /// A read outside the stored entries.
    #[error("entries {lo}..{hi} are outside the stored range {first}..{next}")]
    OutOfRange {
        /// Requested start.
        lo: u64,
        /// Requested end (exclusive).
        hi: u64,
        /// First stored index.
        first: u64,
        /// One past the last stored index.
        next: u64,
    },
    /// The options are out of range (nothing was opened).
    #[error("invalid storage options: {0}")]
    InvalidOptions(String),
    /// An earlier write failed; the store must be reopened (which recovers from disk).
    #[error("an earlier storage write failed; reopen the store to recover")]
    Failed,
}

impl StorageError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        StorageError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The durable store of one voter: log, hard state and snapshot in one directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    log: SegmentLog,
    hard_state: HardState,
    /// Index and term of the stored snapshot.
    snapshot_point: Option<(u64, u64)>,
    failed: bool,
}

impl Store {
    /// Opens (creating if needed) the store in `dir` and recovers what `Raft::restore` needs.
    pub fn open(dir: &Path, options: Options) -> Result<(Store, PersistedState), StorageError> {
        options.validate()?;
        fs::create_dir_all(dir).map_err(|e| StorageError::io(dir, e))?;
        remove_temp_files(dir)?;
        let hard_state = meta::read::<HardState>(dir, HARD_STATE_FILE, HARD_STATE_BYTES_MAX)?
            .unwrap_or_default();
        let snapshot = meta::read::<Snapshot>(dir, SNAPSHOT_FILE, SNAPSHOT_RECORD_BYTES_MAX)?;
        let snapshot_point = snapshot.as_ref().map(|s| (s.index, s.term));
        let keep_from = snapshot_point.map_or(1, |(index, _)| index + 1);
        let (mut log, mut entries) = SegmentLog::open(dir, options, keep_from)?;
        if let Some((index, term)) = snapshot_point
            && log.first_index().is_some_and(|first| first <= index)
        {
            if log.term(index) == Some(term) {
                entries.retain(|e| e.index > index);
                log.compact_prefix(index)?;
                log.sync()?;
            } else {
                tracing::info!(index, "stored log predates the snapshot; dropping it");
                entries.clear();
                log.reset()?;
            }
        }
        debug_assert!(entries.first().is_none_or(|e| e.index == keep_from));
        let store = Store {
            dir: dir.to_path_buf(),
            log,
            hard_state,
            snapshot_point,
            failed: false,
        };
        let persisted = PersistedState {
            hard_state,
            snapshot,
            entries,
        };
        Ok((store, persisted))
    }

    // ----- getters -----

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The stored hard state.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// Index of the stored snapshot (0 without one).
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_point.map_or(0, |(index, _)| index)
    }

    /// Index of the last stored entry (the snapshot's index if the log after it is empty).
    pub fn last_index(&self) -> u64 {
        self.next_index() - 1
    }

    fn next_index(&self) -> u64 {
        self.log
            .next_index()
            .unwrap_or(self.snapshot_index() + 1)
            .max(self.snapshot_index() + 1)
    }

    /// Term of the entry at `index` (the snapshot's term at its index), if stored.
    pub fn term(&self, index: u64) -> Option<u64> {
        match self.snapshot_point {
            Some((s_index, s_term)) if index == s_index => Some(s_term),
            Some((s_index, _)) if index < s_index => None,
            _ => self.log.term(index),
        }
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.log.segment_count()
    }

    /// Reads the entries `lo..hi` (after the snapshot) back from disk.
    pub fn entries(&self, lo: u64, hi: u64) -> Result<Vec<Entry>, StorageError> {
        if lo <= self.snapshot_index() && lo < hi {
            return Err(StorageError::OutOfRange {
                lo,
                hi,
                first: self.snapshot_index() + 1,
                next: self.next_index(),
            });
        }
        self.log.entries(lo, hi)
    }

    /// Reads the stored snapshot back from disk.
    pub fn snapshot(&self) -> Result<Option<Snapshot>, StorageError> {
        meta::read(&self.dir, SNAPSHOT_FILE, SNAPSHOT_RECORD_BYTES_MAX)
    }

    // ----- mutators -----

    /// Makes `batch` durable the way `PersistedState::apply` describes; returns once it is
    /// fsynced, after which the driver may hand `Input::Persisted(batch.batch)` to Raft.
    /// After an error every later call fails with [`StorageError::Failed`].
    pub fn apply_persist(&mut self, batch: &PersistBatch) -> Result<(), StorageError> {
        self.apply_persist_group(std::slice::from_ref(batch))
    }

    /// Makes consecutive `batches` durable in order with one fsync of the log at the end (group
    /// commit): each batch's hard state and snapshot are written (and fsynced) as it comes, its
    /// log changes are written, and the log is fsynced once after the last. When this returns
    /// `Ok`, every batch is durable and the driver may acknowledge the last one (Raft's
    /// acknowledgements are cumulative). A crash before the fsync loses only the group's log
    /// writes, none of which was acknowledged. After an error every later call fails with
    /// [`StorageError::Failed`].
    pub fn apply_persist_group(&mut self, batches: &[PersistBatch]) -> Result<(), StorageError> {
        if self.failed {
            return Err(StorageError::Failed);
        }
        let result = batches
            .iter()
            .try_for_each(|batch| self.write_steps(batch))
            .and_then(|()| self.log.sync());
        if result.is_err() {
            self.failed = true;
        }
        debug_assert!(
            result.is_err()
                || batches
                    .last()
                    .is_none_or(|b| b.hard_state == self.hard_state)
        );
        result
    }

    /// Writes one batch (hard state and snapshot durably, log changes unsynced).
    fn write_steps(&mut self, batch: &PersistBatch) -> Result<(), StorageError> {
        if batch.hard_state != self.hard_state {
            meta::write(
                &self.dir,
                HARD_STATE_FILE,
                &batch.hard_state,
                HARD_STATE_BYTES_MAX,
            )?;
            self.hard_state = batch.hard_state;
        }
        if let Some(snapshot) = &batch.snapshot {
            self.install_snapshot(snapshot)?;
        }
        let from = batch.first_index.max(self.snapshot_index() + 1);
        self.log.truncate_suffix(from)?;
        if let Some(first) = batch.entries.first() {
            let expected = self.next_index();
            if first.index != expected || first.index != batch.first_index {
                return Err(StorageError::BadAppend {
                    expected,
                    found: first.index,
                });
            }
            self.log.append(&batch.entries)?;
        }
        debug_assert!(self.hard_state == batch.hard_state);
        Ok(())
    }

    /// Stores a snapshot durably, then drops the log it covers (all of it if the stored entry
    /// at its index has another term).
    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        meta::write(
            &self.dir,
            SNAPSHOT_FILE,
            snapshot,
            SNAPSHOT_RECORD_BYTES_MAX,
        )?;
        if self.log.term(snapshot.index) == Some(snapshot.term) {
            self.log.compact_prefix(snapshot.index)?;
        } else {
            self.log.reset()?;
        }
        self.snapshot_point = Some((snapshot.index, snapshot.term));
        Ok(())
    }
}

/// Removes state files left half-written by a crash.
fn remove_temp_files(dir: &Path) -> Result<(), StorageError> {
    for item in fs::read_dir(dir).map_err(|e| StorageError::io(dir, e))? {
        let item = item.map_err(|e| StorageError::io(dir, e))?;
        let is_temp = item
            .file_name()
            .to_str()
            .is_some_and(|n| n.ends_with(meta::TEMP_SUFFIX));
        if is_temp {
            let path = item.path();
            fs::remove_file(&path).map_err(|e| StorageError::io(&path, e))?;
        }
    }
    Ok(())
}
