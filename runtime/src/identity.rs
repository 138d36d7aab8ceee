//! The node's generation: the half of its identity that makes a restarted node a new member.
//!
//! Owns: choosing the generation (strictly greater than any earlier one at the same data
//! directory, and normally the wall clock in milliseconds), persisting it crash-safely
//! (write a temporary file, fsync, rename, fsync the directory) and the rng seed derived from it.
//! Must never: reuse or lower a generation that was persisted, or leave a half-written file.

use std::fs;
use std::hash::{BuildHasher, Hash, Hasher};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// Name of the file, inside the data directory, that holds the last generation in decimal.
pub const GENERATION_FILE: &str = "generation";
/// Largest generation file we read, in bytes (a u64 in decimal plus a newline fits easily).
const GENERATION_FILE_BYTES_MAX: u64 = 64;

/// Why a generation could not be chosen or persisted. Nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The data directory or the generation file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The generation file exists but does not hold a generation.
    #[error("{path} does not hold a generation (a decimal number): {content:?}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What it holds (truncated).
        content: String,
    },
    /// The last generation is `u64::MAX`; no larger one exists.
    #[error("generation space exhausted in {0}")]
    Exhausted(PathBuf),
}

/// Milliseconds since the Unix epoch by the wall clock (0 if the clock is before 1970).
pub fn unix_time_ms() -> u64 {
    crate::net::wall_clock()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The generation to use given the last persisted one and the wall clock: `max(last + 1, now)`.
/// `None` only when `last` is `u64::MAX`.
pub fn choose_generation(last: Option<u64>, now_ms: u64) -> Option<u64> {
    match last {
        None => Some(now_ms),
        Some(last) => last.checked_add(1).map(|next| next.max(now_ms)),
    }
}

/// Chooses this process's generation. With a data directory, reads the last generation from it,
/// picks a strictly larger one and persists it before returning; without one, the wall clock.
pub fn next_generation(data_dir: Option<&Path>, now_ms: u64) -> Result<u64, IdentityError> {
    let Some(dir) = data_dir else {
        return Ok(now_ms);
    };
    let last = read_generation(dir)?;
    let generation =
        choose_generation(last, now_ms).ok_or_else(|| IdentityError::Exhausted(dir.to_owned()))?;
    debug_assert!(last.is_none_or(|last| generation > last));
    write_generation(dir, generation)?;
    Ok(generation)
}

/// The last generation persisted in `dir`, or `None` if none was.
pub fn read_generation(dir: &Path) -> Result<Option<u64>, IdentityError> {
    let path = dir.join(GENERATION_FILE);
    let file = match fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(IdentityError::Io {
                action: "cannot open",
                path,
                source,
            });
        }
    };
    let mut content = String::new();
    io::Read::read_to_string(
        &mut io::Read::take(file, GENERATION_FILE_BYTES_MAX),
        &mut content,
    )
    .map_err(|source| IdentityError::Io {
        action: "cannot read",
        path: path.clone(),
        source,
    })?;
    match content.trim().parse::<u64>() {
        Ok(generation) => Ok(Some(generation)),
        Err(_) => Err(IdentityError::Corrupt {
            path,
            content: content.chars().take(32).collect(),
        }),
    }
}

/// Persists `generation` in `dir` atomically: temporary file, fsync, rename, fsync the directory.
pub fn write_generation(dir: &Path, generation: u64) -> Result<(), IdentityError> {
    let io_err = |action: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| IdentityError::Io {
            action,
            path,
            source,
        }
    };
    fs::create_dir_all(dir).map_err(io_err("cannot create", dir))?;
    let path = dir.join(GENERATION_FILE);
    let tmp = dir.join(format!("{GENERATION_FILE}.tmp"));
    {
        let mut file = fs::File::create(&tmp).map_err(io_err("cannot create", &tmp))?;
        writeln!(file, "{generation}").map_err(io_err("cannot write", &tmp))?;
        file.sync_all().map_err(io_err("cannot fsync", &tmp))?;
    }
    fs::rename(&tmp, &path).map_err(io_err("cannot rename into", &path))?;
    // Make the rename itself durable.
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("cannot fsync", dir))?;
    Ok(())
}

/// A seed for the machine's RNG: the identity mixed with OS randomness, so two processes never
/// share a probe order even with equal identities. The runtime logs it so a run can be compared.
pub fn rng_seed(addr: SocketAddr, generation: u64) -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    addr.hash(&mut hasher);
    generation.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A fresh, empty directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static COUNTER: AtomicU64 = AtomicU64::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!(
                "idunno-identity-test-{}-{}-{n}",
                std::process::id(),
                unix_time_ms()
            ));
            let _ = fs::remove_dir_all(&path);
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn choose_takes_the_larger_of_last_plus_one_and_the_clock() {
        assert_eq!(choose_generation(None, 1000), Some(1000));
        assert_eq!(choose_generation(Some(5), 1000), Some(1000));
        assert_eq!(choose_generation(Some(1000), 1000), Some(1001));
        assert_eq!(choose_generation(Some(5000), 1000), Some(5001));
        assert_eq!(choose_generation(Some(u64::MAX), 1000), None);
    }

    #[test]
    fn without_a_data_dir_the_clock_is_the_generation() {
        assert_eq!(next_generation(None, 1234).expect("no disk involved"), 1234);
    }

    #[test]
    fn generations_strictly_increase_across_restarts_even_if_the_clock_goes_back() {
        let dir = TempDir::new();
        let nested = dir.0.join("a/b");
        assert_eq!(read_generation(&nested).expect("missing is fine"), None);
        let first = next_generation(Some(&nested), 10_000).expect("first start");
        assert_eq!(first, 10_000);
        // Same millisecond, then a clock that went backwards.
        let second = next_generation(Some(&nested), 10_000).expect("restart");
        assert_eq!(second, 10_001);
        let third = next_generation(Some(&nested), 5).expect("clock went back");
        assert_eq!(third, 10_002);
        let fourth = next_generation(Some(&nested), 20_000).expect("clock moved on");
        assert_eq!(fourth, 20_000);
        assert_eq!(read_generation(&nested).expect("persisted"), Some(20_000));
        assert!(
            !nested.join("generation.tmp").exists(),
            "no temporary file left"
        );
    }

    #[test]
    fn a_corrupt_generation_file_is_an_error_not_a_panic() {
        let dir = TempDir::new();
        fs::create_dir_all(&dir.0).expect("temp dir");
        fs::write(dir.0.join(GENERATION_FILE), "not a number\n").expect("write");
        let err = next_generation(Some(&dir.0), 1).expect_err("corrupt");
        assert!(matches!(err, IdentityError::Corrupt { .. }), "{err}");
        fs::write(dir.0.join(GENERATION_FILE), vec![b'9'; 10_000]).expect("write");
        assert!(
            next_generation(Some(&dir.0), 1).is_err(),
            "overlong is corrupt"
        );
        fs::write(dir.0.join(GENERATION_FILE), format!("{}\n", u64::MAX)).expect("write");
        assert!(matches!(
            next_generation(Some(&dir.0), 1),
            Err(IdentityError::Exhausted(_))
        ));
    }

    #[test]
    fn a_data_dir_that_is_a_file_is_an_error() {
        let dir = TempDir::new();
        fs::create_dir_all(&dir.0).expect("temp dir");
        let file = dir.0.join("plain-file");
        fs::write(&file, "x").expect("write");
        let err = next_generation(Some(&file), 1).expect_err("not a directory");
        assert!(matches!(err, IdentityError::Io { .. }), "{err}");
    }
}
