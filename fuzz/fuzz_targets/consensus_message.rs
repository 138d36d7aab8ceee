//! Fuzz target `consensus_message`: Arbitrary bytes into `consensus::decode`; whatever decodes
//! must re-encode within `MESSAGE_BYTES_MAX`, no longer than the input, and round-trip.
//!
//! The check is `idunno_tests::fuzz_checks::consensus_message`, shared with the stable corpus
//! replay test (tests/tests/fuzz_corpus.rs), so a crash found here replays there without a fuzzer.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    idunno_tests::fuzz_checks::consensus_message(data);
});
