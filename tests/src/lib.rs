//! idunno-tests: the checks that look at idunno from the outside.
//!
//! Owns:
//! - [`harness`]: starting real `idunno-node` processes on 127.0.0.x, talking to them through the
//!   real client, polling with deadlines, and killing every child on drop (also on panic).
//! - [`deps`]: `cargo tree` and `Cargo.lock` dependency walks, used to prove that idunno-core depends on
//!   nothing async, nothing that does I/O and no OS randomness.
//! - [`fuzz_checks`]: the check functions behind every fuzz target. `fuzz/` (outside the
//!   workspace) depends on this crate by path, and `tests/fuzz_corpus.rs` replays the committed
//!   corpora through the very same functions on stable; [`fuzz_auth`] holds the checks of the
//!   authentication targets (sealed datagrams, the TCP handshake, the record stream).
//!
//! The tests themselves live in `tests/tests/`. Must never: bind anything outside 127.0.0.0/8,
//! leave a child process running after a test, or assert on timing rather than behaviour.

pub mod deps;
pub mod fuzz_auth;
pub mod fuzz_checks;
pub mod harness;
