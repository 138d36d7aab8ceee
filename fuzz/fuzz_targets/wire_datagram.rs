//! Fuzz target `wire_datagram`: Arbitrary bytes into `wire::decode_datagram`; whatever decodes must
//! re-encode within the size cap and round-trip.
//!
//! The check is `idunno_tests::fuzz_checks::wire_datagram`, shared with the stable corpus replay
//! test (tests/tests/fuzz_corpus.rs), so a crash found here replays there without a fuzzer.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    idunno_tests::fuzz_checks::wire_datagram(data);
});
