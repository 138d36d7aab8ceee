//! The content-addressed blob store of one node: files `<dir>/<hh>/<hash hex>` named by the
//! BLAKE3 hash of their bytes.
//!
//! Owns: the store directory, its byte accounting against [`StoreLimits`], the write path
//! (stream into `<dir>/tmp/`, hashing as the bytes arrive; fsync the file; check the hash;
//! rename into place; fsync the directory), the verified read path, `list`, `remove`, `scrub`
//! (re-hash at a bounded rate, remove corrupt blobs) and `gc` (remove orphans older than a grace
//! period). Startup empties `<dir>/tmp`.
//! Must never: make a partial or unverified blob visible under its hash, release the last bytes
//! of a read before the whole blob hashed right, remove a blob being written, hold a whole blob
//! in memory, or panic on what it finds on disk (file names there are untrusted).
//!
//! Everything here is blocking `std::fs`; async callers use `spawn_blocking`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use super::{BlobHash, CHUNK_BYTES};

/// Name of the directory, inside the store, that holds blobs being written.
pub const TMP_DIR: &str = "tmp";

/// Size limits of one store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Largest blob accepted, in bytes.
    pub blob_bytes_max: u64,
    /// Most bytes the store may hold, blobs being written included; a put that would pass it is
    /// refused as [`StoreError::DiskFull`] before a byte is written. The file system's own
    /// ENOSPC is [`StoreError::FileSystemFull`], with the partial blob removed.
    pub disk_bytes_max: u64,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            blob_bytes_max: 16 * 1024 * 1024 * 1024,
            disk_bytes_max: u64::MAX,
        }
    }
}

/// Why a store operation failed. No error leaves a partial blob visible.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file system failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The store's limit would be passed; refused before anything was written.
    #[error("disk full: {needed} more bytes needed, the store holds {used} of at most {max}")]
    DiskFull {
        /// Bytes the put needed.
        needed: u64,
        /// Bytes held (and reserved) when it was refused.
        used: u64,
        /// The store's limit (`u64::MAX` when only the file system limits it).
        max: u64,
    },
    /// The file system ran out of space (ENOSPC) or quota while writing; the partial blob was
    /// removed.
    #[error("disk full: no space left on the file system writing {path}")]
    FileSystemFull {
        /// The file being written.
        path: PathBuf,
    },
    /// The blob is larger than [`StoreLimits::blob_bytes_max`].
    #[error("blob of {size} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Size asked for.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// More or fewer bytes arrived than were announced; nothing was kept.
    #[error("expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// Bytes announced.
        expected: u64,
        /// Bytes seen.
        actual: u64,
    },
    /// The bytes written do not hash to the expected hash; nothing was kept.
    #[error("hash mismatch: expected {expected}, the bytes hash to {actual}")]
    HashMismatch {
        /// The hash announced.
        expected: BlobHash,
        /// The hash of the bytes.
        actual: BlobHash,
    },
    /// No blob with this hash is stored here.
    #[error("blob {0} is not stored here")]
    NotFound(BlobHash),
    /// The stored bytes no longer hash to their name (bit rot, truncation, tampering). The
    /// caller should remove the blob and report it.
    #[error("blob {hash} is corrupt on disk: {detail}")]
    Corrupt {
        /// The blob.
        hash: BlobHash,
        /// What was wrong.
        detail: String,
    },
}

impl StoreError {
    fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        if matches!(
            source.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        ) {
            return StoreError::FileSystemFull {
                path: path.to_owned(),
            };
        }
        StoreError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

/// What a finished put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The blob was written and is now visible.
    Stored,
    /// The blob was already here; the incoming bytes were checked, not written.
    AlreadyPresent,
}

/// What a scrub pass found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Blobs re-hashed.
    pub checked: u64,
    /// Bytes re-hashed.
    pub bytes: u64,
    /// Blobs whose bytes no longer matched their hash; they have been removed.
    pub corrupt: Vec<BlobHash>,
}

#[derive(Debug, Default)]
struct Accounting {
    /// Bytes of visible blobs.
    used: u64,
    /// Bytes reserved by writers in flight.
    reserved: u64,
    /// Blobs being written, with how many writers each.
    writing: BTreeMap<BlobHash, u32>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    tmp: PathBuf,
    limits: StoreLimits,
    accounting: Mutex<Accounting>,
    next_temp: AtomicU64,
}

/// A node's blob store; cheap to clone (all clones share one directory and accounting).
#[derive(Debug, Clone)]
pub struct BlobStore {
    inner: Arc<Inner>,
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("fsync directory", dir, e))
}

impl BlobStore {
    /// Opens (creating if needed) the store at `dir`, empties `<dir>/tmp` (what a crash left
    /// half-written) and counts the bytes held.
    pub fn open(dir: &Path, limits: StoreLimits) -> Result<Self, StoreError> {
        let tmp = dir.join(TMP_DIR);
        fs::create_dir_all(&tmp).map_err(|e| StoreError::io("create", &tmp, e))?;
        let entries = fs::read_dir(&tmp).map_err(|e| StoreError::io("list", &tmp, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io("list", &tmp, e))?;
            let path = entry.path();
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(|e| StoreError::io("remove leftover", &path, e))?;
        }
        let store = BlobStore {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                tmp,
                limits,
                accounting: Mutex::new(Accounting::default()),
                next_temp: AtomicU64::new(0),
            }),
        };
        let used = store.list()?.values().sum();
        store.accounting().used = used;
        Ok(store)
    }

    fn accounting(&self) -> MutexGuard<'_, Accounting> {
        // A writer that panicked mid-update cannot leave the counters inconsistent in a way
        // worse than a wrong estimate; keep serving.
        self.inner
            .accounting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The store's limits.
    pub fn limits(&self) -> StoreLimits {
        self.inner.limits
    }

    /// Bytes of visible blobs.
    pub fn used_bytes(&self) -> u64 {
        self.accounting().used
    }

    /// Where the blob `hash` lives (whether or not it is there).
    pub fn path_of(&self, hash: &BlobHash) -> PathBuf {
        let hex = hash.to_hex();
        self.inner.dir.join(&hex[..2]).join(hex)
    }

    /// Whether the blob is stored here (not whether its bytes are still right).
    pub fn contains(&self, hash: &BlobHash) -> bool {
        self.path_of(hash).is_file()
    }

    /// Size of the stored blob, if present.
    pub fn size_of(&self, hash: &BlobHash) -> Option<u64> {
        fs::metadata(self.path_of(hash)).ok().map(|m| m.len())
    }

    /// Starts writing the blob `hash` of `size` bytes: reserves the space (refusing with
    /// [`StoreError::DiskFull`] or [`StoreError::TooLarge`] before anything is written).
    /// Nothing is visible until [`BlobWriter::finish`] succeeds; dropping the writer earlier
    /// removes what it wrote.
    pub fn writer(&self, hash: BlobHash, size: u64) -> Result<BlobWriter, StoreError> {
        let limits = self.inner.limits;
        if size > limits.blob_bytes_max {
            return Err(StoreError::TooLarge {
                size,
                max: limits.blob_bytes_max,
            });
        }
        let present;
        {
            let mut accounting = self.accounting();
            // Decided under the lock `gc` removes under: either the collector removed the blob
            // first (this put writes it again) or this writer is registered first (the
            // collector skips it, and `finish` refreshes its age).
            present = self.contains(&hash);
            if !present {
                let held = accounting.used.saturating_add(accounting.reserved);
                if held.saturating_add(size) > limits.disk_bytes_max {
                    return Err(StoreError::DiskFull {
                        needed: size,
                        used: held,
                        max: limits.disk_bytes_max,
                    });
                }
                accounting.reserved += size;
            }
            *accounting.writing.entry(hash).or_insert(0) += 1;
        }
        let mut writer = BlobWriter {
            store: self.clone(),
            hash,
            size,
            reserved: if present { 0 } else { size },
            written: 0,
            hasher: blake3::Hasher::new(),
            file: None,
            temp: PathBuf::new(),
            finished: false,
        };
        if !present {
            let n = self.inner.next_temp.fetch_add(1, Ordering::Relaxed);
            let temp = self
                .inner
                .tmp
                .join(format!("{}.{}.{n}", hash.to_hex(), std::process::id()));
            // The writer owns the reservation from here: an error below releases it on drop.
            writer.temp = temp.clone();
            let file = File::create_new(&temp).map_err(|e| StoreError::io("create", &temp, e))?;
            writer.file = Some(file);
        }
        Ok(writer)
    }

    /// Writes the blob `hash` from `reader`, which must yield exactly `size` bytes.
    pub fn put_from(
        &self,
        hash: BlobHash,
        size: u64,
        reader: &mut dyn Read,
    ) -> Result<PutOutcome, StoreError> {
        let mut writer = self.writer(hash, size)?;
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            let read = reader
                .read(&mut buf)
                .map_err(|e| StoreError::io("read source", Path::new("-"), e))?;
            if read == 0 {
                break;
            }
            writer.write(&buf[..read])?;
        }
        writer.finish()
    }

    /// Opens the blob for a verified read from byte `offset` on (the bytes before it are hashed,
    /// not returned).
    pub fn reader(&self, hash: BlobHash, offset: u64) -> Result<BlobReader, StoreError> {
        let path = self.path_of(&hash);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(hash));
            }
            Err(e) => return Err(StoreError::io("open", &path, e)),
        };
        let size = file
            .metadata()
            .map_err(|e| StoreError::io("stat", &path, e))?
            .len();
        if offset > size {
            return Err(StoreError::SizeMismatch {
                expected: size,
                actual: offset,
            });
        }
        let mut reader = BlobReader {
            hash,
            path,
            file,
            size,
            read: 0,
            hasher: blake3::Hasher::new(),
        };
        let mut skip = vec![0u8; CHUNK_BYTES.min(usize::try_from(offset).unwrap_or(CHUNK_BYTES))];
        while reader.read < offset {
            let want = usize::try_from(offset - reader.read)
                .unwrap_or(usize::MAX)
                .min(skip.len());
            reader.fill(&mut skip[..want])?;
        }
        Ok(reader)
    }

    /// Copies the blob into the file `dest` and returns its size; `dest` appears (by rename)
    /// only once every byte hashed right, so a caller never sees unverified bytes there.
    pub fn copy_verified_to(&self, hash: BlobHash, dest: &Path) -> Result<u64, StoreError> {
        let mut reader = self.reader(hash, 0)?;
        let partial = super::client::partial_path(dest);
        let result = (|| {
            let mut out =
                File::create(&partial).map_err(|e| StoreError::io("create", &partial, e))?;
            let mut buf = vec![0u8; CHUNK_BYTES];
            loop {
                let read = reader.read(&mut buf)?;
                if read == 0 {
                    break;
                }
                out.write_all(&buf[..read])
                    .map_err(|e| StoreError::io("write", &partial, e))?;
            }
            out.sync_all()
                .map_err(|e| StoreError::io("fsync", &partial, e))?;
            fs::rename(&partial, dest).map_err(|e| StoreError::io("rename", dest, e))?;
            Ok(reader.size)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&partial);
        }
        result
    }

    /// Every blob held, with its size, in hash order. Files whose names are not blob names are
    /// skipped.
    pub fn list(&self) -> Result<BTreeMap<BlobHash, u64>, StoreError> {
        let dir = &self.inner.dir;
        let mut blobs = BTreeMap::new();
        let shards = fs::read_dir(dir).map_err(|e| StoreError::io("list", dir, e))?;
        for shard in shards {
            let shard = shard.map_err(|e| StoreError::io("list", dir, e))?;
            let shard_name = shard.file_name();
            let Some(prefix) = shard_name.to_str() else {
                continue;
            };
            if prefix.len() != 2 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            let shard_path = shard.path();
            let Ok(entries) = fs::read_dir(&shard_path) else {
                continue;
            };
            for entry in entries {
                let entry = entry.map_err(|e| StoreError::io("list", &shard_path, e))?;
                let name = entry.file_name();
                let Some(hash) = name.to_str().and_then(BlobHash::from_hex) else {
                    continue;
                };
                if !name.to_str().is_some_and(|n| n.starts_with(prefix)) {
                    continue;
                }
                let Ok(meta) = entry.metadata() else {
                    continue;
                };
                if meta.is_file() {
                    blobs.insert(hash, meta.len());
                }
            }
        }
        Ok(blobs)
    }

    /// Removes the blob; `false` if it was not here.
    pub fn remove(&self, hash: &BlobHash) -> Result<bool, StoreError> {
        let path = self.path_of(hash);
        let size = match fs::metadata(&path) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(StoreError::io("stat", &path, e)),
        };
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(StoreError::io("remove", &path, e)),
        }
        if let Some(parent) = path.parent() {
            sync_dir(parent)?;
        }
        let mut accounting = self.accounting();
        accounting.used = accounting.used.saturating_sub(size);
        Ok(true)
    }

    /// Removes every blob not in `live` whose file is older than `grace` at `now`, never one
    /// being written; returns what it removed.
    ///
    /// Each blob's check (no writer, old enough) and its removal happen under the store's
    /// lock, the one [`BlobStore::writer`] and [`BlobStore::refresh`] take: a put or a
    /// re-replication fetch of the same bytes that finds the old file either finds it before
    /// (and makes it young again, so it stays) or after the removal (and writes it anew). A
    /// blob whose age is refreshed that way is never removed by a pass that decided on its old
    /// age.
    pub fn gc(
        &self,
        live: &BTreeSet<BlobHash>,
        grace: Duration,
        now: SystemTime,
    ) -> Result<Vec<BlobHash>, StoreError> {
        let mut removed = Vec::new();
        for hash in self.list()?.into_keys() {
            if live.contains(&hash) {
                continue;
            }
            let path = self.path_of(&hash);
            {
                let mut accounting = self.accounting();
                if accounting.writing.contains_key(&hash) {
                    continue;
                }
                let Ok(meta) = fs::metadata(&path) else {
                    continue;
                };
                let Ok(modified) = meta.modified() else {
                    continue;
                };
                // A clock that went back makes the age zero: keep the blob.
                let age = now.duration_since(modified).unwrap_or(Duration::ZERO);
                if age < grace {
                    continue;
                }
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(StoreError::io("remove", &path, e)),
                }
                accounting.used = accounting.used.saturating_sub(meta.len());
            }
            if let Some(parent) = path.parent() {
                sync_dir(parent)?;
            }
            removed.push(hash);
        }
        debug_assert!(removed.iter().all(|h| !live.contains(h)));
        Ok(removed)
    }

    /// Makes a stored blob young again (its modification time becomes now), under the lock
    /// [`BlobStore::gc`] removes under, so a collector pass that has not removed it yet keeps
    /// it for another grace period. `false` if the blob is not here (a collector removed it
    /// first: the caller must store it again).
    pub fn refresh(&self, hash: &BlobHash) -> Result<bool, StoreError> {
        let path = self.path_of(hash);
        let _accounting = self.accounting();
        let touched = File::options()
            .append(true)
            .open(&path)
            .and_then(|f| f.set_modified(SystemTime::now()));
        match touched {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::io("touch", &path, e)),
        }
    }

    /// Re-hashes every blob, reading at most `bytes_per_second_max` bytes per second (0: no
    /// limit); removes the corrupt ones and reports them. A blob removed meanwhile is skipped.
    pub fn scrub(&self, bytes_per_second_max: u64) -> Result<ScrubReport, StoreError> {
        let mut report = ScrubReport::default();
        let started = Instant::now();
        let mut buf = vec![0u8; CHUNK_BYTES];
        for hash in self.list()?.into_keys() {
            let mut reader = match self.reader(hash, 0) {
                Ok(reader) => reader,
                Err(StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            report.checked += 1;
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(read) => {
                        report.bytes += read as u64;
                        throttle(started, report.bytes, bytes_per_second_max);
                    }
                    Err(StoreError::Corrupt { .. }) => {
                        self.remove(&hash)?;
                        report.corrupt.push(hash);
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(report)
    }
}

/// Sleeps until `bytes` at `rate` bytes per second would have taken since `started`.
fn throttle(started: Instant, bytes: u64, rate: u64) {
    if rate == 0 {
        return;
    }
    let due = Duration::from_secs_f64(bytes as f64 / rate as f64);
    let elapsed = started.elapsed();
    if due > elapsed {
        std::thread::sleep(due - elapsed);
    }
}

/// A blob being written; see [`BlobStore::writer`].
#[derive(Debug)]
pub struct BlobWriter {
    store: BlobStore,
    hash: BlobHash,
    size: u64,
    reserved: u64,
    written: u64,
    hasher: blake3::Hasher,
    /// `None` when the blob is already present: the bytes are only checked.
    file: Option<File>,
    temp: PathBuf,
    finished: bool,
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends `bytes`; more bytes than announced is an error.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        debug_assert!(!self.finished);
        let after = self.written.saturating_add(bytes.len() as u64);
        if after > self.size {
            return Err(StoreError::SizeMismatch {
                expected: self.size,
                actual: after,
            });
        }
        self.hasher.update(bytes);
        if let Some(file) = &mut self.file {
            file.write_all(bytes)
                .map_err(|e| StoreError::io("write", &self.temp, e))?;
        }
        self.written = after;
        Ok(())
    }

    /// Checks the size and hash, fsyncs and makes the blob visible.
    pub fn finish(mut self) -> Result<PutOutcome, StoreError> {
        if self.written != self.size {
            return Err(StoreError::SizeMismatch {
                expected: self.size,
                actual: self.written,
            });
        }
        let actual = BlobHash::from(self.hasher.finalize());
        if actual != self.hash {
            return Err(StoreError::HashMismatch {
                expected: self.hash,
                actual,
            });
        }
        let final_path = self.store.path_of(&self.hash);
        let Some(file) = self.file.take() else {
            // Already present: refresh its age so a gc racing this put keeps it.
            let touched = File::options()
                .append(true)
                .open(&final_path)
                .and_then(|f| f.set_modified(SystemTime::now()));
            if let Err(e) = touched {
                return Err(StoreError::io("touch", &final_path, e));
            }
            self.finished = true;
            return Ok(PutOutcome::AlreadyPresent);
        };
        file.sync_all()
            .map_err(|e| StoreError::io("fsync", &self.temp, e))?;
        drop(file);
        let shard = final_path
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| self.store.inner.dir.clone());
        let new_shard = !shard.is_dir();
        if new_shard {
            fs::create_dir_all(&shard).map_err(|e| StoreError::io("create", &shard, e))?;
            sync_dir(&self.store.inner.dir)?;
        }
        let replaced = final_path.is_file();
        fs::rename(&self.temp, &final_path)
            .map_err(|e| StoreError::io("rename", &final_path, e))?;
        sync_dir(&shard)?;
        self.finished = true;
        let mut accounting = self.store.accounting();
        accounting.reserved = accounting.reserved.saturating_sub(self.reserved);
        self.reserved = 0;
        if !replaced {
            accounting.used += self.size;
        }
        Ok(PutOutcome::Stored)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.finished && !self.temp.as_os_str().is_empty() {
            self.file = None;
            let _ = fs::remove_file(&self.temp);
        }
        let mut accounting = self.store.accounting();
        accounting.reserved = accounting.reserved.saturating_sub(self.reserved);
        if let Some(count) = accounting.writing.get_mut(&self.hash) {
            *count -= 1;
            if *count == 0 {
                accounting.writing.remove(&self.hash);
            }
        }
    }
}

/// A verified read of one blob; see [`BlobStore::reader`].
#[derive(Debug)]
pub struct BlobReader {
    hash: BlobHash,
    path: PathBuf,
    file: File,
    size: u64,
    read: u64,
    hasher: blake3::Hasher,
}

impl BlobReader {
    /// The blob's size (its file's length when opened).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes read so far (the skipped prefix included).
    pub fn position(&self) -> u64 {
        self.read
    }

    /// Reads the next bytes into `buf`; 0 at the end. The call that would return the blob's
    /// last bytes first checks the whole blob's hash and returns [`StoreError::Corrupt`]
    /// instead if it is wrong, so unverified bytes never complete a read.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, StoreError> {
        if self.read == self.size || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(self.size - self.read)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        self.fill(&mut buf[..want])?;
        Ok(want)
    }

    /// Fills `buf` exactly (it never reaches past the size), hashing; verifies at the end.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), StoreError> {
        debug_assert!(self.read + buf.len() as u64 <= self.size);
        match self.file.read_exact(buf) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(StoreError::Corrupt {
                    hash: self.hash,
                    detail: "the file shrank while being read".to_owned(),
                });
            }
            Err(e) => return Err(StoreError::io("read", &self.path, e)),
        }
        self.hasher.update(buf);
        self.read += buf.len() as u64;
        if self.read == self.size {
            let actual = BlobHash::from(self.hasher.finalize());
            if actual != self.hash {
                return Err(StoreError::Corrupt {
                    hash: self.hash,
                    detail: format!("its bytes hash to {actual}"),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobs::testutil::{TempDir, bytes};

    fn open(dir: &TempDir) -> BlobStore {
        BlobStore::open(dir.path(), StoreLimits::default()).expect("open")
    }

    fn put(store: &BlobStore, data: &[u8]) -> Result<PutOutcome, StoreError> {
        store.put_from(BlobHash::of(data), data.len() as u64, &mut &data[..])
    }

    fn read_all(store: &BlobStore, hash: BlobHash) -> Result<Vec<u8>, StoreError> {
        let mut reader = store.reader(hash, 0)?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1000];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    fn tmp_is_empty(store: &BlobStore) -> bool {
        fs::read_dir(store.dir().join(TMP_DIR))
            .expect("tmp")
            .next()
            .is_none()
    }

    #[test]
    fn round_trip_list_and_idempotent_put() {
        let dir = TempDir::new("store-rt");
        let store = open(&dir);
        let data = bytes(CHUNK_BYTES * 2 + 17, 1);
        let hash = BlobHash::of(&data);
        assert_eq!(put(&store, &data).expect("put"), PutOutcome::Stored);
        assert_eq!(
            put(&store, &data).expect("again"),
            PutOutcome::AlreadyPresent
        );
        assert_eq!(read_all(&store, hash).expect("read"), data);
        let path = store.path_of(&hash);
        assert!(path.starts_with(dir.path().join(&hash.to_hex()[..2])));
        assert_eq!(
            store.list().expect("list"),
            BTreeMap::from([(hash, data.len() as u64)])
        );
        assert_eq!(store.used_bytes(), data.len() as u64);
        assert!(tmp_is_empty(&store));
        // Reopening counts what is there.
        let again = open(&dir);
        assert_eq!(again.used_bytes(), data.len() as u64);
        let mut from_offset = again.reader(hash, 1000).expect("offset");
        let mut buf = vec![0u8; data.len()];
        let n = from_offset.read(&mut buf).expect("read");
        assert_eq!(&buf[..n], &data[1000..]);
    }

    #[test]
    fn a_hash_mismatch_is_rejected_and_invisible() {
        let dir = TempDir::new("store-mismatch");
        let store = open(&dir);
        let data = bytes(5000, 2);
        let wrong = BlobHash::of(b"something else");
        let result = store.put_from(wrong, data.len() as u64, &mut &data[..]);
        assert!(
            matches!(result, Err(StoreError::HashMismatch { .. })),
            "{result:?}"
        );
        assert!(!store.contains(&wrong));
        assert!(store.list().expect("list").is_empty());
        assert!(tmp_is_empty(&store));
        assert_eq!(store.used_bytes(), 0);
    }

    #[test]
    fn a_truncated_or_overlong_stream_is_rejected_and_invisible() {
        let dir = TempDir::new("store-trunc");
        let store = open(&dir);
        let data = bytes(5000, 3);
        let hash = BlobHash::of(&data);
        let short = store.put_from(hash, data.len() as u64, &mut &data[..4000]);
        assert!(
            matches!(short, Err(StoreError::SizeMismatch { .. })),
            "{short:?}"
        );
        let long = store.put_from(hash, 4000, &mut &data[..]);
        assert!(
            matches!(long, Err(StoreError::SizeMismatch { .. })),
            "{long:?}"
        );
        // A writer dropped half-way leaves nothing either.
        let mut writer = store.writer(hash, data.len() as u64).expect("writer");
        writer.write(&data[..100]).expect("write");
        drop(writer);
        assert!(!store.contains(&hash));
        assert!(tmp_is_empty(&store));
        assert_eq!(store.used_bytes(), 0);
    }

    #[test]
    fn startup_cleans_tmp() {
        let dir = TempDir::new("store-tmp");
        let store = open(&dir);
        let data = bytes(100, 4);
        let mut writer = store
            .writer(BlobHash::of(&data), data.len() as u64)
            .expect("writer");
        writer.write(&data[..50]).expect("write");
        // A crash: the writer never finishes nor drops.
        std::mem::forget(writer);
        assert!(!tmp_is_empty(&store));
        let reopened = open(&dir);
        assert!(tmp_is_empty(&reopened));
        assert!(reopened.list().expect("list").is_empty());
    }

    #[test]
    fn corruption_is_detected_by_read_and_scrub() {
        let dir = TempDir::new("store-corrupt");
        let store = open(&dir);
        let good = bytes(CHUNK_BYTES + 10, 5);
        let bad = bytes(3000, 6);
        put(&store, &good).expect("put");
        put(&store, &bad).expect("put");
        let bad_hash = BlobHash::of(&bad);
        let path = store.path_of(&bad_hash);
        let mut flipped = fs::read(&path).expect("read");
        flipped[1234] ^= 1;
        fs::write(&path, &flipped).expect("corrupt");
        let read = read_all(&store, bad_hash);
        assert!(matches!(read, Err(StoreError::Corrupt { .. })), "{read:?}");
        // The reader withholds the last chunk: a one-chunk blob releases nothing.
        let mut reader = store.reader(bad_hash, 0).expect("open");
        let mut buf = vec![0u8; 10_000];
        assert!(reader.read(&mut buf).is_err());
        let dest = dir.path().join("out");
        assert!(store.copy_verified_to(bad_hash, &dest).is_err());
        assert!(!dest.exists());
        let report = store.scrub(0).expect("scrub");
        assert_eq!(report.checked, 2);
        assert_eq!(report.corrupt, vec![bad_hash]);
        assert!(!store.contains(&bad_hash));
        assert_eq!(store.used_bytes(), good.len() as u64);
        assert_eq!(
            store
                .copy_verified_to(BlobHash::of(&good), &dest)
                .expect("copy"),
            good.len() as u64
        );
        assert_eq!(fs::read(&dest).expect("dest"), good);
        // A truncated file is corrupt too.
        let good_path = store.path_of(&BlobHash::of(&good));
        File::options()
            .write(true)
            .open(&good_path)
            .and_then(|f| f.set_len(10))
            .expect("truncate");
        assert_eq!(store.scrub(0).expect("scrub").corrupt.len(), 1);
    }

    #[test]
    fn scrub_respects_its_rate() {
        let dir = TempDir::new("store-rate");
        let store = open(&dir);
        put(&store, &bytes(200_000, 7)).expect("put");
        let started = Instant::now();
        let report = store.scrub(1_000_000).expect("scrub");
        assert_eq!(report.bytes, 200_000);
        assert!(started.elapsed() >= Duration::from_millis(190));
    }

    #[test]
    fn gc_keeps_live_young_and_in_flight_blobs() {
        let dir = TempDir::new("store-gc");
        let store = open(&dir);
        let live = bytes(100, 8);
        let orphan = bytes(100, 9);
        let writing = bytes(100, 10);
        put(&store, &live).expect("put");
        put(&store, &orphan).expect("put");
        put(&store, &writing).expect("put");
        let writer = store
            .writer(BlobHash::of(&writing), writing.len() as u64)
            .expect("writer");
        let live_set = BTreeSet::from([BlobHash::of(&live)]);
        let now = SystemTime::now();
        // Within the grace period nothing goes.
        assert!(
            store
                .gc(&live_set, Duration::from_secs(3600), now)
                .expect("gc")
                .is_empty()
        );
        let later = now + Duration::from_secs(7200);
        let removed = store
            .gc(&live_set, Duration::from_secs(3600), later)
            .expect("gc");
        assert_eq!(removed, vec![BlobHash::of(&orphan)]);
        assert!(store.contains(&BlobHash::of(&live)));
        assert!(store.contains(&BlobHash::of(&writing)));
        drop(writer);
        let removed = store
            .gc(&live_set, Duration::from_secs(3600), later)
            .expect("gc");
        assert_eq!(removed, vec![BlobHash::of(&writing)]);
    }

    /// An old orphan that a put of the same bytes or a re-replication fetch (`refresh`) finds
    /// again becomes young: the next collection keeps it. Once collected, `refresh` says so
    /// and a put writes the blob anew.
    #[test]
    fn an_orphan_found_again_is_not_collected() {
        let dir = TempDir::new("store-gc-again");
        let store = open(&dir);
        let data = bytes(1000, 12);
        let hash = BlobHash::of(&data);
        let none = BTreeSet::new();
        let grace = Duration::from_secs(3600);
        let age = |store: &BlobStore| {
            let old = SystemTime::now() - Duration::from_secs(7200);
            File::options()
                .append(true)
                .open(store.path_of(&hash))
                .and_then(|f| f.set_modified(old))
                .expect("age the blob");
        };
        put(&store, &data).expect("put");
        age(&store);
        assert_eq!(
            put(&store, &data).expect("again"),
            PutOutcome::AlreadyPresent
        );
        assert!(
            store
                .gc(&none, grace, SystemTime::now())
                .expect("gc")
                .is_empty()
        );
        assert!(store.contains(&hash), "a put of the same bytes keeps it");
        age(&store);
        assert!(store.refresh(&hash).expect("refresh"));
        assert!(
            store
                .gc(&none, grace, SystemTime::now())
                .expect("gc")
                .is_empty()
        );
        assert!(store.contains(&hash), "a refreshed copy stays");
        age(&store);
        assert_eq!(
            store.gc(&none, grace, SystemTime::now()).expect("gc"),
            vec![hash]
        );
        assert!(!store.refresh(&hash).expect("refresh"), "collected");
        assert_eq!(store.used_bytes(), 0);
        assert_eq!(put(&store, &data).expect("anew"), PutOutcome::Stored);
        assert_eq!(read_all(&store, hash).expect("read"), data);
        assert_eq!(store.used_bytes(), data.len() as u64);
    }

    #[test]
    fn limits_refuse_before_writing() {
        let dir = TempDir::new("store-limits");
        let limits = StoreLimits {
            blob_bytes_max: 10_000,
            disk_bytes_max: 15_000,
        };
        let store = BlobStore::open(dir.path(), limits).expect("open");
        let big = bytes(10_001, 11);
        let too_large = put(&store, &big);
        assert!(
            matches!(too_large, Err(StoreError::TooLarge { .. })),
            "{too_large:?}"
        );
        put(&store, &bytes(10_000, 12)).expect("fits");
        let full = put(&store, &bytes(6_000, 13));
        assert!(matches!(full, Err(StoreError::DiskFull { .. })), "{full:?}");
        // A reservation counts: two writers cannot both take the last space.
        let first = store.writer(BlobHash::of(b"a"), 4000).expect("reserve");
        assert!(matches!(
            store.writer(BlobHash::of(b"b"), 4000),
            Err(StoreError::DiskFull { .. })
        ));
        drop(first);
        store.writer(BlobHash::of(b"b"), 4000).expect("released");
        assert!(tmp_is_empty(&store));
        assert_eq!(store.list().expect("list").len(), 1);
    }

    #[test]
    fn enospc_is_reported_as_a_full_file_system() {
        // /dev/full answers every write with ENOSPC.
        let path = Path::new("/dev/full");
        let Ok(mut full) = File::options().write(true).open(path) else {
            return;
        };
        let error = full.write_all(&[0u8; 4096]).expect_err("ENOSPC");
        let mapped = StoreError::io("write", path, error);
        assert!(
            matches!(mapped, StoreError::FileSystemFull { .. }),
            "{mapped:?}"
        );
        assert!(mapped.to_string().starts_with("disk full"));
    }

    #[test]
    fn odd_files_in_the_store_are_ignored() {
        let dir = TempDir::new("store-odd");
        let store = open(&dir);
        fs::create_dir_all(dir.path().join("zz")).expect("mkdir");
        fs::write(dir.path().join("zz").join("x"), b"x").expect("write");
        fs::create_dir_all(dir.path().join("ab")).expect("mkdir");
        fs::write(dir.path().join("ab").join("not-a-hash"), b"x").expect("write");
        let misplaced = BlobHash::of(b"m");
        fs::write(dir.path().join("ab").join(misplaced.to_hex()), b"m").expect("write");
        fs::write(dir.path().join("README"), b"x").expect("write");
        let listed = store.list().expect("list");
        assert!(
            listed.is_empty() || misplaced.to_hex().starts_with("ab"),
            "{listed:?}"
        );
        assert_eq!(store.scrub(0).expect("scrub").corrupt.len(), listed.len());
    }
}
