//! The segmented, append-only Raft log on disk.
//!
//! Owns: the segment files `log-<first index, 20 digits>.seg` in one directory, each a run of
//! records ([`super::record`]) holding entries with contiguous indices; the in-memory index of
//! where each entry lives (offset, length, term); rolling to a new segment at the size cap;
//! suffix truncation, whole-segment prefix compaction and recovery of the files at open.
//! Inputs: entries to append, indices to truncate from or compact up to, ranges to read.
//! Must never: acknowledge anything (the caller fsyncs through [`SegmentLog::sync`] before it
//! does), silently drop a complete record (only a torn tail of the last segment is cut, and
//! only when no valid record follows it), allocate from an unchecked length field, or panic
//! on disk contents.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use idunno_core::consensus::Entry;
use idunno_core::wire::WIRE_VERSION;

use super::record::{self, RECORD_HEADER_BYTES, RecordFault};
use super::{Options, StorageError, meta};

const SEGMENT_PREFIX: &str = "log-";
const SEGMENT_SUFFIX: &str = ".seg";
const SEGMENT_DIGITS: usize = 20;

/// The file name of the segment whose first entry has index `first_index`.
pub fn segment_name(first_index: u64) -> String {
    format!("{SEGMENT_PREFIX}{first_index:0SEGMENT_DIGITS$}{SEGMENT_SUFFIX}")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Where one entry lives.
#[derive(Clone, Copy, Debug)]
struct Position {
    offset: u64,
    record_bytes: u32,
    term: u64,
}

#[derive(Debug)]
struct Segment {
    first_index: u64,
    path: PathBuf,
    records: Vec<Position>,
    len_bytes: u64,
}

impl Segment {
    fn next_index(&self) -> u64 {
        self.first_index + self.records.len() as u64
    }
}

/// The log: segments in index order, the last one open for appends.
#[derive(Debug)]
pub struct SegmentLog {
    dir: PathBuf,
    options: Options,
    segments: Vec<Segment>,
    active: Option<File>,
    /// The active segment has writes not yet fsynced.
    file_dirty: bool,
    /// Segment files were created or removed since the directory was last fsynced.
    dir_dirty: bool,
}

impl SegmentLog {
    /// Opens the log in `dir`, recovering it. `keep_from` is the first index the caller still
    /// needs (the snapshot's index + 1, or 1): segments wholly below it are removed unread.
    /// Returns every entry of the remaining segments (which may start before `keep_from`).
    pub fn open(
        dir: &Path,
        options: Options,
        keep_from: u64,
    ) -> Result<(SegmentLog, Vec<Entry>), StorageError> {
        let mut found = list_segments(dir)?;
        let mut log = SegmentLog {
            dir: dir.to_path_buf(),
            options,
            segments: Vec::new(),
            active: None,
            file_dirty: false,
            dir_dirty: false,
        };
        if found.is_empty() {
            return Ok((log, Vec::new()));
        }
        let Some(start) = found.iter().rposition(|(first, _)| *first <= keep_from) else {
            let (first, path) = &found[0];
            return Err(StorageError::Gap {
                path: path.clone(),
                expected: keep_from,
                found: *first,
            });
        };
        for (_, path) in found.drain(..start) {
            fs::remove_file(&path).map_err(|e| StorageError::io(&path, e))?;
            log.dir_dirty = true;
        }
        let count = found.len();
        let mut entries = Vec::new();
        for (position, (first_index, path)) in found.into_iter().enumerate() {
            if let Some(previous) = log.segments.last()
                && previous.next_index() != first_index
            {
                return Err(StorageError::Gap {
                    path,
                    expected: previous.next_index(),
                    found: first_index,
                });
            }
            let is_last = position + 1 == count;
            let segment = log.recover_segment(first_index, path, is_last, &mut entries)?;
            log.segments.push(segment);
        }
        log.open_active()?;
        log.sync()?;
        Ok((log, entries))
    }

    /// Reads one segment file, appending its entries to `entries`.
    fn recover_segment(
        &self,
        first_index: u64,
        path: PathBuf,
        is_last: bool,
        entries: &mut Vec<Entry>,
    ) -> Result<Segment, StorageError> {
        let bytes = self.read_segment_file(&path)?;
        let cap = self.options.record_bytes_max;
        let mut segment = Segment {
            first_index,
            path,
            records: Vec::new(),
            len_bytes: 0,
        };
        let mut offset = 0usize;
        while offset < bytes.len() {
            let fault = match record::read::<Entry>(&bytes, offset, cap) {
                Ok((entry, used)) if entry.index == segment.next_index() => {
                    segment.records.push(Position {
                        offset: offset as u64,
                        record_bytes: used as u32,
                        term: entry.term,
                    });
                    entries.push(entry);
                    offset += used;
                    continue;
                }
                Ok((entry, _)) => RecordFault::Undecodable(format!(
                    "entry index {} where {} was expected",
                    entry.index,
                    segment.next_index()
                )),
                Err(fault) => fault,
            };
            let torn = is_last
                && !matches!(fault, RecordFault::Undecodable(_))
                && !valid_record_after(&bytes, offset, cap);
            if !torn {
                return Err(StorageError::Corrupt {
                    path: segment.path,
                    offset: offset as u64,
                    reason: fault.to_string(),
                });
            }
            let cut = bytes.len() - offset;
            tracing::warn!(
                path = %segment.path.display(),
                offset,
                bytes = cut,
                %fault,
                "truncating a torn tail off the raft log"
            );
            let file = OpenOptions::new()
                .write(true)
                .open(&segment.path)
                .map_err(|e| StorageError::io(&segment.path, e))?;
            file.set_len(offset as u64)
                .and_then(|()| file.sync_all())
                .map_err(|e| StorageError::io(&segment.path, e))?;
            break;
        }
        segment.len_bytes = offset as u64;
        Ok(segment)
    }

    /// Reads a whole segment file after checking its size against the caps.
    fn read_segment_file(&self, path: &Path) -> Result<Vec<u8>, StorageError> {
        let mut file = File::open(path).map_err(|e| StorageError::io(path, e))?;
        let len = file
            .metadata()
            .map_err(|e| StorageError::io(path, e))?
            .len();
        let cap = self.options.segment_file_bytes_max();
        if len > cap {
            return Err(StorageError::Corrupt {
                path: path.to_path_buf(),
                offset: cap,
                reason: format!("segment of {len} bytes exceeds the {cap}-byte cap"),
            });
        }
        let mut bytes = Vec::with_capacity(len as usize);
        (&mut file)
            .take(cap)
            .read_to_end(&mut bytes)
            .map_err(|e| StorageError::io(path, e))?;
        Ok(bytes)
    }

    fn open_active(&mut self) -> Result<(), StorageError> {
        self.active = None;
        if let Some(last) = self.segments.last() {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&last.path)
                .map_err(|e| StorageError::io(&last.path, e))?;
            self.active = Some(file);
        }
        Ok(())
    }

    // ----- getters -----

    /// Index of the first stored entry (or of the next one, if the only segment is empty).
    pub fn first_index(&self) -> Option<u64> {
        self.segments.first().map(|s| s.first_index)
    }

    /// Index the next appended entry must have; `None` when there are no segments.
    pub fn next_index(&self) -> Option<u64> {
        self.segments.last().map(Segment::next_index)
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    fn position(&self, index: u64) -> Option<(&Segment, Position)> {
        let k = self
            .segments
            .partition_point(|s| s.first_index <= index)
            .checked_sub(1)?;
        let segment = &self.segments[k];
        let slot = usize::try_from(index - segment.first_index).ok()?;
        segment.records.get(slot).map(|p| (segment, *p))
    }

    /// Term of the stored entry at `index`, if there is one.
    pub fn term(&self, index: u64) -> Option<u64> {
        self.position(index).map(|(_, p)| p.term)
    }

    /// Reads the entries with indices in `lo..hi` from disk, checking each record again.
    pub fn entries(&self, lo: u64, hi: u64) -> Result<Vec<Entry>, StorageError> {
        let (first, next) = (self.first_index(), self.next_index());
        if lo > hi || first.is_none_or(|f| lo < f) || next.is_none_or(|n| hi > n) {
            if lo == hi {
                return Ok(Vec::new());
            }
            return Err(StorageError::OutOfRange {
                lo,
                hi,
                first: first.unwrap_or(0),
                next: next.unwrap_or(0),
            });
        }
        let mut out = Vec::with_capacity(usize::try_from(hi - lo).unwrap_or(0).min(1024));
        let mut open: Option<(PathBuf, File)> = None;
        for index in lo..hi {
            let Some((segment, position)) = self.position(index) else {
                return Err(StorageError::OutOfRange {
                    lo,
                    hi,
                    first: first.unwrap_or(0),
                    next: next.unwrap_or(0),
                });
            };
            if open.as_ref().is_none_or(|(p, _)| *p != segment.path) {
                let file =
                    File::open(&segment.path).map_err(|e| StorageError::io(&segment.path, e))?;
                open = Some((segment.path.clone(), file));
            }
            let Some((path, file)) = open.as_mut() else {
                continue;
            };
            let mut bytes = vec![0; position.record_bytes as usize];
            file.seek(SeekFrom::Start(position.offset))
                .and_then(|_| file.read_exact(&mut bytes))
                .map_err(|e| StorageError::io(path, e))?;
            let corrupt = |reason: String| StorageError::Corrupt {
                path: path.clone(),
                offset: position.offset,
                reason,
            };
            let (entry, _) = record::read::<Entry>(&bytes, 0, self.options.record_bytes_max)
                .map_err(|fault| corrupt(fault.to_string()))?;
            if entry.index != index {
                return Err(corrupt(format!(
                    "entry index {} where {index} was expected",
                    entry.index
                )));
            }
            out.push(entry);
        }
        Ok(out)
    }

    // ----- mutators -----

    /// Appends entries with contiguous indices from [`SegmentLog::next_index`] (or from any
    /// index when there are no segments). Not durable until [`SegmentLog::sync`].
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let mut pending: Vec<u8> = Vec::new();
        let mut pending_offset = 0u64;
        for entry in entries {
            let expected = self.next_index().unwrap_or(entry.index);
            if entry.index != expected {
                return Err(StorageError::BadAppend {
                    expected,
                    found: entry.index,
                });
            }
            let path = self.dir.join(segment_name(entry.index));
            let bytes = record::encode(entry, self.options.record_bytes_max)
                .map_err(|reason| StorageError::Encode { path, reason })?;
            let roll = self.segments.last().is_none_or(|s| {
                s.len_bytes > 0 && s.len_bytes + bytes.len() as u64 > self.options.segment_bytes_max
            });
            if roll {
                self.write_pending(pending_offset, &pending)?;
                pending.clear();
                self.roll(entry.index)?;
            }
            let Some(segment) = self.segments.last_mut() else {
                return Err(StorageError::BadAppend {
                    expected,
                    found: entry.index,
                });
            };
            if pending.is_empty() {
                pending_offset = segment.len_bytes;
            }
            segment.records.push(Position {
                offset: segment.len_bytes,
                record_bytes: bytes.len() as u32,
                term: entry.term,
            });
            segment.len_bytes += bytes.len() as u64;
            pending.extend_from_slice(&bytes);
        }
        self.write_pending(pending_offset, &pending)
    }

    fn write_pending(&mut self, offset: u64, bytes: &[u8]) -> Result<(), StorageError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let (Some(file), Some(segment)) = (self.active.as_mut(), self.segments.last()) else {
            return Err(StorageError::BadAppend {
                expected: 0,
                found: 0,
            });
        };
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.write_all(bytes))
            .map_err(|e| StorageError::io(&segment.path, e))?;
        self.file_dirty = true;
        Ok(())
    }

    /// Makes the active segment durable, then starts a new one at `first_index`.
    fn roll(&mut self, first_index: u64) -> Result<(), StorageError> {
        self.sync_active()?;
        let path = self.dir.join(segment_name(first_index));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| StorageError::io(&path, e))?;
        self.segments.push(Segment {
            first_index,
            path,
            records: Vec::new(),
            len_bytes: 0,
        });
        self.active = Some(file);
        self.dir_dirty = true;
        Ok(())
    }

    /// Discards every entry with index >= `from` (conflict resolution). Durable on return,
    /// so that later appends can never land after stale segments.
    pub fn truncate_suffix(&mut self, from: u64) -> Result<(), StorageError> {
        if self.next_index().is_none_or(|next| from >= next) {
            return Ok(());
        }
        let Some(k) = self.segments.iter().rposition(|s| s.first_index <= from) else {
            return self.reset();
        };
        self.active = None;
        while self.segments.len() > k + 1 {
            self.remove_last_segment()?;
        }
        let segment = &mut self.segments[k];
        let keep = usize::try_from(from - segment.first_index).unwrap_or(usize::MAX);
        if let Some(position) = segment.records.get(keep) {
            segment.len_bytes = position.offset;
            segment.records.truncate(keep);
        }
        let file = OpenOptions::new()
            .write(true)
            .open(&segment.path)
            .map_err(|e| StorageError::io(&segment.path, e))?;
        file.set_len(segment.len_bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| StorageError::io(&segment.path, e))?;
        if segment.records.is_empty() && k > 0 {
            self.remove_last_segment()?;
        }
        self.file_dirty = false;
        self.open_active()?;
        self.sync()
    }

    fn remove_last_segment(&mut self) -> Result<(), StorageError> {
        if let Some(segment) = self.segments.pop() {
            fs::remove_file(&segment.path).map_err(|e| StorageError::io(&segment.path, e))?;
            self.dir_dirty = true;
        }
        Ok(())
    }

    /// Removes every segment (a snapshot replaced the whole log). Durable on return.
    pub fn reset(&mut self) -> Result<(), StorageError> {
        self.active = None;
        self.file_dirty = false;
        while !self.segments.is_empty() {
            self.remove_last_segment()?;
        }
        self.sync()
    }

    /// Removes the segments whose entries all have index <= `upto` (covered by a durable
    /// snapshot). The last segment always stays, so the next index stays known.
    pub fn compact_prefix(&mut self, upto: u64) -> Result<(), StorageError> {
        let covered = self
            .segments
            .windows(2)
            .take_while(|pair| pair[1].first_index <= upto.saturating_add(1))
            .count();
        for segment in self.segments.drain(..covered) {
            fs::remove_file(&segment.path).map_err(|e| StorageError::io(&segment.path, e))?;
            self.dir_dirty = true;
        }
        Ok(())
    }

    fn sync_active(&mut self) -> Result<(), StorageError> {
        if self.file_dirty
            && let (Some(file), Some(segment)) = (self.active.as_ref(), self.segments.last())
        {
            file.sync_data()
                .map_err(|e| StorageError::io(&segment.path, e))?;
        }
        self.file_dirty = false;
        Ok(())
    }

    /// fsyncs the active segment if it was written, and the directory if segment files were
    /// created or removed. Everything appended before is durable when this returns `Ok`.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        self.sync_active()?;
        if self.dir_dirty {
            meta::sync_dir(&self.dir)?;
            self.dir_dirty = false;
        }
        Ok(())
    }
}

/// The segment files in `dir`, sorted by first index. Leftover temp files are removed.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let mut found = Vec::new();
    for item in fs::read_dir(dir).map_err(|e| StorageError::io(dir, e))? {
        let item = item.map_err(|e| StorageError::io(dir, e))?;
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(first_index) = parse_segment_name(name) {
            found.push((first_index, item.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Whether any complete, checksum-valid entry record starts after `offset`: if one does, the
/// fault at `offset` is corruption in the middle, not a torn tail.
fn valid_record_after(bytes: &[u8], offset: usize, cap: usize) -> bool {
    let end = bytes.len().saturating_sub(RECORD_HEADER_BYTES);
    (offset + 1..end).any(|candidate| {
        matches!(
            record::check(bytes, candidate, cap),
            Ok((body, _)) if body.first() == Some(&WIRE_VERSION)
                && record::decode_body::<Entry>(body).is_ok()
        )
    })
}
