//! Small state files (hard state, snapshot) replaced atomically, and directory fsync.
//!
//! Owns: writing one value as one checksummed record to `NAME.tmp`, fsyncing it, renaming it
//! over `NAME` and fsyncing the directory; reading such a file back with its size checked
//! before it is read; [`sync_dir`].
//! Inputs: a directory, a file name, a value. Outputs: the value, or an error naming the file.
//! Must never: leave a half-written file under the final name, read a file larger than its
//! cap, or accept a file with bytes after its one record.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::StorageError;
use super::record::{self, RECORD_HEADER_BYTES};

/// Suffix of a state file being written; a leftover one is removed at open.
pub const TEMP_SUFFIX: &str = ".tmp";

/// fsyncs a directory so that file creations, removals and renames in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io(dir, e))
}

/// Replaces `dir/name` with `value`, durably: temp file, fsync, rename, directory fsync.
pub fn write<T: Serialize>(
    dir: &Path,
    name: &str,
    value: &T,
    body_bytes_max: usize,
) -> Result<(), StorageError> {
    let path = dir.join(name);
    let temp = dir.join(format!("{name}{TEMP_SUFFIX}"));
    let bytes = record::encode(value, body_bytes_max).map_err(|reason| StorageError::Encode {
        path: path.clone(),
        reason,
    })?;
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp)
        .map_err(|e| StorageError::io(&temp, e))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| StorageError::io(&temp, e))?;
    drop(file);
    fs::rename(&temp, &path).map_err(|e| StorageError::io(&path, e))?;
    sync_dir(dir)
}

/// Reads `dir/name`: `Ok(None)` if it does not exist, an error naming the file if it is too
/// large, cut short, fails its checksum, does not decode or has trailing bytes.
pub fn read<T: DeserializeOwned>(
    dir: &Path,
    name: &str,
    body_bytes_max: usize,
) -> Result<Option<T>, StorageError> {
    let path = dir.join(name);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::io(&path, e)),
    };
    let cap = (RECORD_HEADER_BYTES + body_bytes_max) as u64;
    let len = file
        .metadata()
        .map_err(|e| StorageError::io(&path, e))?
        .len();
    if len > cap {
        return Err(StorageError::BadStateFile {
            path,
            reason: format!("{len} bytes, above the {cap}-byte cap"),
        });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(cap)
        .read_to_end(&mut bytes)
        .map_err(|e| StorageError::io(&path, e))?;
    let (value, used) = record::read::<T>(&bytes, 0, body_bytes_max).map_err(|fault| {
        StorageError::BadStateFile {
            path: path.clone(),
            reason: fault.to_string(),
        }
    })?;
    if used != bytes.len() {
        return Err(StorageError::BadStateFile {
            path,
            reason: format!("{} trailing bytes after the record", bytes.len() - used),
        });
    }
    Ok(Some(value))
}
