//! Fuzz target `auth_records`: raw bytes as a sealed TCP record stream, and an honest stream that
//! is changed, cut, repeated, reordered or shortened, read through `RecordReader` in arbitrary
//! chunks. Exactly the intact leading records come out; every opened record is an honest one.
//!
//! The check is `idunno_tests::fuzz_checks::auth_records` (in `tests/src/fuzz_auth.rs`), shared with the
//! stable corpus replay test (tests/tests/fuzz_corpus.rs), so a crash found here replays there
//! without a fuzzer.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    idunno_tests::fuzz_checks::auth_records(data);
});
