//! Fuzz target `auth_datagram`: raw bytes opened as a sealed membership datagram, an honest datagram
//! changed on the way, and (session, counter) sequences through the replay window against a model.
//! Whatever opens must be byte for byte the honest sealing of its own fields.
//!
//! The check is `idunno_tests::fuzz_checks::auth_datagram` (in `tests/src/fuzz_auth.rs`), shared with the
//! stable corpus replay test (tests/tests/fuzz_corpus.rs), so a crash found here replays there
//! without a fuzzer.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    idunno_tests::fuzz_checks::auth_datagram(data);
});
