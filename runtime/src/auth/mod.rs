//! Cluster authentication: the shared cluster key and what it protects.
//!
//! Owns: [`ClusterKey`] (32 secret bytes, loaded from a file or the environment, never from the
//! command line, never printed), its generation for `idunno-node keygen`, and the submodules that
//! use it: [`datagram`] (sealing and opening membership datagrams with replay protection),
//! [`socket`] (the [`crate::net::DatagramSocket`] wrapper the membership driver runs over), and
//! for TCP [`handshake`] (roles, client tokens, the key schedule), [`stream`] (the sealed record
//! layer) and [`tcp`] (the one place connections are opened and accepted).
//! Must never: log, print or `Debug`-format key bytes; accept a key of the wrong length or a key
//! file other users can read without warning; fall back silently to running without a key (the
//! node says loudly that it is insecure).

pub mod datagram;
pub mod handshake;
pub mod socket;
pub mod stream;
pub mod tcp;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::OsRng;
use chacha20poly1305::aead::rand_core::RngCore;

pub use datagram::{DatagramKey, Rejection, ReplayGuard};
pub use handshake::{ClientToken, Role};
pub use socket::{AuthSocket, AuthStats};
pub use stream::SecureStream;
pub use tcp::{TcpAuth, TcpAuthStats, TcpGuard};

/// Length of the cluster key in bytes.
pub const KEY_BYTES: usize = 32;
/// Environment variable naming a key file.
pub const KEY_FILE_ENV: &str = "IDUNNO_CLUSTER_KEY_FILE";
/// Environment variable holding the key itself as 64 hex digits (for containers and tests).
pub const KEY_ENV: &str = "IDUNNO_CLUSTER_KEY";
/// Largest key file read, in bytes (64 hex digits plus whitespace and comments fit easily).
const KEY_FILE_BYTES_MAX: u64 = 4096;

/// The secret every node of one cluster shares.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; KEY_BYTES]);

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(<redacted>)")
    }
}

/// Why a cluster key could not be loaded or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The key text is not 64 hex digits.
    #[error("{origin}: a cluster key is {} hex digits ({KEY_BYTES} bytes); {problem}", KEY_BYTES * 2)]
    Malformed {
        /// Where the text came from (a file name or an environment variable).
        origin: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The key file is larger than any key file could be.
    #[error("key file {path} is {len} bytes; a key file holds {} hex digits", KEY_BYTES * 2)]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
}

impl ClusterKey {
    /// A key from raw bytes.
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self {
        ClusterKey(bytes)
    }

    /// A fresh random key from the operating system's generator.
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_BYTES];
        OsRng.fill_bytes(&mut bytes);
        ClusterKey(bytes)
    }

    /// The raw bytes (for the ciphers in this module only).
    pub(crate) fn bytes(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }

    /// Parses 64 hex digits; surrounding whitespace and `#` comment lines are ignored.
    pub fn parse(text: &str, origin: &str) -> Result<Self, KeyError> {
        let digits: String = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .collect();
        let malformed = |problem: String| KeyError::Malformed {
            origin: origin.to_owned(),
            problem,
        };
        if digits.len() != KEY_BYTES * 2 {
            return Err(malformed(format!("found {} characters", digits.len())));
        }
        let mut bytes = [0u8; KEY_BYTES];
        for (i, byte) in bytes.iter_mut().enumerate() {
            let pair = digits
                .get(2 * i..2 * i + 2)
                .ok_or_else(|| malformed("it is not plain ASCII".into()))?;
            *byte = u8::from_str_radix(pair, 16)
                .map_err(|_| malformed(format!("{pair:?} at position {} is not hex", 2 * i)))?;
        }
        Ok(ClusterKey(bytes))
    }

    /// The key as 64 lowercase hex digits (what a key file holds).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads a key file; warns when other users may read it.
    pub fn read_file(path: &Path) -> Result<Self, KeyError> {
        let io_error = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let metadata = std::fs::metadata(path).map_err(io_error)?;
        if metadata.len() > KEY_FILE_BYTES_MAX {
            return Err(KeyError::TooLarge {
                path: path.to_owned(),
                len: metadata.len(),
            });
        }
        warn_if_shared(path, &metadata);
        let text = std::fs::read_to_string(path).map_err(io_error)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Writes a new key file readable by its owner only; refuses to overwrite one.
    pub fn write_new_file(&self, path: &Path) -> Result<(), KeyError> {
        use std::io::Write;
        let io_error = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(io_error)?;
        let text = format!("# idunno cluster key: keep it secret\n{}\n", self.to_hex());
        file.write_all(text.as_bytes()).map_err(io_error)?;
        file.sync_all().map_err(io_error)
    }

    /// The key a node should use: `file` if given, else the file named by
    /// `IDUNNO_CLUSTER_KEY_FILE`, else the hex in `IDUNNO_CLUSTER_KEY`, else none (insecure).
    pub fn from_file_or_env(file: Option<&Path>) -> Result<Option<Self>, KeyError> {
        if let Some(path) = file {
            return Self::read_file(path).map(Some);
        }
        if let Some(path) = std::env::var_os(KEY_FILE_ENV).filter(|p| !p.is_empty()) {
            return Self::read_file(Path::new(&path)).map(Some);
        }
        match std::env::var(KEY_ENV) {
            Ok(text) if !text.is_empty() => Self::parse(&text, KEY_ENV).map(Some),
            Ok(_) | Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(KeyError::Malformed {
                origin: KEY_ENV.to_owned(),
                problem: "it is not valid text".into(),
            }),
        }
    }
}

#[cfg(unix)]
fn warn_if_shared(path: &Path, metadata: &std::fs::Metadata) {
    use std::os::unix::fs::PermissionsExt;
    if metadata.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            "the cluster key file can be read by other users; chmod 600 it"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_shared(_path: &Path, _metadata: &std::fs::Metadata) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_comments() {
        let key = ClusterKey::from_bytes([0xab; KEY_BYTES]);
        let text = format!("# comment\n  {}  \n\n", key.to_hex());
        assert_eq!(ClusterKey::parse(&text, "test").ok(), Some(key));
    }

    #[test]
    fn malformed_keys_are_clear_errors() {
        for bad in ["", "abc", &"zz".repeat(KEY_BYTES), &"é".repeat(KEY_BYTES)] {
            let error = ClusterKey::parse(bad, "test").err();
            assert!(matches!(error, Some(KeyError::Malformed { .. })), "{bad:?}");
        }
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = ClusterKey::from_bytes([0x5a; KEY_BYTES]);
        let shown = format!("{key:?}");
        assert!(!shown.contains("5a"), "{shown}");
    }

    #[test]
    fn key_file_round_trip_and_no_overwrite() {
        let dir = std::env::temp_dir().join(format!("idunno-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(std::fs::create_dir_all(&dir).is_ok());
        let path = dir.join("cluster.key");
        let key = ClusterKey::generate();
        assert!(key.write_new_file(&path).is_ok());
        assert_eq!(ClusterKey::read_file(&path).ok(), Some(key.clone()));
        assert!(
            key.write_new_file(&path).is_err(),
            "an existing key is never overwritten"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o777);
            assert_eq!(mode.ok(), Some(0o600));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn two_generated_keys_differ() {
        assert_ne!(ClusterKey::generate(), ClusterKey::generate());
    }
}
