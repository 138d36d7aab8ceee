//! Logging setup for the binary.
//!
//! Owns: installing the global tracing subscriber: human-readable lines on stderr (colours only
//! on a terminal), filtered by `RUST_LOG` (default `info`). Each node's logs run inside a `node{addr=..}` span (see
//! [`crate::node`]), so the output of several nodes in one stream stays readable.
//! Must never: write to stdout (stdout carries the `LISTENING` line and client answers).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Filter used when `RUST_LOG` is unset or empty.
pub const DEFAULT_FILTER: &str = "info";

/// Installs the subscriber. A second call (or a subscriber set by a test harness) is ignored.
pub fn init() {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!("warning: ignoring invalid RUST_LOG {spec:?}: {e}");
            EnvFilter::new(DEFAULT_FILTER)
        }),
        _ => EnvFilter::new(DEFAULT_FILTER),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
