//! Fuzz target `auth_handshake`: raw bytes as the connecting side's hello and proof to a node, as
//! a node's hello and proof to a connecting side, and an honest exchange whose three messages are
//! changed on the way. A side completes exactly when everything its keys depend on arrived
//! unchanged; an accepted proof is the honest one.
//!
//! The check is `idunno_tests::fuzz_checks::auth_handshake` (in `tests/src/fuzz_auth.rs`), shared with the
//! stable corpus replay test (tests/tests/fuzz_corpus.rs), so a crash found here replays there
//! without a fuzzer.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    idunno_tests::fuzz_checks::auth_handshake(data);
});
