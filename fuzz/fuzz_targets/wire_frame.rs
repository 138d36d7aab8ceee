//! Fuzz target `wire_frame`: Arbitrary bytes as a control frame (header, then body) for both
//! `ControlRequest` and `ControlResponse`; whatever decodes must round-trip.
//!
//! The check is `idunno_tests::fuzz_checks::wire_frame`, shared with the stable corpus replay
//! test (tests/tests/fuzz_corpus.rs), so a crash found here replays there without a fuzzer.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    idunno_tests::fuzz_checks::wire_frame(data);
});
